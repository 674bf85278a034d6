//! Voxel counts per label (one parallel pass over both volumes) and bounding boxes.

use ndarray::{ArrayView3, Axis};
use rayon::prelude::*;

/// Voxel counts of one label: true positives, false positives, false negatives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Counts {
    /// |pred| = TP + FP.
    pub fn n_pred(&self) -> u64 {
        self.tp + self.fp
    }
    /// |gt| = TP + FN.
    pub fn n_gt(&self) -> u64 {
        self.tp + self.fn_
    }
    /// Standard Dice 2·TP / (2·TP + FP + FN); NaN when both masks are empty.
    pub fn dice(&self) -> f64 {
        let den = 2 * self.tp + self.fp + self.fn_;
        if den == 0 {
            f64::NAN
        } else {
            (2 * self.tp) as f64 / den as f64
        }
    }
    /// Standard IoU (Jaccard) TP / (TP + FP + FN); NaN when both masks are empty.
    pub fn iou(&self) -> f64 {
        let den = self.tp + self.fp + self.fn_;
        if den == 0 {
            f64::NAN
        } else {
            self.tp as f64 / den as f64
        }
    }
}

/// Inclusive voxel bounding box `[lo, hi]` per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BBox {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

impl BBox {
    fn add(&mut self, p: [usize; 3]) {
        for (d, &x) in p.iter().enumerate() {
            self.lo[d] = self.lo[d].min(x);
            self.hi[d] = self.hi[d].max(x);
        }
    }
    fn union(self, o: BBox) -> BBox {
        let mut b = self;
        b.add(o.lo);
        b.add(o.hi);
        b
    }
    /// The slice ranges `lo..=hi` for `ndarray::s!`.
    pub fn ranges(&self) -> [std::ops::Range<usize>; 3] {
        [0, 1, 2].map(|d| self.lo[d]..self.hi[d] + 1)
    }
}

/// Counts of one label plus the bounding box of `pred == label || gt == label`
/// (`None` when the label is in neither volume).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelStats {
    pub counts: Counts,
    pub bbox: Option<BBox>,
}

fn merge_bbox(a: Option<BBox>, b: Option<BBox>) -> Option<BBox> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.union(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Per-label counts and union bounding boxes for `labels`, in one parallel pass.
/// `pred` and `gt` must have the same shape. Voxels whose value is not in `labels` count
/// as background for every listed label.
pub fn label_stats(pred: ArrayView3<u16>, gt: ArrayView3<u16>, labels: &[u16]) -> Vec<LabelStats> {
    assert_eq!(pred.dim(), gt.dim(), "pred and gt differ in shape");
    const NONE: u32 = u32::MAX;
    let mut slot = vec![NONE; 1 << 16];
    for (s, &l) in labels.iter().enumerate() {
        slot[l as usize] = s as u32;
    }
    let n = labels.len();
    let slabs = pred.axis_iter(Axis(0)).into_par_iter();
    slabs
        .zip(gt.axis_iter(Axis(0)).into_par_iter())
        .enumerate()
        .map(|(i, (p2, g2))| {
            let mut st = vec![LabelStats::default(); n];
            // Per row: the k-range of each label, folded into the bbox once per row.
            let mut row_lo = vec![usize::MAX; n];
            let mut row_hi = vec![0usize; n];
            let mut touched: Vec<usize> = Vec::with_capacity(n);
            for (j, (prow, grow)) in p2.outer_iter().zip(g2.outer_iter()).enumerate() {
                let mut mark = |s: usize, k: usize| {
                    if row_lo[s] == usize::MAX {
                        touched.push(s);
                        row_lo[s] = k;
                    }
                    row_hi[s] = k;
                };
                for (k, (&p, &g)) in prow.iter().zip(grow.iter()).enumerate() {
                    let sp = slot[p as usize];
                    if p == g {
                        if sp != NONE {
                            st[sp as usize].counts.tp += 1;
                            mark(sp as usize, k);
                        }
                        continue;
                    }
                    if sp != NONE {
                        st[sp as usize].counts.fp += 1;
                        mark(sp as usize, k);
                    }
                    let sg = slot[g as usize];
                    if sg != NONE {
                        st[sg as usize].counts.fn_ += 1;
                        mark(sg as usize, k);
                    }
                }
                for s in touched.drain(..) {
                    let b = BBox {
                        lo: [i, j, row_lo[s]],
                        hi: [i, j, row_hi[s]],
                    };
                    st[s].bbox = merge_bbox(st[s].bbox, Some(b));
                    row_lo[s] = usize::MAX;
                }
            }
            st
        })
        .reduce(
            || vec![LabelStats::default(); n],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    x.counts.tp += y.counts.tp;
                    x.counts.fp += y.counts.fp;
                    x.counts.fn_ += y.counts.fn_;
                    x.bbox = merge_bbox(x.bbox, y.bbox);
                }
                a
            },
        )
}

/// Sorted non-zero label values present in either volume.
pub fn present_labels(pred: ArrayView3<u16>, gt: ArrayView3<u16>) -> Vec<u16> {
    let seen = pred
        .axis_iter(Axis(0))
        .into_par_iter()
        .chain(gt.axis_iter(Axis(0)).into_par_iter())
        .map(|slab| {
            let mut seen = vec![false; 1 << 16];
            slab.iter().for_each(|&v| seen[v as usize] = true);
            seen
        })
        .reduce(
            || vec![false; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
                a
            },
        );
    (1..=u16::MAX).filter(|&l| seen[l as usize]).collect()
}
