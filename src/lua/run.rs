//! The Lua side of the run manifest: one `RunLog` per recipe run, grown by `ftl.train` and
//! `ftl.evaluate` and written (with the copies of the recipe and its modules) before and after
//! each training, after each evaluation and when the run ends. Plan mode writes nothing.

use super::model::ModelHandle;
use super::{content_hash, location, Env, Outcome};
use crate::data::Dataset;
use crate::manifest::{self, DataRef, Evaluation, Manifest, MethodRecord, ModelRecord, Seeds};
use crate::train::{EvalInfo, TrainOpts, TrainResult};
use mlua::Lua;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct RunLog {
    manifest: Manifest,
    /// the recipe's source as run
    src: String,
    started: Instant,
    /// set by the first training or evaluation: runs that do neither leave no manifest
    active: bool,
    /// `ftl.train` calls so far, failed ones included (numbers metrics and plots)
    calls: usize,
    /// model path → hash of its config and weight headers
    hashes: HashMap<PathBuf, Option<String>>,
}

type Shared = Arc<Mutex<RunLog>>;

fn log(lua: &Lua) -> Option<Shared> {
    lua.app_data_ref::<Shared>().map(|l| l.clone())
}

/// Starts the run's log (before the recipe runs).
pub fn begin(lua: &Lua, env: &Env, src: &str) {
    if super::plan::active(lua) {
        return;
    }
    let mut m = Manifest::new(&env.recipe, &env.recipe_dir);
    m.args = env.args.clone();
    m.trust = env.trust;
    m.compare = env.compare;
    m.changed = env.watched.clone();
    m.rerun_of = env
        .copies
        .as_ref()
        .and_then(|c| c.parent())
        .map(|d| d.join(manifest::FILE));
    lua.set_app_data::<Shared>(Arc::new(Mutex::new(RunLog {
        manifest: m,
        src: src.to_string(),
        started: Instant::now(),
        active: env.watched.is_some(),
        calls: 0,
        hashes: HashMap::new(),
    })));
}

/// Records how the run ended and what the recipe returned, if it left a manifest.
pub fn finish(lua: &Lua, env: &Env, r: &crate::Result<Outcome>, returned: Option<String>) {
    let Some(l) = log(lua) else { return };
    let mut l = l.lock().unwrap();
    if !l.active {
        return;
    }
    l.manifest.returned = returned;
    l.manifest.status = match r {
        Ok(Outcome::Ok) => "done".into(),
        Ok(Outcome::Exit(c)) => format!("exit {c}"),
        Ok(Outcome::Cancelled) => "cancelled".into(),
        Err(e) => format!("failed: {e}"),
    };
    if let Err(e) = save(&mut l, env) {
        tracing::warn!("{e}");
    }
}

/// Writes the manifest and the copies of the recipe and of every local module required so far.
fn save(l: &mut RunLog, env: &Env) -> crate::Result<()> {
    let base = env.copies.as_ref().unwrap_or(&env.recipe_dir);
    let mut modules = Vec::new();
    for (path, read) in env.required.lock().unwrap().iter() {
        let src = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        if content_hash(src.as_bytes()) != *read {
            tracing::warn!(
                "{}: changed while the recipe ran; its copy in the run is the new content",
                path.display()
            );
        }
        let rel = path.strip_prefix(base).unwrap_or(path).to_path_buf();
        modules.push((rel, src));
    }
    l.manifest.time_s = l.started.elapsed().as_secs_f64();
    l.manifest.write(&env.out_dir, &l.src, &modules)
}

fn data_ref(d: &Dataset) -> DataRef {
    DataRef {
        origin: d.origin.clone(),
        files: d.files.iter().map(|f| f.path.clone()).collect(),
    }
}

/// Every option with its default filled in.
fn resolved(o: &TrainOpts) -> serde_json::Value {
    serde_json::json!({
        "epochs": o.epochs,
        "max_steps": o.max_steps,
        "batch_size": o.batch_size,
        "grad_accum": o.grad_accum,
        "max_len": o.max_len,
        "lr": o.lr,
        "optimizer": format!("{:?}", o.optimizer.kind),
        "weight_decay": o.optimizer.weight_decay,
        "clip": o.clip,
        "schedule": format!("{:?}", o.schedule.kind),
        "warmup": o.schedule.warmup,
        "min_lr": o.schedule.min_lr,
        "shuffle": o.shuffle,
        "group_by_length": o.group_by_length,
        "checkpoint": o.checkpoint,
        "seed": o.seed,
        "eval_every": o.eval_every,
        "eval_batch_size": o.eval_batch_size,
    })
}

