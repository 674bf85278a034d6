//! `sdseg-volume reproduce` and `stability` end to end on small synthetic datasets laid out
//! exactly like BTCV (`Training/img/imgNNNN.nii.gz`, `Training/label/labelNNNN.nii.gz`) and
//! STS-3D (`labelled/image/Teeth_NNNN_0000.nii.gz`, `labelled/label/...`), with the tiny
//! fixture checkpoint (`testdata/fixtures/tiny-binary`) or the threshold test model.

use ndarray::Array3;
use std::path::{Path, PathBuf};

use crate::support::run_util::*;
use crate::support::{fixture, tempdir, TINY_BINARY};

const BTCV_TEST: [&str; 12] = [
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
];

fn weights() -> String {
    fixture(TINY_BINARY)
        .join("checkpoint.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// BTCV-style labels for a phantom: the ball is liver (6, an organ of the binary union), a
/// small block is esophagus (5, background after `transfer_to_9`).
fn labels_for(shape: [usize; 3], seed: usize) -> Array3<i16> {
    let img = phantom(shape, seed);
    Array3::from_shape_fn(shape, |(i, j, k)| {
        if img[[i, j, k]] >= 150 {
            6
        } else if i < 4 && j < 4 {
            5
        } else {
            0
        }
    })
}

pub(crate) fn write_btcv(root: &Path, shape: [usize; 3]) -> PathBuf {
    let raw = root.join("Abdomen/RawData");
    for d in ["Training/img", "Training/label"] {
        std::fs::create_dir_all(raw.join(d)).unwrap();
    }
    for (n, id) in BTCV_TEST.iter().enumerate() {
        let aff = diag([0.8, 0.8, 2.5]);
        write_nifti(
            &raw.join(format!("Training/img/img{id}.nii.gz")),
            &phantom(shape, n),
            aff,
        );
        write_nifti(
            &raw.join(format!("Training/label/label{id}.nii.gz")),
            &labels_for(shape, n),
            aff,
        );
    }
    // A training case the split does not use.
    write_nifti(
        &raw.join("Training/img/img0005.nii.gz"),
        &phantom(shape, 0),
        diag([0.8, 0.8, 2.5]),
    );
    raw
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mtimes(dir: &Path, ids: &[&str]) -> Vec<std::time::SystemTime> {
    ids.iter()
        .map(|id| {
            std::fs::metadata(dir.join(format!("{id}.nii.gz")))
                .unwrap_or_else(|e| panic!("prediction {id}: {e}"))
                .modified()
                .unwrap()
        })
        .collect()
}

/// The Markdown of one protocol section of the combined report.
fn section<'a>(md: &'a str, protocol: &str) -> &'a str {
    let start = md
        .find(&format!("## Protocol `{protocol}`"))
        .unwrap_or_else(|| panic!("no {protocol} section:\n{md}"));
    let rest = &md[start..];
    match rest[3..].find("\n## Protocol") {
        Some(end) => &rest[..end + 3],
        None => rest,
    }
}

#[test]
fn reproduce_btcv_with_the_tiny_fixture_prints_both_tables_and_resumes() {
    let d = tempdir();
    // One slice per volume: the fixture model costs seconds per slice in the test profile.
    let raw = write_btcv(d.path(), [40, 40, 1]);
    let w = weights();
    let args = [
        "reproduce",
        "btcv",
        "--data",
        raw.to_str().unwrap(),
        "--weights",
        &w,
        "--out",
        "out",
        "--batch-size",
        "4",
    ];
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "12 official test cases under {}: {}",
            raw.display(),
            BTCV_TEST.join(" ")
        )),
        "{err}"
    );
    let md = stdout(&o);
    assert!(
        md.starts_with("# Reproduction: BTCV, 12 official test volumes"),
        "{md}"
    );
    for protocol in ["sdseg", "nnunet"] {
        let s = section(&md, protocol);
        assert!(s.contains(&format!("**Protocol `{protocol}`**")), "{s}");
        assert!(
            s.contains("| Method | Dice | IoU | HD95 (mm) | ASSD (mm) | NSD@1mm |"),
            "{s}"
        );
        assert!(s.contains("| SDSeg (checkpoint.safetensors) |"), "{s}");
        assert!(s.contains("| Case | Dice | IoU | HD95 (mm) |"), "{s}");
        for id in BTCV_TEST {
            assert!(
                s.contains(&format!("\n| {id} | ")),
                "{protocol}: no row for {id}"
            );
        }
        assert!(!s.contains("| 0005 |"), "a training case was scored");
        for ext in ["md", "csv", "json"] {
            assert!(d
                .path()
                .join(format!("out/scores-{protocol}.{ext}"))
                .is_file());
        }
    }
    assert!(md.contains("Cases: 12."), "{md}");
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/reproduce.md")).unwrap(),
        md
    );
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/reproduce.json")).unwrap())
            .unwrap();
    let ids: Vec<&str> = j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTCV_TEST);
    assert_eq!(j["protocols"]["sdseg"]["protocol"], "sdseg");
    assert_eq!(
        j["protocols"]["nnunet"]["cases"].as_array().unwrap().len(),
        12
    );
    let dice = j["summary"]["sdseg"]["dice"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&dice), "{dice}");
    assert_eq!(j["settings"]["resize"], "nearest");
    assert!(d.path().join("out/run-report.json").is_file());
    let pred = d.path().join("out/pred");
    let first = mtimes(&pred, &BTCV_TEST);

    // Rerun: predictions are reused (not rewritten), the tables are the same.
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resume: 12 case(s) already have outputs"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mtimes(&pred, &BTCV_TEST), first);
    assert_eq!(stdout(&o), md);
}

