//! Pixel metrics on one VisA-sized category: 200 maps of 518x518 (53.7M pixels) with
//! realistic blob defects, exact streaming accumulator. Prints wall times and peak resident
//! memory (VmHWM). Run: `cargo bench -p ssvp-eval --bench pixel_metrics`.
//!
//! Not a test: it checks nothing, it measures.

use std::time::Instant;

use ssvp_eval::metrics::PixelAccumulator;
use ssvp_eval::postprocess::{resize_bilinear, Grid};

const SIDE: usize = 518;
const IMAGES: usize = 200;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A probability-like map: a smooth low-frequency field (37x37 noise upsampled) plus bumps on
/// the defects, squashed by a sigmoid; half the images carry 1-3 elliptic defects.
fn sample(rng: &mut Rng, index: usize) -> (Vec<f32>, Vec<bool>) {
    let coarse = Grid::new(
        37,
        37,
        (0..37 * 37).map(|_| rng.uniform() * 2.0 - 1.0).collect(),
    )
    .unwrap();
    let field = resize_bilinear(&coarse, SIDE, SIDE, false).unwrap();
    let mut mask = vec![false; SIDE * SIDE];
    let mut bump = vec![0f32; SIDE * SIDE];
    if index % 2 == 1 {
        for _ in 0..1 + rng.next() % 3 {
            let (cy, cx) = (rng.uniform() * SIDE as f32, rng.uniform() * SIDE as f32);
            let (ry, rx) = (5.0 + rng.uniform() * 55.0, 5.0 + rng.uniform() * 55.0);
            let strength = 1.0 + rng.uniform() * 3.0;
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let d = ((y as f32 - cy) / ry).powi(2) + ((x as f32 - cx) / rx).powi(2);
                    if d <= 1.0 {
                        mask[y * SIDE + x] = true;
                    }
                    if d < 4.0 {
                        bump[y * SIDE + x] += strength * (-d).exp();
                    }
                }
            }
        }
    }
    let map = field
        .data
        .iter()
        .zip(&bump)
        .map(|(&f, &b)| 1.0 / (1.0 + (-(2.0 * f + b - 1.0)).exp()))
        .collect();
    (map, mask)
}

fn main() {
    let mut rng = Rng(2024);
    let before = vm_hwm_kib();
    let mut acc = PixelAccumulator::new();
    let (mut generate, mut push) = (0.0f64, 0.0f64);
    for i in 0..IMAGES {
        let t = Instant::now();
        let (map, mask) = sample(&mut rng, i);
        generate += t.elapsed().as_secs_f64();
        let t = Instant::now();
        acc.push(&map, &mask, SIDE, SIDE).unwrap();
        push += t.elapsed().as_secs_f64();
    }
    let counts = acc.counts();
    let stored = acc.stored_bytes();
    let t = Instant::now();
    let metrics = acc.finish();
    let finish = t.elapsed().as_secs_f64();
    let after = vm_hwm_kib();
    println!(
        "pixels {} ({} anomalous, {} regions, {} images of {SIDE}x{SIDE}), threads {}",
        counts.pixels,
        counts.anomalous_pixels,
        counts.regions,
        counts.images,
        rayon::current_num_threads()
    );
    println!(
        "stored by the accumulator: {:.1} MiB",
        stored as f64 / (1 << 20) as f64
    );
    println!("generate maps {generate:.2} s (not metric work)");
    println!("push (keys + 8-connected regions) {push:.2} s, finish (all five metrics) {finish:.2} s, total {:.2} s", push + finish);
    println!(
        "peak resident memory VmHWM: {:.1} MiB (before: {:.1} MiB)",
        after.unwrap_or(0) as f64 / 1024.0,
        before.unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "auroc {:?} ap {:?} f1_max {:?} aupro {:?} aupro_cflow {:?}",
        metrics.auroc,
        metrics.average_precision,
        metrics.f1_max,
        metrics.aupro,
        metrics.aupro_cflow
    );
}
