//! agent_push: install the engine's replication agent (or find it installed) and make
//! the engine replicate the server. Idempotent: a server whose agent already replicates
//! is left alone and recorded.
//!
//! An engine with an agent of Wavelift's own (the local engine) says how to install it
//! ([`replication::AgentInstall`]): a template of `templates/agents/`, rendered with the
//! engine's facts and the server's, run on the server through its shell, with the
//! agent's token on the script's standard input so it never appears on a command line.
//! A server reached over SSH first gets a copy of the agent binary (sent only when the
//! one there differs by SHA-256); install and copy run as root where `access.sudo` says.
//!
//! An engine whose agent registers the source itself (MGN) says how to install it for a
//! source it does not list ([`replication::ReplicationEngine::agent_install_unregistered`]):
//! the script (`templates/agents/mgn.sh.hbs`, the installer's keys on its standard input)
//! runs, then the engine is asked until it lists the source (a step of the task, so a
//! restart looks again instead of installing again).

use std::time::Duration;

use replication::{AgentInstall, DiskSpec, ReplicationState, SourceSpec};
use serde_json::Value;

use crate::context::{Action, Check, Reach, Report, TaskContext};

/// Installing takes a copy of the agent (megabytes, over the server's link) and a
/// start; a slow server gets this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Starting the agent once it is there.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How many times a source whose installer ran is looked for in the engine before the
/// task fails (every 30 seconds: ten minutes).
const REGISTRATION_LOOKS: i64 = 20;

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let reach = ctx.reach();
    let found = match reach.engine.find_source(&reach.server.name.value).await {
        Err(err) => return Report::engine_error("looking for the source server", &err, Vec::new()),
        Ok(found) => found,
    };
    if found.is_none()
        && let Some(report) = self_registering(ctx, &reach).await
    {
        return report;
    }
    // Run again (an operator's reinstall) once the cutover began: the source replicates
    // no more, and a new agent would only get in the cutover's way. (A failback's return
    // to normal installs the agent of a cut-over source on purpose, through `install`.)
    if let Some(source) = &found
        && matches!(
            source.life_cycle,
            replication::LifeCycle::CuttingOver
                | replication::LifeCycle::Cutover
                | replication::LifeCycle::Archived
        )
    {
        return Report::done(
            vec![Check::pass(
                "agent",
                format!(
                    "not installed again: {} is {:?}, its cutover began",
                    reach.server.name.value, source.life_cycle
                ),
            )],
            "agent not installed again: the cutover began",
            Vec::new(),
        );
    }
    install_found(&reach, found).await
}

/// For a source the engine does not list, on an engine whose agent registers the source
/// itself (MGN's installer): the installer runs, then the engine is asked until it lists
/// the source. `None` on an engine that registers sources on request: [`install`] does
/// the rest.
async fn self_registering(ctx: &TaskContext<'_>, reach: &Reach<'_>) -> Option<Report> {
    let server = reach.server;
    let name = &server.name.value;
    let spec = spec(reach);
    let looks = ctx
        .step
        .as_ref()
        .and_then(|step| step.get("installed_looks"))
        .and_then(Value::as_i64);
    if let Some(looks) = looks {
        return Some(registered(ctx, &spec, looks, None, Vec::new()).await);
    }
    let install = match reach.engine.agent_install_unregistered(&spec).await {
        Err(err) => {
            return Some(Report::engine_error(
                "preparing the agent's install",
                &err,
                Vec::new(),
            ));
        }
        Ok(None) => return None,
        Ok(Some(install)) => install,
    };
    let script = match render(&install, reach) {
        Ok(script) => script,
        Err(err) => return Some(Report::fail(err, false, Vec::new())),
    };
    let actions = vec![Action {
        action: format!("shell.install_agent.{}", install.template),
        detail: format!(
            "{}'s agent on {name} through templates/agents/{}.sh.hbs",
            reach.engine.name(),
            install.template
        ),
    }];
    let out = match run_install(reach, &script, &install, INSTALL_TIMEOUT).await {
        Ok(out) => out,
        Err(reason) => return Some(Report::fail(reason, true, actions)),
    };
    let said = last_lines("", &out.stdout);
    Some(registered(ctx, &spec, 0, Some(said), actions).await)
}

