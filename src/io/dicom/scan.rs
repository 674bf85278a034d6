//! Finding files (folder, zip, single file) and reading their headers only.

use super::walk::{self, PixelExtent, WalkError, WalkErrorKind, Walked};
use super::DicomError;
use dicom_core::Tag;
use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one file's bytes live: on disk, or in memory (an entry of a zip archive).
#[derive(Clone, Debug)]
pub(crate) enum FileSource {
    Disk(PathBuf),
    Memory { name: PathBuf, bytes: Arc<Vec<u8>> },
}

impl FileSource {
    /// The name shown to the user (for zip entries: `archive.zip/entry/path`).
    pub(crate) fn display_path(&self) -> &Path {
        match self {
            FileSource::Disk(p) => p,
            FileSource::Memory { name, .. } => name,
        }
    }
}

/// Geometry and rescale of one frame (one slice).
#[derive(Clone, Debug, Default)]
pub(crate) struct FrameInfo {
    pub ipp: Field<[f64; 3]>,
    pub iop: Field<[f64; 6]>,
    /// PixelSpacing: [between rows, between columns] in mm.
    pub spacing: Field<[f64; 2]>,
    /// RescaleSlope / RescaleIntercept as read; [`FileHeader::rescale`] validates them.
    pub slope: Field<f64>,
    pub intercept: Field<f64>,
}

impl FrameInfo {
    /// RescaleSlope and RescaleIntercept to apply: (1, 0) when absent. A slope of 0 means
    /// "not rescaled", as dcm2niix and the NIfTI standard read it: the stored values are
    /// used as they are (and [`DicomInput`](super::DicomInput) warns). Non-numeric or
    /// non-finite values are errors naming the tag.
    pub(crate) fn rescale(
        &self,
        path: &Path,
        frame: Option<u32>,
    ) -> Result<(f64, f64), DicomError> {
        let slope = match self.slope {
            Field::Absent => 1.0,
            ref f => f.require(path, "RescaleSlope (0028,1053)", frame)?,
        };
        let intercept = match self.intercept {
            Field::Absent => 0.0,
            ref f => f.require(path, "RescaleIntercept (0028,1052)", frame)?,
        };
        Ok(if slope == 0.0 {
            (1.0, 0.0)
        } else {
            (slope, intercept)
        })
    }

    /// Whether this frame's RescaleSlope is 0 (read unscaled).
    pub(crate) fn zero_slope(&self) -> bool {
        matches!(self.slope, Field::Value(s) if s == 0.0)
    }
}

/// A header value: absent (or empty), present but not what the tag needs, or read.
#[derive(Clone, Debug, Default)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    /// The raw text of a value that is not valid (not numeric, wrong count, not finite).
    Invalid(String),
    Value(T),
}

impl<T: Copy> Field<T> {
    /// The value, or the error to report for this file (and frame).
    pub(crate) fn require(
        &self,
        path: &Path,
        tag: &'static str,
        frame: Option<u32>,
    ) -> Result<T, DicomError> {
        match self {
            Field::Value(v) => Ok(*v),
            Field::Absent => Err(DicomError::MissingTag {
                path: path.to_path_buf(),
                tag,
                frame,
            }),
            Field::Invalid(raw) => Err(DicomError::BadValue {
                path: path.to_path_buf(),
                tag,
                detail: format!(
                    "{}invalid value '{raw}'",
                    frame
                        .map(|f| format!("frame {}: ", f + 1))
                        .unwrap_or_default()
                ),
            }),
        }
    }
}

/// Everything the series logic needs from one file's header.
#[derive(Clone, Debug)]
pub(crate) struct FileHeader {
    pub source: FileSource,
    pub transfer_syntax: String,
    pub has_meta: bool,
    pub series_uid: String,
    pub series_description: Option<String>,
    pub series_number: Option<i32>,
    pub modality: Option<String>,
    pub image_type: Vec<String>,
    pub rows: u32,
    pub cols: u32,
    pub samples_per_pixel: u16,
    /// PhotometricInterpretation, when present.
    pub photometric: Option<String>,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    pub n_frames: u32,
    /// One entry per frame (length `n_frames`).
    pub frames: Vec<FrameInfo>,
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub slice_thickness: Option<f64>,
    /// Patient/study attributes derived objects copy ([`COPIED_TAGS`]), in tag order.
    pub patient_study: Vec<crate::volume::CopiedAttribute>,
}

