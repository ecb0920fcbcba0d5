//! The local engine, the embedded default: real block replication on one machine or a
//! lab. An agent on each source server ([`agent`], the `wavelift-agent` binary) sends its
//! disks over TLS to the replication server ([`server`]) that runs inside Wavelift and
//! keeps them in a content-addressed chunk store ([`store`]) as recovery points
//! ([`volume`]); a launch materializes a point as disk images and checks them
//! ([`launch`]). The engine's own records (sources, jobs, targets) are one JSON file in
//! the staging folder, rewritten durably after each call that acts.

pub mod agent;
pub mod control;
mod digests;
mod direct;
mod failback;
pub mod launch;
pub mod mapped;
pub mod proto;
pub mod restore;
pub mod server;
pub mod store;
pub mod tls;
pub mod volume;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::rules::{self, conflict, health_name};
use crate::{
    AgentInstall, Clock, EngineError, EngineResult, ErrorKind, Health, Job, JobId, JobServer,
    JobStatus, LaunchKind, LaunchStatus, LifeCycle, PointInTime, Quotas, RecoveryPoint,
    Replication, ReplicationEngine, ReplicationState, SourceId, SourceServer, SourceSpec, Target,
    TargetId, TargetState,
};
pub use launch::ImageFormat;
use server::{ReplicationServer, lock};
pub use volume::Retention;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub listen: SocketAddr,
    /// The address agents connect to (default: `listen`, with 127.0.0.1 for 0.0.0.0).
    pub advertise: Option<String>,
    pub staging_dir: PathBuf,
    pub target_dir: PathBuf,
    /// The `wavelift-agent` binary that agent installs copy or start.
    pub agent_binary: PathBuf,
    pub image_format: ImageFormat,
    /// A command run on each launched copy (`$WAVELIFT_IMAGE`); a failure impairs it.
    pub boot_check: Option<String>,
    /// A command run once after a launch's check passed.
    pub post_launch: Option<String>,
    pub retention: Retention,
    pub quotas: Quotas,
    /// How long a launch waits for the agent's final sync.
    pub final_sync_timeout: Duration,
    /// An agent that cannot reach the server for this long exits.
    pub agent_give_up_after: Duration,
    /// Where the agent is installed on a source reached over SSH (one folder per
    /// source under it); `None`: /var/lib/wavelift-agent as root, else
    /// ~/.wavelift-agent.
    pub remote_agent_dir: Option<String>,
}

