//! `run` as a library call: validated [`RunOptions`] in, cases discovered, sharded and
//! resumed, the model loaded once ([`load_segmenter`]), the [`Engine`] streamed over every
//! case, then sidecars, report and exit status.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;

use super::cases::{self, CaseSpec, NamePattern, OutTarget};
use super::engine::prep::Slicer;
use super::engine::{Both, CaseOutcome, CaseStatus, Engine, EngineOptions, FileIo, Job, Observer};
use super::labels_sidecar::{label_table, write_sidecars, LabelInfo};
use super::outputs::{segment_specs, DerivedSettings, Formats, OutputFormat};
use super::progress::{Display, Progress};
use super::report::{
    tool_info, unix_now, CaseRecord, ModelInfo, PipelineRecord, RunReport, RunSettings, Totals,
};
use super::segmenter::{NoiseMode, SdsegSegmenter, SliceSegmenter, ThresholdSegmenter};
use super::shard::Shard;
use crate::error::{PartialFailure, ResultExt, UsageError};
use crate::io::ReadOptions;
use crate::model::device::{DTypeSpec, DeviceSpec};

/// The threshold test double instead of a real model (`--test-segmenter threshold[:K[:MS]]`,
/// hidden; for tests and benchmarks of everything but the model). `MS` milliseconds of
/// sleep per batch stand in for model time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestModel {
    pub classes: usize,
    pub delay_ms: u64,
}

impl FromStr for TestModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("test segmenter '{s}': expected threshold[:K[:MS]] with K >= 2");
        let mut parts = s.split(':');
        if parts.next() != Some("threshold") {
            return Err(bad());
        }
        let classes = match parts.next() {
            None => 2,
            Some(k) => k.parse().ok().filter(|&k: &usize| k >= 2).ok_or_else(bad)?,
        };
        let delay_ms = match parts.next() {
            None => 0,
            Some(ms) => ms.parse().map_err(|_| bad())?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(TestModel { classes, delay_ms })
    }
}

/// Which model to load and how.
#[derive(Clone, Debug)]
pub struct ModelChoice {
    pub weights: Option<PathBuf>,
    /// `--model-config`: a JSON/YAML-derived config file or a preset name.
    pub model_config: Option<String>,
    /// The pipeline's model preset (`sdseg-binary`, ...), the config of last resort.
    pub preset: String,
    /// Classes the pipeline expects (2 = binary).
    pub num_classes: usize,
    pub ema: bool,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    pub test: Option<TestModel>,
}

/// `--preview` path, with `{case}` replaced per case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewTarget(pub String);

impl PreviewTarget {
    pub fn render(&self, case: &str) -> PathBuf {
        PathBuf::from(self.0.replace("{case}", case))
    }
    pub fn per_case(&self) -> bool {
        self.0.contains("{case}")
    }
}

/// `--uncertainty FILE|DIR`: a `.nii`/`.nii.gz` path (with `{case}` when there are several
/// cases) or a folder that gets `{case}.nii.gz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapTarget(pub String);

impl MapTarget {
    pub fn render(&self, case: &str) -> PathBuf {
        let p = PathBuf::from(self.0.replace("{case}", case));
        if crate::io::nifti::is_nifti_path(&p) {
            p
        } else {
            p.join(format!("{case}.nii.gz"))
        }
    }
    pub fn per_case(&self) -> bool {
        self.0.contains("{case}") || !crate::io::nifti::is_nifti_path(Path::new(&self.0))
    }
}

/// Everything `run` needs, validated before any model loads.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub inputs: Vec<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub out: OutTarget,
    pub name: NamePattern,
    pub shard: Shard,
    /// `--shard`, `Slurm array` or `none`.
    pub shard_source: &'static str,
    /// The pipeline and the resize-back choice.
    pub slicer: Slicer,
    pub model: ModelChoice,
    pub batch_size: usize,
    pub seed: u64,
    pub noise: NoiseMode,
    pub read: ReadOptions,
    pub overwrite: bool,
    /// `--format`: the files written per case.
    pub formats: Formats,
    /// `--empty-segments`: DICOM outputs also list labels absent from the prediction.
    pub empty_segments: bool,
    /// `--samples K`: noise draws per slice, averaged (1 = the official single draw).
    pub samples: usize,
    /// `--uncertainty`: where the per-voxel uncertainty maps go (needs `samples` ≥ 2).
    pub uncertainty: Option<MapTarget>,
    /// `--postprocess`: 3D post-processing applied to every case's labels (off by default).
    pub refine: Option<super::refine::RefinePlan>,
    /// `{shard}` is replaced by the shard index.
    pub report: Option<PathBuf>,
    /// Hash the inputs and the weights for the provenance record even without `report` (the
    /// review page of `run --html` shows them).
    pub provenance_digests: bool,
    pub preview: Option<PreviewTarget>,
    pub statistics: bool,
    pub json: bool,
    pub quiet: bool,
    /// The command line, for the report.
    pub command: Vec<String>,
}

