//! `ssvp serve`: the [`ssvp_detect::Detector`] of `ssvp detect` behind an HTTP server that an
//! inspection line can run for weeks, monitor and scale out.
//!
//! - Routes: the native `POST /v1/detect` (the `Detection` JSON of `ssvp detect`), the Open
//!   Inference Protocol (KServe v2) under `/v2`, probes, `/metrics`, `/openapi.json`
//!   ([`routes`]).
//! - Concurrent requests are gathered into backbone batches behind a bounded queue
//!   ([`batcher`]); a full queue answers 503 at once.
//! - Every refusal is a 4xx JSON error ([`error`]); the model failing is a 500; nothing a
//!   client sends can stop the server.
//! - SIGTERM drains the way Kubernetes expects ([`server::serve`]).
//!
//! docs/serve.md describes the API, the flags and deployment.

#![warn(missing_docs)]

pub mod api;
pub mod batcher;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod station;

pub use batcher::BatchOptions;
pub use error::{ApiError, Error};
pub use server::{init_logging, run, serve, serve_until, signals, termination, LogFormat};
pub use ssvp_station::StationOptions;
pub use state::{ServeOptions, Service, StationSetup};
