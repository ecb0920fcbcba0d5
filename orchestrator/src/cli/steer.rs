//! `wavelift approve`, `no-go`, `retry`, `skip`, `cancel` and `abort`: the operator's
//! levers.

use std::process::ExitCode;

use super::state::{self, StateArgs};
use crate::store::Store;

/// A lever's moment: the clock of a warped run while it is ahead of the wall clock (as
/// `status` and the dashboard speak), so a go or an abort given to a warped run is dated
/// in its time, among its tasks' events and in its cutover report.
async fn levers_now(store: &Store) -> anyhow::Result<i64> {
    Ok(crate::scheduler::clock::status_now(store).await?.0)
}

pub async fn approve(
    store_args: &StateArgs,
    wave: &str,
    app: Option<&str>,
    by: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let who = state::operator(by)?;
    let approval = store
        .approve(wave, app, &who, levers_now(&store).await?)
        .await?;
    if !approval.approved.is_empty() {
        outln!("approved by {who}: {}", approval.approved.join(", "));
    }
    if !approval.already.is_empty() {
        outln!(
            "approved already, the go kept as given: {}",
            approval.already_text()
        );
    }
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
    let who = state::operator(by)?;
    let apps = store
        .no_go(wave, app, &who, reason, levers_now(&store).await?)
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
    let who = state::operator(by)?;
    let now = levers_now(&store).await?;
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
    let who = state::operator(by)?;
    store
        .abort(task, &who, reason, levers_now(&store).await?)
        .await?;
    outln!(
        "{task} is aborted ({who}): the running `wavelift run` rolls it back at its next turn, \
         then it fails with the reason (see wavelift status)"
    );
    Ok(ExitCode::SUCCESS)
}
