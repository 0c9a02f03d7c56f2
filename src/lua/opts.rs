//! Options tables, checked against their description in `api`: an unknown key is an error naming
//! the key, the recipe line and the closest valid key; a value of the wrong type names the option
//! and the type it must have.

use super::api::{self, Class};
use super::lua_err;
use mlua::{FromLua, Lua, Table, Value};

pub struct Opts<'a> {
    lua: &'a Lua,
    t: Option<Table>,
    what: &'static str,
}

/// A value as an error shows it: its type, and short strings and numbers themselves.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s = s.to_string_lossy();
            if s.chars().count() <= 40 {
                format!("the string \"{s}\"")
            } else {
                "a string".into()
            }
        }
        Value::Integer(i) => format!("the number {i}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Boolean(b) => format!("{b}"),
        Value::UserData(_) => "a handle".into(),
        other => format!("a {}", other.type_name()),
    }
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

/// The valid key closest to `key`; of equally close ones, one that begins the other (`rank` is
/// as far from `r` as from `name`, and meant `r`).
pub fn closest<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    valid.iter().copied().min_by_key(|v| {
        (
            distance(key, v),
            !(key.starts_with(v) || v.starts_with(key)),
        )
    })
}

impl<'a> Opts<'a> {
    /// Checks that every key of `t` is a field of `class` and has the field's type.
    pub fn new(lua: &'a Lua, t: Option<Table>, class: &'static Class) -> mlua::Result<Self> {
        Self::named(lua, t, class, class.what)
    }

    /// As `new`, for a class several functions share: errors name `what`.
    pub fn named(
        lua: &'a Lua,
        t: Option<Table>,
        class: &'static Class,
        what: &'static str,
    ) -> mlua::Result<Self> {
        let valid: Vec<&str> = class.fields.iter().map(|f| f.key).collect();
        let valid = valid.as_slice();
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
            for f in class.fields {
                let v: Value = t.get(f.key)?;
                if matches!(&v, Value::String(s) if s.to_str().is_err()) {
                    return Err(lua_err(
                        lua,
                        format!("{what}: option `{}` is not valid UTF-8 text", f.key),
                    ));
                }
                if !v.is_nil() && !api::matches(&v, f.ty) {
                    return Err(lua_err(
                        lua,
                        format!(
                            "{what}: option `{}` must be {}, got {}",
                            f.key,
                            api::describe_type(f.ty),
                            shown(&v)
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
        // the type was checked in `new`: what fails here is a value out of the Rust type's range
        let seen = shown(&v);
        T::from_lua(v, self.lua).map(Some).map_err(|_| {
            lua_err(
                self.lua,
                format!("{}: option `{key}` is out of range ({seen})", self.what),
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
