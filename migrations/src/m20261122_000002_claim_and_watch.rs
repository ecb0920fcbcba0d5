//! The claim's index, and when a task released its dependants.
//!
//! The claim's index: only the tasks that could be claimed (pending or running, with no
//! dependency left), in the order they are claimed (due time, then id). The claim walks
//! it from the start and stops after the batch, where the earlier index on (state,
//! pending_deps, next_run_at) made it sort every ready task on each claim.
//!
//! The earlier index goes. No index on the state alone: without statistics SQLite
//! would prefer it for the claim and sort again.
//!
//! `released_at`: when a task let the tasks that depend on it start while it runs on (a
//! recurring check such as replication_verify, watching replication until the cutover);
//! dependencies count it as done from then on, and its success does not release them
//! twice.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::big_integer_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    State,
    PendingDeps,
    NextRunAt,
    ReleasedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite has no ADD COLUMN IF NOT EXISTS, and a start killed after this statement
        // runs the migration again.
        if !manager.has_column("tasks", "released_at").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(big_integer_null(Tasks::ReleasedAt))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("tasks_runnable")
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_ready")
                    .table(Tasks::Table)
                    .col(Tasks::NextRunAt)
                    .col(Tasks::Id)
                    .and_where(Expr::col(Tasks::State).is_in(["pending", "running"]))
                    .and_where(Expr::col(Tasks::PendingDeps).eq(0))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("tasks", "released_at").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(Tasks::ReleasedAt)
                        .to_owned(),
                )
                .await?;
        }
        for name in ["tasks_ready"] {
            manager
                .drop_index(
                    Index::drop()
                        .if_exists()
                        .name(name)
                        .table(Tasks::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_runnable")
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col(Tasks::PendingDeps)
                    .col(Tasks::NextRunAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
