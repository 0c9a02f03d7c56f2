//! Scaled dot-product attention with causal / padding / sliding-window masks and GQA, fused on
//! the CPU (probabilities kept for the backward pass), composed elsewhere.

use super::{fused, gemm_f32, needs_grad, slice_f32, with_f32, SendPtr};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Which keys each query may see. Query `i` sits at absolute position `offset + i`, key `j` at `j`.
#[derive(Clone, Debug, Default)]
pub struct AttnMask {
    pub causal: bool,
    pub offset: usize,
    /// `[batch, keys]`, 1 = attend; None = every key valid.
    pub key_valid: Option<Arc<Vec<u8>>>,
    /// Sliding window (Mistral): query at position p sees keys with `p - j < window`.
    pub window: Option<usize>,
    /// the device path's additive bias, built once per mask and shared by its clones
    #[allow(clippy::type_complexity)]
    pub(crate) cache: Arc<Mutex<Option<((usize, usize, usize, String), Tensor, Tensor)>>>,
    /// the kernels' key mask `[b, tk]` (u8) on the device
    #[allow(clippy::type_complexity)]
    pub(crate) kv_cache: Arc<Mutex<Option<((usize, usize, String), Tensor)>>>,
}

impl AttnMask {
    pub fn new(
        causal: bool,
        offset: usize,
        key_valid: Option<Arc<Vec<u8>>>,
        window: Option<usize>,
    ) -> Self {
        AttnMask {
            causal,
            offset,
            key_valid,
            window,
            cache: Default::default(),
            kv_cache: Default::default(),
        }
    }

    #[inline]
    pub(crate) fn visible(&self, b: usize, tk: usize, i: usize, j: usize) -> bool {
        let p = self.offset + i;
        if self.causal && j > p {
            return false;
        }
        if let Some(w) = self.window {
            if p >= j + w {
                return false;
            }
        }
        match &self.key_valid {
            Some(kv) => kv[b * tk + j] != 0,
            None => true,
        }
    }

