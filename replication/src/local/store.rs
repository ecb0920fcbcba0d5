//! The content-addressed chunk store in the staging folder: chunks (16 KiB of a disk, or
//! 64 KiB in volumes begun before sizes were recorded; lz4-compressed when that is
//! smaller), appended to pack files, each record carrying its SHA-256 address so the
//! store can be re-indexed by reading the packs, and so a damaged chunk is found when it
//! is read. One fsync per recovery point, not per chunk. A chunk found damaged is
//! forgotten with a tombstone record (its address, no body), synced at once, so that
//! reopening the store does not index the damaged record again.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::proto::{ChunkHash, Compressor, ZERO_CHUNK, chunk_hash, hex};

const MAGIC: &[u8; 4] = b"WLC1";
const HEADER: usize = 4 + 32 + 4 + 4 + 1;
/// Chunks are flushed to disk in the background every this many bytes (so the disk
/// writes while chunks keep coming, and a recovery point's sync waits only for the rest),
/// and synced at each recovery point.
const WRITEBACK_EVERY: u64 = 32 << 20;
/// A pack is closed and a new one started past this size.
const PACK_LIMIT: u64 = 1 << 30;
/// Records are handed to the kernel in writes of about this much: one write of many
/// records costs the page cache a fraction of one write per record (whose ends fall
/// inside pages, which the kernel zeroes first).
const WRITE_BUFFER: usize = 1 << 20;

/// The flag byte of a record: the body as sent, lz4-compressed, or none (a tombstone:
/// the chunk at this address before it was found damaged and forgotten).
const RAW: u8 = 0;
const COMPRESSED: u8 = 1;
const TOMBSTONE: u8 = 2;

