//! The scheduler's clock. Time belongs to the scheduler: the executor, the tasks and the
//! rehearsal engine all read it here, so `--time-warp` and rehearsals can move it.

pub mod clock;
pub mod phase;

pub use clock::SchedulerClock;
