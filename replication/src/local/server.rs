//! The replication server: takes agents' connections over TLS (each agent proves itself
//! with its source's token), applies their block data to the volumes in the chunk store,
//! cuts a recovery point at each barrier, keeps the retention, and reports each source's
//! replication. The engine asks it for barriers (a launch's final sync) and tells agents
//! to stop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::proto::{
    AgentStatus, ChunkHash, Control, DiskInfo, Frame, PROTOCOL_VERSION, Request, read_frame,
    write_frame,
};
use super::store::ChunkStore;
use super::tls::ServerIdentity;
use super::volume::{PointMeta, Retention, Volume, VolumeError};
use crate::Clock;

/// Locks a mutex, taking the data even if a panicking holder poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the server knows of one source's replication right now.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub connected: bool,
    pub ever_connected: bool,
    pub status: Option<AgentStatus>,
    /// When the last status arrived, to age its lag.
    pub status_age: Option<Duration>,
    pub disconnected_for: Option<Duration>,
    pub bytes_on_wire: u64,
    /// Bytes per second on the wire from the agent, over its last second or so of
    /// statuses; `None` before the first measure, while disconnected and when no status
    /// came for 15 s (stalled).
    pub wire_per_second: Option<f64>,
    /// Bytes per second of the agent's first pass over the disks (zeros it skips
    /// count), for the first sync's ETA; `None` as for `wire_per_second`.
    pub scanned_per_second: Option<f64>,
    pub disks: Option<Vec<DiskInfo>>,
    pub points: Vec<PointMeta>,
    /// The last thing that went wrong with this source (a refused hello, a damaged chunk).
    pub problem: Option<String>,
}

struct Slot {
    token_sha256: String,
    stopped: bool,
    volume: Option<Arc<Mutex<Volume>>>,
    session: Option<(u64, mpsc::Sender<Control>)>,
    status: Option<(AgentStatus, Instant)>,
    ever_connected: bool,
    disconnected_at: Option<Instant>,
    /// When this process began to expect the source's agent (the slot's making): the
    /// agent of a source registered before it started reconnects from then on.
    expected_since: Instant,
    wire: Arc<AtomicU64>,
    waiters: HashMap<u64, oneshot::Sender<PointMeta>>,
    problem: Option<String>,
    rates: Rates,
}

/// A connected source whose agent sent no status for this long is stalled (MGN's
/// state), and shows no rates.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(15);

/// The source's rates on the wire and through its disks, measured as its statuses
/// arrive (every 100 ms while the agent works): each over at least a second.
#[derive(Default)]
struct Rates {
    /// When the current measure began, with the wire and scanned bytes then.
    since: Option<(Instant, u64, u64)>,
    /// The last measures (bytes per second): on the wire, through the disks.
    last: Option<(f64, f64)>,
}

impl Rates {
    const OVER: Duration = Duration::from_secs(1);
    /// A source whose last status is older than this has no rate.
    const STALE: Duration = STALLED_AFTER;

    fn observe(&mut self, now: Instant, wire: u64, scanned: u64) {
        match self.since {
            Some((at, wire_then, scanned_then)) if now.duration_since(at) >= Self::OVER => {
                let seconds = now.duration_since(at).as_secs_f64();
                self.last = Some((
                    wire.saturating_sub(wire_then) as f64 / seconds,
                    scanned.saturating_sub(scanned_then) as f64 / seconds,
                ));
                self.since = Some((now, wire, scanned));
            }
            Some(_) => {}
            None => self.since = Some((now, wire, scanned)),
        }
    }
}

struct Shared {
    staging: PathBuf,
    store: Mutex<ChunkStore>,
    slots: Mutex<HashMap<String, Slot>>,
    identity: ServerIdentity,
    clock: Arc<dyn Clock>,
    retention: Retention,
    next_id: AtomicU64,
    /// Set once: the accept loop and every session end.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Problems found at the start, by source, until the source is let in: its slot
    /// shows them (a stopped source's for as long as the server runs).
    held_problems: Mutex<HashMap<String, String>>,
    /// The staging folder's lock ([`LOCK_FILE`]), held while anything of the server lives.
    _owner_lock: std::fs::File,
}

/// The staging folder's lock file: the process that owns the folder holds an exclusive
/// lock on it for as long as its server's state lives (launches it still runs after a
/// stop included); the kernel lets go when the process dies.
pub const LOCK_FILE: &str = "owner.lock";

