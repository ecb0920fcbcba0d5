//! Storing a revision of the definitions: waves, servers and their tasks, with the
//! difference from the revision before. History is never rewritten: tasks that ran keep
//! their state and attempts; tasks of removed servers are cancelled, not deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, bail};
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use serde::Serialize;
use waves::load::Sources;
use waves::model::{Definitions, TaskKind};
use waves::plan::Plan;

use super::events::{NewEvent, insert_events};
use super::tasks::{BLOCKABLE, BLOCKED_UNLEASED};
use super::{JsonColumn, Store, json_param};
use crate::scheduler::phase::WaveCalendar;

#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Remove servers even while their tasks run: those tasks are cancelled.
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub revision: i64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    /// For each changed server, and each moved one whose settings changed too, what
    /// changed (its fields, `tasks.KIND` for a task's settings) and its cutover's state
    /// once the cutover has started (a moved server's has not).
    pub changes: BTreeMap<String, ServerChange>,
    pub moved: Vec<(String, String, String)>,
    pub removed: Vec<String>,
    pub tasks: usize,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.moved.is_empty()
            && self.removed.is_empty()
    }
}

/// Whether a server's cutover (its task's state) has begun: it then stays in its wave,
/// with its history. Not begun: no task yet, or one pending, blocked, skipped or
/// cancelled (an operator's, or a removal's).
fn cutover_began(state: Option<&str>) -> bool {
    !matches!(
        state,
        None | Some("pending" | "blocked" | "skipped" | "cancelled")
    )
}

/// The applications whose every server an apply removed (an application with no server
/// at all is not among them).
pub(crate) const REMOVED_APPLICATIONS: &str = "SELECT application FROM servers GROUP BY application \
     HAVING COUNT(removed_at) = COUNT(*)";

/// What an apply changed of a server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerChange {
    pub fields: Vec<String>,
    /// The cutover's state when it has started: what ran keeps its state, so the change
    /// reaches only the tasks still to run.
    pub cutover: Option<String>,
}

/// The fields that differ between two servers' stored specs (JSON objects): a top-level
/// key, or `tasks.KIND` for one task's settings.
fn changed_fields(old: &str, new: &str) -> Vec<String> {
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap_or_default();
    let (old, new) = (parse(old), parse(new));
    let empty = serde_json::Map::new();
    let fields = |v: &serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let (old, new) = (fields(&old), fields(&new));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        if key == "tasks" {
            let of = |v: Option<&serde_json::Value>| {
                v.and_then(serde_json::Value::as_object)
                    .unwrap_or(&empty)
                    .clone()
            };
            let (before, after) = (of(a), of(b));
            let mut kinds: Vec<&String> = before.keys().chain(after.keys()).collect();
            kinds.sort();
            kinds.dedup();
            out.extend(
                kinds
                    .into_iter()
                    .filter(|k| before.get(*k) != after.get(*k))
                    .map(|k| format!("tasks.{k}")),
            );
        } else {
            out.push(key.clone());
        }
    }
    out
}

/// The id of an application's gate task.
pub fn gate_id(application: &str) -> String {
    format!("{application}/ready")
}

struct StoredServer {
    wave: String,
    spec: String,
}

