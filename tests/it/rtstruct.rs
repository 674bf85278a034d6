//! RTSTRUCT output (`io::derived::rtstruct`), checked by tools nobody here wrote:
//!
//! - `dciodvfy` (dicom3tools) validates the object against the RT Structure Set IOD: no
//!   errors (its warnings are printed);
//! - rt-utils (`RTStructBuilder.create_from`, `get_roi_mask_by_name`) rasterises every ROI
//!   back onto the source series: Dice ≥ 0.98 against the label volume for every ROI of at
//!   least 100 voxels, on the bundled demo series, an oblique series and a feet-first series;
//! - pydicom and the even-odd rasteriser of `rtstruct.py` place every contour on the slice its
//!   ContourImageSequence names, using the source files' own geometry: every ROI comes back
//!   voxel for voxel (this is also the check for a multi-frame source, which rt-utils cannot
//!   read: it takes each file for one slice, and for a tilted series with non-square pixels,
//!   which rt-utils places wrongly).
//!
//! `SDSEG_RTSTRUCT_OUT=DIR` keeps a copy of each case's RTSTRUCT in `DIR`.
//!
//! The sources are written by the phantom DICOM writer (`sdseg_volume::phantom`), as
//! tests/it/dicom.rs does, and read with `io::read_volume`; each case adds two small ROIs of
//! its own in an air corner: a ring with an island in its hole, and single pixels and
//! one-pixel lines.

use ndarray::Array3;
use sdseg_volume::io::derived::rtstruct::write_rtstruct;
use sdseg_volume::io::derived::{
    Code, DerivedError, DerivedRequest, Producer, SegmentSpec, Timestamp,
};
use sdseg_volume::io::{read_volume, ReadOptions};
use sdseg_volume::phantom::{
    abdomen_phantom, write_dicom_series, DicomWriteOptions, FrameLayout, InstanceOrder,
    PhantomParams,
};
use sdseg_volume::volume::{SeriesReference, Source, Volume};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::python::require_python;
use crate::support::volume::{rotated, with_affine};
use crate::support::{tempdir, testdata};

const RING: u16 = 20;
const SPECKS: u16 = 21;

fn code(value: &str, meaning: &str) -> Code {
    Code::new("SCT", value, meaning)
}

/// The phantom organs (BTCV ids) and this test's two extra ROIs, with display colours.
fn segments(present: &[u16]) -> Vec<SegmentSpec> {
    let all = [
        (1, "spleen", [157, 108, 162], "78961009", "Spleen"),
        (2, "right kidney", [185, 102, 83], "64033007", "Kidney"),
        (3, "left kidney", [185, 102, 83], "64033007", "Kidney"),
        (6, "liver", [221, 130, 101], "10200004", "Liver"),
        (8, "aorta", [224, 97, 76], "15825003", "Aorta"),
        (RING, "ring with island", [0, 200, 0], "91747007", "Lumen"),
        (
            SPECKS,
            "specks and lines",
            [250, 250, 0],
            "49755003",
            "Morphologically abnormal structure",
        ),
    ];
    all.iter()
        .filter(|s| present.contains(&s.0))
        .map(|&(label, name, color, value, meaning)| SegmentSpec {
            label,
            name: name.into(),
            color,
            category: code("123037004", "Anatomical Structure"),
            property_type: code(value, meaning),
            modifier: match label {
                2 => Some(code("24028007", "Right")),
                3 => Some(code("7771000", "Left")),
                _ => None,
            },
        })
        .collect()
}

fn producer() -> Producer {
    Producer {
        manufacturer: "sdseg-volume".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        algorithm_name: "SDSeg sdseg-demo (test labels)".into(),
        algorithm_version: "0123456789ab".into(),
    }
}

fn reference(v: &Volume) -> &SeriesReference {
    match &v.provenance().source {
        Source::Dicom(d) => &d.reference,
        other => panic!("not a DICOM source: {other:?}"),
    }
}

fn request<'a>(
    labels: &'a Array3<u16>,
    reference: &'a SeriesReference,
    segments: &'a [SegmentSpec],
    producer: &'a Producer,
) -> DerivedRequest<'a> {
    DerivedRequest {
        labels: labels.view(),
        reference,
        segments,
        producer,
        series_description: "SDSeg test contours".into(),
        series_number: 901,
        created: Timestamp {
            unix_seconds: 1_796_658_298,
        },
    }
}

