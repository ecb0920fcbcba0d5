//! The content-addressed chunk store in the staging folder: chunks (16 KiB of a disk, or
//! 64 KiB in volumes begun before sizes were recorded; lz4-compressed when that is
//! smaller), appended to pack files, each record carrying its address (BLAKE3, or
//! SHA-256 in volumes begun before BLAKE3 came: a bit of the record's flag byte says
//! which) so the store can be re-indexed by reading the packs, and so a damaged chunk is
//! found when it is read. One fsync per recovery point, not per chunk. A chunk found
//! damaged is forgotten with a tombstone record (its address, no body), synced at once,
//! so that reopening the store does not index the damaged record again.
//!
//! Where the staging folder's filesystem takes it, packs are written with `O_DIRECT`, in
//! whole 4 KiB blocks, by a thread of their own ([`DirectWriter`]): the chunks are not
//! copied into the page cache (on this machine that copy was half of the applier's time;
//! `super::direct`), and the next chunks are hashed while the disk takes these. The last partial block stays in memory
//! and is written again, whole, with the records that follow it; a sync writes it padded
//! with zeros and then cuts the file back to where its records end. Elsewhere (tmpfs)
//! packs are written through the page cache and flushed in the background.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::direct::{Aligned, DIRECT_BLOCK};
use super::proto::{ChunkHash, ChunkHasher, Compressor, ZERO_CHUNK, hex};

const MAGIC: &[u8; 4] = b"WLC1";
const HEADER: usize = 4 + 32 + 4 + 4 + 1;
/// Chunks are flushed to disk in the background every this many bytes (so the disk
/// writes while chunks keep coming, and a recovery point's sync waits only for the rest),
/// and synced at each recovery point.
const WRITEBACK_EVERY: u64 = 32 << 20;
/// Packs kept open for reading, at most.
const READERS: usize = 64;
/// A pack is closed and a new one started past this size.
const PACK_LIMIT: u64 = 1 << 30;
/// Records are handed to the kernel in writes of about this much: one write of many
/// records costs the page cache a fraction of one write per record (whose ends fall
/// inside pages, which the kernel zeroes first).
const WRITE_BUFFER: usize = 1 << 20;
/// Writes handed to the direct writer and not yet done, at most (besides the one under
/// way): the applier waits past this, as it would for a slow disk.
const DIRECT_QUEUE: usize = 2;

/// The flag byte of a record: the body as sent, lz4-compressed, or none (a tombstone:
/// the chunk at this address before it was found damaged and forgotten).
const RAW: u8 = 0;
const COMPRESSED: u8 = 1;
const TOMBSTONE: u8 = 2;
/// Set in the flag byte of a chunk addressed with BLAKE3; clear: SHA-256 (every record
/// written before BLAKE3 came).
const BLAKE3_ADDRESS: u8 = 0x10;

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
    /// What its address is the hash of, so it is checked with that.
    hasher: ChunkHasher,
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
    /// The pack being written: its id, the file, and where its records end (the pending
    /// ones included).
    current: Option<(u32, Arc<File>, u64)>,
    /// The current pack is open with `O_DIRECT` (written by `direct`)...
    direct_pack: bool,
    /// ... and new packs may be (false after the filesystem refused a direct write).
    allow_direct: bool,
    direct: Option<DirectWriter>,
    /// Bytes written since the last sync...
    unsynced: u64,
    /// ... and since the last background flush began.
    unflushed: u64,
    /// The chunks written since the last sync: forgotten if the sync fails, so they are
    /// written again (to a new pack) rather than named by a point while lost.
    unsynced_chunks: Vec<ChunkHash>,
    /// The next chunk starts a new pack (the current one's sync failed).
    rotate: bool,
    /// The current pack's last bytes, from `pending_from` to where the pack ends: the
    /// records not handed to the disk yet (with `O_DIRECT`, from the start of the block
    /// they begin in), read from here until they are written.
    pending: Aligned,
    pending_from: u64,
    /// Where the current pack's bytes handed to the disk end (with `O_DIRECT`, past
    /// `pending_from` after a sync wrote the partial block): a read takes what lies before
    /// from the disk (so damage there is seen), the rest from `pending`.
    written_to: u64,
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
    /// The next direct write fails with this error number (for tests).
    #[cfg(test)]
    fail_next_write: Option<i32>,
    writeback: Writeback,
    compressor: Compressor,
    stored_bytes: u64,
    /// Packs open for reading, by id.
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

