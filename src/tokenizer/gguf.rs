//! Tokenizers from GGUF metadata (`tokenizer.ggml.*`), built the way transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds them (transformers 5.24,
//! `integrations/gguf/gguf_tokenizer_mapping.py`), so that both give the same ids.
//!
//! transformers picks the builder by `tokenizer.ggml.model`: "gpt2" is GPT2Tokenizer's byte-level
//! BPE, "llama" is LlamaTokenizer's SentencePiece-style BPE (byte fallback, Metaspace, merges
//! rebuilt from the scores when the file has none). The architecture only matters for the
//! SentencePiece files of gemma and phi3, which it builds differently; ftl refuses those rather
//! than tokenize them wrongly. candle's `TokenizerFromGguf` is not used: it covers gpt2 only and
//! differs from transformers (an NFC normalizer for qwen2, token types 2..=5 made special).

use crate::error::{Error, Result};
use crate::gguf::{integer, Meta};
use candle_core::quantized::gguf_file::Content;
use serde_json::{json, Map, Value as Json};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::AddedToken;

// llama.cpp's token types (the same numbers as sentencepiece's piece types)
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The split regexes transformers puts in front of a byte-level pre-tokenizer, by
/// `tokenizer.ggml.pre` (GGUF_PRE_TOKENIZER_SPLITS). A name not listed keeps the builder's own
/// pre-tokenizer (GPT-2's ByteLevel regex, or Metaspace).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the rest are moved to U+0100 and up.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// The merges transformers derives from a vocabulary with scores (`generate_merges`): every split
/// of a token into two tokens of the vocabulary, best score first; ties by the lengths of the
/// halves, longest first, then by the halves' ids.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    // a Python dict of the tokens: the last id wins, the first position stays
    let mut id: HashMap<&str, usize> = HashMap::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    let mut order = Vec::new();
    for (i, (&t, &s)) in tokens.iter().zip(scores).enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, s);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for t in order {
        let s = score[t];
        let start = merges.len();
        for (b, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(b);
            if id.contains_key(l) && id.contains_key(r) {
                merges.push((l, r, s));
            }
        }
        merges[start..].sort_by_key(|(l, r, _)| (id[l], id[r]));
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    // stable, descending: Python's sorted(..., reverse=True) keeps ties in their order too
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

fn added(content: &str, special: bool) -> AddedToken {
    AddedToken::from(content.to_string(), special).normalized(false)
}

/// The tokenizer of a GGUF file; `None` when it has no `tokenizer.ggml.model`.
pub(super) fn build(ct: &Content, path: &Path) -> Result<Option<super::Tokenizer>> {
    let m = Meta { ct, path };
    const MODEL: &str = "tokenizer.ggml.model";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const MERGES: &str = "tokenizer.ggml.merges";
    const SCORES: &str = "tokenizer.ggml.scores";
    const TYPES: &str = "tokenizer.ggml.token_type";
    let Some(kind) = m.str(MODEL)? else {
        return Ok(None);
    };
    // llama.cpp's spelling of "this file has no vocabulary"
    if kind == "no_vocab" || kind == "none" {
        return Ok(None);
    }
    let arch = m.str("general.architecture")?.unwrap_or("");
    let byte_level = match kind {
        "gpt2" => true,
        "llama" => {
            if matches!(arch, "gemma" | "gemma2" | "gemma3" | "phi3") {
                return Err(m.err(
                    "general.architecture",
                    format!(
                        "a SentencePiece (`{MODEL}` = \"llama\") tokenizer of architecture `{arch}` \
                         is built differently by transformers, and ftl does not build it yet"
                    ),
                ));
            }
            false
        }
        other => {
            return Err(m.err(
                MODEL,
                format!(
                    "unsupported tokenizer `{other}`: ftl builds \"gpt2\" (byte-level BPE) and \
                     \"llama\" (SentencePiece) tokenizers"
                ),
            ))
        }
    };
    let tokens = m.strings(TOKENS)?.ok_or_else(|| {
        m.err(
            TOKENS,
            format!("missing: the `{kind}` tokenizer needs its vocabulary"),
        )
    })?;
    if tokens.is_empty() {
        return Err(m.err(TOKENS, "the vocabulary is empty"));
    }
    let n = tokens.len();
    let types = match m.array(TYPES)? {
        None => Vec::new(),
        Some(a) => {
            let t: Vec<i64> = a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    integer(v).ok_or_else(|| {
                        m.err(
                            TYPES,
                            format!(
                                "element {i}: expected an integer, found {:?}",
                                v.value_type()
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            if t.len() != n {
                return Err(m.err(TYPES, format!("{} token types for {n} tokens", t.len())));
            }
            t
        }
    };

    let merges: Vec<(String, String)> = match m.strings(MERGES)? {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| match s.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
                _ => Err(m.err(
                    MERGES,
                    format!("merge {i} ({s:?}) is not two tokens separated by one space"),
                )),
            })
            .collect::<Result<_>>()?,
        None if byte_level => {
            let msg = "missing: a gpt2 (byte-level BPE) tokenizer needs its merges";
            return Err(m.err(MERGES, msg));
        }
        None => {
            let msg = "missing: a SentencePiece tokenizer without merges needs its token scores";
            let scores = m.numbers(SCORES)?.ok_or_else(|| m.err(SCORES, msg))?;
            if scores.len() != n {
                return Err(m.err(SCORES, format!("{} scores for {n} tokens", scores.len())));
            }
            merges_from_scores(&tokens, &scores)
        }
    };

    // In a byte-level vocabulary every token is spelled in GPT-2's byte alphabet; one that is not
    // (written raw) is respelled, as transformers does, so that its bytes can reach it.
    let chars = byte_chars();
    let alphabet: HashSet<char> = chars.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (i, &t) in tokens.iter().enumerate() {
        let key = if byte_level && !in_alphabet(t) {
            t.bytes().map(|b| chars[b as usize]).collect()
        } else {
            t.to_string()
        };
        vocab.insert(key, json!(i));
    }
    let merges_json: Vec<Json> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    let (model, pre_tokenizer, decoder) = if byte_level {
        (
            json!({"type": "BPE", "dropout": null, "unk_token": null,
                   "continuing_subword_prefix": "", "end_of_word_suffix": "",
                   "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                   "vocab": vocab, "merges": merges_json}),
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": true}),
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                   "use_regex": true}),
        )
    } else {
        (
            json!({"type": "BPE", "dropout": null, "unk_token": null,
                   "continuing_subword_prefix": null, "end_of_word_suffix": null,
                   "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                   "vocab": vocab, "merges": merges_json}),
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
                   "split": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
        )
    };
    let pre = m.str("tokenizer.ggml.pre")?;
    let pre_tokenizer = match pre.and_then(split_regex) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]}),
        None => pre_tokenizer,
    };
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": decoder, "model": model,
    });
    let mut tok: tokenizers::Tokenizer = spec.to_string().parse().map_err(|e| {
        m.err(
            if merges_from_file(&m) { MERGES } else { TOKENS },
            format!("cannot build the tokenizer: {e}"),
        )
    })?;
    let add = |tok: &mut tokenizers::Tokenizer, list: Vec<AddedToken>| -> Result<()> {
        tok.add_tokens(list)
            .map(|_| ())
            .map_err(|e| Error::file(path, format!("tokenizer: cannot add tokens: {e}")))
    };

    // The defaults of the transformers class that builds it become special tokens, even when the
    // file's vocabulary lacks them (they then get new ids past it).
    let defaults: &[&str] = if byte_level {
        &["<|endoftext|>"]
    } else {
        &["<s>", "</s>", "<unk>"]
    };
    add(&mut tok, defaults.iter().map(|t| added(t, true)).collect())?;
    // control tokens stay whole and are special; a byte-level one outside the alphabet is a
    // llama.cpp mislabel that transformers leaves out
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(t, &ty)| ty == CONTROL && (!byte_level || in_alphabet(t)))
        .map(|(t, _)| added(t, true))
        .collect();
    add(&mut tok, control)?;
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(t, &ty)| ty == USER_DEFINED && tok.token_to_id(t).is_some())
        .map(|(t, _)| added(t, false))
        .collect();
    add(&mut tok, user)?;

    let token_of = |key: &str| -> Result<Option<String>> {
        match m.int(key)? {
            None => Ok(None),
            Some(i) => usize::try_from(i)
                .ok()
                .and_then(|i| tokens.get(i))
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| {
                    m.err(
                        key,
                        format!("token id {i} is outside the vocabulary of {n}"),
                    )
                }),
        }
    };
    let bos_token = token_of("tokenizer.ggml.bos_token_id")?;
    let eos_token = token_of("tokenizer.ggml.eos_token_id")?;
    let unk_token = token_of("tokenizer.ggml.unknown_token_id")?;
    let pad_token = token_of("tokenizer.ggml.padding_token_id")?;
    // the file's named tokens are special tokens of the final tokenizer
    let named: Vec<AddedToken> = [&bos_token, &eos_token, &unk_token, &pad_token]
        .into_iter()
        .flatten()
        .map(|t| added(t, true))
        .collect();
    add(&mut tok, named)?;
    let id_of = |t: &Option<String>| t.as_ref().and_then(|t| tok.token_to_id(t));
    let (bos, eos, pad) = (id_of(&bos_token), id_of(&eos_token), id_of(&pad_token));

    // llama.cpp adds BOS to a SentencePiece vocabulary unless told otherwise, and transformers
    // follows; without a BOS token there is nothing to add
    let add_bos = m
        .flag("tokenizer.ggml.add_bos_token")?
        .unwrap_or(kind == "llama")
        && bos.is_some();
    let add_eos = m.flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();
    let post = template(&bos_token, bos, add_bos, &eos_token, eos, add_eos);
    let post: tokenizers::processors::PostProcessorWrapper = serde_json::from_value(post)
        .map_err(|e| Error::file(path, format!("tokenizer: post-processor: {e}")))?;
    tok.with_post_processor(Some(post));

    let chat_template = m.str("tokenizer.chat_template")?.map(String::from);
    Ok(Some(super::Tokenizer {
        inner: super::Inner::Hf(std::sync::Arc::new(tok)),
        files: Vec::new(),
        bos,
        eos,
        pad,
        add_bos,
        add_eos,
        bos_token,
        eos_token,
        chat_template,
    }))
}