/// Where the model config came from: `--model-config` (a file or a preset name), a file
/// beside the weights (`<weights>.json`, else `config.json`: `SdsegConfig::find_beside`), or
/// the pipeline's preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Flag(String),
    BesideWeights(PathBuf),
    Preset(String),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Flag(p) => write!(f, "--model-config {p}"),
            ConfigSource::BesideWeights(p) => write!(f, "{} (beside the weights)", p.display()),
            ConfigSource::Preset(n) => write!(f, "pipeline preset '{n}'"),
        }
    }
}

/// The config source for a model choice, in the documented order.
pub fn resolve_model_config(m: &ModelChoice) -> ConfigSource {
    if let Some(c) = &m.model_config {
        return ConfigSource::Flag(c.clone());
    }
    if let Some(p) = m
        .weights
        .as_deref()
        .and_then(crate::model::config::SdsegConfig::find_beside)
    {
        return ConfigSource::BesideWeights(p);
    }
    ConfigSource::Preset(m.preset.clone())
}

/// Load the model once for the whole run. The only place that knows which model type runs.
pub fn load_segmenter(opts: &RunOptions) -> anyhow::Result<(Box<dyn SliceSegmenter>, ModelInfo)> {
    use crate::model::config::SdsegConfig;
    let m = &opts.model;
    let size = opts.slicer.model_size();
    if let Some(t) = m.test {
        let mut model = if t.classes > 2 {
            ThresholdSegmenter::multiclass(t.classes)
        } else {
            ThresholdSegmenter::binary()
        }
        .with_size(size);
        model.delay = std::time::Duration::from_millis(t.delay_ms);
        let info = ModelInfo {
            kind: "threshold".into(),
            config_source: "test segmenter".into(),
            config: serde_json::json!({ "classes": t.classes, "latent_shape": model.latent }),
            weights: None,
            weights_sha256: None,
            ema: m.ema,
            num_classes: t.classes,
            slice_size: size,
            demo_model: false,
        };
        return Ok((Box::new(model), info));
    }
    let Some(weights) = &m.weights else {
        return Err(UsageError(
            "no weights: pass --weights model.ckpt|model.safetensors (the pipeline names none)"
                .into(),
        )
        .into());
    };
    let source = resolve_model_config(m);
    let (config, config_json) = match &source {
        ConfigSource::Flag(arg) => {
            let c = SdsegConfig::from_arg(arg).classified()?;
            let json = if Path::new(arg).is_file() {
                read_json(Path::new(arg))
            } else {
                serde_json::json!({ "preset": arg })
            };
            (c, json)
        }
        ConfigSource::BesideWeights(p) => (SdsegConfig::load(p).classified()?, read_json(p)),
        ConfigSource::Preset(name) => (
            SdsegConfig::preset(name).classified()?,
            serde_json::json!({ "preset": name }),
        ),
    };
    if !opts.quiet {
        eprintln!("model config: {source}");
    }
    // Checked before the weights are read: the slice size must suit the network.
    if let Err(why) = super::segmenter::check_model_size(&config, size) {
        return Err(UsageError(format!(
            "pipeline '{}' (slicing.size {size}) does not fit the model (config from {source}): {why}",
            opts.slicer.pipeline.name
        ))
        .into());
    }
    let preset_config = match &source {
        ConfigSource::Flag(a) if !Path::new(a).is_file() => Some(a.as_str()),
        ConfigSource::Preset(n) => Some(n.as_str()),
        _ => None,
    };
    let demo_model =
        super::demo::is_demo_model(&opts.slicer.pipeline, weights, preset_config, &config);
    let device = m.device.open().classified()?;
    let (dtype, dtype_warning) = m.dtype.for_device(m.device);
    if let Some(w) = dtype_warning {
        eprintln!("warning: {w}");
    }
    let mut model =
        crate::model::sdseg::Sdseg::load(weights, &config, &device, dtype.dtype(), m.ema)
            .classified()
            .with_context(|| format!("loading {}", weights.display()))?;
    if dtype.fast_bf16() {
        model = model.with_fast_bf16();
    }
    if let Some(w) = model.bf16_fallback_warning(&dtype.to_string()) {
        eprintln!("warning: {w}");
    }
    let segmenter = SdsegSegmenter::new(model, size).classified()?;
    let classes = segmenter.num_classes();
    if classes != m.num_classes {
        return Err(UsageError(format!(
            "the model ({}, config from {source}) has {classes} classes but pipeline '{}' expects {}; \
             choose a pipeline (or variant, NAME:VARIANT) for this model",
            weights.display(),
            opts.slicer.pipeline.name,
            m.num_classes
        ))
        .into());
    }
    let info = ModelInfo {
        kind: "sdseg".into(),
        config_source: source.to_string(),
        config: config_json,
        weights: Some(weights.clone()),
        weights_sha256: None,
        ema: m.ema,
        num_classes: classes,
        slice_size: size,
        demo_model,
    };
    Ok((Box::new(segmenter), info))
}

