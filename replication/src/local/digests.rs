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
//! - `digest.pending`: the state at a barrier sent and not yet acknowledged, copied
//!   durably from the working file when the barrier is cut.
//! - `digest.acked`: the state at the last point the server acknowledged.
//!
//! The files cost the source's state disk 8 bytes per block each: 6 GiB per TiB of disk
//! at most, while a barrier waits for its acknowledgement.

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
        let seq = word(0)?;
        let disks = word(WORD)?;
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
        let len = file.metadata().ok()?.len();
        (len == at).then_some(Header { seq, counts })
    }

    /// Where disk `d`'s first digest lies in the file, in bytes.
    fn start(&self, d: usize) -> u64 {
        let before: u64 = self.counts[..d].iter().map(|c| WORD + c * WORD).sum();
        2 * WORD + before + WORD
    }
}

/// The working digests (`digest.work`), read and written a stretch at a time.
pub struct Working {
    file: File,
    path: PathBuf,
    header: Header,
    /// Each disk's first digest's place in the file.
    starts: Vec<u64>,
    bytes: Vec<u8>,
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
        std::fs::copy(point, path)?;
        Working::open(path, header)
    }

    /// A working file at `path` where every block of disks of `counts` blocks has the
    /// digest `each` (the zero block's, when nothing is held yet).
    pub fn filled(path: &Path, counts: &[u64], each: u64) -> io::Result<Working> {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&0u64.to_le_bytes())?;
        out.write_all(&(counts.len() as u64).to_le_bytes())?;
        let run: Vec<u8> = std::iter::repeat_n(each.to_le_bytes(), 8192)
            .flatten()
            .collect();
        for &count in counts {
            out.write_all(&count.to_le_bytes())?;
            let mut left = count;
            while left > 0 {
                let n = left.min(8192);
                out.write_all(&run[..(n * WORD) as usize])?;
                left -= n;
            }
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        let header = Header {
            seq: 0,
            counts: counts.to_vec(),
        };
        Working::open(path, header)
    }

    fn open(path: &Path, header: Header) -> io::Result<Working> {
        let file = File::options().read(true).write(true).open(path)?;
        let starts = (0..header.counts.len()).map(|d| header.start(d)).collect();
        Ok(Working {
            file,
            path: path.to_owned(),
            header,
            starts,
            bytes: Vec::new(),
        })
    }

    /// Each disk's block count.
    pub fn counts(&self) -> &[u64] {
        &self.header.counts
    }

    /// The digests of disk `d`'s blocks from `first` on, as many as `out` holds.
    pub fn read(&mut self, d: usize, first: usize, out: &mut [u64]) -> io::Result<()> {
        self.check(d, first, out.len())?;
        self.bytes.resize(out.len() * WORD as usize, 0);
        self.file
            .read_exact_at(&mut self.bytes, self.starts[d] + first as u64 * WORD)?;
        for (digest, bytes) in out.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            *digest = u64::from_le_bytes(word);
        }
        Ok(())
    }

    /// Records `digests` for disk `d`'s blocks from `first` on.
    pub fn write(&mut self, d: usize, first: usize, digests: &[u64]) -> io::Result<()> {
        self.check(d, first, digests.len())?;
        self.bytes.clear();
        self.bytes
            .extend(digests.iter().flat_map(|digest| digest.to_le_bytes()));
        self.file
            .write_all_at(&self.bytes, self.starts[d] + first as u64 * WORD)
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
    pub fn snapshot(&self, path: &Path, seq: u64) -> io::Result<()> {
        let mut digests = File::open(&self.path)?;
        digests.seek(io::SeekFrom::Start(WORD))?;
        super::volume::write_durably_with(path, |out| {
            out.write_all(&seq.to_le_bytes())?;
            io::copy(&mut digests, out)?;
            Ok(())
        })
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
