//! The crash test: `wavelift run` killed with SIGKILL at random moments and started
//! again, over and over, must end where an uninterrupted run ends, and must never have
//! repeated an action on the engine (a launch, a finalize, a termination, an archive).
//!
//! It starts nothing but the wavelift binary, in two copies of the quickstart on the
//! rehearsal engine: one run uninterrupted for reference, one killed and restarted.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::sim::{ActionRecord, ManualClock, SimConfig, SimEngine};
use wavelift_tests::{Scratch, quickstart_copy, wavelift, wavelift_command};

use crate::run::{status_tasks, task_states};

/// Seed of the rehearsal engine: with 6 the first test launches of payroll-app-01 and
/// shop-web-01 boot impaired, so even the reference run retries (and launches twice).
const SEED: u64 = 6;
/// Seed of the kill moments.
const KILL_SEED: u64 = 0x5eed_c4a5_0001;
const MIN_KILLS_MID_RUN: usize = 10;
/// A round is a fresh copy killed until a run finishes on its own; a round whose kills
/// came too late (a fast machine) is followed by one with shorter delays.
const ROUNDS: usize = 3;
const MAX_STARTS_PER_ROUND: usize = 150;
/// After this many kills in a round the next start is let finish (given [`PATIENCE`]):
/// on a loaded machine a start's own overhead can outlast every random delay.
const KILLS_PER_ROUND: usize = 60;
/// After this many starts in a row whose kill found the store unchanged, the next start
/// is given [`PATIENCE`] to finish on its own: a run that does not is stuck.
const STARTS_WITHOUT_PROGRESS: usize = 10;
/// An uninterrupted run takes a second or two.
const PATIENCE: Duration = Duration::from_secs(30);
const TIME_LIMIT: Duration = Duration::from_secs(300);
const SHORTEST_DELAY_MS: u64 = 5;
const LONGEST_DELAY_MS: u64 = 300;

/// splitmix64: the kill moments are the same on every run of the test.
struct Moments(u64);

impl Moments {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A delay between [`SHORTEST_DELAY_MS`] and `longest_ms`, both included.
    fn delay(&mut self, longest_ms: u64) -> Duration {
        let span = longest_ms.saturating_sub(SHORTEST_DELAY_MS) + 1;
        Duration::from_millis(SHORTEST_DELAY_MS + self.next() % span)
    }
}

fn run_args(with_paths: bool) -> Vec<String> {
    let mut args = vec!["run".to_owned()];
    if with_paths {
        args.push(".".to_owned());
    }
    args.extend(["--until-done", "--time-warp", "--seed"].map(str::to_owned));
    args.push(SEED.to_string());
    args
}

/// Every acting call the rehearsal engine of `dir` ever made, from its state file.
fn engine_actions(dir: &Path) -> Vec<ActionRecord> {
    let file = dir.join(".wavelift/sim-engine.json");
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::UNIX_EPOCH));
    let engine = SimEngine::open(SimConfig::rehearsal(SEED), clock, &file)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", file.display()));
    engine.actions()
}

/// The launch kind an action names (`test` or `cutover`), from its detail.
fn kind_of(detail: &str) -> &str {
    detail
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| *word == "test" || *word == "cutover")
        .unwrap_or("")
}

/// How often each server had each action that must happen at most once per task:
/// (server, action, kind) -> count.
fn once_only(actions: &[ActionRecord]) -> BTreeMap<(String, String, String), usize> {
    let mut counts = BTreeMap::new();
    for action in actions {
        let kind = match action.action.as_str() {
            "start_launch" | "terminate_targets" => kind_of(&action.detail),
            "finalize_cutover" | "archive" => "",
            _ => continue,
        };
        *counts
            .entry((
                action.source.clone(),
                action.action.clone(),
                kind.to_owned(),
            ))
            .or_default() += 1;
    }
    counts
}

