//! The streaming engine: many cases through one loaded model.
//!
//! ```text
//!  reader ──(0)──► prepare (rayon) + batcher ──(2)──► model ──(2)──► postprocess (rayon) ──(1)──► writer
//!  read + plan       [B,3,S,S] + noise               SoftOutput      labels into the stored grid     NIfTI, preview
//! ```
//! Each stage is a thread; the numbers are the bounded channel capacities (0 = hand-over). The
//! reader reads volume N+1 while N is being segmented; the writer writes N−1 meanwhile. No
//! stage copies a volume: slices are read through a permuted/flipped view of the stored array
//! ([`Reorientation::view`](crate::geometry::Reorientation::view)), and label slices are written through the same view of the label
//! array on the input grid, so no inverse reorientation copy is needed. In flight at once:
//! at most two input volumes (current + read-ahead), the label volumes of the current case and
//! of the one being written, and four batches.
//!
//! Batches never span two volumes, and every slice's noise depends only on (seed, case id,
//! slice index) ([`NoiseSource`]), so outputs do not depend on which other cases ran in the
//! same process (sharding, resume). Per-case stage times are measured where the work happens.

pub mod prep;
mod stages;

pub use stages::{hex, sha256_files};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ndarray::Array3;

use super::cases::Case;
use super::labels_sidecar::LabelInfo;
use super::outputs::{DerivedSettings, Formats, OutputFormat};
use super::segmenter::{NoiseMode, SliceSegmenter};
use super::stats::LabelStat;
use crate::error::{ExitCode, ResultExt};
use crate::geometry::Affine;
use crate::io::ReadOptions;
use crate::volume::{Provenance, Volume};
use prep::Slicer;

/// Reading and writing, so tests can run the engine on in-memory volumes.
pub trait CaseIo: Sync {
    fn read(&self, input: &Path, opts: &ReadOptions) -> anyhow::Result<Volume>;
    /// [`Self::read`], shared: the engine only reads the volume, so an in-memory caller (the
    /// Python binding's `Model.segment`) hands over a volume it keeps, without a copy.
    fn read_shared(&self, input: &Path, opts: &ReadOptions) -> anyhow::Result<Arc<Volume>> {
        self.read(input, opts).map(Arc::new)
    }
    /// Write `labels` (on the input grid) with the input's geometry, atomically.
    fn write_labels(
        &self,
        output: &Path,
        labels: &Array3<u16>,
        like: &VolumeMeta,
    ) -> anyhow::Result<()>;
    /// Write a float map (uncertainty) on the input grid, atomically.
    fn write_map(&self, output: &Path, map: &Array3<f32>, like: &VolumeMeta) -> anyhow::Result<()> {
        let grid = crate::io::nifti::Grid {
            shape: like.shape,
            affine: &like.affine,
            source: &like.provenance.source,
        };
        crate::io::nifti::write_array_on(
            output,
            map.view(),
            grid,
            crate::io::nifti::ArrayRole::Intensity,
        )
        .classified()
    }
    /// Write `labels` as a DICOM object of `format` referencing the input series, atomically.
    fn write_derived(
        &self,
        output: &Path,
        format: OutputFormat,
        request: &crate::io::derived::DerivedRequest<'_>,
    ) -> anyhow::Result<()> {
        use crate::io::derived::{rtstruct, seg};
        match format {
            OutputFormat::DicomSeg => seg::write_dicom_seg(output, request).classified(),
            OutputFormat::Rtstruct => rtstruct::write_rtstruct(output, request).classified(),
            OutputFormat::Nifti => unreachable!("NIfTI goes through write_labels"),
        }
    }
    /// An in-memory run (the Python binding's `Model.segment`) takes a finished case's arrays
    /// here, by value, instead of having the job's files written, and returns `None`. The
    /// default hands them back, and the engine writes the job's files with the methods above.
    fn take_arrays(&self, _case: &Case, arrays: CaseArrays) -> Option<CaseArrays> {
        Some(arrays)
    }
}

