//! Bottleneck adapters (`ftl.adapter`, a registry `BlockMethod`) computed exactly as AdapterHub's
//! `BnConfig` family — `seq_bn` (Pfeiffer) and `double_seq_bn` (Houlsby) among them:
//! `pre_forward` (residual / original LayerNorm), `up(act(down(x)))·scaling` with optional gate
//! and adapter LayerNorms, `post_forward`; saved in AdapterHub's format (`adapterhub`).

use super::registry::{self, BlockMethod, Config, Opt, Spec};
use crate::error::{Error, Result};
use crate::model::layers::{BlockAdapter, Norm};
use crate::model::{BnPlace, Ctx, Model, Param};
use crate::ops::{self, Activation};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

pub struct BottleneckMethod;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "style",
        ty: "\"pfeiffer\"|\"houlsby\"",
        default: "\"pfeiffer\"",
        doc: "after the feed-forward block (pfeiffer: AdapterHub's seq_bn) or after attention and \
              feed-forward (houlsby: double_seq_bn)",
    },
    Opt {
        key: "reduction",
        ty: "number",
        default: "null",
        doc: "hidden size / bottleneck size (default 16)",
    },
    Opt {
        key: "size",
        ty: "integer",
        default: "null",
        doc: "the bottleneck size (instead of reduction)",
    },
    Opt {
        key: "activation",
        ty: "string",
        default: "null",
        doc: "relu, swish, gelu, tanh, … (default: the style's)",
    },
    Opt {
        key: "scaling",
        ty: "number",
        default: "null",
        doc: "output scaling (default 1)",
    },
    Opt {
        key: "dropout",
        ty: "number",
        default: "null",
        doc: "dropout inside the adapter (default 0)",
    },
];

const SPEC: Spec = Spec {
    name: "adapter",
    peft_type: "",
    doc: "Attaches bottleneck adapters (Pfeiffer or Houlsby)",
    options: OPTIONS,
    config_extras: "{}",
    lua_names: &[],
    lua_values: &[],
};

impl BlockMethod for BottleneckMethod {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    /// AdapterHub's preset for the style, starting from the identity (a zero up-projection, its
    /// `mam_adapter` init), with the recipe's changes; `layers` (from the targeting options) as
    /// AdapterHub's `leave_out`.
    fn config_from_recipe(&self, given: &Config, hidden: usize, layers: usize) -> Result<Config> {
        let style = given
            .get("style")
            .and_then(|v| v.as_str())
            .unwrap_or("pfeiffer");
        let mut raw = BnConfig::preset(style)?;
        raw["init_weights"] = "mam_adapter".into();
        let num = |k: &str| given.get(k).and_then(|v| v.as_f64());
        match (num("reduction"), num("size")) {
            (Some(_), Some(_)) => return Err(Error::msg("give reduction= or size=, not both")),
            (Some(r), None) => {
                raw["reduction_factor"] = if r.fract() == 0.0 {
                    (r as i64).into()
                } else {
                    r.into()
                }
            }
            (None, Some(s)) => {
                if s < 1.0 || s as usize > 16 * hidden {
                    return Err(Error::msg(format!("size {s} is out of range")));
                }
                raw["reduction_factor"] = factor_for_size(hidden, s as usize).into();
            }
            (None, None) => {}
        }
        if let Some(a) = given.get("activation").and_then(|v| v.as_str()) {
            if Activation::parse(a).is_none() {
                return Err(Error::msg(format!("unknown activation `{a}`")));
            }
            raw["non_linearity"] = a.into();
        }
        for k in ["scaling", "dropout"] {
            if let Some(v) = num(k) {
                raw[k] = v.into();
            }
        }
        if let Some(ls) = given.get("layers").and_then(|v| v.as_array()) {
            let ls: Vec<usize> = ls
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect();
            if let Some(bad) = ls.iter().find(|&&l| l >= layers) {
                return Err(Error::msg(format!(
                    "layer {bad} does not exist (the model has {layers})"
                )));
            }
            let leave: Vec<usize> = (0..layers).filter(|l| !ls.contains(l)).collect();
            raw["leave_out"] = leave.into();
        }
        BnConfig::from_json(&raw, false)?;
        Ok(raw.as_object().cloned().unwrap_or_default())
    }

