//! The validated wave model: what the definitions say once every field has been read,
//! every default applied and every time placed in its time zone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Zoned;
use serde::Serialize;

use crate::config::Config;
use crate::diag::Location;
use crate::settings::TaskSettings;
use crate::units::{ChangeRate, Dur};

/// A value and where it was written, for messages that point back at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spanned<T> {
    pub value: T,
    #[serde(skip)]
    pub location: Location,
}

impl<T> Spanned<T> {
    pub fn new(value: T, location: Location) -> Spanned<T> {
        Spanned { value, location }
    }
}

/// Declares a closed set of names: the enum, its YAML spelling and its list.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        /// Written as in the wave files (`prereq_check`, `local`), in JSON too.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn from_name(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

named_enum!(
    /// The replication engine a wave runs on.
    EngineKind { Local => "local", Sim => "sim", Mgn => "mgn" }
);

named_enum!(
    /// The predefined tasks, in the order they run for one server.
    TaskKind {
        PrereqCheck => "prereq_check",
        AgentPush => "agent_push",
        ReplicationVerify => "replication_verify",
        BootTest => "boot_test",
        Cutover => "cutover",
        CmdbCleanup => "cmdb_cleanup",
    }
);

named_enum!(OsFamily { Linux => "linux", Windows => "windows" });

named_enum!(
    /// How Wavelift reaches a source server.
    AccessMethod { Ssh => "ssh", Winrm => "winrm", Local => "local" }
);

named_enum!(
    /// The three phases of a wave, in order.
    PhaseKind { Build => "build", Validate => "validate", Cutover => "cutover" }
);

/// Where a secret lives. Wavelift stores and logs only this reference, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum CredentialRef {
    /// An environment variable of the process that runs Wavelift.
    Env(String),
    /// A file readable by that process.
    File(String),
    /// The keys of the running ssh-agent.
    SshAgent,
}

impl CredentialRef {
    /// The secret it points to (a trailing line break dropped); the error names the
    /// reference, never a value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            CredentialRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("the credential {self} is not set in Wavelift's environment")),
            CredentialRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|err| format!("cannot read the credential {self}: {err}")),
            CredentialRef::SshAgent => Err(
                "the ssh-agent holds keys, not a password; use env:NAME or file:PATH".to_owned(),
            ),
        }
    }
}

impl fmt::Display for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialRef::Env(name) => write!(f, "env:{name}"),
            CredentialRef::File(path) => write!(f, "file:{path}"),
            CredentialRef::SshAgent => f.write_str("ssh-agent"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Access {
    pub method: AccessMethod,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub credential: Option<CredentialRef>,
    /// Commands that need root run through sudo.
    pub sudo: bool,
    /// When sudo asks for a password: where it is.
    pub sudo_credential: Option<CredentialRef>,
    /// A host to jump through (`host` or `user@host:port`).
    pub jump: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Os {
    pub family: OsFamily,
    pub version: Option<String>,
    pub arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Blueprint {
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// Engine-specific settings, passed through as written.
    pub options: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Blueprints {
    pub test: Blueprint,
    pub cutover: Blueprint,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    pub device: String,
    pub size_bytes: u64,
    /// Bytes in use; replication sends only these (zero blocks are skipped).
    pub used_bytes: Option<u64>,
    pub boot: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub name: Spanned<String>,
    pub fqdn: Option<Spanned<String>>,
    pub ip: Option<Spanned<IpAddr>>,
    pub os: Os,
    pub access: Access,
    pub disks: Vec<Disk>,
    pub change_rate: Option<ChangeRate>,
    pub site: Option<Spanned<String>>,
    pub blueprints: Blueprints,
    pub cmdb_id: Option<String>,
    /// The engine's own id of this source server (MGN: `s-` and 17 hex digits), for a
    /// server that matching by hostname, FQDN or IP cannot tell apart.
    pub source_id: Option<Spanned<String>>,
    /// The account and Region of `engines.mgn.accounts` it migrates to; the mgn
    /// engine's own when none.
    pub mgn_account: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Not shut down before its cutover (for example a shared database host).
    pub exclude_from_shutdown: bool,
    pub skip: Vec<TaskKind>,
    pub tasks: TaskSettings,
    #[serde(skip)]
    pub location: Location,
}

impl Server {
    /// Bytes replication has to send at first: used bytes where known, else disk sizes.
    pub fn used_bytes(&self) -> u64 {
        self.disks
            .iter()
            .map(|d| d.used_bytes.unwrap_or(d.size_bytes))
            .sum()
    }

    pub fn skips(&self, kind: TaskKind) -> bool {
        self.skip.contains(&kind)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Application {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub depends_on: Vec<Spanned<String>>,
    pub servers: Vec<Server>,
    #[serde(skip)]
    pub location: Location,
}

/// A span of time in the wave's time zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub start: Zoned,
    pub end: Zoned,
}

impl Interval {
    pub fn contains(&self, instant: &Zoned) -> bool {
        self.start <= *instant && *instant <= self.end
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn seconds(&self) -> f64 {
        self.end.timestamp().as_second() as f64 - self.start.timestamp().as_second() as f64
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phases {
    pub build: Interval,
    pub validate: Interval,
    pub cutover: Interval,
}

impl Phases {
    pub fn get(&self, kind: PhaseKind) -> &Interval {
        match kind {
            PhaseKind::Build => &self.build,
            PhaseKind::Validate => &self.validate,
            PhaseKind::Cutover => &self.cutover,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub interval: Interval,
    pub duration: Dur,
    pub timezone: String,
    /// Where `start` and `duration` are written, for the plan's findings.
    #[serde(skip)]
    pub start_location: Location,
    #[serde(skip)]
    pub duration_location: Location,
}

/// How fast a wave's servers can replicate, for the estimator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicationLink {
    pub bandwidth_bits: Option<u64>,
    /// Bytes read divided by bytes sent; 1.0 when not set.
    pub compression: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wave {
    #[serde(skip)]
    pub file: Arc<str>,
    #[serde(skip)]
    pub location: Location,
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub engine: Spanned<EngineKind>,
    pub window: Window,
    pub phases: Phases,
    pub notify: Vec<String>,
    pub replication: ReplicationLink,
    pub applications: Vec<Application>,
}

impl Wave {
    pub fn servers(&self) -> impl Iterator<Item = (&Application, &Server)> {
        self.applications
            .iter()
            .flat_map(|app| app.servers.iter().map(move |server| (app, server)))
    }

    pub fn server_count(&self) -> usize {
        self.applications.iter().map(|a| a.servers.len()).sum()
    }
}

/// Everything a set of definition files says, once valid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definitions {
    pub config: Config,
    /// Ordered by window start, then name.
    pub waves: Vec<Wave>,
}
