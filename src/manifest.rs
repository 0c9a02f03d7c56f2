//! The run manifest, `OUT/run.ron`: what one execution of a recipe was (the recipe and the copies
//! of it and its modules in `OUT/recipe/`, arguments, models with a hash of their config and
//! weight headers, data files with their hashes, methods, options, seeds, ftl's version and
//! commit, each training's final metrics), and the checks a rerun from it makes.

use crate::error::{Error, Result};
use crate::train::TrainResult;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped when a field changes meaning; `ftl runs` and reruns refuse other formats.
pub const FORMAT: u32 = 2;
/// The manifest's file name in the output directory.
pub const FILE: &str = "run.ron";
/// The directory, beside the manifest, holding the copies of the recipe and its modules.
pub const COPIES: &str = "recipe";

pub const GIT_COMMIT: &str = env!("FTL_GIT_COMMIT");

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Manifest {
    pub format: u32,
    pub ftl_version: String,
    pub git_commit: String,
    /// the recipe as it was run
    pub recipe: SourceFile,
    /// the directory relative paths in the recipe resolve against (the original recipe's)
    pub recipe_dir: PathBuf,
    /// local modules loaded with `require`, in order
    pub modules: Vec<SourceFile>,
    /// `ftl.args` (paths that exist made absolute, as the recipe saw them)
    pub args: Vec<(String, String)>,
    pub trust: bool,
    /// made by `ftl compare` (a rerun compares again)
    #[serde(default)]
    pub compare: bool,
    /// the manifest this run reran, if it was a rerun
    pub rerun_of: Option<PathBuf>,
    /// seconds since the Unix epoch at the start
    pub started_unix: u64,
    /// seconds from the start to the last update of this file
    pub time_s: f64,
    /// "running", "done", "exit N", "cancelled" or "failed: MESSAGE"
    pub status: String,
    /// under `ftl watch`: what changed since the previous run (`recipe.lua:12 r = 8 → 16`)
    #[serde(default)]
    pub changed: Option<String>,
    /// what the recipe returned, in short (`acc=0.91 loss=0.2`)
    #[serde(default)]
    pub returned: Option<String>,
    /// every file a dataset of the run was read from (training, eval= and ftl.evaluate data)
    pub data: Vec<DataFile>,
    /// the `ftl.train` calls, in order
    pub trainings: Vec<Training>,
    /// the `ftl.evaluate` calls, in order
    pub evaluations: Vec<Evaluation>,
}

