//! Benchmarks of the local engine, each against a baseline measured in the same run:
//!
//! 1. Initial sync of an image (4 GiB by default) as a fraction of min(reading the image,
//!    TLS throughput on loopback with the same TLS stack), target at least 80%; and, as
//!    a third bound the first two leave out, of writing as many bytes durably to the
//!    staging folder's disk (the store must hold them before the first recovery point).
//! 2. Bytes on the wire after 1,000 random 4 KiB writes, against the 4 MiB ideal (target
//!    at most 1.5x) and against `rsync --inplace --no-whole-file` of the same change.
//! 3. Lag p99 under a steady write load (random 64 KiB writes) at 25, 50 and 90% of the
//!    replication throughput under that load (target under 1 s at 50%): the rate the wire
//!    carries once the writer offers more than the pipeline takes, measured first by
//!    raising the offered rate in steps from a quarter of (1)'s.
//! 4. Launch time of the image (final sync, materialize, verify).
//!
//! `cargo bench -p replication --bench local [-- --size-gib N --seconds S --source-dir
//! DIR --scan-ms MS --sync-only --load-of MIB_S]`. `--scan-ms` is the agent's longest
//! pause between passes (500 by default, as the agent's own `--scan-interval`);
//! `--load-of` sets the throughput (3)'s loads are fractions of, instead of measuring
//! it, for comparing builds at the same write rates
//! (with (1)'s rate it gives the loads of the sessions before the eleventh);
//! `--sync-only` stops after (1), for comparing builds on the initial sync (whose CPU
//! time per GiB in the agent's scanner and in the server's applier, which it prints,
//! varies less from run to run on a shared machine than its wall time).
//! `--source-dir` puts the source image on another disk than the staging folder, as a
//! source server's disk is in a real migration (the default shares one). It starts a
//! replication server on a loopback port and the agent's code in a thread; files go to
//! `target/bench-local/`.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use replication::local::agent::{self, AgentConfig};
use replication::local::{LocalConfig, LocalEngine, tls};
use replication::{
    DiskSpec, JobStatus, LaunchKind, PointInTime, ReplicationEngine, ReplicationState, SourceId,
    SourceSpec, SystemClock,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: f64 = 1024.0 * 1024.0;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The CPU time this process has used so far (user and system, every thread: the agent's
/// and the server's alike).
fn cpu_seconds() -> Result<f64> {
    stat_cpu_seconds(Path::new("/proc/self/stat"))
}

/// User and system time from a `stat` file of /proc, in clock ticks of 1/100 s (Linux's
/// `USER_HZ` on x86-64).
fn stat_cpu_seconds(path: &Path) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .ok_or("no command name in a stat file")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of the line (the 12th and 13th after the name).
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .ok_or("a stat file is short")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The CPU time the running threads of this process named `name` have used so far, as
/// [`cpu_seconds`] counts it (a thread that has ended is not counted).
fn thread_cpu_seconds(name: &str) -> Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() == name {
            total += stat_cpu_seconds(&dir.join("stat"))?;
        }
    }
    Ok(total)
}

/// The whole number after `name` on the command line, or `default` without one; a
/// missing or malformed value is an error that names the flag.
fn arg(name: &str, default: u64) -> Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let value = args
        .get(at + 1)
        .ok_or_else(|| format!("{name} needs a value (a whole number)"))?;
    Ok(value
        .parse()
        .map_err(|_| format!("{name}: `{value}` is not a whole number"))?)
}

/// An image of random (incompressible) data: the agent's worst case.
fn make_image(path: &Path, size: u64) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        rng.fill(&mut buf);
        let n = (size - written).min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        written += n as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Baseline: reading the image with 1 MiB reads (the agent maps it instead).
