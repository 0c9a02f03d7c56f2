//! llama.cpp GGUF files as models: the HF config from the metadata, tensors dequantized under
//! their HF module paths (llama's Q/K rows un-permuted, as transformers' GGUF loader does), and
//! the tokenizer built from the metadata. Parsing and dequantizing are candle's `gguf_file`.

use super::hub::{Init, LoadOpts, Source};
use super::Model;
use crate::error::{Error, Result};
use crate::gguf::Meta;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// GGUF architectures ftl reads (llama.cpp writes Mistral models as `llama`).
const ARCHS: &[&str] = &["llama", "qwen2"];

/// The HF model class of a model type.
fn hf_class(model_type: &str) -> &'static str {
    match model_type {
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

/// Whether `path` is a GGUF file (by its magic, whatever its name).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// ggml's names for the tensor types candle does not read (ggml.h), for messages.
fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

fn incomplete(path: &Path, len: u64, detail: &str) -> Error {
    Error::file(
        path,
        format!(
            "not a complete GGUF file ({len} bytes; truncated or still being written): {detail}"
        ),
    )
}

/// A GGUF file's header, and the file to read tensors from.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Arc<Content>,
    file: Mutex<std::fs::File>,
    len: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = super::hub::cached_value(path, "gguf header", || {
            Self::read_header(path, &file, len).map(Arc::new)
        })?;
        let g = GgufFile {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            len,
        };
        g.check_sizes()?;
        Ok(g)
    }

    fn read_header(path: &Path, file: &std::fs::File, len: u64) -> Result<Content> {
        // the header is tens of thousands of small fields (a vocabulary): buffered, it is read
        // in a few system calls instead of one per field
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        // candle divides by `general.alignment` unchecked: a 0 there must not abort the program
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut r)))
            .map_err(|_| Error::file(path, "corrupt GGUF header (general.alignment 0?)"))?;
        read.map_err(|e| {
            let msg = crate::error::without_backtrace(&e.to_string());
            if let Some(t) = msg
                .strip_prefix("unknown dtype for tensor ")
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                let name = ggml_type_name(t).unwrap_or("unknown");
                return Error::file(
                    path,
                    format!(
                        "unsupported GGUF tensor type {t} ({name}); ftl reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q2_K–Q8_K (requantize with llama.cpp's llama-quantize)"
                    ),
                );
            }
            let truncated = matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
                || msg.contains("remaining");
            if truncated {
                incomplete(path, len, &msg)
            } else {
                Error::file(path, format!("cannot read GGUF header: {msg}"))
            }
        })
    }

    /// Every tensor's data lies inside the file: a truncated download is reported at load time,
    /// naming the first tensor it cuts, instead of failing midway through.
    fn check_sizes(&self) -> Result<()> {
        let mut infos: Vec<(&String, _)> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        for (name, info) in infos {
            // a hostile shape's product must not wrap around into a small, "valid" size
            let Some(n) = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
            else {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "corrupt GGUF file: tensor `{name}` has shape {:?}",
                        info.shape.dims()
                    ),
                ));
            };
            let bs = info.ggml_dtype.block_size();
            if !n.is_multiple_of(bs) {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "tensor `{name}`: {n} elements are not a whole number of {:?} blocks of {bs}",
                        info.ggml_dtype
                    ),
                ));
            }
            let end = self
                .content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|x| {
                    x.checked_add(((n / bs).checked_mul(info.ggml_dtype.type_size()))? as u64)
                });
            match end {
                None => {
                    return Err(Error::file(
                        &self.path,
                        format!(
                            "corrupt GGUF file: tensor `{name}` has offset {}",
                            info.offset
                        ),
                    ))
                }
                Some(end) if end > self.len => {
                    return Err(incomplete(
                        &self.path,
                        self.len,
                        &format!("tensor `{name}` ends at byte {end}"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Typed access to the metadata.
    pub fn meta(&self) -> Meta<'_> {
        Meta {
            ct: &self.content,
            path: &self.path,
        }
    }

    fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::config(&self.path, key, msg)
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        self.meta().str(key)
    }

    fn uint(&self, key: &str) -> Result<Option<u64>> {
        self.meta().count(key)
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        self.meta().float(key)
    }

    fn req_uint(&self, key: &str) -> Result<u64> {
        self.uint(key)?
            .ok_or_else(|| self.err(key, "missing (required for this architecture)"))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The GGUF tensor `name` dequantized to f32 on the CPU, in PyTorch's dimension order.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        // a read that failed earlier leaves the file usable: every read seeks to its offset
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let q = self
            .content
            .tensor(&mut *f, name, &Device::Cpu)
            .map_err(|e| Error::file(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// How `name` is stored (`Q4_1`, `F32`, …), from the header.
    pub fn stored_dtype(&self, name: &str) -> Option<String> {
        let t = self.content.tensor_infos.get(name)?.ggml_dtype;
        Some(format!("{t:?}"))
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| i.shape.dims().to_vec())
    }

    /// `general.architecture`, checked against the ones ftl reads.
    pub fn architecture(&self) -> Result<&str> {
        let key = "general.architecture";
        let arch = self
            .str(key)?
            .ok_or_else(|| self.err(key, "missing: not a model file"))?;
        if !ARCHS.contains(&arch) {
            return Err(self.err(
                key,
                format!(
                    "unsupported architecture `{arch}` (ftl reads GGUF {}; Mistral files are `llama`)",
                    ARCHS.join(", ")
                ),
            ));
        }
        Ok(arch)
    }

    /// The HF `config.json` transformers' GGUF loader derives, plus the rope scaling llama.cpp
    /// records (which transformers ignores for these architectures).
    pub fn config(&self) -> Result<Value> {
        let arch = self.architecture()?;
        // transformers' own rule: llama.cpp writes Mistral models as `llama`, named `mistral`
        let model_type = if arch == "llama" && self.str("general.name")? == Some("mistral") {
            "mistral"
        } else {
            arch
        };
        let class = hf_class(model_type);
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.req_uint(&k("embedding_length"))?;
        let heads = self.req_uint(&k("attention.head_count"))?;
        let kv_heads = self.uint(&k("attention.head_count_kv"))?.unwrap_or(heads);
        let layers = self.req_uint(&k("block_count"))?;
        let ffn = self.req_uint(&k("feed_forward_length"))?;
        let vocab = match self.uint(&k("vocab_size"))? {
            Some(v) => v,
            None => match self.meta().array("tokenizer.ggml.tokens")? {
                Some(a) => a.len() as u64,
                _ => self
                    .shape("token_embd.weight")
                    .and_then(|s| s.first().map(|&n| n as u64))
                    .ok_or_else(|| {
                        self.err(
                            &k("vocab_size"),
                            "missing, and no tokenizer.ggml.tokens or token_embd.weight to count",
                        )
                    })?,
            },
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": vocab,
            "hidden_act": "silu",
            "tie_word_embeddings": !self.has_tensor("output.weight"),
        });
        let o = cfg.as_object_mut().unwrap();
        if model_type == "mistral" {
            // llama.cpp's `llama` graph attends to every position; say so, since HF's
            // MistralConfig would default to a 4096 window
            o.insert("sliding_window".into(), Value::Null);
        }
        if let Some(n) = self.uint(&k("context_length"))? {
            o.insert("max_position_embeddings".into(), n.into());
        }
        if let Some(e) = self.float(&k("attention.layer_norm_rms_epsilon"))? {
            o.insert("rms_norm_eps".into(), e.into());
        }
        let theta = self.float(&k("rope.freq_base"))?;
        if let Some(t) = theta {
            o.insert("rope_theta".into(), t.into());
        }
        let head_dim = match self.uint(&k("rope.dimension_count"))? {
            // transformers reads it as head_dim for llama/mistral only
            Some(d) if arch == "llama" => {
                o.insert("head_dim".into(), d.into());
                d
            }
            _ => hidden / heads.max(1),
        };
        if let Some(s) = self.rope_scaling(arch, head_dim, theta.unwrap_or(10000.0))? {
            o.insert("rope_scaling".into(), s);
        }
        for (key, hf) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
            ("tokenizer.ggml.padding_token_id", "pad_token_id"),
            ("tokenizer.ggml.unknown_token_id", "unk_token_id"),
        ] {
            if let Some(id) = self.uint(key)? {
                o.insert(hf.into(), id.into());
            }
        }
        if let Some(n) = self.str("general.name")? {
            o.insert("_name_or_path".into(), n.into());
        }
        Ok(cfg)
    }

    /// HF `rope_scaling` from llama.cpp's `rope.scaling.*` keys, or from Llama-3's frequency
    /// factors (`rope_freqs.weight`), which llama.cpp's converter computes from HF's `llama3`
    /// parameters and which are recovered here so that a saved HF config reproduces them.
    fn rope_scaling(&self, arch: &str, head_dim: u64, theta: f64) -> Result<Option<Value>> {
        let key = format!("{arch}.rope.scaling.type");
        let kind = self.str(&key)?;
        let factor = self.float(&format!("{arch}.rope.scaling.factor"))?;
        let orig = self.uint(&format!("{arch}.rope.scaling.original_context_length"))?;
        let scaled = match kind {
            None | Some("none") => None,
            Some("linear") => Some(json!({
                "rope_type": "linear",
                "factor": factor.ok_or_else(|| self.err(&format!("{arch}.rope.scaling.factor"), "missing (required for linear rope scaling)"))?,
            })),
            Some("yarn") => {
                let mut s = json!({
                    "rope_type": "yarn",
                    "factor": factor.ok_or_else(|| self.err(&format!("{arch}.rope.scaling.factor"), "missing (required for yarn rope scaling)"))?,
                });
                if let Some(n) = orig {
                    s["original_max_position_embeddings"] = n.into();
                }
                for (g, hf) in [
                    ("yarn_beta_fast", "beta_fast"),
                    ("yarn_beta_slow", "beta_slow"),
                    ("attn_factor", "attention_factor"),
                ] {
                    if let Some(v) = self.float(&format!("{arch}.rope.scaling.{g}"))? {
                        s[hf] = v.into();
                    }
                }
                Some(s)
            }
            Some(other) => {
                return Err(self.err(
                    &key,
                    format!("unsupported rope scaling `{other}` (none, linear, yarn)"),
                ))
            }
        };
        if !self.has_tensor("rope_freqs.weight") {
            return Ok(scaled);
        }
        if scaled.is_some() {
            return Err(Error::file(
                &self.path,
                "both rope.scaling keys and a rope_freqs.weight tensor: ftl does not know how to combine them",
            ));
        }
        let f: Vec<f32> = self
            .dequantize("rope_freqs.weight")?
            .flatten_all()?
            .to_vec1()?;
        let llama3 = recover_llama3(&f, head_dim as usize, theta).ok_or_else(|| {
            Error::file(
                &self.path,
                "tensor `rope_freqs.weight`: these frequency factors are not Llama 3's rope scaling (factor, low/high frequency factors, original context): ftl cannot express them",
            )
        })?;
        Ok(Some(llama3))
    }
}

/// Llama 3's rope parameters from the frequency factors llama.cpp's converter stores: the
/// factors are 1 at high frequencies, `factor` at low ones and `1 / ((1 - s) / factor + s)` with
/// `s = (orig / wavelength - low) / (high - low)` between, so two in-between factors give `orig`
/// and the bounds (with `low_freq_factor` 1, as every Llama 3 release has). The recovered
/// parameters must reproduce every stored factor.
fn recover_llama3(f: &[f32], head_dim: usize, theta: f64) -> Option<Value> {
    if f.len() != head_dim / 2 || f.is_empty() {
        return None;
    }
    let factor = f.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let inv: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let wl: Vec<f64> = inv.iter().map(|x| 2.0 * std::f64::consts::PI / x).collect();
    let eps = 1e-4;
    let mid: Vec<usize> = (0..f.len())
        .filter(|&i| (f[i] as f64 - 1.0).abs() > eps && (f[i] as f64 - factor).abs() > eps * factor)
        .collect();
    let low = 1.0;
    if factor <= 1.0 + eps {
        return None;
    }
    let (orig, high) = if mid.len() >= 2 {
        // s = a / wavelength + b with a = orig / (high - low), b = -low / (high - low)
        let s = |i: usize| (1.0 / f[i] as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
        let (i, j) = (mid[0], mid[mid.len() - 1]);
        let a = (s(i) - s(j)) / (1.0 / wl[i] - 1.0 / wl[j]);
        let b = s(i) - a / wl[i];
        if b >= 0.0 {
            return None;
        }
        let high = low - low / b;
        ((a * (high - low)).round(), (high * 1e6).round() / 1e6)
    } else {
        // too few in-between factors to solve for them: the converter's defaults
        (8192.0, 4.0)
    };
    // the recovered parameters must give the stored factors by HF's llama3 rule
    let (lo_wl, hi_wl) = (orig / low, orig / high);
    for (i, &w) in wl.iter().enumerate() {
        let want = if w < hi_wl {
            1.0
        } else if w > lo_wl {
            factor
        } else {
            let s = (orig / w - low) / (high - low);
            1.0 / ((1.0 - s) / factor + s)
        };
        if (want - f[i] as f64).abs() > 1e-3 * want {
            return None;
        }
    }
    Some(json!({
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig as u64,
    }))
}

/// The GGUF name of an HF tensor path (llama.cpp's names, `convert_hf_to_gguf.py`).
pub fn gguf_name(hf: &str) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (n, rest) = rest.split_once('.')?;
    n.parse::<usize>().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{n}.{g}.{param}"))
}

/// A GGUF file as a source of HF-named tensors.
pub struct GgufWeights {
    pub file: GgufFile,
    /// undo llama.cpp's Q/K row permutation (llama files): (query heads, key/value heads)
    permute: Option<(usize, usize)>,
    pub dtype: DType,
    pub device: Device,
    pub shapes_only: bool,
}

impl GgufWeights {
    pub fn new(file: GgufFile, config: &Value, dtype: DType, device: &Device) -> Result<Self> {
        let permute = if file.architecture()? == "llama" {
            let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
            let kv = config["num_key_value_heads"]
                .as_u64()
                .unwrap_or(heads as u64) as usize;
            Some((heads, kv))
        } else {
            None
        };
        Ok(GgufWeights {
            file,
            permute,
            dtype,
            device: device.clone(),
            shapes_only: false,
        })
    }

    /// llama.cpp stores each head's rotary halves interleaved (`permute` in its converter); HF
    /// keeps them as two halves. Rows `[head, dim/2, 2]` back to `[head, 2, dim/2]`.
    fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
        let dims = t.dims().to_vec();
        let rows = dims[0];
        if heads == 0 || !rows.is_multiple_of(2 * heads) {
            return Err(Error::msg(format!(
                "{rows} rows do not split into {heads} heads of rotary halves"
            )));
        }
        let d = rows / heads / 2;
        let rest: usize = dims[1..].iter().product();
        Ok(t.reshape((heads, d, 2, rest))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape(dims)?)
    }

    fn load(&self, g: &str) -> Result<Tensor> {
        let mut t = self.file.dequantize(g)?;
        if let Some((heads, kv)) = self.permute {
            let heads = if g.contains(".attn_q.") {
                Some(heads)
            } else if g.contains(".attn_k.") {
                Some(kv)
            } else {
                None
            };
            if let Some(h) = heads {
                t = Self::unpermute(&t, h)
                    .map_err(|e| Error::file(&self.file.path, format!("tensor `{g}`: {e}")))?;
            }
        }
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}

impl Source for GgufWeights {
    fn get(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let missing = || Error::MissingTensor {
            path: self.file.path.clone(),
            name: gguf_name(name).map_or(name.to_string(), |g| format!("{g}` (HF `{name}")),
        };
        let g = gguf_name(name).ok_or_else(missing)?;
        let got = self.file.shape(&g).ok_or_else(missing)?;
        if got != shape {
            return Err(Error::Shape {
                path: self.file.path.clone(),
                name: g,
                got,
                want: shape.to_vec(),
            });
        }
        if self.shapes_only {
            return super::hub::stand_in(shape, self.dtype, &self.device);
        }
        super::hub::cached(&self.file.path, &g, self.dtype, &self.device, || {
            self.load(&g)
        })
    }

    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.has_tensor(&g))
    }

    fn origin(&self) -> String {
        self.file.path.display().to_string()
    }

    fn stored_dtype(&self, name: &str) -> Option<String> {
        self.file.stored_dtype(&gguf_name(name)?)
    }
}

