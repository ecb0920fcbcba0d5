//! Property tests of the executor: random waves (generated with `waves::synthetic`, on
//! the `sim` engine) and random failure seeds are played to the end in memory, exactly
//! as `wavelift rehearse` does (a SQLite store in a temporary folder, warped time from
//! the earliest build start, the rehearsal engine, shell and CMDB, every approval given
//! up front). Then the store and the engine must show that:
//!
//! - every task of every wave ended in a final state;
//! - no task started before every task it depends on (gates and what they wait for
//!   included) succeeded or was skipped;
//! - no task started before its earliest time, nor after its deadline (except the
//!   cutover, which checks its own window);
//! - a cutover that succeeded finished inside its window;
//! - no task ran again after it succeeded;
//! - the engine never saw two launches of one kind for one server unless an earlier
//!   attempt of that task failed, nor two finalizations or archivals of one server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orchestrator::executor::{Executor, LEASE_MS, Limits, Ports, RunOptions, Stopped};
use orchestrator::scheduler::SchedulerClock;
use orchestrator::store::{Limit, Store, TaskRow};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use replication::ReplicationEngine;
use replication::sim::{ActionRecord, SimConfig, SimEngine};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tasks::cmdb::RehearsalCmdb;
use tasks::shell::RehearsalShell;
use waves::model::TaskKind;
use waves::source::SourceFile;
use waves::synthetic::{self, AppShape, ServerShape, Shape, WaveShape};

// ---------------------------------------------------------------------------------------
// Random shapes, as in waves/tests/plan_properties.rs, smaller: each one is played to
// the end, so a case costs a whole rehearsal.

fn server() -> impl Strategy<Value = ServerShape> {
    (
        1u32..300,
        // Replication is watched on this schedule until the window: every look is a turn,
        // so the schedules are those of real waves, not a look a minute for weeks.
        prop::sample::select(vec![
            "*/15 * * * *",
            "*/30 * * * *",
            "0 * * * *",
            "0 */6 * * *",
        ]),
        prop::option::of(prop::sample::select(vec![
            TaskKind::BootTest,
            TaskKind::PrereqCheck,
            TaskKind::CmdbCleanup,
        ])),
    )
        .prop_map(|(disk_gib, every, skip)| ServerShape {
            disk_gib,
            skip: skip.into_iter().collect(),
            verify_schedule: every.to_owned(),
        })
}

/// Applications with dependencies drawn among those before them (acyclic by
/// construction).
fn wave(index: usize) -> impl Strategy<Value = WaveShape> {
    (
        4u32..12,
        prop::array::uniform3(1u32..8),
        prop::collection::vec(
            (
                prop::collection::vec(server(), 1..4),
                prop::collection::vec((0usize..3, 0usize..3), 0..3),
                any::<bool>(),
            ),
            1..4,
        ),
    )
        .prop_map(move |(window_hours, phase_days, apps)| {
            let applications = apps
                .into_iter()
                .enumerate()
                .map(|(a, (servers, deps, approval))| {
                    let mut depends_on: Vec<(usize, usize)> = deps
                        .into_iter()
                        .filter_map(|(back, app)| {
                            // `back` waves earlier (0: this wave, only earlier apps).
                            let w = index.checked_sub(back)?;
                            let app = if w == index {
                                app.checked_rem(a.max(1))?
                            } else {
                                app % 2
                            };
                            (w < index || app < a).then_some((w, app))
                        })
                        .collect();
                    depends_on.sort();
                    depends_on.dedup();
                    AppShape {
                        servers,
                        depends_on,
                        approval,
                    }
                })
                .collect();
            WaveShape {
                window_hours,
                phase_days,
                applications,
            }
        })
}

/// One to `max_waves` waves.
fn shape(max_waves: usize) -> impl Strategy<Value = Shape> {
    (1usize..=max_waves, 3u32..15).prop_flat_map(|(waves, cadence)| {
        let strategies: Vec<_> = (0..waves).map(wave).collect();
        strategies.prop_map(move |mut waves| {
            // A dependency on an application a wave lacks is dropped.
            let sizes: Vec<usize> = waves.iter().map(|w| w.applications.len()).collect();
            for wave in &mut waves {
                for app in &mut wave.applications {
                    app.depends_on.retain(|(w, a)| *a < sizes[*w]);
                }
            }
            Shape {
                waves,
                cadence_days: cadence,
            }
        })
    })
}

// ---------------------------------------------------------------------------------------
// A rehearsal, wired as cli/rehearse.rs wires it, and what it left behind.

