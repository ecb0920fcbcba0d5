//! Finding and reading definition files: the only IO this crate does.
//!
//! Every file is checked before it is parsed: size, binary content and UTF-8, so that the
//! parser only ever sees bounded, valid text.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostics, Location};

/// Larger files are refused: a wave file of 10,000 servers is about 4 MiB.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Folders deeper than this below a given path are not searched.
const MAX_WALK_DEPTH: usize = 16;

/// The file name that marks the configuration file inside a definitions folder.
pub const CONFIG_FILE_NAME: &str = "wavelift.yaml";

#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user will read it in diagnostics.
    pub name: Arc<str>,
    pub text: String,
}

/// What a list of command-line paths holds: wave files and at most one configuration.
#[derive(Debug, Default)]
pub struct DefinitionPaths {
    pub waves: Vec<PathBuf>,
    pub config: Option<PathBuf>,
}

fn display_name(path: &Path) -> Arc<str> {
    Arc::from(path.to_string_lossy().as_ref())
}

/// Expands folders into their `.yaml`/`.yml` files (sorted, hidden entries skipped) and
/// sets aside the configuration file (`wavelift.yaml`), unless one is given explicitly.
pub fn collect_definition_paths(
    paths: &[PathBuf],
    explicit_config: Option<&Path>,
    diags: &mut Diagnostics,
) -> DefinitionPaths {
    let mut found = DefinitionPaths {
        config: explicit_config.map(Path::to_path_buf),
        ..DefinitionPaths::default()
    };
    let mut configs_found: Vec<PathBuf> = Vec::new();
    for path in paths {
        let name = display_name(path);
        match fs::metadata(path) {
            Err(err) => diags.error(&name, Location::START, format!("cannot read: {err}")),
            Ok(meta) if meta.is_dir() => {
                walk(path, 0, &mut found.waves, &mut configs_found, diags);
            }
            Ok(_) if is_config_name(path) => configs_found.push(path.clone()),
            Ok(_) => found.waves.push(path.clone()),
        }
    }
    if let Some(explicit) = explicit_config {
        // An explicit --config wins; another wavelift.yaml among the paths is set aside.
        let same = |a: &Path, b: &Path| match (fs::canonicalize(a), fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        for other in configs_found.iter().filter(|p| !same(p, explicit)) {
            diags.warning(
                &display_name(other),
                Location::START,
                format!("not read: the configuration is {}", explicit.display()),
            );
        }
        found.waves.retain(|p| !same(p, explicit));
    } else {
        dedup_files(&mut configs_found);
        if let Some((first, rest)) = configs_found.split_first() {
            for other in rest {
                diags.error(
                    &display_name(other),
                    Location::START,
                    format!(
                        "a second configuration file; {} is already used: pass one with --config",
                        first.display()
                    ),
                );
            }
            found.config = Some(first.clone());
        }
    }
    found.waves.sort();
    dedup_files(&mut found.waves);
    found
}

/// Keeps the first of the paths that name one file (`./waves/a.yaml`, `waves/a.yaml`,
/// a link to it), in their order: a folder and one of its files given together are read
/// once.
fn dedup_files(paths: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
}

/// `wavelift.yaml`, or `wavelift.yml` (as a user may well name it, and then find it read
/// as a wave).
fn is_config_name(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some(CONFIG_FILE_NAME | "wavelift.yml")
    )
}

fn is_yaml_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

fn walk(
    dir: &Path,
    depth: usize,
    waves: &mut Vec<PathBuf>,
    configs: &mut Vec<PathBuf>,
    diags: &mut Diagnostics,
) {
    let name = display_name(dir);
    if depth > MAX_WALK_DEPTH {
        diags.warning(
            &name,
            Location::START,
            format!("not searched: more than {MAX_WALK_DEPTH} folders deep"),
        );
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            diags.error(&name, Location::START, format!("cannot read folder: {err}"));
            return;
        }
    };
    let mut children: Vec<(PathBuf, bool)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        // Symbolic links to folders are not followed, so a link loop cannot trap the walk.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        children.push((path, is_dir));
    }
    children.sort();
    for (path, is_dir) in children {
        if is_dir {
            walk(&path, depth + 1, waves, configs, diags);
        } else if is_config_name(&path) {
            configs.push(path);
        } else if is_yaml_name(&path) {
            waves.push(path);
        }
    }
}

