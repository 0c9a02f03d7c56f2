//! Bad input gets a clear error naming the file, key or module path — never a panic.

use crate::common::*;
use ftl::model::hub::{load as hub_load, LoadOpts};
use std::path::Path;

/// A copy of a fixture model directory to damage.
fn copy_model(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match hub_load(dir, &LoadOpts::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn missing_config_key_names_file_and_key() {
    let t = tempfile::tempdir().unwrap();
    copy_model("llama-tiny", t.path());
    edit_config(t.path(), |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(t.path());
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn unknown_model_type_is_named() {
    let t = tempfile::tempdir().unwrap();
    copy_model("llama-tiny", t.path());
    edit_config(t.path(), |v| v["model_type"] = "mamba".into());
    let e = load_err(t.path());
    assert!(
        e.contains("model_type") && e.contains("mamba") && e.contains("llama"),
        "{e}"
    );
}

#[test]
fn config_and_weights_disagree_on_shape() {
    let t = tempfile::tempdir().unwrap();
    copy_model("llama-tiny", t.path());
    edit_config(t.path(), |v| v["intermediate_size"] = 96.into());
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("gate_proj.weight") && e.contains("[96, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let t = tempfile::tempdir().unwrap();
    copy_model("llama-tiny", t.path());
    let p = t.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // a file cut inside its header too
    std::fs::write(&p, &bytes[..20]).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_directory_and_files_are_named() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.contains("/nonexistent/model"), "{e}");
    let t = tempfile::tempdir().unwrap();
    copy_model("llama-tiny", t.path());
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn adapter_for_another_base_model() {
    // GPT-2's LoRA targets c_attn: nothing in llama matches
    let mut m = load(&fixture("llama-tiny"));
    let e = ftl::peft::io::load_adapter(&mut m, &fixture("gpt2-lora"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("target_modules") && e.contains("gpt2-tiny"),
        "{e}"
    );
    assert!(
        m.adapters().is_empty(),
        "a failed load left an adapter behind"
    );
    // same module names, other shapes: the tensor and file are named
    let mut m = load(&fixture("llama-gqa3"));
    let e = ftl::peft::io::load_adapter(&mut m, &fixture("lora-qv"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("lora_") && e.contains("llama-tiny"),
        "{e}"
    );
    // a prefix for another depth
    let e = ftl::peft::io::load_adapter(&mut m, &fixture("prefix"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt_embeddings"), "{e}");
    // a bottleneck adapter for another hidden size
    let mut g = load(&fixture("gpt2-scaled"));
    let e = ftl::peft::io::load_adapter(&mut g, &fixture("houlsby-gpt2"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter.safetensors") && e.contains("adapter_down"),
        "{e}"
    );
}

#[test]
fn pattern_matching_nothing_lists_similar_paths() {
    let mut m = load(&fixture("llama-tiny"));
    let s = ftl::peft::target::Selector::new(
        ftl::peft::target::Pattern::parse("model.layers.*.self_attn.qproj").unwrap(),
    );
    let e = s
        .select(&m.module_paths(ftl::peft::Kind::Linear), "modules")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("qproj") && e.contains("model.layers.0.self_attn.q_proj"),
        "{e}"
    );
    let e = m.set_trainable(
        Some(&ftl::peft::target::Selector::new(
            ftl::peft::target::Pattern::parse("decoder.**").unwrap(),
        )),
        true,
    );
    assert!(e.unwrap_err().to_string().contains("decoder.**"));
}

#[test]
fn broken_adapter_config_is_named() {
    let t = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("lora-qv").join(f), t.path().join(f)).unwrap();
    }
    std::fs::write(
        t.path().join("adapter_config.json"),
        "{\"peft_type\": \"LORA\", ",
    )
    .unwrap();
    let mut m = load(&fixture("llama-tiny"));
    let e = ftl::peft::io::load_adapter(&mut m, t.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("JSON"),
        "{e}"
    );
    std::fs::write(
        t.path().join("adapter_config.json"),
        "{\"peft_type\": \"NO_SUCH_METHOD\", \"target_modules\": [\"q_proj\"]}",
    )
    .unwrap();
    let e = ftl::peft::io::load_adapter(&mut m, t.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("peft_type") && e.contains("NO_SUCH_METHOD") && e.contains("LOHA, LOKR, VERA"),
        "{e}"
    );
}

#[test]
fn truncation_that_masks_every_label_is_an_error_not_a_zero_loss() {
    let t = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny").display().to_string();
    let recipe = t.path().join("r.lua");
    std::fs::write(
        &recipe,
        r#"local ftl = require("ftl")
local m = ftl.load(ftl.args.model)
ftl.lora(m, {})
local d = ftl.data.from({{instruction = "Name the colour of the sky on a clear day, please", output = "blue"}},
  {format = "instruction"})
ftl.train(m, d, {lr = 1e-3, max_steps = 1, max_len = 8})
"#,
    )
    .unwrap();
    let (code, _, err) = crate::recipes::run(&recipe, &[&format!("model={model}")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("r.lua:6")
            && err.contains("every label is masked")
            && err.contains("max_len = 8"),
        "{err}"
    );
}
