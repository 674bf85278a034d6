//! bf16 convolutions with AVX512-BF16's `vdpbf16ps` (issue 18): `--dtype bf16` / `bf16-fast`
//! on CPUs with AVX512-BF16 and no AMX (AMD Zen 4/5, Intel Cooper Lake), and on AMX machines
//! when AMX is switched off. The level below AMX (`amx.rs`) and above the f32 micro-kernels.
//!
//! `vdpbf16ps acc, a, b` multiplies adjacent bf16 *pairs*: lane `l` adds
//! `a[2l]·b[2l] + a[2l+1]·b[2l+1]` to `acc[l]` in f32. Here a lane is an output pixel, `a`
//! holds input channels `2k, 2k+1` of 16 pixels (one `u32` per pixel, from a band of channel
//! pairs as the AMX path builds it, channel `2k` in the low half) and `b` broadcasts one output
//! channel's weights for the same two channels. So the micro-kernel is the direct f32 one
//! (`avx512.rs`) with pairs for floats: `CO` output channels × `NV` segments of 16 pixels in
//! registers, one reduction step per (channel pair, kh, kw): half the steps of f32, each
//! instruction twice the multiply-adds of an f32 FMA.
//!
//! Two modes. Plain bf16 ([`super::CpuPrecision::Bf16`]): input and weights rounded to bf16
//! (nearest even, the AMX path's rounding), one `vdpbf16ps` per step. Split bf16
//! ([`super::CpuPrecision::Bf16x3`]): `x = x_hi + x_lo`, `w = w_hi + w_lo` (each a bf16),
//! `x·w ≈ x_hi·w_hi + x_hi·w_lo + x_lo·w_hi`, three per step (products good to ~16 mantissa
//! bits, as the AMX path's split mode). Three bf16 multiply-adds per f32 one cost 1.5 f32-FMA
//! instructions' worth: on a CPU whose `vdpbf16ps` does twice an FMA's work per cycle (Zen 4)
//! the split mode computes *more slowly* than f32 by arithmetic; the lead measures whether the
//! halved band traffic makes up for it.
//!
//! Layout. The packed weights ([`PackedWeights`], once per conv): blocks of [`CO`] output
//! channels (then the remainder), each `[step][term][channel of block]`, a step being
//! (channel pair, kh, kw) and the terms `w_hi` (and `w_lo` when split) as bf16 pairs. The
//! input is converted per task and per block of channel pairs into a band of pairs (plus a
//! band of residual pairs right after it when split), in one of two shapes:
//! - *rows*: the padded input rows of the task's output rows, phase-split for stride 2, as the
//!   f32 direct conv's band (`cpu.rs`): a step is one offset from a segment's base;
//! - *flat*: for 1×1 unpadded stride-1 convs (a plain conversion) and small or narrow output
//!   planes (an im2col of the task's output pixels, one band row per step): segments are 16
//!   consecutive output pixels of the plane, so 8×8 … 2×2 planes fill every lane.
//!
//! Winograd ([`WinogradProducts`], `winograd.rs`): the 36 products `M[ξ] = U[ξ]·V[ξ]` of a
//! task are the same micro-kernel over a band of `V[ξ]`'s channel pairs (converted per ξ from
//! the f32 input transform), with `U[ξ]` packed as a 1×1 conv's weights.

use super::amx::{pair, pair_residual};
use super::cpu::{cache_budget, tile, Init, Seg, Tile};
use super::{gather_bias, Padding2d};
use crate::SendPtr;
use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Output channels per register tile of the main kernel and per packed weight block.
pub(super) const CO: usize = 8;
/// Segments (16 pixels each) per main register tile: 24 accumulators, and 6 input vectors when
/// split, in the 32 zmm registers.
const NV: usize = 3;
/// `u32`s past a band's end: a margin for the last step's reads.
const SLACK: usize = 32;

