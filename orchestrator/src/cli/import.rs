//! `wavelift import cmf`: a Cloud Migration Factory intake form into wave files.
//!
//! The import itself is pure ([`waves::cmf`]); this command reads the form, places the
//! first window, and writes the files only when the folder they land in validates as a
//! whole: the new waves, the waves already there and its configuration.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use waves::Diagnostics;
use waves::cmf::{self, Import, ImportOptions, LocalDateTime};
use waves::model::EngineKind;
use waves::source::{self, CONFIG_FILE_NAME, SourceFile};
use waves::units::{self, Dur};

use super::validate::print_diagnostics;

#[derive(Debug, clap::Args)]
pub struct CmfArgs {
    /// The intake form
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
    /// Folder for the wave files
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Start of the first wave's window, local time in --timezone [default: the first
    /// Saturday 22:00 at least 21 days from today]
    #[arg(long, value_name = "YYYY-MM-DD HH:MM", value_parser = first_window_arg)]
    pub first_window: Option<LocalDateTime>,
    /// Time zone of the windows (an IANA name)
    #[arg(long, value_name = "TZ", default_value = "UTC", value_parser = timezone_arg)]
    pub timezone: String,
    /// Length of each cutover window
    #[arg(long, value_name = "DURATION", default_value = "8h", value_parser = duration_arg)]
    pub window_duration: Dur,
    /// Time from one wave's window to the next one's
    #[arg(long, value_name = "DURATION", default_value = "1w", value_parser = duration_arg)]
    pub cadence: Dur,
    /// Replication engine of the waves (local needs disks, which a form does not list)
    #[arg(long, value_name = "ENGINE", default_value = "mgn", value_parser = engine_arg)]
    pub engine: EngineKind,
    /// Overwrite wave files that already exist
    #[arg(long)]
    pub force: bool,
}

fn first_window_arg(text: &str) -> Result<LocalDateTime, String> {
    cmf::parse_first_window(text)
}

fn timezone_arg(text: &str) -> Result<String, String> {
    cmf::time_zone(text).map(|_| text.to_owned())
}

