//! The KL-regularised autoencoder of Latent Diffusion (`AutoencoderKL`, "KL-f8" in SDSeg), with
//! the LDM module tree and key names (`encoder.down.{i}.block.{j}.norm1`, `decoder.up.{i}...`,
//! `mid.attn_1.q`, `quant_conv`, `post_quant_conv`).
//!
//! Mirrors `ldm/modules/diffusionmodules/model.py` (`ResnetBlock`, `AttnBlock`, `Downsample`,
//! `Upsample`, `Encoder`, `Decoder`) and `ldm/models/autoencoder.py::AutoencoderKL` /
//! `ldm/modules/distributions/distributions.py::DiagonalGaussianDistribution` of the official
//! SDSeg repository (lin-tianyu/Stable-Diffusion-Seg). Every size comes from [`DdConfig`].
//!
//! Quirks kept on purpose (reference §3.2): GroupNorm has 32 groups and eps 1e-6; `Downsample`
//! pads right and bottom only, then convolves 3×3 / stride 2 / pad 0; the decoder's `up` list
//! was built with `insert(0, ..)`, so `up.0` is the highest resolution; attention is the
//! single-head `AttnBlock` whose q/k/v/proj_out are 1×1 convolutions.

use candle_core::{Module, ModuleT, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::Deserialize;

use crate::model::conv::conv2d;
use crate::model::norm::{group_norm, GroupNorm};
use sdseg_kernels::conv::Conv2d;

/// LDM `ddconfig` (the `first_stage_config.params.ddconfig` block of the YAML, and the
/// `cond_stage_config.params` of SDSeg minus `embed_dim`). Field names are the YAML's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DdConfig {
    /// The encoder's `conv_out` gives `2·z_channels` (mean and log-variance) when true.
    #[serde(default = "default_true")]
    pub double_z: bool,
    pub z_channels: usize,
    /// Input side length in pixels; attention levels are matched against it
    /// (`attn_resolutions` holds pixel sizes, e.g. 32 means "at 32×32").
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    /// Only active in training (`forward_t(.., true)`).
    #[serde(default)]
    pub dropout: f64,
    // resamp_with_conv: always true in the LDM configs; tanh_out / give_pre_end: false;
    // attn_type: "vanilla".
}

fn default_true() -> bool {
    true
}

impl DdConfig {
    /// The LDM / Stable Diffusion v1 KL-f8 autoencoder
    /// (`models/first_stage_models/kl-f8/config.yaml`, also SDSeg's first stage and condition
    /// encoder; the condition encoder's copy has `dropout: 0.2`).
    pub fn kl_f8() -> Self {
        DdConfig {
            double_z: true,
            z_channels: 4,
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![],
            dropout: 0.0,
        }
    }

    /// Spatial down-sampling factor of the latent (8 for KL-f8).
    pub fn downsample_factor(&self) -> usize {
        1 << self.ch_mult.len().saturating_sub(1)
    }

    fn check(&self) -> Result<()> {
        if self.ch_mult.is_empty() {
            candle_core::bail!("ddconfig: ch_mult must not be empty");
        }
        for &m in &self.ch_mult {
            if !(self.ch * m).is_multiple_of(NUM_GROUPS) || m == 0 {
                candle_core::bail!(
                    "ddconfig: ch {} × ch_mult {m} is not a positive multiple of {NUM_GROUPS} \
                     (GroupNorm groups)",
                    self.ch
                );
            }
        }
        Ok(())
    }
}

/// `Normalize`: GroupNorm(32, eps 1e-6, affine).
const NUM_GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

fn normalize(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    group_norm(NUM_GROUPS, channels, NORM_EPS, vb)
}

fn conv3x3(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, cfg, vb)
}

fn conv1x1(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(in_c, out_c, 1, Conv2dConfig::default(), vb)
}

fn dropout(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(&x, p as f32)
    } else {
        Ok(x)
    }
}

