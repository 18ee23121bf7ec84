//! CLIP parity against transformers' CLIPModel (random weights, fixtures written by
//! reference/gen_clip.py). Tolerance: relative error max|a-b| / max|b| < 1e-4 on every output.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use ssvp_backbones::clip::to_hf_names;
use ssvp_backbones::clip::{
    Activation, ClipConfig, ClipModel, ConfigChoice, LoadOptions, PosInterp, Scheme, VisionOptions,
};
use ssvp_backbones::weights::ResolvedFiles;
use ssvp_backbones::{Checkpoint, Grad};

const TOL: f32 = 1e-4;

/// Where the parity runs: `SSVP_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default cpu), so that the
/// GPU check (`deploy/gpu/check.sh`) runs the same tests against the same references.
fn device() -> Device {
    std::env::var("SSVP_TEST_DEVICE")
        .map(|d| ssvp_backbones::runtime::parse_device(&d).expect("SSVP_TEST_DEVICE"))
        .unwrap_or(Device::Cpu)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn refs(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &device()).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let err = rel_err(got, want);
    eprintln!("{what}: relative error {err:.2e}");
    assert!(err < TOL, "{what}: relative error {err:e} >= {TOL:e}");
}

fn load(weights: &str, config: Option<&str>, activation: Option<Activation>) -> ClipModel {
    let files = ResolvedFiles {
        weights: fixture(weights),
        config: config.map(fixture),
        origin: weights.into(),
    };
    let opts = LoadOptions {
        activation,
        device: device(),
        ..Default::default()
    };
    ClipModel::load_files(&files, &opts).unwrap()
}

/// The config inferred from a foreign checkpoint's shapes. The fixtures' heads are not 64 wide
/// (the one thing shapes cannot tell), so the head counts are given.
fn inferred(weights: &str, vision_heads: usize, text_heads: usize) -> ClipConfig {
    let ckpt = Checkpoint::load(&fixture(weights), &device()).unwrap();
    let (ckpt, _) = to_hf_names(ckpt).unwrap();
    ClipConfig::infer_from_checkpoint_with_heads(&ckpt, Some(vision_heads), Some(text_heads))
        .unwrap()
}

fn load_inferred(
    weights: &str,
    vision_heads: usize,
    text_heads: usize,
    act: Activation,
) -> ClipModel {
    let files = ResolvedFiles {
        weights: fixture(weights),
        config: None,
        origin: weights.into(),
    };
    let cfg = inferred(weights, vision_heads, text_heads).with_activation(act);
    let opts = LoadOptions {
        config: ConfigChoice::Explicit(cfg),
        device: device(),
        ..Default::default()
    };
    ClipModel::load_files(&files, &opts).unwrap()
}

/// Runs the vision tower on `pixels` and compares hidden states, patch features and the image
/// embedding with the references stored under `tag`.
fn check_vision(
    model: &ClipModel,
    r: &HashMap<String, Tensor>,
    tag: &str,
    pixels: &str,
    layers: &[usize],
    dpam_from: Option<usize>,
    pos_interp: PosInterp,
) {
    let opts = VisionOptions {
        layers: layers.to_vec(),
        dpam_from,
        pos_interp,
    };
    let out = model.vision().unwrap().forward(&r[pixels], &opts).unwrap();
    for (i, l) in layers.iter().enumerate() {
        assert_close(
            &format!("{tag} hidden.{l}"),
            &out.hidden[i],
            &r[&format!("{tag}.hidden.{l}")],
        );
        assert_close(
            &format!("{tag} patch.{l}"),
            &out.patch[i],
            &r[&format!("{tag}.patch.{l}")],
        );
    }
    assert_close(
        &format!("{tag} image_embed"),
        &out.image_embed,
        &r[&format!("{tag}.image_embed")],
    );
}

fn check_text(model: &ClipModel, r: &HashMap<String, Tensor>) {
    let text = model.text_embeds(&r["text.ids"]).unwrap();
    assert_close("text_embed", &text, &r["text_embed"]);
}

