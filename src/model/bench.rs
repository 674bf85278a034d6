//! The instrument behind `sdseg-volume bench`: deterministic random weights for any
//! [`SdsegConfig`], an analytic FLOP count per stage walked from the same config the model is
//! built from, per-stage timing of one single-step batch, and the process's peak memory.
//!
//! FLOPs count multiply-adds as 2: every convolution (2·Cin·Cout·k²·Hout·Wout / groups), every
//! linear layer, and the two attention matmuls (QKᵀ and AV, 2·T²·C each over all heads).
//! Norms, activations, resampling and additions are not counted (they are a few FLOPs per
//! element; the convolutions are ≥ 99 %). The latent estimate is counted as its 4 FLOPs per
//! latent element so that its rate is defined; it is memory-bound.

use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::Serialize;

use crate::model::checkpoint::ModelError;
use crate::model::config::{SdsegConfig, Task};
use crate::model::sdseg::{standard_normal, Sdseg};
use crate::model::unet::UNetConfig;
use crate::model::vae::DdConfig;

// ---------------------------------------------------------------------------------------------
// Random weights

/// A `VarBuilder` backend that invents every tensor it is asked for: deterministic (a function
/// of the seed, the tensor's full name and its shape only), scaled like PyTorch's default
/// initialisation so that activations stay in a realistic range (no overflow, no denormals).
///
/// - `Init::Const(c)`, c ≠ 0 (GroupNorm weights): the constant.
/// - `Init::Const(0)` (what `VarBuilder::get` passes, i.e. conv weights and biases, GroupNorm
///   biases): rank ≥ 2 → U(±1/√fan_in) (`kaiming_uniform_(a=√5)` of `nn.Conv2d`/`nn.Linear`),
///   rank 1 → U(±0.02).
/// - `Uniform`, `Randn`, `Kaiming`: as candle defines them, from our seeded generator.
#[derive(Clone, Copy, Debug)]
pub struct RandomWeights {
    pub seed: u64,
}

