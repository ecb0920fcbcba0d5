//! `wavelift serve` as its clients meet it: the JSON API on a random loopback port, over a
//! freshly migrated SQLite store, with a token per role; each role is refused what it may
//! not do; the session login, its CSRF protection, the pages and the live log.
//!
//! Starts: the wavelift binary (apply, token, serve) in a copy of the quickstart whose
//! cutovers need a go; nothing runs during the test (the windows lie in 2046 and the clock
//! is not warped), so task states change only by the test's own requests.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use wavelift_tests::{Scratch, edit, quickstart_copy, wavelift, wavelift_binary};

/// A running `wavelift serve`, stopped (SIGTERM, then waited for) when dropped.
pub struct Served {
    child: Child,
    pub base: String,
}

impl Served {
    pub fn start(dir: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(wavelift_binary())
            .current_dir(dir)
            .env_remove("WAVELIFT_DATABASE_URL")
            .env_remove("WAVELIFT_STATE_DIR")
            .env_remove("WAVELIFT_SMTP_URL")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wavelift serve");
        // `serve PATH` says what it applied first; the serving line follows.
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut said = String::new();
        let base = (0..50)
            .find_map(|_| {
                let mut line = String::new();
                out.read_line(&mut line).ok().filter(|n| *n > 0)?;
                said.push_str(&line);
                line.strip_prefix("serving ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|url| url.trim_end_matches('/').to_owned())
            })
            .unwrap_or_else(|| panic!("no serving line in: {said}"));
        Served { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token of `role`, made with `wavelift token create`.
pub fn token(dir: &Path, role: &str) -> String {
    token_with(dir, role, &[])
}

/// [`token`], with more arguments for `token create` (a `--database-url`).
fn token_with(dir: &Path, role: &str, more: &[&str]) -> String {
    let name = format!("{role}-user");
    let mut args = vec!["token", "create", "--role", role, "--name", &name];
    args.extend_from_slice(more);
    let made = wavelift(dir, &args);
    assert_eq!(made.code, 0, "{}", made.describe());
    assert!(made.stderr.contains("shown once"), "{}", made.describe());
    made.stdout.trim().to_owned()
}

pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// A quickstart copy whose cutovers need a go, applied.
pub fn applied_quickstart(scratch: &Scratch) -> std::path::PathBuf {
    let dir = quickstart_copy(scratch.path(), "sim");
    edit(
        &dir.join("wavelift.yaml"),
        "approval: false",
        "approval: true",
    );
    let applied = wavelift(&dir, &["apply", "."]);
    assert_eq!(applied.code, 0, "{}", applied.describe());
    dir
}

fn body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn every_route_checks_the_token_and_each_role_is_refused_what_it_may_not_do() {
    let scratch = Scratch::new("serve-roles");
    let dir = applied_quickstart(&scratch);
    let roles = ["viewer", "operator", "approver", "admin"];
    let tokens: Vec<(&str, String)> = roles.iter().map(|r| (*r, token(&dir, r))).collect();
    let served = Served::start(&dir, &[]);
    let http = client();
    let get = |path: &str, token: Option<&str>| {
        let mut request = http.get(served.url(path));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        body(request.send().expect("GET"))
    };
    let post = |path: &str, token: &str, payload: Value| {
        body(
            http.post(served.url(path))
                .bearer_auth(token)
                .json(&payload)
                .send()
                .expect("POST"),
        )
    };
    let reads = [
        "/api/waves",
        "/api/waves/wave-1",
        "/api/waves/wave-1/events",
        "/api/waves/wave-1/reports",
        "/api/servers/dir-01",
    ];
    for path in reads {
        let (status, error) = get(path, None);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("Bearer")),
            "{error}"
        );
        assert_eq!(
            get(path, Some("wl_not-a-token")).0,
            StatusCode::UNAUTHORIZED
        );
        for (role, token) in &tokens {
            assert_eq!(
                get(path, Some(token)).0,
                StatusCode::OK,
                "{role} reads {path}"
            );
        }
    }
    // A 401 names its scheme; the API is never cached; no page goes into a frame.
    let refused = http
        .get(served.url("/api/waves"))
        .send()
        .expect("GET without a token");
    let header = |r: &Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header(&refused, "www-authenticate"),
        "Bearer realm=\"wavelift\""
    );
    assert_eq!(header(&refused, "cache-control"), "no-store");
    assert_eq!(header(&refused, "x-frame-options"), "DENY");
    assert_eq!(header(&refused, "x-content-type-options"), "nosniff");
    let viewer = tokens[0].1.as_str();
    // What axum itself refuses is said in JSON too: a path that is not UTF-8, a body over
    // its limit.
    let (status, error) = get("/api/waves/%C3%28", Some(viewer));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("UTF-8")),
        "{error}"
    );
    // (A client of its own: the server closes the connection without reading the body.)
    let (status, error) = body(
        client()
            .post(served.url("/api/waves/wave-1/approve"))
            .bearer_auth(&tokens[3].1)
            .body(vec![b' '; 3 << 20])
            .send()
            .expect("a large POST"),
    );
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(error["error"].is_string(), "{error}");
    // `%2F` names no wave (it is not the overview); a limit of 0 is no event.
    let (status, error) = get("/api/waves/%2F", Some(viewer));
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"], "no wave `/`");
    let (status, none) = get("/api/waves/wave-1/events?limit=0", Some(viewer));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["events"], json!([]));
    // A token's name is who acts in the log: on one line.
    let forged = wavelift(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "eve\nforged line",
        ],
    );
    assert_eq!(forged.code, 1, "{}", forged.describe());
    assert!(
        forged
            .stderr
            .contains("name holds a control character (\\n): write it on one line"),
        "{}",
        forged.describe()
    );
    // The live log needs a token too (its answer never ends, so it is asked apart).
    let stream = http
        .get(served.url("/api/waves/wave-1/events/stream"))
        .send()
        .expect("the stream without a token");
    assert_eq!(stream.status(), StatusCode::UNAUTHORIZED);
    drop(stream);
    // The store keeps each token's hash, never the token.
    for file in ["state.db", "state.db-wal"] {
        let path = dir.join(".wavelift").join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for (role, token) in &tokens {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "the {role} token is in {} as it was given",
                path.display()
            );
        }
    }
    let (_, overview) = get("/api/waves", Some(&tokens[0].1));
    let names: Vec<&str> = overview["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["wave-1", "wave-2"]);
    assert_eq!(overview["waves"][0]["phase"], "not started");
    let (_, wave) = get("/api/waves/wave-1", Some(&tokens[0].1));
    assert_eq!(wave["servers"].as_array().map(Vec::len), Some(4));
    assert_eq!(wave["servers"][0]["tasks"]["cutover"]["state"], "pending");
    assert_eq!(
        get("/api/waves/wave-9", Some(&tokens[0].1)).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/api/servers/nope", Some(&tokens[0].1)).0,
        StatusCode::NOT_FOUND
    );
    // A misspelt wave is not a quiet one; an unreadable query and an unknown call are
    // errors in JSON like the others.
    for path in [
        "/api/waves/wave-9/events",
        "/api/waves/wave-9/reports",
        "/api/waves/wave-9/events/stream",
    ] {
        let (status, error) = get(path, Some(&tokens[0].1));
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {error}");
        assert_eq!(error["error"], "no wave `wave-9`", "{path}");
    }
    for query in ["after=abc", "limit=-1", "limit=1&limit=2"] {
        let path = format!("/api/waves/wave-1/events?{query}");
        let (status, error) = get(&path, Some(&tokens[0].1));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {error}");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("the query string does not read: ")),
            "{path}: {error}"
        );
    }
    let (status, error) = get("/api/wavez", Some(&tokens[0].1));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error["error"],
        "no such call: /api/wavez (see /api/openapi.json)"
    );
    let (status, error) = post("/api/waves", &tokens[0].1, json!({}));
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        error["error"],
        "/api/waves does not take POST (see /api/openapi.json)"
    );

    // Approve: approver and admin only.
    let token_of = |role: &str| {
        tokens
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| t.as_str())
            .expect("role")
    };
    for role in ["viewer", "operator"] {
        let (status, error) = post(
            "/api/waves/wave-1/approve",
            token_of(role),
            json!({ "app": "directory" }),
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{role} approves");
        assert_eq!(
            error["error"],
            format!("the role {role} may not approve cutovers")
        );
    }
    // A misspelled field is refused, not read as "the whole wave".
    let (status, error) = post(
        "/api/waves/wave-1/approve",
        token_of("approver"),
        json!({ "application": "directory" }),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `application`")),
        "{error}"
    );
    // Nor is an array: serde would read `[]` as no application, the whole wave.
    let (status, error) = post("/api/waves/wave-1/approve", token_of("approver"), json!([]));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let (_, wave) = get("/api/waves/wave-1", Some(token_of("viewer")));
    assert!(
        wave["gates"]
            .as_array()
            .is_some_and(|gates| gates.iter().all(|g| g["approved_by"].is_null())),
        "{}",
        wave["gates"]
    );
    // A body sent without a Content-Type (as `curl -d` or Python's `data=` may) is read
    // as what it says: one application's go.
    let (status, approved) = body(
        http.post(served.url("/api/waves/wave-1/approve"))
            .bearer_auth(token_of("approver"))
            .body(r#"{"app":"directory"}"#)
            .send()
            .expect("POST"),
    );
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(
        approved,
        json!({ "approved": ["directory"], "by": "approver-user", "already": [] })
    );
    let (status, approved) = post("/api/waves/wave-1/approve", token_of("admin"), json!({}));
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["approved"], json!(["payroll"]), "{approved}");
    assert_eq!(
        approved["already"],
        json!([{ "app": "directory", "by": "approver-user" }]),
        "{approved}"
    );
    let (status, error) = post(
        "/api/waves/wave-9/approve",
        token_of("admin"),
        json!({ "app": "payroll" }),
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(
        error["error"],
        "no wave `wave-9`; the waves are: wave-1, wave-2"
    );
    let (_, wave) = get("/api/waves/wave-1", Some(token_of("viewer")));
    assert_eq!(wave["gates"][0]["approved_by"], "approver-user");

    // No-go: approver and admin only, with a reason; it withdraws payroll's go.
    for role in ["viewer", "operator"] {
        let (status, error) = post(
            "/api/waves/wave-1/no-go",
            token_of(role),
            json!({ "app": "payroll", "reason": "not ready" }),
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{role} says no-go");
        assert_eq!(
            error["error"],
            format!("the role {role} may not approve cutovers")
        );
    }
    let (status, error) = post(
        "/api/waves/wave-1/no-go",
        token_of("approver"),
        json!({ "app": "payroll" }),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"], "a no-go needs its reason");
    let (status, held) = post(
        "/api/waves/wave-1/no-go",
        token_of("approver"),
        json!({ "app": "payroll", "reason": "payroll's freeze is not over" }),
    );
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held, json!({ "held": ["payroll"], "by": "approver-user" }));
    let (_, wave) = get("/api/waves/wave-1", Some(token_of("viewer")));
    assert_eq!(wave["gates"][1]["application"], "payroll");
    assert!(
        wave["gates"][1]["approved_by"].is_null(),
        "{}",
        wave["gates"][1]
    );

    // Retry, skip, cancel: operator and admin only.
    for role in ["viewer", "approver"] {
        let (status, error) = post(
            "/api/tasks/dir-01/prereq_check/skip",
            token_of(role),
            json!({}),
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{role} skips");
        assert_eq!(
            error["error"],
            format!("the role {role} may not retry, skip, cancel or abort tasks")
        );
    }
    let (status, done) = post(
        "/api/tasks/dir-01/prereq_check/skip",
        token_of("operator"),
        json!({}),
    );
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["by"], "operator-user");
    let (status, _) = post(
        "/api/tasks/dir-02/prereq_check/cancel",
        token_of("admin"),
        json!({}),
    );
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        "/api/tasks/dir-02/prereq_check/retry",
        token_of("operator"),
        json!({}),
    );
    assert_eq!(status, StatusCode::OK);
    let (status, error) = post(
        "/api/tasks/dir-01/prereq_check/skip",
        token_of("operator"),
        json!({}),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"], "`dir-01/prereq_check` is already skipped");
    assert_eq!(
        post("/api/tasks/nope/cutover/skip", token_of("admin"), json!({})).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(
            "/api/tasks/dir-01/cutover/explode",
            token_of("admin"),
            json!({})
        )
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, server) = get("/api/servers/dir-01", Some(token_of("viewer")));
    assert_eq!(server["tasks"][0]["state"], "skipped");

    // The log shows who did what; the OpenAPI document has every route used above.
    let (_, events) = get("/api/waves/wave-1/events", Some(token_of("viewer")));
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "operator.approve",
        "operator.skip",
        "operator.cancel",
        "operator.retry",
    ] {
        assert!(kinds.contains(&kind), "{kind} not in {kinds:?}");
    }
    let (status, spec) = get("/api/openapi.json", None);
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/waves",
        "/api/waves/{wave}",
        "/api/waves/{wave}/events",
        "/api/waves/{wave}/events/stream",
        "/api/waves/{wave}/reports",
        "/api/waves/{wave}/approve",
        "/api/waves/{wave}/no-go",
        "/api/servers/{server}",
        "/api/tasks/{first}/{kind}/{lever}",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} is not in the OpenAPI document"
        );
    }

    // The live log: server-sent events, from the start.
    let mut stream = http
        .get(served.url("/api/waves/wave-1/events/stream"))
        .bearer_auth(token_of("viewer"))
        .send()
        .expect("the stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("operator.approve") && Instant::now() < deadline {
        let n = stream.read(&mut buf).expect("stream bytes");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.contains("event: log") && seen.contains("operator.approve"),
        "{seen}"
    );
}

