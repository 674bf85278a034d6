//! Fast CPU f32 convolution (issue 7, item 1): a direct convolution with an AVX-512
//! register-tile micro-kernel, no im2col matrix.
//!
//! Layout. The input is copied once into a zero-padded buffer (skipped for unpadded stride-1
//! convs over unit-stride rows, e.g. every 1×1 conv), one plane per (image, channel). For stride
//! `s > 1` each padded row is split into `s` phases (`row[j]` goes to phase `j % s`, column
//! `j / s`), so the 16 pixels of an output segment read 16 *contiguous* inputs for every tap.
//! A tap `(ci, kh, kw)` is then one offset `ci·plane + kh·row + (kw % s)·phase + kw / s` from the
//! segment's base `oh·s·row + ow0`, and the conv is a GEMM whose right-hand panel is read in
//! place: `y[co, seg] = bias[co] + Σ_taps w[co, tap] · x[seg + tap]`.
//!
//! Work split: output segments (16 pixels of one output row; the whole plane when it is one
//! long row, as for 1×1 convs) are grouped into tasks of a few output rows, run on rayon;
//! each task runs every block of output channels over its segments, taps blocked so the
//! block's packed weights stay in L1.

use super::avx512::{kernel, Init, Tile};
use super::Padding2d;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// Output channels per register tile of the main kernel, and its segments (16 pixels each).
const CO_MAIN: usize = 8;
const NV_MAIN: usize = 3;
/// Taps per block: the `CO_MAIN × KC` weights of one block (8 KiB) stay in L1.
const KC: usize = 256;
/// Floats past the end of the padded buffer: unmasked loads of a full segment never pass the
/// end, but keep a margin for the `kw / s` shift of the last tap.
const SLACK: usize = 32;

/// Whether the fast path can run on this CPU.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The fast conv as a candle custom op: `apply_op2_no_bwd(x, w)` or `apply_op3_no_bwd(x, w, b)`
/// (f32, NCHW, groups 1, dilation 1; `available()` must hold).
#[derive(Clone, Copy, Debug)]
pub(super) struct FastConv2d {
    pub stride: usize,
    pub pad: Padding2d,
}

impl CustomOp2 for FastConv2d {
    fn name(&self) -> &'static str {
        "sdseg-conv2d"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, None)?;
        Ok((CpuStorage::F32(y), shape))
    }
}

impl CustomOp3 for FastConv2d {
    fn name(&self) -> &'static str {
        "sdseg-conv2d-bias"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = (b.as_slice()?, bl);
        let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, Some(b))?;
        Ok((CpuStorage::F32(y), shape))
    }
}

/// Conv shape, after padding: `n×c×h×w` input, `co×c×kh×kw` weights, `n×co×oh×ow` output.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pad: Padding2d,
    oh: usize,
    ow: usize,
}

/// Where input pixel `(img, ci, padded row r, phase p, column j)` lives:
/// `img·img + ci·ch + r·row + p·phase + j`.
#[derive(Clone, Copy, Debug)]
struct InView {
    img: usize,
    ch: usize,
    row: usize,
    phase: usize,
}

/// 16 output pixels: input base offset within the image, output offset within the plane, mask.
#[derive(Clone, Copy, Debug)]
struct Seg {
    x: usize,
    y: usize,
    mask: u16,
}

/// Raw pointers shared by the rayon tasks, which write disjoint output pixels.
#[derive(Clone, Copy)]
struct Ptrs {
    x: *const f32,
    y: *mut f32,
}
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

