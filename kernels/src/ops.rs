//! Fused elementwise work (issue 7, item 2): GroupNorm (+ scale-shift) (+ SiLU) in one op.
//!
//! LDM's `normalization(c)` followed by `nonlinearity` (SiLU), and the UNet `ResBlock`'s
//! `use_scale_shift_norm` branch `out_norm(h) · (1 + scale) + shift` then SiLU, are a dozen
//! candle ops (each a full pass over the activation, most of them single-threaded). Here they
//! are one [`CustomOp2`] on f32 CPU tensors: per (image, group), rayon in parallel, compiled
//! for AVX-512F or AVX2 + FMA when the CPU has them (run-time detection, same bits),
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

/// Whether [`group_norm_silu`] / [`group_norm_scale_shift_silu`] run the fused kernel for
/// input `x` and parameters `params` (weight, bias, scale, shift): `x` an f32 CPU tensor and
/// nothing tracking gradients. Otherwise they run [`group_norm_reference`]; the model's norm
/// layers check this first and keep their own exact code instead.
pub fn fused_applies(x: &Tensor, params: &[&Tensor]) -> bool {
    matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && !x.track_op()
        && !params.iter().any(|p| p.track_op())
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
    let applies = match scale_shift {
        None => fused_applies(x, &[weight, bias]),
        Some((s, t)) => fused_applies(x, &[weight, bias, s, t]),
    };
    if !applies {
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
        let simd = Simd::detect();
        y.par_chunks_mut(cg * hw)
            .zip(x.par_chunks(cg * hw))
            .enumerate()
            .for_each(|(ng, (yg, xg))| {
                let (img, g) = (ng / self.groups, ng % self.groups);
                let adi = &ad[img * 2 * c..(img + 1) * 2 * c];
                let a = &adi[g * cg..(g + 1) * cg];
                let d = &adi[c + g * cg..c + (g + 1) * cg];
                normalise_group(yg, xg, a, d, self.eps, self.silu, simd);
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
        total += block_total(&acc, it.remainder().iter().map(|x| x - shift));
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
        total += block_total(&acc, it.remainder().iter().map(|x| (x - mean) * (x - mean)));
    }
    total
}

/// One block's total: its lane sums and the f32 sum of the `rest` past the last full 16.
#[inline(always)]
fn block_total(acc: &[f32; LANES], rest: impl Iterator<Item = f32>) -> f64 {
    let rest: f32 = rest.sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64
}

/// The instruction set [`normalise_group`] runs with. The vector code performs the scalar
/// code's operations in the same order, lane by lane (separate multiplies and adds, no FMA,
/// 16 lane sums per block), so every variant gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    /// x86-64 with AVX-512F: 16 floats a vector.
    Avx512,
    /// x86-64 with AVX2 and FMA: 8 floats a vector.
    Avx2Fma,
    /// Plain Rust (what LLVM makes of it; other CPUs).
    Generic,
}

impl Simd {
    /// The widest this CPU runs (std caches the CPUID answers).
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Simd::Avx2Fma;
            }
        }
        Simd::Generic
    }
}

/// One (image, group): `xg` holds its `a.len()` channel planes; `a`/`d` are the per-channel
/// affine before the `rstd` fold. Writes `yg`.
fn normalise_group(
    yg: &mut [f32],
    xg: &[f32],
    a: &[f32],
    d: &[f32],
    eps: f64,
    silu: bool,
    simd: Simd,
) {
    let hw = xg.len() / a.len().max(1);
    let count = xg.len() as f64;
    let (mean, var) = match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the variant was detected on this CPU (`Simd::detect`).
        Simd::Avx512 => unsafe {
            let mean = x86::sum_avx512(xg, 0.0, false) / count;
            (mean, x86::sum_avx512(xg, mean as f32, true) / count)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the variant was detected on this CPU (`Simd::detect`).
        Simd::Avx2Fma => unsafe {
            let mean = x86::sum_avx2(xg, 0.0, false) / count;
            (mean, x86::sum_avx2(xg, mean as f32, true) / count)
        },
        _ => {
            let mean = sum(xg, 0.0) / count;
            (mean, sum_sq(xg, mean as f32) / count)
        }
    };
    let rstd = 1.0 / (var + eps).sqrt();
    // x − mean as (x − hi) − lo: exact even when |mean| ≫ std.
    let hi = mean as f32;
    let center = [hi, (mean - hi as f64) as f32];
    for (k, (yc, xc)) in yg.chunks_mut(hw).zip(xg.chunks(hw)).enumerate() {
        let affine = [(a[k] as f64 * rstd) as f32, d[k]];
        match simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the variant was detected on this CPU (`Simd::detect`).
            Simd::Avx512 => unsafe { x86::apply_avx512(yc, xc, center, affine, silu) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the variant was detected on this CPU (`Simd::detect`).
            Simd::Avx2Fma => unsafe { x86::apply_avx2(yc, xc, center, affine, silu) },
            _ => apply(yc, xc, center, affine, silu),
        }
    }
}

