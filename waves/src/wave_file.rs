//! Reading one wave document: the wave, its window and phases, its applications and
//! their servers, with defaults applied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Zoned;
use jiff::tz::{AmbiguousOffset, TimeZone};

use crate::config::{self, Config};
use crate::decode::{self, Ctx, MapReader};
use crate::diag::Location;
use crate::model::{
    Access, AccessMethod, Application, Blueprints, Disk, EngineKind, Interval, Os, OsFamily,
    PhaseKind, Phases, ReplicationLink, Server, Spanned, Wave, Window,
};
use crate::rules;
use crate::template::{self, ServerTemplate};
use crate::units::{self, Dur};
use crate::yaml::Node;

/// A wave as read, and whether it is complete. An incomplete wave (its name, window or
/// phases could not be read) still takes part in the checks across waves that need only
/// names, so one run reports everything; it is never planned.
pub struct DecodedWave {
    pub wave: Wave,
    pub complete: bool,
    /// An application written in the file could not be read (reported there): a
    /// reference to it from elsewhere is not "unknown" besides.
    pub lost_applications: bool,
}

/// Reads one wave; `None` only when the document is not a mapping at all.
pub fn decode_wave(node: &Node, config: &Config, ctx: &mut Ctx) -> Option<DecodedWave> {
    let mut map = MapReader::new(node, "wave", ctx)?;
    if let Some(n) = map.take("version") {
        config::check_version(n, ctx);
    }
    let name = map
        .required("name", ctx)
        .and_then(|n| decode::name(n, "wave name", ctx).map(|v| Spanned::new(v, n.location)));
    let description = map
        .take("description")
        .and_then(|n| decode::string(n, "description", ctx));
    let engine = match map.take("engine") {
        Some(n) => config::engine_kind(n, ctx).map(|kind| Spanned::new(kind, n.location)),
        None => Some(Spanned::new(config.engines.default, map.location)),
    };
    // An mgn section that could not be read is reported where it is written.
    if let Some(engine) = &engine
        && !config.engine_configured(engine.value)
        && !(engine.value == EngineKind::Mgn && config.engines.mgn_unread)
    {
        ctx.error(
            engine.location,
            format!(
                "engine `{}` is not configured: add engines.{} to the configuration file",
                engine.value, engine.value
            ),
        );
    }
    let window = map
        .required("window", ctx)
        .and_then(|n| decode_window(n, ctx));
    let phases = match (&window, map.take("phases")) {
        (Some((window, tz)), phases) => decode_phases(phases, window, tz, map.location, ctx),
        (None, Some(_)) => None,
        (None, None) => None,
    };
    let notify = map
        .take("notify")
        .map(|n| {
            decode::list(n, "notify", ctx)
                .iter()
                .filter_map(|item| decode::email(item, "notify", ctx))
                .collect()
        })
        .unwrap_or_default();
    let replication = decode_replication(map.take("replication"), ctx);
    let mut template = config.defaults.clone();
    let defaults = map.take("defaults");
    if let Some(n) = defaults {
        config::decode_defaults(n, &mut template, ctx);
    }
    config::check_names(&template, &config.defaults, config, ctx);
    let engine_kind = engine.as_ref().map(|e| e.value);
    check_mgn_account_engine(&template, &config.defaults, engine_kind, ctx);
    if engine_kind == Some(EngineKind::Mgn) {
        // The wave's defaults and the configuration's, once for the wave.
        let at = defaults.map_or(map.location, |n| n.location);
        check_mgn_blueprints(
            &template,
            &Blueprints::default(),
            "the wave's defaults",
            at,
            ctx,
        );
    }
    let mut lost_applications = false;
    let applications = match map.required("applications", ctx) {
        Some(n) => {
            let items = decode::list(n, "applications", ctx);
            if items.is_empty() && matches!(n.value, crate::yaml::Value::Seq(_)) {
                ctx.warning(n.location, "the wave has no applications");
            }
            let applications: Vec<Application> = items
                .iter()
                .filter_map(|item| decode_application(item, &template, config, engine_kind, ctx))
                .collect();
            lost_applications = applications.len() < items.len()
                || !matches!(
                    n.value,
                    crate::yaml::Value::Seq(_) | crate::yaml::Value::Null
                );
            applications
        }
        None => Vec::new(),
    };
    map.finish(ctx);
    let complete = name.is_some() && engine.is_some() && window.is_some() && phases.is_some();
    let fallback_name = || Spanned::new(String::new(), node.location);
    let fallback_engine = || Spanned::new(config.engines.default, node.location);
    let window = window.map(|(w, _)| w).unwrap_or_else(fallback_window);
    let phases = phases.unwrap_or_else(|| Phases {
        build: window.interval.clone(),
        validate: window.interval.clone(),
        cutover: window.interval.clone(),
    });
    Some(DecodedWave {
        wave: Wave {
            file: Arc::clone(&ctx.file),
            location: node.location,
            name: name.unwrap_or_else(fallback_name),
            description,
            engine: engine.unwrap_or_else(fallback_engine),
            window,
            phases,
            notify,
            replication,
            applications,
        },
        complete,
        lost_applications,
    })
}

