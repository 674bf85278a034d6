//! bf16 convolution on Intel AMX (issue 7, item 3): the `--dtype bf16` CPU path.
//!
//! Activations and weights stay f32 tensors; each conv rounds its input and weights to bf16
//! (round to nearest even, as PyTorch's `autocast` does) and accumulates in f32 in the AMX tile
//! registers, so GroupNorm, softmax and the latent estimate keep running in f32.
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile `A` by a 32×16 bf16 tile `B` (stored as 16 rows
//! of 16 *pairs*) into a 16×16 f32 tile `C`. Here `C` is 16 output channels × 16 output pixels,
//! `A` the weights of those channels for 32 input channels at one tap `(kh, kw)` and `B` the
//! input: row `k` holds channels `2k, 2k+1` of the 16 pixels, interleaved. So the input is
//! copied once per task into a band of *channel pairs* (one `u32` = two bf16 per pixel),
//! zero-padded and phase-split for stride 2 exactly like the f32 path's band (`cpu.rs`): the 16
//! pixels of a segment read 16 contiguous pairs for every tap, and a `B` tile is one strided
//! `tileloadd` (row stride = one pair plane). `C` rows are output channels, so a tile is
//! stored straight into the NCHW output with row stride = one output plane: no transposes.
//!
//! Tile registers: `tmm0..3` accumulate 2 channel blocks × 2 pixel segments, `tmm4, 5` hold
//! the weights of the two channel blocks, `tmm6, 7` the input of the two segments.
//!
//! Requirements (else [`supports`] is false and the f32 path runs): output channels a multiple
//! of 16, output rows a multiple of 16 pixels (or a 1×1 unpadded stride-1 conv whose plane is,
//! viewed as rows of 16). Input channels are zero-padded to a multiple of 32.

use super::Padding2d;
use crate::SendPtr;
use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Whether this CPU and OS run AMX-BF16 (CPUID leaf 7 `AMX-BF16` and `AMX-TILE`, and Linux
/// granting the process the tile-data state). Detected once. The switches that keep a run off
/// AMX (`SDSEG_AMX=0`, `SDSEG_CONV_KERNEL`) act on [`super::Bf16Kernel::best`], not here.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU that has AMX; on older ones it returns zeros.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = (leaf7.edx >> 22) & 1 == 1 && (leaf7.edx >> 24) & 1 == 1;
        cpu && request_tile_permission()
    })
}

/// Linux hands out the 8 KiB tile-data state only on request (`ARCH_REQ_XCOMP_PERM`);
/// without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Whether [`AmxConv2d`] runs this conv: `x` NCHW `[n, c, h, w]`, weights `[co, c, kh, kw]`.
pub fn supports(x: &[usize], w: &[usize], stride: usize, pad: Padding2d) -> bool {
    let (&[_, c, h, wd], &[co, ci, kh, kw]) = (x, w) else {
        return false;
    };
    if c != ci || stride == 0 || co == 0 || !co.is_multiple_of(16) {
        return false;
    }
    let (hp, wp) = (h + pad.top + pad.bottom, wd + pad.left + pad.right);
    if hp < kh || wp < kw {
        return false;
    }
    true
}

/// Pixels per segment for output rows of `ow`: the largest power of two up to 16 dividing it.
fn segment_width(ow: usize) -> usize {
    1 << ow.trailing_zeros().min(4)
}

/// The conv as a candle custom op (f32 in and out, bf16 products, f32 sums); the input must be
/// contiguous and [`supports`] true. `weights` are the conv's weights packed by
/// [`PackedWeights::new`] (packed once per conv, not per call: a full-size model has ~330 M
/// weights, ~0.3 s to round and pack).
#[derive(Clone, Debug)]
pub(super) struct AmxConv2d<'a> {
    pub stride: usize,
    pub pad: Padding2d,
    pub weights: &'a PackedWeights,
    /// Split bf16 ("bf16×3"): `x = x_hi + x_lo`, `w = w_hi + w_lo` (each a bf16), and
    /// `x·w ≈ x_hi·w_hi + x_hi·w_lo + x_lo·w_hi`: three tile products per step, products good
    /// to ~16 mantissa bits instead of 8. Needs weights packed with their low parts.
    pub split: bool,
}

