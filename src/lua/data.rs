//! `ftl.data`: `text`, `jsonl`, `from`, `tokens` and the dataset handle (`len`, `split`,
//! `shuffle`, `rows`). Relative paths resolve against the recipe's directory.

use super::api;
use super::model::{env, lua_of_json, TokenizerHandle};
use super::opts::Opts;
use super::tensor::from_value;
use super::{lua_err, LuaExt};
use crate::data::{self, Dataset, Example, Prep, Record};
use candle_core::DType;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

#[derive(Clone)]
pub struct DataHandle(pub Dataset);

impl UserData for DataHandle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("len", |lua, d, tok: Option<mlua::AnyUserData>| {
            let t = match tok {
                Some(u) => Some(u.borrow::<TokenizerHandle>()?.0.clone()),
                None => None,
            };
            d.0.len(t.as_ref()).lua(lua)
        });
        m.add_method("split", |lua, d, (frac, o): (f64, Option<Table>)| {
            let o = Opts::new(lua, o, &api::SPLIT)?;
            let (a, b) = d.0.split(frac, o.get("seed")?).lua(lua)?;
            Ok((DataHandle(a), DataHandle(b)))
        });
        m.add_method("rows", |lua, d, ()| {
            let rows = d.0.rows().lua(lua)?;
            lua_of_json(lua, &serde_json::Value::Array(rows))
        });
        m.add_method("shuffle", |_, d, seed: Option<u64>| {
            Ok(DataHandle(d.0.shuffled(seed.unwrap_or(0))))
        });
        m.add_meta_method(mlua::MetaMethod::ToString, |_, d, ()| {
            Ok(format!("dataset({})", d.0.origin))
        });
    }
}

fn prep(o: &Opts) -> mlua::Result<Prep> {
    Ok(Prep {
        bos: o.get("bos")?,
        eos: o.get("eos")?,
        template: o.get("template")?,
        max_len: o.get("max_len")?,
    })
}

/// A Lua table as a JSON object, for the record parser.
fn json(lua: &Lua, v: &Value) -> mlua::Result<serde_json::Value> {
    Ok(match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::Number(n) => serde_json::json!(n),
        Value::String(s) => s.to_str()?.to_string().into(),
        Value::Table(t) if t.raw_len() > 0 => serde_json::Value::Array(
            t.sequence_values::<Value>()
                .map(|x| json(lua, &x?))
                .collect::<mlua::Result<_>>()?,
        ),
        Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for p in t.pairs::<String, Value>() {
                let (k, v) = p?;
                m.insert(k, json(lua, &v)?);
            }
            serde_json::Value::Object(m)
        }
        other => {
            return Err(lua_err(
                lua,
                format!(
                    "data records hold strings and numbers, got a {}",
                    other.type_name()
                ),
            ))
        }
    })
}

/// The format a record's fields imply.
fn infer(v: &serde_json::Value) -> &'static str {
    if v.get("messages").is_some() {
        "chat"
    } else if v.get("instruction").is_some() {
        "instruction"
    } else if v.get("label").is_some() {
        "classification"
    } else {
        "text"
    }
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    let d = lua.create_table()?;
    d.set(
        "jsonl",
        lua.create_function(|lua, (p, o): (String, Option<Table>)| {
            let o = Opts::named(lua, o, &api::DATA, "ftl.data.jsonl")?;
            let path = env(lua).input(&p).lua(lua)?;
            let format: String = o.or("format", "text".to_string())?;
            let mut ds = Dataset::jsonl(&path, &format).lua(lua)?;
            ds.prep = prep(&o)?;
            Ok(DataHandle(ds))
        })?,
    )?;
    d.set(
        "text",
        lua.create_function(|lua, (p, o): (String, Option<Table>)| {
            let o = Opts::named(lua, o, &api::DATA, "ftl.data.text")?;
            let path = env(lua).input(&p).lua(lua)?;
            let files = data::glob(&path).lua(lua)?;
            let mut ds = Dataset::text(&files, o.or("block", 512)?).lua(lua)?;
            ds.prep = prep(&o)?;
            Ok(DataHandle(ds))
        })?,
    )?;
    d.set(
        "from",
        lua.create_function(|lua, (list, o): (Table, Option<Table>)| {
            let o = Opts::named(lua, o, &api::DATA, "ftl.data.from")?;
            let given: Option<String> = o.get("format")?;
            let loc = super::location(lua).unwrap_or_else(|| "ftl.data.from".into());
            let mut recs: Vec<Record> = Vec::new();
            for (i, v) in list.sequence_values::<Value>().enumerate() {
                let j = json(lua, &v?)?;
                let f = given.clone().unwrap_or_else(|| infer(&j).to_string());
                recs.push(data::record(&j, &f, &format!("{loc} record"), i + 1).lua(lua)?);
            }
            let mut ds = Dataset::from_records(recs, &loc).lua(lua)?;
            ds.prep = prep(&o)?;
            Ok(DataHandle(ds))
        })?,
    )?;
    d.set(
        "tokens",
        lua.create_function(|lua, t: Table| {
            let o = Opts::new(lua, Some(t), &api::TOKENS)?;
            let ids = from_value(lua, o.value("input_ids")?, DType::I64)?;
            let ids = if ids.rank() == 1 {
                ids.unsqueeze(0).lua(lua)?
            } else {
                ids
            };
            let rows = ids.to_vec2::<i64>().lua(lua)?;
            let mat = |k: &str| -> mlua::Result<Option<Vec<Vec<i64>>>> {
                match o.value(k)? {
                    Value::Nil => Ok(None),
                    v => {
                        let t = from_value(lua, v, DType::I64)?;
                        let t = if t.rank() == 1 && k != "labels" {
                            t.unsqueeze(0).lua(lua)?
                        } else {
                            t
                        };
                        if t.rank() == 1 {
                            return Ok(Some(
                                t.to_vec1::<i64>()
                                    .lua(lua)?
                                    .into_iter()
                                    .map(|x| vec![x])
                                    .collect(),
                            ));
                        }
                        Ok(Some(t.to_vec2::<i64>().lua(lua)?))
                    }
                }
            };
            let mask = mat("attention_mask")?;
            let labels = mat("labels")?;
            let types = mat("token_type_ids")?;
            let mut ex = Vec::with_capacity(rows.len());
            for (r, row) in rows.iter().enumerate() {
                let len = match &mask {
                    Some(m) => m[r].iter().filter(|&&x| x != 0).count(),
                    None => row.len(),
                };
                let mut e = Example {
                    ids: row[..len].iter().map(|&x| x as u32).collect(),
                    types: types
                        .as_ref()
                        .map(|t| t[r][..len].iter().map(|&x| x as u32).collect()),
                    ..Default::default()
                };
                match &labels {
                    // one label per row: classification
                    Some(l) if l[r].len() == 1 && row.len() > 1 => e.class = Some(l[r][0]),
                    Some(l) => e.labels = l[r][..len].to_vec(),
                    None => e.labels = row[..len].to_vec(),
                }
                ex.push(e);
            }
            let loc = super::location(lua).unwrap_or_else(|| "ftl.data.tokens".into());
            Dataset::from_examples(ex, &loc).map(DataHandle).lua(lua)
        })?,
    )?;
    ftl.set("data", d)?;
    Ok(())
}
