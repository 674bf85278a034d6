//! The affine rule of NIfTI readers (nibabel's, exactly) and the qform of an affine for
//! writing (nifti1_io's `nifti_mat44_to_quatern`, as dcm2niix uses).

use crate::geometry::Affine;
use nifti::NiftiHeader;

/// Which header field defined the affine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffineSource {
    Sform,
    Qform,
    /// Neither code set: nibabel's `get_base_affine` (pixdim zooms, x flipped, centred).
    Pixdim,
}

impl AffineSource {
    pub fn name(self) -> &'static str {
        match self {
            AffineSource::Sform => "sform",
            AffineSource::Qform => "qform",
            AffineSource::Pixdim => "pixdim (no sform/qform)",
        }
    }
}

// === The affine rule (reading) ===

fn xform_code_valid(code: i16) -> bool {
    (0..=5).contains(&code)
}

/// nibabel's `get_best_affine` after `check_fix`: invalid xform codes count as 0, then the
/// sform if its code is non-zero, else the qform, else the base affine from pixdim.
pub(crate) fn best_affine(
    h: &NiftiHeader,
    warnings: &mut Vec<String>,
) -> Result<(Affine, AffineSource), String> {
    let mut codes = [("sform_code", h.sform_code), ("qform_code", h.qform_code)];
    for (name, code) in codes.iter_mut() {
        if !xform_code_valid(*code) {
            warnings.push(format!(
                "{name} {code} is not a valid NIfTI code; treated as 0"
            ));
            *code = 0;
        }
    }
    if codes[0].1 != 0 {
        for (name, row) in [
            ("srow_x", h.srow_x),
            ("srow_y", h.srow_y),
            ("srow_z", h.srow_z),
        ] {
            if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "the sform has a non-finite entry: {name}[{i}] = {}",
                    row[i]
                ));
            }
        }
        return Ok((sform_affine(h), AffineSource::Sform));
    }
    let pixdims = (1..4).map(|i| (format!("pixdim[{i}]"), h.pixdim[i]));
    for (name, v) in pixdims {
        if !v.is_finite() {
            return Err(format!("{name} is not finite ({v})"));
        }
    }
    let zooms = fixed_zooms(h, warnings);
    if codes[1].1 != 0 {
        for (name, v) in [
            ("quatern_b", h.quatern_b),
            ("quatern_c", h.quatern_c),
            ("quatern_d", h.quatern_d),
            ("qoffset_x", h.quatern_x),
            ("qoffset_y", h.quatern_y),
            ("qoffset_z", h.quatern_z),
        ] {
            if !v.is_finite() {
                return Err(format!("the qform has a non-finite {name} ({v})"));
            }
        }
        return Ok((qform_affine(h, zooms, warnings)?, AffineSource::Qform));
    }
    Ok((base_affine(h, zooms), AffineSource::Pixdim))
}

pub(crate) fn sform_affine(h: &NiftiHeader) -> Affine {
    let r = |row: [f32; 4]| row.map(|v| v as f64);
    Affine([r(h.srow_x), r(h.srow_y), r(h.srow_z), [0.0, 0.0, 0.0, 1.0]])
}

/// pixdim[1..=3] after nibabel's `_chk_pixdims` fix: zeros become 1, negatives their absolute value.
fn fixed_zooms(h: &NiftiHeader, warnings: &mut Vec<String>) -> [f64; 3] {
    let raw = [h.pixdim[1], h.pixdim[2], h.pixdim[3]];
    if raw.iter().any(|&p| p <= 0.0) {
        warnings.push(format!(
            "pixdim[1..3] = {raw:?} should be positive; zeros read as 1, negatives as their absolute value"
        ));
    }
    raw.map(|p| if p == 0.0 { 1.0 } else { (p as f64).abs() })
}

