//! HF PEFT's on-disk format both ways: `adapter_config.json` (sorted keys, PEFT's field names,
//! unknown keys ignored, missing ones defaulted) and `adapter_model.safetensors` (saved keys
//! `base_model.model.<path>.lora_A.weight`, `…ia3_l`, `prompt_embeddings`, …), with PEFT's own
//! target-matching rules when reading.

use super::target::{layer_of, suffix_match, Pattern};
use super::{registry, AdapterInfo, Kind, Method};
use crate::error::{Error, Result};
use crate::model::{Model, ModuleMut, Param, Task};
use crate::st::{read_json, write_json, StFile};
use candle_core::{DType, Tensor};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const PEFT_VERSION: &str = "0.21.0";
const PREFIX: &str = "base_model.model.";

/// PEFT's `target_modules` / `exclude_modules` value.
fn peft_pattern(v: &Value, cfg_path: &Path, key: &str) -> Result<Option<Pattern>> {
    Ok(match v {
        Value::Null => None,
        Value::String(s) if s.eq_ignore_ascii_case("all-linear") => {
            Some(Pattern::List(vec!["\u{0}all-linear".into()]))
        }
        Value::String(s) => {
            Some(Pattern::peft_regex(s).map_err(|e| Error::config(cfg_path, key, e.to_string()))?)
        }
        Value::Array(a) => Some(Pattern::List(
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
        )),
        other => {
            return Err(Error::config(
                cfg_path,
                key,
                format!("expected a string or list, got {other}"),
            ))
        }
    })
}

fn task_type(m: &Model) -> &'static str {
    match m.task() {
        Task::CausalLm => "CAUSAL_LM",
        Task::SeqCls { .. } => "SEQ_CLS",
        Task::Encoder => "FEATURE_EXTRACTION",
    }
}

/// Whether `pname` is one of adapter `name`'s shared tensors (VeRA's projections), which PEFT
/// keys as `base_model.<name>`.
fn is_shared(m: &Model, name: &str, pname: &str) -> bool {
    m.shared_tensors(name).iter().any(|(k, _)| k == pname)
}

/// Whether adapter `name` saves its shared tensors (VeRA's `save_projection`).
fn saves_shared(m: &Model, name: &str) -> bool {
    match m.adapter(name).map(|a| &a.method) {
        Some(me) => registry::by_name(me.name).is_none_or(|r| r.saves_shared(&me.config)),
        None => true,
    }
}

/// The name (without `base_model.model.`) PEFT's file keys adapter `info`'s parameter `pname` by.
fn saved_name(info: &AdapterInfo, pname: &str) -> String {
    registry::by_name(info.method.name).map_or_else(|| pname.to_string(), |me| me.saved_name(pname))
}

/// Keys of a PEFT file for an adapter, `(saved key, param)`.
fn saved_tensors(m: &mut Model, name: &str) -> Result<Vec<(String, Param)>> {
    let info = m
        .adapter(name)
        .cloned()
        .ok_or_else(|| Error::msg(format!("no adapter named `{name}`")))?;
    let mut out = Vec::new();
    for (pname, p) in m.adapter_params(name) {
        let key = if pname.starts_with("prompt_encoder.") {
            if pname != "prompt_encoder.embedding.weight" {
                continue; // a prefix projection MLP: PEFT saves its output instead
            }
            // prefix tuning saves its projection's output, prompt tuning its embeddings
            match m.prompts.iter().find(|(n, _)| n == name) {
                Some((_, pl)) => {
                    let ctx = m.ctx(false, 0);
                    out.push((
                        "prompt_embeddings".to_string(),
                        Param::frozen(pl.saved_embeddings(&ctx)?.detach()),
                    ));
                    continue;
                }
                None => "prompt_embeddings".to_string(),
            }
        } else if pname.contains(".modules_to_save.") {
            continue; // below, under every module that uses the copy
        } else if is_shared(m, name, &pname) {
            if !saves_shared(m, name) {
                continue;
            }
            format!("base_model.{pname}")
        } else {
            format!("{PREFIX}{}", saved_name(&info, &pname))
        };
        out.push((key, p));
    }
    out.extend(copy_keys(m, name, &info.method));
    // trained base weights travel too: as modules_to_save entries, or under PEFT's
    // `base_layer` name inside a module the adapter wraps; a tied one under each module using
    // it, as PEFT saves the copy it ties (see `trained_tied`)
    if !info.method.is_block() {
        for (module, suffix, p) in m.handles() {
            if p.is_trainable() {
                let key = if info.targets.contains(&module) {
                    format!("{PREFIX}{module}.base_layer.{suffix}")
                } else {
                    format!("{PREFIX}{module}.{suffix}")
                };
                if !out.iter().any(|(k, _)| *k == key) {
                    out.push((key, p));
                }
            }
        }
    }
    Ok(out)
}

