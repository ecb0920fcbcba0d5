//! `wavelift import cmf` (being written).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CmfArgs {
    /// The intake form
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
    /// Folder for the wave files
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: &CmfArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "import of {} into {} is not written yet",
        args.file.display(),
        args.out.display()
    )
}
