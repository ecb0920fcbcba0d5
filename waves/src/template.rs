//! The fields a server inherits: from the configuration's `defaults`, the wave's, the
//! application's, and finally its own. Each layer is read onto a copy of the one below.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::decode::{self, Ctx, MapReader};
use crate::diag::Location;
use crate::model::{
    AccessMethod, Blueprint, Blueprints, CredentialRef, OsFamily, Spanned, TaskKind,
};
use crate::settings::{self, TaskSettings};
use crate::units::{self, ChangeRate};
use crate::yaml::{Node, Value};

/// Inheritable server fields; `None` where no layer has said anything yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerTemplate {
    pub os_family: Option<OsFamily>,
    /// The last layer that wrote `os.family` wrote one that could not be read (reported
    /// there): no "no `os.family`" error besides.
    pub os_family_invalid: bool,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    pub access: AccessTemplate,
    pub change_rate: Option<ChangeRate>,
    pub site: Option<Spanned<String>>,
    /// One of `engines.mgn.accounts`.
    pub mgn_account: Option<Spanned<String>>,
    pub blueprints: Blueprints,
    /// Where the blueprints' subnets and security groups were written, for the checks
    /// that depend on the engine (made later, per wave and server).
    pub blueprint_places: BlueprintPlaces,
    pub tags: BTreeMap<String, String>,
    pub exclude_from_shutdown: bool,
    pub skip: Vec<TaskKind>,
    pub tasks: TaskSettings,
}

/// A file and a place in it.
pub type Written = (Arc<str>, Location);

/// Where a layer last wrote each blueprint's subnet and security groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlueprintPlaces {
    pub test: BlueprintPlace,
    pub cutover: BlueprintPlace,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlueprintPlace {
    pub subnet: Option<Written>,
    /// One per security group, in order.
    pub security_groups: Vec<Written>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessTemplate {
    pub method: Option<AccessMethod>,
    /// The last layer that wrote `method` wrote one that could not be read (reported
    /// there): the checks that need the method are not made.
    pub method_invalid: bool,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub credential: Option<CredentialRef>,
    pub sudo: Option<bool>,
    pub sudo_credential: Option<CredentialRef>,
    pub jump: Option<String>,
}

/// Field names that hold a secret when written inline.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "private_key",
    "key",
    "api_key",
    "sudo_password",
    // AWS keys, as the CLI's files and the SDKs' environment name them.
    "secret_key",
    "access_key",
    "secret_access_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
];

/// Reads the inheritable fields present in `map` onto `base`. The caller owns `map` and
/// calls `finish` on it, so the server's own fields count as known.
pub fn decode_fields(map: &mut MapReader, base: &mut ServerTemplate, ctx: &mut Ctx) {
    if let Some(node) = map.take("os") {
        decode_os(node, base, ctx);
    }
    if let Some(node) = map.take("access") {
        decode_access(node, &mut base.access, ctx);
    }
    if let Some(node) = map.take("change_rate")
        && let Some(rate) = decode::parsed(node, "change_rate", ctx, units::parse_change_rate)
    {
        base.change_rate = Some(rate);
    }
    if let Some(node) = map.take("mgn_account")
        && let Some(account) = decode::name(node, "mgn_account", ctx)
    {
        base.mgn_account = Some(Spanned::new(account, node.location));
    }
    if let Some(node) = map.take("site")
        && let Some(site) = decode::name(node, "site", ctx)
    {
        base.site = Some(Spanned::new(site, node.location));
    }
    if let Some(node) = map.take("blueprints") {
        decode_blueprints(node, &mut base.blueprints, &mut base.blueprint_places, ctx);
    }
    if let Some(node) = map.take("tags") {
        base.tags.extend(decode::string_map(node, "tag", ctx));
    }
    if let Some(node) = map.take("exclude_from_shutdown")
        && let Some(value) = decode::boolean(node, "exclude_from_shutdown", ctx)
    {
        base.exclude_from_shutdown = value;
    }
    if let Some(node) = map.take("skip") {
        base.skip = decode::list(node, "skip", ctx)
            .iter()
            .filter_map(|item| task_kind(item, ctx))
            .collect();
    }
    if let Some(node) = map.take("tasks") {
        settings::decode_onto(node, &mut base.tasks, ctx);
    }
}

pub fn task_kind(node: &Node, ctx: &mut Ctx) -> Option<TaskKind> {
    decode::parsed(node, "task", ctx, |text| {
        TaskKind::from_name(text).ok_or_else(|| unknown_name("task", text, TaskKind::NAMES))
    })
}

