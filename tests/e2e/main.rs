//! End-to-end tests: the real `wavelift` binary on the examples and on broken input.
//! They start no service beyond the binary itself; `plan --format dot` is rendered by
//! Graphviz's `dot`, which .ci/run installs.

mod cli;
mod examples;
