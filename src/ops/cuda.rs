//! CUDA kernels of the device path (`kernels.cu`, compiled to PTX by build.rs): one launch
//! instead of a chain of candle ops for the element-wise parts of attention, cross-entropy,
//! RMSNorm, rotary embeddings, SwiGLU and AdamW. Tensors must be contiguous, f32 or bf16.

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Storage, Tensor};
use half::bf16;
use std::sync::Arc;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Whether `t` (and its dtype) takes the kernels.
pub fn usable(t: &Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

fn sfx(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => candle_core::bail!("ftl kernels: dtype {other:?}"),
    })
}

pub(crate) fn dev_of(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("ftl kernels: not a CUDA tensor"),
    }
}

/// A loaded kernel and the stream it launches on (candle's own `CudaFunc` is not exported).
pub(crate) struct Func {
    pub(crate) func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Func {
    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

pub(crate) fn func(dev: &CudaDevice, name: &str, dt: DType) -> Result<Func> {
    let f = dev.get_or_load_custom_func(&format!("{name}_{}", sfx(dt)?), "ftl_kernels", PTX)?;
    Ok(Func {
        func: f.into_cuda_function(),
        stream: dev.cuda_stream(),
    })
}

pub(crate) fn rows_cfg(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.next_power_of_two().clamp(32, 1024) as u32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Longest row the one-warp-per-row kernels hold in registers (32 lanes × 32).
pub(crate) const WARP_ROW: usize = 1024;

/// Eight rows (warps) per block.
pub(crate) fn warp_rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) fn elem_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch for the 16-byte-vector kernels (eight values or fewer per thread and step).
pub(crate) fn vec_cfg(n: usize) -> LaunchConfig {
    elem_cfg(n.div_ceil(8).clamp(1, 1 << 20))
}

/// Pushes each kernel argument onto launch builder `b`.
macro_rules! args {
    ($b:ident, $($a:expr),+ $(,)?) => {
        $($b.arg($a);)+
    };
}

/// Pushes each optional output buffer, or a null pointer where it is not wanted.
macro_rules! opt_args {
    ($b:ident, $($a:expr),+ $(,)?) => {
        $(match $a {
            Some(d) => $b.arg(d),
            None => $b.arg(&0u64),
        };)+
    };
}

/// A view of a contiguous CUDA tensor's data.
macro_rules! view {
    ($guard:ident, $t:expr, $ty:ty) => {{
        let (o1, o2) = $t
            .layout()
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("ftl kernels: input not contiguous".into()))?;
        match &*$guard {
            candle_core::Storage::Cuda(c) => c.as_cuda_slice::<$ty>()?.slice(o1..o2),
            _ => candle_core::bail!("ftl kernels: not a CUDA tensor"),
        }
    }};
}

pub(crate) fn wrap<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    s: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// Runs `f` with a typed view of `t`; dispatches on f32 / bf16.
macro_rules! typed {
    ($t:expr, |$v:ident: $ty:ident| $body:expr) => {{
        use candle_core::cuda_backend::cudarc::driver::CudaView;
        let t = $t.contiguous()?;
        let (g, _) = t.storage_and_layout();
        match t.dtype() {
            candle_core::DType::F32 => {
                type $ty = f32;
                let $v: CudaView<'_, f32> = $crate::ops::cuda::view!(g, t, f32);
                $body
            }
            candle_core::DType::BF16 => {
                type $ty = half::bf16;
                let $v: CudaView<'_, half::bf16> = $crate::ops::cuda::view!(g, t, half::bf16);
                $body
            }
            other => candle_core::bail!("ftl kernels: dtype {other:?}"),
        }
    }};
}

// the macros by path, for the launchers in the op files
pub(crate) use {args, opt_args, typed, view};

pub(crate) fn rows_of(t: &Tensor) -> Result<(usize, usize)> {
    let n = t.dim(candle_core::D::Minus1)?;
    Ok((t.elem_count() / n.max(1), n))
}

/// One AdamW update in place: `p`, `m`, `v` are written (all of `p`'s dtype), `g` read.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    wd_factor: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
) -> Result<()> {
    let dev = dev_of(p)?;
    for t in [p, m, v] {
        if !t.is_contiguous() || t.dtype() != p.dtype() {
            candle_core::bail!("adamw: parameter and state must be contiguous and of one dtype");
        }
    }
    let g = g.to_dtype(p.dtype())?.contiguous()?;
    let n = p.elem_count();
    let (gp, _) = p.storage_and_layout();
    let (gg, _) = g.storage_and_layout();
    let (gm, _) = m.storage_and_layout();
    let (gv, _) = v.storage_and_layout();
    let f = func(&dev, "adamw", p.dtype())?;
    let (n_, vec) = (n as i64, vec16(&[p, &g, m, v]));
    macro_rules! go {
        ($ty:ty) => {{
            let (pv, gvv, mv, vv) = (
                view!(gp, p, $ty),
                view!(gg, g, $ty),
                view!(gm, m, $ty),
                view!(gv, v, $ty),
            );
            let mut b = f.builder();
            args!(
                b, &pv, &gvv, &mv, &vv, &n_, &wd_factor, &b1, &b2, &eps, &step_size, &bc2_sqrt,
                &vec
            );
            unsafe { b.launch(vec_cfg(n)) }.w()?;
            Ok(())
        }};
    }
    match p.dtype() {
        DType::F32 => go!(f32),
        DType::BF16 => go!(bf16),
        o => candle_core::bail!("adamw: dtype {o:?}"),
    }
}

