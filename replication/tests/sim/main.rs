//! Tests of the rehearsal engine (`replication::sim`), driven by a [`ManualClock`]:
//! the replication model against closed-form answers, the life-cycle rules and quotas,
//! determinism, durable mode, and scale. Shared helpers are here.

mod durable;
mod launches;
mod model;
mod scale;

use std::error::Error;
use std::sync::Arc;

use jiff::Timestamp;
use replication::sim::{ManualClock, SimConfig, SimEngine};
use replication::{
    DiskSpec, EngineError, ErrorKind, ReplicationEngine, ReplicationState, SourceId, SourceServer,
    SourceSpec,
};

pub type TestResult = Result<(), Box<dyn Error>>;

pub const GIB: u64 = 1 << 30;
pub const HOUR: f64 = 3600.0;
pub const DAY: f64 = 24.0 * HOUR;

/// Monday 2 March 2026, 08:00 UTC.
pub fn t0() -> Timestamp {
    "2026-03-02T08:00:00Z".parse().expect("a valid timestamp")
}

/// `seconds` after [`t0`], to the nanosecond.
pub fn after(seconds: f64) -> Timestamp {
    let nanos = t0().as_nanosecond() + (seconds * 1e9).round() as i128;
    Timestamp::from_nanosecond(nanos).unwrap_or(Timestamp::MAX)
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

pub fn engine(config: SimConfig) -> (Arc<ManualClock>, SimEngine) {
    let clock = clock();
    let engine = SimEngine::new(config, clock.clone());
    (clock, engine)
}

/// The rehearsal defaults without failures.
pub fn quiet(seed: u64) -> SimConfig {
    SimConfig {
        stall_probability: 0.0,
        disconnect_probability: 0.0,
        boot_failure_probability: 0.0,
        ..SimConfig::rehearsal(seed)
    }
}

pub fn spec(name: &str, used_bytes: u64, change_rate_bytes_per_second: f64) -> SourceSpec {
    SourceSpec {
        name: name.to_owned(),
        hostname: Some(format!("{name}.example.test")),
        disks: vec![DiskSpec {
            device: "/dev/sda".to_owned(),
            size_bytes: used_bytes.saturating_mul(2),
            used_bytes,
        }],
        change_rate_bytes_per_second,
    }
}

/// A varied fleet: 1 to 40 GiB used, 0 to 200 KB/s of changes, decided by the index.
pub fn fleet(count: usize) -> Vec<SourceSpec> {
    (0..count)
        .map(|n| {
            let used = (1 + (n * 7919) % 40) as u64 * GIB;
            let rate = ((n * 104_729) % 200_000) as f64;
            spec(&format!("srv-{n:05}"), used, rate)
        })
        .collect()
}

pub async fn register_all(
    engine: &SimEngine,
    specs: &[SourceSpec],
) -> Result<Vec<SourceId>, EngineError> {
    let mut ids = Vec::with_capacity(specs.len());
    for spec in specs {
        ids.push(engine.register_source(spec).await?.id);
    }
    Ok(ids)
}

pub async fn describe_all(
    engine: &SimEngine,
    ids: &[SourceId],
) -> Result<Vec<SourceServer>, EngineError> {
    let mut servers = Vec::with_capacity(ids.len());
    for id in ids {
        servers.push(engine.describe_source(id).await?);
    }
    Ok(servers)
}

pub async fn state_of(engine: &SimEngine, id: &SourceId) -> Result<ReplicationState, EngineError> {
    Ok(engine.describe_source(id).await?.replication.state)
}

/// The call must fail with this kind, and its message must mention `mentions`.
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, EngineError>,
    kind: ErrorKind,
    mentions: &str,
) {
    match result {
        Ok(value) => panic!("expected {kind:?} mentioning {mentions:?}, got {value:?}"),
        Err(error) => {
            assert_eq!(error.kind, kind, "{error}");
            assert!(
                error.message.contains(mentions),
                "{error} should mention {mentions:?}"
            );
        }
    }
}

/// A launch of one server from the latest data.
pub async fn launch(
    engine: &SimEngine,
    kind: replication::LaunchKind,
    id: &SourceId,
) -> Result<replication::Job, EngineError> {
    engine
        .start_launch(
            kind,
            std::slice::from_ref(id),
            &replication::PointInTime::Latest,
        )
        .await
}
