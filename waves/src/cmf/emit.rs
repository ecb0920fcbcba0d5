//! The wave files as YAML text: one per wave, its window placed by the options, every
//! value written so that the loader reads it back exactly as the form had it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use jiff::civil::DateTime;
use jiff::tz::AmbiguousOffset;

use super::cells::Network;
use super::form::WaveDraft;
use super::row::ServerDraft;
use super::window::{Timing, format_local, window_start};
use super::{ImportOptions, ImportedWave, Sink};
use crate::diag::Location;
use crate::source::CONFIG_FILE_NAME;

/// Words YAML 1.1 or 1.2 reads as something other than text.
const RESERVED_WORDS: &[&str] = &["null", "true", "false", "yes", "no", "on", "off", "y", "n"];

/// A scalar the loader reads back exactly as `text`: plain when that is unambiguous,
/// otherwise double-quoted.
pub(super) fn scalar(text: &str) -> String {
    if is_plain_safe(text) {
        text.to_owned()
    } else {
        quoted(text)
    }
}

/// Plain only for a letter followed by letters, digits, `-`, `_`, `.`, `/` and inner
/// spaces, and never a word YAML types (`yes`, `null`, `inf`, ...). Everything else is
/// quoted: numbers, dates, `:`, `#`, leading `-`, ...
fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && !text.ends_with(' ')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ' '))
        && !RESERVED_WORDS.contains(&text.to_ascii_lowercase().as_str())
        && text.parse::<f64>().is_err()
}

/// A YAML double-quoted scalar: printable characters as they are, the rest escaped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            // Not printable in YAML, or read as a line break by some parsers.
            '\u{0}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn flow_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| scalar(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A name for a comment line: no line breaks or other control characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn file_name_for(wave: &str) -> String {
    // `wavelift.yaml` is the configuration's name.
    if format!("{wave}.yaml") == CONFIG_FILE_NAME {
        format!("{wave}-wave.yaml")
    } else {
        format!("{wave}.yaml")
    }
}

/// One wave file per wave, the windows `cadence` apart; an error for a window out of
/// range or in a daylight-saving gap.
pub(super) fn emit_waves(
    file: &Arc<str>,
    waves: &[WaveDraft],
    options: &ImportOptions,
    timing: &Timing,
    sink: &mut Sink,
) -> Vec<ImportedWave> {
    let mut out = Vec::with_capacity(waves.len());
    for (index, wave) in waves.iter().enumerate() {
        let Some(start) = window_start(timing, options.cadence, index) else {
            sink.error(
                Location::START,
                format!(
                    "the window of wave `{}` is out of range: choose an earlier --first-window or \
                     a shorter --cadence",
                    wave.name
                ),
            );
            continue;
        };
        if let AmbiguousOffset::Gap { .. } = timing.tz.to_ambiguous_zoned(start).offset() {
            sink.error(
                Location::START,
                format!(
                    "the window of wave `{}` would start at {}, which does not exist in {} (the \
                     clocks skip it for daylight saving time): choose another --first-window time",
                    wave.name,
                    format_local(start),
                    options.timezone
                ),
            );
            continue;
        }
        let text = wave_text(file, wave, options, start);
        out.push(ImportedWave {
            file_name: file_name_for(&wave.name),
            wave: wave.name.clone(),
            text,
            servers: wave.server_count(),
        });
    }
    out
}

fn wave_text(
    file: &Arc<str>,
    wave: &WaveDraft,
    options: &ImportOptions,
    start: DateTime,
) -> String {
    let mut y = String::new();
    let servers = wave.server_count();
    let _ = writeln!(
        y,
        "# Imported from {} by `wavelift import cmf`: {} application{}, {servers} server{}.",
        comment_text(file),
        wave.apps.len(),
        if wave.apps.len() == 1 { "" } else { "s" },
        if servers == 1 { "" } else { "s" },
    );
    y.push_str(
        "# The window was set by the import, not by the form: check it before you plan the wave.\n",
    );
    y.push_str("version: 1\n");
    let _ = writeln!(y, "name: {}", scalar(&wave.name));
    let _ = writeln!(y, "engine: {}", scalar(options.engine.as_str()));
    y.push_str("window:\n");
    let _ = writeln!(y, "  start: {}", scalar(&format_local(start)));
    let _ = writeln!(
        y,
        "  duration: {}",
        scalar(&options.window_duration.to_string())
    );
    let _ = writeln!(y, "  timezone: {}", scalar(&options.timezone));
    y.push_str("applications:\n");
    for app in &wave.apps {
        let _ = writeln!(y, "  - name: {}", scalar(&app.name));
        y.push_str("    servers:\n");
        for server in &app.servers {
            server_text(&mut y, server);
        }
    }
    y
}

