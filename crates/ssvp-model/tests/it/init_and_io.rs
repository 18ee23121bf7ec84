//! Behaviour of a freshly initialised head (it starts as pure CLIP), checkpoint save/load of the
//! trainable tensors only, parameter groups, and clear errors on bad input.

use crate::common;

use crate::common::{inputs, plain_layer_norm, t_init, tiny_config};
use candle_core::{Device, Tensor};
use ssvp_model::vtam::top_k_mean;
use ssvp_model::{Error, Mode, ParamGroup, SsvpHead};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn default_init_passes_clip_features_through_and_keeps_gradients_alive() {
    let cfg = tiny_config();
    let head = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let x = inputs(&cfg);
    let t_init = t_init(&head, &x.encoder);
    let train = head
        .forward(
            &x.features,
            &t_init,
            &Mode::Train {
                noise: x.noise.clone(),
            },
            Some(&x.targets),
        )
        .unwrap();
    // Zero last ATF layer: V_syn = F_c exactly, per scale and globally.
    for (v, c) in train.local_features.iter().zip(&x.features.clip_local) {
        assert_eq!(max_abs_diff(v, c), 0.0);
    }
    assert_eq!(
        max_abs_diff(&train.global_feature, &x.features.clip_global),
        0.0
    );
    // α = 0: T_final = LN(T_init) whatever the latent (LN starts as weight 1, bias 0).
    let eval = head
        .forward(&x.features, &t_init, &Mode::Eval, None)
        .unwrap();
    assert_eq!(max_abs_diff(&train.t_final, &eval.t_final), 0.0);
    let expected = plain_layer_norm(&t_init, cfg.model.ln_eps);
    assert!(max_abs_diff(&train.t_final, &expected) < 1e-5);
    // Local gates start open: sigmoid(w·v + 2) with small w.
    for g in &train.local_gates {
        let min = g
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(min > 0.5, "gate {min}");
    }
    // The zero-initialised tensors still receive gradients, so training can move them.
    let grads = train.loss.unwrap().total.backward().unwrap();
    for name in [
        "vcpg.inject.alpha",
        "hsvs.scales.0.mlp.fc2.weight",
        "hsvs.global.mlp.fc2.weight",
        "vcpg.prompts.context",
    ] {
        let var = head
            .named_vars()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name} gets no gradient at init");
    }
}

/// `model.clip_adapter` starts at the identity: the untrained head's maps and scores are those
/// of the head without it, and the adapters are trainable tensors that receive gradients.
#[test]
fn clip_adapter_starts_as_the_identity_and_trains() {
    // The fixture config has the adapter on (so the parity tests cover it); compare with off.
    let mut cfg = tiny_config();
    cfg.model.clip_adapter = false;
    let mut with = cfg.clone();
    with.model.clip_adapter = true;
    let (plain, adapted) = (
        SsvpHead::new(&cfg, &Device::Cpu).unwrap(),
        SsvpHead::new(&with, &Device::Cpu).unwrap(),
    );
    let names: Vec<String> = adapted.named_vars().into_iter().map(|(n, _)| n).collect();
    for l in 0..cfg.model.num_scales() {
        for t in ["weight", "bias"] {
            assert!(names.contains(&format!("hsvs.clip_adapters.{l}.{t}")));
        }
    }
    assert_eq!(
        names.len(),
        plain.named_vars().len() + 2 * cfg.model.num_scales()
    );
    let x = inputs(&cfg);
    let t_init = t_init(&plain, &x.encoder);
    let a = plain
        .forward(&x.features, &t_init, &Mode::Eval, None)
        .unwrap();
    let b = adapted
        .forward(&x.features, &t_init, &Mode::Eval, None)
        .unwrap();
    for (u, v) in a.local_features.iter().zip(&b.local_features) {
        assert!(max_abs_diff(u, v) < 1e-6);
    }
    let train = adapted
        .forward(
            &x.features,
            &t_init,
            &Mode::Train {
                noise: x.noise.clone(),
            },
            Some(&x.targets),
        )
        .unwrap();
    let grads = train.loss.unwrap().total.backward().unwrap();
    let var = adapted
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "hsvs.clip_adapters.2.weight")
        .unwrap()
        .1;
    let g = grads.get(var.as_tensor()).expect("adapter gradient");
    assert!(
        g.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}

