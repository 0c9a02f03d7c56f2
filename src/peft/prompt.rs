//! Prompt tuning: learned virtual token embeddings placed before the input embeddings.

use super::registry::{Config, InputMethod, Opt, Spec};
use crate::error::{Error, Result};
use crate::model::{Ctx, InputAdapter, Model, Param};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};

pub struct PromptTuning;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "num_virtual_tokens",
        ty: "integer",
        default: "20",
        doc: "virtual tokens",
    },
    Opt {
        key: "prompt_tuning_init_text",
        ty: "string",
        default: "null",
        doc: "initialise from this text's embeddings (PEFT's TEXT init)",
    },
];

const SPEC: Spec = Spec {
    name: "prompt",
    peft_type: "PROMPT_TUNING",
    doc: "Attaches prompt tuning",
    options: OPTIONS,
    config_extras: "{}",
    lua_names: &[
        ("tokens", "num_virtual_tokens"),
        ("init_text", "prompt_tuning_init_text"),
    ],
    lua_values: &[],
};

fn init_text(cfg: &Config) -> Option<&str> {
    cfg.get("prompt_tuning_init_text").and_then(|v| v.as_str())
}

impl InputMethod for PromptTuning {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn suggested_lr(&self) -> &'static str {
        "3e-2"
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        if super::registry::int(cfg, "num_virtual_tokens") < 1 {
            return Err(Error::msg("tokens must be at least 1"));
        }
        Ok(())
    }
    fn attach(&self, cfg: &Config, m: &Model) -> Result<Box<dyn InputAdapter>> {
        let tokens = super::registry::int(cfg, "num_virtual_tokens") as usize;
        crate::model::param::ensure_fits("num_virtual_tokens", &[&[tokens, m.arch.dims().hidden]])?;
        let init = match init_text(cfg) {
            None => None,
            Some(text) => {
                let tok = m
                    .tokenizer
                    .as_ref()
                    .ok_or_else(|| Error::msg("init_text needs the model's tokenizer"))?;
                let mut ids = tok.encode(text, false)?;
                if ids.is_empty() {
                    return Err(Error::msg("init_text encodes to no tokens"));
                }
                // PEFT repeats the text's tokens to fill, then truncates
                let reps = tokens.div_ceil(ids.len());
                ids = ids.repeat(reps);
                ids.truncate(tokens);
                let idx = Tensor::new(ids, &m.device)?.unsqueeze(0)?;
                let e = m.arch.word_embeddings().forward(&idx, &Ctx::base())?;
                Some(e.squeeze(0)?.detach())
            }
        };
        let hidden = m.arch.dims().hidden;
        Ok(Box::new(Prompt::init(
            tokens, hidden, init, m.seed, &m.device,
        )?))
    }
    fn peft_config(&self, cfg: &Config, m: &Model) -> Value {
        let dims = m.arch.dims();
        let text = init_text(cfg);
        let base = m
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| m.arch.model_type().to_string());
        json!({
            "num_attention_heads": dims.heads, "num_layers": dims.layers, "num_transformer_submodules": 1,
            "num_virtual_tokens": cfg["num_virtual_tokens"],
            "prompt_tuning_init": if text.is_some() { "TEXT" } else { "RANDOM" },
            "prompt_tuning_init_text": text, "token_dim": dims.hidden, "tokenizer_kwargs": null,
            "tokenizer_name_or_path": if text.is_some() { json!(base) } else { Value::Null }
        })
    }
    fn settings_from_peft(&self, peft: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(n) = peft.get("num_virtual_tokens") {
            out.insert("num_virtual_tokens".into(), n.clone());
        }
        if peft.get("prompt_tuning_init").and_then(|v| v.as_str()) == Some("TEXT") {
            if let Some(t) = peft.get("prompt_tuning_init_text") {
                out.insert("prompt_tuning_init_text".into(), t.clone());
            }
        }
        out
    }
}

pub struct Prompt {
    pub tokens: usize,
    /// `prompt_encoder.embedding.weight` `[tokens, hidden]`
    pub embedding: Param,
}

impl Prompt {
    /// Random N(0, 1) embeddings (`nn.Embedding`), or `init` rows (the TEXT init).
    pub fn init(
        tokens: usize,
        hidden: usize,
        init: Option<Tensor>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let t = match init {
            Some(t) => t.to_dtype(candle_core::DType::F32)?,
            None => {
                let mut rng = crate::peft::lora::rng_for(seed, "prompt_encoder");
                let v = crate::peft::lora::normal(&mut rng, tokens * hidden, 1.0);
                Tensor::from_vec(v, (tokens, hidden), &Device::Cpu)?.to_device(device)?
            }
        };
        Ok(Prompt {
            tokens,
            embedding: Param::trainable(&t)?,
        })
    }
}

impl crate::model::InputAdapter for Prompt {
    fn tokens(&self) -> usize {
        self.tokens
    }

    /// `[b, tokens, hidden]`
    fn embeddings(&self, b: usize, ctx: &Ctx) -> Result<Option<Tensor>> {
        let e = self.embedding.get(ctx);
        let (n, h) = e.dims2()?;
        Ok(Some(e.unsqueeze(0)?.broadcast_as((b, n, h))?.contiguous()?))
    }

    fn saved_embeddings(&self, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.embedding.get(ctx))
    }

    fn params(&self) -> Vec<(String, Param)> {
        vec![(
            "prompt_encoder.embedding.weight".to_string(),
            self.embedding.clone(),
        )]
    }
}
