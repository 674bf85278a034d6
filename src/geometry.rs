//! Affines and exact reorientation.
//!
//! World coordinates are RAS+ millimetres everywhere after the readers (`io::dicom` converts
//! DICOM's LPS). An [`Affine`] maps a voxel index `(i, j, k)` to RAS. Reorientation only
//! permutes and flips axes (no resampling), and every forward transform returns the
//! [`Reorientation`] that undoes it exactly.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, Axis};
use std::fmt;

/// A 4×4 voxel-to-world (RAS, mm) matrix, row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    pub const IDENTITY: Affine = Affine([
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);

    /// Diagonal affine with the given spacing and a zero origin.
    pub fn from_spacing(spacing: [f64; 3]) -> Affine {
        let mut a = Affine::IDENTITY;
        for (d, s) in spacing.iter().enumerate() {
            a.0[d][d] = *s;
        }
        a
    }

    pub fn matmul(&self, other: &Affine) -> Affine {
        let mut out = [[0.0; 4]; 4];
        for (r, row) in out.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| self.0[r][k] * other.0[k][c]).sum();
            }
        }
        Affine(out)
    }

    /// World position of voxel index `ijk`.
    pub fn apply(&self, ijk: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        [0, 1, 2].map(|r| m[r][0] * ijk[0] + m[r][1] * ijk[1] + m[r][2] * ijk[2] + m[r][3])
    }

    /// Column `axis` of the 3×3 part: the world step of one voxel along that axis.
    pub fn axis_vector(&self, axis: usize) -> [f64; 3] {
        [self.0[0][axis], self.0[1][axis], self.0[2][axis]]
    }

    /// Voxel size along each array axis in mm (column norms of the 3×3 part).
    pub fn spacing(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| {
            let v = self.axis_vector(a);
            (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
        })
    }

    pub fn origin(&self) -> [f64; 3] {
        [self.0[0][3], self.0[1][3], self.0[2][3]]
    }

    /// Determinant of the 3×3 part (negative = left-handed voxel grid).
    pub fn det3(&self) -> f64 {
        let m = &self.0;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// Largest absolute element-wise difference (for tolerance checks).
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        let mut d: f64 = 0.0;
        for r in 0..4 {
            for c in 0..4 {
                d = d.max((self.0[r][c] - other.0[r][c]).abs());
            }
        }
        d
    }

    /// Orientation codes as nibabel's `aff2axcodes`: for each array axis, the world
    /// direction (R/L, A/P, S/I) it points to most.
    pub fn axcodes(&self) -> AxCodes {
        let mut used = [false; 3];
        let mut codes = [AxCode::R; 3];
        // Greedy assignment by largest |component| over the whole matrix, as io_orientation does.
        let mut order: Vec<(usize, usize, f64)> = Vec::with_capacity(9);
        for axis in 0..3 {
            let v = self.axis_vector(axis);
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
                .sqrt()
                .max(f64::MIN_POSITIVE);
            for (w, comp) in v.iter().enumerate() {
                order.push((axis, w, comp / n));
            }
        }
        order.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        let mut done = [false; 3];
        for (axis, w, c) in order {
            if done[axis] || used[w] {
                continue;
            }
            done[axis] = true;
            used[w] = true;
            codes[axis] = AxCode::from_world(w, c >= 0.0);
        }
        AxCodes(codes)
    }
}

impl fmt::Display for Affine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (r, row) in self.0.iter().enumerate() {
            if r > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "[{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
                row[0], row[1], row[2], row[3]
            )?;
        }
        Ok(())
    }
}

/// One orientation letter: the world direction an array axis increases towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AxCode {
    R,
    L,
    A,
    P,
    S,
    I,
}

impl AxCode {
    fn from_world(world_axis: usize, positive: bool) -> AxCode {
        match (world_axis, positive) {
            (0, true) => AxCode::R,
            (0, false) => AxCode::L,
            (1, true) => AxCode::A,
            (1, false) => AxCode::P,
            (2, true) => AxCode::S,
            _ => AxCode::I,
        }
    }

