//! `wavelift`: the migration factory orchestrator's command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
