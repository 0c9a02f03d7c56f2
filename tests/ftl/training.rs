//! Training step for step against PyTorch + PEFT: every `train-*` case of the shared fixtures and
//! every case of tests/fixtures/train, through the public `ftl::train::train` path: first-step
//! gradients, parameter updates after each step, losses, the learning-rate schedule, the data
//! pipeline's batches, and the adapter saved after training.

use crate::common::*;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use ftl::data::{Dataset, Example};
use ftl::model::Param;
use ftl::peft::lora::{LoraInit, LoraMethod, LoraOpts};
use ftl::peft::target::{Pattern, Selector};
use ftl::peft::Kind;
use ftl::train::{self, optim, schedule, Flow, Hook, StepInfo, TrainOpts};
use ftl::Model;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Records the first step's raw gradients, every step's loss/lr and parameter values.
struct Recorder {
    names: Vec<String>,
    grads: BTreeMap<String, Tensor>,
    values: Vec<BTreeMap<String, Tensor>>,
    losses: Vec<f64>,
    lrs: Vec<f64>,
    params: Vec<(String, Param)>,
}

impl Hook for Recorder {
    fn on_backward(&mut self, grads: &GradStore, params: &[(String, Param)]) {
        // the first optimizer step's gradients (several backward passes: micro-batches, segments)
        if !self.losses.is_empty() {
            return;
        }
        for (n, p) in params {
            if let Some(g) = grads.get(p.var().unwrap().as_tensor()) {
                let g = g.clone();
                let e = self.grads.remove(n).map(|a| (a + &g).unwrap()).unwrap_or(g);
                self.grads.insert(n.clone(), e);
            }
        }
    }

    fn on_step(&mut self, s: &StepInfo) -> ftl::Result<Flow> {
        self.losses.push(s.loss);
        self.lrs.push(s.lr);
        let mut snap = BTreeMap::new();
        for (n, p) in &self.params {
            if self.names.contains(n) {
                snap.insert(n.clone(), p.value().copy().unwrap());
            }
        }
        self.values.push(snap);
        Ok(Flow::Continue)
    }
}

/// Every parameter by state-dict name (base and adapters).
fn all_params(m: &mut Model) -> Vec<(String, Param)> {
    let mut v = m.base_params();
    for n in m.adapter_names() {
        v.extend(m.adapter_params(&n));
    }
    v
}

