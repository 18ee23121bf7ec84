//! Integration tests of ssvp-detect, in one binary (the crates link candle once, and the tiny
//! head most tests share is trained once).

mod bundle;
mod calibration;
mod common;
mod detect_eval;
mod e2e_zero_shot;
mod inputs;
mod load_errors;
mod station;
mod tiling;
mod toy_scorer;
mod training_free;
