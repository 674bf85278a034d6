//! The assembled SDSeg model and its single-step inference (sdseg-reference.md §1, §2.2):
//!
//! ```text
//! c   = cond_stage_model(image)                         [B, 4, h, w]   (no scale factor)
//! x   = cat([noise, c], dim=1)                          noise first
//! ε̂   = UNet(x, t = T−1 [, y = class])                  EMA weights by default
//! ẑ0  = √(1/ᾱ_t)·noise − √(1/ᾱ_t − 1)·ε̂                 (`latent::latent_estimate`)
//! dec = first_stage_model.decode(ẑ0 / scale_factor)     [B, 3, H, W]
//! binary:      p = mean_c(clamp((dec+1)/2, 0, 1)); mask = p > 0.5
//! multi-class: logit_k = mean_c(dec_k), class 0 negated; label = argmax_k
//! ```
//!
//! Mirrors `ldm/models/diffusion/SDSeg.py::SDSeg.get_dice_loop` (direct sampler),
//! `DDPM.predict_start_from_noise` and `LatentDiffusion.decode_first_stage`. The class loop is
//! batched: all K classes of the B slices go through the UNet and the decoder as K·B rows
//! (in chunks of `max_batch` rows), class-major.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::model::checkpoint::{Checkpoint, KeyReport, LoadSession, ModelError, INFERENCE_BUFFERS};
use crate::model::cond::AEEncoderEmbedder;
use crate::model::config::{SdsegConfig, Task};
use crate::model::schedule::{Schedule, StepCoefficients};
use crate::model::unet::UNetModel;
use crate::model::vae::AutoencoderKLDecoder;
use sdseg_kernels::conv::{with_cpu_precision, CpuPrecision};
use sdseg_kernels::latent::latent_estimate;

type Result<T> = std::result::Result<T, ModelError>;

/// Where `scale_factor` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleFactorSource {
    /// The checkpoint's `scale_factor` buffer (what the official code uses).
    Checkpoint,
    /// `params.scale_factor` or the top-level `scale_factor` of the config.
    Config,
    /// Neither: 1.0, as `LatentDiffusion` starts before `scale_by_std` sets it.
    Default,
}

/// The result of one batch of B slices.
#[derive(Clone, Debug)]
pub enum Output {
    Binary {
        /// [B, H, W] f32: mean over channels of clamp((decoded + 1)/2, 0, 1).
        mask_prob: Tensor,
        /// [B, H, W] u8 0/1: mask_prob > 0.5.
        mask: Tensor,
    },
    MultiClass {
        /// [B, K, H, W] f32: channel mean of each class's decoded map, class 0 negated.
        logits: Tensor,
        /// [B, H, W] u8: the class id with the largest logit.
        label_map: Tensor,
        /// The class id of each logit channel (0..K in the official loop).
        class_ids: Vec<u32>,
    },
}

impl Output {
    /// The hard labels [B, H, W] u8 (mask or label map).
    pub fn labels(&self) -> &Tensor {
        match self {
            Output::Binary { mask, .. } => mask,
            Output::MultiClass { label_map, .. } => label_map,
        }
    }

    /// The soft map the labels are derived from: [B, 1, H, W] probability (binary) or
    /// [B, K, H, W] logits; resample this, then [`Self::labels_from_soft`].
    pub fn soft(&self) -> candle_core::Result<Tensor> {
        match self {
            Output::Binary { mask_prob, .. } => mask_prob.unsqueeze(1),
            Output::MultiClass { logits, .. } => Ok(logits.clone()),
        }
    }

    /// Labels from a (resampled) soft map of the same kind: `> 0.5` for one channel, argmax
    /// mapped to the class ids otherwise. [B, C, H, W] → [B, H, W] u8.
    pub fn labels_from_soft(
        soft: &Tensor,
        class_ids: Option<&[u32]>,
    ) -> candle_core::Result<Tensor> {
        if soft.dim(1)? == 1 {
            soft.squeeze(1)?.gt(0.5)?.to_dtype(DType::U8)
        } else {
            argmax_labels(soft, class_ids)
        }
    }
}

