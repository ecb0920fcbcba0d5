//! Real source servers over SSH: prereq_check logs in to an OpenSSH server and checks
//! it, in the passing case and in each failing one (no sudo, a port closed, not enough
//! free space, a wrong host key, a host not in known_hosts, a wrong key, a command that
//! times out, sshd not listening), with the message a user sees; a password login with
//! sudo by password, and a jump host. Then the shell on its own: a timeout, a password
//! redacted from output, and `accept-new` recording a host key. Then the local engine's
//! agent copied over SSH and started through sudo, a wave cut over byte for byte, a
//! failback that writes back only what changed on the copy, and a failover from an
//! earlier recovery point.
//!
//! Starts: an OpenSSH server (Debian openssh-server, `/usr/sbin/sshd -D`) as root on a
//! free port of 127.0.0.1 to 127.0.0.12 (a server's address each), with a throwaway host key and its own
//! authorized_keys file; the wavelift binary (apply, run --time-warp, serve) in a copy of
//! examples/quickstart-ssh, and the wavelift-agent binary beside wavelift (copied to the
//! "servers" and started there by agent_push and failback). The test accounts (wl-sudo, wl-nosudo, wl-pass, wl-slow) come
//! from tests/peers/ssh_accounts.sh, which .ci/run runs as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wavelift_tests::{Scratch, copy_folder, edit, wavelift, wavelift_command, workspace_root};

use crate::serve::{Served, client, token};

const PASSWORD: &str = "wl-pass-Secret-42";

