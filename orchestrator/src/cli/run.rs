//! `wavelift run`: execute every wave's plan on its schedule, all waves in parallel.
//! With PATHs, the definitions are applied first. The state is in the store, so `run`
//! can be stopped (or killed) and started again at any moment.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use super::DefinitionArgs;
use super::state::{self, StateArgs};
use super::status;
use crate::executor::{Executor, Limits, RunOptions, Stopped};
use crate::report::mail::Attempt;
use crate::report::schedule::Reporter;
use crate::scheduler::SchedulerClock;
use crate::scheduler::clock::WARP_KEY;
use crate::scheduler::clock::local_text;
use crate::store::Store;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Wave files or folders to apply first (optional)
    #[arg(value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// Configuration file; by default the wavelift.yaml found among PATH
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Apply PATH even though its plan has errors (as `apply --allow-plan-errors`)
    #[arg(long)]
    pub allow_plan_errors: bool,
    /// Stop when nothing more can happen without an operator
    #[arg(long)]
    pub until_done: bool,
    /// Jump the clock to the next due time whenever nothing is running
    #[arg(long)]
    pub time_warp: bool,
    /// Seed of the rehearsal engine's injected failures (default: the configuration's
    /// `engines.sim.seed`, 1 without one)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Tasks run at once, over all waves
    #[arg(long, default_value_t = 256)]
    pub max_tasks: usize,
    /// Tasks of one wave run at once
    #[arg(long, default_value_t = 256)]
    pub max_tasks_per_wave: usize,
    #[command(flatten)]
    pub state: StateArgs,
}

/// The store: opened as it is, or with PATH applied first; `None` when the apply was
/// refused (said). Shared by `run` and `serve`.
pub(super) async fn open_or_apply(args: &RunArgs) -> anyhow::Result<Option<Store>> {
    if args.paths.is_empty() {
        return Ok(Some(args.state.open_existing().await?));
    }
    let definitions = DefinitionArgs {
        paths: args.paths.clone(),
        config: args.config.clone(),
    };
    let allow = super::apply::Allow {
        force: false,
        plan_errors: args.allow_plan_errors,
        builtin_config: false,
        warped_run: args.time_warp,
    };
    super::apply::apply_paths(&definitions, &args.state, allow).await
}

pub async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let Some(store) = open_or_apply(args).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let Some((executor, revision)) = executor(&store, args).await? else {
        eprintln!(
            "nothing to run: apply definitions first (wavelift apply PATH, or wavelift run PATH)"
        );
        return Ok(ExitCode::FAILURE);
    };
    let reporter = Arc::new(Reporter::new(
        executor.store.clone(),
        Arc::clone(&executor.definitions),
    )?);
    eprintln!("reports go to {}", reporter.mailer.describe());
    let started = Instant::now();
    let mut done = 0usize;
    let (stop, stopped_rx) = tokio::sync::watch::channel(false);
    let bars = tokio::spawn(progress(executor.store.clone(), stopped_rx.clone()));
    let delivery = tokio::spawn(deliver(
        executor.store.clone(),
        Arc::clone(&reporter),
        stopped_rx,
    ));
    let database = database_label(&args.state, &executor);
    let (executor, result) = follow_revisions(
        executor,
        revision,
        &reporter,
        args.until_done,
        &database,
        |count| done += count,
    )
    .await;
    let _ = stop.send(true);
    if let Ok(Stopped::InterruptedWithoutDatabase) = result {
        // Nothing more can be read or delivered: the bars and the delivery end as they are.
        bars.abort();
        delivery.abort();
        outln!("{}", stopped_without_database(&database, "run"));
        return Ok(ExitCode::FAILURE);
    }
    let _ = bars.await;
    let delivered = delivery.await;
    let stopped = result.map_err(|err| stopped_by_store(err, &args.state, &executor))?;
    delivered.context("the report delivery stopped")??;
    let summary = status::summary(&executor.store, None).await?;
    out!("{summary}");
    // Where the state is, as `status` and `events` would need to be told.
    let url = database;
    let flag = if url == waves::config::DEFAULT_DATABASE_URL {
        String::new()
    } else {
        format!(" --database-url {url}")
    };
    match stopped {
        Stopped::AllDone => outln!(
            "every task is final ({} steps in {:.1}s); the state is in {url}: see `wavelift status{flag}` and `wavelift events{flag}`",
            done,
            started.elapsed().as_secs_f64(),
        ),
        Stopped::AwaitingApproval(n) => outln!(
            "{n} cutover gate(s) wait for a go: approve with `wavelift approve WAVE [--app APP]`, then run again"
        ),
        Stopped::Interrupted => outln!("stopped; `wavelift run` goes on from here"),
        Stopped::NewRevision(_) | Stopped::InterruptedWithoutDatabase => {}
    }
    let failed = executor
        .store
        .tasks(None)
        .await?
        .iter()
        .any(|t| t.state == "failed" || t.state == "blocked");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Delivers the reports as their attempts fall due (wall clock), until told to stop; then
