//! `ftl.load`, `ftl.new`, `ftl.tokenizer` and the model handle's methods (`m:forward`,
//! `m:freeze`, `m:state_dict`, `m:generate`, `m:save`, adapters, …).

use super::api;
use super::opts::Opts;
use super::tensor::{dtype_name, from_value, parse_dtype, LTensor};
use super::{lua_err, Env, LuaExt};
use crate::model::generate::GenOpts;
use crate::model::hub::{self, LoadOpts, RandomInit};
use crate::model::{Model, Task};
use crate::peft::target::{parse_layers, Pattern, Selector};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use mlua::{Lua, Table, UserData, UserDataFields, UserDataMethods, Value};
use std::sync::{Arc, Mutex, MutexGuard};

/// A model owned by Rust, shared with Lua (callbacks inside `train` may touch it too).
#[derive(Clone)]
pub struct ModelHandle(pub Arc<Mutex<Model>>);

impl ModelHandle {
    pub fn lock(&self) -> MutexGuard<'_, Model> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub struct TokenizerHandle(pub Tokenizer);

pub fn env(lua: &Lua) -> Arc<Env> {
    lua.app_data_ref::<Arc<Env>>().unwrap().clone()
}

pub fn parse_device(lua: &Lua, s: &str) -> mlua::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(crate::model::cuda_device(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .map(|x| x.parse().unwrap_or(0))
                .unwrap_or(0);
            crate::model::cuda_device(n).map_err(|e| {
                lua_err(
                    lua,
                    format!("device `{s}`: {e} (is ftl built with --features cuda?)"),
                )
            })
        }
        other => Err(lua_err(
            lua,
            format!("unknown device `{other}` (cpu, cuda, cuda:N, auto)"),
        )),
    }
}

/// A pattern argument: a list of names, a glob, `re:…`, or `all-linear`.
pub fn pattern(lua: &Lua, v: &Value) -> mlua::Result<Option<Pattern>> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Pattern::parse(&s.to_str()?).map(Some).lua(lua),
        Value::Table(t) => {
            let mut items = Vec::new();
            for x in t.sequence_values::<String>() {
                items.push(x.map_err(|_| lua_err(lua, "a pattern list must hold strings"))?);
            }
            Ok(Some(Pattern::list(items)))
        }
        other => Err(lua_err(
            lua,
            format!(
                "a pattern must be a string or a list of strings, got {}",
                other.type_name()
            ),
        )),
    }
}

/// `layers = {0, 5}` / `"0-11"` / `3`.
pub fn layers(lua: &Lua, v: &Value) -> mlua::Result<Option<Vec<usize>>> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(i) => Ok(Some(vec![*i as usize])),
        Value::String(s) => parse_layers(&s.to_str()?).map(Some).lua(lua),
        Value::Table(t) => Ok(Some(
            t.sequence_values::<usize>().collect::<mlua::Result<_>>()?,
        )),
        other => Err(lua_err(
            lua,
            format!(
                "layers: expected a list, a range string or a number, got {}",
                other.type_name()
            ),
        )),
    }
}

fn json_of(lua: &Lua, v: &Value) -> mlua::Result<serde_json::Value> {
    Ok(match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::String(s) => s.to_str()?.to_string().into(),
        Value::Table(t) => {
            if t.raw_len() > 0 {
                serde_json::Value::Array(
                    t.sequence_values::<Value>()
                        .map(|x| json_of(lua, &x?))
                        .collect::<mlua::Result<_>>()?,
                )
            } else {
                let mut m = serde_json::Map::new();
                for p in t.pairs::<String, Value>() {
                    let (k, v) = p?;
                    m.insert(k, json_of(lua, &v)?);
                }
                serde_json::Value::Object(m)
            }
        }
        other => {
            return Err(lua_err(
                lua,
                format!("cannot put a {} in a config", other.type_name()),
            ))
        }
    })
}

pub fn lua_of_json(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table()?;
            for (i, x) in a.iter().enumerate() {
                t.set(i + 1, lua_of_json(lua, x)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.set(k.as_str(), lua_of_json(lua, x)?)?;
            }
            Value::Table(t)
        }
    })
}

