//! `ftl bench`: trains the reference benchmark configurations (random weights, fixed seed,
//! AdamW, one warm-up step not counted) and prints one JSON line per method.

use crate::data::{Dataset, Example};
use crate::model::hub::{self, RandomInit};
use crate::peft::lora::{LoraInit, LoraMethod, LoraOpts};
use crate::peft::target::{Pattern, Selector};
use crate::peft::Kind;
use crate::train::{self, optim, Flow, Hook, StepInfo, TrainOpts};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::sync::{Arc, Mutex};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "llama")]
    pub arch: String,
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    #[arg(long = "kv-heads", default_value_t = 12)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 2048)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// full, lora-qv, lora-all, prefix, or a registry method (ia3, loha, lokr, vera) on its default targets (comma-separated for several)
    #[arg(long, default_value = "lora-qv")]
    pub method: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// warm-up steps before the timed ones (the GPU reference uses 3)
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// LoRA rank (the reference uses 8 on the CPU, 16 on the GPU)
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// activation checkpointing (recompute each layer in the backward pass)
    #[arg(long)]
    pub checkpoint: bool,
    /// run the device path on the CPU too (to study what the GPU path keeps alive)
    #[arg(long, hide = true)]
    pub device_path: bool,
}

fn device(s: &str) -> Result<Device> {
    Ok(match s {
        "cpu" => Device::Cpu,
        s if s.starts_with("cuda") => crate::model::cuda_device(
            s.strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )?,
        other => bail!("unknown device {other}"),
    })
}

fn select(m: &mut crate::Model, names: &[&str]) -> Vec<String> {
    let s = Selector::new(Pattern::list(names.iter().map(|s| s.to_string()).collect()));
    s.select(&m.module_paths(Kind::Linear), "modules")
        .unwrap_or_default()
}

/// The benchmark model with `method` attached, its tensors from `src`.
fn build(
    a: &BenchArgs,
    method: &str,
    cfg: &serde_json::Value,
    src: &dyn hub::Source,
    dtype: DType,
    dev: &Device,
) -> Result<crate::Model> {
    let mut m = hub::build(cfg, std::path::Path::new("bench"), src, dtype, dev, true)?;
    let gpu = !dev.is_cpu();
    let r = a.rank.unwrap_or(if gpu { 16 } else { 8 });
    let lora = LoraOpts {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        rslora: false,
        dora: false,
        lora_bias: false,
        init: LoraInit::Kaiming,
    }
    .config()?;
    match method {
        "full" => {
            m.set_trainable(None, true)?;
        }
        "lora-qv" => {
            let p = select(&mut m, &["q_proj", "v_proj"]);
            m.attach_registered("default", &LoraMethod, &p, &lora)?;
        }
        "lora-all" => {
            let every = Selector::new(Pattern::list(Vec::new()));
            let p = m.all_linear(&every);
            m.attach_registered("default", &LoraMethod, &p, &lora)?;
        }
        "prefix" => {
            use crate::peft::{prefix::PrefixTuning, registry};
            let given = serde_json::json!({"num_virtual_tokens": 16});
            let cfg = registry::input_config(&PrefixTuning, given.as_object().unwrap(), "prefix")?;
            m.attach_input("default", &PrefixTuning, &cfg)?;
        }
        other => {
            let Some(method) = crate::peft::registry::by_name(other) else {
                let more: String = crate::peft::registry::METHODS
                    .iter()
                    .map(|m| format!(", {}", m.name()))
                    .collect();
                bail!("unknown method {other} (full, lora-qv, lora-all, prefix{more})")
            };
            // a registry method on its default targets, at the benchmark's rank
            let targets = method
                .default_targets(m.arch.model_type())
                .ok_or_else(|| anyhow::anyhow!("{other}: no default targets for {}", a.arch))?;
            let p = select(&mut m, &targets);
            let given = serde_json::json!({"r": r});
            let mt = m.arch.model_type().to_string();
            let given = crate::peft::registry::pick_modules(
                method,
                given.as_object().unwrap(),
                &p,
                &mt,
                other,
            )?;
            let cfg = crate::peft::registry::config(method, &given, other)?;
            m.attach_registered("default", method, &p, &cfg)?;
        }
    }
    Ok(m)
}

