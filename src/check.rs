//! `ftl check`: runs a recipe in plan mode and prints, per `ftl.train` call, the methods and
//! their modules, trainable parameters, the memory estimate, the schedule and the data sizes;
//! then the writes the run would make and where the plan ended.

use crate::lua::plan::PlanState;
use crate::lua::{parse_args, Env, Outcome, Runtime};
use crate::train::estimate::{Memory, MethodPlan, TrainPlan};
use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// A path as the user would type it from here: relative to the current directory when inside.
fn shown(p: &str) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    Path::new(p)
        .strip_prefix(&cwd)
        .map_or(p.to_string(), |r| r.display().to_string())
}

/// `1,769,472`
pub fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.5 GiB`, `312 KiB`, `96 B`
pub fn size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", U[u])
    } else {
        format!("{v:.1} {}", U[u])
    }
}

/// A learning rate: `2e-4`, `1.5e-3`, `0`.
fn lr(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let s = format!("{x:.3e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let m = m.trim_end_matches('0').trim_end_matches('.');
    format!("{m}e{e}")
}

fn percent(part: usize, whole: usize) -> String {
    let p = 100.0 * part as f64 / whole.max(1) as f64;
    if p > 0.0 && p < 0.01 {
        format!("{p:.4}%")
    } else {
        format!("{p:.2}%")
    }
}

fn method_lines(out: &mut String, methods: &[MethodPlan], params: usize) {
    for m in methods {
        let state = if m.active { "" } else { " (inactive)" };
        let _ = writeln!(
            out,
            "  {} \"{}\"{state}: {} module{}, {} trainable ({} of {})",
            m.kind,
            m.name,
            m.count,
            if m.count == 1 { "" } else { "s" },
            count(m.trainable),
            percent(m.trainable, params),
            count(params),
        );
        for p in &m.modules {
            let _ = writeln!(out, "      {p}");
        }
    }
}

fn memory_lines(out: &mut String, p: &TrainPlan) {
    type Part = fn(&Memory) -> u64;
    let rows: [(&str, Part); 6] = [
        ("weights", |m| m.weights),
        ("gradients", |m| m.gradients),
        ("optimizer state", |m| m.optimizer),
        ("activations", |m| m.activations),
        ("ftl, tokenizer, data", |m| m.runtime),
        ("total", |m| m.total()),
    ];
    let _ = writeln!(
        out,
        "  memory at batch {} x {} tokens{}:",
        p.batch_size,
        p.batch_len,
        if p.checkpoint {
            " (the recipe checkpoints)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "      {:<22}{:>16}{:>18}",
        "", "no checkpoint", "checkpoint=true"
    );
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "      {:<22}{:>16}{:>18}",
            name,
            size(f(&p.memory)),
            size(f(&p.memory_checkpointed))
        );
    }
}

/// The block `ftl check` prints for the `n`th `ftl.train` call, made at `at`.
pub fn render_train(
    n: usize,
    at: &str,
    model: &Option<PathBuf>,
    data: &str,
    p: &TrainPlan,
) -> String {
    let mut out = String::new();
    let model = model
        .as_ref()
        .map_or("a model made with ftl.new".to_string(), |d| {
            shown(&d.display().to_string())
        });
    let data = shown(data);
    let _ = writeln!(out, "ftl.train #{n} at {at}: {model}");
    method_lines(&mut out, &p.methods, p.params);
    if p.unfrozen_params > 0 {
        let _ = writeln!(
            out,
            "  full: {} unfrozen base weights, {} trainable ({} of {})",
            p.unfrozen.len(),
            count(p.unfrozen_params),
            percent(p.unfrozen_params, p.params),
            count(p.params)
        );
        for u in &p.unfrozen {
            let _ = writeln!(out, "      {u}");
        }
    }
    let _ = writeln!(
        out,
        "  trainable in all: {} of {} parameters ({})",
        count(p.trainable),
        count(p.params),
        percent(p.trainable, p.params)
    );
    let eval = p
        .eval_examples
        .map_or(String::new(), |e| format!(", {e} for evaluation"));
    let _ = writeln!(
        out,
        "  data: {} examples from {data} ({:.1} tokens on average, at most {}){eval}",
        p.examples, p.mean_tokens, p.max_tokens
    );
    let accum = if p.grad_accum > 1 {
        format!(" x {} accumulated", p.grad_accum)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  schedule: {} steps, {} epoch{} of {} steps (batch {}{accum}); {}, warm-up {}; lr {} at the start, {} at the peak, {} at the end",
        p.steps,
        p.epochs,
        if p.epochs == 1 { "" } else { "s" },
        p.steps_per_epoch,
        p.batch_size,
        p.schedule,
        p.warmup,
        lr(p.lr_start),
        lr(p.lr_peak),
        lr(p.lr_end)
    );
    memory_lines(&mut out, p);
    out
}

/// Runs `recipe` in plan mode; what it printed goes to stdout as it runs.
pub fn check(recipe: &Path, args: &[String], out: Option<&Path>, trust: bool) -> Result<ExitCode> {
    let args = parse_args(args)?;
    if !recipe.exists() {
        anyhow::bail!("{}: no such recipe file", recipe.display());
    }
    let env = Env::new(recipe, out, trust);
    let rt = Runtime::new(env, &args).context("starting the Lua runtime")?;
    let _shapes = crate::model::param::shapes_only();
    let state = Arc::new(PlanState::default());
    rt.lua.set_app_data(state.clone());
    let outcome = rt.run()?;
    let mut text = String::new();
    let trains = state.trains.lock().unwrap().len();
    // methods attached to a model no `ftl.train` call showed
    if trains == 0 {
        for h in state.models.lock().unwrap().iter() {
            let mut m = h.lock();
            let methods = crate::train::estimate::methods(&mut m);
            let params = m.base_params().iter().map(|(_, p)| p.elem_count()).sum();
            if !methods.is_empty() {
                let model = m
                    .dir
                    .as_ref()
                    .map_or("a model made with ftl.new".into(), |d| {
                        shown(&d.display().to_string())
                    });
                let _ = writeln!(text, "{model}:");
                method_lines(&mut text, &methods, params);
            }
        }
    }
    let writes = state.writes.lock().unwrap();
    if !writes.is_empty() {
        let _ = writeln!(text, "writes (not made):");
        for (what, path, at) in writes.iter() {
            let _ = writeln!(text, "  {}  ({what} at {at})", shown(path));
        }
    }
    match state.end.lock().unwrap().as_ref() {
        Some(e) => {
            let _ = writeln!(text, "plan ended at {e}");
        }
        None => {
            let _ = writeln!(
                text,
                "plan complete: {trains} training call{}, no weights read, nothing trained or written",
                if trains == 1 { "" } else { "s" }
            );
        }
    }
    print!("{text}");
    Ok(match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Exit(c) => ExitCode::from(c.clamp(0, 255) as u8),
        Outcome::Cancelled => ExitCode::from(130),
    })
}
