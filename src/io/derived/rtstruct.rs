//! RT Structure Set (RT Structure Set IOD, PS3.3 A.19): one ROI per segment, CLOSED_PLANAR
//! contours per slice in patient coordinates (LPS, mm), each pointing at its source image.
//!
//! Modules written: Patient and General Study (copied from the source series, with empty
//! type 2 attributes where the source lacks them), RT Series (Modality RTSTRUCT, a new
//! SeriesInstanceUID), Frame of Reference (the source's FrameOfReferenceUID; the
//! PositionReferenceIndicator, type 2, empty), General Equipment, Structure Set (ReferencedFrameOfReferenceSequence →
//! RTReferencedStudySequence → RTReferencedSeriesSequence → ContourImageSequence listing every
//! source image; StructureSetROISequence), ROI Contour, RT ROI Observations (interpreted type
//! ORGAN; the segment's codes as in a DICOM-SEG: SegmentedPropertyCategoryCodeSequence, and
//! RTROIIdentificationCodeSequence holding the property type with its modifier), Approval
//! (UNAPPROVED: an automatic result a clinician has not reviewed) and SOP Common.
//!
//! An ROI without contours (a label absent from the prediction, written only when the
//! caller asks for it) has no ContourSequence (the module allows none, not an empty one);
//! rt-utils 1.2.7 cannot rasterise such an ROI (it expects the sequence on every ROI).
//!
//! Contours come from [`super::contour`] (its docs say how islands, holes and degenerate
//! islands are traced and why through pixel centres). Holes are separate contours of the same
//! ROI on the same slice, to be read with the even-odd rule. A vertex at column `c`, row `r`
//! of slice `k` is placed at `IPP_k + c·Δcol·row_dir + r·Δrow·col_dir` with the slice's own
//! ImagePositionPatient (tilted and gapped series stay exact), written to 0.1 µm.

use super::contour::{volume_contours, Contour};
use super::{
    check_reference, code_item, item, property_type_item, put, put_empty_type2_patient_study,
    put_patient_study, put_seq, settle_character_set, write_part10, CheckedReference, DerivedError,
    DerivedRequest, Uids,
};
use crate::volume::SeriesReference;
use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use rayon::prelude::*;
use std::path::Path;

/// SOP Class UID of the RT Structure Set Storage SOP class.
pub const RT_STRUCTURE_SET_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.481.3";

/// The Study Component Management SOP class (retired) that RTReferencedStudySequence names
/// (PS3.3 C.8.8.5: ReferencedSOPClassUID of the study, by convention of every RTSTRUCT writer).
const STUDY_COMPONENT_MANAGEMENT: &str = "1.2.840.10008.3.1.2.3.1";

/// Write `req` as an RTSTRUCT file at `path` (atomically).
pub fn write_rtstruct(path: &Path, req: &DerivedRequest) -> Result<(), DerivedError> {
    let checked = check_reference(req.reference, path, "an RTSTRUCT")?;
    let source_series_uid =
        req.reference
            .series_instance_uid
            .clone()
            .ok_or_else(|| DerivedError::Reference {
                input: path.to_path_buf(),
                what: "an RTSTRUCT",
                detail: "the source series has no SeriesInstanceUID (0020,000E)".into(),
            })?;
    let plane = PatientPlane::new(req.reference)?;
    check_request(req)?;
    let labels: Vec<u16> = req.segments.iter().map(|s| s.label).collect();
    let contours = volume_contours(req.labels, &labels);
    let uids = Uids::of(req);
    let sop_instance_uid = uids.uid("rtstruct", "instance");
    let series_uid = uids.uid("rtstruct", "series");
    let obj = structure_set(
        req,
        &checked,
        &source_series_uid,
        &series_uid,
        &sop_instance_uid,
        &plane,
        &contours,
    );
    write_part10(obj, path, RT_STRUCTURE_SET_STORAGE, &sop_instance_uid)
}

