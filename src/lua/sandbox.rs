//! The sandbox a recipe runs in without `--trust`: where it may read and write (every path
//! resolved through symlinks and `..` before it is checked), the parts of Lua it may not reach
//! (processes, C modules, bytecode, debug, files behind `io`/`os`/`package`), and the memory limit
//! of its Lua heap.

use super::{lua_err, normalize, plan, Env, ExitRequest, LuaExt};
use crate::error::{Error, Result};
use crate::model::hf_cache;
use mlua::{Lua, Table, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The real path `p` names, as the OS resolves it when opening: each symlink is followed where it
/// stands (so `link/..` is the link target's parent) and the part that does not exist yet is kept
/// as written (it holds no link).
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    resolve_links(&abs, 0)
}

fn resolve_links(p: &Path, depth: usize) -> PathBuf {
    let mut cur = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => cur.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(n) => {
                cur.push(n);
                let is_link = std::fs::symlink_metadata(&cur)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                // past 40 links the OS refuses to open the path (ELOOP), so it reads nothing
                if is_link && depth < 40 {
                    if let Ok(target) = std::fs::read_link(&cur) {
                        cur.pop();
                        let t = cur.join(target);
                        cur = resolve_links(&t, depth + 1);
                    }
                }
            }
        }
    }
    cur
}

impl Env {
    /// The places a recipe may read: its directory, the command-line paths, the HF cache (its
    /// snapshots link into its `blobs/`) and the output directory.
    fn read_roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.recipe_dir.clone(), self.out_dir.clone()];
        roots.extend(self.extra_roots.iter().cloned());
        // a rerun reads the recipe's modules from the copies beside its manifest
        roots.extend(self.copies.iter().cloned());
        roots.push(hf_cache::root().dir);
        roots
    }

    /// The one sandbox check: `path` (absolute) if its real location is inside a root, as the
    /// path to open.
    fn check(&self, path: &Path, write: bool) -> Result<PathBuf> {
        let p = self.allowed(path, write)?;
        if !write {
            self.opened.lock().unwrap().push(p.clone());
        }
        Ok(p)
    }

    fn allowed(&self, path: &Path, write: bool) -> Result<PathBuf> {
        let lexical = normalize(path);
        if self.trust {
            return Ok(lexical);
        }
        let real = resolve(path);
        let roots = if write {
            vec![self.out_dir.clone()]
        } else {
            self.read_roots()
        };
        if roots.iter().any(|r| real.starts_with(resolve(r))) {
            // the path as written when it names the same file (messages and plans show it)
            return Ok(if resolve(&lexical) == real {
                lexical
            } else {
                real
            });
        }
        let link = if resolve(&lexical) != lexical {
            format!(" (it resolves to {})", real.display())
        } else {
            String::new()
        };
        Err(Error::file(
            lexical,
            if write {
                format!(
                    "outside the output directory{link}: a recipe writes only in {} (run with --trust to write elsewhere)",
                    self.out_dir.display()
                )
            } else {
                format!(
                    "outside the places a recipe may read{link}: the recipe's directory, the paths given on the command line, the Hugging Face cache and the output directory (run with --trust to allow)"
                )
            },
        ))
    }

    /// A path the recipe reads: relative to the recipe's directory.
    pub fn input(&self, p: &str) -> Result<PathBuf> {
        self.check(&self.recipe_dir.join(p), false)
    }

    /// A path the recipe writes: relative to the output directory.
    pub fn output(&self, p: &str) -> Result<PathBuf> {
        // a cancelled run writes nothing more
        crate::cancel::check()?;
        self.check(&self.out_dir.join(p), true)
    }

    /// An absolute path ftl is about to read for the recipe (a file a glob matched, a module).
    pub fn readable(&self, p: &Path) -> Result<PathBuf> {
        self.check(p, false)
    }

    /// A model or adapter reference: a path relative to the recipe, or a hub id in the HF cache.
    pub fn model(&self, r: &str) -> Result<PathBuf> {
        let p = hf_cache::resolve_ref(Path::new(r), &self.recipe_dir)?;
        self.check(&p, false)
    }
}

/// The Lua heap's limit without `FTL_LUA_MEMORY`: generous, since tensors, models and data sets
/// live in Rust, not on the Lua heap.
pub const DEFAULT_MEMORY: usize = 1 << 30;

/// `2GiB`, `512M`, `1000000`; `0` is no limit.
pub(super) fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as usize)
}