/// What one record of a pack says.
enum Record {
    Chunk(ChunkHash, Location),
    Tombstone(ChunkHash),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    pack: u32,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    compressed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    Missing(String),
    #[error("chunk {hash} in {pack} at byte {offset} is damaged: {why}")]
    Damaged {
        hash: String,
        pack: String,
        offset: u64,
        why: String,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub struct ChunkStore {
    dir: PathBuf,
    index: HashMap<ChunkHash, Location>,
    current: Option<(u32, File, u64)>,
    /// Bytes written since the last sync...
    unsynced: u64,
    /// ... and since the last background flush began.
    unflushed: u64,
    /// The chunks written since the last sync: forgotten if the sync fails, so they are
    /// written again (to a new pack) rather than named by a point while lost.
    unsynced_chunks: Vec<ChunkHash>,
    /// The next chunk starts a new pack (the current one's sync failed).
    rotate: bool,
    /// The current pack's last records, not written to it yet: they end where the pack
    /// does, and are read from here until they are written.
    pending: Vec<u8>,
    /// How many times chunks were forgotten (not yet synced when a write or sync
    /// failed, or found damaged): a volume whose maps were built before a loss asks for
    /// the chunks they name that the store no longer holds before it cuts a point.
    losses: u64,
    /// Chunks forgotten as damaged whose tombstones are not synced yet...
    unsynced_tombstones: Vec<ChunkHash>,
    /// ... and whether they still have to be queued (just forgotten, or their records
    /// lost with a failed write or sync): done at the next sync, in the pack then
    /// current, for each that was not stored again meanwhile.
    tombstones_unqueued: bool,
    /// The next sync fails as a failing disk's would (for tests).
    #[cfg(test)]
    fail_next_sync: bool,
    writeback: Writeback,
    compressor: Compressor,
    stored_bytes: u64,
}

/// The record whose header is at `offset`, if the header is whole and plausible.
fn read_header(file: &mut File, offset: u64, len: u64) -> io::Result<Option<Record>> {
    if offset + HEADER as u64 > len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut header)?;
    if &header[..4] != MAGIC || header[44] > TOMBSTONE {
        return Ok(None);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&header[4..36]);
    let raw_len = u32::from_be_bytes([header[36], header[37], header[38], header[39]]);
    let stored_len = u32::from_be_bytes([header[40], header[41], header[42], header[43]]);
    if header[44] == TOMBSTONE {
        return Ok((raw_len == 0 && stored_len == 0).then_some(Record::Tombstone(hash)));
    }
    let plausible = raw_len as usize <= super::proto::LEGACY_CHUNK
        && stored_len as usize <= super::proto::LEGACY_CHUNK + 1024
        && offset + HEADER as u64 + u64::from(stored_len) <= len;
    Ok(plausible.then_some(Record::Chunk(
        hash,
        Location {
            pack: 0,
            offset,
            stored_len,
            raw_len,
            compressed: header[44] == COMPRESSED,
        },
    )))
}

/// The first record at or after `from` whose header is plausible and whose content
/// matches its address (a tombstone has none to match).
fn resync(file: &mut File, from: u64, len: u64) -> io::Result<Option<(u64, Record)>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at + HEADER as u64 <= len {
        file.seek(SeekFrom::Start(at))?;
        let n = file.read(&mut buf)?;
        if n < MAGIC.len() {
            break;
        }
        let mut found = None;
        for i in 0..=n - MAGIC.len() {
            if &buf[i..i + MAGIC.len()] != MAGIC {
                continue;
            }
            let candidate = at + i as u64;
            let record = read_header(file, candidate, len)?;
            let matches = match &record {
                Some(Record::Chunk(hash, location)) => record_matches(file, hash, location)?,
                Some(Record::Tombstone(_)) => true,
                None => false,
            };
            if let Some(record) = record.filter(|_| matches) {
                found = Some((candidate, record));
                break;
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        // The magic may straddle two reads.
        at += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

fn record_matches(file: &mut File, hash: &ChunkHash, location: &Location) -> io::Result<bool> {
    let mut body = vec![0u8; location.stored_len as usize];
    file.seek(SeekFrom::Start(location.offset + HEADER as u64))?;
    file.read_exact(&mut body)?;
    let bytes = if location.compressed {
        match lz4_flex::block::decompress(&body, location.raw_len as usize) {
            Ok(bytes) => bytes,
            Err(_) => return Ok(false),
        }
    } else {
        body
    };
    Ok(chunk_hash(&bytes) == *hash)
}

/// A thread that flushes the pack being written while chunks keep being written to it.
/// It opens the pack anew (a file description of its own, not a `dup`), so a write-back
/// error it meets is still reported to the store's own sync of the pack: Linux reports
/// such an error once per file description.
#[derive(Default)]
struct Writeback {
    tx: Option<std::sync::mpsc::SyncSender<PathBuf>>,
}

impl Writeback {
    fn flush(&mut self, pack: PathBuf) {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(1);
            // Without the thread (it could not start), the sync at each point does it.
            let _ = std::thread::Builder::new()
                .name("wl-writeback".to_owned())
                .spawn(move || {
                    for pack in rx {
                        if let Ok(file) = File::open(&pack) {
                            let _ = file.sync_data();
                        }
                    }
                });
            tx
        });
        // A flush under way or queued covers this one's bytes too, nearly.
        let _ = tx.try_send(pack);
    }
}

/// Makes the folder's entries (a pack created or removed) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The ids of the packs in the folder, in order.
fn pack_ids(dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("pack-")?
                .strip_suffix(".wlc")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn pack_name(id: u32) -> String {
    format!("pack-{id:06}.wlc")
}

impl ChunkStore {
    fn empty(dir: &Path) -> ChunkStore {
        ChunkStore {
            dir: dir.to_owned(),
            index: HashMap::new(),
            current: None,
            unsynced: 0,
            unflushed: 0,
            unsynced_chunks: Vec::new(),
            rotate: false,
            pending: Vec::with_capacity(WRITE_BUFFER + HEADER + super::proto::LEGACY_CHUNK),
            losses: 0,
            unsynced_tombstones: Vec::new(),
            tombstones_unqueued: false,
            #[cfg(test)]
            fail_next_sync: false,
            writeback: Writeback::default(),
            compressor: Compressor::default(),
            stored_bytes: 0,
        }
    }

    /// Opens the store, indexing every pack; a record torn by a crash at the end of the
    /// last pack is cut off (it was never part of a recovery point: those are cut only
    /// after a sync).
    pub fn open(dir: &Path) -> io::Result<ChunkStore> {
        std::fs::create_dir_all(dir)?;
        let ids = pack_ids(dir)?;
        let mut store = ChunkStore::empty(dir);
        for (n, &id) in ids.iter().enumerate() {
            let valid = store.index_pack(id)?;
            let path = dir.join(pack_name(id));
            let is_last = n + 1 == ids.len();
            if is_last {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if file.metadata()?.len() != valid {
                    file.set_len(valid)?;
                    file.sync_all()?;
                }
                store.current = Some((id, file, valid));
            }
        }
        Ok(store)
    }

    /// Reads a pack's record headers into the index (a tombstone takes its chunk out,
    /// a later record of the chunk puts it back); returns where its last valid record
    /// ends. A damaged header in the middle (a bad sector, a flipped bit) loses only its
    /// own record: the next one is found by its magic and checked against its address,
    /// and indexing goes on from there. What follows the last valid record is a torn
    /// tail.
    fn index_pack(&mut self, id: u32) -> io::Result<u64> {
        let path = self.dir.join(pack_name(id));
        let mut file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut offset = 0u64;
        let mut valid_end = 0u64;
        while offset + HEADER as u64 <= len {
            let record = match read_header(&mut file, offset, len)? {
                Some(record) => Some(record),
                // Past a damaged stretch: the next record whose content matches its
                // address, if any.
                None => match resync(&mut file, offset + 1, len)? {
                    Some((at, record)) => {
                        offset = at;
                        Some(record)
                    }
                    None => None,
                },
            };
            let end = match record {
                None => break,
                Some(Record::Tombstone(hash)) => {
                    self.unindex(&hash);
                    offset + HEADER as u64
                }
                Some(Record::Chunk(hash, location)) => {
                    self.unindex(&hash);
                    self.index.insert(
                        hash,
                        Location {
                            pack: id,
                            ..location
                        },
                    );
                    self.stored_bytes += u64::from(location.stored_len);
                    offset + HEADER as u64 + u64::from(location.stored_len)
                }
            };
            offset = end;
            valid_end = end;
        }
        Ok(valid_end)
    }

    /// Takes a chunk out of the index; true if it was there.
    fn unindex(&mut self, hash: &ChunkHash) -> bool {
        match self.index.remove(hash) {
            Some(location) => {
                self.stored_bytes -= u64::from(location.stored_len);
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, hash: &ChunkHash) -> bool {
        *hash == ZERO_CHUNK || self.index.contains_key(hash)
    }

    pub fn chunk_count(&self) -> usize {
        self.index.len()
    }

    /// Bytes the chunks take in the packs (after compression).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Stores a chunk under its address (once: a chunk already there is not written
    /// again) and returns the address.
    pub fn put(&mut self, bytes: &[u8]) -> io::Result<ChunkHash> {
        let hash = chunk_hash(bytes);
        if self.contains(&hash) {
            return Ok(hash);
        }
        let compressed = self.compressor.compress(bytes);
        let (body, is_compressed) = match &compressed {
            Some(compressed) => (&compressed[..], true),
            None => (bytes, false),
        };
        self.ensure_pack()?;
        let Some((id, _, len)) = self.current.as_mut() else {
            return Err(io::Error::other("no pack to write to"));
        };
        let record = &mut self.pending;
        let record_start = record.len();
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&hash);
        record.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        record.extend_from_slice(&(body.len() as u32).to_be_bytes());
        record.push(if is_compressed { COMPRESSED } else { RAW });
        record.extend_from_slice(body);
        let record_len = (record.len() - record_start) as u64;
        self.index.insert(
            hash,
            Location {
                pack: *id,
                offset: *len,
                stored_len: body.len() as u32,
                raw_len: bytes.len() as u32,
                compressed: is_compressed,
            },
        );
        *len += record_len;
        let id = *id;
        self.stored_bytes += body.len() as u64;
        self.unsynced += record_len;
        self.unflushed += record_len;
        self.unsynced_chunks.push(hash);
        if self.pending.len() >= WRITE_BUFFER {
            self.write_pending()?;
        }
        if self.unflushed >= WRITEBACK_EVERY {
            self.write_pending()?;
            self.unflushed = 0;
            self.writeback.flush(self.dir.join(pack_name(id)));
        }
        Ok(hash)
    }

    /// Makes the current pack one that takes another record: the first, or the next
    /// after a full one or one whose sync failed.
    fn ensure_pack(&mut self) -> io::Result<()> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= PACK_LIMIT);
        if full || self.rotate {
            let id = self.current.as_ref().map_or(1, |(id, _, _)| id + 1);
            // A full pack is synced before the next one starts; a pack whose sync
            // failed is left as it is (its unsynced chunks are forgotten already).
            if !self.rotate && self.current.is_some() {
                self.write_pending()?;
                if let Some((_, file, _)) = &self.current
                    && let Err(err) = file.sync_all()
                {
                    self.forget_unsynced();
                    return Err(err);
                }
                self.unsynced_chunks.clear();
                if !self.tombstones_unqueued {
                    self.unsynced_tombstones.clear();
                }
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(self.dir.join(pack_name(id)))?;
            // The new pack's name is durable before a point can name its chunks.
            sync_dir(&self.dir)?;
            self.current = Some((id, file, 0));
            self.rotate = false;
        }
        Ok(())
    }

    /// Writes the records kept in memory to the end of the current pack. When that
    /// fails, the chunks not yet synced are forgotten, as after a failed sync.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some((_, file, len)) = &self.current else {
            return Err(io::Error::other("no pack to write to"));
        };
        let at = *len - self.pending.len() as u64;
        if let Err(err) = file.write_all_at(&self.pending, at) {
            self.forget_unsynced();
            return Err(err);
        }
        self.pending.clear();
        Ok(())
    }

    /// As when a write or sync fails (for tests of what follows).
    #[cfg(test)]
    pub(crate) fn lose_unsynced(&mut self) {
        self.forget_unsynced();
    }

    /// How many times chunks were forgotten (not yet synced when a write or sync failed,
    /// or found damaged) since the store opened.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Makes every chunk written so far durable. When that fails, the chunks written
    /// since the last sync are forgotten and the next one goes to a new pack: Linux
    /// reports a failed write-back once, so a second sync of the same file could say
    /// all is well while they are lost.
    pub fn sync(&mut self) -> io::Result<()> {
        self.queue_tombstones()?;
        self.write_pending()?;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            self.forget_unsynced();
            return Err(io::Error::other("a failing disk (test)"));
        }
        if self.unsynced > 0
            && let Some((_, file, _)) = &self.current
            && let Err(err) = file.sync_data()
        {
            self.forget_unsynced();
            return Err(err);
        }
        self.unsynced = 0;
        self.unsynced_chunks.clear();
        self.unsynced_tombstones.clear();
        Ok(())
    }

