//! Wall-clock time, or warped time that jumps to the next due time whenever nothing is
//! running. Warped time is kept in the store, so a restarted process goes on from the
//! same moment instead of jumping back.

use std::sync::atomic::{AtomicI64, Ordering};

use jiff::Timestamp;

pub struct SchedulerClock {
    /// Milliseconds since the epoch, when warped.
    warped: Option<AtomicI64>,
}

/// The store key of the warped clock.
pub const WARP_KEY: &str = "clock.warped_now_ms";

impl SchedulerClock {
    pub fn system() -> SchedulerClock {
        SchedulerClock { warped: None }
    }

    pub fn warped(start_ms: i64) -> SchedulerClock {
        SchedulerClock {
            warped: Some(AtomicI64::new(start_ms)),
        }
    }

    pub fn is_warped(&self) -> bool {
        self.warped.is_some()
    }

    pub fn now_ms(&self) -> i64 {
        match &self.warped {
            Some(now) => now.load(Ordering::SeqCst),
            None => Timestamp::now().as_millisecond(),
        }
    }

    /// Moves warped time forward to `ms` (never backwards). No effect on the wall clock.
    pub fn advance_to(&self, ms: i64) {
        if let Some(now) = &self.warped {
            now.fetch_max(ms, Ordering::SeqCst);
        }
    }
}

impl replication::Clock for SchedulerClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.now_ms()).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// A store time as a timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A store time in a wave's time zone (an IANA name), as `Sat 2027-12-11 22:00`; UTC in
/// RFC 3339 if the zone is unknown.
pub fn local_text(ms: i64, timezone: &str) -> String {
    let ts = timestamp(ms);
    match jiff::tz::TimeZone::get(timezone) {
        Ok(tz) => ts.to_zoned(tz).strftime("%a %Y-%m-%d %H:%M").to_string(),
        Err(_) => ts.to_string(),
    }
}

/// The moment status speaks of: the clock of a warped run while it is ahead of the wall
/// clock (its phases are where that run is), else the wall clock.
pub async fn status_now(store: &crate::store::Store) -> anyhow::Result<(i64, bool)> {
    let wall = jiff::Timestamp::now().as_millisecond();
    let warped = store
        .meta_get(WARP_KEY)
        .await?
        .and_then(|v| v.parse::<i64>().ok());
    Ok(match warped {
        Some(ms) if ms > wall => (ms, true),
        _ => (wall, false),
    })
}
