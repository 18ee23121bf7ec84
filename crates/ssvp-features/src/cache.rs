//! [`FeatureCache`]: backbone features on disk, keyed by image content and backbone identity.
//!
//! Layout: `<dir>/<identity digest>/identity.json` (for people) and one
//! `<dir>/<identity digest>/<sha256 of the image file>.safetensors` per image holding
//! `clip_local.<l>` `[N, D_c]`, `dino_local.<l>` `[N, D_d]`, `clip_global` `[D_c]`,
//! `dino_global` `[D_d]`, with the identity digest, the image hash and the grid in the metadata.
//! Entries are written to a temporary file and renamed, so a reader never sees half a file;
//! an entry that cannot be read, or whose metadata or shapes disagree, is recomputed with a
//! warning and overwritten, never used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use ssvp_image::RgbImage8;

use crate::error::{ensure_fits, Error, Result};
use crate::features::{FeatureSource, ImageFeatures};
use crate::identity::{sha256_hex, BackboneIdentity, FEATURE_FORMAT};

/// On-disk precision of cached features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStorage {
    /// Half the disk space; values round to ~3 significant digits (relative error < 5e-4).
    F16,
    /// Exact.
    #[default]
    F32,
}

impl CacheStorage {
    fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
        }
    }
}

/// Counters since the cache was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Images read from disk.
    pub hits: u64,
    /// Images computed by the inner source (and stored).
    pub misses: u64,
    /// Entries that existed but were unreadable or mismatched, and were recomputed.
    pub recovered: u64,
}

impl CacheStats {
    /// The closing line of a run over the cache in `dir`: hits, misses and recomputed entries.
    pub fn line(&self, dir: &Path) -> String {
        format!(
            "feature cache {}: {} hits, {} misses{}",
            dir.display(),
            self.hits,
            self.misses,
            if self.recovered > 0 {
                format!(", {} recomputed", self.recovered)
            } else {
                String::new()
            }
        )
    }
}

type WarningHandler = Box<dyn Fn(&str) + Send + Sync>;

/// A [`FeatureSource`] that serves features from disk and asks `inner` only on a miss.
pub struct FeatureCache<S: FeatureSource> {
    inner: S,
    dir: PathBuf,
    storage: CacheStorage,
    digest: String,
    hits: AtomicU64,
    misses: AtomicU64,
    recovered: AtomicU64,
    warn: WarningHandler,
}

const META_FORMAT: &str = "ssvp.format";
const META_IDENTITY: &str = "ssvp.identity";
const META_CONTENT: &str = "ssvp.content";
const META_GRID: &str = "ssvp.grid";

