//! ftl: a fine-tuning lab for transformer models — HF models and PEFT methods in Rust, driven by
//! Lua recipes.

pub mod cancel;
pub mod error;
pub mod gguf;
pub mod model;
pub mod ops;
pub mod peft;
#[cfg(feature = "profile")]
pub mod profile;
pub mod reuse;
pub mod rng;
pub mod st;
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::Model;
pub mod bench;
pub mod check;
pub mod cli;
pub mod data;
pub mod inspect;
pub mod lua;
pub mod manifest;
pub mod merge;
pub mod metrics;
pub mod plot;
pub mod runs;
pub mod scaffold;
pub mod train;
pub mod types;
pub mod watch;
