//! Fixture loading and comparison helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use ssvp_model::{HeadFeatures, PromptTextEncoder, SsvpConfig, Targets};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ssvp_head")
        .join(name)
}

/// Where the parity runs: `SSVP_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default cpu), so that the
/// GPU check (`deploy/gpu/check.sh`) runs the same tests against the same references.
pub fn device() -> Device {
    std::env::var("SSVP_TEST_DEVICE")
        .map(|d| ssvp_backbones::runtime::parse_device(&d).expect("SSVP_TEST_DEVICE"))
        .unwrap_or(Device::Cpu)
}

pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &device()).expect("fixture readable")
}

pub fn tiny_config() -> SsvpConfig {
    let text = std::fs::read_to_string(fixture("config.toml")).expect("config fixture");
    SsvpConfig::from_toml_str(&text).expect("fixture config parses")
}

/// `max|a - b| / max|b|`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(
        scale > 0.0,
        "reference is all zeros: the comparison would prove nothing"
    );
    diff / scale
}

pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) -> f32 {
    let e = rel_err(a, b);
    assert!(e < tol, "{what}: relative error {e:e} >= {tol:e}");
    e
}

pub struct Inputs {
    pub features: HeadFeatures,
    pub noise: Tensor,
    pub targets: Targets,
    pub encoder: StandInEncoder,
}

pub fn inputs(cfg: &SsvpConfig) -> Inputs {
    let t = load("inputs.safetensors");
    let scales = cfg.model.num_scales();
    let features = HeadFeatures {
        clip_local: (0..scales)
            .map(|l| t[&format!("clip_local.{l}")].clone())
            .collect(),
        dino_local: (0..scales)
            .map(|l| t[&format!("dino_local.{l}")].clone())
            .collect(),
        clip_global: t["clip_global"].clone(),
        dino_global: t["dino_global"].clone(),
        grid: (4, 4),
    };
    let class_bias = &t["class_bias"];
    let encoder = StandInEncoder {
        w: t["text_w"].clone(),
        class_bias: ["first", "second"]
            .iter()
            .enumerate()
            .map(|(i, name)| (name.to_string(), class_bias.get(i).unwrap()))
            .collect(),
    };
    Inputs {
        features,
        noise: t["noise"].clone(),
        targets: Targets {
            masks: t["masks"].clone(),
            labels: t["labels"].clone(),
        },
        encoder,
    }
}

/// The differentiable stand-in for the CLIP text tower used by the generator:
/// `tanh(mean over tokens @ W + class bias)`.
pub struct StandInEncoder {
    pub w: Tensor,
    pub class_bias: HashMap<String, Tensor>,
}

impl PromptTextEncoder for StandInEncoder {
    fn encode(&self, class_name: &str, prompt_tokens: &Tensor) -> ssvp_model::Result<Tensor> {
        let bias = self
            .class_bias
            .get(class_name)
            .ok_or_else(|| ssvp_model::Error::Config(format!("unknown class {class_name}")))?;
        let pooled = prompt_tokens.mean(1)?;
        Ok(pooled.matmul(&self.w)?.broadcast_add(bias)?.tanh()?)
    }
}

/// `T_init [B, 2P, D_c]` for the fixture batch (image 0 of class "first", image 1 of "second").
pub fn t_init(head: &ssvp_model::SsvpHead, enc: &StandInEncoder) -> Tensor {
    let rows: Vec<Tensor> = ["first", "second"]
        .iter()
        .map(|c| head.encode_prompts(enc, c).unwrap())
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

/// LayerNorm without affine over the last dimension, for expectations.
pub fn plain_layer_norm(x: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let c = x.broadcast_sub(&mean).unwrap();
    let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    c.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
}