pub(crate) fn meta(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

/// The examples of micro-batches `batch{j}.*` (padding removed), in order.
pub(crate) fn examples_of(e: &Expected, n: usize) -> Vec<Example> {
    let mut out = Vec::new();
    for j in 0..n {
        let ids = e
            .get(&format!("batch{j}.input_ids"))
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        let mask = e
            .get(&format!("batch{j}.attention_mask"))
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        let labels = e
            .get(&format!("batch{j}.labels"))
            .to_dtype(DType::I64)
            .unwrap();
        for (r, row) in ids.iter().enumerate() {
            let len = mask[r].iter().filter(|&&x| x == 1).count();
            let mut ex = Example {
                ids: row[..len].iter().map(|&x| x as u32).collect(),
                ..Default::default()
            };
            if labels.rank() == 1 {
                ex.class = Some(labels.to_vec1::<i64>().unwrap()[r]);
            } else {
                ex.labels = labels.to_vec2::<i64>().unwrap()[r][..len].to_vec();
            }
            out.push(ex);
        }
    }
    out
}

thread_local! {
    /// Whether the reference checks on this thread train with activation checkpointing.
    static CHECKPOINT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn opts_of(meta: &Value) -> TrainOpts {
    let o = &meta["optimizer"];
    let kind = match o["name"].as_str().unwrap() {
        "sgd" => optim::Kind::Sgd {
            momentum: o["momentum"].as_f64().unwrap_or(0.0),
        },
        _ => optim::Kind::AdamW {
            beta1: o["betas"][0].as_f64().unwrap(),
            beta2: o["betas"][1].as_f64().unwrap(),
            eps: o["eps"].as_f64().unwrap(),
        },
    };
    let s = &meta["schedule"];
    let steps = meta.get("steps").and_then(|v| v.as_u64()).unwrap_or(3) as usize;
    TrainOpts {
        max_steps: Some(steps),
        batch_size: meta.get("batch_size").and_then(|v| v.as_u64()).unwrap_or(3) as usize,
        grad_accum: meta.get("grad_accum").and_then(|v| v.as_u64()).unwrap_or(1) as usize,
        lr: o["lr"].as_f64().unwrap(),
        optimizer: optim::OptimOpts {
            kind,
            weight_decay: o["weight_decay"].as_f64().unwrap(),
        },
        clip: meta.get("clip").and_then(|v| v.as_f64()),
        schedule: schedule::Schedule {
            kind: schedule::Kind::parse(
                s.get("name").and_then(|v| v.as_str()).unwrap_or("constant"),
            )
            .unwrap(),
            warmup: s.get("warmup").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
            min_lr: s.get("min_lr").and_then(|v| v.as_f64()),
        },
        shuffle: false,
        checkpoint: CHECKPOINT.with(|c| c.get()),
        ..Default::default()
    }
}

/// Builds the trainable setup of one of our cases.
fn setup(m: &mut Model, s: &Value) {
    if s["method"] == "lora" {
        let targets: Vec<String> = s["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let mts: Vec<String> = s["modules_to_save"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let paths = Selector::new(Pattern::list(targets))
            .select(&m.module_paths(Kind::Linear), "modules")
            .unwrap();
        let paths: Vec<String> = paths
            .into_iter()
            .filter(|p| !mts.iter().any(|t| p.ends_with(t.as_str())))
            .collect();
        let o = LoraOpts {
            r: s["r"].as_u64().unwrap() as usize,
            alpha: s["alpha"].as_f64().unwrap(),
            dropout: 0.0,
            rslora: s["rslora"].as_bool().unwrap(),
            dora: s["dora"].as_bool().unwrap(),
            lora_bias: false,
            init: LoraInit::Kaiming,
        };
        m.attach_registered("default", &LoraMethod, &paths, &o.config().unwrap())
            .unwrap();
        if !mts.is_empty() {
            m.add_modules_to_save("default", &mts).unwrap();
        }
    }
    let registered = ftl::peft::registry::by_name(s["method"].as_str().unwrap_or(""));
    if let Some(method) = registered.filter(|_| s["method"] != "lora") {
        // a registry method: its settings under PEFT's names, as the reference's setup has them
        let targets: Vec<String> = names(&s["targets"]);
        let paths = Selector::new(Pattern::list(targets))
            .select(&m.module_paths(Kind::Linear), "modules")
            .unwrap();
        let cfg = ftl::peft::registry::config(method, s.as_object().unwrap(), "meta.json").unwrap();
        m.attach_registered("default", method, &paths, &cfg)
            .unwrap();
    }
    if s["method"] == "none" && s["unfreeze"].as_array().is_none_or(|a| a.is_empty()) {
        m.set_trainable(None, true).unwrap();
    }
    for n in s["unfreeze"].as_array().into_iter().flatten() {
        let n = n.as_str().unwrap();
        let (_, p) = m
            .base_params()
            .into_iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("no parameter {n}"));
        p.set_trainable(true).unwrap();
    }
}

pub(crate) struct Case<'a> {
    pub name: String,
    pub model: Model,
    pub data: Dataset,
    pub e: &'a Expected,
    pub meta: &'a Value,
    pub opts: TrainOpts,
    pub trainable: Vec<String>,
}

/// Trains and checks; returns the model for further checks.
pub(crate) fn check(c: Case) -> Arc<Mutex<Model>> {
    let Case {
        name,
        mut model,
        data,
        e,
        meta,
        opts,
        trainable,
    } = c;
    // the references' initial values, loaded by name
    let params = all_params(&mut model);
    for n in &trainable {
        let (_, p) = params
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("{name}: ftl has no parameter {n}"));
        assert!(p.is_trainable(), "{name}: {n} is not trainable");
        p.set(e.get(&format!("init.{n}"))).unwrap();
    }
    let got: Vec<String> = model
        .trainable_params()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want = trainable.clone();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "{name}: trainable set");
    let steps = opts.max_steps.unwrap();
    let mut rec = Recorder {
        names: trainable.clone(),
        grads: BTreeMap::new(),
        values: Vec::new(),
        losses: Vec::new(),
        lrs: Vec::new(),
        params: all_params(&mut model),
    };
    let model = Arc::new(Mutex::new(model));
    let res = train::train(&model, &data, &opts, None, &mut [&mut rec]).unwrap();
    assert_eq!(res.steps, steps, "{name}");
    let losses: Vec<f64> = meta
        .get("losses")
        .or_else(|| meta.get("losses_before_each_step_then_final"))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (k, want) in losses.iter().enumerate().take(steps) {
        assert!(
            (rec.losses[k] - want).abs() < 1e-5,
            "{name}: loss of step {k}: {} vs {}",
            rec.losses[k],
            want
        );
    }
    if let Some(lrs) = meta.get("lrs").and_then(|v| v.as_array()) {
        for (k, lr) in lrs.iter().enumerate() {
            assert!(
                (rec.lrs[k] - lr.as_f64().unwrap()).abs() < 1e-12,
                "{name}: lr of step {k}"
            );
        }
    }
    for n in &trainable {
        let g = rec
            .grads
            .get(n)
            .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
        let err = rel(g, e.get(&format!("grad.{n}")));
        assert!(err < 1e-4, "{name}: gradient of {n}: {err}");
        let init = e.get(&format!("init.{n}"));
        for k in 1..=steps {
            let Some(want) = e.opt(&format!("step{k}.{n}")) else {
                continue;
            };
            let got_u = (&rec.values[k - 1][n] - init).unwrap();
            let want_u = (want - init).unwrap();
            if want_u
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0
            {
                assert!(
                    got_u
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0,
                    "{name}: {n} moved at step {k}"
                );
                continue;
            }
            let err = rel(&got_u, &want_u);
            assert!(err < 1e-2, "{name}: update of {n} after {k} steps: {err}");
        }
    }
    eprintln!(
        "{name:28} ok: {} trainable tensors, {steps} steps",
        trainable.len()
    );
    model
}

