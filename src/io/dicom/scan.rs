//! Finding files (folder, zip, single file) and reading their headers only.

use super::DicomError;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
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
    pub ipp: Option<[f64; 3]>,
    pub iop: Option<[f64; 6]>,
    /// PixelSpacing: [between rows, between columns] in mm.
    pub spacing: Option<[f64; 2]>,
    pub slope: f64,
    pub intercept: f64,
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
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    pub n_frames: u32,
    /// One entry per frame (length `n_frames`).
    pub frames: Vec<FrameInfo>,
}

/// Why a file was not used.
#[derive(Clone, Debug)]
pub(crate) enum SkipKind {
    /// Not DICOM, or unreadable (named in a warning).
    NotDicom,
    /// A DICOM object without an image (DICOMDIR, SR, RT structure set, …).
    NoImage,
}

#[derive(Clone, Debug)]
pub(crate) struct Skipped {
    pub path: PathBuf,
    pub kind: SkipKind,
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
        let mut bytes = Vec::with_capacity(entry.size() as usize);
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
    let not_dicom = |reason: String| Skipped {
        path: path.clone(),
        kind: SkipKind::NotDicom,
        reason,
    };
    let (obj, has_meta) = open_object(&src, true).map_err(not_dicom)?;
    header_from_object(src, &obj, has_meta)
}

/// Open a file as a DICOM object: with its meta group (preamble optional), or, failing
/// that, as a bare data set in implicit or explicit VR little endian (older exports).
/// `header_only` stops before the pixel data.
pub(crate) fn open_object(
    src: &FileSource,
    header_only: bool,
) -> Result<(DefaultDicomObject, bool), String> {
    let opts = || {
        let o = OpenFileOptions::new();
        if header_only {
            o.read_until(tags::PIXEL_DATA)
        } else {
            o
        }
    };
    let with_meta = match src {
        FileSource::Disk(p) => opts().open_file(p),
        FileSource::Memory { bytes, .. } => {
            let b: &[u8] = bytes;
            let body = if b.len() >= 132 && &b[128..132] == b"DICM" {
                &b[128..]
            } else {
                b
            };
            opts().read_preamble(ReadPreamble::Never).from_reader(body)
        }
    };
    match with_meta {
        Ok(obj) => Ok((obj, true)),
        Err(e) => {
            let first = e.to_string();
            match open_without_meta(src) {
                Some(Ok(obj)) => Ok((obj, false)),
                Some(Err(e2)) => Err(format!("not readable as DICOM ({first}; {e2})")),
                None => Err(format!("not DICOM ({first})")),
            }
        }
    }
}

/// Files with no preamble and no meta group start directly with a group 0x0008 element.
fn open_without_meta(src: &FileSource) -> Option<Result<DefaultDicomObject, String>> {
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };
    let bytes: Vec<u8> = match src {
        FileSource::Disk(p) => {
            let mut head = [0u8; 8];
            let mut f = std::fs::File::open(p).ok()?;
            f.read_exact(&mut head).ok()?;
            if !looks_like_bare_dataset(&head) {
                return None;
            }
            std::fs::read(p).ok()?
        }
        FileSource::Memory { bytes, .. } => {
            if bytes.len() < 8 || !looks_like_bare_dataset(&bytes[..8]) {
                return None;
            }
            bytes.to_vec()
        }
    };
    let explicit = bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase();
    let ts = if explicit {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let ds = match InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts) {
        Ok(ds) => ds,
        Err(e) => return Some(Err(e.to_string())),
    };
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
    Some(ds.with_meta(meta).map_err(|e| e.to_string()))
}

fn looks_like_bare_dataset(head: &[u8]) -> bool {
    // Group 0x0008 (or 0x0002 written without preamble) little endian, small element number.
    (head[0] == 0x08 || head[0] == 0x02) && head[1] == 0x00 && head[3] == 0x00
}

pub(crate) fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let s = clean(&e.to_str().ok()?);
    (!s.is_empty()).then_some(s)
}

fn get_int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.element_opt(tag).ok().flatten()?.to_int::<i64>().ok()
}

fn get_f64(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.element_opt(tag).ok().flatten()?.to_float64().ok()
}

