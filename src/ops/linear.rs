//! `y = x·Wᵀ + b` whose backward skips the weight (and bias) gradient when they are frozen, and
//! LoRA's `y + s·(x·Aᵀ)·Bᵀ` as one op: the composed reference, the fused CPU kernels, the device
//! paths and LoRA's CUDA kernels (the low-rank kernels, the tensor-core path through cuBLAS).

use super::device::{attach_fresh, rows};
#[cfg(feature = "cuda")]
use super::kernels;
use super::tape::Bwd;
use super::{backend, gemm_f32, needs_grad, slice_f32, with_f32, Backend};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// `x` is `[.., in]`; `w` is `[out, in]`, or `[in, out]` when `transposed` (GPT-2's Conv1D).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    match backend(&[x, w]) {
        Backend::Fused => {
            let x = x.contiguous()?;
            let w = w.contiguous()?;
            let op = LinearOp { transposed };
            match b {
                Some(b) => super::tape::fused3(&x, &w, &b.contiguous()?, op),
                None => super::tape::fused2(&x, &w, op),
            }
        }
        Backend::Composed => composed(x, w, b, transposed),
        Backend::Device => linear_device(x, w, b, transposed),
    }
}

fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
    let wt = if transposed { w.clone() } else { w.t()? };
    let y = x.broadcast_matmul(&wt)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

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

/// `linear` on the device path.
fn linear_device(x: &Tensor, w: &Tensor, b: Option<&Tensor>, transposed: bool) -> Result<Tensor> {
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

/// Column sums of a row-major [rows, n] matrix, in parallel over row blocks, deterministically.
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
        // collected in order and added in order: rayon's reduce combines blocks in an order that
        // depends on its scheduling, and a training must repeat bit for bit (exact resume)
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        })
        .unwrap_or_else(|| vec![0f32; n])
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
    match backend(&[x, w, a]) {
        Backend::Fused => lora_fused(x, w, b, a, bm, scale, transposed),
        // no composed form here: the reference composes LoRA of `linear`s (as peft's LoRA does
        // under `composed_only`), so this op's own backends are the fused and the device path
        Backend::Composed | Backend::Device => lora_device(x, w, b, a, bm, scale, transposed),
    }
}

