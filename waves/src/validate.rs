//! Checks that need every wave at once: unique names, hosts and addresses across the
//! repository, application dependencies that exist, point backwards in time and form no
//! cycle.

use std::collections::HashMap;
use std::sync::Arc;

use crate::decode;
use crate::diag::{Diagnostics, Location};
use crate::model::Wave;
use crate::wave_file::short;

/// Where something was first defined, for "already defined at" messages.
#[derive(Clone)]
struct Place {
    file: Arc<str>,
    location: Location,
}

impl Place {
    fn describe(&self) -> String {
        format!("{}:{}", self.file, self.location.line)
    }
}

/// Records names, each with the wave (its index) that used it first.
struct Unique<'a> {
    what: &'a str,
    seen: HashMap<String, (Place, usize)>,
}

impl<'a> Unique<'a> {
    fn new(what: &'a str) -> Unique<'a> {
        Unique {
            what,
            seen: HashMap::new(),
        }
    }

    /// Records `key` for wave `wave`; where it was used first and by which wave, when it
    /// was.
    fn first_use(&mut self, key: String, place: Place, wave: usize) -> Option<(Place, usize)> {
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => Some(first.get().clone()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((place, wave));
                None
            }
        }
    }

    fn report(&self, key: &str, place: &Place, first: &Place, diags: &mut Diagnostics) {
        diags.error(
            &place.file,
            place.location,
            format!(
                "{} `{key}` is already used at {}",
                self.what,
                first.describe()
            ),
        );
    }
}

/// Checks the waves together and returns the complete ones, ordered by window start.
/// Incomplete waves (`false`) take part in the checks of names and dependencies only.
/// `incomplete`: something written could not be read, so a dependency on an application
/// no wave defines, and no name comes close to, is not reported.
///
/// A wave whose name an earlier wave took (a copy of a wave file, most often) is one
/// error, which counts the names, hosts and addresses it repeats of that wave instead of
/// listing each; what it shares with any other wave is listed as usual.
pub fn check_across_waves(
    mut waves: Vec<(Wave, bool)>,
    incomplete: bool,
    diags: &mut Diagnostics,
) -> Vec<Wave> {
    waves.sort_by(|(a, _), (b, _)| {
        a.window
            .interval
            .start
            .cmp(&b.window.interval.start)
            .then_with(|| a.name.value.cmp(&b.name.value))
    });
    // Each wave's earlier namesake, if any.
    let mut named: HashMap<&str, usize> = HashMap::new();
    let twins: Vec<Option<usize>> = waves
        .iter()
        .enumerate()
        .map(|(i, (wave, _))| {
            let name = wave.name.value.as_str();
            if name.is_empty() {
                return None;
            }
            let first = *named.entry(name).or_insert(i);
            (first != i).then_some(first)
        })
        .collect();
    let mut complete: Vec<bool> = waves.iter().map(|(_, c)| *c).collect();
    let all: Vec<Wave> = waves.into_iter().map(|(w, _)| w).collect();
    let repeated = check_unique_members(&all, &twins, diags);
    for (i, twin) in twins.iter().enumerate() {
        let Some(first) = *twin else { continue };
        // A wave whose name is taken is reported and left out of the result.
        complete[i] = false;
        let (wave, earlier) = (&all[i], &all[first]);
        let also = match repeated[i] {
            0 => String::new(),
            1 => "; it also repeats one of that wave's names, host names or addresses (a copy of its file?)".to_owned(),
            n => format!(
                "; it also repeats that wave's names, host names or addresses {n} times, not listed one by one (a copy of its file?)"
            ),
        };
        diags.error(
            &wave.file,
            wave.name.location,
            format!(
                "wave name `{}` is already used at {}:{}{also}",
                wave.name.value, earlier.file, earlier.name.location.line
            ),
        );
    }
    check_dependencies(&all, &complete, incomplete, diags);
    all.into_iter()
        .zip(complete)
        .filter_map(|(wave, complete)| complete.then_some(wave))
        .collect()
}