    fn attach(
        &self,
        cfg: &Config,
        hidden: usize,
        place: BnPlace,
        layer: Option<usize>,
        path: &str,
        seed: u64,
        device: &Device,
    ) -> Result<Option<Box<dyn BlockAdapter>>> {
        let bn = BnConfig::from_json(&Value::Object(cfg.clone()), false)?;
        if !bn.placed(place, layer) {
            return Ok(None);
        }
        let b = Bottleneck::init(&bn, hidden, seed, path, device, DType::F32)?;
        Ok(Some(Box::new(b)))
    }

    fn reads(&self, file_config: &Value) -> bool {
        file_config.get("config").is_some() && file_config.get("peft_type").is_none()
    }

    fn save(&self, m: &mut Model, dir: &std::path::Path, name: &str) -> Result<()> {
        super::adapterhub::save(m, dir, name)
    }

    fn load(
        &self,
        m: &mut Model,
        dir: &std::path::Path,
        file_config: &Value,
        o: &super::io::LoadAdapterOpts,
    ) -> Result<String> {
        super::adapterhub::load(m, dir, file_config, o)
    }
}

/// The settings of a bottleneck adapter attached as `name` (its AdapterHub config).
pub fn config_of(m: &Model, name: &str) -> Option<Config> {
    let me = &m.adapter(name)?.method;
    registry::block_by_name(me.name).map(|_| me.config.clone())
}

/// Builds a parameter from values and a shape.
type MakeParam<'a> = dyn Fn(Vec<f32>, &[usize]) -> Result<Param> + 'a;

#[derive(Clone, Debug, PartialEq)]
pub enum Residual {
    Before,
    After,
    PostAdd,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scaling {
    Fixed(f64),
    /// a learned scalar
    Learned,
    /// a learned vector over channels
    Channel,
}

/// AdapterHub's `BnConfig` (the fields that change the computation), plus the JSON it came from.
#[derive(Clone, Debug)]
pub struct BnConfig {
    pub mh_adapter: bool,
    pub output_adapter: bool,
    /// a number, or a per-layer map with `"default"`
    pub reduction_factor: Value,
    pub non_linearity: String,
    pub original_ln_before: bool,
    pub original_ln_after: bool,
    pub ln_before: bool,
    pub ln_after: bool,
    pub residual_before_ln: Residual,
    pub adapter_residual_before_ln: bool,
    pub scaling: Scaling,
    pub use_gating: bool,
    pub is_parallel: bool,
    pub leave_out: Vec<usize>,
    pub dropout: f32,
    pub init_weights: String,
    /// the full `config` object, written back on save
    pub raw: Value,
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k).filter(|x| !x.is_null())
}

impl BnConfig {
    /// The two presets (`seq_bn` / `double_seq_bn`) as AdapterHub 1.3 writes them.
    pub fn preset(style: &str) -> Result<Value> {
        let mut v = json!({
            "adapter_residual_before_ln": false, "cross_adapter": false, "dropout": 0.0,
            "factorized_phm_W": true, "factorized_phm_rule": false,
            "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
            "init_weights_seed": null, "inv_adapter": null, "inv_adapter_reduction_factor": null,
            "is_parallel": false, "learn_phm": true, "leave_out": [], "ln_after": false,
            "ln_before": false, "mh_adapter": false, "non_linearity": "relu",
            "original_ln_after": true, "original_ln_before": true, "output_adapter": true,
            "phm_bias": true, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001,
            "phm_layer": false, "phm_rank": 1, "reduction_factor": 16, "residual_before_ln": true,
            "scaling": 1.0, "shared_W_phm": false, "shared_phm_rule": true, "stochastic_depth": 0.0,
            "use_gating": false
        });
        match style {
            "pfeiffer" | "seq_bn" => {}
            "houlsby" | "double_seq_bn" => {
                v["mh_adapter"] = json!(true);
                v["non_linearity"] = json!("swish");
                v["original_ln_before"] = json!(false);
            }
            other => {
                return Err(Error::msg(format!(
                    "adapter: unknown style `{other}` (use \"pfeiffer\" or \"houlsby\")"
                )))
            }
        }
        Ok(v)
    }

