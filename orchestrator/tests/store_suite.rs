//! One test suite for the store, written once and run against every backend it
//! supports: SQLite (a file in a temporary folder) and PostgreSQL at 127.0.0.1:5432
//! (user `postgres`, trust authentication; a fresh database per test, dropped at the
//! end). `store_suite!` expands each case into a `sqlite::CASE` and a `postgres::CASE`
//! test, as quickwit's `metastore_test_suite!` does.
//!
//! PostgreSQL is required: when it cannot be reached, the `postgres::` tests fail and
//! say so. They are never skipped. `WAVELIFT_TEST_POSTGRES` overrides the URL of the
//! administrative connection (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! The definitions are small waves written inline as YAML and loaded through the real
//! loader, on the `sim` engine with `local` access. Store times are milliseconds, taken
//! from the waves' phases so that due times are meaningful.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use orchestrator::store::{
    ApplyOptions, ApplyReport, AttemptRecord, Completion, Limit, NewEvent, NewReport, RefusalKind,
    Refused, Store, TaskRow,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, Value,
};
use waves::plan::Plan;
use waves::source::SourceFile;

// ---------------------------------------------------------------------------------------
// The suite: every case below runs on both backends.

macro_rules! store_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_sqlite(super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_postgres(super::$case).await;
                }
            )+
        }
    };
}

store_suite!(
    schema_is_applied_at_open_and_opening_twice_is_fine,
    apply_stores_a_revision_with_six_tasks_per_server_and_a_gate_per_application,
    a_second_apply_of_the_same_definitions_changes_nothing,
    a_second_apply_keeps_what_operators_skipped_or_cancelled,
    apply_reports_servers_added_changed_moved_and_removed,
    removing_a_server_with_a_running_task_is_refused_unless_forced,
    moving_a_server_whose_cutover_started_is_refused,
    a_wave_whose_agents_were_pushed_keeps_its_engine,
    claim_respects_dependencies_due_times_and_leases,
    concurrent_claims_never_hand_one_task_to_two_owners,
    claim_takes_at_most_its_limit_in_all_and_per_wave,
    a_wave_at_its_limit_leaves_the_rest_of_the_batch_to_other_waves,
    complete_and_claim_records_outcomes_and_claims_what_they_released,
    complete_with_the_wrong_owner_writes_nothing,
    success_releases_dependants_and_waiting_or_retrying_keep_the_task,
    a_ready_check_releases_its_dependants_once_and_runs_on,
    failure_blocks_everything_downstream_transitively_with_a_reason,
    retry_unblocks_what_the_failure_blocked,
    a_succeeded_agent_push_is_retried_to_install_its_agent_again,
    a_reinstall_holds_the_cutover_and_failing_blocks_the_watch,
    a_store_from_before_gets_the_cutovers_wait_for_the_agent_at_open,
    a_store_from_before_with_a_failed_reinstall_is_blocked_at_open,
    skip_counts_as_success_for_dependants,
    cancel_blocks_dependants_and_drops_the_workers_completion,
    approve_opens_a_gate_that_awaits_approval,
    a_gate_that_no_longer_asks_for_a_go_waits_no_more,
    unknown_waves_and_applications_are_named_with_what_there_is,
    a_running_cutover_is_neither_skipped_nor_cancelled,
    events_are_appended_in_order_and_filtered_by_wave,
    next_due_and_unfinished_count_follow_the_tasks,
    claim_at_next_due_finds_the_task_whose_lease_expired,
    a_report_is_recorded_once_per_event_and_delivered_under_a_lease,
    a_no_go_withdraws_the_go_until_the_gate_opens,
    a_go_given_to_a_blocked_gate_can_be_withdrawn,
    a_cutover_retried_after_its_report_is_reported_again,
    a_cutover_still_running_at_the_window_end_is_reported_again_when_it_ends,
    a_wave_that_fails_on_its_first_day_gets_a_digest_and_a_no_go,
    a_wave_whose_cutovers_are_all_skipped_gets_no_readiness_report,
    removing_a_failed_server_releases_what_it_blocked,
);

// ---------------------------------------------------------------------------------------
// Backends.

static DATABASES: AtomicUsize = AtomicUsize::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a case on its own task, so that the database is cleaned up whether it passes,
/// fails or panics; then reports the outcome.
async fn run_case<F, Fut>(
    harness: Harness,
    case: F,
) -> Result<anyhow::Result<()>, tokio::task::JoinError>
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(case(harness)).await
}

fn report(outcome: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("{err:?}"),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("the case did not finish: {err}"),
    }
}

async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let folder = std::env::temp_dir().join(unique_name("wavelift-store-suite"));
    // The folder does not exist yet: the store creates it, as it does for a user.
    let url = format!("sqlite://{}", folder.join("state.db").display());
    let harness = match Harness::open(url).await {
        Ok(harness) => harness,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&folder);
            panic!(
                "cannot open a SQLite store in {}: {err:?}",
                folder.display()
            );
        }
    };
    let outcome = run_case(harness, case).await;
    let _ = std::fs::remove_dir_all(&folder);
    report(outcome);
}

fn postgres_admin_url() -> String {
    std::env::var("WAVELIFT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let admin_url = postgres_admin_url();
    let mut options = ConnectOptions::new(admin_url.clone());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(1)
        .sqlx_logging(false);
    let admin = match Database::connect(options).await {
        Ok(admin) => admin,
        Err(err) => panic!(
            "PostgreSQL is not reachable at {admin_url} ({err}): the store suite needs it \
             (user postgres, trust authentication on 127.0.0.1:5432, or set \
             WAVELIFT_TEST_POSTGRES); these tests fail rather than skip"
        ),
    };
    let name = unique_name("wavelift_test");
    if let Err(err) = admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
    {
        panic!("cannot create the test database {name} on {admin_url}: {err}");
    }
    let url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("WAVELIFT_TEST_POSTGRES must end with /DATABASE: {admin_url}"),
    };
    let outcome = match Harness::open(url).await {
        Ok(harness) => run_case(harness, case).await,
        Err(err) => Ok(Err(
            err.context(format!("cannot open a PostgreSQL store in {name}"))
        )),
    };
    let dropped = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    report(outcome);
    if let Err(err) = dropped {
        panic!("cannot drop the test database {name}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Definitions written inline.

#[derive(Clone)]
struct Srv {
    name: &'static str,
    disk_gib: u32,
    skip: &'static [&'static str],
}

fn srv(name: &'static str) -> Srv {
    Srv {
        name,
        disk_gib: 20,
        skip: &[],
    }
}

#[derive(Clone)]
struct App {
    name: &'static str,
    depends_on: &'static [&'static str],
    approval: bool,
    servers: Vec<Srv>,
}

fn app(name: &'static str, servers: Vec<Srv>) -> App {
    App {
        name,
        depends_on: &[],
        approval: true,
        servers,
    }
}

#[derive(Clone)]
struct WaveDef {
    name: &'static str,
    /// The window starts this day at 22:00, Europe/Rome, and lasts 8 hours.
    date: &'static str,
    apps: Vec<App>,
}

const WAVE_A: &str = "wave-a";
const WAVE_B: &str = "wave-b";

fn wave_a(apps: Vec<App>) -> WaveDef {
    WaveDef {
        name: WAVE_A,
        date: "2027-03-06",
        apps,
    }
}

fn wave_b(apps: Vec<App>) -> WaveDef {
    WaveDef {
        name: WAVE_B,
        date: "2027-03-13",
        apps,
    }
}

fn render(wave: &WaveDef) -> String {
    let mut text = format!(
        "version: 1
name: {}
engine: sim
window:
  start: {} 22:00
  duration: 8h
  timezone: Europe/Rome
phases:
  build: 7d
  validate: 7d
  cutover: 1d
notify: [factory@example.com]
defaults:
  os: {{ family: linux, version: Debian 12 }}
  access: {{ method: local }}
  change_rate: 1%/day
  tasks:
    cutover: {{ expected_duration: 30m }}
    cmdb_cleanup: {{ hypercare: 1d }}
applications:
",
        wave.name, wave.date
    );
    for app in &wave.apps {
        text.push_str(&format!("  - name: {}\n", app.name));
        if !app.depends_on.is_empty() {
            text.push_str(&format!(
                "    depends_on: [{}]\n",
                app.depends_on.join(", ")
            ));
        }
        text.push_str(&format!(
            "    defaults:\n      tasks:\n        cutover: {{ approval: {} }}\n    servers:\n",
            app.approval
        ));
        for server in &app.servers {
            text.push_str(&format!(
                "      - name: {}\n        disks: [{{ device: disks/{}.img, size: {}GiB, used: {}GiB, boot: true }}]\n",
                server.name,
                server.name,
                server.disk_gib,
                server.disk_gib / 2
            ));
            if !server.skip.is_empty() {
                text.push_str(&format!("        skip: [{}]\n", server.skip.join(", ")));
            }
        }
    }
    text
}

/// Definitions as loaded (they must be valid) and their plan.
struct Defs {
    loaded: waves::Loaded,
    plan: Plan,
}

fn load(waves: &[WaveDef]) -> Defs {
    load_on(waves, "sim")
}

/// [`load`], the waves on `engine`.
fn load_on(waves: &[WaveDef], engine: &str) -> Defs {
    let engines: Vec<&str> = waves.iter().map(|_| engine).collect();
    load_each_on(waves, &engines)
}

/// [`load`], each wave on its engine.
fn load_each_on(waves: &[WaveDef], engines: &[&str]) -> Defs {
    let sources: Vec<SourceFile> = waves
        .iter()
        .zip(engines)
        .map(|(w, engine)| SourceFile {
            name: Arc::from(format!("{}.yaml", w.name).as_str()),
            text: render(w).replace("engine: sim\n", &format!("engine: {engine}\n")),
        })
        .collect();
    let loaded = waves::load_sources(None, PathBuf::new(), &sources);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == waves::Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "the test definitions must be valid: {errors:#?}"
    );
    let plan = waves::plan::plan(&loaded.definitions);
    Defs { loaded, plan }
}

/// Times of a wave, in store milliseconds.
#[derive(Debug, Clone, Copy)]
struct Times {
    build: i64,
    validate: i64,
    validate_end: i64,
    window_start: i64,
    window_end: i64,
}

impl Defs {
    fn times(&self, wave: &str) -> Times {
        let wave = self
            .loaded
            .definitions
            .waves
            .iter()
            .find(|w| w.name.value == wave)
            .unwrap_or_else(|| panic!("no wave {wave} in the test definitions"));
        let ms = |z: &jiff::Zoned| z.timestamp().as_millisecond();
        Times {
            build: ms(&wave.phases.build.start),
            validate: ms(&wave.phases.validate.start),
            validate_end: ms(&wave.phases.validate.end),
            window_start: ms(&wave.window.interval.start),
            window_end: ms(&wave.window.interval.end),
        }
    }
}

/// The web application (two servers, cutover with approval) and the db application
/// that depends on it (one server, no approval), in wave-a.
fn web_and_db() -> Vec<WaveDef> {
    vec![wave_a(vec![
        app("web", vec![srv("web-1"), srv("web-2")]),
        App {
            depends_on: &["web"],
            approval: false,
            ..app("db", vec![srv("db-1")])
        },
    ])]
}

// ---------------------------------------------------------------------------------------
// The harness: the store under test, and a connection of our own to the same database
// for what the store's API does not show (dependency counts, leases, attempts).

const LEASE: i64 = 60_000;

/// At most `n` tasks, of any wave.
fn limit(n: u32) -> Limit {
    Limit {
        total: n,
        per_wave: n,
    }
}
const DRIVER: &str = "driver";
/// The step of a replication check that watches on after it released its dependants.
const WATCHING: &str = "{\"task\":{\"watching\":true}}";
const DAY: i64 = 24 * 3600 * 1000;

struct Harness {
    store: Store,
    url: String,
    raw: DatabaseConnection,
}

