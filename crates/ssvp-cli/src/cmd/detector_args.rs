//! The model options `ssvp detect`, `ssvp calibrate` and `ssvp serve` share: which
//! trained run and/or training-free scorer, which backbones, which class name, how images are
//! decoded and tiled.

use std::path::PathBuf;

use anyhow::Context;
use ssvp_detect::bundle::{default_cache_root, unpack, Unpacked};
use ssvp_detect::input::{DecodeOptions, ExifOrientation, DEFAULT_MAX_PIXELS};
use ssvp_detect::memory::{
    BankOptions, CoresetOptions, ForegroundOptions, MutualConfig, MutualOptions, ReferenceScoring,
    DEFAULT_SET_SIZE,
};
use ssvp_detect::settings::{DEFAULT_BATCH_SIZE, DEFAULT_CLASS_NAME, DEFAULT_MAP_SIZE};
use ssvp_detect::{DetectorOptions, LoadSpec, MemorySpec, Tiling};
use ssvp_features::{BackboneChoice, TapSelection};

/// Which model runs, on what, in batches of what size: the model flags of every command that
/// scores (detect, calibrate, serve, bank, bench, eval).
#[derive(clap::Args, Clone)]
pub struct ModelSourceArgs {
    /// Run directory written by `ssvp train` (its last checkpoint is used). Optional with a
    /// training-free scorer (--normal, --bank, --mutual; eval's --mode references|mutual);
    /// with one of them as well, the head and the training-free scores are fused.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Backbones preset: paper (CLIP ViT-L/14@336 + DINOv3 ViT-L/16, the head's), anomalydino
    /// (DINOv2 ViT-S/14 at 448 px, ungated), dinov2-b, dinov3-s, dinov3-b or tiny (seeded, no
    /// weights). Default: the checkpoint's; else what the --bank or --calibration was made
    /// with; else anomalydino. `ssvp doctor` lists them and what is cached.
    #[arg(long, value_name = "PRESET")]
    pub backbones: Option<String>,
    /// A bundle of `ssvp bundle create`: its run, bank, calibration, config and backbone
    /// weights, unpacked (digests checked) into $SSVP_CACHE (default ~/.cache/ssvp/bundles).
    /// An explicit --calibration replaces the bundle's.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// CLIP weights instead of the preset's, at its sizes: a hub id, a directory or a file
    /// (e.g. a copy for a machine with no network).
    #[arg(long, value_name = "WEIGHTS")]
    pub clip_weights: Option<String>,
    /// DINO weights instead of the preset's, at its sizes: a hub id, a directory or a file.
    #[arg(long, value_name = "WEIGHTS")]
    pub dino_weights: Option<String>,
    /// Take the [backbones] and [postprocess] sections from this config instead of the
    /// checkpoint's (the head always comes from the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Images (or tiles) per backbone pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelSourceArgs {
    /// The backbones flags.
    pub fn choice(&self) -> BackboneChoice {
        BackboneChoice {
            preset: self.backbones.clone(),
            clip_weights: self.clip_weights.clone(),
            dino_weights: self.dino_weights.clone(),
        }
    }
}

/// The model and how it runs.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelSourceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// The class name in the prompts (SSVP's prompts are class-aware): what the parts are,
    /// e.g. `bottle`, `screw`, `pcb`.
    #[arg(long, default_value = DEFAULT_CLASS_NAME)]
    pub class_name: String,
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

