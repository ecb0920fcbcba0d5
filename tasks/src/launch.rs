//! What boot_test and cutover share: find the source, start a launch (or find the one
//! this task already started), follow it until the target runs and is healthy.

use replication::{
    Health, Job, JobId, LaunchKind, LaunchSettings, LaunchStatus, SourceServer, Target, TargetId,
    TargetState,
};

use crate::context::{Action, Report, TaskContext};

pub async fn source(ctx: &TaskContext<'_>) -> Result<SourceServer, Report> {
    match ctx.engine.find_source(&ctx.server.name.value).await {
        Err(err) => Err(Report::engine_error(
            "reading the source server",
            &err,
            Vec::new(),
        )),
        Ok(None) => Err(Report::fail(
            format!(
                "the engine does not know {}: its agent is not installed",
                ctx.server.name.value
            ),
            false,
            Vec::new(),
        )),
        Ok(Some(source)) => Ok(source),
    }
}

/// Every launch job that included the source, oldest first.
async fn jobs_of(ctx: &TaskContext<'_>, source: &SourceServer) -> Result<Vec<Job>, Report> {
    ctx.engine
        .jobs_for_source(&source.id)
        .await
        .map_err(|err| Report::engine_error("reading launch jobs", &err, Vec::new()))
}

/// The launch of this kind this task started earlier (after `started_at`), if the
/// engine has one: a task interrupted after launching finds it here instead of
/// launching again.
pub async fn earlier_launch(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    kind: LaunchKind,
) -> Result<Option<Job>, Report> {
    let jobs = jobs_of(ctx, source).await?;
    Ok(resumable(jobs, &source.id, kind, ctx.started_at))
}

/// The latest of `jobs` of this kind since `since` whose launch of `source` is under
/// way or done. One that failed or was terminated is not resumed: a retry launches
/// again (a failed launch found again would fail every retry the same way).
fn resumable(
    jobs: Vec<Job>,
    source: &replication::SourceId,
    kind: LaunchKind,
    since: jiff::Timestamp,
) -> Option<Job> {
    jobs.into_iter()
        .rev()
        .filter(|job| job.kind == kind && job.created_at >= since)
        .find(|job| {
            job.servers.iter().any(|s| {
                s.source == *source
                    && !matches!(s.status, LaunchStatus::Terminated | LaunchStatus::Failed)
            })
        })
}

/// Starts a launch of this one server, unless this task already did. `resume` is the
/// caller's step as it stands: a launch refused for a quota waits there.
pub async fn ensure_launch(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    kind: LaunchKind,
    actions: &mut Vec<Action>,
    resume: serde_json::Value,
) -> Result<JobId, Report> {
    if let Some(job) = earlier_launch(ctx, source, kind).await? {
        actions.push(Action {
            action: "task.resume".to_owned(),
            detail: format!("found the {kind} launch {} started earlier", job.id),
        });
        return Ok(job.id);
    }
    prepare(ctx, source, kind, actions).await?;
    let job = ctx
        .launcher
        .launch(ctx.engine, kind, source.id.clone())
        .await
        .map_err(|err| {
            if err.kind == replication::ErrorKind::QuotaExceeded {
                // A full quota is capacity to wait for, not a failure: the task looks
                // again with the others refused at the same moment, so they share the
                // next job.
                return Report::wait(
                    resume.clone(),
                    crate::context::later(ctx.now, crate::context::POLL_SECONDS),
                    format!("waiting for launch capacity: {}", err.message),
                    actions.clone(),
                );
            }
            Report::engine_error(
                &format!("starting the {kind} launch"),
                &err,
                actions.clone(),
            )
        })?;
    actions.push(Action {
        action: "engine.start_launch".to_owned(),
        detail: format!(
            "{kind} launch, job {} ({} server(s))",
            job.id,
            job.servers.len()
        ),
    });
    Ok(job.id.clone())
}