fn numbered(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The record of `task`'s next attempt, as the executor writes it.
fn attempt_record(task: &TaskRow, at: i64, outcome: &str, error: Option<&str>) -> AttemptRecord {
    AttemptRecord {
        number: task.attempts + 1,
        started_at: at,
        finished_at: at,
        outcome: outcome.to_owned(),
        checks: "[]".to_owned(),
        output: format!("{outcome} in the store suite"),
        error: error.map(str::to_owned),
    }
}

fn event_of(task: &TaskRow, at: i64, kind: &str) -> NewEvent {
    NewEvent {
        at,
        wave: task.wave.clone(),
        server: task.server.clone(),
        task_id: Some(task.id.clone()),
        kind: kind.to_owned(),
        message: format!("{} {kind}", task.id),
        data: None,
    }
}

fn succeeded(task: &TaskRow, at: i64) -> Completion {
    Completion::Succeeded {
        id: task.id.clone(),
        attempt: attempt_record(task, at, "succeeded", None),
        events: vec![event_of(task, at, "task.succeeded")],
    }
}

fn failed(task: &TaskRow, at: i64, reason: &str) -> Completion {
    failed_with_step(task, at, reason, None)
}

fn failed_with_step(task: &TaskRow, at: i64, reason: &str, step: Option<String>) -> Completion {
    Completion::Failed {
        id: task.id.clone(),
        step,
        reason: reason.to_owned(),
        attempt: Some(attempt_record(task, at, "failed", Some(reason))),
        events: vec![event_of(task, at, "task.failed")],
    }
}

impl Harness {
    /// The reports' scheduler over this store, for these definitions.
    fn reporter(&self, defs: &Defs) -> anyhow::Result<orchestrator::report::schedule::Reporter> {
        orchestrator::report::schedule::Reporter::new(
            self.store.clone(),
            Arc::new(defs.loaded.definitions.clone()),
        )
    }

    /// The subjects of the wave's reports of one kind, newest first.
    async fn report_subjects(&self, wave: &str, kind: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .store
            .reports(Some(wave))
            .await?
            .into_iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.subject)
            .collect())
    }

    async fn open(url: String) -> anyhow::Result<Harness> {
        let store = Store::open(&url).await?;
        let raw = Database::connect(url.as_str())
            .await
            .with_context(|| format!("cannot open a second connection to {url}"))?;
        Ok(Harness { store, url, raw })
    }

    fn backend(&self) -> DbBackend {
        self.raw.get_database_backend()
    }

    async fn apply(&self, defs: &Defs, force: bool, now: i64) -> anyhow::Result<ApplyReport> {
        self.store
            .apply(
                &defs.loaded.definitions,
                &defs.plan,
                &defs.loaded.sources,
                ApplyOptions { force },
                now,
            )
            .await
    }

    async fn query(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
        let backend = self.backend();
        Ok(self
            .raw
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                numbered(backend, sql),
                values,
            ))
            .await?)
    }

    async fn rows(&self) -> anyhow::Result<BTreeMap<String, TaskRow>> {
        Ok(self
            .store
            .tasks(None)
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect())
    }

    async fn task(&self, id: &str) -> anyhow::Result<TaskRow> {
        self.rows()
            .await?
            .remove(id)
            .with_context(|| format!("no task {id} in the store"))
    }

    async fn state(&self, id: &str) -> anyhow::Result<String> {
        Ok(self.task(id).await?.state)
    }

    /// Ids of the tasks in this state.
    async fn in_state(&self, state: &str) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .rows()
            .await?
            .into_values()
            .filter(|t| t.state == state)
            .map(|t| t.id)
            .collect())
    }

    async fn pending_deps(&self, id: &str) -> anyhow::Result<i32> {
        let rows = self
            .query(
                "SELECT pending_deps FROM tasks WHERE id = ?",
                vec![id.into()],
            )
            .await?;
        let row = rows.first().with_context(|| format!("no task {id}"))?;
        Ok(row.try_get::<i32>("", "pending_deps")?)
    }

    async fn lease_owner(&self, id: &str) -> anyhow::Result<Option<String>> {
        let rows = self
            .query(
                "SELECT lease_owner FROM tasks WHERE id = ?",
                vec![id.into()],
            )
            .await?;
        let row = rows.first().with_context(|| format!("no task {id}"))?;
        Ok(row.try_get::<Option<String>>("", "lease_owner")?)
    }

    /// (number, outcome) of the attempts of a task, in order.
    async fn attempts(&self, id: &str) -> anyhow::Result<Vec<(i32, String)>> {
        let rows = self
            .query(
                "SELECT number, outcome FROM attempts WHERE task_id = ? ORDER BY id",
                vec![id.into()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "number")?, r.try_get("", "outcome")?)))
            .collect()
    }

    async fn dependencies(&self) -> anyhow::Result<BTreeSet<(String, String)>> {
        let rows = self
            .query("SELECT task_id, depends_on FROM task_dependencies", vec![])
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "task_id")?, r.try_get("", "depends_on")?)))
            .collect()
    }

    /// (id, pending_deps, lease_owner) of every task: what `TaskRow` does not show.
    async fn hidden_columns(&self) -> anyhow::Result<Vec<(String, i32, Option<String>)>> {
        let rows = self
            .query(
                "SELECT id, pending_deps, lease_owner FROM tasks ORDER BY id",
                vec![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "id")?,
                    r.try_get("", "pending_deps")?,
                    r.try_get("", "lease_owner")?,
                ))
            })
            .collect()
    }

    async fn event_count(&self) -> anyhow::Result<usize> {
        Ok(self.store.events_after(0, None, u32::MAX).await?.len())
    }

    async fn revision_count(&self) -> anyhow::Result<i64> {
        let rows = self
            .query("SELECT COUNT(*) AS n FROM revisions", vec![])
            .await?;
        Ok(rows
            .first()
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Claims everything runnable at `now` for `owner`; the claimed tasks by id.
    async fn claim(&self, owner: &str, now: i64) -> anyhow::Result<BTreeMap<String, TaskRow>> {
        Ok(self
            .store
            .claim(owner, now, now + LEASE, limit(1000))
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect())
    }

    /// Claims and completes (as succeeded) whatever is runnable at `now` until `target`
    /// is claimed; leaves `target` claimed by [`DRIVER`] and returns it.
    async fn drive_to(&self, target: &str, now: i64) -> anyhow::Result<TaskRow> {
        let mut found = self.drive_to_all(&[target], now).await?;
        found
            .remove(target)
            .with_context(|| format!("{target} was not claimed"))
    }

    /// Like [`Harness::drive_to`], for several targets held at once.
    async fn drive_to_all(
        &self,
        targets: &[&str],
        now: i64,
    ) -> anyhow::Result<BTreeMap<String, TaskRow>> {
        let mut found = BTreeMap::new();
        for _ in 0..64 {
            if found.len() == targets.len() {
                return Ok(found);
            }
            let mut claimed = self.claim(DRIVER, now).await?;
            anyhow::ensure!(
                !claimed.is_empty(),
                "{targets:?} never became runnable at {now}: {:#?}",
                self.rows().await?
            );
            for target in targets {
                if let Some(task) = claimed.remove(*target) {
                    found.insert((*target).to_owned(), task);
                }
            }
            let done = claimed.values().map(|t| succeeded(t, now)).collect();
            let dropped = self.store.complete(DRIVER, now, done).await?;
            anyhow::ensure!(dropped == 0, "the driver's completions were dropped");
        }
        anyhow::bail!("{targets:?} were not reached in 64 rounds")
    }

    /// Drives the replication check `id` to a claim at `at` and completes it ready: it
    /// released what waits for it and watches on, its next look half an hour later.
    async fn watch(&self, id: &str, at: i64) -> anyhow::Result<()> {
        let verify = self.drive_to(id, at).await?;
        let completion = Completion::Ready {
            id: verify.id.clone(),
            step: WATCHING.to_owned(),
            next_run_at: at + 1_800_000,
            events: Vec::new(),
        };
        let dropped = self.store.complete(DRIVER, at, vec![completion]).await?;
        anyhow::ensure!(dropped == 0, "the completion of {id} was dropped");
        Ok(())
    }

    /// Drives `target` to a claim and completes it with `completion(task)`.
    async fn drive_and_complete(
        &self,
        target: &str,
        now: i64,
        completion: impl FnOnce(&TaskRow) -> Completion,
    ) -> anyhow::Result<TaskRow> {
        let task = self.drive_to(target, now).await?;
        let dropped = self
            .store
            .complete(DRIVER, now, vec![completion(&task)])
            .await?;
        anyhow::ensure!(dropped == 0, "the completion of {target} was dropped");
        Ok(task)
    }
}

fn ids(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn kinds_of(server: &str) -> Vec<String> {
    waves::model::TaskKind::ALL
        .iter()
        .map(|k| format!("{server}/{k}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The cases.

async fn schema_is_applied_at_open_and_opening_twice_is_fine(h: Harness) -> anyhow::Result<()> {
    // Every table of the schema is there and empty.
    for table in [
        "meta",
        "revisions",
        "waves",
        "servers",
        "tasks",
        "task_dependencies",
        "attempts",
        "events",
    ] {
        let rows = h
            .query(&format!("SELECT COUNT(*) AS n FROM {table}"), vec![])
            .await
            .with_context(|| format!("table {table} is missing after open"))?;
        let n: i64 = rows[0].try_get("", "n")?;
        assert_eq!(n, 0, "table {table} is not empty in a new store");
    }
    assert!(h.store.current_sources().await?.is_none());
    assert_eq!(h.store.unfinished_count().await?, 0);
    assert_eq!(h.store.next_due().await?, None);
    h.store.meta_set("suite.key", "first").await?;
    h.store.meta_set("suite.key", "second").await?;

    // Opening again runs the migrations again: nothing changes, nothing is lost.
    let again = Store::open(&h.url).await?;
    assert_eq!(
        again.meta_get("suite.key").await?.as_deref(),
        Some("second")
    );
    assert_eq!(again.meta_get("suite.absent").await?, None);
    let migrations = h
        .query("SELECT COUNT(*) AS n FROM seaql_migrations", vec![])
        .await?;
    // Each migration recorded once.
    let known = <migrations::Migrator as migrations::MigratorTrait>::migrations().len();
    assert_eq!(migrations[0].try_get::<i64>("", "n")?, known as i64);
    assert_eq!(again.is_postgres(), h.backend() == DbBackend::Postgres);
    Ok(())
}

async fn apply_stores_a_revision_with_six_tasks_per_server_and_a_gate_per_application(
    h: Harness,
) -> anyhow::Result<()> {
    let mut waves = web_and_db();
    waves[0].apps[1].servers[0].skip = &["boot_test"];
    let defs = load(&waves);
    let t = defs.times(WAVE_A);
    let report = h.apply(&defs, false, t.build - DAY).await?;
    assert_eq!(report.revision, 1);
    assert_eq!(report.added, vec!["db-1", "web-1", "web-2"]);
    assert!(report.changed.is_empty() && report.moved.is_empty() && report.removed.is_empty());
    assert_eq!(report.tasks, 3 * 6 + 2);

    let (revision, sources) = h
        .store
        .current_sources()
        .await?
        .context("no revision stored")?;
    assert_eq!(revision, 1);
    assert_eq!(sources, defs.loaded.sources);

    let rows = h.rows().await?;
    assert_eq!(rows.len(), 20);
    let mut expected: BTreeSet<String> = ["web-1", "web-2", "db-1"]
        .iter()
        .flat_map(|s| kinds_of(s))
        .collect();
    expected.extend(ids(&["web/ready", "db/ready"]));
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for row in rows.values() {
        let planned_skip = row.id == "db-1/boot_test";
        assert_eq!(
            row.state,
            if planned_skip { "skipped" } else { "pending" },
            "{}",
            row.id
        );
        assert_eq!(row.wave, WAVE_A);
        assert_eq!(row.attempts, 0);
        assert_eq!(row.started_at, None);
    }
    let web_gate = &rows["web/ready"];
    assert_eq!(
        (web_gate.kind.as_str(), web_gate.server.as_deref()),
        ("gate", None)
    );
    assert!(web_gate.approval_required);
    assert!(!rows["db/ready"].approval_required);
    assert_eq!(
        (web_gate.earliest, web_gate.deadline),
        (t.validate, Some(t.window_end))
    );

    // The times of one server's tasks follow its phases and window.
    let times = |kind: &str| {
        let row = &rows[&format!("web-1/{kind}")];
        (row.earliest, row.deadline, row.next_run_at)
    };
    assert_eq!(times("prereq_check"), (t.build, Some(t.validate), t.build));
    assert_eq!(
        times("replication_verify"),
        (t.build, Some(t.window_start), t.build)
    );
    assert_eq!(
        times("boot_test"),
        (t.validate, Some(t.validate_end), t.validate)
    );
    assert_eq!(
        times("cutover"),
        (t.window_start, Some(t.window_end), t.window_start)
    );
    assert_eq!(
        times("cmdb_cleanup"),
        (t.window_end + DAY, None, t.window_end + DAY)
    );

    // The dependencies: the server chain, the gates and what they wait for, and each
    // cutover's wait for its server's agent (which a reinstall holds it on).
    let deps = h.dependencies().await?;
    for pair in [
        ("web-1/agent_push", "web-1/prereq_check"),
        ("web-1/cutover", "web-1/boot_test"),
        ("web-1/cutover", "web-1/agent_push"),
        ("db-1/cutover", "db-1/agent_push"),
        ("web-1/cutover", "web/ready"),
        ("web/ready", "web-1/boot_test"),
        ("web/ready", "web-2/boot_test"),
        ("db/ready", "db-1/boot_test"),
        ("db/ready", "web-1/cutover"),
        ("db/ready", "web-2/cutover"),
        ("db-1/cmdb_cleanup", "db-1/cutover"),
    ] {
        assert!(
            deps.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "missing dependency {pair:?}"
        );
    }
    assert_eq!(deps.len(), 3 * 5 + 3 + 2 + 3 + 3);
    // A planned skip counts as done: db's gate waits for web's two cutovers only, and
    // db-1's cutover for its gate and its agent.
    for (id, count) in [
        ("web-1/prereq_check", 0),
        ("web-1/agent_push", 1),
        ("web-1/cutover", 3),
        ("web/ready", 2),
        ("db/ready", 2),
        ("db-1/cutover", 2),
    ] {
        assert_eq!(h.pending_deps(id).await?, count, "pending_deps of {id}");
    }

    let events = h.store.events_after(0, None, u32::MAX).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "operator.apply");
    assert_eq!(events[0].wave, WAVE_A);
    assert!(
        events[0]
            .message
            .contains("revision 1: in this wave 3 added"),
        "{}",
        events[0].message
    );
    Ok(())
}

async fn a_second_apply_of_the_same_definitions_changes_nothing(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    // Some history first: one task done, one running under a lease, one waiting.
    h.drive_and_complete("web-1/agent_push", t.build, |task| succeeded(task, t.build))
        .await?;
    let waiting = h.claim("worker", t.build).await?;
    assert!(waiting.contains_key("web-1/replication_verify"));
    h.store
        .complete(
            "worker",
            t.build,
            vec![Completion::Waiting {
                id: "web-1/replication_verify".to_owned(),
                step: "{\"poll\":1}".to_owned(),
                next_run_at: t.build + 1_800_000,
                events: Vec::new(),
            }],
        )
        .await?;
    let before = h.rows().await?;
    let hidden_before = h.hidden_columns().await?;
    let deps_before = h.dependencies().await?;

    let report = h.apply(&defs, false, t.build + 1000).await?;
    assert!(report.is_empty(), "nothing changed, yet: {report:?}");
    assert_eq!(report.tasks, 20);
    assert_eq!(h.rows().await?, before);
    assert_eq!(h.hidden_columns().await?, hidden_before);
    assert_eq!(h.dependencies().await?, deps_before);
    assert_eq!(
        h.attempts("web-1/agent_push").await?,
        vec![(1, "succeeded".to_owned())]
    );
    Ok(())
}

async fn a_second_apply_keeps_what_operators_skipped_or_cancelled(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    // An operator skips a check and cancels a cutover, then the dependant of the
    // skipped check starts and waits on the engine.
    h.store.skip("web-1/prereq_check", "alice", t.build).await?;
    h.store.cancel("web-2/cutover", "alice", t.build).await?;
    let claimed = h.claim("worker", t.build).await?;
    let agent = claimed
        .get("web-1/agent_push")
        .context("the dependant of a skipped task is not runnable")?;
    h.store
        .complete(
            "worker",
            t.build,
            vec![Completion::Waiting {
                id: agent.id.clone(),
                step: "{}".to_owned(),
                next_run_at: t.build + 60_000,
                events: Vec::new(),
            }],
        )
        .await?;
    let before = h.rows().await?;

    // Applying the same definitions again must not undo the operator's decisions.
    let report = h.apply(&defs, false, t.build + 1000).await?;
    assert!(report.is_empty(), "{report:?}");
    let after = h.rows().await?;
    let mut undone = Vec::new();
    for id in ["web-1/prereq_check", "web-2/cutover", "web-1/agent_push"] {
        let was = (before[id].state.as_str(), before[id].reason.as_deref());
        let is = (after[id].state.as_str(), after[id].reason.as_deref());
        if was != is {
            undone.push(format!("{id}: {was:?} became {is:?}"));
        }
    }
    let claimable = h
        .claim("worker", t.build + 60_000)
        .await?
        .contains_key("web-1/agent_push");
    if !claimable {
        undone.push(format!(
            "web-1/agent_push (running, waiting on the engine) is no longer runnable when due: it waits again (pending_deps = {}) for a task that had counted as done",
            h.pending_deps("web-1/agent_push").await?
        ));
    }
    assert!(
        undone.is_empty(),
        "applying the same definitions again undid what operators did:\n  {}",
        undone.join("\n  ")
    );
    assert_eq!(after, before);
    Ok(())
}

async fn apply_reports_servers_added_changed_moved_and_removed(h: Harness) -> anyhow::Result<()> {
    let first = load(&[
        wave_a(vec![
            app("web", vec![srv("web-1"), srv("web-2")]),
            app("db", vec![srv("db-1")]),
        ]),
        wave_b(vec![app("api", vec![srv("api-1")])]),
    ]);
    let t = first.times(WAVE_A);
    h.apply(&first, false, t.build - DAY).await?;

    // web-1 grows a disk, web-2 goes, web-3 comes, db-1 moves to wave-b and grows one.
    let second = load(&[
        wave_a(vec![app(
            "web",
            vec![
                Srv {
                    disk_gib: 80,
                    ..srv("web-1")
                },
                srv("web-3"),
            ],
        )]),
        wave_b(vec![
            app("api", vec![srv("api-1")]),
            app(
                "db",
                vec![Srv {
                    disk_gib: 80,
                    ..srv("db-1")
                }],
            ),
        ]),
    ]);
    let report = h.apply(&second, false, t.build - DAY + 1).await?;
    assert_eq!(report.revision, 2);
    assert_eq!(report.added, vec!["web-3"]);
    assert_eq!(report.changed, vec!["web-1"]);
    assert_eq!(
        report
            .changes
            .get("web-1")
            .map(|c| (c.fields.clone(), c.cutover.clone())),
        Some((vec!["disks".to_owned()], None)),
        "what changed, and no cutover has started"
    );
    assert_eq!(
        report.moved,
        vec![("db-1".to_owned(), WAVE_A.to_owned(), WAVE_B.to_owned())]
    );
    assert_eq!(
        report.changes.get("db-1").map(|c| c.fields.clone()),
        Some(vec!["disks".to_owned()]),
        "a moved server's own changes are said with the move"
    );
    assert_eq!(report.removed, vec!["web-2"]);
    assert_eq!(report.tasks, 4 * 6 + 3);
    assert_eq!(h.store.current_sources().await?.map(|s| s.0), Some(2));

    let rows = h.rows().await?;
    for id in kinds_of("web-2") {
        assert_eq!(rows[&id].state, "cancelled", "{id}");
        assert_eq!(
            rows[&id].reason.as_deref(),
            Some("cancelled: removed from the definitions")
        );
    }
    for id in kinds_of("web-3") {
        assert_eq!(rows[&id].state, "pending", "{id}");
    }
    // A removed server's tasks are not steered: a retry would only make a task the
    // executor must fail.
    for id in kinds_of("web-2") {
        for lever in ["retry", "skip", "cancel"] {
            let tried = match lever {
                "retry" => h.store.retry(&id, "alice", 10).await,
                "skip" => h.store.skip(&id, "alice", 10).await,
                _ => h.store.cancel(&id, "alice", 10).await,
            };
            let refused = tried
                .err()
                .with_context(|| format!("{lever} {id} was taken"))?;
            assert_eq!(
                refused.downcast_ref::<Refused>().map(|r| r.kind),
                Some(RefusalKind::Conflict),
                "{refused:#}"
            );
            assert!(
                format!("{refused:#}").contains(
                    "belongs to `web-2`, which the definitions no longer hold (removed by an apply)"
                ),
                "{refused:#}"
            );
        }
        assert_eq!(h.rows().await?[&id].state, "cancelled", "{id} unchanged");
    }
    // The progress counts are the wave's work: web-1, web-3 and the gate of web, not
    // the removed web-2's history.
    let counts = h.store.counts_by_wave().await?;
    let a = counts.get(WAVE_A).context("wave-a's counts")?;
    assert_eq!((a.total, a.finished), (2 * 6 + 1, 0), "{a:?}");
    // The reports' tasks are the same.
    let in_force = h.store.tasks_in_force(WAVE_A).await?;
    assert_eq!(in_force.len(), 2 * 6 + 1);
    assert!(
        in_force
            .iter()
            .all(|t| t.server.as_deref() != Some("web-2"))
    );
    let tb = second.times(WAVE_B);
    for id in kinds_of("db-1") {
        assert_eq!(rows[&id].wave, WAVE_B, "{id} moved with its server");
    }
    assert_eq!(rows["db-1/cutover"].earliest, tb.window_start);
    assert_eq!(rows["db/ready"].wave, WAVE_B);
    // The gate of web now waits for web-1 and web-3, no longer for web-2.
    assert_eq!(h.pending_deps("web/ready").await?, 2);
    let deps = h.dependencies().await?;
    assert!(
        !deps
            .iter()
            .any(|(a, b)| a.starts_with("web-2/") || b.starts_with("web-2/"))
    );

    // The summary event says the same.
    let events = h.store.events_after(0, Some(WAVE_A), u32::MAX).await?;
    let last = events.last().context("no event")?;
    assert_eq!(last.kind, "operator.apply");
    assert!(
        last.message
            .contains("revision 2: in this wave 1 added, 1 changed, 1 moved, 1 removed"),
        "{}",
        last.message
    );
    // Each wave's event counts its own servers: wave-b only received db-1.
    let events = h.store.events_after(0, Some(WAVE_B), u32::MAX).await?;
    let last = events.last().context("no event of wave-b")?;
    assert_eq!(
        last.message,
        "revision 2: in this wave 0 added, 0 changed, 1 moved, 0 removed"
    );
    Ok(())
}

async fn removing_a_server_with_a_running_task_is_refused_unless_forced(
    h: Harness,
) -> anyhow::Result<()> {
    let both = load(&[wave_a(vec![app("web", vec![srv("web-1"), srv("web-2")])])]);
    let t = both.times(WAVE_A);
    h.apply(&both, false, t.build - DAY).await?;
    // web-2 has history (prereq_check succeeded) and a running task (agent_push).
    let running = h.drive_to("web-2/agent_push", t.build).await?;
    assert_eq!(h.state("web-2/prereq_check").await?, "succeeded");
    assert_eq!(h.state("web-2/agent_push").await?, "running");

    let without = load(&[wave_a(vec![app("web", vec![srv("web-1")])])]);
    let before = h.rows().await?;
    let err = h
        .apply(&without, false, t.build + 1)
        .await
        .err()
        .context("removing a server with a running task was accepted")?;
    let message = format!("{err:#}");
    assert!(
        message.contains("web-2") && message.contains("web-2/agent_push"),
        "the refusal must name the server and its task: {message}"
    );
    assert!(message.contains("--force"), "{message}");
    assert_eq!(h.rows().await?, before, "a refused apply changed tasks");
    assert_eq!(h.revision_count().await?, 1);
    assert_eq!(h.store.current_sources().await?.map(|s| s.0), Some(1));

    let report = h.apply(&without, true, t.build + 2).await?;
    assert_eq!(report.removed, vec!["web-2"]);
    let rows = h.rows().await?;
    assert_eq!(rows["web-2/agent_push"].state, "cancelled");
    assert_eq!(h.lease_owner("web-2/agent_push").await?, None);
    for id in kinds_of("web-2").into_iter().skip(2) {
        assert_eq!(rows[&id].state, "cancelled", "{id}");
    }
    // History is kept: what ran keeps its state and its attempts.
    assert_eq!(rows["web-2/prereq_check"].state, "succeeded");
    assert_eq!(
        h.attempts("web-2/prereq_check").await?,
        vec![(1, "succeeded".to_owned())]
    );
    assert!(
        h.store
            .events_after(0, None, u32::MAX)
            .await?
            .iter()
            .any(|e| e.task_id.as_deref() == Some("web-2/prereq_check")),
        "the events of a removed server are kept"
    );
    // The worker that held the cancelled task writes nothing.
    let dropped = h
        .store
        .complete(DRIVER, t.build + 3, vec![succeeded(&running, t.build + 3)])
        .await?;
    assert_eq!(dropped, 1);
    assert_eq!(h.state("web-2/agent_push").await?, "cancelled");
    Ok(())
}

async fn a_wave_whose_agents_were_pushed_keeps_its_engine(h: Harness) -> anyhow::Result<()> {
    let on_sim = load(&web_and_db());
    let on_local = load_on(&web_and_db(), "local");
    let t = on_sim.times(WAVE_A);
    // Before any agent is pushed, a wave may change its engine, and back.
    h.apply(&on_sim, false, t.build - DAY).await?;
    h.apply(&on_local, false, t.build - DAY).await?;
    h.apply(&on_sim, false, t.build - DAY).await?;
    assert_eq!(h.revision_count().await?, 3);
    h.drive_to("web-1/agent_push", t.build).await?;
    let before = h.rows().await?;
    for force in [false, true] {
        let err = h
            .apply(&on_local, force, t.build + 1)
            .await
            .err()
            .with_context(|| format!("a wave left its engine after a push (force {force})"))?;
        let message = format!("{err:#}");
        assert!(
            message.contains("wave `wave-a` would move ")
                && message.contains("web-1")
                && message.contains(
                    "from engine `sim` to `local`: their agent_push has started on `sim`, where their replication runs"
                ),
            "{message}"
        );
    }
    assert_eq!(h.rows().await?, before);
    assert_eq!(h.revision_count().await?, 3);
    // Nor does one move to a wave on another engine.
    let moved = load_each_on(
        &[
            wave_a(vec![app("db", vec![srv("db-1")])]),
            wave_b(vec![app("web", vec![srv("web-1"), srv("web-2")])]),
        ],
        &["sim", "local"],
    );
    let err = h
        .apply(&moved, false, t.build + 1)
        .await
        .err()
        .context("a pushed server moved to a wave on another engine")?;
    assert!(
        format!("{err:#}").contains("wave `wave-b` would move web-1"),
        "{err:#}"
    );
    assert_eq!(h.rows().await?, before);
    Ok(())
}

async fn moving_a_server_whose_cutover_started_is_refused(h: Harness) -> anyhow::Result<()> {
    let no_approval = |name, servers| App {
        approval: false,
        ..app(name, servers)
    };
    let first = load(&[
        wave_a(vec![no_approval("web", vec![srv("web-1")])]),
        wave_b(vec![no_approval("api", vec![srv("api-1")])]),
    ]);
    let t = first.times(WAVE_A);
    h.apply(&first, false, t.build - DAY).await?;
    h.drive_to("web-1/cutover", t.window_start).await?;
    assert_eq!(h.state("web-1/cutover").await?, "running");

    let moved = load(&[
        wave_a(vec![no_approval("other", vec![srv("other-1")])]),
        wave_b(vec![
            no_approval("api", vec![srv("api-1")]),
            no_approval("web", vec![srv("web-1")]),
        ]),
    ]);
    let before = h.rows().await?;
    for force in [false, true] {
        let err = h
            .apply(&moved, force, t.window_start + 1)
            .await
            .err()
            .with_context(|| format!("a started cutover was moved (force {force})"))?;
        let message = format!("{err:#}");
        assert!(
            message.contains("web-1")
                && message.contains(WAVE_A)
                && message.contains(WAVE_B)
                && message.contains("cutover has started"),
            "{message}"
        );
    }
    assert_eq!(h.rows().await?, before);
    assert_eq!(h.task("web-1/cutover").await?.wave, WAVE_A);
    assert_eq!(h.revision_count().await?, 1);

    // Nor in two applies: removed once its cutover is done, it does not come back in
    // another wave; it does in its own.
    let cutover = h.task("web-1/cutover").await?;
    let now = t.window_start + 2;
    h.store
        .complete(DRIVER, now, vec![succeeded(&cutover, now)])
        .await?;
    // A change to it says that its cutover ran: it reaches only the tasks still to run.
    let grown = load(&[
        wave_a(vec![no_approval(
            "web",
            vec![Srv {
                disk_gib: 80,
                ..srv("web-1")
            }],
        )]),
        wave_b(vec![no_approval("api", vec![srv("api-1")])]),
    ]);
    let report = h.apply(&grown, false, now).await?;
    assert_eq!(
        report
            .changes
            .get("web-1")
            .map(|c| (c.fields.clone(), c.cutover.clone())),
        Some((vec!["disks".to_owned()], Some("succeeded".to_owned())))
    );
    let without = load(&[
        wave_a(vec![no_approval("other", vec![srv("other-1")])]),
        wave_b(vec![no_approval("api", vec![srv("api-1")])]),
    ]);
    let report = h.apply(&without, false, now + 1).await?;
    assert_eq!(report.removed, vec!["web-1"]);
    // Its application went with it: the gate is history too, out of the wave's counts.
    assert_eq!(
        h.store.removed_application_names().await?,
        BTreeSet::from(["web".to_owned()])
    );
    let counts = h.store.counts_by_wave().await?;
    let a = counts.get(WAVE_A).context("wave-a's counts")?;
    assert_eq!(a.total, 6 + 1, "other-1 and the gate of other: {a:?}");
    assert_eq!(h.store.tasks_in_force(WAVE_A).await?.len(), 6 + 1);
    let err = h
        .apply(&moved, false, now + 2)
        .await
        .err()
        .context("a cut-over server came back in another wave")?;
    assert!(
        format!("{err:#}").contains(
            "server `web-1` cannot come back in wave `wave-b`: it was removed from wave `wave-a` after its cutover started (succeeded), and its history stays there; give the new server another name"
        ),
        "{err:#}"
    );
    assert_eq!(h.task("web-1/cutover").await?.wave, WAVE_A);
    let back = load(&[
        wave_a(vec![
            no_approval("other", vec![srv("other-1")]),
            no_approval("web", vec![srv("web-1")]),
        ]),
        wave_b(vec![no_approval("api", vec![srv("api-1")])]),
    ]);
    let report = h.apply(&back, false, now + 3).await?;
    assert_eq!(report.added, vec!["web-1"]);
    assert_eq!(h.state("web-1/cutover").await?, "succeeded");
    Ok(())
}

async fn claim_respects_dependencies_due_times_and_leases(h: Harness) -> anyhow::Result<()> {
    let mut waves = web_and_db();
    waves[0].apps[1].servers[0].skip = &["prereq_check"];
    let defs = load(&waves);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;

    // Nothing is due before the build phase.
    assert!(h.claim("a", t.build - 1).await?.is_empty());

    // At the build start: exactly the tasks whose dependencies are all done.
    let runnable: BTreeSet<String> = h
        .query(
            "SELECT id FROM tasks WHERE state IN ('pending', 'running') AND pending_deps = 0 \
             AND next_run_at <= ?",
            vec![t.build.into()],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<String>("", "id"))
        .collect::<Result<_, _>>()?;
    let expected = ids(&[
        "web-1/prereq_check",
        "web-2/prereq_check",
        "db-1/agent_push",
    ]);
    assert_eq!(runnable, expected);
    // One at a time, in due order then id.
    let first = h
        .store
        .claim("a", t.build, t.build + LEASE, limit(1))
        .await?;
    assert_eq!(
        first.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["db-1/agent_push"]
    );
    let claimed = h.claim("a", t.build).await?;
    assert_eq!(
        claimed.keys().cloned().collect::<BTreeSet<_>>(),
        ids(&["web-1/prereq_check", "web-2/prereq_check"])
    );
    for id in &expected {
        let row = h.task(id).await?;
        assert_eq!(row.state, "running", "{id}");
        assert_eq!(row.started_at, Some(t.build), "{id}");
        assert_eq!(h.lease_owner(id).await?.as_deref(), Some("a"));
    }

    // While the lease lives, another owner gets nothing, even much later in the day.
    assert!(h.claim("b", t.build + LEASE - 1).await?.is_empty());
    // Once it expired, the other owner takes the tasks over; started_at is kept.
    let taken = h.claim("b", t.build + LEASE + 1).await?;
    assert_eq!(taken.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for id in &expected {
        assert_eq!(h.lease_owner(id).await?.as_deref(), Some("b"));
        assert_eq!(h.task(id).await?.started_at, Some(t.build));
    }
    // The first owner's completion is now refused.
    let dropped = h
        .store
        .complete(
            "a",
            t.build + LEASE + 2,
            vec![succeeded(&taken["web-1/prereq_check"], t.build + LEASE + 2)],
        )
        .await?;
    assert_eq!(dropped, 1);
    assert_eq!(h.state("web-1/prereq_check").await?, "running");

    // Long after, the same three are taken over again (their leases expired), and
    // nothing that waits on another task is claimed, whatever the time.
    let later = h.claim("c", t.window_end + 30 * DAY).await?;
    assert_eq!(later.keys().cloned().collect::<BTreeSet<_>>(), expected);
    Ok(())
}

/// Workers claiming at the same moment never get the same task. On PostgreSQL the
/// claims really run at once (a pool of connections); each round starts when the
/// previous round's leases expired, so every round races for the same twelve tasks.
async fn concurrent_claims_never_hand_one_task_to_two_owners(h: Harness) -> anyhow::Result<()> {
    let servers: Vec<Srv> = [
        "s-01", "s-02", "s-03", "s-04", "s-05", "s-06", "s-07", "s-08", "s-09", "s-10", "s-11",
        "s-12",
    ]
    .into_iter()
    .map(srv)
    .collect();
    let defs = load(&[wave_a(vec![app("big", servers)])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    for round in 0..12 {
        let now = t.build + round * (LEASE + 1);
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..8 {
            let store = h.store.clone();
            workers.spawn(async move {
                let owner = format!("worker-{n}");
                let claimed = store.claim(&owner, now, now + LEASE, limit(3)).await?;
                anyhow::Ok((owner, claimed))
            });
        }
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        while let Some(joined) = workers.join_next().await {
            let (owner, claimed) = joined??;
            assert!(claimed.len() <= 3, "{owner} got more than its limit");
            for task in claimed {
                if let Some(first) = owners.insert(task.id.clone(), owner.clone()) {
                    panic!(
                        "round {round}: {} was handed to {first} and to {owner} at once",
                        task.id
                    );
                }
            }
        }
        for (id, owner) in &owners {
            assert!(id.ends_with("/prereq_check"), "{id} is not runnable yet");
            assert_eq!(h.lease_owner(id).await?.as_ref(), Some(owner));
        }
        // Whatever the race left (a worker skips the rows others hold) is still there
        // for the next claim.
        let rest = h.claim("sweeper", now).await?;
        assert!(rest.keys().all(|id| !owners.contains_key(id)));
        assert_eq!(owners.len() + rest.len(), 12, "round {round}");
    }
    Ok(())
}

async fn claim_takes_at_most_its_limit_in_all_and_per_wave(h: Harness) -> anyhow::Result<()> {
    let defs = load(&[
        wave_a(vec![app(
            "web",
            vec![srv("a-1"), srv("a-2"), srv("a-3"), srv("a-4")],
        )]),
        wave_b(vec![app(
            "api",
            vec![srv("b-1"), srv("b-2"), srv("b-3"), srv("b-4")],
        )]),
    ]);
    let tb = defs.times(WAVE_B);
    h.apply(&defs, false, tb.build - 30 * DAY).await?;
    // At wave-b's build start, the eight checks of both waves are due.
    let waves_of = |claimed: &[TaskRow]| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for task in claimed {
            *counts.entry(task.wave.clone()).or_default() += 1;
        }
        counts
    };
    let two_each = Limit {
        total: 100,
        per_wave: 2,
    };
    let first = h
        .store
        .claim("w", tb.build, tb.build + LEASE, two_each)
        .await?;
    assert_eq!(
        waves_of(&first),
        BTreeMap::from([(WAVE_A.to_owned(), 2), (WAVE_B.to_owned(), 2)])
    );
    // What a wave could not take is left as it was: pending, unleased, not started.
    let taken: BTreeSet<&str> = first.iter().map(|t| t.id.as_str()).collect();
    for row in h.rows().await?.values() {
        if row.kind != "prereq_check" || taken.contains(row.id.as_str()) {
            continue;
        }
        assert_eq!(
            (row.state.as_str(), row.started_at),
            ("pending", None),
            "{}",
            row.id
        );
        assert_eq!(h.lease_owner(&row.id).await?, None, "{}", row.id);
    }
    // The total bounds the batch; the earliest due come first (wave-a's).
    let three = Limit {
        total: 3,
        per_wave: 2,
    };
    let second = h
        .store
        .claim("w", tb.build, tb.build + LEASE, three)
        .await?;
    assert_eq!(
        waves_of(&second),
        BTreeMap::from([(WAVE_A.to_owned(), 2), (WAVE_B.to_owned(), 1)])
    );
    let rest = h.claim("w", tb.build).await?;
    assert_eq!(rest.len(), 1);
    let all: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|t| t.id.clone())
        .chain(rest.into_keys())
        .collect();
    assert_eq!(
        all.len(),
        8,
        "a task was claimed twice or not at all: {all:?}"
    );
    Ok(())
}

/// The per-wave limit keeps one wave from taking a whole batch: the room it leaves goes
/// to the other waves' runnable tasks, not to nobody.
async fn a_wave_at_its_limit_leaves_the_rest_of_the_batch_to_other_waves(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&[
        wave_a(vec![app(
            "web",
            vec![srv("a-1"), srv("a-2"), srv("a-3"), srv("a-4")],
        )]),
        wave_b(vec![app(
            "api",
            vec![srv("b-1"), srv("b-2"), srv("b-3"), srv("b-4")],
        )]),
    ]);
    let tb = defs.times(WAVE_B);
    h.apply(&defs, false, tb.build - 30 * DAY).await?;
    // Eight checks are due; wave-a's (due a week earlier) come first.
    let limit = Limit {
        total: 4,
        per_wave: 2,
    };
    let claimed = h
        .store
        .claim("w", tb.build, tb.build + LEASE, limit)
        .await?;
    let mut per_wave: BTreeMap<String, usize> = BTreeMap::new();
    for task in &claimed {
        *per_wave.entry(task.wave.clone()).or_default() += 1;
    }
    assert_eq!(
        per_wave,
        BTreeMap::from([(WAVE_A.to_owned(), 2), (WAVE_B.to_owned(), 2)]),
        "with room for four and at most two of a wave, wave-b's runnable tasks were left \
         out while the batch had room"
    );
    Ok(())
}

async fn complete_and_claim_records_outcomes_and_claims_what_they_released(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let mine = h
        .store
        .claim("me", t.build, t.build + LEASE, limit(1))
        .await?;
    let theirs = h.claim("other", t.build).await?;
    let mine = mine.first().context("nothing claimed")?;
    let theirs = theirs
        .values()
        .find(|t| t.id != mine.id)
        .context("nothing claimed by the other worker")?;
    let now = t.build + 10;
    let (dropped, next) = h
        .store
        .complete_and_claim(
            "me",
            now,
            vec![succeeded(mine, now), succeeded(theirs, now)],
            now + LEASE,
            limit(100),
        )
        .await?;
    assert_eq!(
        dropped, 1,
        "the completion of another worker's task went through"
    );
    assert_eq!(h.state(&mine.id).await?, "succeeded");
    assert_eq!(h.state(&theirs.id).await?, "running");
    // What the success released is claimed in the same step, and only that.
    let server = mine.server.clone().context("a check without a server")?;
    let released = format!("{server}/agent_push");
    assert_eq!(
        next.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![released.as_str()]
    );
    assert_eq!(h.lease_owner(&released).await?.as_deref(), Some("me"));
    assert_eq!(h.task(&released).await?.started_at, Some(now));
    Ok(())
}

async fn complete_with_the_wrong_owner_writes_nothing(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let claimed = h.claim("owner", t.build).await?;
    let task = claimed
        .get("web-1/prereq_check")
        .context("web-1/prereq_check not claimed")?;
    let events = h.event_count().await?;

    for completion in [
        succeeded(task, t.build + 1),
        failed(task, t.build + 1, "intruder"),
        Completion::Waiting {
            id: task.id.clone(),
            step: "{}".to_owned(),
            next_run_at: t.build + 10,
            events: vec![event_of(task, t.build, "task.progress")],
        },
    ] {
        let dropped = h
            .store
            .complete("intruder", t.build + 1, vec![completion])
            .await?;
        assert_eq!(dropped, 1);
    }
    let row = h.task("web-1/prereq_check").await?;
    assert_eq!(
        (row.state.as_str(), row.attempts, row.finished_at),
        ("running", 0, None)
    );
    assert_eq!(row.next_run_at, t.build);
    assert_eq!(
        h.lease_owner("web-1/prereq_check").await?.as_deref(),
        Some("owner")
    );
    assert!(h.attempts("web-1/prereq_check").await?.is_empty());
    assert_eq!(
        h.event_count().await?,
        events,
        "a dropped completion wrote events"
    );
    assert_eq!(h.pending_deps("web-1/agent_push").await?, 1);
    assert_eq!(h.state("web-1/agent_push").await?, "pending");

    // The owner's own completion goes through.
    let dropped = h
        .store
        .complete("owner", t.build + 2, vec![succeeded(task, t.build + 2)])
        .await?;
    assert_eq!(dropped, 0);
    assert_eq!(h.state("web-1/prereq_check").await?, "succeeded");
    Ok(())
}

/// A recurring check (replication_verify watching until the window): its first `Ready`
/// lets the tasks after it start, it stays running and comes back on its schedule, and
/// neither a later `Ready`, nor its success, nor a re-apply counts it twice.
async fn a_ready_check_releases_its_dependants_once_and_runs_on(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let mut now = t.build;
    for kind in ["prereq_check", "agent_push"] {
        let claimed = h.claim("w", now).await?;
        let task = claimed
            .get(&format!("web-1/{kind}"))
            .with_context(|| format!("web-1/{kind} not claimed"))?;
        h.store
            .complete("w", now, vec![succeeded(task, now)])
            .await?;
        now += 1000;
    }
    let verify_id = "web-1/replication_verify";
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 1);
    let ready = |task: &TaskRow, at: i64, next: i64| Completion::Ready {
        id: task.id.clone(),
        step: "{\"task\":{\"watching\":true}}".to_owned(),
        next_run_at: next,
        events: vec![event_of(task, at, "task.ready")],
    };
    let claimed = h.claim("w", now).await?;
    let verify = claimed.get(verify_id).context("verify not claimed")?;
    h.store
        .complete("w", now, vec![ready(verify, now, now + 1_800_000)])
        .await?;
    let row = h.task(verify_id).await?;
    assert_eq!(row.state, "running", "a ready check runs on");
    assert_eq!(row.released_at, Some(now));
    assert_eq!(row.next_run_at, now + 1_800_000);
    assert_eq!(row.attempts, 0);
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 0, "released");
    assert!(h.lease_owner(verify_id).await?.is_none());

    // Applying the same definitions again recounts: a released check counts as done.
    h.apply(&defs, false, now).await?;
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 0);
    assert_eq!(h.task(verify_id).await?.state, "running");

    // The next look is another Ready: nothing is released twice.
    let first_release = now;
    now += 1_800_000;
    let claimed = h.claim("w", now).await?;
    let verify = claimed.get(verify_id).context("verify not claimed again")?;
    h.store
        .complete("w", now, vec![ready(verify, now, now + 1_800_000)])
        .await?;
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 0);
    assert_eq!(h.task(verify_id).await?.released_at, Some(first_release));

    // The last look succeeds: still nothing released twice.
    now += 1_800_000;
    let claimed = h.claim("w", now).await?;
    let verify = claimed
        .get(verify_id)
        .context("verify not claimed at the end")?;
    h.store
        .complete("w", now, vec![succeeded(verify, now)])
        .await?;
    let row = h.task(verify_id).await?;
    assert_eq!((row.state.as_str(), row.attempts), ("succeeded", 1));
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 0);
    assert_eq!(
        h.attempts(verify_id).await?,
        vec![(1, "succeeded".to_owned())]
    );
    Ok(())
}

