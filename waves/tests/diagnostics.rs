//! Data-driven diagnostics tests: every case in `tests/invalid/` is a wave file (or a
//! folder with a `wavelift.yaml` and wave files) beside a `.expected` file that lists
//! the diagnostics it must produce, one `FILE:LINE:COL: SEVERITY: MESSAGE` per line.
//! One helper, [`check`], runs them all; run with `BLESS=1` to write the files anew
//! (then read every line before committing it).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use waves::Diagnostics;
use waves::source::{self, CONFIG_FILE_NAME, SourceFile};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid")
}

/// Reads a case as the loader would, naming files relative to the cases folder.
fn sources(case: &Path, diags: &mut Diagnostics) -> (Option<SourceFile>, Vec<SourceFile>) {
    let root = cases_dir();
    let mut files: Vec<PathBuf> = if case.is_dir() {
        fs::read_dir(case)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![case.to_path_buf()]
    };
    files.sort();
    let mut config = None;
    let mut waves = Vec::new();
    for file in files {
        let name: Arc<str> = Arc::from(
            file.strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_ref(),
        );
        let bytes = fs::read(&file).unwrap_or_default();
        let Some(source) = source::source_from_bytes(name, bytes, diags) else {
            continue;
        };
        if file.file_name().and_then(|n| n.to_str()) == Some(CONFIG_FILE_NAME) {
            config = Some(source);
        } else {
            waves.push(source);
        }
    }
    (config, waves)
}

fn rendered(case: &Path) -> Vec<String> {
    let mut diags = Diagnostics::new();
    let (config, waves) = sources(case, &mut diags);
    let loaded = waves::load_sources(config.as_ref(), PathBuf::new(), &waves);
    diags.extend(loaded.diagnostics);
    diags
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn expected_path(case: &Path) -> PathBuf {
    let stem = case.file_stem().unwrap_or_default().to_string_lossy();
    cases_dir().join(format!("{stem}.expected"))
}

/// Compares one case with its expected diagnostics; returns the differences.
fn check(case: &Path) -> Option<String> {
    let actual = rendered(case);
    let expected_file = expected_path(case);
    if std::env::var_os("BLESS").is_some() {
        let mut text = actual.join("\n");
        text.push('\n');
        if let Err(err) = fs::write(&expected_file, text) {
            return Some(format!("cannot write {}: {err}", expected_file.display()));
        }
        return None;
    }
    let expected: Vec<String> = fs::read_to_string(&expected_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if expected.is_empty() {
        return Some(format!(
            "{}: no expected diagnostics in {} (an invalid case must expect at least one)",
            case.display(),
            expected_file.display()
        ));
    }
    if actual == expected {
        return None;
    }
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    Some(format!(
        "{}:\n  missing:\n    {}\n  unexpected:\n    {}",
        case.display(),
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    "),
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
    ))
}

#[test]
fn every_invalid_case_reports_exactly_its_expected_diagnostics() {
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    cases.retain(|p| p.extension().is_none_or(|e| e != "expected"));
    cases.sort();
    assert!(
        cases.len() >= 20,
        "the cases folder lost its cases: {cases:?}"
    );
    let failures: Vec<String> = cases.iter().filter_map(|case| check(case)).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    for case in &cases {
        let has_error = rendered(case).iter().any(|l| l.contains(": error: "));
        assert!(has_error, "{} must produce an error", case.display());
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let mut diags = Diagnostics::new();
    let big = vec![b'#'; (source::MAX_FILE_BYTES + 1) as usize];
    let source = source::source_from_bytes(Arc::from("big.yaml"), big, &mut diags);
    assert!(source.is_none());
    let messages: Vec<String> = diags
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        messages,
        ["big.yaml:1:1: error: input is over the limit of 32 MiB"]
    );
}

#[test]
fn a_file_of_endless_mistakes_reports_a_bounded_number() {
    let text = "---\n".repeat(50_000);
    let source = SourceFile {
        name: Arc::from("many.yaml"),
        text,
    };
    let loaded = waves::load_sources(None, PathBuf::new(), &[source]);
    let lines: Vec<String> = loaded
        .diagnostics
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(lines.len(), waves::diag::MAX_PER_FILE + 1);
    assert_eq!(
        lines[0],
        "many.yaml:2:1: error: empty document: expected a wave"
    );
    assert!(
        lines.contains(&"many.yaml:1002:1: error: more than 1000 problems in this file; the rest are not shown".to_owned()),
        "{:?}",
        &lines[990..]
    );
}
