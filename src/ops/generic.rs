//! The device path of every op (CUDA, and any non-f32 dtype): the forward pass runs as candle ops
//! on detached inputs, so no intermediate is kept, and one attached op carries the backward pass,
//! which recomputes what it needs from the inputs. Only the inputs are kept for the backward
//! pass, as with the fused CPU kernels, and frozen inputs get no gradient.

pub use super::device::set_chunk_bytes;
use super::device::{attach_fresh, chunk_bytes, rows};
use super::tape::Bwd;
use super::{kernels, needs_grad, AttnMask};
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Arc;

/// `x·Wᵀ` (`x·W` for a transposed weight) on detached inputs.
fn mm(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    let wt = if transposed { w.clone() } else { w.t()? };
    x.broadcast_matmul(&wt)
}

/// `dW` of `y = x·Wᵀ` (of `x·W` for a transposed weight) from rows `x2` and output gradient `g2`.
fn weight_grad(x2: &Tensor, g2: &Tensor, transposed: bool) -> Result<Tensor> {
    if transposed {
        x2.t()?.matmul(g2)
    } else {
        g2.t()?.matmul(x2)
    }
}

/// `dx` of the same product.
fn input_grad(g2: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    g2.matmul(&if transposed { w.t()? } else { w.clone() })
}

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    let x = &x.contiguous()?;
    let (xd, wd) = (x.detach(), w.detach());
    let mut y = mm(&xd, &wd, transposed)?;
    if let Some(b) = b {
        y = y.broadcast_add(&b.detach())?;
    }
    let bwd: Bwd = Arc::new(move |a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (x, w) = (a[0].detach(), a[1].detach());
        let g2 = rows(g)?;
        let x2 = rows(&x)?;
        let dx = if needs_grad(a[0]) {
            Some(input_grad(&g2, &w, transposed)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = if needs_grad(a[1]) {
            Some(weight_grad(&x2, &g2, transposed)?)
        } else {
            None
        };
        let mut v = vec![dx, dw];
        if a.len() == 3 {
            v.push(if needs_grad(a[2]) {
                Some(g2.to_dtype(DType::F32)?.sum(0)?.to_dtype(a[2].dtype())?)
            } else {
                None
            });
        }
        Ok(v)
    });
    match b {
        Some(b) => attach_fresh(&[x, w, b], y, bwd),
        None => attach_fresh(&[x, w], y, bwd),
    }
}

/// LoRA's `A` `[r, k]` and `B` `[n, r]` packed into one tensor, so that one op input carries both.
#[derive(Clone, Copy)]
struct LoraPack {
    r: usize,
    k: usize,
    n: usize,
}

impl LoraPack {
    fn new(a: &Tensor, bm: &Tensor) -> Result<(Tensor, LoraPack)> {
        let (r, k) = a.dims2()?;
        let n = bm.dim(0)?;
        let lp = LoraPack { r, k, n };
        let pack = Tensor::cat(&[a.detach().flatten_all()?, bm.detach().flatten_all()?], 0)?;
        // an op of ours, so its gradient reaches A and B as two views of the packed one
        // (candle's cat would add each into a zero-filled gradient)
        let bwd: Bwd = Arc::new(move |_: &[&Tensor], _: &Tensor, g: &Tensor| {
            let (da, db) = lp.unpack(g)?;
            Ok(vec![Some(da), Some(db)])
        });
        Ok((attach_fresh(&[a, bm], pack, bwd)?, lp))
    }

    fn unpack(&self, p: &Tensor) -> Result<(Tensor, Tensor)> {
        let LoraPack { r, k, n } = *self;
        Ok((
            p.narrow(0, 0, r * k)?.reshape((r, k))?,
            p.narrow(0, r * k, n * r)?.reshape((n, r))?,
        ))
    }
}

/// The base weight's gradient of a LoRA layer, when the weight trains too.
fn lora_base_grad(
    w: &Tensor,
    x2: &Tensor,
    g2: &Tensor,
    transposed: bool,
) -> Result<Option<Tensor>> {
    needs_grad(w)
        .then(|| weight_grad(x2, g2, transposed))
        .transpose()
}

