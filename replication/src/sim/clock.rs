//! [`ManualClock`]: a clock that moves only when told to, for rehearsals driven by a
//! scheduler and for tests.

use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;

use crate::Clock;

/// A thread-safe clock set by hand. It may be set backwards; the sim engine then keeps
/// its own time (it never goes back).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    pub fn set(&self, now: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the clock by `seconds` (negative moves it back), to the nanosecond;
    /// saturates at the ends of [`Timestamp`]'s range and ignores NaN.
    pub fn advance(&self, seconds: f64) {
        if seconds.is_nan() {
            return;
        }
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        // `as` saturates, and Timestamp's range is far inside i128's.
        let delta = (seconds * 1e9).round() as i128;
        let target = now.as_nanosecond().saturating_add(delta);
        *now = Timestamp::from_nanosecond(target).unwrap_or(if delta < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
