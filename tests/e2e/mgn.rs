//! `wavelift sim serve-mgn`: the rehearsal engine behind MGN's JSON protocol, spoken to
//! as an MGN client does (POST /Operation with a JSON body, errors by status and
//! `x-amzn-ErrorType`), with the shapes of MGN's API reference: the quickstart's servers
//! as source servers, a test launch, the life cycle to cutover, its rule that a cutover's
//! targets are not terminated while it cuts over, finalize, archive, pagination and the
//! errors a client must handle.
//!
//! Then the `mgn` engine (the AWS SDK for Rust, aws-sdk-mgn) against the same endpoint:
//! source servers matched by name, FQDN and IP, a test launch and its instance, the life
//! cycle to cutover with MGN's conflict on terminating a cutover, finalize and archive.
//!
//! Starts: `wavelift sim serve-mgn examples/quickstart` on a free loopback port; the SDK
//! is given keys directly, so it asks no credential or Region service.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use wavelift_tests::{wavelift_binary, workspace_root};

struct Endpoint {
    child: Child,
    base: String,
}

impl Endpoint {
    fn start() -> Endpoint {
        let mut child = Command::new(wavelift_binary())
            .args(["sim", "serve-mgn"])
            .arg(workspace_root().join("examples/quickstart"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wavelift sim serve-mgn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the endpoint's line");
        assert!(
            line.starts_with("MGN endpoint (rehearsal engine, 8 source servers) on http://"),
            "{line}"
        );
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        Endpoint { child, base }
    }

    /// One operation: its status, its `x-amzn-ErrorType` and its JSON body.
    fn call(&self, operation: &str, body: Value) -> (u16, Option<String>, Value) {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/{operation}", self.base))
            .json(&body)
            .send()
            .unwrap_or_else(|err| panic!("{operation}: {err}"));
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().unwrap_or(Value::Null);
        (status, kind, body)
    }

    fn ok(&self, operation: &str, body: Value) -> Value {
        let (status, kind, answer) = self.call(operation, body);
        assert_eq!(status, 200, "{operation}: {kind:?} {answer}");
        answer
    }

    fn server(&self, id: &str) -> Value {
        let answer = self.ok(
            "DescribeSourceServers",
            json!({ "filters": { "sourceServerIDs": [id] } }),
        );
        answer["items"][0].clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn matches_id(id: &str, prefix: &str, len: usize, hex: bool) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == len
            && rest.chars().all(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_alphanumeric()
                }
            })
    })
}

