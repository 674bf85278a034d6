//! Empty-label conventions ("protocols"), the SDSeg 256² in-plane resampling, and summaries.
//!
//! | case (one label, one volume)  | `sdseg` Dice / IoU | `nnunet` Dice / IoU | `monai` Dice / IoU | HD95, ASSD                        | NSD |
//! |-------------------------------|--------------------|---------------------|--------------------|-----------------------------------|-----|
//! | pred and gt both empty        | 0 / 0              | NaN / NaN           | NaN / NaN          | NaN                               | NaN |
//! | pred non-empty, gt empty      | **1** / 0          | 0 / 0               | NaN / NaN          | NaN (`monai`: +inf)               | 0   |
//! | pred empty, gt non-empty      | 0 / 0              | 0 / 0               | 0 / 0              | NaN (`monai`: +inf)               | 0   |
//! | both non-empty                | 2TP/(\|P\|+\|G\|+1e-10) / TP/(\|P\|+\|G\|−TP+1e-10) | 2TP/(2TP+FP+FN) / TP/(TP+FP+FN) | same as nnunet | see [`super::surface`] | see [`super::surface`] |
//!
//! * `sdseg`: the official code (`scripts/slice2seg.py::dice_score, iou_score`, reference §4),
//!   including its `1e-10` and its inconsistent empty-target rules; computed per volume after
//!   resampling pred and gt to 256×256 in-plane with nearest neighbour
//!   (`crate::pipeline::resize_labels_nearest`, scipy `zoom(order=0)` exactly; `eval` does
//!   this); the mean runs over all volumes.
//! * `nnunet`: nnU-Net's `compute_metrics` (NaN when TP+FP+FN = 0), nanmean over cases.
//! * `monai`: `DiceMetric(ignore_empty=True)` / `MeanIoU(ignore_empty=True)`; the distance
//!   rules of `get_surface_distance` (+inf when exactly one side is empty, NaN when both are),
//!   `SurfaceDiceMetric` for NSD; the mean skips NaN (MONAI's `do_metric_reduction`), so one
//!   +inf case makes a label's mean +inf.
//!
//! Distances are not part of the official SDSeg or nnU-Net code; under both we report NaN
//! when either mask is empty. NSD follows MONAI and DeepMind in every protocol.

use super::overlap::Counts;
use std::fmt;

/// Which empty-label convention (and, for `sdseg`, which resolution) to score under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The official SDSeg evaluation code, at 256×256 in-plane.
    Sdseg,
    /// nnU-Net: NaN when TP+FP+FN = 0, nanmean. Native resolution.
    #[default]
    Nnunet,
    /// MONAI `ignore_empty=True`: NaN when the ground truth is empty. Native resolution.
    Monai,
}

/// Which HD95 definition to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hd95Mode {
    /// max(P95(pred→gt), P95(gt→pred)): MONAI, DeepMind surface-distance.
    #[default]
    Symmetric,
    /// P95 of both directed sets concatenated: medpy `hd95`.
    Pooled,
}

