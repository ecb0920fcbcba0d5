//! Benchmarks of the executor (BENCHMARKS.md):
//!
//! - B1: 10,000 servers x 6 tasks (and a gate per application) on the rehearsal engine
//!   with zero durations, SQLite with synchronous=FULL: the wall time of running every
//!   task to its end, and the ratio to a baseline measured in the same run that writes
//!   the same rows (claims, task updates, attempts, events) with plain SQL and the same
//!   commit cadence.
//! - B2: one server's six-task chain, a commit per transition: the median time per step.
//!
//! Run: `cargo bench -p orchestrator --bench executor` (add `-- --postgres URL` for the
//! same on PostgreSQL).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::executor::{Executor, Limits, Ports, RunOptions};
use orchestrator::scheduler::SchedulerClock;
use orchestrator::store::Store;
use replication::sim::{SimConfig, SimEngine};
use sea_orm::{ConnectionTrait, Statement};
use tasks::cmdb::RehearsalCmdb;
use tasks::shell::RehearsalShell;
use waves::source::SourceFile;

fn definitions(shape: &waves::synthetic::Shape) -> waves::Loaded {
    let sources: Vec<SourceFile> = waves::synthetic::render(shape)
        .into_iter()
        .map(|(name, text)| SourceFile {
            name: Arc::from(name.as_str()),
            text,
        })
        .collect();
    let loaded = waves::load_sources(None, PathBuf::new(), &sources);
    assert!(
        !loaded.diagnostics.has_errors(),
        "generated definitions must be valid"
    );
    loaded
}

struct Outcome {
    /// Storing the definitions (apply) before the run, not part of `wall`.
    apply: Duration,
    wall: Duration,
    /// Tasks run per batch, and how long each batch took.
    batches: Vec<(usize, Duration)>,
    tasks: usize,
    events: i64,
}

async fn count(store_url: &str, table: &str) -> anyhow::Result<i64> {
    let db = sea_orm::Database::connect(store_url).await?;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}

async fn prepared(
    url: &str,
    loaded: &waves::Loaded,
    full_sync: bool,
) -> anyhow::Result<(Store, i64, usize)> {
    let store = Store::open_with(url, full_sync).await?;
    let start = store.prepare_rehearsal(loaded, "bench").await?;
    let plan = waves::plan::plan(&loaded.definitions);
    Ok((store, start, plan.tasks.len() + plan.gates.len()))
}

async fn run_executor(
    url: &str,
    loaded: &waves::Loaded,
    full_sync: bool,
) -> anyhow::Result<Outcome> {
    let applying = Instant::now();
    let (store, start, tasks) = prepared(url, loaded, full_sync).await?;
    let apply = applying.elapsed();
    let clock = Arc::new(SchedulerClock::warped(start));
    let engine: Arc<dyn replication::ReplicationEngine> = Arc::new(SimEngine::new(
        SimConfig::instant(1),
        Arc::clone(&clock) as Arc<dyn replication::Clock>,
    ));
    let mut engines = std::collections::HashMap::new();
    engines.insert(waves::model::EngineKind::Sim, engine);
    let executor = Executor {
        store: store.clone(),
        definitions: Arc::new(loaded.definitions.clone()),
        ports: Ports {
            engines,
            shell: Arc::new(RehearsalShell),
            cmdb: Arc::new(RehearsalCmdb),
        },
        clock,
        owner: "bench".to_owned(),
        limits: Limits::default(),
    };
    let mut batches = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    executor
        .run(
            RunOptions {
                until_done: true,
                reports: None,
                revision: None,
            },
            |n| {
                batches.push((n, last.elapsed()));
                last = Instant::now();
            },
        )
        .await?;
    let wall = started.elapsed();
    let unfinished = store.unfinished_count().await?;
    assert_eq!(unfinished, 0, "every task must end");
    let events = count(url, "events").await?;
    Ok(Outcome {
        apply,
        wall,
        batches,
        tasks,
        events,
    })
}