/// The record whose header is at `offset`, if the header is whole and plausible.
fn read_header(file: &mut File, offset: u64, len: u64) -> io::Result<Option<Record>> {
    if offset + HEADER as u64 > len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut header)?;
    let kind = header[44] & !BLAKE3_ADDRESS;
    if &header[..4] != MAGIC || kind > TOMBSTONE {
        return Ok(None);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&header[4..36]);
    let raw_len = u32::from_be_bytes([header[36], header[37], header[38], header[39]]);
    let stored_len = u32::from_be_bytes([header[40], header[41], header[42], header[43]]);
    if kind == TOMBSTONE {
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
            compressed: kind == COMPRESSED,
            hasher: if header[44] & BLAKE3_ADDRESS != 0 {
                ChunkHasher::Blake3
            } else {
                ChunkHasher::Sha256
            },
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
    Ok(location.hasher.hash(&bytes) == *hash)
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

/// One write for the direct writer: `len` bytes of `buffer` (whole blocks) at `offset`.
struct DirectWrite {
    file: Arc<File>,
    offset: u64,
    buffer: Aligned,
    len: usize,
    /// Fails with this error number, as a failing disk's write would (for tests).
    #[cfg(test)]
    fail: Option<i32>,
}

/// What the direct writer has done: writes handed to it and done, the first error it met
/// (kept until the store takes it), and buffers it is done with, for the next writes.
#[derive(Default)]
struct Progress {
    handed: u64,
    done: u64,
    error: Option<io::Error>,
    spare: Vec<Aligned>,
    /// The thread ended (it only does if it panicked while the store lives).
    ended: bool,
}

/// Says the writer's thread ended, however it ends, so no one waits for it in vain.
struct Ended(Arc<(Mutex<Progress>, Condvar)>);

impl Drop for Ended {
    fn drop(&mut self) {
        let (lock, changed) = &*self.0;
        lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        changed.notify_all();
    }
}

/// A thread that makes a store's `O_DIRECT` writes, in the order they are handed to it,
/// while the store goes on hashing and compressing chunks. An error is kept for the
/// store, which sees it at its next write or sync and forgets what was not synced, as
/// after a failed sync.
struct DirectWriter {
    writes: std::sync::mpsc::SyncSender<DirectWrite>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

impl DirectWriter {
    fn start() -> io::Result<DirectWriter> {
        let (writes, queue) = std::sync::mpsc::sync_channel::<DirectWrite>(DIRECT_QUEUE);
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let shared = Arc::clone(&progress);
        std::thread::Builder::new()
            .name("wl-pack-write".to_owned())
            .spawn(move || {
                let _ended = Ended(Arc::clone(&shared));
                for write in queue {
                    let written = Self::write(&write);
                    let (lock, changed) = &*shared;
                    let mut progress = lock.lock().unwrap_or_else(|p| p.into_inner());
                    progress.done += 1;
                    if let Err(err) = written {
                        progress.error.get_or_insert(err);
                    }
                    if progress.spare.len() < DIRECT_QUEUE + 1 {
                        progress.spare.push(write.buffer);
                    }
                    changed.notify_all();
                }
            })?;
        Ok(DirectWriter { writes, progress })
    }

    fn write(write: &DirectWrite) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = write.fail {
            return Err(io::Error::from_raw_os_error(errno));
        }
        super::direct::write_whole(&write.file, write.buffer.head(write.len), write.offset)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer, one the thread is done with when there is one.
    fn buffer(&self) -> Aligned {
        let mut buffer = self.progress().spare.pop().unwrap_or_else(|| {
            Aligned::with_capacity(WRITE_BUFFER + HEADER + super::proto::LEGACY_CHUNK + 1024)
        });
        buffer.clear();
        buffer
    }

    fn hand(&self, write: DirectWrite) -> io::Result<()> {
        self.progress().handed += 1;
        self.writes.send(write).map_err(|_| {
            self.progress().handed -= 1;
            io::Error::other("the pack writer thread is gone")
        })
    }

    /// Waits until every write handed over is done (or the thread ended: then the
    /// writes not done are an error, as a failing disk's).
    fn wait(&self) {
        let (_, changed) = &*self.progress;
        let mut progress = self.progress();
        while progress.done < progress.handed && !progress.ended {
            progress = changed.wait(progress).unwrap_or_else(|p| p.into_inner());
        }
        if progress.done < progress.handed {
            progress.done = progress.handed;
            progress
                .error
                .get_or_insert_with(|| io::Error::other("the pack writer thread ended"));
        }
    }

    fn take_error(&self) -> Option<io::Error> {
        self.progress().error.take()
    }

    fn ended(&self) -> bool {
        self.progress().ended
    }
}

/// A record the kernel is asked to read ahead ([`ChunkStore::read_ahead`]).
pub struct ReadAhead {
    file: Arc<File>,
    start: i64,
    len: i64,
}

impl ReadAhead {
    /// Asks the kernel to start reading the record (`POSIX_FADV_WILLNEED`), so that a
    /// read of it soon after finds it in the page cache. Advice only: a kernel that does
    /// not take it leaves the read as it was.
    pub fn advise(&self) {
        let _ = nix::fcntl::posix_fadvise(
            &*self.file,
            self.start,
            self.len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

/// What [`ChunkStore::plan`] found: the chunk's bytes, or the read that gets them.
enum Planned {
    Ready(Vec<u8>),
    Read(PackRead),
}

/// A chunk's record in a pack no longer written to, read without the store's lock.
struct PackRead {
    file: Arc<File>,
    hash: ChunkHash,
    location: Location,
}

impl PackRead {
    fn run(self) -> Result<Vec<u8>, StoreError> {
        let mut body = vec![0u8; self.location.stored_len as usize];
        self.file
            .read_exact_at(&mut body, self.location.offset + HEADER as u64)
            .map_err(|err| unreadable(&self.hash, &self.location, err))?;
        decode(&self.hash, &self.location, body)
    }
}

fn damaged(hash: &ChunkHash, location: &Location, why: String) -> StoreError {
    StoreError::Damaged {
        hash: hex(hash),
        pack: pack_name(location.pack),
        offset: location.offset,
        why,
    }
}

/// A pack cut short or gone is damage too (it is what a bad disk leaves).
fn unreadable(hash: &ChunkHash, location: &Location, err: io::Error) -> StoreError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => {
            damaged(hash, location, format!("its pack ends before it ({err})"))
        }
        io::ErrorKind::NotFound => damaged(hash, location, format!("its pack is gone ({err})")),
        _ => StoreError::Io(err),
    }
}

/// A record's body as stored, decompressed and checked against its address.
fn decode(hash: &ChunkHash, location: &Location, body: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let bytes = if location.compressed {
        lz4_flex::block::decompress(&body, location.raw_len as usize)
            .map_err(|err| damaged(hash, location, format!("it does not decompress ({err})")))?
    } else {
        body
    };
    if location.hasher.hash(&bytes) != *hash {
        return Err(damaged(
            hash,
            location,
            "its content does not match its address".to_owned(),
        ));
    }
    Ok(bytes)
}

/// Opens a pack for writing, with `O_DIRECT` when `direct` and the filesystem takes it
/// (tmpfs does not); says whether it did.
fn open_pack(path: &Path, truncate: bool, direct: bool) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options
        .create(true)
        .truncate(truncate)
        .read(true)
        .write(true);
    super::direct::open(&options, path, direct)
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

/// `err` with what was being done and the file or folder it was done to.
fn in_file(err: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{doing} {}: {err}", path.display()))
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
            direct_pack: false,
            allow_direct: true,
            direct: None,
            unsynced: 0,
            unflushed: 0,
            unsynced_chunks: Vec::new(),
            rotate: false,
            pending: Aligned::with_capacity(WRITE_BUFFER + HEADER + super::proto::LEGACY_CHUNK),
            pending_from: 0,
            written_to: 0,
            losses: 0,
            unsynced_tombstones: Vec::new(),
            tombstones_unqueued: false,
            #[cfg(test)]
            fail_next_sync: false,
            #[cfg(test)]
            fail_next_write: None,
            writeback: Writeback::default(),
            compressor: Compressor::default(),
            stored_bytes: 0,
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the store, indexing every pack; a record torn by a crash at the end of the
    /// last pack is cut off (it was never part of a recovery point: those are cut only
    /// after a sync).
    pub fn open(dir: &Path) -> io::Result<ChunkStore> {
        Self::open_with(dir, true)
    }

    /// [`ChunkStore::open`], writing packs with `O_DIRECT` only if `direct` (and the
    /// filesystem takes it).
    pub(crate) fn open_with(dir: &Path, direct: bool) -> io::Result<ChunkStore> {
        let ids = std::fs::create_dir_all(dir)
            .and_then(|()| pack_ids(dir))
            .map_err(|err| in_file(err, "cannot read the chunk store's folder", dir))?;
        let mut store = ChunkStore::empty(dir);
        store.allow_direct = direct;
        for (n, &id) in ids.iter().enumerate() {
            let path = dir.join(pack_name(id));
            let valid = store
                .index_pack(id)
                .map_err(|err| in_file(err, "cannot index the chunk store's pack", &path))?;
            let is_last = n + 1 == ids.len();
            if is_last {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .and_then(|file| {
                        if file.metadata()?.len() != valid {
                            file.set_len(valid)?;
                        }
                        Ok(file)
                    })
                    .map_err(|err| {
                        in_file(
                            err,
                            "cannot cut the torn end off the chunk store's pack",
                            &path,
                        )
                    })?;
                // Its records may be in the page cache only (the process ended before a
                // sync), and a point may name them as the store holds them: they are
                // synced now. If that fails, they stay (each is checked when read), and
                // the next chunk starts a new pack.
                let synced = file.sync_all().is_ok();
                drop(file);
                store.start_pack(id, false).map_err(|err| {
                    in_file(err, "cannot open the chunk store's pack to append", &path)
                })?;
                if !synced || store.resume_at(valid).is_err() {
                    // Or its last block cannot be read back to be written again whole:
                    // the records before stay where they are (a damaged one is found
                    // when it is read).
                    if let Some((_, _, len)) = store.current.as_mut() {
                        *len = valid;
                    }
                    store.pending.clear();
                    store.pending_from = valid;
                    store.written_to = valid;
                    store.rotate = true;
                }
            }
        }
        Ok(store)
    }

    /// Makes pack `id` the current one, empty or (not `truncate`) to be appended to once
    /// [`ChunkStore::resume_at`] says where.
    fn start_pack(&mut self, id: u32, truncate: bool) -> io::Result<()> {
        let path = self.dir.join(pack_name(id));
        let (mut file, mut direct) = open_pack(&path, truncate, self.allow_direct)?;
        if direct && !self.direct_writer() {
            // Opened with O_DIRECT, but the writer's thread did not start.
            (file, direct) = open_pack(&path, truncate, false)?;
        }
        self.current = Some((id, Arc::new(file), 0));
        self.direct_pack = direct;
        self.pending.clear();
        self.pending_from = 0;
        self.written_to = 0;
        Ok(())
    }

    /// The direct writer's thread is running (started now if need be).
    fn direct_writer(&mut self) -> bool {
        if self.direct.as_ref().is_some_and(DirectWriter::ended) {
            self.direct = None;
        }
        if self.direct.is_none() {
            self.direct = DirectWriter::start().ok();
        }
        self.direct.is_some()
    }

    /// The current pack's records end at `end`: with `O_DIRECT`, the start of the block
    /// they end in is read back, to be written again whole with the next records.
    fn resume_at(&mut self, end: u64) -> io::Result<()> {
        let Some((_, _, len)) = self.current.as_mut() else {
            return Ok(());
        };
        *len = end;
        self.pending.clear();
        self.written_to = end;
        if !self.direct_pack {
            self.pending_from = end;
            return Ok(());
        }
        self.pending_from = end - end % DIRECT_BLOCK as u64;
        let mut head = vec![0u8; (end - self.pending_from) as usize];
        if let Some((id, _, _)) = &self.current {
            File::open(self.dir.join(pack_name(*id)))?
                .read_exact_at(&mut head, self.pending_from)?;
        }
        self.pending.extend_from_slice(&head);
        Ok(())
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

    /// Stores a chunk under its address by `hasher` (once: a chunk already there is not
    /// written again) and returns the address.
    pub fn put(&mut self, bytes: &[u8], hasher: ChunkHasher) -> io::Result<ChunkHash> {
        let hash = hasher.hash(bytes);
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
        let address = match hasher {
            ChunkHasher::Sha256 => 0,
            ChunkHasher::Blake3 => BLAKE3_ADDRESS,
        };
        record.push(if is_compressed { COMPRESSED } else { RAW } | address);
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
                hasher,
            },
        );
        *len += record_len;
        let id = *id;
        self.stored_bytes += body.len() as u64;
        self.unsynced += record_len;
        self.unflushed += record_len;
        self.unsynced_chunks.push(hash);
        if self.direct_pack {
            if self.pending.len() >= WRITE_BUFFER {
                self.write_ahead()?;
            }
            return Ok(hash);
        }
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
            self.start_pack(id, false)?;
            // The new pack's name is durable before a point can name its chunks.
            sync_dir(&self.dir)?;
            self.rotate = false;
        }
        Ok(())
    }

    /// Writes the records kept in memory to the end of the current pack. When that
    /// fails, the chunks not yet synced are forgotten, as after a failed sync.
    /// With `O_DIRECT`, the last partial block is written padded with zeros, every write
    /// handed to the writer thread is waited for, and the file is cut back to where its
    /// records end.
    fn write_pending(&mut self) -> io::Result<()> {
        if !self.direct_pack {
            if self.pending.is_empty() {
                return Ok(());
            }
            let Some((_, file, _)) = &self.current else {
                return Err(io::Error::other("no pack to write to"));
            };
            if let Err(err) = file.write_all_at(self.pending.as_slice(), self.pending_from) {
                self.forget_unsynced();
                return Err(err);
            }
            self.pending_from += self.pending.len() as u64;
            self.written_to = self.pending_from;
            self.pending.clear();
            return Ok(());
        }
        self.write_ahead()?;
        let (Some((_, file, len)), Some(writer)) = (&self.current, &self.direct) else {
            return Err(io::Error::other("no pack to write to"));
        };
        // The partial block, unless it is on the disk as it is (after a sync).
        let tail = self.written_to < *len && !self.pending.is_empty();
        let handed = if tail {
            let mut buffer = writer.buffer();
            buffer.extend_from_slice(self.pending.as_slice());
            let len = buffer.padded().len();
            writer.hand(DirectWrite {
                file: Arc::clone(file),
                offset: self.pending_from,
                buffer,
                len,
                #[cfg(test)]
                fail: std::mem::take(&mut self.fail_next_write),
            })
        } else {
            Ok(())
        };
        writer.wait();
        let written = handed
            .and_then(|()| writer.take_error().map_or(Ok(()), Err))
            .and_then(|()| if tail { file.set_len(*len) } else { Ok(()) });
        if let Err(err) = written {
            self.failed_write(&err);
            return Err(err);
        }
        self.written_to = *len;
        Ok(())
    }

    /// Hands the pending records' whole blocks to the direct writer (the partial block
    /// they end in stays pending), and reports an error an earlier write met.
    fn write_ahead(&mut self) -> io::Result<()> {
        let (Some((_, file, _)), Some(writer)) = (&self.current, &self.direct) else {
            return Err(io::Error::other("no pack to write to"));
        };
        let whole = self.pending.len() / DIRECT_BLOCK * DIRECT_BLOCK;
        let handed = if whole > 0 {
            let mut next = writer.buffer();
            next.extend_from_slice(&self.pending.as_slice()[whole..]);
            let buffer = std::mem::replace(&mut self.pending, next);
            let offset = self.pending_from;
            self.pending_from += whole as u64;
            self.written_to = self.written_to.max(self.pending_from);
            writer.hand(DirectWrite {
                file: Arc::clone(file),
                offset,
                buffer,
                len: whole,
                #[cfg(test)]
                fail: std::mem::take(&mut self.fail_next_write),
            })
        } else {
            Ok(())
        };
        if let Err(err) = handed.and_then(|()| writer.take_error().map_or(Ok(()), Err)) {
            self.failed_write(&err);
            return Err(err);
        }
        Ok(())
    }

    /// A direct write failed: as after a failed sync; and a filesystem that refused the
    /// write as such (`EINVAL`: blocks it does not take) gets its next packs through the
    /// page cache.
    fn failed_write(&mut self, err: &io::Error) {
        if err.raw_os_error() == Some(libc::EINVAL) {
            self.allow_direct = false;
        }
        self.forget_unsynced();
    }

    /// The next direct write fails with error number `errno`, as a failing disk's would.
    #[cfg(test)]
    pub(crate) fn fail_next_write(&mut self, errno: i32) {
        self.fail_next_write = Some(errno);
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
        // Writes still under way belong to what is forgotten: their errors too.
        if let Some(writer) = &self.direct {
            writer.wait();
            let _ = writer.take_error();
        }
        self.pending.clear();
        // Nothing of this pack is read from memory any more (the next chunk starts a
        // new one).
        self.pending_from = self.current.as_ref().map_or(0, |(_, _, len)| *len);
        self.written_to = self.pending_from;
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
        match self.plan(hash, raw_len)? {
            Planned::Ready(bytes) => Ok(bytes),
            Planned::Read(read) => read.run(),
        }
    }

    /// [`ChunkStore::get`] holding the store's lock only to find the chunk: the read from
    /// its pack and the check happen after, so several threads read at once (a launch's
    /// readers; a disk answers more reads in parallel than one after another).
    pub fn get_from(
        store: &Mutex<ChunkStore>,
        hash: &ChunkHash,
        raw_len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let planned = store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plan(hash, raw_len)?;
        match planned {
            Planned::Ready(bytes) => Ok(bytes),
            Planned::Read(read) => read.run(),
        }
    }

    /// A chunk's bytes, or where to read them: a chunk of the pack being written is read
    /// now (partly from memory, after the writes under way), one of an older pack later.
    fn plan(&self, hash: &ChunkHash, raw_len: usize) -> Result<Planned, StoreError> {
        if *hash == ZERO_CHUNK {
            return Ok(Planned::Ready(vec![0; raw_len]));
        }
        let location = *self
            .index
            .get(hash)
            .ok_or_else(|| StoreError::Missing(hex(hash)))?;
        let current = matches!(&self.current, Some((id, _, _)) if *id == location.pack);
        if !current {
            let file = self
                .reader(location.pack)
                .map_err(|err| unreadable(hash, &location, err))?;
            return Ok(Planned::Read(PackRead {
                file,
                hash: *hash,
                location,
            }));
        }
        let mut body = vec![0u8; location.stored_len as usize];
        let start = location.offset + HEADER as u64;
        // The current pack's last bytes are still in memory (with O_DIRECT, a record may
        // begin on the disk and end in memory).
        let on_disk = self.written_to.saturating_sub(start).min(body.len() as u64) as usize;
        if on_disk > 0 {
            // After a failed write, what it held reads as damage, and is forgotten as
            // such (the sync that writes its tombstones takes the error too).
            if let Some(writer) = &self.direct {
                writer.wait();
            }
            self.reader(location.pack)
                .and_then(|file| file.read_exact_at(&mut body[..on_disk], start))
                .map_err(|err| unreadable(hash, &location, err))?;
        }
        if on_disk < body.len() {
            let at = (start + on_disk as u64 - self.pending_from) as usize;
            let n = body.len() - on_disk;
            body[on_disk..].copy_from_slice(&self.pending.as_slice()[at..at + n]);
        }
        decode(hash, &location, body).map(Planned::Ready)
    }

    /// Where these chunks' records lie, for [`ReadAhead::advise`] after the store's lock
    /// is let go (the advice submits the reads, which may wait for the disk's queue):
    /// the applier names the chunks its queued frames will merge into, and the disk
    /// reads them together rather than one after another. Chunks unknown or in the pack
    /// being written (read after its writes are done) are left out, and so is a pack
    /// that does not open: the read reports that.
    pub fn read_ahead(&self, hashes: &[ChunkHash]) -> Vec<ReadAhead> {
        hashes
            .iter()
            .filter_map(|hash| {
                let location = self.index.get(hash)?;
                if matches!(&self.current, Some((id, _, _)) if *id == location.pack) {
                    return None;
                }
                Some(ReadAhead {
                    file: self.reader(location.pack).ok()?,
                    start: i64::try_from(location.offset + HEADER as u64).ok()?,
                    len: i64::from(location.stored_len),
                })
            })
            .collect()
    }

    /// Pack `id`, through a handle kept open, so consecutive reads (a launch's) get the
    /// kernel's read-ahead; a pack removed under the store is `NotFound`, as if it were
    /// opened anew.
    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let file = match readers.get(&id) {
            Some(file) => Arc::clone(file),
            None => {
                if readers.len() >= READERS {
                    readers.clear();
                }
                let file = Arc::new(File::open(self.dir.join(pack_name(id)))?);
                readers.insert(id, Arc::clone(&file));
                file
            }
        };
        if file.metadata()?.nlink() == 0 {
            readers.remove(&id);
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the pack was removed",
            ));
        }
        Ok(file)
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
        moved.allow_direct = self.allow_direct;
        // Start numbering after the old packs, so a crash halfway leaves both copies
        // and opening the store indexes each chunk once (the newer wins).
        moved.start_pack(first_new, true)?;
        let mut damaged = false;
        for (hash, loc) in keep {
            match self.get(&hash, loc.raw_len as usize) {
                Ok(bytes) => {
                    moved.put(&bytes, loc.hasher)?;
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
    use super::super::proto::CHUNK;
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

    /// Waits for the direct writer, so a test sees on the disk what was handed to it.
    fn settled(store: &ChunkStore) -> &ChunkStore {
        if let Some(writer) = &store.direct {
            writer.wait();
        }
        store
    }

    fn records_wait_in_memory_until_a_megabyte_or_a_sync(direct: bool) {
        let dir = tempdir(if direct { "pending-direct" } else { "pending" });
        let pack = dir.join(pack_name(1));
        let on_disk = |store: &ChunkStore| {
            settled(store);
            std::fs::metadata(&pack).map(|m| m.len()).unwrap_or(0)
        };
        let mut store = ChunkStore::open_with(&dir, direct).expect("open");
        let record = (HEADER + super::super::proto::CHUNK) as u64;
        let mut hashes = Vec::new();
        for seed in 1..=10 {
            hashes.push(store.put(&noise(seed), ChunkHasher::NEW).expect("put"));
        }
        assert_eq!(
            store.direct_pack, direct,
            "O_DIRECT is used where asked for (the temporary folder's filesystem must take it)"
        );
        assert_eq!(on_disk(&store), 0, "ten records wait in memory");
        for (seed, hash) in (1..=10).zip(&hashes) {
            assert_eq!(
                store.get(hash, noise(seed).len()).expect("get"),
                noise(seed)
            );
        }
        // Past a megabyte they are written in one go; the rest keep waiting (with
        // O_DIRECT, whole blocks are written, and the partial one they end in waits).
        let mut seed = 10;
        while on_disk(&store) == 0 && seed < 200 {
            seed += 1;
            hashes.push(store.put(&noise(seed), ChunkHasher::NEW).expect("put"));
        }
        assert!(
            on_disk(&store) >= WRITE_BUFFER as u64,
            "{}",
            on_disk(&store)
        );
        if direct {
            assert_eq!(on_disk(&store) % DIRECT_BLOCK as u64, 0);
            assert_ne!(
                store.pending_from % record,
                0,
                "a record begins on the disk and ends in memory"
            );
        } else {
            assert_eq!(on_disk(&store) % record, 0);
        }
        seed += 1;
        hashes.push(store.put(&noise(seed), ChunkHasher::NEW).expect("put"));
        assert!(on_disk(&store) < seed * record, "the last one waits");
        for (seed, hash) in (1..).zip(&hashes) {
            assert_eq!(
                store.get(hash, noise(seed).len()).expect("get"),
                noise(seed)
            );
        }
        store.sync().expect("sync");
        assert_eq!(
            on_disk(&store),
            seed * record,
            "a sync writes what waits first, and the pack ends where its records do"
        );
        // One more, then the store is closed without a sync: it is written on the way.
        let last = store.put(&noise(seed + 1), ChunkHasher::NEW).expect("put");
        drop(store);
        let mut store = ChunkStore::open_with(&dir, direct).expect("reopen");
        assert_eq!(store.chunk_count(), hashes.len() + 1);
        assert_eq!(
            store.get(&last, noise(seed + 1).len()).expect("get"),
            noise(seed + 1)
        );
        // Reopened, the store appends after the last record (which ends inside a block)
        // without harming it.
        let more: Vec<_> = (seed + 2..seed + 80)
            .map(|seed| store.put(&noise(seed), ChunkHasher::NEW).expect("put"))
            .collect();
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open_with(&dir, direct).expect("reopen");
        assert_eq!(store.chunk_count(), hashes.len() + 1 + more.len());
        for (seed, hash) in (1..).zip(&hashes).chain((seed + 2..).zip(&more)) {
            assert_eq!(
                store.get(hash, noise(seed).len()).expect("get"),
                noise(seed)
            );
        }
        assert_eq!(on_disk(&store), (seed + 79) * record);
    }

    #[test]
    fn records_wait_in_memory_until_a_megabyte_or_a_sync_and_are_read_from_there() {
        records_wait_in_memory_until_a_megabyte_or_a_sync(false);
    }

    #[test]
    fn with_o_direct_whole_blocks_are_written_and_a_record_is_read_across_disk_and_memory() {
        records_wait_in_memory_until_a_megabyte_or_a_sync(true);
    }

    /// A direct write fails with `errno` after one chunk was synced: the error comes
    /// back, what was not synced is forgotten, and the next chunk starts pack 2 (with
    /// O_DIRECT or not, as returned).
    fn a_failed_direct_write(name: &str, errno: i32) -> bool {
        let dir = tempdir(name);
        let mut store = ChunkStore::open(&dir).expect("open");
        let kept = store.put(&noise(1), ChunkHasher::NEW).expect("put");
        store.sync().expect("sync");
        assert!(
            store.direct_pack,
            "the temporary folder's filesystem takes O_DIRECT"
        );
        store.fail_next_write(errno);
        // The error comes back at the next write handed over, or at the sync.
        let mut lost = Vec::new();
        let mut reported = None;
        for seed in 2..200 {
            match store.put(&noise(seed), ChunkHasher::NEW) {
                Ok(hash) => lost.push(hash),
                Err(err) => {
                    reported = Some(err);
                    break;
                }
            }
        }
        let reported = match reported {
            Some(err) => err,
            None => store.sync().expect_err("the failed write is reported"),
        };
        assert_eq!(reported.raw_os_error(), Some(errno), "{reported}");
        assert_eq!(store.losses(), 1);
        assert!(lost.iter().all(|hash| !store.contains(hash)), "forgotten");
        assert_eq!(store.get(&kept, CHUNK).expect("synced before"), noise(1));
        let again = store.put(&noise(2), ChunkHasher::NEW).expect("put");
        let direct = store.direct_pack;
        store.sync().expect("sync");
        assert_eq!(pack_ids(&dir).expect("packs"), vec![1, 2], "a new pack");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&kept, CHUNK).expect("get"), noise(1));
        assert_eq!(store.get(&again, CHUNK).expect("get"), noise(2));
        direct
    }

    #[test]
    fn a_failed_direct_write_forgets_what_was_not_synced_and_the_next_chunk_starts_a_new_pack() {
        assert!(
            a_failed_direct_write("direct-fails", libc::EIO),
            "the next pack is written with O_DIRECT too"
        );
    }

    #[test]
    fn a_filesystem_that_refuses_a_direct_write_gets_the_next_pack_through_the_page_cache() {
        assert!(
            !a_failed_direct_write("direct-refused", libc::EINVAL),
            "after EINVAL the next pack goes through the page cache"
        );
    }

    #[test]
    fn a_pack_cut_short_or_gone_under_an_open_store_is_damage() {
        let dir = tempdir("cut");
        let mut store = ChunkStore::open(&dir).expect("open");
        let a = store.put(&noise(1), ChunkHasher::NEW).expect("put");
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
        let a = store.put(&chunk(3), ChunkHasher::NEW).expect("put");
        let again = store.put(&chunk(3), ChunkHasher::NEW).expect("put");
        assert_eq!(a, again);
        assert_eq!(store.chunk_count(), 1);
        let zero = store.put(&[0u8; 1024], ChunkHasher::NEW).expect("zero");
        assert_eq!(zero, ZERO_CHUNK);
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&a, chunk(3).len()).expect("get"), chunk(3));
    }

    #[test]
    fn a_store_that_cannot_open_names_the_folder_or_the_pack() {
        let dir = tempdir("unopenable");
        // The store's folder is a file.
        let not_a_folder = dir.join("chunks");
        std::fs::write(&not_a_folder, b"x").expect("a file");
        let err = ChunkStore::open(&not_a_folder).err().expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read the chunk store's folder {}: File exists (os error 17)",
                not_a_folder.display()
            )
        );
        // A pack that cannot be read (here a folder in its place) is named, and the
        // packs before it are left as they were.
        let packs = dir.join("packs");
        let mut store = ChunkStore::open(&packs).expect("open");
        store.put(&chunk(5), ChunkHasher::NEW).expect("put");
        store.sync().expect("sync");
        drop(store);
        let first = packs.join(pack_name(1));
        let before = std::fs::read(&first).expect("the first pack");
        let bad = packs.join(pack_name(2));
        std::fs::create_dir(&bad).expect("a folder for a pack");
        let err = ChunkStore::open(&packs).err().expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot index the chunk store's pack {}: Is a directory (os error 21)",
                bad.display()
            )
        );
        assert_eq!(std::fs::read(&first).expect("kept"), before);
    }

    #[test]
    fn chunks_of_either_hash_share_a_store_and_are_checked_with_their_own() {
        let dir = tempdir("hashes");
        let mut store = ChunkStore::open(&dir).expect("open");
        let old = store.put(&noise(1), ChunkHasher::Sha256).expect("put");
        let new = store.put(&noise(1), ChunkHasher::Blake3).expect("put");
        assert_eq!(old, ChunkHasher::Sha256.hash(&noise(1)));
        assert_eq!(new, ChunkHasher::Blake3.hash(&noise(1)));
        // The same bytes under two addresses: two records (dedup is within a hash).
        assert_eq!(store.chunk_count(), 2);
        store.sync().expect("sync");
        drop(store);
        // A SHA-256 record is written as every record was before BLAKE3 came (its flag
        // byte raw or compressed, nothing more), so older packs read as such.
        let bytes = std::fs::read(dir.join(pack_name(1))).expect("pack");
        let flag = |hash: &ChunkHash| bytes[record_at(&bytes, hash) + 44];
        assert_eq!(flag(&old), RAW);
        assert_eq!(flag(&new), RAW | BLAKE3_ADDRESS);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&old, noise(1).len()).expect("sha-256"), noise(1));
        assert_eq!(store.get(&new, noise(1).len()).expect("blake3"), noise(1));
        drop(store);
        // Each is checked with its own hash: damage is found in either.
        for hash in [old, new] {
            damage(&dir, &hash);
            let store = ChunkStore::open(&dir).expect("reopen");
            let err = store.get(&hash, noise(1).len()).expect_err("damaged");
            assert!(
                err.to_string().contains("does not match its address"),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_record_is_cut_off_and_a_damaged_chunk_is_named() {
        let dir = tempdir("torn");
        let mut store = ChunkStore::open(&dir).expect("open");
        let a = store.put(&chunk(5), ChunkHasher::NEW).expect("put");
        let b = store.put(&chunk(9), ChunkHasher::NEW).expect("put");
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
        let again = store
            .put(&chunk(5), ChunkHasher::NEW)
            .expect("stored again");
        assert_eq!(store.get(&again, chunk(5).len()).expect("get"), chunk(5));
    }

    #[test]
    fn a_damaged_header_in_the_middle_loses_only_its_own_record() {
        let dir = tempdir("midheader");
        let mut store = ChunkStore::open(&dir).expect("open");
        let hashes: Vec<ChunkHash> = (1..=4u8)
            .map(|seed| store.put(&chunk(seed), ChunkHasher::NEW).expect("put"))
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
        let fifth = store.put(&chunk(5), ChunkHasher::NEW).expect("put");
        store.sync().expect("sync");
        drop(store);
        let store = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(store.get(&fifth, chunk(5).len()).expect("get"), chunk(5));
    }

    #[test]
    fn garbage_collection_keeps_only_live_chunks() {
        let dir = tempdir("gc");
        let mut store = ChunkStore::open(&dir).expect("open");
        let keep = store.put(&chunk(1), ChunkHasher::NEW).expect("put");
        let drop_me = store.put(&chunk(2), ChunkHasher::NEW).expect("put");
        let freed = store.collect_garbage(&HashSet::from([keep])).expect("gc");
        assert!(freed > 0);
        assert!(store.contains(&keep) && !store.contains(&drop_me));
        let reopened = ChunkStore::open(&dir).expect("reopen");
        assert_eq!(reopened.get(&keep, chunk(1).len()).expect("get"), chunk(1));
        assert!(!reopened.contains(&drop_me));
    }

    /// Flips a byte of the body of the record of `hash` in pack 1.
    /// Where the record of `hash` begins in a pack's bytes.
    fn record_at(bytes: &[u8], hash: &ChunkHash) -> usize {
        bytes
            .windows(HEADER)
            .position(|w| &w[..4] == MAGIC && &w[4..36] == hash)
            .expect("the record")
    }

    fn damage(dir: &Path, hash: &ChunkHash) {
        let pack = dir.join(pack_name(1));
        let mut bytes = std::fs::read(&pack).expect("read pack");
        let at = record_at(&bytes, hash);
        bytes[at + HEADER + 100] ^= 0xff;
        std::fs::write(&pack, &bytes).expect("write pack");
    }

    /// A store in a fresh folder holding `noise(1..=n)`, synced, the first one's record
    /// then damaged on disk; the folder, the store and the chunks' addresses.
    fn with_damage(name: &str, n: u64) -> (PathBuf, ChunkStore, Vec<ChunkHash>) {
        let dir = tempdir(name);
        let mut store = ChunkStore::open(&dir).expect("open");
        let hashes: Vec<ChunkHash> = (1..=n)
            .map(|seed| store.put(&noise(seed), ChunkHasher::NEW).expect("put"))
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
        assert_eq!(store.put(&noise(1), ChunkHasher::NEW).expect("again"), a);
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
        let c = store.put(&noise(3), ChunkHasher::NEW).expect("put");
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
        store
            .put(&noise(1), ChunkHasher::NEW)
            .expect("stored again");
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
        store
            .put(&noise(1), ChunkHasher::NEW)
            .expect("stored again");
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
        store
            .put(&noise(1), ChunkHasher::NEW)
            .expect("stored again");
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
