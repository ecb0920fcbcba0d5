//! Task settings: thresholds, schedules, probes, approvals, retries and timeouts.
//!
//! Settings are layered: built-in defaults, then the configuration file's `defaults`,
//! then the wave's, the application's and the server's. Each layer is read *onto* a copy
//! of the one below, so a layer only names what it changes.

use serde::Serialize;

use crate::cron::CronSchedule;
use crate::decode::{self, Ctx, MapReader};
use crate::model::TaskKind;
use crate::units::Dur;
use crate::yaml::Node;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// What every task kind has: how often it is tried again, how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempts {
    /// Tries after the first one fails.
    pub retries: u32,
    /// Wait before the first retry; it doubles on every further retry.
    pub backoff: Dur,
    pub timeout: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrereqSettings {
    pub attempts: Attempts,
    pub min_free_root: u64,
    pub min_free_tmp: u64,
    /// Free space on C: for Windows servers.
    pub min_free_system_drive: u64,
    /// Endpoints (`host:port`) the source must reach over TCP besides the engine's own
    /// (a proxy, a site's replication network).
    pub reach: Vec<String>,
    /// A command run on the source before the checks (installing what they need, say);
    /// `{{name}}`, `{{disks}}` and `{{config_dir}}` in it are the server's, shell-quoted.
    pub prepare: Option<String>,
}

