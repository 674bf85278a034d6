//! `ResBlock`, `Downsample` and `Upsample` of `ldm/modules/diffusionmodules/openaimodel.py`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::GroupNorm32;
use crate::model::conv::conv2d;
use sdseg_kernels::conv::Conv2d;

fn conv3x3(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, cfg, vb)
}

/// The resampling a `ResBlock` applies to both branches (`h_upd`, `x_upd`), between the
/// in-layers' SiLU and conv. These are the `use_conv=False` `Downsample`/`Upsample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpDown {
    None,
    /// `Upsample(channels, False)`: nearest-neighbour ×2.
    Up,
    /// `Downsample(channels, False)`: 2×2 average pool, stride 2.
    Down,
}

fn resample(x: &Tensor, how: UpDown) -> Result<Tensor> {
    match how {
        UpDown::None => Ok(x.clone()),
        UpDown::Up => {
            let (b, c, h, w) = x.dims4()?;
            if x.track_op() {
                // Training: candle 0.11's upsample_nearest2d backward *overwrites* the gradient
                // already accumulated for its input (here x also feeds the norm); the same
                // nearest ×2 as a broadcast backpropagates correctly (issue 6).
                x.reshape((b, c, h, 1, w, 1))?
                    .broadcast_as((b, c, h, 2, w, 2))?
                    .reshape((b, c, 2 * h, 2 * w))
            } else {
                x.upsample_nearest2d(2 * h, 2 * w)
            }
        }
        UpDown::Down => x.avg_pool2d(2),
    }
}

/// `ResBlock(channels → out_channels)` conditioned on the time (+ class) embedding.
///
/// ```text
/// h = in_layers(x)                   # GN, SiLU, [resample], conv3×3
/// e = emb_layers(emb)                # SiLU, Linear → out or 2·out
/// scale-shift: h = GN(h)·(1 + scale) + shift   (scale first: chunk(e, 2))
/// otherwise:   h = GN(h + e)
/// h = conv3×3(dropout(SiLU(h)))
/// return skip_connection([resample](x)) + h
/// ```
#[derive(Clone, Debug)]
pub struct ResBlock {
    /// `in_layers.0`
    in_norm: GroupNorm32,
    /// `in_layers.2`
    in_conv: Conv2d,
    updown: UpDown,
    /// `emb_layers.1`
    emb_proj: Linear,
    /// `out_layers.0`
    out_norm: GroupNorm32,
    /// `out_layers.3` (after SiLU and Dropout; zero-initialised in training)
    out_conv: Conv2d,
    /// `skip_connection`: a 1×1 conv when the channel count changes, else identity.
    skip_connection: Option<Conv2d>,
    use_scale_shift_norm: bool,
}

impl ResBlock {
    pub fn new(
        channels: usize,
        emb_channels: usize,
        out_channels: usize,
        use_scale_shift_norm: bool,
        updown: UpDown,
        vb: VarBuilder,
    ) -> Result<Self> {
        let emb_out = if use_scale_shift_norm {
            2 * out_channels
        } else {
            out_channels
        };
        // `use_conv` is False for every ResBlock UNetModel builds: the skip is 1×1.
        let skip_connection = if out_channels == channels {
            None
        } else {
            Some(conv2d(
                channels,
                out_channels,
                1,
                Conv2dConfig::default(),
                vb.pp("skip_connection"),
            )?)
        };
        Ok(Self {
            in_norm: GroupNorm32::new(channels, vb.pp("in_layers.0"))?,
            in_conv: conv3x3(channels, out_channels, 1, vb.pp("in_layers.2"))?,
            updown,
            emb_proj: candle_nn::linear(emb_channels, emb_out, vb.pp("emb_layers.1"))?,
            out_norm: GroupNorm32::new(out_channels, vb.pp("out_layers.0"))?,
            out_conv: conv3x3(out_channels, out_channels, 1, vb.pp("out_layers.3"))?,
            skip_connection,
            use_scale_shift_norm,
        })
    }

    /// `x`: [B, C, H, W]; `emb`: [B, emb_channels] (already in x's dtype).
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.in_norm.forward_silu(x)?;
        let h = resample(&h, self.updown)?;
        let x = resample(x, self.updown)?;
        let h = self.in_conv.forward(&h)?;

