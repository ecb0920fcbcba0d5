//! The life-cycle rules every engine keeps, as MGN keeps them: which launches, life-cycle
//! changes, terminations, finalizations and archivings a source server allows in its
//! state. Shared by the rehearsal and the local engine, so a rehearsal refuses exactly
//! what a real run would.

use crate::{
    EngineError, EngineResult, ErrorKind, Health, LaunchKind, LifeCycle, ReplicationState,
};

pub fn conflict(message: String) -> EngineError {
    EngineError::new(ErrorKind::Conflict, message)
}

pub fn life_cycle_name(state: LifeCycle) -> &'static str {
    match state {
        LifeCycle::NotReady => "not_ready",
        LifeCycle::ReadyForTest => "ready_for_test",
        LifeCycle::Testing => "testing",
        LifeCycle::ReadyForCutover => "ready_for_cutover",
        LifeCycle::CuttingOver => "cutting_over",
        LifeCycle::Cutover => "cutover",
        LifeCycle::Disconnected => "disconnected",
        LifeCycle::Archived => "archived",
    }
}

pub fn state_name(state: ReplicationState) -> &'static str {
    match state {
        ReplicationState::Initiating => "initiating",
        ReplicationState::InitialSync => "initial_sync",
        ReplicationState::Backlog => "backlog",
        ReplicationState::CreatingSnapshot => "creating_snapshot",
        ReplicationState::Continuous => "continuous",
        ReplicationState::Paused => "paused",
        ReplicationState::Rescan => "rescan",
        ReplicationState::Stalled => "stalled",
        ReplicationState::Disconnected => "disconnected",
        ReplicationState::Stopped => "stopped",
    }
}

pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Initializing => "initializing",
        Health::Ok => "ok",
        Health::Impaired => "impaired",
    }
}

/// A launch from the latest data needs continuous replication.
pub fn check_continuous(label: &str, replication: ReplicationState) -> EngineResult<()> {
    if replication != ReplicationState::Continuous {
        return Err(conflict(format!(
            "{label} cannot be launched: its replication is {}, a launch needs continuous replication",
            state_name(replication)
        )));
    }
    Ok(())
}

/// A launch of `kind` for a server in this state; `live_cutover` names a cutover launch
/// or target the server still has. A launch from a named recovery point (`from_point`)
/// reads only what the engine holds, so it needs no replication going on.
pub fn check_launch(
    label: &str,
    kind: LaunchKind,
    life_cycle: LifeCycle,
    replication: ReplicationState,
    live_cutover: Option<&str>,
    from_point: bool,
) -> EngineResult<()> {
    if !from_point {
        check_continuous(label, replication)?;
    }
    let name = life_cycle_name(life_cycle);
    match kind {
        LaunchKind::Test => {
            if !matches!(
                life_cycle,
                LifeCycle::ReadyForTest | LifeCycle::Testing | LifeCycle::ReadyForCutover
            ) {
                return Err(conflict(format!(
                    "{label} is {name}; a test launch needs ready_for_test, testing or ready_for_cutover"
                )));
            }
        }
        LaunchKind::Cutover => {
            if life_cycle != LifeCycle::ReadyForCutover {
                return Err(conflict(format!(
                    "{label} is {name}; a cutover launch needs ready_for_cutover (mark it after a successful test)"
                )));
            }
            if let Some(running) = live_cutover {
                return Err(conflict(format!(
                    "{label} still has a cutover {running}; terminate its cutover targets first"
                )));
            }
        }
    }
    Ok(())
}

pub fn check_terminate(label: &str, kind: LaunchKind, life_cycle: LifeCycle) -> EngineResult<()> {
    // MGN's TerminateTargetInstances does not work while a server is testing: a test
    // ends (ready for test again, or ready for cutover) before its copy goes.
    if kind == LaunchKind::Test && life_cycle == LifeCycle::Testing {
        return Err(conflict(format!(
            "{label} is testing: its test targets cannot be terminated; change its life cycle to ready_for_test or ready_for_cutover first"
        )));
    }
    if kind != LaunchKind::Cutover {
        return Ok(());
    }
    match life_cycle {
        LifeCycle::CuttingOver => Err(conflict(format!(
            "{label} is cutting_over: its cutover targets cannot be terminated; to roll back, change its life cycle to ready_for_cutover first"
        ))),
        LifeCycle::Cutover | LifeCycle::Archived => Err(conflict(format!(
            "{label} is {}: its cutover targets are kept (after finalize the target is the production server)",
            life_cycle_name(life_cycle)
        ))),
        _ => Ok(()),
    }
}