/// `(saved key, copy)` of adapter `name`'s `modules_to_save` copies: a key per module using one
/// (`base_model.model.lm_head.weight`), so a copy tied modules share is saved under each of them,
/// as PEFT saves it. Prompt learning saves them under `base_model.<module>` (no `.model`).
fn copy_keys(m: &mut Model, name: &str, method: &Method) -> Vec<(String, Param)> {
    let pre = if method.is_input() {
        "base_model."
    } else {
        PREFIX
    };
    m.handles()
        .into_iter()
        .filter_map(|(path, suffix, h)| Some((format!("{pre}{path}.{suffix}"), h.copy(name)?)))
        .collect()
}

/// Base weights by `<module path>.<suffix>` for every module, a tied weight under each name
/// (`lm_head.weight` too), which is how PEFT files name them.
fn base_by_module(m: &mut Model) -> HashMap<String, Param> {
    m.handles()
        .into_iter()
        .map(|(p, s, h)| (format!("{p}.{s}"), h))
        .collect()
}

/// Module paths of trained base weights outside the adapter's targets (saved as
/// `modules_to_save`).
fn trained_base_modules(m: &mut Model, targets: &[String]) -> Vec<String> {
    let mut mods: Vec<String> = m
        .base_params()
        .into_iter()
        .filter(|(_, p)| p.is_trainable())
        .map(|(n, _)| n.rsplit_once('.').map(|x| x.0.to_string()).unwrap_or(n))
        .filter(|module| !targets.contains(module))
        .collect();
    mods.dedup();
    mods
}

/// Whether a trained base weight is tied (used by several modules): PEFT can only read it back
/// as one `modules_to_save` copy that the tied modules share, i.e. with `ensure_weight_tying`.
fn trained_tied(m: &mut Model) -> bool {
    let users = m.weight_users();
    m.handles()
        .iter()
        .any(|(_, _, h)| h.is_trainable() && users[&h.key()] > 1)
}

/// Writes adapter `name` of `m` to `dir` in PEFT's format (AdapterHub's for bottleneck adapters).
pub fn save_adapter(m: &mut Model, dir: &Path, name: &str) -> Result<()> {
    let info = m.adapter(name).cloned().ok_or_else(|| {
        Error::msg(format!(
            "no adapter named `{name}` (attached: {})",
            m.adapter_names().join(", ")
        ))
    })?;
    if let Some(registry::Entry::Block(method)) = info.method.entry() {
        return method.save(m, dir, name);
    }
    let base = m
        .dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| m.arch.model_type().to_string());
    let mut mts: Vec<String> = info.modules_to_save.clone();
    for x in trained_base_modules(m, &info.targets) {
        if !mts.contains(&x) {
            mts.push(x);
        }
    }
    let mts_json = if mts.is_empty() {
        Value::Null
    } else {
        json!(mts)
    };
    let tie = info.ensure_weight_tying || trained_tied(m);
    let transposed = {
        let mut t = false;
        let targets = info.targets.clone();
        m.visit(&mut |p, mm| {
            if let ModuleMut::Linear(l) = mm {
                if l.transposed && targets.iter().any(|x| x == p) {
                    t = true;
                }
            }
        });
        t
    };
    let common = json!({
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "inference_mode": true,
        "modules_to_save": mts_json,
        "peft_version": PEFT_VERSION,
        "revision": null,
        "task_type": task_type(m),
    });
    let Method {
        name: method_name,
        config,
        overrides,
    } = &info.method;
    let specific = match info.method.entry() {
        Some(registry::Entry::Input(method)) => {
            let mut c = method.peft_config(config, m);
            c["peft_type"] = method.spec().peft_type.into();
            c
        }
        _ => {
            let method = registry::by_name(method_name)
                .ok_or_else(|| Error::msg(format!("unknown method {method_name}")))?;
            let mut c = json!({
                "peft_type": method.peft_type(), "target_modules": info.targets,
            });
            let extras: Value = serde_json::from_str(method.config_extras())
                .map_err(|e| Error::msg(format!("{method_name}: config_extras: {e}")))?;
            for (k, v) in extras.as_object().into_iter().flatten() {
                c[k] = if k == "fan_in_fan_out" {
                    json!(transposed)
                } else {
                    v.clone()
                };
            }
            for (k, v) in config {
                c[k] = v.clone();
            }
            if method.spec().has("ensure_weight_tying") {
                c["ensure_weight_tying"] = json!(tie);
            }
            // modules whose rank or alpha differ, as PEFT's patterns (a full path matches itself)
            let alpha = method.spec().alpha_key().unwrap_or("alpha");
            for (field, key) in [("rank_pattern", "r"), ("alpha_pattern", alpha)] {
                let differ: serde_json::Map<String, Value> = overrides
                    .iter()
                    .filter(|(_, o)| o.get(key) != config.get(key))
                    .filter_map(|(p, o)| Some((regex::escape(p), o.get(key)?.clone())))
                    .collect();
                if !differ.is_empty() {
                    c[field] = Value::Object(differ);
                }
            }
            c
        }
    };
    let mut cfg = common;
    for (k, v) in specific.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let mut tensors = BTreeMap::new();
    for (k, p) in saved_tensors(m, name)? {
        tensors.insert(
            k,
            p.value().to_dtype(if p.dtype() == DType::F32 {
                DType::F32
            } else {
                p.dtype()
            })?,
        );
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    crate::st::save(&dir.join("adapter_model.safetensors"), &tensors, Some(meta))?;
    write_json(&dir.join("adapter_config.json"), &cfg)
}

