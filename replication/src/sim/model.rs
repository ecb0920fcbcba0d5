//! The model: its state ([`State`]), the indexes rebuilt from it, and how it moves
//! through time ([`Model::advance`]).
//!
//! Servers that send (initial sync or backlog) share the bandwidth equally: processor
//! sharing. Instead of each server's progress the model keeps one number, the bits
//! *attained* by every sending server since the origin, fixed (anchored) at the last
//! event and computed in closed form between events. A server that starts sending
//! notes the attained bits then; its next milestone (a pause or the end of its step) is
//! an attained value, kept in an ordered set, so the next event is found in O(log N).
//! A pause keeps the server's progress and rebases it when it resumes. The other
//! events (end of initiation, of a pause, of the snapshot; a launch; a boot) are timers
//! in a second ordered set.
//!
//! The state changes only at events, never at the times the engine happens to be
//! asked, so one jump of three weeks and many small steps give exactly the same state.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use super::config::Resolved;
use super::state::{
    NANOS_PER_SECOND, PauseKind, Phase, State, Step, TargetRecord, backlog_bits, check_references,
    next_point,
};
use crate::{Health, LaunchStatus, LifeCycle, TargetState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Server(u32),
    Launch(u32),
    Boot(u32),
}

/// The state and the indexes rebuilt from it.
#[derive(Debug)]
pub(crate) struct Model {
    pub s: State,
    pub by_name: HashMap<String, u32>,
    /// (attained bits at which it happens, server) for every sending server.
    pub milestones: BTreeSet<(u128, u32)>,
    pub timers: BTreeSet<(i64, Timer)>,
    pub active_jobs: BTreeSet<u32>,
    pub servers_in_active_jobs: usize,
}

impl Model {
    pub fn empty(config: Resolved, origin: Timestamp) -> Model {
        Model {
            s: State {
                config,
                origin,
                now: 0,
                anchor: 0,
                attained_bits: 0,
                servers: Vec::new(),
                jobs: Vec::new(),
                targets: Vec::new(),
                actions: Vec::new(),
            },
            by_name: HashMap::new(),
            milestones: BTreeSet::new(),
            timers: BTreeSet::new(),
            active_jobs: BTreeSet::new(),
            servers_in_active_jobs: 0,
        }
    }

    /// Checks that every index in the state points somewhere, then builds the indexes.
    pub fn from_state(s: State) -> Result<Model, String> {
        check_references(&s)?;
        let mut model = Model::empty(s.config.clone(), s.origin);
        model.s = s;
        for (i, server) in (0u32..).zip(&model.s.servers) {
            if model.by_name.insert(server.name.clone(), i).is_some() {
                return Err(format!("server name {} appears twice", server.name));
            }
            match server.phase {
                Phase::Initiating { until }
                | Phase::Paused { until, .. }
                | Phase::Snapshot { until } => {
                    model.timers.insert((until, Timer::Server(i)));
                }
                Phase::Sending {
                    step,
                    start_bits,
                    size_bits,
                } => {
                    let point = next_point(server, step, size_bits);
                    model
                        .milestones
                        .insert((start_bits.saturating_add(point), i));
                }
                Phase::Continuous { .. } | Phase::Stopped { .. } => {}
            }
        }
        for (j, job) in (0u32..).zip(&model.s.jobs) {
            if !job.completed {
                model.active_jobs.insert(j);
                model.servers_in_active_jobs += job.slots.len();
                model.timers.insert((job.due, Timer::Launch(j)));
            }
        }
        for (k, target) in (0u32..).zip(&model.s.targets) {
            if target.state == TargetState::Running && target.health == Health::Initializing {
                model.timers.insert((target.boot_due, Timer::Boot(k)));
            }
        }
        Ok(model)
    }

    /// Model time of a clock reading, never before the model's own time.
    pub fn model_time(&self, at: Timestamp) -> i64 {
        let since_origin = at.as_nanosecond() - self.s.origin.as_nanosecond();
        i64::try_from(since_origin)
            .unwrap_or(if since_origin < 0 { i64::MIN } else { i64::MAX })
            .max(self.s.now)
    }

