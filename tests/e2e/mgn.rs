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
//! The SDK's EC2 calls (aws-sdk-ec2) go to moto's EC2 server, where serve-mgn runs each
//! launched target as an instance from the source's launch template: a blueprint checked
//! against EC2 (subnet, security groups in its VPC, instance type) and made the
//! template's default version is what the instance launches with; its status checks are
//! EC2's.
//!
//! Starts: moto's server (`python3 -m moto.server`, PyPI moto[server]) on a free
//! loopback port, and `wavelift sim serve-mgn examples/quickstart [--ec2-endpoint]` on
//! another; the SDK is given keys directly, so it asks no credential or Region service.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use std::fs;

use serde_json::{Value, json};
use wavelift_tests::{wavelift_binary, workspace_root};

/// A cutover window a month from now (every phase still ahead of a warped run).
fn a_month_ahead() -> String {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * 30))
        .expect("a date")
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d 22:00")
        .to_string()
}

/// `wavelift ARGS` in `dir` whose standard AWS chain finds test keys in the environment
/// and nothing else (no profile, no files, no instance metadata), with `env` besides:
/// its exit code, stdout and stderr.
fn aws_wavelift(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let output = wavelift_tests::wavelift_command(dir)
        .args(args)
        .envs(env.iter().copied())
        .env("AWS_ACCESS_KEY_ID", "AKIDWAVELIFTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("wavelift");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// moto's EC2 server on a free loopback port, stopped when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto's server: install it with `pip install 'moto[server]'`");
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Up when it answers; at most 60 s, in 100 ms steps.
        for _ in 0..600 {
            if reqwest::blocking::get(format!("{}/moto-api/", moto.url)).is_ok() {
                return moto;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto's server did not answer on {} within 60 s", moto.url);
    }

    /// An EC2 Query call in eu-west-1: the XML answer.
    pub fn ec2(&self, action: &str, params: &[(&str, &str)]) -> String {
        self.ec2_in("eu-west-1", action, params)
    }

    /// An EC2 Query call in a Region (moto takes any signature, and routes by the
    /// service and Region the Authorization header names): the XML answer.
    pub fn ec2_in(&self, region: &str, action: &str, params: &[(&str, &str)]) -> String {
        let mut form = vec![("Action", action), ("Version", "2016-11-15")];
        form.extend_from_slice(params);
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/", self.url))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDWAVELIFTTEST/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .form(&form)
            .send()
            .unwrap_or_else(|err| panic!("EC2 {action}: {err}"));
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert!(status.is_success(), "EC2 {action}: {status} {body}");
        body
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `<name>` element's text in an EC2 answer.
pub fn elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_owned()))
        .collect()
}

struct Endpoint {
    child: Child,
    base: String,
}

impl Endpoint {
    fn start() -> Endpoint {
        Endpoint::start_with(None)
    }

    fn start_with(ec2: Option<&str>) -> Endpoint {
        Endpoint::serve(
            &workspace_root().join("examples/quickstart"),
            "127.0.0.1:0",
            ec2,
            8,
        )
    }

    /// `wavelift sim serve-mgn PATH --listen LISTEN [--ec2-endpoint]`, up once it says
    /// where it listens (with `servers` source servers).
    fn serve(path: &std::path::Path, listen: &str, ec2: Option<&str>, servers: usize) -> Endpoint {
        Endpoint::serve_in("eu-west-1", path, listen, ec2, servers)
    }

    fn serve_in(
        region: &str,
        path: &std::path::Path,
        listen: &str,
        ec2: Option<&str>,
        servers: usize,
    ) -> Endpoint {
        Endpoint::spawn(
            region,
            path,
            listen,
            ec2,
            &[],
            &format!("{servers} source servers"),
        )
    }

    /// `wavelift sim serve-mgn --pending-agents`: no source server until the installer
    /// it serves registers one.
    fn pending(path: &std::path::Path, listen: &str, ec2: &str, servers: usize) -> Endpoint {
        Endpoint::spawn(
            "eu-west-1",
            path,
            listen,
            Some(ec2),
            &["--pending-agents"],
            &format!("{servers} servers waiting for their agent"),
        )
    }

