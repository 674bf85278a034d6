//! NIfTI reading and writing, on files this test writes byte by byte (no NIfTI library is used
//! to make inputs, so the reader is checked against the format, not against itself).
//!
//! Reading: every datatype in both byte orders, `.nii` and `.nii.gz`, extensions before
//! `vox_offset`, scl_slope/scl_inter (slope 0 and NaN = none), trailing singleton dims, the
//! sform > qform (qfac −1) > pixdim rule, and the errors (truncation, sizeof_hdr, dims,
//! datatype, vox_offset, magic) with exit code 2 through the binary.
//! Writing: label uint8/uint16 switch, geometry (codes and matrices kept for NIfTI input,
//! code 1 from the affine otherwise), atomicity, `write_volume` dtype choice, `import`.

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use ndarray::{Array3, ShapeBuilder};
use sdseg_volume::io::nifti::{
    read_header, read_labels, read_nifti, write_labels, write_labels_on, write_volume,
    AffineSource, Grid, NiftiError, VolumeDtype,
};
use sdseg_volume::volume::StoredType;
use sdseg_volume::{Affine, AxCodes, Provenance, Volume};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::support::{bin, tempdir};

// === A NIfTI-1 header written field by field ===

#[derive(Clone)]
struct Hdr {
    b: [u8; 352],
    big: bool,
}

impl Hdr {
    /// 3D, float32, pixdim 1, vox_offset 352, no scaling, both xform codes 0.
    fn new(big: bool, dims: &[i16]) -> Hdr {
        let mut h = Hdr { b: [0; 352], big };
        h.i32(0, 348);
        h.dims(dims);
        h.datatype(16, 32);
        h.pixdim([1.0, 1.0, 1.0, 1.0]);
        h.f32(108, 352.0);
        h.b[344..348].copy_from_slice(b"n+1\0");
        h
    }
    fn put(&mut self, off: usize, le: &[u8]) {
        let mut v = le.to_vec();
        if self.big {
            v.reverse();
        }
        self.b[off..off + v.len()].copy_from_slice(&v);
    }
    fn i16(&mut self, off: usize, v: i16) {
        self.put(off, &v.to_le_bytes());
    }
    fn i32(&mut self, off: usize, v: i32) {
        self.put(off, &v.to_le_bytes());
    }
    fn f32(&mut self, off: usize, v: f32) {
        self.put(off, &v.to_le_bytes());
    }
    fn dims(&mut self, d: &[i16]) {
        let mut all = [1i16; 8];
        all[0] = d.len() as i16;
        all[1..=d.len()].copy_from_slice(d);
        for (i, v) in all.iter().enumerate() {
            self.i16(40 + 2 * i, *v);
        }
    }
    fn raw_dim(&mut self, dim: [i16; 8]) {
        for (i, v) in dim.iter().enumerate() {
            self.i16(40 + 2 * i, *v);
        }
    }
    fn datatype(&mut self, code: i16, bitpix: i16) {
        self.i16(70, code);
        self.i16(72, bitpix);
    }
    /// pixdim[0..=3]: qfac and the three zooms.
    fn pixdim(&mut self, p: [f32; 4]) {
        for (i, v) in p.iter().enumerate() {
            self.f32(76 + 4 * i, *v);
        }
    }
    fn scl(&mut self, slope: f32, inter: f32) {
        self.f32(112, slope);
        self.f32(116, inter);
    }
    fn sform(&mut self, code: i16, rows: [[f32; 4]; 3]) {
        self.i16(254, code);
        for (r, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                self.f32(280 + 16 * r + 4 * c, *v);
            }
        }
    }
    fn qform(&mut self, code: i16, bcd: [f32; 3], offset: [f32; 3]) {
        self.i16(252, code);
        for (i, v) in bcd.iter().chain(offset.iter()).enumerate() {
            self.f32(256 + 4 * i, *v);
        }
    }
}

/// Write header, optional extension bytes (after the 4-byte flag) and voxel bytes.
fn write_file(path: &Path, h: &Hdr, ext: &[u8], data: &[u8]) {
    let mut bytes = h.b.to_vec();
    if !ext.is_empty() {
        bytes[348] = 1;
    }
    bytes.extend_from_slice(ext);
    bytes.extend_from_slice(data);
    let out = if path.to_string_lossy().ends_with(".gz") {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        e.finish().unwrap()
    } else {
        bytes
    };
    std::fs::write(path, out).unwrap();
}

