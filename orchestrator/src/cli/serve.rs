//! `wavelift serve [--listen ADDR]`: the scheduler, the executor, the report delivery
//! and the web dashboard with its API in one process, until stopped (Ctrl-C).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::run::{self, RunArgs};
use super::state::StateArgs;
use crate::executor::Stopped;
use crate::report::schedule::Reporter;
use crate::store::Store;
use crate::web::{self, App};

/// The web's database connections (SQLite readers beside the executor's writer).
const WEB_READERS: u32 = 4;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Wave files or folders to apply first (optional)
    #[arg(value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// Configuration file; by default the wavelift.yaml found among PATH
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Apply PATH even though its plan has errors (as `apply --allow-plan-errors`)
    #[arg(long)]
    pub allow_plan_errors: bool,
    /// Where the dashboard and the API listen (port 0: any free port, printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Jump the clock to the next due time whenever nothing is running
    #[arg(long)]
    pub time_warp: bool,
    /// Seed of the rehearsal engine's injected failures (default: the configuration's
    /// `engines.sim.seed`, 1 without one)
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub async fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let run_args = RunArgs {
        paths: args.paths.clone(),
        config: args.config.clone(),
        until_done: false,
        allow_plan_errors: args.allow_plan_errors,
        time_warp: args.time_warp,
        seed: args.seed,
        max_tasks: 256,
        max_tasks_per_wave: 256,
        state: args.state.clone(),
    };
    let Some(store) = run::open_or_apply(&run_args).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let Some((executor, revision)) = run::executor(&store, &run_args).await? else {
        eprintln!(
            "nothing to serve: apply definitions first (wavelift apply PATH, or wavelift serve PATH)"
        );
        return Ok(ExitCode::FAILURE);
    };
    let reporter = Arc::new(Reporter::new(
        store.clone(),
        Arc::clone(&executor.definitions),
    )?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    outln!("serving http://{address}/ (the API under /api, described at /api/openapi.json)");
    eprintln!("reports go to {}", reporter.mailer.describe());
    if store.tokens().await?.iter().all(|t| t.revoked_at.is_some()) {
        eprintln!(
            "no API token yet: make one with `wavelift token create --role admin`, then log in with it"
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let delivery = tokio::spawn(run::deliver(
        store.clone(),
        Arc::clone(&reporter),
        stopped.clone(),
    ));
    let mut web_stopped = stopped.clone();
    // The web reads through connections of its own: a page never waits for a batch. They
    // open the store the executor runs on: with definitions given, the one their
    // configuration's `database.url` names (as `apply` stored them there).
    let config = (!args.paths.is_empty()).then_some(&executor.definitions.config);
    let web_store = Store::open_readers(&args.state.database_url(config), WEB_READERS).await?;
    let server = tokio::spawn(web::serve(
        listener,
        Arc::new(App::new(web_store)),
        async move {
            let _ = web_stopped.changed().await;
        },
    ));
    let database = run::database_label(&args.state, &executor);
    let (executor, result) =
        run::follow_revisions(executor, revision, &reporter, false, &database, |_| {}).await;
    let _ = stop.send(true);
    server.await.context("the web server stopped")??;
    if let Ok(Stopped::InterruptedWithoutDatabase) = result {
        delivery.abort();
        outln!("{}", run::stopped_without_database(&database, "serve"));
        return Ok(ExitCode::FAILURE);
    }
    let delivered = delivery.await;
    result.map_err(|err| run::stopped_by_store(err, &args.state, &executor))?;
    delivered.context("the report delivery stopped")??;
    outln!("stopped; `wavelift serve` goes on from here");
    Ok(ExitCode::SUCCESS)
}