    /// Appends the tombstones still to be queued to the current pack's pending records,
    /// but not for a chunk stored again since (its new record would be taken out).
    fn queue_tombstones(&mut self) -> io::Result<()> {
        if !self.tombstones_unqueued {
            return Ok(());
        }
        // Each stays listed until a sync succeeds: one stored again now may be lost
        // again with a failed sync, and then needs its tombstone after all.
        for i in 0..self.unsynced_tombstones.len() {
            let hash = self.unsynced_tombstones[i];
            if !self.index.contains_key(&hash) {
                self.append_tombstone(&hash)?;
            }
        }
        self.tombstones_unqueued = false;
        Ok(())
    }

    /// A tombstone for `hash` at the end of the current pack (pending, not synced).
    fn append_tombstone(&mut self, hash: &ChunkHash) -> io::Result<()> {
        self.ensure_pack()?;
        let Some((_, _, len)) = self.current.as_mut() else {
            return Err(io::Error::other("no pack to write to"));
        };
        let record = &mut self.pending;
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(hash);
        record.extend_from_slice(&0u32.to_be_bytes());
        record.extend_from_slice(&0u32.to_be_bytes());
        record.push(TOMBSTONE);
        *len += HEADER as u64;
        self.unsynced += HEADER as u64;
        Ok(())
    }

