//! The binary itself: it starts, names itself and its subcommands. Having an integration
//! test here also makes `cargo test --workspace` build the `wavelift` binary before any
//! test runs, which the end-to-end tests in tests/ rely on.

use std::process::Command;

#[test]
fn the_binary_starts_and_lists_its_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_wavelift"))
        .arg("--help")
        .output()
        .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["validate", "plan", "estimate", "import"] {
        assert!(help.contains(command), "`{command}` missing from:\n{help}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_wavelift"))
        .arg("--version")
        .output()
        .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("wavelift {}", env!("CARGO_PKG_VERSION"))
    );
}
