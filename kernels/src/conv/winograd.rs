//! Winograd F(4×4, 3×3) for the stride-1 3×3 convolutions on the CPU (issue 7, item 1): each
//! 4×4 output tile costs 36 multiply-adds per (input, output) channel pair instead of 144, so
//! the condition encoder's, the UNet's 32² and the decoder's convs (over 90 % of the model's
//! work) do a quarter of the direct kernel's arithmetic.
//!
//! ```text
//! V[ξ][ci][t] = (Bᵀ d_t,ci B)[ξ]          input tile t (6×6, stride 4), ξ = 6·i + j
//! M[ξ][co][t] = Σ_ci U[ξ][co][ci] · V[ξ][ci][t]   36 independent GEMMs
//! y_t,co      = Aᵀ M[·][co][t] A + b[co]  4×4 output tile
//! U[ξ][co][ci] = (G g_co,ci Gᵀ)[ξ]         weights, transformed once per conv (cached)
//! ```
//!
//! Work split: an image's tiles (row-major over the tile grid) are cut into tasks of
//! [`tiles_per_task`] consecutive tiles, run on rayon. A task transforms its input into a
//! per-thread `V`, runs the 36 GEMMs into a per-thread `M` with the register-tile micro-kernel
//! of the direct conv (`cpu.rs`: a GEMM over `ci` whose right-hand side is read in place, 16
//! tiles a vector; AVX-512 or AVX2 + FMA), and transforms `M` into its output tiles.
//! Transforms work on 16 tiles of one tile row at a time: with AVX-512 intrinsics (masked row
//! loads, deinterleave permutes; output interleaved back into rows with two permutes and a
//! blend per 16 pixels), else on `[f32; 16]` lane arrays compiled for AVX2 ([`lanes`]).
//!
//! Accuracy: the transforms' constants (up to 8 and 1/6) cost a few bits: relative error
//! against an f64 reference 3e-6 … 1e-5 for 16 … 512 input channels, where the direct kernel
//! gets 3e-7 … 1.3e-6 (tests/conv.rs); the model's intermediates stay 10–1000× inside the
//! parity tolerances (the application's tests/it/parity.rs).

// The 6×6 transforms index rows and columns of the same arrays: index loops read clearer.
#![allow(clippy::needless_range_loop)]

use super::cpu::{self, Init, Seg};
use super::{gather_bias, CpuKernel, Padding2d};
use crate::SendPtr;
use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Below this many input or output channels the transforms cost more than the products save.
pub(super) const MIN_CHANNELS: usize = 16;

/// Segments (16 tiles) per chunk of the micro-kernel, as `cpu::main_tile` runs them.
const NV: usize = 3;

/// The micro-kernel the Winograd path runs its products on ([`CpuKernel::best`]: AVX-512
/// transforms with it, or lane-array transforms compiled for AVX2 + FMA), `None` when the CPU
/// has neither or `SDSEG_WINOGRAD=0` (A/B runs, and the direct kernel's accuracy).
pub(super) fn kernel() -> Option<CpuKernel> {
    static K: std::sync::OnceLock<Option<CpuKernel>> = std::sync::OnceLock::new();
    *K.get_or_init(|| {
        if std::env::var("SDSEG_WINOGRAD").ok().as_deref() == Some("0") {
            None
        } else {
            CpuKernel::best()
        }
    })
}

/// Whether this machine runs the Winograd path (see [`kernel`]).
pub(super) fn available() -> bool {
    kernel().is_some()
}

/// Whether the path takes a conv: 3×3 weights, stride 1, at least [`MIN_CHANNELS`] in and out.
pub(super) fn supports(x: &[usize], w: &[usize], stride: usize, pad: Padding2d) -> bool {
    let ([_, c, h, wd], [co, ci, 3, 3]) = (x, w) else {
        return false;
    };
    stride == 1
        && c == ci
        && *c >= MIN_CHANNELS
        && *co >= MIN_CHANNELS
        && h + pad.top + pad.bottom >= 3
        && wd + pad.left + pad.right >= 3
}

/// The transformed weights `U`, per ξ packed as the micro-kernel reads them: blocks of
/// `cpu::co_main` output channels (then the remainder), each `[ci][channel of block]`.
#[derive(Debug)]
pub(crate) struct WinogradWeights {
    c: usize,
    co: usize,
    kernel: CpuKernel,
    u: Vec<f32>,
}

impl WinogradWeights {
    /// From `w` [co, c, 3, 3] (any strides); the transform in f64, rounded once, one block of
    /// output channels per rayon task.
    pub(super) fn new(w: &[f32], wl: &Layout, kernel: CpuKernel) -> Result<WinogradWeights> {
        let (co, c, u) = transform(w, wl, Some(cpu::co_main(kernel)))?;
        Ok(WinogradWeights { c, co, kernel, u })
    }
}

