//! LoHa (PEFT's `LoHaConfig`): the weight change is a Hadamard product of two low-rank products,
//! `ΔW = (W1a·W1b) ⊙ (W2a·W2b) · α/r`, added to a linear layer's output as `x·ΔWᵀ`.

use super::registry::{self, Config, LinearMethod, Opt, Spec};
use crate::error::Result;
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use crate::ops;
use candle_core::{DType, Device, Tensor};

pub struct LoHa;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "r",
        ty: "integer",
        default: "8",
        doc: "rank of each of the two factors",
    },
    registry::LYCORIS[0],
    registry::LYCORIS[1],
    registry::LYCORIS[2],
    Opt {
        key: "init_weights",
        ty: "boolean",
        default: "true",
        doc: "start at ΔW = 0 (W2b zero); false: all four factors random",
    },
];

const SPEC: Spec = Spec {
    name: "loha",
    peft_type: "LOHA",
    doc: "Attaches LoHa adapters (low-rank Hadamard product, PEFT's LoHaConfig)",
    options: OPTIONS,
    config_extras: r#"{"layers_pattern": null, "layers_to_transform": null, "alpha_pattern": {}, "rank_pattern": {}, "exclude_modules": null, "use_effective_conv2d": false}"#,
    lua_names: &[],
    lua_values: &[],
};

impl LinearMethod for LoHa {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>> {
        registry::attention_qv(model_type)
    }
    fn peft_wraps_conv1d(&self) -> bool {
        // PEFT 0.21: "Target module of type Conv1D not supported"
        false
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        check_common(cfg)
    }
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        _shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>> {
        let (out, inp) = (lin.out_features(), lin.in_features());
        let r = registry::int(cfg, "r") as usize;
        crate::model::param::ensure_fits(path, &[&[out, r], &[r, inp], &[out, r], &[r, inp]])?;
        let dev = lin.weight.value().device().clone();
        let mut rng = super::lora::rng_for(seed, path);
        // PEFT: W1a, W1b, W2a kaiming-uniform (a = √5), W2b zero; without init_weights all four
        // random (W2b too)
        let w1a = registry::kaiming(&mut rng, out, r);
        let w1b = registry::kaiming(&mut rng, r, inp);
        let w2a = registry::kaiming(&mut rng, out, r);
        let w2b = if registry::flag(cfg, "init_weights") {
            vec![0f32; r * inp]
        } else {
            registry::kaiming(&mut rng, r, inp)
        };
        Ok(Box::new(LoHaAdapter {
            w1a: param(w1a, (out, r), &dev)?,
            w1b: param(w1b, (r, inp), &dev)?,
            w2a: param(w2a, (out, r), &dev)?,
            w2b: param(w2b, (r, inp), &dev)?,
            scale: registry::num(cfg, "alpha") / r as f64,
            rank_dropout: registry::num(cfg, "rank_dropout") as f32,
            module_dropout: registry::num(cfg, "module_dropout") as f32,
        }))
    }
}

/// `r` ≥ 1 and the dropouts probabilities: what LoHa and LoKr share.
pub(crate) fn check_common(cfg: &Config) -> Result<()> {
    registry::check_rank_and(cfg, &["rank_dropout", "module_dropout"])
}

pub(crate) fn param(v: Vec<f32>, shape: (usize, usize), dev: &Device) -> Result<Param> {
    Param::trainable(&Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(dev)?)
}

pub struct LoHaAdapter {
    w1a: Param,
    w1b: Param,
    w2a: Param,
    w2b: Param,
    scale: f64,
    rank_dropout: f32,
    module_dropout: f32,
}

/// PEFT's rank dropout: in training, each output row of ΔW kept with probability 1 − p, the kept
/// rows scaled by 1 / (fraction kept) when `rescale`.
pub(crate) fn rank_dropout(dw: Tensor, p: f32, rescale: bool, ctx: &Ctx) -> Result<Tensor> {
    if !ctx.train || p <= 0.0 {
        return Ok(dw);
    }
    let rows = dw.dim(0)?;
    let mut keep: Vec<f32> = ctx
        .uniform(rows)
        .into_iter()
        .map(|u| if u > p { 1.0 } else { 0.0 })
        .collect();
    if rescale {
        let mean = keep.iter().sum::<f32>() / rows as f32;
        if mean > 0.0 {
            keep.iter_mut().for_each(|k| *k /= mean);
        }
    }
    let m = Tensor::from_vec(keep, (rows, 1), &Device::Cpu)?.to_device(dw.device())?;
    Ok(dw.broadcast_mul(&m)?)
}

/// PEFT's module dropout: in training, the adapter is skipped with probability p.
pub(crate) fn skipped(p: f32, ctx: &Ctx) -> bool {
    ctx.train && p > 0.0 && ctx.uniform(1)[0] <= p
}

/// `x·ΔWᵀ` in f32, as `[…, out]`.
pub(crate) fn apply(x: &Tensor, dw: &Tensor) -> Result<Tensor> {
    Ok(ops::linear(&x.to_dtype(DType::F32)?, dw, None, false)?)
}

impl LinearAdapter for LoHaAdapter {
    fn delta(&self, x: &Tensor, _base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        if skipped(self.module_dropout, ctx) {
            return Ok(None);
        }
        let dw = rank_dropout(self.delta_weight(lin, ctx)?, self.rank_dropout, true, ctx)?;
        apply(x, &dw).map(Some)
    }

    fn delta_weight(&self, _lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        let a = self.w1a.get(ctx).matmul(&self.w1b.get(ctx))?;
        let b = self.w2a.get(ctx).matmul(&self.w2b.get(ctx))?;
        Ok((a.mul(&b)? * self.scale)?)
    }

    fn params(&self) -> Vec<(String, Param)> {
        [
            ("hada_w1_a", &self.w1a),
            ("hada_w1_b", &self.w1b),
            ("hada_w2_a", &self.w2a),
            ("hada_w2_b", &self.w2b),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p.clone()))
        .collect()
    }
}
