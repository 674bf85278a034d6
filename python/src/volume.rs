//! `read_volume` and `Volume`: a CT volume as the pipeline sees it.
//!
//! A `Volume` holds the library's [`Volume`] behind an `Arc`: `Volume.hu` is a read-only NumPy
//! view of its voxels (no copy; the NumPy array keeps the Python object, and so the voxels,
//! alive), and `Model.segment` hands the same `Arc` to the engine (no copy either).

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray2, PyReadonlyArray3};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use sdseg_volume::error::ResultExt;
use sdseg_volume::io::ReadOptions;
use sdseg_volume::volume::{Provenance, Source, Volume};
use sdseg_volume::Affine;

use crate::errors::{self, IntoPy};

/// A CT volume: HU voxels indexed ``[i, j, k]`` (the NIfTI axis order), the voxel-to-RAS
/// affine (4x4, mm) and where it came from.
///
/// Made by :func:`read_volume`, or from an array: ``Volume(hu, affine)`` copies ``hu`` once
/// into the volume (as float32, keeping C or Fortran order). ``hu`` is then a read-only view
/// of the volume's own voxels: reading it copies nothing; ``vol.hu.copy()`` gives a writable
/// array.
#[pyclass(module = "sdseg_volume", name = "Volume", frozen)]
pub struct PyVolume {
    pub inner: Arc<Volume>,
}

/// A 4x4 affine from anything NumPy reads as one (an error naming `what` otherwise).
pub fn affine_from(py: Python<'_>, what: &str, value: &Bound<'_, PyAny>) -> PyResult<Affine> {
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (value, "float64"))?;
    let arr: PyReadonlyArray2<'_, f64> = arr.extract().map_err(|_| {
        errors::input(format!(
            "{what}: expected a 4x4 affine (voxel to RAS mm), got {}",
            describe(value)
        ))
    })?;
    let a = arr.as_array();
    if a.dim() != (4, 4) {
        return Err(errors::input(format!(
            "{what}: expected a 4x4 affine, got shape {:?}",
            a.shape()
        )));
    }
    let mut m = [[0.0; 4]; 4];
    for (r, row) in m.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = a[(r, c)];
        }
    }
    Ok(Affine(m))
}

fn describe(value: &Bound<'_, PyAny>) -> String {
    match value.getattr("shape") {
        Ok(s) => format!("shape {s}"),
        Err(_) => value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    }
}

pub fn affine_to_numpy<'py>(py: Python<'py>, a: &Affine) -> Bound<'py, PyArray2<f64>> {
    let rows: Vec<Vec<f64>> = a.0.iter().map(|r| r.to_vec()).collect();
    PyArray2::from_vec2(py, &rows).expect("4 rows of 4")
}

