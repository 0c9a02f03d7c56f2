//! Scaled dot-product attention with causal / padding / sliding-window masks and GQA: the
//! composed reference, the fused CPU kernel (probabilities kept for the backward pass), the device
//! path (recomputing them) and its CUDA kernels (masked softmax, flash attention).

use super::device::{attach_fresh, chunk_bytes};
use super::tape::Bwd;
use super::{backend, gemm_f32, kernels, needs_grad, slice_f32, with_f32, Backend, SendPtr};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
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

impl AttnMask {
    /// The key mask `[b, tk]` as u8 on `dev` (all ones without padding), once per mask.
    fn device_key_valid(&self, b: usize, tk: usize, dev: &Device) -> Result<Tensor> {
        let key = (b, tk, format!("{:?}", dev.location()));
        let mut cache = self.kv_cache.lock().unwrap();
        if let Some((k, t)) = cache.as_ref() {
            if *k == key {
                return Ok(t.clone());
            }
        }
        let v: Vec<u8> = match &self.key_valid {
            Some(kv) => kv.iter().map(|&x| (x != 0) as u8).collect(),
            None => vec![1; b * tk],
        };
        let t = Tensor::from_vec(v, (b, tk), &Device::Cpu)?.to_device(dev)?;
        *cache = Some((key, t.clone()));
        Ok(t)
    }

    /// Additive f32 bias `[b, 1, 1, tq, tk]` and the `[b, 1, 1, tq, 1]` factor zeroing queries with
    /// no visible key, on `dev`; computed once per mask.
    fn device_bias(
        &self,
        b: usize,
        tq: usize,
        tk: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let key = (b, tq, tk, format!("{:?}", dev.location()));
        let mut cache = self.cache.lock().unwrap();
        if let Some((k, bias, rows)) = cache.as_ref() {
            if *k == key {
                return Ok((bias.clone(), rows.clone()));
            }
        }
        let (bias, rows) = self.bias(b, tq, tk, dev)?;
        let (bias, rows) = (bias.unsqueeze(1)?, rows.unsqueeze(1)?);
        *cache = Some((key, bias.clone(), rows.clone()));
        Ok((bias, rows))
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
    match backend(&[q, k, v]) {
        Backend::Fused => {
            let save = needs_grad(q) || needs_grad(k) || needs_grad(v);
            let op = Attn {
                mask: mask.clone(),
                scale,
                probs: Mutex::new(None),
                save,
            };
            super::tape::fused3(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, op)
        }
        Backend::Composed => composed(q, k, v, mask, scale),
        Backend::Device => device(q, k, v, mask, scale),
    }
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

/// How attention hides keys: an additive bias (composed ops), or the kernel's own test.
#[derive(Clone)]
enum Masking {
    Bias(Tensor, Tensor),
    #[allow(dead_code)]
    Kernel {
        kv: Tensor,
        causal: bool,
        offset: usize,
        window: Option<usize>,
    },
}

impl Masking {
    /// Samples `s..s+n` of the batch.
    fn cut(&self, s: usize, n: usize) -> Result<Masking> {
        Ok(match self {
            Masking::Bias(b, r) => Masking::Bias(b.narrow(0, s, n)?, r.narrow(0, s, n)?),
            Masking::Kernel {
                kv,
                causal,
                offset,
                window,
            } => Masking::Kernel {
                kv: kv.narrow(0, s, n)?,
                causal: *causal,
                offset: *offset,
                window: *window,
            },
        })
    }
}

/// `attention` on the device path, GQA by grouping: the queries of the `rep` heads that share a
/// key/value head are stacked, so keys and values are never repeated. On CUDA the flash kernels
/// for bf16, else ftl's masked softmax between candle's matrix products.
fn device(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f32) -> Result<Tensor> {
    let (b, tq, h, d) = q.dims4()?;
    let (_, tk, _, _) = k.dims4()?;
    #[cfg(feature = "cuda")]
    // (the kernels' grid has one row of blocks per sample and head)
    if kernels(q)
        && [q, k, v].iter().all(|t| t.dtype() == DType::BF16)
        && cuda::flash_dim(d)
        && b * h <= 65535
    {
        return flash_attention(q, k, v, mask, scale);
    }
    let _ = d;
    // samples in chunks, so the f32 scores stay small
    let bchunk = (chunk_bytes() / (h * tq * tk * 4).max(1)).clamp(1, b);
    let masking = if kernels(q) {
        Masking::Kernel {
            kv: mask.device_key_valid(b, tk, q.device())?,
            causal: mask.causal,
            offset: mask.offset,
            window: mask.window,
        }
    } else {
        let (bias, rows) = mask.device_bias(b, tq, tk, q.device())?;
        Masking::Bias(bias, rows)
    };
    let chunks: Vec<(usize, usize)> = (0..b)
        .step_by(bchunk)
        .map(|s| (s, bchunk.min(b - s)))
        .collect();
    let whole = chunks.len() == 1;
    let cut = move |t: &Tensor, s: usize, n: usize| -> Result<Tensor> {
        if whole {
            Ok(t.clone())
        } else {
            t.narrow(0, s, n)
        }
    };
    let cut_mask = move |m: &Masking, s: usize, n: usize| -> Result<Masking> {
        if whole {
            Ok(m.clone())
        } else {
            m.cut(s, n)
        }
    };
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let mut outs = Vec::with_capacity(chunks.len());
    for &(s, n) in &chunks {
        let m = cut_mask(&masking, s, n)?;
        outs.push(attn_fwd(
            &cut(&qd, s, n)?,
            &cut(&kd, s, n)?,
            &cut(&vd, s, n)?,
            &m,
            scale,
        )?);
    }
    let cat = |mut v: Vec<Tensor>| -> Result<Tensor> {
        if v.len() == 1 {
            Ok(v.pop().unwrap())
        } else {
            Tensor::cat(&v, 0)
        }
    };
    let y = cat(outs)?;
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (q, k, v) = (a[0].detach(), a[1].detach(), a[2].detach());
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for &(s, n) in &chunks {
            let m = cut_mask(&masking, s, n)?;
            let (a, b_, c) = attn_bwd(
                &cut(&q, s, n)?,
                &cut(&k, s, n)?,
                &cut(&v, s, n)?,
                &cut(g, s, n)?,
                &m,
                scale,
            )?;
            dq.push(a);
            dk.push(b_);
            dv.push(c);
        }
        Ok(vec![Some(cat(dq)?), Some(cat(dk)?), Some(cat(dv)?)])
    });
    attach_fresh(&[q, k, v], y, bwd)
}

