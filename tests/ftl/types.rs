//! `ftl types` through the binary (stubs naming every function and option, `.luarc.json` merged or
//! left alone), and option values of the wrong type named with the recipe's line.

use crate::common::fixture;
use crate::recipes::ftl_bin;
use ftl::lua::api;
use std::path::Path;

fn ftl(args: &[&str], dir: &Path) -> (i32, String, String) {
    let o = ftl_bin().args(args).current_dir(dir).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn ftl_types_writes_stubs_of_every_function_and_option() {
    let t = tempfile::tempdir().unwrap();
    let (code, out, err) = ftl(&["types", "."], t.path());
    assert_eq!(code, 0, "{out}{err}");
    let stubs = std::fs::read_to_string(t.path().join("types/ftl.lua")).unwrap();
    assert!(stubs.starts_with("---@meta"), "{}", &stubs[..80]);
    for c in api::OPTIONS {
        assert!(
            stubs.contains(&format!("---@class {}", c.class)),
            "no class {}",
            c.class
        );
        for f in c.fields {
            assert!(
                stubs.contains(&format!("---@field {}? {}", f.key, f.ty)),
                "{}: no field {}",
                c.class,
                f.key
            );
        }
    }
    for f in api::FUNCS {
        let sep = if f.method { ':' } else { '.' };
        let owner = if f.method {
            f.owner.trim_start_matches("ftl.")
        } else {
            f.owner
        };
        assert!(
            stubs.contains(&format!("function {owner}{sep}{}(", f.name)),
            "no function {owner}{sep}{}",
            f.name
        );
    }
    for (name, _) in ftl::lua::STDLIB {
        assert!(
            t.path().join(format!("types/{name}.lua")).is_file(),
            "{name}"
        );
    }
    let rc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join(".luarc.json")).unwrap())
            .unwrap();
    assert_eq!(rc["workspace.library"], serde_json::json!(["types"]));
    assert_eq!(rc["diagnostics.globals"], serde_json::json!(["ftl"]));
    assert_eq!(rc["runtime.version"], "Lua 5.4");
}

#[test]
fn ftl_types_merges_into_a_luarc_and_leaves_a_broken_one_alone() {
    let t = tempfile::tempdir().unwrap();
    let rc = t.path().join(".luarc.json");
    std::fs::write(
        &rc,
        r#"{"workspace": {"library": ["mine"]}, "runtime.version": "LuaJIT", "hint.enable": true}"#,
    )
    .unwrap();
    let (code, out, err) = ftl(&["types"], t.path());
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rc).unwrap()).unwrap();
    // the nested form stays nested, the user's settings stay, ftl's are added once
    assert_eq!(
        v["workspace"]["library"],
        serde_json::json!(["mine", "types"])
    );
    assert!(v.get("workspace.library").is_none(), "{v}");
    assert_eq!(v["runtime.version"], "LuaJIT");
    assert_eq!(v["hint.enable"], true);
    let (code, _, err) = ftl(&["types"], t.path());
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rc).unwrap()).unwrap();
    assert_eq!(again, v, "a second run changes nothing");

    let t = tempfile::tempdir().unwrap();
    let rc = t.path().join(".luarc.json");
    std::fs::write(&rc, "{broken").unwrap();
    let (code, _, err) = ftl(&["types", "."], t.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(".luarc.json") && err.contains("not valid JSON"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "{broken");
    assert!(!t.path().join("types").exists(), "nothing written");

    let f = t.path().join("file");
    std::fs::write(&f, "x").unwrap();
    let (code, _, err) = ftl(&["types", "file"], t.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_option_the_type_and_the_line() {
    let t = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny").display().to_string();
    let cases = [
        (
            "ftl.lora(m, {r = \"8\", targets = {\"q_proj\"}})",
            "option `r` must be an integer, got the string \"8\"",
        ),
        (
            "ftl.lora(m, {r = 4.5, targets = {\"q_proj\"}})",
            "option `r` must be an integer",
        ),
        (
            "ftl.lora(m, {targets = 3})",
            "ftl.lora: option `targets` must be",
        ),
        (
            "ftl.train(m, ftl.data.from({{text = 'a b'}}, {format = 'text'}), {max_steps = 1, on_step = 3})",
            "ftl.train: option `on_step` must be a function",
        ),
        (
            "ftl.train(m, ftl.data.from({{text = 'a b'}}, {format = 'text'}), {lr = 'high'})",
            "option `lr` must be a number",
        ),
        // text that is not UTF-8, and an argument mlua itself cannot convert: still the line
        (
            "ftl.lora(m, {targets = '\\xff\\xfe'})",
            "r.lua:4: ftl.lora: option `targets` is not valid UTF-8 text",
        ),
        (
            "m:generate({1, 2}, {})",
            "r.lua:4: bad argument #2 to `ModelHandle.generate`",
        ),
    ];
    for (line, want) in cases {
        let src =
            format!("local ftl = require(\"ftl\")\nlocal m = ftl.load(ftl.args.model)\n\n{line}\n");
        std::fs::write(t.path().join("r.lua"), &src).unwrap();
        for verb in ["run", "check"] {
            let (code, out, err) = ftl(&[verb, "r.lua", &format!("model={model}")], t.path());
            assert_eq!(code, 1, "{verb} {line}: {out}{err}");
            assert!(err.contains("r.lua:4:"), "{verb} {line}: {err}");
            assert!(err.contains(want), "{verb} {line}: want {want:?} in {err}");
        }
    }
}
