//! NIfTI-1 reading (`.nii`, `.nii.gz`) and writing with the input's exact geometry.
//!
//! Reading ([`read_nifti`], [`read_labels`], [`read_header`]) parses the 348-byte header
//! ourselves (either byte order), skips extensions to `vox_offset`, applies
//! `scl_slope`/`scl_inter` (slope 0 or not finite = no scaling) and picks the affine exactly
//! as nibabel's `Nifti1Header.get_best_affine` does after its load-time fixes: the sform if
//! `sform_code` ≠ 0, else the qform (quaternion, qfac) if `qform_code` ≠ 0, else nibabel's
//! base affine from pixdim (x flipped, centred). Invalid xform codes count as 0. A file is read
//! whole or not at all: truncation, a corrupt gzip stream or a bad field is a [`NiftiError`]
//! naming the file and the problem.
//!
//! Writing ([`write_labels`], [`write_volume`], [`write_array_like`],
//! [`write_array_with_affine`]) goes through [`crate::io::atomic::write_atomic`]. For a
//! NIfTI-sourced reference the original header is copied (sform, qform, codes, pixdim, units)
//! and only dim, datatype, bitpix, vox_offset, scaling, intent and cal_min/max are set; for a
//! DICOM or in-memory reference the affine is written as sform and qform with code 1 (scanner),
//! as dcm2niix does. Files are little-endian, no extensions, voxels from byte 352.
//!
//! Arrays come back in Fortran (column-major) layout, the file's own voxel order: `data[[i,j,k]]`
//! with `i` fastest in memory, so an axial slice `k` is one contiguous block. Writers accept
//! any layout.

mod header;
mod read;
mod write;
mod xform;

pub use header::{Datatype, NiftiInfo};
pub use read::read_header;
pub use write::{
    lossless_i16, write_array_described, write_array_like, write_array_on, write_array_with_affine,
    ArrayRole, Grid, NiftiElement, GZ_LEVEL,
};
pub use xform::AffineSource;

use crate::geometry::Affine;
use crate::volume::{NiftiSource, Provenance, Source, Volume};
use ndarray::Array3;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The file name without its NIfTI suffix: `name.nii` / `name.nii.gz` (any case) → `name`;
/// `None` for any other name. The one place that knows the suffixes.
pub fn strip_nifti_suffix(file_name: &str) -> Option<&str> {
    let lower = file_name.to_ascii_lowercase();
    [".nii.gz", ".nii"]
        .into_iter()
        .find(|s| lower.ends_with(s))
        // ASCII lower-casing keeps byte offsets, so the cut is on a char boundary.
        .map(|s| &file_name[..file_name.len() - s.len()])
}

/// Whether `path`'s file name ends in `.nii` or `.nii.gz` (any case).
pub fn is_nifti_path(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| strip_nifti_suffix(&n.to_string_lossy()).is_some())
}

