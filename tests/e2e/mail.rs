//! Reports by email as a mail server receives them: each test starts a real SMTP server
//! (aiosmtpd, from tests/peers/smtp_sink.py, on a free loopback port) and the wavelift
//! binary on a copy of the quickstart, then parses what the server received as a mail
//! client would.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailparse::MailHeaderMap as _;
use serde_json::Value;
use wavelift_tests::{
    Run, Scratch, edit, quickstart_copy, wavelift, wavelift_command, workspace_root,
};

/// An aiosmtpd server that writes every message it accepts to a folder.
struct SmtpSink {
    child: Child,
    folder: PathBuf,
    port: u16,
}

impl SmtpSink {
    fn start(folder: &Path, port: u16, reject_all: bool) -> SmtpSink {
        SmtpSink::start_with(
            folder,
            port,
            if reject_all { &["--reject-all"] } else { &[] },
        )
    }

    /// With the script's options (`--starttls`, `--implicit-tls`, `--cert`, `--auth`...).
    fn start_with(folder: &Path, port: u16, options: &[&str]) -> SmtpSink {
        let mut command = Command::new("python3");
        command
            .arg(workspace_root().join("tests/peers/smtp_sink.py"))
            .args(["--port", &port.to_string(), "--folder"])
            .arg(folder)
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd; .ci/run installs it)");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the SMTP server's first line");
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        SmtpSink {
            child,
            folder: folder.to_path_buf(),
            port,
        }
    }

    /// The messages received so far, in order, with their envelopes.
    fn messages(&self) -> Vec<(Vec<u8>, Value)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.folder.join(format!("{n}.eml"));
            let Ok(raw) = fs::read(&eml) else { break };
            let envelope = fs::read_to_string(self.folder.join(format!("{n}.json")))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            out.push((raw, envelope));
        }
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn succeeds(run: Run) -> Run {
    assert_eq!(run.code, 0, "{}", run.describe());
    run
}

fn run_until_done(dir: &Path) -> Run {
    succeeds(wavelift(dir, &["run", ".", "--until-done", "--time-warp"]))
}

/// Appends to the quickstart's configuration.
fn configure(dir: &Path, yaml: &str) {
    let file = dir.join("wavelift.yaml");
    let mut text = fs::read_to_string(&file).expect("wavelift.yaml");
    text.push_str(yaml);
    fs::write(&file, text).expect("wavelift.yaml written");
}

fn header(raw: &[u8], name: &str) -> String {
    mailparse::parse_mail(raw)
        .expect("a MIME message")
        .headers
        .get_first_value(name)
        .unwrap_or_default()
}

