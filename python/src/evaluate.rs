//! `evaluate`: `eval`'s scoring and its JSON report (`eval --out x.json`), for files or folders
//! (paired by case id, as `eval` pairs them) or label arrays in memory. The same functions score
//! both (`eval::evaluate_pair[_refined]` reads the files and calls
//! `eval::evaluate_arrays[_refined]`), `Report` summarises, `to_json` writes the fields.

use std::path::PathBuf;

use anyhow::Context;
use numpy::PyReadonlyArray3;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sdseg_volume::error::ResultExt;
use sdseg_volume::eval::{self, CasePair, Comparison, EvalOptions, LabelScheme, Report};
use sdseg_volume::metrics::{Hd95Mode, MetricOptions, Protocol};
use sdseg_volume::pipeline::RefinePlan;
use sdseg_volume::Affine;

use crate::errors::{self, IntoPy};
use crate::model::to_python;
use crate::options::Options;
use crate::volume::affine_from;

/// One side of a case: a NIfTI file (or a folder, with the other side a folder too), or a
/// label array (uint16, `[i, j, k]`) with its affine.
enum Side {
    Path(PathBuf),
    Array(ndarray::Array3<u16>, Affine),
}

impl Side {
    fn from_python(py: Python<'_>, what: &str, v: &Bound<'_, PyAny>) -> PyResult<Side> {
        if let Ok(p) = v.extract::<PathBuf>() {
            return Ok(Side::Path(p));
        }
        let (labels, affine): (Bound<'_, PyAny>, Bound<'_, PyAny>) = v.extract()?;
        let labels: PyReadonlyArray3<'_, u16> = labels
            .extract()
            .map_err(|_| errors::input(format!("{what}: expected a 3D uint16 label array")))?;
        // A copy: scoring remaps and resamples the labels in place.
        Ok(Side::Array(
            labels.as_array().to_owned(),
            affine_from(py, what, &affine)?,
        ))
    }

    fn name(&self) -> PathBuf {
        match self {
            Side::Path(p) => p.clone(),
            Side::Array(..) => PathBuf::from("<array>"),
        }
    }

    fn load(self) -> Result<(ndarray::Array3<u16>, Affine), eval::EvalError> {
        match self {
            Side::Path(p) => eval::read_labels(&p),
            Side::Array(a, affine) => Ok((a, affine)),
        }
    }
}

/// Score predictions against ground truth; returns ``eval --out x.json``'s report as a dict.
/// See :func:`sdseg_volume.evaluate`.
#[pyfunction]
#[pyo3(signature = (pred, gt, options))]
pub fn evaluate<'py>(
    py: Python<'py>,
    pred: &Bound<'py, PyAny>,
    gt: &Bound<'py, PyAny>,
    options: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Options::new(options);
    let protocol = parse_enum::<Protocol>(&mut o, "protocol")?.unwrap_or_default();
    let hd95 = parse_enum::<Hd95Mode>(&mut o, "hd95")?.unwrap_or_default();
    let nsd_tolerance_mm: f64 = o.get_or(
        "nsd_tolerance",
        sdseg_volume::metrics::DEFAULT_NSD_TOLERANCE_MM,
    )?;
    let pipeline: Option<String> = o.get("pipeline")?;
    let labels: Option<Vec<u16>> = o.get("labels")?;
    let postprocess: Option<String> = o.get("postprocess")?;
    let case: Option<String> = o.get("case")?;
    o.finish()?;
    if !nsd_tolerance_mm.is_finite() || nsd_tolerance_mm < 0.0 {
        return Err(errors::input(format!(
            "nsd_tolerance={nsd_tolerance_mm}: must be a finite number of mm >= 0"
        )));
    }
    let pred = Side::from_python(py, "pred", pred)?;
    let gt = Side::from_python(py, "gt", gt)?;

    let json = py
        .detach(move || -> anyhow::Result<serde_json::Value> {
            let scheme = match pipeline.as_deref() {
                Some(spec) => LabelScheme::load(spec).classified()?,
                None => LabelScheme::as_stored(),
            };
            let opts = EvalOptions {
                metrics: MetricOptions {
                    protocol,
                    hd95,
                    nsd_tolerance_mm,
                },
                scheme,
                labels,
            };
            let plan = match postprocess.as_deref() {
                Some(spec) => Some(
                    RefinePlan::from_spec(spec)
                        .classified()
                        .context("postprocess")?,
                ),
                None => None,
            };
            let cases: Vec<(CasePair, Option<(Side, Side)>)> = match (pred, gt) {
                // Files or folders: paired and read exactly as `eval` does.
                (Side::Path(p), Side::Path(g)) => eval::pair_cases(&p, &g)
                    .classified()?
                    .pairs
                    .into_iter()
                    .map(|pair| (pair, None))
                    .collect(),
                (p, g) => {
                    let case = case.unwrap_or_else(|| match &g {
                        Side::Path(path) => {
                            eval::case_id(&path.file_name().unwrap_or_default().to_string_lossy())
                        }
                        Side::Array(..) => "case".into(),
                    });
                    let pair = CasePair {
                        case,
                        pred: p.name(),
                        gt: g.name(),
                    };
                    vec![(pair, Some((p, g)))]
                }
            };
            let mut results = Vec::with_capacity(cases.len());
            let mut unrefined = Vec::new();
            for (pair, memory) in cases {
                let scored = match (memory, &plan) {
                    (None, None) => eval::evaluate_pair(&pair, &opts).map(|r| (r, None)),
                    (None, Some(plan)) => eval::evaluate_pair_refined(&pair, &opts, plan)
                        .map(|(without, with)| (with, Some(without))),
                    (Some((p, g)), None) => p.load().and_then(|p| {
                        g.load()
                            .and_then(|g| eval::evaluate_arrays(&pair, p, g, &opts))
                            .map(|r| (r, None))
                    }),
                    (Some((p, g)), Some(plan)) => p.load().and_then(|p| {
                        g.load()
                            .and_then(|g| eval::evaluate_arrays_refined(&pair, p, g, &opts, plan))
                            .map(|(without, with)| (with, Some(without)))
                    }),
                };
                let (with, without) = scored
                    .classified()
                    .with_context(|| format!("scoring case {}", pair.case))?;
                results.push(with);
                unrefined.extend(without);
            }
            let report = Report::new(results, &opts);
            Ok(match &plan {
                Some(plan) => {
                    let without = Report::new(unrefined, &opts);
                    Comparison {
                        without: &without,
                        with: &report,
                        plan,
                        source: postprocess.as_deref().unwrap_or("default"),
                    }
                    .to_json()
                }
                None => report.to_json(),
            })
        })
        .py_err()?;
    to_python(py, &json)
}

fn parse_enum<T: clap::ValueEnum>(o: &mut Options<'_>, key: &str) -> PyResult<Option<T>> {
    match o.get::<String>(key)? {
        Some(s) => T::from_str(&s, false).map(Some).map_err(|e| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                .collect();
            errors::input(format!(
                "{key}={s:?}: {e}; expected one of {}",
                names.join(", ")
            ))
        }),
        None => Ok(None),
    }
}
