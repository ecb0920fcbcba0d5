//! The first schema: revisions of the definitions, waves, servers, tasks with their
//! dependencies and leases, attempts, events, and a key-value table for the scheduler.
//!
//! Every statement is `IF NOT EXISTS`: on SQLite the migration is not one transaction,
//! so a process killed halfway leaves part of the schema, and the next start completes it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Meta {
    Table,
    Key,
    Value,
}

#[derive(DeriveIden)]
enum Revisions {
    Table,
    Id,
    CreatedAt,
    Summary,
    Definitions,
}

#[derive(DeriveIden)]
enum Waves {
    Table,
    Name,
    Revision,
    Engine,
    Timezone,
    BuildStart,
    ValidateStart,
    CutoverStart,
    WindowStart,
    WindowEnd,
    CutoverEnd,
    Spec,
    RemovedAt,
}

#[derive(DeriveIden)]
enum Servers {
    Table,
    Name,
    Wave,
    Application,
    Revision,
    Spec,
    RemovedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    Wave,
    Application,
    Server,
    Kind,
    State,
    Attempts,
    Earliest,
    Deadline,
    NextRunAt,
    PendingDeps,
    LeaseOwner,
    LeaseExpiresAt,
    ApprovalRequired,
    ApprovedBy,
    ApprovedAt,
    Step,
    Reason,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TaskDependencies {
    Table,
    TaskId,
    DependsOn,
}

#[derive(DeriveIden)]
enum Attempts {
    Table,
    Id,
    TaskId,
    Number,
    StartedAt,
    FinishedAt,
    Outcome,
    Checks,
    Output,
    Error,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    At,
    Wave,
    Server,
    TaskId,
    Kind,
    Message,
    Data,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Meta::Table)
                    .col(string(Meta::Key).primary_key())
                    .col(text(Meta::Value))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Revisions::Table)
                    .col(big_integer(Revisions::Id).primary_key())
                    .col(big_integer(Revisions::CreatedAt))
                    .col(text(Revisions::Summary))
                    .col(text(Revisions::Definitions))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Waves::Table)
                    .col(string(Waves::Name).primary_key())
                    .col(big_integer(Waves::Revision))
                    .col(string(Waves::Engine))
                    .col(string(Waves::Timezone))
                    .col(big_integer(Waves::BuildStart))
                    .col(big_integer(Waves::ValidateStart))
                    .col(big_integer(Waves::CutoverStart))
                    .col(big_integer(Waves::WindowStart))
                    .col(big_integer(Waves::WindowEnd))
                    .col(big_integer(Waves::CutoverEnd))
                    .col(text(Waves::Spec))
                    .col(big_integer_null(Waves::RemovedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Servers::Table)
                    .col(string(Servers::Name).primary_key())
                    .col(string(Servers::Wave))
                    .col(string(Servers::Application))
                    .col(big_integer(Servers::Revision))
                    .col(text(Servers::Spec))
                    .col(big_integer_null(Servers::RemovedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Tasks::Table)
                    .col(string(Tasks::Id).primary_key())
                    .col(string(Tasks::Wave))
                    .col(string(Tasks::Application))
                    .col(string_null(Tasks::Server))
                    .col(string(Tasks::Kind))
                    .col(string(Tasks::State))
                    .col(integer(Tasks::Attempts))
                    .col(big_integer(Tasks::Earliest))
                    .col(big_integer_null(Tasks::Deadline))
                    .col(big_integer(Tasks::NextRunAt))
                    .col(integer(Tasks::PendingDeps))
                    .col(string_null(Tasks::LeaseOwner))
                    .col(big_integer_null(Tasks::LeaseExpiresAt))
                    .col(boolean(Tasks::ApprovalRequired))
                    .col(string_null(Tasks::ApprovedBy))
                    .col(big_integer_null(Tasks::ApprovedAt))
                    .col(text_null(Tasks::Step))
                    .col(text_null(Tasks::Reason))
                    .col(big_integer_null(Tasks::StartedAt))
                    .col(big_integer_null(Tasks::FinishedAt))
                    .col(big_integer(Tasks::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The claim looks for runnable tasks by state, readiness and due time.
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
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_by_wave")
                    .table(Tasks::Table)
                    .col(Tasks::Wave)
                    .col(Tasks::Server)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(TaskDependencies::Table)
                    .col(string(TaskDependencies::TaskId))
                    .col(string(TaskDependencies::DependsOn))
                    .primary_key(
                        Index::create()
                            .col(TaskDependencies::TaskId)
                            .col(TaskDependencies::DependsOn),
                    )
                    .to_owned(),
            )
            .await?;
        // Completing a task finds its dependants through this index.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("task_dependencies_by_dependency")
                    .table(TaskDependencies::Table)
                    .col(TaskDependencies::DependsOn)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Attempts::Table)
                    .col(big_integer(Attempts::Id).primary_key().auto_increment())
                    .col(string(Attempts::TaskId))
                    .col(integer(Attempts::Number))
                    .col(big_integer(Attempts::StartedAt))
                    .col(big_integer(Attempts::FinishedAt))
                    .col(string(Attempts::Outcome))
                    .col(text(Attempts::Checks))
                    .col(text(Attempts::Output))
                    .col(text_null(Attempts::Error))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("attempts_by_task")
                    .table(Attempts::Table)
                    .col(Attempts::TaskId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Events::Table)
                    .col(big_integer(Events::Id).primary_key().auto_increment())
                    .col(big_integer(Events::At))
                    .col(string(Events::Wave))
                    .col(string_null(Events::Server))
                    .col(string_null(Events::TaskId))
                    .col(string(Events::Kind))
                    .col(text(Events::Message))
                    .col(text_null(Events::Data))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Events::Table.into_iden(),
            Attempts::Table.into_iden(),
            TaskDependencies::Table.into_iden(),
            Tasks::Table.into_iden(),
            Servers::Table.into_iden(),
            Waves::Table.into_iden(),
            Revisions::Table.into_iden(),
            Meta::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
