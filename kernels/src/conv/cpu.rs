//! Fast CPU f32 convolution (issue 7, item 1): a direct convolution with a register-tile
//! micro-kernel (AVX-512, `avx512.rs`, or AVX2 + FMA, `avx2.rs`), no im2col matrix.
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

use super::{avx2, avx512, gather_bias, CpuKernel, Padding2d};
use crate::SendPtr;
use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;

/// AVX-512: output channels per register tile of the main kernel (and per packed weight
/// block), and its segments (16 pixels each).
const CO_512: usize = 8;
const NV_512: usize = 3;
/// AVX2: output channels per packed weight block, run as `CO_2 / CO_2K` kernels of `CO_2K`
/// channels × `NV_2K` segments, over chunks of `NV_2` segments.
const CO_2: usize = 6;
const CO_2K: usize = 6;
const NV_2K: usize = 1;
const NV_2: usize = 3;
/// Floats past the end of the padded buffer: unmasked loads of a full segment never pass the
/// end, but keep a margin for the `kw / s` shift of the last tap.
const SLACK: usize = 32;

/// How the accumulators start: from the bias (first tap block), from zero (no bias), or from
/// what an earlier tap block left in the output.
#[derive(Clone, Copy, Debug)]
pub(super) enum Init {
    Bias(*const f32),
    Zero,
    Accumulate,
}

impl Init {
    /// The same start for the channels from `by` on.
    ///
    /// # Safety
    /// A moved bias pointer stays inside the bias.
    unsafe fn offset(self, by: usize) -> Init {
        match self {
            // SAFETY: the caller keeps the moved pointer inside the bias.
            Init::Bias(b) => Init::Bias(unsafe { b.add(by) }),
            other => other,
        }
    }
}

/// The `NV` segments of one tile: input base pointer (tap offsets are added to it; `T`: f32
/// planes, or the AVX512-BF16 level's `u32` bf16-pair band), output pointer at the tile's
/// first channel, and the lane mask of each segment.
pub(super) struct Tile<const NV: usize, T = f32> {
    pub x: [*const T; NV],
    pub y: [*mut f32; NV],
    pub mask: [u16; NV],
}

/// The fast conv as a candle custom op: `apply_op2_no_bwd(x, w)` or `apply_op3_no_bwd(x, w, b)`
/// (f32, NCHW, groups 1, dilation 1; the CPU runs `kernel`).
#[derive(Clone, Copy, Debug)]
pub(super) struct FastConv2d {
    pub stride: usize,
    pub pad: Padding2d,
    pub kernel: CpuKernel,
}

/// Output channels per packed weight block (the full blocks [`main_tile`] runs).
pub(super) fn co_main(k: CpuKernel) -> usize {
    match k {
        CpuKernel::Avx512 => CO_512,
        CpuKernel::Avx2Fma => CO_2,
    }
}

/// Segments per chunk of [`main_tile`]: its input stays in L1 while every block runs over it.
fn nv_main(k: CpuKernel) -> usize {
    match k {
        CpuKernel::Avx512 => NV_512,
        CpuKernel::Avx2Fma => NV_2,
    }
}

super::cpu_conv_ops!(FastConv2d, "sdseg-conv2d");

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

/// Where input pixel `(ci, row r, phase p, column j)` lives: `ci·ch + r·row + p·phase + j`.
#[derive(Clone, Copy, Debug)]
struct InView {
    ch: usize,
    row: usize,
    phase: usize,
}

