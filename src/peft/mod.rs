//! PEFT methods attached to a loaded model by module path, named adapters and their active set,
//! freezing, merging, and parameter naming (PEFT's, with the adapter name removed).

pub mod adapterhub;
pub mod bottleneck;
pub mod fold;
pub mod ia3;
pub mod io;
pub mod loha;
pub mod lokr;
pub mod lora;
pub mod prefix;
pub mod prompt;
pub mod registry;
pub mod svd;
pub mod target;
pub mod vera;

use crate::error::{Error, Result};
use crate::model::{Model, ModuleMut, Param};
use std::collections::{BTreeSet, HashSet};
use target::Selector;

/// An attached adapter's method: a method of the registry (`registry::entries`), by name, with
/// its complete settings and those of the modules that differ (PEFT's `rank_pattern` /
/// `alpha_pattern`).
#[derive(Clone, Debug)]
pub struct Method {
    pub name: &'static str,
    pub config: registry::Config,
    pub overrides: Vec<(String, registry::Config)>,
}

impl Method {
    pub fn new(name: &'static str, config: &registry::Config) -> Method {
        Method {
            name,
            config: config.clone(),
            overrides: Vec::new(),
        }
    }

    pub fn kind(&self) -> &'static str {
        registry::by_name(self.name).map_or(self.name, |m| m.kind(&self.config))
    }

    /// Whether it folds into the base weights (the linear methods).
    pub fn mergeable(&self) -> bool {
        registry::by_name(self.name).is_some()
    }

    /// Its resolved settings in one line, for manifests: a registry method's config as PEFT
    /// names it (`{"r":8,"lora_alpha":16,…}`), with the modules whose settings differ.
    pub fn settings(&self) -> String {
        let mut s = serde_json::Value::Object(self.config.clone()).to_string();
        for (p, o) in &self.overrides {
            s.push_str(&format!(" {p}: {}", serde_json::Value::Object(o.clone())));
        }
        s
    }

    /// Whether it acts on the model's input (prompt learning: PEFT keys its tensors differently).
    pub fn is_input(&self) -> bool {
        matches!(self.entry(), Some(registry::Entry::Input(_)))
    }

    /// Whether it acts on block outputs (bottleneck adapters: saved in their own format).
    pub fn is_block(&self) -> bool {
        matches!(self.entry(), Some(registry::Entry::Block(_)))
    }

    pub fn entry(&self) -> Option<registry::Entry> {
        registry::entry(self.name)
    }
}

/// A named adapter attached to a model.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    pub method: Method,
    /// full module paths it was injected into
    pub targets: Vec<String>,
    /// module paths trained in full alongside (PEFT's `modules_to_save`)
    pub modules_to_save: Vec<String>,
    /// PEFT's `ensure_weight_tying`: the modules of a tied weight share one `modules_to_save` copy
    pub ensure_weight_tying: bool,
    /// the `adapter_config.json` it was loaded from, if any
    pub loaded_config: Option<serde_json::Value>,
}

/// What PEFT keeps with a model (in `Model::ext`): the adapters attached, in order, and the
/// tensors each one's layers share.
#[derive(Default)]
pub struct Attached {
    pub adapters: Vec<AdapterInfo>,
    /// per adapter, tensors its layers share (VeRA's projections), by PEFT's name
    pub shared: Vec<(String, Vec<(String, Param)>)>,
}

/// Which leaf modules a listing wants.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Linear,
    Embedding,
    /// Linear or Embedding (what LoRA can target)
    Injectable,
    Any,
}

