//! `wavelift`: the migration factory orchestrator's command line.

mod cli;
mod executor;
mod scheduler;
mod store;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
