//! Bad DINOv2 checkpoints and inputs give errors that say what is wrong and how to fix it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov2::{Dinov2Config, Dinov2Model};
use ssvp_backbones::{Checkpoint, ErrorKind};

fn variant_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dinov2")
        .join(variant)
}

fn config(variant: &str) -> Dinov2Config {
    let text = std::fs::read_to_string(variant_dir(variant).join("config.json")).unwrap();
    Dinov2Config::from_hf_json(&text).unwrap()
}

fn checkpoint(variant: &str, file: &str) -> Checkpoint {
    Checkpoint::load(&variant_dir(variant).join(file), &Device::Cpu).unwrap()
}

fn model(variant: &str) -> Dinov2Model {
    Dinov2Model::load(
        variant_dir(variant).to_str().unwrap(),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn input_sides_must_be_multiples_of_the_patch_size() {
    let model = model("s");
    for (h, w, fix) in [(56, 90, "56x98"), (40, 28, "42x28"), (0, 28, "14x28")] {
        let pixels = Tensor::zeros((1, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        let err = model.forward(&pixels, &[], false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{h}x{w}"))
                && err.contains("multiples of the patch size 14")
                && err.contains(&format!("resize to e.g. {fix}")),
            "{err}"
        );
        let err = model.grid_for(h, w).unwrap_err().to_string();
        assert!(err.contains(fix), "{err}");
    }
    assert_eq!(model.grid_for(518, 742).unwrap(), (37, 53));
    let gray = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&gray, &[], false).unwrap_err().to_string();
    assert!(err.contains("3 input channels"), "{err}");
    let unbatched = Tensor::zeros((3, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward(&unbatched, &[], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, channels, height, width]"), "{err}");
    let ok = Tensor::zeros((1, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward_blocks(&ok, &[3], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("block 3") && err.contains("1..=2"), "{err}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let mut ckpt = checkpoint("s", "model.safetensors");
    ckpt.remove("encoder.layer.1.attention.attention.value.weight")
        .unwrap();
    let err = Dinov2Model::from_checkpoint(ckpt, Some(config("s")), None, DType::F32, &Device::Cpu)
        .map(drop)
        .map_err(|e| crate::chain(&e))
        .unwrap_err();
    assert!(
        err.contains("encoder.layer.1.attention.attention.value.weight")
            && err.contains("model.safetensors"),
        "{err}"
    );

    // Through the Meta spelling a dropped SwiGLU w3 is reported under its canonical name.
    let mut meta = checkpoint("swiglu", "meta.pth");
    meta.remove("blocks.0.mlp.w3.weight").unwrap();
    let err =
        Dinov2Model::from_checkpoint(meta, Some(config("swiglu")), None, DType::F32, &Device::Cpu)
            .map(drop)
            .map_err(|e| crate::chain(&e))
            .unwrap_err();
    assert!(
        err.contains("encoder.layer.0.mlp.weights_out.weight"),
        "{err}"
    );

    // A config for another training resolution: the position table's shape says so.
    let mut wrong = config("b_reg");
    wrong.image_size = 56;
    let err = Dinov2Model::from_checkpoint(
        checkpoint("b_reg", "model.safetensors"),
        Some(wrong),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .map(drop)
    .map_err(|e| crate::chain(&e))
    .unwrap_err();
    assert!(
        err.contains("embeddings.position_embeddings")
            && err.contains("[1, 17, 32]")
            && err.contains("[1, 10, 32]"),
        "{err}"
    );
}

#[test]
fn dinov3_unrelated_and_missing_weights_are_reported() {
    let dinov3 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dinov3/mlp");
    // The directory's config.json says `dinov3_vit`; the `.pth` alone has DINOv3's tensor names.
    let alone = tempfile::tempdir().unwrap();
    std::fs::copy(dinov3.join("meta.pth"), alone.path().join("meta.pth")).unwrap();
    for (spec, kind) in [
        (dinov3.clone(), ErrorKind::Config),
        (alone.path().join("meta.pth"), ErrorKind::Format),
    ] {
        let err =
            Dinov2Model::load(spec.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap_err();
        assert_eq!(err.kind(), kind, "{}", crate::chain(&err));
        assert!(crate::chain(&err).contains("dinov3 module"), "{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let err = Dinov2Model::load(dir.path().to_str().unwrap(), None, DType::F32, &Device::Cpu)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let text = err.to_string();
    assert!(
        text.contains("model.safetensors") && text.contains("*.pth"),
        "{text}"
    );

    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let other =
        Checkpoint::from_tensors("clip.safetensors", [("visual.proj".to_string(), t)].into());
    let err = Dinov2Model::from_checkpoint(other, None, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not look like a DINOv2") && err.contains("visual.proj"),
        "{err}"
    );
}
