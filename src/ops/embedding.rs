//! Embedding lookup: candle's `index_select` on every path, and on CUDA a backward pass of ftl's
//! own kernel.

use candle_core::{Result, Tensor};
#[cfg(feature = "cuda")]
use {
    super::{device::attach_fresh, kernels, needs_grad, tape::Bwd},
    candle_core::DType,
    std::sync::Arc,
};

/// Rows `ids` (u32) of the table `w` `[vocab, h]`; on the GPU its gradient is one kernel that adds
/// each row's gradient into an f32 table (candle's index_add backward is a slow scalar loop).
///
/// The forward pass is `index_select` on every backend; only the device path's gradient is
/// ftl's own (the composed reference and the CPU keep candle's).
pub fn embedding(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::backend(&[w]) == super::Backend::Device
        && kernels(w)
        && ids.dtype() == DType::U32
        && needs_grad(w)
    {
        let y = w.detach().index_select(ids, 0)?;
        let (ids, vocab) = (ids.clone(), w.dim(0)?);
        let bwd: Bwd = Arc::new(move |_: &[&Tensor], _: &Tensor, g: &Tensor| {
            Ok(vec![Some(cuda::embed_bwd(g, &ids, vocab)?)])
        });
        return attach_fresh(&[w], y, bwd);
    }
    w.index_select(ids, 0)
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The embedding gradient's launcher (`embed_bwd` in kernels.cu).

    use crate::ops::cuda::{args, dev_of, func, row_vec, typed, view, warp_rows_cfg, wrap};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    /// The gradient of an embedding table `[vocab, h]` from the gradient `g` `[rows, h]` of the rows
    /// that `ids` (u32) selected: summed in f32 (repeated tokens add up), returned in `g`'s dtype.
    pub(super) fn embed_bwd(g: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        let dev = dev_of(g)?;
        let (rows, h) = g.dims2()?;
        let g = g.contiguous()?;
        let ids = ids.contiguous()?;
        let (gi, _) = ids.storage_and_layout();
        let iv = view!(gi, ids, u32);
        let f = func(&dev, "embed_bwd", g.dtype())?;
        let acc = dev.alloc_zeros::<f32>(vocab * h)?;
        let (rows_, h_, vocab_, vec) = (rows as i64, h as i32, vocab as i64, row_vec(h, &[&g]));
        typed!(g, |gv: _Ty| {
            let mut b = f.builder();
            args!(b, &gv, &iv, &acc, &rows_, &h_, &vocab_, &vec);
            unsafe { b.launch(warp_rows_cfg(rows)) }.w()?;
            Ok::<_, candle_core::Error>(())
        })?;
        wrap(acc, &dev, (vocab, h)).to_dtype(g.dtype())
    }
}
