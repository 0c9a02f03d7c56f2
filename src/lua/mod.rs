//! The Lua runtime that runs recipes: a sandboxed Lua 5.4 state with the `ftl` module (each API
//! area registers itself), `require` next to the recipe then in the shipped stdlib, `ftl.args`,
//! and errors that carry `recipe.lua:LINE`. The only place that imports mlua.

pub mod api;
mod args;
mod cache;
mod data;
mod fs;
mod model;
mod opts;
mod peft;
pub mod plan;
mod plot;
mod run;
pub mod sandbox;
mod stdlib;
mod tensor;
mod train;

pub use args::{parse_args, parse_value};
pub use cache::cache_across_runs;
pub use stdlib::STDLIB;

use crate::error::{Error, Result};
use mlua::{Lua, LuaOptions, StdLib, Table, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a run reads and writes, and what it may touch.
pub struct Env {
    pub recipe: PathBuf,
    pub recipe_dir: PathBuf,
    pub out_dir: PathBuf,
    pub trust: bool,
    /// directories reads may come from (besides the recipe's and the output directory)
    pub extra_roots: Vec<PathBuf>,
    /// every file the run loaded with `require`, with a hash of what it read (watch mode)
    pub required: Mutex<Vec<(PathBuf, u64)>>,
    /// stops the run as a whole (watch mode): see `Cancelled`
    pub cancel: crate::cancel::Token,
    /// quiet progress output (tests, watch)
    pub quiet: bool,
    /// the command-line arguments, as the recipe sees them
    pub args: Vec<(String, String)>,
    /// a rerun: the directory of the copies (`OUT/recipe/`) the recipe and its modules are read
    /// from, instead of the recipe's directory
    pub copies: Option<PathBuf>,
    /// `ftl compare`: the table the recipe returns is the spec of `require("compare").run`
    pub compare: bool,
    /// every path the run read data or a model from (watch mode watches them)
    pub opened: Mutex<Vec<PathBuf>>,
    /// a run of `ftl watch`: what changed since the previous run. Such a run always leaves a
    /// manifest, so that the history has every run.
    pub watched: Option<String>,
    /// `ftl run --resume` / `--resume-from DIR`
    pub resume: Option<Resume>,
}

/// What `ftl run` was asked to resume.
#[derive(Clone, Debug)]
pub enum Resume {
    /// every training from the newest complete checkpoint in its own `save` directory
    Latest,
    /// the first training from this checkpoint or directory of checkpoints
    From(PathBuf),
}

/// A hash of a file's content (watch mode compares them to tell saves from reads).
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Lexically normalises `p` (no filesystem access): removes `.` and resolves `..`.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            c => out.push(c.as_os_str()),
        }
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize(p)
    } else {
        normalize(&std::env::current_dir().unwrap_or_default().join(p))
    }
}

impl Env {
    pub fn new(recipe: &Path, out_dir: Option<&Path>, trust: bool) -> Self {
        let recipe = absolute(recipe);
        let recipe_dir = recipe.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = recipe
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "recipe".into());
        let out_dir = match out_dir {
            Some(o) => absolute(o),
            None => recipe_dir.join("runs").join(stem),
        };
        Env {
            recipe,
            recipe_dir,
            out_dir,
            trust,
            extra_roots: Vec::new(),
            required: Mutex::new(Vec::new()),
            cancel: crate::cancel::Token::new(),
            quiet: false,
            args: Vec::new(),
            copies: None,
            compare: false,
            opened: Mutex::new(Vec::new()),
            watched: None,
            resume: None,
        }
    }
}

/// `os.exit(code)` inside a recipe: unwinds to the runner, which exits with `code`.
#[derive(Debug)]
pub struct ExitRequest(pub i32);

impl std::fmt::Display for ExitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "os.exit({})", self.0)
    }
}

impl std::error::Error for ExitRequest {}

/// What a cancelled run unwinds with. `pcall`, `xpcall` and `coroutine.resume` re-raise it (see
/// `guard_protected_calls`) and every ftl function raises it once the run is cancelled, so that
/// nothing after the point of cancellation runs.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

fn cancelled_err() -> mlua::Error {
    mlua::Error::external(Cancelled)
}

/// How a recipe run ended.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    Exit(i32),
    /// stopped by its cancellation flag
    Cancelled,
}

