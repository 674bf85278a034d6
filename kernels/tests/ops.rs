//! Parity of the fused `sdseg_kernels::ops::group_norm_silu` / `group_norm_scale_shift_silu` (f32 CPU
//! fast path) with candle-nn's `GroupNorm` (+ `silu`, + scale-shift in candle ops) and with our
//! candle-op reference, on random data: batches, odd spatial sizes, rank 3 and 4, a large mean,
//! non-contiguous input.

use candle_core::{DType, Device, Module, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sdseg_kernels::ops::{group_norm_reference, group_norm_scale_shift_silu, group_norm_silu};

fn random(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-30)
}

fn candle_nn_gn(x: &Tensor, groups: usize, w: &Tensor, b: &Tensor) -> Tensor {
    let c = x.dim(1).unwrap();
    let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-6).unwrap();
    gn.forward(x).unwrap()
}

#[test]
fn matches_candle_nn_group_norm_with_and_without_silu() {
    for (i, shape) in [
        vec![2, 64, 13, 17],
        vec![1, 32, 40, 33],
        vec![3, 96, 7],
        vec![1, 128, 64, 64],
    ]
    .into_iter()
    .enumerate()
    {
        let s = 10 * i as u64;
        let x = random(&shape, s, -3.0, 5.0);
        let c = shape[1];
        let w = random(&[c], s + 1, 0.5, 1.5);
        let b = random(&[c], s + 2, -0.5, 0.5);
        let want = candle_nn_gn(&x, 32, &w, &b);
        let got = group_norm_silu(&x, 32, 1e-6, &w, &b, false).unwrap();
        assert!(
            rel(&got, &want) < 1e-5,
            "{shape:?} gn: {}",
            rel(&got, &want)
        );
        let got = group_norm_silu(&x, 32, 1e-6, &w, &b, true).unwrap();
        let want = want.silu().unwrap();
        assert!(
            rel(&got, &want) < 1e-5,
            "{shape:?} gn+silu: {}",
            rel(&got, &want)
        );
        let refr = group_norm_reference(&x, 32, 1e-6, &w, &b, None, true).unwrap();
        assert!(rel(&got, &refr) < 1e-5, "{shape:?} vs reference");
    }
}

#[test]
fn scale_shift_matches_candle_ops() {
    let x = random(&[2, 64, 9, 11], 100, -2.0, 2.0);
    let w = random(&[64], 101, 0.5, 1.5);
    let b = random(&[64], 102, -0.5, 0.5);
    let scale = random(&[2, 64], 103, -1.0, 1.0);
    let shift = random(&[2, 64], 104, -1.0, 1.0);
    let want = candle_nn_gn(&x, 32, &w, &b)
        .broadcast_mul(&(scale.reshape((2, 64, 1, 1)).unwrap() + 1.0).unwrap())
        .unwrap()
        .broadcast_add(&shift.reshape((2, 64, 1, 1)).unwrap())
        .unwrap()
        .silu()
        .unwrap();
    let got = group_norm_scale_shift_silu(&x, 32, 1e-6, &w, &b, &scale, &shift, true).unwrap();
    assert!(rel(&got, &want) < 1e-5, "{}", rel(&got, &want));
}

#[test]
fn large_mean_and_non_contiguous_input() {
    // A mean of 1000 with unit spread: the variance must come from centred values.
    let base = (random(&[1, 32, 24, 20], 200, -1.0, 1.0) + 1000.0).unwrap();
    let x = base.transpose(2, 3).unwrap();
    assert!(!x.is_contiguous());
    let w = random(&[32], 201, 0.5, 1.5);
    let b = random(&[32], 202, -0.5, 0.5);
    let got = group_norm_silu(&x, 8, 1e-6, &w, &b, true).unwrap();
    // f64 reference: normalise each group of 4 channels exactly.
    let xv: Vec<f32> = x
        .contiguous()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (wv, bv): (Vec<f32>, Vec<f32>) = (w.to_vec1().unwrap(), b.to_vec1().unwrap());
    let hw = 24 * 20;
    let mut want = vec![0f32; xv.len()];
    for g in 0..8 {
        let s = &xv[g * 4 * hw..(g + 1) * 4 * hw];
        let m = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
        let var = s.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / s.len() as f64;
        for (i, &v) in s.iter().enumerate() {
            let ch = g * 4 + i / hw;
            let y = (v as f64 - m) / (var + 1e-6).sqrt() * wv[ch] as f64 + bv[ch] as f64;
            want[g * 4 * hw + i] = (y / (1.0 + (-y).exp())) as f32;
        }
    }
    let want = Tensor::from_vec(want, x.dims(), &Device::Cpu).unwrap();
    assert!(rel(&got, &want) < 1e-5, "{}", rel(&got, &want));
}

#[test]
fn other_dtypes_fall_back_to_the_reference() {
    let x = random(&[1, 32, 6, 6], 300, -1.0, 1.0);
    let w = random(&[32], 301, 0.5, 1.5);
    let b = random(&[32], 302, -0.5, 0.5);
    let x64 = x.to_dtype(DType::F64).unwrap();
    let got = group_norm_silu(&x64, 32, 1e-6, &w, &b, true).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    let want = group_norm_silu(&x, 32, 1e-6, &w, &b, true).unwrap();
    assert!(rel(&got.to_dtype(DType::F32).unwrap(), &want) < 1e-5);
    assert!(group_norm_silu(&x, 5, 1e-6, &w, &b, true).is_err());
}
