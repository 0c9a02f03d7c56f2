//! Prefix tuning: learned keys/values prepended in every layer's attention (PEFT's
//! `prompt_encoder`, `[tokens, layers·2·kv_heads·head_dim]`, optionally through an MLP).

use super::registry::{Config, InputMethod, Opt, Spec};
use crate::error::{Error, Result};
use crate::model::{Ctx, Dims, InputAdapter, Model, Param};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

pub struct PrefixTuning;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "num_virtual_tokens",
        ty: "integer",
        default: "20",
        doc: "virtual tokens per layer",
    },
    Opt {
        key: "encoder_hidden_size",
        ty: "integer|boolean",
        default: "false",
        doc: "reparametrise through an MLP of this hidden size (true: the model's)",
    },
];

const SPEC: Spec = Spec {
    name: "prefix",
    peft_type: "PREFIX_TUNING",
    doc: "Attaches prefix tuning",
    options: OPTIONS,
    config_extras: "{}",
    lua_names: &[
        ("tokens", "num_virtual_tokens"),
        ("projection", "encoder_hidden_size"),
    ],
    lua_values: &[],
};

/// The MLP's hidden size, if any: `encoder_hidden_size` false (none), true (the model's) or a size.
fn projection(cfg: &Config, hidden: usize) -> Result<Option<usize>> {
    match cfg.get("encoder_hidden_size") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(hidden)),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(Error::msg(format!(
                "projection must be a hidden size or true, got {v}"
            ))),
        },
    }
}

impl InputMethod for PrefixTuning {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        if super::registry::int(cfg, "num_virtual_tokens") < 1 {
            return Err(Error::msg("tokens must be at least 1"));
        }
        projection(cfg, 1).map(|_| ())
    }
    fn attach(&self, cfg: &Config, m: &Model) -> Result<Box<dyn InputAdapter>> {
        let dims = m.arch.dims();
        let tokens = super::registry::int(cfg, "num_virtual_tokens") as usize;
        let proj = projection(cfg, dims.hidden)?;
        Ok(Box::new(Prefix::init(
            tokens, &dims, proj, m.seed, &m.device,
        )?))
    }
    fn peft_config(&self, cfg: &Config, m: &Model) -> Value {
        let dims = m.arch.dims();
        let token_dim = dims.kv_heads * dims.head_dim;
        let proj = projection(cfg, dims.hidden).ok().flatten();
        json!({
            "encoder_hidden_size": proj.unwrap_or(token_dim),
            "init_weights": null, "num_attention_heads": dims.kv_heads, "num_layers": dims.layers,
            "num_transformer_submodules": 1, "num_virtual_tokens": cfg["num_virtual_tokens"],
            "prefix_projection": proj.is_some(), "token_dim": token_dim,
        })
    }
    /// The saved `prompt_embeddings` are the projected prefixes (PEFT saves them so for
    /// inference): read back without the MLP.
    fn settings_from_peft(&self, peft: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(n) = peft.get("num_virtual_tokens") {
            out.insert("num_virtual_tokens".into(), n.clone());
        }
        out
    }
}

pub struct Prefix {
    pub tokens: usize,
    /// `prompt_encoder.embedding.weight`: `[tokens, layers·2·token_dim]`, or `[tokens, token_dim]`
    /// with a projection
    pub embedding: Param,
    /// `transform.0` (token_dim → hidden) and `transform.2` (hidden → layers·2·token_dim)
    pub projection: Option<[Param; 4]>,
}

