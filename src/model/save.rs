//! `m:save(dir)`: a complete HF model directory (config, safetensors — sharded when large —,
//! tokenizer files), with active LoRA/IA3 adapters and `modules_to_save` copies folded in.

use super::{Model, ModuleMut};
use crate::error::{Error, Result};
use crate::st::{save, write_atomic};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const SHARD_BYTES: usize = 5 << 30;

impl Model {
    /// The weights `save` writes: base values with active mergeable adapters folded in.
    pub fn merged_state(&mut self) -> Result<BTreeMap<String, Tensor>> {
        let ctx = self.ctx(false, 0);
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        for (n, p) in self.base_params() {
            out.insert(n, p.get(&ctx));
        }
        let mut err = None;
        self.visit(&mut |path, m| {
            if let ModuleMut::Linear(l) = m {
                let active = l.lora.iter().any(|(n, _)| ctx.is_active(n))
                    || l.ia3.iter().any(|(n, _)| ctx.is_active(n));
                if !active {
                    return;
                }
                // fold into a scratch copy of the weight, leaving the model untouched
                let scratch = super::layers::Linear::new(
                    super::Param::frozen(l.weight.get(&ctx).copy().unwrap()),
                    l.bias
                        .as_ref()
                        .map(|b| super::Param::frozen(b.get(&ctx).copy().unwrap())),
                    l.transposed,
                );
                let r: Result<()> = (|| {
                    for (n, a) in &l.ia3 {
                        if ctx.is_active(n) {
                            a.merge_into(&scratch, &ctx)?;
                        }
                    }
                    for (n, a) in &l.lora {
                        if ctx.is_active(n) {
                            a.merge_into(&scratch, &ctx)?;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    err.get_or_insert(e);
                    return;
                }
                out.insert(format!("{path}.weight"), scratch.weight.value());
                if let Some(b) = &scratch.bias {
                    out.insert(format!("{path}.bias"), b.value());
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        Ok(out)
    }

    pub fn save(&mut self, dir: &Path) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for a in &self.adapters {
            if self.active.contains(&a.name) && !a.method.mergeable() {
                notes.push(format!(
                    "adapter `{}` ({}) cannot be folded into the weights and is not part of the saved model; save it with save_adapter",
                    a.name,
                    a.method.kind()
                ));
            }
        }
        let state = self.merged_state()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let total: usize = state
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        if total <= SHARD_BYTES {
            save(&dir.join("model.safetensors"), &state, Some(meta))?;
        } else {
            let mut shards: Vec<BTreeMap<String, Tensor>> = vec![BTreeMap::new()];
            let mut size = 0;
            for (k, t) in state {
                let b = t.elem_count() * t.dtype().size_in_bytes();
                if size + b > SHARD_BYTES && !shards.last().unwrap().is_empty() {
                    shards.push(BTreeMap::new());
                    size = 0;
                }
                size += b;
                shards.last_mut().unwrap().insert(k, t);
            }
            let n = shards.len();
            let mut map = serde_json::Map::new();
            for (i, s) in shards.iter().enumerate() {
                let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
                save(&dir.join(&fname), s, Some(meta.clone()))?;
                for k in s.keys() {
                    map.insert(k.clone(), serde_json::Value::String(fname.clone()));
                }
            }
            let idx = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
            crate::st::write_json(&dir.join("model.safetensors.index.json"), &idx)?;
        }
        let mut cfg = self.config.clone();
        let dt = match self.dtype {
            candle_core::DType::BF16 => "bfloat16",
            candle_core::DType::F16 => "float16",
            _ => "float32",
        };
        if cfg.get("torch_dtype").is_some() {
            cfg["torch_dtype"] = dt.into();
        } else {
            cfg["dtype"] = dt.into();
        }
        let s = serde_json::to_string_pretty(&cfg).map_err(|e| Error::msg(e.to_string()))?;
        write_atomic(&dir.join("config.json"), s.as_bytes())?;
        match &self.tokenizer {
            Some(t) if !t.files.is_empty() => {
                for f in &t.files {
                    let to = dir.join(f.file_name().unwrap());
                    if to != *f {
                        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
                        write_atomic(&to, &bytes)?;
                    }
                }
            }
            Some(t) if t.is_bytes() => {
                // transformers cannot read it, but ftl.load restores the byte-level tokenizer
                let tc = serde_json::json!({"tokenizer_class": crate::tokenizer::BYTES_CLASS});
                crate::st::write_json(&dir.join("tokenizer_config.json"), &tc)?;
            }
            _ => notes.push("the model has no tokenizer to save".into()),
        }
        Ok(notes)
    }
}
