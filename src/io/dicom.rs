//! DICOM series reading: scan, group by SeriesInstanceUID, choose, sort by position on the
//! slice normal, validate, rescale to HU, and build the RAS affine (as dcm2niix does).

use super::ReadOptions;
use crate::volume::Volume;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{path}: DICOM reading is not implemented yet")]
    NotImplemented { path: PathBuf },
}

impl DicomError {
    pub fn is_input_error(&self) -> bool {
        true
    }
}

/// Read one DICOM series (folder, multi-frame file or zip) into a `Volume`.
pub fn read_dicom(path: &Path, _opts: &ReadOptions) -> Result<Volume, DicomError> {
    Err(DicomError::NotImplemented {
        path: path.to_path_buf(),
    })
}