/// `x` rounded to bf16 (nearest even; NaN stays a quiet NaN), in the upper 16 bits; the lower
/// 16 are garbage. Branch-free, so the band fill vectorises.
#[inline(always)]
fn bf16_high(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    if nan {
        b | 0x0040_0000
    } else {
        rounded
    }
}

super::cpu_conv_ops!(AmxConv2d<'_>, "sdseg-conv2d-amx-bf16");

/// bf16 bits of `x` (see [`bf16_high`]).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    (bf16_high(x) >> 16) as u16
}

/// Two channels of one pixel as an `A`/`B` tile element: `lo` in the low half.
#[inline(always)]
pub(super) fn pair(lo: f32, hi: f32) -> u32 {
    (bf16_high(lo) >> 16) | (bf16_high(hi) & 0xffff_0000)
}

/// `x − bf16(x)`, the part of `x` its bf16 rounding drops (exact in f32).
#[inline(always)]
fn residual(x: f32) -> f32 {
    x - f32::from_bits(bf16_high(x) & 0xffff_0000)
}

/// [`pair`] of the residuals.
#[inline(always)]
pub(super) fn pair_residual(lo: f32, hi: f32) -> u32 {
    pair(residual(lo), residual(hi))
}

/// The conv in "virtual" geometry: a flat 1×1 conv is seen as an image of rows of 16 pixels.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    /// Input rows and columns as the band sees them (unpadded).
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pad: Padding2d,
    oh: usize,
    ow: usize,
    /// Channel pairs, padded to a multiple of 16 (32 channels per `A`/`B` tile).
    cp: usize,
    /// Pixels per segment (see [`segment_width`]).
    sw: usize,
}

impl Geom {
    fn new(op: &AmxConv2d, xl: &Layout, wl: &Layout) -> Result<Geom> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, ci, kh, kw) = wl.shape().dims4()?;
        if !supports(xl.dims(), wl.dims(), op.stride, op.pad) || !xl.is_contiguous() {
            candle_core::bail!(
                "amx conv2d: unsupported shapes x {:?} w {:?} (stride {}, {:?})",
                xl.dims(),
                wl.dims(),
                op.stride,
                op.pad
            );
        }
        debug_assert_eq!(c, ci);
        let (p, s) = (op.pad, op.stride);
        let ow = (w + p.left + p.right - kw) / s + 1;
        let pointwise = kh == 1 && kw == 1 && s == 1 && p == Padding2d::default();
        let flat = pointwise && !ow.is_multiple_of(16) && (h * w).is_multiple_of(16);
        let (h, w) = if flat { (h * w / 16, 16) } else { (h, w) };
        let ow = (w + p.left + p.right - kw) / s + 1;
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
            oh: (h + p.top + p.bottom - kh) / s + 1,
            ow,
            cp: c.div_ceil(32) * 16,
            sw: segment_width(ow),
        })
    }

    /// `tdpbf16ps` steps over the reduction: (32-channel chunk, kh, kw).
    fn ksteps(&self) -> usize {
        self.cp / 16 * self.kh * self.kw
    }
}

/// Where band element (pair `k`, band row `r`, phase `p`, column `j`) lives, in `u32`s:
/// `k·ch + r·row + p·phase + j`.
#[derive(Clone, Copy, Debug)]
struct Band {
    phase: usize,
    row: usize,
    ch: usize,
}

/// `u32`s past the band's end: the last tap of the last segment may read that far.
const SLACK: usize = 32;

/// Bytes of a task's input band we aim for (L2-resident beside a block of weights).
const BAND_BYTES: usize = 384 * 1024;

