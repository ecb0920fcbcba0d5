//! `wavelift report WAVE --kind readiness|cutover|digest [--out FILE.html | --send]`: a
//! report for people, from the store, at the moment `status` speaks of (the run's warped
//! clock if it was warped). `--send` records it as a message and delivers it at once
//! (SMTP, or the outbox without SMTP); one not delivered is retried by `wavelift run`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::state::StateArgs;
use super::status::status_now;
use crate::report::Kind;
use crate::report::mail::Attempt;
use crate::report::schedule::Reporter;
use crate::scheduler::clock::local_text;

pub async fn run(
    state: &StateArgs,
    wave: &str,
    kind: Kind,
    out: Option<&Path>,
    send: bool,
) -> anyhow::Result<ExitCode> {
    // The plain text goes beside the HTML, under the same name ending in .txt: a name
    // that ends in .txt already would have the text overwrite the HTML.
    // Compared without case: on a filesystem that ignores it (macOS, Windows shares),
    // `X.TXT` and `X.txt` are one file.
    if let Some(html) = out
        && html
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        anyhow::bail!(
            "--out {}: that is where the plain text would go; --out names the HTML file \
             (like {}), and the text is written beside it with .txt",
            html.display(),
            html.with_extension("html").display()
        );
    }
    let store = state.open_existing().await?;
    let (now, _) = status_now(&store).await?;
    if send {
        return send_now(&store, wave, kind, now).await;
    }
    let rendered = kind.render(&store, wave, now).await?;
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

/// Records the report as asked for now and makes one delivery attempt.
async fn send_now(
    store: &crate::store::Store,
    wave: &str,
    kind: Kind,
    now: i64,
) -> anyhow::Result<ExitCode> {
    let Some((revision, sources)) = store.current_sources().await? else {
        anyhow::bail!("nothing applied yet: wavelift apply PATH");
    };
    let loaded = sources.load();
    if loaded.diagnostics.has_errors() {
        anyhow::bail!("revision {revision} in the store no longer validates with this Wavelift");
    }
    let reporter = Reporter::new(store.clone(), Arc::new(loaded.definitions))?;
    let calendar = crate::report::calendar_of(store, wave).await?;
    let wall = jiff::Timestamp::now().as_millisecond();
    let event = format!("asked {}", jiff::Timestamp::from_millisecond(wall)?);
    let Some(id) = reporter.record(&calendar, kind, &event, now, now).await? else {
        anyhow::bail!("the same report was asked for in the same millisecond; ask again");
    };
    let report = store
        .reports(Some(wave))
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .context("the report just recorded is not in the store")?;
    let attempt = reporter
        .mailer
        .attempt(store, &report, jiff::Timestamp::now().as_millisecond())
        .await?;
    let subject = &report.subject;
    Ok(match attempt {
        Attempt::Delivered { via } => {
            outln!("{subject}: delivered via {via}");
            ExitCode::SUCCESS
        }
        Attempt::Retry { error, at } => {
            outln!(
                "{subject}: not delivered yet ({error}); recorded, and `wavelift run` tries again from {}",
                local_text(at, "UTC")
            );
            ExitCode::FAILURE
        }
        Attempt::Failed { error, kept } => {
            outln!(
                "{subject}: not delivered ({error}){}",
                kept.map(|k| format!("; the message is kept in {k}"))
                    .unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Attempt::Taken => {
            outln!("{subject}: another Wavelift process is delivering it");
            ExitCode::SUCCESS
        }
    })
}
