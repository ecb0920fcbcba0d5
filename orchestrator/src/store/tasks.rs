//! Task rows: claiming runnable tasks under a lease, recording what an attempt did, and
//! the operator's steering (approve, retry, skip, cancel).
//!
//! A task is runnable when it is pending or in progress, every task it depends on has
//! succeeded or been skipped (`pending_deps = 0`), it is due (`next_run_at`), and no
//! live lease holds it. Completions are conditional on the lease: a worker whose lease
//! was taken over writes nothing.

use anyhow::Context as _;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, Value};
use serde::Serialize;

use super::Store;
use super::events::{NewEvent, insert_events};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies or its time.
    Pending,
    /// Started: between steps, waiting for the engine, or leased by a worker.
    Running,
    AwaitingApproval,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    /// A task it depends on failed or was cancelled.
    Blocked,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::AwaitingApproval,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Skipped,
        TaskState::Cancelled,
        TaskState::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::AwaitingApproval => "awaiting_approval",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
            TaskState::Blocked => "blocked",
        }
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No further work will happen without an operator.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Skipped
                | TaskState::Cancelled
                | TaskState::Blocked
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, FromQueryResult, Serialize)]
pub struct TaskRow {
    pub id: String,
    pub wave: String,
    pub application: String,
    pub server: Option<String>,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub earliest: i64,
    pub deadline: Option<i64>,
    pub next_run_at: i64,
    pub approval_required: bool,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl TaskRow {
    pub fn state(&self) -> TaskState {
        TaskState::parse(&self.state).unwrap_or(TaskState::Pending)
    }
}

/// How many tasks one claim may take: in all, and of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub total: u32,
    pub per_wave: u32,
}

/// Rows per statement in set-based writes: well under SQLite's and PostgreSQL's limits
/// on bound parameters.
const CHUNK: usize = 200;

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(crate) const TASK_COLUMNS: &str = "id, wave, application, server, kind, state, attempts, \
    earliest, deadline, next_run_at, approval_required, approved_by, approved_at, step, reason, \
    started_at, finished_at";

/// A task claimed by a worker, with the lease that lets it complete the task.
pub type ClaimedTask = TaskRow;

/// What one attempt did, for the attempts table.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub finished_at: i64,
    /// `succeeded`, `failed`, `retrying`, `waiting`.
    pub outcome: String,
    /// JSON list of checks.
    pub checks: String,
    pub output: String,
    pub error: Option<String>,
}

/// How a worker ends its turn with a claimed task.
#[derive(Debug, Clone)]
pub enum Completion {
    Succeeded {
        id: String,
        step: Option<String>,
        attempt: AttemptRecord,
        events: Vec<NewEvent>,
    },
    /// Not done yet: come back at `next_run_at` with this step.
    Waiting {
        id: String,
        step: String,
        next_run_at: i64,
        events: Vec<NewEvent>,
    },
    /// The attempt failed; the task runs again at `next_run_at`.
    Retry {
        id: String,
        step: Option<String>,
        next_run_at: i64,
        reason: String,
        attempt: AttemptRecord,
        events: Vec<NewEvent>,
    },
    /// Failed for good: everything depending on it is blocked.
    Failed {
        id: String,
        step: Option<String>,
        reason: String,
        attempt: Option<AttemptRecord>,
        events: Vec<NewEvent>,
    },
    /// A gate that needs a go/no-go that has not been given.
    AwaitingApproval { id: String, events: Vec<NewEvent> },
}

impl Completion {
    fn id(&self) -> &str {
        match self {
            Completion::Succeeded { id, .. }
            | Completion::Waiting { id, .. }
            | Completion::Retry { id, .. }
            | Completion::Failed { id, .. }
            | Completion::AwaitingApproval { id, .. } => id,
        }
    }
}

