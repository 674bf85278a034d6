//! Interoperability with nibabel, the reference NIfTI implementation of the Python world (and
//! of the official SDSeg preprocessing).
//!
//! 1. nibabel writes NIfTI files (every common datatype, both byte orders, scaling, oblique,
//!    qform-only with qfac −1, pixdim-only, trailing singleton dim, sform ≠ qform); we read them
//!    and must agree with `img.get_fdata()` and `img.affine`.
//! 2. We write label and HU files; nibabel reads them and must see the reference grid's affine,
//!    shape, datatype, codes and voxels.
//!
//! The interpreter (`support::python`) needs nibabel and numpy; a missing one fails the tests
//! unless `SDSEG_ALLOW_MISSING_TOOLS=1`.

use ndarray::{Array3, ShapeBuilder};
use sdseg_volume::io::nifti::{read_nifti, write_labels, write_volume, VolumeDtype};
use sdseg_volume::{Affine, Provenance, Volume};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::python::require_python;
use crate::support::tempdir;

/// The interpreter, when it has nibabel (see `support::python`).
fn nibabel() -> Option<PathBuf> {
    require_python(&["nibabel", "numpy"])
}

fn run_python(python: &Path, script: &str, dir: &Path) -> Value {
    let file = dir.join("script.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(python)
        .arg(&file)
        .arg(dir)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn affine_of(v: &Value) -> Affine {
    let mut a = [[0.0; 4]; 4];
    for (r, row) in a.iter_mut().enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            *x = v[r][c].as_f64().unwrap();
        }
    }
    Affine(a)
}

/// Little-endian float64 voxels in Fortran order, as `arr.ravel(order='F').tobytes()`.
fn f64_voxels(path: &Path, shape: [usize; 3]) -> Array3<f64> {
    let b = std::fs::read(path).unwrap();
    let v: Vec<f64> = b
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Array3::from_shape_vec((shape[0], shape[1], shape[2]).f(), v).unwrap()
}

const WRITE_CASES: &str = r#"
import json, sys, os
import numpy as np, nibabel as nib

out = sys.argv[1]
rng = np.random.default_rng(7)
shape = (5, 6, 7)

def oblique(det_sign=1.0):
    t = np.deg2rad(12.0)
    r = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    r2 = np.array([[1, 0, 0], [0, np.cos(t/2), -np.sin(t/2)], [0, np.sin(t/2), np.cos(t/2)]])
    a = np.eye(4)
    a[:3, :3] = r @ r2 @ np.diag([-0.7, -0.8, 2.5 * det_sign])
    a[:3, 3] = [120.5, -33.0, 57.25]
    return a

def data(dtype, lo, hi):
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)

cases = {}
def save(name, img):
    p = os.path.join(out, name)
    nib.save(img, p)
    back = nib.load(p)
    np.asarray(back.get_fdata(), dtype='<f8').ravel(order='F').tofile(p + '.f64')
    h = back.header
    cases[name] = dict(affine=back.affine.tolist(), shape=list(back.shape),
                       sform_code=int(h['sform_code']), qform_code=int(h['qform_code']))

# Every datatype, extremes included, with an oblique sform.
for name, dt, lo, hi in [('u8', np.uint8, 0, 255), ('i8', np.int8, -128, 127),
                         ('i16', np.int16, -32768, 32767), ('u16', np.uint16, 0, 65535),
                         ('i32', np.int32, -2**31, 2**31 - 1), ('u32', np.uint32, 0, 2**32 - 1)]:
    save(name + '.nii.gz', nib.Nifti1Image(data(dt, lo, hi), oblique()))
f = rng.normal(0, 500, size=shape)
save('f32.nii', nib.Nifti1Image(f.astype(np.float32), oblique()))
save('f64.nii.gz', nib.Nifti1Image(f, oblique()))

# Big-endian storage.
for name, dt in [('i16_be.nii', '>i2'), ('f32_be.nii.gz', '>f4'), ('u16_be.nii', '>u2')]:
    hdr = nib.Nifti1Header(endianness='>')
    save(name, nib.Nifti1Image(data(np.int16, 0, 3000).astype(dt), oblique(), hdr))