/// Adds the ring-with-island ROI and the specks-and-lines ROI in the air corner at low i, j.
fn add_small_rois(labels: &mut Array3<u16>) {
    let (nx, ny, nz) = labels.dim();
    assert!(nx >= 40 && ny >= 40 && nz >= 8);
    for k in 2..nz.min(8) {
        for j in 0..24 {
            for i in 0..24 {
                let d = ((i as f64 - 12.0).powi(2) + (j as f64 - 12.0).powi(2)).sqrt();
                if (6.0..10.0).contains(&d) || d < 2.5 {
                    labels[[i, j, k]] = RING;
                }
            }
        }
        // A single pixel, a horizontal line, a diagonal line, a bent line, touching the edge.
        labels[[30, 3, k]] = SPECKS;
        for t in 0..5 {
            labels[[28 + t, 8, k]] = SPECKS;
            labels[[28 + t, 12 + t, k]] = SPECKS;
        }
        for t in 0..4 {
            labels[[t, 30, k]] = SPECKS;
            labels[[4 + t, 31 + t, k]] = SPECKS;
        }
    }
}

/// A source series on disk, read back, and the labels on its grid.
struct Case {
    name: &'static str,
    series: PathBuf,
    volume: Volume,
    labels: Array3<u16>,
}

/// The phantom of `shape` (seed 5) with `affine_of` applied, written with `opts` into `dir`.
fn phantom_case(
    name: &'static str,
    dir: &Path,
    shape: [usize; 3],
    affine_of: impl Fn(&Volume) -> sdseg_volume::Affine,
    opts: &DicomWriteOptions,
    read: &ReadOptions,
) -> Case {
    let ph = abdomen_phantom(&PhantomParams::new(shape), 5);
    let v = with_affine(&ph.volume, affine_of(&ph.volume));
    let series = dir.join(name);
    write_dicom_series(&v, &series, opts).expect("write the source series");
    let volume = read_volume(&series, read).expect("read the source series");
    let d = volume.affine().max_abs_diff(v.affine());
    assert!(
        d < 1e-4,
        "{name}: the reader's grid is the written one ({d})"
    );
    let mut labels = ph.labels.clone();
    add_small_rois(&mut labels);
    Case {
        name,
        series,
        volume,
        labels,
    }
}

fn demo_case() -> Case {
    let series = testdata("demo-ct");
    let volume = read_volume(&series, &ReadOptions::default()).expect("read the demo series");
    let (labels, affine, _) =
        sdseg_volume::io::nifti::read_labels(&testdata("demo-ct-labels.nii.gz")).unwrap();
    assert_eq!(labels.dim(), {
        let s = volume.shape();
        (s[0], s[1], s[2])
    });
    assert!(affine.max_abs_diff(volume.affine()) < 1e-4);
    Case {
        name: "demo-ct",
        series,
        volume,
        labels,
    }
}

fn present_labels(labels: &Array3<u16>) -> Vec<u16> {
    let mut seen = [false; 65536];
    labels.iter().for_each(|&v| seen[usize::from(v)] = true);
    (1..=u16::MAX).filter(|&l| seen[usize::from(l)]).collect()
}

/// `dciodvfy` on `path`: its output, printed; fails on any error line.
fn assert_dciodvfy_clean(path: &Path) -> String {
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
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    text
}

