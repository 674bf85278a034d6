//! Opening a weights file: the key index and lazy, dtype-converting tensor access.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::pickle::{Object, Stack};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::pickle::{gather_strided, pth_entry, PthEntry};
use super::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// PyTorch zip pickle (Lightning `.ckpt`, or a bare state dict `.pt`/`.pth`).
    TorchZip,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub shape: Vec<usize>,
    /// Stored dtype (None for entries candle has no dtype for).
    pub dtype: Option<DType>,
}

enum Source {
    Safetensors(MmapedSafetensors),
    TorchZip {
        zip: Mutex<zip::ZipArchive<std::io::BufReader<std::fs::File>>>,
        entries: BTreeMap<String, PthEntry>,
    },
}

/// An opened weights file: its key index and lazy access to each tensor.
pub struct Checkpoint {
    path: PathBuf,
    format: WeightsFormat,
    keys: BTreeMap<String, KeyInfo>,
    /// Pickle entries that are not tensors we can read (name, why).
    skipped: Vec<(String, String)>,
    metadata: BTreeMap<String, String>,
    source: Source,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Checkpoint {
    /// Open `.safetensors` or a torch zip (`.ckpt`), told apart by content, not extension.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_owned();
        let mut head = [0u8; 9];
        let n = std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|source| ModelError::Open {
                path: path.clone(),
                source,
            })?;
        if n >= 4 && &head[..4] == b"PK\x03\x04" {
            Self::open_torch_zip(path)
        } else if n == 9 && head[8] == b'{' {
            Self::open_safetensors(path)
        } else {
            Err(ModelError::UnknownFormat { path })
        }
    }

    fn open_safetensors(path: PathBuf) -> Result<Self, ModelError> {
        let read_err = |e: candle_core::Error| ModelError::Read {
            path: path.clone(),
            message: e.to_string(),
        };
        // Memory-mapped (a full-size checkpoint is GBs, read piecemeal as layers load), hence
        // `unsafe`: a mapping reads whatever the file holds at the time, so candle requires
        // that the file is not modified while mapped. Sound enough: the mapping is read-only,
        // lives only as long as this `Checkpoint`, and we never write weights files in place
        // (`convert-checkpoint` and training write a temporary file and rename it over the
        // old one, which leaves a mapping on the old contents); another process rewriting the
        // file under us is outside what any mmap-based loader (candle, safetensors, PyTorch)
        // guards against.
        #[allow(unsafe_code)]
        // SAFETY: see above; the path is a safetensors file we opened and checked just now.
        let st = unsafe { MmapedSafetensors::new(&path) }.map_err(read_err)?;
        let mut keys = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = DType::try_from(view.dtype()).ok();
            keys.insert(
                name,
                KeyInfo {
                    shape: view.shape().to_vec(),
                    dtype,
                },
            );
        }
        let metadata = read_safetensors_metadata(&path).unwrap_or_default();
        Ok(Self {
            path,
            format: WeightsFormat::Safetensors,
            keys,
            skipped: vec![],
            metadata,
            source: Source::Safetensors(st),
        })
    }

    fn open_torch_zip(path: PathBuf) -> Result<Self, ModelError> {
        let read_err = |message: String| ModelError::Read {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|source| ModelError::Open {
            path: path.clone(),
            source,
        })?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| read_err(format!("not a valid zip: {e}")))?;
        let pkl = (0..zip.len())
            .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
            .find(|n| n.ends_with("data.pkl"))
            .ok_or_else(|| read_err("no data.pkl inside (not a torch.save file)".into()))?;
        let dir = pkl.trim_end_matches(".pkl").to_owned();
        let obj = {
            let reader = zip
                .by_name(&pkl)
                .map_err(|e| read_err(format!("{pkl}: {e}")))?;
            let mut reader = std::io::BufReader::new(reader);
            // candle's pickle reader panics on some malformed opcodes (a LONG1 of 8+ bytes
            // overflows a shift); a damaged file must be an error, not a crash.
            let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut stack = Stack::empty();
                stack.read_loop(&mut reader)?;
                stack.finalize()
            }));
            match parsed {
                Ok(r) => r.map_err(|e| read_err(format!("pickle: {e}")))?,
                Err(_) => return Err(read_err("pickle: malformed opcode arguments".into())),
            }
        };
        let items = match obj {
            Object::Dict(items) => items,
            _ => {
                return Err(read_err(
                    "the pickle's top-level object is not a dict".into(),
                ))
            }
        };
        // Lightning: {"state_dict": {...}, "optimizer_states": ..., ...}; else a state dict.
        let state_key = Object::Unicode("state_dict".into());
        let items = match items.iter().position(|(k, _)| *k == state_key) {
            Some(i) => match items.into_iter().nth(i).map(|(_, v)| v) {
                Some(Object::Dict(sd)) => sd,
                _ => return Err(read_err("`state_dict` is not a dict".into())),
            },
            None => items,
        };
        let mut entries = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut skipped = vec![];
        for (k, v) in items {
            let Object::Unicode(name) = k else { continue };
            // OrderedDict's `_metadata` attribute (module versions) comes through as an item.
            if name == "_metadata" {
                continue;
            }
            match pth_entry(v, &dir) {
                Ok(e) => {
                    keys.insert(
                        name.clone(),
                        KeyInfo {
                            shape: e.shape.clone(),
                            dtype: Some(e.dtype),
                        },
                    );
                    entries.insert(name, e);
                }
                Err(why) => skipped.push((name, why)),
            }
        }
        if keys.is_empty() {
            return Err(read_err("no tensors found (expected a state_dict)".into()));
        }
        Ok(Self {
            path,
            format: WeightsFormat::TorchZip,
            keys,
            skipped,
            metadata: BTreeMap::new(),
            source: Source::TorchZip {
                zip: Mutex::new(zip),
                entries,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> WeightsFormat {
        self.format
    }

    /// Every tensor key with its stored shape and dtype.
    pub fn keys(&self) -> &BTreeMap<String, KeyInfo> {
        &self.keys
    }

    /// Pickle entries that are not readable tensors (e.g. non-tensor values), with why.
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    /// safetensors `__metadata__` (empty for .ckpt).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    fn tensor_err(&self, key: &str, message: impl std::fmt::Display) -> ModelError {
        ModelError::Tensor {
            path: self.path.clone(),
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// The tensor as stored (dtype and shape), on the CPU.
    pub fn tensor(&self, key: &str) -> Result<Tensor, ModelError> {
        match &self.source {
            Source::Safetensors(st) => st
                .load(key, &Device::Cpu)
                .map_err(|e| self.tensor_err(key, e)),
            Source::TorchZip { zip, entries } => {
                let e = entries
                    .get(key)
                    .ok_or_else(|| self.tensor_err(key, "not in the checkpoint"))?;
                let mut bytes = vec![];
                {
                    let mut zip = zip.lock().unwrap_or_else(|p| p.into_inner());
                    let mut f = zip
                        .by_name(&e.zip_path)
                        .map_err(|err| self.tensor_err(key, format!("{}: {err}", e.zip_path)))?;
                    f.read_to_end(&mut bytes)
                        .map_err(|err| self.tensor_err(key, err))?;
                }
                let data = gather_strided(&bytes, e).map_err(|m| self.tensor_err(key, m))?;
                Tensor::from_raw_buffer(&data, e.dtype, &e.shape, &Device::Cpu)
                    .map_err(|err| self.tensor_err(key, err))
            }
        }
    }

    /// A tensor converted to `dtype` on `device`.
    pub fn tensor_as(
        &self,
        key: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        let t = self.tensor(key)?;
        t.to_dtype(dtype)
            .and_then(|t| t.to_device(device))
            .map_err(|e| self.tensor_err(key, e))
    }

    /// A one-element tensor (e.g. `scale_factor`, 0-dim) as f64; None if absent.
    pub fn scalar(&self, key: &str) -> Result<Option<f64>, ModelError> {
        if !self.contains(key) {
            return Ok(None);
        }
        let t = self.tensor_as(key, DType::F64, &Device::Cpu)?;
        if t.elem_count() != 1 {
            return Err(
                self.tensor_err(key, format!("expected one value, got shape {:?}", t.dims()))
            );
        }
        let v = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| self.tensor_err(key, e))?;
        Ok(Some(v[0]))
    }

    /// A 1-D buffer as f32 values; None if absent.
    pub fn vector_f32(&self, key: &str) -> Result<Option<Vec<f32>>, ModelError> {
        if !self.contains(key) {
            return Ok(None);
        }
        let t = self.tensor_as(key, DType::F32, &Device::Cpu)?;
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map(Some)
            .map_err(|e| self.tensor_err(key, e))
    }
}

fn read_safetensors_metadata(path: &Path) -> Option<BTreeMap<String, String>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let meta = v.get("__metadata__")?.as_object()?;
    Some(
        meta.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
    )
}
