//! What the engine shows: ids, and the model's records as the interface's values
//! (source servers with their replication figures, jobs, targets, recovery points).
//! Nothing here changes the model.

use std::collections::BTreeSet;

use super::model::Model;
use super::state::{NANOS_PER_SECOND, PauseKind, Phase, ServerRecord, Step, changed_bits};
use crate::{
    Job, JobId, JobServer, JobStatus, RecoveryPoint, Replication, ReplicationState, SourceId,
    SourceServer, Target, TargetId, TargetState,
};

const SOURCE_PREFIX: &str = "sim-source-";
const JOB_PREFIX: &str = "sim-job-";
const TARGET_PREFIX: &str = "sim-target-";
/// Targets answer under a reserved top-level domain: no rehearsal can reach a real host.
const TARGET_DOMAIN: &str = "rehearsal.invalid";
/// The lag continuous replication shows.
pub(crate) const CONTINUOUS_LAG_SECONDS: f64 = 5.0;

pub(crate) fn source_id(i: u32) -> SourceId {
    SourceId(format!("{SOURCE_PREFIX}{}", u64::from(i) + 1))
}

pub(crate) fn job_id(j: u32) -> JobId {
    JobId(format!("{JOB_PREFIX}{}", u64::from(j) + 1))
}

pub(crate) fn target_id(k: u32) -> TargetId {
    TargetId(format!("{TARGET_PREFIX}{}", u64::from(k) + 1))
}

/// The index behind an id, if the id has the engine's form (`sim-source-1` is index 0).
pub(crate) fn parse_index(id: &str, prefix: &str) -> Option<u32> {
    let number = id.strip_prefix(prefix)?;
    if number.starts_with('0') || number.starts_with('+') {
        return None;
    }
    number.parse::<u32>().ok()?.checked_sub(1)
}

pub(crate) fn parse_source(id: &SourceId) -> Option<u32> {
    parse_index(&id.0, SOURCE_PREFIX)
}

pub(crate) fn parse_job(id: &JobId) -> Option<u32> {
    parse_index(&id.0, JOB_PREFIX)
}

pub(crate) fn parse_target(id: &TargetId) -> Option<u32> {
    parse_index(&id.0, TARGET_PREFIX)
}

pub(crate) fn replication_state(phase: &Phase) -> ReplicationState {
    match phase {
        Phase::Initiating { .. } => ReplicationState::Initiating,
        Phase::Sending {
            step: Step::InitialSync,
            ..
        } => ReplicationState::InitialSync,
        Phase::Sending {
            step: Step::Backlog,
            ..
        } => ReplicationState::Backlog,
        Phase::Paused {
            kind: PauseKind::Stalled,
            ..
        } => ReplicationState::Stalled,
        Phase::Paused {
            kind: PauseKind::Disconnected,
            ..
        }
        | Phase::Stopped { .. } => ReplicationState::Disconnected,
        Phase::Snapshot { .. } => ReplicationState::CreatingSnapshot,
        Phase::Continuous { .. } => ReplicationState::Continuous,
    }
}

impl Model {
    pub fn server(&self, i: u32) -> Option<&ServerRecord> {
        self.s.servers.get(i as usize)
    }

    /// "web-01 (sim-source-3)", for messages.
    pub fn server_label(&self, i: u32) -> String {
        match self.server(i) {
            Some(server) => format!("{} ({})", server.name, source_id(i)),
            None => source_id(i).0,
        }
    }

    pub fn describe_source(&self, i: u32) -> Option<SourceServer> {
        let server = self.server(i)?;
        Some(SourceServer {
            id: source_id(i),
            name: server.name.clone(),
            replication: self.replication(server),
            life_cycle: server.life_cycle,
        })
    }

    pub fn describe_job(&self, j: u32) -> Option<Job> {
        self.describe_job_of(j, None)
    }

    /// The job; with `only`, with that source's entry alone.
    pub fn describe_job_of(&self, j: u32, only: Option<u32>) -> Option<Job> {
        let job = self.s.jobs.get(j as usize)?;
        Some(Job {
            id: job_id(j),
            kind: job.kind,
            status: if job.completed {
                JobStatus::Completed
            } else {
                JobStatus::Started
            },
            created_at: self.timestamp(job.created_at),
            servers: job
                .slots
                .iter()
                .filter(|slot| only.is_none_or(|i| slot.source == i))
                .map(|slot| JobServer {
                    source: source_id(slot.source),
                    status: slot.status,
                    target: slot.target.map(target_id),
                    message: slot.message.clone(),
                })
                .collect(),
        })
    }

    pub fn describe_target(&self, k: u32) -> Option<Target> {
        let target = self.s.targets.get(k as usize)?;
        let id = target_id(k);
        let address =
            (target.state == TargetState::Running).then(|| format!("{id}.{TARGET_DOMAIN}"));
        Some(Target {
            source: source_id(target.source),
            kind: target.kind,
            state: target.state,
            health: target.health,
            address,
            launched_at: self.timestamp(target.launched_at),
            id,
            detail: None,
        })
    }