fn merges_from_file(m: &Meta) -> bool {
    m.ct.metadata.contains_key("tokenizer.ggml.merges")
}

/// transformers' `update_post_processor`: BOS / EOS around each sequence as the flags say.
fn template(
    bos_token: &Option<String>,
    bos: Option<u32>,
    add_bos: bool,
    eos_token: &Option<String>,
    eos: Option<u32>,
    add_eos: bool,
) -> Json {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut specials = Map::new();
    let mut side = |t: &Option<String>, id: Option<u32>, on: bool| -> Option<String> {
        match (t, id, on) {
            (Some(t), Some(id), true) => {
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
                Some(t.clone())
            }
            _ => None,
        }
    };
    let b = side(bos_token, bos, add_bos);
    let e = side(eos_token, eos, add_eos);
    let part = |s: &str, type_id: u32| -> Vec<Json> {
        let mut v = Vec::new();
        if let Some(b) = &b {
            v.push(special(b, type_id));
        }
        v.push(seq(s, type_id));
        if let Some(e) = &e {
            v.push(special(e, type_id));
        }
        v
    };
    let single = part("A", 0);
    let mut pair = single.clone();
    pair.extend(part("B", 1));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair,
           "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let c = byte_chars();
        assert_eq!(c[b'!' as usize], '!');
        assert_eq!(c[b' ' as usize], 'Ġ');
        assert_eq!(c[b'\n' as usize], 'Ċ');
        assert_eq!(c[0], 'Ā');
        assert_eq!(c[0xAD], 'Ń');
        assert_eq!(c.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        // what transformers' generate_merges gives for this vocabulary
        let tokens = ["a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let got = merges_from_scores(&tokens, &scores);
        let want = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
