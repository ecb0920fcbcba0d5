//! The schema of Wavelift's store, as migrations. Written with sea-query's builders (no
//! SQL dialect), so the same migrations run on SQLite and PostgreSQL; a data migration
//! (`m20261207_000006`) is plain SQL that both accept. This crate knows tables and
//! columns only; the entities live in the orchestrator's store.
//!
//! Times are stored as milliseconds since the Unix epoch (UTC) in BIGINT columns: one
//! representation on both databases, ordered and indexable.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_initial;
mod m20261122_000002_claim_and_watch;
mod m20261122_000003_reports;
mod m20261122_000004_api_tokens;
mod m20261207_000005_abort;
mod m20261207_000006_cutover_waits_for_agent;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_initial::Migration),
            Box::new(m20261122_000002_claim_and_watch::Migration),
            Box::new(m20261122_000003_reports::Migration),
            Box::new(m20261122_000004_api_tokens::Migration),
            Box::new(m20261207_000005_abort::Migration),
            Box::new(m20261207_000006_cutover_waits_for_agent::Migration),
        ]
    }
}