pub fn check_finalize(label: &str, life_cycle: LifeCycle) -> EngineResult<()> {
    if life_cycle != LifeCycle::CuttingOver {
        return Err(conflict(format!(
            "{label} is {}; finalize needs cutting_over, after a cutover launch",
            life_cycle_name(life_cycle)
        )));
    }
    Ok(())
}

/// A change of life cycle asked for by a task (the others are the engine's own).
pub fn check_change(
    label: &str,
    from: LifeCycle,
    to: LifeCycle,
    replication: ReplicationState,
) -> EngineResult<()> {
    use LifeCycle::*;
    let (from_name, to_name) = (life_cycle_name(from), life_cycle_name(to));
    if from == to {
        return Err(conflict(format!("{label} is already {to_name}")));
    }
    if matches!(to, NotReady | Testing | CuttingOver | Cutover | Archived) {
        return Err(conflict(format!(
            "{to_name} is set by the engine (registration, a launch, finalize_cutover or archive), not by change_life_cycle"
        )));
    }
    let needs_continuous = match (from, to) {
        (ReadyForTest | Testing, ReadyForCutover) | (Testing | ReadyForCutover, ReadyForTest) => {
            true
        }
        (CuttingOver, ReadyForCutover)
        | (NotReady | ReadyForTest | Testing | ReadyForCutover | Cutover, Disconnected) => false,
        _ => {
            return Err(conflict(format!(
                "{label} cannot go from {from_name} to {to_name}; allowed: ready_for_test or testing to ready_for_cutover, cutting_over to ready_for_cutover (rollback), testing or ready_for_cutover to ready_for_test, anything but cutting_over, disconnected or archived to disconnected"
            )));
        }
    };
    if needs_continuous && replication != ReplicationState::Continuous {
        return Err(conflict(format!(
            "{label} cannot be marked {to_name}: its replication is {}, not continuous",
            state_name(replication)
        )));
    }
    Ok(())
}

pub fn check_archive(label: &str, life_cycle: LifeCycle) -> EngineResult<()> {
    if !matches!(life_cycle, LifeCycle::Cutover | LifeCycle::Disconnected) {
        return Err(conflict(format!(
            "{label} is {}; archive needs cutover (after finalize) or disconnected",
            life_cycle_name(life_cycle)
        )));
    }
    Ok(())
}

/// A launch of `servers` servers while `active_jobs` jobs with `in_active_jobs` servers
/// run, within the engine's quotas.
pub fn check_quotas(
    quotas: crate::Quotas,
    servers: usize,
    active_jobs: usize,
    in_active_jobs: usize,
) -> EngineResult<()> {
    if servers == 0 {
        return Err(EngineError::new(
            ErrorKind::Invalid,
            "a launch needs at least one source server",
        ));
    }
    if servers > quotas.max_servers_per_job {
        return Err(EngineError::new(
            ErrorKind::QuotaExceeded,
            format!(
                "{servers} servers in one launch job; the quota is {} per job",
                quotas.max_servers_per_job
            ),
        ));
    }
    if active_jobs >= quotas.max_concurrent_jobs {
        return Err(EngineError::new(
            ErrorKind::QuotaExceeded,
            format!(
                "{active_jobs} launch jobs are still running; the quota is {} concurrent jobs",
                quotas.max_concurrent_jobs
            ),
        ));
    }
    if in_active_jobs.saturating_add(servers) > quotas.max_servers_in_active_jobs {
        return Err(EngineError::new(
            ErrorKind::QuotaExceeded,
            format!(
                "{in_active_jobs} servers are in running launch jobs; {servers} more would pass the quota of {}",
                quotas.max_servers_in_active_jobs
            ),
        ));
    }
    Ok(())
}
