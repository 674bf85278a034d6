//! `run --samples K` and `--uncertainty` with the bundled demo model on the bundled demo
//! series: one draw is the plain run byte for byte, K draws do not depend on the batch size,
//! the uncertainty map sits on the input grid, the report carries the per-label figures, and
//! resume redoes a case whose map is missing.

use std::path::Path;

use crate::support::run_util::*;
use crate::support::{tempdir, testdata};

fn run_demo(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--quiet"];
    let input = testdata("demo-ct");
    args.push(input.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = run_env(
        dir,
        &args,
        &[("SDSEG_DATA_DIR", dir.join("data-dir").to_str().unwrap())],
    );
    assert_eq!(code(&o), 0, "{extra:?}: {}", stderr(&o));
    o
}

fn read(p: &Path) -> sdseg_volume::volume::Volume {
    sdseg_volume::io::read_volume(p, &Default::default()).unwrap()
}

#[test]
fn one_draw_is_the_plain_run_and_k_draws_ignore_the_batch_size() {
    let d = tempdir();
    let p = d.path();
    run_demo(p, &["--out", "plain.nii.gz"]);
    run_demo(p, &["--out", "k1.nii.gz", "--samples", "1"]);
    assert_eq!(
        std::fs::read(p.join("plain.nii.gz")).unwrap(),
        std::fs::read(p.join("k1.nii.gz")).unwrap()
    );
    run_demo(
        p,
        &[
            "--out",
            "k3a.nii.gz",
            "--samples",
            "3",
            "--batch-size",
            "8",
            "--uncertainty",
            "ua.nii.gz",
        ],
    );
    run_demo(
        p,
        &[
            "--out",
            "k3b.nii.gz",
            "--samples",
            "3",
            "--batch-size",
            "5",
            "--uncertainty",
            "ub.nii.gz",
        ],
    );
    for (a, b) in [("k3a.nii.gz", "k3b.nii.gz"), ("ua.nii.gz", "ub.nii.gz")] {
        assert_eq!(
            std::fs::read(p.join(a)).unwrap(),
            std::fs::read(p.join(b)).unwrap(),
            "{a} vs {b}"
        );
    }
    // The mean of 3 draws is a different (not a wildly different) mask.
    let one = read(&p.join("plain.nii.gz"));
    let three = read(&p.join("k3a.nii.gz"));
    let fg = |v: &sdseg_volume::volume::Volume| v.data().iter().filter(|&&x| x > 0.0).count();
    let differ = one
        .data()
        .iter()
        .zip(three.data().iter())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ > 0 && differ < fg(&one) / 5,
        "{differ} of {}",
        fg(&one)
    );
    // The uncertainty map: the input grid, float32, in [0, 0.5], highest where the mask changes.
    let ct = read(&testdata("demo-ct"));
    let u = read(&p.join("ua.nii.gz"));
    assert_eq!(u.shape(), ct.shape());
    assert!((u.affine().det3() - ct.affine().det3()).abs() < 1e-9);
    assert_eq!(u.provenance().stored_type.name(), "float32");
    let max = u.data().iter().fold(0f32, |m, &v| m.max(v));
    assert!(max > 0.05 && max <= 0.5 + 1e-6, "max std {max}");
    let inside: f64 = three
        .data()
        .iter()
        .zip(u.data().iter())
        .filter(|(l, _)| **l == 0.0)
        .map(|(_, &v)| f64::from(v))
        .sum::<f64>();
    assert!(inside > 0.0);
}

