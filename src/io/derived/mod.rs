//! Derived DICOM objects: a label volume written back as DICOM that points at its source
//! series, for PACS viewers (OHIF), 3D Slicer and treatment-planning systems.
//!
//! - [`seg`]: a DICOM Segmentation (SegmentationType BINARY, one segment per label).
//! - [`rtstruct`]: an RT Structure Set (one ROI per label, CLOSED_PLANAR contours per slice,
//!   traced by [`contour`]).
//!
//! Both take a [`DerivedRequest`]: the labels on the source grid (`[i, j, k]` = column, row,
//! slice in the series' sorted order, as `io::dicom` reads it), the source's
//! [`SeriesReference`], the segments to write and who made them. [`check_reference`] refuses a
//! source a derived object cannot point at (missing SOPInstanceUIDs, mixed frames of
//! reference) before any work. Files are written atomically (`io::atomic`).
//!
//! UIDs: `2.25.<decimal>` (ISO/IEC 9834-8, no registered root needed), the first 127 bits of
//! SHA-256 over the object kind and purpose, the producer, the source images' SOPInstanceUIDs,
//! the segments and the label voxels (in the array's memory order: `run` always holds labels
//! in the reader's Fortran order). The same prediction of the same series gives the same UIDs
//! (re-runs, shards and resumed runs agree); any change to the labels gives new ones.

pub mod contour;
pub mod rtstruct;
pub mod seg;

use crate::volume::SeriesReference;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_object::InMemDicomObject;
use ndarray::ArrayView3;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A coded concept (CodingSchemeDesignator, CodeValue, CodeMeaning), e.g. SCT 78961009
/// "Spleen".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Code {
    pub scheme: String,
    pub value: String,
    pub meaning: String,
}

impl Code {
    pub fn new(scheme: &str, value: &str, meaning: &str) -> Code {
        Code {
            scheme: scheme.into(),
            value: value.into(),
            meaning: meaning.into(),
        }
    }
}

/// One label to write as a segment (DICOM-SEG) or ROI (RTSTRUCT).
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSpec {
    /// The label value in the label volume.
    pub label: u16,
    /// SegmentLabel / ROIName.
    pub name: String,
    /// Display colour (sRGB), as the pipeline's colour table has it.
    pub color: [u8; 3],
    /// SegmentedPropertyCategoryCodeSequence (e.g. SCT 91723000 "Anatomical Structure").
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence (e.g. SCT 64033007 "Kidney").
    pub property_type: Code,
    /// SegmentedPropertyTypeModifierCodeSequence (e.g. SCT 24028007 "Right").
    pub modifier: Option<Code>,
}

/// Who made the object: written as Manufacturer, ManufacturerModelName, SoftwareVersions,
/// SegmentAlgorithmName / ROIGenerationAlgorithm description.
#[derive(Clone, Debug, PartialEq)]
pub struct Producer {
    /// "sdseg-volume".
    pub manufacturer: String,
    /// The tool version (`CARGO_PKG_VERSION`).
    pub software_version: String,
    /// The algorithm: model preset and weights, e.g. "SDSeg sdseg-binary (weights 1a2b3c4d5e6f)".
    pub algorithm_name: String,
    /// The algorithm's version: the weights' short hash.
    pub algorithm_version: String,
}

/// Everything a derived-object writer needs.
#[derive(Clone, Debug)]
pub struct DerivedRequest<'a> {
    /// Labels on the source grid, `[i, j, k]` = (column, row, slice in `reference.slices`
    /// order).
    pub labels: ArrayView3<'a, u16>,
    pub reference: &'a SeriesReference,
    /// The segments to write, in SegmentNumber / ROINumber order (1, 2, …). The caller leaves
    /// out labels absent from the prediction unless the user asked for empty ones.
    pub segments: &'a [SegmentSpec],
    pub producer: &'a Producer,
    /// SeriesDescription of the new series (e.g. "SDSeg demo segmentation").
    pub series_description: String,
    /// SeriesNumber of the new series.
    pub series_number: i32,
    /// Content date and time.
    pub created: Timestamp,
}

/// A UTC date and time as DICOM writes them (DA `YYYYMMDD`, TM `HHMMSS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub unix_seconds: i64,
}

impl Timestamp {
    /// Now, or `$SOURCE_DATE_EPOCH` when set (the reproducible-builds convention: byte-equal
    /// outputs from two runs).
    pub fn now() -> Timestamp {
        let env = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        let unix_seconds = env.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
        Timestamp { unix_seconds }
    }

