//! Anomaly-detection dataset readers behind one data model.
//!
//! Every supported layout (see [`Layout`]) is read into a [`Dataset`]: categories of
//! [`Sample`]s, each an image with its label, defect type and (for anomalous images) the path of
//! its ground-truth mask. Readers only list files; [`load`] then checks every sample (the files
//! exist, decode, masks have the image's size, anomalous images have a mask, no category is
//! empty) and either fails with the full list of offending paths or, with
//! [`OnProblem::Skip`], drops those samples and hands the list back. Nothing is skipped silently.
//!
//! Masks are paired with images **by file stem**, never by sorted position (the Python
//! generators pair by position, which silently mis-pairs a tree with one missing file).
//!
//! Layouts (paths relative to the dataset root):
//! - MVTec-style trees ([`Layout::Mvtec`], and the same tree under the names of MPDD, BTAD,
//!   RSDD, SDD/KSDD, the re-processed DAGM, DTD-Synthetic): `<cls>/train/<good|ok>/*`,
//!   `<cls>/test/<good|ok>/*`, `<cls>/test/<defect>/<stem>.<ext>`, masks
//!   `<cls>/ground_truth/<defect>/<stem>_mask.<ext>` or `<stem>.<ext>` (BTAD and the Bayes-PFL
//!   re-processed KSDD2/RSDD/DAGM trees, whose images are `.bmp` and masks `.png`).
//!   RSDD has no standard public tree; the common re-processed form (Bayes-PFL, used by SSVP)
//!   is exactly this MVTec-style tree (`Metal15/{train/good,test/good,test/anomaly,
//!   ground_truth/anomaly}`), and that is what [`Layout::Rsdd`] reads.
//! - VisA ([`Layout::Visa`]): `split_csv/1cls.csv` with columns object, split, label, image,
//!   mask; multi-class masks are binarised by non-zero ([`load_mask`]).
//! - KSDD2 raw ([`Layout::Ksdd2`]): `{train,test}/<id>.png` + `<id>_GT.png`; a GT with any
//!   non-zero pixel makes the image anomalous. One category, `ksdd2`.
//! - DAGM 2007 raw ([`Layout::DagmRaw`]): `ClassN/{Train,Test}/NNNN.PNG`, defective iff
//!   `ClassN/{Train,Test}/Label/NNNN_label.PNG` exists.
//! - meta.json index ([`Layout::MetaJson`]): see [`meta_json`].
//! - Plain folders for users' own data ([`Layout::Folder`]): see [`folder`].

mod check;
mod dagm;
pub mod folder;
mod ksdd2;
mod mask;
pub mod meta_json;
mod mvtec;
mod names;
mod visa;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mask::{eval_mask, load_gt_mask, load_mask, Mask};
pub use meta_json::{meta_json_string, write_meta_json};
pub use names::prompt_name;

/// Which half of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Labelled test images, normal and anomalous (what zero-shot methods evaluate and the
    /// ZSAD protocol trains on).
    Test,
    /// Training images: normal only in MVTec-style trees; KSDD2/DAGM raw train folders also
    /// contain labelled defects.
    Train,
}

impl Split {
    /// The lower-case name (`"test"`, `"train"`), as on disk and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Train => "train",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "test" => Ok(Split::Test),
            "train" => Ok(Split::Train),
            other => Err(format!("unknown split `{other}` (expected test or train)")),
        }
    }
}

/// Image-level ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// A defect-free image (`good`/`ok`).
    Normal,
    /// An image with a defect (it has a mask unless its layout has none).
    Anomalous,
}

impl Label {
    /// Whether this is [`Label::Anomalous`].
    pub fn is_anomalous(self) -> bool {
        self == Label::Anomalous
    }
}