/// `load_adapter` options.
#[derive(Clone, Debug, Default)]
pub struct LoadAdapterOpts {
    pub name: Option<String>,
    pub trainable: bool,
}

/// Reads an adapter directory (PEFT or AdapterHub) into `m`; returns its name.
pub fn load_adapter(m: &mut Model, dir: &Path, o: &LoadAdapterOpts) -> Result<String> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "no such adapter directory"));
    }
    let cfg_path = dir.join("adapter_config.json");
    let cfg = read_json(&cfg_path)?;
    if let Some(b) = registry::BLOCK_METHODS.iter().find(|b| b.reads(&cfg)) {
        return b.load(m, dir, &cfg, o);
    }
    let st_path = dir.join("adapter_model.safetensors");
    if !st_path.exists() {
        if dir.join("adapter_model.bin").exists() {
            return Err(Error::file(dir, "only adapter_model.bin found: ftl reads safetensors (save with safe_serialization=True)"));
        }
        return Err(Error::file(dir, "no adapter_model.safetensors"));
    }
    let file = StFile::open(&st_path)?;
    let peft_type = cfg
        .get("peft_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config(&cfg_path, "peft_type", "missing"))?
        .to_string();
    let name = match &o.name {
        Some(n) => n.clone(),
        None => m.fresh_name("default"),
    };
    let r = match peft_type.as_str() {
        t if registry::by_peft_type(t).is_some() => load_registered(
            m,
            &name,
            registry::by_peft_type(t).unwrap(),
            &cfg,
            &cfg_path,
            &file,
            o.trainable,
        ),
        t if registry::entry_by_peft_type(t).is_some() => {
            let Some(registry::Entry::Input(method)) = registry::entry_by_peft_type(t) else {
                unreachable!("linear methods are matched above")
            };
            load_prompt_learning(m, &name, method, &cfg, &cfg_path, &file)
        }
        other => Err(Error::config(
            &cfg_path,
            "peft_type",
            format!(
                "`{other}` is not supported ({} are)",
                registry::entries()
                    .map(|e| e.spec().peft_type)
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    };
    if let Err(e) = r {
        m.detach(&name);
        return Err(e);
    }
    if let Some(a) = m.adapter_mut(&name) {
        a.loaded_config = Some(cfg.clone());
    }
    if let Err(e) = load_modules_to_save(m, &name, &cfg, &cfg_path, &file) {
        m.detach(&name);
        return Err(e);
    }
    if !o.trainable {
        for (_, p) in m.adapter_params(&name) {
            p.set_trainable(false)?;
        }
    }
    Ok(name)
}

fn hint_other_base(m: &Model, cfg: &Value) -> String {
    let base = cfg
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let here = m
        .dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "this model".into());
    format!(" (the adapter was made for base model `{base}`; this is {here})")
}

/// Module paths a PEFT config targets, by PEFT's rules.
fn peft_targets(m: &mut Model, cfg: &Value, cfg_path: &Path, kind: Kind) -> Result<Vec<String>> {
    let tm = cfg.get("target_modules").cloned().unwrap_or(Value::Null);
    let pat = peft_pattern(&tm, cfg_path, "target_modules")?.ok_or_else(|| {
        Error::config(
            cfg_path,
            "target_modules",
            "missing (ftl does not guess defaults when reading)",
        )
    })?;
    let ex = peft_pattern(
        cfg.get("exclude_modules").unwrap_or(&Value::Null),
        cfg_path,
        "exclude_modules",
    )?;
    let layers: Option<Vec<usize>> = match cfg.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect(),
        ),
        Some(o) => {
            return Err(Error::config(
                cfg_path,
                "layers_to_transform",
                format!("unexpected {o}"),
            ))
        }
    };
    let layer_re: Option<Vec<Regex>> = match cfg.get("layers_pattern") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec![Regex::new(&format!(r"^(?:|.*?\.){s}\.(\d+)\."))
            .map_err(|e| Error::config(cfg_path, "layers_pattern", e.to_string()))?]),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|x| x.as_str())
                .map(|s| {
                    Regex::new(&format!(r"^(?:|.*?\.){s}\.(\d+)\."))
                        .map_err(|e| Error::config(cfg_path, "layers_pattern", e.to_string()))
                })
                .collect::<Result<_>>()?,
        ),
        Some(o) => {
            return Err(Error::config(
                cfg_path,
                "layers_pattern",
                format!("unexpected {o}"),
            ))
        }
    };
    let generic = Regex::new(r"^.*?\.[^.]*\.(\d+)\.").unwrap();
    let all_linear = matches!(&pat, Pattern::List(v) if v.len() == 1 && v[0] == "\u{0}all-linear");
    let heads = m.arch.head_modules();
    let cands = m.module_paths(kind);
    let linears = m.module_paths(Kind::Linear);
    // a module PEFT wraps for modules_to_save (plain endswith) is never also a target
    let mts: Vec<String> = match cfg.get("modules_to_save") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for p in &cands {
        if mts.iter().any(|k| p.ends_with(k.as_str())) {
            continue;
        }
        if let Some(e) = &ex {
            if e.matches(p) {
                continue;
            }
        }
        let hit = if all_linear {
            linears.contains(p) && !heads.iter().any(|h| suffix_match(p, h))
        } else {
            pat.matches(p)
        };
        if !hit {
            continue;
        }
        if let Some(ls) = &layers {
            // PEFT applies layers_to_transform only to list targets
            if matches!(pat, Pattern::List(_)) {
                let res: Vec<&Regex> = match &layer_re {
                    Some(v) => v.iter().collect(),
                    None => vec![&generic],
                };
                let idx = res
                    .iter()
                    .find_map(|r| r.captures(p).and_then(|c| c[1].parse::<usize>().ok()));
                match idx {
                    Some(i) if ls.contains(&i) => {}
                    _ => continue,
                }
            }
        }
        out.push(p.clone());
    }
    if out.is_empty() {
        return Err(Error::config(
            cfg_path,
            "target_modules",
            format!("matches no module of this model{}", hint_other_base(m, cfg)),
        ));
    }
    Ok(out)
}

