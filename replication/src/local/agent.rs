//! The replication agent: runs on the source server (its own small binary,
//! `wavelift-agent`), reads the disks (block devices or image files), sends every block
//! that is not zero in a first pass, then, pass after pass, the blocks whose digest
//! changed; cuts crash-consistent recovery points at barriers; survives lost connections
//! by continuing from the last point both sides hold, never from scratch.
//!
//! A barrier is cut with the disks frozen: the agent takes an exclusive lock on every
//! image file (writers that take a shared lock for each write, as the quickstart's do,
//! wait), sends what changed since the last pass and lets go; then it records the digests
//! of that state and sends the barrier. It sends nothing in between, so the writers need
//! not wait for the digest file's write.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::digests::{Header, Working};
use super::proto::{
    AgentStatus, BLOCK, Control, Data, DiskInfo, Frame, MAX_RUN, PROTOCOL_VERSION, Request,
    block_digest, read_frame, write_frame,
};
use crate::engine::ReplicationState;

/// A pass reads (or, for a mapped image, hashes) this much at a time: `MAX_RUN`, so a
/// read of a disk that is not mapped stays in the CPU's cache while it is hashed.
const READ: usize = MAX_RUN;
/// The lag is tracked by the time each pass reached each stretch of this many bytes.
const MARK: u64 = 16 << 20;
/// Under a bandwidth limit, how much sending a quiet link may save up and spend at once.
const BANDWIDTH_BURST: Duration = Duration::from_millis(250);
/// The pause after a pass that found changes: while the disks change, passes follow
/// each other closely (the lag is about what a pass takes); after quiet passes the pause
/// doubles up to the agent's `scan_interval`, so a quiet disk costs the source a pass
/// per `scan_interval`.
const BUSY_PAUSE: Duration = Duration::from_millis(100);
/// How often a pass says where it is (state, backlog, lag).
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// Under a bandwidth limit a data frame carries at most what the limit sends in this
/// long (one block at least), and the frames waiting to be sent at most about
/// `QUEUE_TIME`'s worth: a status waits behind them, and the server counts a source
/// it has not heard from in 15 s as stalled.
const FRAME_TIME: Duration = Duration::from_millis(250);
const QUEUE_TIME: Duration = Duration::from_secs(2);
/// Frames waiting to be sent, at most.
const QUEUE_FRAMES: usize = 16;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The replication server, `host:port`.
    pub server: String,
    /// The server certificate's fingerprint, `sha256:HEX`.
    pub pin: String,
    pub source: String,
    pub token: String,
    pub disks: Vec<PathBuf>,
    /// Where the agent keeps its digests (the state both sides agreed on).
    pub state_dir: PathBuf,
    pub bandwidth_mbit: Option<f64>,
    /// The longest pause between passes over the disks: after a pass that found changes
    /// the next follows 100 ms later, after quiet ones the pause doubles up to this.
    pub scan_interval: Duration,
    /// How often a recovery point is cut without being asked.
    pub point_interval: Duration,
    /// The agent exits after this long without reaching the server.
    pub give_up_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the replication server refused this agent: {0}")]
    Refused(String),
    #[error("{0}")]
    Disk(String),
    /// The agent's state folder is full (or over its quota): it tries again, as one
    /// whose connection was lost, and goes on when there is room.
    #[error("{0}")]
    Full(String),
    #[error("gave up: no replication server for {0:?} ({1})")]
    GaveUp(Duration, String),
}

fn log(message: &str) {
    eprintln!("{} wavelift-agent: {message}", Timestamp::now());
}

/// Runs until the server says stop (exit 0) or refuses the agent.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| AgentError::Disk(format!("cannot start: {err}")))?;
    runtime.block_on(run_async(config))
}

enum End {
    Stop,
    Lost(String),
}

