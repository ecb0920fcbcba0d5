//! Faults of the local engine, each detected, reported and recovered from without a full
//! resync or a damaged recovery point: the network between agent and server cut (a TCP
//! relay on loopback that the test severs), the replication server stopped and started
//! again, a chunk damaged in the store, a staging folder on a full disk (a 6 MiB tmpfs
//! the test mounts: the test runs as root, as CI does), and an image that shrinks.
//! Damage found before a restart of the server stays found after it; a recovery point
//! whose file is damaged gives way to an older one, or to a full resync, and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use replication::{LaunchKind, PointInTime, ReplicationEngine, ReplicationState};
use tokio::net::{TcpListener, TcpStream};

use super::writer::Writer;
use super::{
    TestResult, config_with, engine, engine_with, launched_image, replicate, replicate_via,
    restarted, temp, wait_for,
};

/// A relay between agent and server that can be cut (connections dropped, new ones
/// refused) and healed: a link going down and coming back.
struct Relay {
    address: String,
    cut: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, links2) = (Arc::clone(&cut), Arc::clone(&links));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = links2.lock() {
                    links.push(link);
                }
            }
        });
        Ok(Relay {
            address,
            cut,
            links,
        })
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn continuous(
    engine: &replication::local::LocalEngine,
    id: &replication::SourceId,
) -> TestResult {
    wait_for(
        "continuous replication",
        Duration::from_secs(30),
        async || {
            let source = engine.describe_source(id).await?;
            Ok(source.replication.state == ReplicationState::Continuous
                && !engine.recovery_points(id).await?.is_empty())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_reported_and_replication_continues_without_a_full_resync() -> TestResult {
    let dir = temp("cut");
    let image = dir.join("db01.img");
    let size = 8 << 20;
    Writer::create(&image, size, 7)?;
    let engine = engine(&dir).await?;
    let relay = Relay::start(engine.agent_address()).await?;
    let (id, _agent) =
        replicate_via(&engine, &dir, "db01", &image, Some(relay.address.clone())).await?;
    continuous(&engine, &id).await?;
    let first_sync = engine.server().stats(&id.0).bytes_on_wire;

    relay.cut();
    wait_for("the cut seen", Duration::from_secs(40), async || {
        Ok(engine.describe_source(&id).await?.replication.state == ReplicationState::Disconnected)
    })
    .await?;
    let err = engine
        .start_launch(
            LaunchKind::Test,
            std::slice::from_ref(&id),
            &PointInTime::Latest,
        )
        .await
        .expect_err("no launch while the agent is away");
    assert!(err.message.contains("disconnected"), "{err}");
    // The source changes while the link is down.
    use std::os::unix::fs::FileExt;
    std::fs::File::options()
        .write(true)
        .open(&image)?
        .write_all_at(&[0x42; 65536], 5 << 20)?;
    relay.heal();
    continuous(&engine, &id).await?;
    let copy = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the copy is the source after the change"
    );
    let resumed = engine.server().stats(&id.0).bytes_on_wire - first_sync;
    assert!(
        resumed < 1 << 20,
        "after the cut the agent sent {resumed} bytes for a 64 KiB change (the first sync took {first_sync}): no full resync"
    );
    Ok(())
}

/// A loopback address no one listens on now, for an engine to be started on twice.
fn free_address() -> std::io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_its_points_and_the_agent_continues_from_the_last_one()
-> TestResult {
    let dir = temp("restart");
    let image = dir.join("app02.img");
    let size = 8 << 20;
    Writer::create(&image, size, 11)?;
    let listen = free_address()?;
    let first = engine_with(&dir, listen).await?;
    let (id, _agent) = replicate_via(&first, &dir, "app02", &image, None).await?;
    continuous(&first, &id).await?;
    let before = first.recovery_points(&id).await?;
    let wire_before = first.server().stats(&id.0).bytes_on_wire;
    first.shutdown();
    drop(first);
    // The source changes while the server is down.
    use std::os::unix::fs::FileExt;
    std::fs::File::options()
        .write(true)
        .open(&image)?
        .write_all_at(&[0x17; 65536], 3 << 20)?;
    let second = restarted(&dir, listen).await?;
    let kept = second.recovery_points(&id).await?;
    assert_eq!(kept, before, "the recovery points survive the restart");
    continuous(&second, &id).await?;
    let copy = launched_image(&second, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the copy is the source after the change"
    );
    let resumed = second.server().stats(&id.0).bytes_on_wire;
    assert!(
        resumed < 1 << 20,
        "{resumed} bytes after the restart for a 64 KiB change, {wire_before} before: no full resync"
    );
    Ok(())
}

/// Starts: a local engine (the owner, as `serve` or `wavelift replicator` runs it) on a
/// loopback port with an agent in a thread, and two clients of it in the same test: one
/// as a process that runs tasks (`run` beside it), one as a command that runs none. The
/// owner stops answering, its control file left behind as `kill -9` leaves it, but
/// lives on a while (a replicator ending its launches): the run waits the grace and
/// then for the folder's lock, and takes nothing. Once the owner is gone, the run starts
/// the engine in its place on the same port at its next call, and the agent goes on with
/// it without a full resync. (A run kept calling the dead owner and spent its tasks'
/// retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_the_engine_over_when_its_owner_dies() -> TestResult {
    use replication::ErrorKind;
    use replication::local::control::{CONTROL_FILE, LocalClient};
    let dir = temp("takeover");
    let image = dir.join("web03.img");
    Writer::create(&image, 8 << 20, 13)?;
    let listen = free_address()?;
    let owner = engine_with(&dir, listen).await?;
    let (id, _agent) = replicate(&owner, &dir, "web03", &image).await?;
    continuous(&owner, &id).await?;
    let staging = dir.join("staging");
    let quotas = owner.quotas();
    let (Some((run, _)), Some((command, _))) = (
        LocalClient::find(&staging, quotas).await,
        LocalClient::find(&staging, quotas).await,
    ) else {
        return Err("the owner answers on its control port".into());
    };
    let run = run.taking_over(
        config_with(&dir, listen),
        Arc::new(replication::SystemClock),
    );
    assert!(
        run.taken_over().is_none(),
        "nothing is taken while the owner lives"
    );
    assert_eq!(run.describe_source(&id).await?.name, "web03");

    // The owner stops answering, but its process (here: its engine) lives on.
    let file = staging.join(CONTROL_FILE);
    let left = std::fs::read(&file)?;
    owner.shutdown();
    std::fs::write(&file, &left)?;
    // The source changes while nobody serves its agent.
    use std::os::unix::fs::FileExt;
    std::fs::File::options()
        .write(true)
        .open(&image)?
        .write_all_at(&[0x23; 65536], 2 << 20)?;
    let refused = command
        .describe_source(&id)
        .await
        .expect_err("a command that runs no task does not take the engine");
    assert_eq!(refused.kind, ErrorKind::Unavailable, "{refused}");
    assert!(command.taken_over().is_none());

    // The run waits: the grace first, then the folder's lock the living owner holds.
    let mut last = String::new();
    let waited = std::time::Instant::now();
    while waited.elapsed() < Duration::from_secs(14) {
        let err = run
            .describe_source(&id)
            .await
            .expect_err("no engine while the owner lives");
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        last = err.message;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last.contains("is held by another process of this machine"),
        "after the grace the run tries, and the owner's lock stops it: {last}"
    );
    assert!(run.taken_over().is_none());

    // The owner gone for good: the run's next calls start the engine here.
    drop(owner);
    wait_for(
        "the engine taken over",
        Duration::from_secs(30),
        async || match run.describe_source(&id).await {
            Ok(source) => Ok(source.name == "web03"),
            Err(err) => {
                assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
                last = err.message;
                Ok(false)
            }
        },
    )
    .await
    .map_err(|err| format!("{err}; last: {last}"))?;
    let engine = run.taken_over().ok_or("the run runs the engine now")?;
    assert_eq!(run.pid(), std::process::id());
    let now = std::fs::read(&file)?;
    assert_ne!(now, left, "the new owner wrote its own control file");
    // Another command finds the new owner.
    let (again, _) = LocalClient::find(&staging, quotas)
        .await
        .ok_or("the new owner answers")?;
    assert_eq!(again.describe_source(&id).await?.name, "web03");

    continuous(engine, &id).await?;
    let copy = launched_image(engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the copy is the source after the change"
    );
    let resumed = engine.server().stats(&id.0).bytes_on_wire;
    assert!(
        resumed < 1 << 20,
        "{resumed} bytes after the takeover for a 64 KiB change: no full resync"
    );
    Ok(())
}

/// Starts: a local engine on a loopback port and an agent in a thread; the engine is
/// stopped and, 4 s later, started again on the same port (a restart of `wavelift run`),
/// while the agent's tries to reconnect have drawn apart (0.25, 0.5, 1, 2, 4 s). Until it
/// is back a launch from the latest data is refused as a moment to wait, never for good,
/// and a final sync waits for it instead of failing at once (which rolled back every
/// cutover under way at a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_a_restart_a_final_sync_waits_for_the_agent_on_its_way_back() -> TestResult {
    let dir = temp("restart-sync");
    let image = dir.join("app03.img");
    Writer::create(&image, 8 << 20, 12)?;
    let listen = free_address()?;
    let first = engine_with(&dir, listen).await?;
    let (id, _agent) = replicate_via(&first, &dir, "app03", &image, None).await?;
    continuous(&first, &id).await?;
    first.shutdown();
    drop(first);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = restarted(&dir, listen).await?;
    let refused = second
        .start_launch(
            LaunchKind::Test,
            std::slice::from_ref(&id),
            &PointInTime::Latest,
        )
        .await
        .err()
        .ok_or("a launch was taken while the agent was away")?;
    assert_eq!(
        refused.kind,
        replication::ErrorKind::Unavailable,
        "{}",
        refused.message
    );
    assert!(
        refused.is_transient()
            && refused
                .message
                .contains("cannot be launched yet: its agent is reconnecting or catching up"),
        "{}",
        refused.message
    );
    let waiting = std::time::Instant::now();
    let point = second
        .server()
        .barrier(&id.0, Duration::from_secs(30))
        .await?;
    assert!(
        waiting.elapsed() > Duration::from_millis(200),
        "the barrier was asked of an agent that was not back yet"
    );
    let points = second.recovery_points(&id).await?;
    assert!(
        points.iter().any(|p| p.id == point.id()),
        "the final sync's point {} is among {points:?}",
        point.id()
    );
    second.shutdown();
    Ok(())
}

