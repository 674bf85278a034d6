//! `Conv2d` of our own: the one convolution every layer of the model uses, so that the fast
//! CPU path (issue 7) is chosen here, once, and the model code never sees it.
//!
//! [`Conv2d::forward`] runs [`cpu::FastConv2d`] (a direct convolution with an AVX-512 or an
//! AVX2 + FMA micro-kernel, faster than candle 0.11's im2col conv2d) for f32 NCHW tensors on the
//! CPU when the CPU has AVX-512F or AVX2 + FMA ([`CpuKernel`]), groups = 1 and dilation = 1, and
//! nothing tracks gradients; anything else (CUDA, f16/bf16 tensors, groups, dilation, other
//! CPUs) goes to candle's `conv2d`, and autograd to [`ConvPath::Im2col`].
//! 1×1 convs (stride 1, unpadded) and convs onto small planes on the same tensors go to
//! [`ConvPath::Matmul`] instead: one `gemm` per image (`gemm.rs`), faster there.
//! Under a [`CpuPrecision`] other than f32 (`--dtype bf16` on the CPU, see
//! [`with_cpu_precision`]) the same tensors go to the bf16 level [`Bf16Kernel::best`] names:
//! [`ConvPath::AmxBf16`] (`amx.rs`) where the CPU has AMX-BF16, else
//! [`ConvPath::Avx512Bf16`] (`avx512bf16.rs`) where it has AVX512-BF16 (AMD Zen 4/5); with
//! neither, the f32 paths, bit for bit. Stride-1 3×3 convs with ≥ 16 channels onto planes over
//! 256 px take [`ConvPath::Winograd`] (`winograd.rs`) in f32, [`ConvPath::WinogradAmxBf16`] in
//! split bf16 on AMX and [`ConvPath::WinogradAvx512Bf16`] on AVX512-BF16 (split products
//! under either bf16 precision: see [`Bf16Winograd`]).
//! Asymmetric padding ([`Padding2d`], e.g. the LDM `Downsample`'s `F.pad(x, (0, 1, 0, 1))`) is
//! part of the conv: no padded copy of the activation on the fast path.
//!
//! A conv is built from its tensors ([`Conv2d::new`]); loading them from a checkpoint is the
//! application's business (`sdseg_volume::model::conv::conv2d`).

/// `CustomOp2` (`x`, `w`) and `CustomOp3` (`x`, `w`, `b`; name + "-bias") for a CPU f32 conv
/// op with `fn run(&self, x, x_layout, w, w_layout, Option<(b, b_layout)>) -> Result<(Vec<f32>,
/// Shape)>`: the one place the candle plumbing of our conv ops lives.
macro_rules! cpu_conv_ops {
    ($ty:ty, $name:literal) => {
        impl candle_core::CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                x: &candle_core::CpuStorage,
                xl: &candle_core::Layout,
                w: &candle_core::CpuStorage,
                wl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, None)?;
                Ok((candle_core::CpuStorage::F32(y), shape))
            }
        }
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                concat!($name, "-bias")
            }
            fn cpu_fwd(
                &self,
                x: &candle_core::CpuStorage,
                xl: &candle_core::Layout,
                w: &candle_core::CpuStorage,
                wl: &candle_core::Layout,
                b: &candle_core::CpuStorage,
                bl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                let b = (b.as_slice()?, bl);
                let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, Some(b))?;
                Ok((candle_core::CpuStorage::F32(y), shape))
            }
        }
    };
}
use cpu_conv_ops;

/// The bias of a conv op as `co` contiguous floats (any stride), checked against `co`.
fn gather_bias(b: &[f32], bl: &candle_core::Layout, co: usize) -> Result<Vec<f32>> {
    if bl.shape().elem_count() != co || bl.dims().len() != 1 {
        candle_core::bail!("conv2d: bias shape {:?}, expected [{co}]", bl.shape());
    }
    let (o, s) = (bl.start_offset(), bl.stride()[0]);
    Ok((0..co).map(|i| b[o + i * s]).collect())
}

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
#[cfg(target_arch = "x86_64")]
mod cpu;
mod gemm;
mod im2col;
#[cfg(target_arch = "x86_64")]
mod winograd;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Conv2dConfig;
use std::cell::Cell;

/// What the CPU convolutions of f32 tensors compute in (`--dtype bf16` on the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPrecision {
    /// f32 products and sums.
    #[default]
    F32,
    /// Input and weights rounded to bf16 (nearest even), f32 sums, on the level
    /// [`Bf16Kernel::best`] names where the shape fits it, f32 otherwise.
    Bf16,
    /// Split bf16: input and weights as a bf16 plus a bf16 residual, three bf16 products per
    /// f32 one (all but residual × residual), f32 sums: products good to ~16 mantissa bits, on
    /// the same levels, at three times their bf16 work.
    Bf16x3,
}

