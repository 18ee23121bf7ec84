//! Parity of the DINOv3 ViT with transformers 5.23 `DINOv3ViTModel` (fixtures written by
//! reference/gen_dinov3.py): tiny random-weight models, plain GELU MLP and SwiGLU, at a
//! non-square 64x96 input (4x6 patches) and a square 32x32 one. Tolerance: relative error
//! max|a-b| / max|b| < 1e-4 on every tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov3::{patches_to_map, Dinov3Config, Dinov3Model, NameScheme};
use ssvp_backbones::Checkpoint;

const TOL: f32 = 1e-4;

/// Where the parity runs: `SSVP_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default cpu), so that the
/// GPU check (`deploy/gpu/check.sh`) runs the same tests against the same references.
fn device() -> Device {
    std::env::var("SSVP_TEST_DEVICE")
        .map(|d| ssvp_backbones::runtime::parse_device(&d).expect("SSVP_TEST_DEVICE"))
        .unwrap_or(Device::Cpu)
}

const LAYERS: usize = 2;
const INPUTS: [&str; 2] = ["nonsquare", "square"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dinov3")
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &device())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let err = rel_err(got, want);
    assert!(err < TOL, "{what}: relative error {err:e} >= {TOL:e}");
}

/// Runs `model` on both inputs and checks every hidden state (raw and normed), cls and patch.
fn check_against_reference(model: &Dinov3Model, variant: &str) {
    let inputs = load_tensors(&fixtures().join("inputs.safetensors"));
    let expected = load_tensors(&fixtures().join(variant).join("expected.safetensors"));
    let all_blocks: Vec<usize> = (0..=LAYERS).collect();
    for tag in INPUTS {
        let pixels = &inputs[tag];
        let (_, _, h, w) = pixels.dims4().unwrap();
        let raw = model.forward(pixels, &all_blocks, false).unwrap();
        assert_eq!(raw.grid, (h / 16, w / 16));
        assert_eq!(raw.hidden.len(), LAYERS + 1);
        for (block, state) in &raw.hidden {
            let want = &expected[&format!("{tag}.hidden.{block}")];
            assert_close(
                &state.squeeze(0).unwrap(),
                want,
                &format!("{variant} {tag} hidden.{block}"),
            );
        }
        // Normed intermediates, requested out of order to check the returned order.
        let normed = model.forward(pixels, &[2, 1], true).unwrap();
        assert_eq!(
            normed.hidden.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            [2, 1]
        );
        for (block, state) in &normed.hidden {
            let want = &expected[&format!("{tag}.normed.{block}")];
            assert_close(
                &state.squeeze(0).unwrap(),
                want,
                &format!("{variant} {tag} normed.{block}"),
            );
        }
        let last = &expected[&format!("{tag}.normed.{LAYERS}")];
        let n_patches = (h / 16) * (w / 16);
        assert_close(
            &raw.cls.squeeze(0).unwrap(),
            &last.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(),
            &format!("{variant} {tag} cls"),
        );
        assert_close(
            &raw.registers.squeeze(0).unwrap(),
            &last.narrow(0, 1, 4).unwrap(),
            &format!("{variant} {tag} registers"),
        );
        assert_close(
            &raw.patch.squeeze(0).unwrap(),
            &last.narrow(0, 5, n_patches).unwrap(),
            &format!("{variant} {tag} patch"),
        );
        // The split/reshape helpers agree with the fixture's row-major patch order.
        let tokens = model.split_tokens(&normed.hidden[0].1).unwrap();
        let map = patches_to_map(&tokens.patches, h / 16, w / 16).unwrap();
        assert_eq!(map.dims(), &[1, 64, h / 16, w / 16]);
        let (r, c) = (h / 16 - 1, 1);
        let from_map = map
            .squeeze(0)
            .unwrap()
            .narrow(1, r, 1)
            .unwrap()
            .narrow(2, c, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let from_tokens = last.get(5 + r * (w / 16) + c).unwrap();
        assert_close(
            &from_map,
            &from_tokens,
            &format!("{variant} {tag} map[{r},{c}]"),
        );
    }
}

fn tiny_config(variant: &str) -> Dinov3Config {
    let text = std::fs::read_to_string(fixtures().join(variant).join("config.json")).unwrap();
    Dinov3Config::from_hf_json(&text).unwrap()
}

#[test]
fn hf_safetensors_match_transformers_mlp() {
    let dir = fixtures().join("mlp");
    let model = Dinov3Model::load(dir.to_str().unwrap(), None, DType::F32, &device()).unwrap();
    assert!(!model.config().use_gated_mlp);
    check_against_reference(&model, "mlp");
}

#[test]
fn hf_safetensors_match_transformers_swiglu() {
    let dir = fixtures().join("swiglu");
    let model = Dinov3Model::load(dir.to_str().unwrap(), None, DType::F32, &device()).unwrap();
    assert!(model.config().use_gated_mlp);
    check_against_reference(&model, "swiglu");
}

#[test]
fn meta_pth_loads_to_the_same_outputs() {
    for variant in ["mlp", "swiglu"] {
        let pth = fixtures().join(variant).join("meta.pth");
        let raw = Checkpoint::load(&pth, &device()).unwrap();
        // The fixture really carries a non-zero K bias, which the loader must mask away.
        let qkv_bias = raw
            .get("blocks.0.attn.qkv.bias")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let k_bias = qkv_bias
            .narrow(0, 64, 64)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(k_bias.to_scalar::<f32>().unwrap() > 0.1);
        assert_eq!(
            ssvp_backbones::dinov3::names::detect_scheme(&raw).unwrap(),
            NameScheme::Meta
        );

        // Shapes alone give everything but the head count (head dim 64 is assumed for real
        // checkpoints; this tiny model has head dim 16).
        let (canonical, _) = ssvp_backbones::dinov3::names::to_canonical(raw).unwrap();
        let mut inferred = Dinov3Config::infer(&canonical, None).unwrap();
        assert_eq!(inferred.num_attention_heads, 1);
        inferred.num_attention_heads = 4;
        assert_eq!(inferred, tiny_config(variant), "{variant}");

        let model = Dinov3Model::load(
            pth.to_str().unwrap(),
            Some(tiny_config(variant)),
            DType::F32,
            &device(),
        )
        .unwrap();
        check_against_reference(&model, variant);

        // Meta and HF files hold the same weights: identical outputs, not just close ones.
        let hf = Dinov3Model::load(
            fixtures().join(variant).to_str().unwrap(),
            None,
            DType::F32,
            &device(),
        )
        .unwrap();
        let pixels = &load_tensors(&fixtures().join("inputs.safetensors"))["nonsquare"];
        let a = model.forward(pixels, &[1, 2], false).unwrap();
        let b = hf.forward(pixels, &[1, 2], false).unwrap();
        for ((_, x), (_, y)) in a.hidden.iter().zip(&b.hidden) {
            assert_eq!(rel_err(x, y), 0.0, "{variant}: Meta and HF weights differ");
        }
        assert_eq!(rel_err(&a.patch, &b.patch), 0.0);
    }
}

#[test]
fn transformers5_model_prefixed_names_load_identically() {
    let dir = fixtures().join("swiglu");
    let hf = Checkpoint::load(&dir.join("model.safetensors"), &device()).unwrap();
    let mut prefixed = HashMap::new();
    for (name, t) in hf.into_tensors() {
        // transformers >= 5 state-dict spelling (`model.layer.N`); embeddings and norm keep theirs.
        let name = if name.starts_with("layer.") {
            format!("model.{name}")
        } else {
            name
        };
        prefixed.insert(name, t);
    }
    assert!(prefixed.contains_key("model.layer.1.mlp.gate_proj.weight"));
    let tmp = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&prefixed, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let model =
        Dinov3Model::load(tmp.path().to_str().unwrap(), None, DType::F32, &device()).unwrap();
    check_against_reference(&model, "swiglu");
}

#[test]
fn rope_tables_are_reused_across_calls_and_sizes() {
    let dir = fixtures().join("mlp");
    let model = Dinov3Model::load(dir.to_str().unwrap(), None, DType::F32, &device()).unwrap();
    let inputs = load_tensors(&fixtures().join("inputs.safetensors"));
    // Alternate sizes: a stale table for the other grid would break parity.
    let first = model.forward(&inputs["nonsquare"], &[], false).unwrap();
    let _ = model.forward(&inputs["square"], &[], false).unwrap();
    let again = model.forward(&inputs["nonsquare"], &[], false).unwrap();
    assert_eq!(rel_err(&first.patch, &again.patch), 0.0);
    assert!(first.hidden.is_empty());
}

#[test]
fn embed_tensors_have_the_cli_layout() {
    let model = Dinov3Model::load(
        fixtures().join("swiglu").to_str().unwrap(),
        None,
        DType::F32,
        &device(),
    )
    .unwrap();
    let inputs = load_tensors(&fixtures().join("inputs.safetensors"));
    let expected = load_tensors(&fixtures().join("swiglu").join("expected.safetensors"));
    let out = model.forward(&inputs["nonsquare"], &[1, 2], true).unwrap();
    let named = out.embed_tensors(0).unwrap();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["hidden.1", "hidden.2", "cls", "patch"]);
    let dims: Vec<&[usize]> = named.iter().map(|(_, t)| t.dims()).collect();
    assert_eq!(dims, [&[29, 64][..], &[29, 64], &[64], &[24, 64]]);
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
    let model = Dinov3Model::load(
        fixtures().join("mlp").to_str().unwrap(),
        None,
        DType::F32,
        &device(),
    )
    .unwrap();
    let inputs = load_tensors(&fixtures().join("inputs.safetensors"));
    let one = &inputs["nonsquare"];
    let flipped = one.flip(&[3]).unwrap();
    let batch = Tensor::cat(&[one, &flipped], 0).unwrap();
    let both = model.forward(&batch, &[1], true).unwrap();
    for (i, image) in [one, &flipped].into_iter().enumerate() {
        let alone = model.forward(image, &[1], true).unwrap();
        let what = format!("batch item {i}");
        assert_close(
            &both.hidden[0].1.get(i).unwrap(),
            &alone.hidden[0].1.get(0).unwrap(),
            &what,
        );
        assert_close(
            &both.patch.get(i).unwrap(),
            &alone.patch.get(0).unwrap(),
            &what,
        );
        assert_close(&both.cls.get(i).unwrap(), &alone.cls.get(0).unwrap(), &what);
    }
}
