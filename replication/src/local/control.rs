//! The local engine's control port: one process owns a staging folder (it listens for
//! agents, keeps the engine's records and runs its launches); every other Wavelift
//! command on the machine that needs the engine (a `failback` or `failover` while
//! `serve` runs, a `run` while `wavelift replicator` serves the agents) calls the owner
//! here instead of opening the folder a second time, which the taken replication port
//! would refuse anyway.
//!
//! The owner listens on a loopback port of its own choosing and writes where, with a
//! fresh token, to `control.json` in the staging folder (mode 0600, so only who may read
//! the staging folder may call). A call is one connection: a line of JSON with the token
//! and the call, answered by a line of JSON with the result and whether the engine is
//! busy. A `control.json` left by a killed owner leads nowhere: nothing answers there
//! with that token, and the next owner writes its own.

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

/// How long a client waits for the owner to take a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct ControlFile {
    address: String,
    token: String,
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    token: String,
    call: Call,
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
#[derive(Debug, Serialize, Deserialize)]
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
async fn dispatch(engine: &dyn ReplicationEngine, call: Call) -> EngineResult<Value> {
    match call {
        Call::Hello => to_value(&Hello {
            now: Timestamp::now(),
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

fn fresh_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(err.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        engine: impl Fn() -> Option<Arc<dyn ReplicationEngine>> + Send + 'static,
    ) -> std::io::Result<ControlServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let token = fresh_token()?;
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
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => return,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let Some(engine) = engine() else {
                    return;
                };
                let token = accepted_token.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, engine.as_ref(), &token).await;
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

async fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let read = (&mut *stream)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::other("a control line over its limit"));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| std::io::Error::other("a control line that is not UTF-8"))
}

async fn answer(
    stream: TcpStream,
    engine: &dyn ReplicationEngine,
    token: &str,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let Some(line) = read_line(&mut stream).await? else {
        return Ok(());
    };
    let result = match serde_json::from_str::<Request>(&line) {
        Err(err) => Err(invalid(format!(
            "a call the engine does not understand: {err}"
        ))),
        Ok(request) if !same_token(&request.token, token) => Err(EngineError::new(
            ErrorKind::Invalid,
            "the control token is not this engine's (is control.json from another run?)",
        )),
        Ok(request) => dispatch(engine, request.call).await,
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

/// The engine of another process on this machine, called over its control port: every
/// call of the interface goes to the owner's engine.
pub struct LocalClient {
    address: String,
    token: String,
    /// The owner's process, for messages.
    pub pid: u32,
    quotas: Quotas,
    /// As the owner's last answer said (only a warped clock asks, and a warped run
    /// never uses another process's engine).
    busy: AtomicBool,
}

impl LocalClient {
    /// The owner of this staging folder, if one answers; `None` when none runs (no
    /// control.json, or one a killed process left).
    pub async fn find(staging_dir: &Path, quotas: Quotas) -> Option<(LocalClient, Timestamp)> {
        let bytes = std::fs::read(staging_dir.join(CONTROL_FILE)).ok()?;
        let file: ControlFile = serde_json::from_slice(&bytes).ok()?;
        let client = LocalClient {
            address: file.address,
            token: file.token,
            pid: file.pid,
            quotas,
            busy: AtomicBool::new(false),
        };
        // Whatever listens at a stale address may never answer.
        let hello: Hello = tokio::time::timeout(CONNECT_TIMEOUT, client.call(Call::Hello))
            .await
            .ok()?
            .ok()?;
        Some((client, hello.now))
    }

    async fn call<T: for<'de> Deserialize<'de>>(&self, call: Call) -> EngineResult<T> {
        let unavailable = |what: &str, err: &dyn std::fmt::Display| {
            EngineError::new(
                ErrorKind::Unavailable,
                format!(
                    "the local engine of process {} ({}) {what}: {err}",
                    self.pid, self.address
                ),
            )
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| unavailable("did not take the call", &"timed out"))?
            .map_err(|err| unavailable("cannot be reached", &err))?;
        let mut stream = BufReader::new(connected);
        let mut body = serde_json::to_vec(&Request {
            token: self.token.clone(),
            call,
        })
        .map_err(|err| invalid(format!("cannot encode a call: {err}")))?;
        body.push(b'\n');
        stream
            .get_mut()
            .write_all(&body)
            .await
            .map_err(|err| unavailable("did not take the call", &err))?;
        let line = read_line(&mut stream)
            .await
            .map_err(|err| unavailable("did not answer", &err))?
            .ok_or_else(|| unavailable("did not answer", &"the connection closed"))?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|err| unavailable("answered what this Wavelift does not read", &err))?;
        self.busy.store(reply.busy, Ordering::SeqCst);
        let value = reply.result?;
        serde_json::from_value(value)
            .map_err(|err| unavailable("answered what this Wavelift does not read", &err))
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
        self.busy.load(Ordering::SeqCst)
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
