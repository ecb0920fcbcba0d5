//! `wavelift sim serve-mgn`: the rehearsal engine behind the JSON protocol of AWS
//! Application Migration Service (restJson1: `POST /OperationName` with a JSON body,
//! errors as an HTTP status, an `x-amzn-ErrorType` header and `{"message": ...}`), so an
//! MGN client (the AWS SDK, the CLI) can be tested on loopback against MGN's request and
//! response shapes and its life-cycle rules (no targets are terminated while a server
//! tests or cuts over; quotas per job and across jobs).
//!
//! The source servers are the servers of the wave files given, registered as if their
//! MGN agents were installed: ids `s-` and 17 characters, hostname, FQDN and IP as
//! identification hints. Operations: DescribeSourceServers, GetLaunchConfiguration,
//! UpdateLaunchConfiguration, StartTest, StartCutover, DescribeJobs, DescribeJobLogItems,
//! ChangeServerLifeCycleState, FinalizeCutover, TerminateTargetInstances, MarkAsArchived,
//! and StartReplication, StopReplication, PauseReplication, ResumeReplication (kept
//! here, over the engine's replication state).
//!
//! With an EC2 emulator ([`crate::ec2_bridge`]), each source server has a launch template
//! there and each launched target is an instance run from its default version (so the
//! blueprint a client put in the template is what launches), terminated with it;
//! without one, the templates and instances are ids only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use replication::{
    EngineError, ErrorKind, Job, JobId, JobStatus, LaunchKind, LaunchStatus, LifeCycle,
    PointInTime, ReplicationEngine, ReplicationState, SourceId, SourceServer,
};
use serde::Deserialize;
use serde_json::{Value, json};

mod installer;

/// What MGN knows of a source beyond the engine's view: its identification hints.
#[derive(Debug, Clone)]
pub struct Hints {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub ip: Option<String>,
    pub disks: Vec<(String, u64)>,
}

/// A source server as this endpoint knows it, by its MGN id.
#[derive(Debug, Clone)]
struct Source {
    id: SourceId,
    hints: Hints,
    /// Its EC2 launch template (`lt-...`).
    template: String,
    /// The launch configuration's targetInstanceTypeRightSizingMethod.
    right_sizing: String,
    /// Paused or stopped by StopReplication or PauseReplication: what the source's
    /// replication shows over the engine's until it is started or resumed.
    control: Option<ReplicationState>,
    /// The installer's `--user-provided-id`, for a source it registered.
    user_provided_id: Option<String>,
}

pub struct MgnApi {
    engine: Arc<dyn ReplicationEngine>,
    region: String,
    account: String,
    /// MGN's ids and the engine's, both ways.
    sources: Mutex<BTreeMap<String, Source>>,
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    ec2: Option<crate::ec2_bridge::Ec2Bridge>,
    /// The EC2 instance of each engine target, once it was first shown. Held across the
    /// emulator's RunInstances, so a target is never run twice.
    instances: tokio::sync::Mutex<BTreeMap<String, String>>,
    /// Wave servers whose agent is not installed yet, by name.
    pending: Mutex<BTreeMap<String, (replication::SourceSpec, Hints)>>,
    /// Where this endpoint listens, once it does (the installer it serves calls it).
    address: std::sync::OnceLock<std::net::SocketAddr>,
    /// Held while a source server is added: each gets the next id, once.
    adding: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
enum JobRecord {
    /// A launch job of the engine.
    Launch(JobId),
    /// A terminate job: done when it is answered (the engine terminates at once).
    Terminate {
        created: String,
        servers: Vec<String>,
    },
}

/// An error in MGN's shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> ApiError {
        let (status, kind) = match err.kind {
            ErrorKind::Throttled => (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"),
            ErrorKind::Unavailable => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException")
            }
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "ConflictException"),
            ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "ValidationException"),
            ErrorKind::QuotaExceeded => (
                StatusCode::PAYMENT_REQUIRED,
                "ServiceQuotaExceededException",
            ),
        };
        ApiError::new(status, kind, err.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({ "message": self.message, "code": self.kind })),
        )
            .into_response();
        if let Ok(kind) = HeaderValue::from_str(self.kind) {
            response.headers_mut().insert("x-amzn-ErrorType", kind);
        }
        response
    }
}