/// Whether this CPU runs the kernels: AVX-512F, AVX-512BW (the band fills are compiled for it)
/// and AVX512-BF16 (std caches the CPUID answers).
pub fn hardware() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// 16 `u32` bf16 pairs from `p` (only the `mask` lanes when `TAIL`; the others are zero).
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `p` starts 16 readable `u32`s (the masked lanes when
/// `TAIL`).
#[inline(always)]
unsafe fn load_pairs<const TAIL: bool>(p: *const u32, mask: u16) -> __m512bh {
    // SAFETY: readable as the contract says; a 64-byte integer vector reinterpreted as 32
    // bf16, the same bits.
    unsafe {
        let v = if TAIL {
            _mm512_maskz_loadu_epi32(mask, p as *const i32)
        } else {
            _mm512_loadu_si512(p as *const _)
        };
        std::mem::transmute::<__m512i, __m512bh>(v)
    }
}

/// One weight pair broadcast to every lane.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `p` is readable.
#[inline(always)]
unsafe fn broadcast_pair(p: *const u32) -> __m512bh {
    // SAFETY: `p` is readable (contract); the same bits reinterpreted as 32 bf16.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*p as i32)) }
}

/// The register tile: `CO` output channels × `NV` segments over the steps `taps`.
///
/// ```text
/// for step t:  x_v = pairs at x[v] + taps[t]  (x_lo_v at + lo, split)      v < NV
///              acc[c][v] += x_v · w_hi[t][c]  (+ x_lo_v · w_hi[t][c] + x_v · w_lo[t][c])
/// ```
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `w` holds `taps.len()` steps of `CO` pairs (`2·CO`
/// when `SPLIT`: hi, then lo); for every step `t` and segment `v`, the 16 `u32`s at
/// `x[v] + taps[t]` (and, when `SPLIT`, at `x[v] + taps[t] + lo`) are readable (the masked
/// lanes when `TAIL`); `y[v] + c·y_plane` for `c < CO` start 16 writable floats (masked lanes
/// when `TAIL`), which no other thread accesses meanwhile; a `Init::Bias` pointer holds `CO`
/// floats.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const CO: usize, const NV: usize, const TAIL: bool, const SPLIT: bool>(
    taps: &[isize],
    lo: isize,
    w: *const u32,
    tile: &Tile<NV, u32>,
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
                row.fill(bv);
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
    let step = if SPLIT { 2 * CO } else { CO };
    let mut wp = w;
    for &off in taps {
        // SAFETY: the 16 pairs at `x[v] + off` are readable (contract).
        let xh: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
            load_pairs::<TAIL>(tile.x[v].offset(off), tile.mask[v])
        });
        // SAFETY: with `SPLIT`, the residual band's 16 pairs at `x[v] + off + lo` are
        // readable (contract); without, nothing is read.
        let xl: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
            if SPLIT {
                load_pairs::<TAIL>(tile.x[v].offset(off + lo), tile.mask[v])
            } else {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512())
            }
        });
        // `w_hi` meets `x_hi` and `x_lo` while it is in a register, then `w_lo` meets
        // `x_hi`: 24 accumulators, 6 inputs and one broadcast in the 32 registers.
        for (c, row) in acc.iter_mut().enumerate() {
            // SAFETY: `wp` is at the current step of `w`, which holds `step >= CO` pairs.
            let wh = unsafe { broadcast_pair(wp.add(c)) };
            for (a, x) in row.iter_mut().zip(&xh) {
                *a = _mm512_dpbf16_ps(*a, *x, wh);
            }
            if SPLIT {
                for (a, x) in row.iter_mut().zip(&xl) {
                    *a = _mm512_dpbf16_ps(*a, *x, wh);
                }
            }
        }
        if SPLIT {
            for (c, row) in acc.iter_mut().enumerate() {
                // SAFETY: the low parts follow the high ones within the step (`2·CO` pairs).
                let wl = unsafe { broadcast_pair(wp.add(CO + c)) };
                for (a, x) in row.iter_mut().zip(&xh) {
                    *a = _mm512_dpbf16_ps(*a, *x, wl);
                }
            }
        }
        // SAFETY: at most one past the end of `w` (`taps.len()` steps of `step` pairs).
        wp = unsafe { wp.add(step) };
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

/// The kernel of `CO` channels over `segs`, `NV` segments at a time.
///
/// # Safety
/// As for [`kernel`], for every segment of `segs`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const CO: usize, const NV: usize, const SPLIT: bool>(
    taps: &[isize],
    lo: isize,
    w: *const u32,
    segs: &[Seg],
    x: *const u32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    for chunk in segs.chunks(NV) {
        // SAFETY: the caller's contract covers every segment, so every tile of them.
        unsafe {
            let (tile, tail) = tile::<NV, _>(chunk, x, y);
            if tail {
                kernel::<CO, NV, true, SPLIT>(taps, lo, w, &tile, y_plane, init);
            } else {
                kernel::<CO, NV, false, SPLIT>(taps, lo, w, &tile, y_plane, init);
            }
        }
    }
}