    /// Reads a `config` object; missing optional fields take `BnConfig`'s defaults (as
    /// AdapterHub does), `legacy_gelu` maps `gelu` → `gelu_new` for files without a version.
    pub fn from_json(v: &Value, legacy_gelu: bool) -> Result<Self> {
        if let Some(a) = field(v, "architecture") {
            if a.as_str() != Some("bottleneck") {
                return Err(Error::msg(format!(
                    "not a bottleneck adapter (architecture {a})"
                )));
            }
        }
        let b = |k: &str, d: bool| field(v, k).and_then(|x| x.as_bool()).unwrap_or(d);
        let req = |k: &str| {
            field(v, k).ok_or_else(|| Error::msg(format!("bottleneck config: missing `{k}`")))
        };
        let mut nl = req("non_linearity")?
            .as_str()
            .unwrap_or("relu")
            .to_lowercase();
        if legacy_gelu {
            nl = match nl.as_str() {
                "gelu" => "gelu_new".into(),
                "gelu_orig" => "gelu".into(),
                _ => nl,
            };
        }
        let residual_before_ln = match field(v, "residual_before_ln") {
            None => Residual::Before,
            Some(Value::Bool(true)) => Residual::Before,
            Some(Value::Bool(false)) => Residual::After,
            Some(Value::String(s)) if s == "post_add" => Residual::PostAdd,
            Some(o) => {
                return Err(Error::msg(format!(
                    "bottleneck config: residual_before_ln {o}"
                )))
            }
        };
        let scaling = match field(v, "scaling") {
            None => Scaling::Fixed(1.0),
            Some(Value::String(s)) if s == "learned" => Scaling::Learned,
            Some(Value::String(s)) if s == "channel" => Scaling::Channel,
            Some(x) => Scaling::Fixed(
                x.as_f64()
                    .ok_or_else(|| Error::msg(format!("bottleneck config: scaling {x}")))?,
            ),
        };
        if b("phm_layer", false) {
            return Err(Error::msg(
                "Compacter (phm_layer) adapters are not supported",
            ));
        }
        if field(v, "inv_adapter").is_some() {
            return Err(Error::msg(
                "invertible adapters (inv_adapter) are not supported",
            ));
        }
        Ok(BnConfig {
            mh_adapter: req("mh_adapter")?.as_bool().unwrap_or(false),
            output_adapter: req("output_adapter")?.as_bool().unwrap_or(false),
            reduction_factor: req("reduction_factor")?.clone(),
            non_linearity: nl,
            original_ln_before: b("original_ln_before", false),
            original_ln_after: b("original_ln_after", true),
            ln_before: b("ln_before", false),
            ln_after: b("ln_after", false),
            residual_before_ln,
            adapter_residual_before_ln: b("adapter_residual_before_ln", false),
            scaling,
            use_gating: b("use_gating", false),
            is_parallel: b("is_parallel", false),
            leave_out: field(v, "leave_out")
                .and_then(|l| l.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .unwrap_or_default(),
            dropout: field(v, "dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
            init_weights: field(v, "init_weights")
                .and_then(|x| x.as_str())
                .unwrap_or("bert")
                .to_string(),
            raw: v.clone(),
        })
    }

    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.non_linearity).ok_or_else(|| {
            Error::msg(format!(
                "bottleneck: unsupported non_linearity `{}`",
                self.non_linearity
            ))
        })
    }

    /// Whether a slot at `place` in layer `layer` gets an adapter.
    pub fn placed(&self, place: BnPlace, layer: Option<usize>) -> bool {
        let on = match place {
            BnPlace::Attention => self.mh_adapter,
            BnPlace::Output => self.output_adapter,
        };
        on && !layer.is_some_and(|l| self.leave_out.contains(&l))
    }

    /// The bottleneck width in `layer`: `int(hidden // rf)` with Python's float floor division.
    pub fn width(&self, hidden: usize, layer: Option<usize>) -> Result<usize> {
        let rf = match &self.reduction_factor {
            Value::Object(m) => layer
                .and_then(|l| m.get(&l.to_string()))
                .or_else(|| m.get("default"))
                .ok_or_else(|| {
                    Error::msg(
                        "reduction_factor map has no entry for this layer and no \"default\"",
                    )
                })?,
            x => x,
        };
        let rf = rf
            .as_f64()
            .ok_or_else(|| Error::msg(format!("reduction_factor {rf} is not a number")))?;
        if rf <= 0.0 {
            return Err(Error::msg("reduction_factor must be positive"));
        }
        Ok((py_floordiv(hidden as f64, rf) as usize).max(1))
    }
}

/// CPython's `float.__floordiv__` (not `floor(a / b)`: `64 // 6.4 == 9`).
pub fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0.0f64.copysign(a / b)
    }
}

