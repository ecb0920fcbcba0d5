//! The JSON API under /api: everything the pages show, and the levers. The pages read
//! these same resources from the browser; nothing is shown that the API lacks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::App;
use super::auth::{Identity, Refusal, allow, identify};
use crate::scheduler::clock::local_text;
use crate::scheduler::phase::WaveCalendar;
use crate::store::{Permission, RefusalKind, TaskRow, WaveCounts};

/// The task kinds in plan order: the matrix's columns.
pub const KINDS: [&str; 6] = [
    "prereq_check",
    "agent_push",
    "replication_verify",
    "boot_test",
    "cutover",
    "cmdb_cleanup",
];

/// How often the live log looks for new events.
pub(crate) const STREAM_POLL: Duration = Duration::from_millis(300);

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Every response: the pages kept out of other sites' frames, the browser kept from
/// guessing types. Under `/api/` no response is cached, a 401 names its scheme, and
/// every error is `{"error": ...}` whatever produced it (axum's own rejections, of a path
/// that is not UTF-8 or a body over its limit, answer in plain text).
pub async fn harden(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::{HeaderValue, header};
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if api && (status.is_client_error() || status.is_server_error()) && !json {
        let (parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        let mut answer = error(status, message);
        for (name, value) in &parts.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                answer.headers_mut().append(name.clone(), value.clone());
            }
        }
        response = answer;
    }
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wavelift\""),
            );
        }
    }
    response
}

impl From<Refusal> for Response {
    fn from(refusal: Refusal) -> Response {
        error(refusal.status, refusal.message)
    }
}

fn internal(err: anyhow::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
}

/// The caller, if it may do `permission` (mutations: with the session's CSRF token).
pub async fn guard(
    app: &App,
    headers: &HeaderMap,
    permission: Permission,
    mutation: bool,
) -> Result<Identity, Response> {
    let identity = identify(&app.store, &app.sessions, headers).await?;
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    Ok(allow(identity, permission, mutation, csrf)?)
}

#[derive(Debug, Serialize)]
pub struct Milestone {
    pub label: &'static str,
    pub at: i64,
    pub local: String,
}

#[derive(Debug, Serialize)]
pub struct WaveSummary {
    pub name: String,
    pub engine: String,
    pub timezone: String,
    pub phase: &'static str,
    pub next: Option<Milestone>,
    pub tasks: u64,
    pub finished: u64,
    /// Failed or blocked.
    pub failed: u64,
    pub awaiting_approval: u64,
    /// `failing` (a task failed or is blocked), `waiting` (a go is awaited), `ok`.
    pub health: &'static str,
}

fn summary(calendar: &WaveCalendar, counts: &WaveCounts, now: i64) -> WaveSummary {
    let standing = calendar.standing(now);
    WaveSummary {
        name: calendar.name.clone(),
        engine: calendar.engine.clone(),
        timezone: calendar.timezone.clone(),
        phase: standing.phase,
        next: standing.next.map(|(label, at)| Milestone {
            label,
            at,
            local: local_text(at, &calendar.timezone),
        }),
        tasks: counts.total,
        finished: counts.finished,
        failed: counts.failed,
        awaiting_approval: counts.awaiting_approval,
        health: if counts.failed > 0 {
            "failing"
        } else if counts.awaiting_approval > 0 {
            "waiting"
        } else {
            "ok"
        },
    }
}

/// GET /api/waves: every wave with its phase, progress, health and next milestone.
pub async fn waves(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    cached_json(&app, OVERVIEW_KEY).await
}

/// The overview's JSON.
pub async fn overview_json(app: &App) -> anyhow::Result<Option<Value>> {
    let now = app.now().await?;
    let counts = app.store.counts_by_wave().await?;
    let waves: Vec<WaveSummary> = app
        .store
        .wave_calendars()
        .await?
        .iter()
        .map(|c| summary(c, &counts.get(&c.name).cloned().unwrap_or_default(), now))
        .collect();
    Ok(Some(json!({ "now": now, "waves": waves })))
}

/// The cache key of the overview (wave names never start with `/`).
pub const OVERVIEW_KEY: &str = "/";

