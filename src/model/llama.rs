//! Llama, Mistral and Qwen2 (`LlamaForCausalLM` and its relatives): RMSNorm, rotary embeddings,
//! grouped-query attention (q/k/v biases for Qwen2, sliding windows for Mistral), SwiGLU MLP.

use super::config::Cfg;
use super::hub::{Init, Source};
use super::layers::{Embedding, Linear, Norm, NormKind};
use super::{Arch, BnPlace, Ctx, Dims, Flow, ModuleMut, Past, Task};
use crate::error::Result;
use crate::ops::{self, Activation, AttnMask, Rope};
use candle_core::Tensor;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub act: Activation,
    pub tie: bool,
    /// the sliding window's size, and which layers use it (`window`)
    pub sliding_window: Option<usize>,
    pub sliding: Sliding,
    pub init_std: f64,
}

/// Which layers attend through the sliding window: as HF's `layer_types`, or by rule (every
/// layer for Mistral; Qwen2's from `max_window_layers` on, with `use_sliding_window`). A rule,
/// not a list per layer, so that a config's layer count allocates nothing before its weights.
#[derive(Clone, Debug)]
pub enum Sliding {
    Listed(Vec<bool>),
    From(usize),
    Never,
}

impl LlamaConfig {
    /// Layer `l`'s sliding window, if it has one.
    pub fn window(&self, l: usize) -> Option<usize> {
        let on = match &self.sliding {
            Sliding::Listed(t) => t.get(l).copied().unwrap_or(false),
            Sliding::From(first) => l >= *first,
            Sliding::Never => false,
        };
        self.sliding_window.filter(|_| on)
    }

    pub fn parse(c: &Cfg) -> Result<Self> {
        let model_type = c.str_or("model_type", "llama")?.to_string();
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let kv_heads = c.usize_or("num_key_value_heads", heads)?;
        c.divides("num_key_value_heads", heads, kv_heads)?;
        let head_dim = match c.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                c.divides("num_attention_heads", hidden, heads)?;
                hidden / heads
            }
        };
        let layers = c.usize("num_hidden_layers")?;
        let (qkv_bias, o_bias) = match model_type.as_str() {
            "qwen2" => (true, false),
            "mistral" => (false, false),
            _ => {
                let b = c.bool_or("attention_bias", false)?;
                (b, b)
            }
        };
        let window = c.opt_usize("sliding_window")?;
        let sliding = match c.v.get("layer_types").and_then(|v| v.as_array()) {
            Some(types) if types.len() != layers => {
                return Err(crate::Error::config(
                    &c.path,
                    "layer_types",
                    format!("{} entries for {layers} layers", types.len()),
                ))
            }
            Some(types) => Sliding::Listed(
                types
                    .iter()
                    .map(|t| t.as_str() == Some("sliding_attention"))
                    .collect(),
            ),
            None => match model_type.as_str() {
                "mistral" => Sliding::From(0),
                "qwen2" if c.bool_or("use_sliding_window", false)? => {
                    Sliding::From(c.usize_or("max_window_layers", layers)?)
                }
                _ => Sliding::Never,
            },
        };
        let cfg = LlamaConfig {
            vocab: c.usize("vocab_size")?,
            intermediate: c.usize("intermediate_size")?,
            eps: c.f64_or("rms_norm_eps", 1e-6)?,
            mlp_bias: c.bool_or("mlp_bias", false)?,
            act: c.activation("hidden_act", "silu")?,
            tie: c.bool_or("tie_word_embeddings", false)?,
            init_std: c.f64_or("initializer_range", 0.02)?,
            model_type,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            qkv_bias,
            o_bias,
            sliding_window: window,
            sliding,
        };
        Ok(cfg)
    }
}

pub(crate) fn linear(
    src: &dyn Source,
    path: &str,
    inp: usize,
    out: usize,
    bias: bool,
    std: f64,
) -> Result<Linear> {
    let w = src.param(&format!("{path}.weight"), &[out, inp], Init::Normal(std))?;
    let b = if bias {
        Some(src.param(&format!("{path}.bias"), &[out], Init::Zeros)?)
    } else {
        None
    };
    Ok(Linear::new(w, b, false))
}

