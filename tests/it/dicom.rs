//! DICOM series reading on series the phantom writer makes: ordering, geometry, rescale,
//! transfer syntaxes, series choice, bad input. CLI tests run the real binary.

use ndarray::Array3;
use sdseg_volume::io::dicom::{read_dicom, scan, DicomError, SeriesStatus};
use sdseg_volume::io::ReadOptions;
use sdseg_volume::phantom::{
    abdomen_phantom, write_dicom_series, DicomWriteOptions, FrameLayout, InstanceOrder,
    PhantomParams, WriteSyntax,
};
use sdseg_volume::volume::{Provenance, Source, StoredType, Volume};
use sdseg_volume::AxCodes;
use std::path::{Path, PathBuf};

use crate::support::volume::{phantom, rotated, with_affine};
use crate::support::{bin, tempdir, testdata};

fn opts() -> ReadOptions {
    ReadOptions::default()
}

fn write(v: &Volume, dir: &Path, o: &DicomWriteOptions) -> Vec<PathBuf> {
    write_dicom_series(v, dir, o).expect("write series")
}

/// The volume read back equals the one written: same voxels and affine, in the reader's
/// order (which for our writer is the volume's own order when k runs along the normal).
fn assert_same(read: &Volume, expected: &Volume, tol_hu: f32) {
    assert_eq!(read.shape(), expected.shape(), "shape");
    let d = read.affine().max_abs_diff(expected.affine());
    assert!(
        d < 1e-4,
        "affine differs by {d}:\n{}\nvs\n{}",
        read.affine(),
        expected.affine()
    );
    let max = read
        .data()
        .iter()
        .zip(expected.data().iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= tol_hu, "voxels differ by up to {max} HU");
}

#[test]
fn round_trip_plain_axial() {
    let v = phantom([40, 40, 12], 1);
    let dir = tempdir();
    let files = write(&v, dir.path(), &DicomWriteOptions::default());
    assert_eq!(files.len(), 12);
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    assert_eq!(r.axcodes(), AxCodes::LPS);
    let p = r.provenance();
    assert_eq!(p.stored_type, StoredType::U16);
    assert!(p.integral_i16);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    match &p.source {
        Source::Dicom(d) => {
            assert_eq!(d.files, files, "files listed in slice order");
            assert_eq!(d.modality.as_deref(), Some("CT"));
            assert_eq!(d.transfer_syntax, "1.2.840.10008.1.2.1");
        }
        other => panic!("source {other:?}"),
    }
}

#[test]
fn shuffled_names_and_instance_numbers_do_not_change_order() {
    let v = phantom([32, 32, 10], 2);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            shuffle_file_names: true,
            instance_order: InstanceOrder::Shuffled,
            seed: 11,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
}

// ---------------------------------------------------------------------------------------
// Geometry: oblique, feet-first, tilt, gaps, duplicates.

#[test]
fn oblique_orientation_keeps_affine() {
    let v = phantom([30, 34, 8], 3);
    let n = (1.0f64 / 3.0).sqrt();
    let v = with_affine(&v, rotated(v.affine(), [n, -n, n], 31.0));
    let dir = tempdir();
    write(&v, dir.path(), &DicomWriteOptions::default());
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
}

#[test]
fn feet_first_sorts_along_the_normal() {
    let v = phantom([32, 32, 9], 4);
    let mut a = *v.affine();
    a.0[0][0] = -a.0[0][0]; // rows run toward patient right (IOP row = -x in LPS)
    a.0[2][2] = -a.0[2][2]; // slices run head → feet
    let v = with_affine(&v, a);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            patient_position: Some("FFS".into()),
            instance_order: InstanceOrder::Descending,
            shuffle_file_names: true,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    assert_eq!(r.axcodes().to_string(), "RPI");
    // k ascends along the normal (row × col), which points to the feet here.
    assert!(r.affine().0[2][2] < 0.0);
}