/// Stands in for a window that could not be read; such a wave is never planned.
fn fallback_window() -> Window {
    let epoch = jiff::Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    Window {
        interval: Interval {
            start: epoch.clone(),
            end: epoch,
        },
        duration: Dur::ZERO,
        timezone: "UTC".to_owned(),
        start_location: Location::START,
        duration_location: Location::START,
    }
}

fn decode_replication(node: Option<&Node>, ctx: &mut Ctx) -> ReplicationLink {
    let mut link = ReplicationLink {
        bandwidth_bits: None,
        compression: 1.0,
    };
    let Some(node) = node else {
        return link;
    };
    let Some(mut map) = MapReader::new(node, "replication", ctx) else {
        return link;
    };
    if let Some(n) = map.take("bandwidth") {
        link.bandwidth_bits = decode::parsed(n, "bandwidth", ctx, units::parse_bandwidth);
    }
    if let Some(n) = map.take("compression")
        && let Some(value) = config::compression(n, ctx)
    {
        link.compression = value;
    }
    map.finish(ctx);
    link
}

fn time_zone(node: &Node, ctx: &mut Ctx) -> Option<(TimeZone, String)> {
    let name = decode::string(node, "timezone", ctx)?;
    match rules::time_zone(&name) {
        // Named as the time zone database names it (`europe/rome` is Europe/Rome).
        Ok(tz) => {
            let name = tz.iana_name().map_or(name, str::to_owned);
            Some((tz, name))
        }
        Err(message) => {
            ctx.error(node.location, message);
            None
        }
    }
}

/// A local date and time in the wave's zone: `2026-12-12 22:00` or `2026-12-12T22:00`.
fn local_time(node: &Node, what: &str, tz: &TimeZone, ctx: &mut Ctx) -> Option<Zoned> {
    let civil = decode::parsed(node, what, ctx, |text| {
        rules::parse_local_datetime(text, "the wave's `timezone` places it")
    })?;
    let ambiguous = tz.to_ambiguous_zoned(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => {}
        AmbiguousOffset::Gap { .. } => {
            ctx.error(
                node.location,
                format!(
                    "{what}: {civil} does not exist in {} (the clocks skip it for daylight \
                     saving time): pick another time",
                    tz.iana_name().unwrap_or("this time zone")
                ),
            );
            return None;
        }
        AmbiguousOffset::Fold { .. } => {
            ctx.warning(
                node.location,
                format!(
                    "{what}: {civil} happens twice in {} (daylight saving time ends); the \
                     first one is used",
                    tz.iana_name().unwrap_or("this time zone")
                ),
            );
        }
    }
    match ambiguous.compatible() {
        Ok(zoned) => Some(zoned),
        Err(err) => {
            ctx.error(node.location, format!("{what}: {err}"));
            None
        }
    }
}

fn add(time: &Zoned, duration: Dur, location: Location, ctx: &mut Ctx) -> Option<Zoned> {
    match time.checked_add(duration.to_span()) {
        Ok(t) => Some(t),
        Err(err) => {
            ctx.error(location, format!("time out of range: {err}"));
            None
        }
    }
}

