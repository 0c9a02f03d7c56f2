//! One optimizer step: its micro-batches forward and backward, their gradients summed, clipped
//! and applied. Where nothing needs the whole step's gradients at once (no accumulation, no
//! clipping) a layer's parameters are updated as soon as their gradients are out, so the
//! gradients of all layers never exist together.

use super::backward::{self, Event};
use super::optim::{self, Optimizer};
use super::{lock, Hooks, NonFinite, TrainOpts, TrainResult};
use crate::data::Batch;
use crate::error::Result;
use crate::model::{Model, Param};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use std::sync::Mutex;
use std::time::Instant;

/// What a step reports: the mean loss over its label tokens and the gradient norm (before
/// clipping).
pub(super) struct Done {
    pub loss: f64,
    pub grad_norm: f64,
    /// a non-finite step skipped (`on_nonfinite = "skip"`)
    pub skipped: bool,
}

/// The step's gradients as the backward passes hand them over, segment by segment.
struct Gradients<'a> {
    params: &'a [(String, Param)],
    opt: &'a mut Optimizer,
    o: &'a TrainOpts,
    lr: f64,
    /// per parameter: updated as its segment's gradient comes out (the whole of it, since the
    /// parameter lives in one layer)
    early: Vec<bool>,
    acc: Vec<Option<Tensor>>,
    /// Σ g² of the parameters already updated
    sq: optim::SumSq,
    optimizer_s: f64,
    /// the most gradient bytes alive at once
    peak_bytes: usize,
}

impl Gradients<'_> {
    fn decay(&self, name: &str) -> bool {
        !self.o.no_decay.as_ref().is_some_and(|s| s.matches(name))
    }

    fn add(&mut self, grads: &GradStore) -> Result<()> {
        let held: usize = self.acc.iter().flatten().map(bytes).sum();
        let fresh: usize = self
            .params
            .iter()
            .filter_map(|(_, p)| p.var())
            .filter_map(|v| grads.get(v.as_tensor()))
            .map(bytes)
            .sum();
        self.peak_bytes = self.peak_bytes.max(fresh + held);
        for i in 0..self.params.len() {
            let (name, p) = &self.params[i];
            let var = p.var().expect("trainable");
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            if self.early[i] {
                let t = Instant::now();
                self.sq.add(g)?;
                self.opt.update(name, p, g, self.lr, self.decay(name))?;
                self.optimizer_s += t.elapsed().as_secs_f64();
                continue;
            }
            let a = &mut self.acc[i];
            *a = Some(match a.take() {
                None => g.clone(),
                Some(prev) => (prev + g)?,
            });
        }
        Ok(())
    }

    /// Clips and applies what was summed; the gradient norm of the whole step. A non-finite
    /// loss or gradient norm stops the training (naming the first parameter with a non-finite
    /// gradient) or, under `on_nonfinite = "skip"`, applies nothing: `None`.
    fn apply(mut self, loss: f64, k: usize, res: &mut TrainResult) -> Result<Option<f64>> {
        let t0 = Instant::now();
        let mut idx = Vec::new();
        let mut rest = Vec::new();
        for (i, g) in std::mem::take(&mut self.acc).into_iter().enumerate() {
            match (g, self.early[i]) {
                (_, true) => {}
                (Some(g), _) => {
                    idx.push(i);
                    rest.push(g);
                }
                // unused in this step (e.g. an adapter on inactive positions): zero gradient
                (None, false) => {
                    idx.push(i);
                    rest.push(self.params[i].1.value().zeros_like()?);
                }
            }
        }
        let unclipped: f64 = rest.iter().map(optim::sum_sq).sum::<Result<f64>>()?;
        let grad_norm = (unclipped + self.sq.total()?).sqrt();
        if !grad_norm.is_finite() || !loss.is_finite() {
            if self.o.on_nonfinite == NonFinite::Skip {
                tracing::warn!("step {}: non-finite loss or gradient: skipped", k + 1);
                res.optimizer_s += self.optimizer_s + t0.elapsed().as_secs_f64();
                return Ok(None);
            }
            return Err(self.nonfinite(k, loss, &idx, &rest));
        }
        optim::clip(&mut rest, unclipped.sqrt(), self.o.clip)?;
        for (i, g) in idx.into_iter().zip(rest) {
            let (name, p) = &self.params[i];
            self.opt.update(name, p, &g, self.lr, self.decay(name))?;
        }
        let device = self.params[0].1.value().device().clone();
        if !device.is_cpu() {
            device.synchronize()?;
        }
        let names: Vec<String> = self.params.iter().map(|(n, _)| n.clone()).collect();
        self.opt.retain(&names);
        res.optimizer_s += self.optimizer_s + t0.elapsed().as_secs_f64();
        res.grad_bytes = res.grad_bytes.max(self.peak_bytes);
        Ok(Some(grad_norm))
    }

    /// The error of a non-finite step `k`: the first parameter whose gradient (or, updated
    /// early, whose value) is not finite.
    fn nonfinite(&self, k: usize, loss: f64, idx: &[usize], rest: &[Tensor]) -> crate::Error {
        let finite = |t: &Tensor| optim::sum_sq(t).is_ok_and(f64::is_finite);
        let held = idx
            .iter()
            .zip(rest)
            .find(|(_, g)| !finite(g))
            .map(|(&i, _)| i);
        let early =
            (0..self.params.len()).find(|&i| self.early[i] && !finite(&self.params[i].1.value()));
        let first = match (held, early) {
            (Some(i), _) => format!("; first non-finite gradient: `{}`", self.params[i].0),
            (None, Some(i)) => format!(
                "; first parameter with a non-finite gradient or value: `{}`",
                self.params[i].0
            ),
            (None, None) => String::new(),
        };
        let what = if loss.is_finite() {
            "a gradient is not finite".to_string()
        } else {
            format!("the loss is not finite ({loss})")
        };
        crate::Error::msg(format!(
            "step {}: {what}{first}; the training stopped (on_nonfinite = \"skip\" skips such \
             steps)",
            k + 1
        ))
    }
}