    /// RAS world axis (0 = x, 1 = y, 2 = z) and whether the code is the positive direction.
    pub fn world(self) -> (usize, bool) {
        match self {
            AxCode::R => (0, true),
            AxCode::L => (0, false),
            AxCode::A => (1, true),
            AxCode::P => (1, false),
            AxCode::S => (2, true),
            AxCode::I => (2, false),
        }
    }

    fn letter(self) -> char {
        match self {
            AxCode::R => 'R',
            AxCode::L => 'L',
            AxCode::A => 'A',
            AxCode::P => 'P',
            AxCode::S => 'S',
            AxCode::I => 'I',
        }
    }
}

/// Three orientation letters, e.g. `RAS` or `LPS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AxCodes(pub [AxCode; 3]);

impl AxCodes {
    pub const RAS: AxCodes = AxCodes([AxCode::R, AxCode::A, AxCode::S]);
    pub const LPS: AxCodes = AxCodes([AxCode::L, AxCode::P, AxCode::S]);
}

impl fmt::Display for AxCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0 {
            write!(f, "{}", c.letter())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for AxCodes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars: Vec<char> = s.trim().to_ascii_uppercase().chars().collect();
        if chars.len() != 3 {
            return Err(format!(
                "orientation '{s}': expected three letters such as RAS or LPS"
            ));
        }
        let mut codes = [AxCode::R; 3];
        let mut seen = [false; 3];
        for (i, ch) in chars.iter().enumerate() {
            codes[i] = match ch {
                'R' => AxCode::R,
                'L' => AxCode::L,
                'A' => AxCode::A,
                'P' => AxCode::P,
                'S' => AxCode::S,
                'I' => AxCode::I,
                _ => {
                    return Err(format!(
                        "orientation '{s}': '{ch}' is not one of R L A P S I"
                    ))
                }
            };
            let (w, _) = codes[i].world();
            if seen[w] {
                return Err(format!(
                    "orientation '{s}': two letters name the same world axis"
                ));
            }
            seen[w] = true;
        }
        Ok(AxCodes(codes))
    }
}

/// An exact axis permutation + flips taking an array on a source grid to a target frame.
///
/// `perm[t]` is the source axis that becomes target axis `t`; `flip[t]` reverses target axis
/// `t` after the permutation. `source_shape` is kept so the inverse is self-contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reorientation {
    pub perm: [usize; 3],
    pub flip: [bool; 3],
    pub source_shape: [usize; 3],
}

impl Reorientation {
    /// The transform taking a grid with `affine` and `shape` to orientation `target`.
    pub fn to_codes(affine: &Affine, shape: [usize; 3], target: AxCodes) -> Reorientation {
        let current = affine.axcodes();
        let mut perm = [0usize; 3];
        let mut flip = [false; 3];
        for (t, code) in target.0.iter().enumerate() {
            let (tw, tpos) = code.world();
            let src = (0..3)
                .find(|&a| current.0[a].world().0 == tw)
                .expect("axcodes cover all world axes");
            perm[t] = src;
            flip[t] = current.0[src].world().1 != tpos;
        }
        Reorientation {
            perm,
            flip,
            source_shape: shape,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    pub fn target_shape(&self) -> [usize; 3] {
        self.perm.map(|a| self.source_shape[a])
    }

    /// Apply to voxels (returns a standard-layout copy).
    pub fn apply_array<T: Clone>(&self, a: ArrayView3<'_, T>) -> Array3<T> {
        self.view(a).as_standard_layout().into_owned()
    }

    /// The array seen in the target frame: a permuted/flipped view, no copy.
    pub fn view<'a, T>(&self, a: ArrayView3<'a, T>) -> ArrayView3<'a, T> {
        let mut v = a.permuted_axes(self.perm);
        for (t, f) in self.flip.iter().enumerate() {
            if *f {
                v.invert_axis(Axis(t));
            }
        }
        v
    }

