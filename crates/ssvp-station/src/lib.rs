//! The inspection station's state and rules (`ssvp serve --station DIR`, `ssvp detect
//! --station DIR`): every part seen and its results, operators' labels, threshold and bank
//! versions with an audit log, in one SQLite database, and the detector the versions in force
//! make ([`Station`]). The HTTP routes and the browser UI live in `ssvp-serve`; this crate has
//! no HTTP in it, so `ssvp detect` reads the same state.
//!
//! - [`store`]: the tables and every query (SQLite, WAL, `synchronous=FULL`).
//! - [`files`]: images and banks stored under the SHA-256 of their bytes.
//! - [`station`]: the versions, feedback that changes the detector at once, undo, re-scoring.
//!
//! docs/station.md describes the station, its API and its rules.

#![warn(missing_docs)]

pub mod files;
pub mod station;
pub mod store;

pub use station::{
    Arrival, ChangeReport, Counts, InForce, PartView, Station, StationOptions, MAP_PICTURE_SIDE,
};
pub use store::{AuditEntry, Change, HistoryEntry, Label, PartQuery, ThresholdVersion};
