//! Surfaces (boundary voxels) and the distance-based metrics: HD95, ASSD, NSD.
//!
//! **Surface.** The surface of a mask is the set of its *boundary voxels*: foreground voxels
//! with at least one of their 6 face neighbours outside the mask, where voxels outside the
//! array count as outside. This is exactly medpy's `mask ^ binary_erosion(mask,
//! generate_binary_structure(3, 1))` (scipy erodes with `border_value = 0`) and MONAI's
//! `get_mask_edges` without sub-voxels. Distances are measured between voxel centres
//! (voxel-based surfaces, not DeepMind's surfels with areas).
//!
//! **Surface distances.** For every boundary voxel of A, the Euclidean distance in mm (with
//! the anisotropic voxel spacing) to the nearest boundary voxel of B, from an exact EDT
//! ([`super::distance`]). `pred_to_gt` and `gt_to_pred` are the two directed sets.

use super::distance::squared_edt;
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

/// Boundary voxels of `mask` (6-connectivity; the array border counts as outside).
pub fn boundary(mask: ArrayView3<bool>) -> Array3<bool> {
    let (n0, n1, n2) = mask.dim();
    let plane = n1 * n2;
    if plane * n0 == 0 {
        return Array3::from_elem((n0, n1, n2), false);
    }
    let mask = mask.as_standard_layout();
    let m = mask.as_slice().expect("standard layout is contiguous");
    let mut out = vec![false; n0 * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(i, o)| {
        let edge_i = i == 0 || i + 1 == n0;
        for j in 0..n1 {
            let edge_ij = edge_i || j == 0 || j + 1 == n1;
            for k in 0..n2 {
                let at = i * plane + j * n2 + k;
                if !m[at] {
                    continue;
                }
                o[j * n2 + k] = edge_ij
                    || k == 0
                    || k + 1 == n2
                    || !m[at - plane]
                    || !m[at + plane]
                    || !m[at - n2]
                    || !m[at + n2]
                    || !m[at - 1]
                    || !m[at + 1];
            }
        }
    });
    Array3::from_shape_vec((n0, n1, n2), out).expect("shape matches the buffer")
}

/// The two directed sets of surface distances between a prediction and a ground truth.
///
/// When the other surface is empty, every distance of a set is `+inf`; when a mask is empty
/// its own set is empty. The protocols decide what that means for each metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SurfaceDistances {
    /// For each boundary voxel of the prediction (C order), the distance in mm to the
    /// nearest boundary voxel of the ground truth.
    pub pred_to_gt: Vec<f64>,
    /// For each boundary voxel of the ground truth, the distance to the prediction's surface.
    pub gt_to_pred: Vec<f64>,
}

impl SurfaceDistances {
    /// Surfaces of `pred` and `gt` and their directed distances. Both masks must have the
    /// same shape; `spacing` is the voxel size in mm per array axis.
    ///
    /// Callers may pass a crop of the full volumes as long as the crop contains every
    /// foreground voxel of both masks: the surface is the same (a neighbour outside the
    /// crop is background either way) and so are the distances (every surface voxel lies
    /// inside the crop).
    pub fn compute(pred: ArrayView3<bool>, gt: ArrayView3<bool>, spacing: [f64; 3]) -> Self {
        assert_eq!(pred.dim(), gt.dim(), "pred and gt masks differ in shape");
        let bp = boundary(pred);
        let bg = boundary(gt);
        let pred_to_gt = directed(bp.view(), bg.view(), spacing);
        let gt_to_pred = directed(bg.view(), bp.view(), spacing);
        SurfaceDistances {
            pred_to_gt,
            gt_to_pred,
        }
    }