/// Loads a GGUF model file.
pub fn load(path: &Path, opts: &LoadOpts) -> Result<Model> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    });
    let tokenizer = super::hub::cached_value(path, "tokenizer", || {
        crate::tokenizer::Tokenizer::from_gguf(&file.content, path).map(Arc::new)
    })?
    .as_ref()
    .clone();
    let mut weights = GgufWeights::new(file, &config, dtype, &opts.device)?;
    weights.shapes_only = opts.shapes_only;
    let mut m = super::hub::build(&config, path, &weights, dtype, &opts.device, opts.head)?;
    m.dir = Some(path.to_path_buf());
    m.tokenizer = tokenizer;
    if opts.shapes_only {
        super::hub::record_stored_dtypes(&mut m, &weights);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::recover_llama3;

    /// llama.cpp's converter: the factors of HF's `llama3` rope parameters.
    fn factors(hd: usize, theta: f64, factor: f64, high: f64, orig: f64) -> Vec<f32> {
        (0..hd / 2)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
                let wl = 2.0 * std::f64::consts::PI / f;
                if wl < orig / high {
                    1.0
                } else if wl > orig {
                    factor as f32
                } else {
                    let s = (orig / wl - 1.0) / (high - 1.0);
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn llama3_rope_parameters_are_recovered_from_the_factors() {
        // Llama 3.1 (head_dim 128, factor 8), Llama 3.2 (64, 32), and non-default bounds
        for (hd, theta, factor, high, orig) in [
            (128, 500000.0, 8.0, 4.0, 8192.0),
            (64, 500000.0, 32.0, 4.0, 8192.0),
            (128, 500000.0, 4.0, 2.0, 4096.0),
        ] {
            let p = recover_llama3(&factors(hd, theta, factor, high, orig), hd, theta)
                .unwrap_or_else(|| panic!("{hd} {factor} {high} {orig}: not recovered"));
            assert_eq!(p["rope_type"], "llama3");
            assert!((p["factor"].as_f64().unwrap() - factor).abs() < 1e-4, "{p}");
            assert!(
                (p["high_freq_factor"].as_f64().unwrap() - high).abs() < 1e-3,
                "{p}"
            );
            assert_eq!(p["original_max_position_embeddings"], orig as u64, "{p}");
        }
        // factors no llama3 rule makes
        let mut f = factors(128, 500000.0, 8.0, 4.0, 8192.0);
        f[40] *= 1.5;
        assert!(recover_llama3(&f, 128, 500000.0).is_none());
    }
}
