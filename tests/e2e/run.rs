//! Running waves as a user meets it: `run`, `status`, `events`, `approve`, the levers
//! `retry`, `skip` and `cancel`, `apply` and `rehearse`, on copies of the quickstart.
//!
//! Each test works in a folder of its own and starts nothing but the wavelift binary.
//! The copies' windows are moved to [`QUICKSTART_WINDOWS`]: `run --time-warp` starts at the
//! wall clock and jumps to the first due task, so every phase must still lie ahead.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;
use wavelift_tests::{
    QUICKSTART_WINDOWS, Run, Scratch, edit, quickstart_copy, wavelift, wavelift_command,
};

/// The quickstart's servers, and the one whose boot test the definitions skip.
const SERVERS: [&str; 8] = [
    "dir-01",
    "dir-02",
    "payroll-app-01",
    "payroll-db-01",
    "shop-batch-01",
    "shop-catalog-01",
    "shop-web-01",
    "shop-web-02",
];
const NO_BOOT_TEST: &str = "shop-batch-01";
const KINDS: [&str; 6] = [
    "prereq_check",
    "agent_push",
    "replication_verify",
    "boot_test",
    "cutover",
    "cmdb_cleanup",
];

fn succeeds(run: Run) -> Run {
    assert_eq!(run.code, 0, "{}", run.describe());
    run
}

/// A command that must refuse: exit 1, nothing on stdout, `error: MESSAGE` on stderr.
fn refuses(dir: &Path, args: &[&str], message: &str) {
    let run = wavelift(dir, args);
    assert_eq!(
        run.code,
        1,
        "`wavelift {}`: {}",
        args.join(" "),
        run.describe()
    );
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert_eq!(
        run.stderr.trim_end(),
        format!("error: {message}"),
        "`wavelift {}`",
        args.join(" ")
    );
}

/// `wavelift status --json ARGS` in `dir`: every task instance, by id.
pub(crate) fn status_tasks(dir: &Path, args: &[&str]) -> BTreeMap<String, Value> {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let run = succeeds(wavelift(dir, &all));
    let document: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("status --json is not JSON ({err}):\n{}", run.describe()));
    assert_eq!(document["format"], "wavelift-status");
    assert_eq!(document["version"], 1);
    document["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|task| {
            let id = task["id"].as_str().unwrap_or_default().to_owned();
            (id, task.clone())
        })
        .collect()
}

/// Every task's state, by id.
pub(crate) fn task_states(dir: &Path) -> BTreeMap<String, String> {
    status_tasks(dir, &[])
        .into_iter()
        .map(|(id, task)| (id, task["state"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn state<'a>(tasks: &'a BTreeMap<String, Value>, id: &str) -> &'a str {
    tasks
        .get(id)
        .and_then(|task| task["state"].as_str())
        .unwrap_or_else(|| panic!("status --json has no task {id}: {tasks:#?}"))
}

/// `wavelift events --json ARGS` in `dir`, one object per line.
fn events(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let run = succeeds(wavelift(dir, &all));
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("events --json printed `{line}`: {err}"))
        })
        .collect()
}

fn run_until_done(dir: &Path, with_paths: bool) -> Run {
    let mut args = vec!["run"];
    if with_paths {
        args.push(".");
    }
    args.extend_from_slice(&["--until-done", "--time-warp", "--seed", "1"]);
    wavelift(dir, &args)
}

/// The marks of one server's row in `status`, one per task kind.
fn matrix_row(status: &str, server: &str) -> Vec<String> {
    status
        .lines()
        .find(|line| line.split_whitespace().next() == Some(server))
        .map(|line| line.split_whitespace().skip(1).map(str::to_owned).collect())
        .unwrap_or_else(|| panic!("status has no row for {server}:\n{status}"))
}

