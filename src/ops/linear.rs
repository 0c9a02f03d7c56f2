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
    if super::composed_only() {
        return composed(x, w, b, transposed);
    }
    super::generic::linear(x, w, b, transposed)
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

    /// `dX[m,k] = G[m,n]·W` (W viewed as `[n,k]`).
    fn dx(&self, g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut gx = super::zeros(m * k);
        let (rs, cs) = if self.transposed {
            (1, n as isize)
        } else {
            (k as isize, 1)
        };
        unsafe {
            gemm_f32(
                m,
                k,
                n,
                gx.as_mut_ptr(),
                k as isize,
                1,
                false,
                g.as_ptr(),
                n as isize,
                1,
                w.as_ptr(),
                rs,
                cs,
                1.0,
            )
        }
        gx
    }

    /// The weight gradient in the weight's layout: `Gᵀ·X` (`[n,k]`) or `Xᵀ·G` (`[k,n]`).
    fn dw(&self, g: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut gw = super::zeros(n * k);
        unsafe {
            if self.transposed {
                gemm_f32(
                    k,
                    n,
                    m,
                    gw.as_mut_ptr(),
                    n as isize,
                    1,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    g.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                )
            } else {
                gemm_f32(
                    n,
                    k,
                    m,
                    gw.as_mut_ptr(),
                    k as isize,
                    1,
                    false,
                    g.as_ptr(),
                    1,
                    n as isize,
                    x.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                )
            }
        }
        gw
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
                let gx = with_f32(w, |w_| Ok(self.dx(g_, w_, m, n, k)))?;
                Some(super::from_vec(gx, x.shape())?)
            } else {
                None
            };
            let gw = if needs_grad(w) {
                let gw = with_f32(x, |x_| Ok(self.dw(g_, x_, m, n, k)))?;
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

/// `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` in one op: LoRA without keeping the branch's intermediate
/// outputs for the backward pass (it recomputes the small `x·Aᵀ`). `a` is `[r, in]`, `bm`
/// `[out, r]`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    transposed: bool,
) -> Result<Tensor> {
    if !(fused(x) && fused(w) && fused(a)) {
        return super::generic::lora_linear(x, w, b, a, bm, scale, transposed);
    }
    let r = a.dim(0)?;
    let mut parts = vec![a.flatten_all()?, bm.flatten_all()?];
    if let Some(b) = b {
        parts.push(b.flatten_all()?);
    }
    let pack = Tensor::cat(&parts, 0)?;
    let op = LoraLinearOp {
        lin: LinearOp { transposed },
        r,
        scale: scale as f32,
        bias: b.is_some(),
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &pack, op)
}

struct LoraLinearOp {
    lin: LinearOp,
    r: usize,
    scale: f32,
    bias: bool,
}

impl LoraLinearOp {
    /// (A, B, bias) views of the packed parameters.
    fn unpack<'a>(
        &self,
        p: &'a [f32],
        n: usize,
        k: usize,
    ) -> (&'a [f32], &'a [f32], Option<&'a [f32]>) {
        let r = self.r;
        let (a, rest) = p.split_at(r * k);
        let (b, rest) = rest.split_at(n * r);
        (a, b, if self.bias { Some(&rest[..n]) } else { None })
    }

    /// `h = x·Aᵀ` `[m, r]`.
    fn h(&self, x: &[f32], a: &[f32], m: usize, k: usize) -> Vec<f32> {
        let r = self.r;
        let mut h = super::zeros(m * r);
        unsafe {
            gemm_f32(
                m,
                r,
                k,
                h.as_mut_ptr(),
                r as isize,
                1,
                false,
                x.as_ptr(),
                k as isize,
                1,
                a.as_ptr(),
                1,
                k as isize,
                1.0,
            )
        }
        h
    }
}