thread_local! {
    static CPU_PRECISION: Cell<CpuPrecision> = const { Cell::new(CpuPrecision::F32) };
}

/// Runs `f` with the convolutions this thread starts computing in `p` (restored afterwards,
/// also on unwind). A scope rather than a field of every conv: the precision is a property of
/// the run (`--dtype`), and the weights are the same f32 tensors either way.
pub fn with_cpu_precision<R>(p: CpuPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(CpuPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            CPU_PRECISION.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CPU_PRECISION.with(|c| c.replace(p)));
    f()
}

/// The precision in force on this thread (see [`with_cpu_precision`]).
pub fn cpu_precision() -> CpuPrecision {
    CPU_PRECISION.with(|c| c.get())
}

/// Whether this machine computes [`CpuPrecision::Bf16`] convolutions in bf16 ([`Bf16Kernel::best`]
/// is some level: x86-64 with AMX-BF16 granted by the OS, or with AVX512-BF16, and the switches
/// leave it on); elsewhere they run in f32, bit for bit.
pub fn bf16_available() -> bool {
    Bf16Kernel::best().is_some()
}

/// The bf16 levels of [`CpuPrecision::Bf16`] / [`CpuPrecision::Bf16x3`] convolutions, fastest
/// first. A run uses one of them ([`Bf16Kernel::best`]); the convs it does not take run in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`tdpbf16ps`): [`ConvPath::AmxBf16`], [`ConvPath::WinogradAmxBf16`].
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`, AMD Zen 4/5, Intel Cooper Lake and later):
    /// [`ConvPath::Avx512Bf16`], [`ConvPath::WinogradAvx512Bf16`].
    Avx512Bf16,
}

impl Bf16Kernel {
    /// Whether this machine can run the level (CPUID, and for AMX the OS's grant of the tile
    /// state), whatever the switches say.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Bf16Kernel::Amx => amx::available(),
                Bf16Kernel::Avx512Bf16 => avx512bf16::hardware(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Every level this machine runs, fastest first (tests and benches run each).
    pub fn all_available() -> Vec<Bf16Kernel> {
        [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    /// The level bf16 runs use (detected once): the first of [`Bf16Kernel::all_available`]
    /// the switches leave on. `SDSEG_CONV_KERNEL` names the highest kernel level:
    /// `avx512bf16` skips AMX (and turns AVX512-BF16 on), `avx512` or `avx2` (an f32
    /// micro-kernel) skips both bf16 levels; `SDSEG_AMX=0` skips AMX; AVX512-BF16 is opt-in
    /// (`SDSEG_AVX512BF16=1`, see [`best_bf16_with`]). `None`: bf16 runs compute in f32.
    pub fn best() -> Option<Bf16Kernel> {
        static BEST: std::sync::OnceLock<Option<Bf16Kernel>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let var = |name| std::env::var(name).ok();
            best_bf16_with(
                var("SDSEG_CONV_KERNEL").as_deref(),
                var("SDSEG_AMX").as_deref(),
                var("SDSEG_AVX512BF16").as_deref(),
                Bf16Kernel::available,
            )
        })
    }

    /// The level's name in `bench` reports and warnings.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
        }
    }
}

/// What the products of [`ConvPath::WinogradAvx512Bf16`] compute in, for either bf16 precision
/// (`SDSEG_BF16_WINOGRAD=split|plain|f32`, read once; default `split`).
///
/// Plain bf16 products in Winograd's transformed domain lose ~31× more than on a direct path
/// (the F(4×4, 3×3) transforms amplify rounding errors by that factor, for f32 too): rel err
/// 5–8e-2 per conv against 2e-3 for plain bf16 direct, and the tiny fixtures' decisions agree
/// with f32 on 98.54 % / 94.06 % of pixels (binary / multi-class), below `bf16-fast`'s bar
/// (98.5 %, no flips where the margin is ≥ 1e-2: 366 / 2481 there). So both precisions take
/// split products on Winograd shapes by default (1.0–1.7e-4 per conv; 99.997 % / 99.991 %),
/// and `--dtype bf16-fast` differs from `bf16` on the other convs only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Winograd {
    /// Split bf16 products (three `vdpbf16ps` per step) under either precision.
    Split,
    /// Plain bf16 products under [`CpuPrecision::Bf16`] (experimental: misses the accuracy
    /// bar above), split under [`CpuPrecision::Bf16x3`].
    Plain,
    /// The f32 Winograd path ([`ConvPath::Winograd`]) for these convs, bit for bit.
    F32,
}

impl Bf16Winograd {
    /// The mode in force (`SDSEG_BF16_WINOGRAD`, read once; unknown values: `split`).
    pub fn current() -> Bf16Winograd {
        static MODE: std::sync::OnceLock<Bf16Winograd> = std::sync::OnceLock::new();
        *MODE.get_or_init(
            || match std::env::var("SDSEG_BF16_WINOGRAD").ok().as_deref() {
                Some("plain") => Bf16Winograd::Plain,
                Some("f32") => Bf16Winograd::F32,
                _ => Bf16Winograd::Split,
            },
        )
    }
}

/// [`Bf16Kernel::best`] for the given values of `SDSEG_CONV_KERNEL`, `SDSEG_AMX` and
/// `SDSEG_AVX512BF16` and the given hardware.
fn best_bf16_with(
    conv_kernel: Option<&str>,
    amx: Option<&str>,
    avx512bf16: Option<&str>,
    available: impl Fn(Bf16Kernel) -> bool,
) -> Option<Bf16Kernel> {
    let allowed = |k: Bf16Kernel| match (k, conv_kernel) {
        (_, Some("avx512" | "avx2")) => false,
        (Bf16Kernel::Amx, Some("avx512bf16")) => false,
        (Bf16Kernel::Amx, _) => amx != Some("0"),
        // Opt-in until it is measured faster than f32 on a CPU that has it without AMX: on
        // Sapphire Rapids it runs the full-size model 2.6× slower than f32 (bf16, batch 4:
        // 5553 vs 2122 ms/slice), and a bf16 run must never be slower than its f32 fallback.
        (Bf16Kernel::Avx512Bf16, Some("avx512bf16")) => avx512bf16 != Some("0"),
        (Bf16Kernel::Avx512Bf16, _) => avx512bf16 == Some("1"),
    };
    [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
        .into_iter()
        .find(|&k| allowed(k) && available(k))
}

/// The highest kernel level a run in precision `p` uses on this machine (what `bench`
/// reports): the bf16 level for a bf16 precision where there is one, else the f32
/// micro-kernel; convs a level does not take run on the next (f32) one, see
/// [`Conv2d::path_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelLevel {
    Bf16(Bf16Kernel),
    F32(CpuKernel),
    /// No fast path on this CPU: candle's conv2d.
    Candle,
}

