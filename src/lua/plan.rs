//! Plan mode (`ftl check`): the recipe runs on models whose weights are shapes only;
//! `ftl.train` plans instead of training, `ftl.evaluate` returns a result to be read later,
//! reading a value ends the plan (naming the line), and
//! writes are listed instead of made.

use super::model::ModelHandle;
use super::{location, lua_err};
use crate::train::estimate::TrainPlan;
use crate::train::TrainOpts;
use mlua::{Lua, Table, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What a plan saw so far.
#[derive(Default)]
pub struct PlanState {
    /// (what, path, recipe line)
    pub writes: Mutex<Vec<(String, String, String)>>,
    pub trains: Mutex<Vec<TrainPlan>>,
    /// every model the recipe loaded, for the summary of methods no `ftl.train` call showed
    pub models: Mutex<Vec<ModelHandle>>,
    /// where and why the plan ended early
    pub end: Mutex<Option<String>>,
}

/// Unwinds a plan at the first value read (like `os.exit`, caught by the runner).
#[derive(Debug)]
pub struct PlanEnd(pub String);

impl std::fmt::Display for PlanEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the plan ends here: {}", self.0)
    }
}

impl std::error::Error for PlanEnd {}

/// The plan's state when this Lua state runs in plan mode.
pub fn state(lua: &Lua) -> Option<Arc<PlanState>> {
    lua.app_data_ref::<Arc<PlanState>>().map(|s| s.clone())
}

pub fn active(lua: &Lua) -> bool {
    state(lua).is_some()
}

/// In plan mode, `what` reads values: the plan ends at the calling line.
pub fn reads(lua: &Lua, what: &str) -> mlua::Result<()> {
    if !active(lua) {
        return Ok(());
    }
    let at = location(lua).unwrap_or_else(|| "?".into());
    Err(mlua::Error::external(PlanEnd(format!(
        "{at}: {what} reads values, which a plan does not have"
    ))))
}

/// In plan mode, records that `what` would write `path` and says so (the caller then skips the
/// write).
pub fn writes(lua: &Lua, what: &str, path: &Path) -> bool {
    let Some(s) = state(lua) else { return false };
    let at = location(lua).unwrap_or_default();
    s.writes
        .lock()
        .unwrap()
        .push((what.into(), path.display().to_string(), at));
    true
}

pub fn note_model(lua: &Lua, m: &ModelHandle) {
    if let Some(s) = state(lua) {
        s.models.lock().unwrap().push(m.clone());
    }
}

/// The plan's note when `e` ended it.
pub fn ended(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            ended(cause)
        }
        mlua::Error::ExternalError(x) => x.downcast_ref::<PlanEnd>().map(|p| p.0.clone()),
        _ => None,
    }
}

/// `ftl.train` in plan mode: prints what the call would do and need, and returns
/// `{steps, epochs, trainable}`; reading any other field of the result ends the plan.
pub fn train(
    lua: &Lua,
    h: &ModelHandle,
    data: &crate::data::Dataset,
    opts: &TrainOpts,
    eval: Option<&crate::data::Dataset>,
) -> mlua::Result<Table> {
    let s = state(lua).expect("plan mode");
    let at = location(lua).unwrap_or_default();
    let p = crate::train::estimate::plan(&h.0, data, opts, eval)
        .map_err(|e| lua_err(lua, format!("ftl.train: {e}")))?;
    let n = {
        let mut t = s.trains.lock().unwrap();
        t.push(p.clone());
        t.len()
    };
    let origin = data.origin.clone();
    print!(
        "{}",
        crate::check::render_train(n, &at, &h.lock().dir, &origin, &p)
    );
    let t = pending(lua, "the training result")?;
    t.set("steps", p.steps)?;
    t.set("epochs", p.epochs)?;
    t.set("trainable", p.trainable)?;
    Ok(t)
}

/// A result a plan does not have (`ftl.train`'s metrics, `ftl.evaluate`'s): reading a field
/// it lacks ends the plan at that line, so a recipe that evaluates before training still
/// plans its training.
pub fn pending(lua: &Lua, what: &'static str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(move |lua, (_, k): (Value, Value)| {
            let key = match &k {
                Value::String(s) => s.to_string_lossy().to_string(),
                other => format!("{other:?}"),
            };
            reads(lua, &format!("{what}'s `{key}`"))?;
            Ok(Value::Nil)
        })?,
    )?;
    t.set_metatable(Some(meta))?;
    Ok(t)
}
