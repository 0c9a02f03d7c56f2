//! The registry of PEFT methods that act on linear layers through `LinearAdapter`: a method is
//! one file implementing `LinearMethod` plus one line in `METHODS`. Its Lua function
//! (`ftl.<name>`), option checking, `ftl types` stubs, PEFT file reading and writing, merging and
//! `ftl check` come from here.

use crate::error::{Error, Result};
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::Param;
use candle_core::Tensor;
use serde_json::{Map, Value};

/// One option of a method: its PEFT config field name, LuaLS type, default (JSON) and meaning.
#[derive(Clone, Copy)]
pub struct Opt {
    pub key: &'static str,
    /// `integer`, `number`, `boolean`, `string`
    pub ty: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// A method's complete settings: every option of the method, defaults filled in.
pub type Config = Map<String, Value>;

/// What a method is, as data.
pub struct Spec {
    /// the Lua function (`ftl.loha`) and the method's name in messages and manifests
    pub name: &'static str,
    /// PEFT's `peft_type` (`LOHA`)
    pub peft_type: &'static str,
    /// one line for the docs and stubs
    pub doc: &'static str,
    pub options: &'static [Opt],
    /// fields PEFT writes into adapter_config.json besides the options, as a JSON object
    /// (`fan_in_fan_out` there is set to whether the targets store their weights transposed)
    pub config_extras: &'static str,
}

pub trait LinearMethod: Sync {
    fn spec(&self) -> &'static Spec;
    fn name(&self) -> &'static str {
        self.spec().name
    }
    fn peft_type(&self) -> &'static str {
        self.spec().peft_type
    }
    fn doc(&self) -> &'static str {
        self.spec().doc
    }
    fn options(&self) -> &'static [Opt] {
        self.spec().options
    }
    fn config_extras(&self) -> &'static str {
        self.spec().config_extras
    }
    /// PEFT's default `target_modules` for a model type
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>>;
    /// A new adapter on `lin` at `path`, initialised as PEFT does (seeded by `seed` and `path`),
    /// given the adapter's shared tensors.
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>>;
    /// Frozen tensors every layer of the adapter shares (VeRA's projections), made once from the
    /// `(out, in)` of every target; saved in PEFT's file as `base_model.<name>` when
    /// `saves_shared`, else made again the same way when the file is read.
    fn shared(
        &self,
        cfg: &Config,
        shapes: &[(usize, usize)],
        device: &candle_core::Device,
    ) -> Result<Vec<(String, Tensor)>> {
        let _ = (cfg, shapes, device);
        Ok(Vec::new())
    }
    fn saves_shared(&self, cfg: &Config) -> bool {
        let _ = cfg;
        true
    }
    /// Whether PEFT can put this method on GPT-2's `Conv1D` layers (weights stored `[in, out]`):
    /// ftl can, but a file PEFT cannot load deserves a warning.
    fn peft_wraps_conv1d(&self) -> bool {
        true
    }
    /// The learning rate `ftl new` starts a recipe with.
    fn suggested_lr(&self) -> &'static str {
        "1e-3"
    }
    /// Checks settings beyond their types (`r` ≥ 1, …).
    fn check(&self, cfg: &Config) -> Result<()> {
        let _ = cfg;
        Ok(())
    }
}

pub static METHODS: &[&dyn LinearMethod] =
    &[&super::loha::LoHa, &super::lokr::LoKr, &super::vera::Vera];

pub fn by_name(name: &str) -> Option<&'static dyn LinearMethod> {
    METHODS.iter().copied().find(|m| m.name() == name)
}

pub fn by_peft_type(t: &str) -> Option<&'static dyn LinearMethod> {
    METHODS.iter().copied().find(|m| m.peft_type() == t)
}

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "integer" => v.as_i64().is_some() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        // alternatives (`boolean|"lycoris"`): the method's `check` looks closer
        _ => v.is_boolean() || v.is_string() || v.is_number(),
    }
}

/// `given` (option → value) completed with the method's defaults, each value of its option's
/// type; `origin` names where the values came from (`ftl.loha`, an adapter_config.json). Keys
/// the method does not know are the caller's business (a PEFT file has many more).
pub fn config(m: &dyn LinearMethod, given: &Map<String, Value>, origin: &str) -> Result<Config> {
    let mut out = Config::new();
    for o in m.options() {
        let v = match given.get(o.key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => serde_json::from_str(o.default)
                .map_err(|e| Error::msg(format!("{}: default of {}: {e}", m.name(), o.key)))?,
        };
        if !type_ok(&v, o.ty) {
            return Err(Error::msg(format!(
                "{origin}: `{}` must be {} {}, got {v}",
                o.key,
                if o.ty == "integer" { "an" } else { "a" },
                o.ty
            )));
        }
        // integers stay integers in the saved config (PEFT compares `r` as int)
        let v = match (o.ty, v.as_f64()) {
            ("integer", Some(f)) => Value::from(f as i64),
            _ => v,
        };
        out.insert(o.key.to_string(), v);
    }
    m.check(&out)
        .map_err(|e| Error::msg(format!("{origin}: {e}")))?;
    Ok(out)
}

/// The options LoHa and LoKr share (PEFT's `LycorisConfig`).
pub const LYCORIS: [Opt; 3] = [
    Opt {
        key: "alpha",
        ty: "number",
        default: "8",
        doc: "scale α (ΔW is multiplied by α/r)",
    },
    Opt {
        key: "rank_dropout",
        ty: "number",
        default: "0.0",
        doc: "probability of dropping each output row of ΔW in training",
    },
    Opt {
        key: "module_dropout",
        ty: "number",
        default: "0.0",
        doc: "probability of skipping the whole adapter in a training pass",
    },
];

/// `r` at least 1 and each of `probabilities` in [0, 1).
pub fn check_rank_and(cfg: &Config, probabilities: &[&str]) -> Result<()> {
    if int(cfg, "r") < 1 {
        return Err(Error::msg("r must be at least 1"));
    }
    for k in probabilities {
        let p = num(cfg, k);
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!("{k} must be in [0, 1), got {p}")));
        }
    }
    Ok(())
}

/// `cfg[key]` as a number (every numeric option is stored as JSON).
pub fn num(cfg: &Config, key: &str) -> f64 {
    cfg.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0)
}

pub fn int(cfg: &Config, key: &str) -> i64 {
    cfg.get(key).and_then(|v| v.as_i64()).unwrap_or(0)
}

pub fn flag(cfg: &Config, key: &str) -> bool {
    cfg.get(key).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// PEFT's default `target_modules` of the LyCORIS methods (LoHa, LoKr) for the model types ftl
/// loads: attention's query and value projections.
pub fn attention_qv(model_type: &str) -> Option<Vec<&'static str>> {
    super::default_lora_targets(model_type)
}

/// Kaiming-uniform with `a = √5` (PyTorch's `nn.Linear` init): U(±1/√fan_in), fan_in the number
/// of columns of a `[rows, cols]` matrix.
pub fn kaiming(rng: &mut impl rand::Rng, rows: usize, cols: usize) -> Vec<f32> {
    super::lora::uniform(rng, rows * cols, 1.0 / (cols as f32).sqrt())
}
