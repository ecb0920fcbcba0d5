//! Launches are batched: the boot tests (or cutovers) that reach their launch at the same
//! time share one launch job, up to the engine's limit of servers per job. An engine with
//! quotas (MGN: 200 servers per job, 20 concurrent jobs) is then used as it is meant to
//! be, instead of one job per server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use replication::{
    EngineError, EngineResult, ErrorKind, Job, LaunchKind, PointInTime, ReplicationEngine, SourceId,
};
use tokio::sync::oneshot;

type Waiter = (SourceId, oneshot::Sender<EngineResult<Job>>);

/// Gathers launch requests for a moment, then starts one job per batch.
pub struct Launcher {
    gather: Duration,
    pending: Mutex<HashMap<(usize, LaunchKind), Vec<Waiter>>>,
}

impl Default for Launcher {
    fn default() -> Launcher {
        Launcher::new(Duration::from_millis(5))
    }
}

impl Launcher {
    pub fn new(gather: Duration) -> Launcher {
        Launcher {
            gather,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Launches `source` in a job shared with the other requests of the same engine and
    /// kind that arrive within the gathering moment.
    pub async fn launch(
        &self,
        engine: &dyn ReplicationEngine,
        kind: LaunchKind,
        source: SourceId,
    ) -> EngineResult<Job> {
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
            tokio::time::sleep(self.gather).await;
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
                let result = engine.start_launch(kind, &ids, &PointInTime::Latest).await;
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