    pub fn timestamp(&self, t: i64) -> Timestamp {
        let at = self.s.origin.as_nanosecond() + i128::from(t);
        Timestamp::from_nanosecond(at).unwrap_or(if t < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
    }

    /// Processes every event up to `to`; true when at least one happened.
    pub fn advance(&mut self, to: i64) -> bool {
        let to = to.max(self.s.now);
        let mut changed = false;
        loop {
            let milestone_at = self.next_milestone_time();
            let timer_at = self.timers.first().map(|(t, _)| *t);
            let Some(t) = [milestone_at, timer_at].into_iter().flatten().min() else {
                break;
            };
            if t > to {
                break;
            }
            let t = t.max(self.s.anchor);
            self.anchor_at(t);
            if milestone_at.is_some_and(|m| m <= t) {
                self.reach_milestones(t);
            }
            while let Some(&(at, timer)) = self.timers.first() {
                if at > t {
                    break;
                }
                self.timers.pop_first();
                self.fire(timer, t);
            }
            changed = true;
        }
        self.s.now = to;
        changed
    }

    /// Fixes the attained bits at `t` (the pool is about to change).
    pub fn anchor_at(&mut self, t: i64) {
        if t <= self.s.anchor {
            return;
        }
        self.s.attained_bits = self.attained_at(t);
        self.s.anchor = t;
    }

    /// Bits attained by every sending server from the origin to `t` (after the anchor).
    pub fn attained_at(&self, t: i64) -> u128 {
        let pool = self.milestones.len() as u128;
        let bandwidth = u128::from(self.s.config.bandwidth_bits_per_second);
        if pool == 0 || t <= self.s.anchor || self.s.config.unlimited_bandwidth() {
            return self.s.attained_bits;
        }
        let elapsed = t.abs_diff(self.s.anchor) as u128;
        // elapsed < 2^64 and bandwidth < 2^64: the product fits.
        let per_server = elapsed * bandwidth / (NANOS_PER_SECOND as u128 * pool);
        self.s.attained_bits.saturating_add(per_server)
    }

    fn next_milestone_time(&self) -> Option<i64> {
        let &(target, _) = self.milestones.first()?;
        let anchor = self.s.anchor;
        if target <= self.s.attained_bits || self.s.config.unlimited_bandwidth() {
            return Some(anchor);
        }
        let bandwidth = u128::from(self.s.config.bandwidth_bits_per_second);
        if bandwidth == 0 {
            return None;
        }
        let pool = self.milestones.len() as u128;
        let needed = (target - self.s.attained_bits)
            .checked_mul(NANOS_PER_SECOND as u128)?
            .checked_mul(pool)?;
        let wait = i64::try_from(needed.div_ceil(bandwidth)).ok()?;
        anchor.checked_add(wait)
    }

    fn reach_milestones(&mut self, t: i64) {
        if let Some(&(first, _)) = self.milestones.first() {
            // Rounding never leaves the first milestone unreached at its own time.
            self.s.attained_bits = self.s.attained_bits.max(first);
        }
        while let Some(&(target, i)) = self.milestones.first() {
            if target > self.s.attained_bits {
                break;
            }
            self.milestones.pop_first();
            self.reach_milestone(i, target, t);
        }
    }

    fn reach_milestone(&mut self, i: u32, target: u128, t: i64) {
        let config_snapshot_ns = self.s.config.snapshot_ns;
        let Some(server) = self.s.servers.get_mut(i as usize) else {
            return;
        };
        let Phase::Sending {
            step,
            start_bits,
            size_bits,
        } = server.phase
        else {
            return;
        };
        let point = target.saturating_sub(start_bits);
        if step == Step::InitialSync {
            for kind in [PauseKind::Stalled, PauseKind::Disconnected] {
                let pending = match kind {
                    PauseKind::Stalled => &mut server.stall,
                    PauseKind::Disconnected => &mut server.disconnect,
                };
                if let Some(pause) = pending.filter(|p| p.after_bits == point) {
                    *pending = None;
                    let until = t.saturating_add(pause.lasts_ns);
                    server.phase = Phase::Paused {
                        step,
                        kind,
                        progress_bits: point,
                        size_bits,
                        until,
                    };
                    self.timers.insert((until, Timer::Server(i)));
                    return;
                }
            }
        }
        if point < size_bits {
            // A milestone that matches no pause (only a damaged state file can make
            // one): drop the pauses it passed and go on, always to a later milestone.
            for pending in [&mut server.stall, &mut server.disconnect] {
                if pending.is_some_and(|p| p.after_bits <= point) {
                    *pending = None;
                }
            }
            let next = start_bits.saturating_add(next_point(server, step, size_bits));
            if next > target {
                self.milestones.insert((next, i));
                return;
            }
        }
        let backlog_bits = match step {
            Step::InitialSync => backlog_bits(server, t),
            Step::Backlog => 0,
        };
        if backlog_bits > 0 {
            server.phase = Phase::Sending {
                step: Step::Backlog,
                start_bits: target,
                size_bits: backlog_bits,
            };
            self.milestones
                .insert((target.saturating_add(backlog_bits), i));
        } else {
            let until = t.saturating_add(config_snapshot_ns);
            server.phase = Phase::Snapshot { until };
            self.timers.insert((until, Timer::Server(i)));
        }
    }

    fn fire(&mut self, timer: Timer, t: i64) {
        match timer {
            Timer::Server(i) => self.server_timer(i, t),
            Timer::Launch(j) => self.launch_done(j, t),
            Timer::Boot(k) => self.boot_done(k, t),
        }
    }

    fn server_timer(&mut self, i: u32, t: i64) {
        let attained = self.s.attained_bits;
        let Some(server) = self.s.servers.get_mut(i as usize) else {
            return;
        };
        match server.phase {
            Phase::Initiating { until } if until <= t => {
                server.sync_started_at = Some(t);
                let size_bits = u128::from(server.total_bytes) * 8;
                self.start_sending(i, Step::InitialSync, attained, size_bits);
            }
            Phase::Paused {
                step,
                progress_bits,
                size_bits,
                until,
                ..
            } if until <= t => {
                let start = attained.saturating_sub(progress_bits);
                self.start_sending(i, step, start, size_bits);
            }
            Phase::Snapshot { until } if until <= t => {
                server.phase = Phase::Continuous { since: t };
                if server.life_cycle == LifeCycle::NotReady {
                    server.life_cycle = LifeCycle::ReadyForTest;
                }
            }
            // A timer of a phase the server has left.
            _ => {}
        }
    }

    fn start_sending(&mut self, i: u32, step: Step, start_bits: u128, size_bits: u128) {
        let Some(server) = self.s.servers.get_mut(i as usize) else {
            return;
        };
        server.phase = Phase::Sending {
            step,
            start_bits,
            size_bits,
        };
        let point = next_point(server, step, size_bits);
        self.milestones
            .insert((start_bits.saturating_add(point), i));
    }

    /// Takes the server out of replication (finalize, disconnect), keeping what it sent.
    pub fn stop_replication(&mut self, i: u32, t: i64) {
        self.anchor_at(t);
        let attained = self.s.attained_bits;
        let Some(server) = self.s.servers.get_mut(i as usize) else {
            return;
        };
        let sent_bits = match server.phase {
            Phase::Initiating { .. } => 0,
            Phase::Sending {
                step: Step::InitialSync,
                start_bits,
                size_bits,
            } => {
                let point = next_point(server, Step::InitialSync, size_bits);
                self.milestones
                    .remove(&(start_bits.saturating_add(point), i));
                attained.saturating_sub(start_bits).min(size_bits)
            }
            Phase::Sending {
                step: Step::Backlog,
                start_bits,
                size_bits,
            } => {
                self.milestones
                    .remove(&(start_bits.saturating_add(size_bits), i));
                u128::from(server.total_bytes) * 8
            }
            Phase::Paused {
                step: Step::InitialSync,
                progress_bits,
                ..
            } => progress_bits,
            Phase::Paused { .. } | Phase::Snapshot { .. } | Phase::Continuous { .. } => {
                u128::from(server.total_bytes) * 8
            }
            Phase::Stopped { .. } => return,
        };
        server.phase = Phase::Stopped {
            replicated_bytes: u64::try_from(sent_bits / 8).unwrap_or(u64::MAX),
        };
    }

    fn launch_done(&mut self, j: u32, t: i64) {
        let boot_ns = self.s.config.boot_ns;
        let Some(job) = self.s.jobs.get_mut(j as usize) else {
            return;
        };
        if job.completed || job.due > t {
            return;
        }
        for slot in &mut job.slots {
            if slot.status != LaunchStatus::InProgress {
                continue;
            }
            let k = u32::try_from(self.s.targets.len()).unwrap_or(u32::MAX);
            let boots_impaired = slot.impaired_boot;
            let boot_due = t.saturating_add(boot_ns);
            self.s.targets.push(TargetRecord {
                source: slot.source,
                kind: job.kind,
                job: j,
                state: TargetState::Running,
                health: Health::Initializing,
                launched_at: t,
                boot_due,
                boots_impaired,
            });
            self.timers.insert((boot_due, Timer::Boot(k)));
            slot.status = LaunchStatus::Launched;
            slot.target = Some(k);
            slot.message = None;
        }
        self.complete_job_if_done(j);
    }

    fn boot_done(&mut self, k: u32, t: i64) {
        let Some(target) = self.s.targets.get_mut(k as usize) else {
            return;
        };
        if target.state == TargetState::Running
            && target.health == Health::Initializing
            && target.boot_due <= t
        {
            target.health = if target.boots_impaired {
                Health::Impaired
            } else {
                Health::Ok
            };
        }
    }

    pub fn complete_job_if_done(&mut self, j: u32) {
        let Some(job) = self.s.jobs.get_mut(j as usize) else {
            return;
        };
        let done = job.slots.iter().all(|slot| {
            matches!(
                slot.status,
                LaunchStatus::Launched | LaunchStatus::Failed | LaunchStatus::Terminated
            )
        });
        if done && !job.completed {
            job.completed = true;
            self.active_jobs.remove(&j);
            self.servers_in_active_jobs =
                self.servers_in_active_jobs.saturating_sub(job.slots.len());
        }
    }

    /// Uses another configuration from the model's current time on.
    pub fn reconfigure(&mut self, config: Resolved) {
        let now = self.s.now;
        self.anchor_at(now);
        self.s.config = config;
    }
}
