//! `ssvp embed --backbone clip` end to end on the tiny random CLIP of the backbone fixtures.
//! The model itself is checked against transformers in ssvp-backbones' tests; here the CLI's
//! output must equal the library's on the same preprocessed image (relative error < 1e-6), and
//! the prompts must be tokenized with OpenAI's ids.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::tokenizer::ClipTokenizer;
use ssvp_backbones::clip::{ClipModel, LoadOptions, PosInterp, VisionOptions};
use ssvp_backbones::Checkpoint;

fn ssvp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny CLIP fixture with its vocabulary widened to CLIP's 49408 tokens (deterministic
/// values), so that real prompts tokenize into valid ids.
fn model_dir() -> tempfile::TempDir {
    let fixtures = workspace().join("crates/ssvp-backbones/tests/fixtures/clip");
    let mut ckpt = Checkpoint::load(&fixtures.join("a_hf.safetensors"), &Device::Cpu).unwrap();
    let width = 32;
    let vocab = 49408;
    let values: Vec<f32> = (0..vocab * width)
        .map(|i| 0.5 * ((i as f32) * 0.618).sin())
        .collect();
    ckpt.insert(
        "text_model.embeddings.token_embedding.weight",
        Tensor::from_vec(values, (vocab, width), &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&ckpt.into_tensors(), dir.path().join("model.safetensors"))
        .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("a_hf_config.json")).unwrap())
            .unwrap();
    config["text_config"]["vocab_size"] = vocab.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap()
}

