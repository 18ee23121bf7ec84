//! The towers stopped after their deepest requested block (`forward_layers`,
//! `forward_blocks`) give the states of the whole forward bit for bit, and really skip the
//! blocks past it: a model whose later blocks hold NaN weights still gives finite states.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use ssvp_backbones::clip::{
    Activation as ClipActivation, ClipVisionConfig, ClipVisionTransformer, PosInterp, VisionOptions,
};
use ssvp_backbones::dinov3::{Activation as DinoActivation, Dinov3Config, Dinov3Model};
use ssvp_backbones::weights::seeded_var_builder;

const DEPTH: usize = 6;
const SEEDS: [u64; 3] = [3, 1009, 77_777];

/// Seeded weights, with every tensor whose name contains one of `poisoned` turned to NaN.
struct Poisoned {
    inner: VarBuilder<'static>,
    poisoned: Vec<String>,
}

impl SimpleBackend for Poisoned {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name)?.to_dtype(dtype)?.to_device(dev)?;
        if self.poisoned.iter().any(|p| name.contains(p.as_str())) {
            return t.affine(0.0, f64::NAN);
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape needed")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn var_builder(seed: u64, poisoned: Vec<String>) -> VarBuilder<'static> {
    let inner = seeded_var_builder(seed, DType::F32, &Device::Cpu);
    VarBuilder::from_backend(
        Box::new(Poisoned { inner, poisoned }),
        DType::F32,
        Device::Cpu,
    )
}

fn pixels(seed: u64, h: usize, w: usize) -> Tensor {
    let mut rng = ssvp_util::rng::SplitMix64::new(seed);
    let v: Vec<f32> = (0..2 * 3 * h * w)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn all_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

fn dino_config() -> Dinov3Config {
    Dinov3Config {
        hidden_size: 64,
        num_hidden_layers: DEPTH,
        num_attention_heads: 4,
        intermediate_size: 128,
        patch_size: 16,
        num_channels: 3,
        num_register_tokens: 4,
        layer_norm_eps: 1e-5,
        rope_theta: 100.0,
        use_gated_mlp: false,
        hidden_act: DinoActivation::GeluErf,
        query_bias: true,
        key_bias: false,
        value_bias: true,
        proj_bias: true,
        mlp_bias: true,
    }
}

fn clip_config() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: DEPTH,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 56,
        patch_size: 14,
        hidden_act: ClipActivation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

#[test]
fn dinov3_stopped_early_gives_the_whole_forwards_states_bit_for_bit() {
    let requests: [&[usize]; 4] = [&[2, 4], &[4, 1, 3], &[0], &[6, 2]];
    for seed in SEEDS {
        let model = Dinov3Model::new(&dino_config(), var_builder(seed, Vec::new())).unwrap();
        let x = pixels(seed, 48, 64);
        for blocks in requests {
            for norm in [true, false] {
                let whole = model.forward(&x, blocks, norm).unwrap();
                let (early, grid) = model.forward_blocks(&x, blocks, norm).unwrap();
                assert_eq!(grid, whole.grid);
                assert_eq!(early.len(), whole.hidden.len());
                for ((b1, t1), (b2, t2)) in early.iter().zip(&whole.hidden) {
                    assert_eq!(b1, b2, "request order");
                    assert_eq!(bits(t1), bits(t2), "seed {seed} block {b1} norm {norm}");
                }
            }
        }
    }
}

#[test]
fn dinov3_stopped_early_never_runs_the_later_blocks() {
    // Blocks 5 and 6 (`layer.4`, `layer.5`) hold NaN weights.
    let poisoned = vec!["layer.4.".to_string(), "layer.5.".to_string()];
    let model = Dinov3Model::new(&dino_config(), var_builder(5, poisoned)).unwrap();
    let x = pixels(5, 32, 32);
    let (early, _) = model.forward_blocks(&x, &[2, 4], true).unwrap();
    assert!(early.iter().all(|(_, t)| all_finite(t)));
    let whole = model.forward(&x, &[2, 4], true).unwrap();
    assert!(
        !all_finite(&whole.cls),
        "the whole forward reads the poisoned blocks"
    );
}

#[test]
fn clip_stopped_early_gives_the_whole_forwards_states_bit_for_bit() {
    let requests: [&[usize]; 3] = [&[2, 4], &[3, 1], &[6, 3]];
    for seed in SEEDS {
        let tower =
            ClipVisionTransformer::load(var_builder(seed, Vec::new()), &clip_config(), Some(32))
                .unwrap();
        let x = pixels(seed, 70, 84);
        for layers in requests {
            for dpam_from in [None, Some(2)] {
                let opts = VisionOptions {
                    layers: layers.to_vec(),
                    dpam_from,
                    pos_interp: PosInterp::Bicubic,
                };
                let whole = tower.forward(&x, &opts).unwrap();
                let early = tower.forward_layers(&x, &opts).unwrap();
                assert_eq!(early.grid, whole.grid);
                for (a, b) in early.hidden.iter().zip(&whole.hidden) {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "seed {seed} {layers:?} dpam {dpam_from:?}"
                    );
                }
                for (a, b) in early.patch.iter().zip(&whole.patch) {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "seed {seed} {layers:?} dpam {dpam_from:?}"
                    );
                }
                assert_eq!(early.hidden.len(), layers.len());
            }
        }
    }
}

#[test]
fn clip_stopped_early_never_runs_the_later_blocks() {
    let poisoned = vec![
        "encoder.layers.4.".to_string(),
        "encoder.layers.5.".to_string(),
    ];
    let tower =
        ClipVisionTransformer::load(var_builder(8, poisoned), &clip_config(), Some(32)).unwrap();
    let x = pixels(8, 56, 56);
    let opts = VisionOptions {
        layers: vec![1, 4],
        ..Default::default()
    };
    let early = tower.forward_layers(&x, &opts).unwrap();
    assert!(early.patch.iter().all(all_finite));
    let whole = tower.forward(&x, &opts).unwrap();
    assert!(!all_finite(&whole.image_embed));
}
