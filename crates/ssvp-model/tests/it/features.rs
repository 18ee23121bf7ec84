//! `Backbones`: the seeded `tiny` preset (determinism, shapes, speed), a non-tiny pair at another
//! grid, the token bookkeeping (CLS/registers dropped, final norm on DINO, ln_post -> proj on
//! CLIP) re-derived from the towers' raw hidden states, batching, `stack_features`, and the
//! configuration errors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::{
    Activation, ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig, PosInterp, VisionOptions,
};
use ssvp_backbones::dinov3::{Dinov3Config, Dinov3Model};
use ssvp_backbones::weights::seeded_var_builder;
use ssvp_features::{tiny_clip_config, tiny_dino_config};
use ssvp_features::{Backbones, BackbonesConfig, DinoLayerSet, FeatureSource, ImageFeatures};
use ssvp_image::Preprocess;
use ssvp_model::PromptEncoding;
use ssvp_model::{stack_features, SsvpConfig};

/// A deterministic RGB test picture with structure (gradients plus a square "defect").
fn write_image(dir: &Path, name: &str, w: u32, h: u32, variant: u32) -> PathBuf {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let inside = (w / 3..w / 2).contains(&x) && (h / 3..h / 2).contains(&y);
        if inside && variant % 2 == 1 {
            image::Rgb([250, 20, 20])
        } else {
            image::Rgb([
                ((x * 255) / w.max(1)) as u8,
                ((y * 255) / h.max(1)) as u8,
                ((x + y + variant * 40) % 256) as u8,
            ])
        }
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
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

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_same(a: &ImageFeatures, b: &ImageFeatures) {
    assert_eq!(a.grid, b.grid);
    for (x, y) in a.clip_local.iter().zip(&b.clip_local) {
        assert_eq!(max_abs_diff(x, y), 0.0);
    }
    for (x, y) in a.dino_local.iter().zip(&b.dino_local) {
        assert_eq!(max_abs_diff(x, y), 0.0);
    }
    assert_eq!(max_abs_diff(&a.clip_global, &b.clip_global), 0.0);
    assert_eq!(max_abs_diff(&a.dino_global, &b.dino_global), 0.0);
}

fn tiny() -> Backbones {
    let cfg = SsvpConfig::tiny();
    ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &Device::Cpu).unwrap()
}

#[test]
fn tiny_preset_shapes_identity_and_speed() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "a.png", 300, 200, 1);
    let t0 = Instant::now();
    let bb = tiny();
    let load = t0.elapsed();
    let id = bb.identity().clone();
    assert_eq!((id.clip_size, id.dino_size), ((112, 112), (128, 128)));
    assert_eq!(id.grid, (8, 8));
    assert_eq!(id.clip_layers, vec![1, 2, 3, 4]);
    assert_eq!(id.dino_layers, vec![1, 2, 3, 4]);
    assert_eq!((id.clip_dim, id.dino_dim, id.text_width), (64, 64, 64));
    assert_eq!(
        (bb.clip_dim(), bb.dino_dim(), bb.text_width()),
        (64, 64, 64)
    );
    assert!(id.clip_weights.starts_with("seeded:") && id.dino_weights.starts_with("seeded:"));
    assert_ne!(id.clip_weights, id.dino_weights);

    // Parameter counts of the transformer blocks (the token table comes with the real vocab).
    let blocks =
        |depth: usize, width: usize, ffn: usize| depth * (4 * width * width + 2 * width * ffn);
    let v = tiny_clip_config().vision.unwrap();
    let d = tiny_dino_config();
    assert!(blocks(v.num_hidden_layers, v.hidden_size, v.intermediate_size) < 300_000);
    assert!(blocks(d.num_hidden_layers, d.hidden_size, d.intermediate_size) < 300_000);

    let _ = bb.features(&img).unwrap(); // warm-up (positional-table resampling is cached)
    let t1 = Instant::now();
    let f = bb.features(&img).unwrap();
    let one = t1.elapsed();
    eprintln!("tiny: load {load:?}, one image {one:?}");
    f.check(&id).unwrap();
    assert_eq!(f.clip_local.len(), 4);
    assert_eq!(f.clip_local[0].dims(), &[64, 64]);
    assert_eq!(f.dino_local[3].dims(), &[64, 64]);
    assert_eq!(f.clip_global.dims(), &[64]);
    assert_eq!(f.dino_global.dims(), &[64]);
    for t in f.clip_local.iter().chain(&f.dino_local) {
        assert_eq!(t.dtype(), DType::F32);
        let m = max_abs(t);
        assert!(
            m.is_finite() && m > 1e-3,
            "degenerate features (max |x| = {m})"
        );
    }
    // Scales differ from each other (each block adds something).
    assert!(max_abs_diff(&f.clip_local[0], &f.clip_local[3]) > 1e-3);
    assert!(max_abs_diff(&f.dino_local[0], &f.dino_local[3]) > 1e-3);
    assert!(
        load.as_secs_f64() < 5.0 && one.as_secs_f64() < 2.0,
        "{load:?} {one:?}"
    );
}

