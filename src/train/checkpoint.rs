//! Writing checkpoints in the official layout, plus the `--resume` sidecar.
//!
//! `<name>.safetensors` holds exactly the keys of an official SDSeg `state_dict`:
//! `model.diffusion_model.*` (training weights), `model_ema.<key below model. without dots>`
//! plus `model_ema.decay` (f32) and `model_ema.num_updates` (i32) when the config has
//! `use_ema`, `first_stage_model.*`, `cond_stage_model.*`, the 0-d `scale_factor` and the 12
//! schedule buffers. `train-autoencoder` writes `first_stage_model.*` only.
//!
//! `<name>.state.safetensors` holds the AdamW moments (`exp_avg.<key>`, `exp_avg_sq.<key>`,
//! `step.<key>`), and `state.json` in the run folder the step, seed and run settings. Files are
//! written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::checkpoint::ema_name;
use crate::model::config::SdsegConfig;
use crate::model::unet::UNetConfig;
use crate::model::vae::DdConfig;

use super::ema::Ema;
use super::model::{schedule_buffers, TrainModel};
use super::optim::AdamW;
use super::TrainError;

/// Save named tensors as safetensors atomically (temporary file + rename).
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-ckpt-")
        .tempfile_in(&dir)
        .map_err(|source| TrainError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    candle_core::safetensors::save(tensors, tmp.path()).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    tmp.persist(path).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The full SDSeg state dict of `model` (+ EMA) with official key names.
pub fn sdseg_state_dict(
    model: &TrainModel,
    ema: Option<&Ema>,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let cpu = Device::Cpu;
    let mut out = HashMap::new();
    for (k, v) in model.unet_params().into_iter().chain(model.cond_params()) {
        out.insert(k, v.as_tensor().detach().to_device(&cpu)?);
    }
    for (k, t) in &model.first_stage.tensors {
        out.insert(k.clone(), t.to_device(&cpu)?);
    }
    if let Some(ema) = ema {
        for (k, s) in ema.shadows() {
            let name = ema_name(k).ok_or_else(|| TrainError::Internal(format!("EMA key {k}")))?;
            out.insert(name, s.to_device(&cpu)?);
        }
        out.insert(
            "model_ema.decay".into(),
            Tensor::new(ema.decay(), &cpu)?.to_dtype(DType::F32)?,
        );
        out.insert(
            "model_ema.num_updates".into(),
            Tensor::new(ema.num_updates(), &cpu)?,
        );
    }
    let sf = model.scale_factor.unwrap_or(1.0);
    out.insert("scale_factor".into(), Tensor::new(sf, &cpu)?);
    for (name, v) in schedule_buffers(&model.schedule) {
        let n = v.len();
        out.insert(name.to_string(), Tensor::from_vec(v, n, &cpu)?);
    }
    Ok(out)
}

/// Run settings and progress, `state.json` in the run folder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Optimiser steps done.
    pub step: u64,
    pub seed: u64,
    pub batch_size: usize,
    /// Base learning rate (already scaled by batch size when `--scale-lr`).
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub pipeline: String,
    pub data: String,
    pub scale_factor: Option<f32>,
    /// Best validation mean Dice so far (None without validation).
    pub best_val_dice: Option<f64>,
    /// Checkpoint file names relative to the run folder.
    pub checkpoint: String,
    pub optimizer_state: String,
}

impl RunState {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("state.json")
    }

    pub fn load(run_dir: &Path) -> Result<RunState, TrainError> {
        let p = Self::path(run_dir);
        let text = std::fs::read_to_string(&p).map_err(|e| TrainError::Resume {
            run_dir: run_dir.to_path_buf(),
            message: format!("cannot read {}: {e}", p.display()),
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Resume {
            run_dir: run_dir.to_path_buf(),
            message: format!("{} is not a valid run state: {e}", p.display()),
        })
    }

    pub fn save(&self, run_dir: &Path) -> Result<(), TrainError> {
        let p = Self::path(run_dir);
        let text = serde_json::to_string_pretty(self).expect("plain data serialises");
        write_text(&p, &text)
    }
}

pub fn write_text(path: &Path, text: &str) -> Result<(), TrainError> {
    crate::io::atomic::write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())
    })
    .map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `<dir>/<name>.safetensors` (weights) and `<dir>/<name>.state.safetensors`
