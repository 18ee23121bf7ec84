//! Times one forward + backward of the head at the paper's sizes (ViT-L: N = 37x37, D_c = 768,
//! D_d = 1024) on random features. `cargo run --release -p ssvp-model --example head_cost -- [batch]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_model::{HeadFeatures, Mode, SsvpConfig, SsvpHead, Targets};

fn main() -> ssvp_model::Result<()> {
    // As the `ssvp` binary does; SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dev = Device::Cpu;
    let cfg = SsvpConfig::default();
    let m = &cfg.model;
    let head = SsvpHead::new(&cfg, &dev)?;
    let n = 37 * 37;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &dev);
    let features = HeadFeatures {
        clip_local: (0..4)
            .map(|_| randn(&[batch, n, m.clip_dim]))
            .collect::<candle_core::Result<_>>()?,
        dino_local: (0..4)
            .map(|_| randn(&[batch, n, m.dino_dim]))
            .collect::<candle_core::Result<_>>()?,
        clip_global: randn(&[batch, m.clip_dim])?,
        dino_global: randn(&[batch, m.dino_dim])?,
        grid: (37, 37),
    };
    let t_init = randn(&[m.num_prompts(), m.clip_dim])?;
    let targets = Targets {
        masks: Tensor::zeros((batch, 518, 518), DType::F32, &dev)?,
        labels: Tensor::zeros(batch, DType::F32, &dev)?,
    };
    let noise = randn(&[batch, m.vae_latent])?;
    println!(
        "{} trainable tensors, {} values",
        head.named_vars().len(),
        head.named_vars()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>()
    );
    for _ in 0..2 {
        let t0 = Instant::now();
        let out = head.forward(
            &features,
            &t_init,
            &Mode::Train {
                noise: noise.clone(),
            },
            Some(&targets),
        )?;
        let total = out.loss.expect("targets").total;
        let t1 = Instant::now();
        let _grads = total.backward()?;
        let t2 = Instant::now();
        println!(
            "batch {batch}: forward+loss {:.2} s, backward {:.2} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    Ok(())
}
