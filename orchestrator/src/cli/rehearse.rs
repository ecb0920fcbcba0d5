//! `wavelift rehearse`: play whole waves on the rehearsal engine in seconds, in a
//! throw-away store, and print the projected timeline and the risks. Nothing is
//! contacted and nothing is written outside a temporary folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tasks::cmdb::RehearsalCmdb;
use tasks::shell::RehearsalShell;

use super::{DefinitionArgs, load_loaded};
use crate::executor::{Executor, Limits, Ports, RunOptions, Stopped};
use crate::scheduler::SchedulerClock;
use crate::store::{Store, TaskRow};

pub async fn run(args: &DefinitionArgs, seed: Option<u64>) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_loaded(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    let seed = seed.unwrap_or(loaded.definitions.config.engines.sim.seed);
    let folder = std::env::temp_dir().join(format!(
        "wavelift-rehearsal-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let result = rehearse(&loaded, &folder, seed).await;
    let _ = std::fs::remove_dir_all(&folder);
    let (text, failed) = result?;
    out!("{text}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The retried tasks listed one per line, at most.
const MAX_RETRIED_LISTED: usize = 20;

async fn rehearse(
    loaded: &waves::Loaded,
    folder: &std::path::Path,
    seed: u64,
) -> anyhow::Result<(String, bool)> {
    let definitions = &loaded.definitions;
    let url = format!("sqlite://{}", folder.join("rehearsal.db").display());
    let store = Store::open(&url).await?;
    // A rehearsal assumes every go/no-go is a go; the timeline says so.
    let start = store.prepare_rehearsal(loaded, "rehearsal").await?;
    let clock = Arc::new(SchedulerClock::warped(start));
    let mut engines = std::collections::HashMap::new();
    let sim: Arc<dyn replication::ReplicationEngine> = Arc::new(replication::sim::SimEngine::new(
        replication::sim::SimConfig::rehearsal(seed),
        Arc::clone(&clock) as Arc<dyn replication::Clock>,
    ));
    for wave in &definitions.waves {
        engines.insert(wave.engine.value, Arc::clone(&sim));
    }
    let executor = Executor {
        store: store.clone(),
        definitions: Arc::new(definitions.clone()),
        ports: Ports {
            engines,
            shell: Arc::new(RehearsalShell),
            cmdb: Arc::new(RehearsalCmdb),
        },
        clock,
        owner: "rehearsal".to_owned(),
        limits: Limits::default(),
    };
    let wall = std::time::Instant::now();
    let stopped = executor
        .run(
            RunOptions {
                until_done: true,
                reports: None,
                revision: None,
            },
            |_| {},
        )
        .await?;
    let tasks = store.tasks(None).await?;
    let events = store.events_after(0, None, u32::MAX).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "REHEARSAL on the sim engine (seed {seed}): {} tasks played in {:.1}s; nothing was contacted; approvals assumed given",
        tasks.len(),
        wall.elapsed().as_secs_f64()
    );
    if let Stopped::AwaitingApproval(n) = stopped {
        let _ = writeln!(out, "  {n} task(s) could not finish");
    }
    let failed = timeline(&mut out, definitions, &tasks);
    // The retried tasks, each with how often and its last failure: the rehearsal's
    // store is gone once this is printed, so `events` cannot show them.
    let mut retried: BTreeMap<&str, (&str, usize, &str)> = BTreeMap::new();
    for event in events.iter().filter(|e| e.kind == "task.retrying") {
        let Some(id) = event.task_id.as_deref() else {
            continue;
        };
        let entry = retried.entry(id).or_insert((event.wave.as_str(), 0, ""));
        entry.1 += 1;
        entry.2 = event.message.as_str();
    }
    let rollbacks = events
        .iter()
        .filter(|e| e.kind == "task.failed" && e.message.contains("rolled back"))
        .count();
    let _ = writeln!(out, "risks:");
    let mut risks = 0;
    for task in tasks
        .iter()
        .filter(|t| matches!(t.state.as_str(), "failed" | "blocked"))
    {
        risks += 1;
        let _ = writeln!(
            out,
            "  {}: {} {}",
            task.wave,
            task.id,
            task.reason
                .as_deref()
                .map(|r| format!("- {r}"))
                .unwrap_or_default()
        );
    }
    // By wave, then task; a large rehearsal's list is cut short, with the count.
    let mut retried: Vec<_> = retried.into_iter().collect();
    retried.sort_by(|a, b| (a.1.0, a.0).cmp(&(b.1.0, b.0)));
    for (id, (wave, times, last)) in retried.iter().take(MAX_RETRIED_LISTED) {
        let _ = writeln!(
            out,
            "  {wave}: {id} was retried {times} time(s) (injected failures); the last: {last}"
        );
    }
    if retried.len() > MAX_RETRIED_LISTED {
        let _ = writeln!(
            out,
            "  ... and {} more task(s) retried",
            retried.len() - MAX_RETRIED_LISTED
        );
    }
    risks += retried.len();
    if rollbacks > 0 {
        risks += 1;
        let _ = writeln!(out, "  {rollbacks} cutover(s) rolled back");
    }
    if risks == 0 {
        let _ = writeln!(out, "  none found in this rehearsal");
    }
    Ok((out, failed))
}

fn local(wave: &waves::Wave, ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| {
            t.to_zoned(wave.window.interval.start.time_zone().clone())
                .strftime("%a %Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// When each wave reached each milestone; returns whether any task failed.
fn timeline(out: &mut String, definitions: &waves::Definitions, tasks: &[TaskRow]) -> bool {
    let mut by_wave: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
    for task in tasks {
        by_wave.entry(task.wave.as_str()).or_default().push(task);
    }
    let mut failed = false;
    for wave in &definitions.waves {
        let rows = by_wave
            .get(wave.name.value.as_str())
            .cloned()
            .unwrap_or_default();
        let last = |kind: &str| {
            rows.iter()
                .filter(|t| t.kind == kind)
                .filter_map(|t| t.finished_at)
                .max()
        };
        // Replication is continuous when its check is first ready (it watches on until
        // the window).
        let all_ready = |kind: &str| {
            rows.iter()
                .filter(|t| t.kind == kind)
                .filter_map(|t| t.released_at.or(t.finished_at))
                .max()
        };
        let first = |kind: &str| {
            rows.iter()
                .filter(|t| t.kind == kind)
                .filter_map(|t| t.started_at)
                .min()
        };
        let bad = rows
            .iter()
            .filter(|t| matches!(t.state.as_str(), "failed" | "blocked"))
            .count();
        failed |= bad > 0;
        let _ = writeln!(
            out,
            "{} ({} servers):",
            wave.name.value,
            wave.server_count()
        );
        for (label, value) in [
            ("first task", first("prereq_check")),
            ("agents pushed", last("agent_push")),
            (
                "all replicating (continuous)",
                all_ready("replication_verify"),
            ),
            ("boot tests done", last("boot_test")),
            (
                "window opens",
                Some(wave.window.interval.start.timestamp().as_millisecond()),
            ),
            ("cutovers done", last("cutover")),
            (
                "window closes",
                Some(wave.window.interval.end.timestamp().as_millisecond()),
            ),
            ("CMDB cleaned up", last("cmdb_cleanup")),
        ] {
            let _ = writeln!(out, "  {label:<30} {}", local(wave, value));
        }
        if bad > 0 {
            let _ = writeln!(out, "  {bad} task(s) failed or blocked");
        }
    }
    failed
}
