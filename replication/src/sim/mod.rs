//! The rehearsal engine: a deterministic model of replication, launches and failures,
//! for rehearsals of whole waves in seconds, estimates, load tests of the orchestrator
//! and crash tests. Everything it shows is a rehearsal: its ids start with `sim-`, its
//! targets answer under `rehearsal.invalid`.
//!
//! Time moves only through the [`Clock`]: every call first advances the model to the
//! clock's time (never backwards), event by event, in closed form (see `model.rs`). The
//! same seed and the same calls at the same clock times give the same answers.
//!
//! # Rules
//!
//! - Registering creates the server (`initiating`, `not_ready`); a known name returns
//!   the server as it is. After `initiate_seconds`, `initial_sync`: used bytes /
//!   compression are sent, the bandwidth shared equally by the servers sending
//!   (initial sync or backlog). A server chosen for a stall (or a disconnect) pauses
//!   once, at 5 to 95 % of its initial sync, for 10 to 60 (5 to 30) minutes, and resumes
//!   where it was. Then `backlog`: the changes written since the initial sync started
//!   (change rate / compression x its duration, at most the initial sync's bytes), at
//!   the fair share; then `creating_snapshot` for `snapshot_seconds`; then `continuous`
//!   (lag 5 s) and `ready_for_test`.
//! - A launch needs continuous replication, at most `max_servers_per_job` servers,
//!   fewer than `max_concurrent_jobs` running jobs and at most
//!   `max_servers_in_active_jobs` servers in running jobs (else `QuotaExceeded`). A test
//!   launch needs `ready_for_test`, `testing` or `ready_for_cutover`, replaces the
//!   server's test targets and launches, and sets `testing`. A cutover launch needs
//!   `ready_for_cutover` and no cutover target or launch still live, and sets
//!   `cutting_over`. Targets run `launch_seconds` after the job starts and are healthy
//!   `boot_seconds` later, impaired on the first test launch of a server chosen for a
//!   boot failure. A job completes when every server launched or was terminated.
//! - Terminating cutover targets is refused while the server is `cutting_over` (as MGN
//!   does) and after finalize (`cutover`, `archived`). A rollback first changes the life
//!   cycle from `cutting_over` back to `ready_for_cutover`, then terminates. Terminating
//!   also stops launches of that kind still in progress.
//! - Finalize needs `cutting_over` and a running, healthy target from the server's latest
//!   cutover launch; it sets `cutover` and stops replication (shown as `disconnected`).
//! - `change_life_cycle`: `ready_for_test`/`testing` -> `ready_for_cutover` and
//!   `testing`/`ready_for_cutover` -> `ready_for_test` with continuous replication;
//!   `cutting_over` -> `ready_for_cutover` (rollback); any state but `cutting_over`,
//!   `disconnected`, `archived` -> `disconnected` (stops replication). Archive: from
//!   `cutover` or `disconnected`. Anything else, including a change to the state the
//!   server is in, is a `Conflict` that says why.
//! - Recovery points of a server in continuous replication: on the UTC grid, every 10
//!   minutes for the last hour, hourly for the last day, daily for 30 days, none before
//!   it became continuous.
//!
//! Durable mode ([`SimEngine::open`]) keeps the state in a file and a journal
//! (see `persist.rs`). Every acting call is on disk before it returns.

mod clock;
mod config;
mod fate;
mod model;
mod ops;
mod persist;
mod state;
mod view;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use clock::ManualClock;
pub use config::SimConfig;

use model::Model;
use ops::Call;
use persist::Store;
use view::{parse_job, parse_source, parse_target};

use crate::{
    Clock, EngineError, EngineResult, ErrorKind, Job, JobId, LaunchKind, LifeCycle, PointInTime,
    Quotas, RecoveryPoint, ReplicationEngine, SourceId, SourceServer, SourceSpec, Target, TargetId,
};

/// One acting call that succeeded: what the crash tests check for repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub at: Timestamp,
    /// `register`, `start_launch`, `terminate_targets`, `finalize_cutover`,
    /// `change_life_cycle` or `archive`.
    pub action: String,
    /// The source server's name.
    pub source: String,
    pub detail: String,
}

/// The rehearsal engine. See the module documentation for its rules.
pub struct SimEngine {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

struct Inner {
    model: Model,
    store: Option<Store>,
    calls: BTreeMap<String, u64>,
    /// Set when the state could not be written: the engine refuses every call after.
    broken: Option<String>,
}

impl SimEngine {
    /// An engine in memory, starting empty at the clock's time.
    pub fn new(config: SimConfig, clock: Arc<dyn Clock>) -> SimEngine {
        let model = Model::empty(config.resolve(), clock.now());
        SimEngine::with(model, None, clock)
    }