/// Writes `case` as an RTSTRUCT, validates it, and reads it back with rt-utils (when
/// `rt_utils` is true) and with `rtstruct.py`'s own reader; returns the per-ROI results.
fn check_case(case: &Case, rt_utils: bool) -> Vec<serde_json::Value> {
    let Some(python) = require_python(&["numpy", "pydicom", "rt_utils", "cv2"]) else {
        return vec![];
    };
    let dir = tempdir();
    let reference = reference(&case.volume);
    let present = present_labels(&case.labels);
    let segs = segments(&present);
    assert_eq!(
        segs.len(),
        present.len(),
        "{}: every label has a segment",
        case.name
    );
    let producer = producer();
    let out = dir.path().join(format!("{}.rtstruct.dcm", case.name));
    write_rtstruct(&out, &request(&case.labels, reference, &segs, &producer))
        .expect("write the RTSTRUCT");
    assert_dciodvfy_clean(&out);
    if let Some(keep) = std::env::var_os("SDSEG_RTSTRUCT_OUT") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&out, Path::new(&keep).join(out.file_name().unwrap())).unwrap();
    }

    let raw = dir.path().join("labels.u16");
    let bytes: Vec<u8> = case
        .labels
        .iter() // logical [i, j, k] order = C order of the shape
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&raw, bytes).unwrap();
    let images: Vec<serde_json::Value> = reference
        .slices
        .iter()
        .map(|s| serde_json::json!({"uid": s.sop_instance_uid, "frame": s.frame_number}))
        .collect();
    let rois: Vec<serde_json::Value> = segs
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "label": s.label}))
        .collect();
    let case_json = dir.path().join("case.json");
    std::fs::write(
        &case_json,
        serde_json::json!({
            "labels": raw,
            "shape": case.labels.shape(),
            "images": images,
            "rois": rois,
        })
        .to_string(),
    )
    .unwrap();
    let o = Command::new(&python)
        .arg(crate::support::repo().join("tests/it/rtstruct.py"))
        .arg(&case.series)
        .arg(&out)
        .arg(&case_json)
        .output()
        .expect("run rtstruct.py");
    assert!(
        o.status.success(),
        "rtstruct.py failed on {}:\n{}",
        case.name,
        String::from_utf8_lossy(&o.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let rt_error = result["rt_utils_error"].as_str();
    if rt_utils {
        assert!(
            rt_error.is_none(),
            "{}: rt-utils failed: {rt_error:?}",
            case.name
        );
    } else {
        println!(
            "{}: rt-utils not judged on this source (its error: {rt_error:?})",
            case.name
        );
    }
    let rois = result["rois"].as_array().unwrap().clone();
    for r in &rois {
        println!(
            "{}: ROI {:<18} {:>6} voxels  Dice rt-utils {}  Dice own reader {} (exact: {}){}",
            case.name,
            r["name"],
            r["voxels"],
            r["dice_rt_utils"],
            r["dice_own"],
            r["exact_own"],
            r.get("rt_utils_roi_error")
                .map(|e| format!("  rt-utils: {e}"))
                .unwrap_or_default()
        );
    }
    for r in &rois {
        assert_eq!(
            r["exact_own"], true,
            "{}: ROI {} does not come back voxel for voxel: {r}",
            case.name, r["name"]
        );
        if rt_utils && r["voxels"].as_u64().unwrap() >= 100 {
            let d = r["dice_rt_utils"].as_f64().unwrap_or(0.0);
            assert!(d >= 0.98, "{}: rt-utils Dice {d} for {r}", case.name);
        }
    }
    rois
}

#[test]
fn demo_series_through_dciodvfy_and_rt_utils() {
    let rois = check_case(&demo_case(), true);
    if !rois.is_empty() {
        assert_eq!(rois.len(), 5, "the five demo organs");
    }
}

#[test]
fn oblique_series_through_rt_utils() {
    let dir = tempdir();
    let n = (1.0f64 / 3.0).sqrt();
    let case = phantom_case(
        "oblique",
        dir.path(),
        [96, 96, 24],
        |v| rotated(v.affine(), [n, -n, n], 31.0),
        &DicomWriteOptions {
            seed: 31,
            ..Default::default()
        },
        &ReadOptions::default(),
    );
    check_case(&case, true);
}

#[test]
fn feet_first_series_through_rt_utils() {
    let dir = tempdir();
    let case = phantom_case(
        "feet-first",
        dir.path(),
        [96, 96, 24],
        |v| {
            let mut a = *v.affine();
            a.0[0][0] = -a.0[0][0];
            a.0[2][2] = -a.0[2][2];
            a
        },
        &DicomWriteOptions {
            seed: 32,
            patient_position: Some("FFS".into()),
            instance_order: InstanceOrder::Descending,
            shuffle_file_names: true,
            ..Default::default()
        },
        &ReadOptions::default(),
    );
    check_case(&case, true);
}

#[test]
fn multi_frame_source_through_pydicom() {
    let dir = tempdir();
    let case = phantom_case(
        "multi-frame",
        dir.path(),
        [64, 64, 16],
        |v| rotated(v.affine(), [0.0, 1.0, 0.0], 12.0),
        &DicomWriteOptions {
            seed: 33,
            layout: FrameLayout::MultiFrame,
            ..Default::default()
        },
        &ReadOptions::default(),
    );
    assert!(
        reference(&case.volume).slices[0].frame_number.is_some(),
        "a multi-frame source"
    );
    check_case(&case, false);
}

/// Gantry tilt (slices shifted along the column direction, read with `allow_tilt`), non-square
/// pixels and a non-square image: each contour must use its own slice's position and the
/// right spacing for rows and columns. rt-utils 1.2.7 places every slice with the first
/// slice's position, takes PixelSpacing's first value for columns and needs Rows = Columns,
/// so only the pydicom reader judges this case.
#[test]
fn tilted_series_with_non_square_pixels_through_pydicom() {
    let dir = tempdir();
    let case = phantom_case(
        "tilted-non-square",
        dir.path(),
        [96, 80, 24],
        |v| {
            let mut a = *v.affine();
            a.0[1][2] = 0.3 * a.0[2][2];
            a
        },
        &DicomWriteOptions {
            seed: 34,
            ..Default::default()
        },
        &ReadOptions {
            allow_tilt: true,
            ..Default::default()
        },
    );
    let r = reference(&case.volume);
    assert_ne!(r.pixel_spacing[0], r.pixel_spacing[1], "non-square pixels");
    check_case(&case, false);
}

// ---------------------------------------------------------------------------------------
// Refusals: nothing is written.

fn small_case(dir: &Path) -> Case {
    phantom_case(
        "small",
        dir,
        [48, 48, 8],
        |v| *v.affine(),
        &DicomWriteOptions::default(),
        &ReadOptions::default(),
    )
}

fn assert_refused(
    labels: &Array3<u16>,
    reference: &SeriesReference,
    segs: &[SegmentSpec],
    want: &str,
) {
    let dir = tempdir();
    let out = dir.path().join("x.rtstruct.dcm");
    let producer = producer();
    let e =
        write_rtstruct(&out, &request(labels, reference, segs, &producer)).expect_err("refused");
    assert!(e.to_string().contains(want), "{e}");
    assert!(!out.exists(), "no file left behind");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temporary file left behind"
    );
    if !matches!(e, DerivedError::Request(_)) {
        assert!(sdseg_volume::error::Classify::is_input_error(&e), "{e:?}");
    }
}

