//! The run manifest through the binary: what OUT/run.ron records (trainings in order, data and
//! model hashes, copies of the recipe and its modules), metrics.jsonl and loss.svg, reruns from
//! run.ron (bit for bit on the CPU, refusing changed data), `ftl runs`, and plan mode writing
//! nothing.

use crate::common::*;
use crate::recipes::{ftl_bin, repo, run};
use ftl::manifest::Manifest;
use std::path::{Path, PathBuf};

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const HELPER: &str = r#"
local M = {}
function M.opts(steps, lr)
  return {max_steps = steps, batch_size = 2, lr = lr, seed = 3, log_every = 1}
end
return M
"#;

/// Two trainings (the first with eval data), an evaluation on a third file, a saved adapter.
const RECIPE: &str = r#"
local h = require("helper")
local m = ftl.load(ftl.args.model)
ftl.lora(m, {targets = {"q_proj", "v_proj"}, r = 4})
local d = ftl.data.jsonl("d.jsonl")
local o = h.opts(ftl.args.steps, 1e-2)
o.eval = {data = ftl.data.jsonl("e.jsonl"), every = 2}
local r1 = ftl.train(m, d, o)
print(string.format("loss1 %.9g", r1.loss))
local r2 = ftl.train(m, d, h.opts(2, 5e-3))
print(string.format("loss2 %.9g", r2.loss))
print("eval", ftl.evaluate(m, ftl.data.jsonl("f.jsonl")).loss)
if ftl.args.fail then error("after the trainings") end
m:save_adapter(ftl.out_dir .. "/adapter")
"#;

fn lines(n: usize, word: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"text\": \"{word} line {i} of some tiny text to learn\"}}\n"))
        .collect()
}

/// A recipe directory: train.lua, helper.lua and three data files.
fn setup(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("helper.lua"), HELPER).unwrap();
    std::fs::write(dir.join("d.jsonl"), lines(4, "train")).unwrap();
    std::fs::write(dir.join("e.jsonl"), lines(2, "eval")).unwrap();
    std::fs::write(dir.join("f.jsonl"), lines(2, "test")).unwrap();
    let r = dir.join("train.lua");
    std::fs::write(&r, RECIPE).unwrap();
    r
}

fn train(recipe: &Path, out: &Path, extra: &[&str]) -> String {
    let model = format!("model={}", fixture("llama-tiny").display());
    let mut args = vec![model.as_str(), "--out", out.to_str().unwrap()];
    args.extend(extra);
    let (code, stdout, err) = run(recipe, &args);
    assert_eq!(code, 0, "{stdout}\n{err}");
    stdout
}