    /// A durable engine: reads `state_file` (and its journal) back, or starts empty
    /// when it does not exist. A damaged file is an error that names it. The
    /// configuration applies from the state's time on; what happened keeps its own.
    pub fn open(
        config: SimConfig,
        clock: Arc<dyn Clock>,
        state_file: &Path,
    ) -> EngineResult<SimEngine> {
        let (store, model) = Store::open(state_file, config.resolve(), clock.now())?;
        Ok(SimEngine::with(model, Some(store), clock))
    }

    fn with(model: Model, store: Option<Store>, clock: Arc<dyn Clock>) -> SimEngine {
        SimEngine {
            clock,
            inner: Mutex::new(Inner {
                model,
                store,
                calls: BTreeMap::new(),
                broken: None,
            }),
        }
    }

    /// How many times each method of the interface was called since this engine was
    /// created or opened.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.lock().calls.clone()
    }

    /// Every acting call that ever succeeded on this state, oldest first.
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.lock().model.s.actions.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, method: &str) {
        *self.lock().calls.entry(method.to_owned()).or_default() += 1;
    }

    /// Starts a call: counts it, refuses it if the engine is broken, advances the
    /// model to the clock. Returns the model time and whether an event happened.
    fn begin(&self, method: &str) -> EngineResult<(MutexGuard<'_, Inner>, i64, bool)> {
        let mut inner = self.lock();
        *inner.calls.entry(method.to_owned()).or_default() += 1;
        if let Some(broken) = &inner.broken {
            return Err(EngineError::new(ErrorKind::Unavailable, broken.clone()));
        }
        let now = inner.model.model_time(self.clock.now());
        let moved = inner.model.advance(now);
        Ok((inner, now, moved))
    }

    fn read<T>(
        &self,
        method: &str,
        read: impl FnOnce(&Model) -> EngineResult<T>,
    ) -> EngineResult<T> {
        let (mut inner, now, moved) = self.begin(method)?;
        if moved {
            inner.persist(now, &Call::Advance, false)?;
        }
        read(&inner.model)
    }

    /// Runs an acting call built from the model; then `answer` reads the result (the
    /// server or job the call created, or the one `build` found already there).
    fn act<T>(
        &self,
        method: &str,
        build: impl FnOnce(&Model) -> EngineResult<Prepared>,
        answer: impl FnOnce(&Model, Option<u32>) -> EngineResult<T>,
    ) -> EngineResult<T> {
        let (mut inner, now, moved) = self.begin(method)?;
        let applied = build(&inner.model).and_then(|prepared| match prepared {
            Prepared::Act(call) => {
                let created = inner.model.apply(&call)?;
                Ok((Some(call), created))
            }
            Prepared::Known(found) => Ok((None, Some(found))),
        });
        match applied {
            Ok((Some(call), created)) => {
                // Events due at once (zero durations) happen before the call returns.
                inner.model.advance(now);
                inner.persist(now, &call, true)?;
                answer(&inner.model, created)
            }
            Ok((None, found)) => {
                if moved {
                    inner.persist(now, &Call::Advance, false)?;
                }
                answer(&inner.model, found)
            }
            Err(refused) => {
                if moved {
                    inner.persist(now, &Call::Advance, false)?;
                }
                Err(refused)
            }
        }
    }
}

/// What an acting call turns out to be once the model is read.
enum Prepared {
    Act(Call),
    /// Nothing to do: the server (by index) is already there.
    Known(u32),
}

impl Inner {
    fn persist(&mut self, at: i64, call: &Call, sync: bool) -> EngineResult<()> {
        let Some(store) = &mut self.store else {
            return Ok(());
        };
        match store.append(&self.model, at, call, sync) {
            Ok(()) => Ok(()),
            Err(detail) => {
                let message =
                    format!("the sim state could not be written, reopen the engine: {detail}");
                self.broken = Some(message.clone());
                Err(EngineError::new(ErrorKind::Unavailable, message))
            }
        }
    }
}

fn source_index(model: &Model, id: &SourceId) -> EngineResult<u32> {
    parse_source(id)
        .filter(|&i| model.server(i).is_some())
        .ok_or_else(|| not_found(format!("no source server {id}")))
}

fn not_found(message: String) -> EngineError {
    EngineError::new(ErrorKind::NotFound, message)
}

fn created(created: Option<u32>) -> EngineResult<u32> {
    created.ok_or_else(|| EngineError::new(ErrorKind::Unavailable, "the sim engine lost a result"))
}

/// What a registration sends: the server's bytes and change rate, after compression.
fn registration(model: &Model, spec: &SourceSpec) -> EngineResult<Call> {
    if spec.name.trim().is_empty() {
        return Err(EngineError::new(
            ErrorKind::Invalid,
            "a source server needs a name",
        ));
    }
    let rate = spec.change_rate_bytes_per_second;
    if !rate.is_finite() || rate < 0.0 {
        return Err(EngineError::new(
            ErrorKind::Invalid,
            format!(
                "source server {}: the change rate must be a number of bytes per second, 0 or more, not {rate}",
                spec.name
            ),
        ));
    }
    let used = spec
        .disks
        .iter()
        .fold(0u64, |sum, disk| sum.saturating_add(disk.used_bytes));
    let compression_ppm = model.s.config.compression_ppm.max(1) as f64;
    Ok(Call::Register {
        name: spec.name.clone(),
        total_bytes: model.s.config.compressed(used),
        // `as` saturates.
        change_millibytes_per_second: (rate * 1e9 / compression_ppm).round() as u64,
    })
}