impl LocalConfig {
    pub fn new(
        listen: SocketAddr,
        staging_dir: PathBuf,
        target_dir: PathBuf,
        agent_binary: PathBuf,
    ) -> LocalConfig {
        LocalConfig {
            listen,
            advertise: None,
            staging_dir,
            target_dir,
            agent_binary,
            image_format: ImageFormat::Raw,
            boot_check: None,
            post_launch: None,
            retention: Retention::default(),
            quotas: Quotas {
                max_servers_per_job: 20,
                max_concurrent_jobs: 4,
                max_servers_in_active_jobs: 40,
            },
            final_sync_timeout: Duration::from_secs(120),
            agent_give_up_after: Duration::from_secs(24 * 3600),
            remote_agent_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceRecord {
    id: SourceId,
    name: String,
    hostname: Option<String>,
    devices: Vec<String>,
    token_sha256: Option<String>,
    life_cycle: LifeCycle,
    created_at: Timestamp,
    /// A failback in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failback: Option<failback::FailbackRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    job: Job,
    point: PointInTime,
    /// The recovery point each server's launch uses, once resolved.
    points: BTreeMap<SourceId, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetRecord {
    target: Target,
    job: JobId,
    images: Vec<PathBuf>,
    point: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    sources: Vec<SourceRecord>,
    jobs: Vec<JobRecord>,
    targets: Vec<TargetRecord>,
}

struct Inner {
    config: LocalConfig,
    server: ReplicationServer,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    running: AtomicUsize,
    /// Reverse agents (failback) this process started, by source id.
    children: Mutex<std::collections::HashMap<String, std::process::Child>>,
    /// The control port other commands of this machine call the engine on; ends with
    /// the engine.
    control: Mutex<Option<control::ControlServer>>,
}

/// The engine gone, its server stops: nothing answers agents for an engine no longer
/// there (and the folder's lock goes once the server's sessions end).
impl Drop for Inner {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

#[derive(Clone)]
pub struct LocalEngine {
    inner: Arc<Inner>,
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorKind::Unavailable, format!("{what}: {err}"))
}

fn not_found(what: String) -> EngineError {
    EngineError::new(ErrorKind::NotFound, what)
}

impl LocalEngine {
    /// Opens the staging folder, starts the replication server and resumes the launches
    /// a stopped process left unfinished. Needs a Tokio runtime.
    pub async fn start(config: LocalConfig, clock: Arc<dyn Clock>) -> std::io::Result<LocalEngine> {
        let server = ReplicationServer::start(
            &config.staging_dir,
            config.listen,
            Arc::clone(&clock),
            config.retention.clone(),
        )
        .await?;
        let path = config.staging_dir.join("engine.json");
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                server.shutdown();
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not read: {err}", path.display()),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(err) => {
                server.shutdown();
                return Err(err);
            }
        };
        for source in &state.sources {
            if let Some(hash) = &source.token_sha256 {
                server.allow(&source.id.0, hash, ended(source.life_cycle));
            }
            if let Some(failback) = &source.failback {
                failback.allow(&server);
            }
        }
        let unfinished: Vec<JobId> = state
            .jobs
            .iter()
            .filter(|j| j.job.status != JobStatus::Completed)
            .map(|j| j.job.id.clone())
            .collect();
        let engine = LocalEngine {
            inner: Arc::new(Inner {
                config,
                server,
                clock,
                state: Mutex::new(state),
                running: AtomicUsize::new(0),
                children: Mutex::new(std::collections::HashMap::new()),
                control: Mutex::new(None),
            }),
        };
        for job in unfinished {
            engine.spawn_job(job);
        }
        // The engine answers other processes only once it holds the replication port,
        // so a staging folder has one owner; the server holds a weak handle and stops
        // answering when the engine is gone.
        let weak = Arc::downgrade(&engine.inner);
        // On an error the engine is dropped, and its server stops with it.
        let served = control::ControlServer::start(
            &engine.inner.config.staging_dir,
            Arc::clone(&engine.inner.clock),
            move || {
                weak.upgrade()
                    .map(|inner| Arc::new(LocalEngine { inner }) as Arc<dyn ReplicationEngine>)
            },
        )
        .await?;
        *lock(&engine.inner.control) = Some(served);
        Ok(engine)
    }

    pub fn server(&self) -> &ReplicationServer {
        &self.inner.server
    }

    /// Stops the replication server (launches in progress finish).
    pub fn shutdown(&self) {
        self.inner.server.shutdown();
        lock(&self.inner.control).take();
    }

    /// Where agents reach the replication server.
    pub fn agent_address(&self) -> String {
        if let Some(advertise) = &self.inner.config.advertise {
            return advertise.clone();
        }
        let addr = self.inner.server.address;
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    }

    fn save(&self, state: &State) -> EngineResult<()> {
        let body =
            serde_json::to_vec_pretty(state).map_err(|err| unavailable("engine state", err))?;
        volume::write_durably(&self.inner.config.staging_dir.join("engine.json"), &body).map_err(
            |err| {
                unavailable(
                    "cannot record the engine's state (is the staging disk full?)",
                    err,
                )
            },
        )
    }

    fn label(record: &SourceRecord) -> String {
        format!("source server {} ({})", record.id, record.name)
    }

    fn replication(&self, record: &SourceRecord) -> (Replication, usize) {
        self.replication_of(&record.id.0, ended(record.life_cycle))
    }

    /// The replication of the replication server's source `id` (a source server's, or
    /// a failback's reverse replication); `ended`: over, whatever the agent says.
    fn replication_of(&self, id: &str, ended: bool) -> (Replication, usize) {
        let stats = self.inner.server.stats(id);
        let total: u64 = stats
            .disks
            .as_ref()
            .map_or(0, |d| d.iter().map(|d| d.size).sum());
        let status = stats.status.clone();
        let age = stats.status_age.map_or(0.0, |a| a.as_secs_f64());
        let state = if ended {
            ReplicationState::Disconnected
        } else if !stats.ever_connected {
            ReplicationState::Initiating
        } else if !stats.connected {
            ReplicationState::Disconnected
        } else if age > server::STALLED_AFTER.as_secs_f64() {
            ReplicationState::Stalled
        } else {
            status
                .as_ref()
                .map_or(ReplicationState::InitialSync, |s| s.state)
        };
        let replication = Replication {
            state,
            lag_seconds: status
                .as_ref()
                .and_then(|s| s.lag_seconds)
                .filter(|_| !stats.points.is_empty())
                .map(|lag| lag + age),
            backlog_bytes: status.as_ref().map_or(0, |s| s.backlog_bytes),
            replicated_bytes: status.as_ref().map_or(0, |s| s.scanned_bytes),
            total_bytes: total,
            // The first pass's rest at its current pace.
            eta_seconds: status
                .as_ref()
                .filter(|s| state == ReplicationState::InitialSync && s.scanned_bytes < total)
                .zip(stats.scanned_per_second.filter(|rate| *rate > 0.0))
                .map(|(s, rate)| (total - s.scanned_bytes) as f64 / rate),
            throughput_bytes_per_second: stats.wire_per_second,
            wire_bytes: Some(stats.bytes_on_wire),
        };
        (replication, stats.points.len())
    }

    fn view(&self, state: &mut State, index: usize) -> SourceServer {
        let (replication, points) = self.replication(&state.sources[index]);
        let record = &mut state.sources[index];
        // As MGN: ready for testing once the first sync is complete.
        if record.life_cycle == LifeCycle::NotReady && points > 0 {
            record.life_cycle = LifeCycle::ReadyForTest;
        }
        SourceServer {
            id: record.id.clone(),
            name: record.name.clone(),
            replication,
            life_cycle: record.life_cycle,
        }
    }

    /// The facts every agent template is rendered with: the source, the agent binary
    /// and its folder here, and the folder setting for sources reached over SSH.
    fn agent_facts(&self, id: &SourceId, name: &str) -> BTreeMap<String, serde_json::Value> {
        let config = &self.inner.config;
        let text = |s: String| serde_json::Value::String(s);
        let mut facts = BTreeMap::new();
        facts.insert("source".to_owned(), text(id.0.clone()));
        facts.insert("name".to_owned(), text(name.to_owned()));
        facts.insert(
            "agent".to_owned(),
            text(config.agent_binary.display().to_string()),
        );
        let dir = config.staging_dir.join("agents").join(&id.0);
        facts.insert("state_dir".to_owned(), text(dir.display().to_string()));
        facts.insert(
            "remote_dir".to_owned(),
            text(config.remote_agent_dir.clone().unwrap_or_default()),
        );
        facts
    }

    fn source_index(state: &State, id: &SourceId) -> EngineResult<usize> {
        state
            .sources
            .iter()
            .position(|s| &s.id == id)
            .ok_or_else(|| not_found(format!("no source server {id}")))
    }

    fn live_cutover(state: &State, id: &SourceId) -> Option<String> {
        for record in state
            .jobs
            .iter()
            .filter(|j| j.job.kind == LaunchKind::Cutover)
        {
            for slot in record.job.servers.iter().filter(|s| &s.source == id) {
                match (slot.status, &slot.target) {
                    (LaunchStatus::InProgress, _) => {
                        return Some(format!("launch in {}", record.job.id));
                    }
                    (LaunchStatus::Launched, Some(t)) => return Some(format!("target {t}")),
                    _ => {}
                }
            }
        }
        None
    }

    /// Terminates the source's targets and launches in progress of this kind.
    fn terminate_kind(
        &self,
        state: &mut State,
        id: &SourceId,
        kind: LaunchKind,
        why: &str,
    ) -> Vec<String> {
        let mut done = Vec::new();
        for record in state.jobs.iter_mut().filter(|j| j.job.kind == kind) {
            for slot in record.job.servers.iter_mut().filter(|s| &s.source == id) {
                if matches!(
                    slot.status,
                    LaunchStatus::InProgress | LaunchStatus::Launched
                ) {
                    if slot.status == LaunchStatus::InProgress {
                        done.push(format!("the launch in {}", record.job.id));
                    }
                    slot.status = LaunchStatus::Terminated;
                    slot.message = Some(format!("terminated: {why}"));
                }
            }
        }
        for target in state
            .targets
            .iter_mut()
            .filter(|t| &t.target.source == id && t.target.kind == kind)
        {
            if target.target.state != TargetState::Terminated {
                target.target.state = TargetState::Terminated;
                remove_images(&target.images);
                done.push(target.target.id.0.clone());
            }
        }
        done
    }

    fn spawn_job(&self, job: JobId) {
        let engine = self.clone();
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            engine.run_job(&job).await;
            engine.inner.running.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn run_job(&self, job_id: &JobId) {
        let (sources, point, kind) = {
            let state = lock(&self.inner.state);
            let Some(record) = state.jobs.iter().find(|j| &j.job.id == job_id) else {
                return;
            };
            let sources: Vec<SourceId> = record
                .job
                .servers
                .iter()
                .filter(|s| s.status == LaunchStatus::InProgress)
                .map(|s| s.source.clone())
                .collect();
            (sources, record.point.clone(), record.job.kind)
        };
        // The job's servers launch side by side, as a cloud's do: their final syncs wait
        // on their agents, their images on the disk.
        let mut launches = tokio::task::JoinSet::new();
        for source in sources {
            let engine = self.clone();
            let (job_id, point) = (job_id.clone(), point.clone());
            launches.spawn(async move {
                let outcome = engine.launch_one(&job_id, &source, &point, kind).await;
                engine.record_launch(&job_id, &source, kind, outcome);
            });
        }
        while launches.join_next().await.is_some() {}
        let mut state = lock(&self.inner.state);
        if let Some(record) = state.jobs.iter_mut().find(|j| &j.job.id == job_id) {
            record.job.status = JobStatus::Completed;
        }
        let _ = self.save(&state);
    }

    /// Records one server's launch in its job (and its target), unless it was
    /// terminated meanwhile, in which case what it made goes too.
    fn record_launch(
        &self,
        job_id: &JobId,
        source: &SourceId,
        kind: LaunchKind,
        outcome: Result<(launch::Launched, u64), String>,
    ) {
        let mut state = lock(&self.inner.state);
        let now = self.inner.clock.now();
        let next_target = TargetId(format!("t-{:06}", state.targets.len() + 1));
        let Some(record) = state.jobs.iter_mut().find(|j| &j.job.id == job_id) else {
            return;
        };
        let Some(slot) = record.job.servers.iter_mut().find(|s| &s.source == source) else {
            return;
        };
        if slot.status != LaunchStatus::InProgress {
            // Terminated meanwhile: what the launch made goes too.
            if let Ok((launched, _)) = &outcome {
                remove_images(&launched.images);
            }
            return;
        }
        match outcome {
            Ok((launched, seq)) => {
                slot.status = LaunchStatus::Launched;
                slot.target = Some(next_target.clone());
                slot.message = (launched.health != Health::Ok).then(|| launched.detail.clone());
                let address = launched.images.first().map(|p| p.display().to_string());
                state.targets.push(TargetRecord {
                    target: Target {
                        id: next_target,
                        source: source.clone(),
                        kind,
                        state: TargetState::Running,
                        health: launched.health,
                        address,
                        launched_at: now,
                        detail: Some(launched.detail),
                    },
                    job: job_id.clone(),
                    images: launched.images,
                    point: seq,
                });
            }
            Err(message) => {
                slot.status = LaunchStatus::Failed;
                slot.message = Some(message);
            }
        }
        let _ = self.save(&state);
    }

    /// One server's launch: the point (a final sync for the latest data), then the
    /// images and their check.
    async fn launch_one(
        &self,
        job_id: &JobId,
        source: &SourceId,
        point: &PointInTime,
        kind: LaunchKind,
    ) -> Result<(launch::Launched, u64), String> {
        let resolved = lock(&self.inner.state)
            .jobs
            .iter()
            .find(|j| &j.job.id == job_id)
            .and_then(|j| j.points.get(source).copied());
        let seq = match (resolved, point) {
            (Some(seq), _) => seq,
            (None, PointInTime::RecoveryPoint(id)) => {
                parse_point(id).ok_or_else(|| format!("no recovery point {id}"))?
            }
            (None, PointInTime::Latest) => {
                match self
                    .inner
                    .server
                    .barrier(&source.0, self.inner.config.final_sync_timeout)
                    .await
                {
                    Ok(point) => point.seq,
                    Err(why) if kind == LaunchKind::Test => {
                        let stats = self.inner.server.stats(&source.0);
                        match stats.points.last() {
                            Some(point) => point.seq,
                            None => return Err(format!("no recovery point to launch from: {why}")),
                        }
                    }
                    Err(why) => return Err(format!("the final sync failed: {why}")),
                }
            }
        };
        {
            let mut state = lock(&self.inner.state);
            if let Some(record) = state.jobs.iter_mut().find(|j| &j.job.id == job_id) {
                record.points.insert(source.clone(), seq);
            }
            let _ = self.save(&state);
        }
        let volume = self
            .inner
            .server
            .volume(&source.0)
            .map_err(|err| format!("cannot open the replicated disks: {err}"))?
            .ok_or_else(|| "nothing was replicated yet".to_owned())?;
        let name = lock(&self.inner.state)
            .sources
            .iter()
            .find(|s| &s.id == source)
            .map_or_else(|| source.0.clone(), |s| s.name.clone());
        let dir = self
            .inner
            .config
            .target_dir
            .join(&name)
            .join(format!("{kind}-{job_id}"));
        let engine = self.clone();
        // Retention keeps the point while the launch reads it.
        lock(&volume).pin(seq);
        tokio::task::spawn_blocking(move || {
            let config = &engine.inner.config;
            let launched = launch::launch(&launch::LaunchSpec {
                store: engine.inner.server.store(),
                volume: &volume,
                seq,
                dir: &dir,
                format: config.image_format,
                boot_check: config.boot_check.as_deref(),
                post_launch: config.post_launch.as_deref(),
            });
            lock(&volume).unpin(seq);
            launched.map(|launched| (launched, seq))
        })
        .await
        .map_err(|err| format!("the launch stopped: {err}"))?
    }
}

/// Removes a terminated copy's images and the launch's folder they were in.
fn remove_images(images: &[PathBuf]) {
    for image in images {
        let _ = std::fs::remove_file(image);
    }
    if let Some(dir) = images.first().and_then(|i| i.parent()) {
        let _ = std::fs::remove_dir(dir);
    }
}

fn ended(life_cycle: LifeCycle) -> bool {
    matches!(
        life_cycle,
        LifeCycle::Cutover | LifeCycle::Archived | LifeCycle::Disconnected
    )
}

fn parse_point(id: &str) -> Option<u64> {
    id.strip_prefix("rp-")?.parse().ok()
}

pub(crate) fn random_token() -> EngineResult<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| unavailable("no randomness for the agent's token", err))?;
    Ok(proto::hex(&bytes))
}

#[async_trait]
impl ReplicationEngine for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn is_rehearsal(&self) -> bool {
        false
    }

