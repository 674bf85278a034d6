//! The SDSeg model in training form: trainable UNet and condition encoder as candle `Var`s
//! named with the official keys, a frozen autoencoder, the schedule buffers, and the loss of
//! one step (`SDSeg.p_losses`):
//!
//! ```text
//! z0      = scale_factor · sample(first_stage.encode(mask))      mask: 3-ch, {−1, 1}
//! c       = cond_stage_model(image)                              (dropout on, trainable)
//! t       ~ U{0, …, T−1};  ε ~ N(0, I)
//! z_t     = √ᾱ_t·z0 + √(1−ᾱ_t)·ε                                 (q_sample)
//! ε̂       = UNet(cat[z_t, c], t [, y = class])
//! ẑ0      = √(1/ᾱ_t)·z_t − √(1/ᾱ_t − 1)·ε̂                       (latent_estimate op)
//! loss    = mean|ε̂ − ε| + mean|ẑ0 − z0|                          (λ = 1, logvar 0)
//! ```
//!
//! Initialisation is PyTorch's defaults (`kaiming_uniform(a=√5)` weights, uniform biases,
//! GroupNorm 1/0, `nn.Embedding` N(0, 1)) with the LDM `zero_module` layers zeroed (UNet
//! `out.2`, every ResBlock `out_layers.3`, every AttentionBlock `proj_out`); `--init`
//! checkpoints then overwrite what they provide ([`TrainModel::apply_init`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, ModuleT, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::model::checkpoint::{ema_name, Checkpoint};
use crate::model::cond::AEEncoderEmbedder;
use crate::model::config::SdsegConfig;
use crate::model::schedule::Schedule;
use crate::model::unet::UNetModel;
use crate::model::vae::{AutoencoderKL, DiagonalGaussian};
use sdseg_kernels::latent::latent_estimate;

use super::optim::ParamGroup;
use super::TrainError;

pub const UNET: &str = "model.diffusion_model";
pub const COND: &str = "cond_stage_model";
pub const FIRST: &str = "first_stage_model";

/// Is `key` one of the layers LDM zero-initialises (`zero_module`)?
fn zero_initialised(key: &str) -> bool {
    key.starts_with("model.diffusion_model.")
        && (key.contains(".out_layers.3.")
            || key.contains(".proj_out.")
            || key.starts_with("model.diffusion_model.out.2."))
}

/// PyTorch default initial values for the parameter `key` of `shape`; `weight_shape` is the
/// shape of the sibling `weight` (for biases).
fn default_init(
    key: &str,
    shape: &[usize],
    weight_shape: Option<&[usize]>,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if zero_initialised(key) {
        return vec![0.0; n];
    }
    let uniform = |bound: f64, rng: &mut ChaCha8Rng| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect()
    };
    let fan_in = |s: &[usize]| s[1..].iter().product::<usize>().max(1) as f64;
    if key.ends_with("label_emb.weight") {
        return (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
    }
    if key.ends_with(".weight") {
        if shape.len() >= 2 {
            // kaiming_uniform(a=√5): bound = gain·√(3/fan_in) = 1/√fan_in
            return uniform(1.0 / fan_in(shape).sqrt(), rng);
        }
        return vec![1.0; n]; // GroupNorm
    }
    if key.ends_with(".bias") {
        return match weight_shape {
            Some(w) if w.len() >= 2 => uniform(1.0 / fan_in(w).sqrt(), rng),
            _ => vec![0.0; n], // GroupNorm
        };
    }
    vec![0.0; n]
}

