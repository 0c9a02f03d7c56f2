//! `ftl run recipe.lua key=value ...`: values parsed by ftl (not by Lua's `load`) as Lua literals
//! — numbers, booleans, nil, quoted strings, tables — anything else a plain string; `a.b=1` nests.

use crate::error::{Error, Result};
use mlua::{Lua, Table, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    /// `{1, 2, k = v}`: positional then named entries
    Table(Vec<Arg>, Vec<(String, Arg)>),
}

/// Splits `key=value` words.
pub fn parse_args(words: &[String]) -> Result<Vec<(String, String)>> {
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::msg(format!("argument `{w}`: expected key=value"))),
        })
        .collect()
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Arg> {
        self.ws();
        let c = *self.s.get(self.i)?;
        match c {
            b'{' => self.table(),
            b'"' | b'\'' => self.string(c).map(Arg::Str),
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(self.s[self.i], b',' | b'}' | b';')
                    && !self.s[self.i].is_ascii_whitespace()
                {
                    self.i += 1;
                }
                let w = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                scalar(w)
            }
        }
    }

    fn string(&mut self, q: u8) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            if c == q {
                return String::from_utf8(out).ok();
            }
            if c == b'\\' && self.i < self.s.len() {
                let e = self.s[self.i];
                self.i += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    other => other,
                });
            } else {
                out.push(c);
            }
        }
        None
    }

    fn table(&mut self) -> Option<Arg> {
        self.i += 1;
        let (mut pos, mut named) = (Vec::new(), Vec::new());
        loop {
            self.ws();
            match self.s.get(self.i)? {
                b'}' => {
                    self.i += 1;
                    return Some(Arg::Table(pos, named));
                }
                b',' | b';' => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            // `name = value`?
            let save = self.i;
            let start = self.i;
            while self.i < self.s.len()
                && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
            {
                self.i += 1;
            }
            let ident = std::str::from_utf8(&self.s[start..self.i])
                .ok()?
                .to_string();
            self.ws();
            if !ident.is_empty()
                && self.s.get(self.i) == Some(&b'=')
                && !ident.as_bytes()[0].is_ascii_digit()
            {
                self.i += 1;
                let v = self.value()?;
                named.push((ident, v));
            } else {
                self.i = save;
                pos.push(self.value()?);
            }
        }
    }
}

fn scalar(w: &str) -> Option<Arg> {
    Some(match w {
        "nil" => Arg::Nil,
        "true" => Arg::Bool(true),
        "false" => Arg::Bool(false),
        _ => {
            if let Ok(i) = w.parse::<i64>() {
                Arg::Int(i)
            } else if let Ok(f) = w.parse::<f64>() {
                if w.chars().any(|c| c.is_ascii_digit()) {
                    Arg::Num(f)
                } else {
                    Arg::Str(w.to_string())
                }
            } else {
                Arg::Str(w.to_string())
            }
        }
    })
}

/// A command-line value as a Lua literal, or the plain string.
pub fn parse_value(v: &str) -> Arg {
    let t = v.trim();
    if t.starts_with('{') || t.starts_with('"') || t.starts_with('\'') {
        let mut p = P {
            s: t.as_bytes(),
            i: 0,
        };
        if let Some(a) = p.value() {
            p.ws();
            if p.i == t.len() {
                return a;
            }
        }
        return Arg::Str(v.to_string());
    }
    scalar(t).unwrap_or_else(|| Arg::Str(v.to_string()))
}

fn to_lua(lua: &Lua, a: &Arg) -> mlua::Result<Value> {
    Ok(match a {
        Arg::Nil => Value::Nil,
        Arg::Bool(b) => Value::Boolean(*b),
        Arg::Int(i) => Value::Integer(*i),
        Arg::Num(n) => Value::Number(*n),
        Arg::Str(s) => Value::String(lua.create_string(s)?),
        Arg::Table(pos, named) => {
            let t = lua.create_table()?;
            for (i, v) in pos.iter().enumerate() {
                t.set(i + 1, to_lua(lua, v)?)?;
            }
            for (k, v) in named {
                t.set(k.as_str(), to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

/// `ftl.args`, with `a.b=1` as `args.a.b`.
pub fn to_table(lua: &Lua, args: &[(String, String)]) -> mlua::Result<Table> {
    let root = lua.create_table()?;
    for (k, v) in args {
        let parts: Vec<&str> = k.split('.').collect();
        let mut t = root.clone();
        for p in &parts[..parts.len() - 1] {
            let next = match t.get::<Value>(*p)? {
                Value::Table(x) => x,
                _ => {
                    let x = lua.create_table()?;
                    t.set(*p, x.clone())?;
                    x
                }
            };
            t = next;
        }
        t.set(parts[parts.len() - 1], to_lua(lua, &parse_value(v))?)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(parse_value("3"), Arg::Int(3));
        assert_eq!(parse_value("2e-4"), Arg::Num(2e-4));
        assert_eq!(parse_value("true"), Arg::Bool(true));
        assert_eq!(parse_value("nil"), Arg::Nil);
        assert_eq!(parse_value("\"a b\""), Arg::Str("a b".into()));
        assert_eq!(parse_value("models/llama"), Arg::Str("models/llama".into()));
        assert_eq!(parse_value("inf"), Arg::Str("inf".into()));
        assert_eq!(
            parse_value("{1, 'x', k = {true}}"),
            Arg::Table(
                vec![Arg::Int(1), Arg::Str("x".into())],
                vec![("k".into(), Arg::Table(vec![Arg::Bool(true)], vec![]))]
            )
        );
        assert_eq!(parse_value("{1, 2"), Arg::Str("{1, 2".into()));
    }
}
