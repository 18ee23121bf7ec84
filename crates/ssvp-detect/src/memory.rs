//! The training-free memories and where they come from: reference banks (built from good
//! images, or read from a bank file) and mutual-scoring configurations, each made into its
//! scorer ([`crate::scorer::References`], [`crate::scorer::Mutual`]) by
//! [`Memory::into_scorer`]; a detector with a head fuses it with the head (`scorer::Fused`).
//!
//! Which backbone features these read is a [`TapSelection`]: DINOv3 (default), CLIP or both, at
//! the last tapped layer (references' default, AnomalyDINO) or all four (mutual's default, MuSc).
//! The taps are the same tensors the head reads, so a fused detector runs the backbones once.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use ssvp_features::{
    tapped, towers_of, BackboneIdentity, Backbones, FeatureSource, ImageFeatures, Layers, Tap,
    TapSelection, Towers,
};
use ssvp_image::RgbImage8;
use ssvp_memory::BankMeta;
pub use ssvp_memory::{CoresetOptions, ForegroundOptions, MutualOptions, PatchBank};

use crate::error::{Error, ErrorKind, Result};
use crate::input::{read_image, DecodeOptions};
pub use crate::scorer::mutual::{set_sizes, MutualConfig, DEFAULT_SET_SIZE};
pub use crate::scorer::references::{ReferenceScoring, DEFAULT_TOP_FRACTION};
use crate::scorer::{Mutual, References, Scorer};
use crate::settings::DEFAULT_BATCH_SIZE;

/// How a bank is built from reference images.
#[derive(Clone, Debug, PartialEq)]
pub struct BankOptions {
    /// The features.
    pub taps: TapSelection,
    /// Copies of each reference at `360 / rotations` degree steps (1: none; AnomalyDINO's
    /// `agnostic` preset uses 8).
    pub rotations: usize,
    /// Reduce the bank to a greedy k-center coreset.
    pub coreset: Option<CoresetOptions>,
    /// Images per backbone pass.
    pub batch_size: usize,
    /// Pixel budget and EXIF handling of the reference files.
    pub decode: DecodeOptions,
}

impl Default for BankOptions {
    fn default() -> Self {
        Self {
            taps: TapSelection::references_default(),
            rotations: 1,
            coreset: None,
            batch_size: DEFAULT_BATCH_SIZE,
            decode: DecodeOptions::default(),
        }
    }
}

/// A built bank and the reference files that could not be read.
pub struct BuiltBank {
    /// The bank.
    pub bank: PatchBank,
    /// Files left out, with the reason.
    pub skipped: Vec<(PathBuf, Error)>,
}

/// Builds a bank from reference image files through the live backbones. Unreadable files are
/// skipped (and returned); no readable file at all is an error.
pub fn build_bank(
    backbones: &Backbones,
    paths: &[PathBuf],
    opts: &BankOptions,
) -> Result<BuiltBank> {
    if paths.is_empty() {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            "no reference images were given",
        ));
    }
    let mut images = Vec::new();
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        match read_image(path, &opts.decode) {
            Ok(input) => {
                images.push(input.image);
                // Absolute, so that calibrate can recognise a reference from anywhere.
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                names.push(absolute.display().to_string());
            }
            Err(e) if e.kind().is_client_error() => skipped.push((path.clone(), e)),
            Err(e) => return Err(e),
        }
    }
    if images.is_empty() {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            format!(
                "none of the {} reference images could be read (first: {}: {})",
                paths.len(),
                skipped[0].0.display(),
                skipped[0].1
            ),
        ));
    }
    // Only the tapped towers run, each stopped after its deepest block: a bank reads patch
    // tokens alone, never a global feature.
    let taps = opts.taps.resolve(backbones.identity().scales())?;
    let towers = towers_of(&taps, false);
    let mut bank = bank_of_images_with(backbones.identity(), &images, names, opts, |chunk| {
        let refs: Vec<&RgbImage8> = chunk.iter().collect();
        let (clip, dino) = backbones.preprocess_towers(&refs, towers)?;
        backbones.features_of_towers(clip.as_ref(), dino.as_ref(), false)
    })?;
    // What `detect --bank` rebuilds the towers from, without --backbones.
    let record = serde_json::to_value(backbones.record())
        .map_err(|e| Error::new(ErrorKind::Model, e.to_string()))?;
    bank.set_made_with(record);
    Ok(BuiltBank { bank, skipped })
}

/// Builds a bank from decoded reference images (`names` label them in the bank's metadata).
pub fn bank_of_images(
    source: &dyn FeatureSource,
    images: &[RgbImage8],
    names: Vec<String>,
    opts: &BankOptions,
) -> Result<PatchBank> {
    bank_of_images_with(source.identity(), images, names, opts, |chunk| {
        source.features_of_images(chunk)
    })
}

