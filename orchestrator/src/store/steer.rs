//! The operator's levers: approve a cutover, retry, skip or cancel a task. Each is one
//! transaction that also fixes up what depends on the task, and is logged as an event.

use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::Store;
use super::events::{NewEvent, insert_events};
use super::tasks::{TaskRow, TaskState};

/// What kind of refusal a lever met, for a caller that answers with a status (the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// No such wave, application or task.
    NotFound,
    /// The state of what it names does not allow it.
    Conflict,
    /// The request itself is incomplete (a no-go without its reason).
    Invalid,
}

/// What an approval did: the applications whose go it gave, and those approved before,
/// each with who gave its go (kept, not given again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approval {
    pub approved: Vec<String>,
    pub already: Vec<(String, String)>,
}

impl Approval {
    /// "web (by alice), db (by bob)": the applications approved before.
    pub fn already_text(&self) -> String {
        self.already
            .iter()
            .map(|(app, by)| format!("{app} (by {by})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A lever the store refused, with the sentence for the operator.
#[derive(Debug)]
pub struct Refused {
    pub kind: RefusalKind,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// Returns a [`Refused`] of the kind named, with a formatted message.
macro_rules! refuse {
    ($kind:ident, $($message:tt)+) => {
        return Err(anyhow::Error::new(Refused {
            kind: RefusalKind::$kind,
            message: format!($($message)+),
        }))
    };
}

/// The longest reason an operator may give (a no-go's, an abort's), in characters.
pub const MAX_REASON: usize = 1000;
/// The longest name of an operator or a token, in characters.
pub const MAX_NAME: usize = 100;

/// Refuses text an operator gives that the job progress log could not keep as one line
/// of its own: control characters (a newline would start what reads as another event,
/// an escape sequence would reach every terminal that shows the log), or more than `max`
/// characters.
pub fn check_given(what: &str, text: &str, max: usize) -> anyhow::Result<()> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        refuse!(
            Invalid,
            "{what} holds a control character ({}): write it on one line, without tabs or escape sequences",
            c.escape_default()
        );
    }
    let length = text.chars().count();
    if length > max {
        refuse!(
            Invalid,
            "{what} is {length} characters long; at most {max} are kept"
        );
    }
    Ok(())
}

impl Store {
    /// Records a go for the cutover gates of a wave (or one application) that have none.
    /// A gate approved already (waiting for its cutovers' window or their boot tests)
    /// keeps its go and who gave it; it is named in [`Approval::already`].
    pub async fn approve(
        &self,
        wave: &str,
        application: Option<&str>,
        by: &str,
        now: i64,
    ) -> anyhow::Result<Approval> {
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let (filter, mut values): (&str, Vec<Value>) = match application {
            Some(app) => (" AND application = ?", vec![wave.into(), app.into()]),
            None => ("", vec![wave.into()]),
        };
        let gates = format!(
            "kind = 'gate' AND approval_required AND wave = ?{filter} \
             AND state NOT IN ('succeeded', 'skipped', 'cancelled')"
        );
        // The gates are read and written in one go: on PostgreSQL two approvers at once
        // would each read the gate without a go (SQLite's write transactions take the
        // lock before reading).
        let lock = if self.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let rows = txn
            .query_all_raw(self.stmt(
                &format!(
                    "SELECT application, approved_by, state FROM tasks WHERE {gates} \
                     ORDER BY application{lock}"
                ),
                values.clone(),
            ))
            .await?;
        let mut approval = Approval::default();
        for row in &rows {
            let app: String = row.try_get("", "application")?;
            let state: String = row.try_get("", "state")?;
            match row.try_get::<Option<String>>("", "approved_by")? {
                Some(first) if state != "awaiting_approval" => approval.already.push((app, first)),
                _ => approval.approved.push(app),
            }
        }
        if rows.is_empty() {
            self.check_names(&txn, wave, application).await?;
            refuse!(
                Conflict,
                "nothing to approve in wave `{wave}`{}: no cutover there waits for an approval",
                application
                    .map(|a| format!(", application `{a}`"))
                    .unwrap_or_default()
            );
        }
        if approval.approved.is_empty() {
            return Ok(approval);
        }
        let mut update_values: Vec<Value> = vec![by.into(), now.into(), now.into(), now.into()];
        update_values.append(&mut values);
        let sql = format!(
            "UPDATE tasks SET approved_by = ?, approved_at = ?, \
             state = CASE WHEN state = 'awaiting_approval' THEN 'pending' ELSE state END, \
             next_run_at = CASE WHEN state = 'awaiting_approval' THEN ? ELSE next_run_at END, updated_at = ? \
             WHERE {gates} AND (approved_by IS NULL OR state = 'awaiting_approval')"
        );
        txn.execute_raw(self.stmt(&sql, update_values)).await?;
        let events: Vec<NewEvent> = approval
            .approved
            .iter()
            .map(|app| NewEvent {
                at: now,
                wave: wave.to_owned(),
                server: None,
                task_id: Some(super::apply::gate_id(app)),
                kind: "operator.approve".to_owned(),
                message: format!("cutover of `{app}` approved by {by}"),
                data: None,
            })
            .collect();
        insert_events(self, &txn, &events).await?;
        txn.commit().await?;
        Ok(approval)
    }

    /// A no-go: the go is withheld (or withdrawn) for the wave's cutovers, or one
    /// application's, that have not started; their gates wait for a go again, and the
    /// log says who and why. Too late once a gate has opened (its cutovers started).
    pub async fn no_go(
        &self,
        wave: &str,
        application: Option<&str>,
        by: &str,
        reason: &str,
        now: i64,
    ) -> anyhow::Result<Vec<String>> {
        let reason = reason.trim();
        if reason.is_empty() {
            refuse!(Invalid, "a no-go needs its reason");
        }
        check_given("a no-go's reason", reason, MAX_REASON)?;
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let (filter, mut values): (&str, Vec<Value>) = match application {
            Some(app) => (" AND application = ?", vec![wave.into(), app.into()]),
            None => ("", vec![wave.into()]),
        };
        // Every gate that has not opened: one blocked by a failure upstream may hold a
        // go given ahead, which must be withdrawable before a retry opens it.
        let gates = format!(
            "kind = 'gate' AND approval_required AND wave = ?{filter} \
             AND state IN ('pending', 'awaiting_approval', 'blocked')"
        );
        let rows = txn
            .query_all_raw(self.stmt(
                &format!("SELECT application FROM tasks WHERE {gates} ORDER BY application"),
                values.clone(),
            ))
            .await?;
        let apps: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String>("", "application"))
            .collect::<Result<_, _>>()?;
        if apps.is_empty() {
            self.check_names(&txn, wave, application).await?;
            let opened = txn
                .query_all_raw(self.stmt(
                    &format!(
                        "SELECT application FROM tasks WHERE kind = 'gate' AND approval_required \
                         AND wave = ?{filter} AND state = 'succeeded' ORDER BY application"
                    ),
                    values.clone(),
                ))
                .await?;
            if let Some(row) = opened.first() {
                let app: String = row.try_get("", "application")?;
                refuse!(
                    Conflict,
                    "too late for a no-go: the gate of `{app}` has opened; cancel its cutovers \
                     that have not started (wavelift cancel SERVER/cutover), abort one that \
                     runs (wavelift abort SERVER/cutover --reason TEXT), which rolls it back"
                );
            }
            refuse!(
                Conflict,
                "no cutover of wave `{wave}`{} waits for a go",
                application
                    .map(|a| format!(", application `{a}`,"))
                    .unwrap_or_default()
            );
        }
        let mut update: Vec<Value> = vec![now.into()];
        update.append(&mut values);
        txn.execute_raw(self.stmt(
            &format!(
                "UPDATE tasks SET approved_by = NULL, approved_at = NULL, updated_at = ? WHERE {gates}"
            ),
            update,
        ))
        .await?;
        let events: Vec<NewEvent> = apps
            .iter()
            .map(|app| NewEvent {
                at: now,
                wave: wave.to_owned(),
                server: None,
                task_id: Some(super::apply::gate_id(app)),
                kind: "operator.no_go".to_owned(),
                message: format!("no-go for the cutover of `{app}` by {by}: {reason}"),
                data: None,
            })
            .collect();
        insert_events(self, &txn, &events).await?;
        txn.commit().await?;
        Ok(apps)
    }

    /// An error naming what is wrong when no wave `wave` is stored, or it holds no
    /// application `application`: the waves there are, or where the application is.
    pub async fn check_names(
        &self,
        conn: &impl ConnectionTrait,
        wave: &str,
        application: Option<&str>,
    ) -> anyhow::Result<()> {
        let rows = conn
            .query_all_raw(self.stmt(
                "SELECT DISTINCT wave, application FROM tasks ORDER BY wave, application",
                vec![],
            ))
            .await?;
        let pairs: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.try_get("", "wave")?, r.try_get("", "application")?)))
            .collect::<Result<_, sea_orm::DbErr>>()?;
        if pairs.is_empty() {
            refuse!(
                NotFound,
                "no wave `{wave}`: nothing is applied yet (wavelift apply PATH)"
            );
        }
        if !pairs.iter().any(|(w, _)| w == wave) {
            let mut waves: Vec<&str> = pairs.iter().map(|(w, _)| w.as_str()).collect();
            waves.dedup();
            refuse!(
                NotFound,
                "no wave `{wave}`; the waves are: {}",
                waves.join(", ")
            );
        }
        let Some(application) = application else {
            return Ok(());
        };
        if pairs.iter().any(|(w, a)| w == wave && a == application) {
            return Ok(());
        }
        match pairs.iter().find(|(_, a)| a == application) {
            Some((elsewhere, _)) => refuse!(
                NotFound,
                "no application `{application}` in wave `{wave}`: it is in wave `{elsewhere}`"
            ),
            None => {
                let here: Vec<&str> = pairs
                    .iter()
                    .filter(|(w, _)| w == wave)
                    .map(|(_, a)| a.as_str())
                    .collect();
                refuse!(
                    NotFound,
                    "no application `{application}` in wave `{wave}`; its applications are: {}",
                    here.join(", ")
                )
            }
        }
    }

    /// [`Store::check_names`] on the store's own connection.
    pub async fn check_wave(&self, wave: &str) -> anyhow::Result<()> {
        self.check_names(&self.db, wave, None).await
    }

    async fn steer_target(&self, txn: &DatabaseTransaction, id: &str) -> anyhow::Result<TaskRow> {
        let sql = format!(
            "SELECT {} FROM tasks WHERE id = ?",
            super::tasks::TASK_COLUMNS
        );
        let row = txn.query_one_raw(self.stmt(&sql, vec![id.into()])).await?;
        let task = match row {
            Some(row) => <TaskRow as sea_orm::FromQueryResult>::from_query_result(&row, "")?,
            None => {
                // SERVER/ready: a gate is its application's, not its server's.
                let application = match id.strip_suffix("/ready") {
                    Some(server) => txn
                        .query_one_raw(self.stmt(
                            "SELECT application FROM tasks WHERE server = ? LIMIT 1",
                            vec![server.into()],
                        ))
                        .await?
                        .map(|r| r.try_get::<String>("", "application"))
                        .transpose()?,
                    None => None,
                };
                match application {
                    Some(app) => refuse!(
                        NotFound,
                        "no task `{id}`: a gate is its application's, `{app}/ready`"
                    ),
                    None => refuse!(
                        NotFound,
                        "no task `{id}`: task ids are SERVER/KIND, or APPLICATION/ready for a gate (see wavelift status)"
                    ),
                }
            }
        };
        // A removed server's tasks keep their history and run no more: a lever on one
        // would only make a task the executor must fail.
        if let Some(server) = &task.server {
            let removed = txn
                .query_one_raw(self.stmt(
                    "SELECT 1 AS removed FROM servers WHERE name = ? AND removed_at IS NOT NULL",
                    vec![server.as_str().into()],
                ))
                .await?;
            if removed.is_some() {
                refuse!(
                    Conflict,
                    "`{id}` belongs to `{server}`, which the definitions no longer hold (removed by an apply): its history is kept and its tasks run no more; add it back to a wave file and apply to run it again"
                );
            }
        }
        Ok(task)
    }

    async fn log(
        &self,
        txn: &DatabaseTransaction,
        task: &TaskRow,
        kind: &str,
        message: String,
        now: i64,
    ) -> anyhow::Result<()> {
        insert_events(
            self,
            txn,
            &[NewEvent {
                at: now,
                wave: task.wave.clone(),
                server: task.server.clone(),
                task_id: Some(task.id.clone()),
                kind: kind.to_owned(),
                message,
                data: None,
            }],
        )
        .await
    }

    /// Runs a failed, blocked or cancelled task again from its first step; what it
    /// blocked waits for it again.
    pub async fn retry(&self, id: &str, by: &str, now: i64) -> anyhow::Result<()> {
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let task = self.steer_target(&txn, id).await?;
        let reinstall = task.kind == "agent_push" && task.state() == TaskState::Succeeded;
        if reinstall {
            self.refuse_reinstall_after_cutover(&txn, &task).await?;
        } else if !matches!(
            task.state(),
            TaskState::Failed | TaskState::Blocked | TaskState::Cancelled
        ) {
            let also = if task.state() == TaskState::Succeeded {
                " (and a succeeded agent_push, to install its agent again)"
            } else {
                ""
            };
            refuse!(
                Conflict,
                "`{id}` is {}: only a failed, blocked or cancelled task can be retried{also}",
                task.state
            );
        }
        // The retry starts over, but for what the task keeps (a CMDB record written), and
        // with its automatic retries anew.
        let kept = crate::executor::retried_step(task.step.as_deref(), now, task.attempts);
        txn.execute_raw(self.stmt(
            "UPDATE tasks SET state = 'pending', reason = NULL, step = ?, next_run_at = ?, \
             finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
             abort_requested = NULL, updated_at = ? WHERE id = ?",
            vec![kept.into(), now.into(), now.into(), id.into()],
        ))
        .await?;
        self.unblock_downstream(&txn, id, now).await?;
        self.recount_dependencies(&txn, now).await?;
        let said = if reinstall {
            format!(
                "{id} retried by {by}: its agent is installed and started again if it does not replicate"
            )
        } else {
            format!("{id} retried by {by}")
        };
        self.log(&txn, &task, "operator.retry", said, now).await?;
        txn.commit().await?;
        Ok(())
    }

    /// A succeeded agent_push runs again (its agent installed and started anew when it no
    /// longer replicates: the source rebooted, the process was killed) only while its
    /// server's cutover has neither begun nor finished nor been skipped (cut over by
    /// hand): a cut-over source replicates no more. A cutover that begins meanwhile is
    /// seen by the task itself, which then installs nothing.
    async fn refuse_reinstall_after_cutover(
        &self,
        txn: &DatabaseTransaction,
        task: &TaskRow,
    ) -> anyhow::Result<()> {
        let Some(server) = &task.server else {
            return Ok(());
        };
        let cutover = format!("{server}/cutover");
        let row = txn
            .query_one_raw(self.stmt(
                "SELECT state FROM tasks WHERE id = ?",
                vec![cutover.as_str().into()],
            ))
            .await?;
        let state = row
            .map(|r| r.try_get::<String>("", "state"))
            .transpose()?
            .unwrap_or_default();
        if matches!(state.as_str(), "running" | "succeeded" | "skipped") {
            refuse!(
                Conflict,
                "`{}` is succeeded and `{cutover}` is {state}: the agent of a server whose cutover began is not installed again",
                task.id
            );
        }
        Ok(())
    }

    /// Asks a running cutover to stop: its next turn rolls back what it did (its target
    /// terminated, the source started again, the server ready for cutover again) and
    /// fails it with `why`, recorded with who asked. Only a cutover that runs; one that
    /// has not started is cancelled.
    pub async fn abort(&self, id: &str, by: &str, why: &str, now: i64) -> anyhow::Result<()> {
        let why = why.trim();
        if why.is_empty() {
            refuse!(Invalid, "an abort needs its reason");
        }
        check_given("an abort's reason", why, MAX_REASON)?;
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let task = self.steer_target(&txn, id).await?;
        if task.kind != "cutover" {
            let instead = if task.state().is_final() {
                String::new()
            } else {
                format!("; cancel any other task (wavelift cancel {id})")
            };
            refuse!(
                Conflict,
                "`{id}` is not a cutover: only a running cutover is aborted{instead}"
            );
        }
        if task.state() != TaskState::Running {
            let instead = if task.state().is_final() {
                String::new()
            } else {
                format!("; one that has not started is cancelled (wavelift cancel {id})")
            };
            refuse!(
                Conflict,
                "`{id}` is {}: only a running cutover is aborted{instead}",
                task.state
            );
        }
        if let Some(asked) = &task.abort_requested {
            refuse!(
                Conflict,
                "`{id}` is being aborted already ({asked}): it rolls back at its next turn"
            );
        }
        let asked = format!("aborted by {by}: {why}");
        // Only while it still runs: a completion may commit between the read and here.
        let changed = txn
            .execute_raw(self.stmt(
                "UPDATE tasks SET abort_requested = ?, next_run_at = ?, updated_at = ? \
                 WHERE id = ? AND state = 'running' AND abort_requested IS NULL",
                vec![asked.into(), now.into(), now.into(), id.into()],
            ))
            .await?
            .rows_affected();
        if changed == 0 {
            refuse!(
                Conflict,
                "`{id}` ended meanwhile: see wavelift status, then retry it if it must run again"
            );
        }
        self.log(
            &txn,
            &task,
            "operator.abort",
            format!("{id} abort asked by {by}: {why}"),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Marks a task skipped: it counts as done for what depends on it. Not a gate that
    /// waits for its go (an approval is given with `approve`, recorded with who), nor a
    /// running cutover.
    pub async fn skip(&self, id: &str, by: &str, now: i64) -> anyhow::Result<()> {
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let task = self.steer_target(&txn, id).await?;
        if matches!(task.state(), TaskState::Succeeded | TaskState::Skipped) {
            refuse!(Conflict, "`{id}` is already {}", task.state);
        }
        if task.approval_required && task.approved_by.is_none() {
            refuse!(
                Conflict,
                "`{id}` waits for the go of {}'s cutover, which a skip does not give: give it \
                 with `wavelift approve {} --app {}` (recorded with who and when), or hold it \
                 with `wavelift no-go {} --reason TEXT`",
                task.application,
                task.wave,
                task.application,
                task.wave
            );
        }
        refuse_running_cutover(&task, "skipped")?;
        txn.execute_raw(self.stmt(
            "UPDATE tasks SET state = 'skipped', reason = ?, finished_at = ?, lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = ? WHERE id = ?",
            vec![
                format!("skipped by {by}").into(),
                now.into(),
                now.into(),
                id.into(),
            ],
        ))
        .await?;
        self.unblock_downstream(&txn, id, now).await?;
        self.recount_dependencies(&txn, now).await?;
        self.log(
            &txn,
            &task,
            "operator.skip",
            format!("{id} skipped by {by}"),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Cancels a task that has not finished; what depends on it is blocked. A worker
    /// holding it loses its lease and writes nothing more.
    pub async fn cancel(&self, id: &str, by: &str, now: i64) -> anyhow::Result<()> {
        check_given("the operator's name", by, MAX_NAME)?;
        let txn = self.write_transaction().await?;
        let task = self.steer_target(&txn, id).await?;
        if task.state().is_final() {
            refuse!(Conflict, "`{id}` is already {}", task.state);
        }
        refuse_running_cutover(&task, "cancelled")?;
        txn.execute_raw(self.stmt(
            "UPDATE tasks SET state = 'cancelled', reason = ?, finished_at = ?, lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = ? WHERE id = ?",
            vec![
                format!("cancelled by {by}").into(),
                now.into(),
                now.into(),
                id.into(),
            ],
        ))
        .await?;
        self.recount_dependencies(&txn, now).await?;
        self.log(
            &txn,
            &task,
            "operator.cancel",
            format!("{id} cancelled by {by}"),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Tasks blocked downstream of `id` become pending again; the recount blocks those
    /// that still wait on another failure.
    async fn unblock_downstream(
        &self,
        txn: &DatabaseTransaction,
        id: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let sql = "WITH RECURSIVE downstream(id) AS ( \
                     SELECT task_id FROM task_dependencies WHERE depends_on = ? \
                     UNION SELECT d.task_id FROM task_dependencies d JOIN downstream ON d.depends_on = downstream.id) \
                   UPDATE tasks SET state = 'pending', reason = NULL, updated_at = ? \
                   WHERE id IN (SELECT id FROM downstream) AND state = 'blocked'";
        txn.execute_raw(self.stmt(sql, vec![id.into(), now.into()]))
            .await?;
        Ok(())
    }
}

/// A running cutover is not abandoned halfway: it may have shut the source down or
/// launched its target, and only the task itself rolls that back (when it fails, or when
/// its window ends first).
fn refuse_running_cutover(task: &TaskRow, lever: &str) -> anyhow::Result<()> {
    if task.kind == "cutover" && task.state() == TaskState::Running {
        refuse!(
            Conflict,
            "`{}` is running and cannot be {lever} halfway: it may have shut the source down \
             or launched its target, which only the task rolls back; it ends by itself (one \
             that cannot finish inside its window is rolled back), then it can be {lever}; \
             to stop it now, abort it (wavelift abort {} --reason TEXT), which rolls it back",
            task.id,
            task.id
        );
    }
    Ok(())
}
