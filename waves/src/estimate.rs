//! The estimator: how long replication takes to reach continuous replication, whether it
//! is done before the validate phase, the bandwidth that would make it, and whether each
//! window is long enough for its cutovers. Pure arithmetic on the definitions; the
//! formulas are written out in docs/estimate.md.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::model::{Definitions, Server, TaskKind, Wave};

/// Servers that replicate over the same link share its bandwidth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkEstimate {
    /// `site NAME` or `wave link`.
    pub link: String,
    pub bandwidth_bits: Option<u64>,
    pub compression: f64,
    pub servers: usize,
    /// Bytes to send for the initial sync, after compression.
    pub wire_bytes: f64,
    /// Changed bytes per second of this wave's servers, after compression.
    pub change_bytes_per_second: f64,
    /// Changed bytes per second of other waves' servers on the same site that replicate
    /// during this wave's build phase.
    pub background_bytes_per_second: f64,
    /// Until the last server of the link reaches continuous replication.
    pub initial_sync_seconds: Option<f64>,
    /// Bandwidth that brings every server to continuous before the validate phase.
    pub needed_bandwidth_bits: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerEstimate {
    pub server: String,
    pub application: String,
    pub link: String,
    pub used_bytes: u64,
    pub initial_sync_seconds: Option<f64>,
    pub continuous_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Every server is continuous before the validate phase starts.
    InTime,
    /// Continuous only after the validate phase starts (but before the window): boot
    /// tests get less time.
    DuringValidate,
    /// Not continuous before the cutover window: the wave cannot cut over as planned.
    TooLate,
    /// Some link has no bandwidth set, or its changes outgrow it.
    Unknown,
}

/// The longest chain of application cutovers inside one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CutoverChain {
    pub applications: Vec<String>,
    pub seconds: f64,
    pub window_seconds: f64,
}

