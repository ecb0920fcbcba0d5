//! Launches of the local engine: a recovery point materialized as disk images (raw, or
//! qcow2 through `qemu-img convert`) in the target folder, then the boot check: every
//! chunk of the image read back against the point's addresses, `qemu-img check` for
//! qcow2, and the configured command, if any.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::direct::Aligned;
use super::proto::{ChunkHasher, ZERO_CHUNK, chunk_len};
use super::server::lock;
use super::store::{ChunkStore, StoreError};
use super::volume::Volume;
use crate::Health;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// What a launch made and what its check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    pub images: Vec<PathBuf>,
    pub health: Health,
    pub detail: String,
}

pub struct LaunchSpec<'a> {
    pub store: &'a Mutex<ChunkStore>,
    pub volume: &'a Mutex<Volume>,
    pub seq: u64,
    pub dir: &'a Path,
    pub format: ImageFormat,
    pub boot_check: Option<&'a str>,
    pub post_launch: Option<&'a str>,
}

/// Materializes the point and checks it. An error is a launch that failed; a check that
/// fails is a launched target whose health is impaired.
pub fn launch(spec: &LaunchSpec<'_>) -> Result<Launched, String> {
    let (meta, maps) = lock(spec.volume)
        .point_maps(spec.seq)
        .map_err(|err| format!("cannot read recovery point {}: {err}", spec.seq))?;
    std::fs::create_dir_all(spec.dir)
        .map_err(|err| format!("cannot create {}: {err}", spec.dir.display()))?;
    let started = Instant::now();
    let mut syncing = Duration::ZERO;
    let mut raws = Vec::new();
    let mut problems = Vec::new();
    for (i, (disk, map)) in meta.disks.iter().zip(&maps).enumerate() {
        let path = spec.dir.join(format!("disk{i}.raw"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let (file, direct) = super::direct::open(&options, &path, true)
            .and_then(|(f, direct)| f.set_len(disk.size).map(|()| (f, direct)))
            .map_err(|err| {
                format!(
                    "cannot create {} (is the target disk full?): {err}",
                    path.display()
                )
            })?;
        let check = Check {
            path: &path,
            map,
            size: disk.size,
            chunk: meta.chunk,
            hasher: meta.hash,
            direct,
        };
        // The image is read back and checked in a thread of its own while it is
        // written: writing waits for the target disk, checking for the CPU.
        let problem = std::thread::scope(|scope| {
            let (written, to_check) = std::sync::mpsc::sync_channel::<Range<usize>>(64);
            let checker = scope.spawn(move || check.ranges(to_check));
            let target = Target {
                file: &file,
                path: &path,
                direct,
            };
            let wrote = write_disk(spec, &meta, &maps, i, &target, &written);
            drop(written);
            let problem = checker
                .join()
                .unwrap_or_else(|_| Some(format!("the check of {} stopped", path.display())));
            wrote.map(|()| problem)
        })?;
        problems.extend(problem);
        let sync_started = Instant::now();
        // A last block written whole passed the disk's end.
        file.set_len(disk.size)
            .and_then(|()| file.sync_all())
            .map_err(|err| format!("cannot sync {}: {err}", path.display()))?;
        syncing += sync_started.elapsed();
        raws.push(path);
    }
    let writing = started.elapsed() - syncing;
    let images = match spec.format {
        ImageFormat::Raw => raws,
        ImageFormat::Qcow2 => {
            let mut images = Vec::new();
            for raw in &raws {
                let qcow2 = raw.with_extension("qcow2");
                run_tool(
                    Command::new("qemu-img")
                        .args(["convert", "-f", "raw", "-O", "qcow2"])
                        .arg(raw)
                        .arg(&qcow2),
                )
                .map_err(|err| format!("qemu-img convert: {err}"))?;
                let _ = std::fs::remove_file(raw);
                if let Err(err) = run_tool(
                    Command::new("qemu-img")
                        .args(["check", "-f", "qcow2"])
                        .arg(&qcow2),
                ) {
                    problems.push(format!("qemu-img check {}: {err}", qcow2.display()));
                }
                images.push(qcow2);
            }
            images
        }
    };
    for (label, command) in [
        ("boot check", spec.boot_check),
        ("post-launch script", spec.post_launch),
    ] {
        if let Some(command) = command
            && problems.is_empty()
            && let Err(err) = run_tool(&mut hook(command, &images))
        {
            problems.push(format!("the {label} `{command}` failed: {err}"));
        }
    }
    let detail = if problems.is_empty() {
        format!(
            "{} image(s) from recovery point {} verified chunk by chunk{} (written and \
             verified in {:.1} s, synced to the target disk in {:.1} s)",
            images.len(),
            spec.seq,
            if spec.format == ImageFormat::Qcow2 {
                ", qemu-img check passed"
            } else {
                ""
            },
            writing.as_secs_f64(),
            syncing.as_secs_f64()
        )
    } else {
        problems.join("; ")
    };
    Ok(Launched {
        images,
        health: if problems.is_empty() {
            Health::Ok
        } else {
            Health::Impaired
        },
        detail,
    })
}

/// Reads every chunk of a point that met a damaged one and forgets each that is damaged
/// or missing (a launch's, or a failback's restore), so the replicating volumes ask their
/// agents for them again (the store
/// counts a loss); returns how many distinct chunks, with the error if their tombstones
/// could not be written. The store is locked one chunk at a time while reading, and
/// once to forget them all (so volumes see one loss).
pub(super) fn forget_damaged(
    store: &Mutex<ChunkStore>,
    meta: &super::volume::PointMeta,
    maps: &[Vec<super::proto::ChunkHash>],
) -> Result<usize, (usize, std::io::Error)> {
    let mut damaged = std::collections::HashSet::new();
    for (disk, map) in meta.disks.iter().zip(maps) {
        for (index, hash) in map.iter().enumerate() {
            if *hash == ZERO_CHUNK || damaged.contains(hash) {
                continue;
            }
            let len = chunk_len(disk.size, meta.chunk, index as u64);
            let read = lock(store).get(hash, len);
            if let Err(StoreError::Damaged { .. } | StoreError::Missing(_)) = read {
                damaged.insert(*hash);
            }
        }
    }
    let forgotten = lock(store).forget(&damaged);
    forgotten
        .map(|_| damaged.len())
        .map_err(|err| (damaged.len(), err))
}

/// Writes a disk's chunks into its image, runs of contiguous chunks at once, and sends
/// each range of chunks written (zero chunks between them included) to be checked. The
/// chunks are read from the store (and checked against their addresses) by `READERS`
/// threads of their own, the n-th chunk by the n-th reader in turn, each up to
/// `READ_AHEAD` chunks ahead of the writing: the staging disk answers several reads at
/// once (the chunks of a point rewritten since the first sync lie scattered over the
/// packs), and the reads, the hashing and the target disk's writes overlap.
fn write_disk(
    spec: &LaunchSpec<'_>,
    meta: &super::volume::PointMeta,
    maps: &[Vec<super::proto::ChunkHash>],
    disk: usize,
    target: &Target<'_>,
    written: &std::sync::mpsc::SyncSender<Range<usize>>,
) -> Result<(), String> {
    let (chunk, map, size) = (meta.chunk, &maps[disk], meta.disks[disk].size);
    // The run being gathered (its first chunk, its bytes) and the first chunk not yet
    // sent to be checked.
    let mut run: (usize, Aligned) = (0, Aligned::with_capacity(WRITE_RUN + chunk));
    let mut checked_to = 0;
    let flush = |run: &mut (usize, Aligned), checked_to: &mut usize| -> Result<(), String> {
        if !run.1.is_empty() {
            let offset = run.0 as u64 * chunk as u64;
            super::direct::write_at(target.file, &mut run.1, offset, target.direct).map_err(
                |err| {
                    format!(
                        "cannot write {} (is the target disk full?): {err}",
                        target.path.display()
                    )
                },
            )?;
        }
        let to = run.0 + run.1.len().div_ceil(chunk);
        // A checker that stopped has found its problem: the rest is not checked.
        let _ = written.send(*checked_to..to.max(*checked_to));
        *checked_to = to.max(*checked_to);
        run.1.clear();
        Ok(())
    };
    let store = spec.store;
    std::thread::scope(|scope| {
        let mut readers = Vec::with_capacity(READERS);
        for reader in 0..READERS {
            let (chunks, read) = std::sync::mpsc::sync_channel(READ_AHEAD);
            readers.push(read);
            std::thread::Builder::new()
                .name("wl-launch-read".to_owned())
                .spawn_scoped(scope, move || {
                    let mine = map
                        .iter()
                        .enumerate()
                        .filter(|(_, hash)| **hash != ZERO_CHUNK)
                        .skip(reader)
                        .step_by(READERS);
                    for (index, hash) in mine {
                        let len = chunk_len(size, chunk, index as u64);
                        let got = ChunkStore::get_from(store, hash, len);
                        let failed = got.is_err();
                        // Stops at the first failure, or when the writing stopped.
                        if chunks.send((index, got)).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|err| format!("cannot start a thread to read the store: {err}"))?;
        }
        // The chunks in order: each reader's next in turn (a reader that stopped at a
        // failure sent it last).
        let in_order = (0..).map_while(|n: usize| readers[n % READERS].recv().ok());
        write_chunks(
            spec,
            meta,
            maps,
            in_order,
            &mut run,
            &mut checked_to,
            &flush,
        )
    })?;
    flush(&mut run, &mut checked_to)?;
    let _ = written.send(checked_to..map.len());
    Ok(())
}

/// Threads reading a launch's chunks from the store.
const READERS: usize = 4;
/// Chunks each reader reads ahead of the writing, at most (16 KiB each: 256 KiB).
const READ_AHEAD: usize = 16;

type Flush<'f> = dyn Fn(&mut (usize, Aligned), &mut usize) -> Result<(), String> + 'f;

/// An image being written: with `O_DIRECT` (whole blocks from aligned memory) where the
/// target folder's filesystem takes it.
struct Target<'a> {
    file: &'a File,
    path: &'a Path,
    direct: bool,
}

/// The writing side of [`write_disk`]: gathers the chunks read, in order, into runs.
fn write_chunks(
    spec: &LaunchSpec<'_>,
    meta: &super::volume::PointMeta,
    maps: &[Vec<super::proto::ChunkHash>],
    read: impl Iterator<Item = (usize, Result<Vec<u8>, StoreError>)>,
    run: &mut (usize, Aligned),
    checked_to: &mut usize,
    flush: &Flush<'_>,
) -> Result<(), String> {
    let chunk = meta.chunk;
    for (index, got) in read {
        let bytes = got.map_err(|err| {
            let mut why = format!("recovery point {} cannot be launched: {err}", spec.seq);
            if matches!(err, StoreError::Damaged { .. } | StoreError::Missing(_)) {
                match forget_damaged(spec.store, meta, maps) {
                    Ok(found) => why.push_str(&format!(
                        "; {found} chunk(s) of it are damaged or missing in the store and were forgotten: while the source replicates, its agent sends them again where its disks still hold them, and its next recovery point holds them"
                    )),
                    Err((found, err)) => why.push_str(&format!(
                        "; {found} chunk(s) of it are damaged or missing in the store and were forgotten, but the store could not record that on its disk ({err}): check the staging disk"
                    )),
                }
            }
            why
        })?;
        let follows = run.0 + run.1.len() / chunk == index && run.1.len().is_multiple_of(chunk);
        if !run.1.is_empty() && (!follows || run.1.len() + bytes.len() > WRITE_RUN) {
            flush(run, checked_to)?;
        }
        if run.1.is_empty() {
            run.0 = index;
        }
        run.1.extend_from_slice(&bytes);
    }
    Ok(())
}

/// Runs of contiguous chunks are written to an image this many bytes at a time at most.
const WRITE_RUN: usize = 1 << 20;

/// An image read back and checked against its recovery point's chunk addresses.
struct Check<'a> {
    path: &'a Path,
    map: &'a [super::proto::ChunkHash],
    size: u64,
    chunk: usize,
    hasher: ChunkHasher,
    /// Read with `O_DIRECT` (the image was written so: read-ahead through the page cache
    /// could keep blocks from before they were written).
    direct: bool,
}

/// The check reads an image this many bytes at a time at most.
const CHECK_READ: usize = 1 << 20;

impl Check<'_> {
    /// Checks each range of chunks as it comes, in order; the first difference found
    /// (or a read that fails) is the problem, and ends the check.
    fn ranges(&self, ranges: std::sync::mpsc::Receiver<Range<usize>>) -> Option<String> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        let file = match super::direct::open(&options, self.path, self.direct) {
            Ok((file, _)) if !self.direct => file,
            Ok((file, true)) => file,
            Ok((_, false)) => {
                return Some(format!(
                    "cannot read {} back with O_DIRECT",
                    self.path.display()
                ));
            }
            Err(err) => return Some(format!("cannot read {} back: {err}", self.path.display())),
        };
        let per_read = (CHECK_READ / self.chunk).max(1);
        let mut buf = Aligned::with_capacity(per_read * self.chunk);
        for range in ranges {
            let end = range.end.min(self.map.len());
            let mut first = range.start;
            while first < end {
                let count = (end - first).min(per_read);
                let offset = first as u64 * self.chunk as u64;
                let len = (count * self.chunk).min((self.size - offset) as usize);
                let bytes = match super::direct::read_at(&file, &mut buf, offset, len, self.direct)
                {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        return Some(format!("cannot read {} back: {err}", self.path.display()));
                    }
                };
                for (i, hash) in self.map[first..first + count].iter().enumerate() {
                    let index = first + i;
                    let at = i * self.chunk;
                    let n = chunk_len(self.size, self.chunk, index as u64);
                    if self.hasher.hash(&bytes[at..at + n]) != *hash {
                        return Some(format!(
                            "{} differs from the recovery point at byte {}",
                            self.path.display(),
                            index as u64 * self.chunk as u64
                        ));
                    }
                }
                first += count;
            }
        }
        None
    }
}