pub(crate) fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn shared_train_fixtures() {
    check_shared_train_fixtures();
}

pub fn check_shared_train_fixtures() {
    for case in [
        "train-full",
        "train-lora",
        "train-ia3",
        "train-prefix",
        "train-gpt2-lora",
    ] {
        let dir = fixture(case);
        let e = expected(&dir);
        let meta = meta(&dir);
        let mut model = load(&fixture(meta["base"].as_str().unwrap()));
        let after = dir.join("adapter_after_3_steps");
        if after.exists() {
            let o = ftl::peft::io::LoadAdapterOpts {
                name: Some("default".into()),
                trainable: true,
            };
            ftl::peft::io::load_adapter(&mut model, &after, &o).unwrap();
        } else {
            model.set_trainable(None, true).unwrap();
        }
        let ex = examples(&e);
        let mut m = meta.clone();
        m["batch_size"] = ex.len().into();
        m["steps"] = 3.into();
        m["schedule"] = serde_json::json!({"name": "constant"});
        let opts = opts_of(&m);
        let trained = check(Case {
            name: case.to_string(),
            model,
            data: Dataset::from_examples(ex, case).unwrap(),
            e: &e,
            meta: &m,
            opts,
            trainable: names(&meta["trainable"]),
        });
        if after.exists() {
            // what ftl saves after the three steps is what PEFT saved
            let tmp = tempfile::tempdir().unwrap();
            ftl::peft::io::save_adapter(&mut trained.lock().unwrap(), tmp.path(), "default")
                .unwrap();
            let ours =
                ftl::st::StFile::open(&tmp.path().join("adapter_model.safetensors")).unwrap();
            let theirs = ftl::st::StFile::open(&after.join("adapter_model.safetensors")).unwrap();
            assert_eq!(ours.names, theirs.names, "{case}: saved keys");
            for k in &theirs.names {
                let a = ours.load(k, &candle_core::Device::Cpu, None).unwrap();
                let b = theirs.load(k, &candle_core::Device::Cpu, None).unwrap();
                let init_name = k.strip_prefix("base_model.model.").unwrap_or(k);
                let _ = init_name;
                assert!(rel(&a, &b) < 1e-3, "{case}: saved {k}: {}", rel(&a, &b));
            }
            let read = |p: &Path| -> Value {
                serde_json::from_str(
                    &std::fs::read_to_string(p.join("adapter_config.json")).unwrap(),
                )
                .unwrap()
            };
            let (mut ca, cb) = (read(tmp.path()), read(&after));
            // module lists are compared by the modules they select (ftl writes full paths)
            let mut m = trained.lock().unwrap();
            let modules = m.all_module_paths();
            for k in ["target_modules", "feedforward_modules"] {
                let sel = |v: &Value| -> Vec<String> {
                    let p = Pattern::list(
                        v.as_array()
                            .map(|a| names(&Value::Array(a.clone())))
                            .unwrap_or_default(),
                    );
                    modules.iter().filter(|x| p.matches(x)).cloned().collect()
                };
                if let Some(v) = ca.get(k) {
                    assert_eq!(sel(v), sel(&cb[k]), "{case}: {k} selects other modules");
                }
            }
            drop(m);
            for k in [
                "peft_version",
                "base_model_name_or_path",
                "target_modules",
                "feedforward_modules",
            ] {
                ca.as_object_mut().unwrap().remove(k);
            }
            for (k, v) in ca.as_object().unwrap() {
                assert_eq!(Some(v), cb.get(k), "{case}: adapter_config.json field {k}");
            }
            for (k, v) in cb.as_object().unwrap() {
                if ![
                    "peft_version",
                    "base_model_name_or_path",
                    "target_modules",
                    "feedforward_modules",
                ]
                .contains(&k.as_str())
                {
                    assert!(
                        ca.get(k).is_some(),
                        "{case}: ftl's adapter_config.json lacks {k} ({v})"
                    );
                }
            }
        }
    }
}