/// The on-disk conventions this module reads. Several names share the MVTec-style reader and
/// differ only in how they are detected and named; they are kept apart so that reports say
/// what was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// MVTec AD, or any tree in its layout (including the synthetic benchmark).
    Mvtec,
    /// VisA: the tree indexed by `split_csv/1cls.csv`.
    Visa,
    /// BTAD (classes `01`, `02`, `03`) in its MVTec-style tree, masks named like their images.
    Btad,
    /// MPDD, an MVTec-style tree.
    Mpdd,
    /// KolektorSDD2 as distributed: `{train,test}/<id>.png` with `<id>_GT.png`.
    Ksdd2,
    /// RSDD in its re-processed MVTec-style form (Bayes-PFL).
    Rsdd,
    /// DAGM 2007 as distributed: `ClassN/{Train,Test}/Label`.
    DagmRaw,
    /// DAGM re-processed to an MVTec-style tree (AdaCLIP `dagm-pre.py`, Bayes-PFL).
    Dagm,
    /// KolektorSDD re-processed to an MVTec-style tree (class `SDD` or `electrical commutators`).
    Sdd,
    /// DTD-Synthetic, an MVTec-style tree of texture classes (`Woven_001`, ...).
    DtdSynthetic,
    /// A `meta.json` index as AnomalyCLIP/AdaCLIP/APRIL-GAN write it (see [`meta_json`]).
    MetaJson,
    /// Users' own images in plain folders (see [`folder`]).
    Folder,
}

impl Layout {
    /// Every layout (the names `--layout` accepts, in this order in its error message).
    pub const ALL: [Layout; 12] = [
        Layout::Mvtec,
        Layout::Visa,
        Layout::Btad,
        Layout::Mpdd,
        Layout::Ksdd2,
        Layout::Rsdd,
        Layout::DagmRaw,
        Layout::Dagm,
        Layout::Sdd,
        Layout::DtdSynthetic,
        Layout::MetaJson,
        Layout::Folder,
    ];

    /// The name `--layout` takes and reports print (`"mvtec"`, `"dagm-raw"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Mvtec => "mvtec",
            Layout::Visa => "visa",
            Layout::Btad => "btad",
            Layout::Mpdd => "mpdd",
            Layout::Ksdd2 => "ksdd2",
            Layout::Rsdd => "rsdd",
            Layout::DagmRaw => "dagm-raw",
            Layout::Dagm => "dagm",
            Layout::Sdd => "sdd",
            Layout::DtdSynthetic => "dtd-synthetic",
            Layout::MetaJson => "meta-json",
            Layout::Folder => "folder",
        }
    }

    /// Whether the layout is read by the MVTec-style tree reader.
    pub fn is_mvtec_style(self) -> bool {
        matches!(
            self,
            Layout::Mvtec
                | Layout::Btad
                | Layout::Mpdd
                | Layout::Rsdd
                | Layout::Dagm
                | Layout::Sdd
                | Layout::DtdSynthetic
        )
    }

    /// Whether every anomalous image of this layout must come with a mask.
    pub fn requires_masks(self) -> bool {
        self != Layout::Folder
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let key = s.to_ascii_lowercase().replace('_', "-");
        let alias = match key.as_str() {
            "mvtec-ad" | "mvtec-style" => "mvtec",
            "kolektorsdd2" => "ksdd2",
            "ksdd" | "kolektorsdd" => "sdd",
            "dtd" => "dtd-synthetic",
            "meta" | "metajson" | "meta.json" => "meta-json",
            "dagmraw" => "dagm-raw",
            other => other,
        };
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == alias)
            .ok_or_else(|| {
                let names: Vec<_> = Layout::ALL.iter().map(|l| l.name()).collect();
                format!(
                    "unknown layout `{s}` (expected auto or one of {})",
                    names.join(", ")
                )
            })
    }
}

/// One image to score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Category (class) folder name as on disk, e.g. `metal_nut`.
    pub category: String,
    /// Full path of the image (the dataset root joined with `rel_path`).
    pub image_path: PathBuf,
    /// Full path of the ground-truth mask; `None` for normal images (their mask is all zero)
    /// and for anomalous images of mask-less [`Layout::Folder`] categories.
    pub mask_path: Option<PathBuf>,
    /// Normal or anomalous.
    pub label: Label,
    /// Defect-type folder (`good`/`ok` for normal images); empty for VisA, like the meta.json
    /// generators write it.
    pub defect_type: String,
    /// Image path relative to the dataset root, `/`-separated (what meta.json stores).
    pub rel_path: String,
}

