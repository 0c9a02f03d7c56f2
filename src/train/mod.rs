//! The training loop: a plan of steps, each step's micro-batches through `step`, and the events
//! that everything else (evaluation, memory, progress, metrics, checkpoints, the recipe's
//! callbacks) hangs off as hooks.

mod backward;
pub mod checkpoint;
pub mod estimate;
pub mod eval;
pub mod memory;
pub mod optim;
pub mod progress;
pub mod schedule;
mod step;

use crate::data::{batch_indices, Batch, Ctx as DataCtx, Dataset, Example, Prep};
use crate::error::{Error, Result};
use crate::model::{Model, Param, Task};
use crate::ops;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
pub use eval::evaluate;
pub use memory::{
    current_rss, device_peak_bytes, peak_rss, reset_peak_memory, sample_device_memory,
};
use optim::{OptimOpts, Optimizer};
use schedule::Schedule;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOpts {
    pub epochs: Option<usize>,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_len: Option<usize>,
    pub lr: f64,
    pub optimizer: OptimOpts,
    /// parameter names exempt from weight decay
    pub no_decay: Option<crate::peft::target::Selector>,
    pub clip: Option<f64>,
    pub schedule: Schedule,
    pub shuffle: bool,
    pub group_by_length: bool,
    /// activation checkpointing: keep each layer's input only, recompute the layer in backward
    pub checkpoint: bool,
    pub seed: u64,
    pub eval_every: Option<usize>,
    pub eval_batch_size: usize,
    /// checkpoints (`save = {dir=, every=, keep=}`)
    pub save: Option<checkpoint::SaveOpts>,
    /// continue from the newest complete checkpoint in this directory (or this checkpoint)
    pub resume: Option<std::path::PathBuf>,
    /// what a step with a non-finite loss or gradient does
    pub on_nonfinite: NonFinite,
}

/// `on_nonfinite`: stop the training (the default), or skip the step and count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    #[default]
    Stop,
    Skip,
}

impl Default for TrainOpts {
    fn default() -> Self {
        TrainOpts {
            epochs: None,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            max_len: None,
            lr: 1e-4,
            optimizer: OptimOpts {
                kind: optim::Kind::AdamW {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
                weight_decay: 0.01,
            },
            no_decay: None,
            clip: None,
            schedule: Schedule {
                kind: schedule::Kind::Constant,
                warmup: 0,
                min_lr: None,
            },
            shuffle: true,
            group_by_length: false,
            checkpoint: false,
            seed: 0,
            eval_every: None,
            eval_batch_size: 8,
            save: None,
            resume: None,
            on_nonfinite: NonFinite::Stop,
        }
    }
}

/// What a step event reports.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// optimizer steps completed (1 after the first)
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// mean loss over the label tokens of this step
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// time spent so far in forward passes, backward passes and optimizer steps
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// the step was skipped (`on_nonfinite = "skip"`): nothing was applied
    pub skipped: bool,
}

