//! Real-world input through the binary users install (`support::shipped`): every committed
//! transfer syntax imports, and each class of bad input the readers once mishandled (found on
//! files other software wrote and on mutated files) is refused with exit 2 and a message that
//! names the file and the field — or, where the README says so, read with a warning. No
//! crash, no allocation sized by an unchecked header, no silent garbage.

use crate::support::{shipped, tempdir, testdata};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::open_file;
use sdseg_volume::io::nifti::read_nifti;
use sdseg_volume::io::{read_volume, ReadOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Exit code, stderr and peak resident memory (MiB) of one run of the shipped binary.
///
/// `ru_maxrss` of a process also counts the image it was exec'd from, and this test binary
/// holds whatever other tests loaded (models: GBs). So a fresh copy of this test binary, which
/// runs only [`measure_trampoline`], spawns the shipped binary, reaps it with `wait4` and
/// reports its exit status and peak RSS.
fn run_measured(args: &[&std::ffi::OsStr]) -> (i32, String, u64) {
    use std::os::unix::ffi::OsStrExt;
    let argv: Vec<String> = std::iter::once(shipped::binary().as_os_str())
        .chain(args.iter().copied())
        .map(|a| a.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "real_world::measure_trampoline",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(TRAMPOLINE_ARGV, argv.join(","))
        .stdin(Stdio::null())
        .output()
        .expect("start the measuring copy of the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SDSEG_MEASURED ").map(|(_, m)| m.trim()))
        .unwrap_or_else(|| panic!("no measurement from the trampoline:\n{stdout}\n{err}"));
    let v: Vec<i64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    let (exited, code, signal, rss_kib) = (v[0] == 1, v[1], v[2], v[3]);
    assert!(
        exited,
        "the shipped binary died by signal {signal} on {args:?}; stderr:\n{err}"
    );
    (code as i32, err, rss_kib as u64 / 1024)
}

/// Where [`run_measured`] passes the command to [`measure_trampoline`] (hex bytes per
/// argument, comma-separated).
const TRAMPOLINE_ARGV: &str = "SDSEG_MEASURE_ARGV";

/// Not a test: the measuring half of [`run_measured`], run in a fresh copy of this binary.
#[test]
#[ignore = "a helper that run_measured runs in a fresh copy of the test binary"]
// The child is reaped by wait4 (which also gives its peak RSS), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn measure_trampoline() {
    let Ok(spec) = std::env::var(TRAMPOLINE_ARGV) else {
        return;
    };
    use std::os::unix::ffi::OsStringExt;
    let argv: Vec<std::ffi::OsString> = spec
        .split(',')
        .map(|hex| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            std::ffi::OsString::from_vec(bytes)
        })
        .collect();
    // stderr is inherited: it reaches run_measured through this process's stderr.
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the shipped binary");
    let mut status = 0i32;
    // SAFETY: an all-zero rusage is a valid value; wait4 writes it for our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for the child spawned above; the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let exited = libc::WIFEXITED(status);
    println!(
        "SDSEG_MEASURED {} {} {} {}",
        exited as i32,
        if exited {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        if exited { 0 } else { libc::WTERMSIG(status) },
        usage.ru_maxrss
    );
}

