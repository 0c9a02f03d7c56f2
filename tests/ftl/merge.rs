//! `ftl merge` through the binary: LoRA, DoRA and IA3 fixtures folded into llama-tiny give a
//! plain model with PEFT's logits; bad inputs fail with a clear message, exit 1 and no output.

use super::recipes::ftl_bin;
use crate::common::*;
use std::path::Path;

fn merge(args: &[&str]) -> (i32, String, String) {
    let o = ftl_bin().arg("merge").args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn p(x: &Path) -> String {
    x.display().to_string()
}

#[test]
fn merged_models_reproduce_peft_logits() {
    let t = tempfile::tempdir().unwrap();
    let base = fixture("llama-tiny");
    for name in [
        "lora-qv",
        "dora-qv",
        "ia3",
        "loha-qv",
        "lokr-qv",
        "vera-noproj",
    ] {
        let out = t.path().join(name);
        let (code, so, se) = merge(&[&p(&base), &p(&fixture(name)), &p(&out)]);
        assert_eq!(code, 0, "{name}: {so}\n{se}");
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(out.join(f).is_file(), "{name}: no {f}");
        }
        // a plain model now: no adapter files, and the adapter's logits (expected.safetensors
        // holds base + adapter as PEFT computes them; merged they agree to float32 rounding)
        assert!(!out.join("adapter_config.json").exists());
        let m = load(&out);
        assert!(m.adapters().is_empty());
        let e = expected(&fixture(name));
        let err = rel(&logits(&m, &e), e.get("logits"));
        assert!(err < 1e-4, "{name}: merged logits off by {err}");
        // and the base model's logits differ: the adapter was folded in, not dropped
        let b = expected(&base);
        assert!(rel(&logits(&m, &b), b.get("logits")) > 1e-3, "{name}");
        // nothing left over beside OUT
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // bf16 output: the config says so and the weights are bf16, close to the f32 merge
    let out = t.path().join("bf16");
    let (code, _, se) = merge(&[
        &p(&base),
        &p(&fixture("lora-qv")),
        &p(&out),
        "--dtype",
        "bf16",
    ]);
    assert_eq!(code, 0, "{se}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "bfloat16");
    let st = ftl::st::StFile::open(&out.join("model.safetensors")).unwrap();
    let ts = st.load_all(&candle_core::Device::Cpu).unwrap();
    assert!(ts.values().all(|t| t.dtype() == candle_core::DType::BF16));
    let e = expected(&fixture("lora-qv"));
    let err = rel(&logits(&load(&out), &e), e.get("logits"));
    assert!(err < 2e-2, "bf16 merged logits off by {err}");
}

#[test]
fn merge_refuses_bad_inputs() {
    let t = tempfile::tempdir().unwrap();
    let base = p(&fixture("llama-tiny"));
    let out = t.path().join("out");
    let o = p(&out);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![base.clone(), p(&fixture("prefix")), o.clone()],
            "cannot be folded",
        ),
        (
            vec![base.clone(), p(&fixture("prompt")), o.clone()],
            "cannot be folded",
        ),
        (
            vec![base.clone(), p(&fixture("pfeiffer-llama")), o.clone()],
            "bottleneck",
        ),
        // an adapter for another architecture
        (
            vec![base.clone(), p(&fixture("gpt2-lora")), o.clone()],
            "gpt2-tiny",
        ),
        (
            vec!["/no/such/model".into(), p(&fixture("lora-qv")), o.clone()],
            "/no/such/model",
        ),
        (
            vec![base.clone(), "/no/such/adapter".into(), o.clone()],
            "/no/such/adapter",
        ),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, so, se) = merge(&a);
        assert_eq!(code, 1, "{args:?}: {so}\n{se}");
        assert!(se.contains(want), "{args:?}: {se}");
        assert!(!out.exists(), "{args:?} left {o}");
    }
    // wrong base shapes: lora-qv with its A matrices cut to half the input width
    let bad = t.path().join("lora-bad");
    std::fs::create_dir(&bad).unwrap();
    let src = fixture("lora-qv");
    std::fs::copy(
        src.join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    let f = ftl::st::StFile::open(&src.join("adapter_model.safetensors")).unwrap();
    let mut ts = f.load_all(&candle_core::Device::Cpu).unwrap();
    for (k, v) in ts.iter_mut() {
        if k.contains("lora_A") {
            *v = v.narrow(1, 0, v.dim(1).unwrap() / 2).unwrap();
        }
    }
    ftl::st::save(
        &bad.join("adapter_model.safetensors"),
        &ts,
        Some(f.metadata.clone()),
    )
    .unwrap();
    let (code, _, se) = merge(&[&base, &p(&bad), &o]);
    assert_eq!(code, 1, "{se}");
    assert!(se.contains("shape") && se.contains("lora_A"), "{se}");
    assert!(!out.exists());
    // OUT exists and is not empty: untouched
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let (code, _, se) = merge(&[&base, &p(&fixture("lora-qv")), &o]);
    assert_eq!(code, 1);
    assert!(se.contains("not empty"), "{se}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    // an empty OUT is fine
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    let (code, _, se) = merge(&[&base, &p(&fixture("lora-qv")), &o]);
    assert_eq!(code, 0, "{se}");
    assert!(out.join("model.safetensors").is_file());
}
