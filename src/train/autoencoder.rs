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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;

use crate::model::checkpoint::Checkpoint;
use crate::model::config::SdsegConfig;
use crate::model::vae::AutoencoderKL;
use crate::pipeline::Pipeline;

use super::checkpoint::{save_tensors, write_config, RunState};
use super::data::{self, prefetch, rng_for, streams, DataSource, Sampler, SliceSet};
use super::model::{init_varmap, vars_with_prefix, FIRST};
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use super::session::Event;
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

/// Train the autoencoder (module docs).
pub fn train_autoencoder(
    opts: &AeOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<AeSummary, TrainError> {
    if opts.batch_size == 0 {
        return Err(TrainError::Usage("--batch-size must be at least 1".into()));
    }
    if opts.pipeline.slicing.size != opts.config.image_size() {
        return Err(TrainError::Usage(format!(
            "the pipeline slices at {0}×{0} but the model config expects {1}×{1} images",
            opts.pipeline.slicing.size,
            opts.config.image_size()
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let msg = |on_event: &mut dyn FnMut(&Event), m: String| on_event(&Event::Message(m));
    let mut state = if opts.resume {
        RunState::load(&opts.out)?
    } else {
        if RunState::path(&opts.out).exists() {
            return Err(TrainError::Usage(format!(
                "{} already holds a run (state.json); pass --resume or choose a new --out",
                opts.out.display()
            )));
        }
        RunState {
            step: 0,
            seed: opts.seed,
            batch_size: opts.batch_size,
            base_lr: opts.lr,
            warmup_steps: 0,
            pipeline: opts.pipeline.name.clone(),
            data: opts.data.to_string(),
            scale_factor: None,
            best_val_dice: None,
            checkpoint: "last.safetensors".into(),
            optimizer_state: "last.state.safetensors".into(),
        }
    };
    let mut warnings = Vec::new();
    let (train_refs, held) = data::list_cases(&opts.data, &opts.pipeline, &mut warnings)?;
    let set = Arc::new(SliceSet::build(
        data::load_cases(&train_refs)?,
        &opts.pipeline,
    )?);
    msg(
        on_event,
        format!("{} training slices at {}²", set.len(), set.size),
    );
    let val_set = match &opts.val {
        Some(v) => {
            let (a, b) = data::list_cases(v, &opts.pipeline, &mut warnings)?;
            let refs: Vec<_> = a.into_iter().chain(b).collect();
            Some(SliceSet::build(data::load_cases(&refs)?, &opts.pipeline)?)
        }
        None if !held.is_empty() => {
            Some(SliceSet::build(data::load_cases(&held)?, &opts.pipeline)?)
        }
        None => None,
    };
    for w in &warnings {
        msg(on_event, format!("warning: {w}"));
    }

    let dev = &opts.device;
    let fs = opts.config.first_stage();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let ae = AutoencoderKL::new(&fs.ddconfig, fs.embed_dim, vb.pp(FIRST))?;
    init_varmap(&varmap, &mut rng_for(state.seed, streams::INIT, 0))?;
    let params = vars_with_prefix(&varmap, FIRST);
    let adam = AdamWConfig {
        beta1: 0.5,
        beta2: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(
        vec![ParamGroup {
            name: "autoencoder".into(),
            lr_scale: 1.0,
            params: params.clone(),
        }],
        state.base_lr,
        adam,
    )?;
    let load_from = if opts.resume {
        Some(opts.out.join(&state.checkpoint))
    } else {
        opts.init.clone()
    };
    if let Some(path) = &load_from {
        let ckpt = Checkpoint::open(path)?;
        let bare = !ckpt
            .keys()
            .keys()
            .any(|k| k.starts_with("first_stage_model."));
        for (k, v) in &params {
            let stored = if bare {
                k[FIRST.len() + 1..].to_string()
            } else {
                k.clone()
            };
            let t = ckpt
                .tensor_as(&stored, DType::F32, dev)
                .map_err(|e| TrainError::Init {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if t.dims() != v.dims() {
                return Err(TrainError::Init {
                    path: path.clone(),
                    message: format!(
                        "{stored}: shape {:?}, first_stage_config gives {:?}",
                        t.dims(),
                        v.dims()
                    ),
                });
            }
            v.set(&t)?;
        }
        msg(
            on_event,
            format!("autoencoder weights from {}", path.display()),
        );
    }
    if opts.resume {
        let st = opts.out.join(&state.optimizer_state);
        let tensors = candle_core::safetensors::load(&st, dev).map_err(|e| TrainError::Resume {
            run_dir: opts.out.clone(),
            message: format!("{}: {e}", st.display()),
        })?;
        opt.load_state(&tensors)?;
    }
    msg(
        on_event,
        format!(
            "{} autoencoder parameters; Adam lr {:.3e}, kl_weight {:e}",
            opt.num_params(),
            state.base_lr,
            opts.kl_weight
        ),
    );
    write_config(&opts.out.join("config.json"), &opts.config, None)?;
    let log_path = opts.out.join("log.csv");
    if !opts.resume {
        let _ = std::fs::remove_file(&log_path);
        append(
            &log_path,
            "step,loss,rec,kl,elapsed_s,recon_dice,latent_std",
        )?;
    }
    let save = |state: &RunState, opt: &AdamW| -> Result<(), TrainError> {
        let tensors = params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        save_tensors(&opts.out.join(&state.checkpoint), &tensors)?;
        save_tensors(
            &opts.out.join(&state.optimizer_state),
            &opt.state_tensors()?,
        )?;
        state.save(&opts.out)
    };

    let start = state.step;
    let end = opts.steps.max(start);
    let sampler = Sampler {
        seed: state.seed,
        batch: state.batch_size,
    };
    let (rx, producer) = prefetch(set.clone(), sampler, start, end, 2);
    let s = set.size;
    let t0 = Instant::now();
    let (mut first, mut window, mut recent) = (None, Vec::new(), f32::NAN);
    let mut scores = None;
    for n in start..end {
        let b = rx
            .recv()
            .map_err(|_| TrainError::Internal("data thread stopped".into()))?;
        let masks = Tensor::from_vec(b.masks, (b.batch, 3, s, s), dev)?;
        let mut rng = rng_for(state.seed, streams::STEP, n);
        let (loss, rec, kl) = ae_loss(&ae, &masks, opts.kl_weight, opts.rec_loss, &mut rng)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(TrainError::Diverged { step: n, loss: l });
        }
        let grads = loss.backward()?;
        opt.step(&grads, 1.0)?;
        drop(grads);
        state.step = n + 1;
        first.get_or_insert(l);
        window.push(l);
        on_event(&Event::Step {
            step: n + 1,
            total: end,
            losses: super::model::StepLosses {
                loss: l,
                loss_simple: rec,
                loss_seg: kl,
            },
            lr: state.base_lr,
        });
        let done = n + 1 == end;
        let mut extra = String::from(",");
        if (opts.val_every > 0 && (n + 1) % opts.val_every == 0) || done {
            let sc = reconstruction_scores(&ae, val_set.as_ref().unwrap_or(&set), 64, dev)?;
            extra = format!("{:.5},{:.4}", sc.0, sc.1);
            msg(
                on_event,
                format!(
                    "step {}: reconstruction Dice {:.4}, latent std {:.3}",
                    n + 1,
                    sc.0,
                    sc.1
                ),
            );
            scores = Some(sc);
        }
        if (n + 1) % opts.log_every.max(1) == 0 || done || extra != "," {
            recent = window.iter().sum::<f32>() / window.len().max(1) as f32;
            window.clear();
            append(
                &log_path,
                &format!(
                    "{},{recent:.6},{rec:.6},{kl:.6},{:.1},{extra}",
                    n + 1,
                    t0.elapsed().as_secs_f64()
                ),
            )?;
        }
        if (opts.save_every > 0 && (n + 1) % opts.save_every == 0) || done {
            save(&state, &opt)?;
        }
    }
    drop(rx);
    let _ = producer.join();
    if end == start {
        save(&state, &opt)?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(AeSummary {
        steps_done: end - start,
        first_loss: first,
        recent_loss: recent,
        steps_per_second: if elapsed > 0.0 {
            (end - start) as f64 / elapsed
        } else {
            0.0
        },
        recon_dice: scores.map(|s| s.0),
        latent_std: scores.map(|s| s.1),
        checkpoint: opts.out.join(&state.checkpoint),
    })
}

fn append(path: &std::path::Path, line: &str) -> Result<(), TrainError> {
    use std::io::Write;
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
