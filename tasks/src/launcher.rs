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
                launch_halving(engine, kind, chunk).await;
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

/// Starts one job for `chunk`. A job the engine refuses for what one of its servers is
/// (and so launched none of them) is asked again in halves, down to the server it
/// refuses: one bad server of 200 costs about 16 requests and leaves the others in about
/// 8 jobs, not 199 (a quota of concurrent jobs stays of use).
async fn launch_halving(engine: &dyn ReplicationEngine, kind: LaunchKind, chunk: Vec<Waiter>) {
    let mut pending = vec![chunk];
    while let Some(chunk) = pending.pop() {
        let ids: Vec<SourceId> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let result = engine
            .start_launch(kind, &ids, &PointInTime::Latest)
            .await
            .map(Arc::new);
        match result {
            Err(err) if chunk.len() > 1 && refuses_the_request(&err) => {
                let mut first = chunk;
                let second = first.split_off(first.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            result => {
                for (_, sender) in chunk {
                    let _ = sender.send(result.clone());
                }
            }
        }
    }
}

/// An error by which the engine refused a launch request as a whole, before it launched
/// anything: a rule, a wrong request, an unknown server. Not a quota (the batch waits
/// for capacity together) nor a transient failure (which may have launched; the tasks
/// look for their launch before they ask again).
fn refuses_the_request(err: &EngineError) -> bool {
    matches!(
        err.kind,
        ErrorKind::Conflict | ErrorKind::Invalid | ErrorKind::NotFound
    )
}

#[cfg(test)]
mod tests {
    /// How many launches the engine was asked for.
    fn launches_asked(engine: &replication::sim::SimEngine) -> u64 {
        engine.calls().get("start_launch").copied().unwrap_or(0)
    }

    use std::sync::Arc;

    use replication::sim::{ManualClock, SimConfig, SimEngine};
    use replication::{DiskSpec, ErrorKind, LaunchKind, ReplicationEngine, SourceId, SourceSpec};

    fn spec(name: &str) -> SourceSpec {
        SourceSpec {
            name: name.to_owned(),
            hostname: None,
            disks: vec![DiskSpec {
                device: "/dev/sda".to_owned(),
                size_bytes: 1 << 30,
                used_bytes: 1 << 29,
            }],
            change_rate_bytes_per_second: 0.0,
        }
    }

    #[tokio::test]
    async fn a_server_the_engine_refuses_does_not_fail_the_others_in_its_batch() {
        let clock = Arc::new(ManualClock::new(
            "2026-03-02T08:00:00Z".parse().expect("a time"),
        ));
        let config = SimConfig {
            initiate_seconds: 300.0,
            ..SimConfig::instant(1)
        };
        let engine = SimEngine::new(config, clock.clone());
        let register = async |names: &[&str]| {
            let mut ids = Vec::new();
            for name in names {
                let source = engine.register_source(&spec(name)).await;
                ids.push(source.expect("registered").id);
            }
            ids
        };
        let mut ids = register(&["app-01", "app-02"]).await;
        clock.advance(3600.0);
        // Registered last, so its replication has not begun: a launch needs it.
        ids.extend(register(&["app-03"]).await);
        ids.push(SourceId("s-unknown".to_owned()));
        let launcher = super::Launcher::default();
        let launch = |id: &SourceId| launcher.launch(&engine, LaunchKind::Test, id.clone());
        let (a, b, c, d) = tokio::join!(
            launch(&ids[0]),
            launch(&ids[1]),
            launch(&ids[2]),
            launch(&ids[3])
        );
        let results = [a, b, c, d];
        let jobs: Vec<_> = results[..2]
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(|job| job.servers.len())
                    .map_err(|e| e.to_string())
            })
            .collect();
        assert_eq!(jobs, vec![Ok(2), Ok(2)], "the ready servers share a job");
        for (result, kind) in results[2..]
            .iter()
            .zip([ErrorKind::Conflict, ErrorKind::NotFound])
        {
            assert_eq!(
                result.as_ref().err().map(|e| e.kind),
                Some(kind),
                "{result:?}"
            );
        }
        // Each refused server was asked alone once, after the halves that held it.
        let asked = launches_asked(&engine);
        assert_eq!(
            asked, 5,
            "the batch, its two halves, the refused half's two servers"
        );
    }
}