/// The label volume fits the reference and the segments can be ROIs.
fn check_request(req: &DerivedRequest) -> Result<(), DerivedError> {
    let r = req.reference;
    let expected = [r.columns as usize, r.rows as usize, r.slices.len()];
    if req.labels.shape() != expected {
        return Err(DerivedError::Request(format!(
            "the label volume has shape {:?} but the source series is {} columns × {} rows × {} slices",
            req.labels.shape(),
            r.columns,
            r.rows,
            r.slices.len()
        )));
    }
    for (n, s) in req.segments.iter().enumerate() {
        if s.label == 0 {
            return Err(DerivedError::Request(format!(
                "segment {:?} has label 0, the background",
                s.name
            )));
        }
        if let Some(other) = req.segments[..n].iter().find(|o| o.label == s.label) {
            return Err(DerivedError::Request(format!(
                "segments {:?} and {:?} both have label {}",
                other.name, s.name, s.label
            )));
        }
    }
    Ok(())
}

/// Pixel → patient coordinates (LPS, mm) of each source slice.
struct PatientPlane<'a> {
    reference: &'a SeriesReference,
    /// One column step: column spacing × row direction cosines.
    column_step: [f64; 3],
    /// One row step: row spacing × column direction cosines.
    row_step: [f64; 3],
}

impl<'a> PatientPlane<'a> {
    fn new(reference: &'a SeriesReference) -> Result<PatientPlane<'a>, DerivedError> {
        let iop = reference.image_orientation;
        let [row_spacing, column_spacing] = reference.pixel_spacing;
        let usable = iop.iter().all(|v| v.is_finite())
            && row_spacing.is_finite()
            && column_spacing.is_finite()
            && row_spacing > 0.0
            && column_spacing > 0.0;
        if !usable {
            return Err(DerivedError::Request(format!(
                "the source geometry cannot place contours: ImageOrientationPatient {iop:?}, PixelSpacing {:?}",
                reference.pixel_spacing
            )));
        }
        Ok(PatientPlane {
            reference,
            column_step: [iop[0], iop[1], iop[2]].map(|v| v * column_spacing),
            row_step: [iop[3], iop[4], iop[5]].map(|v| v * row_spacing),
        })
    }

    /// ContourData of `contour` on slice `k`: x\y\z per vertex.
    fn contour_data(&self, contour: &Contour, k: usize) -> PrimitiveValue {
        let ipp = self.reference.slices[k].position;
        let mut values = Vec::with_capacity(contour.points.len() * 3);
        for &[c, r] in &contour.points {
            for ((origin, along_row), along_column) in
                ipp.iter().zip(self.column_step).zip(self.row_step)
            {
                values.push(coordinate(origin + c * along_row + r * along_column));
            }
        }
        PrimitiveValue::Strs(values.into())
    }
}

/// A coordinate as DS, rounded to 0.1 µm (far below any pixel; keeps files small).
fn coordinate(mm: f64) -> String {
    let s = format!("{mm:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "-0" | "" => "0".to_string(),
        s => s.to_string(),
    }
}

/// The first `max` characters of `s` (LO is 64 characters at most, SH 16).
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A reference to source slice `k` (Image SOP Instance Reference Macro).
fn image_reference(reference: &SeriesReference, k: usize) -> InMemDicomObject {
    let s = &reference.slices[k];
    item(|o| {
        let class = s.sop_class_uid.as_deref().unwrap_or_default();
        let instance = s.sop_instance_uid.as_deref().unwrap_or_default();
        put(o, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
        put(o, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
        if let Some(frame) = s.frame_number {
            put(o, tags::REFERENCED_FRAME_NUMBER, VR::IS, frame.to_string());
        }
    })
}

/// The whole data set. `contours[k][n]`: contours of segment `n` on slice `k`.
fn structure_set(
    req: &DerivedRequest,
    checked: &CheckedReference,
    source_series_uid: &str,
    series_uid: &str,
    sop_instance_uid: &str,
    plane: &PatientPlane,
    contours: &[Vec<Vec<Contour>>],
) -> InMemDicomObject {
    let reference = req.reference;
    let date = req.created.date();
    let time = req.created.time();
    let mut o = InMemDicomObject::new_empty();

    // Patient, General Study (copied; type 2 present even when the source lacks them).
    put_patient_study(&mut o, reference);
    put_empty_type2_patient_study(&mut o);

    // SOP Common.
    put(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        RT_STRUCTURE_SET_STORAGE,
    );
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str());
    put(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str());

    // RT Series.
    put(&mut o, tags::MODALITY, VR::CS, "RTSTRUCT");
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
        clip(&req.series_description, 64),
    );
    put(&mut o, tags::OPERATORS_NAME, VR::PN, PrimitiveValue::Empty);

    // Frame of Reference (the source's: the contours are in its patient coordinates).
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        checked.frame_of_reference_uid.as_str(),
    );
    put(
        &mut o,
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        PrimitiveValue::Empty,
    );