/// Flips a byte in the body of every chunk record of the store (a bad disk under the
/// staging folder).
fn damage_every_record(dir: &std::path::Path) -> TestResult {
    for entry in std::fs::read_dir(dir.join("staging/chunks"))? {
        let path = entry?.path();
        let mut bytes = std::fs::read(&path)?;
        let mut at = 0;
        while at + 45 < bytes.len() {
            let stored = u32::from_be_bytes(bytes[at + 40..at + 44].try_into()?) as usize;
            bytes[at + 45 + stored / 2] ^= 0x5a;
            at += 45 + stored;
        }
        std::fs::write(&path, &bytes)?;
    }
    Ok(())
}

/// A source replicating continuously whose every stored chunk record is then damaged;
/// the engine, the source, its image and its first recovery point.
async fn damaged(
    name: &str,
) -> Result<
    (
        replication::local::LocalEngine,
        replication::SourceId,
        std::path::PathBuf,
        String,
        super::AgentThread,
    ),
    Box<dyn std::error::Error>,
> {
    let dir = temp(name);
    let image = dir.join("web03.img");
    Writer::create(&image, 4 << 20, 3)?;
    let engine = engine(&dir).await?;
    let (id, agent) = replicate_via(&engine, &dir, "web03", &image, None).await?;
    continuous(&engine, &id).await?;
    let old_point = engine.recovery_points(&id).await?[0].id.clone();
    damage_every_record(&dir)?;
    Ok((engine, id, image, old_point, agent))
}

