//! `sdseg-volume train` (SDSeg stage 2) and `sdseg-volume train-autoencoder` (stage 1).
use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;

use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::model::config::SdsegConfig;
use crate::model::device::DeviceSpec;
use crate::pipeline::Pipeline;
use crate::train::autoencoder::{train_autoencoder, AeOptions, RecLoss};
use crate::train::session::Event;
use crate::train::{train_sdseg, DataSource, SdsegTrainOptions};

/// Options both training commands share.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Pipeline (built-in name or TOML file): preprocessing, label remap, splits, flips.
    #[arg(long, value_name = "NAME|FILE")]
    pub pipeline: String,
    /// Apply a named variant of the pipeline (e.g. `official-train` for BTCV).
    #[arg(long, value_name = "NAME")]
    pub variant: Option<String>,
    /// Labelled volumes: a BTCV, STS-3D or images/ + labels/ folder, or synthetic phantoms
    /// `phantom:FIRST-LAST[@IxJxK]` (seeds FIRST..=LAST).
    #[arg(long, value_name = "DIR|phantom:A-B")]
    pub data: String,
    /// Held-out volumes for validation (same forms as --data). Default: the pipeline's test
    /// split when --data holds it.
    #[arg(long, value_name = "DIR|phantom:A-B")]
    pub val: Option<String>,
    /// Run folder (checkpoints, config.json, log.csv, state.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Model config (LDM-style JSON, e.g. a run's config.json); default: the pipeline's preset.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub model_config: Option<PathBuf>,
    /// Model preset (sdseg-binary, sdseg-cls9, sdseg-cls14).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Total optimiser steps (a resumed run continues up to this number).
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Use the learning rate as given instead of multiplying it by the batch size
    /// (main.py's --scale_lr, on by default).
    #[arg(long)]
    pub no_scale_lr: bool,
    /// `cpu`, `cuda` or `cuda:N` (`gpu` = `cuda:0`; CUDA needs a build with --features cuda).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Continue the run in --out from its last checkpoint and optimiser state.
    #[arg(long)]
    pub resume: bool,
    /// Validate every N steps (0: only at the end when held-out volumes exist).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub val_every: u64,
    /// Write last.safetensors every N steps (and at the end).
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub save_every: u64,
    /// Average the loss over N steps per log.csv line.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_every: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Initial weights in the official layout (repeatable): an SDSeg checkpoint, an LDM UNet
    /// (model.diffusion_model.*, first conv zero-padded 4 → 8 channels), an autoencoder
    /// (first_stage_model.* or kl-f8 encoder.*/decoder.*). The condition encoder copies the
    /// autoencoder's encoder when no cond_stage_model.* is given.
    #[arg(long, value_name = "FILE")]
    pub init: Vec<PathBuf>,
    /// Base learning rate per sample (SDSeg configs: 1e-5), scaled by the batch size.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Linear warm-up steps of the learning rate (SDSeg configs: 10000).
    #[arg(long, default_value_t = 10_000)]
    pub warmup_steps: u64,
    /// Slices per inference batch in validation.
    #[arg(long, default_value_t = 8)]
    pub val_batch: usize,
    /// Draw training timesteps uniformly from [N, T) instead of [0, T) (the official
    /// recipe). Inference runs only t = T − 1; a high N trains a small model faster.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub t_min: u32,
}

#[derive(Debug, clap::Args)]
pub struct AutoencoderArgs {
    #[command(flatten)]
    pub common: Common,
    /// Start from these autoencoder weights (first_stage_model.* or kl-f8 layout).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Base learning rate per sample (LDM kl-f8: 4.5e-6), scaled by the batch size.
    #[arg(long, default_value_t = 4.5e-6)]
    pub lr: f64,
    /// Weight of the KL term (LDM kl-f8: 1e-6).
    #[arg(long, default_value_t = 1e-6)]
    pub kl_weight: f64,
    /// Reconstruction loss: `l1` (LDM) or `l2`. L2 trains small autoencoders on sparse
    /// masks faster: L1's median-seeking gradient lets them settle on all-background.
    #[arg(long, value_enum, default_value_t = RecLoss::L1)]
    pub rec_loss: RecLoss,
}

struct Resolved {
    pipeline: Pipeline,
    config: SdsegConfig,
    data: DataSource,
    val: Option<DataSource>,
    device: Device,
}

