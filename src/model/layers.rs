//! The injectable layers every architecture is built from: `Linear` (LoRA/DoRA/IA3 slots, and
//! `LinearAdapter`s, the place any other method acts on a linear's output), `Embedding` (LoRA
//! slot) and `Norm`. Their paths and parameter names are HF's.

use super::{Ctx, Param};
use crate::error::Result;
use crate::ops;
use crate::peft::lora::{Lora, LoraEmbedding};
use candle_core::{Tensor, D};

/// How a method acts on a linear layer: by scaling its input or its output (IA3), or by adding
/// to its output (LoHa, LoKr, VeRA). `peft/` implements it; the layer only calls it: inputs
/// scaled, the base layer, outputs scaled, then every addition.
pub trait LinearAdapter: Send + Sync {
    /// The input the base layer sees instead of `x`, for a method that scales it.
    fn scale_input(&self, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        let _ = (x, ctx);
        Ok(None)
    }
    /// The base output `y` rescaled, for a method that scales it.
    fn scale_output(&self, y: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        let _ = (y, ctx);
        Ok(None)
    }
    /// The addition to the layer's output for input `x` (`[…, in]` → `[…, out]`).
    fn delta(&self, x: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>>;
    /// Folds the adapter into `into`'s weights (`lin` is the layer it was made for): by default
    /// `W += delta_weight`. Scaling methods fold before additive ones, as the forward applies them.
    fn merge_into(&self, lin: &Linear, into: &Linear, ctx: &Ctx) -> Result<()> {
        let w = into.weight_out_in(ctx)?;
        let dw = self
            .delta_weight(lin, ctx)?
            .to_dtype(candle_core::DType::F32)?;
        let merged = (w.to_dtype(candle_core::DType::F32)? + dw)?.to_dtype(w.dtype())?;
        into.weight.set(&if into.transposed {
            merged.t()?.contiguous()?
        } else {
            merged
        })
    }
    /// Whether it scales (merged first).
    fn scales(&self) -> bool {
        false
    }
    /// The change of the weight, `[out, in]`, that merging folds in.
    fn delta_weight(&self, lin: &Linear, ctx: &Ctx) -> Result<Tensor>;
    /// `(suffix, param)` under PEFT's parameter names, adapter name removed.
    fn params(&self) -> Vec<(String, Param)>;
}

/// `nn.Linear`, or HF's `Conv1D` when `transposed` (weight stored `[in, out]`).
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub transposed: bool,
    pub lora: Vec<(String, Lora)>,
    /// every other method's adapters (IA3, the registry's), by adapter name
    pub adapters: Vec<(String, Box<dyn LinearAdapter>)>,
}

impl Linear {
    pub fn new(weight: Param, bias: Option<Param>, transposed: bool) -> Self {
        Linear {
            weight,
            bias,
            transposed,
            lora: Vec::new(),
            adapters: Vec::new(),
        }
    }

    pub fn in_features(&self) -> usize {
        let d = self.weight.dims();
        if self.transposed {
            d[0]
        } else {
            d[1]
        }
    }

    pub fn out_features(&self) -> usize {
        let d = self.weight.dims();
        if self.transposed {
            d[1]
        } else {
            d[0]
        }
    }

    /// The weight as `[out, in]`, whatever the storage layout.
    pub fn weight_out_in(&self, ctx: &Ctx) -> Result<Tensor> {
        let w = self.weight.get(ctx);
        Ok(if self.transposed { w.t()? } else { w })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let w = self.weight.get(ctx);
        let b = self.bias.as_ref().map(|b| b.get(ctx));
        if let Some(l) = self.single_plain_lora(ctx) {
            // one op with its own backward (fused on the CPU, the device path elsewhere) keeps
            // only the input alive, where the composed branch keeps an f32 copy of it
            if !ops::composed_only() {
                let (a, bm) = (l.a.get(ctx), l.b.get(ctx));
                return Ok(ops::lora_linear(
                    x,
                    &w,
                    b.as_ref(),
                    &a,
                    &bm,
                    l.scale,
                    self.transposed,
                )?);
            }
        }
        let active: Vec<&dyn LinearAdapter> = self
            .adapters
            .iter()
            .filter(|(n, _)| ctx.is_active(n))
            .map(|(_, a)| a.as_ref())
            .collect();
        let mut xin = x.clone();
        for a in &active {
            if let Some(scaled) = a.scale_input(&xin, ctx)? {
                xin = scaled;
            }
        }
        let mut base = ops::linear(&xin, &w, b.as_ref(), self.transposed)?;
        for a in &active {
            if let Some(scaled) = a.scale_output(&base, ctx)? {
                base = scaled;
            }
        }
        let mut y = base.clone();
        for (name, l) in &self.lora {
            if ctx.is_active(name) {
                y = y.add(&l.delta(x, &base, self, ctx)?)?;
            }
        }
        for a in &active {
            if let Some(d) = a.delta(x, self, ctx)? {
                y = y.add(&d.to_dtype(y.dtype())?)?;
            }
        }
        Ok(y)
    }

    /// The one active adapter when it is a plain LoRA (no DoRA, LoRA bias or live dropout) and
    /// nothing else is active here: the case one fused op computes.
    fn single_plain_lora(&self, ctx: &Ctx) -> Option<&Lora> {
        if self.adapters.iter().any(|(n, _)| ctx.is_active(n)) {
            return None;
        }
        let mut active = self.lora.iter().filter(|(n, _)| ctx.is_active(n));
        let (_, l) = active.next()?;
        let plain = l.magnitude.is_none() && l.bias.is_none() && (l.dropout == 0.0 || !ctx.train);
        (plain && active.next().is_none()).then_some(l)
    }

    /// `(suffix, param)` of the base parameters, HF-named.
    pub fn params(&self) -> Vec<(&'static str, Param)> {
        let mut v = vec![("weight", self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias", b.clone()));
        }
        v
    }
}

pub struct Embedding {
    pub weight: Param,
    pub lora: Vec<(String, LoraEmbedding)>,
}

impl Embedding {
    pub fn new(weight: Param) -> Self {
        Embedding {
            weight,
            lora: Vec::new(),
        }
    }

    /// `ids` `[b, t]` (u32) → `[b, t, dim]`.
    pub fn forward(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let w = self.weight.get(ctx);
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let mut y = crate::ops::embedding(&w, &flat)?;
        for (name, l) in &self.lora {
            if ctx.is_active(name) {
                y = l.add_to(y, &flat, ctx)?;
            }
        }
        Ok(y.reshape((b, t, w.dim(D::Minus1)?))?)
    }

    pub fn params(&self) -> Vec<(&'static str, Param)> {
        vec![("weight", self.weight.clone())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    Rms,
    Layer,
}

pub struct Norm {
    pub weight: Param,
    pub bias: Option<Param>,
    pub eps: f64,
    pub kind: NormKind,
}

impl Norm {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let w = self.weight.get(ctx);
        Ok(match (self.kind, &self.bias) {
            (NormKind::Rms, _) => ops::rms_norm(x, &w, self.eps)?,
            (NormKind::Layer, Some(b)) => ops::layer_norm(x, &w, &b.get(ctx), self.eps)?,
            (NormKind::Layer, None) => {
                let zeros = w.zeros_like()?;
                ops::layer_norm(x, &w, &zeros, self.eps)?
            }
        })
    }

    pub fn params(&self) -> Vec<(&'static str, Param)> {
        let mut v = vec![("weight", self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias", b.clone()));
        }
        v
    }
}