/// The Lua heap limit in bytes (0: none), from `FTL_LUA_MEMORY` or the default.
pub fn memory_limit() -> Result<usize> {
    match std::env::var("FTL_LUA_MEMORY") {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).ok_or_else(|| {
            Error::msg(format!(
                "FTL_LUA_MEMORY={v}: expected a size such as 2GiB, 512MiB or a number of bytes (0 for no limit)"
            ))
        }),
        _ => Ok(DEFAULT_MEMORY),
    }
}

/// What a recipe that ran out of Lua memory is told.
pub fn memory_message() -> String {
    let limit = memory_limit().unwrap_or(DEFAULT_MEMORY);
    format!(
        "the recipe's Lua heap reached its limit of {} (Lua strings and tables only: tensors, models and data sets live outside it); \
a recipe that really needs more can raise it with FTL_LUA_MEMORY=4GiB (0 for no limit)",
        crate::check::size(limit as u64)
    )
}

/// A function that refuses with `why`, naming what the recipe passed.
fn refuse(lua: &Lua, what: &'static str, why: &'static str) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, args: mlua::Variadic<Value>| {
        let arg = match args.first() {
            Some(Value::String(s)) => format!("(\"{}\")", s.to_string_lossy()),
            _ => String::new(),
        };
        Err::<(), _>(lua_err(
            lua,
            format!("{what}{arg}: {why} in a sandboxed recipe (run with --trust to allow it)"),
        ))
    })
}

/// Removes what a recipe must not reach without `--trust`, and adds safe replacements.
pub(super) fn restrict(lua: &Lua, g: &Table) -> mlua::Result<()> {
    for name in ["dofile", "loadfile", "collectgarbage", "debug"] {
        g.set(name, Value::Nil)?;
    }
    // `load` of text chunks only
    let load = lua.create_function(|lua, (chunk, name): (mlua::LuaString, Option<String>)| {
        let bytes = chunk.as_bytes();
        if bytes.first() == Some(&0x1b) {
            return Err(lua_err(
                lua,
                "load: binary chunks are not allowed in recipes",
            ));
        }
        let f = lua
            .load(bytes.to_vec())
            .set_name(name.unwrap_or_else(|| "=(load)".into()))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function();
        match f {
            Ok(f) => Ok((Some(f), None)),
            Err(e) => Ok((None, Some(super::describe(&e)))),
        }
    })?;
    g.set("load", load)?;
    let string: Table = g.get("string")?;
    string.set(
        "dump",
        refuse(lua, "string.dump", "bytecode is not allowed")?,
    )?;
    // a small `os`: time, clock, getenv and exit
    let os = lua.create_table()?;
    os.set(
        "time",
        lua.create_function(|_, ()| {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0))
        })?,
    )?;
    let start = std::time::Instant::now();
    os.set(
        "clock",
        lua.create_function(move |_, ()| Ok(start.elapsed().as_secs_f64()))?,
    )?;
    os.set(
        "getenv",
        lua.create_function(|_, k: String| Ok(std::env::var(k).ok()))?,
    )?;
    os.set(
        "exit",
        lua.create_function(|_, code: Option<Value>| {
            let c = match code {
                None | Some(Value::Nil) | Some(Value::Boolean(true)) => 0,
                Some(Value::Boolean(false)) => 1,
                Some(Value::Integer(i)) => i as i32,
                Some(Value::Number(n)) => n as i32,
                _ => 1,
            };
            Err::<(), _>(mlua::Error::external(ExitRequest(c)))
        })?,
    )?;
    os.set(
        "execute",
        refuse(lua, "os.execute", "processes are not allowed")?,
    )?;
    for name in ["remove", "rename", "tmpname"] {
        let what: &'static str = match name {
            "remove" => "os.remove",
            "rename" => "os.rename",
            _ => "os.tmpname",
        };
        os.set(
            name,
            refuse(
                lua,
                what,
                "files are written only through ftl, inside the output directory,",
            )?,
        )?;
    }
    g.set("os", os)?;
    // `io` restricted to the allowed directories
    let io = lua.create_table()?;
    io.set(
        "write",
        lua.create_function(|_, args: mlua::Variadic<Value>| {
            use std::io::Write;
            let mut out = std::io::stdout();
            for a in args {
                match a {
                    Value::String(s) => out.write_all(&s.as_bytes()).ok(),
                    Value::Integer(i) => write!(out, "{i}").ok(),
                    Value::Number(n) => write!(out, "{n}").ok(),
                    _ => None,
                };
            }
            Ok(())
        })?,
    )?;
    io.set(
        "read_file",
        lua.create_function(|lua, p: String| {
            let env = lua.app_data_ref::<Arc<Env>>().unwrap().clone();
            let path = env.input(&p).lua(lua)?;
            std::fs::read_to_string(&path)
                .map_err(|e| lua_err(lua, format!("{}: {e}", path.display())))
        })?,
    )?;
    io.set(
        "write_file",
        lua.create_function(|lua, (p, content): (String, mlua::LuaString)| {
            let env = lua.app_data_ref::<Arc<Env>>().unwrap().clone();
            let path = env.output(&p).lua(lua)?;
            if plan::writes(lua, "io.write_file", &path) {
                return Ok(path.display().to_string());
            }
            crate::st::write_atomic(&path, &content.as_bytes()).lua(lua)?;
            Ok(path.display().to_string())
        })?,
    )?;
    io.set(
        "popen",
        refuse(lua, "io.popen", "processes are not allowed")?,
    )?;
    for (name, what) in [
        ("open", "io.open"),
        ("lines", "io.lines"),
        ("input", "io.input"),
        ("output", "io.output"),
    ] {
        io.set(
            name,
            refuse(
                lua,
                what,
                "files are read with io.read_file or ftl.fs.read and written with io.write_file",
            )?,
        )?;
    }
    g.set("io", io)?;
    // `require` reads modules itself, next to the recipe and in the stdlib, through the sandbox's
    // check: a `package` whose search paths or loaders a recipe could change would route around it
    let package = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(|lua, (_, k): (Value, String)| {
            let env = lua.app_data_ref::<Arc<Env>>().unwrap().clone();
            Ok(match k.as_str() {
                "path" => Value::String(
                    lua.create_string(format!("{}/?.lua;stdlib/?.lua", env.recipe_dir.display()))?,
                ),
                "cpath" => Value::String(lua.create_string("")?),
                "config" => Value::String(lua.create_string("/\n;\n?\n!\n-\n")?),
                "loadlib" => {
                    Value::Function(refuse(lua, "package.loadlib", "C modules are not allowed")?)
                }
                _ => Value::Nil,
            })
        })?,
    )?;
    meta.set(
        "__newindex",
        lua.create_function(|lua, (_, k, v): (Value, String, Value)| {
            let env = lua.app_data_ref::<Arc<Env>>().unwrap().clone();
            let shown = match &v {
                Value::String(s) => format!(" = \"{}\"", s.to_string_lossy()),
                _ => String::new(),
            };
            Err::<(), _>(lua_err(
                lua,
                format!(
                    "package.{k}{shown}: a sandboxed recipe cannot change where require looks (next to the recipe, in {}, then the stdlib; run with --trust to allow)",
                    env.recipe_dir.display()
                ),
            ))
        })?,
    )?;
    package.set_metatable(Some(meta))?;
    g.set("package", package)?;
    Ok(())
}

