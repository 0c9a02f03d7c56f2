//! Models: a tree of injectable layers per architecture behind the `Arch` trait, plus the
//! model-level state every architecture shares (tokenizer, active adapter names, input adapters,
//! and what other modules keep with a model, which this module does not look into).

pub mod bert;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod hf_cache;
pub mod hub;
pub mod layers;
pub mod llama;
pub mod param;
pub mod save;

pub use param::Param;

use crate::error::{Error, Result};

/// How a method acts on the model's input as a whole: virtual tokens before the input embeddings
/// (prompt tuning) or per-layer key/value prefixes (prefix tuning). `peft/` implements it.
pub trait InputAdapter: Send + Sync {
    /// how many virtual positions it adds
    fn tokens(&self) -> usize;
    /// `[b, tokens, hidden]` placed before the input embeddings
    fn embeddings(&self, b: usize, ctx: &Ctx) -> Result<Option<Tensor>> {
        let _ = (b, ctx);
        Ok(None)
    }
    /// per layer `(k, v)`, each `[b, tokens, kv_heads, head_dim]`, before the input's
    fn prefix_kv(
        &self,
        b: usize,
        dims: &Dims,
        dtype: DType,
        ctx: &Ctx,
    ) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let _ = (b, dims, dtype, ctx);
        Ok(None)
    }
    /// `(name, param)` under PEFT's names (`prompt_encoder.embedding.weight`)
    fn params(&self) -> Vec<(String, Param)>;
    /// what PEFT saves as `prompt_embeddings`
    fn saved_embeddings(&self, ctx: &Ctx) -> Result<Tensor>;
}
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor, Var};
use layers::{Embedding, Linear, Norm};
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::Mutex;

