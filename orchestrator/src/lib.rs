//! The orchestrator: the store (sea-orm), the scheduler's clock, the executor that runs
//! the tasks, and the `wavelift` command line. The only place where concrete adapters
//! (engines, shells, CMDBs) are wired.

pub mod cli;
pub mod ec2_bridge;
pub mod executor;
pub mod mgn_api;
pub mod report;
pub mod scheduler;
pub mod store;
pub mod web;
