//! `train` (SDSeg stage 2), as `SDSeg` under PyTorch Lightning runs it, in a training
//! [`session`](super::session):
//!
//! 1. data: training slices in memory, batches prefetched on a background thread;
//! 2. model: random init, then `--init` checkpoints; `scale_factor` = 1/std of the first
//!    batch's sampled mask latents (`on_train_batch_start`, `scale_by_std`);
//! 3. each step `n`: loss (`SDSeg.p_losses`), backward, AdamW at `lr · factor(n)` (linear
//!    warm-up), EMA update (`on_train_batch_end`);
//! 4. every `log_every` steps a line in `log.csv`; every `save_every` steps `last.safetensors`
//!    (+ optimiser state and `state.json`); every `val_every` steps validation Dice with the
//!    EMA weights (best → `best.safetensors`); at the end `last.safetensors` again.
//!
//! All randomness derives from the seed and the step, so `--resume` continues exactly (up to
//! dropout, which candle draws from its own generator).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use crate::model::checkpoint::{ema_name, Checkpoint};
use crate::model::config::SdsegConfig;
use crate::pipeline::Pipeline;

use super::checkpoint::{write_config, write_training_checkpoint, RunState};
use super::data::{self, rng_for, streams, DataSource, HostBatch, Sampler, SliceSet};
use super::ema::{Ema, EMA_DECAY};
use super::model::{StepLosses, TrainModel};
use super::optim::{AdamW, AdamWConfig, LinearWarmup};
use super::session::{
    check_options, due, fresh_state, load_training_slices, open_run, resume_optimizer, run_steps,
    say, Cadence, Event, RunLog, Trainer,
};
use super::validate::{inference_model, val_cases, validate, ValCase, ValReport};
use super::TrainError;

/// Everything `train` needs (the CLI fills it from flags).
#[derive(Clone, Debug)]
pub struct SdsegTrainOptions {
    pub pipeline: Pipeline,
    pub config: SdsegConfig,
    pub data: DataSource,
    /// Held-out volumes; None = the pipeline's test split inside `data`, if any.
    pub val: Option<DataSource>,
    pub out: PathBuf,
    pub init: Vec<PathBuf>,
    /// Total optimiser steps (a resumed run continues up to this number).
    pub steps: u64,
    pub batch_size: usize,
    /// Base learning rate per sample (`base_learning_rate`, 1e-5 in the SDSeg configs).
    pub base_lr: f64,
    /// Multiply `base_lr` by the batch size (`main.py --scale_lr`, default on).
    pub scale_lr: bool,
    pub warmup_steps: u64,
    pub device: Device,
    pub resume: bool,
    pub val_every: u64,
    pub save_every: u64,
    pub log_every: u64,
    pub seed: u64,
    /// Slices per inference batch during validation.
    pub val_batch: usize,
    /// Stop with an error when the loss becomes NaN/inf.
    pub stop_on_nan: bool,
    /// Draw training timesteps from `[t_min, T)` (0 = the official uniform draw).
    pub t_min: u32,
}

/// What a finished run reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SdsegTrainSummary {
    pub steps_done: u64,
    pub first_loss: Option<StepLosses>,
    pub last_loss: Option<StepLosses>,
    /// Mean loss over the last `log_every` steps.
    pub recent_loss: f32,
    pub steps_per_second: f64,
    pub scale_factor: f32,
    pub checkpoint: PathBuf,
    pub val: Option<ValReport>,
    pub train_slices: usize,
    pub warnings: Vec<String>,
}

const LOG_HEADER: &str = "step,loss,loss_simple,loss_seg,lr,elapsed_s,val_dice";

const NO_AUTOENCODER: &str = "no autoencoder weights given (--init with first_stage_model.* or a \
    kl-f8 checkpoint, e.g. the output of train-autoencoder): the frozen first stage is RANDOM, \
    so the model cannot learn useful masks";

