//! The `train` loop (SDSeg stage 2), as `SDSeg` under PyTorch Lightning runs it:
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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::model::checkpoint::{ema_name, Checkpoint};
use crate::model::config::SdsegConfig;
use crate::pipeline::Pipeline;

use super::checkpoint::{write_config, write_training_checkpoint, RunState};
use super::data::{self, prefetch, rng_for, streams, DataSource, Sampler, SliceSet};
use super::ema::{Ema, EMA_DECAY};
use super::model::{StepLosses, TrainModel};
use super::optim::{AdamW, AdamWConfig, LinearWarmup};
use super::validate::{inference_model, val_cases, validate, ValCase, ValReport};
use super::TrainError;

/// Everything `train` needs (the CLI fills it from flags).
#[derive(Clone, Debug)]
pub struct RunOptions {
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
pub struct RunSummary {
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

/// Progress events for the caller (progress bars, logs).
#[derive(Clone, Debug)]
pub enum Event {
    Message(String),
    Step {
        step: u64,
        total: u64,
        losses: StepLosses,
        lr: f64,
    },
    Validation {
        step: u64,
        report: ValReport,
    },
}

fn log_line(path: &Path, line: &str) -> Result<(), TrainError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TrainError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    writeln!(f, "{line}").map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Load the held-out cases: `--val`, else the split's test cases of `--data`.
fn load_val(
    opts: &RunOptions,
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

/// Run SDSeg training (module docs). `on_event` receives progress.
pub fn train_sdseg(
    opts: &RunOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunSummary, TrainError> {
    if opts.batch_size == 0 {
        return Err(TrainError::Usage("--batch-size must be at least 1".into()));
    }
    if opts.pipeline.slicing.size != opts.config.image_size() {
        return Err(TrainError::Usage(format!(
            "the pipeline slices at {0}×{0} but the model config expects {1}×{1} images \
             (ddconfig.resolution); make them agree",
            opts.pipeline.slicing.size,
            opts.config.image_size()
        )));
    }
    if opts.pipeline.num_classes() != opts.config.params.num_classes {
        return Err(TrainError::Usage(format!(
            "the pipeline has {} classes but the model config {}",
            opts.pipeline.num_classes(),
            opts.config.params.num_classes
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let mut warnings = Vec::new();
    let say = |on_event: &mut dyn FnMut(&Event), m: String| on_event(&Event::Message(m));

    // Run state (fresh or resumed).
    let mut state = if opts.resume {
        let st = RunState::load(&opts.out)?;
        say(
            on_event,
            format!(
                "resuming {} at step {} (seed {}, batch {}, lr {:.3e})",
                opts.out.display(),
                st.step,
                st.seed,
                st.batch_size,
                st.base_lr
            ),
        );
        st
    } else {
        if RunState::path(&opts.out).exists() {
            return Err(TrainError::Usage(format!(
                "{} already holds a run (state.json); pass --resume to continue it or choose a new --out",
                opts.out.display()
            )));
        }
        let lr = if opts.scale_lr {
            opts.base_lr * opts.batch_size as f64
        } else {
            opts.base_lr
        };
        RunState {
            step: 0,
            seed: opts.seed,
            batch_size: opts.batch_size,
            base_lr: lr,
            warmup_steps: opts.warmup_steps,
            pipeline: opts.pipeline.name.clone(),
            data: opts.data.to_string(),
            scale_factor: None,
            best_val_dice: None,
            checkpoint: "last.safetensors".into(),
            optimizer_state: "last.state.safetensors".into(),
        }
    };

    // Data.
    let (train_refs, held_out) = data::list_cases(&opts.data, &opts.pipeline, &mut warnings)?;
    say(
        on_event,
        format!(
            "loading {} training case(s) from {}",
            train_refs.len(),
            opts.data
        ),
    );
    let set = Arc::new(SliceSet::build(
        data::load_cases(&train_refs)?,
        &opts.pipeline,
    )?);
    say(
        on_event,
        format!(
            "{} training slices at {}² ({:.0}% with foreground, {} constant slices skipped)",
            set.len(),
            set.size,
            100.0 * set.foreground_fraction(),
            set.skipped_constant
        ),
    );
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
    let dev = &opts.device;
    let mut init_rng = rng_for(state.seed, streams::INIT, 0);
    let mut model = TrainModel::new(&opts.config, dev, &mut init_rng)?;
    model.t_min = opts.t_min;
    let groups = model.param_groups();
    let mut opt = AdamW::new(groups, state.base_lr, AdamWConfig::default())?;
    let unet_params = model.unet_params();
    let use_ema = opts.config.params.use_ema;
    let mut ema = if opts.resume {
        let ck = opts.out.join(&state.checkpoint);
        let ckpt = Checkpoint::open(&ck)?;
        model.restore(&ckpt)?;
        let st = opts.out.join(&state.optimizer_state);
        let tensors = candle_core::safetensors::load(&st, dev).map_err(|e| TrainError::Resume {
            run_dir: opts.out.clone(),
            message: format!("{}: {e}", st.display()),
        })?;
        opt.load_state(&tensors).map_err(|e| TrainError::Resume {
            run_dir: opts.out.clone(),
            message: e.to_string(),
        })?;
        if use_ema {
            let decay = ckpt.scalar("model_ema.decay")?.unwrap_or(EMA_DECAY as f64) as f32;
            let n = ckpt.scalar("model_ema.num_updates")?.unwrap_or(0.0) as i32;
            Some(
                Ema::restore(&unet_params, decay, n, |k| {
                    ema_name(k).and_then(|e| ckpt.tensor_as(&e, candle_core::DType::F32, dev).ok())
                })
                .map_err(|e| TrainError::Resume {
                    run_dir: opts.out.clone(),
                    message: e.to_string(),
                })?,
            )
        } else {
            None
        }
    } else {
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
        use_ema
            .then(|| Ema::new(&unet_params, EMA_DECAY))
            .transpose()?
    };
    for w in &warnings {
        say(on_event, format!("warning: {w}"));
    }
    say(
        on_event,
        format!(
            "{} trainable parameters (UNet {}, condition encoder {}); AdamW lr {:.3e}, warm-up {} steps",
            opt.num_params(),
            unet_params.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
            model.cond_params().iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
            state.base_lr,
            state.warmup_steps
        ),
    );
    let sched = LinearWarmup::new(state.warmup_steps);
    let log_path = opts.out.join("log.csv");
    if !opts.resume {
        let _ = std::fs::remove_file(&log_path);
        log_line(
            &log_path,
            "step,loss,loss_simple,loss_seg,lr,elapsed_s,val_dice",
        )?;
    }

    let start = state.step;
    let end = opts.steps.max(start);
    let sampler = Sampler {
        seed: state.seed,
        batch: state.batch_size,
    };
    let (rx, producer) = prefetch(set.clone(), sampler, start, end, 2);
    let t0 = Instant::now();
    let mut first_loss = None;
    let mut last_loss = None;
    let mut window: Vec<f32> = Vec::new();
    let mut recent = f32::NAN;
    let mut last_val = None;
    let s = set.size;
    for n in start..end {
        let batch = rx
            .recv()
            .map_err(|_| TrainError::Internal("data thread stopped".into()))?;
        debug_assert_eq!(batch.step, n);
        let b = batch.batch;
        let images = Tensor::from_vec(batch.images, (b, 3, s, s), dev)?;
        let masks = Tensor::from_vec(batch.masks, (b, 3, s, s), dev)?;
        if model.scale_factor.is_none() {
            let mut r = rng_for(state.seed, streams::STEP, u64::MAX);
            let sf = model.estimate_scale_factor(&masks, &mut r)?;
            say(
                on_event,
                format!(
                    "scale_factor set to {sf:.6} (1/{:.4}) from the first batch",
                    1.0 / sf
                ),
            );
            state.scale_factor = Some(sf);
            write_config(&opts.out.join("config.json"), &opts.config, Some(sf))?;
        }
        let mut rng = rng_for(state.seed, streams::STEP, n);
        let (loss, parts) = model.loss(&images, &masks, &batch.class_ids, true, &mut rng)?;
        if !parts.loss.is_finite() && opts.stop_on_nan {
            return Err(TrainError::Diverged {
                step: n,
                loss: parts.loss,
            });
        }
        let grads = loss.backward()?;
        let factor = sched.factor(n);
        opt.step(&grads, factor)?;
        drop(grads);
        if let Some(e) = ema.as_mut() {
            e.update(&unet_params)?;
        }
        state.step = n + 1;
        first_loss.get_or_insert(parts);
        last_loss = Some(parts);
        window.push(parts.loss);
        let lr = state.base_lr * factor;
        on_event(&Event::Step {
            step: n + 1,
            total: end,
            losses: parts,
            lr,
        });
        let done = n + 1 == end;
        let mut val_dice = String::new();
        if opts.val_every > 0 && !val.is_empty() && ((n + 1) % opts.val_every == 0 || done) {
            let sd = inference_model(&model, ema.as_ref())?;
            let report = validate(
                &sd,
                &val,
                &opts.pipeline,
                state.seed,
                opts.val_batch,
                Some(&opts.out.join("val")),
            )?;
            val_dice = format!("{:.5}", report.mean_dice);
            if state.best_val_dice.is_none_or(|b| report.mean_dice > b) {
                state.best_val_dice = Some(report.mean_dice);
                write_training_checkpoint(&opts.out, "best", &model, ema.as_ref(), None)?;
            }
            on_event(&Event::Validation {
                step: n + 1,
                report: report.clone(),
            });
            last_val = Some(report);
        }
        if (n + 1) % opts.log_every.max(1) == 0 || done || !val_dice.is_empty() {
            recent = window.iter().sum::<f32>() / window.len().max(1) as f32;
            log_line(
                &log_path,
                &format!(
                    "{},{:.6},{:.6},{:.6},{:.4e},{:.1},{}",
                    n + 1,
                    recent,
                    parts.loss_simple,
                    parts.loss_seg,
                    lr,
                    t0.elapsed().as_secs_f64(),
                    val_dice
                ),
            )?;
            window.clear();
        }
        if (opts.save_every > 0 && (n + 1) % opts.save_every == 0) || done {
            write_training_checkpoint(&opts.out, "last", &model, ema.as_ref(), Some(&opt))?;
            state.save(&opts.out)?;
        }
    }
    drop(rx);
    let _ = producer.join();
    let steps_done = end - start;
    let elapsed = t0.elapsed().as_secs_f64();
    if steps_done == 0 {
        // Nothing to train: still write the checkpoint (e.g. --steps 0 to validate --init).
        if model.scale_factor.is_none() {
            let mut cache = None;
            let b = Sampler {
                seed: state.seed,
                batch: state.batch_size,
            }
            .batch(&set, 0, &mut cache);
            let masks = Tensor::from_vec(b.masks, (b.batch, 3, s, s), dev)?;
            let mut r = rng_for(state.seed, streams::STEP, u64::MAX);
            state.scale_factor = Some(model.estimate_scale_factor(&masks, &mut r)?);
        }
        write_training_checkpoint(&opts.out, "last", &model, ema.as_ref(), Some(&opt))?;
        state.save(&opts.out)?;
        if !val.is_empty() {
            let sd = inference_model(&model, ema.as_ref())?;
            let report = validate(
                &sd,
                &val,
                &opts.pipeline,
                state.seed,
                opts.val_batch,
                Some(&opts.out.join("val")),
            )?;
            on_event(&Event::Validation {
                step: state.step,
                report: report.clone(),
            });
            last_val = Some(report);
        }
    }
    write_config(
        &opts.out.join("config.json"),
        &opts.config,
        model.scale_factor,
    )?;
    Ok(RunSummary {
        steps_done,
        first_loss,
        last_loss,
        recent_loss: recent,
        steps_per_second: if elapsed > 0.0 {
            steps_done as f64 / elapsed
        } else {
            0.0
        },
        scale_factor: model.scale_factor.unwrap_or(1.0),
        checkpoint: opts.out.join("last.safetensors"),
        val: last_val,
        train_slices: set.len(),
        warnings,
    })
}

const NO_AUTOENCODER: &str = "no autoencoder weights given (--init with first_stage_model.* or a \
    kl-f8 checkpoint, e.g. the output of train-autoencoder): the frozen first stage is RANDOM, \
    so the model cannot learn useful masks";