type Answer = Result<axum::Json<Value>, ApiError>;

/// MGN's id of the engine's source `s-000001`: `s-` and 17 characters.
fn mgn_source_id(index: usize) -> String {
    format!("s-{index:017}")
}

/// MGN's id of a job: `mgnjob-` and 17 digits, the first five from the Region, so the
/// endpoints of two Regions never give the same job id (MGN's are unique too).
fn mgn_job_id(region: u32, index: usize) -> String {
    format!("mgnjob-{region:05}{index:012}")
}

/// Five digits of a Region's name (FNV-1a).
fn region_code(region: &str) -> u32 {
    let hash = region.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % 100_000
}

/// An EC2 instance id for an engine target: `i-` and 17 hexadecimal digits.
fn instance_id(target: &str) -> String {
    let digits: String = target.chars().filter(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or(0);
    format!("i-{n:017x}")
}

fn timestamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn replication_state(state: ReplicationState) -> &'static str {
    match state {
        ReplicationState::Initiating => "INITIATING",
        ReplicationState::InitialSync => "INITIAL_SYNC",
        ReplicationState::Backlog => "BACKLOG",
        ReplicationState::CreatingSnapshot => "CREATING_SNAPSHOT",
        ReplicationState::Continuous => "CONTINUOUS",
        ReplicationState::Paused => "PAUSED",
        ReplicationState::Rescan => "RESCAN",
        ReplicationState::Stalled => "STALLED",
        ReplicationState::Disconnected => "DISCONNECTED",
        ReplicationState::Stopped => "STOPPED",
    }
}

fn life_cycle_state(state: LifeCycle) -> &'static str {
    match state {
        LifeCycle::NotReady => "NOT_READY",
        LifeCycle::ReadyForTest => "READY_FOR_TEST",
        LifeCycle::Testing => "TESTING",
        LifeCycle::ReadyForCutover => "READY_FOR_CUTOVER",
        LifeCycle::CuttingOver => "CUTTING_OVER",
        // An archived server keeps the state it was archived in; MGN archives cut-over
        // servers.
        LifeCycle::Cutover | LifeCycle::Archived => "CUTOVER",
        LifeCycle::Disconnected => "DISCONNECTED",
    }
}

fn launch_status(status: LaunchStatus) -> &'static str {
    match status {
        LaunchStatus::Pending => "PENDING",
        LaunchStatus::InProgress => "IN_PROGRESS",
        LaunchStatus::Launched => "LAUNCHED",
        LaunchStatus::Failed => "FAILED",
        LaunchStatus::Terminated => "TERMINATED",
    }
}

/// ISO 8601 duration, as MGN writes `lagDuration`.
fn iso_duration(seconds: f64) -> String {
    let whole = seconds.max(0.0).round() as u64;
    format!("PT{}H{}M{}S", whole / 3600, whole / 60 % 60, whole % 60)
}

impl MgnApi {
    /// Registers each server (its name, hints and disks) with the engine, as its MGN
    /// agent would on install; with `pending`, none is registered until the installer
    /// this endpoint serves ([`installer`]) registers it.
    pub async fn new(
        engine: Arc<dyn ReplicationEngine>,
        region: &str,
        servers: Vec<(replication::SourceSpec, Hints)>,
        ec2: Option<crate::ec2_bridge::Ec2Bridge>,
        pending: bool,
    ) -> anyhow::Result<MgnApi> {
        let api = MgnApi {
            engine,
            region: region.to_owned(),
            account: "111122223333".to_owned(),
            sources: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            ec2,
            instances: tokio::sync::Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            address: std::sync::OnceLock::new(),
            adding: tokio::sync::Mutex::new(()),
        };
        for (spec, hints) in servers {
            if pending {
                Self::lock(&api.pending).insert(spec.name.clone(), (spec, hints));
            } else {
                api.add_source(&spec, hints, None)
                    .await
                    .map_err(|err| anyhow::anyhow!("registering {}: {}", spec.name, err.message))?;
            }
        }
        Ok(api)
    }

