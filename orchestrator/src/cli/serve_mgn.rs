//! `wavelift sim serve-mgn PATH...`: an MGN endpoint on loopback over the rehearsal
//! engine ([`crate::mgn_api`]), whose source servers are the waves' servers, for testing
//! an MGN client without an AWS account.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::{DefinitionArgs, load_loaded};
use crate::mgn_api::{Hints, MgnApi};

#[derive(Debug, clap::Args)]
pub struct ServeMgnArgs {
    #[command(flatten)]
    definitions: DefinitionArgs,
    /// Where to listen (a port of 0 picks a free one; the address is printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The Region the endpoint says it is in (in ARNs)
    #[arg(long, default_value = "eu-west-1")]
    region: String,
    /// An EC2 emulator (moto's server, on loopback) where the launches run instances
    /// from each source's launch template
    #[arg(long, value_name = "URL")]
    ec2_endpoint: Option<String>,
    /// No server is a source server until MGN's agent installer, which this endpoint
    /// serves (GET /latest/linux/aws-replication-installer-init and its .sha512),
    /// registers it: for testing agent_push
    #[arg(long)]
    pending_agents: bool,
}

pub async fn run(args: &ServeMgnArgs) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_loaded(&args.definitions)? else {
        return Ok(ExitCode::FAILURE);
    };
    // Replication and launches take no time: a client sees each step at once.
    let engine: Arc<dyn replication::ReplicationEngine> =
        Arc::new(replication::sim::SimEngine::new(
            replication::sim::SimConfig::instant(1),
            Arc::new(replication::SystemClock),
        ));
    let mut servers = Vec::new();
    for wave in &loaded.definitions.waves {
        for (_, server) in wave.servers() {
            let hints = Hints {
                hostname: Some(server.name.value.clone()),
                fqdn: server.fqdn.as_ref().map(|f| f.value.clone()),
                ip: server.ip.as_ref().map(|i| i.value.to_string()),
                disks: server
                    .disks
                    .iter()
                    .map(|d| (d.device.clone(), d.size_bytes))
                    .collect(),
            };
            let spec = replication::SourceSpec {
                name: server.name.value.clone(),
                hostname: hints.fqdn.clone().or_else(|| hints.ip.clone()),
                disks: server
                    .disks
                    .iter()
                    .map(|d| replication::DiskSpec {
                        device: d.device.clone(),
                        size_bytes: d.size_bytes,
                        used_bytes: d.used_bytes.unwrap_or(d.size_bytes),
                    })
                    .collect(),
                change_rate_bytes_per_second: 0.0,
            };
            servers.push((spec, hints));
        }
    }
    let count = servers.len();
    let ec2 = match &args.ec2_endpoint {
        Some(url) => Some(
            crate::ec2_bridge::Ec2Bridge::connect(url, &args.region)
                .await
                .with_context(|| format!("cannot use the EC2 endpoint {url}"))?,
        ),
        None => None,
    };
    let api = Arc::new(MgnApi::new(engine, &args.region, servers, ec2, args.pending_agents).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if args.pending_agents {
        outln!(
            "MGN endpoint (rehearsal engine, {count} servers waiting for their agent) on http://{address}"
        );
    } else {
        outln!("MGN endpoint (rehearsal engine, {count} source servers) on http://{address}");
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    axum::serve(listener, api.router(address))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
