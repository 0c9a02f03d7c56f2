//! The metrics a run leaves beside its manifest: a training hook appending one JSON line per
//! optimizer step and per evaluation to `OUT/metrics.jsonl`, and at the end of each training a
//! plot of loss and learning rate (`OUT/loss.svg`, `loss-2.svg`, … for later `ftl.train` calls).

use crate::error::{Error, Result};
use crate::train::{EvalInfo, Flow, Hook, StepInfo};
use std::path::{Path, PathBuf};

pub const FILE: &str = "metrics.jsonl";

/// The plot of the `call`th training (1-based).
pub fn plot_name(call: usize) -> String {
    if call == 1 {
        "loss.svg".into()
    } else {
        format!("loss-{call}.svg")
    }
}

/// Records one `ftl.train` call. Every step is written (not only each `log_every`th), so the
/// file holds the whole curve whatever the console showed. The file is rewritten whole (under a
/// temporary name, then renamed) at most once a second and at every evaluation, checkpoint and
/// the end, so that it is never half-written.
pub struct Recorder {
    call: usize,
    path: PathBuf,
    plot: PathBuf,
    epoch: usize,
    /// the file's lines: earlier trainings', then this one's
    lines: Vec<String>,
    /// the lines of this training an earlier, interrupted process wrote (kept on resume)
    before: Vec<String>,
    written: Option<std::time::Instant>,
    /// (step, loss, lr)
    steps: Vec<(usize, f64, f64)>,
    /// (step, eval loss)
    evals: Vec<(usize, f64)>,
}

/// JSON has no NaN or infinity: a diverged loss is written as null.
fn num(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into)
}

impl Recorder {
    /// The recorder of the `call`th training of a run writing into `dir`: the first one starts
    /// the run's metrics.jsonl afresh (unless it resumes), later ones add to it.
    pub fn new(dir: &Path, call: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let train_of = |l: &str| -> Option<usize> {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v.get("train")?.as_u64()? as usize)
        };
        let (mut lines, mut before) = (Vec::new(), Vec::new());
        for l in old.lines() {
            match train_of(l) {
                Some(t) if t < call => lines.push(l.to_string()),
                Some(t) if t == call => before.push(l.to_string()),
                _ => {}
            }
        }
        Ok(Recorder {
            call,
            path,
            plot: dir.join(plot_name(call)),
            epoch: 0,
            lines,
            before,
            written: None,
            steps: Vec::new(),
            evals: Vec::new(),
        })
    }

    fn line(&mut self, v: serde_json::Value, now: bool) -> Result<()> {
        self.lines.push(v.to_string());
        if now
            || self
                .written
                .is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0)
        {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<()> {
        let mut s = self.lines.join("\n");
        s.push('\n');
        crate::st::write_atomic(&self.path, s.as_bytes())?;
        self.written = Some(std::time::Instant::now());
        Ok(())
    }

    /// Writes the file and the plot of this training's loss (and eval loss) and learning rate.
    pub fn finish(&mut self) -> Result<()> {
        self.write()?;
        let svg = plot(&self.steps, &self.evals)
            .map_err(|e| Error::file(&self.plot, format!("plotting: {e}")))?;
        crate::st::write_atomic(&self.plot, svg.as_bytes())
    }
}

impl Hook for Recorder {
    fn on_resume(&mut self, step: usize) -> Result<()> {
        // the interrupted process's record up to the checkpoint; what it did after is redone
        for l in std::mem::take(&mut self.before) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            let Some(s) = v.get("step").and_then(|s| s.as_u64()).map(|s| s as usize) else {
                continue;
            };
            if s > step {
                continue;
            }
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            if v.get("eval_loss").is_some() {
                self.evals.push((s, f("eval_loss")));
            } else {
                self.steps.push((s, f("loss"), f("lr")));
            }
            self.lines.push(l);
        }
        Ok(())
    }

    fn on_step(&mut self, s: &StepInfo) -> Result<Flow> {
        self.epoch = s.epoch;
        self.steps.push((s.step, s.loss, s.lr));
        let mut v = serde_json::json!({
            "train": self.call,
            "step": s.step,
            "epoch": s.epoch,
            "loss": num(s.loss),
            "lr": num(s.lr),
            "grad_norm": num(s.grad_norm),
            "tokens_per_s": num(s.tokens_per_s),
            "elapsed_s": num(s.elapsed_s),
        });
        if s.skipped {
            v["skipped"] = true.into();
        }
        self.line(v, false)?;
        Ok(Flow::Continue)
    }

    fn on_eval(&mut self, e: &EvalInfo) -> Result<Flow> {
        self.evals.push((e.step, e.loss));
        self.line(
            serde_json::json!({
                "train": self.call,
                "step": e.step,
                "epoch": self.epoch,
                "eval_loss": num(e.loss),
                "perplexity": num(e.perplexity),
                "accuracy": e.accuracy.map(num),
            }),
            true,
        )?;
        Ok(Flow::Continue)
    }

    fn on_state(&mut self, _at: &crate::train::At<'_>) -> Result<()> {
        self.write()
    }
}

/// Loss (left axis) and learning rate (right axis) over the optimizer steps, as SVG.
fn plot(
    steps: &[(usize, f64, f64)],
    evals: &[(usize, f64)],
) -> std::result::Result<String, Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let finite = |x: &f64| x.is_finite();
    let losses = steps
        .iter()
        .map(|s| s.1)
        .chain(evals.iter().map(|e| e.1))
        .filter(finite);
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let lr_hi = steps
        .iter()
        .map(|s| s.2)
        .filter(finite)
        .fold(0.0, f64::max)
        .max(1e-12);
    let last = steps
        .iter()
        .map(|s| s.0)
        .chain(evals.iter().map(|e| e.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss and learning rate", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .right_y_label_area_size(64)
            .build_cartesian_2d(0usize..last, (lo - pad)..(hi + pad))?
            .set_secondary_coord(0usize..last, 0.0..lr_hi * 1.05);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("lr")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
        let loss_pts = steps.iter().filter(|s| s.1.is_finite()).map(|s| (s.0, s.1));
        chart
            .draw_series(LineSeries::new(loss_pts, &BLUE))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        if !evals.is_empty() {
            chart
                .draw_series(
                    evals
                        .iter()
                        .filter(|e| finite(&e.1))
                        .map(|e| Circle::new((e.0, e.1), 4, RED.filled())),
                )?
                .label("eval loss")
                .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
        }
        chart
            .draw_secondary_series(LineSeries::new(
                steps.iter().filter(|s| s.2.is_finite()).map(|s| (s.0, s.2)),
                &GREEN,
            ))?
            .label("lr")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_svg_and_survives_a_nan_loss() {
        let svg = plot(
            &[(1, 2.0, 1e-3), (2, f64::NAN, 1e-3), (3, 1.5, 5e-4)],
            &[(3, 1.7)],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        let empty = plot(&[], &[]).unwrap();
        assert!(empty.contains("</svg>"));
    }
}