    // General Equipment.
    let producer = req.producer;
    put(
        &mut o,
        tags::MANUFACTURER,
        VR::LO,
        clip(&producer.manufacturer, 64),
    );
    put(
        &mut o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        clip(&producer.manufacturer, 64),
    );
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        clip(&producer.software_version, 64),
    );

    // Structure Set.
    put(&mut o, tags::STRUCTURE_SET_LABEL, VR::SH, "SDSeg");
    put(
        &mut o,
        tags::STRUCTURE_SET_NAME,
        VR::LO,
        clip(&req.series_description, 64),
    );
    put(
        &mut o,
        tags::STRUCTURE_SET_DESCRIPTION,
        VR::ST,
        format!(
            "Automatic segmentation by {} {} ({}, version {})",
            producer.manufacturer,
            producer.software_version,
            producer.algorithm_name,
            producer.algorithm_version
        ),
    );
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::STRUCTURE_SET_DATE, VR::DA, date.as_str());
    put(&mut o, tags::STRUCTURE_SET_TIME, VR::TM, time.as_str());
    let series_item = item(|s| {
        put(s, tags::SERIES_INSTANCE_UID, VR::UI, source_series_uid);
        let images = (0..reference.slices.len())
            .map(|k| image_reference(reference, k))
            .collect();
        put_seq(s, tags::CONTOUR_IMAGE_SEQUENCE, images);
    });
    let study_item = item(|s| {
        put(
            s,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            STUDY_COMPONENT_MANAGEMENT,
        );
        put(
            s,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            checked.study_instance_uid.as_str(),
        );
        put_seq(s, tags::RT_REFERENCED_SERIES_SEQUENCE, vec![series_item]);
    });
    let frame_item = item(|f| {
        put(
            f,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            checked.frame_of_reference_uid.as_str(),
        );
        put_seq(f, tags::RT_REFERENCED_STUDY_SEQUENCE, vec![study_item]);
    });
    put_seq(
        &mut o,
        tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE,
        vec![frame_item],
    );
    let generation = clip(&producer.algorithm_name, 64);
    let rois = req
        .segments
        .iter()
        .enumerate()
        .map(|(n, s)| {
            item(|r| {
                put(r, tags::ROI_NUMBER, VR::IS, (n + 1).to_string());
                put(
                    r,
                    tags::REFERENCED_FRAME_OF_REFERENCE_UID,
                    VR::UI,
                    checked.frame_of_reference_uid.as_str(),
                );
                put(r, tags::ROI_NAME, VR::LO, clip(&s.name, 64));
                put(r, tags::ROI_GENERATION_ALGORITHM, VR::CS, "AUTOMATIC");
                put(
                    r,
                    tags::ROI_GENERATION_DESCRIPTION,
                    VR::LO,
                    generation.as_str(),
                );
            })
        })
        .collect();
    put_seq(&mut o, tags::STRUCTURE_SET_ROI_SEQUENCE, rois);

    // ROI Contour: segments in parallel (formatting the coordinates is most of the work).
    let roi_contours = req
        .segments
        .par_iter()
        .enumerate()
        .map(|(n, s)| roi_contour(reference, plane, contours, n, s.color))
        .collect();
    put_seq(&mut o, tags::ROI_CONTOUR_SEQUENCE, roi_contours);

    // RT ROI Observations.
    let observations = req
        .segments
        .iter()
        .enumerate()
        .map(|(n, s)| {
            item(|r| {
                put(r, tags::OBSERVATION_NUMBER, VR::IS, (n + 1).to_string());
                put(r, tags::REFERENCED_ROI_NUMBER, VR::IS, (n + 1).to_string());
                put_seq(
                    r,
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code_item(&s.category)],
                );
                put_seq(
                    r,
                    tags::RTROI_IDENTIFICATION_CODE_SEQUENCE,
                    vec![property_type_item(s)],
                );
                put(r, tags::RTROI_INTERPRETED_TYPE, VR::CS, "ORGAN");
                put(r, tags::ROI_INTERPRETER, VR::PN, PrimitiveValue::Empty);
            })
        })
        .collect();
    put_seq(&mut o, tags::RTROI_OBSERVATIONS_SEQUENCE, observations);

    // Approval.
    put(&mut o, tags::APPROVAL_STATUS, VR::CS, "UNAPPROVED");
    // Text beyond the source's character set (a ROI name) is declared as UTF-8.
    settle_character_set(&mut o);
    o
}

