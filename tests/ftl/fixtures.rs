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