#[test]
fn own_train_references() {
    check_own_train_references();
}

/// Recomputing each layer in the backward pass (same dropout masks) changes no number: every
/// reference, dropout, gradient accumulation, prefix and prompt tuning included, still holds.
#[test]
fn activation_checkpointing_reproduces_every_training_reference() {
    CHECKPOINT.with(|c| c.set(true));
    check_shared_train_fixtures();
    check_own_train_references();
}

pub fn check_own_train_references() {
    let root = fixtures().join("train");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 14);
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = expected(&dir);
        let meta = meta(&dir);
        let mut model = load(&fixture(meta["base"].as_str().unwrap()));
        setup(&mut model, &meta["setup"]);
        let opts = opts_of(&meta);
        let n_batches = opts.max_steps.unwrap() * opts.grad_accum;
        let want = examples_of(&e, n_batches);
        let data = match meta["data"]["kind"].as_str().unwrap() {
            "tokens" => Dataset::from_examples(want, &name).unwrap(),
            _ => {
                let d = Dataset::jsonl(
                    &dir.join("data.jsonl"),
                    meta["data"]["format"].as_str().unwrap(),
                )
                .unwrap();
                // the data pipeline makes exactly the reference's examples
                let m = Mutex::new(load(&fixture(meta["base"].as_str().unwrap())));
                let (got, _) = train::prepare(&m, &d, None).unwrap();
                assert_eq!(got.len(), want.len(), "{name}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.ids, w.ids, "{name}: token ids");
                    assert_eq!(g.labels, w.labels, "{name}: labels");
                    assert_eq!(g.class, w.class, "{name}: class");
                }
                d
            }
        };
        let trained = check(Case {
            name: name.clone(),
            model,
            data: data.clone(),
            e: &e,
            meta: &meta,
            opts,
            trainable: names(&meta["trainable"]),
        });
        if let Some(fl) = meta.get("final_loss").and_then(|v| v.as_f64()) {
            // the loss on the first step's batches after training
            let first = Dataset::from_examples(
                examples_of(&e, meta["grad_accum"].as_u64().unwrap() as usize),
                "first",
            )
            .unwrap();
            let ev = train::evaluate(&trained, &first, 64, None).unwrap();
            assert!(
                (ev.loss - fl).abs() < 1e-4,
                "{name}: final loss {} vs {fl}",
                ev.loss
            );
        }
    }
}

