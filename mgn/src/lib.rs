//! The `mgn` engine: AWS Application Migration Service through the AWS SDK for Rust.
//!
//! MGN's source servers come into being when their replication agent is installed, so
//! registering a wave's server here is finding it: by hostname, FQDN or IP among the
//! identification hints MGN shows ([`matches`]); none, or more than one, is an error that
//! says which. Ids are MGN's own (`s-...` for sources, `mgnjob-...` for jobs, the EC2
//! instance id for targets). Errors keep MGN's meaning: ConflictException is a broken
//! life-cycle rule, ServiceQuotaExceededException a quota, ThrottlingException is
//! retried (by the SDK with backoff, then by the executor).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_mgn::Client;
use aws_sdk_mgn::error::ProvideErrorMetadata as _;
use aws_sdk_mgn::types as mgn;
use replication::{
    EngineError, EngineResult, ErrorKind, Health, Job, JobId, JobServer, JobStatus, LaunchKind,
    LaunchStatus, LifeCycle, PointInTime, Quotas, RecoveryPoint, Replication, ReplicationEngine,
    ReplicationState, SourceId, SourceServer, SourceSpec, Target, TargetId, TargetState,
};

/// Where and as whom the engine reaches MGN.
#[derive(Debug, Clone, Default)]
pub struct MgnSettings {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    /// Another endpoint (a test's `wavelift sim serve-mgn`, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Keys given directly (access key id, secret) instead of the standard chain: for
    /// tests against a loopback endpoint, never read from a configuration file.
    pub keys: Option<(String, String)>,
}

pub struct MgnEngine {
    client: Client,
    /// The source each wave server was matched to, by its name: a server matched by its
    /// FQDN or IP is found again by name by the tasks after agent_push.
    matched: std::sync::Mutex<std::collections::HashMap<String, SourceId>>,
}

/// A bound on the pages one listing reads (1,000 items each), so a token that never
/// ends cannot keep a task in a loop.
const MAX_PAGES: usize = 100;

/// MGN's quotas: servers per launch job, concurrent jobs, servers across active jobs.
const QUOTAS: Quotas = Quotas {
    max_servers_per_job: 200,
    max_concurrent_jobs: 20,
    max_servers_in_active_jobs: 200,
};

