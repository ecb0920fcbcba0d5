//! Launches are batched: the boot tests (or cutovers) that reach their launch at the same
//! time share one launch job, up to the engine's limit of servers per job. An engine with
//! quotas (MGN: 200 servers per job, 20 concurrent jobs) is then used as it is meant to
//! be, instead of one job per server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replication::{
    EngineError, EngineResult, ErrorKind, Job, LaunchKind, PointInTime, ReplicationEngine, SourceId,
};
use tokio::sync::oneshot;

type Waiter = (SourceId, oneshot::Sender<EngineResult<Arc<Job>>>);

/// Gathers launch requests for the engine's moment, then starts one job per batch.
#[derive(Default)]
pub struct Launcher {
    pending: Mutex<HashMap<(usize, LaunchKind), Vec<Waiter>>>,
}

/// With an engine that answers at once, how many scheduling rounds the first request
/// waits at most for others.
const MAX_ROUNDS: usize = 64;

impl Launcher {
    fn waiting(&self, key: &(usize, LaunchKind)) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, Vec::len)
    }

    /// Waits while other tasks may still ask: the engine's gathering time, or, for an
    /// engine that answers at once, until a scheduling round brings no new request.
    async fn gather(&self, engine: &dyn ReplicationEngine, key: &(usize, LaunchKind)) {
        let gather = engine.launch_gather();
        if gather > Duration::ZERO {
            tokio::time::sleep(gather).await;
            return;
        }
        let mut seen = self.waiting(key);
        for _ in 0..MAX_ROUNDS {
            tokio::task::yield_now().await;
            let now = self.waiting(key);
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    /// Launches `source` in a job shared with the other requests of the same engine and
    /// kind that arrive within the gathering moment. The job is shared by every server
    /// in it, not copied for each.
    pub async fn launch(
        &self,
        engine: &dyn ReplicationEngine,
        kind: LaunchKind,
        source: SourceId,
    ) -> EngineResult<Arc<Job>> {
        // Requests of one engine share a batch; the engine's address identifies it.
        let key = (
            engine as *const dyn ReplicationEngine as *const () as usize,
            kind,
        );
        let (sender, receiver) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let waiters = pending.entry(key).or_default();
            waiters.push((source, sender));
            waiters.len() == 1
        };
        if first {
            self.gather(engine, &key).await;
            let batch = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
                .unwrap_or_default();
            let per_job = engine.quotas().max_servers_per_job.max(1);
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let chunk: Vec<Waiter> = batch.by_ref().take(per_job).collect();
                let ids: Vec<SourceId> = chunk.iter().map(|(id, _)| id.clone()).collect();
                let result = engine
                    .start_launch(kind, &ids, &PointInTime::Latest)
                    .await
                    .map(Arc::new);
                for (_, sender) in chunk {
                    let _ = sender.send(result.clone());
                }
            }
        }
        receiver.await.unwrap_or_else(|_| {
            Err(EngineError::new(
                ErrorKind::Unavailable,
                "the launch batch was dropped before it started",
            ))
        })
    }
}
