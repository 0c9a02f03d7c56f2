//! Plan mode's arithmetic: what one `ftl.train` call would do (steps, epochs, schedule, data
//! sizes) and need (weights, gradients, optimizer state, activations), from the model's shapes
//! and the options alone — nothing is trained and no weight value is read.

use super::optim::state_bytes_for;
use super::{check_opts, lock, prepare, schedule, Plan, TrainOpts};
use crate::data::Dataset;
use crate::error::Result;
use crate::model::{Model, Param};
use crate::peft::target::{compact, layer_of};
use std::sync::Mutex;

/// One attached method as the plan shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MethodPlan {
    pub name: String,
    pub kind: String,
    pub active: bool,
    /// the modules it was injected into, compactly (`model.layers.{0..29}.self_attn.q_proj`)
    pub modules: Vec<String>,
    pub count: usize,
    pub trainable: usize,
}

/// Bytes a training run holds at its peak, by kind.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Memory {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    /// ftl itself, the tokenizer and the data (the planning process's own resident memory)
    pub runtime: u64,
}

impl Memory {
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.runtime
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainPlan {
    pub steps: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub examples: usize,
    pub eval_examples: Option<usize>,
    pub mean_tokens: f64,
    pub max_tokens: usize,
    /// the longest padded batch: the length the activations are estimated at
    pub batch_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub schedule: String,
    pub warmup: usize,
    pub lr_start: f64,
    pub lr_peak: f64,
    pub lr_end: f64,
    pub params: usize,
    pub trainable: usize,
    /// base weights trained in full (unfrozen), as compact module paths
    pub unfrozen: Vec<String>,
    pub unfrozen_params: usize,
    pub methods: Vec<MethodPlan>,
    pub memory: Memory,
    pub memory_checkpointed: Memory,
    pub checkpoint: bool,
}

/// What `train(model, data, o, eval)` would do and need.
pub fn plan(
    model: &Mutex<Model>,
    data: &Dataset,
    o: &TrainOpts,
    eval: Option<&Dataset>,
) -> Result<TrainPlan> {
    check_opts(o)?;
    let (ex, _) = prepare(model, data, o.max_len)?;
    let eval_examples = match eval {
        Some(d) => Some(prepare(model, d, o.max_len)?.0.len()),
        None => None,
    };
    let p = Plan::new(&ex, o)?;
    let batch_len = p
        .schedule
        .iter()
        .flat_map(|(_, micro)| micro.iter())
        .map(|b| b.iter().map(|&i| ex[i].ids.len()).max().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let epochs = p.schedule.last().map_or(0, |(e, _)| e + 1);
    let steps_per_epoch = ex
        .len()
        .div_ceil(o.batch_size)
        .div_ceil(o.grad_accum)
        .max(1);
    let lrs: Vec<f64> = (0..p.steps)
        .map(|k| schedule::lr_at(&o.schedule, o.lr, k, p.steps))
        .collect();
    let mut m = lock(model);
    let trainable = m.trainable_params();
    if trainable.is_empty() {
        return Err(crate::Error::msg(
            "nothing is trainable: attach a method (ftl.lora, ...) or unfreeze weights (m:unfreeze())",
        ));
    }
    let base = m.base_params();
    let unfrozen: Vec<String> = base
        .iter()
        .filter(|(_, p)| p.is_trainable())
        .map(|(n, _)| n.clone())
        .collect();
    let unfrozen_params = base
        .iter()
        .filter(|(_, p)| p.is_trainable())
        .map(|(_, p)| p.elem_count())
        .sum();
    let methods = methods(&mut m);
    let params = base.iter().map(|(_, p)| p.elem_count()).sum::<usize>()
        + m.adapter_names()
            .iter()
            .flat_map(|n| m.adapter_params(n))
            .map(|(_, p)| p.elem_count())
            .sum::<usize>();
    let adapters = m
        .adapter_names()
        .iter()
        .flat_map(|n| m.adapter_params(n))
        .map(|(_, p)| p.elem_count() * p.value().dtype().size_in_bytes())
        .sum::<usize>();
    let weights = bytes(&base) + adapters;
    let gradients = gradient_bytes(&mut m, &trainable, o);
    let sizes: Vec<_> = trainable
        .iter()
        .map(|(_, p)| (p.elem_count(), p.value().dtype()))
        .collect();
    let optimizer = state_bytes_for(&o.optimizer.kind, &sizes);
    let tokens = o.batch_size * batch_len;
    // a plan's weights are broadcast stand-ins, so what the process holds is ftl's own and the
    // adapters' (counted in `weights`)
    let runtime = if m.device.is_cpu() {
        super::current_rss().saturating_sub(adapters as u64)
    } else {
        0
    };
    let mut mem = |checkpoint| Memory {
        weights: weights as u64,
        gradients: gradients as u64,
        optimizer: optimizer as u64,
        activations: activation_bytes(&mut m, &trainable, tokens, batch_len, checkpoint),
        runtime,
    };
    let (memory, memory_checkpointed) = (mem(false), mem(true));
    Ok(TrainPlan {
        steps: p.steps,
        epochs,
        steps_per_epoch,
        examples: ex.len(),
        eval_examples,
        mean_tokens: ex.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / ex.len().max(1) as f64,
        max_tokens: ex.iter().map(|e| e.ids.len()).max().unwrap_or(0),
        batch_len,
        batch_size: o.batch_size,
        grad_accum: o.grad_accum,
        schedule: format!("{:?}", o.schedule.kind).to_lowercase(),
        warmup: o.schedule.warmup,
        lr_start: lrs.first().copied().unwrap_or(0.0),
        lr_peak: lrs.iter().copied().fold(0.0, f64::max),
        lr_end: lrs.last().copied().unwrap_or(0.0),
        params,
        trainable: trainable.iter().map(|(_, p)| p.elem_count()).sum(),
        unfrozen: compact(&unfrozen),
        unfrozen_params,
        methods,
        memory,
        memory_checkpointed,
        checkpoint: o.checkpoint,
    })
}

/// Every attached method: where it went and what it trains.
pub fn methods(m: &mut Model) -> Vec<MethodPlan> {
    let infos: Vec<_> = m
        .adapters()
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.method.kind().to_string(),
                a.targets.clone(),
            )
        })
        .collect();
    infos
        .into_iter()
        .map(|(name, kind, targets)| {
            let trainable = m
                .adapter_params(&name)
                .iter()
                .filter(|(_, p)| p.is_trainable())
                .map(|(_, p)| p.elem_count())
                .sum();
            MethodPlan {
                active: m.active.contains(&name),
                modules: compact(&targets),
                count: targets.len(),
                trainable,
                name,
                kind,
            }
        })
        .collect()
}

