//! `FeatureCache` over the tiny backbones: hits and misses by image content, batches that send
//! only misses to the backbones, keys that follow the backbone identity, f16 storage within its
//! rounding, and recovery (with a warning) from corrupt, truncated, foreign or wrong-shaped
//! entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use ssvp_features::{
    BackboneIdentity, Backbones, BackbonesConfig, CacheStats, CacheStorage, FeatureCache,
    FeatureSource, ImageFeatures,
};

use crate::tiny_taps;

/// Counts the images the wrapped source is asked for.
struct Counting<S> {
    inner: S,
    images: AtomicUsize,
    calls: AtomicUsize,
}

impl<S: FeatureSource> Counting<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            images: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        }
    }
    fn images(&self) -> usize {
        self.images.load(Ordering::Relaxed)
    }
}

impl<S: FeatureSource> FeatureSource for Counting<S> {
    fn identity(&self) -> &BackboneIdentity {
        self.inner.identity()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn features(&self, p: &Path) -> ssvp_features::Result<ImageFeatures> {
        Ok(self.features_batch(&[p.to_path_buf()])?.remove(0))
    }
    fn features_batch(&self, ps: &[PathBuf]) -> ssvp_features::Result<Vec<ImageFeatures>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.images.fetch_add(ps.len(), Ordering::Relaxed);
        self.inner.features_batch(ps)
    }
}

fn tiny_with_seed(seed: u64) -> Backbones {
    let cfg = BackbonesConfig {
        seed,
        ..BackbonesConfig::tiny()
    };
    Backbones::load(&cfg, &tiny_taps(), &Device::Cpu).unwrap()
}

fn write_image(dir: &Path, name: &str, variant: u8) -> PathBuf {
    let img = image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, variant.wrapping_mul(37)])
    });
    let p = dir.join(name);
    img.save(&p).unwrap();
    p
}

fn all_tensors(f: &ImageFeatures) -> Vec<&Tensor> {
    f.clip_local
        .iter()
        .chain(&f.dino_local)
        .chain([&f.clip_global, &f.dino_global])
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `max |a - b| / max |b|` over every tensor of the features.
fn rel_err(a: &ImageFeatures, b: &ImageFeatures) -> f32 {
    all_tensors(a)
        .into_iter()
        .zip(all_tensors(b))
        .map(|(x, y)| {
            let scale = y
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 0.0);
            max_abs_diff(x, y) / scale
        })
        .fold(0f32, f32::max)
}

