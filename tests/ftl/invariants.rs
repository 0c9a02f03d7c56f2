//! Invariants for every (model, method) pair, with adapters randomised away from their identity
//! init and batches of ragged lengths: finite outputs, identity at init, disabling gives the base
//! model, merged equals unmerged, save → load equals before, and greedy generation with the KV
//! cache equals the argmax of full forwards.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use ftl::peft::lora::{LoraInit, LoraMethod, LoraOpts};
use ftl::peft::registry::LinearMethod;
use ftl::peft::target::{Pattern, Selector};
use ftl::peft::Kind;
use ftl::Model;

const MODELS: &[&str] = &[
    "llama-tiny",
    "qwen2-tiny",
    "mistral-tiny",
    "gpt2-tiny",
    "bert-tiny-cls",
    "bert-model",
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Lora,
    Dora,
    Ia3,
    Pfeiffer,
    Houlsby,
    Prefix,
    Prompt,
    /// a registry method, by name
    Registered(&'static str),
}

const METHODS: &[Method] = &[
    Method::Registered("loha"),
    Method::Registered("lokr"),
    Method::Registered("vera"),
    Method::Lora,
    Method::Dora,
    Method::Ia3,
    Method::Pfeiffer,
    Method::Houlsby,
    Method::Prefix,
    Method::Prompt,
];

fn lora_opts(dora: bool) -> LoraOpts {
    LoraOpts {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        dora,
        lora_bias: false,
        init: LoraInit::Kaiming,
    }
}

fn select(m: &mut Model, names: &[&str], kind: Kind) -> Vec<String> {
    let s = Selector::new(Pattern::list(names.iter().map(|s| s.to_string()).collect()));
    s.select(&m.module_paths(kind), "modules").unwrap()
}

/// Attaches `method` with the defaults for `m`'s architecture as adapter `a`; its name.
pub fn attach(m: &mut Model, method: Method) -> String {
    let mt = m.arch.model_type().to_string();
    let name = "a".to_string();
    match method {
        Method::Lora | Method::Dora => {
            let paths = select(m, &LoraMethod.default_targets(&mt).unwrap(), Kind::Linear);
            m.attach_registered(
                &name,
                &LoraMethod,
                &paths,
                &lora_opts(method == Method::Dora).config().unwrap(),
            )
            .unwrap();
        }
        Method::Ia3 => attach_registered(m, "ia3", &name, &serde_json::Map::new()),
        Method::Pfeiffer | Method::Houlsby => {
            use ftl::peft::bottleneck::BottleneckMethod;
            let style = if method == Method::Pfeiffer {
                "pfeiffer"
            } else {
                "houlsby"
            };
            let given = serde_json::json!({"style": style, "reduction": 4});
            let d = m.arch.dims();
            let cfg = ftl::peft::registry::block_config(
                &BottleneckMethod,
                given.as_object().unwrap(),
                d.hidden,
                d.layers,
                "test",
            )
            .unwrap();
            m.attach_block(&name, &BottleneckMethod, &cfg).unwrap();
        }
        Method::Prefix => attach_input(
            m,
            "prefix",
            &name,
            serde_json::json!({"num_virtual_tokens": 3}),
        ),
        Method::Registered(r) => {
            let given = serde_json::json!({"r": 2, "alpha": 4});
            attach_registered(m, r, &name, given.as_object().unwrap())
        }
        Method::Prompt => attach_input(
            m,
            "prompt",
            &name,
            serde_json::json!({"num_virtual_tokens": 3}),
        ),
    }
    name
}

/// A registry method on PEFT's default targets (and default `modules` options) for `m`.
fn attach_registered(
    m: &mut Model,
    method: &str,
    name: &str,
    given: &serde_json::Map<String, serde_json::Value>,
) {
    use ftl::peft::registry;
    let mt = m.arch.model_type().to_string();
    let method = registry::by_name(method).unwrap();
    let paths = select(m, &method.default_targets(&mt).unwrap(), Kind::Linear);
    let given = registry::pick_modules(method, given, &paths, &mt, "test").unwrap();
    let cfg = registry::config(method, &given, "test").unwrap();
    m.attach_registered(name, method, &paths, &cfg).unwrap();
}

/// A registry input method (prompt learning) with `given` settings.
fn attach_input(m: &mut Model, method: &str, name: &str, given: serde_json::Value) {
    use ftl::peft::registry::{self, Entry};
    let Some(Entry::Input(method)) = registry::entry(method) else {
        panic!("{method}")
    };
    let cfg = registry::input_config(method, given.as_object().unwrap(), "test").unwrap();
    m.attach_input(name, method, &cfg).unwrap();
}

/// Moves every adapter tensor away from its init.
pub fn randomise(m: &mut Model, name: &str, seed: u64) {
    for (i, (_, p)) in m.adapter_params(name).into_iter().enumerate() {
        let v = p.value();
        let noise = (Tensor::randn(0f32, 1.0, v.dims(), &Device::Cpu).unwrap() * 0.1).unwrap();
        let _ = (seed, i);
        p.set(&(v + noise).unwrap()).unwrap();
    }
}

/// A ragged batch: rows of different real lengths, right padding.
fn batch(vocab: usize) -> (Tensor, Tensor) {
    let lens = [9usize, 5, 2];
    let t = 9;
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (r, &l) in lens.iter().enumerate() {
        for j in 0..t {
            ids.push(if j < l {
                (5 + (r * 37 + j * 11) % (vocab - 5)) as i64
            } else {
                0
            });
            mask.push((j < l) as i64);
        }
    }
    (
        Tensor::from_vec(ids, (3, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (3, t), &Device::Cpu).unwrap(),
    )
}

fn out(m: &Model, ids: &Tensor, mask: &Tensor) -> Tensor {
    m.forward(ids, Some(mask)).unwrap()
}

fn finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn every_model_and_method() {
    let tmp = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for &mname in MODELS {
        let dir = fixture(mname);
        let base = load(&dir);
        let (ids, mask) = batch(base.arch.dims().vocab);
        let l0 = out(&base, &ids, &mask);
        for &method in METHODS {
            let case = format!("{mname}/{method:?}");
            let mut m = load(&dir);
            let name = attach(&mut m, method);
            let init = out(&m, &ids, &mask);
            if !matches!(method, Method::Prefix | Method::Prompt) {
                assert!(
                    rel(&init, &l0) < 1e-6,
                    "{case}: not the identity at init: {}",
                    rel(&init, &l0)
                );
            }
            randomise(&mut m, &name, 1);
            let l1 = out(&m, &ids, &mask);
            assert!(finite(&l1), "{case}: non-finite output");
            if l1.dims() == l0.dims() {
                assert!(
                    rel(&l1, &l0) > 1e-4,
                    "{case}: the randomised adapter has no effect"
                );
            }
            m.enabled = false;
            assert!(
                rel(&out(&m, &ids, &mask), &l0) < 1e-6,
                "{case}: disabled adapters are not the base model"
            );
            m.enabled = true;
            assert!(
                rel(&out(&m, &ids, &mask), &l1) < 1e-7,
                "{case}: enabling again changed the output"
            );

            // save → load into a fresh model
            let ad = tmp.path().join(format!("{mname}-{method:?}"));
            ftl::peft::io::save_adapter(&mut m, &ad, &name).unwrap();
            let mut fresh = load(&dir);
            ftl::peft::io::load_adapter(&mut fresh, &ad, &Default::default())
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(
                rel(&out(&fresh, &ids, &mask), &l1) < 1e-6,
                "{case}: save/load changed the output"
            );

            // greedy generation: with the cache = argmax of full forwards
            if m.task() == ftl::model::Task::CausalLm {
                let prompt: Vec<u32> = ids
                    .get(0)
                    .unwrap()
                    .to_dtype(DType::U32)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let o = ftl::model::generate::GenOpts {
                    max_tokens: 6,
                    ..Default::default()
                };
                let cached = m.generate_ids(&prompt[..4], &o, true, |_| true).unwrap();
                let full = m.generate_ids(&prompt[..4], &o, false, |_| true).unwrap();
                assert_eq!(
                    cached, full,
                    "{case}: KV-cache generation differs from full forwards"
                );
            }

            // merge → same output; the merged model saved and reloaded → same output
            if matches!(
                method,
                Method::Lora | Method::Dora | Method::Ia3 | Method::Registered(_)
            ) {
                m.merge().unwrap();
                let lm = out(&m, &ids, &mask);
                assert!(
                    rel(&lm, &l1) < 1e-5,
                    "{case}: merged differs: {}",
                    rel(&lm, &l1)
                );
                let md = tmp.path().join(format!("{mname}-{method:?}-merged"));
                m.save(&md).unwrap();
                let back = load(&md);
                assert!(
                    rel(&out(&back, &ids, &mask), &l1) < 1e-5,
                    "{case}: saved merged model differs"
                );
            }
            report.push(case);
        }
    }
    eprintln!("{} cases", report.len());
    assert_eq!(report.len(), MODELS.len() * METHODS.len());
}

#[test]
fn pissa_init_keeps_the_output() {
    let dir = fixture("llama-tiny");
    let base = load(&dir);
    let (ids, mask) = batch(512);
    let l0 = out(&base, &ids, &mask);
    let mut m = load(&dir);
    let paths = select(&mut m, &["q_proj", "v_proj"], Kind::Linear);
    let o = LoraOpts {
        init: LoraInit::Pissa,
        ..lora_opts(false)
    };
    m.attach_registered("p", &LoraMethod, &paths, &o.config().unwrap())
        .unwrap();
    assert!(rel(&out(&m, &ids, &mask), &l0) < 1e-5);
    // the residual weight is W − s·BA: the adapter holds the principal directions
    let q = m
        .base_params()
        .into_iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .1;
    let mut fresh = load(&dir);
    let q0 = fresh
        .base_params()
        .into_iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .1;
    assert!(rel(&q.value(), &q0.value()) > 1e-3);
}

/// PEFT's `from_pretrained` runs PiSSA's decomposition again when it reads a PiSSA adapter (the
/// base weights become their residual before the trained factors are read): so does ftl, and a
/// trained PiSSA adapter read back gives the logits it was saved with (PEFT reads ftl's:
/// peft_reads_ftl.py).
#[test]
fn pissa_adapter_reads_back_onto_its_residual() {
    let dir = fixture("llama-tiny");
    let (ids, mask) = batch(512);
    let mut m = load(&dir);
    let paths = select(&mut m, &["q_proj", "v_proj"], Kind::Linear);
    let o = LoraOpts {
        init: LoraInit::Pissa,
        ..lora_opts(false)
    };
    m.attach_registered("p", &LoraMethod, &paths, &o.config().unwrap())
        .unwrap();
    randomise(&mut m, "p", 3);
    let want = out(&m, &ids, &mask);
    let tmp = tempfile::tempdir().unwrap();
    ftl::peft::io::save_adapter(&mut m, tmp.path(), "p").unwrap();
    let cfg = std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap();
    assert!(cfg.contains(r#""init_lora_weights": "pissa""#), "{cfg}");
    let mut fresh = load(&dir);
    ftl::peft::io::load_adapter(&mut fresh, tmp.path(), &Default::default()).unwrap();
    let got = out(&fresh, &ids, &mask);
    assert!(rel(&got, &want) < 1e-5, "{}", rel(&got, &want));
    // on the original weights the trained factors give other logits
    let base = load(&dir);
    assert!(rel(&want, &out(&base, &ids, &mask)) > 1e-3);
}

#[test]
fn state_dict_names_and_round_trip() {
    let mut m = load(&fixture("llama-tiny"));
    let paths = select(&mut m, &["q_proj"], Kind::Linear);
    m.attach_registered(
        "default",
        &LoraMethod,
        &paths,
        &lora_opts(true).config().unwrap(),
    )
    .unwrap();
    let names: Vec<String> = m
        .adapter_params("default")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"model.layers.0.self_attn.q_proj.lora_A.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight".to_string())
    );
    let base: Vec<String> = m.base_params().into_iter().map(|(n, _)| n).collect();
    assert!(base.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(base.contains(&"lm_head.weight".to_string()));
    // a tied weight appears once, under the embedding's name
    let mut g = load(&fixture("gpt2-tiny"));
    let gb: Vec<String> = g.base_params().into_iter().map(|(n, _)| n).collect();
    assert!(gb.contains(&"transformer.wte.weight".to_string()));
    assert!(!gb.iter().any(|n| n.starts_with("lm_head")), "{gb:?}");
}
