//! Convolutions as one matrix product per image (issue 7, item 1):
//! `y[n] = W [O, C·kh·kw] · cols(x[n]) [C·kh·kw, OH·OW] + b`, with the `gemm` crate (what
//! candle's `matmul` runs on the CPU), the bias written into the output first and accumulated
//! onto (`read_dst`), so no separate broadcast-add pass.
//!
//! Two uses. A 1×1 conv (stride 1, unpadded) is a plain GEMM with a long, contiguous right-hand
//! side, `cols(x) = x`: `gemm`'s packed, cache-blocked kernel beats the direct kernel of
//! `cpu.rs` there. And any conv on a small output plane (the UNet's 8×8 … 2×2 levels): there
//! the direct kernel wastes most of its 16-pixel vectors and re-packs megabytes of weights per
//! call for little arithmetic, while the product reads the weights once, in place, and the
//! im2col copy of a small plane is cheap.

use super::Padding2d;
use candle_core::{Layout, Result, Shape};
use std::cell::RefCell;

/// Output planes up to this many pixels go through the product rather than the direct kernel
/// (full-size UNet, f32, batch 1 / 4: 64 → 557 / – ms, 256 → 532 / 481 ms, 1024 → 569 / 545 ms).
pub(super) const SMALL_PLANE: usize = 256;

/// The op: `apply_op2_no_bwd(x, w)` or `apply_op3_no_bwd(x, w, b)` for contiguous f32 `x`
/// [N, C, H, W], `w` [O, C, kh, kw] (any strides; contiguous per output channel unless 1×1),
/// `b` [O].
#[derive(Clone, Copy, Debug)]
pub(super) struct GemmConv {
    pub stride: usize,
    pub pad: Padding2d,
}

thread_local! {
    /// im2col buffer (reused across calls).
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl GemmConv {
    /// Whether the op takes a conv with these weight dims: 1×1, or weights whose `(c, kh, kw)`
    /// block is contiguous per output channel (the checkpoint layout).
    pub fn takes(wl: &Layout) -> bool {
        let d = wl.dims();
        let st = wl.stride();
        d.len() == 4
            && ((d[2] == 1 && d[3] == 1) || (st[3] == 1 && st[2] == d[3] && st[1] == d[2] * d[3]))
    }

    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("conv2d 1x1: expects a contiguous input");
        };
        let x = &x[x0..x1];
        let (n, c, h, wd) = xl.shape().dims4()?;
        let (o, ci, kh, kw) = wl.shape().dims4()?;
        let (s, pd) = (self.stride, self.pad);
        let (hp, wp) = (h + pd.top + pd.bottom, wd + pd.left + pd.right);
        if ci != c || !Self::takes(wl) || s == 0 || hp < kh || wp < kw {
            candle_core::bail!(
                "conv2d gemm: input {:?}, weight {:?} (strides {:?}), stride {s}",
                xl.dims(),
                wl.dims(),
                wl.stride()
            );
        }
        let (oh, ow) = ((hp - kh) / s + 1, (wp - kw) / s + 1);
        let direct = kh == 1 && kw == 1 && s == 1 && pd == Padding2d::default();
        let p = oh * ow;
        let k = c * kh * kw;
        let out_shape = Shape::from((n, o, oh, ow));
        let mut y = vec![0f32; n * o * p];
        if y.is_empty() {
            return Ok((y, out_shape));
        }
        let read_dst = match b {
            None => false,
            Some((b, bl)) => {
                let b = super::gather_bias(b, bl, o)?;
                for (r, row) in y.chunks_exact_mut(p).enumerate() {
                    row.fill(b[r % o]);
                }
                true
            }
        };
        let ws = wl.stride();
        let w = &w[wl.start_offset()..];
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        if c == 0 {
            return Ok((y, out_shape));
        }
        // Stride of the reduction index in the weights: `c` for 1×1, else 1 (contiguous block).
        let wk = if kh == 1 && kw == 1 { ws[1] } else { 1 };
        COLS.with(|cols| {
            let mut cols = cols.borrow_mut();
            for (yi, xi) in y.chunks_exact_mut(o * p).zip(x.chunks_exact(c * h * wd)) {
                let rhs = if direct {
                    xi
                } else {
                    cols.resize(k * p, 0.0);
                    im2col(xi, (c, h, wd), (kh, kw), s, pd, (oh, ow), &mut cols);
                    &cols[..]
                };
                // SAFETY: dst is [o, p] row-major inside `yi`, lhs [o, k] with strides
                // (ws[0], wk) inside `w` (its layout spans every (o, k)), rhs [k, p] row-major
                // inside `rhs`.
                unsafe {
                    gemm::gemm(
                        o,
                        p,
                        k,
                        yi.as_mut_ptr(),
                        1,
                        p as isize,
                        read_dst,
                        w.as_ptr(),
                        wk as isize,
                        ws[0] as isize,
                        rhs.as_ptr(),
                        1,
                        p as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
        });
        Ok((y, out_shape))
    }
}

/// `cols[(ci·kh + i)·kw + j][oy·ow + ox] = x[ci][oy·s + i − top][ox·s + j − left]` (0 outside).
fn im2col(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    pd: Padding2d,
    (oh, ow): (usize, usize),
    cols: &mut [f32],
) {
    let p = oh * ow;
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut cols[((ci * kh + i) * kw + j) * p..][..p];
                for oy in 0..oh {
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    let iy = (oy * s + i) as isize - pd.top as isize;
                    if iy < 0 || iy >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * s + j) as isize - pd.left as isize;
                        *d = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        }
    }
}

super::cpu_conv_ops!(GemmConv, "sdseg-conv-gemm");
