//! The predefined tasks of a server's plan, one module each, and the ports they act
//! through besides the replication engine: [`shell::RemoteShell`] (how commands reach a
//! source server) and [`cmdb::Cmdb`] (the configuration database).
//!
//! A task runs in steps. Each call of [`run`] reads the engine's state first, does the
//! next thing, and returns either a final outcome or the step to resume from and when:
//! so a task survives a crash of the process that runs it, and an action the engine has
//! already done (a launch, a finalize) is found and recorded, never done twice.

pub mod agent_push;
pub mod boot_test;
pub mod cmdb;
pub mod cmdb_api;
pub mod cmdb_cleanup;
pub mod context;
pub mod cutover;
pub mod failback;
pub mod launch;
pub mod launcher;
pub mod prereq_check;
pub mod replication_verify;
pub mod shell;
pub mod ssh;
#[cfg(test)]
mod testing;

pub use context::{Action, Check, KEPT, Progress, Report, TaskContext, kept_part};

use waves::model::TaskKind;

/// Runs the next step of a task.
pub async fn run(ctx: &TaskContext<'_>) -> Report {
    if let Some(why) = ctx.aborted {
        return end_now(ctx, why, false).await;
    }
    if let Some(why) = ctx.timed_out {
        return end_now(ctx, why, true).await;
    }
    match ctx.kind {
        TaskKind::PrereqCheck => prereq_check::run(ctx).await,
        TaskKind::AgentPush => agent_push::run(ctx).await,
        TaskKind::ReplicationVerify => replication_verify::run(ctx).await,
        TaskKind::BootTest => boot_test::run(ctx).await,
        TaskKind::Cutover => cutover::run(ctx).await,
        TaskKind::CmdbCleanup => cmdb_cleanup::run(ctx).await,
    }
}

