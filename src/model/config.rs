//! SDSeg model configuration with the official LDM YAML names, so a run's `config.json` (the
//! `model:` section of `configs/SDSeg/*.yaml` or of a run's `*-project.yaml`, as JSON) loads
//! as is:
//!
//! ```text
//! { "target": "ldm.models.diffusion.SDSeg.SDSeg",
//!   "params": { "num_classes", "conditioning_key", "linear_start", "linear_end", "timesteps",
//!               "scale_factor"?, "scale_by_std", "use_ema",
//!               "unet_config":        { "params": { model_channels, channel_mult, … } },
//!               "first_stage_config": { "params": { "embed_dim", "ddconfig": { ch, ch_mult, … } } },
//!               "cond_stage_config":  { "params": { "embed_dim", ch, ch_mult, … } } } }
//! ```
//!
//! A document wrapped in `{"model": …}` (the project-YAML layout) is accepted too. Unknown keys
//! (lossconfig, monitor, scheduler_config, data, …) are ignored. Runtime choices (device,
//! dtype, batch size) are not model configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::cond::AEEncoderEmbedderConfig;
use crate::model::schedule::{BetaSchedule, Schedule};
use crate::model::unet::UNetConfig;
use crate::model::vae::DdConfig;

/// Names accepted by [`SdsegConfig::preset`].
pub const PRESETS: &[&str] = &["sdseg-binary", "sdseg-cls9", "sdseg-cls14", "sdseg-demo"];

/// The bundled demo model's architecture (`testdata/demo-model/`): 64×64 slices, a KL-f4
/// autoencoder (16×16×4 latents), a 32-channel UNet, and a gentler noise schedule than the
/// official one (ᾱ at t = 999 is 0.14 instead of 6.7e-4), so that the one-step estimate
/// amplifies ε̂ errors 2.4× instead of 39× and a 2 MB model trains in minutes on a CPU.
/// docs/demo-model.md explains the choices.
const SDSEG_DEMO_JSON: &str = include_str!("presets/sdseg-demo.json");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model config {path} is not a valid SDSeg config: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model config {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("unknown model preset {name:?} (known: {})", PRESETS.join(", "))]
    UnknownPreset { name: String },
}

impl crate::error::Classify for ConfigError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// `{ "target": …, "params": {…} }` blocks of the YAML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Section<P> {
    #[serde(default)]
    pub target: Option<String>,
    pub params: P,
}

/// `first_stage_config.params` (AutoencoderKL).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FirstStageParams {
    pub embed_dim: usize,
    pub ddconfig: DdConfig,
}

/// `model.params` (`SDSeg` / `LatentDiffusion` / `DDPM` constructor arguments).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SdsegParams {
    /// Classes including background; 2 = binary. `> 2` runs one pass per class (§2.2).
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// `concat` (binary) or `class_embed` / `hybrid` (class via `label_emb`).
    #[serde(default = "default_conditioning_key")]
    pub conditioning_key: String,
    #[serde(default = "default_timesteps")]
    pub timesteps: usize,
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    /// DDPM default 1e-4; every SDSeg config sets 0.0015.
    #[serde(default = "default_linear_start")]
    pub linear_start: f64,
    /// DDPM default 2e-2; every SDSeg config sets 0.0155.
    #[serde(default = "default_linear_end")]
    pub linear_end: f64,
    #[serde(default = "default_parameterization")]
    pub parameterization: String,
    /// `LatentDiffusion(scale_factor=1.0)`; with `scale_by_std` the checkpoint buffer wins.
    #[serde(default)]
    pub scale_factor: Option<f64>,
    #[serde(default)]
    pub scale_by_std: bool,
    #[serde(default = "default_true")]
    pub use_ema: bool,
    pub unet_config: Section<UNetConfig>,
    pub first_stage_config: Section<FirstStageParams>,
    pub cond_stage_config: Section<AEEncoderEmbedderConfig>,
    // Fixed upstream choices: cond_stage_trainable, concat_mode, first/cond_stage_key,
    // num_timesteps_cond 1, loss_type l1: training-only or no effect on inference.
}

fn default_num_classes() -> usize {
    2
}
fn default_conditioning_key() -> String {
    "concat".into()
}
fn default_timesteps() -> usize {
    1000
}
fn default_linear_start() -> f64 {
    1e-4
}
fn default_linear_end() -> f64 {
    2e-2
}
fn default_parameterization() -> String {
    "eps".into()
}
fn default_true() -> bool {
    true
}

