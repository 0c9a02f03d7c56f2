//! Optimizers exactly as `torch.optim.AdamW` and `torch.optim.SGD` (momentum, coupled weight
//! decay), updating each parameter in place in one parallel pass over its buffer.

use crate::error::{Error, Result};
use crate::model::Param;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug)]
pub enum Kind {
    AdamW { beta1: f64, beta2: f64, eps: f64 },
    Sgd { momentum: f64 },
}

#[derive(Clone, Debug)]
pub struct OptimOpts {
    pub kind: Kind,
    pub weight_decay: f64,
}

/// Per-parameter state: moments on the CPU as plain buffers, elsewhere as tensors.
enum Buf {
    Cpu(Vec<f32>),
    Dev(Tensor),
}

struct State {
    /// AdamW: first moment; SGD: momentum buffer
    m: Option<Buf>,
    v: Option<Buf>,
    t: u64,
}

pub struct Optimizer {
    pub opts: OptimOpts,
    states: HashMap<String, State>,
}

struct AdamWStep<'a> {
    s: RefCell<&'a mut State>,
    lr: f32,
    wd_factor: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

const CHUNK: usize = 1 << 14;

impl InplaceOp2 for AdamWStep<'_> {
    fn name(&self) -> &'static str {
        "ftl-adamw"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let (pa, pb) = lp
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adamw: parameter not contiguous".into()))?;
        let p = match p {
            CpuStorage::F32(v) => &mut v[pa..pb],
            _ => candle_core::bail!("adamw: f32 parameters only on the CPU path"),
        };
        let g = crate::ops::slice_f32(g, lg)?;
        let mut s = self.s.borrow_mut();
        let n = p.len();
        let (Some(Buf::Cpu(m)), Some(Buf::Cpu(v))) = (s.m.take(), s.v.take()) else {
            candle_core::bail!("adamw: missing state")
        };
        let (mut m, mut v) = (m, v);
        let (wdf, b1, b2, eps, ss, bc2) = (
            self.wd_factor,
            self.b1,
            self.b2,
            self.eps,
            self.step_size,
            self.bc2_sqrt,
        );
        let _ = self.lr;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    p[i] *= wdf;
                    m[i] += (g[i] - m[i]) * (1.0 - b1);
                    v[i] = v[i] * b2 + (1.0 - b2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2 + eps;
                    p[i] -= ss * (m[i] / denom);
                }
            });
        debug_assert_eq!(m.len(), n);
        s.m = Some(Buf::Cpu(m));
        s.v = Some(Buf::Cpu(v));
        Ok(())
    }
}

struct SgdStep<'a> {
    s: RefCell<&'a mut State>,
    lr: f32,
    wd: f32,
    momentum: f32,
}

impl InplaceOp2 for SgdStep<'_> {
    fn name(&self) -> &'static str {
        "ftl-sgd"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let (pa, pb) = lp
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("sgd: parameter not contiguous".into()))?;
        let p = match p {
            CpuStorage::F32(v) => &mut v[pa..pb],
            _ => candle_core::bail!("sgd: f32 parameters only on the CPU path"),
        };
        let g = crate::ops::slice_f32(g, lg)?;
        let (lr, wd, mom) = (self.lr, self.wd, self.momentum);
        let mut s = self.s.borrow_mut();
        if mom == 0.0 {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(p, g)| {
                    for i in 0..p.len() {
                        let d = if wd != 0.0 { g[i] + wd * p[i] } else { g[i] };
                        p[i] -= lr * d;
                    }
                });
            return Ok(());
        }
        let first = s.m.is_none();
        let mut buf = match s.m.take() {
            Some(Buf::Cpu(b)) => b,
            _ => vec![0f32; p.len()],
        };
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|((p, g), b)| {
                for i in 0..p.len() {
                    let d = if wd != 0.0 { g[i] + wd * p[i] } else { g[i] };
                    b[i] = if first { d } else { mom * b[i] + d };
                    p[i] -= lr * b[i];
                }
            });
        s.m = Some(Buf::Cpu(buf));
        Ok(())
    }
}

/// The state `kind` keeps for parameters of these sizes and dtypes: AdamW two moments, SGD a
/// momentum buffer (none without momentum). What `Optimizer::state_bytes` reports once every
/// parameter has been updated.
pub fn state_bytes_for(kind: &Kind, params: &[(usize, DType)]) -> usize {
    let buffers = match kind {
        Kind::AdamW { .. } => 2,
        Kind::Sgd { momentum } if *momentum != 0.0 => 1,
        Kind::Sgd { .. } => 0,
    };
    params
        .iter()
        .map(|(n, dt)| buffers * n * state_dtype(*dt).size_in_bytes())
        .sum()
}

