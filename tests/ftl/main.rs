//! ftl's integration tests: one binary, a module per area.

mod common;
mod device;
mod errors;
mod fixtures;
mod invariants;
mod recipes;
mod training;
mod watch;
