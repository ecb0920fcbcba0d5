//! Property tests of the planner on random waves, loaded through the real loader:
//! the plan is acyclic, every dependency comes before its dependant, no cutover comes
//! before a passed boot test, and no task lies outside its phase or window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use waves::model::TaskKind;
use waves::plan::{self, Plan};
use waves::source::SourceFile;
use waves::synthetic::{self, AppShape, ServerShape, Shape, WaveShape};

fn server() -> impl Strategy<Value = ServerShape> {
    (
        1u32..500,
        prop::sample::select(vec![5u32, 10, 15, 20, 30]),
        prop::option::of(prop::sample::select(vec![
            TaskKind::BootTest,
            TaskKind::PrereqCheck,
            TaskKind::CmdbCleanup,
        ])),
    )
        .prop_map(|(disk_gib, every, skip)| ServerShape {
            disk_gib,
            skip: skip.into_iter().collect(),
            verify_schedule: format!("*/{every} * * * *"),
        })
}

/// Applications with dependencies drawn among those before them (acyclic by
/// construction); wave indices are fixed later.
fn wave(index: usize) -> impl Strategy<Value = WaveShape> {
    (
        4u32..12,
        prop::array::uniform3(1u32..10),
        prop::collection::vec(
            (
                prop::collection::vec(server(), 1..5),
                prop::collection::vec((0usize..4, 0usize..6), 0..3),
                any::<bool>(),
            ),
            1..5,
        ),
    )
        .prop_map(move |(window_hours, phase_days, apps)| {
            let applications = apps
                .into_iter()
                .enumerate()
                .map(|(a, (servers, deps, approval))| {
                    let mut depends_on: Vec<(usize, usize)> = deps
                        .into_iter()
                        .filter_map(|(back, app)| {
                            // `back` waves earlier (0: this wave, only earlier apps).
                            let w = index.checked_sub(back)?;
                            let app = if w == index {
                                app.checked_rem(a.max(1))?
                            } else {
                                app % 2
                            };
                            (w < index || app < a).then_some((w, app))
                        })
                        .collect();
                    depends_on.sort();
                    depends_on.dedup();
                    AppShape {
                        servers,
                        depends_on,
                        approval,
                    }
                })
                .collect();
            WaveShape {
                window_hours,
                phase_days,
                applications,
            }
        })
}

fn shape() -> impl Strategy<Value = Shape> {
    (1usize..5, 3u32..15).prop_flat_map(|(waves, cadence)| {
        let strategies: Vec<_> = (0..waves).map(wave).collect();
        strategies.prop_map(move |mut waves| {
            // A dependency on an application a wave lacks is dropped.
            let sizes: Vec<usize> = waves.iter().map(|w| w.applications.len()).collect();
            for wave in &mut waves {
                for app in &mut wave.applications {
                    app.depends_on.retain(|(w, a)| *a < sizes[*w]);
                }
            }
            Shape {
                waves,
                cadence_days: cadence,
            }
        })
    })
}

fn load(shape: &Shape) -> waves::Loaded {
    let sources: Vec<SourceFile> = synthetic::render(shape)
        .into_iter()
        .map(|(name, text)| SourceFile {
            name: Arc::from(name.as_str()),
            text,
        })
        .collect();
    waves::load_sources(None, PathBuf::new(), &sources)
}

/// Every edge of the plan as (before, after): task dependencies and gate waits.
fn edges(plan: &Plan) -> Vec<(usize, usize)> {
    let mut edges = Vec::new();
    for (index, task) in plan.tasks.iter().enumerate() {
        for dep in &task.depends_on {
            edges.push((*dep as usize, index));
        }
        for gate in &task.gates {
            for waits in &plan.gates[*gate as usize].waits_for {
                edges.push((*waits as usize, index));
            }
        }
    }
    edges
}