/// 16 output pixels: input base offset within the image, output offset within the plane, mask.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seg {
    pub x: usize,
    pub y: usize,
    pub mask: u16,
}

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
        let k = self.kernel;
        if !k.available() {
            candle_core::bail!("conv2d: this CPU cannot run {k:?}");
        }
        let (co_main, nv_main) = (co_main(k), nv_main(k));
        let wpack = pack_weights(w, wl, &g, co_main);
        let plan = Plan::new(&g, xl, rayon::current_num_threads().max(1), nv_main);
        let yptr = SendPtr(y.as_mut_ptr());
        let xs = strides4(xl);
        let x = &x[xl.start_offset()..];
        let (y_plane, kk) = (g.oh * g.ow, g.kh * g.kw);
        let ntaps = g.c * kk;
        (0..g.n * plan.tasks_per_img).into_par_iter().for_each(|t| {
            let (img, part) = (t / plan.tasks_per_img, t % plan.tasks_per_img);
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                // SAFETY: the CPU runs `k` (checked above); offsets stay inside the input view
                // or the scratch band (see `Plan`, `segments`, `taps`) and each task writes
                // only its own output pixels, into `y`, which outlives the tasks.
                unsafe {
                    let x_img = x.as_ptr().add(img * xs[0]);
                    let mut y_task = yptr.get().add(img * g.co * y_plane);
                    let (segs, x_task, r0) = match plan.src {
                        Source::Flat => {
                            let a = part * plan.segs_per_task;
                            let b = (a + plan.segs_per_task).min(plan.segs.len());
                            (&plan.segs[a..b], x_img, 0)
                        }
                        Source::Direct | Source::Band => {
                            let r0 = part * plan.rows_per_task;
                            let r1 = (r0 + plan.rows_per_task).min(g.oh);
                            y_task = y_task.add(r0 * g.ow);
                            let n = (r1 - r0) * g.ow.div_ceil(16);
                            (&plan.segs[..n], x_img.add(r0 * g.s * xs[2]), r0)
                        }
                    };
                    if plan.src == Source::Band && scratch.len() < plan.scratch_len() {
                        scratch.resize(plan.scratch_len(), 0.0);
                    }
                    for c0 in (0..g.c).step_by(plan.cb) {
                        let cn = plan.cb.min(g.c - c0);
                        let x_k = if plan.src == Source::Band {
                            let rows = (segs.len() / g.ow.div_ceil(16) - 1) * g.s + g.kh;
                            fill_band(&mut scratch, x, xs, &g, &plan, img, c0, cn, r0 * g.s, rows);
                            scratch.as_ptr()
                        } else {
                            x_task.add(c0 * xs[1])
                        };
                        let (k0, taps) = (c0 * kk, &plan.taps[..cn * kk]);
                        let init = |co0: usize| {
                            if c0 > 0 {
                                Init::Accumulate
                            } else if let Some(b) = &bias {
                                Init::Bias(b.as_ptr().add(co0))
                            } else {
                                Init::Zero
                            }
                        };
                        // Full blocks: each tile of input segments (in L1) meets every
                        // block's weights, which stream from L2.
                        for chunk in segs.chunks(nv_main) {
                            for co0 in (0..g.co / co_main).map(|blk| blk * co_main) {
                                let w = wpack.as_ptr().add(co0 * ntaps + k0 * co_main);
                                let yb = y_task.add(co0 * y_plane);
                                main_tile(k, taps, w, chunk, x_k, yb, y_plane, init(co0));
                            }
                        }
                        let rest = g.co % co_main;
                        if rest > 0 {
                            let co0 = g.co - rest;
                            let w = wpack.as_ptr().add(co0 * ntaps + k0 * rest);
                            let yb = y_task.add(co0 * y_plane);
                            run_block(k, rest, taps, w, segs, x_k, yb, y_plane, init(co0));
                        }
                    }
                }
            })
        });
        Ok((y, out_shape))
    }
}

thread_local! {
    /// Per-thread band of padded input (reused across calls: no page faults per conv).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where a task's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// In place, one long output row per plane (unpadded stride-1 1×1 over gap-free planes).
    Flat,
    /// In place, row by row (unpadded, stride 1, unit-stride rows).
    Direct,
    /// Copied per task and channel block into a zero-padded, phase-split scratch band.
    Band,
}

