//! `wavelift-agent restore`: the source's end of a failback. The engine replicated the
//! cutover copy back into its staging area (reverse replication); this writes that
//! recovery point onto the source's own disks, sending only what differs, through the
//! source's shell (so the source needs no connection to Wavelift for it).
//!
//! Two requests, each read from standard input and answered with one JSON line:
//! - `compare`: a header line, then each disk's chunk addresses (32 bytes per chunk,
//!   zeros for a chunk of zeros); the answer names the chunks whose content on
//!   the disk differs: `{"differ":[[disk,chunk],...],"read":BYTES}`.
//! - `write`: a header line, then records (disk u16, chunk u64, length u32, codec u8,
//!   payload length u32, the chunk's address, payload); each chunk is checked against
//!   its address before it is written, the disks are synced, and every written chunk is
//!   read back and checked again: `{"written":CHUNKS,"bytes":BYTES}`.
//!
//! The header is `{"mode":"compare"|"write","disks":[{"name":PATH,"size":BYTES}],
//! "chunk":BYTES,"hash":"sha256"|"blake3"}`: the chunk size of the copy's recovery point
//! (64 KiB when absent, as before sizes were recorded) and what its addresses are hashes
//! of (SHA-256 when absent, as before that was recorded). A disk smaller than the
//! copy's is refused before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use super::proto::{BLOCK, ChunkHash, ChunkHasher, DiskInfo, LEGACY_CHUNK, chunk_count, chunk_len};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Compare,
    Write,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub mode: Mode,
    pub disks: Vec<DiskInfo>,
    #[serde(default = "legacy_chunk")]
    pub chunk: usize,
    #[serde(default)]
    pub hash: ChunkHasher,
}

fn legacy_chunk() -> usize {
    LEGACY_CHUNK
}

/// The answer to `compare`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Differ {
    pub differ: Vec<(u16, u64)>,
    pub read: u64,
}

/// The answer to `write`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub written: u64,
    pub bytes: u64,
}

/// A record of a `write` request: one chunk.
pub struct Record<'a> {
    pub disk: u16,
    pub chunk: u64,
    pub bytes: &'a [u8],
    pub hash: ChunkHash,
}

const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// A `compare` request for these disks and their chunk maps.
pub fn compare_request(
    disks: &[DiskInfo],
    (chunk, hash): (usize, ChunkHasher),
    maps: &[Vec<ChunkHash>],
) -> Vec<u8> {
    let mut out = header(Mode::Compare, disks, chunk, hash);
    for map in maps {
        for hash in map {
            out.extend_from_slice(hash);
        }
    }
    out
}

/// A `write` request carrying these chunks, compressed where that pays.
pub fn write_request(
    disks: &[DiskInfo],
    (chunk, hash): (usize, ChunkHasher),
    records: &[Record<'_>],
) -> Vec<u8> {
    let mut out = header(Mode::Write, disks, chunk, hash);
    for record in records {
        let compressed = lz4_flex::block::compress(record.bytes);
        let (codec, payload) = if compressed.len() < record.bytes.len() {
            (CODEC_LZ4, &compressed[..])
        } else {
            (CODEC_RAW, record.bytes)
        };
        out.extend_from_slice(&record.disk.to_be_bytes());
        out.extend_from_slice(&record.chunk.to_be_bytes());
        out.extend_from_slice(&(record.bytes.len() as u32).to_be_bytes());
        out.push(codec);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&record.hash);
        out.extend_from_slice(payload);
    }
    out
}

