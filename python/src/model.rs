//! `Model` and `Segmentation`: a model loaded once, then volumes through the same streaming
//! engine `run` uses (`pipeline::engine::Engine`, options from `runner::engine_options`), with
//! an in-memory [`CaseIo`] that hands the volume over and takes the arrays back instead of
//! reading and writing files. Same reader, slicer, noise, model, post-processing: the labels
//! equal `run`'s for the same input and options, by construction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use numpy::{PyArray3, PyReadonlyArray3};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sdseg_volume::cli::Globals;
use sdseg_volume::error::ResultExt;
use sdseg_volume::io::ReadOptions;
use sdseg_volume::pipeline::cases::{case_id_for, Case};
use sdseg_volume::pipeline::engine::{
    CaseArrays, CaseIo, CaseOutcome, CaseStatus, Engine, FileIo, Job, Observer, VolumeMeta,
};
use sdseg_volume::pipeline::labels_sidecar::LabelInfo;
use sdseg_volume::pipeline::report::{CaseRecord, ModelInfo};
use sdseg_volume::pipeline::runner::{self, RunOptions};
use sdseg_volume::pipeline::segmenter::SliceSegmenter;
use sdseg_volume::volume::Volume;

use crate::errors::{self, IntoPy};
use crate::options::{self, Options};
use crate::volume::{affine_to_numpy, source_path, PyVolume};

/// A segmentation model, loaded once (as ``sdseg-volume run`` loads it) and reused for any
/// number of volumes. Build it with :class:`sdseg_volume.Model` (the keyword options and
/// defaults of ``run``).
#[pyclass(module = "sdseg_volume._native", name = "Model", frozen)]
pub struct PyModel {
    opts: RunOptions,
    info: ModelInfo,
    labels: Vec<LabelInfo>,
    /// One volume at a time per model (the model's scratch buffers); other models, and other
    /// Python threads, run meanwhile (the GIL is released while waiting for it).
    segmenter: Mutex<Box<dyn SliceSegmenter>>,
}

#[pymethods]
impl PyModel {
    #[new]
    fn new(py: Python<'_>, options: Bound<'_, PyDict>) -> PyResult<Self> {
        let mut o = Options::new(options);
        let defaults = options::cli_run_args(vec![], PathBuf::from("."));
        let mut args = options::cli_run_args(vec![], PathBuf::from("."));
        args.model = options::model_args(&mut o, defaults.model)?;
        args.output.postprocess = o.get("postprocess")?;
        let quiet = o.get_or("quiet", false)?;
        o.finish()?;
        // `run`'s own validation and defaults (demo weights unpacked, pipeline loaded, ...);
        // the output side is unused. All shards: a Slurm array's variables are for `run`.
        args.shard = Some(sdseg_volume::pipeline::shard::Shard::ALL);
        let mut opts = args.to_options(Globals { quiet }).classified().py_err()?;
        opts.command = vec!["python: sdseg_volume.Model".into()];
        let (segmenter, info) = py.detach(|| runner::load_segmenter(&opts)).py_err()?;
        let labels = runner::run_label_table(&opts, segmenter.num_classes());
        Ok(PyModel {
            opts,
            info,
            labels,
            segmenter: Mutex::new(segmenter),
        })
    }