impl Sample {
    /// Mask path relative to `root`, `/`-separated, or `""` when there is no mask.
    pub fn mask_rel_path(&self, root: &Path) -> String {
        match &self.mask_path {
            Some(p) => rel_string(root, p),
            None => String::new(),
        }
    }
}

/// One category with its samples, in a deterministic order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// The category's folder name on disk, e.g. `metal_nut`.
    pub name: String,
    /// Name to put into text prompts (see [`prompt_name`]).
    pub prompt_name: String,
    /// Its images, sorted.
    pub samples: Vec<Sample>,
}

/// Normal/anomalous image counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Images labelled [`Label::Normal`].
    pub normal: usize,
    /// Images labelled [`Label::Anomalous`].
    pub anomalous: usize,
}

impl Counts {
    /// All images, normal and anomalous.
    pub fn total(&self) -> usize {
        self.normal + self.anomalous
    }
}

impl Category {
    /// How many of its samples are normal and anomalous.
    pub fn counts(&self) -> Counts {
        let anomalous = self
            .samples
            .iter()
            .filter(|s| s.label.is_anomalous())
            .count();
        Counts {
            normal: self.samples.len() - anomalous,
            anomalous,
        }
    }
}

/// A dataset split read from disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// The layout it was read as.
    pub layout: Layout,
    /// The dataset root every relative path starts from.
    pub root: PathBuf,
    /// The split that was read.
    pub split: Split,
    /// Its categories, sorted by name.
    pub categories: Vec<Category>,
}

impl Dataset {
    /// Every sample, category by category.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.categories.iter().flat_map(|c| c.samples.iter())
    }

    /// The number of samples over all categories.
    pub fn len(&self) -> usize {
        self.categories.iter().map(|c| c.samples.len()).sum()
    }

    /// Whether no category has a sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The category with on-disk name `name`.
    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }

    /// Normal and anomalous samples over all categories.
    pub fn counts(&self) -> Counts {
        self.categories.iter().fold(Counts::default(), |acc, c| {
            let n = c.counts();
            Counts {
                normal: acc.normal + n.normal,
                anomalous: acc.anomalous + n.anomalous,
            }
        })
    }
}

/// What to do when a sample or category fails the checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnProblem {
    /// Return [`DatasetError::Problems`] listing every offending path.
    #[default]
    Fail,
    /// Drop the offending samples (and empty categories) and return them in
    /// [`Loaded::skipped`].
    Skip,
}

/// How thoroughly [`load`] checks the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    /// Files exist, their headers parse, masks have the image's size.
    #[default]
    Headers,
    /// Also decode every image fully, so that a truncated or corrupt image is a problem of the
    /// load (and skipped under [`OnProblem::Skip`]) instead of an error in the middle of a run.
    Decode,
    /// Also decode every image and mask fully (catches truncated files) and require anomalous
    /// masks to have at least one non-zero pixel.
    Full,
}

/// Options of [`load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `None`: detect from the tree ([`detect_layout`]).
    pub layout: Option<Layout>,
    /// The split to read; `None` reads [`Split::Test`].
    pub split: Option<Split>,
    /// Keep only these categories (by on-disk name); empty keeps all. Unknown names are an
    /// error.
    pub categories: Vec<String>,
    /// Fail on problems or skip the offending samples.
    pub on_problem: OnProblem,
    /// How much of every file is read to check it.
    pub check: CheckLevel,
}

