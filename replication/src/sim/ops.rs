//! The calls that act, as [`Call`] values the journal records and [`Model::apply`]
//! carries out. Each one checks everything first and changes nothing when it refuses,
//! so that a refused call leaves no trace and replaying the journal redoes exactly the
//! calls that succeeded.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ActionRecord;
use super::fate::fates;
use super::model::{Model, Timer};
use super::state::{JobRecord, Phase, ServerRecord, Slot};
use super::view::{job_id, replication_state, source_id, target_id};
use crate::rules::{self, conflict, health_name, life_cycle_name};
use crate::{
    EngineError, EngineResult, ErrorKind, Health, LaunchKind, LaunchStatus, LifeCycle, PointInTime,
    TargetState,
};

/// One call that changed the model, with the values it needs (servers by index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Call {
    /// A read that moved the model past an event; replaying it keeps the model's time.
    Advance,
    Register {
        name: String,
        total_bytes: u64,
        change_millibytes_per_second: u64,
    },
    StartLaunch {
        kind: LaunchKind,
        sources: Vec<u32>,
        point: PointInTime,
    },
    TerminateTargets {
        source: u32,
        kind: LaunchKind,
    },
    FinalizeCutover {
        source: u32,
    },
    ChangeLifeCycle {
        source: u32,
        state: LifeCycle,
    },
    Archive {
        source: u32,
    },
}

impl Model {
    /// Carries out the call at the model's time. Returns the server a registration
    /// created or the job a launch started.
    pub fn apply(&mut self, call: &Call) -> EngineResult<Option<u32>> {
        match call {
            Call::Advance => Ok(None),
            Call::Register {
                name,
                total_bytes,
                change_millibytes_per_second,
            } => self
                .register(name, *total_bytes, *change_millibytes_per_second)
                .map(Some),
            Call::StartLaunch {
                kind,
                sources,
                point,
            } => self.start_launch(*kind, sources, point).map(Some),
            Call::TerminateTargets { source, kind } => {
                self.terminate_targets(*source, *kind).map(|()| None)
            }
            Call::FinalizeCutover { source } => self.finalize_cutover(*source).map(|()| None),
            Call::ChangeLifeCycle { source, state } => {
                self.change_life_cycle(*source, *state).map(|()| None)
            }
            Call::Archive { source } => self.archive(*source).map(|()| None),
        }
    }

    fn record(&mut self, action: &str, i: u32, detail: String) {
        let source = self
            .server(i)
            .map(|server| server.name.clone())
            .unwrap_or_default();
        self.s.actions.push(ActionRecord {
            at: self.timestamp(self.s.now),
            action: action.to_owned(),
            source,
            detail,
        });
    }

    fn existing(&self, i: u32) -> EngineResult<&ServerRecord> {
        self.server(i).ok_or_else(|| {
            EngineError::new(
                ErrorKind::NotFound,
                format!("no source server {}", source_id(i)),
            )
        })
    }

    fn register(&mut self, name: &str, total_bytes: u64, change: u64) -> EngineResult<u32> {
        if self.by_name.contains_key(name) {
            return Err(conflict(format!(
                "source server {name} is already registered"
            )));
        }
        let Ok(i) = u32::try_from(self.s.servers.len()) else {
            return Err(EngineError::new(
                ErrorKind::QuotaExceeded,
                "too many source servers",
            ));
        };
        let now = self.s.now;
        let until = now.saturating_add(self.s.config.initiate_ns);
        let fates = fates(&self.s.config, name, total_bytes);
        self.s.servers.push(ServerRecord {
            name: name.to_owned(),
            total_bytes,
            change_millibytes_per_second: change,
            life_cycle: LifeCycle::NotReady,
            phase: Phase::Initiating { until },
            sync_started_at: None,
            stall: fates.stall,
            disconnect: fates.disconnect,
            boot_failure: fates.boot_failure,
            test_launches: 0,
            jobs: Vec::new(),
        });
        self.by_name.insert(name.to_owned(), i);
        self.timers.insert((until, Timer::Server(i)));
        self.record(
            "register",
            i,
            format!("{} ({total_bytes} bytes to send)", source_id(i)),
        );
        Ok(i)
    }