impl CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "ftl-lora-linear"
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
        let (m, n, k, shape) = self.lin.dims(l1, l2)?;
        let (x, w, p) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?, slice_f32(s3, l3)?);
        if p.len() != self.r * (k + n) + if self.bias { n } else { 0 } {
            candle_core::bail!("lora_linear: packed parameters do not fit the layer");
        }
        let (a, bm, bias) = self.unpack(p, n, k);
        let mut y = self.lin.forward(x, w, bias, m, n, k);
        let h = self.h(x, a, m, k);
        let r = self.r;
        // y += s·h·Bᵀ
        unsafe {
            gemm_f32(
                m,
                n,
                r,
                y.as_mut_ptr(),
                n as isize,
                1,
                true,
                h.as_ptr(),
                r as isize,
                1,
                bm.as_ptr(),
                1,
                r as isize,
                self.scale,
            )
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        pack: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let k = x.dim(D::Minus1)?;
        let m = x.elem_count() / k.max(1);
        let n = g.dim(D::Minus1)?;
        let r = self.r;
        let s = self.scale;
        let need_pack = needs_grad(pack);
        let need_x = needs_grad(x);
        let gx = with_f32(x, |x_| {
            with_f32(g, |g_| {
                with_f32(pack, |p_| {
                    let (a, bm, _) = self.unpack(p_, n, k);
                    let h = self.h(x_, a, m, k);
                    // dh = s·g·B  [m, r]
                    let mut dh = super::zeros(m * r);
                    unsafe {
                        gemm_f32(
                            m,
                            r,
                            n,
                            dh.as_mut_ptr(),
                            r as isize,
                            1,
                            false,
                            g_.as_ptr(),
                            n as isize,
                            1,
                            bm.as_ptr(),
                            r as isize,
                            1,
                            s,
                        )
                    }
                    let gw = if needs_grad(w) {
                        Some(super::from_vec(self.lin.dw(g_, x_, m, n, k), w.shape())?)
                    } else {
                        None
                    };
                    let gx = if need_x {
                        // dx = g·W + dh·A
                        let mut v = with_f32(w, |w_| Ok(self.lin.dx(g_, w_, m, n, k)))?;
                        unsafe {
                            gemm_f32(
                                m,
                                k,
                                r,
                                v.as_mut_ptr(),
                                k as isize,
                                1,
                                true,
                                dh.as_ptr(),
                                r as isize,
                                1,
                                a.as_ptr(),
                                k as isize,
                                1,
                                1.0,
                            )
                        }
                        Some(super::from_vec(v, x.shape())?)
                    } else {
                        None
                    };
                    let gpack = if need_pack {
                        let mut gp = super::zeros(p_.len());
                        let (ga, rest) = gp.split_at_mut(r * k);
                        let (gb, gbias) = rest.split_at_mut(n * r);
                        unsafe {
                            // dA = dhᵀ·x  [r, k]
                            gemm_f32(
                                r,
                                k,
                                m,
                                ga.as_mut_ptr(),
                                k as isize,
                                1,
                                false,
                                dh.as_ptr(),
                                1,
                                r as isize,
                                x_.as_ptr(),
                                k as isize,
                                1,
                                1.0,
                            );
                            // dB = s·gᵀ·h  [n, r]
                            gemm_f32(
                                n,
                                r,
                                m,
                                gb.as_mut_ptr(),
                                r as isize,
                                1,
                                false,
                                g_.as_ptr(),
                                1,
                                n as isize,
                                h.as_ptr(),
                                r as isize,
                                1,
                                s,
                            );
                        }
                        if self.bias {
                            gbias.copy_from_slice(&col_sums(g_, n));
                        }
                        Some(super::from_vec(gp, pack.shape())?)
                    } else {
                        None
                    };
                    Ok((gx, gw, gpack))
                })
            })
        })?;
        Ok((gx.0, gx.1, gx.2))
    }
}

#[cfg(test)]
mod lora_tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn fused_lora_matches_composed() -> Result<()> {
        for (transposed, bias) in [(false, false), (false, true), (true, true)] {
            let x = var(&[2, 5, 7], 1)?;
            let w = var(if transposed { &[7, 6] } else { &[6, 7] }, 2)?;
            let b = var(&[6], 3)?;
            let a = var(&[3, 7], 4)?;
            let bm = var(&[6, 3], 5)?;
            let f = || -> Result<Tensor> {
                let bb = if bias { Some(b.as_tensor()) } else { None };
                if super::super::fused(x.as_tensor()) {
                    lora_linear(
                        x.as_tensor(),
                        w.as_tensor(),
                        bb,
                        a.as_tensor(),
                        bm.as_tensor(),
                        0.7,
                        transposed,
                    )
                } else {
                    let y = linear(x.as_tensor(), w.as_tensor(), bb, transposed)?;
                    let d = linear(
                        &linear(x.as_tensor(), a.as_tensor(), None, false)?,
                        bm.as_tensor(),
                        None,
                        false,
                    )?;
                    y + (d * 0.7)?
                }
            };
            let vars: Vec<&candle_core::Var> = if bias {
                vec![&x, &w, &b, &a, &bm]
            } else {
                vec![&x, &w, &a, &bm]
            };
            check_fused_vs_composed(&vars, f, 1e-5)?;
        }
        Ok(())
    }
}
