pub mod dataset;
pub mod embed;
pub mod metrics;
pub mod synth;