impl CutoverChain {
    pub fn fits(&self) -> bool {
        self.seconds <= self.window_seconds
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveEstimate {
    pub wave: String,
    pub replication_start: Timestamp,
    pub validate_start: Timestamp,
    pub window_start: Timestamp,
    pub links: Vec<LinkEstimate>,
    pub servers: Vec<ServerEstimate>,
    pub all_continuous_at: Option<Timestamp>,
    pub readiness: Readiness,
    pub cutover_chain: CutoverChain,
    pub notes: Vec<String>,
}

fn link_name(server: &Server) -> String {
    match &server.site {
        Some(site) => format!("site {}", site.value),
        None => "wave link".to_owned(),
    }
}

fn seconds_between(a: Timestamp, b: Timestamp) -> f64 {
    (b.as_second() - a.as_second()) as f64
}

fn add_seconds(t: Timestamp, seconds: f64) -> Option<Timestamp> {
    if !seconds.is_finite() || seconds > 1e10 {
        return None;
    }
    t.checked_add(jiff::SignedDuration::from_secs(seconds.ceil() as i64))
        .ok()
}

/// Bytes per second a server's disks change, after compression.
fn change_wire_rate(server: &Server, compression: f64) -> f64 {
    server
        .change_rate
        .map_or(0.0, |rate| rate.bytes_per_second(server.used_bytes()))
        / compression
}

/// Estimates every wave of the definitions.
pub fn estimate(definitions: &Definitions) -> Vec<WaveEstimate> {
    definitions
        .waves
        .iter()
        .map(|wave| estimate_wave(definitions, wave))
        .collect()
}

pub fn estimate_wave(definitions: &Definitions, wave: &Wave) -> WaveEstimate {
    let config = &definitions.config;
    let build_start = wave.phases.build.start.timestamp();
    let validate_start = wave.phases.validate.start.timestamp();
    let window_start = wave.window.interval.start.timestamp();
    let mut notes = Vec::new();

    // Group this wave's servers by link, in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut members: HashMap<String, Vec<(&str, &Server)>> = HashMap::new();
    for (app, server) in wave.servers() {
        let link = link_name(server);
        if !members.contains_key(&link) {
            order.push(link.clone());
        }
        members
            .entry(link)
            .or_default()
            .push((app.name.value.as_str(), server));
    }
    let without_disks = wave.servers().filter(|(_, s)| s.disks.is_empty()).count();
    if without_disks > 0 {
        notes.push(format!(
            "{without_disks} server(s) list no disks (the engine discovers them): they are not in the estimate"
        ));
    }
    let without_rate = wave
        .servers()
        .filter(|(_, s)| s.change_rate.is_none() && !s.disks.is_empty())
        .count();
    if without_rate > 0 {
        notes.push(format!(
            "{without_rate} server(s) have no change_rate: counted as not changing, which is optimistic"
        ));
    }

    let mut links = Vec::new();
    let mut servers = Vec::new();
    let mut readiness = Readiness::InTime;
    let mut last: Option<Timestamp> = None;
    let mut beyond = false;
    let replication_seconds = seconds_between(build_start, validate_start).max(1.0);
    for link in &order {
        let group = &members[link];
        let site = group.first().and_then(|(_, s)| s.site.as_ref());
        let (bandwidth_bits, compression) = match site {
            Some(site) => match config.sites.get(&site.value) {
                Some(s) => (
                    Some(s.bandwidth_bits),
                    s.compression.unwrap_or(wave.replication.compression),
                ),
                None => (None, wave.replication.compression),
            },
            None => (
                wave.replication.bandwidth_bits,
                wave.replication.compression,
            ),
        };
        let sized: Vec<&(&str, &Server)> =
            group.iter().filter(|(_, s)| !s.disks.is_empty()).collect();
        let wire: Vec<f64> = sized
            .iter()
            .map(|(_, s)| s.used_bytes() as f64 / compression)
            .collect();
        let change: f64 = sized
            .iter()
            .map(|(_, s)| change_wire_rate(s, compression))
            .sum();
        let background = match site {
            Some(site) => background_change(definitions, wave, &site.value, compression),
            None => 0.0,
        };
        let wire_total: f64 = wire.iter().sum::<f64>() + 0.0;
        let needed_bits = (wire_total / replication_seconds + change + background) * 8.0;
        let finish = bandwidth_bits.and_then(|bits| {
            let effective = bits as f64 / 8.0 - change - background;
            (effective > 0.0).then(|| processor_sharing(&wire, effective))
        });
        match (bandwidth_bits, &finish) {
            (None, _) => {
                notes.push(format!(
                    "{link}: no bandwidth set (replication.bandwidth in the wave, or the site's bandwidth): no estimate"
                ));
                readiness = Readiness::Unknown;
            }
            (Some(_), None) => {
                notes.push(format!(
                    "{link}: the servers change faster than the link sends: replication never becomes continuous"
                ));
                readiness = Readiness::Unknown;
            }
            (Some(_), Some(_)) => {}
        }
        for (index, (app, server)) in sized.iter().enumerate() {
            let seconds = finish.as_ref().map(|f| f[index]);
            let continuous_at = seconds.and_then(|s| add_seconds(build_start, s));
            if let Some(at) = continuous_at {
                last = Some(last.map_or(at, |l| l.max(at)));
            }
            // Further off than a date can say (a link of a few bits per second).
            beyond |= seconds.is_some() && continuous_at.is_none();
            servers.push(ServerEstimate {
                server: server.name.value.clone(),
                application: (*app).to_owned(),
                link: link.clone(),
                used_bytes: server.used_bytes(),
                initial_sync_seconds: seconds,
                continuous_at,
            });
        }
        links.push(LinkEstimate {
            link: link.clone(),
            bandwidth_bits,
            compression,
            servers: sized.len(),
            wire_bytes: wire_total,
            change_bytes_per_second: change,
            background_bytes_per_second: background,
            initial_sync_seconds: finish.map(|f| f.iter().copied().fold(0.0, f64::max)),
            needed_bandwidth_bits: needed_bits,
        });
    }
    if servers.is_empty() && readiness != Readiness::Unknown {
        notes.push("no server lists its disks: nothing to estimate".to_owned());
        readiness = Readiness::Unknown;
    }
    if readiness != Readiness::Unknown && beyond {
        readiness = Readiness::TooLate;
        last = None;
    } else if readiness != Readiness::Unknown
        && let Some(last) = last
    {
        readiness = if last <= validate_start {
            Readiness::InTime
        } else if last <= window_start {
            Readiness::DuringValidate
        } else {
            Readiness::TooLate
        };
    }
    WaveEstimate {
        wave: wave.name.value.clone(),
        replication_start: build_start,
        validate_start,
        window_start,
        links,
        servers,
        all_continuous_at: if readiness == Readiness::Unknown {
            None
        } else {
            last
        },
        readiness,
        cutover_chain: cutover_chain(wave),
        notes,
    }
}

/// Finish times of transfers that share a link fairly (processor sharing): while k
/// transfers run, each gets 1/k of the bandwidth. With sizes sorted ascending,
/// t(k) = t(k-1) + (s(k) - s(k-1)) * (n - k + 1) / B. Returned in the input's order.
pub fn processor_sharing(sizes: &[f64], bandwidth: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[a].total_cmp(&sizes[b]));
    let mut finish = vec![0.0; sizes.len()];
    let (mut time, mut previous) = (0.0, 0.0);
    let n = sizes.len();
    for (rank, &index) in order.iter().enumerate() {
        let remaining = (n - rank) as f64;
        time += (sizes[index] - previous) * remaining / bandwidth;
        previous = sizes[index];
        finish[index] = time;
    }
    finish
}

/// Changes of other waves' servers on `site` that replicate (from their build start to
/// their window's end) while this wave does its initial sync.
fn background_change(definitions: &Definitions, wave: &Wave, site: &str, compression: f64) -> f64 {
    let ours = crate::model::Interval {
        start: wave.phases.build.start.clone(),
        end: wave.phases.validate.start.clone(),
    };
    definitions
        .waves
        .iter()
        .filter(|other| other.name.value != wave.name.value)
        .filter(|other| {
            let replicating = crate::model::Interval {
                start: other.phases.build.start.clone(),
                end: other.window.interval.end.clone(),
            };
            replicating.overlaps(&ours)
        })
        .flat_map(|other| other.servers())
        .filter(|(_, s)| s.site.as_ref().is_some_and(|x| x.value == site))
        .filter(|(_, s)| !s.disks.is_empty() && !s.skips(TaskKind::AgentPush))
        .map(|(_, s)| change_wire_rate(s, compression))
        .sum::<f64>()
        .max(0.0)
        // `+ 0.0` turns the sum of nothing, -0.0, into 0.0 (as printed in JSON).
        + 0.0
}

/// The longest path of application cutovers inside the wave: an application's cutover
/// takes as long as its slowest server's, and waits for the applications it depends on
/// in the same wave (those of earlier waves are done already).
pub fn cutover_chain(wave: &Wave) -> CutoverChain {
    let apps = &wave.applications;
    let index: HashMap<&str, usize> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.value.as_str(), i))
        .collect();
    let own: Vec<f64> = apps
        .iter()
        .map(|app| {
            app.servers
                .iter()
                .filter(|s| !s.skips(TaskKind::Cutover))
                .map(|s| s.tasks.cutover.expected_duration.approx_seconds() as f64)
                .fold(0.0, f64::max)
        })
        .collect();
    // Longest path ending at each application; the graph is acyclic once validated, and
    // the depth bound keeps a cycle from looping if it is not.
    let mut best: Vec<Option<(f64, Option<usize>)>> = vec![None; apps.len()];
    fn visit(
        node: usize,
        depth: usize,
        apps: &[crate::model::Application],
        index: &HashMap<&str, usize>,
        own: &[f64],
        best: &mut Vec<Option<(f64, Option<usize>)>>,
    ) -> f64 {
        if let Some((total, _)) = best[node] {
            return total;
        }
        let mut longest = (0.0, None);
        if depth < apps.len() {
            for dep in &apps[node].depends_on {
                if let Some(&d) = index.get(dep.value.as_str()) {
                    let total = visit(d, depth + 1, apps, index, own, best);
                    if longest.1.is_none() || total > longest.0 {
                        longest = (total, Some(d));
                    }
                }
            }
        }
        let total = longest.0 + own[node];
        best[node] = Some((total, longest.1));
        total
    }
    let mut end = None;
    let mut seconds = 0.0;
    for node in 0..apps.len() {
        let total = visit(node, 0, apps, &index, &own, &mut best);
        if total > seconds || end.is_none() {
            seconds = total;
            end = Some(node);
        }
    }
    let mut chain = Vec::new();
    let mut cursor = end;
    while let Some(node) = cursor {
        if chain.len() > apps.len() {
            break;
        }
        chain.push(apps[node].name.value.clone());
        cursor = best[node].and_then(|(_, previous)| previous);
    }
    chain.reverse();
    CutoverChain {
        applications: chain,
        seconds,
        window_seconds: wave.window.interval.seconds(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_sharing_matches_hand_computation() {
        // 10, 20 and 30 units on a link of 1 unit/s: all three run until 10 is done at
        // 30 s; two run until 20 is done at 30 + 10*2 = 50 s; the last ends at 60 s.
        let finish = processor_sharing(&[30.0, 10.0, 20.0], 1.0);
        assert_eq!(finish, vec![60.0, 30.0, 50.0]);
        // The last finish is always total / bandwidth.
        let sizes = [5.0, 7.0, 11.0, 13.0];
        let last = processor_sharing(&sizes, 2.0)
            .into_iter()
            .fold(0.0, f64::max);
        assert!((last - 36.0 / 2.0).abs() < 1e-9);
    }
}
