//! The local engine's control port: one process owns a staging folder (it listens for
//! agents, keeps the engine's records and runs its launches); every other Wavelift
//! command on the machine that needs the engine (a `failback` or `failover` while
//! `serve` runs, a `run` while `wavelift replicator` serves the agents) calls the owner
//! here instead of opening the folder a second time, which the taken replication port
//! would refuse anyway.
//!
//! The owner listens on a loopback port of its own choosing and writes where, with a
//! fresh token, to `control.json` in the staging folder (mode 0600, so only who may read
//! the staging folder may call). A call is one connection: a line with the token (read
//! first, short and within seconds, so nothing larger is read from a stranger), then a
//! line of JSON with the call, answered by a line of JSON with the result and whether
//! the engine is busy. A `control.json` left by a killed owner leads nowhere: nothing
//! answers there with that token, and the next owner writes its own; a client whose
//! owner went away reads the file again once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::{
    AgentInstall, EngineError, EngineResult, ErrorKind, Failback, Job, JobId, LaunchKind,
    LaunchSettings, LifeCycle, PointInTime, Quotas, RecoveryPoint, ReplicationAction,
    ReplicationEngine, RestoreStep, SourceId, SourceServer, SourceSpec, Target, TargetId,
};

/// The owner's address and token, in the staging folder.
pub const CONTROL_FILE: &str = "control.json";

/// A restore step carries up to 32 MiB of chunks (in base64 here); nothing larger is read.
const MAX_LINE: usize = 64 << 20;
/// The token's line: read before anything larger.
const MAX_TOKEN_LINE: usize = 256;

/// How long a client waits for the owner to take a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the owner waits for a caller's lines.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call may take, answer included (a restore step reads and compares up to
/// 32 MiB of chunks; a launch only starts).
const CALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Serialize, Deserialize)]
struct ControlFile {
    address: String,
    token: String,
    pid: u32,
}