async fn run_async(config: AgentConfig) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|err| {
        AgentError::Disk(format!(
            "cannot create the state folder {}: {err}",
            config.state_dir.display()
        ))
    })?;
    let mut last_contact = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&config, &mut last_contact).await {
            Ok(End::Stop) => {
                log("replication stopped by the server");
                return Ok(());
            }
            Ok(End::Lost(why)) => {
                log(&format!("connection lost: {why}"));
                if last_contact.elapsed() > config.give_up_after {
                    return Err(AgentError::GaveUp(config.give_up_after, why));
                }
            }
            Err(AgentError::Full(why)) => {
                log(&format!(
                    "{why}; the state folder needs room: trying again in {} s",
                    backoff.as_secs_f64()
                ));
            }
            Err(err @ (AgentError::Refused(_) | AgentError::Disk(_))) => return Err(err),
            Err(err) => return Err(err),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(config: &AgentConfig, last_contact: &mut Instant) -> Result<End, AgentError> {
    let tcp =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&config.server))
            .await
        {
            Err(_) => {
                return Ok(End::Lost(format!(
                    "{} did not answer in 10 s",
                    config.server
                )));
            }
            Ok(Err(err)) => return Ok(End::Lost(format!("cannot reach {}: {err}", config.server))),
            Ok(Ok(tcp)) => tcp,
        };
    let _ = tcp.set_nodelay(true);
    let tls_config =
        super::tls::client_config(&config.pin).map_err(|err| AgentError::Disk(err.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config);
    let tls = match connector.connect(super::tls::server_name(), tcp).await {
        Ok(tls) => tls,
        Err(err) => return Ok(End::Lost(format!("TLS with {}: {err}", config.server))),
    };
    let (mut reader, mut writer) = tokio::io::split(tls);

    let disks = open_disks(&config.disks)?;
    let acked = Header::read(&config.state_dir.join("digest.acked"));
    let pending = Header::read(&config.state_dir.join("digest.pending"));
    let hello = Control::Hello {
        version: PROTOCOL_VERSION,
        source: config.source.clone(),
        token: config.token.clone(),
        disks: disks.iter().map(|d| d.info.clone()).collect(),
        acked: acked.as_ref().map_or(0, |d| d.seq),
        pending: pending.as_ref().map(|d| d.seq),
    };
    if let Err(err) = write_frame(&mut writer, &Frame::Control(hello)).await {
        return Ok(End::Lost(err.to_string()));
    }
    let (base, next) = match read_frame(&mut reader).await {
        Ok(Some((Frame::Control(Control::Welcome { base, next }), _))) => (base, next),
        Ok(Some((Frame::Control(Control::Refused { reason }), _))) => {
            return Err(AgentError::Refused(reason));
        }
        Ok(Some(_)) => return Ok(End::Lost("the server did not answer the hello".to_owned())),
        Ok(None) => return Ok(End::Lost("the server closed the connection".to_owned())),
        Err(err) => return Ok(End::Lost(err.to_string())),
    };
    *last_contact = Instant::now();
    let work = config.state_dir.join("digest.work");
    let acked_path = config.state_dir.join("digest.acked");
    let sent = match (base, &acked, &pending) {
        (0, _, _) => {
            let counts: Vec<u64> = disks.iter().map(|d| d.blocks() as u64).collect();
            Working::filled(&work, &counts, block_digest(&[0u8; BLOCK]))
        }
        (b, _, Some(p)) if p.seq == b => {
            promote(&config.state_dir).map_err(|err| {
                state_error("cannot record the last recovery point".to_owned(), err)
            })?;
            Working::copy_of(&acked_path, &work)
        }
        (b, Some(a), _) if a.seq == b => Working::copy_of(&acked_path, &work),
        (b, _, _) => {
            return Err(AgentError::Refused(format!(
                "the server continues from recovery point {b}, which this agent does not hold"
            )));
        }
    }
    .map_err(|err| {
        state_error(
            format!("cannot make the agent's digests {}", work.display()),
            err,
        )
    })?;
    let counts = sent.counts();
    if counts.len() != disks.len()
        || counts
            .iter()
            .zip(&disks)
            .any(|(&c, d)| c != d.blocks() as u64)
    {
        return Err(AgentError::Disk(format!(
            "the disks changed size since the last recovery point: {FIXED_SIZE}"
        )));
    }
    let limit = config
        .bandwidth_mbit
        .map(|mbit| format!(", sending at most {mbit} Mbit/s"))
        .unwrap_or_default();
    let interval = format!(
        ", passes over quiet disks at most {} ms apart",
        config.scan_interval.as_millis()
    );
    log(&format!(
        "connected to {}; continuing from recovery point {base}{limit}{interval}",
        config.server
    ));

    let bandwidth = config.bandwidth_mbit.map(|m| m * 125_000.0);
    let (max_run, queue) = pacing(bandwidth);
    // Each frame with the moment it was queued: a status's lag counts its wait.
    let (frames_tx, mut frames_rx) = mpsc::channel::<(Frame, Instant)>(queue);
    let (events_tx, events_rx) = std_mpsc::channel::<Event>();
    let scanner = Scanner {
        disks,
        sent,
        stretch: Vec::new(),
        // Never a number the server holds a point under.
        next_seq: next.unwrap_or(0).max(base + 1),
        committed_once: base > 0,
        out: frames_tx,
        events: events_rx,
        state_dir: config.state_dir.clone(),
        scan_interval: config.scan_interval,
        pause: BUSY_PAUSE.min(config.scan_interval),
        point_interval: config.point_interval,
        pending: None,
        paused: false,
        marks: Vec::new(),
        last_marks: Vec::new(),
        position: None,
        last_point: Instant::now(),
        want_barrier: base == 0,
        asked: Vec::new(),
        compressor: std::cell::RefCell::default(),
        pending_answers: Vec::new(),
        scanned: 0,
        backlog: 0,
        max_run,
        last_status: std::cell::Cell::new(Instant::now()),
        dense: true,
    };
    // Named, so that `top -H` on the source server shows what reads its disks.
    let scan = std::thread::Builder::new()
        .name("wl-agent-scan".to_owned())
        .spawn(move || scanner.run())
        .map_err(|err| AgentError::Disk(format!("cannot start the agent's scanner: {err}")))?;

    // The writer owns the frames' receiver: when the session ends it goes, and a
    // scanner blocked on a full channel (even inside a freeze) wakes up and ends.
    let writing = async move {
        // When the link is free again at the limit's rate.
        let mut free_at = Instant::now();
        while let Some((mut frame, queued)) = frames_rx.recv().await {
            if let Frame::Control(Control::Status(status)) = &mut frame
                && let Some(lag) = status.lag_seconds.as_mut()
            {
                *lag += queued.elapsed().as_secs_f64();
            }
            let written = write_frame(&mut writer, &frame).await? as f64;
            if let Some(rate) = bandwidth {
                // Time the link stood idle is not saved up (beyond a burst): after a
                // quiet hour, changes still go at the limit.
                let now = Instant::now();
                let idle_from = now.checked_sub(BANDWIDTH_BURST).unwrap_or(now);
                free_at = free_at.max(idle_from) + Duration::from_secs_f64(written / rate);
                if let Some(wait) = free_at.checked_duration_since(now) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        writer.flush().await?;
        Ok::<(), io::Error>(())
    };
    let reading = async {
        loop {
            match read_frame(&mut reader).await? {
                None => return Ok::<Heard, io::Error>(Heard::Closed),
                Some((Frame::Control(Control::BarrierAck { seq }), _)) => {
                    let _ = events_tx.send(Event::Ack(seq));
                }
                Some((Frame::Control(Control::BarrierRefused { seq, reason }), _)) => {
                    log(&format!("recovery point {seq} was not cut: {reason}"));
                    let _ = events_tx.send(Event::Refused(seq));
                }
                Some((Frame::Control(Control::Request(request)), _)) => {
                    let stop = request == Request::Stop;
                    let _ = events_tx.send(Event::Request(request));
                    if stop {
                        return Ok(Heard::Stop);
                    }
                }
                Some((Frame::Control(Control::Refused { reason }), _)) => {
                    return Ok(Heard::Refused(reason));
                }
                Some(_) => {}
            }
        }
    };
    let outcome = tokio::select! {
        written = writing => match written {
            Ok(()) => Heard::Closed,
            Err(err) => Heard::Lost(err.to_string()),
        },
        read = reading => read.unwrap_or_else(|err| Heard::Lost(err.to_string())),
    };
    // Both halves are gone here: the scanner's sends fail and it ends.
    let _ = events_tx.send(Event::Close);
    let scanned = tokio::task::spawn_blocking(move || scan.join()).await;
    match (outcome, scanned) {
        (Heard::Refused(reason), _) => Err(AgentError::Refused(reason)),
        (_, Ok(Ok(Err(err)))) => Err(err),
        (Heard::Stop, _) | (_, Ok(Ok(Ok(ScanEnd::Stopped)))) => Ok(End::Stop),
        (Heard::Lost(why), _) => Ok(End::Lost(why)),
        (Heard::Closed, _) => Ok(End::Lost("the server closed the connection".to_owned())),
    }
}

/// When the last complete pass read the stretch at `position` (bytes of all the disks in
/// pass order; `None` between passes, where the last pass's start counts): no block
/// from `position` on was read earlier. Past the marks, the oldest one counts.
fn stalest_mark(last_marks: &[Instant], position: Option<u64>) -> Option<Instant> {
    let at = (position.unwrap_or(0) / MARK) as usize;
    last_marks.get(at).or(last_marks.first()).copied()
}

/// The longest run one data frame carries and how many frames may wait to be sent,
/// at a limit of `bandwidth` bytes per second (none: as fast as the link goes).
fn pacing(bandwidth: Option<f64>) -> (usize, usize) {
    let Some(rate) = bandwidth else {
        return (MAX_RUN, QUEUE_FRAMES);
    };
    let run = ((rate * FRAME_TIME.as_secs_f64()) as usize / BLOCK * BLOCK).clamp(BLOCK, MAX_RUN);
    let frames = (QUEUE_TIME.as_secs_f64() * rate / run as f64) as usize;
    (run, frames.clamp(1, QUEUE_FRAMES))
}

/// How a session's connection ended.
enum Heard {
    Closed,
    Lost(String),
    Stop,
    Refused(String),
}

/// A disk as the agent reads it.
struct Disk {
    path: PathBuf,
    file: File,
    info: DiskInfo,
    /// An image file's bytes, mapped; a block device is read with `pread`.
    map: Option<std::sync::Arc<super::mapped::Mapping>>,
}

impl Disk {
    fn blocks(&self) -> usize {
        self.info.size.div_ceil(BLOCK as u64) as usize
    }
}

fn open_disks(paths: &[PathBuf]) -> Result<Vec<Disk>, AgentError> {
    paths
        .iter()
        .map(|path| {
            let mut file = File::open(path).map_err(|err| {
                AgentError::Disk(format!("cannot read the disk {}: {err}", path.display()))
            })?;
            use std::io::Seek;
            let size = file.seek(io::SeekFrom::End(0)).map_err(|err| {
                AgentError::Disk(format!("cannot tell the size of {}: {err}", path.display()))
            })?;
            if size == 0 {
                return Err(AgentError::Disk(format!(
                    "the disk {} is empty (0 bytes): nothing to replicate",
                    path.display()
                )));
            }
            let name = path.display().to_string();
            Ok(Disk {
                path: path.clone(),
                map: super::mapped::Mapping::of(&file, size, &name).map(std::sync::Arc::new),
                file,
                info: DiskInfo {
                    name: path.display().to_string(),
                    size,
                },
            })
        })
        .collect()
}

/// The server holds the pending point: it becomes the acknowledged one.
fn promote(dir: &Path) -> io::Result<()> {
    std::fs::rename(dir.join("digest.pending"), dir.join("digest.acked"))?;
    File::open(dir)?.sync_all()
}

enum Event {
    Ack(u64),
    Refused(u64),
    Request(Request),
    Close,
}

enum ScanEnd {
    Stopped,
    Closed,
}

struct Scanner {
    disks: Vec<Disk>,
    /// What the server holds, block by block: the base point and everything sent since.
    sent: Working,
    /// The digests of the stretch being compared, read from `sent` and written back.
    stretch: Vec<u64>,
    next_seq: u64,
    committed_once: bool,
    out: mpsc::Sender<(Frame, Instant)>,
    events: std_mpsc::Receiver<Event>,
    state_dir: PathBuf,
    /// The longest pause between passes.
    scan_interval: Duration,
    /// The pause after the last pass ([`BUSY_PAUSE`] after one that found changes).
    pause: Duration,
    point_interval: Duration,
    /// A barrier sent and not yet acknowledged.
    pending: Option<u64>,
    paused: bool,
    /// When the current pass reached each `MARK` bytes of the disks (in pass order)...
    marks: Vec<Instant>,
    /// ... and when the last complete pass did: a block the current pass has not reached
    /// yet was last read (and its change sent) no earlier than its stretch's mark here.
    last_marks: Vec<Instant>,
    /// Where the current pass is, in bytes of all the disks in pass order.
    position: Option<u64>,
    last_point: Instant,
    want_barrier: bool,
    /// Barrier requests not yet answered.
    asked: Vec<u64>,
    compressor: std::cell::RefCell<super::proto::Compressor>,
    /// The requests the pending barrier answers.
    pending_answers: Vec<u64>,
    scanned: u64,
    backlog: u64,
    /// The longest run a data frame carries (shorter under a bandwidth limit).
    max_run: usize,
    /// When the last status was queued.
    last_status: std::cell::Cell<Instant>,
    /// Most blocks of the last stretch read had changed (the first pass, a large
    /// rewrite): a mapped disk's next stretch is copied out once and hashed and sent from
    /// the copy, instead of hashed in place, copied, and hashed again.
    dense: bool,
}

/// The pause after a pass: [`BUSY_PAUSE`] (at most `longest`) after one that found
/// changes, else twice the last, up to `longest`.
fn next_pause(last: Duration, changed: bool, longest: Duration) -> Duration {
    if changed {
        BUSY_PAUSE.min(longest)
    } else {
        (last * 2).clamp(BUSY_PAUSE.min(longest), longest)
    }
}

impl Scanner {
    fn run(mut self) -> Result<ScanEnd, AgentError> {
        match self.run_inner() {
            Ok(end) => Ok(end),
            Err(Fault::Closed) => Ok(ScanEnd::Closed),
            Err(Fault::Disk(err)) => Err(err),
        }
    }

    fn run_inner(&mut self) -> Result<ScanEnd, Fault> {
        loop {
            if let Some(end) = self.handle_events()? {
                return Ok(end);
            }
            if self.paused {
                self.status()?;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let changed = self.pass()?;
            let due = self.last_point.elapsed() >= self.point_interval;
            if self.pending.is_none() && (self.want_barrier || due) {
                self.barrier()?;
            }
            self.status()?;
            self.pause = next_pause(self.pause, changed > 0, self.scan_interval);
            let until = Instant::now() + self.pause;
            while Instant::now() < until {
                if let Some(end) = self.handle_events()? {
                    return Ok(end);
                }
                if self.want_barrier && self.pending.is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20).min(self.pause));
            }
        }
    }

    fn handle_events(&mut self) -> Result<Option<ScanEnd>, Fault> {
        loop {
            match self.events.try_recv() {
                Err(std_mpsc::TryRecvError::Empty) => return Ok(None),
                Err(std_mpsc::TryRecvError::Disconnected) | Ok(Event::Close) => {
                    return Err(Fault::Closed);
                }
                Ok(Event::Ack(seq)) => {
                    if self.pending == Some(seq) {
                        promote(&self.state_dir).map_err(|err| {
                            state_fault(format!("cannot record recovery point {seq}"), err)
                        })?;
                        self.pending = None;
                        self.committed_once = true;
                        self.next_seq = seq + 1;
                    }
                }
                Ok(Event::Refused(seq)) => {
                    if self.pending == Some(seq) {
                        self.pending = None;
                        // A refused seq is never sent again for another state.
                        self.next_seq = seq + 1;
                        self.want_barrier = true;
                        // The requests it answered wait for the next one.
                        self.asked.append(&mut self.pending_answers);
                    }
                }
                Ok(Event::Request(Request::Barrier { id })) => {
                    self.want_barrier = true;
                    self.asked.push(id);
                }
                Ok(Event::Request(Request::Pause)) => self.paused = true,
                Ok(Event::Request(Request::Resume)) => self.paused = false,
                Ok(Event::Request(Request::Stop)) => return Ok(Some(ScanEnd::Stopped)),
                Ok(Event::Request(Request::Resend { disk, offset, len })) => {
                    self.resend(disk, offset, len)?;
                }
            }
        }
    }

    fn send(&self, frame: Frame) -> Result<(), Fault> {
        self.out
            .blocking_send((frame, Instant::now()))
            .map_err(|_| Fault::Closed)
    }

    fn read_at(&self, d: usize, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let disk = &self.disks[d];
        disk.file.read_exact_at(buf, offset).map_err(|err| {
            Fault::Disk(AgentError::Disk(format!(
                "cannot read {} at byte {offset}: {err}",
                disk.path.display()
            )))
        })
    }

    /// The oldest moment whose writes the server may not hold yet: the mark of the
    /// stretch the pass is in (or, between passes, the last pass's start). `None` until
    /// a pass of this connection is complete.
    fn stalest(&self) -> Option<Instant> {
        stalest_mark(&self.last_marks, self.position)
    }

    /// An image file that shrank or grew since the agent opened it cannot be read as
    /// the same disk (and a mapping read past a new end faults).
    fn check_sizes(&self) -> Result<(), Fault> {
        for disk in self.disks.iter().filter(|d| d.map.is_some()) {
            let now = disk.file.metadata().map(|m| m.len()).map_err(|err| {
                Fault::Disk(AgentError::Disk(format!(
                    "cannot tell the size of {}: {err}",
                    disk.path.display()
                )))
            })?;
            if now != disk.info.size {
                return Err(Fault::Disk(AgentError::Disk(format!(
                    "the disk {} is {now} bytes now, {} when replication started: {FIXED_SIZE}",
                    disk.path.display(),
                    disk.info.size
                ))));
            }
        }
        Ok(())
    }

    /// One pass over every disk, sending the blocks whose digest changed; how many had.
    fn pass(&mut self) -> Result<u64, Fault> {
        self.check_sizes()?;
        let mut buf = vec![0u8; READ];
        self.scanned = 0;
        self.marks.clear();
        self.position = Some(0);
        let total: u64 = self.disks.iter().map(|d| d.info.size).sum();
        let mut last_look = Instant::now();
        let mut changed_in_pass = 0u64;
        for d in 0..self.disks.len() {
            let size = self.disks[d].info.size;
            let map = self.disks[d].map.clone();
            let mut offset = 0u64;
            while offset < size {
                let n = (size - offset).min(READ as u64) as usize;
                while (self.marks.len() as u64) * MARK <= self.scanned {
                    self.marks.push(Instant::now());
                }
                let changed = match &map {
                    Some(map) if !self.dense => {
                        self.send_changes(d, offset, map.bytes(offset, n), true)?
                    }
                    Some(map) => {
                        buf[..n].copy_from_slice(map.bytes(offset, n));
                        self.send_changes(d, offset, &buf[..n], false)?
                    }
                    None => {
                        self.read_at(d, offset, &mut buf[..n])?;
                        self.send_changes(d, offset, &buf[..n], false)?
                    }
                };
                self.dense = 2 * changed > n.div_ceil(BLOCK);
                changed_in_pass += changed as u64;
                offset += n as u64;
                self.scanned += n as u64;
                self.position = Some(self.scanned);
                if !self.committed_once {
                    self.backlog = total - self.scanned;
                }
                if last_look.elapsed() > STATUS_EVERY {
                    last_look = Instant::now();
                    if let Some(end) = self.handle_events()? {
                        return match end {
                            ScanEnd::Stopped | ScanEnd::Closed => Err(Fault::Closed),
                        };
                    }
                    self.status_if_due()?;
                }
            }
        }
        self.backlog = 0;
        self.last_marks = std::mem::take(&mut self.marks);
        self.position = None;
        Ok(changed_in_pass)
    }

    /// Sends the changed blocks of `bytes` (read at `offset` of disk `d`) in runs, and
    /// says how many blocks changed; `shared`: `bytes` may change while read (a mapping),
    /// so each run is copied and its digests taken again from the copy before it is sent.
    fn send_changes(
        &mut self,
        d: usize,
        offset: u64,
        bytes: &[u8],
        shared: bool,
    ) -> Result<usize, Fault> {
        let first = (offset / BLOCK as u64) as usize;
        self.stretch.resize(bytes.len().div_ceil(BLOCK), 0);
        self.sent
            .read(d, first, &mut self.stretch)
            .map_err(|err| self.digests_fault(err))?;
        let mut run: Option<(usize, usize)> = None;
        let mut count = 0;
        for (i, block) in bytes.chunks(BLOCK).enumerate() {
            let digest = block_digest(block);
            let changed = self.stretch[i] != digest;
            if changed {
                self.stretch[i] = digest;
                count += 1;
            }
            run = match (run, changed) {
                (Some((start, len)), true) if (len + 1) * BLOCK <= self.max_run => {
                    Some((start, len + 1))
                }
                (Some(done), true) => {
                    self.send_run(d, offset, bytes, done, shared)?;
                    Some((i, 1))
                }
                (None, true) => Some((i, 1)),
                (Some(done), false) => {
                    self.send_run(d, offset, bytes, done, shared)?;
                    None
                }
                (None, false) => None,
            };
        }
        if let Some(done) = run {
            self.send_run(d, offset, bytes, done, shared)?;
        }
        if count > 0 {
            self.sent
                .write(d, first, &self.stretch)
                .map_err(|err| self.digests_fault(err))?;
        }
        Ok(count)
    }

    fn digests_fault(&self, err: io::Error) -> Fault {
        state_fault(
            format!(
                "cannot read or write the agent's digests in {}",
                self.state_dir.display()
            ),
            err,
        )
    }

    fn send_run(
        &mut self,
        d: usize,
        offset: u64,
        bytes: &[u8],
        (start, len): (usize, usize),
        shared: bool,
    ) -> Result<(), Fault> {
        let from = start * BLOCK;
        let to = ((start + len) * BLOCK).min(bytes.len());
        let at = offset + from as u64;
        let data = if shared {
            // The digests recorded as sent are those of the bytes sent: a copy's, which
            // becomes the frame's payload (the stretch is written back after its runs).
            let copy = bytes[from..to].to_vec();
            for (i, block) in copy.chunks(BLOCK).enumerate() {
                self.stretch[start + i] = block_digest(block);
            }
            Data::encode_with(&mut self.compressor.borrow_mut(), d as u16, at, copy)
        } else {
            Data::encode_with(
                &mut self.compressor.borrow_mut(),
                d as u16,
                at,
                &bytes[from..to],
            )
        };
        // Between frames too: under a tight limit one READ's changes take long to send.
        self.status_if_due()?;
        self.send(Frame::Data(data))
    }

    fn resend(&mut self, disk: u16, offset: u64, len: u64) -> Result<(), Fault> {
        let d = disk as usize;
        let Some(info) = self.disks.get(d).map(|d| d.info.clone()) else {
            return Ok(());
        };
        let end = offset.saturating_add(len).min(info.size);
        let mut at = offset - offset % BLOCK as u64;
        while at < end {
            let n = (end - at).min(self.max_run as u64) as usize;
            let mut buf = vec![0u8; n];
            self.read_at(d, at, &mut buf)?;
            let digests: Vec<u64> = buf.chunks(BLOCK).map(block_digest).collect();
            self.sent
                .write(d, (at / BLOCK as u64) as usize, &digests)
                .map_err(|err| self.digests_fault(err))?;
            self.status_if_due()?;
            let data = Data::encode_with(&mut self.compressor.borrow_mut(), disk, at, buf);
            self.send(Frame::Data(data))?;
            at += n as u64;
        }
        log(&format!(
            "sent {} bytes of {} again at the server's request",
            end.saturating_sub(offset),
            info.name
        ));
        Ok(())
    }

    /// Freezes the disks, sends what changed, records the state and sends the barrier.
    fn barrier(&mut self) -> Result<(), Fault> {
        let seq = self.next_seq;
        let answers = std::mem::take(&mut self.asked);
        self.pending_answers = answers.clone();
        for disk in &self.disks {
            // Writers that share the lock for each write wait while it is held.
            if let Err(err) = disk.file.lock() {
                log(&format!(
                    "cannot freeze {}: {err}; the point is cut without a freeze",
                    disk.path.display()
                ));
            }
        }
        let frozen_at = Timestamp::now();
        let passed = self.pass();
        // Everything the point holds is queued: the writers go on while its digests are
        // recorded, as nothing is sent between this pass and the barrier.
        for disk in &self.disks {
            let _ = disk.file.unlock();
        }
        passed?;
        self.sent
            .snapshot(&self.state_dir.join("digest.pending"), seq)
            .map_err(|err| {
                state_fault(
                    format!("cannot record the digests of recovery point {seq}"),
                    err,
                )
            })?;
        self.send(Frame::Control(Control::Barrier {
            seq,
            frozen_at,
            answers,
        }))?;
        self.pending = Some(seq);
        self.want_barrier = false;
        self.last_point = Instant::now();
        Ok(())
    }

    fn status_if_due(&self) -> Result<(), Fault> {
        if self.last_status.get().elapsed() > STATUS_EVERY {
            self.status()?;
        }
        Ok(())
    }

    fn status(&self) -> Result<(), Fault> {
        let state = if self.paused {
            ReplicationState::Paused
        } else if !self.committed_once {
            ReplicationState::InitialSync
        } else if self.pending.is_some() && self.want_barrier {
            ReplicationState::CreatingSnapshot
        } else {
            ReplicationState::Continuous
        };
        let total: u64 = self.disks.iter().map(|d| d.info.size).sum();
        self.send(Frame::Control(Control::Status(AgentStatus {
            state,
            backlog_bytes: self.backlog,
            scanned_bytes: if self.committed_once {
                total
            } else {
                self.scanned
            },
            lag_seconds: self.stalest().map(|at| at.elapsed().as_secs_f64()),
        })))?;
        // Counted from when it was queued: a send that waited for room does not make
        // the next status due at once.
        self.last_status.set(Instant::now());
        Ok(())
    }
}

enum Fault {
    Closed,
    Disk(AgentError),
}

/// What to do about a disk that changed size (the agent and the server say the same).
pub const FIXED_SIZE: &str = "the local engine replicates each disk at the size it had when \
     replication started, and neither a new agent nor a retry takes another; give the disk \
     its size back and install the agent again (wavelift retry SERVER/agent_push), which goes \
     on from the last recovery point";

/// A write to the agent's state folder that failed (`what`, then the error): a full disk
/// or quota is waited out ([`AgentError::Full`]); anything else stops the agent.
fn state_error(what: String, err: io::Error) -> AgentError {
    // ENOSPC and EDQUOT, also where the standard library names them otherwise.
    let full = matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(err.raw_os_error(), Some(28 | 122));
    let message = format!("{what}: {err}");
    if full {
        AgentError::Full(message)
    } else {
        AgentError::Disk(message)
    }
}

/// [`state_error`], in a pass.
fn state_fault(what: String, err: io::Error) -> Fault {
    Fault::Disk(state_error(what, err))
}

/// The agent's command line: `wavelift-agent run --server HOST:PORT --pin sha256:HEX
/// --source ID --token-file FILE --state-dir DIR --disk PATH [--disk PATH...]
/// [--bandwidth MBIT] [--scan-interval MS] [--point-interval S] [--give-up-after S]`.
pub fn parse_args(args: &[String]) -> Result<AgentConfig, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("run") => {}
        Some(other) => {
            return Err(format!(
                "unknown command `{other}`; the agent has `run` and `restore`"
            ));
        }
        None => return Err("usage: wavelift-agent run --server HOST:PORT --pin sha256:HEX --source ID --token-file FILE --state-dir DIR --disk PATH...".to_owned()),
    }
    let mut server = None;
    let mut pin = None;
    let mut source = None;
    let mut token_file = None;
    let mut state_dir = None;
    let mut disks = Vec::new();
    let mut bandwidth = None;
    let mut scan_ms = 500u64;
    let mut point_s = 600u64;
    let mut give_up_s = 24 * 3600u64;
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag}: `{text}` is not a whole number"))
        };
        match flag.as_str() {
            "--server" => server = Some(value()?),
            "--pin" => pin = Some(value()?),
            "--source" => source = Some(value()?),
            "--token-file" => token_file = Some(PathBuf::from(value()?)),
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--disk" => disks.push(PathBuf::from(value()?)),
            "--bandwidth" => {
                let text = value()?;
                let mbit = text
                    .parse::<f64>()
                    .ok()
                    .filter(|m| *m >= 0.01 && m.is_finite())
                    .ok_or_else(|| {
                        format!("--bandwidth: `{text}` is not a number of Mbit/s of at least 0.01")
                    })?;
                bandwidth = Some(mbit);
            }
            "--scan-interval" => scan_ms = number(value()?)?,
            "--point-interval" => point_s = number(value()?)?,
            "--give-up-after" => give_up_s = number(value()?)?,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    fn need<T>(v: Option<T>, name: &str) -> Result<T, String> {
        v.ok_or_else(|| format!("{name} is required"))
    }
    let token_file: PathBuf = need(token_file, "--token-file")?;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|err| format!("cannot read the token file {}: {err}", token_file.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", token_file.display()));
    }
    if disks.is_empty() {
        return Err("at least one --disk is required".to_owned());
    }
    Ok(AgentConfig {
        server: need(server, "--server")?,
        pin: need(pin, "--pin")?,
        source: need(source, "--source")?,
        token,
        disks,
        state_dir: need(state_dir, "--state-dir")?,
        bandwidth_mbit: bandwidth,
        scan_interval: Duration::from_millis(scan_ms),
        point_interval: Duration::from_secs(point_s.max(1)),
        give_up_after: Duration::from_secs(give_up_s),
    })
}

