//! The model options `ssvp detect` and `ssvp calibrate` share (and the server will): which
//! trained run, which backbones, which class name, how images are decoded and tiled.

use std::path::PathBuf;

use anyhow::Context;
use ssvp_detect::detector::{DEFAULT_BATCH_SIZE, DEFAULT_CLASS_NAME, DEFAULT_MAP_SIZE};
use ssvp_detect::input::{DecodeOptions, ExifOrientation, DEFAULT_MAX_PIXELS};
use ssvp_detect::{DetectorOptions, LoadSpec, Tiling};

/// The trained model and how it runs.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Run directory written by `ssvp train` (its last checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The class name in the prompts (SSVP's prompts are class-aware): what the parts are,
    /// e.g. `bottle`, `screw`, `pcb`.
    #[arg(long, default_value = DEFAULT_CLASS_NAME)]
    pub class_name: String,
    /// Backbones to run with: `tiny` (default: those of the checkpoint's config).
    #[arg(long)]
    pub backbones: Option<String>,
    /// Take the [backbones] and [postprocess] sections from this config instead of the
    /// checkpoint's (the head always comes from the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Images (or tiles) per backbone pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Side of the square grid maps are upsampled and smoothed on before being resized to each
    /// image (the evaluation grid).
    #[arg(long, default_value_t = DEFAULT_MAP_SIZE)]
    pub map_size: usize,
    /// Score images larger than SIZE px tile by tile (SIZE x SIZE tiles at the backbones'
    /// input, maps stitched); without it large images are resized whole, as in evaluation.
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    /// Minimum overlap of neighbouring tiles, in pixels.
    #[arg(long, value_name = "PX", default_value_t = 64, requires = "tile")]
    pub overlap: usize,
    /// Refuse images whose header claims more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Score images as stored, ignoring their EXIF orientation tag.
    #[arg(long)]
    pub ignore_exif: bool,
}

impl ModelArgs {
    /// Decoding options of the inputs.
    pub fn decode(&self) -> DecodeOptions {
        DecodeOptions {
            max_pixels: self.max_pixels,
            orientation: if self.ignore_exif {
                ExifOrientation::Ignore
            } else {
                ExifOrientation::Apply
            },
        }
    }

    /// Detector options with everything decision-related left at its default.
    pub fn options(&self) -> DetectorOptions {
        DetectorOptions {
            class_name: self.class_name.clone(),
            map_size: self.map_size,
            batch_size: self.batch_size,
            tiling: self.tile.map(|size| Tiling {
                size,
                overlap: self.overlap,
            }),
            ..DetectorOptions::default()
        }
    }

    /// What [`ssvp_detect::Detector::load`] needs.
    pub fn spec(&self, options: DetectorOptions, calibration: Option<PathBuf>) -> LoadSpec {
        LoadSpec {
            checkpoint: self.checkpoint.clone(),
            config: self.config.clone(),
            backbones_preset: self.backbones.clone(),
            calibration,
            options,
            device: candle_core::Device::Cpu,
        }
    }
}

/// Reads the list of paths of the `-` input from stdin.
pub fn stdin_paths() -> anyhow::Result<Vec<PathBuf>> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the list of input paths from stdin")?;
    Ok(ssvp_detect::inputs::parse_list(&text))
}

/// The input arguments with `-` replaced by the paths listed on stdin.
pub fn expand_inputs(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.as_os_str() == "-" {
            out.extend(stdin_paths()?);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}