/// Learnable context vectors replace positions 1..=n of the token embeddings, deep prompts are
/// inserted at layers 2..; the gradient of sum(text_embed * R) w.r.t. both must match torch.
fn check_prompt_gradients(model: &ClipModel, r: &HashMap<String, Tensor>) {
    let text = model.text().unwrap();
    let ids = &r["text.ids"];
    let eot = ssvp_backbones::clip::eot_positions(ids).unwrap();
    let ctx = Var::from_tensor(&r["prompt.ctx"]).unwrap();
    let n_ctx = ctx.dim(0).unwrap();
    let deep: Vec<Var> = (0..)
        .map_while(|j| r.get(&format!("prompt.deep.{j}")))
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    assert_eq!(deep.len(), text.config().num_hidden_layers - 1);

    let tok = text.token_embedding(ids).unwrap();
    let (b, n, w) = tok.dims3().unwrap();
    let embeds = Tensor::cat(
        &[
            tok.narrow(1, 0, 1).unwrap(),
            ctx.as_tensor()
                .unsqueeze(0)
                .unwrap()
                .broadcast_as((b, n_ctx, w))
                .unwrap(),
            tok.narrow(1, 1 + n_ctx, n - 1 - n_ctx).unwrap(),
        ],
        1,
    )
    .unwrap();
    let deep_tensors: Vec<Tensor> = deep.iter().map(|v| v.as_tensor().clone()).collect();
    let out = text
        .forward_embeds(&embeds, &eot, &deep_tensors, Grad::Tracked)
        .unwrap();
    assert_close(
        "prompt text_embed",
        &out.text_embed,
        &r["prompt.text_embed"],
    );
    let loss = (&out.text_embed * &r["prompt.r"])
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert_close(
        "grad ctx",
        grads.get(ctx.as_tensor()).unwrap(),
        &r["prompt.grad_ctx"],
    );
    for (j, d) in deep.iter().enumerate() {
        let g = grads.get(d.as_tensor()).expect("deep prompt gradient");
        assert_close(
            &format!("grad deep.{j}"),
            g,
            &r[&format!("prompt.grad_deep.{j}")],
        );
    }
}

