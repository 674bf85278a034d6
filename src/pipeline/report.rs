//! The run report (`--report run.json`) and the per-case `--json` lines: the serialisable
//! boundary of a run (what ran, with what, on which inputs, how long each stage took).

use std::path::PathBuf;

use serde::Serialize;

use super::engine::{CaseOutcome, CaseStageTimes, CaseStatus};
use super::stats::LabelStat;

#[derive(Clone, Debug, Serialize)]
pub struct ToolInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// Commit the binary was built from (build script; absent outside a git checkout).
    pub git_hash: Option<&'static str>,
}

pub fn tool_info() -> ToolInfo {
    ToolInfo {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        git_hash: option_env!("SDSEG_GIT_HASH"),
    }
}

/// The model a run used.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// `sdseg`, or `threshold` for the test double.
    pub kind: String,
    /// Where the model config came from (`--model-config`, a file beside the weights, or the
    /// pipeline's preset).
    pub config_source: String,
    pub config: serde_json::Value,
    pub weights: Option<PathBuf>,
    pub weights_sha256: Option<String>,
    /// UNet weights from the EMA copy (default) or the raw ones (`--no-ema`).
    pub ema: bool,
    pub num_classes: usize,
    /// Side S of the square slices the model ran on (the pipeline's `slicing.size`).
    pub slice_size: usize,
    /// The bundled demo model (a toy trained on phantoms): non-phantom inputs get a warning.
    pub demo_model: bool,
}

/// Stage busy times in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Seconds {
    pub read: f64,
    pub prepare: f64,
    pub model: f64,
    pub postprocess: f64,
    pub write: f64,
    pub wall: f64,
}

impl From<&CaseStageTimes> for Seconds {
    fn from(t: &CaseStageTimes) -> Seconds {
        Seconds {
            read: t.read.as_secs_f64(),
            prepare: t.prepare.as_secs_f64(),
            model: t.model.as_secs_f64(),
            postprocess: t.postprocess.as_secs_f64(),
            write: t.write.as_secs_f64(),
            wall: t.wall.as_secs_f64(),
        }
    }
}

/// One output file of a case.
#[derive(Clone, Debug, Serialize)]
pub struct OutputRecord {
    pub format: crate::pipeline::outputs::OutputFormat,
    pub path: PathBuf,
}

/// One case: a line of `--json` output and an entry of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CaseRecord {
    pub case: String,
    pub input: PathBuf,
    /// The first file written for the case (the NIfTI file unless `--format` leaves it out).
    pub output: PathBuf,
    /// Every file of the case, by format (`--format`).
    pub outputs: Vec<OutputRecord>,
    /// `written`, `skipped` (output existed) or `failed`.
    pub status: &'static str,
    /// For failures: the stage (`read`, `model`, `write`) and the reason.
    pub failed_stage: Option<&'static str>,
    pub error: Option<String>,
    /// sha256 of the input file(s) (DICOM: the chosen series' files in slice order).
    pub input_sha256: Option<String>,
    pub series_uid: Option<String>,
    pub series_description: Option<String>,
    pub shape: Option<[usize; 3]>,
    pub spacing_mm: Option<[f64; 3]>,
    pub orientation: Option<String>,
    pub slices: usize,
    pub seconds: Seconds,
    pub labels: Vec<LabelStat>,
    pub preview: Option<PathBuf>,
    /// `--uncertainty`: the case's map (absent for failed cases).
    pub uncertainty: Option<PathBuf>,
    pub warnings: Vec<String>,
}

impl From<&CaseOutcome> for CaseRecord {
    fn from(o: &CaseOutcome) -> CaseRecord {
        let d = &o.details;
        let (status, failed_stage, error) = match &o.status {
            CaseStatus::Written => ("written", None, None),
            CaseStatus::Skipped => ("skipped", None, None),
            CaseStatus::Failed(e) => ("failed", Some(e.stage), Some(e.message.clone())),
        };
        CaseRecord {
            case: o.case.id.clone(),
            input: o.case.input.clone(),
            output: o.case.primary_output().to_path_buf(),
            outputs: o
                .case
                .outputs
                .iter()
                .map(|(format, path)| OutputRecord {
                    format: *format,
                    path: path.clone(),
                })
                .collect(),
            status,
            failed_stage,
            error,
            input_sha256: d.input_sha256.clone(),
            series_uid: d.series_uid.clone(),
            series_description: d.series_description.clone(),
            shape: d.shape,
            spacing_mm: d.spacing,
            orientation: d.orientation.clone(),
            slices: d.slices,
            seconds: Seconds::from(&d.timings),
            labels: d.stats.clone(),
            preview: d.preview.clone(),
            uncertainty: d.uncertainty.clone(),
            warnings: d.warnings.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineRecord {
    /// `name` or `name:variant`.
    pub name: String,
    /// Built-in or the file it was read from.
    pub origin: String,
    pub window_hu: [f64; 2],
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    pub noise: super::segmenter::NoiseMode,
    pub batch_size: usize,
    /// Resize of soft maps back to the native slice size (`bilinear` or `nearest`).
    pub resize: String,
    pub shard: String,
    pub overwrite: bool,
    /// `--format`, e.g. `nifti,dicom-seg`.
    pub formats: String,
    /// `--samples`: noise draws per slice.
    pub samples: usize,
    /// `--postprocess`: the 3D post-processing applied (`null`: none, the official protocol).
    pub postprocess: Option<String>,
    /// `--allow-gaps`, `--allow-tilt`: how DICOM inputs were read (`review` reads them again).
    pub allow_gaps: bool,
    pub allow_tilt: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub cases: usize,
    pub written: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Cases of the input list that belong to other shards.
    pub other_shards: usize,
    pub slices: usize,
    /// Summed busy time per stage; `wall` is the run's wall time (model load excluded).
    pub seconds: Seconds,
    pub model_load_s: f64,
    pub slices_per_s: f64,
    /// Model busy time / wall time: how close the stream is to model-bound.
    pub model_share_of_wall: f64,
}

impl Totals {
    pub fn from_outcomes(outcomes: &[CaseOutcome], wall: std::time::Duration) -> Totals {
        let mut t = Totals {
            cases: outcomes.len(),
            ..Totals::default()
        };
        let mut busy = CaseStageTimes::default();
        for o in outcomes {
            match o.status {
                CaseStatus::Written => {
                    t.written += 1;
                    t.slices += o.details.slices;
                }
                CaseStatus::Skipped => t.skipped += 1,
                CaseStatus::Failed(_) => t.failed += 1,
            }
            busy.add(&o.details.timings);
        }
        busy.wall = wall;
        t.seconds = Seconds::from(&busy);
        let w = wall.as_secs_f64();
        if w > 0.0 {
            t.slices_per_s = t.slices as f64 / w;
            t.model_share_of_wall = busy.model.as_secs_f64() / w;
        }
        t
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub tool: ToolInfo,
    pub command: Vec<String>,
    pub started_unix_s: f64,
    pub finished_unix_s: f64,
    pub pipeline: PipelineRecord,
    pub model: Option<ModelInfo>,
    pub settings: RunSettings,
    pub label_table: Vec<super::labels_sidecar::LabelInfo>,
    pub cases: Vec<CaseRecord>,
    pub totals: Totals,
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
