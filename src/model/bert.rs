//! BERT: a plain encoder (`BertModel`, the last hidden state) or `BertForSequenceClassification`
//! (pooler + classifier). Post-LayerNorm blocks, absolute positions, token types.

use super::config::Cfg;
use super::hub::{Init, Source};
use super::layers::{Embedding, Linear, Norm, NormKind};
use super::llama::linear;
use super::{Arch, BnPlace, Ctx, Dims, Flow, ModuleMut, Past, Task};
use crate::error::{Error, Result};
use crate::ops::{self, Activation, AttnMask};
use candle_core::{Device, Tensor};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct BertConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f64,
    pub act: Activation,
    pub hidden_dropout: f32,
    pub init_std: f64,
    pub num_labels: Option<usize>,
}

fn ln(src: &dyn Source, path: &str, n: usize, eps: f64) -> Result<Norm> {
    Ok(Norm {
        weight: src.param(&format!("{path}.weight"), &[n], Init::Ones)?,
        bias: Some(src.param(&format!("{path}.bias"), &[n], Init::Zeros)?),
        eps,
        kind: NormKind::Layer,
    })
}

pub struct Layer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_ln: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_ln: Norm,
    pub bn_attn: super::layers::BlockSlot,
    pub bn_out: super::layers::BlockSlot,
}

pub struct Bert {
    pub cfg: BertConfig,
    /// `bert.` for models with a head, empty for a bare `BertModel`
    pub prefix: String,
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub emb_ln: Norm,
    pub layers: Vec<Layer>,
    pub pooler: Option<Linear>,
    pub classifier: Option<Linear>,
}

impl Bert {
    /// `head = false` reads a classifier checkpoint as a bare encoder.
    pub fn load(c: &Cfg, src: &dyn Source, head: bool) -> Result<Self> {
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        c.divides("num_attention_heads", hidden, heads)?;
        let archs: Vec<String> =
            c.v.get("architectures")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
        let is_cls = head
            && (archs.iter().any(|a| a == "BertForSequenceClassification")
                || src.has("classifier.weight"));
        let num_labels = if is_cls {
            let n = match c.v.get("id2label").and_then(|m| m.as_object()) {
                Some(m) => m.len(),
                None => c.usize_or("num_labels", 2)?,
            };
            Some(n)
        } else {
            None
        };
        let cfg = BertConfig {
            vocab: c.usize("vocab_size")?,
            layers: c.usize("num_hidden_layers")?,
            intermediate: c.usize("intermediate_size")?,
            max_positions: c.usize_or("max_position_embeddings", 512)?,
            type_vocab: c.usize_or("type_vocab_size", 2)?,
            eps: c.f64_or("layer_norm_eps", 1e-12)?,
            act: c.activation("hidden_act", "gelu")?,
            hidden_dropout: c.f64_or("hidden_dropout_prob", 0.1)? as f32,
            init_std: c.f64_or("initializer_range", 0.02)?,
            hidden,
            heads,
            num_labels,
        };
        let pt = c.str_or("position_embedding_type", "absolute")?;
        if pt != "absolute" {
            return Err(Error::config(
                &c.path,
                "position_embedding_type",
                format!("`{pt}` is not supported"),
            ));
        }
        // HF names a model with a head `bert.…`, a bare BertModel without the prefix
        let prefix = if is_cls { "bert." } else { "" }.to_string();
        let (h, std) = (cfg.hidden, cfg.init_std);
        let e = format!("{prefix}embeddings");
        let emb = |n: &str, rows: usize| {
            src.param(&format!("{e}.{n}.weight"), &[rows, h], Init::Normal(std))
        };
        // grown as the layers load: a config's count is not trusted before its weights exist
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("{prefix}encoder.layer.{i}");
            layers.push(Layer {
                query: linear(src, &format!("{p}.attention.self.query"), h, h, true, std)?,
                key: linear(src, &format!("{p}.attention.self.key"), h, h, true, std)?,
                value: linear(src, &format!("{p}.attention.self.value"), h, h, true, std)?,
                attn_out: linear(src, &format!("{p}.attention.output.dense"), h, h, true, std)?,
                attn_ln: ln(src, &format!("{p}.attention.output.LayerNorm"), h, cfg.eps)?,
                intermediate: linear(
                    src,
                    &format!("{p}.intermediate.dense"),
                    h,
                    cfg.intermediate,
                    true,
                    std,
                )?,
                output: linear(
                    src,
                    &format!("{p}.output.dense"),
                    cfg.intermediate,
                    h,
                    true,
                    std,
                )?,
                output_ln: ln(src, &format!("{p}.output.LayerNorm"), h, cfg.eps)?,
                bn_attn: Vec::new(),
                bn_out: Vec::new(),
            });
        }
        // a bare BertModel keeps its pooler when the checkpoint has one (a module PEFT can target)
        let pooler = if num_labels.is_some() || src.has(&format!("{prefix}pooler.dense.weight")) {
            Some(linear(
                src,
                &format!("{prefix}pooler.dense"),
                h,
                h,
                true,
                std,
            )?)
        } else {
            None
        };
        let classifier = match num_labels {
            Some(n) => Some(linear(src, "classifier", h, n, true, std)?),
            None => None,
        };
        Ok(Bert {
            word_embeddings: Embedding::new(emb("word_embeddings", cfg.vocab)?),
            position_embeddings: Embedding::new(emb("position_embeddings", cfg.max_positions)?),
            token_type_embeddings: Embedding::new(emb("token_type_embeddings", cfg.type_vocab)?),
            emb_ln: ln(src, &format!("{e}.LayerNorm"), h, cfg.eps)?,
            layers,
            pooler,
            classifier,
            prefix,
            cfg,
        })
    }
}