/// A finished case's label volume and uncertainty map (`--uncertainty`), on the input grid,
/// with the geometry to write them on.
#[derive(Clone, Debug)]
pub struct CaseArrays {
    pub labels: Array3<u16>,
    pub uncertainty: Option<Array3<f32>>,
    pub meta: VolumeMeta,
}

/// The geometry and provenance of an input volume, without its voxels (what a label writer
/// needs once the input's voxels are no longer held).
#[derive(Clone, Debug)]
pub struct VolumeMeta {
    pub shape: [usize; 3],
    pub affine: Affine,
    pub provenance: Provenance,
}

/// The program's own readers and writers (`crate::io`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FileIo;

impl CaseIo for FileIo {
    fn read(&self, input: &Path, opts: &ReadOptions) -> anyhow::Result<Volume> {
        crate::io::read_volume(input, opts).classified()
    }
    fn write_labels(
        &self,
        output: &Path,
        labels: &Array3<u16>,
        like: &VolumeMeta,
    ) -> anyhow::Result<()> {
        let grid = crate::io::nifti::Grid {
            shape: like.shape,
            affine: &like.affine,
            source: &like.provenance.source,
        };
        crate::io::nifti::write_labels_on(output, labels, grid).classified()
    }
}

/// Progress callbacks, called from the engine's threads.
pub trait Observer: Sync {
    /// The model's results for `case` start arriving; it has `slices` slices.
    fn case_started(&self, _case: &Case, _slices: usize) {}
    /// `n` more slices of `case` are done.
    fn slices_done(&self, _case: &Case, _n: usize) {}
    /// A case is written or failed.
    fn case_finished(&self, _outcome: &CaseOutcome) {}
    /// The demo model is about to segment `case`, which is not a demo phantom: a safety
    /// warning that must reach the user (also with `--quiet`). Called from the reader thread.
    fn demo_input_warning(&self, _case: &Case) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// Two observers told the same things, in order (a run's progress display and a caller's
/// callbacks).
pub struct Both<'a>(pub &'a dyn Observer, pub &'a dyn Observer);

impl Observer for Both<'_> {
    fn case_started(&self, case: &Case, slices: usize) {
        self.0.case_started(case, slices);
        self.1.case_started(case, slices);
    }
    fn slices_done(&self, case: &Case, n: usize) {
        self.0.slices_done(case, n);
        self.1.slices_done(case, n);
    }
    fn case_finished(&self, outcome: &CaseOutcome) {
        self.0.case_finished(outcome);
        self.1.case_finished(outcome);
    }
    fn demo_input_warning(&self, case: &Case) {
        self.0.demo_input_warning(case);
        self.1.demo_input_warning(case);
    }
}

/// Run-wide engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub batch_size: usize,
    pub noise: NoiseMode,
    pub seed: u64,
    pub read: ReadOptions,
    /// Hash every input file (sha256) for the report.
    pub digest_inputs: bool,
    /// Label names and colours (previews, statistics).
    pub labels: Vec<LabelInfo>,
    /// The model is the demo model: warn (observer + case warnings) for every input that is
    /// not a demo phantom (`pipeline::demo`).
    pub demo_model: bool,
    /// The files written per case (each case's `outputs`).
    pub formats: Formats,
    /// How DICOM outputs describe the labels; set when `formats` has a DICOM format.
    pub derived: Option<DerivedSettings>,
    /// `--samples K`: noise draws per slice (1 = the official single draw).
    pub samples: usize,
    /// Compute the voxel-wise uncertainty of the draws (`--uncertainty`; needs `samples` ≥ 2).
    pub uncertainty: bool,
    /// `--postprocess`: 3D post-processing of each case's labels before they are written
    /// (`None`: the official protocol, labels as the model gives them).
    pub refine: Option<super::refine::RefinePlan>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 8,
            noise: NoiseMode::Shared,
            seed: 0,
            read: ReadOptions::default(),
            digest_inputs: false,
            labels: super::labels_sidecar::label_table(2, &[]),
            demo_model: false,
            formats: Formats::default(),
            derived: None,
            samples: 1,
            uncertainty: false,
            refine: None,
        }
    }
}