fn read_rate(path: &Path) -> Result<f64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        std::hint::black_box(&buf);
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Baseline: writing `size` bytes to a file in `dir` durably, the way the store writes
/// its packs (1 MiB writes, a thread of its own flushing the file every 32 MiB through a
/// file description of its own, one fsync at the end): the staging disk's sustained
/// rate, which bounds the first recovery point.
fn staging_write_rate(dir: &Path, size: u64) -> Result<f64> {
    let path = dir.join("staging-baseline.bin");
    let mut block = vec![0u8; 1 << 20];
    Rng(3).fill(&mut block);
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let (flush, flushes) = std::sync::mpsc::sync_channel::<()>(1);
    let flusher = {
        let path = path.clone();
        std::thread::spawn(move || {
            for () in flushes {
                if let Ok(file) = std::fs::File::open(&path) {
                    let _ = file.sync_data();
                }
            }
        })
    };
    let mut written = 0u64;
    while written < size {
        file.write_all(&block)?;
        written += block.len() as u64;
        if written.is_multiple_of(32 << 20) {
            let _ = flush.try_send(());
        }
    }
    drop(flush);
    file.sync_all()?;
    let rate = written as f64 / started.elapsed().as_secs_f64();
    let _ = flusher.join();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Baseline: TLS on loopback with the server's certificate and the agent's pin, 256 KiB
/// writes of `size` bytes.
async fn tls_rate(dir: &Path, size: u64) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = tls::ServerIdentity::load_or_create(&dir.join("tls-baseline"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(&identity.pin())?);
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(tls::server_name(), tcp).await?;
    let mut block = vec![0u8; 256 << 10];
    Rng(7).fill(&mut block);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < size {
        tls.write_all(&block).await?;
        sent += block.len() as u64;
    }
    tls.shutdown().await?;
    let received = server.await??;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(received as f64 / elapsed)
}

async fn wait_for(
    limit: Duration,
    mut done: impl AsyncFnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done().await? {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("not within {limit:?}").into())
}

/// Launches a test copy from the latest data; its time, and the image's path.
/// The launch's time, its image, and what the launch says of itself (its phases' times).
async fn launch(engine: &LocalEngine, id: &SourceId) -> Result<(Duration, PathBuf, String)> {
    let started = Instant::now();
    let job = engine
        .start_launch(
            LaunchKind::Test,
            std::slice::from_ref(id),
            &PointInTime::Latest,
        )
        .await?;
    wait_for(Duration::from_secs(600), async || {
        Ok(engine.describe_job(&job.id).await?.status == JobStatus::Completed)
    })
    .await?;
    let took = started.elapsed();
    let job = engine.describe_job(&job.id).await?;
    let Some(target) = &job.servers[0].target else {
        return Err(format!("the launch failed: {:?}", job.servers[0].message).into());
    };
    let target = engine.describe_target(target).await?;
    Ok((
        took,
        PathBuf::from(target.address.ok_or("the copy's image")?),
        target.detail.unwrap_or_default(),
    ))
}

/// What the recovery points take in the staging folder: whole maps and the points that
/// list their changes against one.
fn points_kept(root: &Path, id: &SourceId, size: u64) -> Result<String> {
    let points = root
        .join("staging")
        .join("sources")
        .join(&id.0)
        .join("points");
    let (mut whole, mut listing, mut bytes) = (0, 0, 0u64);
    for entry in std::fs::read_dir(&points)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rp") {
            continue;
        }
        bytes += std::fs::metadata(&path)?.len();
        let first = std::fs::read(&path)?;
        let line = first.split(|&b| b == b'\n').next().unwrap_or_default();
        let meta: serde_json::Value = serde_json::from_slice(line)?;
        if meta.get("base").is_some() {
            listing += 1;
        } else {
            whole += 1;
        }
    }
    Ok(format!(
        "recovery points kept: {whole} whole map(s) and {listing} listing their changes, {:.2} MiB in all (a whole map is {:.2} MiB)",
        bytes as f64 / MIB,
        (size / 16384 * 32) as f64 / MIB
    ))
}

/// The first byte at which two files differ (or their lengths do), if any.
fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = a.read(&mut x)?;
        let mut m = 0;
        while m < n {
            let k = b.read(&mut y[m..n])?;
            if k == 0 {
                return Ok(Some(at + m as u64));
            }
            m += k;
        }
        if n == 0 {
            return Ok((b.read(&mut y[..1])? > 0).then_some(at));
        }
        if let Some(i) = (0..n).find(|&i| x[i] != y[i]) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
}