/// The Patient, General Study and Patient Study attributes (and the character set that
/// decodes them) that derived objects (DICOM-SEG, RTSTRUCT) copy from their source series, so
/// a PACS files them under the same patient and study.
pub(crate) const COPIED_TAGS: [Tag; 18] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
];

/// Why a file was not used.
#[derive(Clone, Debug)]
pub(crate) enum SkipKind {
    /// Not DICOM (named in a warning).
    NotDicom,
    /// DICOM, but damaged (truncated, malformed, inconsistent sizes): an error when it
    /// belongs to the series being read.
    Broken,
    /// A DICOM object without an image (DICOMDIR, SR, RT structure set, …).
    NoImage,
}

#[derive(Clone, Debug)]
pub(crate) struct Skipped {
    pub path: PathBuf,
    pub kind: SkipKind,
    /// The SeriesInstanceUID, when the header was read far enough to say.
    pub series_uid: Option<String>,
    pub reason: String,
}

/// The candidate files of an input, before header parsing.
pub(crate) fn list_sources(input: &Path) -> Result<Vec<FileSource>, DicomError> {
    let meta = std::fs::metadata(input).map_err(|e| DicomError::Io {
        path: input.to_path_buf(),
        message: e.to_string(),
    })?;
    if meta.is_dir() {
        let mut out = Vec::new();
        walk(input, 0, &mut out)?;
        out.sort();
        return Ok(out.into_iter().map(FileSource::Disk).collect());
    }
    let lower = input.to_string_lossy().to_ascii_lowercase();
    if lower.ends_with(".zip") {
        return zip_sources(input);
    }
    Ok(vec![FileSource::Disk(input.to_path_buf())])
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), DicomError> {
    if depth > 32 {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| DicomError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for entry in rd.flatten() {
        let p = entry.path();
        // `metadata` follows symlinks; broken links are skipped silently as they hold nothing.
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, depth + 1, out)?,
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
    Ok(())
}

fn zip_sources(path: &Path) -> Result<Vec<FileSource>, DicomError> {
    let zerr = |m: String| DicomError::Zip {
        path: path.to_path_buf(),
        message: m,
    };
    let f = std::fs::File::open(path).map_err(|e| DicomError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| zerr(format!("not a readable zip archive: {e}")))?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| zerr(format!("entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        // The declared size is a header field: reserve no more than a real entry could hold.
        let mut bytes = Vec::with_capacity(entry.size().min(16 << 20) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| zerr(format!("entry {name}: {e}")))?;
        out.push(FileSource::Memory {
            name: path.join(&name),
            bytes: Arc::new(bytes),
        });
    }
    out.sort_by(|a, b| a.display_path().cmp(b.display_path()));
    Ok(out)
}

/// Read the headers of all sources in parallel; split into DICOM images and skipped files.
pub(crate) fn read_headers(sources: Vec<FileSource>) -> (Vec<FileHeader>, Vec<Skipped>) {
    let results: Vec<Result<FileHeader, Skipped>> =
        sources.into_par_iter().map(read_header).collect();
    let mut headers = Vec::new();
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(h) => headers.push(h),
            Err(s) => skipped.push(s),
        }
    }
    (headers, skipped)
}

fn read_header(src: FileSource) -> Result<FileHeader, Skipped> {
    let path = src.display_path().to_path_buf();
    let opened = open_object(&src, true).map_err(|e| Skipped {
        path: path.clone(),
        kind: if matches!(
            e.walk.as_ref().map(|w| &w.kind),
            Some(WalkErrorKind::NotDicom)
        ) {
            SkipKind::NotDicom
        } else {
            SkipKind::Broken
        },
        series_uid: e.series_uid(),
        reason: e.message,
    })?;
    header_from_object(src, opened)
}

/// A file opened for reading: the dicom-rs object and what the bounds-checked walk found.
pub(crate) struct Opened {
    pub obj: DefaultDicomObject,
    pub walked: Walked,
}

/// Why a file could not be opened.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub message: String,
    /// The walk's error, when the walk failed (it may carry the SeriesInstanceUID).
    pub walk: Option<WalkError>,
    /// The SeriesInstanceUID the walk read, when dicom-rs failed after a clean walk.
    pub walked_series: Option<String>,
}

impl OpenError {
    pub(crate) fn series_uid(&self) -> Option<String> {
        self.walk
            .as_ref()
            .and_then(|w| w.series_uid.clone())
            .or_else(|| self.walked_series.clone())
    }
}

