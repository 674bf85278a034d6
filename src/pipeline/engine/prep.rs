//! The engine's view of a pipeline ([`Slicer`]): the exact reorientation into the slicing
//! frame, applied as a *view* (never a copy of the volume), per-slice preparation into the
//! model's `[3,S,S]` input, and per-slice finish from soft planes to native-size labels.
//!
//! The arithmetic is `preprocess` / `postprocess`'s own (window and normalisation in f64 with
//! the volume's [`NormStats`], scipy-exact zoom, then f32; resize back and threshold/argmax
//! with [`ResizeBack`]); only the access pattern differs: slices are read through
//! [`Reorientation::view`](crate::geometry::Reorientation::view) of the stored array and label
//! slices written through its `view_mut` of the label volume on the input grid, so neither the
//! volume nor the labels are copied to or from the slicing frame.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2};

use crate::pipeline::config::{Interpolation, Pipeline};
use crate::pipeline::postprocess::{
    binary_slice_to_native, logits_slice_to_native, PostprocessError, ResizeBack,
};
use crate::pipeline::preprocess::{NormStats, SliceGeometry};
use crate::pipeline::resize::{zoom_linear_f64, zoom_nearest, Edge};
use crate::volume::Volume;

/// Per-volume decisions, made once before slicing.
#[derive(Clone, Debug)]
pub struct VolumePlan {
    pub geometry: SliceGeometry,
    pub stats: NormStats,
}

impl VolumePlan {
    pub fn slices(&self) -> usize {
        self.geometry.n_slices
    }
}

/// A pipeline and the resize-back choice of a run.
#[derive(Clone, Debug)]
pub struct Slicer {
    pub pipeline: Pipeline,
    pub resize: ResizeBack,
}

impl Slicer {
    pub fn new(pipeline: Pipeline, resize: ResizeBack) -> Slicer {
        Slicer { pipeline, resize }
    }

    /// Model slice size S.
    pub fn model_size(&self) -> usize {
        self.pipeline.slicing.size
    }

    /// HU window `[lo, hi]` (also the preview's display window).
    pub fn window(&self) -> (f32, f32) {
        (
            self.pipeline.window.hu_min as f32,
            self.pipeline.window.hu_max as f32,
        )
    }

    /// Geometry and normalisation statistics of a volume (min/max do not depend on the
    /// orientation, so they are taken on the stored grid).
    pub fn plan(&self, volume: &Volume) -> VolumePlan {
        let p = &self.pipeline;
        VolumePlan {
            geometry: SliceGeometry::new(
                volume.shape(),
                volume.affine(),
                p.slicing.frame,
                p.slicing.size,
            ),
            stats: NormStats::for_volume(volume.data().view(), &p.window, &p.normalise),
        }
    }

    /// One native slice (in the slicing frame) into `out` = `[3,S,S]`: exactly
    /// `SliceSource::prepare_slice`, replicated to 3 channels.
    pub fn prepare(&self, plan: &VolumePlan, slice: ArrayView2<'_, f32>, out: &mut [f32]) {
        let s = self.model_size();
        let norm = slice.mapv(|v| plan.stats.apply(v));
        let img = if norm.dim() == (s, s) {
            norm
        } else {
            match self.pipeline.slicing.resize {
                Interpolation::Bilinear => zoom_linear_f64(norm.view(), [s, s], Edge::Scipy),
                Interpolation::Nearest => zoom_nearest(norm.view(), [s, s], Edge::Scipy),
            }
        };
        let plane = s * s;
        for (d, v) in out[..plane].iter_mut().zip(img.iter()) {
            *d = *v as f32;
        }
        let (first, rest) = out.split_at_mut(plane);
        rest[..plane].copy_from_slice(first);
        rest[plane..].copy_from_slice(first);
    }

    /// One slice's soft planes (1 probability plane, or K logit planes, each S×S) → class ids
    /// at the native slice size, written into `out`.
    pub fn finish(
        &self,
        plan: &VolumePlan,
        planes: &[f32],
        mut out: ArrayViewMut2<'_, u16>,
    ) -> Result<(), PostprocessError> {
        let s = self.model_size();
        let k = planes.len() / (s * s);
        let shape_err = || PostprocessError::Shape {
            expected: vec![k, s, s],
            got: vec![planes.len()],
        };
        let labels = if k == 1 {
            let p = ArrayView2::from_shape((s, s), planes).map_err(|_| shape_err())?;
            binary_slice_to_native(p, &plan.geometry, self.resize)?
        } else {
            let l = ArrayView3::from_shape((k, s, s), planes).map_err(|_| shape_err())?;
            logits_slice_to_native(l, &plan.geometry, self.resize)?
        };
        out.assign(&labels);
        Ok(())
    }

