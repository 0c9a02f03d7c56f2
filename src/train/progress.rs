//! Progress of a run: an indicatif bar (step, loss, lr, tokens/s, ETA) on a terminal, plain log
//! lines otherwise.

use super::{EvalInfo, Flow, Hook, StepInfo};
use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
    quiet: bool,
}

impl Progress {
    pub fn new(total: usize, log_every: usize, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            log_every: log_every.max(1),
            quiet,
        }
    }
}

impl Hook for Progress {
    fn on_step(&mut self, s: &StepInfo) -> Result<Flow> {
        let msg = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            s.loss, s.lr, s.tokens_per_s
        );
        match &self.bar {
            Some(b) => {
                b.set_length(s.total_steps as u64);
                b.set_position(s.step as u64);
                b.set_message(msg);
                if s.step == s.total_steps {
                    b.finish();
                }
            }
            None if !self.quiet
                && (s.step == 1
                    || s.step.is_multiple_of(self.log_every)
                    || s.step == s.total_steps) =>
            {
                tracing::info!("step {}/{} epoch {} {msg}", s.step, s.total_steps, s.epoch);
            }
            None => {}
        }
        Ok(Flow::Continue)
    }

    fn on_eval(&mut self, e: &EvalInfo) -> Result<Flow> {
        let acc = e
            .accuracy
            .map(|a| format!(" accuracy {a:.3}"))
            .unwrap_or_default();
        let line = format!(
            "eval at step {}: loss {:.4} perplexity {:.2}{acc}",
            e.step, e.loss, e.perplexity
        );
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => tracing::info!("{line}"),
            None => {}
        }
        Ok(Flow::Continue)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