/// A cached JSON body: the overview's, or a wave's (see [`App::cached`]).
async fn cached_json(app: &Arc<App>, key: &str) -> Response {
    match App::cached(app, key).await {
        Ok(Some(body)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            axum::body::Bytes::from_owner(body),
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no wave `{key}`")),
        Err(err) => internal(err),
    }
}

/// What a task cell of the matrix shows.
#[derive(Debug, Serialize)]
struct Cell {
    id: String,
    state: String,
    reason: Option<String>,
    note: Option<String>,
}

fn step_json(task: &TaskRow) -> Option<Value> {
    serde_json::from_str(task.step.as_deref()?).ok()
}

fn cell(task: &TaskRow) -> Cell {
    Cell {
        id: task.id.clone(),
        state: task.state.clone(),
        reason: task.reason.clone(),
        note: step_json(task).and_then(|s| s.get("note")?.as_str().map(str::to_owned)),
    }
}

/// A server's replication as its check last saw it.
fn replication(verify: Option<&TaskRow>) -> Value {
    let Some(task) = verify else {
        return json!({ "state": "no replication check" });
    };
    let step = step_json(task);
    let figures = step
        .as_ref()
        .and_then(|s| s.get("task")?.get("replication").cloned());
    let healthy = step
        .as_ref()
        .and_then(|s| s.get("task")?.get("healthy")?.as_bool());
    let mut value = figures.unwrap_or_else(|| json!({}));
    if let Some(map) = value.as_object_mut() {
        map.insert("check".to_owned(), json!(task.state));
        map.insert(
            "note".to_owned(),
            json!(step.and_then(|s| s.get("note")?.as_str().map(str::to_owned))),
        );
        map.insert("healthy".to_owned(), json!(healthy));
    }
    value
}

/// GET /api/waves/{wave}: the calendar, the server-by-task matrix, replication per
/// server, the cutover gates and the reports.
pub async fn wave(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    // `/api/waves/%2F` names no wave (the overview's cache key is `/`).
    if wave == OVERVIEW_KEY {
        return error(StatusCode::NOT_FOUND, format!("no wave `{wave}`"));
    }
    cached_json(&app, &wave).await
}

/// A wave's JSON; `None` when there is no such wave.
pub async fn wave_json(app: &App, wave: &str) -> anyhow::Result<Option<Value>> {
    let Some(calendar) = app
        .store
        .wave_calendars()
        .await?
        .into_iter()
        .find(|c| c.name == wave)
    else {
        return Ok(None);
    };
    let now = app.now().await?;
    let tasks = app.store.tasks(Some(wave)).await?;
    // A removed server's tasks (shown, marked) and a removed application's gate are
    // history: not counted.
    let removed = app.store.removed_server_names().await?;
    let removed_apps = app.store.removed_application_names().await?;
    let is_removed = |s: &str| removed.contains(s);
    let counts = WaveCounts::of(tasks.iter().filter(|t| match t.server.as_deref() {
        Some(server) => !is_removed(server),
        None => !removed_apps.contains(&t.application),
    }));
    let mut servers: BTreeMap<(&str, &str), BTreeMap<&str, &TaskRow>> = BTreeMap::new();
    let mut gates = Vec::new();
    for t in &tasks {
        match &t.server {
            Some(s) => {
                servers
                    .entry((t.application.as_str(), s.as_str()))
                    .or_default()
                    .insert(t.kind.as_str(), t);
            }
            None => gates.push(json!({
                "application": t.application,
                "id": t.id,
                "state": t.state,
                "approval_required": t.approval_required,
                "approved_by": t.approved_by,
                "approved_at": t.approved_at,
                "reason": t.reason,
            })),
        }
    }
    let servers: Vec<Value> = servers
        .iter()
        .map(|((app_name, server), kinds)| {
            let cells: BTreeMap<&str, Cell> = kinds.iter().map(|(k, t)| (*k, cell(t))).collect();
            json!({
                "name": server,
                "application": app_name,
                "removed": is_removed(server),
                "tasks": cells,
                "replication": replication(kinds.get("replication_verify").copied()),
            })
        })
        .collect();
    let reports: Vec<Value> = app
        .store
        .reports(Some(wave))
        .await?
        .iter()
        .map(|r| {
            json!({
                "kind": r.kind, "subject": r.subject, "state": r.state,
                "attempts": r.attempts, "last_error": r.last_error,
                "delivered_via": r.delivered_via, "due_at": r.due_at,
            })
        })
        .collect();
    let tz = calendar.timezone.as_str();
    let local = |ms: i64| local_text(ms, tz);
    Ok(Some(json!({
        "now": now,
        "now_local": local(now),
        "summary": summary(&calendar, &counts, now),
        "calendar": {
            "build_start": calendar.build_start,
            "validate_start": calendar.validate_start,
            "cutover_start": calendar.cutover_start,
            "window_start": calendar.window_start,
            "window_end": calendar.window_end,
            "cutover_end": calendar.cutover_end,
            "window_local": format!("{} to {}", local(calendar.window_start), local(calendar.window_end)),
        },
        "kinds": KINDS,
        "servers": servers,
        "gates": gates,
        "reports": reports,
    })))
}

/// GET /api/servers/{server}: every attempt of every task with its checks, output and
/// errors, and the server's part of the job progress log.
pub async fn server(
    State(app): State<Arc<App>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    let result: anyhow::Result<Option<Value>> = async {
        let tasks: Vec<TaskRow> = app
            .store
            .tasks(None)
            .await?
            .into_iter()
            .filter(|t| t.server.as_deref() == Some(server.as_str()))
            .collect();
        let Some(first) = tasks.first() else {
            return Ok(None);
        };
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let attempts = app.store.attempts_of_tasks(&ids).await?;
        let events = app.store.events_of_tasks(&ids).await?;
        let by_kind: BTreeMap<&str, &TaskRow> =
            tasks.iter().map(|t| (t.kind.as_str(), t)).collect();
        let tasks_json: Vec<Value> = KINDS
            .iter()
            .filter_map(|k| by_kind.get(k))
            .map(|t| {
                let tries: Vec<Value> = attempts
                    .iter()
                    .filter(|a| a.task_id == t.id)
                    .map(|a| {
                        json!({
                            "number": a.number,
                            "started_at": a.started_at,
                            "finished_at": a.finished_at,
                            "outcome": a.outcome,
                            "checks": serde_json::from_str::<Value>(&a.checks).unwrap_or(Value::Null),
                            "output": a.output,
                            "error": a.error,
                        })
                    })
                    .collect();
                json!({
                    "id": t.id, "kind": t.kind, "state": t.state, "reason": t.reason,
                    "started_at": t.started_at, "finished_at": t.finished_at,
                    "note": cell(t).note, "attempts": tries,
                })
            })
            .collect();
        let removed = app.store.removed_server_names().await?.contains(&server);
        Ok(Some(json!({
            "name": server,
            "wave": first.wave,
            "application": first.application,
            "removed": removed,
            "tasks": tasks_json,
            "events": events,
        })))
    }
    .await;
    match result {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no server `{server}`")),
        Err(err) => internal(err),
    }
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// GET /api/waves/{wave}/events?after=ID&limit=N: the job progress log, oldest first.
pub async fn events(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(err) => return unreadable_query(&err),
    };
    if let Some(r) = unknown_wave(&app, &wave).await {
        return r;
    }
    let limit = q.limit.unwrap_or(200).min(1000);
    match app
        .store
        .events_after(q.after.unwrap_or(0), Some(&wave), limit)
        .await
    {
        Ok(events) => Json(json!({ "events": events })).into_response(),
        Err(err) => internal(err),
    }
}

/// GET /api/waves/{wave}/events/stream: the job progress log as server-sent events
/// (`event: log`, the event as JSON, its id as the SSE id, so a reconnecting browser
/// goes on from `Last-Event-ID`).
pub async fn stream(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(err) => return unreadable_query(&err),
    };
    if let Some(r) = unknown_wave(&app, &wave).await {
        return r;
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after);
    // Without a place to resume from: the last events, not the whole history.
    let after = match resume {
        Some(after) => after,
        None => match app.store.backlog_start(&wave, STREAM_BACKLOG).await {
            Ok(start) => start,
            Err(err) => return internal(err),
        },
    };
    Sse::new(log_stream(app, wave, after, headers))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Events a fresh stream starts with.
const STREAM_BACKLOG: u32 = 200;
/// How often a stream checks its caller again, however busy the log (a revoked token, a
/// closed or expired session ends it).
const STREAM_RECHECK: Duration = Duration::from_secs(3);

fn log_stream(
    app: Arc<App>,
    wave: String,
    after: i64,
    headers: HeaderMap,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        (
            app,
            wave,
            after,
            Vec::<Event>::new(),
            headers,
            Instant::now(),
        ),
        |(app, wave, mut after, mut queue, headers, mut checked)| async move {
            loop {
                // The server shuts down: the stream ends (a browser's EventSource tries
                // again, and finds the restarted server).
                if app.closing() {
                    return None;
                }
                if checked.elapsed() >= STREAM_RECHECK {
                    if guard(&app, &headers, Permission::Read, false)
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    checked = Instant::now();
                }
                if let Some(event) = queue.pop() {
                    return Some((Ok(event), (app, wave, after, queue, headers, checked)));
                }
                match app.store.events_after(after, Some(&wave), 200).await {
                    Ok(rows) if !rows.is_empty() => {
                        after = rows.last().map_or(after, |r| r.id);
                        // Popped from the end: pushed newest first.
                        queue = rows
                            .iter()
                            .rev()
                            .map(|r| {
                                Event::default()
                                    .event("log")
                                    .id(r.id.to_string())
                                    .data(serde_json::to_string(r).unwrap_or_default())
                            })
                            .collect();
                    }
                    _ => tokio::time::sleep(STREAM_POLL).await,
                }
            }
        },
    )
}

