//! The replication agent installer of `wavelift sim serve-mgn --pending-agents`: the
//! address and SHA-512 of MGN's installer bucket (`GET
//! /latest/linux/aws-replication-installer-init` and `.sha512`), serving a shell script
//! that takes the real installer's options and, like MGN's agent, registers the server
//! with the endpoint it came from (`POST /wavelift/installer/register`); the server
//! becomes a source server only then. What it checks is what MGN's installer needs
//! from the command line Wavelift writes: the Region, the keys (a session token with
//! temporary ones), a silent install, the user-provided id naming a wave server. The
//! source server it makes carries the machine's own hostname and address, as MGN's
//! agent reports them, and the user-provided id.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{ApiError, Hints, MgnApi};

const PATH: &str = "/latest/linux/aws-replication-installer-init";

pub(super) fn routes() -> Router<Arc<MgnApi>> {
    Router::new()
        .route(PATH, get(script))
        .route(&format!("{PATH}.sha512"), get(digest))
        .route("/wavelift/installer/register", post(register))
}

/// The installer: parses the real one's options, refuses what MGN's would, registers
/// this server and prints what MGN's prints on success.
fn text(api: &MgnApi) -> String {
    let base = api
        .address
        .get()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    format!(
        r#"#!/bin/sh
# MGN's replication agent installer, as `wavelift sim serve-mgn` serves it.
set -eu
region= key= secret= token= silent= devices= id=
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region=$2; shift 2 ;;
    --aws-access-key-id) key=$2; shift 2 ;;
    --aws-secret-access-key) secret=$2; shift 2 ;;
    --aws-session-token) token=$2; shift 2 ;;
    --no-prompt) silent=yes; shift ;;
    --devices) devices=$2; shift 2 ;;
    --user-provided-id) id=$2; shift 2 ;;
    --endpoint|--s3-endpoint|--tags) shift 2 ;;
    --force-volumes|--no-replication|--dualstack) shift ;;
    *) echo "Error details: unrecognized argument $1"; echo "Installation failed."; exit 1 ;;
  esac
done
if [ -z "$silent" ] && {{ [ -z "$key" ] || [ -z "$secret" ]; }}; then
  echo "Error details: the keys would be asked for (no terminal here)"; echo "Installation failed."; exit 1
fi
echo "The installation of the AWS Replication Agent has started."
answer=$(curl -sS -w '\n%{{http_code}}' --data-urlencode "region=$region" \
  --data-urlencode "key=$key" --data-urlencode "secret=$secret" \
  --data-urlencode "token=$token" --data-urlencode "devices=$devices" \
  --data-urlencode "id=$id" --data-urlencode "hostname=$(hostname)" \
  --data-urlencode "ips=$(hostname -I 2>/dev/null || true)" \
  '{base}/wavelift/installer/register') || {{
  echo "Error details: cannot reach the service"; echo "Installation failed."; exit 1; }}
code=$(printf '%s\n' "$answer" | tail -n 1)
body=$(printf '%s\n' "$answer" | sed '$d')
if [ "$code" != 200 ]; then
  # It repeats its options, as a careless installer might: what runs it must redact.
  echo "Error details: $body (--aws-access-key-id $key --aws-secret-access-key $secret)"
  echo "Installation failed."; exit 1
fi
echo "Syncing the source server with the Application Migration Service Console... Finished."
echo "The following is the source server ID: $body."
echo "The AWS Replication Agent was successfully installed."
"#
    )
}

async fn script(State(api): State<Arc<MgnApi>>) -> String {
    text(&api)
}

async fn digest(State(api): State<Arc<MgnApi>>) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha512::digest(text(&api).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Deserialize)]
struct Registration {
    region: String,
    key: String,
    secret: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    devices: String,
    #[serde(default)]
    id: String,
    /// The machine's own name and addresses, as MGN's agent reports them.
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    ips: String,
}

async fn register(
    State(api): State<Arc<MgnApi>>,
    axum::Form(form): axum::Form<Registration>,
) -> Response {
    match registered(&api, form).await {
        Ok(id) => (StatusCode::OK, id).into_response(),
        Err(err) => (err.status, err.message).into_response(),
    }
}

async fn registered(api: &MgnApi, form: Registration) -> Result<String, ApiError> {
    if form.region != api.region {
        return Err(ApiError::validation(format!(
            "the installer was run for Region `{}`, this endpoint is {}",
            form.region, api.region
        )));
    }
    let temporary = form.key.starts_with("ASIA");
    if !(form.key.starts_with("AKIA") || temporary) || form.key.len() < 16 || form.secret.len() < 8
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid",
        ));
    }
    if temporary && form.token.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "temporary keys (ASIA...) need their session token",
        ));
    }
    // A source registered before (by this installer, or at start: then by its name).
    let known = MgnApi::lock(&api.sources)
        .iter()
        .find(|(_, s)| match &s.user_provided_id {
            Some(given) => *given == form.id,
            None => s.hints.hostname.as_deref() == Some(form.id.as_str()),
        })
        .map(|(mgn, _)| mgn.clone());
    if let Some(mgn) = known {
        // Installing again keeps the source server, as MGN does.
        return Ok(mgn);
    }
    let Some((spec, hints)) = MgnApi::lock(&api.pending).remove(&form.id) else {
        return Err(ApiError::validation(format!(
            "no wave server is named `{}` (the installer's --user-provided-id)",
            form.id
        )));
    };
    let wanted: Vec<&str> = form.devices.split(',').filter(|d| !d.is_empty()).collect();
    let listed: Vec<&str> = hints.disks.iter().map(|(d, _)| d.as_str()).collect();
    if let Some(unknown) = wanted.iter().find(|d| !listed.contains(d)) {
        MgnApi::lock(&api.pending).insert(form.id.clone(), (spec, hints));
        return Err(ApiError::validation(format!(
            "--devices names {unknown}, which the server does not have"
        )));
    }
    // MGN knows the machine as its agent reports it, not as the wave file names it: the
    // user-provided id is what ties the two.
    let reported = Hints {
        hostname: Some(form.hostname.trim().to_owned()).filter(|h| !h.is_empty()),
        fqdn: None,
        ip: form.ips.split_whitespace().next().map(str::to_owned),
        disks: hints.disks.clone(),
    };
    let added = api.add_source(&spec, reported, Some(form.id.clone())).await;
    if added.is_err() {
        // Installing again may succeed: the server waits for it as before.
        MgnApi::lock(&api.pending).insert(form.id, (spec, hints));
    }
    added
}