    /// Segment one volume: a :class:`Volume` (no copy) or a path (read as ``run`` reads it).
    /// ``progress(case, done, total)`` is called from a worker thread as slices finish.
    #[pyo3(signature = (input, case_id=None, uncertainty=false, progress=None))]
    fn segment(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        case_id: Option<String>,
        uncertainty: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PySegmentation> {
        if uncertainty && self.opts.samples < 2 {
            return Err(errors::input(format!(
                "uncertainty=True needs samples=K with K >= 2 (the model has samples={}): the \
                 uncertainty is the disagreement between noise draws",
                self.opts.samples
            )));
        }
        let (volume, path) = match input.cast::<PyVolume>() {
            Ok(v) => {
                let v = v.get().inner.clone();
                let path = source_path(v.provenance()).unwrap_or_else(|| "<array>".into());
                (Some(v), path)
            }
            Err(_) => (None, input.extract::<PathBuf>()?),
        };
        let id = match case_id {
            Some(id) => id,
            None if volume.as_ref().is_some_and(|v| {
                matches!(
                    v.provenance().source,
                    sdseg_volume::volume::Source::Synthetic
                )
            }) =>
            {
                "volume".into()
            }
            // The case id `run` gives the same input (it seeds per-slice noise).
            None => case_id_for(&path).ok_or_else(|| {
                errors::input(format!("{}: no case id in this path", path.display()))
            })?,
        };
        let io = MemoryIo {
            volume,
            taken: Mutex::new(None),
        };
        let observer = PyObserver::new(progress);
        let job = Job {
            case: Case::new(id, path, PathBuf::new()),
            preview: None,
            uncertainty: None,
        };
        let outcome = py.detach(|| -> anyhow::Result<CaseOutcome> {
            let mut model = self
                .segmenter
                .lock()
                .map_err(|_| anyhow::anyhow!("internal: the model failed in an earlier call"))?;
            let mut options =
                runner::engine_options(&self.opts, &self.info, self.labels.clone(), None);
            options.uncertainty = uncertainty;
            let engine = Engine {
                slicer: &self.opts.slicer,
                io: &io,
                observer: &observer,
                options,
            };
            let mut outcomes = engine.run(std::slice::from_ref(&job), model.as_mut());
            Ok(outcomes.remove(0))
        });
        let outcome = outcome.py_err()?;
        observer.finish(py)?;
        if let CaseStatus::Failed(e) = &outcome.status {
            let err = sdseg_volume::error::classified(e.clone());
            return Err(errors::to_py(&err));
        }
        let arrays = io
            .taken
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| errors::to_py(&anyhow::anyhow!("internal: no labels came back")))?;
        PySegmentation::new(py, arrays, &outcome, &self.labels)
    }

    /// What was loaded, as the run report's ``model`` records it: ``kind``, ``config_source``,
    /// ``config``, ``weights``, ``ema``, ``num_classes``, ``slice_size``, ``demo_model``.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.info)
    }

    /// Label id → name for every class the model predicts (0 is background).
    #[getter]
    fn label_names(&self) -> Vec<(u16, String)> {
        self.labels.iter().map(|l| (l.id, l.name.clone())).collect()
    }

    /// The run settings (device, dtype, seed, noise, batch size, resize, samples,
    /// postprocess).
    #[getter]
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let o = &self.opts;
        let v = serde_json::json!({
            "pipeline": runner::pipeline_label(&o.slicer.pipeline),
            "device": o.model.device.to_string(),
            "dtype": o.model.dtype.to_string(),
            "seed": o.seed,
            "noise": o.noise,
            "batch_size": o.batch_size,
            "resize": o.slicer.resize.to_string(),
            "samples": o.samples,
            "postprocess": o.refine.as_ref().map(|p| p.describe()),
        });
        to_python(py, &v)
    }
}

