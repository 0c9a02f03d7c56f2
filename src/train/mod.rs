//! The training loop: micro-batches → loss → backward → accumulated gradients → clip → optimizer
//! step, with extras (progress, callbacks, evaluation, checkpoints) hanging off step events.

pub mod estimate;
pub mod optim;
pub mod progress;
pub mod schedule;

use crate::data::{batch_indices, Batch, Ctx as DataCtx, Dataset, Example, Prep};
use crate::error::{Error, Result};
use crate::model::{Model, Param, Task};
use crate::ops::{self, tape};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, D};
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Observers of the loop. Hooks run without the model locked, so they may change it (freeze,
/// unfreeze, attach); the change applies from the next step.
pub trait Hook {
    fn on_step(&mut self, _s: &StepInfo) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    fn on_eval(&mut self, _e: &EvalInfo) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// After each backward pass, with what it stored and the parameters being trained (a
    /// micro-batch is backpropagated one layer segment at a time: several calls).
    fn on_backward(&mut self, _grads: &GradStore, _params: &[(String, Param)]) {}
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

/// Resident memory of this process now (VmRSS).
pub fn current_rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process (VmHWM).
pub fn peak_rss() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

static DEVICE_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static DEVICE_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Device memory in use now (all of it: the context and the allocator's cache included).
fn device_used(dev: &candle_core::Device) -> Option<u64> {
    match dev {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        _ => None,
    }
}

/// Records device memory use; training samples it after every forward and backward pass. The
/// first sample (before any model memory, after the context) is the baseline.
pub fn sample_device_memory(dev: &candle_core::Device) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(u) = device_used(dev) {
        DEVICE_BASE.fetch_min(u, Relaxed);
        DEVICE_PEAK.fetch_max(u, Relaxed);
    }
}

/// Starts a new high-water mark, so that a training reports its own peak rather than the
/// process's (a comparison trains many models one after another). On the CPU freed heap pages go
/// back to the system first, then the kernel's VmHWM restarts at the current RSS; on a GPU the
/// peak restarts at the memory in use now.
pub fn reset_peak_memory(dev: &candle_core::Device) {
    if dev.is_cpu() {
        // SAFETY: both only return free heap memory to the system (mimalloc is the binary's
        // allocator, glibc's malloc the tests')
        unsafe {
            libmimalloc_sys::mi_collect(true);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            libc::malloc_trim(0);
        }
        // "5" resets the peak RSS (Documentation/filesystems/proc.rst); without /proc (or
        // permission) the peak stays the process's
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    } else if let Some(u) = device_used(dev) {
        use std::sync::atomic::Ordering::Relaxed;
        DEVICE_BASE.fetch_min(u, Relaxed);
        DEVICE_PEAK.store(u, Relaxed);
    }
}

/// Peak device memory above the baseline sampled first (the CUDA context excluded).
pub fn device_peak_bytes(dev: &candle_core::Device) -> Option<u64> {
    use std::sync::atomic::Ordering::Relaxed;
    sample_device_memory(dev);
    let (p, b) = (DEVICE_PEAK.load(Relaxed), DEVICE_BASE.load(Relaxed));
    (b != u64::MAX).then(|| p.saturating_sub(b))
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
}

/// Trains every trainable tensor of `model` on `data`.
pub fn train(
    model: &Arc<Mutex<Model>>,
    data: &Dataset,
    o: &TrainOpts,
    eval: Option<&Dataset>,
    hooks: &mut [&mut dyn Hook],
) -> Result<TrainResult> {
    check_opts(o)?;
    let (ex, pad) = prepare(model, data, o.max_len)?;
    let eval_ex = match eval {
        Some(d) => Some(prepare(model, d, o.max_len)?.0),
        None => None,
    };
    let plan = Plan::new(&ex, o)?;
    let _uploads = crate::model::keep_small_uploads(&lock(model).device);
    let device = lock(model).device.clone();
    reset_peak_memory(&device);
    let mut opt = Optimizer::new(o.optimizer.clone());
    let mut res = TrainResult::default();
    let start = Instant::now();
    for (k, (epoch, micro)) in plan.schedule.iter().enumerate() {
        let params = trainable(model)?;
        let lr = schedule::lr_at(&o.schedule, o.lr, k, plan.steps);
        let batches: Vec<Batch> = micro
            .iter()
            .map(|idx| {
                Batch::collate(
                    &idx.iter().map(|&i| ex[i].clone()).collect::<Vec<_>>(),
                    pad,
                    &device,
                )
            })
            .collect::<Result<_>>()?;
        let denom = batches
            .iter()
            .map(|b| b.loss_tokens())
            .sum::<usize>()
            .max(1) as f64;
        // without accumulation or clipping, a layer's parameters are updated as soon as their
        // gradients are out, so the gradients of all layers never exist at once
        let early = o.grad_accum == 1 && o.clip.is_none();
        let decay = |name: &str| !o.no_decay.as_ref().is_some_and(|s| s.matches(name));
        let mut sq = optim::SumSq::default();
        let mut opt_s = 0f64;
        let mut apply = |i: usize, g: &Tensor| -> Result<()> {
            let t = Instant::now();
            let (name, p) = &params[i];
            sq.add(g)?;
            opt.update(name, p, g, lr, decay(name))?;
            opt_s += t.elapsed().as_secs_f64();
            Ok(())
        };
        let early_fn: Option<&mut EarlyUpdate> = if early { Some(&mut apply) } else { None };
        let (loss, grads) = accumulate(
            model, &batches, denom, &params, o, k, &mut res, hooks, early_fn,
        )?;
        let t0 = Instant::now();
        let (idx, mut rest): (Vec<usize>, Vec<Tensor>) = grads
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| g.map(|g| (i, g)))
            .unzip();
        let grad_norm = (optim::clip(&mut rest, o.clip)?.powi(2) + sq.total()?).sqrt();
        for (i, g) in idx.into_iter().zip(rest) {
            let (name, p) = &params[i];
            opt.update(name, p, &g, lr, decay(name))?;
        }
        res.optimizer_s += opt_s;
        if !device.is_cpu() {
            device.synchronize()?;
        }
        opt.retain(&params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
        res.optimizer_s += t0.elapsed().as_secs_f64();
        res.tokens += batches.iter().map(|b| b.tokens).sum::<usize>();
        res.steps = k + 1;
        res.epochs = epoch + 1;
        res.loss = loss;
        res.optimizer_bytes = res.optimizer_bytes.max(opt.state_bytes());
        res.trainable = params.iter().map(|(_, p)| p.elem_count()).sum();
        let elapsed = start.elapsed().as_secs_f64();
        let info = StepInfo {
            step: k + 1,
            total_steps: plan.steps,
            epoch: epoch + 1,
            loss,
            lr,
            grad_norm,
            tokens: res.tokens,
            tokens_per_s: res.tokens as f64 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            forward_s: res.forward_s,
            backward_s: res.backward_s,
            optimizer_s: res.optimizer_s,
        };
        let mut flow = emit(hooks, |h| h.on_step(&info))?;
        let due = o.eval_every.is_some_and(|e| (k + 1) % e == 0) || k + 1 == plan.steps;
        if let (Some(eex), true) = (&eval_ex, due) {
            let e = evaluate_examples(model, eex, pad, o.eval_batch_size, k + 1)?;
            res.eval_loss = Some(e.loss);
            if emit(hooks, |h| h.on_eval(&e))? == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        if flow == Flow::Stop {
            break;
        }
    }
    res.time_s = start.elapsed().as_secs_f64();
    res.tokens_per_s = res.tokens as f64 / res.time_s.max(1e-9);
    res.peak_mem_bytes = if device.is_cpu() {
        peak_rss()
    } else {
        device_peak_bytes(&device).unwrap_or(0)
    };
    Ok(res)
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

fn emit(
    hooks: &mut [&mut dyn Hook],
    mut f: impl FnMut(&mut dyn Hook) -> Result<Flow>,
) -> Result<Flow> {
    let mut flow = Flow::Continue;
    for h in hooks.iter_mut() {
        if f(&mut **h)? == Flow::Stop {
            flow = Flow::Stop;
        }
    }
    Ok(flow)
}

/// Applies the optimizer to parameter `i` as soon as its whole gradient is known.
type EarlyUpdate<'a> = dyn FnMut(usize, &Tensor) -> Result<()> + 'a;

/// Forward and backward over one step's micro-batches; the step's mean loss and the summed
/// gradients of `params`.
#[allow(clippy::too_many_arguments)]
fn accumulate(
    model: &Mutex<Model>,
    batches: &[Batch],
    denom: f64,
    params: &[(String, Param)],
    o: &TrainOpts,
    step: usize,
    res: &mut TrainResult,
    hooks: &mut [&mut dyn Hook],
    mut early: Option<&mut EarlyUpdate>,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    let mut losses = Vec::with_capacity(batches.len());
    let mut acc: Vec<Option<Tensor>> = vec![None; params.len()];
    let mut done = vec![false; params.len()];
    // parameters inside one layer get their whole gradient from that layer's segment
    let layered = lock(model).in_one_layer(params);
    for (j, b) in batches.iter().enumerate() {
        // a cancelled run stops within a micro-batch, not a whole step later
        crate::cancel::check()?;
        let t0 = Instant::now();
        let m = lock(model);
        let seed = o
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add((step * o.grad_accum + j) as u64);
        let ctx = m.ctx(true, seed).segmented().checkpointed(o.checkpoint);
        // the device path records its ops for its own backward pass (see `ops::tape`)
        let _recording = tape::record();
        let logits = m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &ctx, None)?;
        let loss = (loss_sum(&logits, b)? / denom)?;
        drop(logits);
        sample_device_memory(&b.ids.device().clone());
        // read once the step's work is queued: reading it here would leave the GPU idle while the
        // backward pass is being queued
        losses.push(loss.detach());
        let t1 = Instant::now();
        res.forward_s += (t1 - t0).as_secs_f64();
        let mut bytes = 0;
        let mut recomputed = 0;
        backward_by_segment(&m, b, &ctx, loss, &mut recomputed, |grads| {
            // what is alive at once: this segment's gradients and the ones accumulated so far
            let held: usize = acc
                .iter()
                .flatten()
                .map(|g| g.elem_count() * g.dtype().size_in_bytes())
                .sum();
            bytes = bytes.max(grad_bytes(grads, params) + held);
            sample_device_memory(&b.ids.device().clone());
            for h in hooks.iter_mut() {
                h.on_backward(grads, params);
            }
            for (i, ((_, p), a)) in params.iter().zip(acc.iter_mut()).enumerate() {
                let var = p.var().expect("trainable");
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                if let (Some(f), true) = (early.as_mut(), layered[i]) {
                    f(i, g)?;
                    done[i] = true;
                    continue;
                }
                *a = Some(match a.take() {
                    None => g.clone(),
                    Some(prev) => (prev + g)?,
                });
            }
            Ok(())
        })?;
        res.recomputed_layers += recomputed;
        drop(m);
        res.backward_s += t1.elapsed().as_secs_f64();
        res.grad_bytes = res.grad_bytes.max(bytes);
    }
    let grads = params
        .iter()
        .zip(acc)
        .zip(done)
        .map(|(((_, p), g), done)| match (g, done) {
            (_, true) => Ok(None),
            (Some(g), _) => Ok(Some(g)),
            // unused in this step (e.g. an adapter on inactive positions): zero gradient
            (None, false) => Ok(Some(p.value().zeros_like()?)),
        })
        .collect::<Result<_>>()?;
    let mut total = 0f64;
    for l in losses {
        total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok((total, grads))
}

/// The backward pass of one micro-batch from `loss`, one layer segment at a time, top down:
/// each segment's activations are freed as soon as its gradients are out (with checkpointing, the
/// layer below a boundary is recomputed from its input first). `on_grads` sees each segment's
/// gradients.
fn backward_by_segment(
    m: &Model,
    b: &Batch,
    ctx: &crate::model::Ctx,
    loss: Tensor,
    recomputed: &mut usize,
    mut on_grads: impl FnMut(&GradStore) -> Result<()>,
) -> Result<()> {
    let mut segments = ctx.take_segments();
    let head = tape::split_off(segments.last().map_or(0, |s| s.mark));
    let mut top = Some((loss, None, head));
    while let Some((t, g, ops)) = top.take() {
        let grads = tape::backward(&t, g, ops)?;
        drop(t);
        on_grads(&grads)?;
        // the gradient that reached the next boundary down continues below it
        while let Some(seg) = segments.pop() {
            let below = segments.last().map_or(0, |s| s.mark);
            let Some(g) = seg.var.as_ref().and_then(|v| grads.get(v.as_tensor())) else {
                tape::truncate(below);
                continue;
            };
            let (out, ops) = match seg.out {
                Some(out) => (out, tape::split_off(below)),
                None => {
                    let input = segments.last().map(|s| s.input.clone());
                    let replay = ctx.replay(seg.idx, input);
                    *recomputed += 1;
                    let start = tape::len();
                    let out =
                        m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &replay, None)?;
                    (out, tape::split_off(start))
                }
            };
            top = Some((out, Some(g.clone()), ops));
            break;
        }
    }
    Ok(())
}

/// Bytes of gradient the backward pass stored for model parameters.
fn grad_bytes(grads: &GradStore, params: &[(String, Param)]) -> usize {
    params
        .iter()
        .filter_map(|(_, p)| p.var())
        .filter_map(|v| grads.get(v.as_tensor()))
        .map(|g| g.elem_count() * g.dtype().size_in_bytes())
        .sum()
}

/// Loss, perplexity and (classification) accuracy over `data`.
pub fn evaluate(
    model: &Arc<Mutex<Model>>,
    data: &Dataset,
    batch_size: usize,
    max_len: Option<usize>,
) -> Result<EvalInfo> {
    let (ex, pad) = prepare(model, data, max_len)?;
    evaluate_examples(model, &ex, pad, batch_size, 0)
}

fn evaluate_examples(
    model: &Mutex<Model>,
    ex: &[Example],
    pad: u32,
    batch_size: usize,
    step: usize,
) -> Result<EvalInfo> {
    let m = lock(model);
    let ctx = m.ctx(false, 0);
    let (mut sum, mut n, mut correct) = (0f64, 0usize, 0usize);
    let cls = ex.first().is_some_and(|e| e.class.is_some());
    for idx in batch_indices(ex, batch_size.max(1), None, false) {
        crate::cancel::check()?;
        let b = Batch::collate(
            &idx.iter().map(|&i| ex[i].clone()).collect::<Vec<_>>(),
            pad,
            &m.device,
        )?;
        let logits = m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &ctx, None)?;
        sum += loss_sum(&logits, &b)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        n += b.loss_tokens();
        if cls {
            let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            correct += pred
                .iter()
                .zip(&b.labels)
                .filter(|(p, l)| **p as i64 == **l)
                .count();
        }
    }
    let loss = sum / n.max(1) as f64;
    Ok(EvalInfo {
        step,
        loss,
        perplexity: loss.exp(),
        accuracy: cls.then(|| correct as f64 / ex.len().max(1) as f64),
    })
}
