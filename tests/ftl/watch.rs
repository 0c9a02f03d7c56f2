//! `ftl watch`: reruns on save of the recipe or a required file, survives errors, cancels a run
//! that is still going when the recipe changes.

use crate::recipes::ftl_bin;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `file` holds `want` (the watcher works in the background).
fn wait_for(file: &Path, want: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(file)
            .map(|s| s == want)
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} never became {want:?} (is {:?})",
        file.display(),
        std::fs::read_to_string(file).ok()
    );
}

/// Rewrites a file the way editors do: a new file renamed over the old one.
fn save(p: &Path, content: &str) {
    let tmp = p.with_extension("swp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

/// `ftl watch -q recipe`, stopped when dropped.
fn start(recipe: &Path, stderr: Stdio) -> Watcher {
    let child = ftl_bin()
        .args(["watch", "-q"])
        .arg(recipe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Watcher(child)
}

/// The number of `run-N` directories in `out`.
fn runs(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
                .count()
        })
        .unwrap_or(0)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened: {what}");
}

#[test]
fn each_save_is_one_run_of_its_own_and_a_cancelled_run_stops_as_a_whole() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("helper.lua"), "return {value = 1}\n").unwrap();
    std::fs::write(dir.join("data.txt"), "d1").unwrap();
    let recipe = dir.join("w.lua");
    let body = |v: &str| {
        format!(
            "local h = require('helper')\nlocal d = io.read_file('data.txt')\nio.write_file('m.txt', '{v}' .. h.value .. d)\nreturn {{value = h.value}}\n"
        )
    };
    std::fs::write(&recipe, body("a")).unwrap();
    let mut w = start(&recipe, Stdio::piped());
    let pid = w.0.id();
    let out = dir.join("runs/w");
    wait_for(&out.join("run-1/m.txt"), "a1d1");
    wait_for(&out.join("latest"), "run-1\n");
    // a plain write in place: exactly one new run
    std::fs::write(&recipe, body("b")).unwrap();
    wait_for(&out.join("run-2/m.txt"), "b1d1");
    // write + rename, then a second save: the runs counted are exactly two more
    save(&recipe, &body("c"));
    wait_for(&out.join("run-3/m.txt"), "c1d1");
    save(&recipe, &body("d"));
    wait_for(&out.join("run-4/m.txt"), "d1d1");
    wait_for(&out.join("latest"), "run-4\n");
    assert_eq!(runs(&out), 4, "one run per save");
    // a required module's save and a data file's save each rerun
    save(&dir.join("helper.lua"), "return {value = 2}\n");
    wait_for(&out.join("run-5/m.txt"), "d2d1");
    save(&dir.join("data.txt"), "d2");
    wait_for(&out.join("run-6/m.txt"), "d2d2");
    wait_for(&out.join("latest"), "run-6\n");
    // a syntax error: reported with its line, run-6 stays the latest, watching goes on
    save(&recipe, "local x = 1\nlocal y = = 2\n");
    wait_until("run 7 recorded", || {
        std::fs::read_to_string(out.join("run-7/run.ron")).is_ok_and(|s| s.contains("failed"))
    });
    let ron = std::fs::read_to_string(out.join("run-7/run.ron")).unwrap();
    assert!(ron.contains("w.lua:2"), "{ron}");
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap(),
        "run-6\n"
    );
    // a run that cancels: pcall cannot swallow it and nothing after it runs
    save(
        &recipe,
        "io.write_file('started.txt', 'yes')\nlocal ok = pcall(function() while true do end end)\nio.write_file('after.txt', tostring(ok))\n",
    );
    wait_for(&out.join("run-8/started.txt"), "yes");
    save(&recipe, &body("e"));
    wait_for(&out.join("run-9/m.txt"), "e2d2");
    assert!(
        !out.join("run-8/after.txt").exists(),
        "code after the cancelled point ran"
    );
    let ron8 = std::fs::read_to_string(out.join("run-8/run.ron")).unwrap();
    assert!(ron8.contains("status: \"cancelled\""), "{ron8}");
    // the history: what changed, what the recipe returned
    let table = ftl_bin().arg("runs").arg(&out).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("changed") && table.contains("returned"),
        "{table}"
    );
    assert!(
        table.contains("w.lua:3 io.write_file('m.txt', 'a' → 'b'") || table.contains("w.lua:3"),
        "{table}"
    );
    assert!(
        table.contains("helper.lua:1 return {value = 1} → 2") || table.contains("helper.lua:1"),
        "{table}"
    );
    assert!(table.contains("data.txt"), "{table}");
    assert!(table.contains("value=2"), "{table}");
    assert!(table.contains("(cancelled)"), "{table}");
    // Ctrl-C: the watcher stops cleanly
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let status = w.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    use std::io::Read;
    w.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("run 2: w.lua:3"), "{err}");
    assert!(err.contains("stopped (Ctrl-C)"), "{err}");
    assert_eq!(runs(&out), 9, "{err}");
}