/// `U` of `w` [co, c, 3, 3] (any strides) as 36 matrices `[co][c]` one after the other, or
/// with `packed = Some(main)` each packed for the micro-kernel (see [`WinogradWeights`]). The
/// transform in f64, rounded once, one block of output channels per rayon task.
fn transform(w: &[f32], wl: &Layout, packed: Option<usize>) -> Result<(usize, usize, Vec<f32>)> {
    {
        let (co, c, kh, kw) = wl.shape().dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("winograd: weights {:?}, expected 3×3", wl.dims());
        }
        let s = wl.stride();
        let w = &w[wl.start_offset()..];
        let main = packed.unwrap_or(8);
        let mut u = vec![0f32; 36 * co * c];
        let up = SendPtr(u.as_mut_ptr());
        let blocks: Vec<(usize, usize)> = (0..co.div_ceil(main))
            .map(|b| (b * main, main.min(co - b * main)))
            .collect();
        blocks.par_iter().for_each(|&(co0, cob)| {
            for o in co0..co0 + cob {
                for ci in 0..c {
                    let g: [f64; 9] = std::array::from_fn(|k| {
                        w[o * s[0] + ci * s[1] + (k / 3) * s[2] + (k % 3) * s[3]] as f64
                    });
                    let t = [0, 1, 2].map(|q| g_times([g[q], g[3 + q], g[6 + q]]));
                    let at = match packed {
                        Some(_) => co0 * c + ci * cob + (o - co0),
                        None => o * c + ci,
                    };
                    for i in 0..6 {
                        let row = g_times([t[0][i], t[1][i], t[2][i]]);
                        for (j, v) in row.iter().enumerate() {
                            // SAFETY: `at` lies in this block's `[co0·c, (co0 + cob)·c)` of
                            // every ξ (either layout), which no other task writes.
                            unsafe { *up.get().add((i * 6 + j) * co * c + at) = *v as f32 };
                        }
                    }
                }
            }
        });
        Ok((co, c, u))
    }
}

/// `U` packed for AMX per ξ (split bf16 when `split`), for [`Products::Amx`].
#[derive(Debug)]
pub(crate) struct AmxWinogradWeights {
    c: usize,
    co: usize,
    xi: Vec<super::amx::PackedWeights>,
}

impl AmxWinogradWeights {
    /// From `w` [co, c, 3, 3] (any strides), `co` a multiple of 16.
    pub(super) fn new(w: &[f32], wl: &Layout, split: bool) -> Result<AmxWinogradWeights> {
        let (co, c, u) = transform(w, wl, None)?;
        let layout = Layout::contiguous((co, c, 1, 1));
        let xi = u
            .chunks_exact(co * c)
            .map(|ux| super::amx::PackedWeights::new(ux, &layout, split))
            .collect::<Result<Vec<_>>>()?;
        Ok(AmxWinogradWeights { c, co, xi })
    }
}

/// `U` packed for AVX512-BF16 per ξ (split bf16 when `split`), for [`Products::Avx512Bf16`].
#[derive(Debug)]
pub(crate) struct Avx512Bf16WinogradWeights {
    c: usize,
    co: usize,
    split: bool,
    xi: Vec<super::avx512bf16::PackedWeights>,
}

impl Avx512Bf16WinogradWeights {
    /// From `w` [co, c, 3, 3] (any strides).
    pub(super) fn new(w: &[f32], wl: &Layout, split: bool) -> Result<Avx512Bf16WinogradWeights> {
        let (co, c, u) = transform(w, wl, None)?;
        let layout = Layout::contiguous((co, c, 1, 1));
        let xi = u
            .chunks_exact(co * c)
            .map(|ux| super::avx512bf16::PackedWeights::new(ux, &layout, split))
            .collect::<Result<Vec<_>>>()?;
        Ok(Avx512Bf16WinogradWeights { c, co, split, xi })
    }
}

