//! Fused elementwise work (issue 7, item 2): GroupNorm (+ scale-shift) (+ SiLU) in one op.
//!
//! LDM's `normalization(c)` followed by `nonlinearity` (SiLU), and the UNet `ResBlock`'s
//! `use_scale_shift_norm` branch `out_norm(h) · (1 + scale) + shift` then SiLU, are a dozen
//! candle ops (each a full pass over the activation, most of them single-threaded). Here they
//! are one [`CustomOp2`] on f32 CPU tensors: per (image, group), rayon in parallel,
//!
//! 1. the mean (f32 lane sums over 256 values, f64 across them),
//! 2. the biased variance, again from the centred values (no `E[x²] − mean²` cancellation),
//! 3. one output pass `y = (x − mean) · a[n, c] + d[n, c]`, optionally `y · σ(y)`, with a
//!    vectorised `exp` (max relative error ~2e-7),
//!
//! where the per-(image, channel) affine `a = rstd · w · (1 + scale)`,
//! `d = b · (1 + scale) + shift` folds weight, bias and scale-shift. Anything
//! else (CUDA, f16/bf16, tensors that track gradients) runs [`group_norm_reference`], the same
//! maths in candle ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `silu(group_norm(x) · w + b)` (or without the SiLU) for `x` [N, C, ...], `weight`/`bias` [C].
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> Result<Tensor> {
    fused(x, groups, eps, weight, bias, None, silu)
}

/// `silu((group_norm(x) · w + b) · (1 + scale) + shift)` (or without the SiLU), `scale` and
/// `shift` [N, C]: the UNet `ResBlock` with `use_scale_shift_norm`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_scale_shift_silu(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    silu: bool,
) -> Result<Tensor> {
    fused(x, groups, eps, weight, bias, Some((scale, shift)), silu)
}

/// The same maths in candle ops (f32 internally, f64 group sums), for other devices, dtypes and
/// autograd, and as the tests' reference.
pub fn group_norm_reference(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
    silu: bool,
) -> Result<Tensor> {
    let (n, c) = check(x, groups, weight, bias)?;
    let dtype = x.dtype();
    let shape = x.shape().clone();
    let xg = x.to_dtype(DType::F32)?.reshape((n, groups, ()))?;
    let count = xg.dim(2)? as f64;
    let mean = (xg.to_dtype(DType::F64)?.sum_keepdim(2)? / count)?.to_dtype(DType::F32)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = (xc.to_dtype(DType::F64)?.sqr()?.sum_keepdim(2)? / count)?.to_dtype(DType::F32)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(&shape)?;
    let mut cshape = vec![1usize; shape.rank()];
    cshape[1] = c;
    let w = weight.to_dtype(DType::F32)?.reshape(cshape.as_slice())?;
    let b = bias.to_dtype(DType::F32)?.reshape(cshape.as_slice())?;
    let mut y = xn.broadcast_mul(&w)?.broadcast_add(&b)?;
    if let Some((scale, shift)) = scale_shift {
        cshape[0] = n;
        let s = scale.to_dtype(DType::F32)?.reshape(cshape.as_slice())?;
        let t = shift.to_dtype(DType::F32)?.reshape(cshape.as_slice())?;
        y = y.broadcast_mul(&(s + 1.0)?)?.broadcast_add(&t)?;
    }
    if silu {
        y = y.silu()?;
    }
    y.to_dtype(dtype)
}

fn check(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor) -> Result<(usize, usize)> {
    let dims = x.dims();
    if dims.len() < 3 {
        candle_core::bail!("group_norm: input rank should be at least 3, got {dims:?}");
    }
    let (n, c) = (dims[0], dims[1]);
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {c} channels do not split into {groups} groups");
    }
    if weight.elem_count() != c || bias.elem_count() != c {
        candle_core::bail!(
            "group_norm: {c} channels but weight {:?}, bias {:?}",
            weight.dims(),
            bias.dims()
        );
    }
    Ok((n, c))
}

fn fused(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
    silu: bool,
) -> Result<Tensor> {
    let (n, c) = check(x, groups, weight, bias)?;
    let tracks = x.track_op()
        || weight.track_op()
        || bias.track_op()
        || scale_shift.is_some_and(|(s, t)| s.track_op() || t.track_op());
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || tracks {
        return group_norm_reference(x, groups, eps, weight, bias, scale_shift, silu);
    }
    // Per-(image, channel) affine after normalisation, folded: a = w·(1+s), d = b·(1+s)+t.
    let w = weight.to_dtype(DType::F32)?.reshape((1, c))?;
    let b = bias.to_dtype(DType::F32)?.reshape((1, c))?;
    let (a, d) = match scale_shift {
        None => (w.broadcast_as((n, c))?, b.broadcast_as((n, c))?),
        Some((s, t)) => {
            let s1 = (s.to_dtype(DType::F32)?.reshape((n, c))? + 1.0)?;
            let t = t.to_dtype(DType::F32)?.reshape((n, c))?;
            (s1.broadcast_mul(&w)?, s1.broadcast_mul(&b)?.add(&t)?)
        }
    };
    let ad = Tensor::stack(&[a, d], 1)?.contiguous()?; // [n, 2, c]
    let x = x.contiguous()?;
    x.apply_op2_no_bwd(&ad, &FusedGroupNorm { groups, eps, silu })
}

struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp2 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "sdseg-group-norm-silu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ads: &CpuStorage,
        adl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (Some((x0, x1)), Some((a0, a1))) = (xl.contiguous_offsets(), adl.contiguous_offsets())
        else {
            candle_core::bail!("group_norm: expects contiguous tensors");
        };
        let x = &xs.as_slice::<f32>()?[x0..x1];
        let ad = &ads.as_slice::<f32>()?[a0..a1];
        let dims = xl.dims();
        let (n, c) = (dims[0], dims[1]);
        let hw = x.len() / (n * c).max(1);
        let cg = c / self.groups;
        let mut y = vec![0f32; x.len()];
        if y.is_empty() {
            return Ok((CpuStorage::F32(y), xl.shape().clone()));
        }
        let simd = simd_available();
        y.par_chunks_mut(cg * hw)
            .zip(x.par_chunks(cg * hw))
            .enumerate()
            .for_each(|(ng, (yg, xg))| {
                let (img, g) = (ng / self.groups, ng % self.groups);
                let count = xg.len() as f64;
                let mean = sum(xg, 0.0) / count;
                let var = sum_sq(xg, mean as f32) / count;
                let rstd = 1.0 / (var + self.eps).sqrt();
                // x − mean as (x − hi) − lo: exact even when |mean| ≫ std.
                let hi = mean as f32;
                let center = [hi, (mean - hi as f64) as f32];
                let adi = &ad[img * 2 * c..(img + 1) * 2 * c];
                for (k, (yc, xc)) in yg.chunks_mut(hw).zip(xg.chunks(hw)).enumerate() {
                    let ch = g * cg + k;
                    let affine = [(adi[ch] as f64 * rstd) as f32, adi[c + ch]];
                    apply(yc, xc, center, affine, self.silu, simd);
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

const LANES: usize = 16;
/// Values summed in f32 (16 lanes × 16) before the f64 total.
const BLOCK: usize = 256;

/// Σ (x − shift), f32 lane sums per block, f64 across blocks.
fn sum(x: &[f32], shift: f32) -> f64 {
    let mut total = 0f64;
    for blk in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut it = blk.chunks_exact(LANES);
        for v in &mut it {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x - shift;
            }
        }
        let rest: f32 = it.remainder().iter().map(|x| x - shift).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64;
    }
    total
}

/// Σ (x − mean)², as [`sum`].
fn sum_sq(x: &[f32], mean: f32) -> f64 {
    let mut total = 0f64;
    for blk in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut it = blk.chunks_exact(LANES);
        for v in &mut it {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += (x - mean) * (x - mean);
            }
        }
        let rest: f32 = it.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64;
    }
    total
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = ((x − hi) − lo) · a + d` for `center = [hi, lo]`, `affine = [a, d]`, then SiLU if
/// asked.
fn apply(y: &mut [f32], x: &[f32], center: [f32; 2], affine: [f32; 2], silu: bool, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when the CPU has AVX-512F.
        unsafe { apply_avx512(y, x, center, affine, silu) };
        return;
    }
    let _ = simd;
    apply_generic(y, x, center, affine, silu);
}

/// The same loop compiled for AVX-512 (LLVM vectorises it 16 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_avx512(y: &mut [f32], x: &[f32], center: [f32; 2], affine: [f32; 2], silu: bool) {
    apply_generic(y, x, center, affine, silu)
}

#[inline(always)]
fn apply_generic(y: &mut [f32], x: &[f32], center: [f32; 2], affine: [f32; 2], silu: bool) {
    let ([hi, lo], [a, d]) = (center, affine);
    if silu {
        for (y, &x) in y.iter_mut().zip(x) {
            let v = ((x - hi) - lo) * a + d;
            *y = v / (1.0 + exp(-v));
        }
    } else {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = ((x - hi) - lo) * a + d;
        }
    }
}

/// `e^x` for f32 without libm calls, so loops over it vectorise: `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, Cephes' `expf` polynomial for `e^r`, `2^n` built in the exponent bits.
/// Inputs are clamped to [−87.3, 88] (results stay finite and normal); max relative error
/// ~2e-7 on that range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's bits are 0x4B40_0000 + n; the exponent field of 2^n is n + 127.
    let pow2n = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    er * pow2n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulps() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "max rel err {worst:e}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn group_sums_are_accurate_with_a_large_mean() {
        // 10⁶ values 1000 + small noise: f64 reference vs our f32-lane/f64 sums.
        let x: Vec<f32> = (0..1_000_003)
            .map(|i: u64| 1000.0 + ((i * 7919 % 1000) as f32) * 1e-3)
            .collect();
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let mean = want / x.len() as f64;
        assert!((sum(&x, 0.0) - want).abs() / want < 1e-6);
        let want_sq: f64 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
        let got_sq = sum_sq(&x, mean as f32);
        assert!(
            (got_sq - want_sq).abs() / want_sq < 1e-4,
            "{got_sq} vs {want_sq}"
        );
    }
}