fn take_staging_lock(staging: &Path) -> io::Result<std::fs::File> {
    let path = staging.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| {
            io::Error::new(err.kind(), format!("cannot open {}: {err}", path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the staging folder {} is held by another process of this machine (a wavelift run, serve or replicator, perhaps still ending its launches)",
                staging.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(err)) => Err(io::Error::new(
            err.kind(),
            format!("cannot lock {}: {err}", path.display()),
        )),
    }
}

#[derive(Clone)]
pub struct ReplicationServer {
    shared: Arc<Shared>,
    pub address: SocketAddr,
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    super::proto::hex(&sha2::Sha256::digest(token.as_bytes()))
}

/// The staging folder's format, kept in its `FORMAT` file. 2: recovery points may list
/// their changes against a whole map, and lost chunks leave tombstones, which a
/// Wavelift of format 1 (which wrote no such file) cannot read. 3: pack records may be
/// addressed by BLAKE3 (their flag byte says so) and recovery points name their hash,
/// which a Wavelift of format 2 would take for damage (cutting its last pack short at
/// the first such record).
pub const STAGING_FORMAT: u32 = 3;
const FORMAT_FILE: &str = "FORMAT";

/// How long an agent that is not connected is taken to be on its way back, in real time
/// (see [`ReplicationServer::reconnecting`]): a few of its tries, which come at most 10 s
/// apart. A warped clock waits this long for it, and so does a final sync; one that
/// stays away longer is left to the tasks' own waits and timeouts.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(30);
const FORMAT_PREFIX: &str = "wavelift staging format ";

/// Refuses a staging folder written in a newer format than this Wavelift reads (a
/// downgrade), before anything in it is read or collected; marks the folder with this
/// format otherwise.
fn check_format(staging: &Path) -> io::Result<()> {
    let path = staging.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let format = text
                .trim()
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|n| n.parse::<u32>().ok());
            let Some(format) = format else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not read as `{FORMAT_PREFIX}N` (it holds {:?}): write \
                         `{FORMAT_PREFIX}{STAGING_FORMAT}` into it if this Wavelift wrote the folder",
                        path.display(),
                        text.chars().take(60).collect::<String>()
                    ),
                ));
            };
            Some(format)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot read {}: {err}", path.display()),
            ));
        }
    };
    match found {
        Some(format) if format == STAGING_FORMAT => Ok(()),
        Some(format) if format > STAGING_FORMAT => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the staging folder {} is in format {format}, written by a newer Wavelift; this \
                 one reads formats up to {STAGING_FORMAT}: run the newer Wavelift (or point \
                 engines.local.staging_dir at another folder, where every source starts a full sync)",
                staging.display()
            ),
        )),
        _ => super::volume::write_durably(
            &path,
            format!("{FORMAT_PREFIX}{STAGING_FORMAT}\n").as_bytes(),
        ),
    }
}