/// What runs the 36 products.
#[derive(Clone, Copy)]
pub(super) enum Products<'a> {
    /// The direct conv's micro-kernel on f32 `U`.
    Kernel(&'a WinogradWeights),
    /// AMX tiles on bf16 (split) `U` and `V`.
    Amx(&'a AmxWinogradWeights),
    /// `vdpbf16ps` on bf16 (split) pairs of `U` and `V`.
    Avx512Bf16(&'a Avx512Bf16WinogradWeights),
}

/// `G · (a, b, c)ᵀ`: one column (or row) of the weight transform.
fn g_times([a, b, c]: [f64; 3]) -> [f64; 6] {
    let (ac, b6) = (a + c, b / 6.0);
    [
        a / 4.0,
        -(ac / 6.0) - b6,
        -(ac / 6.0) + b6,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// The op: `apply_op2_no_bwd(x, w)` or `apply_op3_no_bwd(x, w, b)` for contiguous f32 `x`
/// [N, C, H, W] and the `w` the weights were built from.
#[derive(Clone, Copy)]
pub(super) struct WinogradConv<'a> {
    pub pad: Padding2d,
    pub products: Products<'a>,
}

super::cpu_conv_ops!(WinogradConv<'_>, "sdseg-conv2d-winograd");

thread_local! {
    /// Per-thread `V` and `M` of a task (reused across calls).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread bf16 band of one ξ's `V` ([`Products::Amx`], [`Products::Avx512Bf16`]).
    static BAND: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Tiles per task: `V` and `M` of a task (36 · (c + co) floats a tile) fit in L2 (2 MiB here:
/// 128 → 128 channels on 256², 31.5 ms against 34.2 with 4 MiB and 41.4 with 16 MiB), in whole
/// micro-kernel chunks of 48 tiles, and there are tasks for every thread.
fn tiles_per_task(c: usize, co: usize, n: usize, tiles: usize, threads: usize) -> usize {
    let per_tile = 36 * (c + co) * 4;
    let mut t = (cpu::cache_budget().l2 / per_tile / 48).max(1) * 48;
    while t > 48 && n * tiles.div_ceil(t) < 2 * threads {
        t -= 48;
    }
    t.min(tiles.div_ceil(16) * 16)
}

impl WinogradConv<'_> {
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        _w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("conv2d winograd: expects a contiguous input");
        };
        let x = &x[x0..x1];
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, ci, _, _) = wl.shape().dims4()?;
        let (pc, pco, kernel) = match self.products {
            Products::Kernel(pw) => (pw.c, pw.co, pw.kernel),
            Products::Amx(pa) => (pa.c, pa.co, CpuKernel::Avx512),
            Products::Avx512Bf16(pb) => (pb.c, pb.co, CpuKernel::Avx512),
        };
        if !supports(xl.dims(), wl.dims(), 1, self.pad) || pc != c || pco != co || ci != c {
            candle_core::bail!(
                "conv2d winograd: input {:?}, weight {:?} (transformed for {pc}→{pco})",
                xl.dims(),
                wl.dims(),
            );
        }
        if !kernel.available() {
            candle_core::bail!("conv2d winograd: this CPU cannot run {kernel:?}");
        }
        if matches!(self.products, Products::Amx(_)) && !super::amx::available() {
            candle_core::bail!("conv2d winograd: this CPU has no AMX-BF16");
        }
        if matches!(self.products, Products::Avx512Bf16(_)) && !super::avx512bf16::hardware() {
            candle_core::bail!("conv2d winograd: this CPU has no AVX512-BF16");
        }
        let p = self.pad;
        let (oh, ow) = (h + p.top + p.bottom - 2, w + p.left + p.right - 2);
        let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
        let tiles = th * tw;
        let bias = match b {
            None => vec![0f32; co],
            Some((b, bl)) => gather_bias(b, bl, co)?,
        };
        let threads = rayon::current_num_threads().max(1);
        let tpt = tiles_per_task(c, co, n, tiles, threads);
        let ts = tpt.div_ceil(16) * 16;
        let tasks_per_img = tiles.div_ceil(tpt);
        let len = n * co * oh * ow;
        // Every output element is written by exactly one output-tile store below.
        let mut y: Vec<f32> = Vec::with_capacity(len);
        let yptr = SendPtr(y.as_mut_ptr());
        let geom = Geom {
            c,
            h,
            w,
            co,
            pad: p,
            oh,
            ow,
            ts,
        };
        let budget = cpu::cache_budget();
        let cb = (budget.l1_input / (NV * 64)).clamp(1, c);
        let taps: Vec<isize> = (0..cb).map(|i| (i * ts) as isize).collect();
        let band_gemm = match self.products {
            Products::Amx(pa) => Some(super::amx::BandGemm::new(&pa.xi[0], ts)),
            _ => None,
        };
        let bf16_products = match self.products {
            Products::Avx512Bf16(pb) => {
                Some(super::avx512bf16::WinogradProducts::new(c, ts, pb.split))
            }
            _ => None,
        };
        (0..n * tasks_per_img).into_par_iter().for_each(|task| {
            let (img, part) = (task / tasks_per_img, task % tasks_per_img);
            let t0 = part * tpt;
            let t1 = (t0 + tpt).min(tiles);
            let runs = runs(t0, t1, tw);
            let yp = yptr;
            SCRATCH.with(|buf| {
                let mut buf = buf.borrow_mut();
                let (v_len, m_len) = (36 * c * ts, 36 * co * ts);
                if buf.len() < v_len + m_len {
                    buf.resize(v_len + m_len, 0.0);
                }
                let (v, m) = buf.split_at_mut(v_len);
                let x_img = &x[img * c * h * w..(img + 1) * c * h * w];
                // SAFETY: the CPU runs `kernel` (and AMX for `Products::Amx`, AVX512-BF16 for
                // `Products::Avx512Bf16`; checked above);
                // every access stays inside `x_img`, `v`, `m`, the band, the packed weights and
                // this task's output tiles, which no other task writes.
                unsafe {
                    let (vp, mp) = (v.as_mut_ptr(), m.as_mut_ptr());
                    let y_img = yp.get().add(img * co * oh * ow);
                    match kernel {
                        CpuKernel::Avx512 => input_transform(&geom, x_img, &runs, vp),
                        CpuKernel::Avx2Fma => lanes::input_transform(&geom, x_img, &runs, vp),
                    }
                    match (self.products, &band_gemm, &bf16_products) {
                        (Products::Amx(pa), Some(bg), _) => BAND.with(|band| {
                            let mut band = band.borrow_mut();
                            if band.len() < bg.band_len() {
                                band.resize(bg.band_len(), 0);
                            }
                            for (xi, pwx) in pa.xi.iter().enumerate() {
                                let (vx, mx) = (vp.add(xi * c * ts), mp.add(xi * co * ts));
                                bg.run(pwx, vx, t1 - t0, &mut band, mx);
                            }
                        }),
                        (Products::Avx512Bf16(pb), _, Some(wp)) => BAND.with(|band| {
                            let mut band = band.borrow_mut();
                            if band.len() < wp.band_len() {
                                band.resize(wp.band_len(), 0);
                            }
                            for (xi, pwx) in pb.xi.iter().enumerate() {
                                let (vx, mx) = (vp.add(xi * c * ts), mp.add(xi * co * ts));
                                wp.run(pwx, vx, t1 - t0, &mut band, mx);
                            }
                        }),
                        (Products::Kernel(pw), _, _) => {
                            products(&geom, pw, t1 - t0, cb, &taps, vp, mp)
                        }
                        _ => unreachable!("band_gemm set for Amx, bf16_products for Avx512Bf16"),
                    }
                    match kernel {
                        CpuKernel::Avx512 => output_transform(&geom, mp, &runs, &bias, y_img),
                        CpuKernel::Avx2Fma => {
                            lanes::output_transform(&geom, mp, &runs, &bias, y_img)
                        }
                    }
                }
            });
        });
        // SAFETY: the tasks above stored every one of the `len` elements.
        unsafe { y.set_len(len) };
        Ok((y, Shape::from((n, co, oh, ow))))
    }
}

/// Shape of one call: input `c×h×w`, output `co×oh×ow`, `ts` floats
/// per row of `V` and `M` (tiles of a task, rounded up to 16).
#[derive(Clone, Copy)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    pad: Padding2d,
    oh: usize,
    ow: usize,
    ts: usize,
}

/// Up to 16 consecutive tiles of one tile row: tile row `ty`, first tile column `tx0`, count,
/// and the lane of the first in the task's `V`/`M` rows.
#[derive(Clone, Copy)]
struct Run {
    ty: usize,
    tx0: usize,
    len: usize,
    lane: usize,
}

fn runs(t0: usize, t1: usize, tw: usize) -> Vec<Run> {
    let mut v = Vec::new();
    let mut t = t0;
    while t < t1 {
        let (ty, tx0) = (t / tw, t % tw);
        let len = (tw - tx0).min(16).min(t1 - t);
        v.push(Run {
            ty,
            tx0,
            len,
            lane: t - t0,
        });
        t += len;
    }
    v
}

fn lanes(len: usize) -> __mmask16 {
    if len >= 16 {
        0xffff
    } else {
        ((1u32 << len) - 1) as __mmask16
    }
}

/// `Bᵀ d` of six vectors (one column of six tiles' 6×6 patches).
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline(always)]
unsafe fn bt6(d: [__m512; 6]) -> [__m512; 6] {
    // SAFETY: the CPU has AVX-512F (contract); register arithmetic only.
    unsafe {
        let c4 = _mm512_set1_ps(4.0);
        let c5 = _mm512_set1_ps(-5.0);
        let c2 = _mm512_set1_ps(2.0);
        let d12 = _mm512_add_ps(d[1], d[2]);
        let d34 = _mm512_add_ps(d[3], d[4]);
        let d1m2 = _mm512_sub_ps(d[1], d[2]);
        let d4m3 = _mm512_sub_ps(d[4], d[3]);
        let d31 = _mm512_sub_ps(d[3], d[1]);
        let d42 = _mm512_sub_ps(d[4], d[2]);
        [
            _mm512_fmadd_ps(c4, d[0], _mm512_fmadd_ps(c5, d[2], d[4])),
            _mm512_fnmadd_ps(c4, d12, d34),
            _mm512_fmadd_ps(c4, d1m2, d4m3),
            _mm512_fmadd_ps(c2, d31, d42),
            _mm512_fnmadd_ps(c2, d31, d42),
            _mm512_fmadd_ps(c4, d[1], _mm512_fmadd_ps(c5, d[3], d[5])),
        ]
    }
}

