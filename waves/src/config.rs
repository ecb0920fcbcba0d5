//! The configuration file (`wavelift.yaml`): database, engines, SMTP, CMDB, sites and the
//! defaults every server starts from. Validated like the wave files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::decode::{self, Ctx, MapReader};
use crate::diag::Location;
use crate::model::EngineKind;
use crate::model::{CredentialRef, Spanned};
use crate::rules;
use crate::template::{self, ServerTemplate};
use crate::units;
use crate::units::Dur;
use crate::yaml::Node;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://.wavelift/state.db";
pub const DEFAULT_OUTBOX: &str = ".wavelift/outbox";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from; `None` when built-in defaults are used.
    #[serde(skip)]
    pub file: Option<Arc<str>>,
    /// The folder relative paths in the file are relative to.
    pub base_dir: PathBuf,
    pub database_url: String,
    pub engines: Engines,
    pub smtp: Option<Smtp>,
    pub outbox: PathBuf,
    pub reports: Reports,
    pub cmdb: Option<Cmdb>,
    pub sites: BTreeMap<String, Site>,
    /// Sites written but not read (each reported where it is written): a reference to
    /// one is not "not defined" besides.
    #[serde(skip)]
    pub invalid_sites: BTreeSet<String>,
    pub ssh: Ssh,
    #[serde(skip)]
    pub defaults: ServerTemplate,
}

/// How Wavelift logs in to source servers over SSH (the system's OpenSSH client).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ssh {
    /// The known_hosts file the servers' host keys are checked against; unset, OpenSSH's
    /// own (`~/.ssh/known_hosts` of the account that runs Wavelift).
    pub known_hosts: Option<PathBuf>,
    pub host_keys: HostKeys,
    /// How long a login may take before the server counts as unreachable.
    pub connect_timeout: Dur,
    /// How long one command may run (a task may give a command less).
    pub command_timeout: Dur,
}

impl Default for Ssh {
    fn default() -> Ssh {
        Ssh {
            known_hosts: None,
            host_keys: HostKeys::Strict,
            connect_timeout: Dur::from_seconds(15),
            command_timeout: Dur::from_seconds(120),
        }
    }
}

crate::model::named_enum!(
    /// What a host key missing from known_hosts means: refused (`strict`), or recorded
    /// on first sight (`accept-new`). A changed key is refused either way.
    HostKeys { Strict => "strict", AcceptNew => "accept-new" }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Engines {
    pub default: EngineKind,
    pub local: LocalEngine,
    pub sim: SimEngine,
    pub mgn: Option<MgnEngine>,
    /// `engines.mgn` was written but could not be read (reported there): a wave on mgn
    /// is not "not configured" besides, nor are its accounts "not defined".
    #[serde(skip)]
    pub mgn_unread: bool,
    /// Accounts of `engines.mgn.accounts` written but not read (reported there).
    #[serde(skip)]
    pub invalid_mgn_accounts: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalEngine {
    /// Where the replication server listens for agents.
    pub listen: SocketAddr,
    /// The `host:port` agents connect to, when it is not `listen` (a listener on
    /// 0.0.0.0, a NAT in between).
    pub advertise: Option<String>,
    pub staging_dir: PathBuf,
    pub target_dir: PathBuf,
    /// The launched copies' disk image format.
    pub image_format: ImageFormat,
    /// A command run on each launched copy (its image in `$WAVELIFT_IMAGE`), for
    /// example a filesystem check; a failure makes the copy's health impaired.
    pub boot_check: Option<String>,
    /// A command run once on each launched copy after its check passed.
    pub post_launch: Option<String>,
    /// An agent that cannot reach the replication server for this long exits.
    pub agent_give_up_after: Dur,
    /// Where the agent is installed on source servers reached over SSH (a folder per
    /// source under it; relative: from the login's home). Default: by sudo.
    pub agent_dir: Option<String>,
    /// Which recovery points are kept: for each tier, the newest point of every
    /// `every` within the last `keep_for`; the newest point always.
    pub retention: Vec<RetentionTier>,
}

/// One tier of the local engine's retention.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetentionTier {
    pub every: Dur,
    pub keep_for: Dur,
}

impl RetentionTier {
    /// The seeds' retention: every 10 minutes for an hour, hourly for a day, daily for
    /// 30 days.
    pub fn defaults() -> Vec<RetentionTier> {
        let tier = |every: Dur, keep_for: Dur| RetentionTier { every, keep_for };
        vec![
            tier(Dur::from_seconds(600), Dur::from_seconds(3600)),
            tier(Dur::from_seconds(3600), Dur::from_days(1)),
            tier(Dur::from_days(1), Dur::from_days(30)),
        ]
    }
}

crate::model::named_enum!(
    /// How the local engine writes a launched copy's disks.
    ImageFormat { Raw => "raw", Qcow2 => "qcow2" }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimEngine {
    /// Seed of the injected failures: the same seed plays the same rehearsal.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MgnEngine {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    /// Another endpoint for the MGN API (tests, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Another endpoint for the EC2 API (tests, a VPC endpoint).
    pub ec2_endpoint: Option<String>,
    /// How agent_push installs MGN's replication agent; `None`: installed by hand.
    pub agent: Option<MgnAgent>,
    /// Other accounts or Regions, by name; a server names one with `mgn_account`, the
    /// others migrate with the settings above.
    pub accounts: BTreeMap<String, MgnAccount>,
}

/// How agent_push installs MGN's replication agent on a Linux source (MGN's installer,
/// `aws-replication-installer-init`, downloaded there and checked against its SHA-512).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MgnAgent {
    /// The installer's AWS keys (`env:NAME` or `file:PATH`): the access key id, the
    /// secret access key and, for temporary keys, the session token, separated by
    /// white space or line breaks.
    pub credential: CredentialRef,
    /// Where the source downloads the installer (default: MGN's bucket of the Region);
    /// its SHA-512 is at the same address with `.sha512` (default: MGN's hashes bucket).
    pub installer_url: Option<String>,
    /// `--endpoint`: MGN's PrivateLink endpoint the agent uses.
    pub endpoint: Option<String>,
    /// `--s3-endpoint`: the S3 VPC endpoint the agent uses.
    pub s3_endpoint: Option<String>,
}

/// An AWS account and Region the mgn engine migrates to besides its default one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MgnAccount {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub endpoint: Option<String>,
    pub ec2_endpoint: Option<String>,
    pub agent: Option<MgnAgent>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Smtp {
    pub url: String,
    pub from: String,
    pub credential: Option<CredentialRef>,
    /// A PEM file of certificates to trust besides the usual roots (a private relay).
    pub ca_file: Option<PathBuf>,
}

/// When reports are made and how hard their delivery is tried.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reports {
    /// The readiness report comes this long before each cutover window.
    pub readiness_before: Dur,
    /// The daily digest's schedule (cron, in the wave's time zone); `None`: no digest.
    pub digest: Option<String>,
    /// Delivery attempts before a report is given up on (and kept in the outbox).
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each, up to an hour.
    pub retry_after: Dur,
}