fn duration_arg(text: &str) -> Result<Dur, String> {
    let duration = units::parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

fn engine_arg(text: &str) -> Result<EngineKind, String> {
    EngineKind::from_name(text)
        .ok_or_else(|| format!("expected one of: {}", EngineKind::NAMES.join(", ")))
}

pub fn run(args: &CmfArgs) -> anyhow::Result<ExitCode> {
    let name: Arc<str> = Arc::from(args.file.to_string_lossy().as_ref());
    let bytes = read_form(&args.file)?;
    let first_window = match args.first_window {
        Some(time) => time,
        None => {
            let time = cmf::default_first_window(SystemTime::now(), &args.timezone)
                .map_err(anyhow::Error::msg)?;
            outln!(
                "first window: {} {} (the first Saturday 22:00 at least 21 days from today, so the \
                 three phases fit before it; choose another with --first-window)",
                time.strftime("%Y-%m-%d %H:%M"),
                args.timezone
            );
            time
        }
    };
    let options = ImportOptions {
        first_window,
        timezone: args.timezone.clone(),
        window_duration: args.window_duration,
        cadence: args.cadence,
        engine: args.engine,
    };
    let import = cmf::import_cmf_bytes(&name, &bytes, &options);
    print_diagnostics(&import.diagnostics)?;
    print_skipped(&import)?;
    if import.diagnostics.has_errors() {
        eprintln!("nothing written: correct the errors above and import again");
        return Ok(ExitCode::FAILURE);
    }
    let plan = plan_writes(args, &import, &options);
    let taken: Vec<&PathBuf> = plan
        .waves
        .iter()
        .filter(|(path, _)| path.exists())
        .map(|(path, _)| path)
        .collect();
    if !taken.is_empty() && !args.force {
        for path in &taken {
            eprintln!(
                "error: {} exists: pass --force to overwrite it",
                path.display()
            );
        }
        eprintln!("nothing written");
        return Ok(ExitCode::FAILURE);
    }
    let folder = check_folder(&args.out, &plan);
    if folder.has_errors() {
        print_diagnostics(&folder)?;
        eprintln!(
            "nothing written: the waves would not validate in {}",
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    write(&args.out, &plan, &import)?;
    // Wave files the folder held before that this form did not write (an earlier
    // import's wave the revised form dropped, say): `validate` and `apply` take them
    // with the rest, so they are named.
    let mut ignored = Diagnostics::new();
    let others: Vec<PathBuf> =
        source::collect_definition_paths(std::slice::from_ref(&args.out), None, &mut ignored)
            .waves
            .into_iter()
            .filter(|path| !plan.waves.iter().any(|(new, _)| new == path))
            .collect();
    if !others.is_empty() {
        let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "note: {} also holds wave files this form did not write: {}; they are validated and applied with the others: remove them if the form no longer has their waves",
            args.out.display(),
            names.join(", ")
        );
    }
    outln!("next: wavelift validate {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn read_form(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let limit = u64::try_from(cmf::MAX_FORM_BYTES).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    // One byte over the limit is enough for the import to refuse it with its size.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

fn print_skipped(import: &Import) -> std::io::Result<()> {
    if import.skipped.is_empty() {
        return Ok(());
    }
    outln!(
        "left out, not a rehost ({} server{}):",
        import.skipped.len(),
        if import.skipped.len() == 1 { "" } else { "s" }
    );
    for skipped in &import.skipped {
        let server = if skipped.server.is_empty() {
            "(no server_name)"
        } else {
            skipped.server.as_str()
        };
        outln!(
            "  line {}: {server} ({})",
            skipped.line,
            skipped.r_type.escape_debug()
        );
    }
    Ok(())
}

/// What would be written: every wave file, and the configuration unless one is there.
struct Plan {
    waves: Vec<(PathBuf, SourceFile)>,
    config: Option<(PathBuf, SourceFile)>,
}

fn plan_writes(args: &CmfArgs, import: &Import, options: &ImportOptions) -> Plan {
    let source = |path: &Path, text: String| SourceFile {
        name: Arc::from(path.to_string_lossy().as_ref()),
        text,
    };
    let waves = import
        .waves
        .iter()
        .map(|wave| {
            let path = args.out.join(&wave.file_name);
            let file = source(&path, wave.text.clone());
            (path, file)
        })
        .collect();
    let config_path = args.out.join(CONFIG_FILE_NAME);
    let config = (!config_path.exists()).then(|| {
        let file = source(&config_path, cmf::suggested_config(import, options));
        (config_path, file)
    });
    Plan { waves, config }
}

/// Validates the folder as it would be after writing, as `wavelift validate DIR` will:
/// the configuration found there (or the suggested one), the wave files already there
/// that are not replaced, and the new ones.
fn check_folder(out: &Path, plan: &Plan) -> Diagnostics {
    let mut diagnostics = Diagnostics::new();
    let found = if out.is_dir() {
        source::collect_definition_paths(&[out.to_path_buf()], None, &mut diagnostics)
    } else {
        source::DefinitionPaths::default()
    };
    let config = match &plan.config {
        Some((_, file)) => Some(file.clone()),
        None => found
            .config
            .as_deref()
            .and_then(|path| source::read_source(path, &mut diagnostics)),
    };
    let mut waves: Vec<SourceFile> = found
        .waves
        .iter()
        .filter(|path| !plan.waves.iter().any(|(new, _)| new == *path))
        .filter_map(|path| source::read_source(path, &mut diagnostics))
        .collect();
    waves.extend(plan.waves.iter().map(|(_, file)| file.clone()));
    let loaded = waves::load_sources(config.as_ref(), out.to_path_buf(), &waves);
    diagnostics.extend(loaded.diagnostics);
    diagnostics
}

fn write(out: &Path, plan: &Plan, import: &Import) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for ((path, file), wave) in plan.waves.iter().zip(&import.waves) {
        fs::write(path, &file.text).with_context(|| format!("cannot write {}", path.display()))?;
        outln!(
            "wrote {} (wave {}, {} server{})",
            path.display(),
            wave.wave,
            wave.servers,
            if wave.servers == 1 { "" } else { "s" }
        );
    }
    match &plan.config {
        Some((path, file)) => {
            fs::write(path, &file.text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            outln!("wrote {} (review its engine settings)", path.display());
        }
        None => outln!(
            "kept {}: the waves validate with it",
            out.join(CONFIG_FILE_NAME).display()
        ),
    }
    Ok(())
}