/// One ROIContourSequence item: the colour and every contour of segment `n`, slice by slice.
fn roi_contour(
    reference: &SeriesReference,
    plane: &PatientPlane,
    contours: &[Vec<Vec<Contour>>],
    n: usize,
    color: [u8; 3],
) -> InMemDicomObject {
    let mut number = 0u32;
    let mut items = Vec::new();
    for (k, per_segment) in contours.iter().enumerate() {
        for c in &per_segment[n] {
            number += 1;
            items.push(item(|i| {
                put(i, tags::CONTOUR_NUMBER, VR::IS, number.to_string());
                put_seq(
                    i,
                    tags::CONTOUR_IMAGE_SEQUENCE,
                    vec![image_reference(reference, k)],
                );
                put(i, tags::CONTOUR_GEOMETRIC_TYPE, VR::CS, "CLOSED_PLANAR");
                put(
                    i,
                    tags::NUMBER_OF_CONTOUR_POINTS,
                    VR::IS,
                    c.points.len().to_string(),
                );
                put(i, tags::CONTOUR_DATA, VR::DS, plane.contour_data(c, k));
            }));
        }
    }
    item(|r| {
        put(
            r,
            tags::ROI_DISPLAY_COLOR,
            VR::IS,
            PrimitiveValue::Strs(color.iter().map(|c| c.to_string()).collect()),
        );
        // Absent for an ROI without contours: present, it needs one item or more (C.8.8.6).
        if !items.is_empty() {
            put_seq(r, tags::CONTOUR_SEQUENCE, items);
        }
        put(r, tags::REFERENCED_ROI_NUMBER, VR::IS, (n + 1).to_string());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_are_short_and_exact_to_a_tenth_of_a_micrometre() {
        assert_eq!(coordinate(0.0), "0");
        assert_eq!(coordinate(-0.00001), "0");
        assert_eq!(coordinate(-187.68359375), "-187.6836");
        assert_eq!(coordinate(12.5), "12.5");
        assert_eq!(coordinate(-250.0), "-250");
        for x in [1e-5, 123456.789, -99999.99995, 3.0f64.sqrt()] {
            let s = coordinate(x);
            assert!(s.len() <= 16);
            assert!(
                (s.parse::<f64>().unwrap() - x).abs() <= 0.50001e-4,
                "{x} {s}"
            );
        }
    }
}