/// How one conv call is cut into tasks and channel blocks.
struct Plan {
    src: Source,
    /// Strides the taps index: the input's, or the scratch band's.
    view: InView,
    /// Output rows per task (Direct, Band) or segments per task (Flat).
    rows_per_task: usize,
    segs_per_task: usize,
    tasks_per_img: usize,
    /// Input channels per block: one block's slice of a tile's input stays in L1.
    cb: usize,
    /// Padded input rows in a band of `rows_per_task` output rows.
    band_rows: usize,
    /// Segments of one task (Direct, Band: the first `rows_per_task` rows) or of the plane.
    segs: Vec<Seg>,
    /// Tap offsets of the first `cb` channels, relative to the block's first channel.
    taps: Vec<isize>,
}

/// Cache budgets of the blocking, from this CPU's L1d and L2 sizes (Linux sysfs, read once):
/// `l1_input` bytes of a tile's input per channel block stay in L1 (60 % of L1d);
/// `l2_output` bytes of a task's output tile and `l2_weights` bytes of one channel block's
/// packed weights for all output channels stay in L2 (3/8 and 1/2 of it). Measured on a 48 KiB
/// L1d / 2 MiB L2 Xeon, full-size f32 model: 6–8 % faster per slice than the fixed 16 / 256 /
/// 512 KiB tuned on Zen 4 (32 KiB / 1 MiB), which stay the fallback.
#[derive(Clone, Copy, Debug)]
pub(super) struct CacheBudget {
    /// L2 bytes (per core).
    pub l2: usize,
    pub l1_input: usize,
    pub l2_output: usize,
    pub l2_weights: usize,
}

pub(super) fn cache_budget() -> CacheBudget {
    static BUDGET: std::sync::OnceLock<CacheBudget> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let (l1, l2) = (cache_size(1, "Data"), cache_size(2, "Unified"));
        CacheBudget {
            l2: l2.unwrap_or(1024 * 1024),
            l1_input: l1.map_or(16 * 1024, |b| b * 3 / 5),
            l2_output: l2.map_or(256 * 1024, |b| b * 3 / 8),
            l2_weights: l2.map_or(512 * 1024, |b| b / 2),
        }
    })
}

/// Bytes of CPU 0's cache of `level` and `kind` ("Data", "Unified"), from sysfs; `None` when
/// unknown or implausible (outside 16 KiB ..= 64 MiB).
fn cache_size(level: u32, kind: &str) -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let idx = dir.join(format!("index{i}"));
        let read = |f: &str| std::fs::read_to_string(idx.join(f)).ok();
        let lvl: u32 = read("level")?.trim().parse().ok()?;
        if lvl != level || read("type")?.trim() != kind {
            return None;
        }
        let size = read("size")?;
        let size = size.trim();
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok()? * 1024,
            None => match size.strip_suffix('M') {
                Some(m) => m.parse::<usize>().ok()? * 1024 * 1024,
                None => size.parse().ok()?,
            },
        };
        (16 * 1024..=64 * 1024 * 1024)
            .contains(&bytes)
            .then_some(bytes)
    })
}

