//! PEFT's semantics where they are easy to get wrong, against tests/fixtures/semantics (made by
//! gen_peft_semantics.py): `modules_to_save` on tied and untied embeddings, with and without
//! `ensure_weight_tying` (which copy is trained and used where, its name, the keys saved, reading
//! PEFT's file), prefix tuning with a projection trained on the CPU and the device path, and
//! folding (`m:merge()`, `m:save(dir)`) of embedding LoRA, LoRA on a tied head, DoRA, IA3 and
//! `modules_to_save` copies, through the one fold both use.

use crate::common::*;
use crate::training::{check, examples_of, meta, names, opts_of, Case};
use ftl::data::Dataset;
use ftl::peft::io::{load_adapter, save_adapter, LoadAdapterOpts};
use ftl::peft::lora::{LoraInit, LoraMethod, LoraOpts};
use ftl::peft::target::{Pattern, Selector};
use ftl::peft::Kind;
use ftl::st::StFile;
use ftl::Model;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Cases ftl reads and folds but does not train (meta `load_only`).
fn load_only(dir: &Path) -> bool {
    meta(dir).get("load_only").and_then(|v| v.as_bool()) == Some(true)
}

fn cases() -> Vec<PathBuf> {
    let root = fixtures().join("semantics");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 14, "{}", root.display());
    dirs
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The case's method attached as the Lua API attaches it (`ftl.lora`, `ftl.ia3`, `ftl.prefix`).
fn setup(m: &mut Model, s: &Value) {
    match s["method"].as_str().unwrap() {
        "lora" => {
            let mts = strs(&s["modules_to_save"]);
            let mts: Vec<String> = if mts.is_empty() {
                mts
            } else {
                Selector::new(Pattern::list(mts))
                    .select(&m.all_module_paths(), "modules")
                    .unwrap()
            };
            let paths: Vec<String> = Selector::new(Pattern::list(strs(&s["targets"])))
                .select(&m.module_paths(Kind::Injectable), "modules")
                .unwrap()
                .into_iter()
                .filter(|p| !mts.contains(p))
                .collect();
            let o = LoraOpts {
                r: s["r"].as_u64().unwrap() as usize,
                alpha: s["alpha"].as_f64().unwrap(),
                dropout: 0.0,
                rslora: false,
                dora: s["dora"].as_bool().unwrap(),
                lora_bias: false,
                init: LoraInit::Kaiming,
            };
            let tie = s["ensure_weight_tying"].as_bool().unwrap();
            m.attach_registered("default", &LoraMethod, &paths, &o.config().unwrap())
                .unwrap();
            if !mts.is_empty() {
                m.add_modules_to_save_tied("default", &mts, tie).unwrap();
            }
            m.adapters_mut()[0].ensure_weight_tying = tie;
        }
        "ia3" => {
            let paths = Selector::new(Pattern::list(strs(&s["targets"])))
                .select(&m.module_paths(Kind::Linear), "modules")
                .unwrap();
            let ff = Pattern::list(strs(&s["feedforward"]));
            let ff: Vec<String> = paths.iter().filter(|p| ff.matches(p)).cloned().collect();
            let ia3 = ftl::peft::registry::by_name("ia3").unwrap();
            let given = serde_json::json!({ "feedforward_modules": ff });
            let cfg =
                ftl::peft::registry::config(ia3, given.as_object().unwrap(), "meta.json").unwrap();
            m.attach_registered("default", ia3, &paths, &cfg).unwrap();
        }
        "prefix" => {
            let t = s["tokens"].as_u64().unwrap() as usize;
            let h = s["projection"].as_u64().unwrap() as usize;
            let given = serde_json::json!({"num_virtual_tokens": t, "encoder_hidden_size": h});
            let prefix = &ftl::peft::prefix::PrefixTuning;
            let cfg = ftl::peft::registry::input_config(prefix, given.as_object().unwrap(), "meta")
                .unwrap();
            m.attach_input("default", prefix, &cfg).unwrap();
        }
        other => panic!("unknown method {other}"),
    }
}