/// The CUDA device `ordinal`, one per process: ftl runs everything on that device's one stream, so
/// candle's per-allocation CUDA events (multi-stream safety, a cost on every op) are turned off.
pub fn cuda_device(ordinal: usize) -> candle_core::Result<Device> {
    static DEVICES: std::sync::OnceLock<Mutex<std::collections::HashMap<usize, Device>>> =
        std::sync::OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap();
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &d {
        // SAFETY: one stream per device in this process (the map above), so no cross-stream use
        unsafe { c.disable_event_tracking() }
    }
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// While alive, candle reuses device copies of the small layout vectors every CUDA op uploads,
/// instead of copying them from pageable host memory each time (which waits for the GPU).
pub struct SmallUploads(#[allow(dead_code)] Option<Box<dyn std::any::Any>>);

pub fn keep_small_uploads(dev: &Device) -> SmallUploads {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => SmallUploads(Some(Box::new(d.enable_cuda_graph_htod_cache()))),
        _ => SmallUploads(None),
    }
}

/// What a forward pass runs under: the active adapters, train mode (dropout) and its randomness.
pub struct Ctx {
    pub active: Vec<String>,
    pub enabled: bool,
    pub train: bool,
    seed: u64,
    rng: Mutex<rand::rngs::StdRng>,
    /// Segment boundaries between layers (training), so the backward pass can run one layer at a
    /// time and free each layer's activations as soon as it is done.
    segments: Option<Mutex<Vec<Segment>>>,
    /// Activation checkpointing: keep only each layer's input, recompute the layer in backward.
    checkpoint: bool,
    /// Recomputing one segment: stop at boundary `.0`, continuing from `.1` at the one before.
    replay: Option<(usize, Option<Tensor>)>,
    /// Boundaries passed so far in this forward pass.
    count: std::sync::atomic::AtomicUsize,
}

/// One layer boundary of a training forward pass.
pub struct Segment {
    /// which boundary (0: after the embeddings, one per layer, the last before the head)
    pub idx: usize,
    /// the fresh leaf the forward pass continued from, when gradients flow below it
    pub var: Option<Var>,
    /// the value the forward pass continued from (the leaf's tensor, or a detached one)
    pub input: Tensor,
    /// the tensor that value stands for, with its graph (absent when checkpointing)
    pub out: Option<Tensor>,
    /// how much of the device path's tape (`ops::tape`) the ops below this boundary fill
    pub mark: usize,
}

/// What a layer loop does at a boundary (see `Ctx::layer`).
pub enum Flow {
    /// run the next layer on this input
    Run(Tensor),
    /// skip the next layer (recomputing a later segment)
    Skip,
    /// return this hidden state now (the end of a recomputed segment)
    Stop(Tensor),
}

impl Ctx {
    pub fn new(active: Vec<String>, enabled: bool, train: bool, seed: u64) -> Self {
        Ctx {
            active,
            enabled,
            train,
            seed,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            segments: None,
            checkpoint: false,
            replay: None,
            count: Default::default(),
        }
    }

    /// Records layer boundaries (see `layer`) in this forward pass.
    pub fn segmented(mut self) -> Self {
        self.segments = Some(Mutex::new(Vec::new()));
        self
    }

    /// With segments, keep only each boundary's value: the layers are recomputed in backward.
    pub fn checkpointed(mut self, on: bool) -> Self {
        self.checkpoint = on;
        self
    }

    pub fn is_checkpointed(&self) -> bool {
        self.checkpoint && self.segments.is_some()
    }

    /// A context that recomputes the segment ending at boundary `idx` of a checkpointed pass
    /// (same seed, so the same dropout masks), from `input`, the value at boundary `idx - 1`.
    pub fn replay(&self, idx: usize, input: Option<Tensor>) -> Ctx {
        let mut c = Ctx::new(self.active.clone(), self.enabled, self.train, self.seed);
        c.replay = Some((idx, input));
        c
    }

    /// At a layer boundary (before each layer and before the head). In a segmented pass the
    /// graph is cut here: the next layer starts from a fresh leaf holding `h`'s values, and the
    /// graph below is backpropagated separately (or, checkpointing, recomputed then).
    pub fn layer(&self, h: &Tensor) -> Result<Flow> {
        let idx = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.train && (self.segments.is_some() || self.replay.is_some()) {
            // dropout drawn per layer, so a recomputed layer draws the same masks
            let s = self.seed ^ (idx as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            *self.rng.lock().unwrap() = rand::rngs::StdRng::seed_from_u64(s);
        }
        if let Some((stop, input)) = &self.replay {
            return Ok(if idx >= *stop {
                Flow::Stop(h.clone())
            } else if idx + 1 == *stop {
                match input {
                    Some(t) => Flow::Run(t.clone()),
                    None => Flow::Run(h.clone()),
                }
            } else {
                Flow::Skip
            });
        }
        let Some(seg) = &self.segments else {
            return Ok(Flow::Run(h.clone()));
        };
        let tracked = h.track_op();
        if !tracked && !self.checkpoint {
            return Ok(Flow::Run(h.clone()));
        }
        let (var, input) = if tracked {
            let v = Var::from_tensor(&h.detach())?;
            let t = v.as_tensor().clone();
            (Some(v), t)
        } else {
            (None, h.detach())
        };
        let out = (!self.checkpoint).then(|| h.clone());
        let mut segs = seg.lock().unwrap();
        if self.checkpoint {
            // the layer below is recomputed in backward: its recorded ops are not kept
            crate::ops::tape::truncate(segs.last().map_or(0, |s| s.mark));
        }
        segs.push(Segment {
            idx,
            var,
            input: input.clone(),
            out,
            mark: crate::ops::tape::len(),
        });
        Ok(Flow::Run(input))
    }

    /// The recorded boundaries, in forward order.
    pub fn take_segments(&self) -> Vec<Segment> {
        match &self.segments {
            Some(seg) => std::mem::take(&mut *seg.lock().unwrap()),
            None => Vec::new(),
        }
    }

    /// No adapters, eval mode.
    pub fn base() -> Self {
        Ctx::new(Vec::new(), false, false, 0)
    }

    pub fn is_active(&self, name: &str) -> bool {
        self.enabled && self.active.iter().any(|a| a == name)
    }

    /// Inverted dropout in train mode, identity otherwise.
    /// `n` uniform draws in [0, 1) from this pass's generator (the dropouts of PEFT methods).
    pub fn uniform(&self, n: usize) -> Vec<f32> {
        use rand::Rng;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        (0..n).map(|_| rng.random::<f32>()).collect()
    }

    pub fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        use rand::Rng;
        let n = x.elem_count();
        let keep = 1.0 / (1.0 - p);
        let mut rng = self.rng.lock().unwrap();
        let m: Vec<f32> = (0..n)
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        let m = Tensor::from_vec(m, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        Ok(x.mul(&m)?)
    }
}

/// What the model's head produces.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    CausalLm,
    SeqCls {
        num_labels: usize,
    },
    /// a bare encoder: the last hidden state
    Encoder,
}

#[derive(Clone, Debug)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

/// Keys/values before the current tokens: learned prefixes, or a generation cache.
#[derive(Default)]
pub struct Past {
    /// per layer `(k, v)` each `[b, len, kv_heads, head_dim]`
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[b, len]` attention mask of the past keys
    pub mask: Vec<u8>,
    pub len: usize,
    /// store the new keys/values (generation)
    pub keep: bool,
}

impl Past {
    pub fn new(layers: usize, keep: bool) -> Self {
        Past {
            layers: (0..layers).map(|_| None).collect(),
            mask: Vec::new(),
            len: 0,
            keep,
        }
    }

    /// Appends keys/values to a layer's past (prefixes).
    pub fn push(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<()> {
        let kv = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        self.layers[layer] = Some(kv);
        Ok(())
    }

    /// Appends this layer's new keys/values to its past ones; returns the keys/values to attend to.
    pub fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            Some((pk, pv)) => (
                Tensor::cat(&[&pk.to_dtype(k.dtype())?, &k], 1)?,
                Tensor::cat(&[&pv.to_dtype(v.dtype())?, &v], 1)?,
            ),
            None => (k, v),
        };
        if self.keep {
            self.layers[layer] = Some((k.clone(), v.clone()));
        }
        Ok((k, v))
    }
}

/// The leaf layers a visitor hands out, by HF module path.
pub enum ModuleMut<'a> {
    Linear(&'a mut Linear),
    Embedding(&'a mut Embedding),
    Norm(&'a mut Norm),
    /// where bottleneck adapters sit, AdapterHub-named (`...output.adapters`)
    Bottleneck(&'a mut layers::BlockSlot, BnPlace),
}

/// Where a bottleneck slot is in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnPlace {
    /// after the attention sub-layer (`mh_adapter`)
    Attention,
    /// after the feed-forward sub-layer (`output_adapter`)
    Output,
}

/// One architecture's module tree and forward pass.
pub trait Arch: Send + Sync {
    /// `model_type` as in config.json
    fn model_type(&self) -> &str;
    fn task(&self) -> Task;
    fn dims(&self) -> Dims;
    /// Word embeddings only `[b, t, hidden]` (position/type embeddings come later, as HF's
    /// `inputs_embeds` path does).
    fn embed(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor>;
    /// The model after the word embeddings; `key_mask` covers past + current tokens.
    /// `types`: token type ids `[b, t]` (BERT), None for zeros.
    fn forward_embeds(
        &self,
        h: &Tensor,
        key_mask: &[u8],
        types: Option<&Tensor>,
        past: &mut Past,
        ctx: &Ctx,
    ) -> Result<Tensor>;
    /// Every leaf layer with its HF module path.
    fn visit(&mut self, f: &mut dyn FnMut(&str, ModuleMut<'_>));
    /// Whether the output embedding shares the input embedding's weight.
    fn tied(&self) -> bool;
    /// The word embedding (prompt-tuning's TEXT init reads it).
    fn word_embeddings(&self) -> &Embedding;
    /// Module paths PEFT never targets with "all-linear" (the output head).
    fn head_modules(&self) -> Vec<String>;
}

/// Values other modules keep with a model, at most one of each type: the model carries them
/// without knowing what they are, so that `model/` imports nothing of the methods acting on it.
#[derive(Default)]
pub struct Extensions(Vec<Box<dyn std::any::Any + Send + Sync>>);

impl Extensions {
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.iter().find_map(|b| b.downcast_ref::<T>())
    }

    /// The value of type `T`, a default one made first if there is none.
    pub fn get_mut<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        let i = match self.0.iter().position(|b| b.is::<T>()) {
            Some(i) => i,
            None => {
                self.0.push(Box::new(T::default()));
                self.0.len() - 1
            }
        };
        self.0[i].downcast_mut::<T>().expect("checked by position")
    }
}

pub struct Model {
    pub arch: Box<dyn Arch>,
    /// config.json as loaded (written back by `save`)
    pub config: serde_json::Value,
    pub dir: Option<PathBuf>,
    /// the reference `ftl.load` was given (a path or hub id), for the run manifest
    pub reference: Option<String>,
    pub tokenizer: Option<Tokenizer>,
    /// the adapters (by the names their slots hold them under) that run
    pub active: Vec<String>,
    pub enabled: bool,
    pub prompts: Vec<(String, Box<dyn InputAdapter>)>,
    /// what other modules keep with the model (`peft/`'s record of the adapters it attached)
    pub ext: Extensions,
    pub device: Device,
    pub dtype: DType,
    /// seeds adapter initialisation
    pub seed: u64,
    /// weight name → its dtype in the file, for shapes-only models (`ftl inspect`)
    pub stored_dtypes: std::collections::BTreeMap<String, String>,
}

impl Model {
    pub fn new(
        arch: Box<dyn Arch>,
        config: serde_json::Value,
        device: Device,
        dtype: DType,
    ) -> Self {
        Model {
            arch,
            config,
            dir: None,
            reference: None,
            tokenizer: None,
            active: Vec::new(),
            enabled: true,
            prompts: Vec::new(),
            ext: Extensions::default(),
            device,
            dtype,
            seed: 0,
            stored_dtypes: Default::default(),
        }
    }

    pub fn ctx(&self, train: bool, seed: u64) -> Ctx {
        Ctx::new(self.active.clone(), self.enabled, train, seed)
    }

    pub fn task(&self) -> Task {
        self.arch.task()
    }

    /// Logits for `ids` `[b, t]` (u32) with an optional 0/1 `mask` `[b, t]`, eval mode.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let ctx = self.ctx(false, 0);
        self.forward_with(ids, mask, None, &ctx, None)
    }

    /// The forward pass under `ctx`; `cache` continues (and keeps) a generation.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        types: Option<&Tensor>,
        ctx: &Ctx,
        cache: Option<&mut Past>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let _uploads = keep_small_uploads(&self.device);
        let ids = ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let mut key_mask: Vec<u8> = match mask {
            Some(m) => {
                if m.dims2()? != (b, t) {
                    return Err(Error::msg(format!(
                        "attention mask has shape {:?}, input ids {:?}",
                        m.dims(),
                        ids.dims()
                    )));
                }
                m.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| (v != 0.0) as u8)
                    .collect()
            }
            None => vec![1; b * t],
        };
        let mut local = Past::new(self.arch.dims().layers, false);
        let past = match cache {
            Some(p) => p,
            None => &mut local,
        };
        let mut h = self.arch.embed(&ids, ctx)?;
        let mut types = match types {
            Some(t) => Some(t.to_dtype(DType::U32)?.to_device(&self.device)?),
            None => None,
        };
        let first = past.len == 0;
        if first {
            let mut n_prefix = 0;
            for (name, p) in &self.prompts {
                if !ctx.is_active(name) {
                    continue;
                }
                if let Some(v) = p.embeddings(b, ctx)? {
                    let v = v.to_dtype(h.dtype())?;
                    h = Tensor::cat(&[&v, &h], 1)?;
                    key_mask = prepend_ones(&key_mask, b, p.tokens());
                    // PEFT keeps token types for classifiers, with zeros for the virtual tokens
                    if let Some(t) = &types {
                        let z = Tensor::zeros((b, p.tokens()), DType::U32, &self.device)?;
                        types = Some(Tensor::cat(&[&z, t], 1)?);
                    }
                }
                if let Some(kv) = p.prefix_kv(b, &self.arch.dims(), h.dtype(), ctx)? {
                    for (l, (k, v)) in kv.into_iter().enumerate() {
                        past.push(l, k, v)?;
                    }
                    n_prefix += p.tokens();
                }
            }
            if n_prefix > 0 {
                past.len = n_prefix;
                past.mask = vec![1; b * n_prefix];
            }
        }
        let t_now = h.dim(1)?;
        let full_mask = concat_mask(&past.mask, past.len, &key_mask, t_now, b);
        let out = self
            .arch
            .forward_embeds(&h, &full_mask, types.as_ref(), past, ctx)?;
        if past.keep {
            past.mask = full_mask;
            past.len += t_now;
        }
        Ok(out)
    }

    /// Every leaf layer, by path.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, ModuleMut<'_>)) {
        self.arch.visit(f)
    }

    pub fn info_dims(&self) -> Dims {
        self.arch.dims()
    }
}

fn prepend_ones(mask: &[u8], b: usize, n: usize) -> Vec<u8> {
    let t = mask.len() / b.max(1);
    let mut out = Vec::with_capacity(b * (t + n));
    for bi in 0..b {
        out.extend(std::iter::repeat_n(1u8, n));
        out.extend_from_slice(&mask[bi * t..(bi + 1) * t]);
    }
    out
}

fn concat_mask(past: &[u8], plen: usize, cur: &[u8], t: usize, b: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(b * (plen + t));
    for bi in 0..b {
        if plen > 0 {
            out.extend_from_slice(&past[bi * plen..(bi + 1) * plen]);
        }
        out.extend_from_slice(&cur[bi * t..(bi + 1) * t]);
    }
    out
}
