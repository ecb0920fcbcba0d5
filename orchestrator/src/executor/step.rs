//! One turn of one task: find its server and settings, enforce its phase, its timeout
//! and its retries, run its next step, and turn the report into a completion with the
//! attempt's record and the events for the job progress log.

use std::collections::HashMap;
use std::sync::Arc;

use replication::ReplicationEngine;
use serde::{Deserialize, Serialize};
use tasks::cmdb::Cmdb;
use tasks::shell::RemoteShell;
use tasks::{Progress, Report, TaskContext};
use waves::model::{Definitions, EngineKind, Server, TaskKind};
use waves::units::format_seconds;

use crate::scheduler::clock::timestamp;
use crate::store::{AttemptRecord, ClaimedTask, Completion, NewEvent};

/// Where a server is in the definitions: (wave index, application index, server index).
pub type WaveServer = (usize, usize, usize);

pub fn index(definitions: &Definitions) -> HashMap<String, WaveServer> {
    let mut map = HashMap::new();
    for (w, wave) in definitions.waves.iter().enumerate() {
        for (a, app) in wave.applications.iter().enumerate() {
            for (s, server) in app.servers.iter().enumerate() {
                map.insert(server.name.value.clone(), (w, a, s));
            }
        }
    }
    map
}

/// What every step of a run reads: built once per run, borrowed by each step.
pub struct StepInputs<'a> {
    pub definitions: &'a Definitions,
    pub index: &'a HashMap<String, WaveServer>,
    pub engines: &'a HashMap<EngineKind, Arc<dyn ReplicationEngine>>,
    pub shell: &'a dyn RemoteShell,
    pub cmdb: &'a dyn Cmdb,
    pub launcher: &'a tasks::launcher::Launcher,
}

/// What the store keeps between turns: when the attempt started, the task's own step,
/// and the last note (so the log says each new state once).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Resume {
    attempt_started: i64,
    note: Option<String>,
    task: Option<serde_json::Value>,
    /// A new attempt that keeps a part of an earlier one ([`kept_step`]): it starts, and
    /// its timeout counts, from its first turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    fresh: bool,
    /// The attempts the task had when an operator retried it: its automatic retries
    /// count from there, so a retried task has its `retries` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retried_after: Option<i32>,
}

/// The step a task keeps once it failed for good, or when an operator retries it: its
/// [`tasks::KEPT`] part alone (what it did outside that must not be done twice), in a
/// fresh attempt from `now`; `None` when it keeps nothing. `stored` is the step as the
/// store holds it.
pub fn kept_step(stored: Option<&str>, now: i64) -> Option<String> {
    let resume: Resume = serde_json::from_str(stored?).ok()?;
    kept_of(resume.task.as_ref(), now)
}

/// [`kept_step`] of a task's own step.
fn kept_of(task_step: Option<&serde_json::Value>, now: i64) -> Option<String> {
    let kept = tasks::kept_part(task_step?)?;
    let resume = Resume {
        attempt_started: now,
        note: None,
        task: Some(serde_json::json!({ tasks::KEPT: kept })),
        fresh: true,
        retried_after: None,
    };
    serde_json::to_string(&resume).ok()
}

/// The step of a task an operator retries at `now`, after `attempts` attempts: a fresh
/// attempt with what it keeps ([`kept_step`]), whose automatic retries count anew.
pub fn retried_step(stored: Option<&str>, now: i64, attempts: i32) -> String {
    let kept = stored
        .and_then(|s| serde_json::from_str::<Resume>(s).ok())
        .and_then(|r| r.task)
        .as_ref()
        .and_then(tasks::kept_part)
        .map(|kept| serde_json::json!({ tasks::KEPT: kept }));
    let resume = Resume {
        attempt_started: now,
        note: None,
        task: kept,
        fresh: true,
        retried_after: Some(attempts),
    };
    serde_json::to_string(&resume).unwrap_or_default()
}