/// One block of `cob` (1 ..= [`CO`]) output channels over `segs`, in register tiles that fit
/// the 32 zmm registers (`cob·NV` accumulators plus `2·NV` inputs).
///
/// # Safety
/// As for [`kernel`], for every segment of `segs`, with `CO = cob`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block<const SPLIT: bool>(
    cob: usize,
    taps: &[isize],
    lo: isize,
    w: *const u32,
    segs: &[Seg],
    x: *const u32,
    y: *mut f32,
    y_plane: usize,
    init: Init,
) {
    macro_rules! go {
        ($co:literal, $nv:literal) => {
            // SAFETY: the caller's contract is the kernel's, for a block of `$co = cob`
            // channels.
            unsafe { tiles::<$co, $nv, SPLIT>(taps, lo, w, segs, x, y, y_plane, init) }
        };
    }
    match cob {
        8 => go!(8, 3),
        7 => go!(7, 3),
        6 => go!(6, 3),
        5 => go!(5, 4),
        4 => go!(4, 5),
        3 => go!(3, 6),
        2 => go!(2, 7),
        1 => go!(1, 8),
        _ => unreachable!("output-channel block of {cob}"),
    }
}

/// The full blocks `blocks` (each [`CO`] channels, block `blk` at `w + blk·CO·wstride`)
/// meet every chunk of [`NV`] segments while the chunk's input stays in L1; `init(co0)` is the
/// start of the block at channel `co0`.
///
/// # Safety
/// As for [`kernel`] with `CO`, for every segment of `segs` and every block: its weights at
/// `w + co0·wstride`, its outputs at `y + co0·y_plane`.
#[allow(clippy::too_many_arguments)]
unsafe fn main_blocks<const SPLIT: bool>(
    blocks: std::ops::Range<usize>,
    taps: &[isize],
    lo: isize,
    w: *const u32,
    wstride: usize,
    segs: &[Seg],
    x: *const u32,
    y: *mut f32,
    y_plane: usize,
    init: impl Fn(usize) -> Init,
) {
    for chunk in segs.chunks(NV) {
        for blk in blocks.clone() {
            let co0 = blk * CO;
            // SAFETY: the block's weights, outputs and the chunk's segments as the contract
            // says.
            unsafe {
                let (tile, tail) = tile::<NV, _>(chunk, x, y.add(co0 * y_plane));
                let wb = w.add(co0 * wstride);
                if tail {
                    kernel::<CO, NV, true, SPLIT>(taps, lo, wb, &tile, y_plane, init(co0));
                } else {
                    kernel::<CO, NV, false, SPLIT>(taps, lo, wb, &tile, y_plane, init(co0));
                }
            }
        }
    }
}

/// A conv's weights `[co, c, kh, kw]` as bf16 pairs (see the module docs): block `(co0, cob)`
/// at `co0 · steps · terms`, step `t` of it at `t · terms · cob`, `[w_hi × cob][w_lo × cob]`.
#[derive(Debug)]
pub struct PackedWeights {
    co: usize,
    c: usize,
    kh: usize,
    kw: usize,
    split: bool,
    data: Vec<u32>,
}

/// Output-channel blocks `(first channel, width)`: full [`CO`] blocks, then the remainder.
fn blocks(co: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<_> = (0..co / CO).map(|i| (i * CO, CO)).collect();
    if !co.is_multiple_of(CO) {
        v.push((co - co % CO, co % CO));
    }
    v
}

impl PackedWeights {
    /// From `[co, c, kh, kw]` f32 weights (any strides); `split`: also the residuals
    /// `w − bf16(w)` (for the split mode).
    pub fn new(w: &[f32], wl: &Layout, split: bool) -> Result<PackedWeights> {
        let (co, c, kh, kw) = wl.shape().dims4()?;
        let w = &w[wl.start_offset()..];
        let st = wl.stride();
        let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
        let cp = c.div_ceil(2);
        let steps = cp * kh * kw;
        let terms = if split { 2 } else { 1 };
        let mut data = vec![0u32; co * steps * terms];
        let bl = blocks(co);
        let mut parts = Vec::with_capacity(bl.len());
        let mut rest = &mut data[..];
        for &(_, cob) in &bl {
            let (part, tail) = rest.split_at_mut(cob * steps * terms);
            parts.push(part);
            rest = tail;
        }
        parts.into_par_iter().zip(bl).for_each(|(dst, (co0, cob))| {
            let at = |o: usize, ci: usize, i: usize, j: usize| {
                if ci < c {
                    w[o * s0 + ci * s1 + i * s2 + j * s3]
                } else {
                    0.0
                }
            };
            let mut t = 0;
            for k in 0..cp {
                for i in 0..kh {
                    for j in 0..kw {
                        for r in 0..cob {
                            let (a, b) = (at(co0 + r, 2 * k, i, j), at(co0 + r, 2 * k + 1, i, j));
                            dst[t + r] = pair(a, b);
                            if split {
                                dst[t + cob + r] = pair_residual(a, b);
                            }
                        }
                        t += terms * cob;
                    }
                }
            }
        });
        Ok(PackedWeights {
            co,
            c,
            kh,
            kw,
            split,
            data,
        })
    }