#[test]
fn a_save_during_training_cancels_it_and_the_code_after_it_never_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let recipe = dir.join("t.lua");
    let long = "local m = ftl.new('llama', {hidden_size = 16, num_hidden_layers = 1, num_attention_heads = 2, intermediate_size = 32, vocab_size = 260, tokenizer = ftl.tokenizer.bytes()})\n\
        ftl.lora(m, {targets = 'all-linear', r = 2})\n\
        local d = ftl.data.from({{text = 'hello world'}}, {format = 'text'})\n\
        io.write_file('training.txt', 'yes')\n\
        local ok = pcall(ftl.train, m, d, {max_steps = 1000000, lr = 1e-3})\n\
        ftl.save_adapter(m, 'adapter')\n\
        io.write_file('after.txt', tostring(ok))\n";
    std::fs::write(&recipe, long).unwrap();
    let _w = start(&recipe, Stdio::null());
    let out = dir.join("runs/t");
    wait_for(&out.join("run-1/training.txt"), "yes");
    wait_until("some steps recorded", || {
        out.join("run-1/metrics.jsonl").exists()
    });
    save(&recipe, "io.write_file('m.txt', 'next')\n");
    wait_for(&out.join("run-2/m.txt"), "next");
    assert!(!out.join("run-1/after.txt").exists());
    assert!(
        !out.join("run-1/adapter").exists(),
        "the half-trained adapter was saved"
    );
    let ron = std::fs::read_to_string(out.join("run-1/run.ron")).unwrap();
    assert!(ron.contains("status: \"cancelled\""), "{ron}");
}

#[test]
fn ftl_cache_keeps_a_result_across_reruns_until_its_function_changes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let recipe = dir.join("c.lua");
    let body = |tag: &str, inner: &str| {
        format!(
            "local v = ftl.cache('base', function()\n  io.write_file('computed.txt', 'yes')\n  local m = ftl.new('llama', {{hidden_size = 16, num_hidden_layers = 1, num_attention_heads = 2, intermediate_size = 32, vocab_size = 260, tokenizer = ftl.tokenizer.bytes(), seed = {inner}}})\n  return {{n = {inner}, model = m}}\nend)\n\
             local d = ftl.data.from({{{{text = 'hello world'}}}}, {{format = 'text'}})\n\
             local e = ftl.evaluate(v.model, d)\n\
             io.write_file('m.txt', '{tag}' .. v.n .. ' ' .. string.format('%.6f', e.loss))\n"
        )
    };
    std::fs::write(&recipe, body("a", "1")).unwrap();
    let _w = start(&recipe, Stdio::null());
    let out = dir.join("runs/c");
    let read = |p: &Path| {
        wait_until("m.txt", || p.exists());
        std::fs::read_to_string(p).unwrap()
    };
    let first = read(&out.join("run-1/m.txt"));
    assert!(out.join("run-1/computed.txt").exists());
    // a change outside the function: the cached model comes back, the same weights
    save(&recipe, &body("b", "1"));
    let second = read(&out.join("run-2/m.txt"));
    assert_eq!(first.replacen('a', "b", 1), second);
    assert!(!out.join("run-2/computed.txt").exists(), "recomputed");
    // the function changed: computed again
    save(&recipe, &body("c", "2"));
    let third = read(&out.join("run-3/m.txt"));
    assert!(third.starts_with("c2 "), "{third}");
    assert!(out.join("run-3/computed.txt").exists());
}

