//! Rotary position embeddings as HF computes them (`rotate_half` layout), with frequency tables
//! for the default, linear, dynamic-NTK, llama3 and yarn scalings: the composed reference, the
//! fused CPU kernel, the device path and its CUDA kernel.

use super::device::attach;
use super::{backend, slice_f32, Backend};
#[cfg(feature = "cuda")]
use super::{device::attach_fresh, kernels};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// Inverse frequencies plus the attention scaling factor HF multiplies cos/sin by.
#[derive(Clone, Debug)]
pub struct Rope {
    pub inv_freq: Arc<Vec<f32>>,
    pub attention_scaling: f32,
    /// dynamic NTK: (base, dim, factor, original max positions) to recompute for long inputs
    pub dynamic: Option<(f64, usize, f64, usize)>,
    /// the device path's cos/sin tables for the last (offset, length, device)
    #[allow(clippy::type_complexity)]
    pub device_tables: Arc<std::sync::Mutex<Option<((usize, usize, String), Tensor, Tensor)>>>,
}

impl Rope {
    pub fn head_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// The inverse frequencies to use when the longest position is `max_pos - 1`.
    fn inv_freq_for(&self, max_pos: usize) -> Arc<Vec<f32>> {
        match self.dynamic {
            Some((base, dim, factor, orig)) if max_pos > orig => {
                let base = base
                    * ((factor * max_pos as f64 / orig as f64) - (factor - 1.0))
                        .powf(dim as f64 / (dim as f64 - 2.0));
                Arc::new(default_inv_freq(base, dim))
            }
            _ => self.inv_freq.clone(),
        }
    }

    /// cos/sin tables `[t, d/2]` (f32) on `dev`, uploaded once per (offset, length).
    pub fn tables_on(
        &self,
        offset: usize,
        t: usize,
        dev: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let key = (offset, t, format!("{:?}", dev.location()));
        let mut c = self.device_tables.lock().unwrap();
        if let Some((k, cos, sin)) = c.as_ref() {
            if *k == key {
                return Ok((cos.clone(), sin.clone()));
            }
        }
        let (cos, sin) = self.tables(offset, t);
        let h = self.inv_freq.len();
        let cos = Tensor::from_vec(cos, (t, h), &Device::Cpu)?.to_device(dev)?;
        let sin = Tensor::from_vec(sin, (t, h), &Device::Cpu)?.to_device(dev)?;
        *c = Some((key, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    /// cos/sin tables `[t, d/2]` for positions `offset..offset+t`.
    pub fn tables(&self, offset: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
        let inv = self.inv_freq_for(offset + t);
        let h = inv.len();
        let mut cos = vec![0f32; t * h];
        let mut sin = vec![0f32; t * h];
        for p in 0..t {
            let pos = (offset + p) as f32;
            for i in 0..h {
                // HF multiplies in f32 before taking cos/sin
                let a = pos * inv[i];
                cos[p * h + i] = a.cos() * self.attention_scaling;
                sin[p * h + i] = a.sin() * self.attention_scaling;
            }
        }
        (cos, sin)
    }
}

pub fn default_inv_freq(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / dim as f32;
            1.0 / (base as f32).powf(e)
        })
        .collect()
}

/// Applies rotary embeddings to `x` laid out `[batch, seq, heads, head_dim]`, positions starting
/// at `offset`.
pub fn rope(x: &Tensor, r: &Rope, offset: usize) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    if d != r.head_dim() {
        candle_core::bail!(
            "rope: head_dim {d} but the rotary table has {}",
            r.head_dim()
        );
    }
    match backend(&[x]) {
        Backend::Fused => {
            let (cos, sin) = r.tables(offset, t);
            super::tape::fused1(
                &x.contiguous()?,
                RopeOp {
                    cos: Arc::new(cos),
                    sin: Arc::new(sin),
                    inverse: false,
                },
            )
        }
        Backend::Composed => composed(x, r, offset),
        Backend::Device => device(x, r, offset),
    }
}

fn composed(x: &Tensor, r: &Rope, offset: usize) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    let (cos, sin) = r.tables(offset, t);
    let h = d / 2;
    let dev = x.device();
    let cos = Tensor::from_vec(cos, (t, h), &Device::Cpu)?.to_device(dev)?;
    let sin = Tensor::from_vec(sin, (t, h), &Device::Cpu)?.to_device(dev)?;
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?
        .reshape((1, t, 1, d))?
        .to_dtype(x.dtype())?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?
        .reshape((1, t, 1, d))?
        .to_dtype(x.dtype())?;
    let x1 = x.narrow(D::Minus1, 0, h)?;
    let x2 = x.narrow(D::Minus1, h, h)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)?.add(&rot.broadcast_mul(&sin)?)
}

