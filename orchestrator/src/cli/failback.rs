//! `wavelift failback SERVER`: a cut-over server back on its own disks. The engine
//! replicates the cutover copy back, its newest state is written onto the source (only
//! what differs), then the source returns to normal: the copy is terminated, the source
//! is ready for cutover again, and its agent replicates it as before. Every step is in
//! the job log (`wavelift events`). Running it again goes on from where it stopped.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::state::{self, StateArgs};
use crate::scheduler::SchedulerClock;
use crate::scheduler::clock::WARP_KEY;
use crate::store::NewEvent;

#[derive(Debug, clap::Args)]
pub struct FailbackArgs {
    /// The server to fail back
    server: String,
    /// Stop once the source holds the copy's state: the copy stays, and keeps
    /// replicating back, until this runs again without it
    #[arg(long)]
    stop_after_restore: bool,
    /// How long to wait for the copy's first recovery point, and for the source's after
    /// its return to normal
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_wait)]
    wait: Duration,
    /// Who does it (default: $USER)
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    waves::units::parse_duration(text)
        .map(|d| Duration::from_secs(d.approx_seconds()))
        .map_err(|err| format!("`{text}`: {err}"))
}

/// The applied definitions, the server by name, its wave, its engine and the ports.
pub(super) struct Opened {
    pub(super) store: crate::store::Store,
    definitions: waves::model::Definitions,
    wave: usize,
    /// The server asked for, as the applied definitions have it.
    pub(super) server: waves::model::Server,
    pub(super) engine: Arc<dyn replication::ReplicationEngine>,
    ports: crate::executor::Ports,
}

impl Opened {
    pub(super) async fn open(state_args: &StateArgs, name: &str) -> anyhow::Result<Opened> {
        let store = state_args.open_existing().await?;
        let Some((revision, sources)) = store.current_sources().await? else {
            bail!("nothing was applied: apply definitions first (wavelift apply PATH)");
        };
        let loaded = sources.load();
        if loaded.diagnostics.has_errors() {
            super::validate::print_diagnostics(&loaded.diagnostics)?;
            bail!("revision {revision} in the store no longer validates with this Wavelift");
        }
        let definitions = loaded.definitions;
        let found = definitions.waves.iter().enumerate().find_map(|(index, w)| {
            w.servers()
                .find(|(_, s)| s.name.value == name)
                .map(|(_, s)| (index, s.clone()))
        });
        let Some((wave, server)) = found else {
            bail!("no server `{name}` in the applied waves (revision {revision})");
        };
        // The clock the waves ran on: a warped run's recovery points are in its future.
        let clock = match store.meta_get(WARP_KEY).await?.and_then(|v| v.parse().ok()) {
            Some(warped) => SchedulerClock::warped(warped),
            None => SchedulerClock::system(),
        };
        let clock = Arc::new(clock);
        // Only the engine of the server's wave: another wave's local engine may be
        // running in `wavelift run`, its port taken.
        let own = waves::model::Definitions {
            config: definitions.config.clone(),
            waves: vec![definitions.waves[wave].clone()],
        };
        let (engines, notes) = state::engines(&own, &clock, &state_args.state_dir, 1, false, false)
            .await
            .context("cannot start the replication engines")?;
        for note in notes {
            eprintln!("{note}");
        }
        let kind = definitions.waves[wave].engine.value;
        let Some(engine) = engines.get(&kind).cloned() else {
            bail!("the {kind} engine is not available here");
        };
        let ports = state::ports(&definitions, engines);
        Ok(Opened {
            store,
            definitions,
            wave,
            server,
            engine,
            ports,
        })
    }

    fn wave(&self) -> &waves::model::Wave {
        &self.definitions.waves[self.wave]
    }

    /// An event of this server for the job log, with who did it.
    pub(super) fn event(&self, name: &str, who: &str, kind: &str, message: String) -> NewEvent {
        NewEvent {
            at: jiff::Timestamp::now().as_millisecond(),
            wave: self.wave().name.value.clone(),
            server: Some(name.to_owned()),
            task_id: None,
            kind: kind.to_owned(),
            message,
            data: Some(serde_json::json!({ "by": who }).to_string()),
        }
    }
}

