//! One row of the form: its strategy, its wave and application, and the server it
//! describes, with the checks across rows (a server, host name or target address written
//! twice, an application split across waves).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::cells::{self, Network};
use super::columns::Column;
use super::form::{AppDraft, Form, Row, WaveDraft};
use super::{Sink, Skipped};
use crate::decode;
use crate::diag::Location;
use crate::model::OsFamily;
use crate::rules::{check_fqdn, shown};

/// The longest name `decode::name` accepts.
const MAX_NAME_CHARS: usize = 100;

/// One server as the form describes it, checked.
#[derive(Debug, Clone)]
pub(super) struct ServerDraft {
    pub(super) name: String,
    /// The host name wavelift reaches the server by.
    pub(super) fqdn: String,
    pub(super) family: OsFamily,
    pub(super) os_version: Option<String>,
    pub(super) tags: BTreeMap<String, String>,
    pub(super) instance_type: Option<String>,
    pub(super) launch_tags: BTreeMap<String, String>,
    pub(super) options: Vec<(&'static str, String)>,
    pub(super) test: Network,
    /// With the address of the new instance, CMF's `private_ip`.
    pub(super) cutover: Network,
}

/// Names and addresses seen so far, for the checks across rows.
#[derive(Default)]
pub(super) struct Seen {
    servers: HashMap<String, u64>,
    hosts: HashMap<String, (String, u64)>,
    /// The `private_ip` of every new instance: server and line.
    targets: HashMap<IpAddr, (String, u64)>,
    /// Application -> (wave, line of its first row).
    apps: HashMap<String, (String, u64)>,
    /// Renamed names already warned about: (column, text as written).
    renamed: HashSet<(Column, String)>,
    /// The first spelling of each name as written, and its line: (column, name) ->
    /// (text, line).
    spellings: HashMap<(Column, String), (String, u32)>,
}

/// Reads one row; a rehost with no error joins its wave and application.
pub(super) fn read_row(row: &Row, form: &mut Form, seen: &mut Seen, sink: &mut Sink) {
    if !cells::check_cell_lengths(row, sink) {
        return;
    }
    let server_cell = row.get(Column::ServerName).map(|(t, _)| t);
    let Some((r_type, r_type_at)) = row.get(Column::RType) else {
        sink.error(
            row.place(Column::RType),
            "r_type is empty: write Rehost for a server to migrate (rows with other strategies \
             are left out)",
        );
        return;
    };
    if !r_type.eq_ignore_ascii_case("rehost") {
        let server = server_cell.unwrap_or_default().to_owned();
        let who = if server.is_empty() {
            "the row".to_owned()
        } else {
            format!("server `{}`", shown(&server))
        };
        sink.warning(
            r_type_at,
            format!(
                "r_type: {who} is `{}`, not Rehost: it is left out of the waves",
                shown(r_type)
            ),
        );
        form.skipped.push(Skipped {
            line: row.line,
            server,
            r_type: r_type.to_owned(),
        });
        return;
    }
    form.rehosts += 1;
    let wave = required_name(
        row,
        Column::WaveName,
        "the wave this server moves in",
        seen,
        sink,
    );
    let app = required_name(
        row,
        Column::AppName,
        "the application this server belongs to",
        seen,
        sink,
    );
    let (server, region) = read_server(row, seen, sink);
    if let Some(region) = region {
        form.regions.push(region);
    }
    let (Some(wave), Some(app), Some(server)) = (wave, app, server) else {
        return;
    };
    if let Some((app_at, (first_wave, first_line))) = row
        .get(Column::AppName)
        .map(|(_, at)| at)
        .zip(seen.apps.get(&app))
        && *first_wave != wave
    {
        sink.error(
            app_at,
            format!(
                "app_name: application `{app}` is in wave `{first_wave}` (line {first_line}), \
                 and an application moves in one wave: move this server to that wave or name \
                 another application"
            ),
        );
        return;
    }
    seen.apps
        .entry(app.clone())
        .or_insert_with(|| (wave.clone(), row.line));
    if sink.diags.has_errors() {
        // Nothing will be generated; the checks above still run on every row.
        return;
    }
    let wave_index = match form.waves.iter().position(|w| w.name == wave) {
        Some(index) => index,
        None => {
            form.waves.push(WaveDraft {
                name: wave,
                apps: Vec::new(),
            });
            form.waves.len() - 1
        }
    };
    let apps = &mut form.waves[wave_index].apps;
    match apps.iter_mut().find(|a| a.name == app) {
        Some(existing) => existing.servers.push(server),
        None => apps.push(AppDraft {
            name: app,
            servers: vec![server],
        }),
    }
}

/// A name cell that must be filled, sanitized into a Wavelift name.
fn required_name(
    row: &Row,
    column: Column,
    what: &str,
    seen: &mut Seen,
    sink: &mut Sink,
) -> Option<String> {
    let Some((text, at)) = row.get(column) else {
        sink.error(
            row.place(column),
            format!("{} is empty: write {what}", column.name()),
        );
        return None;
    };
    sanitized_name(column, text, at, seen, sink)
}

fn sanitized_name(
    column: Column,
    text: &str,
    at: Location,
    seen: &mut Seen,
    sink: &mut Sink,
) -> Option<String> {
    let name = sanitize_name(text);
    if name.is_empty() {
        sink.error(
            at,
            format!(
                "{}: `{}` has no letters or digits: use letters, digits, '-', '_' and '.'",
                column.name(),
                shown(text)
            ),
        );
        return None;
    }
    if name.chars().count() > MAX_NAME_CHARS {
        sink.error(
            at,
            format!(
                "{}: `{}` is longer than {MAX_NAME_CHARS} characters: shorten it",
                column.name(),
                shown(text)
            ),
        );
        return None;
    }
    // Two names of the form that become one (`Wave 3` and `Wave-3!`) would merge their
    // rows into one wave or application, under one window: refused. Spellings that
    // differ only in case or in spaces at the ends are one name.
    let same = |a: &str, b: &str| a.trim().to_lowercase() == b.trim().to_lowercase();
    match seen.spellings.get(&(column, name.clone())) {
        Some((first, line)) if !same(first, text) => {
            sink.error(
                at,
                format!(
                    "{}: `{}` becomes `{name}`, as `{}` at line {line} does: the two would be one; rename one of them",
                    column.name(),
                    shown(text),
                    shown(first)
                ),
            );
            return None;
        }
        Some(_) => {}
        None => {
            seen.spellings
                .insert((column, name.clone()), (text.to_owned(), at.line));
        }
    }
    if name != text && seen.renamed.insert((column, text.to_owned())) {
        sink.warning(
            at,
            format!("{} `{}` becomes `{name}`", column.name(), shown(text)),
        );
    }
    Some(name)
}

/// Lowercase; every run of other characters than letters, digits, `_` and `.` becomes one
/// `-`; no `-` or `.` at either end (a leading `.` would hide the wave file).
pub fn sanitize_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(['-', '.']).to_owned()
}

