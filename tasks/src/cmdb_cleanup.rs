//! cmdb_cleanup: after cutover and hypercare, retire the source in the CMDB, record the
//! target, and archive the server in the engine.

use replication::{LaunchKind, LifeCycle};

use crate::cmdb::Outcome;
use crate::context::{Action, Check, Report, TaskContext};
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
    let change = match ctx.cmdb.retire(ctx.server, target.as_deref()).await {
        Ok(change) => change,
        Err(err) => return Report::fail(format!("the CMDB refused: {err}"), true, actions),
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
            return Report::engine_error("archiving the source server", &err, actions);
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
