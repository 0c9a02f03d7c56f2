//! Reading `config.json` fields with errors that name the file and key, and the rotary-embedding
//! settings in both transformers 4 (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`)
//! spellings.

use crate::error::{Error, Result};
use crate::ops::rope::{default_inv_freq, Rope};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A config.json object and the path it came from.
#[derive(Clone)]
pub struct Cfg<'a> {
    pub v: &'a Value,
    pub path: PathBuf,
}

impl<'a> Cfg<'a> {
    pub fn new(v: &'a Value, path: &Path) -> Self {
        Cfg {
            v,
            path: path.to_path_buf(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, msg: &str) -> Error {
        Error::config(&self.path, key, msg)
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(self.err(key, "missing (required for this architecture)")),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, &format!("expected a non-negative integer, got {v}"))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_none() {
            return Ok(default);
        }
        self.usize(key)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.usize(key).map(Some)
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, &format!("expected a number, got {v}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, &format!("expected true/false, got {v}"))),
        }
    }

    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(key, &format!("expected a string, got {v}"))),
        }
    }

    pub fn activation(&self, key: &str, default: &str) -> Result<crate::ops::Activation> {
        let name = self.str_or(key, "")?;
        let name = if name.is_empty() { default } else { name };
        crate::ops::Activation::parse(name)
            .ok_or_else(|| self.err(key, &format!("unsupported activation `{name}`")))
    }

    /// Checks that `a` is divisible by `b` (heads into hidden size, …).
    pub fn divides(&self, key: &str, a: usize, b: usize) -> Result<()> {
        if b == 0 || !a.is_multiple_of(b) {
            return Err(self.err(key, &format!("{a} is not divisible by {b}")));
        }
        Ok(())
    }

    /// Rotary embeddings for `head_dim` from `rope_parameters` (v5) or `rope_theta` +
    /// `rope_scaling` (v4).
    pub fn rope(&self, head_dim: usize, default_theta: f64) -> Result<Rope> {
        let params = self
            .get("rope_parameters")
            .or_else(|| self.get("rope_scaling"));
        let p = |k: &str| params.and_then(|p| p.get(k)).filter(|v| !v.is_null());
        let theta = match p("rope_theta") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err("rope_parameters.rope_theta", "expected a number"))?,
            None => self.f64_or("rope_theta", default_theta)?,
        };
        let partial = p("partial_rotary_factor")
            .and_then(|v| v.as_f64())
            .unwrap_or(self.f64_or("partial_rotary_factor", 1.0)?);
        let dim = (head_dim as f64 * partial) as usize;
        // the frequency table is made before any weight is read
        crate::model::param::ensure_fits("the rotary embedding's frequencies", &[&[dim]]).map_err(
            |e| {
                let key = match self.get("head_dim") {
                    Some(_) => "head_dim",
                    None => "hidden_size",
                };
                self.err(key, &e.to_string())
            },
        )?;
        if partial != 1.0 {
            return Err(self.err(
                "partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
        let kind = p("rope_type")
            .or_else(|| p("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            p(k).and_then(|v| v.as_f64()).ok_or_else(|| {
                self.err(
                    &format!("rope_scaling.{k}"),
                    &format!("required for rope_type `{kind}`"),
                )
            })
        };
        let num_or = |k: &str, d: f64| p(k).and_then(|v| v.as_f64()).unwrap_or(d);
        let max_pos = self.usize_or("max_position_embeddings", 2048)?;
        let orig = p("original_max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        let base_inv = default_inv_freq(theta, dim);
        let mut rope = Rope {
            inv_freq: Arc::new(base_inv.clone()),
            attention_scaling: 1.0,
            dynamic: None,
            device_tables: Default::default(),
        };
        match kind {
            "default" => {}
            "linear" => {
                let f = num("factor")? as f32;
                rope.inv_freq = Arc::new(base_inv.iter().map(|x| x / f).collect());
            }
            "dynamic" => {
                let f = num("factor")?;
                rope.dynamic = Some((theta, dim, f, orig.unwrap_or(max_pos)));
            }
            "llama3" => {
                let factor = num("factor")?;
                let lo = num("low_freq_factor")?;
                let hi = num("high_freq_factor")?;
                let old = num("original_max_position_embeddings")?;
                let lo_wl = old / lo;
                let hi_wl = old / hi;
                let inv = base_inv
                    .iter()
                    .map(|&f| {
                        let f = f as f64;
                        let wl = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wl > lo_wl { f / factor } else { f };
                        if wl < hi_wl || wl > lo_wl {
                            scaled as f32
                        } else {
                            let s = (old / wl - lo) / (hi - lo);
                            ((1.0 - s) * scaled / factor + s * scaled) as f32
                        }
                    })
                    .collect();
                rope.inv_freq = Arc::new(inv);
            }
            "yarn" => {
                let factor = num("factor")?;
                let orig = orig.unwrap_or(max_pos) as f64;
                let mscale_fn = |s: f64, m: f64| {
                    if s <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * s.ln() + 1.0
                    }
                };
                let att = match p("attention_factor").and_then(|v| v.as_f64()) {
                    Some(a) => a,
                    None => match (
                        p("mscale").and_then(|v| v.as_f64()),
                        p("mscale_all_dim").and_then(|v| v.as_f64()),
                    ) {
                        (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                            mscale_fn(factor, m) / mscale_fn(factor, ma)
                        }
                        _ => mscale_fn(factor, 1.0),
                    },
                };
                let (bf, bs) = (num_or("beta_fast", 32.0), num_or("beta_slow", 1.0));
                let corr = |rot: f64| {
                    (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * theta.ln())
                };
                let truncate = p("truncate").and_then(|v| v.as_bool()).unwrap_or(true);
                let (mut low, mut high) = (corr(bf), corr(bs));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let inv = (0..dim / 2)
                    .map(|i| {
                        let pos = (theta as f32).powf((2 * i) as f32 / dim as f32) as f64;
                        let extra = 1.0 / pos;
                        let inter = 1.0 / (factor * pos);
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let ef = 1.0 - ramp;
                        (inter * (1.0 - ef) + extra * ef) as f32
                    })
                    .collect();
                rope.inv_freq = Arc::new(inv);
                rope.attention_scaling = att as f32;
            }
            other => {
                return Err(self.err(
                    "rope_scaling.rope_type",
                    &format!("unsupported rope type `{other}`"),
                ));
            }
        }
        Ok(rope)
    }
}