/// [`bank_of_images`] with the features of each chunk of copies from `features_of`.
fn bank_of_images_with(
    identity: &BackboneIdentity,
    images: &[RgbImage8],
    names: Vec<String>,
    opts: &BankOptions,
    features_of: impl Fn(&[RgbImage8]) -> ssvp_features::Result<Vec<ImageFeatures>>,
) -> Result<PatchBank> {
    let features = features_of_copies(images, opts.rotations, opts.batch_size, features_of)?;
    bank_of_features(identity, &features, names, opts)
}

/// The features of each image's `rotations` copies (at `360 / rotations` degree steps, the
/// first unrotated), in a row per image, computed `batch_size` copies at a time.
fn features_of_copies(
    images: &[RgbImage8],
    rotations: usize,
    batch_size: usize,
    features_of: impl Fn(&[RgbImage8]) -> ssvp_features::Result<Vec<ImageFeatures>>,
) -> Result<Vec<ImageFeatures>> {
    if rotations == 0 || batch_size == 0 {
        return Err(Error::invalid(
            "rotations and the batch size must be positive",
        ));
    }
    let copies: Vec<RgbImage8> = images
        .iter()
        .flat_map(|img| {
            (0..rotations).map(move |r| {
                if r == 0 {
                    img.clone()
                } else {
                    ssvp_image::augment::rotate(img, 360.0 * r as f64 / rotations as f64)
                }
            })
        })
        .collect();
    let mut features = Vec::with_capacity(copies.len());
    for chunk in copies.chunks(batch_size) {
        features.extend(features_of(chunk)?);
    }
    Ok(features)
}

/// `bank` grown by `images`, decoded good parts named `names` (one name each): an operator's
/// "this part is good" joins the bank at once ([`PatchBank::with_references`]). The images run
/// through `backbones` at the bank's taps (only the towers those read, each stopped after its
/// deepest tap, as [`build_bank`] runs them) in the bank's rotations, `batch_size` at a time.
/// The bank's metadata (what made it, its normal scale) is kept. [`Detector::grow_bank`] grows
/// a detector's own bank.
///
/// The grown bank serves a new detector ([`Detector::with_bank`]); the old detector is left as
/// it is. Every image score of the new one is at most the old one's, so its calibration may be
/// carried over ([`crate::Calibration::carried_to`]).
///
/// Refused: no image ([`ErrorKind::NotEnoughData`]), a name count other than the image count.
///
/// [`Detector::grow_bank`]: crate::Detector::grow_bank
/// [`Detector::with_bank`]: crate::Detector::with_bank
pub fn grow_bank(
    bank: &PatchBank,
    backbones: &Backbones,
    batch_size: usize,
    images: &[RgbImage8],
    names: Vec<String>,
) -> Result<PatchBank> {
    if images.is_empty() {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            "no image was given to add to the bank",
        ));
    }
    if names.len() != images.len() {
        return Err(Error::invalid(format!(
            "{} names given for {} images to add to the bank",
            names.len(),
            images.len()
        )));
    }
    let taps = taps_of_bank(bank, backbones.identity())?;
    let towers = towers_of(&taps, false);
    let features = features_of_copies(
        images,
        bank.meta().rotations.max(1),
        batch_size.max(1),
        |chunk| {
            let refs: Vec<&RgbImage8> = chunk.iter().collect();
            let (clip, dino) = backbones.preprocess_towers(&refs, towers)?;
            backbones.features_of_towers(clip.as_ref(), dino.as_ref(), false)
        },
    )?;
    let rows: Vec<Vec<Tensor>> = features
        .iter()
        .map(|f| tapped(f, &taps))
        .collect::<ssvp_features::Result<_>>()?;
    bank.with_references(&rows, names).map_err(Error::from)
}

/// A feedback bank from one part marked good, for a detector whose scorer has no bank of its
/// own (the trained head; [`crate::scorer::Feedback`] is the rule). It is read at the
/// references' default taps (AnomalyDINO's), through `backbones`, and its normal
/// scale is the part's own: the median, over its patches, of the distance to the nearest patch
/// of the same image that is not its neighbour (how far apart good patches of this product
/// are). The scale stays fixed as the bank grows ([`grow_bank`] keeps it).
pub fn feedback_bank(backbones: &Backbones, image: &RgbImage8, name: String) -> Result<PatchBank> {
    let identity = backbones.identity();
    let opts = BankOptions::default();
    let taps = opts.taps.resolve(identity.scales())?;
    let towers = towers_of(&taps, false);
    let (clip, dino) = backbones.preprocess_towers(&[image], towers)?;
    let features = backbones.features_of_towers(clip.as_ref(), dino.as_ref(), false)?;
    let scale = self_similarity_scale(taps[0].of(&features[0])?, features[0].grid)?;
    let mut bank = bank_of_features(identity, &features, vec![name], &opts)?;
    // What a later start rebuilds the towers from, as for any bank.
    let record = serde_json::to_value(backbones.record())
        .map_err(|e| Error::new(ErrorKind::Model, e.to_string()))?;
    bank.set_made_with(record);
    bank.set_normal_scale(scale);
    Ok(bank)
}

