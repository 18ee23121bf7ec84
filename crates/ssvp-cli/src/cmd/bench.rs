//! `ssvp bench`: the detector's pipeline timed stage by stage (library: `ssvp_detect::bench`).

use std::sync::Arc;

use anyhow::Context;
use ssvp_detect::bench::{run as run_bench, BenchOptions};
use ssvp_detect::memory::{bank_of_images, references_memory, BankOptions, ReferenceScoring};
use ssvp_detect::{Detector, DetectorOptions};
use ssvp_features::presets::{self, PAPER};
use ssvp_features::{Backbones, FeatureSource, TINY};
use ssvp_model::{SsvpConfig, SsvpHead};

use super::detector_args::{load_detector, ModelArgs};

const BENCH_HELP: &str = "\
Settings: `paper` (default) runs the paper's sizes with seeded random weights and no files:
CLIP ViT-L/14@336 at 518 px and DINOv3 ViT-L/16 at 592 px, the default SSVP head (untrained).
`tiny` runs the tiny backbones. With either, --references K scores against K synthetic good
images instead of the head (the towers then stop at their deepest tap). The DINO-only presets
(`anomalydino`: DINOv2 ViT-S/14 at 448 px; `dinov2-b`, `dinov3-s`, `dinov3-b`) run their
architecture with seeded weights, with --references K. `real` loads the model
as `ssvp detect` does, from --checkpoint, --normal, --bank or --mutual and --backbones.

Each image is a synthetic photo-like PNG of --image-size, decoded inside the clock. Stages are
per image: decode, preprocess (resize and normalise for both towers), clip, dino, head, memory
(references or mutual), postprocess (upsampling, smoothing, resizing to the image, regions).
GFLOP counts the multiply-adds of the towers' matmuls and attention (two per multiply-add);
`peak` divides GFLOP/s by this machine's f32 FMA peak, measured by a built-in kernel on the same
threads (CPU only). Memory is the process's peak resident set (VmHWM).

Compare with PyTorch on the same machine: README \"Benchmarks\".";

#[derive(clap::Args)]
#[command(after_help = BENCH_HELP)]
pub struct BenchArgs {
    /// A backbones preset run with seeded weights at its real sizes (paper, anomalydino,
    /// dinov2-b, dinov3-s, dinov3-b, tiny; the DINO-only ones need --references), or real (the
    /// model named by the model options, as `ssvp detect` loads it).
    #[arg(long, default_value = "paper", value_parser = setting_names())]
    pub setting: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Good reference images (real setting; files or directories).
    #[arg(long, value_name = "PATH")]
    pub normal: Vec<std::path::PathBuf>,
    /// paper and tiny settings: score against this many synthetic good images (references)
    /// instead of the untrained head.
    #[arg(long, value_name = "K")]
    pub references: Option<usize>,
    /// Images timed, after the warm-up.
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    /// Calls of the detector (of the batch size) run first and not timed.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Size WxH of the synthetic images.
    #[arg(long, value_name = "WxH", default_value = "1600x1200", value_parser = parse_size)]
    pub image_size: (u32, u32),
    /// Skip the FMA peak probe (about a second).
    #[arg(long)]
    pub no_peak: bool,
    /// Print the report as JSON (for tracking over time).
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    let options = args.model.options();
    let detector = match args.setting.as_str() {
        "real" => {
            anyhow::ensure!(
                args.references.is_none(),
                "--references K makes synthetic references for the paper and tiny settings; \
                 with --setting real give good images with --normal"
            );
            args.model.memory.normal = std::mem::take(&mut args.normal);
            load_detector(&args.model.spec(options, None)?)?
        }
        setting => {
            anyhow::ensure!(
                args.model.source.checkpoint.is_none()
                    && args.normal.is_empty()
                    && args.model.memory.bank.is_none()
                    && !args.model.memory.mutual
                    && args.model.source.backbones.is_none()
                    && args.model.source.config.is_none()
                    && args.model.source.bundle.is_none(),
                "--setting {setting} builds its own model; --checkpoint, --normal, --bank, \
                 --mutual, --backbones, --config and --bundle need --setting real"
            );
            seeded_detector(setting, &args, options)?
        }
    };
    let opts = BenchOptions {
        images: args.images,
        warmup: args.warmup,
        width: args.image_size.0,
        height: args.image_size.1,
        fma_probe: !args.no_peak,
    };
    let report = run_bench(&detector, &args.setting, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The paper's or the tiny towers with seeded weights, and an untrained head or synthetic
/// references.
fn seeded_detector(
    setting: &str,
    args: &BenchArgs,
    options: DetectorOptions,
) -> anyhow::Result<Detector> {
    let device = args.model.source.device.open()?;
    let (cfg, backbones) = match setting {
        TINY => {
            let cfg = SsvpConfig::tiny();
            let bb = ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &device)?;
            (cfg, bb)
        }
        PAPER => {
            let cfg = SsvpConfig::default();
            let bb = ssvp_model::seeded_vitl_backbones(&cfg.backbones, &cfg.model, &device)?;
            (cfg, bb)
        }
        name => {
            // The DINO-only presets have no head to time: references only.
            anyhow::ensure!(
                args.references.is_some(),
                "--setting {name} has no CLIP tower for the SSVP head; time it with \
                 --references K"
            );
            let preset = presets::preset(name)?;
            let bb = Backbones::seeded(&preset.config, &preset.taps, &device)?;
            (SsvpConfig::default(), bb)
        }
    };
    let backbones = Arc::new(backbones);
    match args.references {
        None => Ok(Detector::new(
            SsvpHead::new(&cfg, &device)?,
            backbones,
            options,
        )?),
        Some(0) => anyhow::bail!("--references needs at least one image"),
        Some(k) => {
            let images = (0..k)
                .map(|i| {
                    let png = ssvp_detect::bench::synthetic_png(
                        args.image_size.0,
                        args.image_size.1,
                        1_000_000 + i as u32,
                    )?;
                    Ok(ssvp_image::decode_rgb8(&png)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .context("making the synthetic references")?;
            let names = (0..k).map(|i| format!("synthetic-reference-{i}")).collect();
            let bank_opts = BankOptions {
                batch_size: args.model.source.batch_size,
                ..BankOptions::default()
            };
            let bank = bank_of_images(backbones.as_ref(), &images, names, &bank_opts)?;
            let memory =
                references_memory(bank, backbones.identity(), ReferenceScoring::default())?;
            let postprocess = cfg.postprocess.clone();
            Ok(Detector::without_head(backbones, postprocess, options)?.with_memory(memory)?)
        }
    }
}

/// The presets, then `real`.
fn setting_names() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&'static str> = presets::NAMES.to_vec();
    names.push("real");
    clap::builder::PossibleValuesParser::new(names)
}

/// `1600x1200` (or `1600,1200`) as `(width, height)`.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X', ','])
        .ok_or_else(|| format!("`{text}` is not a size WxH, e.g. 1600x1200"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{text}`: width and height must be positive whole numbers"))
    };
    Ok((side(w)?, side(h)?))
}
