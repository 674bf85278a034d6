//! Strict key accounting: a logging `SimpleBackend` over a [`Checkpoint`], the EMA rename,
//! and the final comparison of what the model asked for with what the file holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{ema_name, expected_extra, Checkpoint, KeyProblems, ModelError, UNET_PREFIX};

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
        let Some(info) = self.ckpt.keys().get(name) else {
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
        for (k, info) in self.ckpt.keys() {
            if log.consumed.contains(k) || problems.mismatched.contains_key(k) {
                continue;
            }
            if expected_extra(k, self.use_ema) {
                extras += 1;
            } else {
                problems.unexpected.insert(k.clone(), info.shape.clone());
            }
        }
        for (k, why) in self.ckpt.skipped() {
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
            path: self.ckpt.path().to_owned(),
            problems: Box::new(problems),
        })
    }

    fn hint(&self, p: &KeyProblems) -> Option<String> {
        let has = |prefix: &str| self.ckpt.keys().keys().any(|k| k.starts_with(prefix));
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
