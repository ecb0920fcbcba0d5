//! An operator's request to abort a running task (`wavelift abort`): who asked and why,
//! kept on the task until its next turn ends it (a cutover rolls back). A retry clears
//! it. A partial index holds the tasks with one, so the executor's look for aborts
//! before and after each batch with cutovers reads an index of a few rows at most.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    AbortRequested,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite has no ADD COLUMN IF NOT EXISTS, and a start killed after this statement
        // runs the migration again.
        if !manager.has_column("tasks", "abort_requested").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(text_null(Tasks::AbortRequested))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_aborting")
                    .table(Tasks::Table)
                    .col(Tasks::Id)
                    .and_where(Expr::col(Tasks::AbortRequested).is_not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("tasks_aborting")
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        if manager.has_column("tasks", "abort_requested").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(Tasks::AbortRequested)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