/// Runs one method; the JSON line.
pub fn run_one(a: &BenchArgs, method: &str) -> Result<serde_json::Value> {
    let dev = device(&a.device)?;
    if a.device_path {
        crate::ops::set_path(crate::ops::Path::Device);
    }
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        o => bail!("unknown dtype {o}"),
    };
    let cfg = serde_json::json!({
        "model_type": a.arch, "hidden_size": a.hidden, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
        "intermediate_size": a.intermediate, "vocab_size": a.vocab, "max_position_embeddings": 2048,
        "n_embd": a.hidden, "n_layer": a.layers, "n_head": a.heads, "n_positions": 2048,
    });
    crate::train::sample_device_memory(&dev);
    let src = RandomInit {
        seed: 0,
        dtype,
        device: dev.clone(),
    };
    let gpu = !dev.is_cpu();
    // `ftl check`'s estimate of this run, from a shapes-only model made first (its weights are
    // broadcast stand-ins that hold no memory, so they do not count in the run's peak)
    let shapes = crate::model::param::shapes_only();
    let plan_model = build(
        a,
        method,
        &cfg,
        &hub::Shapes {
            dtype,
            device: Device::Cpu,
        },
        dtype,
        &Device::Cpu,
    )?;
    // random ids, every row full length (real tokens only)
    let mut rng = crate::peft::lora::rng_for(0, "bench-data");
    use rand::Rng;
    let ex: Vec<Example> = (0..a.batch * (a.steps + a.warmup.max(1)))
        .map(|_| {
            let ids: Vec<u32> = (0..a.seq)
                .map(|_| rng.random_range(0..a.vocab as u32))
                .collect();
            Example {
                labels: ids.iter().map(|&x| x as i64).collect(),
                ids,
                ..Default::default()
            }
        })
        .collect();
    let opts = TrainOpts {
        max_steps: Some(a.steps + a.warmup.max(1)),
        batch_size: a.batch,
        lr: 1e-4,
        optimizer: optim::OptimOpts {
            kind: optim::Kind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            weight_decay: 0.01,
        },
        shuffle: false,
        checkpoint: a.checkpoint,
        ..Default::default()
    };
    let data = Dataset::from_examples(ex, "bench")?;
    let plan = train::estimate::plan(&Mutex::new(plan_model), &data, &opts, None)?;
    let estimate = if a.checkpoint {
        plan.memory_checkpointed
    } else {
        plan.memory
    };
    drop(shapes);
    let mut m = build(a, method, &cfg, &src, dtype, &dev)?;
    let params: usize = m.base_params().iter().map(|(_, p)| p.elem_count()).sum();
    let model = Arc::new(Mutex::new(m));
    // one run, as the reference's: the first (warm-up) step is not counted
    struct Times(Vec<StepInfo>);
    impl Hook for Times {
        fn on_step(&mut self, s: &StepInfo) -> crate::Result<Flow> {
            self.0.push(s.clone());
            Ok(Flow::Continue)
        }
    }
    let mut times = Times(Vec::new());
    #[cfg(feature = "profile")]
    let prof = crate::profile::start();
    let res = train::train(&model, &data, &opts, None, &mut [&mut times])?;
    #[cfg(feature = "profile")]
    if let Some(p) = prof {
        p.finish();
    }
    let warm = a.warmup.max(1);
    let (w, l) = (&times.0[warm - 1], &times.0[a.steps + warm - 1]);
    let n = a.steps as f64;
    let step_s = (l.elapsed_s - w.elapsed_s) / n;
    let peak = if gpu {
        crate::train::device_peak_bytes(&dev).unwrap_or(0)
    } else {
        res.peak_mem_bytes
    };
    let (fwd, bwd, opt) = (
        (l.forward_s - w.forward_s) / n,
        (l.backward_s - w.backward_s) / n,
        (l.optimizer_s - w.optimizer_s) / n,
    );
    let tps = (a.batch * a.seq) as f64 / step_s;
    let flops = model_flops_per_token(params, a, method == "full");
    // against the H200's dense bf16 peak, as the GPU reference script
    let mfu = gpu.then(|| flops * tps / H200_BF16_PEAK);
    Ok(serde_json::json!({
        "model_flops_per_token": flops, "mfu": mfu,
        "impl": "ftl", "method": method, "checkpoint": a.checkpoint, "arch": a.arch, "hidden": a.hidden, "layers": a.layers,
        "batch": a.batch, "seq": a.seq, "steps": a.steps, "dtype": a.dtype, "device": a.device,
        "params": params, "trainable": res.trainable,
        "tokens_per_s": tps,
        "step_s": step_s, "forward_s": fwd, "backward_s": bwd, "optimizer_s": opt,
        "peak_mem_bytes": peak, "grad_bytes": res.grad_bytes, "optimizer_bytes": res.optimizer_bytes,
        // the GPU figure is device memory above the context: without the process's own
        "estimated_peak_bytes": estimate.total() - if gpu { estimate.runtime } else { 0 },
        "estimate": estimate,
        "threads": rayon::current_num_threads(), "loss": res.loss,
    }))
}

/// Dense bf16 peak of an H200 (the reference script's MFU denominator).
const H200_BF16_PEAK: f64 = 989e12;

/// Matrix-multiply FLOPs per trained token, counted as the reference script counts them: 6 per
/// matmul weight for full fine-tuning (forward, input and weight gradients), 4 for PEFT (no weight
/// gradients), plus QKᵀ and AV over the full square, three times (forward and backward).
fn model_flops_per_token(params: usize, a: &BenchArgs, full: bool) -> f64 {
    let n_mat = params.saturating_sub(a.vocab * a.hidden) as f64;
    let attn = (4 * a.layers * a.seq * a.hidden) as f64;
    (if full { 6.0 } else { 4.0 }) * n_mat + 3.0 * attn
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    for method in a.method.split(',') {
        let line = run_one(a, method.trim())?;
        println!("{line}");
    }
    Ok(())
}