/// The server of a rehost row, `None` if any of its cells is wrong; and the row's
/// `aws_region` when it is valid, whatever the other cells.
fn read_server(
    row: &Row,
    seen: &mut Seen,
    sink: &mut Sink,
) -> (Option<ServerDraft>, Option<(String, Location)>) {
    let name = server_name(row, seen, sink);
    let name_ok = name.as_ref().is_some_and(|(_, unique)| *unique);
    let name = name.map(|(name, _)| name);
    let label = name.clone().unwrap_or_default();
    let family = os_family(row, sink);
    let fqdn = server_fqdn(row, name.as_deref(), seen, sink);
    let private_ip = private_ip(row, &label, seen, sink);
    let private_ip_ok = row.get(Column::PrivateIp).is_none() || private_ip.is_some();
    let os_version = row.get(Column::ServerOsVersion).map(|(t, _)| t.to_owned());
    let mut tags_ok = true;
    let mut tags = BTreeMap::new();
    for (index, key) in &row.header.extra {
        if let Some((value, at)) = row.at(*index) {
            tags_ok &= cells::check_tag_value(key, value, at, sink);
            tags.insert(key.clone(), value.to_owned());
        }
    }
    for (column, key) in [
        (Column::ServerTier, "tier"),
        (Column::ServerEnvironment, "environment"),
    ] {
        if let Some((value, at)) = row.get(column) {
            tags_ok &= cells::check_tag_value(column.name(), value, at, sink);
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
    let launch_tags = match row.get(Column::Tags) {
        Some((text, at)) => cells::parse_tags(text, at, sink),
        None => Some(BTreeMap::new()),
    };
    let test = cells::read_network(
        row,
        Column::SubnetIdsTest,
        Column::SecurityGroupIdsTest,
        sink,
    );
    let cutover = cells::read_network(row, Column::SubnetIds, Column::SecurityGroupIds, sink);
    let instance_type = row.get(Column::InstanceType).and_then(|(text, at)| {
        cells::check_instance_type(text)
            .map_err(|message| sink.error(at, format!("instanceType: {message}")))
            .ok()
    });
    let instance_type_ok = row.get(Column::InstanceType).is_none() || instance_type.is_some();
    let (options, region, options_ok) = cells::read_options(row, sink);
    let (Some(name), Some(family), Some(fqdn)) = (name, family, fqdn) else {
        return (None, region);
    };
    let (Some(launch_tags), Some(test), Some(mut cutover)) = (launch_tags, test, cutover) else {
        return (None, region);
    };
    if !name_ok || !private_ip_ok || !tags_ok || !instance_type_ok || !options_ok {
        return (None, region);
    }
    cutover.private_ip = private_ip;
    let server = ServerDraft {
        name,
        fqdn,
        family,
        os_version,
        tags,
        instance_type,
        launch_tags,
        options,
        test,
        cutover,
    };
    (Some(server), region)
}

/// The server's name, and whether it is the first server of that name.
fn server_name(row: &Row, seen: &mut Seen, sink: &mut Sink) -> Option<(String, bool)> {
    let Some((text, at)) = row.get(Column::ServerName) else {
        sink.error(
            row.place(Column::ServerName),
            "server_name is empty: write the server's host name",
        );
        return None;
    };
    let name = sanitized_name(Column::ServerName, text, at, seen, sink)?;
    if let Some(first) = seen.servers.get(&name) {
        sink.error(
            at,
            format!(
                "server_name: server `{name}` is already at line {first}: each server appears \
                 once in the form"
            ),
        );
        return Some((name, false));
    }
    seen.servers.insert(name.clone(), row.line);
    Some((name, true))
}

fn os_family(row: &Row, sink: &mut Sink) -> Option<OsFamily> {
    let Some((text, at)) = row.get(Column::ServerOsFamily) else {
        sink.error(
            row.place(Column::ServerOsFamily),
            "server_os_family is empty: write linux or windows",
        );
        return None;
    };
    let lowered = text.to_ascii_lowercase();
    let family = OsFamily::from_name(&lowered);
    if family.is_none() {
        let hint = decode::closest(&lowered, OsFamily::NAMES)
            .filter(|_| text.chars().count() <= 64)
            .map(|near| format!("; did you mean `{near}`?"))
            .unwrap_or_default();
        sink.error(
            at,
            format!(
                "server_os_family: `{}` is not linux or windows{hint}",
                shown(text)
            ),
        );
    }
    family
}

/// The host name wavelift reaches the server by: required, since `private_ip` is the
/// address of the new instance, not of the server.
fn server_fqdn(row: &Row, name: Option<&str>, seen: &mut Seen, sink: &mut Sink) -> Option<String> {
    let Some((text, at)) = row.get(Column::ServerFqdn) else {
        let who = name.map_or("the server".to_owned(), |n| format!("server `{n}`"));
        let note = if row.get(Column::PrivateIp).is_some() {
            " (private_ip is the address of its new instance in AWS, not its own)"
        } else {
            ""
        };
        sink.error(
            row.place(Column::ServerFqdn),
            format!(
                "server_fqdn is empty: {who} must be reachable by its host name; write it{note}"
            ),
        );
        return None;
    };
    let fqdn = check_fqdn(text)
        .map_err(|message| sink.error(at, format!("server_fqdn: {message}")))
        .ok()?;
    if let Some((other, line)) = seen.hosts.get(&fqdn) {
        sink.error(
            at,
            format!(
                "server_fqdn: `{fqdn}` is already the host name of `{other}` (line {line}): each \
                 server has its own"
            ),
        );
        return None;
    }
    let label = name.unwrap_or_default().to_owned();
    seen.hosts.insert(fqdn.clone(), (label, row.line));
    Some(fqdn)
}

/// The address of the server's new instance in AWS, if the form gives a valid one.
fn private_ip(row: &Row, label: &str, seen: &mut Seen, sink: &mut Sink) -> Option<IpAddr> {
    let (text, at) = row.get(Column::PrivateIp)?;
    let Ok(ip) = text.parse::<IpAddr>() else {
        sink.error(
            at,
            format!(
                "private_ip: `{}` is not an IPv4 or IPv6 address",
                shown(text)
            ),
        );
        return None;
    };
    if let Some((other, line)) = seen.targets.get(&ip) {
        sink.error(
            at,
            format!(
                "private_ip: `{ip}` is already the address of the new instance of `{other}` \
                 (line {line}): each new instance has its own"
            ),
        );
        return None;
    }
    seen.targets.insert(ip, (label.to_owned(), row.line));
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("Wave 1"), "wave-1");
        assert_eq!(sanitize_name("App 01 - HR"), "app-01-hr");
        assert_eq!(sanitize_name("  .hidden."), "hidden");
        assert_eq!(sanitize_name("WEB_01.corp"), "web_01.corp");
        assert_eq!(sanitize_name("Ñandú"), "and");
        assert_eq!(sanitize_name("!!!"), "");
    }
}