fn load(shape: &Shape) -> waves::Loaded {
    let sources: Vec<SourceFile> = synthetic::render(shape)
        .into_iter()
        .map(|(name, text)| SourceFile {
            name: Arc::from(name.as_str()),
            text,
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
        "generated definitions must be valid: {errors:?}"
    );
    loaded
}

#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    number: i32,
    started_at: i64,
    finished_at: i64,
    outcome: String,
    error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Event {
    at: i64,
    task_id: Option<String>,
    kind: String,
    message: String,
}

#[derive(Clone)]
struct Rehearsal {
    stopped: Stopped,
    tasks: BTreeMap<String, TaskRow>,
    /// (task, the task it depends on), gates included.
    dependencies: Vec<(String, String)>,
    attempts: BTreeMap<String, Vec<Attempt>>,
    events: Vec<Event>,
    actions: Vec<ActionRecord>,
    /// Wave name -> its window, in milliseconds.
    windows: HashMap<String, (i64, i64)>,
}

static FOLDERS: AtomicUsize = AtomicUsize::new(0);

/// How long (on the wall clock) one rehearsal may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(60);

/// How a rehearsal is played.
struct Options {
    config: SimConfig,
    /// Before the executor starts, a worker claims everything runnable and dies with
    /// its leases held (a process killed in the middle of a batch).
    dead_worker: bool,
    limits: Limits,
    hang: Duration,
    /// An operator aborts this cutover (`SERVER/cutover`) once its launch was asked for.
    abort: Option<&'static str>,
}

impl Options {
    /// As `wavelift rehearse` plays: the rehearsal engine with this seed.
    fn rehearsal(seed: u64) -> Options {
        Options::with(SimConfig::rehearsal(seed))
    }

    fn with(config: SimConfig) -> Options {
        Options {
            config,
            dead_worker: false,
            limits: Limits::default(),
            hang: HANG,
            abort: None,
        }
    }
}

/// The rehearsal engine's failures are rare (a boot failure in ten servers, a stall in
/// twenty): harsher engines make the failure paths common too: replication too slow
/// for the phases (missed phases, replication not continuous before the window), slow
/// launches, every first boot impaired, stalls and disconnects. Launches long enough to
/// time out or to overrun a window cost thousands of polls: the rollback test below
/// plays that case once.
#[derive(Debug, Clone)]
struct Harsh {
    bandwidth_mbit: u64,
    launch_minutes: u32,
    boot_failure: f64,
    stall: f64,
    disconnect: f64,
    /// Small limits make the executor put claimed tasks off to the next batch.
    limits: Limits,
}

fn harsh() -> impl Strategy<Value = Harsh> {
    (
        prop::sample::select(vec![20u64, 1000]),
        prop::sample::select(vec![10u32, 40]),
        prop::sample::select(vec![0.0, 0.5, 1.0]),
        prop::sample::select(vec![0.0, 0.5]),
        prop::sample::select(vec![0.0, 0.5]),
        prop::sample::select(vec![(256usize, 128usize), (3, 2)]),
    )
        .prop_map(
            |(
                bandwidth_mbit,
                launch_minutes,
                boot_failure,
                stall,
                disconnect,
                (global, per_wave),
            )| {
                Harsh {
                    bandwidth_mbit,
                    launch_minutes,
                    boot_failure,
                    stall,
                    disconnect,
                    limits: Limits { global, per_wave },
                }
            },
        )
}

fn harsh_config(seed: u64, harsh: &Harsh) -> SimConfig {
    SimConfig {
        bandwidth_bits_per_second: harsh.bandwidth_mbit * 1_000_000,
        launch_seconds: f64::from(harsh.launch_minutes) * 60.0,
        boot_failure_probability: harsh.boot_failure,
        stall_probability: harsh.stall,
        disconnect_probability: harsh.disconnect,
        ..SimConfig::rehearsal(seed)
    }
}

fn rehearse(shape: &Shape, options: Options) -> Rehearsal {
    let seed = options.config.seed;
    let folder = std::env::temp_dir().join(format!(
        "wavelift-executor-properties-{}-{}",
        std::process::id(),
        FOLDERS.fetch_add(1, Ordering::SeqCst)
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("cannot start a tokio runtime: {err}"));
    let result = runtime.block_on(rehearse_in(shape, options, &folder));
    let _ = std::fs::remove_dir_all(&folder);
    result.unwrap_or_else(|err| panic!("the rehearsal (seed {seed}) failed: {err:?}"))
}

async fn rehearse_in(
    shape: &Shape,
    options: Options,
    folder: &std::path::Path,
) -> anyhow::Result<Rehearsal> {
    let Options {
        config,
        dead_worker,
        limits,
        hang,
        abort,
    } = options;
    let loaded = load(shape);
    let definitions = &loaded.definitions;
    let url = format!("sqlite://{}", folder.join("rehearsal.db").display());
    let store = Store::open(&url).await?;
    let start = store.prepare_rehearsal(&loaded, "rehearsal").await?;
    if dead_worker {
        let held = store
            .claim(
                "dead-worker",
                start,
                start + LEASE_MS,
                Limit {
                    total: 1000,
                    per_wave: 1000,
                },
            )
            .await?;
        anyhow::ensure!(!held.is_empty(), "the dead worker claimed nothing");
    }
    let clock = Arc::new(SchedulerClock::warped(start));
    let sim = Arc::new(SimEngine::new(
        config,
        Arc::clone(&clock) as Arc<dyn replication::Clock>,
    ));
    let engine: Arc<dyn ReplicationEngine> = Arc::clone(&sim) as Arc<dyn ReplicationEngine>;
    let engines = definitions
        .waves
        .iter()
        .map(|w| (w.engine.value, Arc::clone(&engine)))
        .collect();
    let executor = Executor {
        store: store.clone(),
        definitions: Arc::new(definitions.clone()),
        ports: Ports {
            engines,
            shell: Arc::new(RehearsalShell),
            cmdb: Arc::new(RehearsalCmdb),
        },
        clock,
        owner: "rehearsal".to_owned(),
        limits,
    };
    let run = executor.run(
        RunOptions {
            until_done: true,
            reports: None,
            revision: None,
        },
        |_| {},
    );
    // The operator, beside the run: waits for the cutover's launch, then aborts it.
    let operator = async {
        let Some(id) = abort else {
            return std::future::pending::<anyhow::Result<()>>().await;
        };
        loop {
            let tasks = store.tasks(None).await?;
            let task = tasks
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| anyhow::anyhow!("no task {id}"))?;
            if task.state == "running"
                && task
                    .step
                    .as_deref()
                    .is_some_and(|s| s.contains("\"job\":\""))
            {
                store
                    .abort(id, "tester", "a blocker was found", clock_now(&executor))
                    .await?;
                return std::future::pending().await;
            }
            anyhow::ensure!(
                task.state != "succeeded",
                "{id} succeeded before it was aborted"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let ran = async {
        tokio::select! {
            stopped = run => stopped,
            failed = operator => Err(failed.err().unwrap_or_else(|| anyhow::anyhow!("the operator stopped"))),
        }
    };
    let stopped = tokio::time::timeout(hang, ran)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the executor did not finish within {hang:?} on the wall clock (warped time stands at {})",
                clock_now(&executor)
            )
        })??;

    let raw = Database::connect(url.as_str()).await?;
    let tasks = store
        .tasks(None)
        .await?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let dependencies = raw_pairs(&raw).await?;
    let attempts = raw_attempts(&raw).await?;
    let events = store
        .events_after(0, None, u32::MAX)
        .await?
        .into_iter()
        .map(|e| Event {
            at: e.at,
            task_id: e.task_id,
            kind: e.kind,
            message: e.message,
        })
        .collect();
    let windows = definitions
        .waves
        .iter()
        .map(|w| {
            (
                w.name.value.clone(),
                (
                    w.window.interval.start.timestamp().as_millisecond(),
                    w.window.interval.end.timestamp().as_millisecond(),
                ),
            )
        })
        .collect();
    raw.close().await?;
    Ok(Rehearsal {
        stopped,
        tasks,
        dependencies,
        attempts,
        events,
        actions: sim.actions(),
        windows,
    })
}

fn clock_now(executor: &Executor) -> i64 {
    executor.clock.now_ms()
}

async fn raw_pairs(raw: &DatabaseConnection) -> anyhow::Result<Vec<(String, String)>> {
    let rows = raw
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT task_id, depends_on FROM task_dependencies ORDER BY task_id, depends_on",
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "task_id")?, r.try_get("", "depends_on")?)))
        .collect()
}