    /// DA: `YYYYMMDD` (UTC).
    pub fn date(self) -> String {
        let days = self.unix_seconds.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}{m:02}{d:02}")
    }

    /// TM: `HHMMSS` (UTC).
    pub fn time(self) -> String {
        let s = self.unix_seconds.rem_euclid(86_400);
        format!("{:02}{:02}{:02}", s / 3600, (s / 60) % 60, s % 60)
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    /// The source series cannot be referenced (what is missing, which slice).
    #[error("{input}: cannot write {what}: {detail}")]
    Reference {
        input: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: DICOM encoding failed: {message}")]
    Encode { path: PathBuf, message: String },
    /// The request does not fit the reference (label volume shape, segment list).
    #[error("{0}")]
    Request(String),
}

impl crate::error::Classify for DerivedError {
    fn is_input_error(&self) -> bool {
        matches!(
            self,
            DerivedError::Reference { .. } | DerivedError::Io { .. }
        )
    }
}

/// What a derived object references, checked: every slice has a SOP class and instance UID,
/// one FrameOfReferenceUID for the whole series, a StudyInstanceUID. `input` and `what`
/// ("a DICOM-SEG", "an RTSTRUCT") name the error.
pub fn check_reference(
    reference: &SeriesReference,
    input: &Path,
    what: &'static str,
) -> Result<CheckedReference, DerivedError> {
    let err = |detail: String| DerivedError::Reference {
        input: input.to_path_buf(),
        what,
        detail,
    };
    if reference.slices.is_empty() {
        return Err(err("the source series has no slices".into()));
    }
    for (k, s) in reference.slices.iter().enumerate() {
        if s.sop_instance_uid.is_none() {
            return Err(err(format!(
                "slice {k} of the source series has no SOPInstanceUID (0008,0018); a derived object must name every source image"
            )));
        }
        if s.sop_class_uid.is_none() {
            return Err(err(format!(
                "slice {k} of the source series has no SOPClassUID (0008,0016)"
            )));
        }
    }
    let mut fors: Vec<&str> = reference
        .frame_of_reference_uids
        .iter()
        .filter_map(|f| f.as_deref())
        .collect();
    fors.sort_unstable();
    fors.dedup();
    let frame_of_reference_uid = match fors.as_slice() {
        [one] if reference.frame_of_reference_uids.iter().all(|f| f.is_some()) => one.to_string(),
        [] | [_] => {
            return Err(err(
                "the source series has slices without FrameOfReferenceUID (0020,0052); a derived object must share the source's frame of reference".into(),
            ))
        }
        many => {
            return Err(err(format!(
                "the source series mixes {} FrameOfReferenceUIDs (0020,0052) ({}); its slices are not in one patient coordinate system",
                many.len(),
                many.join(", ")
            )))
        }
    };
    let study_instance_uid = reference
        .study_instance_uid
        .clone()
        .ok_or_else(|| err("the source series has no StudyInstanceUID (0020,000D)".into()))?;
    Ok(CheckedReference {
        frame_of_reference_uid,
        study_instance_uid,
    })
}

/// The identifiers [`check_reference`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedReference {
    pub frame_of_reference_uid: String,
    pub study_instance_uid: String,
}

/// The UIDs of one derived object: `2.25.` UIDs from a digest of the request, hashed once
/// (the label volume is the bulk: ~100 MB for 512×512×200) and then combined with each UID's
/// object kind and purpose ("series", "instance", …). The same labels of the same series from
/// the same producer give the same UIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uids {
    content: [u8; 32],
}

impl Uids {
    /// Digest of the producer, the source images' SOPInstanceUIDs, the segments and the label
    /// voxels (memory order).
    pub fn of(req: &DerivedRequest) -> Uids {
        let mut h = Sha256::new();
        h.update(b"sdseg-volume derived object\0");
        for part in [
            req.producer.manufacturer.as_str(),
            req.producer.algorithm_name.as_str(),
            req.producer.algorithm_version.as_str(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for s in &req.reference.slices {
            h.update(s.sop_instance_uid.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
        }
        for s in req.segments {
            h.update(s.label.to_le_bytes());
            h.update(s.name.as_bytes());
            h.update([0]);
        }
        for d in req.labels.shape() {
            h.update((*d as u64).to_le_bytes());
        }
        match req.labels.as_slice_memory_order() {
            Some(v) => hash_labels(&mut h, v.iter()),
            None => hash_labels(&mut h, req.labels.iter()),
        }
        Uids {
            content: h.finalize().into(),
        }
    }

    /// The UID for `purpose` in an object of `kind` ("DICOM-SEG", "rtstruct").
    pub fn uid(&self, kind: &str, purpose: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.content);
        for part in [kind, purpose] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        uid_from_digest(&h.finalize())
    }
}

/// Feeds the labels' little-endian bytes to `h` in blocks (one `update` per value costs more
/// than the hashing itself on a CT-sized volume).
fn hash_labels<'a>(h: &mut Sha256, values: impl Iterator<Item = &'a u16>) {
    let mut block = Vec::with_capacity(8192);
    for x in values {
        block.extend_from_slice(&x.to_le_bytes());
        if block.len() == block.capacity() {
            h.update(&block);
            block.clear();
        }
    }
    h.update(&block);
}

fn uid_from_digest(d: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[0] &= 0x7f; // 127 bits: at most 39 digits, 44 characters with the root
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// A DS value (at most 16 characters).
pub(crate) fn ds(x: f64) -> String {
    let x = if x == 0.0 { 0.0 } else { x }; // no "-0"
    let s = format!("{x}");
    if s.len() <= 16 {
        return s;
    }
    for prec in (0..=10).rev() {
        let s = format!("{x:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 && s != "-0" {
            return s;
        }
    }
    format!("{x:.6e}")
}

/// Several DS values.
pub(crate) fn ds_multi(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| ds(*x)).collect())
}

