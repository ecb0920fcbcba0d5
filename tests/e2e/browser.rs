//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! chromium and chromium-driver; .ci/run installs them). It logs in with a token, opens
//! the wave page while a warped rehearsal runs, gives the go with the page's button, and
//! sees the matrix change without a reload; a screenshot is saved under
//! target/tmp/browser/. Then an operator cancels and retries a task from a server's page.
//!
//! Starts: chromedriver on a free loopback port (which starts Chromium), and the wavelift
//! binary (apply, token, serve --time-warp) in a copy of the quickstart whose cutovers
//! need a go.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};
use wavelift_tests::{Scratch, edit, quickstart_copy, wavelift};

use crate::serve::{Served, token};

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    http: Client,
    base: String,
    session: String,
}

impl Driver {
    fn start(profile: &std::path::Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver; .ci/run does)");
        let http = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1400",
                             format!("--user-data-dir={}", profile.display())],
                },
            } } }))
            .send()
            .and_then(|r| r.json())
            .expect("a browser session");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Driver {
            child,
            http,
            base,
            session,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    /// The answer's value, or the WebDriver error it holds.
    fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let value: Value = request
            .send()
            .and_then(|r| r.json())
            .expect("a WebDriver answer");
        if value["value"].get("error").is_some() {
            return Err(value["value"].clone());
        }
        Ok(value["value"].clone())
    }

    /// The text of the dialog the page opens (an alert after a post), waiting at most
    /// `limit` for it.
    fn alert_text(&self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            match self.try_call(reqwest::Method::GET, "/alert/text", Value::Null) {
                Ok(text) => return text,
                Err(error) if Instant::now() > deadline => {
                    panic!("no dialog in {limit:?}: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks the element `css` selects.
    fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    /// Types `text` into the field `css` selects.
    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text }));
    }

    /// `action` on the element `css` selects. The pages redraw from the API as the run
    /// goes on, so an element found a moment ago may have been replaced, or not be laid
    /// out yet: it is found again, a bounded number of times.
    fn on_element(&self, css: &str, action: &str, body: Value) {
        for _ in 0..20 {
            let element = self.find(css);
            let path = format!("/element/{element}/{action}");
            match self.try_call(reqwest::Method::POST, &path, body.clone()) {
                Ok(_) => return,
                // Replaced, or caught halfway through a redraw (not laid out yet).
                Err(error)
                    if error["error"] == "stale element reference"
                        || error["error"] == "element not interactable" =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => panic!("WebDriver {action} on {css}: {error}"),
            }
        }
        panic!("{css} was redrawn under every {action} for 2 s");
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Waits until `script` returns `want` (at most `limit`); returns what it last saw.
    fn wait_for(&self, script: &str, want: &Value, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.script(script);
            if &seen == want || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn the_wave_page_follows_a_running_rehearsal_and_gives_the_go() {
    let scratch = Scratch::new("browser");
    // Replication checked every 6 hours instead of every 30 minutes: the run warps through
    // the weeks before the window in an eighth of the steps, so a loaded machine (CI runs
    // the other end-to-end tests beside this one) still shows the cutover in time.
    let dir = quickstart_copy(scratch.path(), "sim");
    edit(
        &dir.join("wavelift.yaml"),
        "approval: false",
        "approval: true",
    );
    edit(
        &dir.join("wavelift.yaml"),
        "schedule: \"*/30 * * * *\"",
        "schedule: \"0 */6 * * *\"",
    );
    let applied = wavelift(&dir, &["apply", "."]);
    assert_eq!(applied.code, 0, "{}", applied.describe());
    let approver = token(&dir, "approver");
    let served = Served::start(&dir, &["--time-warp"]);
    let driver = Driver::start(&scratch.path().join("chromium-profile"));

    // Log in with the token through the form.
    driver.go(&served.url("/login"));
    driver.type_into("#token", &approver);
    driver.click("#login");
    let overview = driver.wait_for(
        "return document.querySelectorAll('#waves tr[data-wave]').length",
        &json!(2),
        Duration::from_secs(20),
    );
    assert_eq!(overview, json!(2), "the overview lists both waves");

    // The wave page: the run goes on until directory's go is awaited.
    driver.go(&served.url("/waves/wave-1"));
    let gate = "return document.querySelector('#approvals tr[data-gate=\"directory\"] td:nth-child(2)')?.textContent ?? null";
    let awaiting = driver.wait_for(gate, &json!("awaiting_approval"), Duration::from_secs(60));
    assert_eq!(awaiting, json!("awaiting_approval"));
    let cell = "return document.querySelector('#matrix td[data-task=\"dir-01/cutover\"]')?.dataset.state ?? null";
    assert_eq!(driver.script(cell), json!("pending"));
    assert_eq!(
        driver.script("return document.querySelectorAll('#calendar rect').length >= 4"),
        json!(true),
        "the phase calendar"
    );
    // A mark on the page's window: a reload would lose it.
    driver.script("window.__notReloaded = 42; return null;");

    driver.click("button.go[data-app=\"directory\"]");
    let cut_over = driver.wait_for(cell, &json!("succeeded"), Duration::from_secs(180));
    assert_eq!(
        cut_over,
        json!("succeeded"),
        "the matrix shows the cutover done"
    );
    assert_eq!(
        driver.script("return window.__notReloaded ?? null"),
        json!(42)
    );
    let logged = driver.script("return document.querySelectorAll('#log div').length");
    assert!(
        logged.as_u64().is_some_and(|n| n > 0),
        "the live log: {logged}"
    );
    assert_eq!(
        driver.script("return document.querySelector('#approvals tr[data-gate=\"directory\"] td:nth-child(3)').textContent"),
        json!("given by approver-user")
    );

    screenshot(&driver, "wave-1.png");

    // An operator steers from a server's page: cancel a task (after the page asks), then
    // retry it; the page redraws each time without a reload.
    let operator = token(&dir, "operator");
    driver.go(&served.url("/login"));
    driver.type_into("#token", &operator);
    driver.click("#login");
    driver.wait_for(
        "return document.querySelectorAll('#waves tr[data-wave]').length",
        &json!(2),
        Duration::from_secs(20),
    );
    driver.go(&served.url("/servers/payroll-app-01"));
    let state = "return document.querySelector('section[data-task=\"payroll-app-01/cmdb_cleanup\"] .state')?.textContent ?? null";
    assert_eq!(
        driver.wait_for(state, &json!("pending"), Duration::from_secs(20)),
        json!("pending"),
        "the server page shows: {}",
        driver.script("return document.body.innerText")
    );
    driver.script("window.__notReloaded = 43; return null;");
    driver.click("button.lever[data-task=\"payroll-app-01/cmdb_cleanup\"][data-lever=\"cancel\"]");
    let asked = driver.call(reqwest::Method::GET, "/alert/text", Value::Null);
    assert_eq!(asked, json!("cancel payroll-app-01/cmdb_cleanup?"));
    driver.call(reqwest::Method::POST, "/alert/accept", json!({}));
    assert_eq!(
        driver.wait_for(state, &json!("cancelled"), Duration::from_secs(20)),
        json!("cancelled")
    );
    driver.click("button.lever[data-task=\"payroll-app-01/cmdb_cleanup\"][data-lever=\"retry\"]");
    assert_eq!(
        driver.wait_for(state, &json!("pending"), Duration::from_secs(20)),
        json!("pending")
    );
    assert_eq!(
        driver.script("return window.__notReloaded ?? null"),
        json!(43)
    );
    screenshot(&driver, "server-payroll-app-01.png");

    // The wave page offers the abort of a cutover under way, with its reason, beside the
    // failed and blocked tasks. No cutover of this run is still running by now, so the
    // page's reads of the wave (only those) are made to show dir-01's as running: what
    // the page draws from that, and what it posts, are the real page's, and the real API
    // answers the abort (refused: that cutover has finished).
    driver.go(&served.url("/waves/wave-1"));
    driver.wait_for(
        "return document.querySelector('#matrix td[data-task=\"dir-01/cutover\"]')?.dataset.state ?? null",
        &json!("succeeded"),
        Duration::from_secs(20),
    );
    driver.script(
        "const read = api;
         window.api = async (path, options) => {
           const data = await read(path, options);
           if (!options && path === '/api/waves/wave-1') {
             data.servers.find((s) => s.name === 'dir-01').tasks.cutover.state = 'running';
           }
           return data;
         };
         refresh();
         return null;",
    );
    let abort = "button.lever[data-task=\"dir-01/cutover\"][data-lever=\"abort\"]";
    assert_eq!(
        driver.wait_for(
            &format!("return document.querySelectorAll('#attention {abort}').length"),
            &json!(1),
            Duration::from_secs(20),
        ),
        json!(1),
        "the attention table offers the abort: {}",
        driver.script("return document.querySelector('#attention')?.outerHTML ?? null")
    );
    assert_eq!(
        driver.script(
            "return [...document.querySelectorAll('#attention button.lever[data-task=\"dir-01/cutover\"]')].map((b) => b.dataset.lever).join()"
        ),
        json!("abort"),
        "a running cutover is aborted, neither skipped nor cancelled"
    );
    driver.type_into(
        "#attention input.abort-reason[data-task=\"dir-01/cutover\"]",
        "the DBA found a blocker",
    );
    // The page redraws as the log moves: what is typed stays.
    driver.script("drawWave(); return null;");
    assert_eq!(
        driver.script(
            "return document.querySelector('#attention input.abort-reason[data-task=\"dir-01/cutover\"]').value"
        ),
        json!("the DBA found a blocker")
    );
    driver.click(&format!("#attention {abort}"));
    let asked = driver.call(reqwest::Method::GET, "/alert/text", Value::Null);
    assert_eq!(asked, json!("abort dir-01/cutover?"));
    driver.call(reqwest::Method::POST, "/alert/accept", json!({}));
    assert_eq!(
        driver.alert_text(Duration::from_secs(10)),
        json!("Not done: `dir-01/cutover` is succeeded: only a running cutover is aborted"),
        "the API's answer, shown to the operator"
    );
    driver.call(reqwest::Method::POST, "/alert/accept", json!({}));
}

/// Saves what the browser shows as target/tmp/browser/NAME.
fn screenshot(driver: &Driver, name: &str) {
    let png = decode_base64(
        driver
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .as_str()
            .expect("a screenshot"),
    );
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&folder).expect("the output folder");
    std::fs::write(folder.join(name), png).expect("the screenshot");
}
