//! Recipes through the `ftl` binary: the fixture check recipe (and that it fails on a perturbed
//! fixture), errors located at `recipe.lua:LINE`, the sandbox, arguments.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn ftl_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftl"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `ftl run` on a recipe; (exit code, stdout, stderr).
pub fn run(recipe: &Path, args: &[&str]) -> (i32, String, String) {
    let o = ftl_bin()
        .arg("run")
        .arg(recipe)
        .args(args)
        .arg("-q")
        .current_dir(repo())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn write_recipe(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

#[test]
fn check_recipe_passes_on_the_fixtures() {
    let (code, out, err) = run(
        &repo().join("recipes/check_fixtures.lua"),
        &["dir=tests/fixtures/hf"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("17 passed, 0 failed"), "{out}");
}

#[test]
fn check_recipe_fails_on_a_perturbed_fixture() {
    let t = tempfile::tempdir().unwrap();
    for name in ["llama-tiny", "lora-qv"] {
        let to = t.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(fixture(name)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    // scale the adapter's reference logits by 1.001: a relative error of 1e-3
    let p = t.path().join("lora-qv/expected.safetensors");
    let f = ftl::st::StFile::open(&p).unwrap();
    let mut ts = f.load_all(&candle_core::Device::Cpu).unwrap();
    let meta = f.metadata.clone();
    drop(f);
    let l = (ts["logits"].clone() * 1.001).unwrap();
    ts.insert("logits".into(), l);
    ftl::st::save(&p, &ts, Some(meta)).unwrap();
    let dir = t.path().display().to_string();
    let (code, out, err) = run(
        &repo().join("recipes/check_fixtures.lua"),
        &[&format!("dir={dir}")],
    );
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(out.contains("FAIL lora-qv"), "{out}");
    assert!(out.contains("ok   llama-tiny"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

#[test]
fn unknown_option_names_key_line_and_closest() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixture("llama-tiny").display().to_string();
    let r = write_recipe(
        t.path(),
        "bad.lua",
        "local ftl = require('ftl')\nlocal m = ftl.load(ftl.args.m)\n\nftl.lora(m, {targets = {'q_proj'}, rank = 8})\n",
    );
    let (code, _, err) = run(&r, &[&format!("m={fx}")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.lua:4") && err.contains("`rank`") && err.contains("`r`"),
        "{err}"
    );
}

#[test]
fn syntax_and_runtime_errors_carry_the_line() {
    let t = tempfile::tempdir().unwrap();
    let r = write_recipe(t.path(), "syntax.lua", "local x = 1\nlocal y = = 2\n");
    let (code, _, err) = run(&r, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("syntax.lua:2"), "{err}");
    let r = write_recipe(
        t.path(),
        "missing.lua",
        "local ftl = require('ftl')\n\nftl.load('no/such/model')\n",
    );
    let (code, _, err) = run(&r, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("missing.lua:3") && err.contains("no/such/model"),
        "{err}"
    );
}

#[test]
fn sandbox_blocks_outside_reads_and_os_execute() {
    let t = tempfile::tempdir().unwrap();
    let r = write_recipe(
        t.path(),
        "sb.lua",
        "local ftl = require('ftl')\nftl.load('/etc')\n",
    );
    let (code, _, err) = run(&r, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("sb.lua:2") && err.contains("--trust"), "{err}");
    let r = write_recipe(
        t.path(),
        "ex.lua",
        "assert(not pcall(os.execute, 'true') and not pcall(io.popen, 'ls') and debug == nil)\nprint('sandboxed')\n",
    );
    let (code, out, err) = run(&r, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sandboxed"));
    // ftl.fs.read: the recipe's own files, not others
    std::fs::write(t.path().join("data.txt"), "two\nlines\n").unwrap();
    let r = write_recipe(
        t.path(),
        "rd.lua",
        "local ftl = require('ftl')\nassert(ftl.fs.read('data.txt') == 'two\\nlines\\n')\nftl.fs.read('/etc/hostname')\n",
    );
    let (code, _, err) = run(&r, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("rd.lua:3") && err.contains("/etc/hostname"),
        "{err}"
    );
    let r = write_recipe(
        t.path(),
        "tr.lua",
        "assert(type(os.execute) == 'function')\nassert(require('ftl').fs.read('data.txt') == 'two\\nlines\\n')\nprint('trusted')\n",
    );
    let o = ftl_bin()
        .args(["run", "--trust", "-q"])
        .arg(&r)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn dataset_rows_follow_splits_and_shuffles() {
    let t = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..10)
        .map(|i| format!("{{\"instruction\": \"say\", \"input\": \"n{i}\", \"output\": \"{i}\"}}"))
        .collect();
    std::fs::write(t.path().join("d.jsonl"), lines.join("\n")).unwrap();
    let r = write_recipe(
        t.path(),
        "rows.lua",
        "local ftl = require('ftl')\n\
         local d = ftl.data.jsonl('d.jsonl', {format = 'instruction'})\n\
         local all = d:rows()\n\
         assert(#all == 10 and all[4].input == 'n3' and all[4].output == '3' and all[4].instruction == 'say')\n\
         local a, b = d:split(0.7, {seed = 3})\n\
         local ra, rb = a:rows(), b:rows()\n\
         assert(#ra == 7 and #rb == 3 and #ra == a:len() and #rb == b:len())\n\
         local seen = {}\n\
         for _, x in ipairs(ra) do seen[x.output] = true end\n\
         for _, x in ipairs(rb) do assert(not seen[x.output]); seen[x.output] = true end\n\
         local n = 0 for _ in pairs(seen) do n = n + 1 end\n\
         assert(n == 10)\n\
         local s = d:shuffle(5):rows()\n\
         assert(#s == 10 and s[1].output ~= nil)\n\
         ftl.data.text('d.jsonl'):rows()\n",
    );
    let (code, _, err) = run(&r, &[]);
    assert_ne!(code, 0, "text data has no rows");
    assert!(
        err.contains("rows.lua:15") && err.contains("only jsonl and from"),
        "{err}"
    );
}

#[test]
fn args_are_lua_literals() {
    let t = tempfile::tempdir().unwrap();
    let r = write_recipe(
        t.path(),
        "args.lua",
        "local a = ftl.args\nassert(a.n == 3 and math.type(a.n) == 'integer')\nassert(a.lr == 2e-4)\nassert(a.flag == true)\n\
         assert(a.s == 'hello world')\nassert(a.plain == 'x/y')\nassert(a.t[2] == 2 and a.t.k == 'v')\nassert(a.opt.depth == 2)\nprint('args ok')\n",
    );
    let (code, out, err) = run(
        &r,
        &[
            "n=3",
            "lr=2e-4",
            "flag=true",
            "s=\"hello world\"",
            "plain=x/y",
            "t={1, 2, k='v'}",
            "opt.depth=2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("args ok"));
}

#[test]
fn adapters_round_trip_through_a_recipe() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures().join("hf").display().to_string();
    let r = write_recipe(
        t.path(),
        "rt.lua",
        r#"local ftl = require("ftl")
local dir = ftl.args.fx
local e = ftl.tensor.load(dir .. "/llama-tiny/expected.safetensors")
local m = ftl.load(dir .. "/llama-tiny")
local base = m:forward(e.input_ids, e.attention_mask)
assert(base:rel_err(e.logits) < 1e-4)
for _, kind in ipairs({"lora", "ia3", "adapter", "prefix", "prompt"}) do
  local mm = ftl.load(dir .. "/llama-tiny")
  local a = ftl[kind](mm, {name = kind})
  -- away from the identity
  local sd = mm:state_dict{trainable = true}
  for k, v in pairs(sd) do sd[k] = v + 0.05 end
  mm:load_state_dict(sd)
  local before = mm:forward(e.input_ids, e.attention_mask)
  mm:save_adapter(kind)
  local fresh = ftl.load(dir .. "/llama-tiny")
  ftl.load_adapter(fresh, ftl.out_dir .. "/" .. kind)
  local after = fresh:forward(e.input_ids, e.attention_mask)
  assert(after:rel_err(before) < 1e-6, kind .. " " .. after:rel_err(before))
  print(kind, "round trip ok", a.name, #mm:adapters())
end
"#,
    );
    let out_dir = t.path().join("out");
    let (code, out, err) = run(
        &r,
        &[&format!("fx={fx}"), "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("round trip ok").count(), 5, "{out}");
    assert!(out_dir.join("lora/adapter_model.safetensors").exists());
    assert!(out_dir.join("adapter/adapter.safetensors").exists());
}

#[test]
fn training_through_a_recipe_matches_peft() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures().join("hf").display().to_string();
    let r = write_recipe(
        t.path(),
        "train.lua",
        r#"local ftl = require("ftl")
local dir = ftl.args.fx
local case = dir .. "/train-lora"
local e = ftl.tensor.load(case .. "/expected.safetensors")
local meta = ftl.json.read(case .. "/meta.json")
local m = ftl.load(dir .. "/llama-tiny")
ftl.load_adapter(m, case .. "/adapter_after_3_steps", {trainable = true})
local init = {}
for _, name in ipairs(meta.trainable) do init[name] = e["init." .. name] end
m:load_state_dict(init, {strict = true})
local data = ftl.data.tokens{input_ids = e.input_ids, attention_mask = e.attention_mask, labels = e.labels}
local losses, stopped_at = {}, nil
local r = ftl.train(m, data, {max_steps = 5, batch_size = 3, lr = meta.optimizer.lr, shuffle = false,
  checkpoint = ftl.args.ck,
  on_step = function(s)
    losses[#losses + 1] = s.loss
    if s.step == 3 then stopped_at = s.step; return false end
  end})
assert(r.steps == 3 and stopped_at == 3, "returning false stops")
assert((r.recomputed_layers > 0) == ftl.args.ck, "checkpoint recomputes layers: " .. r.recomputed_layers)
for k = 1, 3 do
  local want = meta.losses_before_each_step_then_final[k]
  assert(math.abs(losses[k] - want) < 1e-5, string.format("step %d loss %.7f vs %.7f", k, losses[k], want))
end
local sd = m:state_dict{trainable = true}
for _, name in ipairs(meta.trainable) do
  local upd = sd[name] - e["init." .. name]
  local want = e["step3." .. name] - e["init." .. name]
  assert(upd:rel_err(want) < 1e-2, name)
end
print("recipe training matches", r.loss, r.trainable, r.grad_bytes)
"#,
    );
    // with activation checkpointing: the same numbers
    let (code, out, err) = run(&r, &[&format!("fx={fx}"), "ck=true"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("recipe training matches"), "{out}");
    let out_dir = t.path().join("out");
    let (code, out, err) = run(
        &r,
        &[
            &format!("fx={fx}"),
            "ck=false",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("recipe training matches"), "{out}");
    let ron = std::fs::read_to_string(out_dir.join("run.ron")).unwrap();
    for k in [
        "sha256",
        "train.lua",
        "methods",
        "lora",
        "q_proj",
        "metrics",
        "steps: 3",
        "llama-tiny",
    ] {
        assert!(ron.contains(k), "run.ron lacks {k}:\n{ron}");
    }
}

#[test]
fn training_errors_in_recipes_name_the_line() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixture("llama-tiny").display().to_string();
    std::fs::write(
        t.path().join("d.jsonl"),
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"output\": \"c\"}\n",
    )
    .unwrap();
    let r = write_recipe(t.path(), "e1.lua", "local m = ftl.load(ftl.args.m)\nftl.lora(m)\nlocal d = ftl.data.jsonl('d.jsonl', {format = 'instruction'})\n");
    let (code, _, err) = run(&r, &[&format!("m={fx}")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("e1.lua:3") && err.contains("d.jsonl:2") && err.contains("instruction"),
        "{err}"
    );
    let r = write_recipe(
        t.path(),
        "e2.lua",
        "local m = ftl.load(ftl.args.m)\nlocal d = ftl.data.from({{text = 'hello'}})\n\nftl.train(m, d, {lr = 1e-3, max_steps = 1})\n",
    );
    let (code, _, err) = run(&r, &[&format!("m={fx}")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("e2.lua:4") && err.contains("nothing is trainable"),
        "{err}"
    );
    let r = write_recipe(
        t.path(),
        "e3.lua",
        "local m = ftl.load(ftl.args.m)\nftl.lora(m)\nlocal d = ftl.data.from({{text = 'hello'}})\nftl.train(m, d, {lr = 1e-3, max_step = 1})\n",
    );
    let (code, _, err) = run(&r, &[&format!("m={fx}")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("e3.lua:4") && err.contains("`max_step`") && err.contains("max_steps"),
        "{err}"
    );
}