/// The `reports: N recorded, M delivered` line of `wavelift status`.
fn report_counts(dir: &Path) -> (usize, usize) {
    let status = succeeds(wavelift(dir, &["status"]));
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("reports: "))
        .unwrap_or_else(|| panic!("no reports line:\n{}", status.stdout))
        .to_owned();
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn a_run_delivers_every_report_over_smtp_once_each() {
    // Starts: aiosmtpd on a free loopback port, and the wavelift binary (run, status).
    let scratch = Scratch::new("mail-run");
    let dir = quickstart_copy(scratch.path(), "sim");
    let sink = SmtpSink::start(&scratch.path().join("received"), free_port(), false);
    configure(
        &dir,
        &format!(
            "smtp:\n  url: smtp://127.0.0.1:{}\n  from: wavelift@example.com\n",
            sink.port
        ),
    );
    let run = run_until_done(&dir);
    assert!(
        run.stderr
            .contains(&format!("reports go to smtp://127.0.0.1:{}", sink.port)),
        "{}",
        run.describe()
    );
    let (recorded, delivered) = report_counts(&dir);
    assert_eq!(recorded, delivered, "every report delivered");
    let messages = sink.messages();
    assert_eq!(messages.len(), recorded, "one message per report");
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|(raw, _)| header(raw, "Message-ID"))
        .collect();
    assert_eq!(ids.len(), messages.len(), "no message twice: {ids:?}");
    let subjects: Vec<String> = messages
        .iter()
        .map(|(raw, _)| header(raw, "Subject"))
        .collect();
    for wave in ["wave-1", "wave-2"] {
        for kind in [
            "cutover readiness: GO",
            "cutover report: COMPLETE",
            "digest",
        ] {
            let n = subjects
                .iter()
                .filter(|s| s.contains(&format!("[{wave}] {kind}")))
                .count();
            if kind == "digest" {
                assert!(n >= 7, "{wave}: a digest a day while active, got {n}");
            } else {
                assert_eq!(n, 1, "{wave} {kind}: {subjects:#?}");
            }
        }
    }
    // The cutover report of wave-2 as a mail client sees it.
    let (raw, envelope) = messages
        .iter()
        .find(|(raw, _)| header(raw, "Subject").contains("[wave-2] cutover report"))
        .expect("wave-2's cutover report");
    let mail = mailparse::parse_mail(raw).expect("a MIME message");
    assert_eq!(header(raw, "From"), "wavelift@example.com");
    assert_eq!(mail.ctype.mimetype, "multipart/alternative");
    let parts: Vec<(String, String)> = mail
        .subparts
        .iter()
        .map(|p| (p.ctype.mimetype.clone(), p.get_body().expect("a body")))
        .collect();
    assert_eq!(parts[0].0, "text/plain");
    assert_eq!(parts[1].0, "text/html");
    let text = parts[0].1.replace("\r\n", "\n");
    assert!(text.contains("OUTCOME: COMPLETE"), "{text}");
    assert!(text.contains("- 4 of 4 servers cut over"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("  target sim-target-") && l.contains(".rehearsal.invalid")),
        "{text}"
    );
    assert!(
        text.contains("  lag at the last check before the window: "),
        "{text}"
    );
    assert!(parts[1].1.contains("<table"), "HTML tables");
    let to: BTreeSet<String> = header(raw, "To")
        .split(',')
        .map(|a| a.trim().to_owned())
        .collect();
    let rcpt: BTreeSet<String> = envelope["rcpt_tos"]
        .as_array()
        .expect("RCPT TO list")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        rcpt,
        BTreeSet::from([
            "factory-lead@example.com".to_owned(),
            "shop-owner@example.com".to_owned()
        ])
    );
    assert_eq!(to, rcpt, "the envelope goes to the To: addresses");
    assert_eq!(envelope["mail_from"], "wavelift@example.com");

    // Once per event: running again sends nothing more.
    run_until_done(&dir);
    assert_eq!(sink.messages().len(), recorded);
    assert_eq!(report_counts(&dir), (recorded, recorded));
}