/// Reports every name, host, address and source id used twice, but those a wave repeats
/// of its earlier namesake (`twins`), which are counted per wave instead.
fn check_unique_members(
    waves: &[Wave],
    twins: &[Option<usize>],
    diags: &mut Diagnostics,
) -> Vec<usize> {
    let mut apps = Unique::new("application name");
    let mut servers = Unique::new("server name");
    let mut hosts = Unique::new("host name");
    let mut addresses = Unique::new("IP address");
    let mut sources = Unique::new("source_id");
    // The disks of servers on this machine (access method local) that the local engine
    // replicates are its files and devices: one server's each. (Over SSH or WinRM each
    // server's /dev/sda is its own.)
    let mut local_disks = Unique::new("disk");
    let mut repeated = vec![0; waves.len()];
    for (w, wave) in waves.iter().enumerate() {
        let mut check = |unique: &mut Unique, key: String, location| {
            let place = Place {
                file: Arc::clone(&wave.file),
                location,
            };
            match unique.first_use(key.clone(), place.clone(), w) {
                None => {}
                Some((_, owner)) if twins[w] == Some(owner) => repeated[w] += 1,
                Some((first, _)) => unique.report(&key, &place, &first, diags),
            }
        };
        for app in &wave.applications {
            check(&mut apps, app.name.value.clone(), app.name.location);
            for server in &app.servers {
                check(
                    &mut servers,
                    server.name.value.clone(),
                    server.name.location,
                );
                if let Some(fqdn) = &server.fqdn {
                    check(&mut hosts, fqdn.value.clone(), fqdn.location);
                }
                if let Some(ip) = &server.ip {
                    check(&mut addresses, ip.value.to_string(), ip.location);
                }
                if let Some(id) = &server.source_id {
                    check(&mut sources, id.value.clone(), id.location);
                }
                if wave.engine.value == crate::model::EngineKind::Local
                    && server.access.method == crate::model::AccessMethod::Local
                {
                    for disk in &server.disks {
                        check(
                            &mut local_disks,
                            crate::rules::device_key(&disk.device),
                            server.name.location,
                        );
                    }
                }
            }
        }
    }
    repeated
}

fn check_dependencies(
    waves: &[Wave],
    complete: &[bool],
    incomplete: bool,
    diags: &mut Diagnostics,
) {
    // Application name -> (wave index, application index).
    let mut index: HashMap<&str, (usize, usize)> = HashMap::new();
    for (w, wave) in waves.iter().enumerate() {
        for (a, app) in wave.applications.iter().enumerate() {
            index.entry(app.name.value.as_str()).or_insert((w, a));
        }
    }
    let names: Vec<&str> = index.keys().copied().collect();
    for (w, wave) in waves.iter().enumerate() {
        for app in &wave.applications {
            for dep in &app.depends_on {
                if dep.value == app.name.value {
                    diags.error(
                        &wave.file,
                        dep.location,
                        format!("application `{}` depends on itself", app.name.value),
                    );
                    continue;
                }
                let Some(&(dep_wave, _)) = index.get(dep.value.as_str()) else {
                    let message = match decode::closest(&dep.value, &names) {
                        Some(near) => format!(
                            "`{}` depends on unknown application `{}`; did you mean `{near}`?",
                            app.name.value, dep.value
                        ),
                        // It may be in what could not be read.
                        None if incomplete => continue,
                        None => format!(
                            "`{}` depends on unknown application `{}`: no wave defines it",
                            app.name.value, dep.value
                        ),
                    };
                    diags.error(&wave.file, dep.location, message);
                    continue;
                };
                let other = &waves[dep_wave];
                let both_timed = complete[w] && complete[dep_wave];
                if both_timed && other.window.interval.start > wave.window.interval.start {
                    diags.error(
                        &wave.file,
                        dep.location,
                        format!(
                            "`{}` (wave `{}`, window {}) depends on `{}` in the later wave `{}` (window {}): move one of them",
                            app.name.value,
                            wave.name.value,
                            short(&wave.window.interval.start),
                            dep.value,
                            other.name.value,
                            short(&other.window.interval.start)
                        ),
                    );
                }
            }
        }
    }
    report_cycles(waves, &index, diags);
}

/// Depth-first search over application dependencies; each cycle is reported once, at the
/// dependency that closes it.
fn report_cycles(waves: &[Wave], index: &HashMap<&str, (usize, usize)>, diags: &mut Diagnostics) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let nodes: Vec<(usize, usize)> = waves
        .iter()
        .enumerate()
        .flat_map(|(w, wave)| (0..wave.applications.len()).map(move |a| (w, a)))
        .collect();
    let position: HashMap<(usize, usize), usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let app = |node: usize| {
        let (w, a) = nodes[node];
        &waves[w].applications[a]
    };
    let edges: Vec<Vec<(usize, usize)>> = (0..nodes.len())
        .map(|n| {
            app(n)
                .depends_on
                .iter()
                .enumerate()
                .filter_map(|(d, dep)| {
                    let target = index.get(dep.value.as_str())?;
                    let target = *position.get(target)?;
                    (target != n).then_some((target, d))
                })
                .collect()
        })
        .collect();
    let mut marks = vec![Mark::New; nodes.len()];
    for root in 0..nodes.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Explicit stack of (node, next edge), so deep chains cannot overflow.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(target, dep_index)) = edges[node].get(*next) {
                *next += 1;
                match marks[target] {
                    Mark::New => {
                        marks[target] = Mark::Open;
                        stack.push((target, 0));
                    }
                    Mark::Open => {
                        let start = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let mut names: Vec<&str> = stack[start..]
                            .iter()
                            .map(|(n, _)| app(*n).name.value.as_str())
                            .collect();
                        names.push(app(target).name.value.as_str());
                        let (w, _) = nodes[node];
                        let dep = &app(node).depends_on[dep_index];
                        diags.error(
                            &waves[w].file,
                            dep.location,
                            format!("dependency cycle: {}", names.join(" -> ")),
                        );
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
}
