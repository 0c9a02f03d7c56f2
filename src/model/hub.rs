//! Loading models (GGUF files go to `gguf`) and HF model directories: config.json, `model.safetensors` or a sharded index, and
//! `tokenizer.json`; and the weight sources the architectures build from (files or random init).

use super::config::Cfg;
use super::{Model, Param};
use crate::error::{Error, Result};
use crate::st::{read_json, StFile};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How HF initialises a tensor that is not loaded (`_init_weights`).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// Where an architecture's tensors come from.
pub trait Source {
    /// The tensor `name`, which must have `shape`.
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;
    /// Whether `name` exists (for optional tensors).
    fn has(&self, name: &str) -> bool;
    /// A frozen parameter.
    fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        Ok(Param::frozen(self.get(name, shape, init)?))
    }
    /// Where the tensors come from, for messages.
    fn origin(&self) -> String;
    /// How the file stores `name` (its dtype there, before conversion), when it says.
    fn stored_dtype(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Each weight's dtype in the file, for a shapes-only model (what `ftl inspect` shows).
pub fn record_stored_dtypes(m: &mut Model, src: &dyn Source) {
    m.stored_dtypes = m
        .handles()
        .into_iter()
        .filter_map(|(path, suffix, _)| {
            let name = format!("{path}.{suffix}");
            src.stored_dtype(&name).map(|d| (name, d.to_lowercase()))
        })
        .collect();
}

/// Loaded base tensors kept across runs (`ftl watch`): a rerun that loads the same model finds
/// them in memory. Per file, keyed by its identity (size, mtime): a changed file drops its
/// tensors. Frozen tensors are never written in place, so sharing them is safe. What is built
/// from a whole file (a GGUF header, a tokenizer) is kept the same way, under a name.
#[derive(Default)]
struct CachedFile {
    identity: String,
    /// "tensor|dtype|device" → the tensor, and whether a run used it since the last sweep
    tensors: HashMap<String, (Tensor, bool)>,
    /// what → the value built from the file, and whether a run used it since the last sweep
    derived: HashMap<&'static str, (Arc<dyn std::any::Any + Send + Sync>, bool)>,
}

static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<PathBuf, CachedFile>>> =
    std::sync::OnceLock::new();
/// Drops the cached tensors and values no run used since the last sweep (`crate::reuse::sweep`).
pub fn sweep_weights() {
    let Some(cache) = CACHE.get() else { return };
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    for f in c.values_mut() {
        f.tensors.retain(|_, (_, used)| std::mem::take(used));
        f.derived.retain(|_, (_, used)| std::mem::take(used));
    }
    c.retain(|_, f| !f.tensors.is_empty() || !f.derived.is_empty());
}

/// A file's identity for the cache: its size and modification time; `None` when the cache is
/// off or the file cannot be stat'ed (then nothing is cached).
fn identity(path: &Path) -> Option<String> {
    if !crate::reuse::on() {
        return None;
    }
    let md = std::fs::metadata(path).ok()?;
    let mtime = md
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}|{mtime}", md.len()))
}

/// Runs `f` on `path`'s cache entry, first emptied when the file's identity changed.
fn with_entry<R>(path: &Path, identity: &str, f: impl FnOnce(&mut CachedFile) -> R) -> R {
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    let e = c.entry(path.to_path_buf()).or_default();
    if e.identity != identity {
        *e = CachedFile {
            identity: identity.to_string(),
            ..Default::default()
        };
    }
    f(e)
}

/// `load()` of tensor `name` of file `path`, through the cross-run cache when it is on.
pub(crate) fn cached(
    path: &Path,
    name: &str,
    dtype: DType,
    device: &Device,
    load: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let Some(id) = identity(path) else {
        return load();
    };
    let key = format!("{name}|{dtype:?}|{:?}", device.location());
    let hit = with_entry(path, &id, |f| {
        f.tensors.get_mut(&key).map(|(t, used)| {
            *used = true;
            t.clone()
        })
    });
    if let Some(t) = hit {
        return Ok(t);
    }
    let t = load()?;
    with_entry(path, &id, |f| f.tensors.insert(key, (t.clone(), true)));
    Ok(t)
}

