//! Datasets: records from text files, JSONL (text, instruction, chat, classification), Lua tables
//! or ready token tensors; tokenized lazily with the model's tokenizer (so `split`/`shuffle`
//! come before knowing it), then padded into batches.

pub mod chat;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const IGNORE: i64 = -100;

/// The Alpaca prompt, with and without an input.
pub const ALPACA_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
pub const ALPACA: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

#[derive(Clone, Debug, Hash)]
pub enum Record {
    Text(String),
    Instruction {
        instruction: String,
        input: String,
        output: String,
    },
    Chat(Vec<(String, String)>),
    Classification {
        text: String,
        pair: Option<String>,
        label: Label,
    },
}

#[derive(Clone, Debug, Hash)]
pub enum Label {
    Id(i64),
    Name(String),
}

/// One tokenized example.
#[derive(Clone, Debug, Default)]
pub struct Example {
    pub ids: Vec<u32>,
    /// per token, -100 where no loss is taken (causal LM)
    pub labels: Vec<i64>,
    pub types: Option<Vec<u32>>,
    /// the class (classification)
    pub class: Option<i64>,
}

#[derive(Clone, Debug)]
enum Source {
    Records(Arc<Vec<Record>>),
    /// plain text documents, cut into blocks after tokenizing
    Text {
        docs: Arc<Vec<String>>,
        block: usize,
    },
    Examples(Arc<Vec<Example>>),
}

#[derive(Clone, Debug)]
enum Op {
    Split {
        frac: f64,
        seed: Option<u64>,
        first: bool,
    },
    Shuffle(u64),
}

/// Tokenized sources kept across runs (`ftl watch`), by a hash of what tokenizing read.
struct Kept {
    examples: Arc<Vec<Example>>,
    /// the tokenizer whose address is in the hash, kept so that no other takes it
    _vocab: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// whether a run used it since the last sweep
    used: bool,
}

static TOKENIZED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<u64, Kept>>> =
    std::sync::LazyLock::new(Default::default);

/// Drops the tokenized sources no run used since the last sweep (`crate::reuse::sweep`).
pub fn sweep_tokenized() {
    TOKENIZED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, k| std::mem::take(&mut k.used));
}

/// Settings applied when tokenizing.
#[derive(Clone, Debug, Default)]
pub struct Prep {
    pub bos: Option<bool>,
    pub eos: Option<bool>,
    pub template: Option<String>,
    pub max_len: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    source: Source,
    ops: Vec<Op>,
    pub prep: Prep,
    /// for messages: the file the data came from
    pub origin: String,
    /// every file read, with a hash of what was read (the run manifest records them)
    pub files: Vec<crate::manifest::DataFile>,
}

/// What tokenizing needs from the model.
pub struct Ctx<'a> {
    pub tok: &'a Tokenizer,
    pub num_labels: Option<usize>,
    pub label2id: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

fn field(v: &serde_json::Value, k: &str, origin: &str, line: usize) -> Result<String> {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) | None => {
            Err(Error::msg(format!("{origin}:{line}: missing field `{k}`")))
        }
        Some(other) => Err(Error::msg(format!(
            "{origin}:{line}: field `{k}` must be a string, got {other}"
        ))),
    }
}

/// A record of `format` from one JSON object (line `line` of `origin`).
pub fn record(v: &serde_json::Value, format: &str, origin: &str, line: usize) -> Result<Record> {
    if !v.is_object() {
        return Err(Error::msg(format!(
            "{origin}:{line}: expected a JSON object"
        )));
    }
    Ok(match format {
        "text" => Record::Text(field(v, "text", origin, line)?),
        "instruction" => Record::Instruction {
            instruction: field(v, "instruction", origin, line)?,
            input: match v.get("input") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(_) => field(v, "input", origin, line)?,
            },
            output: field(v, "output", origin, line)?,
        },
        "chat" => {
            let msgs = v
                .get("messages")
                .and_then(|m| m.as_array())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "{origin}:{line}: missing field `messages` (a list)"
                    ))
                })?;
            let mut out = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let role = field(m, "role", origin, line)
                    .map_err(|e| Error::msg(format!("{e} (message {})", i + 1)))?;
                let content = field(m, "content", origin, line)
                    .map_err(|e| Error::msg(format!("{e} (message {})", i + 1)))?;
                out.push((role, content));
            }
            if !out.iter().any(|(r, _)| r == "assistant") {
                return Err(Error::msg(format!(
                    "{origin}:{line}: the conversation has no assistant turn to learn"
                )));
            }
            Record::Chat(out)
        }
        "classification" => {
            let label = match v.get("label") {
                Some(serde_json::Value::Number(n)) if n.is_i64() => Label::Id(n.as_i64().unwrap()),
                Some(serde_json::Value::String(s)) => Label::Name(s.clone()),
                None | Some(serde_json::Value::Null) => {
                    return Err(Error::msg(format!(
                        "{origin}:{line}: missing field `label`"
                    )))
                }
                Some(o) => {
                    return Err(Error::msg(format!(
                        "{origin}:{line}: `label` must be an integer or a name, got {o}"
                    )))
                }
            };
            let pair = match v.get("text_pair").or_else(|| v.get("text_b")) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            Record::Classification {
                text: field(v, "text", origin, line)?,
                pair,
                label,
            }
        }
        other => {
            return Err(Error::msg(format!(
                "unknown data format `{other}` (text, instruction, chat, classification)"
            )))
        }
    })
}

