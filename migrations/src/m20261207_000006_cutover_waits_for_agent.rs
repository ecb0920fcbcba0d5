//! A cutover waits for its server's agent_push too (the store adds the edge the plan
//! implies; see the orchestrator's `replace_dependencies`), so that a reinstall of the
//! agent holds a cutover that has not begun. Stores written before get the edge here,
//! and every task's count of unfinished dependencies is taken again, the same way the
//! orchestrator counts them: a count left one short would let a cutover start when its
//! agent_push succeeds while its boot test has not. Then what waits on a task that did
//! not succeed is blocked, as the orchestrator's recount blocks it. Every statement can
//! run again (a start killed between them): the edge is added only where it is missing,
//! the count is recomputed, not adjusted, and blocking what is blocked changes nothing.

use sea_orm_migration::prelude::*;

/// Every task's count of dependencies that have neither succeeded, been skipped nor been
/// released: the orchestrator's `recount_dependencies`, as one statement.
const RECOUNT: &str = "UPDATE tasks SET pending_deps = (SELECT COUNT(*) FROM task_dependencies d \
     JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = tasks.id \
     AND t.state NOT IN ('succeeded', 'skipped') AND t.released_at IS NULL)";

/// Then, as the orchestrator's recount does, what waits on a task that failed, was
/// cancelled or is blocked is blocked (and loses its lease): a task that has not begun,
/// and a replication check that released the tasks after it and watches on but waits on
/// its agent_push again (the orchestrator's `tasks::BLOCKABLE`, which this crate cannot
/// name). An earlier store may hold such a watch left running after a reinstall failed
/// for good: without this it would wait for ever, and its wave with it. One level per
/// statement, repeated; the bound keeps a bad graph from looping.
const BLOCK: &str = "UPDATE tasks SET state = 'blocked', \
     reason = 'blocked: a task it depends on did not succeed', \
     lease_owner = NULL, lease_expires_at = NULL \
     WHERE (state IN ('pending', 'awaiting_approval') \
     OR (state = 'running' AND pending_deps > 0 AND kind = 'replication_verify')) \
     AND id IN (SELECT d.task_id FROM task_dependencies d JOIN tasks t ON t.id = d.depends_on \
     WHERE t.state IN ('failed', 'cancelled', 'blocked'))";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO task_dependencies (task_id, depends_on) \
             SELECT c.id, a.id FROM tasks c JOIN tasks a \
             ON a.server = c.server AND a.kind = 'agent_push' \
             WHERE c.kind = 'cutover' AND NOT EXISTS (SELECT 1 FROM task_dependencies d \
             WHERE d.task_id = c.id AND d.depends_on = a.id)",
        )
        .await?;
        db.execute_unprepared(RECOUNT).await?;
        for _ in 0..64 {
            if db.execute_unprepared(BLOCK).await?.rows_affected() == 0 {
                break;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "DELETE FROM task_dependencies WHERE task_id IN \
             (SELECT id FROM tasks WHERE kind = 'cutover') AND depends_on IN \
             (SELECT id FROM tasks WHERE kind = 'agent_push')",
        )
        .await?;
        db.execute_unprepared(RECOUNT).await?;
        Ok(())
    }
}
