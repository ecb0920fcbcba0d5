//! Launches and the life cycle: the rules, a whole migration with its rollback, quotas,
//! unknown ids, the calls counted.

use replication::sim::{SimConfig, SimEngine};
use replication::{
    ErrorKind, Health, JobStatus, LaunchKind, LaunchStatus, LifeCycle, PointInTime, Quotas,
    ReplicationEngine, ReplicationState, SourceId, TargetId, TargetState,
};

use super::*;

/// Rehearsal timings without failures: continuous after about 6 minutes (300 s
/// initiate, a few seconds of sync, 60 s snapshot); launches take 600 s, boots 300 s.
fn ready_engine() -> (std::sync::Arc<replication::sim::ManualClock>, SimEngine) {
    engine(quiet(11))
}

async fn continuous(
    engine: &SimEngine,
    clock: &replication::sim::ManualClock,
    name: &str,
) -> Result<SourceId, Box<dyn std::error::Error>> {
    let id = engine.register_source(&spec(name, GIB, 0.0)).await?.id;
    clock.advance(HOUR);
    assert_eq!(state_of(engine, &id).await?, ReplicationState::Continuous);
    Ok(id)
}

async fn only_target(
    engine: &SimEngine,
    job: &replication::JobId,
) -> Result<TargetId, Box<dyn std::error::Error>> {
    let job = engine.describe_job(job).await?;
    Ok(job.servers[0].target.clone().ok_or("no target yet")?)
}

