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

/// The work counts, worked out by hand for the tiny towers above (two FLOPs per multiply-add).
#[test]
fn flop_counts_cover_the_blocks_that_run() {
    // CLIP: width 64, MLP 128, patch 14, a 5 x 6 grid: 30 patches + CLS = 31 tokens, joint
    // width 32. Patch embedding 2·30·(3·14·14)·64 = 2 257 920. A block
    // 2·31·(4·64² + 2·64·128) + 4·31²·64 = 2 277 632. Projecting a block's tokens 2·31·64·32
    // = 126 976; the global embedding 2·64·32 = 4 096.
    let tower =
        ClipVisionTransformer::load(var_builder(1, Vec::new()), &clip_config(), Some(32)).unwrap();
    let opts = VisionOptions {
        layers: vec![2, 4],
        ..Default::default()
    };
    let early = 2_257_920.0 + 4.0 * 2_277_632.0 + 2.0 * 126_976.0;
    assert_eq!(tower.flops((5, 6), &opts, false), early);
    let whole = 2_257_920.0 + 6.0 * 2_277_632.0 + 2.0 * 126_976.0 + 4_096.0;
    assert_eq!(tower.flops((5, 6), &opts, true), whole);
    // Dual-path blocks 2..=4 add a second attention and output projection:
    // 2·31·64² + 4·31²·64 = 499 968 each.
    let dual = VisionOptions {
        dpam_from: Some(2),
        ..opts
    };
    assert_eq!(tower.flops((5, 6), &dual, false), early + 3.0 * 499_968.0);

    // DINOv3: width 64, MLP 128, patch 16, a 3 x 4 grid: 12 patches + CLS + 4 registers = 17
    // tokens. Patch embedding 2·12·(3·16·16)·64 = 1 179 648; a block
    // 2·17·(4·64² + 2·64·128) + 4·17²·64 = 1 188 096.
    let model = Dinov3Model::new(&dino_config(), var_builder(1, Vec::new())).unwrap();
    assert_eq!(model.flops((3, 4), 4), 1_179_648.0 + 4.0 * 1_188_096.0);
    assert_eq!(model.flops((3, 4), 99), 1_179_648.0 + 6.0 * 1_188_096.0);
}
