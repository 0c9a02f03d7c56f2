//! LoRA as HF PEFT computes it: `y = base(x) + s·B(A(dropout(x)))`, `s = α/r` (or `α/√r` with
//! rsLoRA), DoRA's magnitude rescaling, LoRA on embeddings, initialisations and merging.

use crate::error::{Error, Result};
use crate::model::layers::{Embedding, EmbeddingAdapter, Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use crate::ops;
use candle_core::{DType, Device, Tensor, D};

/// How the A/B matrices start (PEFT's `init_lora_weights`).
#[derive(Clone, Debug, PartialEq)]
pub enum LoraInit {
    /// A ~ U(±1/√in) (kaiming-uniform, a=√5), B = 0
    Kaiming,
    /// A ~ N(0, 1/r), B = 0
    Gaussian,
    /// principal singular vectors of W; W keeps the residual
    Pissa,
    /// the values are loaded right after (no init work)
    Loaded,
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
    pub fn init(lin: &mut Linear, o: &LoraOpts, seed: u64, path: &str, ctx: &Ctx) -> Result<Lora> {
        let (fan_in, fan_out, r) = (lin.in_features(), lin.out_features(), o.r);
        let dev = lin.weight.value().device().clone();
        let dt = DType::F32;
        let mut rng = rng_for(seed, path);
        let (a, b) = match o.init {
            LoraInit::Kaiming | LoraInit::Loaded => (
                uniform(&mut rng, r * fan_in, 1.0 / (fan_in as f32).sqrt()),
                vec![0f32; fan_out * r],
            ),
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
    fn init_pissa(lin: &mut Linear, o: &LoraOpts, path: &str, ctx: &Ctx) -> Result<Lora> {
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
        // PEFT: A = 0, B ~ N(0, 1) (gaussian: B ~ N(0, 1) too)
        let b = normal(&mut rng, dim * o.r, 1.0);
        if o.dora {
            return Err(Error::msg(format!(
                "{path}: DoRA on an embedding is not supported"
            )));
        }
        Ok(LoraEmbedding {
            a: param(vec![0f32; o.r * vocab], (o.r, vocab), &dev, DType::F32)?,
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
