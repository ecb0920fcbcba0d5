//! Reports for people and their delivery: each recorded once per event (the unique key
//! wave, kind, event), with the message as rendered, then delivered under a lease with
//! retries. The job progress log says when each was recorded, delivered, retried or
//! given up on.

use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::Serialize;

use super::Store;
use super::events::{NewEvent, insert_events};

/// A report to record: what it is about, and the message to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReport {
    pub wave: String,
    /// `readiness`, `cutover` or `digest`.
    pub kind: String,
    /// What the report is for, unique per wave and kind (`window 2027-12-11T21:00:00Z`,
    /// `digest 2027-12-01T07:00:00Z`, `asked 1795...` for one an operator asked for).
    pub event: String,
    /// The moment the report speaks of (scheduler time, ms).
    pub due_at: i64,
    pub subject: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The whole message (RFC 5322), as it will be sent.
    pub message: String,
}

/// A recorded report and where its delivery stands.
#[derive(Debug, Clone, PartialEq, FromQueryResult, Serialize)]
pub struct ReportRow {
    pub id: i64,
    pub wave: String,
    pub kind: String,
    pub event: String,
    pub due_at: i64,
    pub created_at: i64,
    pub subject: String,
    pub sender: String,
    /// A JSON array of addresses.
    pub recipients: String,
    #[serde(skip)]
    pub message: String,
    /// `pending` (waiting for its next attempt), `sending` (an attempt holds it until
    /// `next_attempt_at`), `delivered`, `failed` (given up on).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    /// `smtp://host:port` or the outbox file.
    pub delivered_via: Option<String>,
}

impl ReportRow {
    pub fn recipients(&self) -> Vec<String> {
        serde_json::from_str(&self.recipients).unwrap_or_default()
    }
}

/// How far the tasks of one kind in one wave are.
#[derive(Debug, Clone, PartialEq, FromQueryResult)]
pub struct KindProgress {
    pub wave: String,
    pub kind: String,
    pub total: i64,
    /// In a final state (succeeded, failed, skipped, cancelled, blocked).
    pub finished: i64,
    pub succeeded: i64,
    pub skipped: i64,
    /// When the first of them started, if any did.
    pub first_started: Option<i64>,
    /// When the last of them finished, if any did.
    pub last_finished: Option<i64>,
}

const REPORT_COLUMNS: &str = "id, wave, kind, event, due_at, created_at, subject, sender, \
    recipients, message, state, attempts, next_attempt_at, last_error, delivered_at, delivered_via";

impl Store {
    /// Whether the report for this event was recorded already.
    pub async fn report_recorded(
        &self,
        wave: &str,
        kind: &str,
        event: &str,
    ) -> anyhow::Result<bool> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT id FROM reports WHERE wave = ? AND kind = ? AND event = ?",
                vec![wave.into(), kind.into(), event.into()],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// Records a report to deliver from `at` (ms, wall clock) on; `None` when the report
    /// for this event was recorded before (by this process or another).
    pub async fn record_report(&self, report: &NewReport, at: i64) -> anyhow::Result<Option<i64>> {
        let txn = self.write_transaction().await?;
        let row = txn
            .query_one_raw(self.stmt(
                "INSERT INTO reports (wave, kind, event, due_at, created_at, subject, sender, \
                 recipients, message, state, attempts, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?) \
                 ON CONFLICT (wave, kind, event) DO NOTHING RETURNING id",
                vec![
                    report.wave.as_str().into(),
                    report.kind.as_str().into(),
                    report.event.as_str().into(),
                    report.due_at.into(),
                    at.into(),
                    report.subject.as_str().into(),
                    report.sender.as_str().into(),
                    serde_json::to_string(&report.recipients)?.into(),
                    report.message.as_str().into(),
                    at.into(),
                ],
            ))
            .await?;
        let Some(row) = row else {
            txn.rollback().await?;
            return Ok(None);
        };
        let id: i64 = row.try_get("", "id")?;
        insert_events(
            self,
            &txn,
            // Logged at the moment it speaks of, in the run's time (warped or not).
            &[report_event(
                report.due_at,
                &report.wave,
                "report.recorded",
                format!(
                    "{} report recorded for {} recipient(s): {}",
                    report.kind,
                    report.recipients.len(),
                    report.subject
                ),
                id,
            )],
        )
        .await?;
        txn.commit().await?;
        Ok(Some(id))
    }

