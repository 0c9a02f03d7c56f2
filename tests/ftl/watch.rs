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

#[test]
fn reruns_on_save_keeps_going_after_errors_and_cancels_long_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("helper.lua"), "return {value = 1}\n").unwrap();
    let recipe = dir.join("w.lua");
    std::fs::write(
        &recipe,
        "local h = require('helper')\nio.write_file('m.txt', 'v' .. h.value)\n",
    )
    .unwrap();
    let child = ftl_bin()
        .args(["watch", "-q"])
        .arg(&recipe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _w = Watcher(child);
    let marker = dir.join("runs/w/m.txt");
    wait_for(&marker, "v1");
    // a required file changes
    save(&dir.join("helper.lua"), "return {value = 2}\n");
    wait_for(&marker, "v2");
    // a broken recipe: the last good output stays, the watcher keeps going
    save(&recipe, "local x = = 1\n");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "v2");
    // a run that never ends is cancelled by the next save
    save(
        &recipe,
        "io.write_file('m.txt', 'looping')\nwhile true do end\n",
    );
    wait_for(&marker, "looping");
    save(&recipe, "io.write_file('m.txt', 'after')\n");
    wait_for(&marker, "after");
}
