//! agent_push: install the engine's replication agent (or find it installed) and make
//! the engine replicate the server. Idempotent: a server whose agent already replicates
//! is left alone and recorded.
//!
//! An engine with an agent of Wavelift's own (the local engine) says how to install it
//! ([`replication::AgentInstall`]): a template of `templates/agents/`, rendered with the
//! engine's facts and the server's, run on the server through its shell, with the
//! agent's token on the script's standard input so it never appears on a command line.

use std::time::Duration;

use replication::{AgentInstall, DiskSpec, ReplicationState, SourceSpec};
use serde_json::Value;

use crate::context::{Action, Check, Report, TaskContext};

/// Installing takes a copy and a start; a slow server gets this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let server = ctx.server;
    let found = match ctx.engine.find_source(&server.name.value).await {
        Err(err) => return Report::engine_error("looking for the source server", &err, Vec::new()),
        Ok(found) => found,
    };
    if let Some(source) = &found
        && !matches!(
            source.replication.state,
            ReplicationState::Initiating | ReplicationState::Disconnected
        )
    {
        let checks = vec![Check::pass(
            "agent",
            format!(
                "already installed: the engine knows {} as {} ({:?})",
                server.name.value, source.id, source.replication.state
            ),
        )];
        return Report::done(checks, "agent already installed", Vec::new());
    }
    let spec = spec(ctx);
    let mut actions = Vec::new();
    let source = match found {
        Some(source) => source,
        None => {
            actions.push(Action {
                action: "engine.register_source".to_owned(),
                detail: format!(
                    "{} disk(s), {} bytes used",
                    spec.disks.len(),
                    server.used_bytes()
                ),
            });
            match ctx.engine.register_source(&spec).await {
                Err(err) => {
                    return Report::engine_error("registering the source server", &err, actions);
                }
                Ok(source) => source,
            }
        }
    };
    let install = match ctx.engine.agent_install(&source.id).await {
        Err(err) => return Report::engine_error("preparing the agent's install", &err, actions),
        Ok(None) => {
            return Report::done(
                vec![Check::pass(
                    "agent",
                    format!(
                        "installed; the engine replicates it as {} ({:?})",
                        source.id, source.replication.state
                    ),
                )],
                "agent installed, replication started",
                actions,
            );
        }
        Ok(Some(install)) => install,
    };
    if server.access.method != waves::model::AccessMethod::Local {
        return Report::fail(
            format!(
                "the local engine's agent is installed on servers reached with the `local` access method in this version; {} is reached over {}: install wavelift-agent on it by hand, or use the local access method",
                server.name.value, server.access.method
            ),
            false,
            actions,
        );
    }
    let script = match render(&install, ctx) {
        Ok(script) => script,
        Err(err) => return Report::fail(err, false, actions),
    };
    actions.push(Action {
        action: format!("shell.install_agent.{}", install.template),
        detail: format!(
            "agent for {} through templates/agents/{}.sh.hbs",
            source.id, install.template
        ),
    });
    match ctx
        .shell
        .run_with_input(server, &script, install.secret.as_bytes(), INSTALL_TIMEOUT)
        .await
    {
        Err(err) => Report::fail(
            format!(
                "installing the agent on {}: {err}; {}",
                server.name.value,
                err.remedy()
            ),
            true,
            actions,
        ),
        Ok(out) if out.status != 0 => Report::fail(
            format!(
                "installing the agent on {} failed (exit {}): {}",
                server.name.value,
                out.status,
                last_lines(&out.stderr, &out.stdout)
            ),
            true,
            actions,
        ),
        Ok(out) => Report::done(
            vec![Check::pass(
                "agent",
                format!(
                    "installed and started ({}); it replicates {} to the engine",
                    out.stdout.trim(),
                    source.id
                ),
            )],
            "agent installed, replication started",
            actions,
        ),
    }
}

fn spec(ctx: &TaskContext<'_>) -> SourceSpec {
    let server = ctx.server;
    SourceSpec {
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
                device: device_path(ctx, &d.device),
                size_bytes: d.size_bytes,
                used_bytes: d.used_bytes.unwrap_or(d.size_bytes),
            })
            .collect(),
        change_rate_bytes_per_second: server
            .change_rate
            .map_or(0.0, |rate| rate.bytes_per_second(server.used_bytes())),
    }
}

/// A disk image named by a relative path is found from the configuration's folder when
/// the server is this machine (the quickstart's disks); devices are taken as written.
pub(crate) fn device_path(ctx: &TaskContext<'_>, device: &str) -> String {
    let path = std::path::Path::new(device);
    if path.is_relative() && ctx.server.access.method == waves::model::AccessMethod::Local {
        ctx.config_dir.join(path).display().to_string()
    } else {
        device.to_owned()
    }
}

const TEMPLATES: &[(&str, &str)] =
    &[("local", include_str!("../../templates/agents/local.sh.hbs"))];

/// The install script: the template with the engine's facts and the server's, every
/// value shell-quoted by the `sh` helper.
fn render(install: &AgentInstall, ctx: &TaskContext<'_>) -> Result<String, String> {
    let Some((_, template)) = TEMPLATES.iter().find(|(name, _)| *name == install.template) else {
        return Err(format!(
            "the engine asks for the agent template `{}`, which this Wavelift does not have",
            install.template
        ));
    };
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper(
        "sh",
        Box::new(
            |h: &handlebars::Helper<'_>,
             _: &handlebars::Handlebars<'_>,
             _: &handlebars::Context,
             _: &mut handlebars::RenderContext<'_, '_>,
             out: &mut dyn handlebars::Output|
             -> handlebars::HelperResult {
                let value = h.param(0).map(|p| p.value());
                let text = match value {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                out.write(&crate::ssh::quote(&text))?;
                Ok(())
            },
        ),
    );
    let mut facts = serde_json::Map::new();
    facts.extend(install.facts.clone());
    facts.insert(
        "server_name".to_owned(),
        Value::from(ctx.server.name.value.clone()),
    );
    hb.render_template(template, &Value::Object(facts))
        .map_err(|err| format!("the agent template `{}`: {err}", install.template))
}

fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}
