//! Plan mode and inspection: `ftl check`'s estimate against a real run's gradient and optimizer
//! bytes, what a plan prints, lists and refuses to do, where it ends; `ftl inspect`; exit codes.

use crate::common::fixture;
use crate::recipes::{ftl_bin, repo};
use ftl::lua::plan::PlanState;
use ftl::lua::{Env, Runtime};
use std::path::Path;
use std::sync::Arc;

/// Runs `src` as a recipe in a tempdir, in plan mode or for real; the runtime afterwards.
fn runtime(dir: &Path, src: &str, plan: bool) -> (Runtime, Option<Arc<PlanState>>) {
    let recipe = dir.join(if plan { "plan.lua" } else { "run.lua" });
    std::fs::write(&recipe, src).unwrap();
    let mut env = Env::new(&recipe, Some(&dir.join("out")), false);
    env.quiet = true;
    let model = fixture("llama-tiny").display().to_string();
    let gpt2 = fixture("gpt2-tiny").display().to_string();
    let rt = Runtime::new(env, &[("model".into(), model), ("gpt2".into(), gpt2)]).unwrap();
    let state = plan.then(|| {
        let s = Arc::new(PlanState::default());
        rt.lua.set_app_data(s.clone());
        s
    });
    rt.run_source(src)
        .unwrap_or_else(|e| panic!("{e}\n--- recipe:\n{src}"));
    (rt, state)
}

fn recipe(setup: &str, train: &str) -> String {
    format!(
        r#"
local ftl = require("ftl")
local m = ftl.load(ftl.args.{model})
{setup}
local rows = {{}}
for i = 1, 24 do rows[i] = {{text = string.rep("tiny words ", i % 5 + 2)}} end
local d = ftl.data.from(rows, {{format = "text"}})
r = ftl.train(m, d, {{lr = 1e-3, batch_size = 4, max_steps = 3, log_every = 1000, {train}}})
"#,
        model = if setup.contains("gpt2") {
            "gpt2"
        } else {
            "model"
        },
        setup = setup.replace("--gpt2", ""),
    )
}

#[test]
fn the_plans_gradient_and_optimizer_bytes_are_the_runs() {
    let cases = [
        ("ftl.lora(m, {targets = {'q_proj', 'v_proj'}, r = 4})", ""),
        (
            "ftl.lora(m, {targets = 'all-linear', r = 2, layers = {1}})",
            "",
        ),
        ("m:unfreeze()", ""),
        ("m:unfreeze()", "grad_accum = 2"),
        ("m:unfreeze()", "clip = 1.0"),
        (
            "m:unfreeze('model.layers.1.**')",
            "optimizer = 'sgd', momentum = 0.9",
        ),
        ("m:unfreeze()", "optimizer = 'sgd'"),
        ("ftl.ia3(m, {})", "clip = 1.0"),
        ("ftl.lora(m, {r = 4, dora = true})", "grad_accum = 3"),
        ("ftl.prefix(m, {tokens = 3})", ""),
        ("ftl.prompt(m, {tokens = 3})", ""),
        ("ftl.adapter(m, {style = 'houlsby', size = 8})", ""),
        ("m:unfreeze() --gpt2", ""),
        ("m:unfreeze() --gpt2", "checkpoint = true"),
    ];
    for (setup, train) in cases {
        let t = tempfile::tempdir().unwrap();
        let src = recipe(setup, train);
        let (_, state) = runtime(t.path(), &src, true);
        let plan = state.unwrap().trains.lock().unwrap()[0].clone();
        let (rt, _) = runtime(t.path(), &src, false);
        let r: mlua::Table = rt.lua.globals().get("r").unwrap();
        let grad: u64 = r.get("grad_bytes").unwrap();
        let opt: u64 = r.get("optimizer_bytes").unwrap();
        let trainable: usize = r.get("trainable").unwrap();
        let steps: usize = r.get("steps").unwrap();
        let case = format!("{setup} / {train}");
        assert_eq!(plan.memory.gradients, grad, "gradient bytes, {case}");
        assert_eq!(plan.memory.optimizer, opt, "optimizer bytes, {case}");
        assert_eq!(plan.trainable, trainable, "trainable, {case}");
        assert_eq!(plan.steps, steps, "steps, {case}");
        assert!(
            plan.memory_checkpointed.activations <= plan.memory.activations,
            "{case}"
        );
    }
}

