//! `run --format nifti,dicom-seg,rtstruct` through the binary, with the bundled demo model on
//! the bundled demo series: naming beside the NIfTI name, resume when every format exists,
//! reports, the refusals (NIfTI input, `--out FILE.dcm` with several formats, labels without
//! codes, a source that cannot be referenced) and the outputs read back by tools nobody here
//! wrote (dciodvfy, highdicom, rt-utils). The writers' own tests are `dicom_seg` and
//! `rtstruct`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::python::require_python;
use crate::support::run_util::*;
use crate::support::{tempdir, testdata};
use sdseg_volume::volume::Source;

/// `run` with the demo model (quiet), `SOURCE_DATE_EPOCH` fixed so outputs are byte-equal.
fn run_demo(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--quiet"];
    args.extend_from_slice(extra);
    let data = dir.join("data-dir");
    run_env(
        dir,
        &args,
        &[
            ("SDSEG_DATA_DIR", data.to_str().unwrap()),
            ("SOURCE_DATE_EPOCH", "1796658298"),
        ],
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A copy of the demo series, each file passed through `edit` (a pydicom snippet acting on
/// `ds` and `i`, the file's index in name order), or `None` without pydicom (skip recorded).
fn edited_demo_series(dir: &Path, edit: &str) -> Option<PathBuf> {
    let py = require_python(&["pydicom"])?;
    let out = dir.join("series");
    let script = format!(
        "import pydicom, pathlib, sys\n\
         src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n\
         dst.mkdir()\n\
         for i, f in enumerate(sorted(src.glob('*.dcm'))):\n\
         \x20   ds = pydicom.dcmread(f)\n\
         \x20   {edit}\n\
         \x20   ds.save_as(dst / f.name)\n"
    );
    let o = Command::new(py)
        .args(["-c", &script])
        .arg(testdata("demo-ct"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(out)
}

#[test]
fn nifti_input_is_refused_before_any_work() {
    let d = tempdir();
    let input = testdata("demo-ct-labels.nii.gz");
    let o = run_demo(
        d.path(),
        &[
            input.to_str().unwrap(),
            "--out",
            "out",
            "--format",
            "nifti,rtstruct",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("need a DICOM input"), "{e}");
    assert!(e.contains("demo-ct-labels"), "{e}");
    assert!(e.contains("drop rtstruct"), "{e}");
    assert!(!d.path().join("out").exists(), "nothing is written");
}

#[test]
fn dcm_out_file_takes_exactly_one_dicom_format() {
    let d = tempdir();
    let input = testdata("demo-ct");
    for formats in ["nifti,dicom-seg", "dicom-seg,rtstruct", "nifti"] {
        let o = run_demo(
            d.path(),
            &[
                input.to_str().unwrap(),
                "--out",
                "x.dcm",
                "--format",
                formats,
            ],
        );
        assert_eq!(code(&o), 2, "{formats}: {}", stderr(&o));
        assert!(stderr(&o).contains("a .dcm file holds one DICOM output"));
    }
    let o = run_demo(
        d.path(),
        &[
            input.to_str().unwrap(),
            "--out",
            "x",
            "--format",
            "nifti,jpeg",
        ],
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("unknown format 'jpeg'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dicom_seg_needs_codes_for_every_label() {
    let d = tempdir();
    let demo = std::fs::read_to_string(crate::support::repo().join("pipelines/demo.toml")).unwrap();
    let start = demo.find("[labels.codes]").unwrap();
    let end = demo[start..].find("\n[").unwrap() + start + 1;
    let without = format!("{}{}", &demo[..start], &demo[end..]).replace(
        "../testdata/demo-model/model.safetensors",
        crate::support::repo()
            .join("testdata/demo-model/model.safetensors")
            .to_str()
            .unwrap(),
    );
    let toml = d.path().join("nocodes.toml");
    std::fs::write(&toml, without).unwrap();
    let o = run_demo(
        d.path(),
        &[
            testdata("demo-ct").to_str().unwrap(),
            "--out",
            "out",
            "--pipeline",
            toml.to_str().unwrap(),
            "--format",
            "dicom-seg",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("no DICOM codes"), "{e}");
    assert!(e.contains("organs (spleen, kidneys, liver, aorta)"), "{e}");
    assert!(e.contains("[labels.codes]"), "{e}");
    assert!(!d.path().join("out").exists());
}

#[test]
fn a_source_that_cannot_be_referenced_is_refused_by_name() {
    for (edit, expect) in [
        (
            "if i == 3: del ds.SOPInstanceUID",
            "SOPInstanceUID (0008,0018)",
        ),
        (
            "if i == 5: ds.FrameOfReferenceUID = '1.2.3.4'",
            "mixes 2 FrameOfReferenceUIDs",
        ),
    ] {
        let d = tempdir();
        let Some(series) = edited_demo_series(d.path(), edit) else {
            return;
        };
        let o = run_demo(
            d.path(),
            &[
                series.to_str().unwrap(),
                "--out",
                "out",
                "--format",
                "nifti,dicom-seg",
            ],
        );
        assert_eq!(code(&o), 2, "{edit}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(expect), "{edit}: {e}");
        assert!(e.contains("cannot write a DICOM-SEG"), "{e}");
        let written: Vec<String> = files_in(&d.path().join("out"))
            .into_iter()
            .filter(|f| f.ends_with(".dcm") || f.ends_with(".nii.gz") || f.contains(".part"))
            .collect();
        assert!(written.is_empty(), "{edit}: {written:?}");
    }
}

fn dciodvfy_errors(path: &Path) -> Vec<String> {
    let o = Command::new("dciodvfy")
        .arg(path)
        .output()
        .expect("run dciodvfy (Debian package dicom3tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("dciodvfy {}:\n{text}", path.display());
    text.lines()
        .filter(|l| l.starts_with("Error"))
        .map(str::to_string)
        .collect()
}

/// README's command end to end: the demo model on the demo series, all three formats, then
/// dciodvfy, highdicom (DICOM-SEG voxel for voxel against the NIfTI) and rt-utils (RTSTRUCT
/// rasterised back, Dice ≥ 0.98); resume skips the case, and redoes it when one format is
/// missing; the report lists every file.
#[test]
fn demo_run_writes_every_format_that_other_tools_read_back() {
    let d = tempdir();
    let p = d.path();
    let series = testdata("demo-ct");
    let args = [
        series.to_str().unwrap(),
        "--out",
        "out",
        "--format",
        "nifti,dicom-seg,rtstruct",
        "--report",
        "run.json",
    ];
    let o = run_demo(p, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = p.join("out");
    let (nii, seg, rt) = (
        out.join("demo-ct.nii.gz"),
        out.join("demo-ct.seg.dcm"),
        out.join("demo-ct.rtstruct.dcm"),
    );
    for f in [&nii, &seg, &rt] {
        assert!(f.is_file(), "{} written", f.display());
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.join("run.json")).unwrap()).unwrap();
    let outputs = report["cases"][0]["outputs"].as_array().unwrap();
    let formats: Vec<&str> = outputs
        .iter()
        .map(|o| o["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["nifti", "dicom-seg", "rtstruct"]);
    assert_eq!(report["settings"]["formats"], "nifti,dicom-seg,rtstruct");

    // Byte-equal on a second run (content-derived UIDs, SOURCE_DATE_EPOCH).
    let again = p.join("again");
    let o = run_demo(
        p,
        &[
            series.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
            "--format",
            "dicom-seg,rtstruct",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for name in ["demo-ct.seg.dcm", "demo-ct.rtstruct.dcm"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(
        !again.join("demo-ct.nii.gz").exists(),
        "no NIfTI unless asked"
    );

    // Resume: done when every format exists; redone when one is missing.
    let o = run_demo(p, &[&args[..], &["--json"]].concat());
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"status\":\"skipped\""));
    std::fs::remove_file(&rt).unwrap();
    let o = run_demo(p, &[&args[..], &["--json"]].concat());
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"status\":\"written\""));
    assert!(rt.is_file());

    for f in [&seg, &rt] {
        let errors = dciodvfy_errors(f);
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    let labels = sdseg_volume::io::read_volume(&nii, &Default::default()).unwrap();
    let fg = labels.data().iter().filter(|&&v| v > 0.0).count();
    assert!(fg > 1000, "the demo model finds the organs: {fg} voxels");

    if let Some(py) = require_python(&["highdicom", "nibabel", "numpy"]) {
        let o = Command::new(&py)
            .arg(crate::support::repo().join("tests/it/dicom_seg.py"))
            .args(["highdicom"])
            .arg(&seg)
            .arg(&series)
            .arg(&nii)
            .arg(r#"{"1": 1}"#)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        println!("highdicom: {r}");
        assert_eq!(r["segments"]["1"]["read"].as_u64(), Some(fg as u64), "{r}");
        assert_eq!(r["segments"]["1"]["mismatched"].as_u64(), Some(0), "{r}");
        assert_eq!(r["combined_mismatched"].as_u64(), Some(0), "{r}");
    }

    if let Some(py) = require_python(&["numpy", "pydicom", "rt_utils", "cv2"]) {
        // rtstruct.py's case file: the labels in [i, j, k] C order and each slice's image.
        let Source::Dicom(src) = &sdseg_volume::io::read_volume(&series, &Default::default())
            .unwrap()
            .provenance()
            .source
            .clone()
        else {
            panic!("a DICOM source")
        };
        let raw = p.join("labels.u16");
        let bytes: Vec<u8> = labels
            .data()
            .iter()
            .flat_map(|&v| (v as u16).to_le_bytes())
            .collect();
        std::fs::write(&raw, bytes).unwrap();
        let images: Vec<serde_json::Value> = src
            .reference
            .slices
            .iter()
            .map(|s| serde_json::json!({"uid": s.sop_instance_uid, "frame": s.frame_number}))
            .collect();
        let case = p.join("case.json");
        std::fs::write(
            &case,
            serde_json::json!({
                "labels": raw,
                "shape": labels.shape(),
                "images": images,
                "rois": [{"name": "organs (spleen, kidneys, liver, aorta)", "label": 1}],
            })
            .to_string(),
        )
        .unwrap();
        let o = Command::new(&py)
            .arg(crate::support::repo().join("tests/it/rtstruct.py"))
            .arg(&series)
            .arg(&rt)
            .arg(&case)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        println!("rt-utils: {r}");
        let roi = &r["rois"][0];
        assert!(roi["dice_rt_utils"].as_f64().unwrap() >= 0.98, "{r}");
        assert_eq!(roi["exact_own"], true, "{r}");
    }
}

/// `slurm-script` passes the output formats (and the draws) on to every task.
#[test]
fn slurm_script_passes_formats_and_samples_on() {
    let d = tempdir();
    let data = d.path().join("data/case1");
    std::fs::create_dir_all(&data).unwrap();
    for f in std::fs::read_dir(testdata("demo-ct")).unwrap().flatten() {
        std::fs::copy(f.path(), data.join(f.file_name())).unwrap();
    }
    let o = run_env(
        d.path(),
        &[
            "slurm-script",
            "--data",
            "data",
            "--out",
            "out",
            "--array",
            "2",
            "--time",
            "00:10:00",
            "--format",
            "nifti,rtstruct",
            "--empty-segments",
            "--samples",
            "3",
            "--uncertainty",
            "maps",
        ],
        &[(
            "SDSEG_DATA_DIR",
            d.path().join("data-dir").to_str().unwrap(),
        )],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    for want in [
        "--format 'nifti,rtstruct'",
        "--empty-segments",
        "--samples '3'",
        "--uncertainty '",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