/// one last pass, so a run that ends right after a report was recorded delivers it.
pub(super) async fn deliver(
    store: Store,
    reporter: Arc<Reporter>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut failing = false;
    loop {
        let stopping = *stop.borrow();
        let now = jiff::Timestamp::now().as_millisecond();
        // A failure of the store is said once while it lasts (its text may change as it
        // goes on: a reset connection, then one refused); delivery goes on.
        let outcomes = match reporter.mailer.deliver_due(&store, now).await {
            Ok(outcomes) => {
                failing = false;
                outcomes
            }
            Err(err) => {
                if !failing {
                    let text =
                        crate::store::database_failure(&err).unwrap_or_else(|| format!("{err:#}"));
                    eprintln!("report delivery interrupted (tried again shortly): {text}");
                    failing = true;
                }
                Vec::new()
            }
        };
        for (report, attempt) in outcomes {
            let subject = &report.subject;
            match attempt {
                Attempt::Delivered { via } => eprintln!("report delivered via {via}: {subject}"),
                Attempt::Retry { error, at } => eprintln!(
                    "report not delivered ({error}); trying again at {}: {subject}",
                    local_text(at, "UTC")
                ),
                Attempt::Failed { error, kept } => eprintln!(
                    "report given up on ({error}){}: {subject}",
                    kept.map(|k| format!("; kept in {k}")).unwrap_or_default()
                ),
                Attempt::Taken => {}
            }
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
            _ = reporter.wake.notified() => {}
        }
    }
}

/// The store's database as a run names it to people (its password left out).
pub(super) fn database_label(state: &super::state::StateArgs, executor: &Executor) -> String {
    crate::store::redact(&state.database_url(Some(&executor.definitions.config)))
}

/// What a run or serve (`command`) stopped while its database did not answer says.
pub(super) fn stopped_without_database(database: &str, command: &str) -> String {
    format!(
        "stopped while the database {database} did not answer; what the {command} did is stored up to its last step: `wavelift {command}` goes on from there once the database answers"
    )
}

/// A run (or serve) the database stopped, said with the database, once, and what to do;
/// any other error as it is.
pub(super) fn stopped_by_store(
    err: anyhow::Error,
    state: &super::state::StateArgs,
    executor: &Executor,
) -> anyhow::Error {
    match crate::store::database_failure(&err) {
        Some(said) => anyhow::anyhow!(
            "the database {} failed while the run went on: {said}; the run stopped, and what it did is stored up to its last step: start it again once the database answers",
            database_label(state, executor)
        ),
        None => err,
    }
}