/// The server's blueprint of this kind, as the engine's launch settings.
fn settings(server: &waves::model::Server, kind: LaunchKind) -> LaunchSettings {
    let blueprint = match kind {
        LaunchKind::Test => &server.blueprints.test,
        LaunchKind::Cutover => &server.blueprints.cutover,
    };
    LaunchSettings {
        instance_type: blueprint.instance_type.clone(),
        subnet: blueprint.subnet.clone(),
        security_groups: blueprint.security_groups.clone(),
        tags: blueprint.tags.clone(),
    }
}

/// Puts the server's blueprint of this kind in force for its next launch (an engine
/// with nothing to set changes nothing). A blueprint the engine refuses (a subnet that
/// does not exist) fails the task for good, naming the blueprint: retrying cannot help.
async fn prepare(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    kind: LaunchKind,
    actions: &mut Vec<Action>,
) -> Result<(), Report> {
    let settings = settings(ctx.server, kind);
    match ctx.engine.prepare_launch(&source.id, kind, &settings).await {
        Ok(None) => Ok(()),
        Ok(Some(change)) => {
            actions.push(Action {
                action: "engine.prepare_launch".to_owned(),
                detail: change,
            });
            Ok(())
        }
        Err(err) => Err(Report::engine_error(
            &format!(
                "the {kind} blueprint of {} (line {} of wave {})",
                ctx.server.name.value, ctx.server.location.line, ctx.wave
            ),
            &err,
            actions.clone(),
        )),
    }
}

/// Where a launch stands for this server.
pub enum LaunchState {
    InProgress,
    Launched(TargetId),
    Failed(String),
}

pub async fn launch_state(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    job: &JobId,
) -> Result<LaunchState, Report> {
    let job = ctx
        .engine
        .describe_job_for(job, &source.id)
        .await
        .map_err(|err| Report::engine_error("reading the launch job", &err, Vec::new()))?;
    let Some(entry) = job.servers.iter().find(|s| s.source == source.id) else {
        return Ok(LaunchState::Failed(format!(
            "job {} does not include {}",
            job.id, source.name
        )));
    };
    Ok(match (entry.status, &entry.target) {
        (LaunchStatus::Launched, Some(target)) => LaunchState::Launched(target.clone()),
        (LaunchStatus::Failed, _) | (LaunchStatus::Terminated, _) => LaunchState::Failed(
            entry
                .message
                .clone()
                .unwrap_or_else(|| format!("the launch ended {:?}", entry.status)),
        ),
        _ => LaunchState::InProgress,
    })
}

pub async fn target(ctx: &TaskContext<'_>, id: &TargetId) -> Result<Target, Report> {
    ctx.engine
        .describe_target(id)
        .await
        .map_err(|err| Report::engine_error("reading the target", &err, Vec::new()))
}

/// Why a target that is not healthy fails its launch: its health and the engine's
/// detail (EC2's status checks, a boot's last lines).
pub fn unhealthy(kind: LaunchKind, target: &Target) -> String {
    format!(
        "the {kind} target {} did not pass its status checks ({:?}){}",
        target.id,
        target.health,
        target
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    )
}

pub fn is_healthy(target: &Target) -> Option<bool> {
    match (target.state, target.health) {
        (TargetState::Running, Health::Ok) => Some(true),
        (TargetState::Running, Health::Initializing) | (TargetState::Pending, _) => None,
        _ => Some(false),
    }
}

/// Ends a failed test: a server still testing is made ready for test again (the engine
/// keeps a testing server's test copy, as MGN does), so its copy can be terminated and
/// the test run again.
pub async fn leave_testing(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    actions: &mut Vec<Action>,
) -> Result<(), replication::EngineError> {
    let now = ctx.engine.describe_source(&source.id).await?;
    if now.life_cycle != replication::LifeCycle::Testing {
        return Ok(());
    }
    ctx.engine
        .change_life_cycle(&source.id, replication::LifeCycle::ReadyForTest)
        .await?;
    actions.push(Action {
        action: "engine.change_life_cycle".to_owned(),
        detail: "ready_for_test (the test failed)".to_owned(),
    });
    Ok(())
}