fn rerun(ron: &Path, out: &Path) -> (i32, String, String) {
    let o = ftl_bin()
        .arg("run")
        .arg(ron)
        .args(["--out", out.to_str().unwrap(), "-q"])
        .current_dir(repo())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn the_manifest_lists_each_training_in_order_with_hashes_and_copies() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    train(&recipe, &out, &["steps=3"]);
    let m = Manifest::read(&out.join("run.ron")).unwrap();
    assert_eq!(m.format, 2);
    assert_eq!(m.status, "done");
    assert_eq!(m.recipe.path, recipe);
    assert_eq!(m.recipe_dir, t.path());
    assert!(
        m.args.contains(&("steps".into(), "3".into())),
        "{:?}",
        m.args
    );
    // both trainings, in order, with their own options and metrics
    let calls: Vec<usize> = m.trainings.iter().map(|t| t.call).collect();
    assert_eq!(calls, [1, 2]);
    assert!(
        m.trainings[0].at.ends_with("train.lua:8"),
        "{}",
        m.trainings[0].at
    );
    assert!(
        m.trainings[1].at.ends_with("train.lua:10"),
        "{}",
        m.trainings[1].at
    );
    assert_eq!(m.trainings[0].metrics.steps, 3);
    assert_eq!(m.trainings[1].metrics.steps, 2);
    assert_eq!(m.trainings[0].resolved["lr"], 1e-2);
    assert_eq!(m.trainings[1].resolved["lr"], 5e-3);
    assert_eq!(m.trainings[0].seeds.train, 3);
    assert!(m.trainings[0].eval_data.is_some() && m.trainings[1].eval_data.is_none());
    let meth = &m.trainings[0].methods[0];
    assert_eq!(meth.method, "lora");
    assert_eq!(meth.targets.len(), 4, "{:?}", meth.targets);
    assert!(meth.settings.contains(r#""r":4"#), "{}", meth.settings);
    // every data file, eval= and ftl.evaluate ones too, with the sha256 of its bytes
    let names: Vec<String> = m
        .data
        .iter()
        .map(|d| d.path.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["d.jsonl", "e.jsonl", "f.jsonl"]);
    for d in &m.data {
        assert_eq!(
            d.sha256,
            sha256(&std::fs::read(&d.path).unwrap()),
            "{}",
            d.path.display()
        );
    }
    // the model: as the recipe named it, hashed over config.json and the safetensors header
    let fx = fixture("llama-tiny");
    let model = &m.trainings[0].model;
    assert_eq!(model.reference.as_deref(), Some(fx.to_str().unwrap()));
    let mut want = std::fs::read(fx.join("config.json")).unwrap();
    let st = std::fs::read(fx.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    want.extend(&st[..8 + n]);
    assert_eq!(model.sha256.as_deref(), Some(sha256(&want).as_str()));
    assert_eq!(model.arch, "llama");
    // copies of the recipe and the required module, hashed
    assert_eq!(
        std::fs::read_to_string(out.join("recipe/train.lua")).unwrap(),
        RECIPE
    );
    assert_eq!(
        std::fs::read_to_string(out.join("recipe/helper.lua")).unwrap(),
        HELPER
    );
    assert_eq!(m.recipe.sha256, sha256(RECIPE.as_bytes()));
    assert_eq!(m.modules.len(), 1);
    assert_eq!(m.modules[0].path, t.path().join("helper.lua"));
    assert_eq!(m.modules[0].sha256, sha256(HELPER.as_bytes()));
    // ftl's version and the commit it was built from
    assert_eq!(m.ftl_version, env!("CARGO_PKG_VERSION"));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(m.git_commit, head.unwrap_or_else(|| "unknown".into()));
}

#[test]
fn metrics_jsonl_has_a_line_per_step_and_evaluation_and_each_training_a_plot() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    train(&recipe, &out, &["steps=4"]);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let steps: Vec<(u64, u64)> = rows
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["train"].as_u64().unwrap(), r["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(steps, [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]);
    let evals: Vec<u64> = rows
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, [2, 4], "eval every 2 steps of the first training");
    let m = Manifest::read(&out.join("run.ron")).unwrap();
    let last = rows
        .iter()
        .rfind(|r| r["train"] == 1 && r.get("loss").is_some())
        .unwrap();
    assert_eq!(last["loss"].as_f64().unwrap(), m.trainings[0].metrics.loss);
    for r in rows.iter().filter(|r| r.get("loss").is_some()) {
        for k in ["epoch", "lr", "grad_norm", "tokens_per_s"] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k} in {r}");
        }
    }
    for svg in ["loss.svg", "loss-2.svg"] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(s.contains("<polyline"), "{svg} has no line");
    }
    assert!(!out.join("loss-3.svg").exists());
}

