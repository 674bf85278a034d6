//! The review page (`run --html`, `review`; `src/review/`).
//!
//! Without a browser: the page's index (its `#review-index` JSON) lists every case of every
//! shard of a job array, with the Dice `eval` computes, from `--gt` or from an `eval` report;
//! `run --html` and `review` of its report write the same cases; bad usage exits 2.
//!
//! In a real browser (headless Chromium, Debian's package, driven by Playwright from
//! `tests/it/review.py`): the pages of the demo run and of a 3-case run with ground truth
//! open without a console error or an uncaught exception, every case decodes, a labelled
//! voxel is drawn in its label's colour and a background voxel in the windowed CT grey (at
//! the positions the page reports for known voxels, read from screenshots), the wheel and
//! the arrow keys change the slice, and the table lists every case with `eval`'s Dice, worst
//! first.

use std::path::Path;

use serde_json::Value;

use crate::support::python::{require_browser, run_python};
use crate::support::run_util::*;
use crate::support::{repo, tempdir, testdata};

/// The index JSON of a page.
fn page_index(page: &Path) -> Value {
    let html = std::fs::read_to_string(page).unwrap();
    let open = r#"<script type="application/json" id="review-index">"#;
    let start = html.find(open).expect("the page has an index") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).expect("the index is JSON")
}

fn ok(o: &std::process::Output, what: &str) {
    assert_eq!(code(o), 0, "{what}: {}", stderr(o));
}

/// Run with the demo model; its embedded weights unpack into `dir/data-dir`.
fn run_demo(dir: &Path, args: &[&str]) -> std::process::Output {
    run_env(
        dir,
        args,
        &[("SDSEG_DATA_DIR", dir.join("data-dir").to_str().unwrap())],
    )
}

/// Three demo phantoms (`data/case{1,2,3}.nii.gz`) with their organ labels as ground truth
/// (`gt/label_case{n}.nii.gz`: `eval`'s pairing drops the `label_` tag).
fn phantom_dataset(dir: &Path) {
    for n in 1..=3 {
        let ph = dir.join(format!("ph{n}"));
        let o = run(
            dir,
            &[
                "--quiet",
                "phantom",
                "--out",
                ph.to_str().unwrap(),
                "--format",
                "nifti",
                "--size",
                &format!("{}x{}x{}", 56 + 4 * n, 64, 10 + n),
                "--seed",
                &(2000 + n).to_string(),
            ],
        );
        ok(&o, "phantom");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("gt")).unwrap();
        std::fs::rename(
            ph.join("phantom.nii.gz"),
            dir.join(format!("data/case{n}.nii.gz")),
        )
        .unwrap();
        std::fs::rename(
            ph.join("labels.nii.gz"),
            dir.join(format!("gt/label_case{n}.nii.gz")),
        )
        .unwrap();
    }
}

