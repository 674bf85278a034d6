//! Golden tests for the autoencoder side of SDSeg and for the latent-estimation op.
//!
//! Fixtures: `testdata/fixtures/tiny-{binary,multiclass}` (README.md there says how the official
//! PyTorch code produced each tensor). The checkpoint is read from `checkpoint.safetensors` with a
//! plain mmaped `VarBuilder`; the `.ckpt` loader and the EMA mapping are tested with the
//! assembled model. This file deliberately avoids the UNet: `unet_output` from the fixture is
//! the input of the latent step, so every stage here is checked on the official inputs.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use sdseg_kernels::latent::{latent_estimate, latent_estimate_reference};
use sdseg_volume::model::cond::{AEEncoderEmbedder, AEEncoderEmbedderConfig};
use sdseg_volume::model::vae::{AutoencoderKL, AutoencoderKLDecoder, DdConfig};

use crate::support::fixture;

struct Fixture {
    case: std::collections::HashMap<String, Tensor>,
    weights: VarBuilder<'static>,
    first_stage: DdConfig,
    first_stage_embed_dim: usize,
    cond: AEEncoderEmbedderConfig,
    keys: BTreeMap<String, Vec<usize>>,
}

fn load(name: &str) -> Fixture {
    let dir = fixture(name);
    let case = candle_core::safetensors::load(dir.join("case.safetensors"), &Device::Cpu)
        .expect("case.safetensors");
    let ckpt = dir.join("checkpoint.safetensors");
    // SAFETY: the fixture is a read-only file nobody modifies while the test runs.
    let weights =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&ckpt], DType::F32, &Device::Cpu) }
            .expect("checkpoint.safetensors");
    let keys = candle_core::safetensors::load(&ckpt, &Device::Cpu)
        .expect("checkpoint.safetensors")
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect();
    let config: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(dir.join("config.json")).unwrap()).unwrap();
    let fs = &config["params"]["first_stage_config"]["params"];
    let first_stage: DdConfig = serde_json::from_value(fs["ddconfig"].clone()).unwrap();
    let first_stage_embed_dim = fs["embed_dim"].as_u64().unwrap() as usize;
    let cond: AEEncoderEmbedderConfig =
        serde_json::from_value(config["params"]["cond_stage_config"]["params"].clone()).unwrap();
    Fixture {
        case,
        weights,
        first_stage,
        first_stage_embed_dim,
        cond,
        keys,
    }
}

impl Fixture {
    fn get(&self, k: &str) -> Tensor {
        self.case
            .get(k)
            .unwrap_or_else(|| panic!("case.safetensors has no {k}"))
            .clone()
    }
    fn scalar(&self, k: &str) -> f32 {
        self.get(k).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }
}

/// Max |got − want| ≤ tol · max|want|; prints the margin either way.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let got = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let want = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let (mut err, mut at) = (0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = (g - w).abs();
        if e > err || e.is_nan() {
            (err, at) = (e, i);
        }
    }
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let rel = err / scale;
    eprintln!(
        "{name}: max abs err {err:.3e} at flat {at} (got {:.6}, want {:.6}), max|want| {scale:.4}, \
         relative {rel:.3e} (tol {tol:.0e})",
        got[at], want[at]
    );
    assert!(rel <= tol, "{name}: relative error {rel:.3e} > {tol:.0e}");
    (err, rel)
}

fn cond_latent_parity(name: &str) {
    let fx = load(name);
    let cond = AEEncoderEmbedder::from_config(&fx.cond, fx.weights.pp("cond_stage_model")).unwrap();
    let got = cond.forward(&fx.get("image")).unwrap();
    assert_close(
        &format!("{name}/cond_latent"),
        &got,
        &fx.get("cond_latent"),
        1e-4,
    );
}

#[test]
fn cond_latent_binary() {
    cond_latent_parity("tiny-binary");
}

#[test]
fn cond_latent_multiclass() {
    cond_latent_parity("tiny-multiclass");
}

/// The official coefficients at t = 999 and 1/scale_factor as PyTorch computes it
/// (`1. / self.scale_factor` on an f32 0-d tensor: an f32 reciprocal).
fn step_constants(fx: &Fixture) -> (Tensor, Tensor, f64) {
    let a = fx.get("sqrt_recip_alphas_cumprod_t");
    let c = fx.get("sqrt_recipm1_alphas_cumprod_t");
    let inv = (1.0f32 / fx.scalar("scale_factor")) as f64;
    (a, c, inv)
}

