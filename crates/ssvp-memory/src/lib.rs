//! Training-free anomaly scoring on frozen patch features, with no trained head:
//!
//! - [`bank`]: a memory bank of the patch features of a few good images (AnomalyDINO's
//!   few-shot setting; PatchCore's memory with a [`coreset`] for hundreds of images); a test
//!   patch scores its cosine distance to the nearest bank vector.
//! - [`mutual`]: every image of an unlabeled set scores the others' patches (MuSc's LNAMD and
//!   MSM, with the RsCIN re-scoring).
//! - [`knn`]: the exact nearest-neighbour search both rest on, as blocked matrix products on
//!   candle's matmul with a running per-row maximum.
//! - [`score`]: patch scores to an image score;
//! - [`foreground`]: AnomalyDINO's PCA foreground mask, which zeroes background patches of
//!   objects.
//!
//! The crate sees only feature matrices: which backbone and layer they came from is the
//! caller's business (ssvp-detect), recorded in a bank as an opaque digest.

#![warn(missing_docs)]

pub mod bank;
pub mod coreset;
pub mod error;
pub mod foreground;
pub mod knn;
pub mod mutual;
pub mod score;

pub use bank::{BankMeta, PatchBank};
pub use coreset::CoresetOptions;
pub use error::{Error, ErrorKind, Result};
pub use foreground::ForegroundOptions;
pub use mutual::MutualOptions;
