//! One bad input per error kind, through the binary: the exit code (2 for the user's input, 3
//! for a batch with failed cases) and that stderr names the offending file (or flag).
//!
//! Each error type says itself whether it is the user's input (`error::Classify`); this table
//! checks that the class survives the trip into `anyhow` and out of `main` at every boundary
//! a user can reach.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::support::{bin_path as bin, testdata};

/// The first `n` bytes of `from`, written to `to`.
fn truncated_copy(from: &Path, to: &Path, n: usize) {
    let bytes = std::fs::read(from).unwrap();
    std::fs::write(to, &bytes[..n.min(bytes.len())]).unwrap();
}

/// A demo phantom as NIfTI (`phantom.nii.gz` and `labels.nii.gz`) in `dir`, made by the binary.
fn phantom_nifti(dir: &Path, size: &str) {
    let out = Command::new(bin())
        .args([
            "phantom", "--format", "nifti", "--size", size, "--quiet", "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "phantom: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Case {
    /// The error kind this row feeds.
    kind: &'static str,
    args: Vec<OsString>,
    code: i32,
    /// What stderr must name: the offending file, or the flag when there is no file.
    names: String,
}

fn case(kind: &'static str, args: &[&dyn AsRef<std::ffi::OsStr>], code: i32, names: &Path) -> Case {
    Case {
        kind,
        args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
        code,
        names: names.display().to_string(),
    }
}

#[test]
fn one_bad_input_per_error_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    let demo_ct = testdata("demo-ct");
    let demo_config = testdata("demo-model/config.json");
    let threshold = "--test-segmenter=threshold";

    // Inputs, each broken in one way.
    let bad_nifti = t("cut.nii.gz");
    truncated_copy(&testdata("demo-ct-labels.nii.gz"), &bad_nifti, 200);
    let bad_header = t("header.nii");
    std::fs::write(&bad_header, vec![7u8; 400]).unwrap();
    let bad_dicom_dir = t("dicom-cut");
    std::fs::create_dir(&bad_dicom_dir).unwrap();
    for i in 1..=3 {
        let name = format!("IM000{i}.dcm");
        // IM0002 loses half its pixel data: the series cannot be read without it.
        let n = if i == 2 { 6000 } else { usize::MAX };
        truncated_copy(&demo_ct.join(&name), &bad_dicom_dir.join(&name), n);
    }
    let not_dicom_dir = t("not-dicom");
    std::fs::create_dir(&not_dicom_dir).unwrap();
    std::fs::write(not_dicom_dir.join("notes.txt"), "not an image").unwrap();
    let missing = t("missing.nii.gz");
    // In a folder of its own: a config.json beside it would be read as its config.
    std::fs::create_dir(t("weights")).unwrap();
    let bad_weights = t("weights/model.safetensors");
    std::fs::write(&bad_weights, b"definitely not a checkpoint").unwrap();
    let bad_config = t("config.json");
    std::fs::write(&bad_config, b"{\"model\": [}").unwrap();
    let bad_pipeline = t("pipeline.toml");
    std::fs::write(&bad_pipeline, "[window\nhu_min = ").unwrap();
    let empty_dir = t("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let small = t("small");
    phantom_nifti(&small, "32x32x6");
    let other = t("other");
    phantom_nifti(&other, "24x24x5");
    let manifest = t("cases.csv");
    std::fs::write(&manifest, "input,output\nsmall/phantom.nii.gz,out.png\n").unwrap();
    let a_file = t("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let batch = t("batch");
    std::fs::create_dir(&batch).unwrap();
    std::fs::copy(small.join("phantom.nii.gz"), batch.join("good.nii.gz")).unwrap();
    std::fs::copy(&bad_nifti, batch.join("cut.nii.gz")).unwrap();
    // Every row writes (or would write) somewhere new, so no row resumes another's output.
    let out_nii = |row: &str| t(&format!("out-{row}.nii.gz"));
    let out_dir = |row: &str| t(&format!("out-{row}"));

    let cases = [
        // io::nifti
        case(
            "NiftiError (corrupt gzip)",
            &[&"import", &bad_nifti, &"--out", &out_nii("1")],
            2,
            &bad_nifti,
        ),
        case(
            "NiftiError (bad header)",
            &[&"inspect", &bad_header],
            2,
            &bad_header,
        ),
        case(
            "NiftiError (output folder missing)",
            &[
                &"import",
                &small.join("phantom.nii.gz"),
                &"--out",
                &t("no/such/dir/x.nii.gz"),
            ],
            2,
            &t("no/such/dir/x.nii.gz"),
        ),
        // io::dicom
        case(
            "DicomError (truncated file)",
            &[&"import", &bad_dicom_dir, &"--out", &out_nii("2")],
            2,
            &bad_dicom_dir.join("IM0002.dcm"),
        ),
        case(
            "DicomError (no DICOM files)",
            &[&"inspect", &not_dicom_dir],
            2,
            &not_dicom_dir,
        ),
        // io::ReadError
        case(
            "ReadError (missing file)",
            &[&"inspect", &missing],
            2,
            &missing,
        ),
        // model::checkpoint
        case(
            "ModelError (not a checkpoint)",
            &[
                &"run",
                &demo_ct,
                &"--out",
                &out_nii("3"),
                &"--weights",
                &bad_weights,
                &"--model-config",
                &demo_config,
            ],
            2,
            &bad_weights,
        ),
        case(
            "ModelError (convert-checkpoint)",
            &[
                &"convert-checkpoint",
                &bad_weights,
                &"--out",
                &t("lean.safetensors"),
            ],
            2,
            &bad_weights,
        ),
        // model::config
        case(
            "ConfigError (bad JSON)",
            &[
                &"run",
                &demo_ct,
                &"--out",
                &out_nii("4"),
                &"--weights",
                &testdata("demo-model/model.safetensors"),
                &"--model-config",
                &bad_config,
            ],
            2,
            &bad_config,
        ),
        // pipeline::config
        case(
            "PipelineError (bad TOML)",
            &[
                &"train",
                &"--pipeline",
                &bad_pipeline,
                &"--data",
                &"phantom:1-1",
                &"--out",
                &out_dir("5"),
            ],
            2,
            &bad_pipeline,
        ),
        // model::device
        case(
            "DeviceSpec (unknown device)",
            &[
                &"run",
                &demo_ct,
                &"--out",
                &out_nii("6"),
                &"--device",
                &"tpu",
            ],
            2,
            Path::new("--device"),
        ),
        case(
            "DeviceError (no storage type)",
            &[
                &"convert-checkpoint",
                &testdata("demo-model/model.safetensors"),
                &"--out",
                &t("f.safetensors"),
                &"--dtype",
                &"bf16-fast",
            ],
            2,
            Path::new("--dtype bf16-fast"),
        ),
        // eval
        case(
            "EvalError (corrupt prediction)",
            &[
                &"eval",
                &"--pred",
                &bad_nifti,
                &"--gt",
                &small.join("labels.nii.gz"),
            ],
            2,
            &bad_nifti,
        ),
        case(
            "EvalError (grids differ)",
            &[
                &"eval",
                &"--pred",
                &other.join("labels.nii.gz"),
                &"--gt",
                &small.join("labels.nii.gz"),
            ],
            2,
            &other.join("labels.nii.gz"),
        ),
        // reproduce
        case(
            "ReproduceError (not a dataset folder)",
            &[
                &"reproduce",
                &"btcv",
                &"--data",
                &empty_dir,
                &"--out",
                &out_dir("7"),
                &threshold,
            ],
            2,
            &empty_dir,
        ),
        // train::data
        case(
            "DataError (no training volumes)",
            &[
                &"train",
                &"--pipeline",
                &"demo",
                &"--data",
                &empty_dir,
                &"--out",
                &out_dir("8"),
            ],
            2,
            &empty_dir,
        ),
        // pipeline::cases
        case(
            "CasesError (bad manifest)",
            &[
                &"run",
                &"--manifest",
                &manifest,
                &"--out",
                &out_dir("9"),
                &threshold,
            ],
            2,
            &manifest,
        ),
        // review
        case(
            "ReviewError (no run report in the folder)",
            &[&"review", &empty_dir, &"--html", &t("review.html")],
            2,
            &empty_dir,
        ),
        // phantom::dicom_write
        case(
            "DicomWriteError (output under a file)",
            &[&"phantom", &"--out", &a_file.join("ct")],
            2,
            &a_file,
        ),
        // pipeline::engine: one case failed (its own class), several cases with one failed (3)
        case(
            "CaseError (the only case)",
            &[&"run", &bad_nifti, &"--out", &out_nii("10"), &threshold],
            2,
            &bad_nifti,
        ),
        case(
            "PartialFailure",
            &[&"run", &batch, &"--out", &t("batch-out"), &threshold],
            3,
            &batch.join("cut.nii.gz"),
        ),
    ];

    #[cfg(not(feature = "cuda"))]
    let cases = {
        let mut cases = Vec::from(cases);
        cases.push(case(
            "DeviceError (a build without CUDA)",
            &[
                &"train",
                &"--pipeline",
                &"demo",
                &"--data",
                &"phantom:1-1",
                &"--out",
                &out_dir("cuda"),
                &"--device",
                &"gpu",
            ],
            2,
            Path::new("--device cuda:0"),
        ));
        cases
    };

    let mut failures = Vec::new();
    for c in &cases {
        let out = Command::new(bin())
            .args(&c.args)
            .arg("--quiet")
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        if code != Some(c.code) || !stderr.contains(&c.names) || stderr.contains("panicked") {
            failures.push(format!(
                "{}: exit {code:?} (want {}), stderr should name {}:\n{stderr}",
                c.kind, c.code, c.names
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