/// Everything that can go wrong reading or writing NIfTI. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiError {
    // === Reading ===
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: truncated: the {what} needs {expected} bytes but only {got} are there")]
    Truncated {
        path: PathBuf,
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("{path}: corrupt gzip stream: {source}")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a NIfTI-1 file: sizeof_hdr is {got}, expected 348 (in either byte order)"
    )]
    BadSizeofHdr { path: PathBuf, got: i32 },
    #[error(
        "{path}: NIfTI-2 files are not supported; save it as NIfTI-1 (e.g. nibabel.Nifti1Image)"
    )]
    Nifti2 { path: PathBuf },
    #[error(
        "{path}: magic is \"{}\", expected \"n+1\" (single-file .nii); \
         .hdr/.img pairs and Analyze files are not supported",
        .magic.escape_ascii()
    )]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: bad dimensions dim = {dim:?}: {reason}")]
    BadDims {
        path: PathBuf,
        dim: [i16; 8],
        reason: String,
    },
    #[error("{path}: not a 3D volume ({dims}); extract a single 3D volume first")]
    NotThreeD { path: PathBuf, dims: String },
    #[error(
        "{path}: datatype {code} ({name}) is not supported; \
         supported: uint8, int8, int16, uint16, int32, uint32, float32, float64"
    )]
    UnsupportedDatatype {
        path: PathBuf,
        code: i16,
        name: &'static str,
    },
    #[error("{path}: vox_offset {vox_offset} points inside the header (voxel data starts at byte 352 or later)")]
    BadVoxOffset { path: PathBuf, vox_offset: f32 },
    #[error("{path}: scl_slope is {slope} but scl_inter is {inter}, not a finite number")]
    BadScaling {
        path: PathBuf,
        slope: f32,
        inter: f32,
    },
    #[error("{path}: bad spatial transform: {reason}")]
    BadTransform { path: PathBuf, reason: String },
    #[error("{path}: voxel [{}, {}, {}] is {value}{scaling}; every value of a CT volume must be a finite number", index[0], index[1], index[2])]
    NonFinite {
        path: PathBuf,
        index: [usize; 3],
        value: f32,
        /// How the value came about when scaling was applied (names scl_slope/scl_inter).
        scaling: String,
    },
    #[error("{path}: the header asks for {bytes} bytes of voxel data, which cannot be allocated")]
    TooLarge { path: PathBuf, bytes: usize },
    #[error(
        "{path}: not a label volume: voxel {index:?} is {value} ({reason}); \
         labels must be integers in 0..=65535"
    )]
    BadLabel {
        path: PathBuf,
        index: [usize; 3],
        value: f64,
        reason: &'static str,
    },

    // === Writing ===
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: output file name must end in .nii or .nii.gz")]
    BadOutputName { path: PathBuf },
    #[error("{path}: array shape {got:?} differs from the reference grid {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        got: [usize; 3],
        expected: [usize; 3],
    },
    #[error("{path}: shape {shape:?} exceeds NIfTI-1's limit of 32767 voxels per axis")]
    ShapeTooLarge { path: PathBuf, shape: [usize; 3] },
    #[error("{path}: cannot write int16 losslessly: voxel {index:?} is {value}; use --dtype f32 or auto")]
    NotInt16 {
        path: PathBuf,
        index: [usize; 3],
        value: f32,
    },
}

impl NiftiError {
    /// Bad input or usage (exit 2) rather than our bug or the machine (exit 1).
    pub fn is_input_error(&self) -> bool {
        match self {
            // A caller passed an array that is not on the reference grid: a bug.
            NiftiError::ShapeMismatch { .. } => false,
            // An output we cannot create is usually a wrong --out; a full disk is not.
            NiftiError::Write { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            _ => true,
        }
    }
}

impl crate::error::Classify for NiftiError {
    fn is_input_error(&self) -> bool {
        NiftiError::is_input_error(self)
    }
}

/// Output voxel type for [`write_volume`] (`import --dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VolumeDtype {
    /// int16 when every voxel is an integer in −32768..=32767 (lossless), else float32.
    #[default]
    Auto,
    F32,
    /// int16; an error if any voxel would change.
    I16,
}