/// Attention in bf16 by the flash kernels: the scores never reach memory, and the inputs and
/// output keep the model's `[b, t, heads, d]` layout.
#[cfg(feature = "cuda")]
fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f32,
) -> Result<Tensor> {
    let (b, tk) = (q.dim(0)?, k.dim(1)?);
    let kv = mask.device_key_valid(b, tk, q.device())?;
    let m = cuda::Flash {
        causal: mask.causal,
        offset: mask.offset,
        window: mask.window.unwrap_or(0),
        scale,
    };
    let (y, lse) = cuda::flash_fwd(&q.detach(), &k.detach(), &v.detach(), &kv, &m)?;
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], out: &Tensor, g: &Tensor| {
        let (q, k, v) = (a[0].detach(), a[1].detach(), a[2].detach());
        let (dq, dk, dv) = cuda::flash_bwd(&q, &k, &v, &out.detach(), g, &lse, &kv, &m)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    });
    attach_fresh(&[q, k, v], y, bwd)
}

/// `[b, tq, h, d]` → `[b, hkv, rep·tq, d]` and back.
fn group(x: &Tensor, hkv: usize) -> Result<Tensor> {
    let (b, tq, h, d) = x.dims4()?;
    x.reshape((b, tq, hkv, h / hkv, d))?
        .permute((0, 2, 3, 1, 4))?
        .reshape((b, hkv, h / hkv * tq, d))?
        .contiguous()
}

fn ungroup(x: &Tensor, tq: usize) -> Result<Tensor> {
    let (b, hkv, rt, d) = x.dims4()?;
    let rep = rt / tq;
    x.reshape((b, hkv, rep, tq, d))?
        .permute((0, 3, 1, 2, 4))?
        .reshape((b, tq, hkv * rep, d))
}

