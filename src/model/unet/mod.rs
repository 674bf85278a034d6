//! The denoising UNet of Latent Diffusion (`UNetModel` in
//! `ldm/modules/diffusionmodules/openaimodel.py` of lin-tianyu/Stable-Diffusion-Seg), with the
//! LDM module tree as checkpoint keys: `time_embed.{0,2}`, `label_emb`,
//! `input_blocks.{i}.{j}`, `middle_block.{0,1,2}`, `output_blocks.{i}.{j}`, `out.{0,2}`.
//!
//! Everything is built from [`UNetConfig`] exactly as `UNetModel.__init__` builds it (level
//! loop, skip-channel stack, head-count rules including the `legacy` quirks), so any
//! `channel_mult`, `num_res_blocks`, `attention_resolutions`, `num_heads` /
//! `num_head_channels` works. Only the parts SDSeg can use are supported: 2-D, no
//! `SpatialTransformer`/context, no codebook head (`n_embed`).

mod attention;
mod resblock;

pub use attention::{AttentionBlock, QkvOrder};
pub use resblock::{Downsample, ResBlock, UpDown, Upsample};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Embedding, Init, Linear, VarBuilder};
use serde::Deserialize;

use crate::model::conv::conv2d;
use sdseg_kernels::conv::Conv2d;
use sdseg_kernels::ops;

/// `unet_config.params` of the LDM YAML. Defaults are `UNetModel.__init__`'s.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UNetConfig {
    /// Latent side length (informative; the network is fully convolutional).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// 2·latent channels in SDSeg (noise and condition concatenated).
    pub in_channels: usize,
    pub model_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    /// Down-sampling factors (1, 2, 4, …) at which the levels get an `AttentionBlock`.
    pub attention_resolutions: Vec<usize>,
    /// Training only.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_channel_mult")]
    pub channel_mult: Vec<usize>,
    /// Learned convs in `Downsample`/`Upsample` (unused when `resblock_updown`).
    #[serde(default = "default_true")]
    pub conv_resample: bool,
    #[serde(default = "default_dims")]
    pub dims: usize,
    /// Some(K): class-conditional, `label_emb = nn.Embedding(K, 4·model_channels)`.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// −1 means "use `num_head_channels`".
    #[serde(default = "minus_one")]
    pub num_heads: i64,
    /// −1 means "use `num_heads`"; otherwise heads = channels / num_head_channels.
    #[serde(default = "minus_one")]
    pub num_head_channels: i64,
    /// Heads of the decoder-side attention when `num_head_channels` is −1 (−1: `num_heads`).
    #[serde(default = "minus_one")]
    pub num_heads_upsample: i64,
    /// FiLM-style `GN(h)·(1 + scale) + shift` in every ResBlock.
    #[serde(default)]
    pub use_scale_shift_norm: bool,
    /// Down/up-sample with ResBlocks (avg-pool / nearest inside) instead of conv layers.
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default)]
    pub use_new_attention_order: bool,
    /// Must be false: SDSeg has no cross-attention.
    #[serde(default)]
    pub use_spatial_transformer: bool,
    /// Must be absent (codebook prediction head, unused by SDSeg).
    #[serde(default)]
    pub n_embed: Option<usize>,
    #[serde(default = "default_true")]
    pub legacy: bool,
    // use_checkpoint, use_fp16, transformer_depth, context_dim: no effect on inference.
}

fn default_channel_mult() -> Vec<usize> {
    vec![1, 2, 4, 8]
}
fn default_true() -> bool {
    true
}
fn default_dims() -> usize {
    2
}
fn minus_one() -> i64 {
    -1
}

