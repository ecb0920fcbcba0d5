//! What a task is given (the server, its settings, the engine and ports, the time, the
//! step it stopped at) and what it gives back (progress, checks, the actions it took).

use jiff::Timestamp;
use replication::{EngineError, ReplicationEngine};
use serde::{Deserialize, Serialize};
use waves::model::{Server, TaskKind};

use crate::cmdb::Cmdb;
use crate::shell::RemoteShell;

/// The key of a task's step under which it keeps what must survive a manual retry (a
/// record written to a CMDB that opens a ticket per request).
pub const KEPT: &str = "kept";

/// The [`KEPT`] part of a task's step. A CMDB record kept by earlier versions of
/// cmdb_cleanup, under `cmdb` at the top of its step, counts as kept too, so a retry of
/// a clean-up that failed across an upgrade does not write the record again.
pub fn kept_part(step: &serde_json::Value) -> Option<serde_json::Value> {
    step.get(KEPT).cloned().or_else(|| {
        let record = step.get("cmdb")?;
        Some(serde_json::json!({ "cmdb": record }))
    })
}

pub struct TaskContext<'a> {
    pub task_id: &'a str,
    pub kind: TaskKind,
    pub wave: &'a str,
    /// The wave's time zone, for cron schedules.
    pub timezone: &'a jiff::tz::TimeZone,
    pub server: &'a Server,
    pub window: [Timestamp; 2],
    pub now: Timestamp,
    /// When the task first started: launches the engine made since then are this task's.
    pub started_at: Timestamp,
    pub attempt: u32,
    /// Where the previous call stopped; `None` on the first call of an attempt. Under
    /// [`KEPT`], what a task did outside that must never be done twice: it survives a
    /// failure and an operator's retry, which otherwise start over.
    pub step: Option<serde_json::Value>,
    /// Set when the attempt ran past its task's timeout (the reason, "timed out after
    /// 2h"): the task ends the attempt without leaving anything half done (see [`crate::run`]).
    pub timed_out: Option<&'a str>,
    /// Set when an operator aborted the task (the reason, "aborted by alice: ..."): it
    /// ends now, for good, as a timed-out try does (see [`crate::run`]).
    pub aborted: Option<&'a str>,
    pub engine: &'a dyn ReplicationEngine,
    /// The kind of engine the server's wave names (`local` runs on the rehearsal engine
    /// until the local engine exists).
    pub engine_kind: waves::model::EngineKind,
    /// The configuration's folder: relative paths of this machine's disk images start here.
    pub config_dir: &'a std::path::Path,
    /// What the source must reach over TCP for its engine (`host:port`).
    pub engine_endpoints: Vec<String>,
    /// Batches this task's launch with others' into one job.
    pub launcher: &'a crate::launcher::Launcher,
    pub shell: &'a dyn RemoteShell,
    pub cmdb: &'a dyn Cmdb,
}

/// What reaches one server: the server, its engine, its shell and the configuration's
/// folder. A task has it from its context; a step outside a task (a failback) makes one.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub server: &'a Server,
    pub engine: &'a dyn ReplicationEngine,
    pub shell: &'a dyn RemoteShell,
    pub config_dir: &'a std::path::Path,
}

impl<'a> TaskContext<'a> {
    /// The task's own step as its type; the type's default on a first call (or a step an
    /// older version wrote that it cannot read).
    pub fn step_as<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        self.step
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    pub fn reach(&self) -> Reach<'a> {
        Reach {
            server: self.server,
            engine: self.engine,
            shell: self.shell,
            config_dir: self.config_dir,
        }
    }
}

/// One check a task made: what, whether it passed, the sentence a user reads, what was
/// found and what was expected (where the check compares the two), and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    pub remediation: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            passed: true,
            detail: detail.into(),
            found: None,
            expected: None,
            remediation: None,
        }
    }

    /// What was found and what was expected, beside the sentence.
    pub fn comparing(mut self, found: impl Into<String>, expected: impl Into<String>) -> Check {
        self.found = Some(found.into());
        self.expected = Some(expected.into());
        self
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        remediation: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            passed: false,
            detail: detail.into(),
            found: None,
            expected: None,
            remediation: Some(remediation.into()),
        }
    }
}

/// Something a task did to the engine or the server, for the job progress log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// `engine.start_launch`, `engine.finalize_cutover`, `shell.shutdown`, ...
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Done {
        checks: Vec<Check>,
        output: String,
    },
    /// The goal is reached, so the tasks that depend on this one may start; it keeps
    /// watching: call again at `until` with `step`. A recurring check (replication
    /// watched until the cutover) reports this on every healthy look but its last.
    Ready {
        checks: Vec<Check>,
        output: String,
        step: serde_json::Value,
        until: Timestamp,
        note: String,
    },
    /// Not finished: call again at `until` with `step`.
    Wait {
        step: serde_json::Value,
        until: Timestamp,
        note: String,
    },
    Fail {
        reason: String,
        /// Worth another attempt (with backoff) if retries remain.
        retryable: bool,
        checks: Vec<Check>,
        /// Where to resume on a retry; `None` starts over. Its [`KEPT`] part is kept
        /// even once the task fails for good, for an operator's retry.
        step: Option<serde_json::Value>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub progress: Progress,
    pub actions: Vec<Action>,
}

impl Report {
    pub fn done(checks: Vec<Check>, output: impl Into<String>, actions: Vec<Action>) -> Report {
        Report {
            progress: Progress::Done {
                checks,
                output: output.into(),
            },
            actions,
        }
    }

    pub fn wait(
        step: serde_json::Value,
        until: Timestamp,
        note: impl Into<String>,
        actions: Vec<Action>,
    ) -> Report {
        Report {
            progress: Progress::Wait {
                step,
                until,
                note: note.into(),
            },
            actions,
        }
    }

    /// Reached, and watching on: see [`Progress::Ready`].
    pub fn ready(
        checks: Vec<Check>,
        output: impl Into<String>,
        step: serde_json::Value,
        until: Timestamp,
        note: impl Into<String>,
    ) -> Report {
        Report {
            progress: Progress::Ready {
                checks,
                output: output.into(),
                step,
                until,
                note: note.into(),
            },
            actions: Vec::new(),
        }
    }

    pub fn fail(reason: impl Into<String>, retryable: bool, actions: Vec<Action>) -> Report {
        Report::fail_with(reason, retryable, Vec::new(), actions)
    }

    /// [`Report::fail`] with the checks that show what failed and how to fix it.
    pub fn fail_with(
        reason: impl Into<String>,
        retryable: bool,
        checks: Vec<Check>,
        actions: Vec<Action>,
    ) -> Report {
        Report {
            progress: Progress::Fail {
                reason: reason.into(),
                retryable,
                checks,
                step: None,
            },
            actions,
        }
    }

    /// An engine error: transient ones are worth a retry.
    pub fn engine_error(what: &str, err: &EngineError, actions: Vec<Action>) -> Report {
        Report::fail(
            format!("{what}: the engine said: {}", err.message),
            err.is_transient(),
            actions,
        )
    }
}

/// `now` plus whole seconds.
pub fn later(now: Timestamp, seconds: i64) -> Timestamp {
    now.checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(now)
}

/// How often a waiting task looks at the engine again.
pub const POLL_SECONDS: i64 = 30;