    /// Reports whose next attempt is due at `now` (wall clock, ms): waiting ones, and
    /// ones whose attempt's lease ran out (its process died mid-attempt).
    pub async fn reports_to_deliver(&self, now: i64, limit: u32) -> anyhow::Result<Vec<ReportRow>> {
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE state IN ('pending', 'sending') \
             AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
        );
        self.report_rows(&sql, vec![now.into(), i64::from(limit).into()])
            .await
    }

    /// Whether a report awaits its delivery at `now` (wall clock, ms): due for an attempt,
    /// or taken by one under way. A report waiting to be tried again later does not.
    pub async fn reports_awaiting_delivery(&self, now: i64) -> anyhow::Result<bool> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT id FROM reports WHERE state IN ('pending', 'sending') \
                 AND (state = 'sending' OR next_attempt_at <= ?) LIMIT 1",
                vec![now.into()],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// Takes a report for one delivery attempt until `lease_until`; false when another
    /// process took it first or it is no longer due.
    /// `attempts`: the attempts the caller's copy of the row counts; a copy read before
    /// another attempt (which may have narrowed its recipients) is refused.
    pub async fn take_report(
        &self,
        id: i64,
        attempts: i32,
        now: i64,
        lease_until: i64,
    ) -> anyhow::Result<bool> {
        let result = self
            .db()
            .execute_raw(self.stmt(
                "UPDATE reports SET state = 'sending', attempts = attempts + 1, \
                 next_attempt_at = ? WHERE id = ? AND attempts = ? \
                 AND state IN ('pending', 'sending') AND next_attempt_at <= ?",
                vec![lease_until.into(), id.into(), attempts.into(), now.into()],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The attempt that holds the report under `lease` delivered it (`via`: the server or
    /// the outbox file) at `at`, in the run's time. Outcomes are written only while the
    /// lease is the attempt's.
    pub async fn report_delivered(
        &self,
        report: &ReportRow,
        lease: i64,
        at: i64,
        via: &str,
    ) -> anyhow::Result<()> {
        self.report_outcome(
            "UPDATE reports SET state = 'delivered', delivered_at = ?, delivered_via = ?, \
             last_error = NULL WHERE id = ? AND state = 'sending' AND next_attempt_at = ?",
            vec![at.into(), via.into(), report.id.into(), lease.into()],
            report_event(
                at,
                &report.wave,
                "report.delivered",
                format!(
                    "{} report delivered via {via}: {}",
                    report.kind, report.subject
                ),
                report.id,
            ),
        )
        .await
    }

    /// Some recipients received the report in the attempt that holds `lease`: it goes
    /// on to `remaining` only (nobody gets it twice). Nothing when the lease ran out.
    pub async fn report_narrowed(
        &self,
        report: &ReportRow,
        lease: i64,
        remaining: &[String],
    ) -> anyhow::Result<()> {
        self.db()
            .execute_raw(self.stmt(
                "UPDATE reports SET recipients = ? \
                 WHERE id = ? AND state = 'sending' AND next_attempt_at = ?",
                vec![
                    serde_json::to_string(remaining)?.into(),
                    report.id.into(),
                    lease.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// The attempt failed (logged at `at`, in the run's time): tried again from
    /// `retry_at` (wall clock), or, without one, given up on (`kept`: where the message
    /// was kept for a person to send).
    pub async fn report_not_delivered(
        &self,
        report: &ReportRow,
        lease: i64,
        at: i64,
        error: &str,
        retry_at: Option<i64>,
        kept: Option<&str>,
    ) -> anyhow::Result<()> {
        match retry_at {
            Some(retry_at) => {
                self.report_outcome(
                    "UPDATE reports SET state = 'pending', next_attempt_at = ?, last_error = ? \
                     WHERE id = ? AND state = 'sending' AND next_attempt_at = ?",
                    vec![
                        retry_at.into(),
                        error.into(),
                        report.id.into(),
                        lease.into(),
                    ],
                    report_event(
                        at,
                        &report.wave,
                        "report.retry",
                        format!(
                            "{} report not delivered (attempt {}): {error}; trying again",
                            report.kind,
                            report.attempts + 1
                        ),
                        report.id,
                    ),
                )
                .await
            }
            None => {
                let kept_words = kept.map(|k| format!("; kept in {k}")).unwrap_or_default();
                self.report_outcome(
                    "UPDATE reports SET state = 'failed', last_error = ?, delivered_via = ? \
                     WHERE id = ? AND state = 'sending' AND next_attempt_at = ?",
                    vec![
                        error.into(),
                        kept.map(str::to_owned).into(),
                        report.id.into(),
                        lease.into(),
                    ],
                    report_event(
                        at,
                        &report.wave,
                        "report.failed",
                        format!(
                            "{} report given up on after {} attempt(s): {error}{kept_words}",
                            report.kind,
                            report.attempts + 1
                        ),
                        report.id,
                    ),
                )
                .await
            }
        }
    }

    async fn report_outcome(
        &self,
        sql: &str,
        values: Vec<Value>,
        event: NewEvent,
    ) -> anyhow::Result<()> {
        let txn = self.write_transaction().await?;
        let result = txn.execute_raw(self.stmt(sql, values)).await?;
        if result.rows_affected() == 0 {
            // The lease ran out and another attempt holds the report: its outcome counts.
            txn.rollback().await?;
            return Ok(());
        }
        insert_events(self, &txn, &[event]).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Per wave and task kind: how many tasks, how many final, the first start and the
    /// last finish.
    pub async fn progress_by_kind(&self) -> anyhow::Result<Vec<KindProgress>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT wave, kind, COUNT(*) AS total, \
                 SUM(CASE WHEN state IN ('pending', 'running', 'awaiting_approval') THEN 0 ELSE 1 END) \
                 AS finished, SUM(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS succeeded, \
                 SUM(CASE WHEN state = 'skipped' THEN 1 ELSE 0 END) AS skipped, \
                 MIN(started_at) AS first_started, MAX(finished_at) AS last_finished \
                 FROM tasks GROUP BY wave, kind ORDER BY wave, kind",
                vec![],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|row| KindProgress::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Every recorded report (of one wave), newest first.
    pub async fn reports(&self, wave: Option<&str>) -> anyhow::Result<Vec<ReportRow>> {
        let (filter, values): (&str, Vec<Value>) = match wave {
            Some(w) => ("WHERE wave = ?", vec![w.into()]),
            None => ("", vec![]),
        };
        let sql =
            format!("SELECT {REPORT_COLUMNS} FROM reports {filter} ORDER BY due_at DESC, id DESC");
        self.report_rows(&sql, values).await
    }

    /// The subjects of the reports of this kind for the wave recorded for `event`, or
    /// for a later word on it (`EVENT: ...`).
    pub async fn report_subjects(
        &self,
        wave: &str,
        kind: &str,
        event: &str,
    ) -> anyhow::Result<Vec<String>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT subject FROM reports WHERE wave = ? AND kind = ? \
                 AND (event = ? OR event LIKE ?) ORDER BY id",
                vec![
                    wave.into(),
                    kind.into(),
                    event.into(),
                    // (A report's event is a window's moment: no `%` or `_` in it.)
                    format!("{event}: %").into(),
                ],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String>("", "subject")?))
            .collect()
    }

    /// The moment the latest report of this kind for the wave spoke of.
    pub async fn last_report_due(&self, wave: &str, kind: &str) -> anyhow::Result<Option<i64>> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT MAX(due_at) AS due FROM reports WHERE wave = ? AND kind = ?",
                vec![wave.into(), kind.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>>("", "due")?,
            None => None,
        })
    }

    /// When the next delivery attempt is due (wall clock, ms), if any report waits.
    pub async fn next_report_attempt(&self) -> anyhow::Result<Option<i64>> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT MIN(next_attempt_at) AS next FROM reports \
                 WHERE state IN ('pending', 'sending')",
                vec![],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>>("", "next")?,
            None => None,
        })
    }

    async fn report_rows(&self, sql: &str, values: Vec<Value>) -> anyhow::Result<Vec<ReportRow>> {
        let rows = self.db().query_all_raw(self.stmt(sql, values)).await?;
        Ok(rows
            .iter()
            .map(|row| ReportRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

fn report_event(at: i64, wave: &str, kind: &str, message: String, id: i64) -> NewEvent {
    NewEvent {
        at,
        wave: wave.to_owned(),
        server: None,
        task_id: None,
        kind: kind.to_owned(),
        message,
        data: Some(serde_json::json!({ "report": id }).to_string()),
    }
}
