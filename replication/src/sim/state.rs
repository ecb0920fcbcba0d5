//! What the state file holds: the model's records, with indexes between them (servers,
//! jobs and targets by position), and the checks that a state read back is whole.
//! Time is integer nanoseconds since the model's origin and bytes are integers, so the
//! state round-trips through JSON exactly.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ActionRecord;
use super::config::Resolved;
use crate::{Health, LaunchKind, LaunchStatus, LifeCycle, PointInTime, TargetState};

pub(crate) const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Everything the engine knows; the state file is this, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub config: Resolved,
    /// Model time 0. Model times are nanoseconds since the origin.
    pub origin: Timestamp,
    /// How far the model has advanced; it never goes back.
    pub now: i64,
    /// The last event, when the attained bits were fixed.
    pub anchor: i64,
    /// Bits sent to each sending server from the origin to the anchor.
    pub attained_bits: u128,
    pub servers: Vec<ServerRecord>,
    pub jobs: Vec<JobRecord>,
    pub targets: Vec<TargetRecord>,
    pub actions: Vec<ActionRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServerRecord {
    pub name: String,
    /// Bytes to send in the initial sync: used bytes / compression.
    pub total_bytes: u64,
    /// Changed bytes per second after compression, times 1000.
    pub change_millibytes_per_second: u64,
    pub life_cycle: LifeCycle,
    pub phase: Phase,
    pub sync_started_at: Option<i64>,
    /// Failures still to come in the initial sync; `None` once they happened.
    pub stall: Option<Pause>,
    pub disconnect: Option<Pause>,
    /// Its first test launch boots impaired.
    pub boot_failure: bool,
    pub test_launches: u32,
    pub jobs: Vec<u32>,
}

/// A failure that pauses sending when the server's initial sync reaches `after_bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pause {
    pub after_bits: u128,
    pub lasts_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Step {
    InitialSync,
    Backlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PauseKind {
    Stalled,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    Initiating {
        until: i64,
    },
    /// In the bandwidth pool; progress is the attained bits minus `start_bits`.
    Sending {
        step: Step,
        start_bits: u128,
        size_bits: u128,
    },
    Paused {
        step: Step,
        kind: PauseKind,
        progress_bits: u128,
        size_bits: u128,
        until: i64,
    },
    Snapshot {
        until: i64,
    },
    Continuous {
        since: i64,
    },
    /// After finalize or a disconnect from the service.
    Stopped {
        replicated_bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub kind: LaunchKind,
    pub created_at: i64,
    /// When its launches finish.
    pub due: i64,
    pub point: PointInTime,
    pub slots: Vec<Slot>,
    pub completed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Slot {
    pub source: u32,
    pub status: LaunchStatus,
    pub target: Option<u32>,
    pub message: Option<String>,
    /// Its target will boot impaired (the server's first test launch, if chosen).
    pub impaired_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TargetRecord {
    pub source: u32,
    pub kind: LaunchKind,
    pub job: u32,
    pub state: TargetState,
    pub health: Health,
    pub launched_at: i64,
    pub boot_due: i64,
    pub boots_impaired: bool,
}

/// Progress (bits into the step) of the server's next milestone: a pending pause or the
/// end of the step.
pub(crate) fn next_point(server: &ServerRecord, step: Step, size_bits: u128) -> u128 {
    let mut point = size_bits;
    if step == Step::InitialSync {
        for pause in [server.stall, server.disconnect].into_iter().flatten() {
            point = point.min(pause.after_bits);
        }
    }
    point
}

/// Changes written since the initial sync started, to send once it ends.
pub(crate) fn backlog_bits(server: &ServerRecord, t: i64) -> u128 {
    let elapsed = server
        .sync_started_at
        .map_or(0, |started| t.saturating_sub(started));
    changed_bits(server, elapsed)
}

/// Bits changed in `elapsed` nanoseconds, never more than the whole initial sync.
pub(crate) fn changed_bits(server: &ServerRecord, elapsed: i64) -> u128 {
    let elapsed = u128::try_from(elapsed).unwrap_or(0);
    let changed = u128::from(server.change_millibytes_per_second)
        .saturating_mul(elapsed)
        .saturating_mul(8)
        / (1000 * NANOS_PER_SECOND as u128);
    changed.min(u128::from(server.total_bytes) * 8)
}

/// Every index in the state points at a record.
pub(crate) fn check_references(s: &State) -> Result<(), String> {
    let servers = s.servers.len();
    let jobs = s.jobs.len();
    let targets = s.targets.len();
    if servers > u32::MAX as usize || jobs > u32::MAX as usize || targets > u32::MAX as usize {
        return Err("too many servers, jobs or targets".to_owned());
    }
    for server in &s.servers {
        if let Some(&j) = server.jobs.iter().find(|&&j| j as usize >= jobs) {
            return Err(format!(
                "server {} refers to job {j} of {jobs}",
                server.name
            ));
        }
    }
    for (j, job) in s.jobs.iter().enumerate() {
        for slot in &job.slots {
            if slot.source as usize >= servers {
                return Err(format!(
                    "job {j} refers to server {} of {servers}",
                    slot.source
                ));
            }
            if let Some(k) = slot.target.filter(|&k| k as usize >= targets) {
                return Err(format!("job {j} refers to target {k} of {targets}"));
            }
        }
    }
    for (k, target) in s.targets.iter().enumerate() {
        if target.source as usize >= servers || target.job as usize >= jobs {
            return Err(format!("target {k} refers to a missing server or job"));
        }
    }
    Ok(())
}