#[test]
fn run_until_done_ends_with_every_task_final_and_says_where_the_state_is() {
    // Starts: the wavelift binary (run, status, events) in a copy of the quickstart on
    // the rehearsal engine.
    let scratch = Scratch::new("run-until-done");
    let dir = quickstart_copy(scratch.path(), "sim");
    let run = succeeds(run_until_done(&dir, true));
    assert!(
        run.stdout.starts_with("applied revision 1: 51 tasks\n"),
        "{}",
        run.describe()
    );
    for line in [
        "wave-1: 26 of 26 tasks final (26 succeeded)",
        "wave-2: 25 of 25 tasks final (1 skipped, 24 succeeded)",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "{line}\n{}",
            run.describe()
        );
    }
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("every task is final (")
            && last.ends_with(
                "the state is in sqlite://.wavelift/state.db: see `wavelift status` and `wavelift events`"
            ),
        "{}",
        run.describe()
    );
    assert!(dir.join(".wavelift/state.db").is_file());
    // Run again without the warp: the store's clock is years ahead of the wall clock,
    // which is said (nothing is left to do here, so it ends at once).
    let plain = succeeds(wavelift(&dir, &["run", "--until-done"]));
    assert!(
        plain
            .stderr
            .contains("note: a --time-warp run took this store's clock to ")
            && plain
                .stderr
                .contains("run with --time-warp to go on from where it was"),
        "{}",
        plain.describe()
    );
    assert!(dir.join(".wavelift/sim-engine.json").is_file());
    assert!(
        !run.stderr.contains("local replication engine"),
        "the waves run on sim, no note is due:\n{}",
        run.describe()
    );

    let status = succeeds(wavelift(&dir, &["status"]));
    assert_eq!(
        status
            .stdout
            .lines()
            .filter(|l| *l == "  phase: ended (by the run's warped clock)")
            .count(),
        2,
        "the warped run went past both waves' cutover weeks:\n{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l == "wave-2: 25 of 25 tasks final (1 skipped, 24 succeeded)"),
        "{}",
        status.describe()
    );
    assert_eq!(
        matrix_row(&status.stdout, NO_BOOT_TEST),
        ["+", "+", "+", "-", "+", "+"]
    );
    assert_eq!(
        matrix_row(&status.stdout, "payroll-db-01"),
        ["+", "+", "+", "+", "+", "+"]
    );

    let tasks = status_tasks(&dir, &[]);
    assert_eq!(tasks.len(), 8 * 6 + 3, "{:#?}", tasks.keys());
    for server in SERVERS {
        for kind in KINDS {
            let id = format!("{server}/{kind}");
            let task = tasks
                .get(&id)
                .unwrap_or_else(|| panic!("no task {id} in {:#?}", tasks.keys()));
            assert_eq!(task["server"], server, "{task:#}");
            assert_eq!(task["kind"], kind, "{task:#}");
            let expected = if server == NO_BOOT_TEST && kind == "boot_test" {
                "skipped"
            } else {
                "succeeded"
            };
            assert_eq!(task["state"], expected, "{task:#}");
            for field in ["wave", "application"] {
                assert!(task[field].is_string(), "{field} of {task:#}");
            }
        }
    }
    let gates: Vec<&Value> = tasks.values().filter(|t| t["kind"] == "gate").collect();
    assert_eq!(gates.len(), 3, "one gate per application");
    assert!(gates.iter().all(|g| g["server"].is_null()), "{gates:#?}");
    let exact = [
        ("payroll-db-01/cutover", "wave-1", "payroll"),
        ("shop-batch-01/boot_test", "wave-2", "webshop"),
        ("directory/ready", "wave-1", "directory"),
    ];
    for (id, wave, application) in exact {
        assert_eq!(tasks[id]["wave"], wave, "{:#}", tasks[id]);
        assert_eq!(tasks[id]["application"], application, "{:#}", tasks[id]);
    }
    // Replication is watched until the window: each check was first ready (and let the
    // boot test start) well before it finished, looking again on its schedule between.
    for server in SERVERS {
        let verify = &tasks[&format!("{server}/replication_verify")];
        let released = verify["released_at"].as_str().unwrap_or_default();
        let finished = verify["finished_at"].as_str().unwrap_or_default();
        assert!(
            !released.is_empty() && released < finished,
            "{server}: released {released:?}, finished {finished:?}"
        );
        if server != NO_BOOT_TEST {
            let boot = &tasks[&format!("{server}/boot_test")];
            let started = boot["started_at"].as_str().unwrap_or_default();
            assert!(
                released <= started && started < finished,
                "{server}: the boot test started at {started}, while replication was watched \
                 from {released} to {finished}"
            );
        }
    }
    let wave_2 = status_tasks(&dir, &["--wave", "wave-2"]);
    assert_eq!(wave_2.len(), 4 * 6 + 1);
    assert!(wave_2.values().all(|t| t["wave"] == "wave-2"));
    // A wave that is not there is named, with those that are, not shown as empty.
    for command in [
        &["status", "--wave", "wave-3"][..],
        &["status", "--wave", "wave-3", "--json"],
        &["events", "--wave", "wave-3"],
    ] {
        let unknown = wavelift(&dir, command);
        assert_eq!(unknown.code, 1, "{}", unknown.describe());
        assert!(
            unknown
                .stderr
                .contains("no wave `wave-3`; the waves are: wave-1, wave-2")
                && unknown.stdout.is_empty(),
            "{}",
            unknown.describe()
        );
    }

    // Every server's test and cutover launch was started exactly once, with its server.
    let log = events(&dir, &[]);
    for server in SERVERS {
        for (launch, expected) in [
            ("test launch", usize::from(server != NO_BOOT_TEST)),
            ("cutover launch", 1),
        ] {
            let found: Vec<&Value> = log
                .iter()
                .filter(|e| e["kind"] == "engine.start_launch" && e["server"] == server)
                .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(launch)))
                .collect();
            assert_eq!(found.len(), expected, "{server}: {launch}: {found:#?}");
        }
    }
    for event in log
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("engine.")))
    {
        let server = event["server"].as_str().unwrap_or_default();
        let task = event["task_id"].as_str().unwrap_or_default();
        assert!(
            SERVERS.contains(&server) && task.starts_with(&format!("{server}/")),
            "an engine action names its server and task: {event:#}"
        );
    }
    let text = succeeds(wavelift(&dir, &["events"]));
    assert_eq!(text.stdout.lines().count(), log.len());
    assert!(
        text.stdout.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.get(2..5) == Some(&["wave-1", "payroll-db-01", "engine.start_launch"][..])
                && l.contains("cutover launch, job sim-job-")
        }),
        "{}",
        text.stdout
    );
    for server in SERVERS {
        let ready = log
            .iter()
            .filter(|e| e["kind"] == "task.ready" && e["server"] == server)
            .count();
        assert_eq!(
            ready, 1,
            "{server}: one task.ready for its replication check"
        );
    }
    let wave_1 = events(&dir, &["--wave", "wave-1"]);
    assert!(!wave_1.is_empty() && wave_1.len() < log.len());
    assert!(wave_1.iter().all(|e| e["wave"] == "wave-1"));
}

