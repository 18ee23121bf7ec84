//! Bad checkpoints and bad inputs give errors that say what is wrong, never a panic.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov3::{Dinov3Config, Dinov3Model};
use ssvp_backbones::Checkpoint;

fn variant_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dinov3")
        .join(variant)
}

fn config(variant: &str) -> Dinov3Config {
    let text = std::fs::read_to_string(variant_dir(variant).join("config.json")).unwrap();
    Dinov3Config::from_hf_json(&text).unwrap()
}

fn checkpoint(variant: &str, file: &str) -> Checkpoint {
    Checkpoint::load(&variant_dir(variant).join(file), &Device::Cpu).unwrap()
}

#[test]
fn a_missing_tensor_is_named() {
    let mut ckpt = checkpoint("mlp", "model.safetensors");
    ckpt.remove("layer.1.attention.v_proj.weight").unwrap();
    let err =
        Dinov3Model::from_checkpoint(ckpt, Some(config("mlp")), None, DType::F32, &Device::Cpu)
            .map(drop)
            .map_err(|e| crate::chain(&e))
            .unwrap_err();
    assert!(err.contains("layer.1.attention.v_proj.weight"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");

    // The same through the Meta spelling: a dropped SwiGLU w3 is reported under its canonical name.
    let mut meta = checkpoint("swiglu", "meta.pth");
    meta.remove("blocks.0.mlp.w3.weight").unwrap();
    let err =
        Dinov3Model::from_checkpoint(meta, Some(config("swiglu")), None, DType::F32, &Device::Cpu)
            .map(drop)
            .map_err(|e| crate::chain(&e))
            .unwrap_err();
    assert!(err.contains("layer.0.mlp.down_proj.weight"), "{err}");
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let mut ckpt = checkpoint("swiglu", "model.safetensors");
    ckpt.insert(
        "layer.0.mlp.up_proj.weight",
        Tensor::zeros((41, 64), DType::F16, &Device::Cpu).unwrap(),
    );
    let err =
        Dinov3Model::from_checkpoint(ckpt, Some(config("swiglu")), None, DType::F32, &Device::Cpu)
            .map(drop)
            .map_err(|e| crate::chain(&e))
            .unwrap_err();
    assert!(err.contains("layer.0.mlp.up_proj.weight"), "{err}");
    assert!(
        err.contains("[41, 64]") && err.contains("[40, 64]"),
        "{err}"
    );

    // A wrong config (a preset for another width) is caught on the first tensor.
    let ckpt = checkpoint("mlp", "model.safetensors");
    let err = Dinov3Model::from_checkpoint(
        ckpt,
        Some(Dinov3Config::vits16()),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .map(drop)
    .map_err(|e| crate::chain(&e))
    .unwrap_err();
    assert!(
        err.contains("patch_embeddings.weight") && err.contains("384"),
        "{err}"
    );
}

#[test]
fn input_sides_must_be_multiples_of_the_patch_size() {
    let model = Dinov3Model::load(
        variant_dir("mlp").to_str().unwrap(),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    for (h, w) in [(64, 90), (40, 32), (0, 32)] {
        let pixels = Tensor::zeros((1, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        let err = model.forward(&pixels, &[], false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{h}x{w}")) && err.contains("multiples of the patch size 16"),
            "{err}"
        );
    }
    let gray = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&gray, &[], false).unwrap_err().to_string();
    assert!(err.contains("3 input channels"), "{err}");
    let unbatched = Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward(&unbatched, &[], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, channels, height, width]"), "{err}");
    let ok = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&ok, &[3], false).unwrap_err().to_string();
    assert!(err.contains("block 3") && err.contains("1..=2"), "{err}");
}

#[test]
fn unrelated_or_missing_weights_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = Dinov3Model::load(dir.path().to_str().unwrap(), None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("*.pth"),
        "{err}"
    );

    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let other =
        Checkpoint::from_tensors("clip.safetensors", [("visual.proj".to_string(), t)].into());
    let err = Dinov3Model::from_checkpoint(other, None, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not look like a DINOv3") && err.contains("visual.proj"),
        "{err}"
    );
}