impl KernelLevel {
    /// The level of a run in `p`: [`Bf16Kernel::best`] (bf16 precisions), else
    /// [`CpuKernel::best`].
    pub fn of_run(p: CpuPrecision) -> KernelLevel {
        match (p, Bf16Kernel::best(), CpuKernel::best()) {
            (CpuPrecision::Bf16 | CpuPrecision::Bf16x3, Some(b), _) => KernelLevel::Bf16(b),
            (_, _, Some(k)) => KernelLevel::F32(k),
            (_, _, None) => KernelLevel::Candle,
        }
    }
}

impl std::fmt::Display for KernelLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelLevel::Bf16(b) => f.write_str(b.name()),
            KernelLevel::F32(CpuKernel::Avx512) => f.write_str("avx512"),
            KernelLevel::F32(CpuKernel::Avx2Fma) => f.write_str("avx2"),
            KernelLevel::Candle => f.write_str("candle"),
        }
    }
}

/// Zero padding on each side of the input, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding2d {
    /// `p` pixels on every side (PyTorch's `padding=p`).
    pub fn symmetric(p: usize) -> Padding2d {
        Padding2d {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// From PyTorch's `F.pad(x, (left, right, top, bottom))` argument order.
    pub fn from_torch_pad(left: usize, right: usize, top: usize, bottom: usize) -> Padding2d {
        Padding2d {
            top,
            bottom,
            left,
            right,
        }
    }

    fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.top == self.left && self.top == self.right
    }
}