/// `Aᵀ m` of six vectors.
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline(always)]
unsafe fn at6(m: [__m512; 6]) -> [__m512; 4] {
    // SAFETY: the CPU has AVX-512F (contract); register arithmetic only.
    unsafe {
        let s12 = _mm512_add_ps(m[1], m[2]);
        let d12 = _mm512_sub_ps(m[1], m[2]);
        let s34 = _mm512_add_ps(m[3], m[4]);
        let d34 = _mm512_sub_ps(m[3], m[4]);
        [
            _mm512_add_ps(m[0], _mm512_add_ps(s12, s34)),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12),
            _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d34, d12), m[5]),
        ]
    }
}

/// Index vectors of `_mm512_permutex2var_ps` (lanes 16.. pick from the second source).
fn perm(f: impl Fn(i32) -> i32) -> [i32; 16] {
    std::array::from_fn(|l| f(l as i32))
}

/// Fills the task's `V` ([ξ][ci][lane], rows of `g.ts`) from the image's input.
///
/// A run's patches span 66 input columns of each of 6 rows, from `4·tx0 − left`: five masked
/// loads (columns outside the image read as the zero padding), split into the four column
/// phases by 8 permutes (`d[·][j]` for j < 4; lane `l` = column `4l + j`), and j = 4, 5 as
/// phases 0, 1 moved one lane on (the last lane from the fifth load).
///
/// # Safety
/// The CPU supports AVX-512F; `x` holds the image (`g.c` planes of `g.h · g.w` floats); `v`
/// holds the task's `V` (36 · `g.c` · `g.ts` floats); every run's lanes lie below `g.ts` and
/// its tiles inside the tile grid.
#[target_feature(enable = "avx512f")]
unsafe fn input_transform(g: &Geom, x: &[f32], runs: &[Run], v: *mut f32) {
    // SAFETY: the CPU has AVX-512F; the masked loads read only columns inside the image rows
    // of `x` (the masks), rows inside the image (`rows`), and the stores write lanes
    // `r.lane .. r.lane + r.len` of rows of `v`, inside it (contract).
    unsafe {
        let ld = |a: [i32; 16]| _mm512_loadu_si512(a.as_ptr() as *const _);
        let even = ld(perm(|l| 2 * l));
        let odd = ld(perm(|l| 2 * l + 1));
        let next0 = ld(perm(|l| l + 1));
        let next1 = ld(perm(|l| if l == 15 { 17 } else { l + 1 }));
        let plane = g.h * g.w;
        let xi = g.c * g.ts;
        // Per run: first column, lanes of the five loads inside the image, rows inside it.
        let setup: Vec<(isize, [__mmask16; 5], [Option<usize>; 6])> = runs
            .iter()
            .map(|r| {
                let col0 = (4 * r.tx0) as isize - g.pad.left as isize;
                let masks = std::array::from_fn(|k| {
                    let mut m = 0u32;
                    for q in 0..16 {
                        let col = col0 + (16 * k + q) as isize;
                        if col >= 0 && (col as usize) < g.w {
                            m |= 1 << q;
                        }
                    }
                    m as __mmask16
                });
                let rows = std::array::from_fn(|i| {
                    let pr = 4 * r.ty + i;
                    (pr >= g.pad.top && pr - g.pad.top < g.h).then(|| pr - g.pad.top)
                });
                (col0, masks, rows)
            })
            .collect();
        // Channel by channel, so a channel's rows are read in order across the runs.
        for ci in 0..g.c {
            let xc = x.as_ptr().add(ci * plane);
            for (r, (col0, masks, rows)) in runs.iter().zip(&setup) {
                // Row i of the patches times B (along the columns).
                let mut t = [[_mm512_setzero_ps(); 6]; 6];
                for (i, row) in rows.iter().enumerate() {
                    let Some(row) = row else { continue };
                    let base = xc.add(row * g.w).wrapping_offset(*col0);
                    let l: [__m512; 5] = std::array::from_fn(|k| {
                        _mm512_maskz_loadu_ps(masks[k], base.wrapping_add(16 * k))
                    });
                    let (e01, o01) = (
                        _mm512_permutex2var_ps(l[0], even, l[1]),
                        _mm512_permutex2var_ps(l[0], odd, l[1]),
                    );
                    let (e23, o23) = (
                        _mm512_permutex2var_ps(l[2], even, l[3]),
                        _mm512_permutex2var_ps(l[2], odd, l[3]),
                    );
                    let p0 = _mm512_permutex2var_ps(e01, even, e23);
                    let p1 = _mm512_permutex2var_ps(o01, even, o23);
                    let p2 = _mm512_permutex2var_ps(e01, odd, e23);
                    let p3 = _mm512_permutex2var_ps(o01, odd, o23);
                    let p4 = _mm512_permutex2var_ps(p0, next0, l[4]);
                    let p5 = _mm512_permutex2var_ps(p1, next1, l[4]);
                    t[i] = bt6([p0, p1, p2, p3, p4, p5]);
                }
                let (out, store) = (v.add(ci * g.ts + r.lane), lanes(r.len));
                for j in 0..6 {
                    let col = bt6(std::array::from_fn(|i| t[i][j]));
                    for (i, vi) in col.iter().enumerate() {
                        _mm512_mask_storeu_ps(out.add((6 * i + j) * xi), store, *vi);
                    }
                }
            }
        }
    }
}

