//! CMDB cleanup in real CMDB APIs: a wave runs to its end and its cmdb_cleanup retires
//! every source in ServiceNow (Table API), NetBox (virtual machines and journal
//! entries) or any HTTP API, through rate limiting (429 with Retry-After), a server
//! error, pages of one record (so finding a name that two records share reads past the
//! first page), records that are missing or ambiguous, a rerun that finds the work done,
//! and a dry run that writes nothing.
//!
//! Starts: tests/peers/cmdb_api.py (Python's http.server on a free loopback port), which
//! answers with the request and response shapes of ServiceNow's and NetBox's API
//! references and logs every request; the wavelift binary (apply, run --time-warp,
//! retry, serve) in a copy of the quickstart's first wave on the rehearsal engine.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use wavelift_tests::{Scratch, quickstart_copy, wavelift, wavelift_command, workspace_root};

use crate::serve::{Served, client, token};

/// The fake CMDB APIs, stopped when dropped.
struct CmdbApi {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl CmdbApi {
    fn start(state: Value) -> CmdbApi {
        let mut child = Command::new("python3")
            .arg(workspace_root().join("tests/peers/cmdb_api.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 tests/peers/cmdb_api.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        let api = CmdbApi {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
        };
        let reset = api
            .http
            .post(format!("{}/_reset", api.base))
            .json(&state)
            .send()
            .expect("reset");
        assert!(reset.status().is_success());
        api
    }

    /// The fake's state and its log of requests.
    fn seen(&self) -> (Value, Vec<Value>) {
        let seen: Value = self
            .http
            .get(format!("{}/_state", self.base))
            .send()
            .and_then(|r| r.json())
            .expect("state");
        let log = seen["log"].as_array().cloned().unwrap_or_default();
        (seen["state"].clone(), log)
    }
}

impl Drop for CmdbApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The quickstart's first wave (four servers with CMDB ids) with this `cmdb:` section.
fn wave_with_cmdb(scratch: &Scratch, cmdb: &str) -> PathBuf {
    let dir = quickstart_copy(scratch.path(), "sim");
    std::fs::remove_file(dir.join("waves/wave-2.yaml")).expect("one wave");
    let config = dir.join("wavelift.yaml");
    let text = std::fs::read_to_string(&config).expect("wavelift.yaml");
    let start = text.find("cmdb:\n").expect("a cmdb section");
    let end = start + text[start..].find("sites:").expect("sites after cmdb");
    std::fs::write(&config, format!("{}{cmdb}{}", &text[..start], &text[end..]))
        .expect("wavelift.yaml");
    dir
}

fn run_to_the_end(dir: &Path, env: &[(&str, &str)]) {
    let applied = wavelift(dir, &["apply", "."]);
    assert_eq!(applied.code, 0, "{}", applied.describe());
    let mut run = wavelift_command(dir);
    run.args(["run", "--until-done", "--time-warp"]);
    for (key, value) in env {
        run.env(key, value);
    }
    let output = run.output().expect("wavelift run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("tasks final"),
        "the run did not end: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each cmdb_cleanup task's state and reason, by server.
fn cleanups(dir: &Path) -> Vec<(String, String, String)> {
    let status = wavelift(dir, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["kind"] == "cmdb_cleanup")
        .map(|t| {
            (
                t["server"].as_str().unwrap_or("").to_owned(),
                t["state"].as_str().unwrap_or("").to_owned(),
                t["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn requests<'a>(log: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|r| {
            r["method"] == method && r["path"].as_str().is_some_and(|p| p.starts_with(path))
        })
        .collect()
}

/// A run on ServiceNow holding the quickstart's four CIs, none retired, with these
/// lines added to the `cmdb:` section.
fn servicenow_run(scratch: &Scratch, extra: &str) -> (CmdbApi, PathBuf) {
    let api = CmdbApi::start(json!({
        "servicenow": { "password": "pw", "tables": { "cmdb_ci_server": [
            ci("0123456789abcdef0123456789abcdef", "CI0001001"),
            ci("11111111111111111111111111111111", "CI0001002"),
            ci("22222222222222222222222222222222", "CI0002001"),
            ci("33333333333333333333333333333333", "CI0002002"),
        ] } },
    }));
    let dir = wave_with_cmdb(
        scratch,
        &format!(
            "cmdb:\n  kind: servicenow\n  url: {}\n  user: wavelift\n  credential: env:WL_TEST_SN_PASSWORD\n{extra}",
            api.base
        ),
    );
    run_to_the_end(&dir, &[("WL_TEST_SN_PASSWORD", "pw")]);
    (api, dir)
}

fn ci(sys_id: &str, name: &str) -> Value {
    json!({ "sys_id": sys_id, "name": name, "install_status": "1", "comments": "" })
}

#[test]
fn servicenow_retires_each_ci_once_through_rate_limits_and_says_which_name_is_ambiguous() {
    let scratch = Scratch::new("cmdb-servicenow");
    let api = CmdbApi::start(json!({
        "servicenow": {
            "user": "wavelift",
            "password": "sn-Secret-7",
            "tables": { "cmdb_ci_server": [
                ci("0123456789abcdef0123456789abcdef", "CI0001001"),
                // Retired by an earlier run that died before it recorded so: left alone.
                { "sys_id": "11111111111111111111111111111111", "name": "CI0001002",
                  "install_status": "7", "comments": "Retired by Wavelift: migrated to i-0abc" },
                ci("22222222222222222222222222222222", "CI0002001"),
                ci("33333333333333333333333333333333", "CI0002002"),
                ci("44444444444444444444444444444444", "CI0002002"),
            ] },
        },
        "faults": { "throttle": 2 },
        "page_size": 1,
    }));
    let dir = wave_with_cmdb(
        &scratch,
        &format!(
            "cmdb:\n  kind: servicenow\n  url: {}\n  user: wavelift\n  credential: env:WL_TEST_SN_PASSWORD\n  retry_after: 1s\n",
            api.base
        ),
    );
    run_to_the_end(&dir, &[("WL_TEST_SN_PASSWORD", "sn-Secret-7")]);

    let first = cleanups(&dir);
    for (server, state, reason) in &first {
        if server == "payroll-db-01" {
            assert_eq!(state, "failed", "{server}");
            assert!(
                reason.contains(
                    "2 CIs are named `CI0002002` in the ServiceNow table cmdb_ci_server (sys_id 33333333333333333333333333333333, 44444444444444444444444444444444): give the server's cmdb_id as the right one's sys_id"
                ),
                "{reason}"
            );
        } else {
            assert_eq!(state, "succeeded", "{server}: {reason}");
        }
    }
    let (state, log) = api.seen();
    let table = state["servicenow"]["tables"]["cmdb_ci_server"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for i in [0, 2] {
        let record = &table[i];
        assert_eq!(record["install_status"], "7", "{record}");
        assert!(
            record["comments"]
                .as_str()
                .is_some_and(|c| c.starts_with("Retired by Wavelift: migrated to sim-")),
            "{record}"
        );
    }
    assert_eq!(
        table[1]["comments"], "Retired by Wavelift: migrated to i-0abc",
        "a CI retired already is not written again"
    );
    assert_eq!(
        table[3]["install_status"], "1",
        "the ambiguous CIs are left alone"
    );
    assert_eq!(table[4]["install_status"], "1");
    let patches = requests(&log, "PATCH", "/api/now/table/cmdb_ci_server/");
    assert_eq!(patches.len(), 2, "one PATCH per CI to retire: {patches:?}");
    assert!(patches.iter().all(
        |p| p["authorization"] == "Basic d2F2ZWxpZnQ6c24tU2VjcmV0LTc="
            && p["content_type"] == "application/json"
    ));
    // The first two requests were answered 429 (Retry-After: 1), and asked again.
    let throttled = log.iter().filter(|r| r["fault"] == "429").count();
    assert_eq!(throttled, 2);
    for (i, request) in log.iter().enumerate().filter(|(_, r)| r["fault"] == "429") {
        let same = |r: &Value| {
            r["method"] == request["method"]
                && r["path"] == request["path"]
                && r["query"] == request["query"]
                && r["fault"].is_null()
        };
        assert!(
            log[i + 1..].iter().any(same),
            "the throttled request was not sent again: {request}"
        );
    }
    // The name two CIs share was read across pages: the second page was asked for.
    assert!(
        requests(&log, "GET", "/api/now/table/cmdb_ci_server")
            .iter()
            .any(|r| r["query"]
                .as_str()
                .is_some_and(|q| q.contains("sysparm_offset=1"))),
        "no second page read"
    );

    // The duplicate fixed, the failed cleanup retried: that CI alone is written.
    let removed = api
        .http
        .post(format!("{}/_remove", api.base))
        .json(&json!({ "table": "cmdb_ci_server", "sys_id": "44444444444444444444444444444444" }))
        .send()
        .expect("remove");
    assert!(removed.status().is_success());
    let retried = wavelift(&dir, &["retry", "payroll-db-01/cmdb_cleanup"]);
    assert_eq!(retried.code, 0, "{}", retried.describe());
    run_to_the_end(&dir, &[("WL_TEST_SN_PASSWORD", "sn-Secret-7")]);
    assert!(
        cleanups(&dir)
            .iter()
            .all(|(_, state, _)| state == "succeeded")
    );
    let (state, after) = api.seen();
    let patched: Vec<&str> = requests(&after, "PATCH", "/api/now/table/")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(patched.len(), 3, "{patched:?}");
    assert_eq!(
        patched[2],
        "/api/now/table/cmdb_ci_server/33333333333333333333333333333333"
    );
    assert_eq!(
        state["servicenow"]["tables"]["cmdb_ci_server"][3]["install_status"],
        "7"
    );
    let events = wavelift(&dir, &["events"]);
    assert_eq!(
        events.stdout.matches("cmdb.servicenow.retire").count(),
        3,
        "{}",
        events.stdout
    );
    assert!(!events.stdout.contains("sn-Secret-7"));
}

#[test]
fn netbox_sets_virtual_machines_decommissioning_with_a_journal_entry_through_a_server_error() {
    let scratch = Scratch::new("cmdb-netbox");
    let vm = |id: u64, name: &str| json!({ "id": id, "name": name, "status": { "value": "active", "label": "Active" } });
    let retired = json!({ "id": 13, "name": "CI0002002", "status": { "value": "decommissioning", "label": "Decommissioning" } });
    let entry = |id: u64, comments: &str| json!({ "id": id, "assigned_object_type": "virtualization.virtualmachine", "assigned_object_id": 13, "kind": "info", "comments": comments });
    let api = CmdbApi::start(json!({
        "netbox": {
            // A v2 token (NetBox 4.5): sent as Bearer.
            "token": "nbt_abc123.0123456789",
            // CI0001002 is there twice; CI0002002 was retired by an earlier run, its
            // journal entry on the second page.
            "virtual-machines": [vm(11, "CI0001001"), vm(12, "CI0002001"), retired,
                                 vm(14, "CI0001002"), vm(15, "CI0001002")],
            "journal": [entry(1, "moved to rack 4"), entry(2, "Retired by Wavelift: migrated to i-0abc")],
        },
        "faults": { "fail": 1 },
        "page_size": 1,
    }));
    let dir = wave_with_cmdb(
        &scratch,
        &format!(
            "cmdb:\n  kind: netbox\n  url: {}\n  credential: env:WL_TEST_NB_TOKEN\n  retry_after: 1s\n",
            api.base
        ),
    );
    run_to_the_end(&dir, &[("WL_TEST_NB_TOKEN", "nbt_abc123.0123456789")]);
    for (server, state, reason) in cleanups(&dir) {
        if server == "dir-02" {
            assert_eq!(state, "failed");
            assert!(
                reason.contains("2 NetBox virtual-machines are named `CI0001002` (ids 14, 15): give the server's cmdb_id as the right one's id"),
                "{reason}"
            );
        } else {
            assert_eq!(state, "succeeded", "{server}: {reason}");
        }
    }
    let (state, log) = api.seen();
    let vms = state["netbox"]["virtual-machines"].as_array().expect("vms");
    let status_of = |id: u64| {
        vms.iter()
            .find(|v| v["id"] == id)
            .map(|v| v["status"]["value"].clone())
            .unwrap_or(Value::Null)
    };
    for id in [11, 12, 13] {
        assert_eq!(status_of(id), "decommissioning", "vm {id}");
    }
    for id in [14, 15] {
        assert_eq!(
            status_of(id),
            "active",
            "the ambiguous vm {id} is left alone"
        );
    }
    // Two new journal entries (11 and 12); 13 had Wavelift's already, on the journal's
    // second page, and got no PATCH and no entry.
    let journal = state["netbox"]["journal"].as_array().expect("journal");
    assert_eq!(journal.len(), 4, "{journal:?}");
    for entry in &journal[2..] {
        assert_eq!(
            entry["assigned_object_type"],
            "virtualization.virtualmachine"
        );
        assert_eq!(entry["kind"], "info");
        assert!(
            entry["comments"]
                .as_str()
                .is_some_and(|c| c.starts_with("Retired by Wavelift: migrated to sim-")),
            "{entry}"
        );
    }
    let mut journaled: Vec<u64> = journal[2..]
        .iter()
        .filter_map(|e| e["assigned_object_id"].as_u64())
        .collect();
    journaled.sort_unstable();
    assert_eq!(journaled, [11, 12]);
    assert!(
        log.iter()
            .all(|r| r["authorization"] == "Bearer nbt_abc123.0123456789")
    );
    assert!(
        requests(&log, "GET", "/api/extras/journal-entries/")
            .iter()
            .any(|r| r["query"].as_str().is_some_and(|q| q.contains("offset=1"))),
        "the journal's second page was read"
    );
    // The request answered 503 was sent again.
    let failed = log
        .iter()
        .position(|r| r["fault"] == "503")
        .expect("the 503");
    assert!(
        log[failed + 1..]
            .iter()
            .any(|r| r["path"] == log[failed]["path"] && r["query"] == log[failed]["query"]),
        "the request answered 503 was not sent again"
    );
    let mut patched: Vec<&str> = requests(&log, "PATCH", "/api/virtualization/virtual-machines/")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    patched.sort_unstable();
    assert_eq!(
        patched,
        [
            "/api/virtualization/virtual-machines/11/",
            "/api/virtualization/virtual-machines/12/"
        ]
    );
}

#[test]
fn any_http_api_gets_its_templated_request_and_a_dry_run_writes_nothing() {
    // A generic API: PUT /generic/ci/{{cmdb_id}} with a bearer token and a JSON body.
    let scratch = Scratch::new("cmdb-http");
    let api = CmdbApi::start(json!({ "generic": { "token": "gen-Token-1" } }));
    let cmdb = format!(
        "cmdb:\n  kind: http\n  method: PUT\n  url: \"{}/generic/ci/{{{{cmdb_id}}}}\"\n  headers:\n    Authorization: \"Bearer {{{{credential}}}}\"\n  body: '{{\"status\": \"retired\", \"migrated_to\": \"{{{{target}}}}\", \"host\": \"{{{{fqdn}}}}\"}}'\n  credential: env:WL_TEST_TOKEN\n",
        api.base
    );
    let dir = wave_with_cmdb(&scratch, &cmdb);
    run_to_the_end(&dir, &[("WL_TEST_TOKEN", "gen-Token-1")]);
    assert!(
        cleanups(&dir)
            .iter()
            .all(|(_, state, _)| state == "succeeded"),
        "{:?}",
        cleanups(&dir)
    );
    let (_, log) = api.seen();
    let puts = requests(&log, "PUT", "/generic/ci/");
    let mut paths: Vec<&str> = puts.iter().filter_map(|p| p["path"].as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/generic/ci/CI0001001",
            "/generic/ci/CI0001002",
            "/generic/ci/CI0002001",
            "/generic/ci/CI0002002"
        ]
    );
    for put in &puts {
        assert_eq!(put["authorization"], "Bearer gen-Token-1");
        let body: Value = serde_json::from_str(put["body"].as_str().unwrap_or("")).expect("JSON");
        assert_eq!(body["status"], "retired");
        assert!(
            body["migrated_to"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["host"]
                .as_str()
                .is_some_and(|h| h.ends_with(".lab.example.com")),
            "{body}"
        );
    }

    let events = wavelift(&dir, &["events"]);
    assert!(
        events.stdout.contains("cmdb.http.retire"),
        "{}",
        events.stdout
    );
    assert!(
        !events.stdout.contains("gen-Token-1"),
        "the token is in the log"
    );

    // A token the API does not take: each cleanup fails and says which credential.
    let scratch_refused = Scratch::new("cmdb-http-refused");
    let refused_dir = wave_with_cmdb(&scratch_refused, &cmdb);
    run_to_the_end(&refused_dir, &[("WL_TEST_TOKEN", "gen-Token-WRONG")]);
    for (server, state, reason) in cleanups(&refused_dir) {
        assert_eq!(state, "failed", "{server}");
        assert!(
            reason.contains(": 401 Unauthorized: the CMDB refused the credential (env:WL_TEST_TOKEN): unauthorized"),
            "{reason}"
        );
        assert!(!reason.contains("gen-Token-WRONG"), "{reason}");
    }

    // A dry run against ServiceNow: read, say what would change, write nothing.
    let scratch = Scratch::new("cmdb-dry-run");
    let (api, dir) = servicenow_run(&scratch, "  dry_run: true\n");
    let (state, log) = api.seen();
    assert!(requests(&log, "PATCH", "/").is_empty(), "a dry run wrote");
    assert!(
        state["servicenow"]["tables"]["cmdb_ci_server"]
            .as_array()
            .expect("table")
            .iter()
            .all(|ci| ci["install_status"] == "1")
    );
    let viewer = token(&dir, "viewer");
    let served = Served::start(&dir, &[]);
    let server: Value = client()
        .get(served.url("/api/servers/dir-01"))
        .bearer_auth(&viewer)
        .send()
        .and_then(|r| r.json())
        .expect("the server");
    let cleanup = server["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["kind"] == "cmdb_cleanup"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        cleanup["state"], "failed",
        "a dry run is not a cleanup: {cleanup}"
    );
    let reason = cleanup["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.starts_with("record CI0001001 (0123456789abcdef0123456789abcdef): dry run: would set install_status 1 -> 7 and comments to \"Retired by Wavelift: migrated to "),
        "{reason}"
    );
    assert!(
        reason.ends_with(
            "; nothing written, nothing archived: set cmdb.dry_run to false, then `wavelift retry dir-01/cmdb_cleanup`"
        ),
        "{reason}"
    );
    let events = wavelift(&dir, &["events"]);
    assert!(
        !events.stdout.contains("engine.archive"),
        "a dry run archived: {}",
        events.stdout
    );

    // A target field the table does not have: ServiceNow skips it and answers 200;
    // Wavelift reads the answer and says so.
    let scratch = Scratch::new("cmdb-field");
    let (_api, dir) = servicenow_run(&scratch, "  target_field: u_migrated_to\n");
    for (server, state, reason) in cleanups(&dir) {
        assert_eq!(state, "failed", "{server}");
        assert!(
            reason.contains("ServiceNow did not record the target in `u_migrated_to` of CI")
                && reason.ends_with("the field does not exist in cmdb_ci_server or the account may not write it (cmdb.target_field)"),
            "{reason}"
        );
    }
}