/// Which implementation [`Conv2d::forward`] runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// bf16 products with f32 sums on AMX tiles (`amx.rs`), for f32 CPU tensors without
    /// gradients under a bf16 [`CpuPrecision`], when the level is [`Bf16Kernel::Amx`] and the
    /// conv has output channels in 16s.
    AmxBf16,
    /// bf16 products with f32 sums by AVX512-BF16's `vdpbf16ps` (`avx512bf16.rs`, plain or
    /// split bf16 as the precision says), for the same tensors when the level is
    /// [`Bf16Kernel::Avx512Bf16`]: every conv but those [`ConvPath::Winograd`] would take.
    Avx512Bf16,
    /// Our direct CPU convolution, with the micro-kernel [`Conv2d::cpu_kernel_for`] names.
    FastCpu,
    /// Winograd F(4×4, 3×3) (`winograd.rs`): stride-1 3×3 convs with at least 16 input and
    /// output channels onto planes larger than [`ConvPath::Matmul`] takes, on the tensors
    /// [`ConvPath::FastCpu`] takes, products on [`CpuKernel::best`]; not when a micro-kernel is
    /// forced or `SDSEG_WINOGRAD=0`.
    Winograd,
    /// The same Winograd transforms (f32, AVX-512) with the 36 products in split bf16 on AMX
    /// tiles: what [`ConvPath::AmxBf16`] takes under [`CpuPrecision::Bf16x3`] when the conv
    /// is also one [`ConvPath::Winograd`] takes (so `SDSEG_WINOGRAD=0` turns this off too) and
    /// has output channels in 16s.
    WinogradAmxBf16,
    /// The same Winograd transforms with the 36 products on AVX512-BF16 (`vdpbf16ps`; split
    /// bf16, see [`Bf16Winograd`] for why and the other choices): the convs
    /// [`ConvPath::Winograd`] takes (so `SDSEG_WINOGRAD=0` turns this off too), when the level
    /// is [`Bf16Kernel::Avx512Bf16`].
    WinogradAvx512Bf16,
    /// One matrix product per image (`gemm` crate, bias accumulated in place; an im2col copy
    /// first unless 1×1): 1×1 stride-1 unpadded convs, and any conv whose output plane has at
    /// most 256 pixels, on the tensors [`ConvPath::FastCpu`] takes (f32 CPU, no gradients), any
    /// CPU; not when a micro-kernel is forced with [`Conv2d::with_cpu_kernel`].
    Matmul,
    /// candle's `Tensor::conv2d` (after an explicit zero pad when the padding is asymmetric).
    Candle,
    /// Shifted views stacked into columns and one matmul, built from differentiable candle ops
    /// only. Taken when gradients are tracked (training): candle 0.11's conv2d backward runs a
    /// scalar `conv_transpose2d` for the input gradient, which is ~30× slower than the
    /// matmul's backward this path gets.
    Im2col,
}

/// The micro-kernels of [`ConvPath::FastCpu`], fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuKernel {
    /// 32 zmm registers, 16 pixels a vector (x86-64 with AVX-512F).
    Avx512,
    /// 16 ymm registers, 8 pixels a vector (x86-64 with AVX2 and FMA).
    Avx2Fma,
}

impl CpuKernel {
    /// Whether this CPU can run the kernel (std caches the CPUID answers).
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                CpuKernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                CpuKernel::Avx2Fma => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The kernel `forward` uses (detected once): `SDSEG_CONV_KERNEL=avx512|avx2` when set and
    /// available, else the first of [`CpuKernel::all_available`].
    pub fn best() -> Option<CpuKernel> {
        static BEST: std::sync::OnceLock<Option<CpuKernel>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let forced = match std::env::var("SDSEG_CONV_KERNEL").ok().as_deref() {
                Some("avx512") => Some(CpuKernel::Avx512),
                Some("avx2") => Some(CpuKernel::Avx2Fma),
                _ => None,
            };
            forced
                .filter(|k| k.available())
                .or_else(|| CpuKernel::all_available().first().copied())
        })
    }

    /// Every kernel this CPU runs, fastest first (tests and benches run each). AVX-512 first:
    /// it is as fast as or faster than AVX2 + FMA even on an AMD CPU with 256-bit AVX-512 units
    /// (full-size model, batch 4: 7.9 vs 8.6 s per slice). `SDSEG_CONV_KERNEL=avx2` picks the
    /// AVX2 one.
    pub fn all_available() -> Vec<CpuKernel> {
        [CpuKernel::Avx512, CpuKernel::Avx2Fma]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    padding: Padding2d,
    /// Forced micro-kernel (tests, benches); `None`: [`CpuKernel::best`].
    kernel: Option<CpuKernel>,
    /// Forced bf16 level (tests, benches); `None`: [`Bf16Kernel::best`].
    bf16_kernel: Option<Bf16Kernel>,
    /// The weights as AMX tiles, packed on the first [`ConvPath::AmxBf16`] call (the weights
    /// of a conv never change: gradient-tracked ones never take that path).
    #[cfg(target_arch = "x86_64")]
    amx_weights: std::sync::Arc<std::sync::OnceLock<amx::PackedWeights>>,
    /// The same with their bf16 residuals, for [`CpuPrecision::Bf16x3`].
    #[cfg(target_arch = "x86_64")]
    amx_weights_split: std::sync::Arc<std::sync::OnceLock<amx::PackedWeights>>,
    /// The Winograd-transformed weights, on the first [`ConvPath::Winograd`] call (as for the
    /// AMX packs: weights that can change are `Var`s, which track gradients and never take it).
    #[cfg(target_arch = "x86_64")]
    winograd_weights: std::sync::Arc<std::sync::OnceLock<winograd::WinogradWeights>>,
    /// The same packed for AMX in split bf16, on the first [`ConvPath::WinogradAmxBf16`] call.
    #[cfg(target_arch = "x86_64")]
    winograd_amx: std::sync::Arc<std::sync::OnceLock<winograd::AmxWinogradWeights>>,
    /// The weights as bf16 pairs for [`ConvPath::Avx512Bf16`], plain and split (each packed on
    /// its first call).
    #[cfg(target_arch = "x86_64")]
    avx512bf16_weights: [std::sync::Arc<std::sync::OnceLock<avx512bf16::PackedWeights>>; 2],
    /// The Winograd-transformed weights as bf16 pairs for [`ConvPath::WinogradAvx512Bf16`],
    /// plain and split.
    #[cfg(target_arch = "x86_64")]
    winograd_avx512bf16:
        [std::sync::Arc<std::sync::OnceLock<winograd::Avx512Bf16WinogradWeights>>; 2],
}