/// llama-tiny with LoRA on q,v and a small repeated dataset.
fn small_setup(seed: u64) -> (Arc<Mutex<Model>>, Dataset) {
    let mut m = load(&fixture("llama-tiny"));
    m.seed = seed;
    let paths = Selector::new(Pattern::list(vec!["q_proj".into(), "v_proj".into()]))
        .select(&m.module_paths(Kind::Linear), "m")
        .unwrap();
    let o = LoraOpts {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        rslora: false,
        dora: false,
        lora_bias: false,
        init: LoraInit::Kaiming,
    };
    m.attach_registered("default", &LoraMethod, &paths, &o.config().unwrap())
        .unwrap();
    let texts = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "the sun is warm today",
        "we like green tea",
    ];
    let recs = texts
        .iter()
        .cycle()
        .take(16)
        .map(|t| ftl::data::Record::Text(t.to_string()))
        .collect();
    (
        Arc::new(Mutex::new(m)),
        Dataset::from_records(recs, "small").unwrap(),
    )
}

fn opts(steps: usize) -> TrainOpts {
    TrainOpts {
        max_steps: Some(steps),
        batch_size: 4,
        lr: 1e-2,
        seed: 5,
        ..Default::default()
    }
}

fn snapshot(m: &Mutex<Model>) -> BTreeMap<String, Tensor> {
    all_params(&mut m.lock().unwrap())
        .into_iter()
        .map(|(n, p)| (n, p.value().copy().unwrap()))
        .collect()
}

#[test]
fn only_trainable_tensors_change_and_frozen_weights_get_no_gradient() {
    struct Inspect {
        checked: usize,
        steps: usize,
        frozen: Vec<(String, Tensor)>,
        got: std::collections::BTreeSet<String>,
    }
    impl Hook for Inspect {
        fn on_backward(&mut self, grads: &GradStore, params: &[(String, Param)]) {
            for (n, t) in &self.frozen {
                assert!(
                    grads.get(t).is_none(),
                    "the backward pass stored a gradient for frozen {n}"
                );
            }
            for (n, p) in params {
                if grads.get(p.var().unwrap().as_tensor()).is_some() {
                    self.got.insert(n.clone());
                }
            }
            self.checked += 1;
        }
        fn on_step(&mut self, _s: &StepInfo) -> ftl::Result<Flow> {
            self.steps += 1;
            Ok(Flow::Continue)
        }
    }
    let (m, data) = small_setup(0);
    let before = snapshot(&m);
    let frozen: Vec<(String, Tensor)> = m
        .lock()
        .unwrap()
        .base_params()
        .into_iter()
        .map(|(n, p)| (n, p.value()))
        .collect();
    let mut h = Inspect {
        checked: 0,
        steps: 0,
        frozen,
        got: Default::default(),
    };
    let r = train::train(&m, &data, &opts(3), None, &mut [&mut h]).unwrap();
    assert_eq!(h.steps, 3);
    assert!(h.checked > 3, "one backward pass per layer segment");
    assert_eq!(h.got.len(), 8, "every trainable tensor got a gradient");
    let trainable: Vec<String> = m
        .lock()
        .unwrap()
        .trainable_params()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let after = snapshot(&m);
    for (n, t) in &before {
        let changed = rel(&after[n], t) > 0.0;
        assert_eq!(changed, trainable.contains(n), "{n}: changed={changed}");
    }
    // gradients exist only for trainable tensors, and each layer's are applied and freed before
    // the next layer down is backpropagated: one layer's worth at once (the same adapters on
    // every layer here)
    let (tr_bytes, layers) = {
        let mut m = m.lock().unwrap();
        let b: usize = m
            .trainable_params()
            .iter()
            .map(|(_, p)| p.elem_count() * 4)
            .sum();
        (b, m.info_dims().layers)
    };
    assert_eq!(r.grad_bytes, tr_bytes / layers);
    assert_eq!(r.optimizer_bytes, 2 * tr_bytes);
}