#[async_trait]
impl ReplicationEngine for SimEngine {
    fn name(&self) -> &'static str {
        self.count("name");
        "sim"
    }

    fn is_rehearsal(&self) -> bool {
        self.count("is_rehearsal");
        true
    }

    fn launch_gather(&self) -> std::time::Duration {
        // Every call is answered from memory, without waiting.
        std::time::Duration::ZERO
    }

    fn quotas(&self) -> Quotas {
        self.count("quotas");
        self.lock().model.s.config.quotas
    }

    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>> {
        self.read("find_source", |model| {
            Ok(model
                .by_name
                .get(name)
                .and_then(|&i| model.describe_source(i)))
        })
    }

    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer> {
        self.act(
            "register_source",
            |model| match model.by_name.get(&spec.name) {
                Some(&i) => Ok(Prepared::Known(i)),
                None => registration(model, spec).map(Prepared::Act),
            },
            |model, index| {
                created(index).and_then(|i| {
                    model
                        .describe_source(i)
                        .ok_or_else(|| not_found(format!("no source server named {}", spec.name)))
                })
            },
        )
    }

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer> {
        self.read("describe_source", |model| {
            let i = source_index(model, id)?;
            model
                .describe_source(i)
                .ok_or_else(|| not_found(format!("no source server {id}")))
        })
    }

    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job> {
        self.act(
            "start_launch",
            |model| {
                let sources = sources
                    .iter()
                    .map(|id| source_index(model, id))
                    .collect::<EngineResult<Vec<u32>>>()?;
                Ok(Prepared::Act(Call::StartLaunch {
                    kind,
                    sources,
                    point: point.clone(),
                }))
            },
            |model, created_index| {
                let j = created(created_index)?;
                model
                    .describe_job(j)
                    .ok_or_else(|| not_found("the launch job is missing".to_owned()))
            },
        )
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        self.read("describe_job", |model| {
            parse_job(id)
                .and_then(|j| model.describe_job(j))
                .ok_or_else(|| not_found(format!("no launch job {id}")))
        })
    }

    async fn describe_job_for(&self, id: &JobId, source: &SourceId) -> EngineResult<Job> {
        self.read("describe_job", |model| {
            let i = source_index(model, source)?;
            parse_job(id)
                .and_then(|j| model.describe_job_of(j, Some(i)))
                .ok_or_else(|| not_found(format!("no launch job {id}")))
        })
    }

    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>> {
        self.read("jobs_for_source", |model| {
            let i = source_index(model, id)?;
            let jobs = model
                .server(i)
                .map(|server| server.jobs.as_slice())
                .unwrap_or_default();
            Ok(jobs
                .iter()
                .filter_map(|&j| model.describe_job_of(j, Some(i)))
                .collect())
        })
    }

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target> {
        self.read("describe_target", |model| {
            parse_target(id)
                .and_then(|k| model.describe_target(k))
                .ok_or_else(|| not_found(format!("no target {id}")))
        })
    }

    async fn terminate_targets(&self, id: &SourceId, kind: LaunchKind) -> EngineResult<()> {
        self.act(
            "terminate_targets",
            |model| {
                let source = source_index(model, id)?;
                Ok(Prepared::Act(Call::TerminateTargets { source, kind }))
            },
            |_, _| Ok(()),
        )
    }

    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()> {
        self.act(
            "finalize_cutover",
            |model| {
                let source = source_index(model, id)?;
                Ok(Prepared::Act(Call::FinalizeCutover { source }))
            },
            |_, _| Ok(()),
        )
    }

    async fn change_life_cycle(&self, id: &SourceId, state: LifeCycle) -> EngineResult<()> {
        self.act(
            "change_life_cycle",
            |model| {
                let source = source_index(model, id)?;
                Ok(Prepared::Act(Call::ChangeLifeCycle { source, state }))
            },
            |_, _| Ok(()),
        )
    }

    async fn archive(&self, id: &SourceId) -> EngineResult<()> {
        self.act(
            "archive",
            |model| {
                let source = source_index(model, id)?;
                Ok(Prepared::Act(Call::Archive { source }))
            },
            |_, _| Ok(()),
        )
    }

    async fn recovery_points(&self, id: &SourceId) -> EngineResult<Vec<RecoveryPoint>> {
        self.read("recovery_points", |model| {
            let i = source_index(model, id)?;
            Ok(model.recovery_points(i))
        })
    }
}