#[pymethods]
impl PyVolume {
    #[new]
    #[pyo3(signature = (hu, affine))]
    fn new(py: Python<'_>, hu: &Bound<'_, PyAny>, affine: &Bound<'_, PyAny>) -> PyResult<Self> {
        let affine = affine_from(py, "affine", affine)?;
        let np = py.import("numpy")?;
        let arr = np.call_method1("asarray", (hu, "float32"))?;
        let arr: PyReadonlyArray3<'_, f32> = arr.extract().map_err(|_| {
            errors::input(format!(
                "hu: expected a 3D array indexed [i, j, k], got {}",
                describe(hu)
            ))
        })?;
        // The one copy: the volume owns its voxels (the engine reads them with the GIL
        // released, while Python could write to the caller's array).
        let data = arr.as_array().to_owned();
        let volume = Volume::new(data, affine, Provenance::synthetic())
            .classified()
            .py_err()?;
        Ok(PyVolume {
            inner: Arc::new(volume),
        })
    }

    /// The HU voxels, float32 ``[i, j, k]``: a read-only view of the volume's own array (no
    /// copy; C or Fortran order as the reader made it).
    #[getter]
    fn hu<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray3<f32>> {
        let data = slf.get().inner.data();
        // SAFETY: the array views the voxels of the `Volume` inside the `Arc` this object holds:
        // they never move and nothing writes them (no `&mut Volume` exists once shared).
        // `slf` becomes the array's base object, so the voxels outlive the array, and the array
        // is made non-writeable before Python sees it (and, not owning its data, cannot be made
        // writeable again from Python).
        let arr = unsafe { PyArray3::borrow_from_array(data, slf.clone().into_any()) };
        drop(arr.readwrite().make_nonwriteable());
        arr
    }

    /// The voxel-to-RAS affine, a 4x4 float64 array (mm).
    #[getter]
    fn affine<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        affine_to_numpy(py, self.inner.affine())
    }

    /// Voxel size along i, j, k in mm (the affine's column norms).
    #[getter]
    fn spacing(&self) -> (f64, f64, f64) {
        let s = self.inner.spacing();
        (s[0], s[1], s[2])
    }

    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let s = self.inner.shape();
        (s[0], s[1], s[2])
    }

    /// The axis codes of the affine, nibabel's ``aff2axcodes`` (e.g. ``"LPS"``).
    #[getter]
    fn orientation(&self) -> String {
        self.inner.axcodes().to_string()
    }

    /// Where the volume came from: a dict with ``source`` (``"dicom"``, ``"nifti"`` or
    /// ``"array"``), ``path``, ``stored_type`` and, for DICOM, ``series_instance_uid``,
    /// ``series_description``, ``modality``, ``transfer_syntax`` and ``files`` (slice order).
    #[getter]
    fn provenance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        provenance_dict(py, self.inner.provenance())
    }

    /// What the reader noticed but accepted (skipped files, policy decisions), as ``inspect``
    /// shows them.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.provenance().warnings.clone()
    }

    /// The volume as a ``nibabel.Nifti1Image`` (float32 HU, this affine). Needs nibabel. The
    /// image's data is :attr:`hu` (no copy).
    fn to_nibabel<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let nib = py.import("nibabel")?;
        let hu = Self::hu(slf);
        let affine = slf.get().affine(py);
        nib.getattr("Nifti1Image")?.call1((hu, affine))
    }

    fn __repr__(&self) -> String {
        let p = self.inner.provenance();
        let s = self.inner.shape();
        let sp = self.inner.spacing();
        format!(
            "Volume(shape=({}, {}, {}), spacing=({:.4}, {:.4}, {:.4}), orientation='{}', source={})",
            s[0],
            s[1],
            s[2],
            sp[0],
            sp[1],
            sp[2],
            self.inner.axcodes(),
            match source_path(p) {
                Some(path) => format!("'{}'", path.display()),
                None => "array".into(),
            }
        )
    }
}

/// The path the user gave for a volume read from a file (`None` for arrays).
pub fn source_path(p: &Provenance) -> Option<PathBuf> {
    match &p.source {
        Source::Dicom(d) => Some(d.input.clone()),
        Source::Nifti(n) => Some(n.path.clone()),
        Source::Synthetic => None,
    }
}

fn provenance_dict<'py>(py: Python<'py>, p: &Provenance) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match &p.source {
        Source::Dicom(s) => {
            d.set_item("source", "dicom")?;
            d.set_item("path", s.input.display().to_string())?;
            d.set_item("series_instance_uid", &s.series_instance_uid)?;
            d.set_item("series_description", &s.series_description)?;
            d.set_item("modality", &s.modality)?;
            d.set_item("transfer_syntax", &s.transfer_syntax)?;
            let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
            d.set_item("files", PyList::new(py, files)?)?;
        }
        Source::Nifti(s) => {
            d.set_item("source", "nifti")?;
            d.set_item("path", s.path.display().to_string())?;
        }
        Source::Synthetic => {
            d.set_item("source", "array")?;
            d.set_item("path", py.None())?;
        }
    }
    d.set_item("stored_type", p.stored_type.name())?;
    Ok(d)
}

/// Read a CT volume: a DICOM series folder, a multi-frame DICOM file, a zip of a series, or a
/// NIfTI file, exactly as ``sdseg-volume run`` / ``import`` read it (the same reader).
#[pyfunction]
#[pyo3(signature = (path, series=None, allow_gaps=false, allow_tilt=false))]
pub fn read_volume(
    py: Python<'_>,
    path: PathBuf,
    series: Option<String>,
    allow_gaps: bool,
    allow_tilt: bool,
) -> PyResult<PyVolume> {
    let opts = ReadOptions {
        series,
        allow_gaps,
        allow_tilt,
    };
    let volume = py
        .detach(|| sdseg_volume::io::read_volume(&path, &opts).classified())
        .py_err()?;
    Ok(PyVolume {
        inner: Arc::new(volume),
    })
}
