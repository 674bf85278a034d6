//! Pipelines: what a dataset's volumes become before and after the model.
//!
//! * [`config`]: the `pipelines/*.toml` schema ([`Pipeline::load`]).
//! * [`preprocess`]: volume → S×S model slices (window, normalise, scipy-exact zoom), lazily
//!   per slice ([`SliceSource`]), returning the [`SliceGeometry`] that inverts it.
//! * [`postprocess`]: soft maps / logits → native-size label slices → label volume on the
//!   input grid ([`Reassembler`]); label remapping and the 256² label resize for scoring.
//! * [`resize`]: `scipy.ndimage.zoom` (order 0 and 1) reimplemented exactly.

pub mod config;
pub mod postprocess;
pub mod preprocess;
pub mod resize;

pub use config::{
    builtin_names, Interpolation, Labels, ModelSection, Normalise, Origin, Pipeline, PipelineError,
    Remap, SliceFrame, Slicing, Splits, TrainOptions, Window,
};
pub use postprocess::{
    argmax_classes, binary_slice_to_native, binary_volume_to_labels, labels_slice_to_native,
    logits_slice_to_native, remap_labels, resize_labels_nearest, PostprocessError, Reassembler,
    ResizeBack,
};
pub use preprocess::{
    prepare_slices, to_model_input, window_hu, LabelSlices, NormStats, PreprocessError,
    SliceGeometry, SliceSource,
};