fn ms(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

impl Store {
    /// The sources of the newest revision, if any was applied.
    /// The id of the latest revision, if any.
    pub async fn current_revision(&self) -> anyhow::Result<Option<i64>> {
        let row = self
            .db()
            .query_one_raw(self.stmt("SELECT id FROM revisions ORDER BY id DESC LIMIT 1", vec![]))
            .await?;
        row.map(|r| r.try_get::<i64>("", "id"))
            .transpose()
            .map_err(Into::into)
    }

    pub async fn current_sources(&self) -> anyhow::Result<Option<(i64, Sources)>> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT id, definitions FROM revisions ORDER BY id DESC LIMIT 1",
                vec![],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get("", "id")?;
        let text: String = row.try_get("", "definitions")?;
        let sources: Sources = serde_json::from_str(&text)
            .with_context(|| format!("revision {id} in the store cannot be read"))?;
        Ok(Some((id, sources)))
    }

    /// Sets up a rehearsal (or a benchmark): applies the definitions as of their earliest
    /// build start and gives every go/no-go up front. Returns that start, where a warped
    /// clock begins.
    pub async fn prepare_rehearsal(&self, loaded: &waves::Loaded, by: &str) -> anyhow::Result<i64> {
        let definitions = &loaded.definitions;
        let plan = waves::plan::plan(definitions);
        let start = definitions
            .waves
            .iter()
            .map(|w| w.phases.build.start.timestamp().as_millisecond())
            .min()
            .unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
        self.apply(
            definitions,
            &plan,
            &loaded.sources,
            ApplyOptions::default(),
            start,
        )
        .await?;
        for wave in &definitions.waves {
            // A wave whose gates ask for no approval has nothing to approve.
            let _ = self.approve(&wave.name.value, None, by, start).await;
        }
        Ok(start)
    }

    /// Stores valid definitions and their plan as a new revision.
    pub async fn apply(
        &self,
        definitions: &Definitions,
        plan: &Plan,
        sources: &Sources,
        options: ApplyOptions,
        now: i64,
    ) -> anyhow::Result<ApplyReport> {
        let txn = self.write_transaction().await?;
        let stored = self.stored_servers(&txn).await?;
        let states = self.task_states(&txn).await?;
        let mut report = ApplyReport::default();

        let mut new_servers: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        for wave in &definitions.waves {
            for (app, server) in wave.servers() {
                let spec = serde_json::to_string(server)?;
                new_servers.insert(
                    server.name.value.clone(),
                    (wave.name.value.clone(), app.name.value.clone(), spec),
                );
            }
        }
        let mut refusals = Vec::new();
        let removed = self.removed_servers(&txn).await?;
        for (name, (wave, _, spec)) in &new_servers {
            match stored.get(name) {
                None => {
                    // A server removed after its cutover started does not come back in
                    // another wave: that would move it, and its history, after all.
                    let cutover = states.get(&format!("{name}/cutover")).map(String::as_str);
                    if let Some(before) = removed.get(name).filter(|before| *before != wave)
                        && cutover_began(cutover)
                    {
                        refusals.push(format!(
                            "server `{name}` cannot come back in wave `{wave}`: it was removed from wave `{before}` after its cutover started ({}), and its history stays there; give the new server another name",
                            cutover.unwrap_or_default()
                        ));
                    }
                    report.added.push(name.clone());
                }
                Some(old) if old.wave != *wave => {
                    let cutover = states.get(&format!("{name}/cutover")).map(String::as_str);
                    if cutover_began(cutover) {
                        refusals.push(format!(
                            "server `{name}` cannot move from wave `{}` to `{wave}`: its cutover has started ({})",
                            old.wave,
                            cutover.unwrap_or_default()
                        ));
                    }
                    report
                        .moved
                        .push((name.clone(), old.wave.clone(), wave.clone()));
                    // Moved and changed: what changed is said with the move.
                    if old.spec != *spec {
                        report.changes.insert(
                            name.clone(),
                            ServerChange {
                                fields: changed_fields(&old.spec, spec),
                                cutover: None,
                            },
                        );
                    }
                }
                Some(old) if old.spec != *spec => {
                    report.changed.push(name.clone());
                    let cutover = states.get(&format!("{name}/cutover")).filter(|state| {
                        !matches!(
                            state.as_str(),
                            "pending" | "blocked" | "skipped" | "cancelled"
                        )
                    });
                    report.changes.insert(
                        name.clone(),
                        ServerChange {
                            fields: changed_fields(&old.spec, spec),
                            cutover: cutover.cloned(),
                        },
                    );
                }
                Some(_) => {}
            }
        }
        // A server whose agent was pushed through one engine does not move to another
        // (its wave's engine changed, or it moved to a wave on another engine): its
        // replication runs there. The usual cause: the configuration left out.
        let engines = self.stored_engines(&txn).await?;
        let mut moved_engine: BTreeMap<(String, String, String), Vec<&str>> = BTreeMap::new();
        for wave in &definitions.waves {
            let engine = wave.engine.value.as_str();
            for (_, server) in wave.servers() {
                let name = server.name.value.as_str();
                let Some(before) = stored
                    .get(name)
                    .and_then(|old| engines.get(&old.wave))
                    .filter(|before| *before != engine)
                else {
                    continue;
                };
                let pushed = matches!(
                    states
                        .get(&format!("{name}/agent_push"))
                        .map(String::as_str),
                    Some("running" | "succeeded")
                );
                if pushed {
                    moved_engine
                        .entry((wave.name.value.clone(), before.clone(), engine.to_owned()))
                        .or_default()
                        .push(name);
                }
            }
        }
        for ((wave, before, engine), servers) in moved_engine {
            refusals.push(format!(
                "wave `{wave}` would move {} from engine `{before}` to `{engine}`: their \
                 agent_push has started on `{before}`, where their replication runs (was the \
                 configuration that names `{before}` left out? apply it with the waves, or give \
                 --config)",
                servers.join(", ")
            ));
        }
        for name in stored.keys() {
            if new_servers.contains_key(name) {
                continue;
            }
            report.removed.push(name.clone());
            let running: Vec<String> = TaskKind::ALL
                .iter()
                .map(|k| format!("{name}/{k}"))
                .filter(|id| {
                    matches!(
                        states.get(id).map(String::as_str),
                        Some("running") | Some("awaiting_approval")
                    )
                })
                .collect();
            let cutover = format!("{name}/cutover");
            if running.contains(&cutover) && states.get(&cutover).is_some_and(|s| s == "running") {
                // Not even with --force: a cutover is not abandoned halfway (steer.rs).
                refusals.push(format!(
                    "server `{name}` cannot be removed while its cutover runs, not even with \
                     --force: it may have shut the source down or launched its target, which \
                     only the task rolls back; apply again once it has ended"
                ));
            } else if !running.is_empty() && !options.force {
                refusals.push(format!(
                    "server `{name}` cannot be removed while {} runs: wait, cancel it, or apply with --force (which cancels it)",
                    running.join(", ")
                ));
            }
        }
        if !refusals.is_empty() {
            bail!(
                "the definitions were not applied:\n  {}",
                refusals.join("\n  ")
            );
        }

        self.upsert_waves(&txn, definitions).await?;
        let revision = self.insert_revision(&txn, sources, &report, now).await?;
        report.revision = revision;
        self.upsert_servers(&txn, &new_servers, &report.removed, revision, now)
            .await?;
        report.tasks = self.upsert_tasks(&txn, definitions, plan, now).await?;
        self.replace_dependencies(&txn, plan).await?;
        self.recount_dependencies(&txn, now).await?;
        // Each wave's event counts its own servers: added to it, changed in it, moved
        // in or out of it, removed from it.
        let wave_of = |name: &String| -> Option<&str> {
            new_servers
                .get(name)
                .map(|(wave, _, _)| wave.as_str())
                .or_else(|| stored.get(name).map(|s| s.wave.as_str()))
        };
        let events: Vec<NewEvent> = definitions
            .waves
            .iter()
            .map(|w| {
                let here = w.name.value.as_str();
                let count = |names: &[String]| {
                    names
                        .iter()
                        .filter(|n| wave_of(n) == Some(here))
                        .count()
                };
                let moved = report
                    .moved
                    .iter()
                    .filter(|(_, from, to)| from == here || to == here)
                    .count();
                NewEvent {
                    at: now,
                    wave: here.to_owned(),
                    server: None,
                    task_id: None,
                    kind: "operator.apply".to_owned(),
                    message: format!(
                        "revision {revision}: in this wave {} added, {} changed, {moved} moved, {} removed",
                        count(&report.added),
                        count(&report.changed),
                        count(&report.removed)
                    ),
                    data: None,
                }
            })
            .collect();
        insert_events(self, &txn, &events).await?;
        txn.commit().await.context("cannot commit the revision")?;
        Ok(report)
    }

    async fn stored_servers(
        &self,
        txn: &DatabaseTransaction,
    ) -> anyhow::Result<BTreeMap<String, StoredServer>> {
        let rows = txn
            .query_all_raw(self.stmt(
                "SELECT name, wave, spec FROM servers WHERE removed_at IS NULL",
                vec![],
            ))
            .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            out.insert(
                row.try_get::<String>("", "name")?,
                StoredServer {
                    wave: row.try_get("", "wave")?,
                    spec: row.try_get("", "spec")?,
                },
            );
        }
        Ok(out)
    }

    /// The servers an earlier apply removed, with the wave they were in.
    async fn removed_servers(
        &self,
        conn: &impl ConnectionTrait,
    ) -> anyhow::Result<HashMap<String, String>> {
        self.text_pairs(
            conn,
            "SELECT name AS k, wave AS v FROM servers WHERE removed_at IS NOT NULL",
        )
        .await
    }

    /// The applications all of whose servers an apply removed: their gates are history.
    pub async fn removed_application_names(&self) -> anyhow::Result<BTreeSet<String>> {
        let rows = self
            .db
            .query_all_raw(self.stmt(REMOVED_APPLICATIONS, vec![]))
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String>("", "application")?))
            .collect()
    }

    /// The tasks of `wave` still in force: those of servers an apply removed, and the
    /// gates of applications whose every server it removed, are history, left out (as
    /// the wave's counts leave them out), so reports agree with `status`.
    pub async fn tasks_in_force(&self, wave: &str) -> anyhow::Result<Vec<super::TaskRow>> {
        let servers = self.removed_server_names().await?;
        let applications = self.removed_application_names().await?;
        let mut tasks = self.tasks(Some(wave)).await?;
        tasks.retain(|t| match &t.server {
            Some(server) => !servers.contains(server),
            None => !applications.contains(&t.application),
        });
        Ok(tasks)
    }

    /// The names of the servers an apply removed (their tasks and history are kept).
    pub async fn removed_server_names(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self.removed_servers(&self.db).await?.into_keys().collect())
    }

    /// The names of the waves stored (by an earlier apply).
    pub async fn stored_wave_names(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        Ok(self.stored_engines(&self.db).await?.into_keys().collect())
    }

    /// Each stored wave's engine, by wave name.
    async fn stored_engines(
        &self,
        conn: &impl ConnectionTrait,
    ) -> anyhow::Result<HashMap<String, String>> {
        self.text_pairs(conn, "SELECT name AS k, engine AS v FROM waves")
            .await
    }

    async fn task_states(
        &self,
        txn: &DatabaseTransaction,
    ) -> anyhow::Result<HashMap<String, String>> {
        self.text_pairs(txn, "SELECT id AS k, state AS v FROM tasks")
            .await
    }

    /// The rows of `sql`, a `SELECT ... AS k, ... AS v` of two text columns, as a map.
    async fn text_pairs(
        &self,
        conn: &impl ConnectionTrait,
        sql: &str,
    ) -> anyhow::Result<HashMap<String, String>> {
        let rows = conn.query_all_raw(self.stmt(sql, vec![])).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            out.insert(row.try_get("", "k")?, row.try_get("", "v")?);
        }
        Ok(out)
    }

    async fn insert_revision(
        &self,
        txn: &DatabaseTransaction,
        sources: &Sources,
        report: &ApplyReport,
        now: i64,
    ) -> anyhow::Result<i64> {
        let row = txn
            .query_one_raw(self.stmt(
                "SELECT COALESCE(MAX(id), 0) + 1 AS next FROM revisions",
                vec![],
            ))
            .await?;
        let id: i64 = match row {
            Some(row) => row.try_get("", "next")?,
            None => 1,
        };
        txn.execute_raw(self.stmt(
            "INSERT INTO revisions (id, created_at, summary, definitions) VALUES (?, ?, ?, ?)",
            vec![
                id.into(),
                now.into(),
                serde_json::to_string(report)?.into(),
                serde_json::to_string(sources)?.into(),
            ],
        ))
        .await?;
        Ok(id)
    }

    /// Who gave the go of each application's gate that has one, by application.
    pub async fn gate_goes(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT application, approved_by FROM tasks \
                 WHERE kind = 'gate' AND approved_by IS NOT NULL",
                vec![],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "application")?, r.try_get("", "approved_by")?)))
            .collect()
    }

    /// Whether a wave of this name was ever stored (a removed wave keeps its history).
    pub async fn wave_known(&self, name: &str) -> anyhow::Result<bool> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT 1 AS known FROM waves WHERE name = ?",
                vec![name.into()],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// The calendars of the waves the definitions have, by name.
    pub async fn wave_calendars(&self) -> anyhow::Result<Vec<WaveCalendar>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT name, engine, timezone, build_start, validate_start, cutover_start, window_start, \
                 window_end, cutover_end FROM waves WHERE removed_at IS NULL ORDER BY name",
                vec![],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WaveCalendar {
                    name: r.try_get("", "name")?,
                    engine: r.try_get("", "engine")?,
                    timezone: r.try_get("", "timezone")?,
                    build_start: r.try_get("", "build_start")?,
                    validate_start: r.try_get("", "validate_start")?,
                    cutover_start: r.try_get("", "cutover_start")?,
                    window_start: r.try_get("", "window_start")?,
                    window_end: r.try_get("", "window_end")?,
                    cutover_end: r.try_get("", "cutover_end")?,
                })
            })
            .collect()
    }

    /// The owner of each application of a wave, from the stored definitions.
    pub async fn application_owners(&self, wave: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT spec FROM waves WHERE name = ? AND removed_at IS NULL",
                vec![wave.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(BTreeMap::new());
        };
        let spec: serde_json::Value = serde_json::from_str(&row.try_get::<String>("", "spec")?)
            .context("the stored wave cannot be read")?;
        Ok(spec["applications"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["name"].as_str()?.to_owned(),
                    a["owner"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }

    async fn upsert_waves(
        &self,
        txn: &DatabaseTransaction,
        definitions: &Definitions,
    ) -> anyhow::Result<()> {
        for wave in &definitions.waves {
            let sql = "INSERT INTO waves (name, revision, engine, timezone, build_start, validate_start, \
                       cutover_start, window_start, window_end, cutover_end, spec, removed_at) \
                       VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) \
                       ON CONFLICT (name) DO UPDATE SET engine = excluded.engine, timezone = excluded.timezone, \
                       build_start = excluded.build_start, validate_start = excluded.validate_start, \
                       cutover_start = excluded.cutover_start, window_start = excluded.window_start, \
                       window_end = excluded.window_end, cutover_end = excluded.cutover_end, \
                       spec = excluded.spec, removed_at = NULL";
            let spec = serde_json::json!({
                "description": wave.description,
                "notify": wave.notify,
                "applications": wave.applications.iter().map(|a| serde_json::json!({
                    "name": a.name.value,
                    "owner": a.owner,
                    "depends_on": a.depends_on.iter().map(|d| d.value.clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            txn.execute_raw(self.stmt(
                sql,
                vec![
                    wave.name.value.clone().into(),
                    wave.engine.value.as_str().into(),
                    wave.window.timezone.clone().into(),
                    ms(wave.phases.build.start.timestamp()).into(),
                    ms(wave.phases.validate.start.timestamp()).into(),
                    ms(wave.phases.cutover.start.timestamp()).into(),
                    ms(wave.window.interval.start.timestamp()).into(),
                    ms(wave.window.interval.end.timestamp()).into(),
                    ms(wave.phases.cutover.end.timestamp()).into(),
                    spec.to_string().into(),
                ],
            ))
            .await?;
        }
        Ok(())
    }

    async fn upsert_servers(
        &self,
        txn: &DatabaseTransaction,
        servers: &BTreeMap<String, (String, String, String)>,
        removed: &[String],
        revision: i64,
        now: i64,
    ) -> anyhow::Result<()> {
        // One statement for all the servers (rows as one JSON parameter); `WHERE true`
        // tells SQLite's parser that ON CONFLICT is not a join constraint.
        let rows = self.json_rows(&[
            ("name", JsonColumn::Text),
            ("wave", JsonColumn::Text),
            ("application", JsonColumn::Text),
            ("spec", JsonColumn::Text),
        ]);
        let sql = format!(
            "INSERT INTO servers (name, wave, application, revision, spec, removed_at) \
             SELECT r.name, r.wave, r.application, ?, r.spec, NULL FROM {rows} AS r WHERE true \
             ON CONFLICT (name) DO UPDATE SET wave = excluded.wave, application = excluded.application, \
             revision = excluded.revision, spec = excluded.spec, removed_at = NULL"
        );
        let wire: Vec<_> = servers
            .iter()
            .map(|(name, (wave, app, spec))| (name, wave, app, spec))
            .collect();
        if !wire.is_empty() {
            txn.execute_raw(self.stmt(&sql, vec![revision.into(), json_param(&wire)?]))
                .await?;
        }
        if !removed.is_empty() {
            let sql = format!(
                "UPDATE servers SET removed_at = ? WHERE name IN {}",
                self.json_strings()
            );
            txn.execute_raw(self.stmt(&sql, vec![now.into(), json_param(&removed)?]))
                .await?;
        }
        Ok(())
    }

    /// Inserts new tasks, updates the times of those not started, cancels those the
    /// definitions no longer have. Returns the number of tasks in the plan.
    async fn upsert_tasks(
        &self,
        txn: &DatabaseTransaction,
        definitions: &Definitions,
        plan: &Plan,
        now: i64,
    ) -> anyhow::Result<usize> {
        let validate_start: HashMap<&str, i64> = definitions
            .waves
            .iter()
            .map(|w| {
                (
                    w.name.value.as_str(),
                    ms(w.phases.validate.start.timestamp()),
                )
            })
            .collect();
        let window_end: HashMap<&str, i64> = definitions
            .waves
            .iter()
            .map(|w| (w.name.value.as_str(), ms(w.window.interval.end.timestamp())))
            .collect();
        // (id, wave, application, server, kind, earliest, deadline, approval, skipped)
        type Row = (
            String,
            String,
            String,
            Option<String>,
            String,
            i64,
            Option<i64>,
            bool,
            bool,
        );
        let mut rows: Vec<Row> = Vec::with_capacity(plan.tasks.len() + plan.gates.len());
        for task in &plan.tasks {
            rows.push((
                task.id.clone(),
                task.wave.to_string(),
                task.application.to_string(),
                Some(task.server.to_string()),
                task.kind.as_str().to_owned(),
                ms(task.earliest),
                task.deadline.map(ms),
                false,
                task.skipped,
            ));
        }
        for gate in &plan.gates {
            let wave = gate.wave.as_ref();
            rows.push((
                gate.id.clone(),
                wave.to_owned(),
                gate.application.to_string(),
                None,
                "gate".to_owned(),
                validate_start.get(wave).copied().unwrap_or(now),
                window_end.get(wave).copied(),
                gate.approval,
                false,
            ));
        }
        let columns = self.json_rows(&[
            ("id", JsonColumn::Text),
            ("wave", JsonColumn::Text),
            ("application", JsonColumn::Text),
            ("server", JsonColumn::Text),
            ("kind", JsonColumn::Text),
            ("earliest", JsonColumn::Int),
            ("deadline", JsonColumn::Int),
            ("approval", JsonColumn::Bool),
            ("skipped", JsonColumn::Bool),
        ]);
        // One statement for the whole plan; `WHERE true` tells SQLite's parser that ON
        // CONFLICT is not a join constraint.
        let insert = format!(
            "INSERT INTO tasks (id, wave, application, server, kind, state, attempts, earliest, deadline, \
             next_run_at, pending_deps, approval_required, updated_at) \
             SELECT r.id, r.wave, r.application, r.server, r.kind, \
             CASE WHEN r.skipped THEN 'skipped' ELSE 'pending' END, 0, r.earliest, r.deadline, \
             r.earliest, 0, r.approval, ? FROM {columns} AS r WHERE true \
             ON CONFLICT (id) DO UPDATE SET wave = excluded.wave, application = excluded.application, \
             earliest = excluded.earliest, deadline = excluded.deadline, \
             approval_required = excluded.approval_required, updated_at = excluded.updated_at, \
             next_run_at = CASE WHEN tasks.state = 'pending' THEN excluded.next_run_at ELSE tasks.next_run_at END, \
             state = CASE \
               WHEN tasks.state = 'pending' AND excluded.state = 'skipped' THEN 'skipped' \
               WHEN tasks.state = 'awaiting_approval' AND NOT excluded.approval_required THEN 'pending' \
               WHEN tasks.state = 'skipped' AND excluded.state = 'pending' AND tasks.attempts = 0 \
                 AND tasks.reason IS NULL THEN 'pending' \
               WHEN tasks.state = 'cancelled' AND tasks.attempts = 0 \
                 AND tasks.reason = 'cancelled: removed from the definitions' THEN excluded.state \
               ELSE tasks.state END, \
             reason = CASE WHEN tasks.state = 'cancelled' AND tasks.attempts = 0 \
               AND tasks.reason = 'cancelled: removed from the definitions' THEN NULL ELSE tasks.reason END, \
             finished_at = CASE WHEN tasks.state = 'cancelled' AND tasks.attempts = 0 \
               AND tasks.reason = 'cancelled: removed from the definitions' THEN NULL ELSE tasks.finished_at END"
        );
        if !rows.is_empty() {
            txn.execute_raw(self.stmt(&insert, vec![now.into(), json_param(&rows)?]))
                .await?;
        }
        let planned: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let gone: Vec<String> = self
            .task_states(txn)
            .await?
            .into_iter()
            .filter(|(id, state)| {
                !planned.contains(id.as_str())
                    && matches!(
                        state.as_str(),
                        "pending" | "running" | "awaiting_approval" | "blocked"
                    )
            })
            .map(|(id, _)| id)
            .collect();
        if !gone.is_empty() {
            let sql = format!(
                "UPDATE tasks SET state = 'cancelled', reason = ?, lease_owner = NULL, \
                 lease_expires_at = NULL, updated_at = ? WHERE id IN {}",
                self.json_strings()
            );
            let values = vec![
                "cancelled: removed from the definitions".into(),
                now.into(),
                json_param(&gone)?,
            ];
            txn.execute_raw(self.stmt(&sql, values)).await?;
        }
        Ok(rows.len())
    }

    /// Dependencies are structural: they are written anew from the plan every time. To
    /// the plan's edges the store adds one the plan implies: a cutover waits for its
    /// server's agent_push too, so that a reinstall of the agent (a retry of the
    /// succeeded agent_push) holds a cutover that has not begun until the agent is back,
    /// and blocks it if the reinstall fails for good: the cutover's final sync is that
    /// agent's.
    async fn replace_dependencies(
        &self,
        txn: &DatabaseTransaction,
        plan: &Plan,
    ) -> anyhow::Result<()> {
        txn.execute_raw(self.stmt("DELETE FROM task_dependencies", vec![]))
            .await?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        let agent_pushes: HashMap<&str, &str> = plan
            .tasks
            .iter()
            .filter(|t| t.kind == TaskKind::AgentPush)
            .map(|t| (&*t.server, t.id.as_str()))
            .collect();
        for task in &plan.tasks {
            for dep in &task.depends_on {
                pairs.push((task.id.clone(), plan.tasks[*dep as usize].id.clone()));
            }
            if task.kind == TaskKind::Cutover
                && let Some(agent_push) = agent_pushes.get(&*task.server)
            {
                pairs.push((task.id.clone(), (*agent_push).to_owned()));
            }
            for gate in &task.gates {
                pairs.push((task.id.clone(), plan.gates[*gate as usize].id.clone()));
            }
        }
        for gate in &plan.gates {
            for waits in &gate.waits_for {
                pairs.push((gate.id.clone(), plan.tasks[*waits as usize].id.clone()));
            }
        }
        pairs.sort();
        pairs.dedup();
        if !pairs.is_empty() {
            let rows = self.json_rows(&[
                ("task_id", JsonColumn::Text),
                ("depends_on", JsonColumn::Text),
            ]);
            let sql = format!(
                "INSERT INTO task_dependencies (task_id, depends_on) \
                 SELECT r.task_id, r.depends_on FROM {rows} AS r"
            );
            txn.execute_raw(self.stmt(&sql, vec![json_param(&pairs)?]))
                .await?;
        }
        Ok(())
    }

    /// Counts the unfinished dependencies of every task, and blocks the tasks that wait
    /// on one that failed.
    pub(crate) async fn recount_dependencies(
        &self,
        txn: &DatabaseTransaction,
        now: i64,
    ) -> anyhow::Result<()> {
        // Freshly written rows have no statistics yet: without them PostgreSQL plans the
        // counts below as nested scans, quadratic in the number of tasks.
        if self.is_postgres() {
            for table in ["tasks", "task_dependencies"] {
                txn.execute_unprepared(&format!("ANALYZE {table}")).await?;
            }
        }
        // Set-based: every count in one grouped pass, joined on the key.
        txn.execute_raw(self.stmt("UPDATE tasks SET pending_deps = 0", vec![]))
            .await?;
        txn.execute_raw(self.stmt(
            "UPDATE tasks SET pending_deps = c.n FROM (SELECT d.task_id, COUNT(*) AS n \
             FROM task_dependencies d JOIN tasks t ON t.id = d.depends_on \
             WHERE t.state NOT IN ('succeeded', 'skipped') AND t.released_at IS NULL \
             GROUP BY d.task_id) AS c \
             WHERE tasks.id = c.task_id",
            vec![],
        ))
        .await?;
        // What was blocked only by tasks the definitions no longer hold (a failed server
        // removed) waits again; one level per pass, as below.
        for _ in 0..64 {
            let freed = txn
                .execute_raw(self.stmt(
                    "UPDATE tasks SET state = 'pending', reason = NULL, updated_at = ? \
                     WHERE state = 'blocked' AND id NOT IN (SELECT d.task_id \
                     FROM task_dependencies d JOIN tasks t ON t.id = d.depends_on \
                     WHERE t.state IN ('failed', 'cancelled', 'blocked'))",
                    vec![now.into()],
                ))
                .await?;
            if freed.rows_affected() == 0 {
                break;
            }
        }
        // One level per pass; chains are short (six tasks and a gate per server, plus
        // application dependencies), and the bound keeps a bad graph from looping.
        for _ in 0..64 {
            let sql = format!(
                "UPDATE tasks SET state = 'blocked', reason = 'blocked: a task it depends on did not succeed', \
                 updated_at = ?, {BLOCKED_UNLEASED} WHERE {BLOCKABLE} AND id IN (SELECT d.task_id \
                 FROM task_dependencies d JOIN tasks t ON t.id = d.depends_on \
                 WHERE t.state IN ('failed', 'cancelled', 'blocked'))"
            );
            let blocked = txn.execute_raw(self.stmt(&sql, vec![now.into()])).await?;
            if blocked.rows_affected() == 0 {
                break;
            }
        }
        Ok(())
    }
}