/// One call of the engine interface, with its arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
enum Call {
    /// The owner's clock and whether it is busy: the client's first call.
    Hello,
    FindSource {
        name: String,
    },
    RegisterSource {
        spec: SourceSpec,
    },
    DescribeSource {
        id: SourceId,
    },
    AgentInstall {
        id: SourceId,
    },
    TakeRecoveryPoint {
        id: SourceId,
    },
    StartFailback {
        id: SourceId,
    },
    DescribeFailback {
        id: SourceId,
    },
    RestoreStep {
        id: SourceId,
        answer: Option<String>,
    },
    ReturnToNormal {
        id: SourceId,
    },
    ControlReplication {
        id: SourceId,
        action: ReplicationAction,
    },
    PrepareLaunch {
        id: SourceId,
        kind: LaunchKind,
        settings: LaunchSettings,
    },
    StartLaunch {
        kind: LaunchKind,
        sources: Vec<SourceId>,
        point: PointInTime,
    },
    DescribeJob {
        id: JobId,
    },
    DescribeJobFor {
        id: JobId,
        source: SourceId,
    },
    JobsForSource {
        id: SourceId,
    },
    DescribeTarget {
        id: TargetId,
    },
    TerminateTargets {
        id: SourceId,
        kind: LaunchKind,
    },
    FinalizeCutover {
        id: SourceId,
    },
    ChangeLifeCycle {
        id: SourceId,
        state: LifeCycle,
    },
    Archive {
        id: SourceId,
    },
    RecoveryPoints {
        id: SourceId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    busy: bool,
    result: Result<Value, EngineError>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    now: Timestamp,
    pid: u32,
}

/// An agent install as it travels: the secret too (the control port is the owner's
/// own, behind the token).
#[derive(Serialize, Deserialize)]
struct InstallWire {
    template: String,
    facts: std::collections::BTreeMap<String, Value>,
    secret: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
enum RestoreWire {
    Run {
        template: String,
        facts: std::collections::BTreeMap<String, Value>,
        input_base64: String,
        what: String,
    },
    Done {
        chunks: u64,
        bytes: u64,
    },
}

fn invalid(what: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorKind::Invalid, what.to_string())
}

fn to_value<T: Serialize>(value: &T) -> EngineResult<Value> {
    serde_json::to_value(value).map_err(|err| invalid(format!("cannot encode a reply: {err}")))
}

/// Runs one call on the owner's engine.
async fn dispatch(
    engine: &dyn ReplicationEngine,
    clock: &dyn crate::Clock,
    call: Call,
) -> EngineResult<Value> {
    match call {
        // The engine's clock, which its jobs' and points' times come from.
        Call::Hello => to_value(&Hello {
            now: clock.now(),
            pid: std::process::id(),
        }),
        Call::FindSource { name } => to_value(&engine.find_source(&name).await?),
        Call::RegisterSource { spec } => to_value(&engine.register_source(&spec).await?),
        Call::DescribeSource { id } => to_value(&engine.describe_source(&id).await?),
        Call::AgentInstall { id } => {
            let install = engine.agent_install(&id).await?.map(|i| InstallWire {
                template: i.template,
                facts: i.facts,
                secret: i.secret,
            });
            to_value(&install)
        }
        Call::TakeRecoveryPoint { id } => to_value(&engine.take_recovery_point(&id).await?),
        Call::StartFailback { id } => to_value(&engine.start_failback(&id).await?),
        Call::DescribeFailback { id } => to_value(&engine.describe_failback(&id).await?),
        Call::RestoreStep { id, answer } => {
            let step = match engine.restore_step(&id, answer.as_deref()).await? {
                RestoreStep::Run {
                    template,
                    facts,
                    input,
                    what,
                } => RestoreWire::Run {
                    template,
                    facts,
                    input_base64: base64::engine::general_purpose::STANDARD.encode(input),
                    what,
                },
                RestoreStep::Done { chunks, bytes } => RestoreWire::Done { chunks, bytes },
            };
            to_value(&step)
        }
        Call::ReturnToNormal { id } => to_value(&engine.return_to_normal(&id).await?),
        Call::ControlReplication { id, action } => {
            to_value(&engine.control_replication(&id, action).await?)
        }
        Call::PrepareLaunch { id, kind, settings } => {
            to_value(&engine.prepare_launch(&id, kind, &settings).await?)
        }
        Call::StartLaunch {
            kind,
            sources,
            point,
        } => to_value(&engine.start_launch(kind, &sources, &point).await?),
        Call::DescribeJob { id } => to_value(&engine.describe_job(&id).await?),
        Call::DescribeJobFor { id, source } => {
            to_value(&engine.describe_job_for(&id, &source).await?)
        }
        Call::JobsForSource { id } => to_value(&engine.jobs_for_source(&id).await?),
        Call::DescribeTarget { id } => to_value(&engine.describe_target(&id).await?),
        Call::TerminateTargets { id, kind } => {
            to_value(&engine.terminate_targets(&id, kind).await?)
        }
        Call::FinalizeCutover { id } => to_value(&engine.finalize_cutover(&id).await?),
        Call::ChangeLifeCycle { id, state } => {
            to_value(&engine.change_life_cycle(&id, state).await?)
        }
        Call::Archive { id } => to_value(&engine.archive(&id).await?),
        Call::RecoveryPoints { id } => to_value(&engine.recovery_points(&id).await?),
    }
}

/// Written aside, then renamed: a reader sees the old file or the whole new one, and
/// nobody but the owner's user reads the token.
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(body)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Equal tokens, compared without telling by timing how much of a guess was right.
fn same_token(a: &str, b: &str) -> bool {
    use sha2::Digest as _;
    sha2::Sha256::digest(a.as_bytes()) == sha2::Sha256::digest(b.as_bytes())
}

/// The owner's side: answers calls until the engine is dropped or shut down. Only the
/// process that holds the replication port calls this, so one staging folder has one
/// owner.
pub(crate) struct ControlServer {
    file: PathBuf,
    token: String,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ControlServer {
    pub(crate) async fn start(
        staging_dir: &Path,
        clock: Arc<dyn crate::Clock>,
        engine: impl Fn() -> Option<Arc<dyn ReplicationEngine>> + Send + 'static,
    ) -> std::io::Result<ControlServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let token = super::random_token().map_err(|err| std::io::Error::other(err.message))?;
        let file = staging_dir.join(CONTROL_FILE);
        let body = serde_json::to_vec(&ControlFile {
            address: listener.local_addr()?.to_string(),
            token: token.clone(),
            pid: std::process::id(),
        })
        .map_err(std::io::Error::other)?;
        write_private(&file, &body)?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let accepted_token = token.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    _ = stopped.changed() => return,
                    accepted = listener.accept() => accepted,
                };
                if *stopped.borrow() {
                    return;
                }
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, say: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let token = accepted_token.clone();
                let clock = Arc::clone(&clock);
                let Some(engine) = engine() else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = answer(stream, engine.as_ref(), clock.as_ref(), &token).await;
                });
            }
        });
        Ok(ControlServer { file, token, stop })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Only our own file: a later owner may have written its own already.
        if let Ok(bytes) = std::fs::read(&self.file)
            && let Ok(found) = serde_json::from_slice::<ControlFile>(&bytes)
            && found.token == self.token
        {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

async fn read_line(
    stream: &mut BufReader<TcpStream>,
    limit: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let read = (&mut *stream)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() > limit {
        return Err(std::io::Error::other("a control line over its limit"));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| std::io::Error::other("a control line that is not UTF-8"))
}

async fn answer(
    stream: TcpStream,
    engine: &dyn ReplicationEngine,
    clock: &dyn crate::Clock,
    token: &str,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let late = || std::io::Error::other("the caller took too long");
    let given = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut stream, MAX_TOKEN_LINE))
        .await
        .map_err(|_| late())??
        .unwrap_or_default();
    let result = if !same_token(given.trim_end(), token) {
        Err(EngineError::new(
            ErrorKind::Invalid,
            format!("{WRONG_TOKEN} (is control.json from another run?)"),
        ))
    } else {
        let line = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut stream, MAX_LINE))
            .await
            .map_err(|_| late())??
            .unwrap_or_default();
        match serde_json::from_str::<Call>(&line) {
            Err(err) => Err(invalid(format!(
                "a call the engine does not understand: {err}"
            ))),
            Ok(call) => dispatch(engine, clock, call).await,
        }
    };
    let reply = Reply {
        busy: engine.busy(),
        result,
    };
    let mut body = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    body.push(b'\n');
    stream.get_mut().write_all(&body).await?;
    stream.get_mut().shutdown().await
}