impl UNetConfig {
    /// The SDSeg UNet (every `configs/SDSeg/*.yaml`, reference §3.1): in 8 / out 4,
    /// model_channels 192, channel_mult [1,2,2,4,4], 2 res blocks, attention at ds 1,2,4,8,
    /// 8 heads, scale-shift norm, resblock up/down; `num_classes` for the class-embed models.
    pub fn sdseg(num_classes: Option<usize>) -> Self {
        UNetConfig {
            image_size: Some(32),
            in_channels: 8,
            model_channels: 192,
            out_channels: 4,
            num_res_blocks: 2,
            attention_resolutions: vec![1, 2, 4, 8],
            dropout: 0.2,
            channel_mult: vec![1, 2, 2, 4, 4],
            conv_resample: true,
            dims: 2,
            num_classes,
            num_heads: 8,
            num_head_channels: -1,
            num_heads_upsample: -1,
            use_scale_shift_norm: true,
            resblock_updown: true,
            use_new_attention_order: false,
            use_spatial_transformer: false,
            n_embed: None,
            legacy: true,
        }
    }

    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Everything `UNetModel.__init__` asserts, plus what this port does not implement.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.dims != 2 {
            return Err(format!("dims {} is not supported (only 2-D)", self.dims));
        }
        if self.use_spatial_transformer {
            return Err("use_spatial_transformer (cross-attention) is not supported".into());
        }
        if self.n_embed.is_some() {
            return Err("n_embed (codebook prediction) is not supported".into());
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return Err(format!(
                "channel_mult {:?} must be non-empty and positive",
                self.channel_mult
            ));
        }
        if self.channel_mult[0] != 1 {
            // `out.2` is built with model_channels inputs but fed model_channels·mult[0].
            return Err("channel_mult[0] must be 1 (as UNetModel's `out` conv assumes)".into());
        }
        if self.num_heads == -1 && self.num_head_channels == -1 {
            return Err("either num_heads or num_head_channels has to be set".into());
        }
        if self.num_heads == 0 || self.num_head_channels == 0 {
            return Err("num_heads / num_head_channels must not be 0".into());
        }
        for &m in &self.channel_mult {
            if !(m * self.model_channels).is_multiple_of(GROUPS) {
                return Err(format!(
                    "model_channels {} × {m} is not a multiple of {GROUPS} (GroupNorm32)",
                    self.model_channels
                ));
            }
        }
        if !self.model_channels.is_multiple_of(2) {
            return Err("model_channels must be even (sinusoidal timestep embedding)".into());
        }
        if self.num_classes == Some(0) {
            return Err("num_classes must be ≥ 1 when set".into());
        }
        Ok(())
    }

    /// Spatial down-sampling factor of the whole UNet (the latent side must divide by it).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
}

/// Number of GroupNorm groups (`normalization(channels) = GroupNorm32(32, channels)`).
const GROUPS: usize = 32;
/// PyTorch's GroupNorm default.
const GN_EPS: f64 = 1e-5;

/// `GroupNorm32`: GroupNorm(32, C, eps 1e-5) computed in float32 whatever the input dtype
/// (`super().forward(x.float()).type(x.dtype)`); its affine parameters are kept in f32 too.
#[derive(Clone, Debug)]
pub struct GroupNorm32 {
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm32 {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        if !channels.is_multiple_of(GROUPS) {
            candle_core::bail!("GroupNorm32 at {}: {channels} channels", vb.prefix());
        }
        let weight = vb.get_with_hints_dtype(channels, "weight", Init::Const(1.0), DType::F32)?;
        let bias = vb.get_with_hints_dtype(channels, "bias", Init::Const(0.0), DType::F32)?;
        Ok(Self { weight, bias })
    }
}

impl GroupNorm32 {
    /// `silu(self.forward(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if ops::fused_applies(x, &[&self.weight, &self.bias]) {
            return ops::group_norm_silu(x, GROUPS, GN_EPS, &self.weight, &self.bias, true);
        }
        self.forward_exact(x)?.silu()
    }

    /// `silu(self.forward(x) · (1 + scale) + shift)` for `scale`, `shift` of [B, C] or
    /// [B, C, 1, 1] (the `ResBlock`'s `use_scale_shift_norm` branch; Dropout comes after).
    pub fn forward_scale_shift_silu(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        if ops::fused_applies(x, &[&self.weight, &self.bias, scale, shift]) {
            return ops::group_norm_scale_shift_silu(
                x,
                GROUPS,
                GN_EPS,
                &self.weight,
                &self.bias,
                scale,
                shift,
                true,
            );
        }
        let (b, c) = (scale.dim(0)?, scale.dim(1)?);
        let mut cshape = vec![1usize; x.rank()];
        (cshape[0], cshape[1]) = (b, c);
        let scale = scale.reshape(cshape.as_slice())?;
        let shift = shift.reshape(cshape.as_slice())?;
        self.forward_exact(x)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?
            .silu()
    }

    /// The norm in candle ops (differentiable, any device and dtype).
    pub fn forward_exact(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let shape = x.shape().clone();
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let x = x.to_dtype(DType::F32)?.reshape((b, GROUPS, ()))?;
        let n = x.dim(2)? as f64;
        let mean = (x.sum_keepdim(2)? / n)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(2)? / n)?;
        let xn = xc.broadcast_div(&(var + GN_EPS)?.sqrt()?)?;
        let mut wshape = vec![1usize; shape.rank()];
        wshape[1] = c;
        xn.reshape(shape)?
            .broadcast_mul(&self.weight.reshape(wshape.clone())?)?
            .broadcast_add(&self.bias.reshape(wshape)?)?
            .to_dtype(dtype)
    }
}