fn get_floats<const N: usize>(obj: &InMemDicomObject, tag: Tag) -> Option<[f64; N]> {
    let v = obj
        .element_opt(tag)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()?;
    (v.len() == N && v.iter().all(|x| x.is_finite())).then(|| std::array::from_fn(|i| v[i]))
}

/// The first item of a sequence, if any.
fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok().flatten()?.items()?.first()
}

/// Frame geometry/rescale from one functional-group item (shared or per-frame).
fn frame_from_group(group: &InMemDicomObject, f: &mut FrameInfo) {
    if let Some(pos) = first_item(group, tags::PLANE_POSITION_SEQUENCE) {
        if let Some(v) = get_floats::<3>(pos, tags::IMAGE_POSITION_PATIENT) {
            f.ipp = Some(v);
        }
    }
    if let Some(ori) = first_item(group, tags::PLANE_ORIENTATION_SEQUENCE) {
        if let Some(v) = get_floats::<6>(ori, tags::IMAGE_ORIENTATION_PATIENT) {
            f.iop = Some(v);
        }
    }
    if let Some(m) = first_item(group, tags::PIXEL_MEASURES_SEQUENCE) {
        if let Some(v) = get_floats::<2>(m, tags::PIXEL_SPACING) {
            f.spacing = Some(v);
        }
    }
    if let Some(t) = first_item(group, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
        if let Some(s) = get_f64(t, tags::RESCALE_SLOPE) {
            f.slope = s;
        }
        if let Some(i) = get_f64(t, tags::RESCALE_INTERCEPT) {
            f.intercept = i;
        }
    }
}

pub(crate) fn header_from_object(
    src: FileSource,
    obj: &DefaultDicomObject,
    has_meta: bool,
) -> Result<FileHeader, Skipped> {
    let path = src.display_path().to_path_buf();
    let ds: &InMemDicomObject = obj;
    let sop_class_uid = get_str(ds, tags::SOP_CLASS_UID);
    let rows = get_int(ds, tags::ROWS);
    let cols = get_int(ds, tags::COLUMNS);
    let (rows, cols) = match (rows, cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => (r as u32, c as u32),
        _ => {
            let what = sop_class_uid
                .as_deref()
                .map(|u| format!("{}, {u}", sop_class_name(u)))
                .unwrap_or_else(|| "no SOP class".into());
            return Err(Skipped {
                path,
                kind: SkipKind::NoImage,
                reason: format!("DICOM without an image ({what})"),
            });
        }
    };
    let series_uid = get_str(ds, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let n_frames = get_int(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as u32;

    let mut base = FrameInfo {
        ipp: get_floats::<3>(ds, tags::IMAGE_POSITION_PATIENT),
        iop: get_floats::<6>(ds, tags::IMAGE_ORIENTATION_PATIENT),
        spacing: get_floats::<2>(ds, tags::PIXEL_SPACING),
        slope: get_f64(ds, tags::RESCALE_SLOPE).unwrap_or(1.0),
        intercept: get_f64(ds, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
    };
    if let Some(shared) = first_item(ds, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE) {
        frame_from_group(shared, &mut base);
    }
    let per_frame = ds
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items());
    let frames: Vec<FrameInfo> = match per_frame {
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
    };

    let bits_allocated = get_int(ds, tags::BITS_ALLOCATED).unwrap_or(16) as u16;
    Ok(FileHeader {
        transfer_syntax: clean(obj.meta().transfer_syntax()),
        has_meta,
        series_uid,
        series_description: get_str(ds, tags::SERIES_DESCRIPTION),
        series_number: get_int(ds, tags::SERIES_NUMBER).map(|v| v as i32),
        modality: get_str(ds, tags::MODALITY),
        image_type: ds
            .element_opt(tags::IMAGE_TYPE)
            .ok()
            .flatten()
            .and_then(|e| {
                e.to_multi_str()
                    .ok()
                    .map(|v| v.iter().map(|s| clean(s)).collect())
            })
            .unwrap_or_default(),
        rows,
        cols,
        samples_per_pixel: get_int(ds, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        bits_allocated,
        bits_stored: get_int(ds, tags::BITS_STORED).unwrap_or(bits_allocated as i64) as u16,
        high_bit: get_int(ds, tags::HIGH_BIT).unwrap_or(bits_allocated as i64 - 1) as u16,
        signed: get_int(ds, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1,
        n_frames,
        frames,
        source: src,
    })
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