fn header(mode: Mode, disks: &[DiskInfo], chunk: usize, hash: ChunkHasher) -> Vec<u8> {
    let header = Header {
        mode,
        disks: disks.to_vec(),
        chunk,
        hash,
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Runs one request from `input`, writing its answer line to `output`.
pub fn serve(input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut input = BufReader::new(input);
    let mut line = String::new();
    input.read_line(&mut line)?;
    let header: Header = serde_json::from_str(line.trim())
        .map_err(|err| invalid(format!("the request's header does not read: {err}")))?;
    if !(BLOCK..=LEGACY_CHUNK).contains(&header.chunk) || !header.chunk.is_power_of_two() {
        return Err(invalid(format!(
            "the request's chunks are {} bytes (a power of two from 4 KiB to 64 KiB is read)",
            header.chunk
        )));
    }
    let mut files = Vec::new();
    for disk in &header.disks {
        let writable = matches!(header.mode, Mode::Write);
        let block_device = std::fs::metadata(&disk.name).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt as _;
            m.file_type().is_block_device()
        });
        let mut options = OpenOptions::new();
        options.read(true).write(writable);
        if writable && block_device {
            // Linux refuses O_EXCL on a block device that is mounted or in use:
            // writing under a mounted filesystem would corrupt it.
            use std::os::unix::fs::OpenOptionsExt as _;
            options.custom_flags(libc::O_EXCL);
        }
        let mut file = options.open(&disk.name).map_err(|err| {
            if err.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    err.kind(),
                    format!(
                        "{} is in use (mounted, or held by another process): a failback writes the disk of a source that is not running it; boot the source from rescue media, or unmount it",
                        disk.name
                    ),
                )
            } else {
                io::Error::new(err.kind(), format!("{}: {err}", disk.name))
            }
        })?;
        // A block device's size is where its end is; an image's is its length.
        let size = file.seek(SeekFrom::End(0))?;
        if size < disk.size {
            return Err(invalid(format!(
                "{} holds {size} bytes, the copy {}: the source's disk is smaller than its copy; nothing was written",
                disk.name, disk.size
            )));
        }
        files.push(file);
    }
    let answer = match header.mode {
        Mode::Compare => serde_json::to_vec(&compare(&mut input, &header, &files)?),
        Mode::Write => serde_json::to_vec(&write(&mut input, &header, &files)?),
    }
    .map_err(|err| invalid(err.to_string()))?;
    output.write_all(&answer)?;
    output.write_all(b"\n")?;
    output.flush()
}

fn compare(input: &mut impl Read, header: &Header, files: &[File]) -> io::Result<Differ> {
    let mut answer = Differ::default();
    let size = header.chunk;
    let mut buffer = vec![0u8; size];
    for (index, (disk, file)) in header.disks.iter().zip(files).enumerate() {
        for chunk in 0..chunk_count(disk.size, size) {
            let mut expected = [0u8; 32];
            input.read_exact(&mut expected).map_err(|err| {
                invalid(format!(
                    "the chunk addresses of {} end early: {err}",
                    disk.name
                ))
            })?;
            let len = chunk_len(disk.size, size, chunk);
            file.read_exact_at(&mut buffer[..len], chunk * size as u64)?;
            answer.read += len as u64;
            if header.hash.hash(&buffer[..len]) != expected {
                answer.differ.push((index as u16, chunk));
            }
        }
    }
    Ok(answer)
}

fn write(input: &mut impl Read, header: &Header, files: &[File]) -> io::Result<Written> {
    let (disks, size) = (&header.disks, header.chunk);
    let mut answer = Written::default();
    let mut written = Vec::new();
    loop {
        let mut head = [0u8; 2 + 8 + 4 + 1 + 4 + 32];
        match input.read_exact(&mut head[..1]) {
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
            other => other?,
        }
        input.read_exact(&mut head[1..])?;
        let disk = u16::from_be_bytes([head[0], head[1]]);
        let chunk = u64::from_be_bytes(head[2..10].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[10..14].try_into().unwrap_or_default()) as usize;
        let codec = head[14];
        let stored = u32::from_be_bytes(head[15..19].try_into().unwrap_or_default()) as usize;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&head[19..51]);
        let Some(info) = disks.get(disk as usize) else {
            return Err(invalid(format!(
                "a chunk for disk {disk}, which the header has not"
            )));
        };
        if chunk >= chunk_count(info.size, size)
            || len != chunk_len(info.size, size, chunk)
            || stored > size + 1024
        {
            return Err(invalid(format!(
                "chunk {chunk} of {} is out of the disk or of the wrong length",
                info.name
            )));
        }
        let mut payload = vec![0u8; stored];
        input.read_exact(&mut payload)?;
        let bytes = match codec {
            CODEC_RAW => payload,
            CODEC_LZ4 => lz4_flex::block::decompress(&payload, len)
                .map_err(|err| invalid(format!("chunk {chunk} does not decompress: {err}")))?,
            other => return Err(invalid(format!("unknown codec {other}"))),
        };
        if bytes.len() != len || header.hash.hash(&bytes) != hash {
            return Err(invalid(format!(
                "chunk {chunk} of {} arrived damaged (its content does not match its address); what came before it was written",
                info.name
            )));
        }
        files[disk as usize].write_all_at(&bytes, chunk * size as u64)?;
        written.push((disk, chunk, hash));
        answer.written += 1;
        answer.bytes += len as u64;
    }
    for file in files {
        file.sync_all()?;
    }
    let mut buffer = vec![0u8; size];
    for (disk, chunk, hash) in written {
        let info = &disks[disk as usize];
        let len = chunk_len(info.size, size, chunk);
        files[disk as usize].read_exact_at(&mut buffer[..len], chunk * size as u64)?;
        if header.hash.hash(&buffer[..len]) != hash {
            return Err(invalid(format!(
                "chunk {chunk} of {} reads back other than it was written: check the disk",
                info.name
            )));
        }
    }
    Ok(answer)
}