#[test]
fn unreferenceable_sources_and_bad_requests_are_refused() {
    let dir = tempdir();
    let case = small_case(dir.path());
    let good = reference(&case.volume).clone();
    let segs = segments(&[1, 6]);

    let mut r = good.clone();
    r.slices[3].sop_instance_uid = None;
    assert_refused(
        &case.labels,
        &r,
        &segs,
        "slice 3 of the source series has no SOPInstanceUID",
    );

    let mut r = good.clone();
    r.frame_of_reference_uids[5] = Some("1.2.3.4".into());
    assert_refused(&case.labels, &r, &segs, "mixes 2 FrameOfReferenceUIDs");

    let mut r = good.clone();
    r.series_instance_uid = None;
    assert_refused(&case.labels, &r, &segs, "no SeriesInstanceUID");

    let short = case.labels.slice(ndarray::s![.., .., ..7]).to_owned();
    assert_refused(&short, &good, &segs, "shape");

    let mut twice = segs.clone();
    twice[1].label = 1;
    assert_refused(&case.labels, &good, &twice, "both have label 1");
}

#[test]
fn same_request_same_bytes_and_absent_labels_give_empty_rois() {
    let dir = tempdir();
    let case = small_case(dir.path());
    let r = reference(&case.volume);
    // Label 9 is not in the phantom: an ROI without contours (the caller's choice).
    let mut segs = segments(&[1, 6]);
    segs.push(SegmentSpec {
        label: 9,
        name: "absent".into(),
        ..segs[0].clone()
    });
    let producer = producer();
    let a = dir.path().join("a.dcm");
    let b = dir.path().join("b.dcm");
    write_rtstruct(&a, &request(&case.labels, r, &segs, &producer)).unwrap();
    write_rtstruct(&b, &request(&case.labels, r, &segs, &producer)).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_dciodvfy_clean(&a);

    let obj = dicom_object::open_file(&a).unwrap();
    let rois = obj
        .element(dicom_dictionary_std::tags::ROI_CONTOUR_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .to_vec();
    let contours = |n: usize| {
        rois[n]
            .element(dicom_dictionary_std::tags::CONTOUR_SEQUENCE)
            .ok()
            .map(|e| e.items().unwrap().len())
    };
    assert!(contours(0) > Some(0) && contours(1) > Some(0));
    assert_eq!(
        contours(2),
        None,
        "the absent label's ROI has no ContourSequence"
    );
}

/// A ROI name beyond the source's character set (the demo series declares ISO_IR 100) is
/// written as UTF-8, as the DICOM-SEG writer does (one shared rule, `settle_character_set`).
#[test]
fn roi_names_beyond_the_source_character_set_are_written_as_utf8() {
    let case = demo_case();
    let reference = reference(&case.volume);
    let mut segs = segments(&present_labels(&case.labels));
    segs[0].name = "Milz (脾臓)".into();
    let producer = producer();
    let dir = tempdir();
    let out = dir.path().join("rt.dcm");
    write_rtstruct(&out, &request(&case.labels, reference, &segs, &producer))
        .expect("a non-Latin-1 ROI name is written");
    assert_dciodvfy_clean(&out);
    let Some(python) = require_python(&["pydicom"]) else {
        return;
    };
    let o = Command::new(python)
        .args([
            "-c",
            "import sys, json, pydicom; ds = pydicom.dcmread(sys.argv[1]); \
             print(json.dumps([ds.SpecificCharacterSet, ds.StructureSetROISequence[0].ROIName, str(ds.PatientName)]))",
        ])
        .arg(&out)
        .output()
        .expect("run pydicom");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        read,
        serde_json::json!(["ISO_IR 192", "Milz (脾臓)", "Phantom^Abdomen"])
    );
}