    /// Pairs per step and output channel: 2 when split (hi, lo), else 1.
    fn wstep(&self) -> usize {
        if self.split {
            2
        } else {
            1
        }
    }

    /// Pairs per output channel: block `(co0, cob)` starts at `co0 · block_stride()`, its step
    /// `t` at `t · wstep() · cob` from there.
    fn block_stride(&self) -> usize {
        self.c.div_ceil(2) * self.kh * self.kw * self.wstep()
    }
}

/// Runs the blocks `blocks` (indices into [`blocks`]`(pw.co)`) over `segs` for the steps
/// `taps` starting at step `t0` of the packed weights; `y` at the image's channel 0.
///
/// # Safety
/// As for [`kernel`] for every block and segment: the band `x` (and the residual band at
/// `+ lo` when split) readable at every segment plus step offset, the blocks' output planes
/// (`y_plane` floats apart) writable by this caller alone.
#[allow(clippy::too_many_arguments)]
unsafe fn run_blocks(
    pw: &PackedWeights,
    blocks: std::ops::Range<usize>,
    taps: &[isize],
    t0: usize,
    lo: isize,
    segs: &[Seg],
    x: *const u32,
    y: *mut f32,
    y_plane: usize,
    init: impl Fn(usize) -> Init,
) {
    let (full, bs, ws) = (pw.co / CO, pw.block_stride(), pw.wstep());
    let main = blocks.start.min(full)..blocks.end.min(full);
    // SAFETY: the caller's contract, block by block; block `blk` of width `cob` has its
    // weights at `co0 · bs` and the steps from `t0` at `t0 · ws · cob` within it.
    unsafe {
        let w = pw.data.as_ptr();
        macro_rules! both {
            ($split:literal) => {{
                if !main.is_empty() {
                    main_blocks::<$split>(
                        main.clone(),
                        taps,
                        lo,
                        w.add(t0 * ws * CO),
                        bs,
                        segs,
                        x,
                        y,
                        y_plane,
                        &init,
                    );
                }
                if blocks.end > full {
                    let (co0, cob) = (full * CO, pw.co - full * CO);
                    let wb = w.add(co0 * bs + t0 * ws * cob);
                    let yb = y.add(co0 * y_plane);
                    run_block::<$split>(cob, taps, lo, wb, segs, x, yb, y_plane, init(co0));
                }
            }};
        }
        if pw.split {
            both!(true)
        } else {
            both!(false)
        }
    }
}

/// The direct conv as a candle custom op (f32 in and out, bf16 products, f32 sums) on the
/// weights packed by [`PackedWeights::new`] (with the residuals when `split`); the input must
/// be contiguous.
#[derive(Clone, Debug)]
pub(super) struct Bf16Conv2d<'a> {
    pub stride: usize,
    pub pad: Padding2d,
    pub weights: &'a PackedWeights,
    pub split: bool,
}

