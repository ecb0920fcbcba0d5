//! The local engine end to end: the quickstart as shipped, whose source servers are ext4
//! disk images on this machine that its lab script makes and writes to, replicated by
//! real `wavelift-agent` processes to the replication server inside `wavelift run` and
//! cut over as images; and an agent killed with SIGKILL and started again, which goes on
//! from its last recovery point instead of sending the disk again.
//!
//! Starts: the wavelift binary (run, events) and, through each server's agent_push, one
//! wavelift-agent per server, on a loopback port of the test's own; mkfs.ext4, debugfs
//! and e2fsck (e2fsprogs) make and check the images. The second test starts the local
//! engine in the test process and the wavelift-agent binary beside wavelift.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::local::{LocalConfig, LocalEngine};
use replication::{
    DiskSpec, JobStatus, LaunchKind, LaunchStatus, PointInTime, ReplicationEngine,
    ReplicationState, SourceSpec, SystemClock,
};
use wavelift_tests::{Scratch, quickstart_copy, wavelift, wavelift_binary};

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
fn the_quickstart_cuts_over_its_disk_images_on_the_local_engine() {
    let scratch = Scratch::new("local-quickstart");
    let dir = quickstart_copy(scratch.path(), "local");
    let run = wavelift(&dir, &["run", ".", "--until-done", "--time-warp"]);
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

#[test]
fn a_killed_agent_started_again_goes_on_from_its_last_point() {
    let scratch = Scratch::new("local-agent-kill");
    let dir = scratch.path();
    let image = dir.join("db-01.img");
    // 32 MiB, half of it data that does not compress.
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
    let config = LocalConfig::new(
        "127.0.0.1:0".parse().expect("an address"),
        dir.join("staging"),
        dir.join("targets"),
        agent_binary(),
    );
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
    let token = dir.join("token");
    fs::write(&token, &install.secret).expect("the token file");
    let fact = |key: &str| install.facts[key].as_str().unwrap_or_default().to_owned();
    let start_agent = || {
        std::process::Command::new(agent_binary())
            .args(["run", "--server", &fact("server"), "--pin", &fact("pin")])
            .args([
                "--source",
                &fact("source"),
                "--scan-interval",
                "50",
                "--give-up-after",
                "30",
            ])
            .arg("--token-file")
            .arg(&token)
            .arg("--state-dir")
            .arg(dir.join("agent"))
            .arg("--disk")
            .arg(&image)
            .stderr(fs::File::create(dir.join("agent.log")).expect("a log"))
            .spawn()
            .expect("wavelift-agent (built beside wavelift)")
    };
    let describe = |engine: &LocalEngine| {
        runtime
            .block_on(engine.describe_source(&source.id))
            .expect("the source")
    };
    let continuous = |engine: &LocalEngine| {
        wait_for("continuous replication", Duration::from_secs(60), || {
            describe(engine).replication.state == ReplicationState::Continuous
                && !runtime
                    .block_on(engine.recovery_points(&source.id))
                    .unwrap_or_default()
                    .is_empty()
        })
    };
    let mut agent = start_agent();
    continuous(&engine);
    let first_sync = engine.server().stats(&source.id.0).bytes_on_wire;
    assert!(
        first_sync > 16 << 20,
        "the first sync sent the data: {first_sync} bytes"
    );

    agent.kill().expect("SIGKILL");
    let _ = agent.wait();
    wait_for("the agent missed", Duration::from_secs(40), || {
        describe(&engine).replication.state == ReplicationState::Disconnected
    });
    // The source changes while its agent is down.
    use std::os::unix::fs::FileExt;
    let file = fs::File::options()
        .write(true)
        .open(&image)
        .expect("the image");
    file.write_all_at(&[0x42; 65536], 20 << 20)
        .expect("a change");
    drop(file);

    let mut agent = start_agent();
    continuous(&engine);
    let job = runtime
        .block_on(engine.start_launch(
            LaunchKind::Test,
            std::slice::from_ref(&source.id),
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
    let copy = fs::read(target.address.expect("the image")).expect("the copy");
    assert!(
        copy == fs::read(&image).expect("the source"),
        "the copy is the source after the change"
    );
    let resumed = engine.server().stats(&source.id.0).bytes_on_wire - first_sync;
    assert!(
        resumed < 2 << 20,
        "after the restart the agent sent {resumed} bytes (the change is 64 KiB; the first sync was {first_sync}): no full resync"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let log = fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("continuing from recovery point 1"), "{log}");
}