/// After the installer ran (`said`: what it said, this turn): the source as the engine
/// lists it, or another look later.
async fn registered(
    ctx: &TaskContext<'_>,
    spec: &SourceSpec,
    looks: i64,
    said: Option<String>,
    actions: Vec<Action>,
) -> Report {
    let name = &spec.name;
    match ctx.engine.register_source(spec).await {
        Ok(source) => {
            let listed = format!(
                "{} lists {name} as {} ({:?})",
                ctx.engine.name(),
                source.id,
                source.replication.state
            );
            let mut checks = Vec::new();
            if let Some(said) = &said {
                checks.push(Check::pass("agent", format!("installed on {name}: {said}")));
            }
            checks.push(Check::pass("registered", listed.clone()));
            let output = match said {
                Some(said) => format!("agent installed ({said}); {listed}"),
                None => format!("agent installed; {listed}"),
            };
            Report::done(checks, output, actions)
        }
        Err(err) if err.kind == replication::ErrorKind::NotFound && looks < REGISTRATION_LOOKS => {
            Report::wait(
                serde_json::json!({ "installed_looks": looks + 1 }),
                crate::context::later(ctx.now, 30),
                format!(
                    "the agent is installed on {name}; {} does not list it yet",
                    ctx.engine.name()
                ),
                actions,
            )
        }
        Err(err) => Report::fail(
            format!(
                "the agent was installed on {name}, but {} does not list it after {looks} looks: {}",
                ctx.engine.name(),
                err.message
            ),
            err.is_transient(),
            actions,
        ),
    }
}

/// Output with every line of a secret (a token, or keys a line each) replaced.
fn redact(text: &str, secret: &str) -> String {
    secret
        .lines()
        .map(str::trim)
        .filter(|part| part.len() >= 4)
        .fold(text.to_owned(), |text, part| {
            text.replace(part, "[redacted]")
        })
}

/// Installs the agent (or finds it installed) on the server `ctx` reaches: agent_push's
/// work, and a failback's return to normal.
pub async fn install(ctx: &Reach<'_>) -> Report {
    match ctx.engine.find_source(&ctx.server.name.value).await {
        Err(err) => Report::engine_error("looking for the source server", &err, Vec::new()),
        Ok(found) => install_found(ctx, found).await,
    }
}

/// [`install`] with the engine's source as just looked up.
async fn install_found(ctx: &Reach<'_>, found: Option<replication::SourceServer>) -> Report {
    let server = ctx.server;
    if let Some(source) = &found
        && !matches!(
            source.replication.state,
            ReplicationState::Initiating | ReplicationState::Disconnected
        )
    {
        let mut checks = vec![Check::pass(
            "agent",
            format!(
                "already installed: the engine knows {} as {} ({:?})",
                server.name.value, source.id, source.replication.state
            ),
        )];
        checks.extend(setting_checks(server, Installed::Before));
        // What was done before this attempt (by an earlier one whose outcome was never
        // recorded, as when its process was killed, or by hand) is in the job log too.
        let found = vec![Action {
            action: "engine.found_source".to_owned(),
            detail: format!(
                "registered and replicating before this attempt: {} ({})",
                source.id,
                replication::rules::state_name(source.replication.state)
            ),
        }];
        return Report::done(checks, "agent already installed", found);
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
            let mut checks = vec![Check::pass(
                "agent",
                format!(
                    "installed; the engine replicates it as {} ({:?})",
                    source.id, source.replication.state
                ),
            )];
            checks.extend(setting_checks(server, Installed::ByTheEngine));
            return Report::done(checks, "agent installed, replication started", actions);
        }
        Ok(Some(install)) => install,
    };
    let mut install = install;
    let mut checks = Vec::new();
    if server.access.method != waves::model::AccessMethod::Local {
        match copy_agent(ctx, &mut install, &mut actions).await {
            Err(report) => return report,
            Ok(check) => checks.push(check),
        }
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
    match run_install(ctx, &script, &install, START_TIMEOUT).await {
        Err(reason) => Report::fail(reason, true, actions),
        Ok(out) => {
            checks.push(Check::pass(
                "agent",
                format!(
                    "installed and started ({}); it replicates {} to the engine",
                    out.stdout.trim(),
                    source.id
                ),
            ));
            checks.extend(setting_checks(server, Installed::Now(&install.template)));
            Report::done(checks, "agent installed, replication started", actions)
        }
    }
}

