//! Helpers shared by the end-to-end tests: run the real `wavelift` binary and capture
//! what a user would see.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root, where README.md and examples/ are.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `wavelift` binary cargo built beside this test (`cargo test --workspace` builds
/// every binary before running any test).
pub fn wavelift_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/e2e-HASH -> target/debug/wavelift
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let binary = dir.join("wavelift");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        binary.display()
    );
    binary
}

/// What one run printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `wavelift ARGS` in `dir`.
pub fn wavelift(dir: &Path, args: &[&str]) -> Run {
    let output: Output = Command::new(wavelift_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
