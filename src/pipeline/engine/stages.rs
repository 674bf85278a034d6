//! The stage threads of [`Engine::run`] and the messages between them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use ndarray::{Array3, Axis, Slice};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::prep::VolumePlan;
use super::{CaseArrays, CaseDetails, CaseError, CaseOutcome, CaseStatus, Engine, Job, VolumeMeta};
use crate::error::ResultExt;
use crate::pipeline::outputs::{Formats, OutputFormat};
use crate::pipeline::postprocess::PostprocessError;
use crate::pipeline::preview::{self, PreviewSlices};
use crate::pipeline::segmenter::{
    plane_len, slice_len, summarise_draws, NoiseSource, SliceSegmenter, SoftOutput,
};
use crate::pipeline::stats::{LabelAccumulator, UNCERTAIN_BINARY, UNCERTAIN_ENTROPY};
use crate::volume::{Source, Volume};

/// A volume read and planned, travelling with what is known about its case.
struct Loaded {
    idx: usize,
    volume: Arc<Volume>,
    plan: Arc<VolumePlan>,
    details: CaseDetails,
    started: Instant,
}

struct Failure {
    idx: usize,
    error: CaseError,
    details: CaseDetails,
    started: Instant,
}

enum ToModel {
    Begin(Loaded),
    Batch {
        idx: usize,
        first: usize,
        b: usize,
        images: Vec<f32>,
        noise: Vec<f32>,
    },
    End {
        idx: usize,
        prepare: Duration,
    },
    Failed(Failure),
}

enum ToPost {
    Begin(Loaded),
    Batch {
        idx: usize,
        first: usize,
        b: usize,
        soft: SoftOutput,
        model: Duration,
    },
    BatchFailed {
        idx: usize,
        error: CaseError,
        model: Duration,
    },
    End {
        idx: usize,
        prepare: Duration,
    },
    Failed(Failure),
}

struct Finished {
    idx: usize,
    labels: Array3<u16>,
    uncertainty: Option<Array3<f32>>,
    meta: VolumeMeta,
    details: CaseDetails,
    preview: Option<PreviewSlices>,
    started: Instant,
}

enum ToWriter {
    Done(Box<Finished>),
    Failed(Box<Failure>),
}

pub(super) fn run(
    engine: &Engine<'_>,
    jobs: &[Job],
    model: &mut dyn SliceSegmenter,
) -> Vec<CaseOutcome> {
    let size = engine.slicer.model_size();
    if model.size() != size {
        // A wiring error (the model was built for other slices): nothing can run.
        let message = format!(
            "the model takes {m}×{m} slices but pipeline '{}' makes {size}×{size} slices",
            engine.slicer.pipeline.name,
            m = model.size()
        );
        return jobs
            .iter()
            .map(|j| {
                let outcome = CaseOutcome {
                    case: j.case.clone(),
                    status: CaseStatus::Failed(CaseError {
                        input: j.case.input.clone(),
                        stage: "model",
                        message: message.clone(),
                        input_error: false,
                    }),
                    details: CaseDetails::default(),
                };
                engine.observer.case_finished(&outcome);
                outcome
            })
            .collect();
    }
    let noise = NoiseSource::new(
        engine.options.noise,
        engine.options.seed,
        model.latent_shape(),
    );
    let batch = engine.options.batch_size.max(1);
    let (tx_read, rx_read) = bounded::<Result<Loaded, Failure>>(0);
    let (tx_model, rx_model) = bounded::<ToModel>(2);
    let (tx_post, rx_post) = bounded::<ToPost>(2);
    let (tx_write, rx_write) = bounded::<ToWriter>(1);
    let classes = model_classes(&*model);
    std::thread::scope(|s| {
        s.spawn(|| reader(engine, jobs, tx_read));
        s.spawn(|| prepare(engine, jobs, &noise, batch, rx_read, tx_model));
        s.spawn(|| postprocess(engine, jobs, classes, rx_post, tx_write));
        let writer = s.spawn(|| writer(engine, jobs, rx_write));
        run_model(
            model,
            jobs,
            plane_len(size),
            engine.options.samples.max(1),
            rx_model,
            tx_post,
        );
        writer.join().expect("writer thread panicked")
    })
}