#[test]
fn smtp_down_means_retries_then_a_recorded_failure_and_the_message_kept() {
    // Starts: the wavelift binary against a loopback port where nothing listens, then
    // aiosmtpd that refuses every recipient, then one that accepts.
    let scratch = Scratch::new("mail-down");
    let dir = quickstart_copy(scratch.path(), "sim");
    let port = free_port();
    configure(
        &dir,
        &format!(
            "smtp:\n  url: smtp://127.0.0.1:{port}\n  from: wavelift@example.com\n\
             reports:\n  digest: \"off\"\n  attempts: 2\n  retry_after: 1s\n"
        ),
    );
    let started = Instant::now();
    let run = run_until_done(&dir);
    assert!(
        run.stderr.contains("report not delivered (") && run.stderr.contains("Connection refused"),
        "{}",
        run.describe()
    );
    // Each report was tried twice, one second apart, then kept in the outbox; a run
    // that ends before the second attempt leaves it waiting: go on until none waits.
    let deadline = started + Duration::from_secs(120);
    loop {
        let status = succeeds(wavelift(&dir, &["status"]));
        if !status.stdout.contains("not delivered yet") || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1100));
        succeeds(wavelift(&dir, &["run", "--until-done", "--time-warp"]));
    }
    let status = succeeds(wavelift(&dir, &["status"]));
    let given_up: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("  given up on after 2 attempt(s): "))
        .collect();
    assert_eq!(
        given_up.len(),
        4,
        "readiness and cutover of two waves:\n{}",
        status.stdout
    );
    for line in &given_up {
        assert!(line.contains("Connection refused"), "{line}");
        let kept = line
            .rsplit_once("; kept in ")
            .expect("kept in the outbox")
            .1;
        let raw = fs::read(kept).unwrap_or_else(|e| panic!("{kept}: {e}"));
        assert!(line.contains(&header(&raw, "Subject")), "{line}");
    }

    // A server that refuses for good (550): no retry; kept.
    let refusing = SmtpSink::start(&scratch.path().join("refused"), port, true);
    let refused = wavelift(&dir, &["report", "wave-1", "--kind", "cutover", "--send"]);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stdout.contains("not delivered (refused for good: ")
            && refused.stdout.contains("550")
            && refused.stdout.contains("; the message is kept in "),
        "{}",
        refused.describe()
    );
    assert!(refusing.messages().is_empty());
    drop(refusing);
    // A server that refuses the sender (553 to MAIL FROM): the outcome says the sender,
    // not the recipients, is what the server refuses.
    let refusing = SmtpSink::start_with(
        &scratch.path().join("sender-refused"),
        port,
        &["--reject-sender", "wavelift@example.com"],
    );
    let refused = wavelift(&dir, &["report", "wave-1", "--kind", "cutover", "--send"]);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stdout.contains(
            "the server refused every recipient with the same answer, each sent alone: \
             it refuses the sender wavelift@example.com or takes no mail from here, not each mailbox: "
        ) && refused.stdout.contains("553")
            && refused.stdout.contains("sender address not allowed here"),
        "{}",
        refused.describe()
    );
    assert!(refusing.messages().is_empty());
    drop(refusing);
    // Sending and writing a file are one or the other, never one silently dropped.
    let both = wavelift(
        &dir,
        &[
            "report", "wave-1", "--kind", "cutover", "--send", "--out", "r.html",
        ],
    );
    assert_eq!(both.code, 2, "{}", both.describe());
    assert!(
        both.stderr
            .contains("'--send' cannot be used with '--out <FILE.html>'"),
        "{}",
        both.describe()
    );
    assert!(!dir.join("r.html").exists());

    // Down for the first attempt, up for the second: delivered once.
    let send = wavelift_command(&dir)
        .args(["report", "wave-2", "--kind", "digest", "--send"])
        .output()
        .expect("wavelift");
    let stdout = String::from_utf8_lossy(&send.stdout);
    assert!(stdout.contains(": not delivered yet ("), "{stdout}");
    let sink = SmtpSink::start(&scratch.path().join("received"), port, false);
    std::thread::sleep(Duration::from_millis(1100));
    let run = succeeds(wavelift(&dir, &["run", "--until-done", "--time-warp"]));
    assert!(
        run.stderr
            .contains(&format!("report delivered via smtp://127.0.0.1:{port}: ")),
        "{}",
        run.describe()
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(header(&messages[0].0, "Subject").contains("[wave-2] digest"));
    succeeds(wavelift(&dir, &["run", "--until-done", "--time-warp"]));
    assert_eq!(sink.messages().len(), 1, "never twice");
}

