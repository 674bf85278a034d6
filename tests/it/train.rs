//! `sdseg-volume train` and `train-autoencoder` end to end with the real binary: checkpoints in
//! the official key layout (names and shapes equal to the official fixture's for the same
//! config), losses that fall over a few steps, and `run` loading what `train` wrote.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::run_util::*;
use crate::support::{fixture, tempdir, TINY_BINARY};

/// name → shape of every tensor in a safetensors file.
fn key_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.into_iter().map(|(k, v)| (k, v.dims().to_vec())).collect()
}

/// `log.csv` column `col` of every line.
fn column(log: &Path, col: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == col).unwrap();
    lines
        .map(|l| l.split(',').nth(i).unwrap().parse::<f64>().unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One training step with the official fixture's config writes exactly the fixture
/// checkpoint's tensor names and shapes: `model.diffusion_model.*`, the dot-stripped
/// `model_ema.*` (with `decay` and `num_updates`), `first_stage_model.*`,
/// `cond_stage_model.*`, `scale_factor` and the schedule buffers.
#[test]
fn train_writes_the_official_key_layout() {
    let d = tempdir();
    let cfg = fixture(TINY_BINARY).join("config.json");
    let out = d.path().join("run");
    ok(
        d.path(),
        &[
            "--quiet",
            "train",
            "--pipeline",
            "btcv",
            "--model-config",
            cfg.to_str().unwrap(),
            "--data",
            "phantom:0-0@24x24x2",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
    );
    let ours = key_shapes(&out.join("last.safetensors"));
    let theirs = key_shapes(&fixture(TINY_BINARY).join("checkpoint.safetensors"));
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "keys only in ours: {only_ours:?}\nkeys only in the fixture: {only_theirs:?}"
    );
    for (k, s) in &theirs {
        assert_eq!(&ours[k], s, "shape of {k}");
    }
    assert!(ours
        .keys()
        .any(|k| k.starts_with("model_ema.diffusion_model")));
    // The written config loads back and names the same architecture.
    let written = sdseg_volume::model::config::SdsegConfig::load(out.join("config.json")).unwrap();
    let fixture = sdseg_volume::model::config::SdsegConfig::load(&cfg).unwrap();
    assert_eq!(written.unet(), fixture.unet());
    assert_eq!(written.first_stage(), fixture.first_stage());
}

/// Stage 1 then stage 2 on phantoms with the demo architecture: both losses fall, and `run`
/// segments a phantom with the trained checkpoint (config.json beside it).
#[test]
fn autoencoder_then_sdseg_losses_fall_and_run_loads_the_result() {
    let d = tempdir();
    let ae = d.path().join("ae");
    let sd = d.path().join("sd");
    let common = |out: &Path| -> Vec<String> {
        [
            "--pipeline",
            "demo",
            "--preset",
            "sdseg-demo",
            "--data",
            "phantom:0-3@64x64x8",
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--log-every",
            "1",
            "--seed",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut args = vec!["--quiet".to_string(), "train-autoencoder".to_string()];
    args.extend(common(&ae));
    args.extend(
        ["--steps", "16", "--lr", "2.5e-4", "--rec-loss", "l2"]
            .iter()
            .map(|s| s.to_string()),
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(d.path(), &a);
    let ae_loss = column(&ae.join("log.csv"), "loss");
    assert_eq!(ae_loss.len(), 16);
    let (first, last) = (mean(&ae_loss[..4]), mean(&ae_loss[12..]));
    assert!(
        last < 0.8 * first,
        "autoencoder loss did not fall: {ae_loss:?}"
    );
    let ae_keys = key_shapes(&ae.join("last.safetensors"));
    assert!(ae_keys.keys().all(|k| k.starts_with("first_stage_model.")));

    let init = ae.join("last.safetensors");
    let mut args = vec!["--quiet".to_string(), "train".to_string()];
    args.extend(common(&sd));
    args.extend(
        [
            "--steps",
            "24",
            "--lr",
            "2.5e-4",
            "--warmup-steps",
            "1",
            "--t-min",
            "900",
            "--init",
            init.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(d.path(), &a);
    let loss = column(&sd.join("log.csv"), "loss");
    assert_eq!(loss.len(), 24);
    let (first, last) = (mean(&loss[..6]), mean(&loss[18..]));
    assert!(last < 0.9 * first, "SDSeg loss did not fall: {loss:?}");
    // The first-stage weights are the autoencoder's, unchanged (frozen).
    let sd_tensors =
        candle_core::safetensors::load(sd.join("last.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let ae_tensors =
        candle_core::safetensors::load(ae.join("last.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (k, t) in &ae_tensors {
        let diff = (t - &sd_tensors[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{k} changed in stage 2");
    }

    let ct = d.path().join("ct");
    ok(
        d.path(),
        &[
            "--quiet",
            "phantom",
            "--out",
            ct.to_str().unwrap(),
            "--seed",
            "2001",
            "--size",
            "64x64x6",
        ],
    );
    let labels = d.path().join("labels.nii.gz");
    let weights = sd.join("last.safetensors");
    ok(
        d.path(),
        &[
            "--quiet",
            "run",
            ct.to_str().unwrap(),
            "--out",
            labels.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
        ],
    );
    let (lab, _, _) = sdseg_volume::io::nifti::read_labels(&labels).unwrap();
    assert_eq!(lab.shape(), &[64, 64, 6]);
}