impl AmxConv2d<'_> {
    /// `_w`: the weights come packed in `self.weights`; `wl` still checks their shape.
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        _w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let g = Geom::new(self, xl, wl)?;
        if !available() {
            candle_core::bail!("amx conv2d: this CPU has no AMX-BF16");
        }
        let pw = self.weights;
        if (pw.co, pw.c, pw.kh, pw.kw) != (g.co, g.c, g.kh, g.kw) || (self.split && !pw.split) {
            candle_core::bail!("amx conv2d: packed weights do not match {:?}", wl.dims());
        }
        let out_shape = {
            let (_, _, h, w) = xl.shape().dims4()?;
            let p = self.pad;
            let oh = (h + p.top + p.bottom - g.kh) / g.s + 1;
            let ow = (w + p.left + p.right - g.kw) / g.s + 1;
            Shape::from((g.n, g.co, oh, ow))
        };
        let len = out_shape.elem_count();
        debug_assert_eq!(len, g.n * g.co * g.oh * g.ow);
        if len == 0 {
            return Ok((vec![], out_shape));
        }
        let bias_tiles = match b {
            None => None,
            Some((b, bl)) => Some(bias_tiles(b, bl, g.co)?),
        };
        let x = &x[xl.start_offset()..];

        // Rows per task: the band near BAND_BYTES, and enough tasks for every thread.
        let ws = (g.w + g.pad.left + g.pad.right).div_ceil(g.s);
        let band_for = |rows: usize| g.cp * ((rows - 1) * g.s + g.kh) * g.s * ws * 4;
        let mut rpt = 1;
        while rpt < g.oh && band_for(rpt * 2) <= BAND_BYTES {
            rpt *= 2;
        }
        let threads = rayon::current_num_threads().max(1);
        while rpt > 1 && g.n * g.oh.div_ceil(rpt) < 4 * threads {
            rpt /= 2;
        }
        let band_rows = (rpt - 1) * g.s + g.kh;
        let band = Band {
            phase: ws,
            row: g.s * ws,
            ch: band_rows * g.s * ws,
        };
        // Reduction steps: band offsets and weight offsets (within a channel block) per step.
        let lo_band = g.cp * band.ch;
        let (koffs, aoffs): (Vec<usize>, Vec<usize>) = k_offsets(&g, &band)
            .into_iter()
            .enumerate()
            .flat_map(|(k, off)| {
                let hi = (off, k * 512);
                if self.split {
                    let lo_w = pw.lo_offset() + k * 512;
                    vec![hi, (off, lo_w), (off + lo_band, k * 512)]
                } else {
                    vec![hi]
                }
            })
            .unzip();
        let bands = if self.split { 2 } else { 1 };
        let tasks_per_img = g.oh.div_ceil(rpt);
        let y_plane = g.oh * g.ow;
        // Every output element is written by exactly one tile store below.
        let mut y: Vec<f32> = Vec::with_capacity(len);
        let yptr = SendPtr(y.as_mut_ptr());

        (0..g.n * tasks_per_img).into_par_iter().for_each(|t| {
            let (img, part) = (t / tasks_per_img, t % tasks_per_img);
            let r0 = part * rpt;
            let r1 = (r0 + rpt).min(g.oh);
            BAND.with(|buf| {
                let mut buf = buf.borrow_mut();
                let need = bands * lo_band + SLACK;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let rows = (r1 - r0 - 1) * g.s + g.kh;
                fill_band(&mut buf, x, &g, &band, img, r0 * g.s, rows, self.split);
                // Segments of the task: `sw` output pixels each, (band offset, output offset).
                let segs: Vec<(usize, usize)> = (r0..r1)
                    .flat_map(|r| {
                        (0..g.ow)
                            .step_by(g.sw)
                            .map(move |c0| ((r - r0) * g.s * band.row + c0, r * g.ow + c0))
                    })
                    .collect();
                let yp = yptr;
                let ksteps = g.ksteps();
                // SAFETY: AMX is available (checked above); every tile reads inside the band
                // (offsets from `k_offsets` plus a segment's base stay below `need`) or the
                // packed weights; stores write this task's output rows only, into `y`, which
                // outlives the tasks; tiles are configured before use and released after.
                unsafe {
                    configure_tiles(g.sw);
                    let y_img = yp.get().add(img * g.co * y_plane);
                    let blocks = g.co / 16;
                    let mut cb = 0;
                    while cb < blocks {
                        let mc = (blocks - cb).min(2);
                        let a = pw.data.as_ptr().add(cb * ksteps * 512);
                        let bias = bias_tiles.as_ref().map(|bt| bt.as_ptr().add(cb * 256));
                        let mut si = 0;
                        while si < segs.len() {
                            let np = (segs.len() - si).min(2);
                            let (s0, s1) = (segs[si], segs[si + np - 1]);
                            let y0 = y_img.add(cb * 16 * y_plane);
                            let job = Job {
                                a,
                                a_step: ksteps * 512,
                                aoffs: &aoffs,
                                b: [buf.as_ptr().add(s0.0), buf.as_ptr().add(s1.0)],
                                b_stride: band.ch * 4,
                                koffs: &koffs,
                                bias,
                                y: [y0.add(s0.1), y0.add(s1.1)],
                                y_stride: y_plane * 4,
                                y_block: 16 * y_plane,
                            };
                            job.run_any(mc, np);
                            si += np;
                        }
                        cb += mc;
                    }
                    asm!("tilerelease", options(nostack, nomem));
                }
            });
        });
        // SAFETY: the tasks above stored every one of the `len` elements.
        unsafe { y.set_len(len) };
        Ok((y, out_shape))
    }
}