#[test]
fn serve_mgn_speaks_mgns_protocol_over_the_rehearsal_engine() {
    let mgn = Endpoint::start();

    // Every server of the waves is a source server, replicating, with its hints.
    let all = mgn.ok("DescribeSourceServers", json!({}));
    let items = all["items"].as_array().expect("items");
    assert_eq!(items.len(), 8, "{all}");
    assert!(all.get("nextToken").is_none());
    let by_host = |host: &str| -> String {
        items
            .iter()
            .find(|s| s["sourceProperties"]["identificationHints"]["hostname"] == host)
            .and_then(|s| s["sourceServerID"].as_str())
            .unwrap_or_else(|| panic!("{host} in {all}"))
            .to_owned()
    };
    for item in items {
        let id = item["sourceServerID"].as_str().expect("an id");
        assert!(matches_id(id, "s-", 17, false), "{id}");
        assert_eq!(
            item["dataReplicationInfo"]["dataReplicationState"],
            "CONTINUOUS"
        );
        assert_eq!(item["lifeCycle"]["state"], "READY_FOR_TEST");
        assert_eq!(item["isArchived"], false);
        assert_eq!(item["replicationType"], "AGENT_BASED");
        assert!(
            item["arn"].as_str().is_some_and(
                |a| a == format!("arn:aws:mgn:eu-west-1:111122223333:source-server/{id}")
            ),
            "{item}"
        );
        assert!(
            item["dataReplicationInfo"]["replicatedDisks"][0]["totalStorageBytes"].as_u64()
                > Some(0)
        );
    }

    // Pages of three: 3, 3, 2.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for expected in [3, 3, 2] {
        let mut body = json!({ "maxResults": 3 });
        if let Some(t) = &token {
            body["nextToken"] = json!(t);
        }
        let page = mgn.ok("DescribeSourceServers", body);
        let ids: Vec<String> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|s| s["sourceServerID"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), expected, "{page}");
        seen.extend(ids);
        token = page["nextToken"].as_str().map(str::to_owned);
    }
    assert!(token.is_none());
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every server once");

    // A test launch, its job and its instance.
    let id = by_host("shop-web-01");
    let started = mgn.ok("StartTest", json!({ "sourceServerIDs": [id] }));
    let job_id = started["job"]["jobID"]
        .as_str()
        .expect("a job id")
        .to_owned();
    assert!(matches_id(&job_id, "mgnjob-", 17, false), "{job_id}");
    assert_eq!(started["job"]["type"], "LAUNCH");
    assert_eq!(started["job"]["initiatedBy"], "START_TEST");
    let jobs = mgn.ok("DescribeJobs", json!({ "filters": { "jobIDs": [job_id] } }));
    let job = &jobs["items"][0];
    assert_eq!(job["status"], "COMPLETED", "{jobs}");
    let server = &job["participatingServers"][0];
    assert_eq!(server["sourceServerID"], json!(id));
    assert_eq!(server["launchStatus"], "LAUNCHED");
    let instance = server["launchedEc2InstanceID"]
        .as_str()
        .expect("an instance");
    assert!(
        instance
            .strip_prefix("i-")
            .is_some_and(|h| h.len() >= 8 && h.chars().all(|c| c.is_ascii_hexdigit())),
        "{instance}"
    );
    assert_eq!(
        mgn.server(&id)["launchedInstance"]["ec2InstanceID"],
        json!(instance)
    );

    // The life cycle to cutover, with MGN's rules on the way.
    let ready = mgn.ok(
        "ChangeServerLifeCycleState",
        json!({ "sourceServerID": id, "lifeCycle": { "state": "READY_FOR_CUTOVER" } }),
    );
    assert_eq!(ready["lifeCycle"]["state"], "READY_FOR_CUTOVER");
    let cutover = mgn.ok("StartCutover", json!({ "sourceServerIDs": [id] }));
    assert_eq!(cutover["job"]["initiatedBy"], "START_CUTOVER");
    // The rehearsal engine's cutover finishes at once; while the life cycle says
    // cutting over, the targets may not be terminated.
    let state = mgn.server(&id)["lifeCycle"]["state"].clone();
    assert_eq!(state, "CUTTING_OVER", "{}", mgn.server(&id));
    let (status, kind, body) = mgn.call(
        "TerminateTargetInstances",
        json!({ "sourceServerIDs": [id] }),
    );
    assert_eq!(
        (status, kind.as_deref()),
        (409, Some("ConflictException")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cutting_over")),
        "{body}"
    );
    let finalized = mgn.ok("FinalizeCutover", json!({ "sourceServerID": id }));
    assert_eq!(finalized["lifeCycle"]["state"], "CUTOVER");
    let archived = mgn.ok("MarkAsArchived", json!({ "sourceServerID": id }));
    assert_eq!(archived["isArchived"], true);
    let active = mgn.ok(
        "DescribeSourceServers",
        json!({ "filters": { "isArchived": false } }),
    );
    assert_eq!(active["items"].as_array().map(Vec::len), Some(7));

    // The errors a client handles, by status and type.
    let (status, kind, _) = mgn.call(
        "StartTest",
        json!({ "sourceServerIDs": ["s-00000000000000999"] }),
    );
    assert_eq!(
        (status, kind.as_deref()),
        (404, Some("ResourceNotFoundException"))
    );
    let (status, kind, _) = mgn.call("StartTest", json!({ "sourceServerIDs": [] }));
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("ValidationException"))
    );
    let (status, kind, _) = mgn.call("DescribeSourceServers", json!({ "maxResults": 0 }));
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("ValidationException"))
    );
    let (status, kind, _) = mgn.call(
        "ChangeServerLifeCycleState",
        json!({ "sourceServerID": by_host("dir-01"), "lifeCycle": { "state": "TESTING" } }),
    );
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("ValidationException"))
    );
}

