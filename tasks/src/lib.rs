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

pub use context::{Action, Check, Progress, Report, TaskContext};

use waves::model::TaskKind;

/// Runs the next step of a task.
pub async fn run(ctx: &TaskContext<'_>) -> Report {
    match ctx.kind {
        TaskKind::PrereqCheck => prereq_check::run(ctx).await,
        TaskKind::AgentPush => agent_push::run(ctx).await,
        TaskKind::ReplicationVerify => replication_verify::run(ctx).await,
        TaskKind::BootTest => boot_test::run(ctx).await,
        TaskKind::Cutover => cutover::run(ctx).await,
        TaskKind::CmdbCleanup => cmdb_cleanup::run(ctx).await,
    }
}
