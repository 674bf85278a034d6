//! Scoring prediction files against ground-truth files: pairing by case id, geometry checks,
//! label remapping, per-case × per-label metrics ([`crate::metrics`]) and summaries.
//! The writers (Markdown, CSV, JSON) are in [`write`](self::write).
//!
//! **Case ids** ([`case_id`]): the file name without `.nii.gz` / `.nii`; then one leading tag
//! `img`, `image`, `label`, `labels`, `pred`, `prediction`, `seg`, `segmentation`, `mask` or
//! `gt` (any case) is dropped when a digit or a separator (`_`, `-`, `.`) follows it (the
//! separator goes too), and one trailing tag of that list is dropped when a separator
//! precedes it. So BTCV's `img0001.nii.gz` / `label0001.nii.gz` and `pred_0001.nii.gz`,
//! `0001_pred.nii.gz` all become `0001`, while `Teeth_0010_0000.nii.gz` and `segment01.nii`
//! stay as they are. Only `.nii`/`.nii.gz` files directly inside a folder are considered.
//! Every ground-truth case needs a prediction (else an error lists the missing ones);
//! predictions without ground truth are reported and ignored. FILE/FILE is one case, named
//! after the ground truth.
//!
//! **Post-processing** ([`evaluate_pair_refined`], `eval --postprocess`): a
//! [`RefinePlan`] is applied to the prediction as stored, on its own grid, before the label
//! remapping and any resampling (what `run --postprocess` would have written); [`Comparison`]
//! renders the scores with and without it.

mod compare;
mod write;

use crate::geometry::Affine;
use crate::metrics::protocol::{resampled_spacing, SDSEG_IN_PLANE};
use crate::metrics::{self, LabelMetrics, MetricOptions, MetricsError, Stat};
use crate::pipeline::refine::{voxel_ml, RefineError, RefineSummary};
use crate::pipeline::{resize_labels_nearest, Pipeline, RefinePlan};
use ndarray::Array3;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Affines of a prediction and its ground truth may differ by this much per element (mm).
pub const AFFINE_TOLERANCE_MM: f64 = 1e-3;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading a file failed (the error names the file).
    #[error(transparent)]
    Read(crate::io::ReadError),
    #[error(
        "case {case}: prediction and ground truth differ in shape: {pred} is {pred_shape:?}, \
         {gt} is {gt_shape:?}"
    )]
    ShapeMismatch {
        case: String,
        pred: PathBuf,
        gt: PathBuf,
        pred_shape: [usize; 3],
        gt_shape: [usize; 3],
    },
    #[error(
        "case {case}: prediction and ground truth are on different grids (affines differ by up \
         to {max_diff:.6} mm, tolerance {tol} mm)\n  prediction {pred}:\n{pred_affine}\n  ground \
         truth {gt}:\n{gt_affine}",
        tol = AFFINE_TOLERANCE_MM
    )]
    AffineMismatch {
        case: String,
        pred: PathBuf,
        gt: PathBuf,
        pred_affine: Box<Affine>,
        gt_affine: Box<Affine>,
        max_diff: f64,
    },
    #[error("{0}: no .nii or .nii.gz files in this folder")]
    NoLabelFiles(PathBuf),
    #[error("{dir}: {first} and {second} both have case id {case:?}")]
    DuplicateCase {
        dir: PathBuf,
        case: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{pred_dir}: no prediction for ground-truth case(s) {}", missing.join(", "))]
    MissingPredictions {
        pred_dir: PathBuf,
        missing: Vec<String>,
    },
    #[error("--pred {pred} and --gt {gt}: give two files or two folders")]
    MixedInputs { pred: PathBuf, gt: PathBuf },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("case {case}: {error}")]
    Metrics { case: String, error: MetricsError },
    #[error("case {case}: post-processing {pred}: {error}")]
    Refine {
        case: String,
        pred: PathBuf,
        error: RefineError,
    },
}

