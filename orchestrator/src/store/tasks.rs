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

use super::events::{NewEvent, insert_events};
use super::{JsonColumn, Store, json_param};

/// The tasks a dependency that did not succeed blocks: those that have not begun
/// (pending, awaiting approval), and a replication_verify that released the tasks after
/// it and watches on (running between looks) but waits on a dependency again, its
/// agent_push being run again to reinstall the agent: if that fails for good, the watch
/// would otherwise wait forever, and its wave with it.
/// Only that task kind: any other running task (a cutover under way) is never blocked
/// halfway. Blocking also takes the lease away (as a cancel does, [`BLOCKED_UNLEASED`]),
/// so a look under way when it happens writes nothing over it.
pub(crate) const BLOCKABLE: &str = "(state IN ('pending', 'awaiting_approval') \
     OR (state = 'running' AND pending_deps > 0 AND kind = 'replication_verify'))";

/// What blocking sets besides the state and the reason: no lease.
pub(crate) const BLOCKED_UNLEASED: &str = "lease_owner = NULL, lease_expires_at = NULL";

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
    /// When it let the tasks that depend on it start while it ran on (a recurring
    /// check that watches until the window).
    pub released_at: Option<i64>,
    /// An operator asked to abort it while it ran (who and why): its next turn ends it.
    pub abort_requested: Option<String>,
}

impl TaskRow {
    pub fn state(&self) -> TaskState {
        TaskState::parse(&self.state).unwrap_or(TaskState::Pending)
    }

    /// A task of `kind` in wave-1, of `server` (its id `SERVER/KIND`) or, without one, the
    /// gate of `application` (`APPLICATION/KIND`), in `state`, never tried: for tests.
    #[cfg(test)]
    pub(crate) fn fixture(
        server: Option<&str>,
        application: &str,
        kind: &str,
        state: &str,
    ) -> TaskRow {
        TaskRow {
            id: format!("{}/{kind}", server.unwrap_or(application)),
            wave: "wave-1".to_owned(),
            application: application.to_owned(),
            server: server.map(str::to_owned),
            kind: kind.to_owned(),
            state: state.to_owned(),
            attempts: 0,
            earliest: 0,
            deadline: None,
            next_run_at: 0,
            approval_required: false,
            approved_by: None,
            approved_at: None,
            step: None,
            reason: None,
            started_at: None,
            finished_at: None,
            released_at: None,
            abort_requested: None,
        }
    }
}

/// A task row as SQLite's `json_array` of [`TASK_COLUMNS`] writes it (booleans as 0/1).
#[derive(serde::Deserialize)]
struct WireTask(
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i32,
    i64,
    Option<i64>,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

impl WireTask {
    fn into_row(self) -> TaskRow {
        TaskRow {
            id: self.0,
            wave: self.1,
            application: self.2,
            server: self.3,
            kind: self.4,
            state: self.5,
            attempts: self.6,
            earliest: self.7,
            deadline: self.8,
            next_run_at: self.9,
            approval_required: self.10 != 0,
            approved_by: self.11,
            approved_at: self.12,
            step: self.13,
            reason: self.14,
            started_at: self.15,
            finished_at: self.16,
            released_at: self.17,
            abort_requested: self.18,
        }
    }
}

/// How many tasks one claim may take: in all, and of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub total: u32,
    pub per_wave: u32,
}

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(crate) const TASK_COLUMNS: &str = "id, wave, application, server, kind, state, attempts, \
    earliest, deadline, next_run_at, approval_required, approved_by, approved_at, step, reason, \
    started_at, finished_at, released_at, abort_requested";

/// A task claimed by a worker, with the lease that lets it complete the task.
pub type ClaimedTask = TaskRow;

/// What one attempt did, for the attempts table.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt: the task's attempts before this one, plus one.
    pub number: i32,
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
    /// Reached: the tasks depending on it may start (released once, the first time),
    /// while it runs on, next at `next_run_at` with this step (a recurring check).
    Ready {
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

/// One task's own values in a set-based completion: id, step, next run (or the finish
/// time of a failure), reason.
type PerTask<'a> = (&'a str, Option<&'a str>, i64, Option<&'a str>);