    /// One slice's uncertainty plane (S×S) at the native slice size (bilinear, as the soft
    /// maps), written into `out`.
    pub fn finish_uncertainty(
        &self,
        plan: &VolumePlan,
        plane: &[f32],
        mut out: ArrayViewMut2<'_, f32>,
    ) -> Result<(), PostprocessError> {
        let s = self.model_size();
        let u = ArrayView2::from_shape((s, s), plane).map_err(|_| PostprocessError::Shape {
            expected: vec![s, s],
            got: vec![plane.len()],
        })?;
        let native = plan.geometry.native_size;
        if native == [s, s] {
            out.assign(&u);
        } else {
            let z = crate::pipeline::resize::zoom_linear_f64(
                u.mapv(f64::from).view(),
                native,
                crate::pipeline::resize::Edge::Clamp,
            );
            out.zip_mut_with(&z, |o, &v| *o = v as f32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Affine, AxCodes};
    use crate::pipeline::config::SliceFrame;
    use crate::pipeline::preprocess::SliceSource;
    use crate::volume::Provenance;
    use ndarray::{Array2, Array3, Axis};

    fn oblique_volume() -> Volume {
        let data = Array3::from_shape_fn((37, 29, 6), |(i, j, k)| {
            -300.0 + 13.0 * i as f32 + 7.0 * ((j * k) % 11) as f32
        });
        let mut a = Affine::from_spacing([0.9, 0.8, 3.0]);
        a.0[0][0] = -0.9;
        a.0[1][1] = -0.8;
        Volume::new(data, a, Provenance::synthetic()).unwrap()
    }

    #[test]
    fn prepare_equals_the_pipeline_preprocessing_in_any_frame() {
        let vol = oblique_volume();
        for frame in [SliceFrame::Native, SliceFrame::Oriented(AxCodes::RAS)] {
            let mut pipeline = Pipeline::load("btcv").unwrap();
            pipeline.slicing.frame = frame;
            let slicer = Slicer::new(pipeline.clone(), ResizeBack::Bilinear);
            let plan = slicer.plan(&vol);
            let src = SliceSource::new(&vol, &pipeline);
            assert_eq!(&plan.geometry, src.geometry());
            let view = plan.geometry.reorientation.view(vol.data().view());
            let mut out = vec![0f32; 3 * 256 * 256];
            for k in 0..plan.slices() {
                slicer.prepare(&plan, view.index_axis(Axis(2), k), &mut out);
                let want = src.prepare_slice(k);
                let want = want.as_slice().unwrap();
                assert_eq!(&out[..65536], want, "{frame}: slice {k}");
                assert_eq!(&out[65536..131072], want);
                assert_eq!(&out[131072..], want);
            }
        }
    }

    #[test]
    fn finish_thresholds_and_argmaxes_at_native_size() {
        let vol = Volume::new(
            Array3::zeros((5, 9, 2)),
            Affine::IDENTITY,
            Provenance::synthetic(),
        )
        .unwrap();
        let slicer = Slicer::new(Pipeline::load("btcv").unwrap(), ResizeBack::Bilinear);
        let plan = slicer.plan(&vol);
        let mut p = vec![0f32; 65536];
        for r in 0..256 {
            for c in 128..256 {
                p[r * 256 + c] = 1.0;
            }
        }
        let mut out = Array2::<u16>::zeros((5, 9));
        slicer.finish(&plan, &p, out.view_mut()).unwrap();
        // column 4 samples 127.5: halfway between 0 and 1 is 0.5, not above the threshold
        assert_eq!(out.row(0).to_vec(), vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
        let mut l = vec![0f32; 3 * 65536];
        l[2 * 65536..].iter_mut().for_each(|v| *v = 1.0);
        slicer.finish(&plan, &l, out.view_mut()).unwrap();
        assert!(out.iter().all(|&v| v == 2));
        assert!(slicer.finish(&plan, &l[..100], out.view_mut()).is_err());
    }
}
