//! Helpers shared by the end-to-end tests: run the real `wavelift` binary and capture
//! what a user would see.

use std::fs;
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

/// `wavelift` as a command to run in `dir`. The variables that would point it at a state
/// outside `dir` are removed, so a test never touches the state of the machine it runs on.
pub fn wavelift_command(dir: &Path) -> Command {
    let mut command = Command::new(wavelift_binary());
    command
        .current_dir(dir)
        .env_remove("WAVELIFT_DATABASE_URL")
        .env_remove("WAVELIFT_STATE_DIR")
        .env_remove("WAVELIFT_SMTP_URL");
    command
}

/// Runs `wavelift ARGS` in `dir`.
pub fn wavelift(dir: &Path, args: &[&str]) -> Run {
    let output: Output = wavelift_command(dir)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A folder of its own for one test, under the system's temporary folder. It is removed
/// when the test passes and kept (its path printed) when it fails, to look into.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("wavelift-e2e-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the test's folder is kept: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Copies `from` (a folder) into `to`, recursively, leaving out hidden entries (a
/// `.wavelift` state folder left by someone who ran the example in place).
pub fn copy_folder(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|err| panic!("cannot create {}: {err}", to.display()));
    let entries =
        fs::read_dir(from).unwrap_or_else(|err| panic!("cannot read {}: {err}", from.display()));
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let source = entry.path();
        let target = to.join(entry.file_name());
        if source.is_dir() {
            copy_folder(&source, &target);
        } else {
            fs::copy(&source, &target).unwrap_or_else(|err| {
                panic!(
                    "cannot copy {} to {}: {err}",
                    source.display(),
                    target.display()
                )
            });
        }
    }
}

/// Replaces `from` by `to` in `file`, which must contain `from` exactly once: an edit
/// that silently does nothing would make the test prove nothing.
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} must contain `{from}` exactly once",
        file.display()
    );
    fs::write(file, text.replacen(from, to, 1))
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", file.display()));
}

/// Where the copies of the quickstart put their windows (Saturday nights, a week apart,
/// as in the example), whatever dates the example has today: `run --time-warp` starts
/// from the wall clock and jumps forward, never back, so every phase must lie ahead.
pub const QUICKSTART_WINDOWS: [&str; 2] = ["2046-12-15 22:00", "2046-12-22 22:00"];

/// Sets the `start:` of the window in a wave file (the file's one `  start: ` line).
pub fn set_window_start(file: &Path, start: &str) {
    let text = fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  start: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{} must have one window `  start: ` line",
        file.display()
    );
    edit(file, lines[0], &format!("  start: {start}"));
}

/// A copy of examples/quickstart in `dir`/quickstart with its windows moved to
/// [`QUICKSTART_WINDOWS`] and its engine set to `engine` (`local` as shipped, or `sim`).
/// Returns the copy's folder, which the commands are run in.
pub fn quickstart_copy(dir: &Path, engine: &str) -> PathBuf {
    let copy = dir.join("quickstart");
    copy_folder(&workspace_root().join("examples/quickstart"), &copy);
    let waves = copy.join("waves");
    set_window_start(&waves.join("wave-1.yaml"), QUICKSTART_WINDOWS[0]);
    set_window_start(&waves.join("wave-2.yaml"), QUICKSTART_WINDOWS[1]);
    if engine == "local" {
        // The replication server on a port of its own: copies run side by side.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|err| panic!("no free port: {err}"));
        edit(
            &copy.join("wavelift.yaml"),
            "listen: 127.0.0.1:1500",
            &format!("listen: 127.0.0.1:{port}"),
        );
    } else {
        edit(
            &copy.join("wavelift.yaml"),
            "default: local ",
            &format!("default: {engine} "),
        );
        // The rehearsal engine reads no disk: no images, no writers.
        edit(
            &copy.join("wavelift.yaml"),
            "    prereq_check:\n      # The quickstart's source servers are disk images on this machine: this makes each\n      # (an ext4 filesystem) and starts a writer that changes it while it replicates.\n      prepare: sh {{config_dir}}/lab/source.sh {{name}} {{disks}}\n",
            "",
        );
    }
    copy
}
