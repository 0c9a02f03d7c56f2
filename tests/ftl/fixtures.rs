//! Every model and adapter reference in tests/fixtures (HF transformers + PEFT / AdapterHub
//! outputs) reproduced to float32 rounding.

use crate::common::*;

const TOL: f32 = 1e-4;

fn base_dirs() -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for sub in ["hf", "ref"] {
        for e in std::fs::read_dir(fixtures().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.join("config.json").exists() && p.join("expected.safetensors").exists() {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn base_models_match_transformers() {
    let dirs = base_dirs();
    assert!(dirs.len() >= 16, "{dirs:?}");
    let mut failures = Vec::new();
    for d in dirs {
        let m = load(&d);
        let e = expected(&d);
        let got = logits(&m, &e);
        let err = rel(&got, e.get("logits"));
        eprintln!("{:32} {err:.2e}", d.file_name().unwrap().to_string_lossy());
        if err >= TOL {
            failures.push(format!("{}: {err}", d.display()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn adapter_dirs() -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for sub in ["hf", "ref"] {
        for e in std::fs::read_dir(fixtures().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.join("adapter_config.json").exists() && p.join("expected.safetensors").exists() {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Loads the fixture's base and the adapter at `dir`.
fn with_adapter(dir: &std::path::Path, e: &Expected) -> ftl::Model {
    let base = e.meta_str("base").expect("adapter fixture without base");
    let head = e.meta_str("model_class").as_deref() != Some("BertModel");
    let o = ftl::model::hub::LoadOpts {
        head,
        ..Default::default()
    };
    let mut m = ftl::model::hub::load(&fixture(&base), &o).unwrap();
    ftl::peft::io::load_adapter(&mut m, dir, &Default::default())
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    m
}

#[test]
fn adapters_match_peft_and_adapterhub() {
    let dirs = adapter_dirs();
    assert!(dirs.len() >= 40, "{}", dirs.len());
    let mut failures = Vec::new();
    for d in dirs {
        let e = expected(&d);
        let mut m = with_adapter(&d, &e);
        let err = rel(&logits(&m, &e), e.get("logits"));
        let mut line = format!("{:32} {err:.2e}", d.file_name().unwrap().to_string_lossy());
        if err >= TOL {
            failures.push(format!("{}: {err}", d.display()));
        }
        if let Some(want) = e.opt("logits_merged") {
            m.merge().unwrap();
            assert!(m.adapters.is_empty());
            let err = rel(&logits(&m, &e), want);
            line.push_str(&format!("  merged {err:.2e}"));
            if err >= TOL {
                failures.push(format!("{} merged: {err}", d.display()));
            }
        }
        eprintln!("{line}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn two_named_adapters_alone_and_together() {
    let d = fixture("lora-two-adapters");
    let e = expected(&d);
    let mut m = load(&fixture("llama-tiny"));
    let first = ftl::peft::io::load_adapter(&mut m, &d, &Default::default()).unwrap();
    let o = ftl::peft::io::LoadAdapterOpts {
        name: Some("second".into()),
        trainable: false,
    };
    ftl::peft::io::load_adapter(&mut m, &d.join("second"), &o).unwrap();
    let e2 = expected(&d.join("second"));
    m.set_active(&[first.clone()]).unwrap();
    assert!(rel(&logits(&m, &e), e.get("logits")) < TOL);
    m.set_active(&["second".into()]).unwrap();
    assert!(rel(&logits(&m, &e2), e2.get("logits")) < TOL);
    m.set_active(&[first, "second".into()]).unwrap();
    assert!(rel(&logits(&m, &e), e.get("logits_both")) < TOL);
    // disabling gives the base model
    m.enabled = false;
    let base = load(&fixture("llama-tiny"));
    assert!(rel(&logits(&m, &e), &logits(&base, &e)) < 1e-7);
}
