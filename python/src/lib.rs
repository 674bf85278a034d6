//! `sdseg_volume._native`: the library (`sdseg_volume` crate) as a Python extension module.
//!
//! The pure-Python package `sdseg_volume` (`python/sdseg_volume/`) wraps this module: it holds
//! the exception classes, the Pythonic signatures with the CLI's defaults, the tqdm bar and the
//! NumPy conversions of inputs; everything that reads, segments, writes or scores is the
//! library's own code, called here with the GIL released ([`Python::detach`]).
//!
//! * [`volume`]: `read_volume` and `Volume` (the HU voxels as a read-only NumPy view of the
//!   Rust array: no copy).
//! * [`model`]: `Model` (built once, like `run` builds it) and `Segmentation`: one volume
//!   through the same streaming engine `run` uses, with an in-memory `CaseIo`.
//! * [`run`]: `run`, the `run` command as a call (its `Args` → `to_options` → `run_cases`).
//! * [`evaluate`]: `evaluate`, `eval`'s scoring and JSON report.
//! * [`errors`]: library errors → `InputError` / `InternalError` / `PartialFailure` by the
//!   exit code the CLI would give them.

use pyo3::prelude::*;

mod errors;
mod evaluate;
mod model;
mod options;
mod run;
mod volume;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<volume::PyVolume>()?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PySegmentation>()?;
    m.add_function(wrap_pyfunction!(volume::read_volume, m)?)?;
    m.add_function(wrap_pyfunction!(run::run, m)?)?;
    m.add_function(wrap_pyfunction!(run::cli_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
