//! The planner: every server of every wave becomes six task instances with their
//! dependencies, gates and time constraints. Pure and deterministic: the same
//! definitions give the same plan, byte for byte, in every format.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::cron::CronSchedule;
use crate::diag::Location;
use crate::estimate::{self, Readiness, WaveEstimate};
use crate::model::{Definitions, EngineKind, Server, TaskKind, Wave};
use crate::units::{self, Dur, format_seconds};
use crate::wave_file::short;

/// Index of a task in [`Plan::tasks`].
pub type TaskIndex = u32;
/// Index of a gate in [`Plan::gates`].
pub type GateIndex = u32;

/// Checks of a recurring task, from its earliest start until its deadline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recurrence {
    pub schedule: String,
    pub timezone: String,
    /// How many times it runs (capped at [`MAX_COUNTED_OCCURRENCES`]).
    pub occurrences: usize,
    pub first: Vec<Timestamp>,
}

/// Occurrences are counted up to this many; a schedule firing more often is flagged.
pub const MAX_COUNTED_OCCURRENCES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedTask {
    /// `SERVER/KIND`: stable across revisions of the definitions (server names are
    /// unique across all waves).
    pub id: String,
    pub wave: Arc<str>,
    pub application: Arc<str>,
    pub server: Arc<str>,
    pub kind: TaskKind,
    /// Skipped by the server's `skip` list: it counts as done for its dependants.
    pub skipped: bool,
    pub depends_on: Vec<TaskIndex>,
    pub gates: Vec<GateIndex>,
    /// Not started before this time.
    pub earliest: Timestamp,
    /// Must be finished by this time (the end of its phase or window); none for CMDB
    /// cleanup, which only waits for hypercare.
    pub deadline: Option<Timestamp>,
    pub recurrence: Option<Recurrence>,
}

