//! boot_test: a test launch from the latest data (replication goes on), wait for the
//! target to boot, run the checks, clean up, and mark the server ready for cutover.

use replication::{LaunchKind, LifeCycle};
use serde::{Deserialize, Serialize};
use waves::settings::Probe;

use crate::context::{Action, Check, POLL_SECONDS, Report, TaskContext, later};
use crate::launch::{self, LaunchState};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Step {
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

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let mut step: Step = ctx.step_as();
    let mut actions = Vec::new();
    let source = match launch::source(ctx).await {
        Ok(source) => source,
        Err(report) => return report,
    };
    if matches!(
        source.life_cycle,
        LifeCycle::ReadyForCutover | LifeCycle::CuttingOver | LifeCycle::Cutover
    ) {
        if let Some(target) = step.target.clone().map(replication::TargetId)
            && let Err(report) =
                launch::terminate_once(ctx, &source, Some(&target), LaunchKind::Test, &mut actions)
                    .await
        {
            return report;
        }
        return Report::done(
            vec![Check::pass(
                "boot test",
                format!("already passed: the server is {:?}", source.life_cycle),
            )],
            "already tested",
            actions,
        );
    }
    let job = match &step.job {
        Some(job) => replication::JobId(job.clone()),
        // No pause after starting: an engine that launches at once is followed at once.
        None => match launch::ensure_launch(
            ctx,
            &source,
            LaunchKind::Test,
            &mut actions,
            serde_json::to_value(&step).unwrap_or_default(),
        )
        .await
        {
            Ok(job) => {
                step.job = Some(job.0.clone());
                job
            }
            Err(report) => return report,
        },
    };
    let target = match &step.target {
        Some(target) => replication::TargetId(target.clone()),
        None => match launch::launch_state(ctx, &source, &job).await {
            Err(report) => return report,
            Ok(LaunchState::InProgress) => {
                return resume(&step, ctx, "launching the test target", actions);
            }
            Ok(LaunchState::Failed(reason)) => {
                return Report::fail(format!("the test launch failed: {reason}"), true, actions);
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
        None => return resume(&step, ctx, "waiting for the test target to boot", actions),
        Some(false) => {
            let failure = launch::unhealthy(LaunchKind::Test, &found);
            return failed_test(ctx, &source, Some(&target), failure, true, actions).await;
        }
        Some(true) => {}
    }
    if step.checks.is_empty() {
        step.checks.push(Check::pass(
            "status checks",
            match &found.detail {
                Some(detail) => format!("{target} running: {detail}"),
                None => format!("{target} running, checks ok"),
            },
        ));
        step.checks
            .extend(probe_checks(ctx, found.address.as_deref()));
    }
    if let Some(failed) = step.checks.iter().find(|c| !c.passed) {
        // The checks that fail in this version are probes its engine cannot run: the
        // configuration must change before a retry can pass.
        let failure = format!("boot test check failed: {}: {}", failed.name, failed.detail);
        return failed_test(ctx, &source, Some(&target), failure, false, actions).await;
    }
    if source.life_cycle != LifeCycle::ReadyForCutover {
        if let Err(err) = ctx
            .engine
            .change_life_cycle(&source.id, LifeCycle::ReadyForCutover)
            .await
        {
            return Report::engine_error("marking the server ready for cutover", &err, actions);
        }
        actions.push(Action {
            action: "engine.change_life_cycle".to_owned(),
            detail: "ready_for_cutover".to_owned(),
        });
    }
    if let Err(report) =
        launch::terminate_once(ctx, &source, Some(&target), LaunchKind::Test, &mut actions).await
    {
        return report;
    }
    Report::done(
        step.checks,
        "test target healthy; ready for cutover",
        actions,
    )
}

/// A boot test that ran past its timeout with a launch under way or a target up ends as
/// a failed test (the target terminated, the server out of testing) that a retry may
/// repeat; `None` when it launched nothing.
pub(crate) async fn time_out(ctx: &TaskContext<'_>, why: &str) -> Option<Report> {
    let step: Step = ctx.step_as();
    if step.job.is_none() && step.target.is_none() {
        return None;
    }
    // An engine that cannot be read leaves the step as it is, for the retry.
    let source = launch::source(ctx).await.ok()?;
    let target = step.target.map(replication::TargetId);
    Some(
        failed_test(
            ctx,
            &source,
            target.as_ref(),
            why.to_owned(),
            true,
            Vec::new(),
        )
        .await,
    )
}

/// Ends a failed test: the server leaves testing and its test target (the one named, or
/// any of the server's while its launch was under way) is terminated, so a retry
/// launches a new one; then the task fails with `failure`. A target the server cannot
/// leave testing for is left running, and the failure says so.
async fn failed_test(
    ctx: &TaskContext<'_>,
    source: &replication::SourceServer,
    target: Option<&replication::TargetId>,
    failure: String,
    retryable: bool,
    mut actions: Vec<Action>,
) -> Report {
    if let Err(err) = launch::leave_testing(ctx, source, &mut actions).await {
        return Report::fail(
            format!(
                "{failure}; the test target is left running, as the server could not leave testing: {}",
                err.message
            ),
            true,
            actions,
        );
    }
    if let Err(report) =
        launch::terminate_once(ctx, source, target, LaunchKind::Test, &mut actions).await
    {
        return report;
    }
    Report::fail(failure, retryable, actions)
}

/// The configured probes. A rehearsal target has no address to probe; real targets are
/// probed by the engines that launch them (local, mgn), which arrive later.
fn probe_checks(ctx: &TaskContext<'_>, address: Option<&str>) -> Vec<Check> {
    ctx.server
        .tasks
        .boot_test
        .probes
        .iter()
        .map(|probe| {
            let name = match probe {
                Probe::Tcp { port } => format!("tcp {port}"),
                Probe::Http { url, status } => format!("http {url} -> {status}"),
            };
            if ctx.engine.is_rehearsal() {
                Check::pass(name, "rehearsal: not probed")
            } else {
                Check::fail(
                    name,
                    format!(
                        "probing {} is not available with the {} engine in this version",
                        address.unwrap_or("the target"),
                        ctx.engine.name()
                    ),
                    "remove the probe or skip boot_test for this server",
                )
            }
        })
        .collect()
}
