//! ftl's integration tests: one binary, a module per area.

mod common;
#[cfg(feature = "cuda")]
mod cuda;
mod deep;
mod device;
mod errors;
mod fixtures;
mod invariants;
mod recipes;
mod training;
mod watch;