async fn raw_attempts(raw: &DatabaseConnection) -> anyhow::Result<BTreeMap<String, Vec<Attempt>>> {
    let rows = raw
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT task_id, number, started_at, finished_at, outcome, error FROM attempts ORDER BY id",
        ))
        .await?;
    let mut out: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    for r in rows {
        out.entry(r.try_get("", "task_id")?)
            .or_default()
            .push(Attempt {
                number: r.try_get("", "number")?,
                started_at: r.try_get("", "started_at")?,
                finished_at: r.try_get("", "finished_at")?,
                outcome: r.try_get("", "outcome")?,
                error: r.try_get("", "error")?,
            });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The invariants.

impl Rehearsal {
    fn task(&self, id: &str) -> Result<&TaskRow, TestCaseError> {
        self.tasks
            .get(id)
            .ok_or_else(|| TestCaseError::fail(format!("no task {id} in the store")))
    }
}

fn check(r: &Rehearsal) -> Result<(), TestCaseError> {
    // Every task of every wave is final, and the run said so.
    let unfinished: Vec<String> = r
        .tasks
        .values()
        .filter(|t| !t.state().is_final())
        .map(|t| format!("{} {}", t.id, t.state))
        .collect();
    prop_assert!(
        unfinished.is_empty(),
        "tasks left unfinished: {unfinished:?}"
    );
    prop_assert_eq!(&r.stopped, &Stopped::AllDone);

    // Dependencies: nothing started before what it needs was done.
    for (id, dep) in &r.dependencies {
        let task = r.task(id)?;
        let dep = r.task(dep)?;
        let Some(started) = task.started_at else {
            continue;
        };
        prop_assert!(
            matches!(dep.state.as_str(), "succeeded" | "skipped"),
            "{} started at {} although {} it depends on is {}",
            task.id,
            started,
            dep.id,
            dep.state
        );
        // A recurring check lets what depends on it start when it is first ready.
        if let Some(done) = dep.released_at.or(dep.finished_at) {
            prop_assert!(
                done <= started,
                "{} started at {started}, before {} was done (or ready) at {done}",
                task.id,
                dep.id
            );
        }
    }
    // A task that could not run is blocked only because something it needs failed.
    for task in r.tasks.values().filter(|t| t.state == "blocked") {
        let cause = r
            .dependencies
            .iter()
            .filter(|(id, _)| *id == task.id)
            .filter_map(|(_, dep)| r.tasks.get(dep))
            .any(|d| matches!(d.state.as_str(), "failed" | "cancelled" | "blocked"));
        prop_assert!(cause, "{} is blocked but nothing it needs failed", task.id);
        prop_assert!(
            task.started_at.is_none(),
            "{} is blocked but was claimed",
            task.id
        );
    }

    // Times: nothing is claimed before its earliest time. After its deadline a task
    // (but the cutover, which checks its own window) may only be refused: failed at
    // once for having missed its phase, with nothing done.
    for task in r.tasks.values() {
        let Some(claimed) = task.started_at else {
            continue;
        };
        prop_assert!(
            claimed >= task.earliest,
            "{} was claimed at {claimed}, before its earliest {}",
            task.id,
            task.earliest
        );
        let Some(deadline) = task.deadline else {
            continue;
        };
        if task.kind == "cutover" || claimed <= deadline {
            continue;
        }
        let attempts = r.attempts.get(&task.id).map(Vec::len).unwrap_or(0);
        let done: Vec<&str> = r
            .events
            .iter()
            .filter(|e| e.task_id.as_deref() == Some(task.id.as_str()) && e.kind != "task.failed")
            .map(|e| e.kind.as_str())
            .collect();
        prop_assert!(
            task.state == "failed"
                && task
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("missed its phase"))
                && attempts == 1
                && done.is_empty(),
            "{} started at {claimed}, after its deadline {deadline}: {} ({:?}), {attempts} attempt(s), events {done:?}",
            task.id,
            task.state,
            task.reason
        );
    }

    // A gate that asks for a go opened only with one.
    for gate in r
        .tasks
        .values()
        .filter(|t| t.kind == "gate" && t.state == "succeeded")
    {
        prop_assert!(
            !gate.approval_required || gate.approved_by.is_some(),
            "{} opened without the approval it asks for",
            gate.id
        );
    }

    // A cutover that succeeded finished inside its window.
    for task in r
        .tasks
        .values()
        .filter(|t| t.kind == "cutover" && t.state == "succeeded")
    {
        let (start, end) = r.windows[&task.wave];
        let finished = task.finished_at.unwrap_or(i64::MIN);
        prop_assert!(
            start <= finished && finished <= end,
            "{} finished at {finished}, outside its window {start}..{end}",
            task.id
        );
    }

    // Nothing ran again after a success.
    for task in r.tasks.values() {
        let attempts = r
            .attempts
            .get(&task.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        prop_assert_eq!(
            attempts.len(),
            usize::try_from(task.attempts).unwrap_or(usize::MAX),
            "{}: the attempt count and the attempts recorded differ",
            &task.id
        );
        for (i, attempt) in attempts.iter().enumerate() {
            prop_assert_eq!(
                attempt.number as usize,
                i + 1,
                "{} attempt numbers",
                &task.id
            );
            prop_assert!(attempt.started_at <= attempt.finished_at, "{}", &task.id);
        }
        if let Some(at) = attempts.iter().position(|a| a.outcome == "succeeded") {
            prop_assert_eq!(
                at + 1,
                attempts.len(),
                "{} ran again after it succeeded: {:?}",
                &task.id,
                attempts
            );
            prop_assert_eq!(task.state.as_str(), "succeeded");
        }
        if task.state == "succeeded" {
            prop_assert!(
                attempts.last().is_some_and(|a| a.outcome == "succeeded"),
                "{} succeeded without a succeeding attempt: {:?}",
                task.id,
                attempts
            );
            let success = r.events.iter().position(|e| {
                e.task_id.as_deref() == Some(task.id.as_str())
                    && matches!(e.kind.as_str(), "task.succeeded" | "gate.open")
            });
            let success = success.ok_or_else(|| {
                TestCaseError::fail(format!("{} succeeded without an event", task.id))
            })?;
            let later: Vec<&Event> = r.events[success + 1..]
                .iter()
                .filter(|e| e.task_id.as_deref() == Some(task.id.as_str()))
                .collect();
            prop_assert!(
                later.is_empty(),
                "{} went on after it succeeded: {later:?}",
                task.id
            );
        }
    }

    // A boot test that failed on its target (unhealthy, or a check) terminated it
    // before it failed: no test machine is left running for a retry to find again.
    for (task, attempts) in &r.attempts {
        let Some(server) = task.strip_suffix("/boot_test") else {
            continue;
        };
        for attempt in attempts {
            let on_target = attempt.error.as_deref().is_some_and(|e| {
                e.contains("did not pass its status checks") || e.contains("boot test check failed")
            });
            if !on_target
                || attempt
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("left running"))
            {
                continue;
            }
            let terminated = r.actions.iter().any(|a| {
                a.source == server
                    && a.action == "terminate_targets"
                    && a.detail.starts_with("test: ")
                    && a.at.as_millisecond() <= attempt.finished_at
                    && a.at.as_millisecond() >= attempt.started_at
            });
            prop_assert!(
                terminated,
                "{} failed on its target without terminating it: {:?}",
                task,
                attempt
            );
        }
    }

    // The engine: no launch repeated without a failed attempt before it, no second
    // finalize or archive.
    let mut by_server: BTreeMap<(&str, &str), Vec<&ActionRecord>> = BTreeMap::new();
    for action in &r.actions {
        let what = match action.action.as_str() {
            "start_launch" if action.detail.contains("test launch") => "test launch",
            "start_launch" if action.detail.contains("cutover launch") => "cutover launch",
            other => other,
        };
        by_server
            .entry((action.source.as_str(), what))
            .or_default()
            .push(action);
    }
    for ((server, what), actions) in &by_server {
        let task = match *what {
            "test launch" => format!("{server}/boot_test"),
            "cutover launch" => format!("{server}/cutover"),
            "register" | "finalize_cutover" | "archive" => {
                prop_assert_eq!(
                    actions.len(),
                    1,
                    "{} {} {} times: {:?}",
                    what,
                    server,
                    actions.len(),
                    actions
                );
                continue;
            }
            _ => continue,
        };
        let failures: Vec<i64> = r
            .attempts
            .get(&task)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|a| a.outcome != "succeeded")
            .map(|a| a.finished_at)
            .collect();
        for (k, action) in actions.iter().enumerate().skip(1) {
            let at = action.at.as_millisecond();
            let failed_before = failures.iter().filter(|&&f| f <= at).count();
            prop_assert!(
                failed_before >= k,
                "{} started launch {} of its kind at {} ({}) after only {} failed attempt(s) of {}",
                server,
                k + 1,
                at,
                what,
                failed_before,
                task
            );
        }
    }
    Ok(())
}