impl Default for Reports {
    fn default() -> Reports {
        Reports {
            readiness_before: Dur::from_seconds(24 * 3600),
            digest: Some(DEFAULT_DIGEST.to_owned()),
            attempts: 8,
            retry_after: Dur::from_seconds(30),
        }
    }
}

/// The digest's default schedule: every morning at 08:00 in the wave's time zone.
pub const DEFAULT_DIGEST: &str = "0 8 * * *";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cmdb {
    /// A YAML inventory whose records are marked retired.
    File { path: PathBuf },
    /// ServiceNow's Table API: the CI found by sys_id or name, `install_status` set to
    /// retired, the target recorded in a field.
    Servicenow {
        api: CmdbApi,
        table: String,
        retired_status: String,
        target_field: String,
    },
    /// NetBox: the virtual machine (or device) set to decommissioning or offline, with
    /// a journal entry.
    Netbox {
        api: CmdbApi,
        object: NetboxObject,
        status: String,
    },
    /// Any HTTP API: the request's method, URL, headers and body are templates of the
    /// server's facts (`{{name}}`, `{{cmdb_id}}`, `{{fqdn}}`, `{{ip}}`, `{{target}}`, and
    /// `{{credential}}` in headers and body).
    Http {
        api: CmdbApi,
        method: String,
        headers: BTreeMap<String, String>,
        body: Option<String>,
    },
}

/// What every CMDB reached over HTTP has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CmdbApi {
    /// The instance's base URL (a template for `http`).
    pub url: String,
    /// ServiceNow's basic-auth user; without it the credential is a bearer token.
    pub user: Option<String>,
    pub credential: Option<CredentialRef>,
    /// Certificates to trust besides the usual roots.
    pub ca_file: Option<PathBuf>,
    /// Read, and say what would change, but write nothing.
    pub dry_run: bool,
    /// Tries of one request, counting the first.
    pub attempts: u32,
    /// The wait before the first retry; doubled each time (a 429's Retry-After wins).
    pub retry_after: Dur,
}

crate::model::named_enum!(
    /// Which NetBox objects the servers are.
    NetboxObject { VirtualMachine => "virtual-machine", Device => "device" }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    pub bandwidth_bits: u64,
    pub compression: Option<f64>,
    #[serde(skip)]
    pub location: Location,
}

impl Config {
    /// The configuration when no file is given: SQLite, the local engine, the outbox.
    pub fn builtin(base_dir: PathBuf) -> Config {
        Config {
            file: None,
            base_dir,
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            engines: Engines {
                default: EngineKind::Local,
                local: LocalEngine {
                    listen: SocketAddr::from(([127, 0, 0, 1], 1500)),
                    advertise: None,
                    staging_dir: PathBuf::from(".wavelift/staging"),
                    target_dir: PathBuf::from(".wavelift/targets"),
                    image_format: ImageFormat::Raw,
                    boot_check: None,
                    post_launch: None,
                    agent_give_up_after: Dur::from_days(1),
                    agent_dir: None,
                    retention: RetentionTier::defaults(),
                },
                sim: SimEngine { seed: 1 },
                mgn: None,
                mgn_unread: false,
                invalid_mgn_accounts: BTreeSet::new(),
            },
            smtp: None,
            outbox: PathBuf::from(DEFAULT_OUTBOX),
            reports: Reports::default(),
            cmdb: None,
            sites: BTreeMap::new(),
            invalid_sites: BTreeSet::new(),
            ssh: Ssh::default(),
            defaults: ServerTemplate::default(),
        }
    }

    /// A path from the configuration file, relative to the file's folder.
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn engine_configured(&self, kind: EngineKind) -> bool {
        match kind {
            EngineKind::Local | EngineKind::Sim => true,
            EngineKind::Mgn => self.engines.mgn.is_some(),
        }
    }
}

