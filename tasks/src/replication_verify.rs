//! replication_verify: read the replication state, lag, backlog and progress on the
//! task's cron schedule until the server is in continuous replication with its lag under
//! the threshold, or the window comes.

use replication::ReplicationState;
use waves::units::{format_bytes, format_seconds};

use crate::context::{Check, Report, TaskContext};

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
    if r.state == ReplicationState::Continuous && r.lag_seconds.is_some_and(|lag| lag <= max_lag) {
        let checks = vec![
            Check::pass("replication state", "continuous"),
            Check::pass(
                "lag",
                format!(
                    "{} (at most {})",
                    format_seconds(r.lag_seconds.unwrap_or(0.0)),
                    settings.max_lag
                ),
            ),
            Check::pass("replicated", progress),
        ];
        return Report::done(checks, "continuous replication", Vec::new());
    }
    let eta = r
        .eta_seconds
        .map(|s| format!(", ETA {}", format_seconds(s)))
        .unwrap_or_default();
    let note = format!(
        "{state}: {progress}, backlog {}{eta}",
        format_bytes(r.backlog_bytes as f64)
    );
    let now_zoned = ctx.now.to_zoned(ctx.timezone.clone());
    match settings.schedule.next_after(&now_zoned) {
        Some(next) if next.timestamp() < ctx.window[0] => Report::wait(
            serde_json::json!({ "last": note }),
            next.timestamp(),
            note,
            Vec::new(),
        ),
        _ => Report::fail(
            format!("replication is not continuous before the window: {note}"),
            false,
            Vec::new(),
        ),
    }
}
