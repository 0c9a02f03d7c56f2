//! `a + b` of one shape (residual connections): candle's add as the composed reference and on
//! the CPU outside training, and the device path; with `sum2`, the graph-free sum that the tape adds gradients with,
//! on CUDA ftl's vectorised kernel.

use super::device::attach_fresh;
#[cfg(feature = "cuda")]
use super::kernels;
use super::tape::Bwd;
use super::{backend, Backend};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// `a + b` for two values of one shape (residual connections).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // f32 on the CPU, candle's add is what a fused kernel would be (one pass); while a tape
    // records, the device path's add hands `g` on to both inputs as is
    match backend(&[a]) {
        Backend::Fused if super::tape::recording() => device(a, b),
        Backend::Composed | Backend::Fused => a + b,
        Backend::Device => device(a, b),
    }
}

/// `add` on the device path: both inputs get the output's gradient as it is, shared.
fn device(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = sum2(&a.detach(), &b.detach())?;
    let bwd: Bwd = Arc::new(|_: &[&Tensor], _: &Tensor, g: &Tensor| {
        Ok(vec![Some(g.clone()), Some(g.clone())])
    });
    attach_fresh(&[a, b], y, bwd)
}

/// `a + b` of one shape, without a graph: ftl's vectorised kernel on the GPU.
pub(crate) fn sum2(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels(a) && a.dtype() == b.dtype() && a.shape() == b.shape() {
        return cuda::add(a, b);
    }
    a + b
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The launcher of `add2` (kernels.cu).

    use crate::ops::cuda::{args, dev_of, func, typed, vec16, vec_cfg, view, wrap};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    /// `a + b` for two contiguous tensors of one shape and dtype.
    pub(super) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dev = dev_of(a)?;
        if a.shape() != b.shape() || a.dtype() != b.dtype() {
            candle_core::bail!("ftl kernels: add of {:?} and {:?}", a.shape(), b.shape());
        }
        let n = a.elem_count();
        let f = func(&dev, "add2", a.dtype())?;
        let b = b.contiguous()?;
        let (gb, _) = b.storage_and_layout();
        let shape = a.shape().clone();
        let vec = vec16(&[a, &b]);
        let n_ = n as i64;
        typed!(a, |av: Ty| {
            let bv: CudaView<'_, Ty> = view!(gb, b, Ty);
            let dst = unsafe { dev.alloc::<Ty>(n)? };
            let mut bl = f.builder();
            args!(bl, &av, &bv, &dst, &n_, &vec);
            unsafe { bl.launch(vec_cfg(n)) }.w()?;
            Ok(wrap(dst, &dev, shape))
        })
    }
}