/// Each case is a whole rehearsal (about a second in debug; a harsh one a few): few
/// cases by default, more with `PROPTEST_CASES=N` for a deeper search; no failure file
/// (integration tests have no lib.rs beside them).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(6))]

    #[test]
    fn rehearsals_of_random_waves_keep_the_executors_invariants(
        shape in shape(3),
        seed in any::<u64>(),
    ) {
        let rehearsal = rehearse(&shape, Options::rehearsal(seed));
        check(&rehearsal)?;
    }
}

proptest! {
    #![proptest_config(cases(3))]

    #[test]
    fn rehearsals_on_a_harsh_engine_keep_the_executors_invariants(
        shape in shape(2),
        seed in any::<u64>(),
        harsh in harsh(),
    ) {
        let options = Options {
            limits: harsh.limits,
            ..Options::with(harsh_config(seed, &harsh))
        };
        let rehearsal = rehearse(&shape, options);
        check(&rehearsal)?;
    }
}

/// Final states, per task: what must not depend on anything but the shape and the seed.
/// (id, state, attempts, started_at, finished_at).
type FinalState = (String, String, i32, Option<i64>, Option<i64>);

fn final_states(r: &Rehearsal) -> Vec<FinalState> {
    r.tasks
        .values()
        .map(|t| {
            (
                t.id.clone(),
                t.state.clone(),
                t.attempts,
                t.started_at,
                t.finished_at,
            )
        })
        .collect()
}

