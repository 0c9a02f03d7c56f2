//! Typed reading of GGUF metadata (candle's `gguf_file::Content`) for the model and tokenizer
//! loaders, every error naming the file and the key.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

/// Typed access to the metadata, every error naming the file and the key.
pub struct Meta<'a> {
    pub ct: &'a Content,
    pub path: &'a Path,
}

impl<'a> Meta<'a> {
    pub fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::config(self.path, key, msg)
    }

    pub fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        self.err(key, format!("expected {want}, found {:?}", v.value_type()))
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.ct.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.ct.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(key, "an array", v)),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.err(
                    key,
                    format!("element {i}: expected a string, found {:?}", v.value_type()),
                )),
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    pub fn numbers(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                number(v).ok_or_else(|| {
                    self.err(
                        key,
                        format!("element {i}: expected a number, found {:?}", v.value_type()),
                    )
                })
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.ct.metadata.get(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an integer", v)),
        }
    }

    /// A non-negative integer, or a per-layer array of them that is the same in every layer (some
    /// converters write head counts per layer).
    pub fn count(&self, key: &str) -> Result<Option<u64>> {
        let v = match self.uniform(key)? {
            None => return Ok(None),
            Some(v) => v,
        };
        integer(v)
            .and_then(|i| u64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// A number, or a per-layer array of equal numbers.
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.uniform(key)? {
            None => Ok(None),
            Some(v) => number(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    /// The value of `key`, or the one value of a per-layer array of it.
    fn uniform(&self, key: &str) -> Result<Option<&'a Value>> {
        match self.ct.metadata.get(key) {
            Some(Value::Array(a)) if !a.is_empty() => {
                let first = format!("{:?}", a[0]);
                if a.iter().any(|x| format!("{x:?}") != first) {
                    return Err(self.err(
                        key,
                        "differs between layers; ftl reads models with the same value in every layer",
                    ));
                }
                Ok(Some(&a[0]))
            }
            v => Ok(v),
        }
    }

    pub fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.ct.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            // transformers takes the value as it is, and a number is truthy when not zero
            Some(v) => integer(v)
                .map(|i| Some(i != 0))
                .ok_or_else(|| self.wrong(key, "a bool", v)),
        }
    }
}

pub fn integer(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        v => integer(v).map(|i| i as f64),
    }
}