/// The bytes of a source (the whole file).
fn load(src: &FileSource) -> Result<Arc<Vec<u8>>, String> {
    match src {
        FileSource::Disk(p) => std::fs::read(p)
            .map(Arc::new)
            .map_err(|e| format!("cannot read: {e}")),
        FileSource::Memory { bytes, .. } => Ok(bytes.clone()),
    }
}

/// Open a file as a DICOM object: with its meta group (preamble optional), or, failing
/// that, as a bare data set in implicit or explicit VR little endian (older exports).
/// `header_only` stops before the pixel data. Every declared length is checked against the
/// file ([`walk`]) before dicom-rs parses it, so no value is reserved beyond the file's size.
pub(crate) fn open_object(src: &FileSource, header_only: bool) -> Result<Opened, OpenError> {
    let bytes = load(src).map_err(|message| OpenError {
        message,
        walk: None,
        walked_series: None,
    })?;
    let walked = walk::walk(&bytes).map_err(|e| OpenError {
        message: e.to_string(),
        walk: Some(e),
        walked_series: None,
    })?;
    let parsed = if walked.has_meta {
        let o = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
        let o = if header_only {
            o.read_until(tags::PIXEL_DATA)
        } else {
            o
        };
        // From "DICM" on: dicom-rs expects the magic when the preamble is skipped.
        o.from_reader(&bytes[walked.start - 4..])
            .map_err(|e| e.to_string())
    } else {
        open_bare(&bytes)
    };
    match parsed {
        Ok(obj) => Ok(Opened { obj, walked }),
        Err(e) => Err(OpenError {
            message: format!("not readable as DICOM ({e})"),
            walk: None,
            walked_series: walked.series_uid,
        }),
    }
}

/// A data set with no preamble and no meta group, in implicit or explicit VR little endian.
fn open_bare(bytes: &[u8]) -> Result<DefaultDicomObject, String> {
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };
    let explicit =
        bytes.len() >= 6 && bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase();
    let ts = if explicit {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let ds = InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| e.to_string())?;
    let sop_class = ds
        .element_opt(tags::SOP_CLASS_UID)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| clean(&s)))
        .unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.2".to_string());
    let sop_inst = ds
        .element_opt(tags::SOP_INSTANCE_UID)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| clean(&s)))
        .unwrap_or_else(|| "2.25.1".to_string());
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(ts.uid())
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_inst);
    ds.with_meta(meta).map_err(|e| e.to_string())
}

