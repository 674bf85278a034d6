//! `convert_checkpoint`: keep what inference reads, write a lean `.safetensors` atomically.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::{inference_key, Checkpoint, ModelError, INFERENCE_BUFFERS};

/// A check run on the converted file before it replaces the output (e.g. a strict load).
pub type VerifyFn<'a> = dyn Fn(&Path) -> Result<(), ModelError> + 'a;

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
    verify: Option<&VerifyFn<'_>>,
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