/// Optimizer state in f32, except for half-precision weights, whose state has their dtype.
fn state_dtype(param: DType) -> DType {
    match param {
        DType::BF16 | DType::F16 => param,
        _ => DType::F32,
    }
}

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

impl Optimizer {
    pub fn new(opts: OptimOpts) -> Self {
        Optimizer {
            opts,
            states: HashMap::new(),
        }
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        let b = |x: &Option<Buf>| match x {
            Some(Buf::Cpu(v)) => v.len() * 4,
            Some(Buf::Dev(t)) => t.elem_count() * t.dtype().size_in_bytes(),
            None => 0,
        };
        self.states.values().map(|s| b(&s.m) + b(&s.v)).sum()
    }

    /// Keeps state only for `names` (parameters dropped from training lose theirs).
    pub fn retain(&mut self, names: &[String]) {
        self.states.retain(|k, _| names.contains(k));
    }

    /// The state of every parameter, for a checkpoint: its buffers as tensors (`NAME.m`,
    /// `NAME.v`) and its step count.
    pub fn export(&self) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, u64>)> {
        let mut tensors = BTreeMap::new();
        let mut steps = BTreeMap::new();
        for (name, st) in &self.states {
            for (suffix, b) in [("m", &st.m), ("v", &st.v)] {
                let t = match b {
                    Some(Buf::Cpu(v)) => Tensor::from_slice(v, v.len(), &Device::Cpu)?,
                    Some(Buf::Dev(t)) => t.clone(),
                    None => continue,
                };
                tensors.insert(format!("{name}.{suffix}"), t);
            }
            steps.insert(name.clone(), st.t);
        }
        Ok((tensors, steps))
    }

    /// The state `export` wrote, for the parameters `params` (each buffer checked against its
    /// parameter's size); what was there before is replaced.
    pub fn import(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
        params: &[(String, Param)],
    ) -> Result<()> {
        self.states.clear();
        for (name, p) in params {
            let Some(&t) = steps.get(name) else { continue };
            let value = p.value();
            let fast = cpu_f32(&value);
            let buf = |suffix: &str| -> Result<Option<Buf>> {
                let Some(b) = tensors.get(&format!("{name}.{suffix}")) else {
                    return Ok(None);
                };
                if b.elem_count() != value.elem_count() {
                    return Err(Error::msg(format!(
                        "optimizer state `{name}.{suffix}` has {} values, the parameter {}",
                        b.elem_count(),
                        value.elem_count()
                    )));
                }
                Ok(Some(if fast {
                    Buf::Cpu(b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
                } else {
                    let b = b.reshape(value.shape())?.to_device(value.device())?;
                    Buf::Dev(b.to_dtype(state_dtype(value.dtype()))?)
                }))
            };
            let (m, v) = (buf("m")?, buf("v")?);
            self.states.insert(name.clone(), State { m, v, t });
        }
        Ok(())
    }

    /// One update of `p` (named `name`) with gradient `g` at learning rate `lr`; `decay` says
    /// whether weight decay applies to it.
    pub fn update(
        &mut self,
        name: &str,
        p: &Param,
        g: &Tensor,
        lr: f64,
        decay: bool,
    ) -> Result<()> {
        let var = p
            .var()
            .ok_or_else(|| Error::msg(format!("optimizer: `{name}` is not trainable")))?;
        let t = var.as_tensor();
        let wd = if decay { self.opts.weight_decay } else { 0.0 };
        let fast = cpu_f32(t) && cpu_f32(g);
        let st = self.states.entry(name.to_string()).or_insert(State {
            m: None,
            v: None,
            t: 0,
        });
        st.t += 1;
        match self.opts.kind.clone() {
            Kind::AdamW { beta1, beta2, eps } => {
                if st.m.is_none() {
                    st.m = Some(if fast {
                        Buf::Cpu(vec![0.0; t.elem_count()])
                    } else {
                        Buf::Dev(t.to_dtype(state_dtype(t.dtype()))?.zeros_like()?)
                    });
                    st.v = Some(if fast {
                        Buf::Cpu(vec![0.0; t.elem_count()])
                    } else {
                        Buf::Dev(t.to_dtype(state_dtype(t.dtype()))?.zeros_like()?)
                    });
                }
                let bc1 = 1.0 - beta1.powi(st.t as i32);
                let bc2 = 1.0 - beta2.powi(st.t as i32);
                let step_size = lr / bc1;
                if fast {
                    let op = AdamWStep {
                        lr: lr as f32,
                        wd_factor: (1.0 - lr * wd) as f32,
                        b1: beta1 as f32,
                        b2: beta2 as f32,
                        eps: eps as f32,
                        step_size: step_size as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        s: RefCell::new(st),
                    };
                    t.inplace_op2(g, &op)?;
                } else {
                    let (Some(Buf::Dev(m)), Some(Buf::Dev(v))) = (&st.m, &st.v) else {
                        unreachable!()
                    };
                    #[cfg(feature = "cuda")]
                    if crate::ops::cuda::usable(t) && m.dtype() == t.dtype() {
                        crate::ops::cuda::adamw(
                            t,
                            g,
                            m,
                            v,
                            (1.0 - lr * wd) as f32,
                            beta1 as f32,
                            beta2 as f32,
                            eps as f32,
                            step_size as f32,
                            bc2.sqrt() as f32,
                        )?;
                        return Ok(());
                    }
                    // in f32, stored in the state's dtype (bf16 for bf16 weights, as torch's AdamW)
                    let sdt = m.dtype();
                    let g = g.to_dtype(DType::F32)?;
                    let (mf, vf) = (m.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
                    let pf = (t.to_dtype(DType::F32)? * (1.0 - lr * wd))?;
                    let m = (&mf + ((&g - &mf)? * (1.0 - beta1))?)?;
                    let v = ((vf * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                    let newp = (pf - ((&m / denom)? * step_size)?)?;
                    var.set(&newp.to_dtype(t.dtype())?)?;
                    st.m = Some(Buf::Dev(m.to_dtype(sdt)?));
                    st.v = Some(Buf::Dev(v.to_dtype(sdt)?));
                }
            }
            Kind::Sgd { momentum } => {
                if fast {
                    let op = SgdStep {
                        lr: lr as f32,
                        wd: wd as f32,
                        momentum: momentum as f32,
                        s: RefCell::new(st),
                    };
                    t.inplace_op2(g, &op)?;
                } else {
                    let g = g.to_dtype(DType::F32)?;
                    let pf = t.to_dtype(DType::F32)?;
                    let d = if wd != 0.0 { (&g + (&pf * wd)?)? } else { g };
                    let d = if momentum != 0.0 {
                        let b = match &st.m {
                            Some(Buf::Dev(b)) => ((b * momentum)? + &d)?,
                            _ => d,
                        };
                        st.m = Some(Buf::Dev(b.clone()));
                        b
                    } else {
                        d
                    };
                    var.set(&(pf - (d * lr)?)?.to_dtype(t.dtype())?)?;
                }
            }
        }
        Ok(())
    }
}

/// Σ g² over several gradients, kept on the device until asked for (reading it back would wait
/// for the GPU after every parameter).
#[derive(Default)]
pub struct SumSq {
    host: f64,
    dev: Option<Tensor>,
}

impl SumSq {
    pub fn add(&mut self, g: &Tensor) -> Result<()> {
        if g.device().is_cpu() {
            self.host += sum_sq(g)?;
        } else {
            let s = dev_sum_sq(g)?;
            self.dev = Some(match self.dev.take() {
                Some(d) => (d + s)?,
                None => s,
            });
        }
        Ok(())
    }

    pub fn total(&self) -> Result<f64> {
        Ok(self.host
            + match &self.dev {
                Some(d) => d.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 0.0,
            })
    }
}

/// Σ g² as an f32 scalar on g's device (one kernel on a GPU; candle's `sum_all` reduces in a
/// single block there).
fn dev_sum_sq(g: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::ops::cuda::usable(g) {
        return Ok(crate::ops::cuda::sum_sq(g)?);
    }
    let n = g.dims().last().copied().unwrap_or(1).max(1);
    let rows = g.to_dtype(DType::F32)?.reshape((g.elem_count() / n, n))?;
    Ok(rows.sqr()?.sum(1)?.sum_all()?)
}

/// Σ g² of one gradient (one parallel pass, no temporary, on the CPU).
pub fn sum_sq(g: &Tensor) -> Result<f64> {
    Ok(if cpu_f32(g) {
        crate::ops::with_f32(g, |v| {
            // added in order: rayon's sum depends on its scheduling (a clipped training must
            // repeat bit for bit)
            Ok(v.par_chunks(CHUNK)
                .map(|c| c.iter().map(|x| (x * x) as f64).sum::<f64>())
                .collect::<Vec<f64>>()
                .into_iter()
                .sum::<f64>())
        })?
    } else {
        dev_sum_sq(g)?.to_dtype(DType::F64)?.to_scalar::<f64>()?
    })
}

/// Scales the gradients, whose global L2 norm is `norm`, so that it is at most `max` (torch's
/// `clip_grad_norm_`).
pub fn clip(grads: &mut [Tensor], norm: f64, max: Option<f64>) -> Result<()> {
    if let Some(m) = max {
        let coef = (m / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(())
}
