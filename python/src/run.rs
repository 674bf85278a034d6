//! `run`: the `run` command as a call. Its options fill the CLI's own `cli::run::Args`, which
//! `to_options` validates exactly as for the command line; `runner::run_cases` then does
//! everything `execute` does (cases, resume, sharding, model, engine, sidecars, report), and
//! the exit status becomes an exception (`InputError`, `InternalError`, or `PartialFailure`
//! carrying the per-case records).

use std::path::PathBuf;

use anyhow::Context as _;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sdseg_volume::cli::Globals;
use sdseg_volume::error::ResultExt;
use sdseg_volume::pipeline::report::CaseRecord;
use sdseg_volume::pipeline::runner;
use sdseg_volume::review;

use crate::errors::{self, IntoPy};
use crate::model::{to_python, PyObserver};
use crate::options::{self, Options};

/// ``sdseg-volume run INPUTS --out OUT [options]`` as a call; returns one dict per case (the
/// ``--json`` line of the case). See :func:`sdseg_volume.run`.
#[pyfunction]
#[pyo3(signature = (inputs, out, options, progress=None))]
pub fn run<'py>(
    py: Python<'py>,
    inputs: Vec<PathBuf>,
    out: PathBuf,
    options: Bound<'py, PyDict>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Options::new(options);
    let mut args = options::cli_run_args(inputs, out);
    let defaults = options::cli_run_args(vec![], PathBuf::new());
    args.manifest = o.get("manifest")?;
    args.shard = o.parse("shard")?;
    args.model = options::model_args(&mut o, defaults.model)?;
    args.output = options::output_args(&mut o, defaults.output)?;
    args.html = o.get("html")?;
    args.gt = o.get("gt")?;
    args.html_ct_size = o.get_or("html_ct_size", defaults.html_ct_size)?;
    let quiet = o.get_or("quiet", false)?;
    o.finish()?;
    if args.inputs.is_empty() && args.manifest.is_none() {
        return Err(errors::input(
            "inputs: give at least one input (or a manifest)",
        ));
    }
    let mut opts = args.to_options(Globals { quiet }).classified().py_err()?;
    opts.command = options::equivalent_command("run", &args);
    let observer = PyObserver::new(progress);
    let html = args.html.clone().map(|html| review::ReviewOptions {
        html,
        gt: args.gt.clone(),
        pipeline: None,
        title: None,
        ct_in_plane: args.html_ct_size,
        quiet,
    });
    let outcomes = py
        .detach(|| -> anyhow::Result<_> {
            let (outcomes, report, report_path) = runner::run_reported(&opts, Some(&observer))?;
            // As `run --html`: the page of the finished run, also when cases failed.
            if let Some(r) = &html {
                review::build_for_run(&report, report_path.as_deref(), r)
                    .classified()
                    .with_context(|| format!("writing the review page {}", r.html.display()))?;
            }
            Ok(outcomes)
        })
        .py_err()?;
    observer.finish(py)?;
    let records: Vec<CaseRecord> = outcomes.iter().map(CaseRecord::from).collect();
    let records = to_python(py, &records)?;
    if let Err(e) = runner::exit_status(&outcomes) {
        let err = errors::to_py(&e);
        err.value(py).setattr("cases", &records)?;
        return Err(err);
    }
    Ok(records)
}

/// The defaults of ``sdseg-volume run``'s options, as clap parses them (the Python signatures
/// must show the same; the tests compare them).
#[pyfunction]
pub fn cli_defaults<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    let a = options::cli_run_args(vec![], PathBuf::new());
    let m = &a.model;
    let o = &a.output;
    let v = serde_json::json!({
        "weights": m.weights,
        "model_config": m.model_config,
        "pipeline": m.pipeline,
        "batch_size": m.batch_size,
        "device": m.device.map(|d| d.to_string()),
        "dtype": m.dtype.to_string(),
        "samples": m.samples,
        "seed": m.seed,
        "noise": m.noise,
        "ema": !m.no_ema,
        "resize": m.resize.to_string(),
        "series": m.read.series,
        "allow_gaps": m.read.allow_gaps,
        "allow_tilt": m.read.allow_tilt,
        "manifest": a.manifest,
        "shard": a.shard.map(|s| s.to_string()),
        "name": o.name.as_ref().map(|n| format!("{n:?}")),
        "format": o.format.to_string(),
        "empty_segments": o.empty_segments,
        "overwrite": o.overwrite,
        "report": o.report,
        "preview": o.preview,
        "uncertainty": o.uncertainty,
        "postprocess": o.postprocess,
        "statistics": o.statistics,
        "html": a.html,
        "gt": a.gt,
        "html_ct_size": a.html_ct_size,
    });
    to_python(py, &v)
}