/// Where the tensors run (every command that runs a model).
#[derive(clap::Args, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N (GPU builds only: README "GPU build").
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// The candle device, or why it cannot be opened.
    pub fn open(&self) -> anyhow::Result<candle_core::Device> {
        Ok(ssvp_backbones::runtime::parse_device(&self.device)?)
    }
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
            batch_size: self.source.batch_size,
            tiling: self.tile.map(|size| Tiling {
                size,
                overlap: self.overlap,
            }),
            ..DetectorOptions::default()
        }
    }

    /// What [`ssvp_detect::Detector::load`] needs; with `--bundle`, the bundle's parts.
    pub fn spec(
        &self,
        options: DetectorOptions,
        calibration: Option<PathBuf>,
    ) -> anyhow::Result<LoadSpec> {
        if let Some(bundle) = &self.source.bundle {
            let unpacked = unpack(bundle, &default_cache_root()?)
                .with_context(|| format!("opening the bundle {}", bundle.display()))?;
            return self
                .with_bundle(&unpacked)?
                .spec_of_flags(options, calibration.or(unpacked.calibration));
        }
        self.spec_of_flags(options, calibration)
    }

    fn spec_of_flags(
        &self,
        options: DetectorOptions,
        calibration: Option<PathBuf>,
    ) -> anyhow::Result<LoadSpec> {
        Ok(LoadSpec {
            checkpoint: self.source.checkpoint.clone(),
            memory: self.memory.spec(self.source.batch_size, self.decode())?,
            config: self.source.config.clone(),
            backbones: self.source.choice(),
            calibration,
            options,
            device: self.source.device.open()?,
        })
    }

    /// These flags with the parts of an unpacked bundle filled in; a flag that names a part
    /// the bundle also holds is refused, naming both.
    fn with_bundle(&self, unpacked: &Unpacked) -> anyhow::Result<Self> {
        let mut args = self.clone();
        args.source.bundle = None;
        let both = |flag: &str, given: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{flag} {given} and the bundle's own {} both name the model; drop {flag} (or \
                 make another bundle)",
                flag.trim_start_matches("--")
            )
        };
        let fill = |slot: &mut Option<PathBuf>, part: &Option<PathBuf>, flag: &str| match (
            slot.as_ref(),
            part,
        ) {
            (Some(given), Some(_)) => Err(both(flag, &given.display())),
            (None, Some(part)) => {
                *slot = Some(part.clone());
                Ok(())
            }
            _ => Ok(()),
        };
        fill(
            &mut args.source.checkpoint,
            &unpacked.checkpoint,
            "--checkpoint",
        )?;
        fill(&mut args.source.config, &unpacked.config, "--config")?;
        if unpacked.bank.is_some() && (!args.memory.normal.is_empty() || args.memory.mutual) {
            anyhow::bail!("the bundle holds a bank: drop --normal / --mutual");
        }
        fill(&mut args.memory.bank, &unpacked.bank, "--bank")?;
        let weights = |slot: &mut Option<String>, part: &Option<PathBuf>, flag: &str| match (
            slot.as_ref(),
            part,
        ) {
            (Some(given), Some(_)) => Err(both(flag, given)),
            (None, Some(part)) => {
                *slot = Some(part.display().to_string());
                Ok(())
            }
            _ => Ok(()),
        };
        weights(
            &mut args.source.clip_weights,
            &unpacked.clip_weights,
            "--clip-weights",
        )?;
        weights(
            &mut args.source.dino_weights,
            &unpacked.dino_weights,
            "--dino-weights",
        )?;
        Ok(args)
    }
}

/// How detections are decided and drawn: the calibration, thresholds and the map's colour
/// range (`detect`, `serve`).
#[derive(clap::Args, Clone)]
pub struct DecisionArgs {
    /// Calibration file of `ssvp calibrate` (threshold, calibrated scores, pixel threshold).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Raw-score threshold of the decision (overrides the calibration's).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Map threshold of the regions (overrides the calibration's).
    #[arg(long)]
    pub pixel_threshold: Option<f32>,
    /// Drop regions smaller than this many pixels.
    #[arg(long, default_value_t = 1)]
    pub min_region_area: usize,
    /// Value range LO,HI of map PNGs and overlay colours, e.g. `0,0.5` (default: the
    /// calibration's display range, else 0,0.5 for references and 0,1 otherwise).
    #[arg(long, value_name = "LO,HI", value_parser = parse_map_scale, allow_hyphen_values = true)]
    pub map_scale: Option<[f32; 2]>,
}

