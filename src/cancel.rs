//! Cancelling a run (a save under `ftl watch`, Ctrl-C): a flag per run that the thread running it
//! installs, so that long library work (training steps, evaluation, generation) polls it without
//! every signature carrying it.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Whether this thread's run has been cancelled.
pub fn requested() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(Token::is_cancelled))
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
