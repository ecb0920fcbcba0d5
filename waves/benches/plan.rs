//! Benchmark of the definitions pipeline on 10,000 servers in 100 waves: parse, validate
//! and plan, against a baseline measured in the same run: parsing the same YAML into an
//! untyped value (saphyr's `Yaml`, on the same parser). Prints the medians, the ratio and
//! the peak heap of the pipeline. Run: `cargo bench -p waves --bench plan`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saphyr::LoadableYamlNode;
use waves::source::SourceFile;

/// A field of /proc/self/status in KiB (VmHWM is the peak resident set).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sources(waves_count: usize, per_wave: usize) -> Vec<SourceFile> {
    let shape = waves::synthetic::uniform(waves_count, per_wave);
    waves::synthetic::render(&shape)
        .into_iter()
        .map(|(name, text)| SourceFile {
            name: Arc::from(name.as_str()),
            text,
        })
        .collect()
}

/// In a fresh process, so the peak belongs to one pass of the pipeline alone.
fn measure_memory_in_child() {
    let sources = sources(100, 100);
    let before = status_kib("VmRSS:").unwrap_or(0);
    let loaded = waves::load_sources(None, PathBuf::new(), &sources);
    let plan = waves::plan::plan(&loaded.definitions);
    let peak = status_kib("VmHWM:").unwrap_or(0);
    println!("{before} {peak} {}", plan.tasks.len());
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if std::env::var_os("WAVELIFT_BENCH_MEMORY").is_some() {
        measure_memory_in_child();
        return;
    }
    let (waves_count, per_wave) = (100, 100);
    let sources = sources(waves_count, per_wave);
    let bytes: usize = sources.iter().map(|s| s.text.len()).sum();
    println!(
        "definition: {} servers in {waves_count} waves, {} files, {:.1} MiB of YAML",
        waves_count * per_wave,
        sources.len(),
        bytes as f64 / 1048576.0
    );
    let rounds = 7;
    let mut baseline = Vec::new();
    let mut pipeline = Vec::new();
    let mut tasks = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut nodes = 0;
        for source in &sources {
            let docs = saphyr::Yaml::load_from_str(&source.text).unwrap_or_default();
            nodes += docs.len();
        }
        baseline.push(start.elapsed());
        assert_eq!(nodes, sources.len());

        let start = Instant::now();
        let loaded = waves::load_sources(None, PathBuf::new(), &sources);
        let plan = waves::plan::plan(&loaded.definitions);
        pipeline.push(start.elapsed());
        assert!(
            !loaded.diagnostics.has_errors(),
            "the generated definition must be valid"
        );
        tasks = plan.tasks.len();
        drop(plan);
        drop(loaded);
    }
    let (baseline, pipeline) = (median(baseline), median(pipeline));
    println!(
        "baseline  parse into untyped YAML values : {:>8.1} ms",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "pipeline  parse + validate + plan       : {:>8.1} ms ({tasks} tasks)",
        pipeline.as_secs_f64() * 1e3
    );
    println!(
        "ratio     pipeline / baseline           : {:>8.2}x (target at most 3x)",
        pipeline.as_secs_f64() / baseline.as_secs_f64()
    );
    let child = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Command::new(exe)
                .env("WAVELIFT_BENCH_MEMORY", "1")
                .output()
                .ok()
        })
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let numbers: Vec<u64> = child
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [before, peak, _] = numbers[..] {
        println!(
            "peak RSS of one pass, in its own process : {:>8.1} MiB (target under 300 MB; {:.1} MiB before the pass: the generated YAML)",
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        );
    } else {
        println!("peak RSS: could not be measured (no /proc/self/status?)");
    }
    println!("medians of {rounds} rounds; target for the pipeline: under 1 s");
}