/// The median over an image's patches (`[N, D]` on a `rows x cols` grid) of the cosine
/// distance to the nearest patch that is not within one step of it.
fn self_similarity_scale(patches: &Tensor, grid: (usize, usize)) -> Result<f32> {
    let (rows, cols) = grid;
    let x = patches.to_dtype(candle_core::DType::F32)?;
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    let x = x.broadcast_div(&norms)?;
    let sims = x.matmul(&x.t()?)?.to_vec2::<f32>()?;
    let n = rows * cols;
    if sims.len() != n || n < 2 {
        return Err(Error::invalid(format!(
            "{} patches do not fill a {rows}x{cols} grid",
            sims.len()
        )));
    }
    let mut nearest: Vec<f32> = (0..n)
        .filter_map(|i| {
            let (r, c) = (i / cols, i % cols);
            (0..n)
                .filter(|&j| {
                    let (rj, cj) = (j / cols, j % cols);
                    r.abs_diff(rj) > 1 || c.abs_diff(cj) > 1
                })
                .map(|j| 1.0 - sims[i][j])
                .min_by(f32::total_cmp)
        })
        .collect();
    if nearest.is_empty() {
        return Err(Error::invalid("the grid is too small to measure a scale"));
    }
    let mid = (nearest.len() - 1) / 2;
    let (_, m, _) = nearest.select_nth_unstable_by(mid, f32::total_cmp);
    Ok(m.max(1e-6))
}

/// Builds a bank from the features of the references (each reference's `opts.rotations`
/// copies in a row, as [`bank_of_images`] computes them).
pub fn bank_of_features(
    identity: &BackboneIdentity,
    features: &[ImageFeatures],
    names: Vec<String>,
    opts: &BankOptions,
) -> Result<PatchBank> {
    let taps = opts.taps.resolve(identity.scales())?;
    let per_image: Vec<Vec<Tensor>> = features
        .iter()
        .map(|f| tapped(f, &taps))
        .collect::<ssvp_features::Result<_>>()?;
    let meta = BankMeta {
        format: ssvp_memory::bank::BANK_FORMAT,
        // Keyed by the towers it reads only: a DINO bank serves with or without CLIP loaded.
        backbones: identity.digest_of(towers_of(&taps, false)),
        backbone_names: identity.names(),
        taps: taps.iter().map(|t| t.name(identity)).collect(),
        grid: identity.grid,
        references: names,
        rotations: opts.rotations,
        coreset: None,
        normal_scale: None,
        made_with: None,
    };
    PatchBank::build(&per_image, meta, opts.coreset.as_ref()).map_err(Error::from)
}

/// A references memory over `bank`, with the bank's taps found on `identity`'s backbones.
pub fn references_memory(
    bank: PatchBank,
    identity: &BackboneIdentity,
    scoring: ReferenceScoring,
) -> Result<Memory> {
    scoring.validate()?;
    let taps = taps_of_bank(&bank, identity)?;
    Ok(references(bank, taps, scoring))
}

/// A training-free memory, loaded: what [`Memory::into_scorer`] makes a scorer of.
#[derive(Clone, Debug)]
pub enum Memory {
    /// Distances to a bank of normal references.
    References {
        /// The bank.
        bank: PatchBank,
        /// Its taps, resolved on the detector's backbones.
        taps: Vec<Tap>,
        /// How the distances become scores.
        scoring: ReferenceScoring,
    },
    /// The images of a set score each other.
    Mutual(MutualConfig),
}

impl Memory {
    /// The scorer of this memory on backbones of `identity` (a bank must come from them).
    pub fn into_scorer(self, identity: &BackboneIdentity) -> Result<Box<dyn Scorer>> {
        Ok(match self {
            Memory::References {
                bank,
                taps,
                scoring,
            } => {
                let names: Vec<String> = taps.iter().map(|t| t.name(identity)).collect();
                bank.check_compatible(
                    &digest_for_bank(&bank, identity, &taps),
                    &identity.names(),
                    &names,
                )?;
                Box::new(References::new(bank, taps, names, scoring)?)
            }
            Memory::Mutual(config) => Box::new(Mutual::new(config, identity.scales())?),
        })
    }
}

