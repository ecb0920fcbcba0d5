//! Import of Cloud Migration Factory (CMF) intake forms: a CSV with one row per server,
//! turned into one wave file per wave.
//!
//! Pure: the caller reads the form and writes the files; nothing here touches the disk or
//! the clock. Every problem is a diagnostic at the row's line and the cell's column (the
//! field number, from 1), like `intake.csv:5:6: error: server_os_family: ...`.
//!
//! What is generated is loaded back with [`load::load_sources`] before it is returned, so
//! a mistake in the emitter shows up as a diagnostic, never as a wave file that does not
//! validate. When there is any error, no wave is returned at all.
//!
//! `private_ip` is the address of the new instance in AWS (CMF's MGN automation writes
//! it into the launch template), not of the server: it becomes the cutover blueprint's
//! `options.private_ip`. The server is reached by its `server_fqdn`, which every rehost
//! row therefore needs, as CMF requires it too.
//!
//! The parts, in the order an import runs them:
//! - `window`: the options, the first window and the windows after it;
//! - `form`: the bytes as CSV text, then the header (`columns`) and every row;
//! - `row`: one row into one server, with the checks across rows;
//! - `cells`: the checks of single cells (networks, tags, launch options);
//! - `region`: the region of the suggested configuration;
//! - `emit`: the wave files as YAML text.

mod cells;
mod columns;
mod emit;
mod form;
mod region;
mod row;
mod window;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::diag::{Diagnostics, Location};
use crate::load;
use crate::model::EngineKind;
use crate::source::{CONFIG_FILE_NAME, SourceFile};
use crate::units::Dur;

use emit::scalar;
use form::WaveDraft;

pub use crate::rules::time_zone;
pub use row::sanitize_name;
pub use window::{default_first_window, first_window_after, parse_first_window};

/// A local date and time without a zone, as the window start is written.
pub use jiff::civil::DateTime as LocalDateTime;

/// Larger forms are refused: 32 MiB is about 100,000 servers.
pub const MAX_FORM_BYTES: usize = 32 * 1024 * 1024;

/// How the waves are placed in time and which engine runs them. The form has no dates, so
/// the windows come from here.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The start of the first wave's window, in `timezone`.
    pub first_window: LocalDateTime,
    pub timezone: String,
    pub window_duration: Dur,
    /// Time between the window starts of consecutive waves.
    pub cadence: Dur,
    pub engine: EngineKind,
}

/// One generated wave file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedWave {
    /// `wave-1.yaml`
    pub file_name: String,
    pub wave: String,
    pub text: String,
    pub servers: usize,
}

/// A row left out because its migration strategy is not a rehost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: u64,
    pub server: String,
    pub r_type: String,
}

/// The outcome of an import. `waves` is empty whenever `diagnostics` has errors.
#[derive(Debug, Default)]
pub struct Import {
    pub waves: Vec<ImportedWave>,
    pub skipped: Vec<Skipped>,
    pub diagnostics: Diagnostics,
    /// The most common `aws_region` of the imported servers, for the configuration.
    pub aws_region: Option<String>,
}

/// Where the diagnostics of one form go.
struct Sink {
    file: Arc<str>,
    diags: Diagnostics,
}

impl Sink {
    fn new(file: &Arc<str>) -> Sink {
        Sink {
            file: Arc::clone(file),
            diags: Diagnostics::new(),
        }
    }

    fn error(&mut self, location: Location, message: impl Into<String>) {
        self.diags.error(&self.file, location, message);
    }

    fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.diags.warning(&self.file, location, message);
    }
}

/// The place of a cell: its row's line and its field index, counted from 1.
fn location(line: u64, index: usize) -> Location {
    Location::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX),
    )
}

/// Imports a form given as bytes: checks that it is UTF-8 text first.
pub fn import_cmf_bytes(file: &Arc<str>, bytes: &[u8], options: &ImportOptions) -> Import {
    let mut sink = Sink::new(file);
    match form::form_text(bytes, &mut sink) {
        Some(text) => import_cmf(file, text, options),
        None => Import {
            diagnostics: sink.diags,
            ..Import::default()
        },
    }
}

/// Imports a form: one wave file per `wave_name`, in order of first appearance.
pub fn import_cmf(file: &Arc<str>, text: &str, options: &ImportOptions) -> Import {
    let mut sink = Sink::new(file);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let timing = window::check_options(options, &mut sink);
    let form = form::read_form(text, &mut sink);
    let region = form
        .as_ref()
        .and_then(|f| region::most_common_region(&f.regions));
    if let Some(form) = &form {
        region::check_regions(form, region.as_deref(), options.engine, &mut sink);
    }
    let mut import = Import {
        waves: Vec::new(),
        skipped: form.as_ref().map(|f| f.skipped.clone()).unwrap_or_default(),
        diagnostics: Diagnostics::new(),
        aws_region: region,
    };
    if let (Some(form), Some(timing)) = (form, timing)
        && !sink.diags.has_errors()
    {
        import.waves = emit::emit_waves(file, &form.waves, options, &timing, &mut sink);
        if !sink.diags.has_errors() {
            let config = suggested_config(&import, options);
            validate_generated(&import.waves, &config, &form.waves, &mut sink);
        }
    }
    if sink.diags.has_errors() {
        import.waves.clear();
    }
    import.diagnostics = sink.diags;
    import
}

/// A configuration file (`wavelift.yaml`) under which the imported waves are valid:
/// `engines.default` and, for mgn, `engines.mgn.region`, the most common `aws_region` of
/// the form.
pub fn suggested_config(import: &Import, options: &ImportOptions) -> String {
    let mut y = String::new();
    y.push_str("# Wavelift configuration suggested by `wavelift import cmf`.\n");
    y.push_str(
        "# Database, reports, CMDB and sites keep their built-in defaults: review them before \
         the first run.\n",
    );
    y.push_str("version: 1\n");
    y.push_str("engines:\n");
    let _ = writeln!(y, "  default: {}", scalar(options.engine.as_str()));
    if options.engine == EngineKind::Mgn {
        y.push_str("  mgn:\n");
        match &import.aws_region {
            Some(region) => {
                let _ = writeln!(
                    y,
                    "    region: {}   # the most common aws_region of the form",
                    scalar(region)
                );
            }
            None => y.push_str("    region: null   # no row names an aws_region: write yours\n"),
        }
    }
    y
}

/// Loads what was generated, as `wavelift validate` would, and reports any difference.
fn validate_generated(waves: &[ImportedWave], config: &str, drafts: &[WaveDraft], sink: &mut Sink) {
    let config = SourceFile {
        name: Arc::from(CONFIG_FILE_NAME),
        text: config.to_owned(),
    };
    let sources: Vec<SourceFile> = waves
        .iter()
        .map(|w| SourceFile {
            name: Arc::from(w.file_name.as_str()),
            text: w.text.clone(),
        })
        .collect();
    let loaded = load::load_sources(Some(&config), PathBuf::new(), &sources);
    let failed = loaded.diagnostics.has_errors();
    sink.diags.extend(loaded.diagnostics);
    let mut expected: Vec<(&str, usize)> = drafts
        .iter()
        .map(|d| (d.name.as_str(), d.server_count()))
        .collect();
    let mut found: Vec<(&str, usize)> = loaded
        .definitions
        .waves
        .iter()
        .map(|w| (w.name.value.as_str(), w.server_count()))
        .collect();
    expected.sort_unstable();
    found.sort_unstable();
    if failed || found != expected {
        sink.error(
            Location::START,
            "the generated wave files do not load back as imported: this is a bug in the \
             importer; please report it with the form",
        );
    }
}