impl Plan {
    /// `nv`: segments per chunk of [`main_tile`].
    fn new(g: &Geom, xl: &Layout, threads: usize, nv: usize) -> Plan {
        let [_, xs_c, xs_h, xs_w] = strides4(xl);
        let unpadded = g.pad == Padding2d::default() && g.s == 1 && xs_w == 1;
        let src = if unpadded && g.kh == 1 && g.kw == 1 && xs_h == g.w {
            Source::Flat
        } else if unpadded {
            Source::Direct
        } else {
            Source::Band
        };
        let kk = g.kh * g.kw;
        // Cache lines a tile reads per input channel: kh rows × phases × (NV + 1) lines.
        let lines = match src {
            Source::Flat => nv,
            _ => g.kh * g.s.min(g.kw) * (nv + 1 + (g.kw - 1) / g.s / 16),
        };
        let budget = cache_budget();
        let cb = (budget.l1_input / (lines * 64))
            .min(budget.l2_weights / (4 * g.co * kk))
            .clamp(1, g.c);

        // A task's output tile (all channels) stays in L2 while the channel blocks add into it.
        let min_tasks = 4 * threads;
        let mut rows_per_task = (budget.l2_output / (4 * g.co * g.ow)).clamp(1, 8).min(g.oh);
        while rows_per_task > 1 && g.n * g.oh.div_ceil(rows_per_task) < min_tasks {
            rows_per_task /= 2;
        }
        let plane_segs = (g.oh * g.ow).div_ceil(16);
        let mut segs_per_task = (budget.l2_output / (64 * g.co) / 24 * 24)
            .max(24)
            .min(plane_segs);
        while segs_per_task > nv && g.n * plane_segs.div_ceil(segs_per_task) < min_tasks {
            segs_per_task = segs_per_task.div_ceil(2);
        }
        let band_rows = (rows_per_task - 1) * g.s + g.kh;
        let ws = (g.w + g.pad.left + g.pad.right).div_ceil(g.s);
        let view = match src {
            Source::Flat | Source::Direct => InView {
                ch: xs_c,
                row: xs_h,
                phase: 0,
            },
            Source::Band => InView {
                ch: band_rows * g.s * ws,
                row: g.s * ws,
                phase: ws,
            },
        };
        let (segs, tasks_per_img) = match src {
            Source::Flat => (
                segments(1, g.oh * g.ow, 0),
                plane_segs.div_ceil(segs_per_task),
            ),
            _ => (
                segments(rows_per_task, g.ow, g.s * view.row),
                g.oh.div_ceil(rows_per_task),
            ),
        };
        let taps = taps(g, &view, cb);
        Plan {
            src,
            view,
            rows_per_task,
            segs_per_task,
            tasks_per_img,
            cb,
            band_rows,
            segs,
            taps,
        }
    }

    fn scratch_len(&self) -> usize {
        self.cb * self.view.ch + SLACK
    }
}