/// What can be wrong with one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProblemKind {
    /// An image file that an index names but that does not exist.
    MissingImage,
    /// An image whose header (or, with [`CheckLevel::Decode`], data) does not decode.
    UnreadableImage {
        /// The decoder's message.
        reason: String,
    },
    /// An anomalous image without a mask in a layout that has masks. The path is the image
    /// when no mask could be paired with it, or the mask file an index names but that does not
    /// exist.
    MissingMask,
    /// A mask file that does not decode.
    UnreadableMask {
        /// The decoder's message.
        reason: String,
    },
    /// A mask whose size differs from its image's.
    MaskSizeMismatch {
        /// The image's width and height.
        image: (u32, u32),
        /// The mask's width and height.
        mask: (u32, u32),
    },
    /// An anomalous image whose mask has no non-zero pixel ([`CheckLevel::Full`] only).
    EmptyMask,
    /// A category with no sample in the selected split.
    EmptyCategory,
    /// An index entry (csv row, meta.json item) that cannot be interpreted.
    BadEntry {
        /// Why it cannot be read.
        reason: String,
    },
}

/// One offending path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The category (on-disk name) the path belongs to.
    pub category: String,
    /// The offending file (for a missing mask: the image that lacks it; for an empty category:
    /// its folder).
    pub path: PathBuf,
    /// What is wrong with it.
    #[serde(flatten)]
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let cat = &self.category;
        match &self.kind {
            ProblemKind::MissingImage => write!(f, "[{cat}] missing image: {path}"),
            ProblemKind::UnreadableImage { reason } => {
                write!(f, "[{cat}] unreadable image: {path} ({reason})")
            }
            ProblemKind::MissingMask => {
                write!(f, "[{cat}] missing mask for anomalous image: {path}")
            }
            ProblemKind::UnreadableMask { reason } => {
                write!(f, "[{cat}] unreadable mask: {path} ({reason})")
            }
            ProblemKind::MaskSizeMismatch { image, mask } => write!(
                f,
                "[{cat}] mask size {}x{} differs from image size {}x{}: {path}",
                mask.0, mask.1, image.0, image.1
            ),
            ProblemKind::EmptyMask => {
                write!(f, "[{cat}] anomalous image with an all-zero mask: {path}")
            }
            ProblemKind::EmptyCategory => write!(f, "[{cat}] empty category: {path}"),
            ProblemKind::BadEntry { reason } => {
                write!(f, "[{cat}] bad index entry in {path}: {reason}")
            }
        }
    }
}

/// Every problem found, for [`DatasetError::Problems`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemList(pub Vec<Problem>);

impl fmt::Display for ProblemList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        #[source]
        error: std::io::Error,
    },
    /// A file that cannot be interpreted: an index (meta.json, VisA's csv) that does not parse,
    /// a file name that is not UTF-8.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tree is not in the given (or any detectable) layout.
    #[error("{0}")]
    Layout(String),
    /// The category filter names categories the dataset does not have.
    #[error("unknown categor{} {}; available: {}", if .unknown.len() == 1 { "y" } else { "ies" }, .unknown.join(", "), .available.join(", "))]
    UnknownCategories {
        /// The names that matched no category.
        unknown: Vec<String>,
        /// Every category the dataset has.
        available: Vec<String>,
    },
    /// A mask file that does not decode, or cannot be brought to the evaluation grid.
    #[error("cannot read mask {path}: {message}")]
    Mask {
        /// The mask file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Samples failed the checks under [`OnProblem::Fail`]; every offending path is listed.
    #[error("{} problem{} in the dataset (skip them with --skip-bad):\n{}", .0.0.len(), if .0.0.len() == 1 { "" } else { "s" }, .0)]
    Problems(ProblemList),
    /// Nothing is left to read after filtering and skipping.
    #[error("no samples left in {root} (split {split})")]
    Empty {
        /// The dataset root.
        root: PathBuf,
        /// The split that was read (`"test"` or `"train"`).
        split: &'static str,
    },
}

/// `Result` with [`DatasetError`].
pub type Result<T> = std::result::Result<T, DatasetError>;

/// A loaded dataset plus what was dropped under [`OnProblem::Skip`] (always empty under
/// [`OnProblem::Fail`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    /// The samples that passed the checks.
    pub dataset: Dataset,
    /// The problems of the samples (and categories) that were dropped.
    pub skipped: Vec<Problem>,
}

