//! safetensors files: memory-mapped reading with errors naming the file and tensor, and atomic
//! writing (a temporary file renamed into place, so a failed save never clobbers the last one).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One mapped safetensors file.
pub struct StFile {
    pub path: PathBuf,
    mmap: memmap2::Mmap,
    header: usize,
    meta: safetensors::tensor::Metadata,
    pub names: Vec<String>,
    pub metadata: HashMap<String, String>,
}

impl StFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only read; a concurrent truncation is the usual mmap caveat.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| describe(path, &mmap, e))?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        let (header, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| describe(path, &mmap, e))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(StFile {
            path: path.to_path_buf(),
            mmap,
            header,
            meta,
            names,
            metadata,
        })
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let missing = || Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        };
        let info = self.meta.info(name).ok_or_else(missing)?;
        let (a, b) = info.data_offsets;
        let start = 8 + self.header;
        TensorView::new(
            info.dtype,
            info.shape.clone(),
            &self.mmap[start + a..start + b],
        )
        .map_err(|e| Error::file(&self.path, format!("tensor `{name}`: {e}")))
    }

    pub fn has(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// How `name` is stored (`F32`, `BF16`, …), from the header.
    pub fn stored_dtype(&self, name: &str) -> Option<String> {
        self.meta.info(name).map(|i| format!("{:?}", i.dtype))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    /// Loads `name` on `device`, converted to `dtype` when given.
    pub fn load(&self, name: &str, device: &Device, dtype: Option<DType>) -> Result<Tensor> {
        use candle_core::safetensors::Load;
        let v = self.view(name)?;
        let t = v
            .load(&Device::Cpu)
            .map_err(|e| Error::file(&self.path, format!("tensor `{name}`: {e}")))?;
        let t = match dtype {
            Some(dt) if dt != t.dtype() => t.to_dtype(dt)?,
            _ => t,
        };
        Ok(t.to_device(device)?)
    }

    /// Every tensor in the file.
    pub fn load_all(&self, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        self.names
            .iter()
            .map(|n| Ok((n.clone(), self.load(n, device, None)?)))
            .collect()
    }
}

fn describe(path: &Path, buf: &[u8], e: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    let msg = match &e {
        E::MetadataIncompleteBuffer | E::InvalidOffset(_) => format!(
            "not a complete safetensors file ({} bytes; truncated or still being written): {e}",
            buf.len()
        ),
        E::HeaderTooSmall
        | E::HeaderTooLarge
        | E::InvalidHeader(_)
        | E::InvalidHeaderDeserialization(_) => {
            format!("not a safetensors file (bad header): {e}")
        }
        _ => format!("cannot read safetensors: {e}"),
    };
    Error::file(path, msg)
}

fn st_dtype(dt: DType) -> Result<StDtype> {
    Ok(match dt {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::F64 => StDtype::F64,
        DType::U8 => StDtype::U8,
        DType::U32 => StDtype::U32,
        DType::I64 => StDtype::I64,
        DType::I32 => StDtype::I32,
        DType::I16 => StDtype::I16,
        other => {
            return Err(Error::msg(format!(
                "cannot save dtype {other:?} to safetensors"
            )))
        }
    })
}

struct Raw {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw(t: &Tensor) -> Result<Raw> {
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let data = match t.dtype() {
        DType::F32 => bytes(&t.flatten_all()?.to_vec1::<f32>()?),
        DType::F16 => bytes(&t.flatten_all()?.to_vec1::<half::f16>()?),
        DType::BF16 => bytes(&t.flatten_all()?.to_vec1::<half::bf16>()?),
        DType::F64 => bytes(&t.flatten_all()?.to_vec1::<f64>()?),
        DType::U8 => t.flatten_all()?.to_vec1::<u8>()?,
        DType::U32 => bytes(&t.flatten_all()?.to_vec1::<u32>()?),
        DType::I64 => bytes(&t.flatten_all()?.to_vec1::<i64>()?),
        DType::I32 => bytes(&t.flatten_all()?.to_vec1::<i32>()?),
        DType::I16 => bytes(&t.flatten_all()?.to_vec1::<i16>()?),
        other => {
            return Err(Error::msg(format!(
                "cannot save dtype {other:?} to safetensors"
            )))
        }
    };
    Ok(Raw {
        dtype: st_dtype(t.dtype())?,
        shape: t.dims().to_vec(),
        data,
    })
}

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    let n = std::mem::size_of_val(v);
    // SAFETY: plain-old-data numeric slices reinterpreted as bytes (little-endian host).
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, n) }.to_vec()
}

/// Writes `tensors` to `path` atomically, with `metadata` (PEFT writes `{"format": "pt"}`).
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), raw(t)?)))
        .collect::<Result<_>>()?;
    let data: Vec<(&str, &Raw)> = raws.iter().map(|(k, r)| (k.as_str(), r)).collect();
    let buf =
        safetensors::serialize(data, metadata).map_err(|e| Error::file(path, e.to_string()))?;
    write_atomic(path, &buf)
}

/// Writes bytes to a temporary sibling, flushes it to disk, renames it over `path` and flushes
/// the directory: a reader (or a run killed at any moment) sees the old file or the new one,
/// never a part of either. Every file ftl writes goes through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    sync_dir(dir.unwrap_or(Path::new(".")))
}

/// Flushes a directory's entries (a rename into it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Reads a JSON file with an error naming the file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// Writes JSON with sorted keys and two-space indent (as PEFT's `json.dumps(sort_keys=True)`).
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let sorted = sort_keys(v);
    let s = serde_json::to_string_pretty(&sorted).map_err(|e| Error::file(path, e.to_string()))?;
    write_atomic(path, s.as_bytes())
}

pub(crate) fn sort_keys(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sort_keys(&m[k]));
            }
            serde_json::Value::Object(out)
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}
