//! Volume → model slices: reorient to the slicing frame, window, normalise, resize.
//!
//! The order and arithmetic follow the official evaluation (reference §1.2): the whole
//! volume is windowed and normalised in f64 (nibabel's `get_fdata` arrays), *then* each slice
//! `image[:, :, k]` is zoomed to 256×256 with `scipy.ndimage.zoom(order=1)` semantics
//! ([`super::resize`]), and the result becomes f32 once at the end.
//!
//! Axis convention: in the slicing frame a volume is `data[i, j, k]`; slice `k` is the
//! `[n_i, n_j]` image `data[:, :, k]`, whose rows (model H) are `i` and columns (model W) are
//! `j`. Model input is NCHW `[B, 3, S, S]` with the slice replicated to the 3 channels.
//!
//! Work is per slice so an engine can prepare batches lazily on rayon threads:
//! [`SliceSource::new`] computes the per-volume statistics once, then
//! [`SliceSource::prepare_slice`] / [`SliceSource::model_input`] produce any slices on demand.
//! [`SliceGeometry`] is what the forward transform records; `postprocess` inverts with it.

use super::config::{Interpolation, Normalise, Pipeline, Remap, SliceFrame, Window};
use super::resize::{zoom_linear_f64, zoom_nearest, Edge};
use crate::geometry::{Affine, Reorientation};
use crate::volume::Volume;
use ndarray::parallel::prelude::*;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, CowArray, Ix3};
use rayon::prelude::*;
use std::ops::Range;

/// Errors of preprocessing inputs that come with a volume (label volumes for training and
/// scoring). Always the user's input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(
        "label volume has shape {got:?} but its image has shape {expected:?}; \
         the label must be on the image's grid"
    )]
    LabelShape {
        expected: [usize; 3],
        got: [usize; 3],
    },
}

impl crate::error::Classify for PreprocessError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Clip one HU value to the window (in f64, like numpy on `get_fdata` arrays). NaN voxels
/// (possible only in float NIfTI files) are treated as `hu_min`, so they never reach the model.
#[inline]
pub fn window_hu(hu: f32, window: &Window) -> f64 {
    if hu.is_nan() {
        window.hu_min
    } else {
        f64::from(hu).clamp(window.hu_min, window.hu_max)
    }
}

/// A volume's normalisation reduced to numbers: `out = ((clip(x) − offset) / scale)·2 − 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormStats {
    pub window: Window,
    pub offset: f64,
    pub scale: f64,
    /// Minimum and maximum of the windowed volume (what min-max mode uses).
    pub windowed_min: f64,
    pub windowed_max: f64,
}

impl NormStats {
    /// Statistics over the whole windowed volume, as the official code computes them.
    ///
    /// Min-max mode: offset = min, scale = (max − min) + eps. A constant windowed volume with
    /// `eps = 0` (a division by zero in the official code) gets scale 1, so it maps to −1.
    pub fn for_volume(data: ArrayView3<'_, f32>, window: &Window, normalise: &Normalise) -> Self {
        let (lo, hi, has_nan) = data
            .into_par_iter()
            .fold(
                || (f32::INFINITY, f32::NEG_INFINITY, false),
                |(lo, hi, nan), &v| {
                    if v.is_nan() {
                        (lo, hi, true)
                    } else {
                        (lo.min(v), hi.max(v), nan)
                    }
                },
            )
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY, false),
                |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 || b.2),
            );
        let (mut wmin, mut wmax) = if lo <= hi {
            (window_hu(lo, window), window_hu(hi, window))
        } else {
            (window.hu_min, window.hu_min) // no non-NaN voxel at all
        };
        if has_nan {
            wmin = wmin.min(window.hu_min);
            wmax = wmax.max(window.hu_min);
        }
        let (offset, scale) = match *normalise {
            Normalise::MinMax { eps } => {
                let s = (wmax - wmin) + eps;
                (wmin, if s > 0.0 { s } else { 1.0 })
            }
            Normalise::Fixed { offset, scale } => (offset, scale),
        };
        NormStats {
            window: *window,
            offset,
            scale,
            windowed_min: wmin,
            windowed_max: wmax,
        }
    }

    /// The normalised value of one HU voxel, in f64.
    #[inline]
    pub fn apply(&self, hu: f32) -> f64 {
        ((window_hu(hu, &self.window) - self.offset) / self.scale) * 2.0 - 1.0
    }
}