pub async fn run(args: &FailbackArgs) -> anyhow::Result<ExitCode> {
    let opened = Opened::open(&args.state, &args.server).await?;
    let server = &opened.server;
    let reach = tasks::context::Reach {
        server,
        engine: opened.engine.as_ref(),
        shell: opened.ports.shell.as_ref(),
        config_dir: &opened.definitions.config.base_dir,
    };
    let who = state::operator(args.by.as_deref());
    let until = if args.stop_after_restore {
        tasks::failback::Until::Restored
    } else {
        tasks::failback::Until::Normal
    };
    let event = |kind: &str, message: String| opened.event(&args.server, &who, kind, message);
    opened
        .store
        .append_events(&[event(
            "operator.failback",
            format!("failback of {} by {who}", server.name.value),
        )])
        .await?;
    // Each step is in the job log as it happens: a failback stopped halfway shows how
    // far it got.
    let store = &opened.store;
    let mut say = |kind: &str, message: String| {
        println!("{message}");
        let written = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(store.append_events(&[event(kind, message)]))
        });
        if let Err(err) = written {
            eprintln!("warning: the job log did not take a step of the failback: {err:#}");
        }
    };
    let outcome = tasks::failback::run(&reach, until, args.wait, &mut say).await;
    if let Err(why) = &outcome {
        store
            .append_events(&[event("failback.failed", why.clone())])
            .await?;
    }
    match outcome {
        Ok(outcome) if outcome.returned => {
            outln!(
                "{} failed back: {} bytes restored from its copy; it replicates as before and can be cut over again",
                server.name.value,
                outcome.restored_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(outcome) => {
            outln!(
                "{} restored from its copy ({} bytes); the copy stays: `wavelift failback {}` restores what changes on it meanwhile, then returns to normal",
                server.name.value,
                outcome.restored_bytes,
                server.name.value
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("error: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The server whose copy to launch
    server: String,
    /// The recovery point to launch from (`rp-N`, as --list shows)
    #[arg(long, value_name = "ID", required_unless_present = "list")]
    point: Option<String>,
    /// List the server's recovery points instead
    #[arg(long, conflicts_with = "point")]
    list: bool,
    /// How long to wait for the launch
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_wait)]
    wait: Duration,
    /// Who does it (default: $USER)
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

/// `wavelift failover SERVER --point rp-N`: a cutover copy launched from a recovery
/// point of the operator's choosing (the cutover task launches from the latest data).
pub async fn failover(args: &FailoverArgs) -> anyhow::Result<ExitCode> {
    use replication::{JobServer, JobStatus, LaunchKind, LaunchStatus, PointInTime};
    let opened = Opened::open(&args.state, &args.server).await?;
    let engine = opened.engine.as_ref();
    let name = &args.server;
    let Some(source) = engine.find_source(name).await.map_err(anyhow::Error::msg)? else {
        bail!(
            "the {} engine does not know {name}: it was never replicated",
            engine.name()
        );
    };
    let points = engine
        .recovery_points(&source.id)
        .await
        .map_err(anyhow::Error::msg)?;
    if args.list {
        if points.is_empty() {
            outln!("{name} has no recovery point yet");
        }
        for point in &points {
            outln!("{}  {}", point.id, point.taken_at);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let point = args.point.clone().unwrap_or_default();
    if !points.iter().any(|p| p.id == point) {
        let known: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        bail!(
            "{name} has no recovery point `{point}`; it has: {} (wavelift failover {name} --list)",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    let who = state::operator(args.by.as_deref());
    let job = engine
        .start_launch(
            LaunchKind::Cutover,
            std::slice::from_ref(&source.id),
            &PointInTime::RecoveryPoint(point.clone()),
        )
        .await
        .map_err(|err| anyhow::anyhow!("the launch was refused: {}", err.message))?;
    let mut events = vec![opened.event(
        name,
        &who,
        "engine.start_launch",
        format!(
            "failover of {name} from {point} by {who}: cutover launch {}",
            job.id
        ),
    )];
    outln!("{name}: cutover launch {} from {point} started", job.id);
    let deadline = std::time::Instant::now() + args.wait;
    let job = loop {
        let now = engine
            .describe_job_for(&job.id, &source.id)
            .await
            .map_err(anyhow::Error::msg)?;
        if now.status == JobStatus::Completed {
            break now;
        }
        if std::time::Instant::now() >= deadline {
            opened.store.append_events(&events).await?;
            bail!(
                "the launch {} of {name} did not finish within {} s; it goes on: see wavelift status",
                job.id,
                args.wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let slot = job.servers.iter().find(|s| s.source == source.id);
    let outcome = match slot {
        Some(JobServer {
            status: LaunchStatus::Launched,
            target: Some(target),
            ..
        }) => {
            let target = engine
                .describe_target(target)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok(format!(
                "{name}: copy {} from {point} launched, health {:?}{}",
                target.id,
                target.health,
                target.address.map(|a| format!(", {a}")).unwrap_or_default()
            ))
        }
        Some(slot) => Err(format!(
            "{name}: the launch from {point} failed: {}",
            slot.message
                .clone()
                .unwrap_or_else(|| format!("{:?}", slot.status))
        )),
        None => Err(format!("{name} is not in launch {}", job.id)),
    };
    let (kind, message) = match &outcome {
        Ok(message) => ("failover.launched", message.clone()),
        Err(message) => ("failover.failed", message.clone()),
    };
    events.push(opened.event(name, &who, kind, message));
    opened.store.append_events(&events).await?;
    match outcome {
        Ok(message) => {
            outln!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}
