//! IA3 (PEFT's `IA3Config`): a learned vector scaling a linear layer's output (`(Wx + b) ⊙ l`,
//! `ia3_l` `[out, 1]`) or, for feed-forward modules, its input (`W(x ⊙ l) + b`, `ia3_l`
//! `[1, in]`).

use super::registry::{self, Config, LinearMethod, Opt, Spec};
use crate::error::Result;
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use candle_core::{DType, Tensor};

pub struct Ia3Method;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "feedforward_modules",
        ty: "modules",
        default: "[]",
        doc: "which targets scale their input instead of their output (default: PEFT's for the \
              architecture)",
    },
    Opt {
        key: "init_ia3_weights",
        ty: "boolean",
        default: "true",
        doc: "start at the identity (ones); false: random normal",
    },
];

const SPEC: Spec = Spec {
    name: "ia3",
    peft_type: "IA3",
    doc: "Attaches IA3 scaling vectors",
    options: OPTIONS,
    config_extras: r#"{"exclude_modules": null, "fan_in_fan_out": false}"#,
    lua_names: &[("feedforward", "feedforward_modules")],
    lua_values: &[],
};

impl LinearMethod for Ia3Method {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    /// PEFT's `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>> {
        Some(match model_type {
            "llama" | "mistral" | "qwen2" => vec!["k_proj", "v_proj", "down_proj"],
            "gpt2" => vec!["c_attn", "mlp.c_proj"],
            "bert" => vec!["key", "value", "output.dense"],
            _ => return None,
        })
    }
    /// PEFT's `TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING`
    fn default_modules(&self, _key: &str, model_type: &str) -> Option<Vec<&'static str>> {
        Some(match model_type {
            "llama" | "mistral" | "qwen2" => vec!["down_proj"],
            "gpt2" => vec!["mlp.c_proj"],
            "bert" => vec!["output.dense"],
            _ => return None,
        })
    }
    fn suggested_lr(&self) -> &'static str {
        "1e-2"
    }
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        _shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>> {
        let feedforward = cfg
            .get("feedforward_modules")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(path)));
        let a = Ia3::init(lin, feedforward)?;
        if !registry::flag(cfg, "init_ia3_weights") {
            // PEFT: `torch.randn` (its global generator: no file depends on the draw)
            let n = a.l.elem_count();
            let v = crate::rng::normal(&mut crate::rng::rng_for(seed, path), n, 1.0);
            let t = Tensor::from_vec(v, a.l.dims(), &candle_core::Device::Cpu)?;
            a.l.set(&t.to_device(lin.weight.value().device())?)?;
        }
        Ok(Box::new(a))
    }
}

pub struct Ia3 {
    pub l: Param,
    pub feedforward: bool,
}

impl Ia3 {
    /// Ones: the identity (PEFT's `init_ia3_weights=True`).
    pub fn init(lin: &Linear, feedforward: bool) -> Result<Self> {
        let dev = lin.weight.value().device().clone();
        let shape = if feedforward {
            (1, lin.in_features())
        } else {
            (lin.out_features(), 1)
        };
        Ok(Ia3 {
            l: Param::trainable(&Tensor::ones(shape, DType::F32, &dev)?)?,
            feedforward,
        })
    }

    fn vector(&self, ctx: &Ctx, dt: DType) -> Result<Tensor> {
        Ok(self.l.get(ctx).flatten_all()?.to_dtype(dt)?)
    }
}

impl LinearAdapter for Ia3 {
    fn scale_input(&self, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        if !self.feedforward {
            return Ok(None);
        }
        Ok(Some(crate::ops::scale_last(
            x,
            &self.l.get(ctx).flatten_all()?,
        )?))
    }

    fn scale_output(&self, y: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        if self.feedforward {
            return Ok(None);
        }
        Ok(Some(crate::ops::scale_last(
            y,
            &self.l.get(ctx).flatten_all()?,
        )?))
    }

    fn delta(
        &self,
        _x: &Tensor,
        _base: &Tensor,
        _lin: &Linear,
        _ctx: &Ctx,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn merge_order(&self) -> u8 {
        0
    }

    /// Scaling has no additive weight change (merging scales W itself).
    fn delta_weight(&self, lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        let w = lin.weight_out_in(ctx)?.to_dtype(DType::F32)?;
        let merged = if self.feedforward {
            w.broadcast_mul(&self.vector(ctx, DType::F32)?.unsqueeze(0)?)?
        } else {
            w.broadcast_mul(&self.vector(ctx, DType::F32)?.unsqueeze(1)?)?
        };
        Ok((merged - w)?)
    }

    /// PEFT's merge: rows (output) or columns (feed-forward input) of W scaled; the bias is scaled
    /// only for output scaling.
    fn merge_into(&self, _made_for: &Linear, lin: &Linear, ctx: &Ctx) -> Result<()> {
        let w = lin.weight_out_in(ctx)?;
        let wdt = w.dtype();
        let l = self.vector(ctx, DType::F32)?;
        let wf = w.to_dtype(DType::F32)?;
        let merged = if self.feedforward {
            wf.broadcast_mul(&l.unsqueeze(0)?)?
        } else {
            wf.broadcast_mul(&l.unsqueeze(1)?)?
        };
        if !self.feedforward {
            if let Some(b) = &lin.bias {
                let nb = (b.value().to_dtype(DType::F32)? * &l)?.to_dtype(b.dtype())?;
                b.set(&nb)?;
            }
        }
        let merged = merged.to_dtype(wdt)?;
        lin.weight.set(&if lin.transposed {
            merged.t()?.contiguous()?
        } else {
            merged
        })
    }

    fn params(&self) -> Vec<(String, Param)> {
        vec![("ia3_l".into(), self.l.clone())]
    }
}