/// Runs `executor` (of `revision`), and goes on with each revision applied meanwhile: the
/// same engines, clock and reports, the new definitions. Returns the executor it ended
/// with and how the run stopped.
pub(super) async fn follow_revisions(
    mut executor: Executor,
    mut revision: i64,
    reporter: &Reporter,
    until_done: bool,
    database: &str,
    mut on_batch: impl FnMut(usize),
) -> (Executor, anyhow::Result<Stopped>) {
    let mut outages = Outages::default();
    loop {
        let stopped = executor
            .run(
                RunOptions {
                    until_done,
                    reports: Some(reporter),
                    revision: Some(revision),
                },
                &mut on_batch,
            )
            .await;
        let stopped = match stopped {
            Ok(Stopped::NewRevision(_)) => revision_definitions(&executor.store).await,
            Ok(other) => return (executor, Ok(other)),
            Err(err) => Err(err),
        };
        let definitions = match stopped {
            Ok(Some(found)) => found,
            Ok(None) => return (executor, Ok(Stopped::Interrupted)),
            Err(err) if crate::store::database_unreachable(&err) => {
                match outages.wait(&executor.store, database, &err).await {
                    Outage::Back => continue,
                    Outage::Interrupted => {
                        return (executor, Ok(Stopped::InterruptedWithoutDatabase));
                    }
                    Outage::Over(err) => return (executor, Err(err)),
                }
            }
            Err(err) => return (executor, Err(err)),
        };
        let (id, definitions) = definitions;
        let missing: Vec<String> = definitions
            .waves
            .iter()
            .map(|w| w.engine.value)
            .filter(|kind| !executor.ports.engines.contains_key(kind))
            .map(|kind| kind.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        eprintln!(
            "revision {id} was applied while this run went on: it goes on with it{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    " (start it again for the engine(s) it did not start with: {})",
                    missing.join(", ")
                )
            }
        );
        reporter.follow(Arc::clone(&definitions));
        executor = Executor {
            definitions,
            ..executor
        };
        revision = id;
    }
}

/// How long a run waits for a database that stopped answering before it stops.
const DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// How often it looks meanwhile.
const DATABASE_LOOK: std::time::Duration = std::time::Duration::from_secs(2);
/// An outage that comes back this soon after the last one ended is the same outage: its
/// wait goes on from where it was, unsaid.
const DATABASE_RELAPSE: std::time::Duration = std::time::Duration::from_secs(60);

/// How a wait for the database ended.
enum Outage {
    /// It answers: the run goes on from what is stored (a batch whose commit was lost
    /// runs again once its leases expire, as after a crash).
    Back,
    /// Asked to stop meanwhile.
    Interrupted,
    /// It did not come back in time, or came back with an error not to wait for.
    Over(anyhow::Error),
}

/// The run's waits for its database: a database that answers a look and fails the run
/// again at once (SQLite locked by another process for minutes) is one outage, not a
/// new one every few seconds.
#[derive(Default)]
struct Outages {
    /// When the current outage began, and when it last seemed over.
    current: Option<(Instant, Option<Instant>)>,
}

impl Outages {
    /// Waits, up to [`DATABASE_WAIT`] from the outage's start, for a database that
    /// stopped answering (`err`): said once when it begins and once when it ends.
    async fn wait(&mut self, store: &Store, database: &str, err: &anyhow::Error) -> Outage {
        let began = match self.current {
            Some((began, Some(back))) if back.elapsed() < DATABASE_RELAPSE => began,
            _ => {
                let said =
                    crate::store::database_failure(err).unwrap_or_else(|| format!("{err:#}"));
                eprintln!(
                    "the database {database} does not answer ({said}): the run waits for it, up to {} minutes (Ctrl-C stops it)",
                    DATABASE_WAIT.as_secs() / 60
                );
                Instant::now()
            }
        };
        self.current = Some((began, None));
        let mut interrupt = Box::pin(crate::executor::stop_signal());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DATABASE_LOOK) => {}
                _ = &mut interrupt => return Outage::Interrupted,
            }
            // The look is what the run needs of the database: a write transaction.
            let looked = tokio::select! {
                looked = store.answers() => looked,
                _ = &mut interrupt => return Outage::Interrupted,
            };
            match looked {
                Ok(()) => {
                    if self.current.is_some_and(|(_, back)| back.is_none()) {
                        eprintln!(
                            "the database answers again after {:.0} s: the run goes on",
                            began.elapsed().as_secs_f64()
                        );
                    }
                    self.current = Some((began, Some(Instant::now())));
                    return Outage::Back;
                }
                Err(err)
                    if crate::store::database_unreachable(&err)
                        && began.elapsed() < DATABASE_WAIT => {}
                Err(err) => return Outage::Over(err),
            }
        }
    }
}