fn sub(time: &Zoned, duration: Dur, location: Location, ctx: &mut Ctx) -> Option<Zoned> {
    match time.checked_sub(duration.to_span()) {
        Ok(t) => Some(t),
        Err(err) => {
            ctx.error(location, format!("time out of range: {err}"));
            None
        }
    }
}

fn decode_window(node: &Node, ctx: &mut Ctx) -> Option<(Window, TimeZone)> {
    let mut map = MapReader::new(node, "window", ctx)?;
    let tz = map
        .required("timezone", ctx)
        .and_then(|n| time_zone(n, ctx));
    let start_node = map.required("start", ctx);
    let duration_node = map.required("duration", ctx);
    let duration = duration_node.and_then(|n| decode::duration(n, "window duration", ctx));
    if let (Some(n), Some(d)) = (duration_node, duration)
        && d.is_zero()
    {
        ctx.error(n.location, "window duration: must be longer than zero");
    }
    map.finish(ctx);
    let (tz, tz_name) = tz?;
    let start_node = start_node?;
    let start = local_time(start_node, "window start", &tz, ctx)?;
    let duration = duration.filter(|d| !d.is_zero())?;
    let end = add(&start, duration, node.location, ctx)?;
    Some((
        Window {
            interval: Interval { start, end },
            duration,
            timezone: tz_name,
            start_location: start_node.location,
            duration_location: duration_node.map_or(node.location, |n| n.location),
        },
        tz,
    ))
}

/// One phase as written: a length (back to back, ending where the next phase starts) or
/// explicit start and end.
enum PhaseSpec {
    Length(Dur, Location),
    Explicit(Interval, Location),
}

fn decode_phase(node: &Node, kind: PhaseKind, tz: &TimeZone, ctx: &mut Ctx) -> Option<PhaseSpec> {
    if node.as_scalar().is_some() {
        let what = format!("{kind} phase");
        let length = decode::duration(node, &what, ctx)?;
        if length.is_zero() {
            ctx.error(node.location, format!("{what}: must be longer than zero"));
            return None;
        }
        return Some(PhaseSpec::Length(length, node.location));
    }
    let mut map = MapReader::new(node, "phase", ctx)?;
    let start = map
        .required("start", ctx)
        .and_then(|n| local_time(n, &format!("{kind} start"), tz, ctx));
    let end = map
        .required("end", ctx)
        .and_then(|n| local_time(n, &format!("{kind} end"), tz, ctx));
    map.finish(ctx);
    let (start, end) = (start?, end?);
    if end <= start {
        ctx.error(
            node.location,
            format!("the {kind} phase ends before it starts"),
        );
        return None;
    }
    Some(PhaseSpec::Explicit(Interval { start, end }, node.location))
}