/// Copies padded input rows `pr0 .. pr0 + rows` of channels `c0 .. c0 + cn` of image `img`
/// into the scratch band, zero padding included, each row split into `s` phases.
#[allow(clippy::too_many_arguments)]
fn fill_band(
    dst: &mut [f32],
    x: &[f32],
    xs: [usize; 4],
    g: &Geom,
    plan: &Plan,
    img: usize,
    c0: usize,
    cn: usize,
    pr0: usize,
    rows: usize,
) {
    let v = plan.view;
    let (p, s, ws) = (g.pad, g.s, v.phase);
    debug_assert!(rows <= plan.band_rows);
    for ci in 0..cn {
        let src = &x[img * xs[0] + (c0 + ci) * xs[1]..];
        for r in 0..rows {
            let drow = &mut dst[ci * v.ch + r * v.row..ci * v.ch + (r + 1) * v.row];
            let pr = pr0 + r;
            if pr < p.top || pr >= p.top + g.h {
                drow.fill(0.0);
                continue;
            }
            let srow = &src[(pr - p.top) * xs[2]..];
            if s == 1 {
                drow[..p.left].fill(0.0);
                if xs[3] == 1 {
                    drow[p.left..p.left + g.w].copy_from_slice(&srow[..g.w]);
                } else {
                    for j in 0..g.w {
                        drow[p.left + j] = srow[j * xs[3]];
                    }
                }
                drow[p.left + g.w..].fill(0.0);
            } else if s == 2 && xs[3] == 1 {
                // Even columns go to phase `left % 2`, odd ones to the other, from column
                // `left / 2` resp. `(left + 1) / 2` (written as a deinterleave LLVM vectorises).
                drow.fill(0.0);
                let (pe, po) = (p.left % 2, (p.left + 1) % 2);
                let (ce, co) = (pe * ws + p.left / 2, po * ws + p.left.div_ceil(2));
                let half = g.w / 2;
                let (ev, od) = if pe == 0 {
                    let (a, b) = drow.split_at_mut(ws);
                    (
                        &mut a[ce..ce + half + g.w % 2],
                        &mut b[co - ws..co - ws + half],
                    )
                } else {
                    let (a, b) = drow.split_at_mut(ws);
                    (
                        &mut b[ce - ws..ce - ws + half + g.w % 2],
                        &mut a[co..co + half],
                    )
                };
                for ((e, o), pair) in ev.iter_mut().zip(od.iter_mut()).zip(srow.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if g.w % 2 == 1 {
                    ev[half] = srow[g.w - 1];
                }
            } else {
                drow.fill(0.0);
                for j in 0..g.w {
                    let jp = j + p.left;
                    drow[(jp % s) * ws + jp / s] = srow[j * xs[3]];
                }
            }
        }
    }
}

fn strides4(l: &Layout) -> [usize; 4] {
    let s = l.stride();
    [s[0], s[1], s[2], s[3]]
}

/// Output-channel blocks `(first channel, width)`: full `main` blocks, then the remainder.
fn blocks(co: usize, main: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<_> = (0..co / main).map(|i| (i * main, main)).collect();
    if !co.is_multiple_of(main) {
        v.push((co - co % main, co % main));
    }
    v
}

/// Weights packed per block of `main` channels: `[tap][channel of block]`, block `(co0, cob)`
/// at `co0 · taps`.
fn pack_weights(w: &[f32], wl: &Layout, g: &Geom, main: usize) -> Vec<f32> {
    let [s0, s1, s2, s3] = strides4(wl);
    let w = &w[wl.start_offset()..];
    let ntaps = g.c * g.kh * g.kw;
    let mut out = vec![0f32; g.co * ntaps];
    for (co0, cob) in blocks(g.co, main) {
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

/// Offsets of the taps `(ci, kh, kw)`, `ci < cb`, in packing order.
fn taps(g: &Geom, v: &InView, cb: usize) -> Vec<isize> {
    let mut t = Vec::with_capacity(cb * g.kh * g.kw);
    for ci in 0..cb {
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                let off = ci * v.ch + kh * v.row + (kw % g.s) * v.phase + kw / g.s;
                t.push(off as isize);
            }
        }
    }
    t
}

/// Runs a full block of `co_main(k)` channels (weights packed `[tap][channel]`) over the
/// (at most `nv_main(k)`) segments of `chunk`.
///
/// # Safety
/// As for the kernels (`avx512::kernel`, `avx2::kernel`), for every segment of `chunk`; the
/// CPU runs `k`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn main_tile(
    k: CpuKernel,
    taps: &[isize],
    w: *const f32,
    chunk: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    match k {
        // SAFETY: the caller's contract is the kernel's, and the chunk has at most `NV_512`
        // segments.
        CpuKernel::Avx512 => unsafe {
            let (tile, tail) = tile::<NV_512, _>(chunk, x, y);
            if tail {
                avx512::kernel::<CO_512, NV_512, true>(taps, w, &tile, y_plane, init);
            } else {
                avx512::kernel::<CO_512, NV_512, false>(taps, w, &tile, y_plane, init);
            }
        },
        CpuKernel::Avx2Fma => {
            for c0 in (0..CO_2).step_by(CO_2K) {
                // SAFETY: the caller's contract for the block's channels `c0 .. c0 + CO_2K`:
                // weights (`CO_2` floats a tap), output planes and bias move on by `c0`.
                unsafe {
                    tiles_avx2::<CO_2K, NV_2K>(
                        taps,
                        w.add(c0),
                        CO_2,
                        chunk,
                        x,
                        y.add(c0 * y_plane),
                        y_plane,
                        init.offset(c0),
                    );
                }
            }
        }
    }
}