impl MgnEngine {
    /// A client of MGN in the settings' Region, credentials from the standard AWS chain
    /// (or the profile), the role assumed when one is given.
    pub async fn connect(settings: &MgnSettings) -> MgnEngine {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(settings.region.clone()))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some((id, secret)) = &settings.keys {
            loader = loader.credentials_provider(aws_sdk_mgn::config::Credentials::new(
                id, secret, None, None, "wavelift",
            ));
        }
        let mut config = loader.load().await;
        if let Some(role) = &settings.role_arn {
            let assumed = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("wavelift")
                .configure(&config)
                .build()
                .await;
            config = config
                .into_builder()
                .credentials_provider(aws_sdk_mgn::config::SharedCredentialsProvider::new(assumed))
                .build();
        }
        // The other endpoint is MGN's only: the role is still assumed through STS.
        let mut client = aws_sdk_mgn::config::Builder::from(&config);
        if let Some(endpoint) = &settings.endpoint {
            client = client.endpoint_url(endpoint);
        }
        MgnEngine {
            client: Client::from_conf(client.build()),
            matched: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Every source server MGN has (all pages).
    async fn all_sources(&self) -> EngineResult<Vec<mgn::SourceServer>> {
        let mut servers = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .describe_source_servers()
                .max_results(1000)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|err| sdk_error("DescribeSourceServers", &err))?;
            servers.extend(page.items().iter().cloned());
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
                _ => return Ok(servers),
            }
        }
        Err(EngineError::new(
            ErrorKind::Unavailable,
            format!("MGN DescribeSourceServers gave more than {MAX_PAGES} pages"),
        ))
    }

    async fn source(&self, id: &SourceId) -> EngineResult<mgn::SourceServer> {
        let filters = mgn::DescribeSourceServersRequestFilters::builder()
            .source_server_ids(&id.0)
            .build();
        let page = self
            .client
            .describe_source_servers()
            .filters(filters)
            .send()
            .await
            .map_err(|err| sdk_error("DescribeSourceServers", &err))?;
        page.items()
            .iter()
            .find(|s| s.source_server_id() == Some(id.0.as_str()))
            .cloned()
            .ok_or_else(|| {
                EngineError::new(
                    ErrorKind::NotFound,
                    format!("MGN has no source server {id}"),
                )
            })
    }

    /// The one source server that is this wave server, or why not.
    async fn matching(
        &self,
        name: &str,
        hostname: Option<&str>,
    ) -> EngineResult<Option<mgn::SourceServer>> {
        let all = self.all_sources().await?;
        let found: Vec<&mgn::SourceServer> = all
            .iter()
            .filter(|s| !s.is_archived().unwrap_or(false) && matches(s, name, hostname))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(EngineError::new(
                ErrorKind::Conflict,
                format!(
                    "{name} matches {} MGN source servers ({}): give it the intended one's id, or archive the others",
                    many.len(),
                    many.iter()
                        .filter_map(|s| s.source_server_id())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn job(&self, id: &JobId) -> EngineResult<mgn::Job> {
        let filters = mgn::DescribeJobsRequestFilters::builder()
            .job_ids(&id.0)
            .build();
        let page = self
            .client
            .describe_jobs()
            .filters(filters)
            .send()
            .await
            .map_err(|err| sdk_error("DescribeJobs", &err))?;
        page.items()
            .iter()
            .find(|j| j.job_id() == id.0)
            .cloned()
            .ok_or_else(|| EngineError::new(ErrorKind::NotFound, format!("MGN has no job {id}")))
    }
}

/// Whether an MGN source server is the wave's server `name` (whose FQDN or IP is
/// `hostname`): by hostname, FQDN (or its first label) or an IP of its interfaces.
pub fn matches(server: &mgn::SourceServer, name: &str, hostname: Option<&str>) -> bool {
    let Some(properties) = server.source_properties() else {
        return false;
    };
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if let Some(hints) = properties.identification_hints() {
        if hints.hostname().is_some_and(|h| same(h, name)) {
            return true;
        }
        if let Some(fqdn) = hints.fqdn() {
            let label = fqdn.split('.').next().unwrap_or(fqdn);
            if same(label, name) || hostname.is_some_and(|h| same(fqdn, h)) {
                return true;
            }
        }
    }
    hostname.is_some_and(|h| {
        properties
            .network_interfaces()
            .iter()
            .any(|nic| nic.ips().iter().any(|ip| ip == h))
    })
}

fn sdk_error<E, R>(operation: &str, err: &aws_sdk_mgn::error::SdkError<E, R>) -> EngineError
where
    E: aws_sdk_mgn::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match err.code() {
        Some("ThrottlingException") => ErrorKind::Throttled,
        Some("ConflictException") => ErrorKind::Conflict,
        Some("ResourceNotFoundException") => ErrorKind::NotFound,
        Some("ValidationException") => ErrorKind::Invalid,
        Some("ServiceQuotaExceededException") => ErrorKind::QuotaExceeded,
        Some("AccessDeniedException") | Some("UninitializedAccountException") => ErrorKind::Invalid,
        _ => ErrorKind::Unavailable,
    };
    let said = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}", aws_sdk_mgn::error::DisplayErrorContext(err)));
    let code = err.code().map(|c| format!("{c}: ")).unwrap_or_default();
    EngineError::new(kind, format!("MGN {operation}: {code}{said}"))
}

fn replication_state(state: Option<&mgn::DataReplicationState>) -> ReplicationState {
    use mgn::DataReplicationState as S;
    match state {
        Some(S::Initiating) | Some(S::PendingSnapshotShipping) | None => {
            ReplicationState::Initiating
        }
        Some(S::InitialSync) | Some(S::ShippingSnapshot) => ReplicationState::InitialSync,
        Some(S::Backlog) => ReplicationState::Backlog,
        Some(S::CreatingSnapshot) => ReplicationState::CreatingSnapshot,
        Some(S::Continuous) => ReplicationState::Continuous,
        Some(S::Paused) => ReplicationState::Paused,
        Some(S::Rescan) => ReplicationState::Rescan,
        Some(S::Stalled) => ReplicationState::Stalled,
        Some(S::Disconnected) | Some(S::Stopped) | Some(_) => ReplicationState::Disconnected,
    }
}

fn life_cycle(server: &mgn::SourceServer) -> LifeCycle {
    use mgn::LifeCycleState as S;
    if server.is_archived().unwrap_or(false) {
        return LifeCycle::Archived;
    }
    match server.life_cycle().and_then(|l| l.state()) {
        Some(S::ReadyForTest) => LifeCycle::ReadyForTest,
        Some(S::Testing) => LifeCycle::Testing,
        Some(S::ReadyForCutover) => LifeCycle::ReadyForCutover,
        Some(S::CuttingOver) => LifeCycle::CuttingOver,
        Some(S::Cutover) => LifeCycle::Cutover,
        Some(S::Disconnected) | Some(S::Stopped) => LifeCycle::Disconnected,
        _ => LifeCycle::NotReady,
    }
}

/// `PT1H2M3S` (ISO 8601, as MGN writes lagDuration) in seconds.
pub fn iso_seconds(text: &str) -> Option<f64> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((days, time)) => (days, time),
        None => (rest, ""),
    };
    let mut seconds = 0.0;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
            } else {
                let scale = units.iter().find(|(u, _)| *u == c)?.1;
                seconds += number.parse::<f64>().ok()? * scale;
                number.clear();
            }
        }
        number.is_empty().then_some(())
    };
    take(days, &[('D', 86_400.0), ('W', 604_800.0)])?;
    take(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    Some(seconds)
}