impl ReplicationServer {
    /// Opens the staging folder (chunk store, certificate) and listens for agents.
    pub async fn start(
        staging: &Path,
        listen: SocketAddr,
        clock: Arc<dyn Clock>,
        retention: Retention,
    ) -> io::Result<ReplicationServer> {
        // The folder's lock, then the port: both taken before the store is opened, so a
        // second process never collects garbage under the owner's sessions, nor starts
        // while a stopped owner still ends its launches (it holds the lock until then).
        std::fs::create_dir_all(staging)?;
        let owner_lock = take_staging_lock(staging)?;
        let listener = TcpListener::bind(listen).await.map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot listen for replication agents on {listen}: {err} (is another wavelift run, serve or replicator using it? set engines.local.listen)"),
            )
        })?;
        let staging_owned = staging.to_owned();
        let (store, identity) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&staging_owned)?;
            check_format(&staging_owned)?;
            let store = ChunkStore::open(&staging_owned.join("chunks"))?;
            let identity = ServerIdentity::load_or_create(&staging_owned)?;
            Ok::<_, io::Error>((store, identity))
        })
        .await
        .map_err(io::Error::other)??;
        // Chunks no point needs any more are collected now, before any session writes.
        let staging_gc = staging.to_owned();
        let collected = tokio::task::spawn_blocking(move || {
            let mut store = store;
            let skipped = collect_garbage_at_start(&staging_gc, &mut store)?;
            Ok::<_, io::Error>((store, skipped))
        })
        .await
        .map_err(io::Error::other)?;
        let (store, skipped) = collected.map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("collecting the chunk store's garbage: {err}"),
            )
        })?;
        let address = listener.local_addr()?;
        let tls = identity.server_config()?;
        let shared = Arc::new(Shared {
            staging: staging.to_owned(),
            store: Mutex::new(store),
            slots: Mutex::new(HashMap::new()),
            identity,
            clock,
            retention,
            next_id: AtomicU64::new(1),
            shutdown: tokio::sync::watch::channel(false).0,
            held_problems: Mutex::new(skipped.into_iter().collect()),
            _owner_lock: owner_lock,
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let accepting = Arc::clone(&shared);
        let mut stop = shared.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.changed() => return,
                };
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = Arc::clone(&accepting);
                let acceptor = acceptor.clone();
                tokio::spawn(async move { session(shared, acceptor, tcp).await });
            }
        });
        Ok(ReplicationServer { shared, address })
    }

    /// Stops listening and ends every agent's connection (the agents reconnect to the
    /// next server on this address and continue from their last recovery point).
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }

    /// What agents pin.
    pub fn pin(&self) -> String {
        self.shared.identity.pin()
    }

    /// Lets the agent with this token replicate `source` (a new token replaces the old).
    pub fn allow(&self, source: &str, token_sha256: &str, stopped: bool) {
        let mut slots = lock(&self.shared.slots);
        match slots.get_mut(source) {
            Some(slot) => {
                if slot.token_sha256 != token_sha256 {
                    if let Some((_, tx)) = slot.session.take() {
                        let _ = tx.try_send(Control::Refused {
                            reason: "this agent's token was replaced: a newer agent was installed"
                                .to_owned(),
                        });
                    }
                    // The new agent is on its way from now (a warped clock waits for it).
                    slot.disconnected_at = Some(Instant::now());
                }
                slot.token_sha256 = token_sha256.to_owned();
                slot.stopped = stopped;
            }
            None => {
                slots.insert(
                    source.to_owned(),
                    Slot {
                        token_sha256: token_sha256.to_owned(),
                        stopped,
                        volume: None,
                        session: None,
                        status: None,
                        ever_connected: false,
                        disconnected_at: None,
                        expected_since: Instant::now(),
                        wire: Arc::new(AtomicU64::new(0)),
                        waiters: HashMap::new(),
                        problem: lock(&self.shared.held_problems).remove(source),
                        rates: Rates::default(),
                    },
                );
            }
        }
    }

    /// Ends replication of `source`: its agent is told to stop and is refused from now on.
    pub fn stop(&self, source: &str) {
        let mut slots = lock(&self.shared.slots);
        if let Some(slot) = slots.get_mut(source) {
            slot.stopped = true;
            if let Some((_, tx)) = slot.session.take() {
                let _ = tx.try_send(Control::Request(Request::Stop));
            }
        }
    }

    pub fn request(&self, source: &str, request: Request) -> bool {
        let slots = lock(&self.shared.slots);
        slots
            .get(source)
            .and_then(|slot| slot.session.as_ref())
            .is_some_and(|(_, tx)| tx.try_send(Control::Request(request)).is_ok())
    }

    /// Asks the agent for a recovery point now and waits for it (a launch's final sync).
    /// An agent on its way back ([`ReplicationServer::reconnecting`] within
    /// [`RECONNECT_GRACE`], as after a restart of this process) is waited for first,
    /// inside `timeout`.
    pub async fn barrier(&self, source: &str, timeout: Duration) -> Result<PointMeta, String> {
        let started = tokio::time::Instant::now();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        loop {
            let waited = started.elapsed();
            // Asked, or to wait for the agent a moment more; the lock is not held across
            // the wait.
            let asked = {
                let mut slots = lock(&self.shared.slots);
                let Some(slot) = slots.get_mut(source) else {
                    return Err(format!("no agent was ever installed for {source}"));
                };
                match &slot.session {
                    Some((_, session)) => {
                        if session
                            .try_send(Control::Request(Request::Barrier { id }))
                            .is_err()
                        {
                            return Err("its agent's connection is busy or closing".to_owned());
                        }
                        if let Some(tx) = tx.take() {
                            slot.waiters.insert(id, tx);
                        }
                        true
                    }
                    None => {
                        let away = slot
                            .disconnected_at
                            .unwrap_or(slot.expected_since)
                            .elapsed();
                        if slot.stopped || away >= RECONNECT_GRACE || waited >= timeout {
                            return Err(match slot.disconnected_at {
                                Some(at) => format!(
                                    "its agent has been disconnected for {} s",
                                    at.elapsed().as_secs()
                                ),
                                None => format!(
                                    "its agent has not connected to this replication server (waited {} s)",
                                    away.as_secs()
                                ),
                            });
                        }
                        false
                    }
                }
            };
            if asked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = started.elapsed();
        match tokio::time::timeout(timeout.saturating_sub(waited), rx).await {
            Ok(Ok(point)) => Ok(point),
            Ok(Err(_)) => {
                Err("the agent's connection ended before the recovery point was cut".to_owned())
            }
            Err(_) => {
                if let Some(slot) = lock(&self.shared.slots).get_mut(source) {
                    slot.waiters.remove(&id);
                }
                let back = if waited.as_secs() > 0 {
                    format!(", {} s of them waiting for it to connect", waited.as_secs())
                } else {
                    String::new()
                };
                Err(format!(
                    "the agent did not cut a recovery point within {} s{back} (a large backlog, or a writer holding the disks)",
                    timeout.as_secs()
                ))
            }
        }
    }

    pub fn stats(&self, source: &str) -> SourceStats {
        // The volume as recorded in the staging folder, even before its agent connects
        // to this server (after a restart).
        let volume = self.volume(source).ok().flatten();
        let (disks, points) = match &volume {
            Some(volume) => {
                let volume = lock(volume);
                (Some(volume.disks.clone()), volume.points.clone())
            }
            None => (None, Vec::new()),
        };
        let slots = lock(&self.shared.slots);
        let Some(slot) = slots.get(source) else {
            return SourceStats::default();
        };
        // Rates only while the agent is heard from: a stalled one shows none.
        let heard = slot
            .status
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < Rates::STALE);
        let rates = slot.rates.last.filter(|_| slot.session.is_some() && heard);
        SourceStats {
            connected: slot.session.is_some(),
            ever_connected: slot.ever_connected,
            status: slot.status.as_ref().map(|(s, _)| s.clone()),
            status_age: slot.status.as_ref().map(|(_, at)| at.elapsed()),
            disconnected_for: slot.disconnected_at.map(|at| at.elapsed()),
            bytes_on_wire: slot.wire.load(Ordering::Relaxed),
            wire_per_second: rates.map(|r| r.0),
            scanned_per_second: rates.map(|r| r.1),
            disks,
            points,
            problem: slot.problem.clone(),
        }
    }

    /// True while the source's agent is connected and has not cut its first point, or
    /// cuts one now: work that moves in real time.
    pub fn syncing(&self, source: &str) -> bool {
        let slots = lock(&self.shared.slots);
        slots.get(source).is_some_and(|slot| {
            slot.session.is_some()
                && slot.status.as_ref().is_none_or(|(status, _)| {
                    matches!(
                        status.state,
                        crate::ReplicationState::InitialSync
                            | crate::ReplicationState::CreatingSnapshot
                    )
                })
        })
    }

    /// Whether the source's agent is probably on its way back: it is expected (not
    /// stopped by a finalize) but not connected, and it lost its connection, or this
    /// process began to expect it, less than `grace` ago. An agent whose server went away
    /// (the process that ran it ended) tries again at most 10 s apart; a warped clock
    /// waits for it this long instead of running a final sync's wait out in no time.
    pub fn reconnecting(&self, source: &str, grace: Duration) -> bool {
        let slots = lock(&self.shared.slots);
        slots.get(source).is_some_and(|slot| {
            !slot.stopped
                && slot.session.is_none()
                && slot
                    .disconnected_at
                    .unwrap_or(slot.expected_since)
                    .elapsed()
                    < grace
        })
    }

    /// The source's volume, opened from the staging folder if no agent connected since
    /// the server started.
    pub fn volume(&self, source: &str) -> io::Result<Option<Arc<Mutex<Volume>>>> {
        let mut slots = lock(&self.shared.slots);
        let Some(slot) = slots.get_mut(source) else {
            return Ok(None);
        };
        if slot.volume.is_none() {
            let dir = source_dir(&self.shared.staging, source);
            let Some(disks) = read_disks(&dir)? else {
                return Ok(None);
            };
            slot.volume = Some(Arc::new(Mutex::new(Volume::open(&dir, disks)?)));
        }
        Ok(slot.volume.clone())
    }

    pub fn store(&self) -> &Mutex<ChunkStore> {
        &self.shared.store
    }
}

