//! An operator's request to abort a running task (`wavelift abort`): who asked and why,
//! kept on the task until its next turn ends it (a cutover rolls back). A retry clears
//! it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
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
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