/// On the inference fast path (f32 CPU tensors, nothing tracking gradients) the fused one-pass
/// op of [`sdseg_kernels::ops`], else [`GroupNorm32::forward_exact`].
impl Module for GroupNorm32 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::fused_applies(x, &[&self.weight, &self.bias]) {
            return ops::group_norm_silu(x, GROUPS, GN_EPS, &self.weight, &self.bias, false);
        }
        self.forward_exact(x)
    }
}

/// Sinusoidal timestep embedding, `ldm/modules/diffusionmodules/util.py::timestep_embedding`
/// with max_period 10000: `[cos(t·f_i), sin(t·f_i)]` (cos first), `f_i = exp(−ln(10⁴)·i/half)`.
///
/// PyTorch computes the frequencies and `t·f_i` in float32; we round the same way (f32
/// exponent, f32 product) so the arguments match, then evaluate cos/sin in f64 and round, so
/// only a last-bit difference remains. `timesteps` is [N] (any numeric dtype); returns
/// [N, dim] f32 on the same device.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let ts = timesteps.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let half = dim / 2;
    let log_max = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_max * i as f32 / half as f32) as f64).exp() as f32)
        .collect();
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &t in &ts {
        let args: Vec<f64> = freqs.iter().map(|&f| (t * f) as f64).collect();
        out.extend(args.iter().map(|a| a.cos() as f32));
        out.extend(args.iter().map(|a| a.sin() as f32));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (ts.len(), dim), timesteps.device())
}

/// One layer of a `TimestepEmbedSequential`.
#[derive(Clone, Debug)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(AttentionBlock),
    Down(Downsample),
    Up(Upsample),
}

/// `TimestepEmbedSequential`: layers applied in order, ResBlocks also get the embedding.
#[derive(Clone, Debug, Default)]
pub struct TimestepEmbedSequential {
    layers: Vec<Layer>,
}

impl TimestepEmbedSequential {
    fn push(&mut self, l: Layer) -> usize {
        self.layers.push(l);
        self.layers.len() - 1
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = match l {
                Layer::Conv(c) => c.forward(&h)?,
                Layer::Res(r) => r.forward(&h, emb)?,
                Layer::Attn(a) => a.forward(&h)?,
                Layer::Down(d) => d.forward(&h)?,
                Layer::Up(u) => u.forward(&h)?,
            };
        }
        Ok(h)
    }
}

/// The head-count rules of `UNetModel.__init__` (legacy branch included). `num_heads` is the
/// constructor's running variable: with `num_head_channels` set it is overwritten at every
/// attention level, exactly as in the Python code.
struct Heads<'a> {
    cfg: &'a UNetConfig,
    num_heads: i64,
    num_heads_upsample: i64,
}

impl<'a> Heads<'a> {
    fn new(cfg: &'a UNetConfig) -> Self {
        let num_heads_upsample = if cfg.num_heads_upsample == -1 {
            cfg.num_heads
        } else {
            cfg.num_heads_upsample
        };
        Heads {
            cfg,
            num_heads: cfg.num_heads,
            num_heads_upsample,
        }
    }

