//! LoRA (PEFT's `LoraConfig`) as HF PEFT computes it: `y = base(x) + s·B(A(dropout(x)))`,
//! `s = α/r` (or `α/√r` with rsLoRA), DoRA's magnitude rescaling, LoRA on embeddings,
//! initialisations and merging.

use super::registry::{self, Config, LinearMethod, Opt, Spec};
use crate::error::{Error, Result};
use crate::model::layers::{Embedding, EmbeddingAdapter, Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use crate::ops;
use candle_core::{DType, Device, Tensor, D};

pub struct LoraMethod;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "r",
        ty: "integer",
        default: "8",
        doc: "rank",
    },
    Opt {
        key: "lora_alpha",
        ty: "number",
        default: "8",
        doc: "scaling numerator: the update is alpha/r · BA",
    },
    Opt {
        key: "lora_dropout",
        ty: "number",
        default: "0.0",
        doc: "dropout on the adapter's input",
    },
    Opt {
        key: "use_rslora",
        ty: "boolean",
        default: "false",
        doc: "scale by alpha/sqrt(r)",
    },
    Opt {
        key: "use_dora",
        ty: "boolean",
        default: "false",
        doc: "weight-decomposed LoRA (DoRA)",
    },
    Opt {
        key: "init_lora_weights",
        ty: "\"kaiming\"|\"gaussian\"|\"pissa\"|boolean",
        default: "true",
        doc: "initialisation: kaiming-uniform A and B = 0 (kaiming, true), A ~ N(0, 1/r) \
              (gaussian), the principal singular vectors of W, which keeps the residual (pissa); \
              false: B random too (not the identity)",
    },
    Opt {
        key: "lora_bias",
        ty: "boolean",
        default: "false",
        doc: "train a bias on B",
    },
    Opt {
        key: "ensure_weight_tying",
        ty: "boolean",
        default: "false",
        doc: "tied modules share one modules_to_save copy",
    },
];

const SPEC: Spec = Spec {
    name: "lora",
    peft_type: "LORA",
    doc: "Attaches LoRA (or DoRA) adapters",
    options: OPTIONS,
    config_extras: r#"{
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
        "bias": "none", "corda_config": null, "eva_config": null, "exclude_modules": null,
        "fan_in_fan_out": false, "kasa_config": null, "layer_replication": null,
        "layers_pattern": null, "layers_to_transform": null, "loftq_config": {},
        "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core",
        "monteclora_config": null, "qalora_group_size": 16, "rank_pattern": {},
        "target_parameters": null, "trainable_token_indices": null, "use_bdlora": null,
        "use_qalora": false, "velora_config": null
    }"#,
    lua_names: &[
        ("alpha", "lora_alpha"),
        ("dropout", "lora_dropout"),
        ("rslora", "use_rslora"),
        ("dora", "use_dora"),
        ("init", "init_lora_weights"),
    ],
    lua_values: &[
        ("init_lora_weights", "kaiming", "true"),
        ("init_lora_weights", "default", "true"),
    ],
};

impl LinearMethod for LoraMethod {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    /// PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>> {
        Some(match model_type {
            "llama" | "mistral" | "qwen2" => vec!["q_proj", "v_proj"],
            "gpt2" => vec!["c_attn"],
            "bert" => vec!["query", "value"],
            _ => return None,
        })
    }
    fn kind(&self, cfg: &Config) -> &'static str {
        if registry::flag(cfg, "use_dora") {
            "dora"
        } else {
            "lora"
        }
    }
    fn targets_embeddings(&self) -> bool {
        true
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        registry::check_rank_and(cfg, &["lora_dropout"])?;
        LoraOpts::from_config(cfg).map(|_| ())
    }
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        _shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>> {
        let o = LoraOpts::from_config(cfg)?;
        Ok(Box::new(Lora::init(lin, &o, seed, path, &Ctx::base())?))
    }
    fn attach_embedding(
        &self,
        cfg: &Config,
        emb: &Embedding,
        path: &str,
        seed: u64,
    ) -> Result<Box<dyn EmbeddingAdapter>> {
        let o = LoraOpts::from_config(cfg)?;
        Ok(Box::new(LoraEmbedding::init(emb, &o, seed, path)?))
    }
    /// PEFT saves DoRA's magnitude without its `.weight` (an older layout it keeps).
    fn saved_name(&self, pname: &str) -> String {
        match pname.strip_suffix(".lora_magnitude_vector.weight") {
            Some(s) => format!("{s}.lora_magnitude_vector"),
            None => pname.to_string(),
        }
    }
}

