//! `wavelift`: the migration factory orchestrator's command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    orchestrator::cli::main()
}