    /// Heads of the `AttentionBlock` built at a level with `ch` channels.
    fn at(&mut self, ch: usize, upsample: bool) -> Result<usize> {
        let ch_i = ch as i64;
        let nhc = self.cfg.num_head_channels;
        let mut dim_head = if nhc == -1 {
            ch_i / self.num_heads
        } else {
            self.num_heads = ch_i / nhc;
            nhc
        };
        if self.cfg.legacy {
            // `dim_head = ch // num_heads if use_spatial_transformer else num_head_channels`
            dim_head = nhc;
        }
        let heads_arg = if upsample {
            self.num_heads_upsample
        } else {
            self.num_heads
        };
        // AttentionBlock: num_heads if num_head_channels == -1 else channels // num_head_channels
        let heads = if dim_head == -1 {
            heads_arg
        } else {
            if dim_head <= 0 || ch_i % dim_head != 0 {
                candle_core::bail!("{ch} channels not divisible by head width {dim_head}");
            }
            ch_i / dim_head
        };
        if heads <= 0 {
            candle_core::bail!("attention at {ch} channels resolves to {heads} heads");
        }
        Ok(heads as usize)
    }
}

/// LDM `UNetModel` (ε-prediction network).
#[derive(Clone, Debug)]
pub struct UNetModel {
    /// `time_embed.0`
    time_embed_in: Linear,
    /// `time_embed.2` (after SiLU)
    time_embed_out: Linear,
    label_emb: Option<Embedding>,
    input_blocks: Vec<TimestepEmbedSequential>,
    middle_block: TimestepEmbedSequential,
    output_blocks: Vec<TimestepEmbedSequential>,
    /// `out.0`
    out_norm: GroupNorm32,
    /// `out.2` (after SiLU)
    out_conv: Conv2d,
    config: UNetConfig,
}

