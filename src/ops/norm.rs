//! RMSNorm (llama family) and LayerNorm (GPT-2, BERT): the composed reference, the fused CPU
//! kernels, the device path and RMSNorm's CUDA kernels.

use super::device::{attach, rows};
use super::tape::Bwd;
use super::{backend, needs_grad, slice_f32, with_f32, Backend};
#[cfg(feature = "cuda")]
use super::{device::attach_fresh, kernels};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// HF's `LlamaRMSNorm`: normalise in f32, cast back, then scale by `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    match backend(&[x, w]) {
        Backend::Fused => super::tape::fused2(
            &x.contiguous()?,
            &w.contiguous()?,
            RmsNorm { eps: eps as f32 },
        ),
        Backend::Composed => rms_composed(x, w, eps),
        Backend::Device => rms_device(x, w, eps),
    }
}

fn rms_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xf.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dt)?;
    xn.broadcast_mul(w)
}

/// `torch.nn.LayerNorm` over the last dimension (biased variance).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    match backend(&[x, w, b]) {
        Backend::Fused => super::tape::fused3(
            &x.contiguous()?,
            &w.contiguous()?,
            &b.contiguous()?,
            LayerNorm { eps: eps as f32 },
        ),
        Backend::Composed => layer_composed(x, w, b, eps),
        Backend::Device => layer_device(x, w, b, eps),
    }
}

fn layer_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mu = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dt)?;
    xn.broadcast_mul(w)?.broadcast_add(b)
}

/// `rms_norm` on the device path: ftl's kernels on CUDA, candle ops elsewhere.
fn rms_device(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels(x) {
        let x = &x.contiguous()?;
        let y = cuda::rms_fwd(&x.detach(), &w.detach(), eps)?;
        let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
            let (dx, dw) = cuda::rms_bwd(
                &a[0].detach(),
                &a[1].detach(),
                g,
                eps,
                needs_grad(a[0]),
                needs_grad(a[1]),
            )?;
            Ok(vec![dx, dw.map(|d| d.to_dtype(a[1].dtype())).transpose()?])
        });
        return attach_fresh(&[x, w], y, bwd);
    }
    let dt = x.dtype();
    let xf = x.detach().to_dtype(DType::F32)?;
    let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let y = xf
        .broadcast_mul(&r)?
        .to_dtype(dt)?
        .broadcast_mul(&w.detach())?;
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let xf = a[0].detach().to_dtype(DType::F32)?;
        let wf = a[1].detach().to_dtype(DType::F32)?;
        let gf = g.to_dtype(DType::F32)?;
        let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        let xh = xf.broadcast_mul(&r)?;
        let dx = if needs_grad(a[0]) {
            let gw = gf.broadcast_mul(&wf)?;
            let c = (&gw * &xh)?.mean_keepdim(D::Minus1)?;
            Some(
                gw.sub(&xh.broadcast_mul(&c)?)?
                    .broadcast_mul(&r)?
                    .to_dtype(a[0].dtype())?,
            )
        } else {
            None
        };
        let dw = if needs_grad(a[1]) {
            Some(rows(&(gf * xh)?)?.sum(0)?.to_dtype(a[1].dtype())?)
        } else {
            None
        };
        Ok(vec![dx, dw])
    });
    attach(&[x, w], y, bwd)
}

/// `layer_norm` on the device path.
fn layer_device(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let stats = move |xf: &Tensor| -> Result<(Tensor, Tensor)> {
        let mu = xf.mean_keepdim(D::Minus1)?;
        let xc = xf.broadcast_sub(&mu)?;
        let r = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        Ok((xc.broadcast_mul(&r)?, r))
    };
    let (xh, _) = stats(&x.detach().to_dtype(DType::F32)?)?;
    let y = xh
        .to_dtype(dt)?
        .broadcast_mul(&w.detach())?
        .broadcast_add(&b.detach())?;
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (xh, r) = stats(&a[0].detach().to_dtype(DType::F32)?)?;
        let wf = a[1].detach().to_dtype(DType::F32)?;
        let gf = g.to_dtype(DType::F32)?;
        let dx = if needs_grad(a[0]) {
            let gw = gf.broadcast_mul(&wf)?;
            let m1 = gw.mean_keepdim(D::Minus1)?;
            let m2 = (&gw * &xh)?.mean_keepdim(D::Minus1)?;
            Some(
                gw.broadcast_sub(&m1)?
                    .sub(&xh.broadcast_mul(&m2)?)?
                    .broadcast_mul(&r)?
                    .to_dtype(a[0].dtype())?,
            )
        } else {
            None
        };
        let dw = if needs_grad(a[1]) {
            Some(rows(&(&gf * &xh)?)?.sum(0)?.to_dtype(a[1].dtype())?)
        } else {
            None
        };
        let db = if needs_grad(a[2]) {
            Some(rows(&gf)?.sum(0)?.to_dtype(a[2].dtype())?)
        } else {
            None
        };
        Ok(vec![dx, dw, db])
    });
    attach(&[x, w, b], y, bwd)
}

