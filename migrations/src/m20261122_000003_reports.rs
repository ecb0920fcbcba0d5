//! Reports for people (readiness, cutover, digest) and their delivery.
//!
//! A report is recorded once per event: the unique key (wave, kind, event) is what makes
//! "sent once, never twice" hold across restarts. The message is stored whole as it was
//! rendered (RFC 5322 text with its Message-ID), so every delivery attempt sends the same
//! bytes, and a message nobody could deliver is still there to read.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Reports {
    Table,
    Id,
    Wave,
    Kind,
    Event,
    DueAt,
    CreatedAt,
    Subject,
    Sender,
    Recipients,
    Message,
    State,
    Attempts,
    NextAttemptAt,
    LastError,
    DeliveredAt,
    DeliveredVia,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(Reports::Table)
                    .col(big_integer(Reports::Id).primary_key().auto_increment())
                    .col(string(Reports::Wave))
                    .col(string(Reports::Kind))
                    .col(string(Reports::Event))
                    .col(big_integer(Reports::DueAt))
                    .col(big_integer(Reports::CreatedAt))
                    .col(text(Reports::Subject))
                    .col(text(Reports::Sender))
                    .col(text(Reports::Recipients))
                    .col(text(Reports::Message))
                    .col(string(Reports::State))
                    .col(integer(Reports::Attempts))
                    .col(big_integer(Reports::NextAttemptAt))
                    .col(text_null(Reports::LastError))
                    .col(big_integer_null(Reports::DeliveredAt))
                    .col(text_null(Reports::DeliveredVia))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("reports_once")
                    .table(Reports::Table)
                    .col(Reports::Wave)
                    .col(Reports::Kind)
                    .col(Reports::Event)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("reports_to_deliver")
                    .table(Reports::Table)
                    .col(Reports::NextAttemptAt)
                    .and_where(Expr::col(Reports::State).is_in(["pending", "sending"]))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().if_exists().table(Reports::Table).to_owned())
            .await
    }
}
