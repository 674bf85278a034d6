//! `sdseg-volume bench`: single-step throughput per stage (condition encoder, UNet, latent
//! estimate, decoder) for a preset with random weights or a given checkpoint, at one or more
//! batch sizes: ms per slice, slices/s, achieved GFLOP/s against an analytic FLOP count, and
//! peak RSS. Numbers go to stdout (a table, or one JSON object per configuration with
//! `--json`); progress goes to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::model::bench::{
    flops_per_slice, random_model, time_stages, BenchInputs, BenchResult, ModelStageTimes,
    StageFlops,
};
use crate::model::config::SdsegConfig;
use crate::model::device::{DTypeSpec, DeviceSpec};
use crate::model::sdseg::Agreement;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a preset (sdseg-binary, sdseg-cls9, sdseg-cls14) or a model config JSON.
    /// Default: the config beside --weights, else sdseg-binary.
    #[arg(long)]
    pub preset: Option<String>,
    /// Weights (.ckpt or .safetensors); default: deterministic random weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Use the raw UNet weights instead of the EMA copy (with --weights).
    #[arg(long)]
    pub no_ema: bool,
    /// Batch sizes (slices per pass), repeatable or a comma list.
    #[arg(long = "batch-size", value_delimiter = ',', default_values_t = [1usize, 4, 8])]
    pub batch_size: Vec<usize>,
    /// Noise draws per slice (`run --samples`), a comma list: the condition encoder runs once
    /// per slice, the UNet, latent estimate and decoder on every draw. With 1 in the list, a
    /// summary compares each K with K separate runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    pub samples: Vec<usize>,
    /// f32, f16, bf16 or bf16-fast (on the CPU: f32 tensors, convolutions on AMX-BF16 in split
    /// bf16, or plain bf16 for bf16-fast; f32 where the CPU has no AMX-BF16; f16 runs f32).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: DTypeSpec,
    /// cpu, cuda or cuda:N (gpu = cuda:0).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Timed iterations per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Untimed iterations before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Seed of the random weights, image and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per configuration (one per line) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// With `--dtype bf16` or `bf16-fast` on the CPU: also segment each batch's inputs with f32
    /// convolutions and report how many labels the timed run shares with that reference.
    #[arg(long)]
    pub agree: bool,
}

/// Peak resident set size of this process in MiB (`VmHWM` of /proc/self/status); None where
/// that file does not exist.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak RSS to the current RSS (Linux: `5` into /proc/self/clear_refs), so the next
/// [`peak_rss_mb`] covers only what follows. Returns false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

fn print_header(
    out: &mut impl Write,
    name: &str,
    r: &BenchResult,
    f: &StageFlops,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{name} ({} weights), {} on {}{}, {} threads, median of {} after {} warm-up",
        r.weights,
        r.dtype,
        r.device,
        r.kernel_level
            .as_deref()
            .map(|k| format!(" (conv kernels: {k})"))
            .unwrap_or_default(),
        r.threads,
        r.iters,
        r.warmup
    )?;
    writeln!(
        out,
        "GFLOP per slice: cond_encoder {:.1}, unet {:.1}, latent_estimate {:.6}, decoder {:.1}, total {:.1}",
        f.cond_encoder / 1e9,
        f.unet / 1e9,
        f.latent_estimate / 1e9,
        f.decoder / 1e9,
        f.total() / 1e9
    )?;
    writeln!(
        out,
        "{:>5}  {:>22}  {:>22}  {:>22}  {:>22}  {:>22}  {:>9}  {:>9}",
        "batch",
        "cond_encoder ms (GF/s)",
        "unet ms (GF/s)",
        "latent_est ms (GF/s)",
        "decoder ms (GF/s)",
        "total ms/slice (GF/s)",
        "slices/s",
        "peak MiB"
    )
}

