//! DINOv3 ViT-L/16 with random weights at 592x592 px (37x37 patches): time per image and peak
//! memory. The PyTorch counterpart is reference/bench_dinov3_vitl.py.
//!
//! ```sh
//! cargo run -p ssvp-backbones --example dinov3_vitl_bench [-- SIZE RUNS]
//! ```
//! Prints the median of RUNS (default 3) forwards after one warm-up, and VmHWM.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov3::{Dinov3Config, Dinov3Model};
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
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(592);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let device = Device::Cpu;
    let config = Dinov3Config::vitl16();
    let vb = seeded_var_builder(0, DType::F32, &device);
    let model = Dinov3Model::new(&config, vb)?;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, size, size), &device)?;
    let blocks = [6, 12, 18, 24];

    let mut times = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let out = model.forward(&pixels, &blocks, true)?;
        // Force the results (candle is eager, but read one value to be explicit).
        let _ = out.patch.sum_all()?.to_scalar::<f32>()?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "run {run}{}: {secs:.2} s",
            if run == 0 { " (warm-up)" } else { "" }
        );
        if run > 0 {
            times.push(secs);
        }
        if run == runs {
            println!("patch {:?}, grid {:?}", out.patch.dims(), out.grid);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "dinov3_vitl16 {size}x{size} candle f32 CPU: median {:.2} s/image over {runs} runs; VmHWM {} MiB; rayon threads {}",
        times[times.len() / 2],
        vm_hwm_kib().unwrap_or(0) / 1024,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