    /// The next sync fails (and forgets what is not synced) as a failing disk's would.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// After a failed sync: the chunks written since the last good one are no longer in
    /// the store, and the next chunk starts a new pack.
    fn forget_unsynced(&mut self) {
        for hash in std::mem::take(&mut self.unsynced_chunks) {
            self.unindex(&hash);
        }
        self.pending.clear();
        self.unsynced = 0;
        self.rotate = true;
        self.losses += 1;
        // Tombstones among the lost records are written again at the next sync.
        if !self.unsynced_tombstones.is_empty() {
            self.tombstones_unqueued = true;
        }
    }

    /// A chunk's bytes, checked against its address.
    pub fn get(&self, hash: &ChunkHash, raw_len: usize) -> Result<Vec<u8>, StoreError> {
        if *hash == ZERO_CHUNK {
            return Ok(vec![0; raw_len]);
        }
        let location = self
            .index
            .get(hash)
            .ok_or_else(|| StoreError::Missing(hex(hash)))?;
        let pack = pack_name(location.pack);
        let damaged = |why: String| StoreError::Damaged {
            hash: hex(hash),
            pack: pack.clone(),
            offset: location.offset,
            why,
        };
        // A pack cut short or gone is damage too (it is what a bad disk leaves).
        let unreadable = |err: io::Error| match err.kind() {
            io::ErrorKind::UnexpectedEof => damaged(format!("its pack ends before it ({err})")),
            io::ErrorKind::NotFound => damaged(format!("its pack is gone ({err})")),
            _ => StoreError::Io(err),
        };
        let mut body = vec![0u8; location.stored_len as usize];
        let start = location.offset + HEADER as u64;
        match &self.current {
            // Still in memory: the pack ends with the pending records.
            Some((id, _, len))
                if *id == location.pack && location.offset >= *len - self.pending.len() as u64 =>
            {
                let at = (start - (*len - self.pending.len() as u64)) as usize;
                let n = body.len();
                body.copy_from_slice(&self.pending[at..at + n]);
            }
            _ => File::open(self.dir.join(&pack))
                .and_then(|file| file.read_exact_at(&mut body, start))
                .map_err(unreadable)?,
        }
        let bytes = if location.compressed {
            lz4_flex::block::decompress(&body, location.raw_len as usize)
                .map_err(|err| damaged(format!("it does not decompress ({err})")))?
        } else {
            body
        };
        if chunk_hash(&bytes) != *hash {
            return Err(damaged("its content does not match its address".to_owned()));
        }
        Ok(bytes)
    }

