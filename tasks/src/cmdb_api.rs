//! The CMDBs reached over HTTP: ServiceNow (Table API), NetBox (virtual machines or
//! devices, with a journal entry) and any HTTP API whose request is a template.
//!
//! Every request is retried: a 429 after its `Retry-After` (at most a minute), a 5xx or a
//! connection error after `retry_after`, doubled each time, `attempts` tries in all.
//! Lookups read every page of their answer, so a name that two records share is found
//! out, never guessed. A dry run reads and says what it would change, and writes
//! nothing. Credentials are read from their reference at each use and never logged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use waves::config::{CmdbApi, NetboxObject};
use waves::model::Server;

use crate::cmdb::{Cmdb, CmdbChange, CmdbError, Outcome};

/// The longest wait Wavelift honours from a `Retry-After`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Pages read at most for one lookup.
const MAX_PAGES: usize = 50;

/// An HTTP client for one CMDB, with its retry rules.
struct Client {
    http: reqwest::Client,
    api: CmdbApi,
    /// The folder relative `file:` references and `ca_file` start from.
    base_dir: std::path::PathBuf,
}

/// One answer: its status, its `Link` header (ServiceNow's pages) and its body.
struct Answer {
    status: StatusCode,
    link: Option<String>,
    body: String,
}

impl Client {
    fn new(api: &CmdbApi, base_dir: &Path) -> Result<Client, CmdbError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // A redirect would turn a PATCH into a GET that answers 200: it is an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wavelift/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &api.ca_file {
            let path = if ca.is_absolute() {
                ca.clone()
            } else {
                base_dir.join(ca)
            };
            let pem = std::fs::read(&path).map_err(|err| {
                CmdbError(format!(
                    "cannot read the CMDB's ca_file {}: {err}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                CmdbError(format!(
                    "{} holds no PEM certificate: {err}",
                    path.display()
                ))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|err| CmdbError(format!("cannot make the CMDB's HTTP client: {err}")))?;
        Ok(Client {
            http,
            api: api.clone(),
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// The secret of the credential, read now.
    fn secret(&self) -> Result<Option<String>, CmdbError> {
        let Some(reference) = &self.api.credential else {
            return Ok(None);
        };
        let reference = match reference {
            waves::model::CredentialRef::File(path) if Path::new(path).is_relative() => {
                waves::model::CredentialRef::File(self.base_dir.join(path).display().to_string())
            }
            other => other.clone(),
        };
        reference.read().map(Some).map_err(CmdbError)
    }

    /// Sends a request with the retry rules. A request that is not idempotent (a POST)
    /// is sent again only where the CMDB cannot have done it: a 429, a 503, or no
    /// connection at all.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Option<&str>,
    ) -> Result<Answer, CmdbError> {
        let idempotent = method != Method::POST;
        let mut wait = Duration::from_secs(self.api.retry_after.approx_seconds().max(1));
        let attempts = self.api.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header("Accept", "application/json");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_owned());
            }
            let pause = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after);
                    let link = response
                        .headers()
                        .get("Link")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let text = response.text().await.unwrap_or_default();
                    let again = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                        || (idempotent && status.is_server_error());
                    if !again {
                        return Ok(Answer {
                            status,
                            link,
                            body: text,
                        });
                    }
                    last = format!("{method} {url} answered {status}: {}", message_of(&text));
                    retry_after.unwrap_or(wait).min(MAX_WAIT)
                }
                Err(err) if err.is_builder() => {
                    return Err(CmdbError(format!(
                        "cannot make the request {method} {url}: {}: check the URL and the headers",
                        without_url(err)
                    )));
                }
                Err(err) if !idempotent && !err.is_connect() => {
                    return Err(CmdbError(format!(
                        "{method} {url}: {}; not sent again, as the CMDB may have done it: check it, then retry the task",
                        without_url(err)
                    )));
                }
                Err(err) => {
                    last = format!("{method} {url}: {}", without_url(err));
                    wait
                }
            };
            if attempt < attempts {
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
        Err(CmdbError(format!(
            "{last} ({attempts} tries): check the CMDB, or raise cmdb.attempts or cmdb.retry_after"
        )))
    }

    /// A JSON answer of 2xx, or the CMDB's own error message.
    async fn json(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Option<&str>,
    ) -> Result<(Value, Option<String>), CmdbError> {
        let answer = self.send(method.clone(), url, headers, body).await?;
        self.read(&method, url, answer)
    }

    /// A record read by its id, or `None` when the CMDB has no such record (404).
    async fn record(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<Option<Value>, CmdbError> {
        let answer = self.send(Method::GET, url, headers, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(self.read(&Method::GET, url, answer)?.0))
    }

    fn read(
        &self,
        method: &Method,
        url: &str,
        answer: Answer,
    ) -> Result<(Value, Option<String>), CmdbError> {
        self.refused(method, url, &answer)?;
        let value = if answer.body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&answer.body).map_err(|err| {
                CmdbError(format!("{method} {url}: the answer is not JSON: {err}"))
            })?
        };
        Ok((value, answer.link))
    }
}

