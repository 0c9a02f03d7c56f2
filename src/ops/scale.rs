//! IA3's per-feature scaling `x · v` over the last dimension, fused on the CPU (one pass forward,
//! one pass backward for both gradients) instead of a broadcast multiply and its backward.

use super::{needs_grad, slice_f32, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn scale_last_fused_matches_composed() -> candle_core::Result<()> {
        let x = var(&[3, 7, 40], 1)?;
        let v = var(&[40], 2)?;
        check_fused_vs_composed(
            &[&x, &v],
            || super::super::scale_last(x.as_tensor(), v.as_tensor()),
            1e-6,
        )
    }
}
