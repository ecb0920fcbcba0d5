//! cutover: inside the window, after the gate (boot tests, dependencies, approval):
//! optional source shutdown, final sync, cutover launch, checks, finalize. A cutover
//! that cannot finish inside the window is not started; one that runs past the window's
//! end is rolled back (target terminated, source restarted, life cycle back to ready for
//! cutover) and reported.

use replication::{LaunchKind, LifeCycle, ReplicationState, SourceServer};
use serde::{Deserialize, Serialize};
use waves::units::format_seconds;

use crate::context::{Action, Check, POLL_SECONDS, Report, TaskContext, later};
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
    let settings = &ctx.server.tasks.cutover;
    let mut step: Step = ctx
        .step
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut actions = Vec::new();
    let source = match launch::source(ctx).await {
        Ok(source) => source,
        Err(report) => return report,
    };
    if source.life_cycle == LifeCycle::Cutover {
        return Report::done(
            vec![Check::pass(
                "cutover",
                "already finalized: the server is cut over",
            )],
            "already cut over",
            actions,
        );
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
        return rollback(ctx, &source, &step, actions).await;
    }
    if !step.shutdown_done {
        shutdown(ctx, &mut step, &mut actions).await;
    }
    let job = match &step.job {
        Some(job) => replication::JobId(job.clone()),
        None => {
            let r = &source.replication;
            let max_lag = ctx.server.tasks.replication_verify.max_lag.approx_seconds() as f64;
            let synced = r.state == ReplicationState::Continuous
                && r.lag_seconds.is_some_and(|lag| lag <= max_lag);
            if !synced {
                return resume(&step, ctx, &format!("final sync: {:?}", r.state), actions);
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
            let resume = serde_json::to_value(&step).unwrap_or_default();
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
                return resume(&step, ctx, "launching the cutover target", actions);
            }
            Ok(LaunchState::Failed(reason)) => {
                let mut report = rollback(ctx, &source, &step, actions).await;
                if let crate::context::Progress::Fail { reason: r, .. } = &mut report.progress {
                    *r = format!("the cutover launch failed ({reason}); {r}");
                }
                return report;
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
            return resume(
                &step,
                ctx,
                "waiting for the cutover target to boot",
                actions,
            );
        }
        Some(false) => return rollback(ctx, &source, &step, actions).await,
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
    let mut checks = step.checks;
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

/// Undoes a cutover that cannot finish: back to ready for cutover, the cutover target
/// terminated, the source started again. The task fails with the reason.
async fn rollback(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    step: &Step,
    mut actions: Vec<Action>,
) -> Report {
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
    if step.job.is_some() {
        let target = step.target.clone().map(replication::TargetId);
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
    Report::fail(
        format!(
            "rolled back: the cutover did not finish before the window ended at {}",
            stamp(ctx.window[1], ctx)
        ),
        false,
        actions,
    )
}
