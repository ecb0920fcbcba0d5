//! Durable mode: the state file and its journal.
//!
//! - `STATE` (the path given to `open`) is a snapshot: the whole [`State`] as JSON,
//!   with the sequence number of the last journal record it includes. It is replaced
//!   atomically: written to `STATE.tmp` in the same folder, fsynced, renamed over,
//!   then the folder is fsynced.
//! - `STATE.journal` holds one JSON line per call that changed the model since the
//!   snapshot: `{"seq":N,"at":NANOS,"call":{...}}`. An acting call returns only after
//!   its line is written and fdatasynced, so no action is lost, not even to a power
//!   failure. A read that moved the model past an event writes an `advance` line
//!   without waiting for the disk (it carries no action, only the model's time).
//!
//! The model is deterministic, so replaying the journal over the snapshot rebuilds
//! the state exactly. A snapshot is taken when the journal holds 1024 records plus a
//! quarter of the state's items (servers, jobs, targets, actions): even while every
//! call adds items, snapshots cost a constant per call on average, and the replay on
//! open stays in proportion to the state. A last line cut short by a crash (no newline)
//! was never acknowledged and is dropped; any other damage is an error naming the file.
//! One process at a time may open a state file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::config::Resolved;
use super::model::Model;
use super::ops::Call;
use super::state::State;
use crate::{EngineError, EngineResult, ErrorKind};

const FORMAT: &str = "wavelift-sim-state";
const VERSION: u32 = 1;
const SNAPSHOT_SLACK: u64 = 1024;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: &'a str,
    version: u32,
    journal_seq: u64,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: String,
    version: u32,
    journal_seq: u64,
    state: State,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    at: i64,
    call: &'a Call,
}

#[derive(Deserialize)]
struct RecordIn {
    seq: u64,
    at: i64,
    call: Call,
}

#[derive(Debug)]
pub(crate) struct Store {
    state_path: PathBuf,
    journal_path: PathBuf,
    journal: File,
    last_seq: u64,
    since_snapshot: u64,
}

impl Store {
    /// Reads the state file and replays its journal; a missing state file starts an
    /// empty model at `now`. The configuration applies from the model's time on.
    pub fn open(path: &Path, config: Resolved, now: Timestamp) -> EngineResult<(Store, Model)> {
        let journal_path = with_suffix(path, ".journal");
        let snapshot = read_snapshot(path)?;
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(|e| unavailable(&journal_path, "open", &e))?;
        let Some(snapshot) = snapshot else {
            let model = Model::empty(config, now);
            let mut store = Store {
                state_path: path.to_owned(),
                journal_path,
                journal,
                last_seq: 0,
                since_snapshot: 0,
            };
            // A journal without its state file belongs to a state that is gone.
            store.snapshot(&model).map_err(|e| write_failed(path, &e))?;
            return Ok((store, model));
        };
        let mut model = Model::from_state(snapshot.state).map_err(|e| damaged(path, &e))?;
        let mut last_seq = snapshot.journal_seq;
        let replayed = replay(&mut journal, &journal_path, &mut model, &mut last_seq)?;
        let mut store = Store {
            state_path: path.to_owned(),
            journal_path,
            journal,
            last_seq,
            since_snapshot: replayed,
        };
        if model.s.config != config {
            model.reconfigure(config);
            store.snapshot(&model).map_err(|e| write_failed(path, &e))?;
        } else if store.since_snapshot >= snapshot_threshold(&model) {
            store.snapshot(&model).map_err(|e| write_failed(path, &e))?;
        }
        Ok((store, model))
    }

    /// Appends one record; `sync` waits for the disk. Snapshots when it is time.
    pub fn append(
        &mut self,
        model: &Model,
        at: i64,
        call: &Call,
        sync: bool,
    ) -> Result<(), String> {
        let seq = self.last_seq.saturating_add(1);
        let mut line = serde_json::to_vec(&RecordOut { seq, at, call })
            .map_err(|e| format!("cannot encode a journal record: {e}"))?;
        line.push(b'\n');
        let journal = self.journal_path.display();
        self.journal
            .write_all(&line)
            .map_err(|e| format!("cannot write {journal}: {e}"))?;
        if sync {
            self.journal
                .sync_data()
                .map_err(|e| format!("cannot sync {journal}: {e}"))?;
        }
        self.last_seq = seq;
        self.since_snapshot += 1;
        if self.since_snapshot >= snapshot_threshold(model) {
            self.snapshot(model)?;
        }
        Ok(())
    }

