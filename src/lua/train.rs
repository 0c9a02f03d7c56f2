//! `ftl.train` and `ftl.evaluate`: options from the recipe, Lua callbacks as step hooks,
//! checkpoints, and the metrics recorder; each call reports to the run manifest (`run.rs`).

use super::api;
use super::data::DataHandle;
use super::model::{env, pattern, ModelHandle};
use super::opts::Opts;
use super::{lua_err, LuaExt};
use super::{Env, Resume};
use crate::metrics::Recorder;
use crate::peft::target::Selector;
use crate::train::checkpoint::SaveOpts;
use crate::train::optim::{Kind, OptimOpts};
use crate::train::progress::Progress;
use crate::train::schedule::{self, Schedule};
use crate::train::{EvalInfo, Flow, Hook, NonFinite, StepInfo, TrainOpts, TrainResult};
use mlua::{Function, Lua, Table, Value};

fn data_arg(lua: &Lua, v: &Value, what: &str) -> mlua::Result<crate::data::Dataset> {
    match v {
        Value::UserData(u) => u
            .borrow::<DataHandle>()
            .map(|d| d.0.clone())
            .map_err(|_| lua_err(lua, format!("{what}: expected a dataset (ftl.data.*)"))),
        _ => Err(lua_err(
            lua,
            format!(
                "{what}: expected a dataset (ftl.data.*), got {}",
                v.type_name()
            ),
        )),
    }
}

fn model_arg(lua: &Lua, v: &Value) -> mlua::Result<ModelHandle> {
    match v {
        Value::UserData(u) => u
            .borrow::<ModelHandle>()
            .map(|m| m.clone())
            .map_err(|_| lua_err(lua, "expected a model")),
        _ => Err(lua_err(lua, "expected a model as the first argument")),
    }
}

fn train_opts(lua: &Lua, o: &Opts) -> mlua::Result<TrainOpts> {
    // every default is TrainOpts::default()'s (AdamW's betas and eps among them)
    let d = TrainOpts::default();
    let Kind::AdamW {
        beta1,
        beta2,
        eps: d_eps,
    } = d.optimizer.kind
    else {
        unreachable!("the default optimizer is AdamW")
    };
    let kind = match o.or::<String>("optimizer", "adamw".into())?.as_str() {
        "adamw" => {
            let betas: Vec<f64> = o.or("betas", vec![beta1, beta2])?;
            if betas.len() != 2 {
                return Err(lua_err(lua, "ftl.train: betas must be {beta1, beta2}"));
            }
            Kind::AdamW {
                beta1: betas[0],
                beta2: betas[1],
                eps: o.or("eps", d_eps)?,
            }
        }
        "sgd" => Kind::Sgd {
            momentum: o.or("momentum", 0.0)?,
        },
        other => {
            return Err(lua_err(
                lua,
                format!("ftl.train: unknown optimizer `{other}` (adamw, sgd)"),
            ))
        }
    };
    let sched = o.or::<String>("schedule", "constant".into())?;
    let skind = schedule::Kind::parse(&sched).ok_or_else(|| {
        lua_err(
            lua,
            format!("ftl.train: unknown schedule `{sched}` (constant, linear, cosine)"),
        )
    })?;
    let min_lr: Option<f64> = o.get("min_lr")?;
    if min_lr.is_some() && skind != schedule::Kind::Cosine {
        return Err(lua_err(
            lua,
            "ftl.train: min_lr applies to the cosine schedule",
        ));
    }
    let eval_every = match o.value("eval")? {
        Value::Table(t) => t.get::<Option<usize>>("every")?,
        _ => None,
    };
    let eval_bs = match o.value("eval")? {
        Value::Table(t) => t.get::<Option<usize>>("batch_size")?,
        _ => None,
    };
    let batch_size = o.or("batch_size", d.batch_size)?;
    Ok(TrainOpts {
        epochs: o.get("epochs")?,
        max_steps: o.get("max_steps")?,
        batch_size,
        grad_accum: o.or("grad_accum", d.grad_accum)?,
        max_len: o.get("max_len")?,
        lr: o
            .get("lr")?
            .ok_or_else(|| lua_err(lua, "ftl.train: lr is required"))?,
        optimizer: OptimOpts {
            kind,
            weight_decay: o.or("weight_decay", d.optimizer.weight_decay)?,
        },
        no_decay: pattern(lua, &o.value("no_decay")?)?.map(Selector::new),
        clip: o.get("clip")?,
        schedule: Schedule {
            kind: skind,
            warmup: o.or("warmup", d.schedule.warmup)?,
            min_lr,
        },
        shuffle: o.or("shuffle", d.shuffle)?,
        group_by_length: o.or("group_by_length", d.group_by_length)?,
        checkpoint: o.or("checkpoint", d.checkpoint)?,
        seed: o.or("seed", d.seed)?,
        eval_every,
        eval_batch_size: eval_bs.unwrap_or(batch_size),
        save: None,
        resume: None,
        on_nonfinite: match o.or::<String>("on_nonfinite", "stop".into())?.as_str() {
            "stop" => NonFinite::Stop,
            "skip" => NonFinite::Skip,
            other => {
                return Err(lua_err(
                    lua,
                    format!("ftl.train: on_nonfinite must be \"stop\" or \"skip\", got `{other}`"),
                ))
            }
        },
    })
}

