//! The command line as a user meets it: exit codes, diagnostics, the plan's formats.

use std::fs;
use std::process::Command;

use wavelift_tests::{wavelift, workspace_root};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wavelift-e2e-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
    dir
}

#[test]
fn validate_reports_every_error_with_its_place_and_exits_1() {
    let dir = scratch("invalid");
    fs::write(
        dir.join("wave.yaml"),
        "name: wave-1\nwindw: {}\nwindow: { start: 2027-12-11 22:00, duration: 6, timezone: UTC }\napplications: []\n",
    )
    .unwrap_or_default();
    let run = wavelift(&dir, &["validate", "wave.yaml"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "wave.yaml:2:1: error: unknown field `windw` in wave; did you mean `window`?",
            "wave.yaml:3:46: error: window duration: duration `6` has no unit: write it like 30m, 6h or 1w (units s, m, h, d, w)",
            "wave.yaml:4:15: warning: the wave has no applications",
            "2 errors, 1 warning",
        ],
        "{}",
        run.describe()
    );
    let json = wavelift(&dir, &["validate", "wave.yaml", "--format", "json"]);
    assert_eq!(json.code, 1);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_default();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 2);
    assert_eq!(report["diagnostics"][0]["line"], 2);
    assert_eq!(report["diagnostics"][0]["col"], 1);
}