#[test]
fn a_required_cutover_approval_stops_the_run_until_an_operator_approves() {
    // Starts: the wavelift binary (run, status, approve, events) in a copy of the
    // quickstart on the rehearsal engine, with the go/no-go for cutovers required.
    let scratch = Scratch::new("approval");
    let dir = quickstart_copy(scratch.path(), "sim");
    edit(
        &dir.join("wavelift.yaml"),
        "approval: false",
        "approval: true",
    );
    let run = succeeds(run_until_done(&dir, true));
    assert!(
        run.stdout.lines().last().is_some_and(|l| l
            == "1 cutover gate(s) wait for a go: approve with `wavelift approve WAVE [--app APP]`, then run again"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("  awaiting approval: directory (wavelift approve wave-1 --app directory)"),
        "{}",
        run.describe()
    );
    let tasks = status_tasks(&dir, &[]);
    assert_eq!(state(&tasks, "directory/ready"), "awaiting_approval");
    assert_eq!(tasks["directory/ready"]["approval_required"], true);
    assert!(tasks["directory/ready"]["approved_by"].is_null());
    for id in ["dir-01/cutover", "dir-02/cutover", "payroll/ready"] {
        assert_eq!(state(&tasks, id), "pending", "{id}");
    }
    // Warped time stops short of wave-1's window, whose go is still to come.
    for server in ["dir-01", "dir-02", "payroll-app-01", "payroll-db-01"] {
        assert_eq!(state(&tasks, &format!("{server}/boot_test")), "succeeded");
    }

    // The readiness report says no-go until the go is given, and why; as HTML and text.
    let report_to = |out: &str| {
        wavelift(
            &dir,
            &["report", "wave-1", "--kind", "readiness", "--out", out],
        )
    };
    let report = succeeds(report_to("ready.html"));
    assert!(
        report.stdout.starts_with(
            "REHEARSAL [wave-1] cutover readiness: NO-GO for the window of Sat 2046-12-15 22:00: wrote ready.html (HTML) and ready.txt (plain text)"
        ),
        "{}",
        report.describe()
    );
    let html = fs::read_to_string(dir.join("ready.html")).expect("ready.html");
    let text = fs::read_to_string(dir.join("ready.txt")).expect("ready.txt");
    // An --out that names the text's own file is refused (in any case: `.TXT` is the
    // same file where case is ignored), and both files stay.
    let shouted = report_to("ready.TXT");
    assert_eq!(shouted.code, 1, "{}", shouted.describe());
    let refused = report_to("ready.txt");
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stderr.contains(
            "--out ready.txt: that is where the plain text would go; --out names the HTML file (like ready.html)"
        ),
        "{}",
        refused.describe()
    );
    assert_eq!(
        fs::read_to_string(dir.join("ready.html")).expect("kept"),
        html
    );
    assert_eq!(
        fs::read_to_string(dir.join("ready.txt")).expect("kept"),
        text
    );
    for needle in [
        "wave-1: NO-GO",
        // payroll's gate does not await its go yet, but the go is still to be given.
        "2 application(s) wait for their go",
        "wavelift approve wave-1 --app directory",
        "wavelift approve wave-1 --app payroll",
        "dir-01",
        "payroll-db-01",
    ] {
        assert!(html.contains(needle), "`{needle}` not in the HTML:\n{html}");
    }
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<link"),
        "the HTML loads nothing from elsewhere"
    );
    for needle in [
        "GO OR NO-GO? NO-GO",
        "- 2 application(s) wait for their go: see the approvals below",
        "continuous replication: 4 of 4",
        "boot tests passed: 4 of 4",
        "  directory: wavelift approve wave-1 --app directory",
        "  payroll: wavelift approve wave-1 --app payroll",
    ] {
        assert!(
            text.lines().any(|l| l == needle),
            "`{needle}` not a line of:\n{text}"
        );
    }
    assert_eq!(
        succeeds(wavelift(&dir, &["report", "wave-1"]))
            .stdout
            .trim_end(),
        text.trim_end(),
        "without --out the plain text is printed"
    );
    // The run made the readiness report when it fell due (24 hours before the window),
    // and the digests of the days before; without SMTP they are in the outbox.
    let outbox = dir.join(".wavelift/outbox");
    let made: Vec<String> = fs::read_dir(&outbox)
        .expect("the outbox")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        made.iter()
            .any(|f| f.starts_with("20461214T2100Z-wave-1-readiness-")),
        "{made:?}"
    );
    assert!(
        made.iter().any(|f| f.contains("-wave-1-digest-")),
        "{made:?}"
    );
    // Sent on demand: without SMTP, an email in the outbox that a mail client reads
    // (parsed here as one would: headers, and the plain-text and HTML alternatives).
    let sent = succeeds(wavelift(&dir, &["report", "wave-1", "--send"]));
    let (_, via) = sent
        .stdout
        .trim_end()
        .split_once(": delivered via ")
        .unwrap_or_else(|| panic!("{}", sent.describe()));
    let files = [std::path::PathBuf::from(via)];
    assert!(files[0].starts_with(&outbox), "{}", sent.describe());
    let raw = fs::read(&files[0]).expect("the .eml");
    let mail = mailparse::parse_mail(&raw).expect("a MIME message");
    use mailparse::MailHeaderMap as _;
    assert_eq!(
        mail.headers.get_first_value("Subject").as_deref(),
        Some("REHEARSAL [wave-1] cutover readiness: NO-GO for the window of Sat 2046-12-15 22:00")
    );
    let to = mail.headers.get_first_value("To").unwrap_or_default();
    for recipient in [
        "factory-lead@example.com",
        "change-manager@example.com",
        "identity-team@example.com",
        "payroll-owner@example.com",
    ] {
        assert!(to.contains(recipient), "{recipient} not in To: {to}");
    }
    assert_eq!(mail.ctype.mimetype, "multipart/alternative");
    let parts: Vec<(String, String)> = mail
        .subparts
        .iter()
        .map(|p| (p.ctype.mimetype.clone(), p.get_body().expect("a body")))
        .collect();
    assert_eq!(
        parts.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["text/plain", "text/html"]
    );
    // Mail lines end in CRLF; the content is the report's.
    let lf = |body: &str| body.replace("\r\n", "\n").trim_end().to_owned();
    assert_eq!(lf(&parts[0].1), text.trim_end());
    assert_eq!(lf(&parts[1].1), html.trim_end());
    // SMTP that does not answer: recorded, and retried later (by `wavelift run`).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let smtp = wavelift_command(&dir)
        .args(["report", "wave-1", "--send"])
        .env("WAVELIFT_SMTP_URL", format!("smtp://127.0.0.1:{port}"))
        .output()
        .expect("wavelift");
    let stdout = String::from_utf8_lossy(&smtp.stdout);
    assert_eq!(smtp.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(": not delivered yet (") && stdout.contains("Connection refused"),
        "{stdout}"
    );
    let status = succeeds(wavelift(&dir, &["status"]));
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("  not delivered yet, attempt 1 failed (")
                && l.contains("Connection refused")),
        "{}",
        status.stdout
    );
    let unknown = wavelift(&dir, &["report", "wave-9"]);
    assert_eq!(unknown.code, 1, "{}", unknown.describe());
    assert_eq!(
        unknown.stderr.trim_end(),
        "error: no wave `wave-9` in the applied definitions"
    );

    let approve = succeeds(wavelift(
        &dir,
        &["approve", "wave-1", "--app", "directory", "--by", "alice"],
    ));
    assert_eq!(approve.stdout, "approved by alice: directory\n");
    // payroll's gate waits for directory's cutovers and does not await the go yet; it
    // may be given ahead. Without it, `run` would warp through payroll's window while
    // directory's clean-up waits out its hypercare.
    let ahead = succeeds(wavelift(
        &dir,
        &["approve", "wave-1", "--app", "payroll", "--by", "alice"],
    ));
    assert_eq!(ahead.stdout, "approved by alice: payroll\n");
    // A go for the whole wave afterwards keeps the goes given: who gave them stays.
    let again = succeeds(wavelift(&dir, &["approve", "wave-1", "--by", "bob"]));
    assert_eq!(
        again.stdout,
        "approved already, the go kept as given: directory (by alice), payroll (by alice)\n"
    );
    succeeds(run_until_done(&dir, false));
    let tasks = status_tasks(&dir, &[]);
    // Wave-1 ran to its end; the clock stopped short of wave-2's window, whose go is
    // still to come.
    for (id, task) in tasks.iter().filter(|(_, t)| t["wave"] == "wave-1") {
        assert_eq!(task["state"], "succeeded", "{id}");
    }
    assert_eq!(tasks["directory/ready"]["approved_by"], "alice");
    assert_eq!(tasks["payroll/ready"]["approved_by"], "alice");
    assert_eq!(state(&tasks, "webshop/ready"), "awaiting_approval");
    assert_eq!(state(&tasks, "shop-web-01/cutover"), "pending");
    refuses(
        &dir,
        &["approve", "wave-1", "--app", "directory", "--by", "alice"],
        "nothing to approve in wave `wave-1`, application `directory`: no cutover there waits for an approval",
    );
    let log = events(&dir, &[]);
    let approval = log
        .iter()
        .find(|e| e["kind"] == "operator.approve")
        .unwrap_or_else(|| panic!("no operator.approve event: {log:#?}"));
    assert_eq!(approval["task_id"], "directory/ready");
    assert_eq!(
        approval["message"],
        "cutover of `directory` approved by alice"
    );
    // Given to a warped run (its windows years ahead), the go is dated in that run's
    // time: after what the run did before it, not at the wall clock's today.
    let before = log
        .iter()
        .take_while(|e| e["kind"] != "operator.approve")
        .filter_map(|e| e["at"].as_i64())
        .max()
        .unwrap_or_default();
    assert!(
        approval["at"].as_i64().unwrap_or_default() >= before,
        "{approval} is dated before the run's events that came first ({before})"
    );
    assert!(
        log.iter().any(|e| e["kind"] == "gate.open"
            && e["task_id"] == "directory/ready"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("approved by alice"))),
        "{log:#?}"
    );

    succeeds(wavelift(&dir, &["approve", "wave-2", "--by", "alice"]));
    let run = succeeds(run_until_done(&dir, false));
    assert!(
        run.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("every task is final")),
        "{}",
        run.describe()
    );
    let states = task_states(&dir);
    assert!(
        states
            .iter()
            .all(|(id, s)| s == "succeeded" || (id == "shop-batch-01/boot_test" && s == "skipped")),
        "{states:#?}"
    );
}

