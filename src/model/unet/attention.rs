//! `AttentionBlock` of `ldm/modules/diffusionmodules/openaimodel.py`: self-attention over the
//! spatial positions of one feature map, with a 1-D 1×1 `qkv` convolution, multi-head
//! `QKVAttentionLegacy` (or `QKVAttention` with `use_new_attention_order`) and a 1×1
//! `proj_out`. No cross-attention: SDSeg's UNet has no context.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::GroupNorm32;
use sdseg_kernels::conv::Conv2d;

/// How the `3·C` channels of `qkv` are split into heads and q/k/v.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvOrder {
    /// `QKVAttentionLegacy` (`use_new_attention_order: False`, every SDSeg config): heads
    /// first, so head `h` owns channels `h·3d .. (h+1)·3d`, in the order q, k, v.
    Legacy,
    /// `QKVAttention`: q, k, v first (each `C` channels), then heads inside each.
    New,
}

#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: GroupNorm32,
    /// Conv1d(C → 3C, 1) stored as `[3C, C, 1]`, applied as a 1×1 Conv2d.
    qkv: Conv2d,
    /// Conv1d(C → C, 1), zero-initialised in training (`zero_module`).
    proj_out: Conv2d,
    num_heads: usize,
    order: QkvOrder,
}

/// Read a Conv1d kernel-size-1 layer (`weight [out, in, 1]`, `bias [out]`) as a 1×1 `Conv2d`.
fn conv1d_1x1(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get((out_c, in_c, 1), "weight")?.unsqueeze(3)?;
    let bias = vb.get(out_c, "bias")?;
    Ok(Conv2d::new(weight, Some(bias), Conv2dConfig::default()))
}

impl AttentionBlock {
    /// `num_heads` is the already resolved head count (see `UNetConfig::attention_heads`).
    pub fn new(channels: usize, num_heads: usize, order: QkvOrder, vb: VarBuilder) -> Result<Self> {
        if num_heads == 0 || !channels.is_multiple_of(num_heads) {
            candle_core::bail!(
                "AttentionBlock at {}: {channels} channels are not divisible into {num_heads} heads",
                vb.prefix()
            );
        }
        Ok(Self {
            norm: GroupNorm32::new(channels, vb.pp("norm"))?,
            qkv: conv1d_1x1(channels, 3 * channels, vb.pp("qkv"))?,
            proj_out: conv1d_1x1(channels, channels, vb.pp("proj_out"))?,
            num_heads,
            order,
        })
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// q, k, v as `[B·H, d, T]` each.
    fn split_heads(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, c3, t) = qkv.dims3()?;
        let (h, d) = (self.num_heads, c3 / 3 / self.num_heads);
        match self.order {
            QkvOrder::Legacy => {
                let qkv = qkv.reshape((b * h, 3 * d, t))?;
                Ok((
                    qkv.narrow(1, 0, d)?,
                    qkv.narrow(1, d, d)?,
                    qkv.narrow(1, 2 * d, d)?,
                ))
            }
            QkvOrder::New => {
                let c = c3 / 3;
                let part = |i: usize| {
                    qkv.narrow(1, i * c, c)?
                        .contiguous()?
                        .reshape((b * h, d, t))
                };
                Ok((part(0)?, part(1)?, part(2)?))
            }
        }
    }
}

impl Module for AttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let t = hh * ww;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x)?)?
            .reshape((b, 3 * c, t))?;
        let (q, k, v) = self.split_heads(&qkv)?;
        let d = c / self.num_heads;
        let a = if sdseg_kernels::attention::fused_applies(&q, &k, &v) {
            // f32 on the CPU: one scale on the scores, fused (sdseg_kernels::attention).
            sdseg_kernels::attention::attention(&q, &k, &v, 1.0 / (d as f64).sqrt())?
        } else {
            // 1/√√d on both q and k ("more stable with f16 than dividing afterwards").
            let scale = 1.0 / (d as f64).sqrt().sqrt();
            let q = (q * scale)?;
            let k = (k * scale)?;
            // weight[b, t, s] = Σ_c q[b, c, t]·k[b, c, s]; softmax over s in f32. candle's CPU
            // matmul takes transposed operands as they are (gemm strides): no copies.
            let weight = q.transpose(1, 2)?.matmul(&k)?;
            let in_dtype = weight.dtype();
            let weight = sdseg_kernels::attention::softmax_last_dim(&weight.to_dtype(DType::F32)?)?
                .to_dtype(in_dtype)?;
            // a[b, c, t] = Σ_s weight[b, t, s]·v[b, c, s]
            v.matmul(&weight.transpose(1, 2)?)?
        };
        let a = a.reshape((b, c, hh, ww))?;
        x + self.proj_out.forward(&a)?
    }
}