/// `step` with the [`tasks::KEPT`] part of `previous` when it has none of its own: what a
/// task keeps survives every outcome, including a failure that reports no step.
fn with_kept(
    previous: Option<&serde_json::Value>,
    step: Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    let Some(kept) = previous.and_then(tasks::kept_part) else {
        return step;
    };
    let mut step = step.unwrap_or_else(|| serde_json::json!({}));
    if let Some(object) = step.as_object_mut() {
        object.entry(tasks::KEPT).or_insert(kept);
    }
    Some(step)
}

fn event(task: &ClaimedTask, at: i64, kind: &str, message: String) -> NewEvent {
    NewEvent {
        at,
        wave: task.wave.clone(),
        server: task.server.clone(),
        task_id: Some(task.id.clone()),
        kind: kind.to_owned(),
        message,
        data: None,
    }
}

/// The record of the attempt this turn ends: the task's next attempt number.
fn attempt(
    task: &ClaimedTask,
    started: i64,
    now: i64,
    outcome: &str,
    checks: &[tasks::Check],
    output: &str,
    error: Option<String>,
) -> AttemptRecord {
    AttemptRecord {
        number: task.attempts + 1,
        started_at: started,
        finished_at: now,
        outcome: outcome.to_owned(),
        checks: serde_json::to_string(checks).unwrap_or_else(|_| "[]".to_owned()),
        output: output.to_owned(),
        error,
    }
}

pub async fn run_step(inputs: &StepInputs<'_>, now: i64, task: ClaimedTask) -> Completion {
    if task.kind == "gate" {
        return gate(&task, now);
    }
    let Some(server_name) = task.server.clone() else {
        return failed(&task, now, now, format!("task {} has no server", task.id));
    };
    let Some(&(w, a, s)) = inputs.index.get(&server_name) else {
        return failed(
            &task,
            now,
            now,
            format!("server `{server_name}` is not in the applied definitions: apply them again"),
        );
    };
    let wave = &inputs.definitions.waves[w];
    let server = &wave.applications[a].servers[s];
    let Some(kind) = TaskKind::from_name(&task.kind) else {
        return failed(
            &task,
            now,
            now,
            format!("unknown task kind `{}`", task.kind),
        );
    };
    let resume: Option<Resume> = task
        .step
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| serde_json::from_str(s).ok());
    let first_turn = resume.as_ref().is_none_or(|r| r.fresh);
    let mut resume = resume.unwrap_or_default();
    if first_turn {
        resume.attempt_started = now;
        resume.fresh = false;
    }
    let events = Vec::new();
    // A task that has not started by its deadline missed its phase; the cutover checks
    // its window itself (it must not start if it cannot finish).
    if first_turn
        && task.attempts == 0
        && kind != TaskKind::Cutover
        && task.deadline.is_some_and(|d| now > d)
    {
        let deadline = timestamp(task.deadline.unwrap_or(now));
        return failed(
            &task,
            resume.attempt_started,
            now,
            format!("missed its phase: it could not start before {deadline}"),
        );
    }
    let settings = server.tasks.attempts(kind);
    let timeout_ms = (settings.timeout.approx_seconds() as i64).saturating_mul(1000);
    // The task itself ends an attempt past its timeout: a started cutover rolls back, a
    // boot test terminates its target, the others keep their step for the retry.
    // Said with where the attempt stood (its last note), not only how long it took.
    let timed_out = (now - resume.attempt_started > timeout_ms).then(|| {
        let stood = resume
            .note
            .as_deref()
            .map(|note| format!(" ({note})"))
            .unwrap_or_default();
        format!("timed out after {}{stood}", settings.timeout)
    });
    let Some(engine) = inputs.engines.get(&wave.engine.value) else {
        return failed(
            &task,
            resume.attempt_started,
            now,
            format!("engine {} is not available", wave.engine.value),
        );
    };
    let timezone = wave.window.interval.start.time_zone().clone();
    let started_at = timestamp(task.started_at.unwrap_or(now));
    let ctx = TaskContext {
        task_id: &task.id,
        kind,
        wave: &wave.name.value,
        timezone: &timezone,
        server,
        window: [
            wave.window.interval.start.timestamp(),
            wave.window.interval.end.timestamp(),
        ],
        now: timestamp(now),
        started_at,
        attempt: u32::try_from(task.attempts).unwrap_or(0),
        step: resume.task.clone(),
        timed_out: timed_out.as_deref(),
        aborted: task.abort_requested.as_deref(),
        engine: engine.as_ref(),
        engine_kind: wave.engine.value,
        config_dir: &inputs.definitions.config.base_dir,
        engine_endpoints: if kind == TaskKind::PrereqCheck {
            tasks::prereq_check::engine_endpoints(
                wave.engine.value,
                &inputs.definitions.config,
                server,
            )
        } else {
            Vec::new()
        },
        launcher: inputs.launcher,
        shell: inputs.shell,
        cmdb: inputs.cmdb,
    };
    let report = tasks::run(&ctx).await;
    finish(&task, kind, server, now, resume, report, events)
}

