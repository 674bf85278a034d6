//! `train-autoencoder`: a KL-regularised autoencoder (LDM `AutoencoderKL`, the model's
//! `first_stage_config`) trained on the 3-channel {−1, 1} target masks, for users without the
//! pretrained kl-f8 weights (and for the bundled demo model).
//!
//! Loss per batch: `mean|x − x̂| + kl_weight · KL / (3·S·S)` with `x̂ = decode(sample(encode(x)))`
//! and KL = `DiagonalGaussianDistribution.kl()` (summed over the latent) averaged over the
//! batch. That is LDM's `LPIPSWithDiscriminator` objective without the perceptual and GAN terms
//! and with a fixed log-variance of 0 (`[Σ|x − x̂| + kl_weight·KL] / B`, divided by the
//! number of pixels). Optimiser: Adam with betas (0.5, 0.9), as `AutoencoderKL` uses.
//! Checkpoints hold `first_stage_model.*` only (the key layout of a full SDSeg state dict), so
//! `train --init <autoencoder>.safetensors` picks them up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;

use crate::model::checkpoint::Checkpoint;
use crate::model::config::SdsegConfig;
use crate::model::vae::AutoencoderKL;
use crate::pipeline::Pipeline;

use super::checkpoint::{save_tensors, write_config, RunState};
use super::data::{self, rng_for, streams, CaseRef, DataSource, HostBatch, Sampler, SliceSet};
use super::model::{init_varmap, vars_with_prefix, StepLosses, FIRST};
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use super::session::{
    check_options, due, fresh_state, load_training_slices, open_run, resume_optimizer, run_steps,
    say, Cadence, Event, RunLog, Trainer,
};
use super::TrainError;

#[derive(Clone, Debug)]
pub struct AeOptions {
    pub pipeline: Pipeline,
    /// The SDSeg config whose `first_stage_config` is trained.
    pub config: SdsegConfig,
    pub data: DataSource,
    pub val: Option<DataSource>,
    pub out: PathBuf,
    /// Start from these weights (`first_stage_model.*` or the bare kl-f8 layout).
    pub init: Option<PathBuf>,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub kl_weight: f64,
    pub rec_loss: RecLoss,
    pub device: Device,
    pub resume: bool,
    pub val_every: u64,
    pub save_every: u64,
    pub log_every: u64,
    pub seed: u64,
}

/// The reconstruction term of the autoencoder loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum RecLoss {
    /// Mean absolute error, as LDM's `LPIPSWithDiscriminator` (without LPIPS/GAN).
    #[default]
    L1,
    /// Mean squared error.
    L2,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AeSummary {
    pub steps_done: u64,
    pub first_loss: Option<f32>,
    pub recent_loss: f32,
    pub steps_per_second: f64,
    /// Dice of the reconstructed masks (mean over channels > 0, posterior mode) on the
    /// validation slices (or training slices without `--val`).
    pub recon_dice: Option<f64>,
    /// Std of the posterior samples on those slices (1/scale_factor SDSeg will estimate).
    pub latent_std: Option<f64>,
    pub checkpoint: PathBuf,
}

/// Reconstruction Dice and latent std on `set` (up to `max` slices).
pub fn reconstruction_scores(
    ae: &AutoencoderKL,
    set: &SliceSet,
    max: usize,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let n = set.len().min(max);
    let s = set.size;
    let sampler = Sampler { seed: 0, batch: 16 };
    let (mut tp, mut np, mut ng) = (0f64, 0f64, 0f64);
    let (mut sum, mut sum2, mut cnt) = (0f64, 0f64, 0f64);
    let mut cache = None;
    let mut rng = rng_for(0, streams::VALIDATION, 0);
    for step in 0..n.div_ceil(16) as u64 {
        let b = sampler.batch(set, step, &mut cache);
        let masks = Tensor::from_vec(b.masks, (b.batch, 3, s, s), device)?;
        let post = ae.encode(&masks)?;
        let z = post.sample(&mut rng)?;
        let zv = z.flatten_all()?.to_vec1::<f32>()?;
        for v in zv {
            sum += v as f64;
            sum2 += (v as f64) * (v as f64);
            cnt += 1.0;
        }
        let rec = ae.decode(post.mode())?.mean(1)?;
        let pred = rec.gt(0.0)?.flatten_all()?.to_vec1::<u8>()?;
        let gt = masks
            .narrow(1, 0, 1)?
            .gt(0.0)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        for (p, g) in pred.into_iter().zip(gt) {
            tp += f64::from(p & g);
            np += f64::from(p);
            ng += f64::from(g);
        }
    }
    let dice = if np + ng > 0.0 {
        2.0 * tp / (np + ng)
    } else {
        1.0
    };
    let mean = sum / cnt.max(1.0);
    let std = ((sum2 / cnt.max(1.0) - mean * mean).max(0.0)).sqrt();
    Ok((dice, std))
}