/// "unknown engine `lcoal`; did you mean `local`?" or the list of known names.
pub fn unknown_name(what: &str, text: &str, known: &[&str]) -> String {
    match decode::closest(text, known) {
        Some(near) => format!("unknown {what} `{text}`; did you mean `{near}`?"),
        None => format!(
            "unknown {what} `{text}`; expected one of: {}",
            known.join(", ")
        ),
    }
}

fn decode_os(node: &Node, base: &mut ServerTemplate, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "os", ctx) else {
        return;
    };
    if let Some(n) = map.take("family") {
        let family = decode::parsed(n, "os family", ctx, |text| {
            OsFamily::from_name(&text.to_lowercase())
                .ok_or_else(|| unknown_name("os family", text, OsFamily::NAMES))
        });
        base.os_family_invalid = family.is_none();
        if family.is_some() {
            base.os_family = family;
        }
    }
    if let Some(n) = map.take("version") {
        base.os_version = decode::string(n, "os version", ctx).or(base.os_version.take());
    }
    if let Some(n) = map.take("arch") {
        let arch = decode::parsed(n, "arch", ctx, |text| match text {
            "x86_64" | "amd64" => Ok("x86_64".to_owned()),
            "arm64" | "aarch64" => Ok("arm64".to_owned()),
            other => Err(unknown_name("architecture", other, &["x86_64", "arm64"])),
        });
        base.arch = arch.or(base.arch.take());
    }
    map.finish(ctx);
}

