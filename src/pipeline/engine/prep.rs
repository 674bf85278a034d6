//! The engine's view of a pipeline: how a volume is cut into model slices and how soft maps
//! become label slices again ([`SlicePrep`]).
//!
//! The engine only needs three things per volume: the exact reorientation into the slicing
//! frame (applied as a *view*, never a copy of the volume), a per-slice preparation into the
//! model's `[3,256,256]` input, and a per-slice finish from soft planes to native-size labels.
//! [`SimplePrep`] implements them from a handful of values (window, normalisation, frame,
//! interpolation) with scipy `zoom` semantics (corner-aligned); the pipeline module's own
//! pre/postprocessing plugs in through the same trait.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};

use super::super::segmenter::{MODEL_SIZE, PLANE_LEN};
use crate::geometry::{AxCodes, Reorientation};
use crate::volume::Volume;

/// Per-volume decisions, made once before slicing.
#[derive(Clone, Debug)]
pub struct VolumePlan {
    /// Takes the stored array to the slicing frame (identity for the native frame).
    pub reorientation: Reorientation,
    /// Affine map applied after windowing: `v · scale + offset` (covers min-max and fixed).
    pub scale: f32,
    pub offset: f32,
}

impl VolumePlan {
    /// Number of slices (length of the slicing frame's third axis).
    pub fn slices(&self) -> usize {
        self.reorientation.target_shape()[2]
    }
    /// Native slice size (rows, columns) in the slicing frame.
    pub fn slice_size(&self) -> [usize; 2] {
        let s = self.reorientation.target_shape();
        [s[0], s[1]]
    }
}

/// The stored array seen in the slicing frame: a permuted/flipped view, no copy.
pub fn frame_view<'a, T>(a: ArrayView3<'a, T>, r: &Reorientation) -> ArrayView3<'a, T> {
    let mut v = a.permuted_axes(r.perm);
    for (t, f) in r.flip.iter().enumerate() {
        if *f {
            v.invert_axis(Axis(t));
        }
    }
    v
}

/// Mutable counterpart of [`frame_view`]: writing slice `k` of the view writes the stored
/// (input-grid) array, so no inverse reorientation copy is needed at the end.
pub fn frame_view_mut<'a, T>(a: ArrayViewMut3<'a, T>, r: &Reorientation) -> ArrayViewMut3<'a, T> {
    let mut v = a.permuted_axes(r.perm);
    for (t, f) in r.flip.iter().enumerate() {
        if *f {
            v.invert_axis(Axis(t));
        }
    }
    v
}

/// How a pipeline turns volumes into model slices and soft maps into labels.
pub trait SlicePrep: Sync {
    /// Name for logs and reports.
    fn name(&self) -> String;
    /// HU window `[lo, hi]` (also used to display previews).
    fn window(&self) -> (f32, f32);
    /// Per-volume plan (reorientation, normalisation constants).
    fn plan(&self, volume: &Volume) -> VolumePlan;
    /// Prepare one native slice (in the slicing frame) into `out` = `[3,256,256]`.
    fn prepare(&self, plan: &VolumePlan, slice: ArrayView2<'_, f32>, out: &mut [f32]);
    /// Turn one slice's soft planes (1 probability plane, or `classes` logit planes, each
    /// 256×256) into class ids at the native slice size.
    fn finish(&self, planes: &[f32], classes: usize, out: ArrayViewMut2<'_, u16>);
}

/// Normalisation after windowing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// Per-volume min-max of the windowed volume to [-1, 1] (`eps` added to the range).
    MinMax { eps: f64 },
    /// `((x − offset) / scale)·2 − 1`.
    Fixed { offset: f64, scale: f64 },
}

/// Resize of soft maps back to the native size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Bilinear on the soft map, then threshold / argmax (default).
    Bilinear,
    /// Nearest neighbour on the soft map.
    Nearest,
}

impl std::str::FromStr for Resize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bilinear" => Ok(Resize::Bilinear),
            "nearest" => Ok(Resize::Nearest),
            _ => Err(format!("resize '{s}': expected bilinear or nearest")),
        }
    }
}

/// A [`SlicePrep`] from plain values.
#[derive(Clone, Debug)]
pub struct SimplePrep {
    pub name: String,
    pub window: (f64, f64),
    pub norm: Norm,
    /// `None` = native frame (slice the stored third axis, as the official code does).
    pub frame: Option<AxCodes>,
    /// Input slices to 256² (official: bilinear).
    pub input_resize: Resize,
    /// Soft maps back to native size.
    pub output_resize: Resize,
}

