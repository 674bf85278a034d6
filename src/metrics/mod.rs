//! Volume-level segmentation metrics: pure functions on label arrays and a voxel spacing.
//! Nothing here opens files (that is [`crate::eval`]).
//!
//! Per label, over one 3D volume:
//! * **Dice**, **IoU** (Jaccard) and the voxel counts TP, FP, FN, |pred|, |gt|
//!   ([`overlap`]); what happens when a mask is empty is the protocol's rule ([`protocol`]).
//! * **HD95** in mm, [`Hd95Mode::Symmetric`] by default (max of the two directed 95th
//!   percentiles, as MONAI and DeepMind surface-distance) or [`Hd95Mode::Pooled`] (medpy's
//!   `hd95`: the 95th percentile of both directed sets together). Percentiles interpolate
//!   linearly between order statistics, as `numpy.percentile`.
//! * **ASSD** in mm: the mean of all boundary-voxel distances of both directions together
//!   (medpy ≥ 0.5 `assd`, MONAI `symmetric=True`).
//! * **NSD** at a tolerance τ in mm: the fraction of boundary voxels of both surfaces within
//!   τ (≤) of the other surface (voxel-counted surfaces, MONAI `use_subvoxels=False`; not
//!   DeepMind's surfel areas).
//!
//! Surfaces are 6-connected boundary voxels (medpy's `binary_erosion` with connectivity 1,
//! array border = outside) and distances come from an exact Euclidean distance transform
//! with the anisotropic spacing ([`distance`], [`surface`]). The spacing comes from the
//! affine ([`crate::Affine::spacing`]).
//!
//! [`image`] holds the 2D image-similarity measures of the stability evaluation (PSNR, SSIM,
//! MS-SSIM).

pub mod distance;
pub mod image;
pub mod overlap;
pub mod protocol;
pub mod surface;
pub mod uncertainty;

pub use overlap::Counts;
pub use protocol::{Hd95Mode, Protocol, Stat};
pub use surface::SurfaceDistances;

use ndarray::{s, ArrayView3};

/// How to score: empty-label protocol, HD95 definition and NSD tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricOptions {
    pub protocol: Protocol,
    pub hd95: Hd95Mode,
    /// NSD tolerance τ in mm.
    pub nsd_tolerance_mm: f64,
}

/// Default NSD tolerance in mm (the FLARE challenges' choice for abdominal organs).
pub const DEFAULT_NSD_TOLERANCE_MM: f64 = 1.0;

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            protocol: Protocol::Nnunet,
            hd95: Hd95Mode::Symmetric,
            nsd_tolerance_mm: DEFAULT_NSD_TOLERANCE_MM,
        }
    }
}

/// The scores of one label in one volume. NaN = undefined (JSON `null`); +inf appears only
/// for HD95/ASSD under [`Protocol::Monai`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelMetrics {
    pub label: u16,
    pub counts: Counts,
    pub dice: f64,
    pub iou: f64,
    pub hd95_mm: f64,
    pub assd_mm: f64,
    pub nsd: f64,
}

impl LabelMetrics {
    /// The scores of a label absent from both volumes (no need to look at the voxels).
    pub fn absent(label: u16, protocol: Protocol) -> LabelMetrics {
        let counts = Counts::default();
        LabelMetrics {
            label,
            counts,
            dice: protocol.dice(counts),
            iou: protocol.iou(counts),
            hd95_mm: f64::NAN,
            assd_mm: f64::NAN,
            nsd: f64::NAN,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prediction and ground truth differ in shape: pred {pred:?}, gt {gt:?}")]
    ShapeMismatch { pred: [usize; 3], gt: [usize; 3] },
    #[error("voxel spacing must be finite and positive, got {0:?} mm")]
    BadSpacing([f64; 3]),
    #[error("NSD tolerance must be finite and >= 0, got {0} mm")]
    BadTolerance(f64),
}

impl crate::error::Classify for MetricsError {
    fn is_input_error(&self) -> bool {
        true
    }
}

fn dim3<T>(a: &ArrayView3<T>) -> [usize; 3] {
    let (x, y, z) = a.dim();
    [x, y, z]
}

/// Score every label in `labels` (background 0 may be listed but usually is not) on the
/// grid as given, with voxel size `spacing` in mm per array axis.
///
/// Under [`Protocol::Sdseg`] the official numbers are computed on the 256×256 in-plane grid:
/// resample first with `crate::pipeline::resize_labels_nearest` and
/// [`protocol::resampled_spacing`] (`eval` does).
///
/// Labels run one after another; each one's distance transforms run in parallel and only
/// cover the bounding box of `pred == l || gt == l`, which is exact (see
/// [`SurfaceDistances::compute`]).
pub fn evaluate(
    pred: ArrayView3<u16>,
    gt: ArrayView3<u16>,
    spacing: [f64; 3],
    labels: &[u16],
    opts: &MetricOptions,
) -> Result<Vec<LabelMetrics>, MetricsError> {
    if pred.dim() != gt.dim() {
        return Err(MetricsError::ShapeMismatch {
            pred: dim3(&pred),
            gt: dim3(&gt),
        });
    }
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(MetricsError::BadSpacing(spacing));
    }
    if !opts.nsd_tolerance_mm.is_finite() || opts.nsd_tolerance_mm < 0.0 {
        return Err(MetricsError::BadTolerance(opts.nsd_tolerance_mm));
    }
    let stats = overlap::label_stats(pred, gt, labels);
    let p = opts.protocol;
    Ok(labels
        .iter()
        .zip(stats)
        .map(|(&label, st)| {
            let c = st.counts;
            let mut m = LabelMetrics::absent(label, p);
            m.counts = c;
            m.dice = p.dice(c);
            m.iou = p.iou(c);
            match (c.n_pred() > 0, c.n_gt() > 0, st.bbox) {
                (true, true, Some(bb)) => {
                    let [r0, r1, r2] = bb.ranges();
                    let pm = pred.slice(s![r0.clone(), r1.clone(), r2.clone()]);
                    let gm = gt.slice(s![r0, r1, r2]);
                    let sd = SurfaceDistances::compute(
                        pm.mapv(|v| v == label).view(),
                        gm.mapv(|v| v == label).view(),
                        spacing,
                    );
                    m.hd95_mm = match opts.hd95 {
                        Hd95Mode::Symmetric => sd.hd95_symmetric(),
                        Hd95Mode::Pooled => sd.hd95_pooled(),
                    };
                    m.assd_mm = sd.assd();
                    m.nsd = sd.nsd(opts.nsd_tolerance_mm);
                }
                (false, false, _) => {}
                _ => {
                    m.hd95_mm = p.distance_when_one_empty();
                    m.assd_mm = p.distance_when_one_empty();
                    m.nsd = 0.0;
                }
            }
            m
        })
        .collect())
}

/// Score two binary masks (label 1 of [`evaluate`]).
pub fn evaluate_masks(
    pred: ArrayView3<bool>,
    gt: ArrayView3<bool>,
    spacing: [f64; 3],
    opts: &MetricOptions,
) -> Result<LabelMetrics, MetricsError> {
    let p = pred.mapv(u16::from);
    let g = gt.mapv(u16::from);
    let mut v = evaluate(p.view(), g.view(), spacing, &[1], opts)?;
    Ok(v.remove(0))
}
