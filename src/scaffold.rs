//! `ftl new`, `ftl ls`, `ftl cp`: starter recipes from one template, and the recipe gallery (with
//! its data files) and stdlib embedded in the binary, so an installed ftl can list and copy them.

use crate::lua::STDLIB;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// (name, source) of every recipe in `recipes/`; a test checks this covers the directory.
pub const RECIPES: &[(&str, &str)] = &[
    ("chat", include_str!("../recipes/chat.lua")),
    (
        "check_fixtures",
        include_str!("../recipes/check_fixtures.lua"),
    ),
    ("classify", include_str!("../recipes/classify.lua")),
    ("dora", include_str!("../recipes/dora.lua")),
    ("full", include_str!("../recipes/full.lua")),
    (
        "gradual_unfreeze",
        include_str!("../recipes/gradual_unfreeze.lua"),
    ),
    ("houlsby", include_str!("../recipes/houlsby.lua")),
    ("ia3", include_str!("../recipes/ia3.lua")),
    ("lora", include_str!("../recipes/lora.lua")),
    ("lora_all", include_str!("../recipes/lora_all.lua")),
    (
        "lora_layer_range",
        include_str!("../recipes/lora_layer_range.lua"),
    ),
    ("pfeiffer", include_str!("../recipes/pfeiffer.lua")),
    ("prefix", include_str!("../recipes/prefix.lua")),
    ("prompt", include_str!("../recipes/prompt.lua")),
    ("quickstart", include_str!("../recipes/quickstart.lua")),
    ("top_layers", include_str!("../recipes/top_layers.lua")),
    ("two_tasks", include_str!("../recipes/two_tasks.lua")),
];

/// The data files gallery recipes read, by their path relative to the recipe (`data/...`).
pub const DATA: &[(&str, &[u8])] = &[
    (
        "data/chat.jsonl",
        include_bytes!("../recipes/data/chat.jsonl"),
    ),
    (
        "data/general.txt",
        include_bytes!("../recipes/data/general.txt"),
    ),
    (
        "data/instruct.jsonl",
        include_bytes!("../recipes/data/instruct.jsonl"),
    ),
    (
        "data/sentiment.jsonl",
        include_bytes!("../recipes/data/sentiment.jsonl"),
    ),
    (
        "data/words.jsonl",
        include_bytes!("../recipes/data/words.jsonl"),
    ),
];

const TEMPLATE: &str = include_str!("../stdlib/templates/recipe.lua");

#[derive(Clone, Copy, ValueEnum)]
pub enum Method {
    Full,
    Lora,
    Dora,
    Ia3,
    Adapter,
    Prefix,
    Prompt,
}

impl Method {
    /// (description, attach lines, default learning rate)
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Method::Full => (
                "full fine-tuning (every weight trains) on instruction rows.",
                "presets.full(m) -- or presets.top_layers(m, 4): only the top 4 blocks",
                "5e-5",
            ),
            Method::Lora => (
                "LoRA on the attention projections, trained on instruction rows.",
                "presets.lora_attention(m, {r = args.r or 16}) -- or presets.lora_all(m, {r = 8}): every linear layer",
                "1e-3",
            ),
            Method::Dora => (
                "DoRA (weight-decomposed LoRA) on the attention projections, trained on instruction rows.",
                "presets.dora(m, {r = args.r or 16})",
                "1e-3",
            ),
            Method::Ia3 => (
                "IA3 (learned scaling vectors), trained on instruction rows.",
                "presets.ia3(m) -- PEFT's default targets; ftl.ia3(m, {targets = ..., feedforward = ...}) to choose",
                "1e-2",
            ),
            Method::Adapter => (
                "a bottleneck adapter (Pfeiffer), trained on instruction rows.",
                "presets.pfeiffer(m, {reduction = args.reduction or 16}) -- or presets.houlsby(m, {reduction = 16})",
                "1e-3",
            ),
            Method::Prefix => (
                "prefix tuning (learned per-layer keys and values), trained on instruction rows.",
                "presets.prefix(m, {tokens = args.tokens or 16})",
                "1e-2",
            ),
            Method::Prompt => (
                "prompt tuning (learned virtual input tokens), trained on instruction rows.",
                "presets.prompt(m, {tokens = args.tokens or 16}) -- init_text = \"...\" starts from a text's embeddings",
                "3e-2",
            ),
        }
    }
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  ftl new my_lora --method lora\n  ftl run my_lora.lua model=path/to/model steps=50"
)]
pub struct NewArgs {
    /// The recipe to write: NAME.lua in the current directory (or a path)
    pub name: PathBuf,
    /// The fine-tuning method the starter uses (the built-in ones, then the registry's)
    #[arg(long, default_value = "lora", value_parser = method_names())]
    pub method: String,
}

#[derive(Args)]
#[command(after_help = "Example:\n  ftl ls")]
pub struct LsArgs {}

#[derive(Args)]
#[command(
    after_help = "Example:\n  ftl cp lora my_lora.lua    # also writes data/instruct.jsonl next to it\n  ftl run my_lora.lua model=path/to/model"
)]
pub struct CpArgs {
    /// A built-in recipe (see `ftl ls`), or a stdlib module
    pub name: String,
    /// Where to write it: a file, or a directory to write NAME.lua into
    pub path: PathBuf,
}

/// The recipe file a NAME argument means: `.lua` added when missing.
fn lua_path(p: &Path) -> PathBuf {
    if p.extension().is_some_and(|e| e == "lua") {
        p.to_path_buf()
    } else {
        let mut s = p.as_os_str().to_owned();
        s.push(".lua");
        PathBuf::from(s)
    }
}