/// `ResnetBlock` with `temb_channels = 0` (no time embedding, as in the autoencoder).
#[derive(Clone, Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    /// 1×1 skip projection, present iff in ≠ out channels (`conv_shortcut=False` everywhere).
    nin_shortcut: Option<Conv2d>,
    dropout: f64,
}

impl ResnetBlock {
    pub fn new(in_c: usize, out_c: usize, dropout: f64, vb: VarBuilder) -> Result<Self> {
        let nin_shortcut = if in_c != out_c {
            Some(conv1x1(in_c, out_c, vb.pp("nin_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: normalize(in_c, vb.pp("norm1"))?,
            conv1: conv3x3(in_c, out_c, vb.pp("conv1"))?,
            norm2: normalize(out_c, vb.pp("norm2"))?,
            conv2: conv3x3(out_c, out_c, vb.pp("conv2"))?,
            nin_shortcut,
            dropout,
        })
    }
}

impl ModuleT for ResnetBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // `nonlinearity(norm(x))` (swish = SiLU): one fused op on the inference fast path.
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.norm2.forward_silu(&h)?;
        let h = self.conv2.forward(&dropout(h, self.dropout, train)?)?;
        match &self.nin_shortcut {
            Some(skip) => skip.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `AttnBlock`: single-head spatial self-attention with 1×1-conv projections, scale c^−½.
#[derive(Clone, Debug)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: normalize(channels, vb.pp("norm"))?,
            q: conv1x1(channels, channels, vb.pp("q"))?,
            k: conv1x1(channels, channels, vb.pp("k"))?,
            v: conv1x1(channels, channels, vb.pp("v"))?,
            proj_out: conv1x1(channels, channels, vb.pp("proj_out"))?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x)?;
        let q = self.q.forward(&hn)?.reshape((b, c, h * w))?;
        let k = self.k.forward(&hn)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&hn)?.reshape((b, c, h * w))?;
        // w[b,i,j] = softmax_j(Σ_c q[b,c,i]·k[b,c,j] · c^−½) (in f32), h[b,c,i] = Σ_j v[b,c,j]·w[b,i,j]
        let out = sdseg_kernels::attention::attention(&q, &k, &v, (c as f64).powf(-0.5))?
            .reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// `Downsample(with_conv=True)`: zero pad (left 0, right 1, top 0, bottom 1), conv 3×3 stride 2.
#[derive(Clone, Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// `Upsample(with_conv=True)`: nearest ×2, then conv 3×3 pad 1.
#[derive(Clone, Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let up = if x.track_op() {
            // Training: the broadcast form backpropagates correctly and fast (candle 0.11's
            // upsample_nearest2d backward is a grouped conv that overwrites accumulated grads).
            x.reshape((b, c, h, 1, w, 1))?
                .broadcast_as((b, c, h, 2, w, 2))?
                .reshape((b, c, 2 * h, 2 * w))?
        } else {
            x.upsample_nearest2d(2 * h, 2 * w)?
        };
        self.conv.forward(&up)
    }
}

/// One resolution level: `block.{j}`, `attn.{j}` (only when the level's resolution is listed in
/// `attn_resolutions`), and the `downsample` / `upsample` that leaves it.
#[derive(Clone, Debug)]
struct Level<R> {
    block: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    resample: Option<R>,
}

impl<R: Module> Level<R> {
    fn forward_t(&self, mut h: Tensor, train: bool) -> Result<Tensor> {
        for (j, block) in self.block.iter().enumerate() {
            h = block.forward_t(&h, train)?;
            if let Some(attn) = self.attn.get(j) {
                h = attn.forward(&h)?;
            }
        }
        match &self.resample {
            Some(r) => r.forward(&h),
            None => Ok(h),
        }
    }
}

/// `mid`: `block_1`, `attn_1`, `block_2` at the lowest resolution.
#[derive(Clone, Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(channels: usize, dropout: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(channels, channels, dropout, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(channels, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(channels, channels, dropout, vb.pp("block_2"))?,
        })
    }

    fn forward_t(&self, h: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.block_1.forward_t(h, train)?;
        let h = self.attn_1.forward(&h)?;
        self.block_2.forward_t(&h, train)
    }
}

