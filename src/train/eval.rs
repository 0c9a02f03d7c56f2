//! Evaluation: loss, perplexity and accuracy over a dataset, and the hook that evaluates during a
//! training (every `eval_every` steps and after the last).

use super::{lock, loss_sum, prepare, EvalInfo, Hook, StepInfo, TrainResult};
use crate::data::{batch_indices, Batch, Dataset, Example};
use crate::error::Result;
use crate::model::Model;
use candle_core::{DType, D};
use std::sync::{Arc, Mutex};

/// Loss, perplexity and (classification) accuracy over `data`.
pub fn evaluate(
    model: &Arc<Mutex<Model>>,
    data: &Dataset,
    batch_size: usize,
    max_len: Option<usize>,
) -> Result<EvalInfo> {
    let (ex, pad) = prepare(model, data, max_len)?;
    evaluate_examples(model, &ex, pad, batch_size, 0)
}

fn evaluate_examples(
    model: &Mutex<Model>,
    ex: &[Example],
    pad: u32,
    batch_size: usize,
    step: usize,
) -> Result<EvalInfo> {
    let m = lock(model);
    let ctx = m.ctx(false, 0);
    let (mut sum, mut n, mut correct) = (0f64, 0usize, 0usize);
    let cls = ex.first().is_some_and(|e| e.class.is_some());
    for idx in batch_indices(ex, batch_size.max(1), None, false) {
        crate::cancel::check()?;
        let b = Batch::collate(
            &idx.iter().map(|&i| ex[i].clone()).collect::<Vec<_>>(),
            pad,
            &m.device,
        )?;
        let logits = m.forward_with(&b.ids, Some(&b.mask), b.types.as_ref(), &ctx, None)?;
        sum += loss_sum(&logits, &b)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        n += b.loss_tokens();
        if cls {
            let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            correct += pred
                .iter()
                .zip(&b.labels)
                .filter(|(p, l)| **p as i64 == **l)
                .count();
        }
    }
    let loss = sum / n.max(1) as f64;
    Ok(EvalInfo {
        step,
        loss,
        perplexity: loss.exp(),
        accuracy: cls.then(|| correct as f64 / ex.len().max(1) as f64),
    })
}

/// Evaluates held-out data during a training: every `every` steps and after the last step; the
/// last loss becomes the result's `eval_loss`.
pub struct Evaluation {
    model: Arc<Mutex<Model>>,
    examples: Vec<Example>,
    pad: u32,
    batch_size: usize,
    every: Option<usize>,
    last: Option<f64>,
}

impl Evaluation {
    /// Tokenizes `data` as the training data is (`pad` is the training's).
    pub fn new(
        model: &Arc<Mutex<Model>>,
        data: &Dataset,
        pad: u32,
        o: &super::TrainOpts,
    ) -> Result<Evaluation> {
        Ok(Evaluation {
            model: model.clone(),
            examples: prepare(model, data, o.max_len)?.0,
            pad,
            batch_size: o.eval_batch_size,
            every: o.eval_every,
            last: None,
        })
    }
}

impl Hook for Evaluation {
    fn measure(&mut self, s: &StepInfo) -> Result<Option<EvalInfo>> {
        let due = self.every.is_some_and(|e| s.step.is_multiple_of(e)) || s.step == s.total_steps;
        if !due {
            return Ok(None);
        }
        let e = evaluate_examples(
            &self.model,
            &self.examples,
            self.pad,
            self.batch_size,
            s.step,
        )?;
        self.last = Some(e.loss);
        Ok(Some(e))
    }

    fn on_end(&mut self, res: &mut TrainResult) -> Result<()> {
        res.eval_loss = self.last;
        Ok(())
    }
}
