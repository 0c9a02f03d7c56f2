//! `ftl.cache(key, fn)`: a recipe-level result kept across the runs of `ftl watch` (outside watch
//! it just calls `fn`). Keyed by `key`, `fn`'s code and the recipe's arguments, so that editing the
//! function recomputes it; bounded in memory (least recently used entries go first). Values cross
//! Lua states, so they are plain data, tensors, datasets and models (kept as their weights,
//! adapters folded in, and rebuilt frozen).

use super::data::DataHandle;
use super::model::{env, ModelHandle};
use super::tensor::LTensor;
use super::{lua_err, LuaExt};
use crate::data::Dataset;
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use mlua::{Function, Lua, MultiValue, Table, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns the cross-run cache on (`ftl watch`).
pub fn cache_across_runs(on: bool) {
    ON.store(on, Ordering::SeqCst);
}

/// A model as weights: what `ftl.load` of its saved directory would give back.
struct Snapshot {
    config: serde_json::Value,
    state: BTreeMap<String, Tensor>,
    dir: Option<PathBuf>,
    reference: Option<String>,
    tokenizer: Option<crate::tokenizer::Tokenizer>,
    device: Device,
    dtype: DType,
    seed: u64,
}

enum Kept {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Vec<u8>),
    Table(Vec<(Kept, Kept)>),
    Tensor(Tensor),
    Data(Dataset),
    Model(Arc<Snapshot>),
}

struct Entry {
    key: u64,
    values: Vec<Kept>,
    bytes: usize,
}

/// Most recently used last.
static STORE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The cache's bound: `FTL_CACHE_BYTES` (`2GiB`, `512M`), else a quarter of the machine's memory.
fn budget() -> usize {
    if let Some(n) = std::env::var("FTL_CACHE_BYTES")
        .ok()
        .and_then(|s| super::sandbox::parse_size(&s))
    {
        return n;
    }
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .unwrap_or(8 << 20);
    total_kb * 1024 / 4
}

const MAX_DEPTH: usize = 32;

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

fn snapshot(m: &mut Model) -> crate::Result<Snapshot> {
    let (state, tied) = m.merged_state()?;
    let mut config = m.config.clone();
    if !tied {
        config["tie_word_embeddings"] = false.into();
    }
    Ok(Snapshot {
        config,
        state,
        dir: m.dir.clone(),
        reference: m.reference.clone(),
        tokenizer: m.tokenizer.clone(),
        device: m.device.clone(),
        dtype: m.dtype,
        seed: m.seed,
    })
}

/// The weights of a snapshot as a model's source.
struct FromState<'a>(&'a Snapshot);

impl crate::model::hub::Source for FromState<'_> {
    fn get(
        &self,
        name: &str,
        shape: &[usize],
        _init: crate::model::hub::Init,
    ) -> crate::Result<Tensor> {
        let t = self
            .0
            .state
            .get(name)
            .ok_or_else(|| crate::Error::MissingTensor {
                path: PathBuf::from("ftl.cache"),
                name: name.into(),
            })?;
        if t.dims() != shape {
            return Err(crate::Error::Shape {
                path: PathBuf::from("ftl.cache"),
                name: name.into(),
                got: t.dims().to_vec(),
                want: shape.to_vec(),
            });
        }
        Ok(t.clone())
    }
    fn has(&self, name: &str) -> bool {
        self.0.state.contains_key(name)
    }
    fn origin(&self) -> String {
        "ftl.cache".into()
    }
}

fn rebuild(s: &Snapshot) -> crate::Result<Model> {
    let src = FromState(s);
    let cfg = PathBuf::from("ftl.cache");
    let mut m = crate::model::hub::build(&s.config, &cfg, &src, s.dtype, &s.device, true)
        .or_else(|_| crate::model::hub::build(&s.config, &cfg, &src, s.dtype, &s.device, false))?;
    m.dir = s.dir.clone();
    m.reference = s.reference.clone();
    m.tokenizer = s.tokenizer.clone();
    m.seed = s.seed;
    Ok(m)
}

