//! `wavelift validate`: every problem in the definitions, with its place.

use std::io::Write;
use std::process::ExitCode;

use waves::{Diagnostics, Loaded};

use super::{DefinitionArgs, DiagnosticFormat};

pub fn run(args: &DefinitionArgs, format: DiagnosticFormat) -> anyhow::Result<ExitCode> {
    let loaded = waves::load_paths(&args.paths, args.config.as_deref());
    let has_errors = loaded.diagnostics.has_errors();
    match format {
        DiagnosticFormat::Text => {
            print_diagnostics(&loaded.diagnostics)?;
            if !has_errors {
                outln!("{}", summary(&loaded));
            }
        }
        DiagnosticFormat::Json => {
            let report = serde_json::json!({
                "valid": !has_errors,
                "errors": loaded.diagnostics.error_count(),
                "warnings": loaded.diagnostics.warning_count(),
                "diagnostics": loaded.diagnostics.clone().into_sorted(),
            });
            outln!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if has_errors {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Diagnostics to stderr, sorted by place, then a count.
pub fn print_diagnostics(diagnostics: &Diagnostics) -> anyhow::Result<()> {
    let stderr = std::io::stderr();
    let mut out = stderr.lock();
    for diagnostic in diagnostics.clone().into_sorted() {
        writeln!(out, "{diagnostic}")?;
    }
    let (errors, warnings) = (diagnostics.error_count(), diagnostics.warning_count());
    if errors > 0 {
        writeln!(
            out,
            "{errors} error{}, {warnings} warning{}",
            plural(errors),
            plural(warnings)
        )?;
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn summary(loaded: &Loaded) -> String {
    let waves = &loaded.definitions.waves;
    let applications: usize = waves.iter().map(|w| w.applications.len()).sum();
    let servers: usize = waves.iter().map(|w| w.server_count()).sum();
    let warnings = loaded.diagnostics.warning_count();
    format!(
        "valid: {} wave{}, {applications} application{}, {servers} server{}{}",
        waves.len(),
        plural(waves.len()),
        plural(applications),
        plural(servers),
        if warnings > 0 {
            format!(" ({warnings} warning{})", plural(warnings))
        } else {
            String::new()
        }
    )
}