fn source_dir(staging: &Path, source: &str) -> PathBuf {
    staging.join("sources").join(source)
}

fn read_disks(dir: &Path) -> io::Result<Option<Vec<DiskInfo>>> {
    match std::fs::read(dir.join("disks.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

async fn session(shared: Arc<Shared>, acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let (mut reader, mut writer) = tokio::io::split(tls);
    let hello = match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut reader)).await {
        Ok(Ok(Some((Frame::Control(hello @ Control::Hello { .. }), _)))) => hello,
        _ => return,
    };
    let Control::Hello {
        version,
        source,
        token,
        disks,
        acked,
        pending,
    } = hello
    else {
        return;
    };
    let admitted = admit(&shared, version, &source, &token, &disks, acked, pending).await;
    let Admitted {
        id,
        base,
        next,
        volume,
        wire,
        resend,
        fallback,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let (fatal, reason) = match refusal {
                Refusal::Refused(reason) => (true, reason),
                Refusal::NotNow(reason) => (false, reason),
            };
            if let Some(slot) = lock(&shared.slots).get_mut(&source) {
                slot.problem = Some(reason.clone());
            }
            // A refusal the agent cannot fix by trying again stops it; a failure of
            // this server (its disk, say) only ends the connection, and it retries.
            if fatal {
                let _ =
                    write_frame(&mut writer, &Frame::Control(Control::Refused { reason })).await;
            }
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Control>(64);
    {
        let mut slots = lock(&shared.slots);
        if let Some(slot) = slots.get_mut(&source) {
            if let Some((_, old)) = slot.session.replace((id, tx.clone())) {
                let _ = old.try_send(Control::Refused {
                    reason: "another connection of this source's agent took over".to_owned(),
                });
            }
            slot.ever_connected = true;
            // Away until it gets going (its first status): an agent that connects and
            // drops at once, over and over (its own disk full), stays away since it
            // first went, and its grace runs out.
            slot.problem = None;
            // This session's rates are its own.
            slot.rates = Rates::default();
            // The volume went back to the base point: no lag is known until this
            // session's first status.
            if let Some((status, _)) = slot.status.as_mut() {
                status.lag_seconds = None;
            }
        }
    }
    let _ = tx.try_send(Control::Welcome {
        base,
        next: Some(next),
    });
    // One note for both, so neither hides the other.
    let missing = (!resend.is_empty()).then(|| {
        format!(
            "{} chunk(s) of recovery point {base} are missing from the store (found damaged before): the agent sends them again",
            resend.len()
        )
    });
    let said: Vec<String> = fallback.into_iter().chain(missing).collect();
    if !said.is_empty() {
        note(&shared, &source, said.join("; "));
    }
    if !resend.is_empty() {
        let requests = tx.clone();
        tokio::spawn(async move {
            for (disk, offset, len) in resend {
                let request = Control::Request(Request::Resend { disk, offset, len });
                if requests.send(request).await.is_err() {
                    break;
                }
            }
        });
    }
    let writing = async move {
        while let Some(control) = rx.recv().await {
            let last = matches!(control, Control::Refused { .. });
            if write_frame(&mut writer, &Frame::Control(control))
                .await
                .is_err()
                || last
            {
                break;
            }
        }
    };
    let mut writing = std::pin::pin!(writing);
    let (work, reports, applied) = match start_applier(&shared, &source, volume) {
        Ok(applier) => applier,
        Err(err) => {
            note(
                &shared,
                &source,
                format!("cannot start the session's applier: {err}"),
            );
            (
                mpsc::channel(1).0,
                mpsc::unbounded_channel().1,
                tokio::sync::oneshot::channel().1,
            )
        }
    };
    let reading = read_frames(
        &shared,
        &source,
        &mut reader,
        &tx,
        work,
        reports,
        (id, wire),
    );
    let mut stop = shared.shutdown.subscribe();
    let writer_done = tokio::select! {
        () = &mut writing => true,
        () = reading => false,
        _ = stop.wait_for(|stopped| *stopped) => false,
    };
    // The session is over once what it read is applied: a next session of the same
    // source starts from the volume as this one left it.
    let _ = applied.await;
    {
        let mut slots = lock(&shared.slots);
        if let Some(slot) = slots.get_mut(&source)
            && slot.session.as_ref().is_some_and(|(sid, _)| *sid == id)
        {
            slot.session = None;
            if slot.disconnected_at.is_none() {
                slot.disconnected_at = Some(Instant::now());
            }
            slot.rates = Rates::default();
            slot.waiters.clear();
        }
    }
    // The last messages (a refusal and its reason) reach the agent before the end.
    drop(tx);
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), writing).await;
    }
}

/// Why an agent is not admitted.
enum Refusal {
    /// Trying again cannot help (a wrong token, another protocol, disks that changed).
    Refused(String),
    /// This server cannot take it now (its disk): the agent tries again.
    NotNow(String),
}

/// A session let in.
struct Admitted {
    id: u64,
    /// The point both sides continue from, and the number the agent's next point takes.
    base: u64,
    next: u64,
    volume: Arc<Mutex<Volume>>,
    wire: Arc<AtomicU64>,
    /// Ranges to ask the agent for again (chunks of that point the store lost).
    resend: Vec<(u16, u64, u64)>,
    /// Why it is not the newest point both hold (one that could not be read), if so.
    fallback: Option<String>,
}