/// A reduction factor `rf` with `int(hidden // rf) == size` (for `size=` in recipes).
pub fn factor_for_size(hidden: usize, size: usize) -> f64 {
    let mut rf = hidden as f64 / size as f64;
    for _ in 0..64 {
        if py_floordiv(hidden as f64, rf) as usize == size {
            return rf;
        }
        rf = f64::from_bits(rf.to_bits() - 1);
    }
    rf
}

pub struct Bottleneck {
    pub cfg: BnConfig,
    pub act: Activation,
    pub norm_before: Option<(Param, Param)>,
    pub down_w: Param,
    pub down_b: Param,
    pub up_w: Param,
    pub up_b: Param,
    pub norm_after: Option<(Param, Param)>,
    pub gate: Option<(Param, Param)>,
    pub scaling: Option<Param>,
}

impl Bottleneck {
    /// A new adapter: down-projection kaiming-uniform, up-projection zero (the identity), as
    /// AdapterHub's `mam_adapter` init.
    pub fn init(
        cfg: &BnConfig,
        hidden: usize,
        seed: u64,
        path: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let d = cfg.width(hidden, crate::peft::target::layer_of(path))?;
        let mut rng = crate::peft::lora::rng_for(seed, path);
        let mk = |v: Vec<f32>, shape: &[usize]| -> Result<Param> {
            Param::trainable(
                &Tensor::from_vec(v, shape, &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(device)?,
            )
        };
        let ln = |mk: &MakeParam<'_>| -> Result<(Param, Param)> {
            Ok((
                mk(vec![1.0; hidden], &[hidden])?,
                mk(vec![0.0; hidden], &[hidden])?,
            ))
        };
        let down_w = crate::peft::lora::uniform(&mut rng, d * hidden, 1.0 / (hidden as f32).sqrt());
        let gate_w = crate::peft::lora::normal(&mut rng, hidden, 0.02);
        Ok(Bottleneck {
            act: cfg.activation()?,
            norm_before: if cfg.ln_before { Some(ln(&mk)?) } else { None },
            down_w: mk(down_w, &[d, hidden])?,
            down_b: mk(vec![0.0; d], &[d])?,
            up_w: mk(vec![0.0; hidden * d], &[hidden, d])?,
            up_b: mk(vec![0.0; hidden], &[hidden])?,
            norm_after: if cfg.ln_after { Some(ln(&mk)?) } else { None },
            gate: if cfg.use_gating {
                Some((mk(gate_w, &[1, hidden])?, mk(vec![0.0], &[1])?))
            } else {
                None
            },
            scaling: match cfg.scaling {
                Scaling::Fixed(_) => None,
                Scaling::Learned => Some(mk(vec![1.0], &[1])?),
                Scaling::Channel => Some(mk(vec![1.0; hidden], &[hidden])?),
            },
            cfg: cfg.clone(),
        })
    }

    /// `(suffix, param)` under AdapterHub's names, without the adapter name.
    fn named_params(&self) -> Vec<(&'static str, Param)> {
        let mut v = Vec::new();
        let lin = if self.norm_before.is_some() { 1 } else { 0 };
        if let Some((w, b)) = &self.norm_before {
            v.push(("adapter_norm_before.weight", w.clone()));
            v.push(("adapter_norm_before.bias", b.clone()));
        }
        if lin == 0 {
            v.push(("adapter_down.0.weight", self.down_w.clone()));
            v.push(("adapter_down.0.bias", self.down_b.clone()));
        } else {
            v.push(("adapter_down.1.weight", self.down_w.clone()));
            v.push(("adapter_down.1.bias", self.down_b.clone()));
        }
        v.push(("adapter_up.weight", self.up_w.clone()));
        v.push(("adapter_up.bias", self.up_b.clone()));
        if let Some((w, b)) = &self.norm_after {
            v.push(("adapter_norm_after.weight", w.clone()));
            v.push(("adapter_norm_after.bias", b.clone()));
        }
        if let Some((w, b)) = &self.gate {
            v.push(("gate.weight", w.clone()));
            v.push(("gate.bias", b.clone()));
        }
        if let Some(s) = &self.scaling {
            v.push(("scaling", s.clone()));
        }
        v
    }

