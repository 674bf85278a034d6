//! The 348-byte NIfTI-1 header: parsing (either byte order), validation into a [`NiftiInfo`],
//! a fresh header for an affine ([`header_from_affine`]) and serialisation (always
//! little-endian). The affine rule and the quaternion arithmetic live in `xform`.
//!
//! We parse the header ourselves rather than through `nifti::NiftiHeader::from_reader` so that
//! every problem becomes a [`NiftiError`] naming the file and the field; the parsed values are
//! still kept in a `nifti::NiftiHeader`, the type `volume::NiftiSource` carries.

use super::xform::{best_affine, quatern_from_affine, AffineSource};
use super::NiftiError;
use crate::geometry::Affine;
use crate::volume::StoredType;
use nifti::{Endianness, NiftiHeader};
use std::path::Path;

/// Size of the NIfTI-1 header proper.
pub(crate) const HEADER_SIZE: usize = 348;
/// Header plus the 4-byte extension flag: where voxel data starts when there are no extensions.
pub(crate) const MIN_VOX_OFFSET: usize = 352;
/// `NIFTI_INTENT_LABEL`.
pub(crate) const INTENT_LABEL: i16 = 1002;
/// `NIFTI_UNITS_MM | NIFTI_UNITS_SEC`, what dcm2niix writes.
pub(crate) const UNITS_MM_SEC: u8 = 2 | 8;
/// `NIFTI_XFORM_SCANNER_ANAT`.
pub(crate) const XFORM_SCANNER: i16 = 1;

/// The voxel datatypes we read (NIfTI `datatype` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Datatype {
    pub fn from_code(code: i16) -> Option<Datatype> {
        Some(match code {
            2 => Datatype::U8,
            256 => Datatype::I8,
            4 => Datatype::I16,
            512 => Datatype::U16,
            8 => Datatype::I32,
            768 => Datatype::U32,
            16 => Datatype::F32,
            64 => Datatype::F64,
            _ => return None,
        })
    }

    pub fn code(self) -> i16 {
        match self {
            Datatype::U8 => 2,
            Datatype::I8 => 256,
            Datatype::I16 => 4,
            Datatype::U16 => 512,
            Datatype::I32 => 8,
            Datatype::U32 => 768,
            Datatype::F32 => 16,
            Datatype::F64 => 64,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Datatype::U8 | Datatype::I8 => 1,
            Datatype::I16 | Datatype::U16 => 2,
            Datatype::I32 | Datatype::U32 | Datatype::F32 => 4,
            Datatype::F64 => 8,
        }
    }

    pub fn stored_type(self) -> StoredType {
        match self {
            Datatype::U8 => StoredType::U8,
            Datatype::I8 => StoredType::I8,
            Datatype::I16 => StoredType::I16,
            Datatype::U16 => StoredType::U16,
            Datatype::I32 => StoredType::I32,
            Datatype::U32 => StoredType::U32,
            Datatype::F32 => StoredType::F32,
            Datatype::F64 => StoredType::F64,
        }
    }
}

/// Name of any NIfTI datatype code, for messages about the ones we do not read.
pub(crate) fn datatype_name(code: i16) -> &'static str {
    match code {
        0 => "unknown (0)",
        1 => "binary (1 bit)",
        2 => "uint8",
        4 => "int16",
        8 => "int32",
        16 => "float32",
        32 => "complex64",
        64 => "float64",
        128 => "rgb24",
        255 => "all",
        256 => "int8",
        512 => "uint16",
        768 => "uint32",
        1024 => "int64",
        1280 => "uint64",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "not a NIfTI datatype",
    }
}

/// What a NIfTI header says, validated: grid, storage, scaling and the affine nibabel would use.
#[derive(Clone, Debug)]
pub struct NiftiInfo {
    /// `dim[1..=3]` (1 for axes past `dim[0]`); trailing singleton dims are dropped.
    pub shape: [usize; 3],
    pub datatype: Datatype,
    pub big_endian: bool,
    pub vox_offset: u64,
    /// Bytes of voxel data (`shape` product × datatype size).
    pub nbytes: usize,
    /// `(scl_slope, scl_inter)` when the header asks for scaling other than the identity.
    pub scaling: Option<(f64, f64)>,
    pub affine: Affine,
    pub affine_source: AffineSource,
    /// Header problems nibabel fixes silently on load (invalid codes, bad qfac, …), said aloud.
    pub warnings: Vec<String>,
}