fn gate(task: &ClaimedTask, now: i64) -> Completion {
    if task.approval_required && task.approved_by.is_none() {
        return Completion::AwaitingApproval {
            id: task.id.clone(),
            events: vec![event(
                task,
                now,
                "gate.awaiting_approval",
                format!(
                    "`{}` is ready to cut over and waits for a go: wavelift approve {} --app {}",
                    task.application, task.wave, task.application
                ),
            )],
        };
    }
    let by = task
        .approved_by
        .as_deref()
        .map(|b| format!(", approved by {b}"))
        .unwrap_or_default();
    Completion::Succeeded {
        id: task.id.clone(),
        attempt: attempt(task, now, now, "succeeded", &[], "gate open", None),
        events: vec![event(
            task,
            now,
            "gate.open",
            format!(
                "`{}` may cut over: boot tests and dependencies passed{by}",
                task.application
            ),
        )],
    }
}

/// A failure for good decided before the task ran; what the task keeps stays.
fn failed(task: &ClaimedTask, started: i64, now: i64, reason: String) -> Completion {
    Completion::Failed {
        id: task.id.clone(),
        step: kept_step(task.step.as_deref(), now),
        reason: reason.clone(),
        attempt: Some(attempt(
            task,
            started,
            now,
            "failed",
            &[],
            "",
            Some(reason.clone()),
        )),
        events: vec![event(
            task,
            now,
            "task.failed",
            format!("{} failed: {reason}", task.id),
        )],
    }
}

