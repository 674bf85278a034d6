//! The `Volume`: voxels in Hounsfield units on a grid that always carries its RAS affine.

use crate::geometry::{Affine, AxCodes, Reorientation};
use ndarray::Array3;
use std::path::PathBuf;

/// Where a volume came from, kept for reports and for writing outputs with the same geometry.
#[derive(Clone, Debug)]
pub enum Source {
    Dicom(DicomSource),
    Nifti(NiftiSource),
    /// Built in memory (tests, phantoms).
    Synthetic,
}

#[derive(Clone, Debug)]
pub struct DicomSource {
    /// The input path the user gave (folder, multi-frame file or zip).
    pub input: PathBuf,
    pub series_instance_uid: String,
    pub series_description: Option<String>,
    pub modality: Option<String>,
    /// Files of the chosen series in slice order (one entry for a multi-frame file).
    pub files: Vec<PathBuf>,
    pub transfer_syntax: String,
    /// What a derived DICOM object (DICOM-SEG, RTSTRUCT) needs to point back at this series.
    pub reference: SeriesReference,
}

/// The source series as derived DICOM objects reference it: patient and study attributes to
/// copy, the frame of reference, and every slice's SOP instance in the volume's `k` order
/// (the order of the label volume's third axis), with its position.
#[derive(Clone, Debug, Default)]
pub struct SeriesReference {
    /// Patient, study and character-set attributes of the first slice's file, copied as read
    /// into derived objects (absent in the source = absent here). In tag order.
    pub patient_study: Vec<CopiedAttribute>,
    pub study_instance_uid: Option<String>,
    /// SeriesInstanceUID of the source series (what an RTSTRUCT's RTReferencedSeriesSequence
    /// and a DICOM-SEG's ReferencedSeriesSequence name); `None` where the files lack it.
    pub series_instance_uid: Option<String>,
    /// FrameOfReferenceUID of each slice (same order as `slices`; `None` where absent).
    pub frame_of_reference_uids: Vec<Option<String>>,
    /// One entry per `k`, in the volume's slice order.
    pub slices: Vec<SourceSlice>,
    /// Rows × Columns of a source frame (`j` × `i` extents of the volume).
    pub rows: u32,
    pub columns: u32,
    /// ImageOrientationPatient (row direction, then column direction; LPS unit vectors).
    pub image_orientation: [f64; 6],
    /// PixelSpacing: [between rows, between columns] in mm.
    pub pixel_spacing: [f64; 2],
    /// SliceThickness of the first slice, when given.
    pub slice_thickness: Option<f64>,
    /// Distance between neighbouring slice centres along the normal (mm), as the affine uses.
    pub slice_spacing: f64,
}

/// One attribute copied from the source: the tag (group, element) and its value as text
/// (multiple values joined by a backslash, as DICOM writes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedAttribute {
    pub tag: (u16, u16),
    pub value: String,
}

/// One source image (a single-frame file, or one frame of a multi-frame file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceSlice {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// 1-based frame number inside a multi-frame file; `None` for single-frame files.
    pub frame_number: Option<u32>,
    /// ImagePositionPatient (LPS, mm) of the first transmitted pixel.
    pub position: [f64; 3],
}

#[derive(Clone, Debug)]
pub struct NiftiSource {
    pub path: PathBuf,
    /// The header as read, so label outputs keep sform/qform and their codes.
    pub header: nifti::NiftiHeader,
}

/// Storage type of the original voxels (before rescaling to f32 HU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    F64,
}

