//! Tokenizers: HF `tokenizer.json` (via the `tokenizers` crate) with the BOS/EOS/pad and chat
//! template settings of `tokenizer_config.json`, one built from a GGUF file's metadata, or a
//! byte-level tokenizer that needs no file; and saving any of them as an HF tokenizer directory.

mod gguf;

use crate::error::{Error, Result};
use crate::st::{read_json, write_atomic, write_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
enum Inner {
    Hf(Arc<tokenizers::Tokenizer>),
    /// bytes 0..=255, then BOS, EOS, PAD
    Bytes,
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: Inner,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// `add_bos_token` / `add_eos_token` of tokenizer_config.json
    pub add_bos: bool,
    pub add_eos: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    /// files to copy when the model is saved (none for a tokenizer built in memory)
    pub files: Vec<PathBuf>,
}

/// A special token given as `"<s>"` or `{"content": "<s>", ...}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// `tokenizer_class` that marks ftl's byte-level tokenizer in a saved model directory.
pub const BYTES_CLASS: &str = "ftl-bytes";

pub const BYTES_BOS: u32 = 256;
pub const BYTES_EOS: u32 = 257;
pub const BYTES_PAD: u32 = 258;

impl Tokenizer {
    /// What tokenizing with this tokenizer depends on, for keeping its output across runs: the
    /// settings are hashed into `h` with the parsed vocabulary's address, and the vocabulary is
    /// returned for the caller to keep alive as long as the hash, so no other takes its address.
    pub fn identity(
        &self,
        h: &mut impl std::hash::Hasher,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        use std::hash::Hash;
        (
            self.bos,
            self.eos,
            self.pad,
            self.add_bos,
            self.add_eos,
            &self.bos_token,
            &self.eos_token,
            &self.chat_template,
        )
            .hash(h);
        match &self.inner {
            Inner::Hf(t) => {
                (Arc::as_ptr(t) as usize).hash(h);
                Some(t.clone())
            }
            Inner::Bytes => {
                0usize.hash(h);
                None
            }
        }
    }

    /// The byte-level tokenizer: vocabulary 259 (bytes, BOS, EOS, PAD).
    pub fn bytes() -> Self {
        Tokenizer {
            inner: Inner::Bytes,
            bos: Some(BYTES_BOS),
            eos: Some(BYTES_EOS),
            pad: Some(BYTES_PAD),
            add_bos: true,
            add_eos: false,
            bos_token: Some("<bos>".into()),
            eos_token: Some("<eos>".into()),
            chat_template: None,
            files: Vec::new(),
        }
    }

    pub fn is_bytes(&self) -> bool {
        matches!(self.inner, Inner::Bytes)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        // a large vocabulary takes a while to parse: under `ftl watch` it is parsed once
        let t = crate::model::hub::cached_value(path, "tokenizer", || {
            tokenizers::Tokenizer::from_file(path)
                .map(Arc::new)
                .map_err(|e| Error::file(path, format!("cannot read tokenizer: {e}")))
        })?;
        Ok(Tokenizer {
            inner: Inner::Hf(t),
            bos: None,
            eos: None,
            pad: None,
            add_bos: false,
            add_eos: false,
            bos_token: None,
            eos_token: None,
            chat_template: None,
            files: vec![path.to_path_buf()],
        })
    }

    /// `tokenizer.json` plus `tokenizer_config.json`, `chat_template.jinja`, `config.json` ids.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut t = Self::from_file(&dir.join("tokenizer.json"))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.exists() {
            read_json(&tc_path)?
        } else {
            Value::Null
        };
        let mc_path = dir.join("config.json");
        let mc = if mc_path.exists() {
            read_json(&mc_path)?
        } else {
            Value::Null
        };
        t.bos_token = token_str(tc.get("bos_token"));
        t.eos_token = token_str(tc.get("eos_token"));
        let id_of = |t: &Tokenizer, s: &Option<String>, key: &str| -> Option<u32> {
            s.as_ref()
                .and_then(|s| t.token_id(s))
                .or_else(|| mc.get(key).and_then(|v| v.as_u64()).map(|v| v as u32))
        };
        t.bos = id_of(&t, &t.bos_token, "bos_token_id");
        t.eos = id_of(&t, &t.eos_token, "eos_token_id");
        t.pad = id_of(&t, &token_str(tc.get("pad_token")), "pad_token_id");
        t.add_bos = tc
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        t.add_eos = tc
            .get("add_eos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let jinja = dir.join("chat_template.jinja");
        t.chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // a list of named templates: take "default"
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|x| x.get("template"))
                    .and_then(|x| x.as_str())
                    .map(String::from),
                _ => None,
            }
        };
        for f in [
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "generation_config.json",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
        ] {
            if dir.join(f).exists() {
                t.files.push(dir.join(f));
            }
        }
        Ok(t)
    }

    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`), as transformers'
    /// `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it; `None` when the file has no
    /// `tokenizer.ggml.model` (weights only). Errors name `path` and the metadata key.
    pub fn from_gguf(
        ct: &candle_core::quantized::gguf_file::Content,
        path: &Path,
    ) -> Result<Option<Tokenizer>> {
        gguf::build(ct, path)
    }

    /// Writes the tokenizer as an HF tokenizer directory into `dir`: the files it was read from,
    /// or, for one built in memory, `tokenizer.json` + `tokenizer_config.json` (special tokens,
    /// `add_bos_token` / `add_eos_token`) + `chat_template.jinja`, which transformers'
    /// `AutoTokenizer.from_pretrained(dir)` and [`Tokenizer::from_dir`] read back with the same ids.
    /// The byte-level tokenizer leaves a `tokenizer_config.json` that only ftl understands.
    pub fn save(&self, dir: &Path) -> Result<()> {
        match &self.inner {
            Inner::Bytes => {
                let tc = serde_json::json!({"tokenizer_class": BYTES_CLASS});
                write_json(&dir.join("tokenizer_config.json"), &tc)
            }
            Inner::Hf(_) if !self.files.is_empty() => {
                for f in &self.files {
                    let Some(name) = f.file_name() else {
                        return Err(Error::file(f, "tokenizer file has no file name"));
                    };
                    let to = dir.join(name);
                    // saving over the directory it came from: the file is already there
                    if to != *f {
                        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
                        write_atomic(&to, &bytes)?;
                    }
                }
                Ok(())
            }
            Inner::Hf(t) => {
                let path = dir.join("tokenizer.json");
                let s = t
                    .to_string(false)
                    .map_err(|e| Error::file(&path, format!("cannot write tokenizer: {e}")))?;
                write_atomic(&path, s.as_bytes())?;
                let name = |id: Option<u32>| id.and_then(|i| t.id_to_token(i));
                let mut tc = serde_json::Map::new();
                tc.insert("backend".into(), "tokenizers".into());
                tc.insert("tokenizer_class".into(), "TokenizersBackend".into());
                tc.insert("add_bos_token".into(), self.add_bos.into());
                tc.insert("add_eos_token".into(), self.add_eos.into());
                for (key, tok) in [
                    (
                        "bos_token",
                        self.bos_token.clone().or_else(|| name(self.bos)),
                    ),
                    (
                        "eos_token",
                        self.eos_token.clone().or_else(|| name(self.eos)),
                    ),
                    ("pad_token", name(self.pad)),
                ] {
                    tc.insert(key.into(), tok.map_or(Value::Null, Value::String));
                }
                write_json(&dir.join("tokenizer_config.json"), &Value::Object(tc))?;
                if let Some(tpl) = &self.chat_template {
                    write_atomic(&dir.join("chat_template.jinja"), tpl.as_bytes())?;
                }
                Ok(())
            }
        }
    }

    pub fn token_id(&self, s: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(s),
            Inner::Bytes => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Bytes => 259,
        }
    }

    /// Token ids of `text`; with `special`, the post-processor's special tokens and BOS/EOS as
    /// `add_bos_token` / `add_eos_token` say.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let mut ids = match &self.inner {
            Inner::Hf(t) => t
                .encode(text, special)
                .map_err(|e| Error::msg(format!("tokenizer: {e}")))?
                .get_ids()
                .to_vec(),
            Inner::Bytes => text.bytes().map(|b| b as u32).collect(),
        };
        if special {
            if let Some(b) = self.bos {
                if self.add_bos && ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
            if let Some(e) = self.eos {
                if self.add_eos && ids.last() != Some(&e) {
                    ids.push(e);
                }
            }
        }
        Ok(ids)
    }

    /// Ids and token type ids of a text (and an optional second segment), special tokens added.
    pub fn encode_pair(&self, text: &str, pair: Option<&str>) -> Result<(Vec<u32>, Vec<u32>)> {
        match (&self.inner, pair) {
            (Inner::Hf(t), Some(p)) => {
                let e = t
                    .encode((text, p), true)
                    .map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
                Ok((e.get_ids().to_vec(), e.get_type_ids().to_vec()))
            }
            (_, None) => {
                let ids = self.encode(text, true)?;
                let n = ids.len();
                Ok((ids, vec![0; n]))
            }
            (Inner::Bytes, Some(p)) => {
                let mut ids = self.encode(text, true)?;
                let n = ids.len();
                ids.extend(self.encode(p, false)?);
                let m = ids.len() - n;
                Ok((
                    ids,
                    std::iter::repeat_n(0, n)
                        .chain(std::iter::repeat_n(1, m))
                        .collect(),
                ))
            }
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t
                .decode(ids, skip_special)
                .map_err(|e| Error::msg(format!("tokenizer: {e}"))),
            Inner::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter(|&&i| i < 256 || !skip_special)
                    .filter_map(|&i| u8::try_from(i).ok())
                    .collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }
}
