//! The streaming two-level-key path equals a plain full sort on a few million pixels with heavy
//! ties, mixed histogram bins, signed zeros and many regions. Tolerance 1e-12 (both paths are
//! exact; only summation order differs).

use ssvp_eval::metrics::{PixelAccumulator, PixelMetrics};

/// SplitMix64: a tiny deterministic generator (no dev-dependency needed).
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

fn close(
    a: &Result<f64, ssvp_eval::metrics::Undefined>,
    b: &Result<f64, ssvp_eval::metrics::Undefined>,
    what: &str,
) {
    match (a, b) {
        (Ok(x), Ok(y)) => assert!((x - y).abs() < 1e-12, "{what}: streaming {x} vs sorted {y}"),
        _ => assert_eq!(a, b, "{what}"),
    }
}

fn compare(a: &PixelMetrics, b: &PixelMetrics) {
    close(&a.auroc, &b.auroc, "auroc");
    close(&a.average_precision, &b.average_precision, "ap");
    close(&a.f1_max, &b.f1_max, "f1_max");
    close(&a.aupro, &b.aupro, "aupro");
    close(&a.aupro_cflow, &b.aupro_cflow, "aupro_cflow");
    assert_eq!(a.counts, b.counts);
}

#[test]
fn streaming_equals_sorted_on_millions_of_tied_pixels() {
    let (w, h, images) = (256usize, 256usize, 48usize); // 3.1M pixels
    let mut rng = Rng(7);
    let mut streaming = PixelAccumulator::new();
    let mut sorted = PixelAccumulator::new();
    for i in 0..images {
        // Rectangular defects, several per anomalous image; every third image is normal.
        let mut mask = vec![false; w * h];
        if i % 3 != 0 {
            for _ in 0..1 + rng.next() % 4 {
                let (y0, x0) = (
                    (rng.next() % h as u64) as usize,
                    (rng.next() % w as u64) as usize,
                );
                let (dy, dx) = (
                    1 + (rng.next() % 30) as usize,
                    1 + (rng.next() % 30) as usize,
                );
                for y in y0..(y0 + dy).min(h) {
                    for x in x0..(x0 + dx).min(w) {
                        mask[y * w + x] = true;
                    }
                }
            }
        }
        let map: Vec<f32> = mask
            .iter()
            .map(|&m| {
                let u = rng.uniform() + if m { 0.35 } else { 0.0 };
                match rng.next() % 4 {
                    // Coarse quantisation: massive ties inside mixed high-16-bit bins.
                    0 => (u * 64.0).floor() / 64.0,
                    // Half precision-like rounding of the mantissa.
                    1 => f32::from_bits(u.to_bits() & 0xFFFF_E000),
                    // Signed zeros must tie.
                    2 if u < 0.05 => {
                        if rng.next().is_multiple_of(2) {
                            -0.0
                        } else {
                            0.0
                        }
                    }
                    _ => u,
                }
            })
            .collect();
        streaming.push(&map, &mask, w, h).unwrap();
        sorted.push(&map, &mask, w, h).unwrap();
    }
    let bytes = streaming.stored_bytes();
    let pixels = streaming.counts().pixels as usize;
    assert!(
        bytes < pixels * 5,
        "{bytes} bytes stored for {pixels} pixels"
    );
    compare(&streaming.finish(), &sorted.finish_sorted());
}
