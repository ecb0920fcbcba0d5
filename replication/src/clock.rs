//! Time as the engines see it. The scheduler owns the clock; engines that model time (the
//! rehearsal engine) read it, so a rehearsal moves as fast as the scheduler lets it.

use jiff::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
