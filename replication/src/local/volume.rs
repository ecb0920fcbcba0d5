//! One source server's replicated disks on the replication server: the chunk map the
//! agent's data builds (chunks by content address, of the size the volume started with:
//! [`chunk_for`], or [`LEGACY_CHUNK`] in points that do not say), the chunks changed since they
//! were last stored, and the recovery points, each a chunk map cut at a barrier the agent
//! sent and written only after the chunks it names are durable.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::proto::{
    BLOCK, CHUNK, ChunkHash, ChunkHasher, DiskInfo, LEGACY_CHUNK, ZERO_CHUNK, chunk_count,
    chunk_len,
};
use super::store::{ChunkStore, StoreError};

/// Chunks changed since they were stored are kept in memory up to this much, then stored.
const DIRTY_LIMIT: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointMeta {
    pub seq: u64,
    /// When the engine recorded it (the scheduler's clock).
    pub taken_at: Timestamp,
    /// When the agent froze the disks for it (the source's clock).
    pub frozen_at: Timestamp,
    pub disks: Vec<DiskInfo>,
    /// The chunk size of the point's maps; points written before it was recorded have
    /// 64 KiB chunks.
    #[serde(default = "legacy_chunk")]
    pub chunk: usize,
    /// What the maps' addresses are hashes of; points written before it was recorded
    /// name SHA-256.
    #[serde(default)]
    pub hash: ChunkHasher,
    /// A point that lists only its chunks that differ from the full point `base` (the
    /// file holds, per disk, a count and that many chunk numbers with their addresses);
    /// none: the file holds the whole map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
}

fn legacy_chunk() -> usize {
    LEGACY_CHUNK
}

impl PointMeta {
    pub fn id(&self) -> String {
        format!("rp-{:06}", self.seq)
    }
}

pub struct Volume {
    dir: PathBuf,
    pub disks: Vec<DiskInfo>,
    /// The size of the chunks of `maps`: the base point's, or [`chunk_for`] from scratch.
    chunk: usize,
    /// How `maps` address their chunks: the latest point's (kept through a full resync,
    /// so the chunks it stores again are the ones its points still name), or
    /// [`ChunkHasher::NEW`] for a volume that holds none.
    hasher: ChunkHasher,
    maps: Vec<Vec<ChunkHash>>,
    dirty: Vec<BTreeMap<u64, Vec<u8>>>,
    dirty_bytes: usize,
    /// Chunks found damaged in the store whose bytes the agent was asked to send again:
    /// no recovery point is cut while one is missing.
    awaiting: BTreeSet<(u16, u64)>,
    pub points: Vec<PointMeta>,
    /// Point files whose description does not read, by the number in their name, with
    /// why: not among `points`, kept in the folder, their numbers never taken again.
    pub unreadable: Vec<(u64, String)>,
    /// The full point the next point may list its changes against, and which chunks of
    /// `maps` changed since it (one bit per chunk, and how many are set).
    base: Option<u64>,
    changed: Vec<Vec<u64>>,
    changed_count: usize,
    /// Points a launch is reading, by how many: retention keeps them meanwhile.
    pinned: BTreeMap<u64, usize>,
    /// The store's count of losses when the maps were last checked against it: a loss
    /// since (chunks forgotten: not yet synced when a write failed, or found damaged)
    /// may leave the maps naming a chunk the store no longer holds.
    losses: u64,
}

/// A write the volume cannot take.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A recovery point's first line, its description.
fn read_meta(path: &Path, reader: &mut impl BufRead) -> io::Result<PointMeta> {
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("recovery point {} does not read: {why}", path.display()),
        )
    };
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let meta: PointMeta = serde_json::from_str(&line).map_err(|err| invalid(err.to_string()))?;
    if !(BLOCK..=LEGACY_CHUNK).contains(&meta.chunk) || !meta.chunk.is_power_of_two() {
        return Err(invalid(format!(
            "its chunks are {} bytes (a power of two from 4 KiB to 64 KiB is read)",
            meta.chunk
        )));
    }
    Ok(meta)
}

/// Volumes up to this size (all their disks) start with [`CHUNK`]s; larger ones with
/// [`LEGACY_CHUNK`]s, whose maps and points take a quarter of the room.
const SMALL_VOLUME: u64 = 64 << 30;

/// The chunk size a volume of these disks starts with.
pub fn chunk_for(disks: &[DiskInfo]) -> usize {
    if disks.iter().map(|d| d.size).sum::<u64>() <= SMALL_VOLUME {
        CHUNK
    } else {
        LEGACY_CHUNK
    }
}

fn empty_maps(disks: &[DiskInfo], chunk: usize) -> Vec<Vec<ChunkHash>> {
    disks
        .iter()
        .map(|d| vec![ZERO_CHUNK; chunk_count(d.size, chunk) as usize])
        .collect()
}

/// A point lists its changes against the last full point while the list (40 bytes a
/// chunk) stays under this fraction of the whole map (32 bytes a chunk); past it the
/// point is written whole and the next ones list their changes against it.
const DELTA_SHARE: usize = 4;

/// No chunk marked changed, for maps of these sizes.
fn no_changes(maps: &[Vec<ChunkHash>]) -> Vec<Vec<u64>> {
    maps.iter().map(|m| vec![0; m.len().div_ceil(64)]).collect()
}

/// The chunk numbers whose bits are set.
fn set_bits(bits: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bits.iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .flat_map(|(word, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = u64::from(rest.trailing_zeros());
                    rest &= rest - 1;
                    word as u64 * 64 + bit
                })
            })
        })
}

/// A point file's body.
enum PointBody {
    Whole(Vec<Vec<ChunkHash>>),
    /// Against the whole map of point `base`.
    Listed {
        base: u64,
        lists: Vec<Vec<(u64, ChunkHash)>>,
    },
}

/// A recovery point's maps, and what its file lists.
struct PointFile {
    meta: PointMeta,
    maps: Vec<Vec<ChunkHash>>,
    /// For a point that lists its changes: the chunks it lists, per disk.
    listed: Option<Vec<Vec<u64>>>,
}

