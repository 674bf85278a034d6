//! Fused GroupNorm(+SiLU) (`ops::group_norm_silu`) against candle-nn's `GroupNorm` followed
//! by `silu` and against the same maths in candle ops (`ops::group_norm_reference`, what the
//! op falls back to off its fast path), on the SDSeg activation shapes, f32 CPU, all rayon
//! threads.
//!
//! `cargo bench --bench ops [-- [FILTER] [--reps N]]`: ms per call (medians, back to back).

use candle_core::{Device, Module, Tensor};
use sdseg_kernels::ops::{group_norm_reference, group_norm_silu};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(f: impl Fn() -> Tensor) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f().dims());
    t.elapsed().as_secs_f64()
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut reps = 5usize;
    let mut filter = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            f => filter = Some(f.to_string()),
        }
    }
    println!(
        "{:<28} {:>10} {:>12} {:>8} {:>10} {:>8}",
        "GroupNorm(32)+SiLU", "fused ms", "candle ms", "ratio", "ref ms", "ratio"
    );
    let shapes: [[usize; 4]; 4] = [
        [1, 128, 256, 256],
        [1, 256, 128, 128],
        [1, 512, 64, 64],
        [4, 320, 32, 32],
    ];
    for s in shapes {
        let name = format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3]);
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, &s[..], &dev)?;
        let w = Tensor::randn(1f32, 0.1, s[1], &dev)?;
        let b = Tensor::randn(0f32, 0.1, s[1], &dev)?;
        let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), s[1], 32, 1e-6)?;
        let (mut fused, mut cand, mut exact) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            fused.push(time(|| {
                group_norm_silu(&x, 32, 1e-6, &w, &b, true).unwrap()
            }));
            cand.push(time(|| gn.forward(&x).unwrap().silu().unwrap()));
            exact.push(time(|| {
                group_norm_reference(&x, 32, 1e-6, &w, &b, None, true).unwrap()
            }));
        }
        let (f, c, e) = (median(fused), median(cand), median(exact));
        println!(
            "{name:<28} {:>10.2} {:>12.2} {:>7.1}x {:>10.2} {:>7.1}x",
            f * 1e3,
            c * 1e3,
            c / f,
            e * 1e3,
            e / f
        );
    }
    Ok(())
}