thread_local! {
    /// Per-thread input band (reused across calls).
    static BAND: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// 64-byte tile configuration (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Accumulators `tmm0..3` and inputs `tmm6, 7`: 16 rows of `sw` pixels (f32 or bf16 pairs);
/// weights `tmm4, 5`: 16 rows of 32 bf16.
///
/// # Safety
/// AMX is [`available`]; `sw` is 1..=16.
unsafe fn configure_tiles(sw: usize) {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = if t == 4 || t == 5 { 64 } else { 4 * sw as u16 };
        cfg.rows[t] = 16;
    }
    // SAFETY: AMX is available (contract); `cfg` is a 64-byte aligned palette-1 configuration
    // of 8 tiles within the palette's limits (16 rows of at most 64 bytes), which
    // `ldtilecfg` only reads.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
    }
}

/// One register tile of work: `MC` blocks of 16 output channels × `NP` segments over every
/// reduction step.
struct Job<'a> {
    /// Packed weights of the first channel block; the second is `a_step` `u16`s further.
    a: *const u16,
    a_step: usize,
    /// Weight tile of step `k`: `aoffs[k]` `u16`s from the block's start.
    aoffs: &'a [usize],
    /// Band position of each segment; step `k` adds `koffs[k]` `u32`s.
    b: [*const u32; 2],
    b_stride: usize,
    koffs: &'a [usize],
    /// 16×16 f32 bias tile of the first channel block (the second follows), or zero init.
    bias: Option<*const f32>,
    /// Output of (first channel block, segment `v`); the second block is `y_block` further.
    y: [*mut f32; 2],
    y_stride: usize,
    y_block: usize,
}

macro_rules! tile_load {
    ($tmm:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tileloadd ", $tmm, ", [{p} + {s}*1]"), p = in(reg) $ptr, s = in(reg) $stride,
             options(nostack, readonly))
    };
}
macro_rules! tile_store {
    ($tmm:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], ", $tmm), p = in(reg) $ptr, s = in(reg) $stride,
             options(nostack))
    };
}
macro_rules! tile_dp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b),
            options(nostack, nomem)
        )
    };
}

impl Job<'_> {
    /// [`Job::run`] for `mc` (1 or 2) channel blocks and `np` (1 or 2) segments.
    ///
    /// # Safety
    /// As for [`Job::run`].
    #[inline(always)]
    unsafe fn run_any(&self, mc: usize, np: usize) {
        // SAFETY: the caller's contract is `run`'s.
        unsafe {
            match (mc, np) {
                (2, 2) => self.run::<2, 2>(),
                (2, _) => self.run::<2, 1>(),
                (_, 2) => self.run::<1, 2>(),
                _ => self.run::<1, 1>(),
            }
        }
    }

    /// # Safety
    /// Tiles configured by [`configure_tiles`] on this thread; pointers as documented on the
    /// fields: `MC` channel blocks of packed weights (every `aoffs` step inside them), `NP`
    /// segments of band (every `koffs` step, 16 rows of `b_stride` bytes, inside it), bias
    /// tiles of `MC` blocks, and output tiles (16 rows of `y_stride` bytes) that nothing else
    /// writes meanwhile.
    #[inline(always)]
    unsafe fn run<const MC: usize, const NP: usize>(&self) {
        // SAFETY: the tile instructions run on configured tiles (contract); every load reads
        // and every store writes inside the buffers the contract names.
        unsafe {
            match self.bias {
                Some(bt) => {
                    tile_load!("tmm0", bt, 64usize);
                    if NP == 2 {
                        tile_load!("tmm1", bt, 64usize);
                    }
                    if MC == 2 {
                        tile_load!("tmm2", bt.add(256), 64usize);
                        if NP == 2 {
                            tile_load!("tmm3", bt.add(256), 64usize);
                        }
                    }
                }
                None => {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                }
            }
            let a1 = self.a.add(self.a_step);
            for (&off, &aoff) in self.koffs.iter().zip(self.aoffs) {
                tile_load!("tmm4", self.a.add(aoff), 64usize);
                tile_load!("tmm6", self.b[0].add(off), self.b_stride);
                tile_dp!("tmm0", "tmm4", "tmm6");
                if NP == 2 {
                    tile_load!("tmm7", self.b[1].add(off), self.b_stride);
                    tile_dp!("tmm1", "tmm4", "tmm7");
                }
                if MC == 2 {
                    tile_load!("tmm5", a1.add(aoff), 64usize);
                    tile_dp!("tmm2", "tmm5", "tmm6");
                    if NP == 2 {
                        tile_dp!("tmm3", "tmm5", "tmm7");
                    }
                }
            }
            let ys = self.y_stride;
            tile_store!("tmm0", self.y[0], ys);
            if NP == 2 {
                tile_store!("tmm1", self.y[1], ys);
            }
            if MC == 2 {
                tile_store!("tmm2", self.y[0].add(self.y_block), ys);
                if NP == 2 {
                    tile_store!("tmm3", self.y[1].add(self.y_block), ys);
                }
            }
        }
    }
}

