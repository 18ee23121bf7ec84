//! A deterministic synthetic inspection benchmark in MVTec layout.
//!
//! Each [`Kind`] is one category: procedural textures (woven fabric, wood grain, speckled
//! stone) and simple objects (a washer, a screw, a circuit board), each with its own
//! [`Defect`] types. The tree written by [`generate`] is
//!
//! ```text
//! <out>/<kind>/train/good/NNN.png
//! <out>/<kind>/test/good/NNN.png
//! <out>/<kind>/test/<defect>/NNN.png
//! <out>/<kind>/ground_truth/<defect>/NNN_mask.png   (0/255, 8-bit gray)
//! ```
//!
//! and reads back with the MVTec reader of [`crate::datasets`].
//!
//! Determinism: every image has its own seed derived from (seed, kind name, split, defect,
//! index) with SplitMix64, so images do not depend on which other kinds were asked for nor on
//! the thread schedule. Only IEEE basic arithmetic is used (see [`rng`]), so the same seed gives
//! byte-identical PNGs across runs and platforms (for a given `image` crate version).
//!
//! Masks are exact: the mask is the set of pixels where the defective image differs from the
//! normal image it was painted on ([`render`] returns both).

mod render;
pub mod rng;

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use rng::{hash_name, mix64, SplitMix64};

/// One category of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Texture: beige interlaced fabric threads.
    Woven,
    /// Texture: brown wood with warped growth rings.
    Grain,
    /// Texture: gray stone with clouds and grains.
    Speckle,
    /// Object: a metal washer on a dark belt.
    Disc,
    /// Object: a threaded screw on a light table.
    Screw,
    /// Object: a green circuit board with traces, pads and a chip.
    Board,
}

/// A defect type (one `test/<defect>` folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Defect {
    /// A straight thin line, much brighter than its surroundings.
    Scratch,
    /// A dark jagged line.
    Crack,
    /// A round near-black hole with a lighter rim.
    Hole,
    /// An irregular brownish blot.
    Stain,
    /// A chunk of the object is gone and the background shows (objects only).
    Missing,
    /// A small saturated spot of a colour the kind never shows.
    ColorSpot,
}

impl Kind {
    /// Every kind, textures first.
    pub const ALL: [Kind; 6] = [
        Kind::Woven,
        Kind::Grain,
        Kind::Speckle,
        Kind::Disc,
        Kind::Screw,
        Kind::Board,
    ];

    /// The category folder name (`"woven"`, ...), also what `--kinds` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Woven => "woven",
            Kind::Grain => "grain",
            Kind::Speckle => "speckle",
            Kind::Disc => "disc",
            Kind::Screw => "screw",
            Kind::Board => "board",
        }
    }

    /// One line on what the images show, for listings.
    pub fn description(self) -> &'static str {
        match self {
            Kind::Woven => "texture: beige interlaced fabric threads",
            Kind::Grain => "texture: brown wood with warped growth rings",
            Kind::Speckle => "texture: gray stone with clouds and grains",
            Kind::Disc => "object: metal washer on a dark belt",
            Kind::Screw => "object: threaded screw on a light table",
            Kind::Board => "object: green circuit board with traces, pads and a chip",
        }
    }

    /// Whether this is an object on a background (else a texture filling the image).
    pub fn is_object(self) -> bool {
        matches!(self, Kind::Disc | Kind::Screw | Kind::Board)
    }

    /// The defect types of this kind, in folder order.
    pub fn defects(self) -> &'static [Defect] {
        use Defect::*;
        match self {
            Kind::Woven => &[Hole, Stain, Scratch, ColorSpot],
            Kind::Grain => &[Crack, Scratch, Hole, ColorSpot],
            Kind::Speckle => &[Crack, Stain, Hole, ColorSpot],
            Kind::Disc => &[Scratch, Missing, Stain, ColorSpot],
            Kind::Screw => &[Scratch, Missing, Crack, ColorSpot],
            Kind::Board => &[Scratch, Missing, Stain, ColorSpot],
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown synthetic kind `{s}` (available: {})",
                    names.join(", ")
                )
            })
    }
}

impl Defect {
    /// The `test/<defect>` folder name (`"scratch"`, `"color_spot"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Crack => "crack",
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Missing => "missing",
            Defect::ColorSpot => "color_spot",
        }
    }
}

/// Smallest and largest image side [`generate`] accepts.
pub const MIN_SIZE: u32 = 32;
/// Largest image side [`generate`] accepts (see [`MIN_SIZE`]).
pub const MAX_SIZE: u32 = 4096;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// The categories to write (default: all of [`Kind::ALL`]).
    pub kinds: Vec<Kind>,
    /// Images per category and split part: `K` train normals, `K` test normals and `K` test
    /// anomalies spread round-robin over the kind's defect types.
    pub per_category: usize,
    /// Square image side in pixels.
    pub size: u32,
    /// The seed every image's own seed derives from ([`sample_seed`]).
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            kinds: Kind::ALL.to_vec(),
            per_category: 10,
            size: 256,
            seed: 0,
        }
    }
}