    /// A source server for a wave server: registered with the engine, its MGN id the
    /// next one, its launch template made.
    async fn add_source(
        &self,
        spec: &replication::SourceSpec,
        hints: Hints,
        user_provided_id: Option<String>,
    ) -> Result<String, ApiError> {
        let _adding = self.adding.lock().await;
        let source = self.engine.register_source(spec).await?;
        let index = Self::lock(&self.sources).len() + 1;
        let mgn = mgn_source_id(index);
        let template = match &self.ec2 {
            Some(ec2) => ec2.create_template(&mgn).await.map_err(|err| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerException",
                    format!("a launch template for {mgn} in EC2: {err:#}"),
                )
            })?,
            None => format!("lt-{index:017x}"),
        };
        Self::lock(&self.sources).insert(
            mgn.clone(),
            Source {
                id: source.id,
                hints,
                template,
                right_sizing: "BASIC".to_owned(),
                control: None,
                user_provided_id,
            },
        );
        Ok(mgn)
    }

    /// The EC2 instance of an engine target of the source `mgn`: run in the emulator
    /// from the source's launch template when first shown.
    async fn instance(
        &self,
        target: &replication::TargetId,
        mgn: &str,
        status: LaunchStatus,
    ) -> Result<String, ApiError> {
        let mut instances = self.instances.lock().await;
        if let Some(instance) = instances.get(&target.0) {
            return Ok(instance.clone());
        }
        let instance = match &self.ec2 {
            // A target first shown terminated is not run only to stay running.
            None => instance_id(&target.0),
            Some(_) if status == LaunchStatus::Terminated => instance_id(&target.0),
            Some(ec2) => {
                let template = Self::lock(&self.sources)
                    .get(mgn)
                    .map(|s| s.template.clone())
                    .ok_or_else(|| ApiError::not_found(format!("Source server {mgn} not found")))?;
                ec2.run_instance(&template, mgn).await.map_err(|err| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalServerException",
                        format!("launching {target} in EC2: {err:#}"),
                    )
                })?
            }
        };
        instances.insert(target.0.clone(), instance.clone());
        Ok(instance)
    }

    /// The endpoint's routes: MGN's operations, and the agent installer with its
    /// SHA-512 and registration ([`installer`]) for servers not registered yet.
    pub fn router(self: Arc<Self>, address: std::net::SocketAddr) -> Router {
        let _ = self.address.set(address);
        Router::new()
            .route("/{operation}", post(operation))
            .merge(installer::routes())
            .with_state(self)
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn engine_id(&self, mgn: &str) -> Result<SourceId, ApiError> {
        Self::lock(&self.sources)
            .get(mgn)
            .map(|s| s.id.clone())
            .ok_or_else(|| ApiError::not_found(format!("Source server {mgn} not found")))
    }

    fn mgn_id(&self, id: &SourceId) -> Option<String> {
        Self::lock(&self.sources)
            .iter()
            .find(|(_, source)| source.id == *id)
            .map(|(mgn, _)| mgn.clone())
    }

    /// A SourceServer object of MGN's API reference.
    async fn source_server(&self, mgn: &str) -> Result<Value, ApiError> {
        let Source {
            id,
            hints,
            control,
            user_provided_id,
            ..
        } = Self::lock(&self.sources)
            .get(mgn)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Source server {mgn} not found")))?;
        let mut source: SourceServer = self.engine.describe_source(&id).await?;
        if let Some(state) = control {
            source.replication.state = state;
        }
        let replication = &source.replication;
        let total: u64 = hints
            .disks
            .iter()
            .map(|(_, bytes)| bytes)
            .sum::<u64>()
            .max(1);
        let disks: Vec<Value> = hints
            .disks
            .iter()
            .map(|(name, bytes)| {
                let share = *bytes as f64 / total as f64;
                json!({
                    "deviceName": name,
                    "totalStorageBytes": bytes,
                    "replicatedStorageBytes": (replication.replicated_bytes as f64 * share) as u64,
                    "backloggedStorageBytes": (replication.backlog_bytes as f64 * share) as u64,
                    "rescannedStorageBytes": 0,
                })
            })
            .collect();
        let mut info = json!({
            "dataReplicationState": replication_state(replication.state),
            "replicatedDisks": disks,
        });
        if let Some(lag) = replication.lag_seconds {
            info["lagDuration"] = json!(iso_duration(lag));
        }
        if let Some(eta) = replication.eta_seconds {
            let now = jiff::Timestamp::now();
            let at = now
                .checked_add(jiff::SignedDuration::from_secs(eta.max(0.0) as i64))
                .unwrap_or(now);
            info["etaDateTime"] = json!(timestamp(at));
        }
        let mut server = json!({
            "sourceServerID": mgn,
            "arn": format!("arn:aws:mgn:{}:{}:source-server/{mgn}", self.region, self.account),
            "isArchived": source.life_cycle == LifeCycle::Archived,
            "replicationType": "AGENT_BASED",
            "tags": {},
            "dataReplicationInfo": info,
            "lifeCycle": { "state": life_cycle_state(source.life_cycle) },
            "sourceProperties": {
                "identificationHints": {
                    "hostname": hints.hostname.clone().unwrap_or_else(|| source.name.clone()),
                    "fqdn": hints.fqdn,
                },
                "networkInterfaces": hints.ip.iter().map(|ip| json!({
                    "ips": [ip],
                    "isPrimary": true,
                })).collect::<Vec<_>>(),
                "disks": hints.disks.iter().map(|(name, bytes)| json!({
                    "deviceName": name,
                    "bytes": bytes,
                })).collect::<Vec<_>>(),
            },
        });
        if let Some(given) = user_provided_id {
            server["userProvidedID"] = json!(given);
        }
        // The instance the latest launch made, as MGN's launchedInstance.
        let jobs = self.engine.jobs_for_source(&id).await?;
        if let Some((job, target, status)) = jobs.iter().rev().find_map(|job| {
            let slot = job.servers.iter().find(|s| s.source == id)?;
            Some((job, slot.target.clone()?, slot.status))
        }) {
            let job_id = self.mgn_job(&job.id);
            server["launchedInstance"] = json!({
                "ec2InstanceID": self.instance(&target, mgn, status).await?,
                "jobID": job_id,
                "firstBoot": "SUCCEEDED",
            });
        }
        Ok(server)
    }

    /// MGN's id of an engine job, given one on first sight.
    fn mgn_job(&self, id: &JobId) -> String {
        let mut jobs = Self::lock(&self.jobs);
        if let Some((mgn, _)) = jobs
            .iter()
            .find(|(_, record)| matches!(record, JobRecord::Launch(j) if j == id))
        {
            return mgn.clone();
        }
        let mgn = mgn_job_id(region_code(&self.region), jobs.len() + 1);
        jobs.insert(mgn.clone(), JobRecord::Launch(id.clone()));
        mgn
    }

    /// A Job object of MGN's API reference.
    async fn job(&self, mgn: &str) -> Result<Value, ApiError> {
        let record = Self::lock(&self.jobs)
            .get(mgn)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Job {mgn} not found")))?;
        let arn = format!("arn:aws:mgn:{}:{}:job/{mgn}", self.region, self.account);
        match record {
            JobRecord::Terminate { created, servers } => Ok(json!({
                "jobID": mgn,
                "arn": arn,
                "type": "TERMINATE",
                "initiatedBy": "TERMINATE",
                "creationDateTime": created,
                "endDateTime": created,
                "status": "COMPLETED",
                "participatingServers": servers.iter().map(|s| json!({
                    "sourceServerID": s,
                    "launchStatus": "TERMINATED",
                })).collect::<Vec<_>>(),
                "tags": {},
            })),
            JobRecord::Launch(id) => {
                let job: Job = self.engine.describe_job(&id).await?;
                let mut servers: Vec<Value> = Vec::new();
                for slot in &job.servers {
                    let source = self.mgn_id(&slot.source).unwrap_or_default();
                    let mut server = json!({
                        "sourceServerID": source,
                        "launchStatus": launch_status(slot.status),
                    });
                    if let Some(target) = &slot.target {
                        server["launchedEc2InstanceID"] =
                            json!(self.instance(target, &source, slot.status).await?);
                    }
                    servers.push(server);
                }
                let mut value = json!({
                    "jobID": mgn,
                    "arn": arn,
                    "type": "LAUNCH",
                    "initiatedBy": match job.kind {
                        LaunchKind::Test => "START_TEST",
                        LaunchKind::Cutover => "START_CUTOVER",
                    },
                    "creationDateTime": timestamp(job.created_at),
                    "status": match job.status {
                        JobStatus::Pending => "PENDING",
                        JobStatus::Started => "STARTED",
                        JobStatus::Completed => "COMPLETED",
                    },
                    "participatingServers": servers,
                    "tags": {},
                });
                if job.status == JobStatus::Completed {
                    value["endDateTime"] = json!(timestamp(jiff::Timestamp::now()));
                }
                Ok(value)
            }
        }
    }

    async fn describe_source_servers(&self, body: Value) -> Answer {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Filters {
            #[serde(rename = "sourceServerIDs")]
            source_server_ids: Option<Vec<String>>,
            #[serde(rename = "isArchived")]
            is_archived: Option<bool>,
            #[serde(rename = "lifeCycleStates")]
            life_cycle_states: Option<Vec<String>>,
        }
        let filters: Filters = field(&body, "filters")?;
        let (start, max) = page(&body)?;
        let ids: Vec<String> = Self::lock(&self.sources).keys().cloned().collect();
        let mut items = Vec::new();
        for mgn in ids {
            if !listed(&filters.source_server_ids, &mgn) {
                continue;
            }
            let server = self.source_server(&mgn).await?;
            if let Some(archived) = filters.is_archived
                && server["isArchived"] != json!(archived)
            {
                continue;
            }
            if let Some(states) = &filters.life_cycle_states
                && !states.is_empty()
                && !states
                    .iter()
                    .any(|s| server["lifeCycle"]["state"] == json!(s))
            {
                continue;
            }
            items.push(server);
        }
        Ok(axum::Json(paged(items, start, max)))
    }

    async fn start_launch(&self, body: Value, kind: LaunchKind) -> Answer {
        let ids: Vec<String> = field(&body, "sourceServerIDs")?;
        if ids.is_empty() || ids.len() > 200 {
            return Err(ApiError::validation(
                "sourceServerIDs must name 1 to 200 source servers",
            ));
        }
        let engine_ids = ids
            .iter()
            .map(|id| self.engine_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let job = self
            .engine
            .start_launch(kind, &engine_ids, &PointInTime::Latest)
            .await?;
        let mgn = self.mgn_job(&job.id);
        Ok(axum::Json(json!({ "job": self.job(&mgn).await? })))
    }

    async fn describe_jobs(&self, body: Value) -> Answer {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Filters {
            #[serde(rename = "jobIDs")]
            job_ids: Option<Vec<String>>,
        }
        let filters: Filters = field(&body, "filters")?;
        let (start, max) = page(&body)?;
        let ids: Vec<String> = Self::lock(&self.jobs).keys().cloned().collect();
        let mut items = Vec::new();
        for mgn in ids {
            if !listed(&filters.job_ids, &mgn) {
                continue;
            }
            items.push(self.job(&mgn).await?);
        }
        Ok(axum::Json(paged(items, start, max)))
    }

    async fn change_life_cycle(&self, body: Value) -> Answer {
        let mgn: String = field(&body, "sourceServerID")?;
        let state: String = body["lifeCycle"]["state"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::validation("lifeCycle.state is required"))?;
        let to = match state.as_str() {
            "READY_FOR_TEST" => LifeCycle::ReadyForTest,
            "READY_FOR_CUTOVER" => LifeCycle::ReadyForCutover,
            "CUTOVER" => LifeCycle::Cutover,
            other => {
                return Err(ApiError::validation(format!(
                    "lifeCycle.state `{other}` is not one of READY_FOR_TEST, READY_FOR_CUTOVER, CUTOVER"
                )));
            }
        };
        let id = self.engine_id(&mgn)?;
        self.engine.change_life_cycle(&id, to).await?;
        Ok(axum::Json(self.source_server(&mgn).await?))
    }

    async fn on_source(&self, body: Value, what: &str) -> Answer {
        let mgn: String = field(&body, "sourceServerID")?;
        let id = self.engine_id(&mgn)?;
        match what {
            "FinalizeCutover" => self.engine.finalize_cutover(&id).await?,
            "MarkAsArchived" => self.engine.archive(&id).await?,
            _ => return Err(ApiError::validation(format!("unknown operation {what}"))),
        }
        Ok(axum::Json(self.source_server(&mgn).await?))
    }

    async fn terminate_targets(&self, body: Value) -> Answer {
        let ids: Vec<String> = field(&body, "sourceServerIDs")?;
        if ids.is_empty() || ids.len() > 200 {
            return Err(ApiError::validation(
                "sourceServerIDs must name 1 to 200 source servers",
            ));
        }
        for mgn in &ids {
            let id = self.engine_id(mgn)?;
            // MGN terminates the test instances of servers in testing, the cutover
            // instances otherwise; the engine refuses while a cutover is in progress.
            let source = self.engine.describe_source(&id).await?;
            let kind = match source.life_cycle {
                LifeCycle::Testing | LifeCycle::ReadyForTest | LifeCycle::ReadyForCutover => {
                    LaunchKind::Test
                }
                _ => LaunchKind::Cutover,
            };
            self.engine.terminate_targets(&id, kind).await?;
            self.terminate_instances(&id, kind).await?;
        }
        let created = timestamp(jiff::Timestamp::now());
        let mgn = {
            let mut jobs = Self::lock(&self.jobs);
            let mgn = mgn_job_id(region_code(&self.region), jobs.len() + 1);
            jobs.insert(
                mgn.clone(),
                JobRecord::Terminate {
                    created,
                    servers: ids,
                },
            );
            mgn
        };
        Ok(axum::Json(json!({ "job": self.job(&mgn).await? })))
    }
}

impl MgnApi {
    /// Terminates in the emulator the instances of the source's targets of this kind.
    async fn terminate_instances(&self, id: &SourceId, kind: LaunchKind) -> Result<(), ApiError> {
        let Some(ec2) = &self.ec2 else {
            return Ok(());
        };
        let jobs = self.engine.jobs_for_source(id).await?;
        let instances = self.instances.lock().await;
        let running: Vec<String> = jobs
            .iter()
            .filter(|job| job.kind == kind)
            .flat_map(|job| job.servers.iter())
            .filter(|slot| slot.source == *id)
            .filter_map(|slot| instances.get(&slot.target.as_ref()?.0).cloned())
            .collect();
        drop(instances);
        ec2.terminate(&running).await.map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                format!("terminating in EC2: {err:#}"),
            )
        })
    }

    /// StartReplication, StopReplication, PauseReplication, ResumeReplication, with MGN's
    /// rules: only a replicating server is paused or stopped, only a paused one resumed,
    /// only a stopped one started; never a cut-over or archived one.
    async fn control_replication(&self, body: Value, operation: &str) -> Answer {
        let mgn: String = field(&body, "sourceServerID")?;
        let server = self.source_server(&mgn).await?;
        let state = server["dataReplicationInfo"]["dataReplicationState"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let life = server["lifeCycle"]["state"].as_str().unwrap_or_default();
        if server["isArchived"] == json!(true) || life == "CUTOVER" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ConflictException",
                format!("Cannot {operation} for source server {mgn}: it is {life}"),
            ));
        }
        let (allowed, to) = match operation {
            "PauseReplication" => (
                !["PAUSED", "STOPPED", "DISCONNECTED"].contains(&state.as_str()),
                Some(ReplicationState::Paused),
            ),
            "StopReplication" => (state != "STOPPED", Some(ReplicationState::Stopped)),
            "ResumeReplication" => (state == "PAUSED", None),
            _ => (state == "STOPPED", None),
        };
        if !allowed {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ConflictException",
                format!("Cannot {operation} for source server {mgn} in replication state {state}"),
            ));
        }
        if let Some(source) = Self::lock(&self.sources).get_mut(&mgn) {
            source.control = to;
        }
        Ok(axum::Json(self.source_server(&mgn).await?))
    }

    /// A LaunchConfiguration object of MGN's API reference.
    fn launch_configuration(&self, mgn: &str) -> Result<Value, ApiError> {
        let source = Self::lock(&self.sources)
            .get(mgn)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Source server {mgn} not found")))?;
        Ok(json!({
            "sourceServerID": mgn,
            "name": source.hints.hostname,
            "ec2LaunchTemplateID": source.template,
            "launchDisposition": "STARTED",
            "targetInstanceTypeRightSizingMethod": source.right_sizing,
            "copyPrivateIp": false,
            "copyTags": false,
            "bootMode": "LEGACY_BIOS",
            "licensing": { "osByol": false },
            "postLaunchEnabled": false,
            "enableMapAutoTagging": false,
        }))
    }

    async fn get_launch_configuration(&self, body: Value) -> Answer {
        let mgn: String = field(&body, "sourceServerID")?;
        Ok(axum::Json(self.launch_configuration(&mgn)?))
    }

    async fn update_launch_configuration(&self, body: Value) -> Answer {
        let mgn: String = field(&body, "sourceServerID")?;
        let sizing: Option<String> = field(&body, "targetInstanceTypeRightSizingMethod")?;
        if let Some(sizing) = &sizing
            && !["NONE", "BASIC", "IN_AWS"].contains(&sizing.as_str())
        {
            return Err(ApiError::validation(format!(
                "targetInstanceTypeRightSizingMethod `{sizing}` is not one of NONE, BASIC, IN_AWS"
            )));
        }
        {
            let mut sources = Self::lock(&self.sources);
            let source = sources
                .get_mut(&mgn)
                .ok_or_else(|| ApiError::not_found(format!("Source server {mgn} not found")))?;
            if let Some(sizing) = sizing {
                source.right_sizing = sizing;
            }
        }
        Ok(axum::Json(self.launch_configuration(&mgn)?))
    }

    /// A launch job's log: its start, each server's launch (failed ones with the
    /// engine's reason as rawError), its end.
    async fn describe_job_log_items(&self, body: Value) -> Answer {
        let mgn: String = field(&body, "jobID")?;
        let (start, max) = page(&body)?;
        let record = Self::lock(&self.jobs)
            .get(&mgn)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Job {mgn} not found")))?;
        let mut items = Vec::new();
        let at = |t: jiff::Timestamp| json!(timestamp(t));
        match record {
            JobRecord::Terminate { created, servers } => {
                items.push(json!({ "logDateTime": created, "event": "JOB_START" }));
                for server in servers {
                    items.push(json!({
                        "logDateTime": created,
                        "event": "CLEANUP_END",
                        "eventData": { "sourceServerID": server },
                    }));
                }
                items.push(json!({ "logDateTime": created, "event": "JOB_END" }));
            }
            JobRecord::Launch(id) => {
                let job: Job = self.engine.describe_job(&id).await?;
                items.push(json!({ "logDateTime": at(job.created_at), "event": "JOB_START" }));
                for slot in &job.servers {
                    let source = self.mgn_id(&slot.source).unwrap_or_default();
                    if slot.status == LaunchStatus::Pending {
                        continue;
                    }
                    items.push(json!({
                        "logDateTime": at(job.created_at),
                        "event": "LAUNCH_START",
                        "eventData": { "sourceServerID": source },
                    }));
                    if slot.status == LaunchStatus::Failed {
                        items.push(json!({
                            "logDateTime": at(job.created_at),
                            "event": "LAUNCH_FAILED",
                            "eventData": {
                                "sourceServerID": source,
                                "rawError": slot.message.clone().unwrap_or_else(|| "the launch failed".to_owned()),
                            },
                        }));
                    }
                }
                if job.status == JobStatus::Completed {
                    items.push(
                        json!({ "logDateTime": at(jiff::Timestamp::now()), "event": "JOB_END" }),
                    );
                }
            }
        }
        Ok(axum::Json(paged(items, start, max)))
    }
}