#[test]
fn missing_slice_is_refused_then_accepted_with_allow_gaps() {
    let v = phantom([24, 24, 10], 5);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            omit_slices: vec![4],
            ..Default::default()
        },
    );
    let dz = v.spacing()[2];
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DicomError::Gaps { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--allow-gaps"), "{msg}");
    assert!(msg.contains(&format!("expected {dz:.3} mm")), "{msg}");
    assert!(
        msg.contains(&format!("{:.3} mm between slices", 2.0 * dz)),
        "{msg}"
    );
    assert!(msg.contains("1 slice(s) missing"), "{msg}");

    let r = read_dicom(
        dir.path(),
        &ReadOptions {
            allow_gaps: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        r.shape(),
        [24, 24, 9],
        "slices kept as they are, none inserted"
    );
    assert!((r.spacing()[2] - dz).abs() < 1e-6, "median spacing");
    assert!((r.affine().origin()[2] - v.affine().origin()[2]).abs() < 1e-6);
    let w = r.provenance().warnings.join("\n");
    assert!(
        w.contains("--allow-gaps") && w.contains("median spacing"),
        "{w}"
    );
    // Slices before the gap are exact, the ones after are the next written slices.
    assert_eq!(
        r.data().index_axis(ndarray::Axis(2), 3),
        v.data().index_axis(ndarray::Axis(2), 3)
    );
    assert_eq!(
        r.data().index_axis(ndarray::Axis(2), 4),
        v.data().index_axis(ndarray::Axis(2), 5)
    );
}

#[test]
fn duplicate_positions_are_refused() {
    let v = phantom([24, 24, 8], 6);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            duplicate_slices: vec![3],
            ..Default::default()
        },
    );
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(
        matches!(err, DicomError::DuplicatePositions { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("same position"), "{err}");
}

#[test]
fn gantry_tilt_is_refused_then_read_with_a_sheared_affine() {
    let v = phantom([24, 24, 8], 7);
    let mut a = *v.affine();
    // Each slice moves 0.35 × its spacing anteriorly: a ~19° tilt.
    a.0[1][2] = 0.35 * a.0[2][2];
    let v = with_affine(&v, a);
    let dir = tempdir();
    write(&v, dir.path(), &DicomWriteOptions::default());
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DicomError::Tilt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("--allow-tilt") && msg.contains("19.29°"),
        "{msg}"
    );
    let r = read_dicom(
        dir.path(),
        &ReadOptions {
            allow_tilt: true,
            ..opts()
        },
    )
    .unwrap();
    // Not resampled: voxels as written, affine follows the true slice positions.
    assert_same(&r, &v, 0.0);
    assert!(r.provenance().warnings.join(" ").contains("--allow-tilt"));
}