async fn admit(
    shared: &Arc<Shared>,
    version: u32,
    source: &str,
    token: &str,
    disks: &[DiskInfo],
    acked: u64,
    pending: Option<u64>,
) -> Result<Admitted, Refusal> {
    if version != PROTOCOL_VERSION {
        return Err(Refusal::Refused(format!(
            "the agent speaks protocol {version}, this server {PROTOCOL_VERSION}: install the agent of this Wavelift version"
        )));
    }
    let wire = {
        let slots = lock(&shared.slots);
        let Some(slot) = slots.get(source) else {
            return Err(Refusal::Refused(format!(
                "no source server {source} is registered with this engine"
            )));
        };
        if slot.token_sha256 != token_hash(token) {
            return Err(Refusal::Refused(format!(
                "the token is not {source}'s (install the agent again)"
            )));
        }
        if slot.stopped {
            return Err(Refusal::Refused(format!(
                "replication of {source} has ended (finalized or archived)"
            )));
        }
        Arc::clone(&slot.wire)
    };
    // A disk map costs 32 bytes per chunk: sizes beyond any real disk are refused
    // before anything is allocated or recorded.
    const MAX_DISK: u64 = 1 << 50;
    if disks.is_empty()
        || disks.len() > 64
        || disks.iter().any(|d| d.size == 0 || d.size > MAX_DISK)
    {
        return Err(Refusal::Refused(format!(
            "the agent sends {} disk(s) of {}: between 1 and 64 disks of 1 byte to 1 PiB are replicated",
            disks.len(),
            describe(disks)
        )));
    }
    let dir = source_dir(&shared.staging, source);
    let disks = disks.to_vec();
    let existing = lock(&shared.slots)
        .get(source)
        .and_then(|s| s.volume.clone());
    let volume = tokio::task::spawn_blocking(move || -> Result<Arc<Mutex<Volume>>, Refusal> {
        let not_now = Refusal::NotNow;
        let known = read_disks(&dir)
            .map_err(|err| not_now(format!("cannot read {}: {err}", dir.display())))?;
        match &known {
            Some(known) if *known != disks => {
                return Err(Refusal::Refused(format!(
                    "the disks changed since replication started (the server has {}, the agent {}): {}",
                    describe(known),
                    describe(&disks),
                    super::agent::FIXED_SIZE
                )));
            }
            Some(_) => {}
            None => {
                std::fs::create_dir_all(&dir).map_err(|err| not_now(err.to_string()))?;
                let body = serde_json::to_vec(&disks).map_err(|err| not_now(err.to_string()))?;
                super::volume::write_durably(&dir.join("disks.json"), &body)
                    .map_err(|err| not_now(format!("cannot record the disks: {err}")))?;
            }
        }
        match existing {
            Some(volume) => Ok(volume),
            None => Volume::open(&dir, disks)
                .map(|v| Arc::new(Mutex::new(v)))
                .map_err(|err| not_now(format!("cannot open the volume: {err}"))),
        }
    })
    .await
    .map_err(|err| Refusal::NotNow(err.to_string()))??;
    let (base, next, resend, fallback) = {
        let mut v = lock(&volume);
        // A point that lists its changes is of use only with the whole map it lists
        // them against.
        let listed = |seq: u64| v.points.iter().any(|p| p.seq == seq);
        let has = |seq: u64| {
            v.points
                .iter()
                .any(|p| p.seq == seq && p.base.is_none_or(&listed))
        };
        // The newest point both sides hold; one that cannot be read (its file damaged)
        // gives way to the next, and in the end to a full resync, said as a problem.
        let mut candidates: Vec<u64> = pending.filter(|p| has(*p)).into_iter().collect();
        if acked > 0 && has(acked) && !candidates.contains(&acked) {
            candidates.push(acked);
        }
        candidates.push(0);
        let store = lock(&shared.store);
        let mut unreadable = Vec::new();
        let mut admitted = None;
        for base in candidates {
            match v.reset(base, &store) {
                Ok(resend) => {
                    admitted = Some((base, resend));
                    break;
                }
                // Only a point that is damaged or gone gives way; any other error (the
                // disk, the system) may pass, and the agent tries again later.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::InvalidData
                            | io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::NotFound
                    ) =>
                {
                    unreadable.push(format!("recovery point {base} cannot be read ({err})"));
                }
                Err(err) => {
                    return Err(Refusal::NotNow(format!(
                        "cannot read recovery point {base}: {err}"
                    )));
                }
            }
        }
        let Some((base, resend)) = admitted else {
            return Err(Refusal::NotNow(unreadable.join("; ")));
        };
        // Point files whose description does not read are said every session.
        let damaged: Vec<String> = v
            .unreadable
            .iter()
            .map(|(_, why)| format!("{why} (the file is left in place)"))
            .collect();
        let fallback = (!unreadable.is_empty()).then(|| {
            format!(
                "{}: replication continues from {}",
                unreadable.join("; "),
                if base == 0 {
                    "the start (a full resync)".to_owned()
                } else {
                    format!("recovery point {base}")
                }
            )
        });
        // Past every point held: after going back to an older point, its agent's
        // next points do not take the numbers of the newer ones.
        let next = (v.last_seq() + 1).max(base + 1);
        let fallback = damaged.into_iter().chain(fallback).collect::<Vec<_>>();
        let fallback = (!fallback.is_empty()).then(|| fallback.join("; "));
        (base, next, resend, fallback)
    };
    if let Some(slot) = lock(&shared.slots).get_mut(source) {
        slot.volume = Some(Arc::clone(&volume));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    Ok(Admitted {
        id,
        base,
        next,
        volume,
        wire,
        resend,
        fallback,
    })
}