fn read_json(p: &Path) -> serde_json::Value {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Run everything `opts` asks for. Exit status: `Ok` when every case was written or skipped;
/// the case's own error when the only case failed; [`PartialFailure`] (exit 3) otherwise.
pub fn execute(opts: &RunOptions) -> anyhow::Result<()> {
    execute_then(opts, |_, _| Ok(()))
}

/// [`execute`], then `after` with the run's report (and where `--report` wrote it) before the
/// exit status is decided, also when cases failed (`run --html` builds its page there).
pub fn execute_then(
    opts: &RunOptions,
    after: impl FnOnce(&RunReport, Option<&Path>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (outcomes, report, report_path) = run_reported(opts, None)?;
    after(&report, report_path.as_deref())?;
    exit_status(&outcomes)
}

/// [`execute`] up to its exit status: every case's outcome (the skipped ones first, then job
/// order). `observer`, when given, is told what the progress display is told (the Python
/// binding's progress callback).
pub fn run_cases(
    opts: &RunOptions,
    observer: Option<&dyn Observer>,
) -> anyhow::Result<Vec<CaseOutcome>> {
    Ok(run_reported(opts, observer)?.0)
}

/// The run: outcomes, the report, and where `--report` wrote it (`run --html` and the
/// Python binding's `run(html=...)` build the review page from them).
pub fn run_reported(
    opts: &RunOptions,
    observer: Option<&dyn Observer>,
) -> anyhow::Result<(Vec<CaseOutcome>, RunReport, Option<PathBuf>)> {
    let started_unix = unix_now();
    let (plan, n_cases) = plan_cases(opts)?;
    let jobs: Vec<Job> = plan
        .run
        .iter()
        .map(|c| Job {
            case: c.clone(),
            preview: opts.preview.as_ref().map(|p| p.render(&c.id)),
            uncertainty: opts.uncertainty.as_ref().map(|u| u.render(&c.id)),
        })
        .collect();
    let progress = Progress::new(
        Display::choose(opts.quiet),
        jobs.len(),
        opts.json,
        opts.statistics,
    );
    if !opts.shard.is_all() {
        progress.note(&format!(
            "shard {} (from {}): {} of {n_cases} cases",
            opts.shard,
            opts.shard_source,
            plan.run.len() + plan.skipped.len()
        ));
    }
    let mut outcomes: Vec<CaseOutcome> = Vec::new();
    if !plan.skipped.is_empty() {
        progress.note(&format!(
            "resume: {} case(s) already have outputs and are skipped (--overwrite redoes them)",
            plan.skipped.len()
        ));
        for c in &plan.skipped {
            let mut o = CaseOutcome::skipped(c.clone());
            o.details.uncertainty = opts.uncertainty.as_ref().map(|u| u.render(&c.id));
            progress.emit_skipped(&o);
            outcomes.push(o);
        }
    }

    let both = observer.map(|o| Both(&progress, o));
    let observer: &dyn Observer = match &both {
        Some(b) => b,
        None => &progress,
    };
    let segmented = if jobs.is_empty() {
        Segmented {
            outcomes: Vec::new(),
            model: None,
            labels: run_label_table(opts, opts.model.num_classes),
            load_s: 0.0,
            wall: std::time::Duration::ZERO,
        }
    } else {
        segment(opts, &jobs, observer)?
    };
    outcomes.extend(segmented.outcomes);
    progress.finish();
    let mut totals = Totals::from_outcomes(&outcomes, segmented.wall);
    totals.other_shards = plan.other_shards;
    totals.model_load_s = segmented.load_s;
    progress.note(&format!(
        "done: {} written, {} skipped, {} failed; {} slices in {:.1} s ({:.1} slices/s, model {:.0}% of the time; model load {:.1} s)",
        totals.written,
        totals.skipped,
        totals.failed,
        totals.slices,
        totals.seconds.wall,
        totals.slices_per_s,
        100.0 * totals.model_share_of_wall,
        segmented.load_s
    ));
    let report = RunReport {
        tool: tool_info(),
        command: opts.command.clone(),
        started_unix_s: started_unix,
        finished_unix_s: unix_now(),
        pipeline: pipeline_record(&opts.slicer.pipeline),
        model: segmented.model,
        settings: run_settings(opts),
        label_table: segmented.labels,
        cases: outcomes.iter().map(CaseRecord::from).collect(),
        totals,
    };
    let report_path = opts.report.as_ref().map(|path| {
        PathBuf::from(
            path.to_string_lossy()
                .replace("{shard}", &opts.shard.index().to_string()),
        )
    });
    if let Some(path) = &report_path {
        write_report(path, &report)?;
    }
    Ok((outcomes, report, report_path))
}

/// Discover the cases (printing the discovery's warnings), check `--preview` against their
/// number, and split them into this shard's work: the plan and the number of cases found.
fn plan_cases(opts: &RunOptions) -> anyhow::Result<(cases::Plan, usize)> {
    let disc = cases::discover(&CaseSpec {
        inputs: &opts.inputs,
        manifest: opts.manifest.as_deref(),
        out: &opts.out,
        name: &opts.name,
    })
    .classified()?;
    for w in &disc.warnings {
        eprintln!("warning: {w}");
    }
    let n_cases = disc.cases.len();
    if let Some(p) = &opts.preview {
        if n_cases > 1 && !p.per_case() {
            return Err(UsageError(format!(
                "--preview {}: {n_cases} cases would write the same file; put {{case}} in the path",
                p.0
            ))
            .into());
        }
    }
    if opts.formats.any_dicom() {
        refuse_nifti_for_dicom_outputs(&disc.cases, &opts.formats)?;
    }
    if let Some(u) = &opts.uncertainty {
        if n_cases > 1 && !u.per_case() {
            return Err(UsageError(format!(
                "--uncertainty {}: {n_cases} cases would write the same file; put {{case}} in the name or give a folder",
                u.0
            ))
            .into());
        }
    }
    let extra = |c: &cases::Case| -> Vec<PathBuf> {
        opts.uncertainty.iter().map(|u| u.render(&c.id)).collect()
    };
    Ok((
        cases::plan(
            disc.cases,
            opts.shard,
            opts.overwrite,
            &opts.formats,
            &extra,
        ),
        n_cases,
    ))
}

/// DICOM outputs reference the source images' SOP instances, which a NIfTI input does not
/// have: refused for every case before any work (exit 2), naming the cases.
fn refuse_nifti_for_dicom_outputs(cases: &[cases::Case], formats: &Formats) -> anyhow::Result<()> {
    let nifti: Vec<String> = cases
        .iter()
        .filter(|c| {
            matches!(
                crate::io::input_kind(&c.input),
                Ok(crate::io::InputKind::Nifti)
            )
        })
        .map(|c| format!("'{}' ({})", c.id, c.input.display()))
        .collect();
    if nifti.is_empty() {
        return Ok(());
    }
    let dicom: Vec<&str> = formats
        .iter()
        .filter(|f| f.is_dicom())
        .map(OutputFormat::name)
        .collect();
    let shown = nifti.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if nifti.len() > 5 {
        format!(" and {} more", nifti.len() - 5)
    } else {
        String::new()
    };
    Err(UsageError(format!(
        "--format {}: DICOM outputs need a DICOM input (they reference the source series' images), \
         but {} case(s) are NIfTI: {shown}{more}; pass the DICOM series folders, or drop {} from --format",
        formats,
        nifti.len(),
        dicom.join(" and ")
    ))
    .into())
}

/// What the model part of a run produced.
struct Segmented {
    outcomes: Vec<CaseOutcome>,
    model: Option<ModelInfo>,
    labels: Vec<LabelInfo>,
    load_s: f64,
    wall: std::time::Duration,
}

/// Load the model, write the label tables, and stream the engine over `jobs` (not empty).
fn segment(opts: &RunOptions, jobs: &[Job], observer: &dyn Observer) -> anyhow::Result<Segmented> {
    let t = Instant::now();
    let (mut model, mut info) = load_segmenter(opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let labels = run_label_table(opts, model.num_classes());
    let pipeline_name = pipeline_label(&opts.slicer.pipeline);
    let derived = match opts.formats.any_dicom() {
        true => Some(derived_settings(opts, &info, &labels)?),
        false => None,
    };
    write_sidecars(&opts.out.dir(), &pipeline_name, &labels)
        .with_context(|| format!("writing label tables into {}", opts.out.dir().display()))?;
    // The weights digest (seconds for a large checkpoint) overlaps the run.
    let digests = opts.report.is_some() || opts.provenance_digests;
    let digest = digests
        .then_some(())
        .and(info.weights.clone())
        .map(|w| std::thread::spawn(move || super::engine::sha256_files(&[w])));
    let engine = Engine {
        slicer: &opts.slicer,
        io: &FileIo,
        observer,
        options: engine_options(opts, &info, labels.clone(), derived),
    };
    let t = Instant::now();
    let outcomes = engine.run(jobs, model.as_mut());
    let wall = t.elapsed();
    if let Some(h) = digest {
        info.weights_sha256 = h.join().ok().and_then(|r| r.ok());
    }
    Ok(Segmented {
        outcomes,
        model: Some(info),
        labels,
        load_s,
        wall,
    })
}

/// The engine settings of a run: `run`'s, and the Python binding's in-memory runs (which
/// take the arrays instead of files, and choose `uncertainty` per call).
pub fn engine_options(
    opts: &RunOptions,
    info: &ModelInfo,
    labels: Vec<LabelInfo>,
    derived: Option<DerivedSettings>,
) -> EngineOptions {
    EngineOptions {
        batch_size: opts.batch_size,
        noise: opts.noise,
        seed: opts.seed,
        read: opts.read.clone(),
        digest_inputs: opts.report.is_some() || opts.provenance_digests,
        labels,
        demo_model: info.demo_model,
        formats: opts.formats.clone(),
        derived,
        samples: opts.samples,
        uncertainty: opts.uncertainty.is_some(),
        refine: opts.refine.clone(),
    }
}

/// The label table of a run: the model's classes, named by the pipeline.
pub fn run_label_table(opts: &RunOptions, num_classes: usize) -> Vec<LabelInfo> {
    let names: Vec<(u16, String)> = opts
        .slicer
        .pipeline
        .labels
        .classes
        .iter()
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    label_table(num_classes, &names)
}

/// The segment list and producer of a run's DICOM outputs. The weights are hashed here (the
/// producer's version names them exactly), which a `--report` run then reuses.
fn derived_settings(
    opts: &RunOptions,
    info: &ModelInfo,
    labels: &[LabelInfo],
) -> anyhow::Result<DerivedSettings> {
    let pipeline = pipeline_label(&opts.slicer.pipeline);
    let segments = segment_specs(
        &opts.slicer.pipeline.labels,
        labels,
        &pipeline,
        opts.formats.contains(OutputFormat::DicomSeg),
    )
    .map_err(UsageError)?;
    let weights_sha = match &info.weights {
        Some(w) => Some(
            super::engine::sha256_files(std::slice::from_ref(w))
                .with_context(|| format!("hashing {}", w.display()))?,
        ),
        None => None,
    };
    let short = weights_sha
        .as_deref()
        .map(|h| h[..12.min(h.len())].to_string())
        .unwrap_or_else(|| info.kind.clone());
    let preset = info
        .config
        .get("preset")
        .and_then(|p| p.as_str())
        .unwrap_or(&opts.model.preset)
        .to_string();
    Ok(DerivedSettings {
        segments,
        producer: crate::io::derived::Producer {
            manufacturer: "sdseg-volume".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            algorithm_name: format!("SDSeg {preset} (weights {short})"),
            algorithm_version: short,
        },
        series_description: format!("SDSeg {pipeline} segmentation"),
        empty_segments: opts.empty_segments,
    })
}

fn pipeline_record(p: &crate::pipeline::config::Pipeline) -> PipelineRecord {
    PipelineRecord {
        name: pipeline_label(p),
        origin: p.origin.to_string(),
        window_hu: [p.window.hu_min, p.window.hu_max],
        summary: p.summary(),
    }
}

fn run_settings(opts: &RunOptions) -> RunSettings {
    RunSettings {
        device: opts.model.device.to_string(),
        // What ran: `f16` on the CPU is the f32 run (`DTypeSpec::for_device`).
        dtype: opts.model.dtype.for_device(opts.model.device).0.to_string(),
        seed: opts.seed,
        noise: opts.noise,
        batch_size: opts.batch_size,
        resize: opts.slicer.resize.to_string(),
        shard: opts.shard.to_string(),
        overwrite: opts.overwrite,
        formats: opts.formats.to_string(),
        samples: opts.samples,
        postprocess: opts.refine.as_ref().map(|p| p.describe()),
        allow_gaps: opts.read.allow_gaps,
        allow_tilt: opts.read.allow_tilt,
    }
}

/// `Ok` when no case failed; the case's own error when the only case failed;
/// [`PartialFailure`] (exit 3) otherwise, after naming each failed case.
pub fn exit_status(outcomes: &[CaseOutcome]) -> anyhow::Result<()> {
    let failed: Vec<&CaseOutcome> = outcomes.iter().filter(|o| o.is_failed()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [only] if outcomes.len() == 1 => match &only.status {
            CaseStatus::Failed(e) => Err(crate::error::classified(e.clone())),
            _ => unreachable!("filtered on failures"),
        },
        _ => {
            for o in &failed {
                if let CaseStatus::Failed(e) = &o.status {
                    eprintln!("failed: {} ({}): {}", o.case.id, e.stage, e);
                }
            }
            Err(PartialFailure {
                failed: failed.len(),
                total: outcomes.len(),
            }
            .into())
        }
    }
}

/// `name` or `name:variant`.
pub fn pipeline_label(p: &crate::pipeline::config::Pipeline) -> String {
    match &p.variant {
        Some(v) => format!("{}:{v}", p.name),
        None => p.name.clone(),
    }
}

fn write_report(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(report).context("serialising the run report")?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    crate::io::atomic::write_atomic(path, |f| {
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")
    })
    .with_context(|| format!("writing report {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("threshold:9".parse::<TestModel>().unwrap().classes, 9);
        assert_eq!("threshold:2:40".parse::<TestModel>().unwrap().delay_ms, 40);
        assert!("threshold:2:x".parse::<TestModel>().is_err());
        assert!("threshold:1".parse::<TestModel>().is_err());
    }

    #[test]
    fn model_config_resolution_order() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("model.ckpt");
        std::fs::write(&w, b"x").unwrap();
        let mut m = ModelChoice {
            weights: Some(w.clone()),
            model_config: None,
            preset: "sdseg-binary".into(),
            num_classes: 2,
            ema: true,
            device: DeviceSpec::Cpu,
            dtype: DTypeSpec::F32,
            test: None,
        };
        assert_eq!(
            resolve_model_config(&m),
            ConfigSource::Preset("sdseg-binary".into())
        );
        std::fs::write(d.path().join("config.json"), b"{}").unwrap();
        assert_eq!(
            resolve_model_config(&m),
            ConfigSource::BesideWeights(d.path().join("config.json"))
        );
        std::fs::write(d.path().join("model.ckpt.json"), b"{}").unwrap();
        assert_eq!(
            resolve_model_config(&m),
            ConfigSource::BesideWeights(d.path().join("model.ckpt.json"))
        );
        m.model_config = Some("sdseg-cls9".into());
        assert_eq!(
            resolve_model_config(&m),
            ConfigSource::Flag("sdseg-cls9".into())
        );
    }
}
