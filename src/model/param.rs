//! A model parameter: a frozen tensor or a trainable variable, plus the per-adapter trainable
//! copies that PEFT's `modules_to_save` keeps. Clones share state, which is how tied weights are
//! one parameter.

use super::Ctx;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Param(Arc<RwLock<State>>);

struct State {
    /// The current base value; when trainable, the variable's tensor.
    value: Tensor,
    var: Option<Var>,
    /// `modules_to_save` copies (trainable parameters), by adapter name.
    copies: Vec<(String, Param)>,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.read().unwrap();
        write!(
            f,
            "Param({:?}, trainable={})",
            s.value.dims(),
            s.var.is_some()
        )
    }
}

impl Param {
    pub fn frozen(t: Tensor) -> Self {
        Param(Arc::new(RwLock::new(State {
            value: t,
            var: None,
            copies: Vec::new(),
        })))
    }

    /// A trainable parameter holding its own copy of `t`.
    pub fn trainable(t: &Tensor) -> Result<Self> {
        let p = Param::frozen(t.clone());
        p.set_trainable(true)?;
        Ok(p)
    }

    /// The tensor a forward pass uses under `ctx`: an active adapter's copy, else the base value.
    pub fn get(&self, ctx: &Ctx) -> Tensor {
        let s = self.0.read().unwrap();
        if ctx.enabled {
            for (name, p) in &s.copies {
                if ctx.is_active(name) {
                    return p.value();
                }
            }
        }
        s.value.clone()
    }

    /// The base value, ignoring adapter copies.
    pub fn value(&self) -> Tensor {
        self.0.read().unwrap().value.clone()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.0.read().unwrap().value.dims().to_vec()
    }

    pub fn dtype(&self) -> DType {
        self.0.read().unwrap().value.dtype()
    }

    pub fn elem_count(&self) -> usize {
        self.0.read().unwrap().value.elem_count()
    }

    pub fn is_trainable(&self) -> bool {
        self.0.read().unwrap().var.is_some()
    }

    pub fn var(&self) -> Option<Var> {
        self.0.read().unwrap().var.clone()
    }

    pub fn same(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Makes the base value trainable (a variable with its own storage) or frozen again.
    pub fn set_trainable(&self, on: bool) -> Result<()> {
        let mut s = self.0.write().unwrap();
        match (on, s.var.is_some()) {
            (true, false) => {
                let v = Var::from_tensor(&s.value)?;
                s.value = v.as_tensor().clone();
                s.var = Some(v);
            }
            (false, true) => {
                let v = s.var.take().unwrap();
                s.value = v.as_tensor().detach();
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces the value (same shape), keeping whether it is trainable.
    pub fn set(&self, t: &Tensor) -> Result<()> {
        let mut s = self.0.write().unwrap();
        if t.dims() != s.value.dims() {
            return Err(Error::msg(format!(
                "shape {:?} does not match the parameter's {:?}",
                t.dims(),
                s.value.dims()
            )));
        }
        let t = t.to_dtype(s.value.dtype())?.to_device(s.value.device())?;
        match &s.var {
            Some(v) => v.set(&t)?,
            None => s.value = t.detach(),
        }
        Ok(())
    }

    /// Adds (or replaces) a trainable copy used while adapter `name` is active.
    pub fn add_copy(&self, name: &str, init: Option<&Tensor>) -> Result<()> {
        let mut s = self.0.write().unwrap();
        let t = init.cloned().unwrap_or_else(|| s.value.clone());
        let p = Param::trainable(&t.to_dtype(s.value.dtype())?)?;
        s.copies.retain(|(n, _)| n != name);
        s.copies.push((name.to_string(), p));
        Ok(())
    }

    pub fn copy(&self, name: &str) -> Option<Param> {
        let s = self.0.read().unwrap();
        s.copies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn remove_copy(&self, name: &str) -> Option<Param> {
        let mut s = self.0.write().unwrap();
        let i = s.copies.iter().position(|(n, _)| n == name)?;
        Some(s.copies.remove(i).1)
    }

    pub fn copy_names(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap()
            .copies
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
}