/// The store's current revision and its definitions; `None` when nothing was applied.
async fn revision_definitions(
    store: &Store,
) -> anyhow::Result<Option<(i64, Arc<waves::model::Definitions>)>> {
    let Some((revision, sources)) = store.current_sources().await? else {
        return Ok(None);
    };
    let loaded = sources.load();
    if loaded.diagnostics.has_errors() {
        super::validate::print_diagnostics(&loaded.diagnostics)?;
        anyhow::bail!("revision {revision} in the store no longer validates with this Wavelift");
    }
    Ok(Some((revision, Arc::new(loaded.definitions))))
}

/// The executor for the store's current revision, and that revision; `None` when
/// nothing was applied.
pub async fn executor(store: &Store, args: &RunArgs) -> anyhow::Result<Option<(Executor, i64)>> {
    let Some((revision, definitions)) = revision_definitions(store).await? else {
        return Ok(None);
    };
    let stored = store
        .meta_get(WARP_KEY)
        .await?
        .and_then(|v| v.parse::<i64>().ok());
    let now = jiff::Timestamp::now().as_millisecond();
    let clock = Arc::new(if args.time_warp {
        SchedulerClock::warped(stored.unwrap_or(now))
    } else {
        // A store a warped run took ahead: its tasks are dated in that future, which the
        // wall clock reaches only then.
        if let Some(ahead) = stored.filter(|&ms| ms > now) {
            eprintln!(
                "note: a --time-warp run took this store's clock to {}; this run follows the wall clock ({}), so what is dated after it waits until then: run with --time-warp to go on from where it was",
                crate::scheduler::clock::local_text(ahead, "UTC"),
                crate::scheduler::clock::local_text(now, "UTC")
            );
        }
        SchedulerClock::system()
    });
    let (engines, notes) = state::engines(
        &definitions,
        &clock,
        &args.state.state_dir,
        args.seed.unwrap_or(definitions.config.engines.sim.seed),
        false,
        true,
    )
    .await
    .context("cannot start the replication engines")?;
    for note in notes {
        eprintln!("{note}");
    }
    let ports = state::ports(&definitions, engines);
    Ok(Some((
        Executor {
            store: store.clone(),
            definitions,
            ports,
            clock,
            owner: format!("{}:{}", hostname(), std::process::id()),
            limits: Limits {
                global: args.max_tasks.max(1),
                per_wave: args.max_tasks_per_wave.max(1),
            },
        },
        revision,
    )))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "wavelift".to_owned())
}

/// A progress bar per wave on the terminal (tasks final of all, failures, approvals
/// awaited), redrawn four times a second from the store; nothing when stderr is not a
/// terminal.
async fn progress(store: Store, mut stop: tokio::sync::watch::Receiver<bool>) {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} tasks {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: std::collections::BTreeMap<String, ProgressBar> =
        std::collections::BTreeMap::new();
    loop {
        if let Ok(counts) = store.counts_by_wave().await {
            for (wave, counts) in counts {
                let bar = bars.entry(wave.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(counts.total));
                    bar.set_style(style.clone());
                    bar.set_prefix(wave.clone());
                    bar
                });
                bar.set_length(counts.total);
                bar.set_position(counts.finished);
                let mut notes = Vec::new();
                if counts.failed > 0 {
                    notes.push(format!("{} failed or blocked", counts.failed));
                }
                if counts.awaiting_approval > 0 {
                    notes.push(format!("{} awaiting approval", counts.awaiting_approval));
                }
                bar.set_message(notes.join(", "));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = stop.changed() => break,
        }
    }
    for bar in bars.values() {
        bar.finish_and_clear();
    }
}
