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
                match result {
                    // The engine refused the job for what one of its servers is (its
                    // replication not continuous, a target it still holds, an unknown
                    // id), and launched none of them: each is launched alone, so one
                    // server does not fail the others' launches.
                    Err(err) if ids.len() > 1 && refuses_the_request(&err) => {
                        for (id, sender) in chunk {
                            let alone = engine
                                .start_launch(kind, std::slice::from_ref(&id), &PointInTime::Latest)
                                .await
                                .map(Arc::new);
                            let _ = sender.send(alone);
                        }
                    }
                    result => {
                        for (_, sender) in chunk {
                            let _ = sender.send(result.clone());
                        }
                    }
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
        assert_eq!(jobs, vec![Ok(1), Ok(1)], "each ready server launched alone");
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
        // Ready servers alone share one job.
        let more = register(&["app-04", "app-05"]).await;
        clock.advance(3600.0);
        let (a, b) = tokio::join!(launch(&more[0]), launch(&more[1]));
        let shared = [a, b];
        let sizes: Vec<usize> = shared
            .iter()
            .map(|r| r.as_ref().map_or(0, |job| job.servers.len()))
            .collect();
        assert_eq!(sizes, vec![2, 2]);
    }
}
