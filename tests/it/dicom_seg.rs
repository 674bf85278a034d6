//! The DICOM-SEG writer (`io::derived::seg`) against tools nobody here wrote: `dciodvfy`
//! (dicom3tools) must report no error, and highdicom and pydicom-seg must read every segment
//! back equal, voxel for voxel, to the label volume — placed by geometry on the source series
//! (dicom_seg.py says how). Sources: the bundled demo series (single-frame files), and phantom
//! series written as one enhanced multi-frame file, oblique, and feet-first. Also the file
//! read back here (bits, frames, references), refusals, and atomic writes.

use ndarray::Array3;
use sdseg_volume::io::derived::seg::{write_dicom_seg, SEGMENTATION_STORAGE};
use sdseg_volume::io::derived::{
    Code, DerivedError, DerivedRequest, Producer, SegmentSpec, Timestamp,
};
use sdseg_volume::io::{read_volume, ReadOptions};
use sdseg_volume::phantom::{write_dicom_series, DicomWriteOptions, FrameLayout, InstanceOrder};
use sdseg_volume::volume::{SeriesReference, Source, Volume};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::python::{require_dciodvfy, require_pydicom_seg, require_python};
use crate::support::volume::{rotated, with_affine};
use crate::support::{repo, tempdir, testdata};