#[derive(Clone, Debug)]
pub struct EvalInfo {
    pub step: usize,
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: Option<f64>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainResult {
    pub steps: usize,
    pub epochs: usize,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub time_s: f64,
    pub peak_mem_bytes: u64,
    pub trainable: usize,
    pub grad_bytes: usize,
    pub optimizer_bytes: usize,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// layers recomputed in backward passes (activation checkpointing)
    pub recomputed_layers: usize,
    /// steps skipped for a non-finite loss or gradient (`on_nonfinite = "skip"`)
    pub skipped_steps: usize,
    /// the step this training resumed after (0: it started afresh)
    pub resumed_from: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What hangs off the loop. Hooks run without the model locked, so they may change it (freeze,
/// unfreeze, attach); the change applies from the next step.
pub trait Hook {
    /// Before the first step of a training that resumed after `step` steps.
    fn on_resume(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
    /// After each micro-batch's forward pass, its loss queued.
    fn on_forward(&mut self) {}
    /// After each backward pass, with what it stored and the parameters being trained (a
    /// micro-batch is backpropagated one layer segment at a time: several calls).
    fn on_backward(&mut self, _grads: &GradStore, _params: &[(String, Param)]) {}
    fn on_step(&mut self, _s: &StepInfo) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// A measurement after step `s` (an evaluation), which every hook's `on_eval` then sees.
    fn measure(&mut self, _s: &StepInfo) -> Result<Option<EvalInfo>> {
        Ok(None)
    }
    fn on_eval(&mut self, _e: &EvalInfo) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// After every hook's `on_step` and `on_eval`, with the state a checkpoint is made of.
    fn on_state(&mut self, _at: &At<'_>) -> Result<()> {
        Ok(())
    }
    /// After the last step: what the hook measured goes into the result.
    fn on_end(&mut self, _res: &mut TrainResult) -> Result<()> {
        Ok(())
    }
}

/// Where a training stands after a step, for `Hook::on_state`.
pub struct At<'a> {
    pub info: &'a StepInfo,
    pub params: &'a [(String, Param)],
    pub optimizer: &'a Optimizer,
    pub result: &'a TrainResult,
    /// the next step's epoch and how many of that epoch's steps are done
    pub epoch: usize,
    pub step_in_epoch: usize,
    /// no step follows (the plan is done or a hook stopped it)
    pub last: bool,
}

/// The hooks of one training, in order: the loop's own, then the caller's.
pub struct Hooks<'a, 'b>(Vec<&'a mut (dyn Hook + 'b)>);

impl<'a, 'b> Hooks<'a, 'b> {
    fn new(
        memory: &'a mut memory::Memory,
        evaluation: Option<&'a mut eval::Evaluation>,
        checkpoints: Option<&'a mut checkpoint::Checkpoints>,
        caller: &'a mut [&'b mut dyn Hook],
    ) -> Self {
        let mut all: Vec<&'a mut (dyn Hook + 'b)> = vec![memory];
        all.extend(evaluation.map(|e| e as &mut dyn Hook));
        all.extend(caller.iter_mut().map(|h| &mut **h));
        // last: a checkpoint records what every other hook did with the step
        all.extend(checkpoints.map(|c| c as &mut dyn Hook));
        Hooks(all)
    }

    fn resumed(&mut self, step: usize) -> Result<()> {
        self.0.iter_mut().try_for_each(|h| h.on_resume(step))
    }

    fn state(&mut self, at: &At<'_>) -> Result<()> {
        self.0.iter_mut().try_for_each(|h| h.on_state(at))
    }

    fn forward(&mut self) {
        self.0.iter_mut().for_each(|h| h.on_forward());
    }

    fn backward(&mut self, grads: &GradStore, params: &[(String, Param)]) {
        self.0.iter_mut().for_each(|h| h.on_backward(grads, params));
    }

    /// `on_step` for every hook, then their measurements through every `on_eval`: stop if any
    /// says so.
    fn step(&mut self, s: &StepInfo) -> Result<Flow> {
        let mut flow = Flow::Continue;
        for h in self.0.iter_mut() {
            flow = flow.and(h.on_step(s)?);
        }
        for i in 0..self.0.len() {
            if let Some(e) = self.0[i].measure(s)? {
                for h in self.0.iter_mut() {
                    flow = flow.and(h.on_eval(&e)?);
                }
            }
        }
        Ok(flow)
    }

    fn end(&mut self, res: &mut TrainResult) -> Result<()> {
        self.0.iter_mut().try_for_each(|h| h.on_end(res))
    }
}

impl Flow {
    fn and(self, other: Flow) -> Flow {
        if other == Flow::Stop {
            Flow::Stop
        } else {
            self
        }
    }
}

fn lock(m: &Mutex<Model>) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tokenizes `data` with the model's tokenizer.
pub fn prepare(
    model: &Mutex<Model>,
    data: &Dataset,
    max_len: Option<usize>,
) -> Result<(Vec<Example>, u32)> {
    let m = lock(model);
    let bytes = crate::tokenizer::Tokenizer::bytes();
    let tok = m.tokenizer.as_ref().unwrap_or(&bytes);
    let num_labels = match m.task() {
        Task::SeqCls { num_labels } => Some(num_labels),
        _ => None,
    };
    if data.is_classification() != num_labels.is_some() {
        return Err(Error::msg(if num_labels.is_some() {
            "this classifier needs classification data (format = \"classification\")".to_string()
        } else {
            "classification data needs a model with a classification head".to_string()
        }));
    }
    let mut d = data.clone();
    if max_len.is_some() {
        d.prep = Prep { max_len, ..d.prep };
    }
    let l2i = m.config.get("label2id").and_then(|v| v.as_object());
    let ex = d.examples(&DataCtx {
        tok,
        num_labels,
        label2id: l2i,
    })?;
    if let Some(bad) = ex.iter().position(|e| e.ids.is_empty()) {
        return Err(Error::msg(format!(
            "{}: example {} has no tokens",
            data.origin,
            bad + 1
        )));
    }
    if num_labels.is_none() {
        // a causal LM learns from the labels after the first token; truncation can cut them all
        let empty = ex
            .iter()
            .filter(|e| e.labels.iter().skip(1).all(|&l| l == ops::IGNORE_INDEX))
            .count();
        let cut = max_len.map_or(String::new(), |n| {
            format!(" (max_len = {n} cuts each example to {n} tokens; raise it or shorten the prompt template)")
        });
        if empty == ex.len() && !ex.is_empty() {
            return Err(Error::msg(format!(
                "{}: no example has a token to learn from: every label is masked{cut}",
                data.origin
            )));
        }
        if empty > 0 {
            tracing::warn!(
                "{}: {empty} of {} examples have no label token left and teach nothing{cut}",
                data.origin,
                ex.len()
            );
        }
    }
    let pad = tok.pad.or(tok.eos).unwrap_or(0);
    Ok((ex, pad))
}

