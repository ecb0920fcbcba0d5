//! Where the state lives (the database and the state folder) and how the commands that
//! run waves open it and build the ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use replication::ReplicationEngine;
use replication::local::control::LocalClient;
use replication::local::{ImageFormat, LocalConfig, LocalEngine};
use replication::sim::{SimConfig, SimEngine};
use tasks::cmdb::{Cmdb, FileCmdb, NoCmdb};
use tasks::cmdb_api::{HttpCmdb, NetBox, ServiceNow};
use tasks::shell::{AccessShell, LocalShell, RemoteShell};
use waves::config::{Cmdb as CmdbConfig, Config};
use waves::model::{Definitions, EngineKind};

use crate::executor::Ports;
use crate::scheduler::SchedulerClock;
use crate::store::Store;

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB (default: for commands given
    /// definitions, their configuration's database.url; else sqlite://.wavelift/state.db)
    #[arg(long, env = "WAVELIFT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Folder for local state: the rehearsal engine's state, the outbox
    #[arg(
        long,
        env = "WAVELIFT_STATE_DIR",
        value_name = "DIR",
        default_value = ".wavelift"
    )]
    pub state_dir: PathBuf,
}

impl StateArgs {
    /// The database to use: the flag or environment, else the configuration's (relative
    /// SQLite paths from the configuration's folder), else the default.
    pub fn database_url(&self, config: Option<&Config>) -> String {
        if let Some(url) = &self.database_url {
            return url.clone();
        }
        match config {
            Some(config) if config.database_url != waves::config::DEFAULT_DATABASE_URL => {
                resolve_sqlite(&config.database_url, &config.base_dir)
            }
            _ => waves::config::DEFAULT_DATABASE_URL.to_owned(),
        }
    }

    pub async fn open(&self, config: Option<&Config>) -> anyhow::Result<Store> {
        Store::open(&self.database_url(config)).await
    }

    /// Opens a store that must exist already: commands that read or steer never create
    /// an empty database in a folder where nothing was applied.
    pub async fn open_existing(&self) -> anyhow::Result<Store> {
        let url = self.database_url(None);
        if let Some(path) = sqlite_path(&url)
            && !path.exists()
        {
            bail!(
                "no Wavelift state at {}: apply definitions first (wavelift apply PATH), or pass \
                 --database-url (the database.url of the configuration they were applied with)",
                path.display()
            );
        }
        if sqlite_path(&url).is_none()
            && url.starts_with("postgres")
            && !Store::holds_state(&url).await?
        {
            bail!(
                "no Wavelift state in the database {}: apply definitions first (wavelift apply \
                 PATH --database-url ...), or name the database they were applied to",
                crate::store::redact(&url)
            );
        }
        Store::open(&url).await
    }
}

/// The file of a `sqlite://` URL, unless in memory.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn resolve_sqlite(url: &str, base: &Path) -> String {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return url.to_owned();
    };
    let (path, query) = rest
        .split_once('?')
        .map_or((rest, None), |(p, q)| (p, Some(q)));
    if path.starts_with('/') || path == ":memory:" {
        return url.to_owned();
    }
    let joined = base.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

/// The engine of each kind the waves use.
pub type Engines = HashMap<EngineKind, Arc<dyn ReplicationEngine>>;

/// The engines the waves use: the rehearsal engine always, and the local engine (its
/// replication server listening for agents) when a wave uses it. `runs_tasks`: this
/// process runs tasks on `clock` (so another process's local engine must share it).
pub async fn engines(
    definitions: &Definitions,
    clock: &Arc<SchedulerClock>,
    state_dir: &Path,
    seed: u64,
    in_memory: bool,
    runs_tasks: bool,
) -> anyhow::Result<(Engines, Vec<String>)> {
    let mut notes = Vec::new();
    let used: std::collections::BTreeSet<EngineKind> =
        definitions.waves.iter().map(|w| w.engine.value).collect();
    #[cfg(not(feature = "aws"))]
    if used.contains(&EngineKind::Mgn) {
        let waves: Vec<&str> = definitions
            .waves
            .iter()
            .filter(|w| w.engine.value == EngineKind::Mgn)
            .map(|w| w.name.value.as_str())
            .collect();
        bail!(
            "the mgn engine is not in this build of wavelift (waves {}): build it with `cargo build --release --bins --features aws`, or rehearse them with `wavelift rehearse`",
            waves.join(", ")
        );
    }
    let clock_dyn: Arc<dyn replication::Clock> = Arc::clone(clock) as Arc<dyn replication::Clock>;
    let sim: Arc<dyn ReplicationEngine> = if in_memory {
        Arc::new(SimEngine::new(
            SimConfig::rehearsal(seed),
            Arc::clone(&clock_dyn),
        ))
    } else {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
        let file = state_dir.join("sim-engine.json");
        Arc::new(
            SimEngine::open(SimConfig::rehearsal(seed), Arc::clone(&clock_dyn), &file).map_err(
                |err| anyhow::anyhow!("cannot open the rehearsal engine's state: {err}"),
            )?,
        )
    };
    let mut map = HashMap::new();
    map.insert(EngineKind::Sim, sim);
    #[cfg(feature = "aws")]
    if used.contains(&EngineKind::Mgn) {
        let Some(settings) = &definitions.config.engines.mgn else {
            bail!("a wave uses the mgn engine but engines.mgn is not configured: add its region");
        };
        let engine = mgn_engine(definitions, settings).await;
        map.insert(
            EngineKind::Mgn,
            Arc::new(engine) as Arc<dyn ReplicationEngine>,
        );
    }
    if used.contains(&EngineKind::Local) {
        let tasks_clock = runs_tasks.then(|| clock.is_warped());
        let (local, note) = local_engine(&definitions.config, clock_dyn, tasks_clock).await?;
        notes.extend(note);
        map.insert(EngineKind::Local, local);
    }
    Ok((map, notes))
}