#[test]
fn usage_errors_exit_2_and_missing_paths_exit_1() {
    let root = workspace_root();
    let run = wavelift(&root, &["validate"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    let run = wavelift(&root, &["plan", "examples/quickstart", "--format", "pdf"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    let run = wavelift(&root, &["validate", "no/such/folder"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stderr
            .starts_with("no/such/folder:1:1: error: cannot read: "),
        "{}",
        run.describe()
    );
}

#[test]
fn plan_json_lists_every_task_with_ids_and_the_dot_output_renders() {
    let root = workspace_root();
    let plan = crate::examples::quickstart_plan();
    assert_eq!(plan["format"], "wavelift-plan");
    let tasks = plan["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 8 * 6);
    let cutover = tasks
        .iter()
        .find(|t| t["id"] == "payroll-db-01/cutover")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        cutover["depends_on"],
        serde_json::json!(["payroll-db-01/boot_test"])
    );
    assert_eq!(cutover["gates"], serde_json::json!(["payroll/ready"]));
    assert_eq!(cutover["earliest"], "2032-12-11T21:00:00Z");
    let gate = plan["gates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["id"] == "payroll/ready")
        .cloned()
        .unwrap_or_default();
    let waits: Vec<&str> = gate["waits_for"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        waits.contains(&"payroll-app-01/boot_test") && waits.contains(&"dir-02/cutover"),
        "{waits:?}"
    );

    // --wave narrows what is shown, not what is planned: wave-2's gate still waits for
    // the cutover of `directory` in wave-1.
    let run = wavelift(
        &root,
        &[
            "plan",
            "examples/quickstart",
            "--wave",
            "wave-2",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.describe());
    let narrowed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_eq!(narrowed["waves"].as_array().map(Vec::len), Some(1));
    assert_eq!(narrowed["tasks"].as_array().map(Vec::len), Some(4 * 6));
    let webshop_waits = narrowed["gates"][0]["waits_for"].to_string();
    assert!(webshop_waits.contains("dir-01/cutover"), "{webshop_waits}");

    let dot = wavelift(&root, &["plan", "examples/quickstart", "--format", "dot"]);
    assert_eq!(dot.code, 0, "{}", dot.describe());
    let dir = scratch("dot");
    let file = dir.join("plan.dot");
    fs::write(&file, &dot.stdout).unwrap_or_default();
    let rendered = Command::new("dot")
        .arg("-Tsvg")
        .arg(&file)
        .output()
        .unwrap_or_else(|err| panic!("Graphviz `dot` is needed (apt-get install graphviz): {err}"));
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(String::from_utf8_lossy(&rendered.stdout).contains("<svg"));
}

#[test]
fn plan_flags_a_window_too_short_for_its_cutovers_and_exits_1() {
    let dir = scratch("short-window");
    fs::write(
        dir.join("wave.yaml"),
        "name: tight\nwindow: { start: 2027-12-11 22:00, duration: 1h, timezone: UTC }\ndefaults:\n  os: { family: linux }\n  access: { method: local }\n  tasks: { cutover: { expected_duration: 45m } }\napplications:\n  - name: db\n    servers: [{ name: db-1, disks: [{ device: /dev/sda, size: 10GiB }] }]\n  - name: app\n    depends_on: [db]\n    servers: [{ name: app-1, disks: [{ device: /dev/sdb, size: 10GiB }] }]\n",
    )
    .unwrap_or_default();
    let run = wavelift(&dir, &["plan", "wave.yaml"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stdout.contains("error: wave.yaml:2:46: tight: the window (1h 00m) is shorter than the expected cutover chain db -> app (1h 30m)"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("split the wave (at window.duration)"),
        "{}",
        run.describe()
    );
    let estimate = wavelift(&dir, &["estimate", "wave.yaml"]);
    assert_eq!(estimate.code, 1, "{}", estimate.describe());
    assert!(
        estimate.stdout.contains("it does not fit"),
        "{}",
        estimate.describe()
    );
    // apply stores no plan that cannot work, unless told to.
    let refused = wavelift(&dir, &["apply", "wave.yaml"]);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stderr.contains(
            "wave.yaml:2:46: plan error: tight: the window (1h 00m) is shorter than the expected cutover chain db -> app (1h 30m)"
        ) && refused.stderr.contains("(at window.duration)")
            && refused.stderr.contains(
                "nothing applied: the plan has errors (above); fix them, or store the definitions as they are with --allow-plan-errors"
            ),
        "{}",
        refused.describe()
    );
    assert!(
        !refused.stdout.contains("applied revision"),
        "{}",
        refused.describe()
    );
    let status = wavelift(&dir, &["status", "--json"]);
    assert!(
        !status.stdout.contains("db-1/cutover"),
        "nothing stored: {}",
        status.describe()
    );
    let allowed = wavelift(&dir, &["apply", "wave.yaml", "--allow-plan-errors"]);
    assert_eq!(allowed.code, 0, "{}", allowed.describe());
    assert!(
        allowed.stdout.contains("applied revision 1"),
        "{}",
        allowed.describe()
    );
}

#[test]
fn estimate_says_whether_replication_finishes_before_the_validate_phase() {
    let root = workspace_root();
    let run = wavelift(&root, &["estimate", "examples/quickstart"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert!(
        run.stdout.contains("replication: in time"),
        "{}",
        run.describe()
    );
    let dir = scratch("slow-link");
    fs::write(
        dir.join("wave.yaml"),
        "name: slow\nwindow: { start: 2027-12-11 22:00, duration: 8h, timezone: UTC }\nreplication: { bandwidth: 10Mbit/s }\ndefaults:\n  os: { family: linux }\n  access: { method: local }\napplications:\n  - name: big\n    servers: [{ name: big-1, change_rate: 1GiB/day, disks: [{ device: /dev/sda, size: 4TiB, used: 3TiB }] }]\n",
    )
    .unwrap_or_default();
    let run = wavelift(&dir, &["estimate", "wave.yaml"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stdout.contains("replication: too late"),
        "{}",
        run.describe()
    );
    let plan = wavelift(&dir, &["plan", "wave.yaml", "--wave", "nope"]);
    assert_eq!(plan.code, 1);
    assert!(
        plan.stderr
            .contains("no wave named `nope`; the waves are: slow"),
        "{}",
        plan.describe()
    );
}

#[test]
fn apply_warns_of_a_wave_whose_window_has_ended_and_stores_it() {
    let dir = scratch("past-window");
    let wave = "name: past\nwindow: { start: 2020-01-04 22:00, duration: 6h, timezone: Europe/Rome }\ndefaults:\n  os: { family: linux }\n  access: { method: local }\napplications:\n  - name: db\n    servers: [{ name: db-1, disks: [{ device: /dev/sda, size: 10GiB }] }]\n";
    fs::write(dir.join("wave.yaml"), wave).unwrap_or_default();
    fs::write(
        dir.join("ahead.yaml"),
        wave.replace("name: past", "name: ahead")
            .replace("2020-01-04", "2046-12-15")
            .replace("db-1", "db-2")
            .replace("/dev/sda", "/dev/sdb")
            .replace("name: db\n", "name: db2\n"),
    )
    .unwrap_or_default();
    // A window three days ahead, whose build phase (21 to 14 days before the window
    // ends) is over.
    let soon = jiff::Zoned::now()
        .in_tz("Europe/Rome")
        .and_then(|now| now.checked_add(jiff::Span::new().days(3)))
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default();
    fs::write(
        dir.join("soon.yaml"),
        wave.replace("name: past", "name: soon")
            .replace("2020-01-04", &soon)
            .replace("db-1", "db-3")
            .replace("/dev/sda", "/dev/sdc")
            .replace("name: db\n", "name: db3\n"),
    )
    .unwrap_or_default();
    let run = wavelift(&dir, &["apply", "wave.yaml", "ahead.yaml", "soon.yaml"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert!(
        run.stderr.contains("soon.yaml:1:1: warning: wave soon: its build phase (")
            && run.stderr.contains(
                "Europe/Rome) has ended: its prereq_check and agent_push tasks would fail as having missed it; move `window: start` later"
            ),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains(
            "wave.yaml:1:1: warning: wave past: its window (Sat 2020-01-04 22:00 to Sun 2020-01-05 04:00 Europe/Rome) has ended: its tasks would fail as having missed their phases; move `window: start` to a date ahead"
        ),
        "{}",
        run.describe()
    );
    assert!(!run.stderr.contains("wave ahead"), "{}", run.describe());
    assert!(run.stdout.contains("+ db-1"), "{}", run.describe());
    // Applied again, the wave under way is not warned of again: its build is behind it.
    let again = wavelift(&dir, &["apply", "wave.yaml", "ahead.yaml", "soon.yaml"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert!(
        !again.stderr.contains("wave soon") && again.stderr.contains("wave past"),
        "{}",
        again.describe()
    );
}

/// Waves applied without the configuration the last revision had are refused, with the
/// ways out; `--builtin-config` replaces it on purpose.
#[test]
fn the_configuration_is_dropped_only_on_purpose() {
    // Starts: the wavelift binary (apply) in a scratch folder with its own state.
    let dir = scratch("builtin-config");
    fs::create_dir_all(dir.join("waves")).unwrap_or_default();
    fs::write(
        dir.join("waves/wave.yaml"),
        "name: w\nwindow: { start: 2031-12-11 22:00, duration: 8h, timezone: UTC }\ndefaults:\n  os: { family: linux }\n  access: { method: local }\napplications:\n  - name: db\n    servers: [{ name: db-1, disks: [{ device: /dev/sda, size: 10GiB }] }]\n",
    )
    .unwrap_or_default();
    fs::write(
        dir.join("wavelift.yaml"),
        "reports:\n  readiness_before: 12h\n",
    )
    .unwrap_or_default();
    let first = wavelift(&dir, &["apply", "."]);
    assert_eq!(first.code, 0, "{}", first.describe());
    let refused = wavelift(&dir, &["apply", "waves"]);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused
            .stderr
            .contains("or give --builtin-config to replace it with the built-in one on purpose"),
        "{}",
        refused.describe()
    );
    let replaced = wavelift(&dir, &["apply", "waves", "--builtin-config"]);
    assert_eq!(replaced.code, 0, "{}", replaced.describe());
    assert!(
        replaced.stdout.contains("applied revision 2"),
        "{}",
        replaced.describe()
    );
    // From then on the built-in one is the last revision's: the waves alone apply.
    let again = wavelift(&dir, &["apply", "waves"]);
    assert_eq!(again.code, 0, "{}", again.describe());
}

/// An import into a folder that holds an earlier import's wave files: those the new form
/// did not write are named, since validate and apply take them with the others.
#[test]
fn an_import_names_the_wave_files_it_did_not_write() {
    // Starts: the wavelift binary (import cmf) on the example intake form, whole, then
    // cut down to its first wave.
    let root = workspace_root();
    let dir = scratch("import-leftovers");
    let form = fs::read_to_string(root.join("examples/cmf/intake.csv")).unwrap_or_default();
    let first_wave: String = form
        .lines()
        .filter(|l| l.starts_with("wave_name,") || l.starts_with("Wave 1,"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(dir.join("whole.csv"), &form).unwrap_or_default();
    fs::write(dir.join("revised.csv"), first_wave).unwrap_or_default();
    let whole = wavelift(&dir, &["import", "cmf", "whole.csv", "--out", "waves"]);
    assert_eq!(whole.code, 0, "{}", whole.describe());
    assert!(!whole.stderr.contains("note: "), "{}", whole.describe());
    let revised = wavelift(
        &dir,
        &["import", "cmf", "revised.csv", "--out", "waves", "--force"],
    );
    assert_eq!(revised.code, 0, "{}", revised.describe());
    assert!(
        revised.stderr.contains(
            "note: waves also holds wave files this form did not write: waves/wave-2.yaml, waves/wave-3.yaml; they are validated and applied with the others"
        ),
        "{}",
        revised.describe()
    );
}

/// Commands of one engine on a project of another say so, instead of asking for the
/// other engine's settings or starting a server no agent will use.
#[test]
fn match_and_replicator_say_when_no_wave_is_theirs() {
    // Starts: the wavelift binary (match, replicator) in copies of the quickstart, on
    // the local engine and on sim; neither reaches MGN nor opens a port.
    let scratch = wavelift_tests::Scratch::new("not-theirs");
    let local = wavelift_tests::quickstart_copy(&scratch.path().join("local"), "local");
    let matched = wavelift(&local, &["match", "."]);
    assert_eq!(matched.code, 0, "{}", matched.describe());
    assert_eq!(
        matched.stdout.trim(),
        "no wave uses the mgn engine: match compares the servers of mgn waves with MGN's source servers"
    );
    let sim = wavelift_tests::quickstart_copy(&scratch.path().join("sim"), "sim");
    let replicator = wavelift(&sim, &["replicator", "."]);
    assert_eq!(replicator.code, 1, "{}", replicator.describe());
    assert!(
        replicator.stderr.contains(
            "no wave uses the local engine: the replicator serves the local engine's agents"
        ),
        "{}",
        replicator.describe()
    );
    assert!(
        !sim.join(".wavelift/staging").exists(),
        "no staging folder made"
    );
}