const SEED_WITH_A_RETRY: u64 = 7;

#[test]
fn the_same_shape_and_seed_give_the_same_final_states() {
    // Two waves of eight servers; with this seed a first boot fails and is retried, so
    // the comparison covers a failure too.
    let shape = synthetic::uniform(2, 8);
    let first = rehearse(&shape, Options::rehearsal(SEED_WITH_A_RETRY));
    let second = rehearse(&shape, Options::rehearsal(SEED_WITH_A_RETRY));
    assert!(
        first.tasks.values().any(|t| t.state == "succeeded"),
        "the rehearsal did nothing"
    );
    assert!(
        first
            .attempts
            .values()
            .flatten()
            .any(|a| a.outcome == "retrying"),
        "seed {SEED_WITH_A_RETRY} no longer injects a failure: choose another"
    );
    assert_eq!(final_states(&first), final_states(&second));
    let reasons = |r: &Rehearsal| -> Vec<Option<String>> {
        r.tasks.values().map(|t| t.reason.clone()).collect()
    };
    assert_eq!(reasons(&first), reasons(&second));
    assert_eq!(first.actions, second.actions);
    if let Err(err) = check(&first) {
        panic!("{err}");
    }
}

/// One wave with a four-hour window and two applications, the second waiting for the
/// first's cutover: with launches of over two hours, the second cutover cannot finish
/// inside the window.
fn chained_in_a_short_window() -> Shape {
    // No boot tests: a test launch as slow as these cutover launches (130 minutes) would
    // run past the boot test's timeout (2h) and fail it.
    let server = ServerShape {
        disk_gib: 20,
        skip: vec![TaskKind::BootTest],
        verify_schedule: "*/30 * * * *".to_owned(),
    };
    Shape {
        waves: vec![WaveShape {
            window_hours: 4,
            phase_days: [3, 3, 3],
            applications: vec![
                AppShape {
                    servers: vec![server.clone()],
                    depends_on: Vec::new(),
                    approval: true,
                },
                AppShape {
                    servers: vec![server],
                    depends_on: vec![(0, 0)],
                    approval: false,
                },
            ],
        }],
        cadence_days: 7,
    }
}

