//! `wavelift approve`, `no-go`, `retry`, `skip`, `cancel` and `abort`: the operator's
//! levers.

use std::process::ExitCode;

use super::state::{self, StateArgs};

pub async fn approve(
    store_args: &StateArgs,
    wave: &str,
    app: Option<&str>,
    by: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let who = state::operator(by);
    let apps = store
        .approve(wave, app, &who, jiff::Timestamp::now().as_millisecond())
        .await?;
    outln!("approved by {who}: {}", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub async fn no_go(
    store_args: &StateArgs,
    wave: &str,
    app: Option<&str>,
    reason: &str,
    by: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let who = state::operator(by);
    let apps = store
        .no_go(
            wave,
            app,
            &who,
            reason,
            jiff::Timestamp::now().as_millisecond(),
        )
        .await?;
    outln!("no-go by {who}: {} wait for a go", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy)]
pub enum Lever {
    Retry,
    Skip,
    Cancel,
}

pub async fn pull(
    store_args: &StateArgs,
    lever: Lever,
    task: &str,
    by: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let who = state::operator(by);
    let now = jiff::Timestamp::now().as_millisecond();
    match lever {
        Lever::Retry => store.retry(task, &who, now).await?,
        Lever::Skip => store.skip(task, &who, now).await?,
        Lever::Cancel => store.cancel(task, &who, now).await?,
    }
    let verb = match lever {
        Lever::Retry => "will run again",
        Lever::Skip => "skipped",
        Lever::Cancel => "cancelled",
    };
    outln!("{task} {verb} ({who})");
    Ok(ExitCode::SUCCESS)
}

pub async fn abort(
    store_args: &StateArgs,
    task: &str,
    reason: &str,
    by: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let who = state::operator(by);
    store
        .abort(task, &who, reason, jiff::Timestamp::now().as_millisecond())
        .await?;
    outln!(
        "{task} is aborted ({who}): the running `wavelift run` rolls it back at its next turn, \
         then it fails with the reason (see wavelift status)"
    );
    Ok(ExitCode::SUCCESS)
}