/// GET /api/waves/{wave}/reports: the reports recorded for the wave and their delivery.
pub async fn reports(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&app, &headers, Permission::Read, false).await {
        return r;
    }
    if let Some(r) = unknown_wave(&app, &wave).await {
        return r;
    }
    match app.store.reports(Some(&wave)).await {
        Ok(rows) => Json(json!({ "reports": rows })).into_response(),
        Err(err) => internal(err),
    }
}

/// 422 for a query string that does not read (`after=abc`, `limit=-1`), as JSON like
/// every other error of the API.
fn unreadable_query(err: &QueryRejection) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "the query string does not read: {}",
            err.body_text()
                .trim_start_matches("Failed to deserialize query string: ")
        ),
    )
}

/// Any other path: 404, as JSON under `/api/`.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        error(
            StatusCode::NOT_FOUND,
            format!("no such call: {path} (see /api/openapi.json)"),
        )
    } else {
        (StatusCode::NOT_FOUND, format!("no page at {path}")).into_response()
    }
}

/// A known path asked with another method: 405, as JSON under `/api/`.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let why = format!("{path} does not take {method} (see /api/openapi.json)");
    if path.starts_with("/api/") {
        error(StatusCode::METHOD_NOT_ALLOWED, why)
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, why).into_response()
    }
}