/// Give every variable of `varmap` its PyTorch default value (keys in sorted order, so the
/// result depends on the seed only).
pub fn init_varmap(varmap: &VarMap, rng: &mut ChaCha8Rng) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let shapes: HashMap<&str, Vec<usize>> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.dims().to_vec()))
        .collect();
    let mut keys: Vec<&String> = data.keys().collect();
    keys.sort();
    for k in keys {
        let var = &data[k];
        let wkey = k.strip_suffix(".bias").map(|b| format!("{b}.weight"));
        let wshape = wkey
            .as_deref()
            .and_then(|w| shapes.get(w))
            .map(Vec::as_slice);
        let vals = default_init(k, var.dims(), wshape, rng);
        let t = Tensor::from_vec(vals, var.dims(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Sorted (key, var) pairs of a var map whose key starts with `prefix.`.
pub fn vars_with_prefix(varmap: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{prefix}.");
    let mut v: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, _)| k.starts_with(&p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A frozen AutoencoderKL and its tensors (keys `first_stage_model.*`).
pub struct FrozenAutoencoder {
    pub model: AutoencoderKL,
    pub tensors: BTreeMap<String, Tensor>,
}

impl FrozenAutoencoder {
    pub fn from_tensors(
        config: &SdsegConfig,
        tensors: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<FrozenAutoencoder> {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.detach()))
            .collect();
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        let fs = config.first_stage();
        let model = AutoencoderKL::new(&fs.ddconfig, fs.embed_dim, vb.pp(FIRST))?;
        Ok(FrozenAutoencoder { model, tensors })
    }

    /// Randomly initialised (PyTorch defaults).
    pub fn random(config: &SdsegConfig, device: &Device, rng: &mut ChaCha8Rng) -> Result<Self> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let fs = config.first_stage();
        AutoencoderKL::new(&fs.ddconfig, fs.embed_dim, vb.pp(FIRST))?;
        init_varmap(&vm, rng)?;
        let tensors = vars_with_prefix(&vm, FIRST)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect();
        Self::from_tensors(config, tensors, device)
    }
}

/// The 12 schedule buffers `DDPM.register_schedule` stores, computed in f64 and rounded to
/// f32 as the official code does (`betas`, `alphas_cumprod`, …, `posterior_mean_coef2`).
pub fn schedule_buffers(s: &Schedule) -> Vec<(&'static str, Vec<f32>)> {
    let betas = &s.betas;
    let ac = &s.alphas_cumprod;
    let n = betas.len();
    let ac_prev: Vec<f64> = (0..n)
        .map(|i| if i == 0 { 1.0 } else { ac[i - 1] })
        .collect();
    let f = |g: &dyn Fn(usize) -> f64| -> Vec<f32> { (0..n).map(|i| g(i) as f32).collect() };
    let post_var = |i: usize| betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i]);
    vec![
        ("betas", f(&|i| betas[i])),
        ("alphas_cumprod", f(&|i| ac[i])),
        ("alphas_cumprod_prev", f(&|i| ac_prev[i])),
        ("sqrt_alphas_cumprod", f(&|i| ac[i].sqrt())),
        (
            "sqrt_one_minus_alphas_cumprod",
            f(&|i| (1.0 - ac[i]).sqrt()),
        ),
        ("log_one_minus_alphas_cumprod", f(&|i| (1.0 - ac[i]).ln())),
        ("sqrt_recip_alphas_cumprod", f(&|i| (1.0 / ac[i]).sqrt())),
        (
            "sqrt_recipm1_alphas_cumprod",
            f(&|i| (1.0 / ac[i] - 1.0).sqrt()),
        ),
        ("posterior_variance", f(&post_var)),
        (
            "posterior_log_variance_clipped",
            f(&|i| post_var(i).max(1e-20).ln()),
        ),
        (
            "posterior_mean_coef1",
            f(&|i| betas[i] * ac_prev[i].sqrt() / (1.0 - ac[i])),
        ),
        (
            "posterior_mean_coef2",
            f(&|i| (1.0 - ac_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i])),
        ),
    ]
}

/// Loss values of one step (host copies for logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepLosses {
    pub loss: f32,
    pub loss_simple: f32,
    pub loss_seg: f32,
}