/// `lora_linear` on the fused path: the adapter and bias packed into one input of one op.
fn lora_fused(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    transposed: bool,
) -> Result<Tensor> {
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
    super::tape::fused3(&x.contiguous()?, &w.contiguous()?, &pack, op)
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

/// `lora_linear` on the device path; the adapter (`a` `[r, in]`, `bm` `[out, r]`) may be f32 on a
/// bf16 model: its branch runs in the adapter's dtype, as PEFT's.
fn lora_device(
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
        && a.dim(0)? <= cuda::LORA_RMAX
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

#[cfg(feature = "cuda")]
mod cuda {
    //! LoRA's launchers: the low-rank kernels for f32 activations (`lora_*` in kernels.cu) and the tensor-core path for bf16 ones (cuBLAS on the adapter split into bf16 high parts and remainders).

    use crate::ops::cuda::{
        addr, args, block_cfg, dev_of, elem_cfg, func, typed, view, wrap, Func,
    };
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, DType, Result, Tensor};
    use half::bf16;

    /// Largest LoRA rank the low-rank kernels take.
    pub(super) const LORA_RMAX: usize = 64;

    /// The kernels' rank bucket (8, 16, 32, 64) that holds rank `r`.
    fn lora_bucket(r: usize) -> Result<usize> {
        [8, 16, 32, 64]
            .into_iter()
            .find(|&x| r <= x)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("ftl kernels: LoRA rank {r} above {LORA_RMAX}"))
            })
    }

    /// The kernel instance for rank `r`: `{name}_r{R}` with R the next of 8, 16, 32, 64.
    fn lora_func(dev: &CudaDevice, name: &str, r: usize, dt: DType) -> Result<Func> {
        func(dev, &format!("{name}_r{}", lora_bucket(r)?), dt)
    }

    /// `x [M, K] · aᵀ` for f32 `x` and `a [r, K]`: `[M, r]` (bf16 activations take `lora_tc_fwd`).
    pub(super) fn lora_down(x: &Tensor, a: &Tensor) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (m, k) = x.dims2()?;
        let r = a.dim(0)?;
        let a = a.contiguous()?;
        let (ga, _) = a.storage_and_layout();
        let av = view!(ga, a, f32);
        let rr = lora_bucket(r)?;
        let f = func(&dev, &format!("lora_down_r{rr}"), x.dtype())?;
        // the A tile in shared memory, [R, 256] f32 (64 KiB at R = 64: above the default limit)
        let smem = (rr * 256 * 4) as u32;
        {
            use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
            f.func
                .set_attribute(
                    Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .w()?;
        }
        // rows per block: eight warps of LORA_ROWS(R) rows (kernels.cu)
        let rows = 8 * match rr {
            8 | 16 => 4,
            32 => 2,
            _ => 1,
        };
        let (m_, k_, r_) = (m as i64, k as i32, r as i32);
        typed!(x, |xv: _Ty| {
            let dst = unsafe { dev.alloc::<f32>(m * r)? };
            let mut b = f.builder();
            args!(b, &xv, &av, &dst, &m_, &k_, &r_);
            let mut cfg = block_cfg((m.div_ceil(rows), 1))?;
            cfg.shared_mem_bytes = smem;
            unsafe { b.launch(cfg) }.w()?;
            Ok(wrap(dst, &dev, (m, r)))
        })
    }

    /// `y [M, N] + s · h [M, r] · bᵀ` for f32 `y` and `b [N, r]` (bf16: `lora_tc_fwd`).
    pub(super) fn lora_up_add(y: &Tensor, h: &Tensor, bm: &Tensor, s: f32) -> Result<Tensor> {
        let dev = dev_of(y)?;
        let (m, n) = y.dims2()?;
        let r = h.dim(1)?;
        let (h, bm) = (h.contiguous()?, bm.contiguous()?);
        let (gh, _) = h.storage_and_layout();
        let (gb, _) = bm.storage_and_layout();
        let (hv, bv) = (view!(gh, h, f32), view!(gb, bm, f32));
        let f = lora_func(&dev, "lora_up_add", r, y.dtype())?;
        let (m_, n_, r_) = (m as i64, n as i32, r as i32);
        typed!(y, |yv: Ty| {
            let dst = unsafe { dev.alloc::<Ty>(m * n)? };
            let mut b = f.builder();
            args!(b, &yv, &hv, &bv, &dst, &m_, &n_, &r_, &s);
            unsafe { b.launch(block_cfg((n.div_ceil(256), m.div_ceil(32)))?) }.w()?;
            Ok(wrap(dst, &dev, (m, n)))
        })
    }

    /// `s · lᵀ · x` for f32 `l [M, r]` and `x [M, K]`: `[r, K]` (a LoRA weight gradient), summed
    /// over 128-row slices then across them, in a fixed order.
    pub(super) fn lora_outer(l: &Tensor, x: &Tensor, s: f32) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (m, k) = x.dims2()?;
        let r = l.dim(1)?;
        let l = l.contiguous()?;
        let (gl, _) = l.storage_and_layout();
        let lv = view!(gl, l, f32);
        let f = lora_func(&dev, "lora_outer", r, x.dtype())?;
        let (m_, k_, r_) = (m as i64, k as i32, r as i32);
        let splits = m.div_ceil(128);
        let parts = typed!(x, |xv: _Ty| {
            let dst = unsafe { dev.alloc::<f32>(splits * r * k)? };
            let mut b = f.builder();
            args!(b, &lv, &xv, &dst, &m_, &k_, &r_, &s);
            unsafe { b.launch(block_cfg((k.div_ceil(256), splits))?) }.w()?;
            Ok::<_, candle_core::Error>(wrap(dst, &dev, (splits, r * k)))
        })?;
        // the slices added by one matrix product (candle's sum over a leading dimension is slow)
        let ones = Tensor::ones((1, splits), DType::F32, x.device())?;
        ones.matmul(&parts)?.reshape((r, k))
    }

    /// A bf16 operand of `gemm`: the row-major matrix at `at` with row stride `ld`, read transposed
    /// when `t`.
    #[derive(Clone, Copy)]
    struct Operand {
        at: u64,
        ld: usize,
        t: bool,
    }

    impl Operand {
        fn new(at: u64, ld: usize) -> Self {
            Self { at, ld, t: false }
        }
        fn t(self) -> Self {
            Self { t: true, ..self }
        }
    }

    /// Row-major `c [m, n] = alpha · a · b + beta · c` (`a` `[m, k]`, `b` `[k, n]` after their
    /// transposes) on cuBLAS's tensor cores, accumulating in f32; `c` (row stride `ldc`) is f32 or
    /// bf16, read and rounded once when `beta` is 1.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        dev: &CudaDevice,
        (m, n, k): (usize, usize, usize),
        a: Operand,
        b: Operand,
        c: u64,
        ldc: usize,
        cdt: DType,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ct = match cdt {
            DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            _ => sys::cudaDataType_t::CUDA_R_16BF,
        };
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        let blas = dev.cublas_handle();
        // cuBLAS is column-major: the row-major c is its cᵀ = bᵀ · aᵀ
        unsafe {
            gemm_ex(
                *blas.handle(),
                op(b.t),
                op(a.t),
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b.at as *const _,
                bf,
                b.ld as i32,
                a.at as *const _,
                bf,
                a.ld as i32,
                &beta as *const f32 as *const _,
                c as *mut _,
                ct,
                ldc as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("cuBLAS gemm ({m}×{k}·{k}×{n}): {e:?}")))
    }

    /// `lora_split` (kernels.cu): f32 `[rows, cols]` at `x` (row stride `ld`, plus the half at `off`
    /// when `off > 0`) as bf16 `[rows, 3 cols]`, high parts and remainders in the blocks `lo` says.
    #[allow(clippy::too_many_arguments)]
    fn split(
        dev: &CudaDevice,
        x: u64,
        ld: usize,
        off: usize,
        rows: usize,
        cols: usize,
        lo: i32,
    ) -> Result<Tensor> {
        let f = func(dev, "lora_split", DType::F32)?;
        let dst = unsafe { dev.alloc::<bf16>(rows * 3 * cols)? };
        let out = wrap(dst, dev, (rows, 3 * cols));
        let (o, ld_, off_, rows_, cols_) =
            (addr(&out)?, ld as i64, off as i64, rows as i64, cols as i64);
        let mut b = f.builder();
        args!(b, &x, &ld_, &off_, &o, &rows_, &cols_, &lo);
        unsafe { b.launch(elem_cfg((rows * cols).min(1 << 20))) }.w()?;
        Ok(out)
    }

    /// `lora_fold` (kernels.cu): `out [rows, cols] = s · (x[.., j] + x[.., off + j])` into f32 at `out`.
    #[allow(clippy::too_many_arguments)]
    fn fold(
        dev: &CudaDevice,
        x: &Tensor,
        ld: usize,
        off: usize,
        out: u64,
        rows: usize,
        cols: usize,
        s: f32,
    ) -> Result<()> {
        let f = func(dev, "lora_fold", DType::F32)?;
        let (xa, ld_, off_, rows_, cols_) =
            (addr(x)?, ld as i64, off as i64, rows as i64, cols as i64);
        let mut b = f.builder();
        args!(b, &xa, &ld_, &off_, &out, &rows_, &cols_, &s);
        unsafe { b.launch(elem_cfg((rows * cols).min(1 << 20))) }.w()?;
        Ok(())
    }

    // High parts in blocks 0 and 1, remainders in 2 (`hhl`), or in 1 (`hlh`): an `hlh` operand times
    // an `hhl` one over the 3r blocks is hi·hi + lo·hi + hi·lo; the first two blocks of `hlh` and the
    // last two of `hhl` are (hi, lo), the operand for a product whose halves `fold` adds.
    const HHL: i32 = 0b100;
    const HLH: i32 = 0b010;

    /// The tensor-core LoRA path's operands: `x` `[m, k]`, `y`/`g` `[m, n]` (bf16, contiguous), the
    /// split adapter `[3r, k]` and `[n, 3r]`.
    fn tc_shapes(t: &[&Tensor; 4], (m, k, n, r): (usize, usize, usize, usize)) -> Result<()> {
        let ok = t
            .iter()
            .all(|t| t.dtype() == DType::BF16 && t.is_contiguous())
            && t[0].dims2()? == (m, k)
            && t[1].dims2()? == (m, n)
            && t[2].dims2()? == (3 * r, k)
            && t[3].dims2()? == (n, 3 * r);
        if !ok {
            candle_core::bail!(
                "lora tensor-core path: want bf16 contiguous x [{m}, {k}], y [{m}, {n}], A [{}, {k}], B [{n}, {}]",
                3 * r,
                3 * r
            );
        }
        Ok(())
    }

    /// LoRA's f32 adapter split for the tensor-core path: `a` `[r, K]` as `[3r, K]` (row blocks
    /// hi, hi, lo) and `b` `[N, r]` as `[N, 3r]` (column blocks hi, hi, lo), bf16.
    pub(super) fn lora_tc_weights(a: &Tensor, bm: &Tensor) -> Result<(Tensor, Tensor)> {
        let dev = dev_of(a)?;
        let (a, bm) = (a.contiguous()?, bm.contiguous()?);
        let (r, k) = a.dims2()?;
        let n = bm.dim(0)?;
        let a3 = split(&dev, addr(&a)?, r * k, 0, 1, r * k, HHL)?.reshape((3 * r, k))?;
        let b3 = split(&dev, addr(&bm)?, r, 0, n, r, HHL)?;
        Ok((a3, b3))
    }

    /// The LoRA branch on tensor cores: `y [M, N] += s · (x·Aᵀ)·Bᵀ` in place (bf16 `y`, summed in f32
    /// and rounded once), for bf16 `x [M, K]` and the split adapter of `lora_tc_weights`. Returns
    /// `x·Aᵀ` split (`[M, 3r]`, blocks hi, lo, hi) for the backward pass.
    pub(super) fn lora_tc_fwd(
        x: &Tensor,
        y: &Tensor,
        a3: &Tensor,
        b3: &Tensor,
        s: f32,
    ) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (m, k) = x.dims2()?;
        let n = y.dim(1)?;
        let r = a3.dim(0)? / 3;
        tc_shapes(&[x, y, a3, b3], (m, k, n, r))?;
        let p = wrap(unsafe { dev.alloc::<f32>(m * 2 * r)? }, &dev, (m, 2 * r));
        // x·[A_hi; A_lo]ᵀ, then its halves added and split
        let a_hl = Operand::new(addr(a3)? + (r * k * 2) as u64, k).t();
        gemm(
            &dev,
            (m, 2 * r, k),
            Operand::new(addr(x)?, k),
            a_hl,
            addr(&p)?,
            2 * r,
            DType::F32,
            1.0,
            0.0,
        )?;
        let h3 = split(&dev, addr(&p)?, 2 * r, r, m, r, HLH)?;
        let b = Operand::new(addr(b3)?, 3 * r).t();
        gemm(
            &dev,
            (m, n, 3 * r),
            Operand::new(addr(&h3)?, 3 * r),
            b,
            addr(y)?,
            n,
            DType::BF16,
            s,
            1.0,
        )?;
        Ok(h3)
    }

    /// The backward pass of `lora_tc_fwd` for the output gradient `g [M, N]` (bf16): adds
    /// `s · (g·B)·A` into `dx` (bf16 `[M, K]`, in place) when given, and returns the adapter's
    /// gradient `[dA (r × K), dB (N × r)]` flattened (f32) when `pack`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lora_tc_bwd(
        g: &Tensor,
        x: &Tensor,
        a3: &Tensor,
        b3: &Tensor,
        h3: &Tensor,
        s: f32,
        dx: Option<&Tensor>,
        pack: bool,
    ) -> Result<Option<Tensor>> {
        let dev = dev_of(g)?;
        let (m, n) = g.dims2()?;
        let k = x.dim(1)?;
        let r = a3.dim(0)? / 3;
        tc_shapes(&[x, g, a3, b3], (m, k, n, r))?;
        if h3.dims2()? != (m, 3 * r) || dx.is_some_and(|d| d.dims2().ok() != Some((m, k))) {
            candle_core::bail!("lora_tc_bwd: x·Aᵀ or dx does not match [{m}, {k}] and rank {r}");
        }
        let ga = Operand::new(addr(g)?, n);
        // g·[B_hi, B_lo], its halves added and split
        let p = wrap(unsafe { dev.alloc::<f32>(m * 2 * r)? }, &dev, (m, 2 * r));
        let b_hl = Operand::new(addr(b3)? + (r * 2) as u64, 3 * r);
        gemm(
            &dev,
            (m, 2 * r, n),
            ga,
            b_hl,
            addr(&p)?,
            2 * r,
            DType::F32,
            1.0,
            0.0,
        )?;
        let g3 = split(&dev, addr(&p)?, 2 * r, r, m, r, HLH)?;
        let g3a = Operand::new(addr(&g3)?, 3 * r);
        if let Some(dx) = dx {
            let a = Operand::new(addr(a3)?, k);
            gemm(
                &dev,
                (m, k, 3 * r),
                g3a,
                a,
                addr(dx)?,
                k,
                DType::BF16,
                s,
                1.0,
            )?;
        }
        if !pack {
            return Ok(None);
        }
        let out = wrap(
            unsafe { dev.alloc::<f32>(r * k + n * r)? },
            &dev,
            r * k + n * r,
        );
        let o = addr(&out)?;
        // dA = s · (g·B)ᵀ·x from [(g·B)_hi, (g·B)_lo]ᵀ·x ([2r, K]: its two row blocks)
        let pa = wrap(unsafe { dev.alloc::<f32>(2 * r * k)? }, &dev, (2 * r, k));
        gemm(
            &dev,
            (2 * r, k, m),
            g3a.t(),
            Operand::new(addr(x)?, k),
            addr(&pa)?,
            k,
            DType::F32,
            1.0,
            0.0,
        )?;
        fold(&dev, &pa, 0, r * k, o, 1, r * k, s)?;
        // dB = s · gᵀ·(x·Aᵀ) from gᵀ·[h_hi, h_lo] ([N, 2r]: its two column blocks)
        let pb = wrap(unsafe { dev.alloc::<f32>(n * 2 * r)? }, &dev, (n, 2 * r));
        let h = Operand::new(addr(h3)?, 3 * r);
        gemm(
            &dev,
            (n, 2 * r, m),
            ga.t(),
            h,
            addr(&pb)?,
            2 * r,
            DType::F32,
            1.0,
            0.0,
        )?;
        fold(&dev, &pb, 2 * r, r, o + (r * k * 4) as u64, n, r, s)?;
        Ok(Some(out))
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
                if super::super::backend(&[x.as_tensor()]) == super::super::Backend::Fused {
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
