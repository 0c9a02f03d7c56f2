//! Text generation with a KV cache: greedy or sampled (temperature, top-p, seed), stop strings,
//! for causal models with any attached adapters (prefix/prompt included).

use super::{Model, Past, Task};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, D};
use candle_transformers::generation::{LogitsProcessor, Sampling};

#[derive(Clone, Debug)]
pub struct GenOpts {
    pub max_tokens: usize,
    /// 0 = greedy
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop: Vec<String>,
    /// the end-of-sequence token is not chosen before this many new tokens (HF's
    /// `min_new_tokens`): a generation of a known length, for timing
    pub min_tokens: usize,
}

impl Default for GenOpts {
    fn default() -> Self {
        GenOpts {
            max_tokens: 64,
            temperature: 0.0,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            min_tokens: 0,
        }
    }
}

impl Model {
    /// New token ids after `prompt_ids`; `use_cache = false` recomputes every step in full (for
    /// checking the cache).
    pub fn generate_ids(
        &self,
        prompt_ids: &[u32],
        o: &GenOpts,
        use_cache: bool,
        mut on_token: impl FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        if self.task() != Task::CausalLm {
            return Err(Error::msg("generate needs a causal language model"));
        }
        if prompt_ids.is_empty() {
            return Err(Error::msg("generate: empty prompt"));
        }
        let sampling = if o.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match o.top_p {
                Some(p) if p < 1.0 => Sampling::TopP {
                    p,
                    temperature: o.temperature,
                },
                _ => Sampling::All {
                    temperature: o.temperature,
                },
            }
        };
        let mut lp = LogitsProcessor::from_sampling(o.seed, sampling);
        let eos = self.tokenizer.as_ref().and_then(|t| t.eos);
        let ctx = self.ctx(false, 0);
        let mut past = Past::new(self.arch.dims().layers, true);
        let mut all: Vec<u32> = prompt_ids.to_vec();
        let mut out = Vec::new();
        let mut next_input: Vec<u32> = prompt_ids.to_vec();
        for _ in 0..o.max_tokens {
            crate::cancel::check()?;
            let logits = if use_cache {
                let ids = Tensor::new(next_input.as_slice(), &self.device)?.unsqueeze(0)?;
                self.forward_with(&ids, None, None, &ctx, Some(&mut past))?
            } else {
                let ids = Tensor::new(all.as_slice(), &self.device)?.unsqueeze(0)?;
                self.forward_with(&ids, None, None, &ctx, None)?
            };
            let last = logits
                .narrow(1, logits.dim(1)? - 1, 1)?
                .squeeze(1)?
                .squeeze(0)?;
            let mut last = last.to_dtype(DType::F32)?;
            if let Some(e) = eos.filter(|_| out.len() < o.min_tokens) {
                let mut v = last.to_vec1::<f32>()?;
                if let Some(x) = v.get_mut(e as usize) {
                    *x = f32::NEG_INFINITY;
                }
                last = Tensor::new(v, last.device())?;
            }
            let tok = lp.sample(&last)?;
            out.push(tok);
            all.push(tok);
            next_input = vec![tok];
            if Some(tok) == eos || !on_token(&out) {
                break;
            }
        }
        Ok(out)
    }

    /// Greedy argmax of the last position (for tests).
    pub fn next_token_argmax(logits: &Tensor) -> Result<u32> {
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.squeeze(1)?;
        Ok(last.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0])
    }

    /// Generated text after `prompt`, cut at the first stop string, and how many tokens were
    /// generated for it (the stop string's included: they were computed).
    pub fn generate(&self, prompt: &str, o: &GenOpts) -> Result<(String, usize)> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::msg("generate needs a tokenizer (the model directory has no tokenizer.json)")
        })?;
        let ids = tok.encode(prompt, true)?;
        let stop = o.stop.clone();
        let ids = self.generate_ids(&ids, o, true, |so_far| {
            if stop.is_empty() {
                return true;
            }
            let text = tok.decode(so_far, true).unwrap_or_default();
            !stop.iter().any(|s| text.contains(s.as_str()))
        })?;
        let mut text = tok.decode(&ids, true)?;
        if let Some(cut) = o.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        Ok((text, ids.len()))
    }
}
