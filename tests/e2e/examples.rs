//! Every example in examples/ is checked here, so none of them can rot.

use std::fs;

use wavelift_tests::{wavelift, workspace_root};

#[test]
fn every_example_folder_with_waves_validates() {
    let examples = workspace_root().join("examples");
    let mut checked = Vec::new();
    for entry in fs::read_dir(&examples).into_iter().flatten().flatten() {
        let path = entry.path();
        if !path.is_dir() || !path.join("wavelift.yaml").exists() {
            continue;
        }
        let run = wavelift(&examples, &["validate", &path.to_string_lossy()]);
        assert_eq!(
            run.code,
            0,
            "{} must validate:\n{}",
            path.display(),
            run.describe()
        );
        assert!(run.stdout.starts_with("valid: "), "{}", run.describe());
        let plan = wavelift(&examples, &["plan", &path.to_string_lossy()]);
        assert_eq!(
            plan.code,
            0,
            "{} must plan without errors:\n{}",
            path.display(),
            plan.describe()
        );
        checked.push(path);
    }
    assert!(
        checked.iter().any(|p| p.ends_with("quickstart")),
        "the quickstart example was not found among {checked:?}"
    );
}

/// `wavelift plan examples/quickstart --format json`, run in the workspace, read.
pub(crate) fn quickstart_plan() -> serde_json::Value {
    let run = wavelift(
        &workspace_root(),
        &["plan", "examples/quickstart", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{}", run.describe());
    serde_json::from_str(&run.stdout).unwrap_or_default()
}

#[test]
fn the_quickstart_has_the_waves_the_readme_promises() {
    let plan = quickstart_plan();
    let waves = plan["waves"].as_array().map_or(0, Vec::len);
    let applications: usize = plan["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["applications"].as_array().map_or(0, Vec::len))
        .sum();
    let servers: u64 = plan["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["servers"].as_u64())
        .sum();
    assert!(
        waves >= 2 && applications >= 3 && servers >= 8,
        "{waves} waves, {applications} applications, {servers} servers"
    );
}

/// README's first command runs the quickstart from the wall clock (`run --time-warp`
/// starts now and jumps ahead), so every task's phase must still lie ahead. This fails
/// three months before the first one begins, not on the day README stops working.
#[test]
fn the_quickstart_still_lies_ahead_of_the_wall_clock() {
    let plan = quickstart_plan();
    let earliest: Vec<jiff::Timestamp> = plan["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["earliest"].as_str()?.parse().ok())
        .collect();
    assert!(
        !earliest.is_empty(),
        "the plan lists its tasks' earliest times"
    );
    let first = earliest.iter().min().copied().unwrap_or_default();
    let margin = jiff::SignedDuration::from_hours(24 * 90);
    let now = jiff::Timestamp::now();
    assert!(
        first.duration_since(now) > margin,
        "the quickstart's first task may start at {first}, less than 90 days after now \
         ({now}): move the windows in examples/quickstart/waves (and the dates the docs \
         show for them) ahead by whole years that keep their weekdays"
    );
}

/// docs/estimate.md works its example through by hand: the output it shows is what
/// `wavelift estimate examples/estimate` prints.
#[test]
fn the_estimate_page_shows_what_its_example_prints() {
    let root = workspace_root();
    let page = fs::read_to_string(root.join("docs/estimate.md")).unwrap_or_default();
    let command = "$ wavelift estimate examples/estimate\n";
    let shown = page
        .split_once(command)
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block.trim_end().to_owned());
    assert!(
        shown.is_some(),
        "docs/estimate.md shows `{}`",
        command.trim()
    );
    let run = wavelift(&root, &["estimate", "examples/estimate"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(shown.unwrap_or_default(), run.stdout.trim_end());
}
