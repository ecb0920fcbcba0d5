//! cmdb_cleanup: after cutover and hypercare, retire the source in the CMDB, record the
//! target, and archive the server in the engine.

use replication::{LaunchKind, LifeCycle};

use crate::cmdb::{CmdbChange, Outcome};
use crate::context::{Action, Check, KEPT, Progress, Report, TaskContext};
use crate::launch;

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let mut actions = Vec::new();
    let source = match launch::source(ctx).await {
        Ok(source) => source,
        Err(report) => return report,
    };
    let target = match launch::earlier_launch_any(ctx, &source, LaunchKind::Cutover).await {
        Ok(target) => target,
        Err(report) => return report,
    };
    if !cut_over(source.life_cycle, target.is_some()) {
        // MGN's name of the state (`ready_for_cutover`), as the dashboard shows it.
        let state = serde_json::to_value(source.life_cycle)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Report::fail(
            format!(
                "{} is {state} in the engine, not cut over (a cutover skipped, rolled back or \
                 failed back): its CMDB record is left as it is and nothing is archived; \
                 when it is cut over, `wavelift retry {}`; if it stays where it is, \
                 `wavelift skip {}`",
                ctx.server.name.value, ctx.task_id, ctx.task_id
            ),
            false,
            actions,
        );
    }
    // A retry after the record was written (the archive failed) does not write it again:
    // a CMDB that opens a ticket per request would get two.
    let written: Option<CmdbChange> = ctx.step.as_ref().and_then(|step| {
        let kept = crate::context::kept_part(step)?;
        serde_json::from_value(kept.get("cmdb")?.clone()).ok()
    });
    let change = match written {
        Some(change) => CmdbChange {
            outcome: Outcome::AlreadyDone,
            ..change
        },
        None => match ctx.cmdb.retire(ctx.server, target.as_deref()).await {
            Ok(change) => change,
            Err(err) => return Report::fail(format!("the CMDB refused: {err}"), true, actions),
        },
    };
    // A dry run retires nothing, so nothing is archived and the task is not done.
    if change.outcome == Outcome::DryRun {
        return Report::fail(
            format!(
                "record {}: {}; nothing written, nothing archived: set cmdb.dry_run to false, then `wavelift retry {}`",
                change.record, change.status, ctx.task_id
            ),
            false,
            actions,
        );
    }
    if change.outcome == Outcome::Written {
        actions.push(Action {
            action: format!("cmdb.{}.retire", ctx.cmdb.kind()),
            detail: format!("record {} -> {}", change.record, change.status),
        });
    }
    let mut checks = vec![Check::pass(
        "cmdb",
        format!(
            "record {}: {}{}",
            change.record,
            change.status,
            change
                .target
                .as_deref()
                .map(|t| format!(", target {t}"))
                .unwrap_or_default()
        ),
    )];
    if source.life_cycle != LifeCycle::Archived {
        if let Err(err) = ctx.engine.archive(&source.id).await {
            let mut report = Report::engine_error("archiving the source server", &err, actions);
            if let Progress::Fail { step, .. } = &mut report.progress {
                *step = Some(serde_json::json!({ KEPT: { "cmdb": change } }));
            }
            return report;
        }
        actions.push(Action {
            action: "engine.archive".to_owned(),
            detail: source.id.to_string(),
        });
    }
    checks.push(Check::pass(
        "archived",
        "the engine keeps nothing running for it",
    ));
    Report::done(checks, "retired and archived", actions)
}

/// A source may be retired in the CMDB once the engine says it was cut over (finalized,
/// or archived since), or disconnected after a cutover launch: never one that still
/// serves from the source (before its cutover, or back on it after a failback).
fn cut_over(life_cycle: LifeCycle, launched: bool) -> bool {
    match life_cycle {
        LifeCycle::Cutover | LifeCycle::Archived => true,
        LifeCycle::Disconnected => launched,
        LifeCycle::NotReady
        | LifeCycle::ReadyForTest
        | LifeCycle::Testing
        | LifeCycle::ReadyForCutover
        | LifeCycle::CuttingOver => false,
    }
}

#[cfg(test)]
mod tests {
    use replication::LifeCycle::*;
    use waves::model::TaskKind;

    use crate::cmdb::{BrokenCmdb, CmdbChange, Outcome};
    use crate::context::{KEPT, Progress};
    use crate::testing::{Rig, window_start};

    #[tokio::test]
    async fn a_server_not_cut_over_is_left_as_it_is_in_the_cmdb() {
        let rig = Rig::new(window_start());
        rig.register().await;
        rig.clock.advance(3600.0);
        let report = super::run(&rig.context(TaskKind::CmdbCleanup, window_start(), None)).await;
        let Progress::Fail {
            reason, retryable, ..
        } = &report.progress
        else {
            panic!("a server never cut over was retired: {report:?}");
        };
        assert!(
            reason.starts_with("s1 is ready_for_test in the engine, not cut over"),
            "{reason}"
        );
        assert!(!retryable);
        assert!(report.actions.is_empty(), "{:?}", report.actions);
    }

    /// A retry after the archive failed finds the record written, and writes it not
    /// again (the CMDB here would refuse any write).
    #[tokio::test]
    async fn a_record_written_before_a_failed_archive_is_not_written_again() {
        let written = CmdbChange {
            record: "s1".to_owned(),
            status: "retired".to_owned(),
            target: Some("t-1".to_owned()),
            outcome: Outcome::Written,
        };
        // As this version keeps it, and as the twelfth session's version wrote it.
        for step in [
            serde_json::json!({ KEPT: { "cmdb": written } }),
            serde_json::json!({ "cmdb": written }),
        ] {
            let rig = Rig::new(window_start());
            let now = rig.cut_over().await;
            let broken = BrokenCmdb("no write expected".to_owned());
            let mut context = rig.context(TaskKind::CmdbCleanup, now, Some(step));
            context.cmdb = &broken;
            let report = super::run(&context).await;
            let Progress::Done { checks, .. } = &report.progress else {
                panic!("the resumed cleanup did not end: {report:?}");
            };
            assert_eq!(checks[0].detail, "record s1: retired, target t-1");
            let did: Vec<&str> = report.actions.iter().map(|a| a.action.as_str()).collect();
            assert_eq!(did, ["engine.archive"]);
        }
    }

    #[test]
    fn only_a_server_cut_over_is_retired() {
        for (life_cycle, launched, retired) in [
            (Cutover, true, true),
            (Archived, false, true),
            (Disconnected, true, true),
            (Disconnected, false, false),
            (ReadyForCutover, true, false),
            (CuttingOver, true, false),
            (Testing, false, false),
            (NotReady, false, false),
        ] {
            assert_eq!(
                super::cut_over(life_cycle, launched),
                retired,
                "{life_cycle:?}, launched: {launched}"
            );
        }
    }
}