/// Where a detector's memory comes from.
#[derive(Clone, Debug)]
pub enum MemorySpec {
    /// A bank file of `ssvp bank build`.
    Bank {
        /// The file.
        path: PathBuf,
        /// How distances become scores.
        scoring: ReferenceScoring,
    },
    /// Reference image files, made into a bank at load.
    References {
        /// The good images.
        paths: Vec<PathBuf>,
        /// How the bank is built.
        options: BankOptions,
        /// How distances become scores.
        scoring: ReferenceScoring,
    },
    /// Mutual scoring of each set of inputs.
    Mutual(MutualConfig),
}

impl MemorySpec {
    /// Whether the memory reads CLIP features (else CLIP need not be loaded): a bank's
    /// recorded taps, the references' or mutual scoring's feature selection.
    pub fn reads_clip(&self) -> Result<bool> {
        let reads = |towers: Towers| matches!(towers, Towers::Clip | Towers::Both);
        Ok(match self {
            MemorySpec::Bank { path, .. } => read_bank_meta(path)?
                .taps
                .iter()
                .any(|t| t.starts_with("clip.")),
            MemorySpec::References { options, .. } => reads(options.taps.towers),
            MemorySpec::Mutual(config) => reads(config.taps.towers),
        })
    }

    /// Loads or builds the memory on `backbones`; skipped reference files are returned.
    pub fn load(
        &self,
        backbones: &Backbones,
        device: &candle_core::Device,
    ) -> Result<(Memory, Vec<(PathBuf, Error)>)> {
        let identity = backbones.identity();
        match self {
            MemorySpec::Bank { path, scoring } => {
                let bank = load_bank(path, device)?;
                Ok((
                    references_memory(bank, identity, scoring.clone())?,
                    Vec::new(),
                ))
            }
            MemorySpec::References {
                paths,
                options,
                scoring,
            } => {
                // Checked before the references cost a backbone pass each.
                scoring.validate()?;
                let built = build_bank(backbones, paths, options)?;
                let memory = references_memory(built.bank, identity, scoring.clone())?;
                Ok((memory, built.skipped))
            }
            MemorySpec::Mutual(config) => {
                config.validate()?;
                config.taps.resolve(identity.scales())?;
                Ok((Memory::Mutual(config.clone()), Vec::new()))
            }
        }
    }
}

fn references(bank: PatchBank, taps: Vec<Tap>, scoring: ReferenceScoring) -> Memory {
    Memory::References {
        bank,
        taps,
        scoring,
    }
}

/// Reads a bank file, with the path in every error.
pub fn load_bank(path: &Path, device: &candle_core::Device) -> Result<PatchBank> {
    PatchBank::load(path, device).map_err(|e| bank_error(path, e))
}

/// Reads only a bank file's metadata (taps, what made it), with the path in every error.
pub fn read_bank_meta(path: &Path) -> Result<BankMeta> {
    PatchBank::read_meta(path).map_err(|e| bank_error(path, e))
}

fn bank_error(path: &Path, e: ssvp_memory::Error) -> Error {
    let e = Error::from(e);
    if e.kind() == ErrorKind::NotFound {
        Error::new(
            ErrorKind::NotFound,
            format!("the bank {} does not exist", path.display()),
        )
    } else {
        e
    }
}

/// The taps a bank was built at, found on `identity`'s backbones; a bank of other backbones
/// is refused.
pub fn taps_of_bank(bank: &PatchBank, identity: &BackboneIdentity) -> Result<Vec<Tap>> {
    let names = identity.names();
    let scales = identity.scales();
    let all = TapSelection {
        towers: Towers::Both,
        layers: Layers::All,
    }
    .resolve(scales)?;
    let taps: Vec<Tap> = bank
        .meta()
        .taps
        .iter()
        .filter_map(|name| all.iter().find(|t| &t.name(identity) == name).copied())
        .collect();
    let tap_names: Vec<String> = taps.iter().map(|t| t.name(identity)).collect();
    bank.check_compatible(&digest_for_bank(bank, identity, &taps), &names, &tap_names)?;
    Ok(taps)
}

/// The digest of `identity` a bank read at `taps` must carry: that of the towers it reads
/// (a DINO bank serves whether or not CLIP is loaded beside it), or the whole identity's, which
/// banks recorded before they were keyed by their towers.
fn digest_for_bank(bank: &PatchBank, identity: &BackboneIdentity, taps: &[Tap]) -> String {
    let whole = identity.digest();
    if bank.meta().backbones == whole {
        whole
    } else {
        identity.digest_of(towers_of(taps, false))
    }
}