    /// Additive bias `[batch, 1, tq, tk]` (`f32::MIN` for hidden keys) and the `[batch, 1, tq, 1]`
    /// 0/1 factor that zeroes queries with no visible key (as sdpa does).
    pub(super) fn bias(
        &self,
        b: usize,
        tq: usize,
        tk: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut v = vec![0f32; b * tq * tk];
        let mut rows = vec![0f32; b * tq];
        for bi in 0..b {
            for i in 0..tq {
                for j in 0..tk {
                    if self.visible(bi, tk, i, j) {
                        rows[bi * tq + i] = 1.0;
                    } else {
                        v[(bi * tq + i) * tk + j] = f32::MIN;
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(v, (b, 1, tq, tk), &Device::Cpu)?.to_device(dev)?,
            Tensor::from_vec(rows, (b, 1, tq, 1), &Device::Cpu)?.to_device(dev)?,
        ))
    }
}

/// `q` `[b, tq, h, d]`, `k`/`v` `[b, tk, hkv, d]` → `[b, tq, h, d]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f32,
) -> Result<Tensor> {
    let (b, _, h, d) = q.dims4()?;
    let (bk, tk, hkv, dk) = k.dims4()?;
    if bk != b || dk != d || v.dims4()? != (b, tk, hkv, d) || h % hkv != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if let Some(kv) = &mask.key_valid {
        if kv.len() != b * tk {
            candle_core::bail!(
                "attention: mask covers {} keys, expected {}",
                kv.len(),
                b * tk
            );
        }
    }
    if fused(q) && fused(k) && fused(v) {
        let save = needs_grad(q) || needs_grad(k) || needs_grad(v);
        let op = Attn {
            mask: mask.clone(),
            scale,
            probs: Mutex::new(None),
            save,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    if super::composed_only() {
        return composed(q, k, v, mask, scale);
    }
    super::generic::attention(q, k, v, mask, scale)
}

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f32) -> Result<Tensor> {
    let (b, tq, h, d) = q.dims4()?;
    let (_, tk, hkv, _) = k.dims4()?;
    let rep = h / hkv;
    let expand = |t: &Tensor| -> Result<Tensor> {
        let t = t.transpose(1, 2)?; // [b, hkv, tk, d]
        if rep == 1 {
            return Ok(t);
        }
        t.unsqueeze(2)?
            .expand((b, hkv, rep, tk, d))?
            .reshape((b, h, tk, d))
    };
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = expand(k)?.contiguous()?;
    let v = expand(v)?.contiguous()?;
    let s = (q.matmul(&k.t()?)? * scale as f64)?;
    let s = s.to_dtype(DType::F32)?;
    let (bias, rows) = mask.bias(b, tq, tk, q.device())?;
    let s = s.broadcast_add(&bias)?;
    let p = candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.broadcast_mul(&rows)?;
    let p = p.to_dtype(q.dtype())?;
    p.matmul(&v)?.transpose(1, 2)
}

struct Attn {
    mask: AttnMask,
    scale: f32,
    probs: Mutex<Option<Arc<Vec<f32>>>>,
    save: bool,
}

struct Dims {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    hkv: usize,
    d: usize,
}

impl Attn {
    /// Scores → probabilities for one (batch, head), in place on `s` (`[tq, tk]`).
    fn softmax_rows(&self, s: &mut [f32], bi: usize, tq: usize, tk: usize) {
        for i in 0..tq {
            let row = &mut s[i * tk..(i + 1) * tk];
            let mut mx = f32::NEG_INFINITY;
            for (j, x) in row.iter_mut().enumerate() {
                if self.mask.visible(bi, tk, i, j) {
                    *x *= self.scale;
                    mx = mx.max(*x);
                } else {
                    *x = f32::NEG_INFINITY;
                }
            }
            if mx == f32::NEG_INFINITY {
                // no visible key (a padded query): sdpa, HF's default, gives an output of zero
                row.fill(0.0);
                continue;
            }
            // summed in f64: over a long context an f32 running sum drops the smallest terms
            let mut sum = 0f64;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                sum += *x as f64;
            }
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32], dm: &Dims) -> (Vec<f32>, Option<Vec<f32>>) {
        let Dims {
            b,
            tq,
            tk,
            h,
            hkv,
            d,
        } = *dm;
        let rep = h / hkv;
        let mut out = super::zeros(b * tq * h * d);
        let mut probs = super::zeros(b * h * tq * tk);
        let optr = SendPtr(out.as_mut_ptr());
        probs
            .par_chunks_mut(tq * tk)
            .enumerate()
            .for_each(|(bh, p)| {
                let (bi, hi) = (bh / h, bh % h);
                let g = hi / rep;
                let qp = unsafe { q.as_ptr().add((bi * tq * h + hi) * d) };
                let kp = unsafe { k.as_ptr().add((bi * tk * hkv + g) * d) };
                let vp = unsafe { v.as_ptr().add((bi * tk * hkv + g) * d) };
                unsafe {
                    // S[tq,tk] = Q[tq,d]·Kᵀ[d,tk]
                    gemm_f32(
                        tq,
                        tk,
                        d,
                        p.as_mut_ptr(),
                        tk as isize,
                        1,
                        false,
                        qp,
                        (h * d) as isize,
                        1,
                        kp,
                        1,
                        (hkv * d) as isize,
                        1.0,
                    );
                }
                self.softmax_rows(p, bi, tq, tk);
                let op = optr;
                unsafe {
                    // O[tq,d] = P[tq,tk]·V[tk,d], written at its [b, tq, h, d] place
                    gemm_f32(
                        tq,
                        d,
                        tk,
                        op.0.add((bi * tq * h + hi) * d),
                        (h * d) as isize,
                        1,
                        false,
                        p.as_ptr(),
                        tk as isize,
                        1,
                        vp,
                        (hkv * d) as isize,
                        1,
                        1.0,
                    );
                }
            });
        (out, if self.save { Some(probs) } else { None })
    }
}

impl CustomOp3 for Attn {
    fn name(&self) -> &'static str {
        "ftl-attention"
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
        let (b, tq, h, d) = l1.shape().dims4()?;
        let (_, tk, hkv, _) = l2.shape().dims4()?;
        let dm = Dims {
            b,
            tq,
            tk,
            h,
            hkv,
            d,
        };
        let (out, probs) = self.forward(
            slice_f32(s1, l1)?,
            slice_f32(s2, l2)?,
            slice_f32(s3, l3)?,
            &dm,
        );
        *self.probs.lock().unwrap() = probs.map(Arc::new);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        go: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, tq, h, d) = q.dims4()?;
        let (_, tk, hkv, _) = k.dims4()?;
        let rep = h / hkv;
        let probs = match self.probs.lock().unwrap().clone() {
            Some(p) => p,
            None => candle_core::bail!("attention backward without saved probabilities"),
        };
        let mut dq = super::zeros(b * tq * h * d);
        let mut dk = super::zeros(b * tk * hkv * d);
        let mut dv = super::zeros(b * tk * hkv * d);
        let (dqp, dkp, dvp) = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        let scale = self.scale;
        with_f32(q, |q_| {
            with_f32(k, |k_| {
                with_f32(v, |v_| {
                    with_f32(go, |go_| {
                        (0..b * hkv).into_par_iter().for_each(|bg| {
                            let (bi, g) = (bg / hkv, bg % hkv);
                            let (dqp, dkp, dvp) = (dqp, dkp, dvp);
                            let mut dp = vec![0f32; tq * tk];
                            let koff = (bi * tk * hkv + g) * d;
                            for hi in g * rep..(g + 1) * rep {
                                let p =
                                    &probs[(bi * h + hi) * tq * tk..(bi * h + hi + 1) * tq * tk];
                                let qoff = (bi * tq * h + hi) * d;
                                unsafe {
                                    // dV[tk,d] += Pᵀ[tk,tq]·dO[tq,d]
                                    gemm_f32(
                                        tk,
                                        d,
                                        tq,
                                        dvp.0.add(koff),
                                        (hkv * d) as isize,
                                        1,
                                        true,
                                        p.as_ptr(),
                                        1,
                                        tk as isize,
                                        go_.as_ptr().add(qoff),
                                        (h * d) as isize,
                                        1,
                                        1.0,
                                    );
                                    // dP[tq,tk] = dO[tq,d]·Vᵀ[d,tk]
                                    gemm_f32(
                                        tq,
                                        tk,
                                        d,
                                        dp.as_mut_ptr(),
                                        tk as isize,
                                        1,
                                        false,
                                        go_.as_ptr().add(qoff),
                                        (h * d) as isize,
                                        1,
                                        v_.as_ptr().add(koff),
                                        1,
                                        (hkv * d) as isize,
                                        1.0,
                                    );
                                }
                                // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale
                                for i in 0..tq {
                                    let pr = &p[i * tk..(i + 1) * tk];
                                    let dr = &mut dp[i * tk..(i + 1) * tk];
                                    let dot = pr
                                        .iter()
                                        .zip(dr.iter())
                                        .map(|(a, b)| (a * b) as f64)
                                        .sum::<f64>()
                                        as f32;
                                    for j in 0..tk {
                                        dr[j] = pr[j] * (dr[j] - dot) * scale;
                                    }
                                }
                                unsafe {
                                    // dQ[tq,d] = dS[tq,tk]·K[tk,d]
                                    gemm_f32(
                                        tq,
                                        d,
                                        tk,
                                        dqp.0.add(qoff),
                                        (h * d) as isize,
                                        1,
                                        false,
                                        dp.as_ptr(),
                                        tk as isize,
                                        1,
                                        k_.as_ptr().add(koff),
                                        (hkv * d) as isize,
                                        1,
                                        1.0,
                                    );
                                    // dK[tk,d] += dSᵀ[tk,tq]·Q[tq,d]
                                    gemm_f32(
                                        tk,
                                        d,
                                        tq,
                                        dkp.0.add(koff),
                                        (hkv * d) as isize,
                                        1,
                                        true,
                                        dp.as_ptr(),
                                        1,
                                        tk as isize,
                                        q_.as_ptr().add(qoff),
                                        (h * d) as isize,
                                        1,
                                        1.0,
                                    );
                                }
                            }
                        });
                        Ok(())
                    })
                })
            })
        })?;
        let mk = |v: Vec<f32>, t: &Tensor| -> Result<Option<Tensor>> {
            if needs_grad(t) {
                super::from_vec(v, t.shape()).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok((mk(dq, q)?, mk(dk, k)?, mk(dv, v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// A long context whose keys are all alike but one: the probabilities as in f64 (an f32
    /// running sum of 4k equal small terms rounds every addition the same way).
    #[test]
    fn long_rows_are_summed_without_bias() -> Result<()> {
        let (tk, d) = (4096, 2);
        let q = Tensor::from_vec(vec![1f32, 0.0], (1, 1, 1, d), &Device::Cpu)?;
        let mut kv = vec![0f32; tk * d];
        kv[0] = 14.0;
        let k = Tensor::from_vec(kv, (1, tk, 1, d), &Device::Cpu)?;
        // values: 1 for the first key, 0 elsewhere, so the output is its probability
        let mut vv = vec![0f32; tk * d];
        vv[0] = 1.0;
        let v = Tensor::from_vec(vv, (1, tk, 1, d), &Device::Cpu)?;
        let want = 1.0 / (1.0 + (tk - 1) as f64 * (-14f64).exp());
        let m = AttnMask::default();
        let got = attention(&q, &k, &v, &m, 1.0)?
            .flatten_all()?
            .to_vec1::<f32>()?[0] as f64;
        assert!(
            (got - want).abs() / (1.0 - want) < 1e-4,
            "first key's probability {got} vs {want}"
        );
        Ok(())
    }

    #[test]
    fn attention_fused_matches_composed() -> Result<()> {
        let q = var(&[2, 5, 4, 8], 1)?;
        let k = var(&[2, 7, 2, 8], 2)?;
        let v = var(&[2, 7, 2, 8], 3)?;
        let masks = [
            AttnMask {
                causal: true,
                offset: 2,
                ..Default::default()
            },
            AttnMask {
                causal: true,
                offset: 2,
                key_valid: Some(Arc::new(vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])),
                window: Some(3),
                ..Default::default()
            },
            AttnMask {
                causal: false,
                offset: 0,
                key_valid: Some(Arc::new(vec![1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])),
                window: None,
                ..Default::default()
            },
            // every key of row 1 hidden: zero output
            AttnMask {
                causal: false,
                offset: 0,
                key_valid: Some(Arc::new(vec![1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
                window: None,
                ..Default::default()
            },
        ];
        for m in masks {
            check_fused_vs_composed(
                &[&q, &k, &v],
                || attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &m, 0.3),
                1e-5,
            )?;
        }
        Ok(())
    }
}
