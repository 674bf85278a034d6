//! One case's images as the page embeds them: every layer on the output's own voxel grid,
//! seen in the closest RAS frame (an exact axis permutation and flips, no resampling), cut
//! down by whole factors, packed into one gzip stream that the browser inflates with its
//! built-in `DecompressionStream`.
//!
//! **Grid.** The label volume's grid (the input's, exactly) is the reference. In the RAS
//! frame, voxel `x` of full-resolution axis `t` falls in sample `⌊x / f_t⌋` of a layer cut down
//! by `f_t`; so a layer needs no affine of its own, and the page maps a screen pixel to a
//! full-resolution voxel, then to the original `ijk` (the permutation undone) and to RAS mm
//! through the original affine: readouts are those of the NIfTI output.
//!
//! **Layers.** `ct`: HU averaged over `f×f` blocks in-plane (R and A axes, to at most
//! [`CT_IN_PLANE`] samples each; slices kept up to [`CT_SLICES`]), then 8 bits through
//! [`HuCompander`]. `labels` and `gt`: every voxel up to [`LABELS_IN_PLANE`] in-plane (so a
//! 512² series keeps every voxel; larger ones take the block's centre voxel), 8 bits, or 16
//! when a value exceeds 255. `uncertainty`: averaged like the CT, 8 bits linear on
//! `[0, max]`. Each layer starts at an even byte offset (so a 16-bit layer can be viewed in
//! place) and is stored x fastest, then y, then z.

use ndarray::{ArrayView3, Axis};
use rayon::prelude::*;
use serde::Serialize;

use crate::geometry::{Affine, AxCodes, Reorientation};

/// CT and uncertainty: at most this many samples along R and along A (the default of
/// [`CaseArrays::ct_in_plane`], `--html-ct-size`).
pub const CT_IN_PLANE: usize = 256;
/// The range `--html-ct-size` accepts: below 32 a CT is unreadable; above the labels' limit
/// the CT would be finer than the overlay.
pub const CT_IN_PLANE_RANGE: std::ops::RangeInclusive<usize> = 32..=LABELS_IN_PLANE;
/// CT and uncertainty: at most this many samples along S.
pub const CT_SLICES: usize = 512;
/// Labels and ground truth: at most this many samples along R and along A.
pub const LABELS_IN_PLANE: usize = 512;
/// Labels and ground truth: at most this many samples along S.
pub const LABELS_SLICES: usize = 1024;

/// HU ↔ 8-bit code: piecewise linear through these (code, HU) knots. 160 codes for the
/// soft-tissue range −160..240 HU (2.5 HU a step: the abdomen window W400/L40 spans 160
/// distinct grey levels), 40 for lung (−1024..−160, 21.6 HU a step) and 55 for bone
/// (240..1900, 30 HU a step), so every window preset (abdomen, lung W1500/L−600, bone
/// W1800/L400) is drawn from one 8-bit array. Values outside clamp to the end codes.
pub const HU_KNOTS: [(f32, f32); 4] = [
    (0.0, -1024.0),
    (40.0, -160.0),
    (200.0, 240.0),
    (255.0, 1900.0),
];

/// The companding curve of [`HU_KNOTS`].
pub struct HuCompander;

impl HuCompander {
    pub fn encode(hu: f32) -> u8 {
        if hu.is_nan() {
            return 0;
        }
        let last = HU_KNOTS.len() - 1;
        if hu <= HU_KNOTS[0].1 {
            return 0;
        }
        if hu >= HU_KNOTS[last].1 {
            return 255;
        }
        for w in HU_KNOTS.windows(2) {
            let ((c0, h0), (c1, h1)) = (w[0], w[1]);
            if hu <= h1 {
                let c = c0 + (hu - h0) / (h1 - h0) * (c1 - c0);
                return c.round().clamp(0.0, 255.0) as u8;
            }
        }
        255
    }

    pub fn decode(code: u8) -> f32 {
        let c = code as f32;
        for w in HU_KNOTS.windows(2) {
            let ((c0, h0), (c1, h1)) = (w[0], w[1]);
            if c <= c1 {
                return h0 + (c - c0) / (c1 - c0) * (h1 - h0);
            }
        }
        HU_KNOTS[HU_KNOTS.len() - 1].1
    }

    /// The HU of every code, for the page.
    pub fn table() -> Vec<f32> {
        (0..=255u8).map(HuCompander::decode).collect()
    }
}

