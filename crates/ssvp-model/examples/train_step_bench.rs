//! Time of one training step of the head at ViT-L sizes on cached (here: random) features:
//! batch 8, 37 x 37 grid, 4 scales of CLIP 768 + DINO 1024, masks 518 x 518, T_init per image
//! given (the text tower under the prompts is not included), forward + backward + Adam update.
//! Prints the median step time and the peak resident memory (VmHWM).
//!
//! `cargo run --release -p ssvp-model --example train_step_bench [-- STEPS [MASK [BATCH]]]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_model::train::{step_noise, TrainOptimizer};
use ssvp_model::{HeadFeatures, Mode, SsvpConfig, SsvpHead, Targets};

fn vm_hwm_mib() -> f64 {
    ssvp_backbones::runtime::peak_resident_mib().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    // As the `ssvp` binary does (see its doc); SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let mask: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(518);
    let cfg = SsvpConfig::default();
    let dev = Device::Cpu;
    let b: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let (n, g) = (37 * 37, 37usize);
    let head = SsvpHead::new(&cfg, &dev)?;
    let mut opt = TrainOptimizer::new(&head, &cfg.optim, 1000)?;
    let m = &cfg.model;
    let rand = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev);
    let feats = HeadFeatures {
        clip_local: (0..4)
            .map(|_| rand(&[b, n, m.clip_dim]))
            .collect::<candle_core::Result<_>>()?,
        dino_local: (0..4)
            .map(|_| rand(&[b, n, m.dino_dim]))
            .collect::<candle_core::Result<_>>()?,
        clip_global: rand(&[b, m.clip_dim])?,
        dino_global: rand(&[b, m.dino_dim])?,
        grid: (g, g),
    };
    let t_init = rand(&[b, m.num_prompts(), m.clip_dim])?;
    let masks = (rand(&[b, mask, mask])?.gt(2.0)?).to_dtype(DType::F32)?;
    let labels = Tensor::from_vec((0..b).map(|i| (i % 2) as f32).collect(), b, &dev)?;
    let targets = Targets { masks, labels };
    let mut times = Vec::new();
    for step in 0..steps {
        let t0 = Instant::now();
        let noise = step_noise(1, step, b, m.vae_latent, &dev)?;
        let out = head.forward(&feats, &t_init, &Mode::Train { noise }, Some(&targets))?;
        let grads = out.loss.expect("targets given").total.backward()?;
        opt.step(&grads)?;
        let dt = t0.elapsed().as_secs_f64();
        times.push(dt);
        eprintln!("step {step}: {dt:.3} s");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "head train step (batch {b}, ViT-L sizes, masks {mask}): median {:.3} s over {steps}; VmHWM {:.0} MiB",
        times[times.len() / 2],
        vm_hwm_mib()
    );
    Ok(())
}
