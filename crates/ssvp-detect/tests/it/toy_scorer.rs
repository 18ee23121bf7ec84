//! A scorer written outside the crate, through the public seam alone: "mean distance of each
//! patch to a constant". Nothing in ssvp-detect knows it; the detector runs it end to end
//! (towers it asks for, maps, the image rule for tiles, decisions, calibration settings).

use serde::Serialize;
use ssvp_detect::scorer::{Description, Stages};
use ssvp_detect::{
    Detector, DetectorOptions, InputImage, ScoreContext, Scorer, ScorerSettings, Tiling, UnitScore,
};
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_eval::synth::Kind;
use ssvp_features::{ImageFeatures, TowerSet};
use ssvp_image::ColorScale;

use crate::common::{backbones, synth};

/// Each DINOv3 patch of the deepest tap scores its Euclidean distance to `constant` in every
/// dimension; the image scores the mean patch.
struct DistanceToConstant {
    constant: f32,
}

#[derive(Serialize)]
#[serde(tag = "mode", rename = "toy")]
struct ToySettings {
    constant: f32,
}

impl DistanceToConstant {
    /// The patch grid of one image, computed without the detector.
    fn patch_distances(&self, f: &ImageFeatures) -> Vec<f32> {
        let tokens = f.dino_local.last().unwrap().to_vec2::<f32>().unwrap();
        tokens
            .iter()
            .map(|t| {
                t.iter()
                    .map(|v| (v - self.constant).powi(2))
                    .sum::<f32>()
                    .sqrt()
            })
            .collect()
    }
}

impl Scorer for DistanceToConstant {
    fn describe(&self) -> Description {
        Description {
            mode: "toy".into(),
            // DINOv3's patches only: CLIP never runs, DINOv3 stops after its deepest tap.
            towers: TowerSet {
                clip: false,
                dino: true,
                globals: false,
            },
            settings: Some(ScorerSettings::of(&ToySettings {
                constant: self.constant,
            })),
            set_size: None,
            map_scale: ColorScale { lo: 0.0, hi: 20.0 },
            stages: Stages {
                head: false,
                memory: true,
            },
            head_digest: String::new(),
            bank_digest: String::new(),
        }
    }

    fn score(
        &self,
        features: &[ImageFeatures],
        ctx: &ScoreContext<'_>,
    ) -> ssvp_detect::Result<Vec<UnitScore>> {
        features
            .iter()
            .map(|f| {
                let grid = self.patch_distances(f);
                let mean = grid.iter().map(|&d| f64::from(d)).sum::<f64>() / grid.len() as f64;
                Ok(UnitScore {
                    score: mean,
                    head: None,
                    distance: Some(mean),
                    normal_scale: None,
                    map: ctx.map(&grid, f.grid)?,
                })
            })
            .collect()
    }
}

fn toy_detector(tiling: Option<Tiling>, threshold: Option<f64>) -> Detector {
    let cfg = ssvp_model::SsvpConfig::tiny();
    Detector::without_head(
        backbones(&cfg),
        PostprocessConfig::default(),
        DetectorOptions {
            map_size: 64,
            tiling,
            image_threshold: threshold,
            ..DetectorOptions::default()
        },
    )
    .unwrap()
    .with_scorer(Box::new(DistanceToConstant { constant: 0.5 }))
    .unwrap()
}

#[test]
fn a_scorer_from_outside_the_crate_runs_through_the_whole_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    synth(tmp.path(), &[Kind::Disc], 4, 96, 11);
    let dir = tmp.path().join("disc/test");
    let mut paths: Vec<_> = walk(&dir);
    paths.sort();
    let images: Vec<InputImage> = paths
        .iter()
        .map(|p| InputImage::from_rgb(p.display().to_string(), ssvp_image::load_rgb8(p).unwrap()))
        .collect();

    let detector = toy_detector(None, Some(9.0));
    // What the scorer stated drives the towers, the mode and the settings.
    assert_eq!(
        detector.towers(),
        TowerSet {
            clip: false,
            dino: true,
            globals: false
        }
    );
    assert_eq!(detector.mode(), "toy");
    assert_eq!(
        detector.settings().memory.unwrap().as_json(),
        r#"{"mode":"toy","constant":0.5}"#
    );
    assert_eq!(detector.map_scale(), ColorScale { lo: 0.0, hi: 20.0 });

    let detections = detector.detect(&images).unwrap();
    assert_eq!(detections.len(), images.len());
    // The scores are the scorer's own, recomputed here from the same features.
    let toy = DistanceToConstant { constant: 0.5 };
    let refs: Vec<&ssvp_image::RgbImage8> = images.iter().map(|i| &i.image).collect();
    let (clip, dino) = detector
        .backbones()
        .preprocess_towers(&refs, detector.towers())
        .unwrap();
    assert!(clip.is_none(), "CLIP is not read, so not preprocessed");
    let features = detector
        .backbones()
        .features_of_towers(None, dino.as_ref(), false)
        .unwrap();
    for ((d, f), input) in detections.iter().zip(&features).zip(&images) {
        let grid = toy.patch_distances(f);
        let mean = grid.iter().map(|&v| f64::from(v)).sum::<f64>() / grid.len() as f64;
        // Batched products may round differently from the detector's batches of 4.
        assert!(
            (d.score - mean).abs() <= 1e-4 * mean.abs().max(1.0),
            "{} vs {mean}",
            d.score
        );
        assert_eq!(d.mode, "toy");
        assert_eq!(d.score_distance, Some(d.score));
        assert_eq!(d.score_head, None);
        assert_eq!((d.width, d.height), (input.image.width, input.image.height));
        assert_eq!(d.anomalous, Some(d.score > 9.0));
        assert_eq!(d.tiles, 1);
    }

    // Tiled: the default image rule takes the highest tile score.
    let tiled = toy_detector(
        Some(Tiling {
            size: 64,
            overlap: 16,
        }),
        None,
    );
    let whole = tiled.detect(&images[..1]).unwrap().remove(0);
    assert!(whole.tiles > 1);
    assert!(whole.score.is_finite());
    assert!(whole.anomalous.is_none());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "png") {
            out.push(path);
        }
    }
    out
}
