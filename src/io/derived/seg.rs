//! DICOM Segmentation (PS3.3 A.51 Segmentation IOD): SegmentationType BINARY, one segment per
//! [`SegmentSpec`] of the request, bit-packed frames on the source series' grid.
//!
//! **Frames.** One frame per (segment, source slice) that holds at least one voxel of that
//! segment; frames without any voxel of their segment are left out (the standard allows it:
//! each frame names its segment, its source image and its position, and readers place frames
//! by position). A segment with no voxel at all — written only when the caller lists it —
//! keeps one all-zero frame on the first slice, so that every SegmentSequence item is
//! referenced by a frame and the object never has zero frames (NumberOfFrames and Pixel Data
//! are Type 1). Frames are ordered by segment number, then by slice position along the slice
//! normal (row × column direction of ImageOrientationPatient).
//!
//! **Dimensions.** ReferencedSegmentNumber (in SegmentIdentificationSequence), then
//! ImagePositionPatient (in PlanePositionSequence); a frame's position index is the rank of
//! its slice, along the normal, among the slices that have a frame. DimensionOrganizationType
//! "3D" (a volume of parallel, evenly spaced planes, one frame per position) is written only
//! where that holds — one segment on evenly spaced slices — and left out (Type 3) otherwise:
//! several segments put several frames at one position.
//!
//! **Pixels.** BitsAllocated 1, frames packed back to back with no padding between them
//! (PS3.5 8.1.1: pixel `n` of the whole Pixel Data is bit `n % 8` of byte `n / 8`), only the
//! end padded to an even length. Packing reads the label volume twice in memory order through a
//! label → segment table (which frames are non-empty, then each voxel's bit set at its frame's
//! offset in the one output buffer): no allocation per frame or per pixel.
//!
//! **References.** Every frame names its source image (SourceImageSequence in
//! DerivationImageSequence, with ReferencedFrameNumber for a multi-frame source) and carries its
//! ImagePositionPatient; ReferencedSeriesSequence lists each source instance once. Patient and
//! study attributes are the source's (SpecificCharacterSet too, unless some text is not ASCII:
//! then UTF-8, as `settle_character_set` says); SeriesInstanceUID, SOPInstanceUID and the dimension
//! organization UID come from [`Uids`].

use super::{
    check_reference, code_item, ds, ds_multi, item, property_type_item, put,
    put_empty_type2_patient_study, put_patient_study, put_seq, settle_character_set,
    srgb_to_dicom_lab, write_part10, Code, DerivedError, DerivedRequest, Uids,
};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::{ArrayView3, Axis, Zip};
use std::path::Path;

/// SOP Class UID of the Segmentation Storage SOP class.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// The object kind in errors and in [`Uids::uid`].
const WHAT: &str = "a DICOM-SEG";
const KIND: &str = "DICOM-SEG";

/// Largest Pixel Data a native (not encapsulated) element can hold: its length is a 32-bit
/// even number below the undefined length 0xFFFFFFFF.
const MAX_PIXEL_DATA_BYTES: u64 = 0xFFFF_FFFE;

/// Write `req` as a DICOM-SEG file at `path` (atomically: on any error no file is left).
///
/// Refused with [`DerivedError::Reference`] when the source cannot be referenced (see
/// [`check_reference`]; also a source without SeriesInstanceUID), with
/// [`DerivedError::Request`] when the labels do not lie on the source grid or the segment list
/// is unusable (empty, label 0, a label twice, a code without value, scheme or meaning).
pub fn write_dicom_seg(path: &Path, req: &DerivedRequest) -> Result<(), DerivedError> {
    let checked = check_reference(req.reference, path, WHAT)?;
    let source_series_uid =
        req.reference
            .series_instance_uid
            .clone()
            .ok_or_else(|| DerivedError::Reference {
                input: path.to_path_buf(),
                what: WHAT,
                detail: "the source series has no SeriesInstanceUID (0020,000E)".into(),
            })?;
    check_request(req)?;
    let layout = FrameLayout::plan(req);
    let pixel_bytes = layout.pixel_data_len(req);
    if pixel_bytes > MAX_PIXEL_DATA_BYTES {
        return Err(DerivedError::Request(format!(
            "a DICOM-SEG of {} frames of {} × {} pixels needs {pixel_bytes} bytes of Pixel Data, \
             more than one native Pixel Data element holds (4 GiB)",
            layout.frames.len(),
            req.reference.rows,
            req.reference.columns
        )));
    }
    let pixel_data = layout.pack(req.labels, pixel_bytes as usize);
    let uids = Uids::of(req);
    let sop_instance_uid = uids.uid(KIND, "instance");
    let obj = Dataset {
        req,
        uids: &uids,
        layout: &layout,
        frame_of_reference_uid: &checked.frame_of_reference_uid,
        study_instance_uid: &checked.study_instance_uid,
        source_series_uid: &source_series_uid,
        sop_instance_uid: &sop_instance_uid,
    }
    .build(pixel_data);
    write_part10(obj, path, SEGMENTATION_STORAGE, &sop_instance_uid)
}

