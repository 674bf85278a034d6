//! `im2col` as a candle op with a backward (`col2im`), for [`super::ConvPath::Im2col`]: the
//! training convolution is then one copy into columns plus candle's matmul, whose backward is
//! two more matmuls. Built from `narrow`/`stack` instead, every tap's backward allocated and
//! zero-filled a tensor the size of the input (GBs per step for a small model).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Padding2d;

/// `[B, C, H, W]` → `[B, C·kh·kw, Ho·Wo]`; row `(c·kh + i)·kw + j` holds the input under tap
/// `(i, j)` of every output pixel (zeros in the padding).
#[derive(Clone, Copy, Debug)]
pub struct Im2col {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: Padding2d,
}

impl Im2col {
    /// Output size (Ho, Wo) for an H×W input.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (hp, wp) = (
            h + self.pad.top + self.pad.bottom,
            w + self.pad.left + self.pad.right,
        );
        if hp < self.kh || wp < self.kw || self.stride == 0 {
            candle_core::bail!(
                "conv2d: padded input {hp}×{wp} smaller than kernel {}×{} (or stride 0)",
                self.kh,
                self.kw
            );
        }
        Ok((
            (hp - self.kh) / self.stride + 1,
            (wp - self.kw) / self.stride + 1,
        ))
    }

    /// For output row `o` and tap `i`: the input row, if inside the image.
    #[inline]
    fn src(&self, o: usize, i: usize, before: usize, n: usize) -> Option<usize> {
        (o * self.stride + i).checked_sub(before).filter(|&y| y < n)
    }

    /// Output columns `lo..hi` whose tap `j` lands inside a row of `w` inputs (`before`
    /// zeros of padding first); input column of `ox` is `ox·stride + j − before`.
    #[inline]
    fn valid_cols(&self, j: usize, before: usize, w: usize, wo: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = before.saturating_sub(j).div_ceil(s);
        let hi = if w + before > j {
            ((w + before - j - 1) / s + 1).min(wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// `dst[k] = src[k·stride]` (plain copy for stride 1).
#[inline]
fn gather(dst: &mut [f32], src: &[f32], stride: usize) {
    if stride == 1 {
        dst.copy_from_slice(&src[..dst.len()]);
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *d = *s;
        }
    }
}

/// `dst[k·stride] += src[k]`.
#[inline]
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize) {
    if stride == 1 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    } else {
        for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
            *d += s;
        }
    }
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "sdseg-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("im2col: expects a contiguous input");
        };
        let x = &s.as_slice::<f32>()?[o0..o1];
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_size(h, w)?;
        let taps = self.kh * self.kw;
        let mut out = vec![0f32; b * c * taps * ho * wo];
        if !out.is_empty() {
            out.par_chunks_mut(taps * ho * wo)
                .zip(x.par_chunks(h * w))
                .for_each(|(cols, plane)| {
                    for i in 0..self.kh {
                        for j in 0..self.kw {
                            let row = &mut cols[(i * self.kw + j) * ho * wo..][..ho * wo];
                            for oy in 0..ho {
                                let Some(y) = self.src(oy, i, self.pad.top, h) else {
                                    continue;
                                };
                                let (lo, hi) = self.valid_cols(j, self.pad.left, w, wo);
                                if lo < hi {
                                    let x0 = lo * self.stride + j - self.pad.left;
                                    gather(
                                        &mut row[oy * wo + lo..oy * wo + hi],
                                        &plane[y * w + x0..(y + 1) * w],
                                        self.stride,
                                    );
                                }
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c * taps, ho * wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = Col2im { im: *self, h, w };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The adjoint of [`Im2col`]: columns `[B, C·kh·kw, Ho·Wo]` summed back onto `[B, C, H, W]`.
#[derive(Clone, Copy, Debug)]
struct Col2im {
    im: Im2col,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "sdseg-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("col2im: expects a contiguous input");
        };
        let g = &s.as_slice::<f32>()?[o0..o1];
        let (b, ck, hw_out) = l.shape().dims3()?;
        let im = &self.im;
        let taps = im.kh * im.kw;
        let (h, w) = (self.h, self.w);
        let (ho, wo) = im.out_size(h, w)?;
        if hw_out != ho * wo || ck % taps != 0 {
            candle_core::bail!("col2im: columns {:?} do not fit {h}×{w}", l.dims());
        }
        let c = ck / taps;
        let mut out = vec![0f32; b * c * h * w];
        if !out.is_empty() {
            out.par_chunks_mut(h * w)
                .zip(g.par_chunks(taps * ho * wo))
                .for_each(|(plane, cols)| {
                    for i in 0..im.kh {
                        for j in 0..im.kw {
                            let row = &cols[(i * im.kw + j) * ho * wo..][..ho * wo];
                            for oy in 0..ho {
                                let Some(y) = im.src(oy, i, im.pad.top, h) else {
                                    continue;
                                };
                                let (lo, hi) = im.valid_cols(j, im.pad.left, w, wo);
                                if lo < hi {
                                    let x0 = lo * im.stride + j - im.pad.left;
                                    scatter_add(
                                        &mut plane[y * w + x0..(y + 1) * w],
                                        &row[oy * wo + lo..oy * wo + hi],
                                        im.stride,
                                    );
                                }
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}