/// `z0_scaled` and `z0_unscaled` from `noise` + the official `unet_output`, for every class pass.
fn latent_step_parity(name: &str) {
    let fx = load(name);
    let (a, c, inv) = step_constants(&fx);
    let noise = fx.get("noise");
    let eps = fx.get("unet_output");
    let (z0s, z0u) = (fx.get("z0_scaled"), fx.get("z0_unscaled"));
    // Binary: [B,4,h,w]; multi-class: [K,B,4,h,w], one pass per class with the same noise.
    let passes = if eps.rank() == 5 {
        eps.dim(0).unwrap()
    } else {
        1
    };
    for k in 0..passes {
        let pick = |t: &Tensor| {
            if passes > 1 {
                t.get(k).unwrap()
            } else {
                t.clone()
            }
        };
        let e = pick(&eps);
        let tag = format!("{name}/pass{k}");
        let got = latent_estimate(&noise, &e, &a, &c, 1.0).unwrap();
        let (err, _) = assert_close(&format!("{tag}/z0_scaled"), &got, &pick(&z0s), 1e-3);
        let reference = latent_estimate_reference(&noise, &e, &a, &c, 1.0).unwrap();
        assert_close(&format!("{tag}/z0_scaled op vs ref"), &got, &reference, 0.0);
        let got = latent_estimate(&noise, &e, &a, &c, inv).unwrap();
        assert_close(&format!("{tag}/z0_unscaled"), &got, &pick(&z0u), 1e-3);
        // Same f32 arithmetic in the same order as PyTorch: expected bit for bit.
        assert!(
            err == 0.0,
            "{tag}: z0_scaled differs from the official f32 result"
        );
    }
}

#[test]
fn latent_step_binary() {
    latent_step_parity("tiny-binary");
}

#[test]
fn latent_step_multiclass() {
    latent_step_parity("tiny-multiclass");
}

/// `decoded` = decoder(post_quant_conv(z0_scaled / scale_factor)), then the binary mask.
#[test]
fn decode_and_mask_binary() {
    let fx = load("tiny-binary");
    let dec = AutoencoderKLDecoder::new(
        &fx.first_stage,
        fx.first_stage_embed_dim,
        fx.weights.pp("first_stage_model"),
    )
    .unwrap();
    let (a, c, inv) = step_constants(&fx);
    let z = latent_estimate(&fx.get("noise"), &fx.get("unet_output"), &a, &c, inv).unwrap();
    let decoded = dec.decode(&z).unwrap();
    assert_close("tiny-binary/decoded", &decoded, &fx.get("decoded"), 1e-3);

    // log_dice: clamp((x + 1) / 2, 0, 1), mean over the 3 channels, > 0.5.
    let p = ((decoded + 1.0).unwrap() / 2.0)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .mean(1)
        .unwrap();
    let want_p = fx.get("mask_prob");
    assert_close("tiny-binary/mask_prob", &p, &want_p, 1e-3);
    let mask = p
        .gt(0.5)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let want_mask = fx
        .get("mask")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let want_p = want_p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut flips = 0;
    for i in 0..mask.len() {
        if mask[i] != want_mask[i] {
            flips += 1;
            assert!(
                (want_p[i] - 0.5).abs() < 1e-3,
                "mask differs at {i} where the official margin is {}",
                (want_p[i] - 0.5).abs()
            );
        }
    }
    eprintln!(
        "tiny-binary/mask: {flips} of {} pixels differ (all within the 1e-3 margin)",
        mask.len()
    );
}

