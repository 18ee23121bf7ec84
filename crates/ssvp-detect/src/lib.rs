//! The ssvp Detector: the product's main job on top of the library crates. Images in (files,
//! uploads, high-resolution photos cut into tiles); scores, calibrated decisions, anomaly maps
//! at each image's resolution, defect regions, and reports out.
//!
//! The crate reads down the data path:
//! - [`input`]: decoding with a pixel budget and EXIF orientation;
//! - [`detector`]: [`Detector`], the one per-image pipeline (backbones -> SSVP head -> maps as
//!   in evaluation -> image resolution), with [`tiling`] for large images;
//! - [`memory`]: the training-free scorers (normal references, mutual scoring) and their fusion
//!   with the head;
//! - [`calibrate`]: thresholds and calibrated scores from normal images only;
//! - [`detection`]: [`Detection`], the serde answer every front emits;
//! - [`evaluate`]: the same pipeline over a benchmark, with exact metrics (`ssvp eval`);
//! - [`inputs`], [`job`], [`output`]: batch runs over files (`ssvp detect`, `ssvp calibrate`,
//!   `ssvp report`) and the files they leave.
//!
//! Errors carry an [`ErrorKind`] so that a front tells a bad input (4xx, a record in the
//! JSONL) from a broken model (5xx, a failed run) without parsing messages.

#![warn(missing_docs)]

pub mod bench;
pub mod calibrate;
pub mod detection;
pub mod detector;
pub mod error;
pub mod evaluate;
pub mod input;
pub mod inputs;
pub mod job;
pub mod memory;
pub mod output;
pub mod tiling;

pub use calibrate::Calibration;
pub use detection::{Detection, MapStats, Timings};
pub use detector::{Detector, DetectorOptions, DetectorSettings, LoadSpec, ModelIdentity};
pub use error::{Error, ErrorKind, Result};
pub use input::InputImage;
pub use memory::{BankOptions, Memory, MemorySpec, MutualConfig, TapSelection};
pub use tiling::Tiling;
