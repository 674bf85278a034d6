//! NIfTI-1 reading (`.nii`, `.nii.gz`) and label / HU writing with the input's geometry.

use crate::volume::Volume;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: NIfTI reading is not implemented yet")]
    NotImplemented { path: PathBuf },
}

impl NiftiError {
    pub fn is_input_error(&self) -> bool {
        true
    }
}

/// Read a NIfTI file into a `Volume` (f32, scl_slope/inter applied, affine by the standard's rule).
pub fn read_nifti(path: &Path) -> Result<Volume, NiftiError> {
    Err(NiftiError::NotImplemented {
        path: path.to_path_buf(),
    })
}
