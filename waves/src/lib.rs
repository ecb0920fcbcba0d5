//! The wave model: YAML loading with locations, validation, the CMF intake import, the
//! planner and the estimator.
//!
//! This crate is pure: it reads the text it is given and returns values and diagnostics.
//! It does no network IO, holds no database and runs no async runtime; the only IO is
//! reading definition files in [`source`].

pub mod cmf;
pub mod config;
pub mod cron;
pub mod decode;
pub mod diag;
pub mod estimate;
pub mod load;
pub mod model;
pub mod plan;
pub mod rules;
pub mod settings;
pub mod smtp;
pub mod source;
pub mod synthetic;
pub mod template;
pub mod units;
pub mod validate;
pub mod wave_file;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Location, Severity};
pub use load::{Loaded, load_paths, load_sources, load_text};
pub use model::{Definitions, Wave};