/// Exponential backoff with a deterministic jitter of up to a quarter, so retries of
/// many servers spread out but a rerun with the same inputs waits the same.
fn backoff_ms(base_seconds: u64, attempts: i32, id: &str) -> i64 {
    let exponent = attempts.clamp(0, 16) as u32;
    let base = (base_seconds as i64)
        .saturating_mul(1000)
        .saturating_mul(1_i64 << exponent);
    let hash = id.bytes().fold(0xcbf29ce484222325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let jitter = (hash % 1000) as i64 * base / 4000;
    base.saturating_add(jitter).min(24 * 3600 * 1000)
}

/// The job log says each new state of a task once: a `task.progress` event when the
/// note differs from the last one.
fn log_new_note(
    task: &ClaimedTask,
    now: i64,
    resume: &mut Resume,
    note: String,
    events: &mut Vec<NewEvent>,
) {
    if resume.note.as_deref() != Some(note.as_str()) {
        events.push(event(
            task,
            now,
            "task.progress",
            format!("{}: {note}", task.id),
        ));
        resume.note = Some(note);
    }
}

fn finish(
    task: &ClaimedTask,
    kind: TaskKind,
    server: &Server,
    now: i64,
    mut resume: Resume,
    report: Report,
    mut events: Vec<NewEvent>,
) -> Completion {
    for action in &report.actions {
        events.push(event(task, now, &action.action, action.detail.clone()));
    }
    match report.progress {
        Progress::Done { checks, output } => {
            events.push(event(
                task,
                now,
                "task.succeeded",
                format!("{} succeeded: {output}", task.id),
            ));
            Completion::Succeeded {
                id: task.id.clone(),
                attempt: attempt(
                    task,
                    resume.attempt_started,
                    now,
                    "succeeded",
                    &checks,
                    &output,
                    None,
                ),
                events,
            }
        }
        Progress::Ready {
            checks,
            output,
            step,
            until,
            note,
        } => {
            let first = !resume
                .task
                .as_ref()
                .and_then(|t| t.get("watching"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            if first {
                let passed = checks.iter().filter(|c| c.passed).count();
                events.push(event(
                    task,
                    now,
                    "task.ready",
                    format!(
                        "{} is ready ({output}, {passed} of {} checks passed): the tasks after it \
                         may start; it looks again on its schedule until the window",
                        task.id,
                        checks.len()
                    ),
                ));
                resume.note = Some(note);
            } else {
                log_new_note(task, now, &mut resume, note, &mut events);
            }
            resume.task = with_kept(resume.task.as_ref(), Some(step));
            // Every look has the timeout of one look.
            resume.attempt_started = until.as_millisecond();
            Completion::Ready {
                id: task.id.clone(),
                step: serde_json::to_string(&resume).unwrap_or_default(),
                next_run_at: until.as_millisecond().max(now + 1),
                events,
            }
        }
        Progress::Wait { step, until, note } => {
            log_new_note(task, now, &mut resume, note, &mut events);
            resume.task = with_kept(resume.task.as_ref(), Some(step));
            // Each scheduled replication check is an attempt of its own: its timeout
            // bounds one check, not the days between the first and the last.
            if kind == TaskKind::ReplicationVerify {
                resume.attempt_started = until.as_millisecond();
            }
            Completion::Waiting {
                id: task.id.clone(),
                step: serde_json::to_string(&resume).unwrap_or_default(),
                next_run_at: until.as_millisecond().max(now + 1),
                events,
            }
        }
        Progress::Fail {
            reason,
            retryable,
            checks,
            step,
        } => {
            let settings = server.tasks.attempts(kind);
            // Attempts since an operator's retry, if any: the retry gives the task its
            // retries again.
            let tried = task.attempts - resume.retried_after.unwrap_or(0).min(task.attempts);
            let retries_left = i64::from(settings.retries) > i64::from(tried);
            let record = attempt(
                task,
                resume.attempt_started,
                now,
                if retryable && retries_left {
                    "retrying"
                } else {
                    "failed"
                },
                &checks,
                "",
                Some(reason.clone()),
            );
            if retryable && retries_left {
                let wait = backoff_ms(settings.backoff.approx_seconds(), tried, &task.id);
                let next = Resume {
                    attempt_started: now + wait,
                    note: None,
                    task: with_kept(resume.task.as_ref(), step),
                    fresh: false,
                    retried_after: resume.retried_after,
                };
                events.push(event(
                    task,
                    now,
                    "task.retrying",
                    format!(
                        "{} failed ({reason}); attempt {} of {} in {}",
                        task.id,
                        tried + 2,
                        settings.retries + 1,
                        format_seconds(wait as f64 / 1000.0)
                    ),
                ));
                Completion::Retry {
                    id: task.id.clone(),
                    step: Some(serde_json::to_string(&next).unwrap_or_default()),
                    next_run_at: now + wait,
                    reason,
                    attempt: record,
                    events,
                }
            } else {
                events.push(event(
                    task,
                    now,
                    "task.failed",
                    format!("{} failed: {reason}", task.id),
                ));
                Completion::Failed {
                    id: task.id.clone(),
                    step: kept_of(with_kept(resume.task.as_ref(), step).as_ref(), now),
                    reason,
                    attempt: Some(record),
                    events,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{kept_step, retried_step, with_kept};

    /// A task an operator retried after it ran out of attempts has its retries again:
    /// a retryable failure of the first attempt after the retry is tried again, counted
    /// from the retry; without the retry it fails for good.
    #[test]
    fn a_retried_task_has_its_retries_again() {
        let text = "name: w\n\
            window: { start: 2031-03-22 10:00, duration: 6h, timezone: UTC }\n\
            defaults:\n\
            \x20 os: { family: linux }\n\
            \x20 access: { method: local }\n\
            \x20 tasks: { prereq_check: { retries: 2 } }\n\
            applications:\n\
            \x20 - { name: db, servers: [{ name: s1, disks: [{ device: /dev/sda, size: 1GiB }] }] }\n";
        let loaded = waves::load_text("w.yaml", text);
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let server = &loaded.definitions.waves[0].applications[0].servers[0];
        // Three attempts done: out of retries.
        let task = crate::store::TaskRow {
            attempts: 3,
            ..crate::store::TaskRow::fixture(Some("s1"), "db", "prereq_check", "running")
        };
        let failure = || tasks::Report::fail("the port is closed", true, Vec::new());
        let finish = |step: Option<String>| {
            let mut task = task.clone();
            task.step = step;
            let resume = task
                .step
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            super::finish(
                &task,
                waves::model::TaskKind::PrereqCheck,
                server,
                1_000,
                resume,
                failure(),
                Vec::new(),
            )
        };
        assert!(
            matches!(finish(None), crate::store::Completion::Failed { .. }),
            "out of retries"
        );
        let retried = retried_step(None, 500, 3);
        match finish(Some(retried)) {
            crate::store::Completion::Retry { events, .. } => {
                assert!(
                    events
                        .iter()
                        .any(|e| e.message.contains("; attempt 2 of 3 in ")),
                    "{events:?}"
                );
            }
            other => panic!("a retried task's failure was not retried: {other:?}"),
        }
    }

    /// What a task keeps survives an outcome that reports no step, or a step without it;
    /// a step that has its own is left as it is.
    #[test]
    fn the_kept_part_survives_every_outcome() {
        let previous = serde_json::json!({ "kept": { "cmdb": 1 }, "looks": 2 });
        assert_eq!(
            with_kept(Some(&previous), None),
            Some(serde_json::json!({ "kept": { "cmdb": 1 } }))
        );
        assert_eq!(
            with_kept(Some(&previous), Some(serde_json::json!({ "looks": 3 }))),
            Some(serde_json::json!({ "kept": { "cmdb": 1 }, "looks": 3 }))
        );
        let own = serde_json::json!({ "kept": { "cmdb": 2 } });
        assert_eq!(with_kept(Some(&previous), Some(own.clone())), Some(own));
        let earlier = serde_json::json!({ "cmdb": 1 });
        assert_eq!(
            with_kept(Some(&earlier), None),
            Some(serde_json::json!({ "kept": { "cmdb": 1 } }))
        );
        let nothing = serde_json::json!({ "looks": 2 });
        assert_eq!(with_kept(Some(&nothing), None), None);
        assert_eq!(with_kept(None, None), None);
    }

    /// Only a step's kept part survives a failure for good or a manual retry, in a fresh
    /// attempt; a step that keeps nothing is dropped.
    #[test]
    fn only_the_kept_part_of_a_step_survives() {
        let stored = r#"{"attempt_started":1,"note":"n","task":{"kept":{"cmdb":{"record":"CI-1"}},"looks":2}}"#;
        let kept = kept_step(Some(stored), 42).expect("a kept step");
        let kept: serde_json::Value = serde_json::from_str(&kept).expect("JSON");
        assert_eq!(
            kept,
            serde_json::json!({
                "attempt_started": 42,
                "note": null,
                "task": { "kept": { "cmdb": { "record": "CI-1" } } },
                "fresh": true
            })
        );
        // A CMDB record kept by an earlier cmdb_cleanup, at the top of its step, is kept
        // the same way (and in the current form from then on).
        let earlier = r#"{"attempt_started":1,"note":null,"task":{"cmdb":{"record":"CI-1"}}}"#;
        let kept_earlier = kept_step(Some(earlier), 42).expect("a kept step");
        let kept_earlier: serde_json::Value = serde_json::from_str(&kept_earlier).expect("JSON");
        assert_eq!(kept_earlier, kept);
        let nothing = r#"{"attempt_started":1,"note":null,"task":{"looks":2}}"#;
        assert_eq!(kept_step(Some(nothing), 42), None);
        assert_eq!(kept_step(Some("not json"), 42), None);
        assert_eq!(kept_step(None, 42), None);
    }
}
