//! AVX-512 register-tile micro-kernel of the direct convolution (see `cpu.rs` for the data
//! layout). One call computes `CO` output channels × `NV` segments of 16 output pixels over a
//! range of taps, the accumulators never leaving the 32 zmm registers:
//!
//! ```text
//! for tap t:   x_v  = load(x[v] + taps[t])            v < NV       (16 pixels each)
//!              acc[c][v] += broadcast(w[t·CO + c]) · x_v    c < CO
//! ```
//!
//! `TAIL` kernels use masked loads and stores, for chunks holding a partial or an empty segment.

use std::arch::x86_64::*;

use super::cpu::{Init, Tile};

/// # Safety
/// The CPU supports AVX-512F; `w` holds `taps.len() * CO` floats; for every tap `t` and
/// segment `v`, the 16 floats at `x[v] + taps[t]` are readable (only the masked lanes when
/// `TAIL`); `y[v] + c * y_plane` for `c < CO` are 16 writable floats (masked lanes when `TAIL`);
/// a `Init::Bias` pointer holds `CO` floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn kernel<const CO: usize, const NV: usize, const TAIL: bool>(
    taps: &[isize],
    w: *const f32,
    tile: &Tile<NV>,
    y_plane: usize,
    init: Init,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; CO];
    match init {
        Init::Zero => {}
        Init::Bias(b) => {
            for (c, row) in acc.iter_mut().enumerate() {
                // SAFETY: a bias pointer holds `CO` floats (contract), and `c < CO`.
                let bv = _mm512_set1_ps(unsafe { *b.add(c) });
                for a in row.iter_mut() {
                    *a = bv;
                }
            }
        }
        Init::Accumulate => {
            for (c, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    // SAFETY: `y[v] + c·y_plane` starts 16 writable, hence readable, floats
                    // (the masked lanes when `TAIL`, read through the mask) by the contract.
                    *a = unsafe {
                        let p = tile.y[v].add(c * y_plane);
                        if TAIL {
                            _mm512_maskz_loadu_ps(tile.mask[v], p)
                        } else {
                            _mm512_loadu_ps(p)
                        }
                    };
                }
            }
        }
    }
    let mut wp = w;
    for &off in taps {
        let mut xv = [_mm512_setzero_ps(); NV];
        for (v, xr) in xv.iter_mut().enumerate() {
            // SAFETY: the 16 floats at `x[v] + off` are readable (the masked lanes when
            // `TAIL`, read through the mask) by the contract.
            *xr = unsafe {
                let p = tile.x[v].offset(off);
                if TAIL {
                    _mm512_maskz_loadu_ps(tile.mask[v], p)
                } else {
                    _mm512_loadu_ps(p)
                }
            };
        }
        for (c, row) in acc.iter_mut().enumerate() {
            // SAFETY: `wp` is at the current tap of `w`, which holds `CO` floats a tap.
            let wb = _mm512_set1_ps(unsafe { *wp.add(c) });
            for (a, xr) in row.iter_mut().zip(&xv) {
                *a = _mm512_fmadd_ps(wb, *xr, *a);
            }
        }
        // SAFETY: at most one past the end of `w` (`taps.len() · CO` floats).
        wp = unsafe { wp.add(CO) };
    }
    for (c, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: `y[v] + c·y_plane` starts 16 writable floats (only the masked lanes
            // when `TAIL`, written through the mask) by the contract.
            unsafe {
                let p = tile.y[v].add(c * y_plane);
                if TAIL {
                    _mm512_mask_storeu_ps(p, tile.mask[v], *a);
                } else {
                    _mm512_storeu_ps(p, *a);
                }
            }
        }
    }
}