/// Reads a configuration document. What cannot be read keeps its built-in value, with
/// the error recorded.
pub fn decode_config(node: &Node, base_dir: PathBuf, ctx: &mut Ctx) -> Config {
    let mut config = Config::builtin(base_dir);
    config.file = Some(Arc::clone(&ctx.file));
    let Some(mut map) = MapReader::new(node, "configuration", ctx) else {
        return config;
    };
    if let Some(n) = map.take("version") {
        check_version(n, ctx);
    }
    if let Some(n) = map.take("database")
        && let Some(mut db) = MapReader::new(n, "database", ctx)
    {
        template::refuse_inline_secrets(
            &mut db,
            "database",
            "give PostgreSQL its password through PGPASSWORD or a .pgpass file",
            ctx,
        );
        if let Some(url) = db.take("url") {
            let parsed = decode::parsed(url, "database url", ctx, |text| {
                let known = ["sqlite:", "postgres://", "postgresql://"];
                if !known.iter().any(|p| text.starts_with(p)) {
                    return Err(format!(
                        "`{}` is not a sqlite: or postgres:// URL",
                        redact_url(text)
                    ));
                }
                if url_has_password(text) {
                    return Err(
                        "the URL holds a password (not shown): use PGPASSWORD or a .pgpass file"
                            .to_owned(),
                    );
                }
                if let Some(why) = database_url_problem(text) {
                    return Err(why);
                }
                Ok(text.to_owned())
            });
            if let Some(parsed) = parsed {
                config.database_url = parsed;
            }
        }
        db.finish(ctx);
    }
    if let Some(n) = map.take("engines") {
        decode_engines(n, &mut config.engines, ctx);
    }
    if let Some(n) = map.take("smtp") {
        config.smtp = decode_smtp(n, ctx);
    }
    if let Some(n) = map.take("outbox")
        && let Some(path) = decode::path(n, "outbox", false, ctx)
    {
        config.outbox = PathBuf::from(path);
    }
    if let Some(n) = map.take("reports") {
        decode_reports(n, &mut config.reports, ctx);
    }
    if let Some(n) = map.take("cmdb") {
        config.cmdb = decode_cmdb(n, ctx);
    }
    if let Some(n) = map.take("sites") {
        (config.sites, config.invalid_sites) = decode_sites(n, ctx);
    }
    if let Some(n) = map.take("ssh") {
        decode_ssh(n, &mut config.ssh, ctx);
    }
    if let Some(n) = map.take("defaults") {
        decode_defaults(n, &mut config.defaults, ctx);
    }
    map.finish(ctx);
    check_names(&config.defaults, &ServerTemplate::default(), &config, ctx);
    config
}

/// `defaults:` in the configuration, a wave or an application: inheritable fields only.
pub fn decode_defaults(node: &Node, base: &mut ServerTemplate, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "defaults", ctx) else {
        return;
    };
    for identity in ["name", "fqdn", "ip", "cmdb_id", "source_id", "disks"] {
        if let Some(location) = map.key_location(identity) {
            ctx.error(
                location,
                format!("`{identity}` belongs to one server and cannot be a default"),
            );
            map.mark_used(identity);
        }
    }
    template::decode_fields(&mut map, base, ctx);
    map.finish(ctx);
}

pub fn check_version(node: &Node, ctx: &mut Ctx) {
    if let Some(version) = decode::unsigned(node, "version", u64::MAX, ctx)
        && version != 1
    {
        ctx.error(
            node.location,
            format!("version {version} is not supported: this Wavelift reads version 1"),
        );
    }
}

/// Why a database URL cannot hold Wavelift's state, when it cannot: SQLite in memory
/// (the state would be gone when the process ends), without a file, or a folder.
pub fn database_url_problem(url: &str) -> Option<String> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let in_memory = path == ":memory:"
            || query
                .split('&')
                .any(|pair| pair.eq_ignore_ascii_case("mode=memory"));
        if in_memory {
            return Some(format!(
                "`{url}` is a database in memory, gone when the process ends with every task's history: name a file, as sqlite://.wavelift/state.db"
            ));
        }
        if path.is_empty() {
            return Some(format!(
                "`{url}` names no file: write it as sqlite://PATH, as sqlite://.wavelift/state.db"
            ));
        }
        if path.ends_with('/')
            || path == "."
            || path == ".."
            || path.ends_with("/.")
            || path.ends_with("/..")
        {
            return Some(format!(
                "`{url}` names a folder, not the database file: add the file's name, as sqlite://.wavelift/state.db"
            ));
        }
        return None;
    }
    // PostgreSQL without a host is libpq's default (PGHOST, else the local socket or
    // localhost): kept, and a wrong one said when it connects.
    None
}

fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user_info, _)| user_info.contains(':'))
}

fn redact_url(url: &str) -> String {
    if url_has_password(url) {
        "(URL with a password, not shown)".to_owned()
    } else {
        url.to_owned()
    }
}