# scl_slope / scl_inter on int16 storage, and on float32 storage.
img = nib.Nifti1Image(data(np.int16, -2000, 3000), oblique())
img.header.set_slope_inter(0.5, -1024.0)
save('i16_scaled.nii.gz', img)
img = nib.Nifti1Image(f.astype(np.float32), oblique())
img.header.set_slope_inter(2.0, 1.0)
save('f32_scaled.nii', img)

# qform only, left-handed grid (qfac -1).
img = nib.Nifti1Image(data(np.int16, -1000, 1000), None)
img.set_qform(oblique(-1.0), code=1)
img.set_sform(None, code=0)
save('qform_only.nii.gz', img)

# Neither transform: nibabel's base affine from pixdim.
img = nib.Nifti1Image(data(np.uint8, 0, 9), None)
img.header.set_zooms((0.8, 0.9, 2.5))
img.set_qform(None, code=0)
img.set_sform(None, code=0)
save('pixdim_only.nii', img)

# sform (aligned) and a different qform (scanner): the sform wins.
img = nib.Nifti1Image(data(np.int16, -5, 5), oblique())
img.set_sform(oblique(), code=2)
img.set_qform(np.diag([1.1, 1.2, 1.3, 1.0]), code=1)
save('sform_and_qform.nii', img)

# A trailing singleton 4th dimension.
save('singleton4d.nii.gz', nib.Nifti1Image(data(np.int16, 0, 100)[..., None], oblique()))

print(json.dumps(cases))
"#;

#[test]
fn nibabel_written_files_read_the_same() {
    let Some(python) = nibabel() else {
        return;
    };
    let dir = tempdir();
    let cases = run_python(&python, WRITE_CASES, dir.path());
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 17, "python wrote {} cases", cases.len());
    for (name, c) in cases {
        let p = dir.path().join(name);
        let v = read_nifti(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(&v.shape()[..], &shape[..3], "{name}: shape");
        let want_aff = affine_of(&c["affine"]);
        assert!(
            v.affine().max_abs_diff(&want_aff) < 1e-5,
            "{name}: affine\n{}\nnibabel\n{want_aff}",
            v.affine()
        );
        let want = f64_voxels(&dir.path().join(format!("{name}.f64")), v.shape());
        let mut worst = (0.0f64, [0usize; 3]);
        for ((i, j, k), &w) in want.indexed_iter() {
            let g = v.data()[[i, j, k]] as f64;
            // Ours is f32: allow its rounding, nothing more.
            let err = (g - w).abs() / w.abs().max(1.0);
            if err > worst.0 {
                worst = (err, [i, j, k]);
            }
        }
        assert!(
            worst.0 <= 6e-8,
            "{name}: voxels differ from nibabel's get_fdata by {} (relative) at {:?}",
            worst.0,
            worst.1
        );
    }
}

const READ_OURS: &str = r#"
import json, sys, os, glob
import numpy as np, nibabel as nib

out = {}
for p in sorted(glob.glob(os.path.join(sys.argv[1], 'ours_*.nii*'))):
    img = nib.load(p)
    h = img.header
    np.asarray(img.dataobj).astype('<f8').ravel(order='F').tofile(p + '.f64')
    out[os.path.basename(p)] = dict(
        affine=img.affine.tolist(), shape=list(img.shape), dtype=str(img.get_data_dtype()),
        sform_code=int(h['sform_code']), qform_code=int(h['qform_code']),
        sform=h.get_sform().tolist(), qform=h.get_qform().tolist(),
        intent=h.get_intent()[0], slope_inter=[None if x is None else float(x) for x in h.get_slope_inter()])
print(json.dumps(out))
"#;

