//! SDSeg's condition encoder, `ldm/modules/encoders/modules.py::AEEncoderEmbedder`: the KL-f8
//! VAE `Encoder` (double_z, so 2·z_channels outputs) followed by a learned 1×1 conv
//! 2·z_channels → embed_dim. Keys `cond_stage_model.encoder.*` and `cond_stage_model.out.*`.
//!
//! `get_learned_conditioning` is `encode(x) = forward(x)`: a plain tensor, no posterior split,
//! no `quant_conv` and no scale factor (reference §1.3).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::model::conv::conv2d;
use crate::model::vae::{DdConfig, Encoder};
use sdseg_kernels::conv::Conv2d;

/// `cond_stage_config.params`: the encoder's ddconfig plus `embed_dim` (all in one flat map in
/// the YAML).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AEEncoderEmbedderConfig {
    pub embed_dim: usize,
    #[serde(flatten)]
    pub ddconfig: DdConfig,
}

#[derive(Clone, Debug)]
pub struct AEEncoderEmbedder {
    encoder: Encoder,
    out: Conv2d,
}

impl AEEncoderEmbedder {
    /// `vb` points at `cond_stage_model`.
    pub fn new(cfg: &DdConfig, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        let enc_out = if cfg.double_z {
            2 * cfg.z_channels
        } else {
            cfg.z_channels
        };
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            out: conv2d(enc_out, embed_dim, 1, Conv2dConfig::default(), vb.pp("out"))?,
        })
    }

    pub fn from_config(cfg: &AEEncoderEmbedderConfig, vb: VarBuilder) -> Result<Self> {
        Self::new(&cfg.ddconfig, cfg.embed_dim, vb)
    }

    /// Image [B, in_channels, H, W] in [−1, 1] → condition latent [B, embed_dim, H/f, W/f].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

impl ModuleT for AEEncoderEmbedder {
    /// `train` switches the encoder's dropout on (SDSeg trains this module, dropout 0.2).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.out.forward(&self.encoder.forward_t(x, train)?)
    }
}