/// nibabel `Nifti1Header.get_qform`: quaternion (b, c, d; a ≥ 0 filled in), pixdim zooms,
/// qfac = pixdim[0] (anything but ±1 read as 1), offsets.
pub(crate) fn qform_affine(
    h: &NiftiHeader,
    zooms: [f64; 3],
    warnings: &mut Vec<String>,
) -> Result<Affine, String> {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let w2 = 1.0 - (b * b + c * c + d * d);
    // nibabel's `fillpositive` threshold: -3 × float32 epsilon.
    if w2 < -3.0 * f32::EPSILON as f64 {
        return Err(format!(
            "qform quaternion (b, c, d) = ({b}, {c}, {d}) has norm above 1"
        ));
    }
    let a = w2.max(0.0).sqrt();
    let r = quat2mat([a, b, c, d]);
    let mut qfac = h.pixdim[0] as f64;
    if qfac != 1.0 && qfac != -1.0 {
        warnings.push(format!(
            "pixdim[0] (qfac) is {qfac}, should be 1 or -1; read as 1"
        ));
        qfac = 1.0;
    }
    let s = [zooms[0], zooms[1], zooms[2] * qfac];
    let mut m = Affine::IDENTITY;
    for (row, out) in r.iter().zip(m.0.iter_mut()) {
        for col in 0..3 {
            out[col] = row[col] * s[col];
        }
    }
    m.0[0][3] = h.quatern_x as f64;
    m.0[1][3] = h.quatern_y as f64;
    m.0[2][3] = h.quatern_z as f64;
    Ok(m)
}

/// nibabel `quaternions.quat2mat` (normalising; identity for a zero quaternion).
fn quat2mat(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}

/// nibabel `AnalyzeHeader.get_base_affine` = `shape_zoom_affine(shape, zooms, x_flip=True)`:
/// the Analyze convention (radiological x), centred on the volume. Not the NIfTI standard's
/// "method 1" (plain pixdim scaling from a zero origin); see README, "NIfTI conventions".
fn base_affine(h: &NiftiHeader, zooms: [f64; 3]) -> Affine {
    let ndim = (h.dim[0] as usize).clamp(1, 7);
    let mut a = Affine::IDENTITY;
    for (ax, &zoom) in zooms.iter().enumerate() {
        let (n, z) = if ax < ndim {
            (h.dim[ax + 1] as f64, zoom)
        } else {
            (1.0, 1.0)
        };
        let z = if ax == 0 { -z } else { z };
        a.0[ax][ax] = z;
        a.0[ax][3] = -((n - 1.0) / 2.0) * z;
    }
    a
}

// === The qform of an affine (writing) ===

/// qform parameters for an affine, as `nifti_mat44_to_quatern` (nifti1_io.c) computes them and
/// dcm2niix writes them: the rotation is the orthogonal matrix nearest to the column-normalised
/// 3×3 part (polar decomposition), a left-handed grid gets qfac = −1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quatern {
    pub b: f64,
    pub c: f64,
    pub d: f64,
    pub offset: [f64; 3],
    /// Column lengths: pixdim[1..=3].
    pub zooms: [f64; 3],
    pub qfac: f64,
}

