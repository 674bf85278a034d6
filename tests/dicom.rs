//! DICOM series reading on series the phantom writer makes: ordering, geometry, rescale,
//! transfer syntaxes, series choice, bad input. CLI tests run the real binary.

use ndarray::Array3;
use sdseg_volume::geometry::Affine;
use sdseg_volume::io::dicom::{read_dicom, scan, DicomError, SeriesStatus};
use sdseg_volume::io::ReadOptions;
use sdseg_volume::phantom::{
    abdomen_phantom, write_dicom_series, DicomWriteOptions, FrameLayout, InstanceOrder,
    PhantomParams, WriteSyntax,
};
use sdseg_volume::volume::{Provenance, Source, StoredType, Volume};
use sdseg_volume::AxCodes;
use std::path::{Path, PathBuf};
use std::process::Command;

fn phantom(shape: [usize; 3], seed: u64) -> Volume {
    abdomen_phantom(&PhantomParams::new(shape), seed).volume
}

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

/// A volume with a different affine but the same voxels.
fn with_affine(v: &Volume, a: Affine) -> Volume {
    Volume::new(v.data().clone(), a, Provenance::synthetic()).unwrap()
}

#[test]
fn round_trip_plain_axial() {
    let v = phantom([40, 40, 12], 1);
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