impl StoredType {
    pub fn name(self) -> &'static str {
        match self {
            StoredType::U8 => "uint8",
            StoredType::I8 => "int8",
            StoredType::U16 => "uint16",
            StoredType::I16 => "int16",
            StoredType::U32 => "uint32",
            StoredType::I32 => "int32",
            StoredType::F32 => "float32",
            StoredType::F64 => "float64",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Provenance {
    pub source: Source,
    pub stored_type: StoredType,
    /// True when every voxel is an integer that fits i16 (then `import` can write int16 losslessly).
    pub integral_i16: bool,
    /// Non-fatal findings while reading (skipped files, policy decisions), for `inspect` and reports.
    pub warnings: Vec<String>,
}

impl Provenance {
    pub fn synthetic() -> Provenance {
        Provenance {
            source: Source::Synthetic,
            stored_type: StoredType::F32,
            integral_i16: false,
            warnings: vec![],
        }
    }
}

/// A CT volume: f32 HU voxels indexed `[i, j, k]` (NIfTI axis order), the voxel→RAS affine,
/// and where it came from. Construct through [`Volume::new`], which checks the invariants.
#[derive(Clone, Debug)]
pub struct Volume {
    data: Array3<f32>,
    affine: Affine,
    provenance: Provenance,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume has an empty dimension: shape {0:?}")]
    EmptyShape([usize; 3]),
    #[error("affine is singular or not finite (determinant {0})")]
    SingularAffine(f64),
}

impl crate::error::Classify for VolumeError {
    /// Volumes are built from what a file says (shape, affine).
    fn is_input_error(&self) -> bool {
        true
    }
}

impl Volume {
    pub fn new(
        data: Array3<f32>,
        affine: Affine,
        provenance: Provenance,
    ) -> Result<Volume, VolumeError> {
        let shape = dim3(&data);
        if shape.contains(&0) {
            return Err(VolumeError::EmptyShape(shape));
        }
        let det = affine.det3();
        if !det.is_finite() || det.abs() < 1e-12 {
            return Err(VolumeError::SingularAffine(det));
        }
        Ok(Volume {
            data,
            affine,
            provenance,
        })
    }

    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }
    pub fn affine(&self) -> &Affine {
        &self.affine
    }
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
    pub fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.provenance
    }
    pub fn into_parts(self) -> (Array3<f32>, Affine, Provenance) {
        (self.data, self.affine, self.provenance)
    }
    pub fn shape(&self) -> [usize; 3] {
        dim3(&self.data)
    }
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }
    pub fn axcodes(&self) -> AxCodes {
        self.affine.axcodes()
    }

    /// Minimum and maximum HU (NaN-free volumes assumed; NaNs are ignored).
    pub fn hu_range(&self) -> (f32, f32) {
        self.data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                if v.is_nan() {
                    (lo, hi)
                } else {
                    (lo.min(v), hi.max(v))
                }
            })
    }

    /// Exactly reorient (permute/flip, no resampling) to `target`; the returned
    /// [`Reorientation`] undoes it with [`Volume::reoriented_by`] on its inverse.
    pub fn reorient(&self, target: AxCodes) -> (Volume, Reorientation) {
        let r = Reorientation::to_codes(&self.affine, self.shape(), target);
        (self.reoriented_by(&r), r)
    }

    pub fn reoriented_by(&self, r: &Reorientation) -> Volume {
        Volume {
            data: r.apply_array(self.data.view()),
            affine: r.apply_affine(&self.affine),
            provenance: self.provenance.clone(),
        }
    }
}

pub(crate) fn dim3<T>(a: &Array3<T>) -> [usize; 3] {
    let s = a.shape();
    [s[0], s[1], s[2]]
}

/// An integer label volume on a grid (e.g. a prediction), with the geometry it must be written on.
#[derive(Clone, Debug)]
pub struct LabelVolume {
    pub labels: Array3<u16>,
    pub affine: Affine,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_singular() {
        let d = Array3::<f32>::zeros((2, 0, 3));
        assert!(matches!(
            Volume::new(d, Affine::IDENTITY, Provenance::synthetic()),
            Err(VolumeError::EmptyShape(_))
        ));
        let d = Array3::<f32>::zeros((2, 2, 2));
        let mut a = Affine::IDENTITY;
        a.0[2][2] = 0.0;
        assert!(matches!(
            Volume::new(d, a, Provenance::synthetic()),
            Err(VolumeError::SingularAffine(_))
        ));
    }

    #[test]
    fn volume_reorientation_round_trip() {
        let d = Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (i + 10 * j + 100 * k) as f32);
        let mut a = Affine::from_spacing([0.8, 0.8, 2.5]);
        a.0[0][0] = -0.8; // L
        a.0[1][1] = -0.8; // P
        let v = Volume::new(d, a, Provenance::synthetic()).unwrap();
        let (ras, r) = v.reorient(AxCodes::RAS);
        assert_eq!(ras.axcodes(), AxCodes::RAS);
        let back = ras.reoriented_by(&r.inverse());
        assert_eq!(back.data(), v.data());
        assert!(back.affine().max_abs_diff(v.affine()) < 1e-12);
    }
}
