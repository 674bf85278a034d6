//! `sdseg-volume convert-checkpoint`: an official Lightning `.ckpt` (or any SDSeg state dict)
//! to a lean inference `.safetensors` holding only what single-step inference reads.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;

use super::Globals;
use crate::error::ResultExt;
use crate::model::checkpoint::{convert_checkpoint, VerifyFn};
use crate::model::config::SdsegConfig;
use crate::model::device::DTypeSpec;
use crate::model::sdseg::Sdseg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input checkpoint (.ckpt or .safetensors).
    pub input: PathBuf,
    /// Output .safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Store floating weights as f16, bf16 or f32 (default: as stored). `scale_factor` and
    /// the schedule buffers stay f32.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<DTypeSpec>,
    /// Keep the raw UNet (model.diffusion_model.*) instead of the EMA copy (model_ema.*).
    /// Load the result with the same choice.
    #[arg(long)]
    pub no_ema: bool,
    /// Model config (JSON or preset name) to verify the result with a strict load before it
    /// is written. Default: <input>.json or config.json beside the input, if present.
    #[arg(long)]
    pub model_config: Option<String>,
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let dtype = args
        .dtype
        .map(DTypeSpec::storage)
        .transpose()
        .classified()?;
    let use_ema = !args.no_ema;
    let config =
        SdsegConfig::for_weights(args.model_config.as_deref(), &args.input).classified()?;
    let verify = config.as_ref().map(|(cfg, _)| {
        move |p: &std::path::Path| {
            Sdseg::load(p, cfg, &Device::Cpu, candle_core::DType::F32, use_ema).map(|_| ())
        }
    });
    let report = convert_checkpoint(
        &args.input,
        &args.out,
        dtype,
        use_ema,
        verify.as_ref().map(|f| f as &VerifyFn),
    )
    .classified()
    .with_context(|| format!("converting {}", args.input.display()))?;
    if !g.quiet {
        eprintln!(
            "wrote {} ({} tensors, {:.1} MB; {} UNet; dropped {}){}",
            args.out.display(),
            report.kept,
            report.bytes as f64 / 1e6,
            if use_ema { "EMA" } else { "raw" },
            report.dropped,
            match &config {
                Some((_, origin)) => format!("; verified against {origin}"),
                None => "; not verified (no model config)".into(),
            }
        );
    }
    Ok(())
}