impl SimplePrep {
    /// BTCV test-time preprocessing (reference §1.2): window [-125, 275], min-max.
    pub fn btcv() -> SimplePrep {
        SimplePrep {
            name: "btcv".into(),
            window: (-125.0, 275.0),
            norm: Norm::MinMax { eps: 0.0 },
            frame: None,
            input_resize: Resize::Bilinear,
            output_resize: Resize::Bilinear,
        }
    }
}

/// Corner-aligned taps along one axis (scipy `zoom`, `grid_mode=False`), clamped at the end.
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let z = if n_out <= 1 {
        1.0
    } else {
        (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
    };
    let last = n_in as f64 - 1.0;
    (0..n_out)
        .map(|o| {
            let c = (o as f64 * z).min(last);
            let s = c.floor();
            let i0 = s as usize;
            (i0, (i0 + 1).min(n_in - 1), (c - s) as f32)
        })
        .collect()
}

fn nearest(n_in: usize, n_out: usize) -> Vec<usize> {
    taps(n_in, n_out)
        .into_iter()
        .map(|(i0, i1, t)| if t >= 0.5 { i1 } else { i0 })
        .collect()
}

impl SlicePrep for SimplePrep {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn window(&self) -> (f32, f32) {
        (self.window.0 as f32, self.window.1 as f32)
    }

    fn plan(&self, volume: &Volume) -> VolumePlan {
        let reorientation = match self.frame {
            None => Reorientation {
                perm: [0, 1, 2],
                flip: [false; 3],
                source_shape: volume.shape(),
            },
            Some(codes) => Reorientation::to_codes(volume.affine(), volume.shape(), codes),
        };
        let (lo, hi) = self.window;
        let (scale, offset) = match self.norm {
            Norm::MinMax { eps } => {
                let (vmin, vmax) = volume.hu_range();
                let a = (vmin as f64).clamp(lo, hi);
                let b = (vmax as f64).clamp(lo, hi);
                let range = b - a + eps;
                if range <= 0.0 {
                    (0.0, -1.0) // constant volume: everything maps to -1 (range 0)
                } else {
                    (2.0 / range, -2.0 * a / range - 1.0)
                }
            }
            Norm::Fixed { offset, scale } => (2.0 / scale, -2.0 * offset / scale - 1.0),
        };
        VolumePlan {
            reorientation,
            scale: scale as f32,
            offset: offset as f32,
        }
    }

    fn prepare(&self, plan: &VolumePlan, slice: ArrayView2<'_, f32>, out: &mut [f32]) {
        let (h, w) = slice.dim();
        let (lo, hi) = self.window();
        let norm = |v: f32| v.clamp(lo, hi) * plan.scale + plan.offset;
        let (plane, rest) = out.split_at_mut(PLANE_LEN);
        match self.input_resize {
            Resize::Bilinear => {
                let rows = taps(h, MODEL_SIZE);
                let cols = taps(w, MODEL_SIZE);
                for (r, &(r0, r1, tr)) in rows.iter().enumerate() {
                    let a = slice.row(r0);
                    let b = slice.row(r1);
                    let dst = &mut plane[r * MODEL_SIZE..(r + 1) * MODEL_SIZE];
                    for (d, &(c0, c1, tc)) in dst.iter_mut().zip(&cols) {
                        let top = norm(a[c0]) * (1.0 - tc) + norm(a[c1]) * tc;
                        let bot = norm(b[c0]) * (1.0 - tc) + norm(b[c1]) * tc;
                        *d = top * (1.0 - tr) + bot * tr;
                    }
                }
            }
            Resize::Nearest => {
                let rows = nearest(h, MODEL_SIZE);
                let cols = nearest(w, MODEL_SIZE);
                for (r, &r0) in rows.iter().enumerate() {
                    let a = slice.row(r0);
                    let dst = &mut plane[r * MODEL_SIZE..(r + 1) * MODEL_SIZE];
                    for (d, &c0) in dst.iter_mut().zip(&cols) {
                        *d = norm(a[c0]);
                    }
                }
            }
        }
        rest[..PLANE_LEN].copy_from_slice(plane);
        rest[PLANE_LEN..].copy_from_slice(plane);
    }

