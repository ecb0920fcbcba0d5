//! Direct I/O (`O_DIRECT`) where the filesystem takes it: the chunk store's packs and a
//! launch's images are written past the page cache (on this machine writing through it
//! took a fifth of what the disk takes, and half of the store's time went to copying into
//! it; BENCHMARKS.md). Direct I/O wants file offsets, lengths and memory aligned to the
//! disk's blocks: [`DIRECT_BLOCK`], and [`Aligned`] buffers. Where the filesystem refuses
//! `O_DIRECT` (tmpfs), [`open`] says so and the caller goes through the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Direct writes and reads start and end on multiples of this, in memory aligned to it
/// (4 KiB covers disks of 512-byte and of 4 KiB sectors).
pub const DIRECT_BLOCK: usize = 4096;

/// Opens `path` with `options`, and `O_DIRECT` when `direct` and the filesystem takes it;
/// says whether it did.
pub fn open(options: &OpenOptions, path: &Path, direct: bool) -> io::Result<(File, bool)> {
    if direct {
        match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            Err(err) => return Err(err),
        }
    }
    Ok((options.open(path)?, false))
}

/// Writes `buf` at `offset` (a multiple of `DIRECT_BLOCK`); with `direct`, padded with
/// zeros to whole blocks (the caller cuts the file back if that passed its end).
pub fn write_at(file: &File, buf: &mut Aligned, offset: u64, direct: bool) -> io::Result<()> {
    if direct {
        write_whole(file, buf.padded(), offset)
    } else {
        file.write_all_at(buf.as_slice(), offset)
    }
}

/// One direct write of `bytes` at `offset`: a short one (a full disk) is an error, not a
/// rest to write at an offset `O_DIRECT` refuses (`EINVAL`).
pub fn write_whole(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    loop {
        return match file.write_at(bytes, offset) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the disk took {n} of {} bytes written at byte {offset}",
                    bytes.len()
                ),
            )),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => Err(err),
        };
    }
}

/// Reads `len` bytes at `offset` (a multiple of `DIRECT_BLOCK`) into `buf`; with
/// `direct`, whole blocks, the last of which may pass the file's end.
pub fn read_at<'b>(
    file: &File,
    buf: &'b mut Aligned,
    offset: u64,
    len: usize,
    direct: bool,
) -> io::Result<&'b [u8]> {
    let room = if direct {
        len.next_multiple_of(DIRECT_BLOCK)
    } else {
        len
    };
    buf.clear();
    buf.reserve(room);
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf.room_mut(room)[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "failed to fill whole buffer",
        ));
    }
    Ok(&buf.room_mut(room)[..len])
}

/// A byte buffer whose first byte sits at an address aligned to `DIRECT_BLOCK`, as
/// `O_DIRECT` needs, without `unsafe`: a vector one block longer, used from its first
/// aligned byte on.
pub struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn with_capacity(capacity: usize) -> Aligned {
        let raw = vec![0u8; capacity + DIRECT_BLOCK];
        let start = raw.as_ptr().align_offset(DIRECT_BLOCK);
        Aligned { raw, start, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Room for `more` bytes past the end.
    pub fn reserve(&mut self, more: usize) {
        let needed = self.len + more;
        if needed > self.capacity() {
            let mut grown = Aligned::with_capacity(needed.max(2 * self.capacity()));
            grown.extend_from_slice(self.as_slice());
            *self = grown;
        }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    pub fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The first `n` bytes of the buffer's room (past `len`: whatever is there, zeros
    /// after [`Aligned::padded`]).
    pub fn head(&self, n: usize) -> &[u8] {
        &self.raw[self.start..self.start + n]
    }

    /// The first `n` bytes of the buffer's room, to be filled (`n` at most its capacity).
    fn room_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + n]
    }

    /// The bytes padded with zeros to whole blocks (the bytes stay as they are).
    pub fn padded(&mut self) -> &[u8] {
        let end = self.len.next_multiple_of(DIRECT_BLOCK);
        self.reserve(end - self.len);
        let (from, to) = (self.start + self.len, self.start + end);
        self.raw[from..to].fill(0);
        &self.raw[self.start..to]
    }
}