async fn success_releases_dependants_and_waiting_or_retrying_keep_the_task(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let claimed = h.claim("w", t.build).await?;
    let prereq = &claimed["web-1/prereq_check"];
    let dropped = h
        .store
        .complete("w", t.build + 5000, vec![succeeded(prereq, t.build + 5000)])
        .await?;
    assert_eq!(dropped, 0);
    let row = h.task("web-1/prereq_check").await?;
    assert_eq!(row.state, "succeeded");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.finished_at, Some(t.build + 5000));
    assert_eq!(row.reason, None);
    assert_eq!(h.lease_owner("web-1/prereq_check").await?, None);
    assert_eq!(
        h.attempts("web-1/prereq_check").await?,
        vec![(1, "succeeded".to_owned())]
    );
    assert_eq!(h.pending_deps("web-1/agent_push").await?, 0);
    // Only the released dependant is new; the other server still waits.
    let next = h.claim("w", t.build + 5000).await?;
    assert_eq!(
        next.keys().cloned().collect::<BTreeSet<_>>(),
        ids(&["web-1/agent_push"])
    );
    assert_eq!(h.pending_deps("web-2/agent_push").await?, 1);

    // Waiting: the task stays running, its step is kept, it comes back when due.
    let agent = &next["web-1/agent_push"];
    h.store
        .complete(
            "w",
            t.build + 5000,
            vec![Completion::Waiting {
                id: agent.id.clone(),
                step: "{\"at\":\"install\"}".to_owned(),
                next_run_at: t.build + 65_000,
                events: Vec::new(),
            }],
        )
        .await?;
    let row = h.task("web-1/agent_push").await?;
    assert_eq!(row.state, "running");
    assert_eq!(row.step.as_deref(), Some("{\"at\":\"install\"}"));
    assert_eq!((row.next_run_at, row.attempts), (t.build + 65_000, 0));
    assert!(h.attempts("web-1/agent_push").await?.is_empty());
    assert!(
        !h.claim("w", t.build + 64_999)
            .await?
            .contains_key("web-1/agent_push")
    );
    let again = h.claim("w", t.build + 65_000).await?;
    let agent = again
        .get("web-1/agent_push")
        .context("not claimed when due")?;
    assert_eq!(agent.step.as_deref(), Some("{\"at\":\"install\"}"));

    // Retry: an attempt is recorded, the task stays running and comes back later.
    h.store
        .complete(
            "w",
            t.build + 65_000,
            vec![Completion::Retry {
                id: agent.id.clone(),
                step: None,
                next_run_at: t.build + 120_000,
                reason: "the engine was busy".to_owned(),
                attempt: attempt_record(agent, t.build + 65_000, "retrying", Some("busy")),
                events: Vec::new(),
            }],
        )
        .await?;
    let row = h.task("web-1/agent_push").await?;
    assert_eq!((row.state.as_str(), row.attempts), ("running", 1));
    assert_eq!(row.reason.as_deref(), Some("the engine was busy"));
    assert_eq!(
        h.attempts("web-1/agent_push").await?,
        vec![(1, "retrying".to_owned())]
    );
    assert_eq!(h.pending_deps("web-1/replication_verify").await?, 1);
    let third = h.claim("w", t.build + 120_000).await?;
    let agent = third
        .get("web-1/agent_push")
        .context("not claimed after the backoff")?;
    h.store
        .complete(
            "w",
            t.build + 120_000,
            vec![succeeded(agent, t.build + 120_000)],
        )
        .await?;
    assert_eq!(
        h.attempts("web-1/agent_push").await?,
        vec![(1, "retrying".to_owned()), (2, "succeeded".to_owned())]
    );
    assert_eq!(h.task("web-1/agent_push").await?.reason, None);
    assert_eq!(h.pending_deps("web-1/replication_verify").await?, 0);
    Ok(())
}

