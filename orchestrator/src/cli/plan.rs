//! `wavelift plan`: what will happen to every server and when, as text, JSON or DOT.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use waves::model::{Definitions, TaskKind, Wave};
use waves::plan::{self, FindingSeverity, Plan};

use super::{DefinitionArgs, load_for_wave};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Dot,
}

pub fn run(
    args: &DefinitionArgs,
    wave: Option<&str>,
    format: PlanFormat,
) -> anyhow::Result<ExitCode> {
    let Some(definitions) = load_for_wave(args, wave)? else {
        return Ok(ExitCode::FAILURE);
    };
    let plan = plan::plan(&definitions);
    let shown = |name: &str| wave.is_none_or(|w| w == name);
    let output = match format {
        PlanFormat::Text => render_text(&definitions, &plan, &shown),
        PlanFormat::Json => {
            serde_json::to_string_pretty(&only_waves(plan::to_json(&plan), &shown))? + "\n"
        }
        PlanFormat::Dot => render_dot(&plan, &shown),
    };
    out!("{output}");
    let errors = plan
        .findings
        .iter()
        .any(|f| f.severity == FindingSeverity::Error && shown(&f.wave));
    Ok(if errors {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn local(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%a %Y-%m-%d %H:%M")
        .to_string()
}

fn zone(wave: &Wave) -> TimeZone {
    wave.window.interval.start.time_zone().clone()
}

/// Applications in an order that respects their dependencies inside the wave.
fn cutover_order(wave: &Wave) -> Vec<&str> {
    let names: BTreeSet<&str> = wave
        .applications
        .iter()
        .map(|a| a.name.value.as_str())
        .collect();
    let mut done: Vec<&str> = Vec::new();
    let mut remaining: Vec<&waves::model::Application> = wave.applications.iter().collect();
    // Validated definitions have no cycles; the bound keeps this finite regardless.
    for _ in 0..=wave.applications.len() {
        let (ready, rest): (Vec<_>, Vec<_>) = remaining.into_iter().partition(|app| {
            app.depends_on
                .iter()
                .all(|d| !names.contains(d.value.as_str()) || done.contains(&d.value.as_str()))
        });
        done.extend(ready.iter().map(|a| a.name.value.as_str()));
        remaining = rest;
        if remaining.is_empty() {
            break;
        }
    }
    done.extend(remaining.iter().map(|a| a.name.value.as_str()));
    done
}

/// Keeps the entries of the plan's JSON arrays that belong to the shown waves.
fn only_waves(mut json: serde_json::Value, shown: &dyn Fn(&str) -> bool) -> serde_json::Value {
    for (array, field) in [
        ("waves", "name"),
        ("tasks", "wave"),
        ("gates", "wave"),
        ("findings", "wave"),
    ] {
        if let Some(items) = json.get_mut(array).and_then(|v| v.as_array_mut()) {
            items.retain(|item| item[field].as_str().is_some_and(shown));
        }
    }
    json
}

fn render_text(definitions: &Definitions, plan: &Plan, shown: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for (wave, wave_plan) in definitions.waves.iter().zip(&plan.waves) {
        if !shown(&wave.name.value) {
            continue;
        }
        let tz = zone(wave);
        let task_count = wave_plan.tasks[1] - wave_plan.tasks[0];
        let _ = writeln!(
            out,
            "{}{}",
            wave.name.value,
            wave.description
                .as_deref()
                .map(|d| format!(": {}", waves::diag::printable(d)))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  engine {}{}, time zone {}, {}, {}, {}",
            wave.engine.value,
            if wave.engine.value == waves::model::EngineKind::Sim {
                " (rehearsal)"
            } else {
                ""
            },
            wave.window.timezone,
            count(wave.applications.len(), "application"),
            count(wave.server_count(), "server"),
            count(task_count as usize, "task")
        );
        for (label, interval) in [
            ("build", &wave.phases.build),
            ("validate", &wave.phases.validate),
            ("cutover", &wave.phases.cutover),
        ] {
            let _ = writeln!(
                out,
                "  {label:<9} {}  ->  {}",
                local(interval.start.timestamp(), &tz),
                local(interval.end.timestamp(), &tz)
            );
        }
        let _ = writeln!(
            out,
            "  {:<9} {}  ->  {}  ({})",
            "window",
            local(wave.window.interval.start.timestamp(), &tz),
            local(wave.window.interval.end.timestamp(), &tz),
            wave.window.duration
        );
        let _ = writeln!(out, "  applications, in cutover order:");
        let gates: HashMap<&str, &plan::Gate> = plan
            .gates
            .iter()
            .map(|g| (g.application.as_ref(), g))
            .collect();
        for name in cutover_order(wave) {
            let Some(app) = wave.applications.iter().find(|a| a.name.value == name) else {
                continue;
            };
            let mut gate = format!(
                "after the boot tests of its {} server(s)",
                app.servers.len()
            );
            if !app.depends_on.is_empty() {
                let deps: Vec<&str> = app.depends_on.iter().map(|d| d.value.as_str()).collect();
                let _ = write!(gate, " and the cutover of {}", deps.join(", "));
            }
            if gates.get(name).is_some_and(|g| g.approval) {
                gate.push_str(", with approval");
            }
            let _ = writeln!(out, "    {name:<20} {gate}");
        }
        render_task_timetable(&mut out, wave, plan, wave_plan, &tz);
        out.push('\n');
    }
    render_calendar(&mut out, definitions);
    render_findings(&mut out, plan, shown);
    out
}

fn render_task_timetable(
    out: &mut String,
    wave: &Wave,
    plan: &Plan,
    wave_plan: &plan::WavePlan,
    tz: &TimeZone,
) {
    let tasks = &plan.tasks[wave_plan.tasks[0] as usize..wave_plan.tasks[1] as usize];
    let _ = writeln!(out, "  every server:");
    let _ = writeln!(out, "    prereq_check, agent_push   in the build phase");
    let mut schedules: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut hypercare: BTreeSet<String> = BTreeSet::new();
    for task in tasks {
        if let Some(rec) = &task.recurrence {
            schedules.insert((rec.schedule.clone(), rec.occurrences));
        }
        if task.kind == TaskKind::CmdbCleanup {
            hypercare.insert(local(task.earliest, tz));
        }
    }
    for (schedule, count) in &schedules {
        // The count stops at the cap: more than that is all it knows.
        let count = if *count >= plan::MAX_COUNTED_OCCURRENCES {
            format!("more than {}", plan::MAX_COUNTED_OCCURRENCES)
        } else {
            count.to_string()
        };
        let _ = writeln!(
            out,
            "    replication_verify         `{schedule}` ({}), {count} checks until the window",
            wave.window.timezone
        );
    }
    let _ = writeln!(out, "    boot_test                  in the validate phase");
    let _ = writeln!(out, "    cutover                    in the window");
    for when in &hypercare {
        let _ = writeln!(
            out,
            "    cmdb_cleanup               from {when} (after hypercare)"
        );
    }
    let skips: Vec<String> = tasks
        .iter()
        .filter(|t| t.skipped)
        .map(|t| format!("{} skips {}", t.server, t.kind))
        .collect();
    if !skips.is_empty() {
        let _ = writeln!(out, "    exceptions: {}", skips.join("; "));
    }
}

/// One column per day (per week past four months), a row per wave: B, V and C for the
/// phases, W for days the window touches.
fn render_calendar(out: &mut String, definitions: &Definitions) {
    let Some(first) = definitions
        .waves
        .iter()
        .map(|w| w.phases.build.start.timestamp())
        .min()
    else {
        return;
    };
    let Some(last) = definitions
        .waves
        .iter()
        .map(|w| {
            w.phases
                .cutover
                .end
                .timestamp()
                .max(w.window.interval.end.timestamp())
        })
        .max()
    else {
        return;
    };
    let utc = TimeZone::UTC;
    let start = first
        .to_zoned(utc.clone())
        .start_of_day()
        .unwrap_or_else(|_| first.to_zoned(utc.clone()));
    let days = ((last.as_second() - start.timestamp().as_second()) / 86_400 + 1).max(1);
    let step_days: i64 = if days > 120 { 7 } else { 1 };
    let columns = (days + step_days - 1) / step_days;
    let columns = columns.min(400);
    let name_width = definitions
        .waves
        .iter()
        .map(|w| w.name.value.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "calendar (UTC, one column per {}, from {}): B build, V validate, C cutover, W window",
        if step_days == 1 { "day" } else { "week" },
        start.strftime("%a %Y-%m-%d")
    );
    // Month names above the column where each month starts.
    let mut header: Vec<char> = vec![' '; columns as usize + 3];
    for column in 0..columns {
        let day = start
            .checked_add((column * step_days).days())
            .unwrap_or_else(|_| start.clone());
        if column == 0 || day.day() <= step_days as i8 {
            let label = day.strftime("%b").to_string();
            for (offset, c) in label.chars().enumerate() {
                if let Some(cell) = header.get_mut(column as usize + offset) {
                    *cell = c;
                }
            }
        }
    }
    let header: String = header.into_iter().collect::<String>().trim_end().to_owned();
    let _ = writeln!(out, "  {:<name_width$}  {header}", "");
    for wave in &definitions.waves {
        let mut row = String::new();
        for column in 0..columns {
            let day_start = start
                .checked_add((column * step_days).days())
                .unwrap_or_else(|_| start.clone());
            let day_end = day_start
                .checked_add(step_days.days())
                .unwrap_or_else(|_| day_start.clone());
            let touches = |a: &Zoned, b: &Zoned| {
                a.timestamp() < day_end.timestamp() && day_start.timestamp() < b.timestamp()
            };
            let mark = if touches(&wave.window.interval.start, &wave.window.interval.end) {
                'W'
            } else if touches(&wave.phases.cutover.start, &wave.phases.cutover.end) {
                'C'
            } else if touches(&wave.phases.validate.start, &wave.phases.validate.end) {
                'V'
            } else if touches(&wave.phases.build.start, &wave.phases.build.end) {
                'B'
            } else {
                '.'
            };
            row.push(mark);
        }
        let _ = writeln!(out, "  {:<name_width$}  {row}", wave.name.value);
    }
    let mut overlaps = Vec::new();
    for (i, a) in definitions.waves.iter().enumerate() {
        for b in &definitions.waves[i + 1..] {
            for (pa, ia) in phases(a) {
                for (pb, ib) in phases(b) {
                    if ia.overlaps(ib) {
                        overlaps.push(format!(
                            "  {} {pb} overlaps {} {pa}",
                            b.name.value, a.name.value
                        ));
                    }
                }
            }
        }
    }
    if !overlaps.is_empty() {
        let _ = writeln!(out, "waves in parallel:");
        for line in overlaps {
            let _ = writeln!(out, "{line}");
        }
    }
    out.push('\n');
}

fn phases(wave: &Wave) -> [(&'static str, &waves::model::Interval); 3] {
    [
        ("build", &wave.phases.build),
        ("validate", &wave.phases.validate),
        ("cutover", &wave.phases.cutover),
    ]
}

fn render_findings(out: &mut String, plan: &Plan, shown: &dyn Fn(&str) -> bool) {
    let findings: Vec<&plan::Finding> = plan.findings.iter().filter(|f| shown(&f.wave)).collect();
    if findings.is_empty() {
        let _ = writeln!(out, "no findings: the plan fits its windows");
        return;
    }
    let _ = writeln!(out, "findings:");
    for finding in findings {
        let severity = match finding.severity {
            FindingSeverity::Error => "error",
            FindingSeverity::Warning => "warning",
        };
        let _ = writeln!(
            out,
            "  {severity}: {}:{}:{}: {}: {} (at {})",
            finding.file, finding.line, finding.col, finding.wave, finding.message, finding.field
        );
    }
}

fn dot_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz: a cluster per wave and application, an edge per dependency, a diamond per
/// gate.
fn render_dot(plan: &Plan, shown: &dyn Fn(&str) -> bool) -> String {
    let mut out =
        String::from("digraph wavelift {\n  rankdir=LR;\n  node [shape=box, fontsize=10];\n");
    let task_shown = |index: &u32| {
        plan.tasks
            .get(*index as usize)
            .is_some_and(|t| shown(&t.wave))
    };
    for (w, wave) in plan.waves.iter().enumerate() {
        if !shown(&wave.name) {
            continue;
        }
        let _ = writeln!(
            out,
            "  subgraph cluster_w{w} {{\n    label={};",
            dot_quote(&format!("wave {}", wave.name))
        );
        let tasks = &plan.tasks[wave.tasks[0] as usize..wave.tasks[1] as usize];
        let mut apps: Vec<&str> = tasks.iter().map(|t| t.application.as_ref()).collect();
        apps.dedup();
        for (a, app) in apps.iter().enumerate() {
            let _ = writeln!(
                out,
                "    subgraph cluster_w{w}_a{a} {{\n      label={};",
                dot_quote(app)
            );
            for (offset, task) in tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.application.as_ref() == *app)
            {
                let index = wave.tasks[0] as usize + offset;
                let style = if task.skipped { ", style=dashed" } else { "" };
                let _ = writeln!(
                    out,
                    "      t{index} [label={}{style}];",
                    dot_quote(&task.id)
                );
            }
            out.push_str("    }\n");
        }
        out.push_str("  }\n");
    }
    for (g, gate) in plan.gates.iter().enumerate() {
        if !shown(&gate.wave) {
            continue;
        }
        let label = if gate.approval {
            format!("{}\\n(approval)", gate.id)
        } else {
            gate.id.clone()
        };
        let _ = writeln!(
            out,
            "  g{g} [shape=diamond, label={}];",
            dot_quote(&label).replace("\\\\n", "\\n")
        );
        for waits in gate.waits_for.iter().filter(|t| task_shown(t)) {
            let _ = writeln!(out, "  t{waits} -> g{g};");
        }
    }
    for (index, task) in plan.tasks.iter().enumerate() {
        if !shown(&task.wave) {
            continue;
        }
        for dep in &task.depends_on {
            let _ = writeln!(out, "  t{dep} -> t{index};");
        }
        for gate in &task.gates {
            let _ = writeln!(out, "  g{gate} -> t{index};");
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    /// A schedule whose checks the plan stopped counting says so, not the cap as a count.
    #[test]
    fn a_count_at_the_cap_says_more_than() {
        let text = "name: w\n\
            window: { start: 2031-03-22 10:00, duration: 6h, timezone: UTC }\n\
            defaults:\n\
            \x20 os: { family: linux }\n\
            \x20 access: { method: local }\n\
            \x20 tasks: { replication_verify: { schedule: \"* * * * * *\" } }\n\
            applications:\n\
            \x20 - { name: db, servers: [{ name: s1, disks: [{ device: /dev/sda, size: 1GiB }] }] }\n";
        let loaded = waves::load_text("w.yaml", text);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let plan = waves::plan::plan(&loaded.definitions);
        let out = super::render_text(&loaded.definitions, &plan, &|_| true);
        assert!(
            out.contains(&format!(
                "more than {} checks until the window",
                waves::plan::MAX_COUNTED_OCCURRENCES
            )),
            "{out}"
        );
    }
}