#[test]
fn tokenized_data_is_kept_across_reruns_until_the_file_the_tokenizer_or_the_template_changes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(crate::common::fixture("llama-tiny")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let line = |i: &str, o: &str| {
        format!("{{\"instruction\": \"{i}\", \"input\": \"\", \"output\": \"{o}\"}}\n")
    };
    let v1 = line("Say hello.", "Hello there, friend.") + &line("Count.", "One two three.");
    let v2 = line("Name a colour.", "Blue, like the sea.") + &line("Count.", "One two three.");
    std::fs::write(dir.join("d.jsonl"), &v1).unwrap();
    let recipe = dir.join("e.lua");
    let body = |tag: &str, template: &str| {
        format!(
            "local m = ftl.load(ftl.args.model)\n\
             local d = ftl.data.jsonl('d.jsonl', {{format = 'instruction'{template}}})\n\
             local e = ftl.evaluate(m, d)\n\
             io.write_file('m.txt', '{tag} ' .. string.format('%.6f', e.loss))\n"
        )
    };
    // what a fresh process computes, for each state of the data and recipe
    let fresh = |tag: &str, template: &str| -> String {
        let r = dir.join(format!("fresh-{tag}.lua"));
        std::fs::write(&r, body(tag, template)).unwrap();
        let out = dir.join(format!("fresh-out-{tag}"));
        let st = ftl_bin()
            .args(["run", "-q"])
            .arg(&r)
            .arg("--out")
            .arg(&out)
            .arg(format!("model={}", model.display()))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read_to_string(out.join("m.txt")).unwrap()
    };
    let tpl = ", template = 'Q: {instruction}\\nA: '";
    let want_v1 = fresh("a", "");
    std::fs::write(&recipe, body("a", "")).unwrap();
    let mut w = Watcher(
        ftl_bin()
            .args(["watch", "-q"])
            .arg(&recipe)
            .arg(format!("model={}", model.display()))
            .env("FTL_LOG", "ftl=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = dir.join("runs/e");
    let read = |n: usize| {
        let p = out.join(format!("run-{n}/m.txt"));
        wait_until("m.txt", || p.exists());
        std::fs::read_to_string(p).unwrap()
    };
    assert_eq!(read(1), want_v1);
    // a change elsewhere: the tokenized data comes from run 1, the loss is the same
    save(&recipe, &body("b", ""));
    assert_eq!(read(2), want_v1.replacen('a', "b", 1));
    // the data file changed: tokenized afresh, the loss a fresh process gets
    std::fs::write(dir.join("d.jsonl"), &v2).unwrap();
    let want_v2 = fresh("b", "");
    assert_ne!(want_v1.replacen('a', "b", 1), want_v2);
    assert_eq!(read(3), want_v2);
    // the template changed: tokenized afresh
    save(&recipe, &body("c", tpl));
    assert_eq!(read(4), fresh("c", tpl));
    // the tokenizer file saved again (the same vocabulary): tokenized afresh, then kept
    let tj = model.join("tokenizer.json");
    save(&tj, &std::fs::read_to_string(&tj).unwrap());
    assert_eq!(read(5), fresh("c", tpl));
    save(&recipe, &body("d", tpl));
    assert_eq!(read(6), fresh("d", tpl));
    unsafe {
        libc::kill(w.0.id() as i32, libc::SIGINT);
    }
    assert!(w.0.wait().unwrap().success());
    let mut err = String::new();
    use std::io::Read;
    w.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // kept in runs 2 and 6 only: runs 3, 4 and 5 changed what tokenizing reads
    assert_eq!(
        err.matches("tokenized examples kept from an earlier run")
            .count(),
        2,
        "{err}"
    );
}

#[test]
fn r_enter_and_sigusr1_rerun_by_hand_and_q_enter_quits() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let recipe = dir.join("h.lua");
    std::fs::write(&recipe, "io.write_file('m.txt', 'ran')\n").unwrap();
    let mut w = Watcher(
        ftl_bin()
            .args(["watch", "-q"])
            .arg(&recipe)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = dir.join("runs/h");
    wait_for(&out.join("run-1/m.txt"), "ran");
    wait_for(&out.join("latest"), "run-1\n");
    use std::io::Write;
    let mut stdin = w.0.stdin.take().unwrap();
    stdin.write_all(b"r\n").unwrap();
    stdin.flush().unwrap();
    wait_for(&out.join("run-2/m.txt"), "ran");
    wait_for(&out.join("latest"), "run-2\n");
    unsafe {
        libc::kill(w.0.id() as i32, libc::SIGUSR1);
    }
    wait_for(&out.join("run-3/m.txt"), "ran");
    wait_for(&out.join("latest"), "run-3\n");
    stdin.write_all(b"q\n").unwrap();
    stdin.flush().unwrap();
    let status = w.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(runs(&out), 3, "one run per request");
}
