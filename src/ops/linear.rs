//! `y = x·Wᵀ + b` whose backward skips the weight (and bias) gradient when they are frozen.

use super::{fused, gemm_f32, needs_grad, slice_f32, with_f32};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `x` is `[.., in]`; `w` is `[out, in]`, or `[in, out]` when `transposed` (GPT-2's Conv1D).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    if fused(x) && fused(w) {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let op = LinearOp { transposed };
        return match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
            None => x.apply_op2(&w, op),
        };
    }
    composed(x, w, b, transposed)
}

fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    let wt = if transposed { w.clone() } else { w.t()? };
    let y = x.broadcast_matmul(&wt)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[derive(Clone, Copy)]
struct LinearOp {
    transposed: bool,
}

impl LinearOp {
    fn dims(&self, x: &Layout, w: &Layout) -> Result<(usize, usize, usize, Shape)> {
        let k = x.dims()[x.dims().len() - 1];
        let m = x.shape().elem_count() / k.max(1);
        let (wo, wi) = (w.dims()[0], w.dims()[1]);
        let (n, wk) = if self.transposed { (wi, wo) } else { (wo, wi) };
        if wk != k {
            candle_core::bail!("linear: input has {k} features, weight {:?}", w.dims());
        }
        let mut out = x.dims().to_vec();
        *out.last_mut().unwrap() = n;
        Ok((m, n, k, Shape::from(out)))
    }

    /// Strides of Wᵀ viewed as a [k, n] matrix.
    fn wt_strides(&self, n: usize, k: usize) -> (isize, isize) {
        if self.transposed {
            (n as isize, 1)
        } else {
            (1, k as isize)
        }
    }

    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut y = super::zeros(m * n);
        if let Some(b) = b {
            y.par_chunks_mut(n).for_each(|row| row.copy_from_slice(b));
        }
        let (rs, cs) = self.wt_strides(n, k);
        unsafe {
            gemm_f32(
                m,
                n,
                k,
                y.as_mut_ptr(),
                n as isize,
                1,
                b.is_some(),
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                rs,
                cs,
                1.0,
            )
        }
        y
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let k = x.dim(D::Minus1)?;
        let m = x.elem_count() / k.max(1);
        let n = g.dim(D::Minus1)?;
        with_f32(g, |g_| {
            let gx = if needs_grad(x) {
                let mut gx = super::zeros(m * k);
                // dX[m,k] = G[m,n]·W viewed as [n,k]
                let (rs, cs) = if self.transposed {
                    (1, n as isize)
                } else {
                    (k as isize, 1)
                };
                with_f32(w, |w_| {
                    unsafe {
                        gemm_f32(
                            m,
                            k,
                            n,
                            gx.as_mut_ptr(),
                            k as isize,
                            1,
                            false,
                            g_.as_ptr(),
                            n as isize,
                            1,
                            w_.as_ptr(),
                            rs,
                            cs,
                            1.0,
                        )
                    }
                    Ok(())
                })?;
                Some(super::from_vec(gx, x.shape())?)
            } else {
                None
            };
            let gw = if needs_grad(w) {
                let mut gw = super::zeros(n * k);
                with_f32(x, |x_| {
                    unsafe {
                        if self.transposed {
                            // dW[k,n] = Xᵀ[k,m]·G[m,n]
                            gemm_f32(
                                k,
                                n,
                                m,
                                gw.as_mut_ptr(),
                                n as isize,
                                1,
                                false,
                                x_.as_ptr(),
                                1,
                                k as isize,
                                g_.as_ptr(),
                                n as isize,
                                1,
                                1.0,
                            )
                        } else {
                            // dW[n,k] = Gᵀ[n,m]·X[m,k]
                            gemm_f32(
                                n,
                                k,
                                m,
                                gw.as_mut_ptr(),
                                k as isize,
                                1,
                                false,
                                g_.as_ptr(),
                                1,
                                n as isize,
                                x_.as_ptr(),
                                k as isize,
                                1,
                                1.0,
                            )
                        }
                    }
                    Ok(())
                })?;
                Some(super::from_vec(gw, w.shape())?)
            } else {
                None
            };
            let gb = match b {
                Some(b) if needs_grad(b) => Some(super::from_vec(col_sums(g_, n), b.shape())?),
                _ => None,
            };
            Ok((gx, gw, gb))
        })
    }
}

/// Column sums of a row-major [rows, n] matrix, in parallel over row blocks.
pub(crate) fn col_sums(g: &[f32], n: usize) -> Vec<f32> {
    let rows = g.len() / n.max(1);
    let block = rows.div_ceil(super::threads()).max(1);
    g.par_chunks(block * n)
        .map(|c| {
            let mut acc = vec![0f32; n];
            for row in c.chunks(n) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![0f32; n],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "ftl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, n, k, shape) = self.dims(l1, l2)?;
        let y = self.forward(slice_f32(s1, l1)?, slice_f32(s2, l2)?, None, m, n, k);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.backward(x, w, None, g)?;
        Ok((gx, gw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "ftl-linear-bias"
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
        let (m, n, k, shape) = self.dims(l1, l2)?;
        let b = slice_f32(s3, l3)?;
        if b.len() != n {
            candle_core::bail!("linear: bias has {} entries, output {n}", b.len());
        }
        let y = self.forward(slice_f32(s1, l1)?, slice_f32(s2, l2)?, Some(b), m, n, k);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), g)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn fused_matches_composed_both_layouts() -> Result<()> {
        for transposed in [false, true] {
            let x = var(&[2, 5, 7], 1)?;
            let w = var(if transposed { &[7, 3] } else { &[3, 7] }, 2)?;
            let b = var(&[3], 3)?;
            check_fused_vs_composed(
                &[&x, &w, &b],
                || {
                    linear(
                        x.as_tensor(),
                        w.as_tensor(),
                        Some(b.as_tensor()),
                        transposed,
                    )
                },
                1e-5,
            )?;
            check_fused_vs_composed(
                &[&x, &w],
                || linear(x.as_tensor(), w.as_tensor(), None, transposed),
                1e-5,
            )?;
        }
        Ok(())
    }

    #[test]
    fn frozen_weight_gets_no_gradient() -> Result<()> {
        let x = var(&[4, 6], 1)?;
        let w = randn(&[5, 6], 2)?;
        let y = linear(x.as_tensor(), &w, None, false)?;
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&w).is_none());
        assert!(g.get(x.as_tensor()).is_some());
        Ok(())
    }
}