fn random_writes(path: &Path, count: usize, seed: u64) -> Result<()> {
    let file = std::fs::File::options().write(true).open(path)?;
    let blocks = file.metadata()?.len() / 4096;
    let mut rng = Rng(seed);
    let mut block = vec![0u8; 4096];
    for _ in 0..count {
        rng.fill(&mut block);
        let at = rng.next() % blocks;
        file.lock_shared()?;
        file.write_all_at(&block, at * 4096)?;
        file.unlock()?;
    }
    Ok(())
}

fn rsync_bytes(before: &Path, after: &Path) -> Result<u64> {
    let output = std::process::Command::new("rsync")
        .args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"])
        .arg(after)
        .arg(before)
        .output()
        .map_err(|err| format!("rsync (Debian's rsync): {err}"))?;
    let stats = String::from_utf8_lossy(&output.stdout);
    let sent = stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .ok_or_else(|| format!("no rsync stats:\n{stats}"))?;
    Ok(sent.replace(',', "").trim().parse()?)
}

/// The `percent`th percentile of the samples (sorted in place).
fn percentile(samples: &mut [f64], percent: usize) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
        .get(samples.len() * percent / 100)
        .copied()
        .unwrap_or(f64::NAN)
}

/// What a steady load did: bytes written, the lag sampled every 100 ms after its first
/// second, and the rate on the wire meanwhile.
struct Load {
    written: u64,
    lags: Vec<f64>,
    wire: f64,
}