/// `LO,HI` (two numbers; spaces around them are allowed).
fn parse_map_scale(text: &str) -> Result<[f32; 2], String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [lo, hi] = parts[..] else {
        return Err(format!(
            "`{text}` is not LO,HI: give two numbers separated by a comma, e.g. 0,0.5"
        ));
    };
    let number = |v: &str| {
        v.parse::<f32>()
            .map_err(|_| format!("`{v}` in `{text}` is not a number"))
    };
    Ok([number(lo)?, number(hi)?])
}

impl DecisionArgs {
    /// Sets the decision options of `options`.
    pub fn apply(&self, options: &mut DetectorOptions) -> anyhow::Result<()> {
        options.image_threshold = self.threshold;
        options.pixel_threshold = self.pixel_threshold;
        options.min_region_area = self.min_region_area;
        options.map_scale = self
            .map_scale
            .as_ref()
            .map(|[lo, hi]| ssvp_image::ColorScale::new(*lo, *hi))
            .transpose()
            .context("--map-scale")?;
        Ok(())
    }
}

/// The training-free scorers: good reference images (few-shot), a bank built from them, or
/// mutual scoring of the inputs (zero-shot).
#[derive(clap::Args, Clone)]
pub struct MemoryArgs {
    /// Good reference images: filled from `--normal` (detect, bank build) or `--references`
    /// (calibrate, whose `--normal` are the images it calibrates on).
    #[arg(skip)]
    pub normal: Vec<PathBuf>,
    /// Use only the first K references (sorted by path); more than there are is an error.
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// A bank file of `ssvp bank build` (loads in milliseconds).
    #[arg(long, conflicts_with = "mutual")]
    pub bank: Option<PathBuf>,
    /// Score the inputs against each other (MuSc): no references, no training, but every
    /// image's score depends on the others of its set. Cost grows with the square of the set
    /// size: each set of B images runs B(B-1)/2 patch-matrix products per layer and degree.
    #[arg(long)]
    pub mutual: bool,
    #[command(flatten)]
    pub mutual_options: MutualArgs,
    #[command(flatten)]
    pub features: FeatureArgs,
    #[command(flatten)]
    pub bank_build: BankBuildArgs,
}

/// How mutual scoring runs.
#[derive(clap::Args, Clone)]
pub struct MutualArgs {
    /// Images per mutual set: the inputs are cut into sets of at most this many, of equal
    /// size (at least 5 each).
    #[arg(long, value_name = "B", default_value_t = DEFAULT_SET_SIZE)]
    pub set_size: usize,
    /// Re-score the images of a mutual set by their neighbours in a global feature space
    /// (MuSc's RsCIN) with these window sizes, e.g. `1,2,3` (MVTec, BTAD) or `1,8,9` (VisA).
    #[arg(long, value_name = "K,..", value_delimiter = ',')]
    pub rscin: Option<Vec<usize>>,
}

impl MutualArgs {
    /// The mutual scorer's configuration.
    pub fn config(&self, features: &FeatureArgs) -> anyhow::Result<MutualConfig> {
        Ok(MutualConfig {
            taps: features.taps(true)?,
            options: MutualOptions::default(),
            rscin: self.rscin.clone(),
            set_size: self.set_size,
        })
    }
}

/// The backbone features the training-free scorers read.
#[derive(clap::Args, Clone)]
pub struct FeatureArgs {
    /// Features of the training-free scorers: dino, clip or both.
    #[arg(long, default_value = "dino")]
    pub features: String,
    /// Which tapped layers: last (references' default), all (mutual's default) or 1-based
    /// positions like `2,4`.
    #[arg(long, value_name = "LAYERS")]
    pub feature_layers: Option<String>,
}

impl FeatureArgs {
    /// The feature taps, with the mode's default layers.
    pub fn taps(&self, mutual: bool) -> anyhow::Result<TapSelection> {
        let layers = self
            .feature_layers
            .as_deref()
            .unwrap_or(if mutual { "all" } else { "last" });
        Ok(TapSelection::parse(&self.features, layers)?)
    }
}