/// `eval --pipeline demo --json` of `pred` against `gt`: case id → Dice of label 1.
fn eval_dice(dir: &Path, pred: &str, gt: &str) -> Vec<(String, f64)> {
    let o = run(
        dir,
        &[
            "--quiet",
            "eval",
            "--pred",
            pred,
            "--gt",
            gt,
            "--pipeline",
            "demo",
            "--json",
        ],
    );
    ok(&o, "eval");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["case"].as_str().unwrap().to_string(),
                c["labels"][0]["dice"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The page's cases: id → (status, Dice of label 1 or None, has a viewer).
fn page_cases(index: &Value) -> Vec<(String, String, Option<f64>, bool)> {
    index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let dice = c["scores"]
                .as_array()
                .and_then(|s| s.iter().find(|l| l["label"] == 1))
                .and_then(|l| l["dice"].as_f64());
            (
                c["case"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                dice,
                c["view"].is_object(),
            )
        })
        .collect()
}

fn assert_dice_equal(page: &Value, want: &[(String, f64)]) {
    let got = page_cases(page);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for ((case, status, dice, viewable), (id, d)) in got.iter().zip(want) {
        assert_eq!(case, id);
        assert_eq!(status, "written");
        assert!(viewable, "{case} has no viewer");
        assert_eq!(*dice, Some(*d), "{case}: the page's Dice is not eval's");
    }
}

#[test]
fn review_merges_every_shard_and_scores_like_eval() {
    let d = tempdir();
    let p = d.path();
    phantom_dataset(p);
    for shard in ["0/2", "1/2"] {
        let o = run(
            p,
            &[
                "--quiet",
                "run",
                "data",
                "--out",
                "out",
                "--test-segmenter",
                "threshold",
                "--shard",
                shard,
                "--report",
                "reports/run-{shard}.json",
            ],
        );
        ok(&o, shard);
    }
    let want = eval_dice(p, "out", "gt");
    assert_eq!(want.len(), 3);

    // The folder of the array's reports, scored from --gt.
    let o = run(
        p,
        &["review", "reports", "--html", "page.html", "--gt", "gt"],
    );
    ok(&o, "review --gt");
    assert!(
        stderr(&o).contains("3 case(s), 3 with images, 3 scored"),
        "{}",
        stderr(&o)
    );
    let index = page_index(&p.join("page.html"));
    assert_dice_equal(&index, &want);
    assert_eq!(index["runs"].as_array().unwrap().len(), 2);
    let shards: Vec<&str> = index["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["settings"]["shard"].as_str().unwrap())
        .collect();
    assert_eq!(shards, ["0/2", "1/2"]);
    let layers: Vec<&str> = index["cases"][0]["view"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(layers, ["ct", "labels", "gt"]);
    // Each case's data element is in the page.
    let html = std::fs::read_to_string(p.join("page.html")).unwrap();
    for c in index["cases"].as_array().unwrap() {
        let block = c["view"]["block"].as_str().unwrap();
        assert!(html.contains(&format!("id=\"{block}\"")), "{block}");
    }

    // The same scores from an `eval` report given with the run reports.
    let o = run(
        p,
        &[
            "--quiet",
            "eval",
            "--pred",
            "out",
            "--gt",
            "gt",
            "--pipeline",
            "demo",
            "--out",
            "scores.json",
        ],
    );
    ok(&o, "eval --out");
    let o = run(
        p,
        &[
            "review",
            "reports/run-0.json",
            "reports/run-1.json",
            "scores.json",
            "--html",
            "from-eval.html",
        ],
    );
    ok(&o, "review with an eval report");
    let index = page_index(&p.join("from-eval.html"));
    assert_dice_equal(&index, &want);
    assert!(index["scores"]["source"]
        .as_str()
        .unwrap()
        .ends_with("scores.json"));
    assert!(index["cases"][1]["view"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "gt"));
}

/// A `reproduce` output folder: its run report, and the native-resolution scores of
/// `reproduce.json` with the ground truth it names.
#[test]
fn review_of_a_reproduce_folder_shows_its_scores() {
    let d = tempdir();
    let p = d.path();
    let raw = crate::reproduce::write_btcv(p, [40, 40, 3]);
    let o = run(
        p,
        &[
            "--quiet",
            "reproduce",
            "btcv",
            "--data",
            raw.to_str().unwrap(),
            "--test-segmenter",
            "threshold",
            "--out",
            "repro",
        ],
    );
    ok(&o, "reproduce");
    let o = run(p, &["--quiet", "review", "repro", "--html", "page.html"]);
    ok(&o, "review repro");
    let index = page_index(&p.join("page.html"));
    let scores: Value =
        serde_json::from_slice(&std::fs::read(p.join("repro/scores-nnunet.json")).unwrap())
            .unwrap();
    let want: Vec<(String, f64)> = scores["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["case"].as_str().unwrap().to_string(),
                c["labels"][0]["dice"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(want.len(), 12);
    assert_eq!(index["scores"]["protocol"], "nnunet");
    assert!(index["scores"]["source"]
        .as_str()
        .unwrap()
        .ends_with("reproduce.json"));
    let got = page_cases(&index);
    assert_eq!(got.len(), 12);
    for ((case, _, dice, viewable), (id, d)) in got.iter().zip(&want) {
        assert_eq!(case, id);
        assert!(viewable);
        assert_eq!(*dice, Some(*d), "{case}");
    }
    assert!(index["cases"][0]["view"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "gt"));
}

#[test]
fn run_html_writes_the_page_review_writes_from_its_report() {
    let d = tempdir();
    let p = d.path();
    phantom_dataset(p);
    let o = run(
        p,
        &[
            "--quiet",
            "run",
            "data",
            "--out",
            "out",
            "--test-segmenter",
            "threshold",
            "--report",
            "run.json",
            "--html",
            "run.html",
            "--gt",
            "gt",
        ],
    );
    ok(&o, "run --html");
    let o = run(
        p,
        &[
            "--quiet",
            "review",
            "run.json",
            "--html",
            "review.html",
            "--gt",
            "gt",
        ],
    );
    ok(&o, "review");
    let a = page_index(&p.join("run.html"));
    let b = page_index(&p.join("review.html"));
    assert_eq!(a["cases"], b["cases"]);
    assert_eq!(a["scores"], b["scores"]);
    let first_run = &a["runs"][0];
    assert!(first_run["model"]["kind"] == "threshold");
    assert!(first_run["command"].as_str().unwrap().contains("--html"));
    assert_dice_equal(&a, &eval_dice(p, "out", "gt"));
    // A smaller CT (`--ct-size`, `run --html-ct-size`): the same cases and scores, fewer bytes.
    let o = run(
        p,
        &[
            "--quiet",
            "review",
            "run.json",
            "--html",
            "small.html",
            "--gt",
            "gt",
            "--ct-size",
            "32",
        ],
    );
    ok(&o, "review --ct-size 32");
    let small = page_index(&p.join("small.html"));
    assert_eq!(small["scores"], b["scores"]);
    let ct_dims = |index: &Value| -> Vec<(String, Vec<u64>)> {
        let cases = index["cases"].as_array().unwrap();
        cases
            .iter()
            .map(|c| {
                let layers = c["view"]["layers"].as_array().unwrap();
                let ct = layers.iter().find(|l| l["name"] == "ct").unwrap();
                let dims = ct["dims"].as_array().unwrap();
                let dims = dims.iter().map(|d| d.as_u64().unwrap()).collect();
                (c["case"].as_str().unwrap().to_string(), dims)
            })
            .collect()
    };
    let (full, reduced) = (ct_dims(&b), ct_dims(&small));
    assert_eq!(full.len(), 3);
    for ((case, f), (case_small, r)) in full.iter().zip(&reduced) {
        assert_eq!(case, case_small);
        assert!(
            f[0] > 32 && r[0] <= 32 && r[1] <= 32 && r[2] == f[2],
            "{case}: {f:?} → {r:?}"
        );
    }
    let size = |f: &str| std::fs::metadata(p.join(f)).unwrap().len();
    assert!(
        size("small.html") < size("review.html"),
        "{} vs {} bytes",
        size("small.html"),
        size("review.html")
    );
}

#[test]
fn the_demo_model_warning_reaches_the_page() {
    let d = tempdir();
    let p = d.path();
    dataset(&p.join("data"), 1);
    let o = run_demo(
        p,
        &[
            "--quiet",
            "run",
            "data",
            "--out",
            "out",
            "--html",
            "page.html",
        ],
    );
    ok(&o, "run --html");
    let index = page_index(&p.join("page.html"));
    let warnings = index["cases"][0]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("DEMO MODEL")),
        "{warnings:?}"
    );
    assert_eq!(index["runs"][0]["model"]["demo_model"], true);
    assert!(index["runs"][0]["model"]["weights_sha256"].is_string());
}

#[test]
fn review_usage_errors_exit_2_and_name_the_problem() {
    let d = tempdir();
    let p = d.path();
    std::fs::create_dir_all(p.join("empty")).unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["review", "empty", "--html", "x.html"],
            "no run report in this folder",
        ),
        (
            &["review", "nowhere.json", "--html", "x.html"],
            "nowhere.json",
        ),
        (&["review", "empty", "--html", "x.txt"], "must end in .html"),
        (&["run", "in.nii.gz", "--out", "o", "--gt", "gt"], "--html"),
        (
            &["run", "in.nii.gz", "--out", "o", "--html", "page.png"],
            "must end in .html",
        ),
        (
            &["review", "empty", "--html", "x.html", "--ct-size", "8"],
            "from 32 to 512",
        ),
        (
            &["run", "in.nii.gz", "--out", "o", "--html-ct-size", "64"],
            "--html",
        ),
    ];
    for (args, needle) in cases {
        let o = run(p, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(!p.join("x.html").exists());
}

/// What the browser checks look at in a case.
struct Probe {
    /// A voxel whose 3×3×3 neighbourhood is labelled, and its RAS mm (the output's affine).
    labelled: [usize; 3],
    ras: [f64; 3],
    /// A voxel whose 3×3×3 neighbourhood is background, with its HU in the abdomen window.
    background: [usize; 3],
    background_hu: f32,
}

/// Original `ijk` of the voxels a [`Probe`] names.
fn probe_voxels(labels: &Path, ct: &Path) -> Probe {
    let (lab, affine, _) = sdseg_volume::io::nifti::read_labels(labels).unwrap();
    let vol = sdseg_volume::io::read_volume(ct, &Default::default()).unwrap();
    let hu = vol.data();
    let (ni, nj, nk) = lab.dim();
    let all = |i: usize, j: usize, k: usize, want: bool| {
        (0..3).all(|a| {
            (0..3).all(|b| (0..3).all(|c| (lab[[i + a - 1, j + b - 1, k + c - 1]] != 0) == want))
        })
    };
    let mut labelled = None;
    let mut background = None;
    for k in 1..nk - 1 {
        for j in 1..nj - 1 {
            for i in 1..ni - 1 {
                if labelled.is_none() && all(i, j, k, true) {
                    labelled = Some([i, j, k]);
                }
                let h = hu[[i, j, k]];
                if background.is_none() && (-100.0..150.0).contains(&h) && all(i, j, k, false) {
                    background = Some([i, j, k]);
                }
            }
        }
    }
    let background = background.expect("a background voxel in the window");
    let labelled = labelled.expect("an interior labelled voxel");
    Probe {
        labelled,
        ras: affine.apply(labelled.map(|x| x as f64)),
        background,
        background_hu: hu[[background[0], background[1], background[2]]],
    }
}

/// The numbers after `key` in the readout: `key = (a, b, c)`.
fn readout_triple(readout: &str, key: &str) -> [f64; 3] {
    let at = readout
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {readout:?}"))
        + key.len();
    let open = at + readout[at..].find('(').unwrap() + 1;
    let close = open + readout[open..].find(')').unwrap();
    let v: Vec<f64> = readout[open..close]
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    [v[0], v[1], v[2]]
}

/// The grey the abdomen window (W400/L40) gives a HU after the page's 8-bit companding.
fn abdomen_grey(hu: f32) -> f64 {
    use sdseg_volume::review::HuCompander;
    let h = HuCompander::decode(HuCompander::encode(hu)) as f64;
    (((h + 160.0) / 400.0) * 255.0).round().clamp(0.0, 255.0)
}

/// Open `page` in Chromium with checks on `case` (see review.py); the result JSON.
fn open_in_browser(py: &Path, dir: &Path, page: &Path, case: &str, probe: &Probe) -> Value {
    let checks = dir.join(format!("{case}-checks.json"));
    let result = dir.join(format!("{case}-result.json"));
    let voxels: Vec<Value> = ["axial", "coronal", "sagittal"]
        .iter()
        .map(
            |v| serde_json::json!({"view": v, "ijk": probe.labelled, "name": format!("label-{v}")}),
        )
        .chain(std::iter::once(
            serde_json::json!({"view": "axial", "ijk": probe.background, "name": "background"}),
        ))
        .collect();
    std::fs::write(
        &checks,
        serde_json::json!({"case": case, "voxels": voxels}).to_string(),
    )
    .unwrap();
    let argv = vec![
        page.to_str().unwrap().to_string(),
        checks.to_str().unwrap().to_string(),
        result.to_str().unwrap().to_string(),
    ];
    let script = format!(
        "import runpy, sys\nsys.argv = {}\nrunpy.run_path({:?}, run_name='__main__')\n",
        serde_json::to_string(
            &std::iter::once("review.py".to_string())
                .chain(argv)
                .collect::<Vec<_>>()
        )
        .unwrap(),
        repo().join("tests/it/review.py").to_str().unwrap()
    );
    run_python(py, &script, dir);
    serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap()
}

/// What every page must show: no error, every case opened, the label colour on the labelled
/// voxel in the three views, the CT grey on the background voxel, the slice following the
/// wheel (one down) and the keys (two up).
fn assert_seen(r: &Value, cases: usize, probe: &Probe) {
    assert_eq!(r["console_errors"], serde_json::json!([]), "console errors");
    assert_eq!(
        r["page_errors"],
        serde_json::json!([]),
        "uncaught exceptions"
    );
    assert_eq!(r["opened"].as_array().unwrap().len(), cases);
    assert_eq!(r["table"].as_array().unwrap().len(), cases);
    for v in ["axial", "coronal", "sagittal"] {
        assert_eq!(
            r["pixels"][format!("label-{v}")],
            serde_json::json!([255, 0, 0]),
            "{v}: the labelled voxel is not drawn in label 1's colour (at {})",
            r["positions"][format!("label-{v}")]
        );
    }
    let bg: Vec<f64> = r["pixels"]["background"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let want = abdomen_grey(probe.background_hu);
    assert!(
        bg[0] == bg[1] && bg[1] == bg[2] && (bg[0] - want).abs() <= 2.0,
        "background voxel: {bg:?}, want grey {want} (HU {})",
        probe.background_hu
    );
    let z = |k: &str| r[k][2].as_i64().unwrap();
    assert_eq!(z("slice_after_wheel"), z("slice_before") - 1, "wheel");
    assert_eq!(z("slice_after_keys"), z("slice_before") + 1, "arrow keys");
    assert_eq!(r["canvas_changed_on_wheel"], true);
    // The readout under the mouse: the output's voxel and RAS mm (shown to 0.1 mm).
    let hover = r["hover_readout"].as_str().unwrap();
    assert!(hover.contains("label 1 "), "{hover}");
    let ijk = readout_triple(hover, "voxel (i, j, k) =");
    assert_eq!(ijk, probe.labelled.map(|x| x as f64), "{hover}");
    let mm = readout_triple(hover, "RAS (x, y, z) =");
    assert!(
        mm.iter()
            .zip(probe.ras)
            .all(|(got, want)| (got - want).abs() <= 0.051),
        "{hover}: RAS {:?}",
        probe.ras
    );
    eprintln!(
        "index drawn {:.0} ms after navigation",
        r["index_shown_ms"].as_f64().unwrap()
    );
}

#[test]
fn the_demo_run_page_shows_ct_labels_and_scrolls_in_chromium() {
    let Some(py) = require_browser() else { return };
    let d = tempdir();
    let p = d.path();
    let ct = testdata("demo-ct");
    let o = run_demo(
        p,
        &[
            "--quiet",
            "run",
            ct.to_str().unwrap(),
            "--out",
            "labels.nii.gz",
            "--html",
            "demo.html",
        ],
    );
    ok(&o, "run --html");
    let index = page_index(&p.join("demo.html"));
    assert_eq!(index["cases"].as_array().unwrap().len(), 1);
    assert!(index["scores"].is_null());
    let probe = probe_voxels(&p.join("labels.nii.gz"), &ct);
    let r = open_in_browser(&py, p, &p.join("demo.html"), "demo-ct", &probe);
    assert_seen(&r, 1, &probe);
}

#[test]
fn a_three_case_page_with_ground_truth_lists_evals_dice_worst_first_in_chromium() {
    let Some(py) = require_browser() else { return };
    let d = tempdir();
    let p = d.path();
    phantom_dataset(p);
    let o = run_demo(
        p,
        &[
            "--quiet",
            "run",
            "data",
            "--out",
            "out",
            "--samples",
            "2",
            "--uncertainty",
            "unc",
            "--html",
            "page.html",
            "--gt",
            "gt",
        ],
    );
    ok(&o, "run --html --gt");
    let want = eval_dice(p, "out", "gt");
    let index = page_index(&p.join("page.html"));
    assert_dice_equal(&index, &want);
    assert!(index["cases"][0]["view"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "uncertainty"));
    let probe = probe_voxels(&p.join("out/case2.nii.gz"), &p.join("data/case2.nii.gz"));
    let r = open_in_browser(&py, p, &p.join("page.html"), "case2", &probe);
    assert_seen(&r, 3, &probe);
    // The table: every case with eval's Dice, worst first.
    let shown: Vec<(String, f64)> = r["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["case"].as_str().unwrap().to_string(),
                row["cells"]["dice:1"].as_f64().expect("a Dice cell"),
            )
        })
        .collect();
    let mut worst_first = want.clone();
    worst_first.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(shown, worst_first);
}