/// The mgn engine as the configuration says: its default account and those of
/// `engines.mgn.accounts`, each knowing the mgn waves' servers that migrate to it (their
/// FQDN, IP and given MGN id) for matching.
#[cfg(feature = "aws")]
pub async fn mgn_engine(
    definitions: &Definitions,
    settings: &waves::config::MgnEngine,
) -> mgn::fleet::MgnFleet {
    let names: Vec<&String> = settings.accounts.keys().collect();
    let servers: Vec<(mgn::Wanted, usize)> = mgn_servers_with_accounts(definitions)
        .into_iter()
        .map(|(wanted, account)| {
            let index = account
                .and_then(|a| names.iter().position(|n| **n == a))
                .map_or(0, |p| p + 1);
            (wanted, index)
        })
        .collect();
    let mine = |index: usize| -> Vec<mgn::Wanted> {
        servers
            .iter()
            .filter(|(_, i)| *i == index)
            .map(|(w, _)| w.clone())
            .collect()
    };
    let default = mgn::MgnEngine::connect(&mgn::MgnSettings {
        region: settings.region.clone(),
        profile: settings.profile.clone(),
        role_arn: settings.role_arn.clone(),
        endpoint: settings.endpoint.clone(),
        ec2_endpoint: settings.ec2_endpoint.clone(),
        keys: None,
        servers: mine(0),
        agent: settings
            .agent
            .as_ref()
            .map(|a| mgn_agent(a, &definitions.config.base_dir)),
    })
    .await;
    let mut others = Vec::new();
    for (index, (name, account)) in settings.accounts.iter().enumerate() {
        let engine = mgn::MgnEngine::connect(&mgn::MgnSettings {
            region: account.region.clone(),
            profile: account.profile.clone(),
            role_arn: account.role_arn.clone(),
            endpoint: account.endpoint.clone(),
            ec2_endpoint: account.ec2_endpoint.clone(),
            keys: None,
            servers: mine(index + 1),
            agent: account
                .agent
                .as_ref()
                .map(|a| mgn_agent(a, &definitions.config.base_dir)),
        })
        .await;
        others.push((name.clone(), engine));
    }
    let account_of = servers
        .iter()
        .map(|(w, index)| (w.name.clone(), *index))
        .collect();
    mgn::fleet::MgnFleet::new(default, others, account_of)
}

/// How agent_push installs MGN's agent: the keys read from their reference when an
/// install needs them (a relative file from the configuration's folder).
#[cfg(feature = "aws")]
fn mgn_agent(agent: &waves::config::MgnAgent, base: &Path) -> mgn::AgentSettings {
    let reference = match &agent.credential {
        waves::model::CredentialRef::File(path) if Path::new(path).is_relative() => {
            waves::model::CredentialRef::File(base.join(path).display().to_string())
        }
        other => other.clone(),
    };
    mgn::AgentSettings {
        keys: Arc::new(move || reference.read()),
        installer_url: agent.installer_url.clone(),
        endpoint: agent.endpoint.clone(),
        s3_endpoint: agent.s3_endpoint.clone(),
    }
}

/// What the mgn waves say of their servers, for matching them to MGN's.
#[cfg(feature = "aws")]
pub fn mgn_servers(definitions: &Definitions) -> Vec<mgn::Wanted> {
    mgn_servers_with_accounts(definitions)
        .into_iter()
        .map(|(wanted, _)| wanted)
        .collect()
}

