//! `wavelift estimate`: can replication finish in time, and what bandwidth would it take.

use std::fmt::Write as _;
use std::process::ExitCode;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use waves::estimate::{self, Readiness, WaveEstimate};
use waves::model::Definitions;
use waves::units::{format_bandwidth, format_bytes, format_seconds};

use super::{DefinitionArgs, DiagnosticFormat, load_for_wave};

pub fn run(
    args: &DefinitionArgs,
    wave: Option<&str>,
    format: DiagnosticFormat,
) -> anyhow::Result<ExitCode> {
    let Some(definitions) = load_for_wave(args, wave)? else {
        return Ok(ExitCode::FAILURE);
    };
    let mut estimates = estimate::estimate(&definitions);
    if let Some(name) = wave {
        estimates.retain(|e| e.wave == name);
    }
    match format {
        DiagnosticFormat::Text => out!("{}", render(&definitions, &estimates)),
        DiagnosticFormat::Json => outln!("{}", serde_json::to_string_pretty(&estimates)?),
    }
    let late = estimates
        .iter()
        .any(|e| e.readiness == Readiness::TooLate || !e.cutover_chain.fits());
    Ok(if late {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn at(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%a %Y-%m-%d %H:%M")
        .to_string()
}

fn render(definitions: &Definitions, estimates: &[WaveEstimate]) -> String {
    let mut out = String::new();
    for estimate in estimates {
        let Some(wave) = definitions
            .waves
            .iter()
            .find(|w| w.name.value == estimate.wave)
        else {
            continue;
        };
        let tz = wave.window.interval.start.time_zone().clone();
        let _ = writeln!(
            out,
            "{}: replication from {}, validate from {}, window at {}",
            estimate.wave,
            at(estimate.replication_start, &tz),
            at(estimate.validate_start, &tz),
            at(estimate.window_start, &tz)
        );
        let _ = writeln!(
            out,
            "  {:<16} {:>12} {:>7} {:>10} {:>12} {:>13} {:>16}",
            "link", "bandwidth", "servers", "to send", "changes", "initial sync", "needed in time"
        );
        for link in &estimate.links {
            let _ = writeln!(
                out,
                "  {:<16} {:>12} {:>7} {:>10} {:>12} {:>13} {:>16}",
                link.link,
                link.bandwidth_bits
                    .map(|b| format_bandwidth(b as f64))
                    .unwrap_or_else(|| "not set".to_owned()),
                link.servers,
                format_bytes(link.wire_bytes),
                format_bandwidth(
                    (link.change_bytes_per_second + link.background_bytes_per_second) * 8.0
                ),
                link.initial_sync_seconds
                    .map(format_seconds)
                    .unwrap_or_else(|| "unknown".to_owned()),
                format_bandwidth(link.needed_bandwidth_bits)
            );
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<20} {:>10} {:>18}  continuous at",
            "server", "application", "used", "continuous after"
        );
        for server in &estimate.servers {
            let _ = writeln!(
                out,
                "  {:<24} {:<20} {:>10} {:>18}  {}",
                server.server,
                server.application,
                format_bytes(server.used_bytes as f64),
                server
                    .initial_sync_seconds
                    .map(format_seconds)
                    .unwrap_or_else(|| "unknown".to_owned()),
                server
                    .continuous_at
                    .map(|t| at(t, &tz))
                    .unwrap_or_else(|| "-".to_owned())
            );
        }
        let verdict = match (estimate.readiness, estimate.all_continuous_at) {
            (Readiness::InTime, Some(last)) => format!(
                "in time: every server continuous by {}, {} before the validate phase",
                at(last, &tz),
                format_seconds((estimate.validate_start.as_second() - last.as_second()) as f64)
            ),
            (Readiness::InTime, None) => "in time: no server to replicate".to_owned(),
            (Readiness::DuringValidate, Some(last)) => format!(
                "late: the last server is continuous only at {}, after the validate phase starts",
                at(last, &tz)
            ),
            (Readiness::TooLate, Some(last)) => format!(
                "too late: the last server is continuous only at {}, after the window starts",
                at(last, &tz)
            ),
            (Readiness::TooLate, None) => {
                "too late: the last server is continuous only further off than any date".to_owned()
            }
            _ => "unknown: see the notes".to_owned(),
        };
        let _ = writeln!(out, "  replication: {verdict}");
        let chain = &estimate.cutover_chain;
        let _ = writeln!(
            out,
            "  cutover: the chain {} takes about {} of a {} window{}",
            if chain.applications.is_empty() {
                "(none)".to_owned()
            } else {
                chain.applications.join(" -> ")
            },
            format_seconds(chain.seconds),
            format_seconds(chain.window_seconds),
            if chain.fits() {
                ""
            } else {
                ": it does not fit"
            }
        );
        for note in &estimate.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out.push('\n');
    }
    out
}
