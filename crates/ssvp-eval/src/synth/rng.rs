//! Platform-independent randomness and maths for the synthetic benchmark.
//!
//! Only IEEE-754 basic operations (+, −, ×, ÷, floor) are used, which Rust evaluates identically
//! everywhere (no fused multiply-add, no x87), so the same seed gives the same pixels on every
//! platform. `sin`/`cos` of the platform libm may differ in the last bit between systems; ours
//! are a fixed polynomial.

/// SplitMix64 ([`ssvp_util::rng`]) with this benchmark's mappings to floats and integers.
#[derive(Debug, Clone)]
pub struct SplitMix64(ssvp_util::rng::SplitMix64);

impl SplitMix64 {
    /// The generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(ssvp_util::rng::SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n
    }

    /// A fair coin flip.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

pub use ssvp_util::rng::mix64;

/// FNV-1a of a name, to derive per-kind seeds that do not depend on list order.
pub fn hash_name(name: &str) -> u64 {
    ssvp_util::rng::fnv1a(name.as_bytes())
}

/// π, re-exported so that the drawing code reads `rng::PI` next to `rng::sin`.
pub const PI: f64 = std::f64::consts::PI;
const TAU: f64 = 2.0 * PI;
const HALF_PI: f64 = 0.5 * PI;

/// sin with a fixed Taylor polynomial after range reduction (abs. error below 1e-11).
pub fn sin(x: f64) -> f64 {
    let k = (x / TAU + 0.5).floor();
    let mut r = x - k * TAU; // [-pi, pi)
    if r > HALF_PI {
        r = PI - r;
    } else if r < -HALF_PI {
        r = -PI - r;
    }
    let r2 = r * r;
    // Horner form of r - r^3/3! + r^5/5! - … + r^17/17!
    let mut acc = 1.0;
    for n in (1..=8).rev() {
        let d = ((2 * n) * (2 * n + 1)) as f64;
        acc = 1.0 - r2 / d * acc;
    }
    r * acc
}

/// cos through [`sin`] (`sin(x + π/2)`), with the same platform-independent result.
pub fn cos(x: f64) -> f64 {
    sin(x + HALF_PI)
}

fn lattice(ix: i64, iy: i64, seed: u64) -> f64 {
    let h = mix64(
        seed ^ mix64(
            (ix as u64).wrapping_mul(0x9E37_79B9) ^ (iy as u64).wrapping_mul(0x85EB_CA6B) << 1,
        ),
    );
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn smooth(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

/// Smooth value noise in [0, 1) with unit lattice spacing.
pub fn value_noise(x: f64, y: f64, seed: u64) -> f64 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy) = (fx as i64, fy as i64);
    let (tx, ty) = (smooth(x - fx), smooth(y - fy));
    let a = lattice(ix, iy, seed);
    let b = lattice(ix + 1, iy, seed);
    let c = lattice(ix, iy + 1, seed);
    let d = lattice(ix + 1, iy + 1, seed);
    let top = a + (b - a) * tx;
    let bottom = c + (d - c) * tx;
    top + (bottom - top) * ty
}

/// Fractal sum of `octaves` value-noise layers, normalised to [0, 1).
pub fn fbm(x: f64, y: f64, octaves: u32, seed: u64) -> f64 {
    let (mut sum, mut amp, mut norm, mut freq) = (0.0, 1.0, 0.0, 1.0);
    for o in 0..octaves {
        sum += amp
            * value_noise(
                x * freq,
                y * freq,
                seed.wrapping_add(o as u64 * 0x1234_5678_9ABC),
            );
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

/// Per-pixel white noise in [0, 1).
pub fn pixel_noise(x: u32, y: u32, seed: u64) -> f64 {
    lattice(x as i64, y as i64, seed ^ 0xA5A5_5A5A_DEAD_BEEF)
}