/// (optimiser state); returns the two paths.
pub fn write_training_checkpoint(
    dir: &Path,
    name: &str,
    model: &TrainModel,
    ema: Option<&Ema>,
    opt: Option<&AdamW>,
) -> Result<(PathBuf, Option<PathBuf>), TrainError> {
    let weights = dir.join(format!("{name}.safetensors"));
    save_tensors(&weights, &sdseg_state_dict(model, ema)?)?;
    let state = match opt {
        Some(opt) => {
            let p = dir.join(format!("{name}.state.safetensors"));
            save_tensors(&p, &opt.state_tensors()?)?;
            Some(p)
        }
        None => None,
    };
    Ok((weights, state))
}

fn dd_json(dd: &DdConfig) -> serde_json::Value {
    serde_json::json!({
        "double_z": dd.double_z,
        "z_channels": dd.z_channels,
        "resolution": dd.resolution,
        "in_channels": dd.in_channels,
        "out_ch": dd.out_ch,
        "ch": dd.ch,
        "ch_mult": dd.ch_mult,
        "num_res_blocks": dd.num_res_blocks,
        "attn_resolutions": dd.attn_resolutions,
        "dropout": dd.dropout,
    })
}

fn unet_json(u: &UNetConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "model_channels": u.model_channels,
        "attention_resolutions": u.attention_resolutions,
        "num_res_blocks": u.num_res_blocks,
        "channel_mult": u.channel_mult,
        "num_heads": u.num_heads,
        "num_head_channels": u.num_head_channels,
        "num_heads_upsample": u.num_heads_upsample,
        "use_scale_shift_norm": u.use_scale_shift_norm,
        "resblock_updown": u.resblock_updown,
        "use_new_attention_order": u.use_new_attention_order,
        "conv_resample": u.conv_resample,
        "dims": u.dims,
        "legacy": u.legacy,
        "dropout": u.dropout,
    });
    if let Some(s) = u.image_size {
        v["image_size"] = s.into();
    }
    if let Some(k) = u.num_classes {
        v["num_classes"] = k.into();
    }
    v
}

/// The model config as the LDM-style JSON `SdsegConfig::load` reads (`model.params` keys of
/// the official YAML), with the estimated `scale_factor` copied to the top level as the
/// fixtures do (the weights' `scale_factor` buffer still wins when loading).
pub fn config_json(cfg: &SdsegConfig, scale_factor: Option<f32>) -> serde_json::Value {
    let p = &cfg.params;
    let schedule = match p.beta_schedule {
        crate::model::schedule::BetaSchedule::Linear => "linear",
        crate::model::schedule::BetaSchedule::SqrtLinear => "sqrt_linear",
        crate::model::schedule::BetaSchedule::Sqrt => "sqrt",
        crate::model::schedule::BetaSchedule::Cosine => "cosine",
    };
    let fs = cfg.first_stage();
    let cond = cfg.cond_stage();
    let mut cond_params = dd_json(&cond.ddconfig);
    cond_params["embed_dim"] = cond.embed_dim.into();
    let mut v = serde_json::json!({
        "target": cfg.target.clone().unwrap_or_else(|| "ldm.models.diffusion.SDSeg.SDSeg".into()),
        "params": {
            "num_classes": p.num_classes,
            "conditioning_key": p.conditioning_key,
            "timesteps": p.timesteps,
            "beta_schedule": schedule,
            "linear_start": p.linear_start,
            "linear_end": p.linear_end,
            "parameterization": p.parameterization,
            "scale_by_std": p.scale_by_std,
            "use_ema": p.use_ema,
            "loss_type": "l1",
            "first_stage_key": "segmentation",
            "cond_stage_key": "image",
            "cond_stage_trainable": true,
            "concat_mode": true,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": unet_json(cfg.unet()),
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": { "embed_dim": fs.embed_dim, "ddconfig": dd_json(&fs.ddconfig) },
            },
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.AEEncoderEmbedder",
                "params": cond_params,
            },
        },
    });
    if let Some(s) = p.scale_factor {
        v["params"]["scale_factor"] = s.into();
    }
    if let Some(sf) = scale_factor {
        v["scale_factor"] = (sf as f64).into();
    }
    v
}

/// Write `config.json` for a run folder or a model folder.
pub fn write_config(
    path: &Path,
    cfg: &SdsegConfig,
    scale_factor: Option<f32>,
) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(&config_json(cfg, scale_factor)).expect("json");
    write_text(path, &(text + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_round_trips() {
        for name in crate::model::config::PRESETS {
            let c = SdsegConfig::preset(name).unwrap();
            let text = config_json(&c, Some(0.25)).to_string();
            let back = SdsegConfig::from_json_str(&text, "test").unwrap();
            assert_eq!(back.params, c.params, "{name}");
            assert_eq!(back.scale_factor, Some(0.25));
        }
    }
}