fn print_row(out: &mut impl Write, r: &BenchResult) -> std::io::Result<()> {
    let batch = if r.samples > 1 {
        format!("{}x{}", r.batch_size, r.samples)
    } else {
        r.batch_size.to_string()
    };
    let m = &r.ms_per_slice;
    let g = &r.gflops_per_s;
    let cell = |ms: f64, gf: f64| format!("{} ({gf:.1})", fmt_ms(ms));
    let rss = r
        .peak_rss_mb
        .map(|v| format!("{v:.0}"))
        .unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "{:>5}  {:>22}  {:>22}  {:>22}  {:>22}  {:>22}  {:>9.3}  {:>9}",
        batch,
        cell(m.cond_encoder, g.cond_encoder),
        cell(m.unet, g.unet),
        cell(m.latent_estimate, g.latent_estimate),
        cell(m.decoder, g.decoder),
        cell(m.total, g.total),
        r.slices_per_s,
        rss
    )
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    if args.batch_size.is_empty() || args.batch_size.contains(&0) {
        return Err(UsageError(format!(
            "--batch-size must be positive, got {:?}",
            args.batch_size
        ))
        .into());
    }
    if args.iters == 0 {
        return Err(UsageError("--iters must be at least 1".into()).into());
    }
    let device = args.device.open().classified()?;
    let (dtype_spec, dtype_warning) = args.dtype.for_device(args.device);
    if let Some(w) = dtype_warning {
        eprintln!("warning: {w}");
    }
    let dtype = dtype_spec.dtype();
    let quiet = g.quiet;

    let (model, name, weights) = match &args.weights {
        Some(w) => {
            let model = super::trace::load_model(
                w,
                args.preset.as_deref(),
                !args.no_ema,
                &device,
                dtype,
                quiet,
            )?;
            let name = args.preset.clone().unwrap_or_else(|| {
                SdsegConfig::find_beside(w)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            });
            (model, name, w.display().to_string())
        }
        None => {
            let name = args.preset.as_deref().unwrap_or("sdseg-binary");
            let config = SdsegConfig::from_arg(name).classified()?;
            if !quiet {
                eprintln!(
                    "bench: building {name} with random weights (seed {})",
                    args.seed
                );
            }
            let model = random_model(&config, args.seed, &device, dtype)
                .classified()
                .with_context(|| format!("building {name} with random weights"))?;
            (model, name.to_owned(), "random".to_owned())
        }
    };
    let mut model = if args.dtype.fast_bf16() {
        model.with_fast_bf16()
    } else {
        model
    };
    if let Some(w) = model.bf16_fallback_warning(&args.dtype.to_string()) {
        eprintln!("warning: {w}");
    }
    let side = model.config().image_size();
    let flops = flops_per_slice(model.config(), side);

    if args.samples.is_empty() || args.samples.contains(&0) {
        return Err(UsageError(format!(
            "--samples must be positive, got {:?}",
            args.samples
        ))
        .into());
    }
    let mut stdout = std::io::stdout().lock();
    let mut header_done = false;
    let mut by_draws: Vec<(usize, usize, ModelStageTimes)> = Vec::new();
    let configs: Vec<(usize, usize)> = args
        .batch_size
        .iter()
        .flat_map(|&b| args.samples.iter().map(move |&k| (b, k)))
        .collect();
    for (batch, draws) in configs {
        let flops = scaled_flops(&flops, draws);
        let can_reset = reset_peak_rss();
        let inputs = BenchInputs::with_draws(&model, batch, draws, args.seed).classified()?;
        let mut runs = Vec::with_capacity(args.iters);
        for i in 0..args.warmup + args.iters {
            let warm = i < args.warmup;
            let t = time_stages(&model, &inputs)
                .classified()
                .with_context(|| format!("running {name} at batch {batch}"))?;
            if !quiet {
                let what = if warm {
                    format!("warm-up {}/{}", i + 1, args.warmup)
                } else {
                    format!("iter {}/{}", i + 1 - args.warmup, args.iters)
                };
                eprintln!(
                    "bench: batch {batch} samples {draws} {what}: {:.3} s (cond {:.3}, unet {:.3}, latent {:.4}, decoder {:.3})",
                    t.total(),
                    t.cond_encoder,
                    t.unet,
                    t.latent_estimate,
                    t.decoder
                );
            }
            if !warm {
                runs.push(t);
            }
        }
        let median = ModelStageTimes::median(&runs);
        by_draws.push((batch, draws, median));
        let (ms, gf, gps, sps) = BenchResult::from_times(batch, &median, &flops);
        let result = BenchResult {
            preset: name.clone(),
            weights: weights.clone(),
            batch_size: batch,
            samples: draws,
            kernel_level: model.cpu_kernel_level(),
            dtype: dtype_spec.to_string(),
            device: args.device.to_string(),
            threads: rayon::current_num_threads(),
            iters: args.iters,
            warmup: args.warmup,
            ms_per_slice: ms,
            slices_per_s: sps,
            gflop_per_slice: gf,
            gflops_per_s: gps,
            peak_rss_mb: peak_rss_mb(),
        };
        if !can_reset && !quiet && !header_done {
            eprintln!("bench: cannot reset the peak RSS; it is the process-lifetime peak");
        }
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
        } else {
            if !header_done {
                print_header(&mut stdout, &name, &result, &flops)?;
            }
            print_row(&mut stdout, &result)?;
        }
        header_done = true;
        stdout.flush()?;
        if args.agree && draws > 1 {
            continue;
        }
        if args.agree && model.cpu_precision().is_none() {
            eprintln!(
                "bench: --agree compares CPU bf16 convolutions with f32; --dtype {} on {} has none",
                args.dtype, args.device
            );
        } else if args.agree {
            let a = agreement_with_f32(&mut model, &inputs)?;
            let line = format!(
                "agreement with f32 convs, batch {batch}: {} of {} labels equal ({:.4} %), \
                 max |score diff| {:.3e}, flips where f32 had a margin >= 1e-2: {}",
                a.equal,
                a.total,
                100.0 * a.fraction(),
                a.max_score_diff,
                a.clear_flips
            );
            if args.json {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({ "batch_size": batch, "agreement": a })
                )?;
            } else {
                writeln!(stdout, "{line}")?;
            }
        }
    }
    if !args.json {
        for line in draws_summary(&by_draws) {
            writeln!(stdout, "{line}")?;
        }
    }
    Ok(())
}

