//! agent_push: install the engine's replication agent (or find it installed) and make
//! the engine replicate the server. Idempotent: a server the engine already knows is
//! left alone and recorded.

use replication::{DiskSpec, SourceSpec};

use crate::context::{Action, Check, Report, TaskContext};

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let server = ctx.server;
    match ctx.engine.find_source(&server.name.value).await {
        Err(err) => return Report::engine_error("looking for the source server", &err, Vec::new()),
        Ok(Some(source)) => {
            let checks = vec![Check::pass(
                "agent",
                format!(
                    "already installed: the engine knows {} as {} ({:?})",
                    server.name.value, source.id, source.replication.state
                ),
            )];
            return Report::done(checks, "agent already installed", Vec::new());
        }
        Ok(None) => {}
    }
    let spec = SourceSpec {
        name: server.name.value.clone(),
        hostname: server
            .fqdn
            .as_ref()
            .map(|f| f.value.clone())
            .or_else(|| server.ip.as_ref().map(|i| i.value.to_string())),
        disks: server
            .disks
            .iter()
            .map(|d| DiskSpec {
                device: d.device.clone(),
                size_bytes: d.size_bytes,
                used_bytes: d.used_bytes.unwrap_or(d.size_bytes),
            })
            .collect(),
        change_rate_bytes_per_second: server
            .change_rate
            .map_or(0.0, |rate| rate.bytes_per_second(server.used_bytes())),
    };
    let actions = vec![Action {
        action: "engine.register_source".to_owned(),
        detail: format!(
            "{} disk(s), {} bytes used",
            spec.disks.len(),
            server.used_bytes()
        ),
    }];
    match ctx.engine.register_source(&spec).await {
        Err(err) => Report::engine_error("installing the agent", &err, actions),
        Ok(source) => Report::done(
            vec![Check::pass(
                "agent",
                format!(
                    "installed; the engine replicates it as {} ({:?})",
                    source.id, source.replication.state
                ),
            )],
            "agent installed, replication started",
            actions,
        ),
    }
}