/// PEFT's `rank_pattern` / `alpha_pattern` lookup: a key matches `(.*\.)?(key)$`.
fn pattern_value(map: Option<&Value>, path: &str) -> Option<f64> {
    let obj = map?.as_object()?;
    for (k, v) in obj {
        if let Ok(re) = Regex::new(&format!(r"^(.*\.)?({k})$")) {
            if re.is_match(path) {
                return v.as_f64();
            }
        }
    }
    None
}

/// A tensor from the file with the expected shape, or an error naming file, key and shapes.
fn tensor(file: &StFile, key: &str, want: &[usize], m: &Model, cfg: &Value) -> Result<Tensor> {
    if !file.has(key) {
        return Err(Error::MissingTensor {
            path: file.path.clone(),
            name: key.to_string(),
        });
    }
    let got = file.shape(key)?;
    if got != want {
        return Err(Error::file(
            &file.path,
            format!(
                "tensor `{key}` has shape {got:?}, the model needs {want:?}{}",
                hint_other_base(m, cfg)
            ),
        ));
    }
    file.load(key, &m.device, Some(DType::F32))
}

/// Base tensors an adapter file carries: biases trained with `bias="all"/"lora_only"`
/// (`…base_layer.bias`, `…ln_f.bias`) and full embedding matrices PEFT saves next to an embedding
/// LoRA (`…embed_tokens.base_layer.weight`). PEFT trains these in place, so they replace the base.
fn load_base_overrides(m: &mut Model, file: &StFile, cfg: &Value) -> Result<()> {
    let base = base_by_module(m);
    for k in &file.names {
        let Some(inner) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let plain = inner.replace(".base_layer.", ".");
        let is_override = inner.contains(".base_layer.")
            || (inner.ends_with(".bias") && base.contains_key(&plain));
        if !is_override {
            continue;
        }
        if let Some(p) = base.get(&plain) {
            p.set(&tensor(file, k, &p.dims(), m, cfg)?.to_dtype(p.dtype())?)?;
        }
    }
    Ok(())
}

