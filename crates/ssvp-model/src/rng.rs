//! The seeded generator of everything random in training.
//!
//! Every draw comes from a generator seeded by `(seed, stream, index)` (a stream per kind of
//! draw, the index a step or an epoch), so a resumed run replays exactly what an uninterrupted
//! one would have done.

/// SplitMix64 and Box-Muller: the seeded generator of the permutations and VAE noise.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.0 ^= r.next_u64() ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(r.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The streams of the training run's draws.
pub(crate) const STREAM_PERMUTATION: u64 = 1;
pub(crate) const STREAM_NOISE: u64 = 2;
pub(crate) const STREAM_AUGMENT: u64 = 3;