fn view(server: &mgn::SourceServer) -> SourceServer {
    let info = server.data_replication_info();
    let disks = info.map(|i| i.replicated_disks()).unwrap_or_default();
    let sum = |f: fn(&mgn::DataReplicationInfoReplicatedDisk) -> i64| -> u64 {
        disks.iter().map(|d| f(d).max(0) as u64).sum()
    };
    let eta_seconds = info
        .and_then(|i| i.eta_date_time())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|at| (at.as_millisecond() - jiff::Timestamp::now().as_millisecond()) as f64 / 1000.0)
        .map(|s| s.max(0.0));
    let hints = server
        .source_properties()
        .and_then(|p| p.identification_hints());
    SourceServer {
        id: SourceId(server.source_server_id().unwrap_or_default().to_owned()),
        name: hints
            .and_then(|h| h.hostname())
            .unwrap_or_default()
            .to_owned(),
        replication: Replication {
            state: replication_state(info.and_then(|i| i.data_replication_state())),
            lag_seconds: info.and_then(|i| i.lag_duration()).and_then(iso_seconds),
            backlog_bytes: sum(|d| d.backlogged_storage_bytes()),
            replicated_bytes: sum(|d| d.replicated_storage_bytes()),
            total_bytes: sum(|d| d.total_storage_bytes()),
            eta_seconds,
        },
        life_cycle: life_cycle(server),
    }
}