fn decode_engines(node: &Node, engines: &mut Engines, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "engines", ctx) else {
        return;
    };
    if let Some(n) = map.take("default")
        && let Some(kind) = engine_kind(n, ctx)
    {
        engines.default = kind;
    }
    if let Some(n) = map.take("local")
        && let Some(mut local) = MapReader::new(n, "local engine", ctx)
    {
        if let Some(n) = local.take("listen") {
            let listen = decode::parsed(n, "listen", ctx, |text| {
                match text.parse::<SocketAddr>() {
                    Ok(address) if address.port() == 0 => Err(format!(
                        "`{text}`: port 0 would be a new port at each start, which no agent finds: write one like 1500"
                    )),
                    Ok(address) => Ok(address),
                    Err(_) => Err(format!(
                        "`{text}` is not an address and port like 0.0.0.0:1500"
                    )),
                }
            });
            if let Some(listen) = listen {
                engines.local.listen = listen;
            }
        }
        if let Some(n) = local.take("staging_dir")
            && let Some(path) = decode::path(n, "staging_dir", false, ctx)
        {
            engines.local.staging_dir = PathBuf::from(path);
        }
        if let Some(n) = local.take("target_dir")
            && let Some(path) = decode::path(n, "target_dir", false, ctx)
        {
            engines.local.target_dir = PathBuf::from(path);
            // Launched copies beside the chunk store would be taken for its files.
            let tidy = |p: &std::path::Path| {
                p.components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect::<PathBuf>()
            };
            if tidy(&engines.local.target_dir) == tidy(&engines.local.staging_dir) {
                ctx.error(
                    n.location,
                    format!(
                        "target_dir: `{}` is the staging folder too: launched copies go to a folder of their own",
                        engines.local.target_dir.display()
                    ),
                );
            }
        }
        if let Some(n) = local.take("advertise") {
            engines.local.advertise =
                decode::parsed(n, "advertise", ctx, |text| match text.rsplit_once(':') {
                    Some((host, port))
                        if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                    {
                        Ok(text.to_owned())
                    }
                    _ => Err(format!(
                        "`{text}` is not a host and port like replication.lab.example.com:1500"
                    )),
                });
        }
        if let Some(n) = local.take("image_format") {
            let format = decode::parsed(n, "image_format", ctx, |text| {
                ImageFormat::from_name(text)
                    .ok_or_else(|| template::unknown_name("image format", text, ImageFormat::NAMES))
            });
            if let Some(format) = format {
                engines.local.image_format = format;
            }
        }
        if let Some(n) = local.take("agent_give_up_after")
            && let Some(after) = decode::duration(n, "agent_give_up_after", ctx)
        {
            if after.approx_seconds() < 1 {
                ctx.error(
                    n.location,
                    "agent_give_up_after: must be at least 1s: an agent gives up after this long without its server",
                );
            } else {
                engines.local.agent_give_up_after = after;
            }
        }
        if let Some(n) = local.take("retention") {
            engines.local.retention = decode::list(n, "retention", ctx)
                .iter()
                .filter_map(|item| retention_tier(item, ctx))
                .collect();
        }
        for (key, slot) in [
            ("boot_check", &mut engines.local.boot_check),
            ("post_launch", &mut engines.local.post_launch),
            ("agent_dir", &mut engines.local.agent_dir),
        ] {
            if let Some(n) = local.take(key) {
                *slot = decode::string(n, key, ctx).filter(|c| !c.trim().is_empty());
            }
        }
        local.finish(ctx);
    }
    if let Some(n) = map.take("sim")
        && let Some(mut sim) = MapReader::new(n, "sim engine", ctx)
    {
        if let Some(n) = sim.take("seed")
            && let Some(seed) = decode::unsigned(n, "seed", u64::MAX, ctx)
        {
            engines.sim.seed = seed;
        }
        sim.finish(ctx);
    }
    let mgn_written = map.key_location("mgn").is_some();
    if let Some(n) = map.take("mgn") {
        engines.mgn = decode_mgn(n, &mut engines.invalid_mgn_accounts, ctx);
        engines.mgn_unread = engines.mgn.is_none();
    }
    map.finish(ctx);
    if engines.default == EngineKind::Mgn && !mgn_written {
        let location = map_location(node);
        ctx.error(
            location,
            "the default engine is mgn but engines.mgn is not configured: add its region",
        );
    }
}

/// One `{ every: DURATION, for: DURATION }` of `engines.local.retention`.
fn retention_tier(node: &Node, ctx: &mut Ctx) -> Option<RetentionTier> {
    let mut map = MapReader::new(node, "retention tier", ctx)?;
    let every = map
        .required("every", ctx)
        .and_then(|n| decode::duration(n, "every", ctx).map(|d| (d, n.location)));
    let keep_for = map
        .required("for", ctx)
        .and_then(|n| decode::duration(n, "for", ctx).map(|d| (d, n.location)));
    map.finish(ctx);
    let ((every, every_at), (keep_for, for_at)) = (every?, keep_for?);
    if every.is_zero() {
        ctx.error(
            every_at,
            "every: a tier keeps one point per interval, so it cannot be 0",
        );
        return None;
    }
    if keep_for.approx_seconds() < every.approx_seconds() {
        ctx.error(
            for_at,
            format!(
                "for: {keep_for} is shorter than every ({every}), so the tier would keep at most one point: make it at least {every}"
            ),
        );
        return None;
    }
    Some(RetentionTier { every, keep_for })
}

fn map_location(node: &Node) -> Location {
    node.location
}

pub fn engine_kind(node: &Node, ctx: &mut Ctx) -> Option<EngineKind> {
    decode::parsed(node, "engine", ctx, |text| {
        EngineKind::from_name(text)
            .ok_or_else(|| template::unknown_name("engine", text, EngineKind::NAMES))
    })
}

/// The mgn engine's section; the accounts that could not be read go to `invalid`.
fn decode_mgn(node: &Node, invalid: &mut BTreeSet<String>, ctx: &mut Ctx) -> Option<MgnEngine> {
    let mut map = MapReader::new(node, "mgn engine", ctx)?;
    let accounts = map
        .take("accounts")
        .map(|n| decode_mgn_accounts(n, invalid, ctx))
        .unwrap_or_default();
    let account = decode_mgn_account(map, "mgn engine", ctx)?;
    Some(MgnEngine {
        region: account.region,
        profile: account.profile,
        role_arn: account.role_arn,
        endpoint: account.endpoint,
        ec2_endpoint: account.ec2_endpoint,
        agent: account.agent,
        accounts,
    })
}

