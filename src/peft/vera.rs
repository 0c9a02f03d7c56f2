//! VeRA (PEFT's `VeraConfig`): frozen random projections `A` `[r, in_max]` and `B`
//! `[out_max, r]` shared by every adapted layer, and per layer two trained vectors:
//! `y = base(x) + λ_b ⊙ (B[:out] · (λ_d ⊙ (A[:, :in] · dropout(x))))`. The projections come
//! from PyTorch's CPU generator seeded with `projection_prng_key`, drawn exactly as PyTorch draws
//! them, so a file saved without them (`save_projection = false`) reads back the same.

use super::loha::skipped;
use super::registry::{self, Config, LinearMethod, Opt, Spec};
use crate::error::{Error, Result};
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use crate::ops;
use candle_core::{DType, Device, Tensor};

pub struct Vera;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "r",
        ty: "integer",
        default: "256",
        doc: "rank of the shared projections",
    },
    Opt {
        key: "projection_prng_key",
        ty: "integer",
        default: "0",
        doc: "seed of PyTorch's generator that draws the projections",
    },
    Opt {
        key: "save_projection",
        ty: "boolean",
        default: "true",
        doc: "save the projections in the adapter file (else they are drawn again from the key)",
    },
    Opt {
        key: "vera_dropout",
        ty: "number",
        default: "0.0",
        doc: "dropout on the layer's input in training",
    },
    Opt {
        key: "d_initial",
        ty: "number",
        default: "0.1",
        doc: "initial value of every λ_d",
    },
    Opt {
        key: "init_weights",
        ty: "boolean",
        default: "true",
        doc: "λ_b = 0, λ_d = d_initial (the identity); false: λ_b = 1, λ_d random",
    },
];

/// PyTorch's `torch.Generator().manual_seed(key)` and `Tensor.uniform_(-b, b)` on the CPU for
/// float32: mt19937 seeded with the key's low 32 bits, one 32-bit draw per element in memory
/// order, its low 24 bits as `x ∈ [0, 1)`, `x·(to − from) + from` in double, then rounded.
pub struct TorchUniform(rand_mt::Mt);

impl TorchUniform {
    pub fn new(key: i64) -> Self {
        TorchUniform(rand_mt::Mt::new((key as u64 & 0xffff_ffff) as u32))
    }

    pub fn fill(&mut self, n: usize, from: f64, to: f64) -> Vec<f32> {
        let (from, to) = (from as f32, to as f32);
        let span = (to - from) as f64;
        (0..n)
            .map(|_| {
                let x = (self.0.next_u32() & ((1 << 24) - 1)) as f64 / (1u64 << 24) as f64;
                (x * span + from as f64) as f32
            })
            .collect()
    }

    /// PEFT's `_kaiming_init`: U(±√3·√2/√fan_in), fan_in the number of columns.
    pub fn kaiming(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let bound = 3f64.sqrt() * (2f64.sqrt() / (cols as f64).sqrt());
        self.fill(rows * cols, -bound, bound)
    }
}

const SPEC: Spec = Spec {
    name: "vera",
    peft_type: "VERA",
    doc: "Attaches VeRA (shared random projections, trained scaling vectors; PEFT's VeraConfig)",
    options: OPTIONS,
    config_extras: r#"{"layers_pattern": null, "layers_to_transform": null, "bias": "none", "fan_in_fan_out": false}"#,
    lua_names: &[],
    lua_values: &[],
};