// === Parsing ===

struct Fields<'a> {
    b: &'a [u8; HEADER_SIZE],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        a
    }
    fn i16(&self, off: usize) -> i16 {
        let a = self.bytes::<2>(off);
        if self.big {
            i16::from_be_bytes(a)
        } else {
            i16::from_le_bytes(a)
        }
    }
    fn i32(&self, off: usize) -> i32 {
        let a = self.bytes::<4>(off);
        if self.big {
            i32::from_be_bytes(a)
        } else {
            i32::from_le_bytes(a)
        }
    }
    fn f32(&self, off: usize) -> f32 {
        let a = self.bytes::<4>(off);
        if self.big {
            f32::from_be_bytes(a)
        } else {
            f32::from_le_bytes(a)
        }
    }
    fn f32s<const N: usize>(&self, off: usize) -> [f32; N] {
        std::array::from_fn(|i| self.f32(off + 4 * i))
    }
}

/// Parse the first 348 bytes of a file. Byte order comes from `sizeof_hdr` (348 either way).
pub(crate) fn parse(b: &[u8; HEADER_SIZE], path: &Path) -> Result<NiftiHeader, NiftiError> {
    let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let big = match (le, be) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => {
            return Err(NiftiError::Nifti2 {
                path: path.to_path_buf(),
            })
        }
        _ => {
            return Err(NiftiError::BadSizeofHdr {
                path: path.to_path_buf(),
                got: le,
            })
        }
    };
    let f = Fields { b, big };
    let magic: [u8; 4] = f.bytes(344);
    if &magic != nifti::header::MAGIC_CODE_NIP1 {
        return Err(NiftiError::BadMagic {
            path: path.to_path_buf(),
            magic,
        });
    }
    let raw_dim: [i16; 8] = std::array::from_fn(|i| f.i16(40 + 2 * i));
    validate_dims(&raw_dim, path)?;
    Ok(NiftiHeader {
        sizeof_hdr: 348,
        data_type: f.bytes(4),
        db_name: f.bytes(14),
        extents: f.i32(32),
        session_error: f.i16(36),
        regular: b[38],
        dim_info: b[39],
        // validate_dims proved every dim used is in 1..=i16::MAX; unused ones are clamped.
        dim: raw_dim.map(|d| d.max(0) as u16),
        intent_p1: f.f32(56),
        intent_p2: f.f32(60),
        intent_p3: f.f32(64),
        intent_code: f.i16(68),
        datatype: f.i16(70),
        bitpix: f.i16(72),
        slice_start: f.i16(74),
        pixdim: f.f32s::<8>(76),
        vox_offset: f.f32(108),
        scl_slope: f.f32(112),
        scl_inter: f.f32(116),
        slice_end: f.i16(120),
        slice_code: b[122],
        xyzt_units: b[123],
        cal_max: f.f32(124),
        cal_min: f.f32(128),
        slice_duration: f.f32(132),
        toffset: f.f32(136),
        glmax: f.i32(140),
        glmin: f.i32(144),
        descrip: b[148..228].to_vec(),
        aux_file: f.bytes(228),
        qform_code: f.i16(252),
        sform_code: f.i16(254),
        quatern_b: f.f32(256),
        quatern_c: f.f32(260),
        quatern_d: f.f32(264),
        quatern_x: f.f32(268),
        quatern_y: f.f32(272),
        quatern_z: f.f32(276),
        srow_x: f.f32s::<4>(280),
        srow_y: f.f32s::<4>(296),
        srow_z: f.f32s::<4>(312),
        intent_name: f.bytes(328),
        magic,
        endianness: if big {
            Endianness::Big
        } else {
            Endianness::Little
        },
    })
}

fn validate_dims(dim: &[i16; 8], path: &Path) -> Result<(), NiftiError> {
    let bad = |reason: String| NiftiError::BadDims {
        path: path.to_path_buf(),
        dim: *dim,
        reason,
    };
    let n = dim[0];
    if !(1..=7).contains(&n) {
        return Err(bad(format!("dim[0] = {n}, expected 1..7")));
    }
    for (i, &d) in dim.iter().enumerate().take(n as usize + 1).skip(1) {
        if d < 1 {
            return Err(bad(format!("dim[{i}] = {d}, expected at least 1")));
        }
    }
    let extra: Vec<String> = (4..=n as usize)
        .filter(|&i| dim[i] > 1)
        .map(|i| format!("dim[{i}] = {}", dim[i]))
        .collect();
    if !extra.is_empty() {
        return Err(NiftiError::NotThreeD {
            path: path.to_path_buf(),
            dims: extra.join(", "),
        });
    }
    Ok(())
}