/// web (web-1, web-2) and db (db-1, depends on web) in wave-a; api (api-1, depends on
/// db) in wave-b.
fn chain_across_waves() -> Defs {
    let mut waves = web_and_db();
    waves.push(wave_b(vec![App {
        depends_on: &["db"],
        ..app("api", vec![srv("api-1")])
    }]));
    load(&waves)
}

/// Every task downstream of web-1/agent_push in [`chain_across_waves`].
fn downstream_of_web_1_agent_push() -> BTreeSet<String> {
    ids(&[
        "web-1/replication_verify",
        "web-1/boot_test",
        "web-1/cutover",
        "web-1/cmdb_cleanup",
        "web/ready",
        "web-2/cutover",
        "web-2/cmdb_cleanup",
        "db/ready",
        "db-1/cutover",
        "db-1/cmdb_cleanup",
        "api/ready",
        "api-1/cutover",
        "api-1/cmdb_cleanup",
    ])
}

async fn failure_blocks_everything_downstream_transitively_with_a_reason(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = chain_across_waves();
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    h.drive_and_complete("web-1/agent_push", t.build, |task| {
        failed(task, t.build, "the agent did not install")
    })
    .await?;
    let failed_row = h.task("web-1/agent_push").await?;
    assert_eq!(failed_row.state, "failed");
    assert_eq!(
        failed_row.reason.as_deref(),
        Some("the agent did not install")
    );
    assert_eq!(
        (failed_row.attempts, failed_row.finished_at),
        (1, Some(t.build))
    );
    assert_eq!(
        h.attempts("web-1/agent_push").await?,
        vec![(1, "failed".to_owned())]
    );

    let blocked = h.in_state("blocked").await?;
    assert_eq!(blocked, downstream_of_web_1_agent_push());
    for id in &blocked {
        let reason = h.task(id).await?.reason.unwrap_or_default();
        assert!(
            reason.contains("web-1/agent_push"),
            "{id} is blocked without naming the failure: {reason:?}"
        );
    }
    // Nothing else moved: the rest of the other servers' work is still to do.
    for id in [
        "web-2/replication_verify",
        "web-2/boot_test",
        "db-1/boot_test",
        "api-1/agent_push",
    ] {
        assert!(
            matches!(h.state(id).await?.as_str(), "pending" | "succeeded"),
            "{id} was touched by a failure it does not depend on"
        );
    }
    // Blocked tasks are final: they are neither due nor unfinished.
    let unfinished = h
        .rows()
        .await?
        .values()
        .filter(|t| {
            matches!(
                t.state.as_str(),
                "pending" | "running" | "awaiting_approval"
            )
        })
        .count();
    assert_eq!(h.store.unfinished_count().await?, unfinished as i64);
    let claimed = h.claim("w", t.window_end + 30 * DAY).await?;
    assert!(
        claimed.keys().all(|id| !blocked.contains(id)),
        "a blocked task was claimed: {:?}",
        claimed.keys()
    );
    Ok(())
}

