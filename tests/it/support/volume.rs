//! Synthetic volumes for the DICOM tests: the abdomen phantom, re-placed in space.

use sdseg_volume::geometry::Affine;
use sdseg_volume::phantom::{abdomen_phantom, PhantomParams};
use sdseg_volume::volume::{Provenance, Volume};

/// The abdomen phantom of `shape` with `PhantomParams::new`'s defaults, varied by `seed`.
pub fn phantom(shape: [usize; 3], seed: u64) -> Volume {
    abdomen_phantom(&PhantomParams::new(shape), seed).volume
}

/// A volume with a different affine but the same voxels.
pub fn with_affine(v: &Volume, a: Affine) -> Volume {
    Volume::new(v.data().clone(), a, Provenance::synthetic()).unwrap()
}

/// Rotation about a unit axis by `deg`, applied to the 3×3 part of `a`.
#[allow(clippy::needless_range_loop)]
pub fn rotated(a: &Affine, axis: [f64; 3], deg: f64) -> Affine {
    let (s, c) = deg.to_radians().sin_cos();
    let [x, y, z] = axis;
    let r = [
        [
            c + x * x * (1.0 - c),
            x * y * (1.0 - c) - z * s,
            x * z * (1.0 - c) + y * s,
        ],
        [
            y * x * (1.0 - c) + z * s,
            c + y * y * (1.0 - c),
            y * z * (1.0 - c) - x * s,
        ],
        [
            z * x * (1.0 - c) - y * s,
            z * y * (1.0 - c) + x * s,
            c + z * z * (1.0 - c),
        ],
    ];
    let mut out = *a;
    for row in 0..3 {
        for col in 0..3 {
            out.0[row][col] = (0..3).map(|k| r[row][k] * a.0[k][col]).sum();
        }
    }
    out
}
