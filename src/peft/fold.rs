//! Folding adapters into the base weights: the one rule `m:merge()` and `m:save(dir)` share,
//! PEFT's `merge_and_unload`. LoRA/DoRA/IA3 and registry-method deltas (Linear and Embedding LoRA alike) go into the
//! weight they wrap in place, so a tied weight moves for both of its modules, as PEFT's in-place
//! merge moves the one shared tensor; a module with a `modules_to_save` copy is replaced by it,
//! which unties it from a module that does not use the same copy (PEFT then writes
//! `tie_word_embeddings: false`).

use crate::error::{Error, Result};
use crate::model::layers::{Embedding, Linear};
use crate::model::{Ctx, Model, ModuleMut, Param};
use candle_core::Tensor;
use std::collections::HashMap;

/// What folding a set of adapters gives.
pub struct Folded {
    /// new values of base weights, seen by every module using the weight
    pub values: Vec<(Param, Tensor)>,
    /// modules that get a weight of their own: `(module path, suffix, value)`
    pub untied: Vec<(String, &'static str, Tensor)>,
}

impl Model {
    /// The active adapters that fold into the base weights, and an error naming any other active
    /// adapter when `strict` (it would be silently left out).
    pub fn foldable_active(&self, strict: bool) -> Result<Vec<String>> {
        let ctx = self.ctx(false, 0);
        let mut out = Vec::new();
        for a in self.adapters().iter().filter(|a| ctx.is_active(&a.name)) {
            if a.method.mergeable() {
                out.push(a.name.clone());
            } else if strict {
                return Err(Error::msg(format!(
                    "adapter `{}` ({}) cannot be folded into the model's weights, so m:save would \
                     drop it: save it with m:save_adapter(dir, {{name = \"{}\"}}) (PEFT's format), \
                     or make it inactive (m:set_adapter(...) / m:disable_adapters()) to save the \
                     model without it",
                    a.name,
                    a.method.kind(),
                    a.name
                )));
            }
        }
        Ok(out)
    }

    /// The base weights with adapters `names` folded in. The model is left unchanged, except
    /// with `in_place` (merging), where a weight only one module uses takes its deltas directly
    /// rather than through a copy, so merging a large model does not hold a second one.
    pub fn fold(&mut self, names: &[String], in_place: bool) -> Result<Folded> {
        let ctx = Ctx::new(names.to_vec(), true, false, 0);
        let users = self.weight_users();
        let handles = self.handles();
        // one scratch weight per base weight, so deltas of tied modules add up on it
        let mut scratch: HashMap<usize, (Param, Param, bool)> = HashMap::new();
        let mut order: Vec<usize> = Vec::new();
        let mut take = |p: &Param| -> Result<Param> {
            if in_place && users.get(&p.key()) == Some(&1) {
                return Ok(p.clone());
            }
            if let Some((_, s, _)) = scratch.get_mut(&p.key()) {
                return Ok(s.clone());
            }
            let s = Param::frozen(p.value().copy()?);
            scratch.insert(p.key(), (p.clone(), s.clone(), false));
            order.push(p.key());
            Ok(s)
        };
        let mut touched: Vec<usize> = Vec::new();
        let mut err = None;
        self.visit(&mut |_, m| {
            let r: Result<()> = (|| {
                match m {
                    ModuleMut::Linear(l) => {
                        let mut these: Vec<_> = l
                            .adapters
                            .iter()
                            .filter(|(n, _)| names.contains(n))
                            .map(|(_, a)| a)
                            .collect();
                        if these.is_empty() {
                            return Ok(());
                        }
                        let bias = l.bias.as_ref().map(&mut take).transpose()?;
                        let s = Linear::new(take(&l.weight)?, bias, l.transposed);
                        // as the forward applies them: scaling (IA3), then LoRA/DoRA, then
                        // the additions
                        these.sort_by_key(|a| a.merge_order());
                        for a in these {
                            a.merge_into(l, &s, &ctx)?;
                        }
                        touched.push(l.weight.key());
                        touched.extend(l.bias.as_ref().map(|b| b.key()));
                    }
                    ModuleMut::Embedding(e) => {
                        let these: Vec<_> = e
                            .adapters
                            .iter()
                            .filter(|(n, _)| names.contains(n))
                            .collect();
                        if these.is_empty() {
                            return Ok(());
                        }
                        let s = Embedding::new(take(&e.weight)?);
                        for (_, a) in these {
                            a.merge_into(&s, &ctx)?;
                        }
                        touched.push(e.weight.key());
                    }
                    _ => {}
                }
                Ok(())
            })();
            if let Err(e) = r {
                err.get_or_insert(e);
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        for k in touched {
            if let Some(x) = scratch.get_mut(&k) {
                x.2 = true;
            }
        }
        // modules_to_save copies: the module uses the copy from now on
        let mut copies: HashMap<usize, Vec<Option<Param>>> = HashMap::new();
        for (_, _, h) in &handles {
            copies.entry(h.key()).or_default().push(h.active_copy(&ctx));
        }
        let mut values: Vec<(Param, Tensor)> = order
            .iter()
            .filter_map(|k| scratch.get(k))
            .filter(|(_, _, changed)| *changed)
            .map(|(p, s, _)| (p.clone(), s.value()))
            .collect();
        let mut untied = Vec::new();
        let mut done: Vec<usize> = Vec::new();
        for (path, suffix, h) in &handles {
            let Some(c) = h.active_copy(&ctx) else {
                continue;
            };
            let all = &copies[&h.key()];
            let shared = all.iter().all(|u| u.as_ref().is_some_and(|u| u.same(&c)));
            if shared {
                if !done.contains(&h.key()) {
                    done.push(h.key());
                    values.retain(|(p, _)| !p.same(h));
                    values.push((h.clone(), c.value()));
                }
            } else {
                untied.push((path.clone(), *suffix, c.value()));
            }
        }
        Ok(Folded { values, untied })
    }

    /// Applies a fold to the model: the weights take their folded values, untied modules get a
    /// weight of their own, and the config stops saying the embeddings are tied.
    pub(crate) fn apply_fold(&mut self, f: Folded) -> Result<()> {
        for (p, v) in &f.values {
            p.set(v)?;
        }
        let mut err = None;
        self.visit_handles(&mut |path, suffix, h| {
            if let Some((_, _, v)) = f.untied.iter().find(|(p, s, _)| p == path && *s == suffix) {
                match h.untied(v) {
                    Ok(n) => *h = n,
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if !f.untied.is_empty() {
            self.config["tie_word_embeddings"] = false.into();
        }
        Ok(())
    }
}