#[tokio::test]
async fn a_whole_migration_with_a_rollback() -> TestResult {
    let (clock, engine) = ready_engine();
    let id = engine
        .register_source(&spec("app-01", GIB, 1000.0))
        .await?
        .id;
    assert_refused(
        launch(&engine, LaunchKind::Test, &id).await,
        ErrorKind::Conflict,
        "needs continuous replication",
    );
    clock.advance(HOUR);
    let server = engine.describe_source(&id).await?;
    assert_eq!(server.life_cycle, LifeCycle::ReadyForTest);
    assert_eq!(server.replication.lag_seconds, Some(5.0));
    assert_refused(
        launch(&engine, LaunchKind::Cutover, &id).await,
        ErrorKind::Conflict,
        "needs ready_for_cutover",
    );
    assert_refused(
        engine.finalize_cutover(&id).await,
        ErrorKind::Conflict,
        "needs cutting_over",
    );

    // A test launch: in progress for 600 s, then a target that boots in 300 s.
    let test = launch(&engine, LaunchKind::Test, &id).await?;
    assert_eq!(test.status, JobStatus::Started);
    assert_eq!(test.servers[0].status, LaunchStatus::InProgress);
    assert_eq!(
        engine.describe_source(&id).await?.life_cycle,
        LifeCycle::Testing
    );
    clock.advance(599.0);
    assert_eq!(
        engine.describe_job(&test.id).await?.servers[0].status,
        LaunchStatus::InProgress
    );
    clock.advance(1.0);
    let test_target = only_target(&engine, &test.id).await?;
    let target = engine.describe_target(&test_target).await?;
    assert_eq!(
        engine.describe_job(&test.id).await?.status,
        JobStatus::Completed
    );
    assert_eq!(
        (target.state, target.health),
        (TargetState::Running, Health::Initializing)
    );
    let address = target.address.ok_or("a running target has an address")?;
    assert!(address.ends_with(".rehearsal.invalid"), "{address}");
    clock.advance(300.0);
    assert_eq!(
        engine.describe_target(&test_target).await?.health,
        Health::Ok
    );
    // As on MGN, a testing server's copy stays until the test ends.
    assert_refused(
        engine.terminate_targets(&id, LaunchKind::Test).await,
        ErrorKind::Conflict,
        "is testing",
    );
    engine
        .change_life_cycle(&id, LifeCycle::ReadyForCutover)
        .await?;
    engine.terminate_targets(&id, LaunchKind::Test).await?;
    assert_eq!(
        engine.describe_target(&test_target).await?.state,
        TargetState::Terminated
    );

    // A cutover that runs past its window: rolled back, then done again.
    let cutover = launch(&engine, LaunchKind::Cutover, &id).await?;
    assert_eq!(
        engine.describe_source(&id).await?.life_cycle,
        LifeCycle::CuttingOver
    );
    assert_refused(
        engine.finalize_cutover(&id).await,
        ErrorKind::Conflict,
        "still in progress",
    );
    clock.advance(600.0);
    assert_refused(
        engine.finalize_cutover(&id).await,
        ErrorKind::Conflict,
        "initializing",
    );
    assert_refused(
        engine.terminate_targets(&id, LaunchKind::Cutover).await,
        ErrorKind::Conflict,
        "cutting_over",
    );
    assert_refused(
        launch(&engine, LaunchKind::Cutover, &id).await,
        ErrorKind::Conflict,
        "cutting_over",
    );
    engine
        .change_life_cycle(&id, LifeCycle::ReadyForCutover)
        .await?;
    assert_refused(
        launch(&engine, LaunchKind::Cutover, &id).await,
        ErrorKind::Conflict,
        "terminate its cutover targets first",
    );
    engine.terminate_targets(&id, LaunchKind::Cutover).await?;
    let first_cutover_target = only_target(&engine, &cutover.id).await?;
    assert_eq!(
        engine.describe_target(&first_cutover_target).await?.state,
        TargetState::Terminated
    );
    assert_eq!(
        engine.describe_job(&cutover.id).await?.servers[0].status,
        LaunchStatus::Terminated
    );

    let again = launch(&engine, LaunchKind::Cutover, &id).await?;
    clock.advance(900.0);
    engine.finalize_cutover(&id).await?;
    let server = engine.describe_source(&id).await?;
    assert_eq!(server.life_cycle, LifeCycle::Cutover);
    assert_eq!(server.replication.state, ReplicationState::Disconnected);
    assert!(engine.recovery_points(&id).await?.is_empty());
    assert_refused(
        engine.finalize_cutover(&id).await,
        ErrorKind::Conflict,
        "is cutover",
    );
    assert_refused(
        engine.terminate_targets(&id, LaunchKind::Cutover).await,
        ErrorKind::Conflict,
        "production",
    );
    engine.archive(&id).await?;
    assert_refused(
        engine.archive(&id).await,
        ErrorKind::Conflict,
        "is archived",
    );
    let production = only_target(&engine, &again.id).await?;
    assert_eq!(
        engine.describe_target(&production).await?.state,
        TargetState::Running
    );

    let jobs = engine.jobs_for_source(&id).await?;
    let ids: Vec<_> = jobs.iter().map(|job| job.id.clone()).collect();
    assert_eq!(ids, vec![test.id, cutover.id, again.id]);
    let actions: Vec<_> = engine.actions().iter().map(|a| a.action.clone()).collect();
    assert_eq!(
        actions,
        [
            "register",
            "start_launch",
            "change_life_cycle",
            "terminate_targets",
            "start_launch",
            "change_life_cycle",
            "terminate_targets",
            "start_launch",
            "finalize_cutover",
            "archive",
        ]
    );
    assert!(engine.actions().iter().all(|a| a.source == "app-01"));
    Ok(())
}

