//! The engine interface and the values that cross it. Names follow AWS Application
//! Migration Service (MGN), the reference engine: replication states, life-cycle states,
//! launch jobs with a status per server, target instances with health checks.

use std::fmt;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An engine's own id of a source server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId(pub String);

/// An engine's own id of a launch job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub String);

/// An engine's own id of a launched target machine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TargetId(pub String);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_inner!(SourceId, JobId, TargetId);

/// Data replication states, as MGN names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    Initiating,
    InitialSync,
    Backlog,
    CreatingSnapshot,
    Continuous,
    Paused,
    Rescan,
    Stalled,
    Disconnected,
    /// Stopped by an operator (MGN's StopReplication); started again on request.
    Stopped,
}

/// Life-cycle states of a source server, as MGN names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifeCycle {
    NotReady,
    ReadyForTest,
    Testing,
    ReadyForCutover,
    CuttingOver,
    Cutover,
    Disconnected,
    Archived,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replication {
    pub state: ReplicationState,
    /// How far the replicated copy is behind the source; `None` before the first sync.
    pub lag_seconds: Option<f64>,
    /// Changed bytes waiting to be sent.
    pub backlog_bytes: u64,
    pub replicated_bytes: u64,
    pub total_bytes: u64,
    /// Until continuous replication, when the engine can tell.
    pub eta_seconds: Option<f64>,
    /// Bytes per second arriving from the source now, where the engine measures it (the
    /// local engine: on the wire, after compression).
    #[serde(default)]
    pub throughput_bytes_per_second: Option<f64>,
    /// Bytes the source sent over the network (after compression) since the replication
    /// server started, where the engine counts them.
    #[serde(default)]
    pub wire_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceServer {
    pub id: SourceId,
    /// The name Wavelift knows the server by.
    pub name: String,
    pub replication: Replication,
    pub life_cycle: LifeCycle,
}

/// What the engine needs to know of a source server when its agent is installed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub name: String,
    pub hostname: Option<String>,
    pub disks: Vec<DiskSpec>,
    /// Bytes per second written to the disks.
    pub change_rate_bytes_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub device: String,
    pub size_bytes: u64,
    /// Bytes replication sends (zero blocks are skipped).
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchKind {
    Test,
    Cutover,
}

impl fmt::Display for LaunchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LaunchKind::Test => "test",
            LaunchKind::Cutover => "cutover",
        })
    }
}

/// Which data a launch uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointInTime {
    Latest,
    RecoveryPoint(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Started,
    Completed,
}

/// How one server's launch in a job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchStatus {
    Pending,
    InProgress,
    Launched,
    Failed,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobServer {
    pub source: SourceId,
    pub status: LaunchStatus,
    pub target: Option<TargetId>,
    /// Why a launch failed, in the engine's words.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: LaunchKind,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub servers: Vec<JobServer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Pending,
    Running,
    Stopped,
    Terminated,
}

/// EC2's status checks, or the engine's equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Checks have not finished yet.
    Initializing,
    Ok,
    Impaired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub id: TargetId,
    pub source: SourceId,
    pub kind: LaunchKind,
    pub state: TargetState,
    pub health: Health,
    /// Where the target answers, once it runs.
    pub address: Option<String>,
    pub launched_at: Timestamp,
    /// The engine's own words on the checks behind `health` (EC2's system, instance and
    /// EBS checks; the console's last lines of an impaired instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What an operator asks of a source's replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationAction {
    /// Starts a stopped replication again.
    Start,
    /// Stops replication (the engine keeps what it has).
    Stop,
    /// Pauses replication, to resume it where it was.
    Pause,
    Resume,
}

impl ReplicationAction {
    pub const NAMES: &'static [&'static str] = &["start", "stop", "pause", "resume"];

    pub fn from_name(name: &str) -> Option<ReplicationAction> {
        match name {
            "start" => Some(ReplicationAction::Start),
            "stop" => Some(ReplicationAction::Stop),
            "pause" => Some(ReplicationAction::Pause),
            "resume" => Some(ReplicationAction::Resume),
            _ => None,
        }
    }

    /// `started`, `stopped`, `paused`, `resumed`.
    pub fn done(self) -> &'static str {
        match self {
            ReplicationAction::Start => "started",
            ReplicationAction::Stop => "stopped",
            ReplicationAction::Pause => "paused",
            ReplicationAction::Resume => "resumed",
        }
    }
}

