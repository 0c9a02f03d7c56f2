//! The sandbox without `--trust`: one escape attempt of each kind through every function that
//! touches files, each a clear error naming the path (exit 1); the places a recipe may use; no
//! processes, C modules, bytecode or debug library; the Lua heap's memory limit.

use crate::common::fixture;
use crate::hub::{cache_model, ftl_with_cache, MAIN};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// `T/recipe` (the recipe's directory, with links in and out), `T/outside` (what a recipe must
/// not reach), `T/cache` (an HF cache) and `T/out` (the output directory).
struct Layout {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let (recipe, outside) = (root.join("recipe"), root.join("outside"));
        for d in [&recipe.join("data"), &recipe.join("lib"), &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        std::fs::write(outside.join("d.jsonl"), "{\"text\": \"secret\"}\n").unwrap();
        std::fs::write(outside.join("x.json"), "{\"a\": 1}").unwrap();
        std::fs::write(outside.join("evil.lua"), "return 'evil'").unwrap();
        std::fs::copy(
            fixture("llama-tiny").join("model.safetensors"),
            outside.join("t.safetensors"),
        )
        .unwrap();
        for (name, to) in [("llama-tiny", "model"), ("lora-qv", "adapter")] {
            std::fs::create_dir_all(outside.join(to)).unwrap();
            for e in std::fs::read_dir(fixture(name)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, outside.join(to).join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(recipe.join("data/ok.txt"), "inside").unwrap();
        std::fs::write(recipe.join("lib/helper.lua"), "return 'helper'").unwrap();
        symlink("../outside/secret.txt", recipe.join("leak.txt")).unwrap();
        symlink("../outside", recipe.join("leakdir")).unwrap();
        symlink("../outside/evil.lua", recipe.join("evil.lua")).unwrap();
        symlink("data/ok.txt", recipe.join("inside.txt")).unwrap();
        symlink("lib/helper.lua", recipe.join("helper.lua")).unwrap();
        cache_model(
            &root.join("cache"),
            "org/tiny",
            "llama-tiny",
            MAIN,
            &["main"],
        );
        Layout { _t: t, root }
    }

    fn outside(&self) -> String {
        self.root.join("outside").display().to_string()
    }

    /// Runs `src` as `recipe/r.lua` with `--out T/out` and `model=` a fixture (a command-line
    /// path), plus `extra` arguments.
    fn run(&self, src: &str, extra: &[&str]) -> (i32, String, String) {
        let r = self.root.join("recipe/r.lua");
        std::fs::write(&r, src).unwrap();
        let model = format!("model={}", fixture("llama-tiny").display());
        let out = self.root.join("out");
        let mut args = vec!["run", "-q", "--out", out.to_str().unwrap()];
        args.push(r.to_str().unwrap());
        args.push(&model);
        args.extend_from_slice(extra);
        ftl_with_cache(&args, &self.root, &self.root.join("cache"))
    }
}

const PRELUDE: &str = "local ftl = require('ftl')\nlocal m = ftl.load(ftl.args.model)\n";

#[test]
fn every_file_touching_function_refuses_an_escape_naming_the_path() {
    let l = Layout::new();
    let o = l.outside();
    // (the line at 3, after the prelude; what the error must name)
    let cases: Vec<(String, String)> = vec![
        // io
        (
            "io.read_file('/etc/hostname')".into(),
            "/etc/hostname".into(),
        ),
        (
            "io.read_file('../outside/secret.txt')".into(),
            format!("{o}/secret.txt"),
        ),
        ("io.read_file('leak.txt')".into(), "leak.txt".into()),
        (
            "io.write_file('../outside/w.txt', 'x')".into(),
            format!("{o}/w.txt"),
        ),
        (
            "io.write_file(ftl.recipe_dir .. '/w.txt', 'x')".into(),
            "recipe/w.txt".into(),
        ),
        ("io.open('/etc/hostname')".into(), "/etc/hostname".into()),
        ("io.lines('/etc/hostname')".into(), "/etc/hostname".into()),
        // ftl.fs, ftl.json
        (
            "ftl.fs.read('leakdir/secret.txt')".into(),
            "leakdir/secret.txt".into(),
        ),
        ("ftl.fs.list('../outside')".into(), o.clone()),
        (
            "ftl.fs.exists('/etc/hostname')".into(),
            "/etc/hostname".into(),
        ),
        ("ftl.fs.is_dir('leakdir')".into(), "leakdir".into()),
        (
            "ftl.json.read('leakdir/x.json')".into(),
            "leakdir/x.json".into(),
        ),
        // ftl.data
        (
            "ftl.data.jsonl('../outside/d.jsonl')".into(),
            format!("{o}/d.jsonl"),
        ),
        ("ftl.data.text('leakdir/*.txt')".into(), "leakdir".into()),
        ("ftl.data.text('*.txt')".into(), "leak.txt".into()),
        // ftl.tensor
        (
            "ftl.tensor.load('../outside/t.safetensors')".into(),
            format!("{o}/t.safetensors"),
        ),
        (
            "ftl.tensor.metadata('leakdir/t.safetensors')".into(),
            "leakdir/t.safetensors".into(),
        ),
        (
            "ftl.tensor.save('../outside/s.safetensors', {})".into(),
            format!("{o}/s.safetensors"),
        ),
        // models, adapters, tokenizers
        ("ftl.load('../outside/model')".into(), format!("{o}/model")),
        ("ftl.load('leakdir/model')".into(), "leakdir/model".into()),
        (
            "ftl.load_adapter(m, '../outside/adapter')".into(),
            format!("{o}/adapter"),
        ),
        (
            "ftl.tokenizer.load('leakdir/model')".into(),
            "leakdir/model".into(),
        ),
        (
            "ftl.new('llama', {hidden_size = 8, tokenizer = 'leakdir/model/tokenizer.json'})".into(),
            "leakdir/model/tokenizer.json".into(),
        ),
        ("m:save('../outside/saved')".into(), format!("{o}/saved")),
        (
            "ftl.train(m, ftl.data.from({{text = 'a b'}}, {format = 'text'}), {max_steps = 1, lr = 1e-3, save = {dir = '/tmp/ftl-escape-ckpt'}})".into(),
            "/tmp/ftl-escape-ckpt".into(),
        ),
        (
            "ftl.lora(m, {r = 2}); m:save_adapter('/tmp/ftl-escape-adapter')".into(),
            "/tmp/ftl-escape-adapter".into(),
        ),
        // require and package
        ("require('../x')".into(), "../x".into()),
        ("require('evil')".into(), "evil.lua".into()),
        (
            "package.path = '../outside/?.lua;' .. package.path".into(),
            "../outside/?.lua".into(),
        ),
        (
            "package.loadlib('/lib/libc.so.6', 'puts')".into(),
            "/lib/libc.so.6".into(),
        ),
    ];
    for (code_line, want) in &cases {
        let src = format!("{PRELUDE}{code_line}\nprint('escaped')\n");
        let (code, out, err) = l.run(&src, &[]);
        assert_eq!(code, 1, "`{code_line}` ran: {out}\n{err}");
        assert!(
            err.contains("r.lua:3") && err.contains(want.as_str()) && err.contains("--trust"),
            "`{code_line}`: the error must name `{want}` and the line:\n{err}"
        );
        assert!(!out.contains("escaped"));
    }
    for f in ["w.txt", "s.safetensors", "saved"] {
        assert!(!l.root.join("outside").join(f).exists(), "{f} was written");
    }
    assert!(!l.root.join("recipe/w.txt").exists());
    for p in ["/tmp/ftl-escape-adapter", "/tmp/ftl-escape-ckpt"] {
        assert!(!Path::new(p).exists(), "{p} was written");
    }
    // the links' targets are named too
    let (_, _, err) = l.run(&format!("{PRELUDE}io.read_file('leak.txt')\n"), &[]);
    assert!(
        err.contains(&format!("resolves to {o}/secret.txt")),
        "{err}"
    );
}

#[test]
fn no_processes_c_modules_bytecode_or_debug() {
    let l = Layout::new();
    for (code_line, want) in [
        ("os.execute('touch /tmp/ftl-pwned')", "processes"),
        ("io.popen('ls')", "processes"),
        ("os.remove(ftl.recipe_dir .. '/data/ok.txt')", "os.remove"),
        ("string.dump(print)", "bytecode"),
        ("local s = 'x'; s:dump()", "bytecode"),
        ("load('\\27Lua\\x54\\0')", "binary chunks"),
        ("debug.getinfo(1)", "debug"),
        ("dofile('/etc/hostname')", "dofile"),
    ] {
        let (code, out, err) = l.run(&format!("{PRELUDE}{code_line}\n"), &[]);
        assert_eq!(code, 1, "`{code_line}` ran: {out}\n{err}");
        assert!(err.contains(want), "`{code_line}`:\n{err}");
    }
    assert!(l.root.join("recipe/data/ok.txt").exists());
    // a recipe file of bytecode does not run
    let r = l.root.join("recipe/r.lua");
    std::fs::write(&r, b"\x1bLuaT\x00").unwrap();
    let cache = l.root.join("cache");
    let (code, _, err) = ftl_with_cache(&["run", "-q", r.to_str().unwrap()], &l.root, &cache);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("binary"), "{err}");
}

#[test]
fn the_allowed_places_work() {
    let l = Layout::new();
    let snapshot = l.root.join(format!(
        "cache/models--org--tiny/snapshots/{MAIN}/config.json"
    ));
    let data = l.root.join("outside/d.jsonl").display().to_string();
    let src = format!(
        r#"{PRELUDE}-- a command-line path, the HF cache (a snapshot's link into blobs/), a link that stays inside
assert(ftl.data.jsonl(ftl.args.data, {{format = "text"}}):len() == 1)
assert(ftl.json.read("{snap}").model_type == "llama")
assert(ftl.load("org/tiny"):info().arch == "llama")
assert(io.read_file("inside.txt") == "inside")
assert(require("helper") == "helper")
assert(ftl.data.text("data/*.txt", {{block = 4}}))
-- the output directory, written and read back
io.write_file("notes/a.txt", "hello")
assert(io.read_file(ftl.out_dir .. "/notes/a.txt") == "hello")
ftl.tensor.save("t.safetensors", {{x = ftl.tensor.from({{1, 2}})}})
assert(ftl.tensor.load(ftl.out_dir .. "/t.safetensors").x:sum() == 3)
ftl.lora(m, {{r = 2}})
m:save_adapter("adapter")
assert(ftl.fs.exists(ftl.out_dir .. "/adapter/adapter_config.json"))
print("all allowed")
"#,
        snap = snapshot.display()
    );
    let (code, out, err) = l.run(&src, &[&format!("data={data}")]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("all allowed"), "{out}");
    // with --trust the recipe reads where it likes
    let r = l.root.join("recipe/t.lua");
    std::fs::write(
        &r,
        "assert(io.open('outside/secret.txt'))\nprint(require('ftl').fs.read('leak.txt'))\n",
    )
    .unwrap();
    let (code, out, err) = ftl_with_cache(
        &["run", "-q", "--trust", r.to_str().unwrap()],
        &l.root,
        &l.root.join("cache"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("secret"), "{out}");
}

#[test]
fn plan_mode_keeps_the_sandbox() {
    let l = Layout::new();
    let r = l.root.join("recipe/r.lua");
    std::fs::write(&r, format!("{PRELUDE}ftl.load('leakdir/model')\n")).unwrap();
    let model = format!("model={}", fixture("llama-tiny").display());
    let (code, _, err) = ftl_with_cache(
        &["check", r.to_str().unwrap(), &model],
        &l.root,
        &l.root.join("cache"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("leakdir/model") && err.contains("--trust"),
        "{err}"
    );
}

#[test]
fn the_lua_heap_has_a_limit() {
    let l = Layout::new();
    let r = l.root.join("recipe/big.lua");
    std::fs::write(
        &r,
        "local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end\n",
    )
    .unwrap();
    let o = crate::recipes::ftl_bin()
        .args(["run", "-q", r.to_str().unwrap()])
        .env("FTL_LUA_MEMORY", "32MiB")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Lua heap reached its limit of 32.0 MiB") && err.contains("FTL_LUA_MEMORY"),
        "{err}"
    );
    // the default: a string past 1 GiB is refused before it is built
    std::fs::write(&r, "local s = string.rep('x', 2^30 + 1)\nprint(#s)\n").unwrap();
    let cache = l.root.join("cache");
    let (code, _, err) = ftl_with_cache(&["run", "-q", r.to_str().unwrap()], &l.root, &cache);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("limit of 1.0 GiB"), "{err}");
    // a bad setting is named
    let o = crate::recipes::ftl_bin()
        .args(["run", "-q", r.to_str().unwrap()])
        .env("FTL_LUA_MEMORY", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("FTL_LUA_MEMORY=lots"), "{err}");
}