/// `build()` of what file `path` holds as a whole (`what` names it: "gguf header",
/// "tokenizer"), through the cross-run cache when it is on.
pub(crate) fn cached_value<T: Send + Sync + 'static>(
    path: &Path,
    what: &'static str,
    build: impl FnOnce() -> Result<Arc<T>>,
) -> Result<Arc<T>> {
    let Some(id) = identity(path) else {
        return build();
    };
    let hit = with_entry(path, &id, |f| {
        f.derived.get_mut(what).and_then(|(v, used)| {
            *used = true;
            v.clone().downcast::<T>().ok()
        })
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v = build()?;
    with_entry(path, &id, |f| f.derived.insert(what, (v.clone(), true)));
    Ok(v)
}

/// The safetensors files of a model directory.
pub struct Weights {
    pub dir: PathBuf,
    files: Vec<StFile>,
    index: HashMap<String, usize>,
    pub dtype: DType,
    pub device: Device,
    pub shapes_only: bool,
}

impl Weights {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let indexed = dir.join("model.safetensors.index.json");
        let files: Vec<StFile> = if single.exists() {
            vec![StFile::open(&single)?]
        } else if indexed.exists() {
            let idx = read_json(&indexed)?;
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(&indexed, "weight_map", "missing or not an object"))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            shards
                .iter()
                .map(|s| StFile::open(&dir.join(s)))
                .collect::<Result<_>>()?
        } else if dir.join("pytorch_model.bin").exists() {
            return Err(Error::file(
                dir,
                "only pytorch_model.bin found: ftl reads safetensors (convert with transformers' save_pretrained(safe_serialization=True))",
            ));
        } else {
            return Err(Error::file(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for n in &f.names {
                index.insert(n.clone(), i);
            }
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            files,
            index,
            dtype,
            device: device.clone(),
            shapes_only: false,
        })
    }

    /// The stored name for `name`: as is, or with old spellings (`gamma`/`beta` for
    /// LayerNorm, missing or extra top-level prefix).
    fn resolve(&self, name: &str) -> Option<String> {
        if self.index.contains_key(name) {
            return Some(name.to_string());
        }
        let mut cands = Vec::new();
        if let Some(s) = name.strip_suffix(".weight") {
            cands.push(format!("{s}.gamma"));
        }
        if let Some(s) = name.strip_suffix(".bias") {
            cands.push(format!("{s}.beta"));
        }
        let base: Vec<String> = std::iter::once(name.to_string())
            .chain(cands.clone())
            .collect();
        for b in &base {
            for p in ["transformer.", "bert.", "model."] {
                match b.strip_prefix(p) {
                    Some(s) => cands.push(s.to_string()),
                    // a headless model read from a checkpoint with a head
                    None => cands.push(format!("{p}{b}")),
                }
            }
        }
        cands.into_iter().find(|c| self.index.contains_key(c))
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    fn file_of(&self, name: &str) -> &StFile {
        &self.files[self.index[name]]
    }
}

impl Source for Weights {
    fn get(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let Some(stored) = self.resolve(name) else {
            let path = if self.files.len() == 1 {
                self.files[0].path.clone()
            } else {
                self.dir.join("model.safetensors.index.json")
            };
            return Err(Error::MissingTensor {
                path,
                name: name.to_string(),
            });
        };
        let f = self.file_of(&stored);
        let got = f.shape(&stored)?;
        if got != shape {
            return Err(Error::Shape {
                path: f.path.clone(),
                name: stored,
                got,
                want: shape.to_vec(),
            });
        }
        if self.shapes_only {
            return stand_in(shape, self.dtype, &self.device);
        }
        cached(&f.path, &stored, self.dtype, &self.device, || {
            f.load(&stored, &self.device, Some(self.dtype))
        })
    }

    fn has(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn origin(&self) -> String {
        self.dir.display().to_string()
    }

    fn stored_dtype(&self, name: &str) -> Option<String> {
        let s = self.resolve(name)?;
        self.file_of(&s).stored_dtype(&s)
    }
}

/// A plan's weight: one zero broadcast to the shape, so a plan of a large model allocates (and
/// the allocator touches) nothing per weight.
pub fn stand_in(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((), dtype, device)?.broadcast_as(shape)?)
}

/// Random initialisation, as HF's `_init_weights` (for `ftl.new`).
pub struct RandomInit {
    pub seed: u64,
    pub dtype: DType,
    pub device: Device,
}

impl Source for RandomInit {
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        super::param::ensure_fits(name, &[shape])?;
        let n: usize = shape.iter().product();
        let v = match init {
            Init::Ones => vec![1f32; n],
            Init::Zeros => vec![0f32; n],
            Init::Normal(std) => {
                // in parallel chunks, each with its own generator: deterministic and fast
                use rayon::prelude::*;
                const CHUNK: usize = 1 << 16;
                let mut v = vec![0f32; n];
                v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
                    let mut rng = crate::rng::rng_for(self.seed, &format!("{name}#{i}"));
                    c.copy_from_slice(&crate::rng::normal(&mut rng, c.len(), std as f32));
                });
                v
            }
        };
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?)
    }

    fn has(&self, _name: &str) -> bool {
        false
    }

    fn origin(&self) -> String {
        "random init".into()
    }
}

