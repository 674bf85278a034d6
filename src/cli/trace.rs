//! `sdseg-volume trace`: the parity harness. Runs single-step inference on given images and
//! noise and writes every intermediate (`cond_latent`, `unet_input`, `unet_output[_class{k}]`,
//! `z0_scaled`, `z0_unscaled`, `decoded`, `mask_prob`/`mask` or `logits`/`label_map`) to a
//! safetensors file, for comparison with the official PyTorch code.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use super::Globals;
use crate::error::ResultExt;
use crate::model::config::SdsegConfig;
use crate::model::device::{DTypeSpec, DeviceSpec};
use crate::model::sdseg::Sdseg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Weights: an official Lightning .ckpt or a .safetensors (e.g. from convert-checkpoint).
    #[arg(long)]
    pub weights: PathBuf,
    /// Model config JSON (LDM names) or a preset name (sdseg-binary, sdseg-cls9, sdseg-cls14).
    /// Default: <weights>.json, else config.json beside the weights.
    #[arg(long)]
    pub model_config: Option<String>,
    /// Use the raw UNet weights (model.diffusion_model.*) instead of the EMA copy.
    #[arg(long)]
    pub no_ema: bool,
    /// safetensors with `image` [B,3,256,256] f32 in [-1,1], `noise` [B or 1,4,32,32] f32 and,
    /// for class-conditioned models, optionally `class_ids` ([K] or [K,B]; default all classes).
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors with every intermediate.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N (gpu = cuda:0).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, f16, bf16 or bf16-fast (as for `run`).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: DTypeSpec,
    /// Rows (slice × class) per UNet/decoder pass; 0 = one image batch.
    #[arg(long, default_value_t = 0)]
    pub max_batch: usize,
}

/// Class ids from the input file: `[K]`, or `[K, B]` with every row constant (the fixtures'
/// layout: row k = [k, k, …]).
fn class_ids(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    let t = t.to_dtype(DType::I64)?;
    let rows: Vec<Vec<i64>> = match t.rank() {
        1 => t.to_vec1::<i64>()?.into_iter().map(|v| vec![v]).collect(),
        2 => t.to_vec2::<i64>()?,
        r => anyhow::bail!("class_ids must be [K] or [K, B], got rank {r}"),
    };
    rows.iter()
        .map(|r| {
            let v = *r.first().context("empty class_ids row")?;
            anyhow::ensure!(
                r.iter().all(|&x| x == v),
                "class_ids row {r:?} is not constant"
            );
            u32::try_from(v).context("negative class id")
        })
        .collect()
}

pub fn load_model(
    weights: &Path,
    model_config: Option<&str>,
    use_ema: bool,
    device: &Device,
    dtype: DType,
    quiet: bool,
) -> anyhow::Result<Sdseg> {
    let (config, origin) = SdsegConfig::for_weights(model_config, weights)
        .classified()?
        .with_context(|| {
            format!(
            "no model config for {}: pass --model-config (a JSON file or a preset name) or put \
             config.json beside the weights",
            weights.display()
        )
        })?;
    if !quiet {
        eprintln!("model config: {origin}");
    }
    let model = Sdseg::load(weights, &config, device, dtype, use_ema)
        .classified()
        .with_context(|| format!("loading {}", weights.display()))?;
    if !quiet {
        eprintln!(
            "weights: {} ({} UNet), scale_factor {} ({:?}), schedule {:?}",
            weights.display(),
            if use_ema { "EMA" } else { "raw" },
            model.scale_factor(),
            model.scale_factor_source(),
            model.schedule().source()
        );
    }
    Ok(model)
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let device = args.device.open().classified()?;
    let input = candle_core::safetensors::load(&args.input, &Device::Cpu).map_err(|e| {
        crate::error::InputError {
            path: args.input.clone(),
            message: format!("not a readable safetensors file: {e}"),
        }
    })?;
    let get = |k: &str| {
        input
            .get(k)
            .cloned()
            .ok_or_else(|| crate::error::InputError {
                path: args.input.clone(),
                message: format!("missing tensor `{k}`"),
            })
    };
    let image = get("image")?.to_dtype(DType::F32)?;
    let noise = get("noise")?.to_dtype(DType::F32)?;
    let model = load_model(
        &args.weights,
        args.model_config.as_deref(),
        !args.no_ema,
        &device,
        args.dtype.dtype(),
        g.quiet,
    )?
    .with_max_batch(args.max_batch);
    let model = if args.dtype.fast_bf16() {
        model.with_fast_bf16()
    } else {
        model
    };
    let classes = match input.get("class_ids") {
        Some(t) if !model.class_ids().is_empty() => {
            Some(class_ids(t).map_err(|e| crate::error::InputError {
                path: args.input.clone(),
                message: e.to_string(),
            })?)
        }
        _ => None,
    };
    let (_, trace) = model
        .trace(&image, &noise, classes.as_deref())
        .classified()?;
    let tensors: std::collections::HashMap<String, Tensor> = trace
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    write_safetensors(&args.out, &tensors)?;
    if !g.quiet {
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        eprintln!(
            "wrote {} tensors to {}: {}",
            names.len(),
            args.out.display(),
            names.join(", ")
        );
    }
    Ok(())
}

/// Save tensors atomically (temporary file in the target folder, then rename).
fn write_safetensors(
    out: &Path,
    tensors: &std::collections::HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".trace.")
        .suffix(".part")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    candle_core::safetensors::save(tensors, tmp.path())
        .with_context(|| format!("writing {}", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