/// Read, check and filter one split of a dataset.
///
/// `root` is the dataset root; for [`Layout::MetaJson`] it may also be the meta.json file
/// itself (paths inside are then relative to the file's folder).
pub fn load(root: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded> {
    let root = root.as_ref();
    if !root.exists() {
        return Err(DatasetError::Io {
            path: root.to_path_buf(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let layout = match opts.layout {
        Some(l) => l,
        None => detect_layout(root)?,
    };
    let split = opts.split.unwrap_or(Split::Test);
    let listing = list(root, layout, split)?;
    let Listing {
        root,
        categories,
        mut problems,
    } = listing;

    let mut categories = filter_categories(categories, &opts.categories)?;
    problems.retain(|p| opts.categories.is_empty() || opts.categories.contains(&p.category));

    problems.extend(check::check_samples(&mut categories, layout, opts.check));
    for cat in &categories {
        if cat.samples.is_empty() {
            problems.push(Problem {
                category: cat.name.clone(),
                path: root.join(&cat.name),
                kind: ProblemKind::EmptyCategory,
            });
        }
    }
    if !problems.is_empty() && opts.on_problem == OnProblem::Fail {
        return Err(DatasetError::Problems(ProblemList(problems)));
    }
    categories.retain(|c| !c.samples.is_empty());
    if categories.is_empty() {
        return Err(DatasetError::Empty {
            root,
            split: split.as_str(),
        });
    }
    Ok(Loaded {
        dataset: Dataset {
            layout,
            root,
            split,
            categories,
        },
        skipped: problems,
    })
}

/// What a layout reader returns: unchecked categories plus entry-level problems it met.
pub(crate) struct Listing {
    pub root: PathBuf,
    pub categories: Vec<Category>,
    pub problems: Vec<Problem>,
}

fn list(root: &Path, layout: Layout, split: Split) -> Result<Listing> {
    if layout != Layout::MetaJson && !root.is_dir() {
        return Err(DatasetError::Layout(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    match layout {
        l if l.is_mvtec_style() => mvtec::list(root, l, split),
        Layout::Visa => visa::list(root, split),
        Layout::Ksdd2 => ksdd2::list(root, split),
        Layout::DagmRaw => dagm::list(root, split),
        Layout::MetaJson => meta_json::list(root, split),
        Layout::Folder => folder::list(root, split),
        _ => unreachable!("every layout has a reader"),
    }
}

fn filter_categories(categories: Vec<Category>, keep: &[String]) -> Result<Vec<Category>> {
    if keep.is_empty() {
        return Ok(categories);
    }
    let unknown: Vec<String> = keep
        .iter()
        .filter(|k| !categories.iter().any(|c| &c.name == *k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(DatasetError::UnknownCategories {
            unknown,
            available: categories.iter().map(|c| c.name.clone()).collect(),
        });
    }
    // Keep the order the user gave.
    let mut categories = categories;
    let mut out = Vec::with_capacity(keep.len());
    for k in keep {
        if let Some(pos) = categories.iter().position(|c| &c.name == k) {
            out.push(categories.swap_remove(pos));
        }
    }
    Ok(out)
}

/// Decide the layout from the tree. Fails, naming the candidates, when it is ambiguous or
/// unrecognised.
///
/// Rules, in order: a file is a meta.json index; `split_csv/1cls.csv` is VisA; `ClassN/Train/
/// Label` folders are raw DAGM; `train/*_GT.png` and `test/*_GT.png` are raw KSDD2; category
/// folders containing `test/` are an MVTec-style tree, named after the category names (BTAD
/// when its normal folders are `ok`, MPDD, DTD-Synthetic, DAGM `ClassN`, SDD, RSDD `Metal15`,
/// otherwise MVTec); category folders containing `good/` directly are the plain folder
/// convention; a lone `meta.json` is the index.
pub fn detect_layout(root: &Path) -> Result<Layout> {
    if root.is_file() {
        return Ok(Layout::MetaJson);
    }
    if root.join("split_csv").join("1cls.csv").is_file() {
        return Ok(Layout::Visa);
    }
    let subdirs = list_dirs(root)?;
    if !subdirs.is_empty()
        && subdirs.iter().any(|d| {
            let p = root.join(d);
            (p.join("Train").join("Label").is_dir() || p.join("Test").join("Label").is_dir())
                && d.to_ascii_lowercase().starts_with("class")
        })
    {
        return Ok(Layout::DagmRaw);
    }
    if has_gt_files(&root.join("train")) || has_gt_files(&root.join("test")) {
        return Ok(Layout::Ksdd2);
    }
    let mvtec_cats: Vec<&String> = subdirs
        .iter()
        .filter(|d| root.join(d).join("test").is_dir())
        .collect();
    let folder_cats: Vec<&String> = subdirs
        .iter()
        .filter(|d| {
            folder::NORMAL_DIRS
                .iter()
                .any(|n| root.join(d).join(n).is_dir())
        })
        .collect();
    match (mvtec_cats.is_empty(), folder_cats.is_empty()) {
        (false, true) => return Ok(mvtec::name_tree(root, &mvtec_cats)),
        (true, false) => return Ok(Layout::Folder),
        (false, false) => {
            return Err(DatasetError::Layout(format!(
                "{}: ambiguous layout: {} look like MVTec-style categories (have test/) and {} like plain folders (have good/); pass the layout explicitly",
                root.display(),
                join_names(&mvtec_cats),
                join_names(&folder_cats)
            )))
        }
        (true, true) => {}
    }
    if root.join("meta.json").is_file() {
        return Ok(Layout::MetaJson);
    }
    Err(DatasetError::Layout(format!(
        "{}: cannot recognise the dataset layout (no meta.json, no split_csv/1cls.csv, no category folder with test/ or good/); pass the layout explicitly",
        root.display()
    )))
}

fn join_names(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn has_gt_files(dir: &Path) -> bool {
    list_files(dir)
        .map(|files| files.iter().any(|f| stem_of(f).ends_with("_GT")))
        .unwrap_or(false)
}

// ---- small file-system helpers shared by the readers --------------------------------------

/// Image file extensions the readers pick up (case-insensitive).
pub(crate) const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

pub(crate) fn is_image_name(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

pub(crate) fn stem_of(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

fn read_dir_sorted(dir: &Path, want_dirs: bool) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|error| DatasetError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|error| DatasetError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            return Err(DatasetError::Format {
                path: entry.path(),
                message: "file name is not valid UTF-8".into(),
            });
        };
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks: datasets are often linked into place.
        let is_dir = entry.path().is_dir();
        if is_dir == want_dirs {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Sub-folder names of `dir`, sorted, hidden ones left out.
pub(crate) fn list_dirs(dir: &Path) -> Result<Vec<String>> {
    read_dir_sorted(dir, true)
}

/// File names of `dir`, sorted, hidden ones left out.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>> {
    read_dir_sorted(dir, false)
}

/// Image file names of `dir`, sorted.
pub(crate) fn list_images(dir: &Path) -> Result<Vec<String>> {
    Ok(list_files(dir)?
        .into_iter()
        .filter(|n| is_image_name(n))
        .collect())
}

/// `path` relative to `root` with `/` separators (the path itself when it is not below root).
pub(crate) fn rel_string(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Find the mask of image `stem` in `dir` among `candidates` suffixes (`""` = same stem), any
/// image extension. Pairs by name only.
pub(crate) fn find_mask(
    dir: &Path,
    files: &[String],
    stem: &str,
    suffixes: &[&str],
) -> Option<PathBuf> {
    for suffix in suffixes {
        let want = format!("{stem}{suffix}");
        // Prefer png (the common mask format), then any other image extension.
        let mut hits: Vec<&String> = files
            .iter()
            .filter(|f| is_image_name(f) && stem_of(f) == want)
            .collect();
        hits.sort_by_key(|f| !f.to_ascii_lowercase().ends_with(".png"));
        if let Some(f) = hits.first() {
            return Some(dir.join(f));
        }
    }
    None
}

pub(crate) fn new_category(name: &str, layout: Layout, samples: Vec<Sample>) -> Category {
    Category {
        name: name.to_string(),
        prompt_name: prompt_name(name, layout),
        samples,
    }
}
