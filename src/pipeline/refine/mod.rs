//! 3D post-processing of a label volume (`--postprocess`): per label, keep the largest
//! connected component, remove components below a volume, fill holes per slice. Off by
//! default: the paper's protocol scores the model's masks as they are.
//!
//! SDSeg segments a volume slice by slice, so its masks can disagree between neighbouring
//! slices: islands far from the organ, holes, ragged ends. 3D tools (nnU-Net, TotalSegmentator)
//! do not have that problem, and nnU-Net's answer for its own residual errors is the same
//! family of steps, chosen on validation data ([`PlanChooser`]).
//!
//! **Steps**, per label (a [`LabelSteps`] in a [`RefinePlan`]), on the label volume as `run`
//! writes it (the model's class ids on the input grid):
//! 1. *Components below `min_component_ml`*: 3D components (26-connectivity, see
//!    [`Components`]) with fewer voxels than `min_component_ml / voxel_ml` become background.
//! 2. *Largest component*: of the components left, only the one with most voxels stays (ties:
//!    the one whose first voxel comes first in C order, whatever the memory layout). With both steps, a label whose components are all below the
//!    minimum disappears.
//! 3. *Holes per slice*: in each 2D slice along the volume's **third array axis `k`** (the axis
//!    SDSeg slices along, so each hole is a defect of one model prediction: the stored `k` for
//!    the `btcv` and `sts3d` pipelines, whose slicing frame is `native`; a pipeline that
//!    reorients first slices along its frame's third axis, and [`RefinePlan::apply_view`] on
//!    the label volume seen in that frame fills along it), background voxels
//!    that the label encloses (not 4-connected to the slice border through non-label voxels)
//!    become the label: `scipy.ndimage.binary_fill_holes(labels[:, :, k] == label)` applied to
//!    the background only. A hole that contains another label keeps that label's voxels; only
//!    its background is filled (a vessel inside the liver stays a vessel, the gap around it
//!    becomes liver). A hole open to the slice border is not a hole.
//!
//! Steps 1–2 run for every label first (on the components of the original volume, computed
//! once for all labels), then step 3 label by label in ascending id. Removal never touches
//! another label's voxels (removed voxels become 0) and filling only turns background into the
//! label, so the steps of one label never change another label's voxels.

mod choose;
mod components;
mod holes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{s, Array3, ArrayViewMut3};
use serde::{Deserialize, Serialize};

pub use choose::{
    Choice, LabelChoice, MinComponentScore, PlanChooser, MIN_COMPONENT_ML_CANDIDATES,
};
pub use components::{Component, Components, Voxel};

/// The version of the [`RefinePlan`] JSON format.
pub const PLAN_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RefineError {
    #[error(
        "a {}x{}x{} volume is too large to post-process (at most {} voxels)",
        shape[0], shape[1], shape[2], u32::MAX
    )]
    VolumeTooLarge { shape: [usize; 3] },
    #[error(
        "post-processing removes components below a volume in ml, but the voxel volume from the \
         affine is {voxel_ml} ml (a positive, finite size is needed)"
    )]
    VoxelSize { voxel_ml: f64 },
    #[error("{path}: {error}")]
    PlanRead {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a post-processing plan: {message}")]
    PlanFormat { path: PathBuf, message: String },
}

impl crate::error::Classify for RefineError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// The voxel volume in ml (cm³) of a grid: |det| of the affine's 3×3 part (mm³) / 1000.
pub fn voxel_ml(affine: &crate::geometry::Affine) -> f64 {
    affine.det3().abs() / 1000.0
}

/// The steps applied to one label (see the module documentation for their order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSteps {
    /// Keep only the largest 3D connected component.
    #[serde(default)]
    pub largest_component: bool,
    /// Remove 3D components smaller than this many ml (`null` or 0: keep them).
    #[serde(default)]
    pub min_component_ml: Option<f64>,
    /// Fill holes per slice along the third array axis.
    #[serde(default)]
    pub fill_holes: bool,
}

impl LabelSteps {
    /// Largest component and per-slice hole filling (the `default` plan's steps).
    pub const LARGEST_AND_HOLES: LabelSteps = LabelSteps {
        largest_component: true,
        min_component_ml: None,
        fill_holes: true,
    };

    fn min_ml(&self) -> Option<f64> {
        self.min_component_ml.filter(|&m| m > 0.0)
    }

    fn removes(&self) -> bool {
        self.largest_component || self.min_ml().is_some()
    }

    /// No step at all.
    pub fn is_noop(&self) -> bool {
        !self.removes() && !self.fill_holes
    }

    /// Which of a label's components (voxel counts, in [`Components`] order) survive steps 1
    /// and 2.
    pub fn kept(&self, sizes: &[u64], voxel_ml: f64) -> Vec<bool> {
        let min_voxels = self.min_ml().map_or(0, |m| min_voxels(m, voxel_ml));
        let mut keep: Vec<bool> = sizes.iter().map(|&s| s >= min_voxels).collect();
        if self.largest_component {
            let best = (0..sizes.len())
                .filter(|&i| keep[i])
                .fold(None, |b: Option<usize>, i| match b {
                    Some(j) if sizes[j] >= sizes[i] => Some(j),
                    _ => Some(i),
                });
            keep.iter_mut()
                .enumerate()
                .for_each(|(i, k)| *k = Some(i) == best);
        }
        keep
    }