fn decode_mgn_accounts(
    node: &Node,
    invalid: &mut BTreeSet<String>,
    ctx: &mut Ctx,
) -> BTreeMap<String, MgnAccount> {
    let mut accounts = BTreeMap::new();
    let Some(map) = MapReader::new(node, "mgn accounts", ctx) else {
        return accounts;
    };
    for entry in map.entries() {
        let account = match crate::rules::check_name(&entry.key) {
            Err(message) => {
                ctx.error(entry.key_location, format!("mgn account name: {message}"));
                None
            }
            Ok(_) => MapReader::new(&entry.value, "mgn account", ctx)
                .and_then(|account| decode_mgn_account(account, "mgn account", ctx)),
        };
        match account {
            Some(account) => {
                accounts.insert(entry.key.clone(), account);
            }
            None => {
                invalid.insert(entry.key.clone());
            }
        }
    }
    accounts
}

/// Where and as whom the mgn engine reaches one account and Region.
fn decode_mgn_account(mut map: MapReader, what: &'static str, ctx: &mut Ctx) -> Option<MgnAccount> {
    template::refuse_inline_secrets(
        &mut map,
        what,
        "AWS credentials come from the standard chain: a profile, the environment or a role",
        ctx,
    );
    let region = map.required("region", ctx).and_then(|n| {
        decode::parsed(n, "region", ctx, |text| {
            if rules::is_aws_region(text) {
                Ok(text.to_owned())
            } else {
                Err(format!("`{text}` is not an AWS Region name like eu-west-1"))
            }
        })
    });
    let profile = map
        .take("profile")
        .and_then(|n| decode::string(n, "profile", ctx));
    let role_arn = map.take("role_arn").and_then(|n| {
        decode::parsed(n, "role_arn", ctx, |text| {
            if text.starts_with("arn:aws") && text.contains(":role/") {
                Ok(text.to_owned())
            } else {
                Err(format!(
                    "`{text}` is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
                ))
            }
        })
    });
    let endpoint = map
        .take("endpoint")
        .and_then(|n| http_url(n, "endpoint", ctx));
    let ec2_endpoint = map
        .take("ec2_endpoint")
        .and_then(|n| http_url(n, "ec2_endpoint", ctx));
    let agent = map.take("agent").and_then(|n| decode_mgn_agent(n, ctx));
    map.finish(ctx);
    Some(MgnAccount {
        region: region?,
        profile,
        role_arn,
        endpoint,
        ec2_endpoint,
        agent,
    })
}

/// `agent:` of an MGN account: how agent_push installs MGN's agent.
fn decode_mgn_agent(node: &Node, ctx: &mut Ctx) -> Option<MgnAgent> {
    let mut map = MapReader::new(node, "mgn agent", ctx)?;
    template::refuse_inline_secrets(
        &mut map,
        "mgn agent",
        "the installer's keys belong in `credential: env:NAME` or `file:PATH`",
        ctx,
    );
    let required = map.key_location("credential").is_none();
    let credential = password_credential(&mut map, "AWS keys", ctx);
    if required {
        ctx.error(
            node.location,
            "mgn agent: `credential` is required: the installer's AWS keys as env:NAME or file:PATH",
        );
    }
    // The installer runs as root with the keys: over plain HTTP anyone on the way could
    // replace it and its SHA-512 together, so only a loopback mirror (tests) may use it.
    let installer_url = map.take("installer_url").and_then(|n| {
        decode::parsed(n, "installer_url", ctx, |text| {
            let loopback = ["http://127.", "http://localhost:", "http://localhost/", "http://[::1]"]
                .iter()
                .any(|prefix| text.starts_with(prefix));
            if !text.starts_with("https://") && !loopback {
                Err(format!(
                    "`{text}` is not an https:// URL (the installer runs as root with the keys: plain http is taken only on loopback)"
                ))
            } else if text.contains(['?', '#']) {
                Err(format!(
                    "`{text}` has a query or fragment: give the installer's own address (its SHA-512 is expected at the same address with .sha512)"
                ))
            } else {
                Ok(text.to_owned())
            }
        })
    });
    // The installer takes host names: a scheme or a trailing slash written is dropped.
    let host = |node: &Node, what: &str, ctx: &mut Ctx| {
        decode::parsed(node, what, ctx, |text| {
            let bare = text
                .strip_prefix("https://")
                .unwrap_or(text)
                .trim_end_matches('/');
            if !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
            {
                Ok(bare.to_owned())
            } else {
                Err(format!(
                    "`{text}` is not an endpoint's host name (such as vpce-0123-abcd.mgn.eu-west-1.vpce.amazonaws.com)"
                ))
            }
        })
    };
    let endpoint = map.take("endpoint").and_then(|n| host(n, "endpoint", ctx));
    let s3_endpoint = map
        .take("s3_endpoint")
        .and_then(|n| host(n, "s3_endpoint", ctx));
    map.finish(ctx);
    Some(MgnAgent {
        credential: credential?,
        installer_url,
        endpoint,
        s3_endpoint,
    })
}