fn stats(hits: u64, misses: u64, recovered: u64) -> CacheStats {
    CacheStats {
        hits,
        misses,
        recovered,
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

#[test]
fn hits_and_misses_follow_image_content() {
    let imgs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let a = write_image(imgs.path(), "a.png", 1);
    let b = write_image(imgs.path(), "b.png", 2);
    let cache = FeatureCache::new(
        Counting::new(tiny_with_seed(7)),
        store.path().to_path_buf(),
        CacheStorage::F32,
    )
    .unwrap();

    let first = cache.features(&a).unwrap();
    assert_eq!((cache.stats(), cache.inner().images()), (stats(0, 1, 0), 1));
    let again = cache.features(&a).unwrap();
    assert_eq!((cache.stats(), cache.inner().images()), (stats(1, 1, 0), 1));
    assert_eq!(rel_err(&again, &first), 0.0, "f32 storage is exact");
    // Same bytes under another name: a hit.
    let copy = imgs.path().join("copy-of-a.png");
    std::fs::copy(&a, &copy).unwrap();
    cache.features(&copy).unwrap();
    assert_eq!(cache.stats(), stats(2, 1, 0));

    // A batch sends only its misses, once, to the backbones; order is kept.
    let batch = cache
        .features_batch(&[a.clone(), b.clone(), copy.clone()])
        .unwrap();
    assert_eq!(cache.stats(), stats(4, 2, 0));
    assert_eq!(cache.inner().images(), 2);
    assert_eq!(cache.inner().calls.load(Ordering::Relaxed), 2);
    assert_eq!(rel_err(&batch[0], &first), 0.0);
    assert!(max_abs_diff(&batch[1].clip_global, &first.clip_global) > 1e-4);
    // The cached value equals a fresh extraction.
    let fresh = cache.inner().inner.features(&b).unwrap();
    assert_eq!(rel_err(&batch[1], &fresh), 0.0);

    // Changing the file's content makes it a miss.
    write_image(imgs.path(), "a.png", 9);
    cache.features(&a).unwrap();
    assert_eq!(cache.stats(), stats(4, 3, 0));
    assert_eq!(entries(cache.dir()).len(), 3);
    assert!(
        leftovers(cache.dir()).is_empty(),
        "temporary files left behind"
    );
    assert!(cache.dir().join("identity.json").is_file());

    // A second cache over the same directory sees the entries.
    let reopened = FeatureCache::new(
        Counting::new(tiny_with_seed(7)),
        store.path().to_path_buf(),
        CacheStorage::F32,
    )
    .unwrap();
    assert_eq!(rel_err(&reopened.features(&b).unwrap(), &fresh), 0.0);
    assert_eq!(
        (reopened.stats(), reopened.inner().images()),
        (stats(1, 0, 0), 0)
    );

    // A missing image is an error, not a cache entry.
    assert!(cache.features(&imgs.path().join("nope.png")).is_err());
}

#[test]
fn key_follows_the_backbone_identity() {
    let imgs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let a = write_image(imgs.path(), "a.png", 1);
    let c7 = FeatureCache::new(
        Counting::new(tiny_with_seed(7)),
        store.path().to_path_buf(),
        CacheStorage::F32,
    )
    .unwrap();
    let c8 = FeatureCache::new(
        Counting::new(tiny_with_seed(8)),
        store.path().to_path_buf(),
        CacheStorage::F32,
    )
    .unwrap();
    assert_ne!(c7.dir(), c8.dir());
    let f7 = c7.features(&a).unwrap();
    let f8 = c8.features(&a).unwrap();
    assert_eq!((c7.stats(), c8.stats()), (stats(0, 1, 0), stats(0, 1, 0)));
    assert!(max_abs_diff(&f7.clip_global, &f8.clip_global) > 1e-4);

    // Every field that changes the features changes the digest; the weights' spelling does not.
    let id = c7.identity().clone();
    let mut renamed = id.clone();
    renamed.clip = "/somewhere/else/clip".into();
    assert_eq!(renamed.digest(), id.digest());
    id.check_matches(&renamed).unwrap();
    let variants: Vec<fn(&mut BackboneIdentity)> = vec![
        |i| i.clip_size = (224, 224),
        |i| i.dino_layers = vec![1, 2, 3, 3],
        |i| i.clip_layers = vec![1, 2, 4, 4],
        |i| i.dtype = "f16".into(),
        |i| i.pos_interp = "bilinear".into(),
        |i| i.dpam_from = Some(2),
        |i| i.clip_weights = "seeded:99".into(),
        |i| i.preprocess.push('!'),
        |i| i.format += 1,
    ];
    for (k, change) in variants.iter().enumerate() {
        let mut other = id.clone();
        change(&mut other);
        assert_ne!(other.digest(), id.digest(), "variant {k}");
        assert!(id.check_matches(&other).is_err(), "variant {k}");
    }
}

#[test]
fn f16_storage_round_trips_within_half_precision() {
    let imgs = tempfile::tempdir().unwrap();
    let a = write_image(imgs.path(), "a.png", 3);
    let exact = tiny_with_seed(7).features(&a).unwrap();
    let sizes: Vec<u64> = [CacheStorage::F32, CacheStorage::F16]
        .into_iter()
        .map(|storage| {
            let store = tempfile::tempdir().unwrap();
            let cache =
                FeatureCache::new(tiny_with_seed(7), store.path().to_path_buf(), storage).unwrap();
            let computed = cache.features(&a).unwrap();
            let read = cache.features(&a).unwrap();
            assert_eq!(cache.stats(), stats(1, 1, 0));
            // What a miss hands out is exactly what a later hit reads.
            assert_eq!(rel_err(&read, &computed), 0.0, "{storage:?}");
            let e = rel_err(&read, &exact);
            match storage {
                CacheStorage::F32 => assert_eq!(e, 0.0),
                // f16 keeps 11 significant bits: relative rounding <= 2^-11 of each value.
                CacheStorage::F16 => assert!(e > 0.0 && e < 5e-4, "f16 error {e:e}"),
            }
            std::fs::metadata(&entries(cache.dir())[0]).unwrap().len()
        })
        .collect();
    assert!(
        sizes[1] * 10 < sizes[0] * 6,
        "f16 entry {} vs f32 {}",
        sizes[1],
        sizes[0]
    );
}

#[test]
fn broken_entries_are_recomputed_with_a_warning() {
    let imgs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let a = write_image(imgs.path(), "a.png", 1);
    let b = write_image(imgs.path(), "b.png", 2);
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let cache = FeatureCache::new(
        Counting::new(tiny_with_seed(7)),
        store.path().to_path_buf(),
        CacheStorage::F32,
    )
    .unwrap()
    .with_warning_handler(move |m| sink.lock().unwrap().push(m.to_string()));
    let good_a = cache.features(&a).unwrap();
    let good_b = cache.features(&b).unwrap();
    let entry_a = entries(cache.dir())
        .into_iter()
        .find(|p| {
            p.file_stem().unwrap().to_string_lossy()
                == FeatureCache::<Backbones>::content_hash(&a).unwrap()
        })
        .unwrap();
    let entry_b = entries(cache.dir())
        .into_iter()
        .find(|p| *p != entry_a)
        .unwrap();
    let valid_a = std::fs::read(&entry_a).unwrap();

    let expect_recovery = |what: &str, damage: &dyn Fn()| {
        damage();
        let before = cache.stats();
        let images = cache.inner().images();
        let got = cache.features(&a).unwrap();
        assert_eq!(rel_err(&got, &good_a), 0.0, "{what}: recomputed value");
        assert_eq!(cache.stats().recovered, before.recovered + 1, "{what}");
        assert_eq!(cache.inner().images(), images + 1, "{what}: recomputed");
        let w = warnings.lock().unwrap().pop().unwrap_or_default();
        assert!(w.contains("unusable") && w.contains("a.png"), "{what}: {w}");
        // The entry was rewritten: the next read is a clean hit.
        cache.features(&a).unwrap();
        assert_eq!(cache.stats().hits, before.hits + 1, "{what}: rewritten");
    };

    expect_recovery("garbage", &|| {
        std::fs::write(&entry_a, b"definitely not safetensors").unwrap()
    });
    expect_recovery("truncated", &|| {
        std::fs::write(&entry_a, &valid_a[..valid_a.len() / 2]).unwrap()
    });
    expect_recovery("empty", &|| std::fs::write(&entry_a, b"").unwrap());
    // Another image's entry under this image's name: its recorded content hash disagrees.
    expect_recovery("foreign", &|| {
        std::fs::copy(&entry_b, &entry_a).map(|_| ()).unwrap()
    });

    // Right metadata, wrong shapes / NaN values / missing tensors.
    let meta_of = |bytes: &[u8]| -> HashMap<String, String> {
        let (_, m) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        m.metadata().clone().unwrap()
    };
    let meta = meta_of(&valid_a);
    let write_with = |tensors: Vec<(String, Tensor)>| {
        let bytes = safetensors::serialize(
            tensors.iter().map(|(k, t)| (k.as_str(), t)),
            Some(meta.clone()),
        )
        .unwrap();
        std::fs::write(&entry_a, bytes).unwrap();
    };
    let named = |f: &ImageFeatures| -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = Vec::new();
        for (l, t) in f.clip_local.iter().enumerate() {
            v.push((format!("clip_local.{l}"), t.clone()));
        }
        for (l, t) in f.dino_local.iter().enumerate() {
            v.push((format!("dino_local.{l}"), t.clone()));
        }
        v.push(("clip_global".into(), f.clip_global.clone()));
        v.push(("dino_global".into(), f.dino_global.clone()));
        v
    };
    // Sanity: rewriting the valid tensors with the valid metadata is a hit, not a recovery.
    write_with(named(&good_a));
    let before = cache.stats();
    cache.features(&a).unwrap();
    assert_eq!(cache.stats().hits, before.hits + 1);

    expect_recovery("wrong shape", &|| {
        let mut t = named(&good_a);
        t[0].1 = t[0].1.narrow(0, 0, 10).unwrap();
        write_with(t);
    });
    expect_recovery("non-finite", &|| {
        let mut t = named(&good_a);
        t[5].1 = (&t[5].1 / 0.0).unwrap();
        write_with(t);
    });
    expect_recovery("missing tensor", &|| {
        let mut t = named(&good_a);
        t.pop();
        write_with(t);
    });
    expect_recovery("other identity", &|| {
        let mut m = meta.clone();
        m.insert("ssvp.identity".into(), "0".repeat(64));
        let t = named(&good_a);
        let bytes =
            safetensors::serialize(t.iter().map(|(k, t)| (k.as_str(), t)), Some(m)).unwrap();
        std::fs::write(&entry_a, bytes).unwrap();
    });
    // The untouched entry of b was never recomputed.
    assert_eq!(rel_err(&cache.features(&b).unwrap(), &good_b), 0.0);
    assert!(leftovers(cache.dir()).is_empty());
}
