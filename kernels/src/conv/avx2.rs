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
/// The CPU supports AVX2 and FMA; `CO <= 8`, `NV <= 4`; `w` holds `taps.len() * w_stride`
/// floats, `w_stride >= CO`; for every tap `t` and segment `v`, the 16 floats at
/// `x[v] + taps[t]` are readable (only the masked lanes when `TAIL`); `y[v] + c * y_plane` for
/// `c < CO` are 16 writable floats (masked lanes when `TAIL`); a `Init::Bias` pointer holds
/// `CO` floats.
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
    // Half `$h` of segment `$v` from `$p`, its start. The second half's pointer is formed with
    // `wrapping_add`: in a partial segment it may lie past the end of the buffer, and then its
    // mask is empty and nothing is read there.
    macro_rules! load {
        ($p:expr, $v:expr, $h:expr) => {{
            let q = $p.wrapping_add(8 * $h);
            if TAIL {
                _mm256_maskload_ps(q, mask[$v][$h])
            } else {
                _mm256_loadu_ps(q)
            }
        }};
    }
    let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; CO];
    match init {
        Init::Zero => {}
        Init::Bias(b) => {
            for (c, row) in acc.iter_mut().enumerate() {
                // SAFETY: a bias pointer holds `CO` floats (contract), and `c < CO`.
                let bv = _mm256_set1_ps(unsafe { *b.add(c) });
                for a in row.iter_mut() {
                    *a = [bv; 2];
                }
            }
        }
        Init::Accumulate => {
            for (c, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    // SAFETY: `y[v] + c·y_plane` starts 16 writable, hence readable, floats
                    // (the masked lanes when `TAIL`, read through the masks) by the contract.
                    unsafe {
                        let p = tile.y[v].add(c * y_plane);
                        for (h, ah) in a.iter_mut().enumerate() {
                            *ah = load!(p, v, h);
                        }
                    }
                }
            }
        }
    }
    let mut wp = w;
    for &off in taps {
        let mut xv = [[_mm256_setzero_ps(); 2]; NV];
        for (v, xr) in xv.iter_mut().enumerate() {
            // SAFETY: the 16 floats at `x[v] + off` are readable (the masked lanes when
            // `TAIL`, read through the masks) by the contract.
            unsafe {
                let p = tile.x[v].offset(off);
                for (h, xh) in xr.iter_mut().enumerate() {
                    *xh = load!(p, v, h);
                }
            }
        }
        for (c, row) in acc.iter_mut().enumerate() {
            // SAFETY: `wp` is at tap `t` of `w`, which holds `w_stride >= CO` floats a tap.
            let wb = _mm256_set1_ps(unsafe { *wp.add(c) });
            for (a, xr) in row.iter_mut().zip(&xv) {
                for (ah, xh) in a.iter_mut().zip(xr) {
                    *ah = _mm256_fmadd_ps(wb, *xh, *ah);
                }
            }
        }
        wp = wp.wrapping_add(w_stride);
    }
    for (c, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: `y[v] + c·y_plane` starts 16 writable floats (only the masked lanes when
            // `TAIL`, written through the masks) by the contract; as in `load!`, the second
            // half's pointer may lie past the buffer only when its mask is empty.
            unsafe {
                let p = tile.y[v].add(c * y_plane);
                for (h, ah) in a.iter().enumerate() {
                    let q = p.wrapping_add(8 * h);
                    if TAIL {
                        _mm256_maskstore_ps(q, mask[v][h], *ah);
                    } else {
                        _mm256_storeu_ps(q, *ah);
                    }
                }
            }
        }
    }
}
