//! ftl's own record of a training pass, the one backward mechanism of `ops`: an op that would
//! add a node to candle's graph adds it here instead, and `backward` runs them in reverse. candle's backward allocates a zero
//! gradient for every edge of its graph and adds into it (a full read-modify-write of every
//! activation gradient); here a value's first gradient is handed over as is, and only values
//! with several users add. Every op of `ops` records here while a tape records, the CPU's fused
//! kernels (`fused1`..`fused3`) as well as the device path; only plain candle ops on recorded
//! values (reshapes, concatenations, the odd elementwise op in a model) stay in candle's graph,
//! which the recorded outputs end as leaves, and are differentiated by candle on the way, so
//! nothing recorded or not loses its gradient.

use candle_core::backprop::GradStore;
use candle_core::op::BackpropOp;
use candle_core::{CustomOp1, CustomOp2, CustomOp3, Result, Shape, Storage, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

/// A backward pass: the gradients of the inputs from the inputs, the output and its gradient.
pub(crate) type Bwd =
    Arc<dyn Fn(&[&Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

enum Entry {
    /// an op: `out` (a leaf of candle's graph) computed from `args`
    Op {
        out: Tensor,
        args: Vec<Tensor>,
        bwd: Bwd,
    },
    /// `out` is `src` in another shape (same storage): its gradient is reshaped, not copied
    View { out: Tensor, src: Tensor },
}

impl Entry {
    fn out(&self) -> &Tensor {
        match self {
            Entry::Op { out, .. } | Entry::View { out, .. } => out,
        }
    }
}

thread_local! {
    static TAPE: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

/// Recording on this thread while alive (see `record`).
pub struct Recording(());

impl Drop for Recording {
    fn drop(&mut self) {
        TAPE.with(|t| *t.borrow_mut() = None);
    }
}

/// Starts recording the device path's ops on this thread, on an empty tape.
pub fn record() -> Recording {
    TAPE.with(|t| *t.borrow_mut() = Some(Vec::new()));
    Recording(())
}

pub(crate) fn recording() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// Entries recorded so far (a mark for `split_off`/`truncate`).
pub fn len() -> usize {
    TAPE.with(|t| t.borrow().as_ref().map_or(0, |v| v.len()))
}

/// Drops what was recorded after `mark` (activation checkpointing forgets a layer's ops).
pub fn truncate(mark: usize) {
    TAPE.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.truncate(mark)
        }
    })
}

/// The entries recorded after `mark`, taken off the tape: one backward pass's worth.
pub struct Tape(Vec<Entry>);

pub fn split_off(mark: usize) -> Tape {
    TAPE.with(|t| match t.borrow_mut().as_mut() {
        Some(v) if mark < v.len() => Tape(v.split_off(mark)),
        _ => Tape(Vec::new()),
    })
}

fn push(e: Entry) {
    TAPE.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(e)
        }
    })
}

/// Records `out` (fresh storage nothing else holds) as computed from `args` by an op whose
/// backward pass is `bwd`; returns the leaf that stands for it.
pub(crate) fn op(args: &[&Tensor], storage: Storage, shape: Shape, bwd: Bwd) -> Tensor {
    let out = Tensor::from_storage(storage, shape, BackpropOp::none(), true);
    push(Entry::Op {
        out: out.clone(),
        args: args.iter().map(|a| (*a).clone()).collect(),
        bwd,
    });
    out
}

/// Records `out`, computed by a fused kernel on detached copies of `args`, with the kernel's
/// own backward pass `bwd`.
fn fused(args: &[&Tensor], out: Tensor, bwd: Bwd) -> Result<Tensor> {
    let shape = out.shape().clone();
    Ok(op(args, super::device::steal(&out)?, shape, bwd))
}

/// Whether a fused kernel on `args` records here rather than in candle's graph.
fn records(args: &[&Tensor]) -> bool {
    recording() && args.iter().any(|a| super::needs_grad(a))
}

/// `a.apply_op1(c)`, recorded on the tape while one records (candle's graph otherwise).
pub(crate) fn fused1<C: CustomOp1 + Send + Sync + 'static>(a: &Tensor, c: C) -> Result<Tensor> {
    if !records(&[a]) {
        return a.apply_op1(c);
    }
    let c: Arc<Box<dyn CustomOp1 + Send + Sync>> = Arc::new(Box::new(c));
    let out = a.detach().apply_op1_arc(c.clone())?;
    let bwd: Bwd = Arc::new(move |x: &[&Tensor], out: &Tensor, g: &Tensor| {
        Ok(vec![c.bwd(x[0], &out.detach(), &g.detach())?])
    });
    fused(&[a], out, bwd)
}

