//! The training loop's bookkeeping: the resumable optimiser is the head's optimiser, an
//! interrupted-and-resumed run ends bit-identical to an uninterrupted one, and the run directory
//! refuses what it should.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use ssvp_eval::datasets::{self, LoadOptions, Split};
use ssvp_eval::synth::{generate, Kind, SynthConfig};
use ssvp_features::{Backbones, CacheStorage, FeatureCache, FeatureSource};
use ssvp_model::run_dir::{RunDir, LOG_FILE};
use ssvp_model::train::{
    batch_t_init, epoch_permutation, samples_from_dataset, train, training_data, Start,
    TrainOptimizer, TrainOptions, TrainSample,
};
use ssvp_model::{
    stack_features, Mode, MosaicWhen, PromptEncoding, SsvpConfig, SsvpHead, SsvpOptimizer, Targets,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    cfg: SsvpConfig,
    backbones: Arc<Backbones>,
    dataset: datasets::Dataset,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(
        &data,
        &SynthConfig {
            kinds: vec![Kind::Woven, Kind::Disc],
            per_category: 4,
            size: 64,
            seed: 9,
        },
        false,
    )
    .unwrap();
    let dataset = datasets::load(
        &data,
        &LoadOptions {
            split: Some(Split::Test),
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .dataset;
    let mut cfg = SsvpConfig::tiny();
    cfg.optim.epochs = 2;
    cfg.optim.batch_size = 3;
    let backbones =
        Arc::new(ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &Device::Cpu).unwrap());
    Fixture {
        root: tmp.path().to_path_buf(),
        _tmp: tmp,
        cfg,
        backbones,
        dataset,
    }
}

/// Masks at the images' own 64 px (the 518 default would only cost time here).
fn opts(stop_after: Option<usize>) -> TrainOptions {
    TrainOptions {
        mask_size: 64,
        stop_after,
        ..TrainOptions::default()
    }
}

fn tensors(head: &SsvpHead) -> Vec<(String, Vec<f32>)> {
    head.named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn run(f: &Fixture, dir: &Path, opts: &TrainOptions, start: Start) -> SsvpHead {
    run_with(f, &f.cfg, &f.backbones, dir, opts, start)
}

fn run_with(
    f: &Fixture,
    cfg: &SsvpConfig,
    source: &dyn FeatureSource,
    dir: &Path,
    opts: &TrainOptions,
    start: Start,
) -> SsvpHead {
    let head = SsvpHead::new(cfg, &Device::Cpu).unwrap();
    let rd = match start {
        Start::Fresh => RunDir::create(dir, false).unwrap(),
        Start::Resume => RunDir::open(dir).unwrap(),
    };
    let encoder = f.backbones.prompt_encoder().unwrap();
    train(
        &rd,
        &head,
        source,
        &encoder,
        &samples_from_dataset(&f.dataset),
        training_data(&f.dataset),
        opts,
        start,
        &mut |_| {},
    )
    .unwrap();
    head
}

fn log_without_times(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let f = fixture();
    let n = samples_from_dataset(&f.dataset).len();
    assert_eq!(n, 16);
    // 16 samples, batch 3: 6 steps per epoch (last batch of 1), 12 in all.
    let straight_dir = f.root.join("straight");
    let straight = run(&f, &straight_dir, &opts(None), Start::Fresh);

    // Interrupted mid-epoch 2 (after step 8), then resumed.
    let resumed_dir = f.root.join("resumed");
    run(&f, &resumed_dir, &opts(Some(8)), Start::Fresh);
    let rd = RunDir::open(&resumed_dir).unwrap();
    let state = rd.read_state().unwrap();
    assert_eq!((state.step, state.complete, state.epoch()), (8, false, 1));
    // Simulate a crash after two more logged steps: their lines must be dropped on resume.
    let extra: Vec<String> = log_without_times(&resumed_dir)[..2]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut v = v.clone();
            v["step"] = serde_json::json!(8 + i);
            v.to_string()
        })
        .collect();
    rd.append_log(&extra).unwrap();
    let resumed = run(&f, &resumed_dir, &opts(None), Start::Resume);

    let state = rd.read_state().unwrap();
    assert_eq!((state.step, state.complete), (12, true));
    assert_eq!(tensors(&straight), tensors(&resumed), "weights differ");
    assert_eq!(
        log_without_times(&straight_dir),
        log_without_times(&resumed_dir)
    );
    // Only the last checkpoint's files remain.
    let mut names: Vec<String> = std::fs::read_dir(&resumed_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "backbones.json",
            "config.toml",
            "head-step-0000012.safetensors",
            "optim-step-0000012.safetensors",
            "state.json",
            "train_log.jsonl"
        ]
    );
    // The stored head is the trained one.
    let reloaded = SsvpHead::new(&f.cfg, &Device::Cpu).unwrap();
    reloaded
        .load(resumed_dir.join("head-step-0000012.safetensors"))
        .unwrap();
    assert_eq!(tensors(&reloaded), tensors(&straight));
}

