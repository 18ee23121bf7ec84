//! Time of the exact kNN (`ssvp_memory::knn::nearest`) at AnomalyDINO's few-shot shapes: one
//! query image of N = 1369 patches (37 x 37) against a bank of M = 21904 (16 references),
//! D = 1024, f32 unit vectors, at tile sizes 1024, the default and 4096. Median of RUNS after
//! one warm-up; ms per query image and GFLOP/s counting 2 N M D flops.
//! Counterpart: `reference/bench_knn.py` (faiss IndexFlatIP / IndexFlatL2, k = 1);
//! `reference/bench_knn.sh` runs both and prints the ratio.
//!
//! `cargo run --release -p ssvp-memory --example knn_bench [-- RUNS]`

use std::time::Instant;

use candle_core::{Device, Tensor};
use ssvp_memory::knn::{l2_normalize_rows, nearest, DEFAULT_TILE_ROWS};

const N: usize = 1369;
const M: usize = 16 * 37 * 37;
const D: usize = 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let dev = Device::Cpu;
    let keys = l2_normalize_rows(&Tensor::randn(0f32, 1.0, (M, D), &dev)?)?;
    let query = l2_normalize_rows(&Tensor::randn(0f32, 1.0, (N, D), &dev)?)?;
    let flops = 2.0 * (N * M * D) as f64;
    println!(
        "ssvp-memory knn::nearest, N={N} M={M} D={D}, {} threads, median of {runs}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut tiles = vec![1024, DEFAULT_TILE_ROWS, 4096];
    tiles.dedup();
    for tile in tiles {
        let mut times = Vec::with_capacity(runs + 1);
        for _ in 0..runs + 1 {
            let t0 = Instant::now();
            let nn = nearest(&query, &keys, tile)?;
            times.push(t0.elapsed().as_secs_f64());
            std::hint::black_box(nn);
        }
        let s = median(times[1..].to_vec());
        let default = if tile == DEFAULT_TILE_ROWS {
            " (default)"
        } else {
            ""
        };
        println!(
            "ssvp nearest tile={tile}{default}: {:.1} ms per query image, {:.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    }
    Ok(())
}