impl Completion {
    /// A turn that goes on (waits, watches or retries) runs again at `at` instead of
    /// when it said: an operator aborted it while it ran.
    pub fn run_again_at(&mut self, at: i64) {
        match self {
            Completion::Waiting { next_run_at, .. }
            | Completion::Ready { next_run_at, .. }
            | Completion::Retry { next_run_at, .. } => *next_run_at = (*next_run_at).min(at),
            _ => {}
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Completion::Succeeded { id, .. }
            | Completion::Waiting { id, .. }
            | Completion::Ready { id, .. }
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
        // On SQLite the claim reads, then leases: one write transaction keeps it atomic.
        let txn = self.write_transaction().await?;
        let claimed = self.claim_on(&txn, owner, now, lease_until, limit).await?;
        txn.commit().await.context("cannot commit the claim")?;
        Ok(claimed)
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
            self.give_back(db, owner, &over).await?;
            for (wave, count) in &per_wave {
                if *count >= limit.per_wave && !full.contains(wave) {
                    full.push(wave.clone());
                }
            }
        }
        kept.sort_by(|a, b| a.next_run_at.cmp(&b.next_run_at).then(a.id.cmp(&b.id)));
        Ok(kept)
    }

    /// The aborts asked for among `ids` (id, who and why), read afresh: a task claimed
    /// before an operator aborted it learns of it before its turn. (The tasks with an
    /// abort are a partial index of a few rows at most.)
    pub async fn aborts_among(&self, ids: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT id, abort_requested FROM tasks WHERE abort_requested IS NOT NULL",
                vec![],
            ))
            .await?;
        let mut aborts = Vec::new();
        for row in &rows {
            let id: String = row.try_get("", "id")?;
            if ids.contains(&id.as_str()) {
                aborts.push((id, row.try_get("", "abort_requested")?));
            }
        }
        Ok(aborts)
    }

    /// Extends to `until` the leases `owner` still holds on `ids`: the steps of a batch
    /// that run long (a shell installing an agent) keep their tasks from other workers.
    /// Returns how many leases it held.
    pub async fn renew_leases(&self, owner: &str, ids: &[&str], until: i64) -> anyhow::Result<u64> {
        let sql = format!(
            "UPDATE tasks SET lease_expires_at = ? WHERE lease_owner = ? AND id IN {}",
            self.json_strings()
        );
        let values = vec![until.into(), owner.into(), json_param(&ids)?];
        let result = self.db().execute_raw(self.stmt(&sql, values)).await?;
        Ok(result.rows_affected())
    }

    /// Claimed tasks whose turn will not come in this process (it stops) go back as they
    /// were, for the next run to claim at once instead of after their leases.
    pub async fn give_back_claims(
        &self,
        owner: &str,
        claimed: &[ClaimedTask],
    ) -> anyhow::Result<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let txn = self.write_transaction().await?;
        self.give_back(&txn, owner, claimed).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Tasks claimed over a wave's limit go back as they were.
    async fn give_back(
        &self,
        db: &impl ConnectionTrait,
        owner: &str,
        over: &[ClaimedTask],
    ) -> anyhow::Result<()> {
        let ids: Vec<&str> = over.iter().map(|t| t.id.as_str()).collect();
        // Only leases still `owner`'s, and a state only the claim set (an operator's
        // cancel meanwhile stays).
        let fresh = "state = 'running' AND attempts = 0 AND step IS NULL";
        let sql = format!(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, \
             state = CASE WHEN {fresh} THEN 'pending' ELSE state END, \
             started_at = CASE WHEN {fresh} THEN NULL ELSE started_at END \
             WHERE lease_owner = ? AND id IN {}",
            self.json_strings()
        );
        db.execute_raw(self.stmt(&sql, vec![owner.into(), json_param(&ids)?]))
            .await?;
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
        if !self.is_postgres() {
            return self
                .claim_round_sqlite(db, owner, now, lease_until, room, full_waves)
                .await;
        }
        let lock = " FOR UPDATE SKIP LOCKED";
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

    /// The claim on SQLite, inside the caller's write transaction (which already holds
    /// the database's write lock, so nothing changes between the two statements): the
    /// runnable tasks are read as one JSON row, then leased by id. An `UPDATE ...
    /// RETURNING` would hand every row over from SQLite's worker thread one by one.
    async fn claim_round_sqlite(
        &self,
        db: &impl ConnectionTrait,
        owner: &str,
        now: i64,
        lease_until: i64,
        room: u32,
        full_waves: &[String],
    ) -> anyhow::Result<Vec<ClaimedTask>> {
        let exclude = if full_waves.is_empty() {
            String::new()
        } else {
            format!(" AND wave NOT IN ({})", placeholders(full_waves.len()))
        };
        let sql = format!(
            "SELECT json_group_array(json_array({TASK_COLUMNS})) AS rows FROM ( \
             SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('pending', 'running') \
             AND pending_deps = 0 AND next_run_at <= ? \
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?){exclude} \
             ORDER BY next_run_at, id LIMIT ?)"
        );
        let mut values: Vec<Value> = vec![now.into(), now.into()];
        values.extend(full_waves.iter().map(|w| Value::from(w.clone())));
        values.push(i64::from(room).into());
        let text = db
            .query_one_raw(self.stmt(&sql, values))
            .await?
            .map(|row| row.try_get::<String>("", "rows"))
            .transpose()?
            .unwrap_or_else(|| "[]".to_owned());
        let wire: Vec<WireTask> =
            serde_json::from_str(&text).context("cannot read the claimed tasks")?;
        if wire.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = wire.iter().map(|t| t.0.as_str()).collect();
        let sql = "UPDATE tasks SET lease_owner = ?, lease_expires_at = ?, \
                   state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, \
                   started_at = COALESCE(started_at, ?), updated_at = ? \
                   WHERE id IN (SELECT value FROM json_each(?))";
        let values: Vec<Value> = vec![
            owner.into(),
            lease_until.into(),
            now.into(),
            now.into(),
            json_param(&ids)?,
        ];
        db.execute_raw(self.stmt(sql, values)).await?;
        // The rows as the lease left them, as `RETURNING` would show them.
        Ok(wire
            .into_iter()
            .map(|w| {
                let mut task = w.into_row();
                if task.state == "pending" {
                    task.state = "running".to_owned();
                }
                task.started_at = task.started_at.or(Some(now));
                task
            })
            .collect())
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

    /// Writes a batch of outcomes set-based: one statement per kind of outcome for the
    /// whole batch (the rows travel as one JSON parameter), then the dependants of the
    /// successes released, the failures' downstream blocked, and every attempt and
    /// event inserted, in the order the completions came.
    async fn complete_in(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        now: i64,
        completions: Vec<Completion>,
    ) -> anyhow::Result<usize> {
        let total = completions.len();
        let kept: Vec<Completion> = {
            let ids: Vec<&str> = completions.iter().map(Completion::id).collect();
            match self.leased_to(txn, owner, &ids).await? {
                None => completions,
                Some(ours) => completions
                    .into_iter()
                    .filter(|c| ours.contains(c.id()))
                    .collect(),
            }
        };
        let kept_count = kept.len();
        let ids_of = |pick: fn(&Completion) -> bool| -> Vec<&str> {
            kept.iter()
                .filter(|c| pick(c))
                .map(Completion::id)
                .collect()
        };
        let succeeded = ids_of(|c| matches!(c, Completion::Succeeded { .. }));
        let ready = ids_of(|c| matches!(c, Completion::Ready { .. }));
        // Dependants are released once: by a task's first `Ready`, or by its success if
        // it was never ready before (before the updates below mark them).
        let releasing: Vec<&str> = succeeded.iter().chain(&ready).copied().collect();
        if !releasing.is_empty() {
            self.release_dependants_of(txn, &releasing).await?;
        }
        let awaiting = ids_of(|c| matches!(c, Completion::AwaitingApproval { .. }));
        let release = "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?";
        let ids = self.json_strings();
        if !succeeded.is_empty() {
            let sql = format!(
                "UPDATE tasks SET state = 'succeeded', step = NULL, reason = NULL, finished_at = ?, \
                 attempts = attempts + 1, {release} WHERE lease_owner = ? AND id IN {ids}"
            );
            let values = vec![
                now.into(),
                now.into(),
                owner.into(),
                json_param(&succeeded)?,
            ];
            txn.execute_raw(self.stmt(&sql, values)).await?;
        }
        if !awaiting.is_empty() {
            let sql = format!(
                "UPDATE tasks SET state = 'awaiting_approval', {release} \
                 WHERE lease_owner = ? AND id IN {ids}"
            );
            let values = vec![now.into(), owner.into(), json_param(&awaiting)?];
            txn.execute_raw(self.stmt(&sql, values)).await?;
        }
        // The outcomes that carry values of their own per task: (id, step, next run,
        // reason), joined on the id.
        let mut waiting = Vec::new();
        let mut watching = Vec::new();
        let mut retrying = Vec::new();
        let mut failing = Vec::new();
        for completion in &kept {
            match completion {
                Completion::Waiting {
                    id,
                    step,
                    next_run_at,
                    ..
                } => waiting.push((id.as_str(), Some(step.as_str()), *next_run_at, None)),
                Completion::Ready {
                    id,
                    step,
                    next_run_at,
                    ..
                } => watching.push((id.as_str(), Some(step.as_str()), *next_run_at, None)),
                Completion::Retry {
                    id,
                    step,
                    next_run_at,
                    reason,
                    ..
                } => retrying.push((
                    id.as_str(),
                    step.as_deref(),
                    *next_run_at,
                    Some(reason.as_str()),
                )),
                Completion::Failed {
                    id, step, reason, ..
                } => failing.push((id.as_str(), step.as_deref(), now, Some(reason.as_str()))),
                _ => {}
            }
        }
        let rows = self.json_rows(&[
            ("id", JsonColumn::Text),
            ("step", JsonColumn::Text),
            ("next_run_at", JsonColumn::Int),
            ("reason", JsonColumn::Text),
        ]);
        let per_task: [(&[PerTask], &str); 4] = [
            (&waiting, "step = v.step, next_run_at = v.next_run_at"),
            (
                &watching,
                "step = v.step, next_run_at = v.next_run_at, released_at = COALESCE(released_at, ?)",
            ),
            (
                &retrying,
                "step = v.step, next_run_at = v.next_run_at, reason = v.reason, attempts = attempts + 1",
            ),
            (
                &failing,
                "state = 'failed', step = v.step, reason = v.reason, finished_at = v.next_run_at, \
                 attempts = attempts + 1",
            ),
        ];
        for (batch, set) in per_task {
            if batch.is_empty() {
                continue;
            }
            let sql = format!(
                "UPDATE tasks SET {set}, {release} FROM {rows} AS v \
                 WHERE tasks.id = v.id AND tasks.lease_owner = ?"
            );
            // In the order of the statement's text: the release time (watching only), the
            // update time, the rows, the owner.
            let mut values: Vec<Value> = Vec::with_capacity(4);
            if set.contains("released_at") {
                values.push(now.into());
            }
            values.extend([now.into(), json_param(&batch)?, owner.into()]);
            txn.execute_raw(self.stmt(&sql, values)).await?;
        }
        for (id, ..) in &failing {
            self.block_dependants(txn, id, now).await?;
        }
        let mut attempts = Vec::new();
        let mut events = Vec::new();
        for completion in kept {
            match completion {
                Completion::Succeeded {
                    id,
                    attempt,
                    events: these,
                }
                | Completion::Retry {
                    id,
                    attempt,
                    events: these,
                    ..
                } => {
                    attempts.push((id, attempt));
                    events.extend(these);
                }
                Completion::Failed {
                    id,
                    attempt,
                    events: these,
                    ..
                } => {
                    attempts.extend(attempt.map(|a| (id, a)));
                    events.extend(these);
                }
                Completion::Waiting { events: these, .. }
                | Completion::Ready { events: these, .. }
                | Completion::AwaitingApproval { events: these, .. } => events.extend(these),
            }
        }
        self.insert_attempts(txn, &attempts).await?;
        insert_events(self, txn, &events).await?;
        Ok(total - kept_count)
    }

    /// Which of `ids` are leased to `owner`: `None` when all of them are (the common
    /// case, answered with a single count on SQLite), else the set of those that are.
    /// On PostgreSQL the rows are locked for the rest of the transaction; on SQLite the
    /// transaction already holds the write lock.
    async fn leased_to(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        ids: &[&str],
    ) -> anyhow::Result<Option<std::collections::HashSet<String>>> {
        let list = self.json_strings();
        let values = vec![owner.into(), json_param(&ids)?];
        if !self.is_postgres() {
            let sql =
                format!("SELECT COUNT(*) AS n FROM tasks WHERE lease_owner = ? AND id IN {list}");
            let n = txn
                .query_one_raw(self.stmt(&sql, values.clone()))
                .await?
                .map(|row| row.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
            if usize::try_from(n).ok() == Some(ids.len()) {
                return Ok(None);
            }
        }
        let lock = if self.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!("SELECT id FROM tasks WHERE lease_owner = ? AND id IN {list}{lock}");
        let ours: std::collections::HashSet<String> = txn
            .query_all_raw(self.stmt(&sql, values))
            .await?
            .iter()
            .map(|row| row.try_get::<String>("", "id"))
            .collect::<Result<_, _>>()?;
        Ok(if ours.len() == ids.len() {
            None
        } else {
            Some(ours)
        })
    }

    /// Inserts attempts in one statement.
    async fn insert_attempts(
        &self,
        txn: &DatabaseTransaction,
        attempts: &[(String, AttemptRecord)],
    ) -> anyhow::Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let rows = self.json_rows(&[
            ("task_id", JsonColumn::Text),
            ("number", JsonColumn::Int),
            ("started_at", JsonColumn::Int),
            ("finished_at", JsonColumn::Int),
            ("outcome", JsonColumn::Text),
            ("checks", JsonColumn::Text),
            ("output", JsonColumn::Text),
            ("error", JsonColumn::Text),
        ]);
        let sql = format!(
            "INSERT INTO attempts (task_id, number, started_at, finished_at, outcome, checks, output, error) \
             SELECT r.task_id, r.number, r.started_at, \
             r.finished_at, r.outcome, r.checks, r.output, r.error FROM {rows} AS r ORDER BY r.ord"
        );
        let wire: Vec<_> = attempts
            .iter()
            .map(|(id, a)| {
                (
                    id,
                    a.number,
                    a.started_at,
                    a.finished_at,
                    &a.outcome,
                    &a.checks,
                    &a.output,
                    &a.error,
                )
            })
            .collect();
        txn.execute_raw(self.stmt(&sql, vec![json_param(&wire)?]))
            .await?;
        Ok(())
    }

    /// One dependency fewer for every task waiting on one of `ids` (succeeded or ready)
    /// that has not released them before, in one statement.
    async fn release_dependants_of(
        &self,
        txn: &DatabaseTransaction,
        ids: &[&str],
    ) -> anyhow::Result<()> {
        // Counted per dependant in a derived table joined on the key: a correlated count
        // per dependant would probe every id of the list for every dependant.
        let sql = format!(
            "UPDATE tasks SET pending_deps = pending_deps - c.n \
             FROM (SELECT task_id, COUNT(*) AS n FROM task_dependencies \
             WHERE depends_on IN (SELECT id FROM tasks WHERE released_at IS NULL AND id IN {}) \
             GROUP BY task_id) AS c WHERE tasks.id = c.task_id",
            self.json_strings()
        );
        txn.execute_raw(self.stmt(&sql, vec![json_param(&ids)?]))
            .await?;
        Ok(())
    }

    /// Every task downstream of `id` that has not run is blocked, with the reason (and a
    /// released watch that waits on a dependency again: see [`BLOCKABLE`]).
    pub(crate) async fn block_dependants(
        &self,
        txn: &DatabaseTransaction,
        id: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "WITH RECURSIVE downstream(id) AS ( \
             SELECT task_id FROM task_dependencies WHERE depends_on = ? \
             UNION SELECT d.task_id FROM task_dependencies d JOIN downstream ON d.depends_on = downstream.id) \
             UPDATE tasks SET state = 'blocked', reason = ?, updated_at = ?, {BLOCKED_UNLEASED} \
             WHERE id IN (SELECT id FROM downstream) AND {BLOCKABLE}"
        );
        let reason = format!("blocked: {id} did not succeed");
        txn.execute_raw(self.stmt(&sql, vec![id.into(), reason.into(), now.into()]))
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
        let ordered = format!(
            "SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY wave, application, (server IS NOT NULL), server, earliest, id"
        );
        if !self.is_postgres() {
            // One JSON row instead of a hand-over per row from sqlx's SQLite thread: a
            // 2,000-server wave reads in a tenth of the time.
            let sql = format!(
                "SELECT json_group_array(json_array({TASK_COLUMNS})) AS rows FROM ({ordered})"
            );
            let text = self
                .db()
                .query_one_raw(self.stmt(&sql, values))
                .await?
                .map(|row| row.try_get::<String>("", "rows"))
                .transpose()?
                .unwrap_or_else(|| "[]".to_owned());
            let wire: Vec<WireTask> =
                serde_json::from_str(&text).context("cannot read the tasks")?;
            return Ok(wire.into_iter().map(WireTask::into_row).collect());
        }
        let rows = self.db().query_all_raw(self.stmt(&ordered, values)).await?;
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
    /// Failed or blocked.
    pub failed: u64,
    pub awaiting_approval: u64,
}

impl WaveCounts {
    fn add(&mut self, state: TaskState, n: u64) {
        self.total += n;
        if state.is_final() {
            self.finished += n;
        }
        if matches!(state, TaskState::Failed | TaskState::Blocked) {
            self.failed += n;
        }
        if state == TaskState::AwaitingApproval {
            self.awaiting_approval += n;
        }
    }

    /// The counts of these tasks.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskRow>) -> WaveCounts {
        let mut counts = WaveCounts::default();
        for task in tasks {
            counts.add(task.state(), 1);
        }
        counts
    }
}

impl Store {
    /// Task counts per wave, for progress bars.
    pub async fn counts_by_wave(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, WaveCounts>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                // A removed server's tasks, and a removed application's gate, are
                // history, not their wave's work.
                &format!(
                    "SELECT wave, state, COUNT(*) AS n FROM tasks WHERE \
                     (server IS NULL AND application NOT IN ({})) OR server NOT IN \
                     (SELECT name FROM servers WHERE removed_at IS NOT NULL) GROUP BY wave, state",
                    super::apply::REMOVED_APPLICATIONS
                ),
                vec![],
            ))
            .await?;
        let mut out: std::collections::BTreeMap<String, WaveCounts> =
            std::collections::BTreeMap::new();
        for row in rows {
            let wave: String = row.try_get("", "wave")?;
            let state: String = row.try_get("", "state")?;
            let n = u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0);
            out.entry(wave)
                .or_default()
                .add(TaskState::parse(&state).unwrap_or(TaskState::Pending), n);
        }
        Ok(out)
    }
}