/// Every parameter of adapter `name` from PEFT's key for it, except those `special` handles
/// (returning true).
fn set_from_file(
    m: &mut Model,
    name: &str,
    file: &StFile,
    cfg: &Value,
    mut special: impl FnMut(&str, &Param) -> Result<bool>,
) -> Result<()> {
    let info = m
        .adapter(name)
        .cloned()
        .ok_or_else(|| Error::msg(format!("no adapter named `{name}`")))?;
    for (pname, p) in m.adapter_params(name) {
        if special(&pname, &p)? {
            continue;
        }
        let key = format!("{PREFIX}{}", saved_name(&info, &pname));
        p.set(&tensor(file, &key, &p.dims(), m, cfg)?)?;
    }
    Ok(())
}

/// A registry method's adapter: its settings from the config (PEFT's field names), attached as
/// PEFT's `from_pretrained` attaches it (its initialisation included: PiSSA leaves the base
/// weights their residual, as in PEFT), then its tensors from PEFT's keys.
#[allow(clippy::too_many_arguments)]
fn load_registered(
    m: &mut Model,
    name: &str,
    method: &'static dyn registry::LinearMethod,
    cfg: &Value,
    cfg_path: &Path,
    file: &StFile,
    trainable: bool,
) -> Result<()> {
    let origin = cfg_path.display().to_string();
    let kind = if method.targets_embeddings() {
        Kind::Injectable
    } else {
        Kind::Linear
    };
    let mut targets = peft_targets(m, cfg, cfg_path, kind)?;
    // trained biases (`bias = "all"`, `"lora_only"`, `"vera_only"`) are base tensors of the
    // file, read by `load_base_overrides`
    if let Some(b) = cfg.get("bias").filter(|b| !b.is_null()) {
        let ok = b
            .as_str()
            .is_some_and(|b| b == "none" || b == "all" || b.ends_with("_only"));
        if !ok {
            return Err(Error::config(
                cfg_path,
                "bias",
                format!("bias={b} is not supported"),
            ));
        }
    }
    let tie = cfg
        .get("ensure_weight_tying")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let tied = if tie && method.targets_embeddings() {
        m.tied_modules(&targets)
    } else {
        Vec::new()
    };
    if !tied.is_empty() {
        if trainable {
            return Err(Error::config(
                cfg_path,
                "ensure_weight_tying",
                format!(
                    "{} tied across {} cannot be trained by ftl (PEFT ties the head's adapter to \
                     the embedding's); load it with trainable = false to use, merge or save it",
                    method.peft_type(),
                    tied.join(", ")
                ),
            ));
        }
        // PEFT gives every other module of the tied weight (lm_head) an adapter tied to the
        // embedding's and saves it under its own name; frozen, it is an ordinary one there
        let hs = m.handles();
        for (p, _, h) in &hs {
            let partner = hs.iter().any(|(q, _, g)| tied.contains(q) && g.same(h));
            let own = |k: &String| {
                k.strip_prefix(&format!("{PREFIX}{p}."))
                    .is_some_and(|rest| {
                        !rest.starts_with("base_layer.")
                            && !rest.starts_with("modules_to_save.")
                            && rest != "weight"
                            && rest != "bias"
                    })
            };
            if partner && !targets.contains(p) && file.names.iter().any(own) {
                targets.push(p.clone());
            }
        }
    }
    let given = cfg.as_object().cloned().unwrap_or_default();
    let mt = m.arch.model_type().to_string();
    let given = registry::pick_modules(method, &given, &targets, &mt, &origin)?;
    let config = registry::config(method, &given, &origin)?;
    // PEFT's rank_pattern / alpha_pattern: other settings for the modules they match
    let mut overrides = Vec::new();
    for (field, key) in [
        ("rank_pattern", "r"),
        (
            "alpha_pattern",
            method.spec().alpha_key().unwrap_or("alpha"),
        ),
    ] {
        let given = cfg.get(field).and_then(|v| v.as_object());
        if given.is_some_and(|o| !o.is_empty()) && !method.spec().has(key) {
            return Err(Error::config(
                cfg_path,
                field,
                format!("{} has no `{key}` to vary", method.peft_type()),
            ));
        }
    }
    let alpha_key = method.spec().alpha_key().unwrap_or("alpha");
    for p in &targets {
        let r = pattern_value(cfg.get("rank_pattern"), p);
        let alpha = pattern_value(cfg.get("alpha_pattern"), p);
        if r.is_none() && alpha.is_none() {
            continue;
        }
        let mut mine = given.clone();
        if let Some(r) = r {
            mine.insert("r".into(), Value::from(r as i64));
        }
        if let Some(a) = alpha {
            mine.insert(alpha_key.into(), Value::from(a));
        }
        overrides.push((p.clone(), registry::config(method, &mine, &origin)?));
    }
    m.attach_registered_with(name, method, &targets, &config, &overrides)?;
    if let Some(a) = m.adapter_mut(name) {
        a.ensure_weight_tying = tie;
    }
    let shared: Vec<String> = m
        .shared_tensors(name)
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    let saved = method.saves_shared(&config);
    let mut read = Vec::new();
    set_from_file(m, name, file, cfg, |pname, p| {
        if !shared.iter().any(|k| k == pname) {
            return Ok(false);
        }
        // drawn again from the config's seed when not saved (PEFT ignores saved ones then)
        let key = format!("base_model.{pname}");
        if saved {
            if !file.has(&key) {
                return Err(Error::file(
                    &file.path,
                    format!("no tensor `{key}`, which the config's save_projection = true says is saved"),
                ));
            }
            read.push((key, p.clone()));
        }
        Ok(true)
    })?;
    for (key, p) in read {
        p.set(&tensor(file, &key, &p.dims(), m, cfg)?)?;
    }
    load_base_overrides(m, file, cfg)?;
    check_no_stray_keys(m, name, file, cfg)
}

