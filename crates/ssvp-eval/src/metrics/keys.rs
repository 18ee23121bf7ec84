//! Order-preserving integer keys for scores.
//!
//! Sorting and grouping integers is exact and cheap, while sorting floats needs care with `-0.0`
//! and NaN. A finite float maps to an unsigned key such that `a < b <=> key(a) < key(b)` and
//! `a == b <=> key(a) == key(b)` (so `-0.0` and `+0.0` share a key). Non-finite values are
//! rejected before a key is ever formed.

/// Key of a finite `f32`: negative values are bit-inverted, non-negative ones get the top bit set.
#[inline]
pub fn f32_key(x: f32) -> u32 {
    // Adding +0.0 turns -0.0 into +0.0 (round-to-nearest) and leaves every other value alone.
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`f32_key`].
#[inline]
pub fn key_f32(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// Key of a finite `f64`, same construction as [`f32_key`].
#[inline]
pub fn f64_key(x: f64) -> u64 {
    let bits = (x + 0.0).to_bits();
    if bits & (1 << 63) != 0 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order_and_merge_signed_zeros() {
        let values = [
            f32::MIN,
            -1.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            0.25,
            1.0,
            f32::MAX,
        ];
        for pair in values.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(a < b, f32_key(a) < f32_key(b), "{a} vs {b}");
            assert_eq!(a == b, f32_key(a) == f32_key(b), "{a} vs {b}");
            assert_eq!(a < b, f64_key(a as f64) < f64_key(b as f64));
        }
        for v in values {
            assert_eq!(key_f32(f32_key(v)), v + 0.0);
        }
        assert_eq!(f32_key(-0.0), f32_key(0.0));
        assert_eq!(f64_key(-0.0), f64_key(0.0));
    }
}