/// Phases default to one week each, back to back, the cutover week ending with the window.
fn decode_phases(
    node: Option<&Node>,
    window: &Window,
    tz: &TimeZone,
    wave_location: Location,
    ctx: &mut Ctx,
) -> Option<Phases> {
    let week = Dur::from_days(7);
    let mut specs = [
        PhaseSpec::Length(week, wave_location),
        PhaseSpec::Length(week, wave_location),
        PhaseSpec::Length(week, wave_location),
    ];
    let mut ok = true;
    if let Some(node) = node {
        let mut map = MapReader::new(node, "phases", ctx)?;
        for (index, kind) in PhaseKind::ALL.iter().enumerate() {
            if let Some(n) = map.take(kind.as_str()) {
                match decode_phase(n, *kind, tz, ctx) {
                    Some(spec) => specs[index] = spec,
                    None => ok = false,
                }
            }
        }
        map.finish(ctx);
    }
    if !ok {
        return None;
    }
    // Lay the phases out backwards from the end of the window.
    let mut next_start = window.interval.end.clone();
    let mut intervals: Vec<(Interval, Location)> = Vec::with_capacity(3);
    for spec in specs.iter().rev() {
        let (interval, location) = match spec {
            PhaseSpec::Length(length, location) => {
                let start = sub(&next_start, *length, *location, ctx)?;
                (
                    Interval {
                        start,
                        end: next_start.clone(),
                    },
                    *location,
                )
            }
            PhaseSpec::Explicit(interval, location) => (interval.clone(), *location),
        };
        next_start = interval.start.clone();
        intervals.push((interval, location));
    }
    intervals.reverse();
    let [build, validate, cutover]: [(Interval, Location); 3] = intervals.try_into().ok()?;
    let mut valid = true;
    for (earlier, later, later_kind, earlier_kind) in [
        (&build, &validate, PhaseKind::Validate, PhaseKind::Build),
        (&validate, &cutover, PhaseKind::Cutover, PhaseKind::Validate),
    ] {
        if later.0.start < earlier.0.end {
            ctx.error(
                later.1,
                format!(
                    "the {later_kind} phase starts ({}) before the {earlier_kind} phase ends ({}): phases run in order build, validate, cutover",
                    short(&later.0.start),
                    short(&earlier.0.end)
                ),
            );
            valid = false;
        }
    }
    let window_inside =
        cutover.0.start <= window.interval.start && window.interval.end <= cutover.0.end;
    if !window_inside {
        // Said at the phase where it is written; a default phase is written nowhere
        // (its place is the wave's): then at the window's field that crosses it.
        let longer = window.interval.end.duration_since(&window.interval.start)
            > cutover.0.end.duration_since(&cutover.0.start);
        let at = if cutover.1 != wave_location {
            cutover.1
        } else if longer || window.interval.end > cutover.0.end {
            window.duration_location
        } else {
            window.start_location
        };
        let why = if longer {
            "; the window is longer than the phase: shorten it, or lengthen phases.cutover (7d by default)"
        } else {
            ""
        };
        ctx.error(
            at,
            format!(
                "the cutover window ({} to {}) must lie inside the cutover phase ({} to {}){why}",
                short(&window.interval.start),
                short(&window.interval.end),
                short(&cutover.0.start),
                short(&cutover.0.end)
            ),
        );
        valid = false;
    }
    valid.then(|| Phases {
        build: build.0,
        validate: validate.0,
        cutover: cutover.0,
    })
}

/// A time as people read it in messages: `2026-12-12 22:00`.
pub fn short(time: &Zoned) -> String {
    time.strftime("%Y-%m-%d %H:%M").to_string()
}

fn decode_application(
    node: &Node,
    wave_template: &ServerTemplate,
    config: &Config,
    engine: Option<EngineKind>,
    ctx: &mut Ctx,
) -> Option<Application> {
    let mut map = MapReader::new(node, "application", ctx)?;
    let name = map.required("name", ctx).and_then(|n| {
        decode::name(n, "application name", ctx).map(|v| Spanned::new(v, n.location))
    });
    let description = map
        .take("description")
        .and_then(|n| decode::string(n, "description", ctx));
    let owner = map
        .take("owner")
        .and_then(|n| decode::email(n, "owner", ctx));
    let mut depends_on: Vec<Spanned<String>> = Vec::new();
    if let Some(n) = map.take("depends_on") {
        for item in decode::list(n, "depends_on", ctx) {
            let Some(name) = decode::name(item, "depends_on", ctx) else {
                continue;
            };
            // Listed twice: said, and kept once (the plan gets one edge).
            if let Some(first) = depends_on.iter().find(|d| d.value == name) {
                ctx.warning(
                    item.location,
                    format!(
                        "`{name}` is listed twice in depends_on (first at {}:{}): once is enough",
                        first.location.line, first.location.col
                    ),
                );
                continue;
            }
            depends_on.push(Spanned::new(name, item.location));
        }
    }
    let mut template = wave_template.clone();
    if let Some(n) = map.take("defaults") {
        config::decode_defaults(n, &mut template, ctx);
        config::check_names(&template, wave_template, config, ctx);
        check_mgn_account_engine(&template, wave_template, engine, ctx);
        if engine == Some(EngineKind::Mgn) {
            check_mgn_blueprints(
                &template,
                &wave_template.blueprints,
                "the application's defaults",
                n.location,
                ctx,
            );
        }
    }
    let servers = match map.required("servers", ctx) {
        Some(n) => {
            let items = decode::list(n, "servers", ctx);
            if items.is_empty() && matches!(n.value, crate::yaml::Value::Seq(_)) {
                ctx.warning(n.location, "the application has no servers");
            }
            items
                .iter()
                .filter_map(|item| decode_server(item, &template, config, engine, ctx))
                .collect()
        }
        None => Vec::new(),
    };
    map.finish(ctx);
    Some(Application {
        name: name?,
        description,
        owner,
        depends_on,
        servers,
        location: node.location,
    })
}

