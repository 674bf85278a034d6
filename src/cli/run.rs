//! `sdseg-volume run`: segment volumes into NIfTI label volumes.

use std::path::PathBuf;

use anyhow::Context;

use super::{Globals, InputArgs};
use crate::error::{ResultExt, UsageError};
use crate::model::device::{DTypeSpec, DeviceSpec};
use crate::pipeline::cases::{NamePattern, OutTarget};
use crate::pipeline::config::{Pipeline, PipelineError};
use crate::pipeline::engine::prep::Slicer;
use crate::pipeline::outputs::Formats;
use crate::pipeline::postprocess::ResizeBack;
use crate::pipeline::runner::{MapTarget, ModelChoice, PreviewTarget, RunOptions, TestModel};
use crate::pipeline::segmenter::NoiseMode;
use crate::pipeline::shard::Shard;

/// Model and pipeline flags (shared with `slurm-script`, which passes them on).
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// Model weights: an official Lightning .ckpt or a .safetensors (default: the pipeline's;
    /// for `demo`, the demo model embedded in the binary, unpacked on first use into
    /// $SDSEG_DATA_DIR or ~/.local/share/sdseg-volume).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Model config: a JSON file (the official hyper-parameters) or a preset name
    /// (sdseg-binary, sdseg-cls9, sdseg-cls14, sdseg-demo); default: <weights>.json or
    /// config.json beside the weights, else the pipeline's preset.
    #[arg(long, value_name = "FILE|PRESET")]
    pub model_config: Option<String>,
    /// Pipeline: a built-in name (demo, btcv, sts3d) or a pipeline TOML file, optionally with
    /// a variant (btcv:cls9). The default, demo, is the bundled toy model for synthetic
    /// phantoms (`sdseg-volume phantom`), not a medical model: use btcv or sts3d with an SDSeg
    /// checkpoint for real CT.
    #[arg(long, value_name = "NAME|FILE[:VARIANT]", default_value = "demo")]
    pub pipeline: String,
    /// Slices per model batch (batches never span two volumes; outputs are the same for every
    /// batch size). Default: on the CPU half the threads, 4 to 32 (4 up to 9 cores); on CUDA 8.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// cpu, cuda or cuda:N (gpu = cuda:0).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Model dtype: f32, bf16, bf16-fast or f16. On CPUs with AMX (Intel Sapphire Rapids and
    /// later) bf16 is the fast CPU path (about 1.5x f32, labels equal to f32 on 99.99 % of
    /// pixels) and bf16-fast faster still (plain bf16); other CPUs run both as f32, with a
    /// warning. On CUDA all four run natively; on the CPU f16 runs the f32 path, with a
    /// warning (no f16 kernels there).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: DTypeSpec,
    /// Noise draws per slice (K): the condition encoder runs once, the UNet and decoder on the
    /// K draws batched; the label comes from the mean (binary: mean probability > 0.5;
    /// multi-class: argmax of the mean class probabilities). 1 = the official single draw.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub samples: usize,
    /// Seed of the noise latents; the same seed gives bit-identical outputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// shared: one noise draw for every slice (the official evaluation); per-slice: a draw
    /// per (case, slice) derived from the seed.
    #[arg(long, value_name = "MODE", default_value = "shared")]
    pub noise: NoiseMode,
    /// Use the raw UNet weights instead of the EMA copy.
    #[arg(long)]
    pub no_ema: bool,
    /// Resize of soft maps back to the native slice size: bilinear (then threshold) or nearest.
    #[arg(long, value_name = "MODE", default_value = "bilinear")]
    pub resize: ResizeBack,
    #[command(flatten)]
    pub read: InputArgs,
    /// Developer: replace the model by a threshold test double (threshold or threshold:K).
    #[arg(long, value_name = "threshold[:K]", hide = true)]
    pub test_segmenter: Option<TestModel>,
}

