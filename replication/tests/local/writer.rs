//! A deterministic writer of a disk image: write k puts a block made from (seed, k) at a
//! block chosen by (seed, k) and records k in the first block, under a shared lock on
//! the file (the agent's freeze takes it exclusively). The image after any number of
//! writes can be computed, so a launched copy can be compared with the source at the
//! barrier it was cut at.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BLOCK: usize = 4096;

pub struct Writer {
    file: File,
    size: u64,
    seed: u64,
}

pub struct Running {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<std::io::Result<()>>,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The image before any write: every fourth block holds data, the rest is zeros.
fn initial(size: u64, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    for (i, block) in bytes.chunks_mut(BLOCK).enumerate().skip(1) {
        if i % 4 == 0 {
            fill(block, mix(seed ^ i as u64));
        }
    }
    bytes
}

fn fill(block: &mut [u8], mut x: u64) {
    for chunk in block.chunks_mut(8) {
        x = mix(x);
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn write_k(bytes: &mut [u8], seed: u64, k: u64) -> (usize, Vec<u8>) {
    let blocks = bytes.len() / BLOCK;
    let index = 1 + (mix(seed.wrapping_add(k)) as usize) % (blocks - 1);
    let mut block = vec![0u8; BLOCK];
    fill(&mut block, mix(seed ^ (k << 20)));
    bytes[index * BLOCK..(index + 1) * BLOCK].copy_from_slice(&block);
    bytes[..8].copy_from_slice(&k.to_le_bytes());
    (index, block)
}

impl Writer {
    pub fn create(path: &Path, size: u64, seed: u64) -> std::io::Result<Writer> {
        std::fs::write(path, initial(size, seed))?;
        Ok(Writer {
            file: File::options().read(true).write(true).open(path)?,
            size,
            seed,
        })
    }

    /// The image after `count` writes.
    pub fn expected(size: u64, seed: u64, count: u64) -> Vec<u8> {
        let mut bytes = initial(size, seed);
        for k in 1..=count {
            write_k(&mut bytes, seed, k);
        }
        bytes
    }

    pub fn count_in(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]))
    }

    pub fn start(self) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (stop2, count2) = (Arc::clone(&stop), Arc::clone(&count));
        let handle = std::thread::spawn(move || {
            let mut scratch = vec![0u8; self.size as usize];
            let mut k = 0;
            while !stop2.load(Ordering::SeqCst) {
                k += 1;
                let (index, block) = write_k(&mut scratch, self.seed, k);
                self.file.lock_shared()?;
                self.file.write_all_at(&block, (index * BLOCK) as u64)?;
                self.file.write_all_at(&k.to_le_bytes(), 0)?;
                self.file.unlock()?;
                count2.store(k, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Ok(())
        });
        Running {
            stop,
            count,
            handle,
        }
    }
}

impl Running {
    /// Stops writing; returns how many writes were made.
    pub fn stop(self) -> std::io::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| std::io::Error::other("the writer panicked"))??;
        Ok(self.count.load(Ordering::SeqCst))
    }
}
