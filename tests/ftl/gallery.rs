//! The recipe gallery, the stdlib presets and `ftl new` / `ftl ls` / `ftl cp` through the binary:
//! every recipe in `recipes/` runs a few steps on a tiny fixture with the trainable parameter
//! count its method implies on that fixture, a loss that goes down and the files it should write.

use super::recipes::{ftl_bin, repo};
use crate::common::*;
use std::path::Path;

/// Runs the binary with `args` in `dir`; (exit code, stdout, stderr).
fn ftl_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = ftl_bin().args(args).current_dir(dir).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// llama-tiny's sizes (tests/fixtures/hf/llama-tiny/config.json): hidden 64, 4 heads of 16, 2 KV
/// heads (k, v project to 32), intermediate 128, 2 layers.
const H: usize = 64;
const KV: usize = 32;
const I: usize = 128;
const L: usize = 2;

/// LoRA parameters of rank `r` on a linear layer in → out.
fn lora(r: usize, inp: usize, out: usize) -> usize {
    r * (inp + out)
}

/// One llama block trained in full: q, k, v, o, gate, up, down and two RMSNorms.
const BLOCK: usize = H * H + 2 * H * KV + H * H + 3 * H * I + 2 * H;

/// The numbers after "eval loss " ("eval loss 6.28 -> 6.07"): (before, after).
fn eval_losses(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find_map(|l| l.split("eval loss ").nth(1))
        .unwrap_or_else(|| panic!("no `eval loss` line in:\n{out}"));
    let mut it = line.split_whitespace();
    let a: f64 = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some("->"), "{line}");
    let b: f64 = it.next().unwrap().parse().unwrap();
    (a, b)
}

fn trainable(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix("trainable "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `trainable N` line in:\n{out}"))
}

struct Case {
    recipe: &'static str,
    fixture: &'static str,
    args: &'static [&'static str],
    /// trainable parameters the recipe reports first
    trainable: usize,
    /// files the run must write, relative to --out
    files: &'static [&'static str],
}

const PEFT: &[&str] = &[
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
];
const HUB: &[&str] = &["adapter/adapter_config.json", "adapter/adapter.safetensors"];
const MODEL: &[&str] = &[
    "model/config.json",
    "model/model.safetensors",
    "model/tokenizer.json",
];

