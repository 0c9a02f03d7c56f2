//! The backward pass, owned here: a micro-batch's forward pass records every op of `ops` on the
//! tape (`ops::tape`) and marks layer boundaries (`model::Ctx` segments); the pass back runs one
//! layer segment at a time, top down, through the tape (which hands the plain candle ops between
//! recorded ones to candle's own backward), freeing each segment's activations as soon as its
//! gradients are out and recomputing checkpointed layers from their inputs. Which segment a
//! parameter's gradient comes from is the model's structure (`Model::in_one_layer`), not its name.

use super::loss_sum;
use crate::data::Batch;
use crate::error::Result;
use crate::model::{Ctx, Model};
use crate::ops::tape;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use std::time::Instant;

/// What one micro-batch's pass leaves.
pub(super) struct Pass {
    /// its share of the step's loss (Σ over its label tokens / the step's), not yet read back
    pub loss: Tensor,
    pub forward_s: f64,
    pub backward_s: f64,
    /// layers recomputed (activation checkpointing)
    pub recomputed: usize,
}

/// What a pass tells its caller as it goes.
pub(super) enum Event<'a> {
    /// the forward pass and the loss are queued
    Forward,
    /// one segment's gradients
    Grads(&'a GradStore),
}

/// Forward and backward over `b` in train mode, dropout seeded by `seed`.
pub(super) fn forward_backward(
    m: &Model,
    b: &Batch,
    seed: u64,
    checkpoint: bool,
    denom: f64,
    mut on: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Pass> {
    let t0 = Instant::now();
    let ctx = m.ctx(true, seed).segmented().checkpointed(checkpoint);
    let _recording = tape::record();
    let logits = m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &ctx, None)?;
    let loss = (loss_sum(&logits, b)? / denom)?;
    drop(logits);
    on(Event::Forward)?;
    // read once the step's work is queued: reading it here would leave the GPU idle while the
    // backward pass is being queued
    let detached = loss.detach();
    let t1 = Instant::now();
    let recomputed = by_segment(m, b, &ctx, loss, |g| on(Event::Grads(g)))?;
    Ok(Pass {
        loss: detached,
        forward_s: (t1 - t0).as_secs_f64(),
        backward_s: t1.elapsed().as_secs_f64(),
        recomputed,
    })
}

/// The pass back from `loss`, one segment at a time (with checkpointing, the layer below a
/// boundary is recomputed from its input first); returns the layers recomputed.
fn by_segment(
    m: &Model,
    b: &Batch,
    ctx: &Ctx,
    loss: Tensor,
    mut on_grads: impl FnMut(&GradStore) -> Result<()>,
) -> Result<usize> {
    let mut recomputed = 0;
    let mut segments = ctx.take_segments();
    let head = tape::split_off(segments.last().map_or(0, |s| s.mark));
    let mut top = Some((loss, None, head));
    while let Some((t, g, ops)) = top.take() {
        let grads = tape::backward(&t, g, ops)?;
        drop(t);
        on_grads(&grads)?;
        // the gradient that reached the next boundary down continues below it
        while let Some(seg) = segments.pop() {
            let below = segments.last().map_or(0, |s| s.mark);
            let Some(g) = seg.var.as_ref().and_then(|v| grads.get(v.as_tensor())) else {
                tape::truncate(below);
                continue;
            };
            let (out, ops) = match seg.out {
                Some(out) => (out, tape::split_off(below)),
                None => {
                    let input = segments.last().map(|s| s.input.clone());
                    let replay = ctx.replay(seg.idx, input);
                    recomputed += 1;
                    let start = tape::len();
                    let out =
                        m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &replay, None)?;
                    (out, tape::split_off(start))
                }
            };
            top = Some((out, Some(g.clone()), ops));
            break;
        }
    }
    Ok(recomputed)
}
