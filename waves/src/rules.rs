//! Rules a value must follow wherever it is written (a wave file, the configuration, an
//! intake form), so every reader applies the same check with the same message.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use crate::decode;

/// User text as it appears inside a message: escaped, and cut after 60 characters.
pub fn shown(text: &str) -> String {
    const LIMIT: usize = 60;
    let mut out: String = text
        .chars()
        .take(LIMIT)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(LIMIT).is_some() {
        out.push_str("...");
    }
    out
}

/// An MGN source server id: `s-` and 17 lower-case hexadecimal digits.
pub fn check_mgn_source_id(text: &str) -> Result<String, String> {
    let text = text.trim();
    let valid = text.strip_prefix("s-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not an MGN source server id (`s-` and 17 hexadecimal digits, like s-1234567890abcdef0)"
        ))
    }
}

/// A host name: dot-separated labels of letters, digits and `-`; returned lowercased,
/// without a final dot.
pub fn check_fqdn(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('.');
    let valid = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        let long_label = trimmed.split('.').find(|label| label.len() > 63);
        return Err(match long_label {
            Some(label) => format!(
                "`{}` is not a host name: its label `{}` is {} characters long, and a label has at most 63",
                shown(text),
                shown(label),
                label.len()
            ),
            None if trimmed.len() > 253 => format!(
                "`{}` is not a host name: it is {} characters long, and a host name has at most 253",
                shown(text),
                trimmed.len()
            ),
            None => format!(
                "`{}` is not a host name: use letters, digits and '-', dot-separated",
                shown(text)
            ),
        });
    }
    // All digits and dots reads as an address, not a name.
    if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{}` is an address, not a host name: write it as the server's `ip`",
            shown(text)
        ));
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// An AWS Region name such as `eu-west-1` or `us-gov-west-1`.
pub fn is_aws_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A time zone by its IANA name, or a message with the nearest name.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if let Ok(tz) = TimeZone::get(name) {
        return Ok(tz);
    }
    let names: Vec<String> = jiff::tz::db()
        .available()
        .map(|n| n.as_str().to_owned())
        .collect();
    Err(
        match decode::closest_owned(name, names.iter().map(String::as_str)) {
            Some(near) => format!(
                "unknown time zone `{}`; did you mean `{near}`?",
                shown(name)
            ),
            None => format!(
                "unknown time zone `{}`: use an IANA name such as Europe/Rome or UTC",
                shown(name)
            ),
        },
    )
}

/// A local date and time without offset or zone: `2026-12-12 22:00` or
/// `2026-12-12T22:00`. `zone_hint` says where the zone comes from instead.
pub fn parse_local_datetime(text: &str, zone_hint: &str) -> Result<DateTime, String> {
    let text = text.trim();
    let has_zone = text.ends_with(['Z', 'z'])
        || text.contains('[')
        || text
            .split_once(['T', ' '])
            .is_some_and(|(_, time)| time.contains(['+', '-']));
    if has_zone {
        return Err(format!(
            "`{}` carries an offset or zone: write the local time only; {zone_hint}",
            shown(text)
        ));
    }
    text.parse::<DateTime>().map_err(|_| {
        format!(
            "`{}` is not a local date and time like 2026-12-12 22:00",
            shown(text)
        )
    })
}

/// A name used as an identifier (waves, applications, servers, sites): letters, digits,
/// `-`, `_` and `.`, at most 100 long.
pub fn check_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.chars().count() > 100 {
        return Err(format!("`{}` is longer than 100 characters", shown(text)));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(bad) => Err(format!(
            "`{}` contains {bad:?}; use letters, digits, '-', '_' and '.'",
            shown(text)
        )),
        None => Ok(text.to_owned()),
    }
}

/// A disk's device as a key for "the same disk": `./disks/a.img` and `disks/a.img` are
/// one file (relative paths are from the configuration's folder alike).
pub fn device_key(device: &str) -> String {
    std::path::Path::new(device.trim())
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect::<std::path::PathBuf>()
        .display()
        .to_string()
}