fn job_view(job: &mgn::Job) -> Job {
    let kind = match job.initiated_by() {
        Some(mgn::InitiatedBy::StartCutover) => LaunchKind::Cutover,
        _ => LaunchKind::Test,
    };
    let status = match job.status() {
        Some(mgn::JobStatus::Completed) => JobStatus::Completed,
        Some(mgn::JobStatus::Started) => JobStatus::Started,
        _ => JobStatus::Pending,
    };
    Job {
        id: JobId(job.job_id().to_owned()),
        kind,
        status,
        created_at: job
            .creation_date_time()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now),
        servers: job
            .participating_servers()
            .iter()
            .map(|s| JobServer {
                source: SourceId(s.source_server_id().to_owned()),
                status: match s.launch_status() {
                    Some(mgn::LaunchStatus::Launched) => LaunchStatus::Launched,
                    Some(mgn::LaunchStatus::Failed) => LaunchStatus::Failed,
                    Some(mgn::LaunchStatus::Terminated) => LaunchStatus::Terminated,
                    Some(mgn::LaunchStatus::InProgress) => LaunchStatus::InProgress,
                    _ => LaunchStatus::Pending,
                },
                target: s.launched_ec2_instance_id().map(|i| TargetId(i.to_owned())),
                message: None,
            })
            .collect(),
    }
}

