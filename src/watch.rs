//! `ftl watch`: reruns a recipe whenever it, or a file it `require`d, is saved. A short settle
//! delay folds an editor's burst of writes into one rerun; a change during a run cancels it (the
//! training loop polls the flag); an error is printed and the last good outputs stay.

use crate::cli::RunArgs;
use crate::lua::{parse_args, Env, Outcome, Runtime};
use anyhow::{Context, Result};
use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode, DebounceEventResult};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct RunDone {
    result: std::result::Result<Outcome, String>,
    required: Vec<(PathBuf, u64)>,
    secs: f64,
}

/// The content of a watched file, to tell a save from a mere read (inotify reports both).
fn fingerprint(p: &Path) -> Option<u64> {
    std::fs::read(p).ok().map(|b| crate::lua::content_hash(&b))
}

fn absolute(p: &Path) -> PathBuf {
    crate::lua::normalize(&std::env::current_dir().unwrap_or_default().join(p))
}

/// One run in its own thread (a Lua state lives on one thread); `cancel` stops it early.
fn spawn_run(a: RunArgs, quiet: bool, cancel: Arc<AtomicBool>) -> std::thread::JoinHandle<RunDone> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut required = Vec::new();
        let result = (|| -> std::result::Result<Outcome, String> {
            let args = parse_args(&a.args).map_err(|e| e.to_string())?;
            let mut env = Env::new(&a.recipe, a.out.as_deref(), a.trust);
            env.quiet = quiet;
            env.cancel = cancel.clone();
            let rt = Runtime::new(env, &args).map_err(|e| e.to_string())?;
            rt.interrupt_on(cancel);
            let r = rt.run().map_err(|e| e.to_string());
            required = rt.env.required.lock().unwrap().clone();
            r
        })();
        RunDone {
            result,
            required,
            secs: start.elapsed().as_secs_f64(),
        }
    })
}

pub fn watch(a: &RunArgs, quiet: bool) -> Result<ExitCode> {
    let recipe = absolute(&a.recipe);
    if !recipe.exists() {
        anyhow::bail!("{}: no such recipe file", a.recipe.display());
    }
    crate::model::hub::keep_weights_across_runs(true);
    let (tx, rx) = channel::<DebounceEventResult>();
    let mut debouncer =
        new_debouncer(Duration::from_millis(200), tx).context("starting the file watcher")?;
    // watch directories, not files: editors save by renaming a new file over the old one
    let mut files: BTreeSet<PathBuf> = [recipe.clone()].into();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut rewatch = |files: &BTreeSet<PathBuf>, dirs: &mut BTreeSet<PathBuf>| -> Result<()> {
        for f in files {
            if let Some(d) = f.parent() {
                if dirs.insert(d.to_path_buf()) {
                    debouncer
                        .watcher()
                        .watch(d, RecursiveMode::NonRecursive)
                        .with_context(|| format!("watching {}", d.display()))?;
                }
            }
        }
        Ok(())
    };
    rewatch(&files, &mut dirs)?;
    let mut prints: std::collections::BTreeMap<PathBuf, Option<u64>> =
        files.iter().map(|f| (f.clone(), fingerprint(f))).collect();
    loop {
        let cancel = Arc::new(AtomicBool::new(false));
        eprintln!("ftl watch: running {}", a.recipe.display());
        let run = spawn_run(a.clone(), quiet, cancel.clone());
        let mut run = Some(run);
        // wait for the run to end or a watched file to change
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(events))
                    if events.iter().map(|e| absolute(&e.path)).any(|p| {
                        files.contains(&p) && {
                            let now = fingerprint(&p);
                            let changed = prints.get(&p) != Some(&now);
                            prints.insert(p, now);
                            changed
                        }
                    }) =>
                {
                    if let Some(h) = run.take() {
                        if !h.is_finished() {
                            eprintln!("ftl watch: change detected, stopping the current run");
                        }
                        cancel.store(true, Ordering::SeqCst);
                        let _ = h.join();
                    }
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("ftl watch: watcher error: {e}"),
                Err(RecvTimeoutError::Timeout) => {
                    if run.as_ref().is_some_and(|h| h.is_finished()) {
                        let done = run
                            .take()
                            .unwrap()
                            .join()
                            .map_err(|_| anyhow::anyhow!("the run panicked"))?;
                        match &done.result {
                            Ok(Outcome::Ok) => eprintln!("ftl watch: done in {:.1}s; waiting for changes", done.secs),
                            Ok(Outcome::Exit(c)) => eprintln!("ftl watch: exited with {c}; waiting for changes"),
                            Err(e) => eprintln!("error: {e}\nftl watch: keeping the last good outputs; waiting for changes"),
                        }
                        // a required file saved while the run was going: rerun now
                        let mut stale = false;
                        for (f, read) in &done.required {
                            files.insert(f.clone());
                            let now = fingerprint(f);
                            stale |= now != Some(*read);
                            prints.insert(f.clone(), now);
                        }
                        rewatch(&files, &mut dirs)?;
                        if stale {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the file watcher stopped"),
            }
        }
    }
}