impl UNetModel {
    /// `vb` points at the UNet (`model.diffusion_model` in an SDSeg checkpoint).
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::msg)?;
        let mc = cfg.model_channels;
        let ted = cfg.time_embed_dim();
        let order = if cfg.use_new_attention_order {
            QkvOrder::New
        } else {
            QkvOrder::Legacy
        };
        let time_embed_in = candle_nn::linear(mc, ted, vb.pp("time_embed.0"))?;
        let time_embed_out = candle_nn::linear(ted, ted, vb.pp("time_embed.2"))?;
        let label_emb = match cfg.num_classes {
            Some(k) => Some(candle_nn::embedding(k, ted, vb.pp("label_emb"))?),
            None => None,
        };
        let res = |ch: usize, out: usize, updown: UpDown, vb: VarBuilder| {
            ResBlock::new(ch, ted, out, cfg.use_scale_shift_norm, updown, vb)
        };
        let mut heads = Heads::new(cfg);
        let conv_in_cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };

        // Encoder half.
        let vb_in = vb.pp("input_blocks");
        let mut input_blocks = Vec::new();
        let mut first = TimestepEmbedSequential::default();
        first.push(Layer::Conv(conv2d(
            cfg.in_channels,
            mc,
            3,
            conv_in_cfg,
            vb_in.pp("0").pp("0"),
        )?));
        input_blocks.push(first);
        let mut skip_chans = vec![mc];
        let mut ch = mc;
        let mut ds = 1usize;
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vb_in.pp(input_blocks.len().to_string());
                let mut block = TimestepEmbedSequential::default();
                let out = mult * mc;
                let i = block.push(Layer::Res(res(ch, out, UpDown::None, vbb.pp("0"))?));
                ch = out;
                if cfg.attention_resolutions.contains(&ds) {
                    let h = heads.at(ch, false)?;
                    let a = AttentionBlock::new(ch, h, order, vbb.pp((i + 1).to_string()))?;
                    block.push(Layer::Attn(a));
                }
                input_blocks.push(block);
                skip_chans.push(ch);
            }
            if level != levels - 1 {
                let vbb = vb_in.pp(input_blocks.len().to_string()).pp("0");
                let mut block = TimestepEmbedSequential::default();
                if cfg.resblock_updown {
                    block.push(Layer::Res(res(ch, ch, UpDown::Down, vbb)?));
                } else {
                    block.push(Layer::Down(Downsample::new(
                        ch,
                        ch,
                        cfg.conv_resample,
                        vbb,
                    )?));
                }
                input_blocks.push(block);
                skip_chans.push(ch);
                ds *= 2;
            }
        }

        // Middle: ResBlock, AttentionBlock, ResBlock.
        let vb_mid = vb.pp("middle_block");
        let mut middle_block = TimestepEmbedSequential::default();
        middle_block.push(Layer::Res(res(ch, ch, UpDown::None, vb_mid.pp("0"))?));
        let h = heads.at(ch, false)?;
        middle_block.push(Layer::Attn(AttentionBlock::new(
            ch,
            h,
            order,
            vb_mid.pp("1"),
        )?));
        middle_block.push(Layer::Res(res(ch, ch, UpDown::None, vb_mid.pp("2"))?));

        // Decoder half: each block first takes cat([h, skip]).
        let vb_out = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let ich = skip_chans.pop().expect("one skip per input block");
                let vbb = vb_out.pp(output_blocks.len().to_string());
                let mut block = TimestepEmbedSequential::default();
                let out = mc * mult;
                block.push(Layer::Res(res(ch + ich, out, UpDown::None, vbb.pp("0"))?));
                ch = out;
                if cfg.attention_resolutions.contains(&ds) {
                    let h = heads.at(ch, true)?;
                    let idx = block.layers.len().to_string();
                    block.push(Layer::Attn(AttentionBlock::new(ch, h, order, vbb.pp(idx))?));
                }
                if level != 0 && i == cfg.num_res_blocks {
                    let vbu = vbb.pp(block.layers.len().to_string());
                    if cfg.resblock_updown {
                        block.push(Layer::Res(res(ch, ch, UpDown::Up, vbu)?));
                    } else {
                        block.push(Layer::Up(Upsample::new(ch, ch, cfg.conv_resample, vbu)?));
                    }
                    ds /= 2;
                }
                output_blocks.push(block);
            }
        }

        let out_norm = GroupNorm32::new(ch, vb.pp("out.0"))?;
        let out_conv = conv2d(mc, cfg.out_channels, 3, conv_in_cfg, vb.pp("out.2"))?;
        Ok(Self {
            time_embed_in,
            time_embed_out,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn is_class_conditional(&self) -> bool {
        self.label_emb.is_some()
    }

    /// `time_embed(timestep_embedding(t))`: [N, 4·model_channels] in `dtype`, computed on
    /// `device`. Fixed t (SDSeg inference uses t = T−1 only) can be precomputed once.
    pub fn time_embedding(&self, t: &[u32], device: &Device, dtype: DType) -> Result<Tensor> {
        let t = Tensor::new(t, device)?;
        let e = timestep_embedding(&t, self.config.model_channels)?.to_dtype(dtype)?;
        self.time_embed_out
            .forward(&self.time_embed_in.forward(&e)?.silu()?)
    }

    /// The embedding every ResBlock sees: a time embedding [1 or N, E] broadcast to the batch,
    /// plus `label_emb(y)` for class-conditional models (`y`: [N] u32/i64 class ids).
    pub fn embedding(&self, time_emb: &Tensor, y: Option<&Tensor>, n: usize) -> Result<Tensor> {
        let e = time_emb.broadcast_as((n, time_emb.dim(1)?))?;
        match (&self.label_emb, y) {
            (Some(le), Some(y)) => {
                if y.dims() != [n] {
                    candle_core::bail!("class ids must have shape [{n}], got {:?}", y.dims());
                }
                let y = y.to_dtype(DType::U32)?;
                e + le.forward(&y)?
            }
            (None, None) => e.contiguous(),
            (Some(_), None) => candle_core::bail!("class-conditional UNet needs class ids y"),
            (None, Some(_)) => candle_core::bail!("this UNet has no label_emb; class ids given"),
        }
    }

    /// ε̂ for `x` [N, in_channels, h, w] given the full embedding [N, E] (see [`Self::embedding`]).
    pub fn forward_with_emb(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let emb = emb.to_dtype(x.dtype())?;
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.clone();
        for block in &self.input_blocks {
            h = block.forward(&h, &emb)?;
            hs.push(h.clone());
        }
        h = self.middle_block.forward(&h, &emb)?;
        for block in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb)?;
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }

    /// `UNetModel.forward(x, timesteps, y)`: `t` [N] integer timesteps, `y` [N] class ids.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let t = t.to_dtype(DType::F32)?;
        let e = timestep_embedding(&t, self.config.model_channels)?.to_dtype(x.dtype())?;
        let te = self
            .time_embed_out
            .forward(&self.time_embed_in.forward(&e)?.silu()?)?;
        if te.dim(0)? != n {
            candle_core::bail!("timesteps must have shape [{n}], got {:?}", t.dims());
        }
        let emb = self.embedding(&te, y, n)?;
        self.forward_with_emb(x, &emb)
    }
}