/// Trains the case against its reference (gradients, updates, losses); the trained model.
fn train_case(dir: &Path) -> Model {
    train_case_with(dir, false)
}

fn train_case_with(dir: &Path, checkpoint: bool) -> Model {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let e = expected(dir);
    let meta = meta(dir);
    let mut model = load(&fixture(meta["base"].as_str().unwrap()));
    setup(&mut model, &meta["setup"]);
    let mut opts = opts_of(&meta);
    opts.checkpoint = checkpoint;
    let data = Dataset::from_examples(examples_of(&e, opts.max_steps.unwrap()), &name).unwrap();
    let trained = check(Case {
        name,
        model,
        data,
        e: &e,
        meta: &meta,
        opts,
        trainable: names(&meta["trainable"]),
    });
    std::sync::Arc::try_unwrap(trained)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
}

fn logits_rel(m: &Model, e: &Expected, key: &str) -> f32 {
    let ctx = m.ctx(false, 0);
    let got = m
        .forward_with(
            e.get("batch0.input_ids"),
            Some(e.get("batch0.attention_mask")),
            None,
            &ctx,
            None,
        )
        .unwrap();
    rel(&got, e.get(key))
}

fn fresh_with_peft_adapter(dir: &Path, meta: &Value) -> Model {
    let mut m = load(&fixture(meta["base"].as_str().unwrap()));
    load_adapter(
        &mut m,
        &dir.join("adapter"),
        &LoadAdapterOpts {
            name: Some("default".into()),
            trainable: false,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    m
}

/// Keys PEFT writes that only repeat a frozen base weight (its `save_embedding_layers` for a
/// targeted embedding): optional, ftl leaves them out.
fn optional_key(k: &str) -> bool {
    k.ends_with(".base_layer.weight")
}

/// Training follows PEFT (trainable set, names, gradients, three AdamW updates, losses), and what
/// `save_adapter` writes after it is what PEFT's `save_pretrained` wrote: the same keys with the
/// same values, the same `modules_to_save` and `ensure_weight_tying`.
#[test]
fn training_and_saving_follow_peft() {
    for dir in cases().into_iter().filter(|d| !load_only(d)) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut m = train_case(&dir);
        let tmp = tempfile::tempdir().unwrap();
        save_adapter(&mut m, tmp.path(), "default").unwrap();
        let ours = StFile::open(&tmp.path().join("adapter_model.safetensors")).unwrap();
        let theirs = StFile::open(&dir.join("adapter/adapter_model.safetensors")).unwrap();
        let want: Vec<&String> = theirs.names.iter().filter(|k| !optional_key(k)).collect();
        let got: Vec<&String> = ours.names.iter().filter(|k| !optional_key(k)).collect();
        assert_eq!(got, want, "{name}: saved keys");
        for k in want {
            let a = ours.load(k, &candle_core::Device::Cpu, None).unwrap();
            let b = theirs.load(k, &candle_core::Device::Cpu, None).unwrap();
            assert!(rel(&a, &b) < 1e-3, "{name}: saved {k}: {}", rel(&a, &b));
        }
        let read = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
                .unwrap()
        };
        let (ca, cb) = (read(tmp.path()), read(&dir.join("adapter")));
        let modules = m.all_module_paths();
        // PEFT's modules_to_save rule: plain endswith
        let sel = |v: &Value| -> Vec<String> {
            let keys = strs(v);
            modules
                .iter()
                .filter(|p| keys.iter().any(|k| p.ends_with(k.as_str())))
                .cloned()
                .collect()
        };
        assert_eq!(
            sel(&ca["modules_to_save"]),
            sel(&cb["modules_to_save"]),
            "{name}: modules_to_save"
        );
        if cb.get("ensure_weight_tying").is_some() {
            assert_eq!(
                ca["ensure_weight_tying"], cb["ensure_weight_tying"],
                "{name}: ensure_weight_tying"
            );
        }
        // the trained model saved whole: PEFT's merged model after the same training (the
        // updates agree to 1e-2, so the logits to about 1e-3)
        let e = expected(&dir);
        if e.opt("logits_merged").is_some() {
            let md = tmp.path().join("merged");
            m.save(&md).unwrap();
            let err = logits_rel(&load(&md), &e, "logits_merged");
            assert!(err < 2e-3, "{name}: trained, saved and reloaded: {err}");
        }
    }
}

