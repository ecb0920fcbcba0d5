//! The job progress log: every step the executor took, every engine action with its
//! server, every operator action. Append-only; `wavelift events` reads it.

use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, Value};
use serde::Serialize;

use super::{JsonColumn, Store, json_param};

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
    /// Structured details: stored as JSON text, given out (`events --json`, the API) as
    /// the JSON they hold; text that is not JSON goes out as a string.
    #[serde(serialize_with = "details")]
    pub data: Option<String>,
}

fn details<S: serde::Serializer>(data: &Option<String>, out: S) -> Result<S::Ok, S::Error> {
    match data
        .as_deref()
        .map(|text| serde_json::from_str::<serde_json::Value>(text).map_err(|_| text))
    {
        None => out.serialize_none(),
        Some(Ok(value)) => value.serialize(out),
        Some(Err(text)) => out.serialize_str(text),
    }
}

/// Events are written inside the caller's transaction, all of a batch in one insert
/// (the rows travel as one JSON parameter), in their order.
pub(crate) async fn insert_events(
    store: &Store,
    txn: &DatabaseTransaction,
    events: &[NewEvent],
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = store.json_rows(&[
        ("at", JsonColumn::Int),
        ("wave", JsonColumn::Text),
        ("server", JsonColumn::Text),
        ("task_id", JsonColumn::Text),
        ("kind", JsonColumn::Text),
        ("message", JsonColumn::Text),
        ("data", JsonColumn::Text),
    ]);
    let sql = format!(
        "INSERT INTO events (at, wave, server, task_id, kind, message, data) \
         SELECT at, wave, server, task_id, kind, message, data FROM {rows} AS r ORDER BY r.ord"
    );
    let wire: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.at, &e.wave, &e.server, &e.task_id, &e.kind, &e.message, &e.data,
            )
        })
        .collect();
    txn.execute_raw(store.stmt(&sql, vec![json_param(&wire)?]))
        .await?;
    Ok(())
}

impl Store {
    /// Appends events that no other change goes with (an operator's failback).
    pub async fn append_events(&self, events: &[NewEvent]) -> anyhow::Result<()> {
        let txn = self.write_transaction().await?;
        insert_events(self, &txn, events).await?;
        txn.commit().await?;
        Ok(())
    }

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

/// An attempt of a task as recorded: when, the outcome, the checks (a JSON array of
/// `{name, passed, detail, remediation}`), the output and the error.
#[derive(Debug, Clone, PartialEq, FromQueryResult, Serialize)]
pub struct AttemptRow {
    pub task_id: String,
    pub number: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: String,
    pub checks: String,
    pub output: String,
    pub error: Option<String>,
}

impl Store {
    /// The events of these tasks, oldest first.
    pub async fn events_of_tasks(&self, ids: &[&str]) -> anyhow::Result<Vec<EventRow>> {
        self.rows_of_tasks(
            "SELECT id, at, wave, server, task_id, kind, message, data FROM events \
             WHERE task_id IN {ids} ORDER BY id",
            ids,
        )
        .await
    }

    /// The events of `wave` of these kinds, oldest first.
    pub async fn events_of_kinds(
        &self,
        wave: &str,
        kinds: &[&str],
    ) -> anyhow::Result<Vec<EventRow>> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; kinds.len()].join(", ");
        let mut values: Vec<Value> = vec![wave.into()];
        values.extend(kinds.iter().map(|k| Value::from(*k)));
        let sql = format!(
            "SELECT id, at, wave, server, task_id, kind, message, data FROM events \
             WHERE wave = ? AND kind IN ({marks}) ORDER BY id"
        );
        let rows = self.db().query_all_raw(self.stmt(&sql, values)).await?;
        Ok(rows
            .iter()
            .map(|row| EventRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Every attempt of these tasks, in order.
    pub async fn attempts_of_tasks(&self, ids: &[&str]) -> anyhow::Result<Vec<AttemptRow>> {
        self.rows_of_tasks(
            "SELECT task_id, number, started_at, finished_at, outcome, checks, output, error \
             FROM attempts WHERE task_id IN {ids} ORDER BY task_id, number, id",
            ids,
        )
        .await
    }

    /// The rows of `sql`, whose `{ids}` stands for the set of task ids given.
    async fn rows_of_tasks<T: FromQueryResult>(
        &self,
        sql: &str,
        ids: &[&str],
    ) -> anyhow::Result<Vec<T>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = sql.replace("{ids}", self.json_strings());
        let rows = self
            .db()
            .query_all_raw(self.stmt(&sql, vec![json_param(&ids)?]))
            .await?;
        Ok(rows
            .iter()
            .map(|row| T::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// The id after which the wave's last `count` events are (0 when it has fewer): event
    /// ids are shared by every wave, so this is not the newest id less `count`.
    pub async fn backlog_start(&self, wave: &str, count: u32) -> anyhow::Result<i64> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT id FROM events WHERE wave = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                vec![wave.into(), i64::from(count.saturating_sub(1)).into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64>("", "id")? - 1,
            None => 0,
        })
    }

    /// How many events of each kind a wave logged after `since` and until `until` (ms).
    pub async fn event_counts(
        &self,
        wave: &str,
        since: i64,
        until: i64,
    ) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT kind, COUNT(*) AS n FROM events WHERE wave = ? AND at > ? AND at <= ? \
                 GROUP BY kind",
                vec![wave.into(), since.into(), until.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "kind")?, r.try_get("", "n")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::EventRow;

    fn row(data: Option<&str>) -> EventRow {
        EventRow {
            id: 7,
            at: 1,
            wave: "wave-1".into(),
            server: Some("web-01".into()),
            task_id: None,
            kind: "engine.start_launch".into(),
            message: "launch".into(),
            data: data.map(str::to_owned),
        }
    }

    #[test]
    fn details_go_out_as_the_json_they_hold() {
        let out = serde_json::to_value(row(Some(r#"{"job":"mgnjob-1","servers":2}"#)))
            .expect("an event serializes");
        assert_eq!(out["data"]["job"], "mgnjob-1");
        assert_eq!(out["data"]["servers"], 2);
        let out = serde_json::to_value(row(Some("not json {"))).expect("an event serializes");
        assert_eq!(out["data"], "not json {");
        let out = serde_json::to_value(row(None)).expect("an event serializes");
        assert!(out["data"].is_null());
        assert_eq!(out["id"], 7);
    }
}