/// 404 for a wave that was never stored: a misspelt name is not a quiet wave.
async fn unknown_wave(app: &App, wave: &str) -> Option<Response> {
    match app.store.wave_known(wave).await {
        Ok(true) => None,
        Ok(false) => Some(error(StatusCode::NOT_FOUND, format!("no wave `{wave}`"))),
        Err(err) => Some(internal(err)),
    }
}

/// A lever's JSON body, read whatever its Content-Type says (a client that sends none
/// still means what it wrote): an empty body is the default, anything else must be a
/// JSON object that parses with no unknown field, so a typo, an array or a missing
/// header never widens a go or a no-go from one application to the whole wave (serde
/// would take an array for the fields in order).
fn lever_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let not_what = |why: String| format!("the request's body is not what this call takes: {why}");
    let value: Value = serde_json::from_slice(body).map_err(|err| not_what(err.to_string()))?;
    if !value.is_object() {
        return Err(not_what("a JSON object was expected".to_owned()));
    }
    serde_json::from_value(value).map_err(|err| not_what(err.to_string()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// One application's gate; all of the wave's when absent (not when null).
    #[serde(default, deserialize_with = "written_app")]
    pub app: Option<String>,
}

/// An `app` that is written is a name: `null` is refused rather than read as "the whole
/// wave".
fn written_app<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// POST /api/waves/{wave}/approve: the go for a wave's (or one application's) cutovers,
/// recorded with the caller's name.
pub async fn approve(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match guard(&app, &headers, Permission::Approve, true).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let body: ApproveBody = match lever_body(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    match app.approve(&wave, body.app.as_deref(), &who).await {
        Ok(approval) => {
            let already: Vec<_> = approval
                .already
                .iter()
                .map(|(app, by)| json!({ "app": app, "by": by }))
                .collect();
            Json(json!({ "approved": approval.approved, "by": who.name, "already": already }))
                .into_response()
        }
        Err(err) => refused(err),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoGoBody {
    /// One application's gate; all of the wave's when absent (not when null).
    #[serde(default, deserialize_with = "written_app")]
    pub app: Option<String>,
    /// Why: recorded in the log with the caller's name.
    #[serde(default)]
    pub reason: String,
}

/// POST /api/waves/{wave}/no-go: the go withheld or withdrawn for cutovers that have not
/// started, with the reason (role approver or admin).
pub async fn no_go(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match guard(&app, &headers, Permission::Approve, true).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let body: NoGoBody = match lever_body(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    match app
        .no_go(&wave, body.app.as_deref(), &body.reason, &who)
        .await
    {
        Ok(apps) => Json(json!({ "held": apps, "by": who.name })).into_response(),
        Err(err) => refused(err),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeverBody {
    /// Why: an abort needs it; recorded in the log.
    #[serde(default)]
    pub reason: String,
}

/// POST /api/tasks/{first}/{kind}/{lever}: retry, skip, cancel or abort the task
/// `{first}/{kind}` (a server's task, or an application's gate `APP/ready`).
pub async fn lever(
    State(app): State<Arc<App>>,
    Path((first, kind, lever)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match guard(&app, &headers, Permission::Steer, true).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let body: LeverBody = match lever_body(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    let id = format!("{first}/{kind}");
    match app.pull(&id, &lever, &body.reason, &who).await {
        Ok(()) => Json(json!({ "task": id, "lever": lever, "by": who.name })).into_response(),
        Err(err) => refused(err),
    }
}

/// A lever the store refused, with its reason: unknown things are 404, a state that does
/// not allow it 409, an incomplete request 422; anything else (the store failing) is
/// 500, which a client may try again.
pub fn refused(err: anyhow::Error) -> Response {
    let message = format!("{err:#}");
    let status = match err.downcast_ref::<crate::store::Refused>().map(|r| r.kind) {
        Some(RefusalKind::NotFound) => StatusCode::NOT_FOUND,
        Some(RefusalKind::Conflict) => StatusCode::CONFLICT,
        Some(RefusalKind::Invalid) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, message)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::{ApproveBody, refused};
    use crate::store::{RefusalKind, Refused};

    /// A go's body names one application, or none for the whole wave; anything else is
    /// refused rather than widened to the whole wave.
    #[test]
    fn a_go_is_for_the_whole_wave_only_when_it_names_no_application() {
        let read = |body: &str| super::lever_body::<ApproveBody>(body.as_bytes()).map(|b| b.app);
        assert_eq!(read(""), Ok(None));
        assert_eq!(read("{}"), Ok(None));
        assert_eq!(read(r#"{"app":"shop"}"#), Ok(Some("shop".to_owned())));
        // An array would be read field by field: `[]` as the whole wave.
        for refused in [
            r#"{"app":null}"#,
            r#"{"application":"shop"}"#,
            "app=shop",
            "[]",
            r#"["shop"]"#,
            "\"shop\"",
        ] {
            assert!(read(refused).is_err(), "{refused} was read");
        }
    }

    fn refusal(kind: RefusalKind, message: &str) -> anyhow::Error {
        anyhow::Error::new(Refused {
            kind,
            message: message.to_owned(),
        })
    }

    /// A lever's status comes from the kind of refusal, not from its wording: a wave that
    /// exists but has nothing waiting is a conflict even when the sentence starts with
    /// "no", and a store that fails is a server error a client may try again.
    #[test]
    fn a_refusal_answers_with_the_status_of_its_kind() {
        let cases = [
            (
                refusal(
                    RefusalKind::Conflict,
                    "no cutover of wave `w` waits for a go",
                ),
                StatusCode::CONFLICT,
            ),
            (
                refusal(RefusalKind::NotFound, "no wave `w9`; the waves are: w"),
                StatusCode::NOT_FOUND,
            ),
            (
                refusal(RefusalKind::Invalid, "a no-go needs its reason"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                refusal(RefusalKind::Conflict, "`t` is already skipped").context("skipping"),
                StatusCode::CONFLICT,
            ),
            (
                anyhow::anyhow!("database is locked"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            let said = format!("{err:#}");
            assert_eq!(refused(err).status(), status, "{said}");
        }
    }
}
