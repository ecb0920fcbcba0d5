//! The rehearsal engine's configuration ([`SimConfig`]) and its resolved, integer form
//! ([`Resolved`]) that the model runs on and the state file records. Resolving never
//! fails: a value out of range is brought to the nearest sensible one (a compression
//! under 1 becomes 1, a negative duration 0, a probability is clamped to 0..=1), so
//! that no configuration can panic the model.

use serde::{Deserialize, Serialize};

use crate::Quotas;

/// How the rehearsal engine models replication, launches and failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Every random choice is a hash of (seed, server name, purpose).
    pub seed: u64,
    /// Shared fairly by the servers in initial sync or backlog.
    /// [`SimConfig::UNLIMITED_BANDWIDTH`] makes sending take no time; 0 means nothing
    /// is ever sent.
    pub bandwidth_bits_per_second: u64,
    /// Bytes read per byte sent, at least 1.
    pub compression: f64,
    /// Registered -> initial sync starts.
    pub initiate_seconds: f64,
    /// Backlog drained -> continuous replication (MGN's "creating snapshot").
    pub snapshot_seconds: f64,
    /// Job started -> target launched (running).
    pub launch_seconds: f64,
    /// Target running -> health checks done.
    pub boot_seconds: f64,
    /// Per server, once, during initial sync.
    pub stall_probability: f64,
    /// Per server, once, during initial sync.
    pub disconnect_probability: f64,
    /// Per server: its first test launch boots impaired (a retry boots fine).
    pub boot_failure_probability: f64,
    pub quotas: Quotas,
}

impl SimConfig {
    /// Bandwidth that sends any amount of data in no time.
    pub const UNLIMITED_BANDWIDTH: u64 = u64::MAX;

    /// MGN's launch quotas: 200 servers per job, 20 concurrent jobs, 200 servers in
    /// active jobs.
    pub const MGN_QUOTAS: Quotas = Quotas {
        max_servers_per_job: 200,
        max_concurrent_jobs: 20,
        max_servers_in_active_jobs: 200,
    };

    /// Realistic defaults: 1 Gbit/s, compression 1.5, 5 minutes to initiate, 1 minute
    /// to create the snapshot, 10 minutes to launch, 5 minutes to boot; 5 % of servers
    /// stall and 3 % disconnect once during initial sync, 10 % boot impaired on their
    /// first test launch.
    pub fn rehearsal(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            bandwidth_bits_per_second: 1_000_000_000,
            compression: 1.5,
            initiate_seconds: 300.0,
            snapshot_seconds: 60.0,
            launch_seconds: 600.0,
            boot_seconds: 300.0,
            stall_probability: 0.05,
            disconnect_probability: 0.03,
            boot_failure_probability: 0.10,
            quotas: SimConfig::MGN_QUOTAS,
        }
    }

    /// Every duration zero, unlimited bandwidth, no failures: a registered server is
    /// continuous and a launch completed by the time the call returns. For benchmarks
    /// of the orchestrator.
    pub fn instant(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            bandwidth_bits_per_second: SimConfig::UNLIMITED_BANDWIDTH,
            compression: 1.0,
            initiate_seconds: 0.0,
            snapshot_seconds: 0.0,
            launch_seconds: 0.0,
            boot_seconds: 0.0,
            stall_probability: 0.0,
            disconnect_probability: 0.0,
            boot_failure_probability: 0.0,
            quotas: SimConfig::MGN_QUOTAS,
        }
    }

    pub(crate) fn resolve(&self) -> Resolved {
        Resolved {
            seed: self.seed,
            bandwidth_bits_per_second: self.bandwidth_bits_per_second,
            compression_ppm: compression_ppm(self.compression),
            initiate_ns: nanoseconds(self.initiate_seconds),
            snapshot_ns: nanoseconds(self.snapshot_seconds),
            launch_ns: nanoseconds(self.launch_seconds),
            boot_ns: nanoseconds(self.boot_seconds),
            stall_ppm: parts_per_million(self.stall_probability),
            disconnect_ppm: parts_per_million(self.disconnect_probability),
            boot_failure_ppm: parts_per_million(self.boot_failure_probability),
            quotas: self.quotas,
        }
    }
}

/// The configuration as the model uses it: integers only, so that the state file
/// round-trips it exactly and two engines compare it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Resolved {
    pub seed: u64,
    pub bandwidth_bits_per_second: u64,
    /// Compression times one million, at least one million.
    pub compression_ppm: u64,
    pub initiate_ns: i64,
    pub snapshot_ns: i64,
    pub launch_ns: i64,
    pub boot_ns: i64,
    pub stall_ppm: u32,
    pub disconnect_ppm: u32,
    pub boot_failure_ppm: u32,
    pub quotas: Quotas,
}

impl Resolved {
    pub fn unlimited_bandwidth(&self) -> bool {
        self.bandwidth_bits_per_second == SimConfig::UNLIMITED_BANDWIDTH
    }

    /// Bytes sent for `used` bytes read.
    pub fn compressed(&self, used: u64) -> u64 {
        let sent = u128::from(used) * 1_000_000 / u128::from(self.compression_ppm.max(1));
        u64::try_from(sent).unwrap_or(u64::MAX)
    }
}

/// Longest duration the model takes: about 30 years, far from any overflow.
const MAX_SECONDS: f64 = 1.0e9;

fn nanoseconds(seconds: f64) -> i64 {
    if !seconds.is_finite() || seconds <= 0.0 {
        return 0;
    }
    // `as` saturates; the bound keeps sums of durations far from i64::MAX.
    (seconds.min(MAX_SECONDS) * 1e9).round() as i64
}

fn parts_per_million(probability: f64) -> u32 {
    if !probability.is_finite() || probability <= 0.0 {
        return 0;
    }
    (probability.min(1.0) * 1e6).round() as u32
}

fn compression_ppm(compression: f64) -> u64 {
    if !compression.is_finite() || compression < 1.0 {
        return 1_000_000;
    }
    ((compression.min(1e9) * 1e6).round() as u64).max(1_000_000)
}