/// The request fits the source grid and the segment list can be written.
fn check_request(req: &DerivedRequest) -> Result<(), DerivedError> {
    let r = req.reference;
    let expected = [r.columns as usize, r.rows as usize, r.slices.len()];
    if req.labels.shape() != expected {
        return Err(DerivedError::Request(format!(
            "the label volume is {:?} voxels but the source series is {} columns × {} rows × {} slices; a DICOM-SEG needs the labels on the source grid",
            req.labels.shape(),
            expected[0],
            expected[1],
            expected[2]
        )));
    }
    if req.segments.is_empty() {
        return Err(DerivedError::Request(
            "no segments to write: a DICOM-SEG needs at least one".into(),
        ));
    }
    if req.segments.len() > usize::from(u16::MAX) {
        return Err(DerivedError::Request(format!(
            "{} segments: SegmentNumber (US) allows at most {}",
            req.segments.len(),
            u16::MAX
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for s in req.segments {
        if s.label == 0 {
            return Err(DerivedError::Request(format!(
                "segment \"{}\" has label 0, the background",
                s.name
            )));
        }
        if !seen.insert(s.label) {
            return Err(DerivedError::Request(format!(
                "label {} is listed twice in the segments to write",
                s.label
            )));
        }
        let codes = [
            ("category", Some(&s.category)),
            ("property type", Some(&s.property_type)),
            ("property type modifier", s.modifier.as_ref()),
        ];
        for (role, code) in codes {
            if let Some(code) = code {
                check_code(code).map_err(|why| {
                    DerivedError::Request(format!(
                        "segment \"{}\" (label {}): {role} code {}: {why}",
                        s.name,
                        s.label,
                        code_text(code)
                    ))
                })?;
            }
        }
    }
    Ok(())
}

/// A code the Code Sequence Macro can carry: CodeValue and CodingSchemeDesignator are SH (at
/// most 16 characters), CodeMeaning LO (64), all three Type 1.
fn check_code(c: &Code) -> Result<(), String> {
    for (name, v, max) in [
        ("CodeValue", &c.value, 16),
        ("CodingSchemeDesignator", &c.scheme, 16),
        ("CodeMeaning", &c.meaning, 64),
    ] {
        if v.trim().is_empty() {
            return Err(format!("{name} is empty"));
        }
        if v.chars().count() > max {
            return Err(format!("{name} is longer than {max} characters"));
        }
        if v.contains('\\') || v.chars().any(char::is_control) {
            return Err(format!("{name} holds a backslash or a control character"));
        }
    }
    Ok(())
}

fn code_text(c: &Code) -> String {
    format!("({}, {}, \"{}\")", c.scheme, c.value, c.meaning)
}

/// Marks a (segment, slice) without a frame in [`FrameLayout::frame_of`].
const NO_FRAME: u32 = u32::MAX;

/// Which frames the object holds and where each one's bits go.
#[derive(Debug)]
struct FrameLayout {
    /// The frames in Pixel Data order: (segment index into `req.segments`, source slice `k`).
    frames: Vec<(usize, usize)>,
    /// Frame index of (segment `s`, slice `k`) at `s * n_slices + k`, or [`NO_FRAME`].
    frame_of: Vec<u32>,
    n_slices: usize,
    /// Label value → segment index + 1; 0 for labels not written.
    segment_of_label: Vec<u16>,
    /// 1-based rank along the normal of each slice that has a frame (0 where none).
    position_index: Vec<u32>,
    /// Whether DimensionOrganizationType "3D" holds.
    three_d: bool,
}

impl FrameLayout {
    fn plan(req: &DerivedRequest) -> FrameLayout {
        let n_slices = req.reference.slices.len();
        let n_segments = req.segments.len();
        let mut segment_of_label = vec![0u16; usize::from(u16::MAX) + 1];
        for (s, spec) in req.segments.iter().enumerate() {
            // check_request: at most u16::MAX segments, so s + 1 fits.
            segment_of_label[usize::from(spec.label)] = (s + 1) as u16;
        }
        let mut occupied = vec![false; n_segments * n_slices];
        for_each_labelled(req.labels, &segment_of_label, |s, _, k| {
            occupied[s * n_slices + k] = true;
        });

        let distance = slice_distances(req.reference);
        let mut order: Vec<usize> = (0..n_slices).collect();
        order.sort_by(|&a, &b| distance[a].total_cmp(&distance[b]));

        let mut frames = Vec::new();
        let mut frame_of = vec![NO_FRAME; n_segments * n_slices];
        for s in 0..n_segments {
            let first = frames.len();
            for &k in &order {
                if occupied[s * n_slices + k] {
                    frame_of[s * n_slices + k] = frames.len() as u32;
                    frames.push((s, k));
                }
            }
            if frames.len() == first {
                // An empty segment the caller asked for: one all-zero frame.
                frame_of[s * n_slices + order[0]] = frames.len() as u32;
                frames.push((s, order[0]));
            }
        }

        let mut has_frame = vec![false; n_slices];
        frames.iter().for_each(|&(_, k)| has_frame[k] = true);
        let mut position_index = vec![0u32; n_slices];
        let mut rank = 0;
        let mut used = Vec::new();
        for &k in &order {
            if has_frame[k] {
                rank += 1;
                position_index[k] = rank;
                used.push(distance[k]);
            }
        }
        let three_d = n_segments == 1 && evenly_spaced(&used);
        FrameLayout {
            frames,
            frame_of,
            n_slices,
            segment_of_label,
            position_index,
            three_d,
        }
    }

    /// Bytes of Pixel Data: every frame's bits back to back, padded to an even length.
    fn pixel_data_len(&self, req: &DerivedRequest) -> u64 {
        let bits = self.frames.len() as u64
            * u64::from(req.reference.rows)
            * u64::from(req.reference.columns);
        let bytes = bits.div_ceil(8);
        bytes + bytes % 2
    }

    /// The Pixel Data: bit `f * rows * columns + r * columns + c` is set where frame `f`'s
    /// segment covers row `r`, column `c` of its slice.
    fn pack(&self, labels: ArrayView3<u16>, len: usize) -> Vec<u8> {
        let frame_bits = labels.shape()[0] * labels.shape()[1];
        let mut out = vec![0u8; len];
        for_each_labelled(labels, &self.segment_of_label, |s, pixel, k| {
            let f = self.frame_of[s * self.n_slices + k];
            debug_assert_ne!(f, NO_FRAME, "every labelled (segment, slice) has a frame");
            let bit = f as usize * frame_bits + pixel;
            out[bit >> 3] |= 1 << (bit & 7);
        });
        out
    }
}

/// Calls `f(segment index, pixel, slice)` for every voxel whose label is written, where
/// `pixel` = row × columns + column is the voxel's place in its frame. Visits voxels in memory
/// order: slice by slice for the column-fastest (Fortran) layout the readers and the pipeline
/// make, where each slice is a frame's pixels in order; `Zip`'s order otherwise.
fn for_each_labelled(
    labels: ArrayView3<u16>,
    segment_of_label: &[u16],
    mut f: impl FnMut(usize, usize, usize),
) {
    let columns = labels.shape()[0];
    let mut visit = |pixel: usize, k: usize, v: u16| {
        let s = segment_of_label[usize::from(v)];
        if s != 0 {
            f(usize::from(s) - 1, pixel, k);
        }
    };
    if labels.t().is_standard_layout() {
        for (k, plane) in labels.axis_iter(Axis(2)).enumerate() {
            // [column, row] with columns fastest: transposed, a row-major [row, column] slice.
            let plane = plane.reversed_axes();
            match plane.as_slice() {
                Some(pixels) => pixels
                    .iter()
                    .enumerate()
                    .for_each(|(pixel, &v)| visit(pixel, k, v)),
                None => plane
                    .indexed_iter()
                    .for_each(|((r, c), &v)| visit(r * columns + c, k, v)),
            }
        }
    } else {
        Zip::indexed(labels).for_each(|(c, r, k), &v| visit(r * columns + c, k, v));
    }
}

/// Each slice's position along the normal (row × column direction cosines), in mm.
fn slice_distances(reference: &crate::volume::SeriesReference) -> Vec<f64> {
    let o = reference.image_orientation;
    let n = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    reference
        .slices
        .iter()
        .map(|s| s.position[0] * n[0] + s.position[1] * n[1] + s.position[2] * n[2])
        .collect()
}

/// At least two positions (ascending), all steps equal and positive (to 0.1 % of the step or
/// 1 µm).
fn evenly_spaced(d: &[f64]) -> bool {
    if d.len() < 2 {
        return false;
    }
    let step = d[1] - d[0];
    step > 0.0
        && d.windows(2)
            .all(|w| ((w[1] - w[0]) - step).abs() <= (1e-3 * step).max(1e-3))
}

/// A LO value: at most 64 characters, no backslash (the value separator), no control
/// characters.
fn lo(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\\' || c.is_control() { ' ' } else { c })
        .take(64)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Everything the dataset is built from.
struct Dataset<'a, 'r> {
    req: &'a DerivedRequest<'r>,
    uids: &'a Uids,
    layout: &'a FrameLayout,
    frame_of_reference_uid: &'a str,
    study_instance_uid: &'a str,
    source_series_uid: &'a str,
    sop_instance_uid: &'a str,
}

/// (DCM, 113076, "Segmentation"): DerivationCodeSequence of a segmentation frame (CID 7203).
fn segmentation_derivation() -> Code {
    Code::new("DCM", "113076", "Segmentation")
}

/// (DCM, 121322, "Source image for image processing operation"): PurposeOfReferenceCodeSequence
/// of a frame's source image (CID 7202).
fn source_image_purpose() -> Code {
    Code::new(
        "DCM",
        "121322",
        "Source image for image processing operation",
    )
}

/// (DCM, 123110, "Artificial Intelligence"): AlgorithmFamilyCodeSequence (CID 7162).
fn artificial_intelligence() -> Code {
    Code::new("DCM", "123110", "Artificial Intelligence")
}

impl Dataset<'_, '_> {
    fn build(&self, pixel_data: Vec<u8>) -> InMemDicomObject {
        let req = self.req;
        let r = req.reference;
        let date = req.created.date();
        let time = req.created.time();
        let mut o = InMemDicomObject::new_empty();

        // Patient, General Study, Patient Study: the source's (SpecificCharacterSet with them).
        put_patient_study(&mut o, r);
        put_empty_type2_patient_study(&mut o);
        put(
            &mut o,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            self.study_instance_uid,
        );

        // SOP Common.
        put(&mut o, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
        put(
            &mut o,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            self.sop_instance_uid,
        );
        put(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str());
        put(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str());

        // General Series, Segmentation Series.
        put(&mut o, tags::MODALITY, VR::CS, "SEG");
        let series_uid = self.uids.uid(KIND, "series");
        put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
        put(
            &mut o,
            tags::SERIES_NUMBER,
            VR::IS,
            req.series_number.to_string(),
        );
        put(&mut o, tags::SERIES_DATE, VR::DA, date.as_str());
        put(&mut o, tags::SERIES_TIME, VR::TM, time.as_str());
        put(
            &mut o,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            lo(&req.series_description),
        );

        // Frame of Reference.
        put(
            &mut o,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            self.frame_of_reference_uid,
        );
        put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");

        // General Equipment, Enhanced General Equipment.
        let p = req.producer;
        let or = |s: &str, fallback: &str| {
            let s = lo(s);
            if s.is_empty() {
                fallback.to_string()
            } else {
                s
            }
        };
        let manufacturer = or(&p.manufacturer, "sdseg-volume");
        put(&mut o, tags::MANUFACTURER, VR::LO, manufacturer.as_str());
        put(
            &mut o,
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            manufacturer.as_str(),
        );
        // The "device" is the model: its weights' hash tells one from another.
        put(
            &mut o,
            tags::DEVICE_SERIAL_NUMBER,
            VR::LO,
            or(&p.algorithm_version, "unknown"),
        );
        put(
            &mut o,
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            or(&p.software_version, "unknown"),
        );

        // General Image, Segmentation Image, Image Pixel.
        put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
        put(
            &mut o,
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["DERIVED", "PRIMARY"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        );
        put(&mut o, tags::CONTENT_DATE, VR::DA, date.as_str());
        put(&mut o, tags::CONTENT_TIME, VR::TM, time.as_str());
        put(&mut o, tags::CONTENT_LABEL, VR::CS, "SEGMENTATION");
        put(
            &mut o,
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            lo(&req.series_description),
        );
        // The creator is an algorithm, named in each segment's SegmentAlgorithmName.
        put(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "");
        put(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
        // One label per voxel: segments never overlap.
        put(&mut o, tags::SEGMENTS_OVERLAP, VR::CS, "NO");
        put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
        put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
        put(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put(&mut o, tags::ROWS, VR::US, r.rows as u16);
        put(&mut o, tags::COLUMNS, VR::US, r.columns as u16);
        put(&mut o, tags::BITS_ALLOCATED, VR::US, 1u16);
        put(&mut o, tags::BITS_STORED, VR::US, 1u16);
        put(&mut o, tags::HIGH_BIT, VR::US, 0u16);
        put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
        put_seq(&mut o, tags::SEGMENT_SEQUENCE, self.segments());

        // Multi-frame Functional Groups, Multi-frame Dimension.
        put(
            &mut o,
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            self.layout.frames.len().to_string(),
        );
        put_seq(
            &mut o,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![self.shared_groups()],
        );
        let per_frame = (0..self.layout.frames.len())
            .map(|f| self.frame_groups(f))
            .collect();
        put_seq(
            &mut o,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            per_frame,
        );
        self.put_dimensions(&mut o);

        // Common Instance Reference.
        put_seq(
            &mut o,
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![self.referenced_series()],
        );

        settle_character_set(&mut o);
        put(&mut o, tags::PIXEL_DATA, VR::OB, pixel_data);
        o
    }

    /// SegmentSequence: one item per requested segment, SegmentNumber 1, 2, … in order.
    fn segments(&self) -> Vec<InMemDicomObject> {
        let p = self.req.producer;
        let algorithm = {
            let a = lo(&p.algorithm_name);
            if a.is_empty() {
                lo(&p.manufacturer)
            } else {
                a
            }
        };
        let algorithm = if algorithm.is_empty() {
            "sdseg-volume".to_string()
        } else {
            algorithm
        };
        let version = {
            let v = lo(&p.algorithm_version);
            if v.is_empty() {
                lo(&p.software_version)
            } else {
                v
            }
        };
        self.req
            .segments
            .iter()
            .enumerate()
            .map(|(s, spec)| {
                item(|o| {
                    put(o, tags::SEGMENT_NUMBER, VR::US, (s + 1) as u16);
                    let label = lo(&spec.name);
                    let label = if label.is_empty() {
                        format!("Label {}", spec.label)
                    } else {
                        label
                    };
                    put(o, tags::SEGMENT_LABEL, VR::LO, label);
                    put(o, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
                    put(o, tags::SEGMENT_ALGORITHM_NAME, VR::LO, algorithm.as_str());
                    put_seq(
                        o,
                        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                        vec![item(|a| {
                            put_seq(
                                a,
                                tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                                vec![code_item(&artificial_intelligence())],
                            );
                            put(a, tags::ALGORITHM_NAME, VR::LO, algorithm.as_str());
                            put(
                                a,
                                tags::ALGORITHM_VERSION,
                                VR::LO,
                                if version.is_empty() {
                                    "unknown"
                                } else {
                                    &version
                                },
                            );
                        })],
                    );
                    put_seq(
                        o,
                        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                        vec![code_item(&spec.category)],
                    );
                    put_seq(
                        o,
                        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                        vec![property_type_item(spec)],
                    );
                    put(
                        o,
                        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                        VR::US,
                        PrimitiveValue::U16(srgb_to_dicom_lab(spec.color).into_iter().collect()),
                    );
                })
            })
            .collect()
    }

    /// Pixel Measures and Plane Orientation, the same for every frame.
    fn shared_groups(&self) -> InMemDicomObject {
        let r = self.req.reference;
        item(|g| {
            put_seq(
                g,
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::PIXEL_SPACING, VR::DS, ds_multi(&r.pixel_spacing));
                    let thickness = r
                        .slice_thickness
                        .filter(|t| *t > 0.0)
                        .unwrap_or(r.slice_spacing);
                    if thickness > 0.0 {
                        put(m, tags::SLICE_THICKNESS, VR::DS, ds(thickness));
                    }
                    if r.slice_spacing > 0.0 {
                        put(m, tags::SPACING_BETWEEN_SLICES, VR::DS, ds(r.slice_spacing));
                    }
                })],
            );
            put_seq(
                g,
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(|p| {
                    put(
                        p,
                        tags::IMAGE_ORIENTATION_PATIENT,
                        VR::DS,
                        ds_multi(&r.image_orientation),
                    );
                })],
            );
        })
    }

    /// Frame Content, Plane Position, Segment Identification and Derivation Image of frame `f`.
    fn frame_groups(&self, f: usize) -> InMemDicomObject {
        let (s, k) = self.layout.frames[f];
        let segment_number = (s + 1) as u16;
        let slice = &self.req.reference.slices[k];
        item(|g| {
            put_seq(
                g,
                tags::FRAME_CONTENT_SEQUENCE,
                vec![item(|c| {
                    put(
                        c,
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32(
                            [u32::from(segment_number), self.layout.position_index[k]]
                                .into_iter()
                                .collect(),
                        ),
                    );
                })],
            );
            put_seq(
                g,
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(|p| {
                    put(
                        p,
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds_multi(&slice.position),
                    );
                })],
            );
            put_seq(
                g,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                vec![item(|i| {
                    put(i, tags::REFERENCED_SEGMENT_NUMBER, VR::US, segment_number);
                })],
            );
            put_seq(
                g,
                tags::DERIVATION_IMAGE_SEQUENCE,
                vec![item(|d| {
                    put_seq(
                        d,
                        tags::DERIVATION_CODE_SEQUENCE,
                        vec![code_item(&segmentation_derivation())],
                    );
                    put_seq(
                        d,
                        tags::SOURCE_IMAGE_SEQUENCE,
                        vec![item(|src| {
                            put_sop_reference(src, slice);
                            if let Some(n) = slice.frame_number {
                                put(src, tags::REFERENCED_FRAME_NUMBER, VR::IS, n.to_string());
                            }
                            put_seq(
                                src,
                                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                                vec![code_item(&source_image_purpose())],
                            );
                            // Frames are on the source grid, pixel for pixel.
                            put(src, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
                        })],
                    );
                })],
            );
        })
    }

    /// DimensionOrganizationSequence, DimensionIndexSequence (segment, then position) and,
    /// where it holds, DimensionOrganizationType "3D".
    fn put_dimensions(&self, o: &mut InMemDicomObject) {
        let uid = self.uids.uid(KIND, "dimension organization");
        put_seq(
            o,
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(|d| {
                put(d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, uid.as_str())
            })],
        );
        let dimension = |pointer: Tag, group: Tag, label: &str| {
            item(|d| {
                put(d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, uid.as_str());
                put(
                    d,
                    tags::DIMENSION_INDEX_POINTER,
                    VR::AT,
                    PrimitiveValue::Tags([pointer].into_iter().collect()),
                );
                put(
                    d,
                    tags::FUNCTIONAL_GROUP_POINTER,
                    VR::AT,
                    PrimitiveValue::Tags([group].into_iter().collect()),
                );
                put(d, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
            })
        };
        put_seq(
            o,
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                dimension(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "Segment Number",
                ),
                dimension(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "Image Position Patient",
                ),
            ],
        );
        if self.layout.three_d {
            put(o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
        }
    }

    /// The source series with each of its instances once (a multi-frame file is one instance).
    fn referenced_series(&self) -> InMemDicomObject {
        let mut seen = std::collections::HashSet::new();
        let instances = self
            .req
            .reference
            .slices
            .iter()
            .filter(|s| seen.insert(s.sop_instance_uid.as_deref()))
            .map(|s| item(|i| put_sop_reference(i, s)))
            .collect();
        item(|s| {
            put(s, tags::SERIES_INSTANCE_UID, VR::UI, self.source_series_uid);
            put_seq(s, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
        })
    }
}

/// ReferencedSOPClassUID and ReferencedSOPInstanceUID of a source image ([`check_reference`]
/// made sure both exist).
fn put_sop_reference(o: &mut InMemDicomObject, slice: &crate::volume::SourceSlice) {
    let class = slice.sop_class_uid.as_deref().unwrap_or_default();
    let instance = slice.sop_instance_uid.as_deref().unwrap_or_default();
    put(o, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put(o, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::derived::{Producer, SegmentSpec, Timestamp};
    use crate::volume::{SeriesReference, SourceSlice};
    use ndarray::{Array3, ShapeBuilder};
    use rand::{Rng, SeedableRng};

    fn reference(columns: u32, rows: u32, z: &[f64]) -> SeriesReference {
        SeriesReference {
            rows,
            columns,
            image_orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            pixel_spacing: [0.7, 0.8],
            slice_spacing: 2.5,
            slices: z
                .iter()
                .enumerate()
                .map(|(k, &z)| SourceSlice {
                    sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
                    sop_instance_uid: Some(format!("1.2.3.{k}")),
                    frame_number: None,
                    position: [-10.0, 20.0, z],
                })
                .collect(),
            ..Default::default()
        }
    }

    fn spec(label: u16) -> SegmentSpec {
        let code = Code::new("SCT", "123037004", "Anatomical Structure");
        SegmentSpec {
            label,
            name: format!("organ {label}"),
            color: [200, 10, 10],
            category: code.clone(),
            property_type: code,
            modifier: None,
        }
    }

    fn producer() -> Producer {
        Producer {
            manufacturer: "sdseg-volume".into(),
            software_version: "0.0.0".into(),
            algorithm_name: "test".into(),
            algorithm_version: "abc".into(),
        }
    }

    fn request<'a>(
        labels: &'a Array3<u16>,
        reference: &'a SeriesReference,
        segments: &'a [SegmentSpec],
        producer: &'a Producer,
    ) -> DerivedRequest<'a> {
        DerivedRequest {
            labels: labels.view(),
            reference,
            segments,
            producer,
            series_description: "test".into(),
            series_number: 300,
            created: Timestamp { unix_seconds: 0 },
        }
    }

    /// The labels of each frame read back from the packed bits: frame f's pixel p is bit
    /// f · rows · columns + p of the whole stream.
    fn unpack(bytes: &[u8], frames: usize, pixels: usize) -> Vec<Vec<bool>> {
        (0..frames)
            .map(|f| {
                (0..pixels)
                    .map(|p| {
                        let bit = f * pixels + p;
                        bytes[bit / 8] >> (bit % 8) & 1 == 1
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn packs_frames_back_to_back_for_odd_sizes_and_both_layouts() {
        // 5 × 3 = 15 pixels a frame: no frame after the first starts on a byte boundary.
        let (columns, rows, n) = (5usize, 3usize, 7usize);
        let reference = reference(
            columns as u32,
            rows as u32,
            &[0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0],
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut labels = Array3::<u16>::zeros((columns, rows, n).f());
        labels
            .iter_mut()
            .for_each(|v| *v = [0, 0, 1, 4, 9][rng.random_range(0..5)]);
        labels.slice_mut(ndarray::s![.., .., 3]).fill(0); // a slice without any label
        let segments = [spec(4), spec(1)];
        let producer = producer();
        let req = request(&labels, &reference, &segments, &producer);
        let layout = FrameLayout::plan(&req);
        let len = layout.pixel_data_len(&req) as usize;
        assert_eq!(len % 2, 0);
        assert_eq!(
            len,
            (layout.frames.len() * 15).div_ceil(8).next_multiple_of(2)
        );
        let bytes = layout.pack(labels.view(), len);

        // Slice 3 is empty for both segments: 6 frames each, segment order, then slices.
        let expected_frames: Vec<(usize, usize)> = [0, 1]
            .into_iter()
            .flat_map(|s| [0, 1, 2, 4, 5, 6].map(|k| (s, k)))
            .collect();
        assert_eq!(layout.frames, expected_frames);
        assert_eq!(layout.position_index, vec![1, 2, 3, 0, 4, 5, 6]);
        assert!(!layout.three_d, "two segments: frames share positions");

        let unpacked = unpack(&bytes, layout.frames.len(), rows * columns);
        for (f, &(s, k)) in layout.frames.iter().enumerate() {
            for r in 0..rows {
                for c in 0..columns {
                    let want = labels[[c, r, k]] == segments[s].label;
                    assert_eq!(unpacked[f][r * columns + c], want, "frame {f} r {r} c {c}");
                }
            }
        }
        // Bits past the last frame stay zero.
        let used = layout.frames.len() * rows * columns;
        assert!((used..len * 8).all(|bit| bytes[bit / 8] >> (bit % 8) & 1 == 0));

        // The same labels in row-major (C) order and as a non-contiguous view pack the same.
        let c_order = labels.as_standard_layout().into_owned();
        assert!(c_order.is_standard_layout());
        assert_eq!(layout.pack(c_order.view(), len), bytes);
        let mut wide = Array3::<u16>::zeros((columns, rows * 2, n));
        wide.slice_mut(ndarray::s![.., ..;2, ..]).assign(&labels);
        let strided = wide.slice(ndarray::s![.., ..;2, ..]);
        assert_eq!(layout.pack(strided, len), bytes);
    }

    #[test]
    fn frames_follow_the_normal_and_empty_segments_keep_one_frame() {
        // Slices stored head → feet: position order is the reverse of k.
        let reference = reference(4, 2, &[10.0, 7.5, 5.0, 2.5]);
        let mut labels = Array3::<u16>::zeros((4, 2, 4).f());
        labels[[0, 0, 0]] = 2;
        labels[[3, 1, 2]] = 2;
        labels[[1, 1, 1]] = 2;
        let segments = [spec(2), spec(5)];
        let producer = producer();
        let req = request(&labels, &reference, &segments, &producer);
        let layout = FrameLayout::plan(&req);
        // Segment 1 on k = 2, 1, 0 (ascending position); segment 2 (no voxel): one frame on
        // the lowest slice, k = 3.
        assert_eq!(layout.frames, vec![(0, 2), (0, 1), (0, 0), (1, 3)]);
        assert_eq!(layout.position_index, vec![4, 3, 2, 1]);
        let len = layout.pixel_data_len(&req) as usize;
        let bytes = layout.pack(labels.view(), len);
        let unpacked = unpack(&bytes, 4, 8);
        assert!(
            unpacked[3].iter().all(|b| !b),
            "the empty segment's frame is empty"
        );
        assert!(unpacked[0][7] && unpacked[1][5] && unpacked[2][0]);
        assert_eq!(unpacked.iter().flatten().filter(|b| **b).count(), 3);
    }

    #[test]
    fn three_d_only_for_one_segment_on_evenly_spaced_slices() {
        let reference = reference(2, 2, &[0.0, 2.5, 5.0, 7.5]);
        let producer = producer();
        let segments = [spec(1)];
        let mut labels = Array3::<u16>::zeros((2, 2, 4).f());
        labels[[0, 0, 1]] = 1;
        labels[[0, 0, 2]] = 1;
        let layout = FrameLayout::plan(&request(&labels, &reference, &segments, &producer));
        assert!(layout.three_d);
        labels[[0, 0, 2]] = 0;
        labels[[0, 0, 3]] = 1; // a gap: positions 2.5, 7.5 only — still even
        let layout = FrameLayout::plan(&request(&labels, &reference, &segments, &producer));
        assert!(layout.three_d);
        labels[[0, 0, 0]] = 1; // 0, 2.5, 7.5: uneven
        let layout = FrameLayout::plan(&request(&labels, &reference, &segments, &producer));
        assert!(!layout.three_d);
        labels.fill(0);
        labels[[1, 1, 1]] = 1; // one frame: not a volume
        let layout = FrameLayout::plan(&request(&labels, &reference, &segments, &producer));
        assert!(!layout.three_d);
    }

    #[test]
    fn refuses_requests_that_do_not_fit() {
        let reference = reference(3, 2, &[0.0, 1.0]);
        let producer = producer();
        let labels = Array3::<u16>::zeros((3, 2, 2).f());
        let wrong_shape = Array3::<u16>::zeros((2, 3, 2).f());
        let refused = |labels: &Array3<u16>, segments: &[SegmentSpec]| match check_request(
            &request(labels, &reference, segments, &producer),
        ) {
            Err(DerivedError::Request(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(&wrong_shape, &[spec(1)]).contains("source grid"));
        assert!(refused(&labels, &[]).contains("at least one"));
        assert!(refused(&labels, &[spec(0)]).contains("label 0"));
        assert!(refused(&labels, &[spec(3), spec(3)]).contains("twice"));
        let mut long = spec(1);
        long.property_type.value = "12345678901234567".into();
        assert!(refused(&labels, &[long]).contains("longer than 16"));
        let mut empty = spec(1);
        empty.category.meaning = " ".into();
        assert!(refused(&labels, &[empty]).contains("CodeMeaning is empty"));
        assert!(check_request(&request(&labels, &reference, &[spec(1)], &producer)).is_ok());
    }

    #[test]
    fn lo_values_fit_the_vr() {
        assert_eq!(lo("  Left\\Right kidney\n"), "Left Right kidney");
        assert_eq!(lo(&"x".repeat(80)).len(), 64);
        assert!(evenly_spaced(&[1.0, 3.0, 5.0001]));
        assert!(!evenly_spaced(&[1.0, 1.0]));
    }
}
