//! cutover: inside the window, after the gate (boot tests, dependencies, approval):
//! optional source shutdown, final sync, cutover launch, checks, finalize. A cutover
//! that cannot finish inside the window is not started; one that runs past the window's
//! end is rolled back (target terminated, source restarted, life cycle back to ready for
//! cutover) and reported.

use replication::{LaunchKind, LifeCycle, ReplicationState, SourceServer};
use serde::{Deserialize, Serialize};
use waves::units::format_seconds;

use crate::context::{Action, Check, POLL_SECONDS, Progress, Report, TaskContext, later};
use crate::launch::{self, LaunchState};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Step {
    /// The shutdown step is behind us (whether or not the source was stopped).
    shutdown_done: bool,
    /// The source was stopped and must be restarted on a rollback.
    source_stopped: bool,
    job: Option<String>,
    target: Option<String>,
    checks: Vec<Check>,
    /// Why the cutover is being rolled back, from the moment the rollback begins: a
    /// rollback the engine interrupts goes on at the next look, with its first reason.
    #[serde(default)]
    rolling_back: Option<String>,
    /// Rolled back: the failure that follows is final.
    #[serde(default)]
    rolled_back: bool,
}

impl Step {
    /// Something was done that a failure must not leave half done: the source may be
    /// stopped, a target launched.
    fn started(&self) -> bool {
        self.shutdown_done || self.job.is_some() || self.rolling_back.is_some()
    }
}

fn resume(step: &Step, ctx: &TaskContext<'_>, note: &str, actions: Vec<Action>) -> Report {
    Report::wait(
        serde_json::to_value(step).unwrap_or_default(),
        later(ctx.now, POLL_SECONDS),
        note,
        actions,
    )
}

