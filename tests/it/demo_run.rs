//! `sdseg-volume run` with the bundled demo pipeline (`demo`: 64² slices, LPS, fixed
//! normalisation, preset `sdseg-demo`): the slice size taken from the pipeline through the
//! whole run, the default pipeline and its weights, the loud warning when the demo model meets
//! an input that is not a demo phantom, and the usage errors. The demo model's weights are
//! trained elsewhere; these tests write a randomly initialised `sdseg-demo` model.

use std::path::{Path, PathBuf};

use sdseg_volume::model::config::SdsegConfig;

use crate::support::run_util::*;
use crate::support::{fixture, repo, tempdir, testdata, TINY_BINARY};

/// A random-init `sdseg-demo` model in the official key layout (UNet + EMA copy, condition
/// encoder, first stage, scale factor, schedule buffers), as `train` writes it: `dir/model.
/// safetensors`, plus `dir/config.json` when `with_config`.
fn random_demo_model(dir: &Path, with_config: bool) -> PathBuf {
    use rand::SeedableRng;
    use sdseg_volume::train::{checkpoint, ema::Ema, model::TrainModel};
    std::fs::create_dir_all(dir).unwrap();
    let cfg = SdsegConfig::preset("sdseg-demo").unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let model = TrainModel::new(&cfg, &candle_core::Device::Cpu, &mut rng).unwrap();
    let ema = Ema::new(&model.unet_params(), 0.9999).unwrap();
    let dict = checkpoint::sdseg_state_dict(&model, Some(&ema)).unwrap();
    let weights = dir.join("model.safetensors");
    checkpoint::save_tensors(&weights, &dict).unwrap();
    if with_config {
        checkpoint::write_config(&dir.join("config.json"), &cfg, Some(1.0)).unwrap();
    }
    weights
}

