//! Time of the fused attention (`ssvp_backbones::nn::attention`) at the SSVP head's shapes:
//! `[B, 8, 1369, 96]` q, k, v (one ATF direction at 37 x 37 tokens), forward alone and
//! forward + backward. Counterpart: `reference/bench_attention.py` (torch SDPA).
//!
//! `cargo run --release -p ssvp-backbones --example attention_bench [-- RUNS [BATCH]]`

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use ssvp_backbones::nn::{attention, Grad};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // As the `ssvp` binary does; SSVP_DEFAULT_MALLOC=1 measures without it.
    if std::env::var_os("SSVP_DEFAULT_MALLOC").is_none() {
        ssvp_backbones::runtime::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let b: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let dev = Device::Cpu;
    let shape = (b, 8, 1369, 96);
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
    let w = Tensor::randn(0f32, 1.0, shape, &dev)?;
    let (mut fwd, mut both) = (Vec::new(), Vec::new());
    for _ in 0..runs + 1 {
        let t0 = Instant::now();
        let out = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            None,
            Grad::Frozen,
        )?;
        fwd.push(t0.elapsed().as_secs_f64());
        drop(out);
        let t0 = Instant::now();
        let out = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            None,
            Grad::Tracked,
        )?;
        let grads = (out * &w)?.sum_all()?.backward()?;
        both.push(t0.elapsed().as_secs_f64());
        drop(grads);
    }
    // The first run warms the allocator and the thread pool.
    fwd.remove(0);
    both.remove(0);
    println!(
        "attention [{b}, 8, 1369, 96]: forward {:.3} s, forward + backward {:.3} s (median of {runs})",
        median(fwd),
        median(both)
    );
    Ok(())
}