    fn spawn(
        region: &str,
        path: &std::path::Path,
        listen: &str,
        ec2: Option<&str>,
        flags: &[&str],
        says: &str,
    ) -> Endpoint {
        let mut command = Command::new(wavelift_binary());
        command
            .args(["sim", "serve-mgn", "--region", region, "--listen", listen])
            .args(flags)
            .arg(path);
        if let Some(url) = ec2 {
            command.args(["--ec2-endpoint", url]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("wavelift sim serve-mgn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the endpoint's line");
        assert!(
            line.starts_with(&format!(
                "MGN endpoint (rehearsal engine, {says}) on http://"
            )),
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
        DiskSpec, ErrorKind, Health, JobStatus, LaunchKind, LaunchSettings, LaunchStatus,
        LifeCycle, PointInTime, ReplicationAction, ReplicationEngine, ReplicationState, SourceSpec,
        TargetState,
    };
    let moto = Moto::start();
    let endpoint = Endpoint::start_with(Some(&moto.url));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = runtime.block_on(MgnEngine::connect(&MgnSettings {
        region: "eu-west-1".to_owned(),
        endpoint: Some(endpoint.base.clone()),
        ec2_endpoint: Some(moto.url.clone()),
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

    // Replication control, with MGN's rules: only what replicates is paused, only what
    // is paused resumed, only what is stopped started.
    let control = |action: ReplicationAction| {
        runtime.block_on(engine.control_replication(&source.id, action))
    };
    assert_eq!(
        control(ReplicationAction::Pause)
            .expect("pause")
            .replication
            .state,
        ReplicationState::Paused
    );
    let twice = control(ReplicationAction::Pause).expect_err("already paused");
    assert_eq!(twice.kind, ErrorKind::Conflict, "{twice:?}");
    assert!(twice.message.contains("PAUSED"), "{twice:?}");
    assert_eq!(
        control(ReplicationAction::Resume)
            .expect("resume")
            .replication
            .state,
        ReplicationState::Continuous
    );
    assert_eq!(
        control(ReplicationAction::Stop)
            .expect("stop")
            .replication
            .state,
        ReplicationState::Stopped
    );
    let not_paused = control(ReplicationAction::Resume).expect_err("stopped, not paused");
    assert_eq!(not_paused.kind, ErrorKind::Conflict, "{not_paused:?}");
    assert_eq!(
        control(ReplicationAction::Start)
            .expect("start")
            .replication
            .state,
        ReplicationState::Continuous
    );

    // The test blueprint, checked against EC2 and made the launch template's default
    // version (MGN's right-sizing off, so its instance type holds); the same again
    // changes nothing. A blueprint EC2 cannot launch is refused, saying what is wrong.
    let subnets = moto.ec2("DescribeSubnets", &[]);
    let subnet = elements(&subnets, "subnetId").remove(0);
    let vpc = elements(&subnets, "vpcId").remove(0);
    let groups = moto.ec2(
        "DescribeSecurityGroups",
        &[("Filter.1.Name", "vpc-id"), ("Filter.1.Value.1", &vpc)],
    );
    let group = elements(&groups, "groupId").remove(0);
    let blueprint = LaunchSettings {
        instance_type: Some("m5.large".to_owned()),
        subnet: Some(subnet.clone()),
        security_groups: vec![group.clone()],
        tags: [("Wave".to_owned(), "wave-1".to_owned())].into(),
    };
    let changed = runtime
        .block_on(engine.prepare_launch(&source.id, LaunchKind::Test, &blueprint))
        .expect("the blueprint")
        .expect("a change");
    assert!(
        changed.contains("version 2 (from MGN's version 1) is the default")
            && changed.contains("instance type m5.large")
            && changed.contains(&subnet)
            && changed.contains("right-sizing off"),
        "{changed}"
    );
    let prepare = |settings: &LaunchSettings, kind: LaunchKind| {
        runtime
            .block_on(engine.prepare_launch(&source.id, kind, settings))
            .expect("a blueprint")
    };
    assert_eq!(prepare(&blueprint, LaunchKind::Test), None);
    let configuration = endpoint.ok(
        "GetLaunchConfiguration",
        json!({ "sourceServerID": source.id.0 }),
    );
    let template = configuration["ec2LaunchTemplateID"]
        .as_str()
        .expect("a template")
        .to_owned();
    let default_version = || {
        moto.ec2(
            "DescribeLaunchTemplateVersions",
            &[
                ("LaunchTemplateId", &template),
                ("LaunchTemplateVersion.1", "$Default"),
            ],
        )
    };
    // A cutover blueprint is applied to MGN's version, not to the test's: nothing of
    // the test blueprint (its subnet, its tag) reaches the cutover.
    let cutover = LaunchSettings {
        instance_type: Some("m5.xlarge".to_owned()),
        ..LaunchSettings::default()
    };
    let changed = prepare(&cutover, LaunchKind::Cutover).expect("a change");
    assert!(
        changed.contains("version 3 (from MGN's version 1) is the default"),
        "{changed}"
    );
    let version = default_version();
    assert!(
        version.contains("m5.xlarge") && !version.contains(&subnet) && !version.contains("wave-1"),
        "{version}"
    );
    // An empty blueprint makes MGN's version the default again; the test blueprint
    // again takes its version 2 (no fourth version).
    let changed = prepare(&LaunchSettings::default(), LaunchKind::Cutover).expect("a change");
    assert!(
        changed.contains("MGN's version 1 is the default"),
        "{changed}"
    );
    let changed = prepare(&blueprint, LaunchKind::Test).expect("a change");
    assert!(changed.contains(": version 2 is the default"), "{changed}");
    let all = moto.ec2(
        "DescribeLaunchTemplateVersions",
        &[("LaunchTemplateId", &template)],
    );
    assert_eq!(elements(&all, "versionNumber").len(), 3, "{all}");
    assert_eq!(configuration["targetInstanceTypeRightSizingMethod"], "NONE");
    let refused = |settings: LaunchSettings| {
        runtime
            .block_on(engine.prepare_launch(&source.id, LaunchKind::Test, &settings))
            .expect_err("refused")
    };
    let no_subnet = refused(LaunchSettings {
        subnet: Some("subnet-0123456789abcdef0".to_owned()),
        ..blueprint.clone()
    });
    assert_eq!(no_subnet.kind, ErrorKind::Invalid, "{no_subnet:?}");
    assert!(
        no_subnet
            .message
            .contains("subnet subnet-0123456789abcdef0 does not exist in eu-west-1"),
        "{no_subnet:?}"
    );
    let no_type = refused(LaunchSettings {
        instance_type: Some("m5.colossal".to_owned()),
        ..blueprint.clone()
    });
    assert!(
        no_type
            .message
            .contains("instance type m5.colossal does not exist"),
        "{no_type:?}"
    );
    let other_vpc = elements(
        &moto.ec2("CreateVpc", &[("CidrBlock", "10.77.0.0/16")]),
        "vpcId",
    )
    .remove(0);
    let elsewhere = elements(
        &moto.ec2(
            "CreateSecurityGroup",
            &[
                ("GroupName", "elsewhere"),
                ("GroupDescription", "in another VPC"),
                ("VpcId", &other_vpc),
            ],
        ),
        "groupId",
    )
    .remove(0);
    let apart = refused(LaunchSettings {
        security_groups: vec![elsewhere.clone()],
        ..blueprint.clone()
    });
    assert!(
        apart.message.contains(&format!(
            "security group {elsewhere} is in {other_vpc}, not in {vpc} of subnet {subnet}"
        )),
        "{apart:?}"
    );

    // A test launch: its job, its instance (in EC2, as the blueprint said), the
    // instance's health from EC2's status checks.
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
        (
            target.source.clone(),
            target.kind,
            target.state,
            target.health
        ),
        (
            source.id.clone(),
            LaunchKind::Test,
            TargetState::Running,
            Health::Ok
        )
    );
    assert_eq!(
        target.detail.as_deref(),
        Some("system status ok, instance status ok, attached EBS status not reported")
    );
    let described = moto.ec2("DescribeInstances", &[("InstanceId.1", &instance.0)]);
    assert_eq!(elements(&described, "instanceType"), ["m5.large"]);
    // (moto runs instances in its default subnet whatever the template says: the
    // template's subnet is checked above.)
    assert!(default_version().contains(&subnet));
    assert_eq!(
        target.address,
        elements(&described, "privateIpAddress").first().cloned()
    );
    let log = endpoint.ok("DescribeJobLogItems", json!({ "jobID": job.id.0 }));
    let events: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["event"].as_str())
        .collect();
    assert_eq!(events, ["JOB_START", "LAUNCH_START", "JOB_END"]);
    let jobs = runtime
        .block_on(engine.jobs_for_source(&source.id))
        .expect("jobs");
    assert_eq!(jobs.len(), 1);

    // MGN keeps a testing server's copy; once ready for cutover, the test copy is
    // terminated, and EC2 says so.
    let testing = runtime
        .block_on(engine.terminate_targets(&source.id, LaunchKind::Test))
        .expect_err("refused while testing");
    assert_eq!(testing.kind, ErrorKind::Conflict, "{testing:?}");
    runtime
        .block_on(engine.change_life_cycle(&source.id, LifeCycle::ReadyForCutover))
        .expect("ready for cutover");
    runtime
        .block_on(engine.terminate_targets(&source.id, LaunchKind::Test))
        .expect("terminate the test copy");
    let gone = runtime
        .block_on(engine.describe_target(&instance))
        .expect("the instance");
    assert_eq!(gone.state, TargetState::Terminated, "{gone:?}");

    // To cutover, with MGN's rule: no terminating a cutover's instances meanwhile.
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

/// Two accounts as one engine (`mgn::fleet::MgnFleet`) when one of them refuses its part
/// of a launch: the other account's launch goes on, the refused server's part fails with
/// its account's reason (in the joined job and in the job as that server sees it), and a
/// restarted process that no longer remembers the refusal still reads that server's
/// launch as failed, to be tried again.
///
/// Starts: two `wavelift sim serve-mgn` (eu-west-1 and eu-central-1) on loopback; no EC2.
#[test]
fn a_launch_one_account_refuses_goes_on_in_the_other_and_fails_there_with_the_reason() {
    use mgn::fleet::MgnFleet;
    use mgn::{MgnEngine, MgnSettings};
    use replication::{LaunchKind, LaunchStatus, LifeCycle, PointInTime, ReplicationEngine};
    let quickstart = workspace_root().join("examples/quickstart");
    let west = Endpoint::serve_in("eu-west-1", &quickstart, "127.0.0.1:0", None, 8);
    let central = Endpoint::serve_in("eu-central-1", &quickstart, "127.0.0.1:0", None, 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let connect = |region: &str, endpoint: &Endpoint| {
        runtime.block_on(MgnEngine::connect(&MgnSettings {
            region: region.to_owned(),
            endpoint: Some(endpoint.base.clone()),
            keys: Some(("AKIDWAVELIFTTEST".to_owned(), "not-a-secret".to_owned())),
            ..MgnSettings::default()
        }))
    };
    let fleet = || {
        MgnFleet::new(
            connect("eu-west-1", &west),
            vec![("central".to_owned(), connect("eu-central-1", &central))],
            [("dir-02".to_owned(), 1)].into_iter().collect(),
        )
    };
    let engine = fleet();
    let found = |engine: &MgnFleet, name: &str| {
        runtime
            .block_on(engine.find_source(name))
            .expect("find_source")
            .unwrap_or_else(|| panic!("{name} in its account"))
            .id
    };
    let (west_source, central_source) = (found(&engine, "dir-01"), found(&engine, "dir-02"));
    // A cutover launch of both: the west server is ready for it, the central one is not
    // (still ready for test), so the central account refuses its part.
    runtime
        .block_on(engine.change_life_cycle(&west_source, LifeCycle::ReadyForCutover))
        .expect("ready for cutover in its account");
    let sources = [west_source.clone(), central_source.clone()];
    let job = runtime
        .block_on(engine.start_launch(LaunchKind::Cutover, &sources, &PointInTime::Latest))
        .expect("one account started: the launch goes on");
    assert!(
        !job.id.0.contains('+'),
        "one account's job only: {}",
        job.id
    );
    let slot = |job: &replication::Job, source: &replication::SourceId| {
        job.servers
            .iter()
            .find(|s| &s.source == source)
            .cloned()
            .unwrap_or_else(|| panic!("{source} in {job:?}"))
    };
    assert_ne!(slot(&job, &west_source).status, LaunchStatus::Failed);
    let refused = slot(&job, &central_source);
    assert_eq!(refused.status, LaunchStatus::Failed);
    let reason = refused.message.expect("the refusal's reason");
    assert!(
        reason.starts_with("its account refused the launch: ") && reason.len() > 40,
        "{reason}"
    );

    // Each server follows its own part.
    let seen = runtime
        .block_on(engine.describe_job_for(&job.id, &central_source))
        .expect("the refused part");
    assert_eq!(seen.servers.len(), 1, "{seen:?}");
    assert_eq!(seen.servers[0].status, LaunchStatus::Failed);
    assert_eq!(seen.servers[0].message.as_deref(), Some(reason.as_str()));
    let going = runtime
        .block_on(engine.describe_job_for(&job.id, &west_source))
        .expect("the started part");
    assert_ne!(slot(&going, &west_source).status, LaunchStatus::Failed);

    // A restarted process knows the sources (its tasks find them) but not the refusal.
    let restarted = fleet();
    assert_eq!(found(&restarted, "dir-02"), central_source);
    let seen = runtime
        .block_on(restarted.describe_job_for(&job.id, &central_source))
        .expect("the refused part after a restart");
    assert_eq!(seen.servers.len(), 1, "{seen:?}");
    assert_eq!(seen.servers[0].status, LaunchStatus::Failed);
    let message = seen.servers[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "has no launch in the account of {central_source}: its account refused it"
        )),
        "{message}"
    );
}

/// A whole wave on MGN and EC2, over two accounts in two Regions: `wavelift run` (built
/// with the `aws` feature, as the test build is) takes three servers of two applications
/// (one of them in the second account) through agent_push (matched in its account's
/// MGN), replication_verify, boot_test (the test blueprint made the launch template's
/// default, a test instance in EC2 judged by its status checks, then terminated),
/// cutover (the cutover blueprint, an instance in the cutover subnet, finalized) and
/// cmdb_cleanup (archived in MGN, retired in the file CMDB). prereq_check is skipped:
/// its MGN checks (kernel headers, make, gcc, dhclient, MGN's regional endpoint) are of a
/// real source server, which this machine is not; the SSH tests check them.
///
/// Starts: moto's EC2 server and two `wavelift sim serve-mgn --ec2-endpoint` (eu-west-1
/// and eu-central-1) on loopback.
#[test]
fn a_wave_migrates_to_ec2_through_mgn() {
    use wavelift_tests::Scratch;
    let moto = Moto::start();
    let subnets = moto.ec2("DescribeSubnets", &[]);
    let (test_subnet, cutover_subnet) = {
        let ids = elements(&subnets, "subnetId");
        (ids[0].clone(), ids[1].clone())
    };
    let vpc = elements(&subnets, "vpcId").remove(0);
    let groups = moto.ec2(
        "DescribeSecurityGroups",
        &[("Filter.1.Name", "vpc-id"), ("Filter.1.Value.1", &vpc)],
    );
    let group = elements(&groups, "groupId").remove(0);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let port = free_port();
    // crm-app-02 migrates to another account, in eu-central-1: its own MGN endpoint,
    // its own subnets.
    let central_port = free_port();
    let central = moto.ec2_in("eu-central-1", "DescribeSubnets", &[]);
    let central_subnets = elements(&central, "subnetId");
    let central_vpc = elements(&central, "vpcId").remove(0);
    let central_group = elements(
        &moto.ec2_in(
            "eu-central-1",
            "DescribeSecurityGroups",
            &[
                ("Filter.1.Name", "vpc-id"),
                ("Filter.1.Value.1", &central_vpc),
            ],
        ),
        "groupId",
    )
    .remove(0);

    let scratch = Scratch::new("mgn-wave");
    let dir = scratch.path();
    let window = a_month_ahead();
    fs::write(
        dir.join("wavelift.yaml"),
        format!(
            "version: 1\nengines:\n  default: mgn\n  mgn:\n    region: eu-west-1\n    endpoint: http://127.0.0.1:{port}\n    ec2_endpoint: {moto}\n    accounts:\n      central:\n        region: eu-central-1\n        endpoint: http://127.0.0.1:{central_port}\n        ec2_endpoint: {moto}\noutbox: .wavelift/outbox\ncmdb:\n  kind: file\n  path: .wavelift/cmdb.yaml\ndefaults:\n  access:\n    method: local\n  skip: [prereq_check]\n  tasks:\n    cutover:\n      approval: false\n    cmdb_cleanup:\n      hypercare: 1d\n",
            moto = moto.url
        ),
    )
    .expect("the configuration");
    fs::create_dir_all(dir.join("waves")).expect("waves/");
    fs::write(
        dir.join("waves/ec2-1.yaml"),
        format!(
            "version: 1\nname: ec2-1\nengine: mgn\nwindow:\n  start: {window}\n  duration: 6h\n  timezone: UTC\ndefaults:\n  os: {{ family: linux, version: Debian 12, arch: x86_64 }}\n  blueprints:\n    test:\n      instance_type: t3.medium\n      subnet: {test_subnet}\n      security_groups: [{group}]\n    cutover:\n      instance_type: m5.xlarge\n      subnet: {cutover_subnet}\n      security_groups: [{group}]\n      tags: {{ environment: production }}\napplications:\n  - name: crm-db\n    servers:\n      - {{ name: crm-db-01, fqdn: crm-db-01.corp.example.com, ip: 127.0.30.1, cmdb_id: CI0030001, disks: [{{ device: /dev/sda, size: 40GiB, used: 12GiB, boot: true }}] }}\n  - name: crm-app\n    depends_on: [crm-db]\n    servers:\n      - {{ name: crm-app-01, fqdn: crm-app-01.corp.example.com, ip: 127.0.30.11, cmdb_id: CI0030011 }}\n      - {{ name: crm-app-02, fqdn: crm-app-02.corp.example.com, ip: 127.0.30.12, cmdb_id: CI0030012, mgn_account: central, blueprints: {{ test: {{ subnet: {c_test}, security_groups: [{central_group}] }}, cutover: {{ subnet: {c_cut}, security_groups: [{central_group}] }} }} }}\n",
            c_test = central_subnets[0],
            c_cut = central_subnets[1],
        ),
    )
    .expect("the wave");
    let mgn = Endpoint::serve(dir, &format!("127.0.0.1:{port}"), Some(&moto.url), 3);
    let central = Endpoint::serve_in(
        "eu-central-1",
        dir,
        &format!("127.0.0.1:{central_port}"),
        Some(&moto.url),
        3,
    );

    let wavelift = |args: &[&str]| aws_wavelift(dir, args, &[]);
    // Before the build week: every server matches one MGN source server, by hostname.
    let (code, out, err) = wavelift(&["match", "."]);
    assert_eq!(code, 0, "{out}\n{err}");
    for server in ["crm-db-01", "crm-app-01", "crm-app-02"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(server) && l.contains("by hostname")),
            "{out}"
        );
    }
    assert!(out.contains("3 of 3 server(s) matched"), "{out}");
    // A server MGN does not have is said, with what was looked for; a given source_id
    // is taken as it is; two wave servers on one source server are both said.
    let wave = dir.join("waves/ec2-1.yaml");
    let original = fs::read_to_string(&wave).expect("the wave");
    fs::write(
        &wave,
        original
            .replace(
                "cmdb_id: CI0030001,",
                "cmdb_id: CI0030001, source_id: s-00000000000000001,",
            )
            .replace(
                "      - { name: crm-app-02,",
                "      - { name: crm-app-03, ip: 127.0.30.13 }\n      - { name: crm-app-04, ip: 127.0.30.14, source_id: s-00000000000000002 }\n      - { name: crm-app-02,",
            ),
    )
    .expect("the wave, edited");
    let (code, out, err) = wavelift(&["match", "."]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("s-00000000000000001  by source_id")
            && out.contains(
                "crm-app-03  no match: no MGN source server has the user-provided id or hostname crm-app-03 or the IP 127.0.30.13"
            )
            && out.contains(
                "crm-app-04  matches s-00000000000000002, as crm-app-01 does: one source server is one wave server"
            )
            && out.contains("2 of 5 server(s) matched"),
        "{out}"
    );
    fs::write(
        &wave,
        original.replace(
            "cmdb_id: CI0030001,",
            "cmdb_id: CI0030001, source_id: s-00000000000000001,",
        ),
    )
    .expect("the wave, with its source_id");

    // An operator pauses and resumes a server's replication; what does not fit the
    // replication's state is refused with MGN's reason; all of it in the job log.
    let (code, out, err) = wavelift(&["apply", "."]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = wavelift(&["replication", "pause", "crm-app-02", "--by", "ops"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.starts_with("crm-app-02: replication paused (s-")
            && out.trim_end().ends_with("now paused"),
        "{out}"
    );
    // Paused in its own account (eu-central-1), not in the default one, where MGN has
    // a source of the same hostname.
    let state_in = |endpoint: &Endpoint| {
        let all = endpoint.ok("DescribeSourceServers", json!({}));
        all["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|s| s["sourceProperties"]["identificationHints"]["hostname"] == "crm-app-02")
            .map(|s| s["dataReplicationInfo"]["dataReplicationState"].clone())
            .expect("crm-app-02")
    };
    assert_eq!(state_in(&central), "PAUSED");
    assert_eq!(state_in(&mgn), "CONTINUOUS");
    let (code, out, err) = wavelift(&["replication", "resume", "crm-app-02", "--by", "ops"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.trim_end().ends_with("now continuous"), "{out}");
    let (code, _, err) = wavelift(&["replication", "resume", "crm-app-02"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "crm-app-02: cannot resume its replication: MGN ResumeReplication: ConflictException"
        ),
        "{err}"
    );
    let (code, _, err) = wavelift(&["replication", "hurry", "crm-app-02"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`hurry` is not one of start, stop, pause, resume"),
        "{err}"
    );

    let started = std::time::Instant::now();
    let (code, out, err) = wavelift(&["run", ".", "--until-done", "--time-warp"]);
    eprintln!("the run took {:?}", started.elapsed());
    assert_eq!(code, 0, "{out}\n{err}");
    // Every task final, the three prerequisite checks skipped, the rest succeeded.
    let summary = out
        .lines()
        .find_map(|l| l.strip_prefix("ec2-1: "))
        .unwrap_or_else(|| panic!("no summary of ec2-1:\n{out}"));
    let (done, rest) = summary.split_once(" of ").expect("N of M");
    let total: usize = rest
        .split(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("M");
    assert_eq!(done.parse::<usize>().ok(), Some(total), "{out}");
    assert!(
        summary.ends_with(&format!("tasks final (3 skipped, {} succeeded)", total - 3)),
        "{out}\n{err}"
    );

    // In each account: its servers cut over and archived, the other account's servers
    // untouched; in EC2 of its Region each server's test instance (test blueprint)
    // terminated, its cutover instance (cutover blueprint) running.
    let accounts = [
        (
            &mgn,
            "eu-west-1",
            vec!["crm-db-01", "crm-app-01"],
            cutover_subnet.clone(),
            group.clone(),
        ),
        (
            &central,
            "eu-central-1",
            vec!["crm-app-02"],
            central_subnets[1].clone(),
            central_group.clone(),
        ),
    ];
    for (endpoint, region, mine, subnet, group) in accounts {
        let sources = endpoint.ok("DescribeSourceServers", json!({}));
        let sources = sources["items"].as_array().expect("items");
        assert_eq!(sources.len(), 3);
        for source in sources {
            let id = source["sourceServerID"].as_str().expect("an id");
            let host = source["sourceProperties"]["identificationHints"]["hostname"]
                .as_str()
                .unwrap_or_default();
            if !mine.contains(&host) {
                assert_eq!(source["isArchived"], false, "{region}: {source}");
                assert_eq!(
                    source["lifeCycle"]["state"], "READY_FOR_TEST",
                    "{region}: {source}"
                );
                continue;
            }
            assert_eq!(source["isArchived"], true, "{region}: {source}");
            assert_eq!(
                source["lifeCycle"]["state"], "CUTOVER",
                "{region}: {source}"
            );
            let instances = moto.ec2_in(
                region,
                "DescribeInstances",
                &[
                    (
                        "Filter.1.Name",
                        "tag:AWSApplicationMigrationServiceSourceServerID",
                    ),
                    ("Filter.1.Value.1", id),
                ],
            );
            let kinds = elements(&instances, "instanceType");
            let states: Vec<String> = elements(&instances, "instanceState")
                .iter()
                .flat_map(|s| elements(s, "name"))
                .collect();
            let mut seen: Vec<(String, String)> = kinds.into_iter().zip(states).collect();
            seen.sort();
            assert_eq!(
                seen,
                [
                    ("m5.xlarge".to_owned(), "running".to_owned()),
                    ("t3.medium".to_owned(), "terminated".to_owned())
                ],
                "{region} {host}: {instances}"
            );
            let configuration =
                endpoint.ok("GetLaunchConfiguration", json!({ "sourceServerID": id }));
            let template = configuration["ec2LaunchTemplateID"]
                .as_str()
                .expect("a template");
            let versions = moto.ec2_in(
                region,
                "DescribeLaunchTemplateVersions",
                &[
                    ("LaunchTemplateId", template),
                    ("LaunchTemplateVersion.1", "$Default"),
                ],
            );
            // (moto runs every instance in its default subnet, whatever the template
            // says, so the subnet is checked in the template.)
            assert!(
                versions.contains("production")
                    && versions.contains("m5.xlarge")
                    && versions.contains(&subnet)
                    && versions.contains(&group),
                "{region} {host}: the default version is the cutover blueprint: {versions}"
            );
        }
    }

    // The job log: each server's blueprints put in force once per kind, one test and one
    // cutover launch per server, finalized and archived once.
    let (_, events, _) = wavelift(&["events", "--json"]);

    for server in ["crm-db-01", "crm-app-01", "crm-app-02"] {
        let count = |action: &str| {
            events
                .lines()
                .filter(|l| l.contains(&format!("\"server\":\"{server}\"")) && l.contains(action))
                .count()
        };
        assert_eq!(count("engine.prepare_launch"), 2, "{server}:\n{events}");
        let controlled = if server == "crm-app-02" { 2 } else { 0 };
        assert_eq!(
            count("engine.control_replication"),
            controlled,
            "{server}:\n{events}"
        );
        assert_eq!(count("engine.finalize_cutover"), 1, "{server}:\n{events}");
        assert_eq!(count("engine.archive"), 1, "{server}:\n{events}");
    }
    let cmdb = fs::read_to_string(dir.join(".wavelift/cmdb.yaml")).expect("the CMDB file");
    assert!(cmdb.matches("retired").count() >= 3, "{cmdb}");
}

/// agent_push installs MGN's replication agent: the installer downloaded from the
/// endpoint's bucket, checked against its SHA-512 and run with the keys from the
/// configuration's credential (on its standard input, never in the job log), and the
/// server becomes a source server that the rest of the wave migrates. Keys MGN refuses
/// fail the task with the installer's word, the keys redacted; a retry with good keys
/// goes on.
///
/// Starts: moto's EC2 server and `wavelift sim serve-mgn --pending-agents` on loopback
/// (it serves the installer and registers what it installs); the servers are this
/// machine (`local` access), where the installer runs with curl and sha512sum.
#[test]
fn agent_push_installs_mgns_agent_from_the_installer_and_keys_it_is_given() {
    use wavelift_tests::Scratch;
    let moto = Moto::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let scratch = Scratch::new("mgn-agent");
    let dir = scratch.path();
    let window = a_month_ahead();
    fs::write(
        dir.join("wavelift.yaml"),
        format!(
            "version: 1\nengines:\n  default: mgn\n  mgn:\n    region: eu-west-1\n    endpoint: http://127.0.0.1:{port}\n    ec2_endpoint: {moto}\n    agent:\n      credential: env:MGN_AGENT_KEYS\n      installer_url: http://127.0.0.1:{port}/latest/linux/aws-replication-installer-init\noutbox: .wavelift/outbox\ncmdb:\n  kind: file\n  path: .wavelift/cmdb.yaml\ndefaults:\n  access:\n    method: local\n  skip: [prereq_check]\n  tasks:\n    cutover:\n      approval: false\n    cmdb_cleanup:\n      hypercare: 1d\n",
            moto = moto.url
        ),
    )
    .expect("the configuration");
    fs::create_dir_all(dir.join("waves")).expect("waves/");
    fs::write(
        dir.join("waves/agents.yaml"),
        format!(
            "version: 1\nname: agents\nengine: mgn\nwindow:\n  start: {window}\n  duration: 6h\n  timezone: UTC\ndefaults:\n  os: {{ family: linux, version: Debian 12, arch: x86_64 }}\napplications:\n  - name: ledger\n    servers:\n      - {{ name: ledger-db-01, ip: 127.0.31.1, disks: [{{ device: /dev/sda, size: 40GiB, used: 12GiB, boot: true }}, {{ device: /dev/sdb, size: 100GiB, used: 60GiB }}] }}\n      - {{ name: ledger-app-01, ip: 127.0.31.2 }}\n"
        ),
    )
    .expect("the wave");
    let mgn = Endpoint::pending(dir, &format!("127.0.0.1:{port}"), &moto.url, 2);
    let secret = "agent-secret-key-0123456789";
    let wavelift = |args: &[&str], keys: &str| aws_wavelift(dir, args, &[("MGN_AGENT_KEYS", keys)]);
    let good = format!("AKIAWAVELIFTAGENT01\n{secret}\n");
    // No agent yet: MGN has no source server for either.
    let (code, out, err) = wavelift(&["match", "."], &good);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("0 of 2 server(s) matched"), "{out}");

    // Keys MGN refuses: agent_push fails with the installer's word (which repeats the
    // keys; they are redacted), and nothing is installed.
    let refused_secret = "refused-secret-value-42";
    let (_, out, err) = wavelift(
        &["run", ".", "--until-done", "--time-warp"],
        &format!("AKIDNOTANACCESSKEY01 {refused_secret}"),
    );
    let (_, status, _) = wavelift(&["status", "--json"], "");
    let tasks: Value = serde_json::from_str(&status).expect("status JSON");
    let failed: Vec<&Value> = tasks["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["kind"] == "agent_push")
        .collect();
    assert_eq!(failed.len(), 2, "{status}");
    for task in &failed {
        assert_eq!(task["state"], "failed", "{task}\n{out}\n{err}");
        let reason = task["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("MGN's installer failed (exit 1)")
                && reason.contains("The security token included in the request is invalid")
                && reason.contains("--aws-secret-access-key [redacted]")
                && !reason.contains(refused_secret),
            "{task}"
        );
    }
    let (_, events, _) = wavelift(&["events", "--json"], "");
    assert!(
        !events.contains(refused_secret) && events.contains("[redacted]"),
        "the refused keys are redacted in the job log too:\n{events}"
    );
    assert_eq!(
        mgn.ok("DescribeSourceServers", json!({}))["items"],
        json!([])
    );

    // Good keys: retried, both servers get the agent and migrate.
    for server in ["ledger-db-01", "ledger-app-01"] {
        let (code, out, err) = wavelift(&["retry", &format!("{server}/agent_push")], "");
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let (code, out, err) = wavelift(&["run", ".", "--until-done", "--time-warp"], &good);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("agents: 13 of 13 tasks final (2 skipped, 11 succeeded)"),
        "{out}\n{err}"
    );
    // MGN knows each machine by its own name and addresses; the install's user-provided
    // id is what tied it to the wave's server (the servers were found by it above).
    let items = mgn.ok("DescribeSourceServers", json!({}))["items"].clone();
    let names: Vec<&str> = items
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["userProvidedID"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{items}");
    assert!(
        names.contains(&"ledger-db-01") && names.contains(&"ledger-app-01"),
        "{items}"
    );
    for item in items.as_array().expect("items") {
        let hints = &item["sourceProperties"]["identificationHints"];
        assert!(
            hints["hostname"] != item["userProvidedID"],
            "MGN shows the machine's own hostname: {item}"
        );
    }
    // Migrated and archived: matching says so, by the user-provided id.
    let (code, out, err) = wavelift(&["match", "."], "");
    assert_eq!(code, 1, "{out}\n{err}");
    for server in ["ledger-db-01", "ledger-app-01"] {
        assert!(
            out.lines().any(|l| l.starts_with(server)
                && l.contains("matches only archived source server(s) s-")
                && l.contains("migrated and cleaned up already (archived in MGN)")),
            "{out}"
        );
    }
    // Each install is in the job log once, with the installer's word; the secret key
    // is nowhere, in the log or the status.
    let (_, events, _) = wavelift(&["events", "--json"], "");
    for server in ["ledger-db-01", "ledger-app-01"] {
        // Once since the retry (the refused attempts ran the installer before).
        let installs = events
            .lines()
            .filter(|l| l.contains(&format!("\"server\":\"{server}\"")))
            .skip_while(|l| !l.contains("operator.retry"))
            .filter(|l| l.contains("shell.install_agent.mgn"))
            .count();
        assert_eq!(installs, 1, "{server} installed once:\n{events}");
    }
    let (_, status, _) = wavelift(&["status", "--json"], "");
    let (_, text, _) = wavelift(&["status"], "");
    for shown in [&events, &status, &text] {
        assert!(
            !shown.contains(secret),
            "the secret key is never shown:\n{shown}"
        );
    }
    for server in ["ledger-db-01", "ledger-app-01"] {
        assert!(
            events.lines().any(|l| l.contains(&format!("{server}/agent_push succeeded: agent installed (MGN agent installed, source server s-"))
                && l.contains(&format!("mgn lists {server} as s-"))),
            "the installer's own word and MGN's listing are in the job log:\n{events}"
        );
    }
    drop(mgn);
}