/// Values per independently seeded chunk (generation runs in parallel over chunks, and the
/// result does not depend on the thread count).
const CHUNK: usize = 1 << 16;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Clone, Copy)]
enum Dist {
    Const(f32),
    Uniform(f32, f32),
    Normal(f32, f32),
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// A root `VarBuilder` over this backend (SDSeg key layout: `cond_stage_model.*`,
    /// `first_stage_model.*`, `model.diffusion_model.*`).
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn dist(shape: &Shape, h: Init) -> Dist {
        match h {
            Init::Const(c) if c != 0.0 => Dist::Const(c as f32),
            Init::Const(_) => {
                if shape.rank() >= 2 {
                    let fan = FanInOut::FanIn.for_shape(shape).max(1) as f32;
                    let b = 1.0 / fan.sqrt();
                    Dist::Uniform(-b, b)
                } else {
                    Dist::Uniform(-0.02, 0.02)
                }
            }
            Init::Uniform { lo, up } => Dist::Uniform(lo as f32, up as f32),
            Init::Randn { mean, stdev } => Dist::Normal(mean as f32, stdev as f32),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = fan.for_shape(shape).max(1) as f64;
                let std = non_linearity.gain() / fan.sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let b = (3f64.sqrt() * std) as f32;
                        Dist::Uniform(-b, b)
                    }
                    NormalOrUniform::Normal => Dist::Normal(0.0, std as f32),
                }
            }
        }
    }

    fn values(&self, name: &str, n: usize, dist: Dist) -> Vec<f32> {
        let mut v = vec![0f32; n];
        let key = fnv1a(name) ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(key);
            rng.set_stream(i as u64);
            match dist {
                Dist::Const(c) => chunk.fill(c),
                Dist::Uniform(lo, up) => {
                    for x in chunk {
                        *x = lo + (up - lo) * rng.random::<f32>();
                    }
                }
                Dist::Normal(m, s) => {
                    for x in chunk {
                        *x = m + s * rng.sample::<f32, _>(StandardNormal);
                    }
                }
            }
        });
        v
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dist = Self::dist(&s, h);
        let v = self.values(name, s.elem_count(), dist);
        Tensor::from_vec(v, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: the shape of {name} must be given")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The model of `config` with [`RandomWeights`] (UNet under `model.diffusion_model`).
pub fn random_model(
    config: &SdsegConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Sdseg, ModelError> {
    let storage = crate::model::sdseg::storage_dtype(device, dtype);
    let vb = RandomWeights::new(seed).var_builder(storage, device);
    let unet_vb = vb.pp("model").pp("diffusion_model");
    Sdseg::from_var_builders(config, vb, unet_vb, device, dtype)
}

// ---------------------------------------------------------------------------------------------
// FLOP counting

/// FLOPs (multiply-add = 2) per slice for each stage. For a multi-class model the UNet, the
/// latent estimate and the decoder run once per class, and are counted so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageFlops {
    pub cond_encoder: f64,
    pub unet: f64,
    pub latent_estimate: f64,
    pub decoder: f64,
}

impl StageFlops {
    pub fn total(&self) -> f64 {
        self.cond_encoder + self.unet + self.latent_estimate + self.decoder
    }
}

/// Running sum of FLOPs.
#[derive(Default)]
struct Counter(f64);

impl Counter {
    /// k×k convolution, `groups` = 1, producing an `ho`×`wo` map.
    fn conv(&mut self, cin: usize, cout: usize, k: usize, ho: usize, wo: usize) {
        self.0 += 2.0 * (cin * cout * k * k) as f64 * (ho * wo) as f64;
    }
    fn linear(&mut self, fin: usize, fout: usize) {
        self.0 += 2.0 * (fin * fout) as f64;
    }
    /// QKᵀ and AV over `t` positions with `c` channels in total (heads do not change it).
    fn attn_matmuls(&mut self, c: usize, t: usize) {
        self.0 += 2.0 * 2.0 * (t * t) as f64 * c as f64;
    }
}

/// LDM `ResnetBlock` (no time embedding) at `h`×`w`.
fn vae_resblock(f: &mut Counter, cin: usize, cout: usize, h: usize, w: usize) {
    f.conv(cin, cout, 3, h, w);
    f.conv(cout, cout, 3, h, w);
    if cin != cout {
        f.conv(cin, cout, 1, h, w);
    }
}

/// LDM `AttnBlock`: q, k, v, proj_out 1×1 convs + the two matmuls.
fn vae_attn(f: &mut Counter, c: usize, h: usize, w: usize) {
    for _ in 0..4 {
        f.conv(c, c, 1, h, w);
    }
    f.attn_matmuls(c, h * w);
}

/// LDM `Encoder` of an `h`×`w` image; returns (FLOPs, output channels, out h, out w).
fn vae_encoder(dd: &DdConfig, h: usize, w: usize) -> (f64, usize, usize, usize) {
    let mut f = Counter::default();
    let (mut h, mut w) = (h, w);
    let mut curr_res = dd.resolution;
    f.conv(dd.in_channels, dd.ch, 3, h, w);
    let mut block_in = dd.ch;
    let levels = dd.ch_mult.len();
    for (i, &mult) in dd.ch_mult.iter().enumerate() {
        let block_out = dd.ch * mult;
        for _ in 0..dd.num_res_blocks {
            vae_resblock(&mut f, block_in, block_out, h, w);
            block_in = block_out;
            if dd.attn_resolutions.contains(&curr_res) {
                vae_attn(&mut f, block_in, h, w);
            }
        }
        if i + 1 != levels {
            // pad (0,1,0,1), 3×3 stride 2, no padding: ((h + 1) − 3)/2 + 1 = h/2 for even h.
            (h, w) = ((h + 1 - 3) / 2 + 1, (w + 1 - 3) / 2 + 1);
            f.conv(block_in, block_in, 3, h, w);
            curr_res /= 2;
        }
    }
    vae_resblock(&mut f, block_in, block_in, h, w);
    vae_attn(&mut f, block_in, h, w);
    vae_resblock(&mut f, block_in, block_in, h, w);
    let z = if dd.double_z {
        2 * dd.z_channels
    } else {
        dd.z_channels
    };
    f.conv(block_in, z, 3, h, w);
    (f.0, z, h, w)
}

/// `post_quant_conv` + LDM `Decoder` of an `h`×`w` latent with `embed_dim` channels.
fn vae_decoder(dd: &DdConfig, embed_dim: usize, h: usize, w: usize) -> f64 {
    let mut f = Counter::default();
    let (mut h, mut w) = (h, w);
    let levels = dd.ch_mult.len();
    f.conv(embed_dim, dd.z_channels, 1, h, w);
    let mut block_in = dd.ch * dd.ch_mult[levels - 1];
    let mut curr_res = dd.resolution >> (levels - 1);
    f.conv(dd.z_channels, block_in, 3, h, w);
    vae_resblock(&mut f, block_in, block_in, h, w);
    vae_attn(&mut f, block_in, h, w);
    vae_resblock(&mut f, block_in, block_in, h, w);
    for i in (0..levels).rev() {
        let block_out = dd.ch * dd.ch_mult[i];
        for _ in 0..dd.num_res_blocks + 1 {
            vae_resblock(&mut f, block_in, block_out, h, w);
            block_in = block_out;
            if dd.attn_resolutions.contains(&curr_res) {
                vae_attn(&mut f, block_in, h, w);
            }
        }
        if i != 0 {
            (h, w) = (2 * h, 2 * w);
            f.conv(block_in, block_in, 3, h, w);
            curr_res *= 2;
        }
    }
    f.conv(block_in, dd.out_ch, 3, h, w);
    f.0
}

/// Heads do not change the FLOPs of `AttentionBlock`; only channels and positions do.
fn unet_attn(f: &mut Counter, c: usize, h: usize, w: usize) {
    f.conv(c, 3 * c, 1, h, w);
    f.attn_matmuls(c, h * w);
    f.conv(c, c, 1, h, w);
}

#[derive(Clone, Copy, PartialEq)]
enum Resample {
    None,
    Up,
    Down,
}

/// UNet `ResBlock` whose input is `h`×`w`; returns the output size.
fn unet_resblock(
    f: &mut Counter,
    cfg: &UNetConfig,
    cin: usize,
    cout: usize,
    (h, w): (usize, usize),
    rs: Resample,
) -> (usize, usize) {
    let (h, w) = match rs {
        Resample::None => (h, w),
        Resample::Up => (2 * h, 2 * w),
        Resample::Down => (h / 2, w / 2),
    };
    f.conv(cin, cout, 3, h, w);
    let emb_out = if cfg.use_scale_shift_norm {
        2 * cout
    } else {
        cout
    };
    f.linear(cfg.time_embed_dim(), emb_out);
    f.conv(cout, cout, 3, h, w);
    if cin != cout {
        f.conv(cin, cout, 1, h, w);
    }
    (h, w)
}

/// One ε̂ evaluation of the UNet on an `h`×`w` latent, with the time embedding precomputed (as
/// [`Sdseg::eps`] does: the `time_embed` MLP is not run per slice).
fn unet(cfg: &UNetConfig, h: usize, w: usize) -> f64 {
    let mut f = Counter::default();
    let mc = cfg.model_channels;
    let mut hw = (h, w);
    f.conv(cfg.in_channels, mc, 3, h, w);
    let mut skip = vec![mc];
    let mut ch = mc;
    let mut ds = 1usize;
    let levels = cfg.channel_mult.len();
    for (level, &mult) in cfg.channel_mult.iter().enumerate() {
        for _ in 0..cfg.num_res_blocks {
            hw = unet_resblock(&mut f, cfg, ch, mult * mc, hw, Resample::None);
            ch = mult * mc;
            if cfg.attention_resolutions.contains(&ds) {
                unet_attn(&mut f, ch, hw.0, hw.1);
            }
            skip.push(ch);
        }
        if level != levels - 1 {
            if cfg.resblock_updown {
                hw = unet_resblock(&mut f, cfg, ch, ch, hw, Resample::Down);
            } else {
                hw = (hw.0 / 2, hw.1 / 2);
                if cfg.conv_resample {
                    f.conv(ch, ch, 3, hw.0, hw.1);
                }
            }
            skip.push(ch);
            ds *= 2;
        }
    }
    hw = unet_resblock(&mut f, cfg, ch, ch, hw, Resample::None);
    unet_attn(&mut f, ch, hw.0, hw.1);
    hw = unet_resblock(&mut f, cfg, ch, ch, hw, Resample::None);
    for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
        for i in 0..=cfg.num_res_blocks {
            let ich = skip.pop().unwrap_or(0);
            hw = unet_resblock(&mut f, cfg, ch + ich, mc * mult, hw, Resample::None);
            ch = mc * mult;
            if cfg.attention_resolutions.contains(&ds) {
                unet_attn(&mut f, ch, hw.0, hw.1);
            }
            if level != 0 && i == cfg.num_res_blocks {
                if cfg.resblock_updown {
                    hw = unet_resblock(&mut f, cfg, ch, ch, hw, Resample::Up);
                } else {
                    hw = (2 * hw.0, 2 * hw.1);
                    if cfg.conv_resample {
                        f.conv(ch, ch, 3, hw.0, hw.1);
                    }
                }
                ds /= 2;
            }
        }
    }
    f.conv(mc, cfg.out_channels, 3, hw.0, hw.1);
    f.0
}