fn kind_of(m: &ModuleMut<'_>) -> &'static str {
    match m {
        ModuleMut::Linear(_) => "linear",
        ModuleMut::Embedding(_) => "embedding",
        ModuleMut::Norm(_) => "norm",
        ModuleMut::Bottleneck(..) => "adapters",
    }
}

impl Model {
    /// Leaf module paths of a kind (bottleneck slots excluded).
    pub fn module_paths(&mut self, kind: Kind) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |p, m| {
            let k = kind_of(&m);
            let ok = match kind {
                Kind::Linear => k == "linear",
                Kind::Embedding => k == "embedding",
                Kind::Injectable => k == "linear" || k == "embedding",
                Kind::Any => k != "adapters",
            };
            if ok {
                out.push(p.to_string());
            }
        });
        out
    }

    /// Every module path, containers included (`model.layers.0`, `model.layers.0.self_attn`),
    /// in model order.
    /// PEFT's `"all-linear"`: every linear layer but the output head, narrowed by `sel`'s
    /// `layers` and `exclude`.
    pub fn all_linear(&mut self, sel: &Selector) -> Vec<String> {
        let heads = self.arch.head_modules();
        self.module_paths(Kind::Linear)
            .into_iter()
            .filter(|p| !heads.contains(p) && sel.matches_filters(p))
            .collect()
    }

    pub fn all_module_paths(&mut self) -> Vec<String> {
        let leaves = self.module_paths(Kind::Any);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for leaf in leaves {
            let segs: Vec<&str> = leaf.split('.').collect();
            for i in 1..=segs.len() {
                let p = segs[..i].join(".");
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Every base parameter handle with its module path and HF suffix, in model order; a tied
    /// weight under each module that uses it.
    pub fn visit_handles(&mut self, f: &mut dyn FnMut(&str, &'static str, &mut Param)) {
        self.visit(&mut |p, m| match m {
            ModuleMut::Linear(l) => {
                f(p, "weight", &mut l.weight);
                if let Some(b) = &mut l.bias {
                    f(p, "bias", b);
                }
            }
            ModuleMut::Embedding(e) => f(p, "weight", &mut e.weight),
            ModuleMut::Norm(n) => {
                f(p, "weight", &mut n.weight);
                if let Some(b) = &mut n.bias {
                    f(p, "bias", b);
                }
            }
            ModuleMut::Bottleneck(..) => {}
        });
    }

    /// `(module path, suffix, handle)` of every base parameter handle (see `visit_handles`).
    pub fn handles(&mut self) -> Vec<(String, &'static str, Param)> {
        let mut out = Vec::new();
        self.visit_handles(&mut |p, s, h| out.push((p.to_string(), s, h.clone())));
        out
    }

    /// Base parameters under their HF names; a tied weight once, under its first (embedding) name.
    pub fn base_params(&mut self) -> Vec<(String, Param)> {
        let mut out: Vec<(String, Param)> = Vec::new();
        for (p, suffix, param) in self.handles() {
            if !out.iter().any(|(_, q)| q.same(&param)) {
                out.push((format!("{p}.{suffix}"), param));
            }
        }
        out
    }

    /// Those of `paths` whose weight another module uses too (a tied `lm_head` / `embed_tokens`).
    pub fn tied_modules(&mut self, paths: &[String]) -> Vec<String> {
        let users = self.weight_users();
        let mut out = Vec::new();
        for (p, _, h) in self.handles() {
            if paths.contains(&p) && users[&h.key()] > 1 && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// How many module handles use each base weight (by `Param::key`): more than one is a tied
    /// weight. The one rule for tying that targeting, saving and folding share.
    pub fn weight_users(&mut self) -> std::collections::HashMap<usize, usize> {
        let mut users = std::collections::HashMap::new();
        for (_, _, h) in self.handles() {
            *users.entry(h.key()).or_default() += 1;
        }
        users
    }

    /// LoRA on a tied weight with `ensure_weight_tying` (PEFT then ties the head's LoRA to the
    /// embedding's, transposed) is not something ftl does: an error that says what to do instead.
    pub fn check_weight_tying_targets(&mut self, paths: &[String]) -> Result<()> {
        let tied = self.tied_modules(paths);
        if tied.is_empty() {
            return Ok(());
        }
        Err(Error::msg(format!(
            "ensure_weight_tying with LoRA on the tied {} is not supported (PEFT would tie the \
             head's LoRA to the embedding's); without ensure_weight_tying each targeted module gets \
             its own LoRA on the shared weight, or train the embedding in full with \
             modules_to_save",
            tied.join(", ")
        )))
    }

    /// The module paths that use each parameter (by `Param::key`, copies included); empty for
    /// prompt-learning parameters, which no module holds.
    pub fn param_users(&mut self, params: &[(String, Param)]) -> Vec<Vec<String>> {
        use std::collections::HashMap;
        let mut uses: HashMap<usize, Vec<String>> = HashMap::new();
        self.visit(&mut |p, m| {
            let mut ps: Vec<Param> = Vec::new();
            match m {
                ModuleMut::Linear(l) => {
                    ps.extend(l.params().into_iter().map(|x| x.1));
                    for (_, a) in &l.adapters {
                        ps.extend(a.params().into_iter().map(|x| x.1));
                    }
                }
                ModuleMut::Embedding(e) => {
                    ps.extend(e.params().into_iter().map(|x| x.1));
                    for (_, a) in &e.adapters {
                        ps.extend(a.params().into_iter().map(|x| x.1));
                    }
                }
                ModuleMut::Norm(n) => ps.extend(n.params().into_iter().map(|x| x.1)),
                ModuleMut::Bottleneck(slots, _) => {
                    for (_, b) in slots.iter() {
                        ps.extend(b.params().into_iter().map(|x| x.1));
                    }
                }
            }
            let copies: Vec<Param> = ps
                .iter()
                .flat_map(|q| q.copy_names().into_iter().filter_map(|n| q.copy(&n)))
                .collect();
            for q in ps.iter().chain(&copies) {
                uses.entry(q.key()).or_default().push(p.to_string());
            }
        });
        params
            .iter()
            .map(|(_, p)| uses.get(&p.key()).cloned().unwrap_or_default())
            .collect()
    }

    /// Whether each parameter lives inside exactly one layer (`model.layers.N…`, by the modules
    /// that use it, not by the numbers in its own name): its whole gradient then comes from that
    /// layer's segment of a training pass. Prompt-learning parameters and weights used outside
    /// the layers (embeddings, tied heads, prefix projections) get theirs from several segments.
    pub fn in_one_layer(&mut self, params: &[(String, Param)]) -> Vec<bool> {
        self.param_users(params)
            .iter()
            .map(|users| {
                let ls: Vec<Option<usize>> = users.iter().map(|u| target::layer_of(u)).collect();
                !ls.is_empty() && ls[0].is_some() && ls.iter().all(|l| *l == ls[0])
            })
            .collect()
    }

    /// An adapter's parameters under PEFT's parameter names without the adapter name
    /// (`…q_proj.lora_A.weight`, `…k_proj.ia3_l`, `lm_head.modules_to_save.weight`,
    /// `prompt_encoder.embedding.weight`).
    pub fn adapter_params(&mut self, name: &str) -> Vec<(String, Param)> {
        let mut out = Vec::new();
        self.visit(&mut |p, m| match m {
            ModuleMut::Linear(l) => {
                for (n, a) in &l.adapters {
                    if n == name {
                        out.extend(a.params().into_iter().map(|(s, q)| (format!("{p}.{s}"), q)));
                    }
                }
            }
            ModuleMut::Embedding(e) => {
                for (n, a) in &e.adapters {
                    if n == name {
                        out.extend(a.params().into_iter().map(|(s, q)| (format!("{p}.{s}"), q)));
                    }
                }
            }
            ModuleMut::Bottleneck(slots, _) => {
                for (n, a) in slots.iter() {
                    if n == name {
                        out.extend(a.params().into_iter().map(|(s, q)| (format!("{p}.{s}"), q)));
                    }
                }
            }
            ModuleMut::Norm(_) => {}
        });
        out.extend(self.shared_tensors(name).iter().cloned());
        for (n, pl) in &self.prompts {
            if n == name {
                out.extend(pl.params());
            }
        }
        // modules_to_save copies: `<module>.modules_to_save.<param>`, a shared one once
        let mods: Vec<String> = self
            .adapters()
            .iter()
            .filter(|a| a.name == name)
            .flat_map(|a| a.modules_to_save.clone())
            .collect();
        let mut seen: Vec<Param> = Vec::new();
        for (path, suffix, h) in self.handles() {
            let Some(v) = h.copy(name) else { continue };
            if seen.iter().any(|q| q.same(&v)) {
                continue;
            }
            seen.push(v.clone());
            let pname = format!("{path}.{suffix}");
            let module = mods
                .iter()
                .filter(|m| pname.starts_with(&format!("{m}.")))
                .max_by_key(|m| m.len())
                .cloned()
                .unwrap_or(path);
            let rest = &pname[module.len() + 1..];
            out.push((format!("{module}.modules_to_save.{rest}"), v));
        }
        out
    }

    /// The adapters attached, in the order they were.
    pub fn adapters(&self) -> &[AdapterInfo] {
        self.ext.get::<Attached>().map_or(&[], |a| &a.adapters)
    }

    pub fn adapters_mut(&mut self) -> &mut Vec<AdapterInfo> {
        &mut self.ext.get_mut::<Attached>().adapters
    }

    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut AdapterInfo> {
        self.adapters_mut().iter_mut().find(|a| a.name == name)
    }

    /// The tensors adapter `name`'s layers share, by PEFT's names (`base_model.vera_A`).
    pub fn shared_tensors(&self, name: &str) -> &[(String, Param)] {
        self.ext
            .get::<Attached>()
            .and_then(|a| a.shared.iter().find(|(n, _)| n == name))
            .map_or(&[], |(_, sh)| sh)
    }

    pub fn adapter(&self, name: &str) -> Option<&AdapterInfo> {
        self.adapters().iter().find(|a| a.name == name)
    }

    /// A free adapter name: `default`, else the method's name, else `name_2`, `name_3`, ….
    pub fn fresh_name(&self, method: &str) -> String {
        for base in ["default", method] {
            if self.adapter(base).is_none() {
                return base.to_string();
            }
        }
        (2..)
            .map(|i| format!("{method}_{i}"))
            .find(|n| self.adapter(n).is_none())
            .unwrap()
    }

    pub(crate) fn check_new_name(&self, name: &str) -> Result<()> {
        if self.adapter(name).is_some() {
            return Err(Error::msg(format!(
                "an adapter named `{name}` is already attached (adapters: {}); pass another name",
                self.adapter_names().join(", ")
            )));
        }
        Ok(())
    }

    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters().iter().map(|a| a.name.clone()).collect()
    }

    fn register(&mut self, info: AdapterInfo) {
        if !self.active.contains(&info.name) {
            self.active.push(info.name.clone());
        }
        self.adapters_mut().push(info);
    }

    /// Injects a registry method's adapter (`config` complete, see `registry::config`) into
    /// every module in `paths` (Linear, or Embedding where the method adapts those).
    pub fn attach_registered(
        &mut self,
        name: &str,
        method: &'static dyn registry::LinearMethod,
        paths: &[String],
        config: &registry::Config,
    ) -> Result<()> {
        self.attach_registered_with(name, method, paths, config, &[])
    }

    /// `attach_registered`, with other settings for some modules (`(path, complete config)`).
    pub fn attach_registered_with(
        &mut self,
        name: &str,
        method: &'static dyn registry::LinearMethod,
        paths: &[String],
        config: &registry::Config,
        overrides: &[(String, registry::Config)],
    ) -> Result<()> {
        self.check_new_name(name)?;
        let want: BTreeSet<&str> = paths.iter().map(|s| s.as_str()).collect();
        let seed = self.seed;
        let mut shapes = Vec::new();
        let mut conv1d = Vec::new();
        self.visit(&mut |p, m| {
            if let (true, ModuleMut::Linear(l)) = (want.contains(p), m) {
                shapes.push((l.out_features(), l.in_features()));
                if l.transposed {
                    conv1d.push(p.to_string());
                }
            }
        });
        if !conv1d.is_empty() && !method.peft_wraps_conv1d() {
            tracing::warn!(
                "{}: {} of the targets ({}, …) are GPT-2 Conv1D layers, which PEFT's {} does not \
                 wrap: ftl trains, saves and merges them, but PeftModel.from_pretrained will \
                 refuse the saved adapter",
                method.name(),
                conv1d.len(),
                conv1d[0],
                method.peft_type()
            );
        }
        let shared: Vec<(String, Param)> = method
            .shared(config, &shapes, &self.device)?
            .into_iter()
            .map(|(n, t)| (n, Param::frozen(t)))
            .collect();
        let mut err = None;
        let mut done = BTreeSet::new();
        self.visit(&mut |p, m| {
            if err.is_some() || !want.contains(p) {
                return;
            }
            let cfg = overrides
                .iter()
                .find(|(o, _)| o == p)
                .map_or(config, |(_, c)| c);
            let r = match m {
                ModuleMut::Linear(l) => method
                    .attach(cfg, l, p, seed, &shared)
                    .map(|a| l.adapters.push((name.to_string(), a))),
                ModuleMut::Embedding(e) if method.targets_embeddings() => method
                    .attach_embedding(cfg, e, p, seed)
                    .map(|a| e.adapters.push((name.to_string(), a))),
                other => Err(Error::msg(format!(
                    "{p}: {} needs a Linear{} module, this is a {}",
                    method.name(),
                    if method.targets_embeddings() {
                        " or Embedding"
                    } else {
                        ""
                    },
                    kind_of(&other)
                ))),
            };
            match r {
                Ok(()) => {
                    done.insert(p.to_string());
                }
                Err(e) => err = Some(e),
            }
        });
        if let Some(e) = err {
            self.detach(name);
            return Err(e);
        }
        missing_paths(&want, &done)?;
        if !shared.is_empty() {
            self.ext
                .get_mut::<Attached>()
                .shared
                .push((name.to_string(), shared));
        }
        self.register(AdapterInfo {
            name: name.to_string(),
            method: Method {
                name: method.name(),
                config: config.clone(),
                overrides: overrides.to_vec(),
            },
            targets: paths.to_vec(),
            modules_to_save: Vec::new(),
            ensure_weight_tying: false,
            loaded_config: None,
        });
        Ok(())
    }

    /// An input method's adapter (`config` complete, see `registry::input_config`).
    pub fn attach_input(
        &mut self,
        name: &str,
        method: &'static dyn registry::InputMethod,
        config: &registry::Config,
    ) -> Result<()> {
        self.check_new_name(name)?;
        let a = method
            .attach(config, self)
            .map_err(|e| Error::msg(format!("{}: {e}", method.spec().name)))?;
        self.prompts.push((name.to_string(), a));
        self.register(AdapterInfo {
            name: name.to_string(),
            method: Method::new(method.spec().name, config),
            targets: Vec::new(),
            modules_to_save: Vec::new(),
            ensure_weight_tying: false,
            loaded_config: None,
        });
        Ok(())
    }

    /// A block method's adapters (`config` complete, see `registry::block_config`) in every
    /// block slot its settings place them in.
    pub fn attach_block(
        &mut self,
        name: &str,
        method: &'static dyn registry::BlockMethod,
        config: &registry::Config,
    ) -> Result<()> {
        self.check_new_name(name)?;
        let hidden = self.arch.dims().hidden;
        let (seed, device) = (self.seed, self.device.clone());
        let mut err = None;
        let mut targets = Vec::new();
        self.visit(&mut |p, m| {
            if let ModuleMut::Bottleneck(slots, place) = m {
                if err.is_some() {
                    return;
                }
                match method.attach(config, hidden, place, target::layer_of(p), p, seed, &device) {
                    Ok(Some(b)) => {
                        slots.push((name.to_string(), b));
                        targets.push(p.to_string());
                    }
                    Ok(None) => {}
                    Err(e) => err = Some(e),
                }
            }
        });
        if let Some(e) = err {
            self.detach(name);
            return Err(e);
        }
        if targets.is_empty() {
            return Err(Error::msg(format!(
                "adapter `{name}`: its configuration places it in no layer"
            )));
        }
        self.register(AdapterInfo {
            name: name.to_string(),
            method: Method::new(method.spec().name, config),
            targets,
            modules_to_save: Vec::new(),
            ensure_weight_tying: false,
            loaded_config: None,
        });
        Ok(())
    }

    /// Trains the modules at `paths` in full for adapter `name` (PEFT's `modules_to_save`): each
    /// module gets its own copy, also the one module of a tied weight.
    pub fn add_modules_to_save(&mut self, name: &str, paths: &[String]) -> Result<()> {
        self.add_modules_to_save_tied(name, paths, false)
    }

    /// `add_modules_to_save`; with `tie` (PEFT's `ensure_weight_tying`) every module of a tied
    /// weight uses the one copy, and a listed module that only borrows another module's weight
    /// (a tied `lm_head`) is recorded under that module (`model.embed_tokens`), as PEFT rewrites it.
    pub fn add_modules_to_save_tied(
        &mut self,
        name: &str,
        paths: &[String],
        tie: bool,
    ) -> Result<()> {
        // PEFT ties only when a listed module is named as an embedding (`EMBEDDING_LAYER_NAMES`):
        // GPT-2's `transformer.wte` gets its own copy even with ensure_weight_tying
        let tie = tie
            && paths
                .iter()
                .any(|m| matches!(m.rsplit('.').next(), Some("embed_tokens" | "lm_head")));
        let under = |p: &str| {
            paths
                .iter()
                .find(|m| p == m.as_str() || p.starts_with(&format!("{m}.")))
                .cloned()
        };
        let handles = self.handles();
        let chosen: HashSet<usize> = handles
            .iter()
            .filter(|(p, _, _)| under(p).is_some())
            .map(|(_, _, h)| h.key())
            .collect();
        // the first module (in model order) that uses each weight
        let mut owner: std::collections::HashMap<usize, String> = Default::default();
        for (p, _, h) in &handles {
            owner.entry(h.key()).or_insert_with(|| p.clone());
        }
        let mut found: BTreeSet<String> = BTreeSet::new();
        let mut recorded: Vec<String> = Vec::new();
        let mut made: std::collections::HashMap<usize, Param> = Default::default();
        let mut err = None;
        self.visit_handles(&mut |p, _, h| {
            let listed = under(p);
            if listed.is_none() && !(tie && chosen.contains(&h.key())) {
                return;
            }
            if let Some(m) = &listed {
                found.insert(m.clone());
                let rec = if tie {
                    owner[&h.key()].clone()
                } else {
                    m.clone()
                };
                let rec = if rec == *p { m.clone() } else { rec };
                if !recorded.contains(&rec) {
                    recorded.push(rec);
                }
            }
            if h.copy(name).is_some() {
                return;
            }
            *h = h.alias();
            match made.get(&h.key()).filter(|_| tie) {
                Some(c) => h.share_copy(name, c.clone()),
                None => match h.add_copy(name, None) {
                    Ok(()) => {
                        made.insert(h.key(), h.copy(name).unwrap());
                    }
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                },
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(m) = paths.iter().find(|m| !found.contains(*m)) {
            return Err(Error::msg(format!(
                "modules_to_save: `{m}` has no parameters"
            )));
        }
        if let Some(a) = self.adapter_mut(name) {
            for m in recorded {
                if !a.modules_to_save.contains(&m) {
                    a.modules_to_save.push(m);
                }
            }
            a.ensure_weight_tying |= tie;
        }
        Ok(())
    }

    /// Removes every trace of adapter `name`.
    pub fn detach(&mut self, name: &str) {
        self.visit(&mut |_, m| match m {
            ModuleMut::Linear(l) => {
                l.adapters.retain(|(n, _)| n != name);
            }
            ModuleMut::Embedding(e) => e.adapters.retain(|(n, _)| n != name),
            ModuleMut::Bottleneck(s, _) => s.retain(|(n, _)| n != name),
            ModuleMut::Norm(_) => {}
        });
        for (_, _, h) in self.handles() {
            h.remove_copy(name);
        }
        self.prompts.retain(|(n, _)| n != name);
        let attached = self.ext.get_mut::<Attached>();
        attached.shared.retain(|(n, _)| n != name);
        attached.adapters.retain(|a| a.name != name);
        self.active.retain(|a| a != name);
    }

    /// Makes exactly `names` active.
    pub fn set_active(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            if self.adapter(n).is_none() {
                return Err(Error::msg(format!(
                    "no adapter named `{n}` (attached: {})",
                    self.adapter_names().join(", ")
                )));
            }
        }
        self.active = names.to_vec();
        Ok(())
    }

    /// Folds every active registry-method adapter (and its `modules_to_save` copies) into the base
    /// weights (`fold`) and removes them; returns the names merged.
    pub fn merge(&mut self) -> Result<Vec<String>> {
        let names = self.foldable_active(false)?;
        let f = self.fold(&names, true)?;
        self.apply_fold(f)?;
        for n in &names {
            self.detach(n);
        }
        Ok(names)
    }

    /// Parameters the optimizer updates: unfrozen base weights, and the trainable parameters and
    /// `modules_to_save` copies of active adapters.
    pub fn trainable_params(&mut self) -> Vec<(String, Param)> {
        let mut out: Vec<(String, Param)> = self
            .base_params()
            .into_iter()
            .filter(|(_, p)| p.is_trainable())
            .collect();
        let active: Vec<String> = if self.enabled {
            self.active.clone()
        } else {
            Vec::new()
        };
        for n in active {
            for (pn, p) in self.adapter_params(&n) {
                if p.is_trainable() && !out.iter().any(|(_, q)| q.same(&p)) {
                    out.push((pn, p));
                }
            }
        }
        out
    }

    /// Sets base parameters trainable (or frozen) where their name or module matches; a tied
    /// weight matches under the name of any module using it (`lm_head` too, as in PyTorch, where
    /// it is the one shared parameter).
    pub fn set_trainable(&mut self, sel: Option<&Selector>, on: bool) -> Result<usize> {
        let handles: Vec<(String, Param)> = self
            .handles()
            .into_iter()
            .map(|(p, s, h)| (format!("{p}.{s}"), h))
            .collect();
        let hit: Option<HashSet<String>> = match sel {
            None => None,
            Some(s) => {
                let modules = self.all_module_paths();
                let mut cands: Vec<String> = modules;
                for (n, _) in &handles {
                    if !cands.contains(n) {
                        cands.push(n.clone());
                    }
                }
                Some(s.select(&cands, "modules")?.into_iter().collect())
            }
        };
        let mut chosen: Vec<Param> = Vec::new();
        for (n, h) in &handles {
            let picked = match &hit {
                None => true,
                Some(hit) => {
                    hit.contains(n) || n.match_indices('.').any(|(i, _)| hit.contains(&n[..i]))
                }
            };
            if picked && !chosen.iter().any(|q| q.same(h)) {
                chosen.push(h.clone());
            }
        }
        for p in &chosen {
            p.set_trainable(on)?;
        }
        Ok(chosen.len())
    }
}

fn missing_paths(want: &BTreeSet<&str>, done: &BTreeSet<String>) -> Result<()> {
    let missing: Vec<&&str> = want.iter().filter(|p| !done.contains(**p)).collect();
    if !missing.is_empty() {
        return Err(Error::msg(format!("no such module: {missing:?}")));
    }
    Ok(())
}
