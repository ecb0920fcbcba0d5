//! Reports for people: the readiness (go/no-go) report before a cutover window, the
//! cutover report after it, and the daily digest while a wave is active, rendered from
//! the templates in `templates/reports/` (Handlebars in strict mode: a field the template
//! names and the data lacks is an error, not an empty cell) as HTML with inline CSS and
//! no external resources, and as plain text.
//!
//! The data comes from the store only (tasks, their steps, attempts and events, the
//! wave's calendar and owners), so a report says what the factory knows at that moment.
//! [`schedule`] decides when each is made, [`mail`] delivers them.

mod cutover;
mod digest;
pub mod mail;
pub mod outbox;
pub mod schedule;

pub use cutover::CutoverReport;
pub use digest::Digest;

use std::collections::BTreeMap;

use anyhow::Context as _;
use handlebars::Handlebars;
use serde::Serialize;

use crate::scheduler::clock::local_text;
use crate::scheduler::phase::WaveCalendar;
use crate::store::{Store, TaskRow, TaskState};

/// Each report's templates: (name, HTML, plain text).
const TEMPLATES: [(&str, &str, &str); 3] = [
    (
        "readiness",
        include_str!("../../../templates/reports/readiness.html.hbs"),
        include_str!("../../../templates/reports/readiness.txt.hbs"),
    ),
    (
        "cutover",
        include_str!("../../../templates/reports/cutover.html.hbs"),
        include_str!("../../../templates/reports/cutover.txt.hbs"),
    ),
    (
        "digest",
        include_str!("../../../templates/reports/digest.html.hbs"),
        include_str!("../../../templates/reports/digest.txt.hbs"),
    ),
];

/// The pieces the HTML templates share: the page's head, the bars, the footer.
const PARTIALS: [(&str, &str); 3] = [
    (
        "head",
        include_str!("../../../templates/reports/partials/head.html.hbs"),
    ),
    (
        "bars",
        include_str!("../../../templates/reports/partials/bars.html.hbs"),
    ),
    (
        "foot",
        include_str!("../../../templates/reports/partials/foot.html.hbs"),
    ),
];

/// The reports there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Before the window: per application and server, replication, the last boot test,
    /// blockers, approvals pending, and the go/no-go question
    Readiness,
    /// After the window: per server each step's start and end, the target and its
    /// address, the lag at the last replication check before the window, the downtime,
    /// failures and rollbacks
    Cutover,
    /// While the wave is active: where it stands, what happened since the last digest,
    /// what is failing, what waits for a person
    Digest,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Readiness => "readiness",
            Kind::Cutover => "cutover",
            Kind::Digest => "digest",
        }
    }

    /// The report of `wave` at `now` (scheduler time, ms), from the store.
    pub async fn render(self, store: &Store, wave: &str, now: i64) -> anyhow::Result<Rendered> {
        match self {
            Kind::Readiness => Readiness::gather(store, wave, now).await?.render(),
            Kind::Cutover => CutoverReport::gather(store, wave, now).await?.render(),
            Kind::Digest => Digest::gather(store, wave, now).await?.render(),
        }
    }
}

/// A rendered report as the message to record: to the wave's `notify` list and its
/// applications' owners (each once), from `from`, with a Message-ID of its own.
pub fn compose(
    definitions: &waves::model::Definitions,
    wave: &str,
    kind: Kind,
    event: &str,
    due_at: i64,
    rendered: &Rendered,
    from: &str,
) -> anyhow::Result<crate::store::NewReport> {
    let definition = definitions
        .waves
        .iter()
        .find(|w| w.name.value == wave)
        .with_context(|| format!("no wave `{wave}` in the applied definitions"))?;
    let mut recipients: Vec<String> = Vec::new();
    let candidates = definition.notify.iter().chain(
        definition
            .applications
            .iter()
            .filter_map(|a| a.owner.as_ref()),
    );
    for address in candidates {
        if !recipients.iter().any(|r| r.eq_ignore_ascii_case(address)) {
            recipients.push(address.clone());
        }
    }
    // Unique per report: the event is in it (two reports asked for at one moment of a
    // warped clock differ by the moment they were asked).
    let event_part: String = event
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let message_id = format!(
        "<{}.{}.{}.{event_part}@wavelift.invalid>",
        kind.name(),
        due_at,
        wave
    );
    let message = outbox::message(rendered, from, &recipients, &message_id)?;
    Ok(crate::store::NewReport {
        wave: wave.to_owned(),
        kind: kind.name().to_owned(),
        event: event.to_owned(),
        due_at,
        subject: rendered.subject.clone(),
        sender: from.to_owned(),
        recipients,
        message: String::from_utf8(message.formatted()).context("the message is not 7-bit text")?,
    })
}

/// A report in both forms, with its subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// What every report's heading shows: its subject, the wave, whether it was a rehearsal,
/// the window, and when the report was made (in the wave's time zone).
#[derive(Debug, Clone, Serialize)]
pub struct Heading {
    pub subject: String,
    pub wave: String,
    pub rehearsal: bool,
    pub window_start: String,
    pub window_end: String,
    pub timezone: String,
    pub generated_at: String,
}