/// What slicing did to a volume; postprocessing inverts it with this (nnU-Net style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceGeometry {
    /// Input grid → slicing frame (the identity for `frame = "native"`). Its
    /// `source_shape` is the input shape; its inverse restores the input grid exactly.
    pub reorientation: Reorientation,
    /// In-plane size `[n_i, n_j]` of every slice in the slicing frame (H, W before resizing).
    pub native_size: [usize; 2],
    /// Number of slices (`n_k` in the slicing frame).
    pub n_slices: usize,
    /// Model slice size S (the model sees S×S).
    pub model_size: usize,
}

impl SliceGeometry {
    /// The geometry for a volume of `shape` with `affine`, sliced in `frame` at `model_size`.
    pub fn new(
        shape: [usize; 3],
        affine: &Affine,
        frame: SliceFrame,
        model_size: usize,
    ) -> SliceGeometry {
        let reorientation = match frame {
            SliceFrame::Native => Reorientation {
                perm: [0, 1, 2],
                flip: [false; 3],
                source_shape: shape,
            },
            SliceFrame::Oriented(codes) => Reorientation::to_codes(affine, shape, codes),
        };
        let t = reorientation.target_shape();
        SliceGeometry {
            reorientation,
            native_size: [t[0], t[1]],
            n_slices: t[2],
            model_size,
        }
    }

    /// Shape of the input volume.
    pub fn input_shape(&self) -> [usize; 3] {
        self.reorientation.source_shape
    }

    /// Shape of the volume in the slicing frame `[n_i, n_j, n_slices]`.
    pub fn frame_shape(&self) -> [usize; 3] {
        self.reorientation.target_shape()
    }
}

/// A volume ready to be cut into model slices on demand (cheap to share across threads).
pub struct SliceSource<'a> {
    data: CowArray<'a, f32, Ix3>,
    stats: NormStats,
    geometry: SliceGeometry,
    interpolation: Interpolation,
}

impl<'a> SliceSource<'a> {
    /// Reorient `volume` to the pipeline's slicing frame (borrowing it when no reorientation
    /// is needed) and compute its normalisation statistics.
    pub fn new(volume: &'a Volume, pipeline: &Pipeline) -> SliceSource<'a> {
        let geometry = SliceGeometry::new(
            volume.shape(),
            volume.affine(),
            pipeline.slicing.frame,
            pipeline.slicing.size,
        );
        let data = if geometry.reorientation.is_identity() {
            CowArray::from(volume.data().view())
        } else {
            CowArray::from(geometry.reorientation.apply_array(volume.data().view()))
        };
        let stats = NormStats::for_volume(data.view(), &pipeline.window, &pipeline.normalise);
        SliceSource {
            data,
            stats,
            geometry,
            interpolation: pipeline.slicing.resize,
        }
    }

    /// The same source owning its voxels (copies them only if borrowed), e.g. to move it
    /// into a worker thread.
    pub fn into_owned(self) -> SliceSource<'static> {
        SliceSource {
            data: CowArray::from(self.data.into_owned()),
            stats: self.stats,
            geometry: self.geometry,
            interpolation: self.interpolation,
        }
    }

    pub fn geometry(&self) -> &SliceGeometry {
        &self.geometry
    }

    pub fn stats(&self) -> &NormStats {
        &self.stats
    }

    pub fn n_slices(&self) -> usize {
        self.geometry.n_slices
    }

    /// Slice `k` windowed and normalised at its native size `[n_i, n_j]`, in f64.
    pub fn normalised_native_slice(&self, k: usize) -> Array2<f64> {
        self.data
            .index_axis(Axis(2), k)
            .mapv(|v| self.stats.apply(v))
    }