fn model_classes(model: &dyn SliceSegmenter) -> usize {
    model.num_classes().max(2)
}

fn failure(job: &Job, stage: &'static str, err: &anyhow::Error) -> CaseError {
    CaseError::new(&job.case.input, stage, err)
}

// ---------------------------------------------------------------------------------------------
// reader

fn reader(engine: &Engine<'_>, jobs: &[Job], tx: Sender<Result<Loaded, Failure>>) {
    for (idx, job) in jobs.iter().enumerate() {
        let started = Instant::now();
        let mut details = CaseDetails::default();
        let result = read_one(engine, job, &mut details);
        details.timings.read = started.elapsed();
        let msg = match result {
            Ok((volume, plan)) => Ok(Loaded {
                idx,
                volume,
                plan: Arc::new(plan),
                details,
                started,
            }),
            Err(e) => Err(Failure {
                idx,
                error: failure(job, "read", &e),
                details,
                started,
            }),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

fn read_one(
    engine: &Engine<'_>,
    job: &Job,
    details: &mut CaseDetails,
) -> anyhow::Result<(Arc<Volume>, VolumePlan)> {
    let volume = engine
        .io
        .read_shared(&job.case.input, &engine.options.read)?;
    details.shape = Some(volume.shape());
    details.spacing = Some(volume.spacing());
    details.orientation = Some(volume.axcodes().to_string());
    details.warnings = volume.provenance().warnings.clone();
    if engine.options.demo_model && !crate::phantom::looks_like_demo_phantom(&volume) {
        details
            .warnings
            .push(crate::pipeline::demo::report_warning());
        engine.observer.demo_input_warning(&job.case);
    }
    if engine.options.formats.any_dicom() {
        check_dicom_source(&volume, &job.case.input, &engine.options.formats)?;
    }
    let files: Vec<PathBuf> = match &volume.provenance().source {
        Source::Dicom(d) => {
            details.series_uid = Some(d.series_instance_uid.clone());
            details.series_description = d.series_description.clone();
            d.files.clone()
        }
        Source::Nifti(n) => vec![n.path.clone()],
        Source::Synthetic => vec![],
    };
    if engine.options.digest_inputs && !files.is_empty() {
        details.input_sha256 = Some(sha256_files(&files)?);
    }
    let plan = engine.slicer.plan(&volume);
    details.slices = plan.slices();
    Ok((volume, plan))
}

/// DICOM outputs need a source they can reference (every SOPInstanceUID, one frame of
/// reference): checked when the case is read, before the model runs.
fn check_dicom_source(volume: &Volume, input: &Path, formats: &Formats) -> anyhow::Result<()> {
    let what = if formats.contains(OutputFormat::DicomSeg) {
        "a DICOM-SEG"
    } else {
        "an RTSTRUCT"
    };
    match &volume.provenance().source {
        Source::Dicom(d) => {
            crate::io::derived::check_reference(&d.reference, input, what).classified()?;
            Ok(())
        }
        _ => Err(crate::error::UsageError(format!(
            "{}: DICOM outputs need a DICOM input",
            input.display()
        ))
        .into()),
    }
}

/// sha256 of the concatenated bytes of `files`, in order (a DICOM series: its files in slice
/// order).
pub fn sha256_files(files: &[PathBuf]) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file =
            std::fs::File::open(f).with_context(|| format!("hashing {}", f.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("hashing {}", f.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// prepare + batcher

fn prepare(
    engine: &Engine<'_>,
    jobs: &[Job],
    noise: &NoiseSource,
    batch: usize,
    rx: Receiver<Result<Loaded, Failure>>,
    tx: Sender<ToModel>,
) {
    let latent = noise.latent_len();
    let slice = slice_len(engine.slicer.model_size());
    for msg in rx {
        let loaded = match msg {
            Ok(l) => l,
            Err(f) => {
                if tx.send(ToModel::Failed(f)).is_err() {
                    return;
                }
                continue;
            }
        };
        let idx = loaded.idx;
        let volume = loaded.volume.clone();
        let plan = loaded.plan.clone();
        let n = plan.slices();
        if tx.send(ToModel::Begin(loaded)).is_err() {
            return;
        }
        let case_id = jobs[idx].case.id.as_str();
        let mut spent = Duration::ZERO;
        for first in (0..n).step_by(batch) {
            let b = batch.min(n - first);
            let t = Instant::now();
            let view = plan.geometry.reorientation.view(volume.data().view());
            let mut images = vec![0f32; b * slice];
            images
                .par_chunks_mut(slice)
                .enumerate()
                .for_each(|(s, out)| {
                    engine
                        .slicer
                        .prepare(&plan, view.index_axis(Axis(2), first + s), out)
                });
            // Draw-major: draw d of slice s at d·b + s (draw 0 is the single-draw noise).
            let draws = engine.options.samples.max(1);
            let mut z = vec![0f32; draws * b * latent];
            z.par_chunks_mut(latent)
                .enumerate()
                .for_each(|(r, out)| noise.fill_draw(case_id, first + r % b, r / b, out));
            spent += t.elapsed();
            let msg = ToModel::Batch {
                idx,
                first,
                b,
                images,
                noise: z,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        if tx
            .send(ToModel::End {
                idx,
                prepare: spent,
            })
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// model (runs on the caller's thread)

fn run_model(
    model: &mut dyn SliceSegmenter,
    jobs: &[Job],
    plane: usize,
    samples: usize,
    rx: Receiver<ToModel>,
    tx: Sender<ToPost>,
) {
    let classes = model_classes(model);
    let draws = jobs.first().map(|_| samples).unwrap_or(1);
    let mut failed: Option<usize> = None;
    for msg in rx {
        let out = match msg {
            ToModel::Begin(l) => ToPost::Begin(l),
            ToModel::End { idx, prepare } => ToPost::End { idx, prepare },
            ToModel::Failed(f) => ToPost::Failed(f),
            ToModel::Batch { idx, .. } if failed == Some(idx) => continue,
            ToModel::Batch {
                idx,
                first,
                b,
                images,
                noise,
            } => {
                let t = Instant::now();
                let result = model
                    .segment_draws(&images, &noise, b, draws)
                    .map_err(|e| anyhow::anyhow!("model: {e}"))
                    .and_then(|soft| check_soft(soft, draws * b, classes, plane));
                let spent = t.elapsed();
                drop(images);
                match result {
                    Ok(soft) => ToPost::Batch {
                        idx,
                        first,
                        b,
                        soft,
                        model: spent,
                    },
                    Err(e) => {
                        failed = Some(idx);
                        ToPost::BatchFailed {
                            idx,
                            error: failure(&jobs[idx], "model", &e),
                            model: spent,
                        }
                    }
                }
            }
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

fn check_soft(
    soft: SoftOutput,
    b: usize,
    classes: usize,
    plane: usize,
) -> anyhow::Result<SoftOutput> {
    let want_planes = if classes <= 2 { 1 } else { classes };
    let ok_kind = match &soft {
        SoftOutput::Probabilities(_) => classes <= 2,
        SoftOutput::Logits { classes: k, .. } => *k == classes && classes > 2,
    };
    if !ok_kind || soft.data().len() != b * want_planes * plane {
        anyhow::bail!(
            "model returned {} values as {} for a batch of {b} ({classes} classes); expected {}",
            soft.data().len(),
            match soft {
                SoftOutput::Probabilities(_) => "probabilities".to_string(),
                SoftOutput::Logits { classes, .. } => format!("{classes}-class logits"),
            },
            b * want_planes * plane
        );
    }
    Ok(soft)
}

// ---------------------------------------------------------------------------------------------
// postprocess

struct InProgress {
    loaded: Loaded,
    labels: Array3<u16>,
    /// `--uncertainty`: the draws' disagreement per voxel, on the input grid.
    uncertainty: Option<Array3<f32>>,
    acc: LabelAccumulator,
    error: Option<CaseError>,
}

fn postprocess(
    engine: &Engine<'_>,
    jobs: &[Job],
    classes: usize,
    rx: Receiver<ToPost>,
    tx: Sender<ToWriter>,
) {
    let mut cur: Option<InProgress> = None;
    for msg in rx {
        let out = match msg {
            ToPost::Failed(f) => Some(ToWriter::Failed(Box::new(f))),
            ToPost::Begin(l) => {
                engine
                    .observer
                    .case_started(&jobs[l.idx].case, l.plan.slices());
                // Zeroed on demand by the allocator: untouched pages cost nothing.
                let labels = Array3::<u16>::zeros(l.volume.dim_tuple());
                let with_u = engine.options.uncertainty;
                let uncertainty = with_u.then(|| Array3::<f32>::zeros(l.volume.dim_tuple()));
                let acc = LabelAccumulator::new(classes);
                cur = Some(InProgress {
                    loaded: l,
                    labels,
                    uncertainty,
                    acc: if with_u { acc.with_uncertainty() } else { acc },
                    error: None,
                });
                None
            }
            ToPost::BatchFailed { idx, error, model } => {
                if let Some(c) = cur.as_mut().filter(|c| c.loaded.idx == idx) {
                    c.loaded.details.timings.model += model;
                    c.error.get_or_insert(error);
                }
                None
            }
            ToPost::Batch {
                idx,
                first,
                b,
                soft,
                model,
            } => {
                if let Some(c) = cur.as_mut().filter(|c| c.loaded.idx == idx) {
                    c.loaded.details.timings.model += model;
                    if c.error.is_none() {
                        let t = Instant::now();
                        if let Err(e) = finish_batch(engine, c, first, b, &soft, classes) {
                            let e = crate::error::classified(e).context("postprocessing");
                            c.error = Some(failure(&jobs[idx], "postprocess", &e));
                        }
                        c.loaded.details.timings.postprocess += t.elapsed();
                        engine.observer.slices_done(&jobs[idx].case, b);
                    }
                }
                None
            }
            ToPost::End { idx, prepare } => match cur.take() {
                Some(mut c) if c.loaded.idx == idx => {
                    c.loaded.details.timings.prepare = prepare;
                    Some(end_case(engine, jobs, c))
                }
                other => {
                    cur = other;
                    None
                }
            },
        };
        if let Some(out) = out {
            if tx.send(out).is_err() {
                return;
            }
        }
    }
}

fn finish_batch(
    engine: &Engine<'_>,
    c: &mut InProgress,
    first: usize,
    b: usize,
    soft: &SoftOutput,
    classes: usize,
) -> Result<(), PostprocessError> {
    let plan = &c.loaded.plan;
    let size = engine.slicer.model_size();
    let draws = engine.options.samples.max(1);
    let threshold = if classes > 2 {
        UNCERTAIN_ENTROPY
    } else {
        UNCERTAIN_BINARY
    };
    let r = &plan.geometry.reorientation;
    let hu = r.view(c.loaded.volume.data().view());
    let mut lab = r.view_mut(c.labels.view_mut());
    let mut sub = lab.slice_axis_mut(Axis(2), Slice::from(first..first + b));
    let mut unc = c.uncertainty.as_mut().map(|u| r.view_mut(u.view_mut()));
    let mut unc_slab = unc
        .as_mut()
        .map(|u| u.slice_axis_mut(Axis(2), Slice::from(first..first + b)));
    let unc_sub: Vec<Option<ndarray::ArrayViewMut2<'_, f32>>> = match unc_slab.as_mut() {
        Some(u) => u.axis_iter_mut(Axis(2)).map(Some).collect(),
        None => (0..b).map(|_| None).collect(),
    };
    let accs: Vec<Result<LabelAccumulator, PostprocessError>> = sub
        .axis_iter_mut(Axis(2))
        .into_par_iter()
        .zip(unc_sub)
        .enumerate()
        .map(|(s, (mut out, u_out))| {
            let mut a = LabelAccumulator::new(classes);
            if draws == 1 && u_out.is_none() {
                engine
                    .slicer
                    .finish(plan, soft.slice_planes(s, size), out.view_mut())?;
            } else {
                let summary = summarise_draws(soft, s, b, draws, size);
                engine
                    .slicer
                    .finish(plan, &summary.planes, out.view_mut())?;
                if let Some(mut u) = u_out {
                    engine
                        .slicer
                        .finish_uncertainty(plan, &summary.uncertainty, u.view_mut())?;
                    a = a.with_uncertainty();
                    a.add_uncertainty(out.view(), u.view(), threshold);
                }
            }
            a.add_slice(out.view(), hu.index_axis(Axis(2), first + s));
            Ok(a)
        })
        .collect();
    // Merged in slice order so the sums (and the reported means) are reproducible.
    for a in accs {
        let acc = std::mem::take(&mut c.acc);
        c.acc = acc.merge(a?);
    }
    Ok(())
}

fn end_case(engine: &Engine<'_>, jobs: &[Job], c: InProgress) -> ToWriter {
    let InProgress {
        loaded,
        mut labels,
        uncertainty,
        mut acc,
        error,
    } = c;
    let Loaded {
        idx,
        volume,
        plan,
        mut details,
        started,
    } = loaded;
    if let Some(error) = error {
        return ToWriter::Failed(Box::new(Failure {
            idx,
            error,
            details,
            started,
        }));
    }
    let t = Instant::now();
    let voxel_ml = volume.affine().det3().abs() / 1000.0;
    if let Some(refine) = &engine.options.refine {
        // Holes are filled slice by slice along the axis the model sliced.
        let view = plan.geometry.reorientation.view_mut(labels.view_mut());
        match refine.apply_view(view, voxel_ml) {
            Ok(summary) => {
                if summary
                    .labels
                    .iter()
                    .any(|e| e.voxels_removed + e.voxels_filled > 0)
                {
                    acc = recount(&labels, volume.data(), uncertainty.as_ref(), acc.classes());
                }
            }
            Err(e) => {
                let e = crate::error::classified(e).context("3D post-processing");
                return ToWriter::Failed(Box::new(Failure {
                    idx,
                    error: failure(&jobs[idx], "postprocess", &e),
                    details,
                    started,
                }));
            }
        }
    }
    details.stats = acc.finish(voxel_ml, &engine.options.labels);
    let preview = jobs[idx].preview.as_ref().map(|_| {
        preview::extract(
            volume.data().view(),
            labels.view(),
            uncertainty.as_ref().map(|u| u.view()),
            volume.affine(),
        )
    });
    details.timings.postprocess += t.elapsed();
    let meta = VolumeMeta {
        shape: volume.shape(),
        affine: *volume.affine(),
        provenance: volume.provenance().clone(),
    };
    ToWriter::Done(Box::new(Finished {
        idx,
        labels,
        uncertainty,
        meta,
        details,
        preview,
        started,
    }))
}

/// The label statistics of a whole volume again (after 3D post-processing changed labels).
fn recount(
    labels: &Array3<u16>,
    hu: &Array3<f32>,
    uncertainty: Option<&Array3<f32>>,
    classes: usize,
) -> LabelAccumulator {
    let threshold = if classes > 2 {
        UNCERTAIN_ENTROPY
    } else {
        UNCERTAIN_BINARY
    };
    let mut acc = LabelAccumulator::new(classes);
    for k in 0..labels.shape()[2] {
        let l = labels.index_axis(Axis(2), k);
        acc.add_slice(l, hu.index_axis(Axis(2), k));
        if let Some(u) = uncertainty {
            acc.add_uncertainty(l, u.index_axis(Axis(2), k), threshold);
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// writer

fn writer(engine: &Engine<'_>, jobs: &[Job], rx: Receiver<ToWriter>) -> Vec<CaseOutcome> {
    let mut outcomes: Vec<Option<CaseOutcome>> = vec![None; jobs.len()];
    for msg in rx {
        let (idx, status, mut details, started) = match msg {
            ToWriter::Failed(f) => (f.idx, CaseStatus::Failed(f.error), f.details, f.started),
            ToWriter::Done(f) => {
                let Finished {
                    idx,
                    labels,
                    uncertainty,
                    meta,
                    mut details,
                    preview,
                    started,
                } = *f;
                let t = Instant::now();
                let job = &jobs[idx];
                let arrays = CaseArrays {
                    labels,
                    uncertainty,
                    meta,
                };
                let res = match engine.io.take_arrays(&job.case, arrays) {
                    None => Ok(()),
                    Some(a) => write_case(
                        engine,
                        job,
                        &a.labels,
                        a.uncertainty.as_ref(),
                        &a.meta,
                        preview.as_ref(),
                    ),
                };
                details.timings.write = t.elapsed();
                match res {
                    Ok(()) => {
                        details.preview = job.preview.clone();
                        details.uncertainty = job.uncertainty.clone();
                        (idx, CaseStatus::Written, details, started)
                    }
                    Err(e) => (
                        idx,
                        CaseStatus::Failed(failure(job, "write", &e)),
                        details,
                        started,
                    ),
                }
            }
        };
        details.timings.wall = started.elapsed();
        let outcome = CaseOutcome {
            case: jobs[idx].case.clone(),
            status,
            details,
        };
        engine.observer.case_finished(&outcome);
        outcomes[idx] = Some(outcome);
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.unwrap_or_else(|| CaseOutcome {
                case: jobs[i].case.clone(),
                status: CaseStatus::Failed(CaseError {
                    input: jobs[i].case.input.clone(),
                    stage: "engine",
                    message: "the case was not processed (a stage stopped early)".into(),
                    input_error: false,
                }),
                details: CaseDetails::default(),
            })
        })
        .collect()
}

fn write_case(
    engine: &Engine<'_>,
    job: &Job,
    labels: &Array3<u16>,
    uncertainty: Option<&Array3<f32>>,
    meta: &VolumeMeta,
    preview: Option<&PreviewSlices>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // The uncertainty map first: a case counts as done (resume) when its labels exist.
    if let (Some(path), Some(u)) = (&job.uncertainty, uncertainty) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating output folder {}", dir.display()))?;
        }
        remove_stale_temps(path);
        engine
            .io
            .write_map(path, u, meta)
            .with_context(|| format!("writing uncertainty map {}", path.display()))?;
    }
    for (format, output) in &job.case.outputs {
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating output folder {}", dir.display()))?;
        }
        remove_stale_temps(output);
        match format {
            OutputFormat::Nifti => engine.io.write_labels(output, labels, meta),
            dicom => write_derived(engine, output, *dicom, labels, meta),
        }
        .with_context(|| format!("writing {}", output.display()))?;
    }
    if let (Some(path), Some(p)) = (&job.preview, preview) {
        let (lo, hi) = engine.slicer.window();
        let title = format!("{}   window [{lo}, {hi}] HU", job.case.id);
        let img = preview::render(p, (lo, hi), &engine.options.labels, &title);
        preview::write_png(path, &img)
            .with_context(|| format!("writing preview {}", path.display()))?;
    }
    Ok(())
}

/// One DICOM output of a case: the labels present (or all, `--empty-segments`) as segments.
fn write_derived(
    engine: &Engine<'_>,
    output: &Path,
    format: OutputFormat,
    labels: &Array3<u16>,
    meta: &VolumeMeta,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let settings = engine
        .options
        .derived
        .as_ref()
        .context("internal: DICOM output without derived settings")?;
    let Source::Dicom(source) = &meta.provenance.source else {
        anyhow::bail!("DICOM outputs need a DICOM input");
    };
    let segments = settings.segments_for(labels);
    let request = crate::io::derived::DerivedRequest {
        labels: labels.view(),
        reference: &source.reference,
        segments: &segments,
        producer: &settings.producer,
        series_description: settings.series_description.clone(),
        series_number: derived_series_number(format),
        created: crate::io::derived::Timestamp::now(),
    };
    engine.io.write_derived(output, format, &request)
}

/// SeriesNumber of a derived series: the convention of viewers that sort derived series after
/// their source (DICOM-SEG 300, RTSTRUCT 301), fixed so outputs are reproducible.
fn derived_series_number(format: OutputFormat) -> i32 {
    match format {
        OutputFormat::Rtstruct => 301,
        _ => 300,
    }
}

/// Remove temporary files a killed earlier run left for this output (`.NAME.*.part*`, the
/// atomic writers' naming). Only this case's own temporaries: no other process writes them,
/// because every case belongs to exactly one shard.
fn remove_stale_temps(output: &Path) {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.contains(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

trait DimTuple {
    fn dim_tuple(&self) -> (usize, usize, usize);
}

impl DimTuple for Volume {
    fn dim_tuple(&self) -> (usize, usize, usize) {
        let s = self.shape();
        (s[0], s[1], s[2])
    }
}
