//! Time and memory of backbone feature extraction for one image, with seeded random weights (no
//! files): `tiny`, or the paper's pair (CLIP ViT-L/14@336 at 518 px + DINOv3 ViT-L/16 at 592 px,
//! both on a 37 x 37 grid).
//!
//! ```sh
//! cargo run --release -p ssvp-model --example features_bench -- tiny
//! cargo run --release -p ssvp-model --example features_bench -- vitl [images=2] [batch=1]
//! ```

use std::time::Instant;

use candle_core::Device;
use ssvp_features::FeatureSource;
use ssvp_model::{PromptEncoding, PromptTextEncoder, SsvpConfig};

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    // As the `ssvp` binary does; SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("tiny");
    let images: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let dev = Device::Cpu;

    let dir = std::env::temp_dir().join(format!("ssvp-features-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let paths: Vec<_> = (0..batch.max(1))
        .map(|i| {
            let p = dir.join(format!("{i}.png"));
            image::RgbImage::from_fn(700, 700, |x, y| {
                image::Rgb([
                    (x % 256) as u8,
                    (y % 256) as u8,
                    ((x * y + i as u32) % 256) as u8,
                ])
            })
            .save(&p)
            .map(|_| p)
        })
        .collect::<Result<_, _>>()?;

    let t0 = Instant::now();
    let backbones = match which {
        "tiny" => {
            let cfg = SsvpConfig::tiny();
            ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &dev)?
        }
        "vitl" => {
            let cfg = SsvpConfig::default();
            ssvp_model::seeded_vitl_backbones(&cfg.backbones, &cfg.model, &dev)?
        }
        other => anyhow::bail!("unknown bench `{other}` (tiny | vitl)"),
    };
    let load = t0.elapsed();
    let id = backbones.identity();
    println!(
        "{which}: CLIP {:?} px layers {:?}, DINO {:?} px layers {:?}, grid {:?}; built in {:.2?}; \
         peak RSS {:.0} MiB",
        id.clip_size,
        id.clip_layers,
        id.dino_size,
        id.dino_layers,
        id.grid,
        load,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    let mut times = Vec::new();
    for run in 0..images.max(1) {
        let t = Instant::now();
        let f = backbones.features_batch(&paths)?;
        let dt = t.elapsed();
        times.push(dt.as_secs_f64() / paths.len() as f64);
        println!(
            "run {run}: {} image(s) in {dt:.2?} ({:.3} s/image); clip_local[0] {:?}, dino_local[0] {:?}; \
             peak RSS {:.0} MiB",
            paths.len(),
            dt.as_secs_f64() / paths.len() as f64,
            f[0].clip_local[0].dims(),
            f[0].dino_local[0].dims(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{which}: best {best:.3} s/image");

    // The prompt path of one training step: T_init of one class and its backward.
    let m = &SsvpConfig::tiny().model;
    let width = backbones.text_width();
    let tokens = candle_core::Var::from_tensor(&candle_core::Tensor::randn(
        0f32,
        0.02,
        (m.num_prompts(), m.context_len + m.state_len, width),
        &dev,
    )?)?;
    let encoder = backbones.prompt_encoder()?;
    for run in 0..3 {
        let t = Instant::now();
        let t_init = encoder.encode("printed circuit board", tokens.as_tensor())?;
        let forward = t.elapsed();
        let grads = t_init.sqr()?.sum_all()?.backward()?;
        anyhow::ensure!(grads.get(tokens.as_tensor()).is_some(), "no gradient");
        println!(
            "prompt encode run {run}: forward {forward:.2?}, forward + backward {:.2?}",
            t.elapsed()
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
