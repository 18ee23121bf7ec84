//! Parity of the DINOv2 ViT with transformers 5.23 `Dinov2Model` and `Dinov2WithRegistersModel`
//! (fixtures written by reference/gen_dinov2.py): tiny random-weight models trained for a 3x3
//! position grid (42 px at patch 14), run at that grid (no interpolation), at 2x2 (shrunk), 4x6
//! (non-square, grown) and 2x5 (rows shrunk, columns grown). Variants: `s` (GELU MLP, no
//! registers, plain bicubic), `b_reg` (4 registers, antialiased bicubic), `swiglu`. Weights in
//! hub names, Meta names (`.pth` and `.safetensors`) and transformers 5 in-memory names.
//! Tolerance: relative error max|a-b| / max|b| < 1e-4 on every tensor (the DINOv3 tests' measure).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov2::{self, patches_to_map, Dinov2Config, Dinov2Model, NameScheme};
use ssvp_backbones::Checkpoint;

const TOL: f32 = 1e-4;
const LAYERS: usize = 2;
const INPUTS: [&str; 4] = ["native", "square", "nonsquare", "mixed"];
const VARIANTS: [&str; 3] = ["s", "b_reg", "swiglu"];
const PATCH: usize = 14;

/// Where the parity runs: `SSVP_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default cpu), as in the
/// DINOv3 parity tests.
fn device() -> Device {
    std::env::var("SSVP_TEST_DEVICE")
        .map(|d| ssvp_backbones::runtime::parse_device(&d).expect("SSVP_TEST_DEVICE"))
        .unwrap_or(Device::Cpu)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dinov2")
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &device())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn inputs() -> HashMap<String, Tensor> {
    load_tensors(&fixtures().join("inputs.safetensors"))
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_device(want.device()).unwrap();
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

/// Checks `got` against `want`; returns the relative error for the report.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) -> f32 {
    let err = rel_err(got, want);
    assert!(err < TOL, "{what}: relative error {err:e} >= {TOL:e}");
    err
}

fn config(variant: &str) -> Dinov2Config {
    let text = std::fs::read_to_string(fixtures().join(variant).join("config.json")).unwrap();
    Dinov2Config::from_hf_json(&text).unwrap()
}