/// Every `--method` `ftl new` knows: the built-in ones and the registry's.
fn method_names() -> clap::builder::PossibleValuesParser {
    let builtin = Method::value_variants()
        .iter()
        .filter_map(|m| m.to_possible_value());
    // a registry method with a starter of its own (ia3) is listed once
    let registry = crate::peft::registry::METHODS
        .iter()
        .filter(|m| Method::from_str(m.name(), true).is_err())
        .map(|m| clap::builder::PossibleValue::new(m.name()));
    clap::builder::PossibleValuesParser::new(builtin.chain(registry))
}

/// (description, attach lines, default learning rate) of `method`.
fn parts(method: &str) -> (String, String, &'static str) {
    if let Ok(m) = Method::from_str(method, true) {
        let (d, a, lr) = m.parts();
        return (d.to_string(), a.to_string(), lr);
    }
    let Some(m) = crate::peft::registry::by_name(method) else {
        return (String::new(), String::new(), "1e-3");
    };
    let keys: Vec<&str> = m.options().iter().map(|o| o.key).collect();
    (
        format!(
            "{} on PEFT's default targets, trained on instruction rows.",
            m.doc().trim_start_matches("Attaches ")
        ),
        format!(
            "ftl.{}(m, {{}}) -- PEFT's {} options, by their names: {}; targets = ... to choose",
            m.name(),
            m.peft_type(),
            keys.join(", ")
        ),
        m.suggested_lr(),
    )
}

/// The starter recipe `ftl new` writes for `method`, named `name` in its header.
pub fn starter(name: &str, method: &str) -> String {
    let (desc, attach, lr) = parts(method);
    let save = match method {
        "full" => "print(\"saved \" .. m:save(\"model\")) -- a complete HF model directory",
        _ => "print(\"saved \" .. m:save_adapter(\"adapter\")) -- PEFT's format (AdapterHub's for bottleneck adapters)",
    };
    TEMPLATE
        .replace("{{name}}", name)
        .replace("{{desc}}", &desc)
        .replace("{{attach}}", &attach)
        .replace("{{lr}}", lr)
        .replace("{{save}}", save)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // create_new: never overwrite, even a file that appeared since the check
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn new(a: &NewArgs) -> Result<()> {
    let path = lua_path(&a.name);
    if path.exists() {
        bail!("{} already exists: not overwriting it", path.display());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "recipe".into());
    write_new(&path, starter(&stem, &a.method).as_bytes())?;
    println!(
        "wrote {}; run it with: ftl run {} model=PATH_OR_HUB_ID",
        path.display(),
        path.display()
    );
    Ok(())
}

/// A file's one-line description: the first sentence of its opening comment, without a leading
/// `NAME:`.
pub fn description(name: &str, src: &str) -> String {
    let mut text = String::new();
    for l in src.lines() {
        let Some(c) = l.trim().strip_prefix("--") else {
            break;
        };
        let c = c.trim();
        if c.is_empty() {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(c);
        if c.ends_with('.') {
            break;
        }
    }
    let text = match text.find(". ") {
        Some(i) => text[..=i].to_string(),
        None => text,
    };
    match text.split_once(": ") {
        Some((head, rest)) if head.eq_ignore_ascii_case(name) => rest.trim().to_string(),
        _ => text,
    }
}

pub fn ls(_: &LsArgs) -> Result<()> {
    let width = RECIPES
        .iter()
        .chain(STDLIB.iter())
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    println!("recipes (ftl cp NAME PATH copies one):");
    for (n, src) in RECIPES {
        println!("  {n:width$}  {}", description(n, src));
    }
    println!("stdlib modules (require(\"NAME\") in a recipe):");
    for (n, src) in STDLIB {
        println!("  {n:width$}  {}", description(n, src));
    }
    Ok(())
}

/// The embedded data files a recipe's source mentions (`"data/instruct.jsonl"`).
pub fn data_files(src: &str) -> Vec<(&'static str, &'static [u8])> {
    DATA.iter()
        .filter(|(p, _)| src.contains(p))
        .map(|&(p, b)| (p, b))
        .collect()
}

pub fn cp(a: &CpArgs) -> Result<()> {
    let name = a.name.strip_suffix(".lua").unwrap_or(&a.name);
    let src = RECIPES
        .iter()
        .chain(STDLIB.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s);
    let Some(src) = src else {
        let names: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
        bail!(
            "no built-in recipe or stdlib module `{name}` (recipes: {}; `ftl ls` describes them)",
            names.join(", ")
        );
    };
    let path = if a.path.is_dir() || a.path.as_os_str().to_string_lossy().ends_with('/') {
        a.path.join(format!("{name}.lua"))
    } else {
        a.path.clone()
    };
    if path.exists() {
        bail!("{} already exists: not overwriting it", path.display());
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    // data first checked, so that nothing is written when any file is in the way
    let mut todo: Vec<(PathBuf, &[u8])> = Vec::new();
    for (rel, bytes) in data_files(src) {
        let p = dir.join(rel);
        match std::fs::read(&p) {
            Ok(old) if old == bytes => {}
            Ok(_) => bail!(
                "{} already exists with other content: not overwriting it ({name} needs {rel})",
                p.display()
            ),
            Err(_) => todo.push((p, bytes)),
        }
    }
    write_new(&path, src.as_bytes())?;
    println!("wrote {}", path.display());
    for (p, bytes) in todo {
        write_new(&p, bytes)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