fn hook(command: &str, images: &[PathBuf]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    if let Some(first) = images.first() {
        cmd.env("WAVELIFT_IMAGE", first);
    }
    let all: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    cmd.env("WAVELIFT_IMAGES", all.join(" "));
    cmd
}

fn run_tool(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("cannot run it: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    // What the tool said on both streams (e2fsck names the problem on stdout and its
    // version on stderr), the last lines of it.
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let lines: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(6)..].join(" / ");
    Err(format!(
        "exit {}: {tail}",
        output.status.code().unwrap_or(-1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::proto::{CHUNK, DiskInfo};
    use jiff::Timestamp;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A volume of one disk: 100 chunks of noise (more than one 1 MiB run), 10 zero
    /// chunks, 90 more of noise, and a short last chunk (not whole 4 KiB blocks, so a
    /// direct write's last block passes the end); committed as point 1.
    fn point(name: &str) -> (PathBuf, Mutex<ChunkStore>, Mutex<Volume>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("wl-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let size = 200 * CHUNK + 5000;
        let mut disk = noise(size, 3);
        disk[100 * CHUNK..110 * CHUNK].fill(0);
        let mut store = ChunkStore::open(&dir.join("chunks")).expect("store");
        let info = DiskInfo {
            name: "/dev/sda".to_owned(),
            size: size as u64,
        };
        let mut volume = Volume::open(&dir.join("src"), vec![info]).expect("volume");
        volume.write(&mut store, 0, 0, &disk).expect("write");
        let now = Timestamp::UNIX_EPOCH;
        volume.commit(&mut store, 1, now, now).expect("commit");
        (dir, Mutex::new(store), Mutex::new(volume), disk)
    }

    #[test]
    fn a_launch_writes_the_point_in_runs_and_checks_every_chunk_while_it_writes() {
        let (dir, store, volume, disk) = point("runs");
        let target = dir.join("target");
        let spec = LaunchSpec {
            store: &store,
            volume: &volume,
            seq: 1,
            dir: &target,
            format: ImageFormat::Raw,
            boot_check: None,
            post_launch: None,
        };
        let launched = launch(&spec).expect("a launch");
        assert_eq!(launched.health, Health::Ok, "{}", launched.detail);
        assert!(
            launched.detail.contains("verified chunk by chunk")
                && launched.detail.contains("synced to the target disk in"),
            "{}",
            launched.detail
        );
        assert!(std::fs::read(&launched.images[0]).expect("the image") == disk);
        // The ranges sent to the check cover every chunk once, in order, zero chunks
        // and the short last one included.
        let (meta, maps) = lock(&volume).point_maps(1).expect("the point");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let path = dir.join("again.raw");
        let (file, direct) = super::super::direct::open(&options, &path, true).expect("an image");
        assert!(direct, "the temporary folder's filesystem takes O_DIRECT");
        let (written, to_check) = std::sync::mpsc::sync_channel(1024);
        let again = Target {
            file: &file,
            path: &path,
            direct,
        };
        write_disk(&spec, &meta, &maps, 0, &again, &written).expect("written");
        file.set_len(disk.len() as u64).expect("cut back");
        assert!(
            std::fs::read(&path).expect("the image") == disk,
            "written with O_DIRECT, whole blocks, the last one cut back"
        );
        drop(written);
        let ranges: Vec<Range<usize>> = to_check.into_iter().collect();
        let covered: Vec<usize> = ranges.iter().cloned().flatten().collect();
        assert_eq!(
            covered,
            (0..maps[0].len()).collect::<Vec<_>>(),
            "{ranges:?}"
        );
        assert!(
            ranges
                .iter()
                .all(|r| r.len() * CHUNK <= WRITE_RUN + 10 * CHUNK),
            "runs of at most 1 MiB (and the zero chunks before them): {ranges:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_check_names_the_first_byte_where_the_image_differs_from_the_point() {
        let (dir, store, volume, disk) = point("differs");
        let (_, maps) = lock(&volume).point_maps(1).expect("the point");
        drop(store);
        let path = dir.join("copy.raw");
        let mut copy = disk.clone();
        copy[150 * CHUNK + 7] ^= 1;
        for direct in [false, true] {
            std::fs::write(&path, &copy).expect("a copy");
            let check = Check {
                path: &path,
                map: &maps[0],
                size: disk.len() as u64,
                chunk: CHUNK,
                hasher: ChunkHasher::NEW,
                direct,
            };
            let checked = |ranges: Vec<Range<usize>>| {
                let (tx, rx) = std::sync::mpsc::sync_channel(16);
                for range in ranges {
                    tx.send(range).expect("sent");
                }
                drop(tx);
                check.ranges(rx)
            };
            assert_eq!(
                checked(vec![0..100, 100..150]),
                None,
                "the chunks before it match (O_DIRECT: {direct})"
            );
            assert_eq!(
                checked(vec![0..150, 151..201]),
                None,
                "the chunks after it match, the short last one included (O_DIRECT: {direct})"
            );
            let problem = checked(vec![0..100, 100..151, 151..201]).expect("a difference");
            assert!(
                problem.contains(&format!(
                    "differs from the recovery point at byte {}",
                    150 * CHUNK
                )),
                "{problem}"
            );
            // Cut inside a block: a direct read stops there.
            std::fs::write(&path, &disk[..10 * CHUNK + 100]).expect("cut short");
            let problem = checked(vec![0..1, 1..201]).expect("a short image");
            assert!(
                problem.contains("cannot read") && problem.contains("failed to fill whole buffer"),
                "{problem}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