fn rms(src: &dyn Source, path: &str, n: usize, eps: f64) -> Result<Norm> {
    Ok(Norm {
        weight: src.param(&format!("{path}.weight"), &[n], Init::Ones)?,
        bias: None,
        eps,
        kind: NormKind::Rms,
    })
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct Layer {
    pub input_layernorm: Norm,
    pub self_attn: Attention,
    pub post_attention_layernorm: Norm,
    pub mlp: Mlp,
    pub bn_attn: super::layers::BlockSlot,
    pub bn_out: super::layers::BlockSlot,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    pub rope: Rope,
    pub embed_tokens: Embedding,
    pub layers: Vec<Layer>,
    pub norm: Norm,
    pub lm_head: Linear,
}

impl Llama {
    pub fn load(c: &Cfg, src: &dyn Source) -> Result<Self> {
        let cfg = LlamaConfig::parse(c)?;
        let (h, hd, std) = (cfg.hidden, cfg.head_dim, cfg.init_std);
        let embed = src.param(
            "model.embed_tokens.weight",
            &[cfg.vocab, h],
            Init::Normal(std),
        )?;
        // grown as the layers load: a config's count is not trusted before its weights exist
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(Layer {
                input_layernorm: rms(src, &format!("{p}.input_layernorm"), h, cfg.eps)?,
                self_attn: Attention {
                    q_proj: linear(
                        src,
                        &format!("{a}.q_proj"),
                        h,
                        cfg.heads * hd,
                        cfg.qkv_bias,
                        std,
                    )?,
                    k_proj: linear(
                        src,
                        &format!("{a}.k_proj"),
                        h,
                        cfg.kv_heads * hd,
                        cfg.qkv_bias,
                        std,
                    )?,
                    v_proj: linear(
                        src,
                        &format!("{a}.v_proj"),
                        h,
                        cfg.kv_heads * hd,
                        cfg.qkv_bias,
                        std,
                    )?,
                    o_proj: linear(
                        src,
                        &format!("{a}.o_proj"),
                        cfg.heads * hd,
                        h,
                        cfg.o_bias,
                        std,
                    )?,
                },
                post_attention_layernorm: rms(
                    src,
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    cfg.eps,
                )?,
                mlp: Mlp {
                    gate_proj: linear(
                        src,
                        &format!("{m}.gate_proj"),
                        h,
                        cfg.intermediate,
                        cfg.mlp_bias,
                        std,
                    )?,
                    up_proj: linear(
                        src,
                        &format!("{m}.up_proj"),
                        h,
                        cfg.intermediate,
                        cfg.mlp_bias,
                        std,
                    )?,
                    down_proj: linear(
                        src,
                        &format!("{m}.down_proj"),
                        cfg.intermediate,
                        h,
                        cfg.mlp_bias,
                        std,
                    )?,
                },
                bn_attn: Vec::new(),
                bn_out: Vec::new(),
            });
        }
        let norm = rms(src, "model.norm", h, cfg.eps)?;
        let lm_head = if cfg.tie {
            Linear::new(embed.clone(), None, false)
        } else {
            linear(src, "lm_head", h, cfg.vocab, false, std)?
        };
        // made once the weights have confirmed the head size the config claims: a hostile
        // config would otherwise build a huge rotary table first
        let rope = c.rope(cfg.head_dim, 10000.0)?;
        Ok(Llama {
            embed_tokens: Embedding::new(embed),
            layers,
            norm,
            lm_head,
            rope,
            cfg,
        })
    }
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        l: usize,
        cfg: &LlamaConfig,
        rope: &Rope,
        mask: &AttnMask,
        past: &mut Past,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = cfg.head_dim;
        let q = ops::reshape(&self.q_proj.forward(x, ctx)?, (b, t, cfg.heads, hd))?;
        let k = ops::reshape(&self.k_proj.forward(x, ctx)?, (b, t, cfg.kv_heads, hd))?;
        let v = ops::reshape(&self.v_proj.forward(x, ctx)?, (b, t, cfg.kv_heads, hd))?;
        let q = ops::rope(&q, rope, mask.offset)?;
        let k = ops::rope(&k, rope, mask.offset)?;
        let (k, v) = past.extend(l, k, v)?;
        let o = ops::attention(&q, &k, &v, mask, 1.0 / (hd as f32).sqrt())?;
        self.o_proj
            .forward(&ops::reshape(&o, (b, t, cfg.heads * hd))?, ctx)
    }
}

impl Arch for Llama {
    fn model_type(&self) -> &str {
        &self.cfg.model_type
    }