/// LDM `Encoder`: image [B, in_channels, H, W] → [B, (2·)z_channels, H/f, W/f].
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level<Downsample>>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(cfg: &DdConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let ch = cfg.ch;
        let levels = cfg.ch_mult.len();
        let conv_in = conv3x3(cfg.in_channels, ch, vb.pp("conv_in"))?;
        let mut curr_res = cfg.resolution;
        let mut block_in = ch;
        let mut down = Vec::with_capacity(levels);
        let vb_down = vb.pp("down");
        for (i, &mult) in cfg.ch_mult.iter().enumerate() {
            let vb_l = vb_down.pp(i.to_string());
            let block_out = ch * mult;
            let mut block = Vec::with_capacity(cfg.num_res_blocks);
            let mut attn = Vec::new();
            for j in 0..cfg.num_res_blocks {
                let vb_b = vb_l.pp("block").pp(j.to_string());
                block.push(ResnetBlock::new(block_in, block_out, cfg.dropout, vb_b)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(block_in, vb_l.pp("attn").pp(j.to_string()))?);
                }
            }
            let resample = if i + 1 != levels {
                curr_res /= 2;
                Some(Downsample::new(block_in, vb_l.pp("downsample"))?)
            } else {
                None
            };
            down.push(Level {
                block,
                attn,
                resample,
            });
        }
        let mid = Mid::new(block_in, cfg.dropout, vb.pp("mid"))?;
        let z_out = if cfg.double_z {
            2 * cfg.z_channels
        } else {
            cfg.z_channels
        };
        Ok(Self {
            conv_in,
            down,
            mid,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, z_out, vb.pp("conv_out"))?,
        })
    }
}

impl ModuleT for Encoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            h = level.forward_t(h, train)?;
        }
        let h = self.mid.forward_t(&h, train)?;
        let h = self.norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

impl Encoder {
    /// Inference (eval-mode) forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

/// LDM `Decoder`: latent [B, z_channels, h, w] → image [B, out_ch, h·f, w·f]
/// (no tanh: `tanh_out=False`).
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// `up.{i}`; index 0 is the highest resolution, and the forward pass runs from the last.
    up: Vec<Level<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(cfg: &DdConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let ch = cfg.ch;
        let levels = cfg.ch_mult.len();
        let mut block_in = ch * cfg.ch_mult[levels - 1];
        let mut curr_res = cfg.resolution >> (levels - 1);
        let conv_in = conv3x3(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, cfg.dropout, vb.pp("mid"))?;
        let vb_up = vb.pp("up");
        // Built lowest resolution first, as the official loop does, then reversed so that
        // `up[i]` spells key `up.{i}` (the ModuleList was filled with insert(0, ..)).
        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let vb_l = vb_up.pp(i.to_string());
            let block_out = ch * cfg.ch_mult[i];
            let mut block = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut attn = Vec::new();
            for j in 0..cfg.num_res_blocks + 1 {
                let vb_b = vb_l.pp("block").pp(j.to_string());
                block.push(ResnetBlock::new(block_in, block_out, cfg.dropout, vb_b)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(block_in, vb_l.pp("attn").pp(j.to_string()))?);
                }
            }
            let resample = if i != 0 {
                curr_res *= 2;
                Some(Upsample::new(block_in, vb_l.pp("upsample"))?)
            } else {
                None
            };
            up.push(Level {
                block,
                attn,
                resample,
            });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.out_ch, vb.pp("conv_out"))?,
        })
    }
}