/// PEFT's trained adapter files load into a fresh base and give PEFT's logits; folding them
/// (`m:merge()`, and `m:save(dir)` read back) gives PEFT's `merge_and_unload` logits and its tying.
#[test]
fn loading_and_folding_follow_peft() {
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = expected(&dir);
        let meta = meta(&dir);
        let m = fresh_with_peft_adapter(&dir, &meta);
        let err = logits_rel(&m, &e, "logits");
        assert!(err < 1e-4, "{name}: logits with PEFT's adapter: {err}");
        let Some(merged) = meta.get("merged") else {
            continue;
        };
        let tied = merged["tie_word_embeddings"].as_bool().unwrap();
        let mut m = m;
        let tmp = tempfile::tempdir().unwrap();
        m.save(tmp.path()).unwrap();
        let back = load(tmp.path());
        let err = logits_rel(&back, &e, "logits_merged");
        assert!(err < 1e-4, "{name}: m:save then load: {err}");
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
                .unwrap();
        let saved_tie = cfg
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(meta["base"] == "gpt2-tiny");
        assert_eq!(saved_tie, tied, "{name}: saved tie_word_embeddings");
        let st = StFile::open(&tmp.path().join("model.safetensors")).unwrap();
        assert_eq!(
            st.has("lm_head.weight"),
            !tied,
            "{name}: lm_head.weight saved exactly when untied"
        );
        let merged_names = m.merge().unwrap();
        assert_eq!(merged_names, vec!["default".to_string()], "{name}");
        let err = logits_rel(&m, &e, "logits_merged");
        assert!(err < 1e-4, "{name}: m:merge(): {err}");
        assert_eq!(
            m.config
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(meta["base"] == "gpt2-tiny"),
            tied,
            "{name}: tie_word_embeddings after merge"
        );
    }
}

/// An adapter that cannot be folded makes `m:save` an error that names it and says how to save
/// it instead; inactive, it is left out and the base is saved.
#[test]
fn saving_with_an_unfoldable_adapter_is_an_error() {
    let dir = fixtures().join("semantics/prefix-projection");
    let meta = meta(&dir);
    let mut m = fresh_with_peft_adapter(&dir, &meta);
    let tmp = tempfile::tempdir().unwrap();
    let err = m.save(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("`default`") && err.contains("prefix") && err.contains("save_adapter"),
        "{err}"
    );
    assert!(!tmp.path().join("model.safetensors").exists());
    m.set_active(&[]).unwrap();
    m.save(tmp.path()).unwrap();
    let base = load(&fixture(meta["base"].as_str().unwrap()));
    let back = load(tmp.path());
    let e = expected(&dir);
    let ctx = base.ctx(false, 0);
    let want = base
        .forward_with(
            e.get("batch0.input_ids"),
            Some(e.get("batch0.attention_mask")),
            None,
            &ctx,
            None,
        )
        .unwrap();
    let got = back
        .forward_with(
            e.get("batch0.input_ids"),
            Some(e.get("batch0.attention_mask")),
            None,
            &ctx,
            None,
        )
        .unwrap();
    assert!(rel(&got, &want) < 1e-6);
}

/// The device path (its own backward tape) trains every case like PyTorch too; the prefix
/// projection's gradient reaches it from every layer's segment.
#[test]
fn device_path_trains_the_semantics_cases() {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ftl::ops::set_path(ftl::ops::Path::Auto);
        }
    }
    let _reset = Reset;
    ftl::ops::set_path(ftl::ops::Path::Device);
    for dir in cases().into_iter().filter(|d| !load_only(d)) {
        train_case(&dir);
    }
}