    /// Replaces the state file with the model's state, then empties the journal.
    fn snapshot(&mut self, model: &Model) -> Result<(), String> {
        let bytes = serde_json::to_vec(&SnapshotOut {
            format: FORMAT,
            version: VERSION,
            journal_seq: self.last_seq,
            state: &model.s,
        })
        .map_err(|e| format!("cannot encode the state: {e}"))?;
        let temporary = with_suffix(&self.state_path, ".tmp");
        let shown = temporary.display();
        let mut file =
            File::create(&temporary).map_err(|e| format!("cannot create {shown}: {e}"))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {shown}: {e}"))?;
        drop(file);
        fs::rename(&temporary, &self.state_path).map_err(|e| {
            format!(
                "cannot rename {shown} to {}: {e}",
                self.state_path.display()
            )
        })?;
        sync_folder(&self.state_path)?;
        let journal = self.journal_path.display();
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
            .map_err(|e| format!("cannot empty {journal}: {e}"))?;
        self.since_snapshot = 0;
        Ok(())
    }
}

fn snapshot_threshold(model: &Model) -> u64 {
    let items =
        model.s.servers.len() + model.s.jobs.len() + model.s.targets.len() + model.s.actions.len();
    SNAPSHOT_SLACK.saturating_add(u64::try_from(items / 4).unwrap_or(u64::MAX))
}

fn read_snapshot(path: &Path) -> EngineResult<Option<SnapshotIn>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == IoErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unavailable(path, "read", &e)),
    };
    let snapshot: SnapshotIn =
        serde_json::from_slice(&bytes).map_err(|e| damaged(path, &e.to_string()))?;
    if snapshot.format != FORMAT {
        return Err(damaged(
            path,
            &format!("its format is {:?}, not {FORMAT:?}", snapshot.format),
        ));
    }
    if snapshot.version != VERSION {
        return Err(damaged(
            path,
            &format!(
                "it is version {}, this engine reads version {VERSION}",
                snapshot.version
            ),
        ));
    }
    Ok(Some(snapshot))
}

/// Replays the records after `last_seq`; returns how many.
fn replay(
    journal: &mut File,
    path: &Path,
    model: &mut Model,
    last_seq: &mut u64,
) -> EngineResult<u64> {
    let mut bytes = Vec::new();
    journal
        .read_to_end(&mut bytes)
        .map_err(|e| unavailable(path, "read", &e))?;
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |last| last + 1);
    if complete < bytes.len() {
        // The tail of a write a crash cut short: it was never acknowledged.
        journal
            .set_len(complete as u64)
            .and_then(|()| journal.sync_all())
            .map_err(|e| unavailable(path, "truncate", &e))?;
    }
    let mut replayed = 0;
    for (number, line) in (1u64..).zip(bytes[..complete].split(|&b| b == b'\n')) {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: RecordIn = serde_json::from_slice(line)
            .map_err(|e| damaged(path, &format!("line {number}: {e}")))?;
        if record.seq <= *last_seq {
            continue;
        }
        if Some(record.seq) != last_seq.checked_add(1) {
            return Err(damaged(
                path,
                &format!(
                    "line {number}: record {} follows record {last_seq}",
                    record.seq
                ),
            ));
        }
        model.advance(record.at);
        model.apply(&record.call).map_err(|e| {
            damaged(
                path,
                &format!(
                    "line {number}: record {} does not replay: {}",
                    record.seq, e.message
                ),
            )
        })?;
        model.advance(record.at);
        *last_seq = record.seq;
        replayed += 1;
    }
    Ok(replayed)
}

#[cfg(unix)]
fn sync_folder(file: &Path) -> Result<(), String> {
    let folder = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|e| format!("cannot sync folder {}: {e}", folder.display()))
}

#[cfg(not(unix))]
fn sync_folder(_file: &Path) -> Result<(), String> {
    // Other systems cannot open a folder to sync it; the rename is as durable as it gets.
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn damaged(path: &Path, detail: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Invalid,
        format!(
            "{} is damaged: {detail}; restore it, or remove the sim state file and its .journal to start an empty rehearsal",
            path.display()
        ),
    )
}

fn unavailable(path: &Path, verb: &str, error: &std::io::Error) -> EngineError {
    EngineError::new(
        ErrorKind::Unavailable,
        format!("cannot {verb} sim state file {}: {error}", path.display()),
    )
}

fn write_failed(path: &Path, detail: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Unavailable,
        format!("cannot write sim state file {}: {detail}", path.display()),
    )
}