#[test]
fn unfreezing_in_a_callback_applies_from_the_next_step() {
    struct Unfreeze {
        model: Arc<Mutex<Model>>,
        at: usize,
        seen: Vec<usize>,
        last: usize,
    }
    impl Hook for Unfreeze {
        fn on_backward(&mut self, _g: &GradStore, params: &[(String, Param)]) {
            self.last = params.len();
        }
        fn on_step(&mut self, s: &StepInfo) -> ftl::Result<Flow> {
            self.seen.push(self.last);
            if s.step == self.at {
                let sel = Selector::new(Pattern::parse("model.layers.1.mlp.**").unwrap());
                self.model
                    .lock()
                    .unwrap()
                    .set_trainable(Some(&sel), true)
                    .unwrap();
            }
            Ok(Flow::Continue)
        }
    }
    let (m, data) = small_setup(0);
    let up = "model.layers.1.mlp.up_proj.weight";
    let w0 = snapshot(&m)[up].clone();
    let mut h = Unfreeze {
        model: m.clone(),
        at: 2,
        seen: Vec::new(),
        last: 0,
    };
    struct Watch(Arc<Mutex<Model>>, Tensor, Vec<bool>);
    impl Hook for Watch {
        fn on_step(&mut self, _s: &StepInfo) -> ftl::Result<Flow> {
            let v = snapshot(&self.0)["model.layers.1.mlp.up_proj.weight"].clone();
            self.2.push(rel(&v, &self.1) > 0.0);
            Ok(Flow::Continue)
        }
    }
    let mut w = Watch(m.clone(), w0, Vec::new());
    train::train(&m, &data, &opts(4), None, &mut [&mut w, &mut h]).unwrap();
    // 8 LoRA tensors, then 3 more from step 3 on
    assert_eq!(h.seen, vec![8, 8, 11, 11]);
    assert_eq!(w.2, vec![false, false, true, true]);
}

#[test]
fn loss_falls_on_a_small_dataset() {
    let (m, data) = small_setup(0);
    m.lock().unwrap().set_trainable(None, true).unwrap();
    let before = train::evaluate(&m, &data, 8, None).unwrap().loss;
    let mut o = opts(60);
    o.lr = 1e-2;
    let r = train::train(&m, &data, &o, None, &mut []).unwrap();
    let after = train::evaluate(&m, &data, 8, None).unwrap().loss;
    eprintln!("loss {before:.3} -> {after:.3} (last step {:.3})", r.loss);
    assert!(before > 6.0, "{before}");
    assert!(after < 1.5, "loss only fell from {before} to {after}");
}

#[test]
fn activation_checkpointing_recomputes_each_layer_with_the_same_dropout() {
    let run = |checkpoint: bool| {
        let (m, data) = small_setup(0);
        let mut o = opts(3);
        o.checkpoint = checkpoint;
        let r = train::train(&m, &data, &o, None, &mut []).unwrap();
        let layers = m.lock().unwrap().info_dims().layers;
        (r, snapshot(&m), layers)
    };
    let (plain, a, layers) = run(false);
    let (ck, b, _) = run(true);
    assert_eq!(plain.recomputed_layers, 0);
    // every layer below the head, once per step (LoRA on every layer, one micro-batch a step)
    assert_eq!(ck.recomputed_layers, 3 * layers);
    // LoRA dropout is live: a recomputed layer that drew other masks would change the updates
    assert!(
        (plain.loss - ck.loss).abs() < 1e-6,
        "{} vs {}",
        plain.loss,
        ck.loss
    );
    for (n, t) in &a {
        let r = rel(t, &b[n]);
        assert!(r < 1e-6, "{n}: {r}");
    }
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let run = || {
        let (m, data) = small_setup(0);
        let mut o = opts(5);
        o.shuffle = true;
        let r = train::train(&m, &data, &o, None, &mut []).unwrap();
        (r.loss, snapshot(&m))
    };
    let (l1, a) = run();
    let (l2, b) = run();
    assert_eq!(l1.to_bits(), l2.to_bits());
    for (n, t) in &a {
        let d: f32 = (t - &b[n])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{n}");
    }
    // another seed gives another run (dropout and shuffling follow it)
    let (m, data) = small_setup(0);
    let mut o = opts(5);
    o.seed = 6;
    let r = train::train(&m, &data, &o, None, &mut []).unwrap();
    assert_ne!(r.loss.to_bits(), l1.to_bits());
}