    /// Forgets chunks found damaged (or missing), so each is stored again when it comes
    /// back; returns how many the store held. They leave the index and count as one loss
    /// first (every volume whose maps name one asks for it again), then each gets a
    /// tombstone record, synced before this returns, so a restart does not index its
    /// damaged record again. If that write or sync fails, the tombstones are written
    /// again at the next sync.
    pub fn forget<'a>(
        &mut self,
        hashes: impl IntoIterator<Item = &'a ChunkHash>,
    ) -> io::Result<usize> {
        let mut forgotten = 0;
        for hash in hashes {
            if self.unindex(hash) {
                forgotten += 1;
                self.unsynced_tombstones.push(*hash);
            }
        }
        if forgotten == 0 {
            return Ok(0);
        }
        self.losses += 1;
        self.tombstones_unqueued = true;
        self.sync()?;
        Ok(forgotten)
    }

    /// Rewrites the packs so that only the chunks in `live` remain; returns the bytes
    /// freed. The new packs are synced before the old ones are removed. A live chunk
    /// found damaged is left behind (a loss), not a reason to stop: the store would
    /// otherwise keep failing to open over it.
    pub fn collect_garbage(&mut self, live: &HashSet<ChunkHash>) -> io::Result<u64> {
        let dead: u64 = self
            .index
            .iter()
            .filter(|(hash, _)| !live.contains(*hash))
            .map(|(_, loc)| u64::from(loc.stored_len))
            .sum();
        if dead == 0 {
            return Ok(0);
        }
        self.sync()?;
        // Every pack in the folder goes, those holding only tombstones or forgotten
        // records too (a tombstone left behind would take out a chunk stored again).
        let old = pack_ids(&self.dir)?;
        let keep: Vec<(ChunkHash, Location)> = self
            .index
            .iter()
            .filter(|(hash, _)| live.contains(*hash))
            .map(|(hash, loc)| (*hash, *loc))
            .collect();
        let first_new = old.last().copied().unwrap_or(0) + 1;
        let mut moved = ChunkStore::empty(&self.dir);
        moved.losses = self.losses;
        // Start numbering after the old packs, so a crash halfway leaves both copies
        // and opening the store indexes each chunk once (the newer wins).
        moved.current = Some((
            first_new,
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(self.dir.join(pack_name(first_new)))?,
            0,
        ));
        let mut damaged = false;
        for (hash, loc) in keep {
            match self.get(&hash, loc.raw_len as usize) {
                Ok(bytes) => {
                    moved.put(&bytes)?;
                }
                // Not copied, so forgotten when the old packs go (the volumes that name
                // it find it missing and ask their agents for it), with a tombstone in
                // case the old packs outlive a crash.
                Err(StoreError::Damaged { .. } | StoreError::Missing(_)) => {
                    damaged = true;
                    moved.append_tombstone(&hash)?;
                }
                Err(StoreError::Io(err)) => return Err(err),
            }
        }
        if damaged {
            moved.losses += 1;
        }
        moved.sync()?;
        sync_dir(&self.dir)?;
        // Oldest first: a pack holding a damaged record never outlives the later pack
        // that holds its tombstone.
        for id in old {
            std::fs::remove_file(self.dir.join(pack_name(id)))?;
        }
        sync_dir(&self.dir)?;
        let before = self.stored_bytes;
        *self = moved;
        Ok(before.saturating_sub(self.stored_bytes))
    }
}