#[test]
fn hf_checkpoint_matches_transformers_at_native_resampled_and_rectangular_grids() {
    // Through ClipModel::load on a directory laid out like an HF repo.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("a_hf.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(fixture("a_hf_config.json"), dir.path().join("config.json")).unwrap();
    let model = ClipModel::load(
        dir.path().to_str().unwrap(),
        &LoadOptions {
            device: device(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(model.scheme(), Scheme::HuggingFace);
    assert!((model.logit_scale().unwrap() - 100f32.ln()).abs() < 1e-6);
    let text_cfg = model.config().text.as_ref().unwrap();
    assert_eq!((text_cfg.vocab_size, text_cfg.eos_token_id), (64, 63));

    let r = refs("a_ref.safetensors");
    let all = [1, 2, 3];
    check_vision(
        &model,
        &r,
        "native",
        "pixels.native",
        &all,
        None,
        PosInterp::Bicubic,
    );
    check_vision(
        &model,
        &r,
        "bicubic7",
        "pixels.7x7",
        &all,
        None,
        PosInterp::Bicubic,
    );
    check_vision(
        &model,
        &r,
        "bilinear7",
        "pixels.7x7",
        &all,
        None,
        PosInterp::Bilinear,
    );
    check_vision(
        &model,
        &r,
        "rect4x7",
        "pixels.4x7",
        &all,
        None,
        PosInterp::Bicubic,
    );
    // The two resampling conventions give measurably different features.
    assert!(rel_err(&r["bicubic7.hidden.3"], &r["bilinear7.hidden.3"]) > 1e-3);
    // A second call at a cached grid gives the same result.
    check_vision(
        &model,
        &r,
        "bicubic7",
        "pixels.7x7",
        &[2],
        None,
        PosInterp::Bicubic,
    );
    check_text(&model, &r);
    check_prompt_gradients(&model, &r);
}

#[test]
fn dpam_matches_anomalyclip_reimplementation() {
    let model = load("a_hf.safetensors", Some("a_hf_config.json"), None);
    let r = refs("a_ref.safetensors");
    let all = [1, 2, 3];
    check_vision(
        &model,
        &r,
        "dpam2_bilinear7",
        "pixels.7x7",
        &all,
        Some(2),
        PosInterp::Bilinear,
    );
    check_vision(
        &model,
        &r,
        "dpam3_native",
        "pixels.native",
        &all,
        Some(3),
        PosInterp::Bicubic,
    );
    // The V-V state differs from the ordinary one (the test would be vacuous otherwise).
    assert!(rel_err(&r["dpam3_native.hidden.3"], &r["native.hidden.3"]) > 1e-2);
}

#[test]
fn openai_names_without_config_are_renamed_and_inferred() {
    let model = load_inferred("a_openai.safetensors", 4, 2, Activation::QuickGelu);
    assert_eq!(model.scheme(), Scheme::OpenAi);
    assert!((model.logit_scale().unwrap() - 100f32.ln()).abs() < 1e-6);
    let reference = ClipConfig::from_hf_file(&fixture("a_hf_config.json")).unwrap();
    assert_eq!(model.config().vision, reference.vision);
    assert_eq!(model.config().projection_dim, reference.projection_dim);
    let (t, rt) = (
        model.config().text.as_ref().unwrap(),
        reference.text.as_ref().unwrap(),
    );
    assert_eq!(
        (
            t.vocab_size,
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.num_attention_heads
        ),
        (
            rt.vocab_size,
            rt.hidden_size,
            rt.intermediate_size,
            rt.num_hidden_layers,
            rt.num_attention_heads
        )
    );

    let r = refs("a_ref.safetensors");
    check_vision(
        &model,
        &r,
        "native",
        "pixels.native",
        &[1, 3],
        None,
        PosInterp::Bicubic,
    );
    check_vision(
        &model,
        &r,
        "bilinear7",
        "pixels.7x7",
        &[2],
        None,
        PosInterp::Bilinear,
    );
    check_text(&model, &r);
    check_prompt_gradients(&model, &r);
}

#[test]
fn open_clip_custom_text_pth_with_gelu_matches_transformers() {
    let model = load_inferred("b_openai_customtext.pth", 2, 2, Activation::Gelu);
    assert_eq!(model.scheme(), Scheme::OpenAi);
    let r = refs("b_ref.safetensors");
    check_vision(
        &model,
        &r,
        "native",
        "pixels.native",
        &[1, 2],
        None,
        PosInterp::Bicubic,
    );
    check_vision(
        &model,
        &r,
        "rect3x5",
        "pixels.3x5",
        &[1, 2],
        None,
        PosInterp::Bicubic,
    );
    check_text(&model, &r);
    check_prompt_gradients(&model, &r);

    // The activation matters: QuickGELU on GELU weights is measurably off.
    let wrong = load_inferred("b_openai_customtext.pth", 2, 2, Activation::QuickGelu);
    let got = wrong.image_embeds(&r["pixels.native"]).unwrap();
    assert!(rel_err(&got, &r["native.image_embed"]) > 1e-3);
}

#[test]
fn timm_vision_only_checkpoint_loads_without_text() {
    let model = load_inferred("b_timm_vision.safetensors", 2, 2, Activation::Gelu);
    assert_eq!(model.scheme(), Scheme::Timm);
    assert!(model.config().text.is_none());
    let r = refs("b_ref.safetensors");
    check_vision(
        &model,
        &r,
        "native",
        "pixels.native",
        &[1, 2],
        None,
        PosInterp::Bicubic,
    );
    let err = model.text_embeds(&r["text.ids"]).unwrap_err().to_string();
    assert!(err.contains("vision-only"), "{err}");

    // A full preset on a vision-only file drops the text tower instead of failing.
    let files = ResolvedFiles {
        weights: fixture("b_timm_vision.safetensors"),
        config: None,
        origin: "timm".into(),
    };
    let mut cfg = inferred("b_timm_vision.safetensors", 2, 2);
    cfg.text = ClipConfig::preset("ViT-B/32").unwrap().text;
    let opts = LoadOptions {
        config: ConfigChoice::Explicit(cfg.with_activation(Activation::Gelu)),
        device: device(),
        ..Default::default()
    };
    let model = ClipModel::load_files(&files, &opts).unwrap();
    assert!(model.text().is_err());
}

#[test]
fn half_precision_runs_and_stays_close() {
    // f16/bf16 weights and activations (LayerNorm statistics in f32): looser tolerance, since
    // bf16 keeps 8 mantissa bits.
    let r = refs("a_ref.safetensors");
    for (dtype, tol) in [
        (candle_core::DType::F16, 1e-2),
        (candle_core::DType::BF16, 5e-2),
    ] {
        let files = ResolvedFiles {
            weights: fixture("a_hf.safetensors"),
            config: Some(fixture("a_hf_config.json")),
            origin: "a".into(),
        };
        let opts = LoadOptions {
            dtype,
            device: device(),
            ..Default::default()
        };
        let model = ClipModel::load_files(&files, &opts).unwrap();
        let opts = VisionOptions {
            layers: vec![3],
            dpam_from: Some(2),
            pos_interp: PosInterp::Bilinear,
        };
        let out = model
            .vision()
            .unwrap()
            .forward(&r["pixels.7x7"], &opts)
            .unwrap();
        assert_eq!(out.patch[0].dtype(), dtype);
        let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
        let err = rel_err(&f32(&out.patch[0]), &r["dpam2_bilinear7.patch.3"]);
        assert!(err < tol, "{dtype:?} patch: {err:e}");
        let text = model.text_embeds(&r["text.ids"]).unwrap();
        let err = rel_err(&f32(&text), &r["text_embed"]);
        assert!(err < tol, "{dtype:?} text: {err:e}");
    }
}
