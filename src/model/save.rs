//! `m:save(dir)`: a complete HF model directory (config, safetensors — sharded when large —,
//! tokenizer files), with every active adapter folded in as `m:merge()` folds it.

use super::Model;
use crate::error::{Error, Result};
use crate::st::{save, write_atomic};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const SHARD_BYTES: usize = 5 << 30;

impl Model {
    /// The weights `save` writes: every active adapter folded in (`fold`, the rule `merge`
    /// uses), a module untied by it under its own name; an active adapter that cannot be folded
    /// is an error. Also whether the embeddings are still tied.
    pub fn merged_state(&mut self) -> Result<(BTreeMap<String, Tensor>, bool)> {
        let names = self.foldable_active(true)?;
        let f = self.fold(&names, false)?;
        // named as `base_params` names them once the fold is applied
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut seen: Vec<usize> = Vec::new();
        for (path, suffix, h) in self.handles() {
            let name = format!("{path}.{suffix}");
            if let Some((_, _, v)) = f.untied.iter().find(|(p, s, _)| *p == path && *s == suffix) {
                out.insert(name, v.clone());
                continue;
            }
            if seen.contains(&h.key()) {
                continue;
            }
            seen.push(h.key());
            let v = f
                .values
                .iter()
                .find(|(q, _)| q.same(&h))
                .map(|(_, v)| v.clone());
            out.insert(name, v.unwrap_or_else(|| h.value()));
        }
        Ok((out, f.untied.is_empty()))
    }

    pub fn save(&mut self, dir: &Path) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let (state, still_tied) = self.merged_state()?;
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
        if !still_tied {
            cfg["tie_word_embeddings"] = false.into();
        }
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
            Some(t) => t.save(dir)?,
            None => notes.push("the model has no tokenizer to save".into()),
        }
        Ok(notes)
    }
}
