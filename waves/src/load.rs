//! From paths to [`Definitions`]: read every file, decode the configuration first (the
//! waves inherit from it), then every wave document, then the checks across files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, Config};
use crate::decode::Ctx;
use crate::diag::{Diagnostics, Location};
use crate::model::Definitions;
use crate::source::{self, SourceFile};
use crate::validate;
use crate::wave_file;
use crate::yaml;

/// The outcome of loading: the definitions that could be read and every diagnostic.
/// Callers must not act on `definitions` when `diagnostics.has_errors()`.
#[derive(Debug)]
pub struct Loaded {
    pub definitions: Definitions,
    pub diagnostics: Diagnostics,
    /// The texts read, so a store can keep the exact revision that was applied.
    pub sources: Sources,
}

/// The texts of one set of definitions: enough to load them again anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    pub base_dir: PathBuf,
    pub config: Option<SourceText>,
    pub waves: Vec<SourceText>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceText {
    pub name: String,
    pub text: String,
}

impl Sources {
    /// Loads these texts again (for example a revision kept in a store).
    pub fn load(&self) -> Loaded {
        let as_file = |s: &SourceText| SourceFile {
            name: Arc::from(s.name.as_str()),
            text: s.text.clone(),
        };
        let config = self.config.as_ref().map(as_file);
        let waves: Vec<SourceFile> = self.waves.iter().map(as_file).collect();
        load_sources(config.as_ref(), self.base_dir.clone(), &waves)
    }
}

/// Loads wave files and folders; the configuration is `config` or the `wavelift.yaml`
/// found among `paths`.
pub fn load_paths(paths: &[PathBuf], config: Option<&Path>) -> Loaded {
    let mut diagnostics = Diagnostics::new();
    let found = source::collect_definition_paths(paths, config, &mut diagnostics);
    let config_source = found
        .config
        .as_deref()
        .and_then(|path| source::read_source(path, &mut diagnostics));
    let base_dir = found
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // Absolute, so paths in the configuration mean the same from any working folder.
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    if found.waves.is_empty() && !diagnostics.has_errors() {
        let name: Arc<str> = Arc::from(
            paths
                .first()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
                .as_str(),
        );
        diagnostics.error(
            &name,
            Location::START,
            "no wave files (*.yaml, *.yml) found",
        );
    }
    // The CMDB inventory may live beside the waves; it is data, not a wave file.
    let cmdb_file = config_source.as_ref().and_then(|source| {
        let config = load_config(source, base_dir.clone(), &mut Diagnostics::new());
        match &config.cmdb {
            Some(crate::config::Cmdb::File { path }) => {
                let path = config.resolve(path);
                Some(std::fs::canonicalize(&path).unwrap_or(path))
            }
            _ => None,
        }
    });
    let mut unread = false;
    let waves: Vec<SourceFile> = found
        .waves
        .iter()
        .filter(|path| {
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            cmdb_file.as_ref() != Some(&path)
        })
        .filter_map(|path| {
            let read = source::read_source(path, &mut diagnostics);
            unread |= read.is_none();
            read
        })
        .collect();
    let mut loaded = load_read(config_source.as_ref(), base_dir, &waves, unread);
    diagnostics.extend(loaded.diagnostics);
    loaded.diagnostics = diagnostics;
    loaded
}

fn text_of(source: &SourceFile) -> SourceText {
    SourceText {
        name: source.name.to_string(),
        text: source.text.clone(),
    }
}

/// One wave file's text, named `name`, loaded on the built-in configuration: for tests
/// and tools that hold a wave in memory.
pub fn load_text(name: &str, text: &str) -> Loaded {
    load_sources(
        None,
        PathBuf::new(),
        &[SourceFile {
            name: std::sync::Arc::from(name),
            text: text.to_owned(),
        }],
    )
}

/// Loads text already read: the configuration (if any) and the wave files.
pub fn load_sources(
    config: Option<&SourceFile>,
    base_dir: PathBuf,
    waves: &[SourceFile],
) -> Loaded {
    load_read(config, base_dir, waves, false)
}

/// [`load_sources`]; `unread`: a wave file could not be read (reported already).
fn load_read(
    config: Option<&SourceFile>,
    base_dir: PathBuf,
    waves: &[SourceFile],
    unread: bool,
) -> Loaded {
    let config_text = config.map(text_of);
    let base_dir_kept = base_dir.clone();
    let wave_sources = waves;
    let mut diagnostics = Diagnostics::new();
    let config_value = match config {
        Some(source) => load_config(source, base_dir, &mut diagnostics),
        None => Config::builtin(base_dir),
    };
    let mut all = Vec::new();
    // Something written could not be read (a file, a wave, an application): a reference
    // to what it may have defined is not reported as unknown besides.
    let mut incomplete = unread;
    for source in waves {
        let Some((documents, dropped)) =
            yaml::parse_documents_noting(&source.name, &source.text, &mut diagnostics)
        else {
            incomplete = true;
            continue;
        };
        incomplete |= dropped;
        if documents.is_empty() {
            diagnostics.error(
                &source.name,
                Location::START,
                "file is empty: expected a wave (name, window, applications)",
            );
            continue;
        }
        let mut ctx = Ctx {
            file: Arc::clone(&source.name),
            diags: &mut diagnostics,
        };
        // An empty document beside real ones (a trailing `---`) is harmless.
        let only_empty = documents.iter().all(|d| d.is_null());
        for document in &documents {
            if document.is_null() {
                if only_empty {
                    ctx.error(document.location, "empty document: expected a wave");
                }
                continue;
            }
            match wave_file::decode_wave(document, &config_value, &mut ctx) {
                Some(decoded) => {
                    incomplete |= decoded.lost_applications;
                    all.push((decoded.wave, decoded.complete));
                }
                None => incomplete = true,
            }
        }
    }
    let waves = validate::check_across_waves(all, incomplete, &mut diagnostics);
    Loaded {
        definitions: Definitions {
            config: config_value,
            waves,
        },
        diagnostics,
        sources: Sources {
            base_dir: base_dir_kept,
            config: config_text,
            waves: wave_sources.iter().map(text_of).collect(),
        },
    }
}

fn load_config(source: &SourceFile, base_dir: PathBuf, diagnostics: &mut Diagnostics) -> Config {
    let fallback = Config::builtin(base_dir.clone());
    let Some(documents) = yaml::parse_documents(&source.name, &source.text, diagnostics) else {
        return fallback;
    };
    let mut ctx = Ctx {
        file: Arc::clone(&source.name),
        diags: diagnostics,
    };
    match documents.as_slice() {
        [] => fallback,
        [document] if document.is_null() => fallback,
        [document] => config::decode_config(document, base_dir, &mut ctx),
        [_, second, ..] => {
            ctx.error(
                second.location,
                "the configuration file holds one document; remove the extra `---`",
            );
            fallback
        }
    }
}