impl LinearMethod for Vera {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>> {
        registry::attention_qv(model_type)
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        if registry::int(cfg, "r") < 1 {
            return Err(Error::msg("r must be at least 1"));
        }
        let p = registry::num(cfg, "vera_dropout");
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!(
                "vera_dropout must be in [0, 1), got {p}"
            )));
        }
        Ok(())
    }
    fn shared(
        &self,
        cfg: &Config,
        shapes: &[(usize, usize)],
        device: &Device,
    ) -> Result<Vec<(String, Tensor)>> {
        let r = registry::int(cfg, "r") as usize;
        let out = shapes.iter().map(|s| s.0).max().unwrap_or(0);
        let inp = shapes.iter().map(|s| s.1).max().unwrap_or(0);
        crate::model::param::ensure_fits("vera_A, vera_B", &[&[r, inp], &[out, r]])?;
        let mut g = TorchUniform::new(registry::int(cfg, "projection_prng_key"));
        let a = g.kaiming(r, inp);
        let b = g.kaiming(out, r);
        let t = |v: Vec<f32>, shape: (usize, usize)| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
        };
        Ok(vec![
            ("vera_A".into(), t(a, (r, inp))?),
            ("vera_B".into(), t(b, (out, r))?),
        ])
    }
    fn suggested_lr(&self) -> &'static str {
        // VeRA trains only scaling vectors: its paper uses rates ten times LoRA's
        "1e-2"
    }
    fn saves_shared(&self, cfg: &Config) -> bool {
        registry::flag(cfg, "save_projection")
    }
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>> {
        let find = |n: &str| {
            shared
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| Error::msg(format!("{path}: VeRA without its projection {n}")))
        };
        let (a, b) = (find("vera_A")?, find("vera_B")?);
        let r = registry::int(cfg, "r") as usize;
        let out = lin.out_features();
        let dev = lin.weight.value().device().clone();
        let (lb, ld) = if registry::flag(cfg, "init_weights") {
            (
                vec![0f32; out],
                vec![registry::num(cfg, "d_initial") as f32; r],
            )
        } else {
            let mut rng = super::lora::rng_for(seed, path);
            (vec![1f32; out], super::lora::normal(&mut rng, r, 1.0))
        };
        let vec = |v: Vec<f32>| -> Result<Param> {
            let n = v.len();
            Param::trainable(&Tensor::from_vec(v, n, &Device::Cpu)?.to_device(&dev)?)
        };
        Ok(Box::new(VeraAdapter {
            a,
            b,
            lambda_b: vec(lb)?,
            lambda_d: vec(ld)?,
            dropout: registry::num(cfg, "vera_dropout") as f32,
        }))
    }
}

pub struct VeraAdapter {
    a: Param,
    b: Param,
    lambda_b: Param,
    lambda_d: Param,
    dropout: f32,
}

impl VeraAdapter {
    /// `A[:, :in]` and `B[:out]`: this layer's part of the shared projections.
    fn sliced(&self, lin: &Linear, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let a = self.a.get(ctx).narrow(1, 0, lin.in_features())?;
        let b = self.b.get(ctx).narrow(0, 0, lin.out_features())?;
        Ok((a.contiguous()?, b.contiguous()?))
    }
}

impl LinearAdapter for VeraAdapter {
    fn delta(&self, x: &Tensor, _base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        let _ = skipped; // VeRA has no module dropout
        let (a, b) = self.sliced(lin, ctx)?;
        let x = ctx.dropout(x, self.dropout)?.to_dtype(DType::F32)?;
        let h = ops::linear(&x, &a, None, false)?;
        let h = ops::scale_last(&h, &self.lambda_d.get(ctx))?;
        let y = ops::linear(&h, &b, None, false)?;
        Ok(Some(ops::scale_last(&y, &self.lambda_b.get(ctx))?))
    }

    fn delta_weight(&self, lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        let (a, b) = self.sliced(lin, ctx)?;
        let b = b.broadcast_mul(&self.lambda_b.get(ctx).unsqueeze(1)?)?;
        let a = a.broadcast_mul(&self.lambda_d.get(ctx).unsqueeze(1)?)?;
        Ok(b.matmul(&a)?)
    }

    fn params(&self) -> Vec<(String, Param)> {
        vec![
            ("vera_lambda_b".into(), self.lambda_b.clone()),
            ("vera_lambda_d".into(), self.lambda_d.clone()),
        ]
    }
}