fn ae_loss(
    ae: &AutoencoderKL,
    masks: &Tensor,
    kl_weight: f64,
    rec: RecLoss,
    rng: &mut ChaCha8Rng,
) -> Result<(Tensor, f32, f32), TrainError> {
    let post = ae.encode_t(masks, true)?;
    let z = post.sample(rng)?;
    let out = ae.decode_t(&z, true)?;
    let diff = (masks - &out)?;
    let rec_loss = match rec {
        RecLoss::L1 => diff.abs()?.mean_all()?,
        RecLoss::L2 => diff.sqr()?.mean_all()?,
    };
    let pixels = (masks.elem_count() / masks.dim(0)?) as f64;
    let kl = (post.kl()?.mean_all()? / pixels)?;
    let loss = (&rec_loss + (&kl * kl_weight)?)?;
    let r = rec_loss.to_scalar::<f32>()?;
    let k = kl.to_scalar::<f32>()?;
    Ok((loss, r, k))
}

const LOG_HEADER: &str = "step,loss,rec,kl,elapsed_s,recon_dice,latent_std";

/// Train the autoencoder (module docs).
pub fn train_autoencoder(
    opts: &AeOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<AeSummary, TrainError> {
    check_options(opts.batch_size, &opts.pipeline, &opts.config)?;
    let fresh = fresh_state(
        opts.seed,
        opts.batch_size,
        opts.lr,
        0,
        &opts.pipeline,
        &opts.data,
    );
    let mut state = open_run(&opts.out, opts.resume, fresh, on_event)?;

    // Data.
    let mut warnings = Vec::new();
    let (set, held) = load_training_slices(&opts.data, &opts.pipeline, &mut warnings, on_event)?;
    let val_set = load_val_slices(opts, held, &mut warnings)?;
    for w in &warnings {
        say(on_event, format!("warning: {w}"));
    }

    // Model.
    let mut trainer = AeTrainer::new(opts, &state, val_set, set.clone())?;
    let load_from = if opts.resume {
        Some(opts.out.join(&state.checkpoint))
    } else {
        opts.init.clone()
    };
    if let Some(path) = &load_from {
        trainer.load_weights(path)?;
        say(
            on_event,
            format!("autoencoder weights from {}", path.display()),
        );
    }
    if opts.resume {
        resume_optimizer(&mut trainer.opt, &opts.out, &state, &opts.device)?;
    }
    say(
        on_event,
        format!(
            "{} autoencoder parameters; Adam lr {:.3e}, kl_weight {:e}",
            trainer.opt.num_params(),
            state.base_lr,
            opts.kl_weight
        ),
    );
    write_config(&opts.out.join("config.json"), &opts.config, None)?;

    // Steps.
    let log = RunLog::start(&opts.out, LOG_HEADER, opts.resume)?;
    let cadence = Cadence {
        log_every: opts.log_every,
        save_every: opts.save_every,
    };
    let end = opts.steps.max(state.step);
    let steps = run_steps(&mut trainer, set, &mut state, end, cadence, &log, on_event)?;
    if steps.steps_done == 0 {
        trainer.save(&state)?;
    }
    Ok(AeSummary {
        steps_done: steps.steps_done,
        first_loss: steps.first_loss.map(|l| l.loss),
        recent_loss: steps.recent_loss,
        steps_per_second: steps.steps_per_second(),
        recon_dice: trainer.scores.map(|s| s.0),
        latent_std: trainer.scores.map(|s| s.1),
        checkpoint: opts.out.join(&state.checkpoint),
    })
}

/// The validation slices: `--val`, else the held-out cases of `--data`, else none (the
/// training slices are scored then).
fn load_val_slices(
    opts: &AeOptions,
    held: Vec<CaseRef>,
    warnings: &mut Vec<String>,
) -> Result<Option<SliceSet>, TrainError> {
    let refs: Vec<CaseRef> = match &opts.val {
        Some(v) => {
            let (a, b) = data::list_cases(v, &opts.pipeline, warnings)?;
            a.into_iter().chain(b).collect()
        }
        None if !held.is_empty() => held,
        None => return Ok(None),
    };
    Ok(Some(SliceSet::build(
        data::load_cases(&refs)?,
        &opts.pipeline,
    )?))
}

/// The autoencoder of a session with its optimiser and scoring slices.
struct AeTrainer<'a> {
    opts: &'a AeOptions,
    ae: AutoencoderKL,
    params: Vec<(String, Var)>,
    opt: AdamW,
    train_set: Arc<SliceSet>,
    val_set: Option<SliceSet>,
    /// The latest (reconstruction Dice, latent std).
    scores: Option<(f64, f64)>,
}

