//! The device path of every op (CUDA, and any non-f32 dtype): the forward pass runs as candle ops
//! on detached inputs, so no intermediate is kept, and one attached op carries the backward pass,
//! which recomputes what it needs from the inputs. Only the inputs are kept for the backward
//! pass, as with the fused CPU kernels, and frozen inputs get no gradient.

pub use super::device::set_chunk_bytes;