/// How the full-resolution grid is seen in the RAS frame, for the page's readouts.
#[derive(Clone, Debug, Serialize)]
pub struct GridMeta {
    /// Full-resolution size along R, A, S.
    pub dims: [usize; 3],
    /// mm along R, A, S (the original axes' spacing, permuted).
    pub spacing: [f64; 3],
    /// RAS axis `t` is original axis `perm[t]`, reversed when `flip[t]`.
    pub perm: [usize; 3],
    pub flip: [bool; 3],
    /// The output's voxel → RAS affine (original `ijk`), rows.
    pub affine: [[f64; 4]; 4],
    /// The output's orientation codes (`LPS`, ...).
    pub axcodes: String,
}

/// One packed array.
#[derive(Clone, Debug, Serialize)]
pub struct LayerMeta {
    /// `ct`, `labels`, `gt`, `uncertainty`.
    pub name: &'static str,
    /// `u8` or `u16` (little-endian).
    pub dtype: &'static str,
    pub dims: [usize; 3],
    /// Full-resolution voxels per sample along R, A, S.
    pub factors: [usize; 3],
    /// Byte offset and length in the inflated stream.
    pub offset: usize,
    pub bytes: usize,
    /// `uncertainty`: the value of code 255 (code × scale / 255).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

/// A case's packed layers: what the page's index says about them, and the gzip stream.
#[derive(Clone, Debug)]
pub struct EncodedCase {
    pub grid: GridMeta,
    pub layers: Vec<LayerMeta>,
    /// Bytes before compression.
    pub raw_bytes: usize,
    pub gzip: Vec<u8>,
}

/// The arrays of one case, all on the output's grid (callers check the shapes).
pub struct CaseArrays<'a> {
    pub labels: ArrayView3<'a, u16>,
    pub affine: &'a Affine,
    pub ct: Option<ArrayView3<'a, f32>>,
    pub gt: Option<ArrayView3<'a, u16>>,
    pub uncertainty: Option<ArrayView3<'a, f32>>,
    /// CT and uncertainty: at most this many samples along R and along A ([`CT_IN_PLANE`]
    /// by default; smaller pages for runs of many cases).
    pub ct_in_plane: usize,
}

fn factors(dims: [usize; 3], in_plane: usize, slices: usize) -> [usize; 3] {
    [
        dims[0].div_ceil(in_plane).max(1),
        dims[1].div_ceil(in_plane).max(1),
        dims[2].div_ceil(slices).max(1),
    ]
}

fn reduced(dims: [usize; 3], f: [usize; 3]) -> [usize; 3] {
    [
        dims[0].div_ceil(f[0]),
        dims[1].div_ceil(f[1]),
        dims[2].div_ceil(f[2]),
    ]
}

/// Block means of `v` (RAS frame) over `f`, x fastest; the last block of an axis averages
/// the voxels that exist.
fn block_means(v: ArrayView3<'_, f32>, f: [usize; 3]) -> (Vec<f32>, [usize; 3]) {
    let dims = [v.len_of(Axis(0)), v.len_of(Axis(1)), v.len_of(Axis(2))];
    let out = reduced(dims, f);
    let planes: Vec<Vec<f32>> = (0..out[2])
        .into_par_iter()
        .map(|zb| {
            let mut sums = vec![0f64; out[0] * out[1]];
            let mut counts = vec![0u32; out[0] * out[1]];
            for z in zb * f[2]..((zb + 1) * f[2]).min(dims[2]) {
                for y in 0..dims[1] {
                    let row = (y / f[1]) * out[0];
                    for x in 0..dims[0] {
                        let val = v[[x, y, z]];
                        if val.is_finite() {
                            sums[row + x / f[0]] += val as f64;
                            counts[row + x / f[0]] += 1;
                        }
                    }
                }
            }
            sums.iter()
                .zip(&counts)
                .map(|(&s, &n)| {
                    if n > 0 {
                        (s / n as f64) as f32
                    } else {
                        f32::NAN
                    }
                })
                .collect()
        })
        .collect();
    (planes.concat(), out)
}

/// The centre voxel of each `f` block of `v` (RAS frame), x fastest.
fn block_centres(v: ArrayView3<'_, u16>, f: [usize; 3]) -> (Vec<u16>, [usize; 3]) {
    let dims = [v.len_of(Axis(0)), v.len_of(Axis(1)), v.len_of(Axis(2))];
    let out = reduced(dims, f);
    let pick = |b: usize, t: usize| (b * f[t] + f[t] / 2).min(dims[t] - 1);
    let planes: Vec<Vec<u16>> = (0..out[2])
        .into_par_iter()
        .map(|zb| {
            let z = pick(zb, 2);
            let mut plane = Vec::with_capacity(out[0] * out[1]);
            for yb in 0..out[1] {
                let y = pick(yb, 1);
                for xb in 0..out[0] {
                    plane.push(v[[pick(xb, 0), y, z]]);
                }
            }
            plane
        })
        .collect();
    (planes.concat(), out)
}

