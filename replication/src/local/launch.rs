//! Launches of the local engine: a recovery point materialized as disk images (raw, or
//! qcow2 through `qemu-img convert`) in the target folder, then the boot check: every
//! chunk of the image read back against the point's addresses, `qemu-img check` for
//! qcow2, and the configured command, if any.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::proto::{ZERO_CHUNK, chunk_hash, chunk_len};
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
    let mut raws = Vec::new();
    for (i, (disk, map)) in meta.disks.iter().zip(&maps).enumerate() {
        let path = spec.dir.join(format!("disk{i}.raw"));
        let file = File::create(&path)
            .and_then(|f| f.set_len(disk.size).map(|()| f))
            .map_err(|err| {
                format!(
                    "cannot create {} (is the target disk full?): {err}",
                    path.display()
                )
            })?;
        for (index, hash) in map.iter().enumerate() {
            if *hash == ZERO_CHUNK {
                continue;
            }
            let offset = index as u64 * meta.chunk as u64;
            let len = chunk_len(disk.size, meta.chunk, index as u64);
            // The store's lock ends with this statement: forget_damaged takes it again.
            let got = lock(spec.store).get(hash, len);
            let bytes = got.map_err(|err| {
                let mut why = format!("recovery point {} cannot be launched: {err}", spec.seq);
                if matches!(err, StoreError::Damaged { .. } | StoreError::Missing(_)) {
                    match forget_damaged(spec.store, &meta, &maps) {
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
            file.write_all_at(&bytes, offset).map_err(|err| {
                format!(
                    "cannot write {} (is the target disk full?): {err}",
                    path.display()
                )
            })?;
        }
        file.sync_all()
            .map_err(|err| format!("cannot sync {}: {err}", path.display()))?;
        raws.push(path);
    }
    let mut problems = Vec::new();
    for ((path, map), disk) in raws.iter().zip(&maps).zip(&meta.disks) {
        if let Some(problem) = verify(path, map, disk.size, meta.chunk) {
            problems.push(problem);
        }
    }
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
            "{} image(s) from recovery point {} verified chunk by chunk{}",
            images.len(),
            spec.seq,
            if spec.format == ImageFormat::Qcow2 {
                ", qemu-img check passed"
            } else {
                ""
            }
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

/// Reads the image back and compares each chunk with the point's address.
fn verify(path: &Path, map: &[super::proto::ChunkHash], size: u64, chunk: usize) -> Option<String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) => return Some(format!("cannot read {} back: {err}", path.display())),
    };
    let mut buf = vec![0u8; chunk];
    for (index, hash) in map.iter().enumerate() {
        let offset = index as u64 * chunk as u64;
        let len = chunk_len(size, chunk, index as u64);
        if let Err(err) = file.read_exact_at(&mut buf[..len], offset) {
            return Some(format!("cannot read {} back: {err}", path.display()));
        }
        if chunk_hash(&buf[..len]) != *hash {
            return Some(format!(
                "{} differs from the recovery point at byte {offset}",
                path.display()
            ));
        }
    }
    None
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
