//! Cancelling a run (a save under `ftl watch`, Ctrl-C): a flag per run that the thread running it
//! installs, so that long library work (training steps, evaluation, generation) polls it without
//! every signature carrying it. And interrupting `ftl run` (SIGINT, SIGTERM): a process-wide
//! signal that cancels the same way, except inside a training, which finishes its step and saves
//! a checkpoint first.

use crate::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// One run's cancellation flag, shared between the run and whoever may stop it.
#[derive(Clone, Default, Debug)]
pub struct Token(Arc<AtomicBool>);

impl Token {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Token>> = const { RefCell::new(None) };
}

/// Makes `token` this thread's run flag until the guard drops.
pub fn install(token: &Token) -> Guard {
    let prev = CURRENT.with(|c| c.replace(Some(token.clone())));
    Guard(prev)
}

pub struct Guard(Option<Token>);

impl Drop for Guard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Whether this thread's run has been cancelled (or interrupted, outside a training).
pub fn requested() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(Token::is_cancelled))
        || (interrupted().is_some() && DEFERRED.with(|d| d.get()) == 0)
}

/// The signal that interrupted the process, 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// What the interrupted training left (its checkpoint, the command that resumes).
static NOTE: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static DEFERRED: Cell<usize> = const { Cell::new(0) };
}

/// Records that signal `sig` asked the process to stop (async-signal-safe: one atomic store).
pub fn interrupt(sig: i32) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// The signal that asked the process to stop, if one did.
pub fn interrupted() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Until the guard drops, an interrupt does not cancel this thread's work: the training loop
/// takes it at the next step boundary instead.
pub fn defer_interrupts() -> Deferred {
    DEFERRED.with(|d| d.set(d.get() + 1));
    Deferred(())
}

pub struct Deferred(());

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFERRED.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Leaves a note for the message the interrupted run ends with.
pub fn set_note(note: String) {
    *NOTE.lock().unwrap_or_else(|e| e.into_inner()) = Some(note);
}

pub fn note() -> Option<String> {
    NOTE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `Err(Error::Cancelled)` once this thread's run has been cancelled.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_cancels_its_own_thread_only_while_installed() {
        let t = Token::new();
        assert!(check().is_ok());
        {
            let _g = install(&t);
            assert!(check().is_ok());
            t.cancel();
            assert!(matches!(check(), Err(Error::Cancelled)));
            let other = std::thread::spawn(requested).join().unwrap();
            assert!(!other, "another thread has no run flag");
        }
        assert!(check().is_ok(), "the guard removed the flag");
    }
}