    fn start_launch(
        &mut self,
        kind: LaunchKind,
        sources: &[u32],
        point: &PointInTime,
    ) -> EngineResult<u32> {
        rules::check_quotas(
            self.s.config.quotas,
            sources.len(),
            self.active_jobs.len(),
            self.servers_in_active_jobs,
        )?;
        let mut seen = BTreeSet::new();
        for &i in sources {
            self.existing(i)?;
            if !seen.insert(i) {
                return Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!("{} appears twice in the launch", self.server_label(i)),
                ));
            }
        }
        for &i in sources {
            self.check_launchable(i, kind, point)?;
        }

        let Ok(j) = u32::try_from(self.s.jobs.len()) else {
            return Err(EngineError::new(
                ErrorKind::QuotaExceeded,
                "too many launch jobs",
            ));
        };
        let now = self.s.now;
        let due = now.saturating_add(self.s.config.launch_ns);
        let point_name = match point {
            PointInTime::Latest => "the latest data".to_owned(),
            PointInTime::RecoveryPoint(id) => format!("recovery point {id}"),
        };
        let mut slots = Vec::with_capacity(sources.len());
        for &i in sources {
            let replaced = match kind {
                LaunchKind::Test => {
                    self.terminate_kind(i, kind, &format!("replaced by {}", job_id(j)))
                }
                LaunchKind::Cutover => Vec::new(),
            };
            let Some(server) = self.s.servers.get_mut(i as usize) else {
                continue;
            };
            let impaired_boot =
                kind == LaunchKind::Test && server.boot_failure && server.test_launches == 0;
            server.life_cycle = match kind {
                LaunchKind::Test => LifeCycle::Testing,
                LaunchKind::Cutover => LifeCycle::CuttingOver,
            };
            if kind == LaunchKind::Test {
                server.test_launches = server.test_launches.saturating_add(1);
            }
            server.jobs.push(j);
            slots.push(Slot {
                source: i,
                status: LaunchStatus::InProgress,
                target: None,
                message: None,
                impaired_boot,
            });
            let mut detail = format!("{}: {kind} launch from {point_name}", job_id(j));
            if !replaced.is_empty() {
                detail.push_str(&format!("; replaced {}", replaced.join(", ")));
            }
            self.record("start_launch", i, detail);
        }
        self.servers_in_active_jobs += slots.len();
        self.s.jobs.push(JobRecord {
            kind,
            created_at: now,
            due,
            point: point.clone(),
            slots,
            completed: false,
        });
        self.active_jobs.insert(j);
        self.timers.insert((due, Timer::Launch(j)));
        Ok(j)
    }

    fn check_launchable(&self, i: u32, kind: LaunchKind, point: &PointInTime) -> EngineResult<()> {
        let server = self.existing(i)?;
        let label = self.server_label(i);
        let live_cutover = match kind {
            LaunchKind::Cutover => self
                .live_launches(i, LaunchKind::Cutover)
                .into_iter()
                .next(),
            LaunchKind::Test => None,
        };
        rules::check_launch(
            &label,
            kind,
            server.life_cycle,
            replication_state(&server.phase),
            live_cutover.as_deref(),
            matches!(point, PointInTime::RecoveryPoint(_)),
        )?;
        if let PointInTime::RecoveryPoint(id) = point
            && !self.recovery_points(i).iter().any(|p| &p.id == id)
        {
            return Err(EngineError::new(
                ErrorKind::NotFound,
                format!("{label} has no recovery point {id}"),
            ));
        }
        Ok(())
    }

    /// The server's launches of this kind still in progress and its running targets.
    fn live_launches(&self, i: u32, kind: LaunchKind) -> Vec<String> {
        let mut live = Vec::new();
        let Some(server) = self.server(i) else {
            return live;
        };
        for &j in &server.jobs {
            let Some(job) = self.s.jobs.get(j as usize).filter(|job| job.kind == kind) else {
                continue;
            };
            for slot in job.slots.iter().filter(|slot| slot.source == i) {
                match (slot.status, slot.target) {
                    (LaunchStatus::InProgress, _) => live.push(format!("launch in {}", job_id(j))),
                    (LaunchStatus::Launched, Some(k)) => {
                        live.push(format!("target {}", target_id(k)))
                    }
                    _ => {}
                }
            }
        }
        live
    }

    /// Terminates the server's targets of this kind and its launches of this kind still
    /// in progress; returns what it terminated.
    fn terminate_kind(&mut self, i: u32, kind: LaunchKind, why: &str) -> Vec<String> {
        let mut terminated = Vec::new();
        let jobs = self
            .server(i)
            .map(|server| server.jobs.clone())
            .unwrap_or_default();
        for j in jobs {
            let Some(job) = self
                .s
                .jobs
                .get_mut(j as usize)
                .filter(|job| job.kind == kind)
            else {
                continue;
            };
            for slot in job.slots.iter_mut().filter(|slot| slot.source == i) {
                match slot.status {
                    LaunchStatus::InProgress => {
                        terminated.push(format!("the launch in {}", job_id(j)));
                    }
                    LaunchStatus::Launched => {
                        if let Some(target) =
                            slot.target.and_then(|k| self.s.targets.get_mut(k as usize))
                        {
                            target.state = TargetState::Terminated;
                        }
                        terminated.extend(slot.target.map(|k| target_id(k).0));
                    }
                    _ => continue,
                }
                slot.status = LaunchStatus::Terminated;
                slot.message = Some(format!("terminated: {why}"));
            }
            self.complete_job_if_done(j);
        }
        terminated
    }

    fn terminate_targets(&mut self, i: u32, kind: LaunchKind) -> EngineResult<()> {
        let server = self.existing(i)?;
        rules::check_terminate(&self.server_label(i), kind, server.life_cycle)?;
        let terminated = self.terminate_kind(i, kind, "terminate_targets");
        let detail = if terminated.is_empty() {
            format!("no {kind} target to terminate")
        } else {
            format!("{kind}: {}", terminated.join(", "))
        };
        self.record("terminate_targets", i, detail);
        Ok(())
    }

    fn finalize_cutover(&mut self, i: u32) -> EngineResult<()> {
        let server = self.existing(i)?;
        let label = self.server_label(i);
        rules::check_finalize(&label, server.life_cycle)?;
        let latest = server.jobs.iter().rev().find_map(|&j| {
            let job = self.s.jobs.get(j as usize)?;
            let slot = job.slots.iter().find(|slot| slot.source == i)?;
            (job.kind == LaunchKind::Cutover).then_some((j, slot))
        });
        let Some((j, slot)) = latest else {
            return Err(conflict(format!(
                "{label} has no cutover launch to finalize"
            )));
        };
        let target = match (slot.status, slot.target) {
            (LaunchStatus::Launched, Some(k)) => k,
            (LaunchStatus::InProgress, _) => {
                return Err(conflict(format!(
                    "the cutover launch of {label} in {} is still in progress",
                    job_id(j)
                )));
            }
            _ => {
                return Err(conflict(format!(
                    "the cutover launch of {label} in {} did not launch a target",
                    job_id(j)
                )));
            }
        };
        let health = self
            .s
            .targets
            .get(target as usize)
            .map(|t| (t.state, t.health));
        if health != Some((TargetState::Running, Health::Ok)) {
            let shown = health.map_or("missing", |(_, health)| health_name(health));
            return Err(conflict(format!(
                "cutover target {} of {label} is not healthy (health {shown}); finalize needs a running, healthy target",
                target_id(target)
            )));
        }
        let now = self.s.now;
        self.stop_replication(i, now);
        if let Some(server) = self.s.servers.get_mut(i as usize) {
            server.life_cycle = LifeCycle::Cutover;
        }
        self.record(
            "finalize_cutover",
            i,
            format!("target {}; replication stopped", target_id(target)),
        );
        Ok(())
    }

    fn change_life_cycle(&mut self, i: u32, to: LifeCycle) -> EngineResult<()> {
        use LifeCycle::*;
        let server = self.existing(i)?;
        let label = self.server_label(i);
        let from = server.life_cycle;
        let (from_name, to_name) = (life_cycle_name(from), life_cycle_name(to));
        rules::check_change(&label, from, to, replication_state(&server.phase))?;
        if to == Disconnected {
            let now = self.s.now;
            self.stop_replication(i, now);
        }
        if let Some(server) = self.s.servers.get_mut(i as usize) {
            server.life_cycle = to;
        }
        self.record("change_life_cycle", i, format!("{from_name} -> {to_name}"));
        Ok(())
    }

    fn archive(&mut self, i: u32) -> EngineResult<()> {
        let server = self.existing(i)?;
        rules::check_archive(&self.server_label(i), server.life_cycle)?;
        let from = life_cycle_name(server.life_cycle);
        if let Some(server) = self.s.servers.get_mut(i as usize) {
            server.life_cycle = LifeCycle::Archived;
        }
        self.record("archive", i, format!("{from} -> archived"));
        Ok(())
    }
}
