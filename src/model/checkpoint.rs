//! Reading SDSeg weights: `.safetensors` and the official PyTorch-Lightning `.ckpt`, with
//! strict key accounting and the EMA mapping.
//!
//! - A `.ckpt` is a zip holding a pickle; tensors sit under `state_dict` beside other
//!   Lightning objects. The pickle is *parsed* with candle's opcode interpreter
//!   (`candle_core::pickle::Stack`), never executed: globals are only recorded as class
//!   names, and only `torch._utils._rebuild_tensor_v2` records become tensors. A plain
//!   `torch.save(state_dict)` file works too.
//! - The UNet comes from the EMA copy by default: `model_ema.` + the parameter path under
//!   `model.` with every dot removed (`LitEma.m_name2s_name`). That is one rename applied to
//!   the UNet's `VarBuilder` ([`LoadSession::unet_var_builder`]); layers never know.
//! - Every `get` is logged. After building, [`LoadSession::finish`] compares the log with the
//!   file: missing, mis-shaped or unexpected keys become one [`ModelError::Keys`] listing
//!   them. Keys inference does not need are expected extras ([`expected_extra`]).
//! - Weights stored as f32/f16/bf16 are converted to the dtype each layer asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::{Object, Stack};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::model::config::ConfigError;

/// Errors of loading or assembling the model. All but `Candle` are the user's input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot open weights {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a .safetensors file nor a PyTorch/Lightning checkpoint (zip) — \
         expected one of those two formats"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: cannot read checkpoint: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: tensor {key}: {message}")]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: {problems}")]
    Keys {
        path: PathBuf,
        problems: Box<KeyProblems>,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid model input: {0}")]
    Input(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

impl crate::error::Classify for ModelError {
    fn is_input_error(&self) -> bool {
        !matches!(self, ModelError::Candle(_))
    }
}

/// The keys that did not fit, listed in the error message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyProblems {
    /// Key the model asked for → the shape it expected.
    pub missing: BTreeMap<String, Vec<usize>>,
    /// Key → (shape in the file, shape the model expected).
    pub mismatched: BTreeMap<String, (Vec<usize>, Vec<usize>)>,
    /// In the file, not used, and not a known extra.
    pub unexpected: BTreeMap<String, Vec<usize>>,
    /// A hint for the common mistakes (EMA vs raw weights, wrong config).
    pub hint: Option<String>,
}

impl KeyProblems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty() && self.unexpected.is_empty()
    }
}

impl std::fmt::Display for KeyProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOW: usize = 25;
        write!(
            f,
            "checkpoint does not match the model config: {} missing, {} mis-shaped, {} unexpected key(s)",
            self.missing.len(),
            self.mismatched.len(),
            self.unexpected.len()
        )?;
        for (k, s) in self.missing.iter().take(SHOW) {
            write!(f, "\n  missing:    {k} (model expects {s:?})")?;
        }
        if self.missing.len() > SHOW {
            write!(f, "\n  … and {} more missing", self.missing.len() - SHOW)?;
        }
        for (k, (file, want)) in self.mismatched.iter().take(SHOW) {
            write!(
                f,
                "\n  mis-shaped: {k}: file {file:?}, model expects {want:?}"
            )?;
        }
        if self.mismatched.len() > SHOW {
            write!(
                f,
                "\n  … and {} more mis-shaped",
                self.mismatched.len() - SHOW
            )?;
        }
        for (k, s) in self.unexpected.iter().take(SHOW) {
            write!(f, "\n  unexpected: {k} {s:?}")?;
        }
        if self.unexpected.len() > SHOW {
            write!(
                f,
                "\n  … and {} more unexpected",
                self.unexpected.len() - SHOW
            )?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Schedule buffers `DDPM.register_schedule` stores (all length T, f32).
pub const SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
];

/// The two schedule buffers inference reads.
pub const INFERENCE_BUFFERS: &[&str] =
    &["sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"];

/// Where the UNet lives in an SDSeg state dict.
pub const UNET_PREFIX: &str = "model.diffusion_model";

