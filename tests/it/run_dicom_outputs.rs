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