    /// The steps in words: `largest component, holes filled per slice`, or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.min_ml() {
            parts.push(format!("components below {m} ml removed"));
        }
        if self.largest_component {
            parts.push("largest component".to_string());
        }
        if self.fill_holes {
            parts.push("holes filled per slice".to_string());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The smallest voxel count of a component of at least `min_ml` ml. The quotient is rounded
/// down by a relative 1e-9 first, so a component of exactly `min_ml` (say 10 voxels of
/// 0.0016 ml against 0.016 ml, whose float product is 0.016000000000000004) is kept.
pub fn min_voxels(min_ml: f64, voxel_ml: f64) -> u64 {
    let q = min_ml / voxel_ml;
    (q - q * 1e-9).ceil().max(0.0) as u64
}

/// Which steps each label gets: `run --postprocess PLAN`, `eval --postprocess PLAN`, and what
/// `reproduce --choose-postprocessing` writes (`postprocessing.json`). Label ids are the values
/// of the label volume as `run` writes it.
///
/// JSON (`"version": 1`):
/// ```text
/// { "version": 1,
///   "labels": { "1": { "largest_component": true, "min_component_ml": null, "fill_holes": true },
///               "2": { "largest_component": false, "min_component_ml": 0.5, "fill_holes": false } },
///   "other_labels": null }      // steps for labels not listed; null: leave them alone
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefinePlan {
    pub version: u32,
    #[serde(default)]
    pub labels: BTreeMap<u16, LabelSteps>,
    #[serde(default)]
    pub other_labels: Option<LabelSteps>,
}

/// What [`RefinePlan::apply`] changed for one label present in the volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelEffect {
    pub label: u16,
    /// 3D components before post-processing.
    pub components: usize,
    pub components_removed: usize,
    pub voxels_removed: u64,
    pub voxels_filled: u64,
}

/// What [`RefinePlan::apply`] changed, per label that has steps and is present (ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefineSummary {
    pub labels: Vec<LabelEffect>,
}

impl RefinePlan {
    /// The plan that does nothing.
    pub fn none() -> RefinePlan {
        RefinePlan {
            version: PLAN_VERSION,
            labels: BTreeMap::new(),
            other_labels: None,
        }
    }

    /// `--postprocess default`: largest component and per-slice hole filling for every label,
    /// no removal by size.
    pub fn default_plan() -> RefinePlan {
        RefinePlan {
            other_labels: Some(LabelSteps::LARGEST_AND_HOLES),
            ..RefinePlan::none()
        }
    }

    /// `default` or a JSON file ([`RefinePlan::load`]).
    pub fn from_spec(spec: &str) -> Result<RefinePlan, RefineError> {
        if spec.trim().eq_ignore_ascii_case("default") {
            Ok(RefinePlan::default_plan())
        } else {
            RefinePlan::load(Path::new(spec))
        }
    }