/// A training about to start: its number (1-based) for metrics and plots, or none in plan mode.
/// The manifest is written now too, so a run that fails in it still leaves its recipe.
pub fn training_starts(
    lua: &Lua,
    env: &Env,
    data: &Dataset,
    eval: Option<&Dataset>,
) -> crate::Result<Option<usize>> {
    let Some(l) = log(lua) else { return Ok(None) };
    let mut l = l.lock().unwrap();
    l.active = true;
    l.calls += 1;
    l.manifest.add_data(&data.files);
    if let Some(e) = eval {
        l.manifest.add_data(&e.files);
    }
    save(&mut l, env)?;
    Ok(Some(l.calls))
}

/// What the model is: reference, resolved path, hash, architecture, methods.
fn model_record(l: &mut RunLog, h: &ModelHandle) -> (ModelRecord, Vec<MethodRecord>, u64) {
    let m = h.lock();
    let sha256 = match &m.dir {
        Some(p) => match l.hashes.get(p) {
            Some(s) => s.clone(),
            None => {
                let s = manifest::model_sha256(p)
                    .map_err(|e| tracing::warn!("hashing the model: {e}"))
                    .ok();
                l.hashes.insert(p.clone(), s.clone());
                s
            }
        },
        None => None,
    };
    let rec = ModelRecord {
        reference: m.reference.clone(),
        path: m.dir.clone(),
        arch: m
            .config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .into(),
        sha256,
        config: m.config.clone(),
    };
    let methods = m
        .adapters()
        .iter()
        .map(|a| MethodRecord {
            name: a.name.clone(),
            method: a.method.kind().into(),
            active: m.active.contains(&a.name),
            targets: a.targets.clone(),
            modules_to_save: a.modules_to_save.clone(),
            settings: a.method.settings(),
        })
        .collect();
    (rec, methods, m.seed)
}

/// The trained `call`: adds it to the manifest and writes it.
#[allow(clippy::too_many_arguments)]
pub fn training_done(
    lua: &Lua,
    env: &Env,
    call: usize,
    h: &ModelHandle,
    data: &Dataset,
    eval: Option<&Dataset>,
    options: serde_json::Value,
    opts: &TrainOpts,
    r: &TrainResult,
) -> crate::Result<()> {
    let Some(l) = log(lua) else { return Ok(()) };
    let mut l = l.lock().unwrap();
    let (model, methods, model_seed) = model_record(&mut l, h);
    l.manifest.trainings.push(manifest::Training {
        call,
        at: location(lua).unwrap_or_default(),
        model,
        methods,
        data: data_ref(data),
        eval_data: eval.map(data_ref),
        options,
        resolved: resolved(opts),
        seeds: Seeds {
            train: opts.seed,
            model: model_seed,
        },
        metrics: r.clone(),
    });
    save(&mut l, env)
}

/// An `ftl.evaluate` call: its data and result join the manifest.
pub fn evaluated(lua: &Lua, env: &Env, data: &Dataset, e: &EvalInfo) -> crate::Result<()> {
    let Some(l) = log(lua) else { return Ok(()) };
    let mut l = l.lock().unwrap();
    l.active = true;
    l.manifest.add_data(&data.files);
    l.manifest.evaluations.push(Evaluation {
        at: location(lua).unwrap_or_default(),
        data: data_ref(data),
        loss: e.loss,
        perplexity: e.perplexity,
        accuracy: e.accuracy,
    });
    save(&mut l, env)
}

/// What a recipe returned, in one short line: `acc=0.91 loss=0.2134`, `0.5`, `"text"`, `{3 items}`.
pub fn summary(values: &mlua::MultiValue) -> Option<String> {
    fn scalar(v: &mlua::Value) -> Option<String> {
        Some(match v {
            mlua::Value::Boolean(b) => b.to_string(),
            mlua::Value::Integer(i) => i.to_string(),
            mlua::Value::Number(n) => format!("{n:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            mlua::Value::String(s) => format!("{:?}", s.to_string_lossy()),
            _ => return None,
        })
    }
    fn one(v: &mlua::Value) -> String {
        if let Some(s) = scalar(v) {
            return s;
        }
        match v {
            mlua::Value::Table(t) => {
                let mut named: Vec<(String, String)> = Vec::new();
                let mut items = 0;
                for (k, v) in t.pairs::<mlua::Value, mlua::Value>().flatten() {
                    match (&k, scalar(&v)) {
                        (mlua::Value::String(k), Some(v)) => named.push((k.to_string_lossy(), v)),
                        _ => items += 1,
                    }
                }
                named.sort();
                let mut parts: Vec<String> =
                    named.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                if items > 0 {
                    parts.push(format!(
                        "{{{items} item{}}}",
                        if items == 1 { "" } else { "s" }
                    ));
                }
                parts.join(" ")
            }
            other => other.type_name().to_string(),
        }
    }
    let s: Vec<String> = values.iter().map(one).filter(|s| !s.is_empty()).collect();
    if s.is_empty() {
        return None;
    }
    let s = s.join(", ");
    Some(if s.chars().count() > 120 {
        s.chars().take(117).collect::<String>() + "..."
    } else {
        s
    })
}