/// Ends an attempt now, for `why`: it ran past its timeout (`retryable`), or an operator
/// aborted it. A started cutover is rolled back (it is never left half done) and fails
/// for good, a boot test's target is terminated (a retry launches a new one); any other
/// task fails with its step kept, so a retry resumes from what the attempt did (a CMDB
/// record written, an install under way) instead of doing it again.
async fn end_now(ctx: &TaskContext<'_>, why: &str, retryable: bool) -> Report {
    let report = match ctx.kind {
        TaskKind::Cutover => cutover::stop(ctx, why).await,
        TaskKind::BootTest => boot_test::time_out(ctx, why).await,
        _ => None,
    };
    report.unwrap_or_else(|| Report {
        progress: Progress::Fail {
            reason: why.to_owned(),
            retryable,
            checks: Vec::new(),
            step: ctx.step.clone(),
        },
        actions: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use replication::{LifeCycle, ReplicationEngine};
    use waves::model::TaskKind;

    use crate::context::Progress;
    use crate::testing::{Rig, actions, assert_rolled_back, window_start};

    const WHY: &str = "timed out after 2h";

    /// A cutover past its timeout with its launch under way on the rehearsal engine is
    /// rolled back, not dropped: the target terminated, the server ready for cutover
    /// again, the task failed for good with the timeout as its reason.
    #[tokio::test]
    async fn a_started_cutover_past_its_timeout_is_rolled_back() {
        let rig = Rig::new(window_start());
        let (id, now, step) = rig.under_way(TaskKind::Cutover).await;
        let mut ctx = rig.context(TaskKind::Cutover, now, Some(step));
        ctx.timed_out = Some(WHY);
        let report = crate::run(&ctx).await;
        assert_rolled_back(&rig.engine, &report, &id, "rolled back: timed out after 2h").await;
    }

    /// A cutover whose server does not replicate continuously yet waits for its final
    /// sync and says for what: the replication's state in the engine's words and what a
    /// continuous one must reach.
    #[tokio::test]
    async fn a_cutover_waiting_for_its_final_sync_says_what_it_waits_for() {
        let rig = Rig::new(window_start());
        rig.register().await;
        let report = crate::run(&rig.context(TaskKind::Cutover, window_start(), None)).await;
        let Progress::Wait { note, .. } = &report.progress else {
            panic!("the cutover did not wait: {report:?}");
        };
        let state = rig
            .engine
            .find_source("s1")
            .await
            .ok()
            .flatten()
            .map(|s| replication::rules::state_name(s.replication.state))
            .unwrap_or_default();
        assert!(
            note.starts_with("final sync: waiting for ") && note.contains(&format!(" {state}")),
            "{note} ({state})"
        );
        assert!(
            !note.contains("Initiating") && !note.contains("InitialSync"),
            "{note}"
        );
    }

    /// A cutover an operator aborts with its launch under way is rolled back the same
    /// way, with the operator's reason, and fails for good.
    #[tokio::test]
    async fn an_aborted_cutover_is_rolled_back_with_the_operators_reason() {
        let rig = Rig::new(window_start());
        let (id, now, step) = rig.under_way(TaskKind::Cutover).await;
        let mut ctx = rig.context(TaskKind::Cutover, now, Some(step));
        ctx.aborted = Some("aborted by alice: a blocker");
        let report = crate::run(&ctx).await;
        assert_rolled_back(
            &rig.engine,
            &report,
            &id,
            "rolled back: aborted by alice: a blocker",
        )
        .await;
        // One aborted before it started anything fails for good, touching nothing.
        let mut ctx = rig.context(TaskKind::Cutover, now, None);
        ctx.aborted = Some("aborted by alice: a blocker");
        let report = crate::run(&ctx).await;
        assert!(
            matches!(&report.progress, Progress::Fail { reason, retryable: false, .. } if reason == "aborted by alice: a blocker"),
            "{report:?}"
        );
        assert!(report.actions.is_empty(), "{:?}", report.actions);
    }

    /// An abort that arrives once the cutover is finalized is too late: the server stays
    /// cut over, the task succeeds, and its output says the abort was not carried out,
    /// whether its step says it started or was lost.
    #[tokio::test]
    async fn an_abort_after_the_finalize_says_it_came_too_late() {
        let rig = Rig::new(window_start());
        let (id, mut now, mut step) = rig.under_way(TaskKind::Cutover).await;
        let life_cycle = async || {
            let source = rig.engine.describe_source(&id).await;
            source.expect("the source").life_cycle
        };
        for _ in 0..20 {
            if life_cycle().await == LifeCycle::Cutover {
                break;
            }
            rig.clock.advance(300.0);
            now += jiff::SignedDuration::from_mins(5);
            let report = crate::run(&rig.context(TaskKind::Cutover, now, Some(step.clone()))).await;
            match report.progress {
                Progress::Wait { step: next, .. } => step = next,
                Progress::Done { .. } => break,
                other => panic!("the cutover did not go through: {other:?}"),
            }
        }
        assert_eq!(life_cycle().await, LifeCycle::Cutover);
        for kept in [Some(step), None] {
            let mut ctx = rig.context(TaskKind::Cutover, now, kept);
            ctx.aborted = Some("aborted by alice: a blocker");
            let report = crate::run(&ctx).await;
            let Progress::Done { output, checks } = &report.progress else {
                panic!("a finalized cutover is not undone: {report:?}");
            };
            assert_eq!(
                output,
                "already cut over; not rolled back, as the finalize came before: aborted by alice: a blocker"
            );
            assert!(checks.iter().all(|c| c.passed), "{checks:?}");
            assert!(report.actions.is_empty(), "{:?}", report.actions);
            assert_eq!(life_cycle().await, LifeCycle::Cutover);
        }
    }

    /// A cutover that started nothing fails its attempt with a retry, touching nothing.
    #[tokio::test]
    async fn a_cutover_that_started_nothing_just_fails_its_attempt() {
        let rig = Rig::new(window_start());
        let id = rig.register().await;
        let before = rig.engine.describe_source(&id).await.expect("the source");
        let mut ctx = rig.context(TaskKind::Cutover, window_start(), None);
        ctx.timed_out = Some(WHY);
        let report = crate::run(&ctx).await;
        assert!(
            matches!(&report.progress, Progress::Fail { reason, retryable: true, step: None, .. } if reason == WHY),
            "{report:?}"
        );
        assert!(report.actions.is_empty(), "{:?}", report.actions);
        let after = rig.engine.describe_source(&id).await.expect("the source");
        assert_eq!(after.life_cycle, before.life_cycle);
    }

    /// A boot test past its timeout with its test launch under way ends as a failed test
    /// a retry may repeat: the server out of testing, its test target terminated.
    #[tokio::test]
    async fn a_boot_test_past_its_timeout_terminates_its_target() {
        let rig = Rig::new(window_start());
        let (id, now, step) = rig.under_way(TaskKind::BootTest).await;
        let mut ctx = rig.context(TaskKind::BootTest, now, Some(step));
        ctx.timed_out = Some(WHY);
        let report = crate::run(&ctx).await;
        assert!(
            matches!(&report.progress, Progress::Fail { reason, retryable: true, step: None, .. } if reason == WHY),
            "{report:?}"
        );
        assert!(
            actions(&report).contains(&"engine.terminate_targets"),
            "{:?}",
            report.actions
        );
        let source = rig.engine.describe_source(&id).await.expect("the source");
        assert_ne!(source.life_cycle, LifeCycle::Testing);
    }

    /// Any other task keeps its step through a timeout, so the retry resumes from what
    /// the attempt did (here a CMDB record already written) instead of doing it again.
    #[tokio::test]
    async fn other_tasks_keep_their_step_through_a_timeout() {
        let rig = Rig::new(window_start());
        let step = serde_json::json!({ "cmdb": { "written": true } });
        let mut ctx = rig.context(TaskKind::CmdbCleanup, window_start(), Some(step.clone()));
        ctx.timed_out = Some(WHY);
        let report = crate::run(&ctx).await;
        let Progress::Fail {
            reason,
            retryable,
            step: kept,
            ..
        } = &report.progress
        else {
            panic!("a timed-out clean-up did not fail: {report:?}");
        };
        assert_eq!(reason, WHY);
        assert!(retryable);
        assert_eq!(kept.as_ref(), Some(&step));
        assert!(report.actions.is_empty(), "{:?}", report.actions);
    }
}
