//! The executor: claims runnable tasks under a lease, runs each one's next step, and
//! records the outcomes in one transaction per batch. Between batches it waits for the
//! next due time, or with a warped clock jumps to it.
//!
//! What the executor decides, the store enforces: a task is claimed only when its
//! dependencies succeeded and it is due; an outcome is written only while the lease is
//! the executor's. Killed at any moment, the next process re-runs at most the steps
//! whose outcomes were not committed, and the tasks find the engine's actions they
//! already took instead of taking them again.

mod step;

use std::collections::{HashMap, VecDeque};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::Duration;

use replication::ReplicationEngine;
use tasks::cmdb::Cmdb;
use tasks::shell::RemoteShell;
use waves::model::{Definitions, EngineKind};

use crate::report::schedule::Reporter;
use crate::scheduler::SchedulerClock;
use crate::scheduler::clock::WARP_KEY;
use crate::store::{ClaimedTask, Completion, Limit, Store};

/// How long a claimed task is the executor's before another worker may take it.
pub const LEASE_MS: i64 = 60_000;

/// How long to sleep at most between looks at the store, with the wall clock.
const IDLE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tasks run at once, over all waves.
    pub global: usize,
    /// Tasks of one wave run at once.
    pub per_wave: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            global: 256,
            per_wave: 256,
        }
    }
}

/// Everything the tasks act through.
pub struct Ports {
    pub engines: HashMap<EngineKind, Arc<dyn ReplicationEngine>>,
    pub shell: Arc<dyn RemoteShell>,
    pub cmdb: Arc<dyn Cmdb>,
}

pub struct Executor {
    pub store: Store,
    pub definitions: Arc<Definitions>,
    pub ports: Ports,
    pub clock: Arc<SchedulerClock>,
    pub owner: String,
    pub limits: Limits,
}

#[derive(Clone, Copy, Default)]
pub struct RunOptions<'a> {
    /// Stop when no task can make progress without an operator.
    pub until_done: bool,
    /// Records the reports for people as they fall due, by the scheduler's clock.
    pub reports: Option<&'a Reporter>,
}

/// How often a busy run looks for reports that fell due, by the wall clock.
const REPORT_LOOK: Duration = Duration::from_secs(10);

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Every task is in a final state.
    AllDone,
    /// Nothing can move until an operator approves this many gates.
    AwaitingApproval(usize),
    /// Asked to stop (Ctrl-C).
    Interrupted,
}