/// Check a parsed header and derive everything the readers need.
pub(crate) fn interpret(h: &NiftiHeader, path: &Path) -> Result<NiftiInfo, NiftiError> {
    let mut warnings = Vec::new();
    let ndim = (h.dim[0] as usize).clamp(1, 7);
    let shape: [usize; 3] =
        std::array::from_fn(|a| if a < ndim { h.dim[a + 1] as usize } else { 1 });
    let datatype =
        Datatype::from_code(h.datatype).ok_or_else(|| NiftiError::UnsupportedDatatype {
            path: path.to_path_buf(),
            code: h.datatype,
            name: datatype_name(h.datatype),
        })?;
    if h.bitpix as usize != datatype.size() * 8 {
        warnings.push(format!(
            "bitpix is {} but datatype {} has {} bits; using the datatype",
            h.bitpix,
            datatype_name(h.datatype),
            datatype.size() * 8
        ));
    }
    let nbytes = shape
        .iter()
        .try_fold(datatype.size(), |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| NiftiError::BadDims {
            path: path.to_path_buf(),
            dim: h.dim.map(|d| d as i16),
            reason: "the volume is too large to address".into(),
        })?;

    // nibabel refuses a non-zero vox_offset below 352 and reads a zero one as offset 0, i.e.
    // from inside the header; both are garbage, so we refuse both.
    let vo = h.vox_offset;
    if !vo.is_finite() || vo < MIN_VOX_OFFSET as f32 {
        return Err(NiftiError::BadVoxOffset {
            path: path.to_path_buf(),
            vox_offset: vo,
        });
    }
    if vo.fract() != 0.0 {
        warnings.push(format!(
            "vox_offset {vo} is not an integer; using {}",
            vo.trunc()
        ));
    }
    let vox_offset = vo.trunc() as u64;

    // nibabel `Nifti1Header.get_slope_inter`: slope 0 or not finite means "no scaling".
    let (slope, inter) = (h.scl_slope as f64, h.scl_inter as f64);
    let scaling = if slope == 0.0 || !slope.is_finite() {
        None
    } else if !inter.is_finite() {
        return Err(NiftiError::BadScaling {
            path: path.to_path_buf(),
            slope: h.scl_slope,
            inter: h.scl_inter,
        });
    } else if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope, inter))
    };

    let (affine, affine_source) =
        best_affine(h, &mut warnings).map_err(|reason| NiftiError::BadTransform {
            path: path.to_path_buf(),
            reason,
        })?;
    let det = affine.det3();
    if !det.is_finite() || det.abs() < 1e-12 {
        return Err(NiftiError::BadTransform {
            path: path.to_path_buf(),
            reason: format!(
                "the {} affine is singular or not finite (determinant {det})",
                affine_source.name()
            ),
        });
    }
    Ok(NiftiInfo {
        shape,
        datatype,
        big_endian: h.endianness == Endianness::Big,
        vox_offset,
        nbytes,
        scaling,
        affine,
        affine_source,
        warnings,
    })
}

/// Set `dim` to a 3D shape (dim[0] = 3, higher dims 1).
pub(crate) fn set_shape(h: &mut NiftiHeader, shape: [usize; 3]) {
    h.dim = [3, 1, 1, 1, 1, 1, 1, 1];
    for (a, &n) in shape.iter().enumerate() {
        h.dim[a + 1] = n as u16;
    }
}