    /// Slice `k` as the model sees it: S×S f32 (in [-1, 1] for min-max normalisation).
    ///
    /// Panics if `k >= n_slices()` (a caller bug, like indexing).
    pub fn prepare_slice(&self, k: usize) -> Array2<f32> {
        let norm = self.normalised_native_slice(k);
        let s = self.geometry.model_size;
        let out = if norm.dim() == (s, s) {
            // No resize (native size = S): the slice of a column-major volume is column-major;
            // callers get row-major (standard layout) like the zoomed slices.
            norm.as_standard_layout().into_owned()
        } else {
            match self.interpolation {
                Interpolation::Bilinear => zoom_linear_f64(norm.view(), [s, s], Edge::Scipy),
                Interpolation::Nearest => zoom_nearest(norm.view(), [s, s], Edge::Scipy),
            }
        };
        out.mapv(|v| v as f32)
    }

    /// Slices `ks` prepared in parallel (rayon).
    pub fn prepare_slices(&self, ks: Range<usize>) -> Vec<Array2<f32>> {
        ks.into_par_iter().map(|k| self.prepare_slice(k)).collect()
    }

    /// Slices `ks` as one NCHW batch `[ks.len(), 3, S, S]` (channel-replicated), in parallel.
    pub fn model_input(&self, ks: Range<usize>) -> Vec<f32> {
        let plane = self.geometry.model_size * self.geometry.model_size;
        let mut out = vec![0f32; ks.len() * 3 * plane];
        out.par_chunks_mut(3 * plane)
            .zip(ks.into_par_iter())
            .for_each(|(dst, k)| {
                let s = self.prepare_slice(k);
                let src = s
                    .as_slice()
                    .expect("prepare_slice returns a standard-layout array");
                for c in 0..3 {
                    dst[c * plane..(c + 1) * plane].copy_from_slice(src);
                }
            });
        out
    }

    /// Every slice, `[n_slices, S, S]`.
    pub fn prepare_all(&self) -> Array3<f32> {
        let s = self.geometry.model_size;
        let slices = self.prepare_slices(0..self.n_slices());
        let mut out = Array3::<f32>::zeros((slices.len(), s, s));
        for (mut dst, src) in out.outer_iter_mut().zip(&slices) {
            dst.assign(src);
        }
        out
    }
}

/// Whole-volume convenience: every slice prepared, `[n_slices, S, S]`, and the geometry
/// postprocessing needs.
pub fn prepare_slices(volume: &Volume, pipeline: &Pipeline) -> (Array3<f32>, SliceGeometry) {
    let src = SliceSource::new(volume, pipeline);
    (src.prepare_all(), src.geometry().clone())
}

/// NCHW model input `[B, 3, S, S]` from B single-channel S×S slices (replicated to 3
/// channels, as the official code's `repeat(1, 1, 1, 3)`). All slices must have one shape.
pub fn to_model_input(slices: &[ArrayView2<'_, f32>]) -> Vec<f32> {
    let Some(first) = slices.first() else {
        return Vec::new();
    };
    let (h, w) = first.dim();
    let plane = h * w;
    let mut out = Vec::with_capacity(slices.len() * 3 * plane);
    for s in slices {
        assert_eq!(s.dim(), (h, w), "to_model_input: slices differ in shape");
        let flat: Vec<f32> = s.iter().copied().collect();
        for _ in 0..3 {
            out.extend_from_slice(&flat);
        }
    }
    out
}

/// Label slices at model resolution, for training and the official 256² scoring protocol:
/// the label volume (on the image's input grid) is reoriented like its image, remapped to
/// model classes, and slice `k` is zoomed to S×S with `zoom(order=0)` semantics.
pub struct LabelSlices<'a> {
    data: CowArray<'a, u16, Ix3>,
    geometry: SliceGeometry,
    lut: Option<Vec<u16>>,
}

