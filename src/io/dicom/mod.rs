//! DICOM series reading: scan, group by SeriesInstanceUID, choose, sort by position on the
//! slice normal, validate, rescale to HU, and build the RAS affine (as dcm2niix does).
//!
//! INPUT is a folder (scanned recursively), a single multi-frame file, or a `.zip` of a
//! folder. Headers are read without pixel data; only the chosen series is decoded, in
//! parallel.
//!
//! # Voxel order and affine
//! `i` = column, `j` = row (as in the DICOM image), `k` = slice, sorted ascending along the
//! slice normal `n = row direction × column direction` (the cross product of the two
//! ImageOrientationPatient vectors), never by InstanceNumber or file name. The affine maps
//! `(i, j, k)` to `IPP₀ + i·Δc·row + j·Δr·col + k·Δs·n` in LPS and then negates x and y for
//! RAS, the convention dcm2niix uses.
//!
//! # Slice spacing policy
//! ```text
//! Slice spacing is the distance between neighbouring slices along the slice normal.
//! A series is read as is when every spacing is within 1% (or 0.01 mm, whichever is
//! larger) of the median spacing, and every slice lies on the normal through the first
//! slice (in-plane drift at most 0.02 mm + 0.01% of the stack length).
//! - Two slices at the same position (within 0.001 mm): refused. The series probably holds
//!   several acquisitions; pick another with --series.
//! - Missing slices / non-uniform spacing: refused, naming the positions and the expected
//!   spacing. With --allow-gaps the slices are kept as they are (none inserted, none
//!   dropped) and the affine uses the median spacing; a warning states the largest
//!   distance by which a slice then sits from its true position.
//! - Gantry tilt (positions drift in-plane from slice to slice): refused, naming the tilt
//!   angle. With --allow-tilt the volume is not resampled: the affine's slice axis follows
//!   the actual positions (a sheared affine), so every voxel keeps its true position;
//!   tools that ignore shear (most viewers use the qform) may show it untilted.
//! ```

mod codec;
mod pixel;
mod scan;
mod series;
mod walk;

use super::ReadOptions;
use crate::volume::{DicomSource, Provenance, SeriesReference, Source, SourceSlice, Volume};
use scan::{FileHeader, SkipKind, Skipped};
use serde::Serialize;
use series::Geometry;
use std::path::{Path, PathBuf};

pub use pixel_api::*;

/// Errors while reading DICOM input. All are problems with the input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Zip { path: PathBuf, message: String },
    #[error("{path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path}: is a single-frame DICOM file (one slice, not a volume); pass the folder that holds the whole series instead, e.g. {folder}")]
    SingleFrameFile { path: PathBuf, folder: PathBuf },
    #[error("{path}: no DICOM images found{detail}")]
    NoImages { path: PathBuf, detail: String },
    #[error("{path}: no series with id {series}; series found: {available}")]
    SeriesNotFound {
        path: PathBuf,
        series: String,
        available: String,
    },
    #[error("{path}: no CT series forms a volume. {detail}. Pass --series UID to read one of them anyway")]
    NoVolume { path: PathBuf, detail: String },
    #[error("series {series}: it is not a volume: {detail}")]
    NotAVolume { series: String, detail: String },
    #[error("series {series}: slices have different image sizes: {detail}")]
    MixedSizes { series: String, detail: String },
    #[error(
        "series {series}: slices have different orientations (ImageOrientationPatient): {detail}"
    )]
    MixedOrientation { series: String, detail: String },
    #[error("series {series}: slices have different PixelSpacing: {detail}")]
    MixedSpacing { series: String, detail: String },
    #[error("{path}{}: missing {tag}", frame.map(|f| format!(" frame {}", f + 1)).unwrap_or_default())]
    MissingTag {
        path: PathBuf,
        tag: &'static str,
        frame: Option<u32>,
    },
    #[error("{path}: bad {tag}: {detail}")]
    BadValue {
        path: PathBuf,
        tag: &'static str,
        detail: String,
    },
    #[error("series {series}: two slices at the same position {position}: {files}. The series may hold several acquisitions or phases; pick a single-acquisition series with --series")]
    DuplicatePositions {
        series: String,
        position: String,
        /// The two files (and frames) at that position.
        files: String,
    },
    #[error("series {series}: {detail}. Pass --allow-gaps to read it anyway (slices are kept as they are and the affine uses the median spacing)")]
    Gaps { series: String, detail: String },
    #[error("series {series}: {detail}. Pass --allow-tilt to read it anyway (no resampling; the affine follows the tilted slice positions)")]
    Tilt { series: String, detail: String },
    #[error("{path}: {detail}. The file belongs to series {series}, which cannot be read without it (no slice is dropped silently); repair or remove the file, or pick another series with --series")]
    BrokenMember {
        path: PathBuf,
        series: String,
        detail: String,
    },
    #[error("{path}: cannot decode pixel data: {detail}")]
    UnsupportedSyntax {
        path: PathBuf,
        /// Transfer syntax UID; `detail` names it too.
        uid: String,
        detail: String,
    },
    #[error("{path}: cannot decode pixel data ({syntax}): {detail}")]
    Decode {
        path: PathBuf,
        syntax: String,
        detail: String,
    },
    #[error("{path}: unsupported pixel data: {detail}")]
    UnsupportedPixels { path: PathBuf, detail: String },
    #[error("volume: {0}")]
    Volume(#[from] crate::volume::VolumeError),
}