/// Read a NIfTI file into a `Volume` (f32, scl_slope/inter applied, affine by nibabel's rule).
pub fn read_nifti(path: &Path) -> Result<Volume, NiftiError> {
    let raw = read::read_raw(path)?;
    let (data, integral_i16) = read::to_f32(&raw);
    let any_bad = data
        .as_slice_memory_order()
        .is_none_or(|v| v.par_iter().any(|x| !x.is_finite()));
    let first_bad = if any_bad {
        data.indexed_iter().find(|(_, v)| !v.is_finite())
    } else {
        None
    };
    if let Some((index, &value)) = first_bad {
        let scaling = match raw.info.scaling {
            Some((slope, inter)) => format!(
                " after scaling (stored value × scl_slope {slope} + scl_inter {inter} overflows float32)"
            ),
            None => String::new(),
        };
        return Err(NiftiError::NonFinite {
            path: path.to_path_buf(),
            index: [index.0, index.1, index.2],
            value,
            scaling,
        });
    }
    let provenance = Provenance {
        stored_type: raw.info.datatype.stored_type(),
        integral_i16,
        warnings: prefixed(path, &raw.info.warnings),
        source: Source::Nifti(NiftiSource {
            path: path.to_path_buf(),
            header: raw.header,
        }),
    };
    Volume::new(data, raw.info.affine, provenance).map_err(|e| NiftiError::BadTransform {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Read an integer label volume (any integer or float datatype whose values, after scaling,
/// are integers in 0..=65535), with its affine and header.
pub fn read_labels(path: &Path) -> Result<(Array3<u16>, Affine, NiftiSource), NiftiError> {
    let raw = read::read_raw(path)?;
    let labels = read::to_labels(&raw, path)?;
    let affine = raw.info.affine;
    Ok((
        labels,
        affine,
        NiftiSource {
            path: path.to_path_buf(),
            header: raw.header,
        },
    ))
}

/// Write a label volume on `like`'s grid: uint8, or uint16 if any label exceeds 255; exactly
/// `like`'s shape and affine (its sform/qform and codes when `like` came from NIfTI).
pub fn write_labels(path: &Path, labels: &Array3<u16>, like: &Volume) -> Result<(), NiftiError> {
    write_labels_on(path, labels, Grid::of(like))
}

/// [`write_labels`] for a caller that kept the grid (shape, affine, provenance) but not the voxels.
pub fn write_labels_on(
    path: &Path,
    labels: &Array3<u16>,
    grid: Grid<'_>,
) -> Result<(), NiftiError> {
    let max = labels.fold(0u16, |m, &v| m.max(v));
    if max <= u8::MAX as u16 {
        let small = labels.mapv(|v| v as u8);
        write_array_on(path, small.view(), grid, ArrayRole::Labels)
    } else {
        write_array_on(path, labels.view(), grid, ArrayRole::Labels)
    }
}

/// Write the HU volume as the pipeline sees it: float32, or int16 when that is lossless
/// (`Auto`) or requested (`I16`, an error if not lossless).
pub fn write_volume(path: &Path, volume: &Volume, dtype: VolumeDtype) -> Result<(), NiftiError> {
    write_volume_with(path, volume, dtype, None)
}

/// [`write_volume`] with the header's `descrip` set to `descrip` (the phantom writer stamps
/// `phantom::PHANTOM_TAG` this way, so `run` can tell phantoms from real CT).
pub fn write_volume_described(
    path: &Path,
    volume: &Volume,
    dtype: VolumeDtype,
    descrip: &str,
) -> Result<(), NiftiError> {
    write_volume_with(path, volume, dtype, Some(descrip))
}

fn write_volume_with(
    path: &Path,
    volume: &Volume,
    dtype: VolumeDtype,
    descrip: Option<&str>,
) -> Result<(), NiftiError> {
    let (grid, role) = (Grid::of(volume), ArrayRole::Intensity);
    match resolve_dtype(path, volume, dtype)? {
        VolumeDtype::I16 => {
            let data = ndarray::Zip::from(volume.data()).par_map_collect(|&v| v as i16);
            write_array_described(path, data.view(), grid, role, descrip)
        }
        _ => write_array_described(path, volume.data().view(), grid, role, descrip),
    }
}

/// The concrete type [`write_volume`] writes for `dtype` (`F32` or `I16`, never `Auto`).
pub fn resolve_dtype(
    path: &Path,
    volume: &Volume,
    dtype: VolumeDtype,
) -> Result<VolumeDtype, NiftiError> {
    match dtype {
        VolumeDtype::F32 => Ok(VolumeDtype::F32),
        VolumeDtype::Auto => Ok(if lossless_i16(volume.data().view()).is_ok() {
            VolumeDtype::I16
        } else {
            VolumeDtype::F32
        }),
        VolumeDtype::I16 => match lossless_i16(volume.data().view()) {
            Ok(()) => Ok(VolumeDtype::I16),
            Err(index) => Err(NiftiError::NotInt16 {
                path: path.to_path_buf(),
                index,
                value: volume.data()[index],
            }),
        },
    }
}

fn prefixed(path: &Path, warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| format!("{}: {w}", path.display()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nifti_names() {
        assert_eq!(strip_nifti_suffix("img0001.nii.gz"), Some("img0001"));
        assert_eq!(strip_nifti_suffix("A.NII"), Some("A"));
        assert_eq!(strip_nifti_suffix("é.Nii.Gz"), Some("é"));
        assert_eq!(strip_nifti_suffix(".nii"), Some(""));
        assert_eq!(strip_nifti_suffix("x.nii.zip"), None);
        assert_eq!(strip_nifti_suffix("x.gz"), None);
        assert!(is_nifti_path(Path::new("a/b.nii.gz")));
        assert!(!is_nifti_path(Path::new("a.nii/b.dcm")));
        assert!(!is_nifti_path(Path::new("/")));
    }
}
