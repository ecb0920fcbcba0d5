//! Durable mode: reopening after every call changes nothing, actions survive a crash,
//! damage is a clear error, a new configuration applies from the moment it opens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use replication::sim::{ManualClock, SimConfig, SimEngine};
use replication::{
    ErrorKind, JobId, LaunchKind, LifeCycle, PointInTime, ReplicationEngine, ReplicationState,
    SourceId, SourceSpec, TargetId,
};

use super::*;

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("wavelift-sim-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temporary folder");
        TempDir(path)
    }

    fn state(&self) -> PathBuf {
        self.0.join("sim.json")
    }

    fn journal(&self) -> PathBuf {
        self.0.join("sim.json.journal")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(
    config: &SimConfig,
    clock: &Arc<ManualClock>,
    path: &Path,
) -> Result<SimEngine, replication::EngineError> {
    SimEngine::open(config.clone(), clock.clone(), path)
}

#[derive(Debug, Clone)]
enum Step {
    Register(SourceSpec),
    Wait(f64),
    Launch(LaunchKind, Vec<usize>),
    Terminate(usize, LaunchKind),
    Change(usize, LifeCycle),
    Finalize(usize),
    Archive(usize),
}

fn source(n: usize) -> SourceId {
    SourceId(format!("sim-source-{}", n + 1))
}

async fn run(engine: &SimEngine, clock: &ManualClock, step: &Step) -> String {
    match step {
        Step::Register(spec) => format!("{:?}", engine.register_source(spec).await),
        Step::Wait(seconds) => {
            clock.advance(*seconds);
            String::new()
        }
        Step::Launch(kind, servers) => {
            let ids: Vec<_> = servers.iter().map(|&n| source(n)).collect();
            format!(
                "{:?}",
                engine.start_launch(*kind, &ids, &PointInTime::Latest).await
            )
        }
        Step::Terminate(n, kind) => {
            format!("{:?}", engine.terminate_targets(&source(*n), *kind).await)
        }
        Step::Change(n, state) => {
            format!("{:?}", engine.change_life_cycle(&source(*n), *state).await)
        }
        Step::Finalize(n) => format!("{:?}", engine.finalize_cutover(&source(*n)).await),
        Step::Archive(n) => format!("{:?}", engine.archive(&source(*n)).await),
    }
}

/// Everything the engine shows: every server, job and target, the recovery points,
/// the actions.
async fn observe(engine: &SimEngine) -> String {
    let mut shown = Vec::new();
    for n in 0.. {
        let Ok(server) = engine.describe_source(&source(n)).await else {
            break;
        };
        shown.push(format!("{server:?}"));
        shown.push(format!("{:?}", engine.recovery_points(&source(n)).await));
        shown.push(format!("{:?}", engine.jobs_for_source(&source(n)).await));
    }
    for n in 1.. {
        let Ok(job) = engine.describe_job(&JobId(format!("sim-job-{n}"))).await else {
            break;
        };
        shown.push(format!("{job:?}"));
    }
    for n in 1.. {
        let Ok(target) = engine
            .describe_target(&TargetId(format!("sim-target-{n}")))
            .await
        else {
            break;
        };
        shown.push(format!("{target:?}"));
    }
    shown.push(format!("{:?}", engine.actions()));
    shown.join("\n")
}

fn script() -> Vec<Step> {
    use LaunchKind::{Cutover, Test};
    use LifeCycle::{Disconnected, ReadyForCutover};
    let mut steps: Vec<Step> = fleet(6).into_iter().map(Step::Register).collect();
    steps.extend([
        Step::Wait(600.0),
        Step::Launch(Test, vec![0]),
        Step::Wait(3.0 * HOUR),
        Step::Register(spec("late", 3 * GIB, 1000.0)),
        Step::Wait(20.0 * HOUR),
        Step::Launch(Test, vec![0, 1, 2]),
        Step::Wait(1000.0),
        Step::Terminate(0, Test),
        Step::Change(0, ReadyForCutover),
        Step::Change(1, ReadyForCutover),
        Step::Launch(Cutover, vec![0, 1]),
        Step::Terminate(0, Cutover),
        Step::Wait(1000.0),
        Step::Finalize(0),
        Step::Change(1, ReadyForCutover),
        Step::Terminate(1, Cutover),
        Step::Change(3, Disconnected),
        Step::Archive(3),
        Step::Wait(2.0 * DAY),
        Step::Archive(0),
        Step::Change(6, Disconnected),
    ]);
    steps
}

#[tokio::test]
async fn reopening_after_every_call_gives_the_same_answers() -> TestResult {
    let folder = TempDir::new("reopen");
    let config = SimConfig::rehearsal(21);
    let clock = clock();
    let reference = SimEngine::new(config.clone(), clock.clone());
    let mut durable = open(&config, &clock, &folder.state())?;
    for (n, step) in script().iter().enumerate() {
        let expected = run(&reference, &clock, step).await;
        let (clock_before, answer) = (clock.now(), run(&durable, &clock, step).await);
        if matches!(step, Step::Wait(_)) {
            // Both engines share the clock: undo the second wait.
            clock.set(clock_before);
        }
        assert_eq!(answer, expected, "step {n}: {step:?}");
        drop(durable);
        durable = open(&config, &clock, &folder.state())?;
        assert_eq!(
            observe(&durable).await,
            observe(&reference).await,
            "after step {n}: {step:?}"
        );
    }
    let actions = durable.actions();
    assert!(actions.len() > 15, "{actions:?}");
    assert!(actions.iter().any(|a| a.action == "finalize_cutover"));
    Ok(())
}

use replication::Clock;

/// A crash: the engine that acted is never closed; another opens the files as a
/// restarted process would.
#[tokio::test]
async fn actions_survive_a_crash() -> TestResult {
    let folder = TempDir::new("crash");
    let config = SimConfig::rehearsal(5);
    let clock = clock();
    let crashed = open(&config, &clock, &folder.state())?;
    for step in script() {
        run(&crashed, &clock, &step).await;
    }
    let restarted = open(&config, &clock, &folder.state())?;
    assert_eq!(restarted.actions(), crashed.actions());
    assert_eq!(observe(&restarted).await, observe(&crashed).await);
    // Calls are counted per process; actions are kept for good.
    assert_eq!(crashed.calls().get("register_source"), Some(&7));
    assert_eq!(restarted.calls().get("register_source"), None);
    assert!(restarted.calls().get("describe_source") > Some(&0));
    Ok(())
}

#[tokio::test]
async fn a_missing_file_is_an_empty_engine_and_damage_is_an_error_naming_the_file() -> TestResult {
    let folder = TempDir::new("damage");
    let config = quiet(1);
    let clock = clock();
    let engine = open(&config, &clock, &folder.state())?;
    assert!(engine.actions().is_empty());
    assert!(folder.state().exists(), "the state file is created at once");
    engine.register_source(&spec("one", GIB, 0.0)).await?;
    engine.register_source(&spec("two", GIB, 0.0)).await?;
    drop(engine);

    // A write cut short by a crash: never acknowledged, dropped.
    fs::OpenOptions::new()
        .append(true)
        .open(folder.journal())?
        .write_all(b"{\"seq\":3,\"at\":")?;
    let engine = open(&config, &clock, &folder.state())?;
    assert_eq!(engine.actions().len(), 2);
    engine.register_source(&spec("three", GIB, 0.0)).await?;
    drop(engine);
    assert_eq!(open(&config, &clock, &folder.state())?.actions().len(), 3);

    let journal = fs::read(folder.journal())?;
    fs::OpenOptions::new()
        .append(true)
        .open(folder.journal())?
        .write_all(b"not json\n")?;
    let error = open(&config, &clock, &folder.state())
        .err()
        .ok_or("damaged journal opened")?;
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert!(
        error
            .message
            .contains(&folder.journal().display().to_string()),
        "{error}"
    );
    assert!(error.message.contains("line 4"), "{error}");
    fs::write(folder.journal(), journal)?;

    for damage in [
        "{not json",
        "{}",
        "",
        "{\"format\":\"other\",\"version\":1,\"journal_seq\":0,\"state\":null}",
    ] {
        fs::write(folder.state(), damage)?;
        let error = open(&config, &clock, &folder.state())
            .err()
            .ok_or("damaged file opened")?;
        assert_eq!(error.kind, ErrorKind::Invalid, "{damage}: {error}");
        assert!(
            error
                .message
                .contains(&folder.state().display().to_string()),
            "{error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn snapshots_fold_the_journal_and_lose_nothing() -> TestResult {
    let folder = TempDir::new("snapshot");
    let config = SimConfig::rehearsal(13);
    let clock = clock();
    let engine = open(&config, &clock, &folder.state())?;
    let specs: Vec<_> = (0..2500)
        .map(|n| spec(&format!("s-{n:04}"), GIB, 10.0))
        .collect();
    let started = std::time::Instant::now();
    let ids = register_all(&engine, &specs).await?;
    println!("2500 durable registrations: {:?}", started.elapsed());
    clock.advance(DAY);
    let before = describe_all(&engine, &ids).await?;
    let journal_lines = fs::read(folder.journal())?
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    assert!(
        journal_lines < 1000,
        "a snapshot emptied the journal ({journal_lines} lines)"
    );
    drop(engine);
    let engine = open(&config, &clock, &folder.state())?;
    assert_eq!(describe_all(&engine, &ids).await?, before);
    assert_eq!(engine.actions().len(), 2500);
    Ok(())
}

#[tokio::test]
async fn a_new_configuration_applies_from_the_moment_it_opens() -> TestResult {
    let folder = TempDir::new("reconfigure");
    let slow = SimConfig {
        compression: 1.0,
        ..quiet(1)
    };
    let fast = SimConfig {
        bandwidth_bits_per_second: 2_000_000_000,
        ..slow.clone()
    };
    let clock = clock();
    let engine = open(&slow, &clock, &folder.state())?;
    let a = engine.register_source(&spec("a", 10 * GIB, 0.0)).await?.id;
    engine.register_source(&spec("b", 10 * GIB, 0.0)).await?;
    clock.set(after(400.0));
    engine.describe_source(&a).await?;
    drop(engine);

    // 100 s at half of 1 Gbit/s each, then half of 2 Gbit/s each.
    let engine = open(&fast, &clock, &folder.state())?;
    let done = 400.0 + ((10 * GIB) as f64 * 8.0 - 50e9) / 1e9;
    clock.set(after(done - 0.001));
    assert_eq!(state_of(&engine, &a).await?, ReplicationState::InitialSync);
    clock.set(after(done + 0.001));
    assert_eq!(
        state_of(&engine, &a).await?,
        ReplicationState::CreatingSnapshot
    );
    assert_eq!(engine.actions().len(), 2);
    Ok(())
}

/// Damage anywhere in a state file never panics the engine: it refuses the file, or
/// opens it and answers.
#[tokio::test]
async fn damaged_state_files_never_panic() -> TestResult {
    let folder = TempDir::new("hostile");
    let config = SimConfig::rehearsal(17);
    let clock = clock();
    let engine = open(&config, &clock, &folder.state())?;
    for step in script() {
        run(&engine, &clock, &step).await;
    }
    drop(engine);
    // Fold the journal into the state file, then damage the state file alone.
    drop(open(&SimConfig::rehearsal(18), &clock, &folder.state())?);
    let valid = fs::read(folder.state())?;
    let (mut opened, mut refused) = (0, 0);
    for position in (0..valid.len()).step_by(41) {
        for replacement in [b'0', b'9', b'-', b'"', b'}', b'e'] {
            let mut damaged = valid.clone();
            damaged[position] = replacement;
            fs::write(folder.state(), &damaged)?;
            let _ = fs::remove_file(folder.journal());
            match open(&config, &clock, &folder.state()) {
                Ok(engine) => {
                    opened += 1;
                    clock.advance(HOUR);
                    observe(&engine).await;
                    run(&engine, &clock, &Step::Launch(LaunchKind::Test, vec![1, 2])).await;
                    run(&engine, &clock, &Step::Change(4, LifeCycle::Disconnected)).await;
                }
                Err(error) => {
                    refused += 1;
                    assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
                }
            }
        }
    }
    assert!(
        opened > 100 && refused > 100,
        "{opened} opened, {refused} refused"
    );
    Ok(())
}
