//! The workspace denies `unsafe`; one module may allow it (the agent's mapped image
//! files). This fails when another file of the workspace allows it too. Reads the
//! workspace's sources only; starts nothing.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "node_modules" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_mapping_module_allows_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 50, "the workspace's sources were not found");
    // Any mention of the lint in a source (`allow`, `expect`, in a list) counts.
    let needle = ["unsafe", "_code"].concat();
    let allowing: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| text.contains(&needle))
                && !f.ends_with("tests/unsafe_code.rs")
        })
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert_eq!(allowing, vec!["replication/src/local/mapped.rs".to_owned()]);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    assert!(
        manifest.contains("unsafe_code = \"deny\""),
        "the workspace denies unsafe code"
    );
    // Every member takes the workspace's lints.
    let members: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("Cargo.toml"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    assert!(members.len() >= 5, "the members' manifests were not found");
    for member in members {
        let text = std::fs::read_to_string(&member).unwrap_or_default();
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{} does not take the workspace's lints",
            member.display()
        );
    }
}