fn bytes(ps: &[(String, Param)]) -> usize {
    ps.iter()
        .map(|(_, p)| p.elem_count() * p.value().dtype().size_in_bytes())
        .sum()
}

/// Where a parameter's gradient comes from in the segmented backward pass, top segment first:
/// 0 the head, 1 + (layers - 1 - l) layer `l`, layers + 1 the embeddings.
fn segments_of(users: &[String], layers: usize, prefix: bool) -> Vec<usize> {
    if users.is_empty() {
        // prompt learning: prefixes enter every layer's attention, prompts the input embeddings
        return if prefix {
            (0..layers).map(|l| 1 + (layers - 1 - l)).collect()
        } else {
            vec![layers + 1]
        };
    }
    let mut out: Vec<usize> = users
        .iter()
        .map(|u| match layer_of(u) {
            Some(l) if l < layers => 1 + (layers - 1 - l),
            _ if is_embedding(u) => layers + 1,
            _ => 0,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn is_embedding(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.contains("embed") || matches!(last, "wte" | "wpe") || path.contains("embeddings")
}

/// The most gradient bytes alive at once, as the training loop holds them: each segment's
/// gradients plus those accumulated so far. Without accumulation or clipping, a layer's own
/// parameters are updated as soon as their segment is done and never accumulate.
fn gradient_bytes(m: &mut Model, params: &[(String, Param)], o: &TrainOpts) -> usize {
    let layers = m.info_dims().layers;
    let prefix = m
        .adapters()
        .iter()
        .any(|a| m.active.contains(&a.name) && a.method.kind() == "prefix");
    let users = m.param_users(params);
    let layered = m.in_one_layer(params);
    let early = o.grad_accum == 1 && o.clip.is_none();
    let segs: Vec<Vec<usize>> = users
        .iter()
        .map(|u| segments_of(u, layers, prefix))
        .collect();
    let size: Vec<usize> = params
        .iter()
        .map(|(_, p)| p.elem_count() * p.value().dtype().size_in_bytes())
        .collect();
    let total: usize = size.iter().sum();
    let mut peak = 0;
    let mut held = 0;
    let mut seen = vec![false; params.len()];
    for s in 0..layers + 2 {
        let here: usize = (0..params.len())
            .filter(|&i| segs[i].contains(&s))
            .map(|i| size[i])
            .sum();
        peak = peak.max(here + held);
        for i in (0..params.len()).filter(|&i| segs[i].contains(&s)) {
            // a layer's own gradients are applied at once when updates come early
            if !(seen[i] || early && layered[i]) {
                seen[i] = true;
                held += size[i];
            }
        }
    }
    if o.grad_accum > 1 {
        // later micro-batches find every gradient accumulated already
        let most = (0..layers + 2)
            .map(|s| {
                (0..params.len())
                    .filter(|&i| segs[i].contains(&s))
                    .map(|i| size[i])
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        peak = peak.max(total + most);
    }
    peak
}

/// The intermediate (feed-forward) width from the config, as each architecture names it.
fn intermediate(config: &serde_json::Value, hidden: usize) -> usize {
    ["intermediate_size", "n_inner"]
        .iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_u64()))
        .map_or(4 * hidden, |v| v as usize)
}

/// Activations kept for the backward pass of one micro-batch of `tokens` tokens (`len` per
/// row). A layer keeps the inputs of its matrix products and norms, its attention weights and
/// its feed-forward intermediates; layers below the lowest one with something to train keep
/// nothing. With checkpointing, each layer keeps only its input and one layer is recomputed
/// at a time. The logits and their gradient are held at the top.
fn activation_bytes(
    m: &mut Model,
    params: &[(String, Param)],
    tokens: usize,
    len: usize,
    checkpoint: bool,
) -> u64 {
    let d = m.info_dims();
    let inter = intermediate(&m.config, d.hidden);
    let a = m.dtype.size_in_bytes() as u64;
    let (h, kvd, i) = (
        d.hidden as u64,
        (d.kv_heads * d.head_dim) as u64,
        inter as u64,
    );
    let t = tokens as u64;
    let rows = (tokens / len.max(1)) as u64;
    let users = m.param_users(params);
    let prefix_or_prompt = users.iter().any(|u| u.is_empty());
    let lowest = users
        .iter()
        .flatten()
        .map(|u| match layer_of(u) {
            Some(l) if l < d.layers && !is_embedding(u) => l,
            _ if is_embedding(u) => 0,
            _ => d.layers,
        })
        .min()
        .unwrap_or(d.layers);
    let lowest = if prefix_or_prompt { 0 } else { lowest };
    let kept = (d.layers - lowest.min(d.layers)) as u64;
    // per token of one layer: norms and residuals, q/k/v/o, the feed-forward intermediates
    let per_token = a * (8 * h + 4 * kvd + 5 * i);
    // attention probabilities, f32: rows × heads × len × len
    let attn = 4 * rows * d.heads as u64 * (len as u64).pow(2);
    let lora: u64 = m
        .adapters()
        .iter()
        // a low-rank method keeps an r-wide intermediate per target and token
        .filter_map(|ad| {
            let r = ad.method.config.get("r")?.as_u64()?;
            Some(r * ad.targets.len() as u64)
        })
        .sum::<u64>()
        * a
        * t
        / d.layers.max(1) as u64;
    let layer = t * per_token + attn + lora;
    let head = match m.task() {
        // the logits, their float32 copy and log-softmax, the gradient both ways, and what the
        // allocator keeps of them between the forward and the backward pass (measured)
        crate::model::Task::CausalLm => t * d.vocab as u64 * (2 * a + 10),
        _ => t * h * a,
    };
    let body = if checkpoint && kept > 0 {
        (kept * t * h * a + layer).min(kept * layer)
    } else {
        kept * layer
    };
    body + head + t * h * a
}
