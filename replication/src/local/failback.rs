//! Failback on the local engine. After a finalized cutover the copy is where the work
//! runs; a failback brings it back to the source:
//!
//! 1. **Reverse replication**: a `wavelift-agent` started by the engine on this machine
//!    replicates the cutover copy's images into the staging area, as a source of its own
//!    (`SOURCE-failback`), with recovery points like any other.
//! 2. **Restore**: a recovery point of the copy (a fresh one, cut at a barrier) is
//!    written onto the source's own disks by `wavelift-agent restore` run on the source
//!    through its shell: it compares each chunk of the disks with the point's
//!    addresses, and only the chunks that differ are sent, checked and written
//!    ([`super::restore`]). The steps are recorded, so a stopped restore starts again
//!    from a comparison.
//! 3. **Return to normal**: agent_push installs the source's agent again (let in while
//!    the failback is restored, so a failed install leaves it restored and a run again
//!    goes on), then the reverse replication stops, the copy is terminated and the
//!    source is ready for cutover; its agent sends what the restore changed since its
//!    last recovery point (its digests tell).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::proto::{ZERO_CHUNK, chunk_len};
use super::restore::{self, Differ, Record, Written};
use super::server::{lock, token_hash};
use super::store::StoreError;
use super::{LocalEngine, State, not_found, random_token, unavailable};
use crate::rules::{conflict, life_cycle_name};
use crate::{
    EngineResult, Failback, FailbackState, LaunchKind, LifeCycle, RecoveryPoint, RestoreStep,
    SourceId, TargetState,
};

/// What one write step carries at most, so a step's input and time stay bounded.
const WRITE_STEP_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FailbackRecord {
    /// The reverse replication's source id in the replication server.
    reverse: String,
    /// The copy's images it reads.
    images: Vec<PathBuf>,
    token_sha256: String,
    pid: Option<u32>,
    state: FailbackState,
    /// The copy's recovery point being restored.
    seq: Option<u64>,
    /// What the source's last step answers: `compare` or `write`.
    awaiting: Option<String>,
    /// Chunks (disk, index) still to write, the first `in_flight` of them sent.
    pending: Vec<(u16, u64)>,
    in_flight: usize,
    restored_chunks: u64,
    restored_bytes: u64,
}

impl FailbackRecord {
    /// The copy's state is on the source: its agent may be installed again.
    pub(super) fn restored(&self) -> bool {
        self.state == FailbackState::Restored
    }

    /// Lets the reverse agent in again (a restarted engine), and keeps the point a
    /// restore was reading from retention again: the pin was the stopped process's.
    pub(super) fn allow(&self, server: &super::server::ReplicationServer) {
        server.allow(&self.reverse, &self.token_sha256, false);
        if self.state == FailbackState::Restoring
            && let Some(seq) = self.seq
            && let Ok(Some(volume)) = server.volume(&self.reverse)
        {
            lock(&volume).pin(seq);
        }
    }
}

impl LocalEngine {
    fn failback_dir(&self, id: &SourceId) -> PathBuf {
        self.inner.config.staging_dir.join("failback").join(&id.0)
    }

    fn failback_of(state: &State, id: &SourceId) -> EngineResult<(usize, FailbackRecord)> {
        let index = Self::source_index(state, id)?;
        let record = &state.sources[index];
        let failback = record.failback.clone().ok_or_else(|| {
            conflict(format!(
                "{} has no failback started (wavelift failback starts one)",
                Self::label(record)
            ))
        })?;
        Ok((index, failback))
    }

    fn failback_view(&self, failback: &FailbackRecord) -> Failback {
        let (replication, _) = self.replication_of(&failback.reverse, false);
        let stats = self.inner.server.stats(&failback.reverse);
        Failback {
            state: failback.state,
            replication,
            point: stats.points.last().map(|p| RecoveryPoint {
                id: p.id(),
                taken_at: p.taken_at,
            }),
            restored_chunks: failback.restored_chunks,
            restored_bytes: failback.restored_bytes,
        }
    }

