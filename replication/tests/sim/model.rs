//! The replication model: processor sharing against closed-form answers, jumps against
//! small steps, failures, determinism, the clock, recovery points.

use std::collections::BTreeSet;

use replication::sim::SimConfig;
use replication::{
    Health, LaunchKind, LifeCycle, PointInTime, ReplicationEngine, ReplicationState, SourceId,
};

use super::*;

const GBIT: f64 = 1e9;
/// Probes land this far before and after each predicted transition.
const EPSILON: f64 = 0.001;

struct Scenario {
    name: &'static str,
    config: SimConfig,
    /// (name, used bytes, change rate in bytes per second)
    servers: Vec<(&'static str, u64, f64)>,
    /// Per server, every state it goes through with the time it enters it.
    expected: Vec<(&'static str, Vec<(ReplicationState, f64)>)>,
}

fn sharing_config(compression: f64) -> SimConfig {
    SimConfig {
        bandwidth_bits_per_second: 1_000_000_000,
        compression,
        initiate_seconds: 300.0,
        snapshot_seconds: 60.0,
        ..quiet(1)
    }
}

fn scenarios() -> Vec<Scenario> {
    use ReplicationState::*;
    let (initiate, snapshot) = (300.0, 60.0);
    let bits = |bytes: u64, compression: f64| bytes as f64 * 8.0 / compression;

    // Two servers share 1 Gbit/s until the smaller one is done.
    let (s1, s2) = (bits(10 * GIB, 1.0), bits(30 * GIB, 1.0));
    let t1 = 2.0 * s1 / GBIT;
    let t2 = t1 + (s2 - s1) / GBIT;

    // One server with changes: its backlog is rate x sync time, drained at full speed.
    let rate = 2_000_000.0;
    let sync = s1 / GBIT;
    let backlog = rate * 8.0 * sync;
    let drain = backlog / GBIT;

    // Compression 2, and the first server's backlog still shares the pool with the
    // second, which then finishes alone.
    let (c1, c2) = (bits(10 * GIB, 2.0), bits(30 * GIB, 2.0));
    let u1 = 2.0 * c1 / GBIT;
    let backlog_c = rate / 2.0 * 8.0 * u1;
    let drain_c = 2.0 * backlog_c / GBIT;
    let u2 = u1 + drain_c + (c2 - c1 - backlog_c) / GBIT;

    vec![
        Scenario {
            name: "two servers, processor sharing",
            config: sharing_config(1.0),
            servers: vec![("small", 10 * GIB, 0.0), ("large", 30 * GIB, 0.0)],
            expected: vec![
                (
                    "small",
                    vec![
                        (Initiating, 0.0),
                        (InitialSync, initiate),
                        (CreatingSnapshot, initiate + t1),
                        (Continuous, initiate + t1 + snapshot),
                    ],
                ),
                (
                    "large",
                    vec![
                        (Initiating, 0.0),
                        (InitialSync, initiate),
                        (CreatingSnapshot, initiate + t2),
                        (Continuous, initiate + t2 + snapshot),
                    ],
                ),
            ],
        },
        Scenario {
            name: "one server with a backlog",
            config: sharing_config(1.0),
            servers: vec![("busy", 10 * GIB, rate)],
            expected: vec![(
                "busy",
                vec![
                    (Initiating, 0.0),
                    (InitialSync, initiate),
                    (Backlog, initiate + sync),
                    (CreatingSnapshot, initiate + sync + drain),
                    (Continuous, initiate + sync + drain + snapshot),
                ],
            )],
        },
        Scenario {
            name: "compression 2, a backlog sharing the pool",
            config: sharing_config(2.0),
            servers: vec![("busy", 10 * GIB, rate), ("large", 30 * GIB, 0.0)],
            expected: vec![
                (
                    "busy",
                    vec![
                        (Initiating, 0.0),
                        (InitialSync, initiate),
                        (Backlog, initiate + u1),
                        (CreatingSnapshot, initiate + u1 + drain_c),
                        (Continuous, initiate + u1 + drain_c + snapshot),
                    ],
                ),
                (
                    "large",
                    vec![
                        (Initiating, 0.0),
                        (InitialSync, initiate),
                        (CreatingSnapshot, initiate + u2),
                        (Continuous, initiate + u2 + snapshot),
                    ],
                ),
            ],
        },
    ]
}

/// Registers the scenario's servers at t0, then probes every server just after it
/// enters each state and just before it leaves it, in time order on one engine.
async fn check(scenario: &Scenario) -> TestResult {
    let (clock, engine) = engine(scenario.config.clone());
    for &(name, used, rate) in &scenario.servers {
        engine.register_source(&spec(name, used, rate)).await?;
    }
    let mut probes = Vec::new();
    for (name, states) in &scenario.expected {
        for (n, &(state, entered)) in states.iter().enumerate() {
            probes.push((entered + EPSILON, *name, state));
            if let Some(&(_, left)) = states.get(n + 1) {
                probes.push((left - EPSILON, *name, state));
            }
        }
    }
    probes.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, name, state) in probes {
        clock.set(after(at));
        let server = engine.find_source(name).await?.ok_or("server missing")?;
        assert_eq!(
            server.replication.state, state,
            "{}: {name} at {at:.3} s: {:?}",
            scenario.name, server.replication
        );
    }
    Ok(())
}

#[tokio::test]
async fn servers_become_continuous_at_the_processor_sharing_times() -> TestResult {
    for scenario in scenarios() {
        check(&scenario).await?;
    }
    Ok(())
}

#[tokio::test]
async fn progress_and_eta_follow_the_fair_share() -> TestResult {
    let (clock, engine) = engine(sharing_config(1.0));
    let small = engine
        .register_source(&spec("small", 10 * GIB, 0.0))
        .await?
        .id;
    engine
        .register_source(&spec("large", 30 * GIB, 0.0))
        .await?;
    let t1 = 2.0 * (10 * GIB) as f64 * 8.0 / GBIT;
    clock.set(after(300.0 + t1 / 2.0));
    let replication = engine.describe_source(&small).await?.replication;
    assert_eq!(replication.total_bytes, 10 * GIB);
    assert!(
        replication.replicated_bytes.abs_diff(5 * GIB) <= 1,
        "{replication:?}"
    );
    assert_eq!(replication.lag_seconds, None);
    let eta = replication
        .eta_seconds
        .ok_or("no eta during initial sync")?;
    assert!((eta - (t1 / 2.0 + 60.0)).abs() < 1e-6, "eta {eta}");
    Ok(())
}

/// One engine jumps from checkpoint to checkpoint (a registration on day 2), another
/// walks in steps of 437 s and lands on the same checkpoints: both show the same.
#[tokio::test]
async fn one_jump_of_three_weeks_equals_many_small_steps() -> TestResult {
    let specs = fleet(60);
    let late = spec("late-arrival", 25 * GIB, 50_000.0);
    let arrival = 2.0 * DAY;
    // Mid-sync with stalls, near the end of the fleet's sync, the arrival, the
    // arrival's own sync, three weeks.
    let checkpoints = [HOUR, 2.0 * HOUR, arrival, arrival + 400.0, 21.0 * DAY];

    let (jump_clock, jumper) = engine(SimConfig::rehearsal(7));
    let mut jump_ids = register_all(&jumper, &specs).await?;
    let mut jumped = Vec::new();
    for at in checkpoints {
        jump_clock.set(after(at));
        if at == arrival {
            jump_ids.push(jumper.register_source(&late).await?.id);
        }
        jumped.push(describe_all(&jumper, &jump_ids).await?);
    }

    let (step_clock, stepper) = engine(SimConfig::rehearsal(7));
    let mut step_ids = register_all(&stepper, &specs).await?;
    let mut stepped = Vec::new();
    let (mut t, mut steps) = (0.0, 0);
    for at in checkpoints {
        while t < at {
            t = f64::min(t + 437.0, at);
            step_clock.set(after(t));
            stepper
                .describe_source(&step_ids[steps % step_ids.len()])
                .await?;
            steps += 1;
        }
        if at == arrival {
            step_ids.push(stepper.register_source(&late).await?.id);
        }
        stepped.push(describe_all(&stepper, &step_ids).await?);
    }

    assert!(steps > 4000);
    assert_eq!(jumped, stepped);
    assert_eq!(jumper.actions(), stepper.actions());
    let states = |servers: &[replication::SourceServer]| {
        servers
            .iter()
            .map(|server| server.replication.state)
            .collect::<std::collections::HashSet<_>>()
    };
    assert!(states(&jumped[0]).contains(&ReplicationState::InitialSync));
    assert!(states(&jumped[0]).contains(&ReplicationState::Stalled));
    assert_eq!(
        jumped[3].last().map(|server| server.replication.state),
        Some(ReplicationState::InitialSync)
    );
    assert_eq!(
        states(&jumped[4]),
        std::collections::HashSet::from([ReplicationState::Continuous])
    );
    Ok(())
}

/// Every server stalls and disconnects once; progress never goes back.
#[tokio::test]
async fn failures_change_timing_but_never_lose_progress() -> TestResult {
    let failing = SimConfig {
        stall_probability: 1.0,
        disconnect_probability: 1.0,
        ..quiet(3)
    };
    let specs: Vec<_> = (0..8)
        .map(|n| spec(&format!("f-{n}"), (2 + n) * GIB, 0.0))
        .collect();
    let (clock, engine) = engine(failing);
    let ids = register_all(&engine, &specs).await?;
    let mut last = vec![0u64; ids.len()];
    let mut seen = vec![BTreeSet::new(); ids.len()];
    let mut t = 0.0;
    while t < 2.0 * DAY {
        t += 10.0;
        clock.set(after(t));
        let servers = describe_all(&engine, &ids).await?;
        for (n, server) in servers.iter().enumerate() {
            let replicated = server.replication.replicated_bytes;
            assert!(
                replicated >= last[n],
                "{} lost progress at {t} s",
                server.name
            );
            assert!(replicated <= server.replication.total_bytes);
            last[n] = replicated;
            seen[n].insert(format!("{:?}", server.replication.state));
        }
        if servers
            .iter()
            .all(|s| s.replication.state == ReplicationState::Continuous)
        {
            break;
        }
    }
    for (n, states) in seen.iter().enumerate() {
        for state in ["Stalled", "Disconnected", "Continuous"] {
            assert!(states.contains(state), "f-{n} never {state}: {states:?}");
        }
    }
    Ok(())
}

/// Time (to 10 s) at which the single server becomes continuous, and how long it was
/// seen paused.
async fn walk_one(config: SimConfig) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (clock, engine) = engine(config);
    let id = engine
        .register_source(&spec("alone", 20 * GIB, 0.0))
        .await?
        .id;
    let (mut t, mut paused) = (0.0, 0.0);
    loop {
        t += 10.0;
        clock.set(after(t));
        match state_of(&engine, &id).await? {
            ReplicationState::Stalled | ReplicationState::Disconnected => paused += 10.0,
            ReplicationState::Continuous => return Ok((t, paused)),
            _ if t > 10.0 * DAY => return Err("never continuous".into()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn pauses_delay_a_lone_server_by_their_length() -> TestResult {
    let (baseline, none) = walk_one(quiet(5)).await?;
    let (delayed, paused) = walk_one(SimConfig {
        stall_probability: 1.0,
        disconnect_probability: 1.0,
        ..quiet(5)
    })
    .await?;
    assert_eq!(none, 0.0);
    // A stall lasts 10 to 60 minutes, a disconnect 5 to 30.
    assert!(
        (15.0 * 60.0..=90.0 * 60.0 + 20.0).contains(&paused),
        "paused {paused} s"
    );
    assert!(
        (delayed - baseline - paused).abs() <= 20.0,
        "{baseline} + {paused} vs {delayed}"
    );
    Ok(())
}

/// What a run shows of a seed: the pauses seen, the impaired boots, the actions and
/// the final descriptions.
async fn fingerprint(seed: u64) -> Result<(BTreeSet<String>, String), Box<dyn std::error::Error>> {
    let specs: Vec<_> = (0..200)
        .map(|n| spec(&format!("d-{n:03}"), GIB, 1000.0))
        .collect();
    let (clock, engine) = engine(SimConfig::rehearsal(seed));
    let ids = register_all(&engine, &specs).await?;
    let mut failures = BTreeSet::new();
    let mut t = 0.0;
    loop {
        t += 60.0;
        clock.set(after(t));
        let servers = describe_all(&engine, &ids).await?;
        for server in &servers {
            if let state @ (ReplicationState::Stalled | ReplicationState::Disconnected) =
                server.replication.state
            {
                failures.insert(format!("{} {state:?}", server.name));
            }
        }
        if servers
            .iter()
            .all(|s| s.life_cycle == LifeCycle::ReadyForTest)
        {
            break;
        }
        if t > 2.0 * DAY {
            return Err("not all continuous after two days".into());
        }
    }
    let job = engine
        .start_launch(LaunchKind::Test, &ids, &PointInTime::Latest)
        .await?;
    clock.set(after(t + 3600.0));
    for server in engine.describe_job(&job.id).await?.servers {
        let target = engine
            .describe_target(&server.target.ok_or("no target")?)
            .await?;
        if target.health == Health::Impaired {
            failures.insert(format!("{} impaired", server.source));
        }
    }
    let shown = format!(
        "{:?}\n{:?}",
        engine.actions(),
        describe_all(&engine, &ids).await?
    );
    Ok((failures, shown))
}

#[tokio::test]
async fn the_same_seed_gives_the_same_run_and_another_seed_other_failures() -> TestResult {
    let (failures, shown) = fingerprint(42).await?;
    let (again, shown_again) = fingerprint(42).await?;
    let (other, _) = fingerprint(43).await?;
    assert_eq!(failures, again);
    assert_eq!(shown, shown_again);
    assert!(
        failures.len() > 5 && other.len() > 5,
        "{failures:?} {other:?}"
    );
    for kind in ["Stalled", "Disconnected", "impaired"] {
        assert!(
            failures.iter().any(|f| f.ends_with(kind)),
            "no {kind} in {failures:?}"
        );
    }
    assert_ne!(failures, other);
    Ok(())
}

#[tokio::test]
async fn a_clock_set_back_does_not_move_the_model_back() -> TestResult {
    let (clock, engine) = engine(quiet(9));
    let id = engine
        .register_source(&spec("web", 10 * GIB, 0.0))
        .await?
        .id;
    clock.set(after(DAY));
    let before = engine.describe_source(&id).await?;
    assert_eq!(before.replication.state, ReplicationState::Continuous);
    clock.set(after(0.0));
    assert_eq!(engine.describe_source(&id).await?, before);
    engine
        .change_life_cycle(&id, LifeCycle::Disconnected)
        .await?;
    let actions = engine.actions();
    assert_eq!(actions.last().map(|a| a.at), Some(after(DAY)));
    Ok(())
}

#[tokio::test]
async fn the_instant_configuration_does_everything_within_the_call() -> TestResult {
    let (_clock, engine) = engine(SimConfig::instant(1));
    let server = engine
        .register_source(&spec("fast", 500 * GIB, 1e6))
        .await?;
    assert_eq!(server.replication.state, ReplicationState::Continuous);
    assert_eq!(server.life_cycle, LifeCycle::ReadyForTest);
    let job = launch(&engine, LaunchKind::Test, &server.id).await?;
    assert_eq!(job.status, replication::JobStatus::Completed);
    let target = engine
        .describe_target(&job.servers[0].target.clone().ok_or("no target")?)
        .await?;
    assert_eq!(target.health, Health::Ok);
    Ok(())
}

#[tokio::test]
async fn recovery_points_follow_the_retention_from_continuous_replication() -> TestResult {
    let (clock, engine) = engine(quiet(2));
    let id: SourceId = engine.register_source(&spec("db", GIB, 0.0)).await?.id;
    assert!(engine.recovery_points(&id).await?.is_empty());
    clock.set(after(3.0 * DAY + 25.0 * 60.0));
    let points = engine.recovery_points(&id).await?;
    let since = after(0.0);
    let now = after(3.0 * DAY + 25.0 * 60.0);
    let ages: Vec<f64> = points
        .iter()
        .map(|p| (now.as_second() - p.taken_at.as_second()) as f64)
        .collect();
    assert!(points.windows(2).all(|w| w[0].taken_at < w[1].taken_at));
    assert!(
        points
            .iter()
            .all(|p| p.taken_at > since && p.taken_at <= now)
    );
    assert!(points.iter().all(|p| p.taken_at.as_second() % 600 == 0));
    // 08:25 now: 07:30 to 08:20 every 10 minutes, 08:00 to 07:00 the day before hourly,
    // midnights since it became continuous (3 March to 5 March).
    let ten_minutes = ages.iter().filter(|&&age| age <= HOUR).count();
    let hourly = ages.iter().filter(|&&age| age > HOUR && age <= DAY).count();
    let daily = ages.iter().filter(|&&age| age > DAY).count();
    assert_eq!((ten_minutes, hourly, daily), (6, 23, 2), "{points:?}");

    let chosen = points[0].id.clone();
    let job = engine
        .start_launch(
            LaunchKind::Test,
            std::slice::from_ref(&id),
            &PointInTime::RecoveryPoint(chosen),
        )
        .await?;
    assert_eq!(job.servers.len(), 1);
    assert_refused(
        engine
            .start_launch(
                LaunchKind::Test,
                &[id],
                &PointInTime::RecoveryPoint("rp-1999-01-01T00:00:00Z".to_owned()),
            )
            .await,
        replication::ErrorKind::NotFound,
        "no recovery point",
    );
    Ok(())
}