    fn quotas(&self) -> Quotas {
        self.inner.config.quotas
    }

    fn busy(&self) -> bool {
        if self.inner.running.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let state = lock(&self.inner.state);
        let server = &self.inner.server;
        state
            .sources
            .iter()
            .filter(|s| !ended(s.life_cycle))
            .any(|s| {
                server.syncing(&s.id.0)
                    || (s.token_sha256.is_some()
                        && server.reconnecting(&s.id.0, server::RECONNECT_GRACE))
            })
    }

    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>> {
        let mut state = lock(&self.inner.state);
        let Some(index) = state.sources.iter().position(|s| s.name == name) else {
            return Ok(None);
        };
        Ok(Some(self.view(&mut state, index)))
    }

    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer> {
        let mut state = lock(&self.inner.state);
        if let Some(index) = state.sources.iter().position(|s| s.name == spec.name) {
            return Ok(self.view(&mut state, index));
        }
        if spec.disks.is_empty() {
            return Err(EngineError::new(
                ErrorKind::Invalid,
                format!(
                    "{} has no disks to replicate: list them (their devices or image files) under the server's disks",
                    spec.name
                ),
            ));
        }
        let id = SourceId(format!("s-{:06}", state.sources.len() + 1));
        state.sources.push(SourceRecord {
            id,
            name: spec.name.clone(),
            hostname: spec.hostname.clone(),
            devices: spec.disks.iter().map(|d| d.device.clone()).collect(),
            token_sha256: None,
            life_cycle: LifeCycle::NotReady,
            created_at: self.inner.clock.now(),
            failback: None,
        });
        self.save(&state)?;
        let index = state.sources.len() - 1;
        Ok(self.view(&mut state, index))
    }