/// Every gallery recipe: fixture, arguments, what it must report and write. The fixtures' own
/// recipes (quickstart, check_fixtures) are tested elsewhere.
fn cases() -> Vec<Case> {
    let attn = |r| L * (lora(r, H, H) + 2 * lora(r, H, KV) + lora(r, H, H));
    let bottleneck = |units: usize| units * H + units + units * H + H;
    vec![
        Case {
            recipe: "lora",
            fixture: "llama-tiny",
            args: &["r=4"],
            trainable: attn(4),
            files: PEFT,
        },
        Case {
            recipe: "lora_all",
            fixture: "llama-tiny",
            args: &["r=2"],
            trainable: L * (2 * lora(2, H, H) + 2 * lora(2, H, KV) + 3 * lora(2, H, I)),
            files: PEFT,
        },
        Case {
            recipe: "dora",
            fixture: "llama-tiny",
            args: &["r=4"],
            // plus one magnitude per output feature of q, k, v, o
            trainable: attn(4) + L * (H + KV + KV + H),
            files: PEFT,
        },
        Case {
            recipe: "ia3",
            fixture: "llama-tiny",
            args: &["lr=0.1"],
            // k and v outputs, down_proj's input
            trainable: L * (KV + KV + I),
            files: PEFT,
        },
        Case {
            recipe: "houlsby",
            fixture: "llama-tiny",
            args: &["reduction=8"],
            trainable: L * 2 * bottleneck(H / 8),
            files: HUB,
        },
        Case {
            recipe: "pfeiffer",
            fixture: "llama-tiny",
            args: &["reduction=8"],
            trainable: L * bottleneck(H / 8),
            files: HUB,
        },
        Case {
            recipe: "prefix",
            fixture: "llama-tiny",
            args: &["tokens=4", "lr=0.1"],
            // keys and values of 4 tokens per layer
            trainable: L * 2 * 4 * KV,
            files: PEFT,
        },
        Case {
            recipe: "prompt",
            fixture: "llama-tiny",
            args: &["tokens=4", "lr=0.1", "init_text=\"opposite\""],
            trainable: 4 * H,
            files: PEFT,
        },
        Case {
            recipe: "full",
            fixture: "llama-tiny",
            args: &["lr=1e-3"],
            // the blocks, the final norm, embeddings and the untied head (vocab 512)
            trainable: L * BLOCK + H + 2 * 512 * H,
            files: MODEL,
        },
        Case {
            recipe: "top_layers",
            fixture: "llama-tiny",
            args: &["n=1", "lr=1e-3"],
            trainable: BLOCK,
            files: MODEL,
        },
        Case {
            recipe: "gradual_unfreeze",
            fixture: "llama-tiny",
            args: &["every=1", "lr=1e-3"],
            trainable: BLOCK,
            files: &[],
        },
        Case {
            recipe: "lora_layer_range",
            fixture: "llama-tiny",
            args: &["first=1", "last=1", "r=4"],
            // PEFT's default q, v in layer 1 only
            trainable: lora(4, H, H) + lora(4, H, KV),
            files: PEFT,
        },
        Case {
            recipe: "two_tasks",
            fixture: "llama-tiny",
            args: &["r=4", "lr=1e-2"],
            trainable: 0,
            files: &[
                "opposite/adapter_model.safetensors",
                "plural/adapter_model.safetensors",
            ],
        },
        Case {
            recipe: "chat",
            fixture: "llama-tiny",
            args: &["r=4"],
            trainable: attn(4),
            files: PEFT,
        },
        Case {
            recipe: "classify",
            fixture: "bert-tiny-cls",
            args: &["r=4"],
            // q, k, v, attention.output.dense (64 → 64) per layer, plus the classifier (3 labels)
            trainable: L * 4 * lora(4, H, H) + H * 3 + 3,
            files: PEFT,
        },
    ]
}

