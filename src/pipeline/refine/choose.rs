//! Choosing a [`RefinePlan`] on cases with ground truth, as nnU-Net chooses its
//! post-processing: a step is kept for a label only when it raises that label's mean Dice over
//! the cases.
//!
//! Per label, with Dice computed at the native resolution with nnU-Net's rule
//! (2TP / (2TP + FP + FN), undefined when both masks are empty; means skip undefined cases):
//! 1. *Removal*: the best of "largest component" and "components below `m` ml removed" for
//!    every `m` of [`MIN_COMPONENT_ML_CANDIDATES`] is kept when its mean Dice is higher than
//!    without removal (ties go to the largest component, then to the smaller `m`).
//! 2. *Holes*: per-slice hole filling, on top of the removal chosen in 1, is kept when it raises
//!    the mean Dice further.
//!
//! Each label is judged on its own steps applied to the prediction as it is (another label's
//! steps can only change a label's hole filling, where the other label's removed voxels lie
//! inside this label's holes; that second-order effect is not modelled). nnU-Net also tries
//! the largest component of all foreground labels together first; a plan here is per label.
//!
//! Cases stream through [`PlanChooser::add_case`] one at a time: only per-label sums are
//! kept, so the cost is one component labelling per case plus, per label and distinct set of
//! kept components, one hole filling inside the label's bounding box.

use ndarray::{s, ArrayView3};
use serde::Serialize;

use super::holes::fill_holes;
use super::{fill_block, Components, LabelSteps, RefineError, RefinePlan, PLAN_VERSION};

/// The minimum component volumes (ml) tried by the chooser.
pub const MIN_COMPONENT_ML_CANDIDATES: [f64; 5] = [0.001, 0.01, 0.1, 1.0, 10.0];

/// Mean over cases of a Dice that may be undefined (NaN skipped).
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    sum: f64,
    n: usize,
}

impl Tally {
    fn add(&mut self, dice: f64) {
        if !dice.is_nan() {
            self.sum += dice;
            self.n += 1;
        }
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
}

/// The removal candidates in choice order: index 0 = nothing removed, 1 = largest component,
/// 2.. = [`MIN_COMPONENT_ML_CANDIDATES`].
fn removal_candidates() -> Vec<LabelSteps> {
    let mut v = vec![
        LabelSteps::default(),
        LabelSteps {
            largest_component: true,
            ..LabelSteps::default()
        },
    ];
    v.extend(MIN_COMPONENT_ML_CANDIDATES.iter().map(|&m| LabelSteps {
        min_component_ml: Some(m),
        ..LabelSteps::default()
    }));
    v
}

#[derive(Clone, Debug)]
struct LabelTally {
    /// Per removal candidate: without and with hole filling.
    plain: Vec<Tally>,
    filled: Vec<Tally>,
}

/// Accumulates the Dice of every candidate step over the cases; [`PlanChooser::choose`] decides.
#[derive(Clone, Debug)]
pub struct PlanChooser {
    labels: Vec<u16>,
    candidates: Vec<LabelSteps>,
    tallies: Vec<LabelTally>,
    cases: usize,
}

fn dice(tp: u64, n_pred: u64, n_gt: u64) -> f64 {
    let den = n_pred + n_gt;
    if den == 0 {
        f64::NAN
    } else {
        (2 * tp) as f64 / den as f64
    }
}

/// The mean Dice of one minimum component volume, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MinComponentScore {
    pub min_component_ml: f64,
    pub dice: Option<f64>,
}

/// One label's decision and the mean Dice behind it (`None`: undefined on every case).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelChoice {
    pub label: u16,
    /// Cases where the label's Dice is defined without post-processing.
    pub cases_scored: usize,
    pub dice_without: Option<f64>,
    pub dice_largest_component: Option<f64>,
    pub dice_min_component: Vec<MinComponentScore>,
    /// Hole filling on top of the chosen removal.
    pub dice_fill_holes: Option<f64>,
    pub chosen: LabelSteps,
    pub dice_chosen: Option<f64>,
}

/// The chosen plan and the evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub plan: RefinePlan,
    pub cases: usize,
    pub labels: Vec<LabelChoice>,
}