/// FLOPs per slice of each stage for `image_side`×`image_side` inputs (the config's
/// `resolution`, 256, in SDSeg).
pub fn flops_per_slice(config: &SdsegConfig, image_side: usize) -> StageFlops {
    let cond = config.cond_stage();
    let (enc, z, lh, lw) = vae_encoder(&cond.ddconfig, image_side, image_side);
    let mut c = Counter(enc);
    c.conv(z, cond.embed_dim, 1, lh, lw);
    let passes = match config.task() {
        Task::Binary => 1.0,
        Task::MultiClass { num_classes } => num_classes as f64,
    };
    let fs = config.first_stage();
    StageFlops {
        cond_encoder: c.0,
        unet: passes * unet(config.unet(), lh, lw),
        latent_estimate: passes * 4.0 * (cond.embed_dim * lh * lw) as f64,
        decoder: passes * vae_decoder(&fs.ddconfig, fs.embed_dim, lh, lw),
    }
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Seconds per stage for one batch (whole batch, all classes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ModelStageTimes {
    pub cond_encoder: f64,
    pub unet: f64,
    pub latent_estimate: f64,
    pub decoder: f64,
}

impl ModelStageTimes {
    pub fn total(&self) -> f64 {
        self.cond_encoder + self.unet + self.latent_estimate + self.decoder
    }

    fn get(&self, i: usize) -> f64 {
        [
            self.cond_encoder,
            self.unet,
            self.latent_estimate,
            self.decoder,
        ][i]
    }

    /// The per-stage median of `runs` (empty → zeros).
    pub fn median(runs: &[ModelStageTimes]) -> ModelStageTimes {
        let med = |i: usize| {
            let mut v: Vec<f64> = runs.iter().map(|r| r.get(i)).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
            }
        };
        ModelStageTimes {
            cond_encoder: med(0),
            unet: med(1),
            latent_estimate: med(2),
            decoder: med(3),
        }
    }
}

/// The fixed inputs of a batch: `image` [B, C, H, W] uniform in [−1, 1], `noise`
/// [B, c, h, w] standard normal (one shared draw, as the official evaluation), both in the
/// model's dtype on its device.
#[derive(Clone, Debug)]
pub struct BenchInputs {
    pub image: Tensor,
    /// [draws·B, c, h, w], draw-major (`run --samples`).
    pub noise: Tensor,
    /// Noise draws per slice (1 = the official single draw).
    pub draws: usize,
}

impl BenchInputs {
    pub fn new(model: &Sdseg, batch: usize, seed: u64) -> Result<Self, ModelError> {
        Self::with_draws(model, batch, 1, seed)
    }

    /// `draws` noise latents per slice (draw d = stream d of the seed), as `run --samples`.
    pub fn with_draws(
        model: &Sdseg,
        batch: usize,
        draws: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let mut inputs = Self::single(model, batch, seed)?;
        if draws > 1 {
            let [lc, lh, lw] = model.latent_shape();
            let mut rows = vec![inputs.noise.clone()];
            for d in 1..draws {
                let one = Tensor::from_vec(
                    standard_normal(seed, d as u64, lc * lh * lw),
                    (1, lc, lh, lw),
                    &Device::Cpu,
                )?;
                rows.push(
                    one.broadcast_as((batch, lc, lh, lw))?
                        .contiguous()?
                        .to_dtype(model.dtype())?
                        .to_device(model.device())?,
                );
            }
            inputs.noise = Tensor::cat(&rows, 0)?;
            inputs.draws = draws;
        }
        Ok(inputs)
    }

    fn single(model: &Sdseg, batch: usize, seed: u64) -> Result<Self, ModelError> {
        let cfg = model.config();
        let side = cfg.image_size();
        let c = cfg.cond_stage().ddconfig.in_channels;
        let n = batch * c * side * side;
        let img = RandomWeights::new(seed).values("bench.image", n, Dist::Uniform(-1.0, 1.0));
        let image = Tensor::from_vec(img, (batch, c, side, side), &Device::Cpu)?
            .to_dtype(model.dtype())?
            .to_device(model.device())?;
        let [lc, lh, lw] = model.latent_shape();
        let one = Tensor::from_vec(
            standard_normal(seed, 0, lc * lh * lw),
            (1, lc, lh, lw),
            &Device::Cpu,
        )?;
        let noise = one
            .broadcast_as((batch, lc, lh, lw))?
            .contiguous()?
            .to_dtype(model.dtype())?
            .to_device(model.device())?;
        Ok(Self {
            image,
            noise,
            draws: 1,
        })
    }
}

/// One timed single-step pass over a batch, stage by stage, the way [`Sdseg::segment`] runs
/// it: condition latent of the B slices; then per class (one pass for binary) ε̂ of the B rows,
/// the latent estimate and the decoder. The device is synchronised around every stage.
pub fn time_stages(model: &Sdseg, inputs: &BenchInputs) -> Result<ModelStageTimes, ModelError> {
    let dev = model.device();
    let mut t = ModelStageTimes::default();
    let b = inputs.image.dim(0)?;
    let sync = || dev.synchronize();

    sync()?;
    let start = Instant::now();
    let cond = model.cond_latent(&inputs.image)?;
    sync()?;
    t.cond_encoder = start.elapsed().as_secs_f64();
    // The draws of a slice share its condition latent (one encoder pass, as `run --samples`).
    let b = b * inputs.draws;
    let cond = if inputs.draws > 1 {
        Tensor::cat(&vec![&cond; inputs.draws], 0)?
    } else {
        cond
    };

    let classes: Vec<Option<u32>> = match model.task() {
        Task::Binary => vec![None],
        Task::MultiClass { .. } => model.class_ids().into_iter().map(Some).collect(),
    };
    for class in classes {
        let start = Instant::now();
        let x = Tensor::cat(&[&inputs.noise, &cond], 1)?;
        let y = class
            .map(|k| Tensor::new(vec![k; b].as_slice(), dev))
            .transpose()?;
        let eps = model.eps(&x, y.as_ref())?;
        sync()?;
        t.unet += start.elapsed().as_secs_f64();

        let start = Instant::now();
        let z0 = model.estimate_z0(&inputs.noise, &eps, true)?;
        sync()?;
        t.latent_estimate += start.elapsed().as_secs_f64();

        let start = Instant::now();
        let dec = model.decode(&z0)?;
        sync()?;
        t.decoder += start.elapsed().as_secs_f64();
        drop(dec);
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Results

/// Milliseconds per slice per stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MsPerSlice {
    pub cond_encoder: f64,
    pub unet: f64,
    pub latent_estimate: f64,
    pub decoder: f64,
    pub total: f64,
}

/// Achieved GFLOP/s per stage (FLOPs per slice ÷ time per slice).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GflopsPerS {
    pub cond_encoder: f64,
    pub unet: f64,
    pub latent_estimate: f64,
    pub decoder: f64,
    pub total: f64,
}

/// GFLOP per slice per stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GflopPerSlice {
    pub cond_encoder: f64,
    pub unet: f64,
    pub latent_estimate: f64,
    pub decoder: f64,
    pub total: f64,
}