    /// Read a plan: a plan document (`postprocessing.json`), or a report that holds one under
    /// `postprocessing.plan` (`reproduce.json`, a run report).
    pub fn load(path: &Path) -> Result<RefinePlan, RefineError> {
        let text = std::fs::read_to_string(path).map_err(|error| RefineError::PlanRead {
            path: path.to_path_buf(),
            error,
        })?;
        RefinePlan::from_json(&text).map_err(|message| RefineError::PlanFormat {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse and check a plan (or a report holding one under `postprocessing.plan`).
    pub fn from_json(text: &str) -> Result<RefinePlan, String> {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let doc = match doc.get("postprocessing") {
            Some(pp) => pp
                .get("plan")
                .filter(|p| !p.is_null())
                .cloned()
                .ok_or("its \"postprocessing\" has no \"plan\"")?,
            None => doc,
        };
        let plan: RefinePlan = serde_json::from_value(doc).map_err(|e| e.to_string())?;
        if plan.version != PLAN_VERSION {
            return Err(format!(
                "version {} (this program reads version {PLAN_VERSION})",
                plan.version
            ));
        }
        let steps = plan
            .labels
            .iter()
            .map(|(l, s)| (format!("label {l}"), s))
            .chain(plan.other_labels.iter().map(|s| ("other_labels".into(), s)));
        for (what, s) in steps {
            if let Some(m) = s.min_component_ml {
                if !m.is_finite() || m < 0.0 {
                    return Err(format!(
                        "{what}: min_component_ml {m} is not a volume in ml >= 0"
                    ));
                }
            }
        }
        Ok(plan)
    }

    /// The plan as pretty JSON (with a final newline).
    pub fn to_json_string(&self) -> String {
        format!(
            "{}\n",
            serde_json::to_string_pretty(self).expect("a plan serialises")
        )
    }

    /// The steps of `label`: its own entry, else `other_labels`.
    pub fn steps_for(&self, label: u16) -> Option<&LabelSteps> {
        self.labels.get(&label).or(self.other_labels.as_ref())
    }

    /// No label gets any step.
    pub fn is_noop(&self) -> bool {
        self.labels
            .values()
            .chain(self.other_labels.iter())
            .all(LabelSteps::is_noop)
    }

    /// One line: `label 1: largest component, holes filled per slice; other labels: none`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .labels
            .iter()
            .map(|(l, s)| format!("label {l}: {}", s.describe()))
            .collect();
        match &self.other_labels {
            Some(s) if self.labels.is_empty() => {
                parts.push(format!("every label: {}", s.describe()))
            }
            Some(s) => parts.push(format!("other labels: {}", s.describe())),
            None if self.labels.is_empty() => parts.push("none".into()),
            None => {}
        }
        parts.join("; ")
    }

    /// Post-process `labels` in place (see the module documentation). `voxel_ml` is the voxel
    /// volume in ml ([`voxel_ml`] of the grid's affine); it matters only for
    /// `min_component_ml`.
    ///
    /// # Errors
    /// [`RefineError::VoxelSize`] when a step removes by volume and `voxel_ml` is not positive
    /// and finite; [`RefineError::VolumeTooLarge`] beyond `u32::MAX` voxels.
    pub fn apply(
        &self,
        labels: &mut Array3<u16>,
        voxel_ml: f64,
    ) -> Result<RefineSummary, RefineError> {
        self.apply_view(labels.view_mut(), voxel_ml)
    }

    /// [`RefinePlan::apply`] on a view in any memory layout: holes are filled along the view's
    /// third axis, so a label volume seen in the pipeline's slicing frame
    /// (`Reorientation::view_mut`, no copy) is filled along the axis the model sliced.
    pub fn apply_view(
        &self,
        mut labels: ArrayViewMut3<'_, u16>,
        voxel_ml: f64,
    ) -> Result<RefineSummary, RefineError> {
        if self.is_noop() {
            return Ok(RefineSummary::default());
        }
        let by_volume = self
            .labels
            .values()
            .chain(self.other_labels.iter())
            .any(|s| s.min_ml().is_some());
        if by_volume && !(voxel_ml.is_finite() && voxel_ml > 0.0) {
            return Err(RefineError::VoxelSize { voxel_ml });
        }
        let comps = Components::new(labels.view())?;
        let mut by_label: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, c) in comps.components().iter().enumerate() {
            by_label.entry(c.label).or_default().push(i);
        }
        let mut drop = vec![false; comps.len()];
        let mut effects = Vec::new();
        let mut fills = Vec::new();
        for (&label, members) in &by_label {
            let Some(steps) = self.steps_for(label).filter(|s| !s.is_noop()) else {
                continue;
            };
            let sizes: Vec<u64> = members
                .iter()
                .map(|&i| comps.components()[i].voxels)
                .collect();
            let keep = steps.kept(&sizes, voxel_ml);
            let mut effect = LabelEffect {
                label,
                components: members.len(),
                ..LabelEffect::default()
            };
            for ((&i, &k), &n) in members.iter().zip(&keep).zip(&sizes) {
                if !k {
                    drop[i] = true;
                    effect.components_removed += 1;
                    effect.voxels_removed += n;
                }
            }
            if steps.fill_holes {
                let kept: Vec<usize> = members
                    .iter()
                    .zip(&keep)
                    .filter_map(|(&i, &k)| k.then_some(i))
                    .collect();
                if let Some(block) = fill_block(&comps, &kept) {
                    fills.push((effects.len(), block));
                }
            }
            effects.push(effect);
        }
        comps.zero(labels.view_mut(), [0; 3], &drop);
        for (e, [r0, r1, r2]) in fills {
            let label = effects[e].label;
            let block = labels.slice_mut(s![r0, r1, r2]);
            effects[e].voxels_filled = holes::fill_holes(block, label, &|_| false).filled;
        }
        Ok(RefineSummary { labels: effects })
    }
}

/// The block in which the holes of the components `kept` are filled: their joint bounding box,
/// widened by one voxel in-plane (axes 0 and 1) within the volume. `None` when nothing is kept.
fn fill_block(comps: &Components, kept: &[usize]) -> Option<[std::ops::Range<usize>; 3]> {
    let shape = comps.shape();
    let mut bbox: Option<[std::ops::Range<usize>; 3]> = None;
    for &i in kept {
        let b = &comps.components()[i].bbox;
        bbox = Some(match bbox {
            None => b.clone(),
            Some(u) => std::array::from_fn(|a| u[a].start.min(b[a].start)..u[a].end.max(b[a].end)),
        });
    }
    let mut bbox = bbox?;
    for a in 0..2 {
        bbox[a] = bbox[a].start.saturating_sub(1)..(bbox[a].end + 1).min(shape[a]);
    }
    Some(bbox)
}

#[cfg(test)]
mod tests;
