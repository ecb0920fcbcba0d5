//! No input panics the loader: random YAML-like text and random damage to the
//! quickstart's files must end in diagnostics (with places) or valid definitions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use waves::source::SourceFile;

fn quickstart_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let mut files = Vec::new();
    for name in ["wavelift.yaml", "waves/wave-1.yaml", "waves/wave-2.yaml"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap_or_default();
        assert!(!text.is_empty(), "examples/quickstart/{name} is missing");
        files.push((name.to_owned(), text));
    }
    files
}

/// Loads a configuration and wave texts; checks every diagnostic has a real place.
fn load_and_check(config: &str, waves: &[String]) -> Result<(), TestCaseError> {
    let config = SourceFile {
        name: Arc::from("wavelift.yaml"),
        text: config.to_owned(),
    };
    let sources: Vec<SourceFile> = waves
        .iter()
        .enumerate()
        .map(|(i, text)| SourceFile {
            name: Arc::from(format!("wave-{i}.yaml").as_str()),
            text: text.clone(),
        })
        .collect();
    let loaded = waves::load_sources(Some(&config), PathBuf::new(), &sources);
    for diagnostic in loaded.diagnostics.iter() {
        prop_assert!(
            diagnostic.location.line >= 1 && diagnostic.location.col >= 1,
            "{diagnostic}"
        );
        prop_assert!(!diagnostic.message.is_empty());
    }
    if !loaded.diagnostics.has_errors() {
        // Whatever loads must also plan and estimate.
        let plan = waves::plan::plan(&loaded.definitions);
        prop_assert!(plan.tasks.len().is_multiple_of(6));
    }
    Ok(())
}

fn yaml_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "name",
            "window",
            "start",
            "duration",
            "timezone",
            "applications",
            "servers",
            ":",
            " ",
            "  ",
            "\n",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "&a ",
            "*a",
            "<<: ",
            "!!str ",
            "!x ",
            "\"",
            "'",
            "|\n",
            ">\n",
            "#",
            "~",
            "null",
            "6h",
            "2026-12-12 22:00",
            "UTC",
            "Europe/Rome",
            "10GiB",
            "*/5 * * * *",
            "depends_on",
            "disks",
            "é",
            "\t",
            "---\n",
        ]),
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn random_yaml_like_text_never_panics(config in yaml_like(), wave in yaml_like()) {
        load_and_check(&config, &[wave])?;
    }

    #[test]
    fn damaged_quickstart_files_never_panic(
        target in 0usize..3,
        cuts in prop::collection::vec((any::<prop::sample::Index>(), 0usize..40, yaml_like()), 1..4),
    ) {
        let mut files = quickstart_files();
        let text = &mut files[target].1;
        for (at, length, insert) in cuts {
            let chars: Vec<char> = text.chars().collect();
            let start = at.index(chars.len().max(1)).min(chars.len());
            let end = (start + length).min(chars.len());
            let mut damaged: String = chars[..start].iter().collect();
            damaged.push_str(&insert);
            damaged.extend(&chars[end..]);
            *text = damaged;
        }
        let waves: Vec<String> = files[1..].iter().map(|(_, t)| t.clone()).collect();
        load_and_check(&files[0].1, &waves)?;
    }
}
