//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks, Conv1D weights stored
//! `[in, out]`, fused `c_attn`, output embedding tied to `wte` (unless the config unties it).

use super::config::Cfg;
use super::hub::{Init, Source};
use super::layers::{Embedding, Linear, Norm, NormKind};
use super::{Arch, BnPlace, Ctx, Dims, Flow, ModuleMut, Past, Task};
use crate::error::{Error, Result};
use crate::ops::{self, Activation, AttnMask};
use candle_core::{Device, Tensor};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Gpt2Config {
    pub vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: usize,
    pub n_positions: usize,
    pub eps: f64,
    pub act: Activation,
    pub scale_attn_weights: bool,
    pub scale_by_layer: bool,
    pub embd_pdrop: f32,
    pub resid_pdrop: f32,
    pub init_std: f64,
    /// `tie_word_embeddings` (GPT-2's default); false after folding a `modules_to_save` head
    pub tie: bool,
}

fn conv1d(src: &dyn Source, path: &str, inp: usize, out: usize, std: f64) -> Result<Linear> {
    let w = src.param(&format!("{path}.weight"), &[inp, out], Init::Normal(std))?;
    let b = src.param(&format!("{path}.bias"), &[out], Init::Zeros)?;
    Ok(Linear::new(w, Some(b), true))
}

fn ln(src: &dyn Source, path: &str, n: usize, eps: f64) -> Result<Norm> {
    Ok(Norm {
        weight: src.param(&format!("{path}.weight"), &[n], Init::Ones)?,
        bias: Some(src.param(&format!("{path}.bias"), &[n], Init::Zeros)?),
        eps,
        kind: NormKind::Layer,
    })
}

pub struct Block {
    pub ln_1: Norm,
    pub c_attn: Linear,
    pub attn_c_proj: Linear,
    pub ln_2: Norm,
    pub c_fc: Linear,
    pub mlp_c_proj: Linear,
    pub bn_attn: super::layers::BlockSlot,
    pub bn_out: super::layers::BlockSlot,
}

pub struct Gpt2 {
    pub cfg: Gpt2Config,
    pub wte: Embedding,
    pub wpe: Embedding,
    pub h: Vec<Block>,
    pub ln_f: Norm,
    pub lm_head: Linear,
}

impl Gpt2 {
    pub fn load(c: &Cfg, src: &dyn Source) -> Result<Self> {
        let n_embd = c.usize("n_embd")?;
        let n_head = c.usize("n_head")?;
        c.divides("n_head", n_embd, n_head)?;
        let cfg = Gpt2Config {
            vocab: c.usize("vocab_size")?,
            n_layer: c.usize("n_layer")?,
            n_inner: c.usize_or("n_inner", 4 * n_embd)?,
            n_positions: c.usize_or("n_positions", 1024)?,
            eps: c.f64_or("layer_norm_epsilon", 1e-5)?,
            act: c.activation("activation_function", "gelu_new")?,
            scale_attn_weights: c.bool_or("scale_attn_weights", true)?,
            scale_by_layer: c.bool_or("scale_attn_by_inverse_layer_idx", false)?,
            embd_pdrop: c.f64_or("embd_pdrop", 0.1)? as f32,
            resid_pdrop: c.f64_or("resid_pdrop", 0.1)? as f32,
            init_std: c.f64_or("initializer_range", 0.02)?,
            tie: c.bool_or("tie_word_embeddings", true)?,
            n_embd,
            n_head,
        };
        let (e, std) = (cfg.n_embd, cfg.init_std);
        let wte = src.param("transformer.wte.weight", &[cfg.vocab, e], Init::Normal(std))?;
        let wpe = src.param(
            "transformer.wpe.weight",
            &[cfg.n_positions, e],
            Init::Normal(std),
        )?;
        // grown as the blocks load: a config's count is not trusted before its weights exist
        let mut h = Vec::new();
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            h.push(Block {
                ln_1: ln(src, &format!("{p}.ln_1"), e, cfg.eps)?,
                c_attn: conv1d(src, &format!("{p}.attn.c_attn"), e, 3 * e, std)?,
                attn_c_proj: conv1d(src, &format!("{p}.attn.c_proj"), e, e, std)?,
                ln_2: ln(src, &format!("{p}.ln_2"), e, cfg.eps)?,
                c_fc: conv1d(src, &format!("{p}.mlp.c_fc"), e, cfg.n_inner, std)?,
                mlp_c_proj: conv1d(src, &format!("{p}.mlp.c_proj"), cfg.n_inner, e, std)?,
                bn_attn: Vec::new(),
                bn_out: Vec::new(),
            });
        }
        // untied: transformers' GPT2LMHeadModel reads its own `lm_head.weight`
        let head = if cfg.tie {
            wte.clone()
        } else {
            src.param("lm_head.weight", &[cfg.vocab, e], Init::Normal(std))?
        };
        Ok(Gpt2 {
            lm_head: Linear::new(head, None, false),
            wte: Embedding::new(wte),
            wpe: Embedding::new(wpe),
            ln_f: ln(src, "transformer.ln_f", e, cfg.eps)?,
            h,
            cfg,
        })
    }
}