/// The rehearsal engine without failures, its launches taking `minutes`.
fn steady(seed: u64, minutes: f64) -> SimConfig {
    SimConfig {
        launch_seconds: minutes * 60.0,
        boot_failure_probability: 0.0,
        stall_probability: 0.0,
        disconnect_probability: 0.0,
        ..SimConfig::rehearsal(seed)
    }
}

#[test]
fn a_cutover_that_cannot_finish_in_its_window_is_rolled_back() {
    let r = rehearse(
        &chained_in_a_short_window(),
        Options::with(steady(3, 130.0)),
    );
    if let Err(err) = check(&r) {
        panic!("{err}");
    }
    let state = |id: &str| {
        r.tasks
            .get(id)
            .map(|t| t.state.as_str())
            .unwrap_or("missing")
    };
    assert_eq!(state("srv-0/cutover"), "succeeded");
    assert_eq!(state("srv-1/cutover"), "failed");
    let reason = r.tasks["srv-1/cutover"].reason.clone().unwrap_or_default();
    assert!(reason.contains("rolled back"), "{reason}");
    assert_eq!(state("srv-1/cmdb_cleanup"), "blocked");
    let acted = |server: &str, action: &str| {
        r.actions
            .iter()
            .filter(|a| a.source == server && a.action == action)
            .count()
    };
    assert_eq!(acted("srv-1", "finalize_cutover"), 0);
    assert_eq!(acted("srv-1", "archive"), 0);
    assert!(
        r.actions.iter().any(|a| a.source == "srv-1"
            && a.action == "terminate_targets"
            && a.detail.contains("cutover")),
        "the cutover target of the rolled back server was not terminated: {:#?}",
        r.actions
    );
}