    fn finish(&self, planes: &[f32], classes: usize, mut out: ArrayViewMut2<'_, u16>) {
        let (h, w) = out.dim();
        let n_planes = planes.len() / PLANE_LEN;
        type Sampler = Box<dyn Fn(&[f32], usize, usize) -> f32 + Sync>;
        let sample: Sampler = match self.output_resize {
            Resize::Bilinear => {
                let rows = taps(MODEL_SIZE, h);
                let cols = taps(MODEL_SIZE, w);
                Box::new(move |p: &[f32], r: usize, c: usize| {
                    let (r0, r1, tr) = rows[r];
                    let (c0, c1, tc) = cols[c];
                    let top = p[r0 * MODEL_SIZE + c0] * (1.0 - tc) + p[r0 * MODEL_SIZE + c1] * tc;
                    let bot = p[r1 * MODEL_SIZE + c0] * (1.0 - tc) + p[r1 * MODEL_SIZE + c1] * tc;
                    top * (1.0 - tr) + bot * tr
                })
            }
            Resize::Nearest => {
                let rows = nearest(MODEL_SIZE, h);
                let cols = nearest(MODEL_SIZE, w);
                Box::new(move |p: &[f32], r: usize, c: usize| p[rows[r] * MODEL_SIZE + cols[c]])
            }
        };
        for r in 0..h {
            for c in 0..w {
                out[[r, c]] = if n_planes == 1 || classes <= 2 {
                    u16::from(sample(&planes[..PLANE_LEN], r, c) > 0.5)
                } else {
                    let mut best = 0usize;
                    let mut best_v = f32::NEG_INFINITY;
                    for k in 0..n_planes {
                        let v = sample(&planes[k * PLANE_LEN..(k + 1) * PLANE_LEN], r, c);
                        if v > best_v {
                            best = k;
                            best_v = v;
                        }
                    }
                    best as u16
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Affine;
    use crate::volume::Provenance;
    use ndarray::{Array2, Array3};

    #[test]
    fn taps_are_corner_aligned() {
        let t = taps(512, 256);
        assert_eq!(t[0], (0, 1, 0.0));
        assert_eq!(t[255].0, 511);
        let t = taps(256, 256);
        assert!(t
            .iter()
            .enumerate()
            .all(|(i, &(a, _, w))| a == i && w == 0.0));
    }

    #[test]
    fn prepare_windows_normalises_and_replicates() {
        let data = Array3::from_shape_fn((4, 3, 2), |(i, j, _)| -200.0 + 100.0 * (i + j) as f32);
        let vol = Volume::new(data, Affine::IDENTITY, Provenance::synthetic()).unwrap();
        let prep = SimplePrep::btcv();
        let plan = prep.plan(&vol);
        // clipped range [-125, 275] → [-1, 1]
        assert!((plan.scale * -125.0 + plan.offset + 1.0).abs() < 1e-6);
        assert!((plan.scale * 275.0 + plan.offset - 1.0).abs() < 1e-6);
        let view = frame_view(vol.data().view(), &plan.reorientation);
        let mut out = vec![0f32; 3 * PLANE_LEN];
        prep.prepare(&plan, view.index_axis(Axis(2), 0), &mut out);
        assert!(
            (out[0] + 1.0).abs() < 1e-6,
            "corner (0,0) is -200 → clipped → -1"
        );
        assert!(
            (out[PLANE_LEN - 1] - 1.0).abs() < 1e-6,
            "corner (3,2) = 300 → 1"
        );
        assert_eq!(out[..PLANE_LEN], out[PLANE_LEN..2 * PLANE_LEN]);
        assert_eq!(out[..PLANE_LEN], out[2 * PLANE_LEN..]);
    }

    #[test]
    fn finish_thresholds_and_argmaxes_at_native_size() {
        let prep = SimplePrep::btcv();
        let mut p = vec![0f32; PLANE_LEN];
        for r in 0..MODEL_SIZE {
            for c in 128..MODEL_SIZE {
                p[r * MODEL_SIZE + c] = 1.0;
            }
        }
        let mut out = Array2::<u16>::zeros((5, 9));
        prep.finish(&p, 2, out.view_mut());
        // column 4 samples 127.5: halfway between 0 and 1 is 0.5, not above the threshold
        assert_eq!(out.row(0).to_vec(), vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
        let mut l = vec![0f32; 3 * PLANE_LEN];
        l[2 * PLANE_LEN..].iter_mut().for_each(|v| *v = 1.0);
        prep.finish(&l, 3, out.view_mut());
        assert!(out.iter().all(|&v| v == 2));
    }

    #[test]
    fn frame_views_write_through_to_the_stored_grid() {
        let mut labels = Array3::<u16>::zeros((2, 3, 4));
        let r = Reorientation {
            perm: [2, 0, 1],
            flip: [true, false, false],
            source_shape: [2, 3, 4],
        };
        {
            let mut v = frame_view_mut(labels.view_mut(), &r);
            assert_eq!(v.dim(), (4, 2, 3));
            v[[0, 1, 2]] = 7;
        }
        // target (0,1,2) → source axis perm: i = t1 = 1, j = t2 = 2, k = 3 - t0 = 3
        assert_eq!(labels[[1, 2, 3]], 7);
    }
}