/// The 36 GEMMs `M[ξ] = U[ξ] · V[ξ]` of a task with `nt` tiles.
///
/// # Safety
/// The CPU runs `pw.kernel`; `pw` was built for `g.c` → `g.co` channels; `v` holds the task's
/// `V` (36 · `g.c` · `g.ts` floats), `m` its `M` (36 · `g.co` · `g.ts`), `nt <= g.ts`;
/// `taps[i] = i · g.ts` for `i < cb`, `cb <= g.c`.
#[allow(clippy::too_many_arguments)]
unsafe fn products(
    g: &Geom,
    pw: &WinogradWeights,
    nt: usize,
    cb: usize,
    taps: &[isize],
    v: *const f32,
    m: *mut f32,
) {
    // SAFETY: the CPU runs `pw.kernel`; every segment of `nt <= ts` lanes, tap (`i · ts`,
    // `i < cn`) and channel block stays inside `V`, `M` and `U` of each ξ (contract).
    unsafe {
        let k = pw.kernel;
        let main = cpu::co_main(k);
        let (c, co, ts) = (g.c, g.co, g.ts);
        let segs: Vec<Seg> = (0..nt.div_ceil(16))
            .map(|s| Seg {
                x: 16 * s,
                y: 16 * s,
                mask: lanes(nt - 16 * s) as u16,
            })
            .collect();
        let rest = co % main;
        for xi in 0..36 {
            let (vx, mx) = (v.add(xi * c * ts), m.add(xi * co * ts));
            let ux = pw.u.as_ptr().add(xi * co * c);
            for c0 in (0..c).step_by(cb) {
                let cn = cb.min(c - c0);
                let (x_k, taps) = (vx.add(c0 * ts), &taps[..cn]);
                let init = if c0 == 0 {
                    Init::Zero
                } else {
                    Init::Accumulate
                };
                for chunk in segs.chunks(NV) {
                    for co0 in (0..co / main).map(|blk| blk * main) {
                        let w = ux.add(co0 * c + c0 * main);
                        cpu::main_tile(k, taps, w, chunk, x_k, mx.add(co0 * ts), ts, init);
                    }
                }
                if rest > 0 {
                    let co0 = co - rest;
                    let w = ux.add(co0 * c + c0 * rest);
                    cpu::run_block(k, rest, taps, w, &segs, x_k, mx.add(co0 * ts), ts, init);
                }
            }
        }
    }
}

