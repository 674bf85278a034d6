//! AVX2 + FMA register-tile micro-kernel of the direct convolution, for CPUs without AVX-512
//! (see `cpu.rs` for the data layout and `avx512.rs` for the AVX-512 one). Same 16-pixel
//! segments as the AVX-512 kernel, each held in two ymm registers; one call computes `CO`
//! output channels × `NV` segments over a range of taps, the accumulators never leaving the 16
//! ymm registers (`2·CO·NV` accumulators, `2·NV` input vectors and one broadcast weight):
//!
//! ```text
//! for tap t:   x_v  = load(x[v] + taps[t])                  v < 2·NV   (8 pixels each)
//!              acc[c][v] += broadcast(w[t·w_stride + c]) · x_v   c < CO
//! ```
//!
//! `TAIL` kernels use `vmaskmovps` loads and stores, for chunks holding a partial or an empty
//! segment (the low 8 bits of a segment's mask select the lanes of its first ymm, the high 8
//! those of its second).

use super::cpu::{Init, Tile};
use std::arch::x86_64::*;

/// Lane masks of the two halves of a 16-pixel segment (lane `i` on when bit `i` is set).
#[target_feature(enable = "avx2,fma")]
fn lane_masks(m: u16) -> [__m256i; 2] {
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let lo = _mm256_set1_epi32(i32::from(m & 0xff));
    let hi = _mm256_set1_epi32(i32::from(m >> 8));
    [
        _mm256_cmpeq_epi32(_mm256_and_si256(lo, bits), bits),
        _mm256_cmpeq_epi32(_mm256_and_si256(hi, bits), bits),
    ]
}

/// # Safety
/// The CPU supports AVX2 and FMA; `w` holds `taps.len() * w_stride` floats, `w_stride >= CO`;
/// for every tap `t` and segment `v`, the 16 floats at `x[v] + taps[t]` are readable (only the
/// masked lanes when `TAIL`); `y[v] + c * y_plane` for `c < CO` are 16 writable floats (masked
/// lanes when `TAIL`); a `Init::Bias` pointer holds `CO` floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel<const CO: usize, const NV: usize, const TAIL: bool>(
    taps: &[isize],
    w: *const f32,
    w_stride: usize,
    tile: &Tile<NV>,
    y_plane: usize,
    init: Init,
) {
    // Lane masks of the (segment, half) vectors; unused unless `TAIL`.
    let mut mask = [[_mm256_setzero_si256(); 2]; NV];
    if TAIL {
        for (m, &bits) in mask.iter_mut().zip(&tile.mask) {
            *m = lane_masks(bits);
        }
    }
    let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; CO];
    match init {
        Init::Zero => {}
        Init::Bias(b) => {
            for (c, row) in acc.iter_mut().enumerate() {
                let bv = _mm256_set1_ps(*b.add(c));
                for seg in row.iter_mut() {
                    *seg = [bv; 2];
                }
            }
        }
        Init::Accumulate => {
            for (c, row) in acc.iter_mut().enumerate() {
                for (v, seg) in row.iter_mut().enumerate() {
                    let p = tile.y[v].add(c * y_plane);
                    for (h, a) in seg.iter_mut().enumerate() {
                        *a = if TAIL {
                            _mm256_maskload_ps(p.add(8 * h), mask[v][h])
                        } else {
                            _mm256_loadu_ps(p.add(8 * h))
                        };
                    }
                }
            }
        }
    }
    let mut wp = w;
    for &off in taps {
        let mut xv = [[_mm256_setzero_ps(); 2]; NV];
        for (v, xs) in xv.iter_mut().enumerate() {
            let p = tile.x[v].offset(off);
            for (h, xr) in xs.iter_mut().enumerate() {
                *xr = if TAIL {
                    _mm256_maskload_ps(p.add(8 * h), mask[v][h])
                } else {
                    _mm256_loadu_ps(p.add(8 * h))
                };
            }
        }
        for (c, row) in acc.iter_mut().enumerate() {
            let wb = _mm256_broadcast_ss(&*wp.add(c));
            for (seg, xs) in row.iter_mut().zip(&xv) {
                for (a, xr) in seg.iter_mut().zip(xs) {
                    *a = _mm256_fmadd_ps(wb, *xr, *a);
                }
            }
        }
        wp = wp.add(w_stride);
    }
    for (c, row) in acc.iter().enumerate() {
        for (v, seg) in row.iter().enumerate() {
            let p = tile.y[v].add(c * y_plane);
            for (h, a) in seg.iter().enumerate() {
                if TAIL {
                    _mm256_maskstore_ps(p.add(8 * h), mask[v][h], *a);
                } else {
                    _mm256_storeu_ps(p.add(8 * h), *a);
                }
            }
        }
    }
}