fn decode_server(
    node: &Node,
    inherited: &ServerTemplate,
    config: &Config,
    engine: Option<EngineKind>,
    ctx: &mut Ctx,
) -> Option<Server> {
    let mut map = MapReader::new(node, "server", ctx)?;
    let name = map
        .required("name", ctx)
        .and_then(|n| decode::name(n, "server name", ctx).map(|v| Spanned::new(v, n.location)));
    let fqdn = map.take("fqdn").and_then(|n| {
        decode::parsed(n, "fqdn", ctx, rules::check_fqdn).map(|v| Spanned::new(v, n.location))
    });
    let ip = map.take("ip").and_then(|n| {
        decode::parsed(n, "ip", ctx, |text| {
            let ip = text
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address"))?;
            // An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is that address: one
            // server's, whichever way it is written.
            let ip = ip.to_canonical();
            let nobody = ip.is_unspecified()
                || ip.is_multicast()
                || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            if nobody {
                return Err(format!(
                    "`{text}` is no one server's address (unspecified, broadcast or multicast): write the server's own"
                ));
            }
            Ok(ip)
        })
        .map(|v| Spanned::new(v, n.location))
    });
    let cmdb_id = map
        .take("cmdb_id")
        .and_then(|n| decode::string(n, "cmdb_id", ctx));
    let source_id = map.take("source_id").and_then(|n| {
        decode::parsed(n, "source_id", ctx, |text| {
            // An engine that could not be read is reported where it is written.
            if let Some(engine) = engine
                && engine != EngineKind::Mgn
            {
                return Err(format!(
                    "`source_id` names an MGN source server, and this wave's engine is {engine}"
                ));
            }
            rules::check_mgn_source_id(text)
        })
        .map(|v| Spanned::new(v, n.location))
    });
    // A disk that could not be read is reported where it is written, and is not
    // "no disks" besides.
    let mut disks_failed = false;
    let disks = map
        .take("disks")
        .map(|n| {
            let items = decode::list(n, "disks", ctx);
            let mut disks: Vec<Disk> = Vec::new();
            let mut first_line: HashMap<String, u32> = HashMap::new();
            for item in items {
                let Some(disk) = decode_disk(item, ctx) else {
                    disks_failed = true;
                    continue;
                };
                // One device read as two disks: the agent would open and lock it twice.
                let key = rules::device_key(&disk.device);
                if let Some(line) = first_line.get(&key) {
                    ctx.error(
                        item.location,
                        format!(
                            "disk `{}` is listed twice on this server (first at line {line}): list each disk once",
                            disk.device
                        ),
                    );
                    disks_failed = true;
                    continue;
                }
                first_line.insert(key, item.location.line);
                disks.push(disk);
            }
            disks
        })
        .unwrap_or_default();
    // A wrong fqdn or ip is reported where it is; "no address" is for servers without any.
    // What the server wrote itself: a wrong value there is reported where it is written,
    // so the "missing" errors below are only for what is absent.
    let written = |key: &str| {
        map.entries()
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value.value)
    };
    let map_has_address = ["fqdn", "ip"]
        .iter()
        .any(|key| written(key).is_some_and(|v| !matches!(v, crate::yaml::Value::Null)));
    let disks_malformed = written("disks")
        .is_some_and(|v| !matches!(v, crate::yaml::Value::Seq(_) | crate::yaml::Value::Null));
    let os_malformed = written("os")
        .is_some_and(|v| !matches!(v, crate::yaml::Value::Map(_) | crate::yaml::Value::Null));
    let mut fields = inherited.clone();
    template::decode_fields(&mut map, &mut fields, ctx);
    config::check_names(&fields, inherited, config, ctx);
    check_mgn_account_engine(&fields, inherited, engine, ctx);
    map.finish(ctx);
    let name = name?;
    // A wrong `disks` or `os` is reported where it is written; these are for missing ones.
    // The local engine replicates the disks listed; MGN's agent finds them itself, and
    // the rehearsal engine and the estimator then have no sizes to work with.
    if disks.is_empty() && !disks_malformed && !disks_failed && engine == Some(EngineKind::Local) {
        ctx.error(
            map_location(node),
            format!(
                "server `{}` has no disks, and the local engine replicates the disks listed: add them, like `disks: [{{device: /dev/sda, size: 100GiB}}]`",
                name.value
            ),
        );
    }
    if engine == Some(EngineKind::Mgn) {
        let whose = format!("server `{}`", name.value);
        check_mgn_blueprints(&fields, &inherited.blueprints, &whose, node.location, ctx);
    }
    if disks.iter().filter(|d: &&Disk| d.boot).count() > 1 {
        ctx.error(
            node.location,
            format!("server `{}` has more than one boot disk", name.value),
        );
    }
    // An os or access method that could not be read is reported where it is written;
    // the checks that need it are not made.
    let os_unread = os_malformed || fields.os_family_invalid;
    let family = fields.os_family.unwrap_or_else(|| {
        if os_unread {
            return OsFamily::Linux;
        }
        ctx.error(
            node.location,
            format!(
                "server `{}` has no `os.family` (linux or windows): set it on the server or in defaults",
                name.value
            ),
        );
        // Read on as linux so the checks across waves still see this server.
        OsFamily::Linux
    });
    let method = fields.access.method.unwrap_or(match family {
        OsFamily::Linux => AccessMethod::Ssh,
        OsFamily::Windows => AccessMethod::Winrm,
    });
    let method_unread = fields.access.method_invalid;
    if method == AccessMethod::Winrm && family == OsFamily::Linux && !os_unread && !method_unread {
        ctx.error(
            node.location,
            format!(
                "server `{}` is linux but its access method is winrm",
                name.value
            ),
        );
    }
    let address_written = map_has_address;
    if method != AccessMethod::Local && !address_written && !method_unread {
        ctx.error(
            node.location,
            format!(
                "server `{}` is reached over {method} but has neither `fqdn` nor `ip`",
                name.value
            ),
        );
    }
    Some(Server {
        name,
        fqdn,
        ip,
        os: Os {
            family,
            version: fields.os_version,
            arch: fields.arch,
        },
        access: Access {
            method,
            user: fields.access.user,
            port: fields.access.port,
            credential: fields.access.credential,
            sudo: fields.access.sudo.unwrap_or(true),
            sudo_credential: fields.access.sudo_credential,
            jump: fields.access.jump,
        },
        disks,
        change_rate: fields.change_rate,
        site: fields.site,
        blueprints: fields.blueprints,
        cmdb_id,
        source_id,
        mgn_account: fields.mgn_account.map(|a| a.value),
        tags: fields.tags,
        exclude_from_shutdown: fields.exclude_from_shutdown,
        skip: fields.skip,
        tasks: fields.tasks,
        location: node.location,
    })
}

