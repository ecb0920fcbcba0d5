//! For the tasks' tests: one server's wave, the rehearsal engine on a manual clock, and
//! a task's context over them.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use replication::sim::{ManualClock, SimConfig, SimEngine};
use replication::{ReplicationEngine, SourceId};
use waves::model::{Server, TaskKind};

use crate::context::TaskContext;

/// The window's start: Monday 2 March 2026, 10:00 UTC, for six hours.
pub fn window_start() -> Timestamp {
    "2026-03-02T10:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

pub struct Rig {
    pub loaded: waves::Loaded,
    pub clock: Arc<ManualClock>,
    pub engine: SimEngine,
    pub launcher: crate::launcher::Launcher,
    pub timezone: jiff::tz::TimeZone,
}

impl Rig {
    /// Server `s1` of wave `w` (one 10 GiB disk, local access), on the rehearsal engine
    /// without failures, its clock at `clock_at`.
    pub fn new(clock_at: Timestamp) -> Rig {
        let text = "name: w\n\
            window: { start: 2026-03-02 10:00, duration: 6h, timezone: UTC }\n\
            defaults: { os: { family: linux }, access: { method: local } }\n\
            applications:\n\
            \x20 - name: app\n\
            \x20   servers: [{ name: s1, disks: [{ device: /dev/sda, size: 10GiB, boot: true }] }]\n";
        let loaded = waves::load_sources(
            None,
            std::path::PathBuf::new(),
            &[waves::source::SourceFile {
                name: Arc::from("w.yaml"),
                text: text.to_owned(),
            }],
        );
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let clock = Arc::new(ManualClock::new(clock_at));
        let quiet = SimConfig {
            stall_probability: 0.0,
            disconnect_probability: 0.0,
            boot_failure_probability: 0.0,
            ..SimConfig::rehearsal(1)
        };
        let engine = SimEngine::new(quiet, clock.clone());
        Rig {
            loaded,
            clock,
            engine,
            launcher: crate::launcher::Launcher::default(),
            timezone: jiff::tz::TimeZone::UTC,
        }
    }

    pub fn server(&self) -> &Server {
        &self.loaded.definitions.waves[0].applications[0].servers[0]
    }

    /// Registers `s1` with the engine now: continuous about six minutes later.
    pub async fn register(&self) -> SourceId {
        let spec = replication::SourceSpec {
            name: "s1".to_owned(),
            hostname: None,
            disks: vec![replication::DiskSpec {
                device: "/dev/sda".to_owned(),
                size_bytes: 10 << 30,
                used_bytes: 1 << 30,
            }],
            change_rate_bytes_per_second: 0.0,
        };
        match self.engine.register_source(&spec).await {
            Ok(source) => source.id,
            Err(err) => panic!("registering s1: {err}"),
        }
    }

    /// The context of `s1`'s task of `kind` at `now`, resuming at `step`.
    pub fn context(
        &self,
        kind: TaskKind,
        now: Timestamp,
        step: Option<serde_json::Value>,
    ) -> TaskContext<'_> {
        let start = window_start();
        TaskContext {
            task_id: "s1/task",
            kind,
            wave: "w",
            timezone: &self.timezone,
            server: self.server(),
            window: [start, start + SignedDuration::from_hours(6)],
            now,
            started_at: now,
            attempt: 0,
            step,
            timed_out: None,
            aborted: None,
            engine: &self.engine,
            engine_kind: waves::model::EngineKind::Sim,
            config_dir: std::path::Path::new("."),
            engine_endpoints: Vec::new(),
            launcher: &self.launcher,
            shell: &crate::shell::RehearsalShell,
            cmdb: &crate::cmdb::RehearsalCmdb,
        }
    }

    /// Registers `s1` and takes the first turn of its task of `kind` an hour into the
    /// window (replication continuous by then), which waits on its launch: the source,
    /// the time, and the step it waits at.
    pub async fn under_way(&self, kind: TaskKind) -> (SourceId, Timestamp, serde_json::Value) {
        let id = self.register().await;
        self.clock.advance(3600.0);
        let now = window_start() + SignedDuration::from_hours(1);
        let report = crate::run(&self.context(kind, now, None)).await;
        let crate::context::Progress::Wait { step, .. } = report.progress else {
            panic!("the {kind:?} did not wait on its launch: {report:?}");
        };
        (id, now, step)
    }

    /// Registers `s1` and runs its cutover to its end an hour into the window (the
    /// clock moving five minutes between looks); the time it ended.
    pub async fn cut_over(&self) -> Timestamp {
        self.register().await;
        self.clock.advance(3600.0);
        let mut now = window_start() + SignedDuration::from_hours(1);
        let mut step = None;
        for _ in 0..20 {
            let report = crate::cutover::run(&self.context(TaskKind::Cutover, now, step)).await;
            match report.progress {
                crate::context::Progress::Wait { step: next, .. } => step = Some(next),
                crate::context::Progress::Done { .. } => return now,
                other => panic!("the cutover did not go through: {other:?}"),
            }
            self.clock.advance(300.0);
            now += SignedDuration::from_mins(5);
        }
        panic!("the cutover did not end in 20 looks")
    }
}

/// Asserts that `report` ends a cutover of `source` rolled back for good with `reason`:
/// its life cycle back to ready for cutover, its target terminated, its source started.
pub async fn assert_rolled_back(
    engine: &SimEngine,
    report: &crate::Report,
    source: &SourceId,
    reason: &str,
) {
    let crate::context::Progress::Fail {
        reason: said,
        retryable,
        ..
    } = &report.progress
    else {
        panic!("the cutover was not rolled back: {report:?}");
    };
    assert_eq!(said, reason);
    assert!(!retryable);
    assert_eq!(
        actions(report),
        [
            "engine.change_life_cycle",
            "engine.terminate_targets",
            "shell.start"
        ]
    );
    let found = engine.describe_source(source).await.expect("the source");
    assert_eq!(found.life_cycle, replication::LifeCycle::ReadyForCutover);
}

/// The actions a report took, by name.
pub fn actions(report: &crate::Report) -> Vec<&str> {
    report.actions.iter().map(|a| a.action.as_str()).collect()
}
