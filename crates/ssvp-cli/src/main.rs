//! `ssvp`: a thin command-line front over the ssvp library crates.
//!
//! Every subcommand lives in `cmd/<name>.rs` as an argument struct plus a `run` function; the
//! work itself is done by the library crates so that the CLI and the server (`ssvp serve`) share it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "ssvp",
    version,
    about = "Zero-shot industrial visual anomaly detection (SSVP) in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Listed in `ssvp --help` in this order: the main job first.
    /// Inspect images: scores, decisions, anomaly maps, defect regions, overlays and a report.
    Detect(cmd::detect::DetectArgs),
    /// Fit thresholds and calibrated scores from good parts only (for `ssvp detect`).
    Calibrate(cmd::calibrate::CalibrateArgs),
    /// Serve the detector over HTTP: a native route and the Open Inference Protocol (KServe v2).
    Serve(cmd::serve::ServeArgs),
    /// Try the whole job in seconds, offline, on synthetic parts: bank, calibration, detection,
    /// report.
    Demo(cmd::demo::DemoArgs),
    /// Build (or describe) a bank of good reference images for `ssvp detect --bank`.
    Bank(cmd::bank::BankArgs),
    /// Extract backbone features (CLIP, DINOv3 or DINOv2) of one image into a safetensors file.
    Embed(cmd::embed::EmbedArgs),
    /// Evaluate anyone's predictions: image and pixel metrics per category.
    Metrics(cmd::metrics::MetricsArgs),
    /// Inspect a dataset tree: list and check its samples, write its meta.json index.
    Dataset(cmd::dataset::DatasetArgs),
    /// Write a deterministic synthetic inspection benchmark in MVTec layout.
    Synth(cmd::synth::SynthArgs),
    /// Train the SSVP head on an auxiliary dataset (its labelled test split, zero-shot protocol).
    Train(cmd::train::TrainArgs),
    /// Evaluate a trained head zero-shot on a dataset: per-category image and pixel metrics.
    Eval(cmd::eval::EvalArgs),
    /// Pack a model (head, bank, calibration, backbone weights) into one file for an offline
    /// line PC; inspect, verify or unpack one.
    Bundle(cmd::bundle::BundleArgs),
    /// Merge the outputs of several `ssvp detect` runs (e.g. shards) into one report.
    Report(cmd::report::ReportArgs),
    /// Time the pipeline stage by stage: ms, GFLOP/s and share of the CPU's FMA peak per stage,
    /// images/s and peak memory.
    Bench(cmd::bench::BenchArgs),
    /// Download a backbones preset's weights into the Hugging Face cache (then run offline).
    Fetch(cmd::fetch::FetchArgs),
    /// Check this machine: CPU, memory, GPU, the weights cache, one image through each preset.
    Doctor(cmd::doctor::DoctorArgs),
}

fn main() -> ExitCode {
    // Tensor buffers are reused instead of being faulted in afresh for every op
    // (ssvp_backbones::runtime::keep_freed_memory explains the measurement).
    ssvp_backbones::runtime::keep_freed_memory();
    let cli = Cli::parse();
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Embed(args) => done(cmd::embed::run(args)),
        Command::Metrics(args) => done(cmd::metrics::run(args)),
        Command::Synth(args) => done(cmd::synth::run(args)),
        Command::Dataset(args) => done(cmd::dataset::run(args)),
        Command::Train(args) => done(cmd::train::run(args)),
        Command::Eval(args) => done(cmd::eval::run(args)),
        // detect reports anomalies and unreadable images through its exit code.
        Command::Detect(args) => cmd::detect::run(args),
        Command::Calibrate(args) => done(cmd::calibrate::run(args)),
        Command::Demo(args) => done(cmd::demo::run(args)),
        Command::Bundle(args) => done(cmd::bundle::run(args)),
        Command::Bank(args) => done(cmd::bank::run(args)),
        Command::Report(args) => done(cmd::report::run(args)),
        Command::Serve(args) => done(cmd::serve::run(args)),
        Command::Bench(args) => done(cmd::bench::run(args)),
        Command::Fetch(args) => done(cmd::fetch::run(args)),
        // doctor reports failed checks through its exit code (1).
        Command::Doctor(args) => cmd::doctor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Each cause once, even where a message already ends with its cause.
            eprintln!(
                "error: {}",
                ssvp_util::error::message_chain(
                    AsRef::<dyn std::error::Error + Send + Sync>::as_ref(&err)
                )
            );
            ExitCode::from(2)
        }
    }
}
