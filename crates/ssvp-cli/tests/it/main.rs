//! Integration tests of the `ssvp` binary, in one test binary: each test runs the binary
//! (`CARGO_BIN_EXE_ssvp`) as a child process, so they share no state but the files they are
//! given (each its own temporary directory).

mod bench;
mod bundle;
mod common;
mod dataset;
mod demo;
mod detect;
mod doctor;
mod embed;
mod fetch;
mod help;
mod metrics;
mod serve;
mod station;
mod synth;
mod train_eval;
mod training_free;