/// Probabilities `[b, hkv, rep·tq, tk]` of grouped queries against head-major keys, in `out`.
/// The scores are f32 (as the fused attention of PyTorch keeps them).
fn attn_probs(
    qg: &Tensor,
    kh: &Tensor,
    m: &Masking,
    tq: usize,
    scale: f32,
    out: DType,
) -> Result<Tensor> {
    let (b, hkv, rt, _) = qg.dims4()?;
    let tk = kh.dim(2)?;
    match m {
        Masking::Bias(bias, rows) => {
            let s = qg.matmul(&kh.t()?)?.to_dtype(DType::F32)?;
            let s = (s * scale as f64)?.reshape((b, hkv, rt / tq, tq, tk))?;
            let p =
                candle_nn::ops::softmax_last_dim(&s.broadcast_add(bias)?)?.broadcast_mul(rows)?;
            p.reshape((b, hkv, rt, tk))?.to_dtype(out)
        }
        #[cfg(feature = "cuda")]
        Masking::Kernel {
            kv,
            causal,
            offset,
            window,
        } => {
            let s = qg
                .to_dtype(DType::F32)?
                .matmul(&kh.to_dtype(DType::F32)?.t()?)?;
            let p = cuda::attn_softmax(
                &s.reshape((b * hkv * rt, tk))?,
                kv,
                out,
                tq,
                hkv * rt,
                *causal,
                *offset,
                *window,
                scale,
            )?;
            p.reshape((b, hkv, rt, tk))
        }
        #[cfg(not(feature = "cuda"))]
        Masking::Kernel { .. } => candle_core::bail!("attention kernels need the cuda feature"),
    }
}

fn attn_fwd(q: &Tensor, k: &Tensor, v: &Tensor, m: &Masking, scale: f32) -> Result<Tensor> {
    let (_, tq, _, _) = q.dims4()?;
    let hkv = k.dim(2)?;
    let qg = group(q, hkv)?;
    let (kh, vh) = (
        k.transpose(1, 2)?.contiguous()?,
        v.transpose(1, 2)?.contiguous()?,
    );
    let p = attn_probs(&qg, &kh, m, tq, scale, v.dtype())?;
    ungroup(&p.matmul(&vh)?, tq)
}