/// A throwaway certificate authority and a server certificate for 127.0.0.1 signed by
/// it, made with the openssl command; returns (ca.pem, server.pem, server.key).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Wavelift test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn starttls_and_implicit_tls_with_a_password_from_a_credential_reference() {
    // Starts: aiosmtpd requiring STARTTLS and AUTH (user reports), then aiosmtpd with
    // implicit TLS, both with a certificate from a throwaway CA made by openssl; and the
    // wavelift binary (run, report --send).
    let scratch = Scratch::new("mail-tls");
    let dir = quickstart_copy(scratch.path(), "sim");
    let (ca, cert, key) = test_certificates(scratch.path());
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let port = free_port();
    let sink = SmtpSink::start_with(
        &scratch.path().join("starttls"),
        port,
        &[
            "--starttls",
            "--cert",
            &cert,
            "--key",
            &key,
            "--auth",
            "reports:s3cret pass",
        ],
    );
    configure(
        &dir,
        &format!(
            "smtp:\n  url: smtp://reports@127.0.0.1:{port}\n  from: wavelift@example.com\n  \
             credential: env:TEST_SMTP_PASSWORD\n  ca_file: {}\nreports:\n  digest: \"off\"\n",
            ca.display()
        ),
    );
    succeeds(
        wavelift_command(&dir)
            .args(["run", ".", "--until-done", "--time-warp"])
            .env("TEST_SMTP_PASSWORD", "s3cret pass")
            .output()
            .map(run_of)
            .expect("wavelift"),
    );
    let received = sink.messages();
    assert_eq!(received.len(), 4, "readiness and cutover of two waves");
    assert!(
        received
            .iter()
            .all(|(_, env)| env["mail_from"] == "wavelift@example.com")
    );

    // A wrong password is refused for good; the message is kept.
    let wrong = wavelift_command(&dir)
        .args(["report", "wave-1", "--kind", "cutover", "--send"])
        .env("TEST_SMTP_PASSWORD", "guess")
        .output()
        .map(run_of)
        .expect("wavelift");
    assert_eq!(wrong.code, 1, "{}", wrong.describe());
    assert!(
        wrong.stdout.contains("refused for good: ") && wrong.stdout.contains("535"),
        "{}",
        wrong.describe()
    );
    // No password in the environment: said before anything is sent.
    let unset = wavelift(&dir, &["report", "wave-1", "--kind", "cutover", "--send"]);
    assert_eq!(unset.code, 1);
    assert!(
        unset
            .stderr
            .contains("the credential env:TEST_SMTP_PASSWORD is not set in Wavelift's environment"),
        "{}",
        unset.describe()
    );
    assert_eq!(sink.messages().len(), 4);
    drop(sink);

    // Implicit TLS (smtps://), no authentication; a certificate nobody vouches for is
    // refused for good (no retry mends it) with what to do, the test CA's is accepted.
    let port = free_port();
    let sink = SmtpSink::start_with(
        &scratch.path().join("smtps"),
        port,
        &["--implicit-tls", "--cert", &cert, "--key", &key],
    );
    let ca_line = format!("  ca_file: {}\n", ca.display());
    edit_config(&dir, "  credential: env:TEST_SMTP_PASSWORD\n", "");
    edit_config(&dir, &ca_line, "");
    let untrusted = wavelift_command(&dir)
        .args(["report", "wave-2", "--kind", "digest", "--send"])
        .env("WAVELIFT_SMTP_URL", format!("smtps://127.0.0.1:{port}"))
        .output()
        .map(run_of)
        .expect("wavelift");
    assert!(
        untrusted
            .stdout
            .contains("not delivered (refused for good: ")
            && untrusted.stdout.contains("invalid peer certificate")
            && untrusted
                .stdout
                .contains("give its certificate (PEM) as smtp.ca_file")
            && !untrusted
                .stdout
                .contains("Connection error: Connection error"),
        "{}",
        untrusted.describe()
    );
    edit_config(&dir, "reports:\n", &format!("{ca_line}reports:\n"));
    let trusted = wavelift_command(&dir)
        .args(["report", "wave-2", "--kind", "digest", "--send"])
        .env("WAVELIFT_SMTP_URL", format!("smtps://127.0.0.1:{port}"))
        .output()
        .map(run_of)
        .expect("wavelift");
    assert_eq!(trusted.code, 0, "{}", trusted.describe());
    assert!(
        trusted
            .stdout
            .contains(&format!("delivered via smtps://127.0.0.1:{port}")),
        "{}",
        trusted.describe()
    );
    assert_eq!(sink.messages().len(), 1);
}

