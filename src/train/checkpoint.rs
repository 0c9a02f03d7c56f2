//! Training checkpoints and resuming from them. `DIR/step-N/` holds everything a run needs to go
//! on exactly where it was: the trained tensors (`trainable.safetensors`, and each adapter in
//! PEFT's format beside them), the optimizer's state, and `state.json` (the step, the epoch and
//! the position in it, the counters ftl's random streams derive from, the result so far, what the
//! run trains, and a size and SHA-256 per file). A checkpoint is written in a hidden directory and
//! renamed into place when complete, so `step-N` is whole or absent; `DIR/latest` names the
//! newest. Resuming verifies every file and falls back past a damaged checkpoint.

use super::optim::Optimizer;
use super::{At, Hook, TrainOpts, TrainResult};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::{Model, Param};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bumped when a field of `state.json` changes meaning.
const FORMAT: u32 = 1;
const STATE: &str = "state.json";
const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
/// The file in the checkpoint directory naming the newest complete checkpoint.
pub const LATEST: &str = "latest";

/// `save = {dir=, every=, keep=}`.
#[derive(Clone, Debug)]
pub struct SaveOpts {
    pub dir: PathBuf,
    /// every this many steps
    pub every: Option<usize>,
    /// after the last step too (besides: always when the process is interrupted)
    pub at_end: bool,
    /// how many checkpoints to keep (none: all)
    pub keep: Option<usize>,
    /// the run manifest, copied into each checkpoint
    pub manifest: Option<PathBuf>,
}

/// What a run trains, compared on resume: a run that changed any of it cannot continue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Fingerprint {
    /// the model as loaded: its reference and a hash of its config
    pub model: String,
    /// each adapter: name, method and settings, and how many modules it targets
    pub methods: Vec<String>,
    /// the trained tensors: name, shape, dtype
    pub trainable: Vec<String>,
    /// the training examples: how many, and a hash of their tokens and labels
    pub data: String,
    /// what decides the data order and the random streams
    pub order: String,
}