fn import(input: &Path, out: &Path) -> (i32, String, u64) {
    run_measured(&[
        "import".as_ref(),
        input.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

/// Import must refuse `input` (exit 2) with a message containing every one of `needles`.
fn assert_refused(input: &Path, needles: &[&str]) -> String {
    let tmp = tempdir();
    let out = tmp.path().join("out.nii.gz");
    let (code, err, rss) = import(input, &out);
    assert_eq!(
        code,
        2,
        "expected exit 2 for {}; stderr:\n{err}",
        input.display()
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!out.exists(), "an output was written for a refused input");
    assert!(rss < 256, "peak RSS {rss} MiB refusing a small input");
    err
}

/// A copy of the 6-slice uncompressed test series in a temp folder.
fn series_copy() -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempdir();
    let mut files = Vec::new();
    for i in 1..=6 {
        let name = format!("IM000{i}.dcm");
        let dst = tmp.path().join(&name);
        std::fs::copy(testdata("dicom-syntaxes/explicit-le").join(&name), &dst).unwrap();
        files.push(dst);
    }
    (tmp, files)
}

fn put(file: &Path, tag: Tag, vr: VR, value: PrimitiveValue) {
    let mut obj = open_file(file).unwrap();
    obj.put(DataElement::new(tag, vr, value));
    obj.write_to_file(file).unwrap();
}

const ROWS: Tag = Tag(0x0028, 0x0010);
const COLUMNS: Tag = Tag(0x0028, 0x0011);
const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
const BITS_STORED: Tag = Tag(0x0028, 0x0101);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const PIXEL_SPACING: Tag = Tag(0x0028, 0x0030);
const IMAGE_POSITION: Tag = Tag(0x0020, 0x0032);

// ---------------------------------------------------------------------------------------
// Every committed transfer syntax, through the shipped binary.

#[test]
fn shipped_binary_imports_every_committed_syntax() {
    let reference =
        read_volume(&testdata("dicom-syntaxes/explicit-le"), &Default::default()).unwrap();
    let tmp = tempdir();
    for (dir, tol) in [
        ("explicit-le", 0.0),
        ("signed", 0.0),
        ("jpeg-lossless-sv1", 0.0),
        ("signed-jpeg-lossless-sv1", 0.0),
        ("jpegls-lossless", 0.0),
        ("rle", 0.0),
        ("j2k-lossless", 0.0),
        ("signed-j2k-lossless", 0.0),
        ("j2k-lossy", 600.0),
        ("jpeg-extended-12bit", 40.0),
        ("jpeg-extended-12bit-dcmdjpeg", 40.0),
    ] {
        let out = tmp.path().join(format!("{dir}.nii.gz"));
        let input = testdata(&format!("dicom-syntaxes/{dir}"));
        let (code, err, rss) = import(&input, &out);
        assert_eq!(code, 0, "{dir}: exit {code}\n{err}");
        assert!(rss < 256, "{dir}: peak RSS {rss} MiB");
        let v = read_nifti(&out).unwrap();
        assert_eq!(v.shape(), reference.shape(), "{dir}");
        assert!(v.affine().max_abs_diff(reference.affine()) < 1e-4, "{dir}");
        let max = v
            .data()
            .iter()
            .zip(reference.data().iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max <= tol, "{dir}: differs from the original by {max} HU");
        let (code, err, _) = run_measured(&["inspect".as_ref(), input.as_os_str()]);
        assert_eq!(code, 0, "inspect {dir}: {err}");
    }
    // The 12-bit JPEG decode equals IJG libjpeg's (DCMTK dcmdjpeg) exactly.
    let ours = read_nifti(&tmp.path().join("jpeg-extended-12bit.nii.gz")).unwrap();
    let ijg = read_nifti(&tmp.path().join("jpeg-extended-12bit-dcmdjpeg.nii.gz")).unwrap();
    assert_eq!(ours.data(), ijg.data());
}

#[test]
fn shipped_binary_runs_every_committed_syntax() {
    // `run` with the bundled demo model: lossless syntaxes give the labels of the
    // uncompressed original exactly; lossy ones a label volume on the same grid.
    use sdseg_volume::io::nifti::read_labels;
    let tmp = tempdir();
    let run = |dir: &str| {
        let out = tmp.path().join(format!("{dir}.labels.nii.gz"));
        let input = testdata(&format!("dicom-syntaxes/{dir}"));
        let (code, err, _) = run_measured(&[
            "run".as_ref(),
            input.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--quiet".as_ref(),
        ]);
        assert_eq!(code, 0, "run {dir}: {err}");
        read_labels(&out).unwrap()
    };
    let (reference, affine, _) = run("explicit-le");
    for dir in [
        "signed",
        "jpeg-lossless-sv1",
        "signed-jpeg-lossless-sv1",
        "jpegls-lossless",
        "rle",
        "j2k-lossless",
        "signed-j2k-lossless",
    ] {
        let (labels, a, _) = run(dir);
        assert_eq!(
            labels, reference,
            "{dir}: labels differ from the original's"
        );
        assert!(a.max_abs_diff(&affine) < 1e-6, "{dir}");
    }
    for dir in ["j2k-lossy", "jpeg-extended-12bit"] {
        let (labels, a, _) = run(dir);
        assert_eq!(labels.shape(), reference.shape(), "{dir}");
        assert!(a.max_abs_diff(&affine) < 1e-6, "{dir}");
    }
}

// ---------------------------------------------------------------------------------------
// Sizes from headers are checked before anything is allocated.

#[test]
fn huge_rows_and_columns_are_refused_before_allocating() {
    let (dir, files) = series_copy();
    put(&files[2], ROWS, VR::US, PrimitiveValue::from(65535u16));
    put(&files[2], COLUMNS, VR::US, PrimitiveValue::from(65535u16));
    assert_refused(dir.path(), &["IM0003.dcm", "Pixel Data", "65535"]);
}

#[test]
fn huge_number_of_frames_is_refused_before_allocating() {
    let (dir, files) = series_copy();
    put(
        &files[0],
        NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("2147483647"),
    );
    assert_refused(dir.path(), &["IM0001.dcm", "NumberOfFrames 2147483647"]);
    // The multi-frame file alone: the same.
    assert_refused(&files[0], &["IM0001.dcm", "NumberOfFrames"]);
}

#[test]
fn a_declared_length_beyond_the_file_is_truncation_not_gigabytes() {
    // A 4 GB value length in a small file (as in pydicom's UN_sequence.dcm, which cost
    // 3.7 GB before being refused).
    let (dir, files) = series_copy();
    let mut bytes = std::fs::read(&files[3]).unwrap();
    // (0008,0008) ImageType CS: 2-byte length; make the (0008,103E) LO length huge instead
    // via an explicit UT element appended before the pixel data would need rewriting, so
    // patch the Pixel Data's 4-byte length, the last long-form length in the file.
    let pd = bytes
        .windows(8)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])
        .unwrap();
    bytes[pd + 8..pd + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    std::fs::write(&files[3], &bytes).unwrap();
    let err = assert_refused(dir.path(), &["IM0004.dcm", "truncated", "(7FE0,0010)"]);
    assert!(err.contains("belongs to series"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Invalid values are refused, naming the field.

#[test]
fn non_finite_rescale_values_are_refused() {
    for (tag, value, name) in [
        (RESCALE_SLOPE, "NaN", "RescaleSlope"),
        (RESCALE_SLOPE, "inf", "RescaleSlope"),
        (RESCALE_SLOPE, "1e400", "RescaleSlope"),
        (RESCALE_INTERCEPT, "NaN", "RescaleIntercept"),
        (RESCALE_INTERCEPT, "-1e999", "RescaleIntercept"),
    ] {
        let (dir, files) = series_copy();
        put(&files[1], tag, VR::DS, PrimitiveValue::from(value));
        assert_refused(dir.path(), &["IM0002.dcm", name, value]);
    }
}

#[test]
fn a_rescale_slope_of_zero_reads_unscaled_with_a_warning() {
    // dcm2niix's rule (and the NIfTI standard's for scl_slope): slope 0 = not rescaled.
    let (dir, files) = series_copy();
    for f in &files {
        put(f, RESCALE_SLOPE, VR::DS, PrimitiveValue::from("0"));
    }
    let out = dir.path().join("out.nii.gz");
    let (code, err, _) = import(dir.path(), &out);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("RescaleSlope (0028,1053) is 0"), "{err}");
    let v = read_nifti(&out).unwrap();
    let reference =
        read_volume(&testdata("dicom-syntaxes/explicit-le"), &Default::default()).unwrap();
    // Stored values, i.e. HU + 1024 for this series: not a constant volume.
    let max = v
        .data()
        .iter()
        .zip(reference.data().iter())
        .map(|(a, b)| (a - (b + 1024.0)).abs())
        .fold(0f32, f32::max);
    assert_eq!(max, 0.0);
}

#[test]
fn bits_stored_zero_is_refused() {
    let (dir, files) = series_copy();
    put(&files[5], BITS_STORED, VR::US, PrimitiveValue::from(0u16));
    assert_refused(dir.path(), &["IM0006.dcm", "BitsStored", "0"]);
}

#[test]
fn non_numeric_geometry_says_invalid_not_missing() {
    for (tag, name, value) in [
        (PIXEL_SPACING, "PixelSpacing", "abc\\1"),
        (IMAGE_POSITION, "ImagePositionPatient", "0\\zero\\1"),
    ] {
        let (dir, files) = series_copy();
        put(&files[4], tag, VR::DS, PrimitiveValue::from(value));
        let err = assert_refused(dir.path(), &["IM0005.dcm", name, "invalid value"]);
        assert!(!err.contains("missing"), "{err}");
    }
}

#[test]
fn non_finite_nifti_scaling_and_affines_are_refused() {
    use sdseg_volume::io::nifti::{write_volume, VolumeDtype};
    let v = read_volume(&testdata("dicom-syntaxes/explicit-le"), &Default::default()).unwrap();
    let tmp = tempdir();
    let good = tmp.path().join("good.nii");
    write_volume(&good, &v, VolumeDtype::I16).unwrap();
    let base = std::fs::read(&good).unwrap();
    let patch = |name: &str, edits: &[(usize, f32)], qform_only: bool| -> PathBuf {
        let mut b = base.clone();
        for &(off, val) in edits {
            b[off..off + 4].copy_from_slice(&val.to_le_bytes());
        }
        if qform_only {
            b[254..256].copy_from_slice(&0i16.to_le_bytes()); // sform_code 0
            b[252..254].copy_from_slice(&1i16.to_le_bytes()); // qform_code 1
        }
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    // scl_slope (112) 3e38 on int16 data: every |value| > 1 overflows float32.
    assert_refused(
        &patch("scl.nii", &[(112, 3e38), (116, 0.0)], false),
        &["scl.nii", "scl_slope", "finite"],
    );
    assert_refused(
        &patch("inter.nii", &[(112, 1.0), (116, -3e38), (112, 3e38)], false),
        &["inter.nii", "finite"],
    );
    // srow_z[3] (offset 312 + 12).
    assert_refused(
        &patch("srow.nii", &[(324, f32::INFINITY)], false),
        &["srow.nii", "srow_z[3]"],
    );
    // qoffset_x (268) with only a qform.
    assert_refused(
        &patch("qoff.nii", &[(268, f32::INFINITY)], true),
        &["qoff.nii", "qoffset_x"],
    );
}

#[test]
fn nifti_dimensions_beyond_the_data_are_refused_before_allocating() {
    use sdseg_volume::io::nifti::{write_volume, VolumeDtype};
    use std::io::Write;
    let v = read_volume(&testdata("dicom-syntaxes/explicit-le"), &Default::default()).unwrap();
    let tmp = tempdir();
    let good = tmp.path().join("good.nii");
    write_volume(&good, &v, VolumeDtype::I16).unwrap();
    let mut b = std::fs::read(&good).unwrap();
    for (i, d) in [30000i16, 30000, 30000].iter().enumerate() {
        b[42 + 2 * i..44 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    // 30000³ int16 voxels = 54 TB claimed by a ~2 KB file, plain and gzipped.
    let plain = tmp.path().join("huge.nii");
    std::fs::write(&plain, &b).unwrap();
    assert_refused(&plain, &["huge.nii", "truncated"]);
    let gz = tmp.path().join("huge.nii.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&b).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_refused(&gz, &["huge.nii.gz"]);
}

// ---------------------------------------------------------------------------------------
// 32-bit big-endian samples.

/// A minimal 2×2 CT slice with 32-bit unsigned samples, explicit VR little or big endian.
fn slice_32bit(big: bool, z: f64, sop: &str, values: [u32; 4]) -> Vec<u8> {
    fn el(out: &mut Vec<u8>, big: bool, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) {
        let u16b = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        out.extend(u16b(tag.0));
        out.extend(u16b(tag.1));
        out.extend(vr);
        if vr == b"OW" || vr == b"OB" {
            out.extend([0, 0]);
            out.extend(u32b(value.len() as u32));
        } else {
            out.extend(u16b(value.len() as u16));
        }
        out.extend(value);
    }
    fn padded(s: &str, pad: u8) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(pad);
        }
        v
    }
    let ts = if big {
        "1.2.840.10008.1.2.2"
    } else {
        "1.2.840.10008.1.2.1"
    };
    let mut meta = Vec::new();
    el(&mut meta, false, (2, 1), b"OB", &[0, 1]);
    el(
        &mut meta,
        false,
        (2, 2),
        b"UI",
        &padded("1.2.840.10008.5.1.4.1.1.2", 0),
    );
    el(&mut meta, false, (2, 3), b"UI", &padded(sop, 0));
    el(&mut meta, false, (2, 0x10), b"UI", &padded(ts, 0));
    let mut f = vec![0u8; 128];
    f.extend(b"DICM");
    el(
        &mut f,
        false,
        (2, 0),
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    );
    f.extend(meta);
    let us = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    el(
        &mut f,
        big,
        (8, 0x16),
        b"UI",
        &padded("1.2.840.10008.5.1.4.1.1.2", 0),
    );
    el(&mut f, big, (8, 0x18), b"UI", &padded(sop, 0));
    el(&mut f, big, (8, 0x60), b"CS", b"CT");
    el(&mut f, big, (0x20, 0x0E), b"UI", &padded("1.2.3.32", 0));
    el(
        &mut f,
        big,
        (0x20, 0x32),
        b"DS",
        &padded(&format!("0\\0\\{z}"), b' '),
    );
    el(&mut f, big, (0x20, 0x37), b"DS", b"1\\0\\0\\0\\1\\0 ");
    el(&mut f, big, (0x28, 0x02), b"US", &us(1));
    el(&mut f, big, (0x28, 0x04), b"CS", b"MONOCHROME2 ");
    el(&mut f, big, (0x28, 0x10), b"US", &us(2));
    el(&mut f, big, (0x28, 0x11), b"US", &us(2));
    el(&mut f, big, (0x28, 0x30), b"DS", b"1\\1 ");
    el(&mut f, big, (0x28, 0x100), b"US", &us(32));
    el(&mut f, big, (0x28, 0x101), b"US", &us(32));
    el(&mut f, big, (0x28, 0x102), b"US", &us(31));
    el(&mut f, big, (0x28, 0x103), b"US", &us(0));
    let px: Vec<u8> = values
        .iter()
        .flat_map(|v| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        })
        .collect();
    el(&mut f, big, (0x7FE0, 0x10), b"OW", &px);
    f
}

#[test]
fn big_endian_32_bit_samples_read_like_their_little_endian_twin() {
    // pydicom's rtdose_expb_1frame.dcm: bytes 00 13 0e e8 must read 1249000.
    let values = [1_249_000, 1, 65_536, 0xFFFF];
    let tmp = tempdir();
    let mut outs = Vec::new();
    for big in [false, true] {
        let dir = tmp.path().join(if big { "be" } else { "le" });
        std::fs::create_dir(&dir).unwrap();
        for (i, z) in [0.0, 1.0].into_iter().enumerate() {
            let sop = format!("1.2.3.32.{i}");
            std::fs::write(
                dir.join(format!("{i}.dcm")),
                slice_32bit(big, z, &sop, values),
            )
            .unwrap();
        }
        let out = tmp
            .path()
            .join(format!("{}.nii", if big { "be" } else { "le" }));
        let (code, err, _) = import(&dir, &out);
        assert_eq!(code, 0, "{err}");
        let v = read_nifti(&out).unwrap();
        assert_eq!(v.data()[[0, 0, 0]], 1_249_000.0, "big endian: {big}");
        assert_eq!(v.data()[[1, 0, 0]], 1.0);
        assert_eq!(v.data()[[0, 1, 0]], 65_536.0);
        outs.push(v);
    }
    assert_eq!(outs[0].data(), outs[1].data());
}

// ---------------------------------------------------------------------------------------
// No slice of the chosen series is dropped.

#[test]
fn a_truncated_member_of_the_series_is_an_error_naming_it() {
    let len = std::fs::metadata(testdata("dicom-syntaxes/explicit-le/IM0006.dcm"))
        .unwrap()
        .len() as usize;
    // Cut inside the pixel data, just after its header, and a few bytes short of the end.
    for keep in [len - 3, len - 1000, 1100] {
        let (dir, files) = series_copy();
        let bytes = std::fs::read(&files[5]).unwrap();
        std::fs::write(&files[5], &bytes[..keep]).unwrap();
        let err = assert_refused(dir.path(), &["IM0006.dcm", "truncated"]);
        assert!(err.contains("no slice is dropped silently"), "{err}");
    }
}

#[test]
fn a_truncated_file_of_another_series_is_skipped_with_a_warning() {
    let (dir, _) = series_copy();
    let other = std::fs::read(testdata("demo-ct/IM0001.dcm")).unwrap();
    std::fs::write(dir.path().join("other.dcm"), &other[..other.len() / 2]).unwrap();
    let out = dir.path().join("out.nii.gz");
    let (code, err, _) = import(dir.path(), &out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("damaged") && err.contains("other.dcm"),
        "{err}"
    );
    assert_eq!(read_nifti(&out).unwrap().shape()[2], 6);
}

#[test]
fn a_compressed_stream_cut_short_inside_a_well_formed_file_is_an_error() {
    // The file's structure is intact; the RLE segments inside the fragment are not (the RLE
    // decoder of dicom-rs panicked here). Same for a JPEG-LS and a 12-bit JPEG stream.
    use dicom_core::value::{PixelFragmentSequence, Value};
    for (dir, name) in [
        ("rle", "IM0003.dcm"),
        ("jpegls-lossless", "IM0003.dcm"),
        ("jpeg-extended-12bit", "IM0003.dcm"),
        ("j2k-lossless", "IM0003.dcm"),
    ] {
        let tmp = tempdir();
        for e in std::fs::read_dir(testdata(&format!("dicom-syntaxes/{dir}"))).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let f = tmp.path().join(name);
        let mut obj = open_file(&f).unwrap();
        let pd = Tag(0x7FE0, 0x0010);
        let frag = match obj.element(pd).unwrap().value() {
            Value::PixelSequence(seq) => seq.fragments()[0].clone(),
            _ => panic!("{dir}: not encapsulated"),
        };
        let cut = frag[..(frag.len() / 2) & !1].to_vec();
        obj.put(DataElement::new(
            pd,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![cut])),
        ));
        obj.write_to_file(&f).unwrap();
        assert_refused(tmp.path(), &[name, "cannot decode"]);
    }
}

// ---------------------------------------------------------------------------------------
// Messages that say what is wrong.

#[test]
fn nifti_pairs_are_named_as_unsupported() {
    let tmp = tempdir();
    let hdr = tmp.path().join("brain.hdr");
    let mut h = vec![0u8; 348];
    h[..4].copy_from_slice(&348i32.to_le_bytes());
    h[344..348].copy_from_slice(b"ni1\0");
    std::fs::write(&hdr, &h).unwrap();
    assert_refused(&hdr, &["brain.hdr", "pairs", "not supported"]);
    // The same header under another name.
    let renamed = tmp.path().join("brain.dat");
    std::fs::write(&renamed, &h).unwrap();
    assert_refused(&renamed, &["brain.dat", "pairs"]);
}

#[test]
fn a_single_truncated_file_says_truncated() {
    let tmp = tempdir();
    let f = tmp.path().join("cut.dcm");
    let bytes = std::fs::read(testdata("dicom-syntaxes/explicit-le/IM0001.dcm")).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let err = assert_refused(&f, &["cut.dcm", "truncated"]);
    assert!(!err.contains("not DICOM"), "{err}");
}

#[test]
fn the_library_reads_what_the_binary_reads() {
    // The in-process reader and the shipped binary agree on a compressed series.
    let dir = testdata("dicom-syntaxes/j2k-lossless");
    let lib = read_volume(&dir, &ReadOptions::default()).unwrap();
    let tmp = tempdir();
    let out = tmp.path().join("x.nii");
    let (code, err, _) = import(&dir, &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read_nifti(&out).unwrap().data(), lib.data());
}