#[test]
fn mixed_sizes_and_orientations_are_refused() {
    let dir = tempdir();
    let a = phantom([24, 24, 6], 8);
    let o = DicomWriteOptions {
        series_uid: Some("1.2.3.4.5".into()),
        ..Default::default()
    };
    write(&a, dir.path(), &o);
    let mut b = phantom([20, 24, 6], 8);
    b = with_affine(&b, {
        let mut m = *b.affine();
        m.0[2][3] += 100.0;
        m
    });
    write(
        &b,
        dir.path(),
        &DicomWriteOptions {
            file_prefix: "B".into(),
            ..o.clone()
        },
    );
    // The only series is broken: its own error, not a generic "no volume".
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DicomError::MixedSizes { .. }), "{err}");
    let err = read_dicom(
        dir.path(),
        &ReadOptions {
            series: Some("1.2.3.4.5".into()),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DicomError::MixedSizes { .. }), "{err}");
    assert!(err.to_string().contains("24×24 (6 slices"), "{err}");

    let dir = tempdir();
    write(&a, dir.path(), &o);
    let c = with_affine(&a, {
        let mut m = rotated(a.affine(), [0.0, 0.0, 1.0], 10.0);
        m.0[2][3] += 100.0;
        m
    });
    write(
        &c,
        dir.path(),
        &DicomWriteOptions {
            file_prefix: "C".into(),
            ..o
        },
    );
    let err = read_dicom(
        dir.path(),
        &ReadOptions {
            series: Some("1.2.3.4.5".into()),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DicomError::MixedOrientation { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Series choice.

#[test]
fn two_series_and_a_localizer_in_one_folder() {
    let dir = tempdir();
    let big = phantom([32, 32, 14], 10);
    let small = phantom([28, 28, 9], 11);
    write(
        &big,
        dir.path(),
        &DicomWriteOptions {
            series_number: 3,
            file_prefix: "A".into(),
            ..Default::default()
        },
    );
    write(
        &small,
        &dir.path().join("sub"),
        &DicomWriteOptions {
            series_number: 4,
            file_prefix: "B".into(),
            ..Default::default()
        },
    );
    // A localizer with more images than either volume must still not be chosen.
    let scout = phantom([32, 32, 20], 12);
    write(
        &scout,
        dir.path(),
        &DicomWriteOptions {
            series_number: 1,
            file_prefix: "S".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "LOCALIZER".into()],
            ..Default::default()
        },
    );
    let rep = scan(dir.path(), &opts()).unwrap();
    assert_eq!(rep.series.len(), 3);
    let chosen: Vec<_> = rep
        .series
        .iter()
        .filter(|s| s.status == SeriesStatus::Chosen)
        .collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].slices, 14);
    assert_eq!(rep.chosen.as_deref(), Some(chosen[0].uid.as_str()));
    assert!(
        rep.choice.contains("most slices (14) of 2"),
        "{}",
        rep.choice
    );
    let scout_info = rep.series.iter().find(|s| s.slices == 20).unwrap();
    assert_eq!(scout_info.status, SeriesStatus::Skipped);
    assert!(
        scout_info.reason.contains("localizer"),
        "{}",
        scout_info.reason
    );
    let small_info = rep.series.iter().find(|s| s.slices == 9).unwrap();
    assert_eq!(small_info.status, SeriesStatus::Candidate);

    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &big, 0.0);
    let r = read_dicom(
        dir.path(),
        &ReadOptions {
            series: Some(small_info.uid.clone()),
            ..opts()
        },
    )
    .unwrap();
    assert_same(&r, &small, 0.0);
    let err = read_dicom(
        dir.path(),
        &ReadOptions {
            series: Some("9.9.9".into()),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DicomError::SeriesNotFound { .. }), "{err}");
    assert!(err.to_string().contains(&small_info.uid), "{err}");
}

#[test]
fn non_ct_series_needs_series_flag() {
    let v = phantom([20, 20, 6], 13);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            modality: "MR".into(),
            ..Default::default()
        },
    );
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DicomError::NoVolume { .. }), "{err}");
    assert!(err.to_string().contains("modality MR, not CT"), "{err}");
    let uid = scan(dir.path(), &opts()).unwrap().series[0].uid.clone();
    let r = read_dicom(
        dir.path(),
        &ReadOptions {
            series: Some(uid),
            ..opts()
        },
    )
    .unwrap();
    assert_same(&r, &v, 0.0);
}

// ---------------------------------------------------------------------------------------
// Files: junk, single-frame file, multi-frame file, zip, no meta header.

#[test]
fn junk_files_are_skipped_and_named() {
    let v = phantom([24, 20, 7], 14);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            junk_files: true,
            shuffle_file_names: true,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    let w = r.provenance().warnings.join("\n");
    for name in ["README.txt", ".DS_Store", "empty.dcm", "truncated.dcm"] {
        assert!(w.contains(name), "warning does not name {name}: {w}");
    }
    assert!(w.contains("skipped 3 file(s) that are not DICOM"), "{w}");
    // Truncated, but not a member of the series read: skipped with a warning.
    assert!(w.contains("skipped 1 damaged DICOM file(s)"), "{w}");
    assert!(w.contains("dose_report.dcm"), "{w}");
    let rep = scan(dir.path(), &opts()).unwrap();
    assert_eq!(rep.files_found, 7 + 5);
    assert_eq!(rep.skipped_files.len(), 5);
}