/// A source series read back, with labels on its grid.
struct Case {
    /// What the tools read as the source: the series folder, or the multi-frame file.
    source: PathBuf,
    reference: SeriesReference,
    labels: Array3<u16>,
    /// The labels as NIfTI on the series' grid (what `run` writes beside the DICOM outputs).
    labels_nifti: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn reference_of(volume: &Volume) -> SeriesReference {
    match &volume.provenance().source {
        Source::Dicom(d) => d.reference.clone(),
        other => panic!("expected a DICOM source, got {other:?}"),
    }
}

/// The bundled demo series with the phantom labels it was made with.
fn demo_case() -> Case {
    let source = testdata("demo-ct");
    let volume = read_volume(&source, &ReadOptions::default()).expect("read the demo series");
    let labels_nifti = testdata("demo-ct-labels.nii.gz");
    let (labels, affine, _) =
        sdseg_volume::io::nifti::read_labels(&labels_nifti).expect("read the demo labels");
    assert_eq!(labels.shape(), volume.shape(), "labels on the series grid");
    assert!(affine.max_abs_diff(volume.affine()) < 1e-4);
    Case {
        source,
        reference: reference_of(&volume),
        labels,
        labels_nifti,
        _dir: None,
    }
}

/// A phantom written as a DICOM series with `opts`, read back; its labels on the read grid.
fn phantom_case(volume: Volume, labels: Array3<u16>, opts: &DicomWriteOptions) -> Case {
    let dir = tempdir();
    let series = dir.path().join("series");
    let files = write_dicom_series(&volume, &series, opts).expect("write the series");
    let source = match opts.layout {
        FrameLayout::MultiFrame => files[0].clone(),
        FrameLayout::SingleFrame => series.clone(),
    };
    let read = read_volume(&source, &ReadOptions::default()).expect("read the series back");
    assert_eq!(read.shape(), volume.shape());
    let d = read.affine().max_abs_diff(volume.affine());
    assert!(
        d < 1e-4,
        "the series reads back on the phantom's grid (affine off by {d})"
    );
    let labels_nifti = dir.path().join("labels.nii.gz");
    sdseg_volume::io::nifti::write_labels(&labels_nifti, &labels, &read).expect("write labels");
    Case {
        source,
        reference: reference_of(&read),
        labels,
        labels_nifti,
        _dir: Some(dir),
    }
}

/// The abdomen phantom of `shape` (odd Rows × Columns: frames are not byte-aligned).
fn phantom_with_labels(shape: [usize; 3], seed: u64) -> (Volume, Array3<u16>) {
    let p = sdseg_volume::phantom::abdomen_phantom(
        &sdseg_volume::phantom::PhantomParams::new(shape),
        seed,
    );
    (p.volume, p.labels)
}

/// SNOMED CT codes of the phantom organs (BTCV label ids), with a right/left modifier for the
/// kidneys.
fn spec(label: u16) -> SegmentSpec {
    let sct = |v: &str, m: &str| Code::new("SCT", v, m);
    let (name, property, modifier, color) = match label {
        1 => ("spleen", sct("78961009", "Spleen"), None, [157, 108, 162]),
        2 => (
            "right kidney",
            sct("64033007", "Kidney"),
            Some(sct("24028007", "Right")),
            [185, 102, 83],
        ),
        3 => (
            "left kidney",
            sct("64033007", "Kidney"),
            Some(sct("7771000", "Left")),
            [185, 102, 83],
        ),
        6 => ("liver", sct("10200004", "Liver"), None, [221, 130, 101]),
        8 => ("aorta", sct("15825003", "Aorta"), None, [224, 97, 76]),
        other => panic!("no code for label {other} in this test"),
    };
    SegmentSpec {
        label,
        name: name.into(),
        color,
        category: sct("123037004", "Anatomical Structure"),
        property_type: property,
        modifier,
    }
}

/// Every label present in `labels`, as segments.
fn present_segments(labels: &Array3<u16>) -> Vec<SegmentSpec> {
    let mut present: Vec<u16> = labels.iter().copied().filter(|&v| v != 0).collect();
    present.sort_unstable();
    present.dedup();
    present.into_iter().map(spec).collect()
}

fn producer() -> Producer {
    Producer {
        manufacturer: "sdseg-volume".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        algorithm_name: "SDSeg sdseg-demo (weights 0123456789ab)".into(),
        algorithm_version: "0123456789ab".into(),
    }
}

fn write(
    path: &Path,
    case: &Case,
    reference: &SeriesReference,
    segments: &[SegmentSpec],
) -> Result<(), DerivedError> {
    let producer = producer();
    let req = DerivedRequest {
        labels: case.labels.view(),
        reference,
        segments,
        producer: &producer,
        series_description: "SDSeg demo segmentation".into(),
        series_number: 300,
        created: Timestamp {
            unix_seconds: 1_796_658_298,
        },
    };
    write_dicom_seg(path, &req)
}

/// Writes `case` with its present labels as segments (plus `extra`), at `dir/seg.dcm`.
fn write_case(case: &Case, dir: &Path, extra: &[SegmentSpec]) -> (PathBuf, Vec<SegmentSpec>) {
    let mut segments = present_segments(&case.labels);
    segments.extend_from_slice(extra);
    let path = dir.join("seg.dcm");
    write(&path, case, &case.reference, &segments).expect("write the DICOM-SEG");
    (path, segments)
}

/// dciodvfy's report on `path`, printed; fails on any line that starts with "Error".
fn assert_dciodvfy_clean(path: &Path) {
    let Some(dciodvfy) = require_dciodvfy() else {
        return;
    };
    let out = Command::new(dciodvfy)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run dciodvfy");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("dciodvfy {}:\n{report}", path.display());
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.is_empty(),
        "dciodvfy reports errors for {}:\n{}",
        path.display(),
        errors.join("\n")
    );
    assert!(
        report.contains("Segmentation"),
        "dciodvfy did not recognise a Segmentation IOD:\n{report}"
    );
}