/// Packs layers one after another, each at an even offset.
#[derive(Default)]
struct Packer {
    bytes: Vec<u8>,
    layers: Vec<LayerMeta>,
}

impl Packer {
    fn push(
        &mut self,
        name: &'static str,
        dims: [usize; 3],
        factors: [usize; 3],
        data: LayerData,
        scale: Option<f32>,
    ) {
        if self.bytes.len() % 2 == 1 {
            self.bytes.push(0);
        }
        let offset = self.bytes.len();
        let dtype = match data {
            LayerData::U8(v) => {
                self.bytes.extend_from_slice(&v);
                "u8"
            }
            LayerData::U16(v) => {
                self.bytes.reserve(v.len() * 2);
                for x in v {
                    self.bytes.extend_from_slice(&x.to_le_bytes());
                }
                "u16"
            }
        };
        self.layers.push(LayerMeta {
            name,
            dtype,
            dims,
            factors,
            offset,
            bytes: self.bytes.len() - offset,
            scale,
        });
    }
}

enum LayerData {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

fn label_data(v: Vec<u16>) -> LayerData {
    if v.iter().all(|&x| x <= 255) {
        LayerData::U8(v.into_iter().map(|x| x as u8).collect())
    } else {
        LayerData::U16(v)
    }
}

/// Pack a case (see the module documentation).
pub fn encode_case(a: &CaseArrays<'_>) -> std::io::Result<EncodedCase> {
    use std::io::Write;
    let shape = {
        let s = a.labels.shape();
        [s[0], s[1], s[2]]
    };
    if shape.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an empty label volume ({shape:?} voxels)"),
        ));
    }
    let r = Reorientation::to_codes(a.affine, shape, AxCodes::RAS);
    let dims = r.target_shape();
    let spacing = a.affine.spacing();
    let grid = GridMeta {
        dims,
        spacing: r.perm.map(|p| spacing[p]),
        perm: r.perm,
        flip: r.flip,
        affine: a.affine.0,
        axcodes: a.affine.axcodes().to_string(),
    };
    let mut pack = Packer::default();
    let ct_in_plane = a
        .ct_in_plane
        .clamp(*CT_IN_PLANE_RANGE.start(), *CT_IN_PLANE_RANGE.end());
    let ct_f = factors(dims, ct_in_plane, CT_SLICES);
    if let Some(ct) = &a.ct {
        let (means, out) = block_means(r.view(ct.view()), ct_f);
        let codes = means.par_iter().map(|&h| HuCompander::encode(h)).collect();
        pack.push("ct", out, ct_f, LayerData::U8(codes), None);
    }
    let lab_f = factors(dims, LABELS_IN_PLANE, LABELS_SLICES);
    let (labels, out) = block_centres(r.view(a.labels.view()), lab_f);
    pack.push("labels", out, lab_f, label_data(labels), None);
    if let Some(gt) = &a.gt {
        let (gt, out) = block_centres(r.view(gt.view()), lab_f);
        pack.push("gt", out, lab_f, label_data(gt), None);
    }
    if let Some(u) = &a.uncertainty {
        let (means, out) = block_means(r.view(u.view()), ct_f);
        let max = means
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0f32, f32::max);
        let scale = if max > 0.0 { max } else { 1.0 };
        let codes = means
            .iter()
            .map(|&v| {
                if v.is_finite() {
                    (v.max(0.0) / scale * 255.0).round().min(255.0) as u8
                } else {
                    0
                }
            })
            .collect();
        pack.push("uncertainty", out, ct_f, LayerData::U8(codes), Some(scale));
    }
    let raw_bytes = pack.bytes.len();
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw_bytes / 4),
        flate2::Compression::new(6),
    );
    gz.write_all(&pack.bytes)?;
    let gzip = gz.finish()?;
    Ok(EncodedCase {
        grid,
        layers: pack.layers,
        raw_bytes,
        gzip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use std::io::Read;

    #[test]
    fn companding_is_fine_in_soft_tissue_and_monotone() {
        for hu in [-160.0f32, -40.0, 0.0, 40.0, 100.0, 239.0] {
            let back = HuCompander::decode(HuCompander::encode(hu));
            assert!((back - hu).abs() <= 1.25 + 1e-3, "{hu} -> {back}");
        }
        for hu in [-1000.0f32, -700.0, -500.0] {
            let back = HuCompander::decode(HuCompander::encode(hu));
            assert!((back - hu).abs() <= 10.9, "{hu} -> {back}");
        }
        for hu in [300.0f32, 700.0, 1300.0] {
            let back = HuCompander::decode(HuCompander::encode(hu));
            assert!((back - hu).abs() <= 15.1, "{hu} -> {back}");
        }
        let t = HuCompander::table();
        assert!(t.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(HuCompander::encode(-3000.0), 0);
        assert_eq!(HuCompander::encode(4000.0), 255);
        assert_eq!(HuCompander::encode(f32::NAN), 0);
    }

    fn inflate(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// An LPS grid (DICOM's): the RAS frame flips i and j; a labelled voxel lands where the
    /// flips say, the CT is block-averaged, and labels keep every voxel.
    #[test]
    fn layers_sit_on_the_ras_frame_of_the_output_grid() {
        let shape = (600, 300, 4);
        let affine = Affine([
            [-0.5, 0.0, 0.0, 100.0],
            [0.0, -0.5, 0.0, 50.0],
            [0.0, 0.0, 3.0, -20.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let mut labels = Array3::<u16>::zeros(shape);
        labels[[10, 20, 3]] = 300;
        let ct = Array3::from_shape_fn(shape, |(i, _, _)| if i < 2 { 1000.0 } else { 0.0 });
        let e = encode_case(&CaseArrays {
            labels: labels.view(),
            affine: &affine,
            ct: Some(ct.view()),
            gt: None,
            uncertainty: None,
            ct_in_plane: CT_IN_PLANE,
        })
        .unwrap();
        assert_eq!(e.grid.dims, [600, 300, 4]);
        assert_eq!(e.grid.perm, [0, 1, 2]);
        assert_eq!(e.grid.flip, [true, true, false]);
        assert_eq!(e.grid.axcodes, "LPS");
        let raw = inflate(&e.gzip);
        assert_eq!(raw.len(), e.raw_bytes);
        let ct_l = &e.layers[0];
        assert_eq!(
            (ct_l.name, ct_l.factors, ct_l.dims),
            ("ct", [3, 2, 1], [200, 150, 4])
        );
        // i = 0, 1 are the last two RAS x voxels: the last block (x 597..599) averages
        // 0, 1000 and 1000.
        let ct_bytes = &raw[ct_l.offset..ct_l.offset + ct_l.bytes];
        let last = HuCompander::decode(ct_bytes[199]);
        assert!((last - 666.7).abs() < 16.0, "{last}");
        assert_eq!(
            HuCompander::decode(ct_bytes[198]),
            HuCompander::decode(HuCompander::encode(0.0))
        );
        let lab = &e.layers[1];
        assert_eq!(
            (lab.dtype, lab.factors, lab.dims),
            ("u16", [2, 1, 1], [300, 300, 4])
        );
        assert_eq!(lab.offset % 2, 0);
        let at = |x: usize, y: usize, z: usize| {
            let o = lab.offset + 2 * (x + 300 * (y + 300 * z));
            u16::from_le_bytes([raw[o], raw[o + 1]])
        };
        // x = 599 - 10 = 589 → block 294 (centre voxel 589); y = 299 - 20 = 279.
        assert_eq!(at(294, 279, 3), 300);
        assert_eq!(
            (0..300 * 300 * 4)
                .filter(|&n| {
                    let o = lab.offset + 2 * n;
                    raw[o] != 0 || raw[o + 1] != 0
                })
                .count(),
            1
        );
    }

    /// `--html-ct-size`: the CT (and uncertainty) block-average to the asked size, clamped to
    /// [`CT_IN_PLANE_RANGE`]; the labels keep their own limit.
    #[test]
    fn the_ct_size_is_chosen_by_the_caller() {
        let shape = (600, 300, 4);
        let affine = Affine([
            [0.5, 0.0, 0.0, 0.0],
            [0.0, 0.5, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let labels = Array3::<u16>::zeros(shape);
        let ct = Array3::<f32>::zeros(shape);
        let u = Array3::<f32>::zeros(shape);
        for (asked, ct_dims) in [
            (128, [120, 100, 4]),
            (8, [32, 30, 4]),
            (4096, [300, 300, 4]),
        ] {
            let e = encode_case(&CaseArrays {
                labels: labels.view(),
                affine: &affine,
                ct: Some(ct.view()),
                gt: None,
                uncertainty: Some(u.view()),
                ct_in_plane: asked,
            })
            .unwrap();
            let dims = |name| e.layers.iter().find(|l| l.name == name).unwrap().dims;
            assert_eq!(dims("ct"), ct_dims, "asked {asked}");
            assert_eq!(dims("uncertainty"), ct_dims, "asked {asked}");
            assert_eq!(dims("labels"), [300, 300, 4], "asked {asked}");
        }
    }
}
