//! Models and adapters by hub id (`org/name`, `org/name@rev`), read offline from a Hugging Face
//! cache laid out as huggingface_hub writes it; a path that exists wins over a hub id.

use crate::common::fixture;
use crate::recipes::{ftl_bin, repo};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const MAIN: &str = "1111111111111111111111111111111111111111";
pub const TAGGED: &str = "2222222222222222222222222222222222222222";

/// Adds `fixture`'s files to the cache at `root` as repo `org/name`, snapshot `commit`: each
/// file a blob named by its hash, linked from the snapshot as `../../blobs/<hash>`; `refs` name
/// the commit (`main`, a tag).
pub fn cache_model(root: &Path, repo_id: &str, fixture_name: &str, commit: &str, refs: &[&str]) {
    let dir = root.join(format!("models--{}", repo_id.replace('/', "--")));
    let snap = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        std::fs::write(dir.join("blobs").join(&sha), &bytes).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{sha}"),
            snap.join(p.file_name().unwrap()),
        )
        .unwrap();
    }
    for r in refs {
        let p = dir.join("refs").join(r);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, commit).unwrap();
    }
}

/// A cache with `org/tiny` (llama-tiny on main, gpt2-tiny tagged v1) and `org/tiny-lora`.
pub fn fake_cache(root: &Path) {
    cache_model(root, "org/tiny", "llama-tiny", MAIN, &["main"]);
    cache_model(root, "org/tiny", "gpt2-tiny", TAGGED, &["v1"]);
    cache_model(root, "org/tiny-lora", "lora-qv", MAIN, &["main"]);
}

/// `ftl ARGS` in `dir` with the cache at `cache`: (exit code, stdout, stderr).
pub fn ftl_with_cache(args: &[&str], dir: &Path, cache: &Path) -> (i32, String, String) {
    let o = ftl_bin()
        .args(args)
        .current_dir(dir)
        .env("HF_HUB_CACHE", cache)
        .env_remove("FTL_LUA_MEMORY")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn recipe(dir: &Path, src: &str) {
    std::fs::write(dir.join("r.lua"), src).unwrap();
}

#[test]
fn a_recipe_loads_a_model_and_an_adapter_by_hub_id() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fake_cache(&cache);
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    recipe(
        &work,
        r#"local ftl = require("ftl")
local m = ftl.load("org/tiny")
print("arch " .. m:info().arch)
local ids = m.tokenizer:encode("hello")
local before = m:forward(ids):sum()
ftl.load_adapter(m, "org/tiny-lora")
print("adapters " .. #m:adapters())
print("changed " .. tostring(m:forward(ids):sum() ~= before))
"#,
    );
    let (code, out, err) = ftl_with_cache(&["run", "-q", "r.lua"], &work, &cache);
    assert_eq!(code, 0, "{out}\n{err}");
    for want in ["arch llama", "adapters 1", "changed true"] {
        assert!(out.contains(want), "missing `{want}` in\n{out}");
    }
    // HF_HOME/hub is the root when HF_HUB_CACHE is unset
    let home = t.path().join("hfhome");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(&cache, home.join("hub")).unwrap();
    let o = ftl_bin()
        .args(["run", "-q", "r.lua"])
        .current_dir(&work)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("arch llama"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_revision_selects_its_snapshot_by_tag_or_commit() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fake_cache(&cache);
    recipe(
        t.path(),
        &format!(
            r#"local ftl = require("ftl")
print("main " .. ftl.load("org/tiny"):info().arch)
print("v1 " .. ftl.load("org/tiny@v1"):info().arch)
print("hash " .. ftl.load("org/tiny@{TAGGED}"):info().arch)
"#
        ),
    );
    let (code, out, err) = ftl_with_cache(&["run", "-q", "r.lua"], t.path(), &cache);
    assert_eq!(code, 0, "{out}\n{err}");
    for want in ["main llama", "v1 gpt2", "hash gpt2"] {
        assert!(out.contains(want), "missing `{want}` in\n{out}");
    }
}

#[test]
fn a_model_missing_from_the_cache_says_where_ftl_looked_and_how_to_get_it() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fake_cache(&cache);
    recipe(
        t.path(),
        "local ftl = require('ftl')\n\nftl.load('org/absent')\n",
    );
    let (code, _, err) = ftl_with_cache(&["run", "-q", "r.lua"], t.path(), &cache);
    assert_eq!(code, 1, "{err}");
    for want in [
        "r.lua:3",
        "org/absent",
        &cache.join("models--org--absent").display().to_string(),
        "HF_HUB_CACHE",
        "huggingface-cli download org/absent",
        "snapshot_download('org/absent')",
        "as a path",
    ] {
        assert!(err.contains(want), "missing `{want}` in\n{err}");
    }
    // a revision the cache does not have: its ref file and the revisions there are
    recipe(t.path(), "require('ftl').load('org/tiny@v9')\n");
    let (code, _, err) = ftl_with_cache(&["run", "-q", "r.lua"], t.path(), &cache);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refs/v9") && err.contains("main, v1") && err.contains("--revision v9"),
        "{err}"
    );
}

#[test]
fn a_local_directory_named_like_a_hub_id_wins() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fake_cache(&cache);
    let local = t.path().join("org/tiny");
    std::fs::create_dir_all(&local).unwrap();
    for e in std::fs::read_dir(fixture("gpt2-tiny")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, local.join(p.file_name().unwrap())).unwrap();
    }
    recipe(
        t.path(),
        "print('arch ' .. require('ftl').load('org/tiny'):info().arch)\n",
    );
    let (code, out, err) = ftl_with_cache(&["run", "-q", "r.lua"], t.path(), &cache);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("arch gpt2"), "{out}");
}

#[test]
fn check_inspect_and_merge_take_hub_ids() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fake_cache(&cache);
    recipe(
        t.path(),
        r#"local ftl = require("ftl")
local m = ftl.load("org/tiny")
ftl.lora(m, {targets = {"q_proj", "v_proj"}, r = 4})
local d = ftl.data.from({{text = "hello there"}, {text = "general kenobi"}}, {format = "text"})
ftl.train(m, d, {lr = 1e-3, max_steps = 2, batch_size = 2})
m:save_adapter("lora")
"#,
    );
    let (code, out, err) = ftl_with_cache(&["check", "r.lua"], t.path(), &cache);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("lora \"default\": 4 modules") && out.contains("plan complete"),
        "{out}"
    );
    let (code, out, err) = ftl_with_cache(&["inspect", "org/tiny@v1", "c_attn"], &repo(), &cache);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gpt2"), "{out}");
    let (code, _, err) = ftl_with_cache(&["inspect", "org/absent"], &repo(), &cache);
    assert_eq!(code, 1);
    assert!(err.contains("huggingface-cli download org/absent"), "{err}");
    let merged = t.path().join("merged");
    let (code, out, err) = ftl_with_cache(
        &[
            "merge",
            "org/tiny",
            "org/tiny-lora",
            merged.to_str().unwrap(),
        ],
        t.path(),
        &cache,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(merged.join("config.json").is_file() && merged.join("model.safetensors").is_file());
}
