//! The switch for keeping what a run built (base weights, parsed headers, tokenizers, tokenized
//! datasets) for the next run of the same process, `ftl watch`'s reruns; and the sweep after a
//! complete run that drops what that run did not use, so memory does not grow over reruns.

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns keeping across runs on (`ftl watch`) or off (the default: one run per process).
pub fn keep_across_runs(on: bool) {
    ON.store(on, Ordering::SeqCst);
}

pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// After a complete run: drops every kept thing that run did not use.
pub fn sweep() {
    crate::model::hub::sweep_weights();
    crate::data::sweep_tokenized();
}