/// A LoRA layer's output `y` as one op of `x`, `w` and the packed adapter, and a trained bias
/// added outside it (a frozen one is in `y` already, from `frozen_base`).
fn lora_attach(
    x: &Tensor,
    w: &Tensor,
    pack: &Tensor,
    b: Option<&Tensor>,
    y: Tensor,
    bwd: Bwd,
) -> Result<Tensor> {
    let y = attach_fresh(&[x, w, pack], y, bwd)?;
    match b {
        Some(b) if needs_grad(b) => y.broadcast_add(b),
        _ => Ok(y),
    }
}

/// The base output `x·Wᵀ` of a LoRA layer, with its bias when that is frozen (a trained bias gets
/// its gradient from a plain add outside the op).
fn frozen_base(xd: &Tensor, wd: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    let y = mm(xd, wd, transposed)?;
    match b.filter(|b| !needs_grad(b)) {
        Some(b) => y.broadcast_add(&b.detach()),
        None => Ok(y),
    }
}

/// `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`; the adapter (`a` `[r, in]`, `bm` `[out, r]`) may be f32 on a
/// bf16 model: its branch runs in the adapter's dtype, as PEFT's.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    transposed: bool,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels(x)
        && a.dtype() == DType::F32
        && bm.dtype() == DType::F32
        && a.dim(0)? <= super::cuda::LORA_RMAX
    {
        return lora_linear_cuda(x, w, b, a, bm, scale, transposed);
    }
    let x = &x.contiguous()?;
    let adt = a.dtype();
    let (pack, lp) = LoraPack::new(a, bm)?;
    let unpack = move |p: &Tensor| lp.unpack(p);
    let (xd, wd) = (x.detach(), w.detach());
    let (ad, bd) = unpack(&pack.detach())?;
    let y = frozen_base(&xd, &wd, b, transposed)?;
    let h = xd.to_dtype(adt)?.broadcast_matmul(&ad.t()?)?;
    let d = (h.broadcast_matmul(&bd.t()?)? * scale)?;
    let y = (y + d.to_dtype(x.dtype())?)?;
    // x·Aᵀ ([rows, r], small) kept for B's gradient instead of recomputed
    let h = rows(&h)?;
    let bwd: Bwd = Arc::new(move |args: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (x, w) = (args[0].detach(), args[1].detach());
        let (a, bm) = unpack(&args[2].detach())?;
        let g2 = rows(g)?;
        let x2 = rows(&x)?;
        let ga = g2.to_dtype(adt)?;
        let xa = x2.to_dtype(adt)?;
        let dh = (ga.matmul(&bm)? * scale)?;
        let dx = if needs_grad(args[0]) {
            let base = input_grad(&g2, &w, transposed)?;
            Some((base + dh.matmul(&a)?.to_dtype(x.dtype())?)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = lora_base_grad(args[1], &x2, &g2, transposed)?;
        let dpack = if needs_grad(args[2]) {
            let da = dh.t()?.matmul(&xa)?;
            let db = (ga.t()?.matmul(&h)? * scale)?;
            Some(Tensor::cat(&[da.flatten_all()?, db.flatten_all()?], 0)?)
        } else {
            None
        };
        Ok(vec![dx, dw, dpack])
    });
    lora_attach(x, w, &pack, b, y, bwd)
}

