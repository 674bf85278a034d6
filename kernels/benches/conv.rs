//! GFLOP/s of `sdseg_kernels::conv::Conv2d` (the fast CPU path) against candle 0.11's conv2d on the
//! SDSeg model's convolution shapes, f32, all rayon threads.
//!
//! `cargo bench --bench conv [-- [FILTER] [--reps N] [--ours-only] [--kernel avx512|avx2]
//! [--dtype f32|bf16|bf16-fast] [--bf16-level amx|avx512bf16]]`:
//! each shape runs ours (the path `Conv2d::forward` picks: the fastest micro-kernel, or one
//! gemm per image for 1×1 convs; with `--kernel`, that micro-kernel for every shape) and
//! candle (f32) back to back `N` times (default 5) and prints the medians; on a shared machine,
//! read the ratio, not the absolute numbers. FLOPs count a multiply-add as 2.
//!
//! `--dtype` as the CLI's: `bf16` runs our convs in split bf16, `bf16-fast` in plain bf16, on
//! the bf16 level this machine uses (`Bf16Kernel::best`: AMX, else AVX512-BF16; the switches
//! `SDSEG_CONV_KERNEL=avx512bf16`, `SDSEG_AMX=0`, `SDSEG_AVX512BF16=0` apply) or the one
//! `--bf16-level` forces; the header names the level and the `path` column what each shape
//! ran, so levels compare on one machine: e.g. `--dtype bf16-fast --bf16-level amx` against
//! `--dtype bf16-fast --bf16-level avx512bf16` against `--dtype f32`.

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2dConfig;
use sdseg_kernels::conv::{
    fast_available, with_cpu_precision, Bf16Kernel, Conv2d, CpuKernel, CpuPrecision, KernelLevel,
    Padding2d,
};
use std::time::Instant;

struct Shape {
    name: &'static str,
    x: [usize; 4],
    co: usize,
    k: usize,
    stride: usize,
    pad: Padding2d,
}

fn shapes() -> Vec<Shape> {
    let p1 = Padding2d::symmetric(1);
    let p0 = Padding2d::symmetric(0);
    let down = Padding2d::from_torch_pad(0, 1, 0, 1);
    let s = |name, x, co, k, stride, pad| Shape {
        name,
        x,
        co,
        k,
        stride,
        pad,
    };
    vec![
        s(
            "3x3 128->128 1x128x256x256",
            [1, 128, 256, 256],
            128,
            3,
            1,
            p1,
        ),
        s("3x3 320->320 4x320x32x32", [4, 320, 32, 32], 320, 3, 1, p1),
        s(
            "3x3 256->256 1x256x128x128",
            [1, 256, 128, 128],
            256,
            3,
            1,
            p1,
        ),
        s("3x3 512->512 1x512x64x64", [1, 512, 64, 64], 512, 3, 1, p1),
        s("3x3 128->3 1x128x256x256", [1, 128, 256, 256], 3, 3, 1, p1),
        s(
            "1x1 256->128 1x256x256x256",
            [1, 256, 256, 256],
            128,
            1,
            1,
            p0,
        ),
        s(
            "1x1 128->256 1x128x128x128",
            [1, 128, 128, 128],
            256,
            1,
            1,
            p0,
        ),
        s("1x1 512->512 1x512x32x32", [1, 512, 32, 32], 512, 1, 1, p0),
        s(
            "3x3/2 pad(0,1,0,1) 128->128 256->128",
            [1, 128, 256, 256],
            128,
            3,
            2,
            down,
        ),
    ]
}

/// Medians of one side: wall ms, GFLOP/s, and GFLOP per CPU-second × threads (what the
/// threads would reach on an otherwise idle machine; robust to other load).
struct Stats {
    ms: f64,
    gflops: f64,
    cpu_gflops: f64,
}