/// An agent that stopped (its source rebooted) is installed again by a retry of its
/// succeeded agent_push: the task runs again, and replication_verify waits for it. Not
/// once the server's cutover began, nor for another succeeded task.
async fn a_succeeded_agent_push_is_retried_to_install_its_agent_again(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = chain_across_waves();
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    h.drive_and_complete("web-1/agent_push", t.build, |task| succeeded(task, t.build))
        .await?;
    assert_eq!(h.pending_deps("web-1/replication_verify").await?, 0);
    let now = t.build + 1000;
    h.store.retry("web-1/agent_push", "alice", now).await?;
    let row = h.task("web-1/agent_push").await?;
    assert_eq!((row.state.as_str(), row.finished_at), ("pending", None));
    assert_eq!(h.pending_deps("web-1/replication_verify").await?, 1);
    assert!(h.claim("w", now).await?.contains_key("web-1/agent_push"));
    assert!(
        h.store
            .events_after(0, None, u32::MAX)
            .await?
            .iter()
            .any(|e| e.kind == "operator.retry"
                && e.message
                    == "web-1/agent_push retried by alice: its agent is installed and started again if it does not replicate"),
        "the retry is in the log"
    );
    let refused = async |id: &str| {
        let tried = h.store.retry(id, "alice", now).await;
        tried.err().with_context(|| format!("{id} was retried"))
    };
    // Another succeeded task is not run again.
    let err = refused("web-1/prereq_check").await?;
    assert!(
        format!("{err:#}").contains("only a failed, blocked or cancelled task can be retried"),
        "{err:#}"
    );
    // Nor an agent_push whose server's cutover began (web-2's succeeded on the way).
    assert_eq!(h.state("web-2/agent_push").await?, "succeeded");
    let backend = h.backend();
    h.raw
        .execute_raw(Statement::from_sql_and_values(
            backend,
            numbered(backend, "UPDATE tasks SET state = 'succeeded' WHERE id = ?"),
            vec!["web-2/cutover".into()],
        ))
        .await?;
    let err = refused("web-2/agent_push").await?;
    assert_eq!(
        err.downcast_ref::<Refused>().map(|r| r.kind),
        Some(RefusalKind::Conflict)
    );
    assert_eq!(
        format!("{err:#}"),
        "`web-2/agent_push` is succeeded and `web-2/cutover` is succeeded: the agent of a server whose cutover began is not installed again"
    );
    Ok(())
}

/// A reinstall (the retry of a succeeded agent_push) holds its server's cutover that has
/// not begun and the replication check that watches on; failing for good, it blocks
/// both (the watch would otherwise wait forever, and its wave with it); retried again
/// and succeeding, it lets both go on, the watch from where it was.
async fn a_reinstall_holds_the_cutover_and_failing_blocks_the_watch(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let verify_id = "web-1/replication_verify";
    h.watch(verify_id, t.build).await?;
    let watching = WATCHING;
    // Released: the boot test may run; the cutover waits for it and the gate only.
    assert_eq!(h.pending_deps("web-1/boot_test").await?, 0);
    assert_eq!(h.pending_deps("web-1/cutover").await?, 2);

    let now = t.build + 1000;
    h.store.retry("web-1/agent_push", "alice", now).await?;
    assert_eq!(
        h.pending_deps("web-1/cutover").await?,
        3,
        "held by the reinstall"
    );
    assert_eq!(h.pending_deps(verify_id).await?, 1);
    assert_eq!(h.state(verify_id).await?, "running");
    assert_eq!(
        h.pending_deps("web-1/boot_test").await?,
        0,
        "still released"
    );

    // The reinstall fails for good: the watch and the cutover are blocked, and say why.
    h.drive_and_complete("web-1/agent_push", now, |task| {
        failed(task, now, "no route to the source")
    })
    .await?;
    for id in [
        verify_id,
        "web-1/boot_test",
        "web-1/cutover",
        "web-1/cmdb_cleanup",
    ] {
        let row = h.task(id).await?;
        assert_eq!(
            (row.state.as_str(), row.reason.as_deref()),
            ("blocked", Some("blocked: web-1/agent_push did not succeed")),
            "{id}"
        );
        assert_eq!(h.lease_owner(id).await?, None, "{id}");
    }
    // The application's gate waits for that boot test: its other cutover waits too.
    assert_eq!(h.state("web-2/cutover").await?, "blocked");

    // Retried again and succeeding: the watch looks again from its step, the cutover
    // waits for its boot test and gate only.
    let later = now + 1000;
    h.store.retry("web-1/agent_push", "alice", later).await?;
    assert!(h.in_state("blocked").await?.is_empty());
    assert_eq!(h.state(verify_id).await?, "pending");
    h.drive_and_complete("web-1/agent_push", later, |task| succeeded(task, later))
        .await?;
    assert_eq!(h.pending_deps(verify_id).await?, 0);
    assert_eq!(h.pending_deps("web-1/cutover").await?, 2);
    let look = t.build + 1_800_000;
    let claimed = h.claim("w", look).await?;
    let verify = claimed.get(verify_id).context("the watch looks again")?;
    assert_eq!(verify.step.as_deref(), Some(watching));
    assert_eq!(verify.state, "running");
    Ok(())
}

/// A store written before a cutover waited for its agent gets the dependency when it is
/// opened, with its counts taken again: a cutover whose agent_push is still to run
/// counts it, so it cannot start when that succeeds while its boot test has not.
async fn a_store_from_before_gets_the_cutovers_wait_for_the_agent_at_open(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    // One agent pushed, the others being pushed.
    let held = h
        .drive_to_all(
            &["db-1/agent_push", "web-1/agent_push", "web-2/agent_push"],
            t.build,
        )
        .await?;
    h.store
        .complete(
            DRIVER,
            t.build,
            vec![succeeded(&held["web-1/agent_push"], t.build)],
        )
        .await?;
    let expected = h.hidden_columns().await?;
    // What the earlier schema held: no such edge, and counts without it.
    for sql in [
        "DELETE FROM task_dependencies WHERE depends_on LIKE '%/agent_push' AND task_id LIKE '%/cutover'",
        "UPDATE tasks SET pending_deps = pending_deps - 1 WHERE kind = 'cutover' AND EXISTS \
         (SELECT 1 FROM tasks a WHERE a.server = tasks.server AND a.kind = 'agent_push' \
         AND a.state <> 'succeeded')",
        "DELETE FROM seaql_migrations WHERE version LIKE '%cutover_waits_for_agent'",
    ] {
        h.raw.execute_unprepared(sql).await?;
    }
    assert!(
        !h.dependencies()
            .await?
            .contains(&("web-2/cutover".to_owned(), "web-2/agent_push".to_owned()))
    );
    let reopened = Store::open(&h.url).await?;
    for server in ["web-1", "web-2", "db-1"] {
        assert!(
            h.dependencies()
                .await?
                .contains(&(format!("{server}/cutover"), format!("{server}/agent_push"))),
            "{server}'s cutover waits for its agent again"
        );
    }
    assert_eq!(h.hidden_columns().await?, expected);
    assert_eq!(h.pending_deps("web-2/cutover").await?, 3);
    assert_eq!(h.pending_deps("web-1/cutover").await?, 2);
    drop(reopened);
    Ok(())
}

