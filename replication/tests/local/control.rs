//! The control port: another process's commands call the engine that owns a staging
//! folder. Starts: a local engine in the test (its replication server and control port
//! on loopback ports the system picks), called by a `LocalClient` as another process
//! would.

use replication::local::control::{CONTROL_FILE, LocalClient};
use replication::{DiskSpec, ErrorKind, ReplicationEngine, SourceSpec};

use super::{TestResult, engine, restarted, temp};

fn spec(name: &str, image: &std::path::Path) -> SourceSpec {
    SourceSpec {
        name: name.to_owned(),
        hostname: None,
        disks: vec![DiskSpec {
            device: image.display().to_string(),
            size_bytes: 1 << 20,
            used_bytes: 1 << 20,
        }],
        change_rate_bytes_per_second: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_calls_the_engine_that_owns_the_staging_folder() -> TestResult {
    let dir = temp("control");
    let image = dir.join("web-01.img");
    std::fs::write(&image, vec![0u8; 1 << 20])?;
    let owner = engine(&dir).await?;
    let staging = dir.join("staging");
    let quotas = owner.quotas();
    let Some((client, _)) = LocalClient::find(&staging, quotas).await else {
        return Err("the owner answers on its control port".into());
    };
    assert_eq!(client.pid(), std::process::id());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(staging.join(CONTROL_FILE))?.permissions(),
    );
    assert_eq!(mode & 0o077, 0, "only the owner's user reads the token");

    // What the client registers, the owner knows, and the other way round.
    let registered = client.register_source(&spec("web-01", &image)).await?;
    let seen = owner.find_source("web-01").await?;
    assert_eq!(seen.map(|s| s.id), Some(registered.id.clone()));
    let install = client.agent_install(&registered.id).await?;
    let install = install.ok_or("the local engine installs its own agent")?;
    assert_eq!(install.template, "local");
    assert!(
        !install.secret.is_empty(),
        "the token travels to the caller"
    );
    assert_eq!(client.describe_source(&registered.id).await?.name, "web-01");
    // The owner's refusals arrive as they are, kind and message.
    let refused = client
        .finalize_cutover(&replication::SourceId("s-nosuch".to_owned()))
        .await
        .err()
        .ok_or("finalizing an unknown source is refused")?;
    assert_eq!(refused.kind, ErrorKind::NotFound, "{refused}");
    assert!(refused.message.contains("s-nosuch"), "{refused}");

    // A control file whose token is not the owner's gets nothing done.
    let file = staging.join(CONTROL_FILE);
    let real = std::fs::read_to_string(&file)?;
    let forged = serde_json::to_string(&{
        let mut value: serde_json::Value = serde_json::from_str(&real)?;
        value["token"] = serde_json::Value::from("0".repeat(48));
        value
    })?;
    std::fs::write(&file, forged)?;
    assert!(
        LocalClient::find(&staging, quotas).await.is_none(),
        "a wrong token is refused"
    );
    std::fs::write(&file, &real)?;

    // Once the owner stops, its control file is gone and nobody answers.
    owner.shutdown();
    assert!(!file.exists(), "the owner's control file goes with it");
    std::fs::write(&file, &real)?;
    assert!(
        LocalClient::find(&staging, quotas).await.is_none(),
        "a control file left behind leads nowhere"
    );
    // A new owner (a replicator restarted): the client finds it again by itself.
    drop(owner);
    let again = restarted(&dir, "127.0.0.1:0".parse()?).await?;
    let seen = client.describe_source(&registered.id).await?;
    assert_eq!(seen.name, "web-01", "the new owner answers the old client");
    again.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