/// How far a run's decisions are from a reference run's on the same inputs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Pixels (slice × H × W) with the same label.
    pub equal: usize,
    pub total: usize,
    /// Largest |score difference| (mask probability or logit).
    pub max_score_diff: f64,
    /// Pixels whose label changed although the reference decided with a margin ≥ 1e-2
    /// (|p − 0.5| for binary, top-1 − top-2 logit for multi-class).
    pub clear_flips: usize,
}

impl Agreement {
    /// Compares `run` with `reference` (outputs of the same kind and shape).
    pub fn of(run: &Output, reference: &Output) -> Result<Agreement> {
        let (ra, sa) = (reference.labels(), reference.soft()?);
        let (rb, sb) = (run.labels(), run.soft()?);
        if ra.dims() != rb.dims() || sa.dims() != sb.dims() {
            return Err(ModelError::Input(format!(
                "outputs of different shapes: {:?} vs {:?}",
                ra.dims(),
                rb.dims()
            )));
        }
        let la: Vec<u8> = ra.flatten_all()?.to_vec1()?;
        let lb: Vec<u8> = rb.flatten_all()?.to_vec1()?;
        let max_score_diff = (&sa - &sb)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        // Reference margin per pixel, from its soft map [B, C, H, W].
        let (b, c, h, w) = sa.dims4()?;
        let soft: Vec<f32> = sa.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let plane = h * w;
        let margin = |i: usize| -> f32 {
            let (bi, p) = (i / plane, i % plane);
            let at = |k: usize| soft[(bi * c + k) * plane + p];
            if c == 1 {
                (at(0) - 0.5).abs()
            } else {
                let (mut top, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for k in 0..c {
                    let v = at(k);
                    if v > top {
                        second = top;
                        top = v;
                    } else if v > second {
                        second = v;
                    }
                }
                top - second
            }
        };
        let mut equal = 0;
        let mut clear_flips = 0;
        for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
            if x == y {
                equal += 1;
            } else if margin(i) >= 1e-2 {
                clear_flips += 1;
            }
        }
        debug_assert_eq!(la.len(), b * plane);
        Ok(Agreement {
            equal,
            total: la.len(),
            max_score_diff,
            clear_flips,
        })
    }

    /// Share of equal labels.
    pub fn fraction(&self) -> f64 {
        self.equal as f64 / self.total.max(1) as f64
    }
}

/// argmax over dim 1, mapped to class ids when given (else the index), as u8.
fn argmax_labels(logits: &Tensor, class_ids: Option<&[u32]>) -> candle_core::Result<Tensor> {
    let idx = logits.argmax_keepdim(1)?.squeeze(1)?;
    match class_ids {
        Some(ids) if ids.iter().enumerate().any(|(i, &c)| i as u32 != c) => {
            let map = Tensor::new(ids, logits.device())?;
            let flat = idx.flatten_all()?;
            map.index_select(&flat, 0)?
                .reshape(idx.shape())?
                .to_dtype(DType::U8)
        }
        _ => idx.to_dtype(DType::U8),
    }
}

/// Named intermediates of one traced batch, in the order they were made.
pub type Trace = Vec<(String, Tensor)>;