fn bytes(g: &Tensor) -> usize {
    g.elem_count() * g.dtype().size_in_bytes()
}

/// Step `k` (from 0) over `batches` with learning rate `lr`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    model: &Mutex<Model>,
    batches: &[Batch],
    params: &[(String, Param)],
    opt: &mut Optimizer,
    lr: f64,
    o: &TrainOpts,
    k: usize,
    res: &mut TrainResult,
    hooks: &mut Hooks<'_, '_>,
) -> Result<Done> {
    let denom = batches
        .iter()
        .map(|b| b.loss_tokens())
        .sum::<usize>()
        .max(1) as f64;
    // a step that may be skipped must see all of its gradients before applying any
    let early = if o.grad_accum == 1 && o.clip.is_none() && o.on_nonfinite == NonFinite::Stop {
        lock(model).in_one_layer(params)
    } else {
        vec![false; params.len()]
    };
    let mut grads = Gradients {
        params,
        opt,
        o,
        lr,
        early,
        acc: vec![None; params.len()],
        sq: optim::SumSq::default(),
        optimizer_s: 0.0,
        peak_bytes: 0,
    };
    let mut losses = Vec::with_capacity(batches.len());
    for (j, b) in batches.iter().enumerate() {
        // a cancelled run stops within a micro-batch, not a whole step later
        crate::cancel::check()?;
        let seed = o
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add((k * o.grad_accum + j) as u64);
        let m = lock(model);
        let pass = backward::forward_backward(&m, b, seed, o.checkpoint, denom, |e| match e {
            Event::Forward => {
                hooks.forward();
                Ok(())
            }
            Event::Grads(g) => {
                hooks.backward(g, params);
                grads.add(g)
            }
        })?;
        drop(m);
        res.forward_s += pass.forward_s;
        res.backward_s += pass.backward_s;
        res.recomputed_layers += pass.recomputed;
        losses.push(pass.loss);
    }
    let mut loss = 0f64;
    for l in losses {
        loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let applied = grads.apply(loss, k, res)?;
    Ok(Done {
        loss,
        grad_norm: applied.unwrap_or(f64::NAN),
        skipped: applied.is_none(),
    })
}
