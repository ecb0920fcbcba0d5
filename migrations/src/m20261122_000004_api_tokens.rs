//! API tokens for the dashboard and its API: a name, a role, and the SHA-256 of the
//! token (the token itself is shown once, when it is made, and never stored).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Name,
    Role,
    Hash,
    CreatedAt,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .if_not_exists()
                    .table(ApiTokens::Table)
                    .col(big_integer(ApiTokens::Id).primary_key().auto_increment())
                    .col(string(ApiTokens::Name))
                    .col(string(ApiTokens::Role))
                    .col(string_uniq(ApiTokens::Hash))
                    .col(big_integer(ApiTokens::CreatedAt))
                    .col(big_integer_null(ApiTokens::RevokedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().if_exists().table(ApiTokens::Table).to_owned())
            .await
    }
}