/// Runs dicom_seg.py `mode` with `python` and returns its JSON report.
fn read_with(
    python: &Path,
    mode: &str,
    seg: &Path,
    case: &Case,
    segments: &[SegmentSpec],
) -> Value {
    let map: serde_json::Map<String, Value> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| ((i + 1).to_string(), Value::from(s.label)))
        .collect();
    let out = Command::new(python)
        .arg(repo().join("tests/it/dicom_seg.py"))
        .arg(mode)
        .arg(seg)
        .arg(&case.source)
        .arg(&case.labels_nifti)
        .arg(Value::Object(map).to_string())
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "dicom_seg.py {mode} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dicom_seg.py output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every segment read back equals its label's voxels, and the combined map equals the labels.
fn assert_matches(report: &Value, case: &Case, segments: &[SegmentSpec]) {
    println!("{report}");
    let n_slices = case.reference.slices.len() as u64;
    assert_eq!(report["source_frames"].as_u64(), Some(n_slices), "{report}");
    assert_eq!(report["labels_cover_source"], Value::Bool(true), "{report}");
    let index_error = report["index_error"].as_f64().unwrap();
    assert!(
        index_error < 1e-3,
        "points map to voxel indices {index_error} off an integer"
    );
    for (i, s) in segments.iter().enumerate() {
        let r = &report["segments"][(i + 1).to_string()];
        let voxels = case.labels.iter().filter(|&&v| v == s.label).count() as u64;
        assert_eq!(
            r["expected"].as_u64(),
            Some(voxels),
            "segment {} ({}): {r}",
            i + 1,
            s.name
        );
        assert_eq!(
            r["read"].as_u64(),
            Some(voxels),
            "segment {} ({}): {r}",
            i + 1,
            s.name
        );
        assert_eq!(
            r["mismatched"].as_u64(),
            Some(0),
            "segment {} ({}): {r}",
            i + 1,
            s.name
        );
    }
    assert_eq!(report["combined_mismatched"].as_u64(), Some(0), "{report}");
}

/// dciodvfy, highdicom and pydicom-seg on the DICOM-SEG of `case`.
fn check_with_tools(case: &Case) {
    let dir = tempdir();
    let (seg, segments) = write_case(case, dir.path(), &[]);
    assert!(segments.len() >= 2, "the case has several labels");
    assert_dciodvfy_clean(&seg);
    if let Some(python) = require_python(&["highdicom", "nibabel", "numpy"]) {
        let report = read_with(&python, "highdicom", &seg, case, &segments);
        assert_matches(&report, case, &segments);
        assert_eq!(
            report["by_reference_mismatched"].as_u64(),
            Some(0),
            "{report}"
        );
    }
    if let Some(python) = require_pydicom_seg() {
        let report = read_with(&python, "pydicom-seg", &seg, case, &segments);
        assert_matches(&report, case, &segments);
    }
}

#[test]
fn demo_series_seg_is_valid_and_read_back_exactly() {
    check_with_tools(&demo_case());
}

#[test]
fn multi_frame_source_seg_is_valid_and_read_back_exactly() {
    let (volume, labels) = phantom_with_labels([45, 37, 11], 21);
    let case = phantom_case(
        volume,
        labels,
        &DicomWriteOptions {
            layout: FrameLayout::MultiFrame,
            seed: 21,
            ..Default::default()
        },
    );
    assert!(case
        .reference
        .slices
        .iter()
        .all(|s| s.frame_number.is_some()));
    check_with_tools(&case);
}

#[test]
fn oblique_source_seg_is_valid_and_read_back_exactly() {
    let (volume, labels) = phantom_with_labels([41, 39, 10], 22);
    let n = (1.0f64 / 3.0).sqrt();
    let volume = with_affine(&volume, rotated(volume.affine(), [n, -n, n], 31.0));
    let case = phantom_case(
        volume,
        labels,
        &DicomWriteOptions {
            seed: 22,
            ..Default::default()
        },
    );
    check_with_tools(&case);
}

#[test]
fn feet_first_source_seg_is_valid_and_read_back_exactly() {
    let (volume, labels) = phantom_with_labels([43, 35, 12], 23);
    let mut a = *volume.affine();
    a.0[0][0] = -a.0[0][0]; // rows run toward patient right
    a.0[2][2] = -a.0[2][2]; // slices run head → feet
    let volume = with_affine(&volume, a);
    let case = phantom_case(
        volume,
        labels,
        &DicomWriteOptions {
            seed: 23,
            patient_position: Some("FFS".into()),
            instance_order: InstanceOrder::Descending,
            shuffle_file_names: true,
            ..Default::default()
        },
    );
    check_with_tools(&case);
}

