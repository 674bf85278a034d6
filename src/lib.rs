//! sdseg-volume: segment CT volumes with SDSeg (Stable Diffusion Segmentation, MICCAI 2024)
//! in one reverse step. See ARCHITECTURE.md for the map of stages and modules.
//!
//! No `unsafe` here: the compute kernels that need it are the `sdseg_kernels` crate. The one
//! exception, allowed where it stands, is memory-mapping a safetensors checkpoint
//! (`model::checkpoint::file`).

#![deny(unsafe_code)]

pub mod cli;
pub mod dataset;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod geometry;
pub mod io;
pub mod metrics;
pub mod model;
pub mod phantom;
pub mod pipeline;
pub mod reproduce;
pub mod review;
pub mod stability;
pub mod train;
pub mod volume;

pub use geometry::{Affine, AxCode, AxCodes, Reorientation};
pub use volume::{LabelVolume, Provenance, Source, Volume};