/// How the agent whose settings agent_push reports came to be.
#[derive(Clone, Copy)]
enum Installed<'a> {
    /// Just now, through this template.
    Now(&'a str),
    /// By an earlier agent_push.
    Before,
    /// By the engine itself (no agent of Wavelift's).
    ByTheEngine,
}

/// What agent_push says of the server's agent settings (`bandwidth`, `scan_interval`),
/// those it has: only the local engine's agent, started with them, applies them.
fn setting_checks(server: &waves::model::Server, installed: Installed<'_>) -> Vec<Check> {
    let push = &server.tasks.agent_push;
    let mut checks = Vec::new();
    if let Some(bits) = push.bandwidth_bits {
        let limit = waves::units::format_bandwidth(bits as f64);
        checks.push(setting_check(
            "bandwidth",
            &limit,
            &format!("the agent sends at most {limit}"),
            "is throttled in the engine's own replication settings",
            installed,
        ));
    }
    if let Some(interval) = push.scan_interval {
        checks.push(setting_check(
            "scan interval",
            &interval.to_string(),
            &format!(
                "the agent passes over quiet disks every {interval} at least (every 100 ms while they change)"
            ),
            "finds changes its own way",
            installed,
        ));
    }
    checks
}

/// One setting's check: `applied` when the local engine's agent was just started with
/// it; else why `value` was not applied (another engine's agent `does` it its own way)
/// or may not be (an agent installed before).
fn setting_check(
    name: &str,
    value: &str,
    applied: &str,
    does: &str,
    installed: Installed<'_>,
) -> Check {
    let detail = match installed {
        Installed::Now("local") => applied.to_owned(),
        Installed::Now(other) => {
            format!("{value} not applied: this engine's agent ({other}) {does}")
        }
        Installed::Before => format!(
            "{value}: the agent was installed by an earlier agent_push (the local engine's with the {name} set then, another engine's without it); a changed value takes effect when the agent is installed again"
        ),
        Installed::ByTheEngine => {
            format!("{value} not applied: this engine installs its own agent, which {does}")
        }
    };
    Check::pass(name, detail)
}

/// Runs an install script on the server as root with the install's secret on its
/// standard input: its output with every part of the secret redacted, or why it failed.
async fn run_install(
    reach: &Reach<'_>,
    script: &str,
    install: &AgentInstall,
    timeout: Duration,
) -> Result<crate::shell::CommandOutput, String> {
    let name = &reach.server.name.value;
    let ran = reach
        .shell
        .run_root_with_input(reach.server, script, install.secret.as_bytes(), timeout)
        .await;
    match ran {
        Err(err) => Err(format!(
            "installing the agent on {name}: {err}; {}",
            err.remedy()
        )),
        Ok(mut out) => {
            out.stdout = redact(&out.stdout, &install.secret);
            out.stderr = redact(&out.stderr, &install.secret);
            if out.status == 0 {
                Ok(out)
            } else {
                Err(format!(
                    "installing the agent on {name} failed (exit {}): {}",
                    out.status,
                    last_lines(&out.stderr, &out.stdout)
                ))
            }
        }
    }
}