/// A recipe or module: where it was, where its copy is, and a hash of the copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SourceFile {
    /// the original path
    pub path: PathBuf,
    /// the copy, relative to the manifest's directory
    pub copy: PathBuf,
    pub sha256: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DataFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// A dataset as a training or evaluation used it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DataRef {
    /// the file (or recipe line, for `ftl.data.from`) it came from
    pub origin: String,
    pub files: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ModelRecord {
    /// the reference as the recipe wrote it (a path or a hub id); none for `ftl.new`
    pub reference: Option<String>,
    /// what it resolved to
    pub path: Option<PathBuf>,
    pub arch: String,
    /// sha256 of config.json and the weights' headers (safetensors headers, GGUF header and
    /// metadata): a changed checkpoint shows without hashing gigabytes
    pub sha256: Option<String>,
    pub config: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct MethodRecord {
    pub name: String,
    pub method: String,
    pub active: bool,
    pub targets: Vec<String>,
    pub modules_to_save: Vec<String>,
    /// the method's resolved settings
    pub settings: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Seeds {
    /// `ftl.train`'s seed= (shuffling, dropout)
    pub train: u64,
    /// the model's (adapter initialisation)
    pub model: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Training {
    /// 1-based, as in metrics.jsonl and loss-N.svg
    pub call: usize,
    /// the recipe line of the call
    pub at: String,
    pub model: ModelRecord,
    pub methods: Vec<MethodRecord>,
    pub data: DataRef,
    pub eval_data: Option<DataRef>,
    /// the options table as the recipe wrote it
    pub options: serde_json::Value,
    /// every option with the defaults filled in
    pub resolved: serde_json::Value,
    pub seeds: Seeds,
    pub metrics: TrainResult,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Evaluation {
    pub at: String,
    pub data: DataRef,
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: Option<f64>,
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_sha256(path: &Path) -> Result<String> {
    Ok(sha256_hex(
        &std::fs::read(path).map_err(|e| Error::io(path, e))?,
    ))
}

/// A safetensors file's length prefix and JSON header: names, dtypes, shapes and offsets.
fn safetensors_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > size.saturating_sub(8) {
        return Err(Error::file(path, "corrupt safetensors header length"));
    }
    let mut head = len.to_vec();
    head.resize(8 + n as usize, 0);
    f.read_exact(&mut head[8..])
        .map_err(|e| Error::io(path, e))?;
    Ok(head)
}

/// A GGUF file up to its tensor data: header, metadata and tensor infos.
fn gguf_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    // the parsed header is the loader's (cached under `ftl watch`), so this reads it once more
    // in one piece instead of parsing it again field by field
    let end = crate::model::gguf::GgufFile::open(path)?
        .content
        .tensor_data_offset;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = Vec::new();
    f.take(end)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    Ok(head)
}

/// sha256 over a model's config.json and its weights' headers (a GGUF file: its header and
/// metadata), in a fixed order.
pub fn model_sha256(path: &Path) -> Result<String> {
    if crate::model::gguf::is_gguf(path) {
        let h = crate::model::hub::cached_value(path, "sha256", || {
            Ok(std::sync::Arc::new(sha256_hex(&gguf_header(path)?)))
        })?;
        return Ok(h.as_ref().clone());
    }
    let mut bytes = std::fs::read(path.join("config.json"))
        .map_err(|e| Error::io(path.join("config.json"), e))?;
    let single = path.join("model.safetensors");
    let shards: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else {
        // as the loader reads them: the shards the index names
        let index = path.join("model.safetensors.index.json");
        let idx = crate::st::read_json(&index)?;
        let mut s: Vec<PathBuf> = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(|f| path.join(f)))
                    .collect()
            })
            .unwrap_or_default();
        s.sort();
        s.dedup();
        s
    };
    for s in &shards {
        bytes.extend(safetensors_header(s)?);
    }
    Ok(sha256_hex(&bytes))
}

