//! End-to-end tests: the real `wavelift` binary on the examples and on broken input,
//! running waves, killed while it runs them, and delivering reports to a real SMTP
//! server (aiosmtpd, started by the mail tests). `plan --format dot` is rendered by
//! Graphviz's `dot`; .ci/run installs both.

mod browser;
mod cli;
mod crash;
mod examples;
mod mail;
mod run;
mod serve;
