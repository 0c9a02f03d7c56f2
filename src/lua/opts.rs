//! Options tables: unknown keys are an error naming the key, the recipe line and the closest valid
//! key; values are converted with errors naming the key.

use super::lua_err;
use mlua::{FromLua, Lua, Table, Value};

pub struct Opts<'a> {
    lua: &'a Lua,
    t: Option<Table>,
    what: &'static str,
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The valid key closest to `key`.
pub fn closest<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    valid.iter().copied().min_by_key(|v| distance(key, v))
}

impl<'a> Opts<'a> {
    /// Checks that every key of `t` is in `valid`.
    pub fn new(
        lua: &'a Lua,
        t: Option<Table>,
        what: &'static str,
        valid: &[&str],
    ) -> mlua::Result<Self> {
        if let Some(t) = &t {
            for pair in t.pairs::<Value, Value>() {
                let (k, _) = pair?;
                let key = match &k {
                    Value::String(s) => s.to_string_lossy().to_string(),
                    Value::Integer(_) => continue,
                    other => {
                        return Err(lua_err(
                            lua,
                            format!("{what}: option keys must be names, got {other:?}"),
                        ))
                    }
                };
                if !valid.contains(&key.as_str()) {
                    let hint = closest(&key, valid)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    return Err(lua_err(
                        lua,
                        format!(
                            "{what}: unknown option `{key}`{hint} (options: {})",
                            valid.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Opts { lua, t, what })
    }

    pub fn get<T: FromLua>(&self, key: &str) -> mlua::Result<Option<T>> {
        let Some(t) = &self.t else { return Ok(None) };
        let v: Value = t.get(key)?;
        if v.is_nil() {
            return Ok(None);
        }
        let ty = v.type_name();
        T::from_lua(v, self.lua).map(Some).map_err(|_| {
            lua_err(
                self.lua,
                format!("{}: option `{key}` has the wrong type ({ty})", self.what),
            )
        })
    }

    pub fn or<T: FromLua>(&self, key: &str, d: T) -> mlua::Result<T> {
        Ok(self.get(key)?.unwrap_or(d))
    }

    pub fn value(&self, key: &str) -> mlua::Result<Value> {
        match &self.t {
            Some(t) => t.get(key),
            None => Ok(Value::Nil),
        }
    }
}