impl ModuleT for Decoder {
    fn forward_t(&self, z: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid.forward_t(&h, train)?;
        for level in self.up.iter().rev() {
            h = level.forward_t(h, train)?;
        }
        let h = self.norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

impl Decoder {
    /// Inference (eval-mode) forward pass.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.forward_t(z, false)
    }
}

/// `DiagonalGaussianDistribution`: the posterior returned by [`AutoencoderKL::encode`].
/// `logvar` is already clamped to [−30, 20], as the official constructor does.
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Split `moments` [B, 2C, h, w] into mean and log-variance along channels.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let chunks = moments.chunk(2, 1)?;
        let [mean, logvar] = <[Tensor; 2]>::try_from(chunks).map_err(|c| {
            candle_core::Error::Msg(format!(
                "DiagonalGaussian: expected 2 chunks of the moments, got {}",
                c.len()
            ))
        })?;
        Ok(Self {
            mean,
            logvar: logvar.clamp(-30f32, 20f32)?,
        })
    }

    /// exp(½·logvar).
    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// `mode()`: the mean.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// mean + std·ε for a given standard-normal ε (same shape as the mean). Differentiable.
    pub fn sample_with(&self, eps: &Tensor) -> Result<Tensor> {
        &self.mean + (self.std()? * eps)?
    }

    /// `sample()`: mean + std·ε with ε drawn from `rng` (on the host, then moved to the mean's
    /// device and dtype), so a seed reproduces a draw on any device.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Tensor> {
        let n = self.mean.elem_count();
        let eps: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let eps = Tensor::from_vec(eps, self.mean.shape(), self.mean.device())?
            .to_dtype(self.mean.dtype())?;
        self.sample_with(&eps)
    }

    /// `kl()` against the standard normal: ½·Σ_{c,h,w}(mean² + var − 1 − logvar), shape [B].
    pub fn kl(&self) -> Result<Tensor> {
        let var = self.logvar.exp()?;
        let t = ((self.mean.sqr()? + var)? - 1.0)?;
        let t = (t - &self.logvar)?;
        t.flatten_from(1)?.sum(1)? * 0.5
    }
}

/// `post_quant_conv` + `decoder`: everything `decode` needs (what inference loads).
#[derive(Clone, Debug)]
pub struct AutoencoderKLDecoder {
    post_quant_conv: Conv2d,
    decoder: Decoder,
}

impl AutoencoderKLDecoder {
    /// `vb` points at the autoencoder (e.g. `first_stage_model`); reads `post_quant_conv.*` and
    /// `decoder.*`.
    pub fn new(cfg: &DdConfig, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            post_quant_conv: conv1x1(embed_dim, cfg.z_channels, vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
        })
    }

    /// `decode(z)` = decoder(post_quant_conv(z)); z is the *unscaled* latent.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_t(z, false)
    }

    pub fn decode_t(&self, z: &Tensor, train: bool) -> Result<Tensor> {
        self.decoder
            .forward_t(&self.post_quant_conv.forward(z)?, train)
    }
}

/// LDM `AutoencoderKL` (keys `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`).
#[derive(Clone, Debug)]
pub struct AutoencoderKL {
    encoder: Encoder,
    quant_conv: Conv2d,
    dec: AutoencoderKLDecoder,
}

impl AutoencoderKL {
    pub fn new(cfg: &DdConfig, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        if !cfg.double_z {
            candle_core::bail!("AutoencoderKL needs ddconfig.double_z = true");
        }
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quant_conv: conv1x1(2 * cfg.z_channels, 2 * embed_dim, vb.pp("quant_conv"))?,
            dec: AutoencoderKLDecoder::new(cfg, embed_dim, vb)?,
        })
    }

    /// `encode(x)`: the posterior over latents of an image in [−1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.encode_t(x, false)
    }

    pub fn encode_t(&self, x: &Tensor, train: bool) -> Result<DiagonalGaussian> {
        let h = self.encoder.forward_t(x, train)?;
        DiagonalGaussian::from_moments(&self.quant_conv.forward(&h)?)
    }

    /// `decode(z)` = decoder(post_quant_conv(z)).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.dec.decode(z)
    }

    pub fn decode_t(&self, z: &Tensor, train: bool) -> Result<Tensor> {
        self.dec.decode_t(z, train)
    }

    pub fn decoder(&self) -> &AutoencoderKLDecoder {
        &self.dec
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