/// An operator aborts a cutover whose launch is under way: it is rolled back (its
/// target terminated, never finalized), fails with the operator's reason, and what
/// depends on it is blocked; every invariant holds.
#[test]
fn a_cutover_an_operator_aborts_is_rolled_back() {
    let options = Options {
        abort: Some("srv-0/cutover"),
        ..Options::with(steady(5, 30.0))
    };
    let r = rehearse(&chained_in_a_short_window(), options);
    if let Err(err) = check(&r) {
        panic!("{err}");
    }
    let task = &r.tasks["srv-0/cutover"];
    assert_eq!(task.state, "failed");
    assert_eq!(
        task.reason.as_deref(),
        Some("rolled back: aborted by tester: a blocker was found")
    );
    assert_eq!(r.tasks["srv-0/cmdb_cleanup"].state, "blocked");
    assert_eq!(r.tasks["srv-1/cutover"].state, "blocked");
    let acted = |action: &str| {
        r.actions
            .iter()
            .filter(|a| a.source == "srv-0" && a.action == action)
            .count()
    };
    assert_eq!(acted("finalize_cutover"), 0);
    assert!(acted("terminate_targets") >= 1, "{:#?}", r.actions);
    assert!(
        r.events
            .iter()
            .any(|e| e.kind == "operator.abort" && e.message.contains("a blocker was found"))
    );
}

/// A worker killed while it held leases: once they expire, the next executor takes the
/// tasks over. With warped time it jumps to the moment the leases expire.
#[test]
fn a_lease_left_by_a_dead_worker_does_not_stall_a_warped_executor() {
    let options = Options {
        dead_worker: true,
        // Under the lease (60 s) that a stalled executor would wait out, with room for a
        // machine busy with other builds (10 s was seen to be too tight there).
        hang: Duration::from_secs(30),
        ..Options::rehearsal(11)
    };
    let r = rehearse(&synthetic::uniform(1, 2), options);
    if let Err(err) = check(&r) {
        panic!("{err}");
    }
    assert!(r.tasks.values().all(|t| t.state == "succeeded"));
}

type Breach = Box<dyn Fn(&mut Rehearsal)>;

/// The checks above can fail: each breach of an invariant, written into a good
/// rehearsal's record, is caught.
#[test]
fn the_checks_catch_each_breach_they_look_for() {
    let good = rehearse(&synthetic::uniform(1, 2), Options::rehearsal(1));
    if let Err(err) = check(&good) {
        panic!("the untouched rehearsal must pass: {err}");
    }
    let breaches: Vec<(&str, Breach)> = vec![
        (
            "a task left unfinished",
            Box::new(|r| set_state(r, "srv-0/cmdb_cleanup", "running")),
        ),
        (
            "a task started before its dependency finished",
            Box::new(|r| {
                let done = r.tasks["srv-0/prereq_check"].finished_at.unwrap_or(0);
                if let Some(t) = r.tasks.get_mut("srv-0/agent_push") {
                    t.started_at = Some(done - 1);
                }
            }),
        ),
        (
            "a task started after its deadline",
            Box::new(|r| {
                if let Some(t) = r.tasks.get_mut("srv-1/boot_test") {
                    t.started_at = t.deadline.map(|d| d + 1);
                }
            }),
        ),
        (
            "a cutover that finished after its window",
            Box::new(|r| {
                let end = r.windows["wave-0"].1;
                if let Some(t) = r.tasks.get_mut("srv-1/cutover") {
                    t.finished_at = Some(end + 1);
                }
            }),
        ),
        (
            "an attempt after the success",
            Box::new(|r| {
                if let Some(attempts) = r.attempts.get_mut("srv-0/boot_test") {
                    let mut again = attempts[attempts.len() - 1].clone();
                    again.number += 1;
                    attempts.push(again);
                }
                if let Some(t) = r.tasks.get_mut("srv-0/boot_test") {
                    t.attempts += 1;
                }
            }),
        ),
        (
            "a second finalize",
            Box::new(|r| duplicate_action(r, "srv-0", "finalize_cutover")),
        ),
        (
            "a second test launch without a failure",
            Box::new(|r| duplicate_action(r, "srv-1", "start_launch")),
        ),
    ];
    for (breach, apply) in breaches {
        let mut broken = good.clone();
        apply(&mut broken);
        assert!(check(&broken).is_err(), "the checks missed {breach}");
    }
    // A boot test that failed on its target and left it running is named as that.
    let mut broken = good.clone();
    if let Some(attempts) = broken.attempts.get_mut("srv-0/boot_test") {
        for attempt in attempts.iter_mut() {
            attempt.number += 1;
        }
        attempts.insert(
            0,
            Attempt {
                number: 1,
                started_at: 0,
                finished_at: 0,
                outcome: "failed".to_owned(),
                error: Some(
                    "the test target t-1 did not pass its status checks (Impaired)".to_owned(),
                ),
            },
        );
    }
    if let Some(t) = broken.tasks.get_mut("srv-0/boot_test") {
        t.attempts += 1;
    }
    let err = check(&broken)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("srv-0/boot_test failed on its target without terminating it"),
        "the checks missed a test target left running: {err}"
    );
}