/// The whole model: `model:` of an LDM YAML (target + params).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SdsegConfig {
    #[serde(default)]
    pub target: Option<String>,
    pub params: SdsegParams,
    /// Not an LDM key: the fixtures' `config.json` copies the checkpoint's `scale_factor` here.
    /// Used only when the checkpoint has no `scale_factor` buffer.
    #[serde(default)]
    pub scale_factor: Option<f64>,
}

/// `{"model": {...}}` (project YAML layout) or the model section itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Wrapped { model: SdsegConfig },
    Bare(SdsegConfig),
}

/// How the class enters the model (derived from the config, validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `num_classes == 2`, `conditioning_key: concat`: one pass, mask = mean_c > 0.5.
    Binary,
    /// `num_classes > 2` with `label_emb`: one pass per class id 0..K, argmax of the logits.
    MultiClass { num_classes: usize },
}

impl SdsegConfig {
    /// Read a JSON model config (`config.json`, or the `model:` section of a project YAML
    /// converted to JSON) and validate it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string()).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            e => e,
        })
    }

    /// Parse and validate; `origin` names the source in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let doc: Document = serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from(origin),
            source,
        })?;
        let cfg = match doc {
            Document::Wrapped { model } => model,
            Document::Bare(c) => c,
        };
        cfg.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// A named preset (full-size official architectures, see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "sdseg-binary" => Ok(Self::sdseg(2, None, "concat")),
            "sdseg-cls9" => Ok(Self::sdseg(9, Some(9), "class_embed")),
            "sdseg-cls14" => Ok(Self::sdseg(14, Some(14), "class_embed")),
            "sdseg-demo" => Self::from_json_str(SDSEG_DEMO_JSON, "preset sdseg-demo"),
            _ => Err(ConfigError::UnknownPreset { name: name.into() }),
        }
    }

    /// A file path if it exists, else a preset name.
    pub fn from_arg(arg: &str) -> Result<Self, ConfigError> {
        let p = Path::new(arg);
        if p.exists() || !PRESETS.contains(&arg) {
            Self::load(p)
        } else {
            Self::preset(arg)
        }
    }

    /// The config that belongs to a weights file: `<weights>.json`, else `config.json` in the
    /// same folder. None if neither exists.
    pub fn find_beside(weights: &Path) -> Option<PathBuf> {
        let mut own = weights.as_os_str().to_owned();
        own.push(".json");
        let own = PathBuf::from(own);
        if own.is_file() {
            return Some(own);
        }
        let dir = weights.parent().filter(|d| !d.as_os_str().is_empty());
        let beside = dir.unwrap_or(Path::new(".")).join("config.json");
        beside.is_file().then_some(beside)
    }

    /// The config for a weights file: `arg` (a file or a preset name) if given, else the one
    /// [`Self::find_beside`] finds. Returns where it came from; None when nothing applies.
    pub fn for_weights(
        arg: Option<&str>,
        weights: &Path,
    ) -> Result<Option<(Self, String)>, ConfigError> {
        if let Some(a) = arg {
            let origin = if Path::new(a).exists() || !PRESETS.contains(&a) {
                a.to_owned()
            } else {
                format!("preset {a}")
            };
            return Ok(Some((Self::from_arg(a)?, origin)));
        }
        match Self::find_beside(weights) {
            Some(p) => Ok(Some((Self::load(&p)?, p.display().to_string()))),
            None => Ok(None),
        }
    }

    /// The official full-size SDSeg model. `sdseg-binary` copies
    /// `configs/SDSeg/sts3d-ldm-kl-8-concat-mode.yaml` (identical model to
    /// `synapse-cls2-ldm-kl-8.yaml` up to training-only dropout); `sdseg-cls9` copies
    /// `configs/SDSeg/synapse-cls9-ldm-kl-8-finetune.yaml`; `sdseg-cls14` copies
    /// `configs/SDSeg/synapse-cls14-ldm-kl-8.yaml` (lin-tianyu/Stable-Diffusion-Seg @ 0b0aa38).
    fn sdseg(num_classes: usize, unet_classes: Option<usize>, key: &str) -> Self {
        let mut cond = DdConfig::kl_f8();
        cond.dropout = 0.2;
        SdsegConfig {
            target: Some("ldm.models.diffusion.SDSeg.SDSeg".into()),
            params: SdsegParams {
                num_classes,
                conditioning_key: key.into(),
                timesteps: 1000,
                beta_schedule: BetaSchedule::Linear,
                linear_start: 0.0015,
                linear_end: 0.0155,
                parameterization: "eps".into(),
                scale_factor: None,
                scale_by_std: true,
                use_ema: true,
                unet_config: Section {
                    target: Some("ldm.modules.diffusionmodules.openaimodel.UNetModel".into()),
                    params: UNetConfig::sdseg(unet_classes),
                },
                first_stage_config: Section {
                    target: Some("ldm.models.autoencoder.AutoencoderKL".into()),
                    params: FirstStageParams {
                        embed_dim: 4,
                        ddconfig: DdConfig::kl_f8(),
                    },
                },
                cond_stage_config: Section {
                    target: Some("ldm.modules.encoders.modules.AEEncoderEmbedder".into()),
                    params: AEEncoderEmbedderConfig {
                        embed_dim: 4,
                        ddconfig: cond,
                    },
                },
            },
            scale_factor: None,
        }
    }

    pub fn unet(&self) -> &UNetConfig {
        &self.params.unet_config.params
    }

    pub fn first_stage(&self) -> &FirstStageParams {
        &self.params.first_stage_config.params
    }

    pub fn cond_stage(&self) -> &AEEncoderEmbedderConfig {
        &self.params.cond_stage_config.params
    }

    pub fn task(&self) -> Task {
        if self.params.num_classes > 2 {
            Task::MultiClass {
                num_classes: self.params.num_classes,
            }
        } else {
            Task::Binary
        }
    }

    /// The schedule the config describes (before any checkpoint buffers).
    pub fn schedule(&self) -> Schedule {
        let p = &self.params;
        Schedule::new(p.beta_schedule, p.timesteps, p.linear_start, p.linear_end)
    }

    /// Scale factor from the config alone (`params.scale_factor`, else the top-level copy,
    /// else 1.0 as `LatentDiffusion` starts).
    pub fn config_scale_factor(&self) -> f64 {
        self.params
            .scale_factor
            .or(self.scale_factor)
            .unwrap_or(1.0)
    }

    /// Image side the model expects (`ddconfig.resolution`, 256).
    pub fn image_size(&self) -> usize {
        self.cond_stage().ddconfig.resolution
    }

    /// Latent shape [C, h, w] of the noise and the condition for one image.
    pub fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape_for(self.cond_stage().ddconfig.resolution)
    }

    /// Latent shape [C, h, w] for a square image of side `size` (the condition encoder's
    /// down-sampling; `size` should be a multiple of [`Self::image_factor`]).
    pub fn latent_shape_for(&self, size: usize) -> [usize; 3] {
        let side = size / self.cond_stage().ddconfig.downsample_factor();
        [self.cond_stage().embed_dim, side, side]
    }

    /// What an image side must be a multiple of: the condition encoder's down-sampling times
    /// the UNet's (8 × 16 = 128 for the official models, 4 × 2 = 8 for `sdseg-demo`).
    pub fn image_factor(&self) -> usize {
        self.cond_stage().ddconfig.downsample_factor() * self.unet().downsample_factor()
    }

    /// Cross-field checks: the pieces must fit together the way SDSeg wires them.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.params;
        let unet = self.unet();
        unet.check().map_err(|m| format!("unet_config: {m}"))?;
        if p.parameterization != "eps" {
            return Err(format!(
                "parameterization {:?} is not supported (SDSeg predicts eps)",
                p.parameterization
            ));
        }
        if p.timesteps == 0 {
            return Err("timesteps must be positive".into());
        }
        if p.num_classes < 2 {
            return Err(format!(
                "num_classes {} must be ≥ 2 (background included)",
                p.num_classes
            ));
        }
        let class_embed = matches!(p.conditioning_key.as_str(), "class_embed" | "hybrid");
        match (p.conditioning_key.as_str(), unet.num_classes) {
            ("concat", None) => {}
            ("concat", Some(_)) => {
                return Err(
                    "conditioning_key concat with unet_config.params.num_classes set".into(),
                )
            }
            (_, Some(k)) if class_embed => {
                if p.num_classes > k {
                    return Err(format!(
                        "num_classes {} exceeds the UNet's label_emb size {k}",
                        p.num_classes
                    ));
                }
            }
            (k, None) if class_embed => {
                return Err(format!(
                    "conditioning_key {k} needs unet_config.params.num_classes"
                ))
            }
            (k, _) => {
                return Err(format!(
                    "conditioning_key {k:?} is not supported (concat, class_embed, hybrid)"
                ))
            }
        }
        if class_embed != (p.num_classes > 2) {
            return Err(format!(
                "num_classes {} does not match conditioning_key {:?} (binary = concat, multi-class = class_embed)",
                p.num_classes, p.conditioning_key
            ));
        }
        let cond = self.cond_stage();
        let fs = self.first_stage();
        let latent = cond.embed_dim;
        if fs.embed_dim != latent {
            return Err(format!(
                "first_stage embed_dim {} ≠ cond_stage embed_dim {latent} (noise has the condition's shape)",
                fs.embed_dim
            ));
        }
        if unet.in_channels != 2 * latent || unet.out_channels != latent {
            return Err(format!(
                "unet in/out channels {}/{} must be {}/{} (noise ⊕ condition → eps)",
                unet.in_channels,
                unet.out_channels,
                2 * latent,
                latent
            ));
        }
        let side = self.latent_shape()[1];
        let f = unet.downsample_factor();
        if side == 0 || !side.is_multiple_of(f) {
            return Err(format!(
                "latent side {side} is not divisible by the UNet's factor {f}"
            ));
        }
        let dd_f = fs.ddconfig.downsample_factor();
        if dd_f != cond.ddconfig.downsample_factor()
            || fs.ddconfig.resolution != cond.ddconfig.resolution
        {
            return Err(
                "first stage and condition encoder disagree on resolution / down-sampling".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for name in PRESETS {
            let c = SdsegConfig::preset(name).unwrap();
            c.validate().unwrap();
            let want = if *name == "sdseg-demo" { 16 } else { 32 };
            assert_eq!(c.latent_shape(), [4, want, want], "{name}");
            assert_eq!(c.latent_shape_for(c.image_size()), c.latent_shape());
        }
        let official = SdsegConfig::preset("sdseg-binary").unwrap();
        assert_eq!(official.image_factor(), 128);
        assert_eq!(official.latent_shape_for(128), [4, 16, 16]);
        let demo = SdsegConfig::preset("sdseg-demo").unwrap();
        assert_eq!(demo.image_factor(), 8);
        assert_eq!(demo.latent_shape_for(96), [4, 24, 24]);
        assert_eq!(
            SdsegConfig::preset("sdseg-binary").unwrap().task(),
            Task::Binary
        );
        assert_eq!(
            SdsegConfig::preset("sdseg-cls14").unwrap().task(),
            Task::MultiClass { num_classes: 14 }
        );
        assert!(matches!(
            SdsegConfig::preset("nope"),
            Err(ConfigError::UnknownPreset { .. })
        ));
    }

    #[test]
    fn wrapped_and_bare_documents() {
        let c = SdsegConfig::preset("sdseg-binary").unwrap();
        let unet = r#"{"params": {"in_channels": 8, "out_channels": 4, "model_channels": 32,
            "num_res_blocks": 1, "attention_resolutions": [1], "channel_mult": [1, 2],
            "num_heads": 2}}"#;
        let dd = r#""double_z": true, "z_channels": 4, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1"#;
        let body = format!(
            r#"{{"params": {{"linear_start": 0.0015, "linear_end": 0.0155, "unet_config": {unet},
            "first_stage_config": {{"params": {{"embed_dim": 4, "ddconfig": {{{dd}}}}}}},
            "cond_stage_config": {{"params": {{"embed_dim": 4, {dd}}}}}}}}}"#
        );
        let bare = SdsegConfig::from_json_str(&body, "bare").unwrap();
        let wrapped =
            SdsegConfig::from_json_str(&format!(r#"{{"model": {body}}}"#), "wrapped").unwrap();
        assert_eq!(bare, wrapped);
        assert_eq!(bare.task(), Task::Binary);
        assert_eq!(bare.params.conditioning_key, "concat");
        assert_eq!(bare.unet().num_head_channels, -1);
        assert_ne!(bare, c);
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let mut c = SdsegConfig::preset("sdseg-cls9").unwrap();
        c.params.unet_config.params.num_classes = None;
        assert!(c.validate().unwrap_err().contains("needs unet_config"));
        let mut c = SdsegConfig::preset("sdseg-binary").unwrap();
        c.params.unet_config.params.in_channels = 4;
        assert!(c.validate().unwrap_err().contains("in/out channels"));
        let mut c = SdsegConfig::preset("sdseg-binary").unwrap();
        c.params.num_classes = 5;
        assert!(c.validate().is_err());
    }
}
