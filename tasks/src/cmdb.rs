//! The configuration database: after cutover and hypercare, the source server is marked
//! retired and its target recorded. The `file` kind is a YAML inventory; ServiceNow,
//! NetBox and any HTTP API are in [`crate::cmdb_api`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waves::model::Server;
use waves::yaml::{self, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CmdbError(pub String);

/// What the CMDB now says of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdbChange {
    pub record: String,
    pub status: String,
    pub target: Option<String>,
    pub outcome: Outcome,
}

/// What a retire did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The record was written.
    Written,
    /// Retired before this call (or nothing to write to): nothing was written.
    AlreadyDone,
    /// A dry run: `status` says what would change; nothing was written.
    DryRun,
}

#[async_trait]
pub trait Cmdb: Send + Sync {
    /// `file`, `rehearsal`, `none`.
    fn kind(&self) -> &'static str;

    /// Marks the server retired and records its target. Idempotent.
    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError>;
}

/// A CMDB that could not be set up: every retire says why.
#[derive(Debug, Clone)]
pub struct BrokenCmdb(pub String);

#[async_trait]
impl Cmdb for BrokenCmdb {
    fn kind(&self) -> &'static str {
        "broken"
    }

    async fn retire(
        &self,
        _server: &Server,
        _target: Option<&str>,
    ) -> Result<CmdbChange, CmdbError> {
        Err(CmdbError(self.0.clone()))
    }
}

/// No CMDB configured: retiring is reported, nothing is written.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCmdb;

#[async_trait]
impl Cmdb for NoCmdb {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        Ok(CmdbChange {
            record: server
                .cmdb_id
                .clone()
                .unwrap_or_else(|| server.name.value.clone()),
            status: "not recorded (no CMDB configured)".to_owned(),
            target: target.map(str::to_owned),
            outcome: Outcome::AlreadyDone,
        })
    }
}

/// A YAML inventory: a list of records with `id`, `name`, `status` and `target`. A
/// server's record is found by its `cmdb_id`, else by its name.
#[derive(Debug, Clone)]
pub struct FileCmdb {
    path: PathBuf,
    /// One writer at a time: tasks of many servers retire concurrently.
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub target: Option<String>,
}

impl FileCmdb {
    pub fn new(path: &Path) -> FileCmdb {
        FileCmdb {
            path: path.to_path_buf(),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn read(&self) -> Result<Vec<Record>, CmdbError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(CmdbError(format!(
                    "cannot read the CMDB file {}: {err}",
                    self.path.display()
                )));
            }
        };
        parse_records(&self.path, &text)
    }

    fn write(&self, records: &[Record]) -> Result<(), CmdbError> {
        // JSON is YAML: the inventory stays readable by both, and is written atomically.
        let text = serde_json::to_string_pretty(&records)
            .map_err(|err| CmdbError(format!("cannot write the CMDB: {err}")))?;
        let temp = self.path.with_extension("yaml.tmp");
        let io = |err: std::io::Error| {
            CmdbError(format!(
                "cannot write the CMDB file {}: {err}",
                self.path.display()
            ))
        };
        if let Some(parent) = self.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&temp, text + "\n").map_err(io)?;
        std::fs::rename(&temp, &self.path).map_err(io)?;
        Ok(())
    }
}

fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, CmdbError> {
    let name: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
    let mut diags = waves::Diagnostics::new();
    let documents = yaml::parse_documents(&name, text, &mut diags).ok_or_else(|| {
        let first = diags.clone().into_sorted().into_iter().next();
        CmdbError(first.map_or_else(
            || format!("{} is not YAML", path.display()),
            |d| d.to_string(),
        ))
    })?;
    let Some(document) = documents.first() else {
        return Ok(Vec::new());
    };
    let items = match &document.value {
        Value::Seq(items) => items,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(CmdbError(format!(
                "{}:{}:{}: the CMDB file must be a list of records",
                name, document.location.line, document.location.col
            )));
        }
    };
    let json = serde_json::Value::Array(items.iter().map(waves::decode::to_json).collect());
    serde_json::from_value(json).map_err(|err| {
        CmdbError(format!(
            "{}: every record needs `id`, `name` and `status` as text: {err}",
            path.display()
        ))
    })
}

pub const RETIRED: &str = "retired";

#[async_trait]
impl Cmdb for FileCmdb {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        let _guard = self.lock.lock().await;
        let mut records = self.read()?;
        let key = server.cmdb_id.as_deref();
        let position = records.iter().position(|r| match key {
            Some(id) => r.id == id,
            None => r.name == server.name.value,
        });
        let index = match position {
            Some(index) => index,
            None => {
                records.push(Record {
                    id: key.unwrap_or(&server.name.value).to_owned(),
                    name: server.name.value.clone(),
                    status: "in service".to_owned(),
                    target: None,
                });
                records.len() - 1
            }
        };
        let record = &mut records[index];
        if record.status == RETIRED && record.target.as_deref() == target {
            return Ok(CmdbChange {
                record: record.id.clone(),
                status: record.status.clone(),
                target: record.target.clone(),
                outcome: Outcome::AlreadyDone,
            });
        }
        record.status = RETIRED.to_owned();
        record.target = target.map(str::to_owned);
        let change = CmdbChange {
            record: record.id.clone(),
            status: record.status.clone(),
            target: record.target.clone(),
            outcome: Outcome::Written,
        };
        self.write(&records)?;
        Ok(change)
    }
}

/// Rehearsals change no CMDB: the change is reported as it would be made.
#[derive(Debug, Default, Clone, Copy)]
pub struct RehearsalCmdb;

#[async_trait]
impl Cmdb for RehearsalCmdb {
    fn kind(&self) -> &'static str {
        "rehearsal"
    }

    async fn retire(&self, server: &Server, target: Option<&str>) -> Result<CmdbChange, CmdbError> {
        Ok(CmdbChange {
            record: server
                .cmdb_id
                .clone()
                .unwrap_or_else(|| server.name.value.clone()),
            status: "retired (rehearsal: not written)".to_owned(),
            target: target.map(str::to_owned),
            outcome: Outcome::Written,
        })
    }
}