impl Client {
    /// Every record of a lookup: the array under `key` of each page, from `first` to the
    /// last, the next page named by a `Link` header (ServiceNow) or a `next` field
    /// (NetBox). A next page must be on the CMDB itself; past [`MAX_PAGES`] the lookup
    /// fails (with `remedy`) rather than guess from what it read.
    async fn all_pages(
        &self,
        first: String,
        auth: &[(String, String)],
        key: &str,
        remedy: &str,
    ) -> Result<Vec<Value>, CmdbError> {
        let mut url = Some(first.clone());
        let mut found = Vec::new();
        let mut pages = 0;
        while let Some(page) = url.take() {
            pages += 1;
            let (value, link) = self.json(Method::GET, &page, auth, None).await?;
            found.extend(
                value
                    .get(key)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            let next = next_link(link.as_deref())
                .or_else(|| value.get("next").and_then(Value::as_str).map(str::to_owned));
            if let Some(next) = next {
                same_origin(&self.api.url, &next)?;
                if pages >= MAX_PAGES {
                    return Err(CmdbError(format!(
                        "more than {MAX_PAGES} pages of results at {first}: {remedy}"
                    )));
                }
                url = Some(next);
            }
        }
        Ok(found)
    }

    /// An answer that is not a success, said for a user: a refused credential, missing
    /// permissions, a redirect, or the CMDB's own message.
    fn refused(&self, method: &Method, url: &str, answer: &Answer) -> Result<(), CmdbError> {
        if answer.status == StatusCode::FORBIDDEN {
            return Err(CmdbError(format!(
                "{method} {url}: 403 Forbidden: the CMDB does not let this account do it (its roles or ACLs): {}",
                message_of(&answer.body)
            )));
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            let reference = self
                .api
                .credential
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "none given".to_owned());
            return Err(CmdbError(format!(
                "{method} {url}: {}: the CMDB refused the credential ({reference}): {}",
                answer.status,
                message_of(&answer.body)
            )));
        }
        if answer.status.is_redirection() {
            return Err(CmdbError(format!(
                "{method} {url}: {} to elsewhere: give the CMDB's own URL (https, the final host)",
                answer.status
            )));
        }
        if !answer.status.is_success() {
            return Err(CmdbError(format!(
                "{method} {url}: {}: {}",
                answer.status,
                message_of(&answer.body)
            )));
        }
        Ok(())
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// The readable part of an error body: ServiceNow's `error.message` and `detail`,
/// NetBox's `detail` or its field errors, else the text itself (shortened).
fn message_of(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        if let Some(error) = value.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            let detail = error.get("detail").and_then(Value::as_str).unwrap_or("");
            return [message, detail]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
        }
        if let Some(detail) = value.get("detail").and_then(Value::as_str) {
            return detail.to_owned();
        }
        if let Some(message) = value.get("message").and_then(Value::as_str) {
            return message.to_owned();
        }
        if let Some(fields) = value.as_object() {
            return fields
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = body.trim();
    if text.chars().count() > 200 {
        format!("{}...", text.chars().take(200).collect::<String>())
    } else {
        text.to_owned()
    }
}

/// A transport error without reqwest's copy of the URL (said once already).
fn without_url(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    message
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The next page of a `Link` header (`<URL>; rel="next"`, URLs holding commas).
fn next_link(link: Option<&str>) -> Option<String> {
    let mut rest = link?;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let url = &rest[open + 1..close];
        let params = &rest[close + 1..];
        let params = &params[..params.find('<').unwrap_or(params.len())];
        if params.contains("rel=\"next\"") {
            return Some(url.to_owned());
        }
        rest = &rest[close + 1..];
    }
    None
}

/// A next page must be on the CMDB itself (scheme, host and port of its URL): the
/// credential goes with it.
fn same_origin(base: &str, next: &str) -> Result<(), CmdbError> {
    let origin = |url: &str| -> Option<String> {
        let parsed = reqwest::Url::parse(url).ok()?;
        Some(format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str()?,
            parsed.port_or_known_default()?
        ))
    };
    if origin(base).is_some() && origin(base) == origin(next) {
        Ok(())
    } else {
        Err(CmdbError(format!(
            "the CMDB's next page is elsewhere ({next}, not {base}): the credential is not sent there; check the CMDB's base URL setting (a proxy that rewrites https to http?)"
        )))
    }
}

fn text_of(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The note a retired record carries.
fn migrated_note(target: Option<&str>) -> String {
    match target {
        Some(target) => format!("Retired by Wavelift: migrated to {target}"),
        None => "Retired by Wavelift".to_owned(),
    }
}

// ---- ServiceNow

/// ServiceNow's Table API.
pub struct ServiceNow {
    client: Client,
    table: String,
    retired_status: String,
    target_field: String,
}

impl ServiceNow {
    pub fn new(
        api: &CmdbApi,
        table: &str,
        retired_status: &str,
        target_field: &str,
        base_dir: &Path,
    ) -> Result<ServiceNow, CmdbError> {
        Ok(ServiceNow {
            client: Client::new(api, base_dir)?,
            table: table.to_owned(),
            retired_status: retired_status.to_owned(),
            target_field: target_field.to_owned(),
        })
    }

    fn auth(&self) -> Result<Vec<(String, String)>, CmdbError> {
        let Some(secret) = self.client.secret()? else {
            return Ok(Vec::new());
        };
        let value = match &self.client.api.user {
            Some(user) => format!("Basic {}", base64(&format!("{user}:{secret}"))),
            None => format!("Bearer {secret}"),
        };
        Ok(vec![("Authorization".to_owned(), value)])
    }

    fn table_url(&self) -> String {
        format!("{}/api/now/table/{}", self.client.api.url, self.table)
    }

    fn fields(&self) -> String {
        encode(&format!("sys_id,name,install_status,{}", self.target_field))
    }

    /// The CI: by sys_id when the server's cmdb_id is one, else by name (the cmdb_id or
    /// the server's name), every page read.
    async fn find(&self, server: &Server) -> Result<Value, CmdbError> {
        let auth = self.auth()?;
        if let Some(id) = server.cmdb_id.as_deref().filter(|id| is_sys_id(id)) {
            let url = format!("{}/{id}?sysparm_fields={}", self.table_url(), self.fields());
            let Some(value) = self.client.record(&url, &auth).await? else {
                return Err(CmdbError(format!(
                    "no CI with sys_id {id} in the ServiceNow table {}",
                    self.table
                )));
            };
            return Ok(value.get("result").cloned().unwrap_or(Value::Null));
        }
        let name = server
            .cmdb_id
            .clone()
            .unwrap_or_else(|| server.name.value.clone());
        if name.contains('^') {
            return Err(CmdbError(format!(
                "the CI name `{name}` holds `^`, which ServiceNow's queries cannot match: give the server's cmdb_id as the CI's sys_id"
            )));
        }
        let first = format!(
            "{}?sysparm_query={}&sysparm_fields={}&sysparm_limit=100",
            self.table_url(),
            encode(&format!("name={name}")),
            self.fields()
        );
        let mut found = self
            .client
            .all_pages(
                first,
                &auth,
                "result",
                "give the server's cmdb_id as its sys_id",
            )
            .await?;
        match found.len() {
            0 => Err(CmdbError(format!(
                "no CI named `{name}` in the ServiceNow table {}: give the server's cmdb_id (the CI's sys_id or its name)",
                self.table
            ))),
            1 => Ok(found.remove(0)),
            n => Err(CmdbError(format!(
                "{n} CIs are named `{name}` in the ServiceNow table {} (sys_id {}): give the server's cmdb_id as the right one's sys_id",
                self.table,
                found
                    .iter()
                    .map(|ci| text_of(ci, "sys_id"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

fn is_sys_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[async_trait]
impl Cmdb for ServiceNow {
    fn kind(&self) -> &'static str {
        "servicenow"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        let ci = self.find(server).await?;
        let sys_id = text_of(&ci, "sys_id");
        let record = format!("{} ({sys_id})", text_of(&ci, "name"));
        let status = text_of(&ci, "install_status");
        let note = migrated_note(target);
        // Retired by an earlier run (one that died before it could record it, say).
        let recorded = text_of(&ci, &self.target_field).contains("Retired by Wavelift");
        if status == self.retired_status && recorded {
            return Ok(CmdbChange {
                record,
                status: format!("install_status {status} (retired already)"),
                target: target.map(str::to_owned),
                outcome: Outcome::AlreadyDone,
            });
        }
        if self.client.api.dry_run {
            return Ok(CmdbChange {
                record,
                status: format!(
                    "dry run: would set install_status {status} -> {} and {} to \"{note}\"",
                    self.retired_status, self.target_field
                ),
                target: target.map(str::to_owned),
                outcome: Outcome::DryRun,
            });
        }
        // The note joins what the field held (free text kept).
        let earlier = text_of(&ci, &self.target_field);
        let recorded_note = if earlier.trim().is_empty() {
            note.clone()
        } else {
            format!("{earlier}\n{note}")
        };
        let body = json!({
            "install_status": self.retired_status,
            self.target_field.as_str(): recorded_note,
        })
        .to_string();
        let url = format!("{}/{sys_id}", self.table_url());
        let auth = self.auth()?;
        let (value, _) = self
            .client
            .json(Method::PATCH, &url, &auth, Some(&body))
            .await?;
        // ServiceNow skips a field the account may not write, or that does not exist, and
        // still answers 200: what it answers is checked.
        let result = value.get("result").cloned().unwrap_or(Value::Null);
        let now = text_of(&result, "install_status");
        if now != self.retired_status {
            return Err(CmdbError(format!(
                "ServiceNow kept install_status {now} for {record} (asked {}): the account may not write it, or a business rule refused",
                self.retired_status
            )));
        }
        if !text_of(&result, &self.target_field).contains(&note) {
            return Err(CmdbError(format!(
                "ServiceNow did not record the target in `{}` of {record}: the field does not exist in {} or the account may not write it (cmdb.target_field)",
                self.target_field, self.table
            )));
        }
        Ok(CmdbChange {
            record,
            status: format!("install_status {status} -> {now}"),
            target: target.map(str::to_owned),
            outcome: Outcome::Written,
        })
    }
}

// ---- NetBox

/// NetBox's REST API.
pub struct NetBox {
    client: Client,
    object: NetboxObject,
    status: String,
}

impl NetBox {
    pub fn new(
        api: &CmdbApi,
        object: NetboxObject,
        status: &str,
        base_dir: &Path,
    ) -> Result<NetBox, CmdbError> {
        Ok(NetBox {
            client: Client::new(api, base_dir)?,
            object,
            status: status.to_owned(),
        })
    }

    fn auth(&self) -> Result<Vec<(String, String)>, CmdbError> {
        let secret = self.client.secret()?.ok_or_else(|| {
            CmdbError("NetBox needs an API token: set the cmdb's credential".to_owned())
        })?;
        // NetBox 4.5's v2 tokens (`nbt_KEY.TOKEN`) are bearer tokens; v1 tokens are not.
        let value = if secret.starts_with("nbt_") {
            format!("Bearer {secret}")
        } else {
            format!("Token {secret}")
        };
        Ok(vec![("Authorization".to_owned(), value)])
    }

    fn endpoint(&self) -> String {
        let path = match self.object {
            NetboxObject::VirtualMachine => "virtualization/virtual-machines",
            NetboxObject::Device => "dcim/devices",
        };
        format!("{}/api/{path}/", self.client.api.url)
    }

    fn content_type(&self) -> &'static str {
        match self.object {
            NetboxObject::VirtualMachine => "virtualization.virtualmachine",
            NetboxObject::Device => "dcim.device",
        }
    }

    /// Every result of a list, following `next` page by page.
    async fn list(&self, first: String) -> Result<Vec<Value>, CmdbError> {
        let auth = self.auth()?;
        self.client
            .all_pages(
                first,
                &auth,
                "results",
                "give the server's cmdb_id as its NetBox id",
            )
            .await
    }

    async fn find(&self, server: &Server) -> Result<Value, CmdbError> {
        let what = self.object.as_str();
        if let Some(id) = server
            .cmdb_id
            .as_deref()
            .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
        {
            let url = format!("{}{id}/", self.endpoint());
            let auth = self.auth()?;
            return self
                .client
                .record(&url, &auth)
                .await?
                .ok_or_else(|| CmdbError(format!("no NetBox {what} with id {id}")));
        }
        let name = server
            .cmdb_id
            .clone()
            .unwrap_or_else(|| server.name.value.clone());
        let mut found = self
            .list(format!(
                "{}?name={}&limit=50",
                self.endpoint(),
                encode(&name)
            ))
            .await?;
        match found.len() {
            0 => Err(CmdbError(format!(
                "no NetBox {what} named `{name}`: give the server's cmdb_id (its NetBox id or name), or set cmdb.object"
            ))),
            1 => Ok(found.remove(0)),
            n => Err(CmdbError(format!(
                "{n} NetBox {what}s are named `{name}` (ids {}): give the server's cmdb_id as the right one's id",
                found
                    .iter()
                    .map(|o| text_of(o, "id"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Whether the object has Wavelift's journal entry already.
    async fn journaled(&self, id: &str) -> Result<bool, CmdbError> {
        let entries = self
            .list(format!(
                "{}/api/extras/journal-entries/?assigned_object_type={}&assigned_object_id={id}&limit=50",
                self.client.api.url,
                self.content_type()
            ))
            .await?;
        Ok(entries
            .iter()
            .any(|e| text_of(e, "comments").starts_with("Retired by Wavelift")))
    }
}

#[async_trait]
impl Cmdb for NetBox {
    fn kind(&self) -> &'static str {
        "netbox"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        let object = self.find(server).await?;
        let id = text_of(&object, "id");
        let record = format!("{} {} (id {id})", self.object, text_of(&object, "name"));
        let status = object
            .get("status")
            .map(|s| match s {
                Value::Object(_) => text_of(s, "value"),
                other => other.as_str().unwrap_or("").to_owned(),
            })
            .unwrap_or_default();
        let note = migrated_note(target);
        let retired = status == self.status;
        let journaled = self.journaled(&id).await?;
        if retired && journaled {
            return Ok(CmdbChange {
                record,
                status: format!("{status} (retired already)"),
                target: target.map(str::to_owned),
                outcome: Outcome::AlreadyDone,
            });
        }
        if self.client.api.dry_run {
            let mut would = Vec::new();
            if !retired {
                would.push(format!("set status {status} -> {}", self.status));
            }
            if !journaled {
                would.push(format!("add the journal entry \"{note}\""));
            }
            return Ok(CmdbChange {
                record,
                status: format!("dry run: would {}", would.join(" and ")),
                target: target.map(str::to_owned),
                outcome: Outcome::DryRun,
            });
        }
        let auth = self.auth()?;
        if !retired {
            let body = json!({ "status": self.status }).to_string();
            self.client
                .json(
                    Method::PATCH,
                    &format!("{}{id}/", self.endpoint()),
                    &auth,
                    Some(&body),
                )
                .await?;
        }
        if !journaled {
            let id_number: Value = id
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or(Value::from(id.clone()));
            let body = json!({
                "assigned_object_type": self.content_type(),
                "assigned_object_id": id_number,
                "kind": "info",
                "comments": note,
            })
            .to_string();
            self.client
                .json(
                    Method::POST,
                    &format!("{}/api/extras/journal-entries/", self.client.api.url),
                    &auth,
                    Some(&body),
                )
                .await?;
        }
        Ok(CmdbChange {
            record,
            status: format!("{status} -> {}", self.status),
            target: target.map(str::to_owned),
            outcome: Outcome::Written,
        })
    }
}

// ---- any HTTP API

/// A request made of templates.
pub struct HttpCmdb {
    client: Client,
    method: Method,
    headers: BTreeMap<String, String>,
    body: Option<String>,
}

impl HttpCmdb {
    pub fn new(
        api: &CmdbApi,
        method: &str,
        headers: &BTreeMap<String, String>,
        body: Option<&str>,
        base_dir: &Path,
    ) -> Result<HttpCmdb, CmdbError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| CmdbError(format!("`{method}` is not an HTTP method")))?;
        Ok(HttpCmdb {
            client: Client::new(api, base_dir)?,
            method,
            headers: headers.clone(),
            body: body.map(str::to_owned),
        })
    }
}

/// Renders `template` with the facts; `json` escapes them for a JSON body.
fn render(template: &str, facts: &Value, json: bool) -> Result<String, CmdbError> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    if json {
        hb.register_escape_fn(|text| {
            let quoted = serde_json::to_string(text).unwrap_or_default();
            quoted[1..quoted.len().saturating_sub(1)].to_owned()
        });
    } else {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb.render_template(template, facts)
        .map_err(|err| CmdbError(format!("the CMDB request's template: {err}")))
}

#[async_trait]
impl Cmdb for HttpCmdb {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        let secret = self.client.secret()?.unwrap_or_default();
        let record = server
            .cmdb_id
            .clone()
            .unwrap_or_else(|| server.name.value.clone());
        let mut facts = json!({
            "name": server.name.value,
            "cmdb_id": record,
            "fqdn": server.fqdn.as_ref().map(|f| f.value.clone()).unwrap_or_default(),
            "ip": server.ip.as_ref().map(|i| i.value.to_string()).unwrap_or_default(),
            "target": target.unwrap_or(""),
            "credential": "",
        });
        // The URL never carries the secret (refused when the file is read); its facts are
        // percent-encoded, so a fact cannot change the request's path or query.
        let mut url_facts = facts.clone();
        if let Some(map) = url_facts.as_object_mut() {
            for value in map.values_mut() {
                if let Some(text) = value.as_str() {
                    *value = Value::from(encode(text));
                }
            }
        }
        let url = render(&self.client.api.url, &url_facts, false)?;
        facts["credential"] = Value::from(secret.clone());
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| Ok((name.clone(), render(value, &facts, false)?)))
            .collect::<Result<Vec<_>, CmdbError>>()?;
        let body = self
            .body
            .as_deref()
            .map(|b| render(b, &facts, true))
            .transpose()?;
        let redact = |text: &str| {
            if secret.is_empty() {
                text.to_owned()
            } else {
                text.replace(&secret, "[redacted]")
            }
        };
        if self.client.api.dry_run {
            return Ok(CmdbChange {
                record,
                status: format!(
                    "dry run: would send {} {url}{}",
                    self.method,
                    body.as_deref()
                        .map(|b| format!(" with {}", redact(b)))
                        .unwrap_or_default()
                ),
                target: target.map(str::to_owned),
                outcome: Outcome::DryRun,
            });
        }
        let answer = self
            .client
            .send(self.method.clone(), &url, &headers, body.as_deref())
            .await
            .map_err(|err| CmdbError(redact(&err.0)))?;
        self.client
            .refused(&self.method, &url, &answer)
            .map_err(|err| CmdbError(redact(&err.0)))?;
        Ok(CmdbChange {
            record,
            status: format!("{} {url}: {}", self.method, answer.status),
            target: target.map(str::to_owned),
            outcome: Outcome::Written,
        })
    }
}

/// Standard base64, for basic authentication.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authentication_is_standard_base64() {
        assert_eq!(base64("admin:secret"), "YWRtaW46c2VjcmV0");
        assert_eq!(base64("a"), "YQ==");
        assert_eq!(base64("ab"), "YWI=");
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let link = "<https://x/api/now/table/t?sysparm_offset=0>;rel=\"first\",<https://x/api/now/table/t?sysparm_offset=1>;rel=\"next\"";
        assert_eq!(
            next_link(Some(link)).as_deref(),
            Some("https://x/api/now/table/t?sysparm_offset=1")
        );
        assert_eq!(next_link(Some("<https://x>;rel=\"last\"")), None);
        // ServiceNow leaves the commas of sysparm_fields raw in its links.
        let raw = "<https://x/api/now/table/t?sysparm_fields=sys_id,name&sysparm_offset=0>;rel=\"first\",<https://x/api/now/table/t?sysparm_fields=sys_id,name&sysparm_offset=100>;rel=\"next\"";
        assert_eq!(
            next_link(Some(raw)).as_deref(),
            Some("https://x/api/now/table/t?sysparm_fields=sys_id,name&sysparm_offset=100")
        );
    }

    #[test]
    fn a_next_page_elsewhere_is_refused() {
        assert!(
            same_origin(
                "https://nb.example.com",
                "https://nb.example.com:443/api/x?offset=1"
            )
            .is_ok()
        );
        let refused = same_origin("https://nb.example.com", "http://nb.example.com/api/x");
        assert!(refused.is_err_and(|e| e.0.contains("the credential is not sent there")));
        assert!(same_origin("https://nb.example.com", "https://evil.example.net/api/x").is_err());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn error_bodies_are_read_as_their_api_writes_them() {
        assert_eq!(
            message_of(
                r#"{"error":{"message":"No Record found","detail":"Record doesn't exist"},"status":"failure"}"#
            ),
            "No Record found: Record doesn't exist"
        );
        assert_eq!(
            message_of(r#"{"detail":"Invalid token."}"#),
            "Invalid token."
        );
        assert_eq!(
            message_of(r#"{"status":["\"gone\" is not a valid choice."]}"#),
            r#"status: ["\"gone\" is not a valid choice."]"#
        );
    }

    #[test]
    fn a_json_body_escapes_the_facts() {
        let body =
            render(r#"{"name":"{{name}}"}"#, &json!({"name": "a\"b"}), true).expect("renders");
        assert_eq!(body, r#"{"name":"a\"b"}"#);
    }
}
