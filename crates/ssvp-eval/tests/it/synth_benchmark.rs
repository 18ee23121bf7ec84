//! The synthetic benchmark: determinism, exact masks, and that it reads back as MVTec.

use std::collections::BTreeMap;
use std::path::Path;

use ssvp_eval::datasets::{load, load_mask, Label, Layout, LoadOptions, Split};
use ssvp_eval::synth::{self, diff_mask, render, sample_seed, Defect, Kind, Part, SynthConfig};

fn small(kinds: Vec<Kind>, seed: u64) -> SynthConfig {
    SynthConfig {
        kinds,
        per_category: 4,
        size: 64,
        seed,
    }
}

/// Every file under `root`, relative path -> bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn same_seed_same_bytes_different_seed_different_images() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let cfg = small(Kind::ALL.to_vec(), 7);
    synth::generate(a.path(), &cfg, false).unwrap();
    synth::generate(b.path(), &cfg, false).unwrap();
    synth::generate(c.path(), &small(Kind::ALL.to_vec(), 8), false).unwrap();
    let (sa, sb, sc) = (snapshot(a.path()), snapshot(b.path()), snapshot(c.path()));
    // 6 kinds x (4 train + 4 good + 4 defect images + 4 masks).
    assert_eq!(sa.len(), 6 * 16);
    assert_eq!(sa, sb);
    assert_eq!(sa.keys().collect::<Vec<_>>(), sc.keys().collect::<Vec<_>>());
    for (k, bytes) in &sa {
        assert_ne!(bytes, &sc[k], "{k} did not change with the seed");
    }
    // Images within one run differ from each other too.
    assert_ne!(sa["disc/test/good/000.png"], sa["disc/test/good/001.png"]);
}

#[test]
fn images_do_not_depend_on_the_other_kinds_asked_for() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    synth::generate(a.path(), &small(vec![Kind::Screw], 3), false).unwrap();
    synth::generate(b.path(), &small(vec![Kind::Woven, Kind::Screw], 3), false).unwrap();
    let (sa, sb) = (snapshot(a.path()), snapshot(b.path()));
    for (k, v) in &sa {
        assert_eq!(&sb[k], v, "{k}");
    }
}

#[test]
fn written_masks_are_exactly_the_changed_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        kinds: Kind::ALL.to_vec(),
        per_category: 8,
        size: 96,
        seed: 11,
    };
    synth::generate(dir.path(), &cfg, false).unwrap();
    let mut checked = 0;
    for kind in Kind::ALL {
        let defects = kind.defects();
        for i in 0..cfg.per_category {
            let defect = defects[i % defects.len()];
            let index = i / defects.len();
            let base = dir.path().join(kind.name());
            let img = image::open(base.join(format!("test/{}/{index:03}.png", defect.name())))
                .unwrap()
                .to_rgb8();
            let mask = load_mask(base.join(format!(
                "ground_truth/{}/{index:03}_mask.png",
                defect.name()
            )))
            .unwrap();
            // Re-render the normal image the defect was painted on.
            let seed = sample_seed(cfg.seed, kind, Part::TestDefect(defect), index);
            let normal = render(kind, None, cfg.size, seed).image;
            let changed: Vec<u8> = img
                .pixels()
                .zip(normal.pixels())
                .map(|(a, b)| u8::from(a != b))
                .collect();
            assert_eq!(mask.pixels, changed, "{} {}", kind.name(), defect.name());
            let area = mask.count_foreground();
            assert!(
                area >= 12,
                "{} {}: only {area} pixels",
                kind.name(),
                defect.name()
            );
            // Defects are local: well under half the image.
            assert!(
                area < (cfg.size * cfg.size / 4) as usize,
                "{} {}: {area}",
                kind.name(),
                defect.name()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 8);
}

#[test]
fn defects_change_pixels_strongly() {
    // The mean absolute change inside the mask is large compared to normal variation.
    for kind in Kind::ALL {
        for &defect in kind.defects() {
            let r = render(kind, Some(defect), 128, 99);
            let mask = r.mask.as_ref().unwrap();
            assert_eq!(mask, &diff_mask(&r.normal, &r.image));
            let (mut sum, mut n) = (0u64, 0u64);
            for ((a, b), m) in r.image.pixels().zip(r.normal.pixels()).zip(mask.pixels()) {
                if m.0[0] != 0 {
                    sum +=
                        a.0.iter()
                            .zip(b.0.iter())
                            .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs() as u64)
                            .sum::<u64>();
                    n += 1;
                }
            }
            let mean = sum as f64 / (3 * n) as f64;
            assert!(
                mean > 25.0,
                "{} {}: mean change {mean:.1}",
                kind.name(),
                defect.name()
            );
        }
    }
}