fn rows_of(l: &Layout) -> (usize, usize) {
    let n = l.dims()[l.dims().len() - 1];
    (l.shape().elem_count() / n.max(1), n)
}

/// Sums per-row contributions `f(row) -> [n]` over all rows, in parallel blocks, in a fixed
/// order.
fn sum_rows(rows: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let block = rows.div_ceil(super::threads() * 4).max(1);
    (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let mut acc = vec![0f32; n];
            for r in bi * block..((bi + 1) * block).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        // in order (not rayon's scheduling-dependent reduce): a training repeats bit for bit
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0f32; n])
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "ftl-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?);
        let (_, n) = rows_of(l1);
        if w.len() != n {
            candle_core::bail!("rms_norm: weight has {} entries, hidden size {n}", w.len());
        }
        let mut y = super::zeros(x.len());
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(yr, xr)| {
                let r = inv_rms(xr, self.eps);
                for i in 0..n {
                    yr[i] = w[i] * (xr[i] * r);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let rows = x.elem_count() / n.max(1);
        let eps = self.eps;
        with_f32(x, |x_| {
            with_f32(w, |w_| {
                with_f32(g, |g_| {
                    let gx = if needs_grad(x) {
                        let mut gx = super::zeros(x_.len());
                        gx.par_chunks_mut(n)
                            .zip(x_.par_chunks(n).zip(g_.par_chunks(n)))
                            .for_each(|(dx, (xr, gr))| {
                                let r = inv_rms(xr, eps);
                                let mut dot = 0f32;
                                for i in 0..n {
                                    dot += gr[i] * w_[i] * xr[i] * r;
                                }
                                let c = dot / n as f32;
                                for i in 0..n {
                                    let xh = xr[i] * r;
                                    dx[i] = r * (gr[i] * w_[i] - xh * c);
                                }
                            });
                        Some(super::from_vec(gx, x.shape())?)
                    } else {
                        None
                    };
                    let gw = if needs_grad(w) {
                        let v = sum_rows(rows, n, |r, acc| {
                            let xr = &x_[r * n..(r + 1) * n];
                            let gr = &g_[r * n..(r + 1) * n];
                            let ir = inv_rms(xr, eps);
                            for i in 0..n {
                                acc[i] += gr[i] * xr[i] * ir;
                            }
                        });
                        Some(super::from_vec(v, w.shape())?)
                    } else {
                        None
                    };
                    Ok((gx, gw))
                })
            })
        })
    }
}

struct LayerNorm {
    eps: f32,
}

fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mu = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n;
    (mu, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "ftl-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?, slice_f32(s3, l3)?);
        let (_, n) = rows_of(l1);
        if w.len() != n || b.len() != n {
            candle_core::bail!("layer_norm: weight/bias size differs from hidden size {n}");
        }
        let mut y = super::zeros(x.len());
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(yr, xr)| {
                let (mu, r) = moments(xr, self.eps);
                for i in 0..n {
                    yr[i] = (xr[i] - mu) * r * w[i] + b[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let rows = x.elem_count() / n.max(1);
        let eps = self.eps;
        with_f32(x, |x_| {
            with_f32(w, |w_| {
                with_f32(g, |g_| {
                    let gx = if needs_grad(x) {
                        let mut gx = super::zeros(x_.len());
                        gx.par_chunks_mut(n)
                            .zip(x_.par_chunks(n).zip(g_.par_chunks(n)))
                            .for_each(|(dx, (xr, gr))| {
                                let (mu, r) = moments(xr, eps);
                                let (mut s1, mut s2) = (0f32, 0f32);
                                for i in 0..n {
                                    let d = gr[i] * w_[i];
                                    s1 += d;
                                    s2 += d * (xr[i] - mu) * r;
                                }
                                let (m1, m2) = (s1 / n as f32, s2 / n as f32);
                                for i in 0..n {
                                    let xh = (xr[i] - mu) * r;
                                    dx[i] = r * (gr[i] * w_[i] - m1 - xh * m2);
                                }
                            });
                        Some(super::from_vec(gx, x.shape())?)
                    } else {
                        None
                    };
                    let gw = if needs_grad(w) {
                        let v = sum_rows(rows, n, |r, acc| {
                            let xr = &x_[r * n..(r + 1) * n];
                            let gr = &g_[r * n..(r + 1) * n];
                            let (mu, ir) = moments(xr, eps);
                            for i in 0..n {
                                acc[i] += gr[i] * (xr[i] - mu) * ir;
                            }
                        });
                        Some(super::from_vec(v, w.shape())?)
                    } else {
                        None
                    };
                    let gb = if needs_grad(b) {
                        Some(super::from_vec(super::linear::col_sums(g_, n), b.shape())?)
                    } else {
                        None
                    };
                    Ok((gx, gw, gb))
                })
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! RMSNorm's launchers (`rms_fwd`, `rms_bwd` in kernels.cu).

    use crate::ops::cuda::{
        args, dev_of, func, opt_args, row_vec, rows_of, typed, view, warp_rows_cfg, wrap,
    };
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    pub(super) fn rms_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (rows, n) = rows_of(x)?;
        let w = w.to_dtype(x.dtype())?.contiguous()?;
        let (gw, _) = w.storage_and_layout();
        let f = func(&dev, "rms_fwd", x.dtype())?;
        let x = x.contiguous()?;
        let (rows_, n_, eps_, vec) = (rows as i64, n as i32, eps as f32, row_vec(n, &[&x, &w]));
        let shape = x.shape().clone();
        typed!(x, |xv: Ty| {
            let wv = view!(gw, w, Ty);
            let dst = unsafe { dev.alloc::<Ty>(rows * n)? };
            let mut b = f.builder();
            args!(b, &xv, &wv, &dst, &rows_, &n_, &eps_, &vec);
            unsafe { b.launch(warp_rows_cfg(rows)) }.w()?;
            Ok(wrap(dst, &dev, shape))
        })
    }

    /// `(dx, dw)` of RMSNorm; `dw` in f32.
    pub(super) fn rms_bwd(
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
        eps: f64,
        need_dx: bool,
        need_dw: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = dev_of(x)?;
        let (rows, n) = rows_of(x)?;
        let w = w.to_dtype(x.dtype())?.contiguous()?;
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        let (gw, _) = w.storage_and_layout();
        let (gg, _) = g.storage_and_layout();
        let f = func(&dev, "rms_bwd", x.dtype())?;
        let x = x.contiguous()?;
        let (rows_, n_, eps_, vec) = (rows as i64, n as i32, eps as f32, row_vec(n, &[&x, &w, &g]));
        let shape = x.shape().clone();
        let dw = if need_dw {
            Some(dev.alloc_zeros::<f32>(n)?)
        } else {
            None
        };
        typed!(x, |xv: Ty| {
            let wv = view!(gw, w, Ty);
            let gv = view!(gg, g, Ty);
            let dx = if need_dx {
                Some(unsafe { dev.alloc::<Ty>(rows * n)? })
            } else {
                None
            };
            let mut b = f.builder();
            args!(b, &xv, &wv, &gv);
            opt_args!(b, &dx, &dw);
            // with dw: a few blocks take all rows, each adding its part of dw (in shared memory up to
            // the default 48 KiB) once (kernels.cu)
            let local = (need_dw && n * 4 <= 48 * 1024) as i32;
            args!(b, &rows_, &n_, &eps_, &vec, &local);
            let mut cfg = warp_rows_cfg(rows);
            if need_dw {
                cfg.grid_dim.0 = cfg.grid_dim.0.min(264);
                cfg.shared_mem_bytes = local as u32 * (n * 4) as u32;
            }
            unsafe { b.launch(cfg) }.w()?;
            Ok((
                dx.map(|d| wrap(d, &dev, shape.clone())),
                dw.map(|d| wrap(d, &dev, n)),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn rms_norm_fused_matches_composed() -> Result<()> {
        let x = var(&[3, 4, 16], 1)?;
        let w = var(&[16], 2)?;
        check_fused_vs_composed(
            &[&x, &w],
            || rms_norm(x.as_tensor(), w.as_tensor(), 1e-5),
            1e-5,
        )
    }

    #[test]
    fn layer_norm_fused_matches_composed() -> Result<()> {
        let x = var(&[3, 4, 16], 1)?;
        let w = var(&[16], 2)?;
        let b = var(&[16], 3)?;
        check_fused_vs_composed(
            &[&x, &w, &b],
            || layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5),
            1e-5,
        )
    }
}
