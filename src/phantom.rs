//! Synthetic abdomen-like CT phantoms with organ labels, and a DICOM series writer for them.
//!
//! The phantom is deterministic per seed (ChaCha8, one stream per slice, so it is the same
//! with any number of threads). Values are whole HU in [-1024, 3071], like a real CT after
//! rescaling. Label ids follow BTCV: 1 spleen, 2 right kidney, 3 left kidney, 6 liver,
//! 8 aorta; the spine is bone without a label.
//!
//! [`write_dicom_series`] writes any [`Volume`] as a CT series (one file per slice, or one
//! Enhanced CT multi-frame file), taking the geometry from the volume's affine, with knobs for
//! the awkward cases a reader must survive: transfer syntaxes, rescale slope/intercept,
//! signed/unsigned storage, BitsStored, shuffled names and InstanceNumbers, junk files,
//! missing or duplicated slices, files without a meta header.
//!
//! Both phantom writers stamp [`PHANTOM_TAG`] (DICOM SeriesDescription, NIfTI `descrip`), and
//! [`looks_like_demo_phantom`] reads it back, so `run` can warn when the demo model meets
//! anything but a phantom.

mod dicom_write;

pub use dicom_write::{
    write_dicom_series, DicomWriteError, DicomWriteOptions, FrameLayout, InstanceOrder, WriteSyntax,
};