/// Token ids from a tensor, a list, or a list of lists → `[b, t]`.
pub fn ids_arg(lua: &Lua, v: Value) -> mlua::Result<Tensor> {
    let t = from_value(lua, v, DType::I64)?;
    match t.rank() {
        1 => t.unsqueeze(0).lua(lua),
        2 => Ok(t),
        r => Err(lua_err(
            lua,
            format!("input ids must be [batch, seq] or [seq], got rank {r}"),
        )),
    }
}

fn selector(lua: &Lua, v: &Value) -> mlua::Result<Option<Selector>> {
    Ok(pattern(lua, v)?.map(Selector::new))
}

fn params_table(lua: &Lua, rows: Vec<(String, Vec<usize>, bool)>) -> mlua::Result<Table> {
    let out = lua.create_table()?;
    for (i, (n, s, tr)) in rows.into_iter().enumerate() {
        let r = lua.create_table()?;
        r.set("name", n)?;
        r.set("shape", s)?;
        r.set("trainable", tr)?;
        out.set(i + 1, r)?;
    }
    Ok(out)
}

impl UserData for ModelHandle {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("tokenizer", |_, m| {
            Ok(m.lock().tokenizer.clone().map(TokenizerHandle))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("info", |lua, h, ()| {
            let mut m = h.lock();
            let d = m.arch.dims();
            let all: usize = m.base_params().iter().map(|(_, p)| p.elem_count()).sum();
            let trainable: usize = m
                .trainable_params()
                .iter()
                .map(|(_, p)| p.elem_count())
                .sum();
            let adapters: usize = m
                .adapter_names()
                .iter()
                .flat_map(|n| m.adapter_params(n))
                .map(|(_, p)| p.elem_count())
                .sum();
            let t = lua.create_table()?;
            t.set("arch", m.arch.model_type().to_string())?;
            t.set("params", all + adapters)?;
            t.set("base_params", all)?;
            t.set("trainable", trainable)?;
            t.set("layers", d.layers)?;
            t.set("hidden", d.hidden)?;
            t.set("vocab", d.vocab)?;
            t.set("dtype", dtype_name(m.dtype))?;
            t.set(
                "device",
                if m.device.is_cpu() {
                    "cpu".to_string()
                } else {
                    format!("{:?}", m.device)
                },
            )?;
            t.set(
                "task",
                match m.task() {
                    Task::CausalLm => "causal_lm".to_string(),
                    Task::SeqCls { num_labels } => format!("seq_cls:{num_labels}"),
                    Task::Encoder => "encoder".to_string(),
                },
            )?;
            Ok(t)
        });
        m.add_method("modules", |lua, h, p: Value| {
            let mut m = h.lock();
            let all = m.all_module_paths();
            match selector(lua, &p)? {
                None => Ok(all),
                Some(s) => s.select(&all, "modules").lua(lua),
            }
        });
        m.add_method("parameters", |lua, h, p: Value| {
            let mut m = h.lock();
            let mut rows: Vec<(String, crate::model::Param)> = m.base_params();
            for n in m.adapter_names() {
                rows.extend(m.adapter_params(&n));
            }
            let rows: Vec<_> = match selector(lua, &p)? {
                None => rows,
                Some(s) => {
                    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
                    let keep = s.select(&names, "parameters").lua(lua)?;
                    rows.into_iter().filter(|(n, _)| keep.contains(n)).collect()
                }
            };
            params_table(
                lua,
                rows.into_iter()
                    .map(|(n, p)| (n, p.dims(), p.is_trainable()))
                    .collect(),
            )
        });
        m.add_method("freeze", |lua, h, p: Value| {
            let sel = selector(lua, &p)?;
            h.lock().set_trainable(sel.as_ref(), false).lua(lua)
        });
        m.add_method("unfreeze", |lua, h, p: Value| {
            let sel = selector(lua, &p)?;
            h.lock().set_trainable(sel.as_ref(), true).lua(lua)
        });
        m.add_method(
            "forward",
            |lua, h, (ids, mask, o): (Value, Value, Option<Table>)| {
                let o = Opts::new(lua, o, &api::FORWARD)?;
                super::plan::reads(lua, "m:forward")?;
                let ids = ids_arg(lua, ids)?;
                let mask = if mask.is_nil() {
                    None
                } else {
                    Some(ids_arg(lua, mask)?)
                };
                let types = match o.value("token_type_ids")? {
                    Value::Nil => None,
                    v => Some(ids_arg(lua, v)?),
                };
                let m = h.lock();
                let ctx = m.ctx(false, 0);
                m.forward_with(&ids, mask.as_ref(), types.as_ref(), &ctx, None)
                    .map(LTensor)
                    .lua(lua)
            },
        );
        m.add_method("state_dict", |lua, h, o: Option<Table>| {
            let o = Opts::new(lua, o, &api::STATE_DICT)?;
            let tr: Option<bool> = o.get("trainable")?;
            let mut m = h.lock();
            let names: Vec<String> = match o.get::<String>("adapter")? {
                Some(a) => {
                    if m.adapter(&a).is_none() {
                        return Err(lua_err(
                            lua,
                            format!(
                                "no adapter named `{a}` (attached: {})",
                                m.adapter_names().join(", ")
                            ),
                        ));
                    }
                    vec![a]
                }
                None => m.active.clone(),
            };
            let mut rows = m.base_params();
            for n in &names {
                for (k, p) in m.adapter_params(n) {
                    if rows.iter().any(|(r, _)| *r == k) {
                        return Err(lua_err(
                            lua,
                            format!("several active adapters have `{k}`: choose one with adapter="),
                        ));
                    }
                    rows.push((k, p));
                }
            }
            let out = lua.create_table()?;
            for (k, p) in rows {
                if tr.is_none_or(|t| t == p.is_trainable()) {
                    out.set(k, LTensor(p.value()))?;
                }
            }
            Ok(out)
        });
        m.add_method(
            "load_state_dict",
            |lua, h, (t, o): (Table, Option<Table>)| {
                let o = Opts::new(lua, o, &api::LOAD_STATE_DICT)?;
                let strict = o.or("strict", true)?;
                let mut m = h.lock();
                let names: Vec<String> = match o.get::<String>("adapter")? {
                    Some(a) => vec![a],
                    None => m.adapter_names(),
                };
                let mut rows = m.base_params();
                for n in &names {
                    rows.extend(m.adapter_params(n));
                }
                let mut n = 0;
                for pair in t.pairs::<String, Value>() {
                    let (k, v) = pair?;
                    let Some((_, p)) = rows.iter().find(|(r, _)| *r == k) else {
                        if strict {
                            let all: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
                            let hint = super::opts::closest(&k, &all)
                                .map(|c| format!("; closest: `{c}`"))
                                .unwrap_or_default();
                            return Err(lua_err(
                                lua,
                                format!("load_state_dict: unknown name `{k}`{hint}"),
                            ));
                        }
                        continue;
                    };
                    let v = from_value(lua, v, DType::F32)?;
                    if v.dims() != p.dims().as_slice() {
                        return Err(lua_err(
                            lua,
                            format!(
                                "load_state_dict: `{k}` has shape {:?}, the model's is {:?}",
                                v.dims(),
                                p.dims()
                            ),
                        ));
                    }
                    p.set(&v).lua(lua)?;
                    n += 1;
                }
                Ok(n)
            },
        );
        m.add_method(
            "generate",
            |lua, h, (prompt, o): (String, Option<Table>)| {
                let o = Opts::new(lua, o, &api::GENERATE)?;
                let stop = match o.value("stop")? {
                    Value::Nil => Vec::new(),
                    Value::String(s) => vec![s.to_str()?.to_string()],
                    Value::Table(t) => {
                        t.sequence_values::<String>().collect::<mlua::Result<_>>()?
                    }
                    _ => {
                        return Err(lua_err(
                            lua,
                            "generate: stop must be a string or a list of strings",
                        ))
                    }
                };
                super::plan::reads(lua, "m:generate")?;
                let g = GenOpts {
                    max_tokens: o.or("max_tokens", 64)?,
                    temperature: o.or("temperature", 0.0)?,
                    top_p: o.get("top_p")?,
                    seed: o.or("seed", 0)?,
                    stop,
                    min_tokens: o.or("min_tokens", 0)?,
                };
                h.lock().generate(&prompt, &g).lua(lua)
            },
        );
        m.add_method("merge", |lua, h, ()| h.lock().merge().lua(lua));
        m.add_method("save", |lua, h, dir: String| {
            let path = env(lua).output(&dir).lua(lua)?;
            if super::plan::writes(lua, "m:save", &path) {
                return Ok(path.display().to_string());
            }
            let notes = h.lock().save(&path).lua(lua)?;
            for n in notes {
                tracing::warn!("{n}");
            }
            Ok(path.display().to_string())
        });
        m.add_method(
            "save_adapter",
            |lua, h, (dir, o): (String, Option<Table>)| {
                let o = Opts::new(lua, o, &api::SAVE_ADAPTER)?;
                let path = env(lua).output(&dir).lua(lua)?;
                let mut m = h.lock();
                let name = match o.get::<String>("name")? {
                    Some(n) => n,
                    None => match m.active.first().or(m.adapters().first().map(|a| &a.name)) {
                        Some(n) => n.clone(),
                        None => return Err(lua_err(lua, "save_adapter: the model has no adapter")),
                    },
                };
                if super::plan::writes(lua, "m:save_adapter", &path) {
                    return Ok(path.display().to_string());
                }
                crate::peft::io::save_adapter(&mut m, &path, &name).lua(lua)?;
                Ok(path.display().to_string())
            },
        );
        m.add_method("adapters", |lua, h, ()| {
            let m = h.lock();
            let out = lua.create_table()?;
            for (i, a) in m.adapters().iter().enumerate() {
                let t = lua.create_table()?;
                t.set("name", a.name.clone())?;
                t.set("method", a.method.kind())?;
                t.set("active", m.enabled && m.active.contains(&a.name))?;
                t.set("targets", a.targets.clone())?;
                out.set(i + 1, t)?;
            }
            Ok(out)
        });
        m.add_method("set_adapter", |lua, h, v: Value| {
            let names: Vec<String> = match v {
                Value::String(s) => vec![s.to_str()?.to_string()],
                Value::Table(t) => t.sequence_values::<String>().collect::<mlua::Result<_>>()?,
                _ => return Err(lua_err(lua, "set_adapter: a name or a list of names")),
            };
            h.lock().set_active(&names).lua(lua)
        });
        m.add_method("disable_adapters", |_, h, ()| {
            h.lock().enabled = false;
            Ok(())
        });
        m.add_method("enable_adapters", |_, h, ()| {
            h.lock().enabled = true;
            Ok(())
        });
        m.add_method("delete_adapter", |lua, h, name: String| {
            let mut m = h.lock();
            if m.adapter(&name).is_none() {
                return Err(lua_err(lua, format!("no adapter named `{name}`")));
            }
            m.detach(&name);
            Ok(())
        });
    }
}

impl UserData for TokenizerHandle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("encode", |lua, t, (text, o): (String, Option<Table>)| {
            let o = Opts::new(lua, o, &api::ENCODE)?;
            t.0.encode(&text, o.or("special", true)?).lua(lua)
        });
        m.add_method("decode", |lua, t, (ids, o): (Vec<u32>, Option<Table>)| {
            let o = Opts::new(lua, o, &api::DECODE)?;
            t.0.decode(&ids, o.or("skip_special", true)?).lua(lua)
        });
        m.add_method("vocab_size", |_, t, ()| Ok(t.0.vocab_size()));
        m.add_method("bos", |_, t, ()| Ok(t.0.bos));
        m.add_method("eos", |_, t, ()| Ok(t.0.eos));
        m.add_method("pad", |_, t, ()| Ok(t.0.pad));
    }
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    ftl.set(
        "load",
        lua.create_function(|lua, (dir, o): (String, Option<Table>)| {
            let o = Opts::new(lua, o, &api::LOAD)?;
            let path = env(lua).model(&dir).lua(lua)?;
            let mut lo = LoadOpts::default();
            let plan = super::plan::active(lua);
            let mut gpu = false;
            if let Some(d) = o.get::<String>("device")? {
                // a plan runs on the CPU whatever the device, so a GPU recipe checks anywhere
                gpu = plan && d != "cpu";
                if !gpu {
                    lo.device = parse_device(lua, &d)?;
                }
            }
            if let Some(d) = o.get::<String>("dtype")? {
                lo.dtype = Some(parse_dtype(&d).ok_or_else(|| {
                    lua_err(lua, format!("unknown dtype `{d}` (f32, bf16, f16)"))
                })?);
            }
            lo.head = o.or("head", true)?;
            lo.num_labels = o.get("num_labels")?;
            lo.seed = o.or("seed", 0u64)?;
            if plan {
                lo.shapes_only = true;
                if gpu && lo.dtype.is_none() {
                    lo.dtype = Some(DType::BF16);
                }
            }
            let mut m = hub::load(&path, &lo).lua(lua)?;
            m.reference = Some(dir);
            let h = ModelHandle(Arc::new(Mutex::new(m)));
            super::plan::note_model(lua, &h);
            Ok(h)
        })?,
    )?;
    ftl.set(
        "new",
        lua.create_function(|lua, (arch, cfg): (String, Table)| {
            let settings = lua.create_table()?;
            for p in cfg.pairs::<Value, Value>() {
                let (k, v) = p?;
                if !matches!(&k, Value::String(s) if s == "tokenizer") {
                    settings.set(k, v)?;
                }
            }
            let mut json = json_of(lua, &Value::Table(settings))?;
            let obj = json
                .as_object_mut()
                .ok_or_else(|| lua_err(lua, "ftl.new: the config must be a table of settings"))?;
            let seed = obj.remove("seed").and_then(|s| s.as_u64()).unwrap_or(0);
            let dtype = obj
                .remove("dtype")
                .and_then(|s| s.as_str().and_then(parse_dtype))
                .unwrap_or(DType::F32);
            let device = match obj
                .remove("device")
                .and_then(|s| s.as_str().map(String::from))
            {
                Some(d) => parse_device(lua, &d)?,
                None => Device::Cpu,
            };
            obj.insert("model_type".into(), arch.clone().into());
            let tokenizer =
                match cfg.get::<Value>("tokenizer")? {
                    Value::UserData(u) => Some(u.borrow::<TokenizerHandle>()?.0.clone()),
                    Value::String(s) => {
                        let p = env(lua).input(&s.to_str()?).lua(lua)?;
                        Some(Tokenizer::from_file(&p).lua(lua)?)
                    }
                    Value::Nil => None,
                    _ => return Err(lua_err(
                        lua,
                        "ftl.new: tokenizer must be a tokenizer.json path or ftl.tokenizer.bytes()",
                    )),
                };
            if let Some(t) = &tokenizer {
                let vs = t.vocab_size();
                let obj = json.as_object_mut().unwrap();
                let v = obj.entry("vocab_size").or_insert(vs.into());
                if v.as_u64().unwrap_or(0) < vs as u64 {
                    return Err(lua_err(
                        lua,
                        format!("ftl.new: vocab_size {v} is smaller than the tokenizer's {vs}"),
                    ));
                }
            }
            let random = RandomInit {
                seed,
                dtype,
                device: device.clone(),
            };
            let shapes = hub::Shapes {
                dtype,
                device: device.clone(),
            };
            let src: &dyn hub::Source = if super::plan::active(lua) {
                &shapes
            } else {
                &random
            };
            let path = std::path::Path::new("<ftl.new config>");
            let mut m = hub::build(&json, path, src, dtype, &device, true).lua(lua)?;
            m.tokenizer = tokenizer;
            m.seed = seed;
            let h = ModelHandle(Arc::new(Mutex::new(m)));
            super::plan::note_model(lua, &h);
            Ok(h)
        })?,
    )?;
    let tk = lua.create_table()?;
    tk.set(
        "bytes",
        lua.create_function(|_, ()| Ok(TokenizerHandle(Tokenizer::bytes())))?,
    )?;
    tk.set(
        "load",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            let t = if path.is_dir() {
                Tokenizer::from_dir(&path)
            } else {
                Tokenizer::from_file(&path)
            };
            t.map(TokenizerHandle).lua(lua)
        })?,
    )?;
    ftl.set("tokenizer", tk)?;
    Ok(())
}
