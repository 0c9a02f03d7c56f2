//! IA3's per-feature scaling `x · v` over the last dimension: the composed reference (a broadcast
//! multiply), the fused CPU kernel (one pass forward, one pass backward for both gradients), the
//! device path and its CUDA kernels.

use super::device::attach_fresh;
#[cfg(feature = "cuda")]
use super::kernels;
use super::tape::Bwd;
use super::{backend, needs_grad, slice_f32, with_f32, Backend};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `x · v` over the last dimension, `v` `[n]` cast to `x`'s dtype (IA3's scaling).
pub fn scale_last(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    match backend(&[x, v]) {
        Backend::Fused if x.dim(candle_core::D::Minus1)? == v.elem_count() && v.rank() == 1 => {
            super::tape::fused2(&x.contiguous()?, &v.contiguous()?, ScaleLast)
        }
        // the fused kernel takes one value per feature; any other `v` broadcasts on the device path
        Backend::Fused | Backend::Device => device(x, v),
        Backend::Composed => x.broadcast_mul(&v.to_dtype(x.dtype())?),
    }
}

/// `scale_last` on the device path, `v`'s gradient summed in f32: ftl's kernels on CUDA.
fn device(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scale = |x: &Tensor, v: &Tensor| -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if kernels(x) {
            return cuda::scale_cols(x, v);
        }
        x.broadcast_mul(&v.to_dtype(x.dtype())?)
    };
    let y = scale(&x.detach(), &v.detach())?;
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (x, v) = (a[0].detach(), a[1].detach());
        let dx = if needs_grad(a[0]) {
            Some(scale(g, &v)?)
        } else {
            None
        };
        let dv = if needs_grad(a[1]) {
            #[cfg(feature = "cuda")]
            if kernels(&x) {
                return Ok(vec![
                    dx,
                    Some(cuda::colsum_mul(g, &x)?.to_dtype(v.dtype())?),
                ]);
            }
            let n = v.elem_count();
            let p = (g.to_dtype(DType::F32)? * x.to_dtype(DType::F32)?)?;
            Some(
                p.reshape((p.elem_count() / n, n))?
                    .sum(0)?
                    .to_dtype(v.dtype())?,
            )
        } else {
            None
        };
        Ok(vec![dx, dv])
    });
    attach_fresh(&[x, v], y, bwd)
}

pub(crate) struct ScaleLast;

impl CustomOp2 for ScaleLast {
    fn name(&self) -> &'static str {
        "ftl-scale-last"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, v) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?);
        let n = v.len();
        let mut y = super::zeros(x.len());
        y.par_chunks_mut(n.max(1))
            .zip(x.par_chunks(n.max(1)))
            .for_each(|(y, x)| {
                for i in 0..y.len() {
                    y[i] = x[i] * v[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        with_f32(x, |x_| {
            with_f32(v, |v_| {
                with_f32(g, |g_| {
                    let n = v_.len().max(1);
                    let dx = if needs_grad(x) {
                        let mut dx = super::zeros(x_.len());
                        dx.par_chunks_mut(n)
                            .zip(g_.par_chunks(n))
                            .for_each(|(d, g)| {
                                for i in 0..d.len() {
                                    d[i] = g[i] * v_[i];
                                }
                            });
                        Some(super::from_vec(dx, x.shape())?)
                    } else {
                        None
                    };
                    let dv = if needs_grad(v) {
                        // rows in order: the same sums on every run
                        let mut dv = super::zeros(n);
                        for (x, g) in x_.chunks(n).zip(g_.chunks(n)) {
                            for i in 0..x.len() {
                                dv[i] += g[i] * x[i];
                            }
                        }
                        Some(super::from_vec(dv, v.shape())?)
                    } else {
                        None
                    };
                    Ok((dx, dv))
                })
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The launchers of `scale_last`'s device path (`scale_cols`, `colsum_mul` in kernels.cu).

    use crate::ops::cuda::{
        args, block_cfg, dev_of, func, rows_of, typed, vec16, vec_cfg, view, wrap,
    };
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{DType, Result, Tensor};

    /// `x · v` per column of `[.., N]` `x`, `v` `[N]` rounded to `x`'s dtype first.
    pub(super) fn scale_cols(x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (m, n) = rows_of(x)?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        let (gv, _) = v.storage_and_layout();
        let vv = view!(gv, v, f32);
        let f = func(&dev, "scale_cols", x.dtype())?;
        let (total, n_) = ((m * n) as i64, n as i32);
        let shape = x.shape().clone();
        let vec = vec16(&[x]);
        typed!(x, |xv: Ty| {
            let dst = unsafe { dev.alloc::<Ty>(m * n)? };
            let mut b = f.builder();
            args!(b, &xv, &vv, &dst, &total, &n_, &vec);
            unsafe { b.launch(vec_cfg(m * n)) }.w()?;
            Ok(wrap(dst, &dev, shape))
        })
    }

    /// `Σ_rows g ⊙ x` per column of `[M, N]` `g` and `x` (same dtype): `[N]` f32.
    pub(super) fn colsum_mul(g: &Tensor, x: &Tensor) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (m, n) = rows_of(x)?;
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        let (gg, _) = g.storage_and_layout();
        let f = func(&dev, "colsum_mul", x.dtype())?;
        let (m_, n_) = (m as i64, n as i32);
        typed!(x, |xv: Ty| {
            let gv = view!(gg, g, Ty);
            let dst = unsafe { dev.alloc::<f32>(n)? };
            let mut b = f.builder();
            args!(b, &gv, &xv, &dst, &m_, &n_);
            unsafe { b.launch(block_cfg((n.div_ceil(32), 1))?) }.w()?;
            Ok(wrap(dst, &dev, n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn scale_last_fused_matches_composed() -> candle_core::Result<()> {
        let x = var(&[3, 7, 40], 1)?;
        let v = var(&[40], 2)?;
        check_fused_vs_composed(
            &[&x, &v],
            || super::scale_last(x.as_tensor(), v.as_tensor()),
            1e-6,
        )
    }
}
