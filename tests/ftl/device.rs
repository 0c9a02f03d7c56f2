//! The device path (what runs on CUDA and for non-f32 dtypes: candle ops forward, recomputing
//! backward) checked on the CPU in f32 against every reference: models, adapters, training.

use ftl::ops::{set_path, Path};

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        set_path(Path::Auto);
        ftl::ops::set_chunk_bytes(256 << 20);
    }
}

#[test]
fn device_path_reproduces_every_reference() {
    let _reset = Reset;
    set_path(Path::Device);
    // tiny working copies: the chunked loops (rows of logits, samples of attention) run too
    ftl::ops::set_chunk_bytes(4096);
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
    use crate::invariants::{attach, Method};
    use candle_core::Tensor;
    use ftl::data::{Dataset, Label, Record};
    use ftl::train::{self, TrainOpts};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    let _reset = Reset;
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
    // None: full fine-tuning
    let cases = [
        ("llama-tiny", None),
        ("llama-tiny", Some(Method::Lora)),
        ("llama-tiny", Some(Method::Dora)),
        ("llama-tiny", Some(Method::Ia3)),
        ("llama-tiny", Some(Method::Prefix)),
        ("llama-tiny", Some(Method::Prompt)),
        ("llama-tiny", Some(Method::Pfeiffer)),
        ("llama-tiny", Some(Method::Houlsby)),
        ("gpt2-tiny", Some(Method::Lora)),
        ("gpt2-tiny", Some(Method::Prompt)),
        ("gpt2-tiny", Some(Method::Houlsby)),
        ("bert-tiny-cls", None),
        ("bert-tiny-cls", Some(Method::Lora)),
        ("bert-tiny-cls", Some(Method::Pfeiffer)),
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
            match method {
                Some(method) => {
                    attach(&mut m, method);
                }
                None => {
                    m.set_trainable(None, true).unwrap();
                }
            }
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
            let r = train::train(&m, data, &o, None, &mut []).unwrap();
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
            let what = format!("{base} {method:?} (checkpoint {checkpoint})");
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