/// `wavelift-agent restore`: one request on standard input, its answer on standard
/// output; a failure is said on standard error with exit status 1.
pub fn main() -> i32 {
    match serve(io::stdin().lock(), io::stdout().lock()) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("wavelift-agent restore: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    #[test]
    fn compare_then_write_makes_the_disk_the_copy() {
        // Today's chunks and addresses, and those of a staging folder from before sizes
        // and hashes were recorded.
        compare_then_write_with(super::super::proto::CHUNK, ChunkHasher::NEW);
        compare_then_write_with(LEGACY_CHUNK, ChunkHasher::Sha256);
    }

    fn compare_then_write_with(chunk: usize, hasher: ChunkHasher) {
        let dir = std::env::temp_dir().join(format!("wl-restore-{}-{chunk}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("disk.img");
        let size = 3 * chunk + 1000;
        let mut source = pattern(size, 3);
        source[chunk..2 * chunk].fill(0);
        std::fs::write(&path, &source).expect("source");
        let mut copy = source.clone();
        copy[10] ^= 0xff; // chunk 0 differs
        copy[3 * chunk + 5] = 7; // the short last chunk differs
        let disks = vec![DiskInfo {
            name: path.display().to_string(),
            size: size as u64,
        }];
        let map: Vec<ChunkHash> = copy.chunks(chunk).map(|c| hasher.hash(c)).collect();

        // Addresses compared with the other hash: every chunk that is not zeros differs.
        let mut answer = Vec::new();
        let other = match hasher {
            ChunkHasher::Sha256 => ChunkHasher::Blake3,
            ChunkHasher::Blake3 => ChunkHasher::Sha256,
        };
        let request = compare_request(&disks, (chunk, other), std::slice::from_ref(&map));
        serve(&request[..], &mut answer).expect("compare");
        let differ: Differ = serde_json::from_slice(&answer).expect("answer");
        assert_eq!(differ.differ, vec![(0, 0), (0, 2), (0, 3)]);

        let mut answer = Vec::new();
        serve(
            &compare_request(&disks, (chunk, hasher), &[map])[..],
            &mut answer,
        )
        .expect("compare");
        let differ: Differ = serde_json::from_slice(&answer).expect("answer");
        assert_eq!(differ.differ, vec![(0, 0), (0, 3)]);
        assert_eq!(differ.read, size as u64);

        let records: Vec<Record<'_>> = differ
            .differ
            .iter()
            .map(|&(disk, index)| {
                let start = index as usize * chunk;
                let bytes = &copy[start..(start + chunk).min(size)];
                Record {
                    disk,
                    chunk: index,
                    bytes,
                    hash: hasher.hash(bytes),
                }
            })
            .collect();
        let mut answer = Vec::new();
        serve(
            &write_request(&disks, (chunk, hasher), &records)[..],
            &mut answer,
        )
        .expect("write");
        let written: Written = serde_json::from_slice(&answer).expect("answer");
        assert_eq!(written.written, 2);
        assert_eq!(written.bytes, (chunk + 1000) as u64);
        assert_eq!(std::fs::read(&path).expect("disk"), copy);

        // A damaged chunk is refused; a disk smaller than the copy is refused first.
        let mut damaged = write_request(&disks, (chunk, hasher), &records[..1]);
        let hash_at = damaged.iter().position(|&b| b == b'\n').expect("header") + 1 + 19;
        damaged[hash_at] ^= 1;
        let err = serve(&damaged[..], Vec::new()).expect_err("damaged");
        assert!(err.to_string().contains("arrived damaged"), "{err}");
        let bigger = vec![DiskInfo {
            name: disks[0].name.clone(),
            size: size as u64 + 1,
        }];
        let err = serve(
            &write_request(&bigger, (chunk, hasher), &[])[..],
            Vec::new(),
        )
        .expect_err("small");
        assert!(err.to_string().contains("smaller than its copy"), "{err}");
        // A hash this agent does not know is refused before anything is read or written.
        let request = String::from_utf8(write_request(&disks, (chunk, hasher), &[]))
            .expect("text")
            .replace(
                &format!(
                    "\"{}\"",
                    serde_json::to_value(hasher)
                        .expect("json")
                        .as_str()
                        .expect("word")
                ),
                "\"md5\"",
            );
        let err = serve(request.as_bytes(), Vec::new()).expect_err("unknown hash");
        assert!(err.to_string().contains("does not read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
