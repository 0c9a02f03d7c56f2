//! The registry of PEFT methods: a method acting on linear layers (through `LinearAdapter`) is one
//! file implementing `LinearMethod` plus one line in `METHODS`; one acting on the model's input
//! (prompt learning, through `InputAdapter`) implements `InputMethod`, listed in `INPUT_METHODS`;
//! one acting on a block's output (bottleneck adapters, through `BlockAdapter`) implements
//! `BlockMethod`, listed in `BLOCK_METHODS`.
//! Its Lua function (`ftl.<name>`), option checking, `ftl types` stubs, PEFT file reading and
//! writing, merging and `ftl check` come from here.

use crate::error::{Error, Result};
use crate::model::layers::{BlockAdapter, Embedding, EmbeddingAdapter, Linear, LinearAdapter};
use crate::model::{BnPlace, InputAdapter, Model, Param};
use candle_core::Tensor;
use serde_json::{Map, Value};

/// One option of a method: its PEFT config field name, LuaLS type, default (JSON) and meaning.
#[derive(Clone, Copy)]
pub struct Opt {
    pub key: &'static str,
    /// `integer`, `number`, `boolean`, `string`, or `modules`: some of the method's targets
    /// (a recipe pattern in Lua; in PEFT's files a full-match regex or names a path ends with,
    /// saved as the list of paths; when absent, the method's `default_modules`)
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
    /// `(recipe name, PEFT name)` of the options the recipe API names otherwise
    /// (`feedforward` for IA3's `feedforward_modules`)
    pub lua_names: &'static [(&'static str, &'static str)],
    /// `(PEFT name, recipe string, JSON value)`: strings a recipe passes for an option that
    /// stand for another value in PEFT's config (LoRA's `init = "kaiming"` is `true`)
    pub lua_values: &'static [(&'static str, &'static str, &'static str)],
}

impl Spec {
    /// The name a recipe passes option `key` under.
    pub fn lua_name(&self, key: &'static str) -> &'static str {
        self.lua_names
            .iter()
            .find(|(_, k)| *k == key)
            .map_or(key, |(l, _)| l)
    }

    /// The JSON a recipe's string `v` for option `key` stands for.
    pub fn lua_value(&self, key: &str, v: &str) -> Option<Value> {
        self.lua_values
            .iter()
            .find(|(k, l, _)| *k == key && *l == v)
            .and_then(|(_, _, j)| serde_json::from_str(j).ok())
    }

    /// The option PEFT's `alpha_pattern` varies (`alpha`, LoRA's `lora_alpha`), if any.
    pub fn alpha_key(&self) -> Option<&'static str> {
        self.options
            .iter()
            .map(|o| o.key)
            .find(|k| *k == "alpha" || *k == "lora_alpha")
    }

    pub fn has(&self, key: &str) -> bool {
        self.options.iter().any(|o| o.key == key)
    }
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
    /// The method's name for these settings in messages and manifests (`dora` for LoRA with
    /// `use_dora`).
    fn kind(&self, cfg: &Config) -> &'static str {
        let _ = cfg;
        self.name()
    }
    /// PEFT's default `target_modules` for a model type
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>>;
    /// PEFT's default for a `modules` option (IA3's `feedforward_modules`) for a model type:
    /// names a module path ends with.
    fn default_modules(&self, key: &str, model_type: &str) -> Option<Vec<&'static str>> {
        let _ = (key, model_type);
        None
    }
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
    /// Whether the method also adapts embeddings (`attach_embedding`).
    fn targets_embeddings(&self) -> bool {
        false
    }
    /// A new adapter on embedding `emb` at `path` (methods with `targets_embeddings`).
    fn attach_embedding(
        &self,
        cfg: &Config,
        emb: &Embedding,
        path: &str,
        seed: u64,
    ) -> Result<Box<dyn EmbeddingAdapter>> {
        let _ = (cfg, emb, seed);
        Err(Error::msg(format!(
            "{path}: {} needs a Linear module, this is an embedding",
            self.name()
        )))
    }
    /// The key (without `base_model.model.`) PEFT's file holds parameter `pname` under.
    fn saved_name(&self, pname: &str) -> String {
        pname.to_string()
    }
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

pub static METHODS: &[&dyn LinearMethod] = &[
    &super::lora::LoraMethod,
    &super::ia3::Ia3Method,
    &super::loha::LoHa,
    &super::lokr::LoKr,
    &super::vera::Vera,
];