    /// Mutable counterpart of [`view`](Self::view): writing slice `k` of the view writes the
    /// source-grid array, so no inverse reorientation copy is needed.
    pub fn view_mut<'a, T>(&self, a: ArrayViewMut3<'a, T>) -> ArrayViewMut3<'a, T> {
        let mut v = a.permuted_axes(self.perm);
        for (t, f) in self.flip.iter().enumerate() {
            if *f {
                v.invert_axis(Axis(t));
            }
        }
        v
    }

    /// The new affine: voxel `t` on the target grid is voxel `s` on the source grid.
    pub fn apply_affine(&self, affine: &Affine) -> Affine {
        // target index -> source index: s[perm[t]] = flip[t] ? (n_t - 1 - t_idx) : t_idx
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        let tshape = self.target_shape();
        for t in 0..3 {
            let s = self.perm[t];
            if self.flip[t] {
                m[s][t] = -1.0;
                m[s][3] = (tshape[t] as f64) - 1.0;
            } else {
                m[s][t] = 1.0;
            }
        }
        affine.matmul(&Affine(m))
    }

    /// The transform that undoes this one.
    pub fn inverse(&self) -> Reorientation {
        let mut perm = [0usize; 3];
        let mut flip = [false; 3];
        for t in 0..3 {
            perm[self.perm[t]] = t;
        }
        // Flips happen on target axes; in the inverse they act on the same data axes,
        // which after inverse-permuting sit at source position perm[t].
        for t in 0..3 {
            flip[self.perm[t]] = self.flip[t];
        }
        // Inverse: first un-flip (on target axes) then un-permute. Flipping commutes with a
        // permutation once mapped through it, so flipping source axis perm[t] after the
        // inverse permutation is the same operation.
        Reorientation {
            perm,
            flip,
            source_shape: self.target_shape(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn oblique_affine() -> Affine {
        Affine([
            [-0.7, 0.1, 0.0, 120.0],
            [0.05, 0.0, -2.5, -30.0],
            [0.0, -0.8, 0.2, 55.0],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    #[test]
    fn axcodes_of_lps_and_ras() {
        assert_eq!(
            Affine::from_spacing([1.0, 1.0, 1.0]).axcodes(),
            AxCodes::RAS
        );
        let mut a = Affine::from_spacing([0.7, 0.7, 2.0]);
        a.0[0][0] = -0.7;
        a.0[1][1] = -0.7;
        assert_eq!(a.axcodes().to_string(), "LPS");
        assert_eq!(oblique_affine().axcodes().to_string(), "LIP");
    }

    #[test]
    fn reorientation_round_trip_is_identity() {
        let shape = [4usize, 3, 5];
        let data = Array3::from_shape_fn(shape, |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        let aff = oblique_affine();
        for target in ["RAS", "LPS", "SAR", "IPL", "ASL"] {
            let r = Reorientation::to_codes(&aff, shape, target.parse().unwrap());
            let moved = r.apply_array(data.view());
            let moved_aff = r.apply_affine(&aff);
            assert_eq!(moved_aff.axcodes().to_string(), target);
            // Every voxel keeps its world position.
            for (idx, v) in moved.indexed_iter() {
                let src = *v as usize;
                let s = [src / 100, (src / 10) % 10, src % 10].map(|x| x as f64);
                let w_src = aff.apply(s);
                let w_dst = moved_aff.apply([idx.0 as f64, idx.1 as f64, idx.2 as f64]);
                for d in 0..3 {
                    assert!(
                        (w_src[d] - w_dst[d]).abs() < 1e-9,
                        "{target}: world position moved"
                    );
                }
            }
            let inv = r.inverse();
            let back = inv.apply_array(moved.view());
            assert_eq!(back, data, "{target}: voxels not restored");
            assert!(
                inv.apply_affine(&moved_aff).max_abs_diff(&aff) < 1e-12,
                "{target}: affine not restored"
            );
        }
    }

    #[test]
    fn views_write_through_to_the_source_grid() {
        let mut labels = Array3::<u16>::zeros((2, 3, 4));
        let r = Reorientation {
            perm: [2, 0, 1],
            flip: [true, false, false],
            source_shape: [2, 3, 4],
        };
        {
            let mut v = r.view_mut(labels.view_mut());
            assert_eq!(v.dim(), (4, 2, 3));
            v[[0, 1, 2]] = 7;
        }
        // target (0,1,2) → source i = t1 = 1, j = t2 = 2, k = 3 - t0 = 3
        assert_eq!(labels[[1, 2, 3]], 7);
        // The same cell through apply_array (the copying path) agrees.
        let moved = r.apply_array(labels.view());
        assert_eq!(moved[[0, 1, 2]], 7);
    }
}
