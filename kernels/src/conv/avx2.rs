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

/// `*p` in all lanes. Through `_mm_load_ss`, not `*p` or `read_unaligned`, whose debug-build
/// checks (alignment, overlap) would cost more than the FMAs of a tap at opt-level 1.
#[target_feature(enable = "avx2,fma")]
unsafe fn broadcast(p: *const f32) -> __m256 {
    _mm256_broadcastss_ps(_mm_load_ss(p))
}

/// `unroll!(i in [0, 1, ...] => body)`: `body` once per listed value of `i`, as straight-line
/// code. The kernel's loops over channels, segments and halves are written with it (each body
/// guarded by `if i < CO` etc.) so that the accumulators are constant-indexed locals that
/// LLVM keeps in registers even at opt-level 1 (the dev profile): plain `for` loops over the
/// const-generic arrays are only unrolled at opt-level 2+, and the kernel then runs ~8× slower.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] => $body:expr) => {
        $({
            let $i: usize = $n;
            $body;
        })*
    };
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
    // Raw-pointer arithmetic below is `wrapping_*` and loads are unaligned: no debug-build
    // precondition checks inside the tap loop (every pointer is in bounds per the contract).
    // Lane masks of the (segment, half) vectors; unused unless `TAIL`.
    let mut mask = [[_mm256_setzero_si256(); 2]; NV];
    if TAIL {
        unroll!(v in [0, 1, 2, 3] => if v < NV {
            mask[v] = lane_masks(tile.mask[v]);
        });
    }
    // A macro, not a closure: nothing to inline at opt-level 1.
    macro_rules! load {
        ($p:expr, $v:expr, $h:expr) => {
            if TAIL {
                _mm256_maskload_ps($p, mask[$v][$h])
            } else {
                _mm256_loadu_ps($p)
            }
        };
    }
    let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; CO];
    match init {
        Init::Zero => {}
        Init::Bias(b) => {
            unroll!(c in [0, 1, 2, 3, 4, 5, 6, 7] => if c < CO {
                let bv = broadcast(b.wrapping_add(c));
                unroll!(v in [0, 1, 2, 3] => if v < NV {
                    acc[c][v] = [bv; 2];
                });
            });
        }
        Init::Accumulate => {
            unroll!(c in [0, 1, 2, 3, 4, 5, 6, 7] => if c < CO {
                unroll!(v in [0, 1, 2, 3] => if v < NV {
                    let p = tile.y[v].wrapping_add(c * y_plane);
                    unroll!(h in [0, 1] => {
                        acc[c][v][h] = load!(p.wrapping_add(8 * h), v, h);
                    });
                });
            });
        }
    }
    let mut wp = w;
    for &off in taps {
        let mut xv = [[_mm256_setzero_ps(); 2]; NV];
        unroll!(v in [0, 1, 2, 3] => if v < NV {
            let p = tile.x[v].wrapping_offset(off);
            unroll!(h in [0, 1] => {
                xv[v][h] = load!(p.wrapping_add(8 * h), v, h);
            });
        });
        unroll!(c in [0, 1, 2, 3, 4, 5, 6, 7] => if c < CO {
            let wb = broadcast(wp.wrapping_add(c));
            unroll!(v in [0, 1, 2, 3] => if v < NV {
                unroll!(h in [0, 1] => {
                    acc[c][v][h] = _mm256_fmadd_ps(wb, xv[v][h], acc[c][v][h]);
                });
            });
        });
        wp = wp.wrapping_add(w_stride);
    }
    unroll!(c in [0, 1, 2, 3, 4, 5, 6, 7] => if c < CO {
        unroll!(v in [0, 1, 2, 3] => if v < NV {
            let p = tile.y[v].wrapping_add(c * y_plane);
            unroll!(h in [0, 1] => {
                let q = p.wrapping_add(8 * h);
                if TAIL {
                    _mm256_maskstore_ps(q, mask[v][h], acc[c][v][h]);
                } else {
                    _mm256_storeu_ps(q, acc[c][v][h]);
                }
            });
        });
    });
}