super::cpu_conv_ops!(Bf16Conv2d<'_>, "sdseg-conv2d-avx512bf16");

thread_local! {
    /// Per-thread band of channel pairs (reused across calls).
    static BAND: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Conv shape: `n×c×h×w` input, `co×c×kh×kw` weights, `n×co×oh×ow` output; `cp` channel pairs.
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
    cp: usize,
}

/// How one call is cut into tasks and pair blocks (see the module docs for the two shapes).
struct Plan {
    flat: bool,
    /// `u32`s per channel pair in the band (rows: `band_rows · row`; flat: `kh·kw · cols`).
    per_pair: usize,
    /// Rows: band row length (`s` phases of `phase` `u32`s).
    row: usize,
    phase: usize,
    /// Flat: band columns (a task's output pixels, in 16s).
    cols: usize,
    /// Output rows (rows) or segments (flat) per task, tasks per image and channel group.
    rows_per_task: usize,
    segs_per_task: usize,
    pix_tasks: usize,
    /// Block ranges of the output-channel groups (the remainder block in the last).
    groups: Vec<std::ops::Range<usize>>,
    /// Channel pairs per band fill: a register tile's input of a block stays in L1.
    cbp: usize,
    /// Step offsets of the first `cbp` pairs (packing order), and the residual band's offset.
    taps: Vec<isize>,
    lo: isize,
}

impl Plan {
    fn new(g: &Geom, split: bool, threads: usize) -> Plan {
        let kk = g.kh * g.kw;
        let plane = g.oh * g.ow;
        let pointwise = kk == 1 && g.s == 1 && g.pad == Padding2d::default();
        let flat = pointwise || g.ow < 16 || plane <= super::gemm::SMALL_PLANE;
        let xterms = if split { 2 } else { 1 };
        let budget = cache_budget();
        let lines = if flat {
            kk * NV
        } else {
            g.kh * g.s.min(g.kw) * (NV + 1 + (g.kw - 1) / g.s / 16)
        };
        let cbp = (budget.l1_input / (lines * 64 * xterms))
            .min(budget.l2_weights / (4 * xterms * g.co * kk))
            .clamp(1, g.cp);
        let min_tasks = 4 * threads;
        let plane_segs = plane.div_ceil(16);
        let mut rows_per_task = (budget.l2_output / (4 * g.co * g.ow)).clamp(1, 8).min(g.oh);
        while rows_per_task > 1 && g.n * g.oh.div_ceil(rows_per_task) < min_tasks {
            rows_per_task /= 2;
        }
        let mut segs_per_task = (budget.l2_output / (64 * g.co) / 24 * 24)
            .max(24)
            .min(plane_segs);
        while segs_per_task > NV && g.n * plane_segs.div_ceil(segs_per_task) < min_tasks {
            segs_per_task = segs_per_task.div_ceil(2);
        }
        let ws = (g.w + g.pad.left + g.pad.right).div_ceil(g.s);
        let band_rows = (rows_per_task - 1) * g.s + g.kh;
        let (row, phase) = (g.s * ws, ws);
        let cols = segs_per_task * 16;
        let (per_pair, pix_tasks) = if flat {
            (kk * cols, plane_segs.div_ceil(segs_per_task))
        } else {
            (band_rows * row, g.oh.div_ceil(rows_per_task))
        };
        // Few pixel tasks (small planes, batch 1): split the output channels too.
        let nblocks = g.co.div_ceil(CO);
        let ngroups = min_tasks.div_ceil(g.n * pix_tasks).clamp(1, nblocks);
        let groups = (0..ngroups)
            .map(|i| i * nblocks / ngroups..(i + 1) * nblocks / ngroups)
            .collect();
        let mut taps = Vec::with_capacity(cbp * kk);
        for k in 0..cbp {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let off = if flat {
                        ((k * g.kh + i) * g.kw + j) * cols
                    } else {
                        k * per_pair + i * row + (j % g.s) * phase + j / g.s
                    };
                    taps.push(off as isize);
                }
            }
        }
        Plan {
            flat,
            per_pair,
            row,
            phase,
            cols,
            rows_per_task,
            segs_per_task,
            pix_tasks,
            groups,
            cbp,
            taps,
            lo: (cbp * per_pair) as isize,
        }
    }

    fn band_len(&self, split: bool) -> usize {
        let xterms = if split { 2 } else { 1 };
        xterms * self.cbp * self.per_pair + SLACK
    }
}

