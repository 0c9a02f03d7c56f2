//! `ftl.tensor`: tensors as Lua userdata (load/save safetensors, arithmetic, reductions). Dims and
//! starts are 0-based as in PyTorch; negative dims count from the end.

use super::api;
use super::opts::Opts;
use super::{Env, LuaExt};
use candle_core::{DType, Device, Tensor, D};
use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct LTensor(pub Tensor);

pub fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "f32" | "float32" | "float" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" | "half" => DType::F16,
        "f64" | "float64" | "double" => DType::F64,
        "i64" | "int64" | "long" => DType::I64,
        "u32" | "uint32" => DType::U32,
        "u8" | "uint8" => DType::U8,
        _ => return None,
    })
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        DType::I64 => "i64",
        DType::U32 => "u32",
        DType::U8 => "u8",
        _ => "other",
    }
}

/// Shape and flat values of a nested Lua table of numbers.
fn flatten(
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<f64>,
) -> Result<(), String> {
    match v {
        Value::Integer(i) => out.push(*i as f64),
        Value::Number(n) => out.push(*n),
        Value::Boolean(b) => out.push(*b as u8 as f64),
        Value::Table(t) => {
            let n = t.raw_len();
            if shape.len() <= depth {
                shape.push(n);
            } else if shape[depth] != n {
                return Err(format!(
                    "ragged table: a row has {n} entries, another {}",
                    shape[depth]
                ));
            }
            for i in 1..=n {
                let x: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                flatten(&x, depth + 1, shape, out)?;
            }
        }
        other => {
            return Err(format!(
                "tensor entries must be numbers, got {}",
                other.type_name()
            ))
        }
    }
    Ok(())
}

/// A tensor from a Lua value: a tensor, or a (nested) table of numbers.
pub fn from_value(lua: &Lua, v: Value, dtype: DType) -> mlua::Result<Tensor> {
    if let Value::UserData(u) = &v {
        if let Ok(t) = u.borrow::<LTensor>() {
            return if t.0.dtype().is_int() == dtype.is_int() {
                Ok(t.0.clone())
            } else {
                t.0.to_dtype(dtype).lua(lua)
            };
        }
    }
    let mut shape = Vec::new();
    let mut flat = Vec::new();
    flatten(&v, 0, &mut shape, &mut flat).lua(lua)?;
    let t = Tensor::from_vec(flat, shape, &Device::Cpu).lua(lua)?;
    t.to_dtype(dtype).lua(lua)
}

fn to_lua_nested(lua: &Lua, t: &Tensor) -> mlua::Result<Value> {
    let t = t.to_device(&Device::Cpu).lua(lua)?;
    let int = matches!(t.dtype(), DType::I64 | DType::U32 | DType::U8);
    let flat: Vec<f64> = t
        .flatten_all()
        .and_then(|x| x.to_dtype(DType::F64))
        .and_then(|x| x.to_vec1())
        .lua(lua)?;
    let dims = t.dims().to_vec();
    fn build(lua: &Lua, dims: &[usize], flat: &[f64], int: bool) -> mlua::Result<Value> {
        if dims.is_empty() {
            return Ok(if int {
                Value::Integer(flat[0] as i64)
            } else {
                Value::Number(flat[0])
            });
        }
        let t = lua.create_table()?;
        let step = flat.len() / dims[0].max(1);
        for i in 0..dims[0] {
            t.set(
                i + 1,
                build(lua, &dims[1..], &flat[i * step..(i + 1) * step], int)?,
            )?;
        }
        Ok(Value::Table(t))
    }
    build(lua, &dims, &flat, int)
}

fn dim(t: &Tensor, d: i64) -> candle_core::Result<usize> {
    let r = t.rank() as i64;
    let d = if d < 0 { r + d } else { d };
    if d < 0 || d >= r {
        candle_core::bail!("dim {d} out of range for a tensor of rank {r}");
    }
    Ok(d as usize)
}