impl Arch for Bert {
    fn model_type(&self) -> &str {
        "bert"
    }

    fn task(&self) -> Task {
        match self.cfg.num_labels {
            Some(n) => Task::SeqCls { num_labels: n },
            None => Task::Encoder,
        }
    }

    fn dims(&self) -> Dims {
        Dims {
            hidden: self.cfg.hidden,
            layers: self.cfg.layers,
            heads: self.cfg.heads,
            kv_heads: self.cfg.heads,
            head_dim: self.cfg.hidden / self.cfg.heads,
            vocab: self.cfg.vocab,
        }
    }

    fn embed(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.word_embeddings.forward(ids, ctx)
    }

    fn forward_embeds(
        &self,
        h: &Tensor,
        key_mask: &[u8],
        types: Option<&Tensor>,
        past: &mut Past,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, t, hid) = h.dims3()?;
        let cfg = &self.cfg;
        if past.len + t > cfg.max_positions {
            return Err(Error::msg(format!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                past.len + t,
                cfg.max_positions
            )));
        }
        let dev = h.device();
        let pos: Vec<u32> = (past.len..past.len + t).map(|p| p as u32).collect();
        let pos = Tensor::from_vec(pos, (1, t), &Device::Cpu)?.to_device(dev)?;
        let tt = match types {
            Some(tt) => {
                if tt.dims2()? != (b, t) {
                    return Err(Error::msg(format!(
                        "token_type_ids have shape {:?}, input {:?}",
                        tt.dims(),
                        (b, t)
                    )));
                }
                tt.clone()
            }
            None => Tensor::zeros((1, t), candle_core::DType::U32, dev)?,
        };
        let e = h
            .broadcast_add(&self.position_embeddings.forward(&pos, ctx)?)?
            .broadcast_add(&self.token_type_embeddings.forward(&tt, ctx)?)?;
        let mut h = ctx.dropout(&self.emb_ln.forward(&e, ctx)?, cfg.hidden_dropout)?;
        let key_valid = Arc::new(key_mask.to_vec());
        let mask = AttnMask::new(false, past.len, Some(key_valid), None);
        let (nh, hd) = (cfg.heads, hid / cfg.heads);
        for (l, layer) in self.layers.iter().enumerate() {
            h = match ctx.layer(&h)? {
                Flow::Run(x) => x,
                Flow::Skip => continue,
                Flow::Stop(x) => return Ok(x),
            };
            let q = ops::reshape(&layer.query.forward(&h, ctx)?, (b, t, nh, hd))?;
            let k = ops::reshape(&layer.key.forward(&h, ctx)?, (b, t, nh, hd))?;
            let v = ops::reshape(&layer.value.forward(&h, ctx)?, (b, t, nh, hd))?;
            let (k, v) = past.extend(l, k, v)?;
            let o = ops::attention(&q, &k, &v, &mask, 1.0 / (hd as f32).sqrt())?;
            let o = ops::reshape(&o, (b, t, hid))?;
            let a = ctx.dropout(&layer.attn_out.forward(&o, ctx)?, cfg.hidden_dropout)?;
            let a = super::layers::post_norm(&layer.bn_attn, &a, &h, &layer.attn_ln, ctx)?;
            let i = cfg.act.apply(&layer.intermediate.forward(&a, ctx)?)?;
            let o = ctx.dropout(&layer.output.forward(&i, ctx)?, cfg.hidden_dropout)?;
            h = super::layers::post_norm(&layer.bn_out, &o, &a, &layer.output_ln, ctx)?;
        }
        let h = match ctx.layer(&h)? {
            Flow::Run(x) => x,
            Flow::Skip => h,
            Flow::Stop(x) => return Ok(x),
        };
        match (&self.pooler, &self.classifier) {
            (Some(p), Some(c)) => {
                let first = h.narrow(1, 0, 1)?.squeeze(1)?;
                let pooled = p.forward(&first, ctx)?.tanh()?;
                let pooled = ctx.dropout(&pooled, cfg.hidden_dropout)?;
                c.forward(&pooled, ctx)
            }
            _ => Ok(h),
        }
    }

    fn visit(&mut self, f: &mut dyn FnMut(&str, ModuleMut<'_>)) {
        let pre = self.prefix.clone();
        let e = format!("{pre}embeddings");
        f(
            &format!("{e}.word_embeddings"),
            ModuleMut::Embedding(&mut self.word_embeddings),
        );
        f(
            &format!("{e}.position_embeddings"),
            ModuleMut::Embedding(&mut self.position_embeddings),
        );
        f(
            &format!("{e}.token_type_embeddings"),
            ModuleMut::Embedding(&mut self.token_type_embeddings),
        );
        f(&format!("{e}.LayerNorm"), ModuleMut::Norm(&mut self.emb_ln));
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("{pre}encoder.layer.{i}");
            f(
                &format!("{p}.attention.self.query"),
                ModuleMut::Linear(&mut l.query),
            );
            f(
                &format!("{p}.attention.self.key"),
                ModuleMut::Linear(&mut l.key),
            );
            f(
                &format!("{p}.attention.self.value"),
                ModuleMut::Linear(&mut l.value),
            );
            f(
                &format!("{p}.attention.output.dense"),
                ModuleMut::Linear(&mut l.attn_out),
            );
            f(
                &format!("{p}.attention.output.LayerNorm"),
                ModuleMut::Norm(&mut l.attn_ln),
            );
            f(
                &format!("{p}.attention.output.adapters"),
                ModuleMut::Bottleneck(&mut l.bn_attn, BnPlace::Attention),
            );
            f(
                &format!("{p}.intermediate.dense"),
                ModuleMut::Linear(&mut l.intermediate),
            );
            f(
                &format!("{p}.output.dense"),
                ModuleMut::Linear(&mut l.output),
            );
            f(
                &format!("{p}.output.LayerNorm"),
                ModuleMut::Norm(&mut l.output_ln),
            );
            f(
                &format!("{p}.output.adapters"),
                ModuleMut::Bottleneck(&mut l.bn_out, BnPlace::Output),
            );
        }
        if let Some(p) = &mut self.pooler {
            f(&format!("{pre}pooler.dense"), ModuleMut::Linear(p));
        }
        if let Some(c) = &mut self.classifier {
            f("classifier", ModuleMut::Linear(c));
        }
    }

    fn tied(&self) -> bool {
        false
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.word_embeddings
    }

    fn head_modules(&self) -> Vec<String> {
        if self.classifier.is_some() {
            vec!["classifier".into()]
        } else {
            Vec::new()
        }
    }
}