/// "recipe.lua:12" for the Lua code calling into Rust right now.
pub(crate) fn location(lua: &Lua) -> Option<String> {
    for level in 1..8 {
        let r = lua.inspect_stack(level, |d| {
            let src = d.source();
            if src.what == "C" {
                return None;
            }
            let file = src.short_src.map(|s| s.to_string()).unwrap_or_default();
            d.current_line().map(|l| format!("{file}:{l}"))
        });
        match r {
            Some(Some(s)) => return Some(s),
            Some(None) => continue,
            None => return None,
        }
    }
    None
}

/// An error raised in Lua, prefixed with the calling line.
pub(crate) fn lua_err(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    // whatever failed after a cancellation failed because of it
    if crate::cancel::requested() {
        return cancelled_err();
    }
    let msg = crate::error::without_backtrace(&msg.to_string());
    match location(lua) {
        Some(l) => mlua::Error::RuntimeError(format!("{l}: {msg}")),
        None => mlua::Error::RuntimeError(msg.to_string()),
    }
}

/// `result.lua(lua)?`: library errors become located Lua errors.
pub(crate) trait LuaExt<T> {
    fn lua(self, lua: &Lua) -> mlua::Result<T>;
}

impl<T, E: std::fmt::Display> LuaExt<T> for std::result::Result<T, E> {
    fn lua(self, lua: &Lua) -> mlua::Result<T> {
        self.map_err(|e| lua_err(lua, e))
    }
}

/// The message of the innermost error, without mlua's wrapping. One that does not say where it
/// happened (an argument mlua could not convert) gets the recipe line that made the call, from
/// the traceback.
pub fn describe(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, traceback } => {
            let msg = describe(cause);
            match traceback_location(traceback) {
                Some(at) if !has_location(&msg) => format!("{at}: {msg}"),
                _ => msg,
            }
        }
        mlua::Error::WithContext { cause, .. } => describe(cause),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::ExternalError(x) => x.to_string(),
        mlua::Error::MemoryError(_) => sandbox::memory_message(),
        other => other.to_string(),
    }
}

/// `recipe.lua:12: ...`: a message that starts with a source line.
fn has_location(msg: &str) -> bool {
    msg.split_once(": ").is_some_and(|(at, _)| {
        at.rsplit_once(':')
            .is_some_and(|(file, line)| !file.is_empty() && line.parse::<u32>().is_ok())
    })
}

/// The first Lua line (`recipe.lua:12`) of an mlua traceback.
fn traceback_location(tb: &str) -> Option<String> {
    tb.lines().map(str::trim).find_map(|l| {
        let (at, _) = l.split_once(": ")?;
        (!at.starts_with('[') && has_location(&format!("{at}: "))).then(|| at.to_string())
    })
}

fn is_cancelled(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_cancelled(cause)
        }
        mlua::Error::ExternalError(x) => x.downcast_ref::<Cancelled>().is_some(),
        _ => false,
    }
}

fn exit_code(e: &mlua::Error) -> Option<i32> {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            exit_code(cause)
        }
        mlua::Error::ExternalError(x) => x.downcast_ref::<ExitRequest>().map(|r| r.0),
        _ => None,
    }
}

/// A Lua state with the `ftl` module for one recipe run.
pub struct Runtime {
    pub lua: Lua,
    pub env: Arc<Env>,
}