/// `a op b` with either side a number.
fn arith(lua: &Lua, a: Value, b: Value, op: &str) -> mlua::Result<LTensor> {
    let as_t = |v: &Value| -> Option<Tensor> {
        match v {
            Value::UserData(u) => u.borrow::<LTensor>().ok().map(|t| t.0.clone()),
            _ => None,
        }
    };
    let as_n = |v: &Value| -> Option<f64> {
        match v {
            Value::Integer(i) => Some(*i as f64),
            Value::Number(n) => Some(*n),
            _ => None,
        }
    };
    let r = match (as_t(&a), as_t(&b), as_n(&a), as_n(&b)) {
        (Some(x), Some(y), _, _) => {
            let y = y
                .to_dtype(x.dtype())
                .and_then(|y| y.to_device(x.device()))
                .lua(lua)?;
            match op {
                "+" => x.broadcast_add(&y),
                "-" => x.broadcast_sub(&y),
                "*" => x.broadcast_mul(&y),
                _ => x.broadcast_div(&y),
            }
        }
        (Some(x), None, _, Some(n)) => match op {
            "+" => x + n,
            "-" => x - n,
            "*" => x * n,
            _ => x / n,
        },
        (None, Some(y), Some(n), _) => match op {
            "+" => y + n,
            "-" => y.neg().and_then(|y| y + n),
            "*" => y * n,
            _ => y.recip().and_then(|y| y * n),
        },
        _ => {
            return Err(super::lua_err(
                lua,
                format!("tensor {op}: operands must be tensors or numbers"),
            ))
        }
    };
    r.map(LTensor).lua(lua)
}

impl UserData for LTensor {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("shape", |lua, t, ()| {
            let s = lua.create_table()?;
            for (i, d) in t.0.dims().iter().enumerate() {
                s.set(i + 1, *d)?;
            }
            Ok(s)
        });
        m.add_method("dtype", |_, t, ()| Ok(dtype_name(t.0.dtype())));
        m.add_method("numel", |_, t, ()| Ok(t.0.elem_count()));
        m.add_method("to_table", |lua, t, ()| {
            super::plan::reads(lua, "to_table()")?;
            to_lua_nested(lua, &t.0)
        });
        m.add_method("item", |lua, t, ()| {
            super::plan::reads(lua, "item()")?;
            if t.0.elem_count() != 1 {
                return Err(super::lua_err(
                    lua,
                    format!(
                        "item() needs a single element, the tensor has shape {:?}",
                        t.0.dims()
                    ),
                ));
            }
            let v: f64 =
                t.0.flatten_all()
                    .and_then(|x| x.to_dtype(DType::F64))
                    .and_then(|x| x.to_vec1::<f64>())
                    .lua(lua)?[0];
            Ok(v)
        });
        m.add_method("sum", |lua, t, ()| {
            t.0.to_dtype(DType::F64)
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar::<f64>())
                .lua(lua)
        });
        m.add_method("mean", |lua, t, ()| {
            t.0.to_dtype(DType::F64)
                .and_then(|x| x.mean_all())
                .and_then(|x| x.to_scalar::<f64>())
                .lua(lua)
        });
        m.add_method("norm", |lua, t, ()| {
            t.0.to_dtype(DType::F64)
                .and_then(|x| x.sqr())
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar::<f64>())
                .map(f64::sqrt)
                .lua(lua)
        });
        m.add_method("max", |lua, t, ()| {
            t.0.to_dtype(DType::F64)
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.max(0))
                .and_then(|x| x.to_scalar::<f64>())
                .lua(lua)
        });
        m.add_method("min", |lua, t, ()| {
            t.0.to_dtype(DType::F64)
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.min(0))
                .and_then(|x| x.to_scalar::<f64>())
                .lua(lua)
        });
        m.add_method("abs", |lua, t, ()| t.0.abs().map(LTensor).lua(lua));
        m.add_method("argmax", |lua, t, d: Option<i64>| {
            let d = dim(&t.0, d.unwrap_or(-1)).lua(lua)?;
            t.0.argmax(d)
                .and_then(|x| x.to_dtype(DType::I64))
                .map(LTensor)
                .lua(lua)
        });
        m.add_method("narrow", |lua, t, (d, start, len): (i64, usize, usize)| {
            let d = dim(&t.0, d).lua(lua)?;
            t.0.narrow(d, start, len).map(LTensor).lua(lua)
        });
        m.add_method("reshape", |lua, t, shape: Vec<usize>| {
            t.0.reshape(shape).map(LTensor).lua(lua)
        });
        m.add_method("to", |lua, t, dt: String| {
            let d = parse_dtype(&dt)
                .ok_or_else(|| super::lua_err(lua, format!("unknown dtype `{dt}`")))?;
            t.0.to_dtype(d).map(LTensor).lua(lua)
        });
        // ‖self − ref‖ / ‖ref‖, the fixtures' tolerance measure
        m.add_method("rel_err", |lua, t, r: Value| {
            let r = from_value(lua, r, DType::F64)?
                .to_dtype(DType::F64)
                .and_then(|r| r.to_device(&Device::Cpu))
                .lua(lua)?;
            if r.dims() != t.0.dims() {
                return Err(super::lua_err(
                    lua,
                    format!("rel_err: shapes differ: {:?} vs {:?}", t.0.dims(), r.dims()),
                ));
            }
            let a =
                t.0.to_dtype(DType::F64)
                    .and_then(|a| a.to_device(&Device::Cpu))
                    .lua(lua)?;
            let d: f64 = (&a - &r)
                .and_then(|x| x.sqr())
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar())
                .lua(lua)?;
            let n: f64 = r
                .sqr()
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar())
                .lua(lua)?;
            Ok((d / n.max(1e-300)).sqrt())
        });
        m.add_meta_method(MetaMethod::ToString, |_, t, ()| {
            Ok(format!(
                "tensor{:?} {}",
                t.0.dims(),
                dtype_name(t.0.dtype())
            ))
        });
        m.add_meta_method(MetaMethod::Len, |_, t, ()| {
            Ok(t.0.dims().first().copied().unwrap_or(0))
        });
        m.add_meta_method(MetaMethod::Unm, |lua, t, ()| {
            t.0.neg().map(LTensor).lua(lua)
        });
        m.add_meta_function(MetaMethod::Add, |lua, (a, b): (Value, Value)| {
            arith(lua, a, b, "+")
        });
        m.add_meta_function(MetaMethod::Sub, |lua, (a, b): (Value, Value)| {
            arith(lua, a, b, "-")
        });
        m.add_meta_function(MetaMethod::Mul, |lua, (a, b): (Value, Value)| {
            arith(lua, a, b, "*")
        });
        m.add_meta_function(MetaMethod::Div, |lua, (a, b): (Value, Value)| {
            arith(lua, a, b, "/")
        });
    }
}