/// `env:NAME`, `file:PATH` or `ssh-agent`; anything else is taken for an inline secret
/// and refused without repeating it.
pub fn credential(node: &Node, what: &str, ctx: &mut Ctx) -> Option<CredentialRef> {
    let Value::Scalar(scalar) = &node.value else {
        ctx.error(
            node.location,
            format!(
                "expected a credential reference for {what}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let text = scalar.text.trim();
    if let Some(name) = text.strip_prefix("env:") {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if valid {
            return Some(CredentialRef::Env(name.to_owned()));
        }
        ctx.error(
            node.location,
            format!(
                "{what}: `env:{name}` is not an environment variable name (letters, digits, _)"
            ),
        );
        return None;
    }
    if let Some(path) = text.strip_prefix("file:") {
        if path.is_empty() {
            ctx.error(node.location, format!("{what}: `file:` needs a path"));
            return None;
        }
        return Some(CredentialRef::File(path.to_owned()));
    }
    if text == "ssh-agent" {
        return Some(CredentialRef::SshAgent);
    }
    ctx.error(
        node.location,
        format!(
            "{what} looks like an inline secret (value not shown): Wavelift never stores secrets; \
             write a reference: env:NAME, file:PATH or ssh-agent"
        ),
    );
    None
}

/// The usual remedy for an inline secret, where the mapping has a `credential` field.
pub const USE_CREDENTIAL: &str = "use `credential: env:NAME` or `credential: file:PATH`";

/// Reports fields that carry a secret inline (for example `password: hunter2`); `remedy`
/// says where the secret belongs instead.
pub fn refuse_inline_secrets(map: &mut MapReader, what: &str, remedy: &str, ctx: &mut Ctx) {
    let secret_keys: Vec<String> = map
        .entries()
        .iter()
        .filter(|e| SECRET_KEYS.contains(&e.key.to_lowercase().as_str()))
        .map(|e| e.key.clone())
        .collect();
    for key in secret_keys {
        if let Some(location) = map.key_location(&key) {
            ctx.error(
                location,
                format!(
                    "`{key}` in {what} is an inline secret (value not shown): Wavelift never \
                     stores secrets; {remedy}"
                ),
            );
        }
        map.mark_used(&key);
    }
}

fn decode_access(node: &Node, base: &mut AccessTemplate, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "access", ctx) else {
        return;
    };
    refuse_inline_secrets(&mut map, "access", USE_CREDENTIAL, ctx);
    if let Some(n) = map.take("method") {
        let method = decode::parsed(n, "access method", ctx, |text| {
            AccessMethod::from_name(text)
                .ok_or_else(|| unknown_name("access method", text, AccessMethod::NAMES))
        });
        base.method_invalid = method.is_none();
        if method.is_some() {
            base.method = method;
        }
    }
    if let Some(n) = map.take("user") {
        base.user = decode::string(n, "user", ctx).or(base.user.take());
    }
    if let Some(n) = map.take("port") {
        match decode::unsigned(n, "port", 65_535, ctx) {
            Some(0) => ctx.error(n.location, "port must be between 1 and 65535"),
            Some(port) => base.port = u16::try_from(port).ok(),
            None => {}
        }
    }
    if let Some(n) = map.take("credential") {
        base.credential = credential(n, "credential", ctx).or(base.credential.take());
    }
    if let Some(n) = map.take("sudo") {
        base.sudo = decode::boolean(n, "sudo", ctx).or(base.sudo);
    }
    if let Some(n) = map.take("sudo_credential") {
        base.sudo_credential =
            credential(n, "sudo_credential", ctx).or(base.sudo_credential.take());
    }
    if let Some(n) = map.take("jump") {
        let jump = decode::parsed(n, "jump", ctx, |text| {
            if text.is_empty() {
                return Err("empty: write HOST, USER@HOST or USER@HOST:PORT".to_owned());
            }
            let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
            let (host, port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
                _ => (host, None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || text.contains(char::is_whitespace) {
                return Err(format!("`{text}` is not HOST, USER@HOST or USER@HOST:PORT"));
            }
            if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
                return Err(format!("`{text}`: the port must be 1 to 65535"));
            }
            Ok(text.to_owned())
        });
        base.jump = jump.or(base.jump.take());
    }
    map.finish(ctx);
}

fn decode_blueprints(
    node: &Node,
    base: &mut Blueprints,
    places: &mut BlueprintPlaces,
    ctx: &mut Ctx,
) {
    let Some(mut map) = MapReader::new(node, "blueprints", ctx) else {
        return;
    };
    // `both` sets test and cutover at once; the specific ones then override it.
    if let Some(n) = map.take("both") {
        decode_blueprint(n, &mut base.test, &mut places.test, ctx);
        decode_blueprint(n, &mut base.cutover, &mut places.cutover, ctx);
    }
    if let Some(n) = map.take("test") {
        decode_blueprint(n, &mut base.test, &mut places.test, ctx);
    }
    if let Some(n) = map.take("cutover") {
        decode_blueprint(n, &mut base.cutover, &mut places.cutover, ctx);
    }
    map.finish(ctx);
}

fn decode_blueprint(node: &Node, base: &mut Blueprint, places: &mut BlueprintPlace, ctx: &mut Ctx) {
    let Some(mut map) = MapReader::new(node, "blueprint", ctx) else {
        return;
    };
    if let Some(n) = map.take("instance_type") {
        base.instance_type = decode::string(n, "instance_type", ctx).or(base.instance_type.take());
    }
    if let Some(n) = map.take("subnet")
        && let Some(subnet) = decode::string(n, "subnet", ctx)
    {
        base.subnet = Some(subnet);
        places.subnet = Some((Arc::clone(&ctx.file), n.location));
    }
    if let Some(n) = map.take("security_groups") {
        let (groups, written): (Vec<String>, Vec<Written>) =
            decode::list(n, "security_groups", ctx)
                .iter()
                .filter_map(|item| {
                    decode::string(item, "security group", ctx)
                        .map(|group| (group, (Arc::clone(&ctx.file), item.location)))
                })
                .unzip();
        base.security_groups = groups;
        places.security_groups = written;
    }
    if let Some(n) = map.take("tags") {
        base.tags.extend(decode::string_map(n, "tag", ctx));
    }
    if let Some(n) = map.take("options") {
        match &n.value {
            Value::Map(entries) => {
                for entry in entries {
                    refuse_secret_option(&entry.key, &entry.value, ctx);
                    base.options
                        .insert(entry.key.clone(), decode::to_json(&entry.value));
                }
            }
            _ => ctx.error(
                n.location,
                format!("expected a mapping for options, found {}", n.describe()),
            ),
        }
    }
    map.finish(ctx);
}

/// Free-form options are passed to the engine as written, so a secret there would be
/// stored: only references are allowed under secret-sounding names.
fn refuse_secret_option(key: &str, value: &Node, ctx: &mut Ctx) {
    let lowered = key.to_lowercase();
    let sounds_secret = ["password", "secret", "token", "private_key", "api_key"]
        .iter()
        .any(|s| lowered.contains(s));
    if !sounds_secret {
        return;
    }
    let is_reference = value.is_null()
        || value.as_scalar().is_some_and(|s| {
            s.text.starts_with("env:") || s.text.starts_with("file:") || s.text.is_empty()
        });
    if !is_reference {
        ctx.error(
            value.location,
            format!(
                "option `{key}` looks like an inline secret (value not shown): write a reference, \
                 env:NAME or file:PATH"
            ),
        );
    }
}