fn stamp(t: jiff::Timestamp, ctx: &TaskContext<'_>) -> String {
    t.to_zoned(ctx.timezone.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let mut step: Step = ctx.step_as();
    if let Some(why) = step.rolling_back.clone()
        && !step.rolled_back
    {
        return roll_back_now(ctx, &mut step, Vec::new(), &why).await;
    }
    let report = cutover(ctx, &mut step).await;
    settle(ctx, &mut step, report).await
}

/// A cutover that must end now (past its task's timeout, or aborted by an operator): one
/// that has begun (by its step, or by the engine's life cycle when the step was lost) is
/// rolled back with `why`, or goes on rolling back with its first reason; `None` when
/// nothing was started.
pub(crate) async fn stop(ctx: &TaskContext<'_>, why: &str) -> Option<Report> {
    let mut step: Step = ctx.step_as();
    if step.rolled_back {
        return None;
    }
    if !step.started() {
        let source = launch::source(ctx).await.ok()?;
        match source.life_cycle {
            LifeCycle::CuttingOver => {}
            // Finalized by an attempt whose step was lost: nothing is left to stop.
            LifeCycle::Cutover | LifeCycle::Archived => {
                return Some(finalized_before(Vec::new(), why));
            }
            _ => return None,
        }
    }
    let why = step.rolling_back.clone().unwrap_or_else(|| why.to_owned());
    Some(roll_back_now(ctx, &mut step, Vec::new(), &why).await)
}

/// A failure once the cutover has started never leaves it half done: the engine not
/// answering (a transient error) is waited out with the step kept (past the window's end
/// the next look rolls back), and a refusal rolls the cutover back before the task fails
/// with the engine's reason.
async fn settle(ctx: &TaskContext<'_>, step: &mut Step, report: Report) -> Report {
    let Progress::Fail {
        reason, retryable, ..
    } = &report.progress
    else {
        return report;
    };
    if !step.started() || step.rolled_back {
        return report;
    }
    if *retryable {
        let note = match &step.rolling_back {
            Some(why) => format!("rolling back ({why}) once the engine answers: {reason}"),
            None => format!("the cutover goes on once the engine answers: {reason}"),
        };
        return Report::wait(
            serde_json::to_value(&*step).unwrap_or_default(),
            later(ctx.now, POLL_SECONDS),
            note,
            report.actions,
        );
    }
    if let Some(why) = &step.rolling_back {
        // The engine refused the rollback itself: said with both reasons.
        return Report::fail(
            format!("rolling back ({why}) failed: {reason}"),
            false,
            report.actions,
        );
    }
    let why = reason.clone();
    roll_back_now(ctx, step, report.actions, &why).await
}

/// Reads the source and rolls the cutover back for `why`, unless it was finalized after
/// all (a finalize whose answer was lost); what the engine says meanwhile is settled as
/// anything else (a transient error waited out, a refusal said).
async fn roll_back_now(
    ctx: &TaskContext<'_>,
    step: &mut Step,
    actions: Vec<Action>,
    why: &str,
) -> Report {
    step.rolling_back.get_or_insert_with(|| why.to_owned());
    let source = match launch::source(ctx).await {
        Ok(source) => source,
        Err(failed) => return Box::pin(settle(ctx, step, failed)).await,
    };
    if matches!(source.life_cycle, LifeCycle::Cutover | LifeCycle::Archived) {
        return finalized_before(actions, why);
    }
    let report = rollback(ctx, &source, step, actions, why).await;
    Box::pin(settle(ctx, step, report)).await
}

/// The server was cut over before the rollback for `why` (an abort, the window's end, a
/// timeout) could begin: a finalized cutover is not undone, and the task says so, so an
/// operator who aborted it learns that the abort came too late.
fn finalized_before(actions: Vec<Action>, why: &str) -> Report {
    Report::done(
        vec![Check::pass(
            "cutover",
            format!("already finalized: the server is cut over, so it was not rolled back ({why})"),
        )],
        format!("already cut over; not rolled back, as the finalize came before: {why}"),
        actions,
    )
}

fn finalized(actions: Vec<Action>) -> Report {
    Report::done(
        vec![Check::pass(
            "cutover",
            "already finalized: the server is cut over",
        )],
        "already cut over",
        actions,
    )
}

async fn cutover(ctx: &TaskContext<'_>, step: &mut Step) -> Report {
    let settings = &ctx.server.tasks.cutover;
    let mut actions = Vec::new();
    let source = match launch::source(ctx).await {
        Ok(source) => source,
        Err(report) => return report,
    };
    if source.life_cycle == LifeCycle::Cutover {
        return finalized(actions);
    }
    let window_end = ctx.window[1];
    let started =
        step.job.is_some() || step.shutdown_done || source.life_cycle == LifeCycle::CuttingOver;
    if !started {
        let expected = settings.expected_duration.approx_seconds() as i64;
        if later(ctx.now, expected) > window_end {
            return Report::fail(
                format!(
                    "not started: the window ends at {} and a cutover takes about {}; it would not finish inside the window",
                    stamp(window_end, ctx),
                    format_seconds(expected as f64)
                ),
                false,
                actions,
            );
        }
    } else if ctx.now > window_end {
        return rollback(ctx, &source, step, actions, WINDOW_ENDED).await;
    }
    if !step.shutdown_done {
        shutdown(ctx, step, &mut actions).await;
    }
    let job = match &step.job {
        Some(job) => replication::JobId(job.clone()),
        None => {
            let r = &source.replication;
            let max_lag = ctx.server.tasks.replication_verify.max_lag.approx_seconds() as f64;
            let synced = r.state == ReplicationState::Continuous
                && r.lag_seconds.is_some_and(|lag| lag <= max_lag);
            if !synced {
                let lag = r
                    .lag_seconds
                    .map(|lag| format!(", lag {}", format_seconds(lag)))
                    .unwrap_or_default();
                let why = match r.state {
                    // Not heard from since this process started, or lost: the agent is
                    // what the final sync waits for.
                    ReplicationState::Initiating
                    | ReplicationState::Disconnected
                    | ReplicationState::Stalled => format!(
                        "final sync: waiting for the agent, whose replication is {}{lag} (not connected or not heard from; if it stays so, wavelift retry {}/agent_push installs it again)",
                        replication::rules::state_name(r.state),
                        ctx.server.name.value
                    ),
                    _ => format!(
                        "final sync: waiting for continuous replication with a lag under {}, now {}{lag}",
                        format_seconds(max_lag),
                        replication::rules::state_name(r.state)
                    ),
                };
                return resume(step, ctx, &why, actions);
            }
            // A server whose boot test was skipped was never marked ready for cutover.
            if matches!(
                source.life_cycle,
                LifeCycle::ReadyForTest | LifeCycle::Testing
            ) {
                if let Err(err) = ctx
                    .engine
                    .change_life_cycle(&source.id, LifeCycle::ReadyForCutover)
                    .await
                {
                    return Report::engine_error(
                        "marking the server ready for cutover",
                        &err,
                        actions,
                    );
                }
                actions.push(Action {
                    action: "engine.change_life_cycle".to_owned(),
                    detail: "ready_for_cutover (its boot test was skipped)".to_owned(),
                });
            }
            // A wait for launch capacity keeps what was done: the source stays stopped
            // and is not stopped again.
            let resume = serde_json::to_value(&*step).unwrap_or_default();
            match launch::ensure_launch(ctx, &source, LaunchKind::Cutover, &mut actions, resume)
                .await
            {
                Ok(job) => {
                    step.job = Some(job.0.clone());
                    job
                }
                Err(report) => return report,
            }
        }
    };
    let target = match &step.target {
        Some(target) => replication::TargetId(target.clone()),
        None => match launch::launch_state(ctx, &source, &job).await {
            Err(report) => return report,
            Ok(LaunchState::InProgress) => {
                return resume(step, ctx, "launching the cutover target", actions);
            }
            Ok(LaunchState::Failed(reason)) => {
                let why = format!("the cutover launch failed ({reason})");
                return rollback(ctx, &source, step, actions, &why).await;
            }
            Ok(LaunchState::Launched(target)) => {
                step.target = Some(target.0.clone());
                target
            }
        },
    };
    let found = match launch::target(ctx, &target).await {
        Ok(found) => found,
        Err(report) => return report,
    };
    match launch::is_healthy(&found) {
        None => {
            return resume(step, ctx, "waiting for the cutover target to boot", actions);
        }
        Some(false) => {
            let why = launch::unhealthy(LaunchKind::Cutover, &found);
            return rollback(ctx, &source, step, actions, &why).await;
        }
        Some(true) => {}
    }
    if !step.checks.iter().any(|c| c.name == "status checks") {
        step.checks.push(Check::pass(
            "status checks",
            format!(
                "{target} running{}{}",
                found
                    .address
                    .as_deref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default(),
                found
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Err(err) = ctx.engine.finalize_cutover(&source.id).await {
        return Report::engine_error("finalizing the cutover", &err, actions);
    }
    actions.push(Action {
        action: "engine.finalize_cutover".to_owned(),
        detail: format!("target {target}"),
    });
    let mut checks = std::mem::take(&mut step.checks);
    checks.push(Check::pass(
        "finalized",
        "replication ended; the target is the server now",
    ));
    Report::done(checks, format!("cut over to {target}"), actions)
}

async fn shutdown(ctx: &TaskContext<'_>, step: &mut Step, actions: &mut Vec<Action>) {
    let settings = &ctx.server.tasks.cutover;
    step.shutdown_done = true;
    if !settings.shutdown_source || ctx.server.exclude_from_shutdown {
        step.checks
            .push(Check::pass("source shutdown", "not wanted for this server"));
        return;
    }
    if ctx.shell.is_rehearsal() {
        step.source_stopped = true;
        actions.push(Action {
            action: "shell.shutdown".to_owned(),
            detail: "rehearsal: the source would be shut down".to_owned(),
        });
        return;
    }
    // A `local` source is this machine: it is never shut down. Over SSH this version
    // leaves the source running as well, and says so.
    let detail = if ctx.server.access.method == waves::model::AccessMethod::Local {
        "skipped: a local source is the machine Wavelift runs on"
    } else {
        "skipped: this version does not shut sources down; stop the source's services when the window opens"
    };
    step.checks.push(Check::pass("source shutdown", detail));
}

/// Why a cutover that ran past its window is rolled back.
const WINDOW_ENDED: &str = "the cutover did not finish before the window ended";

/// Undoes a cutover that cannot finish (`why`): back to ready for cutover, the cutover
/// target terminated, the source started again. The task fails with the reason.
async fn rollback(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    step: &mut Step,
    mut actions: Vec<Action>,
    why: &str,
) -> Report {
    step.rolling_back.get_or_insert_with(|| why.to_owned());
    if source.life_cycle == LifeCycle::CuttingOver {
        if let Err(err) = ctx
            .engine
            .change_life_cycle(&source.id, LifeCycle::ReadyForCutover)
            .await
        {
            return Report::engine_error("rolling back the life cycle", &err, actions);
        }
        actions.push(Action {
            action: "engine.change_life_cycle".to_owned(),
            detail: "ready_for_cutover (rollback)".to_owned(),
        });
    }
    // The engine's word too: a step lost to a timeout forgets the job, not the target.
    let live = match launch::earlier_launch_any(ctx, source, LaunchKind::Cutover).await {
        Ok(live) => live,
        Err(report) => return report,
    };
    if step.job.is_some() || live.is_some() {
        let target = step.target.clone().or(live).map(replication::TargetId);
        if let Err(report) = launch::terminate_once(
            ctx,
            source,
            target.as_ref(),
            LaunchKind::Cutover,
            &mut actions,
        )
        .await
        {
            return report;
        }
    }
    if step.source_stopped {
        actions.push(Action {
            action: "shell.start".to_owned(),
            detail: "rehearsal: the source would be started again".to_owned(),
        });
    }
    step.rolled_back = true;
    let reason = if why == WINDOW_ENDED {
        format!("rolled back: {why} at {}", stamp(ctx.window[1], ctx))
    } else {
        format!("rolled back: {why}")
    };
    Report::fail(reason, false, actions)
}

#[cfg(test)]
mod tests {
    use waves::model::TaskKind;

    use super::{Step, settle};
    use crate::context::{Progress, Report};
    use crate::testing::{Rig, assert_rolled_back, window_start};

    /// A cutover started on the rehearsal engine (the source stopped, its launch under
    /// way), then an engine error: a transient one is waited out with the step kept, a
    /// refusal rolls the cutover back before the task fails.
    #[tokio::test]
    async fn a_started_cutover_waits_out_a_busy_engine_and_rolls_back_on_a_refusal() {
        let rig = Rig::new(window_start());
        let (id, now, step) = rig.under_way(TaskKind::Cutover).await;
        let context = || rig.context(TaskKind::Cutover, now, None);
        let mut step: Step = serde_json::from_value(step).expect("the step");
        assert!(step.source_stopped && step.job.is_some(), "{step:?}");

        let busy = Report::fail(
            "reading the launch job: the engine said: slow down",
            true,
            Vec::new(),
        );
        let waited = settle(&context(), &mut step, busy).await;
        let Progress::Wait {
            step: kept, note, ..
        } = waited.progress
        else {
            panic!("a busy engine failed the cutover: {waited:?}");
        };
        assert_eq!(kept, serde_json::to_value(&step).expect("json"));
        assert!(note.contains("slow down"), "{note}");

        let refused = Report::fail(
            "finalizing the cutover: the engine said: no",
            false,
            Vec::new(),
        );
        let failed = settle(&context(), &mut step, refused).await;
        assert_rolled_back(
            &rig.engine,
            &failed,
            &id,
            "rolled back: finalizing the cutover: the engine said: no",
        )
        .await;
    }

    /// A refusal that comes after the engine finalized (a finalize whose answer was
    /// lost, asked again) rolls nothing back: the server is cut over.
    #[tokio::test]
    async fn a_refusal_after_the_finalize_took_effect_rolls_nothing_back() {
        let rig = Rig::new(window_start());
        let now = rig.cut_over().await;
        let mut step = Step {
            shutdown_done: true,
            job: Some("sim-job-1".to_owned()),
            ..Step::default()
        };
        let refused = Report::fail(
            "finalizing the cutover: the engine said: already finalized",
            false,
            Vec::new(),
        );
        let report = settle(
            &rig.context(TaskKind::Cutover, now, None),
            &mut step,
            refused,
        )
        .await;
        assert!(
            matches!(report.progress, Progress::Done { .. }),
            "{report:?}"
        );
        assert!(report.actions.is_empty(), "{:?}", report.actions);
    }
}
