//! `ftl.fs` (listing, testing and reading paths) and `ftl.json` (reading and writing JSON), inside the
//! recipe's sandbox.

use super::model::{env, lua_of_json};
use super::{lua_err, LuaExt};
use mlua::{Lua, Table};

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    let fs = lua.create_table()?;
    fs.set(
        "list",
        lua.create_function(|lua, dir: String| {
            let path = env(lua).input(&dir).lua(lua)?;
            let rd = std::fs::read_dir(&path)
                .map_err(|e| lua_err(lua, format!("{}: {e}", path.display())))?;
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            names.sort();
            Ok(names)
        })?,
    )?;
    fs.set(
        "exists",
        lua.create_function(|lua, p: String| Ok(env(lua).input(&p).lua(lua)?.exists()))?,
    )?;
    fs.set(
        "is_dir",
        lua.create_function(|lua, p: String| Ok(env(lua).input(&p).lua(lua)?.is_dir()))?,
    )?;
    fs.set(
        "read",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            std::fs::read_to_string(&path)
                .map_err(|e| lua_err(lua, format!("{}: {e}", path.display())))
        })?,
    )?;
    fs.set(
        "size",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            tree_size(&path).map_err(|e| lua_err(lua, format!("{}: {e}", path.display())))
        })?,
    )?;
    fs.set(
        "join",
        lua.create_function(|_, parts: mlua::Variadic<String>| {
            let mut p = std::path::PathBuf::new();
            for x in parts.iter() {
                p.push(x);
            }
            Ok(p.display().to_string())
        })?,
    )?;
    ftl.set("fs", fs)?;
    let json = lua.create_table()?;
    json.set(
        "read",
        lua.create_function(|lua, p: String| {
            let path = env(lua).input(&p).lua(lua)?;
            let v = crate::st::read_json(&path).lua(lua)?;
            lua_of_json(lua, &v)
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, s: String| {
            let v: serde_json::Value =
                serde_json::from_str(&s).map_err(|e| lua_err(lua, format!("json.decode: {e}")))?;
            lua_of_json(lua, &v)
        })?,
    )?;
    ftl.set("json", json)?;
    Ok(())
}

/// The bytes of a file, or of every file under a directory (what keeping it costs on disk).
fn tree_size(p: &std::path::Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(p)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        n += tree_size(&e?.path())?;
    }
    Ok(n)
}
