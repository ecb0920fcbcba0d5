//! The agent's record of what the server holds, block by block: an 8-byte digest
//! ([`super::proto::block_digest`]) of every 4 KiB block, as of the base recovery point
//! and with every block sent since. Held whole in memory it took 2 GiB per TiB of disk,
//! and three times that while the agent reconnected; it lives in files of the agent's
//! state folder instead, read and written a stretch at a time, so the agent's memory does
//! not grow with its disks (the page cache holds what the kernel can spare).
//!
//! Three files, one format (little-endian u64s: the recovery point's seq, the number of
//! disks, then per disk its block count and its blocks' digests):
//! - `digest.work`: what the server holds now, which each pass reads and updates. It is
//!   made anew from a point's file at each connection, so it need not be durable.
//! - `digest.pending`: the state at the last barrier sent, copied durably from the
//!   working file when the barrier is cut; it becomes `digest.acked` when the server
//!   acknowledges it (a refused barrier's file waits to be replaced by the next).
//! - `digest.acked`: the state at the last point the server acknowledged.
//!
//! The files cost the source's state disk 8 bytes per block each, 2 GiB per TiB of disk:
//! three such files while a barrier waits for its acknowledgement, four while the next
//! barrier's file is written after a refused one.

use std::fs::File;
use std::io::{self, Seek as _, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const WORD: u64 = 8;

/// What a digest file says of itself: its point's seq and each disk's block count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub counts: Vec<u64>,
}