impl Bf16Conv2d<'_> {
    /// `_w`: the weights come packed in `self.weights`; `wl` still checks their shape.
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        _w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, ci, kh, kw) = wl.shape().dims4()?;
        let (p, s) = (self.pad, self.stride);
        let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("avx512-bf16 conv2d: expects a contiguous input");
        };
        if ci != c || s == 0 || hp < kh || wp < kw {
            candle_core::bail!(
                "avx512-bf16 conv2d: input {:?}, weight {:?}, stride {s}, {p:?}",
                xl.dims(),
                wl.dims()
            );
        }
        let pw = self.weights;
        if (pw.co, pw.c, pw.kh, pw.kw) != (co, c, kh, kw) || pw.split != self.split {
            candle_core::bail!(
                "avx512-bf16 conv2d: packed weights do not match {:?}",
                wl.dims()
            );
        }
        if !hardware() {
            candle_core::bail!("avx512-bf16 conv2d: this CPU has no AVX512-BF16");
        }
        let g = Geom {
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
            cp: c.div_ceil(2),
        };
        let out_shape = Shape::from((n, co, g.oh, g.ow));
        let mut y = vec![0f32; out_shape.elem_count()];
        if y.is_empty() {
            return Ok((y, out_shape));
        }
        let bias = match b {
            None => None,
            Some((b, bl)) => Some(gather_bias(b, bl, co)?),
        };
        let x = &x[x0..x1];
        let split = self.split;
        let plan = Plan::new(&g, split, rayon::current_num_threads().max(1));
        let (plane, kk) = (g.oh * g.ow, kh * kw);
        let ngroups = plan.groups.len();
        let yptr = SendPtr(y.as_mut_ptr());
        (0..n * plan.pix_tasks * ngroups)
            .into_par_iter()
            .for_each(|t| {
                let (img, part, grp) = (
                    t / (plan.pix_tasks * ngroups),
                    t / ngroups % plan.pix_tasks,
                    t % ngroups,
                );
                // The task's segments (band offset, output offset within the plane), and
                // its output rows / pixels.
                let (segs, r0, p0, np) = if plan.flat {
                    let p0 = part * plan.segs_per_task * 16;
                    let np = (plane - p0).min(plan.cols);
                    (flat_segments(p0, np), 0, p0, np)
                } else {
                    let r0 = part * plan.rows_per_task;
                    let r1 = (r0 + plan.rows_per_task).min(g.oh);
                    (row_segments(&g, &plan, r0, r1), r0, 0, 0)
                };
                let x_img = &x[img * c * h * w..(img + 1) * c * h * w];
                let yp = yptr;
                BAND.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let need = plan.band_len(split);
                    if buf.len() < need {
                        buf.resize(need, 0);
                    }
                    for kb in (0..g.cp).step_by(plan.cbp) {
                        let kn = plan.cbp.min(g.cp - kb);
                        // SAFETY: AVX-512F and BW (from `hardware()`, checked above); the band
                        // holds `band_len` `u32`s.
                        unsafe {
                            if plan.flat {
                                fill_flat(&mut buf, x_img, &g, &plan, kb, kn, p0, np, split);
                            } else {
                                let rows = (segs.len() / g.ow.div_ceil(16) - 1) * g.s + g.kh;
                                fill_rows(
                                    &mut buf,
                                    x_img,
                                    &g,
                                    &plan,
                                    kb,
                                    kn,
                                    r0 * g.s,
                                    rows,
                                    split,
                                );
                            }
                        }
                        let init = |co0: usize| {
                            if kb > 0 {
                                Init::Accumulate
                            } else if let Some(b) = &bias {
                                // SAFETY: `co0 < co`, inside the bias.
                                Init::Bias(unsafe { b.as_ptr().add(co0) })
                            } else {
                                Init::Zero
                            }
                        };
                        // SAFETY: AVX512-BF16 (checked above). Every segment plus step offset
                        // of the first `kn` pairs' steps reads inside the band just filled
                        // (`Plan`: segments of at most `rows_per_task` rows / `cols` pixels,
                        // steps inside `cbp · per_pair`, the residual band at `lo`); the
                        // outputs are this task's pixels of this group's channels, inside `y`,
                        // which outlives the tasks and no other task writes.
                        unsafe {
                            let y_img = yp.get().add(img * co * plane);
                            run_blocks(
                                pw,
                                plan.groups[grp].clone(),
                                &plan.taps[..kn * kk],
                                kb * kk,
                                plan.lo,
                                &segs,
                                buf.as_ptr(),
                                y_img,
                                plane,
                                init,
                            );
                        }
                    }
                });
            });
        Ok((y, out_shape))
    }
}

/// Segments of 16 consecutive output pixels `p0 .. p0 + np` of a plane (flat band columns).
fn flat_segments(p0: usize, np: usize) -> Vec<Seg> {
    (0..np)
        .step_by(16)
        .map(|j| Seg {
            x: j,
            y: p0 + j,
            mask: lane_mask(np - j),
        })
        .collect()
}

/// Segments of output rows `r0 .. r1` (16 pixels of a row each) in a rows band from `r0`.
fn row_segments(g: &Geom, plan: &Plan, r0: usize, r1: usize) -> Vec<Seg> {
    let mut v = Vec::with_capacity((r1 - r0) * g.ow.div_ceil(16));
    for r in r0..r1 {
        for c0 in (0..g.ow).step_by(16) {
            v.push(Seg {
                x: (r - r0) * g.s * plan.row + c0,
                y: r * g.ow + c0,
                mask: lane_mask(g.ow - c0),
            });
        }
    }
    v
}

fn lane_mask(len: usize) -> u16 {
    if len >= 16 {
        u16::MAX
    } else {
        (1u16 << len) - 1
    }
}