        let e = self.emb_proj.forward(&emb.silu()?)?;
        let (b, n) = e.dims2()?;
        let e = e.reshape((b, n, 1, 1))?;
        // out_layers: norm (+ scale-shift) and SiLU in one op on the fast path.
        let h = if self.use_scale_shift_norm {
            let half = n / 2;
            let scale = e.narrow(1, 0, half)?;
            let shift = e.narrow(1, half, half)?;
            self.out_norm.forward_scale_shift_silu(&h, &scale, &shift)?
        } else {
            self.out_norm.forward_silu(&h.broadcast_add(&e)?)?
        };
        // Dropout (out_layers.2) is the identity at inference.
        let h = self.out_conv.forward(&h)?;
        match &self.skip_connection {
            Some(skip) => skip.forward(&x)? + h,
            None => x + h,
        }
    }
}

/// `Downsample(channels, use_conv=conv_resample)` between levels when `resblock_updown` is
/// off: a 3×3 stride-2 conv (`op`) or a 2×2 average pool.
#[derive(Clone, Debug)]
pub struct Downsample {
    op: Option<Conv2d>,
}

impl Downsample {
    pub fn new(
        channels: usize,
        out_channels: usize,
        use_conv: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let op = if use_conv {
            Some(conv3x3(channels, out_channels, 2, vb.pp("op"))?)
        } else {
            if channels != out_channels {
                candle_core::bail!("Downsample without conv cannot change channels");
            }
            None
        };
        Ok(Self { op })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.op {
            Some(conv) => conv.forward(x),
            None => x.avg_pool2d(2),
        }
    }
}

/// `Upsample(channels, use_conv=conv_resample)`: nearest ×2, then an optional 3×3 conv.
#[derive(Clone, Debug)]
pub struct Upsample {
    conv: Option<Conv2d>,
}

impl Upsample {
    pub fn new(
        channels: usize,
        out_channels: usize,
        use_conv: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = if use_conv {
            Some(conv3x3(channels, out_channels, 1, vb.pp("conv"))?)
        } else {
            None
        };
        Ok(Self { conv })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = resample(x, UpDown::Up)?;
        match &self.conv {
            Some(conv) => conv.forward(&x),
            None => Ok(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The same block with its weights as `Var`s (training: exact candle ops, gradients) and
    /// as plain tensors (inference: fused GroupNorm + scale-shift + SiLU, gemm 1×1 skip).
    #[test]
    fn fused_inference_path_matches_the_differentiable_one() -> Result<()> {
        let dev = Device::Cpu;
        for (scale_shift, updown, out) in [
            (true, UpDown::None, 64),
            (false, UpDown::Down, 32),
            (true, UpDown::Up, 32),
        ] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let trained = ResBlock::new(32, 16, out, scale_shift, updown, vb)?;
            let mut plain = std::collections::HashMap::new();
            for (k, v) in vm.data().lock().unwrap().iter() {
                // Non-trivial norms and a non-zero out conv, so every branch matters.
                let t = (v.as_tensor().randn_like(0.0, 0.2)? + v.as_tensor())?.detach();
                v.set(&t)?;
                plain.insert(k.clone(), t);
            }
            let fast = ResBlock::new(
                32,
                16,
                out,
                scale_shift,
                updown,
                VarBuilder::from_tensors(plain, DType::F32, &dev),
            )?;
            let x = (Tensor::randn(0f32, 1.0, (2, 32, 8, 8), &dev)? + 0.5)?;
            let emb = Tensor::randn(0f32, 1.0, (2, 16), &dev)?;
            let xv = Var::from_tensor(&x)?;
            let want = trained.forward(xv.as_tensor(), &emb)?;
            assert!(want.track_op());
            let got = fast.forward(&x, &emb)?;
            assert!(!got.track_op());
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err <= 1e-5 * scale,
                "{scale_shift} {updown:?}: {err} of {scale}"
            );
            let grads = want.sum_all()?.backward()?;
            assert!(grads.get(xv.as_tensor()).is_some());
        }
        Ok(())
    }
}