/// A method acting on the model's input as a whole: PEFT's prompt learning, whose file holds one
/// `prompt_embeddings` tensor (read and written by `peft::io` for every such method).
pub trait InputMethod: Sync {
    fn spec(&self) -> &'static Spec;
    /// Checks settings beyond their types (`num_virtual_tokens` ≥ 1, …).
    fn check(&self, cfg: &Config) -> Result<()> {
        let _ = cfg;
        Ok(())
    }
    /// A new adapter for `m` (its dimensions, word embeddings, tokenizer, seed).
    fn attach(&self, cfg: &Config, m: &Model) -> Result<Box<dyn InputAdapter>>;
    /// The method's fields of `adapter_config.json` for these settings on `m`.
    fn peft_config(&self, cfg: &Config, m: &Model) -> Value;
    /// The settings of a PEFT file's config (`prompt_embeddings` holds what the adapter needs at
    /// inference, so a reparametrisation is not read back).
    fn settings_from_peft(&self, peft: &Map<String, Value>) -> Map<String, Value>;
    /// The learning rate `ftl new` starts a recipe with.
    fn suggested_lr(&self) -> &'static str {
        "1e-2"
    }
}

pub static INPUT_METHODS: &[&dyn InputMethod] =
    &[&super::prefix::PrefixTuning, &super::prompt::PromptTuning];

/// A method acting on a block's output, in the slots the model has after attention and after
/// the feed-forward block (AdapterHub's bottleneck adapters). Its file format is its own: its
/// `options` are the recipe's, its settings (`Config`) what its file's config holds.
pub trait BlockMethod: Sync {
    fn spec(&self) -> &'static Spec;
    /// The complete settings from a recipe's options (`given`, defaults filled in, and `layers`:
    /// the layer indices asked for, if any), for a model of `hidden` width with `layers` layers.
    fn config_from_recipe(&self, given: &Config, hidden: usize, layers: usize) -> Result<Config>;
    /// A new adapter in the slot at `place` of `path` (`layer`), or None where the settings put
    /// none.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &self,
        cfg: &Config,
        hidden: usize,
        place: BnPlace,
        layer: Option<usize>,
        path: &str,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<Option<Box<dyn BlockAdapter>>>;
    /// Whether an adapter directory's `adapter_config.json` is in this method's format.
    fn reads(&self, file_config: &Value) -> bool;
    /// Writes adapter `name` of `m` to `dir` in the method's format.
    fn save(&self, m: &mut Model, dir: &std::path::Path, name: &str) -> Result<()>;
    /// Reads an adapter directory (`file_config` its parsed config) into `m`; returns its name.
    fn load(
        &self,
        m: &mut Model,
        dir: &std::path::Path,
        file_config: &Value,
        o: &super::io::LoadAdapterOpts,
    ) -> Result<String>;
    fn suggested_lr(&self) -> &'static str {
        "1e-3"
    }
}

pub static BLOCK_METHODS: &[&dyn BlockMethod] = &[&super::bottleneck::BottleneckMethod];

/// A registered method of any kind.
#[derive(Clone, Copy)]
pub enum Entry {
    Linear(&'static dyn LinearMethod),
    Input(&'static dyn InputMethod),
    Block(&'static dyn BlockMethod),
}

impl Entry {
    pub fn spec(&self) -> &'static Spec {
        match self {
            Entry::Linear(m) => m.spec(),
            Entry::Input(m) => m.spec(),
            Entry::Block(m) => m.spec(),
        }
    }
    pub fn name(&self) -> &'static str {
        self.spec().name
    }
    pub fn suggested_lr(&self) -> &'static str {
        match self {
            Entry::Linear(m) => m.suggested_lr(),
            Entry::Input(m) => m.suggested_lr(),
            Entry::Block(m) => m.suggested_lr(),
        }
    }
}

/// Every registered method: linear ones, input ones, block ones.
pub fn entries() -> impl Iterator<Item = Entry> {
    METHODS
        .iter()
        .map(|m| Entry::Linear(*m))
        .chain(INPUT_METHODS.iter().map(|m| Entry::Input(*m)))
        .chain(BLOCK_METHODS.iter().map(|m| Entry::Block(*m)))
}

pub fn block_by_name(name: &str) -> Option<&'static dyn BlockMethod> {
    BLOCK_METHODS
        .iter()
        .copied()
        .find(|m| m.spec().name == name)
}

pub fn entry(name: &str) -> Option<Entry> {
    entries().find(|e| e.name() == name)
}