/// Writes `pair(lo[i], hi[i])` to `dst[i]` (and the residual pairs to `dst_lo[i]`).
#[inline(always)]
fn convert(dst: &mut [u32], dst_lo: Option<&mut [u32]>, lo: &[f32], hi: &[f32]) {
    for ((o, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
        *o = pair(a, b);
    }
    if let Some(d) = dst_lo {
        for ((o, &a), &b) in d.iter_mut().zip(lo).zip(hi) {
            *o = pair_residual(a, b);
        }
    }
}

/// Fills the rows band of pairs `kb .. kb + kn` from padded input rows `pr0 .. pr0 + rows`
/// of the image `x` (zero padding, phases split by the stride), and with `split` the residual
/// band at `plan.lo`.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the loops are compiled for them).
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_rows(
    dst: &mut [u32],
    x: &[f32],
    g: &Geom,
    plan: &Plan,
    kb: usize,
    kn: usize,
    pr0: usize,
    rows: usize,
    split: bool,
) {
    let (p, s, ws) = (g.pad, g.s, plan.phase);
    let plane = g.h * g.w;
    let lo_at = plan.lo as usize;
    let zeros = vec![0f32; g.w];
    let mut lo_row = vec![0u32; if split { plan.row } else { 0 }];
    let mut hi_row = vec![0u32; plan.row];
    for k in 0..kn {
        let (c0, c1) = (2 * (kb + k), 2 * (kb + k) + 1);
        for r in 0..rows {
            let base = k * plan.per_pair + r * plan.row;
            let pr = pr0 + r;
            if pr < p.top || pr >= p.top + g.h {
                dst[base..base + plan.row].fill(0);
                if split {
                    dst[lo_at + base..lo_at + base + plan.row].fill(0);
                }
                continue;
            }
            let ir = pr - p.top;
            let a = &x[c0 * plane + ir * g.w..][..g.w];
            let b = if c1 < g.c {
                &x[c1 * plane + ir * g.w..][..g.w]
            } else {
                &zeros[..]
            };
            if s == 1 {
                let (d, rest) = dst.split_at_mut(lo_at);
                let d = &mut d[base..base + plan.row];
                d[..p.left].fill(0);
                d[p.left + g.w..].fill(0);
                let dl = if split {
                    let dl = &mut rest[base..base + plan.row];
                    dl[..p.left].fill(0);
                    dl[p.left + g.w..].fill(0);
                    Some(&mut dl[p.left..p.left + g.w])
                } else {
                    None
                };
                convert(&mut d[p.left..p.left + g.w], dl, a, b);
            } else {
                // Convert the row in place order, then scatter padded column `jp` to phase
                // `jp % s`, position `jp / s`.
                convert(&mut hi_row[..g.w], split.then(|| &mut lo_row[..g.w]), a, b);
                let scatter = |d: &mut [u32], src: &[u32]| {
                    d.fill(0);
                    for (j, &v) in src[..g.w].iter().enumerate() {
                        let jp = j + p.left;
                        d[(jp % s) * ws + jp / s] = v;
                    }
                };
                scatter(&mut dst[base..base + plan.row], &hi_row[..]);
                if split {
                    scatter(&mut dst[lo_at + base..lo_at + base + plan.row], &lo_row[..]);
                }
            }
        }
    }
    let end = plan.cbp * plan.per_pair;
    let tail = if split { 2 * end } else { end };
    dst[tail..tail + SLACK].fill(0);
}

/// Fills the flat band of pairs `kb .. kb + kn` for output pixels `p0 .. p0 + np`: band row
/// `(k, i, j)` holds the input under tap `(i, j)` of each pixel (a plain conversion for 1×1
/// unpadded stride-1 convs), and with `split` the residual band at `plan.lo`.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the loops are compiled for them).
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_flat(
    dst: &mut [u32],
    x: &[f32],
    g: &Geom,
    plan: &Plan,
    kb: usize,
    kn: usize,
    p0: usize,
    np: usize,
    split: bool,
) {
    let plane = g.h * g.w;
    let lo_at = plan.lo as usize;
    let cols = plan.cols;
    let pointwise = g.kh * g.kw == 1 && g.s == 1 && g.pad == Padding2d::default();
    let zeros = vec![0f32; np];
    let (mut a, mut b) = (vec![0f32; np], vec![0f32; np]);
    for k in 0..kn {
        let (c0, c1) = (2 * (kb + k), 2 * (kb + k) + 1);
        for i in 0..g.kh {
            for j in 0..g.kw {
                let q = (k * g.kh + i) * g.kw + j;
                let (d, rest) = dst.split_at_mut(lo_at);
                let d = &mut d[q * cols..q * cols + np];
                let dl = split.then(|| &mut rest[q * cols..q * cols + np]);
                if pointwise {
                    let a = &x[c0 * plane + p0..][..np];
                    let b = if c1 < g.c {
                        &x[c1 * plane + p0..][..np]
                    } else {
                        &zeros[..]
                    };
                    convert(d, dl, a, b);
                    continue;
                }
                for (t, (va, vb)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                    let (oy, ox) = ((p0 + t) / g.ow, (p0 + t) % g.ow);
                    let (iy, ix) = (oy * g.s + i, ox * g.s + j);
                    let inside = iy >= g.pad.top
                        && iy - g.pad.top < g.h
                        && ix >= g.pad.left
                        && ix - g.pad.left < g.w;
                    (*va, *vb) = if inside {
                        let at = (iy - g.pad.top) * g.w + ix - g.pad.left;
                        let hi = if c1 < g.c { x[c1 * plane + at] } else { 0.0 };
                        (x[c0 * plane + at], hi)
                    } else {
                        (0.0, 0.0)
                    };
                }
                convert(d, dl, &a, &b);
            }
        }
    }
    // Columns past `np` of the rows read by masked lanes only; the band's end margin.
    let end = plan.cbp * plan.per_pair;
    let tail = if split { 2 * end } else { end };
    dst[tail..tail + SLACK].fill(0);
}

/// Winograd's 36 products on this level (`winograd.rs` under either bf16 precision): for one
/// ξ, `M [co, ts] = U [co, c] · V [c, ts]` with `U` packed as a 1×1 conv's weights
/// ([`PackedWeights`]) and `V` (f32 rows `ts` apart) converted into a band of channel pairs,
/// one row of `ts` per pair (and the residuals' band after it when split).
pub(super) struct WinogradProducts {
    cp: usize,
    ts: usize,
    split: bool,
    /// Pairs per L1 block and their step offsets (`k · ts`).
    cbp: usize,
    taps: Vec<isize>,
}

impl WinogradProducts {
    /// For `c` input channels and `V`/`M` rows of `ts` (a multiple of 16).
    pub(super) fn new(c: usize, ts: usize, split: bool) -> WinogradProducts {
        let cp = c.div_ceil(2);
        let xterms = if split { 2 } else { 1 };
        let cbp = (cache_budget().l1_input / (NV * 64 * xterms)).clamp(1, cp);
        WinogradProducts {
            cp,
            ts,
            split,
            cbp,
            taps: (0..cbp).map(|k| (k * ts) as isize).collect(),
        }
    }

    /// `u32`s of band one product fills.
    pub(super) fn band_len(&self) -> usize {
        let xterms = if self.split { 2 } else { 1 };
        xterms * self.cp * self.ts + SLACK
    }

    /// The first `cols` columns of the band from `v` (`c` rows of `ts`).
    ///
    /// # Safety
    /// AVX-512F and AVX-512BW are available; `v` holds `c · ts` floats, `cols <= ts`, `band`
    /// holds [`WinogradProducts::band_len`] `u32`s.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn fill(&self, c: usize, v: *const f32, cols: usize, band: &mut [u32]) {
        let ts = self.ts;
        let lo_band = self.cp * ts;
        let zeros = vec![0f32; if c % 2 == 1 { cols } else { 0 }];
        for k in 0..self.cp {
            let (c0, c1) = (2 * k, 2 * k + 1);
            // SAFETY: rows `c0 < c1 < c` of `v` (`c` rows of `ts >= cols` floats, contract).
            let a = unsafe { std::slice::from_raw_parts(v.add(c0 * ts), cols) };
            let b = if c1 < c {
                // SAFETY: as for `a`.
                unsafe { std::slice::from_raw_parts(v.add(c1 * ts), cols) }
            } else {
                &zeros[..]
            };
            let (hi, lo) = band.split_at_mut(lo_band);
            let dl = self.split.then(|| &mut lo[k * ts..k * ts + cols]);
            convert(&mut hi[k * ts..k * ts + cols], dl, a, b);
        }
    }

    /// Converts `v` (`c` rows) into `band` and writes `m` (`co` rows) for the first `nt`
    /// columns (lanes past `nt` are neither read nor written).
    ///
    /// # Safety
    /// [`hardware`] is true; `v` holds `c · ts` floats, `m` `co · ts`; `pw`
    /// was packed from `[co, c, 1, 1]` with `self`'s split; `nt <= ts`; `band` holds
    /// [`WinogradProducts::band_len`] `u32`s; nothing else accesses `m` meanwhile.
    pub(super) unsafe fn run(
        &self,
        pw: &PackedWeights,
        v: *const f32,
        nt: usize,
        band: &mut [u32],
        m: *mut f32,
    ) {
        let ts = self.ts;
        // SAFETY: AVX-512F and BW (contract); `v` holds `c` rows of `ts >= nt` floats, and
        // `band` its full length.
        unsafe { self.fill(pw.c, v, nt, band) };
        let segs = flat_segments(0, nt);
        let lo = (self.cp * ts) as isize;
        for kb in (0..self.cp).step_by(self.cbp) {
            let kn = self.cbp.min(self.cp - kb);
            let init = |_| {
                if kb == 0 {
                    Init::Zero
                } else {
                    Init::Accumulate
                }
            };
            // SAFETY: AVX512-BF16 (contract: `hardware`). Segments are masked to the first `nt` lanes of
            // rows `kb .. kb + kn` of the band (steps `k · ts`, the residual band at `lo`),
            // filled above; outputs are rows of `m` (`co · ts` floats, `y_plane = ts`).
            unsafe {
                let x = band.as_ptr().add(kb * ts);
                run_blocks(
                    pw,
                    0..pw.co.div_ceil(CO),
                    &self.taps[..kn],
                    kb,
                    lo,
                    &segs,
                    x,
                    m,
                    ts,
                    init,
                );
            }
        }
    }
}