#[test]
fn a_session_needs_its_csrf_token_for_every_change_and_pages_need_a_session() {
    let scratch = Scratch::new("serve-session");
    let dir = applied_quickstart(&scratch);
    let approver = token(&dir, "approver");
    let served = Served::start(&dir, &[]);
    let http = client();

    // Pages without a session go to the login form; assets need nothing.
    for page in ["/", "/waves/wave-1", "/servers/dir-01"] {
        let response = http.get(served.url(page)).send().expect("page");
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(response.headers()[LOCATION], "/login");
    }
    let script = http
        .get(served.url("/assets/app.js"))
        .send()
        .expect("app.js");
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/javascript")
    );

    // Log in: the form's CSRF token must match its cookie.
    let form = http.get(served.url("/login")).send().expect("login form");
    let login_cookie = cookie_pair(&form, "wavelift_login");
    let html = form.text().expect("html");
    let csrf = value_of(&html, "name=\"csrf\" value=\"");
    let forged = http
        .post(served.url("/login"))
        .header(COOKIE, &login_cookie)
        .form(&[("token", approver.as_str()), ("csrf", "forged")])
        .send()
        .expect("forged login");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let wrong = http
        .post(served.url("/login"))
        .header(COOKIE, &login_cookie)
        .form(&[("token", "wl_wrong"), ("csrf", csrf.as_str())])
        .send()
        .expect("wrong token");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let login = http
        .post(served.url("/login"))
        .header(COOKIE, &login_cookie)
        .form(&[("token", approver.as_str()), ("csrf", csrf.as_str())])
        .send()
        .expect("login");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let session = cookie_pair(&login, "wavelift_session");
    let set_cookie = login.headers()[SET_COOKIE].to_str().unwrap_or("");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );

    // The wave page carries the session's CSRF token for the script.
    let page = http
        .get(served.url("/waves/wave-1"))
        .header(COOKIE, &session)
        .send()
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().expect("html");
    assert!(
        page.contains("data-page=\"wave\"") && page.contains("approver-user (approver)"),
        "{page}"
    );
    let page_csrf = value_of(&page, "name=\"csrf-token\" content=\"");
    assert_eq!(page_csrf.len(), 64);

    // The session reads the API; a change needs the CSRF token.
    let read = http
        .get(served.url("/api/waves"))
        .header(COOKIE, &session)
        .send()
        .expect("read");
    assert_eq!(read.status(), StatusCode::OK);
    let approve = |csrf: Option<&str>| {
        let mut request = http
            .post(served.url("/api/waves/wave-1/approve"))
            .header(COOKIE, &session)
            .json(&json!({ "app": "directory" }));
        if let Some(csrf) = csrf {
            request = request.header("X-CSRF-Token", csrf);
        }
        body(request.send().expect("approve"))
    };
    let (status, error) = approve(None);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("CSRF")),
        "{error}"
    );
    assert_eq!(approve(Some("0000")).0, StatusCode::FORBIDDEN);
    let (status, approved) = approve(Some(&page_csrf));
    assert_eq!(status, StatusCode::OK, "{approved}");
    // The approver may not steer, CSRF or not.
    let skip = http
        .post(served.url("/api/tasks/dir-01/prereq_check/skip"))
        .header(COOKIE, &session)
        .header("X-CSRF-Token", &page_csrf)
        .send()
        .expect("skip");
    assert_eq!(skip.status(), StatusCode::FORBIDDEN);

    // The form post (no script): CSRF field required.
    let form_post = |csrf: &str| {
        http.post(served.url("/waves/wave-1/approve"))
            .header(COOKIE, &session)
            .form(&[("app", "payroll"), ("csrf", csrf)])
            .send()
            .expect("form post")
    };
    assert_eq!(form_post("").status(), StatusCode::FORBIDDEN);
    let posted = form_post(&page_csrf);
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    assert_eq!(posted.headers()[LOCATION], "/waves/wave-1");

    // Logging out ends the session.
    let out = http
        .post(served.url("/logout"))
        .header(COOKIE, &session)
        .form(&[("csrf", page_csrf.as_str())])
        .send()
        .expect("logout");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = http
        .get(served.url("/api/waves"))
        .header(COOKIE, &session)
        .send()
        .expect("after");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