#[test]
fn requested_empty_segment_keeps_one_empty_frame_and_tools_accept_it() {
    let case = demo_case();
    // Label 4 is not in the demo labels: a segment the caller asked for anyway.
    let mut empty = spec(2);
    empty.label = 4;
    empty.name = "absent organ".into();
    let dir = tempdir();
    let (seg, segments) = write_case(&case, dir.path(), &[empty]);
    let obj = dicom_object::open_file(&seg).unwrap();
    let n = segments.len() as u16;
    let frames_of_last = frames(&obj).iter().filter(|f| f.segment == n).count();
    assert_eq!(frames_of_last, 1);
    assert_dciodvfy_clean(&seg);
    if let Some(python) = require_python(&["highdicom", "nibabel", "numpy"]) {
        let report = read_with(&python, "highdicom", &seg, &case, &segments);
        assert_matches(&report, &case, &segments);
    }
}

// ---------------------------------------------------------------------------------------
// The file read back here.

/// One frame as the file describes it.
struct FrameInfo {
    segment: u16,
    position: [f64; 3],
    source_uid: String,
    dimension_index: Vec<u32>,
}

fn text(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn items(
    obj: &dicom_object::InMemDicomObject,
    tag: dicom_core::Tag,
) -> &[dicom_object::InMemDicomObject] {
    obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .items()
        .unwrap_or_else(|| panic!("{tag} is not a sequence"))
}

fn frames(obj: &dicom_object::InMemDicomObject) -> Vec<FrameInfo> {
    use dicom_dictionary_std::tags;
    items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .iter()
        .map(|g| {
            let segment = items(g, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0]
                .element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int::<u16>()
                .unwrap();
            let p = items(g, tags::PLANE_POSITION_SEQUENCE)[0]
                .element(tags::IMAGE_POSITION_PATIENT)
                .unwrap()
                .to_multi_float64()
                .unwrap();
            let derivation = &items(g, tags::DERIVATION_IMAGE_SEQUENCE)[0];
            let source = &items(derivation, tags::SOURCE_IMAGE_SEQUENCE)[0];
            let dimension_index = items(g, tags::FRAME_CONTENT_SEQUENCE)[0]
                .element(tags::DIMENSION_INDEX_VALUES)
                .unwrap()
                .to_multi_int::<u32>()
                .unwrap();
            FrameInfo {
                segment,
                position: [p[0], p[1], p[2]],
                source_uid: text(source, tags::REFERENCED_SOP_INSTANCE_UID),
                dimension_index,
            }
        })
        .collect()
}

#[test]
fn file_reads_back_here_bit_for_bit_with_its_references() {
    use dicom_dictionary_std::tags;
    let case = demo_case();
    let dir = tempdir();
    let (seg, segments) = write_case(&case, dir.path(), &[]);
    let obj = dicom_object::open_file(&seg).unwrap();
    let r = &case.reference;

    assert_eq!(
        obj.meta().media_storage_sop_class_uid(),
        SEGMENTATION_STORAGE
    );
    assert_eq!(text(&obj, tags::MODALITY), "SEG");
    assert_eq!(text(&obj, tags::SEGMENTATION_TYPE), "BINARY");
    assert_eq!(
        text(&obj, tags::STUDY_INSTANCE_UID),
        r.study_instance_uid.clone().unwrap()
    );
    assert_ne!(
        text(&obj, tags::SERIES_INSTANCE_UID),
        r.series_instance_uid.clone().unwrap()
    );
    assert!(text(&obj, tags::SOP_INSTANCE_UID).starts_with("2.25."));
    assert_eq!(
        text(&obj, tags::FRAME_OF_REFERENCE_UID),
        r.frame_of_reference_uids[0].clone().unwrap()
    );
    assert_eq!(text(&obj, tags::PATIENT_NAME), "Phantom^Abdomen");
    // Several segments share positions: not a "3D" organisation.
    assert!(obj.element(tags::DIMENSION_ORGANIZATION_TYPE).is_err());

    let seg_items = items(&obj, tags::SEGMENT_SEQUENCE);
    assert_eq!(seg_items.len(), segments.len());
    for (i, (item, spec)) in seg_items.iter().zip(&segments).enumerate() {
        assert_eq!(
            item.element(tags::SEGMENT_NUMBER)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            i as u16 + 1
        );
        assert_eq!(text(item, tags::SEGMENT_LABEL), spec.name);
        let property = &items(item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)[0];
        assert_eq!(text(property, tags::CODE_VALUE), spec.property_type.value);
        let modifier = property.element(tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE);
        assert_eq!(modifier.is_ok(), spec.modifier.is_some(), "{}", spec.name);
    }

    // ReferencedSeriesSequence: the source series, each instance once.
    let series = &items(&obj, tags::REFERENCED_SERIES_SEQUENCE)[0];
    assert_eq!(
        text(series, tags::SERIES_INSTANCE_UID),
        r.series_instance_uid.clone().unwrap()
    );
    let listed: Vec<String> = items(series, tags::REFERENCED_INSTANCE_SEQUENCE)
        .iter()
        .map(|i| text(i, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    let sources: Vec<String> = r
        .slices
        .iter()
        .map(|s| s.sop_instance_uid.clone().unwrap())
        .collect();
    assert_eq!(listed, sources);

    // Frames: segment, then position; each on its source slice; bits equal the labels.
    let rows = r.rows as usize;
    let columns = r.columns as usize;
    let frames = frames(&obj);
    let n_frames: usize = text(&obj, tags::NUMBER_OF_FRAMES).parse().unwrap();
    assert_eq!(frames.len(), n_frames);
    let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(
        pixels.len(),
        (n_frames * rows * columns).div_ceil(8).next_multiple_of(2)
    );
    let mut read_back = Array3::<u16>::zeros(case.labels.raw_dim());
    let mut previous = (0u16, f64::NEG_INFINITY);
    for (f, frame) in frames.iter().enumerate() {
        let k = r
            .slices
            .iter()
            .position(|s| {
                s.position
                    .iter()
                    .zip(&frame.position)
                    .all(|(a, b)| (a - b).abs() < 1e-4)
            })
            .expect("a frame at a source slice's position");
        assert_eq!(
            frame.source_uid, sources[k],
            "frame {f} names its source slice"
        );
        assert_eq!(frame.dimension_index[0], u32::from(frame.segment));
        let z = frame.position[2]; // the demo is axial: z orders the slices
        assert!(
            (frame.segment, z) > previous,
            "frames ordered by segment, then position"
        );
        previous = (frame.segment, z);
        let label = segments[usize::from(frame.segment) - 1].label;
        let mut any = false;
        for row in 0..rows {
            for column in 0..columns {
                let bit = f * rows * columns + row * columns + column;
                if pixels[bit / 8] >> (bit % 8) & 1 == 1 {
                    assert_eq!(read_back[[column, row, k]], 0, "segments overlap");
                    read_back[[column, row, k]] = label;
                    any = true;
                }
            }
        }
        assert!(any, "frame {f} is empty: empty frames are left out");
    }
    assert_eq!(read_back, case.labels);
}

#[test]
fn same_labels_same_bytes_other_labels_other_uids() {
    use dicom_dictionary_std::tags;
    let mut case = demo_case();
    let dir = tempdir();
    let segments = present_segments(&case.labels);
    let (a, b) = (dir.path().join("a.dcm"), dir.path().join("b.dcm"));
    write(&a, &case, &case.reference, &segments).unwrap();
    write(&b, &case, &case.reference, &segments).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let idx = case.labels.iter().position(|&v| v == 6).unwrap();
    *case.labels.iter_mut().nth(idx).unwrap() = 1;
    write(&b, &case, &case.reference, &segments).unwrap();
    let uid = |p: &Path| text(&dicom_object::open_file(p).unwrap(), tags::SOP_INSTANCE_UID);
    assert_ne!(uid(&a), uid(&b));
}

#[test]
fn single_segment_on_consecutive_slices_is_a_3d_organisation() {
    use dicom_dictionary_std::tags;
    let case = demo_case();
    let dir = tempdir();
    let path = dir.path().join("liver.dcm");
    write(&path, &case, &case.reference, &[spec(6)]).unwrap();
    let obj = dicom_object::open_file(&path).unwrap();
    assert_eq!(text(&obj, tags::DIMENSION_ORGANIZATION_TYPE), "3D");
    assert_dciodvfy_clean(&path);
}

#[test]
fn names_beyond_the_source_character_set_are_written_as_utf8() {
    let case = demo_case(); // SpecificCharacterSet ISO_IR 100
    let mut segments = present_segments(&case.labels);
    segments[0].name = "Milz (脾臓)".into();
    let dir = tempdir();
    let path = dir.path().join("seg.dcm");
    write(&path, &case, &case.reference, &segments).expect("write");
    assert_dciodvfy_clean(&path);
    let Some(python) = require_python(&["pydicom"]) else {
        return;
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, pydicom; ds = pydicom.dcmread(sys.argv[1]); \
             print(json.dumps([ds.SpecificCharacterSet, ds.SegmentSequence[0].SegmentLabel, str(ds.PatientName)]))",
        ])
        .arg(&path)
        .output()
        .expect("run pydicom");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        read,
        serde_json::json!(["ISO_IR 192", "Milz (脾臓)", "Phantom^Abdomen"])
    );
}

// ---------------------------------------------------------------------------------------
// Refusals and atomic writes.

/// `path` holds `before` (or nothing) and no temporary file is left beside it.
fn assert_untouched(path: &Path, before: Option<&[u8]>) {
    match before {
        Some(bytes) => assert_eq!(std::fs::read(path).unwrap(), bytes),
        None => assert!(!path.exists(), "{} was written", path.display()),
    }
    let dir = path.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

fn refused(case: &Case, reference: &SeriesReference, path: &Path) -> String {
    match write(path, case, reference, &present_segments(&case.labels)) {
        Err(e @ DerivedError::Reference { .. }) => e.to_string(),
        other => panic!("expected a reference refusal, got {other:?}"),
    }
}

#[test]
fn missing_sop_instance_uid_is_refused_and_nothing_is_written() {
    let case = demo_case();
    let dir = tempdir();
    let path = dir.path().join("seg.dcm");
    let mut reference = case.reference.clone();
    reference.slices[5].sop_instance_uid = None;
    let message = refused(&case, &reference, &path);
    assert!(
        message.contains("slice 5") && message.contains("SOPInstanceUID"),
        "{message}"
    );
    assert_untouched(&path, None);

    // An existing output stays as it was.
    std::fs::write(&path, b"previous output").unwrap();
    refused(&case, &reference, &path);
    assert_untouched(&path, Some(b"previous output"));
}

#[test]
fn mixed_frames_of_reference_are_refused_and_nothing_is_written() {
    let case = demo_case();
    let dir = tempdir();
    let path = dir.path().join("seg.dcm");
    let mut reference = case.reference.clone();
    reference.frame_of_reference_uids[3] = Some("1.2.3.4.5".into());
    let message = refused(&case, &reference, &path);
    assert!(message.contains("FrameOfReferenceUID"), "{message}");
    assert_untouched(&path, None);

    let mut reference = case.reference.clone();
    reference.series_instance_uid = None;
    let message = refused(&case, &reference, &path);
    assert!(message.contains("SeriesInstanceUID"), "{message}");
    assert_untouched(&path, None);
}

#[test]
fn a_failed_write_leaves_no_file() {
    let case = demo_case();
    let dir = tempdir();
    // The output path is a folder: the final rename fails after the bytes were written.
    let path = dir.path().join("seg.dcm");
    std::fs::create_dir(&path).unwrap();
    match write(
        &path,
        &case,
        &case.reference,
        &present_segments(&case.labels),
    ) {
        Err(DerivedError::Io { .. }) => {}
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(path.is_dir());
    assert_untouched(&path.join("x"), None);
    assert_untouched(&dir.path().join("x"), None);
    // A request that does not fit the grid is refused before any file exists.
    let wrong = Case {
        labels: Array3::zeros((3, 3, 3)),
        ..demo_case()
    };
    let path = dir.path().join("wrong.dcm");
    assert!(matches!(
        write(&path, &wrong, &wrong.reference, &[spec(1)]),
        Err(DerivedError::Request(_))
    ));
    assert_untouched(&path, None);
}