/// `lora_linear` with f32 adapters on the GPU: the low-rank branch in ftl's kernels (f32
/// activations; bf16 ones take `lora_linear_tc`).
#[cfg(feature = "cuda")]
fn lora_linear_cuda(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    transposed: bool,
) -> Result<Tensor> {
    use super::cuda;
    if x.dtype() == DType::BF16 {
        return lora_linear_tc(x, w, b, a, bm, scale, transposed);
    }
    let x = &x.contiguous()?;
    let s = scale as f32;
    let (pack, lp) = LoraPack::new(a, bm)?;
    let unpack = move |p: &Tensor| lp.unpack(p);
    let (xd, wd) = (x.detach(), w.detach());
    let (ad, bd) = unpack(&pack.detach())?;
    let y = frozen_base(&xd, &wd, b, transposed)?;
    let shape = y.shape().clone();
    let h = cuda::lora_down(&rows(&xd)?, &ad)?;
    let y = cuda::lora_up_add(&rows(&y)?, &h, &bd, s)?.reshape(shape)?;
    // x·Aᵀ ([rows, r] f32, small) kept for B's gradient instead of recomputed
    let h = h.detach();
    let bwd: Bwd = Arc::new(move |args: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (x, w) = (args[0].detach(), args[1].detach());
        let (a, bm) = unpack(&args[2].detach())?;
        let g2 = rows(g)?.contiguous()?;
        let x2 = rows(&x)?;
        // g·B, unscaled: the scale goes into each use below
        let gb = cuda::lora_down(&g2, &bm.t()?.contiguous()?)?;
        let dx = if needs_grad(args[0]) {
            let base = input_grad(&g2, &w, transposed)?;
            Some(cuda::lora_up_add(&base, &gb, &a.t()?.contiguous()?, s)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = lora_base_grad(args[1], &x2, &g2, transposed)?;
        let dpack = if needs_grad(args[2]) {
            let da = cuda::lora_outer(&gb, &x2, s)?;
            let db = cuda::lora_outer(&h, &g2, s)?.t()?;
            Some(Tensor::cat(&[da.flatten_all()?, db.flatten_all()?], 0)?)
        } else {
            None
        };
        Ok(vec![dx, dw, dpack])
    });
    lora_attach(x, w, &pack, b, y, bwd)
}

/// `lora_linear` for bf16 activations with f32 adapters on the GPU: the low-rank products on
/// tensor cores with the adapter split into bf16 high parts and remainders (`cuda::lora_tc_fwd`),
/// f32-accurate, the branch added to the base output in f32 and rounded once, as PEFT does.
#[cfg(feature = "cuda")]
fn lora_linear_tc(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    transposed: bool,
) -> Result<Tensor> {
    use super::cuda;
    let x = &x.contiguous()?;
    let s = scale as f32;
    let (pack, lp) = LoraPack::new(a, bm)?;
    let (xd, wd) = (x.detach(), w.detach());
    let (ad, bd) = lp.unpack(&pack.detach())?;
    let (a3, b3) = cuda::lora_tc_weights(&ad, &bd)?;
    let y = frozen_base(&xd, &wd, b, transposed)?;
    let shape = y.shape().clone();
    // the base output is this op's own: the branch is added into it in place
    let y = rows(&y)?.contiguous()?;
    let h3 = cuda::lora_tc_fwd(&rows(&xd)?, &y, &a3, &b3, s)?;
    let y = y.reshape(shape)?;
    let bwd: Bwd = Arc::new(move |args: &[&Tensor], _: &Tensor, g: &Tensor| {
        let (x, w) = (args[0].detach(), args[1].detach());
        let g2 = rows(&g.to_dtype(DType::BF16)?)?.contiguous()?;
        let x2 = rows(&x)?;
        let dx = if needs_grad(args[0]) {
            Some(input_grad(&g2, &w, transposed)?.contiguous()?)
        } else {
            None
        };
        let dpack =
            cuda::lora_tc_bwd(&g2, &x2, &a3, &b3, &h3, s, dx.as_ref(), needs_grad(args[2]))?;
        let dx = dx.map(|d| d.reshape(x.shape())).transpose()?;
        let dw = lora_base_grad(args[1], &x2, &g2, transposed)?;
        Ok(vec![dx, dw, dpack])
    });
    lora_attach(x, w, &pack, b, y, bwd)
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

/// Attention with GQA by grouping: the queries of the `rep` heads that share a key/value head are
/// stacked, so keys and values are never repeated. `q` `[b, tq, h, d]`, `k`/`v` `[b, tk, hkv, d]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f32,
) -> Result<Tensor> {
    let (b, tq, h, d) = q.dims4()?;
    let (_, tk, _, _) = k.dims4()?;
    #[cfg(feature = "cuda")]
    // (the kernels' grid has one row of blocks per sample and head)
    if kernels(q)
        && [q, k, v].iter().all(|t| t.dtype() == DType::BF16)
        && super::cuda::flash_dim(d)
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
    use super::cuda;
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
            let p = super::cuda::attn_softmax(
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
            super::cuda::attn_softmax_bwd(
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