fn read_file(path: &Path, text: &str) -> crate::manifest::DataFile {
    crate::manifest::DataFile {
        path: path.to_path_buf(),
        sha256: crate::manifest::sha256_hex(text.as_bytes()),
    }
}

impl Dataset {
    pub fn from_records(records: Vec<Record>, origin: &str) -> Result<Self> {
        if records.is_empty() {
            return Err(Error::msg(format!("{origin}: the dataset is empty")));
        }
        Ok(Dataset {
            source: Source::Records(Arc::new(records)),
            ops: Vec::new(),
            prep: Prep::default(),
            origin: origin.to_string(),
            files: Vec::new(),
        })
    }

    pub fn from_examples(ex: Vec<Example>, origin: &str) -> Result<Self> {
        if ex.is_empty() {
            return Err(Error::msg(format!("{origin}: the dataset is empty")));
        }
        Ok(Dataset {
            source: Source::Examples(Arc::new(ex)),
            ops: Vec::new(),
            prep: Prep::default(),
            origin: origin.to_string(),
            files: Vec::new(),
        })
    }

    /// JSONL file, one record per line (blank lines skipped).
    pub fn jsonl(path: &Path, format: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let file = read_file(path, &text);
        let mut recs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::msg(format!("{origin}:{}: invalid JSON: {e}", i + 1)))?;
            recs.push(record(&v, format, &origin, i + 1)?);
        }
        let mut d = Self::from_records(recs, &origin)?;
        d.files = vec![file];
        Ok(d)
    }

    /// Plain text files (`*` and `?` in the file name), one document each, in blocks of `block`.
    pub fn text(paths: &[PathBuf], block: usize) -> Result<Self> {
        if block < 2 {
            return Err(Error::msg("text data: block must be at least 2 tokens"));
        }
        let mut docs = Vec::new();
        let mut files = Vec::new();
        for p in paths {
            let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            files.push(read_file(p, &s));
            if !s.trim().is_empty() {
                docs.push(s);
            }
        }
        let origin = paths
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if docs.is_empty() {
            return Err(Error::msg(format!("{origin}: no text")));
        }
        Ok(Dataset {
            source: Source::Text {
                docs: Arc::new(docs),
                block,
            },
            ops: Vec::new(),
            prep: Prep::default(),
            origin,
            files,
        })
    }

    /// `(train, eval)`: the first `frac` of the records (shuffled by `seed` when given) and the rest.
    pub fn split(&self, frac: f64, seed: Option<u64>) -> Result<(Dataset, Dataset)> {
        if !(0.0..=1.0).contains(&frac) {
            return Err(Error::msg(format!(
                "split: fraction {frac} is not between 0 and 1"
            )));
        }
        let mut a = self.clone();
        let mut b = self.clone();
        a.ops.push(Op::Split {
            frac,
            seed,
            first: true,
        });
        b.ops.push(Op::Split {
            frac,
            seed,
            first: false,
        });
        Ok((a, b))
    }

    pub fn shuffled(&self, seed: u64) -> Dataset {
        let mut d = self.clone();
        d.ops.push(Op::Shuffle(seed));
        d
    }

    fn apply_ops<T: Clone>(&self, mut items: Vec<T>) -> Vec<T> {
        for op in &self.ops {
            match op {
                Op::Shuffle(seed) => items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(*seed)),
                Op::Split { frac, seed, first } => {
                    if let Some(s) = seed {
                        items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(*s));
                    }
                    let k = ((items.len() as f64) * frac).round() as usize;
                    items = if *first {
                        items[..k].to_vec()
                    } else {
                        items[k..].to_vec()
                    };
                }
            }
        }
        items
    }

    /// An instruction record's prompt: the template (Alpaca's by default) filled in, the text the
    /// response follows.
    fn prompt(&self, instruction: &str, input: &str) -> String {
        let tpl = match (&self.prep.template, input.is_empty()) {
            (Some(t), _) => t.as_str(),
            (None, true) => ALPACA,
            (None, false) => ALPACA_INPUT,
        };
        tpl.replace("{instruction}", instruction)
            .replace("{input}", input)
    }

    /// The records of `jsonl`/`from` data as JSON objects with their format's fields, after the
    /// splits and shuffles (so a held-out split can be asked, not only scored).
    pub fn rows(&self) -> Result<Vec<serde_json::Value>> {
        use serde_json::json;
        let Source::Records(r) = &self.source else {
            return Err(Error::msg(format!(
                "{}: only jsonl and from datasets have rows (text and token data are blocks of tokens)",
                self.origin
            )));
        };
        Ok(self
            .apply_ops(r.as_ref().clone())
            .into_iter()
            .map(|rec| match rec {
                Record::Text(t) => json!({ "text": t }),
                Record::Instruction { instruction, input, output } => {
                    let prompt = self.prompt(&instruction, &input);
                    json!({ "instruction": instruction, "input": input, "output": output, "prompt": prompt })
                }
                Record::Chat(m) => json!({
                    "messages": m.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect::<Vec<_>>()
                }),
                Record::Classification { text, pair, label } => {
                    let label = match label {
                        Label::Id(i) => json!(i),
                        Label::Name(n) => json!(n),
                    };
                    match pair {
                        Some(p) => json!({ "text": text, "pair": p, "label": label }),
                        None => json!({ "text": text, "label": label }),
                    }
                }
            })
            .collect())
    }

    /// Number of examples; text data needs the tokenizer to count its blocks.
    pub fn len(&self, tok: Option<&Tokenizer>) -> Result<usize> {
        match &self.source {
            Source::Records(r) => Ok(self.apply_ops((0..r.len()).collect()).len()),
            Source::Examples(e) => Ok(self.apply_ops((0..e.len()).collect()).len()),
            Source::Text { .. } => match tok {
                Some(t) => Ok(self.examples(&Ctx { tok: t, num_labels: None, label2id: None })?.len()),
                None => Err(Error::msg("the length of text data is its number of blocks: pass the tokenizer, d:len(m.tokenizer)")),
            },
        }
    }

    pub fn is_classification(&self) -> bool {
        match &self.source {
            Source::Records(r) => matches!(r.first(), Some(Record::Classification { .. })),
            Source::Examples(e) => e.first().is_some_and(|x| x.class.is_some()),
            Source::Text { .. } => false,
        }
    }

    /// The tokenized examples, in order.
    pub fn examples(&self, c: &Ctx) -> Result<Vec<Example>> {
        let ex: Vec<Example> = match &self.source {
            Source::Examples(e) => e.as_ref().clone(),
            _ => self.tokenized(c)?.as_ref().clone(),
        };
        let mut ex = self.apply_ops(ex);
        if let Some(m) = self.prep.max_len {
            for e in &mut ex {
                e.ids.truncate(m);
                e.labels.truncate(m);
                if let Some(t) = &mut e.types {
                    t.truncate(m);
                }
            }
        }
        if ex.is_empty() {
            return Err(Error::msg(format!("{}: the dataset is empty", self.origin)));
        }
        Ok(ex)
    }

    /// The source tokenized, before splits, shuffles and truncation; under `ftl watch` kept for
    /// the next run while the records, the tokenizer and the settings stay the same.
    fn tokenized(&self, c: &Ctx) -> Result<Arc<Vec<Example>>> {
        if !crate::reuse::on() {
            return self.tokenize_source(c).map(Arc::new);
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &self.source {
            Source::Records(r) => (0u8, r.as_ref()).hash(&mut h),
            Source::Text { docs, block } => (1u8, docs.as_ref(), block).hash(&mut h),
            Source::Examples(_) => {}
        }
        (&self.prep.bos, &self.prep.eos, &self.prep.template).hash(&mut h);
        c.num_labels.hash(&mut h);
        c.label2id
            .map(|m| serde_json::Value::Object(m.clone()).to_string())
            .hash(&mut h);
        let vocab = c.tok.identity(&mut h);
        let key = h.finish();
        let mut kept = TOKENIZED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kept.get_mut(&key) {
            k.used = true;
            tracing::debug!(
                "{}: tokenized examples kept from an earlier run",
                self.origin
            );
            return Ok(k.examples.clone());
        }
        drop(kept);
        let ex = Arc::new(self.tokenize_source(c)?);
        TOKENIZED.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Kept {
                examples: ex.clone(),
                _vocab: vocab,
                used: true,
            },
        );
        Ok(ex)
    }

    fn tokenize_source(&self, c: &Ctx) -> Result<Vec<Example>> {
        Ok(match &self.source {
            Source::Examples(e) => e.as_ref().clone(),
            Source::Records(r) => r
                .iter()
                .enumerate()
                .map(|(i, rec)| {
                    self.tokenize(rec, c)
                        .map_err(|e| Error::msg(format!("{} (record {})", e, i + 1)))
                })
                .collect::<Result<_>>()?,
            Source::Text { docs, block } => {
                let mut all = Vec::new();
                for d in docs.iter() {
                    let mut ids = c.tok.encode(d, true)?;
                    if let (Some(true), Some(bos)) = (self.prep.bos, c.tok.bos) {
                        if ids.first() != Some(&bos) {
                            ids.insert(0, bos);
                        }
                    }
                    if self.prep.eos == Some(true) {
                        ids.extend(c.tok.eos);
                    }
                    all.extend(ids);
                }
                let n = all.len() / block;
                let chunks: Vec<Vec<u32>> = if n == 0 {
                    vec![all]
                } else {
                    all.chunks(*block).take(n).map(|c| c.to_vec()).collect()
                };
                chunks
                    .into_iter()
                    .map(|ids| Example {
                        labels: ids.iter().map(|&x| x as i64).collect(),
                        ids,
                        ..Default::default()
                    })
                    .collect()
            }
        })
    }

    fn tokenize(&self, rec: &Record, c: &Ctx) -> Result<Example> {
        let tok = c.tok;
        let with_bos = |mut ids: Vec<u32>| -> Vec<u32> {
            match (self.prep.bos, tok.bos) {
                (Some(true), Some(b)) if ids.first() != Some(&b) => ids.insert(0, b),
                (Some(false), Some(b)) if ids.first() == Some(&b) => {
                    ids.remove(0);
                }
                _ => {}
            }
            ids
        };
        Ok(match rec {
            Record::Text(t) => {
                let mut ids = with_bos(tok.encode(t, true)?);
                if self.prep.eos == Some(true) {
                    ids.extend(tok.eos);
                }
                Example {
                    labels: ids.iter().map(|&x| x as i64).collect(),
                    ids,
                    ..Default::default()
                }
            }
            Record::Instruction {
                instruction,
                input,
                output,
            } => {
                let prompt = self.prompt(instruction, input);
                let p = with_bos(tok.encode(&prompt, true)?);
                let mut r = tok.encode(output, false)?;
                if self.prep.eos != Some(false) {
                    r.extend(tok.eos);
                }
                let mut labels = vec![IGNORE; p.len()];
                labels.extend(r.iter().map(|&x| x as i64));
                let mut ids = p;
                ids.extend(r);
                Example {
                    ids,
                    labels,
                    ..Default::default()
                }
            }
            Record::Chat(msgs) => {
                let tpl = tok.chat_template.as_deref().ok_or_else(|| {
                    Error::msg("chat data needs a chat template (chat_template.jinja or tokenizer_config.json's chat_template)")
                })?;
                let (ids, labels) = chat::tokenize(tpl, tok, msgs)?;
                Example {
                    ids,
                    labels,
                    ..Default::default()
                }
            }
            Record::Classification { text, pair, label } => {
                let ids = tok.encode_pair(text, pair.as_deref())?;
                let class = match label {
                    Label::Id(i) => *i,
                    Label::Name(n) => c
                        .label2id
                        .and_then(|m| m.get(n))
                        .and_then(|v| v.as_i64())
                        .ok_or_else(|| {
                            Error::msg(format!("label `{n}` is not in the model's label2id"))
                        })?,
                };
                if let Some(k) = c.num_labels {
                    if class < 0 || class as usize >= k {
                        return Err(Error::msg(format!(
                            "label {class} is outside the classifier's range 0..{k}"
                        )));
                    }
                }
                Example {
                    labels: Vec::new(),
                    types: Some(ids.1),
                    ids: ids.0,
                    class: Some(class),
                }
            }
        })
    }
}