/// A field of the request body, decoded; a missing or malformed one is MGN's
/// ValidationException naming it.
fn field<T: serde::de::DeserializeOwned + Default>(
    body: &Value,
    name: &str,
) -> Result<T, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|err| ApiError::validation(format!("{name}: {err}"))),
    }
}

/// Whether `id` passes a filter of ids (none, or an empty list, passes all).
fn listed(filter: &Option<Vec<String>>, id: &str) -> bool {
    filter
        .as_ref()
        .is_none_or(|ids| ids.is_empty() || ids.iter().any(|i| i == id))
}

/// `maxResults` (1 to 1000) and `nextToken` (an offset this server gave).
fn page(body: &Value) -> Result<(usize, usize), ApiError> {
    let max = match body.get("maxResults").and_then(Value::as_u64) {
        None => 1000,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::validation(format!(
                "maxResults {n} is not between 1 and 1000"
            )));
        }
    };
    let start = match body.get("nextToken").and_then(Value::as_str) {
        None | Some("") => 0,
        Some(token) => token.parse().map_err(|_| {
            ApiError::validation(format!("nextToken `{token}` is not one this server gave"))
        })?,
    };
    Ok((start, max))
}

fn paged(items: Vec<Value>, start: usize, max: usize) -> Value {
    let end = (start + max).min(items.len());
    let page: Vec<Value> = items
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut answer = json!({ "items": page });
    if end < items.len() {
        answer["nextToken"] = json!(end.to_string());
    }
    answer
}

