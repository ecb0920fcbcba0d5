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

/// Records names and reports the second use of each.
struct Unique<'a> {
    what: &'a str,
    seen: HashMap<String, Place>,
}

impl<'a> Unique<'a> {
    fn new(what: &'a str) -> Unique<'a> {
        Unique {
            what,
            seen: HashMap::new(),
        }
    }

    fn check(&mut self, key: String, place: Place, diags: &mut Diagnostics) -> bool {
        if let Some(first) = self.seen.get(&key) {
            diags.error(
                &place.file,
                place.location,
                format!(
                    "{} `{key}` is already used at {}",
                    self.what,
                    first.describe()
                ),
            );
            return false;
        }
        self.seen.insert(key, place);
        true
    }
}

/// Checks the waves together and returns the complete ones, ordered by window start.
/// Incomplete waves (`false`) take part in the checks of names and dependencies only.
/// `incomplete`: something written could not be read, so a dependency on an application
/// no wave defines, and no name comes close to, is not reported.
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
    let mut wave_names = Unique::new("wave name");
    for (wave, complete) in &mut waves {
        if wave.name.value.is_empty() {
            continue;
        }
        let place = Place {
            file: Arc::clone(&wave.file),
            location: wave.name.location,
        };
        // A wave whose name is taken is reported and left out of the result.
        if !wave_names.check(wave.name.value.clone(), place, diags) {
            *complete = false;
        }
    }
    let complete: Vec<bool> = waves.iter().map(|(_, c)| *c).collect();
    let all: Vec<Wave> = waves.into_iter().map(|(w, _)| w).collect();
    check_unique_members(&all, diags);
    check_dependencies(&all, &complete, incomplete, diags);
    all.into_iter()
        .zip(complete)
        .filter_map(|(wave, complete)| complete.then_some(wave))
        .collect()
}

fn check_unique_members(waves: &[Wave], diags: &mut Diagnostics) {
    let mut apps = Unique::new("application name");
    let mut servers = Unique::new("server name");
    let mut hosts = Unique::new("host name");
    let mut addresses = Unique::new("IP address");
    let mut sources = Unique::new("source_id");
    for wave in waves {
        let place = |location| Place {
            file: Arc::clone(&wave.file),
            location,
        };
        for app in &wave.applications {
            apps.check(app.name.value.clone(), place(app.name.location), diags);
            for server in &app.servers {
                servers.check(
                    server.name.value.clone(),
                    place(server.name.location),
                    diags,
                );
                if let Some(fqdn) = &server.fqdn {
                    hosts.check(fqdn.value.clone(), place(fqdn.location), diags);
                }
                if let Some(ip) = &server.ip {
                    addresses.check(ip.value.to_string(), place(ip.location), diags);
                }
                if let Some(id) = &server.source_id {
                    sources.check(id.value.clone(), place(id.location), diags);
                }
            }
        }
    }
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