/// Output flags (shared with `slurm-script`).
#[derive(Clone, Debug, clap::Args)]
pub struct OutputArgs {
    /// Output file name under --out DIR; {case} is the case id.
    #[arg(long, value_name = "PATTERN")]
    pub name: Option<NamePattern>,
    /// Output formats, comma-separated: nifti (a label volume), dicom-seg (a DICOM
    /// Segmentation), rtstruct (an RT Structure Set). The DICOM ones need a DICOM input and sit
    /// beside the NIfTI name: {case}.seg.dcm, {case}.rtstruct.dcm.
    #[arg(long, value_name = "LIST", default_value = "nifti")]
    pub format: Formats,
    /// DICOM outputs: also a segment / ROI for labels absent from the prediction.
    #[arg(long)]
    pub empty_segments: bool,
    /// Redo cases whose output exists (default: skip them, i.e. resume; a case is done when
    /// the file of every --format exists).
    #[arg(long)]
    pub overwrite: bool,
    /// Write a JSON run report (provenance, timings, statistics); {shard} is the shard index.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a PNG preview (axial, coronal, sagittal mid-slices with the labels); use {case}
    /// in the path when there are several cases.
    #[arg(long, value_name = "FILE")]
    pub preview: Option<String>,
    /// Write the per-voxel uncertainty of the --samples draws (needs K >= 2) as a float32 NIfTI
    /// on the input grid: binary models, the standard deviation of the foreground probability
    /// (0 to 0.5); multi-class, the entropy of the mean class probabilities (nats, 0 to ln K).
    /// FILE.nii.gz (with {case} for several cases) or a folder (DIR/{case}.nii.gz).
    #[arg(long, value_name = "FILE|DIR")]
    pub uncertainty: Option<String>,
    /// 3D post-processing of the labels before they are written (off by default: the paper's
    /// protocol): `default` (per label, the largest 26-connected component and per-slice hole
    /// filling) or a plan JSON (`reproduce --choose-postprocessing` writes one; a run report
    /// holding one works too).
    #[arg(long, value_name = "default|PLAN.json")]
    pub postprocess: Option<String>,
    /// Print per-label voxels, volume (ml) and mean HU for every case.
    #[arg(long)]
    pub statistics: bool,
    /// Print one JSON object per finished case on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// NIfTI files, DICOM series folders, or dataset folders (NIfTI files and/or DICOM series
    /// subfolders; each is a case).
    #[arg(value_name = "INPUT", required_unless_present = "manifest")]
    pub inputs: Vec<PathBuf>,
    /// Output: a .nii/.nii.gz file (one case) or a folder.
    #[arg(long, short, value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// A list of inputs: .csv with columns input[,output][,case] (header optional) or text
    /// with one input per line (input<TAB>output allowed). Relative inputs are relative to
    /// the manifest, relative outputs to --out.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Process only shard I of N (0-based); default: from SLURM_ARRAY_TASK_ID/COUNT in a job
    /// array, else everything.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// After the run, write its review page: one self-contained HTML file (no network) with
    /// the cases' table and a viewer per case (`review` builds the same page later, e.g. from
    /// every shard of a Slurm array).
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// Ground truth for the review page: a label volume or a folder of them, paired with the
    /// outputs by case id and scored as `eval --pipeline <this run's pipeline>` scores them
    /// (Dice, HD95, ...); drawn as contours.
    #[arg(long, value_name = "DIR|FILE", requires = "html")]
    pub gt: Option<PathBuf>,
    /// The review page's largest CT size in-plane, 32 to 512 (`review --ct-size`).
    #[arg(long, value_name = "N", requires = "html", default_value_t = crate::review::CT_IN_PLANE,
          value_parser = super::review::ct_size)]
    pub html_ct_size: usize,
}

/// `NAME|FILE` or `NAME|FILE:VARIANT`.
pub fn load_pipeline(arg: &str) -> Result<Pipeline, PipelineError> {
    match Pipeline::load(arg) {
        Ok(p) => Ok(p),
        Err(e) => match arg.rsplit_once(':') {
            Some((base, variant)) if !base.is_empty() && !variant.is_empty() => {
                Pipeline::load(base)?.with_variant(variant)
            }
            _ => Err(e),
        },
    }
}

