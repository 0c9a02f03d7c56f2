//! AdapterHub's adapter directory format for bottleneck adapters: `adapter_config.json`
//! (`{"config": {...}, "name", "model_type", ...}`) and `adapter.safetensors` with keys
//! `<module>.adapters.<name>.adapter_down.0.weight`, ….

use super::bottleneck::{config_of, BnConfig, BottleneckMethod};
use super::io::LoadAdapterOpts;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::st::{write_json, StFile};
use candle_core::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const VERSION: &str = "adapters.1.3.0";

/// `<slot>.<name>.<suffix>` for a state-dict name `<slot>.<suffix>` (slot ends in `.adapters`).
fn file_key(pname: &str, name: &str) -> String {
    match pname.split_once(".adapters.") {
        Some((slot, suffix)) => format!("{slot}.adapters.{name}.{suffix}"),
        None => pname.to_string(),
    }
}

pub fn save(m: &mut Model, dir: &Path, name: &str) -> Result<()> {
    let cfg = config_of(m, name)
        .ok_or_else(|| Error::msg(format!("`{name}` is not a bottleneck adapter")))?;
    let mut tensors = BTreeMap::new();
    for (pname, p) in m.adapter_params(name) {
        tensors.insert(file_key(&pname, name), p.value().to_dtype(DType::F32)?);
    }
    let model_class = m
        .config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("")
        .to_string();
    let config = json!({
        "config": Value::Object(cfg),
        "hidden_size": m.arch.dims().hidden,
        "model_class": model_class,
        "model_name": m.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        "model_type": m.arch.model_type(),
        "name": name,
        "version": VERSION,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::st::save(&dir.join("adapter.safetensors"), &tensors, None)?;
    write_json(&dir.join("adapter_config.json"), &config)
}

fn legacy_rename(k: &str) -> String {
    k.replace("attention_text_task_adapters", "adapters")
        .replace("layer_text_task_adapters", "adapters")
        .replace("attention_text_lang_adapters", "adapters")
        .replace("layer_text_lang_adapters", "adapters")
}

pub fn load(m: &mut Model, dir: &Path, cfg: &Value, o: &LoadAdapterOpts) -> Result<String> {
    let cfg_path = dir.join("adapter_config.json");
    let st_path = dir.join("adapter.safetensors");
    if !st_path.exists() {
        if dir.join("pytorch_adapter.bin").exists() {
            return Err(Error::file(dir, "only pytorch_adapter.bin found: ftl reads adapter.safetensors (save_adapter(..., use_safetensors=True))"));
        }
        return Err(Error::file(dir, "no adapter.safetensors"));
    }
    let file_name = cfg
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config(&cfg_path, "name", "missing"))?
        .to_string();
    let raw = match cfg.get("config") {
        Some(Value::String(s)) => BnConfig::preset(s)?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => {
            return Err(Error::config(
                &cfg_path,
                "config",
                "missing or not an object",
            ))
        }
    };
    let legacy = cfg.get("version").is_none();
    let bn = BnConfig::from_json(&raw, legacy)
        .map_err(|e| Error::config(&cfg_path, "config", e.to_string()))?;
    // the activation as this version names it (a file without a version means gelu_new by gelu)
    let mut raw = raw.as_object().cloned().unwrap_or_default();
    raw.insert("non_linearity".into(), bn.non_linearity.clone().into());
    let name = o.name.clone().unwrap_or_else(|| m.fresh_name("default"));
    let file = StFile::open(&st_path)?;
    m.attach_block(&name, &BottleneckMethod, &raw)?;
    let r = (|| -> Result<()> {
        let keys: BTreeMap<String, String> = file
            .names
            .iter()
            .map(|k| (legacy_rename(k), k.clone()))
            .collect();
        let mut used = 0;
        let params = m.adapter_params(&name);
        for (pname, p) in &params {
            let want = file_key(pname, &file_name);
            // adapters saved from a model with a head load into a headless one and back
            let alts = [
                want.clone(),
                format!("bert.{want}"),
                want.strip_prefix("bert.").unwrap_or(&want).to_string(),
                want.replace("adapter_norm_before.", "adapter_down.0."),
            ];
            let Some(stored) = alts.iter().find_map(|a| keys.get(a)) else {
                return Err(Error::MissingTensor {
                    path: st_path.clone(),
                    name: want,
                });
            };
            let got = file.shape(stored)?;
            if got != p.dims() {
                return Err(Error::file(
                    &st_path,
                    format!(
                        "tensor `{stored}` has shape {got:?}, the model needs {:?} (adapter made for `{}`?)",
                        p.dims(),
                        cfg.get("model_name").and_then(|v| v.as_str()).unwrap_or("another model")
                    ),
                ));
            }
            p.set(&file.load(stored, &m.device, Some(DType::F32))?)?;
            used += 1;
        }
        let expected_min = params.len();
        if used < expected_min {
            return Err(Error::file(&st_path, "some adapter tensors are missing"));
        }
        Ok(())
    })();
    if let Err(e) = r {
        m.detach(&name);
        return Err(e);
    }
    if let Some(a) = m.adapter_mut(&name) {
        a.loaded_config = Some(cfg.clone());
    }
    if !o.trainable {
        for (_, p) in m.adapter_params(&name) {
            p.set_trainable(false)?;
        }
    }
    Ok(name)
}