impl fmt::Display for ReplicationAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationAction::Start => "start",
            ReplicationAction::Stop => "stop",
            ReplicationAction::Pause => "pause",
            ReplicationAction::Resume => "resume",
        })
    }
}

/// How a source's test or cutover copy is launched: the wave's blueprint of that kind.
/// An engine without launch settings (the rehearsal and local engines) ignores them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LaunchSettings {
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    pub id: String,
    pub taken_at: Timestamp,
}

/// What installing an engine's agent on a source server takes: the template in
/// `templates/agents/` to render, the facts it is rendered with, and the secret the
/// install script reads on its standard input (never on the command line Wavelift
/// runs; MGN's installer, which the script runs, takes its keys as options).
#[derive(Clone, PartialEq, Serialize)]
pub struct AgentInstall {
    pub template: String,
    pub facts: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(skip)]
    pub secret: String,
}

impl fmt::Debug for AgentInstall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentInstall")
            .field("template", &self.template)
            .field("facts", &self.facts)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// A failback: the cutover copy replicated back (reverse replication), then written onto
/// the source's own disks, then the normal direction again ("return to normal").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failback {
    pub state: FailbackState,
    /// The reverse replication, from the copy into the engine.
    pub replication: Replication,
    /// The copy's newest recovery point.
    pub point: Option<RecoveryPoint>,
    /// Chunks and bytes written onto the source so far.
    pub restored_chunks: u64,
    pub restored_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailbackState {
    /// The copy replicates back; nothing was written onto the source yet.
    Replicating,
    /// A recovery point of the copy is being written onto the source.
    Restoring,
    /// The source's disks hold the copy's recovery point; return to normal is next.
    Restored,
}

/// The next step of writing a failback's recovery point onto the source: a command to
/// run there (a template of `templates/agents/`, its facts, and its standard input),
/// whose output goes back to [`ReplicationEngine::restore_step`]; or the end.
#[derive(Clone, PartialEq)]
pub enum RestoreStep {
    Run {
        template: String,
        facts: std::collections::BTreeMap<String, serde_json::Value>,
        input: Vec<u8>,
        /// What the step does, for the log.
        what: String,
    },
    Done {
        chunks: u64,
        bytes: u64,
    },
}

impl fmt::Debug for RestoreStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreStep::Run {
                template,
                what,
                input,
                ..
            } => f
                .debug_struct("Run")
                .field("template", template)
                .field("what", what)
                .field("input_bytes", &input.len())
                .finish(),
            RestoreStep::Done { chunks, bytes } => f
                .debug_struct("Done")
                .field("chunks", chunks)
                .field("bytes", bytes)
                .finish(),
        }
    }
}

/// Limits an engine puts on launches; the executor batches launches within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub max_servers_per_job: usize,
    pub max_concurrent_jobs: usize,
    pub max_servers_in_active_jobs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The engine asks to slow down; try again after a backoff.
    Throttled,
    /// The engine cannot be reached or failed; try again.
    Unavailable,
    /// No such source server, job or target.
    NotFound,
    /// The request breaks a rule of the engine (for example terminating the targets of
    /// a server that is cutting over).
    Conflict,
    /// The request itself is wrong.
    Invalid,
    /// A quota would be exceeded.
    QuotaExceeded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{kind:?}: {message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError {
            kind,
            message: message.into(),
        }
    }

    /// Worth trying again after a backoff.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::QuotaExceeded
        )
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// A replication engine. Every call is safe to repeat when it reads; the calls that act
/// (launch, finalize, terminate, archive) are the ones the tasks guard so that they are
/// never repeated after they succeeded.
#[async_trait]
pub trait ReplicationEngine: Send + Sync {
    /// `sim`, `local` or `mgn`.
    fn name(&self) -> &'static str;

    /// True for the rehearsal engine: everything it shows is labelled a rehearsal.
    fn is_rehearsal(&self) -> bool;

    fn quotas(&self) -> Quotas;

    /// How long launch requests are gathered into one job before it starts. An engine
    /// reached over the network waits a moment for the requests of other tasks still
    /// in flight; zero means the engine answers without waiting, so the requests made
    /// in the same scheduling round are all there is to gather.
    fn launch_gather(&self) -> std::time::Duration {
        std::time::Duration::from_millis(5)
    }

    /// The source server the engine knows by this name, if its agent is installed.
    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>>;

    /// Makes the engine see the source server (after its agent is installed) and start
    /// replicating it. Idempotent: a known server is returned as it is.
    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer>;

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer>;

