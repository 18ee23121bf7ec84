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

#[test]
fn backbones_defaults_are_the_papers_pair_on_one_grid() {
    use ssvp_model::config::PosInterp;
    let b = SsvpConfig::default().backbones;
    assert_eq!(b.clip, "openai/clip-vit-large-patch14-336");
    assert_eq!(b.dino, "facebook/dinov3-vitl16-pretrain-lvd1689m");
    assert_eq!((b.clip_size, b.dino_size), (518, 592));
    // 518 / 14 = 592 / 16 = 37.
    assert_eq!(b.grid(14, 16).unwrap(), 37);
    assert_eq!(b.dtype, "f32");
    assert_eq!(b.pos_interp, PosInterp::Bicubic);
    assert_eq!(b.dpam_from, None);
    b.validate().unwrap();
    // One target grid gives both sizes.
    let g = b.clone().with_grid(16, 14, 16);
    assert_eq!((g.clip_size, g.dino_size), (224, 256));
    // Sizes whose grids differ, or that are not patch multiples, are errors naming a fix.
    let mut bad = b.clone();
    bad.dino_size = 512;
    let err = bad.grid(14, 16).unwrap_err().to_string();
    assert!(
        err.contains("must match") && err.contains("dino_size = 592"),
        "{err}"
    );
    let err = b.grid(14, 14).unwrap_err().to_string();
    assert!(err.contains("not a multiple"), "{err}");
}

#[test]
fn backbones_section_parses_validates_and_round_trips() {
    use ssvp_model::config::PosInterp;
    let c = SsvpConfig::from_toml_str(
        "[backbones]\nclip = \"/models/clip\"\ndtype = \"bf16\"\npos_interp = \"bilinear\"\n\
         dpam_from = 20\n",
    )
    .unwrap();
    assert_eq!(c.backbones.clip, "/models/clip");
    assert_eq!(c.backbones.dino_size, 592);
    assert_eq!(c.backbones.pos_interp, PosInterp::Bilinear);
    assert_eq!(c.backbones.dpam_from, Some(20));
    assert_eq!(
        SsvpConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap(),
        c
    );
    for (text, needle) in [
        ("[backbones]\ndtype = \"f64\"\n", "f64"),
        ("[backbones]\nclip_size = 0\n", "positive"),
        ("[backbones]\ndpam_from = 0\n", "1-based"),
        ("[backbones]\nclip = \"\"\n", "must name weights"),
        ("[backbones]\npos_interp = \"nearest\"\n", "nearest"),
        ("[backbones]\nclip_sise = 3\n", "clip_sise"),
    ] {
        let err = SsvpConfig::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?} gave: {err}");
    }
}

#[test]
fn layer_sets_resolve_against_the_backbone_depths() {
    let m = SsvpConfig::default().model;
    assert_eq!(
        m.backbone_layers(24, 24).unwrap(),
        (vec![6, 12, 18, 24], vec![4, 7, 10, 12])
    );
    let mut q = m.clone();
    q.dino_layers = DinoLayerSet::QuarterPoints;
    assert_eq!(q.backbone_layers(24, 24).unwrap().1, vec![6, 12, 18, 24]);
    assert_eq!(q.backbone_layers(24, 12).unwrap().1, vec![3, 6, 9, 12]);
    assert_eq!(
        DinoLayerSet::QuarterPoints.resolve(4).unwrap(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        DinoLayerSet::QuarterPoints.resolve(6).unwrap(),
        vec![2, 3, 5, 6]
    );
    // Fewer than 4 blocks tap some twice; none at all is an error.
    assert_eq!(
        DinoLayerSet::QuarterPoints.resolve(3).unwrap(),
        vec![1, 2, 3, 3]
    );
    assert!(DinoLayerSet::QuarterPoints.resolve(0).is_err());
    // The literal set names blocks 4..12: too deep for a 10-block model.
    let err = m.backbone_layers(24, 10).unwrap_err().to_string();
    assert!(
        err.contains("dino layer 12") && err.contains("1..=10"),
        "{err}"
    );
    // The paper's CLIP set on a 12-block CLIP suggests that depth's quarter points.
    let err = m.backbone_layers(12, 24).unwrap_err().to_string();
    assert!(
        err.contains("clip layer 18") && err.contains("[3, 6, 9, 12]"),
        "{err}"
    );
    let mut zero = m.clone();
    zero.clip_layers = vec![0, 6, 12, 24];
    assert!(zero.backbone_layers(24, 24).is_err());
}

#[test]
fn tiny_setting_is_consistent() {
    let t = SsvpConfig::tiny();
    t.validate().unwrap();
    assert_eq!(t.backbones.clip, "tiny");
    assert_eq!(t.backbones.grid(14, 16).unwrap(), 8);
    assert_eq!(
        t.model.backbone_layers(4, 4).unwrap(),
        (vec![1, 2, 3, 4], vec![1, 2, 3, 4])
    );
    assert_eq!(
        (t.model.clip_dim, t.model.dino_dim, t.model.text_width),
        (64, 64, 64)
    );
    assert_eq!(
        SsvpConfig::from_toml_str(&t.to_toml_string().unwrap()).unwrap(),
        t
    );
}