pub(crate) fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// The value of `tag`, with a standard attribute that was written with VR UN (anonymizers
/// and PACS that do not know a tag do this) read as its dictionary VR, as pydicom and dcm2niix
/// do: dicom-rs leaves UN values as raw bytes. Binary UN values are read little endian.
fn value(obj: &InMemDicomObject, tag: Tag) -> Option<PrimitiveValue> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let e = obj.element_opt(tag).ok().flatten()?;
    let p = e.value().primitive()?;
    if e.vr() != VR::UN {
        return Some(p.clone());
    }
    let PrimitiveValue::U8(bytes) = p else {
        return Some(p.clone());
    };
    let vr = match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(vr) => vr,
        _ => return Some(p.clone()),
    };
    let words = |n: usize| bytes.chunks_exact(n);
    Some(match vr {
        VR::US => PrimitiveValue::U16(words(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
        VR::SS => PrimitiveValue::I16(words(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()),
        VR::UL => PrimitiveValue::U32(
            words(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        VR::SL => PrimitiveValue::I32(
            words(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        VR::FL => PrimitiveValue::F32(
            words(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        VR::FD => PrimitiveValue::F64(
            words(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
        ),
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::LT
        | VR::PN
        | VR::SH
        | VR::ST
        | VR::TM
        | VR::UC
        | VR::UI
        | VR::UR
        | VR::UT => {
            let text = String::from_utf8_lossy(bytes);
            PrimitiveValue::Strs(text.split('\\').map(|s| s.to_string()).collect())
        }
        _ => p.clone(),
    })
}

fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = clean(&value(obj, tag)?.to_str());
    (!s.is_empty()).then_some(s)
}

fn get_int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    value(obj, tag)?.to_int::<i64>().ok()
}

fn get_floats<const N: usize>(obj: &InMemDicomObject, tag: Tag) -> Field<[f64; N]> {
    let Some(e) = value(obj, tag) else {
        return Field::Absent;
    };
    let raw = clean(&e.to_str());
    if raw.is_empty() {
        return Field::Absent;
    }
    match e.to_multi_float64() {
        Ok(v) if v.len() == N && v.iter().all(|x| x.is_finite()) => {
            Field::Value(std::array::from_fn(|i| v[i]))
        }
        _ => Field::Invalid(raw),
    }
}

/// A single number: absent/empty, invalid (not numeric or not finite), or the value.
fn get_number(obj: &InMemDicomObject, tag: Tag) -> Field<f64> {
    match get_floats::<1>(obj, tag) {
        Field::Value([v]) => Field::Value(v),
        Field::Absent => Field::Absent,
        Field::Invalid(r) => Field::Invalid(r),
    }
}

/// The first item of a sequence, if any.
fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok().flatten()?.items()?.first()
}

/// Frame geometry/rescale from one functional-group item (shared or per-frame).
fn frame_from_group(group: &InMemDicomObject, f: &mut FrameInfo) {
    if let Some(pos) = first_item(group, tags::PLANE_POSITION_SEQUENCE) {
        match get_floats::<3>(pos, tags::IMAGE_POSITION_PATIENT) {
            Field::Absent => {}
            v => f.ipp = v,
        }
    }
    if let Some(ori) = first_item(group, tags::PLANE_ORIENTATION_SEQUENCE) {
        match get_floats::<6>(ori, tags::IMAGE_ORIENTATION_PATIENT) {
            Field::Absent => {}
            v => f.iop = v,
        }
    }
    if let Some(m) = first_item(group, tags::PIXEL_MEASURES_SEQUENCE) {
        match get_floats::<2>(m, tags::PIXEL_SPACING) {
            Field::Absent => {}
            v => f.spacing = v,
        }
    }
    if let Some(t) = first_item(group, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
        match get_number(t, tags::RESCALE_SLOPE) {
            Field::Absent => {}
            v => f.slope = v,
        }
        match get_number(t, tags::RESCALE_INTERCEPT) {
            Field::Absent => {}
            v => f.intercept = v,
        }
    }
}

/// Encapsulated Pixel Data may decode to at most this many times its compressed size, beyond
/// a floor of 8 MiB per file (a 2048² 16-bit frame). Real CT compresses 2–20× (lossless) or
/// up to ~100× (lossy); a small file that claims far more is refused before decoding, so a
/// folder of hostile files cannot make the reader allocate gigabytes.
const MAX_EXPANSION: u64 = 1024;
const EXPANSION_FLOOR: u64 = 8 << 20;

pub(crate) fn header_from_object(src: FileSource, opened: Opened) -> Result<FileHeader, Skipped> {
    let path = src.display_path().to_path_buf();
    let Opened { obj, walked } = opened;
    let has_meta = walked.has_meta;
    let ds: &InMemDicomObject = &obj;
    let sop_class_uid = get_str(ds, tags::SOP_CLASS_UID);
    let series_uid = get_str(ds, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let broken = |reason: String| Skipped {
        path: path.clone(),
        kind: SkipKind::Broken,
        series_uid: Some(series_uid.clone()),
        reason,
    };
    let rows = get_int(ds, tags::ROWS);
    let cols = get_int(ds, tags::COLUMNS);
    let (rows, cols) = match (rows, cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 && r <= 0xFFFF && c <= 0xFFFF => (r as u32, c as u32),
        (Some(r), Some(c)) if walked.pixel_data.is_some() => {
            return Err(broken(format!(
                "bad Rows (0028,0010) / Columns (0028,0011): {r} × {c} (expected 1..=65535 each)"
            )))
        }
        _ => {
            let what = sop_class_uid
                .as_deref()
                .map(|u| format!("{}, {u}", sop_class_name(u)))
                .unwrap_or_else(|| "no SOP class".into());
            return Err(Skipped {
                path,
                kind: SkipKind::NoImage,
                series_uid: Some(series_uid),
                reason: format!("DICOM without an image ({what})"),
            });
        }
    };
    let n_frames = number_of_frames(ds).map_err(broken)?;
    let px = PixelModule::read(ds).map_err(broken)?;
    check_pixel_extent(walked.pixel_data, rows, cols, n_frames, &px).map_err(broken)?;
    let frames = frame_infos(ds, n_frames);
    Ok(FileHeader {
        transfer_syntax: clean(obj.meta().transfer_syntax()),
        has_meta,
        series_uid,
        series_description: get_str(ds, tags::SERIES_DESCRIPTION),
        series_number: get_int(ds, tags::SERIES_NUMBER).map(|v| v as i32),
        modality: get_str(ds, tags::MODALITY),
        image_type: value(ds, tags::IMAGE_TYPE)
            .map(|v| v.to_multi_str().iter().map(|s| clean(s)).collect())
            .unwrap_or_default(),
        rows,
        cols,
        samples_per_pixel: px.samples_per_pixel as u16,
        photometric: get_str(ds, tags::PHOTOMETRIC_INTERPRETATION),
        bits_allocated: px.bits_allocated as u16,
        bits_stored: px.bits_stored as u16,
        high_bit: px.high_bit as u16,
        signed: get_int(ds, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1,
        n_frames,
        frames,
        sop_instance_uid: get_str(ds, tags::SOP_INSTANCE_UID),
        sop_class_uid,
        frame_of_reference_uid: get_str(ds, tags::FRAME_OF_REFERENCE_UID),
        slice_thickness: match get_number(ds, tags::SLICE_THICKNESS) {
            Field::Value(t) if t > 0.0 => Some(t),
            _ => None,
        },
        patient_study: COPIED_TAGS
            .iter()
            .filter_map(|&tag| {
                let value = value(ds, tag)?.to_str().into_owned();
                let value = value.trim_end_matches(['\0', ' ']).to_string();
                (!value.is_empty()).then_some(crate::volume::CopiedAttribute {
                    tag: (tag.group(), tag.element()),
                    value,
                })
            })
            .collect(),
        source: src,
    })
}

/// NumberOfFrames (1 when absent); why it is bad otherwise.
fn number_of_frames(ds: &InMemDicomObject) -> Result<u32, String> {
    match get_number(ds, tags::NUMBER_OF_FRAMES) {
        Field::Absent => Ok(1),
        Field::Value(n) if n >= 1.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Ok(n as u32),
        // Some writers put 0 in single-frame files.
        Field::Value(0.0) => Ok(1),
        Field::Value(n) => Err(format!(
            "bad NumberOfFrames (0028,0008): {n} (expected a positive integer)"
        )),
        Field::Invalid(raw) => Err(format!(
            "bad NumberOfFrames (0028,0008): invalid value '{raw}'"
        )),
    }
}

/// The sample layout of the Image Pixel module, checked for consistency.
struct PixelModule {
    samples_per_pixel: i64,
    bits_allocated: i64,
    bits_stored: i64,
    high_bit: i64,
}

impl PixelModule {
    /// Read with the defaults of a CT (1 sample of 16 bits, all stored, high bit last); why
    /// it is bad otherwise.
    fn read(ds: &InMemDicomObject) -> Result<PixelModule, String> {
        let samples_per_pixel = get_int(ds, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits_allocated = get_int(ds, tags::BITS_ALLOCATED).unwrap_or(16);
        let bits_stored = get_int(ds, tags::BITS_STORED).unwrap_or(bits_allocated);
        let high_bit = get_int(ds, tags::HIGH_BIT).unwrap_or(bits_stored - 1);
        if !(1..=4).contains(&samples_per_pixel) {
            return Err(format!(
                "bad SamplesPerPixel (0028,0002): {samples_per_pixel} (expected 1, 3 or 4)"
            ));
        }
        if !matches!(bits_allocated, 1 | 8 | 16 | 32 | 64) {
            return Err(format!(
                "bad BitsAllocated (0028,0100): {bits_allocated} (expected 1, 8, 16, 32 or 64)"
            ));
        }
        if !(1..=bits_allocated).contains(&bits_stored) {
            return Err(format!(
                "bad BitsStored (0028,0101): {bits_stored} (expected 1..={bits_allocated}, the BitsAllocated)"
            ));
        }
        if !(bits_stored - 1..bits_allocated).contains(&high_bit) {
            return Err(format!(
                "bad HighBit (0028,0102): {high_bit} (expected {}..={} for BitsStored {bits_stored}, BitsAllocated {bits_allocated})",
                bits_stored - 1,
                bits_allocated - 1
            ));
        }
        Ok(PixelModule {
            samples_per_pixel,
            bits_allocated,
            bits_stored,
            high_bit,
        })
    }
}

/// Sizes from the header must fit the Pixel Data that is really there, before anything sized
/// by them is allocated; why they do not otherwise.
fn check_pixel_extent(
    pixel_data: Option<PixelExtent>,
    rows: u32,
    cols: u32,
    n_frames: u32,
    px: &PixelModule,
) -> Result<(), String> {
    let (samples_per_pixel, bits_allocated) = (px.samples_per_pixel, px.bits_allocated);
    let frame_bits =
        u64::from(rows) * u64::from(cols) * samples_per_pixel as u64 * bits_allocated as u64;
    let frame_bytes = frame_bits.div_ceil(8);
    let total = frame_bytes.saturating_mul(u64::from(n_frames));
    match pixel_data {
        None => Err("no Pixel Data (7FE0,0010) although Rows and Columns are set".into()),
        Some(PixelExtent::Native { len }) => {
            if total > len {
                return Err(format!(
                    "Pixel Data (7FE0,0010) holds {len} bytes, but NumberOfFrames {n_frames} × Rows {rows} × Columns {cols} × SamplesPerPixel {samples_per_pixel} × BitsAllocated {bits_allocated} / 8 needs {total}"
                ));
            }
            Ok(())
        }
        Some(PixelExtent::Encapsulated { items, bytes }) => {
            // Item 1 is the Basic Offset Table; every frame has at least one fragment.
            let fragments = items.saturating_sub(1) as u64;
            if u64::from(n_frames) > fragments {
                return Err(format!(
                    "NumberOfFrames (0028,0008) is {n_frames} but the encapsulated Pixel Data has {fragments} fragment(s)"
                ));
            }
            if total > EXPANSION_FLOOR.max(bytes.saturating_mul(MAX_EXPANSION)) {
                return Err(format!(
                    "NumberOfFrames {n_frames} × Rows {rows} × Columns {cols} × SamplesPerPixel {samples_per_pixel} would decode to {} MiB from {bytes} bytes of compressed data (more than {MAX_EXPANSION}× expansion)",
                    total >> 20
                ));
            }
            Ok(())
        }
    }
}

/// Position, orientation, spacing and rescale of every frame: the top level, overridden by
/// the shared functional groups, then by each frame's own.
fn frame_infos(ds: &InMemDicomObject, n_frames: u32) -> Vec<FrameInfo> {
    let mut base = FrameInfo {
        ipp: get_floats::<3>(ds, tags::IMAGE_POSITION_PATIENT),
        iop: get_floats::<6>(ds, tags::IMAGE_ORIENTATION_PATIENT),
        spacing: get_floats::<2>(ds, tags::PIXEL_SPACING),
        slope: get_number(ds, tags::RESCALE_SLOPE),
        intercept: get_number(ds, tags::RESCALE_INTERCEPT),
    };
    if let Some(shared) = first_item(ds, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE) {
        frame_from_group(shared, &mut base);
    }
    let per_frame = ds
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items());
    match per_frame {
        Some(items) => (0..n_frames as usize)
            .map(|i| {
                let mut f = base.clone();
                if let Some(item) = items.get(i) {
                    frame_from_group(item, &mut f);
                }
                f
            })
            .collect(),
        None => vec![base; n_frames as usize],
    }
}

/// A readable name for the SOP classes met in CT exports.
pub(crate) fn sop_class_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.3.10" => "Media Storage Directory (DICOMDIR)",
        "1.2.840.10008.5.1.4.1.1.2" => "CT Image",
        "1.2.840.10008.5.1.4.1.1.2.1" => "Enhanced CT Image",
        "1.2.840.10008.5.1.4.1.1.7" => "Secondary Capture",
        "1.2.840.10008.5.1.4.1.1.88.11" => "Basic Text SR",
        "1.2.840.10008.5.1.4.1.1.88.22" => "Enhanced SR",
        "1.2.840.10008.5.1.4.1.1.88.33" => "Comprehensive SR",
        "1.2.840.10008.5.1.4.1.1.88.67" => "X-Ray Radiation Dose SR",
        "1.2.840.10008.5.1.4.1.1.481.3" => "RT Structure Set",
        "1.2.840.10008.5.1.4.1.1.66.4" => "Segmentation",
        "1.2.840.10008.5.1.4.1.1.11.1" => "Grayscale Softcopy Presentation State",
        _ => "SOP class without pixel data",
    }
}