/// Any serialisable value as plain Python objects (through JSON: the field names and numbers
/// the CLI's JSON outputs have).
pub fn to_python<'py, T: serde::Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v)
        .map_err(|e| errors::to_py(&anyhow::anyhow!("internal: serialising: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The engine's I/O for one volume in memory: the volume handed over (or read from a path with
/// the program's reader), the arrays taken back instead of written.
struct MemoryIo {
    volume: Option<Arc<Volume>>,
    taken: Mutex<Option<CaseArrays>>,
}

impl CaseIo for MemoryIo {
    fn read(&self, input: &Path, opts: &ReadOptions) -> anyhow::Result<Volume> {
        match &self.volume {
            Some(v) => Ok(Volume::clone(v)),
            None => FileIo.read(input, opts),
        }
    }
    fn read_shared(&self, input: &Path, opts: &ReadOptions) -> anyhow::Result<Arc<Volume>> {
        match &self.volume {
            Some(v) => Ok(v.clone()),
            None => FileIo.read(input, opts).map(Arc::new),
        }
    }
    fn write_labels(
        &self,
        output: &Path,
        _labels: &ndarray::Array3<u16>,
        _like: &VolumeMeta,
    ) -> anyhow::Result<()> {
        anyhow::bail!(
            "internal: an in-memory run writes no files ({})",
            output.display()
        )
    }
    fn take_arrays(&self, _case: &Case, arrays: CaseArrays) -> Option<CaseArrays> {
        if let Ok(mut t) = self.taken.lock() {
            *t = Some(arrays);
        }
        None
    }
}

/// Progress for a Python callback `progress(case, done, total)` (slices of the current case),
/// called from the engine's postprocess thread with the GIL taken for the call only. The first
/// exception the callback raises stops further calls and is raised when the run ends (the
/// engine itself cannot be interrupted).
pub struct PyObserver {
    callback: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
    done: AtomicUsize,
    total: AtomicUsize,
    demo_warning: AtomicBool,
}

impl PyObserver {
    pub fn new(callback: Option<Py<PyAny>>) -> PyObserver {
        PyObserver {
            callback,
            error: Mutex::new(None),
            done: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            demo_warning: AtomicBool::new(false),
        }
    }

    fn call(&self, case: &str, done: usize, total: usize) {
        let Some(cb) = &self.callback else { return };
        let Ok(mut err) = self.error.lock() else {
            return;
        };
        if err.is_some() {
            return;
        }
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (case, done, total)) {
                *err = Some(e);
            }
        });
    }

    /// Back on the caller's thread after the run: the callback's exception, if any, and the
    /// demo model's warning (a Python `UserWarning`) when it segmented a non-phantom input.
    pub fn finish(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(e) = self.error.lock().ok().and_then(|mut e| e.take()) {
            return Err(e);
        }
        if self.demo_warning.load(Ordering::SeqCst) {
            let message = sdseg_volume::pipeline::demo::report_warning();
            let warnings = py.import("warnings")?;
            warnings.call_method1(
                "warn",
                (message, py.get_type::<pyo3::exceptions::PyUserWarning>(), 2),
            )?;
        }
        Ok(())
    }
}

impl Observer for PyObserver {
    fn case_started(&self, case: &Case, slices: usize) {
        self.done.store(0, Ordering::SeqCst);
        self.total.store(slices, Ordering::SeqCst);
        self.call(&case.id, 0, slices);
    }
    fn slices_done(&self, case: &Case, n: usize) {
        let done = self.done.fetch_add(n, Ordering::SeqCst) + n;
        self.call(&case.id, done, self.total.load(Ordering::SeqCst));
    }
    fn demo_input_warning(&self, _case: &Case) {
        self.demo_warning.store(true, Ordering::SeqCst);
    }
}

/// The labels of one volume on its grid, as ``run`` would write them.
#[pyclass(module = "sdseg_volume", name = "Segmentation", frozen)]
pub struct PySegmentation {
    /// Label per voxel ``[i, j, k]``: uint8 when every label fits (the type ``run`` writes),
    /// else uint16.
    #[pyo3(get)]
    labels: Py<PyAny>,
    /// ``samples >= 2`` with ``uncertainty=True``: float32 per voxel (binary: std of the
    /// foreground probability over the draws, 0 to 0.5; multi-class: entropy of the mean class
    /// probabilities, nats); else ``None``.
    #[pyo3(get)]
    uncertainty: Option<Py<PyAny>>,
    /// The case id (``run``'s for the same input; it seeds per-slice noise).
    #[pyo3(get)]
    case_id: String,
    meta: VolumeMeta,
    label_names: Vec<(u16, String)>,
    record: serde_json::Value,
}

