//! Writing a `Volume` as a DICOM CT series (test data and demos; not a clinical exporter).

use crate::io::derived::{ds, ds_multi, item, put, put_seq};
use crate::volume::Volume;
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Transfer syntaxes the writer can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteSyntax {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
    Deflated,
    /// RLE Lossless (1.2.840.10008.1.2.5), encoded here.
    Rle,
    /// JPEG Baseline (1.2.840.10008.1.2.4.50, lossy); needs 8-bit storage (`bits_stored <= 8`).
    JpegBaseline,
}

impl WriteSyntax {
    pub fn uid(self) -> &'static str {
        match self {
            WriteSyntax::ExplicitLittle => "1.2.840.10008.1.2.1",
            WriteSyntax::ImplicitLittle => "1.2.840.10008.1.2",
            WriteSyntax::ExplicitBig => "1.2.840.10008.1.2.2",
            WriteSyntax::Deflated => "1.2.840.10008.1.2.1.99",
            WriteSyntax::Rle => "1.2.840.10008.1.2.5",
            WriteSyntax::JpegBaseline => "1.2.840.10008.1.2.4.50",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameLayout {
    /// One CT Image file per slice.
    SingleFrame,
    /// One Enhanced CT Image file with per-frame functional groups.
    MultiFrame,
}

/// How InstanceNumber relates to the slice order (k) of the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceOrder {
    Ascending,
    Descending,
    Shuffled,
}

/// Options of [`write_dicom_series`]. `Default` is a plain head-first axial CT series:
/// explicit VR little endian, unsigned 16-bit with 12 bits stored, intercept -1024.
#[derive(Clone, Debug)]
pub struct DicomWriteOptions {
    pub syntax: WriteSyntax,
    pub layout: FrameLayout,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// PixelRepresentation 1 (two's complement) instead of 0.
    pub signed: bool,
    /// BitsStored; BitsAllocated is 8 when this is at most 8, else 16.
    pub bits_stored: u16,
    /// Seed for UIDs, shuffling and junk (same seed, same files).
    pub seed: u64,
    /// SeriesInstanceUID; derived from `seed` and `series_number` when `None`.
    pub series_uid: Option<String>,
    /// StudyInstanceUID; derived from `seed` when `None`.
    pub study_uid: Option<String>,
    pub series_number: i32,
    pub series_description: String,
    pub modality: String,
    pub image_type: Vec<String>,
    /// PatientPosition (e.g. "HFS", "FFS"); the geometry itself always follows the affine.
    pub patient_position: Option<String>,
    pub instance_order: InstanceOrder,
    /// Random file names instead of `<prefix>0001.dcm`, … in slice order.
    pub shuffle_file_names: bool,
    pub file_prefix: String,
    /// Also write files a reader must skip: text, binary junk, an empty file, a truncated
    /// DICOM file and a DICOM object without an image.
    pub junk_files: bool,
    /// Slices (k) not written, to make gaps.
    pub omit_slices: Vec<usize>,
    /// Slices (k) written twice (a second file at the same position).
    pub duplicate_slices: Vec<usize>,
    /// Write bare data sets: no preamble, no file meta group (implicit VR little endian).
    pub without_meta: bool,
}

impl Default for DicomWriteOptions {
    fn default() -> Self {
        DicomWriteOptions {
            syntax: WriteSyntax::ExplicitLittle,
            layout: FrameLayout::SingleFrame,
            rescale_slope: 1.0,
            rescale_intercept: -1024.0,
            signed: false,
            bits_stored: 12,
            seed: 0,
            series_uid: None,
            study_uid: None,
            series_number: 2,
            series_description: crate::phantom::PHANTOM_TAG.into(),
            modality: "CT".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "AXIAL".into()],
            patient_position: Some("HFS".into()),
            instance_order: InstanceOrder::Ascending,
            shuffle_file_names: false,
            file_prefix: "IM".into(),
            junk_files: false,
            omit_slices: vec![],
            duplicate_slices: vec![],
            without_meta: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DicomWriteError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("the volume's i and j axes are not orthogonal (cosine {0:.6}); DICOM rows and columns must be")]
    NotOrthogonal(f64),
    #[error("HU {hu} becomes stored value {stored}, outside [{min}, {max}] for {bits} bits {}; change rescale slope/intercept or storage", if *.signed { "signed" } else { "unsigned" })]
    OutOfRange {
        hu: f32,
        stored: i64,
        min: i64,
        max: i64,
        bits: u16,
        signed: bool,
    },
    #[error("bad write options: {0}")]
    Options(String),
    #[error("DICOM encoding failed: {0}")]
    Encode(String),
}

impl crate::error::Classify for DicomWriteError {
    fn is_input_error(&self) -> bool {
        !matches!(self, DicomWriteError::Encode(_))
    }
}

/// A DICOM UID `2.25.<decimal>` derived from the seed and a purpose string.
pub(crate) fn derived_uid(seed: u64, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[0] &= 0x7f; // keep it short of 39 digits
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Slice geometry in LPS derived from a RAS affine.
struct Plan {
    iop: [f64; 6],
    /// [between rows, between columns]
    pixel_spacing: [f64; 2],
    origin: [f64; 3],
    step: [f64; 3],
    thickness: f64,
}

fn plan(volume: &Volume) -> Result<Plan, DicomWriteError> {
    let a = volume.affine();
    let lps = |axis: usize| {
        let v = a.axis_vector(axis);
        [-v[0], -v[1], v[2]]
    };
    let (ci, cj, ck) = (lps(0), lps(1), lps(2));
    let n = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (di, dj) = (n(ci), n(cj));
    let row = ci.map(|x| x / di);
    let col = cj.map(|x| x / dj);
    let cos = row[0] * col[0] + row[1] * col[1] + row[2] * col[2];
    if cos.abs() > 1e-6 {
        return Err(DicomWriteError::NotOrthogonal(cos));
    }
    let normal = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    let o = a.origin();
    Ok(Plan {
        iop: [row[0], row[1], row[2], col[0], col[1], col[2]],
        pixel_spacing: [dj, di],
        origin: [-o[0], -o[1], o[2]],
        step: ck,
        thickness: (ck[0] * normal[0] + ck[1] * normal[1] + ck[2] * normal[2]).abs(),
    })
}

/// Write `volume` as a CT series into `dir` (created if needed). Returns the image files
/// written, in slice order of the volume (one entry for a multi-frame file; junk files are
/// not listed). The voxel (i, j, k) becomes column i, row j of slice k.
pub fn write_dicom_series(
    volume: &Volume,
    dir: &Path,
    opts: &DicomWriteOptions,
) -> Result<Vec<PathBuf>, DicomWriteError> {
    let bits_alloc = check_options(opts)?;
    std::fs::create_dir_all(dir).map_err(|e| DicomWriteError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let plan = plan(volume)?;
    let [nx, ny, nz] = volume.shape();
    let frames = stored_frames(volume, opts, bits_alloc)?;
    let series_uid = opts
        .series_uid
        .clone()
        .unwrap_or_else(|| derived_uid(opts.seed, &format!("series{}", opts.series_number)));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xd1c0_d1c0);
    let (slices, instance) = slices_to_write(opts, nz, &mut rng);
    let series = Series {
        opts,
        plan,
        nx,
        ny,
        bits_alloc,
        frames,
        study_uid: opts
            .study_uid
            .clone()
            .unwrap_or_else(|| derived_uid(opts.seed, "study")),
        series_uid,
        for_uid: derived_uid(opts.seed, "frame-of-reference"),
        slices,
        instance,
    };
    let mut written = match opts.layout {
        FrameLayout::SingleFrame => series.write_single_frames(dir, &mut rng)?,
        FrameLayout::MultiFrame => vec![(0, series.write_multi_frame(dir, &mut rng)?)],
    };
    if opts.junk_files {
        write_junk(dir, &written[0].1, &series.series_uid, opts)?;
    }
    written.sort_by_key(|(k, _)| *k);
    Ok(written.into_iter().map(|(_, p)| p).collect())
}

/// Reject option combinations the writer cannot honour; the BitsAllocated of `bits_stored`.
fn check_options(opts: &DicomWriteOptions) -> Result<u16, DicomWriteError> {
    if opts.bits_stored == 0 || opts.bits_stored > 16 {
        return Err(DicomWriteError::Options(format!(
            "bits_stored {} (expected 1..=16)",
            opts.bits_stored
        )));
    }
    if opts.rescale_slope == 0.0 || !opts.rescale_slope.is_finite() {
        return Err(DicomWriteError::Options(
            "rescale slope must be non-zero".into(),
        ));
    }
    let bits_alloc: u16 = if opts.bits_stored <= 8 { 8 } else { 16 };
    if opts.syntax == WriteSyntax::JpegBaseline && bits_alloc != 8 {
        return Err(DicomWriteError::Options(
            "JPEG Baseline needs 8-bit storage (bits_stored <= 8)".into(),
        ));
    }
    if opts.without_meta && opts.syntax != WriteSyntax::ImplicitLittle {
        return Err(DicomWriteError::Options(
            "files without meta header are written in implicit VR little endian only".into(),
        ));
    }
    Ok(bits_alloc)
}

/// The slices to write, in volume order, with duplicates, and the InstanceNumber of each.
fn slices_to_write(
    opts: &DicomWriteOptions,
    nz: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, Vec<i32>) {
    let mut ks: Vec<usize> = Vec::new();
    for k in 0..nz {
        if opts.omit_slices.contains(&k) {
            continue;
        }
        ks.push(k);
        if opts.duplicate_slices.contains(&k) {
            ks.push(k);
        }
    }
    let mut instance: Vec<i32> = (1..=ks.len() as i32).collect();
    match opts.instance_order {
        InstanceOrder::Ascending => {}
        InstanceOrder::Descending => instance.reverse(),
        InstanceOrder::Shuffled => instance.shuffle(rng),
    }
    (ks, instance)
}

/// One series being written: what its files share and the slices they hold.
struct Series<'a> {
    opts: &'a DicomWriteOptions,
    plan: Plan,
    nx: usize,
    ny: usize,
    bits_alloc: u16,
    /// Stored bytes of every slice of the volume.
    frames: Vec<Vec<u8>>,
    study_uid: String,
    series_uid: String,
    for_uid: String,
    /// Slices to write (volume indices, in volume order, with duplicates).
    slices: Vec<usize>,
    /// InstanceNumber of each entry of `slices`.
    instance: Vec<i32>,
}

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";

impl Series<'_> {
    /// The patient, study, series and image pixel modules every file carries.
    fn put_common(&self, obj: &mut InMemDicomObject, sop_class: &str, sop_inst: &str) {
        let opts = self.opts;
        put(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        put(obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_inst);
        put(obj, tags::STUDY_DATE, VR::DA, "20240101");
        put(obj, tags::SERIES_DATE, VR::DA, "20240101");
        put(obj, tags::STUDY_TIME, VR::TM, "120000");
        put(obj, tags::SERIES_TIME, VR::TM, "120000");
        put(obj, tags::ACCESSION_NUMBER, VR::SH, "");
        put(obj, tags::MODALITY, VR::CS, opts.modality.as_str());
        put(obj, tags::MANUFACTURER, VR::LO, "sdseg-volume phantom");
        put(
            obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            opts.series_description.as_str(),
        );
        put(obj, tags::PATIENT_NAME, VR::PN, "Phantom^Abdomen");
        put(
            obj,
            tags::PATIENT_ID,
            VR::LO,
            format!("PHANTOM{}", opts.seed),
        );
        put(obj, tags::PATIENT_BIRTH_DATE, VR::DA, "");
        put(obj, tags::PATIENT_SEX, VR::CS, "O");
        put(
            obj,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            self.study_uid.as_str(),
        );
        put(
            obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            self.series_uid.as_str(),
        );
        put(obj, tags::STUDY_ID, VR::SH, "1");
        put(
            obj,
            tags::SERIES_NUMBER,
            VR::IS,
            opts.series_number.to_string(),
        );
        put(
            obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            self.for_uid.as_str(),
        );
        put(obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        if let Some(pp) = &opts.patient_position {
            put(obj, tags::PATIENT_POSITION, VR::CS, pp.as_str());
        }
        put(obj, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
        put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        put(obj, tags::ROWS, VR::US, self.ny as u16);
        put(obj, tags::COLUMNS, VR::US, self.nx as u16);
        put(obj, tags::BITS_ALLOCATED, VR::US, self.bits_alloc);
        put(obj, tags::BITS_STORED, VR::US, opts.bits_stored);
        put(obj, tags::HIGH_BIT, VR::US, opts.bits_stored - 1);
        put(
            obj,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            u16::from(opts.signed),
        );
        put(obj, tags::WINDOW_CENTER, VR::DS, "40");
        put(obj, tags::WINDOW_WIDTH, VR::DS, "400");
    }

    /// ImagePositionPatient of slice `k`.
    fn ipp(&self, k: usize) -> [f64; 3] {
        std::array::from_fn(|d| self.plan.origin[d] + k as f64 * self.plan.step[d])
    }

    /// The file name of the `idx`-th file written (random with `shuffle_file_names`).
    fn file_name(&self, idx: usize, rng: &mut ChaCha8Rng) -> String {
        if self.opts.shuffle_file_names {
            use rand::Rng;
            format!("{:016x}", rng.random::<u64>())
        } else {
            format!("{}{:04}.dcm", self.opts.file_prefix, idx + 1)
        }
    }

    /// One CT Image Storage file per slice; (slice, path) of each.
    fn write_single_frames(
        &self,
        dir: &Path,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<(usize, PathBuf)>, DicomWriteError> {
        let (opts, plan) = (self.opts, &self.plan);
        let mut written = Vec::new();
        for (idx, &k) in self.slices.iter().enumerate() {
            let sop = derived_uid(opts.seed, &format!("{}/{idx}", self.series_uid));
            let mut obj = InMemDicomObject::new_empty();
            self.put_common(&mut obj, CT_IMAGE_STORAGE, &sop);
            put(
                &mut obj,
                tags::IMAGE_TYPE,
                VR::CS,
                PrimitiveValue::Strs(opts.image_type.iter().cloned().collect()),
            );
            put(
                &mut obj,
                tags::INSTANCE_NUMBER,
                VR::IS,
                self.instance[idx].to_string(),
            );
            put(
                &mut obj,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                ds_multi(&self.ipp(k)),
            );
            put(
                &mut obj,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                ds_multi(&plan.iop),
            );
            put(&mut obj, tags::SLICE_THICKNESS, VR::DS, ds(plan.thickness));
            put(&mut obj, tags::SLICE_LOCATION, VR::DS, ds(self.ipp(k)[2]));
            put(
                &mut obj,
                tags::PIXEL_SPACING,
                VR::DS,
                ds_multi(&plan.pixel_spacing),
            );
            put(
                &mut obj,
                tags::RESCALE_INTERCEPT,
                VR::DS,
                ds(opts.rescale_intercept),
            );
            put(
                &mut obj,
                tags::RESCALE_SLOPE,
                VR::DS,
                ds(opts.rescale_slope),
            );
            put(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
            let frame = [&self.frames[k]];
            put_pixels(
                &mut obj,
                &frame,
                self.bits_alloc,
                opts.syntax,
                self.nx,
                self.ny,
            )?;
            let path = dir.join(self.file_name(idx, rng));
            write_object(obj, &path, opts, CT_IMAGE_STORAGE, &sop)?;
            written.push((k, path));
        }
        Ok(written)
    }

    /// One Enhanced CT Image Storage file holding every slice; its path.
    fn write_multi_frame(
        &self,
        dir: &Path,
        rng: &mut ChaCha8Rng,
    ) -> Result<PathBuf, DicomWriteError> {
        let opts = self.opts;
        let sop = derived_uid(opts.seed, &format!("{}/mf", self.series_uid));
        let mut obj = InMemDicomObject::new_empty();
        self.put_common(&mut obj, ENHANCED_CT_IMAGE_STORAGE, &sop);
        let mut it = opts.image_type.clone();
        it.resize(4, "NONE".into());
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(it.into_iter().collect()),
        );
        put(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
        put(
            &mut obj,
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            self.slices.len().to_string(),
        );
        put(&mut obj, tags::CONTENT_DATE, VR::DA, "20240101");
        put(&mut obj, tags::CONTENT_TIME, VR::TM, "120000");
        put_seq(
            &mut obj,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![self.shared_functional_groups()],
        );
        // Frames are stored in InstanceNumber order, so a shuffled order really shuffles them.
        let mut order: Vec<usize> = (0..self.slices.len()).collect();
        order.sort_by_key(|&i| self.instance[i]);
        let per_frame: Vec<InMemDicomObject> = order
            .iter()
            .map(|&idx| self.per_frame_functional_groups(idx))
            .collect();
        put_seq(
            &mut obj,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            per_frame,
        );
        let fr: Vec<&Vec<u8>> = order
            .iter()
            .map(|&idx| &self.frames[self.slices[idx]])
            .collect();
        put_pixels(
            &mut obj,
            &fr,
            self.bits_alloc,
            opts.syntax,
            self.nx,
            self.ny,
        )?;
        let path = dir.join(if opts.shuffle_file_names {
            self.file_name(0, rng)
        } else {
            format!("{}_multiframe.dcm", opts.file_prefix)
        });
        write_object(obj, &path, opts, ENHANCED_CT_IMAGE_STORAGE, &sop)?;
        Ok(path)
    }

    /// The functional groups every frame shares: pixel measures, orientation, rescale.
    fn shared_functional_groups(&self) -> InMemDicomObject {
        let (opts, plan) = (self.opts, &self.plan);
        item(|g| {
            put_seq(
                g,
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(|m| {
                    put(
                        m,
                        tags::PIXEL_SPACING,
                        VR::DS,
                        ds_multi(&plan.pixel_spacing),
                    );
                    put(m, tags::SLICE_THICKNESS, VR::DS, ds(plan.thickness));
                })],
            );
            put_seq(
                g,
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(|m| {
                    put(
                        m,
                        tags::IMAGE_ORIENTATION_PATIENT,
                        VR::DS,
                        ds_multi(&plan.iop),
                    );
                })],
            );
            put_seq(
                g,
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                vec![item(|m| {
                    put(
                        m,
                        tags::RESCALE_INTERCEPT,
                        VR::DS,
                        ds(opts.rescale_intercept),
                    );
                    put(m, tags::RESCALE_SLOPE, VR::DS, ds(opts.rescale_slope));
                    put(m, tags::RESCALE_TYPE, VR::LO, "HU");
                })],
            );
        })
    }

    /// The functional groups of the frame of `slices[idx]`: stack position and position.
    fn per_frame_functional_groups(&self, idx: usize) -> InMemDicomObject {
        let k = self.slices[idx];
        item(|g| {
            put_seq(
                g,
                tags::FRAME_CONTENT_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::IN_STACK_POSITION_NUMBER, VR::UL, (idx + 1) as u32);
                })],
            );
            put_seq(
                g,
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(|m| {
                    put(
                        m,
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds_multi(&self.ipp(k)),
                    );
                })],
            );
        })
    }
}