#[test]
fn retry_skip_and_cancel_steer_real_tasks_and_refuse_nonsense() {
    // Starts: the wavelift binary (run, status, retry, skip, cancel, approve, events) in
    // a copy of the quickstart on the rehearsal engine, with cutover approvals required
    // so that the first run stops with tasks left to steer.
    let scratch = Scratch::new("levers");
    let dir = quickstart_copy(scratch.path(), "sim");
    edit(
        &dir.join("wavelift.yaml"),
        "approval: false",
        "approval: true",
    );
    succeeds(run_until_done(&dir, true));
    let before = status_tasks(&dir, &[]);
    assert_eq!(state(&before, "directory/ready"), "awaiting_approval");

    refuses(
        &dir,
        &["retry", "nope/cutover"],
        "no task `nope/cutover`: task ids are SERVER/KIND, or APPLICATION/ready for a gate (see wavelift status)",
    );
    refuses(
        &dir,
        &["retry", "dir-01/boot_test"],
        "`dir-01/boot_test` is succeeded: only a failed, blocked or cancelled task can be retried (and a succeeded agent_push, to install its agent again)",
    );
    refuses(
        &dir,
        &["skip", "dir-01/boot_test"],
        "`dir-01/boot_test` is already succeeded",
    );
    refuses(
        &dir,
        &["cancel", "dir-01/boot_test"],
        "`dir-01/boot_test` is already succeeded",
    );
    refuses(
        &dir,
        &["cancel", "dir-01"],
        "no task `dir-01`: task ids are SERVER/KIND, or APPLICATION/ready for a gate (see wavelift status)",
    );
    refuses(
        &dir,
        &["skip", "dir-01/ready"],
        "no task `dir-01/ready`: a gate is its application's, `directory/ready`",
    );
    assert_eq!(
        status_tasks(&dir, &[]),
        before,
        "a refused lever changes nothing"
    );
    assert!(
        events(&dir, &[]).iter().all(|e| !e["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("operator.") && k != "operator.apply")),
        "a refused lever is not logged"
    );

    // Cancel: the task is cancelled, what depends on it is blocked.
    let cancel = succeeds(wavelift(&dir, &["cancel", "dir-02/cutover", "--by", "bob"]));
    assert_eq!(cancel.stdout, "dir-02/cutover cancelled (bob)\n");
    let tasks = status_tasks(&dir, &[]);
    assert_eq!(state(&tasks, "dir-02/cutover"), "cancelled");
    assert_eq!(tasks["dir-02/cutover"]["reason"], "cancelled by bob");
    for id in ["dir-02/cmdb_cleanup", "payroll/ready", "webshop/ready"] {
        assert_eq!(state(&tasks, id), "blocked", "{id}");
    }
    assert_eq!(state(&tasks, "dir-01/cutover"), "pending");
    assert_eq!(state(&tasks, "directory/ready"), "awaiting_approval");

    // Retry: pending again, and what it blocked waits for it again.
    let retry = succeeds(wavelift(&dir, &["retry", "dir-02/cutover", "--by", "bob"]));
    assert_eq!(retry.stdout, "dir-02/cutover will run again (bob)\n");
    let tasks = status_tasks(&dir, &[]);
    for id in [
        "dir-02/cutover",
        "dir-02/cmdb_cleanup",
        "payroll/ready",
        "webshop/ready",
    ] {
        assert_eq!(state(&tasks, id), "pending", "{id}");
    }
    refuses(
        &dir,
        &["retry", "dir-02/cutover"],
        "`dir-02/cutover` is pending: only a failed, blocked or cancelled task can be retried",
    );
    // Abort: only a running cutover; one that has not started is cancelled.
    refuses(
        &dir,
        &["abort", "dir-02/cutover", "--reason", "a blocker"],
        "`dir-02/cutover` is pending: only a running cutover is aborted; one that has not started is cancelled (wavelift cancel dir-02/cutover)",
    );
    refuses(
        &dir,
        &["abort", "dir-02/boot_test", "--reason", "a blocker"],
        // (It succeeded: a cancel is not suggested for it.)
        "`dir-02/boot_test` is not a cutover: only a running cutover is aborted",
    );

    // Skip: a gate waiting for its go is not skipped (the go is an approval, recorded
    // with who gave it); another task is, and counts as done. A cancelled cutover leaves
    // its clean-up blocked, and the run ends saying it failed. (The gates are approved
    // ahead, so that the warped clock does not run past the windows while they wait.)
    refuses(
        &dir,
        &["skip", "directory/ready", "--by", "carol"],
        "`directory/ready` waits for the go of directory's cutover, which a skip does not give: give it with `wavelift approve wave-1 --app directory` (recorded with who and when), or hold it with `wavelift no-go wave-1 --reason TEXT`",
    );
    assert_eq!(
        state(&status_tasks(&dir, &[]), "directory/ready"),
        "awaiting_approval"
    );
    let skip = succeeds(wavelift(
        &dir,
        &["skip", "payroll-app-01/cmdb_cleanup", "--by", "carol"],
    ));
    assert_eq!(skip.stdout, "payroll-app-01/cmdb_cleanup skipped (carol)\n");
    succeeds(wavelift(
        &dir,
        &["cancel", "payroll-db-01/cutover", "--by", "bob"],
    ));
    for wave in ["wave-1", "wave-2"] {
        succeeds(wavelift(&dir, &["approve", wave, "--by", "alice"]));
    }
    let run = run_until_done(&dir, false);
    assert_eq!(
        run.code,
        1,
        "a blocked task makes the run fail:\n{}",
        run.describe()
    );
    assert!(
        run.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("every task is final")),
        "{}",
        run.describe()
    );
    let tasks = status_tasks(&dir, &[]);
    for id in ["dir-01/cutover", "dir-02/cutover", "dir-02/cmdb_cleanup"] {
        assert_eq!(state(&tasks, id), "succeeded", "{id}");
    }
    assert_eq!(state(&tasks, "payroll-db-01/cutover"), "cancelled");
    assert_eq!(state(&tasks, "payroll-db-01/cmdb_cleanup"), "blocked");
    for id in ["payroll-app-01/cutover", "shop-web-01/cutover"] {
        assert_eq!(state(&tasks, id), "succeeded", "{id}");
    }
    assert_eq!(state(&tasks, "payroll-app-01/cmdb_cleanup"), "skipped");
    assert_eq!(tasks["directory/ready"]["approved_by"], "alice");

    let levers: Vec<(String, String)> = events(&dir, &[])
        .iter()
        .filter(|e| {
            e["kind"].as_str().is_some_and(|k| {
                ["operator.cancel", "operator.retry", "operator.skip"].contains(&k)
            })
        })
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("operator.cancel", "dir-02/cutover cancelled by bob"),
        ("operator.retry", "dir-02/cutover retried by bob"),
        (
            "operator.skip",
            "payroll-app-01/cmdb_cleanup skipped by carol",
        ),
        ("operator.cancel", "payroll-db-01/cutover cancelled by bob"),
    ]
    .iter()
    .map(|(k, m)| ((*k).to_owned(), (*m).to_owned()))
    .collect();
    assert_eq!(levers, expected);
}