impl Arch for Gpt2 {
    fn model_type(&self) -> &str {
        "gpt2"
    }

    fn task(&self) -> Task {
        Task::CausalLm
    }

    fn dims(&self) -> Dims {
        Dims {
            hidden: self.cfg.n_embd,
            layers: self.cfg.n_layer,
            heads: self.cfg.n_head,
            kv_heads: self.cfg.n_head,
            head_dim: self.cfg.n_embd / self.cfg.n_head,
            vocab: self.cfg.vocab,
        }
    }

    fn embed(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.wte.forward(ids, ctx)
    }

    fn forward_embeds(
        &self,
        h: &Tensor,
        key_mask: &[u8],
        _types: Option<&Tensor>,
        past: &mut Past,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, t, e) = h.dims3()?;
        let cfg = &self.cfg;
        if past.len + t > cfg.n_positions {
            return Err(Error::msg(format!(
                "sequence of {} positions exceeds GPT-2's n_positions {}",
                past.len + t,
                cfg.n_positions
            )));
        }
        let pos: Vec<u32> = (past.len..past.len + t).map(|p| p as u32).collect();
        let pos = Tensor::from_vec(pos, (1, t), &Device::Cpu)?.to_device(h.device())?;
        let pe = self.wpe.forward(&pos, ctx)?;
        let mut h = ctx.dropout(&h.broadcast_add(&pe)?, cfg.embd_pdrop)?;
        let key_valid = Arc::new(key_mask.to_vec());
        let mask = AttnMask::new(true, past.len, Some(key_valid), None);
        let (nh, hd) = (cfg.n_head, e / cfg.n_head);
        for (l, blk) in self.h.iter().enumerate() {
            h = match ctx.layer(&h)? {
                Flow::Run(x) => x,
                Flow::Skip => continue,
                Flow::Stop(x) => return Ok(x),
            };
            let x = blk.ln_1.forward(&h, ctx)?;
            let qkv = blk.c_attn.forward(&x, ctx)?;
            let q = qkv.narrow(2, 0, e)?.reshape((b, t, nh, hd))?;
            let k = qkv.narrow(2, e, e)?.reshape((b, t, nh, hd))?;
            let v = qkv.narrow(2, 2 * e, e)?.reshape((b, t, nh, hd))?;
            let (k, v) = past.extend(l, k, v)?;
            let mut scale = if cfg.scale_attn_weights {
                1.0 / (hd as f32).sqrt()
            } else {
                1.0
            };
            if cfg.scale_by_layer {
                scale /= (l + 1) as f32;
            }
            let o = ops::reshape(&ops::attention(&q, &k, &v, &mask, scale)?, (b, t, e))?;
            let a = ctx.dropout(&blk.attn_c_proj.forward(&o, ctx)?, cfg.resid_pdrop)?;
            h = super::layers::pre_norm(&blk.bn_attn, &a, &h, ctx)?;
            let x = blk.ln_2.forward(&h, ctx)?;
            let m = cfg.act.apply(&blk.c_fc.forward(&x, ctx)?)?;
            let m = ctx.dropout(&blk.mlp_c_proj.forward(&m, ctx)?, cfg.resid_pdrop)?;
            h = super::layers::pre_norm(&blk.bn_out, &m, &h, ctx)?;
        }
        let h = match ctx.layer(&h)? {
            Flow::Run(x) => x,
            Flow::Skip => h,
            Flow::Stop(x) => return Ok(x),
        };
        let h = self.ln_f.forward(&h, ctx)?;
        self.lm_head.forward(&h, ctx)
    }

    fn visit(&mut self, f: &mut dyn FnMut(&str, ModuleMut<'_>)) {
        f("transformer.wte", ModuleMut::Embedding(&mut self.wte));
        f("transformer.wpe", ModuleMut::Embedding(&mut self.wpe));
        for (i, b) in self.h.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}");
            f(&format!("{p}.ln_1"), ModuleMut::Norm(&mut b.ln_1));
            f(
                &format!("{p}.attn.c_attn"),
                ModuleMut::Linear(&mut b.c_attn),
            );
            f(
                &format!("{p}.attn.c_proj"),
                ModuleMut::Linear(&mut b.attn_c_proj),
            );
            f(&format!("{p}.ln_2"), ModuleMut::Norm(&mut b.ln_2));
            f(&format!("{p}.mlp.c_fc"), ModuleMut::Linear(&mut b.c_fc));
            f(
                &format!("{p}.mlp.c_proj"),
                ModuleMut::Linear(&mut b.mlp_c_proj),
            );
            f(
                &format!("{p}.attention_adapters.adapters"),
                ModuleMut::Bottleneck(&mut b.bn_attn, BnPlace::Attention),
            );
            f(
                &format!("{p}.output_adapters.adapters"),
                ModuleMut::Bottleneck(&mut b.bn_out, BnPlace::Output),
            );
        }
        f("transformer.ln_f", ModuleMut::Norm(&mut self.ln_f));
        f("lm_head", ModuleMut::Linear(&mut self.lm_head));
    }

    fn tied(&self) -> bool {
        self.cfg.tie
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.wte
    }

    fn head_modules(&self) -> Vec<String> {
        vec!["lm_head".into()]
    }
}
