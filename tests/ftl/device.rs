//! The device path (what runs on CUDA and for non-f32 dtypes: candle ops forward, recomputing
//! backward) checked on the CPU in f32 against every reference: models, adapters, training.

use ftl::ops::{set_path, Path};

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        set_path(Path::Auto);
        ftl::ops::generic::set_chunk_bytes(256 << 20);
    }
}

#[test]
fn device_path_reproduces_every_reference() {
    let _reset = Reset;
    set_path(Path::Device);
    // tiny working copies: the chunked loops (rows of logits, samples of attention) run too
    ftl::ops::generic::set_chunk_bytes(4096);
    crate::fixtures::check_base_models();
    crate::fixtures::check_adapters();
    crate::training::check_shared_train_fixtures();
    crate::training::check_own_train_references();
}

/// Every method trained for a few steps on the device path (its backward tape, its ops) gives the
/// same losses and parameter updates as the fused CPU path, including methods and architectures
/// that have no training fixture (prompt tuning, bottleneck adapters, GPT-2, BERT classification).
#[test]
fn device_path_trains_every_method_like_the_cpu_path() {
    use candle_core::Tensor;
    use ftl::data::{Dataset, Label, Record};
    use ftl::peft::bottleneck::BnConfig;
    use ftl::peft::lora::{LoraInit, LoraOpts};
    use ftl::peft::target::{Pattern, Selector};
    use ftl::peft::Kind;
    use ftl::train::{self, TrainOpts};
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    let _reset = Reset;
    let attach = |m: &mut ftl::Model, method: &str| {
        let select = |m: &mut ftl::Model, names: &[&str]| {
            Selector::new(Pattern::list(names.iter().map(|s| s.to_string()).collect()))
                .select(&m.module_paths(Kind::Linear), "test")
                .unwrap()
        };
        let lora = |dora| LoraOpts {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            rslora: false,
            dora,
            lora_bias: false,
            init: LoraInit::Gaussian,
        };
        match method {
            "full" => {
                m.set_trainable(None, true).unwrap();
            }
            "lora" | "dora" => {
                let targets: &[&str] = if m.arch.model_type() == "llama" {
                    &["q_proj", "v_proj", "down_proj"]
                } else if m.arch.model_type() == "gpt2" {
                    &["c_attn", "c_fc"]
                } else {
                    &["query", "value"]
                };
                let p = select(m, targets);
                m.attach_lora("a", &p, &lora(method == "dora")).unwrap();
            }
            "ia3" => {
                let p = select(m, &["k_proj", "v_proj", "down_proj"]);
                let ff = select(m, &["down_proj"]);
                m.attach_ia3("a", &p, &ff).unwrap();
            }
            "prefix" => m.attach_prefix("a", 5, None).unwrap(),
            "prompt" => m.attach_prompt("a", 4, None).unwrap(),
            style => {
                let raw = BnConfig::preset(style).unwrap();
                m.attach_bottleneck("a", &BnConfig::from_json(&raw, false).unwrap())
                    .unwrap();
            }
        }
    };
    let texts = [
        "the cat sat on the mat and looked out of the window",
        "a dog ran in the park",
        "the sun is warm today, and the river is high",
        "we like green tea",
    ];
    let data = Dataset::from_records(
        texts
            .iter()
            .cycle()
            .take(8)
            .map(|t| Record::Text(t.to_string()))
            .collect(),
        "texts",
    )
    .unwrap();
    let cases = [
        ("llama-tiny", "full"),
        ("llama-tiny", "lora"),
        ("llama-tiny", "dora"),
        ("llama-tiny", "ia3"),
        ("llama-tiny", "prefix"),
        ("llama-tiny", "prompt"),
        ("llama-tiny", "pfeiffer"),
        ("llama-tiny", "houlsby"),
        ("gpt2-tiny", "lora"),
        ("gpt2-tiny", "prompt"),
        ("gpt2-tiny", "houlsby"),
        ("bert-tiny-cls", "full"),
        ("bert-tiny-cls", "lora"),
        ("bert-tiny-cls", "pfeiffer"),
    ];
    let labelled = Dataset::from_records(
        texts
            .iter()
            .cycle()
            .take(8)
            .enumerate()
            .map(|(i, t)| Record::Classification {
                text: t.to_string(),
                pair: None,
                label: Label::Id((i % 2) as i64),
            })
            .collect(),
        "labelled",
    )
    .unwrap();
    for (base, method) in cases {
        let data = if base.starts_with("bert") {
            &labelled
        } else {
            &data
        };
        let run = |path: Path, checkpoint: bool| {
            set_path(path);
            let mut m = crate::common::load(&crate::common::fixture(base));
            m.seed = 3;
            attach(&mut m, method);
            let before: BTreeMap<String, Tensor> = m
                .trainable_params()
                .into_iter()
                .map(|(n, p)| (n, p.value().copy().unwrap()))
                .collect();
            let m = Arc::new(Mutex::new(m));
            let o = TrainOpts {
                max_steps: Some(3),
                batch_size: 4,
                lr: 1e-2,
                seed: 5,
                shuffle: false,
                checkpoint,
                ..Default::default()
            };
            let r = train::train(&m, data, &o, None, &mut [], &AtomicBool::new(false)).unwrap();
            let mut m = m.lock().unwrap();
            let updates: BTreeMap<String, Tensor> = m
                .trainable_params()
                .into_iter()
                .map(|(n, p)| {
                    let d = (p.value().to_dtype(candle_core::DType::F32).unwrap() - &before[&n])
                        .unwrap();
                    (n, d)
                })
                .collect();
            set_path(Path::Auto);
            (r.loss, updates)
        };
        let (loss_cpu, cpu) = run(Path::Auto, false);
        // the tape also records each layer again when activation checkpointing recomputes it
        for checkpoint in [false, true] {
            let (loss_dev, dev) = run(Path::Device, checkpoint);
            let what = format!("{base} {method} (checkpoint {checkpoint})");
            assert!(
                (loss_cpu - loss_dev).abs() <= 1e-5 * loss_cpu.abs().max(1.0),
                "{what}: loss {loss_cpu} on the CPU path, {loss_dev} on the device path"
            );
            assert_eq!(cpu.len(), dev.len(), "{what}");
            assert!(!cpu.is_empty(), "{what}: nothing trained");
            for (n, a) in &cpu {
                // softmax ignores a shift shared by a query's scores, so the key bias's gradient
                // is zero up to rounding, and AdamW turns rounding noise into full-size updates
                if n.ends_with("key.bias") {
                    continue;
                }
                let e = crate::common::rel(&dev[n], a);
                assert!(e < 1e-2, "{what}: update of {n} differs by {e}");
            }
        }
    }
}