impl crate::error::Classify for EvalError {
    fn is_input_error(&self) -> bool {
        match self {
            EvalError::Read(e) => e.is_input_error(),
            EvalError::Pipeline(e) => e.is_input_error(),
            EvalError::Refine { error, .. } => error.is_input_error(),
            _ => true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Label schemes

/// A label id and its display name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelSpec {
    pub id: u16,
    pub name: String,
}

/// How stored label values become scored labels: remapping of ground truth and prediction
/// values, and the label list with names (empty: discover the labels in the data).
#[derive(Clone, Debug)]
pub struct LabelScheme {
    /// Short name for reports (`as stored`, `btcv`, ...).
    pub name: String,
    /// What the remapping does, for reports.
    pub description: String,
    pub labels: Vec<LabelSpec>,
    gt_map: Option<Vec<u16>>,
    pred_map: Option<Vec<u16>>,
}

fn binary_lut() -> Vec<u16> {
    (0..=u16::MAX).map(|v| u16::from(v > 0)).collect()
}

impl LabelScheme {
    /// Labels as stored, discovered in the data (non-zero values of pred or gt).
    pub fn as_stored() -> LabelScheme {
        LabelScheme {
            name: "as stored".into(),
            description: "label values as stored; labels = non-zero values found".into(),
            labels: vec![],
            gt_map: None,
            pred_map: None,
        }
    }

    /// The labels of a pipeline (`pipelines/*.toml`): the ground truth goes through its
    /// `labels.remap` (e.g. BTCV `transfer_to_9`, then the binary union); when the remap
    /// binarises, predictions are binarised (`> 0`) too, otherwise they are taken as already
    /// in the model's class space. The scored labels are the pipeline's foreground classes.
    pub fn from_pipeline(p: &Pipeline) -> LabelScheme {
        let remap = &p.labels.remap;
        let name = match &p.variant {
            Some(v) => format!("{}:{v}", p.name),
            None => p.name.clone(),
        };
        let description = if remap.is_identity() {
            "label values as stored".to_string()
        } else {
            let steps: Vec<String> = remap
                .assign
                .iter()
                .map(|(a, b)| format!("{a}->{b}"))
                .collect();
            let mut parts = Vec::new();
            if !steps.is_empty() {
                parts.push(format!("ground truth remapped {}", steps.join(", ")));
            }
            if remap.binarise {
                parts.push("> 0 on ground truth and prediction".to_string());
            }
            parts.join(", then ")
        };
        LabelScheme {
            name,
            description,
            labels: p
                .labels
                .foreground
                .iter()
                .map(|&id| LabelSpec {
                    id,
                    name: p
                        .labels
                        .class_name(id)
                        .map_or_else(|| format!("label {id}"), str::to_string),
                })
                .collect(),
            gt_map: (!remap.is_identity()).then(|| remap.lut(u16::MAX)),
            pred_map: remap.binarise.then(binary_lut),
        }
    }

    /// `--pipeline NAME|FILE[:VARIANT]`: a built-in pipeline (`btcv`, `sts3d`) or a pipeline
    /// file, optionally with one of its variants (`btcv:cls9` scores the 8 organs).
    pub fn load(spec: &str) -> Result<LabelScheme, EvalError> {
        let (base, variant) = match spec.rsplit_once(':') {
            Some((b, v)) if !b.is_empty() && !v.is_empty() && !v.contains(['/', '\\']) => {
                (b, Some(v))
            }
            _ => (spec, None),
        };
        let mut p = Pipeline::load(base)?;
        if let Some(v) = variant {
            p = p.with_variant(v)?;
        }
        Ok(LabelScheme::from_pipeline(&p))
    }

    /// Apply the scheme's remapping to a ground-truth volume in place.
    pub fn remap_gt(&self, a: &mut Array3<u16>) {
        if let Some(m) = &self.gt_map {
            a.par_mapv_inplace(|v| m[v as usize]);
        }
    }

    /// Apply the scheme's remapping to a prediction volume in place.
    pub fn remap_pred(&self, a: &mut Array3<u16>) {
        if let Some(m) = &self.pred_map {
            a.par_mapv_inplace(|v| m[v as usize]);
        }
    }

    fn name_of(&self, id: u16) -> String {
        self.labels
            .iter()
            .find(|l| l.id == id)
            .map_or_else(|| format!("label {id}"), |l| l.name.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Pairing

/// One prediction file and its ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasePair {
    pub case: String,
    pub pred: PathBuf,
    pub gt: PathBuf,
}

/// The pairs, sorted by case id, and the prediction files that had no ground truth.
#[derive(Clone, Debug, Default)]
pub struct Pairing {
    pub pairs: Vec<CasePair>,
    pub unmatched_predictions: Vec<PathBuf>,
}

const TAGS: [&str; 10] = [
    "segmentation",
    "prediction",
    "labels",
    "label",
    "image",
    "mask",
    "pred",
    "img",
    "seg",
    "gt",
];

fn is_sep(c: char) -> bool {
    matches!(c, '_' | '-' | '.')
}

/// The case id of a file name (see the module documentation for the rule).
pub fn case_id(file_name: &str) -> String {
    let mut id = crate::io::nifti::strip_nifti_suffix(file_name).unwrap_or(file_name);
    for tag in TAGS {
        let l = id.to_ascii_lowercase();
        if l.starts_with(tag) {
            let rest = &id[tag.len()..];
            match rest.chars().next() {
                Some(c) if c.is_ascii_digit() => {
                    id = rest;
                    break;
                }
                Some(c) if is_sep(c) && rest.len() > 1 => {
                    id = &rest[1..];
                    break;
                }
                _ => {}
            }
        }
    }
    for tag in TAGS {
        let l = id.to_ascii_lowercase();
        if l.len() > tag.len() + 1 && l.ends_with(tag) {
            let cut = id.len() - tag.len();
            if id[..cut].ends_with(is_sep) {
                id = &id[..cut - 1];
                break;
            }
        }
    }
    id.to_string()
}

/// The `.nii`/`.nii.gz` files directly in `dir`, by [`case_id`] (two files with one id are an
/// error; an empty folder too).
pub fn list_cases(dir: &Path) -> Result<BTreeMap<String, PathBuf>, EvalError> {
    let io = |error| EvalError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let nifti = crate::io::nifti::strip_nifti_suffix(&name).is_some();
        if name.starts_with('.') || !nifti || !entry.path().is_file() {
            continue;
        }
        let id = case_id(&name);
        if let Some(first) = out.get(&id) {
            let (a, b) = if *first < entry.path() {
                (first.clone(), entry.path())
            } else {
                (entry.path(), first.clone())
            };
            return Err(EvalError::DuplicateCase {
                dir: dir.to_path_buf(),
                case: id,
                first: a,
                second: b,
            });
        }
        out.insert(id, entry.path());
    }
    if out.is_empty() {
        return Err(EvalError::NoLabelFiles(dir.to_path_buf()));
    }
    Ok(out)
}

/// Pair prediction and ground-truth files (two files, or two folders matched by case id).
pub fn pair_cases(pred: &Path, gt: &Path) -> Result<Pairing, EvalError> {
    let missing = |p: &Path| {
        EvalError::Read(crate::io::ReadError::NotFound {
            path: p.to_path_buf(),
        })
    };
    let pm = std::fs::metadata(pred).map_err(|_| missing(pred))?;
    let gm = std::fs::metadata(gt).map_err(|_| missing(gt))?;
    match (pm.is_dir(), gm.is_dir()) {
        (false, false) => {
            let name = gt.file_name().unwrap_or_default().to_string_lossy();
            Ok(Pairing {
                pairs: vec![CasePair {
                    case: case_id(&name),
                    pred: pred.to_path_buf(),
                    gt: gt.to_path_buf(),
                }],
                unmatched_predictions: vec![],
            })
        }
        (true, true) => {
            let mut preds = list_cases(pred)?;
            let gts = list_cases(gt)?;
            let mut pairs = Vec::with_capacity(gts.len());
            let mut missing = Vec::new();
            for (case, g) in gts {
                match preds.remove(&case) {
                    Some(p) => pairs.push(CasePair {
                        case,
                        pred: p,
                        gt: g,
                    }),
                    None => missing.push(case),
                }
            }
            if !missing.is_empty() {
                return Err(EvalError::MissingPredictions {
                    pred_dir: pred.to_path_buf(),
                    missing,
                });
            }
            Ok(Pairing {
                pairs,
                unmatched_predictions: preds.into_values().collect(),
            })
        }
        _ => Err(EvalError::MixedInputs {
            pred: pred.to_path_buf(),
            gt: gt.to_path_buf(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Reading and scoring

/// Read a label volume (integer voxel values 0..=65535, else an error naming the voxel).
pub fn read_labels(path: &Path) -> Result<(Array3<u16>, Affine), EvalError> {
    if !path.exists() {
        return Err(EvalError::Read(crate::io::ReadError::NotFound {
            path: path.to_path_buf(),
        }));
    }
    let (labels, affine, _) =
        crate::io::nifti::read_labels(path).map_err(|e| EvalError::Read(e.into()))?;
    Ok((labels, affine))
}

/// Everything that decides how a set of cases is scored.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub metrics: MetricOptions,
    pub scheme: LabelScheme,
    /// `--labels`: score exactly these (after remapping); else the scheme's labels; else
    /// every non-zero label found in any prediction or ground truth.
    pub labels: Option<Vec<u16>>,
}

impl EvalOptions {
    fn fixed_labels(&self) -> Option<Vec<u16>> {
        self.labels.clone().or_else(|| {
            (!self.scheme.labels.is_empty())
                .then(|| self.scheme.labels.iter().map(|l| l.id).collect())
        })
    }
}

/// The scores of one case, for the labels that were looked at (absent labels are filled in
/// by [`Report::new`]).
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: String,
    pub pred: PathBuf,
    pub gt: PathBuf,
    pub labels: Vec<LabelMetrics>,
}

/// The prediction and ground truth of a case are on the same grid: same shape, affines equal
/// within [`AFFINE_TOLERANCE_MM`].
pub fn check_same_grid(
    pair: &CasePair,
    (pred, pred_affine): (&Array3<u16>, &Affine),
    (gt, gt_affine): (&Array3<u16>, &Affine),
) -> Result<(), EvalError> {
    let shape = |a: &Array3<u16>| {
        let (x, y, z) = a.dim();
        [x, y, z]
    };
    if pred.dim() != gt.dim() {
        return Err(EvalError::ShapeMismatch {
            case: pair.case.clone(),
            pred: pair.pred.clone(),
            gt: pair.gt.clone(),
            pred_shape: shape(pred),
            gt_shape: shape(gt),
        });
    }
    let max_diff = pred_affine.max_abs_diff(gt_affine);
    if max_diff.is_nan() || max_diff > AFFINE_TOLERANCE_MM {
        return Err(EvalError::AffineMismatch {
            case: pair.case.clone(),
            pred: pair.pred.clone(),
            gt: pair.gt.clone(),
            pred_affine: Box::new(*pred_affine),
            gt_affine: Box::new(*gt_affine),
            max_diff,
        });
    }
    Ok(())
}

/// Apply `plan` to a prediction as stored, with the voxel volume of its own affine.
pub fn refine_prediction(
    pair: &CasePair,
    plan: &RefinePlan,
    (pred, pred_affine): (&mut Array3<u16>, &Affine),
) -> Result<RefineSummary, EvalError> {
    plan.apply(pred, voxel_ml(pred_affine))
        .map_err(|error| EvalError::Refine {
            case: pair.case.clone(),
            pred: pair.pred.clone(),
            error,
        })
}

/// Check geometry, remap, resample (sdseg protocol) and score one case held in memory.
pub fn evaluate_arrays(
    pair: &CasePair,
    (mut pred, pred_affine): (Array3<u16>, Affine),
    (mut gt, gt_affine): (Array3<u16>, Affine),
    opts: &EvalOptions,
) -> Result<CaseResult, EvalError> {
    let shape = |a: &Array3<u16>| {
        let (x, y, z) = a.dim();
        [x, y, z]
    };
    check_same_grid(pair, (&pred, &pred_affine), (&gt, &gt_affine))?;
    opts.scheme.remap_gt(&mut gt);
    opts.scheme.remap_pred(&mut pred);
    let mut spacing = gt_affine.spacing();
    if opts.metrics.protocol.resamples_to_sdseg_grid() {
        let size = [SDSEG_IN_PLANE; 2];
        spacing = resampled_spacing(spacing, shape(&gt), size);
        pred = resize_labels_nearest(&pred, size);
        gt = resize_labels_nearest(&gt, size);
    }
    let labels = opts
        .fixed_labels()
        .unwrap_or_else(|| metrics::overlap::present_labels(pred.view(), gt.view()));
    let scores = metrics::evaluate(pred.view(), gt.view(), spacing, &labels, &opts.metrics)
        .map_err(|error| EvalError::Metrics {
            case: pair.case.clone(),
            error,
        })?;
    Ok(CaseResult {
        case: pair.case.clone(),
        pred: pair.pred.clone(),
        gt: pair.gt.clone(),
        labels: scores,
    })
}

/// Read both files of a pair (in parallel) and score them.
pub fn evaluate_pair(pair: &CasePair, opts: &EvalOptions) -> Result<CaseResult, EvalError> {
    let (p, g) = rayon::join(|| read_labels(&pair.pred), || read_labels(&pair.gt));
    evaluate_arrays(pair, p?, g?, opts)
}

/// Read both files of a pair once and score the prediction as it is and after `plan`:
/// (without, with).
pub fn evaluate_pair_refined(
    pair: &CasePair,
    opts: &EvalOptions,
    plan: &RefinePlan,
) -> Result<(CaseResult, CaseResult), EvalError> {
    let (p, g) = rayon::join(|| read_labels(&pair.pred), || read_labels(&pair.gt));
    evaluate_arrays_refined(pair, p?, g?, opts, plan)
}

/// [`evaluate_pair_refined`] on a case held in memory: (without, with).
pub fn evaluate_arrays_refined(
    pair: &CasePair,
    (pred, pred_affine): (Array3<u16>, Affine),
    gt: (Array3<u16>, Affine),
    opts: &EvalOptions,
    plan: &RefinePlan,
) -> Result<(CaseResult, CaseResult), EvalError> {
    check_same_grid(pair, (&pred, &pred_affine), (&gt.0, &gt.1))?;
    let mut refined = pred.clone();
    refine_prediction(pair, plan, (&mut refined, &pred_affine))?;
    let without = evaluate_arrays(pair, (pred, pred_affine), gt.clone(), opts)?;
    let with = evaluate_arrays(pair, (refined, pred_affine), gt, opts)?;
    Ok((without, with))
}

// ---------------------------------------------------------------------------------------
// Report

/// Mean ± std over cases of each metric for one label.
#[derive(Clone, Debug)]
pub struct LabelSummary {
    pub label: LabelSpec,
    pub dice: Stat,
    pub iou: Stat,
    pub hd95_mm: Stat,
    pub assd_mm: Stat,
    pub nsd: Stat,
}

/// Means over labels of the per-label means (labels whose mean is undefined are skipped).
#[derive(Clone, Copy, Debug)]
pub struct LabelMean {
    pub dice: f64,
    pub iou: f64,
    pub hd95_mm: f64,
    pub assd_mm: f64,
    pub nsd: f64,
}

/// All cases × labels of one evaluation, with the options that produced them.
#[derive(Clone, Debug)]
pub struct Report {
    pub metrics: MetricOptions,
    pub scheme_name: String,
    pub scheme_description: String,
    pub labels: Vec<LabelSpec>,
    /// Each case's `labels` is in the order of [`Report::labels`].
    pub cases: Vec<CaseResult>,
    pub per_label: Vec<LabelSummary>,
    pub mean: LabelMean,
}

fn nanmean(v: impl IntoIterator<Item = f64>) -> f64 {
    Stat::of(v).mean
}

impl Report {
    /// Fill in labels a case did not contain, order everything by label and summarise.
    pub fn new(mut cases: Vec<CaseResult>, opts: &EvalOptions) -> Report {
        let ids: Vec<u16> = match opts.fixed_labels() {
            Some(l) => l,
            None => cases
                .iter()
                .flat_map(|c| c.labels.iter().map(|m| m.label))
                .collect::<BTreeSet<u16>>()
                .into_iter()
                .collect(),
        };
        let protocol = opts.metrics.protocol;
        for c in &mut cases {
            let have: BTreeMap<u16, LabelMetrics> =
                c.labels.iter().map(|m| (m.label, *m)).collect();
            c.labels = ids
                .iter()
                .map(|&l| {
                    have.get(&l)
                        .copied()
                        .unwrap_or_else(|| LabelMetrics::absent(l, protocol))
                })
                .collect();
        }
        cases.sort_by(|a, b| a.case.cmp(&b.case));
        let labels: Vec<LabelSpec> = ids
            .iter()
            .map(|&id| LabelSpec {
                id,
                name: opts.scheme.name_of(id),
            })
            .collect();
        let per_label: Vec<LabelSummary> = labels
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let col =
                    |f: fn(&LabelMetrics) -> f64| Stat::of(cases.iter().map(|c| f(&c.labels[i])));
                LabelSummary {
                    label: spec.clone(),
                    dice: col(|m| m.dice),
                    iou: col(|m| m.iou),
                    hd95_mm: col(|m| m.hd95_mm),
                    assd_mm: col(|m| m.assd_mm),
                    nsd: col(|m| m.nsd),
                }
            })
            .collect();
        let over = |f: fn(&LabelSummary) -> f64| nanmean(per_label.iter().map(f));
        let mean = LabelMean {
            dice: over(|s| s.dice.mean),
            iou: over(|s| s.iou.mean),
            hd95_mm: over(|s| s.hd95_mm.mean),
            assd_mm: over(|s| s.assd_mm.mean),
            nsd: over(|s| s.nsd.mean),
        };
        Report {
            metrics: opts.metrics,
            scheme_name: opts.scheme.name.clone(),
            scheme_description: opts.scheme.description.clone(),
            labels,
            cases,
            per_label,
            mean,
        }
    }

    /// One line naming the protocol and definitions used (for stderr and headers).
    pub fn definitions_line(&self) -> String {
        let m = &self.metrics;
        format!(
            "protocol {} ({}); HD95 {}; NSD tolerance {} mm; labels: {}",
            m.protocol,
            if m.protocol.resamples_to_sdseg_grid() {
                "256x256 in-plane"
            } else {
                "native resolution"
            },
            m.hd95,
            m.nsd_tolerance_mm,
            self.scheme_name
        )
    }
}

pub use compare::Comparison;
pub use write::{OutputFormat, ASSD_DEFINITION, NSD_DEFINITION, SURFACE_DEFINITION};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids() {
        for (name, id) in [
            ("img0001.nii.gz", "0001"),
            ("label0001.nii.gz", "0001"),
            ("pred_0001.nii", "0001"),
            ("0001_pred.nii.gz", "0001"),
            ("case-7-seg.NII.GZ", "case-7"),
            ("Teeth_0010_0000.nii.gz", "Teeth_0010_0000"),
            ("segment01.nii", "segment01"),
            ("gt.nii", "gt"),
            ("pred.nii.gz", "pred"),
            ("Labels_12.nii", "12"),
        ] {
            assert_eq!(case_id(name), id, "{name}");
        }
    }

    #[test]
    fn btcv_pipeline_schemes_follow_transfer_to_9() {
        let s = LabelScheme::load("btcv").unwrap();
        assert_eq!(s.labels.len(), 1);
        let mut a = Array3::from_shape_fn((15, 1, 1), |(i, _, _)| i as u16);
        s.remap_gt(&mut a);
        let want = [0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1];
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), want);
        let mut p = Array3::from_shape_fn((3, 1, 1), |(i, _, _)| i as u16 * 4);
        s.remap_pred(&mut p);
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), [0, 1, 1]);

        let s = LabelScheme::load("btcv:cls9").unwrap();
        assert_eq!(s.name, "btcv:cls9");
        let ids: Vec<u16> = s.labels.iter().map(|l| l.id).collect();
        assert_eq!(ids, (1..=8).collect::<Vec<_>>());
        assert_eq!(s.labels[4].name, "liver");
        let mut a = Array3::from_shape_fn((15, 1, 1), |(i, _, _)| i as u16);
        s.remap_gt(&mut a);
        let want = [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0, 14];
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), want);
        let mut p = Array3::from_shape_fn((9, 1, 1), |(i, _, _)| i as u16);
        s.remap_pred(&mut p);
        assert_eq!(
            p.iter().copied().collect::<Vec<_>>(),
            (0..9).collect::<Vec<u16>>()
        );

        assert!(matches!(
            LabelScheme::load("nope"),
            Err(EvalError::Pipeline(_))
        ));
        assert!(matches!(
            LabelScheme::load("btcv:nope"),
            Err(EvalError::Pipeline(_))
        ));
    }
}