impl Drop for ChunkStore {
    /// What is still in memory goes to the pack (not synced: no point names it yet).
    fn drop(&mut self) {
        let _ = self.queue_tombstones().and_then(|()| self.write_pending());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8) -> Vec<u8> {
        (0..super::super::proto::CHUNK)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    /// A chunk lz4 cannot shrink, so each record takes its full size.
    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..super::super::proto::CHUNK / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn records_wait_in_memory_until_a_megabyte_or_a_sync_and_are_read_from_there() {
        let dir = tempdir("pending");
        let pack = dir.join(pack_name(1));
        let on_disk = || std::fs::metadata(&pack).map(|m| m.len()).unwrap_or(0);
        let mut store = ChunkStore::open(&dir).expect("open");
        let record = (HEADER + super::super::proto::CHUNK) as u64;
        let mut hashes = Vec::new();
        for seed in 1..=10 {
            hashes.push(store.put(&noise(seed)).expect("put"));
        }
        assert_eq!(on_disk(), 0, "ten records wait in memory");
        for (seed, hash) in (1..=10).zip(&hashes) {
            assert_eq!(
                store.get(hash, noise(seed).len()).expect("get"),
                noise(seed)
            );
        }
        // Past a megabyte they are written in one go; the rest keep waiting.
        let mut seed = 10;
        while on_disk() == 0 && seed < 200 {
            seed += 1;
            hashes.push(store.put(&noise(seed)).expect("put"));
        }
        assert!(on_disk() >= WRITE_BUFFER as u64, "{}", on_disk());
        assert_eq!(on_disk() % record, 0);
        seed += 1;
        hashes.push(store.put(&noise(seed)).expect("put"));
        assert!(on_disk() < seed * record, "the last one waits");
        for (seed, hash) in (1..).zip(&hashes) {
            assert_eq!(
                store.get(hash, noise(seed).len()).expect("get"),
                noise(seed)
            );
        }
        store.sync().expect("sync");
        assert_eq!(on_disk(), seed * record, "a sync writes what waits first");
        // One more, then the store is closed without a sync: it is written on the way.
        let last = store.put(&noise(seed + 1)).expect("put");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.chunk_count(), hashes.len() + 1);
        assert_eq!(
            store.get(&last, noise(seed + 1).len()).expect("get"),
            noise(seed + 1)
        );
    }

    #[test]
    fn a_pack_cut_short_or_gone_under_an_open_store_is_damage() {
        let dir = tempdir("cut");
        let mut store = ChunkStore::open(&dir).expect("open");
        let a = store.put(&noise(1)).expect("put");
        store.sync().expect("sync");
        let pack = dir.join(pack_name(1));
        OpenOptions::new()
            .write(true)
            .open(&pack)
            .and_then(|f| f.set_len(100))
            .expect("cut");
        let err = store.get(&a, noise(1).len()).expect_err("cut short");
        assert!(
            matches!(err, StoreError::Damaged { .. })
                && err.to_string().contains("its pack ends before it"),
            "{err}"
        );
        std::fs::remove_file(&pack).expect("remove");
        let err = store.get(&a, noise(1).len()).expect_err("gone");
        assert!(
            matches!(err, StoreError::Damaged { .. })
                && err.to_string().contains("its pack is gone"),
            "{err}"
        );
    }

