//! `wavelift match PATH...`: how the servers of the mgn waves match MGN's source servers
//! (by source_id, hostname, FQDN or IP), which match none or more than one, and which
//! source servers no wave names: what to fix before agent_push meets it.

use std::process::ExitCode;

use super::{DefinitionArgs, load_loaded};

#[cfg(not(feature = "aws"))]
pub async fn run(args: &DefinitionArgs) -> anyhow::Result<ExitCode> {
    if load_loaded(args)?.is_none() {
        return Ok(ExitCode::FAILURE);
    }
    anyhow::bail!(
        "the mgn engine is not in this build of wavelift: build it with `cargo build --release --bins --features aws`"
    )
}

#[cfg(feature = "aws")]
pub async fn run(args: &DefinitionArgs) -> anyhow::Result<ExitCode> {
    use mgn::Outcome;
    let Some(loaded) = load_loaded(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    let definitions = &loaded.definitions;
    // Nothing to match before asking for the engine's settings: a project on the local
    // engine is told what match is for, not to configure MGN.
    let servers = super::state::mgn_servers(definitions);
    if servers.is_empty() {
        outln!(
            "no wave uses the mgn engine: match compares the servers of mgn waves with MGN's source servers"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(settings) = &definitions.config.engines.mgn else {
        anyhow::bail!("engines.mgn is not configured: add its region to the configuration");
    };
    let engine = super::state::mgn_engine(definitions, settings).await;
    let report = engine
        .match_report(&servers)
        .await
        .map_err(|err| anyhow::anyhow!("{}", err.message))?;
    let width = servers.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut problems = 0;
    for (wanted, outcome) in &report.lines {
        let name = &wanted.name;
        let line = match outcome {
            Outcome::Matched { id, by } => format!("{id}  by {by}"),
            Outcome::Missing => {
                problems += 1;
                match &wanted.source_id {
                    Some(id) => format!(
                        "no match: MGN has no source server {id} (its source_id) in the server's account"
                    ),
                    None => format!(
                        "no match: no MGN source server has the user-provided id or hostname {name}{}{}; install the MGN agent on it, or give its source_id",
                        wanted
                            .fqdn
                            .as_deref()
                            .map(|f| format!(", the FQDN {f}"))
                            .unwrap_or_default(),
                        wanted
                            .ip
                            .as_deref()
                            .map(|i| format!(" or the IP {i}"))
                            .unwrap_or_default()
                    ),
                }
            }
            Outcome::Ambiguous(ids) => {
                problems += 1;
                format!(
                    "matches {} source servers ({}): give it the intended one's source_id, or archive the others",
                    ids.len(),
                    ids.join(", ")
                )
            }
            Outcome::Shared { id, with } => {
                problems += 1;
                format!(
                    "matches {id}, as {} {}: one source server is one wave server; give each its source_id",
                    with.join(", "),
                    if with.len() == 1 { "does" } else { "do" }
                )
            }
            Outcome::Archived(id) => {
                problems += 1;
                format!("its source_id {id} is archived in MGN")
            }
            Outcome::OnlyArchived(ids) => {
                problems += 1;
                format!(
                    "matches only archived source server(s) {}: migrated and cleaned up already (archived in MGN)",
                    ids.join(", ")
                )
            }
        };
        outln!("{name:width$}  {line}");
    }
    if !report.unclaimed.is_empty() {
        outln!(
            "{} MGN source server(s) in no wave: {}",
            report.unclaimed.len(),
            report
                .unclaimed
                .iter()
                .map(|(id, host)| format!("{id} ({host})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    outln!(
        "{} of {} server(s) matched",
        servers.len() - problems,
        servers.len()
    );
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