/// `a.apply_op2(b, c)`, recorded on the tape while one records.
pub(crate) fn fused2<C: CustomOp2 + Send + Sync + 'static>(
    a: &Tensor,
    b: &Tensor,
    c: C,
) -> Result<Tensor> {
    if !records(&[a, b]) {
        return a.apply_op2(b, c);
    }
    let c: Arc<Box<dyn CustomOp2 + Send + Sync>> = Arc::new(Box::new(c));
    let out = a.detach().apply_op2_arc(&b.detach(), c.clone())?;
    let bwd: Bwd = Arc::new(move |x: &[&Tensor], out: &Tensor, g: &Tensor| {
        let (ga, gb) = c.bwd(x[0], x[1], &out.detach(), &g.detach())?;
        Ok(vec![ga, gb])
    });
    fused(&[a, b], out, bwd)
}

/// `a.apply_op3(b, d, c)`, recorded on the tape while one records.
pub(crate) fn fused3<C: CustomOp3 + Send + Sync + 'static>(
    a: &Tensor,
    b: &Tensor,
    d: &Tensor,
    c: C,
) -> Result<Tensor> {
    if !records(&[a, b, d]) {
        return a.apply_op3(b, d, c);
    }
    let c: Arc<Box<dyn CustomOp3 + Send + Sync>> = Arc::new(Box::new(c));
    let out = a
        .detach()
        .apply_op3_arc(&b.detach(), &d.detach(), c.clone())?;
    let bwd: Bwd = Arc::new(move |x: &[&Tensor], out: &Tensor, g: &Tensor| {
        let (ga, gb, gd) = c.bwd(x[0], x[1], x[2], &out.detach(), &g.detach())?;
        Ok(vec![ga, gb, gd])
    });
    fused(&[a, b, d], out, bwd)
}

/// `t` in another shape; recorded as a view so its gradient flows back without a copy.
pub(crate) fn reshape(t: &Tensor, shape: Shape) -> Result<Tensor> {
    let out = t.reshape(shape)?;
    if recording() && t.is_variable() {
        push(Entry::View {
            out: out.clone(),
            src: t.clone(),
        });
    }
    Ok(out)
}

/// Gradients of the variables below `root` (the trainable parameters and the segment's input),
/// given `grad`, the gradient of `root` (none: `root` is a scalar loss, gradient 1), running
/// `tape` backwards.
pub fn backward(root: &Tensor, grad: Option<Tensor>, tape: Tape) -> Result<GradStore> {
    let mut entries = tape.0;
    let recorded: HashSet<TensorId> = entries.iter().map(|e| e.out().id()).collect();
    let mut store = GradStore::default();
    let mut state = State {
        store: &mut store,
        recorded: &recorded,
    };
    state.push(root, grad)?;
    while let Some(e) = entries.pop() {
        let Some(g) = state.store.remove(e.out()) else {
            continue;
        };
        match e {
            Entry::View { src, .. } => {
                let g = g.reshape(src.shape())?;
                state.push(&src, Some(g))?;
            }
            Entry::Op { args, bwd, out } => {
                let refs: Vec<&Tensor> = args.iter().collect();
                let grads = bwd(&refs, &out, &g)?;
                drop((out, g));
                for (a, ga) in args.iter().zip(grads) {
                    if let Some(ga) = ga.filter(|_| super::needs_grad(a)) {
                        state.push(a, Some(ga))?;
                    }
                }
            }
        }
    }
    Ok(store)
}

struct State<'a> {
    store: &'a mut GradStore,
    recorded: &'a HashSet<TensorId>,
}

