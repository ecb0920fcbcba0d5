//! End-to-end tests: the real `wavelift` binary on the examples and on broken input,
//! running waves, killed while it runs them, and delivering reports to a real SMTP
//! server (aiosmtpd, started by the mail tests). `plan --format dot` is rendered by
//! Graphviz's `dot`; logging in to source servers over a real OpenSSH server (sshd,
//! started by the SSH tests); .ci/run installs them and makes the SSH test accounts.

mod browser;
mod cli;
mod cmdb;
mod crash;
mod examples;
mod local;
mod mail;
mod mgn;
mod run;
mod serve;
mod ssh;
