//! Pipelines: what a dataset's volumes become before and after the model.
//!
//! * [`config`]: the `pipelines/*.toml` schema ([`Pipeline::load`]).
//! * [`preprocess`]: volume → S×S model slices (window, normalise, scipy-exact zoom), lazily
//!   per slice ([`SliceSource`]), returning the [`SliceGeometry`] that inverts it.
//! * [`postprocess`]: soft maps / logits → native-size label slices → label volume on the
//!   input grid ([`Reassembler`]); label remapping and the 256² label resize for scoring.
//! * [`refine`]: optional 3D post-processing of the label volume (`--postprocess`): largest
//!   connected component, small-component removal, per-slice hole filling ([`RefinePlan`]),
//!   and choosing them on cases with ground truth ([`refine::PlanChooser`]).
//! * [`resize`]: `scipy.ndimage.zoom` (order 0 and 1) reimplemented exactly.
//! * [`engine`]: the streaming `run` stages (read → preprocess → model → postprocess → write),
//!   with [`cases`], [`shard`], [`stats`], [`preview`], [`labels_sidecar`] and the model seam
//!   [`segmenter`].

pub mod assets;
pub mod cases;
pub mod config;
pub mod demo;
pub mod engine;
pub mod labels_sidecar;
pub mod outputs;
pub mod postprocess;
pub mod preprocess;
pub mod preview;
pub mod progress;
pub mod refine;
pub mod report;
pub mod resize;
pub mod runner;
pub mod segmenter;
pub mod shard;
pub mod stats;

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
pub use refine::{RefineError, RefinePlan};