/// The same rows written with plain SQL and the same commit cadence: for each batch the
/// executor ran, one transaction that claims the tasks, marks them done, releases their
/// dependants and inserts their attempts and events (the executor commits the outcomes
/// of a batch and the claim of the next together).
async fn run_baseline(
    url: &str,
    loaded: &waves::Loaded,
    full_sync: bool,
    outcome: &Outcome,
) -> anyhow::Result<Duration> {
    let (store, _, _) = prepared(url, loaded, full_sync).await?;
    drop(store);
    let mut options = sea_orm::ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).max_connections(1);
    if url.starts_with("sqlite:") {
        options.map_sqlx_sqlite_opts(move |o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .pragma("temp_store", "memory")
                .synchronous(if full_sync {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
        });
    }
    let db = sea_orm::Database::connect(options).await?;
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT id FROM tasks ORDER BY next_run_at, id".to_owned(),
        ))
        .await?;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String>("", "id"))
        .collect::<Result<_, _>>()?;
    let events_per_task = (outcome.events as f64 / outcome.tasks as f64).max(1.0);
    let quote = |id: &str| format!("'{}'", id.replace('\'', "''"));
    let started = Instant::now();
    let mut offset = 0;
    let mut events_written = 0.0;
    for (n, _) in &outcome.batches {
        let batch = &ids[offset.min(ids.len())..(offset + n).min(ids.len())];
        offset += n;
        if batch.is_empty() {
            continue;
        }
        let list = batch
            .iter()
            .map(|id| quote(id))
            .collect::<Vec<_>>()
            .join(", ");
        let txn = sea_orm::TransactionTrait::begin(&db).await?;
        txn.execute_unprepared(&format!(
            "UPDATE tasks SET lease_owner = 'baseline', lease_expires_at = 1, state = 'running' WHERE id IN ({list})"
        ))
        .await?;
        txn.execute_unprepared(&format!(
            "UPDATE tasks SET state = 'succeeded', attempts = attempts + 1, lease_owner = NULL, finished_at = 2 WHERE id IN ({list})"
        ))
        .await?;
        txn.execute_unprepared(&format!(
            "UPDATE tasks SET pending_deps = pending_deps - 1 WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on IN ({list}))"
        ))
        .await?;
        let attempts = batch
            .iter()
            .map(|id| format!("({}, 1, 1, 2, 'succeeded', '[]', 'ok', NULL)", quote(id)))
            .collect::<Vec<_>>()
            .join(", ");
        txn.execute_unprepared(&format!(
            "INSERT INTO attempts (task_id, number, started_at, finished_at, outcome, checks, output, error) VALUES {attempts}"
        ))
        .await?;
        events_written += batch.len() as f64 * events_per_task;
        let wanted = events_written.floor() as usize;
        let events = (0..wanted)
            .map(|i| {
                format!(
                    "(1, 'wave', 'server', {}, 'task.succeeded', 'done', NULL)",
                    quote(&batch[i % batch.len()])
                )
            })
            .collect::<Vec<_>>();
        events_written -= wanted as f64;
        for chunk in events.chunks(200) {
            txn.execute_unprepared(&format!(
                "INSERT INTO events (at, wave, server, task_id, kind, message, data) VALUES {}",
                chunk.join(", ")
            ))
            .await?;
        }
        txn.commit().await?;
    }
    Ok(started.elapsed())
}

/// The replication checks look once a year (June 1st, after the window): each is one
/// turn like the other tasks, not a look every 30 minutes until the window, which is not
/// the cost per task that B1 and B2 measure.
fn one_look(mut shape: waves::synthetic::Shape) -> waves::synthetic::Shape {
    for server in shape
        .waves
        .iter_mut()
        .flat_map(|w| w.applications.iter_mut())
        .flat_map(|a| a.servers.iter_mut())
    {
        server.verify_schedule = "0 0 1 6 *".to_owned();
    }
    shape
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

async fn benchmarks(
    label: &str,
    url_for: impl Fn(&str) -> String,
    full_sync: bool,
) -> anyhow::Result<()> {
    // B1: 10,000 servers in 10 waves sharing one window.
    let loaded = definitions(&one_look(waves::synthetic::parallel(10, 1000)));
    let outcome = run_executor(&url_for("b1"), &loaded, full_sync).await?;
    let baseline = run_baseline(&url_for("b1-baseline"), &loaded, full_sync, &outcome).await?;
    println!(
        "B1 {label}: {} tasks, {} batches, {} events: executor {:.2}s, baseline (same rows, plain SQL, same commits) {:.2}s, ratio {:.2}x (targets: under 1.5 s, at most 2x)",
        outcome.tasks,
        outcome.batches.len(),
        outcome.events,
        outcome.wall.as_secs_f64(),
        baseline.as_secs_f64(),
        outcome.wall.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
    );
    println!(
        "B1 {label}: storing the definitions first (apply, not in the figure above): {:.2}s",
        outcome.apply.as_secs_f64()
    );
    // B2: one server's chain, a commit per transition.
    let loaded = definitions(&one_look(waves::synthetic::parallel(1, 1)));
    let mut steps = Vec::new();
    for round in 0..20 {
        let outcome = run_executor(&url_for(&format!("b2-{round}")), &loaded, full_sync).await?;
        steps.extend(outcome.batches.iter().map(|(_, d)| *d));
    }
    println!(
        "B2 {label}: {} steps of one server's chain: median {:.2} ms per step (target at most 2.5 ms)",
        steps.len(),
        median(steps).as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let postgres = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let folder = std::env::temp_dir().join(format!("wavelift-bench-{}", std::process::id()));
        std::fs::create_dir_all(&folder)?;
        let sqlite =
            |name: &str| format!("sqlite://{}", folder.join(format!("{name}.db")).display());
        benchmarks("SQLite synchronous=FULL", sqlite, true).await?;
        if let Some(base) = postgres {
            let admin = sea_orm::Database::connect(format!("{base}/postgres")).await?;
            let pid = std::process::id();
            let url =
                |name: &str| format!("{base}/wavelift_bench_{pid}_{}", name.replace('-', "_"));
            for name in ["b1", "b1-baseline"]
                .into_iter()
                .map(str::to_owned)
                .chain((0..20).map(|r| format!("b2-{r}")))
            {
                let db = format!("wavelift_bench_{pid}_{}", name.replace('-', "_"));
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {db}"))
                    .await?;
            }
            benchmarks("PostgreSQL", url, false).await?;
            for name in ["b1", "b1-baseline"]
                .into_iter()
                .map(str::to_owned)
                .chain((0..20).map(|r| format!("b2-{r}")))
            {
                let db = format!("wavelift_bench_{pid}_{}", name.replace('-', "_"));
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&folder);
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