/// Activation checkpointing (each layer recomputed in the backward pass, the prefix projection
/// with it) changes no number of these cases either.
#[test]
fn checkpointing_trains_the_semantics_cases() {
    for dir in cases().into_iter().filter(|d| !load_only(d)) {
        train_case_with(&dir, true);
    }
}

/// LoRA that PEFT ties across a tied embedding and head (`ensure_weight_tying`) is read for use,
/// not for training: asked to train it, ftl says so, and attaching it is refused the same way.
#[test]
fn tied_lora_with_weight_tying_is_not_trained() {
    let dir = fixtures().join("semantics/lora-tied-ewt");
    let meta = meta(&dir);
    let mut m = load(&fixture(meta["base"].as_str().unwrap()));
    let o = LoadAdapterOpts {
        name: None,
        trainable: true,
    };
    let err = load_adapter(&mut m, &dir.join("adapter"), &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ensure_weight_tying") && err.contains("trainable = false"),
        "{err}"
    );
    assert!(m.adapter_names().is_empty());
    let err = m
        .check_weight_tying_targets(&["lm_head".to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lm_head") && err.contains("ensure_weight_tying"),
        "{err}"
    );
}

/// The same through a recipe: `ftl.lora`'s `modules_to_save` and `ensure_weight_tying` on a tied
/// model (names in `m:state_dict`, which weight training moves, what `save_adapter` writes),
/// `m:unfreeze("lm_head")` on a tied model, and `m:save` refusing an unfoldable adapter.
#[test]
fn tied_embeddings_through_a_recipe() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("tied.lua");
    std::fs::write(
        &r,
        r#"local ftl = require("ftl")
local base = ftl.args.base
local data = ftl.data.from({{text = "the cat sat on the mat"}, {text = "a dog ran in the park"}})
local function trained(sd) local t = {} for k, _ in pairs(sd) do t[#t + 1] = k end table.sort(t) return table.concat(t, " ") end
for _, tie in ipairs({false, true}) do
  local m = ftl.load(base)
  ftl.lora(m, {targets = {"q_proj"}, modules_to_save = {"lm_head"}, ensure_weight_tying = tie})
  local before = m:state_dict{trainable = false}["model.embed_tokens.weight"]
  print("trainable " .. tostring(tie) .. ": " .. trained(m:state_dict{trainable = true}))
  ftl.train(m, data, {max_steps = 2, batch_size = 2, lr = 1e-2})
  local after = m:state_dict{trainable = false}["model.embed_tokens.weight"]
  print("embedding moved " .. tostring(tie) .. ": " .. tostring((after - before):abs():max() > 0))
  local dir = "a" .. tostring(tie)
  m:save_adapter(dir)
  local cfg = ftl.json.read(ftl.fs.join(ftl.out_dir, dir, "adapter_config.json"))
  print("config " .. tostring(tie) .. ": " .. tostring(cfg.ensure_weight_tying) .. " " .. table.concat(cfg.modules_to_save, ","))
end
local ok, err = pcall(function() ftl.lora(ftl.load(base), {targets = {"q_proj", "lm_head"}, ensure_weight_tying = true}) end)
print("tied lora: " .. tostring(err))
local u = ftl.load(base)
u:unfreeze("lm_head")
print("unfrozen: " .. trained(u:state_dict{trainable = true}))
local p = ftl.load(base)
ftl.prefix(p, {tokens = 2})
local ok2, err2 = pcall(function() p:save("full") end)
print("save: " .. tostring(err2))
"#,
    )
    .unwrap();
    let base = fixture("llama-tied-bias").display().to_string();
    let out_dir = t.path().join("out");
    let (code, out, err) = crate::recipes::run(
        &r,
        &[&format!("base={base}"), "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let line = |p: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no `{p}` in {out}"))
            .to_string()
    };
    assert!(
        line("trainable false:").contains(" lm_head.modules_to_save.weight"),
        "{out}"
    );
    assert!(!line("trainable false:").contains("embed_tokens"), "{out}");
    assert!(
        line("trainable true:").contains("model.embed_tokens.modules_to_save.weight"),
        "{out}"
    );
    assert!(!line("trainable true:").contains("lm_head"), "{out}");
    // the base embedding is never trained: the copies are
    assert_eq!(
        line("embedding moved false:"),
        "embedding moved false: false"
    );
    assert_eq!(line("embedding moved true:"), "embedding moved true: false");
    assert_eq!(line("config false:"), "config false: false lm_head");
    assert_eq!(line("config true:"), "config true: true model.embed_tokens");
    let keys = |d: &str| StFile::open(&out_dir.join(d).join("adapter_model.safetensors")).unwrap();
    assert!(keys("afalse").has("base_model.model.lm_head.weight"));
    assert!(!keys("afalse").has("base_model.model.model.embed_tokens.weight"));
    assert!(keys("atrue").has("base_model.model.lm_head.weight"));
    assert!(keys("atrue").has("base_model.model.model.embed_tokens.weight"));
    assert!(line("tied lora:").contains("not supported"), "{out}");
    assert_eq!(line("unfrozen:"), "unfrozen: model.embed_tokens.weight");
    assert!(line("save:").contains("save_adapter"), "{out}");
}