    #[test]
    fn chunks_come_back_after_reopening_and_are_stored_once() {
        let dir = tempdir("reopen");
        let mut store = ChunkStore::open(&dir).expect("open");
        let a = store.put(&chunk(3)).expect("put");
        let again = store.put(&chunk(3)).expect("put");
        assert_eq!(a, again);
        assert_eq!(store.chunk_count(), 1);
        let zero = store.put(&[0u8; 1024]).expect("zero");
        assert_eq!(zero, ZERO_CHUNK);
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&a, chunk(3).len()).expect("get"), chunk(3));
    }

    #[test]
    fn a_torn_record_is_cut_off_and_a_damaged_chunk_is_named() {
        let dir = tempdir("torn");
        let mut store = ChunkStore::open(&dir).expect("open");
        let a = store.put(&chunk(5)).expect("put");
        let b = store.put(&chunk(9)).expect("put");
        store.sync().expect("sync");
        drop(store);
        let pack = dir.join(pack_name(1));
        let len = std::fs::metadata(&pack).expect("pack").len();
        // A crash in the middle of the second record.
        let file = OpenOptions::new()
            .write(true)
            .open(&pack)
            .expect("open pack");
        file.set_len(len - 100).expect("cut");
        drop(file);
        let mut store = ChunkStore::open(&dir).expect("reopen");
        assert!(store.contains(&a));
        assert!(!store.contains(&b), "the torn record is gone");
        // Damage the first chunk's body.
        let mut bytes = std::fs::read(&pack).expect("read");
        bytes[HEADER + 10] ^= 0xff;
        std::fs::write(&pack, &bytes).expect("write");
        let err = store.get(&a, chunk(5).len()).expect_err("damaged");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("pack-000001.wlc"), "{err}");
        assert_eq!(store.forget([&a]).expect("forget"), 1);
        let again = store.put(&chunk(5)).expect("stored again");
        assert_eq!(store.get(&again, chunk(5).len()).expect("get"), chunk(5));
    }

    #[test]
    fn a_damaged_header_in_the_middle_loses_only_its_own_record() {
        let dir = tempdir("midheader");
        let mut store = ChunkStore::open(&dir).expect("open");
        let hashes: Vec<ChunkHash> = (1..=4u8)
            .map(|seed| store.put(&chunk(seed)).expect("put"))
            .collect();
        store.sync().expect("sync");
        drop(store);
        let pack = dir.join(pack_name(1));
        let mut bytes = std::fs::read(&pack).expect("read");
        let len = bytes.len();
        // Records follow one another: find the second one's header and break its magic.
        let second = bytes[1..]
            .windows(MAGIC.len())
            .position(|w| w == MAGIC)
            .map(|p| p + 1)
            .expect("a second record");
        bytes[second] ^= 0xff;
        std::fs::write(&pack, &bytes).expect("write");
        let mut store = ChunkStore::open(&dir).expect("reopen");
        assert!(store.contains(&hashes[0]));
        assert!(
            !store.contains(&hashes[1]),
            "the record with the broken header"
        );
        for (seed, hash) in [(3u8, &hashes[2]), (4, &hashes[3])] {
            assert_eq!(
                store.get(hash, chunk(seed).len()).expect("after it"),
                chunk(seed)
            );
        }
        assert_eq!(
            std::fs::metadata(&pack).expect("pack").len(),
            len as u64,
            "nothing after the damage was cut off"
        );
        // New chunks go after the last record.
        let fifth = store.put(&chunk(5)).expect("put");
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&fifth, chunk(5).len()).expect("get"), chunk(5));
    }

    #[test]
    fn garbage_collection_keeps_only_live_chunks() {
        let dir = tempdir("gc");
        let mut store = ChunkStore::open(&dir).expect("open");
        let keep = store.put(&chunk(1)).expect("put");
        let drop_me = store.put(&chunk(2)).expect("put");
        let freed = store.collect_garbage(&HashSet::from([keep])).expect("gc");
        assert!(freed > 0);
        assert!(store.contains(&keep) && !store.contains(&drop_me));
        let reopened = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(reopened.get(&keep, chunk(1).len()).expect("get"), chunk(1));
        assert!(!reopened.contains(&drop_me));
    }

    /// Flips a byte of the body of the record of `hash` in pack 1.
    fn damage(dir: &Path, hash: &ChunkHash) {
        let pack = dir.join(pack_name(1));
        let mut bytes = std::fs::read(&pack).expect("read pack");
        let at = bytes
            .windows(HEADER)
            .position(|w| &w[..4] == MAGIC && &w[4..36] == hash)
            .expect("the record");
        bytes[at + HEADER + 100] ^= 0xff;
        std::fs::write(&pack, &bytes).expect("write pack");
    }

    /// A store in a fresh folder holding `noise(1..=n)`, synced, the first one's record
    /// then damaged on disk; the folder, the store and the chunks' addresses.
    fn with_damage(name: &str, n: u64) -> (PathBuf, ChunkStore, Vec<ChunkHash>) {
        let dir = tempdir(name);
        let mut store = ChunkStore::open(&dir).expect("open");
        let hashes: Vec<ChunkHash> = (1..=n)
            .map(|seed| store.put(&noise(seed)).expect("put"))
            .collect();
        store.sync().expect("sync");
        damage(&dir, &hashes[0]);
        (dir, store, hashes)
    }

    #[test]
    fn a_forgotten_chunk_stays_forgotten_after_reopening_until_it_is_stored_again() {
        let (dir, mut store, hashes) = with_damage("tombstone", 2);
        let (a, b) = (hashes[0], hashes[1]);
        let before = store.stored_bytes();
        assert!(matches!(
            store.get(&a, noise(1).len()),
            Err(StoreError::Damaged { .. })
        ));
        let losses = store.losses();
        assert_eq!(store.forget([&a, &a]).expect("forget"), 1);
        assert_eq!(store.losses(), losses + 1, "one loss for the call");
        assert_eq!(store.forget([&a]).expect("again"), 0, "gone already");
        assert_eq!(store.stored_bytes(), before - noise(1).len() as u64);
        // The damaged record is still in the pack; its tombstone, synced, keeps it out.
        drop(store);
        let mut store = ChunkStore::open(&dir).expect("reopen");
        assert!(
            !store.contains(&a),
            "the damaged record is not indexed again"
        );
        assert_eq!(store.get(&b, noise(2).len()).expect("b"), noise(2));
        assert_eq!(store.stored_bytes(), before - noise(1).len() as u64);
        // Sent again, it is stored after its tombstone and outlives another reopening.
        assert_eq!(store.put(&noise(1)).expect("again"), a);
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&a, noise(1).len()).expect("a"), noise(1));
        assert_eq!(store.stored_bytes(), before);
    }

    #[test]
    fn tombstones_lost_with_a_failed_sync_are_written_again_in_the_next_pack() {
        let (dir, mut store, hashes) = with_damage("tombstone-lost", 2);
        let (a, b) = (hashes[0], hashes[1]);
        let losses = store.losses();
        store.fail_next_sync();
        store.forget([&a]).expect_err("the sync fails");
        assert!(!store.contains(&a), "forgotten all the same");
        assert!(store.losses() > losses, "and counted as a loss");
        // The next sync writes the tombstone again, into a new pack (the failed one is
        // left as it is).
        let c = store.put(&noise(3)).expect("put");
        store.sync().expect("sync");
        drop(store);
        assert!(dir.join(pack_name(2)).exists(), "a second pack");
        let store = ChunkStore::open(&dir).expect("reopen");
        assert!(
            !store.contains(&a),
            "the tombstone in pack 2 keeps pack 1's record out"
        );
        assert_eq!(store.get(&b, noise(2).len()).expect("b"), noise(2));
        assert_eq!(store.get(&c, noise(3).len()).expect("c"), noise(3));
    }

    #[test]
    fn a_chunk_stored_again_before_its_lost_tombstone_is_written_stays() {
        let (dir, mut store, hashes) = with_damage("tombstone-restored", 1);
        let a = hashes[0];
        store.fail_next_sync();
        store.forget([&a]).expect_err("the sync fails");
        // Sent again before the next sync: its new record must not be taken out.
        store.put(&noise(1)).expect("stored again");
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&a, noise(1).len()).expect("a"), noise(1));
    }

    #[test]
    fn a_chunk_stored_again_and_lost_again_keeps_its_tombstone() {
        let (dir, mut store, hashes) = with_damage("tombstone-twice", 1);
        let a = hashes[0];
        store.fail_next_sync();
        store.forget([&a]).expect_err("the sync fails");
        store.put(&noise(1)).expect("stored again");
        // Its new record is lost with the next sync too: the chunk is out of the store
        // again, and its tombstone must be written after all.
        store.fail_next_sync();
        store.sync().expect_err("fails again");
        assert!(!store.contains(&a));
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert!(!store.contains(&a), "the store reopens as it was left");
    }

    #[test]
    fn garbage_collection_leaves_a_damaged_live_chunk_behind_as_a_loss() {
        let (dir, mut store, hashes) = with_damage("gcdamaged", 3);
        let (damaged, whole, dead) = (hashes[0], hashes[1], hashes[2]);
        let losses = store.losses();
        // What a crash between the new packs' sync and the old ones' removal leaves.
        let before: Vec<(PathBuf, Vec<u8>)> = pack_ids(&dir)
            .expect("packs")
            .into_iter()
            .map(|id| {
                let path = dir.join(pack_name(id));
                let bytes = std::fs::read(&path).expect("a pack");
                (path, bytes)
            })
            .collect();
        store
            .collect_garbage(&HashSet::from([damaged, whole]))
            .expect("the damage does not stop the collection");
        assert_eq!(store.losses(), losses + 1);
        assert!(!store.contains(&damaged) && !store.contains(&dead));
        assert_eq!(store.get(&whole, noise(2).len()).expect("kept"), noise(2));
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert!(!store.contains(&damaged) && !store.contains(&dead));
        assert_eq!(store.chunk_count(), 1);
        drop(store);
        for (path, bytes) in &before {
            std::fs::write(path, bytes).expect("an old pack back");
        }
        let store = ChunkStore::open(&dir).expect("reopen after the crash");
        assert!(
            !store.contains(&damaged),
            "the new pack's tombstone keeps the old pack's damaged record out"
        );
        assert_eq!(store.get(&whole, noise(2).len()).expect("kept"), noise(2));
    }

    #[test]
    fn garbage_collection_removes_a_pack_of_tombstones_and_numbers_after_it() {
        let (dir, mut store, hashes) = with_damage("gc-tombstones", 3);
        let (a, b, dead) = (hashes[0], hashes[1], hashes[2]);
        // Pack 2 holds only a tombstone (the sync of pack 1 is made to fail first, so
        // the tombstone starts a new pack).
        store.fail_next_sync();
        store.forget([&a]).expect_err("the sync fails");
        store.sync().expect("the tombstone in pack 2");
        assert_eq!(pack_ids(&dir).expect("packs"), vec![1, 2]);
        store
            .collect_garbage(&HashSet::from([b]))
            .expect("collected");
        assert_eq!(
            pack_ids(&dir).expect("packs"),
            vec![3],
            "every old pack went"
        );
        // Stored again after the collection, the chunk outlives a reopening.
        store.put(&noise(1)).expect("stored again");
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&a, noise(1).len()).expect("a"), noise(1));
        assert_eq!(store.get(&b, noise(2).len()).expect("b"), noise(2));
        assert!(!store.contains(&dead));
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wl-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
