//! The dashboard under load (BENCHMARKS.md): one wave of 2,000 servers running on the
//! rehearsal engine (warped time, the rehearsal's durations) in this process, the web
//! server beside it on 127.0.0.1, and a second process (this binary with `--load`) that
//! requests the wave page and its API from a few clients for a few seconds. It prints the
//! median and p99 latency per route, and a baseline measured in the same run: reading the
//! same wave's rows straight from the store and writing them as JSON, in-process, while
//! the wave runs. Target: p99 under 100 ms.
//!
//! Run: `cargo bench -p orchestrator --bench dashboard`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::executor::{Executor, Limits, Ports, RunOptions};
use orchestrator::scheduler::SchedulerClock;
use orchestrator::store::{Role, Store};
use orchestrator::web::{self, App};
use replication::sim::{SimConfig, SimEngine};
use tasks::cmdb::RehearsalCmdb;
use tasks::shell::RehearsalShell;
use waves::source::SourceFile;

const SERVERS: usize = 2_000;
const CLIENTS: usize = 4;
const LOAD: Duration = Duration::from_secs(8);
/// The routes a browser on the wave page asks for, and the overview's.
const ROUTES: [&str; 3] = ["/waves/wave-0", "/api/waves/wave-0", "/api/waves"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--load") {
        return load(&args[i + 1], &args[i + 2]);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The second process: CLIENTS threads, each asking for the routes in turn for LOAD;
/// prints `ROUTE COUNT MEDIAN_MS P99_MS` per route.
fn load(base: &str, token: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let base = base.to_owned();
            let token = token.to_owned();
            std::thread::spawn(move || -> anyhow::Result<Vec<(usize, f64)>> {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?;
                let mut seen = Vec::new();
                let mut i = c;
                while started.elapsed() < LOAD {
                    let route = i % ROUTES.len();
                    let t = Instant::now();
                    let response = http
                        .get(format!("{base}{}", ROUTES[route]))
                        .bearer_auth(&token)
                        .send()?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "{}: {}",
                        ROUTES[route],
                        response.status()
                    );
                    let _ = response.bytes()?;
                    seen.push((route, t.elapsed().as_secs_f64() * 1000.0));
                    i += 1;
                }
                Ok(seen)
            })
        })
        .collect();
    let mut by_route: Vec<Vec<f64>> = vec![Vec::new(); ROUTES.len()];
    for thread in threads {
        let seen = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        for (route, ms) in seen {
            by_route[route].push(ms);
        }
    }
    for (route, mut times) in ROUTES.iter().zip(by_route) {
        times.sort_by(f64::total_cmp);
        println!(
            "{route} {} {:.2} {:.2}",
            times.len(),
            percentile(&times, 50.0),
            percentile(&times, 99.0)
        );
    }
    Ok(())
}