#[test]
fn apply_reports_what_changed_and_nothing_when_nothing_did() {
    // Starts: the wavelift binary (apply, status) in a copy of the quickstart.
    let scratch = Scratch::new("apply");
    let dir = quickstart_copy(scratch.path(), "sim");
    let first = succeeds(wavelift(&dir, &["apply", "."]));
    let mut expected = String::from("applied revision 1: 51 tasks\n");
    for server in SERVERS {
        expected.push_str(&format!("  + {server}\n"));
    }
    assert_eq!(first.stdout, expected);

    let second = succeeds(wavelift(&dir, &["apply", "."]));
    assert_eq!(
        second.stdout,
        "applied revision 2: 51 tasks, no server changed\n"
    );
    // The waves without the configuration they were applied with: the built-in one
    // would replace it unseen, so nothing is applied.
    let without = wavelift(&dir, &["apply", "waves"]);
    assert_eq!(without.code, 1, "{}", without.describe());
    assert!(
        without.stderr.contains(
            "nothing applied: the last revision was applied with the configuration ./wavelift.yaml, which is not among the paths now"
        ),
        "{}",
        without.describe()
    );
    // Nothing ran: each wave is before its build week, by the wall clock.
    let status = succeeds(wavelift(&dir, &["status"]));
    let phases: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("  phase: "))
        .collect();
    assert_eq!(phases.len(), 2, "{}", status.stdout);
    for line in phases {
        assert!(
            line.starts_with("  phase: not started; next: build starts ")
                && line.ends_with(" Europe/Rome"),
            "{line}"
        );
    }
    let document: Value =
        serde_json::from_str(&succeeds(wavelift(&dir, &["status", "--json"])).stdout)
            .expect("status --json");
    assert_eq!(document["clock"], "wall");
    let waves = document["waves"].as_array().cloned().unwrap_or_default();
    assert_eq!(waves.len(), 2, "{document:#}");
    for wave in &waves {
        assert_eq!(wave["phase"], "not started", "{wave:#}");
        assert_eq!(wave["next_milestone"]["what"], "build starts", "{wave:#}");
        assert!(wave["next_milestone"]["at"].is_string(), "{wave:#}");
    }

    edit(
        &dir.join("waves/wave-2.yaml"),
        "      - name: shop-web-02\n        fqdn: shop-web-02.lab.example.com\n        ip: 127.0.20.2\n        disks: [{ device: .wavelift/disks/shop-web-02-vda.img, size: 16MiB, used: 6MiB, boot: true }]\n",
        "",
    );
    let third = succeeds(wavelift(&dir, &["apply", "."]));
    assert_eq!(
        third.stdout,
        "applied revision 3: 45 tasks\n  - shop-web-02 (its unfinished tasks are cancelled; its history is kept)\n"
    );
    let tasks = status_tasks(&dir, &[]);
    assert_eq!(tasks.len(), 51, "the removed server's tasks are kept");
    for kind in KINDS {
        let id = format!("shop-web-02/{kind}");
        assert_eq!(state(&tasks, &id), "cancelled", "{id}");
        assert_eq!(
            tasks[&id]["reason"], "cancelled: removed from the definitions",
            "{id}"
        );
    }
    assert!(
        tasks
            .iter()
            .filter(|(id, _)| !id.starts_with("shop-web-02/"))
            .all(|(id, t)| t["state"] == "pending"
                || (id == "shop-batch-01/boot_test" && t["state"] == "skipped")),
        "apply runs nothing: {tasks:#?}"
    );
    assert!(
        tasks
            .iter()
            .all(|(id, t)| t["server_removed"] == id.starts_with("shop-web-02/")),
        "the removed server's tasks say so: {tasks:#?}"
    );
    // The text status counts what the definitions hold (as apply did) and lists the
    // removed server apart.
    let status = succeeds(wavelift(&dir, &["status", "--wave", "wave-2"]));
    assert!(
        status.stdout.starts_with("wave-2: 1 of 19 tasks final (18 pending, 1 skipped)\n")
            && status.stdout.contains(
                "  removed by an apply (their history is kept: wavelift events --wave wave-2): shop-web-02\n"
            )
            && !status.stdout.contains("  shop-web-02 "),
        "{}",
        status.stdout
    );

    // A command about the removed server says it was removed, not that it never was.
    let removed = wavelift(&dir, &["replication", "stop", "shop-web-02"]);
    assert!(
        removed.code == 1
            && removed.stderr.contains(
                "server `shop-web-02` was removed from the waves by an apply (revision 3 no longer has it): its history is kept"
            ),
        "{}",
        removed.describe()
    );

    edit(
        &dir.join("waves/wave-2.yaml"),
        "ip: 127.0.20.1",
        "ip: 127.0.20.9",
    );
    let fourth = succeeds(wavelift(&dir, &["apply", "."]));
    assert_eq!(
        fourth.stdout,
        "applied revision 4: 45 tasks\n  ~ shop-web-01: ip\n"
    );
}