/// Runs one output-channel block of `cob < co_main(k)` channels over `segs`, in tiles of the
/// kernel's segment count.
///
/// # Safety
/// As for the kernels (`avx512::kernel`, `avx2::kernel`), for every segment of `segs`; the
/// CPU runs `k`; `1 <= cob < co_main(k)`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_block(
    k: CpuKernel,
    cob: usize,
    taps: &[isize],
    w: *const f32,
    segs: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    if k == CpuKernel::Avx512 {
        macro_rules! go {
            ($co:literal, $nv:literal) => {
                // SAFETY: the caller's contract is the kernel's, for a block of `$co = cob`
                // channels.
                unsafe { tiles_avx512::<$co, $nv>(taps, w, segs, x, y, y_plane, init) }
            };
        }
        match cob {
            7 => go!(7, 3),
            6 => go!(6, 4),
            5 => go!(5, 4),
            4 => go!(4, 6),
            3 => go!(3, 8),
            2 => go!(2, 8),
            1 => go!(1, 8),
            _ => unreachable!("output-channel block of {cob}"),
        }
        return;
    }
    // AVX2: `2·CO·NV + 2·NV + 1 <= 16` ymm registers; channels `c0..c0 + CO` of the block.
    macro_rules! go {
        ($co:literal, $nv:literal, $c0:literal) => {
            // SAFETY: the caller's contract for channels `$c0 .. $c0 + $co` of the block of
            // `cob`: weights (`cob` floats a tap), output planes and bias move on by `$c0`.
            unsafe {
                tiles_avx2::<$co, $nv>(
                    taps,
                    w.add($c0),
                    cob,
                    segs,
                    x,
                    y.add($c0 * y_plane),
                    y_plane,
                    init.offset($c0),
                )
            }
        };
    }
    match cob {
        7 => {
            go!(4, 1, 0);
            go!(3, 1, 4);
        }
        6 => go!(6, 1, 0),
        5 => go!(5, 1, 0),
        4 => go!(4, 1, 0),
        3 => go!(3, 1, 0),
        2 => go!(2, 2, 0),
        1 => go!(1, 3, 0),
        _ => unreachable!("output-channel block of {cob}"),
    }
}

/// The AVX-512 kernel of `CO` channels over `segs`, `NV` segments at a time.
///
/// # Safety
/// As for `avx512::kernel`, for every segment of `segs`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx512<const CO: usize, const NV: usize>(
    taps: &[isize],
    w: *const f32,
    segs: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    for chunk in segs.chunks(NV) {
        // SAFETY: the caller's contract covers every segment, so every tile of them.
        unsafe {
            let (tile, tail) = tile::<NV, _>(chunk, x, y);
            if tail {
                avx512::kernel::<CO, NV, true>(taps, w, &tile, y_plane, init);
            } else {
                avx512::kernel::<CO, NV, false>(taps, w, &tile, y_plane, init);
            }
        }
    }
}

/// The AVX2 kernel of `CO` channels over `segs`, `NV` segments at a time. `w_stride`: floats
/// per tap of the packed block `w` points into.
///
/// # Safety
/// As for `avx2::kernel`, for every segment of `segs`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx2<const CO: usize, const NV: usize>(
    taps: &[isize],
    w: *const f32,
    w_stride: usize,
    segs: &[Seg],
    x: *const f32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    for chunk in segs.chunks(NV) {
        // SAFETY: the caller's contract covers every segment, so every tile of them.
        unsafe {
            let (tile, tail) = tile::<NV, _>(chunk, x, y);
            if tail {
                avx2::kernel::<CO, NV, true>(taps, w, w_stride, &tile, y_plane, init);
            } else {
                avx2::kernel::<CO, NV, false>(taps, w, w_stride, &tile, y_plane, init);
            }
        }
    }
}

/// The tile of up to `NV` segments (missing ones get an empty mask), and whether it needs the
/// masked kernel.
///
/// # Safety
/// The segments lie inside the image's input view (or band) and output planes.
pub(super) unsafe fn tile<const NV: usize, T>(
    chunk: &[Seg],
    x: *const T,
    y: *mut f32,
) -> (Tile<NV, T>, bool) {
    let mut tile = Tile::<NV, T> {
        x: [x; NV],
        y: [y; NV],
        mask: [0; NV],
    };
    let mut full = chunk.len() == NV;
    for (v, s) in chunk.iter().enumerate() {
        // SAFETY: the segment lies inside the input view and the output planes (contract).
        (tile.x[v], tile.y[v]) = unsafe { (x.add(s.x), y.add(s.y)) };
        tile.mask[v] = s.mask;
        full &= s.mask == u16::MAX;
    }
    (tile, !full)
}