impl Executor {
    /// Runs until every task is final (with `until_done`), or until interrupted.
    pub async fn run(
        &self,
        options: RunOptions<'_>,
        mut on_batch: impl FnMut(usize),
    ) -> anyhow::Result<Stopped> {
        let index = step::index(&self.definitions);
        let launcher = tasks::launcher::Launcher::default();
        let inputs = step::StepInputs {
            definitions: &self.definitions,
            index: &index,
            engines: &self.ports.engines,
            shell: self.ports.shell.as_ref(),
            cmdb: self.ports.cmdb.as_ref(),
            launcher: &launcher,
        };
        let mut interrupt = Box::pin(stop_signal());
        let limit = Limit {
            total: u32::try_from(self.limits.global).unwrap_or(u32::MAX),
            per_wave: u32::try_from(self.limits.per_wave).unwrap_or(u32::MAX),
        };
        // Claimed batches not yet run, oldest first, and the commit in flight: the
        // outcomes of the batch before, written (with the claim of another batch) while
        // the next batch's steps run.
        let mut ready: VecDeque<Claimed> = VecDeque::new();
        let mut committing: Option<InFlight> = None;
        // Each claim leases its tasks under a name of its own (the owner and the claim's
        // number): an outcome is written only for the claim that ran the step, never for
        // a later claim of the same task (after an operator's cancel and retry).
        let mut claims: u64 = 0;
        let mut claim_owner = || {
            claims += 1;
            format!("{}#{claims}", self.owner)
        };
        let mut reports_looked = std::time::Instant::now();
        loop {
            let now = self.clock.now_ms();
            if ready.is_empty() {
                if let Some(commit) = committing.take() {
                    ready.extend(commit.finish(&mut on_batch).await?);
                    continue;
                }
                let lease_until = now + LEASE_MS;
                let owner = claim_owner();
                let first = self.store.claim(&owner, now, lease_until, limit).await?;
                // A full batch says more tasks may be runnable: the one after it is
                // claimed too, so that from here on the steps of one batch run while
                // the outcomes of the batch before are committed.
                let full = first.len() >= self.limits.global;
                if !first.is_empty() {
                    ready.push_back(Claimed {
                        tasks: first,
                        owner,
                        lease_until,
                    });
                }
                if full {
                    let owner = claim_owner();
                    let second = self.store.claim(&owner, now, lease_until, limit).await?;
                    if !second.is_empty() {
                        ready.push_back(Claimed {
                            tasks: second,
                            owner,
                            lease_until,
                        });
                    }
                }
            }
            let Some(batch) = ready.pop_front() else {
                let unfinished = self.store.unfinished_count().await?;
                let (awaiting, first_window) = self.store.awaiting_approval().await?;
                let mut due = self.store.next_due().await?;
                if let Some(reporter) = options.reports {
                    reports_looked = std::time::Instant::now();
                    // A report falling due before the next task stops warped time there;
                    // reports alone never keep a run going.
                    if let (Some(next), Some(report)) = (due, reporter.record_due_or_say(now).await)
                    {
                        due = Some(next.min(report.max(now)));
                    }
                }
                // Warped time never runs into the window of a cutover that waits for its
                // go: the window would pass before anyone could give it.
                if self.clock.is_warped()
                    && let (Some(next), Some(window)) = (due, first_window)
                    && next >= window
                {
                    due = None;
                }
                // An engine that moves real bytes (a launch, a first sync) takes real
                // time: warped time waits for it instead of running past it.
                if self.clock.is_warped()
                    && due.is_some()
                    && self.ports.engines.values().any(|engine| engine.busy())
                {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = &mut interrupt => return Ok(Stopped::Interrupted),
                    }
                    continue;
                }
                match due {
                    Some(due) if self.clock.is_warped() => {
                        self.clock.advance_to(due.max(now));
                        self.store
                            .meta_set(WARP_KEY, &self.clock.now_ms().to_string())
                            .await?;
                        continue;
                    }
                    Some(_) => {}
                    None if options.until_done => {
                        return Ok(if unfinished == 0 {
                            Stopped::AllDone
                        } else {
                            Stopped::AwaitingApproval(awaiting.max(1) as usize)
                        });
                    }
                    None => {}
                }
                let wait = match due {
                    Some(due) => Duration::from_millis((due - now).clamp(10, 2_000) as u64),
                    None => IDLE_POLL,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(IDLE_POLL)) => {}
                    _ = &mut interrupt => return Ok(Stopped::Interrupted),
                }
                continue;
            };
            // A batch claimed ahead whose lease ran out while it waited is not run: the
            // claim in flight (or the next) may take its tasks again, and a task must
            // not run in two batches. Nor is one with less than half its lease left:
            // another worker may take its tasks once the lease ends, and the steps
            // deserve the time a fresh claim gives them. Its tasks wait for a later
            // claim.
            let claim_now = committing.as_ref().map_or(now, |c| c.claim_now.max(now));
            if batch.lease_until - claim_now < LEASE_MS / 2 {
                continue;
            }
            let count = batch.tasks.len();
            // The steps of a batch run concurrently on this task: they wait on engines,
            // shells and CMDBs, and share the launcher that batches their launches. The
            // commit of the batch before runs meanwhile on a task of its own.
            let mut steps: FuturesUnordered<_> = batch
                .tasks
                .into_iter()
                .map(|task| step::run_step(&inputs, now, task))
                .collect();
            let mut completions: Vec<Completion> = Vec::with_capacity(count);
            while let Some(completion) = steps.next().await {
                completions.push(completion);
            }
            drop(steps);
            if let Some(commit) = committing.take() {
                ready.extend(commit.finish(&mut on_batch).await?);
            }
            // The outcomes and the claim of another batch share one commit, in the
            // order the batches were claimed (the one before has just been committed).
            let finished_at = self.clock.now_ms().max(now);
            let store = self.store.clone();
            let owner = batch.owner;
            let next_owner = claim_owner();
            committing = Some(InFlight {
                claim_now: finished_at,
                lease_until: finished_at + LEASE_MS,
                owner: next_owner.clone(),
                count,
                handle: tokio::spawn(async move {
                    store
                        .complete_and_claim(
                            &owner,
                            finished_at,
                            completions,
                            &next_owner,
                            finished_at + LEASE_MS,
                            limit,
                        )
                        .await
                }),
            });
            if let Some(reporter) = options.reports
                && reports_looked.elapsed() >= REPORT_LOOK
            {
                reports_looked = std::time::Instant::now();
                reporter.record_due_or_say(self.clock.now_ms()).await;
            }
            if let Some(Ok(())) = futures_ready(&mut interrupt) {
                // The outcomes already reached are kept; the tasks claimed and not run
                // go back when their lease runs out.
                if let Some(commit) = committing.take() {
                    commit.finish(&mut on_batch).await?;
                }
                return Ok(Stopped::Interrupted);
            }
        }
    }
}

/// A batch of claimed tasks, the name they are leased under and the time the lease
/// runs out.
struct Claimed {
    tasks: Vec<ClaimedTask>,
    owner: String,
    lease_until: i64,
}

/// The commit of one batch's outcomes (and the claim of another), running on a task of
/// its own.
struct InFlight {
    /// The time its claim compares leases with: a lease ending by then may be claimed.
    claim_now: i64,
    /// The lease of the tasks it claims: under this name, until then.
    owner: String,
    lease_until: i64,
    /// Tasks in the batch whose outcomes it writes.
    count: usize,
    handle: tokio::task::JoinHandle<anyhow::Result<(usize, Vec<ClaimedTask>)>>,
}

impl InFlight {
    /// Waits for the commit; the batch it claimed, if any.
    async fn finish(self, on_batch: &mut impl FnMut(usize)) -> anyhow::Result<Option<Claimed>> {
        let (_, tasks) = self
            .handle
            .await
            .map_err(|err| anyhow::anyhow!("the commit of a batch's outcomes stopped: {err}"))??;
        on_batch(self.count);
        Ok((!tasks.is_empty()).then_some(Claimed {
            tasks,
            owner: self.owner,
            lease_until: self.lease_until,
        }))
    }
}

/// Ctrl-C, or SIGTERM (how a service manager stops a process).
pub async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Whether Ctrl-C came, without waiting for it.
fn futures_ready<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