/// The timeline of each wave in `rehearse`'s output: label -> "Www YYYY-MM-DD HH:MM".
fn timelines(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut wave: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(" servers):") {
            wave = name.split(" (").next().map(str::to_owned);
            continue;
        }
        if !line.starts_with("  ") {
            wave = None;
            continue;
        }
        if let (Some(wave), Some((label, value))) =
            (&wave, line.get(2..).and_then(|l| l.split_at_checked(30)))
        {
            out.entry(wave.clone())
                .or_default()
                .insert(label.trim_end().to_owned(), value.trim().to_owned());
        }
    }
    out
}

/// Every file and folder under `dir`, relative to it.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if path.is_dir() {
                folders.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn rehearse_prints_a_timeline_per_wave_and_the_risks_and_leaves_nothing_behind() {
    // Starts: the wavelift binary (rehearse) in a copy of the quickstart as shipped, with
    // its temporary folder pointed into the test's folder to see that it is cleaned up.
    let scratch = Scratch::new("rehearse");
    let dir = quickstart_copy(scratch.path(), "local");
    let temporary = scratch.path().join("tmp");
    fs::create_dir_all(&temporary).unwrap_or_else(|err| panic!("cannot create tmp: {err}"));
    let before = listing(&dir);
    let rehearse = |seed: &str| -> Run {
        let mut args = vec!["rehearse", "."];
        if !seed.is_empty() {
            args.extend(["--seed", seed]);
        }
        let output = wavelift_tests::wavelift_command(&dir)
            .args(args)
            .env("TMPDIR", &temporary)
            .output()
            .unwrap_or_else(|err| panic!("cannot start wavelift: {err}"));
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        succeeds(run)
    };
    let first = rehearse("6");
    let lines: Vec<&str> = first.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l
            .starts_with("REHEARSAL on the sim engine (seed 6): 51 tasks played in ")
            && l.ends_with("; nothing was contacted; approvals assumed given")),
        "{}",
        first.describe()
    );
    let line = |label: &str, value: &str| format!("  {label:<30} {value}");
    for expected in [
        "wave-1 (4 servers):".to_owned(),
        line("window opens", &format!("Sat {}", QUICKSTART_WINDOWS[0])),
        line("window closes", "Sun 2046-12-16 04:00"),
        "wave-2 (4 servers):".to_owned(),
        line("window opens", &format!("Sat {}", QUICKSTART_WINDOWS[1])),
        "risks:".to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "`{expected}` is missing:\n{}",
            first.describe()
        );
    }
    // The retried tasks are named, since the rehearsal's log is gone with its store.
    let risks: Vec<&str> = lines
        .iter()
        .skip_while(|l| **l != "risks:")
        .skip(1)
        .copied()
        .collect();
    assert_eq!(risks.len(), 2, "{}", first.describe());
    for risk in &risks {
        let (wave, rest) = risk.trim_start().split_once(": ").unwrap_or_default();
        let (task, last) = rest
            .split_once(" was retried 1 time(s) (injected failures); the last: ")
            .unwrap_or_default();
        assert!(
            ["wave-1", "wave-2"].contains(&wave)
                && task.contains('/')
                && last.starts_with(&format!("{task} failed (")),
            "{risk}"
        );
    }
    // Each wave's milestones happen in order, and its cutovers inside its window.
    let timelines = timelines(&first.stdout);
    assert_eq!(
        timelines.keys().collect::<Vec<_>>(),
        ["wave-1", "wave-2"],
        "{}",
        first.stdout
    );
    for (wave, timeline) in &timelines {
        let at = |label: &str| -> &str {
            timeline
                .get(label)
                .map(|value| value.get(4..).unwrap_or_default())
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| panic!("{wave}: no time for `{label}`:\n{}", first.stdout))
        };
        let order = [
            "first task",
            "agents pushed",
            "all replicating (continuous)",
            "boot tests done",
            "window opens",
            "cutovers done",
            "window closes",
            "CMDB cleaned up",
        ];
        for pair in order.windows(2) {
            assert!(
                at(pair[0]) <= at(pair[1]),
                "{wave}: `{}` after `{}`:\n{}",
                pair[0],
                pair[1],
                first.stdout
            );
        }
    }

    let again = rehearse("6");
    assert_eq!(
        again.stdout.lines().skip(1).collect::<Vec<_>>(),
        lines[1..].to_vec(),
        "the same seed plays the same rehearsal"
    );
    // Without --seed, the configuration's (the quickstart's is 7).
    let configured = rehearse("");
    assert!(
        configured
            .stdout
            .starts_with("REHEARSAL on the sim engine (seed 7): "),
        "{}",
        configured.describe()
    );
    let other = rehearse("1");
    assert!(
        other
            .stdout
            .ends_with("risks:\n  none found in this rehearsal\n"),
        "{}",
        other.describe()
    );

    assert_eq!(
        listing(&dir),
        before,
        "rehearse writes nothing in the working folder"
    );
    assert_eq!(
        listing(&temporary),
        Vec::<String>::new(),
        "rehearse removes its temporary folder"
    );
}