/// A padded micro-batch.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub types: Option<Tensor>,
    /// `[b, t]` per-token labels (causal LM), or `[b]` classes
    pub labels: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
    /// tokens that are not padding
    pub tokens: usize,
}

impl Batch {
    /// Right padding with `pad`; labels -100 on padding.
    pub fn collate(ex: &[Example], pad: u32, device: &Device) -> Result<Batch> {
        let b = ex.len();
        let t = ex.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad; b * t];
        let mut mask = vec![0u32; b * t];
        let mut types = vec![0u32; b * t];
        let cls = ex.first().is_some_and(|e| e.class.is_some());
        let mut labels = if cls {
            Vec::with_capacity(b)
        } else {
            vec![IGNORE; b * t]
        };
        let mut tokens = 0;
        for (r, e) in ex.iter().enumerate() {
            for (j, &x) in e.ids.iter().enumerate() {
                ids[r * t + j] = x;
                mask[r * t + j] = 1;
                if !cls {
                    labels[r * t + j] = e.labels[j];
                }
                if let Some(tt) = &e.types {
                    types[r * t + j] = tt[j];
                }
            }
            tokens += e.ids.len();
            if cls {
                labels.push(e.class.unwrap_or(0));
            }
        }
        let has_types = ex
            .iter()
            .any(|e| e.types.as_ref().is_some_and(|t| t.iter().any(|&x| x != 0)));
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            types: if has_types {
                Some(Tensor::from_vec(types, (b, t), device)?)
            } else {
                None
            },
            labels,
            rows: b,
            cols: t,
            tokens,
        })
    }

    /// Label tokens that reach the causal-LM loss (labels shifted by one).
    pub fn loss_tokens(&self) -> usize {
        if self.labels.len() == self.rows {
            return self.rows;
        }
        (0..self.rows)
            .map(|r| {
                self.labels[r * self.cols + 1..(r + 1) * self.cols]
                    .iter()
                    .filter(|&&l| l != IGNORE)
                    .count()
            })
            .sum()
    }
}