impl Heading {
    pub(super) fn new(
        calendar: &WaveCalendar,
        subject: String,
        now: i64,
        rehearsal: bool,
    ) -> Heading {
        let tz = calendar.timezone.as_str();
        Heading {
            subject,
            wave: calendar.name.clone(),
            rehearsal,
            window_start: local_text(calendar.window_start, tz),
            window_end: local_text(calendar.window_end, tz),
            timezone: calendar.timezone.clone(),
            generated_at: local_text(now, tz),
        }
    }
}

/// What the readiness templates show.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    #[serde(flatten)]
    pub heading: Heading,
    /// `GO` or `NO-GO`.
    pub decision: String,
    pub decision_colour: String,
    /// Why not (empty for a go).
    pub reasons: Vec<String>,
    pub bars: Vec<Bar>,
    pub applications: Vec<AppReadiness>,
    pub approvals: Vec<Approval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub label: String,
    pub done: usize,
    pub total: usize,
    pub done_percent: u32,
    pub rest_percent: u32,
}

impl Bar {
    pub(super) fn new(label: &str, done: usize, total: usize) -> Bar {
        // An empty bar is full: nothing is missing.
        let done_percent = (done * 100)
            .checked_div(total)
            .map_or(100, |p| u32::try_from(p.min(100)).unwrap_or(100));
        Bar {
            label: label.to_owned(),
            done,
            total,
            done_percent,
            rest_percent: 100 - done_percent,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AppReadiness {
    pub name: String,
    pub owner: String,
    pub gate: String,
    pub servers: Vec<ServerReadiness>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerReadiness {
    pub name: String,
    pub replication: String,
    pub replication_colour: String,
    /// The replication lag at the check's last look ("unknown" when the engine gave
    /// none, "-" when nothing looked).
    pub lag: String,
    pub boot_test: String,
    pub boot_test_colour: String,
    pub blockers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub application: String,
    pub command: String,
}

pub(super) const GREEN: &str = "#2f9e44";
pub(super) const AMBER: &str = "#b7791f";
pub(super) const RED: &str = "#c92a2a";

/// The step a task left: the executor's record (`note`, what it saw last) and the task's
/// own step under `task`.
pub(super) fn step_of(task: &TaskRow) -> Option<serde_json::Value> {
    serde_json::from_str(task.step.as_deref()?).ok()
}

/// The last note a task's step recorded (what it saw last), if any.
pub(super) fn last_note(task: &TaskRow) -> Option<String> {
    step_of(task)?.get("note")?.as_str().map(str::to_owned)
}

/// Where replication stands for a server, from its replication check: the words, and
/// whether it is ready for a cutover.
fn replication(verify: Option<&TaskRow>) -> (String, bool) {
    let Some(task) = verify else {
        return ("no replication check".to_owned(), false);
    };
    let note = last_note(task);
    match task.state() {
        // Its last look found replication degraded ([`Readiness::gather`] keeps that
        // look's output as its reason).
        TaskState::Succeeded => match &task.reason {
            Some(look) => (format!("{look} (its last look)"), false),
            None => ("continuous (verified; checks ended)".to_owned(), true),
        },
        TaskState::Skipped => ("not checked (skipped)".to_owned(), true),
        TaskState::Running if task.released_at.is_some() => {
            // The check says whether its last look was healthy.
            let healthy = step_of(task)
                .and_then(|s| s.get("task")?.get("healthy")?.as_bool())
                .unwrap_or(false);
            let note = note.unwrap_or_else(|| "watching".to_owned());
            (format!("{note} (watched until the window)"), healthy)
        }
        TaskState::Running => (
            note.unwrap_or_else(|| "checking".to_owned()) + " (not continuous yet)",
            false,
        ),
        TaskState::Pending => ("not started".to_owned(), false),
        state => (
            format!(
                "{state}: {}",
                task.reason.as_deref().unwrap_or("no reason recorded")
            ),
            false,
        ),
    }
}

/// The lag the replication check saw at its last look.
fn lag_of(verify: Option<&TaskRow>) -> String {
    let Some(figures) = verify
        .and_then(step_of)
        .and_then(|s| s.get("task")?.get("replication").cloned())
    else {
        return "-".to_owned();
    };
    match figures
        .get("lag_seconds")
        .and_then(serde_json::Value::as_f64)
    {
        Some(lag) => waves::units::format_seconds(lag),
        None => "unknown".to_owned(),
    }
}

/// The last boot test of a server: the words, and whether it passed.
fn boot_test(task: Option<&TaskRow>, timezone: &str) -> (String, bool) {
    let Some(task) = task else {
        return ("none planned".to_owned(), false);
    };
    match task.state() {
        TaskState::Succeeded => (
            format!(
                "passed {}",
                task.finished_at
                    .map(|ms| local_text(ms, timezone))
                    .unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
            true,
        ),
        TaskState::Skipped => ("skipped by the definitions".to_owned(), true),
        TaskState::Pending => ("not run yet".to_owned(), false),
        TaskState::Running => (
            last_note(task).unwrap_or_else(|| "running".to_owned()),
            false,
        ),
        state => (
            format!(
                "{state}: {}",
                task.reason.as_deref().unwrap_or("no reason recorded")
            ),
            false,
        ),
    }
}

impl Readiness {
    /// The readiness of `wave` at `now` (ms), from the store.
    pub async fn gather(store: &Store, wave: &str, now: i64) -> anyhow::Result<Readiness> {
        let calendar = calendar_of(store, wave).await?;
        let owners = store.application_owners(wave).await?;
        let mut tasks = store.tasks_in_force(wave).await?;
        // A replication check ends with its last look before the window, which may have
        // found replication degraded (the cutover checks it again): the report says so,
        // from that look's output, instead of "continuous".
        let ended: Vec<&str> = tasks
            .iter()
            .filter(|t| t.kind == "replication_verify" && t.state() == TaskState::Succeeded)
            .map(|t| t.id.as_str())
            .collect();
        let mut last_looks: BTreeMap<String, String> = BTreeMap::new();
        for attempt in store.attempts_of_tasks(&ended).await? {
            last_looks.insert(attempt.task_id, attempt.output);
        }
        for task in &mut tasks {
            if let Some(look) = last_looks.get(&task.id)
                && look.starts_with(tasks::replication_verify::DEGRADED_BEFORE_THE_WINDOW)
            {
                task.reason = Some(look.clone());
            }
        }
        // The last word on each gate, when it is a no-go: its reason belongs in the
        // report, not only in the job log.
        // Gates still closed without a go (waiting, or blocked: a no-go may be given to
        // a gate a failure blocked, before a retry opens it).
        let gate_apps: BTreeMap<&str, &str> = tasks
            .iter()
            .filter(|t| {
                t.kind == "gate"
                    && t.approved_by.is_none()
                    && matches!(
                        t.state(),
                        TaskState::Pending | TaskState::AwaitingApproval | TaskState::Blocked
                    )
            })
            .map(|t| (t.id.as_str(), t.application.as_str()))
            .collect();
        let mut last_word: BTreeMap<String, (String, String)> = BTreeMap::new();
        for event in store
            .events_of_kinds(wave, &["operator.approve", "operator.no_go"])
            .await?
        {
            if let Some(app) = event.task_id.as_deref().and_then(|id| gate_apps.get(id)) {
                last_word.insert((*app).to_owned(), (event.kind, event.message));
            }
        }
        let no_goes: BTreeMap<String, String> = last_word
            .into_iter()
            .filter(|(_, (kind, _))| kind == "operator.no_go")
            .map(|(app, (_, message))| (app, message))
            .collect();
        let mut report =
            Readiness::from_tasks(&calendar, &owners, &tasks, now, is_rehearsal(&calendar));
        report.say_no_goes(&no_goes);
        Ok(report)
    }

    /// The no-goes that stand (`app` -> the job log's words, with who and why; the
    /// caller keeps those of gates still closed without a go): said with their gate and
    /// among the reasons.
    pub fn say_no_goes(&mut self, no_goes: &BTreeMap<String, String>) {
        for app in &mut self.applications {
            if let Some(said) = no_goes.get(&app.name) {
                app.gate = format!("{}; {said}", app.gate);
                self.reasons.push(said.clone());
            }
        }
        // (Such a gate makes the report a NO-GO already: it waits for its go, or a
        // failure upstream blocked it.)
    }

    /// The report's content from the wave's tasks: pure, so it is tested on fixtures.
    pub fn from_tasks(
        calendar: &WaveCalendar,
        owners: &BTreeMap<String, String>,
        tasks: &[TaskRow],
        now: i64,
        rehearsal: bool,
    ) -> Readiness {
        let tz = calendar.timezone.as_str();
        let mut by_app: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, &TaskRow>>> = BTreeMap::new();
        let mut gates: BTreeMap<&str, &TaskRow> = BTreeMap::new();
        for task in tasks {
            match &task.server {
                Some(server) => {
                    by_app
                        .entry(task.application.as_str())
                        .or_default()
                        .entry(server.as_str())
                        .or_default()
                        .insert(task.kind.as_str(), task);
                }
                None => {
                    gates.insert(task.application.as_str(), task);
                    by_app.entry(task.application.as_str()).or_default();
                }
            }
        }
        let mut reasons = Vec::new();
        let mut applications = Vec::new();
        let mut approvals = Vec::new();
        let (mut servers_total, mut replicating, mut booted, mut blocked_servers) = (0, 0, 0, 0);
        for (app, servers) in &by_app {
            let gate = gates.get(app);
            let waiting_for_go = gate.is_some_and(|g| {
                g.approval_required && g.approved_by.is_none() && !g.state().is_final()
            });
            if waiting_for_go {
                approvals.push(Approval {
                    application: (*app).to_owned(),
                    command: format!("wavelift approve {} --app {app}", calendar.name),
                });
            }
            let gate_words = match gate {
                None => "none".to_owned(),
                Some(g) if waiting_for_go => format!("{}, waiting for a go", g.state),
                Some(g) => match &g.approved_by {
                    Some(by) => format!("{}, approved by {by}", g.state),
                    None => g.state.clone(),
                },
            };
            let mut rows = Vec::new();
            for (server, kinds) in servers {
                servers_total += 1;
                let verify = kinds.get("replication_verify").copied();
                let (replication, replication_ok) = replication(verify);
                let lag = lag_of(verify);
                let (boot, boot_ok) = boot_test(kinds.get("boot_test").copied(), tz);
                let blockers: Vec<String> = kinds
                    .values()
                    .filter(|t| matches!(t.state(), TaskState::Failed | TaskState::Blocked))
                    .map(|t| {
                        format!(
                            "{} {}: {}",
                            t.kind,
                            t.state,
                            t.reason.as_deref().unwrap_or("no reason recorded")
                        )
                    })
                    .collect();
                replicating += usize::from(replication_ok);
                booted += usize::from(boot_ok);
                blocked_servers += usize::from(!blockers.is_empty());
                rows.push(ServerReadiness {
                    name: (*server).to_owned(),
                    replication_colour: if replication_ok { GREEN } else { AMBER }.to_owned(),
                    replication,
                    lag,
                    boot_test_colour: if boot_ok { GREEN } else { AMBER }.to_owned(),
                    boot_test: boot,
                    blockers,
                });
            }
            applications.push(AppReadiness {
                name: (*app).to_owned(),
                owner: owners
                    .get(*app)
                    .cloned()
                    .unwrap_or_else(|| "not named".to_owned()),
                gate: gate_words,
                servers: rows,
            });
        }
        if replicating < servers_total {
            reasons.push(format!(
                "{} of {servers_total} servers are not in continuous replication",
                servers_total - replicating
            ));
        }
        if booted < servers_total {
            reasons.push(format!(
                "{} of {servers_total} servers have no passed boot test",
                servers_total - booted
            ));
        }
        if blocked_servers > 0 {
            reasons.push(format!(
                "{blocked_servers} server(s) have failed or blocked tasks"
            ));
        }
        if !approvals.is_empty() {
            reasons.push(format!(
                "{} application(s) wait for their go: see the approvals below",
                approvals.len()
            ));
        }
        let go = reasons.is_empty();
        let decision = if go { "GO" } else { "NO-GO" }.to_owned();
        let label = if rehearsal { "REHEARSAL " } else { "" };
        Readiness {
            heading: Heading::new(
                calendar,
                format!(
                    "{label}[{}] cutover readiness: {decision} for the window of {}",
                    calendar.name,
                    local_text(calendar.window_start, tz)
                ),
                now,
                rehearsal,
            ),
            decision,
            decision_colour: if go { GREEN } else { RED }.to_owned(),
            reasons,
            bars: vec![
                Bar::new("continuous replication", replicating, servers_total),
                Bar::new("boot tests passed", booted, servers_total),
            ],
            applications,
            approvals,
        }
    }

    pub fn render(&self) -> anyhow::Result<Rendered> {
        render("readiness", &self.heading.subject, self)
    }
}

/// A wave's calendar from the store.
pub async fn calendar_of(store: &Store, wave: &str) -> anyhow::Result<WaveCalendar> {
    store
        .wave_calendars()
        .await?
        .into_iter()
        .find(|c| c.name == wave)
        .with_context(|| format!("no wave `{wave}` in the applied definitions"))
}

/// Whether nothing in the wave's reports happened on real servers: a wave on the
/// rehearsal engine.
pub(super) fn is_rehearsal(calendar: &WaveCalendar) -> bool {
    calendar.engine == "sim"
}

/// Renders one report's two templates with `data`.
pub(super) fn render(name: &str, subject: &str, data: &impl Serialize) -> anyhow::Result<Rendered> {
    // Compiled once: a run sends a digest a day for weeks, and parsing the templates
    // again for each took most of a long wave's run.
    static REGISTRIES: std::sync::OnceLock<
        Result<(Handlebars<'static>, Handlebars<'static>), String>,
    > = std::sync::OnceLock::new();
    let (html, text) = REGISTRIES
        .get_or_init(|| registries().map_err(|err| format!("{err:#}")))
        .as_ref()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(Rendered {
        subject: subject.to_owned(),
        html: html
            .render(name, data)
            .with_context(|| format!("cannot render the {name} report (HTML)"))?,
        text: text
            .render(name, data)
            .with_context(|| format!("cannot render the {name} report (text)"))?,
    })
}

/// The HTML templates (escaped) and the plain-text ones (not escaped), strict.
fn registries() -> anyhow::Result<(Handlebars<'static>, Handlebars<'static>)> {
    let mut html = Handlebars::new();
    html.set_strict_mode(true);
    for (name, source) in PARTIALS {
        html.register_partial(name, source)
            .with_context(|| format!("templates/reports/partials/{name}.html.hbs"))?;
    }
    let mut text = Handlebars::new();
    text.set_strict_mode(true);
    text.register_escape_fn(handlebars::no_escape);
    for (name, html_source, text_source) in TEMPLATES {
        html.register_template_string(name, html_source)
            .with_context(|| format!("templates/reports/{name}.html.hbs"))?;
        text.register_template_string(name, text_source)
            .with_context(|| format!("templates/reports/{name}.txt.hbs"))?;
    }
    Ok((html, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar() -> WaveCalendar {
        WaveCalendar {
            name: "wave-1".to_owned(),
            engine: "mgn".to_owned(),
            timezone: "Europe/Rome".to_owned(),
            build_start: 1_800_000_000_000,
            validate_start: 1_800_600_000_000,
            cutover_start: 1_801_200_000_000,
            window_start: 1_801_500_000_000,
            window_end: 1_801_521_600_000,
            cutover_end: 1_801_800_000_000,
        }
    }

    fn task(server: Option<&str>, app: &str, kind: &str, state: &str) -> TaskRow {
        TaskRow {
            attempts: 1,
            started_at: Some(1_800_000_000_000),
            finished_at: Some(1_800_700_000_000),
            ..TaskRow::fixture(server, app, kind, state)
        }
    }

    /// Two servers of one application, ready; the gate open.
    fn ready_wave() -> Vec<TaskRow> {
        let mut tasks = Vec::new();
        for server in ["web-01", "web-02"] {
            for kind in ["prereq_check", "agent_push", "boot_test"] {
                tasks.push(task(Some(server), "shop", kind, "succeeded"));
            }
            let mut verify = task(Some(server), "shop", "replication_verify", "running");
            verify.released_at = Some(1_800_650_000_000);
            verify.finished_at = None;
            verify.step = Some(
                r#"{"note":"continuous replication, lag 3s","task":{"watching":true,"healthy":true,"replication":{"state":"continuous","lag_seconds":3}}}"#
                    .to_owned(),
            );
            tasks.push(verify);
            tasks.push(task(Some(server), "shop", "cutover", "pending"));
        }
        tasks.push(task(None, "shop", "gate", "succeeded"));
        tasks
    }

    fn owners() -> BTreeMap<String, String> {
        BTreeMap::from([("shop".to_owned(), "shop-team@example.com".to_owned())])
    }

    #[test]
    fn a_ready_wave_is_a_go_in_both_forms() {
        let report = Readiness::from_tasks(
            &calendar(),
            &owners(),
            &ready_wave(),
            1_801_400_000_000,
            false,
        );
        assert_eq!(report.decision, "GO");
        assert!(report.reasons.is_empty());
        assert_eq!(
            report.heading.subject,
            "[wave-1] cutover readiness: GO for the window of Mon 2027-02-01 17:40"
        );
        let rendered = report.render().expect("renders");
        assert!(rendered.html.contains("wave-1: GO"));
        assert!(rendered.html.contains("shop-team@example.com"));
        assert!(
            rendered
                .html
                .contains("continuous replication, lag 3s (watched until the window)")
        );
        assert!(rendered.html.contains(">Lag</th>"));
        assert!(rendered.html.contains("white-space:nowrap;\">3s</td>"));
        assert_eq!(
            rendered
                .text
                .lines()
                .filter(|l| *l == "    lag: 3s")
                .count(),
            2
        );
        assert!(!rendered.html.contains("REHEARSAL"));
        assert!(rendered.text.lines().any(|l| l == "GO OR NO-GO? GO"));
        assert!(
            rendered
                .text
                .lines()
                .any(|l| l == "continuous replication: 2 of 2")
        );
    }

    /// A replication check that ended with a last look finding replication degraded
    /// (its output kept as its reason by `gather`) is not counted as continuous.
    #[test]
    fn a_check_whose_last_look_found_replication_degraded_is_not_continuous() {
        let mut tasks = ready_wave();
        let look = "replication degraded before the window: Disconnected: 32.0 MiB of 32.0 MiB (100%), lag 50s; the cutover checks it again";
        for t in &mut tasks {
            if t.id == "web-01/replication_verify" {
                t.state = "succeeded".to_owned();
                t.step = None;
                t.reason = Some(look.to_owned());
            }
        }
        let report =
            Readiness::from_tasks(&calendar(), &owners(), &tasks, 1_801_400_000_000, false);
        assert_eq!(report.decision, "NO-GO");
        assert!(
            report
                .reasons
                .contains(&"1 of 2 servers are not in continuous replication".to_owned()),
            "{:?}",
            report.reasons
        );
        let rendered = report.render().expect("renders");
        assert!(
            rendered
                .text
                .contains(&format!("replication: {look} (its last look)")),
            "{}",
            rendered.text
        );
    }

    #[test]
    fn a_failure_or_a_missing_go_makes_it_a_no_go_with_the_reasons() {
        let mut tasks = ready_wave();
        for t in &mut tasks {
            if t.id == "web-02/boot_test" {
                t.state = "failed".to_owned();
                t.reason = Some("the target did not pass its status checks <impaired>".to_owned());
            }
            if t.kind == "gate" {
                t.state = "pending".to_owned();
                t.approval_required = true;
            }
            if t.id == "web-01/replication_verify" {
                t.step = Some(
                    r#"{"note":"replication degraded after it was verified: Stalled","task":{"watching":true,"healthy":false,"replication":{"state":"stalled","lag_seconds":5400}}}"#
                        .to_owned(),
                );
            }
            if t.id == "web-02/replication_verify" {
                t.step = Some(
                    r#"{"note":"continuous replication, lag unknown","task":{"watching":true,"healthy":false,"replication":{"state":"continuous","lag_seconds":null}}}"#
                        .to_owned(),
                );
            }
        }
        let report =
            Readiness::from_tasks(&calendar(), &owners(), &tasks, 1_801_400_000_000, false);
        assert_eq!(report.decision, "NO-GO");
        assert_eq!(
            report.reasons,
            [
                "2 of 2 servers are not in continuous replication",
                "1 of 2 servers have no passed boot test",
                "1 server(s) have failed or blocked tasks",
                "1 application(s) wait for their go: see the approvals below",
            ]
        );
        let rendered = report.render().expect("renders");
        // Text from the store is escaped in the HTML, not in the plain text.
        assert!(rendered.html.contains("status checks &lt;impaired&gt;"));
        assert!(rendered.text.contains("status checks <impaired>"));
        // The lag of a no-go server is there to see, and an unknown lag says so.
        let lags: Vec<&str> = rendered
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("    lag: "))
            .collect();
        assert_eq!(lags, ["1h 30m", "unknown"]);
        assert!(
            rendered
                .text
                .contains("  shop: wavelift approve wave-1 --app shop")
        );
    }

    #[test]
    fn the_templates_are_strict_a_missing_field_is_an_error() {
        let (html, text) = registries().expect("templates parse");
        let mut data = serde_json::to_value(Readiness::from_tasks(
            &calendar(),
            &owners(),
            &ready_wave(),
            0,
            false,
        ))
        .expect("serializes");
        data.as_object_mut()
            .expect("an object")
            .remove("window_end");
        assert!(html.render("readiness", &data).is_err());
        assert!(text.render("readiness", &data).is_err());
    }

    fn event(id: i64, at: i64, task: &str, kind: &str, message: &str) -> crate::store::EventRow {
        crate::store::EventRow {
            id,
            at,
            wave: "wave-1".to_owned(),
            server: task.split('/').next().map(str::to_owned),
            task_id: Some(task.to_owned()),
            kind: kind.to_owned(),
            message: message.to_owned(),
            data: None,
        }
    }

    fn attempt(
        task: &str,
        outcome: &str,
        checks: &str,
        error: Option<&str>,
    ) -> crate::store::AttemptRow {
        crate::store::AttemptRow {
            task_id: task.to_owned(),
            number: 1,
            started_at: 1_801_500_000_000,
            finished_at: 1_801_502_000_000,
            outcome: outcome.to_owned(),
            checks: checks.to_owned(),
            output: String::new(),
            error: error.map(str::to_owned),
        }
    }

    /// web-01 cut over (source stopped 22:00, finalized 22:20); web-02 rolled back.
    fn cutover_fixture() -> (
        Vec<TaskRow>,
        Vec<crate::store::EventRow>,
        Vec<crate::store::AttemptRow>,
    ) {
        let mut tasks = ready_wave();
        for t in &mut tasks {
            if t.kind == "cutover" {
                t.started_at = Some(1_801_500_000_000);
                t.finished_at = Some(1_801_501_200_000);
                t.state = "succeeded".to_owned();
            }
            if t.id == "web-02/cutover" {
                t.state = "failed".to_owned();
                t.reason = Some(
                    "rolled back: the cutover did not finish before the window ended".to_owned(),
                );
            }
        }
        let start = 1_801_500_000_000;
        let events = vec![
            event(
                1,
                start,
                "web-01/cutover",
                "shell.shutdown",
                "rehearsal: the source would be shut down",
            ),
            event(
                2,
                start,
                "web-01/cutover",
                "engine.start_launch",
                "cutover launch, job j-1 (2 server(s))",
            ),
            event(
                3,
                start + 600_000,
                "web-01/cutover",
                "task.progress",
                "web-01/cutover: waiting for the cutover target to boot",
            ),
            event(
                4,
                start + 1_200_000,
                "web-01/cutover",
                "engine.finalize_cutover",
                "target i-0abc",
            ),
            event(
                5,
                start + 1_200_000,
                "web-01/cutover",
                "task.succeeded",
                "web-01/cutover succeeded: cut over to i-0abc",
            ),
            event(
                6,
                start,
                "web-02/cutover",
                "engine.start_launch",
                "cutover launch, job j-1 (2 server(s))",
            ),
            event(
                7,
                start + 21_600_000,
                "web-02/cutover",
                "engine.change_life_cycle",
                "ready_for_cutover (rollback)",
            ),
            event(
                8,
                start + 21_600_000,
                "web-02/cutover",
                "engine.terminate_targets",
                "cutover target i-0def",
            ),
        ];
        let attempts = vec![
            attempt(
                "web-01/cutover",
                "succeeded",
                r#"[{"name":"status checks","passed":true,"detail":"i-0abc running at 10.1.2.3","remediation":null}]"#,
                None,
            ),
            attempt(
                "web-01/replication_verify",
                "succeeded",
                r#"[{"name":"lag","passed":true,"detail":"3s (at most 5m)","remediation":null}]"#,
                None,
            ),
            attempt(
                "web-02/cutover",
                "failed",
                "[]",
                Some("rolled back: the cutover did not finish before the window ended"),
            ),
        ];
        (tasks, events, attempts)
    }

    /// The cutover report of the fixture's wave, at the fixture's moment.
    fn cutover_report(
        tasks: &[TaskRow],
        events: &[crate::store::EventRow],
        attempts: &[crate::store::AttemptRow],
    ) -> CutoverReport {
        CutoverReport::from_parts(
            &calendar(),
            tasks,
            events,
            attempts,
            1_801_530_000_000,
            false,
        )
    }

    #[test]
    fn the_cutover_report_shows_each_server_steps_target_downtime_and_rollbacks() {
        let (tasks, events, attempts) = cutover_fixture();
        let report = cutover_report(&tasks, &events, &attempts);
        assert_eq!(report.outcome, "INCOMPLETE");
        assert_eq!(
            report.summary,
            [
                "1 of 2 servers cut over",
                "1 rolled back",
                "1 failed, blocked or cancelled"
            ]
        );
        let web1 = &report.servers[0];
        assert_eq!(
            (web1.target.as_str(), web1.address.as_str()),
            ("i-0abc", "10.1.2.3")
        );
        assert_eq!(web1.downtime, "20m");
        assert_eq!(web1.final_lag, "3s (at most 5m)");
        assert_eq!(web1.steps.len(), 5);
        assert_eq!(web1.steps[2].what, "waiting for the cutover target to boot");
        assert_eq!(
            (web1.steps[2].start.as_str(), web1.steps[2].end.as_str()),
            ("Mon 2027-02-01 17:50", "Mon 2027-02-01 18:00")
        );
        assert!(!web1.rolled_back);
        let web2 = &report.servers[1];
        assert!(web2.rolled_back);
        assert_eq!(
            web2.failures,
            ["attempt 1 failed: rolled back: the cutover did not finish before the window ended"]
        );
        assert_eq!(web2.target, "-");
        let rendered = report.render().expect("renders");
        assert!(rendered.subject.ends_with("cutover report: INCOMPLETE, 1 of 2 servers cut over in the window of Mon 2027-02-01 17:40"));
        assert!(
            rendered
                .text
                .lines()
                .any(|l| l == "web-02 (shop): failed, rolled back"),
            "{}",
            rendered.text
        );
        assert!(
            rendered.text.lines().any(|l| l == "  downtime: 20m"),
            "{}",
            rendered.text
        );
        assert!(rendered.html.contains("10.1.2.3"));
        assert!(rendered.html.contains("rolled back"));
    }

    /// A skipped cutover is not counted as cut over: the report says how many were
    /// skipped, and a wave whose other cutovers succeeded is complete with skips.
    #[test]
    fn a_skipped_cutover_is_not_counted_as_cut_over() {
        let (mut tasks, events, attempts) = cutover_fixture();
        for t in &mut tasks {
            if t.id == "web-02/cutover" {
                t.state = "skipped".to_owned();
                t.reason = Some("skipped by alice".to_owned());
            }
        }
        let report = cutover_report(&tasks, &events, &attempts);
        assert_eq!(report.outcome, "COMPLETE WITH SKIPS");
        assert_eq!(report.summary[0], "1 of 2 servers cut over");
        assert_eq!(report.summary[1], "1 skipped (not cut over by this wave)");
        let rendered = report.render().expect("renders");
        assert!(
            rendered.subject.contains(
                "cutover report: COMPLETE WITH SKIPS, 1 of 2 servers cut over in the window"
            ),
            "{}",
            rendered.subject
        );
        // Every cutover skipped: nothing was cut over, and the outcome says so.
        for t in &mut tasks {
            if t.kind == "cutover" {
                t.state = "skipped".to_owned();
            }
        }
        let report = cutover_report(&tasks, &events, &attempts);
        assert_eq!(report.outcome, "SKIPPED");
        assert_eq!(report.summary[0], "0 of 2 servers cut over");
    }

    /// A server failed back after the window is said so in a later cutover report: the
    /// line of the failback under the server, and the count in the summary.
    #[test]
    fn a_failback_after_the_cutover_is_said_in_the_report() {
        let (tasks, events, attempts) = cutover_fixture();
        let mut report = cutover_report(&tasks, &events, &attempts);
        let start = calendar().window_start;
        let mut failback = event(
            20,
            start + 3 * 86_400_000,
            "web-01/cutover",
            "failback.normal",
            "web-01 replicates in the normal direction again",
        );
        failback.task_id = None;
        failback.server = Some("web-01".to_owned());
        // One before the cutover ended (a rehearsal of the failback) is not "since".
        let mut before = failback.clone();
        before.at = start - 86_400_000;
        before.id = 19;
        let finished = std::collections::BTreeMap::from([
            ("web-01".to_owned(), start + 3_600_000),
            ("web-02".to_owned(), start + 21_600_000),
        ]);
        report.note_since(&[before, failback], &finished, "Europe/Rome");
        assert_eq!(
            report.servers[0].since,
            ["Thu 2027-02-04 17:40: failed back, on its source again and ready for cutover"]
        );
        assert!(report.servers[1].since.is_empty());
        assert_eq!(
            report.summary.last().map(String::as_str),
            Some("1 failed back since, on their sources again")
        );
        let rendered = report.render().expect("renders");
        assert!(
            rendered.text.lines().any(|l| l
                == "  since: Thu 2027-02-04 17:40: failed back, on its source again and ready for cutover"),
            "{}",
            rendered.text
        );
        assert!(rendered.html.contains("Since: Thu 2027-02-04 17:40"));
    }

    /// A no-go's reason is in the readiness report, with its gate and among the reasons
    /// (it was in the job log only, and the report said "wait for their go").
    #[test]
    fn a_no_go_is_said_with_its_reason() {
        let mut tasks = ready_wave();
        for t in &mut tasks {
            if t.kind == "gate" {
                t.state = "pending".to_owned();
                t.approval_required = true;
            }
        }
        let mut report =
            Readiness::from_tasks(&calendar(), &owners(), &tasks, 1_801_400_000_000, false);
        let app = report.applications[0].name.clone();
        let said = format!("no-go for the cutover of `{app}` by maria: the DB team is not ready");
        report.say_no_goes(&BTreeMap::from([(app.clone(), said.clone())]));
        assert_eq!(report.decision, "NO-GO");
        assert!(report.reasons.contains(&said), "{:?}", report.reasons);
        assert!(report.applications[0].gate.ends_with(&said));
        let rendered = report.render().expect("renders");
        assert!(rendered.text.contains("the DB team is not ready"));
        assert!(rendered.html.contains("the DB team is not ready"));
    }

    /// A skipped cutover is not a server cut over: the digest's bar says it apart, as
    /// the cutover report does (it counted 4 of 4 cut over with one skipped), and is of
    /// what is to be done (a task skipped by design leaves it full).
    #[test]
    fn the_digest_says_skipped_tasks_apart() {
        let mut tasks = ready_wave();
        for t in &mut tasks {
            match t.id.as_str() {
                "web-01/cutover" => t.state = "succeeded".to_owned(),
                "web-02/cutover" => t.state = "skipped".to_owned(),
                _ => {}
            }
        }
        let digest = Digest::from_parts(
            &calendar(),
            &tasks,
            &BTreeMap::new(),
            1_801_300_000_000,
            1_801_386_400_000,
            true,
        );
        let cutover = digest
            .bars
            .iter()
            .find(|b| b.label.starts_with("cut over"))
            .expect("a bar");
        assert_eq!(
            (cutover.label.as_str(), cutover.done, cutover.total),
            ("cut over (1 skipped)", 1, 1)
        );
    }

    #[test]
    fn the_digest_counts_what_happened_and_lists_what_fails_and_waits() {
        let mut tasks = ready_wave();
        for t in &mut tasks {
            if t.id == "web-02/boot_test" {
                t.state = "failed".to_owned();
                t.reason = Some("status checks <impaired>".to_owned());
            }
            if t.kind == "gate" {
                t.state = "pending".to_owned();
                t.approval_required = true;
            }
        }
        let counts = BTreeMap::from([
            ("task.succeeded".to_owned(), 6),
            ("task.failed".to_owned(), 1),
            ("task.progress".to_owned(), 40),
        ]);
        let digest = Digest::from_parts(
            &calendar(),
            &tasks,
            &counts,
            1_801_300_000_000,
            1_801_386_400_000,
            true,
        );
        assert_eq!(digest.phase, "cutover week");
        assert_eq!(digest.happened, ["6 task(s) succeeded", "1 task(s) failed"]);
        assert_eq!(
            digest.problems,
            ["web-02 boot_test failed: status checks <impaired>"]
        );
        assert_eq!(digest.approvals.len(), 1);
        let boot = digest
            .bars
            .iter()
            .find(|b| b.label == "boot tests passed")
            .expect("a bar");
        assert_eq!((boot.done, boot.total), (1, 2));
        let rendered = digest.render().expect("renders");
        assert!(
            rendered.subject.starts_with("REHEARSAL [wave-1] digest "),
            "{}",
            rendered.subject
        );
        assert!(
            rendered
                .subject
                .ends_with(": cutover week, 6 of 11 tasks done, 1 task(s) failed or blocked"),
            "{}",
            rendered.subject
        );
        assert!(
            rendered
                .text
                .contains("- web-02 boot_test failed: status checks <impaired>")
        );
        assert!(rendered.html.contains("status checks &lt;impaired&gt;"));
        assert!(
            rendered
                .text
                .contains("  shop: wavelift approve wave-1 --app shop")
        );
    }

    #[test]
    fn every_template_renders_with_fixture_data_and_loads_nothing_from_elsewhere() {
        let (tasks, events, attempts) = cutover_fixture();
        let rendered = [
            Readiness::from_tasks(&calendar(), &owners(), &ready_wave(), 0, false).render(),
            CutoverReport::from_parts(&calendar(), &tasks, &events, &attempts, 0, false).render(),
            Digest::from_parts(&calendar(), &tasks, &BTreeMap::new(), 0, 0, false).render(),
        ];
        for r in rendered {
            let r = r.expect("renders");
            assert!(
                r.html.starts_with("<!DOCTYPE html>") && r.html.trim_end().ends_with("</html>")
            );
            for external in ["src=\"http", "href=\"http", "<link", "<script", "url("] {
                assert!(!r.html.contains(external), "{external} in {}", r.subject);
            }
            assert!(r.text.starts_with(&r.subject));
        }
    }
}