/// A launch that ends, and the message of its one server.
async fn launch_message(
    engine: &replication::local::LocalEngine,
    id: &replication::SourceId,
    point: PointInTime,
) -> Result<(replication::LaunchStatus, String), Box<dyn std::error::Error>> {
    let job = engine
        .start_launch(LaunchKind::Test, std::slice::from_ref(id), &point)
        .await?;
    let mut ended = None;
    wait_for("the launch", Duration::from_secs(60), async || {
        let job = engine.describe_job(&job.id).await?;
        let done = job.status == replication::JobStatus::Completed;
        if done {
            let slot = &job.servers[0];
            ended = Some((slot.status, slot.message.clone().unwrap_or_default()));
        }
        Ok(done)
    })
    .await?;
    Ok(ended.ok_or("an ended launch")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_is_found_sent_again_and_kept_out_of_new_points() -> TestResult {
    let (engine, id, image, _old_point, _agent) = damaged("damage").await?;
    // The source changes a little, in a block that holds data (every fourth does): the
    // chunk it touches is found damaged when the server reads it back to merge the
    // change, every chunk is checked then, the damaged ones are sent again whole, and
    // the next point holds the source's bytes.
    let file = std::fs::File::options().write(true).open(&image)?;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[0xab; 512], 4 * 4096 + 100)?;
    let copy = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the new point holds the source's bytes, the damaged chunks sent again"
    );
    let problem = engine.server().stats(&id.0).problem.unwrap_or_default();
    assert!(
        problem.contains("is missing from the store (found damaged"),
        "the damage is reported: {problem}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_that_meets_damage_says_so_and_the_next_point_is_whole_again() -> TestResult {
    let (engine, id, image, old_point, _agent) = damaged("damage-launch").await?;
    // Nothing on the source changes, so no write reads a chunk back: the launch of the
    // point is the first to meet the damage. It fails, says why, and has the agent send
    // the damaged chunks again.
    let (status, message) =
        launch_message(&engine, &id, PointInTime::RecoveryPoint(old_point.clone())).await?;
    assert_eq!(status, replication::LaunchStatus::Failed, "{message}");
    assert!(
        message.contains("is damaged")
            && message
                .contains("chunk(s) of it are damaged or missing in the store and were forgotten"),
        "{message}"
    );
    // The next point waits for them and holds the source's bytes.
    let copy = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the new point holds the source's bytes"
    );
    // The chunks came back with the same content, under the same addresses: the old
    // point launches again too.
    let healed = launched_image(
        &engine,
        LaunchKind::Test,
        &id,
        PointInTime::RecoveryPoint(old_point),
    )
    .await?;
    assert!(std::fs::read(&healed)? == std::fs::read(&image)?);
    Ok(())
}

