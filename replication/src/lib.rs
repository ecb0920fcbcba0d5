//! Replication engines behind one interface, [`ReplicationEngine`]: what the tasks call to
//! register source servers, watch replication, launch test and cutover targets, finalize
//! and archive. The engines:
//!
//! - [`sim`]: the rehearsal engine, a deterministic model of replication for rehearsals,
//!   estimates and load tests. Always labelled as a rehearsal.
//! - `local` and `mgn` arrive with their issues.
//!
//! This crate knows nothing of waves, tasks or the database.

pub mod clock;
pub mod engine;
pub mod local;
pub mod rules;
pub mod sim;

pub use clock::{Clock, SystemClock};
pub use engine::*;
