//! A model parameter: a frozen tensor or a trainable variable, plus the per-adapter trainable
//! copies that PEFT's `modules_to_save` keeps. Clones share state, which is how tied weights are
//! one parameter; the copies belong to a handle, so the two modules of a tied weight can each
//! have their own copy (PEFT's default) or share one (`ensure_weight_tying`).

use super::Ctx;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, RwLock};

thread_local! {
    /// Plan mode: weights are stand-ins for their shapes, so making one trainable marks it
    /// instead of copying it into a variable (which would touch every page of a model never
    /// read). Per thread, so a plan never changes a training running beside it.
    static SHAPES_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While the guard lives, parameters on this thread are shapes only (see `SHAPES_ONLY`).
pub struct ShapesOnly(bool);

pub fn shapes_only() -> ShapesOnly {
    ShapesOnly(SHAPES_ONLY.with(|c| c.replace(true)))
}

impl Drop for ShapesOnly {
    fn drop(&mut self) {
        SHAPES_ONLY.with(|c| c.set(self.0));
    }
}

#[derive(Clone)]
pub struct Param {
    state: Arc<RwLock<State>>,
    /// `modules_to_save` copies (trainable parameters), by adapter name.
    copies: Arc<RwLock<Vec<(String, Param)>>>,
}

struct State {
    /// The current base value; when trainable, the variable's tensor.
    value: Tensor,
    var: Option<Var>,
    /// Trainable in a plan: no variable, the value stays its stand-in.
    planned: bool,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read().unwrap();
        write!(
            f,
            "Param({:?}, trainable={})",
            s.value.dims(),
            s.var.is_some() || s.planned
        )
    }
}

impl Param {
    pub fn frozen(t: Tensor) -> Self {
        Param {
            state: Arc::new(RwLock::new(State {
                value: t,
                var: None,
                planned: false,
            })),
            copies: Default::default(),
        }
    }

    /// Another handle on the same weight with a list of copies of its own (starting with this
    /// handle's), so a copy added to one module of a tied weight leaves the other module alone.
    pub fn alias(&self) -> Param {
        Param {
            state: self.state.clone(),
            copies: Arc::new(RwLock::new(self.copies.read().unwrap().clone())),
        }
    }

    /// This handle, with its copies, on a weight of its own holding `t` (trainable as before): a
    /// module that stops sharing a tied weight.
    pub fn untied(&self, t: &Tensor) -> Result<Param> {
        let p = Param {
            state: Param::frozen(t.to_dtype(self.dtype())?.detach()).state,
            copies: self.copies.clone(),
        };
        p.set_trainable(self.is_trainable())?;
        Ok(p)
    }

