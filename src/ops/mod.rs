//! Differentiable tensor ops used by the models, one file per op with all of its backends: the
//! composed candle ops (the reference), the fused CPU kernel with a hand-written backward pass,
//! the device path (CUDA and other dtypes: candle ops on detached inputs and one attached backward
//! pass, `device`) and its CUDA kernels. `backend` is the one rule that picks among them.
//!
//! candle's own fused softmax/rms_norm/layer_norm/rope have no backward, and its matmul backward
//! computes the gradient of frozen weights too; everything here returns a gradient only for
//! arguments that need one (`needs_grad`).

pub mod act;
mod add;
pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod embedding;
pub mod linear;
pub mod loss;
pub mod norm;
#[cfg(feature = "cuda")]
mod optim;
pub mod rope;
mod scale;
pub mod tape;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::cell::Cell;

pub use act::{gelu, gelu_tanh, silu_mul, Activation};
pub use add::add;
pub use attention::{attention, AttnMask};
pub use device::set_chunk_bytes;
pub use embedding::embedding;
pub use linear::{linear, lora_linear};
pub use loss::{cross_entropy_sum, IGNORE_INDEX};
pub use norm::{layer_norm, rms_norm};
pub use rope::{rope, Rope};
pub use scale::scale_last;

/// Which implementation the ops take (tests compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// fused CPU kernels for f32 on the CPU, the device path otherwise
    Auto,
    /// the device path everywhere
    Device,
    /// plain composed candle ops differentiated by candle: the reference
    Composed,
}

thread_local! {
    static PATH: Cell<Path> = const { Cell::new(Path::Auto) };
}

/// Routes every op on this thread through one implementation, for tests.
pub fn set_path(p: Path) {
    PATH.with(|c| c.set(p));
}

/// Routes every op on this thread through composed candle ops (the reference), for tests.
pub fn force_composed(on: bool) {
    set_path(if on { Path::Composed } else { Path::Auto });
}

fn path() -> Path {
    PATH.with(|c| c.get())
}

/// The implementations of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// plain candle ops differentiated by candle: the reference
    Composed,
    /// the CPU kernel with its hand-written backward pass, for f32
    Fused,
    /// candle ops on detached inputs and one attached backward pass (`device`), with ftl's CUDA
    /// kernels where `kernels` allows
    Device,
}

/// The implementation an op on `ts` takes: fused where all of them are f32 on the CPU, the device
/// path for anything else, unless `set_path` says otherwise. An op whose fused kernel also needs
/// certain shapes takes its device path for the others itself.
pub(crate) fn backend(ts: &[&Tensor]) -> Backend {
    let cpu_f32 = |t: &&Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    match path() {
        Path::Composed => Backend::Composed,
        Path::Device => Backend::Device,
        Path::Auto if ts.iter().all(cpu_f32) => Backend::Fused,
        Path::Auto => Backend::Device,
    }
}

/// True when ops must use the composed reference (for callers that compose one of their own).
pub fn composed_only() -> bool {
    path() == Path::Composed
}

/// Whether a device path may run ftl's own CUDA kernels on `t`.
pub(crate) fn kernels(t: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::usable(t)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        false
    }
}

/// `t` in another shape, its gradient reshaped back without a copy on the device path.
pub fn reshape<S: Into<Shape>>(t: &Tensor, shape: S) -> Result<Tensor> {
    tape::reshape(t, shape.into())
}

/// Whether the backward pass must produce a gradient for `t`: it is a variable or depends on one.
pub(crate) fn needs_grad(t: &Tensor) -> bool {
    t.track_op()
}

/// The f32 contents of a contiguous CPU storage as a slice.
pub(crate) fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op expects a contiguous tensor"),
    }
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice_f32(c, l)?),
        _ => candle_core::bail!("fused op expects a CPU tensor"),
    }
}

/// A new f32 CPU tensor without graph history.
pub(crate) fn from_vec(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Uninitialised-length f32 buffer, zero-filled (cheap: the OS hands out zeroed pages).
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// Number of threads to use for the CPU kernels.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// C = alpha·C + beta·A·B on raw row/column strides (gemm crate, AVX-512 kernels).
///
/// # Safety
/// All pointers must be valid for the given sizes and strides, `dst` not aliasing the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
) {
    let par = if m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads())
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m, n, k, dst, dst_cs, dst_rs, accumulate, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0,
        beta, false, false, false, par,
    )
}

/// A raw pointer that may cross rayon's thread boundary; users guarantee disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{Device, Result, Tensor, Var};

    pub fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    pub fn var(shape: &[usize], seed: u64) -> Result<Var> {
        Var::from_tensor(&randn(shape, seed)?)
    }

    pub fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        let d: f32 = d.to_scalar().unwrap();
        let n: f32 = n.to_scalar().unwrap();
        (d / n.max(1e-30)).sqrt()
    }

    /// Runs `f` fused and composed; checks outputs and the gradients of `vars`.
    pub fn check_fused_vs_composed(
        vars: &[&Var],
        f: impl Fn() -> Result<Tensor>,
        tol: f32,
    ) -> Result<()> {
        let weights = randn(f()?.dims(), 99)?;
        let run = |composed: bool| -> Result<(Tensor, Vec<Option<Tensor>>)> {
            super::force_composed(composed);
            let y = f()?;
            let loss = (y.clone() * &weights)?.sum_all()?;
            let g = loss.backward()?;
            super::force_composed(false);
            Ok((
                y,
                vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect(),
            ))
        };
        let (yf, gf) = run(false)?;
        let (yc, gc) = run(true)?;
        // the device path too
        super::set_path(super::Path::Device);
        let yd = f()?;
        let loss = (yd.clone() * &weights)?.sum_all()?;
        let gd = loss.backward()?;
        super::set_path(super::Path::Auto);
        let e = rel(&yd, &yc);
        assert!(e < tol, "device path: output differs: {e}");
        for (i, (v, b)) in vars.iter().zip(gc.iter()).enumerate() {
            match (gd.get(v.as_tensor()), b) {
                (Some(a), Some(b)) => {
                    let e = rel(a, b);
                    assert!(e < tol, "device path: grad {i} differs: {e}")
                }
                (None, None) => {}
                (a, _) => panic!("device path: grad {i}: present {:?}", a.is_some()),
            }
        }
        let e = rel(&yf, &yc);
        assert!(e < tol, "output differs: {e}");
        for (i, (a, b)) in gf.iter().zip(gc.iter()).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let e = rel(a, b);
                    assert!(e < tol, "grad {i} differs: {e}")
                }
                (None, None) => {}
                _ => panic!(
                    "grad {i}: fused {:?} composed {:?}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
        Ok(())
    }
}
