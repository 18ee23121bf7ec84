//! Parity of the SSVP head with the independent PyTorch implementation in
//! reference/gen_ssvp_head.py: forward outputs, every loss term, the gradient of the total loss
//! w.r.t. every trainable tensor, and two AdamW steps with per-group learning rates.
//!
//! Tolerance: relative error `max|a - b| / max|b|` < 1e-4 for everything (the reference is
//! computed in float64 from the same float32 parameters; measured errors are printed with
//! `--nocapture`).

use crate::common;

use std::collections::BTreeSet;

use crate::common::{assert_close, inputs, load, t_init, tiny_config};
use ssvp_model::{HeadOutput, Mode, SsvpHead, SsvpOptimizer};

const TOL: f32 = 1e-4;

fn head() -> SsvpHead {
    let head = SsvpHead::new(&tiny_config(), &common::device()).unwrap();
    head.load(common::fixture("params.safetensors")).unwrap();
    head
}

fn check_outputs(mode: &str, out: &HeadOutput) {
    let r = load("outputs.safetensors");
    let get = |k: &str| r[&format!("{mode}.{k}")].clone();
    let mut worst = 0f32;
    let mut check = |what: &str, a: &candle_core::Tensor, b: &candle_core::Tensor| {
        worst = worst.max(assert_close(&format!("{mode} {what}"), a, b, TOL));
    };
    for l in 0..out.scale_maps.len() {
        check(
            &format!("scale map {l}"),
            &out.scale_maps[l],
            &get(&format!("scale_maps.{l}")),
        );
        check(
            &format!("local gate {l}"),
            &out.local_gates[l],
            &get(&format!("local_gates.{l}")),
        );
        check(
            &format!("V_local {l}"),
            &out.local_features[l],
            &get(&format!("local_features.{l}")),
        );
    }
    check("V_global", &out.global_feature, &get("v_global"));
    check("z", &out.vae.z, &get("z"));
    check("reconstruction", &out.vae.reconstruction, &get("recon"));
    check("T_final", &out.t_final, &get("t_final"));
    check("scale weights", &out.scale_weights, &get("weights"));
    check("fused map", &out.fused_map, &get("fused_map"));
    check("S_global", &out.score_global, &get("s_global"));
    check("S_local", &out.score_local, &get("s_local"));
    check("score", &out.score, &get("score"));
    let loss = out.loss.as_ref().expect("targets were given");
    for (name, value) in loss.named() {
        check(
            &format!("loss {name}"),
            &value.reshape(1).unwrap(),
            &get(&format!("loss.{name}")),
        );
    }
    println!("{mode}: worst relative error over outputs and loss terms {worst:e}");
}

#[test]
fn train_and_eval_forward_match_reference() {
    let cfg = tiny_config();
    let head = head();
    let x = inputs(&cfg);
    let t_init = t_init(&head, &x.encoder);
    let r = load("outputs.safetensors");
    assert_close(
        "T_init (stand-in encoder)",
        &t_init,
        &r["train.t_init"],
        TOL,
    );
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
    check_outputs("train", &train);
    let eval = head
        .forward(&x.features, &t_init, &Mode::Eval, Some(&x.targets))
        .unwrap();
    check_outputs("eval", &eval);
}

#[test]
fn gradients_of_every_trainable_tensor_match_reference() {
    let cfg = tiny_config();
    let head = head();
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
    let grads = out.loss.unwrap().total.backward().unwrap();
    let reference = load("grads.safetensors");
    let ours: BTreeSet<_> = head.named_vars().into_iter().map(|(n, _)| n).collect();
    let theirs: BTreeSet<_> = reference.keys().cloned().collect();
    assert_eq!(
        ours, theirs,
        "trainable tensors differ from the reference's"
    );
    let mut worst = (0f32, String::new());
    for (name, var) in head.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}: the graph is cut"));
        let e = assert_close(&format!("grad {name}"), g, &reference[&name], TOL);
        if e > worst.0 {
            worst = (e, name);
        }
    }
    println!(
        "{} gradients, worst relative error {:e} ({})",
        ours.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn two_adamw_steps_with_group_learning_rates_match_reference() {
    let cfg = tiny_config();
    let head = head();
    let x = inputs(&cfg);
    let steps = load("steps.safetensors");
    let meta = load("schedule.safetensors")["meta"]
        .to_vec1::<i64>()
        .unwrap();
    let (total, first) = (meta[0] as usize, meta[2] as usize);
    let mut opt = SsvpOptimizer::new(&head, &cfg.optim, total).unwrap();
    opt.set_step_index(first);
    let before: Vec<_> = head
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect();
    for k in 1..=2 {
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
        opt.backward_step(&out.loss.unwrap().total).unwrap();
        let mut worst_param = 0f32;
        let mut worst_delta = 0f32;
        for (name, start) in &before {
            let var = head
                .named_vars()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1;
            let reference = &steps[&format!("step{k}.{name}")];
            worst_param = worst_param.max(assert_close(
                &format!("step {k} {name}"),
                var.as_tensor(),
                reference,
                TOL,
            ));
            // The update itself is ~lr in size, far below 1e-4 of the parameter: compare it alone.
            let delta = (var.as_tensor() - start).unwrap();
            let ref_delta = (reference - start).unwrap();
            worst_delta = worst_delta.max(assert_close(
                &format!("step {k} update of {name}"),
                &delta,
                &ref_delta,
                2e-3,
            ));
        }
        println!("step {k}: worst relative error of parameters {worst_param:e}, of cumulative updates {worst_delta:e}");
    }
}

#[test]
fn cosine_schedule_matches_transformers() {
    let cfg = tiny_config();
    let s = load("schedule.safetensors");
    let meta = s["meta"].to_vec1::<i64>().unwrap();
    let factors = s["factors"].to_vec1::<f64>().unwrap();
    let schedule = ssvp_model::CosineSchedule::new(&cfg.optim, meta[0] as usize);
    assert_eq!(schedule.warmup_steps, meta[1] as usize);
    for (step, want) in factors.iter().enumerate() {
        let got = schedule.factor(step);
        assert!((got - want).abs() < 1e-12, "step {step}: {got} vs {want}");
    }
}
