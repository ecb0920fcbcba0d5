//! The `mgn` engine: AWS Application Migration Service through the AWS SDK for Rust.
//!
//! MGN's source servers come into being when their replication agent is installed, so
//! registering a wave's server here is finding it: by the user-provided id agent_push's
//! install gave it, else by hostname, FQDN or IP among the identification hints MGN
//! shows ([`matched_by`]); none, or more than one, is an error that says which. Ids are MGN's own (`s-...` for sources, `mgnjob-...` for jobs, the EC2
//! instance id for targets). Errors keep MGN's meaning: ConflictException is a broken
//! life-cycle rule, ServiceQuotaExceededException a quota, ThrottlingException is
//! retried (by the SDK with backoff, then by the executor).
//!
//! EC2 ([`ec2`]) checks a blueprint before its launch and makes it the source's launch
//! template's default version, and judges a launched instance by its status checks.

pub mod ec2;
pub mod fleet;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_mgn::Client;
use aws_sdk_mgn::error::ProvideErrorMetadata as _;
use aws_sdk_mgn::types as mgn;
use replication::{
    AgentInstall, EngineError, EngineResult, ErrorKind, Job, JobId, JobServer, JobStatus,
    LaunchKind, LaunchSettings, LaunchStatus, LifeCycle, PointInTime, Quotas, RecoveryPoint,
    Replication, ReplicationAction, ReplicationEngine, ReplicationState, SourceId, SourceServer,
    SourceSpec, Target, TargetId, TargetState,
};

/// Where and as whom the engine reaches MGN.
#[derive(Debug, Clone, Default)]
pub struct MgnSettings {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    /// Another MGN endpoint (a test's `wavelift sim serve-mgn`, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Another EC2 endpoint (a test's moto server, a VPC endpoint).
    pub ec2_endpoint: Option<String>,
    /// Keys given directly (access key id, secret) instead of the standard chain: for
    /// tests against a loopback endpoint, never read from a configuration file.
    pub keys: Option<(String, String)>,
    /// The wave files' servers on this engine: their FQDN, IP and given MGN id.
    pub servers: Vec<Wanted>,
    /// How agent_push installs MGN's agent; `None`: it is installed by hand.
    pub agent: Option<AgentSettings>,
}

/// The installer's keys, read when an install needs them: the access key id, the secret
/// access key and an optional session token, separated by white space.
pub type ReadKeys = std::sync::Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// How agent_push installs MGN's replication agent on a Linux source:
/// `templates/agents/mgn.sh.hbs` downloads MGN's installer there, checks its SHA-512 and
/// runs it, the keys reaching the script on its standard input (in no file); MGN's
/// installer takes them as options, so they are on its command line while it runs.
#[derive(Clone)]
pub struct AgentSettings {
    pub keys: ReadKeys,
    /// The installer's address; default: MGN's bucket of the Region.
    pub installer_url: Option<String>,
    /// `--endpoint` and `--s3-endpoint` (VPC endpoints).
    pub endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("installer_url", &self.installer_url)
            .field("endpoint", &self.endpoint)
            .field("s3_endpoint", &self.s3_endpoint)
            .finish_non_exhaustive()
    }
}

/// The installer's address and that of its SHA-512: MGN's buckets of the Region (the
/// installer's documented form), or `.sha512` beside a given installer.
pub fn installer_urls(region: &str, given: Option<&str>) -> (String, String) {
    const PATH: &str = "latest/linux/aws-replication-installer-init";
    match given {
        Some(url) => (url.to_owned(), format!("{url}.sha512")),
        None => (
            format!(
                "https://aws-application-migration-service-{region}.s3.{region}.amazonaws.com/{PATH}"
            ),
            format!(
                "https://aws-application-migration-service-hashes-{region}.s3.{region}.amazonaws.com/{PATH}.sha512"
            ),
        ),
    }
}

/// The installer's keys as the template reads them: one per line (the session token's
/// line empty for long-term keys). Only the number of parts is said in an error.
pub fn installer_keys(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [id, secret] => Ok(format!("{id}\n{secret}\n\n")),
        [id, secret, token] => Ok(format!("{id}\n{secret}\n{token}\n")),
        _ => Err(format!(
            "the installer's credential holds {} part(s): it must hold the access key id, the secret access key and, for temporary keys, the session token, separated by white space",
            parts.len()
        )),
    }
}

