//! Interoperability: our DICOM reader against dcm2niix (+ nibabel for canonical reorientation).
//!
//! For each generated series, dcm2niix converts it to NIfTI; nibabel loads that and reorients
//! it to RAS canonical; our reader's volume is reoriented to RAS the same way and dumped as raw
//! f32 + affine JSON. Voxels must be equal and affines within 1e-3 mm. A label file we
//! write for the DICOM input (on our grid) must overlay dcm2niix's output voxel for voxel.
//!
//! Tools (`support::python`): the interpreter with nibabel + numpy, and `dcm2niix` from that
//! interpreter's bin folder or PATH; a missing one fails the tests unless
//! `SDSEG_ALLOW_MISSING_TOOLS=1`.

use sdseg_volume::io::dicom::read_dicom;
use sdseg_volume::io::nifti::write_labels;
use sdseg_volume::io::ReadOptions;
use sdseg_volume::phantom::{
    write_dicom_series, DicomWriteOptions, FrameLayout, InstanceOrder, WriteSyntax,
};
use sdseg_volume::volume::Volume;
use sdseg_volume::AxCodes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::python::{require_dcm2niix, require_python};
use crate::support::tempdir;
use crate::support::volume::{phantom, rotated, with_affine};

struct Tools {
    python: PathBuf,
    dcm2niix: PathBuf,
}

/// Both tools, or `None` when one is missing and the run allows that (see `support::python`).
fn tools() -> Option<Tools> {
    let python = require_python(&["nibabel", "numpy"])?;
    let dcm2niix = require_dcm2niix()?;
    Some(Tools { python, dcm2niix })
}

const COMPARE: &str = r#"
import json, sys, glob
import numpy as np, nibabel as nib
ours_dir, niix_dir = sys.argv[1], sys.argv[2]
meta = json.load(open(ours_dir + "/ours.json"))
shape = tuple(meta["shape"])
ours = np.fromfile(ours_dir + "/ours.f32", dtype="<f4").reshape(shape, order="F")
ours_aff = np.array(meta["affine"])
files = sorted(glob.glob(niix_dir + "/*.nii"))
assert len(files) == 1, f"dcm2niix wrote {files}"
img = nib.as_closest_canonical(nib.load(files[0]))
theirs = np.asarray(img.dataobj, dtype=np.float64)
if theirs.ndim == 4 and theirs.shape[3] == 1:
    theirs = theirs[..., 0]
assert theirs.shape == ours.shape, f"shape dcm2niix {theirs.shape} ours {ours.shape}"
d = np.abs(theirs - ours.astype(np.float64))
assert d.max() == 0, f"voxels differ: max {d.max()} at {np.unravel_index(d.argmax(), d.shape)}, {int((d > 0).sum())} voxels"
ad = np.abs(img.affine - ours_aff).max()
assert ad < 1e-3, f"affine differs by {ad}\ndcm2niix\n{img.affine}\nours\n{ours_aff}"
# Labels we write for this DICOM input overlay dcm2niix's conversion exactly.
lab = nib.as_closest_canonical(nib.load(ours_dir + "/labels.nii.gz"))
assert lab.get_data_dtype() == np.uint8, lab.get_data_dtype()
assert lab.header["sform_code"] > 0 or lab.header["qform_code"] > 0
la = np.asarray(lab.dataobj)
assert la.shape == theirs.shape, f"label shape {la.shape} vs {theirs.shape}"
ld = np.abs(lab.affine - img.affine).max()
assert ld < 1e-3, f"label affine differs from dcm2niix by {ld}"
expected = (theirs > 100).astype(np.uint8) + (theirs > 400).astype(np.uint8)
assert (la == expected).all(), f"{int((la != expected).sum())} label voxels misplaced"
print("ok", shape, "affine diff", ad, "label affine diff", ld)
"#;

fn dump_ras(v: &Volume, dir: &Path) {
    let (ras, _) = v.reorient(AxCodes::RAS);
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("ours.f32")).unwrap());
    for x in ras.data().t().iter() {
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
    let meta = serde_json::json!({ "shape": ras.shape(), "affine": ras.affine().0 });
    std::fs::write(dir.join("ours.json"), meta.to_string()).unwrap();
}

fn check_case(t: &Tools, name: &str, v: &Volume, o: &DicomWriteOptions) {
    let tmp = tempdir();
    let series = tmp.path().join("series");
    let niix = tmp.path().join("niix");
    std::fs::create_dir_all(&niix).unwrap();
    write_dicom_series(v, &series, o).unwrap();
    let ours = read_dicom(&series, &ReadOptions::default()).unwrap();
    dump_ras(&ours, tmp.path());
    // A label volume on our grid (not reoriented): 1 above 100 HU, 2 above 400 HU.
    let labels = ours
        .data()
        .mapv(|v| u16::from(v > 100.0) + u16::from(v > 400.0));
    write_labels(&tmp.path().join("labels.nii.gz"), &labels, &ours).unwrap();
    let out = Command::new(&t.dcm2niix)
        .args(["-z", "n", "-b", "n", "-f", "out", "-o"])
        .arg(&niix)
        .arg(&series)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: dcm2niix failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cmp = Command::new(&t.python)
        .args(["-c", COMPARE])
        .arg(tmp.path())
        .arg(&niix)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{name}: differs from dcm2niix:\n{}{}\ndcm2niix said:\n{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn matches_dcm2niix_axial() {
    let Some(t) = tools() else { return };
    let v = phantom([48, 48, 16], 3);
    check_case(&t, "axial", &v, &DicomWriteOptions::default());
}

#[test]
fn matches_dcm2niix_oblique() {
    let Some(t) = tools() else { return };
    let v = phantom([40, 40, 14], 4);
    let n = (1.0f64 / 3.0).sqrt();
    let a = rotated(v.affine(), [n, n, n], 23.0);
    check_case(
        &t,
        "oblique",
        &with_affine(&v, a),
        &DicomWriteOptions::default(),
    );
}

#[test]
fn matches_dcm2niix_feet_first() {
    let Some(t) = tools() else { return };
    let v = phantom([40, 40, 12], 5);
    // Feet-first supine: rows run toward patient right, slices run head → feet.
    let mut a = *v.affine();
    a.0[0][0] = -a.0[0][0];
    a.0[2][2] = -a.0[2][2];
    let o = DicomWriteOptions {
        patient_position: Some("FFS".into()),
        instance_order: InstanceOrder::Descending,
        ..Default::default()
    };
    check_case(&t, "feet-first", &with_affine(&v, a), &o);
}

#[test]
fn matches_dcm2niix_non_square_signed_slope() {
    let Some(t) = tools() else { return };
    let v = phantom([56, 40, 10], 6);
    let o = DicomWriteOptions {
        signed: true,
        bits_stored: 16,
        rescale_slope: 0.5,
        rescale_intercept: -100.0,
        shuffle_file_names: true,
        instance_order: InstanceOrder::Shuffled,
        ..Default::default()
    };
    check_case(&t, "non-square", &v, &o);
}

#[test]
fn matches_dcm2niix_multiframe_rle() {
    let Some(t) = tools() else { return };
    let v = phantom([32, 36, 9], 7);
    let o = DicomWriteOptions {
        layout: FrameLayout::MultiFrame,
        syntax: WriteSyntax::Rle,
        ..Default::default()
    };
    check_case(&t, "multi-frame RLE", &v, &o);
}