fn env(lua: &Lua) -> Arc<Env> {
    lua.app_data_ref::<Arc<Env>>().unwrap().clone()
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "load",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            let f = crate::st::StFile::open(&path).lua(lua)?;
            let out = lua.create_table()?;
            for (k, v) in f.load_all(&Device::Cpu).lua(lua)? {
                out.set(k, LTensor(v))?;
            }
            Ok(out)
        })?,
    )?;
    t.set(
        "metadata",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            let f = crate::st::StFile::open(&path).lua(lua)?;
            let out = lua.create_table()?;
            for (k, v) in f.metadata {
                out.set(k, v)?;
            }
            Ok(out)
        })?,
    )?;
    t.set(
        "save",
        lua.create_function(|lua, (p, tbl): (String, Table)| {
            let path = env(lua).output(&p).lua(lua)?;
            if super::plan::writes(lua, "ftl.tensor.save", &path) {
                return Ok(path.display().to_string());
            }
            let mut m = BTreeMap::new();
            for pair in tbl.pairs::<String, Value>() {
                let (k, v) = pair?;
                m.insert(k, from_value(lua, v, DType::F32)?);
            }
            crate::st::save(&path, &m, None).lua(lua)?;
            Ok(path.display().to_string())
        })?,
    )?;
    t.set(
        "from",
        lua.create_function(|lua, (v, o): (Value, Option<Table>)| {
            let o = Opts::new(lua, o, &api::TENSOR_FROM)?;
            let dt = match o.get::<String>("dtype")? {
                Some(s) => parse_dtype(&s)
                    .ok_or_else(|| super::lua_err(lua, format!("unknown dtype `{s}`")))?,
                None => DType::F32,
            };
            from_value(lua, v, dt).map(LTensor)
        })?,
    )?;
    t.set(
        "zeros",
        lua.create_function(|lua, shape: Vec<usize>| {
            crate::model::param::ensure_fits("ftl.tensor.zeros", &[&shape]).lua(lua)?;
            Tensor::zeros(shape, DType::F32, &Device::Cpu)
                .map(LTensor)
                .lua(lua)
        })?,
    )?;
    ftl.set("tensor", t)?;
    let _ = D::Minus1;
    Ok(())
}