/// A module name `require` accepts without `--trust`: dot-separated words, never a path.
pub(super) fn module_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5 g"), Some(3 << 29));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("2 parsecs"), None);
    }

    #[test]
    fn resolution_follows_links_where_they_stand() {
        let t = tempfile::tempdir().unwrap();
        let root = resolve(t.path());
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        std::os::unix::fs::symlink(root.join("x/y"), root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("../nowhere/file", root.join("a/dangling")).unwrap();
        // `link/..` is the target's parent, as the OS sees it
        assert_eq!(resolve(&root.join("a/link/..")), root.join("x"));
        assert_eq!(resolve(&root.join("a/link/new/f")), root.join("x/y/new/f"));
        // a part that does not exist yet, then `..`, then a link
        assert_eq!(resolve(&root.join("a/nope/../link")), root.join("x/y"));
        // a dangling link points where a write would land
        assert_eq!(resolve(&root.join("a/dangling")), root.join("nowhere/file"));
        // a loop ends (the OS refuses to open it)
        std::os::unix::fs::symlink("loop", root.join("a/loop")).unwrap();
        let _ = resolve(&root.join("a/loop"));
    }

    #[test]
    fn module_names_are_words() {
        assert!(module_name_ok("presets"));
        assert!(module_name_ok("lib.my_mod"));
        for bad in ["../x", "/etc/x", "a..b", "", "a/b", ".x"] {
            assert!(!module_name_ok(bad), "{bad}");
        }
    }
}