/// `y = ((x − hi) − lo) · a + d` for `center = [hi, lo]`, `affine = [a, d]`, then SiLU if
/// asked.
#[inline(always)]
fn apply(y: &mut [f32], x: &[f32], center: [f32; 2], affine: [f32; 2], silu: bool) {
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

/// [`sum`], [`sum_sq`] and [`apply`] in AVX-512 and AVX2 intrinsics: vectorised whatever the
/// optimiser makes of the scalar code, and in its operation order (see [`Simd`]). Tails
/// shorter than a vector run the scalar code.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{apply, block_total, BLOCK, LANES};
    use std::arch::x86_64::*;

    use super::exp_consts::*;

    /// Σ (x − shift) (`sq` false) or Σ (x − shift)² (`sq` true), as `super::sum`/`sum_sq`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_avx512(x: &[f32], shift: f32, sq: bool) -> f64 {
        let s = _mm512_set1_ps(shift);
        let mut total = 0f64;
        for blk in x.chunks(BLOCK) {
            let mut acc = _mm512_setzero_ps();
            let mut it = blk.chunks_exact(LANES);
            for v in &mut it {
                // SAFETY: `v` is a chunk of exactly 16 floats.
                let d = _mm512_sub_ps(unsafe { _mm512_loadu_ps(v.as_ptr()) }, s);
                let d = if sq { _mm512_mul_ps(d, d) } else { d };
                acc = _mm512_add_ps(acc, d);
            }
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds 16 floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
            let rest = it.remainder().iter().map(|&x| {
                let d = x - shift;
                if sq {
                    d * d
                } else {
                    d
                }
            });
            total += block_total(&lanes, rest);
        }
        total
    }

    /// As [`sum_avx512`], the 16 lane sums held in two 8-float registers.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_avx2(x: &[f32], shift: f32, sq: bool) -> f64 {
        let s = _mm256_set1_ps(shift);
        let mut total = 0f64;
        for blk in x.chunks(BLOCK) {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut it = blk.chunks_exact(LANES);
            for v in &mut it {
                // SAFETY: `v` is a chunk of exactly 16 floats.
                let (v0, v1) = unsafe {
                    (
                        _mm256_loadu_ps(v.as_ptr()),
                        _mm256_loadu_ps(v.as_ptr().add(8)),
                    )
                };
                let d0 = _mm256_sub_ps(v0, s);
                let d1 = _mm256_sub_ps(v1, s);
                let (d0, d1) = if sq {
                    (_mm256_mul_ps(d0, d0), _mm256_mul_ps(d1, d1))
                } else {
                    (d0, d1)
                };
                acc0 = _mm256_add_ps(acc0, d0);
                acc1 = _mm256_add_ps(acc1, d1);
            }
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc0);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc1);
            }
            let rest = it.remainder().iter().map(|&x| {
                let d = x - shift;
                if sq {
                    d * d
                } else {
                    d
                }
            });
            total += block_total(&lanes, rest);
        }
        total
    }

    /// `super::apply`, 16 floats at a time.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn apply_avx512(
        y: &mut [f32],
        x: &[f32],
        center: [f32; 2],
        affine: [f32; 2],
        silu: bool,
    ) {
        let n = y.len().min(x.len());
        let main = n - n % 16;
        let (hi, lo) = (_mm512_set1_ps(center[0]), _mm512_set1_ps(center[1]));
        let (a, d) = (_mm512_set1_ps(affine[0]), _mm512_set1_ps(affine[1]));
        let one = _mm512_set1_ps(1.0);
        let sign = _mm512_set1_ps(-0.0);
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 <= main <= x.len()`.
            let xv = unsafe { _mm512_loadu_ps(xp.add(i)) };
            let v = _mm512_add_ps(
                _mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(xv, hi), lo), a),
                d,
            );
            let out = if silu {
                let e = exp_avx512(_mm512_castsi512_ps(_mm512_xor_si512(
                    _mm512_castps_si512(v),
                    _mm512_castps_si512(sign),
                )));
                _mm512_div_ps(v, _mm512_add_ps(one, e))
            } else {
                v
            };
            // SAFETY: `i + 16 <= main <= y.len()`.
            unsafe { _mm512_storeu_ps(yp.add(i), out) };
        }
        apply(&mut y[main..n], &x[main..n], center, affine, silu);
    }

    /// `super::exp` on 16 floats.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp_avx512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LO)), _mm512_set1_ps(HI));
        let magic = _mm512_set1_ps(MAGIC);
        let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), magic);
        let n = _mm512_sub_ps(t, magic);
        let r = _mm512_sub_ps(
            _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
            _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
        );
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let er = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
            _mm512_set1_ps(1.0),
        );
        let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000));
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127)));
        _mm512_mul_ps(er, _mm512_castsi512_ps(bits))
    }

    /// `super::apply`, 8 floats at a time.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn apply_avx2(
        y: &mut [f32],
        x: &[f32],
        center: [f32; 2],
        affine: [f32; 2],
        silu: bool,
    ) {
        let n = y.len().min(x.len());
        let main = n - n % 8;
        let (hi, lo) = (_mm256_set1_ps(center[0]), _mm256_set1_ps(center[1]));
        let (a, d) = (_mm256_set1_ps(affine[0]), _mm256_set1_ps(affine[1]));
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        for i in (0..main).step_by(8) {
            // SAFETY: `i + 8 <= main <= x.len()`.
            let xv = unsafe { _mm256_loadu_ps(xp.add(i)) };
            let v = _mm256_add_ps(
                _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(xv, hi), lo), a),
                d,
            );
            let out = if silu {
                let e = exp_avx2(_mm256_xor_ps(v, sign));
                _mm256_div_ps(v, _mm256_add_ps(one, e))
            } else {
                v
            };
            // SAFETY: `i + 8 <= main <= y.len()`.
            unsafe { _mm256_storeu_ps(yp.add(i), out) };
        }
        apply(&mut y[main..n], &x[main..n], center, affine, silu);
    }

    /// `super::exp` on 8 floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp_avx2(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
        let magic = _mm256_set1_ps(MAGIC);
        let t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), magic);
        let n = _mm256_sub_ps(t, magic);
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let er = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(bits, _mm256_set1_epi32(127)));
        _mm256_mul_ps(er, _mm256_castsi256_ps(bits))
    }
}

/// `e^x` for f32 without libm calls, so loops over it vectorise: `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, Cephes' `expf` polynomial for `e^r`, `2^n` built in the exponent bits.
/// Inputs are clamped to [−87.3, 88] (results stay finite and normal); max relative error
/// ~2e-7 on that range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(LO, HI);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let er = p * r * r + r + 1.0;
    // t's bits are 0x4B40_0000 + n; the exponent field of 2^n is n + 127.
    let pow2n = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    er * pow2n
}

