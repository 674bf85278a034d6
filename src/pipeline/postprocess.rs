//! Model outputs → label volume on the input grid: the inverse of `preprocess`, driven by the
//! [`SliceGeometry`] it returned.
//!
//! Per slice: the S×S soft map (binary probability) or per-class logits `[K, S, S]` are resized
//! back to the slice's native size `[n_i, n_j]` and then decided (`p > 0.5`, or argmax), or,
//! with [`ResizeBack::Nearest`], decided at S×S and the label map resized with nearest
//! neighbour (the official code's commented-out `zoom(prediction, (x/256, y/256), order=0)`).
//! Resizing uses the same corner-aligned grid as the forward `zoom(order=1)`, clamping the
//! last coordinate (see [`Edge::Clamp`]). A [`Reassembler`] stacks slices along axis 2 of
//! the slicing frame and undoes the reorientation.

use super::config::Remap;
use super::preprocess::SliceGeometry;
use super::resize::{zoom_linear_f64, zoom_nearest, zoom_nearest_inplane, Edge};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, Zip};
use std::fmt;
use std::str::FromStr;

/// How per-slice predictions return to the native slice size (`--resize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResizeBack {
    /// Bilinear on the soft map / logits, then threshold / argmax (default).
    #[default]
    Bilinear,
    /// Threshold / argmax at S×S, then nearest-neighbour on the label map.
    Nearest,
}

impl FromStr for ResizeBack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bilinear" | "linear" => Ok(ResizeBack::Bilinear),
            "nearest" => Ok(ResizeBack::Nearest),
            other => Err(format!(
                "resize '{other}': expected 'bilinear' or 'nearest'"
            )),
        }
    }
}

impl fmt::Display for ResizeBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResizeBack::Bilinear => "bilinear",
            ResizeBack::Nearest => "nearest",
        })
    }
}

/// Postprocessing misuse: wrong output shapes or slice bookkeeping. These are program
/// errors (exit code 1), never the user's input.
#[derive(Debug, thiserror::Error)]
pub enum PostprocessError {
    #[error("model output has shape {got:?}, expected {expected:?}")]
    Shape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("slice {slice} is outside the volume ({n_slices} slices)")]
    SliceOutOfRange { slice: usize, n_slices: usize },
    #[error("slice {slice} was reassembled twice")]
    Duplicate { slice: usize },
    #[error("{missing} of {n_slices} slices have no prediction (first missing: {first})")]
    Missing {
        missing: usize,
        n_slices: usize,
        first: usize,
    },
}

impl crate::error::Classify for PostprocessError {
    fn is_input_error(&self) -> bool {
        false
    }
}