/// Opens when every task it waits for has succeeded (or was skipped), and, when it asks
/// for one, when the application's cutover is approved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// `APPLICATION/ready`.
    pub id: String,
    pub wave: Arc<str>,
    pub application: Arc<str>,
    /// The application's boot tests and the cutovers of the applications it depends on.
    pub waits_for: Vec<TaskIndex>,
    pub approval: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingSeverity {
    /// The plan cannot work as written.
    Error,
    /// The plan works, with a risk someone should look at.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: FindingSeverity,
    pub wave: String,
    /// The wave's file, and where in it what the finding is about is written (or, for a
    /// server's setting it inherits, where the server is).
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// What to change: `window.duration`, `servers[NAME].tasks.KIND.FIELD`, ...
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WavePlan {
    pub name: String,
    pub description: Option<String>,
    pub engine: EngineKind,
    pub timezone: String,
    pub build: [Timestamp; 2],
    pub validate: [Timestamp; 2],
    pub cutover: [Timestamp; 2],
    pub window: [Timestamp; 2],
    pub applications: Vec<String>,
    pub servers: usize,
    /// Task indices of this wave, in [`Plan::tasks`].
    pub tasks: [TaskIndex; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub waves: Vec<WavePlan>,
    pub tasks: Vec<PlannedTask>,
    pub gates: Vec<Gate>,
    pub findings: Vec<Finding>,
    #[serde(skip)]
    pub estimates: Vec<WaveEstimate>,
}

impl Plan {
    pub fn has_errors(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == FindingSeverity::Error)
    }
}

fn span(interval: &crate::model::Interval) -> [Timestamp; 2] {
    [interval.start.timestamp(), interval.end.timestamp()]
}

/// Plans every wave of valid definitions.
pub fn plan(definitions: &Definitions) -> Plan {
    let mut builder = Builder::default();
    for wave in &definitions.waves {
        builder.add_wave(wave);
    }
    builder.link_application_dependencies(definitions);
    let estimates = estimate::estimate(definitions);
    for (wave, estimate) in definitions.waves.iter().zip(&estimates) {
        builder.check_wave(definitions, wave, estimate);
    }
    Plan {
        waves: builder.waves,
        tasks: builder.tasks,
        gates: builder.gates,
        findings: builder.findings,
        estimates,
    }
}

#[derive(Default)]
struct Builder {
    waves: Vec<WavePlan>,
    tasks: Vec<PlannedTask>,
    gates: Vec<Gate>,
    findings: Vec<Finding>,
    /// Application name -> its gate, and the cutover tasks of its servers.
    app_gate: HashMap<String, GateIndex>,
    app_cutovers: HashMap<String, Vec<TaskIndex>>,
    /// Occurrence counts are shared by every server with the same schedule and span.
    recurrences: HashMap<(String, String, Timestamp, Timestamp), Recurrence>,
}

impl Builder {
    fn push(&mut self, task: PlannedTask) -> TaskIndex {
        let index = TaskIndex::try_from(self.tasks.len()).unwrap_or(TaskIndex::MAX);
        self.tasks.push(task);
        index
    }

    fn recurrence(
        &mut self,
        schedule: &CronSchedule,
        wave: &Wave,
        from: &jiff::Zoned,
        until: &jiff::Zoned,
    ) -> Recurrence {
        let key = (
            schedule.as_str().to_owned(),
            wave.window.timezone.clone(),
            from.timestamp(),
            until.timestamp(),
        );
        self.recurrences
            .entry(key)
            .or_insert_with(|| {
                let found = schedule.occurrences(from, until, 3, MAX_COUNTED_OCCURRENCES);
                Recurrence {
                    schedule: schedule.as_str().to_owned(),
                    timezone: wave.window.timezone.clone(),
                    occurrences: found.count,
                    first: found.first.iter().map(jiff::Zoned::timestamp).collect(),
                }
            })
            .clone()
    }

    fn add_wave(&mut self, wave: &Wave) {
        let wave_name: Arc<str> = Arc::from(wave.name.value.as_str());
        let first = TaskIndex::try_from(self.tasks.len()).unwrap_or(TaskIndex::MAX);
        let phases = &wave.phases;
        let window = &wave.window.interval;
        for app in &wave.applications {
            let app_name: Arc<str> = Arc::from(app.name.value.as_str());
            let gate = GateIndex::try_from(self.gates.len()).unwrap_or(GateIndex::MAX);
            let mut gate_waits = Vec::new();
            let mut approval = false;
            let mut cutovers = Vec::new();
            for server in &app.servers {
                let server_name: Arc<str> = Arc::from(server.name.value.as_str());
                let mut previous: Option<TaskIndex> = None;
                for kind in TaskKind::ALL.iter().copied() {
                    let (earliest, deadline) = match kind {
                        TaskKind::PrereqCheck | TaskKind::AgentPush => {
                            (&phases.build.start, Some(&phases.build.end))
                        }
                        TaskKind::ReplicationVerify => (&phases.build.start, Some(&window.start)),
                        TaskKind::BootTest => (&phases.validate.start, Some(&phases.validate.end)),
                        TaskKind::Cutover => (&window.start, Some(&window.end)),
                        TaskKind::CmdbCleanup => (&window.end, None),
                    };
                    let earliest = if kind == TaskKind::CmdbCleanup {
                        hypercare_end(window.end.clone(), server.tasks.cmdb_cleanup.hypercare)
                    } else {
                        earliest.timestamp()
                    };
                    let recurrence = (kind == TaskKind::ReplicationVerify).then(|| {
                        self.recurrence(
                            &server.tasks.replication_verify.schedule,
                            wave,
                            &phases.build.start,
                            &window.start,
                        )
                    });
                    let is_cutover = kind == TaskKind::Cutover;
                    let index = self.push(PlannedTask {
                        id: format!("{}/{}", server.name.value, kind),
                        wave: Arc::clone(&wave_name),
                        application: Arc::clone(&app_name),
                        server: Arc::clone(&server_name),
                        kind,
                        skipped: server.skips(kind),
                        depends_on: previous.into_iter().collect(),
                        gates: if is_cutover { vec![gate] } else { Vec::new() },
                        earliest,
                        deadline: deadline.map(jiff::Zoned::timestamp),
                        recurrence,
                    });
                    if kind == TaskKind::BootTest {
                        gate_waits.push(index);
                    }
                    if is_cutover {
                        cutovers.push(index);
                        approval |= server.tasks.cutover.approval && !server.skips(kind);
                    }
                    previous = Some(index);
                }
            }
            self.gates.push(Gate {
                id: format!("{}/ready", app.name.value),
                wave: Arc::clone(&wave_name),
                application: Arc::clone(&app_name),
                waits_for: gate_waits,
                approval,
            });
            self.app_gate.insert(app.name.value.clone(), gate);
            self.app_cutovers.insert(app.name.value.clone(), cutovers);
        }
        let last = TaskIndex::try_from(self.tasks.len()).unwrap_or(TaskIndex::MAX);
        self.waves.push(WavePlan {
            name: wave.name.value.clone(),
            description: wave.description.clone(),
            engine: wave.engine.value,
            timezone: wave.window.timezone.clone(),
            build: span(&phases.build),
            validate: span(&phases.validate),
            cutover: span(&phases.cutover),
            window: span(window),
            applications: wave
                .applications
                .iter()
                .map(|a| a.name.value.clone())
                .collect(),
            servers: wave.server_count(),
            tasks: [first, last],
        });
    }

    /// An application's gate also waits for the cutovers of the applications it
    /// depends on, in this wave or an earlier one.
    fn link_application_dependencies(&mut self, definitions: &Definitions) {
        for wave in &definitions.waves {
            for app in &wave.applications {
                let Some(&gate) = self.app_gate.get(&app.name.value) else {
                    continue;
                };
                for dep in &app.depends_on {
                    if let Some(cutovers) = self.app_cutovers.get(&dep.value) {
                        let cutovers = cutovers.clone();
                        self.gates[gate as usize].waits_for.extend(cutovers);
                    }
                }
            }
        }
    }

    fn finding(
        &mut self,
        severity: FindingSeverity,
        wave: &Wave,
        (at, field): (Location, String),
        message: String,
    ) {
        self.findings.push(Finding {
            severity,
            wave: wave.name.value.clone(),
            file: wave.file.to_string(),
            line: at.line,
            col: at.col,
            field,
            message,
        });
    }

    /// Flags what cannot work (errors) and what is risky (warnings).
    fn check_wave(&mut self, definitions: &Definitions, wave: &Wave, estimate: &WaveEstimate) {
        let chain = &estimate.cutover_chain;
        if !chain.fits() {
            self.finding(
                FindingSeverity::Error,
                wave,
                (wave.window.duration_location, "window.duration".to_owned()),
                format!(
                    "the window ({}) is shorter than the expected cutover chain {} ({}): lengthen the window, shorten tasks.cutover.expected_duration or split the wave",
                    format_seconds(chain.window_seconds),
                    chain.applications.join(" -> "),
                    format_seconds(chain.seconds)
                ),
            );
        }
        match estimate.readiness {
            Readiness::TooLate => self.finding(
                FindingSeverity::Error,
                wave,
                (wave.window.start_location, "window.start".to_owned()),
                format!(
                    "replication is estimated to reach continuous only {}, after the window starts: boot tests and cutover cannot run as planned (see wavelift estimate)",
                    estimate
                        .all_continuous_at
                        .map(|t| format!("at {}", short(&t.to_zoned(wave.window.interval.start.time_zone().clone()))))
                        .unwrap_or_else(|| "further off than any date".to_owned())
                ),
            ),
            Readiness::DuringValidate => self.finding(
                FindingSeverity::Warning,
                wave,
                (wave.window.start_location, "window.start".to_owned()),
                format!(
                    "replication is estimated to reach continuous only at {}, after the validate phase starts: boot tests get less time (see wavelift estimate)",
                    estimate
                        .all_continuous_at
                        .map(|t| short(&t.to_zoned(wave.window.interval.start.time_zone().clone())))
                        .unwrap_or_default()
                ),
            ),
            Readiness::InTime | Readiness::Unknown => {}
        }
        // A link whose servers change faster than it sends never brings them to
        // continuous replication: no estimate, and no cutover as planned.
        for link in &estimate.links {
            let Some(bits) = link.bandwidth_bits else {
                continue;
            };
            if link.servers == 0 || link.initial_sync_seconds.is_some() {
                continue;
            }
            let changing = (link.change_bytes_per_second + link.background_bytes_per_second) * 8.0;
            self.finding(
                FindingSeverity::Error,
                wave,
                (wave.window.start_location, "replication.bandwidth".to_owned()),
                format!(
                    "{}: its servers change about {} after compression, and it sends {}: replication never becomes continuous; give the link more bandwidth, lower the change rates, or move servers to another wave or site (see wavelift estimate)",
                    link.link,
                    units::format_bandwidth(changing),
                    units::format_bandwidth(bits as f64)
                ),
            );
        }
        for (app, server) in wave.servers() {
            let at = |field: &str| {
                (
                    server.location,
                    format!("servers[{}].{field}", server.name.value),
                )
            };
            if server.skips(TaskKind::BootTest) && !server.skips(TaskKind::Cutover) {
                self.finding(
                    FindingSeverity::Warning,
                    wave,
                    at("skip"),
                    format!(
                        "server `{}` ({}) cuts over without a boot test",
                        server.name.value, app.name.value
                    ),
                );
            }
            let tasks = &server.tasks;
            if let Some(interval) = tasks.agent_push.scan_interval
                && !server.skips(TaskKind::ReplicationVerify)
                && interval.approx_seconds() >= tasks.replication_verify.max_lag.approx_seconds()
            {
                self.finding(
                    FindingSeverity::Warning,
                    wave,
                    at("tasks.agent_push.scan_interval"),
                    format!(
                        "server `{}` ({}): its agent passes over quiet disks every {interval} (agent_push.scan_interval), not under replication_verify.max_lag {}: a check while its disks are quiet may find the lag over it",
                        server.name.value, app.name.value, tasks.replication_verify.max_lag
                    ),
                );
            }
        }
        // Each schedule once, at the first server that has it.
        let mut schedules: BTreeMap<String, &Server> = BTreeMap::new();
        for (_, server) in wave.servers() {
            if !server.skips(TaskKind::ReplicationVerify) {
                schedules
                    .entry(server.tasks.replication_verify.schedule.as_str().to_owned())
                    .or_insert(server);
            }
        }
        for (schedule, server) in schedules {
            let at = (
                server.location,
                format!(
                    "servers[{}].tasks.replication_verify.schedule",
                    server.name.value
                ),
            );
            let key = (
                schedule.clone(),
                wave.window.timezone.clone(),
                wave.phases.build.start.timestamp(),
                wave.window.interval.start.timestamp(),
            );
            if let Some(rec) = self.recurrences.get(&key) {
                if rec.occurrences == 0 {
                    self.finding(
                        FindingSeverity::Error,
                        wave,
                        at,
                        format!(
                            "replication_verify schedule `{schedule}` never fires between the build start and the window: replication would never be checked"
                        ),
                    );
                } else if rec.occurrences >= MAX_COUNTED_OCCURRENCES {
                    self.finding(
                        FindingSeverity::Warning,
                        wave,
                        at,
                        format!(
                            "replication_verify schedule `{schedule}` fires more than {MAX_COUNTED_OCCURRENCES} times before the window: check less often"
                        ),
                    );
                }
            }
        }
        self.check_cross_wave_dependencies(definitions, wave);
        let approvals = wave
            .servers()
            .any(|(_, s)| s.tasks.cutover.approval && !s.skips(TaskKind::Cutover));
        if approvals
            && wave.notify.is_empty()
            && wave.applications.iter().all(|a| a.owner.is_none())
        {
            self.finding(
                FindingSeverity::Warning,
                wave,
                (wave.location, "notify".to_owned()),
                "cutovers wait for an approval, but the wave has no `notify` recipients and no application owner to ask".to_owned(),
            );
        }
    }

    /// A dependency in an earlier wave whose window ends after this window ends can
    /// never be met in time.
    fn check_cross_wave_dependencies(&mut self, definitions: &Definitions, wave: &Wave) {
        let owner: HashMap<&str, &Wave> = definitions
            .waves
            .iter()
            .flat_map(|w| {
                w.applications
                    .iter()
                    .map(move |a| (a.name.value.as_str(), w))
            })
            .collect();
        for app in &wave.applications {
            for dep in &app.depends_on {
                let Some(other) = owner.get(dep.value.as_str()) else {
                    continue;
                };
                if other.name.value == wave.name.value {
                    continue;
                }
                let at = (
                    dep.location,
                    format!("applications[{}].depends_on", app.name.value),
                );
                if other.window.interval.end > wave.window.interval.end {
                    self.finding(
                        FindingSeverity::Error,
                        wave,
                        at,
                        format!(
                            "`{}` depends on `{}` of wave `{}`, whose window ends ({}) after this wave's window ends ({}): its cutover can never start in time",
                            app.name.value,
                            dep.value,
                            other.name.value,
                            short(&other.window.interval.end),
                            short(&wave.window.interval.end)
                        ),
                    );
                } else if other.window.interval.end > wave.window.interval.start {
                    self.finding(
                        FindingSeverity::Warning,
                        wave,
                        at,
                        format!(
                            "`{}` depends on `{}` of wave `{}`, whose window overlaps this one: `{}` waits inside its window",
                            app.name.value, dep.value, other.name.value, app.name.value
                        ),
                    );
                }
            }
        }
    }
}

fn hypercare_end(window_end: jiff::Zoned, hypercare: Dur) -> Timestamp {
    window_end
        .checked_add(hypercare.to_span())
        .unwrap_or(window_end)
        .timestamp()
}

/// The plan as its documented JSON document (docs/plan-json.md): tasks and gates refer
/// to each other by id, never by position, so the document is stable across revisions.
pub fn to_json(plan: &Plan) -> serde_json::Value {
    use serde_json::json;
    let task_id = |i: &TaskIndex| plan.tasks.get(*i as usize).map(|t| t.id.clone());
    let gate_id = |i: &GateIndex| plan.gates.get(*i as usize).map(|g| g.id.clone());
    json!({
        "format": "wavelift-plan",
        "version": 1,
        "waves": plan.waves.iter().map(|w| json!({
            "name": w.name,
            "description": w.description,
            "engine": w.engine,
            "timezone": w.timezone,
            "phases": {
                "build": {"start": w.build[0], "end": w.build[1]},
                "validate": {"start": w.validate[0], "end": w.validate[1]},
                "cutover": {"start": w.cutover[0], "end": w.cutover[1]},
            },
            "window": {"start": w.window[0], "end": w.window[1]},
            "applications": w.applications,
            "servers": w.servers,
        })).collect::<Vec<_>>(),
        "tasks": plan.tasks.iter().map(|t| json!({
            "id": t.id,
            "wave": t.wave,
            "application": t.application,
            "server": t.server,
            "kind": t.kind,
            "skipped": t.skipped,
            "depends_on": t.depends_on.iter().filter_map(task_id).collect::<Vec<_>>(),
            "gates": t.gates.iter().filter_map(gate_id).collect::<Vec<_>>(),
            "earliest": t.earliest,
            "deadline": t.deadline,
            "recurrence": t.recurrence,
        })).collect::<Vec<_>>(),
        "gates": plan.gates.iter().map(|g| json!({
            "id": g.id,
            "wave": g.wave,
            "application": g.application,
            "waits_for": g.waits_for.iter().filter_map(task_id).collect::<Vec<_>>(),
            "approval": g.approval,
        })).collect::<Vec<_>>(),
        "findings": plan.findings,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use crate::source::SourceFile;

    /// The findings of a one-server wave whose tasks are `tasks` (a flow mapping).
    fn findings(tasks: &str) -> Vec<String> {
        findings_with(tasks, "")
    }

    /// [`findings`], with more of the wave's own fields (`replication: ...\n`).
    fn findings_with(tasks: &str, wave_fields: &str) -> Vec<String> {
        let text = format!(
            "name: wave-1\n\
             window: {{ start: 2026-12-12 22:00, duration: 6h, timezone: UTC }}\n\
             notify: [factory@example.com]\n\
             {wave_fields}\
             defaults: {{ os: {{ family: linux }}, access: {{ method: local }} }}\n\
             applications:\n\
             \x20 - name: app\n\
             \x20   servers:\n\
             \x20     - name: s1\n\
             \x20       disks: [{{ device: /dev/sda, size: 10GiB, boot: true }}]\n\
             \x20       tasks: {tasks}\n"
        );
        let source = SourceFile {
            name: Arc::from("wave.yaml"),
            text,
        };
        let loaded = crate::load_sources(None, PathBuf::new(), &[source]);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        super::plan(&loaded.definitions)
            .findings
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn a_scan_interval_not_under_the_lag_a_check_allows_is_a_warning() {
        let quiet = |found: &[String]| !found.iter().any(|m| m.contains("scan_interval"));
        assert!(quiet(&findings("{ agent_push: { scan_interval: 5m } }")));
        assert!(quiet(&findings(
            "{ agent_push: { scan_interval: 20m }, replication_verify: { max_lag: 1h } }"
        )));
        let warned = findings("{ agent_push: { scan_interval: 10m } }");
        assert!(
            warned.iter().any(|m| m
                == "server `s1` (app): its agent passes over quiet disks every 10m \
                    (agent_push.scan_interval), not under replication_verify.max_lag 10m: a \
                    check while its disks are quiet may find the lag over it"),
            "{warned:?}"
        );
        // Longer than the lag allowed.
        let warned =
            findings("{ agent_push: { scan_interval: 1h }, replication_verify: { max_lag: 30m } }");
        assert!(warned.iter().any(|m| m.contains("every 1h")), "{warned:?}");
    }

    /// A link whose servers change faster than it sends is an error of the plan: the
    /// estimate has no time for it, and the wave cannot cut over as planned.
    #[test]
    fn a_link_that_never_catches_up_is_an_error() {
        let slow = findings_with(
            "{}\n        change_rate: 2%/day",
            "replication: { bandwidth: 1bit/s }\n",
        );
        assert!(
            slow.iter()
                .any(|m| m.starts_with("wave link: its servers change about ")
                    && m.contains("and it sends 1 bit/s: replication never becomes continuous")),
            "{slow:?}"
        );
        // One that would take longer than any date: too late, said so.
        let crawl = findings_with("{}", "replication: { bandwidth: 1bit/s }\n");
        assert!(
            crawl.iter().any(|m| m.starts_with(
                "replication is estimated to reach continuous only further off than any date"
            )),
            "{crawl:?}"
        );
        let fast = findings_with("{}", "replication: { bandwidth: 1Gbit/s }\n");
        assert!(
            !fast.iter().any(|m| m.contains("never becomes continuous")),
            "{fast:?}"
        );
    }

    /// Each finding names the file, the line and column, and the field to change.
    #[test]
    fn findings_say_where_and_which_field() {
        let text = "name: wave-1\n\
                    window: { start: 2026-12-12 22:00, duration: 1h, timezone: UTC }\n\
                    defaults:\n\
                    \x20 os: { family: linux }\n\
                    \x20 access: { method: local }\n\
                    \x20 tasks: { cutover: { expected_duration: 2h, approval: true } }\n\
                    applications:\n\
                    \x20 - name: app\n\
                    \x20   servers:\n\
                    \x20     - name: s1\n\
                    \x20       skip: [boot_test]\n\
                    \x20       disks: [{ device: /dev/sda, size: 10GiB, boot: true }]\n\
                    \x20       tasks: { replication_verify: { schedule: \"0 0 30 2 *\" } }\n";
        let source = SourceFile {
            name: Arc::from("waves/one.yaml"),
            text: text.to_owned(),
        };
        let loaded = crate::load_sources(None, PathBuf::new(), &[source]);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let found: Vec<(String, u32, u32, String)> = super::plan(&loaded.definitions)
            .findings
            .into_iter()
            .map(|f| (f.file, f.line, f.col, f.field))
            .collect();
        let at =
            |line, col, field: &str| ("waves/one.yaml".to_owned(), line, col, field.to_owned());
        assert_eq!(
            found,
            vec![
                at(2, 46, "window.duration"),
                at(10, 9, "servers[s1].skip"),
                at(10, 9, "servers[s1].tasks.replication_verify.schedule"),
                at(1, 1, "notify"),
            ]
        );
    }

    /// An application listed twice in depends_on is waited for once: the gate has one
    /// edge to its cutover, and the file a warning.
    #[test]
    fn a_dependency_listed_twice_is_one_edge() {
        let text = "name: wave-1\n\
                    window: { start: 2026-12-12 22:00, duration: 6h, timezone: UTC }\n\
                    defaults: { os: { family: linux }, access: { method: local } }\n\
                    applications:\n\
                    \x20 - name: db\n\
                    \x20   servers: [{ name: db-1, disks: [{ device: /dev/sda, size: 10GiB }] }]\n\
                    \x20 - name: app\n\
                    \x20   depends_on: [db, db]\n\
                    \x20   servers: [{ name: app-1, disks: [{ device: /dev/sdb, size: 10GiB }] }]\n";
        let source = SourceFile {
            name: Arc::from("wave.yaml"),
            text: text.to_owned(),
        };
        let loaded = crate::load_sources(None, PathBuf::new(), &[source]);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        assert_eq!(
            loaded.diagnostics.warning_count(),
            1,
            "{:?}",
            loaded.diagnostics
        );
        let plan = super::plan(&loaded.definitions);
        let gate = plan
            .gates
            .iter()
            .find(|g| g.id == "app/ready")
            .expect("app's gate");
        let db_cutover = plan
            .tasks
            .iter()
            .position(|t| t.id == "db-1/cutover")
            .expect("db-1's cutover");
        let edges = gate
            .waits_for
            .iter()
            .filter(|&&t| t as usize == db_cutover)
            .count();
        assert_eq!(edges, 1, "{:?}", gate.waits_for);
    }
}