/// A PostgreSQL database that is not there is said once, with what to do; a server
/// nobody listens on is said at once; a database without Wavelift's state is said, and
/// left as it was. Starts: the wavelift binary, against this machine's PostgreSQL
/// (127.0.0.1:5432; psql makes and drops a database of the test's own) and a loopback
/// port nothing listens on.
#[test]
fn a_missing_postgresql_database_is_said_once_with_what_to_do() {
    let scratch = Scratch::new("pg-missing");
    let missing = wavelift(
        scratch.path(),
        &[
            "status",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/wavelift_no_such_database",
        ],
    );
    assert_eq!(missing.code, 1, "{}", missing.describe());
    assert_eq!(
        missing.stderr.trim(),
        "error: cannot open the database postgres://postgres@127.0.0.1:5432/wavelift_no_such_database: database \"wavelift_no_such_database\" does not exist; create it (createdb wavelift_no_such_database, or CREATE DATABASE wavelift_no_such_database as a user who may) or name another (--database-url, WAVELIFT_DATABASE_URL or the configuration's database.url)",
        "{}",
        missing.describe()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = std::time::Instant::now();
    let nobody = wavelift(
        scratch.path(),
        &[
            "status",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:{port}/test"),
        ],
    );
    assert!(
        nobody.code == 1
            && nobody.stderr.contains(&format!(
                "127.0.0.1:{port} refused the connection (is the server running and the address right?)"
            )),
        "{}",
        nobody.describe()
    );
    // Refused at once, not after the pool's timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A database without Wavelift's state: said, and nothing created in it (`test`
    // may hold other suites' tables, so a database of this test's own).
    let name = format!("wavelift_empty_{}", std::process::id());
    assert!(
        psql(&format!("CREATE DATABASE {name}"), "postgres")
            .status
            .success()
    );
    let empty = wavelift(
        scratch.path(),
        &[
            "events",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:5432/{name}"),
        ],
    );
    let tables = psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        &name,
    );
    let _ = psql(&format!("DROP DATABASE {name} WITH (FORCE)"), "postgres");
    assert_eq!(empty.code, 1, "{}", empty.describe());
    assert!(
        empty.stderr.contains(&format!(
            "no Wavelift state in the database postgres://postgres@127.0.0.1:5432/{name}: apply definitions first"
        )),
        "{}",
        empty.describe()
    );
    assert_eq!(String::from_utf8_lossy(&tables.stdout).trim(), "0");
}