/// Band offset of each reduction step (chunk `q` of 16 pairs, tap `kh`, `kw`), in the order
/// [`PackedWeights::new`] packs them.
fn k_offsets(g: &Geom, band: &Band) -> Vec<usize> {
    let mut v = Vec::with_capacity(g.ksteps());
    for q in 0..g.cp / 16 {
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                v.push(q * 16 * band.ch + kh * band.row + (kw % g.s) * band.phase + kw / g.s);
            }
        }
    }
    v
}

/// A conv's weights as `A` tiles: per block of 16 output channels and reduction step
/// (32-channel chunk, kh, kw), 16 rows (output channels) of 32 bf16 (the chunk's input
/// channels, zero past `c`).
/// With `split`, the residuals `w − bf16(w)` follow, packed the same way.
#[derive(Debug)]
pub struct PackedWeights {
    co: usize,
    c: usize,
    kh: usize,
    kw: usize,
    split: bool,
    data: Vec<u16>,
}

impl PackedWeights {
    /// `u16`s from the rounded weights to their residuals.
    fn lo_offset(&self) -> usize {
        self.co * self.c.div_ceil(32) * self.kh * self.kw * 32
    }

    /// From `[co, c, kh, kw]` f32 weights (any strides); `co` a multiple of 16; `split`: also
    /// the residuals (for [`AmxConv2d::split`]).
    pub fn new(w: &[f32], wl: &Layout, split: bool) -> Result<PackedWeights> {
        let (co, c, kh, kw) = wl.shape().dims4()?;
        if !co.is_multiple_of(16) {
            candle_core::bail!("amx conv2d: {co} output channels, expected a multiple of 16");
        }
        let w = &w[wl.start_offset()..];
        let st = wl.stride();
        let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
        let chunks = c.div_ceil(32);
        let ksteps = chunks * kh * kw;
        let half = co * ksteps * 32;
        let mut data = vec![0u16; if split { 2 * half } else { half }];
        data.par_chunks_mut(ksteps * 512)
            .enumerate()
            .for_each(|(i, dst)| {
                let (blk, lo) = (i % (co / 16), i >= co / 16);
                let mut k = 0;
                for q in 0..chunks {
                    for i in 0..kh {
                        for j in 0..kw {
                            for r in 0..16 {
                                let o = blk * 16 + r;
                                let row = &mut dst[(k * 16 + r) * 32..(k * 16 + r + 1) * 32];
                                for (e, v) in row.iter_mut().enumerate() {
                                    let ci = q * 32 + e;
                                    if ci < c {
                                        let x = w[o * s0 + ci * s1 + i * s2 + j * s3];
                                        *v = bf16_bits(if lo { residual(x) } else { x });
                                    }
                                }
                            }
                            k += 1;
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
}

/// Winograd's products on AMX (`winograd.rs` under [`super::CpuPrecision::Bf16x3`]): for one
/// ξ, `M [co, ts] = U [co, c] · V [c, ts]` with `U` packed as a 1×1 conv's weights and `V`
/// (f32 rows `ts` apart) converted into a band of bf16 channel pairs, one row of `ts` tiles
/// per pair (and the residuals' band after it when split).
pub(super) struct BandGemm {
    koffs: Vec<usize>,
    aoffs: Vec<usize>,
    /// Channel pairs, padded to 16 (32 channels per tile).
    cp: usize,
    ts: usize,
    split: bool,
}

impl BandGemm {
    /// For weights packed from `[co, c, 1, 1]` and `V`/`M` rows of `ts` (a multiple of 16).
    pub(super) fn new(pw: &PackedWeights, ts: usize) -> BandGemm {
        let cp = pw.c.div_ceil(32) * 16;
        let lo_band = cp * ts;
        let (koffs, aoffs) = (0..cp / 16)
            .flat_map(|q| {
                let (off, a) = (q * 16 * ts, q * 512);
                if pw.split {
                    vec![(off, a), (off, pw.lo_offset() + a), (off + lo_band, a)]
                } else {
                    vec![(off, a)]
                }
            })
            .unzip();
        BandGemm {
            koffs,
            aoffs,
            cp,
            ts,
            split: pw.split,
        }
    }

    /// The first `cols` columns of the band from `v` (`c` rows of `ts`).
    ///
    /// # Safety
    /// AVX-512F is available; `v` holds `c · ts` floats, `cols <= ts`, `band` holds
    /// [`BandGemm::band_len`] `u32`s.
    #[target_feature(enable = "avx512f")]
    unsafe fn fill(&self, c: usize, v: *const f32, cols: usize, band: &mut [u32]) {
        let ts = self.ts;
        let lo_band = self.cp * ts;
        let zeros = vec![0f32; cols];
        for k in 0..self.cp {
            let (c0, c1) = (2 * k, 2 * k + 1);
            let row = &mut band[k * ts..k * ts + cols];
            if c0 >= c {
                row.fill(0);
                if self.split {
                    band[lo_band + k * ts..lo_band + k * ts + cols].fill(0);
                }
                continue;
            }
            // SAFETY: rows `c0 < c1 < c` of `v` (`c` rows of `ts >= cols` floats, contract).
            let lo = unsafe { std::slice::from_raw_parts(v.add(c0 * ts), cols) };
            let hi = if c1 < c {
                // SAFETY: as for `lo`.
                unsafe { std::slice::from_raw_parts(v.add(c1 * ts), cols) }
            } else {
                &zeros[..]
            };
            for ((o, &a), &b) in row.iter_mut().zip(lo).zip(hi) {
                *o = pair(a, b);
            }
            if self.split {
                let row = &mut band[lo_band + k * ts..lo_band + k * ts + cols];
                for ((o, &a), &b) in row.iter_mut().zip(lo).zip(hi) {
                    *o = pair_residual(a, b);
                }
            }
        }
    }

    /// `u32`s of band one product fills.
    pub(super) fn band_len(&self) -> usize {
        let bands = if self.split { 2 } else { 1 };
        bands * self.cp * self.ts + SLACK
    }

    /// Converts `v` (`c` rows) into `band` and writes `m` (`co` rows) for the first `nt`
    /// columns (whole tiles of 16 are computed; columns past `nt` hold garbage).
    ///
    /// # Safety
    /// AMX is [`available`] and the CPU has AVX-512F; `v` holds `c · ts` floats, `m` `co · ts`;
    /// `pw` is the pack `self` was built for; `nt <= ts`; `band` holds
    /// [`BandGemm::band_len`] `u32`s.
    pub(super) unsafe fn run(
        &self,
        pw: &PackedWeights,
        v: *const f32,
        nt: usize,
        band: &mut [u32],
        m: *mut f32,
    ) {
        let cols = nt.div_ceil(16) * 16;
        // SAFETY: AVX-512F (contract); `v` holds `c` rows of `ts >= cols` (`ts` is a multiple
        // of 16), and `band` its full length.
        unsafe { self.fill(pw.c, v, cols, band) };
        let ts = self.ts;
        let ksteps = self.cp / 16;
        let (blocks, segs) = (pw.co / 16, cols / 16);
        let b = band.as_ptr();
        // SAFETY: AMX is available (contract). Tiles of 16 columns: each `B` tile is 16 rows
        // (channel pairs) of 16 columns at `ts · 4` bytes a row inside the band (`koffs` steps
        // by 16 rows, the split band follows), each `A` tile a block's step of `pw`, each `C`
        // tile 16 rows (output channels) of 16 columns of `m` (`co · ts` floats), written by
        // this call alone; the tiles are released at the end.
        unsafe {
            configure_tiles(16);
            let mut cb = 0;
            while cb < blocks {
                let mc = (blocks - cb).min(2);
                let mut s = 0;
                while s < segs {
                    let np = (segs - s).min(2);
                    let (s0, s1) = (16 * s, 16 * (s + np - 1));
                    let y0 = m.add(cb * 16 * ts);
                    let job = Job {
                        a: pw.data.as_ptr().add(cb * ksteps * 512),
                        a_step: ksteps * 512,
                        aoffs: &self.aoffs,
                        b: [b.add(s0), b.add(s1)],
                        b_stride: ts * 4,
                        koffs: &self.koffs,
                        bias: None,
                        y: [y0.add(s0), y0.add(s1)],
                        y_stride: ts * 4,
                        y_block: 16 * ts,
                    };
                    job.run_any(mc, np);
                    s += np;
                }
                cb += mc;
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// Per block of 16 output channels, a 16×16 f32 tile whose row `r` is `bias[16·blk + r]`.
fn bias_tiles(b: &[f32], bl: &Layout, co: usize) -> Result<Vec<f32>> {
    Ok(super::gather_bias(b, bl, co)?
        .into_iter()
        .flat_map(|v| [v; 16])
        .collect())
}

/// Copies padded input rows `pr0 .. pr0 + rows` of image `img` into the band as bf16 channel
/// pairs, zero padding (rows, columns, channels past `c`) included; with `split`, the
/// residuals into a second band right after the first.
#[allow(clippy::too_many_arguments)]
fn fill_band(
    dst: &mut [u32],
    x: &[f32],
    g: &Geom,
    band: &Band,
    img: usize,
    pr0: usize,
    rows: usize,
    split: bool,
) {
    fill_band_with(dst, x, g, band, img, pr0, rows, pair);
    if split {
        let end = g.cp * band.ch;
        fill_band_with(&mut dst[end..], x, g, band, img, pr0, rows, pair_residual);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill_band_with(
    dst: &mut [u32],
    x: &[f32],
    g: &Geom,
    band: &Band,
    img: usize,
    pr0: usize,
    rows: usize,
    pair: impl Fn(f32, f32) -> u32,
) {
    let (p, s, ws) = (g.pad, g.s, band.phase);
    let plane = g.h * g.w;
    let x_img = &x[img * g.c * plane..(img + 1) * g.c * plane];
    let zeros = vec![0f32; g.w];
    for k in 0..g.cp {
        let (c0, c1) = (2 * k, 2 * k + 1);
        for r in 0..rows {
            let base = k * band.ch + r * band.row;
            let drow = &mut dst[base..base + band.row];
            let pr = pr0 + r;
            if c0 >= g.c || pr < p.top || pr >= p.top + g.h {
                drow.fill(0);
                continue;
            }
            let ir = pr - p.top;
            let lo = &x_img[c0 * plane + ir * g.w..][..g.w];
            let hi = if c1 < g.c {
                &x_img[c1 * plane + ir * g.w..][..g.w]
            } else {
                &zeros[..]
            };
            if s == 1 {
                drow[..p.left].fill(0);
                let d = &mut drow[p.left..p.left + g.w];
                for ((o, &a), &b) in d.iter_mut().zip(lo).zip(hi) {
                    *o = pair(a, b);
                }
                drow[p.left + g.w..].fill(0);
            } else if s == 2 {
                // Padded column `jp` goes to phase `jp % 2`, position `jp / 2`.
                drow.fill(0);
                let (pe, po) = (p.left % 2, (p.left + 1) % 2);
                let (de, dod) = (pe * ws + p.left / 2, po * ws + p.left.div_ceil(2));
                let even = g.w.div_ceil(2);
                for (i, o) in drow[de..de + even].iter_mut().enumerate() {
                    *o = pair(lo[2 * i], hi[2 * i]);
                }
                for (i, o) in drow[dod..dod + g.w / 2].iter_mut().enumerate() {
                    *o = pair(lo[2 * i + 1], hi[2 * i + 1]);
                }
            } else {
                drow.fill(0);
                for j in 0..g.w {
                    let jp = j + p.left;
                    drow[(jp % s) * ws + jp / s] = pair(lo[j], hi[j]);
                }
            }
        }
    }
    let end = g.cp * band.ch;
    dst[end..end + SLACK].fill(0);
}
