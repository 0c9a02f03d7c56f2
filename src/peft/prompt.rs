//! Prompt tuning: learned virtual token embeddings placed before the input embeddings.

use crate::error::Result;
use crate::model::{Ctx, Param};
use candle_core::{Device, Tensor};

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