/// A server's `mgn_account` names one of `engines.mgn.accounts`.
pub fn check_mgn_account(account: &Spanned<String>, config: &Config, ctx: &mut Ctx) {
    let engines = &config.engines;
    if engines.mgn_unread || engines.invalid_mgn_accounts.contains(&account.value) {
        return;
    }
    let known: Vec<&str> = config
        .engines
        .mgn
        .as_ref()
        .map(|m| m.accounts.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if known.contains(&account.value.as_str()) {
        return;
    }
    let message = if known.is_empty() {
        format!(
            "mgn account `{}` is not defined: add it under `engines.mgn.accounts` in the configuration file",
            account.value
        )
    } else {
        template::unknown_name("mgn account", &account.value, &known)
    };
    ctx.error(account.location, message);
}

/// The checks of inherited fields that name something of the configuration, for a
/// layer that changed them.
pub fn check_names(new: &ServerTemplate, old: &ServerTemplate, config: &Config, ctx: &mut Ctx) {
    if let Some(site) = &new.site
        && new.site != old.site
    {
        check_site(site, config, ctx);
    }
    if let Some(account) = &new.mgn_account
        && new.mgn_account != old.mgn_account
    {
        check_mgn_account(account, config, ctx);
    }
}

fn http_url(node: &Node, what: &str, ctx: &mut Ctx) -> Option<String> {
    decode::parsed(node, what, ctx, |text| {
        if text.starts_with("http://") || text.starts_with("https://") {
            Ok(text.to_owned())
        } else {
            Err(format!("`{text}` is not an http:// or https:// URL"))
        }
    })
}

fn decode_ssh(node: &Node, ssh: &mut Ssh, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "ssh", ctx) else {
        return;
    };
    template::refuse_inline_secrets(
        &mut map,
        "ssh",
        "a login secret belongs in the servers' `access.credential: env:NAME` or `file:PATH`",
        ctx,
    );
    if let Some(path) = map
        .take("known_hosts")
        .and_then(|n| decode::string(n, "known_hosts", ctx))
    {
        ssh.known_hosts = Some(PathBuf::from(path));
    }
    if let Some(policy) = map.take("host_keys").and_then(|n| {
        decode::parsed(n, "host_keys", ctx, |text| {
            HostKeys::from_name(text)
                .ok_or_else(|| template::unknown_name("host_keys", text, HostKeys::NAMES))
        })
    }) {
        ssh.host_keys = policy;
    }
    for (key, field) in [
        ("connect_timeout", &mut ssh.connect_timeout),
        ("command_timeout", &mut ssh.command_timeout),
    ] {
        if let Some(n) = map.take(key)
            && let Some(timeout) = decode::duration(n, key, ctx)
        {
            if timeout.is_zero() {
                ctx.error(n.location, format!("{key}: must be longer than zero"));
            } else {
                *field = timeout;
            }
        }
    }
    map.finish(ctx);
}

/// `credential:` where a password or a token is meant: `env:` or `file:`, never the
/// ssh-agent (which holds keys).
fn password_credential(map: &mut MapReader, holds: &str, ctx: &mut Ctx) -> Option<CredentialRef> {
    let node = map.take("credential")?;
    match template::credential(node, "credential", ctx)? {
        CredentialRef::SshAgent => {
            ctx.error(
                node.location,
                format!(
                    "credential: the ssh-agent holds keys, not {holds}; use env:NAME or file:PATH"
                ),
            );
            None
        }
        other => Some(other),
    }
}

/// `ca_file:`, certificates to trust besides the usual roots.
fn ca_file(map: &mut MapReader, ctx: &mut Ctx) -> Option<PathBuf> {
    map.take("ca_file")
        .and_then(|n| decode::string(n, "ca_file", ctx))
        .map(PathBuf::from)
}

fn decode_smtp(node: &Node, ctx: &mut Ctx) -> Option<Smtp> {
    let mut map = MapReader::new(node, "smtp", ctx)?;
    template::refuse_inline_secrets(&mut map, "smtp", template::USE_CREDENTIAL, ctx);
    let url_node = map.required("url", ctx);
    let url = url_node.and_then(|n| {
        decode::parsed(n, "smtp url", ctx, |text| {
            crate::smtp::SmtpUrl::parse(text.trim())?;
            Ok(text.to_owned())
        })
    });
    let from = map
        .required("from", ctx)
        .and_then(|n| decode::email(n, "from", ctx));
    let credential = password_credential(&mut map, "an SMTP password", ctx);
    // What the URL and the credential say together.
    if let (Some(node), Some(url), Some(_)) = (url_node, &url, &credential)
        && let Ok(parsed) = crate::smtp::SmtpUrl::parse(url.trim())
    {
        if parsed.plain() {
            ctx.error(
                node.location,
                "smtp url: tls=none with a credential: a password never travels in clear; use STARTTLS (drop tls=none) or smtps://",
            );
        } else if parsed.user.is_none() {
            ctx.error(
                node.location,
                "smtp url: it names no user for the credential: write it as smtp://USER@HOST:PORT",
            );
        }
    }
    let ca_file = ca_file(&mut map, ctx);
    map.finish(ctx);
    Some(Smtp {
        url: url?,
        from: from?,
        credential,
        ca_file,
    })
}

fn decode_reports(node: &Node, reports: &mut Reports, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "reports", ctx) else {
        return;
    };
    if let Some(n) = map.take("readiness_before")
        && let Some(d) = decode::duration(n, "readiness_before", ctx)
    {
        if d.approx_seconds() == 0 {
            // Due at the window's start, when the cutovers begin: it was never made.
            ctx.error(
                n.location,
                "readiness_before: the readiness report goes out before the window; write a time before it, like 24h or 30m",
            );
        } else {
            reports.readiness_before = d;
        }
    }
    if let Some(n) = map.take("digest") {
        reports.digest = decode::parsed(n, "digest", ctx, |text| {
            let text = text.trim();
            if text == "off" {
                return Ok(None);
            }
            crate::cron::CronSchedule::parse(text)
                .map(|_| Some(text.to_owned()))
                .map_err(|e| format!("{e} (or `off` for no digest)"))
        })
        .unwrap_or(reports.digest.take());
    }
    if let Some(n) = map.take("attempts")
        && let Some(a) = decode::unsigned(n, "attempts", 100, ctx)
    {
        if a == 0 {
            ctx.error(n.location, "attempts: at least 1");
        } else {
            reports.attempts = a as u32;
        }
    }
    if let Some(n) = map.take("retry_after")
        && let Some(d) = decode::duration(n, "retry_after", ctx)
    {
        reports.retry_after = d;
    }
    map.finish(ctx);
}