#[derive(Debug)]
pub struct Sdseg {
    config: SdsegConfig,
    task: Task,
    cond_stage_model: AEEncoderEmbedder,
    unet: UNetModel,
    first_stage_model: AutoencoderKLDecoder,
    scale_factor: f32,
    scale_factor_source: ScaleFactorSource,
    schedule: Schedule,
    /// T − 1, the single step.
    t: usize,
    coeffs: StepCoefficients,
    /// `time_embed(timestep_embedding(T − 1))`, [1, 4·model_channels], precomputed.
    t_emb: Tensor,
    device: Device,
    /// The tensors' dtype (f32 for a `bf16` run on the CPU, see [`storage_dtype`]).
    dtype: DType,
    /// `--dtype bf16` / `bf16-fast` on the CPU: f32 tensors, convolutions in split bf16
    /// ([`CpuPrecision::Bf16x3`]) or plain bf16 ([`CpuPrecision::Bf16`]) where the CPU has
    /// AMX-BF16 or AVX512-BF16; `None` otherwise.
    cpu_bf16: Option<CpuPrecision>,
    /// Rows per UNet/decoder pass; 0 = the image batch B.
    max_batch: usize,
    key_report: Option<KeyReport>,
    /// Images the condition encoder has encoded (counted so tests can check that noise draws
    /// share one encoder pass per slice).
    cond_images: std::sync::atomic::AtomicU64,
}

impl Sdseg {
    /// Load a checkpoint (`.ckpt` or `.safetensors`) strictly: every key must be used or be a
    /// known extra. UNet from the EMA weights unless `use_ema` is false; `scale_factor` and
    /// the schedule buffers from the file when present.
    pub fn load(
        weights: &Path,
        config: &SdsegConfig,
        device: &Device,
        dtype: DType,
        use_ema: bool,
    ) -> Result<Self> {
        config.validate().map_err(|message| {
            ModelError::Config(crate::model::config::ConfigError::Invalid {
                origin: "model config".into(),
                message,
            })
        })?;
        let cpu_bf16 = (device.is_cpu() && dtype == DType::BF16).then_some(CpuPrecision::Bf16x3);
        let dtype = storage_dtype(device, dtype);
        let ckpt = Arc::new(Checkpoint::open(weights)?);
        let session = LoadSession::new(ckpt.clone(), use_ema);
        let vb = session.var_builder(dtype, device);
        let unet_vb = session.unet_var_builder(dtype, device);
        let requested = if cpu_bf16.is_some() {
            DType::BF16
        } else {
            dtype
        };
        let built = Self::from_var_builders(config, vb, unet_vb, device, requested);

        // Scale factor and schedule buffers are read outside the VarBuilders.
        let mut scale = None;
        if let Some(sf) = ckpt.scalar("scale_factor")? {
            session.mark_used("scale_factor");
            scale = Some(sf as f32);
        }
        let mut schedule = config.schedule();
        let [a, b] = [INFERENCE_BUFFERS[0], INFERENCE_BUFFERS[1]];
        if let (Some(sr), Some(srm1)) = (ckpt.vector_f32(a)?, ckpt.vector_f32(b)?) {
            schedule = schedule
                .with_buffers(sr, srm1)
                .map_err(|m| ModelError::Tensor {
                    path: weights.to_owned(),
                    key: a.into(),
                    message: m,
                })?;
            session.mark_used(a);
            session.mark_used(b);
        }
        // Key problems are the better message when building also failed because of them.
        let report = session.finish()?;
        let mut model = built?;
        if let Some(sf) = scale {
            model.scale_factor = sf;
            model.scale_factor_source = ScaleFactorSource::Checkpoint;
        }
        model.set_schedule(schedule)?;
        model.key_report = Some(report);
        Ok(model)
    }