/// `rope` on the device path, `(x1, x2) → (x1·c − x2·s, x2·c + x1·s)`: ftl's kernel on CUDA.
fn device(x: &Tensor, r: &Rope, offset: usize) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    let (cos, sin) = r.tables_on(offset, t, x.device())?;
    #[cfg(feature = "cuda")]
    if kernels(x) {
        let x = &x.contiguous()?;
        let y = cuda::rope(&x.detach(), &cos, &sin, 1.0)?;
        return attach_fresh(
            &[x],
            y,
            Arc::new(move |_a: &[&Tensor], _: &Tensor, g: &Tensor| {
                Ok(vec![Some(cuda::rope(g, &cos, &sin, -1.0)?)])
            }),
        );
    }
    let rot = move |x: &Tensor, sign: f64| -> Result<Tensor> {
        let h = d / 2;
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let (c, s) = (
            cos.reshape((1, t, 1, h))?,
            (sin.reshape((1, t, 1, h))? * sign)?,
        );
        let x1 = xf.narrow(D::Minus1, 0, h)?;
        let x2 = xf.narrow(D::Minus1, h, h)?;
        let y1 = x1.broadcast_mul(&c)?.sub(&x2.broadcast_mul(&s)?)?;
        let y2 = x2.broadcast_mul(&c)?.add(&x1.broadcast_mul(&s)?)?;
        Tensor::cat(&[&y1, &y2], D::Minus1)?.to_dtype(dt)
    };
    let rot = Arc::new(rot);
    let y = rot(&x.detach(), 1.0)?;
    let rb = rot.clone();
    attach(
        &[x],
        y,
        Arc::new(move |_a: &[&Tensor], _: &Tensor, g: &Tensor| Ok(vec![Some(rb(g, -1.0)?)])),
    )
}

struct RopeOp {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    inverse: bool,
}

impl RopeOp {
    fn apply(&self, x: &[f32], dims: &[usize]) -> Vec<f32> {
        let (t, hh, d) = (dims[1], dims[2], dims[3]);
        let h = d / 2;
        let sgn = if self.inverse { -1.0 } else { 1.0 };
        let mut y = super::zeros(x.len());
        y.par_chunks_mut(hh * d)
            .zip(x.par_chunks(hh * d))
            .enumerate()
            .for_each(|(row, (yr, xr))| {
                let p = row % t;
                let (c, s) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
                for head in 0..hh {
                    let o = head * d;
                    for i in 0..h {
                        let (a, b) = (xr[o + i], xr[o + h + i]);
                        yr[o + i] = a * c[i] - sgn * b * s[i];
                        yr[o + h + i] = b * c[i] + sgn * a * s[i];
                    }
                }
            });
        y
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "ftl-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.apply(slice_f32(s, l)?, l.dims());
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !super::needs_grad(x) {
            return Ok(None);
        }
        let inv = RopeOp {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        super::with_f32(g, |g_| super::from_vec(inv.apply(g_, g.dims()), g.shape())).map(Some)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The rotary embedding's launcher (`rope` in kernels.cu), forward and inverse.

    use crate::ops::cuda::{args, dev_of, elem_cfg, func, typed, view, wrap};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    /// Rotary embeddings of `x` `[b, t, h, d]` with tables `[t, d/2]` (f32); `sign` −1 inverts.
    pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f32) -> Result<Tensor> {
        let dev = dev_of(x)?;
        let (b_, t, h, d) = x.dims4()?;
        let rows = b_ * t * h;
        let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
        let (gc, _) = cos.storage_and_layout();
        let (gs, _) = sin.storage_and_layout();
        let (cv, sv) = (view!(gc, cos, f32), view!(gs, sin, f32));
        let f = func(&dev, "rope", x.dtype())?;
        let (rows_, t_, h_, d_) = (rows as i64, t as i32, h as i32, d as i32);
        let shape = x.shape().clone();
        typed!(x, |xv: Ty| {
            let dst = unsafe { dev.alloc::<Ty>(rows * d)? };
            let mut b = f.builder();
            args!(b, &xv, &dst, &cv, &sv, &rows_, &t_, &h_, &d_, &sign);
            unsafe { b.launch(elem_cfg(rows * d / 2)) }.w()?;
            Ok(wrap(dst, &dev, shape))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn rope_fused_matches_composed() -> Result<()> {
        let r = Rope {
            inv_freq: Arc::new(default_inv_freq(10000.0, 8)),
            attention_scaling: 1.0,
            dynamic: None,
            device_tables: Default::default(),
        };
        let x = var(&[2, 5, 3, 8], 1)?;
        check_fused_vs_composed(&[&x], || rope(x.as_tensor(), &r, 3), 1e-5)
    }
}