    /// Whether the reverse agent this record names runs (it may be a process a previous
    /// Wavelift started).
    fn reverse_agent_runs(&self, id: &SourceId, failback: &FailbackRecord) -> bool {
        if let Some(child) = lock(&self.inner.children).get_mut(&id.0)
            && matches!(child.try_wait(), Ok(None))
        {
            return true;
        }
        let dir = self.failback_dir(id).display().to_string();
        failback.pid.is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
        })
    }

    /// Starts the agent that replicates the copy back.
    fn start_reverse_agent(&self, id: &SourceId, failback: &FailbackRecord) -> EngineResult<u32> {
        let dir = self.failback_dir(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(|err| unavailable("cannot open the reverse agent's log", err))?;
        let config = &self.inner.config;
        let mut command = std::process::Command::new(&config.agent_binary);
        command
            .arg("run")
            .args(["--server", &self.agent_address()])
            .args(["--pin", &self.inner.server.pin()])
            .args(["--source", &failback.reverse])
            .arg("--token-file")
            .arg(dir.join("token"))
            .arg("--state-dir")
            .arg(&dir)
            .args([
                "--give-up-after",
                &config.agent_give_up_after.as_secs().to_string(),
            ]);
        for image in &failback.images {
            command.arg("--disk").arg(image);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|err| unavailable("the reverse agent's log", err))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|err| {
                unavailable(
                    &format!(
                        "cannot start the reverse agent {}",
                        config.agent_binary.display()
                    ),
                    err,
                )
            })?;
        let pid = child.id();
        lock(&self.inner.children).insert(id.0.clone(), child);
        Ok(pid)
    }

    pub(super) fn start_failback_now(&self, id: &SourceId) -> EngineResult<Failback> {
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        if let Some(failback) = state.sources[index].failback.clone() {
            if !self.reverse_agent_runs(id, &failback) {
                let pid = self.start_reverse_agent(id, &failback)?;
                if let Some(record) = state.sources[index].failback.as_mut() {
                    record.pid = Some(pid);
                }
                self.save(&state)?;
            }
            return Ok(self.failback_view(&failback));
        }
        let label = Self::label(&state.sources[index]);
        let life_cycle = state.sources[index].life_cycle;
        if !matches!(life_cycle, LifeCycle::Cutover | LifeCycle::Archived) {
            return Err(conflict(format!(
                "{label} is {}: a failback follows a finalized cutover",
                life_cycle_name(life_cycle)
            )));
        }
        let copy = state.targets.iter().rev().find(|t| {
            &t.target.source == id
                && t.target.kind == LaunchKind::Cutover
                && t.target.state == TargetState::Running
        });
        let Some(copy) = copy else {
            return Err(conflict(format!(
                "{label} has no running cutover copy to fail back from"
            )));
        };
        if let Some(image) = copy
            .images
            .iter()
            .find(|i| i.extension().is_none_or(|e| e != "raw"))
        {
            return Err(conflict(format!(
                "the cutover copy of {label} is {}, not a raw image: failback reads raw images, so a server to fail back is launched as raw (engines.local.image_format: raw)",
                image.display()
            )));
        }
        let images = copy.images.clone();
        let token = random_token()?;
        let dir = self.failback_dir(id);
        create_private_dir(&dir)
            .and_then(|()| write_private(&dir.join("token"), token.as_bytes()))
            .map_err(|err| {
                unavailable(
                    &format!(
                        "cannot write the reverse agent's token in {}",
                        dir.display()
                    ),
                    err,
                )
            })?;
        let mut failback = FailbackRecord {
            // Each failback replicates into a volume of its own.
            reverse: format!(
                "{}-failback-{}",
                id.0,
                self.inner.clock.now().as_millisecond()
            ),
            images,
            token_sha256: token_hash(&token),
            pid: None,
            state: FailbackState::Replicating,
            seq: None,
            awaiting: None,
            pending: Vec::new(),
            in_flight: 0,
            restored_chunks: 0,
            restored_bytes: 0,
        };
        self.inner
            .server
            .allow(&failback.reverse, &failback.token_sha256, false);
        failback.pid = Some(self.start_reverse_agent(id, &failback)?);
        state.sources[index].failback = Some(failback.clone());
        self.save(&state)?;
        Ok(self.failback_view(&failback))
    }

    pub(super) fn describe_failback_now(&self, id: &SourceId) -> EngineResult<Option<Failback>> {
        let state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        Ok(state.sources[index]
            .failback
            .as_ref()
            .map(|f| self.failback_view(f)))
    }

    pub(super) async fn restore_step_now(
        &self,
        id: &SourceId,
        answer: Option<&str>,
    ) -> EngineResult<RestoreStep> {
        let (index, mut failback) = Self::failback_of(&lock(&self.inner.state), id)?;
        let mut answer = answer;
        let mut seq = match (answer, failback.seq) {
            (Some(_), Some(seq)) => seq,
            (Some(_), None) => {
                return Err(conflict(format!(
                    "the failback of {id} got an answer to a step it did not give"
                )));
            }
            // A restore starts from a fresh point of the copy, everything it holds up
            // to now (so a restore run again moves what changed on the copy since).
            (None, _) => self.copy_point(id, &failback).await?,
        };
        let volume = self
            .inner
            .server
            .volume(&failback.reverse)
            .map_err(|err| unavailable("cannot open the copy's replicated disks", err))?
            .ok_or_else(|| not_found(format!("nothing of {id}'s copy was replicated yet")))?;
        let read = lock(&volume).point_maps(seq);
        let (meta, maps) = match read {
            Ok(read) => read,
            // The point was pruned meanwhile (retention): start over from a fresh one.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && answer.is_some() => {
                seq = self.copy_point(id, &failback).await?;
                answer = None;
                let again = lock(&volume).point_maps(seq);
                again.map_err(|err| {
                    unavailable(&format!("cannot read the copy's point {seq}"), err)
                })?
            }
            Err(err) => {
                return Err(unavailable(
                    &format!("cannot read the copy's point {seq}"),
                    err,
                ));
            }
        };
        let devices = {
            let state = lock(&self.inner.state);
            state.sources[index].devices.clone()
        };
        if devices.len() != meta.disks.len() {
            return Err(conflict(format!(
                "{id} has {} disk(s), its copy {}",
                devices.len(),
                meta.disks.len()
            )));
        }
        let disks: Vec<super::proto::DiskInfo> = devices
            .iter()
            .zip(&meta.disks)
            .map(|(device, disk)| super::proto::DiskInfo {
                name: device.clone(),
                size: disk.size,
            })
            .collect();
        match (answer, failback.awaiting.as_deref()) {
            (None, _) => {
                let restoring = failback.state == FailbackState::Restoring;
                let old = failback.seq;
                failback.state = FailbackState::Restoring;
                failback.seq = Some(seq);
                failback.awaiting = Some("compare".to_owned());
                failback.pending.clear();
                failback.in_flight = 0;
                // Each restore counts what it writes.
                failback.restored_chunks = 0;
                failback.restored_bytes = 0;
                self.keep_failback(index, &failback)?;
                // Retention keeps the point the restore reads until it is done (a
                // restarted engine pins it again from the failback's saved state).
                {
                    let mut volume = lock(&volume);
                    if restoring && let Some(old) = old {
                        volume.unpin(old);
                    }
                    volume.pin(seq);
                }
                return Ok(RestoreStep::Run {
                    template: "local-restore".to_owned(),
                    facts: self.restore_facts(index),
                    input: restore::compare_request(&disks, (meta.chunk, meta.hash), &maps),
                    what: format!(
                        "compare the source's disks with the copy's recovery point rp-{seq:06}"
                    ),
                });
            }
            (Some(text), Some("compare")) => {
                let differ: Differ = serde_json::from_str(last_line(text)).map_err(|err| {
                    conflict(format!(
                        "the source's comparison does not read ({err}): {text}"
                    ))
                })?;
                failback.pending = differ.differ;
                failback.in_flight = 0;
            }
            (Some(text), Some("write")) => {
                let written: Written = serde_json::from_str(last_line(text)).map_err(|err| {
                    conflict(format!("the source's write does not read ({err}): {text}"))
                })?;
                if written.written != failback.in_flight as u64 {
                    return Err(conflict(format!(
                        "the source wrote {} chunks of the {} sent",
                        written.written, failback.in_flight
                    )));
                }
                failback.pending.drain(..failback.in_flight);
                failback.in_flight = 0;
                failback.restored_chunks += written.written;
                failback.restored_bytes += written.bytes;
            }
            (Some(_), _) => {
                return Err(conflict(format!(
                    "the failback of {id} got an answer to a step it did not give"
                )));
            }
        }
        if failback.pending.is_empty() {
            failback.state = FailbackState::Restored;
            failback.awaiting = None;
            self.keep_failback(index, &failback)?;
            lock(&volume).unpin(seq);
            return Ok(RestoreStep::Done {
                chunks: failback.restored_chunks,
                bytes: failback.restored_bytes,
            });
        }
        // The next chunks, read from the store and checked against their addresses.
        let mut chunks = Vec::new();
        let mut size = 0;
        for &(disk, chunk) in &failback.pending {
            let Some(map) = maps.get(disk as usize) else {
                return Err(conflict(format!(
                    "the source named disk {disk}, which the copy has not"
                )));
            };
            let Some(hash) = map.get(chunk as usize) else {
                return Err(conflict(format!(
                    "the source named chunk {chunk} of disk {disk}, past its end"
                )));
            };
            let len = chunk_len(disks[disk as usize].size, meta.chunk, chunk);
            let bytes = if *hash == ZERO_CHUNK {
                vec![0u8; len]
            } else {
                // The store's lock ends with this statement: forget_damaged takes it again.
                let got = lock(self.inner.server.store()).get(hash, len);
                match got {
                    Ok(bytes) => bytes,
                    Err(err @ (StoreError::Damaged { .. } | StoreError::Missing(_))) => {
                        // Reading the whole point is the launch's work: off the runtime.
                        let server = self.inner.server.clone();
                        let (point, chunks) = (meta.clone(), maps.clone());
                        let forgot = tokio::task::spawn_blocking(move || {
                            super::launch::forget_damaged(server.store(), &point, &chunks)
                        })
                        .await
                        .map_err(|err| unavailable("the copy's damaged chunks", err))?;
                        let found = match forgot {
                            Ok(found) => format!(
                                "{found} chunk(s) of it are damaged or missing in the store and were forgotten: the copy's agent sends them again; run the failback again (retry its task), and the restore starts from a fresh point of the copy that holds them"
                            ),
                            Err((found, why)) => format!(
                                "{found} chunk(s) of it are damaged or missing in the store and were forgotten, but the store could not record that on its disk ({why}): check the staging disk"
                            ),
                        };
                        // The next step starts over.
                        failback.awaiting = None;
                        failback.pending.clear();
                        failback.in_flight = 0;
                        self.keep_failback(index, &failback)?;
                        return Err(unavailable(
                            &format!("the copy's point rp-{seq:06} cannot be restored"),
                            format!("{err}; {found}"),
                        ));
                    }
                    Err(err) => return Err(unavailable("the copy's chunk cannot be read", err)),
                }
            };
            size += len;
            chunks.push((disk, chunk, *hash, bytes));
            if size >= WRITE_STEP_BYTES {
                break;
            }
        }
        let records: Vec<Record<'_>> = chunks
            .iter()
            .map(|(disk, chunk, hash, bytes)| Record {
                disk: *disk,
                chunk: *chunk,
                bytes,
                hash: *hash,
            })
            .collect();
        let input = restore::write_request(&disks, (meta.chunk, meta.hash), &records);
        failback.in_flight = records.len();
        failback.awaiting = Some("write".to_owned());
        self.keep_failback(index, &failback)?;
        Ok(RestoreStep::Run {
            template: "local-restore".to_owned(),
            facts: self.restore_facts(index),
            input,
            what: format!(
                "write {} chunk(s), {size} bytes, of rp-{seq:06} ({} left after)",
                records.len(),
                failback.pending.len() - records.len()
            ),
        })
    }

    /// A fresh recovery point of the copy, cut at a barrier of the reverse agent.
    async fn copy_point(&self, id: &SourceId, failback: &FailbackRecord) -> EngineResult<u64> {
        let point = self
            .inner
            .server
            .barrier(&failback.reverse, self.inner.config.final_sync_timeout)
            .await
            .map_err(|why| {
                unavailable(
                    "the copy's final sync for the failback failed",
                    format!(
                        "{why} (is the reverse agent running? see its log, {})",
                        self.failback_dir(id).join("agent.log").display()
                    ),
                )
            })?;
        Ok(point.seq)
    }

    fn keep_failback(&self, index: usize, failback: &FailbackRecord) -> EngineResult<()> {
        let mut state = lock(&self.inner.state);
        state.sources[index].failback = Some(failback.clone());
        self.save(&state)
    }

    /// What the restore template is rendered with: the agent and its folder on the
    /// source, as for its install.
    fn restore_facts(&self, index: usize) -> std::collections::BTreeMap<String, serde_json::Value> {
        let (id, name) = {
            let state = lock(&self.inner.state);
            let record = &state.sources[index];
            (record.id.clone(), record.name.clone())
        };
        self.agent_facts(&id, &name)
    }

    pub(super) fn return_to_normal_now(&self, id: &SourceId) -> EngineResult<()> {
        let failback = {
            let state = lock(&self.inner.state);
            let (index, failback) = Self::failback_of(&state, id)?;
            if failback.state != FailbackState::Restored {
                return Err(conflict(format!(
                    "the failback of {} is {}: its copy must be restored onto the source first",
                    Self::label(&state.sources[index]),
                    match failback.state {
                        FailbackState::Replicating => "replicating the copy back",
                        _ => "restoring",
                    }
                )));
            }
            failback
        };
        self.stop_reverse_agent(id, &failback);
        let mut state = lock(&self.inner.state);
        let index = Self::source_index(&state, id)?;
        self.terminate_kind(&mut state, id, LaunchKind::Cutover, "return to normal");
        let record = &mut state.sources[index];
        record.life_cycle = LifeCycle::ReadyForCutover;
        record.failback = None;
        self.save(&state)?;
        drop(state);
        // The copy's replicated disks are no longer needed: their chunks are collected
        // at the next start.
        let _ = std::fs::remove_dir_all(self.failback_dir(id));
        let _ = std::fs::remove_dir_all(
            self.inner
                .config
                .staging_dir
                .join("sources")
                .join(&failback.reverse),
        );
        Ok(())
    }

    /// Stops the reverse agent: told by the server, then ended by its pid (it may be a
    /// process an earlier Wavelift started, or one that is not connected).
    fn stop_reverse_agent(&self, id: &SourceId, failback: &FailbackRecord) {
        self.inner.server.stop(&failback.reverse);
        let child = lock(&self.inner.children).remove(&id.0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        if let Some(mut child) = child {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.reverse_agent_runs(id, failback)
            && let Some(pid) = failback.pid.and_then(|p| i32::try_from(p).ok())
        {
            // Its command line names this failback's folder (checked just above).
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn last_line(text: &str) -> &str {
    text.trim().lines().last().unwrap_or("")
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The token file, readable by this account only from its first byte.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::volume::Retention;
    use jiff::Timestamp;

    fn record(state: FailbackState, seq: Option<u64>) -> FailbackRecord {
        FailbackRecord {
            reverse: "db01-failback".to_owned(),
            images: Vec::new(),
            token_sha256: token_hash("a token"),
            pid: None,
            state,
            seq,
            awaiting: None,
            pending: Vec::new(),
            in_flight: 0,
            restored_chunks: 0,
            restored_bytes: 0,
        }
    }

    /// Starts: replication servers on loopback ports over one staging folder, where the
    /// reverse replication has points 1 (a whole map), 2 and 3 (listing against 1).
    #[tokio::test]
    async fn a_restarted_engine_keeps_the_point_a_restore_was_reading() {
        let dir = std::env::temp_dir().join(format!("wl-failback-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let staging = dir.join("staging");
        crate::local::volume::testing::source_with_points(&staging, "db01-failback", 64, 3);
        // The newest point only: point 2 goes unless something pins it.
        let newest = Retention { tiers: Vec::new() };
        let pruned = async |failback: FailbackRecord| {
            let server = crate::local::server::tests::start_when_free(&staging, newest.clone())
                .await
                .expect("a server");
            failback.allow(&server);
            let volume = server
                .volume(&failback.reverse)
                .expect("read")
                .expect("the reverse volume");
            let removed = lock(&volume)
                .prune(&newest, Timestamp::UNIX_EPOCH)
                .expect("prune");
            server.shutdown();
            removed
        };
        assert_eq!(
            pruned(record(FailbackState::Restoring, Some(2))).await,
            Vec::<u64>::new(),
            "the point being restored stays"
        );
        assert_eq!(
            pruned(record(FailbackState::Restored, Some(2))).await,
            vec![2],
            "once restored, retention takes it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