#[test]
fn clip_features_and_prompts_match_the_library() {
    let model_dir = model_dir();
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("feats.safetensors");
    let run = ssvp()
        .args(["embed", "--backbone", "clip", "--weights"])
        .arg(model_dir.path())
        .arg("--image")
        .arg(&image)
        .args(["--size", "28", "--layers", "1,3", "--dpam-from", "2"])
        .args(["--pos-interp", "bilinear"])
        .args(["--text", "a photo of a damaged bottle."])
        .args(["--text", "a photo of a flawless metal_nut."])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "hidden.1",
            "hidden.3",
            "image_embed",
            "patch.1",
            "patch.3",
            "text_embed",
            "text_ids"
        ]
    );

    // The same computation through the library.
    let model =
        ClipModel::load(model_dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let img = ssvp_image::load_rgb8(&image).unwrap();
    let chw = ssvp_image::Preprocess::clip(28).apply(&img).unwrap();
    let pixels = Tensor::from_vec(chw.data, (1, 3, 28, 28), &Device::Cpu).unwrap();
    let opts = VisionOptions {
        layers: vec![1, 3],
        dpam_from: Some(2),
        pos_interp: PosInterp::Bilinear,
    };
    let want = model.vision().unwrap().forward(&pixels, &opts).unwrap();
    for (i, block) in [1, 3].iter().enumerate() {
        let h = &got[&format!("hidden.{block}")];
        assert_eq!(h.dims(), &[50, 48]);
        assert!(rel_err(h, &want.hidden[i].squeeze(0).unwrap()) < 1e-6);
        let p = &got[&format!("patch.{block}")];
        assert_eq!(p.dims(), &[50, 24]);
        assert!(rel_err(p, &want.patch[i].squeeze(0).unwrap()) < 1e-6);
    }
    assert!(rel_err(&got["image_embed"], &want.image_embed.squeeze(0).unwrap()) < 1e-6);

    let ids = &got["text_ids"];
    assert_eq!((ids.dtype(), ids.dims()), (DType::I64, &[2usize, 77][..]));
    let first: Vec<i64> = ids.get(0).unwrap().to_vec1().unwrap();
    // docs/formats.md §1.5 test vector, wrapped in SOT/EOT and zero-padded.
    assert_eq!(
        &first[..9],
        &[49406, 320, 1125, 539, 320, 13568, 5392, 269, 49407]
    );
    assert!(first[9..].iter().all(|&t| t == 0));
    let tok = ClipTokenizer::openai().unwrap();
    let rows: Vec<u32> = [
        "a photo of a damaged bottle.",
        "a photo of a flawless metal_nut.",
    ]
    .iter()
    .flat_map(|t| tok.tokenize(t, 77, false).unwrap())
    .collect();
    let want_text = model
        .text_embeds(&Tensor::from_vec(rows, (2, 77), &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(got["text_embed"].dims(), &[2, 24]);
    assert!(rel_err(&got["text_embed"], &want_text) < 1e-6);
}

#[test]
fn clip_input_errors_are_clear() {
    let model_dir = model_dir();
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("feats.safetensors");
    let run = |extra: &[&str]| {
        ssvp()
            .args(["embed", "--weights"])
            .arg(model_dir.path())
            .arg("--image")
            .arg(&image)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = run(&["--size", "30"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("multiple of the patch size 4"),
        "{err}"
    );
    let r = run(&["--size", "16", "--layers", "7"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("blocks 1..=3"), "{err}");
    let r = run(&["--backbone", "resnet"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("unknown backbone `resnet`"),
        "{err}"
    );
    assert!(!out.exists(), "no output is written on failure");
}

/// `--backbone dinov3` on the tiny SwiGLU DINOv3 fixture (an HF-style directory), at a
/// non-square input: the file must hold every token of the requested blocks (normed with
/// --norm-layers), the final-normed CLS and patches, and equal the library's output.
#[test]
fn dinov3_features_match_the_library() {
    use ssvp_backbones::dinov3::Dinov3Model;
    let weights = workspace().join("crates/ssvp-backbones/tests/fixtures/dinov3/swiglu");
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("dino.safetensors");
    let run = ssvp()
        .args(["embed", "--backbone", "dinov3", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&image)
        .args([
            "--height",
            "64",
            "--width",
            "96",
            "--layers",
            "1,2",
            "--norm-layers",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["cls", "hidden.1", "hidden.2", "patch"]);

    let model =
        Dinov3Model::load(weights.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let img = ssvp_image::load_rgb8(&image).unwrap();
    let chw = ssvp_image::Preprocess::dinov3(96)
        .with_size(96, 64)
        .apply(&img)
        .unwrap();
    let pixels = Tensor::from_vec(chw.data, (1, 3, 64, 96), &Device::Cpu).unwrap();
    let want = model.forward(&pixels, &[1, 2], true).unwrap();
    let width = model.config().hidden_size;
    for (i, block) in [1, 2].iter().enumerate() {
        let h = &got[&format!("hidden.{block}")];
        // CLS + 4 registers + 4x6 patches.
        assert_eq!(h.dims(), &[1 + 4 + 24, width]);
        assert!(rel_err(h, &want.hidden[i].1.squeeze(0).unwrap()) < 1e-6);
    }
    assert_eq!(got["patch"].dims(), &[24, width]);
    assert!(rel_err(&got["patch"], &want.patch.squeeze(0).unwrap()) < 1e-6);
    assert!(rel_err(&got["cls"], &want.cls.squeeze(0).unwrap()) < 1e-6);

    // CLIP-only options are refused rather than ignored, and nothing is written.
    let bad_out = out_dir.path().join("bad.safetensors");
    let r = ssvp()
        .args(["embed", "--backbone", "dinov3", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&image)
        .args(["--size", "64", "--text", "a photo"])
        .arg("--out")
        .arg(&bad_out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("CLIP only"), "{err}");
    let r = ssvp()
        .args(["embed", "--backbone", "dinov3", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&image)
        .args(["--size", "60"])
        .arg("--out")
        .arg(&bad_out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("multiples of the patch size 16"),
        "{err}"
    );
    assert!(!bad_out.exists());
}

/// The metadata of a written safetensors file.
fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// `--backbone dinov2` on the tiny DINOv2-with-registers fixture (an HF-style directory), at a
/// non-square input whose grid differs from the trained one (the position table is resampled):
/// the same tensor names as DINOv3, CLS + 4 registers + patches in `hidden.<block>`, and equal
/// to the library's output on the image preprocessed as DINOv2 expects (Pillow bicubic).
#[test]
fn dinov2_features_match_the_library() {
    use ssvp_backbones::dinov2::Dinov2Model;
    let weights = workspace().join("crates/ssvp-backbones/tests/fixtures/dinov2/b_reg");
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("dino.safetensors");
    let run = ssvp()
        .args(["embed", "--backbone", "dinov2", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&image)
        .args([
            "--height",
            "56",
            "--width",
            "84",
            "--layers",
            "2,1",
            "--norm-layers",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["cls", "hidden.1", "hidden.2", "patch"]);
    let meta = metadata(&out);
    assert_eq!(meta["backbone"], "dinov2");
    assert_eq!(meta["grid"], "4x6");
    assert_eq!(meta["norm_layers"], "true");

    let model =
        Dinov2Model::load(weights.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().num_register_tokens, 4);
    let img = ssvp_image::load_rgb8(&image).unwrap();
    let chw = ssvp_image::Preprocess::dinov2(84)
        .with_size(84, 56)
        .apply(&img)
        .unwrap();
    let pixels = Tensor::from_vec(chw.data, (1, 3, 56, 84), &Device::Cpu).unwrap();
    let want = model.forward(&pixels, &[2, 1], true).unwrap();
    let width = model.config().hidden_size;
    for (block, state) in &want.hidden {
        let h = &got[&format!("hidden.{block}")];
        // CLS + 4 registers + 4x6 patches.
        assert_eq!(h.dims(), &[1 + 4 + 24, width]);
        assert!(rel_err(h, &state.squeeze(0).unwrap()) < 1e-6);
    }
    assert_eq!(got["patch"].dims(), &[24, width]);
    assert!(rel_err(&got["patch"], &want.patch.squeeze(0).unwrap()) < 1e-6);
    assert_eq!(got["cls"].dims(), &[width]);
    assert!(rel_err(&got["cls"], &want.cls.squeeze(0).unwrap()) < 1e-6);
}

/// `--backbone dinov2` with no size and no layers: 448 px (32x32 patches of 14) and the quarter
/// points of the depth, raw (un-normed) block outputs, on the register-free ViT-S-style fixture.
#[test]
fn dinov2_defaults_are_448_px_and_the_quarter_points() {
    use ssvp_backbones::dinov2::Dinov2Model;
    let weights = workspace().join("crates/ssvp-backbones/tests/fixtures/dinov2/s");
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("dino.safetensors");
    let run = ssvp()
        .args(["embed", "--backbone", "DINOv2", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&image)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let meta = metadata(&out);
    assert_eq!(
        (
            meta["input_height"].as_str(),
            meta["input_width"].as_str(),
            meta["grid"].as_str(),
            meta["norm_layers"].as_str(),
            meta["normalisation"].as_str(),
        ),
        ("448", "448", "32x32", "false", "imagenet")
    );
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort_unstable();
    // Two blocks: the quarter points are 1 and 2.
    assert_eq!(names, ["cls", "hidden.1", "hidden.2", "patch"]);

    let model =
        Dinov2Model::load(weights.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().num_register_tokens, 0);
    let img = ssvp_image::load_rgb8(&image).unwrap();
    let chw = ssvp_image::Preprocess::dinov2(448).apply(&img).unwrap();
    let pixels = Tensor::from_vec(chw.data, (1, 3, 448, 448), &Device::Cpu).unwrap();
    let want = model.forward(&pixels, &[1, 2], false).unwrap();
    let width = model.config().hidden_size;
    for (block, state) in &want.hidden {
        let h = &got[&format!("hidden.{block}")];
        assert_eq!(h.dims(), &[1 + 32 * 32, width]);
        assert!(rel_err(h, &state.squeeze(0).unwrap()) < 1e-6);
    }
    assert!(rel_err(&got["patch"], &want.patch.squeeze(0).unwrap()) < 1e-6);
    assert!(rel_err(&got["cls"], &want.cls.squeeze(0).unwrap()) < 1e-6);
}

/// Options that do not apply to DINOv2 are refused rather than ignored, a size off the patch
/// grid names the patch size, an unknown preset lists the known ones; nothing is written.
#[test]
fn dinov2_input_errors_are_clear() {
    let weights = workspace().join("crates/ssvp-backbones/tests/fixtures/dinov2/s");
    let image = workspace().join("crates/ssvp-image/tests/fixtures/image/gray_64x48.png");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("bad.safetensors");
    let run = |extra: &[&str]| {
        let r = ssvp()
            .args(["embed", "--backbone", "dinov2", "--weights"])
            .arg(&weights)
            .arg("--image")
            .arg(&image)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(!r.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    for (extra, want) in [
        (
            &["--size", "56", "--dpam-from", "1"][..],
            "--dpam-from applies to CLIP only, not to --backbone dinov2",
        ),
        (&["--size", "56", "--text", "a photo"], "CLIP only"),
        (&["--size", "56", "--activation", "gelu"], "CLIP only"),
        (&["--size", "56", "--resize", "crop"], "CLIP only"),
        (&["--size", "56", "--sat"], "--sat applies to DINOv3 only"),
        (&["--size", "60"], "multiples of the patch size 14"),
        (&["--size", "56", "--layers", "3"], "blocks 1..=2"),
        (
            &["--size", "56", "--preset", "dinov3_vits16"],
            "unknown DINOv2 preset `dinov3_vits16`",
        ),
    ] {
        let err = run(extra);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    assert!(!out.exists(), "no output is written on failure");
}