    fn replication(&self, server: &ServerRecord) -> Replication {
        let now = self.s.now;
        let total_bits = u128::from(server.total_bytes) * 8;
        let pool = self.milestones.len();
        let snapshot = seconds(self.s.config.snapshot_ns);
        let mut report = Replication {
            state: replication_state(&server.phase),
            lag_seconds: None,
            backlog_bytes: 0,
            replicated_bytes: server.total_bytes,
            total_bytes: server.total_bytes,
            eta_seconds: None,
            throughput_bytes_per_second: None,
            wire_bytes: None,
        };
        match server.phase {
            Phase::Initiating { until } => {
                report.replicated_bytes = 0;
                report.eta_seconds = self
                    .eta_from_initial_sync(server, total_bits, 0.0, pool + 1)
                    .map(|rest| seconds(until.saturating_sub(now)) + rest);
            }
            Phase::Sending {
                step,
                start_bits,
                size_bits,
            } => {
                let progress = self
                    .attained_at(now)
                    .saturating_sub(start_bits)
                    .min(size_bits);
                let remaining = size_bits - progress;
                if step == Step::InitialSync {
                    report.replicated_bytes = bytes(progress);
                    let elapsed = server
                        .sync_started_at
                        .map_or(0.0, |t| seconds(now.saturating_sub(t)));
                    report.eta_seconds =
                        self.eta_from_initial_sync(server, remaining, elapsed, pool);
                } else {
                    report.backlog_bytes = bytes(remaining);
                    report.eta_seconds = self
                        .send_seconds(remaining, pool)
                        .map(|send| send + snapshot);
                }
            }
            Phase::Paused {
                step,
                progress_bits,
                size_bits,
                until,
                ..
            } => {
                let remaining = size_bits.saturating_sub(progress_bits);
                let resume_in = seconds(until.saturating_sub(now));
                if step == Step::InitialSync {
                    report.replicated_bytes = bytes(progress_bits);
                    let elapsed = server
                        .sync_started_at
                        .map_or(0.0, |t| seconds(until.saturating_sub(t)));
                    report.eta_seconds = self
                        .eta_from_initial_sync(server, remaining, elapsed, pool + 1)
                        .map(|rest| resume_in + rest);
                } else {
                    report.backlog_bytes = bytes(remaining);
                    report.eta_seconds = self
                        .send_seconds(remaining, pool + 1)
                        .map(|send| resume_in + send + snapshot);
                }
            }
            Phase::Snapshot { until } => {
                report.eta_seconds = Some(seconds(until.saturating_sub(now)))
            }
            Phase::Continuous { .. } => {
                report.lag_seconds = Some(CONTINUOUS_LAG_SECONDS);
                report.eta_seconds = Some(0.0);
            }
            Phase::Stopped { replicated_bytes } => report.replicated_bytes = replicated_bytes,
        }
        report.replicated_bytes = report.replicated_bytes.min(server.total_bytes);
        report
    }

    /// Seconds to continuous replication from a point of the initial sync, if the pool
    /// keeps its size: the rest of the sync, its backlog, the snapshot.
    fn eta_from_initial_sync(
        &self,
        server: &ServerRecord,
        remaining_bits: u128,
        elapsed_seconds: f64,
        pool: usize,
    ) -> Option<f64> {
        let sync = self.send_seconds(remaining_bits, pool)?;
        let elapsed = ((elapsed_seconds + sync) * NANOS_PER_SECOND as f64) as i64;
        let backlog = self.send_seconds(changed_bits(server, elapsed), pool)?;
        Some(sync + backlog + seconds(self.s.config.snapshot_ns))
    }

    /// Seconds to send `bits` to one server of a pool of `pool`.
    fn send_seconds(&self, bits: u128, pool: usize) -> Option<f64> {
        let bandwidth = self.s.config.bandwidth_bits_per_second;
        if bits == 0 || self.s.config.unlimited_bandwidth() {
            return Some(0.0);
        }
        if bandwidth == 0 {
            return None;
        }
        Some(bits as f64 * pool.max(1) as f64 / bandwidth as f64)
    }

    /// Every 10 minutes for the last hour, hourly for the last day, daily for 30 days,
    /// on the UTC grid (so servers share points), none before continuous replication.
    pub fn recovery_points(&self, i: u32) -> Vec<RecoveryPoint> {
        let Some(Phase::Continuous { since }) = self.server(i).map(|server| server.phase) else {
            return Vec::new();
        };
        const MINUTE: i128 = 60 * NANOS_PER_SECOND as i128;
        const HOUR: i128 = 60 * MINUTE;
        const DAY: i128 = 24 * HOUR;
        let origin = self.s.origin.as_nanosecond();
        let now = origin + i128::from(self.s.now);
        let since = origin + i128::from(since);
        let mut points = BTreeSet::new();
        for (every, window) in [(10 * MINUTE, HOUR), (HOUR, DAY), (DAY, 30 * DAY)] {
            let from = since.max(now - window);
            let mut point = from + (every - from.rem_euclid(every)) % every;
            while point <= now {
                points.insert(point);
                point += every;
            }
        }
        points
            .into_iter()
            .filter_map(|point| jiff::Timestamp::from_nanosecond(point).ok())
            .map(|taken_at| RecoveryPoint {
                id: format!("rp-{taken_at}"),
                taken_at,
            })
            .collect()
    }
}

fn seconds(nanoseconds: i64) -> f64 {
    nanoseconds as f64 / NANOS_PER_SECOND as f64
}

fn bytes(bits: u128) -> u64 {
    u64::try_from(bits / 8).unwrap_or(u64::MAX)
}
