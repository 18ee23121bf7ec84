//! `SsvpConfig`: the paper's defaults, TOML round-trips, and rejection of unknown keys.

use ssvp_model::{ClassLoss, DinoLayerSet, LocalScore, SsvpConfig};

#[test]
fn defaults_are_the_papers_setting() {
    let c = SsvpConfig::default();
    let m = &c.model;
    // Paper §4.2.
    assert_eq!(m.clip_layers, vec![6, 12, 18, 24]);
    assert_eq!(m.dino_layers, DinoLayerSet::PaperLiteral);
    assert_eq!(m.dino_layers.one_based(), [4, 7, 10, 12]);
    assert_eq!(DinoLayerSet::QuarterPoints.one_based(), [6, 12, 18, 24]);
    assert_eq!(m.clip_dim, 768);
    assert_eq!(m.dino_dim, 1024);
    assert_eq!(m.num_prompts(), 6);
    assert_eq!(m.gamma, 0.5);
    // Bayes-PFL-inherited choices (docs/method.md).
    assert_eq!((m.context_len, m.state_len), (5, 5));
    assert_eq!((m.vae_hidden, m.vae_latent), (512, 768));
    assert_eq!((m.atf_heads, m.atf_width), (8, 768));
    assert_eq!(m.latent_tokens, 8);
    assert_eq!(m.tau_init, 0.07);
    assert!(m.tau_learnable);
    assert_eq!(m.local_gate_bias_init, 2.0);
    assert_eq!(m.local_score, LocalScore::Max);
    let l = &c.loss;
    assert_eq!(
        (l.kl_beta, l.vae_weight, l.margin_weight, l.margin_floor),
        (0.1, 1.0, 0.5, 0.85)
    );
    assert_eq!(l.focal_gamma, 2.0);
    assert!(l.dice && l.seg_on_scales && l.seg_on_fused);
    assert_eq!(l.class_loss, ClassLoss::BceOnScore);
    let o = &c.optim;
    assert_eq!((o.lr_prompts, o.lr_rest), (5e-4, 1e-4));
    assert_eq!((o.beta1, o.beta2), (0.5, 0.999));
    assert_eq!(o.weight_decay, 0.0);
    assert_eq!(o.warmup_fraction, 0.1);
    assert!(o.cosine_decay);
    assert_eq!((o.epochs, o.batch_size), (15, 8));
    assert_eq!(c.postprocess.gaussian_sigma, 4.0);
    assert!(c.postprocess.upsample_align_corners);
    c.model.validate().unwrap();
}

#[test]
fn toml_round_trip_keeps_every_value() {
    let default = SsvpConfig::default();
    let text = default.to_toml_string().unwrap();
    assert_eq!(SsvpConfig::from_toml_str(&text).unwrap(), default);

    let mut other = SsvpConfig::default();
    other.model.dino_layers = DinoLayerSet::QuarterPoints;
    other.model.local_score = LocalScore::TopKMean { k: 20 };
    other.model.tau_learnable = false;
    other.loss.class_loss = ClassLoss::BceOnSigmoid;
    other.loss.dice = false;
    other.optim.weight_decay = 0.01;
    other.postprocess.gaussian_sigma = 8.0;
    let text = other.to_toml_string().unwrap();
    assert!(text.contains("quarter_points"), "{text}");
    assert_eq!(SsvpConfig::from_toml_str(&text).unwrap(), other);
}

#[test]
fn missing_keys_take_defaults() {
    let c = SsvpConfig::from_toml_str(
        "[loss]\nkl_beta = 0.2\n[model]\ndino_layers = \"quarter_points\"\n",
    )
    .unwrap();
    let mut want = SsvpConfig::default();
    want.loss.kl_beta = 0.2;
    want.model.dino_layers = DinoLayerSet::QuarterPoints;
    assert_eq!(c, want);
    assert_eq!(
        SsvpConfig::from_toml_str("").unwrap(),
        SsvpConfig::default()
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    for (text, key) in [
        ("[model]\nclip_dimm = 5\n", "clip_dimm"),
        ("[modle]\nclip_dim = 5\n", "modle"),
        ("[optim]\nlr = 1e-3\n", "lr"),
    ] {
        let err = SsvpConfig::from_toml_str(text).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("unknown"),
            "{text:?} gave: {err}"
        );
    }
    let err = SsvpConfig::from_toml_str("[model]\ndino_layers = \"middle\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("middle"), "{err}");
}

#[test]
fn inconsistent_dimensions_are_rejected() {
    let err = SsvpConfig::from_toml_str("[model]\natf_heads = 7\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("atf_width"), "{err}");
    let err = SsvpConfig::from_toml_str("[model]\nlatent_tokens = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("latent_tokens"), "{err}");
    let err = SsvpConfig::from_toml_str("[model]\nclip_layers = [6, 12]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip_layers"), "{err}");
}
