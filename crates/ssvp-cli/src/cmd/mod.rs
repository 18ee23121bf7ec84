pub mod dataset;
pub mod embed;
pub mod eval;
pub mod metrics;
pub mod model_common;
pub mod report_files;
pub mod synth;
pub mod train;