/// Σ of the loss over a batch's label tokens (causal LM, labels shifted inside) or examples
/// (classification).
pub fn loss_sum(logits: &Tensor, b: &Batch) -> Result<Tensor> {
    if b.labels.len() == b.rows && logits.rank() == 2 {
        return Ok(ops::cross_entropy_sum(
            &logits.to_dtype(DType::F32)?,
            &b.labels,
        )?);
    }
    let (rows, t, v) = logits.dims3()?;
    // prompt tuning puts virtual positions in front: their labels are ignored
    let extra = t - b.cols;
    let mut targets = vec![ops::IGNORE_INDEX; rows * t];
    for r in 0..rows {
        for j in 0..b.cols.saturating_sub(1) {
            targets[r * t + extra + j] = b.labels[r * b.cols + j + 1];
        }
        if extra > 0 {
            targets[r * t + extra - 1] = b.labels[r * b.cols];
        }
    }
    let flat = ops::reshape(logits, (rows * t, v))?;
    Ok(ops::cross_entropy_sum(&flat, &targets)?)
}

/// Which micro-batches each optimizer step takes.
struct Plan {
    steps: usize,
    /// per step: (epoch, micro-batches as example indices)
    schedule: Vec<(usize, Vec<Vec<usize>>)>,
}

impl Plan {
    fn new(ex: &[Example], o: &TrainOpts) -> Result<Plan> {
        let per_epoch_batches = ex.len().div_ceil(o.batch_size);
        let per_epoch = per_epoch_batches.div_ceil(o.grad_accum).max(1);
        let steps = match (o.max_steps, o.epochs) {
            (Some(s), _) => s,
            (None, e) => e.unwrap_or(1) * per_epoch,
        };
        let mut schedule = Vec::with_capacity(steps);
        let mut epoch = 0;
        while schedule.len() < steps {
            let seed = o.shuffle.then_some(o.seed.wrapping_add(epoch as u64));
            let batches = batch_indices(ex, o.batch_size, seed, o.group_by_length);
            for group in batches.chunks(o.grad_accum) {
                if schedule.len() == steps {
                    break;
                }
                schedule.push((epoch, group.to_vec()));
            }
            epoch += 1;
        }
        Ok(Plan { steps, schedule })
    }

    /// Step `k`'s epoch and how many steps of that epoch come before it.
    fn position(&self, k: usize) -> (usize, usize) {
        match self.schedule.get(k) {
            Some(&(e, _)) => (e, self.schedule[..k].iter().filter(|s| s.0 == e).count()),
            None => (self.schedule.last().map_or(0, |s| s.0 + 1), 0),
        }
    }
}

/// One step's micro-batches, padded and on the device.
fn collate(
    ex: &[Example],
    micro: &[Vec<usize>],
    pad: u32,
    device: &candle_core::Device,
) -> Result<Vec<Batch>> {
    micro
        .iter()
        .map(|idx| {
            let rows: Vec<Example> = idx.iter().map(|&i| ex[i].clone()).collect();
            Batch::collate(&rows, pad, device)
        })
        .collect()
}

