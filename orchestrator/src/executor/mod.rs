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

pub use step::{kept_step, retried_step};

use std::collections::HashMap;

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

/// How often the leases of a batch whose steps still run are renewed (wall clock).
const LEASE_RENEWAL: Duration = Duration::from_millis(LEASE_MS as u64 / 3);

/// How long to sleep at most between looks at the store, with the wall clock.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// How often a run looks for a revision applied since it began.
const REVISION_LOOK: Duration = Duration::from_secs(2);
/// How long, in real time, warped time waits for the delivery of a report it recorded
/// (an SMTP server that answers slowly) before it moves on without it.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

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
    /// The revision the definitions are of: the run stops between batches with
    /// [`Stopped::NewRevision`] once another is applied, for its caller to go on with it.
    pub revision: Option<i64>,
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
    /// Another revision was applied (its id): the run goes on with it once reloaded.
    NewRevision(i64),
    /// Asked to stop while the run waited for its database, which did not answer: what
    /// it did is stored up to its last commit, and nothing more can be read now.
    InterruptedWithoutDatabase,
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
        let mut claimed: Vec<ClaimedTask> = Vec::new();
        let mut reports_looked = std::time::Instant::now();
        // Since when warped time has waited for a report's delivery.
        let mut delivery_wait: Option<std::time::Instant> = None;
        let mut revision_looked: Option<std::time::Instant> = None;
        loop {
            // A stop asked for before the first batch (while the command started) or
            // between two is heeded before anything more is claimed.
            if claimed.is_empty()
                && let Some(Ok(())) = futures_ready(&mut interrupt)
            {
                return Ok(Stopped::Interrupted);
            }
            // Between batches (nothing claimed ahead): a revision applied since the run
            // began is followed, not ignored.
            if claimed.is_empty()
                && let Some(running) = options.revision
                && revision_looked.is_none_or(|at| at.elapsed() >= REVISION_LOOK)
            {
                revision_looked = Some(std::time::Instant::now());
                if let Some(current) = self.store.current_revision().await?
                    && current != running
                {
                    return Ok(Stopped::NewRevision(current));
                }
            }
            let now = self.clock.now_ms();
            if claimed.is_empty() {
                claimed = self
                    .store
                    .claim(&self.owner, now, now + LEASE_MS, limit)
                    .await?;
            }
            if claimed.is_empty() {
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
                // A report recorded is delivered at the moment it speaks of: warped time
                // waits for its delivery (the delivery loop is woken for it), up to a
                // bound in real time should nothing deliver it.
                let mut undelivered = false;
                if let Some(reporter) = options.reports
                    && self.clock.is_warped()
                    && due.is_some()
                {
                    let wall = jiff::Timestamp::now().as_millisecond();
                    if self.store.reports_awaiting_delivery(wall).await? {
                        let since = *delivery_wait.get_or_insert_with(std::time::Instant::now);
                        undelivered = since.elapsed() < DELIVERY_WAIT;
                        reporter.wake.notify_one();
                    } else {
                        delivery_wait = None;
                    }
                }
                // An engine that moves real bytes (a launch, a first sync) takes real
                // time: warped time waits for it instead of running past it.
                if self.clock.is_warped()
                    && due.is_some()
                    && (undelivered || self.ports.engines.values().any(|engine| engine.busy()))
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
            }
            let mut batch = std::mem::take(&mut claimed);
            let count = batch.len();
            let held: Vec<String> = batch.iter().map(|t| t.id.clone()).collect();
            let ids: Vec<&str> = held.iter().map(String::as_str).collect();
            // A cutover claimed ahead (with the last batch's commit) may have been
            // aborted since: its turn must roll back, not finalize.
            if batch.iter().any(|t| t.kind == "cutover") {
                for (id, asked) in self.aborts_among(&ids).await {
                    if let Some(task) = batch.iter_mut().find(|t| t.id == id) {
                        task.abort_requested = Some(asked);
                    }
                }
            }
            // The cutovers whose turn runs without an abort: one asked for meanwhile
            // makes the turn's follow-up due at once.
            let unaware: Vec<String> = batch
                .iter()
                .filter(|t| t.kind == "cutover" && t.abort_requested.is_none())
                .map(|t| t.id.clone())
                .collect();
            // The steps of a batch run concurrently on this task: they wait on engines,
            // shells and CMDBs, and share the launcher that batches their launches.
            let mut steps: FuturesUnordered<_> = batch
                .into_iter()
                .map(|task| step::run_step(&inputs, now, task))
                .collect();
            let mut completions: Vec<Completion> = Vec::with_capacity(count);
            // Steps that run long (an install over SSH) keep their leases: renewed every
            // third of a lease until the batch's outcomes are written. (With a warped
            // clock, which stands still while steps run, a renewal extends nothing: one
            // process owns a warped run.)
            let mut renew = tokio::time::interval_at(
                tokio::time::Instant::now() + LEASE_RENEWAL,
                LEASE_RENEWAL,
            );
            loop {
                tokio::select! {
                    completion = steps.next() => match completion {
                        Some(completion) => completions.push(completion),
                        None => break,
                    },
                    // Best effort: a store busy for a moment must not drop steps halfway
                    // (an install, a launch); the batch's commit checks the leases anyway.
                    _ = renew.tick() => {
                        if let Err(err) = self
                            .store
                            .renew_leases(&self.owner, &ids, self.clock.now_ms() + LEASE_MS)
                            .await
                        {
                            eprintln!("cannot renew the leases of running tasks yet: {err:#}");
                        }
                    }
                }
            }
            drop(steps);
            // The outcomes and the next claim share one commit.
            let finished_at = self.clock.now_ms().max(now);
            if !unaware.is_empty() {
                let unaware: Vec<&str> = unaware.iter().map(String::as_str).collect();
                let aborted: Vec<String> = self
                    .aborts_among(&unaware)
                    .await
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                for completion in &mut completions {
                    if aborted.iter().any(|id| id == completion.id()) {
                        completion.run_again_at(finished_at);
                    }
                }
            }
            let (_, next) = self
                .store
                .complete_and_claim(
                    &self.owner,
                    finished_at,
                    completions,
                    finished_at + LEASE_MS,
                    limit,
                )
                .await?;
            claimed = next;
            on_batch(count);
            if let Some(reporter) = options.reports
                && reports_looked.elapsed() >= REPORT_LOOK
            {
                reports_looked = std::time::Instant::now();
                reporter.record_due_or_say(self.clock.now_ms()).await;
            }
            if let Some(Ok(())) = futures_ready(&mut interrupt) {
                // The next batch, claimed with this one's outcomes, is not run: its tasks go
                // back (best effort: their leases expire anyway).
                if let Err(err) = self.store.give_back_claims(&self.owner, &claimed).await {
                    eprintln!("cannot give back the tasks claimed for the next batch: {err:#}");
                }
                return Ok(Stopped::Interrupted);
            }
        }
    }
}