/// Micro-batches of an epoch: indices grouped into batches; with `group_by_length`, batches
/// hold examples of similar length (sorted within chunks of 50 batches, as HF's length grouping).
pub fn batch_indices(
    ex: &[Example],
    batch: usize,
    shuffle: Option<u64>,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    if let Some(seed) = shuffle {
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    if group_by_length {
        let mega = batch.max(1).saturating_mul(50);
        for c in idx.chunks_mut(mega) {
            c.sort_by_key(|&i| std::cmp::Reverse(ex[i].ids.len()));
        }
    }
    idx.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

/// Files matching a path whose last component may hold `*` / `?`.
pub fn glob(pattern: &Path) -> Result<Vec<PathBuf>> {
    let name = pattern
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        if !pattern.exists() {
            return Err(Error::file(pattern, "no such file"));
        }
        return Ok(vec![pattern.to_path_buf()]);
    }
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let re = regex::Regex::new(&format!(
        "^{}$",
        regex::escape(&name)
            .replace(r"\*", ".*")
            .replace(r"\?", ".")
    ))
    .map_err(|e| Error::msg(e.to_string()))?;
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && re.is_match(&p.file_name().unwrap_or_default().to_string_lossy())
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Error::file(pattern, "no file matches"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch size beyond the data (found by fuzzing: `batch_size = 2^62` with
    /// `group_by_length` overflowed) is one batch of everything.
    #[test]
    fn any_batch_size_groups_without_overflow() {
        let ex: Vec<Example> = (0..5)
            .map(|i| Example {
                ids: vec![1; i + 1],
                labels: vec![-100; i + 1],
                types: None,
                class: None,
            })
            .collect();
        for batch in [0, 1, 2, usize::MAX / 3, usize::MAX] {
            let b = batch_indices(&ex, batch, Some(1), true);
            assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 5, "{batch}");
            assert!(b.iter().all(|c| c.len() <= batch.max(1)), "{batch}");
        }
    }
}
