//! Readers and writers. Only this module knows DICOM's LPS; everything after it is RAS.
//!
//! [`read_volume`] is the one entry point the rest of the program uses to turn a user's
//! INPUT path into a [`Volume`]: it dispatches on what the path is (NIfTI file, DICOM folder,
//! multi-frame DICOM file, zip of a folder).

pub mod atomic;
pub mod derived;
pub mod dicom;
pub mod nifti;

use crate::volume::Volume;
use std::path::{Path, PathBuf};

/// Options that reach the readers from the command line.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// `--series UID`: read this DICOM series instead of choosing one.
    pub series: Option<String>,
    /// `--allow-gaps`: accept non-uniform slice spacing (missing slices) in a DICOM series.
    pub allow_gaps: bool,
    /// `--allow-tilt`: accept gantry tilt / sheared slice stacks.
    pub allow_tilt: bool,
}

/// What kind of input a path is, decided from the file system and the name only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Nifti,
    DicomFolder,
    DicomFile,
    Zip,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: no such file or folder")]
    NotFound { path: std::path::PathBuf },
    #[error(transparent)]
    Dicom(#[from] dicom::DicomError),
    #[error(transparent)]
    Nifti(#[from] nifti::NiftiError),
    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
}

impl crate::error::Classify for ReadError {
    fn is_input_error(&self) -> bool {
        match self {
            ReadError::NotFound { .. } | ReadError::Unsupported { .. } => true,
            ReadError::Dicom(e) => e.is_input_error(),
            ReadError::Nifti(e) => e.is_input_error(),
        }
    }
}

pub fn input_kind(path: &Path) -> Result<InputKind, ReadError> {
    let meta = std::fs::metadata(path).map_err(|_| ReadError::NotFound {
        path: path.to_path_buf(),
    })?;
    if meta.is_dir() {
        return Ok(InputKind::DicomFolder);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let pair = [".hdr", ".img", ".hdr.gz", ".img.gz"];
    if pair.iter().any(|s| name.ends_with(s)) || is_nifti_pair_header(path) {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            detail: "NIfTI-1 / Analyze header + image pairs (.hdr/.img) are not supported; \
                     convert to a single .nii or .nii.gz file first, e.g. with nibabel: \
                     nib.save(nib.load('x.hdr'), 'x.nii.gz')"
                .into(),
        });
    }
    if nifti::is_nifti_path(path) {
        Ok(InputKind::Nifti)
    } else if name.ends_with(".zip") {
        Ok(InputKind::Zip)
    } else {
        Ok(InputKind::DicomFile)
    }
}

/// Whether a file is the header of a NIfTI-1 pair (magic "ni1", sizeof_hdr 348), whatever
/// its name.
fn is_nifti_pair_header(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 348];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    let size_ok = head[..4] == 348i32.to_le_bytes() || head[..4] == 348i32.to_be_bytes();
    size_ok && &head[344..348] == b"ni1\0"
}

/// Read any supported input into a `Volume` (f32 HU, RAS affine, provenance).
pub fn read_volume(path: &Path, opts: &ReadOptions) -> Result<Volume, ReadError> {
    match input_kind(path)? {
        InputKind::Nifti => Ok(nifti::read_nifti(path)?),
        InputKind::DicomFolder | InputKind::DicomFile | InputKind::Zip => {
            Ok(dicom::read_dicom(path, opts)?)
        }
    }
}