/// Edits the configuration and applies it: a run reads the stored revision's.
fn edit_config(dir: &Path, from: &str, to: &str) {
    wavelift_tests::edit(&dir.join("wavelift.yaml"), from, to);
    succeeds(wavelift(dir, &["apply", "."]));
}

fn run_of(output: std::process::Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A wave whose reports cannot be made (no `notify`, no application owner: nobody to
/// send them to) is said on stderr, and the waves after it still get theirs.
#[test]
fn a_wave_with_nobody_to_send_to_does_not_hold_back_the_other_waves_reports() {
    // Starts: the wavelift binary (run) on a copy of the quickstart, reports to the outbox.
    let scratch = Scratch::new("mail-nobody");
    let dir = quickstart_copy(scratch.path(), "sim");
    let wave_1 = dir.join("waves/wave-1.yaml");
    let text = fs::read_to_string(&wave_1).expect("wave-1.yaml");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("notify:")
                || l.starts_with("  - factory-lead")
                || l.starts_with("  - change-manager")
                || l.trim_start().starts_with("owner:"))
        })
        .collect();
    assert_eq!(kept.len() + 5, text.lines().count(), "the lines taken out");
    fs::write(&wave_1, kept.join("\n") + "\n").expect("wave-1.yaml written");
    let run = run_until_done(&dir);
    assert!(
        run.stderr.contains(
            "report not made (tried again at the next look): wave `wave-1`: nobody to send it to"
        ),
        "{}",
        run.describe()
    );
    let mut outbox: Vec<String> = fs::read_dir(dir.join(".wavelift/outbox"))
        .expect("the outbox")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    outbox.sort();
    for kind in ["readiness", "cutover", "digest"] {
        assert!(
            outbox
                .iter()
                .any(|n| n.contains(&format!("-wave-2-{kind}-"))),
            "no {kind} report of wave-2 in the outbox: {outbox:#?}"
        );
    }
    assert!(
        !outbox.iter().any(|n| n.contains("-wave-1-")),
        "{outbox:#?}"
    );
}