/// Reads one file as text, or says why it cannot be a definition file.
pub fn read_source(path: &Path, diags: &mut Diagnostics) -> Option<SourceFile> {
    let name = display_name(path);
    let size = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(err) => {
            diags.error(&name, Location::START, format!("cannot read: {err}"));
            return None;
        }
    };
    if size > MAX_FILE_BYTES {
        diags.error(
            &name,
            Location::START,
            format!(
                "file is {} MiB, over the limit of {} MiB: split it, one file per wave",
                size / (1024 * 1024),
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        );
        return None;
    }
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            diags.error(&name, Location::START, format!("cannot read: {err}"));
            return None;
        }
    };
    source_from_bytes(name, bytes, diags)
}

/// Checks bytes that claim to be a definition file: not binary, valid UTF-8, within the
/// size limit. Used for files and for text that arrives otherwise (tests, stdin).
pub fn source_from_bytes(
    name: Arc<str>,
    bytes: Vec<u8>,
    diags: &mut Diagnostics,
) -> Option<SourceFile> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.error(
            &name,
            Location::START,
            format!(
                "input is over the limit of {} MiB",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        );
        return None;
    }
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        let location = location_of_offset(&bytes, nul);
        diags.error(
            &name,
            location,
            "binary file (it contains a NUL byte): a definition must be YAML text",
        );
        return None;
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let offset = err.utf8_error().valid_up_to();
            let bytes = err.into_bytes();
            let location = location_of_offset(&bytes, offset);
            diags.error(
                &name,
                location,
                format!(
                    "not valid UTF-8 (byte 0x{:02x} at offset {offset}): save the file as UTF-8",
                    bytes.get(offset).copied().unwrap_or(0)
                ),
            );
            return None;
        }
    };
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    };
    Some(SourceFile { name, text })
}

/// Line and column (counting characters of the valid prefix) of a byte offset.
fn location_of_offset(bytes: &[u8], offset: usize) -> Location {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Location::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wavelift.yml` is the configuration as `wavelift.yaml` is, not a wave file; with
    /// both, the second is an error.
    #[test]
    fn wavelift_yml_is_the_configuration_too() {
        let dir = std::env::temp_dir().join(format!("wl-config-yml-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("waves")).expect("dir");
        fs::write(dir.join("wavelift.yml"), "version: 1\n").expect("config");
        fs::write(dir.join("waves/wave-1.yaml"), "name: w\n").expect("wave");
        let mut diags = Diagnostics::new();
        let found = collect_definition_paths(std::slice::from_ref(&dir), None, &mut diags);
        assert_eq!(found.config, Some(dir.join("wavelift.yml")));
        assert_eq!(found.waves, vec![dir.join("waves/wave-1.yaml")]);
        assert!(diags.is_empty(), "{diags:?}");

        fs::write(dir.join("wavelift.yaml"), "version: 1\n").expect("config");
        let mut diags = Diagnostics::new();
        let found = collect_definition_paths(std::slice::from_ref(&dir), None, &mut diags);
        assert_eq!(found.config, Some(dir.join("wavelift.yaml")));
        let said: Vec<String> = diags
            .into_sorted()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("a second configuration file"), "{said:?}");
        fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A folder and one of its files, or a file by two spellings, are read once; so is
    /// the configuration given beside its folder.
    #[test]
    fn a_file_named_twice_is_read_once() {
        let dir = std::env::temp_dir().join(format!("wl-named-twice-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("waves")).expect("dir");
        fs::write(dir.join("wavelift.yaml"), "version: 1\n").expect("config");
        fs::write(dir.join("waves/wave-1.yaml"), "name: w\n").expect("wave");
        let paths = [
            dir.clone(),
            dir.join("waves/wave-1.yaml"),
            dir.join("waves/../waves/wave-1.yaml"),
            dir.join("wavelift.yaml"),
        ];
        let mut diags = Diagnostics::new();
        let found = collect_definition_paths(&paths, None, &mut diags);
        assert_eq!(found.waves.len(), 1, "{:?}", found.waves);
        assert_eq!(found.config, Some(dir.join("wavelift.yaml")));
        assert!(diags.is_empty(), "{diags:?}");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