/// Why the benchmark could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file or folder could not be written.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        #[source]
        error: std::io::Error,
    },
    /// An image could not be encoded as PNG.
    #[error("{path}: cannot encode png: {message}")]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
    /// The output folder already holds files (refused unless forced).
    #[error("output directory {0} exists and is not empty (pass --force to write into it)")]
    NotEmpty(PathBuf),
    /// An invalid [`SynthConfig`] (no kinds, a size out of range, ...).
    #[error("{0}")]
    Config(String),
}

/// Where an image sits in the benchmark; its seed is derived from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// A normal image of `train/good`.
    Train,
    /// A normal image of `test/good`.
    TestGood,
    /// An anomalous image of `test/<defect>`.
    TestDefect(Defect),
}

/// The seed of one image, independent of every other image.
pub fn sample_seed(seed: u64, kind: Kind, part: Part, index: usize) -> u64 {
    let part_code = match part {
        Part::Train => 1,
        Part::TestGood => 2,
        Part::TestDefect(d) => 16 + hash_name(d.name()),
    };
    let mut h = mix64(seed ^ 0x5353_5650_5359_4e54); // "SSVPSYNT"
    h = mix64(h ^ hash_name(kind.name()));
    h = mix64(h ^ part_code);
    mix64(h ^ index as u64)
}

/// One rendered sample.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The image to write (defective when a defect was asked for).
    pub image: RgbImage,
    /// The normal image the defect was painted on (equal to `image` without a defect).
    pub normal: RgbImage,
    /// 0/255 mask of the pixels where `image` differs from `normal`; `None` without a defect.
    pub mask: Option<GrayImage>,
}

/// Minimum number of changed pixels for a defect to count (tiny defects are redrawn).
fn min_defect_pixels(size: u32) -> u64 {
    ((size as u64 * size as u64) / 2000).max(12)
}

/// Render one image of `kind` from its own seed (see [`sample_seed`]).
pub fn render(kind: Kind, defect: Option<Defect>, size: u32, seed: u64) -> Rendered {
    let mut rng = SplitMix64::new(seed);
    let base = render::render_normal(kind, size, &mut rng);
    let normal = base.image.clone();
    let Some(defect) = defect else {
        return Rendered {
            image: normal.clone(),
            normal,
            mask: None,
        };
    };
    // The defect draws from its own stream so that the normal image does not depend on it.
    let mut defect_rng = SplitMix64::new(mix64(seed ^ 0xDEFE_C7DE_FEC7_0001));
    let mut attempt = 0;
    loop {
        let mut image = normal.clone();
        render::apply_defect(&mut image, &base, defect, size, &mut defect_rng);
        let mask = diff_mask(&normal, &image);
        let changed = mask.pixels().filter(|p| p.0[0] != 0).count() as u64;
        attempt += 1;
        // Redraw a defect that changed too few pixels (e.g. a scratch that fell mostly off a
        // thin object); after many tries accept any non-empty one.
        if changed >= min_defect_pixels(size) || (attempt > 50 && changed > 0) {
            return Rendered {
                image,
                normal,
                mask: Some(mask),
            };
        }
    }
}

/// 255 where any channel differs, else 0.
pub fn diff_mask(a: &RgbImage, b: &RgbImage) -> GrayImage {
    GrayImage::from_fn(a.width(), a.height(), |x, y| {
        Luma([if a.get_pixel(x, y) != b.get_pixel(x, y) {
            255
        } else {
            0
        }])
    })
}

/// Per-kind counts of what [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSummary {
    /// The category.
    pub kind: Kind,
    /// Images in `train/good`.
    pub train_normal: usize,
    /// Images in `test/good`.
    pub test_normal: usize,
    /// Images over the `test/<defect>` folders (each with its mask).
    pub test_anomalous: usize,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// The benchmark's root folder.
    pub out: PathBuf,
    /// Counts per category.
    pub kinds: Vec<KindSummary>,
    /// Image and mask files written.
    pub files_written: usize,
}

/// One image of the benchmark and where it goes: what [`write_samples`] renders and writes.
/// [`generate`] lays them out in MVTec layout; other layouts (`ssvp demo`'s folders of
/// references, held-out good parts and a day's parts) name other paths for the same images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The category.
    pub kind: Kind,
    /// Which part of the benchmark the image is (its seed derives from this and `index`).
    pub part: Part,
    /// Its index within the part (per defect type for defects).
    pub index: usize,
    /// Where the image is written (PNG).
    pub image_path: PathBuf,
    /// Where the defect's 0/255 mask is written (PNG), if anywhere.
    pub mask_path: Option<PathBuf>,
}

impl Sample {
    /// The defect type of this image (`None` for a good one).
    pub fn defect(&self) -> Option<Defect> {
        match self.part {
            Part::TestDefect(d) => Some(d),
            _ => None,
        }
    }
}