/// The mgn waves' servers with the account each names (`mgn_account`).
#[cfg(feature = "aws")]
fn mgn_servers_with_accounts(definitions: &Definitions) -> Vec<(mgn::Wanted, Option<String>)> {
    definitions
        .waves
        .iter()
        .filter(|w| w.engine.value == EngineKind::Mgn)
        .flat_map(|w| w.servers())
        .map(|(_, server)| {
            (
                mgn::Wanted {
                    name: server.name.value.clone(),
                    fqdn: server.fqdn.as_ref().map(|f| f.value.clone()),
                    ip: server.ip.as_ref().map(|i| i.value.to_string()),
                    source_id: server.source_id.as_ref().map(|i| i.value.clone()),
                },
                server.mgn_account.clone(),
            )
        })
        .collect()
}

/// The local engine as the configuration says, its folders from the configuration's
/// folder, its agent the `wavelift-agent` beside this binary; or, when another process
/// of this machine runs it already (`wavelift replicator`, `serve`, `run`), that one,
/// called over its control port, with a note saying so. `tasks_clock`: whether the
/// clock of the tasks this process runs is warped (`None`: it runs none).
async fn local_engine(
    config: &Config,
    clock: Arc<dyn replication::Clock>,
    tasks_clock: Option<bool>,
) -> anyhow::Result<(Arc<dyn ReplicationEngine>, Option<String>)> {
    let engine_config = local_config(config);
    if let Some((client, owner_now)) =
        LocalClient::find(&engine_config.staging_dir, engine_config.quotas).await
    {
        // Tasks compare the engine's times (a launch's) with their own: both clocks
        // must agree, which a warped run and another process's engine cannot promise.
        let apart = (clock.now().as_second() - owner_now.as_second()).abs();
        let owner = format!(
            "the local engine of {} runs in process {} (wavelift replicator, serve or run)",
            engine_config.staging_dir.display(),
            client.pid()
        );
        match tasks_clock {
            Some(true) => bail!(
                "{owner}: a run with --time-warp needs the engine to itself; stop process {}, or run without --time-warp",
                client.pid()
            ),
            Some(false) if apart > 60 => bail!(
                "{owner} on a clock {} apart from this one (a run with --time-warp): tasks compare the engine's times with their own; stop process {} first",
                waves::units::Dur::from_seconds(apart.unsigned_abs()),
                client.pid()
            ),
            _ => {}
        }
        let note = format!(
            "the local engine is process {}'s (it holds {}); this command calls it there",
            client.pid(),
            engine_config.staging_dir.display()
        );
        // A process that runs tasks goes on should the owner die: it runs the engine
        // itself then, rather than spend its tasks' retries calling a process gone.
        let client = match tasks_clock {
            Some(_) => client.taking_over(engine_config, clock),
            None => client,
        };
        return Ok((Arc::new(client), Some(note)));
    }
    Ok((Arc::new(start_local(engine_config, clock).await?), None))
}

/// Why a run with `--time-warp` cannot have the local engine, said before anything is
/// applied: another process of this machine holds it (`wavelift replicator`, `serve`,
/// `run`), and a warped run needs it to itself. `None` when no wave uses it or it is free.
pub async fn warped_run_refused(definitions: &Definitions) -> Option<String> {
    if !definitions
        .waves
        .iter()
        .any(|w| w.engine.value == EngineKind::Local)
    {
        return None;
    }
    let engine_config = local_config(&definitions.config);
    let (client, _) = LocalClient::find(&engine_config.staging_dir, engine_config.quotas).await?;
    Some(format!(
        "the local engine of {} runs in process {} (wavelift replicator, serve or run): a run with --time-warp needs the engine to itself; stop process {}, or run without --time-warp",
        engine_config.staging_dir.display(),
        client.pid(),
        client.pid()
    ))
}

/// The local engine of this process, unless another process of this machine runs it
/// (its process id then).
pub async fn own_local_engine(
    config: &Config,
    clock: Arc<dyn replication::Clock>,
) -> anyhow::Result<Result<LocalEngine, u32>> {
    let engine_config = local_config(config);
    if let Some((client, _)) =
        LocalClient::find(&engine_config.staging_dir, engine_config.quotas).await
    {
        return Ok(Err(client.pid()));
    }
    Ok(Ok(start_local(engine_config, clock).await?))
}

async fn start_local(
    engine_config: LocalConfig,
    clock: Arc<dyn replication::Clock>,
) -> anyhow::Result<LocalEngine> {
    LocalEngine::start(engine_config, clock)
        .await
        .context("cannot start the local replication engine")
}