/// A 4 MiB image of seed `seed` replicated in continuous mode to a server on a fixed
/// loopback port, so that its agent finds a restarted server there.
async fn on_a_fixed_port(
    dir: &std::path::Path,
    name: &str,
    image: &std::path::Path,
    seed: u64,
) -> Result<
    (
        std::net::SocketAddr,
        replication::local::LocalEngine,
        replication::SourceId,
        super::AgentThread,
    ),
    Box<dyn std::error::Error>,
> {
    Writer::create(image, 4 << 20, seed)?;
    let listen = free_address()?;
    let engine = engine_with(dir, listen).await?;
    let (id, agent) = replicate_via(&engine, dir, name, image, None).await?;
    continuous(&engine, &id).await?;
    Ok((listen, engine, id, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_found_damaged_stay_forgotten_across_a_restart_of_the_server() -> TestResult {
    let dir = temp("damage-restart");
    let image = dir.join("db04.img");
    let (listen, first, id, _agent) = on_a_fixed_port(&dir, "db04", &image, 5).await?;
    let old_point = first.recovery_points(&id).await?[0].id.clone();
    damage_every_record(&dir)?;
    // The launch finds the damage and forgets the chunks. The source does not change
    // and no point is asked for, so nothing asks the agent for them before the server
    // stops, and it restarts with the damaged records still in its packs.
    let (status, message) =
        launch_message(&first, &id, PointInTime::RecoveryPoint(old_point)).await?;
    assert_eq!(status, replication::LaunchStatus::Failed, "{message}");
    assert!(message.contains("were forgotten"), "{message}");
    first.shutdown();
    drop(first);
    let second = restarted(&dir, listen).await?;
    continuous(&second, &id).await?;
    // Opened again, the store does not take the damaged records back: the volume finds
    // the chunks missing, asks for them, and the next point holds the source's bytes.
    let copy = launched_image(&second, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the new point holds the source's bytes"
    );
    let problem = second.server().stats(&id.0).problem.unwrap_or_default();
    assert!(
        problem.contains("are missing from the store (found damaged before)"),
        "the missing chunks are reported: {problem}"
    );
    Ok(())
}

/// Starts: a replication server on a fixed loopback port and an agent thread; the server
/// is stopped, a recovery point's file cut short, and the server started again there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_point_that_cannot_be_read_gives_way_and_says_so() -> TestResult {
    let dir = temp("unreadable-point");
    let image = dir.join("app05.img");
    let (listen, first, id, _agent) = on_a_fixed_port(&dir, "app05", &image, 9).await?;
    // A change, and a point that lists it against the first (a whole map).
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::options()
            .write(true)
            .open(&image)?
            .write_all_at(&[0x5a; 8192], 1 << 20)?;
    }
    let listing = first
        .server()
        .barrier(&id.0, Duration::from_secs(30))
        .await?;
    assert!(listing.base.is_some(), "{listing:?}");
    first.shutdown();
    drop(first);
    // The whole map the agent's point lists against is cut short (a damaged disk).
    let points = dir
        .join("staging")
        .join("sources")
        .join(&id.0)
        .join("points");
    let whole = points.join(format!("{:012}.rp", listing.base.unwrap_or_default()));
    let len = std::fs::metadata(&whole)?.len();
    std::fs::File::options()
        .write(true)
        .open(&whole)?
        .set_len(len / 2)?;
    let second = restarted(&dir, listen).await?;
    let mut problem = String::new();
    // Until the agent is back, the problem is the skipped garbage collection's.
    wait_for("the fallback said", Duration::from_secs(30), async || {
        problem = second.server().stats(&id.0).problem.unwrap_or_default();
        Ok(problem.contains("replication continues from"))
    })
    .await?;
    assert!(
        problem.contains(&format!("recovery point {} cannot be read", listing.seq))
            && problem.contains("replication continues from the start (a full resync)"),
        "{problem}"
    );
    continuous(&second, &id).await?;
    let copy = launched_image(&second, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the new points hold the source's bytes"
    );
    // The resync's points are numbered after the points the server held: none takes
    // the number of an older one.
    let kept = second.recovery_points(&id).await?;
    let newest = kept.iter().map(|p| p.id.clone()).max().unwrap_or_default();
    assert!(newest > listing.id(), "{newest} after {}", listing.id());
    // The newest point's description is damaged: the volume opens without it, its
    // number stays taken, the problem names it, and replication goes on.
    second.shutdown();
    drop(second);
    let damaged = newest.trim_start_matches("rp-").parse::<u64>()?;
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::options()
            .write(true)
            .open(points.join(format!("{damaged:012}.rp")))?
            .write_all_at(b"#garbage", 0)?;
    }
    let third = restarted(&dir, listen).await?;
    wait_for("the damage said", Duration::from_secs(30), async || {
        problem = third.server().stats(&id.0).problem.unwrap_or_default();
        Ok(problem.contains("the file is left in place"))
    })
    .await?;
    assert!(
        problem.contains(&format!("{damaged:012}.rp does not read"))
            && problem.contains("the file is left in place"),
        "{problem}"
    );
    continuous(&third, &id).await?;
    let copy = launched_image(&third, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(std::fs::read(&copy)? == std::fs::read(&image)?);
    let after = third
        .recovery_points(&id)
        .await?
        .iter()
        .map(|p| p.id.clone())
        .max()
        .unwrap_or_default();
    assert!(after > newest, "{after} after the damaged {newest}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_staging_disk_is_reported_and_replication_recovers_when_there_is_room() -> TestResult
{
    let dir = temp("full");
    let staging = dir.join("staging");
    let _unmount = small_disk(&staging, "3m")?;
    let image = dir.join("big01.img");
    let size = 8 << 20;
    // Random data does not compress: 2 MiB of it (and more below) in a 3 MiB staging disk.
    Writer::create(&image, size, 5)?;
    let file = std::fs::File::options().write(true).open(&image)?;
    use std::os::unix::fs::FileExt;
    let mut noise = vec![0u8; 2 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for byte in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    file.write_all_at(&noise, 4 << 20)?;
    let engine = engine(&dir).await?;
    let (id, _agent) = replicate_via(&engine, &dir, "big01", &image, None).await?;
    let mut problem = String::new();
    wait_for(
        "the full disk reported",
        Duration::from_secs(30),
        async || {
            problem = engine.server().stats(&id.0).problem.unwrap_or_default();
            Ok(!problem.is_empty())
        },
    )
    .await?;
    assert!(
        problem.contains("staging disk full") || problem.contains("No space"),
        "{problem}"
    );
    assert!(
        engine.recovery_points(&id).await?.is_empty(),
        "no point is cut from a partial store"
    );
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&staging)
        .status()?;
    assert!(grown.success());
    continuous(&engine, &id).await?;
    let copy = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the copy is the source"
    );
    Ok(())
}

/// A tmpfs of `size` mounted on `path` (made first), unmounted when dropped: a small
/// disk that fills. Mounting needs root, as CI runs.
fn small_disk(path: &std::path::Path, size: &str) -> Result<Unmount, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(path)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(path)
        .status()?;
    assert!(
        mounted.success(),
        "mounting a small tmpfs needs root (CI runs as root)"
    );
    Ok(Unmount(path.to_owned()))
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        // Lazily: the engine's tasks or an agent may still hold a file open in it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Starts: a local engine on a loopback port and an agent in a thread whose state folder
/// is a 64 KiB tmpfs the test mounts, nearly filled. The agent does not stop on the full
/// folder (it did, for good): it waits for room, tries again, and replicates once a file
/// is removed from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_state_folder_is_full_waits_for_room_and_goes_on() -> TestResult {
    let dir = temp("agent-full");
    let state = dir.join("agent-full01");
    let _unmount = small_disk(&state, "64k")?;
    let filler = state.join("filler");
    std::fs::write(&filler, vec![0u8; 60 << 10])?;
    let image = dir.join("full01.img");
    Writer::create(&image, 8 << 20, 21)?;
    let engine = engine(&dir).await?;
    let (id, agent) = replicate(&engine, &dir, "full01", &image).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.is_finished(),
        "the agent stopped on a full state folder: {:?}",
        agent.join()
    );
    assert!(
        engine.recovery_points(&id).await?.is_empty(),
        "a point was cut without the agent's digests"
    );
    // Connecting and dropping at once, over and over, is not "on its way back": the
    // grace a warped clock waits counts from when it first went (2 s of the 3 here).
    assert!(
        !engine
            .server()
            .reconnecting(&id.0, Duration::from_millis(2500)),
        "an agent that never gets going keeps counting as reconnecting"
    );
    std::fs::remove_file(&filler)?;
    continuous(&engine, &id).await?;
    assert!(!agent.is_finished(), "the agent replicates on");
    engine.server().stop(&id.0);
    Ok(())
}