#[test]
fn tiny_preset_is_deterministic_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "a.png", 64, 64, 0);
    let a = tiny().features(&img).unwrap();
    let b = tiny().features(&img).unwrap();
    assert_same(&a, &b);

    let mut cfg = SsvpConfig::tiny();
    cfg.backbones.seed += 1;
    let other = ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &Device::Cpu).unwrap();
    let c = other.features(&img).unwrap();
    assert!(max_abs_diff(&a.clip_local[0], &c.clip_local[0]) > 1e-3);
    assert!(max_abs_diff(&a.dino_global, &c.dino_global) > 1e-3);
    let err = tiny()
        .identity()
        .check_matches(other.identity())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clip_weights") && err.contains("dino_weights"),
        "{err}"
    );
    assert_ne!(tiny().identity().digest(), other.identity().digest());
}

/// The features equal what the towers' raw hidden states give when the bookkeeping is redone by
/// hand: CLIP `proj(ln_post(h))` minus CLS; DINO `final_norm(h)` minus CLS and 4 registers;
/// globals = CLIP image embedding and final-normed DINO CLS.
#[test]
fn token_bookkeeping_matches_the_raw_towers() {
    let dir = tempfile::tempdir().unwrap();
    let img_path = write_image(dir.path(), "a.png", 90, 150, 1);
    let bb = tiny();
    let f = bb.features(&img_path).unwrap();

    let img = ssvp_image::load_rgb8(&img_path).unwrap();
    let to_tensor = |p: Preprocess| {
        let chw = p.apply(&img).unwrap();
        Tensor::from_vec(chw.data, (1, 3, chw.height, chw.width), &Device::Cpu).unwrap()
    };
    let clip_px = to_tensor(Preprocess::clip(112));
    let dino_px = to_tensor(Preprocess::dinov3(128));

    let vision = bb.clip().unwrap().vision().unwrap();
    let opts = VisionOptions {
        layers: vec![1, 2, 3, 4],
        dpam_from: None,
        pos_interp: PosInterp::Bicubic,
    };
    let out = vision.forward(&clip_px, &opts).unwrap();
    for (l, h) in out.hidden.iter().enumerate() {
        let patches = h.narrow(1, 1, 64).unwrap();
        let want = vision.project_tokens(&patches).unwrap().squeeze(0).unwrap();
        assert!(
            max_abs_diff(&f.clip_local[l], &want) < 1e-5,
            "clip scale {l}"
        );
    }
    let embed = vision.image_embeds(&clip_px, PosInterp::Bicubic).unwrap();
    assert!(max_abs_diff(&f.clip_global, &embed.squeeze(0).unwrap()) < 1e-5);

    let dino = bb.dino().dinov3().unwrap();
    let raw = dino.forward(&dino_px, &[1, 2, 3, 4], false).unwrap();
    for (l, (block, h)) in raw.hidden.iter().enumerate() {
        assert_eq!(*block, l + 1);
        let normed = dino.final_norm(h).unwrap();
        let want = normed.narrow(1, 5, 64).unwrap().squeeze(0).unwrap();
        assert!(
            max_abs_diff(&f.dino_local[l], &want) < 1e-5,
            "dino scale {l}"
        );
        // Dropping the wrong prefix (CLS only) would differ.
        let wrong = normed.narrow(1, 1, 64).unwrap().squeeze(0).unwrap();
        assert!(max_abs_diff(&f.dino_local[l], &wrong) > 1e-3);
    }
    assert!(max_abs_diff(&f.dino_global, &raw.cls.squeeze(0).unwrap()) < 1e-5);
}