impl State<'_> {
    /// Adds `g` to the gradient of `t`: kept by id for recorded values and variables, handed
    /// to candle's backward for a candle graph above them.
    fn push(&mut self, t: &Tensor, g: Option<Tensor>) -> Result<()> {
        if t.is_variable() || self.recorded.contains(&t.id()) {
            let g = match g {
                Some(g) => g,
                None => t.ones_like()?,
            };
            let sum = match self.store.remove(t) {
                Some(prev) => super::add::sum2(&prev, &g)?,
                None => g,
            };
            self.store.insert(t, sum);
        } else if t.track_op() {
            let grads = match g {
                Some(g) => super::device::seed_grad(t, &g)?.backward()?,
                None => t.backward()?,
            };
            self.store.extend(grads)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{randn, rel, var};
    use crate::ops::{self, set_path, Path};

    /// A residual block on the device path: rms_norm → linear → reshape → (candle op) → add.
    fn block(x: &Tensor, w: &Tensor, n: &Tensor, frozen: &Tensor) -> Result<Tensor> {
        let h = ops::rms_norm(x, n, 1e-6)?;
        let y = ops::linear(&h, w, None, false)?;
        let y = ops::reshape(&y, (2, 3, 2, 4))?;
        // a candle op in between: differentiated by candle on the way
        let y = (ops::reshape(&y.affine(0.5, 0.0)?, (2, 3, 8))? * 3.0)?;
        let y = ops::linear(&y, frozen, None, false)?;
        ops::add(&y, x)
    }

    #[test]
    fn recorded_backward_matches_candles_graph() -> Result<()> {
        set_path(Path::Device);
        let (x, w, n) = (var(&[2, 3, 8], 1)?, var(&[8, 8], 2)?, var(&[8], 3)?);
        let frozen = randn(&[8, 8], 4)?;
        let weights = randn(&[2, 3, 8], 5)?;
        let loss = |y: &Tensor| (y * &weights)?.sum_all();
        let run = |x: &Tensor| -> Result<Tensor> {
            let y = block(x, w.as_tensor(), n.as_tensor(), &frozen)?;
            block(&y, w.as_tensor(), n.as_tensor(), &frozen)
        };
        let graph = loss(&run(x.as_tensor())?)?.backward()?;

        let rec = record();
        let y = run(x.as_tensor())?;
        let entries = len();
        let l = loss(&y)?;
        let taped = backward(&l, None, split_off(0))?;
        drop(rec);
        set_path(Path::Auto);
        // 2 × (rms_norm, 2 linears, the view of a recorded value, add); candle's ops and the
        // view of their result stay in candle's graph
        assert_eq!(entries, 10);
        for v in [&x, &w, &n] {
            let (a, b) = (taped.get(v.as_tensor()), graph.get(v.as_tensor()));
            let e = rel(a.expect("taped gradient"), b.expect("graph gradient"));
            assert!(e < 1e-6, "gradient differs: {e}");
        }
        assert!(taped.get(&frozen).is_none());
        Ok(())
    }

    /// The CPU's fused kernels record on the tape too, with the gradients of the composed
    /// reference differentiated by candle.
    #[test]
    fn fused_kernels_record_with_the_reference_s_gradients() -> Result<()> {
        let (x, w, n) = (var(&[2, 3, 8], 1)?, var(&[8, 8], 2)?, var(&[8], 3)?);
        let frozen = randn(&[8, 8], 4)?;
        let weights = randn(&[2, 3, 8], 5)?;
        let loss = |y: &Tensor| (y * &weights)?.sum_all();
        let run = |x: &Tensor| -> Result<Tensor> {
            let y = block(x, w.as_tensor(), n.as_tensor(), &frozen)?;
            let y = ops::silu_mul(&y, &ops::scale_last(&y, n.as_tensor())?)?;
            block(&y, w.as_tensor(), n.as_tensor(), &frozen)
        };
        set_path(Path::Composed);
        let reference = loss(&run(x.as_tensor())?)?.backward()?;
        set_path(Path::Auto);
        let rec = record();
        let y = run(x.as_tensor())?;
        let entries = len();
        let taped = backward(&loss(&y)?, None, split_off(0))?;
        drop(rec);
        // as on the device path, plus scale_last and silu_mul
        assert_eq!(entries, 12);
        for v in [&x, &w, &n] {
            let (a, b) = (taped.get(v.as_tensor()), reference.get(v.as_tensor()));
            let e = rel(a.expect("taped gradient"), b.expect("reference gradient"));
            assert!(e < 1e-5, "gradient differs: {e}");
        }
        assert!(taped.get(&frozen).is_none());
        Ok(())
    }
}
