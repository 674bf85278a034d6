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
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Whether this CPU and OS run AMX-BF16 (CPUID leaf 7 `AMX-BF16` and `AMX-TILE`, and Linux
/// granting the process the tile-data state). `SDSEG_AMX=0` turns it off (tests of the
/// fallback). Detected once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var("SDSEG_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
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
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
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
    let ow = (wp - kw) / stride + 1;
    let flat = kh == 1 && kw == 1 && stride == 1 && pad == Padding2d::default();
    ow.is_multiple_of(16) || (flat && (h * wd).is_multiple_of(16))
}

/// The conv as a candle custom op (f32 in and out, bf16 products, f32 sums); the input must be
/// contiguous and [`supports`] true.
#[derive(Clone, Copy, Debug)]
pub(super) struct AmxConv2d {
    pub stride: usize,
    pub pad: Padding2d,
}

impl CustomOp2 for AmxConv2d {
    fn name(&self) -> &'static str {
        "sdseg-conv2d-amx-bf16"
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

impl CustomOp3 for AmxConv2d {
    fn name(&self) -> &'static str {
        "sdseg-conv2d-amx-bf16-bias"
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

/// bf16 bits of `x`, rounded to nearest even (NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
    }
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
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
        let flat = !ow.is_multiple_of(16);
        let (h, w) = if flat { (h * w / 16, 16) } else { (h, w) };
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
            ow: (w + p.left + p.right - kw) / s + 1,
            cp: c.div_ceil(32) * 16,
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
    rows: usize,
    phase: usize,
    row: usize,
    ch: usize,
}

/// `u32`s past the band's end: the last tap of the last segment may read that far.
const SLACK: usize = 32;

/// Bytes of a task's input band we aim for (L2-resident with one channel-pair block of
/// weights beside it).
const BAND_BYTES: usize = 384 * 1024;

impl AmxConv2d {
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let (n, _, _, _) = xl.shape().dims4()?;
        let g = Geom::new(self, xl, wl)?;
        let (co, oh_real, ow_real) = {
            let (_, _, h, wd) = xl.shape().dims4()?;
            let p = self.pad;
            let (_, _, kh, kw) = wl.shape().dims4()?;
            (
                g.co,
                (h + p.top + p.bottom - kh) / g.s + 1,
                (wd + p.left + p.right - kw) / g.s + 1,
            )
        };
        let out_shape = Shape::from((n, co, oh_real, ow_real));
        debug_assert_eq!(oh_real * ow_real, g.oh * g.ow);
        let mut y = vec![0f32; n * co * g.oh * g.ow];
        if y.is_empty() {
            return Ok((y, out_shape));
        }
        let bias_tiles = match b {
            None => None,
            Some((b, bl)) => Some(bias_tiles(b, bl, co)?),
        };
        let wpack = pack_weights(&w[wl.start_offset()..], wl, &g);
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
            rows: band_rows,
            phase: ws,
            row: g.s * ws,
            ch: band_rows * g.s * ws,
        };
        let koffs = k_offsets(&g, &band);
        let tasks_per_img = g.oh.div_ceil(rpt);
        let y_plane = g.oh * g.ow;
        let yptr = SendPtr(y.as_mut_ptr());

        (0..g.n * tasks_per_img).into_par_iter().for_each(|t| {
            let (img, part) = (t / tasks_per_img, t % tasks_per_img);
            let r0 = part * rpt;
            let r1 = (r0 + rpt).min(g.oh);
            BAND.with(|buf| {
                let mut buf = buf.borrow_mut();
                let len = g.cp / 2 * 2 * band.ch + SLACK; // pairs × plane
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                let rows = (r1 - r0 - 1) * g.s + g.kh;
                fill_band(&mut buf, x, &g, &band, img, r0 * g.s, rows);
                // Segments of the task: 16 output pixels each, (band offset, output offset).
                let segs: Vec<(usize, usize)> = (r0..r1)
                    .flat_map(|r| {
                        (0..g.ow).step_by(16).map(move |c0| {
                            ((r - r0) * g.s * band.row + c0, r * g.ow + c0)
                        })
                    })
                    .collect();
                let yp = yptr;
                // SAFETY: every tile reads inside the band (offsets from `k_offsets` and
                // `segs` stay below `len`) and the packed weights; stores write this task's
                // output rows only; the tile configuration is loaded before any tile use and
                // released after.
                unsafe {
                    configure_tiles();
                    let y_img = yp.get().add(img * co * y_plane);
                    let blocks = co / 16;
                    let mut cb = 0;
                    while cb < blocks {
                        let mc = (blocks - cb).min(2);
                        let a = wpack.as_ptr().add(cb * g.ksteps() * 512);
                        let bias = bias_tiles.as_ref().map(|bt| bt.as_ptr().add(cb * 256));
                        let mut si = 0;
                        while si < segs.len() {
                            let np = (segs.len() - si).min(2);
                            let bx = [
                                buf.as_ptr().add(segs[si].0),
                                buf.as_ptr().add(segs[si + np - 1].0),
                            ];
                            let yo = [
                                y_img.add(cb * 16 * y_plane + segs[si].1),
                                y_img.add(cb * 16 * y_plane + segs[si + np - 1].1),
                            ];
                            let job = Job {
                                a,
                                a_step: g.ksteps() * 512,
                                b: bx,
                                b_stride: band.ch * 4,
                                koffs: &koffs,
                                bias,
                                y: yo,
                                y_stride: y_plane * 16 * 4 / 16,
                                y_block: 16 * y_plane,
                            };
                            match (mc, np) {
                                (2, 2) => job.run::<2, 2>(),
                                (2, _) => job.run::<2, 1>(),
                                (_, 2) => job.run::<1, 2>(),
                                _ => job.run::<1, 1>(),
                            }
                            si += np;
                        }
                        cb += mc;
                    }
                    asm!("tilerelease", options(nostack, nomem));
                }
            });
        });
        Ok((y, out_shape))
    }
}