fn set_state(r: &mut Rehearsal, id: &str, state: &str) {
    if let Some(t) = r.tasks.get_mut(id) {
        t.state = state.to_owned();
    }
}

fn duplicate_action(r: &mut Rehearsal, server: &str, action: &str) {
    let found = r
        .actions
        .iter()
        .find(|a| a.source == server && a.action == action)
        .cloned();
    if let Some(found) = found {
        r.actions.push(found);
    }
}

/// MGN's launch quotas (the rehearsal engine enforces them: 200 servers per job, 20
/// jobs at once, 200 servers across active jobs): a wave of 500 servers whose tests and
/// cutovers fall due together keeps every quota (a launch over one would fail its task)
/// and uses them: jobs of up to 200 servers, a few for the whole wave.
#[test]
fn a_wave_of_500_servers_keeps_mgns_quotas_and_shares_its_launch_jobs() {
    let mut shape = synthetic::parallel(1, 500);
    // The replication checks look daily: the quotas are about launches, not about three
    // weeks of half-hourly looks at 500 servers.
    for app in &mut shape.waves[0].applications {
        for server in &mut app.servers {
            server.verify_schedule = "0 6 * * *".to_owned();
        }
    }
    let config = SimConfig {
        boot_failure_probability: 0.0,
        stall_probability: 0.0,
        disconnect_probability: 0.0,
        ..SimConfig::rehearsal(3)
    };
    let r = rehearse(
        &shape,
        Options {
            hang: Duration::from_secs(300),
            ..Options::with(config)
        },
    );
    if let Err(err) = check(&r) {
        panic!("{err}");
    }
    let unfinished: Vec<&TaskRow> = r.tasks.values().filter(|t| t.state == "failed").collect();
    assert!(
        unfinished.is_empty(),
        "every task succeeded: {:?}",
        &unfinished[..unfinished.len().min(3)]
    );
    // The engine refuses a launch over a quota, so none was exceeded; tasks that met
    // one waited for capacity (this wave does meet them) instead of failing.
    assert!(
        r.events
            .iter()
            .any(|e| e.message.contains("waiting for launch capacity")),
        "the wave reaches MGN's quotas, which is what this test is about"
    );
    // Servers per launch job, by kind.
    let mut jobs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for action in r.actions.iter().filter(|a| a.action == "start_launch") {
        let (job, rest) = action.detail.split_once(':').expect("JOB: KIND launch ...");
        let kind = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *jobs.entry((kind, job.to_owned())).or_default() += 1;
    }
    for kind in ["test", "cutover"] {
        let sizes: Vec<usize> = jobs
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 500, "{kind}: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 200), "{kind}: {sizes:?}");
        // A job takes the launches of one executor batch (256 tasks, shared with the
        // other tasks due then): about half of MGN's 200, so 500 servers take five
        // jobs, not one job per server.
        assert!(
            sizes.len() <= 5 && sizes.iter().filter(|&&n| n >= 100).count() >= 2,
            "{kind} launches share their jobs: {sizes:?}"
        );
    }
}