fn decode_cmdb(node: &Node, ctx: &mut Ctx) -> Option<Cmdb> {
    let mut map = MapReader::new(node, "cmdb", ctx)?;
    let kind_node = map.required("kind", ctx)?;
    let kind = decode::string(kind_node, "cmdb kind", ctx)?;
    const KINDS: &[&str] = &["file", "servicenow", "netbox", "http"];
    if kind != "file" && KINDS.contains(&kind.as_str()) {
        template::refuse_inline_secrets(&mut map, "cmdb", template::USE_CREDENTIAL, ctx);
    }
    fn text(map: &mut MapReader, key: &'static str, ctx: &mut Ctx) -> Option<String> {
        map.take(key).and_then(|n| decode::string(n, key, ctx))
    }
    let cmdb = match kind.as_str() {
        "file" => {
            let path = map
                .required("path", ctx)
                .and_then(|n| decode::path(n, "path", true, ctx))?;
            Some(Cmdb::File {
                path: PathBuf::from(path),
            })
        }
        "servicenow" => {
            let api = decode_cmdb_api(&mut map, &kind, ctx);
            let table = text(&mut map, "table", ctx).unwrap_or_else(|| "cmdb_ci_server".to_owned());
            if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                ctx.error(
                    map.key_location("table").unwrap_or(node.location),
                    format!(
                        "table: `{table}` is not a ServiceNow table name (letters, digits and _)"
                    ),
                );
            }
            let retired_status =
                text(&mut map, "retired_status", ctx).unwrap_or_else(|| "7".to_owned());
            let target_field =
                text(&mut map, "target_field", ctx).unwrap_or_else(|| "comments".to_owned());
            api.map(|api| Cmdb::Servicenow {
                api,
                table,
                retired_status,
                target_field,
            })
        }
        "netbox" => {
            let api = decode_cmdb_api(&mut map, &kind, ctx);
            if api.as_ref().is_some_and(|a| a.credential.is_none()) {
                ctx.error(
                    node.location,
                    "cmdb: NetBox needs `credential: env:NAME` (an API token)",
                );
            }
            let object = map
                .take("object")
                .and_then(|n| {
                    decode::parsed(n, "object", ctx, |t| {
                        NetboxObject::from_name(t)
                            .ok_or_else(|| template::unknown_name("object", t, NetboxObject::NAMES))
                    })
                })
                .unwrap_or(NetboxObject::VirtualMachine);
            let status = map
                .take("status")
                .and_then(|n| {
                    decode::parsed(n, "status", ctx, |t| match t {
                        "decommissioning" | "offline" => Ok(t.to_owned()),
                        other => Err(template::unknown_name(
                            "status",
                            other,
                            &["decommissioning", "offline"],
                        )),
                    })
                })
                .unwrap_or_else(|| "decommissioning".to_owned());
            api.map(|api| Cmdb::Netbox {
                api,
                object,
                status,
            })
        }
        "http" => {
            let api = decode_cmdb_api(&mut map, &kind, ctx);
            let method = map
                .take("method")
                .and_then(|n| {
                    decode::parsed(n, "method", ctx, |t| {
                        let upper = t.to_ascii_uppercase();
                        ["POST", "PUT", "PATCH", "DELETE"]
                            .contains(&upper.as_str())
                            .then_some(upper)
                            .ok_or_else(|| format!("`{t}` is not one of POST, PUT, PATCH, DELETE"))
                    })
                })
                .unwrap_or_else(|| "PATCH".to_owned());
            let headers = map
                .take("headers")
                .map(|n| {
                    let headers = decode::string_map(n, "header", ctx);
                    let at = |name: &str| match &n.value {
                        crate::yaml::Value::Map(entries) => entries
                            .iter()
                            .find(|e| e.key == name)
                            .map_or(n.location, |e| e.value.location),
                        _ => n.location,
                    };
                    for (name, value) in &headers {
                        let lower = name.to_ascii_lowercase();
                        let secretish = lower == "authorization"
                            || lower.contains("token")
                            || lower.contains("key");
                        if secretish && !value.contains("{{credential}}") {
                            ctx.error(
                                at(name),
                                format!(
                                    "header `{name}` holds a secret inline (value not shown): write `{{{{credential}}}}` in it and give `credential: env:NAME`"
                                ),
                            );
                        }
                        check_template(value, &format!("header `{name}`"), at(name), ctx);
                    }
                    headers
                })
                .unwrap_or_default();
            let body = map.take("body").and_then(|n| {
                let body = decode::string(n, "body", ctx)?;
                check_template(&body, "body", n.location, ctx);
                Some(body)
            });
            if let Some(api) = &api {
                let at = map.key_location("url").unwrap_or(node.location);
                check_template(&api.url, "url", at, ctx);
                if api.url.contains("{{credential}}") {
                    ctx.error(
                        at,
                        "url: `{{credential}}` would put the secret in the URL (logs, proxies): use a header",
                    );
                }
            }
            api.map(|api| Cmdb::Http {
                api,
                method,
                headers,
                body,
            })
        }
        other => {
            ctx.error(
                kind_node.location,
                template::unknown_name("cmdb kind", other, KINDS),
            );
            // Its other fields are not checked against a kind nobody meant.
            return None;
        }
    };
    map.finish(ctx);
    cmdb
}

/// A template's syntax, checked when the file is read.
fn check_template(text: &str, what: &str, location: Location, ctx: &mut Ctx) {
    if text.contains("{{{") {
        ctx.error(
            location,
            format!("{what}: `{{{{{{` would leave a fact unescaped: write `{{{{fact}}}}`"),
        );
        return;
    }
    let open = text.matches("{{").count();
    let close = text.matches("}}").count();
    if open != close {
        ctx.error(location, format!("{what}: unbalanced `{{{{` and `}}}}`"));
        return;
    }
    const FACTS: &[&str] = &["name", "cmdb_id", "fqdn", "ip", "target", "credential"];
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let fact = after[..end]
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}');
        if !FACTS.contains(&fact) {
            ctx.error(
                location,
                format!("{what}: {}", template::unknown_name("fact", fact, FACTS)),
            );
        }
        rest = &after[end + 2..];
    }
}