#[test]
fn a_plan_reads_no_values_writes_nothing_and_ends_at_the_first_read() {
    let t = tempfile::tempdir().unwrap();
    let src = r#"
local ftl = require("ftl")
local m = ftl.load(ftl.args.model)
local w = m:state_dict()["model.layers.0.self_attn.q_proj.weight"]
assert(w:shape()[1] == 64)
ftl.lora(m, {targets = {"q_proj", "v_proj"}, r = 4})
local d = ftl.data.from({{text = "a b c"}, {text = "d e f g"}}, {format = "text"})
local before = ftl.evaluate(m, d)
local r = ftl.train(m, d, {lr = 1e-3, epochs = 3, batch_size = 1, warmup = 1, schedule = "linear",
  on_step = function() error("a plan runs no callbacks") end})
assert(r.steps == 6 and r.epochs == 3, r.steps)
m:save_adapter("adapter")
ftl.tensor.save("t.safetensors", {x = w})
io.write_file("notes.txt", "x")
m:merge()
m:save("merged")
local logits = m:forward(ftl.tensor.from({{1, 2, 3}}))
error("not reached")
"#;
    let (_, state) = runtime(t.path(), src, true);
    let t2 = tempfile::tempdir().unwrap();
    let (_, late) = runtime(
        t2.path(),
        "local ftl = require('ftl')\nlocal m = ftl.load(ftl.args.model)\nlocal d = ftl.data.from({{text = 'a b'}}, {format = 'text'})\nlocal e = ftl.evaluate(m, d)\nprint(e.loss)\n",
        true,
    );
    let end = late.unwrap().end.lock().unwrap().clone().unwrap();
    assert!(
        end.contains("plan.lua:5: the evaluation's `loss` reads values"),
        "{end}"
    );
    let s = state.unwrap();
    assert!(
        !t.path().join("out").exists(),
        "a plan wrote its output directory"
    );
    let writes: Vec<String> = s
        .writes
        .lock()
        .unwrap()
        .iter()
        .map(|(what, path, at)| format!("{what} {path} {at}"))
        .collect();
    let out = t.path().join("out");
    assert_eq!(writes.len(), 4, "{writes:?}");
    for (i, (what, file, line)) in [
        ("m:save_adapter", "adapter", 12),
        ("ftl.tensor.save", "t.safetensors", 13),
        ("io.write_file", "notes.txt", 14),
        ("m:save", "merged", 16),
    ]
    .iter()
    .enumerate()
    {
        let want = format!("{what} {} ", out.join(file).display());
        assert!(writes[i].starts_with(&want), "{} vs {want}", writes[i]);
        assert!(
            writes[i].ends_with(&format!("plan.lua:{line}")),
            "{}",
            writes[i]
        );
    }
    let end = s.end.lock().unwrap().clone().unwrap();
    assert!(end.contains("plan.lua:17: m:forward reads values"), "{end}");
    let p = &s.trains.lock().unwrap()[0];
    assert_eq!((p.steps, p.epochs, p.steps_per_epoch), (6, 3, 2));
    assert_eq!(p.examples, 2);
    // linear with one warm-up step: 0, then the peak, then down to lr/5 at the last step
    assert_eq!(p.lr_start, 0.0);
    assert!((p.lr_peak - 1e-3).abs() < 1e-12);
    assert!((p.lr_end - 1e-3 / 5.0).abs() < 1e-12, "{}", p.lr_end);
    assert_eq!(p.methods.len(), 1);
    assert_eq!(
        p.methods[0].modules,
        vec!["model.layers.{0..1}.self_attn.{q_proj,v_proj}"]
    );
    assert_eq!(p.methods[0].count, 4);
}

fn ftl(args: &[&str], dir: &Path) -> (i32, String, String) {
    let o = ftl_bin().args(args).current_dir(dir).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn ftl_check_prints_the_plan_and_uses_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny").display().to_string();
    std::fs::write(
        t.path().join("r.lua"),
        r#"local ftl = require("ftl")
local m = ftl.load(ftl.args.model, {device = "cuda"})
ftl.lora(m, {targets = "all-linear", r = 8})
local d = ftl.data.from({{text = "hello there"}, {text = "general kenobi"}}, {format = "text"})
local r = ftl.train(m, d, {lr = 2e-4, max_steps = 10, batch_size = 2, schedule = "cosine", warmup = 2})
m:save_adapter("lora")
"#,
    )
    .unwrap();
    let (code, out, err) = ftl(&["check", "r.lua", &format!("model={model}")], t.path());
    assert_eq!(code, 0, "{out}\n{err}");
    for want in [
        "ftl.train #1 at r.lua:5",
        "lora \"default\": 14 modules",
        "model.layers.{0..1}.self_attn.{q_proj,k_proj,v_proj,o_proj}",
        "model.layers.{0..1}.mlp.{gate_proj,up_proj,down_proj}",
        "schedule: 10 steps",
        "cosine, warm-up 2",
        "memory at batch 2 x",
        "optimizer state",
        "checkpoint=true",
        "writes (not made):",
        "lora  (m:save_adapter at r.lua:6)",
        "plan complete: 1 training call",
    ] {
        assert!(out.contains(want), "missing `{want}` in\n{out}");
    }
    assert!(!t.path().join("runs").exists());

    // a broken recipe: exit 1 with the line; a usage error: exit 2
    std::fs::write(
        t.path().join("bad.lua"),
        "local ftl = require('ftl')\nlocal m = ftl.load(ftl.args.model)\nftl.lora(m, {rank = 4})\n",
    )
    .unwrap();
    let (code, _, err) = ftl(&["check", "bad.lua", &format!("model={model}")], t.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bad.lua:3") && err.contains("did you mean `r`"),
        "{err}"
    );
    let (code, _, err) = ftl(&["check"], t.path());
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = ftl(&["frobnicate"], t.path());
    assert_eq!(code, 2);
    let (code, _, err) = ftl(&["check", "missing.lua"], t.path());
    assert_eq!(code, 1);
    assert!(err.contains("missing.lua"), "{err}");
}

