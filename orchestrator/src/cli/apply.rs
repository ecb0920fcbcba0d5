//! `wavelift apply`: validate, plan, and store a new revision of the definitions.

use std::process::ExitCode;

use waves::plan;

use super::state::StateArgs;
use super::{DefinitionArgs, load_loaded};
use crate::store::{ApplyOptions, ApplyReport, Store};

/// What `apply` is told to go through with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Removing servers whose tasks run (they are cancelled).
    pub force: bool,
    /// Storing definitions whose plan has errors.
    pub plan_errors: bool,
    /// Storing definitions without a configuration file where the last revision had
    /// one: the built-in configuration replaces it, on purpose.
    pub builtin_config: bool,
    /// For a run with `--time-warp`: nothing is stored if it could not have the local
    /// engine to itself (it would refuse to start after the apply).
    pub warped_run: bool,
}

pub async fn run(
    definitions: &DefinitionArgs,
    state: &StateArgs,
    allow: Allow,
) -> anyhow::Result<ExitCode> {
    let Some(store) = apply_paths(definitions, state, allow).await? else {
        return Ok(ExitCode::FAILURE);
    };
    drop(store);
    Ok(ExitCode::SUCCESS)
}

/// Applies the definitions at the paths; `None` when they are invalid, or their plan
/// has errors and `allow` does not take them (diagnostics printed). Shared by `apply`
/// and `run PATH`.
pub async fn apply_paths(
    args: &DefinitionArgs,
    state: &StateArgs,
    allow: Allow,
) -> anyhow::Result<Option<Store>> {
    let Some(loaded) = load_loaded(args)? else {
        return Ok(None);
    };
    let plan = plan::plan(&loaded.definitions);
    for finding in &plan.findings {
        eprintln!(
            "{}:{}:{}: {}: {}: {} (at {})",
            finding.file,
            finding.line,
            finding.col,
            match finding.severity {
                plan::FindingSeverity::Error => "plan error",
                plan::FindingSeverity::Warning => "plan warning",
            },
            finding.wave,
            finding.message,
            finding.field
        );
    }
    if plan.has_errors() && !allow.plan_errors {
        // What cannot work as planned is not stored to be found out in the window.
        eprintln!(
            "nothing applied: the plan has errors (above); fix them, or store the \
             definitions as they are with --allow-plan-errors"
        );
        return Ok(None);
    }
    if loaded.sources.config.is_none() {
        // Said, because the usual cause is a folder of waves applied without the
        // wavelift.yaml beside it: its engines, store and reports are not in force.
        eprintln!(
            "note: no configuration among the paths given (no wavelift.yaml, no --config): \
             the built-in one applies (a wave without `engine:` runs on the local engine, \
             reports go to the outbox)"
        );
    }
    if allow.warped_run
        && let Some(why) = super::state::warped_run_refused(&loaded.definitions).await
    {
        eprintln!("nothing applied: {why}");
        return Ok(None);
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let store = state.open(Some(&loaded.definitions.config)).await?;
    let last = store.current_sources().await?.map(|(_, sources)| sources);
    if loaded.sources.config.is_none()
        && !allow.builtin_config
        && let Some(last) = last
            .as_ref()
            .and_then(|l| l.config.as_ref())
            .map(|c| &c.name)
    {
        // The built-in configuration would silently replace engines, approvals, hooks
        // and reports the team wrote down.
        eprintln!(
            "nothing applied: the last revision was applied with the configuration {last}, \
             which is not among the paths now; the built-in one would replace it (its \
             engines, approvals, hooks, reports): apply the waves with it (wavelift apply \
             FOLDER), name it with --config FILE, or give --builtin-config to replace it \
             with the built-in one on purpose"
        );
        return Ok(None);
    }
    let stored = store.stored_wave_names().await?;
    for warning in past_windows(&loaded.definitions, &stored, now) {
        eprintln!("{warning}");
    }
    // The applications as the last revision had them, and their gates' goes: what an
    // apply changes of them is said too (a renamed application's gate is a new one).
    let previous = last.map(|sources| sources.load().definitions);
    let goes = store.gate_goes().await?;
    let report = store
        .apply(
            &loaded.definitions,
            &plan,
            &loaded.sources,
            ApplyOptions { force: allow.force },
            now,
        )
        .await?;
    print_report(&report)?;
    if let Some(previous) = &previous {
        for line in wave_changes(previous, &loaded.definitions)
            .into_iter()
            .chain(application_changes(previous, &loaded.definitions, &goes))
        {
            outln!("{line}");
        }
    }
    // A server added to a wave under way after its build phase (by the run's clock):
    // its first tasks can only miss their phase, and its application's gate waits.
    let (run_now, _) = crate::scheduler::clock::status_now(&store).await?;
    for warning in late_servers(&loaded.definitions, &stored, &report.added, run_now) {
        eprintln!("{warning}");
    }
    let url = state.database_url(Some(&loaded.definitions.config));
    if url != waves::config::DEFAULT_DATABASE_URL {
        // The commands that read or steer read no configuration: they are told.
        eprintln!(
            "stored in {url}: give status, events and the levers --database-url {url}",
            url = crate::store::redact(&url)
        );
    }
    Ok(Some(store))
}

/// What changed of the waves kept between two revisions, one line each: a window moved
/// (its tasks that have not begun follow it), other phases, the engine, who is told,
/// the replication link.
fn wave_changes(
    before: &waves::model::Definitions,
    after: &waves::model::Definitions,
) -> Vec<String> {
    let window = |w: &waves::model::Wave| {
        format!(
            "{} {}, {}",
            crate::scheduler::clock::local_text(
                w.window.interval.start.timestamp().as_millisecond(),
                &w.window.timezone
            ),
            w.window.timezone,
            w.window.duration
        )
    };
    let mut lines = Vec::new();
    for wave in &after.waves {
        let Some(old) = before
            .waves
            .iter()
            .find(|w| w.name.value == wave.name.value)
        else {
            continue;
        };
        let name = &wave.name.value;
        let (was, is) = (window(old), window(wave));
        if was != is {
            lines.push(format!(
                "  ~ wave {name}: window {was} -> {is}; its tasks that have not begun follow it"
            ));
        }
        // The phases as placed around the window (moving the window moves them).
        let offsets = |w: &waves::model::Wave| {
            let from = w.window.interval.start.timestamp().as_millisecond();
            [&w.phases.build, &w.phases.validate, &w.phases.cutover].map(|p| {
                (
                    p.start.timestamp().as_millisecond() - from,
                    p.end.timestamp().as_millisecond() - from,
                )
            })
        };
        let mut fields = Vec::new();
        if offsets(old) != offsets(wave) {
            fields.push("phases");
        }
        if old.engine.value != wave.engine.value {
            fields.push("engine");
        }
        if old.notify != wave.notify {
            fields.push("notify");
        }
        if old.replication != wave.replication {
            fields.push("replication");
        }
        if !fields.is_empty() {
            lines.push(format!("  ~ wave {name}: {}", fields.join(", ")));
        }
    }
    lines
}

/// What changed of the applications between two revisions, one line each: added,
/// removed (with the go its gate had, which a new name does not inherit), moved to
/// another wave, or their `depends_on` or `owner` changed.
fn application_changes(
    before: &waves::model::Definitions,
    after: &waves::model::Definitions,
    goes: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let apps = |d: &waves::model::Definitions| -> BTreeMap<String, (String, BTreeSet<String>, Option<String>)> {
        d.waves
            .iter()
            .flat_map(|w| {
                w.applications.iter().map(move |a| {
                    (
                        a.name.value.clone(),
                        (
                            w.name.value.clone(),
                            a.depends_on.iter().map(|d| d.value.clone()).collect(),
                            a.owner.clone(),
                        ),
                    )
                })
            })
            .collect()
    };
    let (old, new) = (apps(before), apps(after));
    let mut lines = Vec::new();
    for (name, (wave, _, _)) in &new {
        if !old.contains_key(name) {
            lines.push(format!("  + application {name} (wave {wave})"));
        }
    }
    for (name, (wave, _, _)) in &old {
        if !new.contains_key(name) {
            let go = goes
                .get(name)
                .map(|by| {
                    format!("; the go {by} gave its gate does not carry over to another name")
                })
                .unwrap_or_default();
            lines.push(format!("  - application {name} (wave {wave}){go}"));
        }
    }
    for (name, (wave, depends_on, owner)) in &new {
        let Some((old_wave, old_depends_on, old_owner)) = old.get(name) else {
            continue;
        };
        if old_wave != wave {
            lines.push(format!(
                "  > application {name} (wave {old_wave} -> {wave})"
            ));
        }
        let mut fields = Vec::new();
        if old_depends_on != depends_on {
            fields.push("depends_on");
        }
        if old_owner != owner {
            fields.push("owner");
        }
        if !fields.is_empty() {
            lines.push(format!("  ~ application {name}: {}", fields.join(", ")));
        }
    }
    lines
}

/// A warning for each server `added` to a wave stored before (under way) whose build
/// phase ended before `now` (the run's clock, milliseconds).
fn late_servers(
    definitions: &waves::model::Definitions,
    stored: &std::collections::BTreeSet<String>,
    added: &[String],
    now: i64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for wave in definitions
        .waves
        .iter()
        .filter(|w| stored.contains(&w.name.value))
        .filter(|w| w.phases.build.end.timestamp().as_millisecond() <= now)
    {
        for (app, server) in wave.servers() {
            if added.contains(&server.name.value) {
                warnings.push(format!(
                    "{}:{}:{}: warning: server {} was added to wave {} after its build phase ended: its prereq_check and agent_push would fail as having missed it, and the cutovers of {} wait for it: add it to a later wave instead",
                    wave.file,
                    server.location.line,
                    server.location.col,
                    server.name.value,
                    wave.name.value,
                    app.name.value
                ));
            }
        }
    }
    warnings
}

/// A warning for each wave whose window, or else whose build phase (the first with
/// deadlines: the phases run in order), ended before `now` (milliseconds): those tasks
/// could only miss it. The build phase only of a wave applied for the first time (not in
/// `stored`): a wave under way has its build behind it. A wave stored for the record is
/// still stored.
fn past_windows(
    definitions: &waves::model::Definitions,
    stored: &std::collections::BTreeSet<String>,
    now: i64,
) -> Vec<String> {
    definitions
        .waves
        .iter()
        .filter_map(|wave| {
            let local = |zoned: &jiff::Zoned| {
                crate::scheduler::clock::local_text(
                    zoned.timestamp().as_millisecond(),
                    &wave.window.timezone,
                )
            };
            let ended = |interval: &waves::model::Interval| {
                interval.end.timestamp().as_millisecond() <= now
            };
            let phases = &wave.phases;
            let (what, interval, missed, fix) = if ended(&wave.window.interval) {
                (
                    "window",
                    &wave.window.interval,
                    "its tasks would fail as having missed their phases",
                    "move `window: start` to a date ahead",
                )
            } else if ended(&phases.build) && !stored.contains(&wave.name.value) {
                (
                    "build phase",
                    &phases.build,
                    "its prereq_check and agent_push tasks would fail as having missed it",
                    "move `window: start` later, or give the phases explicit times or shorter \
                     durations so that the build phase ends ahead",
                )
            } else {
                return None;
            };
            Some(format!(
                "{}:{}:{}: warning: wave {}: its {what} ({} to {} {}) has ended: {missed}; {fix}",
                wave.file,
                wave.location.line,
                wave.location.col,
                wave.name.value,
                local(&interval.start),
                local(&interval.end),
                wave.window.timezone,
            ))
        })
        .collect()
}

fn print_report(report: &ApplyReport) -> std::io::Result<()> {
    outln!(
        "applied revision {}: {} tasks{}",
        report.revision,
        report.tasks,
        if report.is_empty() {
            ", no server changed"
        } else {
            ""
        }
    );
    for name in &report.added {
        outln!("  + {name}");
    }
    for name in &report.changed {
        let Some(change) = report.changes.get(name) else {
            outln!("  ~ {name}");
            continue;
        };
        let fields = if change.fields.is_empty() {
            String::new()
        } else {
            format!(": {}", change.fields.join(", "))
        };
        let late = match &change.cutover {
            Some(state) => {
                format!(" (its cutover is {state}: the change reaches only its tasks still to run)")
            }
            None => String::new(),
        };
        outln!("  ~ {name}{fields}{late}");
    }
    for (name, from, to) in &report.moved {
        let fields = report
            .changes
            .get(name)
            .filter(|change| !change.fields.is_empty())
            .map(|change| format!(", and changed: {}", change.fields.join(", ")))
            .unwrap_or_default();
        outln!("  > {name} (wave {from} -> {to}{fields})");
    }
    for name in &report.removed {
        outln!("  - {name} (its unfinished tasks are cancelled; its history is kept)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn definitions(text: &str) -> waves::model::Definitions {
        let loaded = waves::load_sources(
            None,
            std::path::PathBuf::new(),
            &[waves::source::SourceFile {
                name: "w.yaml".into(),
                text: text.to_owned(),
            }],
        );
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        loaded.definitions
    }

    /// A renamed application is one removed (its go named, as it does not carry over)
    /// and one added; a changed depends_on or owner is named.
    #[test]
    fn what_changed_of_the_applications_is_said() {
        let wave = |apps: &str| {
            format!(
                "name: w\nwindow: {{ start: 2031-03-22 10:00, duration: 6h, timezone: UTC }}\n\
                 defaults: {{ os: {{ family: linux }}, access: {{ method: local }} }}\n\
                 applications:\n{apps}"
            )
        };
        let before = definitions(&wave(
            "  - { name: db, servers: [{ name: s1, disks: [{ device: /dev/sda, size: 1GiB }] }] }\n\
             \x20 - { name: web, depends_on: [db], servers: [{ name: s2, disks: [{ device: /dev/sdb, size: 1GiB }] }] }\n",
        ));
        let after = definitions(&wave(
            "  - { name: db, owner: dba@example.com, servers: [{ name: s1, disks: [{ device: /dev/sda, size: 1GiB }] }] }\n\
             \x20 - { name: shop, servers: [{ name: s2, disks: [{ device: /dev/sdb, size: 1GiB }] }] }\n",
        ));
        let goes = std::collections::BTreeMap::from([("web".to_owned(), "lead".to_owned())]);
        assert_eq!(
            super::application_changes(&before, &after, &goes),
            vec![
                "  + application shop (wave w)",
                "  - application web (wave w); the go lead gave its gate does not carry over to another name",
                "  ~ application db: owner",
            ]
        );
        assert!(super::application_changes(&before, &before, &goes).is_empty());
    }

    /// A moved window, and the wave's other fields, are said by name.
    #[test]
    fn what_changed_of_the_waves_is_said() {
        let wave = |window: &str, notify: &str| {
            format!(
                "name: w\nwindow: {{ {window} }}\nnotify: [{notify}]\n\
                 defaults: {{ os: {{ family: linux }}, access: {{ method: local }} }}\n\
                 applications:\n  - {{ name: db, servers: [{{ name: s1, disks: [{{ device: /dev/sda, size: 1GiB }}] }}] }}\n"
            )
        };
        let before = definitions(&wave(
            "start: 2031-03-22 10:00, duration: 6h, timezone: Europe/Rome",
            "a@example.com",
        ));
        let moved = definitions(&wave(
            "start: 2031-03-22 11:00, duration: 6h, timezone: UTC",
            "b@example.com",
        ));
        assert_eq!(
            super::wave_changes(&before, &moved),
            vec![
                "  ~ wave w: window Sat 2031-03-22 10:00 Europe/Rome, 6h -> Sat 2031-03-22 11:00 UTC, 6h; its tasks that have not begun follow it",
                "  ~ wave w: notify",
            ]
        );
        assert!(super::wave_changes(&before, &before).is_empty());
        // A window moved with a phase changed too: both said.
        let both = definitions(
            &wave(
                "start: 2031-03-22 11:00, duration: 6h, timezone: UTC",
                "a@example.com",
            )
            .replace("notify:", "phases: { build: 3d }\nnotify:"),
        );
        let said = super::wave_changes(&before, &both);
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(said[1], "  ~ wave w: phases");
    }

    /// A server added to a wave under way after its build phase is warned about, at its
    /// place; one added before it, or to a wave applied the first time, is not.
    #[test]
    fn a_server_added_after_the_build_phase_is_warned_about() {
        let text = "name: w\n\
            window: { start: 2031-03-22 10:00, duration: 6h, timezone: UTC }\n\
            defaults: { os: { family: linux }, access: { method: local } }\n\
            applications:\n\
            \x20 - name: app\n\
            \x20   servers:\n\
            \x20     - { name: s1, disks: [{ device: /dev/sda, size: 10GiB }] }\n\
            \x20     - { name: s2, disks: [{ device: /dev/sdb, size: 10GiB }] }\n";
        let definitions = &definitions(text);
        let build_end = definitions.waves[0]
            .phases
            .build
            .end
            .timestamp()
            .as_millisecond();
        let stored = BTreeSet::from(["w".to_owned()]);
        let added = vec!["s2".to_owned()];
        let warned = super::late_servers(definitions, &stored, &added, build_end + 1);
        assert_eq!(
            warned,
            vec![
                "w.yaml:8:9: warning: server s2 was added to wave w after its build phase ended: its prereq_check and agent_push would fail as having missed it, and the cutovers of app wait for it: add it to a later wave instead"
                    .to_owned()
            ]
        );
        assert!(super::late_servers(definitions, &stored, &added, build_end - 1).is_empty());
        assert!(
            super::late_servers(definitions, &BTreeSet::new(), &added, build_end + 1).is_empty()
        );
    }
}