fn oblique_lps() -> Affine {
    // A head-first axial series after LPS→RAS, tilted 8° about x; k towards inferior.
    let (s, c) = 8f64.to_radians().sin_cos();
    Affine([
        [-0.68, 0.0, 0.0, 174.2],
        [0.0, -0.68 * c, 3.0 * s, 190.5],
        [0.0, 0.68 * s, 3.0 * c, -412.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
}

#[test]
fn nibabel_reads_our_files_on_the_reference_grid() {
    let Some(python) = nibabel() else {
        return;
    };
    let dir = tempdir();
    let d = dir.path();
    // A NIfTI reference written by nibabel: sform code 2 and a different qform (code 1).
    let cases = run_python(&python, WRITE_CASES, d);
    let nifti_like = read_nifti(&d.join("sform_and_qform.nii")).unwrap();
    let nifti_ref = &cases["sform_and_qform.nii"];
    let shape = nifti_like.shape();
    let labels = Array3::from_shape_fn(shape, |(i, j, k)| ((i * 7 + j * 3 + k) % 6) as u16);
    write_labels(&d.join("ours_nifti_labels.nii.gz"), &labels, &nifti_like).unwrap();

    // A DICOM-like (synthetic) reference: code 1 sform and qform from the affine.
    let syn_shape = [6, 5, 4];
    let hu = Array3::from_shape_fn(syn_shape, |(i, j, k)| {
        (i as f32) * 10.0 - (j as f32) * 3.0 + (k as f32) * 100.0 - 1000.0
    });
    let syn = Volume::new(hu, oblique_lps(), Provenance::synthetic()).unwrap();
    let big = Array3::from_shape_fn(syn_shape, |(i, j, k)| (i * 60 + j * 11 + k) as u16);
    write_labels(&d.join("ours_syn_labels16.nii"), &big, &syn).unwrap();
    write_volume(&d.join("ours_syn_hu.nii.gz"), &syn, VolumeDtype::Auto).unwrap();
    let (dd, aa, pp) = syn.clone().into_parts();
    let frac = Volume::new(dd.mapv(|v| v * 0.5 + 0.25), aa, pp).unwrap();
    write_volume(&d.join("ours_syn_f32.nii"), &frac, VolumeDtype::Auto).unwrap();

    let seen = run_python(&python, READ_OURS, d);
    let check = |name: &str,
                 like: &Volume,
                 dtype: &str,
                 codes: (i64, i64),
                 intent: &str,
                 want: &dyn Fn(usize, usize, usize) -> f64| {
        let s = &seen[name];
        assert!(s.is_object(), "nibabel did not read {name}: {seen}");
        assert_eq!(s["dtype"], dtype, "{name}");
        assert_eq!(
            (
                s["sform_code"].as_i64().unwrap(),
                s["qform_code"].as_i64().unwrap()
            ),
            codes,
            "{name}: codes"
        );
        assert_eq!(s["intent"], intent, "{name}");
        let shape: Vec<u64> = like.shape().iter().map(|&x| x as u64).collect();
        let got: Vec<u64> = s["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, shape, "{name}: shape");
        let aff = affine_of(&s["affine"]);
        assert!(
            aff.max_abs_diff(like.affine()) < 1e-5,
            "{name}: nibabel affine\n{aff}\nreference\n{}",
            like.affine()
        );
        let vox = f64_voxels(&d.join(format!("{name}.f64")), like.shape());
        for ((i, j, k), &v) in vox.indexed_iter() {
            assert_eq!(v, want(i, j, k), "{name}: voxel {i},{j},{k}");
        }
        s.clone()
    };

    let s = check(
        "ours_nifti_labels.nii.gz",
        &nifti_like,
        "uint8",
        (2, 1),
        "label",
        &|i, j, k| labels[[i, j, k]] as f64,
    );
    // The qform is the input's own (code 1, a different matrix from the sform), untouched.
    let q_in = nifti_ref["affine"].clone();
    let q_out = affine_of(&s["qform"]);
    assert!(q_out.max_abs_diff(&Affine::from_spacing([1.1, 1.2, 1.3])) < 1e-6);
    assert!(affine_of(&s["sform"]).max_abs_diff(&affine_of(&q_in)) < 1e-6);

    let s = check(
        "ours_syn_labels16.nii",
        &syn,
        "uint16",
        (1, 1),
        "label",
        &|i, j, k| big[[i, j, k]] as f64,
    );
    // qform (rigid, qfac -1 here) gives the same grid as the sform.
    assert!(affine_of(&s["qform"]).max_abs_diff(syn.affine()) < 1e-5);

    check(
        "ours_syn_hu.nii.gz",
        &syn,
        "int16",
        (1, 1),
        "none",
        &|i, j, k| syn.data()[[i, j, k]] as f64,
    );
    check(
        "ours_syn_f32.nii",
        &frac,
        "float32",
        (1, 1),
        "none",
        &|i, j, k| frac.data()[[i, j, k]] as f64,
    );
}
