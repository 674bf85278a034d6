//! Library errors as Python exceptions. The classes live in Python (`sdseg_volume.errors`:
//! `InputError` is also a `ValueError`, which a Rust-made exception cannot be); the class is
//! the exit code the CLI gives the same error ([`exit_code_for`]), the message the CLI's
//! (`{:#}`: the whole context chain).

use pyo3::PyErr;
use sdseg_volume::error::{exit_code_for, ExitCode};

pyo3::import_exception!(sdseg_volume.errors, InputError);
pyo3::import_exception!(sdseg_volume.errors, InternalError);
pyo3::import_exception!(sdseg_volume.errors, PartialFailure);

/// The Python exception for a library error, classified as the CLI classifies it.
pub fn to_py(err: &anyhow::Error) -> PyErr {
    let message = format!("{err:#}");
    match exit_code_for(err) {
        ExitCode::BadInput => InputError::new_err(message),
        ExitCode::Partial => PartialFailure::new_err(message),
        ExitCode::Internal | ExitCode::Ok => InternalError::new_err(message),
    }
}

/// Bad input found by the binding itself (a wrong option value, an array of the wrong shape).
pub fn input(message: impl Into<String>) -> PyErr {
    InputError::new_err(message.into())
}

/// A `Result` of the library into a `PyResult`.
pub trait IntoPy<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for anyhow::Result<T> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(|e| to_py(&e))
    }
}