    /// How to install this engine's agent for a registered source; `None` for an
    /// engine whose agent is not Wavelift's to install (the rehearsal engine). Each call
    /// issues a new credential, so installing again replaces the previous agent.
    async fn agent_install(&self, _id: &SourceId) -> EngineResult<Option<AgentInstall>> {
        Ok(None)
    }

    /// How to install this engine's agent on a source it does not know yet, for an
    /// engine whose agent registers the source itself (MGN's installer); `None` for an
    /// engine that registers sources on request ([`ReplicationEngine::register_source`]).
    async fn agent_install_unregistered(
        &self,
        _spec: &SourceSpec,
    ) -> EngineResult<Option<AgentInstall>> {
        Ok(None)
    }

    /// Cuts a recovery point of the source now (its agent sends what it has not sent
    /// yet first), for an engine whose points are cut on request.
    async fn take_recovery_point(&self, id: &SourceId) -> EngineResult<RecoveryPoint> {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!(
                "the {} engine cuts no recovery point on request ({id})",
                self.name()
            ),
        ))
    }

    /// Starts (or finds started) the failback of a cut-over source: its cutover copy
    /// replicates back into the engine.
    async fn start_failback(&self, id: &SourceId) -> EngineResult<Failback> {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!("the {} engine has no failback ({id})", self.name()),
        ))
    }

    /// The source's failback, if one was started.
    async fn describe_failback(&self, _id: &SourceId) -> EngineResult<Option<Failback>> {
        Ok(None)
    }

    /// The next step of writing the failback's recovery point onto the source:
    /// `answer` is the output of the previous step's command (`None` starts over from
    /// a comparison, which is always safe).
    async fn restore_step(
        &self,
        id: &SourceId,
        _answer: Option<&str>,
    ) -> EngineResult<RestoreStep> {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!("the {} engine has no failback ({id})", self.name()),
        ))
    }

    /// Ends a restored failback: the reverse replication stops, the cutover copy is
    /// terminated and the source is ready for cutover again; its agent is installed
    /// again (agent_push) to replicate in the normal direction.
    async fn return_to_normal(&self, id: &SourceId) -> EngineResult<()> {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!("the {} engine has no failback ({id})", self.name()),
        ))
    }

    /// Starts, stops, pauses or resumes the source's replication; the source as it is
    /// then. An action that does not fit the replication's state (resuming what is not
    /// paused) is a Conflict.
    async fn control_replication(
        &self,
        id: &SourceId,
        action: ReplicationAction,
    ) -> EngineResult<SourceServer> {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!(
                "the {} engine has no replication control (asked to {action} {id})",
                self.name()
            ),
        ))
    }

    /// True while the engine does work that moves in real time (a launch, a first
    /// sync, an agent reconnecting): a warped scheduler clock waits for it instead of
    /// jumping ahead.
    fn busy(&self) -> bool {
        false
    }

    /// Makes the source's next launch of this kind use these settings (MGN: a new EC2
    /// launch template version from the blueprint, after checking that its subnet,
    /// security groups and instance type exist and fit together). Idempotent: settings
    /// already in force change nothing. `Some` says what changed.
    async fn prepare_launch(
        &self,
        _id: &SourceId,
        _kind: LaunchKind,
        _settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        Ok(None)
    }

    /// Starts one launch job for the given servers.
    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job>;

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job>;

    /// The job with only `source`'s entry in `servers` (none if the job does not
    /// include it): what a task following its own server's launch needs, without
    /// reading the entries of the other servers of a 200-server job.
    async fn describe_job_for(&self, id: &JobId, source: &SourceId) -> EngineResult<Job> {
        let mut job = self.describe_job(id).await?;
        job.servers.retain(|s| &s.source == source);
        Ok(job)
    }

    /// Every job that launched this source, newest last, each with only this source's
    /// entry in `servers`: how a task that was interrupted finds the launch it already
    /// started instead of starting another.
    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>>;

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target>;

    /// Terminates the source's launched targets of this kind (all of them; none is fine).
    async fn terminate_targets(&self, id: &SourceId, kind: LaunchKind) -> EngineResult<()>;

    /// Ends replication after a successful cutover; the life cycle becomes `cutover`.
    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()>;

    /// Sets the life cycle, for example back to ready-for-cutover after a rollback.
    async fn change_life_cycle(&self, id: &SourceId, state: LifeCycle) -> EngineResult<()>;

    /// Marks the source archived: the engine keeps nothing running for it.
    async fn archive(&self, id: &SourceId) -> EngineResult<()>;

    async fn recovery_points(&self, id: &SourceId) -> EngineResult<Vec<RecoveryPoint>>;
}