/// A store from before, where a reinstall failed for good and left the watch running
/// (as the earlier code did): opened, the watch and what waits on the failure are
/// blocked, so the wave can end.
async fn a_store_from_before_with_a_failed_reinstall_is_blocked_at_open(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let verify_id = "web-1/replication_verify";
    h.watch(verify_id, t.build).await?;
    let now = t.build + 1000;
    h.store.retry("web-1/agent_push", "alice", now).await?;
    h.drive_and_complete("web-1/agent_push", now, |task| failed(task, now, "gone"))
        .await?;
    // What the earlier code left: the watch running, the cutover pending, no edge.
    for sql in [
        "UPDATE tasks SET state = 'running', reason = NULL WHERE id = 'web-1/replication_verify'",
        "UPDATE tasks SET state = 'pending', reason = NULL WHERE state = 'blocked'",
        "DELETE FROM task_dependencies WHERE depends_on LIKE '%/agent_push' AND task_id LIKE '%/cutover'",
        "DELETE FROM seaql_migrations WHERE version LIKE '%cutover_waits_for_agent'",
    ] {
        h.raw.execute_unprepared(sql).await?;
    }
    assert_eq!(h.state(verify_id).await?, "running");
    let reopened = Store::open(&h.url).await?;
    for id in [
        verify_id,
        "web-1/boot_test",
        "web-1/cutover",
        "web-2/cutover",
    ] {
        let row = h.task(id).await?;
        assert_eq!(
            (row.state.as_str(), row.reason.as_deref()),
            (
                "blocked",
                Some("blocked: a task it depends on did not succeed")
            ),
            "{id}"
        );
    }
    assert_eq!(h.lease_owner(verify_id).await?, None);
    drop(reopened);
    Ok(())
}

async fn retry_unblocks_what_the_failure_blocked(h: Harness) -> anyhow::Result<()> {
    let defs = chain_across_waves();
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let held = h
        .drive_to_all(&["web-1/agent_push", "web-2/agent_push"], t.build)
        .await?;
    h.store
        .complete(
            DRIVER,
            t.build,
            vec![
                failed(&held["web-1/agent_push"], t.build, "first"),
                failed_with_step(
                    &held["web-2/agent_push"],
                    t.build,
                    "second",
                    Some(
                        r#"{"attempt_started":1,"note":"x","task":{"kept":{"cmdb":{"record":"CI-2"}},"looks":3}}"#
                            .to_owned(),
                    ),
                ),
            ],
        )
        .await?;

    // Only a failed, blocked or cancelled task can be retried.
    let err = h
        .store
        .retry("web-1/prereq_check", "alice", t.build + 1)
        .await
        .err()
        .context("a succeeded task was retried")?;
    assert!(format!("{err:#}").contains("web-1/prereq_check"), "{err:#}");
    assert!(
        h.store
            .retry("nope/cutover", "alice", t.build + 1)
            .await
            .is_err()
    );

    let now = t.build + 1000;
    h.store.retry("web-1/agent_push", "alice", now).await?;
    let row = h.task("web-1/agent_push").await?;
    assert_eq!(row.state, "pending");
    assert_eq!(row.reason, None);
    // A fresh attempt, which counts its automatic retries from here.
    let step: serde_json::Value = serde_json::from_str(row.step.as_deref().context("a step")?)?;
    assert_eq!(
        (step["fresh"].as_bool(), step["retried_after"].as_i64()),
        (Some(true), Some(i64::from(row.attempts)))
    );
    assert_eq!((row.next_run_at, row.finished_at), (now, None));
    assert_eq!(h.lease_owner("web-1/agent_push").await?, None);
    // web-1's own chain is unblocked and waits again; what also needs web-2 stays blocked.
    for id in ["web-1/replication_verify", "web-1/boot_test"] {
        let row = h.task(id).await?;
        assert_eq!(
            (row.state.as_str(), row.reason.as_deref()),
            ("pending", None),
            "{id}"
        );
        assert_eq!(h.pending_deps(id).await?, 1, "{id}");
    }
    let blocked = h.in_state("blocked").await?;
    let still: BTreeSet<String> = downstream_of_web_1_agent_push()
        .into_iter()
        .filter(|id| !matches!(id.as_str(), "web-1/replication_verify" | "web-1/boot_test"))
        .chain([
            "web-2/replication_verify".to_owned(),
            "web-2/boot_test".to_owned(),
        ])
        .collect();
    assert_eq!(blocked, still);
    // The retried task is runnable at once.
    assert!(h.claim("w", now).await?.contains_key("web-1/agent_push"));
    assert!(
        h.store
            .events_after(0, None, u32::MAX)
            .await?
            .iter()
            .any(|e| e.kind == "operator.retry" && e.message.contains("alice"))
    );

    // Once the second failure is retried too, nothing is blocked any more.
    h.store.retry("web-2/agent_push", "alice", now + 1).await?;
    assert!(h.in_state("blocked").await?.is_empty());
    // What a task keeps (a CMDB record written) survives its retry, in a fresh attempt;
    // the rest of its step does not.
    let step = h
        .task("web-2/agent_push")
        .await?
        .step
        .context("the kept step")?;
    let step: serde_json::Value = serde_json::from_str(&step)?;
    assert_eq!(
        step,
        serde_json::json!({
            "attempt_started": now + 1,
            "note": null,
            "task": { "kept": { "cmdb": { "record": "CI-2" } } },
            "fresh": true,
            "retried_after": 1
        })
    );
    assert_eq!(h.pending_deps("web/ready").await?, 2);
    assert_eq!(h.pending_deps("api/ready").await?, 2);
    Ok(())
}

async fn skip_counts_as_success_for_dependants(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;

    // A pending task skipped: its dependant may run.
    h.store.skip("web-1/prereq_check", "alice", t.build).await?;
    let row = h.task("web-1/prereq_check").await?;
    assert_eq!(row.state, "skipped");
    assert_eq!(row.reason.as_deref(), Some("skipped by alice"));
    assert_eq!(row.finished_at, Some(t.build));
    assert_eq!(h.pending_deps("web-1/agent_push").await?, 0);
    assert!(
        h.claim("w", t.build)
            .await?
            .contains_key("web-1/agent_push")
    );
    let err = h
        .store
        .skip("web-1/prereq_check", "alice", t.build)
        .await
        .err()
        .context("a skipped task was skipped again")?;
    assert!(format!("{err:#}").contains("already skipped"), "{err:#}");

    // A failed task skipped: what it blocked is released.
    // (after the lease of `w` above expired)
    let later = t.build + 2 * LEASE;
    h.drive_and_complete("web-2/agent_push", later, |task| failed(task, later, "no"))
        .await?;
    assert_eq!(h.state("web-2/replication_verify").await?, "blocked");
    h.store.skip("web-2/agent_push", "alice", later + 1).await?;
    assert_eq!(h.state("web-2/replication_verify").await?, "pending");
    assert_eq!(h.pending_deps("web-2/replication_verify").await?, 0);
    assert!(h.in_state("blocked").await?.is_empty());

    // Skipped boot tests open the way for the gate.
    for id in ["web-1/boot_test", "web-2/boot_test"] {
        h.store.skip(id, "alice", later + 2).await?;
    }
    assert_eq!(h.pending_deps("web/ready").await?, 0);
    assert!(h.claim("w", t.validate).await?.contains_key("web/ready"));
    Ok(())
}

async fn cancel_blocks_dependants_and_drops_the_workers_completion(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let claimed = h.claim("worker", t.build).await?;
    let prereq = &claimed["web-1/prereq_check"];

    h.store
        .cancel("web-1/prereq_check", "alice", t.build + 1)
        .await?;
    let row = h.task("web-1/prereq_check").await?;
    assert_eq!(row.state, "cancelled");
    assert_eq!(row.reason.as_deref(), Some("cancelled by alice"));
    assert_eq!(h.lease_owner("web-1/prereq_check").await?, None);
    // Everything that needs web-1's work is blocked, transitively.
    let mut expected: BTreeSet<String> = kinds_of("web-1").into_iter().skip(1).collect();
    expected.extend(ids(&[
        "web/ready",
        "web-2/cutover",
        "web-2/cmdb_cleanup",
        "db/ready",
        "db-1/cutover",
        "db-1/cmdb_cleanup",
    ]));
    assert_eq!(h.in_state("blocked").await?, expected);

    // The worker that held it writes nothing more.
    let events = h.event_count().await?;
    let dropped = h
        .store
        .complete("worker", t.build + 2, vec![succeeded(prereq, t.build + 2)])
        .await?;
    assert_eq!(dropped, 1);
    assert_eq!(h.state("web-1/prereq_check").await?, "cancelled");
    assert_eq!(h.event_count().await?, events);

    let err = h
        .store
        .cancel("web-1/prereq_check", "alice", t.build + 3)
        .await
        .err()
        .context("a cancelled task was cancelled again")?;
    assert!(format!("{err:#}").contains("already cancelled"), "{err:#}");
    // Retrying the cancelled task releases what it blocked.
    h.store
        .retry("web-1/prereq_check", "alice", t.build + 4)
        .await?;
    assert!(h.in_state("blocked").await?.is_empty());
    Ok(())
}

async fn a_running_cutover_is_neither_skipped_nor_cancelled(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    h.drive_to("db-1/cutover", t.window_start).await?;
    assert_eq!(h.state("db-1/cutover").await?, "running");
    for (lever, refused) in [
        (
            "skipped",
            h.store.skip("db-1/cutover", "alice", t.window_start).await,
        ),
        (
            "cancelled",
            h.store
                .cancel("db-1/cutover", "alice", t.window_start)
                .await,
        ),
    ] {
        let err = refused
            .err()
            .with_context(|| format!("a running cutover was {lever}"))?;
        assert!(
            format!("{err:#}").contains(&format!(
                "`db-1/cutover` is running and cannot be {lever} halfway"
            )),
            "{err:#}"
        );
    }
    assert_eq!(h.state("db-1/cutover").await?, "running");
    assert_eq!(
        h.lease_owner("db-1/cutover").await?.as_deref(),
        Some(DRIVER)
    );
    // Nor is it cancelled by removing its server, not even with --force.
    let without_db = load(&[wave_a(vec![app("web", vec![srv("web-1"), srv("web-2")])])]);
    let err = h
        .apply(&without_db, true, t.window_start)
        .await
        .err()
        .context("a running cutover's server was removed")?;
    assert!(
        format!("{err:#}").contains(
            "server `db-1` cannot be removed while its cutover runs, not even with --force"
        ),
        "{err:#}"
    );
    assert_eq!(h.state("db-1/cutover").await?, "running");

    // It is aborted instead: with a reason, only while it runs, once.
    let refusal = |result: anyhow::Result<()>| {
        result.err().map(|e| {
            (
                e.downcast_ref::<Refused>().map(|r| r.kind),
                format!("{e:#}"),
            )
        })
    };
    let now = t.window_start + 5;
    let (kind, said) = refusal(h.store.abort("db-1/cutover", "alice", " ", now).await)
        .context("an abort without a reason")?;
    assert_eq!(
        (kind, said.as_str()),
        (Some(RefusalKind::Invalid), "an abort needs its reason")
    );
    let (kind, said) = refusal(h.store.abort("web-1/cutover", "alice", "why", now).await)
        .context("a cutover that succeeded was aborted")?;
    assert_eq!(kind, Some(RefusalKind::Conflict));
    assert_eq!(
        said,
        "`web-1/cutover` is succeeded: only a running cutover is aborted"
    );
    let (kind, said) = refusal(h.store.abort("db-1/boot_test", "alice", "why", now).await)
        .context("a boot test was aborted")?;
    assert_eq!(kind, Some(RefusalKind::Conflict));
    assert!(said.contains("is not a cutover"), "{said}");
    h.store
        .abort(
            "db-1/cutover",
            "alice",
            "the database team found a blocker",
            now,
        )
        .await?;
    let row = h.task("db-1/cutover").await?;
    assert_eq!(
        row.abort_requested.as_deref(),
        Some("aborted by alice: the database team found a blocker")
    );
    assert_eq!((row.state.as_str(), row.next_run_at), ("running", now));
    let (kind, said) = refusal(h.store.abort("db-1/cutover", "bob", "again", now).await)
        .context("aborted twice")?;
    assert_eq!(kind, Some(RefusalKind::Conflict));
    assert!(said.contains("is being aborted already"), "{said}");
    assert!(
        h.store
            .events_after(0, Some(WAVE_A), u32::MAX)
            .await?
            .iter()
            .any(|e| e.kind == "operator.abort"
                && e.message
                    == "db-1/cutover abort asked by alice: the database team found a blocker")
    );
    // Once it failed, a retry starts it afresh, without the abort.
    h.store
        .complete(
            DRIVER,
            now + 2,
            vec![failed(&row, now + 2, "rolled back: aborted by alice")],
        )
        .await?;
    h.store.retry("db-1/cutover", "alice", now + 3).await?;
    assert_eq!(h.task("db-1/cutover").await?.abort_requested, None);
    Ok(())
}