/// One configuration's result (`bench --json` prints one per line).
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub preset: String,
    /// "random" or the weights file.
    pub weights: String,
    pub batch_size: usize,
    /// Noise draws per slice (`--samples`); per-slice figures count all draws of a slice.
    pub samples: usize,
    /// The CPU conv kernel level that ran (`amx-bf16`, `avx512-bf16`, `avx512`, `avx2`,
    /// `candle`; `null` on a GPU).
    pub kernel_level: Option<String>,
    pub dtype: String,
    pub device: String,
    /// Rayon threads (CPU work).
    pub threads: usize,
    pub iters: usize,
    pub warmup: usize,
    pub ms_per_slice: MsPerSlice,
    pub slices_per_s: f64,
    pub gflop_per_slice: GflopPerSlice,
    pub gflops_per_s: GflopsPerS,
    /// Peak RSS in MiB over this configuration (model weights included), filled in by the
    /// caller (`bench` reads /proc/self/status); None where unknown.
    pub peak_rss_mb: Option<f64>,
}

impl BenchResult {
    /// Per-slice figures from the median batch times of `batch` slices.
    pub fn from_times(
        batch: usize,
        median: &ModelStageTimes,
        flops: &StageFlops,
    ) -> (MsPerSlice, GflopPerSlice, GflopsPerS, f64) {
        let per = |s: f64| 1e3 * s / batch as f64;
        let ms = MsPerSlice {
            cond_encoder: per(median.cond_encoder),
            unet: per(median.unet),
            latent_estimate: per(median.latent_estimate),
            decoder: per(median.decoder),
            total: per(median.total()),
        };
        let rate = |f: f64, ms: f64| if ms > 0.0 { f / (ms * 1e6) } else { 0.0 };
        let g = GflopsPerS {
            cond_encoder: rate(flops.cond_encoder, ms.cond_encoder),
            unet: rate(flops.unet, ms.unet),
            latent_estimate: rate(flops.latent_estimate, ms.latent_estimate),
            decoder: rate(flops.decoder, ms.decoder),
            total: rate(flops.total(), ms.total),
        };
        let gf = GflopPerSlice {
            cond_encoder: flops.cond_encoder / 1e9,
            unet: flops.unet / 1e9,
            latent_estimate: flops.latent_estimate / 1e9,
            decoder: flops.decoder / 1e9,
            total: flops.total() / 1e9,
        };
        let sps = if ms.total > 0.0 { 1e3 / ms.total } else { 0.0 };
        (ms, gf, g, sps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_binary_flops_match_the_official_count() {
        // Counted on the official PyTorch code (issue 7): 272.7 / 41.9 / 622.2 GFLOP.
        let cfg = SdsegConfig::preset("sdseg-binary").unwrap();
        let f = flops_per_slice(&cfg, 256);
        println!("sdseg-binary GFLOP per slice: {:?}", f);
        let close = |got: f64, want: f64| (got / 1e9 - want).abs() <= 0.03 * want;
        assert!(close(f.cond_encoder, 272.7), "{f:?}");
        assert!(close(f.unet, 41.9), "{f:?}");
        assert!(close(f.decoder, 622.2), "{f:?}");
        assert!(close(f.total(), 936.8), "{f:?}");
    }

    #[test]
    fn multiclass_counts_every_class_pass() {
        let bin = flops_per_slice(&SdsegConfig::preset("sdseg-binary").unwrap(), 256);
        let c9 = flops_per_slice(&SdsegConfig::preset("sdseg-cls9").unwrap(), 256);
        assert_eq!(c9.cond_encoder, bin.cond_encoder);
        assert!((c9.decoder - 9.0 * bin.decoder).abs() < 1.0);
        // Same UNet FLOPs per pass (label_emb is a lookup).
        assert!((c9.unet - 9.0 * bin.unet).abs() < 1.0);
    }

    #[test]
    fn random_weights_are_deterministic_and_scaled() {
        let dev = Device::Cpu;
        let vb = RandomWeights::new(3).var_builder(DType::F32, &dev);
        let a = vb.get((64, 32, 3, 3), "x.weight").unwrap();
        let b = vb.get((64, 32, 3, 3), "x.weight").unwrap();
        let c = vb.get((64, 32, 3, 3), "y.weight").unwrap();
        let va = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let bound = 1.0 / (32.0f32 * 9.0).sqrt();
        assert!(va.iter().all(|x| x.abs() <= bound));
        assert!(va.iter().any(|x| x.abs() > 0.5 * bound));
        let ones = vb
            .get_with_hints(8, "n.weight", Init::Const(1.0))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ones, vec![1.0; 8]);
    }

    #[test]
    fn median_per_stage() {
        let t = |x: f64| ModelStageTimes {
            cond_encoder: x,
            unet: 2.0 * x,
            latent_estimate: 0.0,
            decoder: 10.0 - x,
        };
        let m = ModelStageTimes::median(&[t(1.0), t(5.0), t(3.0)]);
        assert_eq!(m, t(3.0));
        let m = ModelStageTimes::median(&[t(1.0), t(3.0)]);
        assert_eq!(m.cond_encoder, 2.0);
    }
}