/// What `--init` did.
#[derive(Clone, Debug, Default)]
pub struct InitReport {
    /// (file, what was taken from it)
    pub sources: Vec<(PathBuf, String)>,
    /// Keys zero-padded along the input channels (`input_blocks.0.0.weight`).
    pub padded: Vec<String>,
    pub first_stage_loaded: bool,
    /// The condition encoder's `encoder.*` was copied from the first stage's encoder.
    pub cond_from_first_stage: bool,
    pub warnings: Vec<String>,
}

pub struct TrainModel {
    pub config: SdsegConfig,
    pub device: Device,
    /// Trainable variables: `model.diffusion_model.*` and `cond_stage_model.*`.
    pub varmap: VarMap,
    pub unet: UNetModel,
    pub cond: AEEncoderEmbedder,
    pub first_stage: FrozenAutoencoder,
    pub schedule: Schedule,
    sqrt_ac: Vec<f32>,
    sqrt_1m_ac: Vec<f32>,
    /// `scale_factor`; None until estimated from the first batch.
    pub scale_factor: Option<f32>,
    /// Training timesteps are drawn uniformly from `[t_min, T)`; 0 (the official recipe)
    /// draws from every step. Inference uses only t = T − 1, so a small model trained on
    /// little compute learns the one step it needs faster with a high `t_min`.
    pub t_min: u32,
}

