//! CLIP ViT-L/14-336 vision tower with random weights at 518x518 px (37x37 patches, positional
//! table resampled bicubically from 24x24): time per image and peak memory. The PyTorch
//! counterpart is reference/bench_clip_vitl.py.
//!
//! ```sh
//! cargo run --release -p ssvp-backbones --example clip_vitl_bench [-- SIZE RUNS DPAM_FROM]
//! ```
//! Prints the median of RUNS (default 3) forwards after one warm-up, and VmHWM.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::{ClipConfig, ClipVisionTransformer, PosInterp, VisionOptions};
use ssvp_backbones::weights::seeded_var_builder;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    // As the `ssvp` binary does; SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(518);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let dpam_from: Option<usize> = args.get(3).map(|s| s.parse()).transpose()?;
    let device = Device::Cpu;
    let config = ClipConfig::preset("ViT-L-14-336")?;
    let vision_cfg = config.vision.as_ref().expect("preset has a vision tower");
    let vb = seeded_var_builder(0, DType::F32, &device);
    let model = ClipVisionTransformer::load(vb, vision_cfg, Some(config.projection_dim))?;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, size, size), &device)?;
    let opts = VisionOptions {
        layers: vec![6, 12, 18, 24],
        dpam_from,
        pos_interp: PosInterp::Bicubic,
    };

    let mut times = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let out = model.forward(&pixels, &opts)?;
        // Force the lazy results (candle CPU ops are eager; this just reads them).
        let _ = out.image_embed.sum_all()?.to_scalar::<f32>()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if run == 0 {
            eprintln!(
                "warm-up: {ms:.0} ms, grid {}x{}, patch.24 {:?}",
                out.grid.0,
                out.grid.1,
                out.patch[3].dims()
            );
        } else {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "candle CLIP ViT-L/14-336 vision, {size}x{size}, dpam_from {dpam_from:?}: median {median:.0} ms \
         of {runs} runs ({times:.0?}); VmHWM {} MiB",
        vm_hwm_kib().unwrap_or(0) / 1024
    );
    Ok(())
}