#[test]
fn the_mgn_engine_drives_a_migration_through_the_aws_sdk() {
    use mgn::{MgnEngine, MgnSettings};
    use replication::{
        DiskSpec, ErrorKind, Health, JobStatus, LaunchKind, LaunchStatus, LifeCycle, PointInTime,
        ReplicationEngine, ReplicationState, SourceSpec,
    };
    let endpoint = Endpoint::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = runtime.block_on(MgnEngine::connect(&MgnSettings {
        region: "eu-west-1".to_owned(),
        endpoint: Some(endpoint.base.clone()),
        keys: Some(("AKIDWAVELIFTTEST".to_owned(), "not-a-secret".to_owned())),
        ..MgnSettings::default()
    }));
    let spec = |name: &str, hostname: Option<&str>| SourceSpec {
        name: name.to_owned(),
        hostname: hostname.map(str::to_owned),
        disks: vec![DiskSpec {
            device: "/dev/vda".to_owned(),
            size_bytes: 16 << 20,
            used_bytes: 6 << 20,
        }],
        change_rate_bytes_per_second: 0.0,
    };

    // Matched by hostname, by FQDN, by IP; a server MGN does not know is said.
    let source = runtime
        .block_on(engine.register_source(&spec("shop-web-01", None)))
        .expect("shop-web-01 by hostname");
    assert!(
        source.id.0.starts_with("s-") && source.id.0.len() == 19,
        "{source:?}"
    );
    let by_fqdn = runtime
        .block_on(engine.register_source(&spec("web-a", Some("shop-web-01.lab.example.com"))))
        .expect("by FQDN");
    assert_eq!(by_fqdn.id, source.id);
    let by_ip = runtime
        .block_on(engine.register_source(&spec("web-b", Some("127.0.20.1"))))
        .expect("by IP");
    assert_eq!(by_ip.id, source.id);
    let missing = runtime
        .block_on(engine.register_source(&spec("nowhere-01", Some("127.0.99.9"))))
        .expect_err("not in MGN");
    assert_eq!(missing.kind, ErrorKind::NotFound);
    assert!(
        missing
            .message
            .contains("install the MGN replication agent"),
        "{missing:?}"
    );
    let found = runtime
        .block_on(engine.find_source("shop-web-01"))
        .expect("find")
        .expect("found");
    assert_eq!(found.id, source.id);
    assert_eq!(found.replication.state, ReplicationState::Continuous);
    assert_eq!(found.life_cycle, LifeCycle::ReadyForTest);
    assert_eq!(found.replication.total_bytes, 16 << 20);

    // A test launch: its job, its instance, the instance's health.
    let id = std::slice::from_ref(&source.id);
    let job = runtime
        .block_on(engine.start_launch(LaunchKind::Test, id, &PointInTime::Latest))
        .expect("StartTest");
    assert!(job.id.0.starts_with("mgnjob-"), "{job:?}");
    let job = runtime
        .block_on(engine.describe_job(&job.id))
        .expect("DescribeJobs");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.kind, LaunchKind::Test);
    assert_eq!(job.servers[0].status, LaunchStatus::Launched);
    let instance = job.servers[0].target.clone().expect("an instance");
    assert!(instance.0.starts_with("i-"), "{instance:?}");
    let target = runtime
        .block_on(engine.describe_target(&instance))
        .expect("the instance");
    assert_eq!(
        (target.source.clone(), target.kind, target.health),
        (source.id.clone(), LaunchKind::Test, Health::Ok)
    );
    let jobs = runtime
        .block_on(engine.jobs_for_source(&source.id))
        .expect("jobs");
    assert_eq!(jobs.len(), 1);

    // To cutover, with MGN's rule: no terminating a cutover's instances meanwhile.
    runtime
        .block_on(engine.change_life_cycle(&source.id, LifeCycle::ReadyForCutover))
        .expect("ready for cutover");
    runtime
        .block_on(engine.start_launch(LaunchKind::Cutover, id, &PointInTime::Latest))
        .expect("StartCutover");
    let cutting = runtime
        .block_on(engine.describe_source(&source.id))
        .expect("describe");
    assert_eq!(cutting.life_cycle, LifeCycle::CuttingOver);
    let refused = runtime
        .block_on(engine.terminate_targets(&source.id, LaunchKind::Cutover))
        .expect_err("refused while cutting over");
    assert_eq!(refused.kind, ErrorKind::Conflict, "{refused:?}");
    assert!(refused.message.contains("ConflictException"), "{refused:?}");
    runtime
        .block_on(engine.finalize_cutover(&source.id))
        .expect("finalize");
    assert_eq!(
        runtime
            .block_on(engine.describe_source(&source.id))
            .expect("describe")
            .life_cycle,
        LifeCycle::Cutover
    );
    runtime
        .block_on(engine.archive(&source.id))
        .expect("archive");
    assert_eq!(
        runtime
            .block_on(engine.describe_source(&source.id))
            .expect("describe")
            .life_cycle,
        LifeCycle::Archived
    );
    // An archived server is no longer matched; MGN has no recovery points to launch.
    assert!(
        runtime
            .block_on(engine.find_source("shop-web-01"))
            .expect("find")
            .is_none()
    );
    let other = runtime
        .block_on(engine.find_source("shop-web-02"))
        .expect("find")
        .expect("shop-web-02");
    let from_point = runtime
        .block_on(engine.start_launch(
            LaunchKind::Test,
            std::slice::from_ref(&other.id),
            &PointInTime::RecoveryPoint("rp-1".to_owned()),
        ))
        .expect_err("no points on MGN");
    assert_eq!(from_point.kind, ErrorKind::Invalid);
}
