//! `wavelift replication ACTION SERVER`: start, stop, pause or resume a source server's
//! replication on its wave's engine (MGN's StartReplication, StopReplication,
//! PauseReplication, ResumeReplication), recorded in the job log with who asked.

use std::process::ExitCode;

use anyhow::bail;
use replication::ReplicationAction;

use super::failback::Opened;
use super::state::{self, StateArgs};

#[derive(Debug, clap::Args)]
pub struct ReplicationArgs {
    /// start, stop, pause or resume
    #[arg(value_name = "ACTION", value_parser = parse_action)]
    action: ReplicationAction,
    /// The server whose replication to change
    server: String,
    /// Who does it (default: $USER)
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

fn parse_action(text: &str) -> Result<ReplicationAction, String> {
    ReplicationAction::from_name(text).ok_or_else(|| {
        format!(
            "`{text}` is not one of {}",
            ReplicationAction::NAMES.join(", ")
        )
    })
}

pub async fn run(args: &ReplicationArgs) -> anyhow::Result<ExitCode> {
    let opened = Opened::open(&args.state, &args.server).await?;
    let who = state::operator(args.by.as_deref())?;
    let Some(source) = opened
        .engine
        .find_source(&opened.server.name.value)
        .await
        .map_err(|err| anyhow::anyhow!("looking for {}: {}", args.server, err.message))?
    else {
        bail!(
            "the {} engine does not know {}: its agent is not installed (agent_push)",
            opened.engine.name(),
            args.server
        );
    };
    let source = match opened
        .engine
        .control_replication(&source.id, args.action)
        .await
    {
        Ok(source) => source,
        Err(err) => {
            opened
                .store
                .append_events(&[opened.event(
                    &args.server,
                    &who,
                    "operator.replication_refused",
                    format!("{} refused: {}", args.action, err.message),
                )])
                .await?;
            bail!(
                "{}: cannot {} its replication: {}",
                args.server,
                args.action,
                err.message
            );
        }
    };
    let state = replication::rules::state_name(source.replication.state);
    opened
        .store
        .append_events(&[opened.event(
            &args.server,
            &who,
            "engine.control_replication",
            format!(
                "replication {} ({}), now {state}",
                args.action.done(),
                source.id
            ),
        )])
        .await?;
    outln!(
        "{}: replication {} ({}), now {state}",
        args.server,
        args.action.done(),
        source.id
    );
    Ok(ExitCode::SUCCESS)
}