async fn unknown_waves_and_applications_are_named_with_what_there_is(
    h: Harness,
) -> anyhow::Result<()> {
    // Each is refused as not found (the API answers 404), with the names there are.
    let refused = |result: anyhow::Result<()>| {
        result
            .err()
            .map(|e| {
                let kind = e.downcast_ref::<Refused>().map(|r| r.kind);
                assert_eq!(kind, Some(RefusalKind::NotFound), "{e:#}");
                format!("{e:#}")
            })
            .unwrap_or_else(|| "accepted".to_owned())
    };
    assert_eq!(
        refused(h.store.approve(WAVE_A, None, "alice", 0).await.map(drop)),
        "no wave `wave-a`: nothing is applied yet (wavelift apply PATH)"
    );
    let defs = load(&[
        wave_a(vec![app("web", vec![srv("web-1")])]),
        wave_b(vec![app("api", vec![srv("api-1")])]),
    ]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    for (wave, application, expected) in [
        (
            "wave-z",
            None,
            "no wave `wave-z`; the waves are: wave-a, wave-b",
        ),
        (
            WAVE_A,
            Some("api"),
            "no application `api` in wave `wave-a`: it is in wave `wave-b`",
        ),
        (
            WAVE_A,
            Some("nope"),
            "no application `nope` in wave `wave-a`; its applications are: web",
        ),
    ] {
        assert_eq!(
            refused(
                h.store
                    .approve(wave, application, "alice", t.build)
                    .await
                    .map(drop)
            ),
            expected
        );
        assert_eq!(
            refused(
                h.store
                    .no_go(wave, application, "alice", "no", t.build)
                    .await
                    .map(drop)
            ),
            expected
        );
    }
    assert_eq!(
        h.store
            .check_wave("wave-z")
            .await
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("no wave `wave-z`; the waves are: wave-a, wave-b")
    );
    h.store.check_wave(WAVE_B).await?;
    Ok(())
}

/// A gate waiting for its go whose application no longer asks for one (an apply turned
/// `approval` off) waits no more: pending again, it opens at its next turn.
async fn a_gate_that_no_longer_asks_for_a_go_waits_no_more(h: Harness) -> anyhow::Result<()> {
    let mut waves = web_and_db();
    let defs = load(&waves);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let gate = h.drive_to("web/ready", t.validate).await?;
    h.store
        .complete(
            DRIVER,
            t.validate,
            vec![Completion::AwaitingApproval {
                id: gate.id.clone(),
                events: Vec::new(),
            }],
        )
        .await?;
    assert_eq!(h.state("web/ready").await?, "awaiting_approval");
    waves[0].apps[0].approval = false;
    h.apply(&load(&waves), false, t.validate + 1).await?;
    let row = h.task("web/ready").await?;
    assert_eq!(
        (row.state.as_str(), row.approval_required),
        ("pending", false)
    );
    assert!(
        h.claim("w", t.validate + 2)
            .await?
            .contains_key("web/ready")
    );
    Ok(())
}

async fn approve_opens_a_gate_that_awaits_approval(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    // Nothing to approve: an application without approval, a wave that does not exist.
    for (wave, application, expected) in [
        (WAVE_A, Some("db"), "nothing to approve"),
        ("wave-z", None, "no wave `wave-z`; the waves are: wave-a"),
    ] {
        let err = h
            .store
            .approve(wave, application, "alice", t.build)
            .await
            .err()
            .with_context(|| format!("approving {wave} {application:?} was accepted"))?;
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }

    let gate = h.drive_to("web/ready", t.validate).await?;
    h.store
        .complete(
            DRIVER,
            t.validate,
            vec![Completion::AwaitingApproval {
                id: gate.id.clone(),
                events: vec![event_of(&gate, t.validate, "gate.awaiting_approval")],
            }],
        )
        .await?;
    assert_eq!(h.state("web/ready").await?, "awaiting_approval");
    assert_eq!(h.lease_owner("web/ready").await?, None);
    // A skip is no go: the gate keeps waiting for one, given with who and when.
    let err = h
        .store
        .skip("web/ready", "mallory", t.validate)
        .await
        .err()
        .context("a gate awaiting its go was skipped")?;
    assert!(
        format!("{err:#}").contains(
            "`web/ready` waits for the go of web's cutover, which a skip does not give: give it with `wavelift approve wave-a --app web`"
        ),
        "{err:#}"
    );
    assert_eq!(h.state("web/ready").await?, "awaiting_approval");
    // It waits for an operator: never claimed, never due, but not finished either.
    assert!(!h.claim("w", t.window_end).await?.contains_key("web/ready"));
    assert!(h.store.unfinished_count().await? >= 1);

    let when = t.validate + 3_600_000;
    let approved = h.store.approve(WAVE_A, None, "alice", when).await?;
    assert_eq!(approved.approved, vec!["web"]);
    assert!(approved.already.is_empty());
    let row = h.task("web/ready").await?;
    assert_eq!(row.state, "pending");
    assert_eq!(row.approved_by.as_deref(), Some("alice"));
    assert_eq!(row.approved_at, Some(when));
    assert_eq!(row.next_run_at, when);
    assert_eq!(h.task("db/ready").await?.approved_by, None);
    let events = h.store.events_after(0, Some(WAVE_A), u32::MAX).await?;
    let approval = events.last().context("no event")?;
    let logged = events.len();
    // A second go before the gate opens keeps the first: who gave it, when, and the log.
    let again = h.store.approve(WAVE_A, None, "bob", when + 5).await?;
    assert!(again.approved.is_empty(), "{again:?}");
    assert_eq!(again.already, vec![("web".to_owned(), "alice".to_owned())]);
    assert_eq!(again.already_text(), "web (by alice)");
    let row = h.task("web/ready").await?;
    assert_eq!(row.approved_by.as_deref(), Some("alice"));
    assert_eq!(row.approved_at, Some(when));
    assert_eq!(row.next_run_at, when);
    assert_eq!(
        h.store.events_after(0, Some(WAVE_A), u32::MAX).await?.len(),
        logged
    );
    assert_eq!(approval.kind, "operator.approve");
    assert_eq!(approval.task_id.as_deref(), Some("web/ready"));
    assert!(approval.message.contains("alice"), "{}", approval.message);

    let claimed = h.claim("w", when).await?;
    let gate = claimed
        .get("web/ready")
        .context("an approved gate is not claimed")?;
    assert_eq!(gate.approved_by.as_deref(), Some("alice"));
    h.store
        .complete("w", when, vec![succeeded(gate, when)])
        .await?;
    assert_eq!(h.pending_deps("web-1/cutover").await?, 0);

    // Once open, there is nothing left to approve.
    let err = h
        .store
        .approve(WAVE_A, Some("web"), "bob", when + 1)
        .await
        .err()
        .context("an open gate was approved again")?;
    assert!(format!("{err:#}").contains("nothing to approve"), "{err:#}");
    assert_eq!(
        h.task("web/ready").await?.approved_by.as_deref(),
        Some("alice")
    );
    Ok(())
}

async fn events_are_appended_in_order_and_filtered_by_wave(h: Harness) -> anyhow::Result<()> {
    let defs = load(&[
        wave_a(vec![app("web", vec![srv("web-1")])]),
        wave_b(vec![app("api", vec![srv("api-1")])]),
    ]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let claimed = h.claim("w", t.build).await?;
    let web = &claimed["web-1/prereq_check"];
    let tb = defs.times(WAVE_B);
    let api = h.claim("w", tb.build).await?;
    let api = &api["api-1/prereq_check"];
    let batch = vec![
        event_of(web, t.build, "one"),
        event_of(api, t.build, "two"),
        event_of(web, t.build, "three"),
    ];
    h.store
        .complete(
            "w",
            tb.build,
            vec![Completion::Waiting {
                id: web.id.clone(),
                step: "{}".to_owned(),
                next_run_at: tb.build + 1,
                events: batch,
            }],
        )
        .await?;
    h.store
        .skip("api-1/agent_push", "alice", tb.build + 1)
        .await?;

    let all = h.store.events_after(0, None, u32::MAX).await?;
    let kinds: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.wave.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (WAVE_A, "operator.apply"),
            (WAVE_B, "operator.apply"),
            (WAVE_A, "one"),
            (WAVE_B, "two"),
            (WAVE_A, "three"),
            (WAVE_B, "operator.skip"),
        ]
    );
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids are not increasing"
    );
    assert_eq!(all[2].server.as_deref(), Some("web-1"));
    assert_eq!(all[2].task_id.as_deref(), Some("web-1/prereq_check"));

    let only_b = h.store.events_after(0, Some(WAVE_B), u32::MAX).await?;
    assert!(only_b.iter().all(|e| e.wave == WAVE_B));
    assert_eq!(
        only_b.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["operator.apply", "two", "operator.skip"]
    );
    // Paging: after an id, at most `limit`.
    let page = h.store.events_after(all[1].id, None, 2).await?;
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![all[2].id, all[3].id]
    );
    let after_a = h.store.events_after(all[2].id, Some(WAVE_A), 10).await?;
    assert_eq!(
        after_a.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["three"]
    );
    assert!(h.store.events_after(all[5].id, None, 10).await?.is_empty());
    // A fresh live log starts after the wave's own last events, however many of the
    // other waves' came between: wave B's last two are "two" and "operator.skip".
    let start = h.store.backlog_start(WAVE_B, 2).await?;
    let backlog = h.store.events_after(start, Some(WAVE_B), 10).await?;
    assert_eq!(
        backlog.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["two", "operator.skip"]
    );
    assert_eq!(h.store.backlog_start(WAVE_B, 3).await?, only_b[0].id - 1);
    assert_eq!(h.store.backlog_start(WAVE_B, 200).await?, 0);
    assert_eq!(h.store.backlog_start("no-such-wave", 200).await?, 0);
    // Counted by kind in (since, until]: a digest counts what came up to its occurrence,
    // and the next one what came after.
    let counts = h.store.event_counts(WAVE_A, t.build - 1, t.build).await?;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![("one".to_owned(), 1), ("three".to_owned(), 1)]
    );
    assert!(
        h.store
            .event_counts(WAVE_A, t.build, t.build + DAY)
            .await?
            .is_empty()
    );
    assert!(
        h.store
            .event_counts(WAVE_A, t.build - 2, t.build - 1)
            .await?
            .is_empty()
    );
    Ok(())
}

async fn next_due_and_unfinished_count_follow_the_tasks(h: Harness) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    assert_eq!(h.store.unfinished_count().await?, 7);
    assert_eq!(h.store.next_due().await?, Some(t.build));

    // A leased task is due again when its lease expires.
    let claimed = h.claim("w", t.build).await?;
    assert_eq!(h.store.next_due().await?, Some(t.build + LEASE));
    // A waiting task when it asked to be called back.
    h.store
        .complete(
            "w",
            t.build,
            vec![Completion::Waiting {
                id: "web-1/prereq_check".to_owned(),
                step: "{}".to_owned(),
                next_run_at: t.build + 120_000,
                events: Vec::new(),
            }],
        )
        .await?;
    assert_eq!(h.store.next_due().await?, Some(t.build + 120_000));
    assert_eq!(h.store.unfinished_count().await?, 7);
    // A success makes the next task due at its own earliest time.
    h.store
        .claim("w", t.build + 120_000, t.build + 180_000, limit(10))
        .await?;
    h.store
        .complete(
            "w",
            t.build + 120_000,
            vec![succeeded(&claimed["web-1/prereq_check"], t.build + 120_000)],
        )
        .await?;
    assert_eq!(h.store.unfinished_count().await?, 6);
    assert_eq!(h.store.next_due().await?, Some(t.build));

    // A gate awaiting approval is unfinished but never due.
    let gate = h.drive_to("web/ready", t.validate).await?;
    h.store
        .complete(
            DRIVER,
            t.validate,
            vec![Completion::AwaitingApproval {
                id: gate.id.clone(),
                events: Vec::new(),
            }],
        )
        .await?;
    assert_eq!(h.store.unfinished_count().await?, 3);
    assert_eq!(h.store.next_due().await?, None);

    h.store
        .approve(WAVE_A, None, "alice", t.window_start)
        .await?;
    assert_eq!(h.store.next_due().await?, Some(t.window_start));
    h.drive_and_complete("web-1/cmdb_cleanup", t.window_end + 2 * DAY, |task| {
        succeeded(task, t.window_end + 2 * DAY)
    })
    .await?;
    assert_eq!(h.store.unfinished_count().await?, 0);
    assert_eq!(h.store.next_due().await?, None);
    assert!(
        h.rows().await?.values().all(|t| t.state == "succeeded"),
        "every task succeeded"
    );
    Ok(())
}

/// `next_due` is "the earliest time something becomes runnable": at that time, a claim
/// must find it. A warped clock jumps exactly there.
async fn claim_at_next_due_finds_the_task_whose_lease_expired(h: Harness) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    // A worker claims and dies: its lease is all that holds the task.
    let claimed = h.claim("crashed", t.build).await?;
    assert!(claimed.contains_key("web-1/prereq_check"));
    let due = h
        .store
        .next_due()
        .await?
        .context("nothing is due although a lease will expire")?;
    let taken = h.claim("successor", due).await?;
    assert!(
        taken.contains_key("web-1/prereq_check"),
        "next_due said {due}, but a claim at {due} finds nothing (the lease expires at {})",
        t.build + LEASE
    );
    // A worker whose step runs long renews its lease: nobody takes the task meanwhile.
    // A worker that lost the lease renews nothing.
    let id = ["web-1/prereq_check"];
    assert_eq!(
        h.store
            .renew_leases("crashed", &id, due + 10 * LEASE)
            .await?,
        0
    );
    assert_eq!(
        h.store
            .renew_leases("successor", &id, due + 10 * LEASE)
            .await?,
        1
    );
    assert!(h.claim("third", due + 5 * LEASE).await?.is_empty());
    assert_eq!(
        h.lease_owner("web-1/prereq_check").await?.as_deref(),
        Some("successor")
    );
    assert_eq!(
        h.store.next_due().await?,
        Some(due + 10 * LEASE),
        "next_due follows the renewed lease"
    );
    Ok(())
}

