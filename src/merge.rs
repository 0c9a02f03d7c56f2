//! `ftl merge MODEL ADAPTER OUT`: folds a PEFT adapter (LoRA, DoRA, IA3) into its base model and
//! writes the result as a complete HF model directory, all or nothing.

use crate::model::hf_cache::resolve_ref;
use crate::model::hub::{self, LoadOpts};
use crate::peft::io::{load_adapter, LoadAdapterOpts};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum)]
pub enum MergeDtype {
    F32,
    Bf16,
    F16,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  ftl merge models/llama runs/lora/adapter models/llama-merged --dtype bf16"
)]
pub struct MergeArgs {
    /// The base model: an HF model directory, a GGUF file, or a hub id (org/name[@rev]) in the HF cache
    pub model: PathBuf,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors) or its hub id, LoRA, DoRA, IA3, LoHa, LoKr or VeRA
    pub adapter: PathBuf,
    /// The model directory to write; must not exist or be empty
    pub out: PathBuf,
    /// The dtype of the written weights (the fold itself is computed in float32)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: MergeDtype,
}

/// Where the merged model is written before it is renamed to `out`: next to it, so the rename
/// stays on one filesystem.
fn staging(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "merged".into());
    out.with_file_name(format!("{name}.tmp-{}{tag}", std::process::id()))
}

/// Saves the merged float32 model `m` to `dir` in `dtype`: directly for float32, else through a
/// float32 copy in `wide` reloaded in `dtype` (the model has no in-place cast), so each weight
/// is rounded once, after the fold.
fn write(
    m: &mut crate::Model,
    dtype: DType,
    dir: &Path,
    wide: &Path,
) -> crate::Result<Vec<String>> {
    for d in [dir, wide] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| crate::Error::io(d, e))?;
        }
    }
    if dtype == DType::F32 {
        return m.save(dir);
    }
    m.save(wide)?;
    let lo = LoadOpts {
        dtype: Some(dtype),
        ..Default::default()
    };
    hub::load(wide, &lo)?.save(dir)
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    if a.out.exists() {
        if !a.out.is_dir() {
            bail!("{}: exists and is not a directory", a.out.display());
        }
        let mut rd = std::fs::read_dir(&a.out).with_context(|| a.out.display().to_string())?;
        if rd.next().is_some() {
            bail!(
                "{}: exists and is not empty: not overwriting it",
                a.out.display()
            );
        }
    }
    // either may be a hub id in the HF cache, as in recipes (relative paths are from here)
    let model = resolve_ref(&a.model, Path::new(""))?;
    let adapter = resolve_ref(&a.adapter, Path::new(""))?;
    if !model.exists() {
        bail!("{}: no such model directory", a.model.display());
    }
    if !adapter.is_dir() {
        bail!("{}: no such adapter directory", a.adapter.display());
    }
    let dtype = match a.dtype {
        MergeDtype::F32 => DType::F32,
        MergeDtype::Bf16 => DType::BF16,
        MergeDtype::F16 => DType::F16,
    };
    // loaded in float32 whatever the output dtype: the fold adds small deltas to the weights,
    // which bf16 weights would round away before they are written
    let lo = LoadOpts {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let mut m = hub::load(&model, &lo).with_context(|| format!("loading {}", a.model.display()))?;
    let name = load_adapter(&mut m, &adapter, &LoadAdapterOpts::default()).with_context(|| {
        format!(
            "loading the adapter {} onto {}",
            a.adapter.display(),
            a.model.display()
        )
    })?;
    let info = m
        .adapters()
        .iter()
        .find(|x| x.name == name)
        .context("the adapter vanished after loading")?;
    if !info.method.mergeable() {
        let kind = match info.method.kind() {
            "adapter" => "bottleneck (AdapterHub)",
            k => k,
        };
        bail!(
            "{}: a {} adapter cannot be folded into the model's weights (only LoRA, DoRA and IA3 \
             can): load it on the base model with ftl.load_adapter instead",
            a.adapter.display(),
            kind
        );
    }
    let (kind, targets) = (info.method.kind(), info.targets.len());
    m.merge()?;
    let tmp = staging(&a.out, "");
    let wide = staging(&a.out, "-f32");
    let written = write(&mut m, dtype, &tmp, &wide).and_then(|notes| {
        if a.out.exists() {
            std::fs::remove_dir(&a.out).map_err(|e| crate::Error::io(&a.out, e))?;
        }
        std::fs::rename(&tmp, &a.out).map_err(|e| crate::Error::io(&a.out, e))?;
        Ok(notes)
    });
    let _ = std::fs::remove_dir_all(&wide);
    match written {
        Ok(notes) => {
            for n in notes {
                tracing::warn!("{n}");
            }
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("writing {}", a.out.display()));
        }
    }
    println!(
        "merged {kind} adapter `{name}` ({targets} modules) into {}: wrote {}",
        a.model.display(),
        a.out.display()
    );
    Ok(())
}
