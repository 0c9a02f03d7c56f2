//! Cross-entropy summed over the labelled rows (label `IGNORE_INDEX` skipped), so that a caller
//! can divide by the token count of a whole accumulated batch.

use super::{fused, slice_f32, with_f32};
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
    if fused(logits) {
        return logits.contiguous()?.apply_op1(CrossEntropy {
            labels: Arc::new(labels.to_vec()),
        });
    }
    if !super::composed_only() {
        return super::generic::cross_entropy_sum(logits, labels);
    }
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