#[test]
fn save_adapter_after_training_unfrozen_layers_saves_them() {
    let (m, data) = small_setup(0);
    let sel = Selector::new(Pattern::parse("model.layers.1.**").unwrap());
    m.lock().unwrap().set_trainable(Some(&sel), true).unwrap();
    train::train(&m, &data, &opts(2), None, &mut []).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    ftl::peft::io::save_adapter(&mut m.lock().unwrap(), tmp.path(), "default").unwrap();
    let f = ftl::st::StFile::open(&tmp.path().join("adapter_model.safetensors")).unwrap();
    assert!(
        f.has("base_model.model.model.layers.1.mlp.up_proj.weight"),
        "{:?}",
        f.names
    );
    // a trained weight inside a LoRA-wrapped module keeps PEFT's base_layer name
    assert!(
        f.has("base_model.model.model.layers.1.self_attn.q_proj.base_layer.weight"),
        "{:?}",
        f.names
    );
    assert!(f.has("base_model.model.model.layers.1.input_layernorm.weight"));
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let mts = names(&cfg["modules_to_save"]);
    assert!(
        mts.contains(&"model.layers.1.mlp.up_proj".to_string()),
        "{mts:?}"
    );
    // reloading gives the trained model
    let probe = Tensor::new(&[[0u32, 7, 9, 11, 13]], &candle_core::Device::Cpu).unwrap();
    let want = m.lock().unwrap().forward(&probe, None).unwrap();
    let mut fresh = load(&fixture("llama-tiny"));
    ftl::peft::io::load_adapter(&mut fresh, tmp.path(), &Default::default()).unwrap();
    assert!(rel(&fresh.forward(&probe, None).unwrap(), &want) < 1e-6);
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let (m, data) = small_setup(0);
    let err = |o: TrainOpts, d: &Dataset| {
        train::train(&m, d, &o, None, &mut [])
            .unwrap_err()
            .to_string()
    };
    let mut o = opts(1);
    o.lr = 0.0;
    assert!(err(o, &data).contains("lr"));
    let mut o = opts(1);
    o.lr = -1.0;
    assert!(err(o, &data).contains("lr"));
    // nothing trainable
    let frozen = Arc::new(Mutex::new(load(&fixture("llama-tiny"))));
    let e = train::train(&frozen, &data, &opts(1), None, &mut [])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing is trainable"), "{e}");
    // empty dataset
    assert!(Dataset::from_records(Vec::new(), "empty.jsonl")
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("d.jsonl");
    std::fs::write(&p, "\n\n").unwrap();
    assert!(Dataset::jsonl(&p, "instruction")
        .unwrap_err()
        .to_string()
        .contains("empty"));
    // a line with a missing field: the line number
    std::fs::write(
        &p,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n",
    )
    .unwrap();
    let e = Dataset::jsonl(&p, "instruction").unwrap_err().to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("output"), "{e}");
    std::fs::write(&p, "{\"text\": \"ok\", \"label\": 1}\nnot json\n").unwrap();
    let e = Dataset::jsonl(&p, "classification")
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("JSON"), "{e}");
    // a label outside the classifier's range
    std::fs::write(
        &p,
        "{\"text\": \"ok\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 7}\n",
    )
    .unwrap();
    let mut bert = load(&fixture("bert-tiny-cls"));
    bert.set_trainable(None, true).unwrap();
    let bert = Arc::new(Mutex::new(bert));
    let d = Dataset::jsonl(&p, "classification").unwrap();
    let e = train::train(&bert, &d, &opts(1), None, &mut [])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label 7") && e.contains("0..3") && e.contains("record 2"),
        "{e}"
    );
    // classification data for a language model
    let e = train::train(&m, &d, &opts(1), None, &mut [])
        .unwrap_err()
        .to_string();
    assert!(e.contains("classification"), "{e}");
}