#[test]
fn batches_equal_single_images_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| write_image(dir.path(), &format!("{i}.png"), 50 + 30 * i, 70, i))
        .collect();
    let bb = tiny();
    let batch = bb.features_batch(&paths).unwrap();
    assert_eq!(batch.len(), 3);
    for (p, b) in paths.iter().zip(&batch) {
        let single = bb.features(p).unwrap();
        for (x, y) in single.clip_local.iter().zip(&b.clip_local) {
            assert!(max_abs_diff(x, y) < 1e-5);
        }
        for (x, y) in single.dino_local.iter().zip(&b.dino_local) {
            assert!(max_abs_diff(x, y) < 1e-5);
        }
        assert!(max_abs_diff(&single.clip_global, &b.clip_global) < 1e-5);
    }
    assert!(max_abs_diff(&batch[0].clip_global, &batch[1].clip_global) > 1e-4);
    assert!(bb.features_batch(&[]).unwrap().is_empty());

    let hf = stack_features(&batch).unwrap();
    assert_eq!(hf.grid, (8, 8));
    assert_eq!(hf.clip_local.len(), 4);
    assert_eq!(hf.clip_local[2].dims(), &[3, 64, 64]);
    assert_eq!(hf.dino_local[1].dims(), &[3, 64, 64]);
    assert_eq!(hf.clip_global.dims(), &[3, 64]);
    assert_eq!(hf.dino_global.dims(), &[3, 64]);
    for (i, item) in batch.iter().enumerate() {
        let row = hf.dino_local[1].get(i).unwrap();
        assert_eq!(max_abs_diff(&row, &item.dino_local[1]), 0.0);
        let g = hf.clip_global.get(i).unwrap();
        assert_eq!(max_abs_diff(&g, &item.clip_global), 0.0);
    }
    assert!(stack_features(&[]).is_err());
    let mut odd = batch[1].clone();
    odd.grid = (4, 16);
    let err = stack_features(&[batch[0].clone(), odd])
        .unwrap_err()
        .to_string();
    assert!(err.contains("grid"), "{err}");
    let mut fewer = batch[1].clone();
    fewer.clip_local.pop();
    assert!(stack_features(&[batch[0].clone(), fewer]).is_err());
}

