//! `ftl watch`: reruns a recipe whenever it, a module it `require`d, or a data file or model it
//! read is saved. Each rerun is a run of its own (`OUT/run-N/`, `OUT/latest` naming the newest
//! complete one) headed by what changed; a save during a run cancels it as a whole
//! (`crate::cancel`); a failed run is reported and the last good outputs stay; `r` + Enter or
//! SIGUSR1 reruns by hand; Ctrl-C (or SIGTERM, or `q` + Enter) stops the run and exits.

mod changes;

use crate::cancel::Token;
use crate::cli::RunArgs;
use crate::lua::{parse_args, Env, Outcome, Runtime};
use anyhow::{Context, Result};
use changes::Sources;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// The settle delay: events closer together than this are one save. Editors' save sequences
/// (write in place, write + rename, backup + write + delete) take a few milliseconds.
fn settle() -> Duration {
    let ms = std::env::var("FTL_WATCH_SETTLE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    Duration::from_millis(ms)
}

enum Msg {
    /// paths a file-system event named
    Fs(Vec<PathBuf>),
    /// rerun now: `r` + Enter or SIGUSR1
    Rerun(&'static str),
    /// stop: Ctrl-C, SIGTERM, `q` + Enter
    Quit(&'static str),
}

struct RunDone {
    result: std::result::Result<Outcome, String>,
    /// local modules required, with the hash of what was read
    required: Vec<(PathBuf, u64)>,
    /// data files and models read
    opened: Vec<PathBuf>,
    secs: f64,
}

/// Files up to this size are told apart by content (a read also makes events); larger ones, and
/// directories (a model's), by size and modification time.
const HASHED_BYTES: u64 = 64 << 20;

/// What a watched path holds now; `None` when it does not exist.
fn fingerprint(p: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let md = std::fs::metadata(p).ok()?;
    let stamp = |md: &std::fs::Metadata, h: &mut std::collections::hash_map::DefaultHasher| {
        md.len().hash(h);
        md.modified().ok().hash(h);
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if md.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .ok()?
            .flatten()
            .filter_map(|e| Some((e.file_name(), e.metadata().ok()?)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, md) in &entries {
            name.hash(&mut h);
            stamp(md, &mut h);
        }
        Some(h.finish())
    } else if md.len() > HASHED_BYTES {
        stamp(&md, &mut h);
        Some(h.finish())
    } else {
        std::fs::read(p).ok().map(|b| crate::lua::content_hash(&b))
    }
}

fn absolute(p: &Path) -> PathBuf {
    crate::lua::normalize(&std::env::current_dir().unwrap_or_default().join(p))
}

/// The number after the last `run-N` directory in `out`.
fn next_number(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("run-")?
                        .parse::<usize>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

/// One run in its own thread (a Lua state lives on one thread).
fn spawn_run(
    a: &RunArgs,
    args: Vec<(String, String)>,
    out: PathBuf,
    src: String,
    changed: String,
    quiet: bool,
    cancel: Token,
) -> std::thread::JoinHandle<RunDone> {
    let a = a.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut env = Env::new(&a.recipe, Some(&out), a.trust);
        env.quiet = quiet;
        env.cancel = cancel;
        env.watched = Some(changed);
        let (result, required, opened) = match Runtime::new(env, &args) {
            Ok(rt) => {
                let r = rt.run_source(&src).map_err(|e| e.to_string());
                let req = rt.env.required.lock().unwrap().clone();
                let opened = rt.env.opened.lock().unwrap().clone();
                (r, req, opened)
            }
            Err(e) => (Err(e.to_string()), Vec::new(), Vec::new()),
        };
        RunDone {
            result,
            required,
            opened,
            secs: start.elapsed().as_secs_f64(),
        }
    })
}

/// Ctrl-C, SIGTERM and SIGUSR1 as messages.
fn forward_signals(tx: Sender<Msg>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            let m = match s {
                SIGUSR1 => Msg::Rerun("SIGUSR1"),
                SIGTERM => Msg::Quit("SIGTERM"),
                _ => Msg::Quit("Ctrl-C"),
            };
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// `r` + Enter reruns, `q` + Enter stops; a closed stdin just ends this.
fn forward_stdin(tx: Sender<Msg>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let m = match line.trim() {
                "r" => Msg::Rerun("r"),
                "q" => Msg::Quit("q"),
                "" => continue,
                other => {
                    eprintln!(
                        "ftl watch: `{other}`? r + Enter reruns, q + Enter (or Ctrl-C) stops"
                    );
                    continue;
                }
            };
            if tx.send(m).is_err() {
                break;
            }
        }
    });
}

/// The watched paths, their state, and the directories the OS watches for them.
struct Watched {
    watcher: notify::RecommendedWatcher,
    /// path → what it held when last seen
    paths: BTreeMap<PathBuf, Option<u64>>,
    dirs: BTreeSet<PathBuf>,
    /// the watch's output root: what runs write there is never watched
    out: PathBuf,
}

impl Watched {
    fn add(&mut self, p: &Path) -> Result<()> {
        if p.starts_with(&self.out) || self.paths.contains_key(p) {
            return Ok(());
        }
        self.paths.insert(p.to_path_buf(), fingerprint(p));
        // directories, not files: editors save by renaming a new file over the old one
        let mut dirs = vec![];
        if p.is_dir() {
            dirs.push(p.to_path_buf());
        }
        if let Some(d) = p.parent() {
            dirs.push(d.to_path_buf());
        }
        for d in dirs {
            if self.dirs.insert(d.clone()) {
                self.watcher
                    .watch(&d, RecursiveMode::NonRecursive)
                    .with_context(|| format!("watching {}", d.display()))?;
            }
        }
        Ok(())
    }

    /// The watched path an event's path concerns: itself, or the watched directory holding it.
    fn owner(&self, p: &Path) -> Option<PathBuf> {
        if self.paths.contains_key(p) {
            return Some(p.to_path_buf());
        }
        p.parent()
            .filter(|d| self.paths.contains_key(*d) && d.is_dir())
            .map(Path::to_path_buf)
    }

    /// Which of `touched` hold something else than when last seen (and remember what they hold).
    fn changed(&mut self, touched: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in touched {
            let now = fingerprint(p);
            if self.paths.get(p) != Some(&now) {
                self.paths.insert(p.clone(), now);
                out.push(p.clone());
            }
        }
        out
    }
}

/// The recipe and the modules the last run required, as they are now.
fn read_sources(recipe: &Path, modules: &[PathBuf]) -> Sources {
    std::iter::once(recipe)
        .chain(modules.iter().map(PathBuf::as_path))
        .filter_map(|p| Some((p.to_path_buf(), std::fs::read_to_string(p).ok()?)))
        .collect()
}

pub fn watch(a: &RunArgs, quiet: bool) -> Result<ExitCode> {
    let recipe = absolute(&a.recipe);
    if !recipe.exists() {
        anyhow::bail!("{}: no such recipe file", a.recipe.display());
    }
    let args = parse_args(&a.args)?;
    let out = Env::new(&a.recipe, a.out.as_deref(), a.trust).out_dir;
    let base = recipe.parent().map(Path::to_path_buf).unwrap_or_default();
    crate::reuse::keep_across_runs(true);
    crate::lua::cache_across_runs(true);
    let (tx, rx) = channel::<Msg>();
    let fs_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| match r {
        // opening or reading a file is no save
        Ok(e)
            if matches!(
                e.kind,
                EventKind::Access(notify::event::AccessKind::Open(_))
            ) || matches!(
                e.kind,
                EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Read
                ))
            ) => {}
        Ok(e) => {
            let _ = fs_tx.send(Msg::Fs(e.paths));
        }
        Err(e) => eprintln!("ftl watch: watcher error: {e}"),
    })
    .context("starting the file watcher")?;
    let mut w = Watched {
        watcher,
        paths: BTreeMap::new(),
        dirs: BTreeSet::new(),
        out: out.clone(),
    };
    w.add(&recipe)?;
    forward_signals(tx.clone())?;
    forward_stdin(tx);
    let mut modules: Vec<PathBuf> = Vec::new();
    let mut last: Sources = Vec::new();
    let mut why: Vec<PathBuf> = Vec::new();
    let mut by_hand: Option<&str> = None;
    loop {
        let n = next_number(&out);
        let now = read_sources(&recipe, &modules);
        let changed = if last.is_empty() {
            format!(
                "{} (first run)",
                recipe.strip_prefix(&base).unwrap_or(&recipe).display()
            )
        } else {
            match (changes::describe(&last, &now, &why, &base), by_hand) {
                (Some(c), _) => c,
                (None, Some(h)) => format!("no change (rerun by {h})"),
                (None, None) => "no change".into(),
            }
        };
        eprintln!("run {n}: {changed}");
        let src = now.first().map(|(_, s)| s.clone()).unwrap_or_default();
        last = now;
        why.clear();
        by_hand = None;
        let cancel = Token::new();
        let run_dir = out.join(format!("run-{n}"));
        let mut run = Some(spawn_run(
            a,
            args.clone(),
            run_dir,
            src,
            changed,
            quiet,
            cancel.clone(),
        ));
        // events for watched paths since the last settle, and when the last one came
        let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
        let mut quiet_since = Instant::now();
        // every path an event named while the run was going: a file it read and that changed
        // before it was watched reruns too
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        'wait: loop {
            let msg = rx.recv_timeout(Duration::from_millis(10));
            match msg {
                Ok(Msg::Fs(paths)) => {
                    for p in paths.iter().map(|p| absolute(p)) {
                        if let Some(o) = w.owner(&p) {
                            touched.insert(o);
                        }
                        if run.is_some() {
                            seen.insert(p);
                        }
                    }
                    quiet_since = Instant::now();
                    continue;
                }
                Ok(Msg::Rerun(h)) => {
                    stop(&mut run, &cancel, &rx, n);
                    by_hand = Some(h);
                    break 'wait;
                }
                Ok(Msg::Quit(h)) => {
                    stop(&mut run, &cancel, &rx, n);
                    eprintln!("ftl watch: stopped ({h})");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the file watcher stopped"),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if !touched.is_empty() && quiet_since.elapsed() >= settle() {
                let changed = w.changed(&std::mem::take(&mut touched));
                if !changed.is_empty() {
                    stop(&mut run, &cancel, &rx, n);
                    why = changed;
                    break 'wait;
                }
            }
            if run.as_ref().is_some_and(|h| h.is_finished()) {
                let done = run
                    .take()
                    .unwrap()
                    .join()
                    .map_err(|_| anyhow::anyhow!("the run panicked"))?;
                report(n, &done, &out);
                if matches!(done.result, Ok(Outcome::Ok)) {
                    crate::reuse::sweep();
                }
                modules = done.required.iter().map(|(p, _)| p.clone()).collect();
                // a module saved while the run read it: rerun now
                let mut stale = Vec::new();
                for (p, read) in &done.required {
                    w.add(p)?;
                    if fingerprint(p) != Some(*read) {
                        stale.push(p.clone());
                    }
                }
                for p in &done.opened {
                    let fresh = !w.paths.contains_key(p) && !p.starts_with(&out);
                    w.add(p)?;
                    if fresh
                        && seen
                            .iter()
                            .any(|s| s == p || s.parent() == Some(p.as_path()))
                    {
                        stale.push(p.clone());
                    }
                }
                if !stale.is_empty() {
                    for p in &stale {
                        w.paths.insert(p.clone(), fingerprint(p));
                    }
                    why = stale;
                    break 'wait;
                }
            }
        }
    }
}

