//! `wavelift replicator PATH...`: the local engine's replication server on its own, as a
//! service beside (or instead of) `wavelift serve`: agents keep replicating while `run`
//! or `serve` restart, and `run`, `serve`, `failback`, `failover` and `replication` call
//! this process's engine over its control port (the staging folder's `control.json`)
//! instead of opening the staging folder themselves.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;

use super::{DefinitionArgs, load_valid, state};

#[derive(Debug, clap::Args)]
pub struct ReplicatorArgs {
    /// The configuration (engines.local) is read from the definitions
    #[command(flatten)]
    definitions: DefinitionArgs,
}

pub async fn run(args: &ReplicatorArgs) -> anyhow::Result<ExitCode> {
    let Some(definitions) = load_valid(&args.definitions)? else {
        return Ok(ExitCode::FAILURE);
    };
    let config = &definitions.config;
    // Only for waves on the local engine: another's servers have no agent of ours.
    if !definitions
        .waves
        .iter()
        .any(|w| w.engine.value == waves::model::EngineKind::Local)
    {
        bail!(
            "no wave uses the local engine: the replicator serves the local engine's agents ({} waves on other engines)",
            definitions.waves.len()
        );
    }
    let clock: Arc<dyn replication::Clock> = Arc::new(replication::SystemClock);
    let staging = config.resolve(&config.engines.local.staging_dir);
    let engine = match state::own_local_engine(config, clock).await? {
        Ok(engine) => engine,
        Err(pid) => bail!(
            "process {pid} runs the local engine of {} already: one replication server per staging folder",
            staging.display()
        ),
    };
    outln!(
        "replication server for agents on {}, staging folder {}; other wavelift commands on this machine use it (stop with Ctrl-C or SIGTERM)",
        config.engines.local.listen,
        staging.display()
    );
    crate::executor::stop_signal().await?;
    engine.shutdown();
    outln!("replication server stopped");
    Ok(ExitCode::SUCCESS)
}