impl FastConv2d {
    fn geom(&self, xl: &Layout, wl: &Layout) -> Result<Geom> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, ci, kh, kw) = wl.shape().dims4()?;
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, weight expects {ci}");
        }
        let p = self.pad;
        let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
        if hp < kh || wp < kw || self.stride == 0 {
            candle_core::bail!(
                "conv2d: padded input {hp}×{wp} smaller than kernel {kh}×{kw} (stride {})",
                self.stride
            );
        }
        let s = self.stride;
        Ok(Geom {
            n,
            c,
            h,
            w,
            co,
            kh,
            kw,
            s,
            pad: p,
            oh: (hp - kh) / s + 1,
            ow: (wp - kw) / s + 1,
        })
    }

    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let g = self.geom(xl, wl)?;
        let out_shape = Shape::from((g.n, g.co, g.oh, g.ow));
        let mut y = vec![0f32; g.n * g.co * g.oh * g.ow];
        if y.is_empty() {
            return Ok((y, out_shape));
        }
        let bias = match b {
            None => None,
            Some((b, bl)) => Some(gather_bias(b, bl, g.co)?),
        };
        let wpack = pack_weights(w, wl, &g);

        // Input: in place when unpadded, stride 1 and unit-stride rows; a padded copy otherwise.
        let [xs_n, xs_c, xs_h, xs_w] = strides4(xl);
        let direct = g.pad == Padding2d::default() && g.s == 1 && xs_w == 1;
        // A 1×1 conv over a plane with no row gaps is one long output row.
        let flat = direct && g.kh == 1 && g.kw == 1 && xs_h == g.w;
        let padded;
        let (xbase, view): (&[f32], InView) = if direct {
            let view = InView {
                img: xs_n,
                ch: xs_c,
                row: xs_h,
                phase: 0,
            };
            (&x[xl.start_offset()..], view)
        } else {
            let (buf, view) = pad_input(x, xl, &g);
            padded = buf;
            (&padded[..], view)
        };
        let (rows, cols) = if flat { (1, g.oh * g.ow) } else { (g.oh, g.ow) };
        let segs = segments(rows, cols, g.s * view.row);
        let taps = taps(&g, &view);

        // Tasks: a few output rows each, at least ~4 per thread.
        let threads = rayon::current_num_threads().max(1);
        let segs_per_row = cols.div_ceil(16);
        let total = g.n * segs.len();
        let mut per_task = (24usize).max(segs_per_row.min(48));
        while per_task > NV_MAIN && total.div_ceil(per_task) < 4 * threads {
            per_task = per_task.div_ceil(2);
        }
        let tasks_per_img = segs.len().div_ceil(per_task);
        let ptrs = Ptrs {
            x: xbase.as_ptr(),
            y: y.as_mut_ptr(),
        };
        let y_plane = g.oh * g.ow;
        let blocks = blocks(g.co);
        let ntaps = taps.len();
        (0..g.n * tasks_per_img).into_par_iter().for_each(|t| {
            let (img, part) = (t / tasks_per_img, t % tasks_per_img);
            let segs = &segs[part * per_task..((part + 1) * per_task).min(segs.len())];
            let ptrs = ptrs;
            // SAFETY: offsets stay inside the input view (see `segments`/`taps` and SLACK) and
            // each task writes only its own segments of the output.
            unsafe {
                let x_img = ptrs.x.add(img * view.img);
                let y_img = ptrs.y.add(img * g.co * y_plane);
                for k0 in (0..ntaps).step_by(KC) {
                    let k1 = (k0 + KC).min(ntaps);
                    for &(co0, cob) in &blocks {
                        let init = if k0 > 0 {
                            Init::Accumulate
                        } else if let Some(b) = &bias {
                            Init::Bias(b.as_ptr().add(co0))
                        } else {
                            Init::Zero
                        };
                        let wblk = wpack.as_ptr().add(co0 * ntaps + k0 * cob);
                        let yb = y_img.add(co0 * y_plane);
                        run_block(cob, &taps[k0..k1], wblk, segs, x_img, yb, y_plane, init);
                    }
                }
            }
        });
        Ok((y, out_shape))
    }
}

fn strides4(l: &Layout) -> [usize; 4] {
    let s = l.stride();
    [s[0], s[1], s[2], s[3]]
}

fn gather_bias(b: &[f32], bl: &Layout, co: usize) -> Result<Vec<f32>> {
    if bl.shape().elem_count() != co || bl.dims().len() != 1 {
        candle_core::bail!("conv2d: bias shape {:?}, expected [{co}]", bl.shape());
    }
    let (o, s) = (bl.start_offset(), bl.stride()[0]);
    Ok((0..co).map(|i| b[o + i * s]).collect())
}

/// Output-channel blocks `(first channel, width)`: full `CO_MAIN` blocks, then the remainder.
fn blocks(co: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<_> = (0..co / CO_MAIN).map(|i| (i * CO_MAIN, CO_MAIN)).collect();
    if co % CO_MAIN != 0 {
        v.push((co - co % CO_MAIN, co % CO_MAIN));
    }
    v
}