/// Where the run stands after a step: enough to continue it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct State {
    pub format: u32,
    /// optimizer steps completed
    pub step: usize,
    pub total_steps: usize,
    /// the epoch of the next step (from 0) and how many of its steps are done
    pub epoch: usize,
    pub step_in_epoch: usize,
    /// micro-batches of the current step already accumulated (checkpoints are taken between
    /// steps: always 0, recorded so that a reader need not know that)
    pub accumulated: usize,
    /// ftl's random streams are counters over one seed: dropout draws from (seed, micro-batch
    /// number), shuffling from (seed, epoch); these are their positions
    pub rng: Rng,
    pub result: TrainResult,
    /// each parameter's optimizer step count (its buffers are in optimizer.safetensors)
    pub optimizer_steps: BTreeMap<String, u64>,
    pub fingerprint: Fingerprint,
    /// options that do not change what is trained (lr, schedule, …), to warn when they change
    pub options: BTreeMap<String, String>,
    /// every other file of the checkpoint: its size and SHA-256
    pub files: BTreeMap<String, FileSum>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Rng {
    pub seed: u64,
    pub next_micro_batch: usize,
    pub shuffle_epoch: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileSum {
    pub bytes: u64,
    pub sha256: String,
}

impl Fingerprint {
    pub fn of(m: &Model, params: &[(String, Param)], ex: &[Example], o: &TrainOpts) -> Self {
        use sha2::Digest;
        let config =
            crate::manifest::sha256_hex(crate::st::sort_keys(&m.config).to_string().as_bytes());
        let model = format!(
            "{} (config {})",
            m.reference.as_deref().unwrap_or("<built in the recipe>"),
            &config[..12]
        );
        let methods = m
            .adapters()
            .iter()
            .map(|a| {
                format!(
                    "{} = {} {} on {} modules",
                    a.name,
                    a.method.name,
                    a.method.settings(),
                    a.targets.len()
                )
            })
            .collect();
        let trainable = params
            .iter()
            .map(|(n, p)| {
                let v = p.value();
                format!("{n} {:?} {:?}", v.dims(), v.dtype())
            })
            .collect();
        let mut h = sha2::Sha256::new();
        for e in ex {
            h.update((e.ids.len() as u64).to_le_bytes());
            e.ids.iter().for_each(|x| h.update(x.to_le_bytes()));
            e.labels.iter().for_each(|x| h.update(x.to_le_bytes()));
            for x in e.types.iter().flatten() {
                h.update(x.to_le_bytes());
            }
            h.update(e.class.unwrap_or(i64::MIN).to_le_bytes());
        }
        let data = format!(
            "{} examples, tokens {}",
            ex.len(),
            &hex(&h.finalize())[..16]
        );
        let order = format!(
            "batch_size {}, grad_accum {}, seed {}, shuffle {}, group_by_length {}, max_len {:?}",
            o.batch_size, o.grad_accum, o.seed, o.shuffle, o.group_by_length, o.max_len
        );
        Fingerprint {
            model,
            methods,
            trainable,
            data,
            order,
        }
    }

    /// What differs from `now`, each as "what: before → now".
    fn changes(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut one = |what: &str, a: &str, b: &str| {
            if a != b {
                out.push(format!("{what}: {a} → {b}"));
            }
        };
        one("model", &self.model, &now.model);
        one("methods", &self.methods.join("; "), &now.methods.join("; "));
        if self.trainable != now.trainable {
            let gone: Vec<&String> = self
                .trainable
                .iter()
                .filter(|t| !now.trainable.contains(t))
                .collect();
            let new: Vec<&String> = now
                .trainable
                .iter()
                .filter(|t| !self.trainable.contains(t))
                .collect();
            out.push(format!(
                "trained tensors: {} no longer trained, {} newly trained{}",
                gone.len(),
                new.len(),
                gone.first()
                    .or(new.first())
                    .map_or(String::new(), |t| format!(" (e.g. {t})"))
            ));
        }
        let mut one = |what: &str, a: &str, b: &str| {
            if a != b {
                out.push(format!("{what}: {a} → {b}"));
            }
        };
        one("data", &self.data, &now.data);
        one("data order", &self.order, &now.order);
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The options a resumed run may change (with a warning: it no longer repeats the original).
pub fn options(o: &TrainOpts, total_steps: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("lr".into(), o.lr.to_string());
    m.insert("steps".into(), total_steps.to_string());
    m.insert("optimizer".into(), format!("{:?}", o.optimizer));
    m.insert("schedule".into(), format!("{:?}", o.schedule));
    m.insert("clip".into(), format!("{:?}", o.clip));
    m.insert("checkpoint".into(), o.checkpoint.to_string());
    m
}

fn sum_file(path: &Path) -> Result<FileSum> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(FileSum {
        bytes: bytes.len() as u64,
        sha256: hex(&sha2::Sha256::digest(&bytes)),
    })
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for e in std::fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            let e = e.map_err(|e| Error::io(&here, e))?;
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step}")
}

/// The checkpoints in `dir` by step, newest first (complete or not: `verify` tells).
fn listed(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("step-")?.parse().ok()?;
            e.path().is_dir().then(|| (n, e.path()))
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v
}

/// Checks that `dir` can hold checkpoints, before any training: made if missing, written to.
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(format!(".ftl-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .map_err(|e| Error::file(dir, format!("checkpoints cannot be written here: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// What a checkpoint is written from.
pub struct Snapshot<'a> {
    pub model: &'a mut Model,
    pub params: &'a [(String, Param)],
    pub optimizer: &'a Optimizer,
    pub state: State,
}

/// Writes `DIR/step-N` whole (or not at all), points `DIR/latest` at it and keeps the newest
/// `keep`; returns its path. The previous checkpoints are untouched until the new one is
/// complete.
pub fn write(o: &SaveOpts, snap: Snapshot<'_>) -> Result<PathBuf> {
    let Snapshot {
        model,
        params,
        optimizer,
        mut state,
    } = snap;
    std::fs::create_dir_all(&o.dir).map_err(|e| Error::io(&o.dir, e))?;
    clean_partials(&o.dir);
    let name = step_dir_name(state.step);
    let tmp = o
        .dir
        .join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let trained: BTreeMap<String, Tensor> =
            params.iter().map(|(n, p)| (n.clone(), p.value())).collect();
        crate::st::save(&tmp.join(TRAINABLE), &trained, None)?;
        let (buffers, steps) = optimizer.export()?;
        crate::st::save(&tmp.join(OPTIMIZER), &buffers, None)?;
        state.optimizer_steps = steps;
        let names = model.active.clone();
        match names.as_slice() {
            [] => {}
            [one] => crate::peft::io::save_adapter(model, &tmp, one)?,
            many => {
                for n in many {
                    crate::peft::io::save_adapter(model, &tmp.join(n), n)?;
                }
            }
        }
        if let Some(m) = o.manifest.as_ref().filter(|m| m.exists()) {
            let bytes = std::fs::read(m).map_err(|e| Error::io(m, e))?;
            crate::st::write_atomic(&tmp.join(crate::manifest::FILE), &bytes)?;
        }
        for rel in files_under(&tmp)? {
            state.files.insert(
                rel.to_string_lossy().to_string(),
                sum_file(&tmp.join(&rel))?,
            );
        }
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| Error::file(&tmp, e.to_string()))?;
        crate::st::write_atomic(&tmp.join(STATE), &json)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = o.dir.join(&name);
    // a checkpoint of this step from an earlier run moves aside until the new one is in place
    let old = o.dir.join(format!(".{name}.old-{}", std::process::id()));
    let had = dest.exists();
    if had {
        std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        if had {
            let _ = std::fs::rename(&old, &dest);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(&dest, e));
    }
    crate::st::sync_dir(&o.dir)?;
    crate::st::write_atomic(&o.dir.join(LATEST), format!("{name}\n").as_bytes())?;
    if had {
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Some(k) = o.keep {
        // this training's checkpoints: those of later steps are another run's, left alone
        let mine = listed(&o.dir).into_iter().filter(|(s, _)| *s <= state.step);
        for (_, p) in mine.skip(k.max(1)) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(dest)
}

/// Removes what killed runs left half-written (never a complete checkpoint).
fn clean_partials(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && (name.contains(".partial-") || name.contains(".old-")) {
            let pid: Option<u32> = name.rsplit('-').next().and_then(|p| p.parse().ok());
            // another live run's partial is its own
            let alive = pid.is_some_and(|p| {
                p != std::process::id() && Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A checkpoint read back and verified.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: State,
    pub trainable: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
}

/// One name inside a directory: no separator, not `.` or `..`, not empty.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// Reads and verifies the checkpoint in `dir` (`DIR/step-N`).
fn read(dir: &Path) -> Result<Loaded> {
    let path = dir.join(STATE);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let state: State = serde_json::from_slice(&text)
        .map_err(|e| Error::file(&path, format!("not a checkpoint state: {e}")))?;
    if state.format != FORMAT {
        return Err(Error::file(
            &path,
            format!(
                "checkpoint format {} (this ftl reads {FORMAT})",
                state.format
            ),
        ));
    }
    for (rel, want) in &state.files {
        // a checkpoint's files are its own: a name that leaves the directory is damage
        if !is_plain_name(rel) {
            return Err(Error::file(
                &path,
                format!("names the file {rel:?}, outside its checkpoint"),
            ));
        }
        let p = dir.join(rel);
        let got = sum_file(&p)?;
        if got.bytes != want.bytes {
            return Err(Error::file(
                &p,
                format!(
                    "truncated or damaged: {} bytes, {} written",
                    got.bytes, want.bytes
                ),
            ));
        }
        if got.sha256 != want.sha256 {
            return Err(Error::file(
                &p,
                "damaged: its SHA-256 differs from the one written",
            ));
        }
    }
    for f in [TRAINABLE, OPTIMIZER] {
        if !state.files.contains_key(f) {
            return Err(Error::file(dir.join(f), "missing from the checkpoint"));
        }
    }
    let load = |f: &str| crate::st::StFile::open(&dir.join(f))?.load_all(&candle_core::Device::Cpu);
    Ok(Loaded {
        dir: dir.to_path_buf(),
        trainable: load(TRAINABLE)?,
        optimizer: load(OPTIMIZER)?,
        state,
    })
}

/// The checkpoint to resume from in `dir`: `dir` itself when it is one, else the newest complete
/// checkpoint in it (`latest` first), falling back past damaged ones with a warning. None when
/// there is none yet; an error when every one there is damaged.
pub fn find(dir: &Path) -> Result<Option<Loaded>> {
    if dir.join(STATE).exists() {
        return read(dir).map(Some);
    }
    let mut candidates = listed(dir);
    if let Ok(name) = std::fs::read_to_string(dir.join(LATEST)) {
        let name = name.trim();
        if is_plain_name(name) {
            let p = dir.join(name);
            candidates.retain(|(_, c)| *c != p);
            if p.is_dir() {
                candidates.insert(0, (0, p));
            }
        } else {
            tracing::warn!(
                "{}: names {name:?}, not a checkpoint of this directory: ignored",
                dir.join(LATEST).display()
            );
        }
    }
    let mut first_err = None;
    for (_, c) in candidates {
        match read(&c) {
            Ok(l) => {
                if let Some(e) = &first_err {
                    tracing::warn!("{e}: resuming from {} instead", c.display());
                }
                return Ok(Some(l));
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(Error::msg(format!(
            "cannot resume: no complete checkpoint in {} ({e}); delete the damaged one to start over",
            dir.display()
        ))),
        None => Ok(None),
    }
}

impl Loaded {
    /// Refuses a checkpoint of another training; warns of changed options.
    pub fn check(&self, now: &Fingerprint, options: &BTreeMap<String, String>) -> Result<()> {
        let changed = self.state.fingerprint.changes(now);
        if !changed.is_empty() {
            return Err(Error::msg(format!(
                "cannot resume from {}: the recipe changed what it trains: {}",
                self.dir.display(),
                changed.join("; ")
            )));
        }
        let differ: Vec<String> = options
            .iter()
            .filter_map(|(k, v)| {
                let before = self.state.options.get(k)?;
                (before != v).then(|| format!("{k} {before} → {v}"))
            })
            .collect();
        if !differ.is_empty() {
            tracing::warn!(
                "resuming {} with changed options ({}): the run will not repeat the original",
                self.dir.display(),
                differ.join(", ")
            );
        }
        Ok(())
    }

    /// Sets the trained tensors and the optimizer's state.
    pub fn restore(&self, params: &[(String, Param)], opt: &mut Optimizer) -> Result<()> {
        for (name, p) in params {
            let path = self.dir.join(TRAINABLE);
            let t = self
                .trainable
                .get(name)
                .ok_or_else(|| Error::MissingTensor {
                    path: path.clone(),
                    name: name.clone(),
                })?;
            let v = p.value();
            if t.dims() != v.dims() {
                return Err(Error::Shape {
                    path,
                    name: name.clone(),
                    got: t.dims().to_vec(),
                    want: v.dims().to_vec(),
                });
            }
            let var = p.var().expect("trainable");
            var.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
        }
        opt.import(&self.optimizer, &self.state.optimizer_steps, params)
    }
}

/// The loop's checkpoint hook: resumes before the first step, saves when due, at the end and
/// when the process is interrupted (then stops the training).
pub struct Checkpoints {
    model: Arc<Mutex<Model>>,
    save: SaveOpts,
    resume: Option<PathBuf>,
    fingerprint: Fingerprint,
    options: BTreeMap<String, String>,
    seed: u64,
    grad_accum: usize,
    total_steps: usize,
    /// the newest checkpoint this training wrote or resumed from, and its step
    last: Option<(usize, PathBuf)>,
}

impl Checkpoints {
    /// The hook for `o` (none when it neither saves nor resumes); checks that checkpoints can
    /// be written before any step runs.
    pub fn new(
        model: &Arc<Mutex<Model>>,
        params: &[(String, Param)],
        ex: &[Example],
        o: &TrainOpts,
        total_steps: usize,
    ) -> Result<Option<Self>> {
        let save = match (&o.save, &o.resume) {
            (Some(s), _) => s.clone(),
            (None, Some(r)) => SaveOpts {
                dir: r.clone(),
                every: None,
                at_end: false,
                keep: None,
                manifest: None,
            },
            (None, None) => return Ok(None),
        };
        if save.every.is_some() || save.at_end {
            check_writable(&save.dir)?;
        }
        let fingerprint = Fingerprint::of(&super::lock(model), params, ex, o);
        Ok(Some(Checkpoints {
            model: model.clone(),
            save,
            resume: o.resume.clone(),
            fingerprint,
            options: options(o, total_steps),
            seed: o.seed,
            grad_accum: o.grad_accum,
            total_steps,
            last: None,
        }))
    }

    /// Restores the newest complete checkpoint when resuming; the step to start from.
    pub fn resume(
        &mut self,
        params: &[(String, Param)],
        opt: &mut Optimizer,
        res: &mut TrainResult,
    ) -> Result<usize> {
        let Some(dir) = &self.resume else {
            return Ok(0);
        };
        let Some(l) = find(dir)? else {
            tracing::warn!(
                "no complete checkpoint in {} yet: starting at step 0",
                dir.display()
            );
            return Ok(0);
        };
        l.check(&self.fingerprint, &self.options)?;
        l.restore(params, opt)?;
        *res = l.state.result.clone();
        res.resumed_from = l.state.step;
        tracing::info!("resuming from {} (step {})", l.dir.display(), l.state.step);
        self.last = Some((l.state.step, l.dir.clone()));
        Ok(l.state.step.min(self.total_steps))
    }

    fn write(&mut self, at: &At<'_>) -> Result<PathBuf> {
        let state = State {
            format: FORMAT,
            step: at.info.step,
            total_steps: self.total_steps,
            epoch: at.epoch,
            step_in_epoch: at.step_in_epoch,
            accumulated: 0,
            rng: Rng {
                seed: self.seed,
                next_micro_batch: at.info.step * self.grad_accum,
                shuffle_epoch: at.epoch,
            },
            result: at.result.clone(),
            optimizer_steps: BTreeMap::new(),
            fingerprint: self.fingerprint.clone(),
            options: self.options.clone(),
            files: BTreeMap::new(),
        };
        let mut m = super::lock(&self.model);
        let dir = write(
            &self.save,
            Snapshot {
                model: &mut m,
                params: at.params,
                optimizer: at.optimizer,
                state,
            },
        )?;
        tracing::info!("saved {}", dir.display());
        self.last = Some((at.info.step, dir.clone()));
        Ok(dir)
    }
}

impl Hook for Checkpoints {
    fn on_state(&mut self, at: &At<'_>) -> Result<()> {
        let step = at.info.step;
        let done = self.last.as_ref().is_some_and(|(s, _)| *s == step);
        let due = self.save.every.is_some_and(|e| step.is_multiple_of(e))
            || (at.last && (self.save.at_end || self.save.every.is_some()));
        let signal = crate::cancel::interrupted();
        if (due || signal.is_some()) && !done {
            self.write(at)?;
        }
        if signal.is_some() {
            let note = match &self.last {
                Some((s, dir)) => format!(
                    "interrupted after step {step} of {}: checkpoint {} (step {s}); `--resume` continues from it",
                    self.total_steps,
                    dir.display()
                ),
                None => format!("interrupted after step {step}"),
            };
            crate::cancel::set_note(note);
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}