/// Writes the output tiles of the task's runs from its `M` ([ξ][co][lane]), plus the bias.
///
/// # Safety
/// The CPU supports AVX-512F; `m` holds the task's `M` (36 · `g.co` · `g.ts` floats), `bias`
/// `g.co` floats; `y` is the image's output (`g.co` planes of `g.oh · g.ow`), whose pixels of
/// these runs' tiles no other thread accesses meanwhile; every run's lanes lie below `g.ts`.
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(g: &Geom, m: *const f32, runs: &[Run], bias: &[f32], y: *mut f32) {
    // SAFETY: the CPU has AVX-512F; loads read lanes `r.lane .. r.lane + r.len` of rows of
    // `M`; stores write only the pixels of the runs' tiles inside the output plane
    // (`store` masks, rows below `g.oh`), which this caller alone writes (contract).
    unsafe {
        // out_k[4i + b] = o_b[4k + i]: o0/o1 from one permute, o2/o3 from another, then a blend.
        let idx: [__m512i; 4] = std::array::from_fn(|k| {
            let v: [i32; 16] = std::array::from_fn(|p| {
                let (i, b) = ((p / 4) as i32, p % 4);
                4 * k as i32 + i + if b % 2 == 1 { 16 } else { 0 }
            });
            _mm512_loadu_si512(v.as_ptr() as *const _)
        });
        let xi = g.co * g.ts;
        let plane = g.oh * g.ow;
        for r in runs {
            let load = lanes(r.len);
            let x0 = 4 * r.tx0;
            let valid = (4 * r.len).min(g.ow - x0);
            let store: [__mmask16; 4] =
                std::array::from_fn(|k| lanes(valid.saturating_sub(16 * k)));
            for (o, &bo) in bias.iter().enumerate() {
                let src = m.add(o * g.ts + r.lane);
                // Aᵀ along the first index for each column j, then the rows a of that.
                let cols: [[__m512; 4]; 6] = std::array::from_fn(|j| {
                    at6(std::array::from_fn(|i| {
                        _mm512_maskz_loadu_ps(load, src.add((6 * i + j) * xi))
                    }))
                });
                let s: [[__m512; 6]; 4] =
                    std::array::from_fn(|a| std::array::from_fn(|j| cols[j][a]));
                let b = _mm512_set1_ps(bo);
                for (a, sa) in s.iter().enumerate() {
                    let oy = 4 * r.ty + a;
                    if oy >= g.oh {
                        break;
                    }
                    let ob = at6(*sa).map(|v| _mm512_add_ps(v, b));
                    let dst = y.add(o * plane + oy * g.ow + x0);
                    for (k, ik) in idx.iter().enumerate() {
                        if store[k] == 0 {
                            break;
                        }
                        let p01 = _mm512_permutex2var_ps(ob[0], *ik, ob[1]);
                        let p23 = _mm512_permutex2var_ps(ob[2], *ik, ob[3]);
                        let out = _mm512_mask_blend_ps(0xcccc, p01, p23);
                        _mm512_mask_storeu_ps(dst.add(16 * k), store[k], out);
                    }
                }
            }
        }
    }
}

