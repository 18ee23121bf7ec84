//! The training-free scorers as the detector runs them, and their fusion with the SSVP head:
//!
//! - **references** (few-shot): a [`PatchBank`] of the patch features of a few good images;
//!   a patch scores its cosine distance to the nearest bank vector (AnomalyDINO), the image
//!   the mean of its top 1 % patch scores;
//! - **mutual** (zero-shot over a set): the images of a set score each other's patches (MuSc),
//!   the image the maximum patch score, optionally re-scored by RsCIN;
//! - **fused**: with a trained head as well, maps and scores are averaged on a common scale
//!   ([`normalise_distance`]).
//!
//! Which backbone features these read is a [`TapSelection`]: DINOv3 (default), CLIP or both, at
//! the last tapped layer (references' default, AnomalyDINO) or all four (mutual's default, MuSc).
//! The taps are the same tensors the head reads, so a fused detector runs the backbones once.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use ssvp_image::RgbImage8;
use ssvp_memory::BankMeta;
pub use ssvp_memory::{CoresetOptions, ForegroundOptions, MutualOptions, PatchBank};
use ssvp_model::features::{BackboneIdentity, Backbones, FeatureSource, ImageFeatures, TowerSet};

use crate::error::{Error, ErrorKind, Result};
use crate::input::{read_image, DecodeOptions};

/// AnomalyDINO's image score: the mean of the top 1 % of the patch distances.
pub const DEFAULT_TOP_FRACTION: f64 = 0.01;
/// Images per mutual-scoring set when none is given: MuSc's cost grows with the square of the
/// set, and 32 images of 37 x 37 patches keep a set's features (4 DINOv3 layers, f32) near
/// 720 MB.
pub const DEFAULT_SET_SIZE: usize = 32;

/// One backbone's tapped layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tower {
    /// DINOv3 patch tokens, final-normed (AnomalyDINO's and MuSc's DINO features).
    Dino,
    /// CLIP patch tokens after ln_post and the projection (the tokens the head reads).
    Clip,
}

/// One feature tap: a tower and the position of the layer among the backbones' tapped layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tap {
    /// Which backbone.
    pub tower: Tower,
    /// 0-based position among the tapped layers (`model.clip_layers` / the DINO layer set).
    pub position: usize,
}

impl Tap {
    /// `dino.24`: the tower and the 1-based block of the backbone, as the bank file records it.
    pub fn name(&self, identity: &BackboneIdentity) -> String {
        match self.tower {
            Tower::Dino => format!("dino.{}", identity.dino_layers[self.position]),
            Tower::Clip => format!("clip.{}", identity.clip_layers[self.position]),
        }
    }

    /// The tapped tokens `[N, D]` of one image; an error when its tower was not run or has
    /// fewer tapped layers.
    pub fn of<'a>(&self, features: &'a ImageFeatures) -> Result<&'a Tensor> {
        let (layers, tower) = match self.tower {
            Tower::Dino => (&features.dino_local, "DINOv3"),
            Tower::Clip => (&features.clip_local, "CLIP"),
        };
        layers.get(self.position).ok_or_else(|| {
            Error::model(anyhow::anyhow!(
                "the {tower} features hold {} tapped layers, not the {} this scorer reads",
                layers.len(),
                self.position + 1
            ))
        })
    }
}

/// Which towers the training-free scorers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Towers {
    /// DINOv3 only (the default: AnomalyDINO's features).
    Dino,
    /// CLIP only.
    Clip,
    /// Both; patch scores are averaged over every tap.
    Both,
}

/// Which of the tapped layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    /// The deepest tapped layer.
    Last,
    /// Every tapped layer.
    All,
    /// These 1-based positions among the tapped layers.
    Positions(Vec<usize>),
}

/// The features of the training-free scorers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSelection {
    /// Which towers.
    pub towers: Towers,
    /// Which layers of each.
    pub layers: Layers,
}

impl TapSelection {
    /// References' default: DINOv3's deepest tapped layer (AnomalyDINO).
    pub fn references_default() -> Self {
        Self {
            towers: Towers::Dino,
            layers: Layers::Last,
        }
    }

    /// Mutual scoring's default: every tapped DINOv3 layer (MuSc's four).
    pub fn mutual_default() -> Self {
        Self {
            towers: Towers::Dino,
            layers: Layers::All,
        }
    }

