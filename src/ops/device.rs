//! The device path's shared plumbing (what every op's device path builds on): an output computed
//! by candle ops on detached inputs is attached to the graph (candle's, or the tape while one
//! records) as one op whose backward pass recomputes what it needs from the inputs, so only the
//! inputs are kept and frozen inputs get no gradient; and the budget of its f32 working copies.

use super::needs_grad;
use super::tape::{self, Bwd};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D,
};
use std::sync::Arc;

type Grads = Vec<Option<Tensor>>;

/// Size of the f32 working copies the device path makes at once (logits, attention scores).
static CHUNK_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(256 << 20);

/// Sets the working-copy budget (tests set it tiny to exercise the chunked loops).
pub fn set_chunk_bytes(n: usize) {
    CHUNK_BYTES.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

pub(super) fn chunk_bytes() -> usize {
    CHUNK_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// An op whose output was computed already and whose backward pass is `bwd`.
struct Attach {
    /// the precomputed output, handed over (and dropped here) by the forward call
    out: std::sync::Mutex<Option<Out>>,
    bwd: Bwd,
}

/// A precomputed output: a tensor to copy, or the storage taken from a fresh one.
enum Out {
    Copy(Tensor),
    Moved(Storage, Shape),
}

/// Takes the storage out of a tensor, leaving a one-element stand-in (see `attach_fresh`).
struct Steal(std::sync::Mutex<Option<Storage>>);

impl candle_core::InplaceOp1 for Steal {
    fn name(&self) -> &'static str {
        "ftl-steal"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, _: &Layout) -> Result<()> {
        let taken = std::mem::replace(s, CpuStorage::U8(vec![0]));
        *self.0.lock().unwrap() = Some(Storage::Cpu(taken));
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, _: &Layout) -> Result<()> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let stand_in = s.device().zeros_impl(&Shape::from(1usize), s.dtype())?;
        let taken = std::mem::replace(s, stand_in);
        *self.0.lock().unwrap() = Some(Storage::Cuda(taken));
        Ok(())
    }
}

impl Attach {
    fn take(&self) -> Result<Out> {
        match self.out.lock().unwrap().take() {
            Some(t) => Ok(t),
            None => candle_core::bail!("attach: output taken twice"),
        }
    }

    fn copy_cpu(&self) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        match self.take()? {
            Out::Moved(Storage::Cpu(c), shape) => Ok((c, shape)),
            Out::Copy(out) => {
                let (s, l) = out.storage_and_layout();
                match &*s {
                    Storage::Cpu(c) => Ok((c.try_clone(l)?, out.shape().clone())),
                    _ => candle_core::bail!("attach: output on another device"),
                }
            }
            _ => candle_core::bail!("attach: output on another device"),
        }
    }

    #[cfg(feature = "cuda")]
    fn copy_cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        match self.take()? {
            Out::Moved(Storage::Cuda(c), shape) => Ok((c, shape)),
            Out::Copy(out) => {
                let (s, l) = out.storage_and_layout();
                match &*s {
                    Storage::Cuda(c) => Ok((c.try_clone(l)?, out.shape().clone())),
                    _ => candle_core::bail!("attach: output on another device"),
                }
            }
            _ => candle_core::bail!("attach: output on another device"),
        }
    }

    fn grads(&self, args: &[&Tensor], out: &Tensor, g: &Tensor) -> Result<Grads> {
        let mut v = (self.bwd)(args, &out.detach(), &g.detach())?;
        for (i, a) in args.iter().enumerate() {
            if !needs_grad(a) {
                v[i] = None;
            }
        }
        Ok(v)
    }
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "ftl-attach"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.copy_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.copy_cuda()
    }
    fn bwd(&self, a: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[a], res, g)?.remove(0))
    }
}

impl CustomOp2 for Attach {
    fn name(&self) -> &'static str {
        "ftl-attach"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.copy_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.copy_cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut v = self.grads(&[a, b], res, g)?;
        let y = v.pop().unwrap();
        Ok((v.pop().unwrap(), y))
    }
}

impl CustomOp3 for Attach {
    fn name(&self) -> &'static str {
        "ftl-attach"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.copy_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.copy_cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut v = self.grads(&[a, b, c], res, g)?;
        let z = v.pop().unwrap();
        let y = v.pop().unwrap();
        Ok((v.pop().unwrap(), y, z))
    }
}

/// `out` (computed without a graph from `args`) with `bwd` as its backward pass.
pub(super) fn attach(args: &[&Tensor], out: Tensor, bwd: Bwd) -> Result<Tensor> {
    attach_out(args, out, bwd, false)
}

/// `attach` for an `out` whose storage nothing else shares (a fresh result, not a view of an
/// input): its storage moves into the graph instead of being copied.
pub(super) fn attach_fresh(args: &[&Tensor], out: Tensor, bwd: Bwd) -> Result<Tensor> {
    attach_out(args, out, bwd, true)
}

fn attach_out(args: &[&Tensor], out: Tensor, bwd: Bwd, fresh: bool) -> Result<Tensor> {
    if !args.iter().any(|a| needs_grad(a)) {
        return Ok(out);
    }
    if tape::recording() {
        let out = if fresh && out.is_contiguous() && out.layout().start_offset() == 0 {
            out
        } else {
            out.force_contiguous()?
        };
        let shape = out.shape().clone();
        return Ok(tape::op(args, steal(&out)?, shape, bwd));
    }
    attach_graph(args, out, bwd, fresh)
}

/// Takes the storage out of `t` (contiguous from offset 0, shared with nothing else).
pub(super) fn steal(t: &Tensor) -> Result<Storage> {
    let steal = Steal(std::sync::Mutex::new(None));
    t.inplace_op1(&steal)?;
    let taken = steal.0.lock().unwrap().take();
    match taken {
        Some(s) => Ok(s),
        None => candle_core::bail!("attach: storage not taken"),
    }
}

/// `attach` as a node of candle's graph.
fn attach_graph(args: &[&Tensor], out: Tensor, bwd: Bwd, fresh: bool) -> Result<Tensor> {
    let out = out.contiguous()?;
    let out = if fresh && out.layout().start_offset() == 0 {
        Out::Moved(steal(&out)?, out.shape().clone())
    } else {
        Out::Copy(out)
    };
    let op = Attach {
        out: std::sync::Mutex::new(Some(out)),
        bwd,
    };
    match args {
        [a] => a.apply_op1(op),
        [a, b] => a.apply_op2(b, op),
        [a, b, c] => a.apply_op3(b, c, op),
        _ => candle_core::bail!("attach: 1 to 3 inputs"),
    }
}

/// A scalar whose backward pass hands `g` to `out` as its gradient, as a node of candle's graph
/// (also while a tape records): how candle's backward starts from a value inside its graph.
pub(crate) fn seed_grad(out: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !needs_grad(out) {
        return Tensor::zeros((), out.dtype(), out.device());
    }
    let g = g.detach();
    let zero = Tensor::zeros((), out.dtype(), out.device())?;
    let bwd: Bwd = Arc::new(move |_: &[&Tensor], _: &Tensor, _: &Tensor| Ok(vec![Some(g.clone())]));
    attach_graph(&[out], zero, bwd, true)
}

/// `t` as a matrix of its last dimension's rows.
pub(super) fn rows(t: &Tensor) -> Result<Tensor> {
    let n = t.dim(D::Minus1)?;
    t.reshape((t.elem_count() / n.max(1), n))
}