pub fn entry_by_peft_type(t: &str) -> Option<Entry> {
    entries().find(|e| !t.is_empty() && e.spec().peft_type == t)
}

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
        "modules" => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string())),
        // alternatives (`boolean|"lycoris"`): the method's `check` looks closer
        _ => v.is_boolean() || v.is_string() || v.is_number(),
    }
}

/// `given` (option → value) completed with the method's defaults, each value of its option's
/// type; `origin` names where the values came from (`ftl.loha`, an adapter_config.json). Keys
/// the method does not know are the caller's business (a PEFT file has many more).
pub fn config(m: &dyn LinearMethod, given: &Map<String, Value>, origin: &str) -> Result<Config> {
    let out = settings(m.spec(), given, origin)?;
    m.check(&out)
        .map_err(|e| Error::msg(format!("{origin}: {e}")))?;
    Ok(out)
}

/// A block method's complete settings from a recipe's options (`origin` names the caller).
pub fn block_config(
    m: &dyn BlockMethod,
    given: &Map<String, Value>,
    hidden: usize,
    layers: usize,
    origin: &str,
) -> Result<Config> {
    let mut out = settings(m.spec(), given, origin)?;
    // the targeting option block methods take
    if let Some(l) = given.get("layers") {
        out.insert("layers".into(), l.clone());
    }
    m.config_from_recipe(&out, hidden, layers)
        .map_err(|e| Error::msg(format!("{origin}: {e}")))
}

/// `config` for an input method.
pub fn input_config(
    m: &dyn InputMethod,
    given: &Map<String, Value>,
    origin: &str,
) -> Result<Config> {
    let out = settings(m.spec(), given, origin)?;
    m.check(&out)
        .map_err(|e| Error::msg(format!("{origin}: {e}")))?;
    Ok(out)
}

/// `given` completed with the defaults of `spec`'s options and checked against their types (an
/// option whose default is `null` may stay absent).
fn settings(spec: &Spec, given: &Map<String, Value>, origin: &str) -> Result<Config> {
    let mut out = Config::new();
    for o in spec.options {
        let v = match given.get(o.key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => serde_json::from_str(o.default)
                .map_err(|e| Error::msg(format!("{}: default of {}: {e}", spec.name, o.key)))?,
        };
        if v.is_null() {
            out.insert(o.key.to_string(), v);
            continue;
        }
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
    Ok(out)
}

/// The targets a PEFT `modules` value picks (a string: a full-match regex; a list: names a path
/// ends with, without a dot boundary, as PEFT's `endswith`), as a JSON list of paths.
pub fn pick(v: &Value, targets: &[String]) -> Result<Value> {
    let picked: Vec<&String> = match v {
        Value::String(s) => {
            let re = super::target::Pattern::peft_regex(s)?;
            targets.iter().filter(|p| re.matches(p)).collect()
        }
        Value::Array(a) => {
            let names: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
            targets
                .iter()
                .filter(|p| names.iter().any(|n| p.ends_with(n)))
                .collect()
        }
        other => {
            return Err(Error::msg(format!(
                "expected a regex or a list of names, got {other}"
            )))
        }
    };
    Ok(Value::from(picked.into_iter().cloned().collect::<Vec<_>>()))
}

/// `given` with every `modules` option resolved against `targets`: a PEFT value (`pick`) as
/// given, or when absent the method's default for `model_type`; `origin` names where `given`
/// came from.
pub fn pick_modules(
    m: &dyn LinearMethod,
    given: &Map<String, Value>,
    targets: &[String],
    model_type: &str,
    origin: &str,
) -> Result<Map<String, Value>> {
    let mut out = given.clone();
    for o in m.options().iter().filter(|o| o.ty == "modules") {
        let v = match given.get(o.key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => match m.default_modules(o.key, model_type) {
                Some(d) => Value::from(d),
                None => {
                    return Err(Error::msg(format!(
                        "{origin}: no default `{}` for model type `{model_type}`; give it",
                        m.spec().lua_name(o.key)
                    )))
                }
            },
        };
        let picked =
            pick(&v, targets).map_err(|e| Error::msg(format!("{origin}: `{}`: {e}", o.key)))?;
        out.insert(o.key.to_string(), picked);
    }
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
    super::lora::LoraMethod.default_targets(model_type)
}

/// Kaiming-uniform with `a = √5` (PyTorch's `nn.Linear` init): U(±1/√fan_in), fan_in the number
/// of columns of a `[rows, cols]` matrix.
pub fn kaiming(rng: &mut impl rand::Rng, rows: usize, cols: usize) -> Vec<f32> {
    super::lora::uniform(rng, rows * cols, 1.0 / (cols as f32).sqrt())
}