impl Manifest {
    pub fn new(recipe: &Path, recipe_dir: &Path) -> Self {
        Manifest {
            format: FORMAT,
            ftl_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: GIT_COMMIT.into(),
            recipe: SourceFile {
                path: recipe.to_path_buf(),
                ..Default::default()
            },
            recipe_dir: recipe_dir.to_path_buf(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            status: "running".into(),
            ..Default::default()
        }
    }

    /// Adds files a dataset was read from (each once, in the order first used).
    pub fn add_data(&mut self, files: &[DataFile]) {
        for f in files {
            if !self.data.iter().any(|d| d.path == f.path) {
                self.data.push(f.clone());
            }
        }
    }

    /// Writes `dir/run.ron` atomically, with copies of the recipe (`recipe_src`) and of every
    /// module in `modules` (path relative to the recipe's directory, source) under `dir/recipe/`.
    pub fn write(
        &mut self,
        dir: &Path,
        recipe_src: &str,
        modules: &[(PathBuf, String)],
    ) -> Result<()> {
        let copies = dir.join(COPIES);
        let name = self
            .recipe
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "recipe.lua".into());
        self.recipe.copy = Path::new(COPIES).join(&name);
        self.recipe.sha256 = sha256_hex(recipe_src.as_bytes());
        crate::st::write_atomic(&copies.join(&name), recipe_src.as_bytes())?;
        self.modules.clear();
        for (rel, src) in modules {
            crate::st::write_atomic(&copies.join(rel), src.as_bytes())?;
            self.modules.push(SourceFile {
                path: self.recipe_dir.join(rel),
                copy: Path::new(COPIES).join(rel),
                sha256: sha256_hex(src.as_bytes()),
            });
        }
        let text = ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default())
            .map_err(|e| Error::msg(format!("writing {FILE}: {e}")))?;
        crate::st::write_atomic(&dir.join(FILE), text.as_bytes())
    }

    /// Reads a manifest, with an error naming the file.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|msg| Error::file(path, msg))
    }

    fn parse(text: &str) -> std::result::Result<Manifest, String> {
        // named so that a parse error reads "expected struct `Manifest`"
        #[derive(Deserialize)]
        struct Manifest {
            /// 0: a record of an ftl before manifests, which had no format field
            #[serde(default)]
            format: u32,
        }
        let v: Manifest = ron::from_str(text).map_err(|e| format!("not a run manifest: {e}"))?;
        match v.format {
            FORMAT => {}
            0 => {
                return Err(
                    "a run record of an older ftl (no format field); only format 2 manifests list and rerun"
                        .into(),
                )
            }
            f => return Err(format!("manifest format {f}; this ftl reads format {FORMAT}")),
        }
        ron::from_str(text).map_err(|e| format!("not a valid run manifest: {e}"))
    }

    /// The checks before a rerun from the manifest at `path`: every copy there and every data
    /// file unchanged. Returns the directory holding the copies.
    pub fn check_rerun(&self, path: &Path) -> Result<PathBuf> {
        let dir = path.parent().unwrap_or(Path::new("."));
        for s in std::iter::once(&self.recipe).chain(&self.modules) {
            let copy = dir.join(&s.copy);
            let src = std::fs::read(&copy).map_err(|e| {
                Error::file(
                    &copy,
                    format!(
                        "the copy of {} that {} lists: {e}",
                        s.path.display(),
                        path.display()
                    ),
                )
            })?;
            if sha256_hex(&src) != s.sha256 {
                return Err(Error::file(
                    &copy,
                    format!(
                        "changed since the run (its sha256 differs from the one {} recorded)",
                        path.display()
                    ),
                ));
            }
        }
        for d in &self.data {
            let now = file_sha256(&d.path).map_err(|e| {
                Error::file(
                    &d.path,
                    format!("a data file of the run, unreadable now: {e}"),
                )
            })?;
            if now != d.sha256 {
                return Err(Error::file(
                    &d.path,
                    format!(
                        "the data changed since the run: sha256 {now}, {} recorded {}",
                        path.display(),
                        d.sha256
                    ),
                ));
            }
        }
        for t in &self.trainings {
            if let (Some(p), Some(want)) = (&t.model.path, &t.model.sha256) {
                match model_sha256(p) {
                    Ok(h) if &h == want => {}
                    Ok(_) => tracing::warn!(
                        "{}: the model's config or weight headers changed since the run",
                        p.display()
                    ),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        Ok(dir.join(COPIES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_through_ron() {
        let mut m = Manifest::new(Path::new("/r/train.lua"), Path::new("/r"));
        m.args = vec![("steps".into(), "3".into())];
        m.trainings.push(Training {
            call: 1,
            options: serde_json::json!({"lr": 1e-3, "eval": {"every": 2}, "n": null}),
            metrics: TrainResult {
                loss: 1.25,
                eval_loss: Some(2.5),
                ..Default::default()
            },
            ..Default::default()
        });
        let text = ron::ser::to_string_pretty(&m, Default::default()).unwrap();
        let back = Manifest::parse(&text).unwrap();
        assert_eq!(back.trainings[0].metrics.eval_loss, Some(2.5));
        assert_eq!(back.trainings[0].options, m.trainings[0].options);
        assert_eq!(back.args, m.args);
        assert!(Manifest::parse("(recipe: \"x\")")
            .unwrap_err()
            .contains("older ftl"));
        assert!(Manifest::parse("(format: 7)")
            .unwrap_err()
            .contains("format 7"));
    }
}