impl<'a> LabelSlices<'a> {
    pub fn new(
        labels: &'a Array3<u16>,
        geometry: &SliceGeometry,
        remap: &Remap,
    ) -> Result<LabelSlices<'a>, PreprocessError> {
        let s = labels.shape();
        let got = [s[0], s[1], s[2]];
        if got != geometry.input_shape() {
            return Err(PreprocessError::LabelShape {
                expected: geometry.input_shape(),
                got,
            });
        }
        let data = if geometry.reorientation.is_identity() {
            CowArray::from(labels.view())
        } else {
            CowArray::from(geometry.reorientation.apply_array(labels.view()))
        };
        let lut = (!remap.is_identity()).then(|| {
            let max = data.iter().copied().max().unwrap_or(0);
            remap.lut(max)
        });
        Ok(LabelSlices {
            data,
            geometry: geometry.clone(),
            lut,
        })
    }

    /// Remapped label slice `k` at its native size `[n_i, n_j]`.
    pub fn native_slice(&self, k: usize) -> Array2<u16> {
        let s = self.data.index_axis(Axis(2), k);
        match &self.lut {
            Some(lut) => s.mapv(|v| lut[v as usize]),
            None => s.to_owned(),
        }
    }

    /// Remapped label slice `k` at S×S (nearest, scipy `order=0`).
    pub fn slice(&self, k: usize) -> Array2<u16> {
        let n = self.native_slice(k);
        let s = self.geometry.model_size;
        if n.dim() == (s, s) {
            n
        } else {
            zoom_nearest(n.view(), [s, s], Edge::Scipy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn stats_minmax_and_fixed() {
        let d = Array3::from_shape_vec((1, 1, 4), vec![-1000.0f32, 0.0, 100.0, 3000.0]).unwrap();
        let w = Window {
            hu_min: -125.0,
            hu_max: 275.0,
        };
        let s = NormStats::for_volume(d.view(), &w, &Normalise::MinMax { eps: 0.0 });
        assert_eq!((s.windowed_min, s.windowed_max), (-125.0, 275.0));
        assert_eq!(s.apply(-1000.0), -1.0);
        assert_eq!(s.apply(275.0), 1.0);
        assert_eq!(s.apply(75.0), 0.0);
        let f = NormStats::for_volume(
            d.view(),
            &Window {
                hu_min: -175.0,
                hu_max: 250.0,
            },
            &Normalise::Fixed {
                offset: -125.0,
                scale: 400.0,
            },
        );
        assert_eq!(f.apply(-1000.0), -1.25);
        assert_eq!(f.apply(1000.0), 0.875);
        assert_eq!(f.apply(75.0), 0.0);
    }

    /// Native in-plane size = S (no resize): the column-major slice still comes out row-major,
    /// so `model_input` lays it out like a zoomed one.
    #[test]
    fn unresized_slices_are_row_major() {
        let ph =
            crate::phantom::abdomen_phantom(&crate::phantom::PhantomParams::new([16, 16, 2]), 1);
        let mut p = Pipeline::load("btcv").unwrap();
        p.slicing.size = 16;
        let src = SliceSource::new(&ph.volume, &p);
        let one = src.prepare_slice(1);
        assert!(one.is_standard_layout());
        let batch = src.model_input(0..2);
        let want: Vec<f32> = one.iter().copied().collect();
        assert_eq!(&batch[3 * 256..4 * 256], &want[..]);
    }

    #[test]
    fn slice_source_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SliceSource<'static>>();
        assert_send_sync::<LabelSlices<'static>>();
    }

    #[test]
    fn constant_and_nan_volumes_do_not_divide_by_zero() {
        let w = Window {
            hu_min: -100.0,
            hu_max: 100.0,
        };
        let d = Array3::from_elem((2, 2, 2), 50.0f32);
        let s = NormStats::for_volume(d.view(), &w, &Normalise::MinMax { eps: 0.0 });
        assert_eq!(s.apply(50.0), -1.0);
        let d = Array3::from_shape_vec((1, 1, 2), vec![f32::NAN, 100.0]).unwrap();
        let s = NormStats::for_volume(d.view(), &w, &Normalise::MinMax { eps: 0.0 });
        assert_eq!(s.apply(f32::NAN), -1.0);
        assert_eq!(s.apply(100.0), 1.0);
    }
}
