//! `wavelift report WAVE --kind readiness [--out FILE.html]`: a report for people, from
//! the store, at the moment `status` speaks of (the run's warped clock if it was warped).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::state::StateArgs;
use super::status::status_now;
use crate::report::Readiness;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Before the window: per application and server, replication, the last boot test,
    /// blockers, approvals pending, and the go/no-go question
    Readiness,
}

pub async fn run(
    state: &StateArgs,
    wave: &str,
    kind: Kind,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let store = state.open_existing().await?;
    let (now, _) = status_now(&store).await?;
    let rendered = match kind {
        Kind::Readiness => Readiness::gather(&store, wave, now).await?.render()?,
    };
    match out {
        None => out!("{}", rendered.text),
        Some(html) => {
            let text = html.with_extension("txt");
            std::fs::write(html, &rendered.html)
                .with_context(|| format!("cannot write {}", html.display()))?;
            std::fs::write(&text, &rendered.text)
                .with_context(|| format!("cannot write {}", text.display()))?;
            outln!(
                "{}: wrote {} (HTML) and {} (plain text)",
                rendered.subject,
                html.display(),
                text.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