/// For a server reached over SSH: the agent's folder there, and the agent binary copied
/// into it unless the same binary is there already (by SHA-256). The install then starts
/// that copy.
pub(crate) async fn copy_agent(
    ctx: &Reach<'_>,
    install: &mut AgentInstall,
    actions: &mut Vec<Action>,
) -> Result<Check, Report> {
    let server = ctx.server;
    let fact = |install: &AgentInstall, name: &str| {
        install
            .facts
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let base = match fact(install, "remote_dir") {
        dir if !dir.trim().is_empty() => dir,
        _ if server.access.sudo => "/var/lib/wavelift-agent".to_owned(),
        _ => ".wavelift-agent".to_owned(),
    };
    let state_dir = format!("{}/{}", base.trim_end_matches('/'), fact(install, "source"));
    install
        .facts
        .insert("state_dir".to_owned(), Value::from(state_dir.clone()));
    let local_binary = fact(install, "agent");
    let binary = std::fs::read(&local_binary).map_err(|err| {
        Report::fail(
            format!(
                "the agent binary {local_binary} cannot be read ({err}): build it with cargo build --release --bins"
            ),
            false,
            actions.clone(),
        )
    })?;
    let sha256 = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(&binary);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    install
        .facts
        .insert("sha256".to_owned(), Value::from(sha256.clone()));
    install
        .facts
        .insert("agent".to_owned(), Value::from("wavelift-agent"));
    let failed = |what: &str, detail: String, retry: bool, actions: &Vec<Action>| {
        Report::fail(
            format!("{what} on {}: {detail}", server.name.value),
            retry,
            actions.clone(),
        )
    };
    let probe = render_named("local-probe", install, ctx)
        .map_err(|err| Report::fail(err, false, actions.clone()))?;
    let out = match ctx.shell.run_root(server, &probe, INSTALL_TIMEOUT).await {
        Err(err) => {
            let detail = format!("{err}; {}", err.remedy());
            return Err(failed("looking for the agent", detail, true, actions));
        }
        Ok(out) if out.status != 0 => {
            let detail = format!(
                "exit {}: {}",
                out.status,
                last_lines(&out.stderr, &out.stdout)
            );
            return Err(failed("looking for the agent", detail, true, actions));
        }
        Ok(out) => out,
    };
    let mut lines = out.stdout.lines().map(str::trim);
    let arch = lines.next().unwrap_or_default().to_owned();
    if arch != std::env::consts::ARCH {
        let detail = format!(
            "the server is {arch}, this Wavelift's agent is built for {}: build wavelift-agent for {arch} and put it beside wavelift",
            std::env::consts::ARCH
        );
        return Err(failed("copying the agent", detail, false, actions));
    }
    let size = binary.len();
    if lines.next() == Some(sha256.as_str()) {
        return Ok(Check::pass(
            "agent binary",
            format!("{state_dir}/wavelift-agent is there already (sha256 {sha256})"),
        ));
    }
    let upload = render_named("local-upload", install, ctx)
        .map_err(|err| Report::fail(err, false, actions.clone()))?;
    actions.push(Action {
        action: "shell.copy_agent".to_owned(),
        detail: format!("{size} bytes to {state_dir}/wavelift-agent"),
    });
    match ctx
        .shell
        .run_root_with_input(server, &upload, &binary, INSTALL_TIMEOUT)
        .await
    {
        Err(err) => {
            let detail = format!("{err}; {}", err.remedy());
            Err(failed("copying the agent", detail, true, actions))
        }
        Ok(out) if out.status != 0 => {
            let detail = format!(
                "exit {}: {}",
                out.status,
                last_lines(&out.stderr, &out.stdout)
            );
            Err(failed("copying the agent", detail, true, actions))
        }
        Ok(_) => Ok(Check::pass(
            "agent binary",
            format!("copied {size} bytes to {state_dir}/wavelift-agent (sha256 {sha256})"),
        )),
    }
}

fn spec(ctx: &Reach<'_>) -> SourceSpec {
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
pub(crate) fn device_path(ctx: &Reach<'_>, device: &str) -> String {
    let path = std::path::Path::new(device);
    if path.is_relative() && ctx.server.access.method == waves::model::AccessMethod::Local {
        ctx.config_dir.join(path).display().to_string()
    } else {
        device.to_owned()
    }
}

const TEMPLATES: &[(&str, &str)] = &[
    ("local", include_str!("../../templates/agents/local.sh.hbs")),
    ("mgn", include_str!("../../templates/agents/mgn.sh.hbs")),
    (
        "local-probe",
        include_str!("../../templates/agents/local-probe.sh.hbs"),
    ),
    (
        "local-upload",
        include_str!("../../templates/agents/local-upload.sh.hbs"),
    ),
    (
        "local-restore",
        include_str!("../../templates/agents/local-restore.sh.hbs"),
    ),
];

/// The install script: the template with the engine's facts and the server's, every
/// value shell-quoted by the `sh` helper.
fn render(install: &AgentInstall, ctx: &Reach<'_>) -> Result<String, String> {
    render_named(&install.template, install, ctx)
}

/// The template `name` of templates/agents/ rendered with the install's facts.
pub(crate) fn render_named(
    name: &str,
    install: &AgentInstall,
    ctx: &Reach<'_>,
) -> Result<String, String> {
    let Some((_, template)) = TEMPLATES.iter().find(|(known, _)| *known == name) else {
        return Err(format!(
            "the engine asks for the agent template `{name}`, which this Wavelift does not have"
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
    // The agent's --bandwidth, in Mbit/s; empty: no limit.
    facts.insert(
        "bandwidth_mbit".to_owned(),
        Value::from(
            ctx.server
                .tasks
                .agent_push
                .bandwidth_bits
                .map(|bits| (bits as f64 / 1_000_000.0).to_string())
                .unwrap_or_default(),
        ),
    );
    // The agent's --scan-interval, in milliseconds; empty: the agent's own.
    facts.insert(
        "scan_interval_ms".to_owned(),
        Value::from(
            ctx.server
                .tasks
                .agent_push
                .scan_interval
                .map(|interval| (interval.approx_seconds() * 1000).to_string())
                .unwrap_or_default(),
        ),
    );
    hb.render_template(template, &Value::Object(facts))
        .map_err(|err| format!("the agent template `{name}`: {err}"))
}

/// What a command that failed said: the last lines of its stderr, or of its stdout
/// when it wrote its complaint there (a script's `echo`), or that it said nothing.
pub(crate) fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.trim().lines().collect();
    if lines.is_empty() {
        return "(it printed nothing)".to_owned();
    }
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::redact;
    use crate::context::Progress;
    use crate::testing::Rig;

    /// agent_push run again (an operator's reinstall) after the server cut over installs
    /// nothing and says why.
    #[tokio::test]
    async fn a_reinstall_after_the_cutover_installs_nothing() {
        let rig = Rig::new(crate::testing::window_start());
        let now = rig.cut_over().await;
        let report = crate::run(&rig.context(waves::model::TaskKind::AgentPush, now, None)).await;
        let Progress::Done { output, .. } = &report.progress else {
            panic!("{report:?}");
        };
        assert_eq!(output, "agent not installed again: the cutover began");
        assert!(report.actions.is_empty(), "{:?}", report.actions);
    }

    /// A source the engine knows and replicates (an earlier attempt installed it, and
    /// its outcome was lost with its process) is not installed again, and what was found
    /// is in the job log.
    #[tokio::test]
    async fn an_agent_found_installed_is_said_in_the_log() {
        let rig = Rig::new(crate::testing::window_start());
        let id = rig.register().await;
        rig.clock.advance(3600.0);
        let now = crate::testing::window_start() + jiff::SignedDuration::from_hours(1);
        let report = crate::run(&rig.context(waves::model::TaskKind::AgentPush, now, None)).await;
        let Progress::Done { output, .. } = &report.progress else {
            panic!("{report:?}");
        };
        assert_eq!(output, "agent already installed");
        let found: Vec<(&str, &str)> = report
            .actions
            .iter()
            .map(|a| (a.action.as_str(), a.detail.as_str()))
            .collect();
        assert_eq!(
            found,
            [(
                "engine.found_source",
                format!("registered and replicating before this attempt: {id} (continuous)")
                    .as_str()
            )]
        );
    }

    #[test]
    fn every_line_of_a_secret_is_redacted() {
        let said = "key AKIAEXAMPLE01 secret s3cr3t-value token tok-123456";
        let secret = "AKIAEXAMPLE01\ns3cr3t-value\ntok-123456\n";
        assert_eq!(
            redact(said, secret),
            "key [redacted] secret [redacted] token [redacted]"
        );
        // An empty session token's line redacts nothing.
        assert_eq!(redact("a b", "AKIAEXAMPLE01\nxyz12345\n\n"), "a b");
    }
}