/// Stored little-endian bytes of every slice (k), checked against the storage range.
fn stored_frames(
    volume: &Volume,
    opts: &DicomWriteOptions,
    bits_alloc: u16,
) -> Result<Vec<Vec<u8>>, DicomWriteError> {
    let [nx, ny, nz] = volume.shape();
    let bits = opts.bits_stored;
    let (min, max) = if opts.signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    };
    let data = volume.data();
    let mut out = Vec::with_capacity(nz);
    for k in 0..nz {
        let mut buf = Vec::with_capacity(nx * ny * usize::from(bits_alloc / 8));
        for j in 0..ny {
            for i in 0..nx {
                let hu = data[[i, j, k]];
                let s =
                    ((f64::from(hu) - opts.rescale_intercept) / opts.rescale_slope).round() as i64;
                if s < min || s > max {
                    return Err(DicomWriteError::OutOfRange {
                        hu,
                        stored: s,
                        min,
                        max,
                        bits,
                        signed: opts.signed,
                    });
                }
                if bits_alloc == 8 {
                    buf.push(s as u8);
                } else {
                    buf.extend_from_slice(&(s as u16).to_le_bytes());
                }
            }
        }
        out.push(buf);
    }
    Ok(out)
}

fn put_pixels(
    obj: &mut InMemDicomObject,
    frames: &[&Vec<u8>],
    bits_alloc: u16,
    syntax: WriteSyntax,
    nx: usize,
    ny: usize,
) -> Result<(), DicomWriteError> {
    match syntax {
        WriteSyntax::Rle => {
            let fragments: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| rle_encode_frame(f, nx, ny, usize::from(bits_alloc / 8)))
                .collect();
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
            ));
        }
        _ => {
            let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            if bits_alloc == 8 {
                put(
                    obj,
                    tags::PIXEL_DATA,
                    VR::OB,
                    PrimitiveValue::U8(all.into()),
                );
            } else {
                let words: Vec<u16> = all
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                put(
                    obj,
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::U16(words.into()),
                );
            }
        }
    }
    Ok(())
}