#[test]
fn reproduce_missing_case_is_exit_2_and_overwrite_redoes_predictions() {
    let d = tempdir();
    let raw = write_btcv(d.path(), [24, 20, 2]);
    let base = [
        "reproduce",
        "btcv",
        "--data",
        raw.to_str().unwrap(),
        "--out",
        "out",
        "--test-segmenter",
        "threshold",
        "--quiet",
    ];
    let o = run(d.path(), &base);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // --quiet: `run`'s one line per case, none of reproduce's own progress.
    assert!(
        !stderr(&o).contains("official test cases under"),
        "{}",
        stderr(&o)
    );
    let md = stdout(&o);
    assert!(md.contains("| threshold test model |"), "{md}");
    let pred = d.path().join("out/pred");
    let first = mtimes(&pred, &BTCV_TEST);

    let mut json_args = base.to_vec();
    json_args.push("--json");
    let o = run(d.path(), &json_args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["dataset"], "btcv");
    assert_eq!(j["cases"].as_array().unwrap().len(), 12);
    assert_eq!(mtimes(&pred, &BTCV_TEST), first, "reused");

    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut over = base.to_vec();
    over.push("--overwrite");
    let o = run(d.path(), &over);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let again = mtimes(&pred, &BTCV_TEST);
    assert!(
        again.iter().zip(&first).all(|(a, b)| a > b),
        "--overwrite rewrites every prediction"
    );
    assert_eq!(stdout(&o), md, "same model, same tables");

    // A missing test case: exit 2, named, nothing run.
    std::fs::remove_file(raw.join("Training/label/label0022.nii.gz")).unwrap();
    std::fs::remove_file(raw.join("Training/img/img0036.nii.gz")).unwrap();
    let o = run(d.path(), &base);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("2 of the 12 official BTCV test cases missing"),
        "{e}"
    );
    assert!(
        e.contains("0022 (expected ") && e.contains("label0022.nii.gz"),
        "{e}"
    );
    assert!(
        e.contains("0036 (expected ") && e.contains("img0036.nii.gz"),
        "{e}"
    );

    // Not a BTCV folder at all.
    let o = run(
        d.path(),
        &[
            "reproduce",
            "btcv",
            "--data",
            "nowhere",
            "--test-segmenter",
            "threshold",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a BTCV dataset folder"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn reproduce_sts3d_layout() {
    let d = tempdir();
    let root = d.path().join("sts");
    for dir in ["labelled/image", "labelled/label"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (n, id) in ["Teeth_0010", "Teeth_0011", "Teeth_0012", "Teeth_0001"]
        .iter()
        .enumerate()
    {
        let shape = [24, 24, 2];
        let img = phantom(shape, n).mapv(|v| v * 4);
        let lab = phantom(shape, n).mapv(|v| i16::from(v >= 150));
        let aff = diag([0.3, 0.3, 0.3]);
        write_nifti(
            &root.join(format!("labelled/image/{id}_0000.nii.gz")),
            &img,
            aff,
        );
        write_nifti(
            &root.join(format!("labelled/label/{id}_0000.nii.gz")),
            &lab,
            aff,
        );
    }
    let o = run(
        d.path(),
        &[
            "reproduce",
            "sts3d",
            "--data",
            "sts",
            "--test-segmenter",
            "threshold",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let md = stdout(&o);
    assert!(
        md.starts_with("# Reproduction: STS-3D, 3 official test volumes"),
        "{md}"
    );
    for id in ["Teeth_0010", "Teeth_0011", "Teeth_0012"] {
        assert!(d
            .path()
            .join(format!("reproduce-sts3d/pred/{id}.nii.gz"))
            .is_file());
        for p in ["sdseg", "nnunet"] {
            assert!(
                section(&md, p).contains(&format!("\n| {id} | ")),
                "{p} {id}"
            );
        }
    }
    assert!(!md.contains("Teeth_0001 |"), "a training case was scored");
}

#[test]
fn stability_with_the_tiny_fixture_three_runs() {
    let d = tempdir();
    let shape = [40, 36, 2];
    let aff = diag([0.8, 0.8, 2.5]);
    write_nifti(&d.path().join("img.nii.gz"), &phantom(shape, 1), aff);
    // Label only on slice 1 (the fixture model costs seconds per slice in the test profile).
    let lab = labels_for(shape, 1).mapv(|v| if v == 6 { 6 } else { 0 });
    let lab = Array3::from_shape_fn(shape, |(i, j, k)| if k == 1 { lab[[i, j, k]] } else { 0 });
    write_nifti(&d.path().join("label.nii.gz"), &lab, aff);
    let w = weights();
    let o = run(
        d.path(),
        &[
            "stability",
            "--input",
            "img.nii.gz",
            "--label",
            "label.nii.gz",
            "--runs",
            "3",
            "--weights",
            &w,
            "--out",
            "st",
            "--batch-size",
            "2",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let md = stdout(&o);
    assert!(
        md.starts_with("# Stability over seeds (paper Table 5)"),
        "{md}"
    );
    assert!(
        md.contains("LPIPS: not computed (needs pretrained AlexNet weights, unavailable offline)"),
        "{md}"
    );
    assert!(
        md.contains("| Method | LPIPS | PSNR (dB) | SSIM | MS-SSIM |"),
        "{md}"
    );
    assert!(
        md.contains("| SDSeg (checkpoint.safetensors) | not computed |"),
        "{md}"
    );
    assert!(
        md.contains("of 1 slices (those whose 256x256 label is non-empty"),
        "{md}"
    );
    // Seed 0 against itself is perfect; seeds 1 and 2 have rows.
    assert!(
        md.contains("\n| 0 | inf (identical) | 1.0000 | 1.0000 | 1 | 0 |"),
        "{md}"
    );
    assert!(md.contains("\n| 1 | ") && md.contains("\n| 2 | "), "{md}");
    assert!(!md.contains("\n| 3 | "), "{md}");
    assert!(md.contains("| img | 2 | 1 |"), "{md}");

    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("st/stability.json")).unwrap())
            .unwrap();
    assert_eq!(j["runs"], 3);
    assert_eq!(j["seeds"], serde_json::json!([0, 1, 2]));
    assert_eq!(j["slices"]["evaluated"], 1);
    assert_eq!(j["lpips"]["computed"], false);
    let r0 = &j["per_run"][0]["scores"];
    assert_eq!(r0["ssim"]["mean"], 1.0);
    assert_eq!(r0["ms_ssim"]["mean"], 1.0);
    assert_eq!(r0["psnr_db"]["n"], 0, "identical pairs have no PSNR");
    let ssim = j["summary"]["ssim"]["mean"].as_f64().unwrap();
    assert!(ssim > -1.0 && ssim < 1.0, "seeds differ: {ssim}");
    let csv = std::fs::read_to_string(d.path().join("st/stability.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3);
    assert!(
        csv.starts_with("case,slice,seed,psnr_db,ssim,ms_ssim,empty,identical\nimg,1,0,inf,1,1,")
    );

    // Too few runs is a usage error.
    let o = run(
        d.path(),
        &[
            "stability",
            "--input",
            "img.nii.gz",
            "--runs",
            "1",
            "--weights",
            &w,
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn stability_on_a_dataset_split() {
    let d = tempdir();
    let raw = write_btcv(d.path(), [24, 20, 2]);
    let o = run(
        d.path(),
        &[
            "stability",
            "btcv",
            "--data",
            raw.to_str().unwrap(),
            "--runs",
            "2",
            "--test-segmenter",
            "threshold",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<&str> = j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTCV_TEST);
    assert_eq!(j["pipeline"], "btcv");
    assert_eq!(j["slices"]["selection"], "non-empty label at 256x256");
}

// ---------------------------------------------------------------------------------------
// Post-processing

const BTCV_TRAIN: [&str; 18] = [
    "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028", "0030",
    "0031", "0033", "0034", "0037", "0039", "0040",
];

/// A volume with bright balls (180 HU, what the threshold model segments) on -300 HU:
/// `(centre, radius)` in voxels, the third axis squeezed by 3.
fn balls(shape: [usize; 3], centres: &[([f32; 3], f32)]) -> Array3<bool> {
    Array3::from_shape_fn(shape, |(i, j, k)| {
        centres.iter().any(|&(c, r)| {
            let d = (i as f32 - c[0]).powi(2)
                + (j as f32 - c[1]).powi(2)
                + (3.0 * (k as f32 - c[2])).powi(2);
            d.sqrt() < r
        })
    })
}

fn hu(mask: &Array3<bool>) -> Array3<i16> {
    mask.mapv(|b| if b { 180 } else { -300 })
}

fn plan_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("postprocessing.json")).unwrap()).unwrap()
}

/// BTCV layout, every test and training case: the labelled organ (liver, 6) is a ball, and the
/// image has a second bright blob that is not labelled, so the threshold model's predictions
/// have a spurious island: the largest component is chosen, and it raises the test Dice.
#[test]
fn reproduce_chooses_the_largest_component_for_predictions_with_islands() {
    let d = tempdir();
    let shape = [32, 32, 6];
    let raw = d.path().join("Abdomen/RawData");
    for dir in ["Training/img", "Training/label"] {
        std::fs::create_dir_all(raw.join(dir)).unwrap();
    }
    let aff = diag([0.8, 0.8, 2.5]);
    for (n, id) in BTCV_TEST.iter().chain(BTCV_TRAIN.iter()).enumerate() {
        let organ = balls(shape, &[([12.0 + (n % 3) as f32, 14.0, 2.5], 7.0)]);
        let island = balls(shape, &[([27.0, 26.0, 4.0], 2.5)]);
        let image = hu(&(&organ | &island));
        write_nifti(
            &raw.join(format!("Training/img/img{id}.nii.gz")),
            &image,
            aff,
        );
        let label = organ.mapv(|b| if b { 6i16 } else { 0 });
        write_nifti(
            &raw.join(format!("Training/label/label{id}.nii.gz")),
            &label,
            aff,
        );
    }
    let args = [
        "reproduce",
        "btcv",
        "--data",
        raw.to_str().unwrap(),
        "--out",
        "out",
        "--test-segmenter",
        "threshold",
        "--choose-postprocessing",
        "--json",
    ];
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("predicting the 18 training cases"), "{err}");
    let out = d.path().join("out");
    for id in BTCV_TRAIN {
        assert!(
            out.join(format!("pred-train/{id}.nii.gz")).is_file(),
            "{id}"
        );
    }
    assert!(out.join("run-report-train.json").is_file());
    assert!(out.join("cases-train.csv").is_file());
    // The choice: the largest component, nothing else.
    let plan = plan_of(&out);
    assert_eq!(plan["version"], 1);
    assert_eq!(
        plan["labels"]["1"],
        serde_json::json!({"largest_component": true, "min_component_ml": null, "fill_holes": false})
    );
    assert!(plan["other_labels"].is_null());
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(out.join("reproduce.json")).unwrap()
        )
        .unwrap(),
        j
    );
    let pp = &j["postprocessing"];
    assert_eq!(pp["plan"], plan);
    assert_eq!(pp["source"], "chosen on the 18 training cases");
    let choice = &pp["choice"]["labels"][0];
    assert_eq!(pp["choice"]["cases"], 18);
    assert_eq!(choice["cases_scored"], 18);
    let without = choice["dice_without"].as_f64().unwrap();
    let lcc = choice["dice_largest_component"].as_f64().unwrap();
    assert!(lcc > without, "{choice}");
    // The paper's tables are the predictions as they are; the new ones are better.
    for p in ["sdseg", "nnunet"] {
        let plain = j["summary"][p]["dice"].as_f64().unwrap();
        let post = pp["summary"][p]["dice"].as_f64().unwrap();
        assert!(post > plain, "{p}: {post} <= {plain}");
        assert_eq!(
            pp["effect"][p]["mean"]["dice_without"],
            j["summary"][p]["dice"]
        );
        assert_eq!(j["protocols"][p]["protocol"], p);
        assert_eq!(pp["protocols"][p]["cases"].as_array().unwrap().len(), 12);
        for ext in ["md", "csv", "json"] {
            assert!(out.join(format!("scores-{p}.{ext}")).is_file());
            assert!(out
                .join(format!("scores-{p}-postprocessed.{ext}"))
                .is_file());
        }
        let table: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("scores-{p}.json"))).unwrap())
                .unwrap();
        assert_eq!(table, j["protocols"][p], "the paper's table is unchanged");
    }
    let md = std::fs::read_to_string(out.join("reproduce.md")).unwrap();
    assert!(
        md.contains("## Post-processing (beyond the paper's protocol)"),
        "{md}"
    );
    assert!(md.contains("chosen on the 18 training cases"), "{md}");
    assert!(
        md.contains("| 1 | ") && md.contains("| largest component | "),
        "{md}"
    );
    assert!(
        md.contains("## With post-processing, protocol `sdseg`"),
        "{md}"
    );
    assert!(
        md.contains("## With post-processing, protocol `nnunet`"),
        "{md}"
    );

    // The plan round-trips: eval applies postprocessing.json (or reproduce.json) to a test
    // prediction and gets reproduce's post-processed score for that case.
    let case_dice = |report: &serde_json::Value| {
        report["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"] == "0001")
            .unwrap()["labels"][0]["dice"]
            .as_f64()
            .unwrap()
    };
    for plan_file in ["out/postprocessing.json", "out/reproduce.json"] {
        let o = run(
            d.path(),
            &[
                "eval",
                "--pred",
                "out/pred/0001.nii.gz",
                "--gt",
                raw.join("Training/label/label0001.nii.gz")
                    .to_str()
                    .unwrap(),
                "--pipeline",
                "btcv",
                "--postprocess",
                plan_file,
                "--json",
                "--quiet",
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let e: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(e["postprocessing"]["plan"], plan, "{plan_file}");
        assert_eq!(
            case_dice(&e),
            case_dice(&pp["protocols"]["nnunet"]),
            "{plan_file}"
        );
        assert_eq!(
            case_dice(&e["postprocessing"]["without"]),
            case_dice(&j["protocols"]["nnunet"])
        );
    }

    // A rerun reuses both prediction sets and chooses the same.
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resume: 18 case(s) already have outputs"),
        "{}",
        stderr(&o)
    );
    assert_eq!(plan_of(&out), plan);

    // --postprocess with the saved plan gives the same post-processed tables without choosing.
    let o = run(
        d.path(),
        &[
            "reproduce",
            "btcv",
            "--data",
            raw.to_str().unwrap(),
            "--out",
            "out",
            "--test-segmenter",
            "threshold",
            "--postprocess",
            "out/reproduce.json",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let again: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(again["postprocessing"]["summary"], pp["summary"]);
    assert!(again["postprocessing"]["choice"].is_null());
    assert_eq!(again["postprocessing"]["source"], "out/reproduce.json");

    // Both at once is a usage error.
    let mut both = args.to_vec();
    both.extend(["--postprocess", "default"]);
    assert_eq!(code(&run(d.path(), &both)), 2);
}

/// STS-3D layout: every tooth label has two separate blobs and the model finds both, so the
/// largest component would lose one: it is not chosen. Missing training cases are an input
/// error before anything runs.
#[test]
fn reproduce_does_not_choose_the_largest_component_where_it_hurts() {
    let d = tempdir();
    let root = d.path().join("sts");
    for dir in ["labelled/image", "labelled/label"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let ids: Vec<String> = (1..=12).map(|n| format!("Teeth_{n:04}")).collect();
    let shape = [32, 32, 6];
    let aff = diag([0.3, 0.3, 0.3]);
    for (n, id) in ids.iter().enumerate() {
        let teeth = balls(
            shape,
            &[
                ([9.0, 9.0, 2.5], 6.0),
                ([23.0 - (n % 2) as f32, 22.0, 2.5], 5.0),
            ],
        );
        let image = teeth.mapv(|b| if b { 800i16 } else { -400 });
        write_nifti(
            &root.join(format!("labelled/image/{id}_0000.nii.gz")),
            &image,
            aff,
        );
        let label = teeth.mapv(i16::from);
        write_nifti(
            &root.join(format!("labelled/label/{id}_0000.nii.gz")),
            &label,
            aff,
        );
    }
    let args = [
        "reproduce",
        "sts3d",
        "--data",
        "sts",
        "--test-segmenter",
        "threshold",
        "--choose-postprocessing",
        "--json",
        "--quiet",
    ];
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = d.path().join("reproduce-sts3d");
    let plan = plan_of(&out);
    assert_eq!(plan["labels"]["1"]["largest_component"], false, "{plan}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let choice = &j["postprocessing"]["choice"]["labels"][0];
    assert_eq!(j["postprocessing"]["choice"]["cases"], 9);
    let without = choice["dice_without"].as_f64().unwrap();
    let lcc = choice["dice_largest_component"].as_f64().unwrap();
    assert!(lcc < without - 0.1, "{choice}");
    assert!(choice["dice_chosen"].as_f64().unwrap() >= without);

    // A training case missing: exit 2 naming it, before any inference.
    std::fs::remove_file(root.join("labelled/label/Teeth_0004_0000.nii.gz")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let o = run(d.path(), &args);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("Teeth_0004"), "{}", stderr(&o));
    assert!(!out.join("pred").exists(), "nothing ran");
}