impl Header {
    /// The header of the file at `path`, or `None` when the file is missing, unreadable,
    /// or not as long as its header says (cut short by a crash, or grown).
    pub fn read(path: &Path) -> Option<Header> {
        let file = File::open(path).ok()?;
        let word = |at: u64| {
            let mut bytes = [0u8; 8];
            file.read_exact_at(&mut bytes, at).ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        let len = file.metadata().ok()?.len();
        let seq = word(0)?;
        let disks = word(WORD)?;
        // A count per disk at least: a damaged count is not read a word at a time.
        if disks > len.saturating_sub(2 * WORD) / WORD {
            return None;
        }
        let mut counts = Vec::new();
        // Each disk's count lies past the digests of the disk before.
        let mut at = 2 * WORD;
        for _ in 0..disks {
            let count = word(at)?;
            counts.push(count);
            at = at
                .checked_add(WORD)?
                .checked_add(count.checked_mul(WORD)?)?;
        }
        (len == at).then_some(Header { seq, counts })
    }

    /// Where disk `d`'s first digest lies in the file, in bytes.
    fn start(&self, d: usize) -> u64 {
        let before: u64 = self.counts[..d].iter().map(|c| WORD + c * WORD).sum();
        2 * WORD + before + WORD
    }
}

/// The working file is read and written through a window of this many digests (64 KiB
/// of the file, 32 MiB of disk): a pass makes a system call per window, not per stretch.
const WINDOW: usize = 8192;

/// The working digests (`digest.work`), read and written through a window. The file is
/// locked while an agent uses it: a second agent started on the same state folder stops
/// with an error instead of rewriting the first one's digests.
pub struct Working {
    file: File,
    path: PathBuf,
    header: Header,
    /// Each disk's first digest's place in the file.
    starts: Vec<u64>,
    window: Option<Window>,
    bytes: Vec<u8>,
}

/// Digests of one disk held in memory, from block `first` on; `dirty` until written back.
struct Window {
    disk: usize,
    first: usize,
    digests: Vec<u64>,
    dirty: bool,
}

impl Working {
    /// A working file at `path` that holds the digests of the point file `point`.
    pub fn copy_of(point: &Path, path: &Path) -> io::Result<Working> {
        let header = Header::read(point).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is cut short or unreadable", point.display()),
            )
        })?;
        let mut file = locked(path)?;
        file.set_len(0)?;
        io::copy(&mut File::open(point)?, &mut file)?;
        Ok(Working::with(file, path, header))
    }

    /// A working file at `path` where every block of disks of `counts` blocks has the
    /// digest `each` (the zero block's, when nothing is held yet).
    pub fn filled(path: &Path, counts: &[u64], each: u64) -> io::Result<Working> {
        let file = locked(path)?;
        file.set_len(0)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&0u64.to_le_bytes())?;
        out.write_all(&(counts.len() as u64).to_le_bytes())?;
        let run: Vec<u8> = std::iter::repeat_n(each.to_le_bytes(), WINDOW)
            .flatten()
            .collect();
        for &count in counts {
            out.write_all(&count.to_le_bytes())?;
            let mut left = count;
            while left > 0 {
                let n = left.min(WINDOW as u64);
                out.write_all(&run[..(n * WORD) as usize])?;
                left -= n;
            }
        }
        out.flush()?;
        drop(out);
        let header = Header {
            seq: 0,
            counts: counts.to_vec(),
        };
        Ok(Working::with(file, path, header))
    }

    fn with(file: File, path: &Path, header: Header) -> Working {
        let starts = (0..header.counts.len()).map(|d| header.start(d)).collect();
        Working {
            file,
            path: path.to_owned(),
            header,
            starts,
            window: None,
            bytes: Vec::new(),
        }
    }

    /// Each disk's block count.
    pub fn counts(&self) -> &[u64] {
        &self.header.counts
    }

    /// The digests of disk `d`'s blocks from `first` on, as many as `out` holds.
    pub fn read(&mut self, d: usize, first: usize, out: &mut [u64]) -> io::Result<()> {
        let (window, at) = self.window_over(d, first, out.len())?;
        out.copy_from_slice(&window.digests[at..at + out.len()]);
        Ok(())
    }

    /// Records `digests` for disk `d`'s blocks from `first` on.
    pub fn write(&mut self, d: usize, first: usize, digests: &[u64]) -> io::Result<()> {
        let (window, at) = self.window_over(d, first, digests.len())?;
        window.digests[at..at + digests.len()].copy_from_slice(digests);
        window.dirty = true;
        Ok(())
    }

    /// The window that holds disk `d`'s blocks `first..first + n` (read from the file
    /// when the current one does not), and where `first` lies in it.
    fn window_over(
        &mut self,
        d: usize,
        first: usize,
        n: usize,
    ) -> io::Result<(&mut Window, usize)> {
        self.check(d, first, n)?;
        let held = self.window.as_ref().is_some_and(|w| {
            w.disk == d && first >= w.first && first + n <= w.first + w.digests.len()
        });
        if !held {
            self.write_back()?;
            self.window = None;
            let count = self.header.counts[d] as usize;
            let len = (count - first).min(WINDOW.max(n));
            self.bytes.resize(len * WORD as usize, 0);
            self.file
                .read_exact_at(&mut self.bytes, self.starts[d] + first as u64 * WORD)?;
            let digests = self
                .bytes
                .chunks_exact(8)
                .map(|bytes| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(bytes);
                    u64::from_le_bytes(word)
                })
                .collect();
            self.window = Some(Window {
                disk: d,
                first,
                digests,
                dirty: false,
            });
        }
        let window = self
            .window
            .as_mut()
            .ok_or_else(|| io::Error::other("no window of digests"))?;
        let at = first - window.first;
        Ok((window, at))
    }

    /// Writes the window back to the file if it changed.
    fn write_back(&mut self) -> io::Result<()> {
        let Some(window) = self.window.as_mut().filter(|w| w.dirty) else {
            return Ok(());
        };
        self.bytes.clear();
        self.bytes.extend(
            window
                .digests
                .iter()
                .flat_map(|digest| digest.to_le_bytes()),
        );
        self.file.write_all_at(
            &self.bytes,
            self.starts[window.disk] + window.first as u64 * WORD,
        )?;
        window.dirty = false;
        Ok(())
    }

    fn check(&self, d: usize, first: usize, n: usize) -> io::Result<()> {
        let count = self.header.counts.get(d).copied().unwrap_or(0);
        if (first + n) as u64 > count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "blocks {first} to {} of disk {d} are past its {count} blocks in {}",
                    first + n,
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Copies the working digests durably to `path` as the state of point `seq`.
    pub fn snapshot(&mut self, path: &Path, seq: u64) -> io::Result<()> {
        self.write_back()?;
        let mut digests = io::BufReader::with_capacity(1 << 20, File::open(&self.path)?);
        digests.seek(io::SeekFrom::Start(WORD))?;
        super::volume::write_durably_with(path, |out| {
            out.write_all(&seq.to_le_bytes())?;
            io::copy(&mut digests, out)?;
            Ok(())
        })
    }
}