/// RLE Lossless encoding of one frame (DICOM PS3.5 Annex G): one segment per byte of the
/// sample, most significant byte first, each row PackBits-coded separately.
pub(crate) fn rle_encode_frame(frame: &[u8], nx: usize, ny: usize, bytes: usize) -> Vec<u8> {
    let mut segments: Vec<Vec<u8>> = Vec::with_capacity(bytes);
    for seg in 0..bytes {
        // Little-endian storage: the MSB segment comes first.
        let byte_index = bytes - 1 - seg;
        let mut out = Vec::new();
        let mut row = Vec::with_capacity(nx);
        for j in 0..ny {
            row.clear();
            row.extend((0..nx).map(|i| frame[(j * nx + i) * bytes + byte_index]));
            packbits(&row, &mut out);
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
        segments.push(out);
    }
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(&(bytes as u32).to_le_bytes());
    let mut offset = 64u32;
    for (s, seg) in segments.iter().enumerate() {
        header[4 + 4 * s..8 + 4 * s].copy_from_slice(&offset.to_le_bytes());
        offset += seg.len() as u32;
    }
    let mut out = header;
    for s in segments {
        out.extend(s);
    }
    out
}

fn packbits(row: &[u8], out: &mut Vec<u8>) {
    let n = row.len();
    let mut i = 0;
    while i < n {
        // Run of identical bytes?
        let mut run = 1;
        while i + run < n && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8); // -(run-1) as i8
            out.push(row[i]);
            i += run;
            continue;
        }
        // Literal run until the next pair of equal bytes.
        let start = i;
        let mut len = 0;
        while i < n && len < 128 {
            if i + 1 < n && row[i] == row[i + 1] {
                break;
            }
            i += 1;
            len += 1;
        }
        out.push((len - 1) as u8);
        out.extend_from_slice(&row[start..start + len]);
    }
}

