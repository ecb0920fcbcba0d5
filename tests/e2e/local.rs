//! The local engine end to end: the quickstart as shipped (but for the go its cutovers
//! wait for, given between two runs), whose source servers are ext4
//! disk images on this machine that its lab script makes and writes to, replicated by
//! real `wavelift-agent` processes to the replication server inside `wavelift run` and
//! cut over as images, then one server failed back onto its own image through a
//! `wavelift replicator` that holds the engine meanwhile; an agent killed with SIGKILL
//! and started again, which goes on
//! from its last recovery point instead of sending the disk again; a failback whose
//! copy's chunks are damaged in the store while it restores; and an agent in a network
//! namespace whose link goes down and comes back.
//!
//! Starts: the wavelift binary (run, events, replicator, failover, failback) and, through each server's agent_push, one
//! wavelift-agent per server, on a loopback port of the test's own; mkfs.ext4, debugfs
//! and e2fsck (e2fsprogs) make and check the images. The other tests start the local
//! engine in the test process and the wavelift-agent binary beside wavelift; the last one
//! makes a network namespace and a veth pair (iproute2, as root) and runs the agent in it.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::local::{LocalConfig, LocalEngine};
use replication::{
    DiskSpec, JobStatus, LaunchKind, LaunchStatus, PointInTime, ReplicationEngine,
    ReplicationState, SourceSpec, SystemClock,
};
use wavelift_tests::{Scratch, edit, quickstart_copy, wavelift, wavelift_binary};

const SERVERS: [&str; 8] = [
    "dir-01",
    "dir-02",
    "payroll-app-01",
    "payroll-db-01",
    "shop-web-01",
    "shop-web-02",
    "shop-catalog-01",
    "shop-batch-01",
];