/// The fields every HTTP CMDB shares.
fn decode_cmdb_api(map: &mut MapReader, kind: &str, ctx: &mut Ctx) -> Option<CmdbApi> {
    let url = map.required("url", ctx).and_then(|n| {
        decode::parsed(n, "url", ctx, |text| {
            if !(text.starts_with("https://") || text.starts_with("http://")) {
                return Err(format!(
                    "`{}` is not an http:// or https:// URL",
                    redact_url(text)
                ));
            }
            if url_has_password(text) {
                return Err(
                    "the URL holds a password (not shown): put it in `credential: env:NAME`"
                        .to_owned(),
                );
            }
            Ok(text.trim_end_matches('/').to_owned())
        })
    });
    let user = map
        .take("user")
        .and_then(|n| decode::string(n, "user", ctx));
    if user.is_some() && kind != "servicenow" {
        ctx.error(
            map.key_location("user").unwrap_or(Location::START),
            format!(
                "user: only ServiceNow logs in with a user; {kind} takes a token as `credential`"
            ),
        );
    }
    let credential = password_credential(map, "a CMDB password or token", ctx);
    let ca_file = ca_file(map, ctx);
    let dry_run = map
        .take("dry_run")
        .and_then(|n| decode::boolean(n, "dry_run", ctx))
        .unwrap_or(false);
    let attempts = map
        .take("attempts")
        .and_then(|n| decode::unsigned(n, "attempts", 20, ctx))
        .map_or(5, |n| u32::try_from(n.max(1)).unwrap_or(5));
    let retry_after = map
        .take("retry_after")
        .and_then(|n| decode::duration(n, "retry_after", ctx))
        .unwrap_or(Dur::from_seconds(2));
    Some(CmdbApi {
        url: url?,
        user,
        credential,
        ca_file,
        dry_run,
        attempts,
        retry_after,
    })
}

/// The sites read, and the names of those that could not be.
fn decode_sites(node: &Node, ctx: &mut Ctx) -> (BTreeMap<String, Site>, BTreeSet<String>) {
    let mut sites = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    let Some(map) = MapReader::new(node, "sites", ctx) else {
        return (sites, invalid);
    };
    for entry in map.entries() {
        if let Err(message) = crate::rules::check_name(&entry.key) {
            ctx.error(entry.key_location, format!("site name: {message}"));
            invalid.insert(entry.key.clone());
            continue;
        }
        let Some(mut site) = MapReader::new(&entry.value, "site", ctx) else {
            invalid.insert(entry.key.clone());
            continue;
        };
        let bandwidth = site
            .required("bandwidth", ctx)
            .and_then(|n| decode::parsed(n, "bandwidth", ctx, units::parse_bandwidth));
        let compression = site.take("compression").and_then(|n| compression(n, ctx));
        site.finish(ctx);
        if let Some(bandwidth_bits) = bandwidth {
            sites.insert(
                entry.key.clone(),
                Site {
                    bandwidth_bits,
                    compression,
                    location: entry.key_location,
                },
            );
        } else {
            invalid.insert(entry.key.clone());
        }
    }
    (sites, invalid)
}

/// A compression factor: bytes read per byte sent, from 1 (none) to 20.
pub fn compression(node: &Node, ctx: &mut Ctx) -> Option<f64> {
    let value = decode::number(node, "compression", ctx)?;
    if !(1.0..=20.0).contains(&value) {
        ctx.error(
            node.location,
            format!("compression: {value} is out of range: write bytes read per byte sent, from 1 (none) to 20"),
        );
        return None;
    }
    Some(value)
}

/// A reference to a site, checked against the configuration.
pub fn check_site(site: &Spanned<String>, config: &Config, ctx: &mut Ctx) {
    if config.sites.contains_key(&site.value) || config.invalid_sites.contains(&site.value) {
        return;
    }
    let known: Vec<&str> = config.sites.keys().map(String::as_str).collect();
    let message = if known.is_empty() {
        format!(
            "site `{}` is not defined: add it under `sites` in the configuration file",
            site.value
        )
    } else {
        template::unknown_name("site", &site.value, &known)
    };
    ctx.error(site.location, message);
}

#[cfg(test)]
mod tests {
    use super::database_url_problem;

    #[test]
    fn a_database_url_must_keep_the_state_somewhere() {
        for kept in [
            "sqlite://.wavelift/state.db",
            "sqlite:///var/lib/wavelift/state.db?mode=rwc",
            "sqlite:state.db",
            "postgres://wavelift@127.0.0.1:5432/waves",
            "postgresql://db.example/waves",
            "postgres:///waves?host=/run/postgresql",
            "postgres:///waves",
        ] {
            assert_eq!(database_url_problem(kept), None, "{kept}");
        }
        for (lost, said) in [
            ("sqlite:", "names no file"),
            ("sqlite://", "names no file"),
            ("sqlite::memory:", "in memory"),
            ("sqlite://?mode=memory", "in memory"),
            ("sqlite://state.db?cache=shared&mode=memory", "in memory"),
            ("sqlite://.wavelift/", "names a folder"),
            ("sqlite://.", "names a folder"),
            ("sqlite://state/..", "names a folder"),
        ] {
            let why = database_url_problem(lost).unwrap_or_default();
            assert!(why.contains(said), "{lost}: {why}");
        }
    }
}