impl Volume {
    /// The volume of a source whose folder is `dir`, with the recovery points found there.
    pub fn open(dir: &Path, disks: Vec<DiskInfo>) -> io::Result<Volume> {
        let points_dir = dir.join("points");
        std::fs::create_dir_all(&points_dir)?;
        let mut points = Vec::new();
        let mut unreadable = Vec::new();
        for entry in std::fs::read_dir(&points_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("rp") {
                continue;
            }
            match read_meta(&path, &mut BufReader::new(File::open(&path)?)) {
                Ok(meta) => points.push(meta),
                // A damaged description: the file stays, its number stays taken, and
                // the volume opens without it (its sessions say so).
                Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                    let seq = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    unreadable.push((seq, err.to_string()));
                }
                Err(err) => return Err(err),
            }
        }
        unreadable.sort();
        points.sort_by_key(|p| p.seq);
        // Until a reset says from which point it goes on: the latest's size.
        let chunk = points.last().map_or_else(|| chunk_for(&disks), |p| p.chunk);
        let hasher = points.last().map_or(ChunkHasher::NEW, |p| p.hash);
        let maps = empty_maps(&disks, chunk);
        Ok(Volume {
            dir: dir.to_owned(),
            dirty: disks.iter().map(|_| BTreeMap::new()).collect(),
            changed: no_changes(&maps),
            maps,
            changed_count: 0,
            base: None,
            unreadable,
            chunk,
            hasher,
            disks,
            dirty_bytes: 0,
            awaiting: BTreeSet::new(),
            pinned: BTreeMap::new(),
            losses: 0,
            points,
        })
    }

    pub fn latest(&self) -> Option<&PointMeta> {
        self.points.last()
    }

    /// The highest point number in the folder (0: none), readable or not: the next
    /// point's number is past it.
    pub fn last_seq(&self) -> u64 {
        let readable = self.points.last().map_or(0, |p| p.seq);
        let unreadable = self.unreadable.last().map_or(0, |(seq, _)| *seq);
        readable.max(unreadable)
    }

    fn point_path(&self, seq: u64) -> PathBuf {
        self.dir.join("points").join(format!("{seq:012}.rp"))
    }

    /// The chunk maps of a recovery point.
    pub fn point_maps(&self, seq: u64) -> io::Result<(PointMeta, Vec<Vec<ChunkHash>>)> {
        let point = self.read_point(seq)?;
        Ok((point.meta, point.maps))
    }

    /// What a point's file holds: its whole maps, or the chunks it lists (per disk,
    /// chunk numbers with their addresses) against its base.
    fn read_file(&self, seq: u64) -> io::Result<(PointMeta, PointBody)> {
        let path = self.point_path(seq);
        let mut reader = BufReader::new(File::open(&path)?);
        let meta = read_meta(&path, &mut reader)?;
        let mut maps = Vec::new();
        let mut lists = Vec::new();
        for disk in &meta.disks {
            let entries = chunk_count(disk.size, meta.chunk);
            if meta.base.is_none() {
                let mut map = vec![ZERO_CHUNK; entries as usize];
                for hash in &mut map {
                    reader.read_exact(hash)?;
                }
                maps.push(map);
                continue;
            }
            let mut word = [0u8; 8];
            reader.read_exact(&mut word)?;
            let count = u64::from_le_bytes(word);
            if count > entries {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "recovery point {} does not read: it lists {count} chunks of a disk of {entries}",
                        path.display()
                    ),
                ));
            }
            let mut list = Vec::with_capacity(count as usize);
            for _ in 0..count {
                reader.read_exact(&mut word)?;
                let index = u64::from_le_bytes(word);
                if index >= entries {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "recovery point {} does not read: it lists chunk {index}, past its disk's end",
                            path.display()
                        ),
                    ));
                }
                let mut hash = ZERO_CHUNK;
                reader.read_exact(&mut hash)?;
                list.push((index, hash));
            }
            lists.push(list);
        }
        let body = match meta.base {
            None => PointBody::Whole(maps),
            Some(base) => PointBody::Listed { base, lists },
        };
        Ok((meta, body))
    }

    /// A point's maps: its file's, or for a point that lists its changes, its base's
    /// with the changes applied.
    fn read_point(&self, seq: u64) -> io::Result<PointFile> {
        let (meta, body) = self.read_file(seq)?;
        let (base, lists) = match body {
            PointBody::Whole(maps) => {
                return Ok(PointFile {
                    meta,
                    maps,
                    listed: None,
                });
            }
            PointBody::Listed { base, lists } => (base, lists),
        };
        let invalid = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "recovery point {} does not read: it lists its changes against recovery point {base}, {why}",
                    self.point_path(seq).display()
                ),
            )
        };
        let (full, body) = self
            .read_file(base)
            .map_err(|err| invalid(format!("which does not read ({err})")))?;
        let PointBody::Whole(mut maps) = body else {
            return Err(invalid("which is not a whole map".to_owned()));
        };
        if full.disks != meta.disks || full.chunk != meta.chunk || full.hash != meta.hash {
            return Err(invalid("which is of other disks or addresses".to_owned()));
        }
        let mut listed = no_changes(&maps);
        for ((map, bits), list) in maps.iter_mut().zip(&mut listed).zip(lists) {
            for (index, hash) in list {
                map[index as usize] = hash;
                bits[(index / 64) as usize] |= 1 << (index % 64);
            }
        }
        Ok(PointFile {
            meta,
            maps,
            listed: Some(listed),
        })
    }

    /// Continues from recovery point `base` (0: empty disks), dropping whatever arrived
    /// after it: the agent sends everything that differs from that point again. The
    /// point's chunks the store no longer holds (found damaged and forgotten, perhaps in
    /// a session that ended before the agent sent them again) are awaited again, and
    /// returned as the ranges to ask the agent for.
    pub fn reset(&mut self, base: u64, store: &ChunkStore) -> io::Result<Vec<(u16, u64, u64)>> {
        if base == 0 {
            self.chunk = chunk_for(&self.disks);
            self.hasher = self.points.last().map_or(ChunkHasher::NEW, |p| p.hash);
            self.maps = empty_maps(&self.disks, self.chunk);
            self.changed = no_changes(&self.maps);
            self.base = None;
        } else {
            let point = self.read_point(base)?;
            self.chunk = point.meta.chunk;
            self.hasher = point.meta.hash;
            self.maps = point.maps;
            // The next point lists its changes against the same full point.
            self.changed = point.listed.unwrap_or_else(|| no_changes(&self.maps));
            self.base = Some(point.meta.base.unwrap_or(base));
        }
        self.changed_count = self
            .changed
            .iter()
            .flatten()
            .map(|w| w.count_ones() as usize)
            .sum();
        for dirty in &mut self.dirty {
            dirty.clear();
        }
        self.dirty_bytes = 0;
        self.awaiting.clear();
        self.losses = store.losses();
        Ok(self.await_missing(store))
    }

    /// After the store forgot chunks (not yet synced when a write or sync of the staging
    /// disk failed, or found damaged; for this source or another sharing the store): the
    /// chunks of the maps it no longer holds are awaited, and returned as the ranges to
    /// ask the agent for. No point is cut until they are here again.
    pub fn recover_losses(&mut self, store: &ChunkStore) -> Vec<(u16, u64, u64)> {
        if store.losses() == self.losses {
            return Vec::new();
        }
        self.losses = store.losses();
        self.await_missing(store)
    }

    /// Awaits every chunk of the maps that the store does not hold (and that is not
    /// changed in memory already); returns their ranges.
    fn await_missing(&mut self, store: &ChunkStore) -> Vec<(u16, u64, u64)> {
        let chunk = self.chunk;
        let mut resend = Vec::new();
        for (d, info) in self.disks.iter().enumerate() {
            for (index, hash) in self.maps[d].iter().enumerate() {
                let index = index as u64;
                if *hash != ZERO_CHUNK
                    && !store.contains(hash)
                    && !self.dirty[d].contains_key(&index)
                    && self.awaiting.insert((d as u16, index))
                {
                    resend.push((
                        d as u16,
                        index * chunk as u64,
                        chunk_len(info.size, chunk, index) as u64,
                    ));
                }
            }
        }
        resend
    }

    /// Applies a run of bytes the agent sent. Returns the chunks found damaged in the
    /// store, or lost from it, (as disk ranges) that the agent must send again.
    pub fn write(
        &mut self,
        store: &mut ChunkStore,
        disk: u16,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Vec<(u16, u64, u64)>, VolumeError> {
        let d = disk as usize;
        let Some(info) = self.disks.get(d) else {
            return Err(VolumeError::Invalid(format!("no disk {disk}")));
        };
        let size = info.size;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= size);
        let Some(end) = end else {
            return Err(VolumeError::Invalid(format!(
                "a write at byte {offset} of {} bytes passes the end of {} ({size} bytes)",
                bytes.len(),
                info.name
            )));
        };
        let mut lost = self.recover_losses(store);
        let mut resend = Vec::new();
        let chunk = self.chunk;
        let mut at = offset;
        while at < end {
            let index = at / chunk as u64;
            let chunk_start = index * chunk as u64;
            let len = chunk_len(size, chunk, index);
            let upto = end.min(chunk_start + len as u64);
            let covers = at == chunk_start && upto == chunk_start + len as u64;
            let here = (at - offset) as usize..(upto - offset) as usize;
            if covers {
                // The whole chunk: its bytes are the write's, whatever was there.
                self.awaiting.remove(&(disk, index));
                let old = self.dirty[d].insert(index, bytes[here].to_vec());
                if old.is_none() {
                    self.dirty_bytes += len;
                }
                at = upto;
                continue;
            }
            if !self.dirty[d].contains_key(&index) {
                let hash = self.maps[d][index as usize];
                // A chunk awaited from the agent comes whole: nothing to read back.
                let buf = if self.awaiting.contains(&(disk, index)) {
                    vec![0; len]
                } else {
                    match store.get(&hash, len) {
                        Ok(buf) => buf,
                        Err(StoreError::Damaged { .. } | StoreError::Missing(_)) => {
                            store.forget([&hash])?;
                            self.awaiting.insert((disk, index));
                            resend.push((disk, chunk_start, len as u64));
                            vec![0; len]
                        }
                        Err(err) => return Err(err.into()),
                    }
                };
                self.dirty_bytes += len;
                self.dirty[d].insert(index, buf);
            }
            if let Some(buf) = self.dirty[d].get_mut(&index) {
                let from = (at - chunk_start) as usize;
                let to = (upto - chunk_start) as usize;
                buf[from..to].copy_from_slice(&bytes[here]);
            }
            at = upto;
        }
        if !resend.is_empty() {
            // Where one chunk is damaged others may be: read every chunk of the disks
            // and ask for each damaged one, so that no new point names one.
            resend.extend(self.scrub(store)?);
            // The scrub read every chunk of the maps: the losses it caused are seen.
            self.losses = store.losses();
        }
        if self.dirty_bytes > DIRTY_LIMIT {
            self.flush(store)?;
        }
        lost.append(&mut resend);
        Ok(lost)
    }

    /// Reads every stored chunk of the current disks; the damaged ones are forgotten and
    /// returned as the ranges the agent must send again.
    pub fn scrub(&mut self, store: &mut ChunkStore) -> Result<Vec<(u16, u64, u64)>, VolumeError> {
        let mut resend = Vec::new();
        let mut damaged = HashSet::new();
        let chunk = self.chunk;
        for (d, info) in self.disks.iter().enumerate() {
            for (index, hash) in self.maps[d].iter().enumerate() {
                let index = index as u64;
                if *hash == ZERO_CHUNK
                    || self.dirty[d].contains_key(&index)
                    || self.awaiting.contains(&(d as u16, index))
                {
                    continue;
                }
                let len = chunk_len(info.size, chunk, index);
                match store.get(hash, len) {
                    Ok(_) => {}
                    Err(StoreError::Damaged { .. } | StoreError::Missing(_)) => {
                        damaged.insert(*hash);
                        self.awaiting.insert((d as u16, index));
                        resend.push((d as u16, index * chunk as u64, len as u64));
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        store.forget(&damaged)?;
        Ok(resend)
    }

    /// The stored chunks a write of `len` bytes at `offset` of `disk` would read back to
    /// merge into (those it covers in part, not already in memory), so the store can be
    /// asked for them before the write comes (`ChunkStore::prefetch`).
    pub fn read_backs(&self, disk: u16, offset: u64, len: u64) -> Vec<ChunkHash> {
        let (d, chunk) = (disk as usize, self.chunk as u64);
        let (Some(info), Some(map)) = (self.disks.get(d), self.maps.get(d)) else {
            return Vec::new();
        };
        let end = offset.saturating_add(len).min(info.size);
        if offset >= end {
            return Vec::new();
        }
        let mut wanted = Vec::new();
        for index in [offset / chunk, (end - 1) / chunk] {
            let start = index * chunk;
            let covered =
                offset <= start && end >= start + chunk_len(info.size, self.chunk, index) as u64;
            let hash = map.get(index as usize).copied().unwrap_or(ZERO_CHUNK);
            if !covered
                && hash != ZERO_CHUNK
                && !self.dirty[d].contains_key(&index)
                && !self.awaiting.contains(&(disk, index))
                && wanted.last() != Some(&hash)
            {
                wanted.push(hash);
            }
        }
        wanted
    }

    /// Stores the changed chunks (not durably: that waits for the next recovery point).
    pub fn flush(&mut self, store: &mut ChunkStore) -> io::Result<()> {
        for (d, dirty) in self.dirty.iter_mut().enumerate() {
            // A chunk leaves the dirty set only once stored: a failed put (a full disk)
            // loses nothing.
            while let Some((&index, buf)) = dirty.iter().next() {
                let hash = store.put(buf, self.hasher)?;
                self.dirty_bytes = self.dirty_bytes.saturating_sub(buf.len());
                dirty.remove(&index);
                if self.maps[d][index as usize] != hash {
                    self.maps[d][index as usize] = hash;
                    let word = &mut self.changed[d][(index / 64) as usize];
                    let bit = 1 << (index % 64);
                    if *word & bit == 0 {
                        *word |= bit;
                        self.changed_count += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Chunks the agent was asked to send again and has not yet.
    pub fn awaiting_resend(&self) -> usize {
        self.awaiting.len()
    }

    /// Cuts recovery point `seq`: the chunks are synced first, then the point is written
    /// (to a temporary name, synced, renamed), so a point never names a chunk a crash
    /// could lose.
    pub fn commit(
        &mut self,
        store: &mut ChunkStore,
        seq: u64,
        frozen_at: Timestamp,
        taken_at: Timestamp,
    ) -> io::Result<PointMeta> {
        self.flush(store)?;
        store.sync()?;
        if store.losses() != self.losses {
            return Err(io::Error::other(
                "chunks stored since the last recovery point were lost (a write or sync of the staging disk failed): replication goes on from that point",
            ));
        }
        let entries: usize = self.maps.iter().map(Vec::len).sum();
        // Listed against the base while it is still here and the list stays small.
        let base = self.base.filter(|b| {
            *b != seq
                && self.changed_count * 40 * DELTA_SHARE <= entries * 32
                && self.points.iter().any(|p| p.seq == *b && p.base.is_none())
        });
        let meta = PointMeta {
            seq,
            taken_at,
            frozen_at,
            disks: self.disks.clone(),
            chunk: self.chunk,
            hash: self.hasher,
            base,
        };
        let mut body = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        body.push(b'\n');
        match base {
            None => {
                for map in &self.maps {
                    for hash in map {
                        body.extend_from_slice(hash);
                    }
                }
            }
            Some(_) => {
                for (map, bits) in self.maps.iter().zip(&self.changed) {
                    let listed: Vec<u64> = set_bits(bits).collect();
                    body.extend_from_slice(&(listed.len() as u64).to_le_bytes());
                    for index in listed {
                        body.extend_from_slice(&index.to_le_bytes());
                        body.extend_from_slice(&map[index as usize]);
                    }
                }
            }
        }
        let path = self.point_path(seq);
        write_durably(&path, &body)?;
        if base.is_none() {
            // A whole map: the next points list their changes against it.
            self.base = Some(seq);
            self.changed = no_changes(&self.maps);
            self.changed_count = 0;
        }
        self.points.retain(|p| p.seq != seq);
        self.points.push(meta.clone());
        self.points.sort_by_key(|p| p.seq);
        Ok(meta)
    }

    /// Keeps point `seq` from retention until [`Volume::unpin`]: a launch reads it.
    pub fn pin(&mut self, seq: u64) {
        *self.pinned.entry(seq).or_default() += 1;
    }

    pub fn unpin(&mut self, seq: u64) {
        if let Some(count) = self.pinned.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.pinned.remove(&seq);
            }
        }
    }

    /// Removes the recovery points the retention does not keep (never the latest, nor a
    /// point a launch is reading).
    pub fn prune(&mut self, retention: &Retention, now: Timestamp) -> io::Result<Vec<u64>> {
        let mut keep = retention.kept(&self.points, now);
        keep.extend(self.pinned.keys().copied());
        // The full points that kept ones list their changes against, and the one the
        // next point will.
        let bases: Vec<u64> = self
            .points
            .iter()
            .filter(|p| keep.contains(&p.seq))
            .filter_map(|p| p.base)
            .chain(self.base)
            .collect();
        keep.extend(bases);
        let mut removed = Vec::new();
        let mut failed = None;
        // Newest first, so a whole map goes only after the points listing against it
        // (their removal made durable first); the list follows the files one by one: a
        // failure leaves it true.
        let mut points = std::mem::take(&mut self.points);
        points.reverse();
        let mut unsynced = false;
        for point in points {
            if keep.contains(&point.seq) || failed.is_some() {
                self.points.push(point);
                continue;
            }
            if point.base.is_none() && unsynced {
                if let Err(err) = File::open(self.dir.join("points")).and_then(|d| d.sync_all()) {
                    failed = Some(err);
                    self.points.push(point);
                    continue;
                }
                unsynced = false;
            }
            match std::fs::remove_file(self.point_path(point.seq)) {
                Ok(()) => {
                    removed.push(point.seq);
                    unsynced = true;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => removed.push(point.seq),
                Err(err) => {
                    failed = Some(err);
                    self.points.push(point);
                }
            }
        }
        self.points.sort_by_key(|p| p.seq);
        removed.sort_unstable();
        match failed {
            Some(err) => Err(err),
            None => Ok(removed),
        }
    }

    /// Every chunk this volume still needs: its recovery points' and its current map's.
    pub fn live_chunks(&self, live: &mut HashSet<ChunkHash>) -> io::Result<()> {
        if let Some((_, why)) = self.unreadable.first() {
            // Its chunks cannot be listed.
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        // A listing point's other chunks are its base's, which is kept and read too.
        for point in &self.points {
            match self.read_file(point.seq)?.1 {
                PointBody::Whole(maps) => live.extend(maps.into_iter().flatten()),
                PointBody::Listed { lists, .. } => {
                    live.extend(lists.into_iter().flatten().map(|(_, hash)| hash));
                }
            }
        }
        for map in &self.maps {
            live.extend(map.iter().copied());
        }
        Ok(())
    }
}

/// Writes a file so that after a crash it is either absent or whole.
pub fn write_durably(path: &Path, body: &[u8]) -> io::Result<()> {
    write_durably_with(path, |out| out.write_all(body))
}

/// As [`write_durably`], the body written by `write` through a buffer: a large file is
/// not held whole in memory first.
pub fn write_durably_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    // A name of its own per write: two writers of one file never share a temporary.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let written = (|| {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Which recovery points are kept: for each tier, the newest point of every interval
/// within the tier's span (the seeds' default: every 10 minutes for an hour, hourly for
/// a day, daily for 30 days), and always the newest point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub tiers: Vec<(SignedDuration, SignedDuration)>,
}

impl Default for Retention {
    fn default() -> Retention {
        let minutes = |m: i64| SignedDuration::from_mins(m);
        Retention {
            tiers: vec![
                (minutes(10), minutes(60)),
                (minutes(60), minutes(24 * 60)),
                (minutes(24 * 60), minutes(30 * 24 * 60)),
            ],
        }
    }
}

impl Retention {
    pub fn kept(&self, points: &[PointMeta], now: Timestamp) -> HashSet<u64> {
        let mut keep = HashSet::new();
        if let Some(latest) = points.iter().max_by_key(|p| p.seq) {
            keep.insert(latest.seq);
        }
        for &(interval, span) in &self.tiers {
            let step = interval.as_nanos().max(1);
            let mut newest: BTreeMap<i128, (Timestamp, u64)> = BTreeMap::new();
            for point in points {
                if now.duration_since(point.taken_at) > span {
                    continue;
                }
                let bucket = point.taken_at.as_nanosecond().div_euclid(step);
                let entry = newest.entry(bucket).or_insert((point.taken_at, point.seq));
                if (point.taken_at, point.seq) > *entry {
                    *entry = (point.taken_at, point.seq);
                }
            }
            keep.extend(newest.values().map(|(_, seq)| *seq));
        }
        keep
    }
}

/// Test fixtures other modules share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A source's folder in the staging folder `staging`, as the replication server
    /// keeps it: one disk of `chunks` 16 KiB chunks and points 1 to `points` (the
    /// first a whole map, the next listing one changed chunk each), its chunks in the
    /// staging folder's store.
    pub(crate) fn source_with_points(staging: &Path, source: &str, chunks: u64, points: u64) {
        let mut store = ChunkStore::open(&staging.join("chunks")).expect("store");
        let dir = staging.join("sources").join(source);
        let disks = vec![DiskInfo {
            name: "/dev/vda".to_owned(),
            size: chunks * CHUNK as u64,
        }];
        std::fs::create_dir_all(&dir).expect("folder");
        std::fs::write(
            dir.join("disks.json"),
            serde_json::to_vec(&disks).expect("json"),
        )
        .expect("disks");
        let mut volume = Volume::open(&dir, disks).expect("volume");
        volume.reset(0, &store).expect("reset");
        let now = Timestamp::UNIX_EPOCH;
        for seq in 1..=points {
            volume
                .write(&mut store, 0, seq * CHUNK as u64, &[seq as u8; 4096])
                .expect("write");
            volume.commit(&mut store, seq, now, now).expect("commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder (named for the test) with a chunk store, and one disk of `size`.
    fn fixture(name: &str, size: u64) -> (PathBuf, ChunkStore, Vec<DiskInfo>) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ChunkStore::open(&dir.join("chunks")).expect("store");
        let disks = vec![DiskInfo {
            name: "/dev/sda".to_owned(),
            size,
        }];
        (dir, store, disks)
    }

    fn point(seq: u64, taken_at: Timestamp) -> PointMeta {
        PointMeta {
            seq,
            taken_at,
            frozen_at: taken_at,
            disks: Vec::new(),
            chunk: CHUNK,
            hash: ChunkHasher::NEW,
            base: None,
        }
    }

    #[test]
    fn retention_keeps_one_point_per_interval_of_each_tier() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().expect("time");
        // A point every minute for two days.
        let points: Vec<PointMeta> = (0..2 * 24 * 60)
            .map(|m| {
                point(
                    m as u64 + 1,
                    now - SignedDuration::from_mins(2 * 24 * 60 - 1 - m),
                )
            })
            .collect();
        let kept = Retention::default().kept(&points, now);
        let latest = points.len() as u64;
        assert!(kept.contains(&latest), "the newest is always kept");
        let within_hour = points
            .iter()
            .filter(|p| {
                kept.contains(&p.seq)
                    && now.duration_since(p.taken_at) <= SignedDuration::from_mins(60)
            })
            .count();
        // Six or seven ten-minute buckets in the last hour (the edges), plus hourly ones.
        assert!((6..=9).contains(&within_hour), "{within_hour}");
        // About 24 hourly points and a daily one or two; nothing else.
        assert!((28..=36).contains(&kept.len()), "{}", kept.len());
    }

    #[test]
    fn a_pinned_point_outlives_retention_until_unpinned() {
        let (dir, mut store, disks) = fixture("wl-volume-pin", CHUNK as u64);
        let mut volume = Volume::open(&dir.join("src"), disks).expect("volume");
        let now = Timestamp::UNIX_EPOCH;
        for seq in 1..=3 {
            volume.commit(&mut store, seq, now, now).expect("commit");
        }
        // One point per ten minutes: the three share one interval, the newest stays,
        // and the first, whose map the others list their changes against.
        let retention = Retention::default();
        volume.pin(2);
        assert_eq!(
            volume.prune(&retention, now).expect("prune"),
            Vec::<u64>::new()
        );
        assert!(
            volume.point_maps(2).is_ok(),
            "the pinned point is still there"
        );
        volume.unpin(2);
        assert_eq!(volume.prune(&retention, now).expect("prune"), vec![2]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_point_holds_the_bytes_written_before_it_and_reset_returns_to_it() {
        let (dir, mut store, disks) = fixture("wl-volume", 3 * CHUNK as u64 + 4096);
        let mut volume = Volume::open(&dir.join("src"), disks.clone()).expect("volume");
        let now = Timestamp::UNIX_EPOCH;
        volume
            .write(&mut store, 0, 4096, &[1u8; 4096])
            .expect("write");
        volume
            .write(&mut store, 0, 3 * CHUNK as u64, &[2u8; 4096])
            .expect("tail");
        let first = volume.commit(&mut store, 1, now, now).expect("commit");
        volume
            .write(&mut store, 0, 4096, &[9u8; 4096])
            .expect("after");
        volume.reset(1, &store).expect("reset");
        let (_, maps) = volume.point_maps(first.seq).expect("maps");
        let chunk0 = store.get(&maps[0][0], CHUNK).expect("chunk");
        assert_eq!(&chunk0[4096..8192], &[1u8; 4096][..]);
        assert_eq!(maps[0][1], ZERO_CHUNK);
        let tail = store.get(&maps[0][3], 4096).expect("tail chunk");
        assert_eq!(tail, vec![2u8; 4096]);
        // A chunk of the point the store lost (found damaged, forgotten) is awaited
        // again when a session continues from that point.
        store.forget([&maps[0][0]]).expect("forget");
        let resend = volume.reset(1, &store).expect("reset");
        assert_eq!(resend, vec![(0, 0, CHUNK as u64)]);
        assert_eq!(volume.awaiting_resend(), 1);
        let err = volume
            .write(&mut store, 0, 3 * CHUNK as u64, &[0u8; 8192])
            .expect_err("past the end");
        assert!(err.to_string().contains("passes the end"), "{err}");
        let reopened = Volume::open(&dir.join("src"), disks).expect("reopen");
        assert_eq!(reopened.latest().map(|p| p.seq), Some(1));
    }

    #[test]
    fn read_backs_name_the_stored_chunks_a_write_covers_in_part() {
        let size = 4 * CHUNK as u64 + 5000;
        let (dir, mut store, disks) = fixture("wl-volume-read-backs", size);
        let mut volume = Volume::open(&dir.join("src"), disks).expect("volume");
        volume.reset(0, &store).expect("reset");
        // Chunks 0 to 3 stored, the short last chunk (4) left zeros.
        for index in 0..4u64 {
            let bytes = vec![index as u8 + 1; CHUNK];
            volume
                .write(&mut store, 0, index * CHUNK as u64, &bytes)
                .expect("write");
        }
        let now = Timestamp::UNIX_EPOCH;
        let first = volume.commit(&mut store, 1, now, now).expect("commit");
        assert_eq!(first.hash, ChunkHasher::Blake3, "a volume with no points");
        let map = volume.maps[0].clone();
        let hash = |index: usize| map[index];
        let chunk = CHUNK as u64;
        // Inside one chunk: that chunk; across two: both ends; whole chunks: none.
        assert_eq!(volume.read_backs(0, chunk + 4096, 4096), vec![hash(1)]);
        assert_eq!(
            volume.read_backs(0, chunk + 4096, 2 * chunk),
            vec![hash(1), hash(3)]
        );
        assert!(volume.read_backs(0, chunk, 2 * chunk).is_empty());
        // Zeros are not stored, a chunk in memory is not read back, and nothing past
        // the disk or of a disk it has not is named.
        assert!(volume.read_backs(0, 4 * chunk + 10, 100).is_empty());
        volume
            .write(&mut store, 0, 2 * chunk, &[9u8; 4096])
            .expect("write");
        assert!(volume.read_backs(0, 2 * chunk + 8192, 4096).is_empty());
        assert!(volume.read_backs(0, size, 4096).is_empty());
        assert!(volume.read_backs(1, 0, 4096).is_empty());
        // What it names reads after the advice as before.
        for record in store.read_ahead(&[hash(1), hash(3), ZERO_CHUNK]) {
            record.advise();
        }
        assert_eq!(store.get(&hash(1), CHUNK).expect("chunk"), vec![2u8; CHUNK]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_volume_begun_with_64_kib_chunks_and_sha_256_goes_on_with_them_until_it_starts_over() {
        let size = 2 * LEGACY_CHUNK as u64;
        let (dir, mut store, disks) = fixture("wl-volume-legacy", size);
        // A point as written before chunk sizes and hashes were recorded: no "chunk" or
        // "hash" field, one SHA-256 address per 64 KiB.
        let stored = store
            .put(&[5u8; LEGACY_CHUNK], ChunkHasher::Sha256)
            .expect("put");
        store.sync().expect("sync");
        let points = dir.join("src").join("points");
        std::fs::create_dir_all(&points).expect("points");
        let meta = serde_json::json!({
            "seq": 1,
            "taken_at": "2026-12-01T00:00:00Z",
            "frozen_at": "2026-12-01T00:00:00Z",
            "disks": [{"name": "/dev/sda", "size": size}],
        });
        let mut body = serde_json::to_vec(&meta).expect("json");
        body.push(b'\n');
        body.extend_from_slice(&stored);
        body.extend_from_slice(&ZERO_CHUNK);
        std::fs::write(points.join(format!("{:012}.rp", 1)), &body).expect("point");

        let mut volume = Volume::open(&dir.join("src"), disks.clone()).expect("volume");
        assert!(volume.reset(1, &store).expect("reset").is_empty());
        volume
            .write(&mut store, 0, LEGACY_CHUNK as u64 + 4096, &[7u8; 4096])
            .expect("write");
        let now = Timestamp::UNIX_EPOCH;
        let second = volume.commit(&mut store, 2, now, now).expect("commit");
        assert_eq!(
            (second.chunk, second.hash),
            (LEGACY_CHUNK, ChunkHasher::Sha256)
        );
        let (meta, maps) = volume.point_maps(2).expect("maps");
        assert_eq!((meta.chunk, maps[0].len()), (LEGACY_CHUNK, 2));
        assert_eq!(maps[0][0], stored);
        let mut expected = vec![0u8; LEGACY_CHUNK];
        expected[4096..8192].fill(7);
        assert_eq!(
            store.get(&maps[0][1], LEGACY_CHUNK).expect("chunk"),
            expected
        );
        assert_eq!(maps[0][1], ChunkHasher::Sha256.hash(&expected));
        // Reopened, it goes on with the latest point's size and hash.
        let mut volume = Volume::open(&dir.join("src"), disks.clone()).expect("reopen");
        assert_eq!(
            (volume.chunk, volume.hasher),
            (LEGACY_CHUNK, ChunkHasher::Sha256)
        );
        // From scratch (a full resync), it takes today's size, and keeps its hash while
        // it holds points (what it stores again is what they name, once).
        volume.reset(0, &store).expect("reset");
        volume.write(&mut store, 0, 0, &[3u8; 4096]).expect("write");
        volume.commit(&mut store, 3, now, now).expect("commit");
        let (meta, maps) = volume.point_maps(3).expect("maps");
        assert_eq!(
            (meta.chunk, meta.hash, maps[0].len()),
            (CHUNK, ChunkHasher::Sha256, 2 * LEGACY_CHUNK / CHUNK)
        );
        let mut first = vec![0u8; CHUNK];
        first[..4096].fill(3);
        assert_eq!(maps[0][0], ChunkHasher::Sha256.hash(&first));
        assert_eq!(volume.point_maps(2).expect("old point").1[0].len(), 2);

        // A point that says a size no volume has, or a hash this version does not know,
        // is refused by name.
        let cases = [
            (
                "chunk",
                serde_json::json!(12345),
                "its chunks are 12345 bytes",
            ),
            (
                "hash",
                serde_json::json!("md5"),
                "unknown variant `md5`, expected `sha256` or `blake3`",
            ),
        ];
        for (field, value, expected) in cases {
            let mut odd = serde_json::to_value(&meta).expect("json");
            odd[field] = value;
            let mut body = serde_json::to_vec(&odd).expect("json");
            body.push(b'\n');
            std::fs::write(points.join(format!("{:012}.rp", 4)), &body).expect("point");
            let volume = Volume::open(&dir.join("src"), disks.clone()).expect("opened without it");
            let (seq, why) = volume.unreadable.first().cloned().unwrap_or_default();
            assert!(
                seq == 4 && why.contains("000000000004.rp") && why.contains(expected),
                "{why}"
            );
            assert_eq!(volume.latest().map(|p| p.seq), Some(3));
            assert_eq!(volume.last_seq(), 4, "its number stays taken");
            assert!(
                volume.live_chunks(&mut HashSet::new()).is_err(),
                "its chunks cannot be listed"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn chunks_lost_to_a_failed_write_are_asked_for_again_by_every_volume_that_names_them() {
        let (dir, mut store, disks) = fixture("wl-volume-loss", 4 * CHUNK as u64);
        // Two sources share the store; each stores a chunk, not yet synced.
        let mut a = Volume::open(&dir.join("a"), disks.clone()).expect("volume");
        let mut b = Volume::open(&dir.join("b"), disks).expect("volume");
        a.reset(0, &store).expect("reset");
        b.reset(0, &store).expect("reset");
        let now = Timestamp::UNIX_EPOCH;
        a.write(&mut store, 0, 0, &[4u8; 4096]).expect("write");
        a.flush(&mut store).expect("flush");
        b.write(&mut store, 0, CHUNK as u64, &[5u8; 4096])
            .expect("write");
        b.flush(&mut store).expect("flush");
        // A write of the staging disk fails: what was not synced is forgotten, and
        // both maps name a chunk the store no longer has.
        store.lose_unsynced();
        // A cannot cut a point over it: its commit says so (the session ends).
        let err = a.commit(&mut store, 1, now, now).expect_err("refused");
        assert!(err.to_string().contains("were lost"), "{err}");
        assert!(a.latest().is_none(), "no point was written");
        // B's next write asks for its lost chunk again, whole, and reads nothing back
        // (a partial write into it waits for the whole chunk).
        let resend = b
            .write(&mut store, 0, CHUNK as u64 + 8192, &[6u8; 4096])
            .expect("write");
        assert_eq!(resend, vec![(0, CHUNK as u64, CHUNK as u64)]);
        assert_eq!(b.awaiting_resend(), 1);
        assert!(b.recover_losses(&store).is_empty(), "asked for once");
        let mut whole = vec![0u8; CHUNK];
        whole[..4096].fill(5);
        whole[8192..12288].fill(6);
        assert!(
            b.write(&mut store, 0, CHUNK as u64, &whole)
                .expect("resent")
                .is_empty()
        );
        assert_eq!(b.awaiting_resend(), 0);
        let point = b.commit(&mut store, 1, now, now).expect("commit");
        let (_, maps) = b.point_maps(point.seq).expect("maps");
        assert_eq!(store.get(&maps[0][1], CHUNK).expect("chunk"), whole);
        // A's next session starts again from its last point (here: none).
        a.reset(0, &store).expect("reset");
        a.write(&mut store, 0, 0, &[4u8; 4096]).expect("write");
        let point = a.commit(&mut store, 1, now, now).expect("commit");
        let (_, maps) = a.point_maps(point.seq).expect("maps");
        assert!(store.contains(&maps[0][0]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn points_list_their_changes_against_the_last_whole_map_until_the_list_grows() {
        // 64 chunks: a list of more than 12 (40 bytes each) is over a quarter of the
        // whole map (32 bytes each).
        let (dir, mut store, disks) = fixture("wl-volume-delta", 64 * CHUNK as u64);
        let src = dir.join("src");
        let mut volume = Volume::open(&src, disks.clone()).expect("volume");
        volume.reset(0, &store).expect("reset");
        let now = Timestamp::UNIX_EPOCH;
        let file = |seq: u64| {
            std::fs::metadata(src.join("points").join(format!("{seq:012}.rp")))
                .expect("a point file")
                .len()
        };
        let mut expected = BTreeMap::new();
        type Maps = Vec<Vec<ChunkHash>>;
        fn cut(
            volume: &mut Volume,
            store: &mut ChunkStore,
            expected: &mut BTreeMap<u64, Maps>,
            seq: u64,
            chunks: &[u64],
        ) -> PointMeta {
            let now = Timestamp::UNIX_EPOCH;
            for &c in chunks {
                volume
                    .write(store, 0, c * CHUNK as u64, &[seq as u8; 4096])
                    .expect("write");
            }
            let meta = volume.commit(store, seq, now, now).expect("commit");
            expected.insert(seq, volume.maps.clone());
            meta
        }
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 1, &[0]).base,
            None,
            "the first is whole"
        );
        let whole = file(1);
        assert!(whole > 64 * 32, "{whole}");
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 2, &[5]).base,
            Some(1)
        );
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 3, &[9]).base,
            Some(1)
        );
        // Point 3 lists chunks 5 and 9: its file is the description and 2 x 40 bytes.
        assert!(file(3) < whole - 64 * 32 + 8 + 2 * 40 + 16, "{}", file(3));
        // A new session from point 3 (reopened) goes on listing against point 1.
        let mut volume = Volume::open(&src, disks.clone()).expect("reopen");
        assert!(volume.reset(3, &store).expect("reset").is_empty());
        assert_eq!(volume.maps, expected[&3]);
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 4, &[20]).base,
            Some(1)
        );
        // Many changes: the point is whole, and the next lists against it.
        let many: Vec<u64> = (30..50).collect();
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 5, &many).base,
            None
        );
        assert_eq!(
            cut(&mut volume, &mut store, &mut expected, 6, &[1]).base,
            Some(5)
        );
        for (seq, maps) in &expected {
            assert_eq!(
                &volume.point_maps(*seq).expect("maps").1,
                maps,
                "point {seq}"
            );
        }
        let (_, maps) = volume.point_maps(4).expect("maps");
        assert_eq!(
            store.get(&maps[0][20], CHUNK).expect("chunk")[..4096],
            [4u8; 4096][..]
        );
        // Retention of the newest only keeps point 6 and the whole map it lists against.
        let newest = Retention { tiers: Vec::new() };
        assert_eq!(volume.prune(&newest, now).expect("prune"), vec![1, 2, 3, 4]);
        assert_eq!(volume.point_maps(6).expect("maps").1, expected[&6]);
        let mut live = HashSet::new();
        volume.live_chunks(&mut live).expect("live");
        assert!(expected[&6][0].iter().all(|h| live.contains(h)));
        // A point whose whole map is gone says which.
        std::fs::remove_file(src.join("points").join(format!("{:012}.rp", 5))).expect("rm");
        let err = volume.point_maps(6).expect_err("no base");
        assert!(
            err.to_string()
                .contains("lists its changes against recovery point 5, which does not read"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pinned_point_keeps_the_whole_map_it_lists_against() {
        let (dir, mut store, disks) = fixture("wl-volume-pin-base", 64 * CHUNK as u64);
        let mut volume = Volume::open(&dir.join("src"), disks).expect("volume");
        volume.reset(0, &store).expect("reset");
        let now = Timestamp::UNIX_EPOCH;
        let mut commit = |volume: &mut Volume, seq: u64, chunks: std::ops::Range<u64>| {
            for c in chunks {
                volume
                    .write(&mut store, 0, c * CHUNK as u64, &[seq as u8; 4096])
                    .expect("write");
            }
            volume
                .commit(&mut store, seq, now, now)
                .expect("commit")
                .base
        };
        assert_eq!(commit(&mut volume, 1, 0..1), None);
        assert_eq!(commit(&mut volume, 2, 1..2), Some(1));
        assert_eq!(commit(&mut volume, 3, 0..40), None);
        assert_eq!(commit(&mut volume, 4, 2..3), Some(3));
        let newest = Retention { tiers: Vec::new() };
        volume.pin(2);
        assert_eq!(
            volume.prune(&newest, now).expect("prune"),
            Vec::<u64>::new(),
            "point 2 is read, and point 1 is its whole map"
        );
        assert!(volume.point_maps(2).is_ok());
        volume.unpin(2);
        assert_eq!(volume.prune(&newest, now).expect("prune"), vec![1, 2]);
        assert!(volume.point_maps(4).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn set_bits_are_the_chunks_marked() {
        let bits = [0b1011, 0, 1 << 63, u64::MAX];
        let set: Vec<u64> = set_bits(&bits).collect();
        let mut expected = vec![0, 1, 3, 191];
        expected.extend(192..256);
        assert_eq!(set, expected);
    }

    #[test]
    fn a_volume_starts_with_16_kib_chunks_up_to_64_gib_and_64_kib_past_that() {
        let disk = |size: u64| DiskInfo {
            name: "/dev/sda".to_owned(),
            size,
        };
        assert_eq!(chunk_for(&[disk(4 << 30)]), CHUNK);
        assert_eq!(chunk_for(&[disk(32 << 30), disk(32 << 30)]), CHUNK);
        assert_eq!(
            chunk_for(&[disk(32 << 30), disk((32 << 30) + 1)]),
            LEGACY_CHUNK
        );
        assert_eq!(chunk_for(&[disk(1 << 40)]), LEGACY_CHUNK);
    }
}
