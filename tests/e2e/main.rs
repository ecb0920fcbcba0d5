//! End-to-end tests: the real `wavelift` binary on the examples and on broken input,
//! running waves, and killed while it runs them. They start no service beyond the
//! binary itself; `plan --format dot` is rendered by Graphviz's `dot`, which .ci/run
//! installs.

mod cli;
mod crash;
mod examples;
mod run;