/// Every class pass decoded, then channel-mean logits (class 0 negated) and argmax.
#[test]
fn decode_and_label_map_multiclass() {
    let fx = load("tiny-multiclass");
    let dec = AutoencoderKLDecoder::new(
        &fx.first_stage,
        fx.first_stage_embed_dim,
        fx.weights.pp("first_stage_model"),
    )
    .unwrap();
    let (a, c, inv) = step_constants(&fx);
    let noise = fx.get("noise");
    let eps = fx.get("unet_output");
    let want = fx.get("decoded");
    let classes = eps.dim(0).unwrap();
    let mut logits = Vec::new();
    for k in 0..classes {
        let z = latent_estimate(&noise, &eps.get(k).unwrap(), &a, &c, inv).unwrap();
        let decoded = dec.decode(&z).unwrap();
        assert_close(
            &format!("tiny-multiclass/decoded_class{k}"),
            &decoded,
            &want.get(k).unwrap(),
            1e-3,
        );
        let l = decoded.mean_keepdim(1).unwrap();
        logits.push(if k == 0 { l.neg().unwrap() } else { l });
    }
    let logits = Tensor::cat(&logits, 1).unwrap();
    let want_logits = fx.get("class_logits");
    assert_close("tiny-multiclass/class_logits", &logits, &want_logits, 1e-3);
    let labels = logits
        .argmax(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let want_labels = fx
        .get("label_map")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    // Top-1 − top-2 gap of the official logits, per pixel.
    let wl = want_logits.permute((0, 2, 3, 1)).unwrap();
    let wl = wl.reshape(((), classes)).unwrap().to_vec2::<f32>().unwrap();
    let mut flips = 0;
    for (i, row) in wl.iter().enumerate() {
        if labels[i] != want_labels[i] as u32 {
            flips += 1;
            let mut s = row.clone();
            s.sort_by(|x, y| y.total_cmp(x));
            assert!(
                s[0] - s[1] < 1e-3,
                "label differs at {i}, gap {}",
                s[0] - s[1]
            );
        }
    }
    eprintln!(
        "tiny-multiclass/label_map: {flips} of {} pixels differ (all within the 1e-3 gap)",
        labels.len()
    );
}

/// The modules ask for exactly the checkpoint's `first_stage_model.*` and `cond_stage_model.*`
/// keys, with the same shapes: nothing missing, nothing left over.
#[test]
fn vae_and_cond_keys_match_checkpoint() {
    let fx = load("tiny-binary");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    AutoencoderKL::new(
        &fx.first_stage,
        fx.first_stage_embed_dim,
        vb.pp("first_stage_model"),
    )
    .unwrap();
    AEEncoderEmbedder::from_config(&fx.cond, vb.pp("cond_stage_model")).unwrap();
    let ours: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let theirs: BTreeMap<String, Vec<usize>> = fx
        .keys
        .iter()
        .filter(|(k, _)| k.starts_with("first_stage_model.") || k.starts_with("cond_stage_model."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "checkpoint keys we never read: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys we read that the checkpoint lacks: {extra:?}"
    );
    for (k, shape) in &theirs {
        assert_eq!(&ours[k], shape, "{k}: shape");
    }
}

/// encode → posterior: shapes, logvar clamp, and that sample(rng) is mean + std·N(0, 1).
#[test]
fn autoencoder_encode_posterior() {
    let fx = load("tiny-binary");
    let ae = AutoencoderKL::new(
        &fx.first_stage,
        fx.first_stage_embed_dim,
        fx.weights.pp("first_stage_model"),
    )
    .unwrap();
    let image = fx.get("image").narrow(0, 0, 1).unwrap();
    let post = ae.encode(&image).unwrap();
    assert_eq!(post.mean.dims(), &[1, 4, 32, 32]);
    let lv = post.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(lv.iter().all(|v| (-30.0..=20.0).contains(v)));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let s1 = post.sample(&mut rng).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let eps: Vec<f32> = (0..post.mean.elem_count())
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let eps = Tensor::from_vec(eps, post.mean.shape(), &Device::Cpu).unwrap();
    let s2 = (&post.mean + (post.std().unwrap() * eps).unwrap()).unwrap();
    assert_close("posterior sample", &s1, &s2, 0.0);
    let kl = post.kl().unwrap();
    assert_eq!(kl.dims(), &[1]);
    assert!(kl.to_vec1::<f32>().unwrap()[0] > 0.0);
}

/// The generic constructor handles attention levels (attn_resolutions non-empty), other
/// ch_mult/num_res_blocks and a single-z encoder, producing the expected shapes.
#[test]
fn vae_generic_sizes_with_attention_levels() {
    let cfg = DdConfig {
        double_z: true,
        z_channels: 3,
        resolution: 32,
        in_channels: 1,
        out_ch: 2,
        ch: 32,
        ch_mult: vec![1, 2, 4],
        num_res_blocks: 2,
        attn_resolutions: vec![16, 8],
        dropout: 0.1,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let ae = AutoencoderKL::new(&cfg, 5, vb.pp("ae")).unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    // 16×16 is level 1 in the encoder and up.1 in the decoder; 8×8 is level 2 / up.2.
    for k in [
        "ae.encoder.down.1.attn.1.q.weight",
        "ae.encoder.down.2.attn.0.proj_out.weight",
        "ae.decoder.up.1.attn.2.k.weight",
        "ae.decoder.up.2.attn.0.norm.weight",
        "ae.quant_conv.weight",
    ] {
        assert!(names.iter().any(|n| n == k), "missing {k}");
    }
    assert!(!names.iter().any(|n| n.contains("down.0.attn")));
    assert!(!names.iter().any(|n| n.contains("up.0.attn")));
    let x = Tensor::randn(0f32, 1., (2, 1, 32, 32), &Device::Cpu).unwrap();
    let post = ae.encode(&x).unwrap();
    assert_eq!(post.mean.dims(), &[2, 5, 8, 8]);
    let z = Tensor::randn(0f32, 1., (2, 5, 8, 8), &Device::Cpu).unwrap();
    assert_eq!(ae.decode(&z).unwrap().dims(), &[2, 2, 32, 32]);
    let cond = AEEncoderEmbedder::new(
        &DdConfig {
            double_z: false,
            ..cfg.clone()
        },
        4,
        vb.pp("cond"),
    )
    .unwrap();
    assert_eq!(cond.forward(&x).unwrap().dims(), &[2, 4, 8, 8]);
}

#[test]
fn ddconfig_rejects_bad_sizes() {
    let mut cfg = DdConfig::kl_f8();
    cfg.ch = 48;
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = AutoencoderKL::new(&cfg, 4, vb).unwrap_err().to_string();
    assert!(err.contains("GroupNorm"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Latent-estimation op against its tensor-expression reference.

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Per-element timesteps: coefficients from the real linear schedule at different t.
fn schedule_coefficients(ts: &[usize]) -> (Tensor, Tensor) {
    // make_beta_schedule("linear", 1000, 0.0015, 0.0155) in f64, as register_schedule does.
    let (s0, s1) = (0.0015f64.sqrt(), 0.0155f64.sqrt());
    let mut abar = 1f64;
    let mut table = Vec::with_capacity(1000);
    for i in 0..1000 {
        let beta = (s0 + (s1 - s0) * i as f64 / 999.0).powi(2);
        abar *= 1.0 - beta;
        table.push(abar);
    }
    let a: Vec<f32> = ts.iter().map(|&t| (1.0 / table[t]).sqrt() as f32).collect();
    let c: Vec<f32> = ts
        .iter()
        .map(|&t| (1.0 / table[t] - 1.0).sqrt() as f32)
        .collect();
    let dev = &Device::Cpu;
    (Tensor::new(a, dev).unwrap(), Tensor::new(c, dev).unwrap())
}

fn assert_bitwise(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let (g, w) = (g.to_vec1::<f64>().unwrap(), w.to_vec1::<f64>().unwrap());
    let bad = g.iter().zip(&w).filter(|(a, b)| a != b).count();
    assert_eq!(bad, 0, "{name}: {bad} of {} elements differ", g.len());
}

#[test]
fn latent_op_matches_reference_per_element_t() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (a, c) = schedule_coefficients(&[0, 1, 250, 499, 998, 999]);
    // Large enough to take the chunked rayon path (per-element > 2^14 values).
    let zt = randn(&mut rng, &[6, 4, 72, 64], 1.0);
    let eps = randn(&mut rng, &[6, 4, 72, 64], 1.0);
    for inv in [1.0, 1.0 / 0.18215, (1.0f32 / 0.340_716_5) as f64] {
        let got = latent_estimate(&zt, &eps, &a, &c, inv).unwrap();
        let want = latent_estimate_reference(&zt, &eps, &a, &c, inv).unwrap();
        assert_bitwise(&format!("f32 inv={inv}"), &got, &want);
    }
    // Different t really gives different coefficients per element.
    let got = latent_estimate(&zt, &eps, &a, &c, 1.0).unwrap();
    let (av, cv) = (a.to_vec1::<f32>().unwrap(), c.to_vec1::<f32>().unwrap());
    for b in [0, 5] {
        let za = (zt.get(b).unwrap() * av[b] as f64).unwrap();
        let ec = (eps.get(b).unwrap() * cv[b] as f64).unwrap();
        let row = (za - ec).unwrap();
        assert_bitwise(&format!("batch element {b}"), &got.get(b).unwrap(), &row);
    }
}

#[test]
fn latent_op_non_contiguous_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (a, c) = schedule_coefficients(&[999, 10, 500]);
    // zt: a permuted view; eps: a narrowed view with a start offset; coefficients strided.
    let zt_base = randn(&mut rng, &[3, 32, 32, 4], 1.0);
    let zt = zt_base.permute((0, 3, 1, 2)).unwrap();
    let eps_base = randn(&mut rng, &[3, 6, 32, 32], 1.0);
    let eps = eps_base.narrow(1, 1, 4).unwrap();
    assert!(!zt.is_contiguous() && !eps.is_contiguous());
    let a2 = Tensor::stack(&[&a, &a], 1)
        .unwrap()
        .narrow(1, 1, 1)
        .unwrap();
    let got = latent_estimate(&zt, &eps, &a2, &c, 0.5).unwrap();
    let want = latent_estimate_reference(
        &zt.contiguous().unwrap(),
        &eps.contiguous().unwrap(),
        &a,
        &c,
        0.5,
    )
    .unwrap();
    assert_bitwise("non-contiguous", &got, &want);
    // Transposed last two dims (a different stride pattern again).
    let zt_t = zt.transpose(2, 3).unwrap();
    let eps_t = eps.transpose(2, 3).unwrap();
    let got = latent_estimate(&zt_t, &eps_t, &a, &c, 1.0).unwrap();
    let want = latent_estimate_reference(&zt_t, &eps_t, &a, &c, 1.0).unwrap();
    assert_bitwise("transposed", &got, &want);
}

#[test]
fn latent_op_half_precision_and_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (a, c) = schedule_coefficients(&[999, 100]);
    let zt = randn(&mut rng, &[2, 4, 32, 32], 1.0);
    let eps = randn(&mut rng, &[2, 4, 32, 32], 1.0);
    for dt in [DType::F16, DType::BF16, DType::F64] {
        let (z, e) = (zt.to_dtype(dt).unwrap(), eps.to_dtype(dt).unwrap());
        let got = latent_estimate(&z, &e, &a, &c, 1.0 / 0.34).unwrap();
        assert_eq!(got.dtype(), dt);
        let want = latent_estimate_reference(&z, &e, &a, &c, 1.0 / 0.34).unwrap();
        assert_bitwise(&format!("{dt:?}"), &got, &want);
        // Computed in f32 and rounded once: within half an ulp of the f32 result.
        if dt != DType::F64 {
            let f32_out = latent_estimate(
                &z.to_dtype(DType::F32).unwrap(),
                &e.to_dtype(DType::F32).unwrap(),
                &a,
                &c,
                1.0 / 0.34,
            )
            .unwrap();
            let rel = ((got.to_dtype(DType::F32).unwrap() - &f32_out)
                .unwrap()
                .abs()
                .unwrap()
                / f32_out.abs().unwrap().clamp(1e-3f32, f32::MAX).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            let half_ulp = if dt == DType::F16 {
                2f32.powi(-11)
            } else {
                2f32.powi(-8)
            };
            assert!(rel <= half_ulp * 1.0001, "{dt:?}: rel {rel} > {half_ulp}");
        }
    }
}

#[test]
fn latent_op_rejects_mismatched_inputs() {
    let dev = &Device::Cpu;
    let z = Tensor::zeros((2, 4, 8, 8), DType::F32, dev).unwrap();
    let e = Tensor::zeros((2, 4, 8, 9), DType::F32, dev).unwrap();
    let a = Tensor::ones(2, DType::F32, dev).unwrap();
    assert!(latent_estimate(&z, &e, &a, &a, 1.0).is_err());
    let e16 = Tensor::zeros((2, 4, 8, 8), DType::F16, dev).unwrap();
    assert!(latent_estimate(&z, &e16, &a, &a, 1.0).is_err());
    let a3 = Tensor::ones(3, DType::F32, dev).unwrap();
    let err = latent_estimate(&z, &z, &a3, &a, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one per batch element"), "{err}");
    let zi = Tensor::zeros((2, 4), DType::U32, dev).unwrap();
    assert!(latent_estimate(&zi, &zi, &a, &a, 1.0).is_err());
}

/// Gradients of L = Σ w·sin(op(zt, eps, a, c)) by backprop vs central finite differences
/// (f64, so the difference quotient is accurate to ~1e-9).
#[test]
fn latent_op_gradient_finite_differences() -> Result<()> {
    let dev = &Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let shape = [3usize, 2, 3, 4];
    let to64 = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    let zt0 = to64(randn(&mut rng, &shape, 1.0));
    let eps0 = to64(randn(&mut rng, &shape, 1.0));
    let w = to64(randn(&mut rng, &shape, 1.0));
    let a0 = Tensor::new(&[1.3f64, 0.7, 2.1], dev)?;
    let c0 = Tensor::new(&[0.4f64, 1.9, 0.2], dev)?;
    let inv = 0.37;
    let loss = |z: &Tensor, e: &Tensor, a: &Tensor, c: &Tensor| -> Result<Tensor> {
        (latent_estimate(z, e, a, c, inv)?.sin()? * &w)?.sum_all()
    };
    let (zt, eps, a, c) = (
        Var::from_tensor(&zt0)?,
        Var::from_tensor(&eps0)?,
        Var::from_tensor(&a0)?,
        Var::from_tensor(&c0)?,
    );
    let grads = loss(
        zt.as_tensor(),
        eps.as_tensor(),
        a.as_tensor(),
        c.as_tensor(),
    )?
    .backward()?;
    let analytic: Vec<Vec<f64>> = [&zt, &eps, &a, &c]
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect();
    let h = 1e-6;
    let base = [&zt0, &eps0, &a0, &c0];
    let mut worst = 0f64;
    for (which, t) in base.iter().enumerate() {
        let flat = t.flatten_all()?.to_vec1::<f64>()?;
        for i in 0..flat.len() {
            let shifted = |d: f64| -> Result<f64> {
                let mut v = flat.clone();
                v[i] += d;
                let p = Tensor::from_vec(v, t.shape(), dev)?;
                let mut args: Vec<Tensor> = base.iter().map(|x| (*x).clone()).collect();
                args[which] = p;
                loss(&args[0], &args[1], &args[2], &args[3])?.to_scalar::<f64>()
            };
            let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
            let g = analytic[which][i];
            let err = (fd - g).abs() / (1.0 + g.abs());
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "input {which} element {i}: backprop {g} vs fd {fd}"
            );
        }
    }
    eprintln!("latent op gradient: worst relative difference to finite differences {worst:.2e}");
    Ok(())
}

/// In f32, the op's gradients equal those of the tensor-expression reference.
#[test]
fn latent_op_gradient_matches_reference_autograd() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let zt = Var::from_tensor(&randn(&mut rng, &[2, 4, 8, 8], 1.0))?;
    let eps = Var::from_tensor(&randn(&mut rng, &[2, 4, 8, 8], 1.0))?;
    let (a, c) = schedule_coefficients(&[999, 3]);
    let (a, c) = (Var::from_tensor(&a)?, Var::from_tensor(&c)?);
    let target = randn(&mut rng, &[2, 4, 8, 8], 1.0);
    let l1 = |x: Tensor| -> Result<Tensor> { (x - &target)?.abs()?.mean_all() };
    let args = (
        zt.as_tensor(),
        eps.as_tensor(),
        a.as_tensor(),
        c.as_tensor(),
    );
    let g_op = l1(latent_estimate(args.0, args.1, args.2, args.3, 0.25)?)?.backward()?;
    let g_ref = l1(latent_estimate_reference(
        args.0, args.1, args.2, args.3, 0.25,
    )?)?
    .backward()?;
    for (name, v) in [("zt", &zt), ("eps", &eps), ("a", &a), ("c", &c)] {
        let got = g_op.get(v.as_tensor()).expect("op grad");
        let want = g_ref.get(v.as_tensor()).expect("ref grad");
        let diff = (got - want)?.abs()?.flatten_all()?.max(D::Minus1)?;
        let scale = want.abs()?.flatten_all()?.max(D::Minus1)?;
        let (diff, scale) = (diff.to_scalar::<f32>()?, scale.to_scalar::<f32>()?);
        assert!(
            diff <= 1e-6 * scale.max(1.0),
            "{name}: {diff} (scale {scale})"
        );
    }
    Ok(())
}