async fn operation(
    State(api): State<Arc<MgnApi>>,
    Path(operation): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(err) => {
                return ApiError::validation(format!("the body is not JSON: {err}"))
                    .into_response();
            }
        }
    };
    let answer = match operation.as_str() {
        "DescribeSourceServers" => api.describe_source_servers(body).await,
        "StartTest" => api.start_launch(body, LaunchKind::Test).await,
        "StartCutover" => api.start_launch(body, LaunchKind::Cutover).await,
        "DescribeJobs" => api.describe_jobs(body).await,
        "DescribeJobLogItems" => api.describe_job_log_items(body).await,
        "StartReplication" | "StopReplication" | "PauseReplication" | "ResumeReplication" => {
            api.control_replication(body, &operation).await
        }
        "GetLaunchConfiguration" => api.get_launch_configuration(body).await,
        "UpdateLaunchConfiguration" => api.update_launch_configuration(body).await,
        "ChangeServerLifeCycleState" => api.change_life_cycle(body).await,
        "FinalizeCutover" | "MarkAsArchived" => api.on_source(body, &operation).await,
        "TerminateTargetInstances" => api.terminate_targets(body).await,
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("this MGN endpoint does not implement {other}"),
        )),
    };
    match answer {
        Ok(json) => json.into_response(),
        Err(err) => err.into_response(),
    }
}