/// The placeholders a prepare command may use.
pub const PREPARE_FACTS: &[&str] = &["name", "disks", "config_dir"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentPushSettings {
    /// Flattened, and no bandwidth left out, so a stored server without one reads as
    /// before this setting existed (`apply` compares servers by this form).
    #[serde(flatten)]
    pub attempts: Attempts,
    /// The most the agent sends, in bits per second (the local engine's agent); `None`:
    /// as fast as it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_bits: Option<u64>,
    /// The longest pause between the local engine's agent's passes over quiet disks
    /// (its `--scan-interval`); `None`: the agent's own, half a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_interval: Option<Dur>,
}

/// The longest `agent_push.scan_interval`: the agent's lag on a quiet disk is about it.
pub const MAX_SCAN_INTERVAL: Dur = Dur {
    days: 0,
    seconds: 3600,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifySettings {
    pub attempts: Attempts,
    /// When replication is checked, from the agent push until the cutover.
    #[serde(serialize_with = "serialize_display")]
    pub schedule: CronSchedule,
    /// Replication lag above this fails the check.
    pub max_lag: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// A TCP connection to the target on this port.
    Tcp { port: u16 },
    /// An HTTP(S) request; `{{fqdn}}` and `{{ip}}` in the URL are the target's.
    Http { url: String, status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootTestSettings {
    pub attempts: Attempts,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CutoverSettings {
    pub attempts: Attempts,
    /// A go/no-go approval is needed before the cutover starts.
    pub approval: bool,
    /// Shut the source down before the final sync (servers can opt out).
    pub shutdown_source: bool,
    /// How long one server's cutover takes, for planning the window.
    pub expected_duration: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CmdbCleanupSettings {
    pub attempts: Attempts,
    /// Time after the window before the source is retired.
    pub hypercare: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskSettings {
    pub prereq_check: PrereqSettings,
    pub agent_push: AgentPushSettings,
    pub replication_verify: VerifySettings,
    pub boot_test: BootTestSettings,
    pub cutover: CutoverSettings,
    pub cmdb_cleanup: CmdbCleanupSettings,
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn attempts(retries: u32, backoff_seconds: u64, timeout_seconds: u64) -> Attempts {
    Attempts {
        retries,
        backoff: Dur::from_seconds(backoff_seconds),
        timeout: Dur::from_seconds(timeout_seconds),
    }
}

/// The default replication check: every 30 minutes.
pub const DEFAULT_VERIFY_SCHEDULE: &str = "*/30 * * * *";

impl Default for TaskSettings {
    fn default() -> TaskSettings {
        let schedule = CronSchedule::parse(DEFAULT_VERIFY_SCHEDULE);
        TaskSettings {
            prereq_check: PrereqSettings {
                attempts: attempts(2, 60, 600),
                min_free_root: 2 * GIB,
                min_free_tmp: 500 * MIB,
                min_free_system_drive: 2 * GIB,
                reach: Vec::new(),
                prepare: None,
            },
            agent_push: AgentPushSettings {
                attempts: attempts(3, 120, 1800),
                bandwidth_bits: None,
                scan_interval: None,
            },
            replication_verify: VerifySettings {
                attempts: attempts(0, 60, 300),
                #[allow(clippy::expect_used)]
                schedule: schedule.expect("the default schedule is valid"),
                max_lag: Dur::from_seconds(600),
            },
            boot_test: BootTestSettings {
                attempts: attempts(1, 300, 7200),
                probes: Vec::new(),
            },
            cutover: CutoverSettings {
                attempts: attempts(1, 120, 4 * 3600),
                approval: true,
                shutdown_source: true,
                expected_duration: Dur::from_seconds(3600),
            },
            cmdb_cleanup: CmdbCleanupSettings {
                attempts: attempts(5, 600, 600),
                hypercare: Dur::from_days(7),
            },
        }
    }
}

impl TaskSettings {
    pub fn attempts(&self, kind: TaskKind) -> &Attempts {
        match kind {
            TaskKind::PrereqCheck => &self.prereq_check.attempts,
            TaskKind::AgentPush => &self.agent_push.attempts,
            TaskKind::ReplicationVerify => &self.replication_verify.attempts,
            TaskKind::BootTest => &self.boot_test.attempts,
            TaskKind::Cutover => &self.cutover.attempts,
            TaskKind::CmdbCleanup => &self.cmdb_cleanup.attempts,
        }
    }
}

/// Reads a `tasks:` mapping onto `base`.
pub fn decode_onto(node: &Node, base: &mut TaskSettings, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "tasks", ctx) else {
        return;
    };
    if let Some(node) = map.take("prereq_check") {
        decode_prereq(node, &mut base.prereq_check, ctx);
    }
    if let Some(node) = map.take("agent_push")
        && let Some(mut m) = MapReader::new(node, "agent_push settings", ctx)
    {
        decode_attempts(&mut m, &mut base.agent_push.attempts, ctx);
        if let Some(n) = m.take("bandwidth") {
            let bandwidth = decode::parsed(n, "bandwidth", ctx, |text| {
                let bits = crate::units::parse_bandwidth(text)?;
                if bits < 10_000 {
                    return Err(format!(
                        "`{text}` is less than the agent's least rate, 10kbit/s"
                    ));
                }
                Ok(bits)
            });
            if bandwidth.is_some() {
                base.agent_push.bandwidth_bits = bandwidth;
            }
        }
        if let Some(n) = m.take("scan_interval") {
            let interval = decode::parsed(n, "scan_interval", ctx, |text| {
                let interval = crate::units::parse_duration(text)?;
                if interval.is_zero() {
                    return Err(format!(
                        "`{text}` is no pause: the agent would read the disks without rest; \
                         leave the setting out for the agent's own (half a second)"
                    ));
                }
                if interval.approx_seconds() > MAX_SCAN_INTERVAL.approx_seconds() {
                    return Err(format!(
                        "`{text}` is longer than {MAX_SCAN_INTERVAL}: a change to a quiet disk \
                         would wait that long to replicate"
                    ));
                }
                Ok(interval)
            });
            if interval.is_some() {
                base.agent_push.scan_interval = interval;
            }
        }
        m.finish(ctx);
    }
    if let Some(node) = map.take("replication_verify") {
        decode_verify(node, &mut base.replication_verify, ctx);
    }
    if let Some(node) = map.take("boot_test") {
        decode_boot_test(node, &mut base.boot_test, ctx);
    }
    if let Some(node) = map.take("cutover") {
        decode_cutover(node, &mut base.cutover, ctx);
    }
    if let Some(node) = map.take("cmdb_cleanup")
        && let Some(mut m) = MapReader::new(node, "cmdb_cleanup settings", ctx)
    {
        decode_attempts(&mut m, &mut base.cmdb_cleanup.attempts, ctx);
        if let Some(n) = m.take("hypercare") {
            set(
                &mut base.cmdb_cleanup.hypercare,
                decode::duration(n, "hypercare", ctx),
            );
        }
        m.finish(ctx);
    }
    map.finish(ctx);
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn decode_attempts(map: &mut MapReader, base: &mut Attempts, ctx: &mut Ctx) {
    if let Some(n) = map.take("retries") {
        let retries = decode::unsigned(n, "retries", 100, ctx);
        set(
            &mut base.retries,
            retries.and_then(|r| u32::try_from(r).ok()),
        );
    }
    if let Some(n) = map.take("backoff") {
        set(&mut base.backoff, decode::duration(n, "backoff", ctx));
    }
    if let Some(n) = map.take("timeout") {
        let timeout = decode::duration(n, "timeout", ctx);
        if timeout.is_some_and(Dur::is_zero) {
            ctx.error(n.location, "timeout: must be longer than zero");
        } else {
            set(&mut base.timeout, timeout);
        }
    }
}

fn decode_prereq(node: &Node, base: &mut PrereqSettings, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "prereq_check settings", ctx) else {
        return;
    };
    decode_attempts(&mut map, &mut base.attempts, ctx);
    if let Some(node) = map.take("min_free_space")
        && let Some(mut free) = MapReader::new(node, "min_free_space", ctx)
    {
        if let Some(n) = free.take("root") {
            set(
                &mut base.min_free_root,
                decode::size(n, "min_free_space.root", ctx),
            );
        }
        if let Some(n) = free.take("tmp") {
            set(
                &mut base.min_free_tmp,
                decode::size(n, "min_free_space.tmp", ctx),
            );
        }
        if let Some(n) = free.take("system_drive") {
            let value = decode::size(n, "min_free_space.system_drive", ctx);
            set(&mut base.min_free_system_drive, value);
        }
        free.finish(ctx);
    }
    if let Some(node) = map.take("reach") {
        let mut reach = Vec::new();
        for item in decode::list(node, "reach", ctx) {
            let endpoint = decode::parsed(item, "reach", ctx, |text| {
                let (host, port) = text
                    .rsplit_once(':')
                    .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("`{text}` has no host"));
                }
                if !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
                {
                    return Err(format!(
                        "`{text}`: a host is a name or an address (letters, digits, `.`, `-`, `:`)"
                    ));
                }
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(text.to_owned()),
                    _ => Err(format!("`{text}`: the port must be 1 to 65535")),
                }
            });
            reach.extend(endpoint);
        }
        base.reach = reach;
    }
    if let Some(node) = map.take("prepare") {
        let command = decode::parsed(node, "prepare", ctx, |text| {
            if text.trim().is_empty() {
                return Err("the prepare command is empty".to_owned());
            }
            check_placeholders(text, PREPARE_FACTS, "the server")?;
            Ok(text.to_owned())
        });
        if command.is_some() {
            base.prepare = command;
        }
    }
    map.finish(ctx);
}

fn decode_verify(node: &Node, base: &mut VerifySettings, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "replication_verify settings", ctx) else {
        return;
    };
    decode_attempts(&mut map, &mut base.attempts, ctx);
    if let Some(n) = map.take("schedule") {
        let schedule = decode::parsed(n, "schedule", ctx, |text| {
            CronSchedule::parse(text).map_err(|e| format!("cron expression `{text}`: {e}"))
        });
        set(&mut base.schedule, schedule);
    }
    if let Some(n) = map.take("max_lag") {
        set(&mut base.max_lag, decode::duration(n, "max_lag", ctx));
    }
    map.finish(ctx);
}

fn decode_boot_test(node: &Node, base: &mut BootTestSettings, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "boot_test settings", ctx) else {
        return;
    };
    decode_attempts(&mut map, &mut base.attempts, ctx);
    if let Some(n) = map.take("probes") {
        // A list of probes replaces the inherited one: probes are a set, not a patch.
        base.probes = decode::list(n, "probes", ctx)
            .iter()
            .filter_map(|item| decode_probe(item, ctx))
            .collect();
    }
    map.finish(ctx);
}

/// Every `{{NAME}}` in `text` is one of `facts` (of `whose`), and closed.
fn check_placeholders(text: &str, facts: &[&str], whose: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("a `{{` without its `}}`".to_owned());
        };
        let name = after[..end].trim();
        if !facts.contains(&name) {
            return Err(format!(
                "`{{{{{name}}}}}` is not a fact of {whose}; known: {}",
                facts.join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// The placeholders an http probe's URL may use: the launched target's.
const PROBE_FACTS: &[&str] = &["fqdn", "ip"];

fn decode_probe(node: &Node, ctx: &mut Ctx) -> Option<Probe> {
    let mut map = MapReader::new(node, "probe", ctx)?;
    let tcp = map.take("tcp");
    let http = map.take("http");
    let status = map.take("status");
    // Unknown fields are reported whatever the probe's own values hold.
    map.finish(ctx);
    match (tcp, http) {
        (Some(port), None) => {
            if let Some(status) = status {
                ctx.error(status.location, "`status` applies to http probes only");
            }
            let port = decode::unsigned(port, "tcp port", 65_535, ctx)?;
            if port == 0 {
                ctx.error(node.location, "tcp port must be between 1 and 65535");
                return None;
            }
            Some(Probe::Tcp {
                port: u16::try_from(port).ok()?,
            })
        }
        (None, Some(url)) => {
            let url = decode::parsed(url, "http probe", ctx, |text| {
                let Some(rest) = text
                    .strip_prefix("http://")
                    .or_else(|| text.strip_prefix("https://"))
                else {
                    return Err(format!("`{text}` is not an http:// or https:// URL"));
                };
                // Only the target's facts stand in the URL; any other `{{...}}` would be
                // sent as written.
                check_placeholders(rest, PROBE_FACTS, "the target")?;
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() || host.starts_with(':') {
                    return Err(format!(
                        "`{text}` names no host: write it like http://{{{{fqdn}}}}/health"
                    ));
                }
                Ok(text.to_owned())
            });
            let status = match status {
                Some(n) => {
                    let code = decode::unsigned(n, "status", 599, ctx)?;
                    if code < 100 {
                        ctx.error(n.location, "status must be an HTTP status code (100-599)");
                        return None;
                    }
                    u16::try_from(code).ok()?
                }
                None => 200,
            };
            url.map(|url| Probe::Http { url, status })
        }
        (Some(_), Some(_)) => {
            ctx.error(node.location, "a probe is either `tcp` or `http`, not both");
            None
        }
        (None, None) => {
            ctx.error(node.location, "a probe needs `tcp: PORT` or `http: URL`");
            None
        }
    }
}

fn decode_cutover(node: &Node, base: &mut CutoverSettings, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "cutover settings", ctx) else {
        return;
    };
    decode_attempts(&mut map, &mut base.attempts, ctx);
    if let Some(n) = map.take("approval") {
        set(&mut base.approval, decode::boolean(n, "approval", ctx));
    }
    if let Some(n) = map.take("shutdown_source") {
        set(
            &mut base.shutdown_source,
            decode::boolean(n, "shutdown_source", ctx),
        );
    }
    if let Some(n) = map.take("expected_duration") {
        let value = decode::duration(n, "expected_duration", ctx);
        if value.is_some_and(Dur::is_zero) {
            ctx.error(n.location, "expected_duration: must be longer than zero");
        } else {
            set(&mut base.expected_duration, value);
        }
    }
    map.finish(ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_push_without_a_bandwidth_serializes_as_before_the_setting_existed() {
        let settings = TaskSettings::default();
        assert_eq!(
            serde_json::to_value(&settings.agent_push).expect("json"),
            serde_json::to_value(&settings.agent_push.attempts).expect("json"),
            "stored servers compare equal, so apply reports no change"
        );
        let limited = AgentPushSettings {
            bandwidth_bits: Some(100_000_000),
            ..settings.agent_push
        };
        assert_eq!(
            serde_json::to_value(&limited).expect("json")["bandwidth_bits"],
            100_000_000
        );
    }
}