#[test]
fn init_is_reproducible_from_the_seed() {
    let mut cfg = tiny_config();
    let a = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let b = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    cfg.optim.seed += 1;
    let c = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let name = "hsvs.scales.1.clip_q.weight";
    let get = |h: &SsvpHead| {
        h.named_vars()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    assert_eq!(max_abs_diff(get(&a).as_tensor(), get(&b).as_tensor()), 0.0);
    assert!(max_abs_diff(get(&a).as_tensor(), get(&c).as_tensor()) > 0.0);
    // Prompt inits: N(0, .02) context, N(±0.5, .02) states.
    let mean = |n: &str| {
        let v = a.named_vars().into_iter().find(|(k, _)| k == n).unwrap().1;
        v.as_tensor()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(mean("vcpg.prompts.context").abs() < 0.01);
    assert!((mean("vcpg.prompts.normal_state") - 0.5).abs() < 0.01);
    assert!((mean("vcpg.prompts.abnormal_state") + 0.5).abs() < 0.01);
}

#[test]
fn parameter_groups_split_prompts_from_the_rest() {
    let head = SsvpHead::new(&tiny_config(), &Device::Cpu).unwrap();
    let prompts: Vec<_> = head
        .group_vars(ParamGroup::Prompts)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        prompts,
        [
            "vcpg.inject.alpha",
            "vcpg.prompts.abnormal_state",
            "vcpg.prompts.context",
            "vcpg.prompts.normal_state"
        ]
    );
    let rest = head.group_vars(ParamGroup::Rest).len();
    assert_eq!(rest + prompts.len(), head.named_vars().len());
}

#[test]
fn checkpoint_round_trip_holds_exactly_the_trainable_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    let mut cfg = tiny_config();
    let trained = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    trained.load(common::fixture("params.safetensors")).unwrap();
    trained.save(&path).unwrap();
    let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(stored.len(), trained.named_vars().len());

    cfg.optim.seed = 7;
    let fresh = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    fresh.load(&path).unwrap();
    for ((n1, v1), (n2, v2)) in trained.named_vars().into_iter().zip(fresh.named_vars()) {
        assert_eq!(n1, n2);
        assert_eq!(max_abs_diff(v1.as_tensor(), v2.as_tensor()), 0.0, "{n1}");
    }

    // A checkpoint missing a tensor, or with an extra one, is refused by name.
    let mut partial = stored.clone();
    partial.remove("vtam.log_logit_scale");
    partial.insert(
        "vtam.bogus".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&partial, &bad).unwrap();
    let err = fresh.load(&bad).unwrap_err();
    assert!(matches!(err, Error::Checkpoint(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("vtam.log_logit_scale") && msg.contains("vtam.bogus"),
        "{msg}"
    );

    let mut reshaped = stored;
    reshaped.insert(
        "vcpg.inject.alpha".into(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&reshaped, &bad).unwrap();
    let msg = fresh.load(&bad).unwrap_err().to_string();
    assert!(msg.contains("vcpg.inject.alpha"), "{msg}");
}

#[test]
fn bad_inputs_give_shape_errors() {
    let cfg = tiny_config();
    let head = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let x = inputs(&cfg);
    let t_init = t_init(&head, &x.encoder);

    let mut wrong = x.features.clone();
    wrong.grid = (2, 8 + 1);
    assert!(matches!(
        head.forward(&wrong, &t_init, &Mode::Eval, None),
        Err(Error::Shape(_))
    ));

    let mut missing = x.features.clone();
    missing.dino_local.pop();
    assert!(matches!(
        head.forward(&missing, &t_init, &Mode::Eval, None),
        Err(Error::Shape(_))
    ));

    let short_t = t_init.narrow(1, 0, 4).unwrap();
    assert!(matches!(
        head.forward(&x.features, &short_t, &Mode::Eval, None),
        Err(Error::Shape(_))
    ));

    let bad_noise = Mode::Train {
        noise: x.noise.narrow(1, 0, 3).unwrap(),
    };
    assert!(matches!(
        head.forward(&x.features, &t_init, &bad_noise, None),
        Err(Error::Shape(_))
    ));

    let mut bad_targets = x.targets.clone();
    bad_targets.labels = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        head.forward(&x.features, &t_init, &Mode::Eval, Some(&bad_targets)),
        Err(Error::Shape(_))
    ));

    // A single class's T_init [2P, D_c] is broadcast over the batch.
    let one = t_init.get(0).unwrap();
    let out = head.forward(&x.features, &one, &Mode::Eval, None).unwrap();
    assert_eq!(out.t_final.dims(), &[2, 6, cfg.model.clip_dim]);
}

#[test]
fn top_k_mean_averages_the_largest_cells() {
    let rows = [[0.1f32, 0.9, 0.3, 0.7, 0.5], [0.2, 0.0, 0.8, 0.4, 0.6]];
    let x = Tensor::new(&rows, &Device::Cpu).unwrap();
    for k in [1, 2, 5, 9] {
        let got = top_k_mean(&x, k).unwrap().to_vec1::<f32>().unwrap();
        for (row, g) in rows.iter().zip(got) {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let kk = k.min(sorted.len());
            let want = sorted[..kk].iter().sum::<f32>() / kk as f32;
            assert!((g - want).abs() < 1e-6, "k={k}: {g} vs {want}");
        }
    }
}

#[test]
fn alternative_switches_run_and_keep_gradients() {
    let mut cfg = tiny_config();
    cfg.model.local_score = ssvp_model::LocalScore::TopKMean { k: 3 };
    cfg.model.tau_learnable = false;
    cfg.model.latent_tokens = 1;
    cfg.loss.class_loss = ssvp_model::ClassLoss::BceOnSigmoid;
    cfg.loss.dice = false;
    cfg.loss.seg_on_scales = false;
    let head = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    assert!(head
        .named_vars()
        .iter()
        .all(|(n, _)| n != "vtam.log_logit_scale"));
    let x = inputs(&cfg);
    let t_init = t_init(&head, &x.encoder);
    let out = head
        .forward(
            &x.features,
            &t_init,
            &Mode::Train {
                noise: x.noise.clone(),
            },
            Some(&x.targets),
        )
        .unwrap();
    let loss = out.loss.unwrap();
    for (name, value) in loss.named() {
        let v = value.to_scalar::<f32>().unwrap();
        assert!(v.is_finite(), "{name} = {v}");
    }
    assert_eq!(loss.dice_fused.to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(loss.focal_scales.to_scalar::<f32>().unwrap(), 0.0);
    let grads = loss.total.backward().unwrap();
    for name in ["vtam.local_gates.0.weight", "vcpg.prompts.normal_state"] {
        let var = head
            .named_vars()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "{name}"
        );
    }
}
