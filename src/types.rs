//! `ftl types [DIR]`: LuaLS stubs of the recipe API (`types/ftl.lua`, written from `lua::api`, the
//! same description that checks option keys and types) and the stdlib's modules, plus a
//! `.luarc.json` that points the language server at them (merged into one that exists).

use crate::lua::api::{self, Class, Func};
use crate::lua::STDLIB;
use anyhow::{Context, Result};
use clap::Args;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Clone)]
pub struct TypesArgs {
    /// Where to write .luarc.json and types/ (default: the current directory)
    pub dir: Option<PathBuf>,
}

/// The folder, inside DIR, that holds the stubs.
pub const TYPES_DIR: &str = "types";

fn doc_lines(out: &mut String, doc: &str) {
    for l in doc.lines() {
        let _ = writeln!(out, "---{l}");
    }
}

fn class(out: &mut String, c: &Class, optional: bool) {
    doc_lines(out, c.doc);
    let _ = writeln!(out, "---@class {}", c.class);
    for f in c.fields {
        let opt = if optional { "?" } else { "" };
        let _ = writeln!(out, "---@field {}{opt} {} {}", f.key, f.ty, f.doc);
    }
    out.push('\n');
}

/// The local name a handle's methods hang on in the stub (`ftl.Model` → `Model`).
fn local_of(class: &str) -> String {
    class.trim_start_matches("ftl.").to_string()
}

fn func(out: &mut String, f: &Func) {
    doc_lines(out, f.doc);
    let mut names = Vec::new();
    for (p, ty) in f.params {
        let _ = writeln!(out, "---@param {p} {ty}");
        names.push(p.trim_end_matches('?'));
    }
    if f.ret != "nil" {
        for r in api::returns(f.ret) {
            let _ = writeln!(out, "---@return {r}");
        }
    }
    let owner = if f.method {
        format!("{}:", local_of(f.owner))
    } else {
        format!("{}.", f.owner)
    };
    let _ = writeln!(
        out,
        "function {owner}{}({}) end\n",
        f.name,
        names.join(", ")
    );
}

/// The stub file of the `ftl` module.
pub fn stubs() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---@meta ftl\n-- ftl {}'s recipe API for Lua language servers (LuaLS). Written by `ftl types`; do not edit.\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, ty, doc) in api::ALIASES {
        doc_lines(&mut out, doc);
        let _ = writeln!(out, "---@alias {name} {ty}\n");
    }
    for c in api::all_options() {
        class(&mut out, c, true);
    }
    for c in api::RESULTS {
        class(&mut out, c, false);
    }
    for (m, doc) in api::MODULES {
        doc_lines(&mut out, doc);
        let _ = writeln!(out, "---@class {m}");
        if *m == "ftl" {
            for v in api::VALUES {
                let _ = writeln!(out, "---@field {} {} {}", v.key, v.ty, v.doc);
            }
            for (sub, _) in api::MODULES.iter().filter(|(s, _)| *s != "ftl") {
                let key = sub.trim_start_matches("ftl.");
                let _ = writeln!(out, "---@field {key} {sub}");
            }
            let _ = writeln!(out, "ftl = {{}}\n");
        } else {
            let _ = writeln!(out, "{m} = {{}}\n");
        }
    }
    for h in api::HANDLES {
        doc_lines(&mut out, h.doc);
        let _ = writeln!(out, "---@class {}", h.class);
        for f in h.fields {
            let _ = writeln!(out, "---@field {} {} {}", f.key, f.ty, f.doc);
        }
        for o in h.operators {
            let _ = writeln!(out, "---@operator {o}");
        }
        let _ = writeln!(out, "local {} = {{}}\n", local_of(h.class));
    }
    for f in api::all_funcs() {
        func(&mut out, f);
    }
    out.push_str("return ftl\n");
    out
}

/// Adds `item` to the list at `key` (a dotted key, or the nested form LuaLS also reads).
fn add_to_list(cfg: &mut serde_json::Map<String, serde_json::Value>, key: &str, item: &str) {
    let (outer, inner) = key.split_once('.').unwrap();
    let list = match cfg.get_mut(outer).and_then(|v| v.as_object_mut()) {
        Some(o) if o.contains_key(inner) => o.get_mut(inner).unwrap(),
        _ => cfg
            .entry(key.to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new())),
    };
    if let Some(a) = list.as_array_mut() {
        if !a.iter().any(|v| v.as_str() == Some(item)) {
            a.push(item.into());
        }
    }
}

fn set_default(cfg: &mut serde_json::Map<String, serde_json::Value>, key: &str, v: &str) {
    let (outer, inner) = key.split_once('.').unwrap();
    let nested = cfg
        .get(outer)
        .and_then(|o| o.as_object())
        .is_some_and(|o| o.contains_key(inner));
    if !nested && !cfg.contains_key(key) {
        cfg.insert(key.into(), v.into());
    }
}

/// `.luarc.json` with ftl's settings merged into `existing` (whose other settings stay).
pub fn luarc(existing: Option<&str>, path: &Path) -> Result<String> {
    let mut cfg = match existing {
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => anyhow::bail!("{}: not a JSON object; left as it is", path.display()),
            Err(e) => anyhow::bail!(
                "{}: not valid JSON ({e}); left as it is: add \"{TYPES_DIR}\" to its workspace.library yourself",
                path.display()
            ),
        },
        None => {
            let mut m = serde_json::Map::new();
            m.insert(
                "$schema".into(),
                "https://raw.githubusercontent.com/LuaLS/vscode-lua/master/setting/schema.json"
                    .into(),
            );
            m
        }
    };
    set_default(&mut cfg, "runtime.version", "Lua 5.4");
    add_to_list(&mut cfg, "workspace.library", TYPES_DIR);
    add_to_list(&mut cfg, "diagnostics.globals", "ftl");
    Ok(serde_json::to_string_pretty(&serde_json::Value::Object(cfg))? + "\n")
}

pub fn types(a: &TypesArgs) -> Result<()> {
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{}: not a directory", dir.display());
    }
    let rc = dir.join(".luarc.json");
    let existing = match std::fs::read_to_string(&rc) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", rc.display())),
    };
    // check the settings first, so a broken .luarc.json leaves everything as it was
    let rc_text = luarc(existing.as_deref(), &rc)?;
    let types = dir.join(TYPES_DIR);
    crate::st::write_atomic(&types.join("ftl.lua"), stubs().as_bytes())?;
    for (name, src) in STDLIB {
        crate::st::write_atomic(&types.join(format!("{name}.lua")), src.as_bytes())?;
    }
    crate::st::write_atomic(&rc, rc_text.as_bytes())?;
    println!(
        "wrote {} (the ftl module and {} stdlib modules) and {}",
        types.display(),
        STDLIB.len(),
        rc.display()
    );
    Ok(())
}