pub struct MgnEngine {
    client: Client,
    ec2: ec2::Ec2,
    region: String,
    /// The wave servers by name (see `MgnSettings::servers`).
    wanted: HashMap<String, Wanted>,
    /// The source each wave server was matched to, by its name: a server matched by its
    /// FQDN or IP is found again by name by the tasks after agent_push.
    matched: Mutex<HashMap<String, SourceId>>,
    /// The instances seen in launch jobs: their source, kind and launch time, so a
    /// target is described without listing every source server.
    launched: Mutex<HashMap<String, (SourceId, LaunchKind, jiff::Timestamp)>>,
    /// When each instance was first looked for in EC2, and those EC2 has listed: an
    /// instance EC2 does not list is pending until listed or ten minutes old.
    first_looked: Mutex<HashMap<String, jiff::Timestamp>>,
    listed: Mutex<std::collections::HashSet<String>>,
    agent: Option<AgentSettings>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A bound on the pages one listing reads (1,000 items each), so a token that never
/// ends cannot keep a task in a loop.
pub(crate) const MAX_PAGES: usize = 100;

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
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&config);
        if let Some(endpoint) = &settings.ec2_endpoint {
            ec2 = ec2.endpoint_url(endpoint);
        }
        MgnEngine {
            client: Client::from_conf(client.build()),
            ec2: ec2::Ec2::new(
                aws_sdk_ec2::Client::from_conf(ec2.build()),
                &settings.region,
            ),
            region: settings.region.clone(),
            wanted: settings
                .servers
                .iter()
                .map(|w| (w.name.clone(), w.clone()))
                .collect(),
            matched: Mutex::new(HashMap::new()),
            launched: Mutex::new(HashMap::new()),
            first_looked: Mutex::new(HashMap::new()),
            listed: Mutex::new(std::collections::HashSet::new()),
            agent: settings.agent.clone(),
        }
    }

    /// The source, kind and launch time of an instance this engine has not seen in a
    /// job yet (after a restart): the source whose latest launch made it.
    async fn launch_of(
        &self,
        id: &TargetId,
    ) -> EngineResult<(SourceId, LaunchKind, jiff::Timestamp)> {
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
        let source = SourceId(server.source_server_id().unwrap_or_default().to_owned());
        let job = match server.launched_instance().and_then(|i| i.job_id()) {
            Some(job) => Some(job_view(&self.job(&JobId(job.to_owned())).await?)),
            None => None,
        };
        match job {
            Some(job) => {
                self.remember(&job);
                Ok((source, job.kind, job.created_at))
            }
            None => Ok((source, LaunchKind::Test, jiff::Timestamp::now())),
        }
    }

    /// Keeps the instances of a job in mind (see `launched`).
    fn remember(&self, job: &Job) {
        let mut launched = lock(&self.launched);
        for slot in &job.servers {
            if let Some(target) = &slot.target {
                launched.insert(
                    target.0.clone(),
                    (slot.source.clone(), job.kind, job.created_at),
                );
            }
        }
    }

    /// A job's entries, each failed one with MGN's reason from the job's log: the
    /// first fatal event of the server (later ones, a clean-up failing after a failed
    /// conversion, follow from it). Best effort: a log that cannot be read is said in
    /// the reason, and never hides the failure itself.
    async fn explain_failures(&self, job: &mut Job) {
        if !job
            .servers
            .iter()
            .any(|s| s.status == LaunchStatus::Failed && s.message.is_none())
        {
            return;
        }
        let reasons = match self.job_log_failures(&job.id).await {
            Ok(reasons) => reasons,
            Err(err) => {
                for slot in &mut job.servers {
                    if slot.status == LaunchStatus::Failed && slot.message.is_none() {
                        slot.message = Some(format!(
                            "MGN job {} failed it (its log could not be read: {})",
                            job.id, err.message
                        ));
                    }
                }
                return;
            }
        };
        for slot in &mut job.servers {
            if slot.status == LaunchStatus::Failed && slot.message.is_none() {
                slot.message = Some(match reasons.get(&slot.source.0) {
                    Some(reason) => format!("MGN job {} says {reason}", job.id),
                    None => format!("MGN job {} failed it without a log entry", job.id),
                });
            }
        }
    }

    /// The first fatal event of each server in a job's log.
    async fn job_log_failures(&self, job: &JobId) -> EngineResult<HashMap<String, String>> {
        let mut reasons: HashMap<String, String> = HashMap::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .describe_job_log_items()
                .job_id(&job.0)
                .max_results(1000)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|err| sdk_error("DescribeJobLogItems", &err))?;
            for item in page.items() {
                let Some(source) = item.event_data().and_then(|d| d.source_server_id()) else {
                    continue;
                };
                let event = item.event().map_or("an event", |e| e.as_str());
                if fatal(event) && !reasons.contains_key(source) {
                    let reason = match item.event_data().and_then(|d| d.raw_error()) {
                        Some(raw) => format!("{event}: {raw}"),
                        None => event.to_owned(),
                    };
                    reasons.insert(source.to_owned(), reason);
                }
            }
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(reasons)
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

    /// What the wave files say of `name`, with the FQDN or IP a task gave.
    fn wanted(&self, name: &str, hostname: Option<&str>) -> Wanted {
        let mut wanted = self.wanted.get(name).cloned().unwrap_or_else(|| Wanted {
            name: name.to_owned(),
            ..Wanted::default()
        });
        if let Some(h) = hostname
            && wanted.fqdn.as_deref() != Some(h)
            && wanted.ip.as_deref() != Some(h)
        {
            if h.parse::<std::net::IpAddr>().is_ok() {
                wanted.ip.get_or_insert_with(|| h.to_owned());
            } else {
                wanted.fqdn.get_or_insert_with(|| h.to_owned());
            }
        }
        wanted
    }

    /// The one source server that is this wave server, or why not.
    async fn matching(
        &self,
        name: &str,
        hostname: Option<&str>,
    ) -> EngineResult<Option<mgn::SourceServer>> {
        let wanted = self.wanted(name, hostname);
        if let Some(id) = &wanted.source_id {
            return match self.source(&SourceId(id.clone())).await {
                Ok(server) if server.is_archived().unwrap_or(false) => Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!(
                        "the source_id {id} of {name} is archived in MGN ({}): give the source server that replicates it now",
                        self.region
                    ),
                )),
                Ok(server) => Ok(Some(server)),
                Err(err) if err.kind == ErrorKind::NotFound => Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!(
                        "the source_id {id} of {name} is not an MGN source server in {}: check it in the wave file, or remove it to match by hostname, FQDN or IP",
                        self.region
                    ),
                )),
                Err(err) => Err(err),
            };
        }
        let all = self.all_sources().await?;
        let found: Vec<&mgn::SourceServer> = strongest(
            all.iter()
                .filter(|s| !s.is_archived().unwrap_or(false))
                .filter_map(|s| Some((s, matched_by(s, &wanted)?)))
                .collect(),
        )
        .into_iter()
        .map(|(s, _)| s)
        .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(EngineError::new(
                ErrorKind::Conflict,
                format!(
                    "{name} matches {} MGN source servers ({}): give it the intended one's id (`source_id` in the wave file), or archive the others",
                    many.len(),
                    many.iter()
                        .filter_map(|s| s.source_server_id())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// How each wave server matches MGN's source servers (one listing for all), and
    /// the source servers no wave server matched: what `wavelift match` prints.
    pub async fn match_report(&self, servers: &[Wanted]) -> EngineResult<MatchReport> {
        let all = self.all_sources().await?;
        let live: Vec<&mgn::SourceServer> = all
            .iter()
            .filter(|s| !s.is_archived().unwrap_or(false))
            .collect();
        let id_of = |s: &mgn::SourceServer| s.source_server_id().unwrap_or_default().to_owned();
        let mut claimed = std::collections::BTreeSet::new();
        let mut lines = Vec::new();
        for wanted in servers {
            let outcome = match &wanted.source_id {
                Some(id) => match all
                    .iter()
                    .find(|s| s.source_server_id() == Some(id.as_str()))
                {
                    Some(s) if s.is_archived().unwrap_or(false) => Outcome::Archived(id.clone()),
                    Some(_) => Outcome::Matched {
                        id: id.clone(),
                        by: "source_id",
                    },
                    None => Outcome::Missing,
                },
                None => {
                    let found: Vec<(&mgn::SourceServer, &'static str)> = strongest(
                        live.iter()
                            .filter_map(|s| Some((*s, matched_by(s, wanted)?)))
                            .collect(),
                    );
                    let archived = || -> Vec<String> {
                        all.iter()
                            .filter(|s| {
                                s.is_archived().unwrap_or(false) && matched_by(s, wanted).is_some()
                            })
                            .map(id_of)
                            .collect()
                    };
                    match found.as_slice() {
                        [] => match archived() {
                            ids if ids.is_empty() => Outcome::Missing,
                            ids => Outcome::OnlyArchived(ids),
                        },
                        [(s, by)] => Outcome::Matched { id: id_of(s), by },
                        many => Outcome::Ambiguous(many.iter().map(|(s, _)| id_of(s)).collect()),
                    }
                }
            };
            match &outcome {
                Outcome::Matched { id, .. } => {
                    claimed.insert(id.clone());
                }
                Outcome::Ambiguous(ids) => claimed.extend(ids.iter().cloned()),
                _ => {}
            }
            lines.push((wanted.clone(), outcome));
        }
        // One source server is one wave server: a second claim is as wrong as the first.
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for (wanted, outcome) in &lines {
            if let Outcome::Matched { id, .. } = outcome {
                by_id
                    .entry(id.clone())
                    .or_default()
                    .push(wanted.name.clone());
            }
        }
        for (wanted, outcome) in &mut lines {
            if let Outcome::Matched { id, .. } = outcome
                && let Some(names) = by_id.get(id.as_str())
                && names.len() > 1
            {
                let with = names
                    .iter()
                    .filter(|n| **n != wanted.name)
                    .cloned()
                    .collect();
                *outcome = Outcome::Shared {
                    id: id.clone(),
                    with,
                };
            }
        }
        let unclaimed = live
            .iter()
            .filter(|s| !claimed.contains(&id_of(s)))
            .map(|s| {
                let hostname = s
                    .source_properties()
                    .and_then(|p| p.identification_hints())
                    .and_then(|h| h.hostname().or(h.fqdn()))
                    .unwrap_or("no hostname")
                    .to_owned();
                (id_of(s), hostname)
            })
            .collect();
        Ok(MatchReport { lines, unclaimed })
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

/// What the wave file says of a server, for matching it to an MGN source server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub fqdn: Option<String>,
    pub ip: Option<String>,
    /// The MGN id the wave file gives (`source_id`): no matching then.
    pub source_id: Option<String>,
}

/// How one wave server matched.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Matched {
        id: String,
        by: &'static str,
    },
    Missing,
    Ambiguous(Vec<String>),
    /// The given source_id is archived in MGN.
    Archived(String),
    /// Only archived source servers match (a server migrated and cleaned up already).
    OnlyArchived(Vec<String>),
    /// Matched one source server that other wave servers (named) matched too.
    Shared {
        id: String,
        with: Vec<String>,
    },
}

/// How [`matched_by`] says a match by the user-provided id: it outranks the others.
const BY_USER_PROVIDED_ID: &str = "user-provided id";

/// The matches to go by: those by user-provided id when there are any (a machine MGN
/// knows by the wave's name is that server, whatever else shares its hostname or IP).
fn strongest<T: Copy>(found: Vec<(T, &'static str)>) -> Vec<(T, &'static str)> {
    if found.iter().any(|(_, by)| *by == BY_USER_PROVIDED_ID) {
        found
            .into_iter()
            .filter(|(_, by)| *by == BY_USER_PROVIDED_ID)
            .collect()
    } else {
        found
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatchReport {
    pub lines: Vec<(Wanted, Outcome)>,
    /// Source servers (id, hostname) that no wave server matched.
    pub unclaimed: Vec<(String, String)>,
}

/// How an MGN source server is the wave's server: by the user-provided id agent_push's
/// install gave it (the installer's `--user-provided-id`, the wave's name), by hostname
/// (its name), by FQDN (or the FQDN's first label), or by an IP of its interfaces;
/// `None` if it is not. A source whose user-provided id names another server is never
/// this one, whatever its hostname or addresses.
pub fn matched_by(server: &mgn::SourceServer, wanted: &Wanted) -> Option<&'static str> {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let name = wanted.name.as_str();
    match server.user_provided_id() {
        Some(id) if id == name => return Some(BY_USER_PROVIDED_ID),
        Some(id) if !id.is_empty() => return None,
        _ => {}
    }
    let properties = server.source_properties()?;
    if let Some(hints) = properties.identification_hints() {
        if hints.hostname().is_some_and(|h| same(h, name)) {
            return Some("hostname");
        }
        if let Some(fqdn) = hints.fqdn() {
            let label = fqdn.split('.').next().unwrap_or(fqdn);
            if same(label, name) || wanted.fqdn.as_deref().is_some_and(|h| same(fqdn, h)) {
                return Some("FQDN");
            }
        }
    }
    let ip = wanted.ip.as_deref()?;
    properties
        .network_interfaces()
        .iter()
        .any(|nic| nic.ips().iter().any(|i| i == ip))
        .then_some("IP")
}

/// A job log event that ends a server's launch: a failed step, or the server skipped.
/// USING_PREVIOUS_SNAPSHOT_FAILED is not one: the launch goes on from a new snapshot.
fn fatal(event: &str) -> bool {
    event != "USING_PREVIOUS_SNAPSHOT_FAILED"
        && (event.ends_with("_FAIL") || event.ends_with("_FAILED") || event == "SERVER_SKIPPED")
}

/// An error that carries no service message (the request never reached the service,
/// or timed out): its causes, each said once, without the SDK's debug dump.
pub(crate) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn sdk_error<E, R>(operation: &str, err: &aws_sdk_mgn::error::SdkError<E, R>) -> EngineError
where
    E: aws_sdk_mgn::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
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
        .unwrap_or_else(|| causes(err));
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
        Some(S::Stopped) => ReplicationState::Stopped,
        Some(S::Disconnected) | Some(_) => ReplicationState::Disconnected,
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
            // MGN reports neither.
            throughput_bytes_per_second: None,
            wire_bytes: None,
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
        let known = lock(&self.matched).get(name).cloned();
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
                lock(&self.matched).insert(spec.name.clone(), view.id.clone());
                Ok(view)
            }
            None => Err(EngineError::new(
                ErrorKind::NotFound,
                format!(
                    "no MGN source server is {} (by user-provided id, hostname, FQDN{}): install the MGN replication agent on it (agent_push does with engines.mgn.agent), or check its name and address in the wave file",
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

    async fn agent_install_unregistered(
        &self,
        spec: &SourceSpec,
    ) -> EngineResult<Option<AgentInstall>> {
        let Some(agent) = &self.agent else {
            return Err(EngineError::new(
                ErrorKind::NotFound,
                format!(
                    "MGN does not list {} and engines.mgn.agent is not configured: install MGN's replication agent on it by hand, or configure agent_push to install it (docs/aws.md)",
                    spec.name
                ),
            ));
        };
        let keys = (agent.keys)()
            .and_then(|text| installer_keys(&text))
            .map_err(|why| EngineError::new(ErrorKind::Invalid, why))?;
        let (installer_url, hash_url) =
            installer_urls(&self.region, agent.installer_url.as_deref());
        let text = |s: &str| serde_json::Value::String(s.to_owned());
        let mut facts = std::collections::BTreeMap::new();
        facts.insert("region".to_owned(), text(&self.region));
        facts.insert("installer_url".to_owned(), text(&installer_url));
        facts.insert("hash_url".to_owned(), text(&hash_url));
        // MGN replicates the disks it finds; the wave's devices are named when each is a
        // device (a subset would leave the others out silently).
        let devices: Vec<&str> = spec.disks.iter().map(|d| d.device.as_str()).collect();
        let named = !devices.is_empty() && devices.iter().all(|d| d.starts_with("/dev/"));
        facts.insert(
            "devices".to_owned(),
            text(&if named {
                devices.join(",")
            } else {
                String::new()
            }),
        );
        facts.insert(
            "endpoint".to_owned(),
            text(agent.endpoint.as_deref().unwrap_or_default()),
        );
        facts.insert(
            "s3_endpoint".to_owned(),
            text(agent.s3_endpoint.as_deref().unwrap_or_default()),
        );
        Ok(Some(AgentInstall {
            template: "mgn".to_owned(),
            facts,
            secret: keys,
        }))
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
        let job = job.map(|j| job_view(&j)).ok_or_else(|| {
            EngineError::new(
                ErrorKind::Unavailable,
                "MGN started a launch but returned no job",
            )
        })?;
        self.remember(&job);
        Ok(job)
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        let mut job = job_view(&self.job(id).await?);
        self.remember(&job);
        self.explain_failures(&mut job).await;
        Ok(job)
    }

    async fn describe_job_for(&self, id: &JobId, source: &SourceId) -> EngineResult<Job> {
        let mut job = job_view(&self.job(id).await?);
        self.remember(&job);
        job.servers.retain(|s| &s.source == source);
        self.explain_failures(&mut job).await;
        Ok(job)
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
                    .map(job_view)
                    .inspect(|job| self.remember(job))
                    .map(|mut job| {
                        job.servers.retain(|s| s.source == *id);
                        job
                    }),
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
        let known = lock(&self.launched).get(&id.0).cloned();
        let (source, kind, launched_at) = match known {
            Some(known) => known,
            None => self.launch_of(id).await?,
        };
        let instance = match self.ec2.instance(&id.0).await {
            Ok(instance) => {
                lock(&self.listed).insert(id.0.clone());
                instance
            }
            Err(err) if err.kind == ErrorKind::NotFound => {
                // EC2 lists a new instance a little after MGN names it, and forgets a
                // terminated one an hour or so after: an instance this engine never saw
                // in EC2 is still coming (for ten minutes from its first look), one it
                // saw is gone.
                let now = jiff::Timestamp::now();
                let first = *lock(&self.first_looked).entry(id.0.clone()).or_insert(now);
                let seen = lock(&self.listed).contains(&id.0);
                let new = !seen && now.duration_since(first) < jiff::SignedDuration::from_mins(10);
                ec2::Instance {
                    state: if new {
                        TargetState::Pending
                    } else {
                        TargetState::Terminated
                    },
                    health: if new {
                        replication::Health::Initializing
                    } else {
                        replication::Health::Impaired
                    },
                    address: None,
                    detail: if new {
                        "EC2 does not list the instance yet".to_owned()
                    } else {
                        "EC2 no longer has the instance".to_owned()
                    },
                }
            }
            Err(err) => return Err(err),
        };
        Ok(Target {
            id: id.clone(),
            source,
            kind,
            state: instance.state,
            health: instance.health,
            address: instance.address,
            launched_at,
            detail: Some(instance.detail),
        })
    }

    async fn control_replication(
        &self,
        id: &SourceId,
        action: ReplicationAction,
    ) -> EngineResult<SourceServer> {
        let c = &self.client;
        let id_ = &id.0;
        match action {
            ReplicationAction::Start => c
                .start_replication()
                .source_server_id(id_)
                .send()
                .await
                .map(drop)
                .map_err(|err| sdk_error("StartReplication", &err))?,
            ReplicationAction::Stop => c
                .stop_replication()
                .source_server_id(id_)
                .send()
                .await
                .map(drop)
                .map_err(|err| sdk_error("StopReplication", &err))?,
            ReplicationAction::Pause => c
                .pause_replication()
                .source_server_id(id_)
                .send()
                .await
                .map(drop)
                .map_err(|err| sdk_error("PauseReplication", &err))?,
            ReplicationAction::Resume => c
                .resume_replication()
                .source_server_id(id_)
                .send()
                .await
                .map(drop)
                .map_err(|err| sdk_error("ResumeReplication", &err))?,
        }
        Ok(view(&self.source(id).await?))
    }

    async fn prepare_launch(
        &self,
        id: &SourceId,
        kind: LaunchKind,
        settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        // An empty blueprint is applied too: it makes MGN's own version the default
        // again, should another kind's blueprint have changed it.
        let configuration = self
            .client
            .get_launch_configuration()
            .source_server_id(&id.0)
            .send()
            .await
            .map_err(|err| sdk_error("GetLaunchConfiguration", &err))?;
        let template = configuration.ec2_launch_template_id().ok_or_else(|| {
            EngineError::new(
                ErrorKind::Unavailable,
                format!("MGN has no EC2 launch template for {id} yet"),
            )
        })?;
        let mut changes = Vec::new();
        // Checked in EC2 first: nothing changes for a blueprint EC2 cannot launch.
        if let Some(change) = self.ec2.apply(template, settings).await? {
            changes.push(change);
        }
        // MGN's right-sizing would choose the instance type itself.
        if settings.instance_type.is_some()
            && configuration.target_instance_type_right_sizing_method()
                != Some(&mgn::TargetInstanceTypeRightSizingMethod::None)
        {
            self.client
                .update_launch_configuration()
                .source_server_id(&id.0)
                .target_instance_type_right_sizing_method(
                    mgn::TargetInstanceTypeRightSizingMethod::None,
                )
                .send()
                .await
                .map_err(|err| sdk_error("UpdateLaunchConfiguration", &err))?;
            changes.push("instance type right-sizing off".to_owned());
        }
        Ok((!changes.is_empty()).then(|| format!("{kind} blueprint: {}", changes.join("; "))))
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

    #[test]
    fn a_user_provided_id_outranks_hostnames_and_addresses() {
        let source = |id: &str, given: Option<&str>, hostname: &str| {
            mgn::SourceServer::builder()
                .source_server_id(id)
                .set_user_provided_id(given.map(str::to_owned))
                .source_properties(
                    mgn::SourceProperties::builder()
                        .identification_hints(
                            mgn::IdentificationHints::builder()
                                .hostname(hostname)
                                .build(),
                        )
                        .build(),
                )
                .build()
        };
        let wanted = Wanted {
            name: "web-01".to_owned(),
            fqdn: None,
            ip: None,
            source_id: None,
        };
        let installed = source("s-1", Some("web-01"), "ip-10-0-0-1");
        let by_name = source("s-2", None, "web-01");
        let other = source("s-3", Some("db-01"), "web-01");
        assert_eq!(matched_by(&installed, &wanted), Some("user-provided id"));
        assert_eq!(matched_by(&by_name, &wanted), Some("hostname"));
        assert_eq!(
            matched_by(&other, &wanted),
            None,
            "named for another server"
        );
        let found = strongest(vec![("s-1", "user-provided id"), ("s-2", "hostname")]);
        assert_eq!(found, vec![("s-1", "user-provided id")]);
        let found = strongest(vec![("s-2", "hostname"), ("s-4", "IP")]);
        assert_eq!(found.len(), 2, "without an id, every match counts");
    }

    #[test]
    fn the_installers_keys_are_two_or_three_parts_a_line_each() {
        assert_eq!(
            installer_keys("AKIAEXAMPLE secret\n").as_deref(),
            Ok("AKIAEXAMPLE\nsecret\n\n")
        );
        assert_eq!(
            installer_keys("ASIAEXAMPLE\nsecret\ntoken").as_deref(),
            Ok("ASIAEXAMPLE\nsecret\ntoken\n")
        );
        for wrong in ["", "AKIAONLY", "a b c d"] {
            let err = installer_keys(wrong).err().unwrap_or_default();
            assert!(err.contains("part(s)") && !err.contains("AKIA"), "{err}");
        }
    }

    #[test]
    fn the_installer_comes_from_the_regions_bucket_unless_given() {
        let (installer, hash) = installer_urls("eu-south-1", None);
        assert_eq!(
            installer,
            "https://aws-application-migration-service-eu-south-1.s3.eu-south-1.amazonaws.com/latest/linux/aws-replication-installer-init"
        );
        assert_eq!(
            hash,
            "https://aws-application-migration-service-hashes-eu-south-1.s3.eu-south-1.amazonaws.com/latest/linux/aws-replication-installer-init.sha512"
        );
        let (installer, hash) = installer_urls("eu-south-1", Some("https://mirror/i"));
        assert_eq!(
            (installer.as_str(), hash.as_str()),
            ("https://mirror/i", "https://mirror/i.sha512")
        );
    }
}