fn resolve(c: &Common) -> anyhow::Result<Resolved> {
    let mut pipeline = Pipeline::load(&c.pipeline).classified()?;
    if let Some(v) = &c.variant {
        pipeline = pipeline.with_variant(v).classified()?;
    }
    let config = if let Some(p) = &c.model_config {
        SdsegConfig::load(p).classified()?
    } else if let Some(name) = &c.preset {
        SdsegConfig::preset(name).classified()?
    } else if c.resume && c.out.join("config.json").is_file() {
        SdsegConfig::load(c.out.join("config.json")).classified()?
    } else {
        SdsegConfig::preset(&pipeline.model.preset).map_err(|_| {
            UsageError(format!(
                "pipeline '{}' names model preset '{}', which is not built in; pass \
                 --model-config FILE (e.g. the config.json of a model folder)",
                pipeline.name, pipeline.model.preset
            ))
        })?
    };
    let data: DataSource = c.data.parse().classified()?;
    let val = c.val.as_deref().map(str::parse).transpose().classified()?;
    Ok(Resolved {
        pipeline,
        config,
        data,
        val,
        device: c.device.open().classified()?,
    })
}

fn progress(g: &Globals, total: u64, start_msg: &str) -> indicatif::ProgressBar {
    let pb = if g.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(start_msg.to_string());
    pb
}

fn handler<'a>(g: &'a Globals, pb: &'a indicatif::ProgressBar) -> impl FnMut(&Event) + 'a {
    move |e: &Event| match e {
        Event::Message(m) => {
            if !g.quiet {
                pb.suspend(|| eprintln!("{m}"));
            }
        }
        Event::Step {
            step,
            total,
            losses,
            lr,
        } => {
            pb.set_length(*total);
            pb.set_position(*step);
            pb.set_message(format!("loss {:.4} lr {lr:.2e}", losses.loss));
        }
        Event::Validation { step, report } => {
            if !g.quiet {
                pb.suspend(|| {
                    eprintln!(
                        "step {step}: validation mean Dice {:.4} over {} case(s)",
                        report.mean_dice,
                        report.cases.len()
                    )
                });
            }
        }
    }
}

pub fn run_train(args: TrainArgs, g: Globals) -> anyhow::Result<()> {
    let c = &args.common;
    let r = resolve(c)?;
    let opts = SdsegTrainOptions {
        pipeline: r.pipeline,
        config: r.config,
        data: r.data,
        val: r.val,
        out: c.out.clone(),
        init: args.init.clone(),
        steps: c.steps,
        batch_size: c.batch_size,
        base_lr: args.lr,
        scale_lr: !c.no_scale_lr,
        warmup_steps: args.warmup_steps,
        device: r.device,
        resume: c.resume,
        val_every: c.val_every,
        save_every: c.save_every,
        log_every: c.log_every,
        seed: c.seed,
        val_batch: args.val_batch,
        stop_on_nan: true,
        t_min: args.t_min,
    };
    let pb = progress(&g, c.steps, "train");
    let mut on = handler(&g, &pb);
    let summary = train_sdseg(&opts, &mut on)
        .classified()
        .with_context(|| format!("training into {}", c.out.display()))?;
    pb.finish_and_clear();
    if c.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !g.quiet {
        eprintln!(
            "trained {} step(s) at {:.3} steps/s; loss {:.4} → {:.4}; scale_factor {:.6}; \
             checkpoint {}",
            summary.steps_done,
            summary.steps_per_second,
            summary.first_loss.map_or(f32::NAN, |l| l.loss),
            summary.recent_loss,
            summary.scale_factor,
            summary.checkpoint.display()
        );
        if let Some(v) = &summary.val {
            eprintln!(
                "validation: mean Dice {:.4} over {} case(s) (predictions in {})",
                v.mean_dice,
                v.cases.len(),
                c.out.join("val").display()
            );
        }
    }
    Ok(())
}

pub fn run_autoencoder(args: AutoencoderArgs, g: Globals) -> anyhow::Result<()> {
    let c = &args.common;
    let r = resolve(c)?;
    let lr = if c.no_scale_lr {
        args.lr
    } else {
        args.lr * c.batch_size as f64
    };
    let opts = AeOptions {
        pipeline: r.pipeline,
        config: r.config,
        data: r.data,
        val: r.val,
        out: c.out.clone(),
        init: args.init.clone(),
        steps: c.steps,
        batch_size: c.batch_size,
        lr,
        kl_weight: args.kl_weight,
        rec_loss: args.rec_loss,
        device: r.device,
        resume: c.resume,
        val_every: c.val_every,
        save_every: c.save_every,
        log_every: c.log_every,
        seed: c.seed,
    };
    let pb = progress(&g, c.steps, "autoencoder");
    let mut on = handler(&g, &pb);
    let summary = train_autoencoder(&opts, &mut on)
        .classified()
        .with_context(|| format!("training the autoencoder into {}", c.out.display()))?;
    pb.finish_and_clear();
    if c.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !g.quiet {
        eprintln!(
            "trained {} step(s) at {:.3} steps/s; loss {:.4} → {:.4}; reconstruction Dice {}; \
             checkpoint {}",
            summary.steps_done,
            summary.steps_per_second,
            summary.first_loss.unwrap_or(f32::NAN),
            summary.recent_loss,
            summary
                .recon_dice
                .map_or("n/a".to_string(), |d| format!("{d:.4}")),
            summary.checkpoint.display()
        );
    }
    Ok(())
}
