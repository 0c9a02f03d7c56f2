//! Cross-entropy summed over the labelled rows (label `IGNORE_INDEX` skipped), so that a caller
//! can divide by the token count of a whole accumulated batch: the composed reference, the fused
//! CPU kernel, the device path and its CUDA kernels.

use super::device::{attach, chunk_bytes};
#[cfg(feature = "cuda")]
use super::kernels;
use super::tape::Bwd;
use super::{backend, slice_f32, with_f32, Backend};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

pub const IGNORE_INDEX: i64 = -100;

/// `logits` `[n, vocab]`, `labels` `n` entries → scalar tensor Σ −log softmax(logits)[label].
pub fn cross_entropy_sum(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if labels.len() != n {
        candle_core::bail!("cross_entropy: {} labels for {n} rows", labels.len());
    }
    if let Some(bad) = labels
        .iter()
        .find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= v))
    {
        candle_core::bail!("cross_entropy: label {bad} outside 0..{v}");
    }
    match backend(&[logits]) {
        Backend::Fused => super::tape::fused1(
            &logits.contiguous()?,
            CrossEntropy {
                labels: Arc::new(labels.to_vec()),
            },
        ),
        Backend::Composed => composed(logits, labels),
        Backend::Device => device(logits, labels),
    }
}

fn composed(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx: Vec<u32> = labels
        .iter()
        .map(|&l| if l < 0 { 0 } else { l as u32 })
        .collect();
    let keep: Vec<f32> = labels
        .iter()
        .map(|&l| if l < 0 { 0.0 } else { 1.0 })
        .collect();
    let dev = logits.device();
    let idx = Tensor::from_vec(idx, (n, 1), &Device::Cpu)?.to_device(dev)?;
    let keep = Tensor::from_vec(keep, n, &Device::Cpu)?.to_device(dev)?;
    let picked = lsm.gather(&idx, 1)?.squeeze(1)?;
    (picked * keep)?.sum_all()?.neg()
}

/// Rows `x` `[n, v]` in f32 as `z = x − max` and `log Σ exp(z)` `[n, 1]`, the exponentials summed
/// in f64: an f32 sum over a large vocabulary is biased low (see `ops::loss`).
fn shifted_lse(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let xf = x.to_dtype(DType::F32)?;
    let z = xf.broadcast_sub(&xf.max_keepdim(D::Minus1)?)?;
    let ls = z
        .exp()?
        .to_dtype(DType::F64)?
        .sum_keepdim(D::Minus1)?
        .log()?
        .to_dtype(DType::F32)?;
    Ok((z, ls))
}

/// `cross_entropy_sum` on the device path: ftl's kernels on CUDA, candle ops in row chunks elsewhere.
fn device(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    #[cfg(feature = "cuda")]
    if kernels(logits) {
        let logits = &logits.contiguous()?;
        // labels as i32 bit patterns (-100: ignored)
        let lab: Vec<u32> = labels.iter().map(|&l| l as i32 as u32).collect();
        let lab = Tensor::from_vec(lab, n, &Device::Cpu)?.to_device(logits.device())?;
        let loss = cuda::ce_rows(&logits.detach(), &lab)?.sum_all()?;
        let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
            Ok(vec![Some(cuda::ce_bwd(&a[0].detach(), &lab, g)?)])
        });
        let _ = v;
        return attach(&[logits], loss, bwd);
    }
    let dev = logits.device().clone();
    let keep: Vec<f32> = labels
        .iter()
        .map(|&l| if l < 0 { 0.0 } else { 1.0 })
        .collect();
    let idx: Vec<u32> = labels
        .iter()
        .map(|&l| if l < 0 { 0 } else { l as u32 })
        .collect();
    let keep = Tensor::from_vec(keep, (n, 1), &Device::Cpu)?.to_device(&dev)?;
    let idx = Tensor::from_vec(idx, (n, 1), &Device::Cpu)?.to_device(&dev)?;
    // rows in chunks, so the f32 copies of the logits stay small
    let chunk = (chunk_bytes() / (v * 4)).clamp(1, n.max(1));
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    let ld = logits.detach();
    let mut loss = Tensor::zeros((), DType::F32, &dev)?;
    for &s in &starts {
        let len = chunk.min(n - s);
        let (z, ls) = shifted_lse(&ld.narrow(0, s, len)?)?;
        let picked = z.gather(&idx.narrow(0, s, len)?, 1)?;
        loss = (loss + ls.sub(&picked)?.mul(&keep.narrow(0, s, len)?)?.sum_all()?)?;
    }
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let gf = g.to_dtype(DType::F32)?;
        let ld = a[0].detach();
        let mut parts = Vec::with_capacity(starts.len());
        for &s in &starts {
            let len = chunk.min(n - s);
            let (z, ls) = shifted_lse(&ld.narrow(0, s, len)?)?;
            let p = z.broadcast_sub(&ls)?.exp()?;
            let ones = Tensor::ones((len, 1), DType::F32, &dev)?;
            let onehot = Tensor::zeros((len, v), DType::F32, &dev)?.scatter_add(
                &idx.narrow(0, s, len)?,
                &ones,
                1,
            )?;
            let d = (p - onehot)?
                .broadcast_mul(&keep.narrow(0, s, len)?)?
                .broadcast_mul(&gf)?;
            parts.push(d.to_dtype(a[0].dtype())?);
        }
        Ok(vec![Some(Tensor::cat(&parts, 0)?)])
    });
    attach(&[logits], loss, bwd)
}

struct CrossEntropy {
    labels: Arc<Vec<i64>>,
}