#[test]
fn uncertainty_reports_resume_and_usage() {
    let d = tempdir();
    let p = d.path();
    let o = run_env(
        p,
        &[
            "run",
            "--quiet",
            testdata("demo-ct").to_str().unwrap(),
            "--out",
            "x",
            "--uncertainty",
            "u",
        ],
        &[("SDSEG_DATA_DIR", p.join("data-dir").to_str().unwrap())],
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--uncertainty needs --samples"),
        "{}",
        stderr(&o)
    );

    run_demo(
        p,
        &[
            "--out",
            "out",
            "--samples",
            "2",
            "--uncertainty",
            "maps",
            "--report",
            "r.json",
        ],
    );
    let map = p.join("maps/demo-ct.nii.gz");
    assert!(map.is_file() && p.join("out/demo-ct.nii.gz").is_file());
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.join("r.json")).unwrap()).unwrap();
    assert_eq!(r["settings"]["samples"], 2);
    let label = &r["cases"][0]["labels"][0];
    assert!(label["mean_uncertainty"].as_f64().unwrap() > 0.0, "{label}");
    assert!(label["uncertain_ml"].as_f64().is_some(), "{label}");
    // Resume: the labels alone do not make the case done.
    std::fs::remove_file(&map).unwrap();
    let o = run_demo(
        p,
        &[
            "--out",
            "out",
            "--samples",
            "2",
            "--uncertainty",
            "maps",
            "--json",
        ],
    );
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.contains("\"status\":\"written\""), "{line}");
    assert!(map.is_file());
    let o = run_demo(
        p,
        &[
            "--out",
            "out",
            "--samples",
            "2",
            "--uncertainty",
            "maps",
            "--json",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"status\":\"skipped\""));
}

/// Multi-class models take both features: the draws' mean class probabilities decide the
/// label (the threshold double's draws agree, so the labels equal the single draw's), the
/// uncertainty is an entropy in [0, ln K], and post-processing runs per class.
#[test]
fn multi_class_draws_uncertainty_and_postprocessing() {
    use crate::support::run_util::*;
    let d = tempdir();
    let p = d.path();
    let inputs = dataset(&p.join("data"), 1);
    let input = inputs[0].to_str().unwrap();
    let base = [
        "run",
        "--quiet",
        "--test-segmenter",
        "threshold:9",
        "--pipeline",
        "btcv:cls9",
        input,
    ];
    let o = run(p, &[&base[..], &["--out", "one.nii.gz"]].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(
        p,
        &[
            &base[..],
            &[
                "--out",
                "three.nii.gz",
                "--samples",
                "3",
                "--uncertainty",
                "u.nii.gz",
                "--postprocess",
                "default",
            ],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let read = |n: &str| sdseg_volume::io::read_volume(&p.join(n), &Default::default()).unwrap();
    let (one, three, u) = (read("one.nii.gz"), read("three.nii.gz"), read("u.nii.gz"));
    let classes: std::collections::BTreeSet<i64> = three.data().iter().map(|&v| v as i64).collect();
    assert!(
        classes.len() > 2 && classes.iter().all(|&c| (0..9).contains(&c)),
        "{classes:?}"
    );
    assert_eq!(one.shape(), three.shape());
    let max = u.data().iter().fold(0f32, |m, &v| m.max(v));
    assert!(max > 0.0 && max <= (9f32).ln() + 1e-5, "entropy max {max}");
}

/// K draws do not depend on sharding: two shards of a two-case run write the same bytes as one
/// process (each draw's noise is keyed by seed, case, slice and draw).
#[test]
fn draws_do_not_depend_on_sharding() {
    use crate::support::run_util::*;
    let d = tempdir();
    let p = d.path();
    for case in ["a", "b"] {
        let dir = p.join("data").join(case);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(testdata("demo-ct")).unwrap().flatten() {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    let data_dir = p.join("data-dir");
    let go = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--quiet",
            "data",
            "--out",
            out,
            "--samples",
            "3",
            "--noise",
            "per-slice",
        ];
        args.extend_from_slice(extra);
        let o = run_env(p, &args, &[("SDSEG_DATA_DIR", data_dir.to_str().unwrap())]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    };
    go("single", &[]);
    go("sharded", &["--shard", "0/2"]);
    go("sharded", &["--shard", "1/2"]);
    for case in ["a", "b"] {
        let name = format!("{case}.nii.gz");
        assert_eq!(
            std::fs::read(p.join("single").join(&name)).unwrap(),
            std::fs::read(p.join("sharded").join(&name)).unwrap(),
            "{name}"
        );
    }
}