#[test]
fn a_rerun_from_run_ron_gives_the_same_adapter_bit_for_bit_from_the_copies() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    let first = train(&recipe, &out, &["steps=3"]);
    // the originals change after the run: the rerun reads the copies
    std::fs::write(&recipe, RECIPE.replace("1e-2", "1e-1")).unwrap();
    std::fs::write(
        t.path().join("helper.lua"),
        HELPER.replace("seed = 3", "seed = 4"),
    )
    .unwrap();
    let again = t.path().join("again");
    let (code, stdout, err) = rerun(&out.join("run.ron"), &again);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert_eq!(stdout, first);
    let a = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(again.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(a == b, "the rerun's adapter differs");
    let m = Manifest::read(&again.join("run.ron")).unwrap();
    assert_eq!(m.rerun_of.as_deref(), Some(out.join("run.ron").as_path()));
    assert_eq!(m.recipe.path, recipe, "a rerun records the original recipe");
    assert_eq!(m.recipe.sha256, sha256(RECIPE.as_bytes()));
    // with no --out, into the run's own directory
    let (code, stdout, err) = ftl_bin()
        .args(["run", "run.ron", "-q"])
        .current_dir(&out)
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
        .unwrap();
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert_eq!(stdout, first);
    let m = Manifest::read(&out.join("run.ron")).unwrap();
    assert_eq!(m.rerun_of.as_deref(), Some(out.join("run.ron").as_path()));
    // a rerun takes no arguments of its own: a usage error
    let o = ftl_bin()
        .args(["run", "run.ron", "steps=9"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("recorded"));
}

#[test]
fn a_rerun_refuses_changed_data_and_missing_copies_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    train(&recipe, &out, &["steps=2"]);
    let ron = out.join("run.ron");
    // data used only by ftl.evaluate is checked too
    let f = t.path().join("f.jsonl");
    std::fs::write(&f, lines(3, "test")).unwrap();
    let (code, stdout, err) = rerun(&ron, &t.path().join("again"));
    assert_eq!(code, 1, "{stdout}\n{err}");
    assert!(
        err.contains(&format!("{}: the data changed since the run", f.display())),
        "{err}"
    );
    assert!(
        !t.path().join("again").exists(),
        "a refused rerun writes nothing"
    );
    std::fs::write(&f, lines(2, "test")).unwrap();
    std::fs::remove_file(out.join("recipe/helper.lua")).unwrap();
    let (code, stdout, err) = rerun(&ron, &t.path().join("again"));
    assert_eq!(code, 1, "{stdout}\n{err}");
    let copy = out.join("recipe/helper.lua");
    assert!(
        err.contains(&format!("{}: the copy of", copy.display())),
        "{err}"
    );
}

#[test]
fn a_failed_run_keeps_the_trainings_done_before_it() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    let model = format!("model={}", fixture("llama-tiny").display());
    let (code, _, err) = run(
        &recipe,
        &[
            &model,
            "steps=2",
            "fail=true",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    let m = Manifest::read(&out.join("run.ron")).unwrap();
    assert_eq!(m.trainings.len(), 2);
    assert!(
        m.status.starts_with("failed: ") && m.status.contains("after the trainings"),
        "{}",
        m.status
    );
}

#[test]
fn ftl_runs_lists_each_run_with_its_final_losses_and_broken_manifests_with_their_error() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let runs = t.path().join("runs");
    train(&recipe, &runs.join("short"), &["steps=2"]);
    train(&recipe, &runs.join("deep/long"), &["steps=5"]);
    std::fs::create_dir_all(runs.join("broken")).unwrap();
    std::fs::write(runs.join("broken/run.ron"), "(format: 2, recipe: 7").unwrap();
    let o = ftl_bin().arg("runs").arg(&runs).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let head = out.lines().next().unwrap();
    for col in [
        "run",
        "recipe",
        "args",
        "loss",
        "eval loss",
        "time",
        "trainable",
    ] {
        assert!(head.contains(col), "{head}");
    }
    for (dir, steps) in [("short", "steps=2"), ("deep/long", "steps=5")] {
        let m = Manifest::read(&runs.join(dir).join("run.ron")).unwrap();
        let last = &m.trainings[1].metrics;
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{dir} ")))
            .unwrap_or_else(|| panic!("no row for {dir}:\n{out}"));
        assert!(line.contains("train.lua") && line.contains(steps), "{line}");
        assert!(line.contains(&format!("{:.4}", last.loss)), "{line}");
        assert!(line.contains(&last.trainable.to_string()), "{line}");
        // the last training had no eval=: the eval loss is the ftl.evaluate after it
        assert!(
            line.contains(&format!("{:.4}", m.evaluations[0].loss)),
            "{line}"
        );
    }
    let broken = out.lines().find(|l| l.starts_with("broken")).unwrap();
    assert!(
        broken.contains("error:") && broken.contains("broken/run.ron"),
        "{broken}"
    );
    let o = ftl_bin()
        .arg("runs")
        .arg(t.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere: no such directory"));
}

#[test]
fn a_plan_writes_no_manifest_and_no_metrics() {
    let t = tempfile::tempdir().unwrap();
    let recipe = setup(t.path());
    let out = t.path().join("out");
    let o = ftl_bin()
        .arg("check")
        .arg(&recipe)
        .arg(format!("model={}", fixture("llama-tiny").display()))
        .args(["steps=2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("ftl.train #1 at ") && stdout.contains("train.lua:8"),
        "{stdout}"
    );
    assert!(!out.exists(), "a plan wrote into {}", out.display());
    assert!(!t.path().join("runs").exists());
}