fn describe(disks: &[DiskInfo]) -> String {
    disks
        .iter()
        .map(|d| format!("{} of {} bytes", d.name, d.size))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the read loop hands to the session's applier thread, in the order it came.
enum Work {
    Data(super::proto::Data),
    /// Everything before it is applied: cut the point and answer.
    Barrier {
        seq: u64,
        frozen_at: Timestamp,
        taken_at: Timestamp,
        reply: tokio::sync::oneshot::Sender<Result<Result<PointMeta, String>, String>>,
    },
}

/// What the applier reports back: chunks to ask for again, or why it stopped.
enum Applied {
    Resend(u16, u64, u64),
    Failed(ApplyError),
}

/// Applies a session's data frames on a thread of its own (decompress, hash, store),
/// so the next frames are read and decrypted meanwhile; a failure stops it, and is
/// reported once.
fn applier(
    shared: Arc<Shared>,
    source: String,
    volume: Arc<Mutex<Volume>>,
    mut work: mpsc::Receiver<Work>,
    report: mpsc::UnboundedSender<Applied>,
) {
    let retention = shared.retention.clone();
    let mut failed = false;
    let mut ahead: VecDeque<Work> = VecDeque::new();
    loop {
        let Some(item) = ahead.pop_front().or_else(|| work.blocking_recv()) else {
            break;
        };
        // The frames queued behind this one: the chunks they will merge into are read
        // from the disk while this one is applied.
        let known = ahead.len();
        while ahead.len() < LOOK_AHEAD {
            match work.try_recv() {
                Ok(next) => ahead.push_back(next),
                Err(_) => break,
            }
        }
        if !failed && ahead.len() > known {
            prefetch(&shared, &volume, ahead.range(known..));
        }
        match item {
            Work::Data(_) if failed => {}
            Work::Data(data) => {
                let (disk, offset) = (data.disk, data.offset);
                let applied = data
                    .into_bytes()
                    .map_err(|err| ApplyError::Invalid(err.to_string()))
                    .and_then(|bytes| {
                        let mut volume = lock(&volume);
                        let mut store = lock(&shared.store);
                        volume
                            .write(&mut store, disk, offset, &bytes)
                            .map_err(|err| match err {
                                VolumeError::Invalid(reason) => ApplyError::Invalid(reason),
                                other => ApplyError::Store(other.to_string()),
                            })
                    });
                match applied {
                    Ok(resend) => {
                        for (disk, offset, len) in resend {
                            let _ = report.send(Applied::Resend(disk, offset, len));
                        }
                    }
                    Err(err) => {
                        failed = true;
                        let _ = report.send(Applied::Failed(err));
                    }
                }
            }
            Work::Barrier {
                seq,
                frozen_at,
                taken_at,
                reply,
            } => {
                let committed = if failed {
                    Err("the data before it could not be stored".to_owned())
                } else {
                    let mut lost = Vec::new();
                    let committed = commit(
                        &shared, &source, &volume, seq, frozen_at, taken_at, &retention, &mut lost,
                    );
                    for (disk, offset, len) in lost {
                        let _ = report.send(Applied::Resend(disk, offset, len));
                    }
                    committed
                };
                let _ = reply.send(committed);
            }
        }
    }
}

/// Frames the applier takes from its queue ahead of the one it applies, at most.
const LOOK_AHEAD: usize = 16;

/// Asks the store to read ahead the chunks these frames will merge into (those they
/// cover in part: a random write's first and last chunk).
fn prefetch<'a>(shared: &Shared, volume: &Mutex<Volume>, frames: impl Iterator<Item = &'a Work>) {
    let wanted: Vec<ChunkHash> = {
        let volume = lock(volume);
        frames
            .filter_map(|work| match work {
                Work::Data(data) => Some(data),
                Work::Barrier { .. } => None,
            })
            .flat_map(|data| volume.read_backs(data.disk, data.offset, u64::from(data.len)))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    // The advice submits the reads: the store's lock is let go first.
    let records = lock(&shared.store).read_ahead(&wanted);
    for record in &records {
        record.advise();
    }
}

/// Starts a session's applier thread: the sender its frames go to, the receiver of what
/// it reports, and a receiver that completes when it has applied everything it was given
/// (once the sender is dropped).
#[allow(clippy::type_complexity)]
fn start_applier(
    shared: &Arc<Shared>,
    source: &str,
    volume: Arc<Mutex<Volume>>,
) -> std::io::Result<(
    mpsc::Sender<Work>,
    mpsc::UnboundedReceiver<Applied>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let (work, queue) = mpsc::channel::<Work>(8);
    let (report, reports) = mpsc::unbounded_channel::<Applied>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let (shared, source) = (Arc::clone(shared), source.to_owned());
    std::thread::Builder::new()
        .name("wl-apply".to_owned())
        .spawn(move || {
            applier(shared, source, volume, queue, report);
            drop(done);
        })?;
    Ok((work, reports, finished))
}

/// Reads the session's frames until the connection ends; `(id, wire)`: the session's
/// id (its statuses count only while it is the source's session) and the source's
/// count of bytes on the wire.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    source: &str,
    reader: &mut R,
    tx: &mpsc::Sender<Control>,
    work: mpsc::Sender<Work>,
    mut reports: mpsc::UnboundedReceiver<Applied>,
    (id, wire): (u64, Arc<AtomicU64>),
) {
    loop {
        // What the applier found since the last frame.
        while let Ok(applied) = reports.try_recv() {
            match applied {
                Applied::Resend(disk, offset, len) => {
                    note(
                        shared,
                        source,
                        format!(
                            "the chunk of disk {disk} at byte {offset} is missing from the store (found damaged, or lost to a failed write of the staging disk); the agent sends it again"
                        ),
                    );
                    let _ = tx
                        .send(Control::Request(Request::Resend { disk, offset, len }))
                        .await;
                }
                Applied::Failed(ApplyError::Invalid(reason)) => {
                    note(shared, source, format!("data refused: {reason}"));
                    let _ = tx.send(Control::Refused { reason }).await;
                    return;
                }
                Applied::Failed(ApplyError::Store(reason)) => {
                    // The store could not take it (a full disk, say): the session ends,
                    // and the agent's next one continues from the last point.
                    note(
                        shared,
                        source,
                        format!(
                            "cannot store the agent's data (is the staging disk full?): {reason}"
                        ),
                    );
                    return;
                }
            }
        }
        let frame = match tokio::time::timeout(Duration::from_secs(30), read_frame(reader)).await {
            Ok(Ok(Some((frame, len)))) => {
                wire.fetch_add(len as u64, Ordering::Relaxed);
                frame
            }
            // Silence for 30 s: the agent sends a status after each pass and every 100 ms
            // of one, so it is gone.
            _ => return,
        };
        match frame {
            Frame::Data(data) => {
                if work.send(Work::Data(data)).await.is_err() {
                    return;
                }
            }
            Frame::Control(Control::Barrier {
                seq,
                frozen_at,
                answers,
            }) => {
                let (reply, replied) = tokio::sync::oneshot::channel();
                let taken_at = shared.clock.now();
                let sent = work
                    .send(Work::Barrier {
                        seq,
                        frozen_at,
                        taken_at,
                        reply,
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
                let committed = replied
                    .await
                    .unwrap_or_else(|_| Err("the applier stopped".to_owned()));
                match committed {
                    Ok(Ok(point)) => {
                        answer(shared, source, &answers, &point);
                        let _ = tx.send(Control::BarrierAck { seq }).await;
                    }
                    Ok(Err(reason)) => {
                        let _ = tx.send(Control::BarrierRefused { seq, reason }).await;
                    }
                    Err(reason) => {
                        note(
                            shared,
                            source,
                            format!("recovery point {seq} not cut: {reason}"),
                        );
                        let _ = tx.send(Control::BarrierRefused { seq, reason }).await;
                        // What was stored since the last point may be incomplete: the
                        // session ends and the next continues from that point.
                        return;
                    }
                }
            }
            Frame::Control(Control::Status(status)) => {
                // Only the source's current session speaks for it (not one a newer
                // connection took over from).
                if let Some(slot) = lock(&shared.slots).get_mut(source)
                    && slot.session.as_ref().is_some_and(|(sid, _)| *sid == id)
                {
                    let now = Instant::now();
                    let wire = slot.wire.load(Ordering::Relaxed);
                    slot.rates.observe(now, wire, status.scanned_bytes);
                    slot.status = Some((status, now));
                    // It got going: back.
                    slot.disconnected_at = None;
                }
            }
            Frame::Control(_) => {}
        }
    }
}

/// Hands the new point to the launches that asked for it.
fn answer(shared: &Shared, source: &str, answers: &[u64], point: &PointMeta) {
    let mut slots = lock(&shared.slots);
    if let Some(slot) = slots.get_mut(source) {
        for id in answers {
            if let Some(waiter) = slot.waiters.remove(id) {
                let _ = waiter.send(point.clone());
            }
        }
    }
}

enum ApplyError {
    /// The agent sent something wrong: it is refused.
    Invalid(String),
    /// The store failed: the session ends.
    Store(String),
}

fn note(shared: &Shared, source: &str, problem: String) {
    if let Some(slot) = lock(&shared.slots).get_mut(source) {
        slot.problem = Some(problem);
    }
}

/// Cuts the point, or says why not now (`Ok(Err)`: chunks being sent again, a seq
/// already used); then applies the retention. An error is a point that could not be
/// written. Chunks lost since the volume's maps were built are put in `lost`, to be
/// asked of the agent. Chunks are collected when the server starts, never while sessions
/// write.
#[allow(clippy::too_many_arguments)]
fn commit(
    shared: &Shared,
    source: &str,
    volume: &Mutex<Volume>,
    seq: u64,
    frozen_at: Timestamp,
    taken_at: Timestamp,
    retention: &Retention,
    lost: &mut Vec<(u16, u64, u64)>,
) -> Result<Result<PointMeta, String>, String> {
    let mut v = lock(volume);
    // Held from here to the point's write: a chunk forgotten meanwhile (by a launch that
    // met damage, or another source's failed write) would leave the point naming it.
    let mut store = lock(&shared.store);
    // Chunks lost since the maps were built are asked for again (`lost`); the point
    // waits for them.
    *lost = v.recover_losses(&store);
    if v.awaiting_resend() > 0 {
        return Ok(Err(
            "chunks missing from the store (damaged, or lost to a failed write) are being sent again"
                .to_owned(),
        ));
    }
    let latest = v.last_seq();
    if latest >= seq {
        return Ok(Err(format!(
            "recovery point {seq} is not after the latest, {latest}"
        )));
    }
    let point = v
        .commit(&mut store, seq, frozen_at, taken_at)
        .map_err(|err| {
            format!("cannot write the recovery point (is the staging disk full?): {err}")
        })?;
    drop(store);
    // The point is durable: a retention that fails now is said, not fatal.
    if let Err(err) = v.prune(retention, taken_at) {
        drop(v);
        note(
            shared,
            source,
            format!("the retention could not remove old recovery points: {err}"),
        );
    }
    Ok(Ok(point))
}

/// Collects the chunks no recovery point of any source in the staging folder names, when
/// they are more than half of the store. Runs before the server takes connections.
/// Returns the source whose points kept it from running, and why.
fn collect_garbage_at_start(
    staging: &Path,
    store: &mut ChunkStore,
) -> io::Result<Option<(String, String)>> {
    let sources = staging.join("sources");
    if !sources.exists() {
        return Ok(None);
    }
    let mut live = HashSet::new();
    for entry in std::fs::read_dir(&sources)? {
        let entry = entry?;
        let read = read_disks(&entry.path()).and_then(|disks| match disks {
            Some(disks) => Volume::open(&entry.path(), disks)?.live_chunks(&mut live),
            None => Ok(()),
        });
        if let Err(err) = read {
            // A recovery point that cannot be read names chunks no one can list:
            // nothing is collected this time, and its source says why.
            let source = entry.file_name().to_string_lossy().into_owned();
            return Ok(Some((
                source,
                format!(
                    "when the replication server started it could not list the chunks of every recovery point ({err}), so it collected none of the chunk store's garbage: until that point file is repaired or removed, the staging folder only grows"
                ),
            )));
        }
    }
    if live.len() * 2 < store.chunk_count() {
        store.collect_garbage(&live)?;
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Starts: a replication server on a loopback port over a staging folder where a
    /// stopped source's newest point file has a damaged description.
    #[tokio::test]
    async fn a_collection_kept_from_running_by_a_damaged_point_is_said_on_its_source() {
        let dir = std::env::temp_dir().join(format!("wl-server-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let staging = dir.join("staging");
        crate::local::volume::testing::source_with_points(&staging, "db02", 64, 2);
        let point = source_dir(&staging, "db02")
            .join("points")
            .join(format!("{:012}.rp", 2));
        std::fs::write(&point, b"#garbage\n").expect("damage");
        let server = start_on(&staging)
            .await
            .expect("the server starts all the same");
        server.allow("db02", &token_hash("a token"), true);
        let problem = server.stats("db02").problem.unwrap_or_default();
        assert!(
            problem.contains("collected none of the chunk store's garbage")
                && problem.contains("000000000002.rp does not read"),
            "{problem}"
        );
        server.allow("db03", &token_hash("another"), true);
        assert_eq!(
            server.stats("db03").problem,
            None,
            "other sources say nothing"
        );
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Starts: a replication server on a loopback port; no agent connects. A source
    /// whose agent is expected counts as reconnecting for the grace given, one stopped by
    /// a finalize never.
    #[tokio::test]
    async fn an_expected_agent_that_is_not_connected_is_reconnecting_for_a_grace() {
        let dir = std::env::temp_dir().join(format!("wl-server-grace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = start_on(&dir.join("staging")).await.expect("starts");
        server.allow("web01", &token_hash("a token"), false);
        server.allow("db01", &token_hash("another"), true);
        let grace = Duration::from_secs(60);
        assert!(server.reconnecting("web01", grace));
        assert!(!server.reconnecting("db01", grace), "stopped by a finalize");
        assert!(!server.reconnecting("nobody", grace), "not registered");
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !server.reconnecting("web01", Duration::from_millis(10)),
            "past its grace"
        );
        // Reinstalled (a new token): its new agent is expected from now.
        server.allow("web01", &token_hash("a new token"), false);
        assert!(server.reconnecting("web01", Duration::from_secs(5)));
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn start_on(staging: &Path) -> io::Result<ReplicationServer> {
        start_when_free(staging, Retention::default()).await
    }

    /// A server on the folder once the one before lets go of its lock (its accept loop
    /// ends a moment after its shutdown): up to 250 tries, 20 ms apart.
    pub(crate) async fn start_when_free(
        staging: &Path,
        retention: Retention,
    ) -> io::Result<ReplicationServer> {
        for _ in 0..250 {
            match ReplicationServer::start(
                staging,
                "127.0.0.1:0".parse().expect("address"),
                Arc::new(crate::SystemClock),
                retention.clone(),
            )
            .await
            {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
        Err(io::Error::other("the staging folder stayed locked for 5 s"))
    }

    /// Starts: replication servers on loopback ports, one after the other, over one
    /// staging folder whose `FORMAT` file the test writes between them.
    #[tokio::test]
    async fn a_staging_folder_of_a_newer_format_is_refused_before_anything_is_read() {
        let dir = std::env::temp_dir().join(format!("wl-server-format-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let staging = dir.join("staging");
        // A folder of format 1 (no FORMAT file, points of its own) is marked and read;
        // so is one of format 2 (SHA-256 records only): from then on a Wavelift of
        // format 2, which takes BLAKE3 records for damage, refuses it.
        crate::local::volume::testing::source_with_points(&staging, "db02", 64, 2);
        let format = staging.join("FORMAT");
        assert!(!format.exists());
        for (older, marked) in [(None, STAGING_FORMAT), (Some(2), 3), (Some(3), 3)] {
            if let Some(older) = older {
                std::fs::write(&format, format!("wavelift staging format {older}\n"))
                    .expect("an older format");
            }
            start_on(&staging)
                .await
                .unwrap_or_else(|err| panic!("a folder of format {older:?} opens: {err}"))
                .shutdown();
            assert_eq!(
                std::fs::read_to_string(&format).expect("marked"),
                format!("wavelift staging format {marked}\n")
            );
        }
        // A newer format is refused, and nothing in the folder changes.
        let newer = format!("wavelift staging format {}\n", STAGING_FORMAT + 1);
        std::fs::write(&format, &newer).expect("newer");
        let chunks_before = std::fs::read_dir(staging.join("chunks"))
            .expect("chunks")
            .count();
        let refused = start_on(&staging).await.err().expect("refused");
        let text = refused.to_string();
        assert!(
            text.contains(&format!(
                "is in format {}, written by a newer Wavelift; this one reads formats up to {STAGING_FORMAT}",
                STAGING_FORMAT + 1
            )) && text.contains(&staging.display().to_string()),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&format).expect("kept"), newer);
        assert_eq!(
            std::fs::read_dir(staging.join("chunks"))
                .expect("chunks")
                .count(),
            chunks_before
        );
        // A file that does not read is named, with what it holds.
        std::fs::write(&format, "hello").expect("garbage");
        let text = start_on(&staging).await.err().expect("refused").to_string();
        assert!(
            text.contains("FORMAT does not read as `wavelift staging format N`")
                && text.contains("\"hello\""),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
