//! What `ssvp train` and `ssvp eval` share: config loading, the `--backbones` preset, the
//! dataset layout argument and the feature cache options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use ssvp_eval::datasets::{self, Dataset, Layout, LoadOptions, OnProblem, Split};
use ssvp_image::RgbImage8;
use ssvp_model::config::{BackbonesConfig, TINY};
use ssvp_model::features::{
    BackboneIdentity, Backbones, CacheStorage, FeatureCache, FeatureSource, ImageFeatures,
};
use ssvp_model::SsvpConfig;

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

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SSVP_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("ssvp").join("features")
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

/// The labelled test split of a dataset (what the zero-shot protocol trains and evaluates on),
/// with skipped samples listed on stderr; `purpose` names the data in the error context.
pub fn load_test_split(
    root: &Path,
    layout: Option<Layout>,
    categories: &[String],
    skip_bad: bool,
    purpose: &str,
) -> anyhow::Result<Dataset> {
    let loaded = datasets::load(
        root,
        &LoadOptions {
            layout,
            split: Some(Split::Test),
            categories: categories.to_vec(),
            on_problem: if skip_bad {
                OnProblem::Skip
            } else {
                OnProblem::Fail
            },
            ..LoadOptions::default()
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

/// The config file (missing keys: paper defaults), or the default, with the `--backbones`
/// preset applied: `tiny` alone gives [`SsvpConfig::tiny`]; with a config file it replaces only
/// the `[backbones]` section.
pub fn load_config(path: Option<&Path>, backbones: Option<&str>) -> anyhow::Result<SsvpConfig> {
    let preset = match backbones {
        None => None,
        Some(TINY) => Some(TINY),
        Some(other) => anyhow::bail!(
            "--backbones `{other}`: the only preset is `tiny`; name real weights in the config's \
             [backbones] section (clip = ..., dino = ...)"
        ),
    };
    let cfg = match (path, preset) {
        (Some(p), _) => {
            let mut cfg = SsvpConfig::from_toml_file(p)
                .with_context(|| format!("reading the config {}", p.display()))?;
            if preset.is_some() {
                cfg.backbones = BackbonesConfig::tiny();
            }
            cfg
        }
        (None, Some(_)) => SsvpConfig::tiny(),
        (None, None) => SsvpConfig::default(),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The backbones, cached on disk unless `--no-cache`.
pub enum Source {
    Live(Arc<Backbones>),
    Cached(FeatureCache<Arc<Backbones>>),
}

impl Source {
    /// Cache counters, for a closing line.
    pub fn stats(&self) -> Option<String> {
        match self {
            Source::Live(_) => None,
            Source::Cached(c) => {
                let s = c.stats();
                Some(format!(
                    "feature cache {}: {} hits, {} misses{}",
                    c.dir().display(),
                    s.hits,
                    s.misses,
                    if s.recovered > 0 {
                        format!(", {} recomputed", s.recovered)
                    } else {
                        String::new()
                    }
                ))
            }
        }
    }
}

impl FeatureSource for Source {
    fn identity(&self) -> &BackboneIdentity {
        match self {
            Source::Live(b) => b.identity(),
            Source::Cached(c) => c.identity(),
        }
    }
    fn device(&self) -> &Device {
        match self {
            Source::Live(b) => b.device(),
            Source::Cached(c) => c.device(),
        }
    }
    fn features(&self, image_path: &Path) -> anyhow::Result<ImageFeatures> {
        match self {
            Source::Live(b) => b.features(image_path),
            Source::Cached(c) => c.features(image_path),
        }
    }
    fn features_batch(&self, image_paths: &[PathBuf]) -> anyhow::Result<Vec<ImageFeatures>> {
        match self {
            Source::Live(b) => b.features_batch(image_paths),
            Source::Cached(c) => c.features_batch(image_paths),
        }
    }
    fn features_of_images(&self, images: &[RgbImage8]) -> anyhow::Result<Vec<ImageFeatures>> {
        match self {
            Source::Live(b) => b.features_of_images(images),
            Source::Cached(c) => c.features_of_images(images),
        }
    }
}

/// Wraps the backbones in the feature cache the arguments ask for.
pub fn feature_source(backbones: &Arc<Backbones>, args: &CacheArgs) -> anyhow::Result<Source> {
    if args.no_cache {
        return Ok(Source::Live(Arc::clone(backbones)));
    }
    let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    Ok(Source::Cached(FeatureCache::new(
        Arc::clone(backbones),
        dir,
        args.cache_dtype,
    )?))
}