/// The file's bytes, decompressed if gzip.
fn file_bytes(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        GzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        raw
    }
}

fn le_i16(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}
fn le_f32(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Fortran-order (i fastest) voxel values for a `shape`, from `f(i, j, k)`.
fn fortran_values<T>(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> T) -> Vec<T> {
    let mut v = Vec::with_capacity(shape.iter().product());
    for k in 0..shape[2] {
        for j in 0..shape[1] {
            for i in 0..shape[0] {
                v.push(f(i, j, k));
            }
        }
    }
    v
}

const SHAPE: [usize; 3] = [3, 4, 5];
const DIMS: [i16; 3] = [3, 4, 5];

// === Reading: datatypes and byte orders ===

macro_rules! datatype_case {
    ($name:ident, $t:ty, $code:expr, $stored:expr, $value:expr) => {
        #[test]
        fn $name() {
            let dir = tempdir();
            for big in [false, true] {
                for ext in ["nii", "nii.gz"] {
                    let vals: Vec<$t> = fortran_values(SHAPE, $value);
                    let mut data = vec![];
                    for v in &vals {
                        if big {
                            data.extend_from_slice(&v.to_be_bytes());
                        } else {
                            data.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                    let mut h = Hdr::new(big, &DIMS);
                    h.datatype($code, (std::mem::size_of::<$t>() * 8) as i16);
                    let p = dir
                        .path()
                        .join(format!("{}_{big}.{ext}", stringify!($name)));
                    write_file(&p, &h, &[], &data);
                    let v = read_nifti(&p).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(v.shape(), SHAPE);
                    assert_eq!(v.provenance().stored_type, $stored);
                    let want = Array3::from_shape_vec(
                        (SHAPE[0], SHAPE[1], SHAPE[2]).f(),
                        vals.iter().map(|&x| x as f64 as f32).collect(),
                    )
                    .unwrap();
                    assert_eq!(v.data(), &want, "{} big={big} {ext}", stringify!($t));
                }
            }
        }
    };
}

// Each includes the type's extremes so byte order and sign handling are exercised.
datatype_case!(
    reads_uint8,
    u8,
    2,
    StoredType::U8,
    |i, j, k| if i + j + k == 0 {
        255
    } else {
        (i + 3 * j + 12 * k) as u8
    }
);
datatype_case!(
    reads_int8,
    i8,
    256,
    StoredType::I8,
    |i, j, k| if i + j + k == 0 {
        -128
    } else {
        (i + 3 * j + 12 * k) as i8 - 30
    }
);
datatype_case!(
    reads_int16,
    i16,
    4,
    StoredType::I16,
    |i, j, k| match (i, j, k) {
        (0, 0, 0) => i16::MIN,
        (2, 3, 4) => i16::MAX,
        _ => (i as i16 + 3 * j as i16 + 12 * k as i16) * 37 - 1024,
    }
);
datatype_case!(
    reads_uint16,
    u16,
    512,
    StoredType::U16,
    |i, j, k| if i + j + k == 0 {
        u16::MAX
    } else {
        (i + 3 * j + 12 * k) as u16 * 300
    }
);
datatype_case!(
    reads_int32,
    i32,
    8,
    StoredType::I32,
    |i, j, k| if i + j + k == 0 {
        -100_000
    } else {
        (i + 3 * j + 12 * k) as i32 * 1001 - 5000
    }
);
datatype_case!(
    reads_uint32,
    u32,
    768,
    StoredType::U32,
    |i, j, k| if i + j + k == 0 {
        70_000
    } else {
        (i + 3 * j + 12 * k) as u32 * 7
    }
);
datatype_case!(reads_float32, f32, 16, StoredType::F32, |i, j, k| (i
    as f32)
    * 0.25
    - (j as f32) * 1.5
    + (k as f32) * 1000.125);
datatype_case!(reads_float64, f64, 64, StoredType::F64, |i, j, k| (i
    as f64)
    * 0.5
    - (j as f64) * 3.25
    + (k as f64) * 1e3);

fn i16_file(dir: &Path, name: &str, h: &Hdr, ext: &[u8]) -> (PathBuf, Vec<i16>) {
    let vals: Vec<i16> = fortran_values(SHAPE, |i, j, k| (i + 3 * j + 12 * k) as i16 * 3 - 50);
    let data: Vec<u8> = vals
        .iter()
        .flat_map(|v| {
            if h.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        })
        .collect();
    let p = dir.join(name);
    write_file(&p, h, ext, &data);
    (p, vals)
}

fn int16_header(big: bool) -> Hdr {
    let mut h = Hdr::new(big, &DIMS);
    h.datatype(4, 16);
    h
}

#[test]
fn skips_extensions_to_vox_offset() {
    let dir = tempdir();
    for (big, name) in [(false, "ext.nii"), (true, "ext.nii.gz")] {
        let mut h = int16_header(big);
        // One 48-byte comment extension (esize, ecode, 40 bytes of text): data at 352 + 48.
        let mut ext = vec![];
        let (esize, ecode) = (48i32, 6i32);
        if big {
            ext.extend_from_slice(&esize.to_be_bytes());
            ext.extend_from_slice(&ecode.to_be_bytes());
        } else {
            ext.extend_from_slice(&esize.to_le_bytes());
            ext.extend_from_slice(&ecode.to_le_bytes());
        }
        ext.extend_from_slice(&[b'x'; 40]);
        h.f32(108, 400.0);
        let (p, vals) = i16_file(dir.path(), name, &h, &ext);
        let v = read_nifti(&p).unwrap();
        let got: Vec<f32> = v.data().t().iter().copied().collect();
        let want: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
        // `.t()` iterates k slowest, i fastest: the file order.
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn applies_scl_slope_and_inter() {
    let dir = tempdir();
    type Case = (f32, f32, fn(f32) -> f32, bool);
    let cases: [Case; 5] = [
        (0.5, -1024.0, |x| x * 0.5 - 1024.0, false), // odd raw values give .5
        (0.0, 55.0, |x| x, true),                    // slope 0: no scaling at all
        (f32::NAN, 7.0, |x| x, true),                // slope NaN: no scaling
        (1.0, 0.0, |x| x, true),
        (2.0, -1024.0, |x| x * 2.0 - 1024.0, true),
    ];
    for (n, (slope, inter, f, integral)) in cases.into_iter().enumerate() {
        let mut h = int16_header(n % 2 == 1);
        h.scl(slope, inter);
        let (p, vals) = i16_file(dir.path(), &format!("scl{n}.nii"), &h, &[]);
        let v = read_nifti(&p).unwrap();
        let got: Vec<f32> = v.data().t().iter().copied().collect();
        let want: Vec<f32> = vals.iter().map(|&x| f(x as f32)).collect();
        assert_eq!(got, want, "slope {slope} inter {inter}");
        assert_eq!(v.provenance().integral_i16, integral, "slope {slope}");
    }
    // A finite slope with a non-finite intercept is refused, as nibabel does.
    let mut h = int16_header(false);
    h.scl(2.0, f32::INFINITY);
    let (p, _) = i16_file(dir.path(), "badscl.nii", &h, &[]);
    assert!(matches!(read_nifti(&p), Err(NiftiError::BadScaling { .. })));
}

#[test]
fn trailing_singleton_dims_are_dropped_and_4d_is_refused() {
    let dir = tempdir();
    for dims in [&[3i16, 4, 5, 1][..], &[3, 4, 5, 1, 1, 1, 1]] {
        let mut h = Hdr::new(false, dims);
        h.datatype(4, 16);
        let (p, _) = i16_file(dir.path(), &format!("d{}.nii", dims.len()), &h, &[]);
        assert_eq!(read_nifti(&p).unwrap().shape(), SHAPE);
    }
    let mut h = Hdr::new(false, &[3, 4, 5, 2]);
    h.datatype(4, 16);
    let (p, _) = i16_file(dir.path(), "4d.nii", &h, &[]);
    let e = read_nifti(&p).unwrap_err();
    assert!(matches!(e, NiftiError::NotThreeD { .. }), "{e}");
    assert!(e.to_string().contains("dim[4] = 2"), "{e}");
}

// === Reading: the affine rule ===

fn assert_affine(got: &Affine, want: [[f64; 4]; 3], tol: f64) {
    let want = Affine([want[0], want[1], want[2], [0.0, 0.0, 0.0, 1.0]]);
    assert!(
        got.max_abs_diff(&want) <= tol,
        "affine\n{got}\nexpected\n{want}"
    );
}

#[test]
fn qform_only_with_qfac_minus_one() {
    let dir = tempdir();
    let mut h = int16_header(true);
    // 90° about z: a = cos 45°, d = sin 45°; qfac -1 flips k.
    let s = std::f32::consts::FRAC_1_SQRT_2;
    h.qform(1, [0.0, 0.0, s], [10.0, -20.0, 30.5]);
    h.pixdim([-1.0, 0.5, 0.6, 2.0]);
    let (p, _) = i16_file(dir.path(), "q.nii", &h, &[]);
    let v = read_nifti(&p).unwrap();
    // R = [[0,-1,0],[1,0,0],[0,0,1]] times diag(0.5, 0.6, -2).
    assert_affine(
        v.affine(),
        [
            [0.0, -0.6, 0.0, 10.0],
            [0.5, 0.0, 0.0, -20.0],
            [0.0, 0.0, -2.0, 30.5],
        ],
        1e-6,
    );
    let (_, info) = read_header(&p).unwrap();
    assert_eq!(info.affine_source, AffineSource::Qform);
    assert!(info.big_endian);
}

#[test]
fn pixdim_only_uses_nibabels_base_affine() {
    let dir = tempdir();
    let mut h = Hdr::new(false, &[4, 5, 6]);
    h.datatype(2, 8);
    h.pixdim([1.0, 2.0, 3.0, 4.0]);
    let p = dir.path().join("base.nii");
    write_file(&p, &h, &[], &[7u8; 120]);
    let v = read_nifti(&p).unwrap();
    // nibabel: Nifti1Header with shape (4,5,6), zooms (2,3,4): get_base_affine().
    assert_affine(
        v.affine(),
        [
            [-2.0, 0.0, 0.0, 3.0],
            [0.0, 3.0, 0.0, -6.0],
            [0.0, 0.0, 4.0, -10.0],
        ],
        0.0,
    );
    assert_eq!(v.axcodes().to_string(), "LAS");
}

fn oblique_sform() -> [[f32; 4]; 3] {
    [
        [-0.7, 0.05, 0.0, 120.0],
        [0.05, 0.7, 0.1, -30.0],
        [0.0, -0.1, 2.5, 55.0],
    ]
}

#[test]
fn sform_wins_over_qform_and_invalid_codes_count_as_zero() {
    let dir = tempdir();
    let mut h = int16_header(false);
    h.sform(2, oblique_sform());
    h.qform(1, [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]);
    let (p, _) = i16_file(dir.path(), "s.nii", &h, &[]);
    let v = read_nifti(&p).unwrap();
    let want = oblique_sform().map(|r| r.map(|x| x as f64));
    assert_affine(v.affine(), want, 0.0);

    // sform_code 9 is not a NIfTI code: nibabel resets it to 0, so the qform is used.
    h.sform(9, oblique_sform());
    let (p, _) = i16_file(dir.path(), "s9.nii", &h, &[]);
    let v = read_nifti(&p).unwrap();
    assert_affine(
        v.affine(),
        [
            [1.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0, 2.0],
            [0.0, 0.0, 1.0, 3.0],
        ],
        1e-7,
    );
    assert!(
        v.provenance()
            .warnings
            .iter()
            .any(|w| w.contains("sform_code 9")),
        "{:?}",
        v.provenance().warnings
    );
}

// === Reading: errors ===

fn expect_err(p: &Path, what: &str, check: impl Fn(&NiftiError) -> bool) {
    let e = read_nifti(p).expect_err(what);
    assert!(check(&e), "{what}: wrong error kind: {e:?}");
    assert!(e.is_input_error(), "{what}");
    let msg = e.to_string();
    assert!(msg.contains(&p.display().to_string()), "{what}: {msg}");
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let dir = tempdir();
    let d = dir.path();
    let (good, _) = i16_file(d, "good.nii", &int16_header(false), &[]);
    let bytes = std::fs::read(&good).unwrap();

    let p = d.join("cut_data.nii");
    std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
    expect_err(&p, "truncated data", |e| {
        matches!(
            e,
            NiftiError::Truncated {
                what: "voxel data",
                ..
            }
        )
    });

    let p = d.join("cut_header.nii");
    std::fs::write(&p, &bytes[..100]).unwrap();
    expect_err(&p, "truncated header", |e| {
        matches!(
            e,
            NiftiError::Truncated {
                what: "header",
                got: 100,
                ..
            }
        )
    });

    // A gzip stream cut in the middle.
    let p = d.join("cut.nii.gz");
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&bytes).unwrap();
    let gz = enc.finish().unwrap();
    std::fs::write(&p, &gz[..gz.len() - 12]).unwrap();
    expect_err(&p, "truncated gzip", |e| {
        matches!(e, NiftiError::Truncated { .. } | NiftiError::Gzip { .. })
    });

    let mut h = int16_header(false);
    h.i32(0, 349);
    let (p, _) = i16_file(d, "sizeof.nii", &h, &[]);
    expect_err(&p, "bad sizeof_hdr", |e| {
        matches!(e, NiftiError::BadSizeofHdr { got: 349, .. })
    });

    for (n, dim) in [
        [0i16, 3, 4, 5, 1, 1, 1, 1],
        [3, 3, 0, 5, 1, 1, 1, 1],
        [3, -3, 4, 5, 1, 1, 1, 1],
        [9, 3, 4, 5, 1, 1, 1, 1],
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = int16_header(n % 2 == 0);
        h.raw_dim(dim);
        let (p, _) = i16_file(d, &format!("dims{n}.nii"), &h, &[]);
        expect_err(&p, "bad dims", |e| matches!(e, NiftiError::BadDims { .. }));
    }

    for code in [32i16, 128, 1024, 7] {
        let mut h = int16_header(false);
        h.datatype(code, 16);
        let (p, _) = i16_file(d, &format!("dt{code}.nii"), &h, &[]);
        expect_err(
            &p,
            "datatype",
            |e| matches!(e, NiftiError::UnsupportedDatatype { code: c, .. } if *c == code),
        );
    }

    for vo in [0.0f32, 200.0] {
        let mut h = int16_header(false);
        h.f32(108, vo);
        let (p, _) = i16_file(d, &format!("vo{vo}.nii"), &h, &[]);
        expect_err(&p, "vox_offset", |e| {
            matches!(e, NiftiError::BadVoxOffset { .. })
        });
    }

    let mut h = int16_header(false);
    h.b[344..348].copy_from_slice(b"ni1\0");
    let (p, _) = i16_file(d, "pair.nii", &h, &[]);
    expect_err(&p, "magic", |e| matches!(e, NiftiError::BadMagic { .. }));

    let mut h = int16_header(false);
    h.sform(1, [[0.0; 4]; 3]);
    let (p, _) = i16_file(d, "singular.nii", &h, &[]);
    expect_err(&p, "singular sform", |e| {
        matches!(e, NiftiError::BadTransform { .. })
    });

    expect_err(&d.join("missing.nii"), "missing file", |e| {
        matches!(e, NiftiError::Io { .. })
    });
}

#[test]
fn binary_exits_2_on_bad_nifti_and_writes_nothing() {
    let dir = tempdir();
    let (good, _) = i16_file(dir.path(), "good.nii", &int16_header(false), &[]);
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("cut.nii");
    std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
    let mut h = int16_header(false);
    h.i32(0, 1234);
    let (bad_hdr, _) = i16_file(dir.path(), "hdr.nii", &h, &[]);
    for (input, word) in [(&bad, "truncated"), (&bad_hdr, "sizeof_hdr")] {
        let out = dir.path().join("out.nii.gz");
        let o = bin()
            .args(["import"])
            .arg(input)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&input.display().to_string()), "{stderr}");
        assert!(stderr.contains(word), "{stderr}");
        assert!(!out.exists());
    }
}

// === Labels ===

#[test]
fn read_labels_checks_values() {
    let dir = tempdir();
    let d = dir.path();
    // uint8 with slope 2: labels are the scaled values.
    let mut h = Hdr::new(false, &DIMS);
    h.datatype(2, 8);
    h.scl(2.0, 0.0);
    let vals: Vec<u8> = fortran_values(SHAPE, |i, j, _| (i + j) as u8);
    let p = d.join("l.nii.gz");
    write_file(&p, &h, &[], &vals);
    let (labels, _, src) = read_labels(&p).unwrap();
    assert_eq!(labels[[2, 3, 0]], 10);
    assert_eq!(src.header.datatype, 2);

    let cases: [(i16, f64, &str); 4] = [
        (4, -1.0, "negative"),
        (16, 1.5, "not an integer"),
        (8, 70000.0, "above 65535"),
        (64, f64::NAN, "not a number"),
    ];
    for (code, bad, reason) in cases {
        let mut h = Hdr::new(false, &DIMS);
        let size = match code {
            4 => 2,
            16 | 8 => 4,
            _ => 8,
        };
        h.datatype(code, size * 8);
        let mut data = vec![];
        for n in 0..60usize {
            let v = if n == 17 { bad } else { (n % 5) as f64 };
            match code {
                4 => data.extend_from_slice(&(v as i16).to_le_bytes()),
                16 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                8 => data.extend_from_slice(&(v as i32).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        let p = d.join(format!("bad{code}.nii"));
        write_file(&p, &h, &[], &data);
        match read_labels(&p) {
            Err(NiftiError::BadLabel {
                index, reason: r, ..
            }) => {
                // flat index 17 in a 3×4×5 grid: i = 2, j = 1, k = 1.
                assert_eq!(index, [2, 1, 1]);
                assert_eq!(r, reason);
            }
            other => panic!("{code}: {other:?}"),
        }
    }
}

fn oblique_affine() -> Affine {
    Affine([
        [-0.7, 0.05, 0.0, 120.0],
        [0.05, 0.7, 0.1, -30.0],
        [0.0, -0.1, 2.5, 55.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
}

fn synthetic(shape: [usize; 3], affine: Affine) -> Volume {
    let data = Array3::from_shape_fn(shape, |(i, j, k)| (i + 10 * j + 100 * k) as f32 - 1000.0);
    Volume::new(data, affine, Provenance::synthetic()).unwrap()
}

fn labels_for(shape: [usize; 3], max: u16) -> Array3<u16> {
    Array3::from_shape_fn(shape, |(i, j, k)| {
        if (i, j, k) == (1, 2, 3) {
            max
        } else {
            ((i + j + k) % 4) as u16
        }
    })
}

#[test]
fn label_writer_picks_uint8_or_uint16() {
    let dir = tempdir();
    let like = synthetic(SHAPE, oblique_affine());
    for (max, code, bitpix) in [(255u16, 2i16, 8i16), (256, 512, 16), (65535, 512, 16)] {
        let p = dir.path().join(format!("lab{max}.nii.gz"));
        let labels = labels_for(SHAPE, max);
        write_labels(&p, &labels, &like).unwrap();
        let b = file_bytes(&p);
        assert_eq!(le_i16(&b, 70), code, "datatype for max {max}");
        assert_eq!(le_i16(&b, 72), bitpix);
        assert_eq!(le_i16(&b, 68), 1002, "intent label");
        assert_eq!(le_f32(&b, 124), max as f32, "cal_max");
        assert_eq!(b.len(), 352 + 60 * (bitpix as usize / 8));
        let (back, affine, _) = read_labels(&p).unwrap();
        assert_eq!(back, labels);
        assert!(affine.max_abs_diff(like.affine()) < 1e-5);
    }
}

#[test]
fn labels_for_synthetic_input_get_scanner_sform_and_qform() {
    let dir = tempdir();
    // Left-handed (k towards inferior) and tilted 10° about x, like a DICOM series in RAS.
    let (s, c) = 10f64.to_radians().sin_cos();
    let affine = Affine([
        [-0.7, 0.0, 0.0, 170.0],
        [0.0, -0.7 * c, -2.5 * s, 200.0],
        [0.0, 0.7 * s, -2.5 * c, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    let like = synthetic(SHAPE, affine);
    let p = dir.path().join("syn.nii");
    write_labels(&p, &labels_for(SHAPE, 3), &like).unwrap();
    let b = file_bytes(&p);
    assert_eq!(&b[0..4], &348i32.to_le_bytes());
    assert_eq!(
        (le_i16(&b, 252), le_i16(&b, 254)),
        (1, 1),
        "qform/sform codes"
    );
    for r in 0..3 {
        for c in 0..4 {
            assert_eq!(le_f32(&b, 280 + 16 * r + 4 * c), affine.0[r][c] as f32);
        }
    }
    let spacing = affine.spacing();
    for (a, s) in spacing.iter().enumerate() {
        assert!((le_f32(&b, 80 + 4 * a) as f64 - s).abs() < 1e-6);
    }
    assert_eq!(le_f32(&b, 76), -1.0, "qfac of a left-handed grid");
    // The qform alone (sform code cleared) must give the same grid: a qform-only reread.
    let mut only_q = b.clone();
    only_q[254..256].copy_from_slice(&0i16.to_le_bytes());
    let q = dir.path().join("only_q.nii");
    std::fs::write(&q, &only_q).unwrap();
    let (_, info) = read_header(&q).unwrap();
    assert_eq!(info.affine_source, AffineSource::Qform);
    assert!(info.affine.max_abs_diff(&affine) < 1e-5, "{}", info.affine);
}

#[test]
fn labels_for_nifti_input_keep_its_header_geometry() {
    let dir = tempdir();
    let mut h = int16_header(true); // big-endian input; output is little-endian
    h.sform(2, oblique_sform());
    let s = std::f32::consts::FRAC_1_SQRT_2;
    h.qform(1, [s, 0.0, 0.0], [-5.0, 6.0, 7.0]);
    h.pixdim([-1.0, 0.71, 0.72, 2.5]);
    h.b[123] = 2; // xyzt_units: mm
    let (p, _) = i16_file(dir.path(), "ct.nii", &h, &[]);
    let ct = read_nifti(&p).unwrap();
    let out = dir.path().join("labels.nii.gz");
    write_labels(&out, &labels_for(SHAPE, 2), &ct).unwrap();
    let b = file_bytes(&out);
    assert_eq!(le_i16(&b, 254), 2, "sform_code kept");
    assert_eq!(le_i16(&b, 252), 1, "qform_code kept");
    for (off, len) in [(76, 16), (256, 24), (280, 48)] {
        // pixdim[0..4], quaternion + offsets, srow_*: identical values after byte swapping.
        for f in (off..off + len).step_by(4) {
            let mut be = [0u8; 4];
            be.copy_from_slice(&h.b[f..f + 4]);
            assert_eq!(le_f32(&b, f), f32::from_be_bytes(be), "header byte {f}");
        }
    }
    assert_eq!(b[123], 2, "xyzt_units kept");
    let (_, affine, src) = read_labels(&out).unwrap();
    assert_eq!(&affine, ct.affine(), "exactly the input's affine");
    assert_eq!(src.header.qform_code, 1);
}

#[test]
fn labels_on_a_kept_grid_match_labels_like_the_volume() {
    // The engine drops the voxels after preprocessing and keeps shape, affine and provenance.
    let dir = tempdir();
    let mut h = int16_header(false);
    h.sform(2, oblique_sform());
    h.qform(1, [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]);
    let (p, _) = i16_file(dir.path(), "ct.nii", &h, &[]);
    let ct = read_nifti(&p).unwrap();
    let labels = labels_for(SHAPE, 7);
    let a = dir.path().join("a.nii");
    write_labels(&a, &labels, &ct).unwrap();
    let shape = ct.shape();
    let (_, affine, provenance) = ct.into_parts();
    let grid = Grid {
        shape,
        affine: &affine,
        source: &provenance.source,
    };
    let b = dir.path().join("b.nii");
    write_labels_on(&b, &labels, grid).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(le_i16(&file_bytes(&b), 254), 2);
}

#[test]
fn labels_for_a_reoriented_nifti_volume_use_its_affine() {
    let dir = tempdir();
    let mut h = int16_header(false);
    h.sform(2, oblique_sform());
    let (p, _) = i16_file(dir.path(), "ct.nii", &h, &[]);
    let ct = read_nifti(&p).unwrap();
    let (ras, _) = ct.reorient("ASR".parse::<AxCodes>().unwrap());
    assert_ne!(ras.shape(), ct.shape());
    let out = dir.path().join("ras_labels.nii");
    write_labels(&out, &labels_for(ras.shape(), 1), &ras).unwrap();
    let (l, affine, src) = read_labels(&out).unwrap();
    assert_eq!(l.shape(), &ras.shape()[..]);
    assert!(affine.max_abs_diff(ras.affine()) < 1e-5);
    assert_eq!(
        src.header.sform_code, 2,
        "code of the source transform kept"
    );
}

#[test]
fn writes_are_atomic_and_checked() {
    let dir = tempdir();
    let like = synthetic(SHAPE, oblique_affine());
    let leftovers = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect()
    };

    // Labels on another grid: refused before anything is written.
    let p = dir.path().join("l.nii.gz");
    let e = write_labels(&p, &labels_for([3, 4, 6], 1), &like).unwrap_err();
    assert!(matches!(e, NiftiError::ShapeMismatch { .. }));
    assert!(!p.exists());

    // The target is a directory: the rename fails, the temporary file is removed.
    let target = dir.path().join("taken.nii.gz");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = write_labels(&target, &labels_for(SHAPE, 1), &like).unwrap_err();
    assert!(matches!(e, NiftiError::Write { .. }), "{e:?}");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    assert!(target.join("keep").exists());

    // A failed write leaves an existing output untouched.
    let old = dir.path().join("old.nii");
    std::fs::write(&old, b"previous run").unwrap();
    let mut frac = synthetic(SHAPE, oblique_affine());
    frac = {
        let (mut d, a, p) = frac.into_parts();
        d[[0, 0, 0]] = 0.5;
        Volume::new(d, a, p).unwrap()
    };
    let e = write_volume(&old, &frac, VolumeDtype::I16).unwrap_err();
    assert!(matches!(
        e,
        NiftiError::NotInt16 {
            index: [0, 0, 0],
            ..
        }
    ));
    assert_eq!(std::fs::read(&old).unwrap(), b"previous run");

    let e = write_labels(&dir.path().join("x.png"), &labels_for(SHAPE, 1), &like).unwrap_err();
    assert!(matches!(e, NiftiError::BadOutputName { .. }));
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn write_volume_chooses_int16_only_when_lossless() {
    let dir = tempdir();
    let int = synthetic([5, 6, 7], oblique_affine());
    let (d, a, p) = int.clone().into_parts();
    let frac = Volume::new(d.mapv(|v| v + 0.25), a, p).unwrap();
    for (vol, dtype, code) in [
        (&int, VolumeDtype::Auto, 4i16),
        (&int, VolumeDtype::F32, 16),
        (&int, VolumeDtype::I16, 4),
        (&frac, VolumeDtype::Auto, 16),
    ] {
        let p = dir.path().join("v.nii.gz");
        write_volume(&p, vol, dtype).unwrap();
        let b = file_bytes(&p);
        assert_eq!(le_i16(&b, 70), code, "{dtype:?}");
        assert_eq!(le_i16(&b, 68), 0, "no intent");
        let back = read_nifti(&p).unwrap();
        assert_eq!(back.data(), vol.data());
        assert!(back.affine().max_abs_diff(vol.affine()) < 1e-5);
    }
}

#[test]
fn writes_uncompressed_nii_and_gzip_nii_gz() {
    let dir = tempdir();
    let like = synthetic(SHAPE, oblique_affine());
    let plain = dir.path().join("a.nii");
    let gz = dir.path().join("a.nii.gz");
    write_labels(&plain, &labels_for(SHAPE, 1), &like).unwrap();
    write_labels(&gz, &labels_for(SHAPE, 1), &like).unwrap();
    assert_eq!(&std::fs::read(&plain).unwrap()[0..4], &348i32.to_le_bytes());
    assert_eq!(&std::fs::read(&gz).unwrap()[0..2], &[0x1f, 0x8b]);
    assert_eq!(file_bytes(&plain), file_bytes(&gz));
}

#[test]
fn import_writes_the_volume_the_pipeline_reads() {
    let dir = tempdir();
    let mut h = int16_header(true);
    h.sform(1, oblique_sform());
    h.scl(1.0, -1024.0);
    let (input, _) = i16_file(dir.path(), "ct.nii.gz", &h, &[]);
    let out = dir.path().join("hu.nii.gz");
    let o = bin()
        .arg("import")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("3x4x5") && stderr.contains("int16"),
        "{stderr}"
    );
    let want = read_nifti(&input).unwrap();
    let got = read_nifti(&out).unwrap();
    assert_eq!(got.data(), want.data());
    assert_eq!(got.affine(), want.affine());
    assert_eq!(file_bytes(&out)[70], 4, "int16: lossless");

    let o = bin()
        .arg("import")
        .arg(&input)
        .args(["--out", "x.png"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