impl Runtime {
    pub fn new(env: Env, args: &[(String, String)]) -> Result<Self> {
        let libs = if env.trust {
            StdLib::ALL_SAFE
        } else {
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE
        };
        let lua =
            Lua::new_with(libs, LuaOptions::default()).map_err(|e| Error::msg(e.to_string()))?;
        let limit = sandbox::memory_limit()?;
        if limit > 0 {
            lua.set_memory_limit(limit)
                .map_err(|e| Error::msg(e.to_string()))?;
        }
        let mut env = env;
        // paths on the command line are the user's, relative to where ftl was started: the
        // recipe sees them absolute, and may read them
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| {
                let p = Path::new(v);
                if !v.is_empty() && !v.starts_with(['{', '"', '\'']) && p.exists() {
                    let abs = absolute(p);
                    env.extra_roots.push(abs.clone());
                    (k.clone(), abs.display().to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        env.args = args.clone();
        let args = args.as_slice();
        let env = Arc::new(env);
        lua.set_app_data(env.clone());
        let rt = Runtime { lua, env };
        rt.install(args).map_err(|e| Error::msg(describe(&e)))?;
        Ok(rt)
    }

    fn install(&self, args: &[(String, String)]) -> mlua::Result<()> {
        let lua = &self.lua;
        let g = lua.globals();
        if !self.env.trust {
            sandbox::restrict(lua, &g)?;
        }
        let ftl = lua.create_table()?;
        tensor::register(lua, &ftl)?;
        model::register(lua, &ftl)?;
        peft::register(lua, &ftl)?;
        fs::register(lua, &ftl)?;
        data::register(lua, &ftl)?;
        train::register(lua, &ftl)?;
        plot::register(lua, &ftl)?;
        cache::register(lua, &ftl)?;
        ftl.set("args", args::to_table(lua, args)?)?;
        ftl.set("out_dir", self.env.out_dir.display().to_string())?;
        ftl.set("recipe_dir", self.env.recipe_dir.display().to_string())?;
        ftl.set("version", env!("CARGO_PKG_VERSION"))?;
        // wall-clock seconds, the same with or without --trust (Lua's own os.clock is CPU time)
        let start = std::time::Instant::now();
        ftl.set(
            "clock",
            lua.create_function(move |_, ()| Ok(start.elapsed().as_secs_f64()))?,
        )?;
        g.set("ftl", ftl.clone())?;
        install_require(lua, &g, ftl)?;
        guard_protected_calls(lua)?;
        let cancel = self.env.cancel.clone();
        // pure-Lua code (a loop) stops soon after a cancellation too; Rust calls poll themselves
        lua.set_hook(
            mlua::HookTriggers::new().every_nth_instruction(1000),
            move |_, _| {
                if cancel.is_cancelled() {
                    Err(cancelled_err())
                } else {
                    Ok(mlua::VmState::Continue)
                }
            },
        )?;
        Ok(())
    }

    /// Runs the recipe file.
    pub fn run(&self) -> Result<Outcome> {
        let path = match (&self.env.copies, self.env.recipe.file_name()) {
            (Some(c), Some(name)) => c.join(name),
            _ => self.env.recipe.clone(),
        };
        let src = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        self.run_source(&src)
    }

    /// Runs `src` as the recipe (named after the recipe file in errors).
    pub fn run_source(&self, src: &str) -> Result<Outcome> {
        let _cancel = crate::cancel::install(&self.env.cancel);
        run::begin(&self.lua, &self.env, src);
        let (r, returned) = self.exec(src);
        run::finish(&self.lua, &self.env, &r, returned);
        r
    }

    /// `ftl compare`: runs the comparison the recipe's returned table describes.
    fn compare(&self, spec: Value) -> mlua::Result<()> {
        let Value::Table(spec) = spec else {
            return Err(mlua::Error::RuntimeError(format!(
                "{}: ftl compare needs the recipe to return the comparison's spec (return {{model = ..., \
                 train = ..., eval = ..., methods = ...}}; see require(\"compare\")), it returned {}",
                chunk_name(&self.env.recipe),
                spec.type_name()
            )));
        };
        let run: mlua::Function = self
            .lua
            .load("return require('compare').run")
            .set_name("=ftl compare")
            .eval()?;
        run.call::<()>(spec)
    }

    /// How the run ended, and what the recipe returned (in short, for the manifest).
    fn exec(&self, src: &str) -> (Result<Outcome>, Option<String>) {
        let name = chunk_name(&self.env.recipe);
        let mut chunk = self.lua.load(src).set_name(format!("@{name}"));
        if !self.env.trust {
            chunk = chunk.set_mode(mlua::chunk::ChunkMode::Text);
        }
        let mut returned = None;
        let done = if self.env.compare {
            chunk.eval::<Value>().and_then(|v| self.compare(v))
        } else {
            chunk.eval::<mlua::MultiValue>().map(|v| {
                returned = run::summary(&v);
            })
        };
        (self.outcome(done), returned)
    }

    fn outcome(&self, done: mlua::Result<()>) -> Result<Outcome> {
        match done {
            Ok(()) => Ok(Outcome::Ok),
            Err(e)
                if is_cancelled(&e)
                    || self.env.cancel.is_cancelled()
                    || crate::cancel::interrupted().is_some() =>
            {
                Ok(Outcome::Cancelled)
            }
            Err(e) => match exit_code(&e) {
                Some(0) => Ok(Outcome::Ok),
                Some(c) => Ok(Outcome::Exit(c)),
                None => match plan::ended(&e) {
                    Some(note) => {
                        if let Some(s) = plan::state(&self.lua) {
                            *s.end.lock().unwrap() = Some(note);
                        }
                        Ok(Outcome::Ok)
                    }
                    None => Err(Error::msg(describe(&e))),
                },
            },
        }
    }
}

/// `pcall`, `xpcall` and `coroutine.resume` as Lua has them, except that a cancelled run's error
/// goes through them: a recipe's error handling cannot keep a cancelled run going.
fn guard_protected_calls(lua: &Lua) -> mlua::Result<()> {
    let cancelled = lua.create_function(|_, ()| Ok(crate::cancel::requested()))?;
    let stop = lua.create_function(|_, ()| Err::<(), _>(cancelled_err()))?;
    lua.load(
        r#"
        local cancelled, stop = ...
        local pcall_, xpcall_ = pcall, xpcall
        local function after(...)
          if cancelled() then stop() end
          return ...
        end
        pcall = function(...) return after(pcall_(...)) end
        xpcall = function(f, handler, ...)
          local h = handler
          if type(handler) == "function" then
            h = function(e)
              if cancelled() then return e end
              return handler(e)
            end
          end
          return after(xpcall_(f, h, ...))
        end
        if coroutine then
          local resume = coroutine.resume
          coroutine.resume = function(...) return after(resume(...)) end
        end
        "#,
    )
    .set_name("=ftl")
    .call::<()>((cancelled, stop))
}

/// The name errors show for a file: relative to the current directory when inside it.
fn chunk_name(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    p.strip_prefix(&cwd).unwrap_or(p).display().to_string()
}

/// `require(name)`: `name.lua` next to the recipe, then the shipped stdlib; `ftl` itself.
fn install_require(lua: &Lua, g: &Table, ftl: Table) -> mlua::Result<()> {
    let loaded = lua.create_table()?;
    loaded.set("ftl", ftl)?;
    let require = lua.create_function(move |lua, name: String| {
        if let Some(v) = loaded.get::<Option<Value>>(name.as_str())? {
            return Ok(v);
        }
        let env = lua.app_data_ref::<Arc<Env>>().unwrap().clone();
        if !env.trust && !sandbox::module_name_ok(&name) {
            return Err(lua_err(
                lua,
                format!("require(\"{name}\"): a module name is dot-separated words (`a.b` loads a/b.lua next to the recipe), not a path (run with --trust to allow paths)"),
            ));
        }
        // with --trust a name holding `/` is a path (its dots, as in `../x`, left alone)
        let rel = if name.contains('/') {
            name.clone()
        } else {
            name.replace('.', "/")
        };
        let local = env.copies.as_ref().unwrap_or(&env.recipe_dir).join(format!("{rel}.lua"));
        // a link counts as there even when it leads nowhere: the check below names it
        let (src, chunk) = if local.symlink_metadata().is_ok() {
            let local = env.readable(&local).lua(lua)?;
            let s = std::fs::read_to_string(&local).map_err(|e| lua_err(lua, format!("{}: {e}", local.display())))?;
            env.required.lock().unwrap().push((local.clone(), content_hash(s.as_bytes())));
            (s, chunk_name(&local))
        } else if let Some((_, s)) = STDLIB.iter().find(|(n, _)| *n == name) {
            (s.to_string(), format!("stdlib/{name}.lua"))
        } else {
            return Err(lua_err(
                lua,
                format!(
                    "module `{name}` not found: no {} and no stdlib module of that name (stdlib: {})",
                    local.display(),
                    STDLIB.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let mut module = lua.load(src).set_name(format!("@{chunk}"));
        if !env.trust {
            module = module.set_mode(mlua::chunk::ChunkMode::Text);
        }
        let v: Value = module.call(name.clone())?;
        let v = if v.is_nil() { Value::Boolean(true) } else { v };
        loaded.set(name.as_str(), v.clone())?;
        Ok(v)
    })?;
    g.set("require", require)?;
    Ok(())
}
