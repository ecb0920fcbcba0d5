//! Image files mapped into memory for the agent's passes: a pass hashes each block where
//! it lies in the page cache instead of copying it out first (about three times faster
//! over a cached 4 GiB image here; BENCHMARKS.md). Where most blocks change (the first
//! pass, a large rewrite) the agent copies each stretch out once and hashes and sends the
//! copy instead. Only regular files are mapped: a block device is read with `pread`, so a
//! bad sector is an error that names the disk and byte.
//!
//! The bytes of a mapping may change while they are read (the source keeps writing), so
//! the agent copies every run it sends from one and hashes the copy: what it records as
//! sent is what it sent.
//!
//! Reading a mapping past the end of a file that shrank raises SIGBUS. The agent's binary
//! installs [`install_sigbus_handler`], which names the disk and the byte and exits 1.
//!
//! The bytes behind [`Mapping::bytes`] belong to the file: other processes may change
//! them while they are read (formally a data race Rust does not model; the agent only
//! hashes and copies them, and a torn read shows as a changed block the next pass sends
//! again), and a file that shrinks makes reading them fault. More than 64 mappings at
//! once are read all the same, without a name in the fault's message.
//!
//! The only module of the workspace that may use `unsafe` (`mmap`, `munmap`, `sigaction`
//! and the handler's `write`); `tests/unsafe_code.rs` fails if another one does.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Mappings the SIGBUS handler can name: base address, length and the disk's name.
const SLOTS: usize = 64;
static BASES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static NAMES: [AtomicPtr<u8>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static NAME_LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// A regular file mapped read-only, whole.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    slot: Option<usize>,
    /// The disk's name, read by the SIGBUS handler while the slot names it.
    _name: Box<[u8]>,
}

// SAFETY: the mapping is read-only and lives until the last handle is dropped; threads
// only read it.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The file mapped, when it is a regular file of `len` bytes and the kernel maps it;
    /// `None` means: read it with `pread`.
    pub fn of(file: &File, len: u64, name: &str) -> Option<Mapping> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || len == 0 {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        // SAFETY: a fresh read-only shared mapping of a file we hold open; the kernel
        // picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let name: Box<[u8]> = name.as_bytes().into();
        let slot = (0..SLOTS).find(|&i| {
            BASES[i]
                .compare_exchange(0, ptr as usize, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if let Some(i) = slot {
            NAMES[i].store(name.as_ptr().cast_mut(), Ordering::SeqCst);
            NAME_LENS[i].store(name.len(), Ordering::SeqCst);
            LENS[i].store(len, Ordering::SeqCst);
        }
        Some(Mapping {
            ptr,
            len,
            slot,
            _name: name,
        })
    }

    /// `n` bytes at `offset`; they may change while they are read.
    pub fn bytes(&self, offset: u64, n: usize) -> &[u8] {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len);
        let n = n.min(self.len - start);
        // SAFETY: within the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>().add(start), n) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            LENS[i].store(0, Ordering::SeqCst);
            NAME_LENS[i].store(0, Ordering::SeqCst);
            NAMES[i].store(std::ptr::null_mut(), Ordering::SeqCst);
            BASES[i].store(0, Ordering::SeqCst);
        }
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

fn write_all(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: writing a live buffer to standard error.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Decimal digits of `n` into `buf`, without allocating (for the signal handler).
fn digits(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    for i in 0..SLOTS {
        let base = BASES[i].load(Ordering::SeqCst);
        let len = LENS[i].load(Ordering::SeqCst);
        if base == 0 || address < base || address >= base + len {
            continue;
        }
        let name = NAMES[i].load(Ordering::SeqCst);
        let name_len = NAME_LENS[i].load(Ordering::SeqCst);
        write_all(b"wavelift-agent: cannot read the disk ");
        if !name.is_null() {
            // SAFETY: the name lives as long as the slot names it.
            write_all(unsafe { std::slice::from_raw_parts(name, name_len) });
        }
        write_all(b" at byte ");
        let mut buf = [0u8; 20];
        write_all(digits(address - base, &mut buf));
        write_all(
            b": it shrank, or its storage failed, while it was replicated (SIGBUS); a disk \
              must keep its size while replicated (install the agent again for a new size)\n",
        );
        // SAFETY: ends the process at once, as a handler may.
        unsafe { libc::_exit(1) };
    }
    // Not one of ours: the default action, when the fault repeats on return.
    // SAFETY: resets the disposition of SIGBUS.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// Makes a read past the end of a shrunken mapped disk a clear message and exit 1
/// instead of a crash without a word (the agent's binary calls it first thing).
pub fn install_sigbus_handler() {
    // SAFETY: installs a handler that only reads atomics, writes to stderr and exits.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_mapping_reads_the_file_and_sees_later_writes() -> TestResult {
        let path = std::env::temp_dir().join(format!("wl-mapped-{}", std::process::id()));
        File::create(&path)?.write_all(&[7u8; 8192])?;
        let file = File::open(&path)?;
        let map = Mapping::of(&file, 8192, "disk").ok_or("mapped")?;
        assert_eq!(map.bytes(4096, 4096), &[7u8; 4096][..]);
        assert_eq!(map.bytes(8000, 4096).len(), 192, "clipped at the end");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .write_all(&[9u8; 16])?;
        assert_eq!(map.bytes(0, 16), &[9u8; 16][..]);
        let slot = map.slot.ok_or("a slot for the handler")?;
        assert_eq!(LENS[slot].load(Ordering::SeqCst), 8192);
        drop(map);
        assert_eq!(BASES[slot].load(Ordering::SeqCst), 0, "the slot is freed");
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn devices_and_empty_files_are_not_mapped() -> TestResult {
        let null = File::open("/dev/null")?;
        assert!(Mapping::of(&null, 4096, "null").is_none());
        let mut buf = [0u8; 20];
        assert_eq!(digits(0, &mut buf), b"0");
        assert_eq!(digits(4_294_967_296, &mut buf), b"4294967296");
        Ok(())
    }
}