/// Starts: `wavelift run` on the rehearsal engine and the wall clock (the quickstart's
/// windows are years ahead: nothing falls due), and an `apply` beside it. The run goes
/// on with the revision applied while it runs (it kept the one it started with, and a
/// server added meanwhile failed as "not in the applied definitions").
#[test]
fn a_run_goes_on_with_a_revision_applied_while_it_runs() {
    let scratch = Scratch::new("run-follows");
    let dir = quickstart_copy(scratch.path(), "sim");
    succeeds(wavelift(&dir, &["apply", "."]));
    let child = wavelift_command(&dir)
        .args(["run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wavelift run");
    std::thread::sleep(std::time::Duration::from_secs(3));
    edit(
        &dir.join("waves/wave-2.yaml"),
        "notify: [factory-lead@example.com]",
        "notify: [factory-lead@example.com, cab@example.com]",
    );
    let applied = succeeds(wavelift(&dir, &["apply", "."]));
    assert!(
        applied.stdout.contains("applied revision 2"),
        "{}",
        applied.describe()
    );
    std::thread::sleep(std::time::Duration::from_secs(5));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().expect("the run's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("revision 2 was applied while this run went on: it goes on with it"),
        "{stderr}"
    );
    assert!(output.status.success(), "{stderr}");
}

/// Starts: PostgreSQL (127.0.0.1:5432; psql makes a database of the test's own and drops
/// it while the run uses it) and `wavelift run` on the rehearsal engine and the wall
/// clock. A database that goes away stops the run with one sentence naming it and what
/// to do, not sqlx's text twice.
#[test]
fn a_run_whose_database_goes_away_says_so_once() {
    let scratch = Scratch::new("pg-gone");
    let dir = quickstart_copy(scratch.path(), "sim");
    let name = format!("wavelift_gone_{}", std::process::id());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    assert!(
        psql(&format!("CREATE DATABASE {name}"), "postgres")
            .status
            .success()
    );
    succeeds(wavelift(&dir, &["apply", ".", "--database-url", &url]));
    let child = wavelift_command(&dir)
        .args(["run", "--database-url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wavelift run");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let dropped = psql(&format!("DROP DATABASE {name} WITH (FORCE)"), "postgres");
    let started = std::time::Instant::now();
    let mut child = child;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the run") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the run went on for a minute without its database");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(dropped.status.success(), "{dropped:?}");
    let output = child.wait_with_output().expect("the run's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        said.starts_with(&format!(
            "error: the database {url} failed while the run went on: "
        )) && said.ends_with(
            "; the run stopped, and what it did is stored up to its last step: start it again once the database answers"
        ),
        "{stderr}"
    );
}

/// A TCP relay on a loopback port of the test's own to PostgreSQL (127.0.0.1:5432) that
/// can be cut (its connections shut, new ones closed as they come) and healed: a database
/// that stops answering for a while, as a restart or a network down would make it.
struct PgRelay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl PgRelay {
    fn start() -> PgRelay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let relay = PgRelay {
            port,
            cut: Default::default(),
            live: Default::default(),
        };
        let (cut, live) = (relay.cut.clone(), relay.live.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect("127.0.0.1:5432") else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut held) = live.lock() {
                    held.extend(client.try_clone());
                    held.extend(server.try_clone());
                }
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut held) = self.live.lock() {
            for stream in held.drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Starts: PostgreSQL (127.0.0.1:5432; psql makes a database of the test's own), a
/// [`PgRelay`] to it, and `wavelift run` on the rehearsal engine and the wall clock,
/// through the relay. The relay is cut for 8 s, then healed: the run says once that it
/// waits for the database and once that it answers again, and goes on (a run stopped at
/// the first lost connection, for good). Cut again, a Ctrl-C stops the run within
/// seconds, saying the database did not answer (it waited for the pool's timeouts).
#[test]
fn a_run_waits_out_a_database_that_stops_answering_for_a_while() {
    let scratch = Scratch::new("pg-outage");
    let dir = quickstart_copy(scratch.path(), "sim");
    let name = format!("wavelift_outage_{}", std::process::id());
    assert!(
        psql(&format!("CREATE DATABASE {name}"), "postgres")
            .status
            .success()
    );
    let direct = format!("postgres://postgres@127.0.0.1:5432/{name}");
    succeeds(wavelift(&dir, &["apply", ".", "--database-url", &direct]));
    let relay = PgRelay::start();
    let url = format!("postgres://postgres@127.0.0.1:{}/{name}", relay.port);
    let mut child = wavelift_command(&dir)
        .args(["run", "--database-url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wavelift run");
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let said = said.clone();
        let stderr = child.stderr.take().expect("the run's stderr");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut said) = said.lock() {
                    said.push_str(&line);
                    said.push('\n');
                }
            }
        })
    };
    let stderr = || said.lock().map(|s| s.clone()).unwrap_or_default();
    std::thread::sleep(std::time::Duration::from_secs(3));
    relay.cut();
    let waits = format!("the database {url} does not answer (");
    let waits = waits.as_str();
    let started = std::time::Instant::now();
    while !stderr().contains(waits) && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(8));
    assert!(
        child.try_wait().expect("the run").is_none(),
        "the run waits for its database: {}",
        stderr()
    );
    relay.heal();
    let back = "the database answers again after ";
    let started = std::time::Instant::now();
    while !stderr().contains(back) && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // It goes on: still running a few seconds later, with its database.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(child.try_wait().expect("the run").is_none(), "{}", stderr());
    // Cut again (the same outage, as it comes back within a minute: not said again), and
    // stopped meanwhile.
    relay.cut();
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(child.try_wait().expect("the run").is_none(), "{}", stderr());
    let asked = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().expect("the run's output");
    let took = asked.elapsed();
    let _ = reader.join();
    let stderr = stderr();
    let _ = psql(&format!("DROP DATABASE {name} WITH (FORCE)"), "postgres");
    assert!(
        took < std::time::Duration::from_secs(10),
        "Ctrl-C took {took:?} while the database did not answer: {stderr}"
    );
    assert_eq!(stderr.matches(waits).count(), 1, "said once: {stderr}");
    assert!(
        stderr.contains("the run waits for it, up to 10 minutes (Ctrl-C stops it)"),
        "{stderr}"
    );
    assert_eq!(stderr.matches(back).count(), 1, "said once: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("stopped while the database {url} did not answer; what the run did is stored up to its last step: `wavelift run` goes on from there once the database answers")),
        "{stdout}{stderr}"
    );
}

/// `psql` on the test PostgreSQL (127.0.0.1:5432, trust auth) in database `db`.
fn psql(sql: &str, db: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .expect("psql")
}