/// The local engine's settings from the configuration.
fn local_config(config: &Config) -> LocalConfig {
    let local = &config.engines.local;
    let agent_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("wavelift-agent")))
        .unwrap_or_else(|| PathBuf::from("wavelift-agent"));
    let mut engine_config = LocalConfig::new(
        local.listen,
        config.resolve(&local.staging_dir),
        config.resolve(&local.target_dir),
        agent_binary,
    );
    engine_config.advertise = local.advertise.clone();
    engine_config.image_format = match local.image_format {
        waves::config::ImageFormat::Raw => ImageFormat::Raw,
        waves::config::ImageFormat::Qcow2 => ImageFormat::Qcow2,
    };
    engine_config.boot_check = local.boot_check.clone();
    engine_config.post_launch = local.post_launch.clone();
    engine_config.agent_give_up_after =
        std::time::Duration::from_secs(local.agent_give_up_after.approx_seconds());
    engine_config.remote_agent_dir = local.agent_dir.clone();
    let seconds = |d: waves::units::Dur| {
        jiff::SignedDuration::from_secs(i64::try_from(d.approx_seconds()).unwrap_or(i64::MAX))
    };
    engine_config.retention = replication::local::Retention {
        tiers: local
            .retention
            .iter()
            .map(|tier| (seconds(tier.every), seconds(tier.keep_for)))
            .collect(),
    };
    engine_config
}

pub fn ports(definitions: &Definitions, engines: Engines) -> Ports {
    let config = &definitions.config;
    let base = &config.base_dir;
    let made: Result<Arc<dyn Cmdb>, tasks::cmdb::CmdbError> = match &config.cmdb {
        Some(CmdbConfig::File { path }) => Ok(Arc::new(FileCmdb::new(&config.resolve(path)))),
        Some(CmdbConfig::Servicenow {
            api,
            table,
            retired_status,
            target_field,
        }) => ServiceNow::new(api, table, retired_status, target_field, base)
            .map(|c| Arc::new(c) as Arc<dyn Cmdb>),
        Some(CmdbConfig::Netbox {
            api,
            object,
            status,
        }) => NetBox::new(api, *object, status, base).map(|c| Arc::new(c) as Arc<dyn Cmdb>),
        Some(CmdbConfig::Http {
            api,
            method,
            headers,
            body,
        }) => HttpCmdb::new(api, method, headers, body.as_deref(), base)
            .map(|c| Arc::new(c) as Arc<dyn Cmdb>),
        None => Ok(Arc::new(NoCmdb)),
    };
    // A CMDB that cannot be set up (an unreadable ca_file) fails each cleanup with why.
    let cmdb = made.unwrap_or_else(|err| Arc::new(tasks::cmdb::BrokenCmdb(err.0)));
    let shell: Arc<dyn RemoteShell> = Arc::new(AccessShell {
        local: LocalShell,
        ssh: tasks::ssh::SshShell::new(&config.ssh, &config.base_dir),
    });
    Ports {
        engines,
        shell,
        cmdb,
    }
}

/// Who the operator is, for approvals and the log: `--by` as given (trimmed), else
/// `$USER`; a blank name is no name (an audit trail that says "approved by" nobody says
/// nothing).
pub fn operator(by: Option<&str>) -> anyhow::Result<String> {
    let named = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned);
    let name = by
        .and_then(named)
        .or_else(|| std::env::var("USER").ok().as_deref().and_then(named))
        .unwrap_or_else(|| "operator".to_owned());
    // Who acts is written in the job progress log: on a line of its own.
    crate::store::check_given("the operator's name", &name, crate::store::MAX_NAME)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_operator_name_is_no_name() {
        let user = operator(None).expect("$USER or `operator`");
        assert_eq!(operator(Some("  alice ")).ok().as_deref(), Some("alice"));
        assert_eq!(operator(Some("   ")).ok(), Some(user.clone()));
        assert_eq!(operator(Some("")).ok(), Some(user.clone()));
        assert!(operator(Some("eve\nforged")).is_err());
        assert!(!user.trim().is_empty() && user.trim() == user);
    }

    fn config(text: &str) -> Config {
        let source = waves::source::SourceFile {
            name: "wavelift.yaml".into(),
            text: text.to_owned(),
        };
        let loaded = waves::load::load_sources(Some(&source), PathBuf::from("/srv/lab"), &[]);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        loaded.definitions.config
    }

    #[test]
    fn the_local_engine_keeps_the_retention_the_configuration_names() {
        let hours = |h: i64| jiff::SignedDuration::from_hours(h);
        let written = config(
            "version: 1\nengines:\n  local:\n    retention:\n      - { every: 1h, for: 2d }\n      - { every: 1w, for: 12w }\n",
        );
        assert_eq!(
            local_config(&written).retention.tiers,
            vec![(hours(1), hours(48)), (hours(7 * 24), hours(12 * 7 * 24))]
        );
        // Not written: the seeds' tiers, the engine's own default.
        let builtin = config("version: 1\n");
        assert_eq!(
            local_config(&builtin).retention,
            replication::local::Retention::default()
        );
        // An empty list keeps the newest point only.
        let none = config("version: 1\nengines:\n  local:\n    retention: []\n");
        assert!(local_config(&none).retention.tiers.is_empty());
    }
}
