//! The cutover report: made when a wave's cutovers are all final or its window closes.
//! Per server: each step of the cutover with its start and end (from the job progress
//! log), the target and its address, the final replication lag, the downtime (source
//! stopped to target healthy and finalized), failures with their reason, rollbacks.

use std::collections::BTreeMap;

use serde::Serialize;
use waves::units::format_seconds;

use super::{
    AMBER, Bar, GREEN, Heading, RED, Rendered, calendar_of, is_rehearsal, last_note, render,
};
use crate::scheduler::clock::local_text;
use crate::scheduler::phase::WaveCalendar;
use crate::store::{AttemptRow, EventRow, Store, TaskRow, TaskState};

/// What the subject of a cutover report made while cutovers still ran says of them.
pub(crate) const UNFINISHED: &str = "not finished yet";

#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    #[serde(flatten)]
    pub heading: Heading,
    /// `COMPLETE`, `INCOMPLETE` or `IN PROGRESS`.
    pub outcome: String,
    pub outcome_colour: String,
    pub summary: Vec<String>,
    pub bars: Vec<Bar>,
    pub servers: Vec<ServerCutover>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerCutover {
    pub application: String,
    pub name: String,
    pub state: String,
    pub state_colour: String,
    pub started: String,
    pub finished: String,
    pub target: String,
    pub address: String,
    /// The lag replication_verify found at its last check before the window (the
    /// cutover's own final sync waits for it to be under `max_lag`, and says so in its
    /// steps).
    pub final_lag: String,
    pub downtime: String,
    pub steps: Vec<CutoverStep>,
    pub failures: Vec<String>,
    pub rolled_back: bool,
    /// What an operator did with the server after its cutover task (a failback to its
    /// source, a failover from a recovery point), with when: the report says where the
    /// server is now, not only where the window left it.
    pub since: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CutoverStep {
    pub start: String,
    pub end: String,
    pub what: String,
}

impl CutoverReport {
    /// The cutover report of `wave` at `now` (ms), from the store.
    pub async fn gather(store: &Store, wave: &str, now: i64) -> anyhow::Result<CutoverReport> {
        let calendar = calendar_of(store, wave).await?;
        let tasks = store.tasks_in_force(wave).await?;
        let of_kind = |kind: &str| -> Vec<&str> {
            tasks
                .iter()
                .filter(|t| t.kind == kind)
                .map(|t| t.id.as_str())
                .collect()
        };
        let cutovers = of_kind("cutover");
        let events = store.events_of_tasks(&cutovers).await?;
        let attempts = store
            .attempts_of_tasks(&[cutovers, of_kind("replication_verify")].concat())
            .await?;
        let mut report = CutoverReport::from_parts(
            &calendar,
            &tasks,
            &events,
            &attempts,
            now,
            is_rehearsal(&calendar),
        );
        let later = store.events_of_kinds(wave, SINCE_KINDS).await?;
        let finished: BTreeMap<String, i64> = tasks
            .iter()
            .filter(|t| t.kind == "cutover")
            .filter_map(|t| Some((t.server.clone()?, t.finished_at?)))
            .collect();
        report.note_since(&later, &finished, &calendar.timezone);
        Ok(report)
    }

    /// Adds what was done with each server after its cutover task ended (`finished`:
    /// when, per server): `events` of [`SINCE_KINDS`], oldest first, a line per server,
    /// and the count of servers failed back. What came before (a disaster-recovery test
    /// ahead of the window) is the cutover's past, not its since.
    pub fn note_since(&mut self, events: &[EventRow], finished: &BTreeMap<String, i64>, tz: &str) {
        let mut failed_back = 0;
        for server in &mut self.servers {
            let Some(&ended) = finished.get(&server.name) else {
                continue;
            };
            let mine: Vec<&EventRow> = events
                .iter()
                .filter(|e| e.server.as_deref() == Some(server.name.as_str()) && e.at >= ended)
                .collect();
            for event in &mine {
                let when = local_text(event.at, tz);
                server.since.push(match event.kind.as_str() {
                    "failback.normal" => {
                        format!("{when}: failed back, on its source again and ready for cutover")
                    }
                    _ => format!("{when}: {}", event.message),
                });
            }
            failed_back += usize::from(mine.last().is_some_and(|e| e.kind == "failback.normal"));
        }
        if failed_back > 0 {
            self.summary.push(format!(
                "{failed_back} failed back since, on their sources again"
            ));
        }
    }
}

/// The job log's kinds that say what became of a server after its cutover task.
pub const SINCE_KINDS: &[&str] = &["failback.normal", "failover.finalized"];

impl CutoverReport {
    /// The report's content from the wave's tasks and its cutovers' events and attempts:
    /// pure, so it is tested on fixtures.
    pub fn from_parts(
        calendar: &WaveCalendar,
        tasks: &[TaskRow],
        events: &[EventRow],
        attempts: &[AttemptRow],
        now: i64,
        rehearsal: bool,
    ) -> CutoverReport {
        let tz = calendar.timezone.as_str();
        let mut by_server: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
        for task in tasks {
            if let Some(server) = &task.server {
                by_server.entry(server.as_str()).or_default().push(task);
            }
        }
        let mut events_of: BTreeMap<&str, Vec<&EventRow>> = BTreeMap::new();
        for event in events {
            if let Some(id) = &event.task_id {
                events_of.entry(id.as_str()).or_default().push(event);
            }
        }
        let mut attempts_of: BTreeMap<&str, Vec<&AttemptRow>> = BTreeMap::new();
        for attempt in attempts {
            attempts_of
                .entry(attempt.task_id.as_str())
                .or_default()
                .push(attempt);
        }
        let (mut done, mut skipped, mut rolled_back, mut failed, mut open) = (0, 0, 0, 0, 0);
        let mut servers = Vec::new();
        for (server, tasks) in &by_server {
            let Some(cutover) = tasks.iter().find(|t| t.kind == "cutover") else {
                continue;
            };
            let verify = tasks.iter().find(|t| t.kind == "replication_verify");
            let log: &[&EventRow] = events_of
                .get(cutover.id.as_str())
                .map_or(&[], Vec::as_slice);
            let tries: &[&AttemptRow] = attempts_of
                .get(cutover.id.as_str())
                .map_or(&[], Vec::as_slice);
            let final_lag = verify
                .and_then(|v| attempts_of.get(v.id.as_str()))
                .and_then(|tries| {
                    tries
                        .iter()
                        .rev()
                        .find_map(|a| check_detail(&a.checks, "lag"))
                })
                .or_else(|| verify.and_then(|v| last_note(v)))
                .unwrap_or_else(|| "not recorded".to_owned());
            let row = server_cutover(server, cutover, final_lag, tasks, log, tries, tz);
            // A skipped cutover cut nothing over in this wave (an operator took the
            // server out of it, or failed it over apart): counted apart.
            match cutover.state() {
                TaskState::Succeeded => done += 1,
                TaskState::Skipped => skipped += 1,
                s if !s.is_final() => open += 1,
                _ => failed += 1,
            }
            rolled_back += usize::from(row.rolled_back);
            servers.push(row);
        }
        let total = servers.len();
        let mut summary = vec![format!("{done} of {total} servers cut over")];
        if skipped > 0 {
            summary.push(format!("{skipped} skipped (not cut over by this wave)"));
        }
        if rolled_back > 0 {
            summary.push(format!("{rolled_back} rolled back"));
        }
        if failed > 0 {
            summary.push(format!("{failed} failed, blocked or cancelled"));
        }
        if open > 0 {
            summary.push(format!("{open} not finished"));
        }
        let (outcome, colour) = if done == total {
            ("COMPLETE", GREEN)
        } else if done + skipped == total && done > 0 {
            ("COMPLETE WITH SKIPS", AMBER)
        } else if skipped == total {
            ("SKIPPED", AMBER)
        } else if open > 0 && now < calendar.window_end {
            ("IN PROGRESS", AMBER)
        } else {
            ("INCOMPLETE", RED)
        };
        let label = if rehearsal { "REHEARSAL " } else { "" };
        CutoverReport {
            heading: Heading::new(
                calendar,
                format!(
                    "{label}[{}] cutover report: {outcome}, {done} of {total} servers cut over in the window of {}{}",
                    calendar.name,
                    local_text(calendar.window_start, tz),
                    // A report made while cutovers still run (at the window's end) says
                    // so where it shows first: the settled report follows.
                    if open > 0 {
                        format!("; {open} {UNFINISHED}")
                    } else {
                        String::new()
                    }
                ),
                now,
                rehearsal,
            ),
            outcome: outcome.to_owned(),
            outcome_colour: colour.to_owned(),
            summary,
            bars: vec![Bar::new("cut over", done, total)],
            servers,
        }
    }

    pub fn render(&self) -> anyhow::Result<Rendered> {
        render("cutover", &self.heading.subject, self)
    }
}

fn server_cutover(
    server: &str,
    cutover: &TaskRow,
    final_lag: String,
    tasks: &[&TaskRow],
    log: &[&EventRow],
    tries: &[&AttemptRow],
    tz: &str,
) -> ServerCutover {
    let when = |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), |ms| local_text(ms, tz));
    // Each logged moment starts a step that lasts until the next one (the last until the
    // cutover finished, or is still going).
    let mut steps = Vec::new();
    for (i, event) in log.iter().enumerate() {
        let end = log
            .get(i + 1)
            .map(|next| next.at)
            .or(cutover.finished_at.filter(|_| cutover.state().is_final()));
        steps.push(CutoverStep {
            start: local_text(event.at, tz),
            end: when(end),
            what: step_words(event, &cutover.id),
        });
    }
    let at_of = |kind: &str| log.iter().find(|e| e.kind == kind).map(|e| e.at);
    let stopped = at_of("shell.shutdown");
    let finalized = at_of("engine.finalize_cutover");
    let downtime = match (stopped, finalized) {
        (Some(from), Some(to)) => format_seconds(((to - from).max(0) / 1000) as f64),
        (None, Some(_)) => "source not shut down".to_owned(),
        (Some(_), None) => "source stopped; no healthy target".to_owned(),
        (None, None) => "-".to_owned(),
    };
    let (target, address) = tries
        .iter()
        .rev()
        .find(|a| a.outcome == "succeeded")
        .and_then(|a| check_detail(&a.checks, "status checks"))
        .and_then(|detail| {
            let (target, rest) = detail.split_once(" running")?;
            let address = rest.strip_prefix(" at ").unwrap_or("-");
            Some((target.to_owned(), address.to_owned()))
        })
        .unwrap_or_else(|| ("-".to_owned(), "-".to_owned()));
    let rolled_back = log
        .iter()
        .any(|e| e.message.contains("(rollback)") || e.kind == "engine.terminate_targets")
        || cutover
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("rolled back"));
    let mut failures: Vec<String> = tries
        .iter()
        .filter_map(|a| {
            a.error
                .as_ref()
                .map(|e| format!("attempt {} {}: {e}", a.number, a.outcome))
        })
        .collect();
    for task in tasks {
        let own_attempts_say_it = task.kind == "cutover" && !failures.is_empty();
        if matches!(task.state(), TaskState::Failed | TaskState::Blocked) && !own_attempts_say_it {
            failures.push(format!(
                "{} {}: {}",
                task.kind,
                task.state,
                task.reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
    }
    let state_colour = match cutover.state() {
        TaskState::Succeeded | TaskState::Skipped => GREEN,
        s if s.is_final() => RED,
        _ => AMBER,
    };
    ServerCutover {
        application: cutover.application.clone(),
        name: server.to_owned(),
        state: cutover.state.clone(),
        state_colour: state_colour.to_owned(),
        started: when(cutover.started_at),
        finished: when(cutover.finished_at.filter(|_| cutover.state().is_final())),
        target,
        address,
        final_lag,
        downtime,
        steps,
        failures,
        rolled_back,
        since: Vec::new(),
    }
}

/// What a logged moment of a cutover says, without the task's id.
fn step_words(event: &EventRow, task_id: &str) -> String {
    let message = event
        .message
        .strip_prefix(task_id)
        .map(|m| m.trim_start_matches(':').trim_start())
        .unwrap_or(&event.message);
    match event.kind.as_str() {
        "task.progress" => message.to_owned(),
        "shell.shutdown" => format!("source shutdown: {message}"),
        "engine.start_launch" => format!("launch started: {message}"),
        "engine.finalize_cutover" => format!("target healthy, cutover finalized: {message}"),
        "task.succeeded" | "task.failed" | "task.retrying" => message.to_owned(),
        kind => format!("{kind}: {message}"),
    }
}

/// The detail of the named check in an attempt's checks (a JSON array).
fn check_detail(checks: &str, name: &str) -> Option<String> {
    let checks: serde_json::Value = serde_json::from_str(checks).ok()?;
    checks
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(name))?
        .get("detail")?
        .as_str()
        .map(str::to_owned)
}
