//! Pipelines: config, preprocessing, postprocessing, engine (see ARCHITECTURE.md).

pub mod cases;
pub mod engine;
pub mod labels_sidecar;
pub mod preview;
pub mod progress;
pub mod report;
pub mod runner;
pub mod segmenter;
pub mod shard;
pub mod stats;
