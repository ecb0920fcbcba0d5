//! Tests of the CMF intake form import.
//!
//! Data-driven: every `tests/cmf/NAME.csv` is imported with the same options and its
//! diagnostics compared with `NAME.expected`, one `FILE:LINE:COL: SEVERITY: MESSAGE` per
//! line. A form without errors also has a folder `NAME/` holding exactly the files the
//! import generates (the wave files and `wavelift.yaml`), compared byte for byte. A form
//! with errors must expect at least one and generate nothing. Run with `BLESS=1` to write
//! the expected files anew (then read every line before committing it).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use waves::cmf::{self, Import, ImportOptions};
use waves::model::{EngineKind, OsFamily};
use waves::source::{CONFIG_FILE_NAME, SourceFile};
use waves::units::Dur;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmf")
}

fn options() -> ImportOptions {
    ImportOptions {
        first_window: jiff::civil::date(2027, 1, 9).at(22, 0, 0, 0),
        timezone: "Europe/Rome".to_owned(),
        window_duration: Dur::from_seconds(8 * 3600),
        cadence: Dur::from_days(7),
        engine: EngineKind::Mgn,
    }
}

fn import_bytes(name: &str, bytes: &[u8], options: &ImportOptions) -> Import {
    let name: Arc<str> = Arc::from(name);
    cmf::import_cmf_bytes(&name, bytes, options)
}