/// Run SDSeg training (module docs). `on_event` receives progress.
pub fn train_sdseg(
    opts: &SdsegTrainOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<SdsegTrainSummary, TrainError> {
    check_options(opts.batch_size, &opts.pipeline, &opts.config)?;
    if opts.pipeline.num_classes() != opts.config.params.num_classes {
        return Err(TrainError::Usage(format!(
            "the pipeline has {} classes but the model config {}",
            opts.pipeline.num_classes(),
            opts.config.params.num_classes
        )));
    }
    let mut warnings = Vec::new();

    // Run state (fresh or resumed).
    let lr = if opts.scale_lr {
        opts.base_lr * opts.batch_size as f64
    } else {
        opts.base_lr
    };
    let fresh = fresh_state(
        opts.seed,
        opts.batch_size,
        lr,
        opts.warmup_steps,
        &opts.pipeline,
        &opts.data,
    );
    let mut state = open_run(&opts.out, opts.resume, fresh, on_event)?;

    // Data.
    let (set, held_out) =
        load_training_slices(&opts.data, &opts.pipeline, &mut warnings, on_event)?;
    let val = if opts.val_every > 0 || opts.steps == state.step {
        load_val(opts, held_out, &mut warnings)?
    } else {
        vec![]
    };
    if opts.val_every > 0 && val.is_empty() {
        warnings
            .push("--val-every is set but there are no held-out volumes (give --val)".to_string());
    }

    // Model.
    let mut trainer = SdsegTrainer::new(opts, &state, val, &mut warnings, on_event)?;
    for w in &warnings {
        say(on_event, format!("warning: {w}"));
    }
    say(on_event, trainer.describe(&state));

    // Steps.
    let log = RunLog::start(&opts.out, LOG_HEADER, opts.resume)?;
    let cadence = Cadence {
        log_every: opts.log_every,
        save_every: opts.save_every,
    };
    let end = opts.steps.max(state.step);
    let steps = run_steps(
        &mut trainer,
        set.clone(),
        &mut state,
        end,
        cadence,
        &log,
        on_event,
    )?;
    if steps.steps_done == 0 {
        // Nothing to train: still write the checkpoint (e.g. --steps 0 to validate --init).
        trainer.finish_without_steps(&set, &mut state, on_event)?;
    }
    write_config(
        &opts.out.join("config.json"),
        &opts.config,
        trainer.model.scale_factor,
    )?;
    Ok(SdsegTrainSummary {
        steps_done: steps.steps_done,
        first_loss: steps.first_loss,
        last_loss: steps.last_loss,
        recent_loss: steps.recent_loss,
        steps_per_second: steps.steps_per_second(),
        scale_factor: trainer.model.scale_factor.unwrap_or(1.0),
        checkpoint: opts.out.join("last.safetensors"),
        val: trainer.last_val,
        train_slices: set.len(),
        warnings,
    })
}

/// Load the held-out cases: `--val`, else the split's test cases of `--data`.
fn load_val(
    opts: &SdsegTrainOptions,
    held_out: Vec<data::CaseRef>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ValCase>, TrainError> {
    let refs = match &opts.val {
        Some(src) => {
            let (a, b) = data::list_cases(src, &opts.pipeline, warnings)?;
            a.into_iter().chain(b).collect()
        }
        None => held_out,
    };
    Ok(val_cases(data::load_cases(&refs)?, &opts.pipeline))
}

/// The SDSeg model of a session with its optimiser, EMA and validation cases.
struct SdsegTrainer<'a> {
    opts: &'a SdsegTrainOptions,
    model: TrainModel,
    opt: AdamW,
    ema: Option<Ema>,
    unet_params: Vec<(String, Var)>,
    sched: LinearWarmup,
    val: Vec<ValCase>,
    last_val: Option<ValReport>,
}

impl<'a> SdsegTrainer<'a> {
    /// The model with random weights, then the resumed run's checkpoint, optimiser state and
    /// EMA, or (a new run) the `--init` checkpoints.
    fn new(
        opts: &'a SdsegTrainOptions,
        state: &RunState,
        val: Vec<ValCase>,
        warnings: &mut Vec<String>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Self, TrainError> {
        let mut init_rng = rng_for(state.seed, streams::INIT, 0);
        let mut model = TrainModel::new(&opts.config, &opts.device, &mut init_rng)?;
        model.t_min = opts.t_min;
        let groups = model.param_groups();
        let mut opt = AdamW::new(groups, state.base_lr, AdamWConfig::default())?;
        let unet_params = model.unet_params();
        let ema = if opts.resume {
            restore_run(opts, state, &mut model, &mut opt, &unet_params)?
        } else {
            init_run(opts, &mut model, &unet_params, warnings, on_event)?
        };
        Ok(SdsegTrainer {
            opts,
            model,
            opt,
            ema,
            unet_params,
            sched: LinearWarmup::new(state.warmup_steps),
            val,
            last_val: None,
        })
    }

    /// The parameter counts and optimiser settings, one line.
    fn describe(&self, state: &RunState) -> String {
        let count = |p: &[(String, Var)]| p.iter().map(|(_, v)| v.elem_count()).sum::<usize>();
        format!(
            "{} trainable parameters (UNet {}, condition encoder {}); AdamW lr {:.3e}, warm-up {} steps",
            self.opt.num_params(),
            count(&self.unet_params),
            count(&self.model.cond_params()),
            state.base_lr,
            state.warmup_steps
        )
    }

    /// Validation Dice on the held-out cases with the EMA weights.
    fn validation_report(&self, seed: u64) -> Result<ValReport, TrainError> {
        let sd = inference_model(&self.model, self.ema.as_ref())?;
        validate(
            &sd,
            &self.val,
            &self.opts.pipeline,
            seed,
            self.opts.val_batch,
            Some(&self.opts.out.join("val")),
        )
    }

    /// A run without steps (`--steps` reached): the scale factor from the first batch if not
    /// known, the `last` checkpoint, and a validation when there are held-out cases.
    fn finish_without_steps(
        &mut self,
        set: &Arc<SliceSet>,
        state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(), TrainError> {
        if self.model.scale_factor.is_none() {
            let mut cache = None;
            let b = Sampler {
                seed: state.seed,
                batch: state.batch_size,
            }
            .batch(set, 0, &mut cache);
            let s = set.size;
            let masks = Tensor::from_vec(b.masks, (b.batch, 3, s, s), &self.opts.device)?;
            let mut r = rng_for(state.seed, streams::STEP, u64::MAX);
            state.scale_factor = Some(self.model.estimate_scale_factor(&masks, &mut r)?);
        }
        self.save(state)?;
        if !self.val.is_empty() {
            let report = self.validation_report(state.seed)?;
            on_event(&Event::Validation {
                step: state.step,
                report: report.clone(),
            });
            self.last_val = Some(report);
        }
        Ok(())
    }
}

/// Restore a resumed run: weights, optimiser state and (with `use_ema`) the EMA.
fn restore_run(
    opts: &SdsegTrainOptions,
    state: &RunState,
    model: &mut TrainModel,
    opt: &mut AdamW,
    unet_params: &[(String, Var)],
) -> Result<Option<Ema>, TrainError> {
    let dev = &opts.device;
    let ckpt = Checkpoint::open(opts.out.join(&state.checkpoint))?;
    model.restore(&ckpt)?;
    resume_optimizer(opt, &opts.out, state, dev)?;
    if !opts.config.params.use_ema {
        return Ok(None);
    }
    let decay = ckpt.scalar("model_ema.decay")?.unwrap_or(EMA_DECAY as f64) as f32;
    let n = ckpt.scalar("model_ema.num_updates")?.unwrap_or(0.0) as i32;
    let ema = Ema::restore(unet_params, decay, n, |k| {
        ema_name(k).and_then(|e| ckpt.tensor_as(&e, candle_core::DType::F32, dev).ok())
    })
    .map_err(|e| TrainError::Resume {
        run_dir: opts.out.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(ema))
}

/// Start a new run: the `--init` checkpoints (reported), the configured scale factor unless
/// it is estimated, and a fresh EMA (with `use_ema`).
fn init_run(
    opts: &SdsegTrainOptions,
    model: &mut TrainModel,
    unet_params: &[(String, Var)],
    warnings: &mut Vec<String>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Option<Ema>, TrainError> {
    if !opts.init.is_empty() {
        let report = model.apply_init(&opts.init)?;
        for (p, what) in &report.sources {
            say(on_event, format!("--init {}: {what}", p.display()));
        }
        for p in &report.padded {
            say(on_event, format!("zero-padded {p}"));
        }
        if report.cond_from_first_stage {
            say(
                on_event,
                "condition encoder initialised from the autoencoder's encoder".into(),
            );
        }
        warnings.extend(report.warnings);
        if !report.first_stage_loaded {
            warnings.push(NO_AUTOENCODER.into());
        }
    } else {
        warnings.push(NO_AUTOENCODER.into());
    }
    if !opts.config.params.scale_by_std {
        model.scale_factor = Some(opts.config.config_scale_factor() as f32);
    }
    Ok(opts
        .config
        .params
        .use_ema
        .then(|| Ema::new(unet_params, EMA_DECAY))
        .transpose()?)
}

impl Trainer for SdsegTrainer<'_> {
    fn step(
        &mut self,
        n: u64,
        batch: HostBatch,
        state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(StepLosses, f64), TrainError> {
        let dev = &self.opts.device;
        let (b, s) = (batch.batch, batch.size);
        let images = Tensor::from_vec(batch.images, (b, 3, s, s), dev)?;
        let masks = Tensor::from_vec(batch.masks, (b, 3, s, s), dev)?;
        if self.model.scale_factor.is_none() {
            let mut r = rng_for(state.seed, streams::STEP, u64::MAX);
            let sf = self.model.estimate_scale_factor(&masks, &mut r)?;
            say(
                on_event,
                format!(
                    "scale_factor set to {sf:.6} (1/{:.4}) from the first batch",
                    1.0 / sf
                ),
            );
            state.scale_factor = Some(sf);
            write_config(
                &self.opts.out.join("config.json"),
                &self.opts.config,
                Some(sf),
            )?;
        }
        let mut rng = rng_for(state.seed, streams::STEP, n);
        let (loss, parts) = self
            .model
            .loss(&images, &masks, &batch.class_ids, true, &mut rng)?;
        if !parts.loss.is_finite() && self.opts.stop_on_nan {
            return Err(TrainError::Diverged {
                step: n,
                loss: parts.loss,
            });
        }
        let grads = loss.backward()?;
        let factor = self.sched.factor(n);
        self.opt.step(&grads, factor)?;
        drop(grads);
        if let Some(e) = self.ema.as_mut() {
            e.update(&self.unet_params)?;
        }
        Ok((parts, state.base_lr * factor))
    }

    /// Every `val_every` steps and after the last one, when there are held-out cases; a new
    /// best mean Dice writes `best.safetensors`.
    fn validate(
        &mut self,
        step: u64,
        last: bool,
        state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Option<String>, TrainError> {
        let every = self.opts.val_every;
        if every == 0 || self.val.is_empty() || !(due(every, step) || last) {
            return Ok(None);
        }
        let report = self.validation_report(state.seed)?;
        let dice = format!("{:.5}", report.mean_dice);
        if state.best_val_dice.is_none_or(|b| report.mean_dice > b) {
            state.best_val_dice = Some(report.mean_dice);
            let ema = self.ema.as_ref();
            write_training_checkpoint(&self.opts.out, "best", &self.model, ema, None)?;
        }
        on_event(&Event::Validation {
            step,
            report: report.clone(),
        });
        self.last_val = Some(report);
        Ok(Some(dice))
    }

    fn log_line(
        &self,
        step: u64,
        recent: f32,
        losses: &StepLosses,
        lr: f64,
        elapsed_s: f64,
        val: Option<&str>,
    ) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.4e},{:.1},{}",
            step,
            recent,
            losses.loss_simple,
            losses.loss_seg,
            lr,
            elapsed_s,
            val.unwrap_or("")
        )
    }

    fn save(&mut self, state: &RunState) -> Result<(), TrainError> {
        let (out, ema) = (&self.opts.out, self.ema.as_ref());
        write_training_checkpoint(out, "last", &self.model, ema, Some(&self.opt))?;
        state.save(out)
    }
}
