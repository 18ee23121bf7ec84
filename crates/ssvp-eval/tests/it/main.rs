//! Integration tests of ssvp-eval, in one binary (one link instead of one per file). Fixtures
//! stay in `tests/fixtures`.

mod datasets_layouts;
mod datasets_meta_json;
mod datasets_problems;
mod datasets_util;
mod metrics_reference;
mod metrics_streaming;
mod postprocess_reference;
mod synth_benchmark;