/// `sdseg-volume phantom` into `dir/name` (extra flags appended).
fn phantom_cli(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["--quiet", "phantom", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(dir, &args);
    assert_eq!(code(&o), 0, "phantom {extra:?}: {}", stderr(&o));
    out
}

fn read(p: &Path) -> sdseg_volume::volume::Volume {
    sdseg_volume::io::read_volume(p, &Default::default()).unwrap()
}

fn report(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Output labels on exactly the input's grid, only 0 and 1.
fn assert_labels_on_grid(input: &Path, output: &Path) {
    let vol = read(input);
    let (labels, affine, _) = sdseg_volume::io::nifti::read_labels(output).unwrap();
    assert_eq!(labels.shape(), vol.data().shape(), "{}", input.display());
    assert!(
        affine.max_abs_diff(vol.affine()) < 1e-4,
        "{}: {affine:?} vs {:?}",
        input.display(),
        vol.affine()
    );
    assert!(labels.iter().all(|&v| v <= 1), "binary labels only");
}

fn demo_warned(rep: &serde_json::Value, case: usize) -> bool {
    rep["cases"][case]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("DEMO MODEL"))
}

const BANNER: &str = "WARNING: DEMO MODEL ON AN INPUT THAT IS NOT A DEMO PHANTOM";

#[test]
fn phantom_writers_stamp_the_tag_and_the_demo_series_has_it() {
    let d = tempdir();
    let dicom = phantom_cli(d.path(), "dcm", &["--size", "16x16x3"]);
    let multi = phantom_cli(d.path(), "mf", &["--size", "16x16x3", "--multiframe"]);
    let nii = phantom_cli(d.path(), "nii", &["--size", "16x16x3", "--format", "nifti"]);
    let mf_file = std::fs::read_dir(&multi)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for p in [dicom, mf_file, nii.join("phantom.nii.gz")] {
        assert!(
            sdseg_volume::phantom::looks_like_demo_phantom(&read(&p)),
            "{} is not recognised as a phantom",
            p.display()
        );
    }
    let demo_ct = testdata("demo-ct");
    assert!(sdseg_volume::phantom::looks_like_demo_phantom(&read(
        &demo_ct
    )));
    // A NIfTI written by another tool has no tag.
    let other = d.path().join("other.nii.gz");
    write_nifti(&other, &phantom([16, 16, 3], 0), diag([1.0, 1.0, 2.0]));
    assert!(!sdseg_volume::phantom::looks_like_demo_phantom(&read(
        &other
    )));
}

/// (a) The demo pipeline (the default) with a random `sdseg-demo` model, config beside the
/// weights: a 64×64 DICOM phantom (no resize) and a 96×80 NIfTI phantom (resized to 64² and
/// back) come out on their own grids, binary, without the warning.
#[test]
fn demo_pipeline_runs_at_64_on_phantoms_of_any_size() {
    let d = tempdir();
    let weights = random_demo_model(&d.path().join("model"), true);
    let w = weights.to_str().unwrap();
    let dcm = phantom_cli(d.path(), "ph64", &["--size", "64x64x6", "--seed", "3"]);
    let nii = phantom_cli(
        d.path(),
        "ph96",
        &["--size", "96x80x5", "--seed", "4", "--format", "nifti"],
    );
    let nii = nii.join("phantom.nii.gz");
    for (input, out) in [(&dcm, "seg64.nii.gz"), (&nii, "seg96.nii.gz")] {
        let rep = format!("{out}.json");
        let o = run(
            d.path(),
            &[
                "run",
                input.to_str().unwrap(),
                "--out",
                out,
                "--weights",
                w,
                "--batch-size",
                "4",
                "--report",
                &rep,
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(!stderr(&o).contains(BANNER), "{}", stderr(&o));
        assert_labels_on_grid(input, &d.path().join(out));
        let r = report(&d.path().join(&rep));
        assert_eq!(r["pipeline"]["name"], "demo");
        assert_eq!(r["model"]["slice_size"], 64);
        assert_eq!(r["model"]["demo_model"], true);
        assert!(r["model"]["config_source"]
            .as_str()
            .unwrap()
            .contains("config.json"));
        assert!(!demo_warned(&r, 0));
    }
    // The threshold test model at the pipeline's size too (no model weights needed).
    let o = run(
        d.path(),
        &[
            "run",
            nii.to_str().unwrap(),
            "--out",
            "thr.nii.gz",
            "--test-segmenter",
            "threshold",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_labels_on_grid(&nii, &d.path().join("thr.nii.gz"));
}

/// (b) The warning: on stderr (also with --quiet) and in the report for an input that is not
/// a phantom, not for a phantom in the same run. Config from the pipeline's preset here.
#[test]
fn demo_model_warns_loudly_on_inputs_that_are_not_phantoms() {
    let d = tempdir();
    let weights = random_demo_model(&d.path().join("model"), false);
    let w = weights.to_str().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Real-looking CT: a NIfTI from another tool (no descrip) and a DICOM series with a
    // scanner's SeriesDescription.
    write_nifti(
        &data.join("ct.nii.gz"),
        &phantom([64, 64, 3], 1),
        diag([0.8, 0.8, 2.5]),
    );
    let ph = sdseg_volume::phantom::abdomen_phantom(
        &sdseg_volume::phantom::PhantomParams::new([64, 64, 3]),
        2,
    );
    sdseg_volume::phantom::write_dicom_series(
        &ph.volume,
        &data.join("scanner"),
        &sdseg_volume::phantom::DicomWriteOptions {
            series_description: "ABDOMEN 1.0 B30f".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let tagged = phantom_cli(d.path(), "tmp", &["--size", "64x64x3", "--format", "nifti"]);
    std::fs::rename(tagged.join("phantom.nii.gz"), data.join("phantom.nii.gz")).unwrap();
    for quiet in [false, true] {
        let out = format!("out{quiet}");
        let rep = format!("r{quiet}.json");
        let mut args = vec![
            "run",
            "data",
            "--out",
            &out,
            "--weights",
            w,
            "--report",
            &rep,
        ];
        if quiet {
            args.push("--quiet");
        }
        let o = run(d.path(), &args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.matches(BANNER).count(), 1, "quiet {quiet}: {err}");
        assert!(err.contains("NOT a medical model"), "{err}");
        assert!(err.contains("is not a demo phantom either"), "{err}");
        assert!(
            !err.contains("'phantom'"),
            "the phantom is not warned about: {err}"
        );
        let r = report(&d.path().join(&rep));
        assert!(r["model"]["config_source"]
            .as_str()
            .unwrap()
            .contains("sdseg-demo"));
        let cases: Vec<&str> = r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["case"].as_str().unwrap())
            .collect();
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(demo_warned(&r, i), *c != "phantom", "{c}");
        }
        assert_eq!(cases.len(), 3);
    }
    // --json lines carry the warning too.
    let o = run(
        d.path(),
        &[
            "run",
            "data/ct.nii.gz",
            "--out",
            "j.nii.gz",
            "--weights",
            w,
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DEMO MODEL"));
    // Another pipeline with the sdseg-demo preset is still the demo model.
    let o = run(
        d.path(),
        &[
            "run",
            "data/ct.nii.gz",
            "--out",
            "p.nii.gz",
            "--weights",
            w,
            "--model-config",
            "sdseg-demo",
            "--pipeline",
            "btcv",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains(BANNER), "{}", stderr(&o));
}

/// A copy of pipelines/demo.toml with `f` applied to its text.
fn demo_toml_copy(dir: &Path, name: &str, f: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, f(&text)).unwrap();
    p
}

/// (c) Missing default weights: exit 2 naming the file and how the demo model is built.
#[test]
fn missing_default_weights_are_a_usage_error_naming_the_file() {
    let d = tempdir();
    let input = d.path().join("ct.nii.gz");
    write_nifti(&input, &phantom([64, 64, 2], 0), diag([1.0, 1.0, 2.0]));
    let toml = demo_toml_copy(d.path(), "demo-missing.toml", |t| {
        t.replace(
            "weights = \"../testdata/demo-model/model.safetensors\"",
            "weights = \"nowhere/model.safetensors\"",
        )
    });
    let o = run(
        d.path(),
        &[
            "run",
            "ct.nii.gz",
            "--out",
            "o.nii.gz",
            "--pipeline",
            toml.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    let want = d.path().join("nowhere/model.safetensors");
    assert!(err.contains(want.to_str().unwrap()), "{err}");
    assert!(err.contains("docs/demo-model.md"), "{err}");
    assert!(!d.path().join("o.nii.gz").exists());
    // slurm-script validates the same way (it shares run's flags and their defaults).
    let o = run(
        d.path(),
        &[
            "slurm-script",
            "--data",
            ".",
            "--out",
            "arr",
            "--array",
            "2",
            "--pipeline",
            toml.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("docs/demo-model.md"), "{}", stderr(&o));
}

/// `run INPUT --out FILE` with no other flag: pipeline demo, its default weights and preset
/// (the README's main command). The bundled series is a held-out phantom (seed 2000): no
/// warning, labels on its grid, and `eval` against its organ labels gives the demo model's
/// real Dice (0.94 when it was committed; docs/demo-model.md).
#[test]
fn no_flags_use_the_demo_pipeline_and_its_weights() {
    let d = tempdir();
    let root = repo();
    let demo_ct = root.join("testdata/demo-ct");
    assert!(
        root.join("testdata/demo-model/model.safetensors").is_file(),
        "the demo model is part of the repository"
    );
    let o = run(
        d.path(),
        &["run", demo_ct.to_str().unwrap(), "--out", "labels.nii.gz"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains(BANNER), "{}", stderr(&o));
    assert_labels_on_grid(&demo_ct, &d.path().join("labels.nii.gz"));
    let gt = root.join("testdata/demo-ct-labels.nii.gz");
    let o = run(
        d.path(),
        &[
            "eval",
            "--pred",
            "labels.nii.gz",
            "--gt",
            gt.to_str().unwrap(),
            "--pipeline",
            "demo",
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dice = v["summary"]["labels"][0]["dice"]["mean"].as_f64().unwrap();
    assert!(dice >= 0.9, "demo Dice on the bundled phantom: {dice}");
}

/// (d) Slice sizes the model cannot take: 60 is refused by the pipeline schema (not a
/// multiple of 8), 72 by the model check for a model whose factor is 16.
#[test]
fn slice_sizes_the_model_cannot_take_are_usage_errors() {
    let d = tempdir();
    let weights = random_demo_model(&d.path().join("model"), true);
    let input = d.path().join("ct.nii.gz");
    write_nifti(&input, &phantom([64, 64, 2], 0), diag([1.0, 1.0, 2.0]));
    let size = |n: usize| {
        demo_toml_copy(d.path(), &format!("demo{n}.toml"), |t| {
            t.replace("size = 64", &format!("size = {n}"))
        })
    };
    let p60 = size(60);
    let o = run(
        d.path(),
        &[
            "run",
            "ct.nii.gz",
            "--out",
            "o.nii.gz",
            "--weights",
            weights.to_str().unwrap(),
            "--pipeline",
            p60.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("slicing.size"), "{}", stderr(&o));

    // The tiny fixture: KL-f8 condition encoder × UNet [1, 2] = 16.
    let fixture = fixture(TINY_BINARY);
    let p72 = size(72);
    let o = run(
        d.path(),
        &[
            "run",
            "ct.nii.gz",
            "--out",
            "o.nii.gz",
            "--weights",
            fixture.join("checkpoint.safetensors").to_str().unwrap(),
            "--pipeline",
            p72.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("slicing.size 72") && err.contains("not a multiple of 16"),
        "{err}"
    );
    assert!(!d.path().join("o.nii.gz").exists());

    // A size the demo model can take but was not trained at (96 = 12 × 8) runs.
    let p96 = size(96);
    let o = run(
        d.path(),
        &[
            "run",
            "ct.nii.gz",
            "--out",
            "o96.nii.gz",
            "--weights",
            weights.to_str().unwrap(),
            "--pipeline",
            p96.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_labels_on_grid(&input, &d.path().join("o96.nii.gz"));
}