async fn a_report_is_recorded_once_per_event_and_delivered_under_a_lease(
    h: Harness,
) -> anyhow::Result<()> {
    let report = |event: &str| NewReport {
        wave: WAVE_A.to_owned(),
        kind: "readiness".to_owned(),
        event: event.to_owned(),
        due_at: 1_000,
        subject: format!("readiness {event}"),
        sender: "wavelift@example.com".to_owned(),
        recipients: vec!["a@example.com".to_owned(), "b@example.com".to_owned()],
        message: "Subject: x\r\n\r\nbody\r\n".to_owned(),
    };
    let first = h.store.record_report(&report("window 1"), 5_000).await?;
    let id = first.context("recorded")?;
    // The same event again, from this process or another: nothing new.
    assert_eq!(
        h.store.record_report(&report("window 1"), 6_000).await?,
        None
    );
    assert!(
        h.store
            .report_recorded(WAVE_A, "readiness", "window 1")
            .await?
    );
    assert!(
        !h.store
            .report_recorded(WAVE_A, "readiness", "window 2")
            .await?
    );
    assert_eq!(h.store.reports(None).await?.len(), 1);
    // Due from its recording on; one attempt holds it under a lease.
    assert!(h.store.reports_to_deliver(4_999, 10).await?.is_empty());
    let due = h.store.reports_to_deliver(5_000, 10).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].recipients(), ["a@example.com", "b@example.com"]);
    assert!(h.store.take_report(id, 0, 5_000, 65_000).await?);
    assert!(
        !h.store.take_report(id, 1, 5_000, 65_000).await?,
        "a second taker is refused while the lease holds"
    );
    assert!(h.store.reports_to_deliver(64_999, 10).await?.is_empty());
    // A failed attempt waits for its retry; the lease of a crashed one runs out.
    let taken = &h.store.reports(None).await?[0];
    assert_eq!((taken.state.as_str(), taken.attempts), ("sending", 1));
    h.store
        .report_not_delivered(
            taken,
            65_000,
            6_000,
            "connection refused",
            Some(10_000),
            None,
        )
        .await?;
    assert_eq!(h.store.next_report_attempt().await?, Some(10_000));
    assert!(h.store.take_report(id, 1, 10_000, 70_000).await?);
    let crashed = h.store.reports_to_deliver(70_000, 10).await?;
    assert_eq!(crashed.len(), 1, "a lease that ran out makes it due again");
    assert!(
        !h.store.take_report(id, 1, 70_000, 130_000).await?,
        "a copy of the row read before the last attempt is refused"
    );
    assert!(h.store.take_report(id, 2, 70_000, 130_000).await?);
    let taken = &h.store.reports(None).await?[0];
    assert_eq!(taken.attempts, 3);
    // The attempt whose lease ran out comes back late: its outcome is not written.
    h.store
        .report_delivered(taken, 70_000, 71_000, "smtp://late.example:25")
        .await?;
    assert_eq!(h.store.reports(None).await?[0].state, "sending");
    h.store
        .report_delivered(taken, 130_000, 71_000, "smtp://127.0.0.1:25")
        .await?;
    let done = &h.store.reports(None).await?[0];
    assert_eq!(done.state, "delivered");
    assert_eq!(done.delivered_via.as_deref(), Some("smtp://127.0.0.1:25"));
    assert_eq!(done.last_error, None);
    assert!(h.store.reports_to_deliver(i64::MAX, 10).await?.is_empty());
    assert_eq!(h.store.next_report_attempt().await?, None);
    assert!(
        !h.store.take_report(id, 3, 200_000, 300_000).await?,
        "delivered is final"
    );
    // Given up on: failed, with where the message was kept.
    let other = h
        .store
        .record_report(&report("window 2"), 5_000)
        .await?
        .context("recorded")?;
    assert!(h.store.take_report(other, 0, 5_000, 65_000).await?);
    let row = h
        .store
        .reports(None)
        .await?
        .into_iter()
        .find(|r| r.id == other)
        .context("row")?;
    h.store
        .report_not_delivered(
            &row,
            65_000,
            6_000,
            "550 refused",
            None,
            Some("/outbox/x.eml"),
        )
        .await?;
    let row = h
        .store
        .reports(None)
        .await?
        .into_iter()
        .find(|r| r.id == other)
        .context("row")?;
    assert_eq!(row.state, "failed");
    assert_eq!(row.delivered_via.as_deref(), Some("/outbox/x.eml"));
    assert_eq!(
        h.store.last_report_due(WAVE_A, "readiness").await?,
        Some(1_000)
    );
    // The log says what happened to each.
    let kinds: Vec<String> = h
        .store
        .events_after(0, Some(WAVE_A), 100)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("report."))
        .collect();
    assert_eq!(
        kinds,
        [
            "report.recorded",
            "report.retry",
            "report.delivered",
            "report.recorded",
            "report.failed"
        ]
    );
    Ok(())
}

/// A server whose check failed blocks its application's gate and what follows; an apply
/// that removes the server releases them (they wait again), and leaves blocked what
/// another failure still blocks.
async fn removing_a_failed_server_releases_what_it_blocked(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let check = h.drive_to("web-2/prereq_check", t.build).await?;
    h.store
        .complete(DRIVER, t.build, vec![failed(&check, t.build, "no disk")])
        .await?;
    for id in ["web/ready", "web-1/cutover", "db-1/cutover"] {
        assert_eq!(h.state(id).await?, "blocked", "{id}");
    }
    let without = load(&[wave_a(vec![
        app("web", vec![srv("web-1")]),
        App {
            depends_on: &["web"],
            approval: false,
            ..app("db", vec![srv("db-1")])
        },
    ])]);
    h.apply(&without, false, t.build + 1).await?;
    for id in [
        "web/ready",
        "web-1/cutover",
        "db-1/cutover",
        "web-1/cmdb_cleanup",
    ] {
        let row = h.task(id).await?;
        assert_eq!((row.state.as_str(), row.reason), ("pending", None), "{id}");
    }
    assert_eq!(h.state("web-2/prereq_check").await?, "failed");
    Ok(())
}

/// The cutover report is recorded once the wave's cutovers are final; looked at again it
/// is not recorded twice, but a cutover retried after it that succeeds (inside the window)
/// makes a report of its own, once per count of servers cut over.
async fn a_cutover_retried_after_its_report_is_reported_again(h: Harness) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1"), srv("web-2")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let at = t.window_start + 60_000;
    let cutovers = h
        .drive_to_all(&["web-1/cutover", "web-2/cutover"], at)
        .await?;
    h.store
        .complete(
            DRIVER,
            at,
            vec![
                succeeded(&cutovers["web-1/cutover"], at),
                failed(&cutovers["web-2/cutover"], at, "the target did not boot"),
            ],
        )
        .await?;
    let reporter = h.reporter(&defs)?;
    let (_, failures) = reporter.record_due(at + 1_000).await?;
    assert!(failures.is_empty(), "{failures:?}");
    let first = h.report_subjects(WAVE_A, "cutover").await?;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].contains("cutover report: INCOMPLETE, 1 of 2 servers cut over"),
        "{first:?}"
    );
    reporter.record_due(at + 2_000).await?;
    assert_eq!(
        h.report_subjects(WAVE_A, "cutover").await?.len(),
        1,
        "recorded twice"
    );
    // Retried inside the window, and cut over: told again.
    h.store.retry("web-2/cutover", "alice", at + 3_000).await?;
    let again = h.drive_to("web-2/cutover", at + 4_000).await?;
    h.store
        .complete(DRIVER, at + 4_000, vec![succeeded(&again, at + 4_000)])
        .await?;
    reporter.record_due(at + 5_000).await?;
    reporter.record_due(at + 6_000).await?;
    let now = h.report_subjects(WAVE_A, "cutover").await?;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now[0].contains("cutover report: COMPLETE, 2 of 2 servers cut over"),
        "{now:?}"
    );
    Ok(())
}

/// The window closes while a cutover still runs: the report made then says it is not
/// finished yet; once it ends (rolled back, failed) a settled report follows, once, even
/// with the same count of servers cut over (the rollback was never reported).
async fn a_cutover_still_running_at_the_window_end_is_reported_again_when_it_ends(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1"), srv("web-2")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let at = t.window_start + 60_000;
    let cutovers = h
        .drive_to_all(&["web-1/cutover", "web-2/cutover"], at)
        .await?;
    h.store
        .complete(DRIVER, at, vec![succeeded(&cutovers["web-1/cutover"], at)])
        .await?;
    let reporter = h.reporter(&defs)?;
    reporter.record_due(t.window_start + 120_000).await?;
    assert!(
        h.report_subjects(WAVE_A, "cutover").await?.is_empty(),
        "not before the window's end"
    );
    reporter.record_due(t.window_end).await?;
    let first = h.report_subjects(WAVE_A, "cutover").await?;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].contains("INCOMPLETE, 1 of 2 servers cut over")
            && first[0].ends_with("; 1 not finished yet"),
        "{first:?}"
    );
    reporter.record_due(t.window_end + 1_000).await?;
    assert_eq!(
        h.report_subjects(WAVE_A, "cutover").await?.len(),
        1,
        "nothing new while it runs"
    );
    // Rolled back past the window's end, and failed: the settled report.
    let ended = t.window_end + 30_000;
    h.store
        .complete(
            DRIVER,
            ended,
            vec![failed(
                &cutovers["web-2/cutover"],
                ended,
                "rolled back: past the window",
            )],
        )
        .await?;
    reporter.record_due(ended + 1_000).await?;
    reporter.record_due(ended + 2_000).await?;
    let now = h.report_subjects(WAVE_A, "cutover").await?;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.iter()
            .any(|s| s.contains("INCOMPLETE, 1 of 2 servers cut over")
                && !s.contains("not finished")),
        "{now:?}"
    );
    Ok(())
}

/// Every task of a wave fails or is blocked on the first day of its build: a digest
/// says so at once (digests stopped as soon as no task was unfinished, so nobody heard
/// of it until the cutover report three weeks later), once; and the readiness report
/// goes out before the window, a NO-GO (it waited for cutovers still open).
async fn a_wave_that_fails_on_its_first_day_gets_a_digest_and_a_no_go(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let check = h.drive_to("web-1/prereq_check", t.build).await?;
    h.store
        .complete(
            DRIVER,
            t.build,
            vec![failed(&check, t.build, "ssh: permission denied")],
        )
        .await?;
    let reporter = h.reporter(&defs)?;
    reporter.record_due(t.build + 60_000).await?;
    reporter.record_due(t.build + 120_000).await?;
    let digests = h.report_subjects(WAVE_A, "digest").await?;
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert!(digests[0].contains("failed or blocked"), "{digests:?}");
    assert!(
        h.report_subjects(WAVE_A, "readiness").await?.is_empty(),
        "not yet"
    );
    reporter.record_due(t.window_start - 60_000).await?;
    let readiness = h.report_subjects(WAVE_A, "readiness").await?;
    assert_eq!(readiness.len(), 1, "{readiness:?}");
    assert!(readiness[0].contains("NO-GO"), "{readiness:?}");
    assert_eq!(
        h.report_subjects(WAVE_A, "digest").await?.len(),
        1,
        "the end is told once"
    );
    Ok(())
}

/// Cutovers all skipped on purpose: nothing to be ready for, no readiness report (a
/// readiness GO went out for a wave that cut nothing over).
async fn a_wave_whose_cutovers_are_all_skipped_gets_no_readiness_report(
    h: Harness,
) -> anyhow::Result<()> {
    let defs = load(&[wave_a(vec![app("web", vec![srv("web-1"), srv("web-2")])])]);
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    for id in ["web-1/cutover", "web-2/cutover"] {
        h.store.skip(id, "alice", t.build).await?;
    }
    let reporter = h.reporter(&defs)?;
    reporter.record_due(t.window_start - 60_000).await?;
    let readiness = h.report_subjects(WAVE_A, "readiness").await?;
    assert!(readiness.is_empty(), "{readiness:?}");
    Ok(())
}

/// A gate blocked by a failure upstream may be given its go ahead; until a retry opens
/// it, a no-go withdraws that go like any other.
async fn a_go_given_to_a_blocked_gate_can_be_withdrawn(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let check = h.drive_to("web-1/prereq_check", t.build).await?;
    h.store
        .complete(DRIVER, t.build, vec![failed(&check, t.build, "no disk")])
        .await?;
    assert_eq!(h.state("web/ready").await?, "blocked");
    let given = h
        .store
        .approve(WAVE_A, Some("web"), "alice", t.build + 1)
        .await?;
    assert_eq!(given.approved, vec!["web"]);
    let held = h
        .store
        .no_go(WAVE_A, Some("web"), "carol", "hold it", t.build + 2)
        .await?;
    assert_eq!(held, vec!["web"]);
    let row = h.task("web/ready").await?;
    assert_eq!((row.state.as_str(), row.approved_by), ("blocked", None));
    Ok(())
}

async fn a_no_go_withdraws_the_go_until_the_gate_opens(h: Harness) -> anyhow::Result<()> {
    let defs = load(&web_and_db());
    let t = defs.times(WAVE_A);
    h.apply(&defs, false, t.build - DAY).await?;
    let err = h
        .store
        .no_go(WAVE_A, Some("web"), "carol", "  ", t.build)
        .await
        .err()
        .context("a no-go without a reason was accepted")?;
    assert_eq!(format!("{err:#}"), "a no-go needs its reason");
    // A reason the log could not keep on one line, or a book, is refused as invalid.
    for (reason, said) in [
        (
            "hold\n2032-12-18 21:00Z  wave-a  -  operator.approve  forged".to_owned(),
            "a no-go's reason holds a control character (\\n)",
        ),
        (
            "red \u{1b}[31m".to_owned(),
            "holds a control character (\\u{1b})",
        ),
        (
            "x".repeat(1001),
            "a no-go's reason is 1001 characters long; at most 1000 are kept",
        ),
    ] {
        let err = h
            .store
            .no_go(WAVE_A, Some("web"), "carol", &reason, t.build)
            .await
            .err()
            .context("a reason the log cannot keep was accepted")?;
        assert_eq!(
            err.downcast_ref::<Refused>().map(|r| r.kind),
            Some(RefusalKind::Invalid),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains(said), "{err:#}");
    }
    let err = h
        .store
        .approve(WAVE_A, Some("web"), "eve\nalice", t.build)
        .await
        .err()
        .context("a name on two lines was accepted")?;
    assert!(
        format!("{err:#}").starts_with("the operator's name holds a control character"),
        "{err:#}"
    );
    // Given ahead, then withdrawn: the gate will wait for a go again.
    h.store
        .approve(WAVE_A, Some("web"), "alice", t.build)
        .await?;
    let held = h
        .store
        .no_go(
            WAVE_A,
            Some("web"),
            "carol",
            "the database team is not ready",
            t.build + 1,
        )
        .await?;
    assert_eq!(held, vec!["web"]);
    let row = h.task("web/ready").await?;
    assert_eq!((row.approved_by, row.approved_at), (None, None));
    let last = h
        .store
        .events_after(0, Some(WAVE_A), u32::MAX)
        .await?
        .pop()
        .context("no event")?;
    assert_eq!(last.kind, "operator.no_go");
    assert_eq!(
        last.message,
        "no-go for the cutover of `web` by carol: the database team is not ready"
    );
    // Once the gate opened, a no-go is too late.
    h.store
        .approve(WAVE_A, Some("web"), "alice", t.validate)
        .await?;
    let gate = h.drive_to("web/ready", t.validate).await?;
    h.store
        .complete(DRIVER, t.validate, vec![succeeded(&gate, t.validate)])
        .await?;
    let err = h
        .store
        .no_go(
            WAVE_A,
            Some("web"),
            "carol",
            "changed my mind",
            t.validate + 1,
        )
        .await
        .err()
        .context("a no-go after the gate opened was accepted")?;
    assert!(
        format!("{err:#}").starts_with("too late for a no-go: the gate of `web` has opened"),
        "{err:#}"
    );
    // An application without approval has nothing to hold.
    let err = h
        .store
        .no_go(WAVE_A, Some("db"), "carol", "why not", t.validate + 1)
        .await
        .err()
        .context("a no-go for db was accepted")?;
    assert!(
        format!("{err:#}").starts_with("no cutover of wave"),
        "{err:#}"
    );
    Ok(())
}
