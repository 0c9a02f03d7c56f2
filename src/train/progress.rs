//! Progress of a run: an indicatif bar (step, loss, lr, tokens/s, ETA) on a terminal, plain log
//! lines otherwise (under `ftl watch` at most one every few seconds, so a long training does not
//! bury the reruns' headers; metrics.jsonl keeps every step).

use super::{EvalInfo, Flow, Hook, StepInfo};
use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
    quiet: bool,
    /// the least time between two log lines (besides the first and last step's)
    every: Option<Duration>,
    last: Option<Instant>,
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
            every: None,
            last: None,
        }
    }

    /// Log lines at most one per `every` (the bar is unaffected).
    pub fn throttled(mut self, every: Duration) -> Self {
        self.every = Some(every);
        self
    }

    fn due(&mut self, step: usize, total: usize) -> bool {
        let edge = step == 1 || step == total;
        let paced = self
            .every
            .is_none_or(|e| self.last.is_none_or(|t| t.elapsed() >= e));
        let due = edge || (step.is_multiple_of(self.log_every) && paced);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

impl Hook for Progress {
    fn on_step(&mut self, s: &StepInfo) -> Result<Flow> {
        let msg = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            s.loss, s.lr, s.tokens_per_s
        );
        if let Some(b) = &self.bar {
            b.set_length(s.total_steps as u64);
            b.set_position(s.step as u64);
            b.set_message(msg);
            if s.step == s.total_steps {
                b.finish();
            }
        } else if !self.quiet && self.due(s.step, s.total_steps) {
            tracing::info!("step {}/{} epoch {} {msg}", s.step, s.total_steps, s.epoch);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(log_every: usize) -> Progress {
        Progress {
            bar: None,
            log_every,
            quiet: false,
            every: None,
            last: None,
        }
    }

    #[test]
    fn lines_follow_log_every_and_a_throttled_one_keeps_only_the_first_and_last_within_its_pace() {
        let mut p = plain(10);
        let due: Vec<usize> = (1..=30).filter(|&s| p.due(s, 30)).collect();
        assert_eq!(due, [1, 10, 20, 30]);
        let mut p = plain(1).throttled(Duration::from_secs(3600));
        let due: Vec<usize> = (1..=1000).filter(|&s| p.due(s, 1000)).collect();
        assert_eq!(due, [1, 1000]);
        let mut p = plain(1).throttled(Duration::ZERO);
        assert_eq!((1..=5).filter(|&s| p.due(s, 5)).count(), 5);
    }
}
