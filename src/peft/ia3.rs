//! IA3: a learned vector scaling a linear layer's output (`(Wx + b) ⊙ l`, `ia3_l` `[out, 1]`) or,
//! for feed-forward modules, its input (`W(x ⊙ l) + b`, `ia3_l` `[1, in]`).

use crate::error::Result;
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use candle_core::{DType, Tensor};

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