#[test]
fn augmented_training_is_seeded_resumable_and_bypasses_the_cache() {
    let f = fixture();
    let mut cfg = f.cfg.clone();
    cfg.augment.enabled = true;
    // The synthetic set is not MVTec; ask for the mosaic anyway so that it is exercised.
    cfg.augment.mosaic = MosaicWhen::Always;
    let cache = |name: &str| {
        FeatureCache::new(
            Arc::clone(&f.backbones),
            f.root.join(name),
            CacheStorage::F32,
        )
        .unwrap()
    };

    let straight_dir = f.root.join("aug-straight");
    let straight_cache = cache("cache-straight");
    let straight = run_with(
        &f,
        &cfg,
        &straight_cache,
        &straight_dir,
        &opts(None),
        Start::Fresh,
    );
    let log = log_without_times(&straight_dir);
    assert_eq!(log.len(), 12);
    let augmented: u64 = log.iter().map(|r| r["augmented"].as_u64().unwrap()).sum();
    let images: u64 = log.iter().map(|r| r["batch_size"].as_u64().unwrap()).sum();
    // With the baseline's probabilities about 1 image in 50 is left alone.
    assert!(augmented > images * 3 / 4, "{augmented} of {images}");
    // Only unchanged images went through the cache; there was no warm-up pass.
    let stats = straight_cache.stats();
    assert_eq!(stats.hits + stats.misses, images - augmented);

    let resumed_dir = f.root.join("aug-resumed");
    let resumed_cache = cache("cache-resumed");
    run_with(
        &f,
        &cfg,
        &resumed_cache,
        &resumed_dir,
        &opts(Some(5)),
        Start::Fresh,
    );
    let resumed = run_with(
        &f,
        &cfg,
        &resumed_cache,
        &resumed_dir,
        &opts(None),
        Start::Resume,
    );
    assert_eq!(tensors(&straight), tensors(&resumed), "weights differ");
    assert_eq!(log, log_without_times(&resumed_dir));

    // Augmentation changed what was learnt.
    let plain = run(&f, &f.root.join("plain"), &opts(None), Start::Fresh);
    assert_ne!(tensors(&plain), tensors(&straight));
}

#[test]
fn train_optimizer_matches_the_heads_optimizer() {
    let f = fixture();
    let device = Device::Cpu;
    let mut cfg = f.cfg.clone();
    cfg.optim.weight_decay = 0.01;
    let a = SsvpHead::new(&cfg, &device).unwrap();
    let b = SsvpHead::new(&cfg, &device).unwrap();
    let mut opt_a = SsvpOptimizer::new(&a, &cfg.optim, 10).unwrap();
    let mut opt_b = TrainOptimizer::new(&b, &cfg.optim, 10).unwrap();
    let samples: Vec<TrainSample> = samples_from_dataset(&f.dataset);
    let encoder = f.backbones.prompt_encoder().unwrap();
    let batch = &samples[6..10];
    let paths: Vec<_> = batch.iter().map(|s| s.image_path.clone()).collect();
    let feats = stack_features(&f.backbones.features_batch(&paths).unwrap()).unwrap();
    let names: Vec<&str> = batch.iter().map(|s| s.class_name.as_str()).collect();
    assert!(names.iter().any(|n| *n != names[0]), "batch mixes classes");
    let masks = Tensor::zeros((4, 16, 16), candle_core::DType::F32, &device).unwrap();
    let labels = Tensor::new(&[0f32, 1.0, 0.0, 1.0], &device).unwrap();
    let targets = Targets { masks, labels };
    for step in 0..4 {
        let noise =
            ssvp_model::train::step_noise(1, step, 4, cfg.model.vae_latent, &device).unwrap();
        for (head, which) in [(&a, 0), (&b, 1)] {
            let t_init = batch_t_init(head, &encoder, &names).unwrap();
            let out = head
                .forward(
                    &feats,
                    &t_init,
                    &Mode::Train {
                        noise: noise.clone(),
                    },
                    Some(&targets),
                )
                .unwrap();
            let grads = out.loss.unwrap().total.backward().unwrap();
            if which == 0 {
                opt_a.step(&grads).unwrap();
            } else {
                opt_b.step(&grads).unwrap();
            }
        }
    }
    assert_eq!(tensors(&a), tensors(&b));
    assert_ne!(
        tensors(&a),
        tensors(&SsvpHead::new(&cfg, &device).unwrap()),
        "the steps changed nothing"
    );
}

#[test]
fn batch_t_init_gathers_per_class_rows() {
    let f = fixture();
    let head = SsvpHead::new(&f.cfg, &Device::Cpu).unwrap();
    let encoder = f.backbones.prompt_encoder().unwrap();
    let t = batch_t_init(&head, &encoder, &["woven", "disc", "woven"]).unwrap();
    let woven = head.encode_prompts(&encoder, "woven").unwrap();
    let disc = head.encode_prompts(&encoder, "disc").unwrap();
    let diff = |x: &Tensor, y: &Tensor| {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&t.get(0).unwrap(), &woven), 0.0);
    assert_eq!(diff(&t.get(1).unwrap(), &disc), 0.0);
    assert_eq!(diff(&t.get(2).unwrap(), &woven), 0.0);
    assert!(diff(&woven, &disc) > 0.0, "class names must matter");
}

