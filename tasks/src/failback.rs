//! Failback of one cut-over server, a step an operator runs (`wavelift failback`), not
//! a task of the wave's plan: the engine replicates the cutover copy back, its newest
//! state is written onto the source's own disks through the source's shell (only what
//! differs), and, unless told to stop there, the source returns to normal: its agent is
//! installed again, the copy is terminated and the source is ready for cutover again.
//! Each part is idempotent, so running it again after a stop goes on from where it was.

use std::time::{Duration, Instant};

use replication::{AgentInstall, EngineError, RestoreStep};

use crate::agent_push;
use crate::context::{Progress, Reach};

/// One restore step (a comparison reads the whole disks) may take this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Stop once the source holds the copy's state (the copy stays; a run again moves
    /// what changed on it since).
    Restored,
    /// Go on to return to normal.
    Normal,
}

/// What happened, for the log: an action name and its sentence.
pub type Say<'a> = dyn FnMut(&str, String) + Send + 'a;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub restored_chunks: u64,
    pub restored_bytes: u64,
    pub returned: bool,
}

fn engine(what: &str, err: &EngineError) -> String {
    format!("{what}: the engine said: {}", err.message)
}

/// Runs the failback of `reach.server` as far as `until`; `wait` bounds the wait for
/// the copy's first recovery point.
pub async fn run(
    reach: &Reach<'_>,
    until: Until,
    wait: Duration,
    say: &mut Say<'_>,
) -> Result<Outcome, String> {
    let name = &reach.server.name.value;
    let source = reach
        .engine
        .find_source(name)
        .await
        .map_err(|err| engine("looking for the source server", &err))?
        .ok_or_else(|| {
            format!(
                "the {} engine does not know {name}: it was never replicated, so there is nothing to fail back",
                reach.engine.name()
            )
        })?;
    let id = &source.id;
    let started = reach
        .engine
        .describe_failback(id)
        .await
        .map_err(|err| engine("looking for a failback", &err))?
        .is_none();
    let mut outcome = Outcome {
        restored_chunks: 0,
        restored_bytes: 0,
        returned: false,
    };
    // Started, or found started with its reverse agent running again.
    reach
        .engine
        .start_failback(id)
        .await
        .map_err(|err| engine("starting the failback", &err))?;
    if started {
        say(
            "engine.start_failback",
            format!("{name}: reverse replication of the cutover copy started"),
        );
        if source.life_cycle == replication::LifeCycle::Archived {
            say(
                "failback.note",
                format!(
                    "{name} was archived after its hypercare, so cmdb_cleanup retired its CMDB record: set the record back when the source is in service again"
                ),
            );
        }
    }
    // Wait for the copy's first point, then restore: a restore run again (after a
    // stop, or after --stop-after-restore) compares with a fresh point of the copy, so
    // only what changed on it since moves.
    let deadline = Instant::now() + wait;
    loop {
        let now = reach
            .engine
            .describe_failback(id)
            .await
            .map_err(|err| engine("watching the failback", &err))?;
        // A point of the copy, and its agent there to cut a fresh one.
        if now.as_ref().is_some_and(|f| {
            f.point.is_some() && f.replication.state == replication::ReplicationState::Continuous
        }) {
            break;
        }
        if Instant::now() >= deadline {
            let state = now.map(|f| f.replication.state);
            return Err(format!(
                "the copy of {name} has no recovery point after {} s (reverse replication {state:?}): see the reverse agent's log in the staging folder, failback/{id}/agent.log",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (chunks, bytes) = restore(reach, id, say).await?;
    outcome.restored_chunks = chunks;
    outcome.restored_bytes = bytes;
    if until == Until::Restored {
        return Ok(outcome);
    }
    normal_again(reach, id, wait, say, outcome).await
}

/// The return to normal of a restored source: its agent installed again (the engine
/// lets it in while the failback is restored), then the copy terminated and the source
/// ready for cutover, then a recovery point of the restored disks, cut at once. A
/// failed install leaves the failback restored, so running again goes on from here.
async fn normal_again(
    reach: &Reach<'_>,
    id: &replication::SourceId,
    wait: Duration,
    say: &mut Say<'_>,
    mut outcome: Outcome,
) -> Result<Outcome, String> {
    let name = &reach.server.name.value;
    let report = agent_push::install(reach).await;
    match report.progress {
        Progress::Done { output, .. } => {
            say("agent_push", format!("{name}: {output}"));
        }
        Progress::Fail { reason, .. } => {
            return Err(format!(
                "{name}'s agent was not installed again: {reason}; the source holds the copy's state, and running this again goes on from there"
            ));
        }
        other => return Err(format!("{name}: agent_push did not finish: {other:?}")),
    }
    reach
        .engine
        .return_to_normal(id)
        .await
        .map_err(|err| engine("returning to normal", &err))?;
    say(
        "engine.return_to_normal",
        format!("{name}: the copy is terminated, the source is ready for cutover again"),
    );
    // Normal again once the agent cut a recovery point of the restored disks.
    let deadline = Instant::now() + wait;
    loop {
        let why = match reach.engine.take_recovery_point(id).await {
            Ok(point) => {
                say(
                    "failback.normal",
                    format!(
                        "{name}: replicating in the normal direction again (recovery point {})",
                        point.id
                    ),
                );
                outcome.returned = true;
                return Ok(outcome);
            }
            Err(err) => err.message,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} returned to normal and its agent was installed again, but no recovery point of it was cut within {} s ({why}): see the agent's log on the source",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes the copy's newest state onto the source: the engine's steps, each run on the
/// source, each answer given back, until the engine says it is done.
async fn restore(
    reach: &Reach<'_>,
    id: &replication::SourceId,
    say: &mut Say<'_>,
) -> Result<(u64, u64), String> {
    let server = reach.server;
    let name = &server.name.value;
    let mut step = reach
        .engine
        .restore_step(id, None)
        .await
        .map_err(|err| engine("starting the restore", &err))?;
    // Where the agent is on a server reached over SSH: found (and copied if it differs)
    // once, for every step.
    let mut remote: Option<(serde_json::Value, serde_json::Value)> = None;
    loop {
        let (template, facts, input, what) = match step {
            RestoreStep::Done { chunks, bytes } => {
                say(
                    "failback.restored",
                    format!(
                        "{name}: {chunks} chunk(s), {bytes} bytes written; the source holds the copy's state"
                    ),
                );
                return Ok((chunks, bytes));
            }
            RestoreStep::Run {
                template,
                facts,
                input,
                what,
            } => (template, facts, input, what),
        };
        let mut install = AgentInstall {
            template,
            facts,
            secret: String::new(),
        };
        if server.access.method != waves::model::AccessMethod::Local {
            if let Some((state_dir, agent)) = &remote {
                install
                    .facts
                    .insert("state_dir".to_owned(), state_dir.clone());
                install.facts.insert("agent".to_owned(), agent.clone());
            } else {
                // The agent binary where agent_push put it (copied again if it differs).
                let mut actions = Vec::new();
                let check = agent_push::copy_agent(reach, &mut install, &mut actions)
                    .await
                    .map_err(fail_reason)?;
                say("shell.copy_agent", format!("{name}: {}", check.detail));
                let fact = |key: &str| install.facts.get(key).cloned().unwrap_or_default();
                remote = Some((fact("state_dir"), fact("agent")));
            }
        }
        let script = agent_push::render_named(&install.template, &install, reach)?;
        say("shell.restore", format!("{name}: {what}"));
        let out = reach
            .shell
            .run_root_with_input(server, &script, &input, STEP_TIMEOUT)
            .await
            .map_err(|err| format!("restoring {name} ({what}): {err}; {}", err.remedy()))?;
        if out.status != 0 {
            return Err(format!(
                "restoring {name} ({what}) failed (exit {}): {}",
                out.status,
                agent_push::last_lines(&out.stderr, &out.stdout)
            ));
        }
        step = reach
            .engine
            .restore_step(id, Some(&out.stdout))
            .await
            .map_err(|err| engine("restoring", &err))?;
    }
}

fn fail_reason(report: crate::Report) -> String {
    match report.progress {
        Progress::Fail { reason, .. } => reason,
        other => format!("{other:?}"),
    }
}