/// `save = {dir=, every=, keep=}` and `resume = true | dir` (or `ftl run --resume`) of the
/// `call`th training: checkpoints go to `OUT/checkpoints` (`checkpoints-N` for later calls)
/// unless `dir` says otherwise, also when no `save` is given (a run interrupted by a signal
/// checkpoints there).
fn checkpoint_opts(
    lua: &Lua,
    o: &Opts,
    env: &Env,
    call: Option<usize>,
    opts: &mut TrainOpts,
) -> mlua::Result<()> {
    let n = call.unwrap_or(1);
    let default = if n == 1 {
        "checkpoints".to_string()
    } else {
        format!("checkpoints-{n}")
    };
    let (dir, every, keep, at_end) = match o.value("save")? {
        Value::Table(t) => {
            let so = Opts::new(lua, Some(t), &api::TRAIN_SAVE)?;
            let every: Option<usize> = so.get("every")?;
            let keep: Option<usize> = so.get("keep")?;
            if every == Some(0) || keep == Some(0) {
                return Err(lua_err(
                    lua,
                    "ftl.train: save's every and keep must be at least 1",
                ));
            }
            (so.or("dir", default)?, every, keep, true)
        }
        Value::Nil => (default, None, None, false),
        _ => {
            return Err(lua_err(
                lua,
                "ftl.train: save must be a table {dir=, every=, keep=}",
            ))
        }
    };
    let dir = env.output(&dir).lua(lua)?;
    opts.resume = match o.value("resume")? {
        Value::Boolean(true) => Some(dir.clone()),
        Value::Nil | Value::Boolean(false) => None,
        Value::String(s) => Some(
            env.readable(&env.recipe_dir.join(s.to_str()?.as_ref()))
                .lua(lua)?,
        ),
        _ => {
            return Err(lua_err(
                lua,
                "ftl.train: resume must be true or a directory",
            ))
        }
    };
    match &env.resume {
        Some(Resume::Latest) => opts.resume = Some(dir.clone()),
        Some(Resume::From(p)) if n == 1 => opts.resume = Some(p.clone()),
        _ => {}
    }
    opts.save = Some(SaveOpts {
        dir,
        every,
        at_end,
        keep,
        manifest: Some(env.out_dir.join(crate::manifest::FILE)),
    });
    Ok(())
}

/// `on_step` / `on_eval` from the recipe.
struct LuaHooks<'a> {
    lua: &'a Lua,
    on_step: Option<Function>,
    on_eval: Option<Function>,
}

fn flow(v: Value) -> Flow {
    if matches!(v, Value::Boolean(false)) {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

fn callback_err(e: mlua::Error) -> crate::Error {
    crate::Error::msg(super::describe(&e))
}

impl Hook for LuaHooks<'_> {
    fn on_step(&mut self, s: &StepInfo) -> crate::Result<Flow> {
        let Some(f) = &self.on_step else {
            return Ok(Flow::Continue);
        };
        let t = (|| -> mlua::Result<Table> {
            let t = self.lua.create_table()?;
            t.set("step", s.step)?;
            t.set("total_steps", s.total_steps)?;
            t.set("epoch", s.epoch)?;
            t.set("loss", s.loss)?;
            t.set("lr", s.lr)?;
            t.set("grad_norm", s.grad_norm)?;
            t.set("tokens", s.tokens)?;
            t.set("tokens_per_s", s.tokens_per_s)?;
            t.set("time_s", s.elapsed_s)?;
            Ok(t)
        })()
        .map_err(callback_err)?;
        f.call::<Value>(t).map(flow).map_err(callback_err)
    }

    fn on_eval(&mut self, e: &EvalInfo) -> crate::Result<Flow> {
        let Some(f) = &self.on_eval else {
            return Ok(Flow::Continue);
        };
        let t = eval_table(self.lua, e).map_err(callback_err)?;
        f.call::<Value>(t).map(flow).map_err(callback_err)
    }
}

fn eval_table(lua: &Lua, e: &EvalInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("step", e.step)?;
    t.set("loss", e.loss)?;
    t.set("perplexity", e.perplexity)?;
    t.set("accuracy", e.accuracy)?;
    Ok(t)
}

fn result_table(lua: &Lua, r: &TrainResult) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("steps", r.steps)?;
    t.set("epochs", r.epochs)?;
    t.set("loss", r.loss)?;
    t.set("eval_loss", r.eval_loss)?;
    t.set("tokens", r.tokens)?;
    t.set("tokens_per_s", r.tokens_per_s)?;
    t.set("time_s", r.time_s)?;
    t.set("peak_mem_bytes", r.peak_mem_bytes)?;
    t.set("recomputed_layers", r.recomputed_layers)?;
    t.set("skipped_steps", r.skipped_steps)?;
    t.set("resumed_from", r.resumed_from)?;
    t.set("trainable", r.trainable)?;
    t.set("grad_bytes", r.grad_bytes)?;
    t.set("optimizer_bytes", r.optimizer_bytes)?;
    t.set("forward_s", r.forward_s)?;
    t.set("backward_s", r.backward_s)?;
    t.set("optimizer_s", r.optimizer_s)?;
    Ok(t)
}