#[async_trait]
impl ReplicationEngine for MgnEngine {
    fn name(&self) -> &'static str {
        "mgn"
    }

    fn is_rehearsal(&self) -> bool {
        false
    }

    fn quotas(&self) -> Quotas {
        QUOTAS
    }

    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>> {
        let known = self
            .matched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(id) = known {
            let server = self.source(&id).await?;
            if !server.is_archived().unwrap_or(false) {
                return Ok(Some(view(&server)));
            }
        }
        Ok(self.matching(name, None).await?.as_ref().map(view))
    }

    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer> {
        match self.matching(&spec.name, spec.hostname.as_deref()).await? {
            Some(server) => {
                let view = view(&server);
                self.matched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(spec.name.clone(), view.id.clone());
                Ok(view)
            }
            None => Err(EngineError::new(
                ErrorKind::NotFound,
                format!(
                    "no MGN source server is {} (by hostname, FQDN{}): install the MGN replication agent on it, or check its name and address in the wave file",
                    spec.name,
                    spec.hostname
                        .as_deref()
                        .map(|h| format!(" or {h}"))
                        .unwrap_or_default()
                ),
            )),
        }
    }

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer> {
        Ok(view(&self.source(id).await?))
    }

    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job> {
        if let PointInTime::RecoveryPoint(id) = point {
            return Err(EngineError::new(
                ErrorKind::Invalid,
                format!("MGN launches from the latest data only, not from recovery point {id}"),
            ));
        }
        let ids: Vec<String> = sources.iter().map(|s| s.0.clone()).collect();
        let job = match kind {
            LaunchKind::Test => self
                .client
                .start_test()
                .set_source_server_ids(Some(ids))
                .send()
                .await
                .map_err(|err| sdk_error("StartTest", &err))?
                .job()
                .cloned(),
            LaunchKind::Cutover => self
                .client
                .start_cutover()
                .set_source_server_ids(Some(ids))
                .send()
                .await
                .map_err(|err| sdk_error("StartCutover", &err))?
                .job()
                .cloned(),
        };
        job.map(|j| job_view(&j)).ok_or_else(|| {
            EngineError::new(
                ErrorKind::Unavailable,
                "MGN started a launch but returned no job",
            )
        })
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        Ok(job_view(&self.job(id).await?))
    }

    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>> {
        let mut jobs = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .describe_jobs()
                .max_results(1000)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|err| sdk_error("DescribeJobs", &err))?;
            jobs.extend(
                page.items()
                    .iter()
                    .filter(|j| j.r#type() == Some(&mgn::JobType::Launch))
                    .filter(|j| {
                        j.participating_servers()
                            .iter()
                            .any(|s| s.source_server_id() == id.0)
                    })
                    .map(job_view),
            );
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
                _ => {
                    jobs.sort_by_key(|j| j.created_at);
                    return Ok(jobs);
                }
            }
        }
        Err(EngineError::new(
            ErrorKind::Unavailable,
            format!("MGN DescribeJobs gave more than {MAX_PAGES} pages"),
        ))
    }

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target> {
        // The instance is the one a source's latest launch made; its first boot is
        // MGN's word on its health (EC2's status checks come with the EC2 client).
        let all = self.all_sources().await?;
        let server = all
            .iter()
            .find(|s| {
                s.launched_instance().and_then(|i| i.ec2_instance_id()) == Some(id.0.as_str())
            })
            .ok_or_else(|| {
                EngineError::new(
                    ErrorKind::NotFound,
                    format!("no MGN source server launched instance {id}"),
                )
            })?;
        let instance = server.launched_instance();
        let job = match instance.and_then(|i| i.job_id()) {
            Some(job) => Some(self.job(&JobId(job.to_owned())).await?),
            None => None,
        };
        let kind = job
            .as_ref()
            .map(|j| job_view(j).kind)
            .unwrap_or(LaunchKind::Test);
        let health = match instance.and_then(|i| i.first_boot()) {
            Some(mgn::FirstBoot::Succeeded) => Health::Ok,
            Some(mgn::FirstBoot::Stopped) => Health::Impaired,
            _ => Health::Initializing,
        };
        Ok(Target {
            id: id.clone(),
            source: SourceId(server.source_server_id().unwrap_or_default().to_owned()),
            kind,
            state: TargetState::Running,
            health,
            address: None,
            launched_at: job
                .as_ref()
                .and_then(|j| j.creation_date_time())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(jiff::Timestamp::now),
        })
    }

    async fn terminate_targets(&self, id: &SourceId, _kind: LaunchKind) -> EngineResult<()> {
        self.client
            .terminate_target_instances()
            .source_server_ids(&id.0)
            .send()
            .await
            .map_err(|err| sdk_error("TerminateTargetInstances", &err))?;
        Ok(())
    }

    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()> {
        self.client
            .finalize_cutover()
            .source_server_id(&id.0)
            .send()
            .await
            .map_err(|err| sdk_error("FinalizeCutover", &err))?;
        Ok(())
    }

    async fn change_life_cycle(&self, id: &SourceId, to: LifeCycle) -> EngineResult<()> {
        use mgn::ChangeServerLifeCycleStateSourceServerLifecycleState as S;
        let state = match to {
            LifeCycle::ReadyForTest => S::ReadyForTest,
            LifeCycle::ReadyForCutover => S::ReadyForCutover,
            LifeCycle::Cutover => S::Cutover,
            other => {
                return Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!("MGN does not set a life cycle to {other:?}"),
                ));
            }
        };
        let life_cycle = mgn::ChangeServerLifeCycleStateSourceServerLifecycle::builder()
            .state(state)
            .build()
            .map_err(|err| EngineError::new(ErrorKind::Invalid, err.to_string()))?;
        self.client
            .change_server_life_cycle_state()
            .source_server_id(&id.0)
            .life_cycle(life_cycle)
            .send()
            .await
            .map_err(|err| sdk_error("ChangeServerLifeCycleState", &err))?;
        Ok(())
    }

    async fn archive(&self, id: &SourceId) -> EngineResult<()> {
        self.client
            .mark_as_archived()
            .source_server_id(&id.0)
            .send()
            .await
            .map_err(|err| sdk_error("MarkAsArchived", &err))?;
        Ok(())
    }

    async fn recovery_points(&self, _id: &SourceId) -> EngineResult<Vec<RecoveryPoint>> {
        // MGN launches from the latest data; it keeps no points a launch could name.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_durations_read_as_seconds() {
        assert_eq!(iso_seconds("PT0H1M30S"), Some(90.0));
        assert_eq!(iso_seconds("PT2H"), Some(7200.0));
        assert_eq!(iso_seconds("P1DT1S"), Some(86_401.0));
        assert_eq!(iso_seconds("PT0.5S"), Some(0.5));
        assert_eq!(iso_seconds("1 minute"), None);
        assert_eq!(iso_seconds("PT5X"), None);
    }
}