fn load(path: &Path, config: Option<Dinov2Config>) -> Dinov2Model {
    Dinov2Model::load(path.to_str().unwrap(), config, DType::F32, &device())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `model` on every input and checks every hidden state (raw and normed), CLS, registers
/// and patches against transformers. Returns the largest relative error seen.
fn check_against_reference(model: &Dinov2Model, variant: &str) -> f32 {
    let inputs = inputs();
    let expected = load_tensors(&fixtures().join(variant).join("expected.safetensors"));
    let prefix = model.config().num_prefix_tokens();
    let all_blocks: Vec<usize> = (0..=LAYERS).collect();
    let mut worst = 0f32;
    for tag in INPUTS {
        let pixels = &inputs[tag];
        let (_, _, h, w) = pixels.dims4().unwrap();
        let (gh, gw) = (h / PATCH, w / PATCH);
        let raw = model.forward(pixels, &all_blocks, false).unwrap();
        assert_eq!(raw.grid, (gh, gw));
        assert_eq!(raw.hidden.len(), LAYERS + 1);
        for (block, state) in &raw.hidden {
            let want = &expected[&format!("{tag}.hidden.{block}")];
            let what = format!("{variant} {tag} hidden.{block}");
            worst = worst.max(assert_close(&state.squeeze(0).unwrap(), want, &what));
        }
        // Normed intermediates, requested out of order to check the returned order.
        let normed = model.forward(pixels, &[2, 1], true).unwrap();
        assert_eq!(
            normed.hidden.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            [2, 1]
        );
        for (block, state) in &normed.hidden {
            let want = &expected[&format!("{tag}.normed.{block}")];
            let what = format!("{variant} {tag} normed.{block}");
            worst = worst.max(assert_close(&state.squeeze(0).unwrap(), want, &what));
        }
        // last_hidden_state = normed.<last>; pooler_output = its CLS row.
        let last = &expected[&format!("{tag}.normed.{LAYERS}")];
        let n_patches = gh * gw;
        worst = worst.max(assert_close(
            &raw.cls.squeeze(0).unwrap(),
            &last.get(0).unwrap(),
            &format!("{variant} {tag} cls"),
        ));
        let registers = model.config().num_register_tokens;
        assert_eq!(
            raw.registers.dims(),
            &[1, registers, model.config().hidden_size]
        );
        if registers > 0 {
            worst = worst.max(assert_close(
                &raw.registers.squeeze(0).unwrap(),
                &last.narrow(0, 1, registers).unwrap(),
                &format!("{variant} {tag} registers"),
            ));
        }
        worst = worst.max(assert_close(
            &raw.patch.squeeze(0).unwrap(),
            &last.narrow(0, prefix, n_patches).unwrap(),
            &format!("{variant} {tag} patch"),
        ));
        // The token helpers agree with the fixture's row-major patch order.
        let tokens = model.split_tokens(&normed.hidden[0].1).unwrap();
        let map = patches_to_map(&tokens.patches, gh, gw).unwrap();
        let (r, c) = (gh - 1, gw / 2);
        let from_map = map
            .squeeze(0)
            .unwrap()
            .narrow(1, r, 1)
            .unwrap()
            .narrow(2, c, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let from_tokens = last.get(prefix + r * gw + c).unwrap();
        assert_close(&from_map, &from_tokens, &format!("{variant} {tag} map"));
    }
    eprintln!("{variant}: max relative error {worst:e}");
    worst
}

#[test]
fn hf_safetensors_match_transformers() {
    for variant in VARIANTS {
        let model = load(&fixtures().join(variant), None);
        let cfg = model.config();
        assert_eq!(cfg, &config(variant));
        assert_eq!(cfg.use_swiglu_ffn, variant == "swiglu", "{variant}");
        assert_eq!(
            cfg.num_register_tokens,
            if variant == "b_reg" { 4 } else { 0 }
        );
        // Only the registers class resamples with antialiasing.
        assert_eq!(cfg.interpolate_antialias, variant == "b_reg");
        assert_eq!((cfg.patch_size, cfg.position_grid()), (PATCH, 3));
        check_against_reference(&model, variant);
    }
}

#[test]
fn meta_checkpoints_load_to_the_same_outputs() {
    for (variant, file) in [
        ("s", "meta.pth"),
        ("swiglu", "meta.pth"),
        ("b_reg", "meta.safetensors"),
    ] {
        let path = fixtures().join(variant).join(file);
        let raw = Checkpoint::load(&path, &device()).unwrap();
        assert!(raw.contains("blocks.0.attn.qkv.weight") && raw.contains("pos_embed"));
        assert_eq!(
            dinov2::names::detect_scheme(&raw).unwrap(),
            NameScheme::Meta
        );

        // Shapes give everything but the head count (head dim 64 is assumed for real
        // checkpoints; these tiny models have 2 or 4 heads), registers included and the
        // antialiased resampling that goes with them.
        let (canonical, _) = dinov2::names::to_canonical(raw).unwrap();
        let mut inferred = Dinov2Config::infer(&canonical, None).unwrap();
        assert_eq!(inferred.num_attention_heads, 1);
        inferred.num_attention_heads = config(variant).num_attention_heads;
        assert_eq!(inferred, config(variant), "{variant}");

        let meta = load(&path, Some(config(variant)));
        check_against_reference(&meta, variant);

        // Meta and HF files hold the same weights: identical outputs, not just close ones.
        let hf = load(&fixtures().join(variant), None);
        let pixels = &inputs()["nonsquare"];
        let a = meta.forward(pixels, &[1, 2], false).unwrap();
        let b = hf.forward(pixels, &[1, 2], false).unwrap();
        for ((_, x), (_, y)) in a.hidden.iter().zip(&b.hidden) {
            assert_eq!(rel_err(x, y), 0.0, "{variant}: Meta and HF weights differ");
        }
        assert_eq!(rel_err(&a.patch, &b.patch), 0.0);
    }
}

#[test]
fn a_directory_with_one_meta_pth_resolves_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pth = tmp.path().join("dinov2_vits14_pretrain.pth");
    std::fs::copy(fixtures().join("s").join("meta.pth"), &pth).unwrap();
    let files = dinov2::resolve(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(files.weights, pth);
    assert!(files.config.is_none());
    // Without a config the shapes decide; the file name's preset is of another width, so
    // the head count falls back to head dim 64 (here: 1 head), which a config overrides.
    let inferred = Dinov2Model::load_files(&files, None, DType::F32, &device()).unwrap();
    assert_eq!(inferred.config().num_attention_heads, 1);
    assert_eq!(inferred.config().position_grid(), 3);
    let model = Dinov2Model::load_files(&files, Some(config("s")), DType::F32, &device()).unwrap();
    check_against_reference(&model, "s");
}

/// The transformers >= 5 in-memory spelling (`attention.q_proj`, `mlp.gate_proj`/`up_proj`/
/// `down_proj`) under `Dinov2ForImageClassification`'s `dinov2.` prefix, with its classifier.
#[test]
fn transformers5_state_dict_names_load_identically() {
    let dir = fixtures().join("swiglu");
    let hub = Checkpoint::load(&dir.join("model.safetensors"), &device()).unwrap();
    let h = config("swiglu").intermediate_size;
    let mut renamed = HashMap::new();
    for (name, t) in hub.into_tensors() {
        let name = name
            .replace(".attention.attention.query.", ".attention.q_proj.")
            .replace(".attention.attention.key.", ".attention.k_proj.")
            .replace(".attention.attention.value.", ".attention.v_proj.")
            .replace(".attention.output.dense.", ".attention.o_proj.")
            .replace(".mlp.weights_out.", ".mlp.down_proj.");
        if let Some(stem) = name.strip_suffix(".mlp.weights_in.weight") {
            renamed.insert(
                format!("dinov2.{stem}.mlp.gate_proj.weight"),
                t.narrow(0, 0, h).unwrap(),
            );
            renamed.insert(
                format!("dinov2.{stem}.mlp.up_proj.weight"),
                t.narrow(0, h, h).unwrap(),
            );
        } else if let Some(stem) = name.strip_suffix(".mlp.weights_in.bias") {
            renamed.insert(
                format!("dinov2.{stem}.mlp.gate_proj.bias"),
                t.narrow(0, 0, h).unwrap(),
            );
            renamed.insert(
                format!("dinov2.{stem}.mlp.up_proj.bias"),
                t.narrow(0, h, h).unwrap(),
            );
        } else {
            renamed.insert(format!("dinov2.{name}"), t);
        }
    }
    renamed.insert(
        "classifier.weight".into(),
        Tensor::zeros((10, 48), DType::F16, &device()).unwrap(),
    );
    assert!(renamed.contains_key("dinov2.encoder.layer.1.mlp.gate_proj.weight"));
    let tmp = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&renamed, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let ckpt = Checkpoint::load(&tmp.path().join("model.safetensors"), &device()).unwrap();
    assert_eq!(
        dinov2::names::detect_scheme(&ckpt).unwrap(),
        NameScheme::HuggingFaceModelPrefix
    );
    check_against_reference(&load(tmp.path(), None), "swiglu");
}

#[test]
fn forward_blocks_is_bit_identical_to_forward() {
    let inputs = inputs();
    for variant in VARIANTS {
        let model = load(&fixtures().join(variant), None);
        for tag in ["nonsquare", "mixed"] {
            let pixels = &inputs[tag];
            for norm in [false, true] {
                let full = model.forward(pixels, &[2, 0, 1], norm).unwrap();
                for blocks in [&[1][..], &[0], &[2, 0, 1], &[1, 1]] {
                    let (states, grid) = model.forward_blocks(pixels, blocks, norm).unwrap();
                    assert_eq!(grid, full.grid);
                    let order: Vec<usize> = states.iter().map(|(b, _)| *b).collect();
                    assert_eq!(order, blocks, "{variant} {tag}");
                    for (b, state) in &states {
                        let (_, want) = full.hidden.iter().find(|(fb, _)| fb == b).unwrap();
                        let same = (state - want)
                            .unwrap()
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        assert_eq!(same, 0.0, "{variant} {tag} block {b} norm {norm}");
                    }
                }
            }
        }
    }
}

#[test]
fn position_tables_are_reused_across_calls_and_sizes() {
    let model = load(&fixtures().join("b_reg"), None);
    let inputs = inputs();
    // Alternate sizes: a stale table for the other grid would break parity.
    let first = model.forward(&inputs["nonsquare"], &[], false).unwrap();
    let _ = model.forward(&inputs["mixed"], &[], false).unwrap();
    let _ = model.forward(&inputs["native"], &[], false).unwrap();
    let again = model.forward(&inputs["nonsquare"], &[], false).unwrap();
    assert_eq!(rel_err(&first.patch, &again.patch), 0.0);
    assert!(first.hidden.is_empty());
}

/// The fixtures tell the two kernels apart: each model matches only with its own.
#[test]
fn the_resampling_kernel_is_the_models_own() {
    let inputs = inputs();
    for variant in ["s", "b_reg"] {
        let mut cfg = config(variant);
        cfg.interpolate_antialias = !cfg.interpolate_antialias;
        let wrong = load(&fixtures().join(variant), Some(cfg));
        let expected = load_tensors(&fixtures().join(variant).join("expected.safetensors"));
        for tag in ["nonsquare", "mixed", "square"] {
            let out = wrong.forward(&inputs[tag], &[0], false).unwrap();
            let err = rel_err(
                &out.hidden[0].1.squeeze(0).unwrap(),
                &expected[&format!("{tag}.hidden.0")],
            );
            assert!(err > 1e-3, "{variant} {tag}: the other kernel gave {err:e}");
        }
        // At the trained grid nothing is resampled, so the kernel does not matter.
        let out = wrong.forward(&inputs["native"], &[0], false).unwrap();
        let want = &expected["native.hidden.0"];
        assert_close(&out.hidden[0].1.squeeze(0).unwrap(), want, "native");
    }
}

#[test]
fn embed_tensors_have_the_cli_layout() {
    let model = load(&fixtures().join("b_reg"), None);
    let expected = load_tensors(&fixtures().join("b_reg").join("expected.safetensors"));
    let out = model
        .forward(&inputs()["nonsquare"], &[1, 2], true)
        .unwrap();
    let named = out.embed_tensors(0).unwrap();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["hidden.1", "hidden.2", "cls", "patch"]);
    let dims: Vec<&[usize]> = named.iter().map(|(_, t)| t.dims()).collect();
    assert_eq!(dims, [&[29, 32][..], &[29, 32], &[32], &[24, 32]]);
    assert_close(
        &named[0].1,
        &expected["nonsquare.normed.1"],
        "embed hidden.1 (normed)",
    );
    assert_close(
        &named[3].1,
        &expected["nonsquare.normed.2"].narrow(0, 5, 24).unwrap(),
        "embed patch",
    );
}

#[test]
fn a_batch_matches_its_images_run_alone() {
    let model = load(&fixtures().join("s"), None);
    let one = &inputs()["mixed"];
    let flipped = one.flip(&[3]).unwrap();
    let batch = Tensor::cat(&[one, &flipped], 0).unwrap();
    let both = model.forward(&batch, &[1], true).unwrap();
    for (i, image) in [one, &flipped].into_iter().enumerate() {
        let alone = model.forward(image, &[1], true).unwrap();
        let what = format!("batch item {i}");
        let pairs = [
            (both.hidden[0].1.get(i), alone.hidden[0].1.get(0)),
            (both.patch.get(i), alone.patch.get(0)),
            (both.cls.get(i), alone.cls.get(0)),
        ];
        for (a, b) in pairs {
            assert_close(&a.unwrap(), &b.unwrap(), &what);
        }
    }
}

#[test]
fn configs_from_json_and_presets_agree_on_released_models() {
    // The released hub configs (facebook/dinov2-base, -with-registers-giant), abridged.
    let base = Dinov2Config::from_hf_json(
        r#"{"architectures":["Dinov2Model"],"hidden_size":768,"image_size":518,
            "layer_norm_eps":1e-06,"layerscale_value":1.0,"mlp_ratio":4,"model_type":"dinov2",
            "num_attention_heads":12,"num_hidden_layers":12,"patch_size":14,"qkv_bias":true,
            "use_swiglu_ffn":false}"#,
    )
    .unwrap();
    assert_eq!(base, Dinov2Config::preset("facebook/dinov2-base").unwrap());
    let giant_reg = Dinov2Config::from_hf_json(
        r#"{"hidden_size":1536,"image_size":518,"mlp_ratio":4,"model_type":"dinov2_with_registers",
            "num_attention_heads":24,"num_hidden_layers":40,"num_register_tokens":4,
            "patch_size":14,"use_swiglu_ffn":true}"#,
    )
    .unwrap();
    assert_eq!(giant_reg, Dinov2Config::vitg14_reg());
    assert_eq!(giant_reg.intermediate_size, 4096);
    assert_eq!(giant_reg.num_prefix_tokens(), 5);
    assert_eq!(giant_reg.head_dim(), 64);
}

#[test]
fn infer_falls_back_to_head_dim_64_without_a_matching_preset() {
    let path = fixtures().join("b_reg").join("model.safetensors");
    let (canonical, scheme) =
        dinov2::names::to_canonical(Checkpoint::load(&path, &device()).unwrap()).unwrap();
    assert_eq!(scheme, NameScheme::HuggingFace);
    // A hint of another width is ignored; head dim 64 is the fallback.
    let c = Dinov2Config::infer(&canonical, Some("dinov2_vitb14_reg")).unwrap();
    assert_eq!(c.num_attention_heads, 1);
    let mut want = config("b_reg");
    want.num_attention_heads = 1;
    assert_eq!(c, want);
}

#[test]
fn flops_count_the_blocks_that_run() {
    let model = load(&fixtures().join("s"), None);
    let full = model.flops((4, 6), LAYERS);
    let half = model.flops((4, 6), 1);
    let embed = model.flops((4, 6), 0);
    assert!(embed > 0.0 && half > embed && full > half);
    assert_eq!(model.flops((4, 6), 99), full);
    // Patch embedding: 2 · patches · (3·14·14) · width.
    assert_eq!(embed, 2.0 * 24.0 * 588.0 * 24.0);
}