impl TrainModel {
    /// Random model (PyTorch default init from `rng`).
    pub fn new(config: &SdsegConfig, device: &Device, rng: &mut ChaCha8Rng) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let unet = UNetModel::new(config.unet(), vb.pp(UNET))?;
        let cond = AEEncoderEmbedder::from_config(config.cond_stage(), vb.pp(COND))?;
        init_varmap(&varmap, rng)?;
        let first_stage = FrozenAutoencoder::random(config, device, rng)?;
        let schedule = config.schedule();
        let bufs = schedule_buffers(&schedule);
        let get = |name: &str| {
            bufs.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .expect("known buffer")
        };
        Ok(TrainModel {
            config: config.clone(),
            device: device.clone(),
            varmap,
            unet,
            cond,
            first_stage,
            sqrt_ac: get("sqrt_alphas_cumprod"),
            sqrt_1m_ac: get("sqrt_one_minus_alphas_cumprod"),
            schedule,
            scale_factor: None,
            t_min: 0,
        })
    }

    pub fn unet_params(&self) -> Vec<(String, Var)> {
        vars_with_prefix(&self.varmap, UNET)
    }

    pub fn cond_params(&self) -> Vec<(String, Var)> {
        vars_with_prefix(&self.varmap, COND)
    }

    /// `SDSeg.configure_optimizers`: the UNet at the base rate, `label_emb` at 100×, the
    /// condition encoder at the base rate.
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        let (emb, unet): (Vec<_>, Vec<_>) = self
            .unet_params()
            .into_iter()
            .partition(|(k, _)| k.starts_with("model.diffusion_model.label_emb."));
        let mut groups = vec![ParamGroup {
            name: "unet".into(),
            lr_scale: 1.0,
            params: unet,
        }];
        if !emb.is_empty() {
            groups.push(ParamGroup {
                name: "label_emb".into(),
                lr_scale: 100.0,
                params: emb,
            });
        }
        groups.push(ParamGroup {
            name: "cond_stage_model".into(),
            lr_scale: 1.0,
            params: self.cond_params(),
        });
        groups
    }

    fn var(&self, key: &str) -> Option<Var> {
        let data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        data.get(key).cloned()
    }

    /// Set a trainable variable from a stored tensor (shape checked).
    fn set_var(&self, key: &str, t: &Tensor, origin: &Path) -> std::result::Result<(), TrainError> {
        let var = self.var(key).ok_or_else(|| TrainError::Init {
            path: origin.to_path_buf(),
            message: format!("{key} is not a parameter of this model"),
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Init {
                path: origin.to_path_buf(),
                message: format!(
                    "{key}: checkpoint shape {:?}, model shape {:?} (does the model config match the checkpoint?)",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
        var.set(&t)?;
        Ok(())
    }

    /// Apply `--init` checkpoints in order (reference `SDSeg.init_from_ckpt` with
    /// `only_model`, `Encoder.init_from_ckpt`, `AutoencoderKL.init_from_ckpt`):
    ///
    /// * UNet from `model.diffusion_model.*` (or the EMA copy `model_ema.*` when the file
    ///   has only that); every UNet parameter but `label_emb` must be present; a first conv
    ///   with fewer input channels (LDM's 4) is zero-padded to the model's 8.
    /// * Autoencoder from `first_stage_model.*`, or from the bare kl-f8 layout
    ///   (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`).
    /// * Condition encoder from `cond_stage_model.*`; if no file has it, its `encoder.*` is
    ///   copied from the (loaded) first stage's encoder (`out` stays random).
    pub fn apply_init(&mut self, paths: &[PathBuf]) -> std::result::Result<InitReport, TrainError> {
        let mut report = InitReport::default();
        let mut cond_loaded = false;
        for path in paths {
            let ckpt = Checkpoint::open(path)?;
            let keys: Vec<&String> = ckpt.keys().keys().collect();
            let has = |p: &str| keys.iter().any(|k| k.starts_with(p));
            let mut took = Vec::new();
            // UNet
            let unet_src = if has("model.diffusion_model.") {
                Some(false)
            } else if has("model_ema.") {
                Some(true)
            } else {
                None
            };
            if let Some(from_ema) = unet_src {
                self.init_unet(&ckpt, path, from_ema, &mut report)?;
                took.push(if from_ema {
                    "UNet (from model_ema.*)"
                } else {
                    "UNet"
                });
            }
            // First stage
            let fs_prefix = if has("first_stage_model.") {
                Some("first_stage_model.")
            } else if has("encoder.") && has("decoder.") && has("post_quant_conv.") {
                Some("")
            } else {
                None
            };
            if let Some(prefix) = fs_prefix {
                self.init_first_stage(&ckpt, path, prefix)?;
                report.first_stage_loaded = true;
                took.push("autoencoder");
            }
            // Condition encoder
            if has("cond_stage_model.") {
                self.init_cond_stage(&ckpt, path)?;
                cond_loaded = true;
                took.push("condition encoder");
            }
            if took.is_empty() {
                return Err(TrainError::Init {
                    path: path.clone(),
                    message: "no UNet (model.diffusion_model.* / model_ema.*), autoencoder \
                              (first_stage_model.* or encoder.*/decoder.*) or condition encoder \
                              (cond_stage_model.*) keys found"
                        .into(),
                });
            }
            report.sources.push((path.clone(), took.join(", ")));
        }
        if !cond_loaded && report.first_stage_loaded {
            self.cond_from_first_stage_encoder(&mut report)?;
        }
        Ok(report)
    }

    /// The UNet from `model.diffusion_model.*` (`from_ema`: `model_ema.*`) of `ckpt`; every
    /// parameter but `label_emb` must be there; a first conv with fewer input channels is
    /// zero-padded (noted in `report`).
    fn init_unet(
        &mut self,
        ckpt: &Checkpoint,
        path: &Path,
        from_ema: bool,
        report: &mut InitReport,
    ) -> std::result::Result<(), TrainError> {
        let mut missing = Vec::new();
        for (k, var) in self.unet_params() {
            let stored = if from_ema {
                ema_name(&k).expect("UNet keys start with model.")
            } else {
                k.clone()
            };
            if !ckpt.contains(&stored) {
                if !k.contains(".label_emb.") {
                    missing.push(stored);
                }
                continue;
            }
            let t = ckpt.tensor_as(&stored, DType::F32, &self.device)?;
            let t = if t.dims() != var.dims() && k.ends_with("input_blocks.0.0.weight") {
                let (o, i, kh, kw) = t.dims4()?;
                let want = var.dims()[1];
                if [o, kh, kw] != [var.dims()[0], var.dims()[2], var.dims()[3]] || i > want {
                    return Err(TrainError::Init {
                        path: path.to_path_buf(),
                        message: format!(
                            "{stored}: shape {:?} cannot be padded to {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    });
                }
                report
                    .padded
                    .push(format!("{k}: {:?} → {:?}", t.dims(), var.dims()));
                let zeros = Tensor::zeros((o, want - i, kh, kw), DType::F32, &self.device)?;
                Tensor::cat(&[&t, &zeros], 1)?
            } else {
                t
            };
            self.set_var(&k, &t, path)?;
        }
        if !missing.is_empty() {
            return Err(TrainError::Init {
                path: path.to_path_buf(),
                message: format!(
                    "{} UNet tensor(s) missing (e.g. {}); the checkpoint's UNet does not \
                     match the model config",
                    missing.len(),
                    missing[..missing.len().min(3)].join(", ")
                ),
            });
        }
        Ok(())
    }

    /// The frozen autoencoder from the keys under `prefix` (`first_stage_model.` or the bare
    /// kl-f8 layout, `""`) of `ckpt`; all of them, shaped as `first_stage_config` says.
    fn init_first_stage(
        &mut self,
        ckpt: &Checkpoint,
        path: &Path,
        prefix: &str,
    ) -> std::result::Result<(), TrainError> {
        let mut tensors = BTreeMap::new();
        for (k, cur) in &self.first_stage.tensors {
            let stored = format!("{prefix}{}", &k[FIRST.len() + 1..]);
            if !ckpt.contains(&stored) {
                return Err(TrainError::Init {
                    path: path.to_path_buf(),
                    message: format!(
                        "autoencoder tensor {stored} is missing; the file's autoencoder \
                         does not match first_stage_config"
                    ),
                });
            }
            let t = ckpt.tensor_as(&stored, DType::F32, &self.device)?;
            if t.dims() != cur.dims() {
                return Err(TrainError::Init {
                    path: path.to_path_buf(),
                    message: format!(
                        "{stored}: shape {:?}, first_stage_config gives {:?}",
                        t.dims(),
                        cur.dims()
                    ),
                });
            }
            tensors.insert(k.clone(), t);
        }
        self.first_stage = FrozenAutoencoder::from_tensors(&self.config, tensors, &self.device)?;
        Ok(())
    }

    /// The condition encoder from `cond_stage_model.*` of `ckpt`, every tensor of it.
    fn init_cond_stage(
        &mut self,
        ckpt: &Checkpoint,
        path: &Path,
    ) -> std::result::Result<(), TrainError> {
        for (k, _) in self.cond_params() {
            if !ckpt.contains(&k) {
                return Err(TrainError::Init {
                    path: path.to_path_buf(),
                    message: format!("condition encoder tensor {k} is missing"),
                });
            }
            let t = ckpt.tensor_as(&k, DType::F32, &self.device)?;
            self.set_var(&k, &t, path)?;
        }
        Ok(())
    }

    /// Copy the loaded first stage's `encoder.*` into the condition encoder (`out` stays
    /// random); when a tensor has no same-shaped twin, the whole condition encoder goes back
    /// to a random init and `report` warns.
    fn cond_from_first_stage_encoder(
        &mut self,
        report: &mut InitReport,
    ) -> std::result::Result<(), TrainError> {
        let enc_prefix = format!("{FIRST}.encoder.");
        let mut copied = 0;
        let mut mismatch = None;
        for (k, var) in self.cond_params() {
            let Some(rest) = k.strip_prefix("cond_stage_model.encoder.") else {
                continue;
            };
            match self.first_stage.tensors.get(&format!("{enc_prefix}{rest}")) {
                Some(t) if t.dims() == var.dims() => {
                    var.set(t)?;
                    copied += 1;
                }
                _ => mismatch = Some(k.clone()),
            }
        }
        if let Some(k) = mismatch {
            report.warnings.push(format!(
                "condition encoder left at random init: {k} has no same-shaped twin in the \
                 first stage's encoder (cond_stage_config differs from first_stage_config)"
            ));
            // Undo a partial copy: re-initialise the whole condition encoder.
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &self.device);
            AEEncoderEmbedder::from_config(self.config.cond_stage(), vb.pp(COND))?;
            let mut rng = super::data::rng_for(0, super::data::streams::INIT, 1);
            init_varmap(&vm, &mut rng)?;
            for (k, v) in vars_with_prefix(&vm, COND) {
                self.set_var(&k, v.as_tensor(), Path::new("(random)"))?;
            }
        } else if copied > 0 {
            report.cond_from_first_stage = true;
        }
        Ok(())
    }

    /// Restore every weight from one of our checkpoints (for `--resume`): trainable
    /// variables, autoencoder and `scale_factor`.
    pub fn restore(&mut self, ckpt: &Checkpoint) -> std::result::Result<(), TrainError> {
        for (k, _) in self.unet_params().into_iter().chain(self.cond_params()) {
            let t = ckpt.tensor_as(&k, DType::F32, &self.device)?;
            self.set_var(&k, &t, ckpt.path())?;
        }
        let mut tensors = BTreeMap::new();
        for k in self.first_stage.tensors.keys() {
            tensors.insert(k.clone(), ckpt.tensor_as(k, DType::F32, &self.device)?);
        }
        self.first_stage = FrozenAutoencoder::from_tensors(&self.config, tensors, &self.device)?;
        self.scale_factor = ckpt.scalar("scale_factor")?.map(|v| v as f32);
        Ok(())
    }

    /// The posterior of the frozen autoencoder for masks `[B, 3, S, S]` (no gradients).
    pub fn encode_masks(&self, masks: &Tensor) -> Result<DiagonalGaussian> {
        self.first_stage.model.encode(&masks.detach())
    }

    /// `on_train_batch_start` with `scale_by_std`: 1 / std of a sampled latent of the first
    /// batch's masks (unbiased std over every value, as `torch.std`).
    pub fn estimate_scale_factor(&mut self, masks: &Tensor, rng: &mut ChaCha8Rng) -> Result<f32> {
        let z = self.encode_masks(masks)?.sample(rng)?;
        let v = z.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let sf = (1.0 / var.sqrt()) as f32;
        if !sf.is_finite() {
            candle_core::bail!(
                "scale_factor estimate is not finite (latent std {})",
                var.sqrt()
            );
        }
        self.scale_factor = Some(sf);
        Ok(sf)
    }

    fn gather(&self, table: &[f32], t: &[u32]) -> Result<Tensor> {
        let v: Vec<f32> = t.iter().map(|&i| table[i as usize]).collect();
        Tensor::from_vec(v, (t.len(), 1, 1, 1), &self.device)
    }

    /// The loss of one batch (module docs). `images`, `masks`: `[B, 3, S, S]`; `class_ids`:
    /// `[B]` (ignored by binary models). All randomness comes from `rng`. Returns the scalar
    /// loss tensor (for `backward`) and host copies of its parts.
    pub fn loss(
        &self,
        images: &Tensor,
        masks: &Tensor,
        class_ids: &[u32],
        train: bool,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, StepLosses)> {
        let sf = self
            .scale_factor
            .ok_or_else(|| candle_core::Error::Msg("scale_factor not set".into()))?;
        let b = images.dim(0)?;
        let z0 = (self.encode_masks(masks)?.sample(rng)? * sf as f64)?.detach();
        let tmax = self.schedule.num_timesteps() as u32;
        let tmin = self.t_min.min(tmax - 1);
        let t: Vec<u32> = (0..b).map(|_| rng.random_range(tmin..tmax)).collect();
        let noise: Vec<f32> = (0..z0.elem_count())
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let noise = Tensor::from_vec(noise, z0.shape(), &self.device)?;
        let x_noisy = (z0.broadcast_mul(&self.gather(&self.sqrt_ac, &t)?)?
            + noise.broadcast_mul(&self.gather(&self.sqrt_1m_ac, &t)?)?)?;
        let c = self.cond.forward_t(images, train)?;
        let xc = Tensor::cat(&[&x_noisy, &c], 1)?;
        let tt = Tensor::new(t.as_slice(), &self.device)?;
        let y = if self.unet.is_class_conditional() {
            Some(Tensor::new(class_ids, &self.device)?)
        } else {
            None
        };
        let eps = self.unet.forward(&xc, &tt, y.as_ref())?;
        let loss_simple = (&eps - &noise)?.abs()?.mean_all()?;
        let sr = Tensor::new(
            t.iter()
                .map(|&i| self.schedule.sqrt_recip_alphas_cumprod()[i as usize])
                .collect::<Vec<f32>>(),
            &self.device,
        )?;
        let srm1 = Tensor::new(
            t.iter()
                .map(|&i| self.schedule.sqrt_recipm1_alphas_cumprod()[i as usize])
                .collect::<Vec<f32>>(),
            &self.device,
        )?;
        let z0_hat = latent_estimate(&x_noisy, &eps, &sr, &srm1, 1.0)?;
        let loss_seg = (&z0_hat - &z0)?.abs()?.mean_all()?;
        let loss = (&loss_simple + &loss_seg)?;
        let parts = StepLosses {
            loss: loss.to_scalar::<f32>()?,
            loss_simple: loss_simple.to_scalar::<f32>()?,
            loss_seg: loss_seg.to_scalar::<f32>()?,
        };
        Ok((loss, parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle 0.11's `upsample_nearest2d` backward overwrites (instead of adding to) the
    /// gradient already accumulated for its input. The UNet's up-sampling ResBlock feeds its
    /// input both to the norm and to the up-sampling, so its input gradient must include both
    /// paths: compare with central finite differences (f64 except the f32 GroupNorm).
    #[test]
    fn up_resblock_input_gradient_matches_finite_differences() -> Result<()> {
        use crate::model::unet::{ResBlock, UpDown};
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let block = ResBlock::new(32, 8, 32, true, UpDown::Up, vb)?;
        init_varmap(&vm, &mut super::super::data::rng_for(3, 0, 0))?;
        // Give out_layers.3 non-zero weights so both branches matter.
        for (k, v) in vars_with_prefix(&vm, "out_layers") {
            let _ = k;
            v.set(&(Tensor::randn(0f32, 0.1, v.dims(), &dev)?))?;
        }
        let x0 = Tensor::randn(0f32, 1.0, (1, 32, 2, 2), &dev)?;
        let emb = Tensor::randn(0f32, 1.0, (1, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (1, 32, 4, 4), &dev)?;
        let f = |x: &Tensor| -> Result<Tensor> { (block.forward(x, &emb)? * &w)?.sum_all() };
        let x = Var::from_tensor(&x0)?;
        let g = f(x.as_tensor())?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let flat = x0.flatten_all()?.to_vec1::<f32>()?;
        let h = 1e-2f32;
        for &i in &[0usize, 5, 17, 63, 100] {
            let mut p = flat.clone();
            p[i] += h;
            let mut m = flat.clone();
            m[i] -= h;
            let fp = f(&Tensor::from_vec(p, x0.shape(), &dev)?)?.to_scalar::<f32>()?;
            let fm = f(&Tensor::from_vec(m, x0.shape(), &dev)?)?.to_scalar::<f32>()?;
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - gx[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "input {i}: backprop {} vs finite difference {fd}",
                gx[i]
            );
        }
        Ok(())
    }
}