#[test]
fn normal_render_has_no_mask_and_missing_only_for_objects() {
    let r = render(Kind::Grain, None, 64, 1);
    assert!(r.mask.is_none());
    assert_eq!(r.image, r.normal);
    for kind in Kind::ALL {
        assert_eq!(
            kind.defects().contains(&Defect::Missing),
            kind.is_object(),
            "{}",
            kind.name()
        );
        assert_eq!(kind.name().parse::<Kind>().unwrap(), kind);
    }
    assert!("nope".parse::<Kind>().unwrap_err().contains("woven"));
}

#[test]
fn tree_reads_back_with_the_mvtec_reader() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        kinds: vec![Kind::Board, Kind::Speckle],
        per_category: 6,
        size: 48,
        seed: 5,
    };
    synth::generate(dir.path(), &cfg, false).unwrap();
    let test = load(
        dir.path(),
        &LoadOptions {
            check: ssvp_eval::datasets::CheckLevel::Full,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(test.skipped.is_empty());
    let ds = test.dataset;
    assert_eq!(ds.layout, Layout::Mvtec);
    let names: Vec<_> = ds.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["board", "speckle"]);
    for c in &ds.categories {
        assert_eq!((c.counts().normal, c.counts().anomalous), (6, 6));
        assert!(c
            .samples
            .iter()
            .all(|s| (s.label == Label::Anomalous) == s.mask_path.is_some()));
    }
    let train = load(
        dir.path(),
        &LoadOptions {
            split: Some(Split::Train),
            ..Default::default()
        },
    )
    .unwrap()
    .dataset;
    assert_eq!(train.counts().normal, 12);
    assert_eq!(train.counts().anomalous, 0);
}

#[test]
fn refuses_non_empty_output_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    let cfg = small(vec![Kind::Disc], 1);
    let err = synth::generate(dir.path(), &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(!dir.path().join("disc").exists());
    synth::generate(dir.path(), &cfg, true).unwrap();
    // A stale file inside a regenerated kind is removed; other content is kept.
    std::fs::write(dir.path().join("disc/test/good/999.png"), "stale").unwrap();
    synth::generate(dir.path(), &cfg, true).unwrap();
    assert!(!dir.path().join("disc/test/good/999.png").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn bad_configs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, needle) in [
        (
            SynthConfig {
                size: 8,
                ..small(vec![Kind::Disc], 0)
            },
            "size",
        ),
        (
            SynthConfig {
                per_category: 0,
                ..small(vec![Kind::Disc], 0)
            },
            "at least 1",
        ),
        (small(vec![], 0), "no kinds"),
    ] {
        let err = synth::generate(&dir.path().join("x"), &cfg, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn portable_sin_matches_libm() {
    // The generator's own sin/cos (basic arithmetic only) against the platform's, abs. 1e-10.
    let mut worst = 0.0f64;
    for i in -20000..=20000 {
        let x = i as f64 * 0.00173;
        worst = worst.max((synth::rng::sin(x) - x.sin()).abs());
        worst = worst.max((synth::rng::cos(x) - x.cos()).abs());
    }
    assert!(worst < 1e-10, "max abs error {worst:e}");
}