    /// Build from `VarBuilder`s with the SDSeg key layout: `vb` at the state-dict root
    /// (`cond_stage_model.*`, `first_stage_model.*`), `unet_vb` at the UNet. Scale factor from
    /// the config, schedule computed (random or zero weights for benchmarks and shape tests).
    pub fn from_var_builders(
        config: &SdsegConfig,
        vb: VarBuilder,
        unet_vb: VarBuilder,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let cpu_bf16 = (device.is_cpu() && dtype == DType::BF16).then_some(CpuPrecision::Bf16x3);
        let dtype = storage_dtype(device, dtype);
        let cond = config.cond_stage();
        let fs = config.first_stage();
        let cond_stage_model =
            AEEncoderEmbedder::new(&cond.ddconfig, cond.embed_dim, vb.pp("cond_stage_model"))?;
        let first_stage_model =
            AutoencoderKLDecoder::new(&fs.ddconfig, fs.embed_dim, vb.pp("first_stage_model"))?;
        let unet = UNetModel::new(config.unet(), unet_vb)?;
        let (scale_factor, scale_factor_source) =
            match config.params.scale_factor.or(config.scale_factor) {
                Some(s) => (s as f32, ScaleFactorSource::Config),
                None => (1.0, ScaleFactorSource::Default),
            };
        let schedule = config.schedule();
        let t = schedule.final_t();
        let coeffs = schedule.coefficients(t).expect("final_t is in range");
        let t_emb = unet.time_embedding(&[t as u32], device, dtype)?;
        Ok(Self {
            config: config.clone(),
            task: config.task(),
            cond_stage_model,
            unet,
            first_stage_model,
            scale_factor,
            scale_factor_source,
            schedule,
            t,
            coeffs,
            t_emb,
            device: device.clone(),
            dtype,
            cpu_bf16,
            max_batch: 0,
            key_report: None,
            cond_images: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn set_schedule(&mut self, schedule: Schedule) -> Result<()> {
        let t = schedule.final_t();
        self.coeffs = schedule.coefficients(t).expect("final_t is in range");
        if t != self.t {
            self.t_emb = self
                .unet
                .time_embedding(&[t as u32], &self.device, self.dtype)?;
            self.t = t;
        }
        self.schedule = schedule;
        Ok(())
    }

    /// Rows (slice × class) per UNet/decoder pass; 0 (default) = the image batch B.
    pub fn with_max_batch(mut self, rows: usize) -> Self {
        self.max_batch = rows;
        self
    }

    pub fn config(&self) -> &SdsegConfig {
        &self.config
    }
    pub fn task(&self) -> Task {
        self.task
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The dtype of the model's tensors (f32 for a CPU `bf16` run: see [`Self::conv_compute`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// What the convolutions compute in on this machine: `None` when they follow
    /// [`Self::dtype`]; for a CPU `bf16` run, `Some(true)` when a bf16 kernel level (AMX-BF16
    /// or AVX512-BF16, `sdseg_kernels::conv::Bf16Kernel::best`) runs them in bf16 and
    /// `Some(false)` when there is none and they fall back to f32.
    pub fn cpu_bf16_convs(&self) -> Option<bool> {
        self.cpu_bf16.map(|_| sdseg_kernels::conv::bf16_available())
    }
    /// The warning a CPU `bf16` run without a bf16 kernel level should print (`flag`: the
    /// `--dtype` value as given); `None` when the run computes what was asked.
    pub fn bf16_fallback_warning(&self, flag: &str) -> Option<String> {
        (self.cpu_bf16_convs() == Some(false)).then(|| {
            format!(
                "--dtype {flag}: this CPU has no AMX-BF16 (or the OS does not grant AMX, or \
                 SDSEG_CONV_KERNEL / SDSEG_AMX turn it off); convolutions run in f32 \
                 (SDSEG_AVX512BF16=1 opts into the AVX512-BF16 level, where present)"
            )
        })
    }
    /// The conv kernel level this model's CPU convolutions run on (`amx-bf16`, `avx512-bf16`,
    /// `avx512`, `avx2` or `candle`); `None` on a GPU.
    pub fn cpu_kernel_level(&self) -> Option<String> {
        self.device.is_cpu().then(|| {
            sdseg_kernels::conv::KernelLevel::of_run(self.cpu_bf16.unwrap_or(CpuPrecision::F32))
                .to_string()
        })
    }
    /// The CPU conv precision of a CPU `bf16` run (`None` otherwise).
    pub fn cpu_precision(&self) -> Option<CpuPrecision> {
        self.cpu_bf16
    }
    /// For a CPU `bf16` run, plain bf16 products ([`CpuPrecision::Bf16`], `--dtype bf16-fast`)
    /// instead of split bf16: about 2× faster on the full-size model, but decisions near the
    /// threshold flip (99.68 % of the tiny fixture's pixels agree with f32, against 99.998 %).
    /// No effect on other runs.
    pub fn with_fast_bf16(mut self) -> Self {
        if self.cpu_bf16.is_some() {
            self.cpu_bf16 = Some(CpuPrecision::Bf16);
        }
        self
    }
    /// Sets the CPU conv precision directly (`None`: as the tensors, f32 on the CPU): `bench
    /// --agree` runs the same model both ways.
    pub fn set_cpu_precision(&mut self, p: Option<CpuPrecision>) {
        self.cpu_bf16 = p;
    }
    /// Runs `f` with this model's CPU conv precision in force.
    fn scoped<R>(&self, f: impl FnOnce() -> R) -> R {
        with_cpu_precision(self.cpu_bf16.unwrap_or(CpuPrecision::F32), f)
    }
    pub fn scale_factor(&self) -> f32 {
        self.scale_factor
    }
    pub fn scale_factor_source(&self) -> ScaleFactorSource {
        self.scale_factor_source
    }
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// The single step's timestep (T − 1 = 999).
    pub fn timestep(&self) -> usize {
        self.t
    }
    pub fn step_coefficients(&self) -> StepCoefficients {
        self.coeffs
    }
    /// Images the condition encoder has encoded since the model was built.
    pub fn cond_encoder_images(&self) -> u64 {
        self.cond_images.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Key accounting of a checkpoint load (None when built from `VarBuilder`s).
    pub fn key_report(&self) -> Option<&KeyReport> {
        self.key_report.as_ref()
    }
    /// [C, h, w] of the noise for one slice.
    pub fn latent_shape(&self) -> [usize; 3] {
        self.config.latent_shape()
    }
    /// The class ids of one multi-class pass (0..K), empty for binary.
    pub fn class_ids(&self) -> Vec<u32> {
        match self.task {
            Task::Binary => vec![],
            Task::MultiClass { num_classes } => (0..num_classes as u32).collect(),
        }
    }

    /// Condition latent `cond_stage_model.encode(image)`: [B, 3, H, W] in [−1, 1] → [B, 4, h, w].
    pub fn cond_latent(&self, image: &Tensor) -> Result<Tensor> {
        let image = self.check_image(image)?;
        self.cond_images
            .fetch_add(image.dim(0)? as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(self.scoped(|| self.cond_stage_model.forward(&image))?)
    }

    /// `UNetModel.forward(x, t, y)` for any timesteps `t` [N] (and class ids `y` [N]).
    pub fn unet(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let t = t.to_device(&self.device)?;
        let y = y.map(|y| y.to_device(&self.device)).transpose()?;
        Ok(self.scoped(|| self.unet.forward(&x, &t, y.as_ref()))?)
    }

    /// ε̂ at the single step t = T − 1 for `x` = cat[noise, cond] (precomputed t-embedding).
    pub fn eps(&self, x: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let emb = self.unet.embedding(&self.t_emb, y, n)?;
        Ok(self.scoped(|| self.unet.forward_with_emb(x, &emb))?)
    }

    /// ẑ0 at t = T − 1, divided by `scale_factor` when `unscale` (the decoder's input).
    pub fn estimate_z0(&self, noise: &Tensor, eps: &Tensor, unscale: bool) -> Result<Tensor> {
        let sr = Tensor::new(&[self.coeffs.sqrt_recip_alphas_cumprod], &self.device)?;
        let srm1 = Tensor::new(&[self.coeffs.sqrt_recipm1_alphas_cumprod], &self.device)?;
        // `1. / self.scale_factor` is an f32 tensor op in the official code.
        let inv = if unscale {
            (1.0f32 / self.scale_factor) as f64
        } else {
            1.0
        };
        Ok(latent_estimate(noise, eps, &sr, &srm1, inv)?)
    }

    /// `first_stage_model.decode(z)` of an unscaled latent.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.scoped(|| self.first_stage_model.decode(z))?)
    }

    /// Single-step segmentation of `image` [B, 3, H, W] (values in [−1, 1]) with `noise`
    /// [B or 1, C, h, w] (see [`crate::pipeline::segmenter::NoiseSource`]). `classes`: the class ids to run for a
    /// multi-class model (None = all, 0..K, as the official loop); must be None for binary.
    pub fn segment(
        &self,
        image: &Tensor,
        noise: &Tensor,
        classes: Option<&[u32]>,
    ) -> Result<Output> {
        self.run(image, noise, 1, classes, None)
    }

    /// `draws` segmentations of each slice of `image` [B, 3, H, W], one per noise latent:
    /// `noise` is [draws·B, C, h, w], draw-major (draw d of slice s at row d·B + s). The
    /// condition encoder runs once per slice; the UNet, latent estimate and decoder run on
    /// the draws·B rows batched. The output has draws·B rows in the same order; with
    /// `draws` = 1 it is [`Self::segment`] exactly.
    pub fn segment_draws(
        &self,
        image: &Tensor,
        noise: &Tensor,
        draws: usize,
        classes: Option<&[u32]>,
    ) -> Result<Output> {
        if draws == 0 {
            return Err(ModelError::Input(
                "at least one noise draw is needed".into(),
            ));
        }
        self.run(image, noise, draws, classes, None)
    }

    /// [`Self::segment`] that also returns every intermediate under the `trace` names:
    /// `cond_latent`, `unet_input`, `unet_output`, `z0_scaled`, `z0_unscaled`, `decoded`,
    /// `mask_prob`, `mask` (binary) or `unet_output_class{k}`, `z0_scaled_class{k}`,
    /// `z0_unscaled_class{k}`, `decoded_class{k}` (before the class-0 sign flip), `logits`,
    /// `label_map` (multi-class), plus the scalars `scale_factor`,
    /// `sqrt_recip_alphas_cumprod_t`, `sqrt_recipm1_alphas_cumprod_t`.
    pub fn trace(
        &self,
        image: &Tensor,
        noise: &Tensor,
        classes: Option<&[u32]>,
    ) -> Result<(Output, Trace)> {
        let mut trace = Trace::new();
        let out = self.run(image, noise, 1, classes, Some(&mut trace))?;
        Ok((out, trace))
    }

    fn check_image(&self, image: &Tensor) -> Result<Tensor> {
        let want_c = self.config.cond_stage().ddconfig.in_channels;
        let f = self.config.cond_stage().ddconfig.downsample_factor()
            * self.config.unet().downsample_factor();
        match image.dims() {
            &[_, c, h, w] if c == want_c && h % f == 0 && w % f == 0 && h > 0 && w > 0 => {}
            d => {
                return Err(ModelError::Input(format!(
                    "image must be [B, {want_c}, H, W] with H, W multiples of {f} (e.g. 256), got {d:?}"
                )))
            }
        }
        Ok(image.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    fn check_noise(&self, noise: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = cond.dims4()?;
        let nd = noise.dims();
        if nd.len() != 4 || (nd[0] != b && nd[0] != 1) || nd[1..] != [c, h, w] {
            return Err(ModelError::Input(format!(
                "noise must be [{b} or 1, {c}, {h}, {w}] for this image batch, got {nd:?}"
            )));
        }
        let noise = noise.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(noise.broadcast_as((b, c, h, w))?.contiguous()?)
    }

    fn resolve_classes(&self, classes: Option<&[u32]>) -> Result<Vec<u32>> {
        match (self.task, classes) {
            (Task::Binary, None) => Ok(vec![]),
            (Task::Binary, Some(_)) => Err(ModelError::Input(
                "class ids given, but this is a binary (concat) model".into(),
            )),
            (Task::MultiClass { .. }, None) => Ok(self.class_ids()),
            (Task::MultiClass { .. }, Some(ids)) => {
                let k = self.config.unet().num_classes.unwrap_or(0) as u32;
                if ids.is_empty() || ids.iter().any(|&c| c >= k) {
                    return Err(ModelError::Input(format!(
                        "class ids {ids:?} must be a non-empty list of ids below {k}"
                    )));
                }
                Ok(ids.to_vec())
            }
        }
    }

    fn run(
        &self,
        image: &Tensor,
        noise: &Tensor,
        draws: usize,
        classes: Option<&[u32]>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Output> {
        let classes = self.resolve_classes(classes)?;
        let cond = self.cond_latent(image)?;
        // Every draw of a slice shares its condition latent (one encoder pass per slice).
        let cond = if draws > 1 {
            Tensor::cat(&vec![&cond; draws], 0)?
        } else {
            cond
        };
        let noise = self.check_noise(noise, &cond)?;
        let b = cond.dim(0)?;
        let x = Tensor::cat(&[&noise, &cond], 1)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.push(("cond_latent".into(), cond.to_dtype(DType::F32)?));
            tr.push(("unet_input".into(), x.to_dtype(DType::F32)?));
        }

        // Rows: class-major (row = k·B + b); binary has one "class".
        let k = classes.len().max(1);
        let rows = k * b;
        let (x_rows, noise_rows, y_rows) = if classes.is_empty() {
            (x, noise, None)
        } else {
            let xs = vec![&x; k];
            let ns = vec![&noise; k];
            let y: Vec<u32> = classes
                .iter()
                .flat_map(|&c| std::iter::repeat_n(c, b))
                .collect();
            (
                Tensor::cat(&xs, 0)?,
                Tensor::cat(&ns, 0)?,
                Some(Tensor::new(y.as_slice(), &self.device)?),
            )
        };
        let chunk = if self.max_batch == 0 {
            b
        } else {
            self.max_batch
        };
        let keep = trace.is_some();
        let mut reduced = Vec::new();
        let mut kept: [Vec<Tensor>; 4] = Default::default();
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start);
            let xc = x_rows.narrow(0, start, n)?;
            let nc = noise_rows.narrow(0, start, n)?;
            let yc = y_rows.as_ref().map(|y| y.narrow(0, start, n)).transpose()?;
            let eps = self.eps(&xc, yc.as_ref())?;
            let z0u = self.estimate_z0(&nc, &eps, true)?;
            let dec = self.decode(&z0u)?.to_dtype(DType::F32)?;
            let three = Tensor::new(dec.dim(1)? as f32, &self.device)?;
            let r = if classes.is_empty() {
                // clamp((x + 1)/2, 0, 1), then the channel mean (clamp first, as log_dice).
                let p = ((&dec + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
                p.sum(1)?.broadcast_div(&three)?
            } else {
                dec.sum(1)?.broadcast_div(&three)?
            };
            reduced.push(r);
            if keep {
                let z0s = self.estimate_z0(&nc, &eps, false)?;
                kept[0].push(eps.to_dtype(DType::F32)?);
                kept[1].push(z0s.to_dtype(DType::F32)?);
                kept[2].push(z0u.to_dtype(DType::F32)?);
                kept[3].push(dec);
            }
            start += n;
        }
        let reduced = Tensor::cat(&reduced, 0)?; // [rows, H, W]

        if let Some(tr) = trace.as_deref_mut() {
            let names = ["unet_output", "z0_scaled", "z0_unscaled", "decoded"];
            for (name, parts) in names.iter().zip(&kept) {
                let all = Tensor::cat(parts, 0)?;
                if classes.is_empty() {
                    tr.push((name.to_string(), all));
                } else {
                    for (i, c) in classes.iter().enumerate() {
                        tr.push((format!("{name}_class{c}"), all.narrow(0, i * b, b)?));
                    }
                }
            }
        }

        let out = if classes.is_empty() {
            let mask = reduced.gt(0.5)?.to_dtype(DType::U8)?;
            Output::Binary {
                mask_prob: reduced,
                mask,
            }
        } else {
            let (h, w) = (reduced.dim(1)?, reduced.dim(2)?);
            // Class 0 was trained on the foreground union: negate it into a background score.
            let sign: Vec<f32> = classes
                .iter()
                .map(|&c| if c == 0 { -1.0 } else { 1.0 })
                .collect();
            let sign = Tensor::new(sign.as_slice(), &self.device)?.reshape((k, 1, 1, 1))?;
            let logits = reduced
                .reshape((k, b, h, w))?
                .broadcast_mul(&sign)?
                .permute((1, 0, 2, 3))?
                .contiguous()?;
            let label_map = argmax_labels(&logits, Some(&classes))?;
            Output::MultiClass {
                logits,
                label_map,
                class_ids: classes,
            }
        };
        if let Some(tr) = trace {
            match &out {
                Output::Binary { mask_prob, mask } => {
                    tr.push(("mask_prob".into(), mask_prob.clone()));
                    tr.push(("mask".into(), mask.clone()));
                }
                Output::MultiClass {
                    logits, label_map, ..
                } => {
                    tr.push(("logits".into(), logits.clone()));
                    tr.push(("label_map".into(), label_map.clone()));
                }
            }
            let scalar = |v: f32| Tensor::new(&[v], &Device::Cpu);
            tr.push(("scale_factor".into(), scalar(self.scale_factor)?));
            tr.push((
                "sqrt_recip_alphas_cumprod_t".into(),
                scalar(self.coeffs.sqrt_recip_alphas_cumprod)?,
            ));
            tr.push((
                "sqrt_recipm1_alphas_cumprod_t".into(),
                scalar(self.coeffs.sqrt_recipm1_alphas_cumprod)?,
            ));
        }
        Ok(out)
    }
}

/// The dtype the model's tensors are stored in for a requested `dtype` on `device`: as asked,
/// except `bf16` on the CPU, which keeps f32 tensors (GroupNorm, softmax, the latent estimate
/// and the matmuls stay f32) and computes the convolutions in bf16 (AMX-BF16, f32 sums).
pub fn storage_dtype(device: &Device, dtype: DType) -> DType {
    if device.is_cpu() && dtype == DType::BF16 {
        DType::F32
    } else {
        dtype
    }
}

/// `count` standard-normal f32 values from ChaCha8 seeded with `seed`, stream `stream`.
/// Generated on the CPU in f32, so a seed gives the same noise on every device.
pub fn standard_normal(seed: u64, stream: u64, count: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..count)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_normal_is_seeded_per_stream() {
        let a = standard_normal(7, 0, 16);
        assert_eq!(a, standard_normal(7, 0, 16));
        assert_ne!(a, standard_normal(8, 0, 16));
        assert_ne!(a, standard_normal(7, 1, 16));
        // A prefix of a longer draw: the count does not change the values.
        assert_eq!(a[..8], standard_normal(7, 0, 8)[..]);
        // Roughly standard normal.
        let v = standard_normal(1, 0, 20000);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn argmax_maps_class_ids() {
        let logits = Tensor::new(&[[[[0.1f32]], [[0.9]], [[0.5]]]], &Device::Cpu).unwrap();
        let l = argmax_labels(&logits, Some(&[0, 1, 2])).unwrap();
        assert_eq!(l.flatten_all().unwrap().to_vec1::<u8>().unwrap(), vec![1]);
        let l = argmax_labels(&logits, Some(&[3, 7, 2])).unwrap();
        assert_eq!(l.flatten_all().unwrap().to_vec1::<u8>().unwrap(), vec![7]);
    }
}
