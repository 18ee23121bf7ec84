//! Evaluation side of ssvp: dataset readers, anomaly-map post-processing and the field's metrics.
//!
//! Nothing here depends on the tensor framework or the backbones: maps are plain `f32` buffers.
//! The data path reads top to bottom: `datasets` (what to score) -> `postprocess` (maps to the
//! evaluation grid) -> `maps` (map files, defect regions) -> `metrics` (numbers) -> `report`
//! (tables and files). `synth` writes a
//! synthetic benchmark in MVTec layout for tests and demos.

#![warn(missing_docs)]

pub mod datasets;
pub mod maps;
pub mod metrics;
pub mod postprocess;
pub mod report;
pub mod synth;