#[test]
fn empty_or_non_dicom_folder_is_an_error() {
    let dir = tempdir();
    std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
    let err = read_dicom(dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DicomError::NoImages { .. }), "{err}");
    assert!(err.to_string().contains("a.txt"), "{err}");
}

#[test]
fn single_frame_file_asks_for_its_folder() {
    let v = phantom([16, 16, 4], 15);
    let dir = tempdir();
    let files = write(&v, dir.path(), &DicomWriteOptions::default());
    let err = read_dicom(&files[0], &opts()).unwrap_err();
    assert!(matches!(err, DicomError::SingleFrameFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pass the folder") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn multi_frame_file_with_shuffled_frames() {
    let v = phantom([26, 22, 9], 16);
    let dir = tempdir();
    let files = write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            layout: FrameLayout::MultiFrame,
            instance_order: InstanceOrder::Shuffled,
            seed: 3,
            ..Default::default()
        },
    );
    assert_eq!(files.len(), 1);
    let r = read_dicom(&files[0], &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
}

#[test]
fn zip_of_a_folder() {
    use std::io::Write;
    let v = phantom([20, 20, 6], 17);
    let dir = tempdir();
    let series = dir.path().join("series");
    let files = write(
        &v,
        &series,
        &DicomWriteOptions {
            junk_files: true,
            ..Default::default()
        },
    );
    let zpath = dir.path().join("series.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&zpath).unwrap());
    let o = zip::write::SimpleFileOptions::default();
    for f in files.iter().rev() {
        z.start_file(
            format!("study/ct/{}", f.file_name().unwrap().to_string_lossy()),
            o,
        )
        .unwrap();
        z.write_all(&std::fs::read(f).unwrap()).unwrap();
    }
    z.start_file("study/README.txt", o).unwrap();
    z.write_all(b"not dicom").unwrap();
    z.finish().unwrap();
    let r = read_dicom(&zpath, &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    assert!(r.provenance().warnings.join(" ").contains("README.txt"));
}

#[test]
fn files_without_meta_header() {
    let v = phantom([20, 18, 5], 18);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            syntax: WriteSyntax::ImplicitLittle,
            without_meta: true,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    assert!(r
        .provenance()
        .warnings
        .join(" ")
        .contains("no DICOM file meta header"));
}

// ---------------------------------------------------------------------------------------
// Pixel values: rescale, signed storage, transfer syntaxes.

#[test]
fn signed_storage_with_slope_half() {
    let v = phantom([30, 20, 5], 19);
    let dir = tempdir();
    write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            signed: true,
            bits_stored: 16,
            rescale_slope: 0.5,
            rescale_intercept: -100.0,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    assert_eq!(r.provenance().stored_type, StoredType::I16);
    assert!(r.provenance().integral_i16);
}

#[test]
fn signed_twelve_bits_stored_and_fractional_hu() {
    // BitsStored 12 < BitsAllocated 16, negative stored values, slope 0.25 → quarter HU.
    let v = phantom([16, 16, 4], 20);
    let v = Volume::new(
        v.data().mapv(|x| (x / 4.0).round()),
        *v.affine(),
        Provenance::synthetic(),
    )
    .unwrap();
    let quarter = Volume::new(
        v.data().mapv(|x| x + 0.25),
        *v.affine(),
        Provenance::synthetic(),
    )
    .unwrap();
    let dir = tempdir();
    write(
        &quarter,
        dir.path(),
        &DicomWriteOptions {
            signed: true,
            bits_stored: 12,
            rescale_slope: 0.25,
            rescale_intercept: 0.0,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_same(&r, &quarter, 0.0);
    assert!(!r.provenance().integral_i16, "quarter HU are not integral");
    assert!(r.hu_range().0 < 0.0);
}

#[test]
fn lossless_syntaxes_written_here_decode_exactly() {
    let v = phantom([28, 20, 6], 21);
    for (syntax, layout) in [
        (WriteSyntax::ImplicitLittle, FrameLayout::SingleFrame),
        (WriteSyntax::ExplicitBig, FrameLayout::SingleFrame),
        (WriteSyntax::Deflated, FrameLayout::SingleFrame),
        (WriteSyntax::Rle, FrameLayout::SingleFrame),
        (WriteSyntax::Rle, FrameLayout::MultiFrame),
    ] {
        for signed in [false, true] {
            let dir = tempdir();
            let o = DicomWriteOptions {
                syntax,
                layout,
                signed,
                bits_stored: if signed { 16 } else { 12 },
                ..Default::default()
            };
            write(&v, dir.path(), &o);
            let r = read_dicom(dir.path(), &opts())
                .unwrap_or_else(|e| panic!("{syntax:?} {layout:?} signed={signed}: {e}"));
            assert_same(&r, &v, 0.0);
            match &r.provenance().source {
                Source::Dicom(d) => assert_eq!(d.transfer_syntax, syntax.uid()),
                _ => unreachable!(),
            }
        }
    }
}

#[test]
fn jpeg_baseline_eight_bit_is_close() {
    let v = phantom([32, 32, 4], 22);
    // 8-bit storage with slope 16: HU on a 16 HU grid within [-1024, 3056].
    let q = v
        .data()
        .mapv(|x| (x.clamp(-1024.0, 3056.0) / 16.0).round() * 16.0);
    let q = Volume::new(q, *v.affine(), Provenance::synthetic()).unwrap();
    let dir = tempdir();
    write(
        &q,
        dir.path(),
        &DicomWriteOptions {
            syntax: WriteSyntax::JpegBaseline,
            bits_stored: 8,
            rescale_slope: 16.0,
            rescale_intercept: -1024.0,
            ..Default::default()
        },
    );
    let r = read_dicom(dir.path(), &opts()).unwrap();
    assert_eq!(r.provenance().stored_type, StoredType::U8);
    assert_same(&r, &q, 16.0 * 40.0);
    let mean_err = r
        .data()
        .iter()
        .zip(q.data().iter())
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / q.data().len() as f32;
    assert!(mean_err < 16.0 * 3.0, "mean error {mean_err}");
}

#[test]
fn committed_compressed_series_decode() {
    // Made by testdata/dicom-syntaxes/make.py (GDCM) from explicit-le / signed.
    let reference = read_dicom(&testdata("dicom-syntaxes/explicit-le"), &opts()).unwrap();
    let signed = read_dicom(&testdata("dicom-syntaxes/signed"), &opts()).unwrap();
    assert_same(&signed, &reference, 0.0);
    assert_eq!(signed.provenance().stored_type, StoredType::I16);
    for (dir, uid) in [
        ("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70"),
        ("rle", "1.2.840.10008.1.2.5"),
        ("j2k-lossless", "1.2.840.10008.1.2.4.90"),
        ("signed-j2k-lossless", "1.2.840.10008.1.2.4.90"),
        ("signed-jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70"),
    ] {
        let r = read_dicom(&testdata(&format!("dicom-syntaxes/{dir}")), &opts())
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        match &r.provenance().source {
            Source::Dicom(d) => assert_eq!(d.transfer_syntax, uid, "{dir}"),
            _ => unreachable!(),
        }
        assert_same(&r, &reference, 0.0);
    }
    let lossy = read_dicom(&testdata("dicom-syntaxes/j2k-lossy"), &opts()).unwrap();
    assert_same(&lossy, &reference, 600.0);
    let diff: Vec<f32> = lossy
        .data()
        .iter()
        .zip(reference.data().iter())
        .map(|(a, b)| (a - b).abs())
        .collect();
    let mean = diff.iter().sum::<f32>() / diff.len() as f32;
    assert!(mean > 0.0 && mean < 80.0, "J2K lossy mean error {mean}");
}

#[test]
fn jpeg_ls_decodes_without_extra_tools() {
    // Our own JPEG-LS decoder (src/io/dicom/codec/jpegls.rs): no CharLS, no cmake.
    let r = read_dicom(&testdata("dicom-syntaxes/jpegls-lossless"), &opts()).unwrap();
    let reference = read_dicom(&testdata("dicom-syntaxes/explicit-le"), &opts()).unwrap();
    assert_same(&r, &reference, 0.0);
}

#[test]
fn demo_series_reads() {
    let r = read_dicom(&testdata("demo-ct"), &opts()).unwrap();
    assert_eq!(r.shape(), [64, 64, 24]);
    assert_eq!(r.axcodes(), AxCodes::LPS);
    let (lo, hi) = r.hu_range();
    assert!(lo <= -1000.0 && hi >= 500.0, "{lo}..{hi}");
}

// ---------------------------------------------------------------------------------------
// The real binary: exit codes and messages.

#[test]
fn cli_inspect_json_and_series_flag() {
    let dir = tempdir();
    let a = phantom([24, 24, 8], 30);
    let b = phantom([20, 20, 5], 31);
    write(
        &a,
        dir.path(),
        &DicomWriteOptions {
            series_number: 5,
            file_prefix: "A".into(),
            ..Default::default()
        },
    );
    write(
        &b,
        dir.path(),
        &DicomWriteOptions {
            series_number: 6,
            file_prefix: "B".into(),
            ..Default::default()
        },
    );
    let out = bin()
        .arg("inspect")
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kind"], "dicom");
    assert_eq!(j["volume"]["shape"], serde_json::json!([24, 24, 8]));
    assert_eq!(j["volume"]["axcodes"], "LPS");
    assert_eq!(j["scan"]["series"].as_array().unwrap().len(), 2);
    assert_eq!(j["scan"]["series"][0]["status"], "chosen");
    assert_eq!(j["scan"]["series"][1]["status"], "candidate");
    assert!(j["error"].is_null());
    let other = j["scan"]["series"][1]["uid"].as_str().unwrap().to_string();

    let out = bin()
        .arg("inspect")
        .arg(dir.path())
        .args(["--series", &other])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Size: 20 × 20 × 5"), "{text}");
    assert!(text.contains("requested with --series"), "{text}");
    assert!(text.contains("Orientation: LPS"), "{text}");

    let out = bin()
        .arg("inspect")
        .arg(dir.path())
        .args(["--series", "1.2.3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no series with id 1.2.3"));
}

#[test]
fn cli_exit_2_on_bad_input() {
    let v = phantom([16, 16, 6], 32);
    let dir = tempdir();
    let files = write(
        &v,
        dir.path(),
        &DicomWriteOptions {
            omit_slices: vec![2],
            ..Default::default()
        },
    );

    let out = bin().arg("inspect").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not uniform") && err.contains("--allow-gaps"),
        "{err}"
    );
    let out = bin()
        .arg("inspect")
        .arg(dir.path())
        .arg("--allow-gaps")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Warnings:"));

    let out = bin().arg("inspect").arg(&files[0]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass the folder"));

    let out = bin()
        .arg("inspect")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cli_unsupported_syntax_is_named() {
    // A file whose meta header claims MPEG-2: parses, but the pixel data cannot be decoded.
    let v = phantom([16, 16, 3], 33);
    let dir = tempdir();
    let files = write(&v, dir.path(), &DicomWriteOptions::default());
    for f in &files {
        let mut obj = dicom_object::open_file(f).unwrap();
        obj.update_meta(|m| m.transfer_syntax = "1.2.840.10008.1.2.4.100\0".into());
        obj.write_to_file(f).unwrap();
    }
    let out = bin().arg("inspect").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1.2.840.10008.1.2.4.100") && err.contains("MPEG2"),
        "{err}"
    );
}

#[test]
fn cli_phantom_writes_a_readable_series() {
    let dir = tempdir();
    let out_dir = dir.path().join("ph");
    let out = bin()
        .args([
            "phantom", "--size", "20x16x6", "--seed", "4", "--syntax", "rle", "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_dicom(&out_dir, &opts()).unwrap();
    let expected = abdomen_phantom(&PhantomParams::new([20, 16, 6]), 4).volume;
    assert_same(&r, &expected, 0.0);
    // Refuses to write into a non-empty folder.
    let out = bin()
        .args(["phantom", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reader_is_used_by_read_volume() {
    let v = phantom([16, 16, 4], 34);
    let dir = tempdir();
    write(&v, dir.path(), &DicomWriteOptions::default());
    let r = sdseg_volume::io::read_volume(dir.path(), &opts()).unwrap();
    assert_same(&r, &v, 0.0);
    let _ = Array3::<f32>::zeros((1, 1, 1));
}

#[test]
fn cli_phantom_nifti_and_labels() {
    let dir = tempdir();
    let out_dir = dir.path().join("ph");
    let out = bin()
        .args([
            "phantom", "--format", "nifti", "--size", "20x18x5", "--seed", "6", "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = abdomen_phantom(&PhantomParams::new([20, 18, 5]), 6);
    let v = sdseg_volume::io::nifti::read_nifti(&out_dir.join("phantom.nii.gz")).unwrap();
    assert_same(&v, &expected.volume, 0.0);
    let (labels, affine, _) =
        sdseg_volume::io::nifti::read_labels(&out_dir.join("labels.nii.gz")).unwrap();
    assert_eq!(labels, expected.labels);
    assert!(affine.max_abs_diff(expected.volume.affine()) < 1e-4);
}

#[test]
fn labels_written_for_a_dicom_input_keep_its_grid() {
    // DICOM → Volume → label NIfTI → read back: same shape and affine as the DICOM volume.
    let ph = abdomen_phantom(&PhantomParams::new([22, 26, 7]), 35);
    let n = (0.5f64).sqrt();
    let v = with_affine(&ph.volume, rotated(ph.volume.affine(), [n, 0.0, n], 17.0));
    let dir = tempdir();
    write(&v, &dir.path().join("ct"), &DicomWriteOptions::default());
    let r = read_dicom(&dir.path().join("ct"), &opts()).unwrap();
    let out = dir.path().join("labels.nii.gz");
    sdseg_volume::io::nifti::write_labels(&out, &ph.labels, &r).unwrap();
    let (labels, affine, _) = sdseg_volume::io::nifti::read_labels(&out).unwrap();
    assert_eq!(labels, ph.labels);
    assert!(
        affine.max_abs_diff(r.affine()) < 1e-4,
        "{affine}\nvs\n{}",
        r.affine()
    );
}

#[test]
fn twelve_bit_jpeg_extended_matches_ijg_libjpeg() {
    // 1.2.840.10008.1.2.4.51, 12-bit (DCMTK `dcmcjpeg +ee`), decoded by our own decoder; the
    // reference is DCMTK's `dcmdjpeg` (IJG libjpeg 6b) of the same files, which we must match
    // sample for sample. Against the lossless original it is within the lossy error.
    let r = read_dicom(&testdata("dicom-syntaxes/jpeg-extended-12bit"), &opts()).unwrap();
    let ijg = read_dicom(
        &testdata("dicom-syntaxes/jpeg-extended-12bit-dcmdjpeg"),
        &opts(),
    )
    .unwrap();
    assert_same(&r, &ijg, 0.0);
    let original = read_dicom(&testdata("dicom-syntaxes/explicit-le"), &opts()).unwrap();
    assert_same(&r, &original, 40.0);
}