    async fn agent_install(&self, id: &SourceId) -> EngineResult<Option<AgentInstall>> {
        let token = random_token()?;
        let hash = server::token_hash(&token);
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        let record = &mut state.sources[index];
        let returning = record.failback.as_ref().is_some_and(|f| f.restored());
        if ended(record.life_cycle) && !returning {
            return Err(conflict(format!(
                "{} is {}: its replication has ended, no agent is installed",
                Self::label(record),
                rules::life_cycle_name(record.life_cycle)
            )));
        }
        record.token_sha256 = Some(hash.clone());
        let devices = record.devices.clone();
        let name = record.name.clone();
        self.save(&state)?;
        drop(state);
        self.inner.server.allow(&id.0, &hash, false);
        let mut facts = self.agent_facts(id, &name);
        let text = |s: String| serde_json::Value::String(s);
        facts.insert("server".to_owned(), text(self.agent_address()));
        facts.insert("pin".to_owned(), text(self.inner.server.pin()));
        facts.insert("disks".to_owned(), serde_json::Value::from(devices));
        facts.insert(
            "give_up_after".to_owned(),
            serde_json::Value::from(self.inner.config.agent_give_up_after.as_secs()),
        );
        Ok(Some(AgentInstall {
            template: "local".to_owned(),
            facts,
            secret: token,
        }))
    }

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        Ok(self.view(&mut state, index))
    }

    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job> {
        let mut state = lock(&self.inner.state);
        let active: Vec<&JobRecord> = state
            .jobs
            .iter()
            .filter(|j| j.job.status != JobStatus::Completed)
            .collect();
        let in_active: usize = active.iter().map(|j| j.job.servers.len()).sum();
        rules::check_quotas(
            self.inner.config.quotas,
            sources.len(),
            active.len(),
            in_active,
        )?;
        let mut indexes = Vec::new();
        for id in sources {
            let index = Self::source_index(&state, id)?;
            if indexes.contains(&index) {
                return Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!("{id} appears twice in the launch"),
                ));
            }
            let view = self.view(&mut state, index);
            let record = &state.sources[index];
            let label = Self::label(record);
            let live = match kind {
                LaunchKind::Cutover => Self::live_cutover(&state, id),
                LaunchKind::Test => None,
            };
            let from_point = matches!(point, PointInTime::RecoveryPoint(_));
            // What no wait mends (the life cycle, a live cutover) is refused first.
            rules::check_launch(
                &label,
                kind,
                record.life_cycle,
                view.replication.state,
                live.as_deref(),
                true,
            )?;
            // An agent on its way back (after a restart of this process, or a dropped
            // link) or catching up is a moment to wait, not a refusal.
            let server = &self.inner.server;
            if !from_point
                && view.replication.state != ReplicationState::Continuous
                && record.token_sha256.is_some()
                && !ended(record.life_cycle)
                && (server.reconnecting(&id.0, server::RECONNECT_GRACE) || server.syncing(&id.0))
            {
                return Err(EngineError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{label} cannot be launched yet: its agent is reconnecting or catching up ({}); try again in a moment",
                        rules::state_name(view.replication.state)
                    ),
                ));
            }
            if !from_point {
                rules::check_continuous(&label, view.replication.state)?;
            }
            if let PointInTime::RecoveryPoint(point_id) = point {
                let known = self
                    .inner
                    .server
                    .stats(&id.0)
                    .points
                    .iter()
                    .any(|p| &p.id() == point_id);
                if !known {
                    return Err(not_found(format!(
                        "{label} has no recovery point {point_id}"
                    )));
                }
            }
            indexes.push(index);
        }
        let job_id = JobId(format!("job-{:06}", state.jobs.len() + 1));
        let mut servers = Vec::new();
        for (&index, id) in indexes.iter().zip(sources) {
            if kind == LaunchKind::Test {
                self.terminate_kind(&mut state, id, kind, &format!("replaced by {job_id}"));
            }
            state.sources[index].life_cycle = match kind {
                LaunchKind::Test => LifeCycle::Testing,
                LaunchKind::Cutover => LifeCycle::CuttingOver,
            };
            servers.push(JobServer {
                source: id.clone(),
                status: LaunchStatus::InProgress,
                target: None,
                message: None,
            });
        }
        let job = Job {
            id: job_id.clone(),
            kind,
            status: JobStatus::Started,
            created_at: self.inner.clock.now(),
            servers,
        };
        state.jobs.push(JobRecord {
            job: job.clone(),
            point: point.clone(),
            points: BTreeMap::new(),
        });
        self.save(&state)?;
        drop(state);
        self.spawn_job(job_id);
        Ok(job)
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        let state = lock(&self.inner.state);
        state
            .jobs
            .iter()
            .find(|j| &j.job.id == id)
            .map(|j| j.job.clone())
            .ok_or_else(|| not_found(format!("no launch job {id}")))
    }

    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>> {
        let state = lock(&self.inner.state);
        Self::source_index(&state, id)?;
        Ok(state
            .jobs
            .iter()
            .filter(|j| j.job.servers.iter().any(|s| &s.source == id))
            .map(|j| {
                let mut job = j.job.clone();
                job.servers.retain(|s| &s.source == id);
                job
            })
            .collect())
    }

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target> {
        let state = lock(&self.inner.state);
        state
            .targets
            .iter()
            .find(|t| &t.target.id == id)
            .map(|t| t.target.clone())
            .ok_or_else(|| not_found(format!("no target {id}")))
    }

    async fn terminate_targets(&self, id: &SourceId, kind: LaunchKind) -> EngineResult<()> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        rules::check_terminate(
            &Self::label(&state.sources[index]),
            kind,
            state.sources[index].life_cycle,
        )?;
        self.terminate_kind(&mut state, id, kind, "terminate_targets");
        self.save(&state)
    }

    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        let label = Self::label(&state.sources[index]);
        rules::check_finalize(&label, state.sources[index].life_cycle)?;
        let latest = state.jobs.iter().rev().find_map(|j| {
            let slot = j.job.servers.iter().find(|s| &s.source == id)?;
            (j.job.kind == LaunchKind::Cutover).then_some((j.job.id.clone(), slot.clone()))
        });
        let Some((job, slot)) = latest else {
            return Err(conflict(format!(
                "{label} has no cutover launch to finalize"
            )));
        };
        let target = match (slot.status, slot.target) {
            (LaunchStatus::Launched, Some(t)) => t,
            (LaunchStatus::InProgress, _) => {
                return Err(conflict(format!(
                    "the cutover launch of {label} in {job} is still in progress"
                )));
            }
            _ => {
                return Err(conflict(format!(
                    "the cutover launch of {label} in {job} did not launch a target"
                )));
            }
        };
        let health = state
            .targets
            .iter()
            .find(|t| t.target.id == target)
            .map(|t| (t.target.state, t.target.health));
        if health != Some((TargetState::Running, Health::Ok)) {
            let shown = health.map_or("missing", |(_, h)| health_name(h));
            return Err(conflict(format!(
                "cutover target {target} of {label} is not healthy (health {shown}); finalize needs a running, healthy target"
            )));
        }
        state.sources[index].life_cycle = LifeCycle::Cutover;
        self.save(&state)?;
        self.inner.server.stop(&id.0);
        Ok(())
    }

    async fn change_life_cycle(&self, id: &SourceId, to: LifeCycle) -> EngineResult<()> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        let view = self.view(&mut state, index);
        let record = &state.sources[index];
        rules::check_change(
            &Self::label(record),
            record.life_cycle,
            to,
            view.replication.state,
        )?;
        state.sources[index].life_cycle = to;
        self.save(&state)?;
        if to == LifeCycle::Disconnected {
            self.inner.server.stop(&id.0);
        }
        Ok(())
    }

    async fn archive(&self, id: &SourceId) -> EngineResult<()> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        rules::check_archive(
            &Self::label(&state.sources[index]),
            state.sources[index].life_cycle,
        )?;
        state.sources[index].life_cycle = LifeCycle::Archived;
        self.save(&state)?;
        self.inner.server.stop(&id.0);
        Ok(())
    }

    async fn take_recovery_point(&self, id: &SourceId) -> EngineResult<RecoveryPoint> {
        {
            let state = lock(&self.inner.state);
            Self::source_index(&state, id)?;
        }
        let point = self
            .inner
            .server
            .barrier(&id.0, self.inner.config.final_sync_timeout)
            .await
            .map_err(|why| unavailable(&format!("no recovery point of {id} was cut"), why))?;
        Ok(RecoveryPoint {
            id: point.id(),
            taken_at: point.taken_at,
        })
    }

    async fn start_failback(&self, id: &SourceId) -> EngineResult<crate::Failback> {
        self.start_failback_now(id)
    }

    async fn describe_failback(&self, id: &SourceId) -> EngineResult<Option<crate::Failback>> {
        self.describe_failback_now(id)
    }

    async fn restore_step(
        &self,
        id: &SourceId,
        answer: Option<&str>,
    ) -> EngineResult<crate::RestoreStep> {
        self.restore_step_now(id, answer).await
    }

    async fn return_to_normal(&self, id: &SourceId) -> EngineResult<()> {
        self.return_to_normal_now(id)
    }

    async fn recovery_points(&self, id: &SourceId) -> EngineResult<Vec<RecoveryPoint>> {
        {
            let state = lock(&self.inner.state);
            Self::source_index(&state, id)?;
        }
        Ok(self
            .inner
            .server
            .stats(&id.0)
            .points
            .iter()
            .map(|p| RecoveryPoint {
                id: p.id(),
                taken_at: p.taken_at,
            })
            .collect())
    }
}