/// A prompt-learning adapter: its settings from the config, its `prompt_embeddings` (what the
/// adapter feeds the model at inference, a reparametrisation already applied).
fn load_prompt_learning(
    m: &mut Model,
    name: &str,
    method: &'static dyn registry::InputMethod,
    cfg: &Value,
    cfg_path: &Path,
    file: &StFile,
) -> Result<()> {
    let subs = cfg
        .get("num_transformer_submodules")
        .and_then(|v| v.as_u64())
        .unwrap_or(1) as usize;
    if subs != 1 {
        return Err(Error::config(
            cfg_path,
            "num_transformer_submodules",
            "only decoder-only / encoder models (1) are supported",
        ));
    }
    if cfg
        .get("num_virtual_tokens")
        .and_then(|v| v.as_u64())
        .is_none()
    {
        return Err(Error::config(cfg_path, "num_virtual_tokens", "missing"));
    }
    let origin = cfg_path.display().to_string();
    let given = method.settings_from_peft(cfg.as_object().unwrap_or(&Default::default()));
    let config = registry::input_config(method, &given, &origin)?;
    // the tensor replaces the initialisation: attached without one (no text to tokenize), the
    // settings recorded in full for saving
    let mut bare = config.clone();
    for o in method.spec().options {
        if o.default == "null" {
            bare.insert(o.key.to_string(), Value::Null);
        }
    }
    m.attach_input(name, method, &bare)?;
    if let Some(a) = m.adapter_mut(name) {
        a.method.config = config;
    }
    let (_, p) = m
        .adapter_params(name)
        .into_iter()
        .next()
        .ok_or_else(|| Error::msg(format!("{}: no parameters", method.spec().name)))?;
    let t = tensor(file, "prompt_embeddings", &p.dims(), m, cfg)?;
    p.set(&t)?;
    check_no_stray_keys(m, name, file, cfg)
}

