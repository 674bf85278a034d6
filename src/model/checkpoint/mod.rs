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

mod convert;
mod file;
mod pickle;
mod session;

pub use convert::{convert_checkpoint, ConvertReport, VerifyFn};
pub use file::{Checkpoint, KeyInfo, WeightsFormat};
pub use session::{KeyReport, LoadSession};

use std::collections::BTreeMap;
use std::path::PathBuf;

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
}