impl Executor {
    /// The aborts asked for among `ids`, best effort: a store busy for a moment leaves
    /// them to the next turn, which reads the task afresh.
    async fn aborts_among(&self, ids: &[&str]) -> Vec<(String, String)> {
        match self.store.aborts_among(ids).await {
            Ok(aborts) => aborts,
            Err(err) => {
                eprintln!("cannot read the aborts asked for yet: {err:#}");
                Vec::new()
            }
        }
    }
}

/// Whether Ctrl-C or SIGTERM came, for the whole process, once [`catch_stop_signals`]
/// installed its handlers.
static STOP: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Installs the process's handlers for Ctrl-C and SIGTERM now, for a command that runs
/// until stopped (`run`, `serve`, `replicator`): a stop that comes while it starts (opens
/// the store, applies, binds its ports) is kept for its loop, where the signal's default
/// would end the process halfway through. Call once, from the binary's runtime.
pub fn catch_stop_signals() -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
            let _ = stop.send(true);
            // The sender stays: a receiver whose sender is gone would read it as a stop.
            std::future::pending::<()>().await
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
        std::future::pending::<()>().await
    });
    let _ = STOP.set(stopped);
    Ok(())
}

/// Ctrl-C, or SIGTERM (how a service manager stops a process), one that came before
/// this call included once [`catch_stop_signals`] installed the handlers (this call does
/// if nothing did).
pub async fn stop_signal() -> std::io::Result<()> {
    if STOP.get().is_none() {
        catch_stop_signals()?;
    }
    if let Some(stopped) = STOP.get() {
        let mut stopped = stopped.clone();
        if stopped.wait_for(|stop| *stop).await.is_ok() {
            return Ok(());
        }
    }
    // The handlers' task is gone with the runtime that ran it (a test's): no stop comes.
    std::future::pending().await
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
