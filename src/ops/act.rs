//! Activation functions with backward passes, named as HF configs name them (fused on the CPU,
//! candle's ops elsewhere), and SwiGLU's `silu_mul` with all of its paths: the composed
//! reference, the fused CPU kernel, the device path and its CUDA kernels.

use super::device::attach;
use super::tape::Bwd;
use super::{backend, needs_grad, slice_f32, with_f32, Backend};
#[cfg(feature = "cuda")]
use super::{device::attach_fresh, kernels};
use candle_core::cpu::erf::erf_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The activations HF configs use (`hidden_act`, `activation_function`, AdapterHub's
/// `non_linearity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    /// exact (erf) GELU: `gelu`
    Gelu,
    /// tanh approximation: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`
    GeluTanh,
    QuickGelu,
    Tanh,
    Sigmoid,
    Identity,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "gelu" | "gelu_orig" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "linear" | "identity" => Activation::Identity,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        if self == Activation::Identity {
            return Ok(x.clone());
        }
        match backend(&[x]) {
            Backend::Fused => super::tape::fused1(&x.contiguous()?, Unary(self)),
            // no device path of its own: candle's op, one node that the tape leaves to candle
            Backend::Composed | Backend::Device => match self {
                Activation::Silu => x.silu(),
                Activation::Relu => x.relu(),
                Activation::Gelu => x.gelu_erf(),
                Activation::GeluTanh => x.gelu(),
                Activation::QuickGelu => x.mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?),
                Activation::Tanh => x.tanh(),
                Activation::Sigmoid => candle_nn::ops::sigmoid(x),
                Activation::Identity => Ok(x.clone()),
            },
        }
    }

    /// f(x) and f'(x).
    #[inline]
    fn eval(self, x: f32) -> (f32, f32) {
        match self {
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
            Activation::Relu => {
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                (x * cdf, cdf + x * pdf)
            }
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6;
                let u = C * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                let du = C * (1.0 + 3.0 * 0.044715 * x * x);
                (
                    0.5 * x * (1.0 + t),
                    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
                )
            }
            Activation::QuickGelu => {
                let s = 1.0 / (1.0 + (-1.702 * x).exp());
                (x * s, s + x * 1.702 * s * (1.0 - s))
            }
            Activation::Tanh => {
                let t = x.tanh();
                (t, 1.0 - t * t)
            }
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + (-x).exp());
                (s, s * (1.0 - s))
            }
            Activation::Identity => (x, 1.0),
        }
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Activation::Gelu.apply(x)
}

pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Activation::GeluTanh.apply(x)
}

struct Unary(Activation);

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        "ftl-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l)?;
        let mut y = super::zeros(x.len());
        let a = self.0;
        y.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = a.eval(x).0));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !needs_grad(x) {
            return Ok(None);
        }
        let a = self.0;
        with_f32(x, |x_| {
            with_f32(g, |g_| {
                let mut d = super::zeros(x_.len());
                d.par_chunks_mut(4096)
                    .zip(x_.par_chunks(4096).zip(g_.par_chunks(4096)))
                    .for_each(|(d, (x, g))| {
                        for i in 0..d.len() {
                            d[i] = g[i] * a.eval(x[i]).1;
                        }
                    });
                super::from_vec(d, x.shape()).map(Some)
            })
        })
    }
}

/// `silu(gate) * up`, the SwiGLU of llama's MLP.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match backend(&[gate, up]) {
        Backend::Fused if gate.shape() == up.shape() => {
            super::tape::fused2(&gate.contiguous()?, &up.contiguous()?, SiluMul)
        }
        // the fused kernel takes one shape: a broadcast one takes the device path
        Backend::Fused | Backend::Device => silu_mul_device(gate, up),
        Backend::Composed => gate.silu()?.mul(up),
    }
}

/// `act(gate) * up` for any activation.
pub fn act_mul(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if act == Activation::Silu {
        return silu_mul(gate, up);
    }
    act.apply(gate)?.mul(up)
}