/// One recipient the mail server refuses for good (a departed owner) does not keep a
/// report from the others: each of them gets it once, and the outcome names who did not.
/// One the server cannot take yet (greylisting) gets it at the report's next attempt,
/// alone: nobody gets it twice.
#[test]
fn a_refused_recipient_does_not_keep_the_report_from_the_others() {
    // Starts: aiosmtpd refusing one address for good and another once, and the wavelift
    // binary (run, status, events).
    let scratch = Scratch::new("mail-refused");
    let dir = quickstart_copy(scratch.path(), "sim");
    let gone = "change-manager@example.com";
    let sink = SmtpSink::start_with(
        &scratch.path().join("received"),
        free_port(),
        &["--reject", gone, "--defer", "identity-team@example.com"],
    );
    configure(
        &dir,
        &format!(
            "smtp:\n  url: smtp://127.0.0.1:{}\n  from: wavelift@example.com\n\
             reports:\n  digest: \"off\"\n  retry_after: 1s\n",
            sink.port
        ),
    );
    run_until_done(&dir);
    let (recorded, delivered) = report_counts(&dir);
    assert_eq!(recorded, delivered, "every report delivered");
    let messages = sink.messages();
    for kind in ["cutover readiness", "cutover report"] {
        let mut got: Vec<String> = messages
            .iter()
            .filter(|(raw, _)| header(raw, "Subject").contains(&format!("[wave-1] {kind}")))
            .flat_map(|(_, envelope)| {
                envelope["rcpt_tos"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "factory-lead@example.com",
                "identity-team@example.com",
                "payroll-owner@example.com"
            ],
            "{kind}: each recipient but the refused one, once"
        );
    }
    let events = succeeds(wavelift(&dir, &["events", "--wave", "wave-1"]));
    assert!(
        events
            .stdout
            .lines()
            .any(|l| l.contains("cutover report delivered via")
                && l.contains("to 3 of 4 recipients")
                && l.contains(&format!("not delivered to {gone}: "))
                && l.contains("no such user here")),
        "{}",
        events.stdout
    );
    assert!(
        events
            .stdout
            .lines()
            .any(|l| l.contains("report not delivered")
                && l.contains("delivered to 2 of 4 recipients")
                && l.contains("not yet to identity-team@example.com: ")
                && l.contains("greylisted")),
        "{}",
        events.stdout
    );
}

/// Starts: aiosmtpd taking at most 100 recipients per message (452 past them, as RFC
/// 5321 lets a server), and the wavelift binary (apply, report --send). A wave notifying
/// 150 people gets its report to each of them once: its `To:` header folded (a server
/// refuses lines past 998 characters; one line of 150 addresses was refused whole) and
/// its recipients in conversations of 100 (all 150 in one were refused every time).
#[test]
fn a_report_to_150_people_reaches_each_once() {
    let scratch = Scratch::new("mail-many");
    let dir = quickstart_copy(scratch.path(), "sim");
    let many: Vec<String> = (0..148)
        .map(|i| format!("giulia.rossi{i:03}@migration-factory.example.com"))
        .collect();
    edit(
        &dir.join("waves/wave-1.yaml"),
        "  - change-manager@example.com\n",
        &format!(
            "  - change-manager@example.com\n{}",
            many.iter()
                .map(|a| format!("  - {a}\n"))
                .collect::<String>()
        ),
    );
    let sink = SmtpSink::start_with(
        &scratch.path().join("received"),
        free_port(),
        &["--max-recipients", "100"],
    );
    configure(
        &dir,
        &format!(
            "smtp:\n  url: smtp://127.0.0.1:{}?tls=none\n  from: wavelift@example.com\n",
            sink.port
        ),
    );
    succeeds(wavelift(&dir, &["apply", "."]));
    let sent = succeeds(wavelift(
        &dir,
        &["report", "wave-1", "--kind", "readiness", "--send"],
    ));
    assert!(
        sent.stdout.contains("delivered via "),
        "{}",
        sent.describe()
    );
    let messages = sink.messages();
    let mut got: Vec<String> = Vec::new();
    let mut listed: Option<Vec<String>> = None;
    for (raw, envelope) in &messages {
        let rcpt = envelope["rcpt_tos"].as_array().cloned().unwrap_or_default();
        assert!(
            rcpt.len() <= 100,
            "{} recipients in one message",
            rcpt.len()
        );
        got.extend(rcpt.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        let text = String::from_utf8_lossy(raw);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        // Within RFC 5322's 998 characters; the To header folded to 78.
        assert!(head.split("\r\n").all(|line| line.len() <= 998));
        let to_lines = head
            .split("\r\n")
            .skip_while(|line| !line.starts_with("To: "))
            .enumerate()
            .take_while(|(i, line)| *i == 0 || line.starts_with(' '));
        assert!(
            to_lines.map(|(_, line)| line.len()).all(|n| n <= 78),
            "a To line past 78 characters"
        );
        // Every copy shows everyone it went to.
        let to: Vec<String> = header(raw, "To")
            .split(',')
            .map(|a| a.trim().to_owned())
            .collect();
        assert_eq!(listed.get_or_insert_with(|| to.clone()), &to);
    }
    let mut listed = listed.expect("a message");
    listed.sort();
    got.sort();
    assert_eq!(
        got, listed,
        "each recipient once, as the To header lists them"
    );
    assert!(many.iter().all(|a| got.contains(a)), "{got:?}");
    assert!(
        got.len() > 150,
        "the wave's notify and its owners: {}",
        got.len()
    );
    assert_eq!(
        messages.len(),
        got.len().div_ceil(100),
        "conversations of 100"
    );
}