impl PySegmentation {
    fn new(
        py: Python<'_>,
        arrays: CaseArrays,
        outcome: &CaseOutcome,
        labels: &[LabelInfo],
    ) -> PyResult<PySegmentation> {
        let CaseArrays {
            labels: values,
            uncertainty,
            meta,
        } = arrays;
        let max = values.fold(0u16, |m, &v| m.max(v));
        let labels_array: Py<PyAny> = if max <= u8::MAX as u16 {
            // The one pass over the labels: narrowed to uint8, as `run` writes them.
            let small = py.detach(|| values.mapv(|v| v as u8));
            PyArray3::from_owned_array(py, small).into_any().unbind()
        } else {
            PyArray3::from_owned_array(py, values).into_any().unbind()
        };
        let uncertainty =
            uncertainty.map(|u| PyArray3::from_owned_array(py, u).into_any().unbind());
        let record = serde_json::to_value(CaseRecord::from(outcome))
            .map_err(|e| errors::to_py(&anyhow::anyhow!("internal: {e}")))?;
        Ok(PySegmentation {
            labels: labels_array,
            uncertainty,
            case_id: outcome.case.id.clone(),
            meta,
            label_names: labels.iter().map(|l| (l.id, l.name.clone())).collect(),
            record,
        })
    }
}

#[pymethods]
impl PySegmentation {
    /// The voxel-to-RAS affine of the input (4x4 float64, mm): the labels' grid.
    #[getter]
    fn affine<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray2<f64>> {
        affine_to_numpy(py, &self.meta.affine)
    }

    /// Label id → name (0 is background).
    #[getter]
    fn label_names(&self) -> std::collections::BTreeMap<u16, String> {
        self.label_names.iter().cloned().collect()
    }

    /// Per label: ``label``, ``name``, ``voxels``, ``volume_ml``, ``mean_hu`` (and with the
    /// uncertainty map ``mean_uncertainty``, ``uncertain_ml``): ``run --statistics``.
    #[getter]
    fn statistics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.record["labels"])
    }

    /// Warnings about the input (the reader's, and the demo model's on a non-phantom input).
    #[getter]
    fn warnings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.record["warnings"])
    }

    /// Busy seconds per stage (``read``, ``prepare``, ``model``, ``postprocess``, ``write``,
    /// ``wall``), as the run report has them.
    #[getter]
    fn seconds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.record["seconds"])
    }

    /// Write the labels as ``run`` writes them: NIfTI (``.nii`` / ``.nii.gz``) on the input's
    /// grid (for a NIfTI input with its header's sform/qform codes), atomically, with the same
    /// writer. ``run``'s file for the same input and options has the same voxels and header.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let labels: PyReadonlyArray3<'_, u16> = self
            .labels
            .bind(py)
            .call_method1("astype", ("uint16",))?
            .extract()?;
        let labels = labels.as_array().to_owned();
        let meta = &self.meta;
        py.detach(|| {
            let grid = sdseg_volume::io::nifti::Grid {
                shape: meta.shape,
                affine: &meta.affine,
                source: &meta.provenance.source,
            };
            sdseg_volume::io::nifti::write_labels_on(&path, &labels, grid)
                .classified()
                .map_err(|e| e.context(format!("writing {}", path.display())))
        })
        .py_err()
    }

    /// The labels as a ``nibabel.Nifti1Image`` on the input's affine. Needs nibabel.
    fn to_nibabel<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let nib = py.import("nibabel")?;
        nib.getattr("Nifti1Image")?
            .call1((self.labels.bind(py), self.affine(py)))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let l = self.labels.bind(py);
        Ok(format!(
            "Segmentation(case_id='{}', shape={}, dtype={}, labels={:?}{})",
            self.case_id,
            l.getattr("shape")?,
            l.getattr("dtype")?,
            self.label_names,
            if self.uncertainty.is_some() {
                ", uncertainty=float32"
            } else {
                ""
            }
        ))
    }
}
