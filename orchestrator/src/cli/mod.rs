//! The command line: arguments are parsed by clap (usage errors exit with 2), then each
//! subcommand runs and says how it ended: 0 for success, 1 when the definitions have
//! errors or the work failed.

mod estimate;
mod import;
mod plan;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wavelift",
    version,
    about = "Wave-based migration factory orchestrator",
    long_about = "Wave-based migration factory orchestrator: validate, plan and estimate waves \
                  written in YAML, and import Cloud Migration Factory intake forms."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the definitions are: files or folders, and the configuration file.
#[derive(Debug, clap::Args)]
pub struct DefinitionArgs {
    /// Wave files or folders of them (searched recursively for *.yaml and *.yml)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Configuration file; by default the wavelift.yaml found among PATH
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiagnosticFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check wave files and the configuration; print every problem with its place
    Validate {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// How to print the diagnostics
        #[arg(long, value_enum, default_value = "text")]
        format: DiagnosticFormat,
    },
    /// Show what will happen to every server and when: phases, tasks, gates, findings
    Plan {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: plan::PlanFormat,
    },
    /// Estimate replication time and the bandwidth needed, and check each window
    Estimate {
        #[command(flatten)]
        definitions: DefinitionArgs,
        /// Only this wave
        #[arg(long, value_name = "WAVE")]
        wave: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: DiagnosticFormat,
    },
    /// Turn definitions kept in other tools into wave files
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

#[derive(Debug, Subcommand)]
enum ImportSource {
    /// A Cloud Migration Factory intake form (CSV) into one wave file per wave
    Cmf(import::CmfArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate {
            definitions,
            format,
        } => validate::run(&definitions, format),
        Command::Plan {
            definitions,
            wave,
            format,
        } => plan::run(&definitions, wave.as_deref(), format),
        Command::Estimate {
            definitions,
            wave,
            format,
        } => estimate::run(&definitions, wave.as_deref(), format),
        Command::Import {
            source: ImportSource::Cmf(args),
        } => import::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the definitions and prints their diagnostics; `None` when they have errors, so
/// nothing is planned from a broken definition.
pub fn load_valid(args: &DefinitionArgs) -> anyhow::Result<Option<waves::Definitions>> {
    let loaded = waves::load_paths(&args.paths, args.config.as_deref());
    validate::print_diagnostics(&loaded.diagnostics)?;
    if loaded.diagnostics.has_errors() {
        return Ok(None);
    }
    Ok(Some(loaded.definitions))
}

/// Loads valid definitions and checks the `--wave` filter names one of them. Plans and
/// estimates are always made for every wave (a wave depends on the ones before it and
/// shares links with its neighbours); the filter only narrows what is shown.
pub fn load_for_wave(
    args: &DefinitionArgs,
    wave: Option<&str>,
) -> anyhow::Result<Option<waves::Definitions>> {
    let Some(definitions) = load_valid(args)? else {
        return Ok(None);
    };
    if let Some(name) = wave {
        check_wave_name(&definitions, name)?;
    }
    Ok(Some(definitions))
}

fn check_wave_name(definitions: &waves::Definitions, name: &str) -> anyhow::Result<()> {
    if definitions.waves.iter().any(|w| w.name.value == name) {
        return Ok(());
    }
    let known: Vec<&str> = definitions
        .waves
        .iter()
        .map(|w| w.name.value.as_str())
        .collect();
    anyhow::bail!(
        "no wave named `{name}`; the waves are: {}",
        known.join(", ")
    )
}