/// The load from a second process, and the baseline in this one at the same time.
async fn measure(label: &str, base: &str, token: &str, app: &App) -> anyhow::Result<()> {
    let store = &app.store;
    let exe = std::env::current_exe()?;
    let load_args = ["--load".to_owned(), base.to_owned(), token.to_owned()];
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe).args(load_args).output()
    });
    // The baseline: the wave's task rows straight from the store, as JSON.
    // And the wave's JSON computed afresh, as the cache refreshes it in the background:
    // how old the data a page shows can be (at most this plus half a second).
    let mut baseline = Vec::new();
    let mut afresh = Vec::new();
    let measuring = Instant::now();
    let baseline_loop = async {
        while measuring.elapsed() < LOAD {
            let t = Instant::now();
            let rows = store.tasks(Some("wave-0")).await?;
            let json = serde_json::to_vec(&rows)?;
            std::hint::black_box(json);
            baseline.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let wave = web::api::wave_json(app, "wave-0").await?;
            std::hint::black_box(serde_json::to_vec(&wave)?);
            afresh.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    };
    let (output, base_result) = tokio::join!(child, baseline_loop);
    base_result?;
    let output = output??;
    anyhow::ensure!(
        output.status.success(),
        "the load process failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    baseline.sort_by(f64::total_cmp);
    afresh.sort_by(f64::total_cmp);
    let (base_median, base_p99) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    println!("{label}:");
    println!(
        "  a wave's JSON computed afresh (the background refresh; data on a page is at most this + 0.5 s old): median {:.2} ms, p99 {:.2} ms",
        percentile(&afresh, 50.0),
        percentile(&afresh, 99.0)
    );
    println!(
        "  baseline (the wave's task rows from the store as JSON, in-process): median {base_median:.2} ms, p99 {base_p99:.2} ms"
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [route, count, median, p99] = parts[..] {
            let (median, p99): (f64, f64) = (median.parse()?, p99.parse()?);
            println!(
                "  {route}: {count} requests, median {median:.2} ms, p99 {p99:.2} ms ({}); p99 / baseline p99 {:.2}x",
                if p99 < 100.0 { "met" } else { "NOT met" },
                p99 / base_p99
            );
        }
    }
    Ok(())
}

async fn bench() -> anyhow::Result<()> {
    let folder =
        std::env::temp_dir().join(format!("wavelift-bench-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let url = format!("sqlite://{}", folder.join("state.db").display());
    let sources: Vec<SourceFile> =
        waves::synthetic::render(&waves::synthetic::parallel(1, SERVERS))
            .into_iter()
            .map(|(name, text)| SourceFile {
                name: Arc::from(name.as_str()),
                text,
            })
            .collect();
    let loaded = waves::load_sources(None, PathBuf::new(), &sources);
    anyhow::ensure!(
        !loaded.diagnostics.has_errors(),
        "generated definitions must be valid"
    );
    let store = Store::open(&url).await?;
    let start = store.prepare_rehearsal(&loaded, "bench").await?;
    let (_, token) = store.create_token("bench", Role::Viewer, 0).await?;

    // The web server reads through connections of its own, as `serve` does.
    let web_store = Store::open_readers(&url, 4).await?;
    let app = Arc::new(App::new(web_store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(web::serve(listener, Arc::clone(&app), async move {
        let _ = stopped.changed().await;
    }));
    println!(
        "dashboard: one wave of {SERVERS} servers ({} tasks); {CLIENTS} clients for {}s from a second process, target p99 under 100 ms",
        SERVERS * 6,
        LOAD.as_secs()
    );
    measure("stored, not running", &base, &token, &app).await?;

    // The wave runs: warped time on the rehearsal engine with its durations, as fast as
    // the executor goes (a three-week wave in minutes: far busier than a real one).
    let clock = Arc::new(SchedulerClock::warped(start));
    let engine: Arc<dyn replication::ReplicationEngine> = Arc::new(SimEngine::new(
        SimConfig::rehearsal(1),
        Arc::clone(&clock) as Arc<dyn replication::Clock>,
    ));
    let mut engines = std::collections::HashMap::new();
    engines.insert(waves::model::EngineKind::Sim, engine);
    let executor = Executor {
        store: store.clone(),
        definitions: Arc::new(loaded.definitions.clone()),
        ports: Ports {
            engines,
            shell: Arc::new(RehearsalShell),
            cmdb: Arc::new(RehearsalCmdb),
        },
        clock,
        owner: "bench".to_owned(),
        limits: Limits::default(),
    };
    let steps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&steps);
    let running = tokio::spawn(async move {
        executor
            .run(
                RunOptions {
                    until_done: true,
                    reports: None,
                    revision: None,
                },
                |n| {
                    counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                },
            )
            .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = steps.load(std::sync::atomic::Ordering::Relaxed);
    measure("running, warped", &base, &token, &app).await?;
    let during = steps.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!("  (the executor took {during} task steps during that load)");
    let _ = stop.send(true);
    running.abort();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&folder);
    Ok(())
}
