//! The command line: arguments are parsed by clap (usage errors exit with 2), then each
//! subcommand runs and says how it ended: 0 for success, 1 when the definitions have
//! errors or the work failed.

use std::path::PathBuf;

/// `print!` that returns an error instead of panicking when stdout is closed (for
/// example `wavelift events | head`); `main` ends quietly on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `println!`, the same way as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod apply;
mod estimate;
mod events;
mod failback;
mod import;
mod matching;
mod plan;
mod rehearse;
mod replication;
mod replicator;
mod report;
mod run;
mod serve;
mod serve_mgn;
mod state;
mod status;
mod steer;
mod token;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wavelift",
    version,
    about = "Wave-based migration factory orchestrator",
    long_about = "Wave-based migration factory orchestrator: validate, plan and estimate waves \
                  written in YAML, and import Cloud Migration Factory intake forms."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the definitions are: files or folders, and the configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct DefinitionArgs {
    /// Wave files or folders of them (searched recursively for *.yaml and *.yml)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Configuration file; by default the wavelift.yaml found among PATH
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiagnosticFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check wave files and the configuration; print every problem with its place
    Validate {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// How to print the diagnostics
        #[arg(long, value_enum, default_value = "text")]
        format: DiagnosticFormat,
    },
    /// Show what will happen to every server and when: phases, tasks, gates, findings
    Plan {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: plan::PlanFormat,
    },
    /// Estimate replication time and the bandwidth needed, and check each window
    Estimate {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: DiagnosticFormat,
    },
    /// Validate and store a new revision of the definitions; print what changed
    Apply {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Remove servers even while their tasks run (those tasks are cancelled)
        #[arg(long)]
        force: bool,
        /// Store the definitions even though their plan has errors (a window shorter
        /// than the cutover chain, a schedule that never fires...)
        #[arg(long)]
        allow_plan_errors: bool,
        /// Apply without a configuration file even though the last revision had one:
        /// the built-in configuration (local engine, outbox, no hooks) replaces it
        #[arg(long, conflicts_with = "config")]
        builtin_config: bool,
        #[command(flatten)]
        state: state::StateArgs,
    },
    /// Execute the waves' plans on their schedules (optionally applying PATHs first)
    Run(run::RunArgs),
    /// Start, stop, pause or resume a server's replication
    Replication(replication::ReplicationArgs),
    /// Match the mgn waves' servers to MGN's source servers and say what did not match
    Match {
        #[command(flatten)]
        definitions: DefinitionArgs,
    },
    /// Run the waves and serve the dashboard and its API (127.0.0.1:8080 by default)
    Serve(serve::ServeArgs),
    /// Run the local engine's replication server on its own: agents replicate while
    /// run or serve restart, and other commands use this process's engine
    Replicator(replicator::ReplicatorArgs),
    /// API tokens for the dashboard and the API
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Where every wave, server and task stands
    Status {
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        /// Every task instance as JSON (see docs/status-json.md)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: state::StateArgs,
    },
    /// Give the go for a wave's cutovers (or one application's)
    Approve {
        /// The wave
        wave: String,
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Who approves (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        #[command(flatten)]
        state: state::StateArgs,
    },
    /// Withhold or withdraw the go for cutovers that have not started, with the reason
    NoGo {
        /// The wave
        wave: String,
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        #[command(flatten)]
        decision: Decision,
    },
    /// Run a failed, blocked or cancelled task again; a succeeded agent_push runs again
    /// to install and start its agent anew (one that stopped)
    Retry(TaskLever),
    /// Mark a task skipped: what depends on it goes on
    Skip(TaskLever),
    /// Cancel a task: what depends on it is blocked
    Cancel(TaskLever),
    /// Stop a running cutover: it is rolled back (its target terminated, the source
    /// started again, ready for cutover again) and fails with the reason
    Abort {
        /// SERVER/cutover
        task: String,
        #[command(flatten)]
        decision: Decision,
    },
    /// Bring a cut-over server back on its own disks: the copy replicated back,
    /// written onto the source, then replication as before (local engine)
    Failback(failback::FailbackArgs),
    /// Launch a cutover copy of a server from a recovery point of your choosing, or
    /// list its recovery points (local engine)
    Failover(failback::FailoverArgs),
    /// The job progress log
    Events {
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        /// Keep printing new events
        #[arg(long)]
        follow: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: state::StateArgs,
    },
    /// A report for people (readiness, cutover, digest) of a wave, as HTML and text
    Report {
        /// The wave
        wave: String,
        /// Which report
        #[arg(long, value_enum, default_value_t = crate::report::Kind::Readiness)]
        kind: crate::report::Kind,
        /// Write the HTML here (and the plain text beside it, as .txt); without it the
        /// plain text is printed
        #[arg(long, value_name = "FILE.html")]
        out: Option<std::path::PathBuf>,
        /// Send it to the wave's `notify` list and its applications' owners: over SMTP
        /// when configured (smtp: or WAVELIFT_SMTP_URL), to the outbox folder otherwise;
        /// one not delivered is retried by `wavelift run`
        #[arg(long, conflicts_with = "out")]
        send: bool,
        #[command(flatten)]
        state: state::StateArgs,
    },
    /// Play whole waves on the rehearsal engine in seconds: timeline and risks
    Rehearse {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Seed of the injected failures: the same seed plays the same rehearsal
        /// (default: the configuration's `engines.sim.seed`, 1 without one)
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The rehearsal engine behind other engines' APIs, for testing their clients
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Turn definitions kept in other tools into wave files
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

/// A task to steer, by its id (SERVER/KIND, or APPLICATION/ready for a gate).
#[derive(Debug, clap::Args)]
pub struct TaskLever {
    /// The task: SERVER/KIND (dir-01/boot_test), or APPLICATION/ready for a gate; see
    /// wavelift status
    task: String,
    /// Who does it (default: $USER)
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    state: state::StateArgs,
}

/// A lever that needs its reason: the reason, who, and the store.
#[derive(Debug, clap::Args)]
pub struct Decision {
    /// Why (recorded in the log)
    #[arg(long)]
    reason: String,
    /// Who decides (default: $USER)
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    state: state::StateArgs,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// An AWS Application Migration Service endpoint on loopback whose source servers
    /// are the waves' servers (MGN's JSON protocol, the rehearsal engine behind it)
    ServeMgn(serve_mgn::ServeMgnArgs),
}

#[derive(Debug, Subcommand)]
enum ImportSource {
    /// A Cloud Migration Factory intake form (CSV) into one wave file per wave
    Cmf(import::CmfArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = dispatch(cli.command);
    match result {
        Ok(code) => code,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Commands that touch the store run on a tokio runtime; the others need none.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Apply {
            definitions,
            force,
            allow_plan_errors,
            builtin_config,
            state,
        } => block_on(apply::run(
            &definitions,
            &state,
            apply::Allow {
                force,
                plan_errors: allow_plan_errors,
                builtin_config,
                warped_run: false,
            },
        )),
        // The commands that run until stopped catch Ctrl-C and SIGTERM from their first
        // moment: a stop while they start is kept for their loop.
        Command::Run(args) => block_on(async move {
            crate::executor::catch_stop_signals()?;
            run::run(&args).await
        }),
        Command::Serve(args) => block_on(async move {
            crate::executor::catch_stop_signals()?;
            serve::run(&args).await
        }),
        Command::Replicator(args) => block_on(async move {
            crate::executor::catch_stop_signals()?;
            replicator::run(&args).await
        }),
        Command::Token { command } => block_on(token::run(&command)),
        Command::Report {
            wave,
            kind,
            out,
            send,
            state,
        } => block_on(report::run(&state, &wave, kind, out.as_deref(), send)),
        Command::Status { wave, json, state } => {
            block_on(status::run(&state, wave.as_deref(), json))
        }
        Command::Approve {
            wave,
            app,
            by,
            state,
        } => block_on(steer::approve(&state, &wave, app.as_deref(), by.as_deref())),
        Command::NoGo {
            wave,
            app,
            decision,
        } => block_on(steer::no_go(
            &decision.state,
            &wave,
            app.as_deref(),
            &decision.reason,
            decision.by.as_deref(),
        )),
        Command::Retry(lever) => block_on(steer::pull(
            &lever.state,
            steer::Lever::Retry,
            &lever.task,
            lever.by.as_deref(),
        )),
        Command::Skip(lever) => block_on(steer::pull(
            &lever.state,
            steer::Lever::Skip,
            &lever.task,
            lever.by.as_deref(),
        )),
        Command::Cancel(lever) => block_on(steer::pull(
            &lever.state,
            steer::Lever::Cancel,
            &lever.task,
            lever.by.as_deref(),
        )),
        Command::Abort { task, decision } => block_on(steer::abort(
            &decision.state,
            &task,
            &decision.reason,
            decision.by.as_deref(),
        )),
        Command::Events {
            wave,
            follow,
            json,
            state,
        } => block_on(events::run(&state, wave.as_deref(), follow, json)),
        Command::Failback(args) => block_on(failback::run(&args)),
        Command::Match { definitions } => block_on(matching::run(&definitions)),
        Command::Replication(args) => block_on(replication::run(&args)),
        Command::Failover(args) => block_on(failback::failover(&args)),
        Command::Sim {
            command: SimCommand::ServeMgn(args),
        } => block_on(serve_mgn::run(&args)),
        Command::Rehearse { definitions, seed } => block_on(rehearse::run(&definitions, seed)),
        Command::Validate {
            definitions,
            format,
        } => validate::run(&definitions, format),
        Command::Plan {
            definitions,
            wave,
            format,
        } => plan::run(&definitions, wave.as_deref(), format),
        Command::Estimate {
            definitions,
            wave,
            format,
        } => estimate::run(&definitions, wave.as_deref(), format),
        Command::Import {
            source: ImportSource::Cmf(args),
        } => import::run(&args),
    }
}

/// Loads the definitions and prints their diagnostics; `None` when they have errors, so
/// nothing is planned from a broken definition.
pub fn load_valid(args: &DefinitionArgs) -> anyhow::Result<Option<waves::Definitions>> {
    Ok(load_loaded(args)?.map(|loaded| loaded.definitions))
}

/// Like [`load_valid`], keeping the source texts.
pub fn load_loaded(args: &DefinitionArgs) -> anyhow::Result<Option<waves::Loaded>> {
    let loaded = waves::load_paths(&args.paths, args.config.as_deref());
    validate::print_diagnostics(&loaded.diagnostics)?;
    if loaded.diagnostics.has_errors() {
        return Ok(None);
    }
    Ok(Some(loaded))
}

/// Loads valid definitions and checks the `--wave` filter names one of them. Plans and
/// estimates are always made for every wave (a wave depends on the ones before it and
/// shares links with its neighbours); the filter only narrows what is shown.
pub fn load_for_wave(
    args: &DefinitionArgs,
    wave: Option<&str>,
) -> anyhow::Result<Option<waves::Definitions>> {
    let Some(definitions) = load_valid(args)? else {
        return Ok(None);
    };
    if let Some(name) = wave {
        check_wave_name(&definitions, name)?;
    }
    Ok(Some(definitions))
}

fn check_wave_name(definitions: &waves::Definitions, name: &str) -> anyhow::Result<()> {
    if definitions.waves.iter().any(|w| w.name.value == name) {
        return Ok(());
    }
    let known: Vec<&str> = definitions
        .waves
        .iter()
        .map(|w| w.name.value.as_str())
        .collect();
    anyhow::bail!(
        "no wave named `{name}`; the waves are: {}",
        known.join(", ")
    )
}
