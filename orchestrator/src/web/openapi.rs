//! The OpenAPI 3.1 document of the JSON API, at /api/openapi.json (readable without a
//! token: it says how to get one). A test checks that every /api route is in it.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

fn path_param(name: &str, what: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": what, "schema": { "type": "string" } })
}

fn ok(description: &str) -> Value {
    json!({
        "200": { "description": description, "content": { "application/json": { "schema": { "type": "object" } } } },
        "401": { "$ref": "#/components/responses/Unauthorized" },
        "403": { "$ref": "#/components/responses/Forbidden" },
    })
}

/// `ok`, and the errors a read of a named wave gives: 404 (no such wave), 422 (a query
/// that does not read), 500.
fn read_responses(description: &str) -> Value {
    with_errors(ok(description), &["404", "422", "500"])
}

fn lever_responses(description: &str) -> Value {
    with_errors(ok(description), &["404", "409", "422", "500"])
}

fn with_errors(mut responses: Value, statuses: &[&str]) -> Value {
    if let Some(map) = responses.as_object_mut() {
        for &status in statuses {
            map.insert(
                status.to_owned(),
                json!({ "$ref": "#/components/responses/Error" }),
            );
        }
    }
    responses
}

pub fn spec() -> Value {
    let wave = path_param("wave", "the wave's name");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Wavelift API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Waves, their tasks, replication, approvals and the job progress log. \
                Every operation needs a token (`Authorization: Bearer TOKEN`, made with \
                `wavelift token create --role viewer|operator|approver|admin`) or a session \
                cookie from /login; with a session cookie, POST needs the `X-CSRF-Token` header. \
                Roles: viewer reads; operator also retries, skips and cancels; approver also \
                approves; admin does everything."
        },
        "security": [ { "bearer": [] }, { "session": [] } ],
        "paths": {
            "/api/waves": { "get": {
                "summary": "Every wave with its phase, progress, health and next milestone",
                "responses": ok("the waves") } },
            "/api/waves/{wave}": { "get": {
                "summary": "A wave: its calendar, the server-by-task matrix, replication per server, gates and reports",
                "parameters": [wave],
                "responses": lever_responses("the wave") } },
            "/api/waves/{wave}/events": { "get": {
                "summary": "The wave's job progress log, oldest first",
                "parameters": [wave,
                    { "name": "after", "in": "query", "schema": { "type": "integer" }, "description": "only events after this id" },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }],
                "responses": read_responses("the events") } },
            "/api/waves/{wave}/events/stream": { "get": {
                "summary": "The wave's job progress log, live, as server-sent events (`event: log`)",
                "parameters": [wave,
                    { "name": "after", "in": "query", "schema": { "type": "integer" } },
                    { "name": "Last-Event-ID", "in": "header", "schema": { "type": "integer" } }],
                "responses": with_errors(
                    json!({ "200": { "description": "an event stream", "content": { "text/event-stream": {} } } }),
                    &["404", "422", "500"]) } },
            "/api/waves/{wave}/reports": { "get": {
                "summary": "The reports recorded for the wave and their delivery",
                "parameters": [wave],
                "responses": with_errors(ok("the reports"), &["404", "500"]) } },
            "/api/waves/{wave}/approve": { "post": {
                "summary": "Give the go for the wave's cutovers, or one application's (role approver or admin)",
                "parameters": [wave],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "properties": { "app": { "type": "string" } } } } } },
                "responses": lever_responses("the applications approved (`approved`) and by whom (`by`); those approved before keep their go (`already`: app and by)") } },
            "/api/waves/{wave}/no-go": { "post": {
                "summary": "Withhold or withdraw the go for cutovers that have not started, with the reason (role approver or admin)",
                "parameters": [wave],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "properties": { "app": { "type": "string" }, "reason": { "type": "string" } },
                    "required": ["reason"] } } } },
                "responses": lever_responses("the applications held and by whom") } },
            "/api/servers/{server}": { "get": {
                "summary": "A server: every attempt of every task with its checks, output and errors, and its log",
                "parameters": [path_param("server", "the server's name")],
                "responses": lever_responses("the server") } },
            "/api/tasks/{first}/{kind}/{lever}": { "post": {
                "summary": "Retry, skip or cancel the task FIRST/KIND (SERVER/KIND, or APPLICATION/ready for a gate), or abort a running cutover (SERVER/cutover: rolled back, then failed with the reason); role operator or admin",
                "parameters": [
                    path_param("first", "the server, or the application of a gate"),
                    path_param("kind", "the task's kind, or `ready` for a gate"),
                    { "name": "lever", "in": "path", "required": true, "schema": { "type": "string", "enum": ["retry", "skip", "cancel", "abort"] } }],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": { "reason": { "type": "string", "description": "why; an abort needs it" } } } } } },
                "responses": lever_responses("what was done") } },
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE },
            },
            "responses": {
                "Error": { "description": "refused, with the reason", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"] } } } },
                "Unauthorized": { "description": "no token or session, or an unknown token" },
                "Forbidden": { "description": "the role may not do this, or the CSRF token is missing" },
            },
        },
    })
}

pub async fn document() -> Response {
    Json(spec()).into_response()
}