    fn task(&self) -> Task {
        Task::CausalLm
    }

    fn dims(&self) -> Dims {
        Dims {
            hidden: self.cfg.hidden,
            layers: self.cfg.layers,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
            vocab: self.cfg.vocab,
        }
    }

    fn embed(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.embed_tokens.forward(ids, ctx)
    }

    fn forward_embeds(
        &self,
        h: &Tensor,
        key_mask: &[u8],
        _types: Option<&Tensor>,
        past: &mut Past,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let key_valid = Arc::new(key_mask.to_vec());
        // one mask per distinct window, shared by the layers (the device path caches its bias)
        let mut masks: Vec<(Option<usize>, AttnMask)> = Vec::new();
        let mut h = h.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            h = match ctx.layer(&h)? {
                Flow::Run(x) => x,
                Flow::Skip => continue,
                Flow::Stop(x) => return Ok(x),
            };
            let window = self.cfg.window(l);
            let mask = match masks.iter().find(|(w, _)| *w == window) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = AttnMask::new(true, past.len, Some(key_valid.clone()), window);
                    masks.push((window, m.clone()));
                    m
                }
            };
            let x = layer.input_layernorm.forward(&h, ctx)?;
            let a = layer
                .self_attn
                .forward(&x, l, &self.cfg, &self.rope, &mask, past, ctx)?;
            h = super::layers::pre_norm(&layer.bn_attn, &a, &h, ctx)?;
            let x = layer.post_attention_layernorm.forward(&h, ctx)?;
            let gate = layer.mlp.gate_proj.forward(&x, ctx)?;
            let up = layer.mlp.up_proj.forward(&x, ctx)?;
            let m = layer
                .mlp
                .down_proj
                .forward(&ops::act::act_mul(self.cfg.act, &gate, &up)?, ctx)?;
            h = super::layers::pre_norm(&layer.bn_out, &m, &h, ctx)?;
        }
        let h = match ctx.layer(&h)? {
            Flow::Run(x) => x,
            Flow::Skip => h,
            Flow::Stop(x) => return Ok(x),
        };
        let h = self.norm.forward(&h, ctx)?;
        self.lm_head.forward(&h, ctx)
    }

    fn visit(&mut self, f: &mut dyn FnMut(&str, ModuleMut<'_>)) {
        f(
            "model.embed_tokens",
            ModuleMut::Embedding(&mut self.embed_tokens),
        );
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            f(
                &format!("{p}.input_layernorm"),
                ModuleMut::Norm(&mut l.input_layernorm),
            );
            f(
                &format!("{p}.self_attn.q_proj"),
                ModuleMut::Linear(&mut l.self_attn.q_proj),
            );
            f(
                &format!("{p}.self_attn.k_proj"),
                ModuleMut::Linear(&mut l.self_attn.k_proj),
            );
            f(
                &format!("{p}.self_attn.v_proj"),
                ModuleMut::Linear(&mut l.self_attn.v_proj),
            );
            f(
                &format!("{p}.self_attn.o_proj"),
                ModuleMut::Linear(&mut l.self_attn.o_proj),
            );
            f(
                &format!("{p}.post_attention_layernorm"),
                ModuleMut::Norm(&mut l.post_attention_layernorm),
            );
            f(
                &format!("{p}.mlp.gate_proj"),
                ModuleMut::Linear(&mut l.mlp.gate_proj),
            );
            f(
                &format!("{p}.mlp.up_proj"),
                ModuleMut::Linear(&mut l.mlp.up_proj),
            );
            f(
                &format!("{p}.mlp.down_proj"),
                ModuleMut::Linear(&mut l.mlp.down_proj),
            );
            f(
                &format!("{p}.attention_adapters.adapters"),
                ModuleMut::Bottleneck(&mut l.bn_attn, BnPlace::Attention),
            );
            f(
                &format!("{p}.output_adapters.adapters"),
                ModuleMut::Bottleneck(&mut l.bn_out, BnPlace::Output),
            );
        }
        f("model.norm", ModuleMut::Norm(&mut self.norm));
        f("lm_head", ModuleMut::Linear(&mut self.lm_head));
    }

    fn tied(&self) -> bool {
        self.cfg.tie
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.embed_tokens
    }

    fn head_modules(&self) -> Vec<String> {
        vec!["lm_head".into()]
    }
}