/// An 8 MiB image in a fresh folder, replicated until continuous: the folder, the
/// image, the engine, the source and its agent's thread.
async fn replicating(
    name: &str,
    seed: u64,
) -> Result<
    (
        std::path::PathBuf,
        std::path::PathBuf,
        replication::local::LocalEngine,
        replication::SourceId,
        super::AgentThread,
    ),
    Box<dyn std::error::Error>,
> {
    let dir = temp(name);
    let image = dir.join(format!("{name}.img"));
    Writer::create(&image, 8 << 20, seed)?;
    let engine = engine(&dir).await?;
    let (id, agent) = replicate(&engine, &dir, name, &image).await?;
    continuous(&engine, &id).await?;
    Ok((dir, image, engine, id, agent))
}

/// The lag is the age of the oldest write the server may not hold: it grows while the
/// agent is paused (nothing is read), and falls back once passes run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_grows_while_nothing_is_read_and_falls_when_passes_resume() -> TestResult {
    let (dir, _image, engine, id, _agent) = replicating("app01", 5).await?;
    let lag = async || -> Result<f64, Box<dyn std::error::Error>> {
        Ok(engine
            .describe_source(&id)
            .await?
            .replication
            .lag_seconds
            .ok_or("no lag once continuous")?)
    };
    wait_for("a lag under 1 s", Duration::from_secs(10), async || {
        Ok(lag().await? < 1.0)
    })
    .await?;
    use replication::local::proto::Request;
    assert!(engine.server().request(&id.0, Request::Pause));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let paused = lag().await?;
    assert!(
        paused >= 1.5,
        "paused for 1.6 s, the lag says {paused:.2} s"
    );
    assert!(engine.server().request(&id.0, Request::Resume));
    wait_for(
        "the lag back under 1 s",
        Duration::from_secs(10),
        async || Ok(lag().await? < 1.0),
    )
    .await?;
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// An image file is read through a mapping; one that shrinks stops its agent with a
/// message naming it and both sizes (checked before each pass; passes are paused while
/// the test truncates, so no read runs past the new end), and what to do, which works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_shrinks_stops_its_agent_with_both_sizes() -> TestResult {
    let (dir, image, engine, id, agent) = replicating("web01", 3).await?;
    use replication::local::proto::Request;
    assert!(engine.server().request(&id.0, Request::Pause));
    wait_for("paused", Duration::from_secs(10), async || {
        Ok(engine.describe_source(&id).await?.replication.state == ReplicationState::Paused)
    })
    .await?;
    // A pass under way when the pause came ends first (8 MiB: milliseconds); no barrier
    // is due (one an hour).
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::File::options()
        .write(true)
        .open(&image)?
        .set_len(4 << 20)?;
    assert!(engine.server().request(&id.0, Request::Resume));
    let ended = tokio::task::spawn_blocking(move || agent.join()).await?;
    let err = ended
        .map_err(|_| "the agent panicked")?
        .expect_err("the agent stops");
    let message = err.to_string();
    assert!(
        message.contains("web01.img is 4194304 bytes now, 8388608 when replication started")
            && message.contains("give the disk its size back and install the agent again"),
        "{message}"
    );
    // What it says works: the size given back, a new agent goes on from the last point.
    std::fs::File::options()
        .write(true)
        .open(&image)?
        .set_len(8 << 20)?;
    let (again, _agent) = replicate(&engine, &dir, "web01", &image).await?;
    assert_eq!(again, id);
    continuous(&engine, &id).await?;
    let copy = launched_image(&engine, LaunchKind::Test, &id, PointInTime::Latest).await?;
    assert!(
        std::fs::read(&copy)? == std::fs::read(&image)?,
        "the copy is the source as it is now"
    );
    engine.server().stop(&id.0);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
