//! Tests of the local engine (`replication::local`) with real bytes: a replication server
//! on a loopback port (127.0.0.1, a port the system picks), the agent's own code running
//! in a thread of the test against an image file that a writer changes meanwhile, and
//! launches whose images are compared byte for byte with the source at the barrier.

mod control;
mod faults;
mod writer;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use replication::local::agent::{self, AgentConfig};
use replication::local::{LocalConfig, LocalEngine, Retention};
use replication::{
    DiskSpec, JobStatus, LaunchKind, LaunchStatus, PointInTime, ReplicationEngine,
    ReplicationState, SourceId, SourceSpec, SystemClock,
};

use writer::Writer;

pub type TestResult = Result<(), Box<dyn Error>>;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wl-local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn engine(dir: &Path) -> Result<LocalEngine, Box<dyn Error>> {
    engine_with(dir, "127.0.0.1:0".parse()?).await
}

/// An engine whose server listens on `listen`, keeping every recovery point.
async fn engine_with(
    dir: &Path,
    listen: std::net::SocketAddr,
) -> Result<LocalEngine, Box<dyn Error>> {
    Ok(LocalEngine::start(config_with(dir, listen), Arc::new(SystemClock)).await?)
}

/// The engine started again on `listen` once the stopped one has let go of the port and
/// the folder's lock (both go as its tasks end): up to 50 tries, 100 ms apart.
pub(crate) async fn restarted(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
) -> Result<replication::local::LocalEngine, Box<dyn std::error::Error>> {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match engine_with(dir, listen).await {
            Err(err)
                if err.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::WouldBlock
                    )
                }) => {}
            other => return other,
        }
    }
    Err(format!("{listen} was still in use 5 s after the server stopped").into())
}

/// The configuration of [`engine_with`].
fn config_with(dir: &Path, listen: std::net::SocketAddr) -> LocalConfig {
    let mut config = LocalConfig::new(
        listen,
        dir.join("staging"),
        dir.join("targets"),
        PathBuf::from("wavelift-agent"),
    );
    // Every point is kept, so the test can launch from each.
    config.retention = Retention {
        tiers: vec![(SignedDuration::from_nanos(1), SignedDuration::from_hours(1))],
    };
    config
}

type AgentThread = std::thread::JoinHandle<Result<(), agent::AgentError>>;

/// Registers the image as a source and starts its agent in a thread; returns the id.
async fn replicate(
    engine: &LocalEngine,
    dir: &Path,
    name: &str,
    image: &Path,
) -> Result<(SourceId, AgentThread), Box<dyn Error>> {
    replicate_via(engine, dir, name, image, None).await
}

/// As [`replicate`], the agent sending to `via` (a relay) instead of the server.
async fn replicate_via(
    engine: &LocalEngine,
    dir: &Path,
    name: &str,
    image: &Path,
    via: Option<String>,
) -> Result<(SourceId, AgentThread), Box<dyn Error>> {
    replicate_limited(engine, dir, name, image, via, None).await
}

/// As [`replicate_via`], the agent held to `bandwidth_mbit`.
async fn replicate_limited(
    engine: &LocalEngine,
    dir: &Path,
    name: &str,
    image: &Path,
    via: Option<String>,
    bandwidth_mbit: Option<f64>,
) -> Result<(SourceId, AgentThread), Box<dyn Error>> {
    let size = std::fs::metadata(image)?.len();
    let source = engine
        .register_source(&SourceSpec {
            name: name.to_owned(),
            hostname: None,
            disks: vec![DiskSpec {
                device: image.display().to_string(),
                size_bytes: size,
                used_bytes: size,
            }],
            change_rate_bytes_per_second: 0.0,
        })
        .await?;
    let install = engine
        .agent_install(&source.id)
        .await?
        .ok_or("an install")?;
    let fact = |key: &str| install.facts[key].as_str().unwrap_or_default().to_owned();
    let config = AgentConfig {
        server: via.unwrap_or_else(|| fact("server")),
        pin: fact("pin"),
        source: fact("source"),
        token: install.secret.clone(),
        disks: vec![image.to_owned()],
        state_dir: dir.join(format!("agent-{name}")),
        bandwidth_mbit,
        scan_interval: Duration::from_millis(50),
        point_interval: Duration::from_secs(3600),
        give_up_after: Duration::from_secs(20),
    };
    let handle = std::thread::spawn(move || agent::run(config));
    Ok((source.id, handle))
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> Result<bool, Box<dyn Error>>,
) -> TestResult {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what}: not within {limit:?}").into())
}