pub(crate) fn quatern_from_affine(a: &Affine) -> Quatern {
    let mut r = [[0.0f64; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        row.copy_from_slice(&a.0[i][..3]);
    }
    let mut zooms = [0.0; 3];
    for (col, zoom) in zooms.iter_mut().enumerate() {
        let mut len = (0..3).map(|i| r[i][col] * r[i][col]).sum::<f64>().sqrt();
        if len == 0.0 {
            // nifti1_io patches a zero column to the x unit vector.
            r[0][col] = 1.0;
            r[1][col] = 0.0;
            r[2][col] = 0.0;
            len = 1.0;
        }
        for row in r.iter_mut() {
            row[col] /= len;
        }
        *zoom = len;
    }
    let mut p = polar(r);
    let qfac = if det33(&p) > 0.0 {
        1.0
    } else {
        for row in p.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let (r11, r12, r13) = (p[0][0], p[0][1], p[0][2]);
    let (r21, r22, r23) = (p[1][0], p[1][1], p[1][2]);
    let (r31, r32, r33) = (p[2][0], p[2][1], p[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (b, c, d) = if trace > 0.5 {
        let a = 0.5 * trace.sqrt();
        (
            0.25 * (r32 - r23) / a,
            0.25 * (r13 - r31) / a,
            0.25 * (r21 - r12) / a,
        )
    } else {
        let xd = 1.0 + r11 - (r22 + r33); // 4b²
        let yd = 1.0 + r22 - (r11 + r33); // 4c²
        let zd = 1.0 + r33 - (r11 + r22); // 4d²
        let (a, b, c, d) = if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (
                0.25 * (r32 - r23) / b,
                b,
                0.25 * (r12 + r21) / b,
                0.25 * (r13 + r31) / b,
            )
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (
                0.25 * (r13 - r31) / c,
                0.25 * (r12 + r21) / c,
                c,
                0.25 * (r23 + r32) / c,
            )
        } else {
            let d = 0.5 * zd.sqrt();
            (
                0.25 * (r21 - r12) / d,
                0.25 * (r13 + r31) / d,
                0.25 * (r23 + r32) / d,
                d,
            )
        };
        // The stored quaternion has a ≥ 0 (readers fill a in as +sqrt(1 - b² - c² - d²)).
        if a < 0.0 {
            (-b, -c, -d)
        } else {
            (b, c, d)
        }
    };
    Quatern {
        b,
        c,
        d,
        offset: a.origin(),
        zooms,
        qfac,
    }
}

fn det33(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

fn inverse33(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = det33(m);
    let mut inv = [[0.0; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // cofactor of m[j][i]
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            *v = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
    }
    inv
}

fn row_norm(m: &[[f64; 3]; 3]) -> f64 {
    m.iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

fn col_norm(m: &[[f64; 3]; 3]) -> f64 {
    (0..3)
        .map(|c| m.iter().map(|r| r[c].abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// `nifti_mat33_polar`: the orthogonal factor of `a` by scaled Newton iteration
/// (X ← ½(γX + γ⁻¹X⁻ᵀ)), iterated here to 1e-12 instead of nifti1_io's 3e-6.
fn polar(a: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = a;
    let mut gam = det33(&x);
    while gam == 0.0 {
        gam = 0.00001 * (0.001 + row_norm(&x));
        for (i, row) in x.iter_mut().enumerate() {
            row[i] += gam;
        }
        gam = det33(&x);
    }
    let mut dif: f64 = 1.0;
    let mut z = x;
    for _ in 0..100 {
        let y = inverse33(&x);
        let (g, gi) = if dif > 0.3 {
            let alp = (row_norm(&x) * col_norm(&x)).sqrt();
            let bet = (row_norm(&y) * col_norm(&y)).sqrt();
            let g = (bet / alp).sqrt();
            (g, 1.0 / g)
        } else {
            (1.0, 1.0)
        };
        dif = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                z[i][j] = 0.5 * (g * x[i][j] + gi * y[j][i]);
                dif += (z[i][j] - x[i][j]).abs();
            }
        }
        if dif < 1e-12 {
            break;
        }
        x = z;
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(axis: usize, deg: f64) -> [[f64; 3]; 3] {
        let (s, c) = deg.to_radians().sin_cos();
        let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
        let mut m = [[0.0; 3]; 3];
        m[axis][axis] = 1.0;
        m[i][i] = c;
        m[j][j] = c;
        m[i][j] = -s;
        m[j][i] = s;
        m
    }

    fn affine_from(r: [[f64; 3]; 3], zooms: [f64; 3], flip_k: bool, t: [f64; 3]) -> Affine {
        let mut a = Affine::IDENTITY;
        for i in 0..3 {
            for j in 0..3 {
                let z = if j == 2 && flip_k {
                    -zooms[j]
                } else {
                    zooms[j]
                };
                a.0[i][j] = r[i][j] * z;
            }
            a.0[i][3] = t[i];
        }
        a
    }

    /// The qform of `a` stored in a header's f32 fields (as `header_from_affine` stores it)
    /// and read back.
    fn header_qform_affine(a: &Affine) -> Affine {
        let q = quatern_from_affine(a);
        let h = NiftiHeader {
            pixdim: [
                q.qfac as f32,
                q.zooms[0] as f32,
                q.zooms[1] as f32,
                q.zooms[2] as f32,
                1.0,
                1.0,
                1.0,
                1.0,
            ],
            quatern_b: q.b as f32,
            quatern_c: q.c as f32,
            quatern_d: q.d as f32,
            quatern_x: q.offset[0] as f32,
            quatern_y: q.offset[1] as f32,
            quatern_z: q.offset[2] as f32,
            ..NiftiHeader::default()
        };
        let mut w = vec![];
        qform_affine(
            &h,
            [h.pixdim[1], h.pixdim[2], h.pixdim[3]].map(f64::from),
            &mut w,
        )
        .unwrap()
    }

    #[test]
    fn quaternion_round_trip_over_rotations_and_handedness() {
        // Every branch of nifti_mat44_to_quatern: small angles (trace > 0.5) and 180° turns
        // about each axis (the xd/yd/zd branches), both handednesses.
        for (axis, deg) in [
            (0, 0.0),
            (0, 30.0),
            (1, -75.0),
            (2, 120.0),
            (0, 180.0),
            (1, 180.0),
            (2, 180.0),
            (2, 170.0),
        ] {
            for flip in [false, true] {
                let a = affine_from(rot(axis, deg), [0.7, 0.8, 2.5], flip, [-10.0, 20.5, 33.0]);
                let back = header_qform_affine(&a);
                assert!(
                    back.max_abs_diff(&a) < 1e-5,
                    "axis {axis} {deg}° flip {flip}:\n{a}\nvs\n{back}"
                );
                let q = quatern_from_affine(&a);
                assert_eq!(q.qfac, if flip { -1.0 } else { 1.0 });
            }
        }
    }

    #[test]
    fn dicom_like_lps_affine_gives_qfac_minus_one_without_rotation_loss() {
        // Axial CT stored head-first but read feet-to-head reversed: i → L, j → P, k → I.
        // det < 0, a left-handed grid: qfac must be -1 with no rotation lost.
        let a = Affine([
            [-0.7, 0.0, 0.0, 170.0],
            [0.0, -0.7, 0.0, 200.0],
            [0.0, 0.0, -2.5, -40.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let q = quatern_from_affine(&a);
        assert_eq!(q.qfac, -1.0);
        assert!(header_qform_affine(&a).max_abs_diff(&a) < 1e-6);
    }

    #[test]
    fn polar_removes_shear() {
        // A sheared (gantry-tilt) matrix: the qform keeps the nearest rotation.
        let m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]];
        let p = polar(m);
        let mut ptp = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                ptp[i][j] = (0..3).map(|k| p[k][i] * p[k][j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((ptp[i][j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn base_affine_matches_nibabel_example() {
        // nibabel: h.set_data_shape((4,5,6)); h.set_zooms((2,3,4)); h.get_base_affine()
        // -> [[-2,0,0,3],[0,3,0,-6],[0,0,4,-10]]
        let h = NiftiHeader {
            dim: [3, 4, 5, 6, 1, 1, 1, 1],
            pixdim: [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0],
            ..NiftiHeader::default()
        };
        let a = base_affine(&h, [2.0, 3.0, 4.0]);
        let want = Affine([
            [-2.0, 0.0, 0.0, 3.0],
            [0.0, 3.0, 0.0, -6.0],
            [0.0, 0.0, 4.0, -10.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        assert_eq!(a, want);
    }
}
