//! Pipelines: config, preprocessing, postprocessing, engine (see ARCHITECTURE.md).