    /// Total number of boundary voxels on both surfaces.
    pub fn len(&self) -> usize {
        self.pred_to_gt.len() + self.gt_to_pred.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Symmetric HD95 (MONAI `compute_hausdorff_distance(percentile=95)`, DeepMind
    /// surface-distance): the larger of the two directed 95th percentiles.
    /// NaN when either set is empty.
    pub fn hd95_symmetric(&self) -> f64 {
        let a = percentile_linear(&self.pred_to_gt, 95.0);
        let b = percentile_linear(&self.gt_to_pred, 95.0);
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    }

    /// Pooled HD95 (medpy `hd95`): the 95th percentile of both directed sets concatenated.
    /// NaN when either set is empty.
    pub fn hd95_pooled(&self) -> f64 {
        if self.pred_to_gt.is_empty() || self.gt_to_pred.is_empty() {
            return f64::NAN;
        }
        let all: Vec<f64> = self
            .pred_to_gt
            .iter()
            .chain(&self.gt_to_pred)
            .copied()
            .collect();
        percentile_linear(&all, 95.0)
    }

    /// ASSD (medpy ≥ 0.5 `assd`, MONAI `compute_average_surface_distance(symmetric=True)`,
    /// Heimann et al. 2009): the mean of both directed sets taken together,
    /// `(Σ d(p→G) + Σ d(g→P)) / (|∂P| + |∂G|)`. NaN when either set is empty.
    pub fn assd(&self) -> f64 {
        if self.pred_to_gt.is_empty() || self.gt_to_pred.is_empty() {
            return f64::NAN;
        }
        let sum: f64 = self.pred_to_gt.iter().chain(&self.gt_to_pred).sum();
        sum / self.len() as f64
    }

    /// Normalised surface Dice at `tolerance_mm` (Nikolov et al. 2021, with voxel-counted
    /// surfaces as MONAI `compute_surface_dice(use_subvoxels=False)`): the fraction of
    /// boundary voxels of both surfaces within `tolerance_mm` (≤) of the other surface.
    /// NaN when both surfaces are empty; 0 when exactly one is.
    pub fn nsd(&self, tolerance_mm: f64) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let ok = self
            .pred_to_gt
            .iter()
            .chain(&self.gt_to_pred)
            .filter(|&&d| d <= tolerance_mm)
            .count();
        ok as f64 / self.len() as f64
    }
}

/// Distances (mm) from each `from` voxel to the nearest `to` voxel, in C order of `from`.
fn directed(from: ArrayView3<bool>, to: ArrayView3<bool>, spacing: [f64; 3]) -> Vec<f64> {
    if !from.iter().any(|&b| b) {
        return Vec::new();
    }
    let d2 = squared_edt(to, spacing);
    from.iter()
        .zip(d2.iter())
        .filter(|(&f, _)| f)
        .map(|(_, &d)| d.sqrt())
        .collect()
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics,
/// exactly as `numpy.percentile(values, q)` (method "linear") computes it, including its
/// lerp formula. NaN for an empty slice.
pub fn percentile_linear(values: &[f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let virtual_index = (q / 100.0) * (n - 1) as f64;
    let lo = (virtual_index.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let gamma = virtual_index - lo as f64;
    let mut v = values.to_vec();
    let (_, &mut a, upper) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let b = if hi == lo {
        a
    } else {
        upper.iter().copied().fold(f64::INFINITY, f64::min)
    };
    lerp(a, b, gamma)
}

/// numpy's `_lerp`: `a + (b − a)·t`, computed from the upper end when `t ≥ 0.5`.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    if a == b {
        // Also keeps inf == inf from turning into NaN.
        return a;
    }
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_examples() {
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85; [7] -> 7; [0, 10] 95 -> 9.5.
        assert!((percentile_linear(&[4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile_linear(&[7.0], 95.0), 7.0);
        assert!((percentile_linear(&[10.0, 0.0], 95.0) - 9.5).abs() < 1e-12);
        assert_eq!(percentile_linear(&[1.0, 2.0], 100.0), 2.0);
        assert_eq!(percentile_linear(&[1.0, 2.0], 0.0), 1.0);
        assert!(percentile_linear(&[], 95.0).is_nan());
        assert_eq!(percentile_linear(&[f64::INFINITY; 3], 95.0), f64::INFINITY);
    }

    #[test]
    fn boundary_of_a_cube_is_its_shell() {
        let mut m = Array3::from_elem((7, 7, 7), false);
        m.slice_mut(ndarray::s![1..6, 1..6, 1..6]).fill(true);
        let b = boundary(m.view());
        assert_eq!(b.iter().filter(|&&v| v).count(), 125 - 27);
        // A mask touching the array border: the border layer is boundary.
        let full = Array3::from_elem((3, 3, 3), true);
        assert_eq!(boundary(full.view()).iter().filter(|&&v| v).count(), 26);
    }
}