fn keep(lua: &Lua, v: &Value, depth: usize, bytes: &mut usize) -> mlua::Result<Kept> {
    if depth > MAX_DEPTH {
        return Err(lua_err(
            lua,
            "ftl.cache: the value is nested too deep (or holds a cycle)",
        ));
    }
    Ok(match v {
        Value::Nil => Kept::Nil,
        Value::Boolean(b) => Kept::Bool(*b),
        Value::Integer(i) => Kept::Int(*i),
        Value::Number(n) => Kept::Num(*n),
        Value::String(s) => {
            *bytes += s.as_bytes().len();
            Kept::Str(s.as_bytes().to_vec())
        }
        Value::Table(t) => {
            let mut out = Vec::new();
            for kv in t.pairs::<Value, Value>() {
                let (k, v) = kv?;
                out.push((
                    keep(lua, &k, depth + 1, bytes)?,
                    keep(lua, &v, depth + 1, bytes)?,
                ));
            }
            Kept::Table(out)
        }
        Value::UserData(u) => {
            if let Ok(t) = u.borrow::<LTensor>() {
                *bytes += tensor_bytes(&t.0);
                Kept::Tensor(t.0.clone())
            } else if let Ok(d) = u.borrow::<DataHandle>() {
                Kept::Data(d.0.clone())
            } else if let Ok(m) = u.borrow::<ModelHandle>() {
                let s = snapshot(&mut m.lock()).lua(lua)?;
                *bytes += s.state.values().map(tensor_bytes).sum::<usize>();
                Kept::Model(Arc::new(s))
            } else {
                return Err(lua_err(
                    lua,
                    "ftl.cache: keeps plain values, tables, tensors, datasets and models; not this userdata",
                ));
            }
        }
        other => {
            return Err(lua_err(
                lua,
                format!(
                    "ftl.cache: keeps plain values, tables, tensors, datasets and models; not a {}",
                    other.type_name()
                ),
            ))
        }
    })
}

fn give(lua: &Lua, k: &Kept) -> mlua::Result<Value> {
    Ok(match k {
        Kept::Nil => Value::Nil,
        Kept::Bool(b) => Value::Boolean(*b),
        Kept::Int(i) => Value::Integer(*i),
        Kept::Num(n) => Value::Number(*n),
        Kept::Str(s) => Value::String(lua.create_string(s)?),
        Kept::Table(kv) => {
            let t: Table = lua.create_table()?;
            for (k, v) in kv {
                t.raw_set(give(lua, k)?, give(lua, v)?)?;
            }
            Value::Table(t)
        }
        Kept::Tensor(t) => Value::UserData(lua.create_userdata(LTensor(t.clone()))?),
        Kept::Data(d) => Value::UserData(lua.create_userdata(DataHandle(d.clone()))?),
        Kept::Model(s) => {
            let m = rebuild(s).lua(lua)?;
            Value::UserData(lua.create_userdata(ModelHandle(Arc::new(Mutex::new(m))))?)
        }
    })
}

fn key(lua: &Lua, name: &str, f: &Function) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    // the code, without line numbers: editing the function recomputes it, moving it does not
    f.dump(true).hash(&mut h);
    env(lua).args.hash(&mut h);
    h.finish()
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    ftl.set(
        "cache",
        lua.create_function(|lua, (name, f): (String, Function)| {
            if !ON.load(Ordering::Relaxed) || super::plan::active(lua) {
                return f.call::<MultiValue>(());
            }
            let k = key(lua, &name, &f);
            {
                let mut store = STORE.lock().unwrap();
                if let Some(i) = store.iter().position(|e| e.key == k) {
                    let e = store.remove(i);
                    let out = e.values.iter().map(|v| give(lua, v)).collect::<mlua::Result<Vec<_>>>();
                    store.push(e);
                    if !super::model::env(lua).quiet {
                        tracing::info!("ftl.cache(\"{name}\"): kept from an earlier run");
                    }
                    return Ok(MultiValue::from_iter(out?));
                }
            }
            let out: MultiValue = f.call(())?;
            let mut bytes = 0;
            let values = out
                .iter()
                .map(|v| keep(lua, v, 0, &mut bytes))
                .collect::<mlua::Result<Vec<_>>>()?;
            let limit = budget();
            if bytes > limit {
                tracing::warn!(
                    "ftl.cache(\"{name}\"): {bytes} bytes is more than the cache holds ({limit}; FTL_CACHE_BYTES): not kept"
                );
                return Ok(out);
            }
            // this run goes on with what a later run will get (a model rebuilt from its weights)
            let fresh = values.iter().map(|v| give(lua, v)).collect::<mlua::Result<Vec<_>>>()?;
            let mut store = STORE.lock().unwrap();
            store.push(Entry { key: k, values, bytes });
            while store.iter().map(|e| e.bytes).sum::<usize>() > limit {
                store.remove(0);
            }
            Ok(MultiValue::from_iter(fresh))
        })?,
    )
}
