//! When the waves run: the import options are checked here, and the first window, the
//! cadence and the default first window (the form itself has no dates) are worked out.

use std::time::SystemTime;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

use super::{ImportOptions, Sink};
use crate::diag::Location;
use crate::model::EngineKind;
use crate::rules;
use crate::units::Dur;

/// The first window start and the zone that places it and the windows after it.
pub(super) struct Timing {
    pub(super) first: DateTime,
    pub(super) tz: TimeZone,
}

/// The options that do not depend on the form: a window longer than zero, an engine that
/// can run without disks, a known time zone.
pub(super) fn check_options(options: &ImportOptions, sink: &mut Sink) -> Option<Timing> {
    let mut ok = true;
    if options.window_duration.is_zero() {
        sink.error(
            Location::START,
            "the window duration must be longer than zero: set it like 8h",
        );
        ok = false;
    }
    if options.engine == EngineKind::Local {
        sink.error(
            Location::START,
            "the local engine replicates the disks listed, and an intake form lists none: \
             import with --engine mgn or --engine sim, then add disks if you switch",
        );
        ok = false;
    }
    let tz = match rules::time_zone(&options.timezone) {
        Ok(tz) => Some(tz),
        Err(message) => {
            sink.error(Location::START, message);
            None
        }
    };
    let tz = tz?;
    ok.then_some(Timing {
        first: options.first_window,
        tz,
    })
}

/// `2027-01-09 22:00` (or with a `T`): a local time without a zone, the zone being
/// `--timezone`.
pub fn parse_first_window(text: &str) -> Result<DateTime, String> {
    rules::parse_local_datetime(text, "pass the zone with --timezone")
}

/// The default first window: the first Saturday at 22:00 at least 21 days after `today`,
/// so the three default phases (a week each) all lie in the future.
pub fn first_window_after(today: Date) -> Option<DateTime> {
    let earliest = today.checked_add(jiff::Span::new().days(21)).ok()?;
    let saturday = jiff::civil::Weekday::Saturday.to_monday_zero_offset();
    let wait = (saturday - earliest.weekday().to_monday_zero_offset()).rem_euclid(7);
    let day = earliest
        .checked_add(jiff::Span::new().days(i64::from(wait)))
        .ok()?;
    Some(day.at(22, 0, 0, 0))
}

/// [`first_window_after`] today in `timezone`, today being what `now` says.
pub fn default_first_window(now: SystemTime, timezone: &str) -> Result<DateTime, String> {
    let tz = rules::time_zone(timezone)?;
    let now = jiff::Timestamp::try_from(now)
        .map_err(|err| format!("the system clock is out of range: {err}"))?;
    first_window_after(now.to_zoned(tz).date())
        .ok_or_else(|| "the default first window is out of range: pass --first-window".to_owned())
}

/// The window start of the wave at `index`: the first one plus `index` times the cadence.
pub(super) fn window_start(timing: &Timing, cadence: Dur, index: usize) -> Option<DateTime> {
    let n = i64::try_from(index).ok()?;
    let days = i64::from(cadence.days).checked_mul(n)?;
    let seconds = i64::try_from(cadence.seconds).ok()?.checked_mul(n)?;
    let span = jiff::Span::new()
        .try_days(days)
        .ok()?
        .try_seconds(seconds)
        .ok()?;
    timing.first.checked_add(span).ok()
}

/// A local time as a wave file writes it: without seconds when they are zero.
pub(super) fn format_local(time: DateTime) -> String {
    if time.second() == 0 && time.subsec_nanosecond() == 0 {
        time.strftime("%Y-%m-%d %H:%M").to_string()
    } else {
        time.strftime("%Y-%m-%d %H:%M:%S").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_window_is_a_saturday_three_weeks_out() {
        let cases = [
            // Friday: 21 days later is a Friday, the next day a Saturday.
            (
                jiff::civil::date(2026, 12, 18),
                jiff::civil::date(2027, 1, 9),
            ),
            // Saturday: 21 days later is a Saturday.
            (
                jiff::civil::date(2026, 12, 19),
                jiff::civil::date(2027, 1, 9),
            ),
            // Sunday: six more days.
            (
                jiff::civil::date(2026, 12, 20),
                jiff::civil::date(2027, 1, 16),
            ),
        ];
        for (today, expected) in cases {
            assert_eq!(first_window_after(today), Some(expected.at(22, 0, 0, 0)));
        }
    }

    #[test]
    fn first_window_is_local_time_only() {
        assert_eq!(
            parse_first_window("2027-01-09 22:00"),
            Ok(jiff::civil::date(2027, 1, 9).at(22, 0, 0, 0))
        );
        assert!(
            parse_first_window("2027-01-09T22:00+01:00")
                .is_err_and(|e| e.contains("offset") && e.contains("--timezone"))
        );
        assert!(parse_first_window("next saturday").is_err_and(|e| e.contains("not a local")));
    }
}