fn map_lines(y: &mut String, indent: &str, key: &str, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(y, "{indent}{key}:");
    for (k, v) in map {
        let _ = writeln!(y, "{indent}  {}: {}", scalar(k), scalar(v));
    }
}

fn server_text(y: &mut String, server: &ServerDraft) {
    const I: &str = "        ";
    let _ = writeln!(y, "      - name: {}", scalar(&server.name));
    let _ = writeln!(y, "{I}fqdn: {}", scalar(&server.fqdn));
    let _ = writeln!(y, "{I}os:");
    let _ = writeln!(y, "{I}  family: {}", scalar(server.family.as_str()));
    if let Some(version) = &server.os_version {
        let _ = writeln!(y, "{I}  version: {}", scalar(version));
    }
    map_lines(y, I, "tags", &server.tags);
    let both = server.instance_type.is_some()
        || !server.launch_tags.is_empty()
        || !server.options.is_empty();
    if !both && server.test.is_empty() && server.cutover.is_empty() {
        return;
    }
    let _ = writeln!(y, "{I}blueprints:");
    if both {
        let _ = writeln!(y, "{I}  both:");
        if let Some(instance_type) = &server.instance_type {
            let _ = writeln!(y, "{I}    instance_type: {}", scalar(instance_type));
        }
        map_lines(y, &format!("{I}    "), "tags", &server.launch_tags);
        if !server.options.is_empty() {
            let _ = writeln!(y, "{I}    options:");
            for (key, value) in &server.options {
                let _ = writeln!(y, "{I}      {key}: {}", scalar(value));
            }
        }
    }
    for (key, network) in [("test", &server.test), ("cutover", &server.cutover)] {
        network_text(y, key, network);
    }
}

/// The blueprint of one launch: subnet, security groups and, for the cutover, the new
/// instance's address as the engine option `private_ip`.
fn network_text(y: &mut String, key: &str, network: &Network) {
    const I: &str = "          ";
    if network.is_empty() {
        return;
    }
    let _ = writeln!(y, "{I}{key}:");
    if let Some(subnet) = &network.subnet {
        let _ = writeln!(y, "{I}  subnet: {}", scalar(subnet));
    }
    if !network.security_groups.is_empty() {
        let _ = writeln!(
            y,
            "{I}  security_groups: {}",
            flow_list(&network.security_groups)
        );
    }
    if let Some(ip) = &network.private_ip {
        let _ = writeln!(y, "{I}  options:");
        let _ = writeln!(y, "{I}    private_ip: {}", scalar(&ip.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_only_where_unambiguous() {
        for plain in [
            "wave-1",
            "Red Hat Enterprise Linux 7",
            "Europe/Rome",
            "m5.large",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        for typed in [
            "yes",
            "No",
            "null",
            "~",
            "true",
            "inf",
            "NaN",
            "123",
            "1e3",
            "0x1f",
            "10.0.0.1",
            "2027-01-09 22:00",
            "a: b",
            "a #b",
            "-x",
            "",
            " x",
            "x ",
            "@x",
            "[x]",
            "a,b",
        ] {
            assert!(scalar(typed).starts_with('"'), "{typed} must be quoted");
        }
        assert_eq!(
            quoted("a\"b\\c\nd\u{7f}\u{85}é"),
            "\"a\\\"b\\\\c\\nd\\u007f\\u0085é\""
        );
    }
}
