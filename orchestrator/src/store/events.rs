//! The job progress log: every step the executor took, every engine action with its
//! server, every operator action. Append-only; `wavelift events` reads it.

use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, Value};
use serde::Serialize;

use super::Store;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub at: i64,
    pub wave: String,
    pub server: Option<String>,
    pub task_id: Option<String>,
    /// `task.started`, `task.succeeded`, `engine.start_launch`, `operator.approve`, ...
    pub kind: String,
    pub message: String,
    /// Structured details as JSON.
    pub data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, FromQueryResult, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub wave: String,
    pub server: Option<String>,
    pub task_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub data: Option<String>,
}

/// Events are written in batches inside the caller's transaction; one multi-row insert
/// per batch keeps the log cheap.
pub(crate) async fn insert_events(
    store: &Store,
    txn: &DatabaseTransaction,
    events: &[NewEvent],
) -> anyhow::Result<()> {
    for chunk in events.chunks(100) {
        if chunk.is_empty() {
            continue;
        }
        let mut sql = String::from(
            "INSERT INTO events (at, wave, server, task_id, kind, message, data) VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
        for (i, event) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
            values.extend([
                event.at.into(),
                event.wave.clone().into(),
                event.server.clone().into(),
                event.task_id.clone().into(),
                event.kind.clone().into(),
                event.message.clone().into(),
                event.data.clone().into(),
            ]);
        }
        txn.execute_raw(store.stmt(&sql, values)).await?;
    }
    Ok(())
}

impl Store {
    /// Events after `after` (an event id), oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: i64,
        wave: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<EventRow>> {
        let (filter, mut values): (&str, Vec<Value>) = match wave {
            Some(w) => (" AND wave = ?", vec![after.into(), w.into()]),
            None => ("", vec![after.into()]),
        };
        values.push(i64::from(limit).into());
        let sql = format!(
            "SELECT id, at, wave, server, task_id, kind, message, data FROM events \
             WHERE id > ?{filter} ORDER BY id LIMIT ?"
        );
        let rows = self.db().query_all_raw(self.stmt(&sql, values)).await?;
        Ok(rows
            .iter()
            .map(|row| EventRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }
}