/// A tied weight trained in full (`m:unfreeze("lm_head")` on a tied model: the one shared weight)
/// trains as PEFT's shared `ensure_weight_tying` copy does (mts-tied-lmhead-ewt, the copy's
/// numbers under the base weight's name), and `save_adapter` writes it the way PEFT can read it
/// back: a `modules_to_save` copy of `model.embed_tokens` with `ensure_weight_tying`, under both
/// modules' names (without the flag PEFT would leave lm_head at the base weight).
#[test]
fn a_trained_tied_weight_saves_as_a_tied_copy() {
    let dir = fixtures().join("semantics/mts-tied-lmhead-ewt");
    let (copy, base) = (
        "model.embed_tokens.modules_to_save.weight",
        "model.embed_tokens.weight",
    );
    let mut e = expected(&dir);
    let renamed: Vec<(String, candle_core::Tensor)> = e
        .tensors
        .iter()
        .filter(|(k, _)| k.ends_with(copy))
        .map(|(k, v)| (k.replace(copy, base), v.clone()))
        .collect();
    e.tensors.extend(renamed);
    let mut meta = meta(&dir);
    let trainable: Vec<String> = names(&meta["trainable"])
        .into_iter()
        .map(|n| if n == copy { base.to_string() } else { n })
        .collect();
    meta["trainable"] = serde_json::json!(trainable);
    let mut model = load(&fixture("llama-tied-bias"));
    let mut s = meta["setup"].clone();
    s["modules_to_save"] = serde_json::json!([]);
    s["ensure_weight_tying"] = false.into();
    setup(&mut model, &s);
    let sel = Selector::new(Pattern::list(vec!["lm_head".into()]));
    assert_eq!(model.set_trainable(Some(&sel), true).unwrap(), 1);
    let opts = opts_of(&meta);
    let data = Dataset::from_examples(examples_of(&e, 3), "tied").unwrap();
    let trained = check(Case {
        name: "tied weight trained in full".into(),
        model,
        data,
        e: &e,
        meta: &meta,
        opts,
        trainable,
    });
    let mut m = trained.lock().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(&mut m, tmp.path(), "default").unwrap();
    let ours = StFile::open(&tmp.path().join("adapter_model.safetensors")).unwrap();
    let theirs = StFile::open(&dir.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(ours.names, theirs.names, "saved keys");
    for k in &theirs.names {
        let a = ours.load(k, &candle_core::Device::Cpu, None).unwrap();
        let b = theirs.load(k, &candle_core::Device::Cpu, None).unwrap();
        assert!(rel(&a, &b) < 1e-3, "saved {k}: {}", rel(&a, &b));
    }
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["ensure_weight_tying"], true);
    assert_eq!(
        cfg["modules_to_save"],
        serde_json::json!(["model.embed_tokens"])
    );
}