impl Store {
    /// Leases up to `limit.total` runnable tasks (at most `limit.per_wave` of one wave)
    /// to `owner` until `lease_until`, in one statement (on PostgreSQL with `FOR UPDATE SKIP
    /// LOCKED`, so workers never wait for each other's rows).
    pub async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: Limit,
    ) -> anyhow::Result<Vec<ClaimedTask>> {
        self.claim_on(self.db(), owner, now, lease_until, limit)
            .await
    }

    async fn claim_on(
        &self,
        db: &impl ConnectionTrait,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: Limit,
    ) -> anyhow::Result<Vec<ClaimedTask>> {
        // A wave that reaches its limit is left out of the next round, so the room it
        // gave back goes to other waves; a round per wave at most.
        let mut kept: Vec<ClaimedTask> = Vec::new();
        let mut full: Vec<String> = Vec::new();
        let mut per_wave: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        for _ in 0..64 {
            let room = limit
                .total
                .saturating_sub(u32::try_from(kept.len()).unwrap_or(u32::MAX));
            if room == 0 {
                break;
            }
            let round = self
                .claim_round(db, owner, now, lease_until, room, &full)
                .await?;
            if round.is_empty() {
                break;
            }
            let mut over = Vec::new();
            for task in round {
                let count = per_wave.entry(task.wave.clone()).or_insert(0);
                if *count < limit.per_wave {
                    *count += 1;
                    kept.push(task);
                } else {
                    over.push(task);
                }
            }
            if over.is_empty() {
                break;
            }
            self.give_back(db, &over).await?;
            for (wave, count) in &per_wave {
                if *count >= limit.per_wave && !full.contains(wave) {
                    full.push(wave.clone());
                }
            }
        }
        kept.sort_by(|a, b| a.next_run_at.cmp(&b.next_run_at).then(a.id.cmp(&b.id)));
        Ok(kept)
    }

    /// Tasks claimed over a wave's limit go back as they were.
    async fn give_back(
        &self,
        db: &impl ConnectionTrait,
        over: &[ClaimedTask],
    ) -> anyhow::Result<()> {
        for chunk in over.chunks(CHUNK) {
            let marks = placeholders(chunk.len());
            let values: Vec<Value> = chunk.iter().map(|t| Value::from(t.id.clone())).collect();
            let sql = format!(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, \
                 state = CASE WHEN attempts = 0 AND step IS NULL THEN 'pending' ELSE state END, \
                 started_at = CASE WHEN attempts = 0 AND step IS NULL THEN NULL ELSE started_at END \
                 WHERE id IN ({marks})"
            );
            db.execute_raw(self.stmt(&sql, values)).await?;
        }
        Ok(())
    }

    async fn claim_round(
        &self,
        db: &impl ConnectionTrait,
        owner: &str,
        now: i64,
        lease_until: i64,
        room: u32,
        full_waves: &[String],
    ) -> anyhow::Result<Vec<ClaimedTask>> {
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let exclude = if full_waves.is_empty() {
            String::new()
        } else {
            format!(" AND wave NOT IN ({})", placeholders(full_waves.len()))
        };
        let sql = format!(
            "UPDATE tasks SET lease_owner = ?, lease_expires_at = ?, \
             state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, \
             started_at = COALESCE(started_at, ?), updated_at = ? \
             WHERE id IN (SELECT id FROM tasks WHERE state IN ('pending', 'running') \
             AND pending_deps = 0 AND next_run_at <= ? \
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?){exclude} \
             ORDER BY next_run_at, id LIMIT ?{lock}) \
             RETURNING {TASK_COLUMNS}"
        );
        let mut values: Vec<Value> = vec![
            owner.into(),
            lease_until.into(),
            now.into(),
            now.into(),
            now.into(),
            now.into(),
        ];
        values.extend(full_waves.iter().map(|w| Value::from(w.clone())));
        values.push(i64::from(room).into());
        let rows = db.query_all_raw(self.stmt(&sql, values)).await?;
        let mut claimed = rows
            .iter()
            .map(|row| TaskRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by(|a, b| a.next_run_at.cmp(&b.next_run_at).then(a.id.cmp(&b.id)));
        Ok(claimed)
    }

    /// Records the outcomes of one batch and claims the next in the same transaction:
    /// one commit per step of the executor. Returns the dropped completions (see
    /// [`Store::complete`]) and the newly claimed tasks.
    pub async fn complete_and_claim(
        &self,
        owner: &str,
        now: i64,
        completions: Vec<Completion>,
        lease_until: i64,
        limit: Limit,
    ) -> anyhow::Result<(usize, Vec<ClaimedTask>)> {
        let txn = self.write_transaction().await?;
        let dropped = self.complete_in(&txn, owner, now, completions).await?;
        let claimed = self.claim_on(&txn, owner, now, lease_until, limit).await?;
        txn.commit()
            .await
            .context("cannot commit task completions")?;
        Ok((dropped, claimed))
    }

    /// Records the outcome of claimed tasks in one transaction. A completion whose lease
    /// is no longer `owner`'s is dropped (another worker owns the task now); the count of
    /// dropped completions is returned.
    pub async fn complete(
        &self,
        owner: &str,
        now: i64,
        completions: Vec<Completion>,
    ) -> anyhow::Result<usize> {
        if completions.is_empty() {
            return Ok(0);
        }
        let txn = self.write_transaction().await?;
        let dropped = self.complete_in(&txn, owner, now, completions).await?;
        txn.commit()
            .await
            .context("cannot commit task completions")?;
        Ok(dropped)
    }

    async fn complete_in(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        now: i64,
        completions: Vec<Completion>,
    ) -> anyhow::Result<usize> {
        let mut dropped = 0;
        // Successes are the bulk of every batch: a handful of set-based statements
        // instead of several statements per task.
        let (successes, others): (Vec<Completion>, Vec<Completion>) = completions
            .into_iter()
            .partition(|c| matches!(c, Completion::Succeeded { .. }));
        dropped += self.complete_successes(txn, owner, now, successes).await?;
        for completion in others {
            if !self.complete_one(txn, owner, now, completion).await? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Records many successes: one conditional update per chunk (returning the tasks
    /// whose lease was still ours), one release of their dependants, one insert of their
    /// attempts and one of their events.
    async fn complete_successes(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        now: i64,
        successes: Vec<Completion>,
    ) -> anyhow::Result<usize> {
        let mut dropped = 0;
        for chunk in successes.chunks(CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(Completion::id).collect();
            let marks = placeholders(ids.len());
            let mut values: Vec<Value> = vec![now.into(), now.into(), owner.into()];
            values.extend(ids.iter().map(|id| Value::from(*id)));
            let sql = format!(
                "UPDATE tasks SET state = 'succeeded', step = NULL, reason = NULL, finished_at = ?, \
                 attempts = attempts + 1, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
                 WHERE lease_owner = ? AND id IN ({marks}) RETURNING id"
            );
            let rows = txn.query_all_raw(self.stmt(&sql, values)).await?;
            let done: std::collections::HashSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String>("", "id"))
                .collect::<Result<_, _>>()?;
            dropped += chunk.len() - done.len();
            if done.is_empty() {
                continue;
            }
            let done_ids: Vec<&String> = done.iter().collect();
            let marks = placeholders(done_ids.len());
            let mut values: Vec<Value> = done_ids
                .iter()
                .map(|id| Value::from((*id).clone()))
                .collect();
            values.extend(done_ids.iter().map(|id| Value::from((*id).clone())));
            let sql = format!(
                "UPDATE tasks SET pending_deps = pending_deps - (SELECT COUNT(*) FROM task_dependencies d \
                 WHERE d.task_id = tasks.id AND d.depends_on IN ({marks})) \
                 WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on IN ({marks}))"
            );
            txn.execute_raw(self.stmt(&sql, values)).await?;
            let mut attempts = Vec::with_capacity(done.len());
            let mut events = Vec::new();
            for completion in chunk {
                if let Completion::Succeeded {
                    id,
                    attempt,
                    events: these,
                    ..
                } = completion
                    && done.contains(id)
                {
                    attempts.push((id.clone(), attempt.clone()));
                    events.extend(these.iter().cloned());
                }
            }
            self.insert_attempts(txn, &attempts).await?;
            insert_events(self, txn, &events).await?;
        }
        Ok(dropped)
    }

    async fn insert_attempts(
        &self,
        txn: &DatabaseTransaction,
        attempts: &[(String, AttemptRecord)],
    ) -> anyhow::Result<()> {
        for chunk in attempts.chunks(CHUNK / 2) {
            if chunk.is_empty() {
                continue;
            }
            let mut sql = String::from(
                "INSERT INTO attempts (task_id, number, started_at, finished_at, outcome, checks, output, error) VALUES ",
            );
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
            for (i, (id, attempt)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, (SELECT attempts FROM tasks WHERE id = ?), ?, ?, ?, ?, ?, ?)");
                values.extend([
                    id.clone().into(),
                    id.clone().into(),
                    attempt.started_at.into(),
                    attempt.finished_at.into(),
                    attempt.outcome.clone().into(),
                    attempt.checks.clone().into(),
                    attempt.output.clone().into(),
                    attempt.error.clone().into(),
                ]);
            }
            txn.execute_raw(self.stmt(&sql, values)).await?;
        }
        Ok(())
    }

    async fn complete_one(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        now: i64,
        completion: Completion,
    ) -> anyhow::Result<bool> {
        let id = completion.id().to_owned();
        let (set, values, attempt, events): (
            &str,
            Vec<Value>,
            Option<AttemptRecord>,
            Vec<NewEvent>,
        ) = match completion {
            Completion::Succeeded {
                step,
                attempt,
                events,
                ..
            } => (
                "state = 'succeeded', step = ?, reason = NULL, finished_at = ?, attempts = attempts + 1",
                vec![step.into(), now.into()],
                Some(attempt),
                events,
            ),
            Completion::Waiting {
                step,
                next_run_at,
                events,
                ..
            } => (
                "step = ?, next_run_at = ?",
                vec![step.into(), next_run_at.into()],
                None,
                events,
            ),
            Completion::Retry {
                step,
                next_run_at,
                reason,
                attempt,
                events,
                ..
            } => (
                "step = ?, next_run_at = ?, reason = ?, attempts = attempts + 1",
                vec![step.into(), next_run_at.into(), reason.into()],
                Some(attempt),
                events,
            ),
            Completion::Failed {
                step,
                reason,
                attempt,
                events,
                ..
            } => (
                "state = 'failed', step = ?, reason = ?, finished_at = ?, attempts = attempts + 1",
                vec![step.into(), reason.into(), now.into()],
                attempt,
                events,
            ),
            Completion::AwaitingApproval { events, .. } => {
                ("state = 'awaiting_approval'", vec![], None, events)
            }
        };
        let mut all = values;
        all.extend([now.into(), id.clone().into(), owner.into()]);
        let sql = format!(
            "UPDATE tasks SET {set}, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
             WHERE id = ? AND lease_owner = ?"
        );
        let updated = txn.execute_raw(self.stmt(&sql, all)).await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        let state: Option<String> = txn
            .query_one_raw(self.stmt(
                "SELECT state FROM tasks WHERE id = ?",
                vec![id.clone().into()],
            ))
            .await?
            .map(|row| row.try_get::<String>("", "state"))
            .transpose()?;
        match state.as_deref() {
            Some("succeeded") => self.release_dependants(txn, &id).await?,
            Some("failed") => self.block_dependants(txn, &id, now).await?,
            _ => {}
        }
        if let Some(attempt) = attempt {
            self.insert_attempts(txn, &[(id.clone(), attempt)]).await?;
        }
        insert_events(self, txn, &events).await?;
        Ok(true)
    }

    /// One dependency fewer for every task waiting on `id`.
    pub(crate) async fn release_dependants(
        &self,
        txn: &DatabaseTransaction,
        id: &str,
    ) -> anyhow::Result<()> {
        let sql = "UPDATE tasks SET pending_deps = pending_deps - 1 \
                   WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on = ?)";
        txn.execute_raw(self.stmt(sql, vec![id.into()])).await?;
        Ok(())
    }

    /// Every task downstream of `id` that has not run is blocked, with the reason.
    pub(crate) async fn block_dependants(
        &self,
        txn: &DatabaseTransaction,
        id: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let sql = "WITH RECURSIVE downstream(id) AS ( \
                     SELECT task_id FROM task_dependencies WHERE depends_on = ? \
                     UNION SELECT d.task_id FROM task_dependencies d JOIN downstream ON d.depends_on = downstream.id) \
                   UPDATE tasks SET state = 'blocked', reason = ?, updated_at = ? \
                   WHERE id IN (SELECT id FROM downstream) AND state IN ('pending', 'awaiting_approval')";
        let reason = format!("blocked: {id} did not succeed");
        txn.execute_raw(self.stmt(sql, vec![id.into(), reason.into(), now.into()]))
            .await?;
        Ok(())
    }

    /// The earliest time something becomes runnable: a due time, or a lease that expires.
    pub async fn next_due(&self) -> anyhow::Result<Option<i64>> {
        let sql = "SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL AND lease_expires_at > next_run_at \
                   THEN lease_expires_at ELSE next_run_at END) AS due \
                   FROM tasks WHERE state IN ('pending', 'running') AND pending_deps = 0";
        let row = self.db().query_one_raw(self.stmt(sql, vec![])).await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>>("", "due")?,
            None => None,
        })
    }

    /// Gates waiting for an operator's go, and the earliest window start among their
    /// waves.
    pub async fn awaiting_approval(&self) -> anyhow::Result<(i64, Option<i64>)> {
        let sql = "SELECT COUNT(*) AS n, MIN(w.window_start) AS first_window FROM tasks t \
                   JOIN waves w ON w.name = t.wave WHERE t.state = 'awaiting_approval'";
        let row = self.db().query_one_raw(self.stmt(sql, vec![])).await?;
        Ok(match row {
            Some(row) => (
                row.try_get::<i64>("", "n")?,
                row.try_get::<Option<i64>>("", "first_window")?,
            ),
            None => (0, None),
        })
    }

    /// Tasks not in a final state (awaiting approval counts as not final).
    pub async fn unfinished_count(&self) -> anyhow::Result<i64> {
        let sql = "SELECT COUNT(*) AS n FROM tasks WHERE state IN ('pending', 'running', 'awaiting_approval')";
        let row = self.db().query_one_raw(self.stmt(sql, vec![])).await?;
        Ok(match row {
            Some(row) => row.try_get::<i64>("", "n")?,
            None => 0,
        })
    }

    /// Every task, optionally of one wave, in plan order.
    pub async fn tasks(&self, wave: Option<&str>) -> anyhow::Result<Vec<TaskRow>> {
        let (filter, values): (&str, Vec<Value>) = match wave {
            Some(w) => ("WHERE wave = ?", vec![w.into()]),
            None => ("", vec![]),
        };
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY wave, application, server, earliest, id"
        );
        let rows = self.db().query_all_raw(self.stmt(&sql, values)).await?;
        Ok(rows
            .iter()
            .map(|row| TaskRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

/// How many tasks of a wave are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaveCounts {
    pub total: u64,
    pub finished: u64,
    pub failed: u64,
    pub awaiting_approval: u64,
}

impl Store {
    /// Task counts per wave, for progress bars.
    pub async fn counts_by_wave(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, WaveCounts>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT wave, state, COUNT(*) AS n FROM tasks GROUP BY wave, state",
                vec![],
            ))
            .await?;
        let mut out: std::collections::BTreeMap<String, WaveCounts> =
            std::collections::BTreeMap::new();
        for row in rows {
            let wave: String = row.try_get("", "wave")?;
            let state: String = row.try_get("", "state")?;
            let n = u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0);
            let counts = out.entry(wave).or_default();
            counts.total += n;
            let state = TaskState::parse(&state).unwrap_or(TaskState::Pending);
            if state.is_final() {
                counts.finished += n;
            }
            if matches!(state, TaskState::Failed | TaskState::Blocked) {
                counts.failed += n;
            }
            if state == TaskState::AwaitingApproval {
                counts.awaiting_approval += n;
            }
        }
        Ok(out)
    }
}
