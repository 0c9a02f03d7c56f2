//! The injectable layers every architecture is built from: `Linear` and `Embedding`, each with a
//! slot where methods act (`LinearAdapter`, `EmbeddingAdapter`, which `peft/` implements: this
//! module knows no method), and `Norm`. Their paths and parameter names are HF's.

use super::{Ctx, Param};
use crate::error::Result;
use crate::ops;
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
    /// The addition to the layer's output for input `x` (`[…, in]` → `[…, out]`); `base` is the
    /// base layer's output (after scaling), which DoRA reuses.
    fn delta(&self, x: &Tensor, base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>>;
    /// The whole layer's output in one op, when this is the only active adapter and the method
    /// has such an op (plain LoRA: it keeps only the input alive for the backward pass).
    fn fused(&self, x: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        let _ = (x, lin, ctx);
        Ok(None)
    }
    /// Folds the adapter into `into`'s weights (`lin` is the layer it was made for): by default
    /// `W += delta_weight`. Adapters fold in `merge_order`.
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
    /// When it folds among a layer's adapters, as the forward applies them: 0 scales the weight
    /// (IA3), 1 reads the weight it adds to (DoRA's norm is the base weight's), 2 only adds.
    fn merge_order(&self) -> u8 {
        2
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
    /// the methods' adapters (LoRA, IA3, the registry's), by adapter name
    pub adapters: Vec<(String, Box<dyn LinearAdapter>)>,
}

impl Linear {
    pub fn new(weight: Param, bias: Option<Param>, transposed: bool) -> Self {
        Linear {
            weight,
            bias,
            transposed,
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
        let active: Vec<&dyn LinearAdapter> = self
            .adapters
            .iter()
            .filter(|(n, _)| ctx.is_active(n))
            .map(|(_, a)| a.as_ref())
            .collect();
        if let [one] = active.as_slice() {
            if let Some(y) = one.fused(x, self, ctx)? {
                return Ok(y);
            }
        }
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
        for a in &active {
            if let Some(d) = a.delta(x, &base, self, ctx)? {
                y = y.add(&d.to_dtype(y.dtype())?)?;
            }
        }
        Ok(y)
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

/// How a method acts on an embedding (LoRA's `lora_embedding_A/B`).
pub trait EmbeddingAdapter: Send + Sync {
    /// `y` (`[n, dim]`, the rows of `flat_ids`) with the adapter's addition.
    fn add_to(&self, y: Tensor, flat_ids: &Tensor, ctx: &Ctx) -> Result<Tensor>;
    /// Folds the adapter into `into`'s weight.
    fn merge_into(&self, into: &Embedding, ctx: &Ctx) -> Result<()>;
    /// `(suffix, param)` under PEFT's parameter names, adapter name removed.
    fn params(&self) -> Vec<(String, Param)>;
}

pub struct Embedding {
    pub weight: Param,
    /// the methods' adapters, by adapter name
    pub adapters: Vec<(String, Box<dyn EmbeddingAdapter>)>,
}

impl Embedding {
    pub fn new(weight: Param) -> Self {
        Embedding {
            weight,
            adapters: Vec::new(),
        }
    }

    /// `ids` `[b, t]` (u32) → `[b, t, dim]`.
    pub fn forward(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let w = self.weight.get(ctx);
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let mut y = crate::ops::embedding(&w, &flat)?;
        for (name, a) in &self.adapters {
            if ctx.is_active(name) {
                y = a.add_to(y, &flat, ctx)?;
            }
        }
        Ok(y.reshape((b, t, w.dim(D::Minus1)?))?)
    }

    pub fn params(&self) -> Vec<(&'static str, Param)> {
        vec![("weight", self.weight.clone())]
    }
}

/// How a method acts on a block's residual stream after a sub-layer (bottleneck adapters): the
/// architectures call `pre_norm` / `post_norm` at those places, `peft/` implements it.
pub trait BlockAdapter: Send + Sync {
    /// The block output at this place for sub-layer output `f` and residual `r`; `ln` is the
    /// post-LayerNorm of post-norm models (BERT), None for pre-norm ones.
    fn forward(&self, f: &Tensor, r: &Tensor, ln: Option<&Norm>, ctx: &Ctx) -> Result<Tensor>;
    /// `(suffix, param)` under the method's parameter names, adapter name removed.
    fn params(&self) -> Vec<(String, Param)>;
}

/// The adapters at one place of a block, by adapter name.
pub type BlockSlot = Vec<(String, Box<dyn BlockAdapter>)>;

fn active_in<'a>(slot: &'a BlockSlot, ctx: &Ctx) -> Result<Option<&'a dyn BlockAdapter>> {
    let mut it = slot.iter().filter(|(n, _)| ctx.is_active(n));
    let first = it.next();
    if let Some((n2, _)) = it.next() {
        return Err(crate::error::Error::msg(format!(
            "two bottleneck adapters (`{}`, `{n2}`) are active at one place; activate one with set_adapter",
            first.map(|f| f.0.as_str()).unwrap_or_default()
        )));
    }
    Ok(first.map(|(_, b)| b.as_ref()))
}

/// Pre-norm blocks (llama family, GPT-2): the residual stream after a sub-layer with output `f`.
pub fn pre_norm(slot: &BlockSlot, f: &Tensor, r: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    match active_in(slot, ctx)? {
        None => Ok(ops::add(f, r)?),
        Some(b) => b.forward(f, r, None, ctx),
    }
}

/// Post-norm blocks (BERT): `LayerNorm(f + r)`, with the adapter in between.
pub fn post_norm(slot: &BlockSlot, f: &Tensor, r: &Tensor, ln: &Norm, ctx: &Ctx) -> Result<Tensor> {
    match active_in(slot, ctx)? {
        None => ln.forward(&ops::add(f, r)?, ctx),
        Some(b) => b.forward(f, r, Some(ln), ctx),
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