/// Cancels the run if one is going and waits for it to stop; a second Ctrl-C exits at once.
fn stop(
    run: &mut Option<std::thread::JoinHandle<RunDone>>,
    cancel: &Token,
    rx: &Receiver<Msg>,
    n: usize,
) {
    let Some(h) = run.take() else { return };
    if h.is_finished() {
        let _ = h.join();
        return;
    }
    eprintln!("run {n}: cancelled");
    cancel.cancel();
    while !h.is_finished() {
        if let Ok(Msg::Quit(_)) = rx.recv_timeout(Duration::from_millis(20)) {
            eprintln!("ftl watch: stopped without waiting for run {n}");
            std::process::exit(130);
        }
    }
    let _ = h.join();
}

/// The run's closing line; a complete run becomes `OUT/latest`.
fn report(n: usize, done: &RunDone, out: &Path) {
    match &done.result {
        Ok(Outcome::Ok) => {
            let latest = out.join("latest");
            if let Err(e) = crate::st::write_atomic(&latest, format!("run-{n}\n").as_bytes()) {
                eprintln!("ftl watch: {e}");
            }
            eprintln!("run {n}: done in {:.2}s; waiting for changes", done.secs)
        }
        Ok(Outcome::Exit(c)) => eprintln!("run {n}: exited with {c}; waiting for changes"),
        Ok(Outcome::Cancelled) => eprintln!("run {n}: cancelled"),
        Err(e) => {
            let kept = std::fs::read_to_string(out.join("latest"))
                .map(|s| format!(" ({} stays the latest)", s.trim()))
                .unwrap_or_default();
            eprintln!("run {n} failed: {e}\nrun {n}: the last good outputs are kept{kept}; waiting for changes")
        }
    }
}