impl Prefix {
    /// New random prefixes (N(0, 1), as `nn.Embedding`); the projection as `nn.Linear` inits.
    pub fn init(
        tokens: usize,
        dims: &Dims,
        projection: Option<usize>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        use crate::peft::lora::{normal, rng_for, uniform};
        let token_dim = dims.kv_heads * dims.head_dim;
        let out = dims.layers * 2 * token_dim;
        let mut rng = rng_for(seed, "prompt_encoder");
        let mk = |v: Vec<f32>, shape: &[usize]| -> Result<Param> {
            Param::trainable(&Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
        };
        let emb_dim = if projection.is_some() { token_dim } else { out };
        let h = projection.unwrap_or(0);
        crate::model::param::ensure_fits(
            "num_virtual_tokens",
            &[&[tokens, emb_dim], &[h, token_dim], &[out, h]],
        )?;
        let embedding = mk(normal(&mut rng, tokens * emb_dim, 1.0), &[tokens, emb_dim])?;
        let projection = match projection {
            None => None,
            Some(h) => {
                let b1 = 1.0 / (token_dim as f32).sqrt();
                let b2 = 1.0 / (h as f32).sqrt();
                Some([
                    mk(uniform(&mut rng, h * token_dim, b1), &[h, token_dim])?,
                    mk(uniform(&mut rng, h, b1), &[h])?,
                    mk(uniform(&mut rng, out * h, b2), &[out, h])?,
                    mk(uniform(&mut rng, out, b2), &[out])?,
                ])
            }
        };
        Ok(Prefix {
            tokens,
            embedding,
            projection,
        })
    }

    /// `[tokens, layers·2·token_dim]`: what PEFT saves as `prompt_embeddings`.
    pub fn flat(&self, ctx: &Ctx) -> Result<Tensor> {
        let e = self.embedding.get(ctx);
        // plain candle ops, not the device path's recorded ones: every layer's keys and values are
        // slices of this one output and are backpropagated in that layer's segment, so the
        // projection's gradient has to reach its weights from each segment (a recorded op would
        // sit in the lowest segment's tape only, and the upper layers' share would be lost)
        let lin = |x: &Tensor, w: &Param, b: &Param| -> Result<Tensor> {
            Ok(x.matmul(&w.get(ctx).t()?)?.broadcast_add(&b.get(ctx))?)
        };
        Ok(match &self.projection {
            None => e,
            Some([w1, b1, w2, b2]) => lin(&lin(&e, w1, b1)?.tanh()?, w2, b2)?,
        })
    }

    /// Per layer `(k, v)`, each `[b, tokens, kv_heads, head_dim]`, no rotary embedding.
    pub fn past_key_values(
        &self,
        b: usize,
        dims: &Dims,
        dtype: DType,
        ctx: &Ctx,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let flat = self.flat(ctx)?.to_dtype(dtype)?;
        let d = dims.kv_heads * dims.head_dim;
        let (n, width) = flat.dims2()?;
        if width != dims.layers * 2 * d {
            return Err(crate::error::Error::msg(format!(
                "prefix has width {width}, the model needs layers·2·kv_heads·head_dim = {}",
                dims.layers * 2 * d
            )));
        }
        let shape = (b, n, dims.kv_heads, dims.head_dim);
        (0..dims.layers)
            .map(|l| {
                let k =
                    flat.narrow(1, 2 * l * d, d)?
                        .reshape((1, n, dims.kv_heads, dims.head_dim))?;
                let v = flat.narrow(1, (2 * l + 1) * d, d)?.reshape((
                    1,
                    n,
                    dims.kv_heads,
                    dims.head_dim,
                ))?;
                Ok((
                    k.broadcast_as(shape)?.contiguous()?,
                    v.broadcast_as(shape)?.contiguous()?,
                ))
            })
            .collect()
    }
}

impl crate::model::InputAdapter for Prefix {
    fn tokens(&self) -> usize {
        self.tokens
    }

    fn prefix_kv(
        &self,
        b: usize,
        dims: &Dims,
        dtype: DType,
        ctx: &Ctx,
    ) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        self.past_key_values(b, dims, dtype, ctx).map(Some)
    }

    fn saved_embeddings(&self, ctx: &Ctx) -> Result<Tensor> {
        self.flat(ctx)
    }

    fn params(&self) -> Vec<(String, Param)> {
        let mut v = vec![(
            "prompt_encoder.embedding.weight".to_string(),
            self.embedding.clone(),
        )];
        if let Some([w1, b1, w2, b2]) = &self.projection {
            v.push(("prompt_encoder.transform.0.weight".into(), w1.clone()));
            v.push(("prompt_encoder.transform.0.bias".into(), b1.clone()));
            v.push(("prompt_encoder.transform.2.weight".into(), w2.clone()));
            v.push(("prompt_encoder.transform.2.bias".into(), b2.clone()));
        }
        v
    }
}
