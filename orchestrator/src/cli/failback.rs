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
    /// The moment of a warped run the store holds (`status_now`), or 0.
    now: i64,
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
            if store.removed_server_names().await?.contains(name) {
                bail!(
                    "server `{name}` was removed from the waves by an apply (revision {revision} no longer has it): its history is kept (wavelift events); an agent of it still running stops at its give-up time, or by hand on the server"
                );
            }
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
        let (now, warped) = crate::scheduler::clock::status_now(&store).await?;
        Ok(Opened {
            store,
            definitions,
            wave,
            server,
            engine,
            ports,
            now: if warped { now } else { 0 },
        })
    }

    fn wave(&self) -> &waves::model::Wave {
        &self.definitions.waves[self.wave]
    }

    /// An event of this server for the job log, with who did it, dated as the levers
    /// are: in a warped run's time while it is ahead of the wall clock.
    pub(super) fn event(&self, name: &str, who: &str, kind: &str, message: String) -> NewEvent {
        NewEvent {
            at: self.now.max(jiff::Timestamp::now().as_millisecond()),
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
    let who = state::operator(args.by.as_deref())?;
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

/// `wavelift failover SERVER --point rp-N`: the server cut over to a copy launched from a
/// recovery point of the operator's choosing, as a disaster recovery's failover: the
/// copy launched, checked, and finalized (replication ends, the copy is the server); a
/// copy that fails its checks, or does not come up within `--wait`, is rolled back (the
/// copy terminated, the server ready for cutover again). The wave's cutover, if still
/// to come, then finds the server cut over and launches nothing.
pub async fn failover(args: &FailoverArgs) -> anyhow::Result<ExitCode> {
    use replication::{JobServer, JobStatus, LaunchKind, LaunchStatus, LifeCycle, PointInTime};
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
    let asked = args.point.clone().unwrap_or_default();
    // `rp-1` is `rp-000001`: the number is what names a point.
    let number = |id: &str| id.strip_prefix("rp-").and_then(|n| n.parse::<u64>().ok());
    let Some(point) = points
        .iter()
        .find(|p| p.id == asked || number(&p.id).is_some_and(|n| Some(n) == number(&asked)))
        .map(|p| p.id.clone())
    else {
        let known: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        bail!(
            "{name} has no recovery point `{asked}`; it has: {} (wavelift failover {name} --list)",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    // A failover is a cutover: not beside the wave's own, and only of a server that
    // replicates and passed its boot test.
    let cutover = format!("{name}/cutover");
    let task = opened
        .store
        .tasks(Some(&opened.wave().name.value))
        .await?
        .into_iter()
        .find(|t| t.id == cutover);
    let (now, _) = crate::scheduler::clock::status_now(&opened.store).await?;
    if let Some(why) = task
        .as_ref()
        .and_then(|task| cutover_in_the_way(task, now, args.wait))
    {
        bail!("{why}");
    }
    let who = state::operator(args.by.as_deref())?;
    match source.life_cycle {
        LifeCycle::ReadyForCutover => {}
        // Never marked ready for cutover: its boot test was skipped (the cutover task
        // marks it the same way).
        LifeCycle::ReadyForTest => {
            engine
                .change_life_cycle(&source.id, LifeCycle::ReadyForCutover)
                .await
                .map_err(|err| anyhow::anyhow!("marking {name} ready for cutover: {err}"))?;
        }
        LifeCycle::Cutover | LifeCycle::Archived => bail!(
            "{name} is cut over already ({:?}): its source replicates no more; to launch it again from one of its points, fail it back first (wavelift failback {name}), which makes it ready for cutover again",
            source.life_cycle
        ),
        // The wave's cutover is not running (above): a failover stopped before it ended
        // left it so; undone first, then this one goes ahead.
        LifeCycle::CuttingOver => {
            let undone = roll_back_failover(engine, &source.id).await?;
            opened
                .store
                .append_events(&[opened.event(
                    name,
                    &who,
                    "failover.failed",
                    format!(
                        "{name} was left cutting over (a failover stopped before it ended): rolled back ({undone}) before the failover from {point}"
                    ),
                )])
                .await?;
            outln!(
                "{name} was left cutting over by a failover stopped before it ended: rolled back ({undone})"
            );
        }
        other => bail!(
            "{name} is not ready for cutover ({other:?}): a failover launches a cutover copy of a server that replicates and whose boot test passed or was skipped"
        ),
    }
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
    let late = || std::time::Instant::now() >= deadline;
    let wait = || tokio::time::sleep(Duration::from_millis(250));
    // The copy launched and healthy, or why not (then rolled back).
    let outcome: Result<replication::Target, String> = async {
        let job = loop {
            let now = match engine.describe_job_for(&job.id, &source.id).await {
                Ok(now) => now,
                // A busy or unreachable engine is waited out like a launch under way.
                Err(err) if transient(&err) && !late() => {
                    wait().await;
                    continue;
                }
                Err(err) => return Err(err.to_string()),
            };
            if now.status == JobStatus::Completed {
                break now;
            }
            if late() {
                return Err(format!(
                    "the launch {} did not finish within {} s",
                    job.id,
                    args.wait.as_secs()
                ));
            }
            wait().await;
        };
        let target = match job.servers.iter().find(|s| s.source == source.id) {
            Some(JobServer {
                status: LaunchStatus::Launched,
                target: Some(target),
                ..
            }) => target.clone(),
            Some(slot) => {
                return Err(format!(
                    "the launch from {point} failed: {}",
                    slot.message
                        .clone()
                        .unwrap_or_else(|| format!("{:?}", slot.status))
                ));
            }
            None => return Err(format!("{name} is not in launch {}", job.id)),
        };
        loop {
            let found = match engine.describe_target(&target).await {
                Ok(found) => found,
                Err(err) if transient(&err) && !late() => {
                    wait().await;
                    continue;
                }
                Err(err) => return Err(err.to_string()),
            };
            match tasks::launch::is_healthy(&found) {
                Some(true) => return Ok(found),
                Some(false) => {
                    return Err(format!(
                        "the copy {} is not healthy ({:?}, {:?}{})",
                        found.id,
                        found.state,
                        found.health,
                        found.detail.map(|d| format!(": {d}")).unwrap_or_default()
                    ));
                }
                None if late() => {
                    return Err(format!(
                        "the copy {} did not pass its checks within {} s",
                        found.id,
                        args.wait.as_secs()
                    ));
                }
                None => wait().await,
            }
        }
    }
    .await;
    let finalized = match outcome {
        Ok(target) => engine
            .finalize_cutover(&source.id)
            .await
            .map(|()| target)
            .map_err(|err| format!("finalizing the failover: {err}")),
        Err(why) => Err(why),
    };
    match finalized {
        Ok(target) => {
            let message = format!(
                "{name} failed over to {} from {point}, health {:?}{}: replication ended; the copy is the server now",
                target.id,
                target.health,
                target.address.map(|a| format!(", {a}")).unwrap_or_default()
            );
            events.push(opened.event(name, &who, "failover.finalized", message.clone()));
            opened.store.append_events(&events).await?;
            outln!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            // A finalize whose answer was lost left the server cut over: that is a
            // failover done, said as such.
            if let Ok(now) = engine.describe_source(&source.id).await
                && now.life_cycle == LifeCycle::Cutover
            {
                let message = format!(
                    "{name} failed over from {point} (the engine says it is cut over; its answer to the finalize was lost: {why})"
                );
                events.push(opened.event(name, &who, "failover.finalized", message.clone()));
                opened.store.append_events(&events).await?;
                outln!("{message}");
                return Ok(ExitCode::SUCCESS);
            }
            let message = match roll_back_failover(engine, &source.id).await {
                Ok(undone) => format!(
                    "the failover of {name} from {point} was rolled back ({undone}): {why}; {name} is ready for cutover again and replicates as before"
                ),
                Err(err) => format!(
                    "the failover of {name} from {point} failed: {why}; rolling it back failed too ({err:#}): `wavelift failover {name} --point ID` rolls it back before it tries again"
                ),
            };
            events.push(opened.event(name, &who, "failover.failed", message.clone()));
            opened.store.append_events(&events).await?;
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Why the wave's own cutover task of the server keeps a failover from starting at `now`
/// (the run's time) with `wait` for its copy: it runs, or it is due or falls due before
/// the failover is over, when the run could start it beside the failover (which would
/// take the failover's launch for its own).
fn cutover_in_the_way(task: &crate::store::TaskRow, now: i64, wait: Duration) -> Option<String> {
    let cutover = &task.id;
    let waiting = matches!(task.state.as_str(), "pending" | "awaiting_approval");
    let over_by = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
    if task.state == "running" {
        Some(format!(
            "{cutover} is running: a failover is a cutover of its own, not one beside it; wait for it, or abort it (wavelift abort {cutover} --reason TEXT)"
        ))
    } else if waiting && task.earliest <= now {
        Some(format!(
            "{cutover} is due (its window is open) and would start beside the failover: skip it first (wavelift skip {cutover}), and the failover cuts the server over instead"
        ))
    } else if waiting && task.earliest <= over_by {
        Some(format!(
            "{cutover} falls due at {} (its window opens), before the failover's wait of {} ends, and would start beside it: skip it first (wavelift skip {cutover}), or fail over with a shorter --wait",
            crate::scheduler::clock::timestamp(task.earliest),
            waves::units::format_seconds(wait.as_secs_f64())
        ))
    } else {
        None
    }
}

/// A busy or unreachable engine: waited out, not taken for a failed failover.
fn transient(err: &replication::EngineError) -> bool {
    matches!(
        err.kind,
        replication::ErrorKind::Throttled | replication::ErrorKind::Unavailable
    )
}

/// Undoes a failover as a cutover is undone: the server, if still cutting over, ready
/// for cutover again, and its cutover copy terminated. Says what it did.
async fn roll_back_failover(
    engine: &dyn replication::ReplicationEngine,
    id: &replication::SourceId,
) -> anyhow::Result<String> {
    use replication::{LaunchKind, LifeCycle};
    let mut done = Vec::new();
    let source = engine
        .describe_source(id)
        .await
        .map_err(anyhow::Error::msg)?;
    if source.life_cycle == LifeCycle::CuttingOver {
        engine
            .change_life_cycle(id, LifeCycle::ReadyForCutover)
            .await
            .map_err(|err| anyhow::anyhow!("its life cycle: {err}"))?;
        done.push("ready for cutover again");
    }
    engine
        .terminate_targets(id, LaunchKind::Cutover)
        .await
        .map_err(|err| anyhow::anyhow!("its copy: {err}"))?;
    done.push("its cutover copy terminated");
    Ok(done.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use replication::sim::{ManualClock, SimConfig, SimEngine};
    use replication::{
        DiskSpec, JobStatus, LaunchKind, LifeCycle, PointInTime, ReplicationEngine, SourceSpec,
        TargetState,
    };

    /// The wave's cutover keeps a failover back while it runs, is due, or falls due
    /// within the failover's wait; one due later, or over, does not.
    #[test]
    fn a_cutover_due_within_the_wait_keeps_a_failover_back() {
        let hour = 3_600_000;
        let task = |state: &str, earliest: i64| crate::store::TaskRow {
            earliest,
            next_run_at: earliest,
            ..crate::store::TaskRow::fixture(Some("web-1"), "web", "cutover", state)
        };
        let wait = std::time::Duration::from_secs(600);
        let why = |state: &str, earliest: i64| {
            super::cutover_in_the_way(&task(state, earliest), 10 * hour, wait)
        };
        assert!(why("running", 0).is_some_and(|w| w.contains("is running")));
        assert!(
            why("pending", 9 * hour).is_some_and(|w| w.contains("is due (its window is open)"))
        );
        let soon = why("awaiting_approval", 10 * hour + 300_000).unwrap_or_default();
        assert!(
            soon.contains("web-1/cutover falls due at 1970-01-01T10:05:00Z")
                && soon.contains("before the failover's wait of 10m ends")
                && soon.contains("wavelift skip web-1/cutover"),
            "{soon}"
        );
        assert_eq!(why("pending", 10 * hour + 601_000), None);
        for over in ["succeeded", "skipped", "failed", "cancelled", "blocked"] {
            assert_eq!(why(over, 0), None, "{over}");
        }
    }

    /// A failover left cutting over (its launch done, never finalized) is rolled back:
    /// ready for cutover again, its copy terminated; rolling back again changes nothing
    /// and fails on nothing.
    #[tokio::test]
    async fn a_failover_left_cutting_over_is_rolled_back() {
        let clock = Arc::new(ManualClock::new(jiff::Timestamp::UNIX_EPOCH));
        let quiet = SimConfig {
            stall_probability: 0.0,
            disconnect_probability: 0.0,
            boot_failure_probability: 0.0,
            ..SimConfig::rehearsal(1)
        };
        let engine = SimEngine::new(quiet, clock.clone());
        let source = engine
            .register_source(&SourceSpec {
                name: "s1".to_owned(),
                hostname: None,
                disks: vec![DiskSpec {
                    device: "/dev/sda".to_owned(),
                    size_bytes: 10 << 30,
                    used_bytes: 1 << 30,
                }],
                change_rate_bytes_per_second: 0.0,
            })
            .await
            .expect("registered");
        clock.advance(3600.0);
        let id = source.id;
        engine
            .change_life_cycle(&id, LifeCycle::ReadyForCutover)
            .await
            .expect("ready for cutover");
        let job = engine
            .start_launch(
                LaunchKind::Cutover,
                std::slice::from_ref(&id),
                &PointInTime::Latest,
            )
            .await
            .expect("launched");
        let mut target = None;
        for _ in 0..100 {
            clock.advance(60.0);
            let now = engine.describe_job(&job.id).await.expect("job");
            if now.status == JobStatus::Completed {
                target = now.servers[0].target.clone();
                break;
            }
        }
        let target = target.expect("a cutover copy");
        let life_cycle = async || {
            engine
                .describe_source(&id)
                .await
                .expect("source")
                .life_cycle
        };
        assert_eq!(life_cycle().await, LifeCycle::CuttingOver);
        let said = super::roll_back_failover(&engine, &id)
            .await
            .expect("rolled back");
        assert_eq!(said, "ready for cutover again, its cutover copy terminated");
        assert_eq!(life_cycle().await, LifeCycle::ReadyForCutover);
        assert_eq!(
            engine.describe_target(&target).await.expect("copy").state,
            TargetState::Terminated
        );
        let again = super::roll_back_failover(&engine, &id)
            .await
            .expect("again");
        assert_eq!(again, "its cutover copy terminated");
    }
}