/// FLOPs per input slice with `draws` noise draws: the condition encoder once, the rest per
/// draw.
fn scaled_flops(f: &StageFlops, draws: usize) -> StageFlops {
    let k = draws as f64;
    StageFlops {
        cond_encoder: f.cond_encoder,
        unet: k * f.unet,
        latent_estimate: k * f.latent_estimate,
        decoder: k * f.decoder,
    }
}

/// For each batch size measured with one draw and with K: the cost of K draws against K
/// separate runs, and the extra cost of each draw against one draw's UNet + latent estimate
/// + decoder (what a draw must at most add when the condition encoder is not run again).
pub fn draws_summary(runs: &[(usize, usize, ModelStageTimes)]) -> Vec<String> {
    let mut out = Vec::new();
    for &(batch, k, t) in runs {
        let Some(&(_, _, one)) = runs.iter().find(|r| r.0 == batch && r.1 == 1) else {
            continue;
        };
        if k == 1 {
            continue;
        }
        let per_draw_share = one.unet + one.latent_estimate + one.decoder;
        let extra = (t.total() - one.total()) / (k - 1) as f64;
        out.push(format!(
            "samples {k}, batch {batch}: {:.0} ms/slice = {:.2}x one draw, {:.2} of {k} separate runs; \
             each extra draw {:.0} ms/slice (one draw's UNet + latent + decoder: {:.0} ms/slice, ratio {:.2})",
            1e3 * t.total() / batch as f64,
            t.total() / one.total(),
            t.total() / (k as f64 * one.total()),
            1e3 * extra / batch as f64,
            1e3 * per_draw_share / batch as f64,
            extra / per_draw_share
        ));
    }
    out
}

/// Labels of the timed configuration against the same model with f32 convolutions.
fn agreement_with_f32(
    model: &mut crate::model::sdseg::Sdseg,
    inputs: &BenchInputs,
) -> anyhow::Result<Agreement> {
    let run = model
        .segment(&inputs.image, &inputs.noise, None)
        .classified()?;
    let precision = model.cpu_precision();
    model.set_cpu_precision(None);
    let reference = model.segment(&inputs.image, &inputs.noise, None);
    model.set_cpu_precision(precision);
    Agreement::of(&run, &reference.classified()?).classified()
}