/// How a bank is built from references.
#[derive(clap::Args, Clone)]
pub struct BankBuildArgs {
    /// Add rotated copies of every reference (N copies at 360/N degree steps; AnomalyDINO
    /// uses 8 for parts that appear in any orientation).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rotations: usize,
    /// Reduce the bank to a greedy k-center coreset of this fraction of its patches
    /// (PatchCore: 0.1), for large reference sets.
    #[arg(long, value_name = "FRACTION")]
    pub coreset: Option<f64>,
    /// Score background patches 0 (AnomalyDINO's masking, for objects on a plain background):
    /// patches whose projection on the first principal component of the image's tokens
    /// exceeds THRESHOLD (AnomalyDINO's 10 was set for DINOv2; check a few maps first).
    #[arg(long, value_name = "THRESHOLD", num_args = 0..=1, default_missing_value = "10")]
    pub mask_background: Option<f32>,
}

impl BankBuildArgs {
    /// How distances to the references become scores.
    pub fn scoring(&self) -> ReferenceScoring {
        ReferenceScoring {
            foreground: self.mask_background.map(|threshold| ForegroundOptions {
                threshold,
                ..ForegroundOptions::default()
            }),
            ..ReferenceScoring::default()
        }
    }

    /// How a bank is built from the references.
    pub fn options(
        &self,
        features: &FeatureArgs,
        batch_size: usize,
        decode: DecodeOptions,
    ) -> anyhow::Result<BankOptions> {
        Ok(BankOptions {
            taps: features.taps(false)?,
            rotations: self.rotations,
            coreset: self.coreset.map(|fraction| CoresetOptions {
                fraction,
                ..CoresetOptions::default()
            }),
            batch_size,
            decode,
        })
    }
}

impl MemoryArgs {
    /// How a bank is built from the references.
    pub fn bank_options(
        &self,
        batch_size: usize,
        decode: DecodeOptions,
    ) -> anyhow::Result<BankOptions> {
        self.bank_build.options(&self.features, batch_size, decode)
    }

    /// The reference files: directories walked as inputs are, the first `--shots` kept.
    pub fn reference_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let found = ssvp_detect::inputs::collect(&self.normal, None)?;
        let mut paths: Vec<PathBuf> = found.into_iter().map(|f| f.path).collect();
        if paths.is_empty() {
            anyhow::bail!(
                "no images found in the references {}",
                self.normal
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(k) = self.shots {
            anyhow::ensure!(k > 0, "--shots must be positive");
            anyhow::ensure!(
                k <= paths.len(),
                "--shots {k} asks for more references than the {} images given",
                paths.len()
            );
            paths.truncate(k);
        }
        Ok(paths)
    }

    /// The detector's memory, if any was asked for.
    pub fn spec(
        &self,
        batch_size: usize,
        decode: DecodeOptions,
    ) -> anyhow::Result<Option<MemorySpec>> {
        let given = [!self.normal.is_empty(), self.bank.is_some(), self.mutual];
        anyhow::ensure!(
            given.iter().filter(|g| **g).count() <= 1,
            "give one training-free scorer: good references, --bank or --mutual"
        );
        anyhow::ensure!(
            self.shots.is_none() || !self.normal.is_empty(),
            "--shots selects among reference images; give them too"
        );
        Ok(if self.mutual {
            Some(MemorySpec::Mutual(
                self.mutual_options.config(&self.features)?,
            ))
        } else if let Some(bank) = &self.bank {
            Some(MemorySpec::Bank {
                path: bank.clone(),
                scoring: self.bank_build.scoring(),
            })
        } else if !self.normal.is_empty() {
            Some(MemorySpec::References {
                paths: self.reference_files()?,
                options: self.bank_options(batch_size, decode)?,
                scoring: self.bank_build.scoring(),
            })
        } else {
            None
        })
    }
}

/// Loads the detector, saying which reference files were left out as unreadable.
pub fn load_detector(spec: &LoadSpec) -> anyhow::Result<ssvp_detect::Detector> {
    let (detector, skipped) = ssvp_detect::Detector::load_reporting(spec)?;
    for (path, err) in &skipped {
        eprintln!("warning: reference {} left out: {err}", path.display());
    }
    Ok(detector)
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
