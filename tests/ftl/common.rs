//! Shared helpers: fixture locations, expected tensors, relative errors.

use candle_core::{DType, Device, Tensor};
use ftl::st::StFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture directory by name, from `hf/` (the shared set) or `ref/` (ours).
pub fn fixture(name: &str) -> PathBuf {
    for sub in ["hf", "ref"] {
        let p = fixtures().join(sub).join(name);
        if p.is_dir() {
            return p;
        }
    }
    panic!("no fixture {name}")
}

pub struct Expected {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: BTreeMap<String, String>,
}

impl Expected {
    pub fn get(&self, k: &str) -> &Tensor {
        self.tensors
            .get(k)
            .unwrap_or_else(|| panic!("expected.safetensors has no {k}"))
    }
    pub fn opt(&self, k: &str) -> Option<&Tensor> {
        self.tensors.get(k)
    }
    /// A metadata value, JSON-decoded when it is a JSON string.
    pub fn meta_str(&self, k: &str) -> Option<String> {
        let raw = self.meta.get(k)?;
        Some(match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::String(s)) => s,
            _ => raw.clone(),
        })
    }
}

pub fn expected(dir: &Path) -> Expected {
    let f = StFile::open(&dir.join("expected.safetensors")).unwrap();
    Expected {
        tensors: f.load_all(&Device::Cpu).unwrap(),
        meta: f.metadata.clone().into_iter().collect(),
    }
}

/// ‖a − b‖ / ‖b‖ over whole tensors.
pub fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let d: f32 = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let n: f32 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    (d / n.max(1e-30)).sqrt()
}

pub fn load(dir: &Path) -> ftl::Model {
    ftl::model::hub::load(dir, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Logits of `m` on the fixture's inputs (token types when present).
pub fn logits(m: &ftl::Model, e: &Expected) -> Tensor {
    let ctx = m.ctx(false, 0);
    m.forward_with(
        e.get("input_ids"),
        Some(e.get("attention_mask")),
        e.opt("token_type_ids"),
        &ctx,
        None,
    )
    .unwrap()
}

/// The fixture's batch as training examples: each row cut at its attention mask, with `labels`.
pub fn examples(e: &Expected) -> Vec<ftl::data::Example> {
    let rows = |k: &str| {
        e.get(k)
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap()
    };
    let (ids, mask, labels) = (rows("input_ids"), rows("attention_mask"), rows("labels"));
    ids.iter()
        .enumerate()
        .map(|(r, row)| {
            let len = mask[r].iter().filter(|&&x| x == 1).count();
            ftl::data::Example {
                ids: row[..len].iter().map(|&x| x as u32).collect(),
                labels: labels[r][..len].to_vec(),
                ..Default::default()
            }
        })
        .collect()
}

/// A real checkpoint under `models/` (`scripts/fetch-models.sh` fetches them), or None with a
/// SKIPPED line saying so.
pub fn real_model(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (run scripts/fetch-models.sh)",
            p.display()
        );
        None
    }
}
