//! `wavelift status`: where every wave, application, server and task stands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;

use super::state::StateArgs;
use crate::scheduler::clock::local_text;
use crate::store::{Store, TaskRow, TaskState};

pub async fn run(state: &StateArgs, wave: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let store = state.open_existing().await?;
    if let Some(wave) = wave {
        store.check_wave(wave).await?;
    }
    if json {
        let tasks = store.tasks(wave).await?;
        let removed = store.removed_server_names().await?;
        let (now, warped) = status_now(&store).await?;
        let calendars = store.wave_calendars().await?;
        let document = serde_json::json!({
            "format": "wavelift-status",
            "version": 1,
            "now": ms_to_text(Some(now)),
            "clock": if warped { "warped" } else { "wall" },
            "waves": calendars
                .iter()
                .filter(|c| wave.is_none_or(|w| w == c.name))
                .map(|c| {
                    let standing = c.standing(now);
                    serde_json::json!({
                        "name": c.name,
                        "phase": standing.phase,
                        "next_milestone": standing.next.map(|(label, at)| serde_json::json!({
                            "what": label,
                            "at": ms_to_text(Some(at)),
                        })),
                    })
                })
                .collect::<Vec<_>>(),
            "tasks": tasks.iter().map(|t| serde_json::json!({
                "id": t.id,
                "wave": t.wave,
                "application": t.application,
                "server": t.server,
                "server_removed": t.server.as_ref().is_some_and(|s| removed.contains(s)),
                "kind": t.kind,
                "state": t.state,
                "attempts": t.attempts,
                "earliest": ms_to_text(Some(t.earliest)),
                "deadline": ms_to_text(t.deadline),
                "next_run_at": ms_to_text(Some(t.next_run_at)),
                "started_at": ms_to_text(t.started_at),
                "finished_at": ms_to_text(t.finished_at),
                "released_at": ms_to_text(t.released_at),
                "reason": t.reason,
                "approval_required": t.approval_required,
                "approved_by": t.approved_by,
            })).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        out!("{}", summary(&store, wave).await?);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) use crate::scheduler::clock::status_now;

fn ms_to_text(ms: Option<i64>) -> Option<String> {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string())
}

fn symbol(task: &TaskRow) -> char {
    match task.state() {
        TaskState::Pending => '.',
        TaskState::Running => '>',
        TaskState::AwaitingApproval => '?',
        TaskState::Succeeded => '+',
        TaskState::Failed => 'X',
        TaskState::Skipped => '-',
        TaskState::Cancelled => 'c',
        TaskState::Blocked => 'b',
    }
}

/// Counts per wave, a server-by-task matrix, and what needs attention.
pub async fn summary(store: &Store, wave: Option<&str>) -> anyhow::Result<String> {
    let tasks = store.tasks(wave).await?;
    let mut out = String::new();
    if tasks.is_empty() {
        let _ = writeln!(
            out,
            "no tasks: apply definitions first (wavelift apply PATH)"
        );
        return Ok(out);
    }
    // A removed server's tasks, and a removed application's gate, are history: listed
    // apart, not counted with the wave's.
    let removed = store.removed_server_names().await?;
    let removed_apps = store.removed_application_names().await?;
    let mut waves: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
    let mut gone: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for task in &tasks {
        let wave = waves.entry(task.wave.as_str()).or_default();
        match &task.server {
            Some(server) if removed.contains(server) => {
                gone.entry(task.wave.as_str()).or_default().insert(server);
            }
            None if removed_apps.contains(&task.application) => {}
            _ => wave.push(task),
        }
    }
    let kinds = waves::model::TaskKind::NAMES;
    let (now, warped) = status_now(store).await?;
    let calendars: BTreeMap<String, crate::scheduler::phase::WaveCalendar> = store
        .wave_calendars()
        .await?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    for (name, rows) in &waves {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for row in rows {
            *counts.entry(row.state.as_str()).or_default() += 1;
        }
        let done = rows.iter().filter(|r| r.state().is_final()).count();
        let _ = writeln!(
            out,
            "{name}: {done} of {} tasks final ({})",
            rows.len(),
            counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(calendar) = calendars.get(*name) {
            let standing = calendar.standing(now);
            let next = standing
                .next
                .map(|(label, at)| {
                    format!(
                        "; next: {label} {} {}",
                        local_text(at, &calendar.timezone),
                        calendar.timezone
                    )
                })
                .unwrap_or_default();
            let clock = if warped {
                " (by the run's warped clock)"
            } else {
                ""
            };
            let _ = writeln!(out, "  phase: {}{clock}{next}", standing.phase);
        }
        let _ = writeln!(
            out,
            "  {:<24} {}",
            "server",
            kinds
                .iter()
                .map(|k| abbreviation(k))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut servers: BTreeMap<(&str, &str), BTreeMap<&str, &TaskRow>> = BTreeMap::new();
        for row in rows {
            if let Some(server) = &row.server {
                servers
                    .entry((row.application.as_str(), server.as_str()))
                    .or_default()
                    .insert(row.kind.as_str(), row);
            }
        }
        for ((_, server), by_kind) in &servers {
            let cells: Vec<String> = kinds
                .iter()
                .map(|k| {
                    let mark = by_kind.get(k).map_or(' ', |t| symbol(t));
                    format!("{:^4}", mark)
                })
                .collect();
            let _ = writeln!(out, "  {server:<24} {}", cells.join(" "));
        }
        if let Some(servers) = gone.get(name) {
            let _ = writeln!(
                out,
                "  removed by an apply (their history is kept: wavelift events --wave {name}): {}",
                servers.iter().copied().collect::<Vec<_>>().join(", ")
            );
        }
        for row in rows {
            match row.state() {
                TaskState::AwaitingApproval => {
                    let _ = writeln!(
                        out,
                        "  awaiting approval: {} (wavelift approve {} --app {})",
                        row.application, row.wave, row.application
                    );
                }
                TaskState::Failed => {
                    let _ = writeln!(
                        out,
                        "  failed: {}: {}",
                        row.id,
                        row.reason.as_deref().unwrap_or("no reason recorded")
                    );
                }
                _ => {}
            }
        }
    }
    for line in report_lines(&store.reports(wave).await?) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "legend: + succeeded  > running  . pending  ? awaiting approval  X failed  b blocked  - skipped  c cancelled"
    );
    Ok(out)
}

/// Where the reports for people stand: how many were delivered, and each one waiting
/// for another attempt or given up on, with its last error.
fn report_lines(reports: &[crate::store::ReportRow]) -> Vec<String> {
    if reports.is_empty() {
        return Vec::new();
    }
    let delivered = reports.iter().filter(|r| r.state == "delivered").count();
    let mut lines = vec![format!(
        "reports: {} recorded, {delivered} delivered",
        reports.len()
    )];
    for r in reports.iter().filter(|r| r.state != "delivered") {
        let error = r.last_error.as_deref().unwrap_or("no error recorded");
        lines.push(match r.state.as_str() {
            "failed" => format!(
                "  given up on after {} attempt(s): {} ({error}){}",
                r.attempts,
                r.subject,
                r.delivered_via
                    .as_deref()
                    .map(|k| format!("; kept in {k}"))
                    .unwrap_or_default()
            ),
            _ if r.attempts == 0 => format!("  waiting for its first attempt: {}", r.subject),
            _ => format!(
                "  not delivered yet, attempt {} failed ({error}); next attempt {} UTC: {}",
                r.attempts,
                local_text(r.next_attempt_at, "UTC"),
                r.subject
            ),
        });
    }
    lines
}

fn abbreviation(kind: &str) -> &'static str {
    match kind {
        "prereq_check" => "prer",
        "agent_push" => "agnt",
        "replication_verify" => "repl",
        "boot_test" => "boot",
        "cutover" => "cutv",
        "cmdb_cleanup" => "cmdb",
        _ => "????",
    }
}