/// `LitEma.m_name2s_name`: `model.diffusion_model.input_blocks.0.0.weight` →
/// `model_ema.diffusion_modelinput_blocks00weight`. None for keys outside `model.`.
pub fn ema_name(key: &str) -> Option<String> {
    key.strip_prefix("model.")
        .map(|rest| format!("model_ema.{}", rest.replace('.', "")))
}

/// Keys a full SDSeg checkpoint holds that single-step inference does not read.
pub fn expected_extra(key: &str, use_ema: bool) -> bool {
    key.starts_with("first_stage_model.encoder.")
        || key.starts_with("first_stage_model.quant_conv.")
        || key == "model_ema.decay"
        || key == "model_ema.num_updates"
        || key == "scale_factor"
        || key == "lvlb_weights"
        || key == "logvar"
        || SCHEDULE_BUFFERS.contains(&key)
        || (use_ema && key.starts_with("model.diffusion_model."))
        || (!use_ema && key.starts_with("model_ema."))
}

/// Keys `convert_checkpoint` keeps: what [`crate::model::sdseg::Sdseg::load`] reads.
pub fn inference_key(key: &str, use_ema: bool) -> bool {
    let unet = if use_ema {
        key.starts_with("model_ema.") && key != "model_ema.decay" && key != "model_ema.num_updates"
    } else {
        key.starts_with("model.diffusion_model.")
    };
    unet || key.starts_with("first_stage_model.decoder.")
        || key.starts_with("first_stage_model.post_quant_conv.")
        || key.starts_with("cond_stage_model.")
        || key == "scale_factor"
        || INFERENCE_BUFFERS.contains(&key)
}

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

/// One tensor record of the pickle: where its bytes are and how to view them.
#[derive(Clone, Debug)]
struct PthEntry {
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
    zip_path: String,
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
        // SAFETY: the mapping is read-only; like every mmap-based loader we rely on nobody
        // truncating the weights file while it is open.
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
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .map_err(|e| read_err(format!("pickle: {e}")))?;
            stack
                .finalize()
                .map_err(|e| read_err(format!("pickle: {e}")))?
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

/// Decode one state-dict value: `_rebuild_tensor_v2(storage, offset, size, stride, …)`,
/// possibly wrapped in `_rebuild_parameter` or `_rebuild_from_type_v2`.
fn pth_entry(value: Object, dir: &str) -> Result<PthEntry, String> {
    let (callable, args) = value
        .reduce()
        .map_err(|o| format!("not a tensor ({})", short(&o)))?;
    let (callable, args) = match callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._tensor" && class_name == "_rebuild_from_type_v2" => {
            let mut a = args
                .tuple()
                .map_err(|o| format!("bad args {}", short(&o)))?;
            if a.len() < 3 {
                return Err("bad _rebuild_from_type_v2 args".into());
            }
            let inner_args = a.remove(2);
            (a.remove(0), inner_args)
        }
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_parameter" => {
            let mut a = args
                .tuple()
                .map_err(|o| format!("bad args {}", short(&o)))?;
            if a.is_empty() {
                return Err("bad _rebuild_parameter args".into());
            }
            a.remove(0)
                .reduce()
                .map_err(|o| format!("not a tensor ({})", short(&o)))?
        }
        c => (c, args),
    };
    match &callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        other => return Err(format!("not a tensor ({})", short(other))),
    }
    let mut a = args
        .tuple()
        .map_err(|o| format!("bad args {}", short(&o)))?;
    if a.len() < 4 {
        return Err("bad _rebuild_tensor_v2 args".into());
    }
    let stride =
        Vec::<usize>::try_from(a.remove(3)).map_err(|o| format!("stride {}", short(&o)))?;
    let shape = Vec::<usize>::try_from(a.remove(2)).map_err(|o| format!("size {}", short(&o)))?;
    let offset = a
        .remove(1)
        .int_or_long()
        .map_err(|o| format!("offset {}", short(&o)))? as usize;
    let storage = a
        .remove(0)
        .persistent_load()
        .and_then(|s| s.tuple())
        .map_err(|o| format!("storage {}", short(&o)))?;
    if storage.len() < 3 {
        return Err("bad storage record".into());
    }
    let mut storage = storage;
    let key = storage
        .remove(2)
        .unicode()
        .map_err(|o| format!("storage key {}", short(&o)))?;
    let (_, class_name) = storage
        .remove(1)
        .class()
        .map_err(|o| format!("storage type {}", short(&o)))?;
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        other => return Err(format!("unsupported storage type {other}")),
    };
    if stride.len() != shape.len() {
        return Err("size and stride ranks differ".into());
    }
    Ok(PthEntry {
        dtype,
        shape,
        stride,
        offset,
        zip_path: format!("{dir}/{key}"),
    })
}

fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// The tensor's bytes in row-major order from its storage bytes, honouring offset and strides.
fn gather_strided(storage: &[u8], e: &PthEntry) -> Result<Vec<u8>, String> {
    let es = e.dtype.size_in_bytes();
    let n: usize = e.shape.iter().product();
    // Largest element index the view touches.
    let last = e.offset
        + e.shape
            .iter()
            .zip(&e.stride)
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum::<usize>();
    if n > 0 && (last + 1) * es > storage.len() {
        return Err(format!(
            "storage holds {} bytes, the view needs {}",
            storage.len(),
            (last + 1) * es
        ));
    }
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in e.shape.iter().zip(&e.stride).rev() {
        if d > 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    if contiguous {
        return Ok(storage[e.offset * es..(e.offset + n) * es].to_vec());
    }
    let mut out = Vec::with_capacity(n * es);
    let mut idx = vec![0usize; e.shape.len()];
    for _ in 0..n {
        let at = e.offset + idx.iter().zip(&e.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < e.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// What the layers asked for while the model was built.
#[derive(Debug, Default)]
struct KeyLog {
    consumed: BTreeSet<String>,
    missing: BTreeMap<String, Vec<usize>>,
    mismatched: BTreeMap<String, (Vec<usize>, Vec<usize>)>,
    failed: Vec<ModelError>,
}

/// `SimpleBackend` over a [`Checkpoint`] that logs every request. Missing or mis-shaped keys
/// give zeros (so building goes on and every problem is listed at the end), never a model:
/// [`LoadSession::finish`] fails if anything was logged as wrong.
struct Tracked {
    ckpt: Arc<Checkpoint>,
    log: Arc<Mutex<KeyLog>>,
}

impl Tracked {
    fn log(&self) -> std::sync::MutexGuard<'_, KeyLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimpleBackend for Tracked {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(info) = self.ckpt.keys.get(name) else {
            self.log()
                .missing
                .insert(name.to_owned(), s.dims().to_vec());
            return Tensor::zeros(s, dtype, dev);
        };
        if info.shape != s.dims() {
            self.log()
                .mismatched
                .insert(name.to_owned(), (info.shape.clone(), s.dims().to_vec()));
            return Tensor::zeros(s, dtype, dev);
        }
        match self.ckpt.tensor_as(name, dtype, dev) {
            Ok(t) => {
                self.log().consumed.insert(name.to_owned());
                Ok(t)
            }
            Err(e) => {
                let msg = e.to_string();
                self.log().failed.push(e);
                Err(candle_core::Error::Msg(msg))
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.ckpt.contains(name) {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            });
        }
        self.log().consumed.insert(name.to_owned());
        self.ckpt
            .tensor_as(name, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }
}

/// One model build from one checkpoint: hands out `VarBuilder`s, then checks the accounting.
pub struct LoadSession {
    ckpt: Arc<Checkpoint>,
    log: Arc<Mutex<KeyLog>>,
    use_ema: bool,
}

/// Summary of a successful strict load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    pub consumed: usize,
    /// Keys in the file that inference does not need (EMA/raw twin, encoder, buffers…).
    pub extras: usize,
}

impl LoadSession {
    pub fn new(ckpt: Arc<Checkpoint>, use_ema: bool) -> Self {
        Self {
            ckpt,
            log: Arc::default(),
            use_ema,
        }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    pub fn use_ema(&self) -> bool {
        self.use_ema
    }

    /// Root builder with the stored key names (`cond_stage_model.*`, `first_stage_model.*`).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = Tracked {
            ckpt: self.ckpt.clone(),
            log: self.log.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Builder positioned at the UNet (`model.diffusion_model`). With EMA every full key is
    /// renamed by [`ema_name`] before it reaches the file.
    pub fn unet_var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let vb = self.var_builder(dtype, device);
        let vb = if self.use_ema {
            vb.rename_f(|name: &str| ema_name(name).unwrap_or_else(|| name.to_owned()))
        } else {
            vb
        };
        vb.pp(UNET_PREFIX)
    }

    /// Record a key read outside a `VarBuilder` (scale factor, schedule buffers).
    pub fn mark_used(&self, key: &str) {
        if self.ckpt.contains(key) {
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .consumed
                .insert(key.to_owned());
        }
    }

    /// Strict accounting: Err listing every missing, mis-shaped or unexpected key.
    pub fn finish(self) -> Result<KeyReport, ModelError> {
        let mut log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(e) = log.failed.pop() {
            return Err(e);
        }
        let mut problems = KeyProblems {
            missing: log.missing,
            mismatched: log.mismatched,
            ..Default::default()
        };
        let mut extras = 0;
        for (k, info) in &self.ckpt.keys {
            if log.consumed.contains(k) || problems.mismatched.contains_key(k) {
                continue;
            }
            if expected_extra(k, self.use_ema) {
                extras += 1;
            } else {
                problems.unexpected.insert(k.clone(), info.shape.clone());
            }
        }
        for (k, why) in &self.ckpt.skipped {
            if !expected_extra(k, self.use_ema) {
                problems.unexpected.insert(format!("{k} ({why})"), vec![]);
            }
        }
        if problems.is_empty() {
            return Ok(KeyReport {
                consumed: log.consumed.len(),
                extras,
            });
        }
        problems.hint = self.hint(&problems);
        Err(ModelError::Keys {
            path: self.ckpt.path.clone(),
            problems: Box::new(problems),
        })
    }

    fn hint(&self, p: &KeyProblems) -> Option<String> {
        let has = |prefix: &str| self.ckpt.keys.keys().any(|k| k.starts_with(prefix));
        let unet_missing = p.missing.keys().any(|k| k.starts_with("model"));
        if self.use_ema && unet_missing && !has("model_ema.") && has("model.diffusion_model.") {
            return Some(
                "the file has no EMA weights (model_ema.*); load the raw UNet with --no-ema".into(),
            );
        }
        if !self.use_ema && unet_missing && !has("model.diffusion_model.") && has("model_ema.") {
            return Some(
                "the file keeps only the EMA UNet (model_ema.*); load it without --no-ema".into(),
            );
        }
        if !p.mismatched.is_empty() || (!p.missing.is_empty() && !p.unexpected.is_empty()) {
            return Some(
                "the model config does not describe this checkpoint; pass the run's config with \
                 --model-config"
                    .into(),
            );
        }
        None
    }
}

/// What `convert_checkpoint` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertReport {
    pub kept: usize,
    pub dropped: usize,
    pub bytes: u64,
    pub use_ema: bool,
}

/// Tensor bytes for safetensors serialisation.
struct OwnedView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &OwnedView {
    fn dtype(&self) -> safetensors::Dtype {
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

fn owned_view(t: &Tensor) -> candle_core::Result<OwnedView> {
    use safetensors::Dtype as S;
    let t = t.flatten_all()?;
    let (dtype, data): (S, Vec<u8>) = match t.dtype() {
        DType::F32 => (
            S::F32,
            t.to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            S::F64,
            t.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            S::F16,
            t.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            S::BF16,
            t.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::I64 => (
            S::I64,
            t.to_vec1::<i64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::U32 => (
            S::U32,
            t.to_vec1::<u32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::U8 => (S::U8, t.to_vec1::<u8>()?),
        d => candle_core::bail!("cannot serialise dtype {d:?}"),
    };
    Ok(OwnedView {
        dtype,
        shape: vec![],
        data,
    })
}

/// Keep what inference reads (see [`inference_key`]) and write it as `.safetensors`,
/// atomically. Floating tensors become `dtype` if given, except `scale_factor` and the
/// schedule buffers, which stay f32. The UNet keeps its stored names (`model_ema.*` by
/// default, `model.diffusion_model.*` with `use_ema = false`), so the output loads through
/// the same loader with the same `use_ema` and gives the same result. `verify` is called on
/// the finished temporary file before it is moved into place (e.g. a strict model load).
pub fn convert_checkpoint(
    input: &Path,
    output: &Path,
    dtype: Option<DType>,
    use_ema: bool,
    verify: Option<&dyn Fn(&Path) -> Result<(), ModelError>>,
) -> Result<ConvertReport, ModelError> {
    let ckpt = Checkpoint::open(input)?;
    let has_unet = ckpt
        .keys()
        .keys()
        .any(|k| inference_key(k, use_ema) && k.starts_with("model"));
    if !has_unet {
        let which = if use_ema {
            "model_ema.* (try --no-ema)"
        } else {
            "model.diffusion_model.*"
        };
        return Err(ModelError::Read {
            path: input.to_owned(),
            message: format!("no UNet weights under {which}"),
        });
    }
    let mut views = Vec::new();
    let mut dropped = 0;
    for key in ckpt.keys().keys() {
        if !inference_key(key, use_ema) {
            dropped += 1;
            continue;
        }
        let t = ckpt.tensor(key)?;
        let keep_f32 = key == "scale_factor" || INFERENCE_BUFFERS.contains(&key.as_str());
        let t = match dtype {
            Some(d) if t.dtype().is_float() && !keep_f32 => t.to_dtype(d)?,
            _ if keep_f32 => t.to_dtype(DType::F32)?,
            _ => t,
        };
        let mut v = owned_view(&t)?;
        v.shape = t.dims().to_vec();
        views.push((key.clone(), v));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_owned(), "sdseg-volume/inference".to_owned());
    meta.insert(
        "unet_weights".to_owned(),
        if use_ema { "ema" } else { "raw" }.to_owned(),
    );
    meta.insert(
        "source".to_owned(),
        input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );

    let write_err = |source: std::io::Error| ModelError::Write {
        path: output.to_owned(),
        source,
    };
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part.safetensors")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    safetensors::serialize_to_file(
        views.iter().map(|(k, v)| (k.as_str(), v)),
        Some(meta),
        tmp.path(),
    )
    .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    if let Some(verify) = verify {
        verify(tmp.path())?;
    }
    let bytes = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(output).map_err(|e| write_err(e.error))?;
    Ok(ConvertReport {
        kept: views.len(),
        dropped: dropped + ckpt.skipped().len(),
        bytes,
        use_ema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_names_strip_every_dot() {
        assert_eq!(
            ema_name("model.diffusion_model.input_blocks.1.0.emb_layers.1.bias").as_deref(),
            Some("model_ema.diffusion_modelinput_blocks10emb_layers1bias")
        );
        assert_eq!(ema_name("cond_stage_model.out.weight"), None);
    }

    #[test]
    fn extras_depend_on_ema_choice() {
        assert!(expected_extra("model.diffusion_model.out.2.weight", true));
        assert!(!expected_extra("model.diffusion_model.out.2.weight", false));
        assert!(expected_extra("model_ema.diffusion_modelout2weight", false));
        assert!(expected_extra(
            "first_stage_model.encoder.conv_in.weight",
            true
        ));
        assert!(!expected_extra(
            "first_stage_model.decoder.conv_in.weight",
            true
        ));
        assert!(!expected_extra("cond_stage_model.out.weight", true));
        assert!(inference_key("model_ema.diffusion_modelout2weight", true));
        assert!(!inference_key("model_ema.num_updates", true));
        assert!(inference_key("sqrt_recip_alphas_cumprod", true));
        assert!(!inference_key("betas", true));
    }

    #[test]
    fn strided_gather_matches_row_major() {
        // A 2×3 f32 tensor stored transposed (Fortran order): storage = [0, 3, 1, 4, 2, 5].
        let storage: Vec<u8> = [0f32, 3., 1., 4., 2., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = PthEntry {
            dtype: DType::F32,
            shape: vec![2, 3],
            stride: vec![1, 2],
            offset: 0,
            zip_path: String::new(),
        };
        let out = gather_strided(&storage, &e).unwrap();
        let vals: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![0., 1., 2., 3., 4., 5.]);
        let bad = PthEntry { offset: 3, ..e };
        assert!(gather_strided(&storage, &bad).is_err());
    }
}