async fn launched_image(
    engine: &LocalEngine,
    kind: LaunchKind,
    id: &SourceId,
    point: PointInTime,
) -> Result<PathBuf, Box<dyn Error>> {
    let job = engine
        .start_launch(kind, std::slice::from_ref(id), &point)
        .await?;
    let mut finished = None;
    wait_for("the launch", Duration::from_secs(60), async || {
        let job = engine.describe_job(&job.id).await?;
        let done = job.status == JobStatus::Completed;
        if done {
            finished = Some(job);
        }
        Ok(done)
    })
    .await?;
    let job = finished.ok_or("a job")?;
    let slot = &job.servers[0];
    assert_eq!(slot.status, LaunchStatus::Launched, "{:?}", slot.message);
    let target = engine
        .describe_target(slot.target.as_ref().ok_or("a target")?)
        .await?;
    assert_eq!(target.health, replication::Health::Ok, "{:?}", slot.message);
    Ok(PathBuf::from(target.address.ok_or("an image")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_is_the_source_at_its_barrier_while_a_writer_changes_it() -> TestResult {
    let dir = temp("writer");
    let image = dir.join("app01.img");
    let writer = Writer::create(&image, 8 << 20, 42)?;
    let engine = engine(&dir).await?;
    let (id, agent) = replicate(&engine, &dir, "app01", &image).await?;
    let running = writer.start();

    wait_for(
        "continuous replication",
        Duration::from_secs(30),
        async || {
            let source = engine.describe_source(&id).await?;
            Ok(source.replication.state == ReplicationState::Continuous)
        },
    )
    .await?;
    let first = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    let second = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        !first.exists(),
        "a new test launch replaces the previous test copy"
    );
    let writes = running.stop()?;
    let bytes = std::fs::read(&second)?;
    let at_barrier = Writer::count_in(&bytes);
    assert!(
        at_barrier > 0 && at_barrier <= writes,
        "{at_barrier} of {writes} writes"
    );
    assert!(
        bytes == Writer::expected(8 << 20, 42, at_barrier),
        "the launched image is the source after write {at_barrier}"
    );

    // Any recovery point launches as the source was at it.
    let points = engine.recovery_points(&id).await?;
    assert!(points.len() >= 3, "{points:?}");
    let oldest = launched_image(
        &engine,
        LaunchKind::Test,
        &id,
        PointInTime::RecoveryPoint(points[0].id.clone()),
    )
    .await?;
    let bytes = std::fs::read(&oldest)?;
    assert!(bytes == Writer::expected(8 << 20, 42, Writer::count_in(&bytes)));

    engine.server().stop(&id.0);
    let stopped = agent.join().map_err(|_| "the agent panicked")?;
    assert!(stopped.is_ok(), "the agent stops when told: {stopped:?}");
    Ok(())
}

/// Bytes lz4 cannot shrink, so what goes on the wire is what is read.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_shows_its_throughput_and_eta_and_the_agent_keeps_to_its_bandwidth()
-> TestResult {
    let dir = temp("bandwidth");
    let image = dir.join("files01.img");
    let size = 24usize << 20;
    std::fs::write(&image, noise(size, 7))?;
    let engine = engine(&dir).await?;
    // 64 Mbit/s: 8 MB/s.
    let limit = 64.0 * 125_000.0;
    let started = Instant::now();
    let (id, _agent) =
        replicate_limited(&engine, &dir, "files01", &image, None, Some(64.0)).await?;
    let mut seen = Vec::new();
    wait_for("the first sync", Duration::from_secs(60), async || {
        let r = engine.describe_source(&id).await?.replication;
        if r.state == ReplicationState::InitialSync
            && let Some(rate) = r.throughput_bytes_per_second
        {
            seen.push((rate, r.eta_seconds));
        }
        Ok(r.state == ReplicationState::Continuous
            && !engine.recovery_points(&id).await?.is_empty())
    })
    .await?;
    let took = started.elapsed().as_secs_f64();
    assert!(
        took >= 0.8 * size as f64 / limit,
        "{size} bytes in {took:.2} s: more than 64 Mbit/s"
    );
    assert!(!seen.is_empty(), "the first sync showed no throughput");
    assert!(
        seen.iter().all(|(rate, _)| *rate <= 1.3 * limit)
            && seen.iter().any(|(rate, _)| *rate > 0.0),
        "throughput during the first sync, limit {limit} bytes/s: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, eta)| eta.is_some_and(|s| s > 0.0)),
        "the first sync showed no ETA: {seen:?}"
    );
    let wire = engine.describe_source(&id).await?.replication.wire_bytes;
    assert!(
        wire.is_some_and(|w| w >= size as u64),
        "{wire:?} bytes on the wire for {size}"
    );
    let before = wire.unwrap_or_default();
    // A quiet link saves nothing up: after two idle seconds, 8 MiB of changes still go
    // at the limit, not at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let change = 8usize << 20;
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::options()
            .write(true)
            .open(&image)?
            .write_all_at(&noise(change, 8), 0)?;
    }
    let changed = Instant::now();
    wait_for("the changes sent", Duration::from_secs(30), async || {
        let wire = engine.describe_source(&id).await?.replication.wire_bytes;
        Ok(wire.is_some_and(|w| w >= before + change as u64))
    })
    .await?;
    let took = changed.elapsed().as_secs_f64();
    // The agent may spend a quarter second's worth at once (its burst).
    let at_limit = (change as f64 - 0.25 * limit) / limit;
    assert!(
        took >= 0.8 * at_limit,
        "{change} bytes of changes in {took:.2} s after an idle link: more than 64 Mbit/s"
    );
    Ok(())
}

/// Starts: a replication server in this process and an agent thread held to 64 kbit/s.
/// At that rate one 256 KiB frame takes 32 s to send; a status queued behind it would
/// leave the server without news for longer than its 15 s, and the source would read as
/// stalled while it is replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_under_a_tight_bandwidth_limit_is_heard_from_and_never_reads_as_stalled()
-> TestResult {
    let dir = temp("tight");
    let image = dir.join("slow01.img");
    // 512 KiB of noise: more than a minute's sending at 8 KB/s.
    std::fs::write(&image, noise(512 << 10, 11))?;
    let engine = engine(&dir).await?;
    let (id, _agent) =
        replicate_limited(&engine, &dir, "slow01", &image, None, Some(0.064)).await?;
    let stats = || engine.server().stats(&id.0);
    wait_for("the first status", Duration::from_secs(5), async || {
        Ok(stats().status_age.is_some())
    })
    .await?;
    let watched = Instant::now();
    let mut oldest = Duration::ZERO;
    while watched.elapsed() < Duration::from_secs(12) {
        let state = engine.describe_source(&id).await?.replication.state;
        assert_eq!(
            state,
            ReplicationState::InitialSync,
            "after {:?}",
            watched.elapsed()
        );
        oldest = oldest.max(stats().status_age.unwrap_or(Duration::MAX));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        oldest < Duration::from_secs(5),
        "the agent's statuses came {oldest:?} apart at 64 kbit/s"
    );
    let wire = stats().bytes_on_wire;
    // 8 KB/s for at most 17 s, and a quarter second's burst.
    assert!(
        wire > 0 && wire < 8_000 * 18,
        "{wire} bytes on the wire at 64 kbit/s"
    );
    Ok(())
}