#[tokio::test]
async fn life_cycle_changes_follow_the_rules() -> TestResult {
    use LifeCycle::*;
    // (life cycle reached by the setup, change asked, accepted)
    let cases = [
        (NotReady, ReadyForCutover, false),
        (NotReady, Disconnected, true),
        (ReadyForTest, ReadyForCutover, true),
        (ReadyForTest, ReadyForTest, false),
        (ReadyForTest, Testing, false),
        (ReadyForTest, Cutover, false),
        (ReadyForTest, Archived, false),
        (Testing, ReadyForCutover, true),
        (Testing, ReadyForTest, true),
        (ReadyForCutover, ReadyForTest, true),
        (ReadyForCutover, Disconnected, true),
        (CuttingOver, ReadyForCutover, true),
        (CuttingOver, ReadyForTest, false),
        (CuttingOver, Disconnected, false),
        (Disconnected, ReadyForTest, false),
    ];
    for (from, to, accepted) in cases {
        let (clock, engine) = ready_engine();
        let id = engine.register_source(&spec("lc", GIB, 0.0)).await?.id;
        if from != NotReady {
            clock.advance(HOUR);
        }
        match from {
            Testing => {
                launch(&engine, LaunchKind::Test, &id).await?;
            }
            ReadyForCutover => engine.change_life_cycle(&id, ReadyForCutover).await?,
            CuttingOver => {
                engine.change_life_cycle(&id, ReadyForCutover).await?;
                launch(&engine, LaunchKind::Cutover, &id).await?;
            }
            Disconnected => engine.change_life_cycle(&id, Disconnected).await?,
            _ => {}
        }
        assert_eq!(engine.describe_source(&id).await?.life_cycle, from);
        let actions = engine.actions().len();
        let result = engine.change_life_cycle(&id, to).await;
        let now = engine.describe_source(&id).await?.life_cycle;
        if accepted {
            assert!(result.is_ok(), "{from:?} -> {to:?}: {result:?}");
            assert_eq!(now, to);
            assert_eq!(engine.actions().len(), actions + 1);
        } else {
            assert_refused(result, ErrorKind::Conflict, "");
            assert_eq!(now, from, "a refused change changes nothing");
            assert_eq!(
                engine.actions().len(),
                actions,
                "a refused change is not recorded"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_first_test_launch_boots_impaired_and_the_retry_boots_fine() -> TestResult {
    let (clock, engine) = engine(SimConfig {
        boot_failure_probability: 1.0,
        ..quiet(4)
    });
    let id = continuous(&engine, &clock, "flaky").await?;
    let first = launch(&engine, LaunchKind::Test, &id).await?;
    clock.advance(900.0);
    let first_target = only_target(&engine, &first.id).await?;
    assert_eq!(
        engine.describe_target(&first_target).await?.health,
        Health::Impaired
    );
    let retry = launch(&engine, LaunchKind::Test, &id).await?;
    assert_eq!(
        engine.describe_target(&first_target).await?.state,
        TargetState::Terminated,
        "replaced"
    );
    clock.advance(900.0);
    let retry_target = only_target(&engine, &retry.id).await?;
    assert_eq!(
        engine.describe_target(&retry_target).await?.health,
        Health::Ok
    );
    Ok(())
}

#[tokio::test]
async fn quotas_limit_servers_per_job_jobs_and_servers_in_jobs() -> TestResult {
    let (clock, engine) = engine(SimConfig {
        launch_seconds: 600.0,
        ..SimConfig::instant(8)
    });
    assert_eq!(
        engine.quotas(),
        Quotas {
            max_servers_per_job: 200,
            max_concurrent_jobs: 20,
            max_servers_in_active_jobs: 200
        }
    );
    let specs: Vec<_> = (0..230)
        .map(|n| spec(&format!("q-{n:03}"), GIB, 0.0))
        .collect();
    let ids = register_all(&engine, &specs).await?;
    let latest = PointInTime::Latest;

    assert_refused(
        engine
            .start_launch(LaunchKind::Test, &ids[..201], &latest)
            .await,
        ErrorKind::QuotaExceeded,
        "201 servers in one launch job",
    );
    let big = engine
        .start_launch(LaunchKind::Test, &ids[..200], &latest)
        .await?;
    assert_refused(
        engine
            .start_launch(LaunchKind::Test, &ids[200..201], &latest)
            .await,
        ErrorKind::QuotaExceeded,
        "200 servers are in running launch jobs",
    );
    clock.advance(600.0);
    assert_eq!(
        engine.describe_job(&big.id).await?.status,
        JobStatus::Completed
    );

    for n in 0..20 {
        engine
            .start_launch(LaunchKind::Test, &ids[200 + n..201 + n], &latest)
            .await?;
    }
    assert_refused(
        engine
            .start_launch(LaunchKind::Test, &ids[220..221], &latest)
            .await,
        ErrorKind::QuotaExceeded,
        "the quota is 20 concurrent jobs",
    );
    clock.advance(600.0);
    engine
        .start_launch(LaunchKind::Test, &ids[220..221], &latest)
        .await?;

    assert_refused(
        engine.start_launch(LaunchKind::Test, &[], &latest).await,
        ErrorKind::Invalid,
        "at least one",
    );
    assert_refused(
        engine
            .start_launch(LaunchKind::Test, &[ids[0].clone(), ids[0].clone()], &latest)
            .await,
        ErrorKind::Invalid,
        "twice",
    );
    Ok(())
}

#[tokio::test]
async fn unknown_ids_are_not_found() -> TestResult {
    let (_clock, engine) = ready_engine();
    engine.register_source(&spec("known", GIB, 0.0)).await?;
    let ghost = SourceId("sim-source-2".to_owned());
    for id in ["sim-source-2", "sim-source-0", "sim-source-01", "s-1", ""] {
        let id = SourceId(id.to_owned());
        assert_refused(
            engine.describe_source(&id).await,
            ErrorKind::NotFound,
            "no source server",
        );
    }
    assert_refused(
        engine.jobs_for_source(&ghost).await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine.recovery_points(&ghost).await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine.terminate_targets(&ghost, LaunchKind::Test).await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine.finalize_cutover(&ghost).await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine
            .change_life_cycle(&ghost, LifeCycle::Disconnected)
            .await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine.archive(&ghost).await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine
            .start_launch(LaunchKind::Test, &[ghost], &PointInTime::Latest)
            .await,
        ErrorKind::NotFound,
        "sim-source-2",
    );
    assert_refused(
        engine
            .describe_job(&replication::JobId("sim-job-1".into()))
            .await,
        ErrorKind::NotFound,
        "sim-job-1",
    );
    assert_refused(
        engine
            .describe_target(&TargetId("sim-target-1".into()))
            .await,
        ErrorKind::NotFound,
        "sim-target-1",
    );
    assert_eq!(engine.find_source("nobody").await?, None);
    assert!(engine.actions().len() == 1, "only the registration acted");
    Ok(())
}

#[tokio::test]
async fn registration_is_idempotent_and_validated_and_calls_are_counted() -> TestResult {
    let (_clock, engine) = ready_engine();
    assert_eq!((engine.name(), engine.is_rehearsal()), ("sim", true));
    let first = engine.register_source(&spec("web", 10 * GIB, 0.0)).await?;
    let again = engine.register_source(&spec("web", 99 * GIB, 5.0)).await?;
    assert_eq!(first, again);
    assert_eq!(first.replication.total_bytes, (10 * GIB) * 2 / 3);
    assert_eq!(
        (first.replication.state, first.life_cycle),
        (ReplicationState::Initiating, LifeCycle::NotReady)
    );
    assert_refused(
        engine.register_source(&spec(" ", GIB, 0.0)).await,
        ErrorKind::Invalid,
        "needs a name",
    );
    assert_refused(
        engine.register_source(&spec("bad", GIB, f64::NAN)).await,
        ErrorKind::Invalid,
        "change rate",
    );
    assert_refused(
        engine.register_source(&spec("bad", GIB, -1.0)).await,
        ErrorKind::Invalid,
        "change rate",
    );
    assert_eq!(engine.actions().len(), 1);
    let calls = engine.calls();
    assert_eq!(calls.get("register_source"), Some(&5));
    assert_eq!(calls.get("name"), Some(&1));
    assert_eq!(calls.get("is_rehearsal"), Some(&1));
    assert_eq!(calls.get("describe_source"), None);
    Ok(())
}