/// Where the owner answers, as its control.json says.
#[derive(Debug, Clone, PartialEq)]
struct Owner {
    address: String,
    token: String,
    pid: u32,
}

fn read_owner(staging_dir: &Path) -> Option<Owner> {
    let bytes = std::fs::read(staging_dir.join(CONTROL_FILE)).ok()?;
    let file: ControlFile = serde_json::from_slice(&bytes).ok()?;
    Some(Owner {
        address: file.address,
        token: file.token,
        pid: file.pid,
    })
}

/// Why a call did not go through, and whether the owner may have been replaced.
enum Failed {
    /// Nobody listens there, or the token is not the listener's: a new owner may have
    /// written control.json since.
    Gone(EngineError),
    Other(EngineError),
}

/// The message of a refused token, which tells a replaced owner.
const WRONG_TOKEN: &str = "the control token is not this engine's";

/// The engine of another process on this machine, called over its control port: every
/// call of the interface goes to the owner's engine. The interface's methods that have
/// a default are forwarded only where the local engine overrides them.
pub struct LocalClient {
    staging_dir: PathBuf,
    owner: std::sync::Mutex<Owner>,
    quotas: Quotas,
    /// As the owner's last answer said (only a warped clock asks, and a warped run
    /// never uses another process's engine).
    busy: AtomicBool,
    /// How to run the engine here should its owner die (see [`LocalClient::taking_over`]).
    takeover: Option<(super::LocalConfig, Arc<dyn crate::Clock>)>,
    /// The engine this process took over, once it has.
    taken: tokio::sync::OnceCell<super::LocalEngine>,
    /// Since when the owner has not answered (reset by an answer).
    gone_since: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long a dead owner's place stays open before a process that runs tasks takes it.
const TAKEOVER_GRACE: Duration = Duration::from_secs(10);

fn lock_unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A process that took the engine over says, as it ends, that the agents lose their
/// server with it.
impl Drop for LocalClient {
    fn drop(&mut self) {
        if self.taken.get().is_some() {
            eprintln!(
                "the local engine this process took over ({}) stops with it: its agents wait for the next `wavelift replicator`, run or serve",
                self.staging_dir.display()
            );
        }
    }
}

impl LocalClient {
    /// The owner of this staging folder, if one answers, and its engine's clock;
    /// `None` when none runs (no control.json, or one a killed process left).
    pub async fn find(staging_dir: &Path, quotas: Quotas) -> Option<(LocalClient, Timestamp)> {
        let owner = read_owner(staging_dir)?;
        let client = LocalClient {
            staging_dir: staging_dir.to_owned(),
            owner: std::sync::Mutex::new(owner),
            quotas,
            busy: AtomicBool::new(false),
            takeover: None,
            taken: tokio::sync::OnceCell::new(),
            gone_since: std::sync::Mutex::new(None),
        };
        // Whatever listens at a stale address may never answer.
        let hello: Hello = tokio::time::timeout(CONNECT_TIMEOUT, client.call(Call::Hello))
            .await
            .ok()?
            .ok()?;
        Some((client, hello.now))
    }