fn tool(program: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program} (e2fsprogs): {err}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn the_quickstart_cuts_over_its_disk_images_on_the_local_engine_and_a_server_fails_back() {
    let scratch = Scratch::new("local-quickstart");
    let dir = quickstart_copy(scratch.path(), "local");
    // With the go asked for, the run stops at wave-1's gate; the go is given and the run
    // started again after a pause, while the agents try to reach the ended run's server
    // (at most 10 s apart). The warped clock waits for them: it used to run the cutovers'
    // final syncs out to their timeout in a few seconds, rolling every cutover back.
    edit(
        &dir.join("wavelift.yaml"),
        "approval: false",
        "approval: true",
    );
    let first = wavelift(&dir, &["run", ".", "--until-done", "--time-warp"]);
    assert!(
        first.stdout.contains("cutover gate(s) wait for a go"),
        "{}",
        first.describe()
    );
    // The agents outlive the run, each in a session of its own: a signal to the run's
    // process group (a `timeout` around it) does not reach them.
    let agents = dir.join(".wavelift/staging/agents");
    let mut pids = 0;
    for entry in fs::read_dir(&agents)
        .expect("the agents' folders")
        .flatten()
    {
        let Ok(pid) = fs::read_to_string(entry.path().join("agent.pid")) else {
            continue;
        };
        let pid = pid.trim();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp session ...: after the last `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(fields.get(3).copied(), Some(pid), "agent {pid}: {stat}");
        pids += 1;
    }
    assert_eq!(pids, SERVERS.len(), "every agent runs after the first run");
    for wave in ["wave-1", "wave-2"] {
        let go = wavelift(&dir, &["approve", wave, "--by", "alice"]);
        assert_eq!(go.code, 0, "{}", go.describe());
    }
    std::thread::sleep(Duration::from_secs(12));
    let run = wavelift(&dir, &["run", "--until-done", "--time-warp"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    for line in [
        "wave-1: 26 of 26 tasks final (26 succeeded)",
        "wave-2: 25 of 25 tasks final (1 skipped, 24 succeeded)",
    ] {
        assert!(run.stdout.contains(line), "{line}\n{}", run.describe());
    }
    assert!(
        !run.stdout.to_lowercase().contains("rehearsal")
            && !run.stderr.to_lowercase().contains("rehearsal"),
        "nothing of a real run is labelled a rehearsal\n{}",
        run.describe()
    );
    let state = dir.join(".wavelift");
    for server in SERVERS {
        // The test copy was replaced and terminated; the cutover copy stays.
        let launches: Vec<String> = fs::read_dir(state.join("targets").join(server))
            .unwrap_or_else(|err| panic!("{server} has no targets: {err}"))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(
            launches.len() == 1 && launches[0].starts_with("cutover-job-"),
            "{server}: {launches:?}"
        );
        let image = state
            .join("targets")
            .join(server)
            .join(&launches[0])
            .join("disk0.raw");
        let path = image.display().to_string();
        let (clean, said) = tool("e2fsck", &["-fn", &path]);
        assert!(
            clean,
            "{server}'s cutover copy is a clean filesystem:\n{said}"
        );
        let (_, hostname) = tool("debugfs", &["-R", "cat /etc/hostname", &path]);
        assert_eq!(hostname.trim(), server, "{server}'s copy holds its files");
        // Finalize stopped the agent.
        let logs: Vec<_> = fs::read_dir(state.join("staging/agents"))
            .expect("the agents' folders")
            .filter_map(|e| e.ok())
            .map(|e| fs::read_to_string(e.path().join("agent.log")).unwrap_or_default())
            .collect();
        assert_eq!(logs.len(), SERVERS.len());
        assert!(
            logs.iter().all(|log| log
                .trim_end()
                .ends_with("replication stopped by the server")),
            "every agent was stopped at finalize: {logs:?}"
        );
    }
    // The reports are the real thing, and the CMDB retired every server.
    for entry in fs::read_dir(state.join("outbox")).expect("the outbox") {
        let mail = fs::read_to_string(entry.expect("a report").path()).unwrap_or_default();
        assert!(!mail.contains("Subject: REHEARSAL"), "{mail}");
    }
    let cmdb = fs::read_to_string(state.join("cmdb.yaml")).expect("the CMDB file");
    assert!(cmdb.matches("retired").count() >= SERVERS.len(), "{cmdb}");
    // Each launch and finalize is in the job log, once per server and kind.
    let events = wavelift(&dir, &["events", "--json"]);
    for server in SERVERS {
        let finalized = events
            .stdout
            .lines()
            .filter(|l| {
                l.contains(&format!("\"server\":\"{server}\"")) && l.contains("finalize_cutover")
            })
            .count();
        assert_eq!(finalized, 1, "{server} finalized once:\n{}", events.stdout);
    }
    // Each report is delivered when it is recorded, in the warped run's time: not before
    // (the wall clock is years behind the quickstart's waves), nor hours of warped time
    // later (the clock waits for the delivery); the event's details are JSON, the
    // report's id among them.
    let logged: Vec<serde_json::Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("events --json prints JSON lines"))
        .collect();
    let recorded: std::collections::HashMap<i64, i64> = logged
        .iter()
        .filter(|e| e["kind"] == "report.recorded")
        .map(|e| {
            (
                e["data"]["report"].as_i64().expect("a report id"),
                e["at"].as_i64().expect("at"),
            )
        })
        .collect();
    let delivered: Vec<&serde_json::Value> = logged
        .iter()
        .filter(|e| e["kind"] == "report.delivered")
        .collect();
    assert_eq!(delivered.len(), recorded.len(), "{}", events.stdout);
    for event in delivered {
        let report = event["data"]["report"].as_i64().expect("a report id");
        let made = recorded.get(&report).copied().unwrap_or(i64::MAX);
        let at = event["at"].as_i64().unwrap_or(i64::MIN);
        assert!(
            (made..=made + 3_600_000).contains(&at),
            "delivered {} s of the run's time after it was recorded: {event}",
            (at - made) / 1000
        );
    }

    // dir-01 fails back: its writer stopped, a file written into its cutover copy (as
    // the migrated server would), the source gets the copy's state through its `local`
    // access method, then replicates again.
    let source = state.join("disks/dir-01-vda.img");
    let writer =
        fs::read_to_string(state.join("disks/dir-01-vda.img.writer.pid")).unwrap_or_default();
    let _ = std::process::Command::new("kill")
        .arg(writer.trim())
        .status();
    wait_for("the writer stopped", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{}", writer.trim())).exists()
    });
    let copy_dir = fs::read_dir(state.join("targets/dir-01"))
        .expect("the copies")
        .find_map(|e| e.ok().map(|e| e.path()))
        .expect("the cutover copy");
    let copy = copy_dir.join("disk0.raw");
    let note = dir.join("after-cutover.txt");
    fs::write(&note, "written on the migrated server\n").expect("a note");
    let (wrote, said) = tool(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("write {} /after-cutover.txt", note.display()),
            &copy.display().to_string(),
        ],
    );
    assert!(wrote, "{said}");
    let changed = fs::read(&copy).expect("the changed copy");
    // The failback goes through `wavelift replicator`, which holds the staging folder
    // and the replication port as a service would (as `serve` does while it runs).
    let replicator = Replicator::start(&dir, &state.join("staging"));
    let warped = wavelift(&dir, &["run", "--until-done", "--time-warp"]);
    assert!(
        warped.code != 0
            && warped.stderr.contains(&format!(
                "runs in process {} (wavelift replicator, serve or run)",
                replicator.child.id()
            ))
            && warped.stderr.contains("needs the engine to itself"),
        "a warped run refuses another process's engine\n{}",
        warped.describe()
    );
    // With the definitions to apply first: refused before anything is stored.
    let revisions = || {
        wavelift(&dir, &["events", "--json"])
            .stdout
            .matches("\"kind\":\"operator.apply\"")
            .count()
    };
    let before = revisions();
    let applying = wavelift(&dir, &["run", ".", "--until-done", "--time-warp"]);
    assert!(
        applying.code != 0
            && applying
                .stderr
                .contains("nothing applied: the local engine of ")
            && applying.stderr.contains("needs the engine to itself"),
        "{}",
        applying.describe()
    );
    assert_eq!(revisions(), before, "no revision stored");
    let points = wavelift(&dir, &["failover", "dir-01", "--list"]);
    assert!(
        points.code == 0 && points.stdout.contains("rp-"),
        "the points, from the replicator's engine\n{}",
        points.describe()
    );
    // A server cut over (and archived after its hypercare) is failed back before it is
    // failed over again: said, and nothing launched.
    let refused = wavelift(&dir, &["failover", "dir-01", "--point", "rp-1"]);
    assert!(
        refused.code != 0
            && refused.stderr.contains(
                "dir-01 is cut over already (Archived): its source replicates no more; to launch it again from one of its points, fail it back first (wavelift failback dir-01)"
            ),
        "{}",
        refused.describe()
    );
    let failback = wavelift(&dir, &["failback", "dir-01", "--wait", "2m"]);
    assert_eq!(failback.code, 0, "{}", failback.describe());
    assert!(
        failback.stdout.contains("dir-01 failed back: ")
            && failback
                .stdout
                .contains("replicating in the normal direction again"),
        "{}",
        failback.describe()
    );
    assert!(
        fs::read(&source).expect("the source") == changed,
        "the source is its copy, byte for byte"
    );
    assert!(!copy_dir.exists(), "the copy was terminated");
    let (_, held) = tool(
        "debugfs",
        &[
            "-R",
            "cat /after-cutover.txt",
            &source.display().to_string(),
        ],
    );
    assert_eq!(
        held.trim(),
        "written on the migrated server",
        "the source holds what the copy wrote"
    );
    let (clean, said) = tool("e2fsck", &["-fn", &source.display().to_string()]);
    assert!(
        clean,
        "the failed-back source is a clean filesystem:\n{said}"
    );
    assert!(
        failback.stderr.contains(&format!(
            "the local engine is process {}'s",
            replicator.child.id()
        )),
        "the failback said whose engine it used\n{}",
        failback.describe()
    );
    // The cutover report made now says where dir-01 is since its failback.
    let report = wavelift(&dir, &["report", "wave-1", "--kind", "cutover"]);
    assert_eq!(report.code, 0, "{}", report.describe());
    assert!(
        report.stdout.lines().any(|l| l.starts_with("  since: ")
            && l.ends_with(": failed back, on its source again and ready for cutover"))
            && report
                .stdout
                .contains("- 1 failed back since, on their sources again"),
        "{}",
        report.describe()
    );
    // The replicator ends on SIGTERM and takes its control file with it.
    replicator.stop();
    assert!(
        !state.join("staging/control.json").exists(),
        "the control file went with the replicator"
    );
    // Its agent, installed again, ends with the test.
    let _ = std::process::Command::new("pkill")
        .args(["-f", &state.join("staging").display().to_string()])
        .status();
}

/// `wavelift replicator .` in the background, until [`Replicator::stop`] or the test's end.
struct Replicator {
    child: std::process::Child,
}

impl Replicator {
    fn start(dir: &std::path::Path, staging: &std::path::Path) -> Replicator {
        let child = wavelift_tests::wavelift_command(dir)
            .args(["replicator", "."])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wavelift replicator starts");
        let replicator = Replicator { child };
        let control = staging.join("control.json");
        wait_for(
            "the replicator's control file",
            Duration::from_secs(30),
            || {
                fs::read_to_string(&control)
                    .is_ok_and(|c| c.contains(&format!("\"pid\":{}", replicator.child.id())))
            },
        );
        replicator
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let mut ended = None;
        wait_for("the replicator to end", Duration::from_secs(30), || {
            ended = self.child.try_wait().ok().flatten();
            ended.is_some()
        });
        assert!(
            ended.is_some_and(|status| status.success()),
            "the replicator ends cleanly on SIGTERM: {ended:?}"
        );
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_binary() -> std::path::PathBuf {
    wavelift_binary().with_file_name("wavelift-agent")
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

/// The local engine in the test process with one registered source (`db-01`, a 32 MiB
/// image, half of it data that does not compress), its agent's install issued.
struct Rig {
    runtime: tokio::runtime::Runtime,
    engine: LocalEngine,
    source: replication::SourceServer,
    facts: std::collections::BTreeMap<String, serde_json::Value>,
    dir: std::path::PathBuf,
    image: std::path::PathBuf,
}

impl Rig {
    fn new(dir: &std::path::Path, listen: &str) -> Rig {
        let image = dir.join("db-01.img");
        let mut bytes = vec![0u8; 32 << 20];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for byte in bytes[..16 << 20].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        fs::write(&image, &bytes).expect("the image");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut config = LocalConfig::new(
            listen.parse().expect("an address"),
            dir.join("staging"),
            dir.join("targets"),
            agent_binary(),
        );
        // The agents the engine starts itself (a failback's reverse agent) outlive it by
        // design; here they give up two minutes after the test's engine is gone, instead
        // of running on for the built-in day after the suite ends.
        config.agent_give_up_after = std::time::Duration::from_secs(120);
        let engine = runtime
            .block_on(LocalEngine::start(config, Arc::new(SystemClock)))
            .expect("the local engine");
        let source = runtime
            .block_on(engine.register_source(&SourceSpec {
                name: "db-01".to_owned(),
                hostname: None,
                disks: vec![DiskSpec {
                    device: image.display().to_string(),
                    size_bytes: bytes.len() as u64,
                    used_bytes: 16 << 20,
                }],
                change_rate_bytes_per_second: 0.0,
            }))
            .expect("registered");
        let install = runtime
            .block_on(engine.agent_install(&source.id))
            .expect("an install")
            .expect("the local engine installs its agent");
        fs::write(dir.join("token"), &install.secret).expect("the token file");
        Rig {
            runtime,
            engine,
            source,
            facts: install.facts,
            dir: dir.to_owned(),
            image,
        }
    }

    fn fact(&self, key: &str) -> String {
        self.facts[key].as_str().unwrap_or_default().to_owned()
    }

    /// The agent, started by `wrapper` (for example `ip netns exec NS`), its log
    /// appended to agent.log.
    fn agent(&self, wrapper: &[&str]) -> std::process::Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("a log");
        let (program, args) = match wrapper.split_first() {
            Some((program, args)) => (std::path::PathBuf::from(program), args.to_vec()),
            None => (agent_binary(), Vec::new()),
        };
        let mut command = std::process::Command::new(program);
        command.args(args);
        if !wrapper.is_empty() {
            command.arg(agent_binary());
        }
        command
            .args([
                "run",
                "--server",
                &self.fact("server"),
                "--pin",
                &self.fact("pin"),
            ])
            .args([
                "--source",
                &self.fact("source"),
                "--scan-interval",
                "50",
                "--give-up-after",
                "60",
            ])
            .arg("--token-file")
            .arg(self.dir.join("token"))
            .arg("--state-dir")
            .arg(self.dir.join("agent"))
            .arg("--disk")
            .arg(&self.image)
            .stderr(log)
            .spawn()
            .expect("wavelift-agent (built beside wavelift)")
    }

    fn state(&self) -> ReplicationState {
        self.runtime
            .block_on(self.engine.describe_source(&self.source.id))
            .expect("the source")
            .replication
            .state
    }

    fn continuous(&self) {
        wait_for("continuous replication", Duration::from_secs(60), || {
            self.state() == ReplicationState::Continuous
                && !self
                    .runtime
                    .block_on(self.engine.recovery_points(&self.source.id))
                    .unwrap_or_default()
                    .is_empty()
        });
    }

    fn bytes_on_wire(&self) -> u64 {
        self.engine.server().stats(&self.source.id.0).bytes_on_wire
    }

    /// Writes 64 KiB into the source at 20 MiB.
    fn change(&self) {
        use std::os::unix::fs::FileExt;
        let file = fs::File::options()
            .write(true)
            .open(&self.image)
            .expect("the image");
        file.write_all_at(&[0x42; 65536], 20 << 20)
            .expect("a change");
    }

    /// A test launch from the latest data: the copy's bytes.
    fn test_copy(&self) -> Vec<u8> {
        let (runtime, engine, id) = (&self.runtime, &self.engine, &self.source.id);
        let job = runtime
            .block_on(engine.start_launch(
                LaunchKind::Test,
                std::slice::from_ref(id),
                &PointInTime::Latest,
            ))
            .expect("a launch");
        let mut finished = None;
        wait_for("the launch", Duration::from_secs(60), || {
            let job = runtime
                .block_on(engine.describe_job(&job.id))
                .expect("the job");
            let done = job.status == JobStatus::Completed;
            finished = done.then_some(job);
            done
        });
        let job = finished.expect("a finished job");
        assert_eq!(
            job.servers[0].status,
            LaunchStatus::Launched,
            "{:?}",
            job.servers[0].message
        );
        let target = runtime
            .block_on(engine.describe_target(job.servers[0].target.as_ref().expect("a target")))
            .expect("the target");
        fs::read(target.address.expect("the image")).expect("the copy")
    }

    /// A test copy is the source after its change, and the agent sent little more than
    /// the change since the first sync: no full resync.
    fn resumed_with_the_change(&self, first_sync: u64, after: &str) {
        assert!(
            self.test_copy() == fs::read(&self.image).expect("the source"),
            "the copy is the source after the change"
        );
        let resumed = self.bytes_on_wire() - first_sync;
        assert!(
            resumed < 2 << 20,
            "after {after} the agent sent {resumed} bytes (the change is 64 KiB; the first sync was {first_sync}): no full resync"
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

#[test]
fn a_killed_agent_started_again_goes_on_from_its_last_point() {
    let scratch = Scratch::new("local-agent-kill");
    let rig = Rig::new(scratch.path(), "127.0.0.1:0");
    let mut agent = rig.agent(&[]);
    rig.continuous();
    let first_sync = rig.bytes_on_wire();
    assert!(
        first_sync > 16 << 20,
        "the first sync sent the data: {first_sync} bytes"
    );

    agent.kill().expect("SIGKILL");
    let _ = agent.wait();
    wait_for("the agent missed", Duration::from_secs(40), || {
        rig.state() == ReplicationState::Disconnected
    });
    // The source changes while its agent is down.
    rig.change();

    let mut agent = rig.agent(&[]);
    rig.continuous();
    rig.resumed_with_the_change(first_sync, "the restart");
    let _ = agent.kill();
    let _ = agent.wait();
    let log = rig.log();
    assert!(log.contains("continuing from recovery point 1"), "{log}");
}

/// Flips a byte in the body of every chunk record of the staging folder's store (a bad
/// disk under it).
fn damage_every_record(staging: &std::path::Path) {
    for entry in fs::read_dir(staging.join("chunks")).expect("the store") {
        let path = entry.expect("a pack").path();
        let mut bytes = fs::read(&path).expect("a pack");
        let mut at = 0;
        while at + 45 < bytes.len() {
            let stored =
                u32::from_be_bytes(bytes[at + 40..at + 44].try_into().expect("4 bytes")) as usize;
            bytes[at + 45 + stored / 2] ^= 0x5a;
            at += 45 + stored;
        }
        fs::write(&path, &bytes).expect("a pack");
    }
}

/// One restore step on the source: the request given to the agent's restore mode (in
/// this process: the source is this machine's image), the answer it prints.
fn on_the_source(step: replication::RestoreStep) -> Option<String> {
    match step {
        replication::RestoreStep::Done { .. } => None,
        replication::RestoreStep::Run { input, .. } => {
            let mut answer = Vec::new();
            replication::local::restore::serve(&input[..], &mut answer).expect("the restore");
            Some(String::from_utf8(answer).expect("an answer"))
        }
    }
}

#[test]
fn a_failback_whose_copy_is_damaged_in_the_store_says_so_and_restores_when_run_again() {
    // The engine in this process; the source's agent and the copy's reverse agent are
    // wavelift-agent processes; the restore's steps run in this process on the image.
    let scratch = Scratch::new("local-failback-damage");
    let rig = Rig::new(scratch.path(), "127.0.0.1:0");
    let (runtime, engine, id) = (&rig.runtime, &rig.engine, &rig.source.id);
    let mut agent = rig.agent(&[]);
    rig.continuous();
    runtime
        .block_on(engine.change_life_cycle(id, replication::LifeCycle::ReadyForCutover))
        .expect("ready for cutover");
    let job = runtime
        .block_on(engine.start_launch(
            LaunchKind::Cutover,
            std::slice::from_ref(id),
            &PointInTime::Latest,
        ))
        .expect("a cutover");
    let mut target = None;
    wait_for("the cutover", Duration::from_secs(60), || {
        let job = runtime
            .block_on(engine.describe_job(&job.id))
            .expect("the job");
        target = job.servers[0].target.clone();
        job.status == JobStatus::Completed
    });
    let target = target.expect("a cutover copy");
    wait_for("a healthy copy", Duration::from_secs(60), || {
        runtime.block_on(engine.finalize_cutover(id)).is_ok()
    });
    let _ = agent.kill();
    let _ = agent.wait();
    // The migrated server writes to its copy.
    let copy = runtime
        .block_on(engine.describe_target(&target))
        .expect("the target")
        .address
        .expect("the copy's image");
    {
        use std::os::unix::fs::FileExt;
        let file = fs::File::options()
            .write(true)
            .open(&copy)
            .expect("the copy");
        file.write_all_at(&[0x37; 65536], 20 << 20)
            .expect("a change");
        file.sync_all().expect("synced");
    }
    let changed = fs::read(&copy).expect("the copy");
    runtime
        .block_on(engine.start_failback(id))
        .expect("a failback");
    wait_for("the copy replicated back", Duration::from_secs(60), || {
        runtime
            .block_on(engine.describe_failback(id))
            .ok()
            .flatten()
            .is_some_and(|f| {
                f.point.is_some() && f.replication.state == ReplicationState::Continuous
            })
    });
    // The source compares; then every chunk record in the store is damaged (the copy's
    // chunks are the source's, stored once), so the step that reads the chunks to send
    // meets the damage.
    let compare = runtime
        .block_on(engine.restore_step(id, None))
        .expect("the compare step");
    let answer = on_the_source(compare).expect("a compare request");
    damage_every_record(&scratch.path().join("staging"));
    let err = runtime
        .block_on(engine.restore_step(id, Some(&answer)))
        .expect_err("the write step meets the damage");
    assert!(
        err.message.contains("cannot be restored")
            && err.message.contains("is damaged")
            && err
                .message
                .contains("chunk(s) of it are damaged or missing in the store and were forgotten")
            && err
                .message
                .contains("run the failback again (retry its task)"),
        "{}",
        err.message
    );
    // Run again (as the failback task's retry does): a fresh point of the copy, which
    // waits for the forgotten chunks from the reverse agent, then the steps to the end.
    let mut step = runtime
        .block_on(engine.restore_step(id, None))
        .expect("the restore again");
    for _ in 0..100 {
        let Some(answer) = on_the_source(step) else {
            break;
        };
        step = runtime
            .block_on(engine.restore_step(id, Some(&answer)))
            .expect("a restore step");
    }
    assert!(
        fs::read(&rig.image).expect("the source") == changed,
        "the source is its copy, byte for byte"
    );
    let failback = runtime
        .block_on(engine.describe_failback(id))
        .expect("the failback")
        .expect("a failback");
    assert_eq!(failback.state, replication::FailbackState::Restored);
}

/// A network namespace with one end of a veth pair whose other end is here, removed
/// (with the pair) when dropped.
struct Netns {
    name: String,
    here: String,
}

impl Netns {
    /// `ip` as root; the addresses are link-local, on this machine only.
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new(tag: u32) -> Netns {
        let name = format!("wl-e2e-{tag}");
        let here = format!("wlh{tag}");
        let there = format!("wlt{tag}");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        Netns::ip(&["netns", "add", &name]);
        let netns = Netns {
            name: name.clone(),
            here: here.clone(),
        };
        Netns::ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        Netns::ip(&["link", "set", &there, "netns", &name]);
        Netns::ip(&["addr", "add", "169.254.77.1/30", "dev", &here]);
        Netns::ip(&["link", "set", &here, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            Netns::ip(&all);
        };
        inside(&["addr", "add", "169.254.77.2/30", "dev", &there]);
        inside(&["link", "set", &there, "up"]);
        inside(&["link", "set", "lo", "up"]);
        netns
    }

    fn link(&self, up: bool) {
        Netns::ip(&["link", "set", &self.here, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.here])
            .output();
    }
}

#[test]
fn a_link_down_between_namespaces_is_reported_and_replication_resumes_without_a_full_resync() {
    // Starts: a network namespace (ip netns) with a veth pair to this one; the local
    // engine in this process listening on this end (169.254.77.1), the wavelift-agent in
    // the namespace (ip netns exec) replicating through the pair. The link is set down,
    // then up again.
    let netns = Netns::new(std::process::id() % 100_000);
    let scratch = Scratch::new("local-netns");
    let rig = Rig::new(scratch.path(), "169.254.77.1:0");
    assert!(
        rig.fact("server").starts_with("169.254.77.1:"),
        "{:?}",
        rig.facts
    );
    let mut agent = rig.agent(&["ip", "netns", "exec", &netns.name]);
    rig.continuous();
    let first_sync = rig.bytes_on_wire();

    netns.link(false);
    wait_for("the link down seen", Duration::from_secs(60), || {
        matches!(
            rig.state(),
            ReplicationState::Stalled | ReplicationState::Disconnected
        )
    });
    let refused = rig.runtime.block_on(rig.engine.start_launch(
        LaunchKind::Cutover,
        std::slice::from_ref(&rig.source.id),
        &PointInTime::Latest,
    ));
    assert!(refused.is_err(), "no cutover while the agent is away");
    // The source changes while the link is down.
    rig.change();
    netns.link(true);
    rig.continuous();
    wait_for("the change sent", Duration::from_secs(60), || {
        rig.runtime
            .block_on(rig.engine.take_recovery_point(&rig.source.id))
            .is_ok()
    });
    rig.resumed_with_the_change(first_sync, "the link came back");
    let _ = agent.kill();
    let _ = agent.wait();
}