fn check_shape(expected: &[usize], got: &[usize]) -> Result<(), PostprocessError> {
    if expected == got {
        Ok(())
    } else {
        Err(PostprocessError::Shape {
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

/// Binary: an S×S probability map (the channel mean of the clamped decoded image) → a
/// native-size label slice (1 where `p > 0.5`, else 0).
pub fn binary_slice_to_native(
    prob: ArrayView2<'_, f32>,
    geometry: &SliceGeometry,
    resize: ResizeBack,
) -> Result<Array2<u16>, PostprocessError> {
    let s = geometry.model_size;
    check_shape(&[s, s], prob.shape())?;
    let native = geometry.native_size;
    Ok(match resize {
        ResizeBack::Bilinear => {
            let p = prob.mapv(f64::from);
            let p = if native == [s, s] {
                p
            } else {
                zoom_linear_f64(p.view(), native, Edge::Clamp)
            };
            p.mapv(|v| u16::from(v > 0.5))
        }
        ResizeBack::Nearest => {
            let m = prob.mapv(|v| u16::from(v > 0.5));
            labels_slice_to_native(m.view(), geometry)?
        }
    })
}

/// Multi-class: per-class logits `[K, S, S]` (class-0 map already negated, as the official
/// merge does) → native-size label slice of class ids (argmax; ties go to the lower id, as
/// numpy's argmax).
pub fn logits_slice_to_native(
    logits: ArrayView3<'_, f32>,
    geometry: &SliceGeometry,
    resize: ResizeBack,
) -> Result<Array2<u16>, PostprocessError> {
    let s = geometry.model_size;
    let k = logits.shape()[0];
    if k == 0 || k > u16::MAX as usize {
        return Err(PostprocessError::Shape {
            expected: vec![1, s, s],
            got: logits.shape().to_vec(),
        });
    }
    check_shape(&[k, s, s], logits.shape())?;
    let native = geometry.native_size;
    match resize {
        ResizeBack::Bilinear => {
            let mut best = Array2::<f64>::from_elem((native[0], native[1]), f64::NEG_INFINITY);
            let mut arg = Array2::<u16>::zeros((native[0], native[1]));
            for (c, map) in logits.outer_iter().enumerate() {
                let m = map.mapv(f64::from);
                let m = if native == [s, s] {
                    m
                } else {
                    zoom_linear_f64(m.view(), native, Edge::Clamp)
                };
                Zip::from(&mut best)
                    .and(&mut arg)
                    .and(&m)
                    .for_each(|b, a, &v| {
                        if v > *b {
                            *b = v;
                            *a = c as u16;
                        }
                    });
            }
            Ok(arg)
        }
        ResizeBack::Nearest => {
            let arg = argmax_classes(logits);
            labels_slice_to_native(arg.view(), geometry)
        }
    }
}

/// Argmax over axis 0 of `[K, H, W]` logits (first maximum wins).
pub fn argmax_classes(logits: ArrayView3<'_, f32>) -> Array2<u16> {
    let (_, h, w) = logits.dim();
    let mut best = Array2::<f32>::from_elem((h, w), f32::NEG_INFINITY);
    let mut arg = Array2::<u16>::zeros((h, w));
    for (c, map) in logits.outer_iter().enumerate() {
        Zip::from(&mut best)
            .and(&mut arg)
            .and(&map)
            .for_each(|b, a, &v| {
                if v > *b {
                    *b = v;
                    *a = c as u16;
                }
            });
    }
    arg
}

/// An S×S label map → native size (nearest neighbour).
pub fn labels_slice_to_native(
    labels: ArrayView2<'_, u16>,
    geometry: &SliceGeometry,
) -> Result<Array2<u16>, PostprocessError> {
    let s = geometry.model_size;
    check_shape(&[s, s], labels.shape())?;
    let native = geometry.native_size;
    Ok(if native == [s, s] {
        labels.to_owned()
    } else {
        zoom_nearest(labels, native, Edge::Clamp)
    })
}

/// Collects native-size label slices (in any order, e.g. as batches finish) and returns the
/// label volume on the input grid.
pub struct Reassembler {
    geometry: SliceGeometry,
    labels: Array3<u16>,
    filled: Vec<bool>,
}

impl Reassembler {
    pub fn new(geometry: &SliceGeometry) -> Reassembler {
        let [a, b, c] = geometry.frame_shape();
        Reassembler {
            geometry: geometry.clone(),
            labels: Array3::zeros((a, b, c)),
            filled: vec![false; c],
        }
    }

    /// Put slice `k` (native size `[n_i, n_j]`, slicing frame).
    pub fn insert(&mut self, k: usize, slice: ArrayView2<'_, u16>) -> Result<(), PostprocessError> {
        let n = self.geometry.n_slices;
        if k >= n {
            return Err(PostprocessError::SliceOutOfRange {
                slice: k,
                n_slices: n,
            });
        }
        check_shape(&self.geometry.native_size, slice.shape())?;
        if self.filled[k] {
            return Err(PostprocessError::Duplicate { slice: k });
        }
        self.labels.index_axis_mut(Axis(2), k).assign(&slice);
        self.filled[k] = true;
        Ok(())
    }

    /// Slices still missing.
    pub fn missing(&self) -> usize {
        self.filled.iter().filter(|f| !**f).count()
    }

    /// The label volume on the input grid (the inverse reorientation applied); every slice
    /// must have been inserted.
    pub fn finish(self) -> Result<Array3<u16>, PostprocessError> {
        if let Some(first) = self.filled.iter().position(|f| !*f) {
            return Err(PostprocessError::Missing {
                missing: self.missing(),
                n_slices: self.geometry.n_slices,
                first,
            });
        }
        let r = &self.geometry.reorientation;
        Ok(if r.is_identity() {
            self.labels
        } else {
            r.inverse().apply_array(self.labels.view())
        })
    }
}

/// Whole-volume convenience for binary models: probability maps `[n_slices, S, S]` → label
/// volume on the input grid.
pub fn binary_volume_to_labels(
    probs: ArrayView3<'_, f32>,
    geometry: &SliceGeometry,
    resize: ResizeBack,
) -> Result<Array3<u16>, PostprocessError> {
    let s = geometry.model_size;
    check_shape(&[geometry.n_slices, s, s], probs.shape())?;
    let mut r = Reassembler::new(geometry);
    for (k, p) in probs.outer_iter().enumerate() {
        r.insert(k, binary_slice_to_native(p, geometry, resize)?.view())?;
    }
    r.finish()
}

/// In-plane nearest resize of a label volume to `size` (axis 2 kept), with exact
/// `scipy.ndimage.zoom(order=0)` semantics: the official 256×256 scoring protocol resizes
/// ground truth this way (reference §4).
pub fn resize_labels_nearest(labels: &Array3<u16>, size: [usize; 2]) -> Array3<u16> {
    zoom_nearest_inplane(labels.view(), size, Edge::Scipy)
}

/// Apply a label remapping (e.g. BTCV `transfer_to_9` + union) to a whole label volume.
pub fn remap_labels(labels: &Array3<u16>, remap: &Remap) -> Array3<u16> {
    if remap.is_identity() {
        return labels.clone();
    }
    let max = labels.iter().copied().max().unwrap_or(0);
    let lut = remap.lut(max);
    labels.mapv(|v| lut[v as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Affine, AxCodes};
    use crate::pipeline::config::SliceFrame;

    fn geometry(shape: [usize; 3], s: usize) -> SliceGeometry {
        SliceGeometry::new(shape, &Affine::IDENTITY, SliceFrame::Native, s)
    }

    #[test]
    fn binary_threshold_is_strict() {
        let g = geometry([4, 4, 1], 4);
        let mut p = Array2::<f32>::from_elem((4, 4), 0.5);
        p[[1, 2]] = 0.50001;
        let m = binary_slice_to_native(p.view(), &g, ResizeBack::Bilinear).unwrap();
        assert_eq!(m.iter().map(|&v| v as usize).sum::<usize>(), 1);
        assert_eq!(m[[1, 2]], 1);
    }

    #[test]
    fn bilinear_back_then_threshold() {
        // Columns hold c/10. Back to 5 columns: coordinates 0, 1.75, 3.5, 5.25, 7.
        // Bilinear: 0, .175, .35, .525, .7 → 0 0 0 1 1; nearest: columns 0 2 4 5 7 → 0 0 0 0 1.
        let g = SliceGeometry {
            native_size: [2, 5],
            ..geometry([2, 5, 1], 8)
        };
        let p = Array2::from_shape_fn((8, 8), |(_, c)| c as f32 / 10.0);
        let m = binary_slice_to_native(p.view(), &g, ResizeBack::Bilinear).unwrap();
        assert_eq!(m.dim(), (2, 5));
        assert_eq!(m.row(1).to_vec(), vec![0, 0, 0, 1, 1]);
        let n = binary_slice_to_native(p.view(), &g, ResizeBack::Nearest).unwrap();
        assert_eq!(n.row(1).to_vec(), vec![0, 0, 0, 0, 1]);
    }

    #[test]
    fn logits_argmax_first_max_wins() {
        let g = geometry([2, 2, 1], 2);
        let mut l = Array3::<f32>::zeros((3, 2, 2));
        l[[2, 0, 0]] = 1.0;
        l[[1, 1, 1]] = 2.0;
        l[[2, 1, 1]] = 2.0;
        let m = logits_slice_to_native(l.view(), &g, ResizeBack::Bilinear).unwrap();
        assert_eq!(m, ndarray::array![[2, 0], [0, 1]]);
        let n = logits_slice_to_native(l.view(), &g, ResizeBack::Nearest).unwrap();
        assert_eq!(n, m);
    }

    #[test]
    fn reassembler_checks_bookkeeping() {
        let mut a = Affine::from_spacing([1.0, 1.0, 1.0]);
        a.0[0][0] = -1.0;
        let g = SliceGeometry::new([2, 3, 4], &a, SliceFrame::Oriented(AxCodes::RAS), 8);
        let mut r = Reassembler::new(&g);
        let s = Array2::<u16>::ones((2, 3));
        assert!(matches!(
            r.insert(4, s.view()),
            Err(PostprocessError::SliceOutOfRange { .. })
        ));
        assert!(matches!(
            r.insert(0, Array2::<u16>::ones((3, 2)).view()),
            Err(PostprocessError::Shape { .. })
        ));
        r.insert(0, s.view()).unwrap();
        assert!(matches!(
            r.insert(0, s.view()),
            Err(PostprocessError::Duplicate { .. })
        ));
        assert_eq!(r.missing(), 3);
        assert!(matches!(r.finish(), Err(PostprocessError::Missing { .. })));
    }

    #[test]
    fn remap_volume() {
        let l = Array3::from_shape_vec((1, 1, 4), vec![0u16, 5, 6, 11]).unwrap();
        let r = Remap {
            assign: vec![(5, 0), (6, 5), (11, 8)],
            binarise: false,
        };
        assert_eq!(
            remap_labels(&l, &r).into_raw_vec_and_offset().0,
            vec![0, 0, 5, 8]
        );
    }
}