    /// A client of a process that runs tasks (`run`, `serve`): should the owner die
    /// (killed, its machine's service stopped) and no other take its place within
    /// [`TAKEOVER_GRACE`], this process starts the engine on `config` itself, as the
    /// owner would have been started, and the call goes to it; the agents reconnect to
    /// it. Until then, and while the folder's lock or port is still held (an owner ending
    /// its launches), a call fails as a moment to wait and the next one tries again.
    pub fn taking_over(mut self, config: super::LocalConfig, clock: Arc<dyn crate::Clock>) -> Self {
        self.takeover = Some((config, clock));
        self
    }

    /// The engine this process took over from a dead owner, if it has.
    pub fn taken_over(&self) -> Option<&super::LocalEngine> {
        self.taken.get()
    }

    /// The owner's process id (the last one that answered; this process's once it took
    /// the engine over).
    pub fn pid(&self) -> u32 {
        if self.taken.get().is_some() {
            return std::process::id();
        }
        self.owner().pid
    }

    fn owner(&self) -> Owner {
        lock_unpoisoned(&self.owner).clone()
    }

    /// One call; when the owner is gone, control.json is read again once (a replicator
    /// restarted, say) and the call goes to the new owner.
    async fn call<T: for<'de> Deserialize<'de>>(&self, call: Call) -> EngineResult<T> {
        let mut body = serde_json::to_vec(&call)
            .map_err(|err| invalid(format!("cannot encode a call: {err}")))?;
        body.push(b'\n');
        if let Some(engine) = self.taken.get() {
            return self.decode(self.here(engine, call).await?);
        }
        let owner = self.owner();
        let value = match self.call_once(&owner, &body).await {
            Ok(value) => value,
            Err(Failed::Other(err)) => return Err(err),
            Err(Failed::Gone(err)) => match read_owner(&self.staging_dir) {
                Some(new) if new != owner => {
                    *lock_unpoisoned(&self.owner) = new.clone();
                    self.call_once(&new, &body)
                        .await
                        .map_err(|failed| match failed {
                            Failed::Gone(err) | Failed::Other(err) => err,
                        })?
                }
                _ if self.takeover.is_some() => {
                    let engine = self.take_over(&owner, err).await?;
                    self.here(engine, call).await?
                }
                _ => {
                    return Err(EngineError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "{}: the process that ran the local engine of {} is gone; start `wavelift replicator` (or run, serve) again",
                            err.message,
                            self.staging_dir.display()
                        ),
                    ));
                }
            },
        };
        *lock_unpoisoned(&self.gone_since) = None;
        self.decode(value)
    }

    /// The engine started here in place of `gone`, which no longer answers (once; a
    /// failed start is tried again by the next call).
    async fn take_over(&self, gone: &Owner, err: EngineError) -> EngineResult<&super::LocalEngine> {
        let Some((config, clock)) = &self.takeover else {
            return Err(err);
        };
        // A service manager restarts a replicator that died within moments: it gets the
        // time to, before this process takes its place.
        let since = *lock_unpoisoned(&self.gone_since).get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < TAKEOVER_GRACE {
            return Err(EngineError::new(
                ErrorKind::Unavailable,
                format!(
                    "{}; unless it is back within {} s, this process runs the engine of {} in its place",
                    err.message,
                    TAKEOVER_GRACE.as_secs(),
                    self.staging_dir.display()
                ),
            ));
        }
        self.taken
            .get_or_try_init(|| async {
                // Another process may have taken it meanwhile: that one answers.
                if let Some(new) = read_owner(&self.staging_dir)
                    && new != *gone
                {
                    return Err(EngineError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the local engine of {} moved to process {}: the next call goes there",
                            self.staging_dir.display(),
                            new.pid
                        ),
                    ));
                }
                let engine = super::LocalEngine::start(config.clone(), Arc::clone(clock))
                    .await
                    .map_err(|start| {
                        // The port or the folder still held (an owner ending its
                        // launches): a moment to wait. Anything else needs a person.
                        let (kind, when) = match start.kind() {
                            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::WouldBlock => {
                                (ErrorKind::Unavailable, "yet")
                            }
                            _ => (ErrorKind::Conflict, "until this is mended"),
                        };
                        EngineError::new(
                            kind,
                            format!(
                                "{}; this process cannot run the engine in its place {when}: {start}",
                                err.message
                            ),
                        )
                    })?;
                eprintln!(
                    "{} the local engine's process {} is gone: this process ({}) runs the engine of {} now, and its agents reconnect here",
                    Timestamp::now(),
                    gone.pid,
                    std::process::id(),
                    self.staging_dir.display()
                );
                Ok(engine)
            })
            .await
    }

    /// A call answered by the engine this process took over, as the owner would answer it.
    async fn here(&self, engine: &super::LocalEngine, call: Call) -> EngineResult<Value> {
        let clock = &self
            .takeover
            .as_ref()
            .ok_or_else(|| invalid("no engine was taken over"))?
            .1;
        dispatch(engine, clock.as_ref(), call).await
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, value: Value) -> EngineResult<T> {
        serde_json::from_value(value).map_err(|err| {
            EngineError::new(
                ErrorKind::Unavailable,
                format!("the local engine of process {} answered what this Wavelift does not read: {err}", self.pid()),
            )
        })
    }

    async fn call_once(&self, owner: &Owner, body: &[u8]) -> Result<Value, Failed> {
        let unavailable = |what: &str, err: &dyn std::fmt::Display| {
            EngineError::new(
                ErrorKind::Unavailable,
                format!(
                    "the local engine of process {} ({}) {what}: {err}",
                    owner.pid, owner.address
                ),
            )
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&owner.address))
            .await
            .map_err(|_| Failed::Other(unavailable("did not take the call", &"timed out")))?
            .map_err(|err| Failed::Gone(unavailable("cannot be reached", &err)))?;
        let exchange = async {
            let mut stream = BufReader::new(connected);
            let mut token = owner.token.clone().into_bytes();
            token.push(b'\n');
            stream.get_mut().write_all(&token).await?;
            stream.get_mut().write_all(body).await?;
            read_line(&mut stream, MAX_LINE).await
        };
        let line = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| Failed::Other(unavailable("did not answer", &"timed out")))?
            .map_err(|err| Failed::Other(unavailable("did not answer", &err)))?
            .ok_or_else(|| {
                Failed::Other(unavailable("did not answer", &"the connection closed"))
            })?;
        let reply: Reply = serde_json::from_str(&line).map_err(|err| {
            Failed::Other(unavailable(
                "answered what this Wavelift does not read",
                &err,
            ))
        })?;
        self.busy.store(reply.busy, Ordering::SeqCst);
        match reply.result {
            Err(err) if err.message.starts_with(WRONG_TOKEN) => Err(Failed::Gone(err)),
            Err(err) => Err(Failed::Other(err)),
            Ok(value) => Ok(value),
        }
    }
}