fn opt(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

impl PlanChooser {
    /// Choose for these label ids (the ones scored; values of prediction and ground truth).
    pub fn new(labels: &[u16]) -> PlanChooser {
        let candidates = removal_candidates();
        let empty = LabelTally {
            plain: vec![Tally::default(); candidates.len()],
            filled: vec![Tally::default(); candidates.len()],
        };
        PlanChooser {
            labels: labels.to_vec(),
            tallies: vec![empty; labels.len()],
            candidates,
            cases: 0,
        }
    }

    /// Cases added so far.
    pub fn cases(&self) -> usize {
        self.cases
    }

    /// Score every candidate on one case: `pred` and `gt` on the same grid (label values
    /// already in the scored label space), `voxel_ml` from its affine.
    ///
    /// # Errors
    /// [`RefineError::VoxelSize`] when `voxel_ml` is not positive and finite.
    pub fn add_case(
        &mut self,
        pred: ArrayView3<'_, u16>,
        gt: ArrayView3<'_, u16>,
        voxel_ml: f64,
    ) -> Result<(), RefineError> {
        assert_eq!(
            pred.shape(),
            gt.shape(),
            "prediction and ground truth grids"
        );
        if !(voxel_ml.is_finite() && voxel_ml > 0.0) {
            return Err(RefineError::VoxelSize { voxel_ml });
        }
        let comps = Components::new(pred)?;
        let tp = comps.overlap_with(gt);
        let mut gt_counts = vec![0u64; usize::from(u16::MAX) + 1];
        for &v in gt.iter() {
            gt_counts[usize::from(v)] += 1;
        }
        for (li, &label) in self.labels.iter().enumerate() {
            let members: Vec<usize> = (0..comps.len())
                .filter(|&i| comps.components()[i].label == label)
                .collect();
            let sizes: Vec<u64> = members
                .iter()
                .map(|&i| comps.components()[i].voxels)
                .collect();
            let n_gt = gt_counts[usize::from(label)];
            // (kept set, filled voxels, filled voxels in the ground truth): hole filling depends
            // only on the kept set, and several candidates often keep the same one.
            let mut fills: Vec<(Vec<bool>, u64, u64)> = Vec::new();
            for (ci, cand) in self.candidates.iter().enumerate() {
                let keep = cand.kept(&sizes, voxel_ml);
                let (mut t, mut n) = (0u64, 0u64);
                for ((&i, &k), &sz) in members.iter().zip(&keep).zip(&sizes) {
                    if k {
                        t += tp[i];
                        n += sz;
                    }
                }
                let (f, h) = match fills.iter().find(|(k, _, _)| *k == keep) {
                    Some(&(_, f, h)) => (f, h),
                    None => {
                        let (f, h) = fill_for(&comps, pred, gt, label, &members, &keep);
                        fills.push((keep, f, h));
                        (f, h)
                    }
                };
                let tally = &mut self.tallies[li];
                tally.plain[ci].add(dice(t, n, n_gt));
                tally.filled[ci].add(dice(t + h, n + f, n_gt));
            }
        }
        self.cases += 1;
        Ok(())
    }

    /// Decide per label (see the module documentation).
    pub fn choose(&self) -> Choice {
        let mut plan = RefinePlan {
            version: PLAN_VERSION,
            labels: Default::default(),
            other_labels: None,
        };
        let mut labels = Vec::new();
        for (li, &label) in self.labels.iter().enumerate() {
            let t = &self.tallies[li];
            let mut best = 0;
            for ci in 1..self.candidates.len() {
                if t.plain[ci].mean() > t.plain[best].mean() {
                    best = ci;
                }
            }
            let mut chosen = self.candidates[best];
            let mut dice_chosen = t.plain[best].mean();
            if t.filled[best].mean() > dice_chosen {
                chosen.fill_holes = true;
                dice_chosen = t.filled[best].mean();
            }
            plan.labels.insert(label, chosen);
            labels.push(LabelChoice {
                label,
                cases_scored: t.plain[0].n,
                dice_without: opt(t.plain[0].mean()),
                dice_largest_component: opt(t.plain[1].mean()),
                dice_min_component: MIN_COMPONENT_ML_CANDIDATES
                    .iter()
                    .enumerate()
                    .map(|(i, &m)| MinComponentScore {
                        min_component_ml: m,
                        dice: opt(t.plain[i + 2].mean()),
                    })
                    .collect(),
                dice_fill_holes: opt(t.filled[best].mean()),
                chosen,
                dice_chosen: opt(dice_chosen),
            });
        }
        Choice {
            plan,
            cases: self.cases,
            labels,
        }
    }
}

/// Fill the holes of `label` after removing its components not in `keep` (on a copy of the
/// label's block of `pred`): (voxels filled, of which in `gt`'s `label`).
fn fill_for(
    comps: &Components,
    pred: ArrayView3<'_, u16>,
    gt: ArrayView3<'_, u16>,
    label: u16,
    members: &[usize],
    keep: &[bool],
) -> (u64, u64) {
    let kept: Vec<usize> = members
        .iter()
        .zip(keep)
        .filter_map(|(&i, &k)| k.then_some(i))
        .collect();
    let Some([r0, r1, r2]) = fill_block(comps, &kept) else {
        return (0, 0);
    };
    let origin = [r0.start, r1.start, r2.start];
    let mut block = pred.slice(s![r0, r1, r2]).to_owned();
    let mut drop = vec![false; comps.len()];
    for (&i, &k) in members.iter().zip(keep) {
        drop[i] = !k;
    }
    comps.zero(block.view_mut(), origin, &drop);
    let hit = |p: [usize; 3]| gt[[origin[0] + p[0], origin[1] + p[1], origin[2] + p[2]]] == label;
    let n = fill_holes(block.view_mut(), label, &hit);
    (n.filled, n.hits)
}