    /// Parses `dino`, `clip` or `both` and `last`, `all` or a list of positions like `2,4`.
    pub fn parse(towers: &str, layers: &str) -> Result<Self> {
        let towers = match towers {
            "dino" => Towers::Dino,
            "clip" => Towers::Clip,
            "both" => Towers::Both,
            other => {
                return Err(Error::invalid(format!(
                    "unknown features `{other}`: use dino, clip or both"
                )))
            }
        };
        let layers = match layers {
            "last" => Layers::Last,
            "all" => Layers::All,
            list => Layers::Positions(
                list.split(',')
                    .map(|s| {
                        s.trim().parse::<usize>().map_err(|_| {
                            Error::invalid(format!(
                                "feature layers must be `last`, `all` or positions like `2,4`, \
                                 not `{list}`"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Self { towers, layers })
    }

    /// The taps on backbones with `scales` tapped layers.
    pub fn resolve(&self, scales: usize) -> Result<Vec<Tap>> {
        let positions: Vec<usize> = match &self.layers {
            Layers::Last => vec![scales - 1],
            Layers::All => (0..scales).collect(),
            Layers::Positions(p) => {
                if p.is_empty() || p.iter().any(|&i| i == 0 || i > scales) {
                    return Err(Error::invalid(format!(
                        "feature layer positions {p:?} must lie in 1..={scales} (the backbones \
                         tap {scales} layers)"
                    )));
                }
                p.iter().map(|i| i - 1).collect()
            }
        };
        let towers: &[Tower] = match self.towers {
            Towers::Dino => &[Tower::Dino],
            Towers::Clip => &[Tower::Clip],
            Towers::Both => &[Tower::Dino, Tower::Clip],
        };
        Ok(towers
            .iter()
            .flat_map(|&tower| {
                positions
                    .iter()
                    .map(move |&position| Tap { tower, position })
            })
            .collect())
    }
}

/// The tapped tokens of one image, in tap order.
pub fn tapped(features: &ImageFeatures, taps: &[Tap]) -> Result<Vec<Tensor>> {
    taps.iter().map(|t| t.of(features).cloned()).collect()
}

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
            batch_size: crate::detector::DEFAULT_BATCH_SIZE,
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

/// The towers that `taps` read, with or without their global features.
pub(crate) fn towers_of(taps: &[Tap], globals: bool) -> TowerSet {
    TowerSet {
        clip: taps.iter().any(|t| t.tower == Tower::Clip),
        dino: taps.iter().any(|t| t.tower == Tower::Dino),
        globals,
    }
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
    let taps = opts.taps.resolve(backbones.identity().clip_layers.len())?;
    let towers = towers_of(&taps, false);
    let bank = bank_of_images_with(backbones.identity(), &images, names, opts, |chunk| {
        let refs: Vec<&RgbImage8> = chunk.iter().collect();
        let (clip, dino) = backbones.preprocess_towers(&refs, towers)?;
        backbones.features_of_towers(clip.as_ref(), dino.as_ref(), false)
    })?;
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
    features_of: impl Fn(&[RgbImage8]) -> anyhow::Result<Vec<ImageFeatures>>,
) -> Result<PatchBank> {
    if opts.rotations == 0 || opts.batch_size == 0 {
        return Err(Error::invalid(
            "rotations and the batch size must be positive",
        ));
    }
    let copies: Vec<RgbImage8> = images
        .iter()
        .flat_map(|img| {
            (0..opts.rotations).map(move |r| {
                if r == 0 {
                    img.clone()
                } else {
                    ssvp_image::augment::rotate(img, 360.0 * r as f64 / opts.rotations as f64)
                }
            })
        })
        .collect();
    let mut features = Vec::with_capacity(copies.len());
    for chunk in copies.chunks(opts.batch_size) {
        features.extend(features_of(chunk).map_err(Error::model)?);
    }
    bank_of_features(identity, &features, names, opts)
}

/// Builds a bank from the features of the references (each reference's `opts.rotations`
/// copies in a row, as [`bank_of_images`] computes them).
pub fn bank_of_features(
    identity: &BackboneIdentity,
    features: &[ImageFeatures],
    names: Vec<String>,
    opts: &BankOptions,
) -> Result<PatchBank> {
    let taps = opts.taps.resolve(identity.clip_layers.len())?;
    let per_image: Vec<Vec<Tensor>> = features
        .iter()
        .map(|f| tapped(f, &taps))
        .collect::<Result<_>>()?;
    let meta = BankMeta {
        format: ssvp_memory::bank::BANK_FORMAT,
        backbones: identity.digest(),
        backbone_names: format!("{} / {}", identity.clip, identity.dino),
        taps: taps.iter().map(|t| t.name(identity)).collect(),
        grid: identity.grid,
        references: names,
        rotations: opts.rotations,
        coreset: None,
        normal_scale: None,
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

/// The training-free scorer a detector holds.
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

/// How a test image's distances to the references become its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceScoring {
    /// Share of the top patch distances averaged into the image score (AnomalyDINO: 0.01).
    pub top_fraction: f64,
    /// Zero the distances of background patches (AnomalyDINO's masking of objects), found by
    /// the PCA of the first tap's tokens.
    pub foreground: Option<ForegroundOptions>,
}

impl Default for ReferenceScoring {
    fn default() -> Self {
        Self {
            top_fraction: DEFAULT_TOP_FRACTION,
            foreground: None,
        }
    }
}

impl ReferenceScoring {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        if !(self.top_fraction > 0.0 && self.top_fraction <= 1.0) {
            return Err(Error::invalid(format!(
                "the top fraction of the image score must be in (0, 1], not {}",
                self.top_fraction
            )));
        }
        if let Some(f) = &self.foreground {
            if !f.threshold.is_finite() {
                return Err(Error::invalid("the foreground threshold must be a number"));
            }
        }
        Ok(())
    }
}

/// How mutual scoring runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutualConfig {
    /// The features.
    pub taps: TapSelection,
    /// Degrees and the averaged share of the other images.
    pub options: MutualOptions,
    /// RsCIN window sizes (`None`: raw scores; MuSc uses `[1, 2, 3]` on MVTec and BTAD,
    /// `[1, 8, 9]` on VisA).
    pub rscin: Option<Vec<usize>>,
    /// Images per mutual-scoring set (a batch run cuts its inputs into sets of about this
    /// size, [`set_sizes`]).
    pub set_size: usize,
}

impl Default for MutualConfig {
    fn default() -> Self {
        Self {
            taps: TapSelection::mutual_default(),
            options: MutualOptions::default(),
            rscin: None,
            set_size: DEFAULT_SET_SIZE,
        }
    }
}

impl MutualConfig {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        self.options.validate()?;
        let min = self.options.min_images();
        if self.set_size < min {
            return Err(Error::invalid(format!(
                "a mutual-scoring set needs at least {min} images, not {}",
                self.set_size
            )));
        }
        if let Some(w) = &self.rscin {
            if w.is_empty() || w.contains(&0) {
                return Err(Error::invalid(format!(
                    "RsCIN window sizes must be positive, got {w:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Cuts `n` images into sets of at most `set_size`, as equal as possible (sizes differ by at
/// most one), so that no last set is left too small to score.
pub fn set_sizes(n: usize, set_size: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let sets = n.div_ceil(set_size.max(1));
    (0..sets)
        .map(|i| n / sets + usize::from(i < n % sets))
        .collect()
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
                config.taps.resolve(identity.clip_layers.len())?;
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
    PatchBank::load(path, device).map_err(|e| {
        let e = Error::from(e);
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!("the bank {} does not exist", path.display()),
            )
        } else {
            e
        }
    })
}

/// The taps a bank was built at, found on `identity`'s backbones; a bank of other backbones
/// is refused.
pub fn taps_of_bank(bank: &PatchBank, identity: &BackboneIdentity) -> Result<Vec<Tap>> {
    let names = format!("{} / {}", identity.clip, identity.dino);
    let scales = identity.clip_layers.len();
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
    bank.check_compatible(&identity.digest(), &names, &tap_names)?;
    Ok(taps)
}

/// Maps a distance `d` onto [0, 1) by the normal scale `s`: `u / (1 + u)` with `u = d / s`,
/// so a distance normal patches reach (`d = s`) lands at 0.5, where the head's probability
/// turns anomalous. Fused maps and scores average this with the head's.
pub fn normalise_distance(d: f32, scale: f32) -> f32 {
    let u = (d / scale).max(0.0);
    u / (1.0 + u)
}

/// The normal scale of a mutual set: the 99th percentile of all its patch scores (mutual
/// scores are relative to their set anyway).
pub fn set_scale(patch_scores: &[Vec<f32>]) -> f32 {
    let all: Vec<f32> = patch_scores.iter().flatten().copied().collect();
    ssvp_memory::score::quantile(&all, 0.99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_as_equal_as_possible() {
        assert_eq!(set_sizes(0, 32), Vec::<usize>::new());
        assert_eq!(set_sizes(10, 32), vec![10]);
        assert_eq!(set_sizes(33, 32), vec![17, 16]);
        assert_eq!(set_sizes(64, 32), vec![32, 32]);
        assert_eq!(set_sizes(70, 32), vec![24, 23, 23]);
    }

    #[test]
    fn tap_selections_parse_and_resolve() {
        let t = TapSelection::parse("both", "2,4")
            .unwrap()
            .resolve(4)
            .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            Tap {
                tower: Tower::Dino,
                position: 1
            }
        );
        assert_eq!(
            t[3],
            Tap {
                tower: Tower::Clip,
                position: 3
            }
        );
        let last = TapSelection::references_default().resolve(4).unwrap();
        assert_eq!(
            last,
            vec![Tap {
                tower: Tower::Dino,
                position: 3
            }]
        );
        assert!(TapSelection::parse("dino", "5")
            .unwrap()
            .resolve(4)
            .is_err());
        assert!(TapSelection::parse("dino", "0")
            .unwrap()
            .resolve(4)
            .is_err());
        assert!(TapSelection::parse("resnet", "last").is_err());
        assert!(TapSelection::parse("dino", "deep").is_err());
    }

    #[test]
    fn normalised_distances_meet_the_head_at_one_half() {
        assert_eq!(normalise_distance(0.2, 0.2), 0.5);
        assert_eq!(normalise_distance(0.0, 0.2), 0.0);
        assert!(normalise_distance(2.0, 0.2) > 0.9);
    }
}