/// Starts `wavelift serve .` on a quickstart copy whose configuration names another
/// SQLite file: the web reads the store the executor runs on, so the token made in it
/// is known and the waves applied there are listed.
#[test]
fn serve_with_definitions_reads_the_database_their_configuration_names() {
    let scratch = Scratch::new("serve-config-database");
    let dir = quickstart_copy(scratch.path(), "sim");
    edit(
        &dir.join("wavelift.yaml"),
        "url: sqlite://.wavelift/state.db",
        "url: sqlite://team.db",
    );
    let applied = wavelift(&dir, &["apply", "."]);
    assert_eq!(applied.code, 0, "{}", applied.describe());
    let viewer = token_with(&dir, "viewer", &["--database-url", "sqlite://team.db"]);
    let served = Served::start(&dir, &["."]);
    let (status, waves) = body(
        client()
            .get(served.url("/api/waves"))
            .bearer_auth(viewer)
            .send()
            .expect("GET"),
    );
    assert_eq!(status, StatusCode::OK, "{waves}");
    let names: Vec<&str> = waves["waves"]
        .as_array()
        .map(|waves| waves.iter().filter_map(|w| w["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["wave-1", "wave-2"], "{waves}");
    assert!(
        !dir.join(".wavelift/state.db").exists(),
        "no second, empty store was made"
    );
}

#[test]
fn revoking_a_token_ends_the_sessions_made_with_it() {
    let scratch = Scratch::new("serve-revoke");
    let dir = applied_quickstart(&scratch);
    let viewer = token(&dir, "viewer");
    let served = Served::start(&dir, &[]);
    let http = client();
    let (session, _) = login(&http, &served, &viewer);
    let read = || {
        http.get(served.url("/api/waves"))
            .header(COOKIE, &session)
            .send()
            .expect("read")
            .status()
    };
    assert_eq!(read(), StatusCode::OK);
    let listed = wavelift(&dir, &["token", "list"]);
    let id = listed
        .stdout
        .lines()
        .find(|l| l.contains("viewer-user"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}", listed.describe()))
        .to_owned();
    let revoked = wavelift(&dir, &["token", "revoke", &id]);
    assert_eq!(
        revoked.stdout.trim(),
        format!("token {id} revoked"),
        "{}",
        revoked.describe()
    );
    assert_eq!(
        read(),
        StatusCode::UNAUTHORIZED,
        "the session ended with its token"
    );
    let again = wavelift(&dir, &["token", "revoke", &id]);
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .contains(&format!("token {id} is revoked already")),
        "{}",
        again.describe()
    );
}

/// Starts: `wavelift serve` on a loopback port and one live log (server-sent events) read
/// through it, as a wave page left open does. SIGTERM stops the server all the same,
/// within seconds: the live log ends instead of holding the shutdown for good.
#[test]
fn a_live_log_left_open_does_not_keep_serve_from_stopping() {
    let scratch = Scratch::new("serve-sigterm");
    let dir = applied_quickstart(&scratch);
    let viewer = token(&dir, "viewer");
    let mut served = Served::start(&dir, &[]);
    let mut live = client()
        .get(served.url("/api/waves/wave-1/events/stream"))
        .bearer_auth(&viewer)
        .send()
        .expect("the live log");
    assert_eq!(live.status(), StatusCode::OK);
    let mut first = [0u8; 64];
    let read = live.read(&mut first).expect("the live log's first bytes");
    assert!(read > 0, "the live log sent nothing");
    // Asked at once: serve catches SIGTERM from its first moment, so a stop that comes
    // before its run is going (which ended the process by the signal's default) is kept
    // for it.
    let asked = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status();
    let mut exited = None;
    while asked.elapsed() < Duration::from_secs(8) && exited.is_none() {
        exited = served.child.try_wait().expect("the serve process");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = exited.unwrap_or_else(|| {
        panic!(
            "serve still runs {:?} after SIGTERM with a live log open",
            asked.elapsed()
        )
    });
    assert!(status.success(), "serve ended with {status}");
}

/// Logs in with `token` through the form; the session cookie and the CSRF token its
/// pages carry.
fn login(http: &Client, served: &Served, token: &str) -> (String, String) {
    let form = http.get(served.url("/login")).send().expect("login form");
    let login_cookie = cookie_pair(&form, "wavelift_login");
    let csrf = value_of(&form.text().expect("html"), "name=\"csrf\" value=\"");
    let login = http
        .post(served.url("/login"))
        .header(COOKIE, &login_cookie)
        .form(&[("token", token), ("csrf", csrf.as_str())])
        .send()
        .expect("login");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let session = cookie_pair(&login, "wavelift_session");
    let page = http
        .get(served.url("/servers/dir-01"))
        .header(COOKIE, &session)
        .send()
        .expect("page")
        .text()
        .expect("html");
    let page_csrf = value_of(&page, "name=\"csrf-token\" content=\"");
    (session, page_csrf)
}

#[test]
fn the_levers_work_from_the_pages_forms_for_operators_only() {
    let scratch = Scratch::new("serve-levers");
    let dir = applied_quickstart(&scratch);
    let viewer = token(&dir, "viewer");
    let served = Served::start(&dir, &[]);
    let http = client();
    let lever = |session: &str, csrf: &str, task: &str, lever: &str, back: &str| {
        http.post(served.url(&format!("/tasks/{task}/{lever}")))
            .header(COOKIE, session)
            .form(&[("csrf", csrf), ("back", back)])
            .send()
            .expect("lever form")
    };
    let state = |task: &str| {
        let (server, _) = task.split_once('/').expect("SERVER/KIND");
        let (_, page) = body(
            http.get(served.url(&format!("/api/servers/{server}")))
                .bearer_auth(&viewer)
                .send()
                .expect("server"),
        );
        page["tasks"]
            .as_array()
            .and_then(|tasks| tasks.iter().find(|t| t["id"] == task))
            .map(|t| t["state"].clone())
            .unwrap_or(Value::Null)
    };

    // Viewers and approvers are refused, whatever their CSRF token.
    for (role, token) in [
        ("viewer", viewer.clone()),
        ("approver", token(&dir, "approver")),
    ] {
        let (session, csrf) = login(&http, &served, &token);
        let refused = lever(
            &session,
            &csrf,
            "dir-01/cmdb_cleanup",
            "skip",
            "/servers/dir-01",
        );
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{role} skips");
        assert!(refused.text().unwrap_or_default().contains(&format!(
            "the role {role} may not retry, skip, cancel or abort tasks"
        )),);
    }
    assert_eq!(state("dir-01/cmdb_cleanup"), "pending");

    // The operator: the CSRF field is required; then cancel, retry and skip, each back
    // to the page the form came from.
    let (session, csrf) = login(&http, &served, &token(&dir, "operator"));
    let forged = lever(
        &session,
        "0000",
        "dir-01/cmdb_cleanup",
        "cancel",
        "/servers/dir-01",
    );
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let cancelled = lever(
        &session,
        &csrf,
        "dir-01/cmdb_cleanup",
        "cancel",
        "/servers/dir-01",
    );
    assert_eq!(cancelled.status(), StatusCode::SEE_OTHER);
    assert_eq!(cancelled.headers()[LOCATION], "/servers/dir-01");
    assert_eq!(state("dir-01/cmdb_cleanup"), "cancelled");
    let retried = lever(
        &session,
        &csrf,
        "dir-01/cmdb_cleanup",
        "retry",
        "/waves/wave-1",
    );
    assert_eq!(retried.headers()[LOCATION], "/waves/wave-1");
    assert_eq!(state("dir-01/cmdb_cleanup"), "pending");
    let skipped = lever(
        &session,
        &csrf,
        "dir-01/cmdb_cleanup",
        "skip",
        "https://example.test/",
    );
    assert_eq!(skipped.status(), StatusCode::SEE_OTHER);
    assert_eq!(skipped.headers()[LOCATION], "/", "never sent elsewhere");
    assert_eq!(state("dir-01/cmdb_cleanup"), "skipped");

    // What the store refuses is said, with the state that refuses it.
    let again = lever(
        &session,
        &csrf,
        "dir-01/cmdb_cleanup",
        "skip",
        "/servers/dir-01",
    );
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(
        again
            .text()
            .unwrap_or_default()
            .contains("`dir-01/cmdb_cleanup` is already skipped")
    );
    let unknown = lever(&session, &csrf, "dir-01/cmdb_cleanup", "explode", "/");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// `NAME=VALUE` of a cookie the response sets.
fn cookie_pair(response: &Response, name: &str) -> String {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

/// The text after `marker` up to the next quote.
fn value_of(html: &str, marker: &str) -> String {
    html.split_once(marker)
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or_else(|| panic!("no `{marker}` in {html}"))
        .to_owned()
}