/// The transforms on `[f32; 16]` lane arrays (16 tiles, as the AVX-512 ones), compiled for
/// AVX2 + FMA: LLVM keeps each array in two ymm registers. Patches are read with scalar loads
/// (AVX2 has no masked 2-source permute to deinterleave with); on the full-size model these
/// transforms take ~15 % of the Winograd time.
mod lanes {
    use super::{Geom, Run};

    type L = [f32; 16];

    /// The first `len` lanes of `a` to `dst` (a fixed-size copy for full runs: a dynamic-length
    /// `copy_from_slice` is a `memmove` call, which took 15 % of the time).
    ///
    /// # Safety
    /// `dst` starts `len.min(16)` writable floats.
    #[inline(always)]
    unsafe fn store(dst: *mut f32, a: &L, len: usize) {
        // SAFETY: `dst` starts `len` (at most 16) writable floats (contract).
        unsafe {
            if len == 16 {
                (dst as *mut L).write_unaligned(*a);
            } else {
                for (l, v) in a.iter().enumerate().take(len) {
                    *dst.add(l) = *v;
                }
            }
        }
    }

    /// `len` floats from `src`, zero beyond.
    ///
    /// # Safety
    /// `src` starts `len.min(16)` readable floats.
    #[inline(always)]
    unsafe fn load(src: *const f32, len: usize) -> L {
        // SAFETY: `src` starts `len` (at most 16) readable floats (contract).
        unsafe {
            if len == 16 {
                (src as *const L).read_unaligned()
            } else {
                let mut a = [0f32; 16];
                for (l, v) in a.iter_mut().enumerate().take(len) {
                    *v = *src.add(l);
                }
                a
            }
        }
    }

    #[inline(always)]
    fn map2(a: &L, b: &L, f: impl Fn(f32, f32) -> f32) -> L {
        std::array::from_fn(|l| f(a[l], b[l]))
    }

    /// `Bᵀ d`, as `super::bt6`.
    #[inline(always)]
    fn bt6(d: &[L; 6]) -> [L; 6] {
        let d12 = map2(&d[1], &d[2], |a, b| a + b);
        let d34 = map2(&d[3], &d[4], |a, b| a + b);
        let d1m2 = map2(&d[1], &d[2], |a, b| a - b);
        let d4m3 = map2(&d[4], &d[3], |a, b| a - b);
        let d31 = map2(&d[3], &d[1], |a, b| a - b);
        let d42 = map2(&d[4], &d[2], |a, b| a - b);
        [
            std::array::from_fn(|l| 4.0f32.mul_add(d[0][l], (-5.0f32).mul_add(d[2][l], d[4][l]))),
            map2(&d12, &d34, |a, b| (-4.0f32).mul_add(a, b)),
            map2(&d1m2, &d4m3, |a, b| 4.0f32.mul_add(a, b)),
            map2(&d31, &d42, |a, b| 2.0f32.mul_add(a, b)),
            map2(&d31, &d42, |a, b| (-2.0f32).mul_add(a, b)),
            std::array::from_fn(|l| 4.0f32.mul_add(d[1][l], (-5.0f32).mul_add(d[3][l], d[5][l]))),
        ]
    }