/// In-plane size of the official SDSeg evaluation grid.
pub const SDSEG_IN_PLANE: usize = 256;

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sdseg => "sdseg",
            Protocol::Nnunet => "nnunet",
            Protocol::Monai => "monai",
        }
    }

    /// One paragraph stating the rules, printed with every result.
    pub fn description(self) -> &'static str {
        match self {
            Protocol::Sdseg => {
                "official SDSeg code (slice2seg.py dice_score/iou_score): pred and gt resampled \
                 to 256x256 in-plane (nearest, scipy zoom order 0); Dice = 0 when pred is empty \
                 (also when both are), 1 when pred is non-empty and gt empty, else \
                 2TP/(|P|+|G|+1e-10); IoU = TP/(|P|+|G|-TP+1e-10) (0 on an empty gt); mean over \
                 all volumes; HD95/ASSD undefined when either mask is empty"
            }
            Protocol::Nnunet => {
                "nnU-Net: Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), undefined (NaN) when \
                 TP+FP+FN = 0; means skip NaN; native resolution; HD95/ASSD undefined when \
                 either mask is empty"
            }
            Protocol::Monai => {
                "MONAI ignore_empty=True: Dice/IoU undefined (NaN) when gt is empty, 0 when gt \
                 is non-empty and pred empty; HD95/ASSD +inf when exactly one mask is empty, \
                 NaN when both are (get_surface_distance); means skip NaN; native resolution"
            }
        }
    }

    /// Whether scores are computed after resampling to 256×256 in-plane.
    pub fn resamples_to_sdseg_grid(self) -> bool {
        self == Protocol::Sdseg
    }

    /// Dice for one label from its counts under this protocol.
    pub fn dice(self, c: Counts) -> f64 {
        let (np, ng) = (c.n_pred(), c.n_gt());
        match self {
            Protocol::Sdseg => {
                if np == 0 {
                    0.0
                } else if ng == 0 {
                    1.0
                } else {
                    2.0 * c.tp as f64 / (np as f64 + ng as f64 + 1e-10)
                }
            }
            Protocol::Nnunet => c.dice(),
            Protocol::Monai => {
                if ng == 0 {
                    f64::NAN
                } else {
                    c.dice()
                }
            }
        }
    }

    /// IoU for one label from its counts under this protocol.
    pub fn iou(self, c: Counts) -> f64 {
        let (np, ng) = (c.n_pred(), c.n_gt());
        match self {
            Protocol::Sdseg => c.tp as f64 / (np as f64 + ng as f64 - c.tp as f64 + 1e-10),
            Protocol::Nnunet => c.iou(),
            Protocol::Monai => {
                if ng == 0 {
                    f64::NAN
                } else {
                    c.iou()
                }
            }
        }
    }

    /// HD95 / ASSD when exactly one of pred and gt is empty.
    pub fn distance_when_one_empty(self) -> f64 {
        match self {
            Protocol::Monai => f64::INFINITY,
            Protocol::Sdseg | Protocol::Nnunet => f64::NAN,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Hd95Mode {
    pub fn name(self) -> &'static str {
        match self {
            Hd95Mode::Symmetric => "symmetric",
            Hd95Mode::Pooled => "pooled",
        }
    }
    pub fn description(self) -> &'static str {
        match self {
            Hd95Mode::Symmetric => {
                "symmetric: max of the two directed 95th percentiles of boundary-voxel distances \
                 (MONAI, DeepMind surface-distance)"
            }
            Hd95Mode::Pooled => {
                "pooled: 95th percentile of both directed boundary-voxel distance sets together \
                 (medpy hd95)"
            }
        }
    }
}

impl fmt::Display for Hd95Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Voxel spacing after resampling (`crate::pipeline::resize_labels_nearest`) from in-plane
/// `shape` to `size`:
/// the field of view is kept, so `s · n / m` on axes 0 and 1.
pub fn resampled_spacing(spacing: [f64; 3], shape: [usize; 3], size: [usize; 2]) -> [f64; 3] {
    [
        spacing[0] * shape[0] as f64 / size[0] as f64,
        spacing[1] * shape[1] as f64 / size[1] as f64,
        spacing[2],
    ]
}

/// Mean ± population standard deviation (numpy's default, ddof = 0) over the defined
/// values. NaN values (undefined cases) are skipped and not counted in `n`; +inf values
/// are kept (so the mean is +inf and the std NaN).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    /// Number of defined (non-NaN) values the mean is over.
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stat {
        let v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        let n = v.len();
        if n == 0 {
            return Stat {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        Stat {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_skips_nan_keeps_inf() {
        let s = Stat::of([1.0, f64::NAN, 3.0]);
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 2));
        let s = Stat::of([1.0, f64::INFINITY]);
        assert_eq!(s.mean, f64::INFINITY);
        assert!(Stat::of([f64::NAN]).mean.is_nan());
    }
}