    /// Identifies the weight (tied handles share it).
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.state) as usize
    }

    /// A trainable parameter holding its own copy of `t`.
    pub fn trainable(t: &Tensor) -> Result<Self> {
        let p = Param::frozen(t.clone());
        p.set_trainable(true)?;
        Ok(p)
    }

    /// The tensor a forward pass uses under `ctx`: an active adapter's copy, else the base value.
    /// Outside training it is detached: an evaluation or a generation records no graph, so a
    /// trained model infers as fast as a frozen one (with the variable, every op would keep its
    /// inputs for a backward pass that never comes).
    pub fn get(&self, ctx: &Ctx) -> Tensor {
        let t = match self.active_copy(ctx) {
            Some(p) => p.value(),
            None => self.state.read().unwrap().value.clone(),
        };
        if ctx.train {
            t
        } else {
            t.detach()
        }
    }

    /// The copy a forward pass under `ctx` uses instead of the base value, if any.
    pub fn active_copy(&self, ctx: &Ctx) -> Option<Param> {
        if !ctx.enabled {
            return None;
        }
        let c = self.copies.read().unwrap();
        c.iter()
            .find(|(n, _)| ctx.is_active(n))
            .map(|(_, p)| p.clone())
    }

    /// The base value, ignoring adapter copies.
    pub fn value(&self) -> Tensor {
        self.state.read().unwrap().value.clone()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.state.read().unwrap().value.dims().to_vec()
    }

    pub fn dtype(&self) -> DType {
        self.state.read().unwrap().value.dtype()
    }

    pub fn elem_count(&self) -> usize {
        self.state.read().unwrap().value.elem_count()
    }

    pub fn is_trainable(&self) -> bool {
        let s = self.state.read().unwrap();
        s.var.is_some() || s.planned
    }

    pub fn var(&self) -> Option<Var> {
        self.state.read().unwrap().var.clone()
    }

    pub fn same(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Makes the base value trainable (a variable with its own storage) or frozen again.
    pub fn set_trainable(&self, on: bool) -> Result<()> {
        let mut s = self.state.write().unwrap();
        if !on {
            s.planned = false;
            if let Some(v) = s.var.take() {
                s.value = v.as_tensor().detach();
            }
        } else if s.var.is_none() && !s.planned {
            if SHAPES_ONLY.with(|c| c.get()) {
                s.planned = true;
            } else {
                let v = Var::from_tensor(&s.value)?;
                s.value = v.as_tensor().clone();
                s.var = Some(v);
            }
        }
        Ok(())
    }

    /// Replaces the value (same shape), keeping whether it is trainable.
    pub fn set(&self, t: &Tensor) -> Result<()> {
        let mut s = self.state.write().unwrap();
        if t.dims() != s.value.dims() {
            return Err(Error::msg(format!(
                "shape {:?} does not match the parameter's {:?}",
                t.dims(),
                s.value.dims()
            )));
        }
        let t = t.to_dtype(s.value.dtype())?.to_device(s.value.device())?;
        match &s.var {
            // a tensor read from this very parameter (a state dict loaded back) is copied first:
            // candle refuses to set a variable from its own storage
            Some(v) => v.set(&t).or_else(|_| v.set(&t.copy()?))?,
            None => s.value = t.detach(),
        }
        Ok(())
    }

    /// Adds (or replaces) a trainable copy used while adapter `name` is active.
    pub fn add_copy(&self, name: &str, init: Option<&Tensor>) -> Result<()> {
        let t = init.cloned().unwrap_or_else(|| self.value());
        let p = Param::trainable(&t.to_dtype(self.dtype())?)?;
        self.share_copy(name, p);
        Ok(())
    }

    /// Uses `p` (another handle's copy) as this handle's copy for adapter `name`.
    pub fn share_copy(&self, name: &str, p: Param) {
        let mut c = self.copies.write().unwrap();
        c.retain(|(n, _)| n != name);
        c.push((name.to_string(), p));
    }

    pub fn copy(&self, name: &str) -> Option<Param> {
        let c = self.copies.read().unwrap();
        c.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    pub fn remove_copy(&self, name: &str) -> Option<Param> {
        let mut c = self.copies.write().unwrap();
        let i = c.iter().position(|(n, _)| n == name)?;
        Some(c.remove(i).1)
    }

    pub fn copy_names(&self) -> Vec<String> {
        let c = self.copies.read().unwrap();
        c.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Refuses to make new tensors of `shapes` (f32, as they are initialised) that cannot fit in the
/// machine's memory: a typo such as `r = 100000000` or `hidden_size = 1e7` is a clear error
/// naming `what`, not an abort or a machine swapping itself to a halt.
pub fn ensure_fits(what: &str, shapes: &[&[usize]]) -> Result<()> {
    let bytes = shapes.iter().try_fold(0usize, |sum, s| {
        s.iter()
            .try_fold(4usize, |a, &d| a.checked_mul(d))
            .and_then(|b| sum.checked_add(b))
    });
    // what the rest of the process (and the machine) needs beside new weights
    const RESERVE: usize = 512 << 20;
    let avail = available_memory().map(|a| a.saturating_sub(RESERVE));
    match (bytes, avail) {
        (Some(b), Some(avail)) if b <= avail => Ok(()),
        (Some(_), None) => Ok(()),
        (b, avail) => {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            let need = b.map_or("more than 2^64 bytes".into(), |b| {
                format!("{:.1} GiB", gib(b))
            });
            let have = avail.map_or(String::new(), |a| {
                format!(", more than the {:.1} GiB of memory available", gib(a))
            });
            Err(Error::msg(format!(
                "{what}: new tensors of shape {} need {need}{have}",
                shapes
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

/// Memory the process can still take (Linux `MemAvailable`); None where unknown.
fn available_memory() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