fn show(actions: &[ActionRecord]) -> String {
    actions
        .iter()
        .map(|a| format!("  {} {:<18} {:<16} {}", a.at, a.action, a.source, a.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the store stood after a kill: no task stored yet (killed before the first
/// apply committed), some task not final (the run was cut short), or every task final
/// (killed while it printed the summary or closed).
fn landed(tasks: &BTreeMap<String, serde_json::Value>) -> &'static str {
    if tasks.is_empty() {
        return "before the first apply";
    }
    let unfinished = tasks.values().any(|t| {
        matches!(
            t["state"].as_str(),
            Some("pending" | "running" | "awaiting_approval")
        )
    });
    if unfinished {
        "mid-run"
    } else {
        "after the last task"
    }
}

#[derive(Debug, Default)]
struct Round {
    kills: BTreeMap<&'static str, usize>,
    /// Kills after which the store had changed since the kill before: the killed
    /// process had committed work of its own.
    with_progress: usize,
    starts_with_paths: usize,
    starts_without_paths: usize,
    finished_at_start: usize,
    /// How the run that finished on its own ended, and what it printed.
    finished_ok: bool,
    finish_log: String,
}

impl Round {
    fn mid_run(&self) -> usize {
        self.kills.get("mid-run").copied().unwrap_or(0)
    }
}

fn spawn(dir: &Path, logs: &Path, start: usize, with_paths: bool) -> Child {
    let log = |stream: &str| {
        let path = logs.join(format!("start-{start:03}.{stream}"));
        std::fs::File::create(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()))
    };
    wavelift_command(dir)
        .args(run_args(with_paths))
        .stdin(Stdio::null())
        .stdout(log("stdout"))
        .stderr(log("stderr"))
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"))
}

/// Waits until the child exits or `delay` has passed, then kills it with SIGKILL
/// (`Child::kill` on Unix). Returns how it ended and whether the kill ended it.
fn kill_after(child: &mut Child, delay: Duration) -> (ExitStatus, bool) {
    let started = Instant::now();
    while started.elapsed() < delay {
        match child.try_wait() {
            Ok(Some(status)) => return (status, false),
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(err) => panic!("cannot watch wavelift: {err}"),
        }
    }
    // The child may exit between the last look and the kill: its status tells.
    let _ = child.kill();
    let status = child
        .wait()
        .unwrap_or_else(|err| panic!("cannot wait for wavelift: {err}"));
    let killed = status.signal() == Some(9);
    (status, killed)
}

/// `status --json`'s tasks after a kill; none when the kill came before the database
/// was created (`status` then says there is no state yet).
fn tasks_after_kill(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let run = wavelift(dir, &["status", "--json"]);
    if run.code == 1 && run.stderr.starts_with("error: no Wavelift state at ") {
        return BTreeMap::new();
    }
    status_tasks(dir, &[])
}

fn logs_of(logs: &Path, start: usize) -> String {
    ["stdout", "stderr"]
        .iter()
        .map(|stream| {
            let path = logs.join(format!("start-{start:03}.{stream}"));
            format!(
                "--- {stream}\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills `wavelift run` in `dir` at moments drawn from `moments` until one run finishes
/// on its own. Restarts alternate between giving the PATHs again and giving none (once
/// a revision is stored).
fn kill_until_a_run_finishes(
    dir: &Path,
    logs: &Path,
    moments: &mut Moments,
    longest_ms: u64,
    deadline: Instant,
) -> Round {
    std::fs::create_dir_all(logs).unwrap_or_else(|err| panic!("cannot create logs: {err}"));
    let mut round = Round::default();
    let mut applied = false;
    let mut last_snapshot = String::new();
    let mut starts_without_progress = 0;
    for start in 0..MAX_STARTS_PER_ROUND {
        assert!(
            Instant::now() < deadline,
            "the crash test ran out of time after {start} starts: {round:?}"
        );
        let with_paths = start == 0 || !applied || start % 2 == 0;
        if with_paths {
            round.starts_with_paths += 1;
        } else {
            round.starts_without_paths += 1;
        }
        let mut child = spawn(dir, logs, start, with_paths);
        let stuck = starts_without_progress >= STARTS_WITHOUT_PROGRESS;
        let patient = stuck || start >= KILLS_PER_ROUND;
        let delay = if patient {
            PATIENCE
        } else {
            moments.delay(longest_ms)
        };
        let (status, killed) = kill_after(&mut child, delay);
        if killed && patient {
            let tasks = tasks_after_kill(dir);
            let why = if stuck {
                format!(
                    "after {STARTS_WITHOUT_PROGRESS} starts that changed nothing in the store, "
                )
            } else {
                format!("after {KILLS_PER_ROUND} kills, ")
            };
            panic!(
                "{why}start {start} did not finish in {} s either: a restarted run makes no progress ({round:?}); tasks left running: {:?}\nthe start printed:\n{}",
                PATIENCE.as_secs(),
                tasks
                    .iter()
                    .filter(|(_, t)| t["state"] == "running")
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
                logs_of(logs, start)
            );
        }
        if !killed {
            round.finished_ok = status.success();
            round.finish_log = format!(
                "start {start} ended on its own with {status}:\n{}",
                logs_of(logs, start)
            );
            round.finished_at_start = start;
            return round;
        }
        // The store must open and answer after every kill.
        let tasks = tasks_after_kill(dir);
        let snapshot = format!("{tasks:?}");
        if snapshot != last_snapshot && !tasks.is_empty() {
            round.with_progress += 1;
            starts_without_progress = 0;
        } else {
            starts_without_progress += 1;
        }
        last_snapshot = snapshot;
        applied |= !tasks.is_empty();
        *round.kills.entry(landed(&tasks)).or_default() += 1;
    }
    panic!("no run finished on its own in {MAX_STARTS_PER_ROUND} starts: {round:?}");
}

/// The uninterrupted run everything killed is compared with.
struct Reference {
    dir: PathBuf,
    states: BTreeMap<String, String>,
    actions: Vec<ActionRecord>,
    counts: BTreeMap<(String, String, String), usize>,
    time: Duration,
}

fn reference_run(folder: &Path) -> Reference {
    let dir = quickstart_copy(folder, "sim");
    let started = Instant::now();
    let args = run_args(true);
    let run = wavelift(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let time = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.describe());
    assert!(
        run.stdout.contains("every task is final"),
        "{}",
        run.describe()
    );
    let actions = engine_actions(&dir);
    let counts = once_only(&actions);
    assert!(
        counts.values().any(|n| *n > 1),
        "seed {SEED} was chosen for its retried boot tests:\n{}",
        show(&actions)
    );
    Reference {
        states: task_states(&dir),
        dir,
        actions,
        counts,
        time,
    }
}

/// The killed run in `dir` ended with the reference's task states, and its engine
/// repeated no action the reference did not repeat.
fn assert_ends_as(reference: &Reference, dir: &Path) {
    let states = task_states(dir);
    let differences: Vec<String> = reference
        .states
        .iter()
        .filter(|(id, state)| states.get(*id) != Some(*state))
        .map(|(id, state)| format!("{id}: {state} uninterrupted, {:?} killed", states.get(id)))
        .chain(
            states
                .keys()
                .filter(|id| !reference.states.contains_key(*id))
                .map(|id| format!("{id}: only in the killed run")),
        )
        .collect();
    assert!(
        differences.is_empty(),
        "the final states differ from the uninterrupted run's:\n  {}",
        differences.join("\n  ")
    );
    // Reports: the same events as the uninterrupted run, each at most once in the
    // outbox (a report whose attempt a kill cut short is delivered when its lease ends).
    let reports = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(".wavelift/outbox"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".eml"))
                    .map(|n| n.rsplit_once('-').map_or("", |(name, _)| name).to_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let outbox = reports(dir);
    let mut unique = outbox.clone();
    unique.dedup();
    assert_eq!(outbox, unique, "a report written twice to the outbox");
    let recorded = |dir: &Path| {
        wavelift(dir, &["status"])
            .stdout
            .lines()
            .find(|l| l.starts_with("reports: "))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    assert!(
        recorded(&reference.dir).is_some(),
        "the reference run made reports"
    );
    assert_eq!(
        recorded(dir),
        recorded(&reference.dir),
        "the killed run recorded other reports than the uninterrupted one"
    );
    let actions = engine_actions(dir);
    let count_in_reference = |key: &(String, String, String)| -> usize {
        reference.counts.get(key).copied().unwrap_or(0)
    };
    let repeated: Vec<String> = once_only(&actions)
        .into_iter()
        .filter(|(key, count)| *count > 1 && *count > count_in_reference(key))
        .map(|(key, count)| {
            format!(
                "{}: {} {} {count} times (uninterrupted: {})",
                key.0,
                key.1,
                key.2,
                count_in_reference(&key)
            )
        })
        .collect();
    assert!(
        repeated.is_empty(),
        "actions repeated after a kill:\n  {}\n\nthe killed run's engine log:\n{}\n\nthe uninterrupted run's engine log:\n{}",
        repeated.join("\n  "),
        show(&actions),
        show(&reference.actions)
    );
}

#[test]
fn a_run_killed_at_random_moments_ends_as_an_uninterrupted_one_and_repeats_no_action() {
    // Starts: the wavelift binary only (run, status), as a child process killed with
    // SIGKILL, in copies of the quickstart on the rehearsal engine.
    let scratch = Scratch::new("crash");
    let deadline = Instant::now() + TIME_LIMIT;
    let reference = reference_run(&scratch.path().join("reference"));

    // Kills spread over the first eighth of the reference run's time land before most
    // of the work is done, so many of them land mid-run.
    let mut longest_ms = u64::try_from(reference.time.as_millis() / 8)
        .unwrap_or(LONGEST_DELAY_MS)
        .clamp(30, LONGEST_DELAY_MS);
    let mut moments = Moments(KILL_SEED);
    for attempt in 0..ROUNDS {
        let folder: PathBuf = scratch.path().join(format!("killed-{attempt}"));
        let dir = quickstart_copy(&folder, "sim");
        let round = kill_until_a_run_finishes(
            &dir,
            &folder.join("logs"),
            &mut moments,
            longest_ms,
            deadline,
        );
        let kills: usize = round.kills.values().sum();
        println!(
            "crash round {attempt} (reference run {:.2}s, delays {SHORTEST_DELAY_MS}..={longest_ms} ms): {kills} kills, {} landed mid-run ({:?}; {} after the killed process had committed work); {} starts with PATHs, {} without; start {} finished on its own",
            reference.time.as_secs_f64(),
            round.mid_run(),
            round.kills,
            round.with_progress,
            round.starts_with_paths,
            round.starts_without_paths,
            round.finished_at_start,
        );
        assert_ends_as(&reference, &dir);
        assert!(round.finished_ok, "{}", round.finish_log);
        assert!(
            round.finish_log.contains("every task is final"),
            "{}",
            round.finish_log
        );
        if round.mid_run() >= MIN_KILLS_MID_RUN {
            return;
        }
        longest_ms = (longest_ms / 3).max(SHORTEST_DELAY_MS + 25);
    }
    panic!(
        "fewer than {MIN_KILLS_MID_RUN} kills landed mid-run in {ROUNDS} rounds: the run is too fast for these delays"
    );
}

/// Journal records of the engine calls that act on a server, as the rehearsal engine
/// writes them (`"call":{"start_launch":...}`).
const ACTING_CALLS: [&str; 5] = [
    "{\"start_launch\"",
    "{\"terminate_targets\"",
    "{\"finalize_cutover\"",
    "{\"archive\"",
    "{\"change_life_cycle\"",
];

/// Watches the engine's journal until the child makes an acting call (synced to the
/// journal before the call returns), waits `delay`, and kills the child: the moment
/// between an action and the record of it in the store. Returns how the child ended,
/// whether the kill ended it, and the call it was killed after.
fn kill_after_next_action(
    child: &mut Child,
    journal: &Path,
    delay: Duration,
) -> (ExitStatus, bool, Option<String>) {
    let mut offset = std::fs::metadata(journal).map_or(0, |m| m.len());
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (status, false, None);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the run neither acted on the engine nor ended in {} s: it is stuck (see a_restarted_run_takes_over_the_tasks_a_killed_run_held)",
                PATIENCE.as_secs()
            );
        }
        let text = std::fs::read(journal).unwrap_or_default();
        let length = text.len() as u64;
        if length < offset {
            // A snapshot emptied the journal.
            offset = 0;
        }
        let fresh = &text[usize::try_from(offset).unwrap_or(0).min(text.len())..];
        // Only whole lines: a line is written with its newline, and synced.
        let whole = fresh
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(&fresh[..0], |end| &fresh[..=end]);
        offset += whole.len() as u64;
        let acted = String::from_utf8_lossy(whole)
            .lines()
            .find(|line| ACTING_CALLS.iter().any(|call| line.contains(call)))
            .map(str::to_owned);
        if let Some(call) = acted {
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child
                .wait()
                .unwrap_or_else(|err| panic!("cannot wait for wavelift: {err}"));
            return (status, status.signal() == Some(9), Some(call));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_run_killed_just_after_each_engine_action_repeats_none() {
    // Starts: the wavelift binary only (run, status), as a child process killed with
    // SIGKILL within 3 ms after each action it takes on the rehearsal engine (read from
    // the engine's journal), in copies of the quickstart on the rehearsal engine.
    let scratch = Scratch::new("crash-after-action");
    let deadline = Instant::now() + TIME_LIMIT;
    let reference = reference_run(&scratch.path().join("reference"));
    let folder = scratch.path().join("killed");
    let dir = quickstart_copy(&folder, "sim");
    let logs = folder.join("logs");
    std::fs::create_dir_all(&logs).unwrap_or_else(|err| panic!("cannot create logs: {err}"));
    let journal = dir.join(".wavelift/sim-engine.json.journal");
    let mut moments = Moments(KILL_SEED ^ 0xac7);
    let mut kills = Vec::new();
    for start in 0..MAX_STARTS_PER_ROUND {
        assert!(
            Instant::now() < deadline,
            "the crash test ran out of time after {start} starts"
        );
        let mut child = spawn(&dir, &logs, start, start % 2 == 0);
        let delay = Duration::from_micros(moments.next() % 3000);
        let (status, killed, call) = kill_after_next_action(&mut child, &journal, delay);
        if !killed {
            println!(
                "crash after actions: {} kills, each within 3 ms after an engine action; start {start} finished on its own",
                kills.len()
            );
            assert_ends_as(&reference, &dir);
            assert!(
                status.success(),
                "start {start} ended on its own with {status}:\n{}",
                logs_of(&logs, start)
            );
            assert!(kills.len() >= MIN_KILLS_MID_RUN, "{kills:#?}");
            return;
        }
        kills.push(call.unwrap_or_default());
    }
    panic!("no run finished on its own in {MAX_STARTS_PER_ROUND} starts");
}

/// Tasks that finish in one step: one of them `running` after a kill was held (leased)
/// by the killed process.
const ONE_STEP_KINDS: [&str; 3] = ["prereq_check", "agent_push", "cmdb_cleanup"];

#[test]
fn a_restarted_run_takes_over_the_tasks_a_killed_run_held() {
    // Starts: the wavelift binary only (apply, run, status), `run` as a child process
    // killed with SIGKILL while it holds tasks, then once more to the end, in copies of
    // the quickstart on the rehearsal engine.
    let scratch = Scratch::new("lease");
    for attempt in 0..30u64 {
        let folder = scratch.path().join(format!("attempt-{attempt}"));
        let dir = quickstart_copy(&folder, "sim");
        let logs = folder.join("logs");
        std::fs::create_dir_all(&logs).unwrap_or_else(|err| panic!("cannot create logs: {err}"));
        // The database is made first, so that only `run` is killed.
        let apply = wavelift(&dir, &["apply", "."]);
        assert_eq!(apply.code, 0, "{}", apply.describe());
        let mut child = spawn(&dir, &logs, 0, false);
        let (status, killed) = kill_after(&mut child, Duration::from_millis(10 + 5 * attempt));
        if !killed {
            assert!(status.success(), "{}", logs_of(&logs, 0));
            continue;
        }
        let held: Vec<String> = status_tasks(&dir, &[])
            .into_iter()
            .filter(|(_, t)| {
                t["state"] == "running"
                    && t["kind"]
                        .as_str()
                        .is_some_and(|k| ONE_STEP_KINDS.contains(&k))
            })
            .map(|(id, _)| id)
            .collect();
        if held.is_empty() {
            continue;
        }
        // The killed process's leases expire a minute later in warped time; the next
        // run must jump there and take the tasks over. An uninterrupted run takes a
        // second or two.
        let mut child = spawn(&dir, &logs, 1, false);
        let (status, killed) = kill_after(&mut child, PATIENCE);
        assert!(
            !killed,
            "the run restarted after a kill did not finish in {} s: it never takes over {held:?}, which the killed run held ({:?} still running). The warped clock stops at the leases' expiry (next_due), where the claim still wants `lease_expires_at < now`, so the executor spins without end.\n{}",
            PATIENCE.as_secs(),
            status_tasks(&dir, &[])
                .into_iter()
                .filter(|(_, t)| t["state"] == "running")
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            logs_of(&logs, 1)
        );
        assert!(status.success(), "{}", logs_of(&logs, 1));
        let states = task_states(&dir);
        for id in &held {
            assert_eq!(states[id], "succeeded", "{id}");
        }
        return;
    }
    panic!("no kill in 30 attempts landed while the run held a one-step task");
}

/// Kills 0, 0.5, 1, ... ms after the database's first write.
const ATTEMPTS_IN_THE_SCHEMA: u64 = 30;

#[test]
fn a_run_killed_while_it_creates_the_database_can_be_started_again() {
    // Starts: the wavelift binary only (run, apply), `run` as a child process killed with
    // SIGKILL just after the database's first write (while the schema is being created),
    // in copies of the quickstart on the rehearsal engine.
    let scratch = Scratch::new("schema");
    for attempt in 0..ATTEMPTS_IN_THE_SCHEMA {
        let folder = scratch.path().join(format!("attempt-{attempt}"));
        let dir = quickstart_copy(&folder, "sim");
        let logs = folder.join("logs");
        std::fs::create_dir_all(&logs).unwrap_or_else(|err| panic!("cannot create logs: {err}"));
        // SQLite makes the write-ahead log at the first write: the first table of the
        // schema. Making the rest takes some milliseconds (each table is synced).
        let log = dir.join(".wavelift/state.db-wal");
        let mut child = spawn(&dir, &logs, 0, true);
        let started = Instant::now();
        while !log.exists() && started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(500 * attempt));
        let _ = child.kill();
        let status = child
            .wait()
            .unwrap_or_else(|err| panic!("cannot wait for wavelift: {err}"));
        if status.signal() != Some(9) {
            continue;
        }
        // What a user does next: apply again. The database must take it, however far
        // the schema had come.
        let apply = wavelift(&dir, &["apply", "."]);
        assert_eq!(
            apply.code,
            0,
            "killed {:.1} ms after the database's first write, the state cannot be used any more; the schema migration is not one transaction on SQLite (sea-orm-migration wraps migrations in a transaction only on PostgreSQL), so a half-made schema stays behind without its seaql_migrations record:\n{}",
            0.5 * attempt as f64,
            apply.describe()
        );
    }
}