thread_local! {
    /// Per-thread input band (reused across calls).
    static BAND: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint output rows while `run` keeps the buffer alive.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// 64-byte tile configuration (palette 1): all 8 tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// # Safety
/// AMX is [`available`].
unsafe fn configure_tiles() {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
}

/// One register tile of work: `MC` blocks of 16 output channels × `NP` segments of 16 pixels
/// over every reduction step.
struct Job<'a> {
    /// Packed weights of the first channel block; the second is `a_step` `u16`s further.
    a: *const u16,
    a_step: usize,
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
        asm!(concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b), options(nostack, nomem))
    };
}

impl Job<'_> {
    /// # Safety
    /// Tiles configured by [`configure_tiles`]; pointers as documented on the fields.
    #[inline(always)]
    unsafe fn run<const MC: usize, const NP: usize>(&self) {
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
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                     options(nostack, nomem));
            }
        }
        let a1 = self.a.add(self.a_step);
        for (k, &off) in self.koffs.iter().enumerate() {
            tile_load!("tmm4", self.a.add(k * 512), 64usize);
            tile_load!("tmm6", self.b[0].add(off), self.b_stride);
            tile_dp!("tmm0", "tmm4", "tmm6");
            if NP == 2 {
                tile_load!("tmm7", self.b[1].add(off), self.b_stride);
                tile_dp!("tmm1", "tmm4", "tmm7");
            }
            if MC == 2 {
                tile_load!("tmm5", a1.add(k * 512), 64usize);
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

/// Band offset of each reduction step (chunk `q` of 16 pairs, tap `kh`, `kw`), in the order
/// [`pack_weights`] packs them.
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

/// Weights as `A` tiles: block of 16 output channels, reduction step, 16 rows (channels) of
/// 32 bf16 (input channels of the chunk, zero past `c`).
fn pack_weights(w: &[f32], wl: &Layout, g: &Geom) -> Vec<u16> {
    let st = wl.stride();
    let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
    let ksteps = g.ksteps();
    let mut out = vec![0u16; g.co * ksteps * 32];
    out.par_chunks_mut(ksteps * 512)
        .enumerate()
        .for_each(|(blk, dst)| {
            let mut k = 0;
            for q in 0..g.cp / 16 {
                for kh in 0..g.kh {
                    for kw in 0..g.kw {
                        for r in 0..16 {
                            let co = blk * 16 + r;
                            let row = &mut dst[(k * 16 + r) * 32..(k * 16 + r + 1) * 32];
                            for (e, v) in row.iter_mut().enumerate() {
                                let ci = q * 32 + e;
                                if ci < g.c {
                                    *v = bf16_bits(w[co * s0 + ci * s1 + kh * s2 + kw * s3])
                                        as u16;
                                }
                            }
                        }
                        k += 1;
                    }
                }
            }
        });
    out
}

/// Per block of 16 output channels, a 16×16 f32 tile whose row `r` is `bias[16·blk + r]`.
fn bias_tiles(b: &[f32], bl: &Layout, co: usize) -> Result<Vec<f32>> {
    if bl.shape().elem_count() != co || bl.dims().len() != 1 {
        candle_core::bail!("conv2d: bias shape {:?}, expected [{co}]", bl.shape());
    }
    let (o, s) = (bl.start_offset(), bl.stride()[0]);
    let mut t = vec![0f32; co * 16];
    for (i, row) in t.chunks_exact_mut(16).enumerate() {
        row.fill(b[o + i * s]);
    }
    Ok(t)
}

/// Copies padded input rows `pr0 .. pr0 + rows` of image `img` into the band as bf16 channel
/// pairs, zero padding (rows, columns, channels past `c`) included.
fn fill_band(dst: &mut [u32], x: &[f32], g: &Geom, band: &Band, img: usize, pr0: usize, rows: usize) {
    let (p, s, ws) = (g.pad, g.s, band.phase);
    let plane = g.h * g.w;
    let x_img = &x[img * g.c * plane..(img + 1) * g.c * plane];
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
            let a = &x_img[c0 * plane + ir * g.w..c0 * plane + (ir + 1) * g.w];
            let zero = [0f32; 0];
            let bsrc: &[f32] = if c1 < g.c {
                &x_img[c1 * plane + ir * g.w..c1 * plane + (ir + 1) * g.w]
            } else {
                &zero
            };
            if s == 1 {
                drow[..p.left].fill(0);
                let d = &mut drow[p.left..p.left + g.w];
                if bsrc.is_empty() {
                    for (o, &lo) in d.iter_mut().zip(a) {
                        *o = pair(lo, 0.0);
                    }
                } else {
                    for ((o, &lo), &hi) in d.iter_mut().zip(a).zip(bsrc) {
                        *o = pair(lo, hi);
                    }
                }
                drow[p.left + g.w..].fill(0);
            } else {
                drow.fill(0);
                for j in 0..g.w {
                    let jp = j + p.left;
                    let hi = bsrc.get(j).copied().unwrap_or(0.0);
                    drow[(jp % s) * ws + jp / s] = pair(a[j], hi);
                }
            }
        }
    }
    let end = g.cp * band.ch;
    dst[end..end + SLACK].fill(0);
}
