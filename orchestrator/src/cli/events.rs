//! `wavelift events`: the job progress log, as text or JSON lines, optionally followed.

use std::process::ExitCode;
use std::time::Duration;

use super::state::StateArgs;

pub async fn run(
    state: &StateArgs,
    wave: Option<&str>,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = state.open_existing().await?;
    if let Some(wave) = wave {
        store.check_wave(wave).await?;
    }
    let mut after = 0i64;
    loop {
        let events = store.events_after(after, wave, 1000).await?;
        for event in &events {
            after = after.max(event.id);
            if json {
                outln!("{}", serde_json::to_string(event)?);
            } else {
                let at = jiff::Timestamp::from_millisecond(event.at)
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                // One line per event: what it quotes (a command's output, an operator's
                // reason) is shown with its control characters escaped.
                outln!(
                    "{at}Z  {:<10} {:<20} {:<28} {}",
                    event.wave,
                    event.server.as_deref().unwrap_or("-"),
                    event.kind,
                    waves::diag::printable(&event.message)
                );
            }
        }
        if events.len() == 1000 {
            continue;
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