fn write_object(
    obj: InMemDicomObject,
    path: &Path,
    opts: &DicomWriteOptions,
    sop_class: &str,
    sop: &str,
) -> Result<(), DicomWriteError> {
    let enc =
        |e: &dyn std::fmt::Display| DicomWriteError::Encode(format!("{}: {e}", path.display()));
    if opts.without_meta {
        let ts = entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &ts)
            .map_err(|e| enc(&e))?;
        return std::fs::write(path, bytes).map_err(|e| DicomWriteError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        });
    }
    let initial_ts = if opts.syntax == WriteSyntax::JpegBaseline {
        WriteSyntax::ExplicitLittle.uid()
    } else {
        opts.syntax.uid()
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(initial_ts)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop)
        .implementation_class_uid("2.25.302585237396474375393406963311553546155")
        .implementation_version_name("SDSEG_PHANTOM");
    let mut file = obj.with_meta(meta).map_err(|e| enc(&e))?;
    if opts.syntax == WriteSyntax::JpegBaseline {
        use dicom_pixeldata::Transcode;
        file.transcode(&entries::JPEG_BASELINE.erased())
            .map_err(|e| enc(&e))?;
    }
    file.write_to_file(path).map_err(|e| enc(&e))
}

fn write_junk(
    dir: &Path,
    example: &Path,
    series_uid: &str,
    opts: &DicomWriteOptions,
) -> Result<(), DicomWriteError> {
    let io = |p: &Path, e: std::io::Error| DicomWriteError::Io {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    let w = |name: &str, bytes: &[u8]| -> Result<(), DicomWriteError> {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| io(&p, e))
    };
    w("README.txt", b"This folder holds a synthetic CT series.\n")?;
    w(
        "notes/.DS_Store",
        &[0u8, 0, 0, 1, 66, 117, 100, 49, 0, 0, 16, 0, 0, 0, 8, 0],
    )?;
    w("empty.dcm", b"")?;
    let whole = std::fs::read(example).map_err(|e| io(example, e))?;
    w("truncated.dcm", &whole[..whole.len().min(200)])?;
    // A DICOM object of the same series without an image (like a dose report).
    let sop = derived_uid(opts.seed, "junk-sr");
    let mut sr = InMemDicomObject::new_empty();
    put(
        &mut sr,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.88.67",
    );
    put(&mut sr, tags::SOP_INSTANCE_UID, VR::UI, sop.as_str());
    put(&mut sr, tags::MODALITY, VR::CS, "SR");
    put(&mut sr, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(WriteSyntax::ExplicitLittle.uid())
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.88.67")
        .media_storage_sop_instance_uid(sop.as_str());
    let p = dir.join("dose_report.dcm");
    let enc = |e: &dyn std::fmt::Display| DicomWriteError::Encode(format!("{}: {e}", p.display()));
    let file = sr.with_meta(meta).map_err(|e| enc(&e))?;
    file.write_to_file(&p).map_err(|e| enc(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpackbits(mut data: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let h = data[0] as i8;
            data = &data[1..];
            if h >= 0 {
                let len = h as usize + 1;
                out.extend_from_slice(&data[..len]);
                data = &data[len..];
            } else if h != -128 {
                let len = (1 - h as isize) as usize;
                out.extend(std::iter::repeat_n(data[0], len));
                data = &data[1..];
            }
        }
        out
    }

    #[test]
    fn packbits_round_trip() {
        let rows: Vec<Vec<u8>> = vec![
            vec![1, 1, 1, 2, 3, 4, 4, 5],
            vec![7; 300],
            (0..=255u8).collect(),
            vec![9],
            vec![1, 2, 1, 2, 2],
        ];
        for row in rows {
            let mut enc = Vec::new();
            packbits(&row, &mut enc);
            assert_eq!(unpackbits(&enc, row.len()), row);
        }
    }

    #[test]
    fn ds_values_fit() {
        for x in [
            0.0,
            -0.0,
            1.0 / 3.0,
            -123456.789012345,
            1e-12,
            0.7031249999999,
        ] {
            let s = ds(x);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - x).abs() <= 1e-9 * x.abs().max(1.0), "{x} -> {s}");
        }
        assert_eq!(ds(-0.0), "0");
    }
}