/// The constants of [`exp`] (and of its vector versions).
mod exp_consts {
    /// The clamp range.
    pub const LO: f32 = -87.3;
    pub const HI: f32 = 88.0;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 in two parts (Cody–Waite).
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 · 2^23: adding it rounds to an integer, held in the low mantissa bits.
    pub const MAGIC: f32 = 12_582_912.0;
    /// Cephes' `expf` polynomial, highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
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

    /// Every instruction set this CPU runs gives the baseline's bits.
    #[test]
    fn simd_variants_are_bit_identical() {
        let (cg, hw) = (3, 1000 + 7);
        let x: Vec<f32> = (0..cg * hw as u64)
            .map(|i| ((i * 7919 % 2003) as f32) * 4e-3 - 3.0)
            .collect();
        // The middle channel reaches exp's clamp range.
        let (a, d) = ([0.7f32, 60.0, -0.4], [0.1f32, -0.2, 0.3]);
        for silu in [false, true] {
            let mut want = vec![0f32; x.len()];
            normalise_group(&mut want, &x, &a, &d, 1e-6, silu, Simd::Generic);
            let mut levels = vec![Simd::detect()];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                levels.push(Simd::Avx2Fma);
            }
            for simd in levels {
                let mut got = vec![0f32; x.len()];
                normalise_group(&mut got, &x, &a, &d, 1e-6, silu, simd);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{simd:?} silu {silu}"
                );
            }
        }
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