/// A 12-block pair of other widths at a 6 x 6 grid: the paper's CLIP set scaled to 12 blocks
/// (3, 6, 9, 12), the literal DINO set (4, 7, 10, 12), non-native CLIP grid (positional table
/// resampled from 5 x 5), text width unlike the joint width.
#[test]
fn a_small_non_tiny_pair() {
    let dev = Device::Cpu;
    let clip_cfg = ClipConfig {
        vision: Some(ClipVisionConfig {
            hidden_size: 48,
            intermediate_size: 96,
            num_hidden_layers: 12,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 70,
            patch_size: 14,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }),
        text: Some(ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 40,
            intermediate_size: 80,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }),
        projection_dim: 32,
    };
    let dino_cfg = Dinov3Config {
        hidden_size: 48,
        num_hidden_layers: 12,
        num_attention_heads: 4,
        intermediate_size: 96,
        ..tiny_dino_config()
    };
    let clip = ClipModel::new(&clip_cfg, seeded_var_builder(1, DType::F32, &dev), "small").unwrap();
    let dino = Dinov3Model::new(&dino_cfg, seeded_var_builder(2, DType::F32, &dev)).unwrap();
    let bcfg = BackbonesConfig {
        clip: "small-clip".into(),
        dino: "small-dino".into(),
        ..BackbonesConfig::default()
    }
    .with_grid(6, 14, 16);
    let mut mcfg = SsvpConfig::tiny().model;
    mcfg.clip_layers = vec![3, 6, 9, 12];
    mcfg.dino_layers = DinoLayerSet::PaperLiteral;
    mcfg.clip_dim = 32;
    mcfg.dino_dim = 48;
    mcfg.text_width = 40;
    let bb = Backbones::from_models(
        Some(clip),
        dino.into(),
        &bcfg,
        &mcfg.taps(),
        "seeded:1".into(),
        "seeded:2".into(),
        &dev,
    )
    .unwrap();
    mcfg.check_backbones(bb.identity()).unwrap();
    let id = bb.identity();
    assert_eq!(id.clip_layers, vec![3, 6, 9, 12]);
    assert_eq!(id.dino_layers, vec![4, 7, 10, 12]);
    assert_eq!(id.grid, (6, 6));
    assert_eq!((id.clip_size, id.dino_size), ((84, 84), (96, 96)));
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "a.png", 40, 40, 1);
    let f = bb.features(&img).unwrap();
    f.check(id).unwrap();
    assert_eq!(f.clip_local[0].dims(), &[36, 32]);
    assert_eq!(f.dino_local[0].dims(), &[36, 48]);
    assert_eq!(
        (f.clip_global.dims(), f.dino_global.dims()),
        (&[32][..], &[48][..])
    );
    // Prompt encoder on this text tower: [P, L, 40] -> [P, 32].
    let enc = bb.prompt_encoder().unwrap();
    let tokens = Tensor::randn(0f32, 0.02, (2, 4, 40), &dev).unwrap();
    let t = ssvp_model::PromptTextEncoder::encode(&enc, "screw", &tokens).unwrap();
    assert_eq!(t.dims(), &[2, 32]);

    // Quarter points of 12 blocks for the other DINO set.
    assert_eq!(
        DinoLayerSet::QuarterPoints.resolve(12).unwrap(),
        vec![3, 6, 9, 12]
    );
    assert_eq!(
        DinoLayerSet::QuarterPoints.resolve(24).unwrap(),
        vec![6, 12, 18, 24]
    );
}

