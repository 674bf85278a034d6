//! The CUDA path on a real GPU (issue 18, item 6): built only with `--features cuda` and run
//! by `.ci/gpu-check.sh` on a machine with an NVIDIA GPU. CI compiles these tests without a
//! GPU (`.ci/cuda-check.sh`: `cargo check --features cuda --all-targets`); they need one to run.
//!
//! - f32 parity with the official fixtures, stage by stage, with the CPU's tolerances;
//! - bf16 and f16 decisions against the f32 reference, with the bars of the CPU's reduced
//!   precisions (f16: as `parity::half_precision_run_stays_close`; bf16, which on CUDA is plain
//!   bf16 tensors throughout: as the CPU's plain `bf16-fast`);
//! - the NVRTC latent-estimation kernel bit for bit against `latent_estimate_reference`;
//! - a whole `run` of the demo series on the GPU against the same run on the CPU.

use candle_core::{DType, Device, Tensor};
use sdseg_kernels::latent::{latent_estimate, latent_estimate_reference};
use sdseg_volume::model::sdseg::{standard_normal, Output};

use crate::parity::{
    binary_margin, binary_parity_on, multiclass_parity_on, top2_gap, values, Fixture,
};
use crate::support::run_util::{code, run, stderr};
use crate::support::{tempdir, testdata, TINY_BINARY, TINY_MULTICLASS};

fn gpu() -> Device {
    Device::new_cuda(0).expect(
        "these tests need an NVIDIA GPU and its driver (built with --features cuda): \
         .ci/gpu-check.sh runs them",
    )
}

#[test]
fn f32_parity_on_the_gpu() {
    let dev = gpu();
    for format in ["ckpt", "safetensors"] {
        binary_parity_on(format, &dev);
        multiclass_parity_on(format, &dev);
    }
}

/// Share of decisions equal to the CPU f32 run, and flips where the official margin is ≥ 1e-2.
fn agreement(name: &str, dtype: DType) -> (f64, usize) {
    let fx = Fixture::new(name);
    let ids = fx.class_ids();
    let reference = fx
        .load_on("safetensors", true, &Device::Cpu, DType::F32)
        .segment(&fx.get("image"), &fx.get("noise"), ids.as_deref())
        .unwrap();
    let dev = gpu();
    let model = fx.load_on("safetensors", true, &dev, dtype);
    assert_eq!(model.dtype(), dtype, "{name}: {dtype:?} tensors on the GPU");
    let out = model
        .segment(
            &fx.get_on("image", &dev),
            &fx.get_on("noise", &dev),
            ids.as_deref(),
        )
        .unwrap();
    let margin = match &reference {
        Output::Binary { .. } => binary_margin(&fx.get("mask_prob")),
        Output::MultiClass { .. } => top2_gap(&fx.get("class_logits")),
    };
    let (a, b) = (values(reference.labels()), values(out.labels()));
    assert_eq!(a.len(), b.len(), "{name} {dtype:?}: label count");
    let equal = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let clear_flips = (0..a.len())
        .filter(|&i| a[i] != b[i] && margin[i] >= 1e-2)
        .count();
    let agree = equal as f64 / a.len() as f64;
    eprintln!(
        "{name} {dtype:?} on the GPU: {equal} of {} decisions equal f32 ({:.4} %), \
         flips with official margin >= 1e-2: {clear_flips}",
        a.len(),
        100.0 * agree
    );
    (agree, clear_flips)
}

#[test]
fn half_precisions_on_the_gpu_agree_with_f32() {
    for name in [TINY_BINARY, TINY_MULTICLASS] {
        let (agree, _) = agreement(name, DType::F16);
        assert!(agree >= 0.995, "{name} f16: {:.4} % agree", 100.0 * agree);
        let (agree, _) = agreement(name, DType::BF16);
        assert!(agree >= 0.985, "{name} bf16: {:.4} % agree", 100.0 * agree);
    }
}

fn randn(seed: u64, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(standard_normal(seed, 0, n), dims, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u64> {
    values(t).into_iter().map(f64::to_bits).collect()
}

/// The NVRTC kernel (`kernels/cuda/latent_estimate.cu`, compiled for this GPU at run time)
/// equals the tensor-op reference computed on the CPU, bit for bit, for every dtype, per-element
/// coefficients, a size that is not a multiple of the block, and the scale factors in use.
#[test]
fn latent_kernel_on_the_gpu_is_the_reference_bit_for_bit() {
    let dev = gpu();
    for (dims, seed) in [(vec![3usize, 4, 32, 32], 1u64), (vec![5, 4, 33, 17], 2)] {
        let b = dims[0];
        let zt = randn(seed, &dims);
        let eps = randn(seed + 100, &dims);
        let a: Vec<f32> = (0..b).map(|i| 1.0 + 0.37 * i as f32).collect();
        let c: Vec<f32> = (0..b).map(|i| 0.05 + 0.91 * i as f32).collect();
        let (a, c) = (
            Tensor::new(a, &Device::Cpu).unwrap(),
            Tensor::new(c, &Device::Cpu).unwrap(),
        );
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let (z, e) = (zt.to_dtype(dtype).unwrap(), eps.to_dtype(dtype).unwrap());
            for inv in [1.0, 1.0 / 0.18215, (1.0f32 / 0.340_716_5) as f64] {
                let want = latent_estimate_reference(&z, &e, &a, &c, inv).unwrap();
                let got = latent_estimate(
                    &z.to_device(&dev).unwrap(),
                    &e.to_device(&dev).unwrap(),
                    &a.to_device(&dev).unwrap(),
                    &c.to_device(&dev).unwrap(),
                    inv,
                )
                .unwrap();
                assert!(got.device().is_cuda(), "computed on the GPU");
                assert_eq!(got.dtype(), dtype);
                let (g, w) = (bits(&got), bits(&want));
                let differ = g.iter().zip(&w).filter(|(x, y)| x != y).count();
                assert_eq!(
                    differ,
                    0,
                    "{dims:?} {dtype:?} inv {inv}: {differ} of {} values differ",
                    g.len()
                );
            }
        }
    }
}

/// `run` of the demo series with the demo model on the GPU: the labels of the CPU run, except
/// for decisions at the threshold (≤ 0.1 % of the voxels).
#[test]
fn demo_run_on_the_gpu_matches_the_cpu_run() {
    let d = tempdir();
    let demo = testdata("demo-ct");
    let demo = demo.to_str().unwrap();
    let mut labels = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = format!("{device}.nii.gz");
        let o = run(
            d.path(),
            &["run", demo, "--out", &out, "--device", device, "--quiet"],
        );
        assert_eq!(code(&o), 0, "{device}: {}", stderr(&o));
        let v = sdseg_volume::io::nifti::read_nifti(&d.path().join(&out)).unwrap();
        labels.push(v.data().iter().map(|&x| x as u32).collect::<Vec<_>>());
    }
    let differ = labels[0]
        .iter()
        .zip(&labels[1])
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "demo run: {differ} of {} voxels differ between CPU and GPU",
        labels[0].len()
    );
    assert!(
        differ * 1000 <= labels[0].len(),
        "{differ} of {} voxels differ",
        labels[0].len()
    );
}