pub(crate) fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
}

pub(crate) fn item(f: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    f(&mut o);
    o
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
pub(crate) fn code_item(c: &Code) -> InMemDicomObject {
    use dicom_dictionary_std::tags;
    item(|o| {
        put(o, tags::CODE_VALUE, VR::SH, c.value.as_str());
        put(o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme.as_str());
        put(o, tags::CODE_MEANING, VR::LO, c.meaning.as_str());
    })
}

/// The segment's property type as a code item, with its modifier (laterality) nested in it:
/// SegmentedPropertyTypeCodeSequence (DICOM-SEG) and RTROIIdentificationCodeSequence
/// (RTSTRUCT) hold the same item.
pub(crate) fn property_type_item(s: &SegmentSpec) -> InMemDicomObject {
    use dicom_dictionary_std::tags;
    let mut property = code_item(&s.property_type);
    if let Some(m) = &s.modifier {
        put_seq(
            &mut property,
            tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE,
            vec![code_item(m)],
        );
    }
    property
}

/// The copied patient/study attributes, each with its dictionary VR.
pub(crate) fn put_patient_study(obj: &mut InMemDicomObject, reference: &SeriesReference) {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_dictionary_std::StandardDataDictionary;
    for a in &reference.patient_study {
        let tag = Tag(a.tag.0, a.tag.1);
        let vr = match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
            Some(VirtualVr::Exact(vr)) => vr,
            _ => VR::LO,
        };
        let values: Vec<String> = a.value.split('\\').map(str::to_string).collect();
        put(obj, tag, vr, PrimitiveValue::Strs(values.into()));
    }
}

/// The Type 2 attributes of the Patient and General Study modules that the source did not
/// have, present and empty (Type 2: the element must be there, its value may be empty).
pub(crate) fn put_empty_type2_patient_study(obj: &mut InMemDicomObject) {
    use dicom_dictionary_std::tags;
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        if obj.element(tag).is_err() {
            put(obj, tag, vr, PrimitiveValue::Empty);
        }
    }
}

