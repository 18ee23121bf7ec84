//! What a front learns from a failed load, by kind alone: a weights path that does not exist
//! and a run directory of another format version are told apart without reading messages.

use candle_core::Device;
use ssvp_detect::{Detector, DetectorOptions, ErrorKind, LoadSpec, MemorySpec, MutualConfig};

fn spec(config: Option<std::path::PathBuf>, checkpoint: Option<std::path::PathBuf>) -> LoadSpec {
    LoadSpec {
        checkpoint,
        config,
        memory: Some(MemorySpec::Mutual(MutualConfig::default())),
        backbones: Default::default(),
        calibration: None,
        options: DetectorOptions::default(),
        device: Device::Cpu,
    }
}

#[test]
fn a_missing_weights_file_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("line3.toml");
    let missing = tmp.path().join("no-such-dinov3");
    std::fs::write(
        &config,
        format!(
            "[backbones]\nclip = \"tiny\"\ndino = \"{}\"\nclip_size = 112\ndino_size = 128\n",
            missing.display()
        ),
    )
    .unwrap();
    let err = Detector::load(&spec(Some(config), None))
        .err()
        .expect("the load fails");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no-such-dinov3"), "{err}");
}

#[test]
fn a_run_of_another_format_version_is_unsupported() {
    let fixture = crate::common::shared_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for entry in std::fs::read_dir(&fixture.run).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, run.join(path.file_name().unwrap())).unwrap();
        }
    }
    let state = run.join("state.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    json["format_version"] = 99.into();
    std::fs::write(&state, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let mut s = spec(None, Some(run));
    s.memory = None;
    let err = Detector::load(&s).err().expect("the load fails");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

/// A build without the head reads the scoring sections of a config file with its own small
/// reader; it must agree with the head build's `SsvpConfig::load` on every input.
#[test]
fn the_headless_config_reader_agrees_with_the_head_builds() {
    use ssvp_detect::load::scoring_config;
    use ssvp_model::SsvpConfig;
    let dir = tempfile::tempdir().unwrap();
    let line3 = dir.path().join("line3.toml");
    std::fs::write(
        &line3,
        "[backbones]\nclip = \"tiny\"\ndino = \"tiny\"\nclip_size = 112\ndino_size = 128\n\
         pos_interp = \"bilinear\"\n[model]\nclip_layers = [1, 2, 3, 4]\n\
         dino_layers = \"quarter_points\"\nclip_dim = 64\ndino_dim = 64\ntext_width = 64\n\
         atf_heads = 4\natf_width = 64\natf_mlp_hidden = 64\nvae_hidden = 64\nvae_latent = 64\n\
         latent_tokens = 8\ninject_key_dim = 32\nscale_gate_hidden = 32\n\
         [postprocess]\ngaussian_sigma = 2.0\n[optim]\nepochs = 3\n",
    )
    .unwrap();
    for (config, preset) in [
        (None, None),
        (None, Some("tiny")),
        (Some(line3.as_path()), None),
        (Some(line3.as_path()), Some("tiny")),
    ] {
        let head = SsvpConfig::load(config, preset).unwrap();
        let (backbones, taps, postprocess) = scoring_config(config, preset).unwrap();
        assert_eq!(backbones, head.backbones, "{config:?} {preset:?}");
        assert_eq!(taps, head.model.taps(), "{config:?} {preset:?}");
        assert_eq!(postprocess, head.postprocess, "{config:?} {preset:?}");
    }
    assert!(scoring_config(None, Some("huge")).is_err());
    std::fs::write(&line3, "[backbones]\nclip_sise = 3\n").unwrap();
    assert_eq!(
        scoring_config(Some(&line3), None).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// The example configs for local weights (`examples/configs/*.toml`) read as the presets they
/// name, with only the weights' paths changed; the paper's also as a whole SSVP config.
#[test]
fn the_example_configs_are_their_presets_with_local_weights() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let (backbones, taps, _) = ssvp_detect::load::scoring_config(Some(&path), None).unwrap();
        let name = backbones
            .preset
            .clone()
            .expect("each example names its preset");
        let preset = ssvp_features::presets::preset(&name).unwrap();
        let local = ssvp_features::BackbonesConfig {
            clip: preset.config.clip.clone(),
            dino: preset.config.dino.clone(),
            ..backbones.clone()
        };
        assert_eq!(local, preset.config, "{}", path.display());
        assert_eq!(taps, preset.taps, "{}", path.display());
        assert!(
            backbones.dino.starts_with("/opt/models/"),
            "{}",
            path.display()
        );
        if name == "paper" {
            ssvp_model::SsvpConfig::from_toml_file(&path).unwrap();
        }
    }
    assert_eq!(seen, 3);
}
