//! What launching ftl's CUDA kernels takes (`kernels.cu` and `flash_attn.cu`, compiled to PTX by
//! build.rs): loading a kernel, launch configurations, typed views of tensors and wrapping fresh
//! buffers as tensors. Each op's launchers are in its own file (its `cuda` module), AdamW's in
//! `optim.rs`; the ones called from outside `ops` are re-exported here. Tensors must be
//! contiguous, f32 or bf16.

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig,
};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Storage, Tensor};
use half::bf16;
use std::sync::Arc;

pub use super::attention::cuda::FLASH_LAUNCHES;
pub use super::optim::{adamw, sum_sq};

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
