//! Bad checkpoints and bad inputs give errors that say what is wrong, never panics.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::{ClipModel, ConfigChoice, LoadOptions, VisionOptions};
use ssvp_backbones::weights::ResolvedFiles;
use ssvp_backbones::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn hf_config() -> ConfigChoice {
    let cfg = ssvp_backbones::clip::ClipConfig::from_hf_file(&fixture("a_hf_config.json")).unwrap();
    ConfigChoice::Explicit(cfg)
}

/// Writes a copy of the HF fixture with `edit` applied and tries to load it from disk.
fn load_edited(edit: impl FnOnce(&mut Checkpoint)) -> anyhow::Result<ClipModel> {
    let mut ckpt = Checkpoint::load(&fixture("a_hf.safetensors"), &Device::Cpu).unwrap();
    edit(&mut ckpt);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&ckpt.into_tensors(), &path).unwrap();
    let files = ResolvedFiles {
        weights: path,
        config: None,
        origin: "edited".into(),
    };
    let opts = LoadOptions {
        config: hf_config(),
        ..Default::default()
    };
    // As callers outside the crate do: the typed error into anyhow with `?`.
    Ok(ClipModel::load_files(&files, &opts)?)
}

#[test]
fn missing_tensor_is_named() {
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let err = load_edited(|c| {
        c.remove(name).unwrap();
    })
    .err()
    .expect("a checkpoint without a tensor must not load");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );

    let name = "text_projection.weight";
    let msg = format!("{:#}", load_edited(|c| drop(c.remove(name))).err().unwrap());
    assert!(msg.contains(name), "{msg}");
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let name = "text_model.encoder.layers.0.self_attn.k_proj.weight";
    let err = load_edited(|c| {
        c.insert(
            name,
            Tensor::zeros((32, 31), DType::F32, &Device::Cpu).unwrap(),
        );
    })
    .err()
    .expect("a misshapen tensor must not load");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(name) && msg.contains("[32, 31]") && msg.contains("[32, 32]"),
        "{msg}"
    );
}

#[test]
fn unknown_tensors_are_rejected_not_ignored() {
    // e.g. a LayerScale open_clip model, whose gammas would otherwise be silently unused.
    let mut ckpt = Checkpoint::load(&fixture("a_openai.safetensors"), &Device::Cpu).unwrap();
    ckpt.insert(
        "visual.transformer.resblocks.0.ls_1.gamma",
        Tensor::ones(48, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = ClipModel::from_checkpoint(ckpt, None, &LoadOptions::default())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("ls_1.gamma"), "{err:#}");
}

#[test]
fn bad_inputs_are_errors() {
    let files = ResolvedFiles {
        weights: fixture("a_hf.safetensors"),
        config: Some(fixture("a_hf_config.json")),
        origin: "a".into(),
    };
    let model = ClipModel::load_files(&files, &LoadOptions::default()).unwrap();
    let vision = model.vision().unwrap();
    let dev = Device::Cpu;
    let opts = VisionOptions::default();
    // 18 is not a multiple of the patch size 4.
    let err = vision
        .forward(
            &Tensor::zeros((1, 3, 18, 16), DType::F32, &dev).unwrap(),
            &opts,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("multiples of the patch size 4"),
        "{err}"
    );
    let err = vision
        .forward(
            &Tensor::zeros((1, 1, 16, 16), DType::F32, &dev).unwrap(),
            &opts,
        )
        .unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
    let layers = VisionOptions {
        layers: vec![4],
        ..Default::default()
    };
    let err = vision
        .forward(
            &Tensor::zeros((1, 3, 16, 16), DType::F32, &dev).unwrap(),
            &layers,
        )
        .unwrap_err();
    assert!(err.to_string().contains("1..=3"), "{err}");
    // Token id beyond the 64-token vocabulary.
    let ids = Tensor::new(&[[62u32, 64, 63]], &dev).unwrap();
    let err = model.text_embeds(&ids).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    // Prompt-path misuse: too many deep prompts (2 layers take at most 1), EOT out of range.
    let text = model.text().unwrap();
    let embeds = Tensor::zeros((1, 77, 32), DType::F32, &dev).unwrap();
    let prompt = Tensor::zeros((2, 32), DType::F32, &dev).unwrap();
    let err = text
        .forward_embeds(
            &embeds,
            &[5],
            &[prompt.clone(), prompt],
            ssvp_backbones::Grad::Tracked,
        )
        .unwrap_err();
    assert!(err.to_string().contains("at most 1"), "{err}");
    let err = text
        .forward_embeds(&embeds, &[77], &[], ssvp_backbones::Grad::Frozen)
        .unwrap_err();
    assert!(err.to_string().contains("EOT position 77"), "{err}");
    // Preset that does not match the tensors: shape error names the tensor.
    let opts = LoadOptions {
        config: ConfigChoice::Preset("ViT-B/32".into()),
        ..Default::default()
    };
    let err = crate::chain(&ClipModel::load_files(&files, &opts).err().unwrap());
    assert!(err.contains("vision_model."), "{err}");
}