impl Conv2d {
    /// Padding is `config.padding` on every side; see [`Conv2d::with_padding`] for others.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Conv2d {
        Conv2d {
            weight,
            bias,
            padding: Padding2d::symmetric(config.padding),
            config,
            kernel: None,
            bf16_kernel: None,
            #[cfg(target_arch = "x86_64")]
            amx_weights: Default::default(),
            #[cfg(target_arch = "x86_64")]
            amx_weights_split: Default::default(),
            #[cfg(target_arch = "x86_64")]
            winograd_weights: Default::default(),
            #[cfg(target_arch = "x86_64")]
            winograd_amx: Default::default(),
            #[cfg(target_arch = "x86_64")]
            avx512bf16_weights: Default::default(),
            #[cfg(target_arch = "x86_64")]
            winograd_avx512bf16: Default::default(),
        }
    }

    /// Replaces the padding, e.g. `Padding2d::from_torch_pad(0, 1, 0, 1)` for the LDM
    /// `Downsample` (stride-2 3×3 conv after `F.pad(x, (0, 1, 0, 1))`).
    pub fn with_padding(mut self, padding: Padding2d) -> Conv2d {
        self.padding = padding;
        if padding.is_symmetric() {
            self.config.padding = padding.top;
        }
        self
    }

    /// Forces the fast path's micro-kernel (tests and benches compare them on one machine);
    /// when the CPU cannot run it, `forward` goes to candle.
    pub fn with_cpu_kernel(mut self, kernel: CpuKernel) -> Conv2d {
        self.kernel = Some(kernel);
        self
    }

    /// Forces the bf16 level of a bf16 precision (tests and benches compare them on one
    /// machine, whatever the switches say); when the CPU cannot run it, the conv runs in f32.
    pub fn with_bf16_kernel(mut self, kernel: Bf16Kernel) -> Conv2d {
        self.bf16_kernel = Some(kernel);
        self
    }

    /// The bf16 level convs of this thread's precision use: `None` under
    /// [`CpuPrecision::F32`], with a forced f32 micro-kernel, or without a level (the forced
    /// one unavailable, or none at all).
    fn bf16_level(&self) -> Option<Bf16Kernel> {
        if cpu_precision() == CpuPrecision::F32 || self.kernel.is_some() {
            return None;
        }
        match self.bf16_kernel {
            Some(k) => Some(k).filter(|k| k.available()),
            None => Bf16Kernel::best(),
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// candle's config; its `padding` field is meaningful only when [`Conv2d::padding`] is
    /// symmetric.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
    pub fn padding(&self) -> Padding2d {
        self.padding
    }

    /// The implementation `forward(x)` will run.
    pub fn path_for(&self, x: &Tensor) -> ConvPath {
        if self.winograd_amx_for(x) {
            return ConvPath::WinogradAmxBf16;
        }
        if self.amx_for(x) {
            return ConvPath::AmxBf16;
        }
        if self.winograd_avx512bf16_for(x) {
            return ConvPath::WinogradAvx512Bf16;
        }
        if self.avx512bf16_for(x) {
            return ConvPath::Avx512Bf16;
        }
        if self.pointwise_for(x) {
            return ConvPath::Matmul;
        }
        if self.winograd_for(x) {
            return ConvPath::Winograd;
        }
        match self.cpu_kernel_for(x) {
            Some(_) => ConvPath::FastCpu,
            None if self.tracks_gradients(x)
                && matches!(x.device(), Device::Cpu)
                && x.dtype() == DType::F32
                && self.config.groups == 1
                && self.config.dilation == 1 =>
            {
                ConvPath::Im2col
            }
            None => ConvPath::Candle,
        }
    }

    fn tracks_gradients(&self, x: &Tensor) -> bool {
        x.track_op() || self.weight.track_op() || self.bias.as_ref().is_some_and(|b| b.track_op())
    }

    /// The [`ConvPath::Im2col`] convolution (+ bias): any stride, padding and kernel size,
    /// groups = dilation = 1; f32 CPU ([`im2col::Im2col`] has no other backend), else candle.
    pub fn forward_im2col(&self, x: &Tensor) -> Result<Tensor> {
        if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
            return self.forward_candle(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let (o, ci, kh, kw) = self.weight.dims4()?;
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, weight expects {ci}");
        }
        let op = im2col::Im2col {
            kh,
            kw,
            stride: self.config.stride.max(1),
            pad: self.padding,
        };
        let (ho, wo) = op.out_size(h, w)?;
        let w2 = self.weight.reshape((o, c * kh * kw))?;
        let y = if kh == 1 && kw == 1 && op.stride == 1 && op.pad == Padding2d::default() {
            w2.broadcast_matmul(&x.reshape((b, c, h * w))?)?
        } else {
            w2.broadcast_matmul(&x.contiguous()?.apply_op1(op)?)?
        };
        let y = y.reshape((b, o, ho, wo))?;
        match &self.bias {
            None => Ok(y),
            Some(bias) => y.broadcast_add(&bias.reshape((1, o, 1, 1))?),
        }
    }

    /// The micro-kernel `forward(x)` will run, `None` when it goes to candle, to
    /// [`ConvPath::Matmul`], Winograd or a bf16 path.
    pub fn cpu_kernel_for(&self, x: &Tensor) -> Option<CpuKernel> {
        let kernel = match self.kernel {
            Some(k) => Some(k).filter(|k| k.available()),
            None => CpuKernel::best(),
        }?;
        let bf16 = self.winograd_amx_for(x)
            || self.amx_for(x)
            || self.winograd_avx512bf16_for(x)
            || self.avx512bf16_for(x);
        (self.fast_tensors(x) && !bf16 && !self.pointwise_for(x) && !self.winograd_for(x))
            .then_some(kernel)
    }

    /// f32 NCHW CPU tensors, groups = dilation = 1, nothing tracking gradients: what both
    /// [`ConvPath::FastCpu`] and [`ConvPath::Matmul`] need.
    fn fast_tensors(&self, x: &Tensor) -> bool {
        let c = &self.config;
        matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
            && x.rank() == 4
            && c.groups == 1
            && c.dilation == 1
            && !self.tracks_gradients(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::AmxBf16`].
    fn amx_for(&self, x: &Tensor) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.bf16_level() == Some(Bf16Kernel::Amx)
                && self.fast_tensors(x)
                && amx::supports(
                    x.dims(),
                    self.weight.dims(),
                    self.config.stride,
                    self.padding,
                )
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = x;
            false
        }
    }

    /// What `cache` holds, made from the weights (contiguous f32 and their layout) on the first
    /// call: the AMX packs and Winograd transforms of this conv.
    #[cfg(target_arch = "x86_64")]
    fn cached_weights<'a, T>(
        &self,
        cache: &'a std::sync::OnceLock<T>,
        make: impl FnOnce(&[f32], &candle_core::Layout) -> Result<T>,
    ) -> Result<&'a T> {
        if let Some(t) = cache.get() {
            return Ok(t);
        }
        let w: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
        let made = make(&w, &candle_core::Layout::contiguous(self.weight.shape()))?;
        // A racing thread may have set it first; both made it from the same weights.
        let _ = cache.set(made);
        Ok(cache.get().expect("just set"))
    }

    /// One of our conv ops on `x` and the weights, with the bias when there is one.
    fn apply_op<O: candle_core::CustomOp2 + candle_core::CustomOp3>(
        &self,
        x: &Tensor,
        op: &O,
    ) -> Result<Tensor> {
        match &self.bias {
            None => x.apply_op2_no_bwd(&self.weight, op),
            Some(b) => x.apply_op3_no_bwd(&self.weight, b, op),
        }
    }

    /// The [`ConvPath::AmxBf16`] convolution (+ bias).
    #[cfg(target_arch = "x86_64")]
    fn forward_amx(&self, x: &Tensor) -> Result<Tensor> {
        let split = cpu_precision() == CpuPrecision::Bf16x3;
        // Each precision packs on its first call (a run uses one of them).
        let cache = if split {
            &self.amx_weights_split
        } else {
            &self.amx_weights
        };
        let weights = self.cached_weights(cache, |w, l| amx::PackedWeights::new(w, l, split))?;
        let op = amx::AmxConv2d {
            stride: self.config.stride,
            pad: self.padding,
            weights,
            split,
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_amx(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_candle(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::Winograd`] (checked after the AMX and matmul
    /// paths).
    fn winograd_for(&self, x: &Tensor) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.kernel.is_none()
                && self.fast_tensors(x)
                && !self.pointwise_for(x)
                && winograd::supports(
                    x.dims(),
                    self.weight.dims(),
                    self.config.stride,
                    self.padding,
                )
                && winograd::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = x;
            false
        }
    }

    /// The [`ConvPath::Winograd`] convolution (+ bias).
    #[cfg(target_arch = "x86_64")]
    fn forward_winograd(&self, x: &Tensor) -> Result<Tensor> {
        let kernel = winograd::kernel().expect("winograd_for checked it");
        let weights = self.cached_weights(&self.winograd_weights, |w, l| {
            winograd::WinogradWeights::new(w, l, kernel)
        })?;
        let op = winograd::WinogradConv {
            pad: self.padding,
            products: winograd::Products::Kernel(weights),
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_winograd(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_candle(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::WinogradAmxBf16`] (checked first).
    fn winograd_amx_for(&self, x: &Tensor) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            cpu_precision() == CpuPrecision::Bf16x3
                && self.bf16_level() == Some(Bf16Kernel::Amx)
                && self.winograd_for(x)
                && self.weight.dim(0).is_ok_and(|co| co.is_multiple_of(16))
                && CpuKernel::Avx512.available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = x;
            false
        }
    }

    /// The [`ConvPath::WinogradAmxBf16`] convolution (+ bias).
    #[cfg(target_arch = "x86_64")]
    fn forward_winograd_amx(&self, x: &Tensor) -> Result<Tensor> {
        let weights = self.cached_weights(&self.winograd_amx, |w, l| {
            winograd::AmxWinogradWeights::new(w, l, true)
        })?;
        let op = winograd::WinogradConv {
            pad: self.padding,
            products: winograd::Products::Amx(weights),
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_winograd_amx(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_candle(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::WinogradAvx512Bf16`] (after the AMX paths).
    fn winograd_avx512bf16_for(&self, x: &Tensor) -> bool {
        self.bf16_level() == Some(Bf16Kernel::Avx512Bf16)
            && Bf16Winograd::current() != Bf16Winograd::F32
            && self.winograd_for(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::Avx512Bf16`]: the level's convs but the
    /// Winograd ones.
    fn avx512bf16_for(&self, x: &Tensor) -> bool {
        self.bf16_level() == Some(Bf16Kernel::Avx512Bf16)
            && self.fast_tensors(x)
            && !self.winograd_for(x)
    }

    /// The [`ConvPath::WinogradAvx512Bf16`] convolution (+ bias).
    #[cfg(target_arch = "x86_64")]
    fn forward_winograd_avx512bf16(&self, x: &Tensor) -> Result<Tensor> {
        let split = cpu_precision() == CpuPrecision::Bf16x3
            || Bf16Winograd::current() != Bf16Winograd::Plain;
        let weights = self.cached_weights(&self.winograd_avx512bf16[split as usize], |w, l| {
            winograd::Avx512Bf16WinogradWeights::new(w, l, split)
        })?;
        let op = winograd::WinogradConv {
            pad: self.padding,
            products: winograd::Products::Avx512Bf16(weights),
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_winograd_avx512bf16(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_candle(x)
    }

    /// The [`ConvPath::Avx512Bf16`] convolution (+ bias).
    #[cfg(target_arch = "x86_64")]
    fn forward_avx512bf16(&self, x: &Tensor) -> Result<Tensor> {
        let split = cpu_precision() == CpuPrecision::Bf16x3;
        let weights = self.cached_weights(&self.avx512bf16_weights[split as usize], |w, l| {
            avx512bf16::PackedWeights::new(w, l, split)
        })?;
        let op = avx512bf16::Bf16Conv2d {
            stride: self.config.stride,
            pad: self.padding,
            weights,
            split,
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_avx512bf16(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_candle(x)
    }

    /// Whether `forward(x)` takes [`ConvPath::Matmul`]: on fast tensors, no forced
    /// micro-kernel, a 1×1, stride-1, unpadded conv or an output plane of at most
    /// [`gemm::SMALL_PLANE`] pixels.
    fn pointwise_for(&self, x: &Tensor) -> bool {
        if self.kernel.is_some() || !self.fast_tensors(x) {
            return false;
        }
        let pointwise = self.config.stride == 1
            && self.padding == Padding2d::default()
            && matches!(self.weight.dims(), [_, _, 1, 1]);
        pointwise
            || (self.out_plane(x).is_some_and(|p| p <= gemm::SMALL_PLANE)
                && gemm::GemmConv::takes(self.weight.layout()))
    }

    /// Output pixels per channel of `forward(x)`, `None` when the input is too small.
    fn out_plane(&self, x: &Tensor) -> Option<usize> {
        let (_, _, h, w) = x.dims4().ok()?;
        let (_, _, kh, kw) = self.weight.dims4().ok()?;
        let (p, s) = (self.padding, self.config.stride.max(1));
        let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
        (hp >= kh && wp >= kw).then(|| ((hp - kh) / s + 1) * ((wp - kw) / s + 1))
    }

    /// The [`ConvPath::Matmul`] convolution (+ bias).
    fn forward_matmul(&self, x: &Tensor) -> Result<Tensor> {
        let op = gemm::GemmConv {
            stride: self.config.stride,
            pad: self.padding,
        };
        self.apply_op(&x.contiguous()?, &op)
    }

    /// candle's conv2d (+ bias), whatever the path choice: the reference for tests and benches.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let p = self.padding;
        let y = if p.is_symmetric() {
            x.conv2d(&self.weight, p.top, c.stride, c.dilation, c.groups)?
        } else {
            let x = x
                .pad_with_zeros(2, p.top, p.bottom)?
                .pad_with_zeros(3, p.left, p.right)?;
            x.conv2d(&self.weight, 0, c.stride, c.dilation, c.groups)?
        };
        match &self.bias {
            None => Ok(y),
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn forward_fast(&self, x: &Tensor, kernel: CpuKernel) -> Result<Tensor> {
        let op = cpu::FastConv2d {
            stride: self.config.stride,
            pad: self.padding,
            kernel,
        };
        self.apply_op(x, &op)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn forward_fast(&self, x: &Tensor, _kernel: CpuKernel) -> Result<Tensor> {
        self.forward_candle(x)
    }
}

/// Whether this machine can run [`ConvPath::FastCpu`] (x86-64 with AVX-512F or AVX2 + FMA).
pub fn fast_available() -> bool {
    CpuKernel::best().is_some()
}

/// Whether this machine runs [`ConvPath::Winograd`] (x86-64 with AVX-512F or AVX2 + FMA,
/// `SDSEG_WINOGRAD` not `0`).
pub fn winograd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        winograd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.winograd_amx_for(x) {
            return self.forward_winograd_amx(x);
        }
        if self.amx_for(x) {
            return self.forward_amx(x);
        }
        if self.winograd_avx512bf16_for(x) {
            return self.forward_winograd_avx512bf16(x);
        }
        if self.avx512bf16_for(x) {
            return self.forward_avx512bf16(x);
        }
        if self.pointwise_for(x) {
            return self.forward_matmul(x);
        }
        if self.winograd_for(x) {
            return self.forward_winograd(x);
        }
        match self.cpu_kernel_for(x) {
            Some(kernel) => self.forward_fast(x, kernel),
            None if self.path_for(x) == ConvPath::Im2col => self.forward_im2col(x),
            None => self.forward_candle(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{best_bf16_with, Bf16Kernel};

    /// The switches of [`Bf16Kernel::best`] on a machine with both bf16 levels, one of them,
    /// and neither.
    #[test]
    fn bf16_switches() {
        use Bf16Kernel::{Amx, Avx512Bf16};
        let both = |_: Bf16Kernel| true;
        let no_amx = |k: Bf16Kernel| k == Avx512Bf16;
        let none = |_: Bf16Kernel| false;
        assert_eq!(best_bf16_with(None, None, None, both), Some(Amx));
        assert_eq!(best_bf16_with(Some("amx"), None, None, both), Some(Amx));
        // AVX512-BF16 is opt-in (SDSEG_AVX512BF16=1 or SDSEG_CONV_KERNEL=avx512bf16).
        assert_eq!(best_bf16_with(None, Some("0"), None, both), None);
        assert_eq!(
            best_bf16_with(None, Some("0"), Some("1"), both),
            Some(Avx512Bf16)
        );
        assert_eq!(best_bf16_with(None, Some("1"), None, both), Some(Amx));
        assert_eq!(
            best_bf16_with(Some("avx512bf16"), None, None, both),
            Some(Avx512Bf16)
        );
        assert_eq!(best_bf16_with(Some("avx512"), None, None, both), None);
        assert_eq!(best_bf16_with(Some("avx2"), None, None, both), None);
        assert_eq!(best_bf16_with(None, Some("0"), Some("0"), both), None);
        assert_eq!(best_bf16_with(None, None, Some("0"), both), Some(Amx));
        assert_eq!(best_bf16_with(None, None, None, no_amx), None);
        assert_eq!(
            best_bf16_with(None, None, Some("1"), no_amx),
            Some(Avx512Bf16)
        );
        assert_eq!(best_bf16_with(None, None, Some("0"), no_amx), None);
        assert_eq!(
            best_bf16_with(Some("avx512bf16"), None, None, no_amx),
            Some(Avx512Bf16)
        );
        assert_eq!(best_bf16_with(None, None, None, none), None);
        assert_eq!(best_bf16_with(Some("avx512bf16"), None, None, none), None);
    }
}