/// `mgn_account` (written at this layer) is for the servers of mgn waves.
fn check_mgn_account_engine(
    new: &ServerTemplate,
    old: &ServerTemplate,
    engine: Option<EngineKind>,
    ctx: &mut Ctx,
) {
    // An engine that could not be read is reported where it is written.
    if let Some(account) = &new.mgn_account
        && new.mgn_account != old.mgn_account
        && let Some(engine) = engine
        && engine != EngineKind::Mgn
    {
        ctx.error(
            account.location,
            format!(
                "`mgn_account` names an account of the mgn engine, and this wave's engine is {engine}"
            ),
        );
    }
}

/// On MGN a blueprint names EC2 resources by id: a subnet `subnet-...`, security groups
/// `sg-...` (a group's name is not enough for a launch template).
/// Each value is reported where it was written (the configuration's defaults too), or at
/// `location` of this file when its place is not known.
fn check_mgn_blueprints(
    layer: &ServerTemplate,
    inherited: &Blueprints,
    whose: &str,
    location: Location,
    ctx: &mut Ctx,
) {
    let blueprints = &layer.blueprints;
    let places = &layer.blueprint_places;
    let kinds = [
        ("test", &blueprints.test, &inherited.test, &places.test),
        (
            "cutover",
            &blueprints.cutover,
            &inherited.cutover,
            &places.cutover,
        ),
    ];
    let here = (Arc::clone(&ctx.file), location);
    for (kind, blueprint, before, place) in kinds {
        // What this layer wrote: an inherited value was checked where it was written.
        if let Some(subnet) = &blueprint.subnet
            && blueprint.subnet != before.subnet
            && !is_ec2_id(subnet, "subnet-")
        {
            let (file, at) = place.subnet.as_ref().unwrap_or(&here);
            let whose = written_by(file, whose, ctx);
            ctx.diags.error(
                file,
                *at,
                format!(
                    "{whose}: the {kind} blueprint's subnet `{subnet}` is not an EC2 subnet id (subnet- and hexadecimal digits)"
                ),
            );
        }
        if blueprint.security_groups == before.security_groups {
            continue;
        }
        for (i, group) in blueprint.security_groups.iter().enumerate() {
            if !is_ec2_id(group, "sg-") {
                let (file, at) = place.security_groups.get(i).unwrap_or(&here);
                let whose = written_by(file, whose, ctx);
                ctx.diags.error(
                    file,
                    *at,
                    format!(
                        "{whose}: the {kind} blueprint's security group `{group}` is not an EC2 security group id (sg- and hexadecimal digits; a group's name is not enough)"
                    ),
                );
            }
        }
    }
}

