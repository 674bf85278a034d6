//! `eval`: the library driver on in-memory volumes (report, summaries, writers) and the
//! command line end to end on hand-written NIfTI-1 files.

use ndarray::{s, Array3};
use sdseg_volume::eval::{
    evaluate_arrays, pair_cases, CasePair, EvalError, EvalOptions, LabelScheme, Report,
};
use sdseg_volume::metrics::{Hd95Mode, MetricOptions, Protocol};
use sdseg_volume::Affine;
use std::path::{Path, PathBuf};

use crate::support::{bin, tempdir};

// ---------------------------------------------------------------------------------------
// Fixtures

/// Two labels: a 4×4×4 cube of 1 and a 2×4×4 slab of 2 (10×8×8 grid).
fn gt_volume() -> Array3<u16> {
    let mut a = Array3::<u16>::zeros((10, 8, 8));
    a.slice_mut(s![1..5, 2..6, 2..6]).fill(1);
    a.slice_mut(s![7..9, 2..6, 2..6]).fill(2);
    a
}

/// Label 1 shifted by 2 along axis 0 (Dice 0.5); label 2 as in the gt, or absent.
fn pred_volume(with_label2: bool) -> Array3<u16> {
    let mut a = Array3::<u16>::zeros((10, 8, 8));
    a.slice_mut(s![3..7, 2..6, 2..6]).fill(1);
    if with_label2 {
        a.slice_mut(s![7..9, 2..6, 2..6]).fill(2);
    }
    a
}

fn affine() -> Affine {
    let mut a = Affine::from_spacing([0.8, 0.8, 2.5]);
    a.0[0][3] = -100.0;
    a.0[1][3] = 40.0;
    a
}

fn opts(protocol: Protocol) -> EvalOptions {
    EvalOptions {
        metrics: MetricOptions {
            protocol,
            hd95: Hd95Mode::Symmetric,
            nsd_tolerance_mm: 1.0,
        },
        scheme: LabelScheme::as_stored(),
        labels: None,
    }
}

fn pair(case: &str) -> CasePair {
    CasePair {
        case: case.into(),
        pred: PathBuf::from(format!("pred/{case}.nii")),
        gt: PathBuf::from(format!("gt/{case}.nii")),
    }
}

