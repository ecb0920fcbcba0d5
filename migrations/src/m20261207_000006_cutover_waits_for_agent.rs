//! A cutover waits for its server's agent_push too (the store adds the edge the plan
//! implies; see the orchestrator's `replace_dependencies`), so that a reinstall of the
//! agent holds a cutover that has not begun. Stores written before get the edge here,
//! and every task's count of unfinished dependencies is taken again, the same way the
//! orchestrator counts them: a count left one short would let a cutover start when its
//! agent_push succeeds while its boot test has not. Both statements can run again (a
//! start killed between them): the edge is added only where it is missing, and the
//! count is recomputed, not adjusted.

use sea_orm_migration::prelude::*;

/// Every task's count of dependencies that have neither succeeded, been skipped nor been
/// released: the orchestrator's `recount_dependencies`, as one statement.
const RECOUNT: &str = "UPDATE tasks SET pending_deps = (SELECT COUNT(*) FROM task_dependencies d \
     JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = tasks.id \
     AND t.state NOT IN ('succeeded', 'skipped') AND t.released_at IS NULL)";

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