fn rendered(import: &Import) -> Vec<String> {
    import
        .diagnostics
        .clone()
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The generated files by name: the wave files and the suggested configuration.
fn generated(import: &Import) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = import
        .waves
        .iter()
        .map(|w| (w.file_name.clone(), w.text.clone()))
        .collect();
    if !import.waves.is_empty() {
        files.insert(
            CONFIG_FILE_NAME.to_owned(),
            cmf::suggested_config(import, &options()),
        );
    }
    files
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn bless(case: &Path, diagnostics: &[String], files: &BTreeMap<String, String>) -> Option<String> {
    let expected_file = case.with_extension("expected");
    let output_dir = case.with_extension("");
    let mut text = diagnostics.join("\n");
    text.push('\n');
    let mut result = fs::write(&expected_file, text);
    if output_dir.is_dir() {
        result = result.and(fs::remove_dir_all(&output_dir));
    }
    if !files.is_empty() {
        result = result.and(fs::create_dir_all(&output_dir));
        for (name, text) in files {
            result = result.and(fs::write(output_dir.join(name), text));
        }
    }
    result
        .err()
        .map(|err| format!("{}: cannot bless: {err}", case.display()))
}

/// Imports one form and compares its diagnostics and files; returns the differences.
fn check(case: &Path) -> Option<String> {
    let name = case
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let bytes = fs::read(case).unwrap_or_default();
    let import = import_bytes(&name, &bytes, &options());
    let actual = rendered(&import);
    let files = generated(&import);
    if std::env::var_os("BLESS").is_some() {
        return bless(case, &actual, &files);
    }
    let mut problems = Vec::new();
    let expected: Vec<String> = fs::read_to_string(case.with_extension("expected"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if actual != expected {
        let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
        let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
        problems.push(format!(
            "diagnostics differ\n  missing:\n    {}\n  unexpected:\n    {}",
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
        ));
    }
    let has_errors = import.diagnostics.has_errors();
    if has_errors && !actual.iter().any(|l| l.contains(": error: ")) {
        problems.push("errors are counted but none is rendered".to_owned());
    }
    if has_errors && !import.waves.is_empty() {
        problems.push("a form with errors generated wave files".to_owned());
    }
    let wanted = read_dir_files(&case.with_extension(""));
    if !has_errors && wanted.is_empty() {
        problems.push("a form without errors needs its expected output folder".to_owned());
    }
    for (file, text) in &files {
        match wanted.get(file) {
            None => problems.push(format!("generated {file}, which is not expected")),
            Some(expected) if expected != text => problems.push(format!(
                "{file} differs:\n--- expected\n{expected}\n--- generated\n{text}"
            )),
            Some(_) => {}
        }
    }
    for file in wanted.keys().filter(|f| !files.contains_key(*f)) {
        problems.push(format!("expected {file}, which was not generated"));
    }
    (!problems.is_empty()).then(|| format!("{}:\n{}", case.display(), problems.join("\n")))
}

#[test]
fn every_form_gives_exactly_its_expected_diagnostics_and_files() {
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    cases.retain(|p| p.extension().is_some_and(|e| e == "csv"));
    cases.sort();
    assert!(cases.len() >= 10, "the cases are missing: {cases:?}");
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Loads generated files as `wavelift validate` would.
fn load(import: &Import) -> waves::Loaded {
    let config = SourceFile {
        name: Arc::from(CONFIG_FILE_NAME),
        text: cmf::suggested_config(import, &options()),
    };
    let sources: Vec<SourceFile> = import
        .waves
        .iter()
        .map(|w| SourceFile {
            name: Arc::from(w.file_name.as_str()),
            text: w.text.clone(),
        })
        .collect();
    waves::load_sources(Some(&config), PathBuf::new(), &sources)
}

#[test]
fn the_example_form_imports_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cmf/intake.csv");
    let bytes = fs::read(&path).unwrap_or_default();
    assert!(!bytes.is_empty(), "cannot read {}", path.display());
    let import = import_bytes("examples/cmf/intake.csv", &bytes, &options());
    assert_eq!(
        import.diagnostics.error_count(),
        0,
        "{:?}",
        rendered(&import)
    );
    let names: Vec<&str> = import.waves.iter().map(|w| w.wave.as_str()).collect();
    assert_eq!(names, ["wave-1", "wave-2", "wave-3"]);
    assert_eq!(import.skipped.len(), 1);
    assert_eq!(import.skipped[0].server, "intra-fax-01");
    assert_eq!(import.skipped[0].r_type, "Retire");
    assert_eq!(import.aws_region.as_deref(), Some("eu-west-1"));
    let loaded = load(&import);
    assert!(
        !loaded.diagnostics.has_errors(),
        "{:?}",
        loaded.diagnostics.into_sorted()
    );
    let definitions = &loaded.definitions;
    assert_eq!(definitions.waves.len(), 3);
    let servers: usize = definitions.waves.iter().map(|w| w.server_count()).sum();
    assert_eq!(servers, 11, "12 rows, one of them retired");
    let families: Vec<OsFamily> = definitions
        .waves
        .iter()
        .flat_map(|w| w.servers().map(|(_, s)| s.os.family))
        .collect();
    assert!(families.contains(&OsFamily::Linux) && families.contains(&OsFamily::Windows));
    // Windows are a week apart, from the first window on.
    let starts: Vec<String> = definitions
        .waves
        .iter()
        .map(|w| {
            w.window
                .interval
                .start
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .collect();
    assert_eq!(
        starts,
        [
            "2027-01-09 22:00 CET",
            "2027-01-16 22:00 CET",
            "2027-01-23 22:00 CET"
        ]
    );
    let (app, server) = definitions.waves[0]
        .servers()
        .next()
        .map(|(a, s)| (a.name.value.clone(), s.clone()))
        .unwrap_or_else(|| panic!("wave-1 has no server"));
    assert_eq!(app, "hr-payroll");
    assert_eq!(server.name.value, "hr-web-01");
    assert_eq!(
        server.tags.get("cost_center").map(String::as_str),
        Some("CC-1001")
    );
    assert_eq!(server.tags.get("tier").map(String::as_str), Some("web"));
    let cutover = &server.blueprints.cutover;
    assert_eq!(cutover.subnet.as_deref(), Some("subnet-0a1b2c3d"));
    assert_eq!(cutover.security_groups, ["sg-0a1b2c3d", "sg-1b2c3d4e"]);
    assert_eq!(
        server.blueprints.test.subnet.as_deref(),
        Some("subnet-1a2b3c4d")
    );
    assert_eq!(
        cutover.options.get("aws_account_id"),
        Some(&serde_json::Value::String("111122223333".to_owned())),
        "an account ID stays text, with its leading digits"
    );
    assert_eq!(
        cutover.tags.get("Application").map(String::as_str),
        Some("HR Payroll")
    );
    // private_ip is the new instance's address at cutover; the server is reached by name.
    assert_eq!(
        server.fqdn.as_ref().map(|f| f.value.as_str()),
        Some("hr-web-01.corp.example.com")
    );
    assert!(
        server.ip.is_none(),
        "private_ip is not the server's address"
    );
    assert_eq!(
        cutover.options.get("private_ip"),
        Some(&serde_json::Value::String("10.10.1.11".to_owned()))
    );
    assert_eq!(server.blueprints.test.options.get("private_ip"), None);
}

#[test]
fn private_ip_is_the_new_instance_address_once_per_form() {
    let text = format!(
        "{HEADER},private_ip\n\
         w,a,s1,linux,s1.example.com,Rehost,eu-west-1,fe80::1\n\
         w,a,s2,linux,s2.example.com,Rehost,eu-west-1,FE80:0::1\n\
         w,a,s3,linux,,Rehost,eu-west-1,10.0.0.3\n"
    );
    let import = cmf::import_cmf(&Arc::from("targets.csv"), &text, &options());
    assert!(
        has_error(
            &import,
            "private_ip: `fe80::1` is already the address of the new instance of `s1` (line 2)"
        ),
        "{:?}",
        rendered(&import)
    );
    assert!(
        has_error(
            &import,
            "server_fqdn is empty: server `s3` must be reachable by its host name"
        ),
        "{:?}",
        rendered(&import)
    );
    let located: Vec<String> = rendered(&import)
        .into_iter()
        .filter(|l| l.contains(": error: "))
        .map(|l| l.split(": error: ").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(located, ["targets.csv:3:8", "targets.csv:4:5"]);
}

/// Values that YAML would type or break on come back from the loader exactly as written.
#[test]
fn awkward_values_come_back_exactly() {
    let awkward = [
        "yes",
        "No",
        "null",
        "~",
        "true",
        "inf",
        "NaN",
        "0123",
        "1e3",
        "0x1F",
        "a: b",
        "a #b",
        "#x",
        "-x",
        "- x",
        "[x]",
        "{x}",
        "*x",
        "&x",
        "!x",
        "%x",
        "@x",
        "`x`",
        "'x'",
        "\"x\"",
        "a\\b",
        "x,y",
        "tab\there",
        "ünïcödé",
        "日本語",
        "emoji 🚀",
        "bell\u{7}",
        "del\u{7f}",
        "nel\u{85}x",
        "ls\u{2028}x",
        "bom\u{feff}",
        "---",
        "...",
        "<<",
        "?x",
        "|x",
        ">x",
    ];
    let mut csv = String::from(
        "wave_name,app_name,server_name,server_os_family,server_os_version,server_fqdn,r_type,\
         iamRole,note\n",
    );
    for (i, value) in awkward.iter().enumerate() {
        let cell = format!("\"{}\"", value.replace('"', "\"\""));
        csv.push_str(&format!(
            "w,a,s{i},linux,{cell},s{i}.example.com,Rehost,{cell},{cell}\n"
        ));
    }
    let options = ImportOptions {
        engine: EngineKind::Sim,
        ..options()
    };
    let import = cmf::import_cmf(&Arc::from("awkward.csv"), &csv, &options);
    // `<<` is refused as a tag key only; as a value it is fine.
    assert!(!import.diagnostics.has_errors(), "{:?}", rendered(&import));
    let config = SourceFile {
        name: Arc::from(CONFIG_FILE_NAME),
        text: cmf::suggested_config(&import, &options),
    };
    let sources: Vec<SourceFile> = import
        .waves
        .iter()
        .map(|w| SourceFile {
            name: Arc::from(w.file_name.as_str()),
            text: w.text.clone(),
        })
        .collect();
    let loaded = waves::load_sources(Some(&config), PathBuf::new(), &sources);
    assert!(!loaded.diagnostics.has_errors());
    let servers: Vec<_> = loaded
        .definitions
        .waves
        .iter()
        .flat_map(|w| w.servers().map(|(_, s)| s.clone()))
        .collect();
    assert_eq!(servers.len(), awkward.len());
    for (i, value) in awkward.iter().enumerate() {
        let server = servers
            .iter()
            .find(|s| s.name.value == format!("s{i}"))
            .unwrap_or_else(|| panic!("server s{i} is missing"));
        assert_eq!(server.os.version.as_deref(), Some(*value), "os version");
        assert_eq!(
            server.tags.get("note").map(String::as_str),
            Some(*value),
            "tag"
        );
        assert_eq!(
            server
                .blueprints
                .cutover
                .options
                .get("iam_instance_profile"),
            Some(&serde_json::Value::String((*value).to_owned())),
            "option"
        );
    }
}

fn has_error(import: &Import, fragment: &str) -> bool {
    import
        .diagnostics
        .iter()
        .any(|d| d.severity == waves::Severity::Error && d.message.contains(fragment))
}

const HEADER: &str =
    "wave_name,app_name,server_name,server_os_family,server_fqdn,r_type,aws_region";

#[test]
fn hostile_inputs_give_diagnostics_not_panics() {
    // Binary junk: every byte value, NULs included.
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect();
    let import = import_bytes("junk.csv", &junk, &options());
    assert!(has_error(&import, "binary file"), "{:?}", rendered(&import));
    assert!(import.waves.is_empty());

    // Over the size limit, as the command reads it: the limit and one byte.
    let huge = vec![b'a'; cmf::MAX_FORM_BYTES + 1];
    let import = import_bytes("huge.csv", &huge, &options());
    assert!(
        has_error(&import, "the form is larger than 32 MiB"),
        "{:?}",
        rendered(&import)
    );

    // Junk without NULs, not UTF-8.
    let latin1: Vec<u8> = junk.iter().map(|b| b.max(&1) | 0x80).collect();
    let import = import_bytes("latin1.csv", &latin1, &options());
    assert!(
        has_error(&import, "not valid UTF-8"),
        "{:?}",
        rendered(&import)
    );

    // A 1 MB cell: refused with its size, the value itself not echoed.
    let big = "x".repeat(1024 * 1024);
    let text = format!("{HEADER}\nw,a,{big},linux,s.example.com,Rehost,eu-west-1\n");
    let import = cmf::import_cmf(&Arc::from("big.csv"), &text, &options());
    assert!(
        has_error(&import, "the cell holds 1048576 characters"),
        "{:?}",
        rendered(&import)
    );
    assert!(import.diagnostics.iter().all(|d| d.message.len() < 300));

    // A 1 MB quoted cell that swallows the rest of the form.
    let text = format!("{HEADER}\nw,a,\"{big}");
    let import = cmf::import_cmf(&Arc::from("open-quote.csv"), &text, &options());
    assert!(import.diagnostics.has_errors() && import.waves.is_empty());

    // A 1 MB header cell.
    let text = format!("{HEADER},{big}\nw,a,s,linux,s.example.com,Rehost,eu-west-1,x\n");
    let import = cmf::import_cmf(&Arc::from("big-header.csv"), &text, &options());
    assert!(
        has_error(&import, "longer than 128 characters"),
        "{:?}",
        rendered(&import)
    );

    // A row of 10,000 columns.
    let wide = vec!["x"; 10_000].join(",");
    let text = format!("{HEADER}\n{wide}\n");
    let import = cmf::import_cmf(&Arc::from("wide.csv"), &text, &options());
    assert!(
        has_error(&import, "the row has 10000 fields but the header has 7"),
        "{:?}",
        rendered(&import)
    );

    // A header of 10,000 columns: they all become tags, each listed once.
    let names: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let values = vec!["v"; 10_000].join(",");
    let text = format!(
        "{HEADER},{}\nw,a,s,linux,s.example.com,Rehost,eu-west-1,{values}\n",
        names.join(",")
    );
    let import = cmf::import_cmf(&Arc::from("wide-header.csv"), &text, &options());
    assert!(
        !import.diagnostics.has_errors(),
        "{:?}",
        rendered(&import).first()
    );
    assert_eq!(import.waves.len(), 1);
}

#[test]
fn options_are_checked() {
    let text = format!("{HEADER}\nw,a,s,linux,s.example.com,Rehost,eu-west-1\n");
    let name: Arc<str> = Arc::from("options.csv");
    let local = ImportOptions {
        engine: EngineKind::Local,
        ..options()
    };
    assert!(has_error(
        &cmf::import_cmf(&name, &text, &local),
        "the local engine replicates the disks listed"
    ));
    let zone = ImportOptions {
        timezone: "Europe/Rom".to_owned(),
        ..options()
    };
    assert!(has_error(
        &cmf::import_cmf(&name, &text, &zone),
        "unknown time zone `Europe/Rom`; did you mean `Europe/Rome`?"
    ));
    // 02:30 on the last Sunday of March does not exist in Rome.
    let gap = ImportOptions {
        first_window: jiff::civil::date(2027, 3, 28).at(2, 30, 0, 0),
        ..options()
    };
    assert!(has_error(
        &cmf::import_cmf(&name, &text, &gap),
        "does not exist in Europe/Rome"
    ));
    let sim = ImportOptions {
        engine: EngineKind::Sim,
        ..options()
    };
    let import = cmf::import_cmf(&name, &text, &sim);
    assert!(!import.diagnostics.has_errors());
    assert_eq!(
        cmf::suggested_config(&import, &sim),
        "# Wavelift configuration suggested by `wavelift import cmf`.\n\
         # Database, reports, CMDB and sites keep their built-in defaults: review them before \
         the first run.\n\
         version: 1\nengines:\n  default: sim\n"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Free text that CSV and YAML both have opinions about.
    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ;=.:#'\\-]{0,24}"
    }

    /// A cell, quoted so that any text stays one cell.
    fn cell(strategy: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        strategy.prop_map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
    }

    /// One row of the fuzz header: mostly plausible, sometimes anything.
    fn row() -> impl Strategy<Value = String> {
        let name = || prop_oneof![12 => "[A-Za-z][A-Za-z0-9 _.-]{0,12}", 1 => text()];
        (
            (name(), name(), name()),
            prop_oneof![6 => "linux", 6 => "Windows", 1 => text()],
            prop_oneof![12 => "[a-z]{1,8}\\.example\\.com", 1 => text()],
            prop_oneof![12 => Just("Rehost".to_owned()), 1 => text()],
            prop_oneof![6 => "eu-west-1", 6 => "us-east-2", 1 => text()],
            prop_oneof![
                6 => "",
                6 => "[a-z]{1,4}=[a-z0-9 ]{0,6}(;[a-z]{1,4}=[a-z]{0,4}){0,2};?",
                1 => text()
            ],
            prop_oneof![6 => "", 6 => "10\\.0\\.[0-9]{1,2}\\.[0-9]{1,2}", 1 => text()],
            prop_oneof![6 => "", 6 => "subnet-[0-9a-f]{8}", 1 => text()],
        )
            .prop_flat_map(|((w, a, s), os, fqdn, r, region, tags, ip, subnet)| {
                (
                    cell(Just(w)),
                    cell(Just(a)),
                    cell(Just(s)),
                    cell(Just(os)),
                    cell(Just(fqdn)),
                    cell(Just(r)),
                    cell(Just(region)),
                    cell(Just(tags)),
                    cell(Just(ip)),
                    cell(Just(subnet)),
                )
            })
            .prop_map(|(a, b, c, d, e, f, g, h, i, j)| [a, b, c, d, e, f, g, h, i, j].join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the cells hold, the import never panics, and when it reports no error
        /// what it generated loads back without one.
        #[test]
        fn any_rows_import_without_panic(rows in proptest::collection::vec(row(), 1..4)) {
            let text = format!("{HEADER},tags,private_ip,subnet_IDs\n{}", rows.join("\n"));
            let options = ImportOptions { engine: EngineKind::Sim, ..options() };
            let import = cmf::import_cmf(&Arc::from("fuzz.csv"), &text, &options);
            if import.diagnostics.has_errors() {
                prop_assert!(import.waves.is_empty());
            } else {
                prop_assert!(!import.waves.is_empty());
                let config = SourceFile {
                    name: Arc::from(CONFIG_FILE_NAME),
                    text: cmf::suggested_config(&import, &options),
                };
                let sources: Vec<SourceFile> = import.waves.iter().map(|w| SourceFile {
                    name: Arc::from(w.file_name.as_str()),
                    text: w.text.clone(),
                }).collect();
                let loaded = waves::load_sources(Some(&config), PathBuf::new(), &sources);
                prop_assert!(!loaded.diagnostics.has_errors());
            }
        }

        #[test]
        fn any_bytes_import_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let import = import_bytes("bytes.csv", &bytes, &options());
            prop_assert!(import.diagnostics.has_errors() || !import.waves.is_empty());
        }
    }
}