#[test]
fn every_recipe_runs_on_a_tiny_fixture() {
    let cases = cases();
    // a recipe added to recipes/ without a case here fails
    let mut names: Vec<String> = std::fs::read_dir(repo().join("recipes"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.strip_suffix(".lua").map(String::from)
        })
        .filter(|n| n != "quickstart" && n != "check_fixtures")
        .collect();
    names.sort();
    let mut covered: Vec<String> = cases.iter().map(|c| c.recipe.to_string()).collect();
    covered.sort();
    assert_eq!(
        names, covered,
        "recipes/ and the gallery test's cases differ"
    );

    let t = tempfile::tempdir().unwrap();
    for c in &cases {
        let out_dir = t.path().join(c.recipe);
        let model = format!("model={}", fixture(c.fixture).display());
        let mut args = vec![
            "run".to_string(),
            format!("recipes/{}.lua", c.recipe),
            model,
            "steps=3".into(),
            "--out".into(),
            out_dir.display().to_string(),
            "-q".into(),
        ];
        args.extend(c.args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = ftl_in(&repo(), &args);
        assert_eq!(code, 0, "{}:\n{out}\n{err}", c.recipe);
        if c.recipe == "two_tasks" {
            // each adapter helps its own task more than the other task's adapter does
            for (task, other) in [("opposite", "plural"), ("plural", "opposite")] {
                let row = out
                    .lines()
                    .find(|l| l.starts_with(&format!("| {task} ")))
                    .unwrap_or_else(|| panic!("no row for {task}:\n{out}"));
                let v: Vec<f64> = row
                    .split('|')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                let (base, own, cross) = if task == "opposite" {
                    (v[0], v[1], v[2])
                } else {
                    (v[0], v[2], v[1])
                };
                assert!(own < base && own.is_finite(), "{task}: {out}");
                assert!(own < cross, "{task} with {other}'s adapter: {out}");
            }
            assert!(out.contains("adapter opposite: trainable 3584"), "{out}");
        } else {
            assert_eq!(trainable(&out), c.trainable, "{}:\n{out}", c.recipe);
            let (before, after) = eval_losses(&out);
            assert!(
                before.is_finite() && after.is_finite() && after < before,
                "{}: eval loss {before} -> {after}\n{out}",
                c.recipe
            );
        }
        for f in c.files {
            assert!(out_dir.join(f).is_file(), "{}: no {f}\n{out}", c.recipe);
        }
        assert!(out_dir.join("run.ron").is_file(), "{}", c.recipe);
        match c.recipe {
            "gradual_unfreeze" => {
                assert!(out.contains("step 1: unfroze layer 0"), "{out}");
                assert!(
                    out.contains(&format!("trainable {} at the end", 2 * BLOCK)),
                    "{out}"
                );
            }
            "classify" => assert!(out.contains("eval accuracy "), "{out}"),
            _ => {}
        }
    }
}

#[test]
fn presets_schedule_and_report() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("p.lua");
    std::fs::write(
        &r,
        r#"local ftl = require("ftl")
local presets, schedule, report = require("presets"), require("schedule"), require("report")
for _, fx in ipairs({"llama", "gpt2", "bert"}) do
  local m = ftl.load(ftl.args[fx])
  local prefix = presets.layer_prefix(m)
  local a = presets.lora_attention(m, {r = 2})
  print(fx, prefix, #a:targets())
end
local m = ftl.load(ftl.args.llama)
assert(presets.top_layers(m, 2) == m:info().trainable)
assert(presets.layers_pattern(m, 0, 1) == "model.layers.{0..1}.**")
local d = ftl.data.from({{text = "a"}, {text = "b"}, {text = "c"}, {text = "d"}, {text = "e"}})
assert(schedule.steps(d, {epochs = 3, batch_size = 2}) == 9)
assert(schedule.steps(10, {batch_size = 2, grad_accum = 2}) == 3)
assert(schedule.warmup(95, 0.1) == 10)
local text = report.table({{name = "lora", n = 1234, loss = 0.5}, {name = "full fine-tuning", n = 5, loss = 12.25}},
  {"name", "n", {"loss", "%.2f", title = "eval loss"}})
print(report.csv("t.csv", {{a = 1, b = "x,y"}}, {"a", "b"}))
"#,
    )
    .unwrap();
    let out_dir = t.path().join("out");
    let fx = |n: &str| fixture(n).display().to_string();
    let (code, out, err) = ftl_in(
        t.path(),
        &[
            "run",
            "p.lua",
            &format!("llama={}", fx("llama-tiny")),
            &format!("gpt2={}", fx("gpt2-tiny")),
            &format!("bert={}", fx("bert-tiny-cls")),
            "--out",
            out_dir.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // q, k, v, o per layer (gpt2: c_attn and attn.c_proj)
    assert!(out.contains("llama\tmodel.layers\t8"), "{out}");
    assert!(out.contains("gpt2\ttransformer.h\t4"), "{out}");
    assert!(out.contains("bert\tbert.encoder.layer\t8"), "{out}");
    let table = "| name             |    n | eval loss |\n\
                 | ---------------- | ---: | --------: |\n\
                 | lora             | 1234 |      0.50 |\n\
                 | full fine-tuning |    5 |     12.25 |";
    assert!(out.contains(table), "{out}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("t.csv")).unwrap(),
        "a,b\n1,\"x,y\"\n"
    );
}

#[test]
fn new_writes_a_starter_that_runs_for_every_method() {
    let t = tempfile::tempdir().unwrap();
    let model = format!("model={}", fixture("llama-tiny").display());
    for method in [
        "full", "lora", "dora", "ia3", "adapter", "prefix", "prompt", "loha", "lokr", "vera",
    ] {
        let name = format!("x_{method}");
        let (code, out, err) = ftl_in(t.path(), &["new", &name, "--method", method]);
        assert_eq!(code, 0, "{out}\n{err}");
        let src = std::fs::read_to_string(t.path().join(format!("{name}.lua"))).unwrap();
        assert!(src.starts_with(&format!("-- {name}: ")), "{src}");
        assert!(src.contains("model="), "{src}");
        let (code, out, err) = ftl_in(
            t.path(),
            &["run", &format!("{name}.lua"), &model, "steps=2", "-q"],
        );
        assert_eq!(code, 0, "{method}:\n{out}\n{err}");
        let (before, after) = eval_losses(&out);
        assert!(after < before, "{method}: {out}");
        assert!(trainable(&out) > 0, "{out}");
        let saved = if method == "full" { "model" } else { "adapter" };
        assert!(
            t.path().join("runs").join(&name).join(saved).is_dir(),
            "{method}"
        );
    }
    // never overwrites
    let before = std::fs::read(t.path().join("x_lora.lua")).unwrap();
    let (code, _, err) = ftl_in(t.path(), &["new", "x_lora", "--method", "ia3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(t.path().join("x_lora.lua")).unwrap(), before);
    let (code, _, err) = ftl_in(t.path(), &["new", "y", "--method", "lokra"]);
    assert_eq!(code, 2, "a usage error: {err}");
}

fn lua_stems(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.strip_suffix(".lua").map(String::from)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ls_lists_every_recipe_and_module_and_cp_copies_them() {
    let (code, out, err) = ftl_in(&repo(), &["ls"]);
    assert_eq!(code, 0, "{err}");
    let listed = |name: &str| {
        out.lines()
            .any(|l| l.trim_start().starts_with(&format!("{name} ")))
    };
    for n in lua_stems(&repo().join("recipes")) {
        assert!(listed(&n), "ftl ls lacks recipe {n}:\n{out}");
        let src = std::fs::read_to_string(repo().join(format!("recipes/{n}.lua"))).unwrap();
        let first = src.lines().next().unwrap();
        assert!(first.starts_with("-- "), "{n}.lua has no header comment");
    }
    for n in lua_stems(&repo().join("stdlib")) {
        assert!(listed(&n), "ftl ls lacks stdlib module {n}:\n{out}");
    }
    assert!(
        out.contains("presets           one call per fine-tuning method"),
        "{out}"
    );

    // every recipe copies byte for byte, with the data files it reads
    let t = tempfile::tempdir().unwrap();
    for n in lua_stems(&repo().join("recipes")) {
        let dir = t.path().join(&n);
        std::fs::create_dir(&dir).unwrap();
        let (code, out, err) = ftl_in(&dir, &["cp", &n, "y.lua"]);
        assert_eq!(code, 0, "{n}: {out}\n{err}");
        let want = std::fs::read(repo().join(format!("recipes/{n}.lua"))).unwrap();
        assert_eq!(std::fs::read(dir.join("y.lua")).unwrap(), want, "{n}");
        let src = String::from_utf8(want).unwrap();
        for word in src.split('"') {
            if word.starts_with("data/") && repo().join("recipes").join(word).is_file() {
                assert_eq!(
                    std::fs::read(dir.join(word)).unwrap(),
                    std::fs::read(repo().join("recipes").join(word)).unwrap(),
                    "{n}: {word}"
                );
            }
        }
    }
    // the copy runs where it was copied (its data came along)
    let dir = t.path().join("lora");
    let model = format!("model={}", fixture("llama-tiny").display());
    let (code, out, err) = ftl_in(&dir, &["run", "y.lua", &model, "steps=2", "r=2", "-q"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // a directory as PATH; refusing to overwrite; unknown names
    let (code, _, err) = ftl_in(&dir, &["cp", "lora.lua", "."]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.join("lora.lua").is_file());
    let (code, _, err) = ftl_in(&dir, &["cp", "dora", "y.lua"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    std::fs::write(dir.join("data/chat.jsonl"), "mine\n").unwrap();
    let (code, _, err) = ftl_in(&dir, &["cp", "chat", "c.lua"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("data/chat.jsonl") && !dir.join("c.lua").exists(),
        "{err}"
    );
    let (code, _, err) = ftl_in(&dir, &["cp", "nosuch", "z.lua"]);
    assert_eq!(code, 1);
    assert!(err.contains("nosuch") && err.contains("lora"), "{err}");
}