/// Declares UTF-8 (SpecificCharacterSet "ISO_IR 192") when any text of `obj` (at any depth)
/// is not plain ASCII; otherwise leaves the source's declaration as copied. The values are
/// Unicode in memory (the reader decoded them with the source's character set), and the
/// writer encodes them with the declared one: a segment or ROI name, a producer string or a
/// copied name that the source's repertoire (or the default one) cannot hold would otherwise
/// fail to encode. UTF-8 holds them all.
pub(crate) fn settle_character_set(obj: &mut InMemDicomObject) {
    if has_non_ascii_text(obj) {
        use dicom_dictionary_std::tags;
        put(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
}

fn has_non_ascii_text(obj: &InMemDicomObject) -> bool {
    use dicom_core::value::Value;
    obj.iter().any(|e| match e.value() {
        Value::Primitive(p) => {
            // The VRs whose text follows SpecificCharacterSet (PS3.5 6.1.2.3).
            matches!(
                e.vr(),
                VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UT
            ) && match p {
                PrimitiveValue::Str(s) => !s.is_ascii(),
                PrimitiveValue::Strs(v) => v.iter().any(|s| !s.is_ascii()),
                _ => false,
            }
        }
        Value::Sequence(seq) => seq.items().iter().any(has_non_ascii_text),
        Value::PixelSequence(_) => false,
    })
}

/// sRGB (0–255) → CIELab scaled as RecommendedDisplayCIELabValue wants (PS3.3 C.10.7.1.1:
/// L* 0–100 → 0–65535, a* and b* −128–127 → 0–65535), D65 white point.
pub fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    let lin = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = 0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175_0 * b;
    let z = 0.019_333_9 * r + 0.119_192_0 * g + 0.950_304_1 * b;
    let (xn, yn, zn) = (0.950_47, 1.0, 1.088_83);
    let f = |t: f64| {
        let d: f64 = 6.0 / 29.0;
        if t > d.powi(3) {
            t.cbrt()
        } else {
            t / (3.0 * d * d) + 4.0 / 29.0
        }
    };
    let (fx, fy, fz) = (f(x / xn), f(y / yn), f(z / zn));
    let l = 116.0 * fy - 16.0;
    let a = 500.0 * (fx - fy);
    let bb = 200.0 * (fy - fz);
    let scale_l = |v: f64| (v.clamp(0.0, 100.0) * 65535.0 / 100.0).round() as u16;
    let scale_ab = |v: f64| ((v.clamp(-128.0, 127.0) + 128.0) * 65535.0 / 255.0).round() as u16;
    [scale_l(l), scale_ab(a), scale_ab(bb)]
}

/// Write `obj` as a DICOM Part 10 file (Explicit VR Little Endian) atomically.
pub(crate) fn write_part10(
    obj: InMemDicomObject,
    path: &Path,
    sop_class: &str,
    sop_instance: &str,
) -> Result<(), DerivedError> {
    use dicom_object::meta::FileMetaTableBuilder;
    let enc = |e: &dyn std::fmt::Display| DerivedError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    let file = obj.with_meta(meta).map_err(|e| enc(&e))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| enc(&e))?;
    crate::io::atomic::write_atomic(path, |f| std::io::Write::write_all(f, &bytes)).map_err(|e| {
        DerivedError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// ImplementationClassUID of the files sdseg-volume writes (a `2.25.` UUID-derived UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302585237396474375393406963311553546155";
/// ImplementationVersionName (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("SDSEG_", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(Timestamp { unix_seconds: 0 }.date(), "19700101");
        // 2026-12-07 15:44:58 UTC
        let t = Timestamp {
            unix_seconds: 1_796_658_298,
        };
        assert_eq!(t.date(), "20261207");
        assert_eq!(t.time(), "154458");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn lab_of_white_black_red() {
        assert_eq!(srgb_to_dicom_lab([255, 255, 255]), [65535, 32896, 32896]);
        assert_eq!(srgb_to_dicom_lab([0, 0, 0]), [0, 32896, 32896]);
        let red = srgb_to_dicom_lab([255, 0, 0]);
        // L* 53.24, a* 80.09, b* 67.20
        assert!((f64::from(red[0]) * 100.0 / 65535.0 - 53.24).abs() < 0.05);
        assert!((f64::from(red[1]) * 255.0 / 65535.0 - 128.0 - 80.09).abs() < 0.1);
        assert!((f64::from(red[2]) * 255.0 / 65535.0 - 128.0 - 67.20).abs() < 0.1);
    }

    #[test]
    fn utf8_is_declared_only_for_non_ascii_text() {
        use dicom_dictionary_std::tags;
        let charset = |o: &InMemDicomObject| {
            o.element(tags::SPECIFIC_CHARACTER_SET)
                .ok()
                .map(|e| e.to_str().unwrap().into_owned())
        };
        let mut ascii = item(|o| {
            put(o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
            put(o, tags::PATIENT_NAME, VR::PN, "Doe^John");
        });
        settle_character_set(&mut ascii);
        assert_eq!(charset(&ascii).as_deref(), Some("ISO_IR 100"));

        // Deep in a sequence, in a VR that follows the character set.
        let mut nested = item(|o| {
            put(o, tags::PATIENT_NAME, VR::PN, "Doe^John");
            put_seq(
                o,
                tags::SEGMENT_SEQUENCE,
                vec![item(|s| put(s, tags::SEGMENT_LABEL, VR::LO, "Ösophagus"))],
            );
        });
        settle_character_set(&mut nested);
        assert_eq!(charset(&nested).as_deref(), Some("ISO_IR 192"));
    }

    #[test]
    fn labels_hash_as_their_little_endian_bytes() {
        let values: Vec<u16> = (0..10_000u32).map(|v| (v * 7919 % 65_536) as u16).collect();
        let mut blocks = Sha256::new();
        hash_labels(&mut blocks, values.iter());
        let mut one_by_one = Sha256::new();
        values
            .iter()
            .for_each(|x| one_by_one.update(x.to_le_bytes()));
        assert_eq!(blocks.finalize(), one_by_one.finalize());
    }

    #[test]
    fn ds_fits_16_characters() {
        for x in [
            0.0,
            -0.0,
            1.0 / 3.0,
            -123456.789012345,
            1e-20,
            -2.5e17,
            0.7031250000000001,
        ] {
            let s = ds(x);
            assert!(s.len() <= 16, "{x} -> {s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - x).abs() <= 1e-9 * x.abs().max(1.0), "{x} -> {s}");
        }
    }
}
