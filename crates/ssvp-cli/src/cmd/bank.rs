//! `ssvp bank build` / `ssvp bank info`: a memory bank of good reference images, built once
//! and loaded by `ssvp detect --bank` in milliseconds (library: `ssvp_detect::memory`).

use std::path::PathBuf;

use anyhow::Context;
use ssvp_detect::load::load_backbones;
use ssvp_detect::memory::{build_bank, load_bank};
use ssvp_features::Towers;

use super::detector_args::ModelArgs;

const BANK_HELP: &str = "\
A bank holds the L2-normalised patch features of the references (DINOv3's deepest tapped layer by
default; --features/--feature-layers choose others), with the identity of the backbones that made
them: `ssvp detect --bank` refuses a bank of other backbones. Size: references x rotations x
patches x feature width x 4 bytes (16 references at 37x37 patches of DINOv3 ViT-L: 90 MB), times
--coreset's fraction. Building runs the references through the backbones (about one detect per
reference and rotation), plus the leave-one-out distances of up to 8 references that set the
scale of fused scoring, plus the coreset's greedy selection.";

#[derive(clap::Args)]
pub struct BankArgs {
    #[command(subcommand)]
    pub command: BankCommand,
}

#[derive(clap::Subcommand)]
pub enum BankCommand {
    /// Build a bank from good reference images.
    #[command(after_help = BANK_HELP)]
    Build(Box<BuildArgs>),
    /// Print what a bank holds and what made it.
    Info {
        /// The bank file.
        bank: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Good reference images (files or directories, repeatable): the bank's contents.
    #[arg(long, value_name = "PATH", required = true)]
    pub normal: Vec<PathBuf>,
    /// Where to write the bank (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: BankArgs) -> anyhow::Result<()> {
    match args.command {
        BankCommand::Build(mut args) => {
            args.model.memory.normal = std::mem::take(&mut args.normal);
            build(*args)
        }
        BankCommand::Info { bank } => info(&bank),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let m = &args.model;
    anyhow::ensure!(
        !m.memory.normal.is_empty(),
        "give the good reference images with --normal DIR"
    );
    anyhow::ensure!(
        m.source.checkpoint.is_none() && !m.memory.mutual && m.memory.bank.is_none(),
        "a bank is built from --normal references only (no --checkpoint, --bank or --mutual)"
    );
    anyhow::ensure!(
        m.source.bundle.is_none(),
        "a bank is built from --normal references and backbones, not from a bundle (a bundle \
         already holds its bank)"
    );
    let references = m.memory.reference_files()?;
    // On the device asked for (--device), as every command that runs a model.
    let device = m.source.device.open()?;
    let taps = m.memory.features.taps(false)?;
    let (backbones, _) = load_backbones(
        m.source.config.as_deref(),
        &m.source.choice(),
        None,
        matches!(taps.towers, Towers::Clip | Towers::Both),
        &device,
    )?;
    let started = std::time::Instant::now();
    let built = build_bank(
        &backbones,
        &references,
        &m.memory.bank_options(m.source.batch_size, m.decode())?,
    )?;
    for (path, err) in &built.skipped {
        eprintln!("warning: reference {} left out: {err}", path.display());
    }
    built
        .bank
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let meta = built.bank.meta();
    eprintln!(
        "{}: {} vectors per tap ({}) from {} references x {} rotations in {:.1} s",
        args.out.display(),
        built.bank.len(),
        meta.taps.join(", "),
        meta.references.len(),
        meta.rotations,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn info(path: &std::path::Path) -> anyhow::Result<()> {
    let bank = load_bank(path, &candle_core::Device::Cpu)?;
    let mut meta = serde_json::to_value(bank.meta())?;
    meta["vectors_per_tap"] = bank.len().into();
    println!("{}", serde_json::to_string_pretty(&meta)?);
    Ok(())
}