/// The `wavelift-agent` binary's main: exit 0 when stopped by the server, 1 on an error,
/// 2 on a usage error.
pub fn main_with_args(args: Vec<String>) -> i32 {
    if args.first().map(String::as_str) == Some("restore") {
        return super::restore::main();
    }
    super::mapped::install_sigbus_handler();
    let config = match parse_args(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("wavelift-agent: {message}");
            return 2;
        }
    };
    match run(config) {
        Ok(()) => 0,
        Err(err) => {
            log(&err.to_string());
            let _ = io::stderr().flush();
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_closely_while_the_disks_change_and_back_off_while_they_are_quiet() {
        let ms = Duration::from_millis;
        let longest = ms(500);
        assert_eq!(next_pause(longest, true, longest), ms(100));
        let quiet: Vec<Duration> =
            std::iter::successors(Some(ms(100)), |&p| Some(next_pause(p, false, longest)))
                .take(5)
                .collect();
        assert_eq!(quiet, vec![ms(100), ms(200), ms(400), ms(500), ms(500)]);
        // A change brings the short pause back at once; a longest pause under 100 ms
        // stays the longest.
        assert_eq!(next_pause(ms(500), true, longest), ms(100));
        assert_eq!(next_pause(ms(20), true, ms(20)), ms(20));
        assert_eq!(next_pause(ms(20), false, ms(20)), ms(20));
    }

    #[test]
    fn the_stalest_mark_is_the_last_pass_s_at_the_current_stretch() {
        let start = Instant::now();
        let marks: Vec<Instant> = (0..4)
            .map(|i| start + Duration::from_millis(100 * i))
            .collect();
        assert_eq!(stalest_mark(&[], Some(0)), None, "no complete pass yet");
        assert_eq!(stalest_mark(&marks, None), Some(marks[0]), "between passes");
        assert_eq!(stalest_mark(&marks, Some(0)), Some(marks[0]));
        assert_eq!(stalest_mark(&marks, Some(MARK - 1)), Some(marks[0]));
        assert_eq!(stalest_mark(&marks, Some(MARK)), Some(marks[1]));
        assert_eq!(stalest_mark(&marks, Some(3 * MARK + 5)), Some(marks[3]));
        assert_eq!(
            stalest_mark(&marks, Some(4 * MARK)),
            Some(marks[0]),
            "past the marks (the pass's very end): the oldest"
        );
    }

    #[test]
    fn under_a_limit_frames_are_short_and_few_so_a_status_never_waits_long() {
        assert_eq!(pacing(None), (MAX_RUN, QUEUE_FRAMES), "no limit");
        assert_eq!(pacing(Some(400.0 * 125_000.0)), (MAX_RUN, QUEUE_FRAMES));
        // 1 Mbit/s: 31,250 bytes a quarter second, 7 blocks; 2 s of them queued.
        assert_eq!(pacing(Some(125_000.0)), (7 * BLOCK, 8));
        // The least limit (10 kbit/s): one block, one frame waiting.
        assert_eq!(pacing(Some(1_250.0)), (BLOCK, 1));
        // What a status may wait behind (the frame on the wire and those queued) stays
        // well inside the server's 15 s before it calls a source stalled, at any limit.
        for kbit in [10.0, 33.0, 64.0, 100.0, 150.0, 999.0, 2_000.0, 64_000.0] {
            let rate = kbit * 125.0;
            let (run, frames) = pacing(Some(rate));
            let wait = (run * (frames + 1)) as f64 / rate;
            assert!(run % BLOCK == 0 && run <= MAX_RUN && frames >= 1);
            assert!(wait < 7.0, "{kbit} kbit/s: a status may wait {wait:.1} s");
        }
    }
}
