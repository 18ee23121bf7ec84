//! The DINO tower behind `Backbones`: DINOv2 weights (the committed parity fixtures of
//! ssvp-backbones) chosen by name or `config.json`, preprocessed as AnomalyDINO does, giving
//! the model's own final-normed patch tokens with CLS and registers dropped; a DINO-only
//! identity; and presets whose CLIP is absent refusing CLIP taps.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use ssvp_backbones::dinov2::Dinov2Model;
use ssvp_features::presets::{self, ANOMALYDINO};
use ssvp_features::{
    Backbones, BackbonesConfig, DinoArch, DinoLayerSet, FeatureSource, TapLayers, TowerSet,
    NO_TOWER,
};
use ssvp_image::{Preprocess, RgbImage8};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ssvp-backbones/tests/fixtures/dinov2")
        .join(name)
}

fn image(seed: u32) -> RgbImage8 {
    let (w, h) = (90usize, 70usize);
    let data = (0..w * h * 3)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
        .collect();
    RgbImage8 {
        width: w,
        height: h,
        data,
    }
}

fn dino_only(weights: &str, size: usize) -> (BackbonesConfig, TapLayers) {
    let config = BackbonesConfig {
        dino: weights.into(),
        dino_size: size,
        clip_size: size,
        ..presets::preset(ANOMALYDINO).unwrap().config
    };
    (
        config,
        TapLayers {
            clip: Vec::new(),
            dino: DinoLayerSet::QuarterPoints,
        },
    )
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

#[test]
fn dinov2_tokens_through_the_backbones_are_the_models_own() {
    let dev = Device::Cpu;
    for (name, registers) in [("s", 0), ("b_reg", 4)] {
        let dir = fixture(name);
        // 56 px = a 4 x 4 grid of 14-px patches (the fixtures were trained at 3 x 3).
        let (cfg, taps) = dino_only(dir.to_str().unwrap(), 56);
        let bb = Backbones::load(&cfg, &taps, &dev).unwrap();
        assert!(!bb.has_clip() && bb.dino().dinov2().is_some(), "{name}");
        let id = bb.identity();
        assert_eq!((id.clip.as_str(), id.clip_dim), (NO_TOWER, 0));
        assert_eq!(id.grid, (4, 4));
        assert_eq!(id.dino_layers, vec![1, 1, 2, 2]);
        assert!(bb.clip().is_err());

        let img = image(7);
        let features = bb.features_of_images(std::slice::from_ref(&img)).unwrap();
        let f = &features[0];
        assert!(f.clip_local.is_empty() && f.clip_global.elem_count() == 0);

        let model =
            Dinov2Model::load(dir.to_str().unwrap(), None, candle_core::DType::F32, &dev).unwrap();
        let px = Preprocess::dinov2(56).apply(&img).unwrap();
        let px = Tensor::from_vec(px.data, (1, 3, 56, 56), &dev).unwrap();
        let out = model.forward(&px, &[1, 1, 2, 2], true).unwrap();
        for (l, (_, h)) in out.hidden.iter().enumerate() {
            let want = h.narrow(1, 1 + registers, 16).unwrap().squeeze(0).unwrap();
            assert!(max_rel(&f.dino_local[l], &want) < 1e-6, "{name} tap {l}");
        }
        assert!(max_rel(&f.dino_global, &out.cls.squeeze(0).unwrap()) < 1e-6);

        // Stopped early (no globals): the same local tokens.
        let (_, dino_px) = bb
            .preprocess_towers(
                &[&img],
                TowerSet {
                    clip: false,
                    dino: true,
                    globals: false,
                },
            )
            .unwrap();
        let early = bb
            .features_of_towers(None, dino_px.as_ref(), false)
            .unwrap();
        for (a, b) in early[0].dino_local.iter().zip(&f.dino_local) {
            assert_eq!(max_rel(a, b), 0.0);
        }
    }
}

#[test]
fn the_architecture_comes_from_config_json_when_the_name_does_not_say() {
    // A copy of the fixture under a name without "dinov2": config.json's model_type decides.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("line3-backbone");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("s").join(file), dir.join(file)).unwrap();
    }
    let (mut cfg, taps) = dino_only(dir.to_str().unwrap(), 42);
    cfg.dino_arch = DinoArch::Auto;
    let bb = Backbones::load(&cfg, &taps, &Device::Cpu).unwrap();
    assert_eq!(bb.dino().name(), "DINOv2");
}

#[test]
fn dino_only_backbones_refuse_clip_taps() {
    let (cfg, _) = dino_only(fixture("s").to_str().unwrap(), 42);
    let taps = TapLayers::paper();
    let err = Backbones::load(&cfg, &taps, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no CLIP tower"), "{err}");
}