    /// `Aᵀ m`, as `super::at6`.
    #[inline(always)]
    fn at6(m: &[L; 6]) -> [L; 4] {
        let s12 = map2(&m[1], &m[2], |a, b| a + b);
        let d12 = map2(&m[1], &m[2], |a, b| a - b);
        let s34 = map2(&m[3], &m[4], |a, b| a + b);
        let d34 = map2(&m[3], &m[4], |a, b| a - b);
        [
            std::array::from_fn(|l| m[0][l] + (s12[l] + s34[l])),
            map2(&d34, &d12, |a, b| 2.0f32.mul_add(a, b)),
            map2(&s34, &s12, |a, b| 4.0f32.mul_add(a, b)),
            std::array::from_fn(|l| 8.0f32.mul_add(d34[l], d12[l]) + m[5][l]),
        ]
    }

    /// As `super::input_transform`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `v` holds the task's `V` (36 · c · ts floats).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_transform(g: &Geom, x: &[f32], runs: &[Run], v: *mut f32) {
        // SAFETY: the stores write lanes `r.lane .. r.lane + r.len` of rows of `v`, inside it
        // (contract); `x` is read through bounds-checked slices.
        unsafe {
            let plane = g.h * g.w;
            let xi = g.c * g.ts;
            for ci in 0..g.c {
                let xc = &x[ci * plane..(ci + 1) * plane];
                for r in runs {
                    let col0 = (4 * r.tx0) as isize - g.pad.left as isize;
                    let inside = col0 >= 0 && col0 as usize + 4 * r.len + 2 <= g.w;
                    let mut t = [[[0f32; 16]; 6]; 6];
                    for (i, ti) in t.iter_mut().enumerate() {
                        let pr = 4 * r.ty + i;
                        if pr < g.pad.top || pr - g.pad.top >= g.h {
                            continue;
                        }
                        let row = &xc[(pr - g.pad.top) * g.w..][..g.w];
                        let mut d = [[0f32; 16]; 6];
                        if inside {
                            let src = &row[col0 as usize..col0 as usize + 4 * r.len + 2];
                            for l in 0..r.len {
                                for (j, dj) in d.iter_mut().enumerate() {
                                    dj[l] = src[4 * l + j];
                                }
                            }
                        } else {
                            for l in 0..r.len {
                                for (j, dj) in d.iter_mut().enumerate() {
                                    let col = col0 + (4 * l + j) as isize;
                                    if col >= 0 && (col as usize) < g.w {
                                        dj[l] = row[col as usize];
                                    }
                                }
                            }
                        }
                        *ti = bt6(&d);
                    }
                    let out = v.add(ci * g.ts + r.lane);
                    for j in 0..6 {
                        let col = bt6(&std::array::from_fn(|i| t[i][j]));
                        for (i, vi) in col.iter().enumerate() {
                            store(out.add((6 * i + j) * xi), vi, r.len);
                        }
                    }
                }
            }
        }
    }

    /// As `super::output_transform`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `m` holds the task's `M`; `y` is the image's output, whose
    /// pixels of these runs' tiles no other task writes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_transform(
        g: &Geom,
        m: *const f32,
        runs: &[Run],
        bias: &[f32],
        y: *mut f32,
    ) {
        // SAFETY: loads read lanes `r.lane .. r.lane + r.len` of rows of `M`; stores write the
        // `valid` pixels of the runs' tile rows below `g.oh`, inside the output plane, which
        // this caller alone writes (contract).
        unsafe {
            let xi = g.co * g.ts;
            let plane = g.oh * g.ow;
            for r in runs {
                let x0 = 4 * r.tx0;
                let valid = (4 * r.len).min(g.ow - x0);
                for (o, &bo) in bias.iter().enumerate() {
                    let src = m.add(o * g.ts + r.lane);
                    let cols: [[L; 4]; 6] = std::array::from_fn(|j| {
                        at6(&std::array::from_fn(|i| {
                            load(src.add((6 * i + j) * xi), r.len)
                        }))
                    });
                    for a in 0..4 {
                        let oy = 4 * r.ty + a;
                        if oy >= g.oh {
                            break;
                        }
                        let ob = at6(&std::array::from_fn(|j| cols[j][a]));
                        let dst = y.add(o * plane + oy * g.ow + x0);
                        if valid == 64 {
                            let row: [f32; 64] = std::array::from_fn(|q| ob[q % 4][q / 4] + bo);
                            (dst as *mut [f32; 64]).write_unaligned(row);
                        } else {
                            for q in 0..valid {
                                *dst.add(q) = ob[q % 4][q / 4] + bo;
                            }
                        }
                    }
                }
            }
        }
    }
}