/// A checkpoint with a new head: the weights it lacks under `prefixes` (a classifier the base
/// model never had) are initialised as HF's `_init_weights` does, as `from_pretrained(...,
/// num_labels=)` does with the "newly initialized" warning.
pub struct NewHead<'a> {
    pub inner: &'a dyn Source,
    pub random: &'a dyn Source,
    pub prefixes: &'static [&'static str],
    /// the names that were initialised, for the warning
    pub filled: std::cell::RefCell<Vec<String>>,
}

impl NewHead<'_> {
    fn fills(&self, name: &str) -> bool {
        !self.inner.has(name) && self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

impl Source for NewHead<'_> {
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if self.fills(name) {
            self.filled.borrow_mut().push(name.to_string());
            return self.random.get(name, shape, init);
        }
        self.inner.get(name, shape, init)
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name) || self.fills(name)
    }

    fn origin(&self) -> String {
        self.inner.origin()
    }

    fn stored_dtype(&self, name: &str) -> Option<String> {
        self.inner.stored_dtype(name)
    }
}

/// Whether this is the first new head from `dir` with `seed` in this process (a comparison loads
/// the same checkpoint once per method; one warning says it).
fn warn_once(dir: &Path, seed: u64) -> bool {
    static SEEN: std::sync::Mutex<Vec<(PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let key = (dir.to_path_buf(), seed);
    if seen.contains(&key) {
        return false;
    }
    seen.push(key);
    true
}

/// `config` as a sequence classifier with `n` labels (HF's `num_labels=`): the label maps are
/// kept when they have `n` entries, else replaced by `LABEL_i`.
fn with_labels(config: &mut serde_json::Value, cfg_path: &Path, n: usize) -> Result<()> {
    let mt = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if mt != "bert" {
        return Err(Error::config(
            cfg_path,
            "model_type",
            format!("num_labels= makes a sequence classifier, which ftl has for bert; this model is `{mt}`"),
        ));
    }
    if n == 0 {
        return Err(Error::config(cfg_path, "num_labels", "must be at least 1"));
    }
    let o = config
        .as_object_mut()
        .ok_or_else(|| Error::config(cfg_path, "config", "not a JSON object"))?;
    let kept = o
        .get("id2label")
        .and_then(|m| m.as_object())
        .is_some_and(|m| m.len() == n);
    if !kept {
        let id2label: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("LABEL_{i}"), i.into())).collect();
        o.insert("id2label".into(), id2label.into());
        o.insert("label2id".into(), label2id.into());
    }
    o.insert("num_labels".into(), n.into());
    o.insert(
        "architectures".into(),
        serde_json::json!(["BertForSequenceClassification"]),
    );
    Ok(())
}

/// Stand-ins of the requested shapes: plan mode's random initialisation.
pub struct Shapes {
    pub dtype: DType,
    pub device: Device,
}

impl Source for Shapes {
    fn get(&self, _name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        stand_in(shape, self.dtype, &self.device)
    }

    fn has(&self, _name: &str) -> bool {
        false
    }

    fn origin(&self) -> String {
        "shapes only".into()
    }
}

/// `ftl.load` options.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub dtype: Option<DType>,
    pub device: Device,
    /// false: load a classifier checkpoint as its bare encoder (HF's `AutoModel`)
    pub head: bool,
    /// plan mode (`ftl check`, `ftl inspect`): read the files' headers only; every weight is a
    /// zero tensor of its stored shape (zeroed pages are mapped lazily, so this costs no time)
    pub shapes_only: bool,
    /// a sequence classifier with this many labels (a new head where the checkpoint has none)
    pub num_labels: Option<usize>,
    /// seeds the weights the checkpoint lacks
    pub seed: u64,
}

