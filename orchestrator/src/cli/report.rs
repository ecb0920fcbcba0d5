//! `wavelift report WAVE --kind readiness [--out FILE.html]`: a report for people, from
//! the store, at the moment `status` speaks of (the run's warped clock if it was warped).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::state::StateArgs;
use super::status::status_now;
use crate::report::{Readiness, Rendered, outbox};
use crate::store::Store;

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
    send: bool,
) -> anyhow::Result<ExitCode> {
    let store = state.open_existing().await?;
    let (now, _) = status_now(&store).await?;
    let rendered = match kind {
        Kind::Readiness => Readiness::gather(&store, wave, now).await?.render()?,
    };
    if send {
        let path = to_outbox(&store, wave, kind, &rendered).await?;
        outln!(
            "{}: written to the outbox as {}",
            rendered.subject,
            path.display()
        );
    }
    match out {
        None if send => {}
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

/// Writes the report as an email to the configuration's outbox, to the wave's `notify`
/// list and its applications' owners.
async fn to_outbox(
    store: &Store,
    wave: &str,
    kind: Kind,
    rendered: &Rendered,
) -> anyhow::Result<std::path::PathBuf> {
    let Some((revision, sources)) = store.current_sources().await? else {
        anyhow::bail!("nothing applied yet: wavelift apply PATH");
    };
    let loaded = sources.load();
    if loaded.diagnostics.has_errors() {
        anyhow::bail!("revision {revision} in the store no longer validates with this Wavelift");
    }
    let config = &loaded.definitions.config;
    if config.smtp.is_some() || std::env::var_os("WAVELIFT_SMTP_URL").is_some() {
        anyhow::bail!(
            "sending over SMTP is not in this version yet; without `smtp:` in the configuration \
             (and WAVELIFT_SMTP_URL unset) reports are written to the outbox, {}",
            config.resolve(&config.outbox).display()
        );
    }
    let definition = loaded
        .definitions
        .waves
        .iter()
        .find(|w| w.name.value == wave)
        .with_context(|| format!("no wave `{wave}` in the applied definitions"))?;
    let mut recipients = definition.notify.clone();
    recipients.extend(
        definition
            .applications
            .iter()
            .filter_map(|a| a.owner.clone()),
    );
    let kind_name = match kind {
        Kind::Readiness => "readiness",
    };
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let message = outbox::message(
        rendered,
        outbox::DEFAULT_FROM,
        &recipients,
        &format!("<{wave}.{kind_name}.{}@wavelift>", now.as_millisecond()),
    )?;
    outbox::write(
        &config.resolve(&config.outbox),
        &format!("{stamp}-{wave}-{kind_name}"),
        &message,
    )
}
