//! The device path of every op (CUDA, and any non-f32 dtype): the forward pass runs as candle ops
//! on detached inputs, so no intermediate is kept, and one attached op carries the backward pass,
//! which recomputes what it needs from the inputs. Only the inputs are kept for the backward
//! pass, as with the fused CPU kernels, and frozen inputs get no gradient.

pub use super::device::set_chunk_bytes;
use super::device::{attach_fresh, rows};
#[cfg(feature = "cuda")]
use super::kernels;
use super::needs_grad;
use super::tape::Bwd;
use candle_core::{DType, Result, Tensor};
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