/// How the A/B matrices start (PEFT's `init_lora_weights`).
#[derive(Clone, Debug, PartialEq)]
pub enum LoraInit {
    /// A ~ U(±1/√in) (kaiming-uniform, a=√5), B = 0
    Kaiming,
    /// A ~ N(0, 1/r), B = 0
    Gaussian,
    /// principal singular vectors of W; W keeps the residual
    Pissa,
    /// PEFT's `init_lora_weights=False`: A and B as `nn.Linear` draws them (B ≠ 0)
    Random,
}

#[derive(Clone, Debug)]
pub struct LoraOpts {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub rslora: bool,
    pub dora: bool,
    pub lora_bias: bool,
    pub init: LoraInit,
}

impl LoraOpts {
    /// The typed settings of a complete `LoraConfig` (see `registry::config`).
    pub fn from_config(cfg: &Config) -> Result<LoraOpts> {
        let init = match cfg.get("init_lora_weights") {
            Some(serde_json::Value::Bool(true)) | None => LoraInit::Kaiming,
            Some(serde_json::Value::Bool(false)) => LoraInit::Random,
            // EVA starts as plain LoRA (B = 0) and is initialised from data afterwards
            Some(serde_json::Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            Some(serde_json::Value::String(s)) if s == "eva" => LoraInit::Kaiming,
            Some(serde_json::Value::String(s))
                if s == "pissa"
                    || s.strip_prefix("pissa_niter_")
                        .is_some_and(|n| n.parse::<u32>().is_ok()) =>
            {
                LoraInit::Pissa
            }
            Some(other) => {
                return Err(Error::msg(format!(
                    "init_lora_weights = {other} is not supported (true, false, \"gaussian\", \
                     \"pissa\", \"pissa_niter_N\")"
                )))
            }
        };
        Ok(LoraOpts {
            r: registry::int(cfg, "r").max(1) as usize,
            alpha: registry::num(cfg, "lora_alpha"),
            dropout: registry::num(cfg, "lora_dropout") as f32,
            rslora: registry::flag(cfg, "use_rslora"),
            dora: registry::flag(cfg, "use_dora"),
            lora_bias: registry::flag(cfg, "lora_bias"),
            init,
        })
    }

    /// The complete `LoraConfig` of these settings (`registry::config` checks it).
    pub fn config(&self) -> Result<Config> {
        let init = match self.init {
            LoraInit::Kaiming => serde_json::json!(true),
            LoraInit::Random => serde_json::json!(false),
            LoraInit::Gaussian => serde_json::json!("gaussian"),
            LoraInit::Pissa => serde_json::json!("pissa"),
        };
        let given = serde_json::json!({
            "r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
            "use_rslora": self.rslora, "use_dora": self.dora, "lora_bias": self.lora_bias,
            "init_lora_weights": init,
        });
        registry::config(&LoraMethod, given.as_object().unwrap(), "lora")
    }

    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

pub struct Lora {
    /// `lora_A.weight` `[r, in]`
    pub a: Param,
    /// `lora_B.weight` `[out, r]`
    pub b: Param,
    /// `lora_B.bias` `[out]` (`lora_bias`)
    pub bias: Option<Param>,
    /// DoRA `lora_magnitude_vector` `[out]`
    pub magnitude: Option<Param>,
    pub scale: f64,
    pub dropout: f32,
}

pub(crate) use crate::rng::{normal, rng_for, uniform};

fn param(v: Vec<f32>, shape: (usize, usize), dev: &Device, dtype: DType) -> Result<Param> {
    let t = Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    Param::trainable(&t)
}

impl Lora {
    /// A new adapter for `lin` (adapter tensors are f32, as PEFT's autocast keeps them).
    pub fn init(lin: &Linear, o: &LoraOpts, seed: u64, path: &str, ctx: &Ctx) -> Result<Lora> {
        let (fan_in, fan_out, r) = (lin.in_features(), lin.out_features(), o.r);
        crate::model::param::ensure_fits(path, &[&[r, fan_in], &[fan_out, r]])?;
        let dev = lin.weight.value().device().clone();
        let dt = DType::F32;
        let mut rng = rng_for(seed, path);
        let (a, b) = match o.init {
            LoraInit::Kaiming => (
                uniform(&mut rng, r * fan_in, 1.0 / (fan_in as f32).sqrt()),
                vec![0f32; fan_out * r],
            ),
            LoraInit::Random => {
                let a = uniform(&mut rng, r * fan_in, 1.0 / (fan_in as f32).sqrt());
                (a, uniform(&mut rng, fan_out * r, 1.0 / (r as f32).sqrt()))
            }
            LoraInit::Gaussian => (
                normal(&mut rng, r * fan_in, 1.0 / r as f32),
                vec![0f32; fan_out * r],
            ),
            LoraInit::Pissa => return Self::init_pissa(lin, o, path, ctx),
        };
        let bias = if o.lora_bias {
            Some(Param::trainable(&Tensor::zeros(fan_out, dt, &dev)?)?)
        } else {
            None
        };
        let mut l = Lora {
            a: param(a, (r, fan_in), &dev, dt)?,
            b: param(b, (fan_out, r), &dev, dt)?,
            bias,
            magnitude: None,
            scale: o.scale(),
            dropout: o.dropout,
        };
        if o.dora {
            l.magnitude = Some(Param::trainable(&l.weight_norm(lin, ctx)?)?);
        }
        Ok(l)
    }

    /// PiSSA: A = √(S/s)·Vᵀ, B = U·√(S/s) of the top-r singular triplets; W keeps W − s·BA.
    fn init_pissa(lin: &Linear, o: &LoraOpts, path: &str, ctx: &Ctx) -> Result<Lora> {
        let w = lin.weight_out_in(ctx)?.to_dtype(DType::F32)?;
        let (out, inp) = w.dims2()?;
        let r = o.r.min(out).min(inp);
        let s = o.scale();
        let (u, sv, vt) = crate::peft::svd::top_r(&w.to_device(&Device::Cpu)?, r)
            .map_err(|e| Error::msg(format!("{path}: PiSSA init: {e}")))?;
        let dev = w.device().clone();
        let mut a = vec![0f32; r * inp];
        let mut b = vec![0f32; out * r];
        for k in 0..r {
            let f = (sv[k] / s as f32).sqrt();
            for j in 0..inp {
                a[k * inp + j] = vt[k * inp + j] * f;
            }
            for i in 0..out {
                b[i * r + k] = u[i * r + k] * f;
            }
        }
        let a = param(a, (r, inp), &dev, DType::F32)?;
        let b = param(b, (out, r), &dev, DType::F32)?;
        let delta = (b.value().matmul(&a.value())? * s)?;
        let wdt = lin.weight.dtype();
        let residual = (w - delta)?.to_dtype(wdt)?;
        lin.weight.set(&if lin.transposed {
            residual.t()?.contiguous()?
        } else {
            residual
        })?;
        let mut l = Lora {
            a,
            b,
            bias: None,
            magnitude: None,
            scale: s,
            dropout: o.dropout,
        };
        if o.dora {
            l.magnitude = Some(Param::trainable(&l.weight_norm(lin, ctx)?)?);
        }
        Ok(l)
    }

    /// `s·B·A` as `[out, in]`.
    pub fn delta_weight(&self, ctx: &Ctx) -> Result<Tensor> {
        let a = self.a.get(ctx);
        let b = self.b.get(ctx);
        Ok((b.matmul(&a)? * self.scale)?)
    }

    /// ‖W + s·BA‖ per output row (DoRA's norm), without gradient.
    fn weight_norm(&self, lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        let w = lin.weight_out_in(ctx)?.detach().to_dtype(DType::F32)?;
        let full = (w + self.delta_weight(ctx)?.detach())?;
        Ok(full.sqr()?.sum(D::Minus1)?.sqrt()?)
    }

    /// This adapter's contribution to `lin`'s output. `base` is the base layer's output.
    fn contribution(&self, x: &Tensor, base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        let xd = ctx.dropout(x, self.dropout)?;
        let xa = xd.to_dtype(DType::F32)?;
        let h = ops::linear(&xa, &self.a.get(ctx), None, false)?;
        let bias = self.bias.as_ref().map(|b| b.get(ctx));
        let d = ops::linear(&h, &self.b.get(ctx), bias.as_ref(), false)?;
        let Some(m) = &self.magnitude else {
            return (d * self.scale)?.to_dtype(x.dtype()).map_err(Into::into);
        };
        // DoRA: (g − 1)·W x + g·s·B A x, with g = m / ‖W + sBA‖ (norm detached)
        let g = m.get(ctx).broadcast_div(&self.weight_norm(lin, ctx)?)?;
        let wx = if self.dropout > 0.0 && ctx.train {
            ops::linear(&xd, &lin.weight.get(ctx), None, lin.transposed)?
        } else {
            match &lin.bias {
                Some(b) => base.broadcast_sub(&b.get(ctx))?,
                None => base.clone(),
            }
        };
        let wx = wx.to_dtype(DType::F32)?;
        let out = wx
            .broadcast_mul(&(&g - 1.0)?)?
            .add(&(d * self.scale)?.broadcast_mul(&g)?)?;
        Ok(out.to_dtype(x.dtype())?)
    }

    /// Folds this adapter into `lin`'s weight (PEFT's merge, DoRA included).
    fn fold_into(&self, lin: &Linear, ctx: &Ctx) -> Result<()> {
        let w = lin.weight_out_in(ctx)?;
        let wdt = w.dtype();
        let wf = w.to_dtype(DType::F32)?;
        let delta = self.delta_weight(ctx)?;
        let merged = match &self.magnitude {
            None => (wf + delta)?,
            Some(m) => {
                let g = m.get(ctx).broadcast_div(&self.weight_norm(lin, ctx)?)?;
                (wf + delta)?.broadcast_mul(&g.unsqueeze(1)?)?
            }
        };
        match (&self.bias, &lin.bias) {
            (Some(lb), Some(b)) => {
                let nb = (b.value().to_dtype(DType::F32)? + (lb.get(ctx) * self.scale)?)?;
                b.set(&nb)?;
            }
            (Some(_), None) => {
                return Err(Error::msg(
                    "cannot merge a LoRA bias (lora_bias) into a layer without a bias",
                ));
            }
            _ => {}
        }
        let merged = merged.to_dtype(wdt)?;
        lin.weight.set(&if lin.transposed {
            merged.t()?.contiguous()?
        } else {
            merged
        })
    }

    /// Plain LoRA (no DoRA, LoRA bias or live dropout): what one fused op computes.
    fn plain(&self, ctx: &Ctx) -> bool {
        self.magnitude.is_none() && self.bias.is_none() && (self.dropout == 0.0 || !ctx.train)
    }
}

impl LinearAdapter for Lora {
    fn delta(&self, x: &Tensor, base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        self.contribution(x, base, lin, ctx).map(Some)
    }

    fn fused(&self, x: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        // one op with its own backward (fused on the CPU, the device path elsewhere) keeps only
        // the input alive, where the composed branch keeps an f32 copy of it
        if !self.plain(ctx) || ops::composed_only() {
            return Ok(None);
        }
        let b = lin.bias.as_ref().map(|b| b.get(ctx));
        Ok(Some(ops::lora_linear(
            x,
            &lin.weight.get(ctx),
            b.as_ref(),
            &self.a.get(ctx),
            &self.b.get(ctx),
            self.scale,
            lin.transposed,
        )?))
    }

    fn merge_into(&self, _made_for: &Linear, into: &Linear, ctx: &Ctx) -> Result<()> {
        self.fold_into(into, ctx)
    }

    fn merge_order(&self) -> u8 {
        1
    }

    fn delta_weight(&self, _lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        Lora::delta_weight(self, ctx)
    }

    /// `(suffix, param)` with PEFT's parameter names (adapter name removed).
    fn params(&self) -> Vec<(String, Param)> {
        let mut v = vec![
            ("lora_A.weight".to_string(), self.a.clone()),
            ("lora_B.weight".to_string(), self.b.clone()),
        ];
        if let Some(b) = &self.bias {
            v.push(("lora_B.bias".into(), b.clone()));
        }
        if let Some(m) = &self.magnitude {
            v.push(("lora_magnitude_vector.weight".into(), m.clone()));
        }
        v
    }
}

/// LoRA on an embedding: `E[x] + s·(Aᵀ[x]·Bᵀ)`, A `[r, vocab]`, B `[dim, r]`.
pub struct LoraEmbedding {
    pub a: Param,
    pub b: Param,
    pub scale: f64,
}

impl LoraEmbedding {
    pub fn init(emb: &Embedding, o: &LoraOpts, seed: u64, path: &str) -> Result<Self> {
        let d = emb.weight.dims();
        let (vocab, dim) = (d[0], d[1]);
        let dev = emb.weight.value().device().clone();
        let mut rng = rng_for(seed, path);
        // PEFT: A = 0, B ~ N(0, 1) (gaussian and PiSSA too: PEFT decomposes only linear
        // weights); init_lora_weights=False keeps both as `torch.randn` draws them
        let a = match o.init {
            LoraInit::Random => normal(&mut rng, o.r * vocab, 1.0),
            _ => vec![0f32; o.r * vocab],
        };
        let b = normal(&mut rng, dim * o.r, 1.0);
        if o.dora {
            return Err(Error::msg(format!(
                "{path}: DoRA on an embedding is not supported"
            )));
        }
        Ok(LoraEmbedding {
            a: param(a, (o.r, vocab), &dev, DType::F32)?,
            b: param(b, (dim, o.r), &dev, DType::F32)?,
            scale: o.scale(),
        })
    }
}

impl EmbeddingAdapter for LoraEmbedding {
    fn add_to(&self, y: Tensor, flat_ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let at = self.a.get(ctx).t()?.contiguous()?;
        let h = at.index_select(flat_ids, 0)?;
        let d = (ops::linear(&h, &self.b.get(ctx), None, false)? * self.scale)?;
        Ok(y.add(&d.to_dtype(y.dtype())?)?)
    }

    fn merge_into(&self, emb: &Embedding, ctx: &Ctx) -> Result<()> {
        // [vocab, dim] = (B·A)ᵀ·s
        let delta = (self.b.get(ctx).matmul(&self.a.get(ctx))?.t()? * self.scale)?;
        let w = emb.weight.value();
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        emb.weight.set(&merged)
    }

    fn params(&self) -> Vec<(String, Param)> {
        vec![
            ("lora_embedding_A".into(), self.a.clone()),
            ("lora_embedding_B".into(), self.b.clone()),
        ]
    }
}
