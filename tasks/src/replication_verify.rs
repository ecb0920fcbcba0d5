//! replication_verify: read the replication state, lag, backlog and progress on the
//! task's cron schedule until the server is in continuous replication with its lag under
//! the threshold (then the tasks after it may start), and go on reading it on the same
//! schedule until the cutover window, so a replication that degrades after it was
//! verified shows in the job log and in the task's step before anyone cuts over.

use replication::ReplicationState;
use waves::units::{format_bytes, format_seconds};

use crate::context::{Check, Report, TaskContext};

/// How the last look before the window begins its output when it found replication
/// degraded (the check succeeds all the same; the cutover checks again): the readiness
/// report reads it.
pub const DEGRADED_BEFORE_THE_WINDOW: &str = "replication degraded before the window";

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let server = ctx.server;
    let settings = &server.tasks.replication_verify;
    let source = match ctx.engine.find_source(&server.name.value).await {
        Err(err) => return Report::engine_error("reading replication", &err, Vec::new()),
        Ok(None) => {
            return Report::fail(
                format!(
                    "the engine does not know {}: its agent is not installed",
                    server.name.value
                ),
                false,
                Vec::new(),
            );
        }
        Ok(Some(source)) => source,
    };
    let r = &source.replication;
    let max_lag = settings.max_lag.approx_seconds() as f64;
    let progress = if r.total_bytes > 0 {
        format!(
            "{} of {} ({:.0}%)",
            format_bytes(r.replicated_bytes as f64),
            format_bytes(r.total_bytes as f64),
            r.replicated_bytes as f64 * 100.0 / r.total_bytes as f64
        )
    } else {
        "no data".to_owned()
    };
    let state = format!("{:?}", r.state);
    let now_zoned = ctx.now.to_zoned(ctx.timezone.clone());
    // The next look, if it comes before the window.
    let next = settings
        .schedule
        .next_after(&now_zoned)
        .map(|next| next.timestamp())
        .filter(|next| *next < ctx.window[0]);
    let watching = ctx
        .step
        .as_ref()
        .and_then(|step| step.get("watching"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let lag_ok = r.lag_seconds.is_some_and(|lag| lag <= max_lag);
    let healthy = r.state == ReplicationState::Continuous && lag_ok;
    let lag = r
        .lag_seconds
        .map(format_seconds)
        .unwrap_or_else(|| "unknown".to_owned());
    let checks = vec![
        if r.state == ReplicationState::Continuous {
            Check::pass("replication state", "continuous")
        } else {
            Check::fail(
                "replication state",
                format!("{state} (expected continuous)"),
                match r.state {
                    ReplicationState::Paused => format!(
                        "replication is paused: `wavelift replication resume {}` resumes it",
                        ctx.server.name.value
                    ),
                    ReplicationState::Stopped => format!(
                        "replication is stopped: `wavelift replication start {}` starts it again",
                        ctx.server.name.value
                    ),
                    _ => format!(
                        "see the engine's replication view of this server: a stall or a \
                         disconnect usually means the source lost its route to the \
                         replication server, or its agent stopped (the source rebooted, \
                         the process was killed): `wavelift retry {}/agent_push` installs \
                         and starts it again",
                        ctx.server.name.value
                    ),
                },
            )
        },
        if lag_ok {
            Check::pass("lag", format!("{lag} (at most {})", settings.max_lag))
        } else {
            Check::fail(
                "lag",
                format!("{lag} (expected at most {})", settings.max_lag),
                "the source changes faster than it replicates: check the bandwidth limit \
                 and the change rate",
            )
        },
        Check::pass("replicated", progress.clone()),
    ];
    let eta = r
        .eta_seconds
        .map(|s| format!(", ETA {}", format_seconds(s)))
        .unwrap_or_default();
    let rate = r
        .throughput_bytes_per_second
        .map(|b| format!(", {}/s", format_bytes(b)))
        .unwrap_or_default();
    let note = if healthy {
        format!("continuous replication, lag {lag}{rate}")
    } else {
        format!(
            "{state}: {progress}, backlog {}, lag {lag}{rate}{eta}",
            format_bytes(r.backlog_bytes as f64)
        )
    };
    // The figures as seen at this look, for the dashboard's replication view.
    let figures = serde_json::json!({
        "state": r.state,
        "replicated_bytes": r.replicated_bytes,
        "total_bytes": r.total_bytes,
        "backlog_bytes": r.backlog_bytes,
        "lag_seconds": r.lag_seconds,
        "eta_seconds": r.eta_seconds,
        "throughput_bytes_per_second": r.throughput_bytes_per_second,
        "wire_bytes": r.wire_bytes,
    });
    match (healthy, watching, next) {
        // Verified: the tasks after it may start; watch on until the window.
        (true, _, Some(next)) | (false, true, Some(next)) => {
            let note = if healthy {
                note
            } else {
                degraded(r.state, &note, &ctx.server.name.value)
            };
            Report::ready(
                checks,
                "continuous replication",
                serde_json::json!({
                    "watching": true, "healthy": healthy, "last": note, "replication": figures,
                }),
                next,
                note,
            )
        }
        // The window comes before the next look: this look is the last.
        (true, _, None) => Report::done(checks, "continuous replication", Vec::new()),
        (false, true, None) => Report::done(
            checks,
            format!("{DEGRADED_BEFORE_THE_WINDOW}: {note}; the cutover checks it again"),
            Vec::new(),
        ),
        (false, false, Some(next)) => Report::wait(
            serde_json::json!({ "last": note, "replication": figures }),
            next,
            note,
            Vec::new(),
        ),
        // With the checks, so the failure shows what failed and how to fix it.
        (false, false, None) => Report::fail_with(
            format!("replication is not continuous before the window: {note}"),
            false,
            checks,
            Vec::new(),
        ),
    }
}

/// The note of a look that finds a verified replication degraded; for a stall or a
/// disconnect, with the way to start a stopped agent again, in the log where the
/// operator sees it first (the checks say it too).
fn degraded(state: ReplicationState, note: &str, server: &str) -> String {
    if matches!(
        state,
        ReplicationState::Stalled | ReplicationState::Disconnected
    ) {
        format!(
            "replication degraded after it was verified: {note}; if its agent stopped (the source rebooted, the process was killed), `wavelift retry {server}/agent_push` starts it again"
        )
    } else {
        format!("replication degraded after it was verified: {note}")
    }
}

#[cfg(test)]
mod tests {
    use waves::model::TaskKind;

    use crate::context::Progress;
    use crate::testing::{Rig, window_start};

    #[test]
    fn a_stall_or_a_disconnect_after_the_verification_says_how_to_start_the_agent() {
        use replication::ReplicationState;
        for state in [ReplicationState::Stalled, ReplicationState::Disconnected] {
            let note = super::degraded(state, "Disconnected: lag 2m", "db-1");
            assert!(
                note.ends_with("`wavelift retry db-1/agent_push` starts it again"),
                "{note}"
            );
        }
        assert_eq!(
            super::degraded(ReplicationState::Continuous, "lag 20m", "db-1"),
            "replication degraded after it was verified: lag 20m"
        );
    }

    /// The last look before the window finds replication still starting: the task fails,
    /// and with its checks, so the state's check and its fix are shown.
    #[tokio::test]
    async fn the_last_look_fails_with_its_checks() {
        let minute = jiff::SignedDuration::from_mins(1);
        let rig = Rig::new(window_start() - 2 * minute);
        rig.register().await;
        rig.clock.advance(60.0);
        let report =
            super::run(&rig.context(TaskKind::ReplicationVerify, window_start() - minute, None))
                .await;
        let Progress::Fail { reason, checks, .. } = &report.progress else {
            panic!("replication was not continuous: {report:?}");
        };
        assert!(
            reason.starts_with("replication is not continuous before the window: "),
            "{reason}"
        );
        let state = checks
            .iter()
            .find(|c| c.name == "replication state")
            .unwrap_or_else(|| panic!("no state check in {checks:?}"));
        assert!(!state.passed && state.remediation.is_some(), "{state:?}");
    }
}