/// `Σ x²` as an f32 scalar on the device, in one pass (a gradient norm without an f32 copy).
pub fn sum_sq(x: &Tensor) -> Result<Tensor> {
    let dev = dev_of(x)?;
    let n = x.elem_count();
    let f = func(&dev, "sumsq", x.dtype())?;
    let x = x.contiguous()?;
    let (n_, vec) = (n as i64, vec16(&[&x]));
    let blocks = n.div_ceil(256 * 8).clamp(1, 2048) as u32;
    typed!(x, |xv: _Ty| {
        let dst = dev.alloc_zeros::<f32>(1)?;
        let mut b = f.builder();
        args!(b, &xv, &dst, &n_, &vec);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(wrap(dst, &dev, ()))
    })
}

/// Largest LoRA rank the low-rank kernels take.
pub const LORA_RMAX: usize = 64;

/// The kernel instance for rank `r`: `{name}_r{R}` with R the next of 8, 16, 32, 64.
/// The kernels' rank bucket (8, 16, 32, 64) that holds rank `r`.
fn lora_bucket(r: usize) -> Result<usize> {
    [8, 16, 32, 64]
        .into_iter()
        .find(|&x| r <= x)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("ftl kernels: LoRA rank {r} above {LORA_RMAX}"))
        })
}

fn lora_func(dev: &CudaDevice, name: &str, r: usize, dt: DType) -> Result<Func> {
    func(dev, &format!("{name}_r{}", lora_bucket(r)?), dt)
}

pub(crate) fn block_cfg(grid: (usize, usize)) -> Result<LaunchConfig> {
    if grid.1 > 65535 {
        candle_core::bail!("ftl kernels: {} row blocks exceed the grid", grid.1);
    }
    Ok(LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `x [M, K] · aᵀ` for f32 `x` and `a [r, K]`: `[M, r]` (bf16 activations take `lora_tc_fwd`).
pub fn lora_down(x: &Tensor, a: &Tensor) -> Result<Tensor> {
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
pub fn lora_up_add(y: &Tensor, h: &Tensor, bm: &Tensor, s: f32) -> Result<Tensor> {
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
pub fn lora_outer(l: &Tensor, x: &Tensor, s: f32) -> Result<Tensor> {
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

/// The device address of a contiguous f32 or bf16 CUDA tensor's first element. Every kernel and
/// cuBLAS call runs on the device's one stream, so the address is used in stream order.
pub(crate) fn addr(t: &Tensor) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (g, l) = t.storage_and_layout();
    let (o1, _) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("ftl kernels: input not contiguous".into()))?;
    let Storage::Cuda(c) = &*g else {
        candle_core::bail!("ftl kernels: not a CUDA tensor")
    };
    let base = match t.dtype() {
        DType::F32 => {
            let s = c.as_cuda_slice::<f32>()?;
            s.device_ptr(s.stream()).0
        }
        DType::BF16 => {
            let s = c.as_cuda_slice::<bf16>()?;
            s.device_ptr(s.stream()).0
        }
        dt => candle_core::bail!("ftl kernels: no address for {dt:?}"),
    };
    Ok(base + (o1 * t.dtype().size_in_bytes()) as u64)
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
    let (xa, ld_, off_, rows_, cols_) = (addr(x)?, ld as i64, off as i64, rows as i64, cols as i64);
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
pub fn lora_tc_weights(a: &Tensor, bm: &Tensor) -> Result<(Tensor, Tensor)> {
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
pub fn lora_tc_fwd(x: &Tensor, y: &Tensor, a3: &Tensor, b3: &Tensor, s: f32) -> Result<Tensor> {
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
pub fn lora_tc_bwd(
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

/// Whether the element-wise kernels may use 16-byte vectors on `ts` (their data 16-byte aligned;
/// fresh outputs are).
pub(crate) fn vec16(ts: &[&Tensor]) -> i32 {
    ts.iter()
        .all(|t| (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(16))
        as i32
}

/// Whether rows of `n` values of `ts` can be read in 16-byte vectors.
pub(crate) fn row_vec(n: usize, ts: &[&Tensor]) -> i32 {
    let v = 16 / ts[0].dtype().size_in_bytes();
    (n.is_multiple_of(v) && vec16(ts) == 1) as i32
}

pub use super::attention::cuda::FLASH_LAUNCHES;