#[test]
fn configuration_errors_say_what_to_change() {
    let dev = Device::Cpu;
    let load = |b: &BackbonesConfig, m: &ssvp_model::ModelConfig| {
        ssvp_model::load_backbones(b, m, &dev)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let tiny = SsvpConfig::tiny();

    // Grids that do not match.
    let mut b = tiny.backbones.clone();
    b.dino_size = 112;
    let err = load(&b, &tiny.model);
    assert!(
        err.contains("grids must match") && err.contains("dino_size = 128"),
        "{err}"
    );
    // A size that is not a multiple of the patch.
    let mut b = tiny.backbones.clone();
    b.clip_size = 100;
    assert!(load(&b, &tiny.model).contains("multiple of the clip patch size 14"));
    // The paper's CLIP layers on a 4-block tower.
    let mut m = tiny.model.clone();
    m.clip_layers = vec![6, 12, 18, 24];
    let err = load(&tiny.backbones, &m);
    assert!(
        err.contains("clip layer 6") && err.contains("1..=4"),
        "{err}"
    );
    assert!(err.contains("[1, 2, 3, 4]"), "{err}");
    // The literal DINO set on a 4-block tower.
    let mut m = tiny.model.clone();
    m.dino_layers = DinoLayerSet::PaperLiteral;
    let err = load(&tiny.backbones, &m);
    assert!(
        err.contains("dino layer 7") && err.contains("quarter_points"),
        "{err}"
    );
    // Head widths that do not fit the towers.
    let mut m = tiny.model.clone();
    m.clip_dim = 768;
    m.atf_width = 768;
    let err = load(&tiny.backbones, &m);
    assert!(err.contains("model.clip_dim = 64"), "{err}");
    let mut m = tiny.model.clone();
    m.text_width = 768;
    assert!(load(&tiny.backbones, &m).contains("model.text_width = 64"));
    // Other settings.
    let mut b = tiny.backbones.clone();
    b.dpam_from = Some(9);
    assert!(load(&b, &tiny.model).contains("dpam_from = 9"));
    let mut b = tiny.backbones.clone();
    b.dtype = "f64".into();
    assert!(load(&b, &tiny.model).contains("f64"));
    let b = BackbonesConfig {
        clip: "/nonexistent/clip-weights".into(),
        ..tiny.backbones.clone()
    };
    assert!(!load(&b, &tiny.model).is_empty());

    // An unreadable image names the file.
    let bb = ssvp_model::load_backbones(&tiny.backbones, &tiny.model, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let err = format!("{:#}", bb.features(&bad).unwrap_err());
    assert!(err.contains("broken.png"), "{err}");
    let missing = dir.path().join("missing.png");
    assert!(bb.features(&missing).is_err());
}

#[test]
fn backbones_section_in_toml() {
    let text = "[backbones]\nclip = \"tiny\"\ndino = \"tiny\"\nclip_size = 112\ndino_size = 128\n\
                pos_interp = \"bilinear\"\ndpam_from = 2\nseed = 3\n";
    let c = SsvpConfig::from_toml_str(text).unwrap();
    assert_eq!(c.backbones.clip, "tiny");
    assert_eq!(c.backbones.dpam_from, Some(2));
    assert_eq!(
        c.backbones.pos_interp,
        ssvp_model::config::PosInterp::Bilinear
    );
    let tiny = SsvpConfig::tiny();
    let round = SsvpConfig::from_toml_str(&tiny.to_toml_string().unwrap()).unwrap();
    assert_eq!(round, tiny);
    assert!(SsvpConfig::from_toml_str("[backbones]\ndtype = \"f64\"\n").is_err());
    assert!(SsvpConfig::from_toml_str("[backbones]\nclip_sise = 3\n").is_err());
    assert!(SsvpConfig::from_toml_str("[backbones]\npos_interp = \"nearest\"\n").is_err());

    // The bilinear / DPAM switches change the CLIP features and the identity.
    let dev = Device::Cpu;
    let bb_a = ssvp_model::load_backbones(&tiny.backbones, &tiny.model, &dev).unwrap();
    let mut b = tiny.backbones.clone();
    b.pos_interp = ssvp_model::config::PosInterp::Bilinear;
    b.dpam_from = Some(2);
    let bb_b = ssvp_model::load_backbones(&b, &tiny.model, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "a.png", 64, 64, 1);
    let (fa, fb) = (bb_a.features(&img).unwrap(), bb_b.features(&img).unwrap());
    assert!(max_abs_diff(&fa.clip_local[3], &fb.clip_local[3]) > 1e-4);
    // DINO does not depend on them.
    assert_eq!(max_abs_diff(&fa.dino_local[3], &fb.dino_local[3]), 0.0);
    let err = bb_a
        .identity()
        .check_matches(bb_b.identity())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pos_interp") && err.contains("dpam_from"),
        "{err}"
    );
}

/// Without the global features each tower stops after its deepest tap; the local features are
/// those of the whole towers, bit for bit, and the globals are empty.
#[test]
fn towers_without_globals_give_the_same_local_features() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<ssvp_image::RgbImage8> = (0..2)
        .map(|i| {
            let p = write_image(dir.path(), &format!("{i}.png"), 60 + 20 * i, 64, i);
            ssvp_image::decode::load_rgb8(p).unwrap()
        })
        .collect();
    let refs: Vec<&ssvp_image::RgbImage8> = images.iter().collect();
    let bb = tiny();
    let (clip, dino) = bb.preprocess_batch(&refs).unwrap();
    let whole = bb
        .features_of_towers(Some(&clip), Some(&dino), true)
        .unwrap();
    let early = bb
        .features_of_towers(Some(&clip), Some(&dino), false)
        .unwrap();
    for (w, e) in whole.iter().zip(&early) {
        assert_eq!(e.clip_local.len(), w.clip_local.len());
        assert_eq!(e.dino_local.len(), w.dino_local.len());
        for (x, y) in w.clip_local.iter().zip(&e.clip_local) {
            assert_eq!(max_abs_diff(x, y), 0.0);
        }
        for (x, y) in w.dino_local.iter().zip(&e.dino_local) {
            assert_eq!(max_abs_diff(x, y), 0.0);
        }
        assert_eq!(e.clip_global.elem_count(), 0);
        assert_eq!(e.dino_global.elem_count(), 0);
        assert_eq!(w.dino_global.elem_count(), 64);
    }
}