impl<'a> AeTrainer<'a> {
    /// The autoencoder of `first_stage_config` with random weights, and its Adam.
    fn new(
        opts: &'a AeOptions,
        state: &RunState,
        val_set: Option<SliceSet>,
        train_set: Arc<SliceSet>,
    ) -> Result<Self, TrainError> {
        let fs = opts.config.first_stage();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &opts.device);
        let ae = AutoencoderKL::new(&fs.ddconfig, fs.embed_dim, vb.pp(FIRST))?;
        init_varmap(&varmap, &mut rng_for(state.seed, streams::INIT, 0))?;
        let params = vars_with_prefix(&varmap, FIRST);
        let adam = AdamWConfig {
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let group = ParamGroup {
            name: "autoencoder".into(),
            lr_scale: 1.0,
            params: params.clone(),
        };
        let opt = AdamW::new(vec![group], state.base_lr, adam)?;
        Ok(AeTrainer {
            opts,
            ae,
            params,
            opt,
            train_set,
            val_set,
            scores: None,
        })
    }

    /// Set the weights from `path` (`first_stage_model.*` or the bare kl-f8 layout).
    fn load_weights(&self, path: &Path) -> Result<(), TrainError> {
        let init_error = |message: String| TrainError::Init {
            path: path.to_path_buf(),
            message,
        };
        let ckpt = Checkpoint::open(path)?;
        let bare = !ckpt
            .keys()
            .keys()
            .any(|k| k.starts_with("first_stage_model."));
        for (k, v) in &self.params {
            let stored = if bare {
                k[FIRST.len() + 1..].to_string()
            } else {
                k.clone()
            };
            let t = ckpt
                .tensor_as(&stored, DType::F32, &self.opts.device)
                .map_err(|e| init_error(e.to_string()))?;
            if t.dims() != v.dims() {
                return Err(init_error(format!(
                    "{stored}: shape {:?}, first_stage_config gives {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t)?;
        }
        Ok(())
    }
}

impl Trainer for AeTrainer<'_> {
    fn step(
        &mut self,
        n: u64,
        batch: HostBatch,
        state: &mut RunState,
        _on_event: &mut dyn FnMut(&Event),
    ) -> Result<(StepLosses, f64), TrainError> {
        let s = batch.size;
        let masks = Tensor::from_vec(batch.masks, (batch.batch, 3, s, s), &self.opts.device)?;
        let mut rng = rng_for(state.seed, streams::STEP, n);
        let o = self.opts;
        let (loss, rec, kl) = ae_loss(&self.ae, &masks, o.kl_weight, o.rec_loss, &mut rng)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(TrainError::Diverged { step: n, loss: l });
        }
        let grads = loss.backward()?;
        self.opt.step(&grads, 1.0)?;
        drop(grads);
        let losses = StepLosses {
            loss: l,
            loss_simple: rec,
            loss_seg: kl,
        };
        Ok((losses, state.base_lr))
    }

    /// Reconstruction Dice and latent std every `val_every` steps and after the last one, on
    /// the validation slices (the training slices without).
    fn validate(
        &mut self,
        step: u64,
        last: bool,
        _state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Option<String>, TrainError> {
        if !(due(self.opts.val_every, step) || last) {
            return Ok(None);
        }
        let set = self.val_set.as_ref().unwrap_or(&self.train_set);
        let sc = reconstruction_scores(&self.ae, set, 64, &self.opts.device)?;
        say(
            on_event,
            format!(
                "step {step}: reconstruction Dice {:.4}, latent std {:.3}",
                sc.0, sc.1
            ),
        );
        self.scores = Some(sc);
        Ok(Some(format!("{:.5},{:.4}", sc.0, sc.1)))
    }

    fn log_line(
        &self,
        step: u64,
        recent: f32,
        losses: &StepLosses,
        _lr: f64,
        elapsed_s: f64,
        val: Option<&str>,
    ) -> String {
        let (rec, kl) = (losses.loss_simple, losses.loss_seg);
        let val = val.unwrap_or(",");
        format!("{step},{recent:.6},{rec:.6},{kl:.6},{elapsed_s:.1},{val}")
    }

    fn save(&mut self, state: &RunState) -> Result<(), TrainError> {
        let out = &self.opts.out;
        let tensors = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        save_tensors(&out.join(&state.checkpoint), &tensors)?;
        save_tensors(
            &out.join(&state.optimizer_state),
            &self.opt.state_tensors()?,
        )?;
        state.save(out)
    }
}