/// The `n` defective images of `kind`, spread round-robin over its defect types (as
/// [`generate`] makes them): `(defect, index within the defect type)`.
pub fn defect_slots(kind: Kind, n: usize) -> Vec<(Defect, usize)> {
    let defects = kind.defects();
    (0..n)
        .map(|i| (defects[i % defects.len()], i / defects.len()))
        .collect()
}

/// Renders and writes `samples` of `size` px from `seed` (in parallel, creating their folders):
/// the images [`generate`] would write for the same kind, part, index, size and seed, byte for
/// byte. Returns the number of files written (images and masks).
pub fn write_samples(samples: &[Sample], size: u32, seed: u64) -> Result<usize, SynthError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(SynthError::Config(format!(
            "image size {size} is outside {MIN_SIZE}..={MAX_SIZE}"
        )));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SynthError::Io { path, error }
    };
    // Create folders up front (sequentially), then render and encode in parallel.
    for job in samples {
        for p in std::iter::once(&job.image_path).chain(job.mask_path.iter()) {
            let parent = p.parent().expect("joined paths have parents");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
    }
    let written: Result<Vec<usize>, SynthError> = samples
        .par_iter()
        .map(|job| {
            let r = render(
                job.kind,
                job.defect(),
                size,
                sample_seed(seed, job.kind, job.part, job.index),
            );
            write_png(&job.image_path, PngImage::Rgb(&r.image))?;
            if let (Some(path), Some(mask)) = (&job.mask_path, &r.mask) {
                write_png(path, PngImage::Gray(mask))?;
                Ok(2)
            } else {
                Ok(1)
            }
        })
        .collect();
    Ok(written?.into_iter().sum())
}

/// Write the benchmark under `out`.
///
/// Refuses an existing non-empty `out` unless `force`; with `force` the folders of the kinds
/// being written are replaced and anything else in `out` is left alone.
pub fn generate(out: &Path, cfg: &SynthConfig, force: bool) -> Result<SynthSummary, SynthError> {
    if cfg.kinds.is_empty() {
        return Err(SynthError::Config("no kinds to generate".into()));
    }
    if cfg.per_category == 0 {
        return Err(SynthError::Config(
            "per-category count must be at least 1".into(),
        ));
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&cfg.size) {
        return Err(SynthError::Config(format!(
            "image size {} is outside {MIN_SIZE}..={MAX_SIZE}",
            cfg.size
        )));
    }
    let mut kinds = cfg.kinds.clone();
    kinds.dedup();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SynthError::Io { path, error }
    };
    if out.exists() {
        if !out.is_dir() {
            return Err(SynthError::Config(format!(
                "{} exists and is not a directory",
                out.display()
            )));
        }
        let non_empty = std::fs::read_dir(out).map_err(io(out))?.next().is_some();
        if non_empty && !force {
            return Err(SynthError::NotEmpty(out.to_path_buf()));
        }
    }
    let mut jobs = Vec::new();
    let mut summaries = Vec::new();
    for &kind in &kinds {
        let dir = out.join(kind.name());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let k = cfg.per_category;
        for index in 0..k {
            jobs.push(Sample {
                kind,
                part: Part::Train,
                index,
                image_path: dir.join("train/good").join(format!("{index:03}.png")),
                mask_path: None,
            });
            jobs.push(Sample {
                kind,
                part: Part::TestGood,
                index,
                image_path: dir.join("test/good").join(format!("{index:03}.png")),
                mask_path: None,
            });
        }
        for (defect, index) in defect_slots(kind, k) {
            jobs.push(Sample {
                kind,
                part: Part::TestDefect(defect),
                index,
                image_path: dir
                    .join("test")
                    .join(defect.name())
                    .join(format!("{index:03}.png")),
                mask_path: Some(
                    dir.join("ground_truth")
                        .join(defect.name())
                        .join(format!("{index:03}_mask.png")),
                ),
            });
        }
        summaries.push(KindSummary {
            kind,
            train_normal: k,
            test_normal: k,
            test_anomalous: k,
        });
    }
    let files_written = write_samples(&jobs, cfg.size, cfg.seed)?;
    Ok(SynthSummary {
        out: out.to_path_buf(),
        kinds: summaries,
        files_written,
    })
}

enum PngImage<'a> {
    Rgb(&'a RgbImage),
    Gray(&'a GrayImage),
}

fn write_png(path: &Path, img: PngImage) -> Result<(), SynthError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    // Fixed encoder settings: part of what makes the files byte-identical across runs.
    let enc =
        PngEncoder::new_with_quality(&mut bytes, CompressionType::Default, FilterType::Adaptive);
    let res = match img {
        PngImage::Rgb(i) => enc.write_image(
            i.as_raw(),
            i.width(),
            i.height(),
            image::ExtendedColorType::Rgb8,
        ),
        PngImage::Gray(i) => enc.write_image(
            i.as_raw(),
            i.width(),
            i.height(),
            image::ExtendedColorType::L8,
        ),
    };
    res.map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, bytes).map_err(|error| SynthError::Io {
        path: path.to_path_buf(),
        error,
    })
}
