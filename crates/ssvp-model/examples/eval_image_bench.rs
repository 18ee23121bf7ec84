//! Time and memory per evaluated image at the paper's sizes, with seeded random weights (no files):
//! CLIP ViT-L/14@336 at 518 px + DINOv3 ViT-L/16 at 592 px (both a 37 x 37 grid) on random
//! preprocessed pixels, the head's eval forward (default config, T_init given), bilinear
//! upsampling of the fused map to 518 and Gaussian smoothing (σ = 4) as `evaluate` does.
//! Prints the median of RUNS images after one warm-up, split into backbones / head + post, and
//! the peak resident memory (VmHWM). PyTorch counterpart: `reference/bench_ssvp.py eval`.
//!
//! `cargo run --release -p ssvp-model --example eval_image_bench [-- RUNS]`

use std::time::Instant;

use candle_core::{Device, Tensor};
use ssvp_eval::postprocess::postprocess_map;
use ssvp_model::{stack_features, Mode, SsvpConfig, SsvpHead};

/// The field's evaluation grid (`ssvp eval`'s default `--eval-size`).
const DEFAULT_EVAL_SIZE: usize = 518;

fn vm_hwm_mib() -> f64 {
    ssvp_backbones::runtime::peak_resident_mib().unwrap_or(f64::NAN)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // As the `ssvp` binary does; SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let dev = Device::Cpu;
    let cfg = SsvpConfig::default();
    let backbones = ssvp_model::seeded_vitl_backbones(&cfg.backbones, &cfg.model, &dev)?;
    let head = SsvpHead::new(&cfg, &dev)?;
    let m = &cfg.model;
    // T_init of the image's category, as `evaluate` computes once per category (not timed).
    let t_init = Tensor::randn(0f32, 1.0, (1, m.num_prompts(), m.clip_dim), &dev)?;
    let (cs, ds) = (cfg.backbones.clip_size, cfg.backbones.dino_size);

    let (mut totals, mut towers, mut heads) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let clip_px = Tensor::randn(0f32, 1.0, (1, 3, cs, cs), &dev)?;
        let dino_px = Tensor::randn(0f32, 1.0, (1, 3, ds, ds), &dev)?;
        let t0 = Instant::now();
        let features = stack_features(&backbones.features_from_pixels(&clip_px, &dino_px)?)?;
        let t1 = Instant::now();
        let out = head.forward(&features, &t_init, &Mode::Eval, None)?;
        let map: Vec<f32> = out.fused_map.get(0)?.flatten_all()?.to_vec1()?;
        let score = out.score.to_vec1::<f32>()?[0];
        let smooth = postprocess_map(&map, features.grid, DEFAULT_EVAL_SIZE, &cfg.postprocess)?;
        let t2 = Instant::now();
        anyhow::ensure!(
            smooth.width == DEFAULT_EVAL_SIZE && score.is_finite(),
            "unexpected output"
        );
        let (tower, rest) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
        eprintln!(
            "run {run}{}: {:.2} s (backbones {tower:.2}, head + post {rest:.3})",
            if run == 0 { " (warm-up)" } else { "" },
            tower + rest
        );
        if run > 0 {
            totals.push(tower + rest);
            towers.push(tower);
            heads.push(rest);
        }
    }
    println!(
        "rust eval per image (CLIP ViT-L/14-336 @{cs} + DINOv3 ViT-L/16 @{ds} + head + post): median {:.2} s \
         over {runs} (backbones {:.2}, head + post {:.3}); VmHWM {:.0} MiB; load {}",
        median(totals),
        median(towers),
        median(heads),
        vm_hwm_mib(),
        load_avg()
    );
    Ok(())
}
