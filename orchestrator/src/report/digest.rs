//! The daily digest, while a wave is active: where it stands in its calendar, how far
//! each kind of task is, what happened since the last digest, what is failing, and what
//! waits for a person.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{AMBER, Approval, Bar, GREEN, Heading, Rendered, calendar_of, is_rehearsal, render};
use crate::scheduler::clock::local_text;
use crate::scheduler::phase::WaveCalendar;
use crate::store::{Store, TaskRow, TaskState};

/// Problems listed by name; more are counted.
const MAX_PROBLEMS: usize = 25;
/// The digest looks back this far when there was no digest before.
const DAY_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize)]
pub struct Digest {
    #[serde(flatten)]
    pub heading: Heading,
    pub since: String,
    pub phase: String,
    pub next_milestone: String,
    pub health: String,
    pub health_colour: String,
    pub bars: Vec<Bar>,
    pub happened: Vec<String>,
    pub problems: Vec<String>,
    pub approvals: Vec<Approval>,
}

/// The task kinds in plan order, with what "done" means for each in words.
const KINDS: [(&str, &str); 6] = [
    ("prereq_check", "prerequisites checked"),
    ("agent_push", "agents installed"),
    ("replication_verify", "replication verified"),
    ("boot_test", "boot tests passed"),
    ("cutover", "cut over"),
    ("cmdb_cleanup", "retired in the CMDB"),
];

/// The job progress log's events counted in the digest, with their words.
const HAPPENINGS: [(&str, &str); 6] = [
    ("task.succeeded", "task(s) succeeded"),
    ("task.ready", "server(s) verified in continuous replication"),
    ("engine.start_launch", "launch(es) started"),
    ("task.retrying", "attempt(s) failed and will be retried"),
    ("task.failed", "task(s) failed"),
    ("operator.approve", "approval(s) given"),
];

impl Digest {
    /// The digest of `wave` at `now` (ms): what happened since the previous digest (or
    /// in the last 24 hours) until `now`; the next digest counts from there, so nothing
    /// is counted twice.
    pub async fn gather(store: &Store, wave: &str, now: i64) -> anyhow::Result<Digest> {
        let calendar = calendar_of(store, wave).await?;
        let tasks = store.tasks_in_force(wave).await?;
        let since = store
            .last_report_due(wave, "digest")
            .await?
            .filter(|&last| last < now)
            .unwrap_or(now - DAY_MS);
        let counts = store.event_counts(wave, since, now).await?;
        Ok(Digest::from_parts(
            &calendar,
            &tasks,
            &counts,
            since,
            now,
            is_rehearsal(&calendar),
        ))
    }

    /// The digest's content: pure, so it is tested on fixtures.
    pub fn from_parts(
        calendar: &WaveCalendar,
        tasks: &[TaskRow],
        counts: &BTreeMap<String, i64>,
        since: i64,
        now: i64,
        rehearsal: bool,
    ) -> Digest {
        let tz = calendar.timezone.as_str();
        let standing = calendar.standing(now);
        let mut bars = Vec::new();
        for (kind, words) in KINDS {
            let of_kind: Vec<&TaskRow> = tasks.iter().filter(|t| t.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let done = of_kind
                .iter()
                .filter(|t| {
                    t.state() == TaskState::Succeeded
                        || (kind == "replication_verify" && t.released_at.is_some())
                })
                .count();
            // A skipped task is said apart: a skipped cutover is not a server cut over.
            let skipped = of_kind
                .iter()
                .filter(|t| t.state() == TaskState::Skipped)
                .count();
            let label = if skipped == 0 {
                words.to_owned()
            } else {
                format!("{words} ({skipped} skipped)")
            };
            // The bar is of what is to be done: a task skipped by design leaves it full.
            bars.push(Bar::new(&label, done, of_kind.len() - skipped));
        }
        let happened: Vec<String> = HAPPENINGS
            .iter()
            .filter_map(|(kind, words)| {
                counts
                    .get(*kind)
                    .filter(|n| **n > 0)
                    .map(|n| format!("{n} {words}"))
            })
            .collect();
        let failing: Vec<&TaskRow> = tasks
            .iter()
            .filter(|t| matches!(t.state(), TaskState::Failed | TaskState::Blocked))
            .collect();
        let mut problems: Vec<String> = failing
            .iter()
            .take(MAX_PROBLEMS)
            .map(|t| {
                format!(
                    "{} {} {}: {}",
                    t.server.as_deref().unwrap_or(&t.application),
                    t.kind,
                    t.state,
                    t.reason.as_deref().unwrap_or("no reason recorded")
                )
            })
            .collect();
        if failing.len() > MAX_PROBLEMS {
            problems.push(format!(
                "and {} more: wavelift status {}",
                failing.len() - MAX_PROBLEMS,
                calendar.name
            ));
        }
        let approvals: Vec<Approval> = tasks
            .iter()
            .filter(|t| {
                t.server.is_none()
                    && t.approval_required
                    && t.approved_by.is_none()
                    && !t.state().is_final()
            })
            .map(|t| Approval {
                application: t.application.clone(),
                command: format!("wavelift approve {} --app {}", calendar.name, t.application),
            })
            .collect();
        let finished = tasks.iter().filter(|t| t.state().is_final()).count();
        let health = if failing.is_empty() {
            "on track".to_owned()
        } else {
            format!("{} task(s) failed or blocked", failing.len())
        };
        let label = if rehearsal { "REHEARSAL " } else { "" };
        let date = crate::scheduler::clock::timestamp(now)
            .to_zoned(jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC))
            .strftime("%a %Y-%m-%d")
            .to_string();
        Digest {
            heading: Heading::new(
                calendar,
                format!(
                    "{label}[{}] digest {date}: {}, {finished} of {} tasks done, {health}",
                    calendar.name,
                    standing.phase,
                    tasks.len()
                ),
                now,
                rehearsal,
            ),
            since: local_text(since, tz),
            phase: standing.phase.to_owned(),
            next_milestone: standing.next.map_or_else(
                || "none: the wave's calendar has ended".to_owned(),
                |(what, at)| format!("{what} {}", local_text(at, tz)),
            ),
            health_colour: if failing.is_empty() { GREEN } else { AMBER }.to_owned(),
            health,
            bars,
            happened,
            problems,
            approvals,
        }
    }

    pub fn render(&self) -> anyhow::Result<Rendered> {
        render("digest", &self.heading.subject, self)
    }
}