impl Stats {
    fn of(t: &[(f64, f64)], flops: f64, threads: usize) -> Stats {
        if t.is_empty() {
            return Stats {
                ms: f64::NAN,
                gflops: f64::NAN,
                cpu_gflops: f64::NAN,
            };
        }
        let wall = median(&mut t.iter().map(|t| t.0).collect::<Vec<_>>());
        let cpu = median(&mut t.iter().map(|t| t.1).collect::<Vec<_>>());
        Stats {
            ms: wall * 1e3,
            gflops: flops / wall / 1e9,
            cpu_gflops: flops / cpu / 1e9 * threads as f64,
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time of the whole process (all threads), in seconds.
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (wall seconds, CPU seconds) of one call.
fn time(f: impl Fn() -> Tensor) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_time());
    let y = f();
    std::hint::black_box(y.dims());
    (t.elapsed().as_secs_f64(), cpu_time() - c)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut reps = 5usize;
    let mut ours_only = false;
    let mut filter = None;
    let mut kernel = None;
    let mut precision = CpuPrecision::F32;
    let mut bf16_level = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            "--ours-only" => ours_only = true,
            "--kernel" => {
                kernel = match it.next().map(String::as_str) {
                    Some("avx512") => Some(CpuKernel::Avx512),
                    Some("avx2") => Some(CpuKernel::Avx2Fma),
                    k => panic!("--kernel {k:?}: expected avx512 or avx2"),
                }
            }
            "--dtype" => {
                precision = match it.next().map(String::as_str) {
                    Some("f32") => CpuPrecision::F32,
                    Some("bf16") => CpuPrecision::Bf16x3,
                    Some("bf16-fast") => CpuPrecision::Bf16,
                    d => panic!("--dtype {d:?}: expected f32, bf16 or bf16-fast"),
                }
            }
            "--bf16-level" => {
                bf16_level = match it.next().map(String::as_str) {
                    Some("amx") => Some(Bf16Kernel::Amx),
                    Some("avx512bf16") => Some(Bf16Kernel::Avx512Bf16),
                    l => panic!("--bf16-level {l:?}: expected amx or avx512bf16"),
                }
            }
            f => filter = Some(f.to_string()),
        }
    }
    let level = match (precision, bf16_level) {
        (CpuPrecision::F32, _) | (_, None) => KernelLevel::of_run(precision).to_string(),
        (_, Some(l)) if l.available() => format!("{} (forced)", l.name()),
        (_, Some(l)) => format!("{} forced but not on this CPU: f32", l.name()),
    };
    println!(
        "fast path available: {}, kernel: {:?}, precision: {precision:?}, kernel level: {level}, \
         rayon threads: {}",
        fast_available(),
        kernel.or(CpuKernel::best()).filter(|k| k.available()),
        rayon::current_num_threads()
    );
    let threads = rayon::current_num_threads();
    println!(
        "{:<38} {:>18} {:>8} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "shape",
        "path",
        "ours ms",
        "GF/s",
        "GF/cpu",
        "cand ms",
        "GF/s",
        "GF/cpu",
        "wall x",
        "cpu x"
    );
    for s in shapes() {
        if filter
            .as_ref()
            .is_some_and(|f| !s.name.contains(f.as_str()))
        {
            continue;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, &s.x[..], &dev)?;
        let w = Tensor::randn(0f32, 0.05, (s.co, s.x[1], s.k, s.k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, s.co, &dev)?;
        let cfg = Conv2dConfig {
            stride: s.stride,
            ..Default::default()
        };
        let mut conv = Conv2d::new(w, Some(b), cfg).with_padding(s.pad);
        if let Some(k) = kernel {
            conv = conv.with_cpu_kernel(k);
        }
        if let Some(l) = bf16_level {
            conv = conv.with_bf16_kernel(l);
        }
        let ours_fwd = || with_cpu_precision(precision, || conv.forward(&x));
        let path = with_cpu_precision(precision, || conv.path_for(&x));
        // The first call also packs the weights (bf16 paths, Winograd).
        let y = ours_fwd()?;
        let (_, co, oh, ow) = y.dims4()?;
        let flops = 2.0 * (s.x[0] * co * oh * ow * s.x[1] * s.k * s.k) as f64;
        // Warm up both, then alternate.
        if !ours_only {
            conv.forward_candle(&x)?;
        }
        let (mut ours, mut cand) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(time(|| ours_fwd().unwrap()));
            if !ours_only {
                cand.push(time(|| conv.forward_candle(&x).unwrap()));
            }
        }
        let ours = Stats::of(&ours, flops, threads);
        let cand = Stats::of(&cand, flops, threads);
        println!(
            "{:<38} {:>18} {:>8.1} {:>7.1} {:>7.1} {:>8.1} {:>7.1} {:>7.1} {:>6.2}x {:>6.2}x",
            s.name,
            format!("{path:?}"),
            ours.ms,
            ours.gflops,
            ours.cpu_gflops,
            cand.ms,
            cand.gflops,
            cand.cpu_gflops,
            cand.ms / ours.ms,
            ours.cpu_gflops / cand.cpu_gflops,
        );
    }
    Ok(())
}