#[test]
fn ftl_inspect_shows_the_tree_and_marks_a_pattern() {
    let model = fixture("llama-tiny").display().to_string();
    let (code, out, err) = ftl(&["inspect", &model, "q_proj,v_proj"], &repo());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("llama, 2 layers, hidden 64"), "{out}");
    assert!(
        out.contains("model.layers.{0..1} (2 layers, 36,992 parameters each)"),
        "{out}"
    );
    let marked: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 2, "{out}");
    assert!(marked[0].contains("self_attn.q_proj") && marked[0].contains("[64, 64]"));
    assert!(marked[1].contains("self_attn.v_proj") && marked[1].contains("[32, 64]"));
    assert!(
        out.contains("matches 4 modules (12,288 parameters)"),
        "{out}"
    );
    assert!(
        out.contains("model.layers.{0..1}.self_attn.{q_proj,v_proj}"),
        "{out}"
    );

    // a pattern for one layer marks it within the folded layers
    let (_, out, _) = ftl(&["inspect", &model, "model.layers.1.mlp.*"], &repo());
    assert!(out.contains("mlp.up_proj  (* in model.layers.1)"), "{out}");
    // the tied GPT-2 head
    let (_, out, _) = ftl(
        &["inspect", &fixture("gpt2-tiny").display().to_string()],
        &repo(),
    );
    assert!(
        out.contains("lm_head") && out.contains("tied to transformer.wte"),
        "{out}"
    );

    let (code, _, err) = ftl(&["inspect", &model, "q_prj"], &repo());
    assert_eq!(code, 1);
    assert!(err.contains("q_proj"), "similar paths listed: {err}");
    let (code, _, err) = ftl(&["inspect", "no/such/dir"], &repo());
    assert_eq!(code, 1);
    assert!(err.contains("no/such/dir"), "{err}");
}

#[test]
fn ftl_check_plans_lora_on_the_real_smollm2() {
    let Some(gguf) = crate::gguf::smollm2() else {
        eprintln!("models/ has no SmolLM2 GGUF (scripts/fetch-models.sh): skipped");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("r.lua"),
        r#"local ftl = require("ftl")
local m = ftl.load(ftl.args.model)
ftl.lora(m, {targets = "all-linear", r = 8, layers = "0-29"})
local rows = {}
for i = 1, 100 do rows[i] = {messages = {{role = "user", content = "Say " .. i}, {role = "assistant", content = tostring(i)}}} end
local d = ftl.data.from(rows, {format = "chat"})
ftl.train(m, d, {lr = 1e-4, epochs = 2, batch_size = 8, grad_accum = 2, checkpoint = true})
"#,
    )
    .unwrap();
    let (code, out, err) = ftl(
        &["check", "r.lua", &format!("model={}", gguf.display())],
        t.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // r·(in + out) per module: q, o 576→576; k, v 576→192; gate, up 576→1536; down 1536→576
    let per_layer = 8 * (2 * 1152 + 2 * 768 + 3 * 2112);
    assert_eq!(per_layer, 81_408);
    let want = format!(
        "lora \"default\": 210 modules, {} trainable",
        ftl::check::count(30 * per_layer)
    );
    assert!(out.contains(&want), "missing `{want}` in\n{out}");
    assert!(out.contains("model.layers.{0..29}.self_attn.{q_proj,k_proj,v_proj,o_proj}"));
    // as PEFT's print_trainable_parameters: of all parameters, the adapter's included
    assert!(out.contains("of 136,957,248"), "{out}");
    // 100 examples in batches of 8, two per step: 7 steps an epoch
    assert!(
        out.contains("schedule: 14 steps, 2 epochs of 7 steps (batch 8 x 2 accumulated)"),
        "{out}"
    );
    assert!(out.contains("(the recipe checkpoints)"), "{out}");

    // inspect shows the file's quantization per weight (the loader dequantizes to f32)
    let (code, out, err) = ftl(&["inspect", &gguf.display().to_string()], t.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(loaded as f32 on the CPU)"), "{out}");
    let dtype = |module: &str| -> String {
        let l = out
            .lines()
            .find(|l| l.trim_start_matches(['*', ' ']).starts_with(module))
            .unwrap_or_else(|| panic!("no {module} in\n{out}"));
        l.split_whitespace().rev().nth(1).unwrap().to_string()
    };
    assert_eq!(dtype("self_attn.q_proj"), "q4_1");
    assert_eq!(dtype("input_layernorm"), "f32");
    assert_eq!(dtype("model.embed_tokens"), "q8_0");
    assert_eq!(dtype("lm_head"), "q8_0", "tied: the embedding's dtype");
}