#[test]
fn epoch_permutations_are_seeded_permutations() {
    let a = epoch_permutation(50, 3, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(a, epoch_permutation(50, 3, 0));
    assert_ne!(a, epoch_permutation(50, 3, 1));
    assert_ne!(a, epoch_permutation(50, 4, 0));
}

#[test]
fn run_directory_refusals() {
    let f = fixture();
    let dir = f.root.join("run");
    run(&f, &dir, &opts(Some(1)), Start::Fresh);
    let err = RunDir::create(&dir, false).unwrap_err().to_string();
    assert!(
        err.contains("not empty") && err.contains("--resume"),
        "{err}"
    );
    // --force removes the previous run's files and starts over.
    RunDir::create(&dir, true).unwrap();
    assert!(!dir.join("state.json").exists());
    let err = RunDir::open(f.root.join("data")).unwrap_err().to_string();
    assert!(err.contains("state.json is missing"), "{err}");

    // Resuming with another config is refused.
    run(&f, &dir, &opts(Some(1)), Start::Fresh);
    let mut other = f.cfg.clone();
    other.optim.lr_rest *= 2.0;
    let head = SsvpHead::new(&other, &Device::Cpu).unwrap();
    let encoder = f.backbones.prompt_encoder().unwrap();
    let err = train(
        &RunDir::open(&dir).unwrap(),
        &head,
        &f.backbones,
        &encoder,
        &samples_from_dataset(&f.dataset),
        training_data(&f.dataset),
        &opts(None),
        Start::Resume,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("different configuration"),
        "{err:#}"
    );
}

/// `run_job` resolves a resumed run's options from the run and refuses given ones that
/// contradict it, before anything is loaded; a fresh run into a used directory needs `force`.
#[test]
fn train_jobs_resume_from_the_run_and_refuse_contradictions() {
    use ssvp_model::train::{run_job, CacheChoice, JobEvent, JobStart, TrainJob};
    use ssvp_model::ErrorKind;

    let f = fixture();
    let out = f.root.join("job");
    let fresh = TrainJob {
        out: out.clone(),
        start: JobStart::Fresh { force: false },
        config: None,
        backbones_preset: Some("tiny".into()),
        epochs: Some(1),
        batch_size: Some(4),
        seed: None,
        augment: false,
        root: Some(f.root.join("data")),
        layout: None,
        categories: vec!["woven".into()],
        mask_size: Some(32),
        skip_bad: false,
        checkpoint_every: None,
        max_steps: Some(1),
        cache: CacheChoice::Off,
        device: Device::Cpu,
    };
    let mut loaded = 0;
    let done = run_job(&fresh, &mut |ev| {
        if let JobEvent::Loaded { samples, .. } = ev {
            loaded = samples.len();
        }
    })
    .unwrap();
    let woven = f.dataset.categories.iter().find(|c| c.name == "woven");
    assert_eq!(loaded, woven.unwrap().samples.len());
    assert_eq!(
        (done.train.state.step, done.train.state.complete),
        (1, false)
    );
    assert!(done.cache.is_none());

    // Again without force: refused, the run left as it was.
    let err = run_job(&fresh, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ssvp_model::Error::RunDir(_)), "{err:?}");
    assert!(out.join("head-step-0000001.safetensors").is_file());

    // Resume needs no data options; every contradicting one is refused, naming both values.
    let resume = TrainJob {
        start: JobStart::Resume,
        backbones_preset: None,
        epochs: None,
        batch_size: None,
        root: None,
        categories: Vec::new(),
        mask_size: None,
        max_steps: None,
        ..fresh.clone()
    };
    for (job, needle) in [
        (
            TrainJob {
                seed: Some(5),
                ..resume.clone()
            },
            "--seed 5 differs from the run's",
        ),
        (
            TrainJob {
                mask_size: Some(48),
                ..resume.clone()
            },
            "--mask-size 48 differs from the run's 32",
        ),
        (
            TrainJob {
                categories: vec!["disc".into()],
                ..resume.clone()
            },
            "--categories disc differs from the run's woven",
        ),
        (
            TrainJob {
                batch_size: Some(2),
                ..resume.clone()
            },
            "--batch-size 2 differs from the run's 4",
        ),
    ] {
        let err = run_job(&job, &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Mismatch, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let done = run_job(&resume, &mut |_| {}).unwrap();
    assert!(done.train.state.complete);
    assert_eq!(done.train.state.mask_size, 32);

    // Nothing to resume: not found, with the option named.
    let err = run_job(
        &TrainJob {
            out: f.root.join("nothing"),
            ..resume.clone()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(
        err.to_string().contains("holds no run to continue"),
        "{err}"
    );
}
