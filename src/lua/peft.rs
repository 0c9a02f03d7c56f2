//! `ftl.load_adapter`, and one function per registry method (`ftl.lora`, `ftl.ia3`, `ftl.loha`,
//! …, `ftl.prefix`, `ftl.prompt`, `ftl.adapter`): each attaches a method to a model and returns a
//! handle to it.

use super::api;
use super::model::{env, layers, pattern, ModelHandle};
use super::opts::Opts;
use super::{lua_err, LuaExt};
use crate::model::Task;
use crate::peft::target::{Pattern, Selector};
use crate::peft::{self, Kind};
use mlua::{Lua, Table, UserData, UserDataFields, UserDataMethods, Value};

/// A handle to one attached adapter.
#[derive(Clone)]
pub struct AdapterHandle {
    pub model: ModelHandle,
    pub name: String,
}

impl UserData for AdapterHandle {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("name", |_, a| Ok(a.name.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("targets", |_, a, ()| {
            Ok(a.model
                .lock()
                .adapter(&a.name)
                .map(|i| i.targets.clone())
                .unwrap_or_default())
        });
        m.add_method("trainable", |_, a, ()| {
            let mut m = a.model.lock();
            Ok(m.adapter_params(&a.name)
                .iter()
                .filter(|(_, p)| p.is_trainable())
                .map(|(_, p)| p.elem_count())
                .sum::<usize>())
        });
        m.add_method("parameters", |lua, a, ()| {
            let mut m = a.model.lock();
            let out = lua.create_table()?;
            for (i, (n, p)) in m.adapter_params(&a.name).into_iter().enumerate() {
                let r = lua.create_table()?;
                r.set("name", n)?;
                r.set("shape", p.dims())?;
                r.set("trainable", p.is_trainable())?;
                out.set(i + 1, r)?;
            }
            Ok(out)
        });
    }
}

fn model_arg(lua: &Lua, v: &Value) -> mlua::Result<ModelHandle> {
    match v {
        Value::UserData(u) => u
            .borrow::<ModelHandle>()
            .map(|m| m.clone())
            .map_err(|_| lua_err(lua, "expected a model (from ftl.load or ftl.new)")),
        _ => Err(lua_err(
            lua,
            "expected a model (from ftl.load or ftl.new) as the first argument",
        )),
    }
}

/// The target selector from `targets`/`layers`/`exclude` options, with a default per model type.
fn targets(
    lua: &Lua,
    o: &Opts,
    defaults: Option<Vec<&str>>,
    mt: &str,
    method: &str,
) -> mlua::Result<(Selector, bool)> {
    let v = o.value("targets")?;
    let all_linear = matches!(&v, Value::String(s) if s.to_str().map(|s| s.eq_ignore_ascii_case("all-linear")).unwrap_or(false));
    let pat = if all_linear {
        Pattern::list(Vec::new())
    } else {
        match pattern(lua, &v)? {
            Some(p) => p,
            None => match defaults {
                Some(d) => Pattern::list(d.into_iter().map(String::from).collect()),
                None => {
                    return Err(lua_err(
                        lua,
                        format!(
                            "{method}: no default targets for model type `{mt}`; pass targets="
                        ),
                    ))
                }
            },
        }
    };
    let mut s = Selector::new(pat);
    s.layers = layers(lua, &o.value("layers")?)?;
    s.exclude = pattern(lua, &o.value("exclude")?)?;
    Ok((s, all_linear))
}

fn resolve(
    lua: &Lua,
    m: &mut crate::Model,
    sel: &Selector,
    all_linear: bool,
    kind: Kind,
) -> mlua::Result<Vec<String>> {
    let cands = m.module_paths(kind);
    if all_linear {
        let got = m.all_linear(sel);
        if got.is_empty() {
            return Err(lua_err(lua, "all-linear selects no module"));
        }
        return Ok(got);
    }
    sel.select(&cands, "modules").lua(lua)
}

/// `modules_to_save`, plus the classifier head for classification models (as PEFT's SEQ_CLS).
fn modules_to_save(lua: &Lua, m: &mut crate::Model, v: &Value) -> mlua::Result<Vec<String>> {
    let mut out = match pattern(lua, v)? {
        Some(p) => Selector::new(p)
            .select(&m.all_module_paths(), "modules")
            .lua(lua)?,
        None => Vec::new(),
    };
    if let Task::SeqCls { .. } = m.task() {
        for h in m.arch.head_modules() {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    Ok(out)
}

fn name(lua: &Lua, o: &Opts, m: &crate::Model, method: &str) -> mlua::Result<String> {
    let _ = lua;
    Ok(match o.get::<String>("name")? {
        Some(n) => n,
        None => m.fresh_name(method),
    })
}

/// `ftl.<method>` for a registry method: targets as PEFT resolves them, the method's options
/// under PEFT's names, checked and completed by the registry.
fn register_method(
    lua: &Lua,
    ftl: &Table,
    method: &'static dyn peft::registry::LinearMethod,
) -> mlua::Result<()> {
    let what = format!("ftl.{}", method.name());
    let class = api::options(&what).expect("every registry method has an options table");
    ftl.set(
        method.name(),
        lua.create_function(move |lua, (mv, o): (Value, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let o = Opts::new(lua, o, class)?;
            let mut m = h.lock();
            let mt = m.arch.model_type().to_string();
            let (sel, all_linear) = targets(lua, &o, method.default_targets(&mt), &mt, class.what)?;
            let name = name(lua, &o, &m, method.name())?;
            let mts = modules_to_save(lua, &mut m, &o.value("modules_to_save")?)?;
            let kind = if method.targets_embeddings() {
                Kind::Injectable
            } else {
                Kind::Linear
            };
            let paths: Vec<String> = resolve(lua, &mut m, &sel, all_linear, kind)?
                .into_iter()
                .filter(|p| !mts.contains(p))
                .collect();
            let mut given = serde_json::Map::new();
            for opt in method.options() {
                let key = method.spec().lua_name(opt.key);
                let v: Value = o.value(key)?;
                // the options table has checked the types: numbers, booleans, strings, patterns
                let j = match v {
                    Value::Nil => continue,
                    v if opt.ty == "modules" => {
                        let Some(p) = pattern(lua, &v)? else { continue };
                        let picked: Vec<&String> = paths.iter().filter(|x| p.matches(x)).collect();
                        // `{}` asks for none; a pattern that picks nothing is a mistake
                        let none = matches!(&p, Pattern::List(l) if l.is_empty());
                        if picked.is_empty() && !none {
                            return Err(lua_err(
                                lua,
                                format!(
                                    "{}: `{key}` matches none of the targets ({})",
                                    class.what,
                                    paths.join(", ")
                                ),
                            ));
                        }
                        serde_json::json!(picked)
                    }
                    v => match scalar(&v) {
                        Some(serde_json::Value::String(s)) => method
                            .spec()
                            .lua_value(opt.key, &s)
                            .unwrap_or(serde_json::Value::String(s)),
                        Some(j) => j,
                        None => continue,
                    },
                };
                given.insert(opt.key.to_string(), j);
            }
            let given =
                peft::registry::pick_modules(method, &given, &paths, &mt, class.what).lua(lua)?;
            let config = peft::registry::config(method, &given, class.what).lua(lua)?;
            let tie = peft::registry::flag(&config, "ensure_weight_tying");
            if tie {
                m.check_weight_tying_targets(&paths).lua(lua)?;
            }
            m.attach_registered(&name, method, &paths, &config)
                .lua(lua)?;
            if !mts.is_empty() {
                if let Err(e) = m.add_modules_to_save_tied(&name, &mts, tie) {
                    m.detach(&name);
                    return Err(e).lua(lua);
                }
            }
            if let Some(a) = m.adapter_mut(&name) {
                a.ensure_weight_tying = tie;
            }
            drop(m);
            Ok(AdapterHandle { model: h, name })
        })?,
    )
}

/// A number, boolean or string option as JSON (the options table has checked the types).
fn scalar(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::Integer(i) => serde_json::json!(i),
        Value::Number(n) => serde_json::json!(n),
        Value::Boolean(b) => serde_json::json!(b),
        Value::String(s) => serde_json::json!(s.to_string_lossy()),
        _ => return None,
    })
}

/// `ftl.<method>` for a registry input method (prompt learning): its options under the recipe
/// API's names, checked and completed by the registry; a classifier's head trains in full.
fn register_input_method(
    lua: &Lua,
    ftl: &Table,
    method: &'static dyn peft::registry::InputMethod,
) -> mlua::Result<()> {
    let spec = method.spec();
    let class = api::options(&format!("ftl.{}", spec.name))
        .expect("every registry method has an options table");
    ftl.set(
        spec.name,
        lua.create_function(move |lua, (mv, o): (Value, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let o = Opts::new(lua, o, class)?;
            let mut given = serde_json::Map::new();
            for opt in spec.options {
                if let Some(j) = scalar(&o.value(spec.lua_name(opt.key))?) {
                    given.insert(opt.key.to_string(), j);
                }
            }
            let config = peft::registry::input_config(method, &given, class.what).lua(lua)?;
            let mut m = h.lock();
            let name = name(lua, &o, &m, spec.name)?;
            m.attach_input(&name, method, &config).lua(lua)?;
            let mts = modules_to_save(lua, &mut m, &Value::Nil)?;
            if !mts.is_empty() {
                m.add_modules_to_save(&name, &mts).lua(lua)?;
            }
            drop(m);
            Ok(AdapterHandle { model: h, name })
        })?,
    )
}

/// `ftl.<method>` for a registry block method (bottleneck adapters): its options, the layers
/// it goes in, its settings made by the method for the model's dimensions.
fn register_block_method(
    lua: &Lua,
    ftl: &Table,
    method: &'static dyn peft::registry::BlockMethod,
) -> mlua::Result<()> {
    let spec = method.spec();
    let class = api::options(&format!("ftl.{}", spec.name))
        .expect("every registry method has an options table");
    ftl.set(
        spec.name,
        lua.create_function(move |lua, (mv, o): (Value, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let o = Opts::new(lua, o, class)?;
            let mut given = serde_json::Map::new();
            for opt in spec.options {
                if let Some(j) = scalar(&o.value(spec.lua_name(opt.key))?) {
                    given.insert(opt.key.to_string(), j);
                }
            }
            if let Some(ls) = layers(lua, &o.value("layers")?)? {
                given.insert("layers".into(), serde_json::json!(ls));
            }
            let mut m = h.lock();
            let d = m.arch.dims();
            let config =
                peft::registry::block_config(method, &given, d.hidden, d.layers, class.what)
                    .lua(lua)?;
            let name = name(lua, &o, &m, spec.name)?;
            m.attach_block(&name, method, &config).lua(lua)?;
            drop(m);
            Ok(AdapterHandle { model: h, name })
        })?,
    )
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    for m in peft::registry::METHODS {
        register_method(lua, ftl, *m)?;
    }
    for m in peft::registry::INPUT_METHODS {
        register_input_method(lua, ftl, *m)?;
    }
    for m in peft::registry::BLOCK_METHODS {
        register_block_method(lua, ftl, *m)?;
    }
    ftl.set(
        "load_adapter",
        lua.create_function(|lua, (mv, dir, o): (Value, String, Option<Table>)| {
            let h = model_arg(lua, &mv)?;
            let o = Opts::new(lua, o, &api::LOAD_ADAPTER)?;
            let path = env(lua).model(&dir).lua(lua)?;
            let lo = crate::peft::io::LoadAdapterOpts {
                name: o.get("name")?,
                trainable: o.or("trainable", false)?,
            };
            let name = crate::peft::io::load_adapter(&mut h.lock(), &path, &lo).lua(lua)?;
            Ok(AdapterHandle { model: h, name })
        })?,
    )?;
    Ok(())
}