/// Trains every trainable tensor of `model` on `data`.
pub fn train(
    model: &Arc<Mutex<Model>>,
    data: &Dataset,
    o: &TrainOpts,
    eval: Option<&Dataset>,
    caller: &mut [&mut dyn Hook],
) -> Result<TrainResult> {
    check_opts(o)?;
    let (ex, pad) = prepare(model, data, o.max_len)?;
    let plan = Plan::new(&ex, o)?;
    let device = lock(model).device.clone();
    let _uploads = crate::model::keep_small_uploads(&device);
    let _interrupts = crate::cancel::defer_interrupts();
    let mut evaluation = eval
        .map(|d| eval::Evaluation::new(model, d, pad, o))
        .transpose()?;
    let mut memory = memory::Memory::start(&device);
    let mut opt = Optimizer::new(o.optimizer.clone());
    let mut res = TrainResult::default();
    let mut ckpt = checkpoint::Checkpoints::new(model, &trainable(model)?, &ex, o, plan.steps)?;
    let first = match ckpt.as_mut() {
        Some(c) => c.resume(&trainable(model)?, &mut opt, &mut res)?,
        None => 0,
    };
    let mut hooks = Hooks::new(&mut memory, evaluation.as_mut(), ckpt.as_mut(), caller);
    if first > 0 {
        hooks.resumed(first)?;
    }
    let (start, before) = (Instant::now(), res.time_s);
    for (k, (epoch, micro)) in plan.schedule.iter().enumerate().skip(first) {
        let params = trainable(model)?;
        let lr = schedule::lr_at(&o.schedule, o.lr, k, plan.steps);
        let batches = collate(&ex, micro, pad, &device)?;
        let done = step::run(
            model, &batches, &params, &mut opt, lr, o, k, &mut res, &mut hooks,
        )?;
        res.steps = k + 1;
        res.epochs = epoch + 1;
        res.loss = done.loss;
        res.skipped_steps += done.skipped as usize;
        res.tokens += batches.iter().map(|b| b.tokens).sum::<usize>();
        res.trainable = params.iter().map(|(_, p)| p.elem_count()).sum();
        res.optimizer_bytes = res.optimizer_bytes.max(opt.state_bytes());
        res.time_s = before + start.elapsed().as_secs_f64();
        let info = StepInfo::of(&res, plan.steps, lr, &done);
        let flow = hooks.step(&info)?;
        let last = flow == Flow::Stop || k + 1 == plan.steps;
        let (epoch, step_in_epoch) = plan.position(k + 1);
        let at = At {
            info: &info,
            params: &params,
            optimizer: &opt,
            result: &res,
            epoch,
            step_in_epoch,
            last,
        };
        hooks.state(&at)?;
        if last {
            break;
        }
    }
    res.time_s = before + start.elapsed().as_secs_f64();
    res.tokens_per_s = res.tokens as f64 / res.time_s.max(1e-9);
    hooks.end(&mut res)?;
    Ok(res)
}

impl StepInfo {
    /// The report of the step `res` just recorded.
    fn of(res: &TrainResult, total_steps: usize, lr: f64, done: &step::Done) -> Self {
        let elapsed = res.time_s;
        StepInfo {
            step: res.steps,
            total_steps,
            epoch: res.epochs,
            loss: res.loss,
            lr,
            grad_norm: done.grad_norm,
            tokens: res.tokens,
            tokens_per_s: res.tokens as f64 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            forward_s: res.forward_s,
            backward_s: res.backward_s,
            optimizer_s: res.optimizer_s,
            skipped: done.skipped,
        }
    }
}

fn check_opts(o: &TrainOpts) -> Result<()> {
    if o.lr <= 0.0 || !o.lr.is_finite() {
        return Err(Error::msg(format!("lr must be positive, got {}", o.lr)));
    }
    if o.batch_size == 0 || o.grad_accum == 0 {
        return Err(Error::msg("batch_size and grad_accum must be at least 1"));
    }
    if o.max_steps == Some(0) || o.epochs == Some(0) {
        return Err(Error::msg("nothing to do: max_steps/epochs is 0"));
    }
    if let Some(c) = o.clip {
        if c <= 0.0 {
            return Err(Error::msg(format!("clip must be positive, got {c}")));
        }
    }
    Ok(())
}

fn trainable(model: &Mutex<Model>) -> Result<Vec<(String, Param)>> {
    let p = lock(model).trainable_params();
    if p.is_empty() {
        return Err(Error::msg(
            "nothing is trainable: attach a method (ftl.lora, ...) or unfreeze weights (m:unfreeze())",
        ));
    }
    Ok(p)
}
