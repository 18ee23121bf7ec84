//! The ssvp Detector: the product's main job on top of the library crates. Images in (files,
//! uploads, high-resolution photos cut into tiles); scores, calibrated decisions, anomaly maps
//! at each image's resolution, defect regions, and reports out.
//!
//! The crate reads down the data path:
//! - [`settings`]: what a detector is and how it decides, as plain data (options, the settings
//!   a calibration holds for, the model's identity);
//! - [`input`]: decoding with a pixel budget and EXIF orientation;
//! - [`load`]: where a model comes from (a run directory, backbones alone, a memory);
//! - [`scorer`]: the [`Scorer`] seam and its implementations (the SSVP head, references,
//!   mutual scoring, fused), each stating which towers and taps it reads;
//! - [`memory`]: reference banks and mutual-scoring configurations, made into scorers;
//! - [`detector`]: [`Detector`], the one per-image pipeline (preprocess -> towers -> scorer ->
//!   maps at the image's resolution -> decision -> regions), with [`tiling`] for large images;
//! - [`dont_care`]: regions of the image an operator marks as not inspected;
//! - [`decision`]: the decision rule;
//! - [`calibrate`]: thresholds and calibrated scores from normal images only;
//! - [`detection`]: [`Detection`], the serde answer every front emits;
//! - [`evaluate`]: the same pipeline over a benchmark, with exact metrics (`ssvp eval`);
//! - [`inputs`], [`job`], [`output`]: batch runs over files (`ssvp detect`, `ssvp calibrate`,
//!   `ssvp report`) and the files they leave.
//! - [`demo`]: the whole job on synthetic parts with the tiny backbones (`ssvp demo`).
//!
//! Errors carry an [`ErrorKind`] so that a front tells a bad input (4xx, a record in the
//! JSONL) from a broken model (5xx, a failed run) without parsing messages.

#![warn(missing_docs)]

mod assembly;
pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod decision;
pub mod demo;
pub mod detection;
pub mod detector;
pub mod doctor;
pub mod dont_care;
pub mod error;
pub mod evaluate;
pub mod input;
pub mod inputs;
pub mod job;
pub mod load;
pub mod memory;
pub mod output;
pub mod preflight;
pub mod scorer;
pub mod settings;
pub mod tiling;

pub use calibrate::Calibration;
pub use detection::{Detection, MapStats, Timings};
pub use detector::Detector;
pub use dont_care::{DontCare, NormRect};
pub use error::{Error, ErrorKind, Result};
pub use input::InputImage;
pub use load::LoadSpec;
#[cfg(feature = "head")]
pub use load::LoadedRun;
pub use memory::{BankOptions, Memory, MemorySpec, MutualConfig};
pub use scorer::{Description, ScoreContext, Scorer, UnitScore};
pub use settings::{DetectorOptions, DetectorSettings, ModelIdentity, ScorerSettings};
pub use ssvp_features::TapSelection;
pub use tiling::Tiling;
