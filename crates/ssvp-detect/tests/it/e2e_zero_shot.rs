//! End to end, zero-shot: tiny seeded backbones (real CLIP + DINOv3 architectures, random
//! weights), the synthetic benchmark written to a tempdir, the head trained on four categories
//! (woven, grain, disc, board) and evaluated on two it never saw (speckle, screw). The trained
//! head must beat the untrained one (same seed, zero steps) on image and pixel AUROC by margins
//! about half of what was measured (seed 111: image AUROC 0.379 -> 0.594, pixel AUROC
//! 0.321 -> 0.637; see the numbers printed with `--nocapture`).
//!
//! The learning rates are raised tenfold over the paper's (1e-3 / 5e-3) so that 10 epochs of
//! 128 images are enough; everything else is the paper's setting at tiny widths.
//!
//! The second test trains the same way with the baseline's augmentations on (features computed
//! afresh every step). Measured (seed 111): pixel AUROC 0.321 -> 0.85 and AUPRO 0.099 -> 0.64
//! (against 0.637 and 0.400 without), image AUROC 0.379 -> 0.53 (against 0.594); the last digit
//! moves with float summation order over the 160 augmented steps.

use std::sync::Arc;

use candle_core::Device;
use ssvp_detect::evaluate::{evaluate, EvalOptions};
use ssvp_detect::{Detector, DetectorOptions};
use ssvp_eval::synth::Kind;
use ssvp_features::{CacheStorage, FeatureCache};
use ssvp_model::run_dir::RunDir;
use ssvp_model::train::{samples_from_dataset, train, training_data, Start, TrainOptions};
use ssvp_model::{PromptEncoding, SsvpConfig, SsvpHead};

use crate::common::{synth, test_split};

type Report = ssvp_eval::report::EvaluationReport;

/// Trains on four categories and evaluates on two unseen ones; returns the untrained and the
/// trained report.
fn train_and_evaluate(augment: bool) -> (Report, Report) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, &Kind::ALL, 16, 96, 5);
    let train_set = test_split(&data, &["woven", "grain", "disc", "board"]);
    let eval_set = test_split(&data, &["speckle", "screw"]);

    let mut cfg = SsvpConfig::tiny();
    cfg.optim.lr_rest = 1e-3;
    cfg.optim.lr_prompts = 5e-3;
    cfg.optim.epochs = 10;
    cfg.optim.seed = 111;
    cfg.augment.enabled = augment;
    let device = Device::Cpu;
    let backbones =
        Arc::new(ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &device).unwrap());
    let cache = FeatureCache::new(
        Arc::clone(&backbones),
        tmp.path().join("cache"),
        CacheStorage::F32,
    )
    .unwrap();
    let eval_opts = EvalOptions::default();
    let detector_opts = DetectorOptions {
        map_size: 64,
        batch_size: 8,
        ..DetectorOptions::default()
    };

    let untrained = Detector::new(
        SsvpHead::new(&cfg, &device).unwrap(),
        Arc::clone(&backbones),
        detector_opts.clone(),
    )
    .unwrap();
    let before = evaluate(&untrained, &cache, &eval_set, &eval_opts, &mut |_| {})
        .unwrap()
        .report;

    let head = SsvpHead::new(&cfg, &device).unwrap();
    let run = RunDir::create(tmp.path().join("run"), false).unwrap();
    let samples = samples_from_dataset(&train_set);
    let opts = TrainOptions {
        mask_size: 64,
        ..TrainOptions::default()
    };
    let encoder = backbones.prompt_encoder().unwrap();
    let summary = train(
        &run,
        &head,
        &cache,
        &encoder,
        &samples,
        training_data(&train_set),
        &opts,
        Start::Fresh,
        &mut |_| {},
    )
    .unwrap();
    assert!(summary.state.complete);
    assert_eq!(summary.steps_run, 160);
    let trained = Detector::new(head, Arc::clone(&backbones), detector_opts).unwrap();
    let after = evaluate(&trained, &cache, &eval_set, &eval_opts, &mut |_| {})
        .unwrap()
        .report;

    let get = |r: &Report, m: &str| r.mean.metrics.get(m).unwrap();
    for m in ["image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"] {
        println!(
            "augment {augment}: {m}: untrained {:.4} trained {:.4}",
            get(&before, m),
            get(&after, m)
        );
    }
    let last = &summary.last.as_ref().unwrap().losses["total"];
    println!("augment {augment}: final loss {last:.4}");
    (before, after)
}

fn metric(r: &Report, m: &str) -> f64 {
    r.mean.metrics.get(m).unwrap()
}

#[test]
fn training_on_some_categories_improves_zero_shot_on_others() {
    let (before, after) = train_and_evaluate(false);
    let get = metric;
    assert!(
        get(&after, "image_auroc") > get(&before, "image_auroc") + 0.10,
        "image AUROC did not improve enough"
    );
    assert!(
        get(&after, "pixel_auroc") > get(&before, "pixel_auroc") + 0.15,
        "pixel AUROC did not improve enough"
    );
    assert!(get(&after, "pixel_auroc") > 0.55);
}

/// Margins about half of the measured gains.
#[test]
fn augmented_training_improves_zero_shot_on_others() {
    let (before, after) = train_and_evaluate(true);
    let get = metric;
    assert!(
        get(&after, "image_auroc") > get(&before, "image_auroc") + 0.07,
        "image AUROC did not improve enough"
    );
    assert!(
        get(&after, "pixel_auroc") > get(&before, "pixel_auroc") + 0.25,
        "pixel AUROC did not improve enough"
    );
    assert!(
        get(&after, "pixel_aupro") > get(&before, "pixel_aupro") + 0.25,
        "pixel AUPRO did not improve enough"
    );
}