/// Terminates the server's targets of this kind unless they are terminated already, so
/// a resumed task never terminates twice.
pub async fn terminate_once(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    target: Option<&TargetId>,
    kind: LaunchKind,
    actions: &mut Vec<Action>,
) -> Result<(), Report> {
    if let Some(id) = target
        && let Ok(t) = ctx.engine.describe_target(id).await
        && t.state == TargetState::Terminated
    {
        return Ok(());
    }
    ctx.engine
        .terminate_targets(&source.id, kind)
        .await
        .map_err(|err| {
            Report::engine_error(
                &format!("terminating the {kind} target"),
                &err,
                actions.clone(),
            )
        })?;
    actions.push(Action {
        action: "engine.terminate_targets".to_owned(),
        detail: format!(
            "{kind} target{}",
            target.map(|t| format!(" {t}")).unwrap_or_default()
        ),
    });
    Ok(())
}

/// The target of the server's latest launch of this kind, whoever started it.
pub async fn earlier_launch_any(
    ctx: &TaskContext<'_>,
    source: &SourceServer,
    kind: LaunchKind,
) -> Result<Option<String>, Report> {
    let jobs = jobs_of(ctx, source).await?;
    Ok(jobs
        .iter()
        .rev()
        .filter(|job| job.kind == kind)
        .flat_map(|job| job.servers.iter())
        .find(|s| s.source == source.id && s.status == LaunchStatus::Launched)
        .and_then(|s| s.target.as_ref().map(|t| t.0.clone())))
}

#[cfg(test)]
mod tests {
    use replication::{Job, JobId, JobServer, JobStatus, LaunchKind, LaunchStatus, SourceId};

    fn job(id: &str, kind: LaunchKind, at: i64, entries: &[(&str, LaunchStatus)]) -> Job {
        Job {
            id: JobId(id.to_owned()),
            kind,
            status: JobStatus::Completed,
            created_at: jiff::Timestamp::from_second(at).expect("a time"),
            servers: entries
                .iter()
                .map(|(source, status)| JobServer {
                    source: SourceId((*source).to_owned()),
                    status: *status,
                    target: None,
                    message: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_launch_under_way_or_done_is_resumed_and_a_failed_or_terminated_one_is_not() {
        let me = SourceId("s-1".to_owned());
        let since = jiff::Timestamp::from_second(1_000).expect("a time");
        let found = |jobs: Vec<Job>| {
            super::resumable(jobs, &me, LaunchKind::Test, since).map(|job| job.id.0)
        };
        use LaunchStatus::*;
        for (status, resumed) in [
            (Pending, true),
            (InProgress, true),
            (Launched, true),
            (Failed, false),
            (Terminated, false),
        ] {
            let jobs = vec![job("j-1", LaunchKind::Test, 1_000, &[("s-1", status)])];
            assert_eq!(found(jobs).is_some(), resumed, "{status:?}");
        }
        // The latest that counts: a launch that failed after one that worked is not
        // resumed, the earlier one is.
        let jobs = vec![
            job("j-1", LaunchKind::Test, 1_100, &[("s-1", Launched)]),
            job(
                "j-2",
                LaunchKind::Test,
                1_200,
                &[("s-1", Failed), ("s-2", Launched)],
            ),
        ];
        assert_eq!(found(jobs).as_deref(), Some("j-1"));
        // Not before the task began, not of the other kind, not another server's.
        let jobs = vec![
            job("j-0", LaunchKind::Test, 999, &[("s-1", Launched)]),
            job("j-1", LaunchKind::Cutover, 1_100, &[("s-1", Launched)]),
            job("j-2", LaunchKind::Test, 1_200, &[("s-2", Launched)]),
        ];
        assert_eq!(found(jobs), None);
    }
}