/// A fresh header carrying `affine` as sform and qform, both with code 1 (scanner), pixdim from
/// the column lengths: what dcm2niix writes for a DICOM series.
pub(crate) fn header_from_affine(affine: &Affine, shape: [usize; 3]) -> NiftiHeader {
    let q = quatern_from_affine(affine);
    let row = |r: usize| affine.0[r].map(|v| v as f32);
    let mut h = NiftiHeader {
        dim: [3, 1, 1, 1, 1, 1, 1, 1],
        pixdim: [
            q.qfac as f32,
            q.zooms[0] as f32,
            q.zooms[1] as f32,
            q.zooms[2] as f32,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        vox_offset: MIN_VOX_OFFSET as f32,
        scl_slope: 1.0,
        scl_inter: 0.0,
        xyzt_units: UNITS_MM_SEC,
        qform_code: XFORM_SCANNER,
        sform_code: XFORM_SCANNER,
        quatern_b: q.b as f32,
        quatern_c: q.c as f32,
        quatern_d: q.d as f32,
        quatern_x: q.offset[0] as f32,
        quatern_y: q.offset[1] as f32,
        quatern_z: q.offset[2] as f32,
        srow_x: row(0),
        srow_y: row(1),
        srow_z: row(2),
        magic: *nifti::header::MAGIC_CODE_NIP1,
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    };
    set_shape(&mut h, shape);
    h
}

/// Serialise as a little-endian single-file header followed by an empty extension flag
/// (`MIN_VOX_OFFSET` bytes). `vox_offset` is forced to 352 and the magic to `n+1`.
pub(crate) fn to_bytes(h: &NiftiHeader) -> [u8; MIN_VOX_OFFSET] {
    let mut b = [0u8; MIN_VOX_OFFSET];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &348i32.to_le_bytes());
    put(4, &h.data_type);
    put(14, &h.db_name);
    put(32, &h.extents.to_le_bytes());
    put(36, &h.session_error.to_le_bytes());
    put(38, &[h.regular, h.dim_info]);
    for (i, d) in h.dim.iter().enumerate() {
        put(40 + 2 * i, &(*d as i16).to_le_bytes());
    }
    put(56, &h.intent_p1.to_le_bytes());
    put(60, &h.intent_p2.to_le_bytes());
    put(64, &h.intent_p3.to_le_bytes());
    put(68, &h.intent_code.to_le_bytes());
    put(70, &h.datatype.to_le_bytes());
    put(72, &h.bitpix.to_le_bytes());
    put(74, &h.slice_start.to_le_bytes());
    for (i, p) in h.pixdim.iter().enumerate() {
        put(76 + 4 * i, &p.to_le_bytes());
    }
    put(108, &(MIN_VOX_OFFSET as f32).to_le_bytes());
    put(112, &h.scl_slope.to_le_bytes());
    put(116, &h.scl_inter.to_le_bytes());
    put(120, &h.slice_end.to_le_bytes());
    put(122, &[h.slice_code, h.xyzt_units]);
    put(124, &h.cal_max.to_le_bytes());
    put(128, &h.cal_min.to_le_bytes());
    put(132, &h.slice_duration.to_le_bytes());
    put(136, &h.toffset.to_le_bytes());
    put(140, &h.glmax.to_le_bytes());
    put(144, &h.glmin.to_le_bytes());
    let n = h.descrip.len().min(80);
    put(148, &h.descrip[..n]);
    put(228, &h.aux_file);
    put(252, &h.qform_code.to_le_bytes());
    put(254, &h.sform_code.to_le_bytes());
    let quat = [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ];
    for (i, q) in quat.iter().enumerate() {
        put(256 + 4 * i, &q.to_le_bytes());
    }
    for (r, row) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
        for (i, v) in row.iter().enumerate() {
            put(280 + 16 * r + 4 * i, &v.to_le_bytes());
        }
    }
    put(328, &h.intent_name);
    put(344, nifti::header::MAGIC_CODE_NIP1);
    // bytes 348..352: extension flag, all zero (no extensions).
    b
}

/// A 80-byte `descrip` field holding `text` (truncated to fit).
pub(crate) fn descrip(text: &str) -> Vec<u8> {
    let mut d = vec![0u8; 80];
    let n = text.len().min(79);
    d[..n].copy_from_slice(&text.as_bytes()[..n]);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affine() -> Affine {
        Affine([
            [-0.9, 0.0, 0.1, 1.0],
            [0.0, 0.9, 0.0, 2.0],
            [0.0, 0.0, 3.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    #[test]
    fn serialise_then_parse_is_identity() {
        let a = affine();
        let mut h = header_from_affine(&a, [7, 8, 9]);
        h.datatype = 4;
        h.bitpix = 16;
        h.descrip = descrip("hello");
        let bytes = to_bytes(&h);
        let head: [u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().unwrap();
        let back = parse(&head, Path::new("x.nii")).unwrap();
        assert_eq!(back, h);
    }
}