impl Default for LoadOpts {
    fn default() -> Self {
        LoadOpts {
            dtype: None,
            device: Device::Cpu,
            head: true,
            shapes_only: false,
            num_labels: None,
            seed: 0,
        }
    }
}

pub const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "gpt2", "bert"];

/// Loads a model: an HF model directory or a GGUF file.
pub fn load(dir: &Path, opts: &LoadOpts) -> Result<Model> {
    if super::gguf::is_gguf(dir) {
        return super::gguf::load(dir, opts);
    }
    if dir.is_file() {
        return Err(Error::file(
            dir,
            "not a model: ftl.load takes an HF model directory (config.json, model.safetensors) or a GGUF file",
        ));
    }
    if !dir.is_dir() {
        return Err(Error::file(dir, "no such model directory or GGUF file"));
    }
    let cfg_path = dir.join("config.json");
    let mut config = read_json(&cfg_path)?;
    let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    });
    let mut weights = Weights::open(dir, dtype, &opts.device)?;
    weights.shapes_only = opts.shapes_only;
    let mut m = match opts.num_labels {
        Some(n) => {
            with_labels(&mut config, &cfg_path, n)?;
            let random: Box<dyn Source> = if opts.shapes_only {
                Box::new(Shapes {
                    dtype,
                    device: opts.device.clone(),
                })
            } else {
                Box::new(RandomInit {
                    seed: opts.seed,
                    dtype,
                    device: opts.device.clone(),
                })
            };
            let src = NewHead {
                inner: &weights,
                random: random.as_ref(),
                prefixes: &["classifier.", "bert.pooler.", "pooler."],
                filled: Default::default(),
            };
            let m = build(&config, &cfg_path, &src, dtype, &opts.device, true)?;
            let filled = src.filled.borrow();
            if !filled.is_empty() && warn_once(dir, opts.seed) {
                tracing::warn!(
                    "{}: newly initialized (seed {}), train them: {}",
                    dir.display(),
                    opts.seed,
                    filled.join(", ")
                );
            }
            m
        }
        None => build(&config, &cfg_path, &weights, dtype, &opts.device, opts.head)?,
    };
    m.dir = Some(dir.to_path_buf());
    if opts.shapes_only {
        record_stored_dtypes(&mut m, &weights);
    }
    let tok = dir.join("tokenizer.json");
    let tc = dir.join("tokenizer_config.json");
    if tok.exists() {
        m.tokenizer = Some(crate::tokenizer::Tokenizer::from_dir(dir)?);
    } else if tc.exists()
        && read_json(&tc)?
            .get("tokenizer_class")
            .and_then(|v| v.as_str())
            == Some(crate::tokenizer::BYTES_CLASS)
    {
        m.tokenizer = Some(crate::tokenizer::Tokenizer::bytes());
    }
    Ok(m)
}

/// Builds a model of `config`'s `model_type` from `src`.
pub fn build(
    config: &serde_json::Value,
    cfg_path: &Path,
    src: &dyn Source,
    dtype: DType,
    device: &Device,
    head: bool,
) -> Result<Model> {
    let cfg = Cfg::new(config, cfg_path);
    let mt = cfg.str_or("model_type", "")?;
    let arch: Box<dyn super::Arch> = match mt {
        "llama" | "mistral" | "qwen2" => Box::new(super::llama::Llama::load(&cfg, src)?),
        "gpt2" => Box::new(super::gpt2::Gpt2::load(&cfg, src)?),
        "bert" => Box::new(super::bert::Bert::load(&cfg, src, head)?),
        "" => return Err(Error::config(cfg_path, "model_type", "missing")),
        other => {
            return Err(Error::config(
                cfg_path,
                "model_type",
                format!(
                    "unsupported model_type `{other}` (supported: {})",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    };
    if device.is_cuda() && matches!(dtype, DType::BF16 | DType::F16) {
        // a half-precision model: f32 products (attention scores, f32 adapters) may use TF32
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    Ok(Model::new(arch, config.clone(), device.clone(), dtype))
}