/// A Lua value as JSON for the run record (functions and handles by name).
fn record_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::Number(n) => serde_json::json!(n),
        Value::String(s) => s.to_string_lossy().to_string().into(),
        Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, v) in t.pairs::<Value, Value>().flatten() {
                let key = match &k {
                    Value::String(s) => s.to_string_lossy().to_string(),
                    Value::Integer(i) => i.to_string(),
                    _ => continue,
                };
                m.insert(key, record_value(&v));
            }
            serde_json::Value::Object(m)
        }
        Value::UserData(u) => match u.borrow::<DataHandle>() {
            Ok(d) => format!("dataset {}", d.0.origin).into(),
            Err(_) => "<userdata>".into(),
        },
        Value::Function(_) => "<function>".into(),
        other => other.type_name().into(),
    }
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    ftl.set(
        "train",
        lua.create_function(|lua, (mv, dv, ot): (Value, Value, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let data = data_arg(lua, &dv, "ftl.train")?;
            let options = ot
                .as_ref()
                .map(|t| record_value(&Value::Table(t.clone())))
                .unwrap_or_default();
            let o = Opts::new(lua, ot, &api::TRAIN)?;
            let mut opts = train_opts(lua, &o)?;
            let env = env(lua);
            let eval = match o.value("eval")? {
                Value::Table(t) => {
                    let eo = Opts::new(lua, Some(t), &api::TRAIN_EVAL)?;
                    Some(data_arg(lua, &eo.value("data")?, "ftl.train eval.data")?)
                }
                Value::Nil => None,
                _ => {
                    return Err(lua_err(
                        lua,
                        "ftl.train: eval must be a table {data=, every=}",
                    ))
                }
            };
            if super::plan::active(lua) {
                return super::plan::train(lua, &h, &data, &opts, eval.as_ref());
            }
            let mut hooks_lua = LuaHooks {
                lua,
                on_step: o.get("on_step")?,
                on_eval: o.get("on_eval")?,
            };
            let total = opts.max_steps.unwrap_or(0);
            let mut progress = Progress::new(total, o.or("log_every", 10)?, env.quiet);
            if env.watched.is_some() {
                progress = progress.throttled(std::time::Duration::from_secs(5));
            }
            let call = super::run::training_starts(lua, &env, &data, eval.as_ref()).lua(lua)?;
            let mut recorder = match call {
                Some(n) => Some(Recorder::new(&env.out_dir, n).lua(lua)?),
                None => None,
            };
            checkpoint_opts(lua, &o, &env, call, &mut opts)?;
            let mut hooks: Vec<&mut dyn Hook> = vec![&mut progress, &mut hooks_lua];
            if let Some(r) = recorder.as_mut() {
                hooks.push(r);
            }
            // models the recipe dropped are freed now, not inside this training's memory peak
            lua.gc_collect()?;
            lua.gc_collect()?;
            let r = crate::train::train(&h.0, &data, &opts, eval.as_ref(), &mut hooks).lua(lua)?;
            drop(hooks);
            if let (Some(rec), Some(n)) = (&mut recorder, call) {
                rec.finish().lua(lua)?;
                super::run::training_done(
                    lua,
                    &env,
                    n,
                    &h,
                    &data,
                    eval.as_ref(),
                    options,
                    &opts,
                    &r,
                )
                .lua(lua)?;
            }
            result_table(lua, &r)
        })?,
    )?;
    ftl.set(
        "evaluate",
        lua.create_function(|lua, (mv, dv, ot): (Value, Value, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let data = data_arg(lua, &dv, "ftl.evaluate")?;
            let o = Opts::new(lua, ot, &api::EVALUATE)?;
            if super::plan::active(lua) {
                return super::plan::pending(lua, "the evaluation");
            }
            let e = crate::train::evaluate(&h.0, &data, o.or("batch_size", 8)?, o.get("max_len")?)
                .lua(lua)?;
            super::run::evaluated(lua, &env(lua), &data, &e).lua(lua)?;
            eval_table(lua, &e)
        })?,
    )?;
    Ok(())
}