impl<S: FeatureSource> FeatureCache<S> {
    /// The cache directory when none is given: `$SSVP_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/ssvp/features`, else `~/.cache/ssvp/features`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("SSVP_CACHE_DIR") {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("ssvp").join("features")
    }

    /// Opens (creating it if needed) the cache for `inner`'s identity under `dir`.
    pub fn new(inner: S, dir: PathBuf, storage: CacheStorage) -> Result<Self> {
        let digest = inner.identity().digest();
        let sub = dir.join(&digest);
        std::fs::create_dir_all(&sub).map_err(|e| {
            Error::io(
                format!("cannot create the feature cache {}", sub.display()),
                &sub,
                e,
            )
        })?;
        let about = sub.join("identity.json");
        if !about.is_file() {
            let json =
                serde_json::to_string_pretty(inner.identity()).expect("an identity serialises");
            ssvp_util::fs::write_atomic(&about, json.as_bytes())
                .map_err(|e| Error::io(format!("cannot write {}", about.display()), &about, e))?;
        }
        Ok(Self {
            inner,
            dir: sub,
            storage,
            digest,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            warn: Box::new(|msg| eprintln!("warning: {msg}")),
        })
    }

    /// Routes warnings (recomputed entries) somewhere other than stderr.
    pub fn with_warning_handler(mut self, handler: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.warn = Box::new(handler);
        self
    }

    /// The source misses go to.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The source misses go to, owned.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The directory holding this identity's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The on-disk precision.
    pub fn storage(&self) -> CacheStorage {
        self.storage
    }

    /// Hits, misses and recovered entries since the cache was opened.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
        }
    }

    /// Where the entry of an image with content hash `content` lives.
    pub fn entry_path(&self, content: &str) -> PathBuf {
        self.dir.join(format!("{content}.safetensors"))
    }

    /// The content hash of an image file (its key in the cache).
    pub fn content_hash(image_path: &Path) -> Result<String> {
        let bytes = std::fs::read(image_path).map_err(|e| Error::Image {
            context: format!("cannot read image {}", image_path.display()),
            source: ssvp_image::Error::Io {
                path: image_path.to_path_buf(),
                source: e,
            },
        })?;
        Ok(sha256_hex(&bytes))
    }

    /// `Some(features)` on a valid hit; `None` when absent; a warning and `None` when the entry
    /// is there but unusable.
    fn lookup(&self, content: &str, image_path: &Path) -> Option<ImageFeatures> {
        let path = self.entry_path(content);
        if !path.exists() {
            return None;
        }
        match self.read_entry(&path, content) {
            Ok(f) => Some(f),
            Err(e) => {
                self.recovered.fetch_add(1, Ordering::Relaxed);
                (self.warn)(&format!(
                    "feature cache entry {} for {} is unusable ({e:#}); recomputing it",
                    path.display(),
                    image_path.display()
                ));
                None
            }
        }
    }

    fn read_entry(&self, path: &Path, content: &str) -> Result<ImageFeatures> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io("cannot read the cache entry", path, e))?;
        let unreadable = |e: safetensors::SafeTensorError| Error::Mismatch(e.to_string());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(unreadable)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .map(String::as_str)
                .ok_or_else(|| Error::Mismatch(format!("metadata has no `{k}`")))
        };
        ensure_fits!(
            get(META_FORMAT)? == FEATURE_FORMAT.to_string(),
            "feature format {} (this build writes {FEATURE_FORMAT})",
            get(META_FORMAT)?
        );
        ensure_fits!(
            get(META_IDENTITY)? == self.digest,
            "written for backbone identity {}, these backbones are {}",
            get(META_IDENTITY)?,
            self.digest
        );
        ensure_fits!(
            get(META_CONTENT)? == content,
            "written for image content {}, the file hashes to {content}",
            get(META_CONTENT)?
        );
        let grid = get(META_GRID)?;
        let grid = grid
            .split_once(',')
            .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
            .ok_or_else(|| Error::Mismatch(format!("bad grid `{grid}`")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(unreadable)?;
        let device = self.inner.device();
        let load = |name: &str| -> Result<Tensor> {
            let view = st
                .tensor(name)
                .map_err(|_| Error::Mismatch(format!("no tensor `{name}`")))?;
            Ok(view.load(device)?.to_dtype(DType::F32)?)
        };
        let id = self.inner.identity();
        let features = ImageFeatures {
            clip_local: (0..id.clip_layers.len())
                .map(|l| load(&format!("clip_local.{l}")))
                .collect::<Result<_>>()?,
            dino_local: (0..id.dino_layers.len())
                .map(|l| load(&format!("dino_local.{l}")))
                .collect::<Result<_>>()?,
            clip_global: load("clip_global")?,
            dino_global: load("dino_global")?,
            grid,
        };
        let expected = 2 + id.clip_layers.len() + id.dino_layers.len();
        ensure_fits!(
            st.len() == expected,
            "{} tensors, expected {expected}",
            st.len()
        );
        features.check(id)?;
        let finite = |t: &Tensor| -> Result<bool> {
            Ok(t.abs()?.max_all()?.to_scalar::<f32>()?.is_finite())
        };
        for t in features
            .clip_local
            .iter()
            .chain(&features.dino_local)
            .chain([&features.clip_global, &features.dino_global])
        {
            ensure_fits!(finite(t)?, "holds non-finite values");
        }
        Ok(features)
    }

    /// Writes an entry atomically (temporary file in the same directory, then rename).
    fn store(&self, content: &str, features: &ImageFeatures) -> Result<()> {
        let dtype = self.storage.dtype();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (l, t) in features.clip_local.iter().enumerate() {
            tensors.push((format!("clip_local.{l}"), t.clone()));
        }
        for (l, t) in features.dino_local.iter().enumerate() {
            tensors.push((format!("dino_local.{l}"), t.clone()));
        }
        tensors.push(("clip_global".into(), features.clip_global.clone()));
        tensors.push(("dino_global".into(), features.dino_global.clone()));
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(dtype)?.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let meta = HashMap::from([
            (META_FORMAT.to_string(), FEATURE_FORMAT.to_string()),
            (META_IDENTITY.to_string(), self.digest.clone()),
            (META_CONTENT.to_string(), content.to_string()),
            (
                META_GRID.to_string(),
                format!("{},{}", features.grid.0, features.grid.1),
            ),
        ]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
                .map_err(|e| Error::Candle(candle_core::Error::wrap(e)))?;
        let target = self.entry_path(content);
        // Atomic: concurrent writers of one entry (two processes warming one cache) each rename
        // a complete file into place, and a killed writer leaves only a stray temporary file.
        // Not synced to disk: an entry lost in a crash is recomputed, and an fsync per image
        // would slow the warm-up for nothing.
        ssvp_util::fs::write_atomic_with(&target, |tmp| std::fs::write(tmp, &bytes)).map_err(
            |e| {
                Error::io(
                    format!("cannot write the cache entry {}", target.display()),
                    &target,
                    e,
                )
            },
        )?;
        Ok(())
    }

    /// What the cache hands out for freshly computed features: exactly what a later hit will
    /// read back (rounded through f16 when the storage is f16), so a run never depends on
    /// whether an image was cached.
    fn as_stored(&self, features: ImageFeatures) -> Result<ImageFeatures> {
        if self.storage == CacheStorage::F32 {
            return Ok(features);
        }
        let round = |t: &Tensor| t.to_dtype(DType::F16)?.to_dtype(DType::F32);
        Ok(ImageFeatures {
            clip_local: features
                .clip_local
                .iter()
                .map(round)
                .collect::<candle_core::Result<_>>()?,
            dino_local: features
                .dino_local
                .iter()
                .map(round)
                .collect::<candle_core::Result<_>>()?,
            clip_global: round(&features.clip_global)?,
            dino_global: round(&features.dino_global)?,
            grid: features.grid,
        })
    }
}

impl<S: FeatureSource> FeatureSource for FeatureCache<S> {
    fn identity(&self) -> &BackboneIdentity {
        self.inner.identity()
    }

    /// Decoded images bypass the cache (nothing keys them); the inner source computes them.
    fn features_of_images(&self, images: &[RgbImage8]) -> Result<Vec<ImageFeatures>> {
        self.inner.features_of_images(images)
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn features(&self, image_path: &Path) -> Result<ImageFeatures> {
        let mut out = self.features_batch(&[image_path.to_path_buf()])?;
        Ok(out.remove(0))
    }

    /// Hits are read from disk; all misses go to the inner source as one batch.
    fn features_batch(&self, image_paths: &[PathBuf]) -> Result<Vec<ImageFeatures>> {
        let mut out: Vec<Option<ImageFeatures>> = Vec::with_capacity(image_paths.len());
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (i, path) in image_paths.iter().enumerate() {
            let content = Self::content_hash(path)?;
            match self.lookup(&content, path) {
                Some(f) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    out.push(Some(f));
                }
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    out.push(None);
                    missing.push((i, content));
                }
            }
        }
        if !missing.is_empty() {
            let paths: Vec<PathBuf> = missing
                .iter()
                .map(|(i, _)| image_paths[*i].clone())
                .collect();
            let computed = self.inner.features_batch(&paths)?;
            ensure_fits!(
                computed.len() == paths.len(),
                "the feature source returned {} results for {} images",
                computed.len(),
                paths.len()
            );
            for ((i, content), features) in missing.into_iter().zip(computed) {
                features.check(self.inner.identity())?;
                self.store(&content, &features)?;
                out[i] = Some(self.as_stored(features)?);
            }
        }
        Ok(out
            .into_iter()
            .map(|f| f.expect("every slot filled"))
            .collect())
    }
}