    fn layer_norm(p: &(Param, Param), x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &p.0.get(ctx), &p.1.get(ctx), 1e-5)?)
    }

    /// `Adapter.forward`: the core plus its own residual.
    fn core(&self, x: &Tensor, res: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut dn = x.clone();
        if let Some(n) = &self.norm_before {
            dn = Self::layer_norm(n, &dn, ctx)?;
        }
        let dn = self.act.apply(&ops::linear(
            &dn,
            &self.down_w.get(ctx),
            Some(&self.down_b.get(ctx)),
            false,
        )?)?;
        let mut up = ops::linear(&dn, &self.up_w.get(ctx), Some(&self.up_b.get(ctx)), false)?;
        up = match (&self.cfg.scaling, &self.scaling) {
            (Scaling::Fixed(s), _) => {
                if *s == 1.0 {
                    up
                } else {
                    (up * *s)?
                }
            }
            (_, Some(p)) => up.broadcast_mul(&p.get(ctx))?,
            _ => up,
        };
        up = ctx.dropout(&up, self.cfg.dropout)?;
        if let Some((gw, gb)) = &self.gate {
            let g = ops::linear(x, &gw.get(ctx), Some(&gb.get(ctx)), false)?;
            let g = candle_nn::ops::sigmoid(&g)?.mean_keepdim(1)?; // [b, 1, 1], over every position
            up = up.broadcast_mul(&g)?;
        }
        if self.cfg.adapter_residual_before_ln {
            up = (up + res)?;
        }
        if let Some(n) = &self.norm_after {
            up = Self::layer_norm(n, &up, ctx)?;
        }
        if !self.cfg.adapter_residual_before_ln {
            up = (up + res)?;
        }
        Ok(up)
    }

    /// The block output at this location for sub-layer output `f` and residual `r`; `ln` is the
    /// post-LayerNorm of post-norm models (BERT), None for pre-norm ones.
    fn output(&self, f: &Tensor, r: &Tensor, ln: Option<&Norm>, ctx: &Ctx) -> Result<Tensor> {
        // the adapter computes in its own dtype (f32 on a bf16 model), the model's LayerNorm in
        // the model's
        let (mdt, adt) = (f.dtype(), self.down_w.dtype());
        let (f, r) = (&f.to_dtype(adt)?, &r.to_dtype(adt)?);
        let model_ln = |n: &Norm, h: &Tensor| -> Result<Tensor> {
            n.forward(&h.to_dtype(mdt)?, ctx)?
                .to_dtype(adt)
                .map_err(Into::into)
        };
        let c = &self.cfg;
        let post = |h: Tensor| -> Result<Tensor> {
            if !c.original_ln_after {
                return Ok(h);
            }
            let h = (h + r)?;
            match ln {
                Some(n) => model_ln(n, &h),
                None => Ok(h),
            }
        };
        let out = if c.is_parallel {
            let out = (self.core_parallel(r, ctx)? + f)?;
            post(out)?
        } else {
            let mut h = f.clone();
            let mut res = if c.residual_before_ln == Residual::Before {
                Some(h.clone())
            } else {
                None
            };
            if c.original_ln_before {
                h = (h + r)?;
                if let Some(n) = ln {
                    if c.residual_before_ln == Residual::PostAdd {
                        res = Some(h.clone());
                    }
                    h = model_ln(n, &h)?;
                }
            }
            if c.residual_before_ln == Residual::After {
                res = Some(h.clone());
            }
            let res = res.ok_or_else(|| {
                Error::msg("bottleneck: residual_before_ln=\"post_add\" needs original_ln_before and a post-LayerNorm model")
            })?;
            let out = self.core(&h, &res, ctx)?;
            post(out)?
        };
        Ok(out.to_dtype(mdt)?)
    }

    /// `ParallelAdapter`: the core on the un-normalised residual, without its own residual.
    fn core_parallel(&self, r: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.core(r, &r.zeros_like()?, ctx)
    }
}

impl BlockAdapter for Bottleneck {
    fn forward(&self, f: &Tensor, r: &Tensor, ln: Option<&Norm>, ctx: &Ctx) -> Result<Tensor> {
        self.output(f, r, ln, ctx)
    }

    fn params(&self) -> Vec<(String, Param)> {
        self.named_params()
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_floor_division() {
        assert_eq!(py_floordiv(64.0, 4.0), 16.0);
        assert_eq!(py_floordiv(64.0, 3.0), 21.0);
        assert_eq!(py_floordiv(64.0, 0.1), 639.0);
        assert_eq!(py_floordiv(64.0, 6.4), 9.0);
        assert_eq!(py_floordiv(64.0, 2.5), 25.0);
        let rf = factor_for_size(64, 10);
        assert_eq!(py_floordiv(64.0, rf), 10.0);
    }
}
