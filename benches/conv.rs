//! GFLOP/s of `model::conv::Conv2d` (the fast CPU path) against candle 0.11's conv2d on the
//! SDSeg model's convolution shapes, f32, all rayon threads.
//!
//! `cargo bench --bench conv [-- [FILTER] [--reps N] [--ours-only]]`: each shape runs ours and
//! candle back to back `N` times (default 5) and prints the medians; on a shared machine, read
//! the ratio, not the absolute numbers. FLOPs count a multiply-add as 2.

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2dConfig;
use sdseg_volume::model::conv::{fast_available, Conv2d, ConvPath, Padding2d};
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
            "3x3/2 pad(0,1,0,1) 128->128 256->128",
            [1, 128, 256, 256],
            128,
            3,
            2,
            down,
        ),
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(f: impl Fn() -> Tensor) -> f64 {
    let t = Instant::now();
    let y = f();
    // Touch the result so nothing is lazily skipped.
    std::hint::black_box(y.dims());
    t.elapsed().as_secs_f64()
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut reps = 5usize;
    let mut ours_only = false;
    let mut filter = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            "--ours-only" => ours_only = true,
            f => filter = Some(f.to_string()),
        }
    }
    println!(
        "fast path available: {}, rayon threads: {}",
        fast_available(),
        rayon::current_num_threads()
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "shape", "ours ms", "GFLOP/s", "candle ms", "GFLOP/s", "ratio"
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
        let conv = Conv2d::new(w, Some(b), cfg).with_padding(s.pad);
        assert_eq!(conv.path_for(&x) == ConvPath::FastCpu, fast_available());
        let y = conv.forward(&x)?;
        let (_, co, oh, ow) = y.dims4()?;
        let flops = 2.0 * (s.x[0] * co * oh * ow * s.x[1] * s.k * s.k) as f64;
        // Warm up both, then alternate.
        if !ours_only {
            conv.forward_candle(&x)?;
        }
        let (mut ours, mut cand) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(time(|| conv.forward(&x).unwrap()));
            if !ours_only {
                cand.push(time(|| conv.forward_candle(&x).unwrap()));
            }
        }
        let to = median(&mut ours);
        let (tc, gc, ratio) = if ours_only {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            let tc = median(&mut cand);
            (tc * 1e3, flops / tc / 1e9, tc / to)
        };
        println!(
            "{:<40} {:>10.2} {:>10.1} {:>10.2} {:>10.1} {:>6.2}x",
            s.name,
            to * 1e3,
            flops / to / 1e9,
            tc,
            gc,
            ratio
        );
    }
    Ok(())
}