/// `modules_to_save` entries: keys `base_model.model.<module>.<param>` for modules whose path ends
/// with a listed name (PEFT's plain `endswith`).
fn load_modules_to_save(
    m: &mut Model,
    name: &str,
    cfg: &Value,
    _cfg_path: &Path,
    file: &StFile,
) -> Result<()> {
    let list: Vec<String> = match cfg.get("modules_to_save") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => return Ok(()),
    };
    let modules = m.all_module_paths();
    let hit: Vec<String> = modules
        .into_iter()
        .filter(|p| list.iter().any(|k| p.ends_with(k.as_str())))
        .filter(|p| {
            let pre = format!("{PREFIX}{p}.");
            let pre2 = format!("base_model.{p}.");
            file.names
                .iter()
                .any(|n| n.starts_with(&pre) || n.starts_with(&pre2))
        })
        .collect();
    // keep only the outermost matching modules
    let hit: Vec<String> = hit
        .iter()
        .filter(|p| {
            !hit.iter()
                .any(|q| q != *p && p.starts_with(&format!("{q}.")))
        })
        .cloned()
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    let tie = cfg
        .get("ensure_weight_tying")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    m.add_modules_to_save_tied(name, &hit, tie)?;
    let method = m.adapter(name).map(|a| a.method.clone());
    let Some(method) = method else {
        return Ok(());
    };
    // a copy shared by tied modules is in the file under each of their names (the same values):
    // one of them is enough
    let keys = copy_keys(m, name, &method);
    let mut done: Vec<Param> = Vec::new();
    for (key, p) in &keys {
        if done.iter().any(|q| q.same(p)) {
            continue;
        }
        let spellings = |k: &str| {
            let inner = k
                .strip_prefix(PREFIX)
                .or_else(|| k.strip_prefix("base_model."))
                .unwrap_or(k)
                .to_string();
            [format!("{PREFIX}{inner}"), format!("base_model.{inner}")]
        };
        let found = keys
            .iter()
            .filter(|(_, q)| q.same(p))
            .flat_map(|(k, _)| spellings(k))
            .find(|k| file.has(k))
            .unwrap_or_else(|| key.clone());
        p.set(&tensor(file, &found, &p.dims(), m, cfg)?.to_dtype(p.dtype())?)?;
        done.push(p.clone());
    }
    Ok(())
}

/// Every tensor in the file must have been used: anything else means another base model.
fn check_no_stray_keys(m: &mut Model, name: &str, file: &StFile, cfg: &Value) -> Result<()> {
    let method = m.adapter(name).map(|a| a.method.clone());
    let mut known: Vec<String> = match &method {
        Some(me) => copy_keys(m, name, me).into_iter().map(|x| x.0).collect(),
        None => Vec::new(),
    };
    let info = m.adapter(name).cloned();
    for (pname, _) in m.adapter_params(name) {
        known.push(if is_shared(m, name, &pname) {
            format!("base_model.{pname}")
        } else if pname.starts_with("prompt_encoder.") {
            "prompt_embeddings".into()
        } else {
            let n = info
                .as_ref()
                .map_or_else(|| pname.clone(), |i| saved_name(i, &pname));
            format!("{PREFIX}{n}")
        });
    }
    let mts: Vec<String> = match cfg.get("modules_to_save") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    let base = base_by_module(m);
    for k in &file.names {
        if known.contains(k) {
            continue;
        }
        if let Some(inner) = k.strip_prefix(PREFIX) {
            if base.contains_key(&inner.replace(".base_layer.", ".")) {
                continue;
            }
        }
        // modules_to_save weights are checked by their own loader
        let inner = k
            .strip_prefix(PREFIX)
            .or_else(|| k.strip_prefix("base_model."))
            .unwrap_or(k);
        let module = inner.rsplit_once('.').map(|x| x.0).unwrap_or(inner);
        if mts
            .iter()
            .any(|t| module.ends_with(t.as_str()) || inner.contains(&format!("{t}.")))
        {
            continue;
        }
        return Err(Error::file(
            &file.path,
            format!(
                "tensor `{k}` belongs to no module this adapter targets{}",
                hint_other_base(m, cfg)
            ),
        ));
    }
    let _ = layer_of;
    Ok(())
}