/// One case to segment, and where its preview and uncertainty map go (if anywhere).
#[derive(Clone, Debug)]
pub struct Job {
    pub case: Case,
    pub preview: Option<PathBuf>,
    pub uncertainty: Option<PathBuf>,
}

/// Busy time of each stage for one case (or summed over a run).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CaseStageTimes {
    pub read: Duration,
    pub prepare: Duration,
    pub model: Duration,
    pub postprocess: Duration,
    pub write: Duration,
    /// From the start of reading to the end of writing.
    pub wall: Duration,
}

impl CaseStageTimes {
    pub fn add(&mut self, o: &CaseStageTimes) {
        self.read += o.read;
        self.prepare += o.prepare;
        self.model += o.model;
        self.postprocess += o.postprocess;
        self.write += o.write;
        self.wall += o.wall;
    }
    /// Busy time of every stage but the model.
    pub fn non_model(&self) -> Duration {
        self.read + self.prepare + self.postprocess + self.write
    }
}

/// Why a case failed, and whether it is the input's fault (exit 2) or ours (exit 1).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{input}: {message}")]
pub struct CaseError {
    pub input: PathBuf,
    pub stage: &'static str,
    pub message: String,
    pub input_error: bool,
}

impl CaseError {
    pub fn new(input: &Path, stage: &'static str, err: &anyhow::Error) -> CaseError {
        CaseError {
            input: input.to_path_buf(),
            stage,
            message: format!("{err:#}"),
            input_error: crate::error::exit_code_for(err) == ExitCode::BadInput,
        }
    }
}

impl crate::error::Classify for CaseError {
    fn is_input_error(&self) -> bool {
        self.input_error
    }
}

/// What is known about a case after reading it.
#[derive(Clone, Debug, Default)]
pub struct CaseDetails {
    pub shape: Option<[usize; 3]>,
    pub spacing: Option<[f64; 3]>,
    pub orientation: Option<String>,
    pub slices: usize,
    pub series_uid: Option<String>,
    pub series_description: Option<String>,
    pub input_sha256: Option<String>,
    pub warnings: Vec<String>,
    pub timings: CaseStageTimes,
    pub stats: Vec<LabelStat>,
    pub preview: Option<PathBuf>,
    /// The uncertainty map written (`--uncertainty`).
    pub uncertainty: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub enum CaseStatus {
    Written,
    /// The output existed (resume).
    Skipped,
    Failed(CaseError),
}

#[derive(Clone, Debug)]
pub struct CaseOutcome {
    pub case: Case,
    pub status: CaseStatus,
    pub details: CaseDetails,
}

impl CaseOutcome {
    pub fn skipped(case: Case) -> CaseOutcome {
        CaseOutcome {
            case,
            status: CaseStatus::Skipped,
            details: CaseDetails::default(),
        }
    }
    pub fn is_failed(&self) -> bool {
        matches!(self.status, CaseStatus::Failed(_))
    }
}

/// The engine: a slicing pipeline, readers/writers and an observer, run over jobs with one
/// segmenter.
pub struct Engine<'a> {
    pub slicer: &'a Slicer,
    pub io: &'a dyn CaseIo,
    pub observer: &'a dyn Observer,
    pub options: EngineOptions,
}

impl Engine<'_> {
    /// Segment every job; outcomes come back in job order. A failing case never stops the
    /// others.
    pub fn run(&self, jobs: &[Job], model: &mut dyn SliceSegmenter) -> Vec<CaseOutcome> {
        stages::run(self, jobs, model)
    }
}

#[cfg(test)]
mod tests;
