//! What `ssvp train` and `ssvp eval` share: the dataset layout argument, the test-split
//! loading and the feature cache options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ssvp_eval::datasets::{self, CheckLevel, Dataset, Layout, LoadOptions, OnProblem, Split};
use ssvp_features::{Backbones, CacheStorage, FeatureCache, FeatureSource};

/// Feature cache options.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// Feature cache directory (keyed by image content and backbones, so it is safe to share
    /// between runs and datasets). Default: $SSVP_CACHE_DIR, else $XDG_CACHE_HOME/ssvp/features,
    /// else ~/.cache/ssvp/features.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Precision of cached features: f32 (exact) or f16 (half the disk, ~5e-4 relative error).
    #[arg(long, default_value = "f32", value_parser = parse_storage)]
    pub cache_dtype: CacheStorage,
    /// Do not cache features (every epoch runs the backbones again).
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

fn parse_storage(s: &str) -> Result<CacheStorage, String> {
    match s {
        "f32" => Ok(CacheStorage::F32),
        "f16" => Ok(CacheStorage::F16),
        other => Err(format!(
            "unknown cache dtype `{other}` (expected f32 or f16)"
        )),
    }
}

/// Checks `--dataset` and `--root` before anything is written: the layout (`None` = detect).
pub fn check_dataset_args(dataset: &str, root: &Path) -> anyhow::Result<Option<Layout>> {
    let layout = parse_layout(dataset)?;
    anyhow::ensure!(
        root.exists(),
        "dataset root {} does not exist",
        root.display()
    );
    Ok(layout)
}

/// One split of a dataset, with skipped samples listed on stderr; `purpose` names the data in the
/// error context. `check` is how thoroughly files are checked before the run (`Decode` catches
/// truncated images up front, for a run that has no other way to skip them).
pub fn load_split(
    root: &Path,
    layout: Option<Layout>,
    categories: &[String],
    skip_bad: bool,
    check: CheckLevel,
    split: Split,
    purpose: &str,
) -> anyhow::Result<Dataset> {
    let loaded = datasets::load(
        root,
        &LoadOptions {
            layout,
            split: Some(split),
            categories: categories.to_vec(),
            on_problem: if skip_bad {
                OnProblem::Skip
            } else {
                OnProblem::Fail
            },
            check,
        },
    )
    .with_context(|| format!("reading the {purpose} data in {}", root.display()))?;
    for p in &loaded.skipped {
        eprintln!("skipped: {p}");
    }
    Ok(loaded.dataset)
}

/// `auto` or a layout name.
pub fn parse_layout(name: &str) -> anyhow::Result<Option<Layout>> {
    if name.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    Ok(Some(name.parse::<Layout>().map_err(anyhow::Error::msg)?))
}

/// The backbones, cached on disk unless `--no-cache`.
pub enum Source {
    Live(Arc<Backbones>),
    Cached(FeatureCache<Arc<Backbones>>),
}

impl Source {
    /// The source to read features from.
    pub fn as_source(&self) -> &dyn FeatureSource {
        match self {
            Source::Live(b) => b,
            Source::Cached(c) => c,
        }
    }

    /// Cache counters, for a closing line.
    pub fn stats(&self) -> Option<String> {
        match self {
            Source::Live(_) => None,
            Source::Cached(c) => Some(c.stats().line(c.dir())),
        }
    }
}

/// Wraps the backbones in the feature cache the arguments ask for.
pub fn feature_source(backbones: &Arc<Backbones>, args: &CacheArgs) -> anyhow::Result<Source> {
    if args.no_cache {
        return Ok(Source::Live(Arc::clone(backbones)));
    }
    let dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(FeatureCache::<Arc<Backbones>>::default_dir);
    Ok(Source::Cached(FeatureCache::new(
        Arc::clone(backbones),
        dir,
        args.cache_dtype,
    )?))
}