/// `silu_mul` on the device path: ftl's kernels on CUDA for one shape, candle ops elsewhere.
fn silu_mul_device(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels(gate) && gate.shape() == up.shape() {
        let (gate, up) = (&gate.contiguous()?, &up.contiguous()?);
        let y = cuda::silu_mul(&gate.detach(), &up.detach())?;
        let bwd: Bwd = Arc::new(|a: &[&Tensor], _: &Tensor, g: &Tensor| {
            let (dg, du) = cuda::silu_mul_bwd(
                &a[0].detach(),
                &a[1].detach(),
                g,
                needs_grad(a[0]),
                needs_grad(a[1]),
            )?;
            Ok(vec![dg, du.map(|d| d.to_dtype(a[1].dtype())).transpose()?])
        });
        return attach_fresh(&[gate, up], y, bwd);
    }
    let y = gate.detach().silu()?.mul(&up.detach())?;
    let bwd: Bwd = Arc::new(|a: &[&Tensor], _: &Tensor, g: &Tensor| {
        let dt = a[0].dtype();
        let gt = a[0].detach().to_dtype(DType::F32)?;
        let up = a[1].detach().to_dtype(DType::F32)?;
        let gf = g.to_dtype(DType::F32)?;
        let s = candle_nn::ops::sigmoid(&gt)?;
        let dg = if needs_grad(a[0]) {
            let one_minus = (1.0 - &s)?;
            let ds = (&s * ((&gt * one_minus)? + 1.0)?)?;
            Some((&gf * &up)?.mul(&ds)?.to_dtype(dt)?)
        } else {
            None
        };
        let du = if needs_grad(a[1]) {
            Some((gf * (gt * s)?)?.to_dtype(a[1].dtype())?)
        } else {
            None
        };
        Ok(vec![dg, du])
    });
    attach(&[gate, up], y, bwd)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "ftl-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?);
        let mut y = super::zeros(g.len());
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    let s = 1.0 / (1.0 + (-g[i]).exp());
                    y[i] = g[i] * s * u[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        gr: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ng, nu) = (needs_grad(gate), needs_grad(up));
        with_f32(gate, |g_| {
            with_f32(up, |u_| {
                with_f32(gr, |d_| {
                    let n = g_.len();
                    let mut dg = super::zeros(n);
                    let mut du = super::zeros(n);
                    const C: usize = 4096;
                    dg.par_chunks_mut(C)
                        .zip(du.par_chunks_mut(C))
                        .enumerate()
                        .for_each(|(ci, (dg, du))| {
                            let o = ci * C;
                            for i in 0..dg.len() {
                                let g = g_[o + i];
                                let s = 1.0 / (1.0 + (-g).exp());
                                let d = d_[o + i];
                                dg[i] = d * u_[o + i] * s * (1.0 + g * (1.0 - s));
                                du[i] = d * g * s;
                            }
                        });
                    let dg = if ng {
                        Some(super::from_vec(dg, gate.shape())?)
                    } else {
                        None
                    };
                    let du = if nu {
                        Some(super::from_vec(du, up.shape())?)
                    } else {
                        None
                    };
                    Ok((dg, du))
                })
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! SwiGLU's launchers (`silu_mul_fwd`, `silu_mul_bwd` in kernels.cu).

    use crate::ops::cuda::{args, dev_of, func, opt_args, typed, vec16, vec_cfg, view, wrap};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    pub(super) fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
        let dev = dev_of(g)?;
        let n = g.elem_count();
        let u = u.to_dtype(g.dtype())?.contiguous()?;
        let (gu, _) = u.storage_and_layout();
        let f = func(&dev, "silu_mul_fwd", g.dtype())?;
        let g = g.contiguous()?;
        let (n_, vec) = (n as i64, vec16(&[&g, &u]));
        let shape = g.shape().clone();
        typed!(g, |gv: Ty| {
            let uv = view!(gu, u, Ty);
            let dst = unsafe { dev.alloc::<Ty>(n)? };
            let mut b = f.builder();
            args!(b, &gv, &uv, &dst, &n_, &vec);
            unsafe { b.launch(vec_cfg(n)) }.w()?;
            Ok(wrap(dst, &dev, shape))
        })
    }

    pub(super) fn silu_mul_bwd(
        g: &Tensor,
        u: &Tensor,
        d: &Tensor,
        need_g: bool,
        need_u: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = dev_of(g)?;
        let n = g.elem_count();
        let u = u.to_dtype(g.dtype())?.contiguous()?;
        let d = d.to_dtype(g.dtype())?.contiguous()?;
        let (gu, _) = u.storage_and_layout();
        let (gd, _) = d.storage_and_layout();
        let f = func(&dev, "silu_mul_bwd", g.dtype())?;
        let g = g.contiguous()?;
        let (n_, vec) = (n as i64, vec16(&[&g, &u, &d]));
        let shape = g.shape().clone();
        typed!(g, |gv: Ty| {
            let uv = view!(gu, u, Ty);
            let dv = view!(gd, d, Ty);
            let dg = if need_g {
                Some(unsafe { dev.alloc::<Ty>(n)? })
            } else {
                None
            };
            let du = if need_u {
                Some(unsafe { dev.alloc::<Ty>(n)? })
            } else {
                None
            };
            let mut b = f.builder();
            args!(b, &gv, &uv, &dv);
            opt_args!(b, &dg, &du);
            args!(b, &n_, &vec);
            unsafe { b.launch(vec_cfg(n)) }.w()?;
            Ok((
                dg.map(|x| wrap(x, &dev, shape.clone())),
                du.map(|x| wrap(x, &dev, shape.clone())),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn activations_fused_match_composed() -> Result<()> {
        let x = var(&[3, 50], 1)?;
        for a in [
            Activation::Silu,
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            check_fused_vs_composed(&[&x], || a.apply(x.as_tensor()), 2e-5)?;
        }
        Ok(())
    }

    #[test]
    fn silu_mul_fused_matches_composed() -> Result<()> {
        let g = var(&[3, 5000], 1)?;
        let u = var(&[3, 5000], 2)?;
        check_fused_vs_composed(&[&g, &u], || silu_mul(g.as_tensor(), u.as_tensor()), 1e-5)
    }
}