/// Random 64 KiB writes of random data to `image` at `rate` bytes per second for
/// `seconds`, each under a shared lock as the quickstart's writers take (the agent's
/// freeze takes it exclusively).
async fn steady_load(
    engine: &LocalEngine,
    id: &SourceId,
    image: &Path,
    rate: f64,
    seconds: u64,
    seed: u64,
) -> Result<Load> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let path = image.to_owned();
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        let file = std::fs::File::options().write(true).open(&path)?;
        let blocks = file.metadata()?.len() / 4096;
        let mut rng = Rng(seed);
        let mut block = vec![0u8; 64 << 10];
        let started = Instant::now();
        let mut written = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            rng.fill(&mut block);
            let at = (rng.next() % (blocks - 16)) * 4096;
            file.lock_shared()?;
            file.write_all_at(&block, at)?;
            file.unlock()?;
            written += block.len() as u64;
            let due = Duration::from_secs_f64(written as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(written)
    });
    let mut lags = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    // A second for the load to settle in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (wire_from, measured_from) = (engine.server().stats(&id.0).bytes_on_wire, Instant::now());
    while Instant::now() < until {
        if let Some(lag) = engine.describe_source(id).await?.replication.lag_seconds {
            lags.push(lag);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wire = (engine.server().stats(&id.0).bytes_on_wire - wire_from) as f64
        / measured_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().map_err(|_| "the writer panicked")??;
    Ok(Load {
        written,
        lags,
        wire,
    })
}

/// The replication throughput under random 64 KiB writes: loads of 4 s, from a quarter
/// of (1)'s rate up by a quarter each time, until the wire carries less than 90% of
/// what is written (at most eight steps); then that rate again for `seconds`, as long as
/// each of (3)'s loads, and what the wire carried meanwhile is the throughput (a 4 s
/// step still has room in the queues, and the image's own write-back to the disk has not
/// begun). That load offers only a little more than the pipeline takes, so the
/// writer's own CPU time (the two cores are shared) weighs on the figure about as it does
/// at 90%. Also whether a step went past what the pipeline takes (if none did, the
/// figure is the most any step carried, a floor), and the steps as text.
async fn throughput_under_load(
    engine: &LocalEngine,
    id: &SourceId,
    image: &Path,
    sync_rate: f64,
    seconds: u64,
) -> Result<(f64, bool, String)> {
    let mut offered = sync_rate / 4.0;
    let (mut carried, mut steps) = (0.0f64, Vec::new());
    for step in 0..8u64 {
        let load = steady_load(engine, id, image, offered, 4, 7 + step).await?;
        let written = load.written as f64 / 4.0;
        carried = carried.max(load.wire);
        steps.push(format!("{:.0} -> {:.0}", written / MIB, load.wire / MIB));
        if load.wire < 0.9 * written {
            let held = steady_load(engine, id, image, offered, seconds, 17).await?;
            steps.push(format!(
                "then {seconds} s of {:.0} -> {:.0}",
                held.written as f64 / seconds as f64 / MIB,
                held.wire / MIB
            ));
            return Ok((held.wire, true, steps.join(", ")));
        }
        offered *= 1.25;
    }
    Ok((carried, false, steps.join(", ")))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let size = arg("--size-gib", 4)? << 30;
    let seconds = arg("--seconds", 10)?;
    let scan_ms = arg("--scan-ms", 500)?;
    let load_of = arg("--load-of", 0)?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-local");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let source_dir = std::env::args()
        .skip_while(|a| a != "--source-dir")
        .nth(1)
        .map_or_else(|| root.clone(), PathBuf::from);
    let image = source_dir.join("source.img");
    println!(
        "local engine benchmark: a {:.1} GiB image of random data in {}, staging in {}",
        size as f64 / (1u64 << 30) as f64,
        source_dir.display(),
        root.display()
    );
    make_image(&image, size)
        .map_err(|err| format!("cannot write the source image {}: {err}", image.display()))?;

    let read = read_rate(&image)?;
    let tls_cpu = cpu_seconds()?;
    let tls = tls_rate(&root, size).await?;
    let tls_cpu = cpu_seconds()? - tls_cpu;
    let ceiling = read.min(tls);
    let staging = staging_write_rate(&root, size)?;
    println!(
        "baseline: reading the image {:.0} MiB/s, TLS on loopback {:.0} MiB/s ({:.2} s of CPU per GiB, both ends), writing the staging disk {:.0} MiB/s",
        read / MIB,
        tls / MIB,
        tls_cpu / (size as f64 / (1u64 << 30) as f64),
        staging / MIB
    );

    let config = LocalConfig::new(
        "127.0.0.1:0".parse()?,
        root.join("staging"),
        root.join("targets"),
        PathBuf::new(),
    );
    let engine = LocalEngine::start(config, Arc::new(SystemClock)).await?;
    let source = engine
        .register_source(&SourceSpec {
            name: "bench".to_owned(),
            hostname: None,
            disks: vec![DiskSpec {
                device: image.display().to_string(),
                size_bytes: size,
                used_bytes: size,
            }],
            change_rate_bytes_per_second: 0.0,
        })
        .await?;
    let id = source.id.clone();
    let install = engine.agent_install(&id).await?.ok_or("an install")?;
    let fact = |key: &str| install.facts[key].as_str().unwrap_or_default().to_owned();
    let agent_config = AgentConfig {
        server: fact("server"),
        pin: fact("pin"),
        source: fact("source"),
        token: install.secret.clone(),
        disks: vec![image.clone()],
        state_dir: root.join("agent"),
        bandwidth_mbit: None,
        scan_interval: Duration::from_millis(scan_ms),
        point_interval: Duration::from_secs(3600),
        give_up_after: Duration::from_secs(60),
    };
    let (started, cpu_before) = (Instant::now(), cpu_seconds()?);
    std::thread::spawn(move || agent::run(agent_config));
    wait_for(Duration::from_secs(3600), async || {
        Ok(
            engine.describe_source(&id).await?.replication.state == ReplicationState::Continuous
                && !engine.recovery_points(&id).await?.is_empty(),
        )
    })
    .await?;
    let sync = started.elapsed().as_secs_f64();
    let gib = size as f64 / (1u64 << 30) as f64;
    // The agent's scanner and the session's applier started with (1): all their time so
    // far is the sync's (the scanner's two passes, the applier's storing).
    let cpu = cpu_seconds()? - cpu_before;
    let scan = thread_cpu_seconds("wl-agent-scan")?;
    let apply = thread_cpu_seconds("wl-apply")?;
    let rate = size as f64 / sync;
    println!(
        "(1) initial sync: {sync:.2} s, {:.0} MiB/s = {:.0}% of min(read, TLS) (target >= 80%); {:.0}% of min(read, TLS, staging disk); CPU per GiB: {:.2} s in all, of it {:.2} s the agent's scanner and {:.2} s the server's applier",
        rate / MIB,
        100.0 * rate / ceiling,
        100.0 * rate / ceiling.min(staging),
        cpu / gib,
        scan / gib,
        apply / gib
    );
    if std::env::args().any(|a| a == "--sync-only") {
        return Ok(());
    }

    // (2) 1,000 random 4 KiB writes.
    let before = root.join("before.img");
    std::fs::copy(&image, &before)?;
    let wire_before = engine.server().stats(&id.0).bytes_on_wire;
    random_writes(&image, 1000, 42)?;
    engine
        .server()
        .barrier(&id.0, Duration::from_secs(600))
        .await?;
    let wire = engine.server().stats(&id.0).bytes_on_wire - wire_before;
    let rsync = rsync_bytes(&before, &image)?;
    std::fs::remove_file(&before)?;
    let ideal = 1000.0 * 4096.0;
    println!(
        "(2) 1,000 random 4 KiB writes: {:.2} MiB on the wire = {:.2}x the 4 MiB ideal (target <= 1.5x); rsync --inplace sent {:.2} MiB ({:.2}x ours)",
        wire as f64 / MIB,
        wire as f64 / ideal,
        rsync as f64 / MIB,
        rsync as f64 / wire as f64
    );
    println!("after (2): {}", points_kept(&root, &id, size)?);

    // (3) Lag under a steady load of random 64 KiB writes, at fractions of the replication
    // throughput under that load: the rate the pipeline carries once the writer offers
    // more than it takes, found by raising the offered rate step by step.
    let throughput = match load_of {
        0 => {
            let (carried, saturated, steps) =
                throughput_under_load(&engine, &id, &image, rate, seconds).await?;
            println!(
                "(3) replication throughput under random 64 KiB writes: {}{:.0} MiB/s (offered, MiB/s -> carried on the wire: {steps})",
                if saturated {
                    ""
                } else {
                    "at least (the wire kept up at every step) "
                },
                carried / MIB
            );
            // The backlog the last step left is sent before the loads begin.
            engine
                .server()
                .barrier(&id.0, Duration::from_secs(600))
                .await?;
            carried
        }
        mib_s => mib_s as f64 * MIB,
    };
    for fraction in [0.25, 0.5, 0.9] {
        let target = throughput * fraction;
        // A seed of its own per load: the same seed would write the previous load's bytes
        // to the same places again, changes with nothing to send.
        let seed = 99 + (fraction * 100.0) as u64;
        let mut load = steady_load(&engine, &id, &image, target, seconds, seed).await?;
        println!(
            "(3) lag at {:.0}% of {} ({:.0} MiB/s written, {:.0} MiB in all; {:.0} MiB/s on the wire): median {:.2} s, p99 {:.2} s over {} samples{}",
            fraction * 100.0,
            if load_of == 0 {
                "the replication throughput".to_owned()
            } else {
                format!("{:.0} MiB/s (--load-of)", throughput / MIB)
            },
            target / MIB,
            load.written as f64 / MIB,
            load.wire / MIB,
            percentile(&mut load.lags, 50),
            percentile(&mut load.lags, 99),
            load.lags.len(),
            if fraction == 0.5 {
                " (target < 1 s)"
            } else {
                ""
            }
        );
    }

    // (4) Launch.
    let (took, copy, detail) = launch(&engine, &id).await?;
    println!(
        "(4) launch of the {:.1} GiB image (final sync, write, verify): {:.2} s: {detail}",
        size as f64 / (1u64 << 30) as f64,
        took.as_secs_f64()
    );
    // Every write of (2) and (3) reached the copy: the writers are done, so the copy from
    // the latest data is the source byte for byte.
    let differs = first_difference(&image, &copy)?;
    match differs {
        None => println!("the copy is the source byte for byte"),
        Some(at) => return Err(format!("the copy differs from the source at byte {at}").into()),
    }
    println!("after (3) and (4): {}", points_kept(&root, &id, size)?);
    engine.shutdown();
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
