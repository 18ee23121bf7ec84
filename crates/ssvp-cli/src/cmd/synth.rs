//! `ssvp synth`: write the deterministic synthetic benchmark (library: `ssvp_eval::synth`).

use std::path::PathBuf;

use anyhow::Context;
use ssvp_eval::synth::{self, Kind, SynthConfig};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output directory (refused when it exists and is not empty, unless --force).
    #[arg(long, required_unless_present = "list_kinds")]
    pub out: Option<PathBuf>,
    /// Comma-separated kinds (categories) to write; default: all (see --list-kinds).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Images per category in each of train/good, test/good and the defect folders together.
    #[arg(long, default_value_t = 10)]
    pub per_category: usize,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Seed; the same seed writes byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write into a non-empty output directory (the chosen kinds' folders are replaced).
    #[arg(long)]
    pub force: bool,
    /// Print the available kinds and their defect types, then exit.
    #[arg(long)]
    pub list_kinds: bool,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if args.list_kinds {
        for kind in Kind::ALL {
            let defects: Vec<_> = kind.defects().iter().map(|d| d.name()).collect();
            println!(
                "{:<8} {}; defects: {}",
                kind.name(),
                kind.description(),
                defects.join(", ")
            );
        }
        return Ok(());
    }
    let out = args.out.context("--out is required")?;
    let kinds = if args.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.kinds
            .iter()
            .map(|k| k.parse::<Kind>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let cfg = SynthConfig {
        kinds,
        per_category: args.per_category,
        size: args.size,
        seed: args.seed,
    };
    let start = std::time::Instant::now();
    let summary = synth::generate(&out, &cfg, args.force)?;
    for k in &summary.kinds {
        println!(
            "{:<8} train/good {:>4}  test/good {:>4}  test anomalous {:>4}",
            k.kind.name(),
            k.train_normal,
            k.test_normal,
            k.test_anomalous
        );
    }
    println!(
        "wrote {} files to {} in {:.1} s",
        summary.files_written,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