/// Kahn's algorithm: the topological order, or `None` on a cycle.
fn topological_order(count: usize, edges: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut incoming = vec![0usize; count];
    let mut outgoing = vec![Vec::new(); count];
    for &(a, b) in edges {
        incoming[b] += 1;
        outgoing[a].push(b);
    }
    let mut ready: Vec<usize> = (0..count).filter(|&i| incoming[i] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(node) = ready.pop() {
        order.push(node);
        for &next in &outgoing[node] {
            incoming[next] -= 1;
            if incoming[next] == 0 {
                ready.push(next);
            }
        }
    }
    (order.len() == count).then_some(order)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn plans_of_random_waves_keep_their_invariants(shape in shape()) {
        let loaded = load(&shape);
        let errors: Vec<String> = loaded.diagnostics.iter().filter(|d| d.severity == waves::Severity::Error).map(ToString::to_string).collect();
        prop_assert!(errors.is_empty(), "generated definitions must be valid: {errors:?}");
        let definitions = loaded.definitions;
        let plan = plan::plan(&definitions);

        let servers: usize = definitions.waves.iter().map(|w| w.server_count()).sum();
        prop_assert_eq!(plan.tasks.len(), servers * TaskKind::ALL.len());

        // Acyclic, and every dependency before its dependant, in order and in time.
        let edges = edges(&plan);
        let order = topological_order(plan.tasks.len(), &edges);
        prop_assert!(order.is_some(), "the plan has a cycle");
        for &(before, after) in &edges {
            prop_assert!(
                plan.tasks[before].earliest <= plan.tasks[after].earliest,
                "{} may start after its dependant {}", plan.tasks[before].id, plan.tasks[after].id
            );
        }

        // Every task inside its phase or window.
        let waves_by_name: HashMap<&str, &waves::Wave> = definitions.waves.iter().map(|w| (w.name.value.as_str(), w)).collect();
        for task in &plan.tasks {
            let wave = waves_by_name[task.wave.as_ref()];
            let (build, validate, window) = (&wave.phases.build, &wave.phases.validate, &wave.window.interval);
            let within = |start: &jiff::Zoned, end: &jiff::Zoned| {
                start.timestamp() <= task.earliest
                    && task.deadline.is_some_and(|d| d <= end.timestamp() && task.earliest <= d)
            };
            let inside = match task.kind {
                TaskKind::PrereqCheck | TaskKind::AgentPush => within(&build.start, &build.end),
                TaskKind::ReplicationVerify => within(&build.start, &window.start),
                TaskKind::BootTest => within(&validate.start, &validate.end),
                TaskKind::Cutover => within(&window.start, &window.end),
                TaskKind::CmdbCleanup => window.end.timestamp() <= task.earliest && task.deadline.is_none(),
            };
            prop_assert!(inside, "{} lies outside its phase or window", task.id);
        }

        // No cutover before a passed boot test: the cutover's gate waits for the boot
        // test of every server of its application, and of its own server.
        let boot_tests: HashMap<(&str, &str), usize> = plan.tasks.iter().enumerate()
            .filter(|(_, t)| t.kind == TaskKind::BootTest)
            .map(|(i, t)| ((t.application.as_ref(), t.server.as_ref()), i))
            .collect();
        for task in plan.tasks.iter().filter(|t| t.kind == TaskKind::Cutover) {
            prop_assert_eq!(task.gates.len(), 1);
            let gate = &plan.gates[task.gates[0] as usize];
            for ((app, _), boot) in &boot_tests {
                if *app == task.application.as_ref() {
                    prop_assert!(gate.waits_for.contains(&(*boot as u32)), "{} does not wait for a boot test of its application", task.id);
                }
            }
            let own_boot = boot_tests[&(task.application.as_ref(), task.server.as_ref())];
            prop_assert!(plan.tasks[own_boot].earliest <= task.earliest);
        }

        // The same definitions give the same plan.
        prop_assert_eq!(plan::to_json(&plan), plan::to_json(&plan::plan(&definitions)));
    }
}