/// log Σ exp(row), the exponentials summed in f64: summed in f32 one after another, the terms of
/// a large vocabulary that fall below half an ulp of the running sum are dropped, which biases the
/// sum low (by ~1e-4 over SmolLM2's 49k entries: that much loss error, and through the softmax a
/// bias in every gradient).
fn lse(row: &[f32]) -> f64 {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|x| (x - mx).exp() as f64).sum();
    mx as f64 + s.ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "ftl-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l)?;
        let v = l.dims()[1];
        let total: f64 = x
            .par_chunks(v)
            .zip(self.labels.par_iter())
            .map(|(row, &lab)| {
                if lab < 0 {
                    0.0
                } else {
                    lse(row) - row[lab as usize] as f64
                }
            })
            // added in order: rayon's sum depends on its scheduling (exact resume needs repeats)
            .collect::<Vec<f64>>()
            .into_iter()
            .sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !super::needs_grad(x) {
            return Ok(None);
        }
        let gs: f32 = g
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_scalar()?;
        let v = x.dim(1)?;
        with_f32(x, |x_| {
            let mut d = super::zeros(x_.len());
            d.par_chunks_mut(v)
                .zip(x_.par_chunks(v).zip(self.labels.par_iter()))
                .for_each(|(dr, (row, &lab))| {
                    if lab < 0 {
                        return;
                    }
                    let m = lse(row);
                    for j in 0..v {
                        dr[j] = ((row[j] as f64 - m) as f32).exp() * gs;
                    }
                    dr[lab as usize] -= gs;
                });
            super::from_vec(d, x.shape()).map(Some)
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Cross-entropy's launchers (`ce_fwd`, `ce_bwd` in kernels.cu).

    use crate::ops::cuda::{args, dev_of, func, rows_cfg, typed, view, wrap};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{DType, Result, Tensor};

    /// Per-row cross-entropy `lse − x[label]` (0 where label < 0) `[n]` f32; labels i32 on the device.
    pub(super) fn ce_rows(x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (n, v) = x.dims2()?;
        let labels = labels.contiguous()?;
        let (gl, _) = labels.storage_and_layout();
        let lv = view!(gl, labels, u32);
        let f = func(&dev, "ce_fwd", x.dtype())?;
        let v_ = v as i32;
        typed!(x, |xv: _Ty| {
            let dst = unsafe { dev.alloc::<f32>(n)? };
            let mut b = f.builder();
            args!(b, &xv, &lv, &dst, &v_);
            unsafe { b.launch(rows_cfg(n, v)) }.w()?;
            Ok(wrap(dst, &dev, n))
        })
    }

    /// `(softmax(x) − onehot(label)) · g` per row (0 for ignored rows); `g` a 1-element f32 tensor.
    pub(super) fn ce_bwd(x: &Tensor, labels: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (n, v) = x.dims2()?;
        let labels = labels.contiguous()?;
        let g = g.to_dtype(DType::F32)?.reshape(1)?.contiguous()?;
        let (gl, _) = labels.storage_and_layout();
        let lv = view!(gl, labels, u32);
        let (gg, _) = g.storage_and_layout();
        let gv = view!(gg, g, f32);
        let f = func(&dev, "ce_bwd", x.dtype())?;
        let v_ = v as i32;
        typed!(x, |xv: Ty| {
            let dst = unsafe { dev.alloc::<Ty>(n * v)? };
            let mut b = f.builder();
            args!(b, &xv, &lv, &gv, &dst, &v_);
            unsafe { b.launch(rows_cfg(n, v)) }.w()?;
            Ok(wrap(dst, &dev, (n, v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn cross_entropy_fused_matches_composed() -> Result<()> {
        let x = var(&[6, 11], 1)?;
        let labels = [3, -100, 0, 10, -100, 5];
        check_fused_vs_composed(&[&x], || cross_entropy_sum(x.as_tensor(), &labels), 1e-5)
    }

    /// A 49k vocabulary whose tail is tiny next to the top logits (as a trained LM's is): the loss
    /// and its gradient as in f64, on the fused and the device path.
    #[test]
    fn large_vocabulary_is_summed_without_bias() -> Result<()> {
        let (n, v) = (3, 49152);
        let mut x = vec![-16f32; n * v];
        for r in 0..n {
            x[r * v + r] = 0.0;
            x[r * v + 7 + r] = -3.0;
        }
        let labels = [0i64, 7, 100];
        let want: f64 = (0..n)
            .map(|r| {
                let row = &x[r * v..(r + 1) * v];
                let s: f64 = row.iter().map(|&a| (a as f64).exp()).sum();
                s.ln() - row[labels[r] as usize] as f64
            })
            .sum();
        for path in [super::super::Path::Auto, super::super::Path::Device] {
            super::super::set_path(path);
            let t = candle_core::Var::from_vec(x.clone(), (n, v), &Device::Cpu)?;
            let loss = cross_entropy_sum(t.as_tensor(), &labels)?;
            let got = loss.to_scalar::<f32>()? as f64;
            let g = loss
                .backward()?
                .get(t.as_tensor())
                .unwrap()
                .to_vec2::<f32>()?;
            super::super::set_path(super::super::Path::Auto);
            assert!((got - want).abs() < 1e-5, "{path:?}: loss {got} vs {want}");
            for r in 0..n {
                let row = &x[r * v..(r + 1) * v];
                let s: f64 = row.iter().map(|&a| (a as f64).exp()).sum();
                // the gradient of the tail entries: softmax = e^-16 / Σ
                let p = (-16f64).exp() / s;
                let j = if r == 2 { 50 } else { 100 };
                let e = (g[r][j] as f64 - p).abs() / p;
                assert!(e < 1e-5, "{path:?}: row {r} tail gradient off by {e}");
            }
        }
        Ok(())
    }
}