#[async_trait]
impl ReplicationEngine for LocalClient {
    fn name(&self) -> &'static str {
        "local"
    }

    fn is_rehearsal(&self) -> bool {
        false
    }

    fn quotas(&self) -> Quotas {
        self.quotas
    }

    fn busy(&self) -> bool {
        match self.taken.get() {
            Some(engine) => engine.busy(),
            None => self.busy.load(Ordering::SeqCst),
        }
    }

    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>> {
        self.call(Call::FindSource {
            name: name.to_owned(),
        })
        .await
    }

    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer> {
        self.call(Call::RegisterSource { spec: spec.clone() }).await
    }

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer> {
        self.call(Call::DescribeSource { id: id.clone() }).await
    }

    async fn agent_install(&self, id: &SourceId) -> EngineResult<Option<AgentInstall>> {
        let wire: Option<InstallWire> = self.call(Call::AgentInstall { id: id.clone() }).await?;
        Ok(wire.map(|w| AgentInstall {
            template: w.template,
            facts: w.facts,
            secret: w.secret,
        }))
    }

    async fn take_recovery_point(&self, id: &SourceId) -> EngineResult<RecoveryPoint> {
        self.call(Call::TakeRecoveryPoint { id: id.clone() }).await
    }

    async fn start_failback(&self, id: &SourceId) -> EngineResult<Failback> {
        self.call(Call::StartFailback { id: id.clone() }).await
    }

    async fn describe_failback(&self, id: &SourceId) -> EngineResult<Option<Failback>> {
        self.call(Call::DescribeFailback { id: id.clone() }).await
    }

    async fn restore_step(&self, id: &SourceId, answer: Option<&str>) -> EngineResult<RestoreStep> {
        let wire: RestoreWire = self
            .call(Call::RestoreStep {
                id: id.clone(),
                answer: answer.map(str::to_owned),
            })
            .await?;
        Ok(match wire {
            RestoreWire::Run {
                template,
                facts,
                input_base64,
                what,
            } => RestoreStep::Run {
                template,
                facts,
                input: base64::engine::general_purpose::STANDARD
                    .decode(input_base64)
                    .map_err(|err| invalid(format!("a restore step's data: {err}")))?,
                what,
            },
            RestoreWire::Done { chunks, bytes } => RestoreStep::Done { chunks, bytes },
        })
    }

    async fn return_to_normal(&self, id: &SourceId) -> EngineResult<()> {
        self.call(Call::ReturnToNormal { id: id.clone() }).await
    }

    async fn control_replication(
        &self,
        id: &SourceId,
        action: ReplicationAction,
    ) -> EngineResult<SourceServer> {
        self.call(Call::ControlReplication {
            id: id.clone(),
            action,
        })
        .await
    }

    async fn prepare_launch(
        &self,
        id: &SourceId,
        kind: LaunchKind,
        settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        self.call(Call::PrepareLaunch {
            id: id.clone(),
            kind,
            settings: settings.clone(),
        })
        .await
    }

    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job> {
        self.call(Call::StartLaunch {
            kind,
            sources: sources.to_vec(),
            point: point.clone(),
        })
        .await
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        self.call(Call::DescribeJob { id: id.clone() }).await
    }

    async fn describe_job_for(&self, id: &JobId, source: &SourceId) -> EngineResult<Job> {
        self.call(Call::DescribeJobFor {
            id: id.clone(),
            source: source.clone(),
        })
        .await
    }

    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>> {
        self.call(Call::JobsForSource { id: id.clone() }).await
    }

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target> {
        self.call(Call::DescribeTarget { id: id.clone() }).await
    }

    async fn terminate_targets(&self, id: &SourceId, kind: LaunchKind) -> EngineResult<()> {
        self.call(Call::TerminateTargets {
            id: id.clone(),
            kind,
        })
        .await
    }

    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()> {
        self.call(Call::FinalizeCutover { id: id.clone() }).await
    }

    async fn change_life_cycle(&self, id: &SourceId, state: LifeCycle) -> EngineResult<()> {
        self.call(Call::ChangeLifeCycle {
            id: id.clone(),
            state,
        })
        .await
    }

    async fn archive(&self, id: &SourceId) -> EngineResult<()> {
        self.call(Call::Archive { id: id.clone() }).await
    }

    async fn recovery_points(&self, id: &SourceId) -> EngineResult<Vec<RecoveryPoint>> {
        self.call(Call::RecoveryPoints { id: id.clone() }).await
    }
}