/// Gradients of q, k, v, recomputing the probabilities; the matrix products in the inputs' dtype
/// (bf16 on a GPU), the softmax part in f32.
fn attn_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    m: &Masking,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, tq, _, _) = q.dims4()?;
    let hkv = k.dim(2)?;
    let dt = q.dtype();
    let qg = group(q, hkv)?;
    let (kh, vh) = (
        k.transpose(1, 2)?.contiguous()?,
        v.transpose(1, 2)?.contiguous()?,
    );
    let p = attn_probs(&qg, &kh, m, tq, scale, DType::F32)?;
    let go = group(&g.to_dtype(dt)?, hkv)?;
    let dv = p.to_dtype(dt)?.t()?.matmul(&go)?; // [b, hkv, tk, d]
    let dp = go.matmul(&vh.t()?)?;
    let ds = match m {
        #[cfg(feature = "cuda")]
        Masking::Kernel { .. } => {
            let (b, h, r, t) = p.dims4()?;
            cuda::attn_softmax_bwd(
                &p.reshape((b * h * r, t))?,
                &dp.reshape((b * h * r, t))?,
                scale,
            )?
            .reshape((b, h, r, t))?
        }
        _ => {
            let dp = dp.to_dtype(DType::F32)?;
            let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            (p.mul(&dp.broadcast_sub(&dot)?)? * scale as f64)?.to_dtype(dt)?
        }
    };
    let dq = ds.matmul(&kh)?;
    let dk = ds.t()?.matmul(&qg)?;
    let back = |x: Tensor| -> Result<Tensor> { x.transpose(1, 2)?.contiguous() };
    Ok((ungroup(&dq, tq)?.contiguous()?, back(dk)?, back(dv)?))
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
            let mut visible = false;
            for (j, x) in row.iter_mut().enumerate() {
                if self.mask.visible(bi, tk, i, j) {
                    *x *= self.scale;
                    // f32::max skips a NaN: a NaN score still makes the row NaN below
                    mx = mx.max(*x);
                    visible = true;
                } else {
                    *x = f32::NEG_INFINITY;
                }
            }
            if !visible {
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

#[cfg(feature = "cuda")]
pub(super) mod cuda {
    //! Attention's launchers: the masked softmax (`attn_softmax_*` in kernels.cu) and flash attention (flash_attn.cu).

    use crate::ops::cuda::{
        args, dev_of, func, rows_cfg, typed, view, warp_rows_cfg, wrap, Func, WARP_ROW,
    };
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, DType, Result, Tensor};
    use half::bf16;

    /// Masked softmax of attention scores `s` `[rows, tk]` (f32) into `out` dtype; `kv` `[b, tk]` u8.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attn_softmax(
        s: &Tensor,
        kv: &Tensor,
        out: DType,
        tq: usize,
        rows_per_b: usize,
        causal: bool,
        offset: usize,
        window: Option<usize>,
        scale: f32,
    ) -> Result<Tensor> {
        let dev = dev_of(s)?;
        let s = s.contiguous()?;
        let kv = kv.contiguous()?;
        let (rows, tk) = s.dims2()?;
        let (gs, _) = s.storage_and_layout();
        let (gk, _) = kv.storage_and_layout();
        let sv = view!(gs, s, f32);
        let kvv = view!(gk, kv, u8);
        // rows that fit a warp's registers take the one-warp-per-row kernel
        let warp = tk <= WARP_ROW;
        let f = func(
            &dev,
            if warp {
                "attn_softmax_fwd_w"
            } else {
                "attn_softmax_fwd"
            },
            out,
        )?;
        let (tk_, tq_, rpb, causal_, offset_, window_) = (
            tk as i32,
            tq as i32,
            rows_per_b as i32,
            causal as i32,
            offset as i32,
            window.unwrap_or(0) as i32,
        );
        let rows_ = rows as i64;
        let n = rows * tk;
        macro_rules! go {
            ($ty:ty) => {{
                let dst = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = f.builder();
                args!(b, &sv, &dst, &kvv);
                if warp {
                    b.arg(&rows_);
                }
                args!(b, &tk_, &tq_, &rpb, &causal_, &offset_, &window_, &scale);
                let cfg = if warp {
                    warp_rows_cfg(rows)
                } else {
                    rows_cfg(rows, tk)
                };
                unsafe { b.launch(cfg) }.w()?;
                Ok(wrap(dst, &dev, (rows, tk)))
            }};
        }
        match out {
            DType::F32 => go!(f32),
            DType::BF16 => go!(bf16),
            o => candle_core::bail!("attn_softmax: dtype {o:?}"),
        }
    }

    /// `dS = P ⊙ (dP − Σ P⊙dP) · scale`, P f32, dS of dP's dtype.
    pub(super) fn attn_softmax_bwd(p: &Tensor, dp: &Tensor, scale: f32) -> Result<Tensor> {
        let dev = dev_of(p)?;
        let p = p.contiguous()?;
        let (rows, tk) = p.dims2()?;
        let (gp, _) = p.storage_and_layout();
        let pv = view!(gp, p, f32);
        let warp = tk <= WARP_ROW;
        let f = func(
            &dev,
            if warp {
                "attn_softmax_bwd_w"
            } else {
                "attn_softmax_bwd"
            },
            dp.dtype(),
        )?;
        let tk_ = tk as i32;
        let rows_ = rows as i64;
        typed!(dp, |dv: Ty| {
            let dst = unsafe { dev.alloc::<Ty>(rows * tk)? };
            let mut b = f.builder();
            args!(b, &pv, &dv, &dst);
            if warp {
                b.arg(&rows_);
            }
            args!(b, &tk_, &scale);
            let cfg = if warp {
                warp_rows_cfg(rows)
            } else {
                rows_cfg(rows, tk)
            };
            unsafe { b.launch(cfg) }.w()?;
            Ok(wrap(dst, &dev, (rows, tk)))
        })
    }

    /// Flash attention forward launches so far (tests check that the kernels, not a fallback, ran).
    pub static FLASH_LAUNCHES: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// Head dimensions the flash attention kernels are built for (`flash_attn.cu`).
    pub(super) fn flash_dim(d: usize) -> bool {
        matches!(d, 32 | 64 | 96 | 128)
    }

    /// Masking and scale of a flash attention call (as `attn_softmax`).
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Flash {
        pub causal: bool,
        pub offset: usize,
        /// 0: no sliding window
        pub window: usize,
        pub scale: f32,
    }

    /// Shared memory of the flash kernels, as laid out in `flash_attn.cu`.
    fn flash_smem(d: usize, backward: bool) -> u32 {
        let (bq, bk, ld) = (64, 64, d + 8);
        let bytes = if backward {
            // the backward pass's query tile, double-buffered with dO, the log-sum-exps and Σ dO·O
            let nq = if d <= 64 { 64 } else { 32 };
            (2 * bk + 4 * nq) * ld * 2 + bk * (nq + 8) * 2 + 4 * nq * 4 + bk
        } else {
            // the query tile, and the key and value tiles double-buffered with their valid flags
            (bq + 4 * bk) * ld * 2 + 2 * bk
        };
        bytes as u32
    }

    /// A contiguous bf16 tensor whose data start 16 bytes aligned (the kernels load 8 values at once).
    fn aligned16(t: &Tensor) -> Result<Tensor> {
        if t.dtype() != DType::BF16 {
            candle_core::bail!("flash attention: bf16 only, got {:?}", t.dtype());
        }
        if t.is_contiguous() && t.layout().start_offset().is_multiple_of(8) {
            Ok(t.clone())
        } else {
            t.force_contiguous()
        }
    }

    fn flash_func(dev: &CudaDevice, name: &str, smem: u32) -> Result<Func> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
        let f = func(dev, name, DType::BF16)?;
        f.func
            .set_attribute(
                Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .w()?;
        Ok(f)
    }

    /// Flash attention forward: `o` `[b, tq, h, d]` (bf16) and each query row's log-sum-exp
    /// `[b, h, tq]` (f32) from q `[b, tq, h, d]`, k and v `[b, tk, hkv, d]`, `kv` `[b, tk]` u8.
    pub(super) fn flash_fwd(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv: &Tensor,
        m: &Flash,
    ) -> Result<(Tensor, Tensor)> {
        let dev = dev_of(q)?;
        let (q, k, v) = (aligned16(q)?, aligned16(k)?, aligned16(v)?);
        let kv = kv.contiguous()?;
        let (b, tq, h, d) = q.dims4()?;
        let (_, tk, hkv, _) = k.dims4()?;
        let smem = flash_smem(d, false);
        let f = flash_func(&dev, &format!("flash_fwd_d{d}"), smem)?;
        let (gq, _) = q.storage_and_layout();
        let (gk, _) = k.storage_and_layout();
        let (gv, _) = v.storage_and_layout();
        let (gm, _) = kv.storage_and_layout();
        let (qv, kv_, vv, mv) = (
            view!(gq, q, bf16),
            view!(gk, k, bf16),
            view!(gv, v, bf16),
            view!(gm, kv, u8),
        );
        let o = unsafe { dev.alloc::<bf16>(b * tq * h * d)? };
        let lse = unsafe { dev.alloc::<f32>(b * h * tq)? };
        let ints = [tq, tk, h, hkv, m.causal as usize, m.offset, m.window].map(|x| x as i32);
        let mut bl = f.builder();
        args!(bl, &qv, &kv_, &vv, &mv, &o, &lse);
        for x in &ints {
            bl.arg(x);
        }
        bl.arg(&m.scale);
        let cfg = LaunchConfig {
            grid_dim: (tq.div_ceil(64) as u32, (b * h) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem,
        };
        unsafe { bl.launch(cfg) }.w()?;
        FLASH_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((wrap(o, &dev, (b, tq, h, d)), wrap(lse, &dev, (b, h, tq))))
    }

    /// Flash attention backward: `(dq, dk, dv)` in bf16 from the forward's inputs, output `o`, its
    /// gradient `g` and `lse`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_bwd(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
        lse: &Tensor,
        kv: &Tensor,
        m: &Flash,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = dev_of(q)?;
        let (q, k, v) = (aligned16(q)?, aligned16(k)?, aligned16(v)?);
        let (o, g) = (aligned16(o)?, aligned16(&g.to_dtype(DType::BF16)?)?);
        let (lse, kv) = (lse.contiguous()?, kv.contiguous()?);
        let (b, tq, h, d) = q.dims4()?;
        let (_, tk, hkv, _) = k.dims4()?;
        let (gq, _) = q.storage_and_layout();
        let (gk, _) = k.storage_and_layout();
        let (gv, _) = v.storage_and_layout();
        let (go, _) = o.storage_and_layout();
        let (gg, _) = g.storage_and_layout();
        let (gl, _) = lse.storage_and_layout();
        let (gm, _) = kv.storage_and_layout();
        let (qv, kv_, vv, ov, gv_, lv, mv) = (
            view!(gq, q, bf16),
            view!(gk, k, bf16),
            view!(gv, v, bf16),
            view!(go, o, bf16),
            view!(gg, g, bf16),
            view!(gl, lse, f32),
            view!(gm, kv, u8),
        );
        // the softmax backward's row term Σ dO·O
        let rows = b * tq * h;
        let dsum = unsafe { dev.alloc::<f32>(rows)? };
        let f = func(&dev, "flash_dsum", DType::BF16)?;
        let (rows_, tq_, h_, d_) = (rows as i64, tq as i32, h as i32, d as i32);
        let mut bl = f.builder();
        args!(bl, &ov, &gv_, &dsum, &rows_, &tq_, &h_, &d_);
        unsafe { bl.launch(warp_rows_cfg(rows)) }.w()?;

        let dq = dev.alloc_zeros::<f32>(b * tq * h * d)?;
        let dk = dev.alloc_zeros::<f32>(b * tk * hkv * d)?;
        let dv = dev.alloc_zeros::<f32>(b * tk * hkv * d)?;
        let smem = flash_smem(d, true);
        let f = flash_func(&dev, &format!("flash_bwd_d{d}"), smem)?;
        let ints = [tq, tk, h, hkv, m.causal as usize, m.offset, m.window].map(|x| x as i32);
        let mut bl = f.builder();
        args!(bl, &qv, &kv_, &vv, &gv_, &lv, &dsum, &mv, &dq, &dk, &dv);
        for x in &ints {
            bl.arg(x);
        }
        bl.arg(&m.scale);
        let cfg = LaunchConfig {
            grid_dim: (tk.div_ceil(64) as u32, (b * h) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem,
        };
        unsafe { bl.launch(cfg) }.w()?;
        Ok((
            wrap(dq, &dev, (b, tq, h, d)).to_dtype(DType::BF16)?,
            wrap(dk, &dev, (b, tk, hkv, d)).to_dtype(DType::BF16)?,
            wrap(dv, &dev, (b, tk, hkv, d)).to_dtype(DType::BF16)?,
        ))
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

    /// A NaN query makes its output NaN on every path (the non-finite check of training relies
    /// on it), while a row that sees no key stays zero.
    #[test]
    fn a_nan_query_gives_a_nan_output() -> Result<()> {
        let mut qv = vec![0.5f32; 2 * 3 * 2 * 4];
        qv[..8].fill(f32::NAN);
        let q = Tensor::from_vec(qv, (2, 3, 2, 4), &Device::Cpu)?;
        let k = Tensor::ones((2, 3, 1, 4), DType::F32, &Device::Cpu)?;
        let v = Tensor::ones((2, 3, 1, 4), DType::F32, &Device::Cpu)?;
        let m = AttnMask {
            causal: true,
            offset: 0,
            key_valid: Some(Arc::new(vec![1, 1, 1, 0, 0, 0])),
            ..Default::default()
        };
        for out in [
            attention(&q, &k, &v, &m, 0.5)?,
            composed(&q, &k, &v, &m, 0.5)?,
        ] {
            // [b·tq, h·d]: batch 0, query 0 (both heads) is NaN, the rest finite
            let rows: Vec<Vec<f32>> = out.flatten_from(2)?.flatten_to(1)?.to_vec2::<f32>()?;
            assert!(rows[0].iter().all(|x| x.is_nan()), "{:?}", rows[0]);
            assert!(rows[1..3].iter().flatten().all(|x| x.is_finite()));
            // batch 1 sees no key: zero
            assert!(rows[3..].iter().flatten().all(|&x| x == 0.0), "{rows:?}");
        }
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