impl DicomError {
    pub fn is_input_error(&self) -> bool {
        true
    }
}

impl crate::error::Classify for DicomError {
    fn is_input_error(&self) -> bool {
        DicomError::is_input_error(self)
    }
}

/// What a scan of an input found. Serialised as the `inspect --json` object.
#[derive(Clone, Debug, Serialize)]
pub struct ScanReport {
    pub input: PathBuf,
    /// Files looked at (including skipped ones).
    pub files_found: usize,
    /// Every series, largest first.
    pub series: Vec<SeriesInfo>,
    /// UID of the series that would be read, if any.
    pub chosen: Option<String>,
    /// Why it was chosen, or why none could be.
    pub choice: String,
    pub skipped_files: Vec<SkippedFile>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeriesInfo {
    pub uid: String,
    pub number: Option<i32>,
    pub description: Option<String>,
    pub modality: Option<String>,
    pub image_type: Vec<String>,
    pub files: usize,
    /// Slices (frames of all files).
    pub slices: usize,
    pub rows: u32,
    pub columns: u32,
    /// PixelSpacing as [between rows, between columns] (mm).
    pub pixel_spacing: Option<[f64; 2]>,
    /// Spacing along the slice normal (mm): the mean, or the median when there are gaps.
    pub slice_spacing: Option<f64>,
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub status: SeriesStatus,
    /// Why this series was chosen, or skipped, or what must be overridden to read it.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeriesStatus {
    Chosen,
    /// Forms a volume but another was preferred.
    Candidate,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// A scanned DICOM input: the files' headers, the series and the choice. Open with
/// [`DicomInput::open`], look at [`DicomInput::report`], then [`DicomInput::read`].
pub struct DicomInput {
    input: PathBuf,
    opts: ReadOptions,
    headers: Vec<FileHeader>,
    groups: Vec<Group>,
    chosen: Result<usize, DicomError>,
    report: ScanReport,
}

struct Group {
    uid: String,
    members: Vec<usize>,
    geometry: Result<Geometry, DicomError>,
}

/// Read one DICOM series (folder, multi-frame file or zip) into a `Volume`.
pub fn read_dicom(path: &Path, opts: &ReadOptions) -> Result<Volume, DicomError> {
    DicomInput::open(path, opts)?.read()
}

/// Scan an input (headers only) and say which series would be read and why.
pub fn scan(path: &Path, opts: &ReadOptions) -> Result<ScanReport, DicomError> {
    Ok(DicomInput::open(path, opts)?.report)
}

impl DicomInput {
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<DicomInput, DicomError> {
        let sources = scan::list_sources(path)?;
        let single_file =
            sources.len() == 1 && matches!(&sources[0], scan::FileSource::Disk(p) if p == path);
        let files_found = sources.len();
        let (headers, skipped) = scan::read_headers(sources);
        if single_file {
            check_single_file(path, &headers, &skipped)?;
        }
        let skipped_files: Vec<SkippedFile> = skipped
            .iter()
            .map(|s| SkippedFile {
                path: s.path.clone(),
                reason: s.reason.clone(),
            })
            .collect();
        let mut warnings = skip_warnings(&skipped);
        if headers.is_empty() {
            let detail = if skipped.is_empty() {
                " (the folder is empty)".to_string()
            } else {
                format!(
                    ": {}; first reason: {}: {}",
                    warnings.join("; "),
                    skipped[0].path.display(),
                    skipped[0].reason
                )
            };
            return Err(DicomError::NoImages {
                path: path.to_path_buf(),
                detail,
            });
        }
        if headers.iter().any(|h| !h.has_meta) {
            let n = headers.iter().filter(|h| !h.has_meta).count();
            warnings.push(format!(
                "{n} file(s) have no DICOM file meta header; read as bare little-endian data sets"
            ));
        }
        let groups = group_series(&headers);
        let mut infos: Vec<SeriesInfo> = groups.iter().map(|g| series_info(&headers, g)).collect();
        let chosen = choose(path, opts, &headers, &groups, &mut infos)
            .and_then(|i| check_members_read(&groups[i], &skipped).map(|()| i));
        let choice = match &chosen {
            Ok(i) => infos[*i].reason.clone(),
            Err(e) => e.to_string(),
        };
        if let Ok(i) = chosen {
            warnings.extend(chosen_series_warnings(&groups[i], &headers, opts));
        }
        let report = ScanReport {
            input: path.to_path_buf(),
            files_found,
            chosen: chosen.as_ref().ok().map(|&i| groups[i].uid.clone()),
            choice,
            series: infos,
            skipped_files,
            warnings,
        };
        Ok(DicomInput {
            input: path.to_path_buf(),
            opts: opts.clone(),
            headers,
            groups,
            chosen,
            report,
        })
    }

    pub fn report(&self) -> &ScanReport {
        &self.report
    }

    /// Decode the chosen series into a `Volume`.
    pub fn read(mut self) -> Result<Volume, DicomError> {
        let gi = self.chosen?;
        let placeholder = Err(DicomError::NotAVolume {
            series: String::new(),
            detail: String::new(),
        });
        let geom = std::mem::replace(&mut self.groups[gi].geometry, placeholder)?;
        let geom = &geom;
        let group = &self.groups[gi];
        if let Some(g) = &geom.gaps {
            if !self.opts.allow_gaps {
                return Err(DicomError::Gaps {
                    series: group.uid.clone(),
                    detail: g.describe(),
                });
            }
        }
        if let Some(t) = &geom.tilt {
            if !self.opts.allow_tilt {
                return Err(DicomError::Tilt {
                    series: group.uid.clone(),
                    detail: t.describe(),
                });
            }
        }
        let (data, stored_type, integral_i16) = pixel::decode_stack(&self.headers, geom)?;
        let first = &self.headers[geom.slices[0].file];
        let mut files: Vec<PathBuf> = Vec::new();
        for s in &geom.slices {
            let p = self.headers[s.file].source.display_path();
            if files.last().map(|l| l.as_path()) != Some(p) {
                files.push(p.to_path_buf());
            }
        }
        let source = DicomSource {
            input: self.input.clone(),
            series_instance_uid: group.uid.clone(),
            series_description: first.series_description.clone(),
            modality: first.modality.clone(),
            files,
            transfer_syntax: first.transfer_syntax.clone(),
            reference: series_reference(&self.headers, geom),
        };
        let provenance = Provenance {
            source: Source::Dicom(source),
            stored_type,
            integral_i16,
            warnings: self.report.warnings.clone(),
        };
        Ok(Volume::new(data, geom.affine_ras(), provenance)?)
    }
}

/// The chosen series as derived objects reference it (slices in the volume's `k` order).
fn series_reference(headers: &[FileHeader], geom: &Geometry) -> SeriesReference {
    let first = &headers[geom.slices[0].file];
    SeriesReference {
        patient_study: first.patient_study.clone(),
        study_instance_uid: first
            .patient_study
            .iter()
            .find(|a| a.tag == (0x0020, 0x000D))
            .map(|a| a.value.clone()),
        series_instance_uid: (!first.series_uid.is_empty()).then(|| first.series_uid.clone()),
        frame_of_reference_uids: geom
            .slices
            .iter()
            .map(|s| headers[s.file].frame_of_reference_uid.clone())
            .collect(),
        slices: geom
            .slices
            .iter()
            .map(|s| {
                let h = &headers[s.file];
                SourceSlice {
                    sop_class_uid: h.sop_class_uid.clone(),
                    sop_instance_uid: h.sop_instance_uid.clone(),
                    frame_number: (h.n_frames > 1).then_some(s.frame + 1),
                    position: s.ipp,
                }
            })
            .collect(),
        rows: geom.rows,
        columns: geom.cols,
        image_orientation: geom.iop,
        pixel_spacing: geom.pixel_spacing,
        slice_thickness: first.slice_thickness,
        slice_spacing: geom.slice_spacing(),
    }
}

mod pixel_api {
    /// Name of a transfer syntax UID as the DICOM registry spells it.
    pub fn transfer_syntax_name(uid: &str) -> String {
        super::pixel::syntax_name(uid)
    }

    /// Whether this build decodes pixel data in the given transfer syntax; `Err` says why not.
    pub fn transfer_syntax_supported(uid: &str) -> Result<(), String> {
        super::pixel::check_syntax(uid)
    }
}

fn series_number(headers: &[FileHeader], g: &Group) -> i64 {
    headers[g.members[0]]
        .series_number
        .map(i64::from)
        .unwrap_or(i64::MAX)
}

fn skip_warnings(skipped: &[Skipped]) -> Vec<String> {
    let mut out = Vec::new();
    let list = |kind: fn(&SkipKind) -> bool| -> (usize, String) {
        let names: Vec<String> = skipped
            .iter()
            .filter(|s| kind(&s.kind))
            .map(|s| s.path.display().to_string())
            .collect();
        let n = names.len();
        let mut shown = names.into_iter().take(5).collect::<Vec<_>>().join(", ");
        if n > 5 {
            shown.push_str(&format!(" and {} more", n - 5));
        }
        (n, shown)
    };
    let (n, names) = list(|k| matches!(k, SkipKind::NotDicom));
    if n > 0 {
        out.push(format!(
            "skipped {n} file(s) that are not DICOM or not readable: {names}"
        ));
    }
    let (n, names) = list(|k| matches!(k, SkipKind::Broken));
    if n > 0 {
        out.push(format!("skipped {n} damaged DICOM file(s): {names}"));
    }
    let (n, names) = list(|k| matches!(k, SkipKind::NoImage));
    if n > 0 {
        out.push(format!(
            "skipped {n} DICOM file(s) without an image: {names}"
        ));
    }
    out
}

fn series_info(headers: &[FileHeader], g: &Group) -> SeriesInfo {
    let h = &headers[g.members[0]];
    let ts = h.transfer_syntax.clone();
    SeriesInfo {
        uid: g.uid.clone(),
        number: h.series_number,
        description: h.series_description.clone(),
        modality: h.modality.clone(),
        image_type: h.image_type.clone(),
        files: g.members.len(),
        slices: g
            .members
            .iter()
            .map(|&m| headers[m].n_frames as usize)
            .sum(),
        rows: h.rows,
        columns: h.cols,
        pixel_spacing: g.geometry.as_ref().ok().map(|geo| geo.pixel_spacing),
        slice_spacing: g.geometry.as_ref().ok().map(|geo| geo.slice_spacing()),
        transfer_syntax_name: pixel::syntax_name(&ts),
        transfer_syntax: ts,
        status: SeriesStatus::Skipped,
        reason: String::new(),
    }
}

/// A single file given as input must be a readable multi-frame image: one slice is not a
/// volume (its folder may be).
fn check_single_file(
    path: &Path,
    headers: &[FileHeader],
    skipped: &[scan::Skipped],
) -> Result<(), DicomError> {
    if let Some(s) = skipped.first() {
        return Err(DicomError::Unreadable {
            path: path.to_path_buf(),
            detail: s.reason.clone(),
        });
    }
    if headers[0].n_frames <= 1 {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        return Err(DicomError::SingleFrameFile {
            path: path.to_path_buf(),
            folder,
        });
    }
    Ok(())
}

/// The files grouped by SeriesInstanceUID (files in path order within a group), each group
/// with its geometry, sorted by slices (desc), SeriesNumber, UID.
fn group_series(headers: &[FileHeader]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        match groups.iter_mut().find(|g| g.uid == h.series_uid) {
            Some(g) => g.members.push(i),
            None => groups.push(Group {
                uid: h.series_uid.clone(),
                members: vec![i],
                geometry: Err(DicomError::NotAVolume {
                    series: String::new(),
                    detail: String::new(),
                }),
            }),
        }
    }
    for g in &mut groups {
        g.geometry = series::geometry(&g.uid, headers, &g.members);
    }
    let slices = |g: &Group| -> usize {
        g.members
            .iter()
            .map(|&m| headers[m].n_frames as usize)
            .sum()
    };
    groups.sort_by(|a, b| {
        slices(b)
            .cmp(&slices(a))
            .then(series_number(headers, a).cmp(&series_number(headers, b)))
            .then(a.uid.cmp(&b.uid))
    });
    groups
}

/// A file of the chosen series that cannot be read would leave a hole in the volume: never
/// drop it with a warning.
fn check_members_read(group: &Group, skipped: &[scan::Skipped]) -> Result<(), DicomError> {
    let uid = &group.uid;
    match skipped
        .iter()
        .find(|s| !matches!(s.kind, SkipKind::NoImage) && s.series_uid.as_ref() == Some(uid))
    {
        Some(b) => Err(DicomError::BrokenMember {
            path: b.path.clone(),
            series: uid.clone(),
            detail: b.reason.clone(),
        }),
        None => Ok(()),
    }
}

/// Warnings about the chosen series: override flags in use, RescaleSlope 0.
fn chosen_series_warnings(
    group: &Group,
    headers: &[FileHeader],
    opts: &ReadOptions,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Ok(g) = &group.geometry {
        warnings.extend(override_warnings(g, opts));
    }
    let zero: Vec<&Path> = group
        .members
        .iter()
        .map(|&m| &headers[m])
        .filter(|h| h.frames.iter().any(|f| f.zero_slope()))
        .map(|h| h.source.display_path())
        .collect();
    if let Some(first) = zero.first() {
        warnings.push(format!(
            "RescaleSlope (0028,1053) is 0 in {} file(s) (first: {}): read as not rescaled (stored values as they are, intercept ignored), as dcm2niix does; these are not Hounsfield units",
            zero.len(),
            first.display()
        ));
    }
    warnings
}

fn is_localizer(info: &SeriesInfo) -> bool {
    info.image_type
        .iter()
        .any(|t| t.eq_ignore_ascii_case("LOCALIZER"))
}

/// Pick the series to read. Fills `status`/`reason` of every `infos` entry.
fn choose(
    path: &Path,
    opts: &ReadOptions,
    headers: &[FileHeader],
    groups: &[Group],
    infos: &mut [SeriesInfo],
) -> Result<usize, DicomError> {
    explain_series(groups, infos);
    match opts.series.as_deref().map(str::trim) {
        Some(want) => choose_requested(path, want, groups, infos),
        None => choose_largest_ct(path, headers, groups, infos),
    }
}

/// Why each series can or cannot be read as a volume (`reason` of every `infos` entry).
fn explain_series(groups: &[Group], infos: &mut [SeriesInfo]) {
    for (g, info) in groups.iter().zip(infos.iter_mut()) {
        info.reason = match &g.geometry {
            _ if is_localizer(info) => "localizer (ImageType LOCALIZER)".to_string(),
            Err(e) => format!("not a readable volume: {e}"),
            Ok(geo) => {
                let mut r = String::new();
                if let Some(gp) = &geo.gaps {
                    r.push_str(&format!("needs --allow-gaps: {}", gp.describe()));
                }
                if let Some(t) = &geo.tilt {
                    if !r.is_empty() {
                        r.push_str("; ");
                    }
                    r.push_str(&format!("needs --allow-tilt: {}", t.describe()));
                }
                r
            }
        };
    }
}

/// The series `--series` asks for.
fn choose_requested(
    path: &Path,
    want: &str,
    groups: &[Group],
    infos: &mut [SeriesInfo],
) -> Result<usize, DicomError> {
    let Some(i) = groups.iter().position(|g| g.uid == want) else {
        let available = infos
            .iter()
            .map(|s| {
                format!(
                    "{} ({} slices{})",
                    s.uid,
                    s.slices,
                    s.description
                        .as_deref()
                        .map(|d| format!(", \"{d}\""))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        for info in infos.iter_mut() {
            info.reason = format!("not the requested series. {}", info.reason);
        }
        return Err(DicomError::SeriesNotFound {
            path: path.to_path_buf(),
            series: want.to_string(),
            available,
        });
    };
    for (j, info) in infos.iter_mut().enumerate() {
        if j != i {
            info.reason = "not the series requested with --series".to_string();
        }
    }
    let note = std::mem::take(&mut infos[i].reason);
    infos[i].status = SeriesStatus::Chosen;
    infos[i].reason = if note.is_empty() {
        "requested with --series".to_string()
    } else {
        format!("requested with --series ({note})")
    };
    Ok(i)
}

/// The CT series (or without Modality), not a localizer, that forms a valid stack with the
/// most slices.
fn choose_largest_ct(
    path: &Path,
    headers: &[FileHeader],
    groups: &[Group],
    infos: &mut [SeriesInfo],
) -> Result<usize, DicomError> {
    // Candidates: CT (or no Modality), not a localizer, a valid stack of >= 2 slices.
    let mut candidates = Vec::new();
    for (i, (g, info)) in groups.iter().zip(infos.iter_mut()).enumerate() {
        if g.geometry.is_err() || is_localizer(info) {
            continue;
        }
        match info.modality.as_deref() {
            Some(m) if !m.eq_ignore_ascii_case("CT") => {
                info.reason = format!("modality {m}, not CT (pass --series to read it)");
            }
            _ => {
                info.status = SeriesStatus::Candidate;
                candidates.push(i);
            }
        }
    }
    // Groups are sorted by slices (desc), SeriesNumber, UID: the first candidate wins.
    let Some(&best) = candidates.first() else {
        // The largest CT (non-localizer) series is broken: report its own error.
        let broken = groups.iter().zip(infos.iter()).find(|(g, info)| {
            g.geometry.is_err()
                && !is_localizer(info)
                && info
                    .modality
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case("CT"))
        });
        if let Some((g, _)) = broken {
            series::geometry(&g.uid, headers, &g.members)?;
        }
        let detail = infos
            .iter()
            .map(|s| format!("series {} ({} slices): {}", s.uid, s.slices, s.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(DicomError::NoVolume {
            path: path.to_path_buf(),
            detail,
        });
    };
    let n_best = infos[best].slices;
    let mut reason = if candidates.len() == 1 {
        format!("the only CT series that forms a volume ({n_best} slices)")
    } else {
        format!(
            "the CT series with the most slices ({n_best}) of {} that form a volume",
            candidates.len()
        )
    };
    let ties: Vec<&str> = candidates[1..]
        .iter()
        .filter(|&&c| infos[c].slices == n_best)
        .map(|&c| infos[c].uid.as_str())
        .collect();
    if !ties.is_empty() {
        reason.push_str(&format!(
            "; tied with {} on slice count, chosen by lower SeriesNumber then UID (pass --series to pick another)",
            ties.join(", ")
        ));
    }
    let note = std::mem::take(&mut infos[best].reason);
    if !note.is_empty() {
        reason.push_str(&format!("; {note}"));
    }
    for &c in &candidates[1..] {
        infos[c].reason = format!(
            "fewer slices than the chosen series{}",
            if infos[c].reason.is_empty() {
                String::new()
            } else {
                format!("; {}", infos[c].reason)
            }
        );
        if infos[c].slices == n_best {
            infos[c].reason =
                "same slice count as the chosen series, which has the lower SeriesNumber/UID"
                    .into();
        }
    }
    infos[best].status = SeriesStatus::Chosen;
    infos[best].reason = reason;
    Ok(best)
}

/// Warnings for a chosen series read with an override flag.
fn override_warnings(g: &Geometry, opts: &ReadOptions) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(gp), true) = (&g.gaps, opts.allow_gaps) {
        out.push(format!(
            "--allow-gaps: {}; slices kept as they are, the affine uses the median spacing {:.3} mm, so some slices sit up to {:.3} mm from their true position",
            gp.describe(),
            gp.median,
            gp.max_displacement
        ));
    }
    if let (Some(t), true) = (&g.tilt, opts.allow_tilt) {
        out.push(format!(
            "--allow-tilt: {}; not resampled, the affine is sheared to follow the slice positions",
            t.describe()
        ));
    }
    out
}
