//! Scale: 10,000 servers over three weeks. The time is printed, not asserted (speed is
//! measured by benchmarks).

use std::time::Instant;

use replication::sim::SimConfig;
use replication::{LifeCycle, ReplicationState};

use super::*;

#[tokio::test]
async fn ten_thousand_servers_over_three_weeks() -> TestResult {
    let (clock, engine) = engine(SimConfig::rehearsal(10_000));
    let specs: Vec<_> = fleet(10_000)
        .into_iter()
        .map(|mut spec| {
            // 0.5 to 20 GiB each: about 100 TiB in all, six days at 1 Gbit/s.
            spec.disks[0].used_bytes /= 2;
            spec
        })
        .collect();
    let started = Instant::now();
    let ids = register_all(&engine, &specs).await?;
    let registered = started.elapsed();
    clock.advance(DAY);
    let midway = describe_all(&engine, &ids).await?;
    clock.advance(20.0 * DAY);
    let servers = describe_all(&engine, &ids).await?;
    println!(
        "10,000 servers: registered in {registered:?}, advanced over three weeks and described twice in {:?}",
        started.elapsed()
    );
    assert!(
        midway
            .iter()
            .any(|s| s.replication.state == ReplicationState::InitialSync)
    );
    assert!(
        servers
            .iter()
            .all(|s| s.replication.state == ReplicationState::Continuous)
    );
    assert!(
        servers
            .iter()
            .all(|s| s.life_cycle == LifeCycle::ReadyForTest)
    );
    assert_eq!(engine.actions().len(), 10_000);
    Ok(())
}