use crate::geometry::Affine;
use crate::volume::{Provenance, Source, Volume};
use ndarray::{Array3, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

/// The DICOM SeriesDescription and NIfTI `descrip` the phantom writers stamp.
pub const PHANTOM_TAG: &str = "sdseg phantom";

/// Does `volume` look like one of our synthetic phantoms (what the demo model was trained
/// on)? True for in-memory phantoms, DICOM series whose SeriesDescription starts with
/// [`PHANTOM_TAG`] and NIfTI files whose `descrip` starts with it. `run` should warn loudly
/// when the demo model is applied to anything else: it is a toy trained on synthetic shapes,
/// not a medical model.
pub fn looks_like_demo_phantom(volume: &Volume) -> bool {
    let tagged = |s: &str| s.trim_start().to_ascii_lowercase().starts_with(PHANTOM_TAG);
    match &volume.provenance().source {
        Source::Synthetic => true,
        Source::Dicom(d) => d.series_description.as_deref().is_some_and(tagged),
        Source::Nifti(n) => {
            let d = &n.header.descrip;
            let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
            tagged(&String::from_utf8_lossy(&d[..end]))
        }
    }
}

/// Size and look of a phantom.
#[derive(Clone, Debug)]
pub struct PhantomParams {
    /// Voxels along i (columns, patient right→left), j (rows, anterior→posterior),
    /// k (slices, inferior→superior).
    pub shape: [usize; 3],
    /// Voxel size in mm along i, j, k.
    pub spacing: [f64; 3],
    /// Standard deviation of the Gaussian noise (HU).
    pub noise_sd: f32,
}

impl PhantomParams {
    /// A phantom of the given shape covering a 360 × 360 mm field of view and 240 mm of
    /// body length, with 12 HU noise.
    pub fn new(shape: [usize; 3]) -> PhantomParams {
        PhantomParams {
            shape,
            spacing: [
                360.0 / shape[0].max(1) as f64,
                360.0 / shape[1].max(1) as f64,
                240.0 / shape[2].max(1) as f64,
            ],
            noise_sd: 12.0,
        }
    }
}

impl Default for PhantomParams {
    /// 64 × 64 × 32, the size tests use.
    fn default() -> Self {
        PhantomParams::new([64, 64, 32])
    }
}

/// A phantom CT volume and its ground-truth organ labels (same grid).
#[derive(Clone, Debug)]
pub struct Phantom {
    pub volume: Volume,
    pub labels: Array3<u16>,
    /// (label id, organ name), BTCV ids.
    pub label_names: Vec<(u16, String)>,
}

/// BTCV label ids of the phantom organs.
pub const SPLEEN: u16 = 1;
pub const KIDNEY_RIGHT: u16 = 2;
pub const KIDNEY_LEFT: u16 = 3;
pub const LIVER: u16 = 6;
pub const AORTA: u16 = 8;

/// An organ: an ellipsoid in normalised coordinates with a wobbly outline.
#[derive(Clone, Debug)]
struct Blob {
    label: u16,
    hu: f32,
    center: [f64; 3],
    radii: [f64; 3],
    /// Outline modulation: (harmonic, amplitude, phase).
    wobble: Vec<(f64, f64, f64)>,
}

impl Blob {
    fn random(
        rng: &mut ChaCha8Rng,
        label: u16,
        hu: f32,
        center: [f64; 3],
        radii: [f64; 3],
    ) -> Blob {
        let jitter = |rng: &mut ChaCha8Rng, s: f64| rng.random_range(-s..s);
        let c = [
            center[0] + jitter(rng, 0.05),
            center[1] + jitter(rng, 0.05),
            center[2] + jitter(rng, 0.08),
        ];
        let r = radii.map(|x| x * (1.0 + jitter(rng, 0.15)));
        let wobble = (2..5)
            .map(|m| {
                (
                    m as f64,
                    jitter(rng, 0.12),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        Blob {
            label,
            hu: hu + jitter(rng, 8.0) as f32,
            center: c,
            radii: r,
            wobble,
        }
    }

    fn contains(&self, p: [f64; 3]) -> bool {
        let d = [0, 1, 2].map(|a| (p[a] - self.center[a]) / self.radii[a]);
        let theta = d[1].atan2(d[0]);
        let scale: f64 = 1.0
            + self
                .wobble
                .iter()
                .map(|(m, a, ph)| a * (m * theta + ph + 2.0 * d[2]).cos())
                .sum::<f64>();
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2] <= scale * scale
    }
}

struct Anatomy {
    body: [f64; 2],
    body_wobble: Vec<(f64, f64, f64)>,
    fat_fraction: f64,
    organs: Vec<Blob>,
    aorta: ([f64; 2], f64, f32),
    spine: ([f64; 2], f64),
}

impl Anatomy {
    fn random(seed: u64) -> Anatomy {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let body = [
            0.85 * (1.0 + rng.random_range(-0.08..0.08)),
            0.62 * (1.0 + rng.random_range(-0.08..0.08)),
        ];
        let body_wobble = (2..4)
            .map(|m| {
                (
                    m as f64,
                    rng.random_range(-0.03..0.03),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        // Normalised coordinates: a = patient right (-1) → left (+1), b = anterior (-1) →
        // posterior (+1), c = inferior (-1) → superior (+1).
        let organs = vec![
            Blob::random(
                &mut rng,
                LIVER,
                60.0,
                [-0.35, -0.05, 0.35],
                [0.38, 0.33, 0.45],
            ),
            Blob::random(&mut rng, SPLEEN, 50.0, [0.5, 0.2, 0.4], [0.15, 0.16, 0.25]),
            Blob::random(
                &mut rng,
                KIDNEY_RIGHT,
                150.0,
                [-0.32, 0.33, -0.05],
                [0.1, 0.13, 0.22],
            ),
            Blob::random(
                &mut rng,
                KIDNEY_LEFT,
                150.0,
                [0.32, 0.33, 0.0],
                [0.1, 0.13, 0.22],
            ),
        ];
        let aorta = (
            [
                0.06 + rng.random_range(-0.02..0.02),
                0.22 + rng.random_range(-0.02..0.02),
            ],
            0.045 * (1.0 + rng.random_range(-0.15..0.15)),
            200.0 + rng.random_range(-15.0..15.0),
        );
        let spine = ([0.0, 0.45 + rng.random_range(-0.03..0.03)], 0.1);
        Anatomy {
            body,
            body_wobble,
            fat_fraction: rng.random_range(0.06..0.12),
            organs,
            aorta,
            spine,
        }
    }

    /// (HU without noise, label) at normalised position p.
    fn at(&self, p: [f64; 3]) -> (f32, u16) {
        let theta = p[1].atan2(p[0]);
        let wob: f64 = 1.0
            + self
                .body_wobble
                .iter()
                .map(|(m, a, ph)| a * (m * theta + ph).cos())
                .sum::<f64>();
        let rb = (p[0] / self.body[0]).powi(2) + (p[1] / self.body[1]).powi(2);
        let rb = rb.sqrt() / wob;
        if rb > 1.0 {
            return (-1000.0, 0);
        }
        if rb > 1.0 - self.fat_fraction {
            return (-100.0, 0); // subcutaneous fat
        }
        if rb > 1.0 - self.fat_fraction - 0.05 {
            return (45.0, 0); // abdominal wall muscle
        }
        let (sc, sr) = self.spine;
        let ds = ((p[0] - sc[0]).powi(2) + (p[1] - sc[1]).powi(2)).sqrt();
        if ds < sr {
            return (if ds < 0.7 * sr { 250.0 } else { 700.0 }, 0); // vertebra: cortex + marrow
        }
        let (ac, ar, ahu) = self.aorta;
        if ((p[0] - ac[0]).powi(2) + (p[1] - ac[1]).powi(2)).sqrt() < ar {
            return (ahu, AORTA);
        }
        // Later organs win overlaps: kidneys over spleen over liver.
        let mut out = (
            -20.0 + 40.0 * (0.5 + 0.5 * (6.0 * p[0] + 4.0 * p[1]).sin()) as f32,
            0,
        );
        for o in &self.organs {
            if o.contains(p) {
                out = (o.hu, o.label);
            }
        }
        out
    }
}

/// The affine a head-first supine axial CT read from DICOM has: i → patient left,
/// j → posterior, k → superior, centred on the origin.
fn phantom_affine(shape: [usize; 3], spacing: [f64; 3]) -> Affine {
    let half = |a: usize| (shape[a] as f64 - 1.0) / 2.0 * spacing[a];
    Affine([
        [-spacing[0], 0.0, 0.0, half(0)],
        [0.0, -spacing[1], 0.0, half(1)],
        [0.0, 0.0, spacing[2], -half(2)],
        [0.0, 0.0, 0.0, 1.0],
    ])
}

/// An abdomen-like CT phantom: air outside a body ellipse, fat and muscle walls, liver,
/// spleen, kidneys (contrast-enhanced), aorta and a vertebra with random shapes, sizes and
/// positions, plus Gaussian noise. Deterministic per `seed`.
pub fn abdomen_phantom(params: &PhantomParams, seed: u64) -> Phantom {
    let [nx, ny, nz] = params.shape.map(|n| n.max(1));
    let anatomy = Anatomy::random(seed);
    let noise = Normal::new(0.0f32, params.noise_sd.max(0.0)).expect("finite sd");
    let mut data = Array3::<f32>::zeros((nx, ny, nz).f());
    let mut labels = Array3::<u16>::zeros((nx, ny, nz).f());
    let plane = nx * ny;
    let dbuf = data.as_slice_memory_order_mut().expect("contiguous");
    let lbuf = labels.as_slice_memory_order_mut().expect("contiguous");
    dbuf.par_chunks_mut(plane)
        .zip(lbuf.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, (d, l))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_5a11_ce00);
            rng.set_stream(k as u64);
            let c = (k as f64 + 0.5) / nz as f64 * 2.0 - 1.0;
            for j in 0..ny {
                let b = (j as f64 + 0.5) / ny as f64 * 2.0 - 1.0;
                for i in 0..nx {
                    let a = (i as f64 + 0.5) / nx as f64 * 2.0 - 1.0;
                    let (hu, lab) = anatomy.at([a, b, c]);
                    let v = hu + noise.sample(&mut rng);
                    d[i + nx * j] = v.round().clamp(-1024.0, 3071.0);
                    l[i + nx * j] = lab;
                }
            }
        });
    let affine = phantom_affine([nx, ny, nz], params.spacing);
    let mut prov = Provenance::synthetic();
    prov.stored_type = crate::volume::StoredType::I16;
    prov.integral_i16 = true;
    let volume = Volume::new(data, affine, prov).expect("phantom shape and affine are valid");
    Phantom {
        volume,
        labels,
        label_names: vec![
            (SPLEEN, "spleen".into()),
            (KIDNEY_RIGHT, "right kidney".into()),
            (KIDNEY_LEFT, "left kidney".into()),
            (LIVER, "liver".into()),
            (AORTA, "aorta".into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_phantoms_are_recognised() {
        let p = abdomen_phantom(&PhantomParams::new([8, 8, 2]), 1);
        assert!(looks_like_demo_phantom(&p.volume));
    }

    #[test]
    fn deterministic_and_anatomical() {
        let p = PhantomParams::default();
        let a = abdomen_phantom(&p, 7);
        let b = abdomen_phantom(&p, 7);
        let c = abdomen_phantom(&p, 8);
        assert_eq!(a.volume.data(), b.volume.data());
        assert_eq!(a.labels, b.labels);
        assert_ne!(a.labels, c.labels, "different seeds give different anatomy");
        assert_eq!(a.volume.shape(), [64, 64, 32]);
        assert_eq!(a.volume.axcodes().to_string(), "LPS");
        // Every organ is present, with its HU near the nominal value.
        for (id, name) in &a.label_names {
            let vals: Vec<f32> = a
                .labels
                .iter()
                .zip(a.volume.data().iter())
                .filter(|(l, _)| **l == *id)
                .map(|(_, v)| *v)
                .collect();
            assert!(vals.len() > 20, "{name}: only {} voxels", vals.len());
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            let nominal = match *id {
                LIVER => 60.0,
                SPLEEN => 50.0,
                KIDNEY_LEFT | KIDNEY_RIGHT => 150.0,
                _ => 200.0,
            };
            assert!((mean - nominal).abs() < 25.0, "{name}: mean {mean}");
        }
        // Corners are air, all values whole HU within the CT range.
        assert!(a.volume.data()[[0, 0, 0]] < -900.0);
        assert!(a
            .volume
            .data()
            .iter()
            .all(|v| v.fract() == 0.0 && (-1024.0..=3071.0).contains(v)));
    }
}
