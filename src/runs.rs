//! `ftl runs DIR`: a table of the runs under DIR (every directory holding a run.ron), read from
//! their manifests; a manifest that does not parse is a row with its error. The losses are the
//! last training's (the eval loss, without an eval= there, the last `ftl.evaluate`'s).

use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct RunsArgs {
    /// The directory to search (recursively)
    pub dir: PathBuf,
}

/// Every run.ron under `dir`, sorted by path.
fn find(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // run-2 before run-10
    entries.sort_by_key(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let digits = n.len() - n.chars().rev().take_while(char::is_ascii_digit).count();
        (
            n[..digits].to_string(),
            n[digits..].parse::<u64>().unwrap_or(0),
            n,
        )
    });
    for p in entries {
        if p.file_name().is_some_and(|n| n == manifest::FILE) && p.is_file() {
            out.push(p);
        } else if p.is_dir() && !p.is_symlink() {
            find(&p, out)?;
        }
    }
    Ok(())
}

fn loss(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

/// One row per run: where, recipe, arguments, what changed (watch), final loss, eval loss, what
/// the recipe returned, time, trainable parameters.
fn row(dir: &Path, path: &Path, m: &Manifest) -> Vec<String> {
    let last = m.trainings.last().map(|t| &t.metrics);
    let recipe = m
        .recipe
        .path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let args = m
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let status = match m.status.as_str() {
        "done" => String::new(),
        s => format!(" ({})", s.split(':').next().unwrap_or(s)),
    };
    vec![
        run_dir(dir, path),
        recipe,
        if args.is_empty() { "-".into() } else { args },
        m.changed.clone().unwrap_or_else(|| "-".into()),
        loss(last.map(|r| r.loss)),
        loss(
            last.and_then(|r| r.eval_loss)
                .or(m.evaluations.last().map(|e| e.loss)),
        ),
        m.returned.clone().unwrap_or_else(|| "-".into()),
        format!("{:.1}s{status}", m.time_s),
        last.map_or("-".into(), |r| r.trainable.to_string()),
    ]
}

fn run_dir(dir: &Path, path: &Path) -> String {
    let d = path.parent().unwrap_or(path);
    match d.strip_prefix(dir) {
        Ok(r) if r.as_os_str().is_empty() => ".".into(),
        Ok(r) => r.display().to_string(),
        Err(_) => d.display().to_string(),
    }
}

/// The table of the runs under `dir` (a message when there are none).
pub fn table(dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "no such directory"));
    }
    let mut found = Vec::new();
    find(dir, &mut found)?;
    if found.is_empty() {
        return Ok(format!("no runs under {} (no run.ron)\n", dir.display()));
    }
    let head: Vec<String> = [
        "run",
        "recipe",
        "args",
        "changed",
        "loss",
        "eval loss",
        "returned",
        "time",
        "trainable",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = vec![head];
    let mut broken = Vec::new();
    for p in &found {
        match Manifest::read(p) {
            Ok(m) => rows.push(row(dir, p, &m)),
            Err(e) => broken.push(format!("{}  error: {e}", run_dir(dir, p))),
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for b in broken {
        out.push_str(&b);
        out.push('\n');
    }
    Ok(out)
}