/// The working file at `path`, opened and locked for this agent alone.
fn locked(path: &Path) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is in use by another agent: one agent per state folder",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wl-digests-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    /// Digests written a stretch at a time read back, survive a snapshot under its seq,
    /// and a copy of the snapshot holds them; a file cut short is no state.
    #[test]
    fn digests_read_back_through_a_snapshot_and_not_when_cut_short() {
        let dir = scratch("roundtrip");
        // Past one buffer's worth of digests on the first disk, none on the second.
        let counts = [20_000u64, 0, 3];
        let mut work = Working::filled(&dir.join("digest.work"), &counts, 7).expect("fill");
        assert_eq!(work.counts(), &counts);
        let mut out = vec![0u64; 20_000];
        work.read(0, 0, &mut out).expect("read");
        assert!(out.iter().all(|&d| d == 7));
        let mine: Vec<u64> = (0..1_000u64).map(|i| i * 0x9e37_79b9).collect();
        work.write(0, 19_000, &mine).expect("write");
        work.write(2, 1, &[1, 2]).expect("write");
        let pending = dir.join("digest.pending");
        work.snapshot(&pending, 42).expect("snapshot");
        assert_eq!(
            Header::read(&pending),
            Some(Header {
                seq: 42,
                counts: counts.to_vec()
            })
        );
        let len = std::fs::metadata(&pending).expect("meta").len();
        assert_eq!(len, 8 * (2 + 1 + 20_000 + 1 + 1 + 3));

        let mut again = Working::copy_of(&pending, &dir.join("digest.work2")).expect("copy");
        let mut tail = vec![0u64; 1_001];
        again.read(0, 18_999, &mut tail).expect("read");
        assert_eq!(tail[0], 7);
        assert_eq!(&tail[1..], &mine[..]);
        let mut third = [0u64; 3];
        again.read(2, 0, &mut third).expect("read");
        assert_eq!(third, [7, 1, 2]);
        // Past a disk's end is an error, not another disk's digests.
        assert!(again.read(2, 1, &mut third).is_err());
        assert!(again.write(1, 0, &[1]).is_err());

        File::options()
            .write(true)
            .open(&pending)
            .and_then(|f| f.set_len(len - 8))
            .expect("cut");
        assert_eq!(Header::read(&pending), None, "a file cut short is no state");
        assert!(Working::copy_of(&pending, &dir.join("digest.work3")).is_err());
        assert_eq!(Header::read(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A second agent on the same state folder is refused while the first holds its
    /// working file, and takes it once the first is gone.
    #[test]
    fn one_agent_at_a_time_holds_the_working_file() {
        let dir = scratch("lock");
        let path = dir.join("digest.work");
        let first = Working::filled(&path, &[4], 1).expect("fill");
        let second = Working::filled(&path, &[4], 2).err().expect("refused");
        assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
        assert!(
            second.to_string().contains("in use by another agent"),
            "{second}"
        );
        let mut out = [0u64; 4];
        let mut first = first;
        first.read(0, 0, &mut out).expect("read");
        assert_eq!(out, [1; 4], "the first one's digests are left alone");
        drop(first);
        let mut again = Working::filled(&path, &[4], 3).expect("taken");
        again.read(0, 0, &mut out).expect("read");
        assert_eq!(out, [3; 4]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A digest file written by the agents before this module (their whole digests at
    /// once) reads the same way: the format did not change.
    #[test]
    fn a_file_in_the_earlier_agents_layout_is_read() {
        let dir = scratch("layout");
        let path = dir.join("digest.acked");
        let words: Vec<u64> = vec![9, 2, 2, 11, 12, 1, 13];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(
            Header::read(&path),
            Some(Header {
                seq: 9,
                counts: vec![2, 1]
            })
        );
        let mut work = Working::copy_of(&path, &dir.join("digest.work")).expect("copy");
        let mut out = [0u64; 2];
        work.read(0, 0, &mut out).expect("read");
        assert_eq!(out, [11, 12]);
        work.read(1, 0, &mut out[..1]).expect("read");
        assert_eq!(out[0], 13);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
