//! What the integration tests share: synthetic benchmarks in temporary folders, the tiny seeded
//! backbones, and heads trained on a synthetic draw (trained once per test binary).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use ssvp_detect::calibrate::{Calibration, NormalScore};
use ssvp_detect::{Detector, DetectorOptions};
use ssvp_eval::datasets::{self, Dataset, LoadOptions, Split};
use ssvp_eval::synth::{generate, Kind, SynthConfig};
use ssvp_features::{Backbones, CacheStorage, FeatureCache};
use ssvp_model::run_dir::RunDir;
use ssvp_model::train::{samples_from_dataset, train, training_data, Start, TrainOptions};
use ssvp_model::{PromptEncoding, SsvpConfig, SsvpHead};

/// Writes a synthetic benchmark of `kinds` under `dir`.
pub fn synth(dir: &Path, kinds: &[Kind], per_category: usize, size: u32, seed: u64) {
    generate(
        dir,
        &SynthConfig {
            kinds: kinds.to_vec(),
            per_category,
            size,
            seed,
        },
        false,
    )
    .expect("synthetic benchmark");
}

/// The test split of a benchmark.
pub fn test_split(root: &Path, categories: &[&str]) -> Dataset {
    datasets::load(
        root,
        &LoadOptions {
            split: Some(Split::Test),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            ..LoadOptions::default()
        },
    )
    .expect("benchmark loads")
    .dataset
}

/// The tiny config with the tenfold learning rates of the end-to-end test, so that a few
/// epochs on a small draw learn something.
pub fn tiny_config(seed: u64) -> SsvpConfig {
    let mut cfg = SsvpConfig::tiny();
    cfg.optim.lr_rest = 1e-3;
    cfg.optim.lr_prompts = 5e-3;
    cfg.optim.seed = seed;
    cfg
}

/// The tiny seeded backbones of `cfg`.
pub fn backbones(cfg: &SsvpConfig) -> Arc<Backbones> {
    Arc::new(
        ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &Device::Cpu)
            .expect("tiny backbones"),
    )
}

/// A head trained on the test split of a synthetic draw, kept on disk as a run directory.
pub struct TrainedFixture {
    /// Keeps the temporary folder alive.
    _dir: tempfile::TempDir,
    /// The run directory of `ssvp train`.
    pub run: PathBuf,
    pub config: SsvpConfig,
    pub backbones: Arc<Backbones>,
}

impl TrainedFixture {
    /// A detector over the trained head.
    pub fn detector(&self, options: DetectorOptions) -> Detector {
        let loaded =
            ssvp_detect::load::load_run(&self.run, None, &Default::default(), &Device::Cpu)
                .expect("the trained run loads");
        Detector::from_run(loaded, options).expect("detector")
    }
}

/// Trains a tiny head for `epochs` on `kinds` of a synthetic draw (`per_category` images of each
/// part at `size` px, seed `data_seed`), with the optimiser seeded by `seed`.
pub fn train_fixture(
    kinds: &[Kind],
    per_category: usize,
    size: u32,
    data_seed: u64,
    seed: u64,
    epochs: usize,
) -> TrainedFixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, kinds, per_category, size, data_seed);
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let train_set = test_split(&data, &names);
    let mut cfg = tiny_config(seed);
    cfg.optim.epochs = epochs;
    let backbones = backbones(&cfg);
    let cache = FeatureCache::new(
        Arc::clone(&backbones),
        dir.path().join("cache"),
        CacheStorage::F32,
    )
    .unwrap();
    let head = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let run_path = dir.path().join("run");
    let run = RunDir::create(&run_path, false).unwrap();
    let encoder = backbones.prompt_encoder().unwrap();
    let summary = train(
        &run,
        &head,
        &cache,
        &encoder,
        &samples_from_dataset(&train_set),
        training_data(&train_set),
        &TrainOptions {
            mask_size: size as usize,
            ..TrainOptions::default()
        },
        Start::Fresh,
        &mut |_| {},
    )
    .unwrap();
    assert!(summary.state.complete);
    TrainedFixture {
        _dir: dir,
        run: run_path,
        config: cfg,
        backbones,
    }
}

/// The head most tests share: trained once per test binary on woven, disc and board (seed 111,
/// 12 epochs on 16 images of each part at 128 px).
pub fn shared_fixture() -> &'static TrainedFixture {
    static FIXTURE: OnceLock<TrainedFixture> = OnceLock::new();
    FIXTURE
        .get_or_init(|| train_fixture(&[Kind::Woven, Kind::Disc, Kind::Board], 16, 128, 5, 111, 12))
}

/// A calibration of `detector` fitted on made-up normal scores (12 images, 10 % rate).
pub fn made_up_calibration(detector: &Detector) -> Calibration {
    let normal: Vec<NormalScore> = (0..12)
        .map(|i| NormalScore {
            score: 0.1 + 0.01 * i as f64,
            map_max: 0.2 + 0.01 * i as f32,
            map_median: 0.05,
        })
        .collect();
    Calibration::fit(
        &normal,
        0.1,
        0.0,
        0,
        detector.identity().clone(),
        detector.settings(),
    )
    .unwrap()
}
