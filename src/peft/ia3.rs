//! IA3: a learned vector scaling a linear layer's output (`(Wx + b) ⊙ l`, `ia3_l` `[out, 1]`) or,
//! for feed-forward modules, its input (`W(x ⊙ l) + b`, `ia3_l` `[1, in]`).

use crate::error::Result;
use crate::model::layers::Linear;
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

    pub fn scale_input(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(crate::ops::scale_last(x, &self.l.get(ctx).flatten_all()?)?)
    }

    pub fn scale_output(&self, y: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(crate::ops::scale_last(y, &self.l.get(ctx).flatten_all()?)?)
    }

    /// PEFT's merge: rows (output) or columns (feed-forward input) of W scaled; the bias is scaled
    /// only for output scaling.
    pub fn merge_into(&self, lin: &Linear, ctx: &Ctx) -> Result<()> {
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

    pub fn params(&self) -> Vec<(&'static str, Param)> {
        vec![("ia3_l", self.l.clone())]
    }
}
