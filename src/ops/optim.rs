//! The optimizer's CUDA kernels (`adamw`, `sumsq` in kernels.cu), for `train::optim`: AdamW's
//! update in place and the gradient norm's sum of squares, each in one pass.

use crate::ops::cuda::{args, dev_of, func, typed, vec16, vec_cfg, view, wrap};
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{DType, Result, Tensor};
use half::bf16;

/// One AdamW update in place: `p`, `m`, `v` are written (all of `p`'s dtype), `g` read.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    wd_factor: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
) -> Result<()> {
    let dev = dev_of(p)?;
    for t in [p, m, v] {
        if !t.is_contiguous() || t.dtype() != p.dtype() {
            candle_core::bail!("adamw: parameter and state must be contiguous and of one dtype");
        }
    }
    let g = g.to_dtype(p.dtype())?.contiguous()?;
    let n = p.elem_count();
    let (gp, _) = p.storage_and_layout();
    let (gg, _) = g.storage_and_layout();
    let (gm, _) = m.storage_and_layout();
    let (gv, _) = v.storage_and_layout();
    let f = func(&dev, "adamw", p.dtype())?;
    let (n_, vec) = (n as i64, vec16(&[p, &g, m, v]));
    macro_rules! go {
        ($ty:ty) => {{
            let (pv, gvv, mv, vv) = (
                view!(gp, p, $ty),
                view!(gg, g, $ty),
                view!(gm, m, $ty),
                view!(gv, v, $ty),
            );
            let mut b = f.builder();
            args!(
                b, &pv, &gvv, &mv, &vv, &n_, &wd_factor, &b1, &b2, &eps, &step_size, &bc2_sqrt,
                &vec
            );
            unsafe { b.launch(vec_cfg(n)) }.w()?;
            Ok(())
        }};
    }
    match p.dtype() {
        DType::F32 => go!(f32),
        DType::BF16 => go!(bf16),
        o => candle_core::bail!("adamw: dtype {o:?}"),
    }
}

/// `Σ x²` as an f32 scalar on the device, in one pass (a gradient norm without an f32 copy).
pub fn sum_sq(x: &Tensor) -> Result<Tensor> {
    let dev = dev_of(x)?;
    let n = x.elem_count();
    let f = func(&dev, "sumsq", x.dtype())?;
    let x = x.contiguous()?;
    let (n_, vec) = (n as i64, vec16(&[&x]));
    let blocks = n.div_ceil(256 * 8).clamp(1, 2048) as u32;
    typed!(x, |xv: _Ty| {
        let dst = dev.alloc_zeros::<f32>(1)?;
        let mut b = f.builder();
        args!(b, &xv, &dst, &n_, &vec);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(wrap(dst, &dev, ()))
    })
}