/// An sshd of the test's own, stopped when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        for account in ["wl-sudo", "wl-nosudo", "wl-pass", "wl-slow"] {
            let known = Command::new("id")
                .arg("-u")
                .arg(account)
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                known,
                "the test account {account} is missing: run tests/peers/ssh_accounts.sh as root (.ci/run does)"
            );
        }
        std::fs::create_dir_all(dir).expect("the sshd folder");
        // sshd reads authorized_keys as the account logging in: the folder is readable.
        set_mode(dir, 0o755);
        keygen(&dir.join("host_key"));
        keygen(&dir.join("client_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        set_mode(&dir.join("authorized_keys"), 0o644);
        let port = free_port();
        let config = format!(
            "Port {port}\n{listen}HostKey {dir}/host_key\n\
             PidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\n\
             UsePAM yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
             PermitRootLogin no\nAllowTcpForwarding yes\nMaxStartups 50\nLogLevel ERROR\n",
            dir = dir.display(),
            listen = (1..=12)
                .map(|i| format!("ListenAddress 127.0.0.{i}\n"))
                .collect::<String>()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("sshd.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("/usr/sbin/sshd (apt-get install openssh-server; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// The known_hosts line of this sshd at `ip`.
    fn known_host(&self, ip: &str) -> String {
        let public = std::fs::read_to_string(self.dir.join("host_key.pub")).expect("host key");
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        format!("[{ip}]:{} {}\n", self.port, key.join(" "))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "wavelift-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A loopback port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One server of the test wave: its name, its address and its YAML lines under the
/// server (indented by eight spaces).
fn server(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "      - name: {name}\n        ip: {ip}\n        disks: [{{ device: /dev/vda, size: 20GiB, used: 4GiB, boot: true }}]\n{extra}"
    )
}

/// examples/quickstart-ssh pointed at the test's sshd, with one server per case.
fn ssh_quickstart(scratch: &Scratch, sshd: &Sshd) -> PathBuf {
    let dir = scratch.path().join("quickstart-ssh");
    copy_folder(&workspace_root().join("examples/quickstart-ssh"), &dir);
    let config = dir.join("wavelift.yaml");
    edit(&config, "port: 22\n", &format!("port: {}\n", sshd.port));
    edit(&config, "host_keys: accept-new", "host_keys: strict");
    edit(&config, "command_timeout: 60s", "command_timeout: 3s");
    // The state where `token`, `serve` and `status` look without being told.
    edit(
        &config,
        "sqlite://.wavelift/ssh.db",
        "sqlite://.wavelift/state.db",
    );
    std::fs::copy(sshd.dir.join("client_key"), dir.join("id_wavelift")).expect("the key");
    set_mode(&dir.join("id_wavelift"), 0o600);
    keygen(&dir.join("other_key"));
    // 127.0.0.2 is recorded with another key, 127.0.0.3 not at all, the others rightly.
    let wrong = std::fs::read_to_string(dir.join("other_key.pub")).expect("other key");
    let wrong: Vec<&str> = wrong.split_whitespace().take(2).collect();
    let mut known: String = [1, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        .iter()
        .map(|i| sshd.known_host(&format!("127.0.0.{i}")))
        .collect();
    known.push_str(&format!("[127.0.0.2]:{} {}\n", sshd.port, wrong.join(" ")));
    std::fs::write(dir.join("known_hosts"), known).expect("known_hosts");
    let closed = free_port();
    let servers = [
        server("ok-01", "127.0.0.1", "        access: { user: wl-sudo }\n        tasks: { prereq_check: { reach: [\"127.0.0.1:SSHPORT\"] } }\n"),
        server("password-01", "127.0.0.4", "        access: { user: wl-pass, credential: \"env:WL_TEST_PASSWORD\", sudo_credential: \"env:WL_TEST_PASSWORD\" }\n"),
        server("jump-01", "127.0.0.5", "        access: { user: wl-sudo, jump: \"wl-sudo@127.0.0.1:SSHPORT\" }\n"),
        server("nosudo-01", "127.0.0.6", "        access: { user: wl-nosudo }\n"),
        server("closed-01", "127.0.0.7", &format!("        access: {{ user: wl-sudo }}\n        tasks: {{ prereq_check: {{ reach: [\"127.0.0.1:{closed}\"] }} }}\n")),
        server("full-01", "127.0.0.8", "        access: { user: wl-sudo }\n        tasks: { prereq_check: { min_free_space: { root: 100TiB } } }\n"),
        server("changed-01", "127.0.0.2", "        access: { user: wl-sudo }\n"),
        server("unknown-01", "127.0.0.3", "        access: { user: wl-sudo }\n"),
        server("wrongkey-01", "127.0.0.9", "        access: { user: wl-sudo, credential: \"file:other_key\" }\n"),
        server("slow-01", "127.0.0.10", "        access: { user: wl-slow }\n"),
        server("badjump-01", "127.0.0.12", "        access: { user: wl-sudo, jump: \"wl-sudo@127.0.0.3:SSHPORT\" }\n"),
        server("refused-01", "127.0.0.11", &format!("        access: {{ user: wl-sudo, port: {closed} }}\n")),
    ]
    .concat()
    .replace("SSHPORT", &sshd.port.to_string());
    std::fs::write(
        dir.join("waves/ssh-wave.yaml"),
        format!(
            "version: 1\nname: ssh-wave\nwindow:\n  start: 2046-12-15 22:00\n  duration: 6h\n  timezone: UTC\n\
             notify: [factory-lead@example.com]\ndefaults:\n  os: {{ family: linux, arch: x86_64 }}\n  change_rate: 1%/day\n\
             \x20 tasks: {{ prereq_check: {{ retries: 0 }} }}\n\
             applications:\n  - name: app\n    owner: app-owner@example.com\n    servers:\n{servers}"
        ),
    )
    .expect("the wave");
    dir
}

/// Every check of a server's prerequisite check, by name: (passed, detail, remediation).
fn prereq_checks(server: &Value) -> Vec<(String, bool, String, String)> {
    task_checks(server, "prereq_check")
}

/// Every check of the last attempt of a server's task of this kind.
fn task_checks(server: &Value, kind: &str) -> Vec<(String, bool, String, String)> {
    let task = server["tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {server}"));
    let attempt = task["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .unwrap_or_else(|| panic!("no attempt in {task}"));
    attempt["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {attempt}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                c["passed"].as_bool().unwrap_or(false),
                c["detail"].as_str().unwrap_or("").to_owned(),
                c["remediation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// `apply` and `run --until-done --time-warp` in `dir`, with the password accounts'
/// password in the environment, which shows nowhere in the output: whether the run
/// succeeded, its output and its errors.
fn apply_and_run(dir: &Path) -> (bool, String, String) {
    let applied = wavelift(dir, &["apply", "."]);
    assert_eq!(applied.code, 0, "{}", applied.describe());
    let run = wavelift_command(dir)
        .args(["run", "--until-done", "--time-warp"])
        .env("WL_TEST_PASSWORD", PASSWORD)
        .output()
        .expect("wavelift run");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "the password shows: {stdout}{stderr}"
    );
    (run.status.success(), stdout, stderr)
}

#[test]
fn prereq_check_over_ssh_passes_on_a_good_server_and_says_what_is_wrong_with_each_bad_one() {
    let scratch = Scratch::new("ssh-prereq");
    let sshd = Sshd::start(&scratch.path().join("sshd"));
    let dir = ssh_quickstart(&scratch, &sshd);
    apply_and_run(&dir);

    let viewer = token(&dir, "viewer");
    let served = Served::start(&dir, &[]);
    let http = client();
    let server = |name: &str| -> Value {
        http.get(served.url(&format!("/api/servers/{name}")))
            .bearer_auth(&viewer)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|err| panic!("{name}: {err}"))
    };
    let check = |name: &str, check: &str| -> (bool, String, String) {
        let checks = prereq_checks(&server(name));
        checks
            .iter()
            .find(|c| c.0 == check)
            .map(|c| (c.1, c.2.clone(), c.3.clone()))
            .unwrap_or_else(|| panic!("{name} has no check `{check}`: {checks:?}"))
    };
    let state = |name: &str| -> String {
        let s = server(name);
        s["tasks"]
            .as_array()
            .and_then(|tasks| tasks.iter().find(|t| t["kind"] == "prereq_check"))
            .map(|t| t["state"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };

    // The good servers: every check passes, by key, by password, through a jump host.
    for name in ["ok-01", "password-01", "jump-01"] {
        let checks = prereq_checks(&server(name));
        assert!(
            checks.iter().all(|c| c.1),
            "{name}: every check passes: {checks:?}"
        );
        assert_eq!(state(name), "succeeded", "{name}");
        let names: Vec<&str> = checks.iter().map(|c| c.0.as_str()).collect();
        for wanted in [
            "login",
            "operating system",
            "architecture",
            "sudo",
            "free space on /",
            "free space on /tmp",
            "/tmp executable",
        ] {
            assert!(names.contains(&wanted), "{name} checks {wanted}: {names:?}");
        }
    }
    assert_eq!(check("ok-01", "login").1, "logged in over ssh");
    assert_eq!(
        check("ok-01", "sudo").1,
        "sudo runs commands as root without a prompt"
    );
    assert_eq!(
        check("password-01", "sudo").1,
        "sudo runs commands as root with the password of access.sudo_credential"
    );
    let reach = check("ok-01", &format!("reach 127.0.0.1:{}", sshd.port));
    assert_eq!(reach.1, "the source connects over TCP");

    // Each bad server fails on its own check, and says what to do.
    let (passed, found, remedy) = check("nosudo-01", "sudo");
    assert!(!passed);
    assert!(found.contains("a password is required"), "{found}");
    assert!(remedy.contains("NOPASSWD"), "{remedy}");

    let closed = prereq_checks(&server("closed-01"))
        .into_iter()
        .find(|c| c.0.starts_with("reach "))
        .expect("a reach check");
    assert!(!closed.1, "{closed:?}");
    assert!(
        closed
            .2
            .starts_with("the source cannot connect to 127.0.0.1:"),
        "{closed:?}"
    );
    assert!(closed.3.starts_with("open TCP "), "{closed:?}");

    let (passed, found, remedy) = check("full-01", "free space on /");
    assert!(!passed);
    assert!(found.ends_with("free, 100 TiB needed"), "{found}");
    assert!(remedy.contains("min_free_space"), "{remedy}");

    let (passed, found, remedy) = check("changed-01", "login");
    assert!(!passed);
    assert_eq!(
        found,
        format!(
            "the host key of 127.0.0.2:{} is not the one recorded in {}",
            sshd.port,
            dir.join("known_hosts").display()
        )
    );
    assert!(remedy.contains("ssh-keygen -R '[127.0.0.2]:"), "{remedy}");

    let (passed, found, remedy) = check("unknown-01", "login");
    assert!(!passed);
    assert!(
        found.ends_with("and host keys are checked strictly"),
        "{found}"
    );
    assert!(
        remedy.contains(&format!("ssh-keyscan -p {} 127.0.0.3", sshd.port)),
        "{remedy}"
    );

    let (passed, found, remedy) = check("wrongkey-01", "login");
    assert!(!passed);
    assert!(
        found.contains("refused the login of wl-sudo with the credential file:")
            && found.contains("other_key"),
        "{found}"
    );
    assert!(remedy.contains("authorized_keys"), "{remedy}");

    let (passed, found, _) = check("slow-01", "login");
    assert!(!passed);
    assert_eq!(found, "timed out after 3s");

    let (passed, found, remedy) = check("badjump-01", "login");
    assert!(!passed);
    assert!(
        found.starts_with(&format!(
            "the jump host wl-sudo@127.0.0.3:{} failed: ",
            sshd.port
        )) && found.contains("Host key verification failed"),
        "{found}"
    );
    assert!(remedy.contains("jump host's key"), "{remedy}");

    let (_, _, remedy) = check("slow-01", "login");
    assert!(remedy.contains("ssh.command_timeout"), "{remedy}");

    let (passed, found, remedy) = check("refused-01", "login");
    assert!(!passed);
    assert!(found.ends_with("connection refused"), "{found}");
    assert!(remedy.contains("sshd runs"), "{remedy}");

    // A failed check fails the task, and what depends on it waits, visibly.
    for name in [
        "nosudo-01",
        "closed-01",
        "full-01",
        "changed-01",
        "unknown-01",
        "wrongkey-01",
        "slow-01",
        "badjump-01",
        "refused-01",
    ] {
        assert_eq!(state(name), "failed", "{name}");
    }
    let status = wavelift(&dir, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let blocked = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "nosudo-01/agent_push")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(blocked["state"], "blocked", "{blocked}");
    // No secret is kept in the store either.
    for file in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(".wavelift").join(file)) {
            assert!(
                !bytes
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes()),
                "the password is in {file}"
            );
        }
    }
}

fn server_of(loaded: &waves::Loaded, name: &str) -> waves::model::Server {
    loaded
        .definitions
        .waves
        .iter()
        .flat_map(|w| w.applications.iter())
        .flat_map(|a| a.servers.iter())
        .find(|s| s.name.value == name)
        .unwrap_or_else(|| panic!("no server {name}"))
        .clone()
}

#[test]
fn the_ssh_shell_times_out_redacts_its_secrets_and_records_new_host_keys_when_told() {
    use tasks::shell::{RemoteShell as _, ShellError};
    let scratch = Scratch::new("ssh-shell");
    let sshd = Sshd::start(&scratch.path().join("sshd"));
    let dir = ssh_quickstart(&scratch, &sshd);
    let loaded = waves::load::load_paths(std::slice::from_ref(&dir), None);
    assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The password from a file this time (the run above takes it from the environment).
    std::fs::write(dir.join("password.txt"), format!("{PASSWORD}\n")).expect("password file");
    let mut settings = loaded.definitions.config.ssh.clone();
    settings.command_timeout = waves::units::Dur::from_seconds(30);
    let shell = tasks::ssh::SshShell::new(&settings, &dir);
    runtime.block_on(async {
        let ok = server_of(&loaded, "ok-01");
        let slept = shell.run(&ok, "sleep 20", Duration::from_secs(1)).await;
        assert_eq!(slept, Err(ShellError::Timeout(Duration::from_secs(1))));
        assert_eq!(
            slept.expect_err("a timeout").to_string(),
            "timed out after 1s"
        );
        let root = shell
            .run_root(&ok, "id -u", Duration::from_secs(10))
            .await
            .expect("sudo");
        assert_eq!(root.stdout.trim(), "0");
        // The same host and account with a key it does not accept: refused, even while
        // the good login is still open to share.
        let mut wrong = ok.clone();
        wrong.access.credential = Some(waves::model::CredentialRef::File("other_key".to_owned()));
        let refused = shell.run(&wrong, "true", Duration::from_secs(10)).await;
        assert!(
            matches!(&refused, Err(ShellError::Login { detail, .. }) if detail.contains("refused the login of wl-sudo")),
            "{refused:?}"
        );
        // A sudo password given where sudo asks none never becomes the command's input.
        let mut no_prompt = ok.clone();
        no_prompt.access.sudo_credential =
            Some(waves::model::CredentialRef::File("password.txt".to_owned()));
        let read = shell
            .run_root(&no_prompt, "cat; id -u", Duration::from_secs(10))
            .await
            .expect("sudo without a prompt");
        assert_eq!(read.stdout, "0\n", "{read:?}");

        let mut password = server_of(&loaded, "password-01");
        let file = waves::model::CredentialRef::File("password.txt".to_owned());
        password.access.credential = Some(file.clone());
        password.access.sudo_credential = Some(file);
        let echoed = shell
            .run(
                &password,
                &format!("echo {PASSWORD}; echo {PASSWORD} >&2"),
                Duration::from_secs(10),
            )
            .await
            .expect("a password login");
        assert_eq!(echoed.stdout.trim(), "[redacted]");
        assert_eq!(echoed.stderr.trim(), "[redacted]");
        let root = shell
            .run_root(&password, "id -un", Duration::from_secs(10))
            .await
            .expect("sudo with a password");
        assert_eq!(root.stdout.trim(), "root");
        assert!(!root.stdout.contains(PASSWORD) && !root.stderr.contains(PASSWORD));
    });

    // accept-new: a host seen for the first time is recorded; a changed key is still
    // refused.
    let mut accepting = settings.clone();
    accepting.host_keys = waves::config::HostKeys::AcceptNew;
    let shell = tasks::ssh::SshShell::new(&accepting, &dir);
    runtime.block_on(async {
        let unknown = server_of(&loaded, "unknown-01");
        let first = shell
            .run(&unknown, "true", Duration::from_secs(10))
            .await
            .expect("a new host is accepted");
        assert_eq!(first.status, 0);
        let changed = server_of(&loaded, "changed-01");
        let refused = shell.run(&changed, "true", Duration::from_secs(10)).await;
        assert!(
            matches!(&refused, Err(ShellError::Login { detail, .. }) if detail.starts_with("the host key of 127.0.0.2:")),
            "{refused:?}"
        );
    });
    // Recorded as OpenSSH records (hashed where ssh_config says HashKnownHosts): ask it.
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.3]:{}", sshd.port))
        .arg("-f")
        .arg(dir.join("known_hosts"))
        .output()
        .expect("ssh-keygen -F");
    assert!(
        found.status.success(),
        "127.0.0.3 is not in known_hosts: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

/// Whether `script` succeeds on this machine (the sshd's host), as the expected answer.
fn here(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn prereq_check_on_mgn_asks_for_the_agents_build_tools_and_the_regional_endpoint() {
    use tasks::shell::RemoteShell as _;
    let scratch = Scratch::new("ssh-mgn");
    let sshd = Sshd::start(&scratch.path().join("sshd"));
    let dir = ssh_quickstart(&scratch, &sshd);
    let loaded = waves::load::load_paths(std::slice::from_ref(&dir), None);
    let server = server_of(&loaded, "ok-01");
    let shell = tasks::ssh::SshShell::new(&loaded.definitions.config.ssh, &dir);
    let clock: std::sync::Arc<dyn replication::Clock> =
        std::sync::Arc::new(replication::SystemClock);
    let engine = replication::sim::SimEngine::new(replication::sim::SimConfig::instant(1), clock);
    let launcher = tasks::launcher::Launcher::default();
    let timezone = jiff::tz::TimeZone::UTC;
    let now = jiff::Timestamp::now();
    // An MGN Region's endpoint, here a closed loopback port in its place.
    let closed = free_port();
    let ctx = tasks::TaskContext {
        task_id: "ok-01/prereq_check",
        kind: waves::model::TaskKind::PrereqCheck,
        wave: "ssh-wave",
        timezone: &timezone,
        server: &server,
        window: [now, now],
        now,
        started_at: now,
        attempt: 0,
        step: None,
        timed_out: None,
        aborted: None,
        engine: &engine,
        engine_kind: waves::model::EngineKind::Mgn,
        config_dir: &dir,
        engine_endpoints: vec![format!("127.0.0.1:{closed}")],
        launcher: &launcher,
        shell: &shell,
        cmdb: &tasks::cmdb::NoCmdb,
    };
    assert!(!shell.is_rehearsal());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(tasks::prereq_check::run(&ctx));
    let tasks::Progress::Fail { checks, reason, .. } = &report.progress else {
        panic!("the closed endpoint fails the check: {:?}", report.progress);
    };
    let by_name = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check `{name}` in {checks:?}"))
    };
    // Each answer as this machine (the server) would give it.
    let headers =
        here("[ -d /lib/modules/$(uname -r)/build ] || [ -d /usr/src/kernels/$(uname -r) ]");
    assert_eq!(by_name("kernel headers").passed, headers, "{checks:?}");
    if !headers {
        assert!(
            by_name("kernel headers")
                .remediation
                .as_deref()
                .is_some_and(|r| r.contains("apt-get install linux-headers-"))
        );
    }
    for tool in ["make", "gcc", "dhclient"] {
        let installed = here(&format!(
            "command -v {tool} || ls /sbin/{tool} /usr/sbin/{tool}"
        ));
        let check = by_name(tool);
        assert_eq!(check.passed, installed, "{check:?}");
        assert_eq!(check.expected.as_deref(), Some("installed"));
    }
    let reach = by_name(&format!("reach 127.0.0.1:{closed}"));
    assert!(!reach.passed);
    assert_eq!(
        reach.expected.as_deref(),
        Some("a TCP connection within 5 s")
    );
    assert!(reason.starts_with("prerequisites not met: "), "{reason}");
    assert!(reason.contains(&format!(
        "reach 127.0.0.1:{closed}: the source cannot connect"
    )));
    // The checks every engine has carry what was found and expected.
    let root = by_name("free space on /");
    assert!(
        root.found.as_deref().is_some_and(|f| f.ends_with(" free")),
        "{root:?}"
    );
    assert_eq!(root.expected.as_deref(), Some("at least 1.0 GiB"));
    assert_eq!(by_name("architecture").expected.as_deref(), Some("x86_64"));
}

/// A disk image of `size` bytes whose blocks are a pattern of this seed, with zero runs
/// between them (the agent skips those), readable by root only.
fn root_only_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = vec![0u8; size];
    for (index, block) in bytes.chunks_mut(4096).enumerate() {
        if index % 3 == 2 {
            continue;
        }
        for byte in block {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
    }
    std::fs::write(path, &bytes).expect("the disk image");
    set_mode(path, 0o600);
    bytes
}

#[test]
fn agent_push_over_ssh_starts_the_agent_through_sudo_the_wave_cuts_over_and_a_server_fails_back() {
    // Two source servers on this machine reached over the test's sshd: one whose account
    // has passwordless sudo, one whose sudo asks the account's password. Their disks are
    // image files only root may read, so the prerequisite check and the agent read them
    // through sudo; the agent is copied over SSH into a folder of the test's own and
    // started as root, and replicates to the local engine inside `wavelift run`.
    let scratch = Scratch::new("ssh-agent-push");
    let sshd = Sshd::start(&scratch.path().join("sshd"));
    let dir = scratch.path().join("factory");
    std::fs::create_dir_all(dir.join("waves")).expect("the factory folder");
    std::fs::copy(sshd.dir.join("client_key"), dir.join("id_wavelift")).expect("the key");
    set_mode(&dir.join("id_wavelift"), 0o600);
    let known: String = ["127.0.0.1", "127.0.0.4"]
        .iter()
        .map(|ip| sshd.known_host(ip))
        .collect();
    std::fs::write(dir.join("known_hosts"), known).expect("known_hosts");
    let disks = scratch.path().join("disks");
    std::fs::create_dir_all(&disks).expect("the disks' folder");
    let size = 6 << 20;
    let sources = [
        (
            "sudo-01",
            root_only_image(&disks.join("sudo-01.img"), size, 11),
        ),
        (
            "password-01",
            root_only_image(&disks.join("password-01.img"), size, 12),
        ),
    ];
    let agents = scratch.path().join("agents");
    let listen = free_port();
    std::fs::write(
        dir.join("wavelift.yaml"),
        format!(
            "version: 1\ndatabase:\n  url: sqlite://.wavelift/state.db\n\
             engines:\n  default: local\n  local:\n    listen: 127.0.0.1:{listen}\n\
             \x20   agent_dir: {agents}\n    agent_give_up_after: 5m\n\
             outbox: .wavelift/outbox\ncmdb:\n  kind: file\n  path: .wavelift/cmdb.yaml\n\
             ssh:\n  known_hosts: known_hosts\n  host_keys: strict\n  command_timeout: 60s\n\
             defaults:\n  access: {{ method: ssh, port: {port}, credential: file:id_wavelift, sudo: true }}\n\
             \x20 tasks:\n    prereq_check: {{ retries: 0, min_free_space: {{ root: 1MiB, tmp: 1MiB }} }}\n\
             \x20   cutover: {{ approval: false, expected_duration: 20m }}\n\
             \x20   cmdb_cleanup: {{ hypercare: 1d }}\n",
            agents = agents.display(),
            port = sshd.port,
        ),
    )
    .expect("wavelift.yaml");
    let disk = |name: &str| {
        format!(
            "[{{ device: {}, size: 6MiB, used: 4MiB, boot: true }}]",
            disks.join(format!("{name}.img")).display()
        )
    };
    std::fs::write(
        dir.join("waves/agents.yaml"),
        format!(
            "version: 1\nname: agents\nwindow:\n  start: 2046-12-15 22:00\n  duration: 6h\n  timezone: UTC\n\
             notify: [factory-lead@example.com]\ndefaults:\n  os: {{ family: linux, arch: x86_64 }}\n\
             \x20 change_rate: 1%/day\napplications:\n  - name: app\n    owner: app-owner@example.com\n    servers:\n\
             \x20     - name: sudo-01\n        ip: 127.0.0.1\n        disks: {sudo}\n        access: {{ user: wl-sudo }}\n\
             \x20       tasks: {{ agent_push: {{ bandwidth: 400Mbit/s, scan_interval: 2s }} }}\n\
             \x20     - name: password-01\n        ip: 127.0.0.4\n        disks: {password}\n\
             \x20       access: {{ user: wl-pass, credential: \"env:WL_TEST_PASSWORD\", sudo_credential: \"env:WL_TEST_PASSWORD\" }}\n",
            sudo = disk("sudo-01"),
            password = disk("password-01"),
        ),
    )
    .expect("the wave");
    let (succeeded, stdout, stderr) = apply_and_run(&dir);
    assert!(
        succeeded && stdout.contains("agents: 13 of 13 tasks final (13 succeeded)"),
        "the wave ran to its end:\n{stdout}\n{stderr}"
    );

    // What agent_push said: the binary copied (its size and digest), the agent started.
    let viewer = token(&dir, "viewer");
    let served = Served::start(&dir, &[]);
    let http = client();
    let agent_binary = wavelift_tests::wavelift_binary().with_file_name("wavelift-agent");
    let binary_size = std::fs::metadata(&agent_binary)
        .expect("wavelift-agent")
        .len();
    for (name, image) in &sources {
        let server: Value = http
            .get(served.url(&format!("/api/servers/{name}")))
            .bearer_auth(&viewer)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let checks = task_checks(&server, "agent_push");
        let said = |check: &str| -> String {
            checks
                .iter()
                .find(|c| c.0 == check)
                .map(|c| c.2.clone())
                .unwrap_or_else(|| panic!("{name}: no check `{check}` in {checks:?}"))
        };
        assert!(
            said("agent binary").starts_with(&format!(
                "copied {binary_size} bytes to {}",
                agents.display()
            )),
            "{name}: {}",
            said("agent binary")
        );
        assert!(
            said("agent").starts_with("installed and started (agent started, pid "),
            "{}",
            said("agent")
        );
        // One server's agent is held to the bandwidth and scan interval its tasks name.
        if *name == "sudo-01" {
            assert_eq!(said("bandwidth"), "the agent sends at most 400 Mbit/s");
            assert_eq!(
                said("scan interval"),
                "the agent passes over quiet disks every 2s at least (every 100 ms while they change)"
            );
        } else {
            assert!(
                checks
                    .iter()
                    .all(|c| c.0 != "bandwidth" && c.0 != "scan interval"),
                "{checks:?}"
            );
        }

        // The agent's folder is root's: sudo ran the install, over the password for one.
        let folders: Vec<PathBuf> = std::fs::read_dir(&agents)
            .expect("the agents' folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert_eq!(folders.len(), 2, "{folders:?}");
        for folder in &folders {
            use std::os::unix::fs::MetadataExt as _;
            let meta = std::fs::metadata(folder.join("wavelift-agent")).expect("the copied agent");
            assert_eq!(
                (meta.uid(), meta.mode() & 0o777),
                (0, 0o700),
                "{}",
                folder.display()
            );
            let log = std::fs::read_to_string(folder.join("agent.log")).unwrap_or_default();
            assert!(
                log.trim_end()
                    .ends_with("replication stopped by the server"),
                "finalize stopped the agent: {log}"
            );
        }

        // The cutover copy holds the source's bytes.
        let targets = dir.join(".wavelift/targets").join(name);
        let launches: Vec<PathBuf> = std::fs::read_dir(&targets)
            .unwrap_or_else(|err| panic!("{name} has no targets: {err}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert_eq!(launches.len(), 1, "{launches:?}");
        let copy = std::fs::read(launches[0].join("disk0.raw")).expect("the cutover image");
        assert!(
            copy == *image,
            "{name}'s cutover copy is byte-identical to its disk"
        );
    }
    drop(served);
    // The agent started with the limit and the interval says so in its log; the other
    // runs with neither (its own half second).
    let limited: Vec<bool> = std::fs::read_dir(&agents)
        .expect("the agents' folder")
        .filter_map(|e| e.ok())
        .map(|e| {
            let log = std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default();
            let limited = log.contains(
                "sending at most 400 Mbit/s, passes over quiet disks at most 2000 ms apart",
            );
            assert!(
                limited || log.contains("passes over quiet disks at most 500 ms apart"),
                "{log}"
            );
            limited
        })
        .collect();
    assert_eq!(
        limited.iter().filter(|l| **l).count(),
        1,
        "one agent of two is limited: {limited:?}"
    );

    // Failback of the server whose sudo asks a password: its copy changed after the
    // cutover (two chunks: the sixth and the last), so the restore writes exactly those
    // onto its disk over SSH, then it replicates as before.
    const CHUNK: usize = replication::local::proto::CHUNK;
    let copy_dir = std::fs::read_dir(dir.join(".wavelift/targets/password-01"))
        .expect("the copy's folder")
        .find_map(|e| e.ok().map(|e| e.path()))
        .expect("the cutover copy");
    let copy_image = copy_dir.join("disk0.raw");
    let mut changed = std::fs::read(&copy_image).expect("the copy");
    changed[5 * CHUNK + 17..5 * CHUNK + 4113].fill(0xa5);
    let end = changed.len();
    assert_eq!(end % CHUNK, 0, "the last chunk is whole");
    changed[end - 100..].fill(0x5a);
    std::fs::write(&copy_image, &changed).expect("the copy changed");
    let failback = |args: &[&str]| {
        let run = wavelift_command(&dir)
            .arg("failback")
            .args(args)
            .env("WL_TEST_PASSWORD", PASSWORD)
            .output()
            .expect("wavelift failback");
        let said = String::from_utf8_lossy(&run.stdout).into_owned();
        let err = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "failback {args:?}:\n{said}\n{err}");
        assert!(!said.contains(PASSWORD) && !err.contains(PASSWORD));
        said
    };
    // First the restore alone: the copy stays.
    let said = failback(&["password-01", "--stop-after-restore", "--wait", "2m"]);
    for line in [
        "password-01: reverse replication of the cutover copy started".to_owned(),
        format!(
            "password-01: 2 chunk(s), {} bytes written; the source holds the copy's state",
            2 * CHUNK
        ),
        format!(
            "password-01 restored from its copy ({} bytes); the copy stays",
            2 * CHUNK
        ),
    ] {
        assert!(said.contains(&line), "`{line}` in:\n{said}");
    }
    assert!(
        std::fs::read(disks.join("password-01.img")).expect("the source") == changed,
        "the source's disk is its copy, byte for byte"
    );
    // The copy changes again (the eleventh chunk): the next run moves only that chunk,
    // from a fresh point of the copy, then returns to normal.
    changed[10 * CHUNK..10 * CHUNK + 512].fill(0x3c);
    std::fs::write(&copy_image, &changed).expect("the copy changed again");
    let said = failback(&["password-01", "--wait", "2m"]);
    for line in [
        format!(
            "password-01: 1 chunk(s), {CHUNK} bytes written; the source holds the copy's state"
        ),
        "password-01: the copy is terminated, the source is ready for cutover again".to_owned(),
        "password-01: replicating in the normal direction again (recovery point rp-".to_owned(),
        format!("password-01 failed back: {CHUNK} bytes restored from its copy"),
    ] {
        assert!(said.contains(&line), "`{line}` in:\n{said}");
    }
    assert!(
        std::fs::read(disks.join("password-01.img")).expect("the source") == changed,
        "the source's disk is its copy, byte for byte"
    );
    assert!(!copy_dir.exists(), "the copy was terminated");
    // The source's own agent was installed again and sent what the restore changed.
    let agent_log = std::fs::read_dir(&agents)
        .expect("the agents' folder")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default())
        .find(|log| log.matches("connected to").count() >= 2)
        .expect("an agent that connected again after the failback");
    assert!(
        agent_log.contains("continuing from recovery point"),
        "{agent_log}"
    );
    let events = wavelift(&dir, &["events", "--json"]);
    for kind in [
        "operator.failback",
        "engine.start_failback",
        "shell.restore",
        "failback.restored",
        "engine.return_to_normal",
        "failback.normal",
    ] {
        assert!(
            events
                .stdout
                .lines()
                .any(|l| l.contains(&format!("\"kind\":\"{kind}\""))
                    && l.contains("\"server\":\"password-01\"")),
            "{kind} in the job log:\n{}",
            events.stdout
        );
    }
    // Failover from a recovery point of the operator's choosing: one cut before the
    // failback launches the disk as it was then.
    let after: u64 = said
        .split("replicating in the normal direction again (recovery point rp-")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("the point cut after the failback");
    let listed = wavelift(&dir, &["failover", "password-01", "--list"]);
    assert_eq!(listed.code, 0, "{}", listed.describe());
    let point = listed
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|id| {
            id.strip_prefix("rp-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|seq| seq < after)
        })
        .unwrap_or_else(|| panic!("a point before rp-{after}: {}", listed.describe()))
        .to_owned();
    let unknown = wavelift(&dir, &["failover", "password-01", "--point", "rp-999"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown
            .stderr
            .contains("has no recovery point `rp-999`; it has: rp-"),
        "{}",
        unknown.describe()
    );
    // Given as `rp-N` unpadded, the number names the point.
    let short = format!(
        "rp-{}",
        point
            .trim_start_matches("rp-")
            .parse::<u64>()
            .expect("a point number")
    );
    let failover = wavelift(&dir, &["failover", "password-01", "--point", &short]);
    assert_eq!(failover.code, 0, "{}", failover.describe());
    // Launched, checked and finalized: the copy is the server now.
    let (_, rest) = failover
        .stdout
        .split_once("password-01 failed over to t-")
        .unwrap_or_else(|| panic!("{}", failover.describe()));
    let image = rest
        .split_once(&format!(" from {point}, health Ok, "))
        .and_then(|(_, rest)| rest.split_once(": replication ended; the copy is the server now"))
        .map(|(image, _)| image)
        .unwrap_or_else(|| panic!("{}", failover.describe()));
    assert!(
        std::fs::read(image).expect("the failover copy") == sources[1].1,
        "the copy from {point} is the disk as it was before the failback"
    );
    assert!(
        wavelift(&dir, &["events", "--json"])
            .stdout
            .lines()
            .any(|l| l.contains("\"kind\":\"failover.finalized\"")),
        "the failover is in the job log"
    );

    // A second failover is refused with the reason: the server is cut over already.
    let again = wavelift(&dir, &["failover", "password-01", "--point", &point]);
    assert_ne!(again.code, 0);
    assert!(
        again
            .stderr
            .contains("password-01 is cut over already (Cutover): its source replicates no more; to launch it again from one of its points, fail it back first"),
        "{}",
        again.describe()
    );
    // The agent installed again outlives `wavelift failback` (it waits for the next
    // wavelift to serve it); the test's own ends with the test.
    let _ = Command::new("pkill")
        .args(["-f", &agents.display().to_string()])
        .status();
}