/// Weights packed per block: `[tap][channel of block]`, block `(co0, cob)` at `co0 · taps`.
fn pack_weights(w: &[f32], wl: &Layout, g: &Geom) -> Vec<f32> {
    let [s0, s1, s2, s3] = strides4(wl);
    let w = &w[wl.start_offset()..];
    let ntaps = g.c * g.kh * g.kw;
    let mut out = vec![0f32; g.co * ntaps];
    for (co0, cob) in blocks(g.co) {
        let dst = &mut out[co0 * ntaps..(co0 + cob) * ntaps];
        let mut i = 0;
        for ci in 0..g.c {
            for kh in 0..g.kh {
                for kw in 0..g.kw {
                    for c in co0..co0 + cob {
                        dst[i] = w[c * s0 + ci * s1 + kh * s2 + kw * s3];
                        i += 1;
                    }
                }
            }
        }
    }
    out
}

/// Copies the input into zero-padded, phase-split planes (see the module docs).
fn pad_input(x: &[f32], xl: &Layout, g: &Geom) -> (Vec<f32>, InView) {
    let [sn, sc, sh, sw] = strides4(xl);
    let x = &x[xl.start_offset()..];
    let (p, s) = (g.pad, g.s);
    let (hp, wp) = (g.h + p.top + p.bottom, g.w + p.left + p.right);
    let ws = wp.div_ceil(s);
    let row = s * ws;
    let ch = hp * row;
    let view = InView {
        img: g.c * ch,
        ch,
        row,
        phase: ws,
    };
    let mut buf = vec![0f32; g.n * g.c * ch + SLACK];
    buf[..g.n * g.c * ch]
        .par_chunks_mut(ch)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, ci) = (plane / g.c, plane % g.c);
            let src = &x[img * sn + ci * sc..];
            for r in 0..g.h {
                let drow = &mut dst[(r + p.top) * row..(r + p.top + 1) * row];
                let srow = &src[r * sh..];
                if s == 1 && sw == 1 {
                    drow[p.left..p.left + g.w].copy_from_slice(&srow[..g.w]);
                } else {
                    for j in 0..g.w {
                        let jp = j + p.left;
                        drow[(jp % s) * ws + jp / s] = srow[j * sw];
                    }
                }
            }
        });
    (buf, view)
}

/// Output segments of one image: rows of `cols` pixels cut in 16s; input rows `in_row` apart.
fn segments(rows: usize, cols: usize, in_row: usize) -> Vec<Seg> {
    let mut v = Vec::with_capacity(rows * cols.div_ceil(16));
    for r in 0..rows {
        for c0 in (0..cols).step_by(16) {
            let len = (cols - c0).min(16);
            v.push(Seg {
                x: r * in_row + c0,
                y: r * cols + c0,
                mask: if len == 16 {
                    u16::MAX
                } else {
                    (1u16 << len) - 1
                },
            });
        }
    }
    v
}

/// Offsets of the taps `(ci, kh, kw)` in packing order.
fn taps(g: &Geom, v: &InView) -> Vec<isize> {
    let mut t = Vec::with_capacity(g.c * g.kh * g.kw);
    for ci in 0..g.c {
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                let off = ci * v.ch + kh * v.row + (kw % g.s) * v.phase + kw / g.s;
                t.push(off as isize);
            }
        }
    }
    t
}

/// Runs one output-channel block over `segs`, in tiles of the kernel's segment count.
///
/// # Safety
/// As for [`kernel`], for every segment.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    cob: usize,
    taps: &[isize],
    w: *const f32,
    segs: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    macro_rules! go {
        ($co:literal, $nv:literal) => {
            run_tiles::<$co, $nv>(taps, w, segs, x, y, y_plane, init)
        };
    }
    match cob {
        8 => go!(8, 3),
        7 => go!(7, 3),
        6 => go!(6, 4),
        5 => go!(5, 4),
        4 => go!(4, 6),
        3 => go!(3, 8),
        2 => go!(2, 8),
        1 => go!(1, 8),
        _ => unreachable!("output-channel block of {cob}"),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles<const CO: usize, const NV: usize>(
    taps: &[isize],
    w: *const f32,
    segs: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    for chunk in segs.chunks(NV) {
        let mut tile = Tile::<NV> {
            x: [x; NV],
            y: [y; NV],
            mask: [0; NV],
        };
        let mut full = chunk.len() == NV;
        for (v, s) in chunk.iter().enumerate() {
            tile.x[v] = x.add(s.x);
            tile.y[v] = y.add(s.y);
            tile.mask[v] = s.mask;
            full &= s.mask == u16::MAX;
        }
        if full {
            kernel::<CO, NV, false>(taps, w, &tile, y_plane, init);
        } else {
            kernel::<CO, NV, true>(taps, w, &tile, y_plane, init);
        }
    }
}
