//! ftl's integration tests: one binary, a module per area.

mod check;
mod common;
mod compare;
#[cfg(feature = "cuda")]
mod cuda;
mod deep;
mod device;
mod errors;
mod fixtures;
mod gallery;
mod gguf;
mod gguf_tokenizer;
mod hub;
mod invariants;
mod manifest;
mod merge;
mod methods;
mod recipes;
mod sandbox;
mod semantics;
mod survive;
mod training;
mod types;
mod watch;