impl Args {
    /// Validate everything that can be checked before reading data or loading a model.
    pub fn to_options(&self, g: Globals) -> Result<RunOptions, UsageError> {
        let m = &self.model;
        if m.batch_size == Some(0) {
            return Err(UsageError("--batch-size must be at least 1".into()));
        }
        if m.samples == 0 {
            return Err(UsageError("--samples must be at least 1".into()));
        }
        if self.output.uncertainty.is_some() && m.samples < 2 {
            return Err(UsageError(format!(
                "--uncertainty needs --samples K with K >= 2 (got {}): the uncertainty is the disagreement between noise draws",
                m.samples
            )));
        }
        let out = OutTarget::from_path(&self.out);
        if let OutTarget::File(f) = &out {
            if self.manifest.is_some() || self.inputs.len() != 1 {
                return Err(UsageError(format!(
                    "--out {} is one file: give exactly one INPUT (no --manifest), or --out DIR",
                    f.display()
                )));
            }
            if self.output.name.is_some() {
                return Err(UsageError("--name applies to --out DIR only".into()));
            }
            if !crate::io::nifti::is_nifti_path(f) && self.output.format.single_dicom().is_none() {
                return Err(UsageError(format!(
                    "--out {}: a .dcm file holds one DICOM output; with --format {} use --out CASE.nii.gz (the DICOM files are named after it: CASE.seg.dcm, CASE.rtstruct.dcm) or --out DIR",
                    f.display(),
                    self.output.format
                )));
            }
        } else if self.out.is_file() {
            return Err(UsageError(format!(
                "--out {}: an existing file that is not .nii/.nii.gz/.dcm; --out must be a .nii/.nii.gz (or, for one DICOM --format, .dcm) file or a folder",
                self.out.display()
            )));
        }
        let (shard, shard_source) = match self.shard {
            Some(s) => (s, "--shard"),
            None => match Shard::from_env().map_err(|e| UsageError(e.to_string()))? {
                Some(s) => (s, "Slurm array"),
                None => (Shard::ALL, "none"),
            },
        };
        let device = m.device.unwrap_or(DeviceSpec::Cpu);
        if matches!(device, DeviceSpec::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(UsageError(format!(
                "--device {device}: this build has no CUDA support; rebuild with `cargo build --release --features cuda`"
            )));
        }
        if let Some(p) = &m.weights {
            if !p.is_file() {
                return Err(UsageError(format!(
                    "--weights {}: no such file",
                    p.display()
                )));
            }
        }
        if let Some(c) = &m.model_config {
            if !std::path::Path::new(c).is_file()
                && !crate::model::config::PRESETS.contains(&c.as_str())
            {
                return Err(UsageError(format!(
                    "--model-config {c}: no such file, and not a preset ({})",
                    crate::model::config::PRESETS.join(", ")
                )));
            }
        }
        if let Some(p) = &self.manifest {
            if !p.is_file() {
                return Err(UsageError(format!(
                    "--manifest {}: no such file",
                    p.display()
                )));
            }
        }
        let pipeline =
            load_pipeline(&m.pipeline).map_err(|e| UsageError(format!("--pipeline: {e}")))?;
        // The slice size comes from the pipeline; whether the model takes it is checked when
        // the model config is known (`runner::load_segmenter`).
        let weights = m
            .weights
            .clone()
            .or_else(|| pipeline.default_weights().map(|p| p.to_path_buf()));
        if m.test_segmenter.is_none() {
            match &weights {
                None => {
                    return Err(UsageError(format!(
                        "--weights is required (model.ckpt or model.safetensors): pipeline '{}' names no default weights",
                        pipeline.name
                    )))
                }
                Some(w) if m.weights.is_none() => {
                    crate::pipeline::assets::unpack_embedded(w)
                        .map_err(|e| UsageError(e.to_string()))?;
                    if !w.is_file() {
                        return Err(UsageError(
                            crate::pipeline::demo::missing_weights_message(&pipeline, w),
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        if self
            .output
            .format
            .contains(crate::pipeline::outputs::OutputFormat::DicomSeg)
        {
            let names: Vec<(u16, String)> = pipeline
                .labels
                .classes
                .iter()
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            let table =
                crate::pipeline::labels_sidecar::label_table(pipeline.num_classes(), &names);
            crate::pipeline::outputs::segment_specs(&pipeline.labels, &table, &m.pipeline, true)
                .map_err(|e| UsageError(format!("--format dicom-seg: {e}")))?;
        }
        if let Some(h) = &self.html {
            crate::review::check_html_name(h).map_err(|e| UsageError(e.to_string()))?;
        }
        if let Some(gt) = &self.gt {
            if !gt.exists() {
                return Err(UsageError(format!(
                    "--gt {}: no such file or folder",
                    gt.display()
                )));
            }
        }
        let preset = pipeline.model.preset.clone();
        let num_classes = m
            .test_segmenter
            .map(|t| t.classes)
            .unwrap_or(pipeline.num_classes());
        let preview = self.output.preview.clone().map(PreviewTarget);
        if let Some(p) = &preview {
            if !p.0.to_ascii_lowercase().ends_with(".png") {
                return Err(UsageError(format!("--preview {}: must end in .png", p.0)));
            }
        }
        Ok(RunOptions {
            inputs: self.inputs.clone(),
            manifest: self.manifest.clone(),
            out,
            name: self.output.name.clone().unwrap_or_default(),
            shard,
            shard_source,
            slicer: Slicer::new(pipeline, m.resize),
            model: ModelChoice {
                weights,
                model_config: m.model_config.clone(),
                preset,
                num_classes,
                ema: !m.no_ema,
                device,
                dtype: m.dtype,
                test: m.test_segmenter,
            },
            batch_size: m.batch_size.unwrap_or_else(|| device.default_batch_size()),
            seed: m.seed,
            noise: m.noise,
            read: m.read.read_options(),
            overwrite: self.output.overwrite,
            formats: self.output.format.clone(),
            empty_segments: self.output.empty_segments,
            samples: m.samples,
            uncertainty: self.output.uncertainty.clone().map(MapTarget),
            refine: self
                .output
                .postprocess
                .as_deref()
                .map(crate::pipeline::refine::RefinePlan::from_spec)
                .transpose()
                .map_err(|e| UsageError(format!("--postprocess: {e}")))?,
            report: self.output.report.clone(),
            provenance_digests: self.html.is_some(),
            preview,
            statistics: self.output.statistics,
            json: self.output.json,
            quiet: g.quiet,
            command: std::env::args().collect(),
        })
    }
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let opts = args.to_options(g)?;
    let Some(html) = &args.html else {
        return crate::pipeline::runner::execute(&opts);
    };
    let review = crate::review::ReviewOptions {
        html: html.clone(),
        gt: args.gt.clone(),
        pipeline: None,
        title: None,
        ct_in_plane: args.html_ct_size,
        quiet: g.quiet,
    };
    crate::pipeline::runner::execute_then(&opts, |report, report_path| {
        let page = crate::review::build_for_run(report, report_path, &review)
            .classified()
            .with_context(|| format!("writing the review page {}", html.display()))?;
        super::review::print_summary(&page, g);
        Ok(())
    })
}