/// Who wrote a value found in `file`: `whose` in this file, the configuration's defaults
/// in another (the only layer read from another file).
fn written_by<'a>(file: &Arc<str>, whose: &'a str, ctx: &Ctx) -> &'a str {
    if **file == *ctx.file {
        whose
    } else {
        "the configuration's defaults"
    }
}

/// An EC2 id: the prefix (`subnet-`, `sg-`) and 8 to 17 hexadecimal digits.
pub(crate) fn is_ec2_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn map_location(node: &Node) -> Location {
    node.location
}

fn decode_disk(node: &Node, ctx: &mut Ctx) -> Option<Disk> {
    let mut map = MapReader::new(node, "disk", ctx)?;
    let device = map.required("device", ctx).and_then(|n| {
        let device = decode::string(n, "device", ctx)?;
        if device.trim().is_empty() {
            ctx.error(
                n.location,
                "device: is empty: write the disk's device or image file, like /dev/sda or disks/web-01.img",
            );
            return None;
        }
        Some(device)
    });
    let size_node = map.required("size", ctx);
    let size = size_node.and_then(|n| decode::size(n, "disk size", ctx));
    let size_text = size_node
        .and_then(|n| n.as_scalar())
        .map(|s| s.text.clone());
    let used_node = map.take("used");
    let used = used_node.and_then(|n| decode::size(n, "disk used", ctx));
    let boot = map
        .take("boot")
        .and_then(|n| decode::boolean(n, "boot", ctx))
        .unwrap_or(false);
    map.finish(ctx);
    let size = size?;
    if size == 0 {
        if let Some(n) = size_node {
            ctx.error(n.location, "disk size: must be larger than zero");
        }
        return None;
    }
    if let (Some(used), Some(n)) = (used, used_node)
        && used > size
    {
        let used_text = n.as_scalar().map(|s| s.text.as_str()).unwrap_or_default();
        ctx.error(
            n.location,
            format!(
                "disk used ({used_text}) is larger than its size ({})",
                size_text.unwrap_or_default()
            ),
        );
    }
    Some(Disk {
        device: device?,
        size_bytes: size,
        used_bytes: used,
        boot,
    })
}

#[cfg(test)]
mod tests {
    /// A time zone written in another case is kept as the database names it.
    #[test]
    fn a_time_zone_is_named_as_the_database_names_it() {
        let text = "name: w\n\
            window: { start: 2031-03-22 10:00, duration: 6h, timezone: europe/rome }\n\
            defaults: { os: { family: linux }, access: { method: local } }\n\
            applications:\n\
            \x20 - { name: db, servers: [{ name: s1, disks: [{ device: /dev/sda, size: 1GiB }] }] }\n";
        let loaded = crate::load_text("w.yaml", text);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.definitions.waves[0].window.timezone, "Europe/Rome");
    }
}