/// Write `data` as an uncompressed NIfTI-1 file (uint16, sform from `affine`), by hand.
fn write_nifti(path: &Path, data: &Array3<u16>, affine: &Affine) {
    let (n0, n1, n2) = data.dim();
    let mut h = vec![0u8; 352];
    let put_i16 =
        |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3, n0, n1, n2, 1, 1, 1, 1].iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d as i16);
    }
    put_i16(&mut h, 70, 512); // NIFTI_TYPE_UINT16
    put_i16(&mut h, 72, 16);
    let sp = affine.spacing();
    for (i, v) in [1.0, sp[0], sp[1], sp[2], 1.0, 1.0, 1.0, 1.0]
        .iter()
        .enumerate()
    {
        put_f32(&mut h, 76 + 4 * i, *v as f32);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2; // xyzt_units: mm
    put_i16(&mut h, 254, 2); // sform_code: aligned
    for r in 0..3 {
        for c in 0..4 {
            put_f32(&mut h, 280 + 16 * r + 4 * c, affine.0[r][c] as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    for k in 0..n2 {
        for j in 0..n1 {
            for i in 0..n0 {
                h.extend_from_slice(&data[[i, j, k]].to_le_bytes());
            }
        }
    }
    std::fs::write(path, h).unwrap();
}

// ---------------------------------------------------------------------------------------
// Library

#[test]
fn report_fills_absent_labels_and_summarises() {
    let o = opts(Protocol::Nnunet);
    let a = evaluate_arrays(
        &pair("0001"),
        (pred_volume(true), affine()),
        (gt_volume(), affine()),
        &o,
    )
    .unwrap();
    // Case 0002: label 2 neither in pred nor gt.
    let mut gt2 = gt_volume();
    gt2.mapv_inplace(|v| if v == 2 { 0 } else { v });
    let b = evaluate_arrays(
        &pair("0002"),
        (pred_volume(false), affine()),
        (gt2, affine()),
        &o,
    )
    .unwrap();
    assert_eq!(b.labels.len(), 1, "only label 1 is present in case 0002");
    let r = Report::new(vec![b, a], &o);
    assert_eq!(r.cases[0].case, "0001", "cases are sorted");
    assert_eq!(
        r.labels.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        r.cases[1].labels[1].dice.is_nan(),
        "absent label: NaN under nnunet"
    );
    assert_eq!(r.per_label[0].dice.mean, 0.5);
    assert_eq!(r.per_label[0].dice.std, 0.0);
    assert_eq!((r.per_label[1].dice.mean, r.per_label[1].dice.n), (1.0, 1));
    assert_eq!(r.mean.dice, 0.75);

    let j = r.to_json();
    assert_eq!(j["protocol"], "nnunet");
    assert!(j["cases"][1]["labels"][1]["dice"].is_null());
    assert_eq!(j["summary"]["labels"][1]["dice"]["n"], 1);
    assert_eq!(j["summary"]["mean"]["dice"], 0.75);
    let csv = r.to_csv();
    // header + 2 cases × 2 labels + 2 labels × (mean, std) + mean over labels
    assert_eq!(csv.lines().count(), 1 + 4 + 4 + 1);
    assert!(csv
        .lines()
        .any(|l| l.starts_with("nnunet,0002,2,label 2,,,")));
    let md = r.to_markdown("mine");
    assert!(md.contains("Protocol `nnunet`"));
    assert!(md.contains("| mine | 0.7500 |"));
}

#[test]
fn sdseg_protocol_scores_on_the_256_grid_with_official_rules() {
    let o = opts(Protocol::Sdseg);
    let mut gt = gt_volume();
    gt.mapv_inplace(|v| if v == 2 { 0 } else { v });
    let r = evaluate_arrays(
        &pair("x"),
        (pred_volume(true), affine()),
        (gt, affine()),
        &o,
    )
    .unwrap();
    let l2 = r.labels.iter().find(|m| m.label == 2).unwrap();
    // False positive on an empty ground truth: the official code says Dice 1, IoU 0.
    assert_eq!((l2.dice, l2.iou), (1.0, 0.0));
    // Counted on the 256×256 grid: 10×8 in-plane → 256×256, so far more voxels.
    let l1 = r.labels.iter().find(|m| m.label == 1).unwrap();
    assert!(l1.counts.n_gt() > 4 * 4 * 4 * 100);
    assert!((l1.dice - 0.5).abs() < 0.05);
}

#[test]
fn geometry_mismatches_are_clear_errors() {
    let o = opts(Protocol::Nnunet);
    let mut other = affine();
    other.0[2][3] += 0.5;
    let e = evaluate_arrays(
        &pair("7"),
        (gt_volume(), other),
        (gt_volume(), affine()),
        &o,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, EvalError::AffineMismatch { .. }));
    assert!(
        msg.contains("case 7") && msg.contains("0.5000") && msg.contains("-100.0000"),
        "{msg}"
    );
    let small = Array3::<u16>::zeros((10, 8, 7));
    let e =
        evaluate_arrays(&pair("7"), (small, affine()), (gt_volume(), affine()), &o).unwrap_err();
    assert!(e.to_string().contains("[10, 8, 7]"), "{e}");
    // Within 1e-3 mm is the same grid.
    let mut close = affine();
    close.0[0][3] += 5e-4;
    assert!(evaluate_arrays(
        &pair("7"),
        (gt_volume(), close),
        (gt_volume(), affine()),
        &o
    )
    .is_ok());
}

#[test]
fn btcv_scheme_remaps_the_ground_truth() {
    // Raw BTCV: 6 (liver) and 11 (pancreas) are organs, 9 (IVC) is not.
    let mut gt = Array3::<u16>::zeros((6, 6, 6));
    gt.slice_mut(s![0..2, .., ..]).fill(6);
    gt.slice_mut(s![2..4, .., ..]).fill(9);
    gt.slice_mut(s![4..6, .., ..]).fill(11);
    let mut pred = Array3::<u16>::zeros((6, 6, 6));
    pred.slice_mut(s![0..2, .., ..]).fill(1);
    pred.slice_mut(s![4..6, .., ..]).fill(1);
    let mut o = opts(Protocol::Nnunet);
    o.scheme = LabelScheme::load("btcv").unwrap();
    let r = evaluate_arrays(
        &pair("1"),
        (pred.clone(), affine()),
        (gt.clone(), affine()),
        &o,
    )
    .unwrap();
    assert_eq!(r.labels.len(), 1);
    assert_eq!(r.labels[0].dice, 1.0);
    o.scheme = LabelScheme::load("btcv:cls9").unwrap();
    let mut pred9 = Array3::<u16>::zeros((6, 6, 6));
    pred9.slice_mut(s![0..2, .., ..]).fill(5); // liver
    pred9.slice_mut(s![2..4, .., ..]).fill(8); // pancreas, wrongly
    let r = evaluate_arrays(&pair("1"), (pred9, affine()), (gt, affine()), &o).unwrap();
    assert_eq!(r.labels.len(), 8);
    assert_eq!(r.labels[4].dice, 1.0); // liver
    assert_eq!(r.labels[7].dice, 0.0); // pancreas: no overlap
    assert!(r.labels[0].dice.is_nan()); // spleen absent from both
}

#[test]
fn folders_pair_by_case_id() {
    let d = tempdir();
    let (p, g) = (d.path().join("pred"), d.path().join("gt"));
    std::fs::create_dir_all(&p).unwrap();
    std::fs::create_dir_all(&g).unwrap();
    for n in ["label0001.nii.gz", "label0002.nii.gz", "notes.txt"] {
        std::fs::write(g.join(n), b"").unwrap();
    }
    for n in [
        "img0001.nii.gz",
        "pred_0002.nii",
        "0003.nii.gz",
        ".hidden.nii",
    ] {
        std::fs::write(p.join(n), b"").unwrap();
    }
    let pairing = pair_cases(&p, &g).unwrap();
    let ids: Vec<&str> = pairing.pairs.iter().map(|c| c.case.as_str()).collect();
    assert_eq!(ids, ["0001", "0002"]);
    assert_eq!(pairing.unmatched_predictions, vec![p.join("0003.nii.gz")]);
    std::fs::remove_file(p.join("pred_0002.nii")).unwrap();
    let e = pair_cases(&p, &g).unwrap_err();
    assert!(matches!(&e, EvalError::MissingPredictions { missing, .. } if missing == &["0002"]));
    std::fs::write(p.join("0001.nii"), b"").unwrap();
    assert!(matches!(
        pair_cases(&p, &g),
        Err(EvalError::DuplicateCase { .. })
    ));
    assert!(matches!(
        pair_cases(&p, &g.join("label0001.nii.gz")),
        Err(EvalError::MixedInputs { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Command line

fn dataset(root: &Path) -> (PathBuf, PathBuf) {
    let (p, g) = (root.join("pred"), root.join("gt"));
    std::fs::create_dir_all(&p).unwrap();
    std::fs::create_dir_all(&g).unwrap();
    write_nifti(&g.join("label0001.nii"), &gt_volume(), &affine());
    write_nifti(&g.join("label0002.nii"), &gt_volume(), &affine());
    write_nifti(&p.join("pred0001.nii"), &pred_volume(true), &affine());
    write_nifti(&p.join("pred0002.nii"), &pred_volume(false), &affine());
    (p, g)
}

#[test]
fn cli_writes_every_format() {
    let d = tempdir();
    let (p, g) = dataset(d.path());
    for ext in ["json", "csv", "md"] {
        let out = d.path().join(format!("scores.{ext}"));
        let o = bin()
            .args(["eval", "--pred"])
            .arg(&p)
            .arg("--gt")
            .arg(&g)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(
            stderr.contains("protocol nnunet"),
            "definitions are printed: {stderr}"
        );
        let text = std::fs::read_to_string(&out).unwrap();
        match ext {
            "json" => {
                let j: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(j["protocol"], "nnunet");
                let case = &j["cases"][0];
                assert_eq!(case["case"], "0001");
                assert!(case["pred"].as_str().unwrap().ends_with("pred0001.nii"));
                assert!(case["gt"].as_str().unwrap().ends_with("label0001.nii"));
                let label = case["labels"][0].as_object().unwrap();
                let mut keys: Vec<&str> = label.keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(
                    keys,
                    [
                        "assd_mm", "dice", "fn", "fp", "hd95_mm", "iou", "label", "n_gt", "n_pred",
                        "name", "nsd", "tp"
                    ]
                );
                assert_eq!(label["dice"], 0.5);
                // 2 voxels × 0.8 mm along axis 0 (0.8 went through the f32 header).
                assert!((label["hd95_mm"].as_f64().unwrap() - 1.6).abs() < 1e-6);
                assert!(j["cases"][1]["labels"][1]["hd95_mm"].is_null()); // missed label 2
                assert_eq!(j["summary"]["labels"][0]["dice"]["mean"], 0.5);
                assert!(j["summary"]["mean"]["dice"].is_number());
            }
            "csv" => {
                assert!(text.starts_with("protocol,case,label,name,dice,iou,hd95_mm,"));
                assert!(text.contains("\nnnunet,0001,1,label 1,0.5,"));
            }
            _ => assert!(text.contains("| Label | Name | Dice |")),
        }
    }
    // --json on stdout, sdseg protocol, one FILE/FILE pair.
    let o = bin()
        .args(["eval", "--json", "--quiet", "--protocol", "sdseg", "--pred"])
        .arg(p.join("pred0002.nii"))
        .arg("--gt")
        .arg(g.join("label0002.nii"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "--quiet");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["protocol"], "sdseg");
    assert_eq!(j["cases"][0]["labels"][1]["dice"], 0.0); // pred empty -> 0
}

#[test]
fn cli_rejects_bad_input_with_exit_code_2() {
    let d = tempdir();
    let (p, g) = dataset(d.path());
    let mut moved = affine();
    moved.0[0][3] += 3.0;
    write_nifti(&p.join("pred0002.nii"), &pred_volume(false), &moved);
    let o = bin()
        .args(["eval", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("case 0002") && stderr.contains("-97.0000"),
        "{stderr}"
    );

    std::fs::remove_file(p.join("pred0002.nii")).unwrap();
    let o = bin()
        .args(["eval", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0002"));

    let o = bin()
        .args(["eval", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .args(["--out", "x.xlsx"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// Post-processing

/// `eval --postprocess`: a prediction of the label-1 cube with a spurious 2×2×2 island
/// (Dice 2·64 / (72 + 64) without, 1 with the largest component); label 2 exact either way.
#[test]
fn cli_scores_with_and_without_postprocessing() {
    let d = tempdir();
    let gt = gt_volume();
    let mut pred = gt.clone();
    pred.slice_mut(s![7..9, 6..8, 6..8]).fill(1);
    // Label 1 gt is 4×4×4 = 64 voxels; label 2 must not be touched by label 1's island.
    assert_eq!(gt.iter().filter(|&&v| v == 1).count(), 64);
    assert_eq!(pred.iter().filter(|&&v| v == 1).count(), 72);
    let (p, g) = (d.path().join("pred.nii"), d.path().join("gt.nii"));
    write_nifti(&p, &pred, &affine());
    write_nifti(&g, &gt, &affine());
    let eval = |extra: &[&str]| {
        let o = bin()
            .args(["eval", "--json", "--quiet", "--pred"])
            .arg(&p)
            .arg("--gt")
            .arg(&g)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let dice = |j: &serde_json::Value, label: usize| {
        j["summary"]["labels"][label]["dice"]["mean"]
            .as_f64()
            .unwrap()
    };
    let hd95 = |j: &serde_json::Value, label: usize| {
        j["summary"]["labels"][label]["hd95_mm"]["mean"]
            .as_f64()
            .unwrap()
    };
    let plain = eval(&[]);
    assert!((dice(&plain, 0) - 128.0 / 136.0).abs() < 1e-12);
    assert!(plain.get("postprocessing").is_none());
    let post = eval(&["--postprocess"]);
    assert_eq!(dice(&post, 0), 1.0);
    assert_eq!(hd95(&post, 0), 0.0);
    assert!(hd95(&plain, 0) > 0.0);
    assert_eq!(dice(&post, 1), 1.0);
    let pp = &post["postprocessing"];
    assert_eq!(pp["source"], "default");
    assert_eq!(pp["plan"]["other_labels"]["largest_component"], true);
    assert_eq!(dice(&pp["without"], 0), dice(&plain, 0));
    assert_eq!(pp["without"]["cases"], plain["cases"]);
    let e = &pp["effect"]["labels"][0];
    assert_eq!(e["dice_with"], 1.0);
    assert!((e["dice_without"].as_f64().unwrap() - 128.0 / 136.0).abs() < 1e-12);
    assert_eq!(post["cases"][0]["labels"][0]["fp"], 0);

    // A plan file for label 2 only leaves label 1's island (and its score) alone.
    let plan = d.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"version": 1, "labels": {"2": {"largest_component": true}}}"#,
    )
    .unwrap();
    let only2 = eval(&["--postprocess", plan.to_str().unwrap()]);
    assert_eq!(dice(&only2, 0), dice(&plain, 0));
    assert_eq!(only2["postprocessing"]["source"], plan.to_str().unwrap());

    // Markdown: the post-processed tables, then the effect table.
    let o = bin()
        .args(["eval", "--quiet", "--postprocess", "default", "--pred"])
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains("## Post-processing (effect on these scores)"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | label 1 | 0.9412 | 1.0000 | +0.0588 |"),
        "{md}"
    );

    // A bad plan: exit 2, naming the file.
    std::fs::write(
        &plan,
        r#"{"version": 1, "labels": {"1": {"largest": true}}}"#,
    )
    .unwrap();
    let o = bin()
        .args(["eval", "--postprocess"])
        .arg(&plan)
        .arg("--pred")
        .arg(&p)
        .arg("--gt")
        .arg(&g)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("plan.json: not a post-processing plan") && stderr.contains("largest"),
        "{stderr}"
    );
}
