//! Float32 accuracy on a real deep checkpoint (30-layer SmolLM2-135M): ftl's initial loss and its
//! LoRA updates after 1 and 3 AdamW steps, against a float64 PyTorch + PEFT run, must deviate no
//! more than PyTorch's own float32 run does (tests/fixtures/ref/smollm2-lora-deep, made by
//! tests/fixtures/gen/gen_deep_ref.py), on the fused CPU path and on the device path.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use ftl::data::Dataset;
use ftl::model::Param;
use ftl::ops::{set_path, Path as OpPath};
use ftl::train::{self, optim, Flow, Hook, StepInfo, TrainOpts};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The deep model: the GGUF that scripts/fetch-models.sh fetches (transformers dequantised it to
/// the weights the reference was made with), or None, with a message, when it is absent.
pub fn deep_model_path() -> Option<PathBuf> {
    crate::gguf::smollm2()
}

fn reference() -> PathBuf {
    fixtures().join("ref/smollm2-lora-deep")
}

/// The parameter values after every optimizer step, and the losses before them.
struct Snapshots {
    params: Vec<(String, Param)>,
    values: Vec<BTreeMap<String, Tensor>>,
    losses: Vec<f64>,
}

impl Hook for Snapshots {
    fn on_step(&mut self, s: &StepInfo) -> ftl::Result<Flow> {
        self.losses.push(s.loss);
        let snap = self
            .params
            .iter()
            .map(|(n, p)| (n.clone(), p.value().copy().unwrap()))
            .collect();
        self.values.push(snap);
        Ok(Flow::Continue)
    }
}

/// Deviation from the float64 truth: |initial loss error| and, after 1 and 3 steps, the worst
/// tensor's relative error of the update (and which tensor).
#[derive(Debug)]
pub struct Deviation {
    pub loss0: f64,
    pub update1: (f64, String),
    pub update3: (f64, String),
}

fn worst(
    got: &BTreeMap<String, Tensor>,
    init: &BTreeMap<String, Tensor>,
    e: &Expected,
    k: usize,
) -> (f64, String) {
    let mut w = (0.0, String::new());
    for (n, v) in got {
        let want = e
            .get(&format!("update{k}.{n}"))
            .to_dtype(DType::F32)
            .unwrap();
        let u = (v - &init[n]).unwrap().to_device(&Device::Cpu).unwrap();
        let err = rel(&u, &want) as f64;
        if err > w.0 {
            w = (err, n.clone());
        }
    }
    w
}

/// Trains the reference's setup for its steps on the current op path, in f32 on `dev`; ftl's
/// deviation.
pub fn deviation(model_dir: &Path, dev: &Device) -> Deviation {
    let dir = reference();
    let e = expected(&dir);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let lo = ftl::model::hub::LoadOpts {
        dtype: Some(DType::F32),
        device: dev.clone(),
        ..Default::default()
    };
    let mut m = ftl::model::hub::load(model_dir, &lo)
        .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let o = ftl::peft::io::LoadAdapterOpts {
        name: Some("default".into()),
        trainable: true,
    };
    ftl::peft::io::load_adapter(&mut m, &dir.join("adapter_init"), &o).unwrap();
    let params = m.trainable_params();
    assert_eq!(params.len(), 30 * 4 * 2, "trainable LoRA tensors");
    let init: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(n, p)| (n.clone(), p.value().copy().unwrap()))
        .collect();
    let opt = &meta["optimizer"];
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let opts = TrainOpts {
        max_steps: Some(steps),
        batch_size: meta["batch_size"].as_u64().unwrap() as usize,
        lr: opt["lr"].as_f64().unwrap(),
        optimizer: optim::OptimOpts {
            kind: optim::Kind::AdamW {
                beta1: opt["betas"][0].as_f64().unwrap(),
                beta2: opt["betas"][1].as_f64().unwrap(),
                eps: opt["eps"].as_f64().unwrap(),
            },
            weight_decay: opt["weight_decay"].as_f64().unwrap(),
        },
        shuffle: false,
        ..Default::default()
    };
    let data = Dataset::from_examples(examples(&e), "deep").unwrap();
    let mut snaps = Snapshots {
        params,
        values: Vec::new(),
        losses: Vec::new(),
    };
    let model = Arc::new(Mutex::new(m));
    let res = train::train(&model, &data, &opts, None, &mut [&mut snaps]).unwrap();
    assert_eq!(res.steps, steps);
    let loss0 = meta["losses_f64"][0].as_f64().unwrap();
    Deviation {
        loss0: (snaps.losses[0] - loss0).abs(),
        update1: worst(&snaps.values[0], &init, &e, 1),
        update3: worst(&snaps.values[steps - 1], &init, &e, 3),
    }
}

/// PyTorch float32's deviation, as the generator measured it.
pub fn torch_deviation() -> Deviation {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(reference().join("reference.json")).unwrap())
            .unwrap();
    let t = &meta["torch_f32"];
    let w = |k: usize| {
        (
            t[format!("update{k}_worst")].as_f64().unwrap(),
            t[format!("update{k}_worst_tensor")]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    Deviation {
        loss0: t["loss0_abs_err"].as_f64().unwrap(),
        update1: w(1),
        update3: w(3),
    }
}

/// ftl's float32 error may be at most this multiple of PyTorch float32's.
const SLACK: f64 = 1.5;

fn check(what: &str, got: &Deviation) {
    let torch = torch_deviation();
    eprintln!("{what}: ftl {got:?}\n{what}: torch {torch:?}");
    for (name, g, t) in [
        ("initial loss", got.loss0, torch.loss0),
        ("update after 1 step", got.update1.0, torch.update1.0),
        ("update after 3 steps", got.update3.0, torch.update3.0),
    ] {
        assert!(
            g <= SLACK * t,
            "{what}: {name}: ftl's float32 error {g:.3e} is more than {SLACK}x PyTorch's {t:.3e}"
        );
    }
}

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        set_path(OpPath::Auto);
    }
}

#[test]
fn deep_model_f32_error_is_no_worse_than_pytorch_cpu_path() {
    let Some(dir) = deep_model_path() else {
        return;
    };
    let _reset = Reset;
    set_path(OpPath::Auto);
    check("fused CPU path", &deviation(&dir, &Device::Cpu));
}

#[test]
fn deep_model_f32_error_is_no_worse_than_pytorch_device_path() {
    let Some(dir) = deep_model_path() else {
        return;
    };
    let _reset = Reset;
    set_path(OpPath::Device);
    check("device path", &deviation(&dir, &Device::Cpu));
}

/// The GPU's f32 path (ftl's CUDA kernels, cuBLAS without TF32); skipped without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn deep_model_f32_error_is_no_worse_than_pytorch_gpu() {
    let Some(dir) = deep_model_path() else {
        return;
    };
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    // loading a bf16 model earlier in this process turns TF32 on for every f32 product
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    check("GPU f32", &deviation(&dir, &dev));
}
