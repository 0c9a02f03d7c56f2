//! What the fuzz targets share: a scratch directory per process, a recipe runtime kept across
//! inputs, the rule that a failure is a clear error (naming the recipe line or the file), and a
//! decoder that turns fuzz bytes into Lua option tables.

use ftl::lua::{Env, Outcome, Runtime};
use mlua::{Lua, Table, Value};
use std::path::{Path, PathBuf};

/// The small models, adapters and checkpoint the targets keep fixed (`make-files.lua` wrote them).
pub fn files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("files")
}

/// This process's scratch directory (kept for the process: AFL runs many inputs in one).
pub fn scratch() -> &'static Path {
    use std::sync::OnceLock;
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let t = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        };
        t.expect("a scratch directory")
    })
    .path()
}

/// Writes `bytes` to `name` in the scratch directory; its path.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A recipe runtime for `fuzz.lua` in the scratch directory (the sandboxed one recipes get),
/// kept across inputs (a panic ends the process, so no state outlives one).
pub fn runtime() -> std::panic::AssertUnwindSafe<Runtime> {
    let recipe = scratch().join("fuzz.lua");
    std::fs::write(&recipe, "").unwrap();
    let mut env = Env::new(&recipe, Some(&scratch().join("out")), false);
    env.quiet = true;
    env.extra_roots.push(files().canonicalize().unwrap());
    std::panic::AssertUnwindSafe(Runtime::new(env, &[]).unwrap())
}

/// Runs `src`; an error must say where: the recipe line (`fuzz.lua:N`) or one of `paths`.
/// Anything else (a panic, an error naming nothing) aborts, which AFL records as a crash.
pub fn run_clear(rt: &Runtime, src: &str, paths: &[&Path]) {
    match rt.run_source(src) {
        Ok(Outcome::Ok | Outcome::Exit(_)) => {}
        Ok(Outcome::Cancelled) => fail("cancelled without a cancellation", ""),
        Err(e) => {
            let msg = format!("{e:#}");
            clear(&msg, paths);
        }
    }
}

/// An error message names the recipe line or one of `paths`.
pub fn clear(msg: &str, paths: &[&Path]) {
    let named = msg.contains("fuzz.lua:")
        || paths.iter().any(|p| {
            let p = p.display().to_string();
            msg.contains(&p)
                || Path::new(&p)
                    .file_name()
                    .is_some_and(|n| msg.contains(&*n.to_string_lossy()))
        });
    if msg.trim().is_empty() || !named {
        fail(
            "an error that names neither the recipe line nor the file",
            msg,
        );
    }
}

pub fn fail(what: &str, msg: &str) -> ! {
    eprintln!("fuzz: {what}: {msg}");
    std::process::abort()
}

/// Fuzz bytes read front to back; past the end every read is zero.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |a, _| a << 8 | self.u8() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A string of up to 64 bytes (its length first).
    pub fn str(&mut self) -> Vec<u8> {
        let n = (self.u8() % 65) as usize;
        (0..n).map(|_| self.u8()).collect()
    }
}

/// Words a table's keys and strings are drawn from: every option key the recipe API names, the
/// strings its options take, and module paths.
pub fn words() -> Vec<String> {
    let mut w: Vec<String> = ftl::lua::api::all_options()
        .flat_map(|c| c.fields.iter().map(|f| f.key.to_string()))
        .collect();
    for s in [
        "all-linear",
        "q_proj",
        "v_proj",
        "k_proj",
        "o_proj",
        "down_proj",
        "up_proj",
        "gate_proj",
        "lm_head",
        "embed_tokens",
        "model.layers.{0..1}.self_attn.*",
        "re:.*proj",
        "re:(",
        "**",
        "0-1",
        "1-0",
        "cosine",
        "linear",
        "constant",
        "adamw",
        "sgd",
        "skip",
        "stop",
        "text",
        "chat",
        "completion",
        "classification",
        "f32",
        "bf16",
        "f16",
        "cpu",
        "cuda",
        "auto",
        "gaussian",
        "pissa",
        "olora",
        "loftq",
        "true",
        "",
    ] {
        w.push(s.into());
    }
    w.sort();
    w.dedup();
    w
}

/// A Lua value decoded from `b` (tables nest up to `depth`).
pub fn value(lua: &Lua, b: &mut Bytes, words: &[String], depth: usize) -> mlua::Result<Value> {
    Ok(match b.u8() % 12 {
        0 => Value::Boolean(true),
        1 => Value::Boolean(false),
        2 => Value::Integer(b.u8() as i64 - 8),
        3 => Value::Integer(b.u64() as i64),
        4 => Value::Number(f64::from_bits(b.u64())),
        5 => Value::Number(
            [0.0, -1.0, 0.5, 1e-3, 1e300, f64::NAN, f64::INFINITY, -0.0][b.u8() as usize % 8],
        ),
        6 | 7 => Value::String(lua.create_string(&words[b.u8() as usize % words.len()])?),
        8 => Value::String(lua.create_string(b.str())?),
        9 | 10 if depth > 0 => Value::Table(table(lua, b, words, depth - 1)?),
        11 if depth > 0 => {
            let t = lua.create_table()?;
            for i in 1..=(b.u8() % 5) as i64 {
                t.raw_set(i, value(lua, b, words, depth - 1)?)?;
            }
            Value::Table(t)
        }
        _ => Value::Integer(b.u8() as i64),
    })
}

/// A table of up to 8 keys (mostly the API's own), each with a decoded value.
pub fn table(lua: &Lua, b: &mut Bytes, words: &[String], depth: usize) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for _ in 0..(b.u8() % 9) {
        let k = b.u8();
        let key = if k < 224 {
            Value::String(lua.create_string(&words[k as usize % words.len()])?)
        } else if k < 240 {
            Value::String(lua.create_string(b.str())?)
        } else {
            Value::Integer(k as i64 - 239)
        };
        let v = value(lua, b, words, depth)?;
        t.raw_set(key, v)?;
    }
    Ok(t)
}
