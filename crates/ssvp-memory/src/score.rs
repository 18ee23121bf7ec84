//! From patch scores to an image score.

/// AnomalyDINO's image score: the mean of the `floor(fraction * n)` largest values, or the
/// maximum when that count is 0. At `fraction = 0.01` that is the top 13 of a 37 x 37 grid.
/// Summed in f64 in descending order.
pub fn top_fraction_mean(values: &[f32], fraction: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let k = (fraction * values.len() as f64).floor() as usize;
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if k == 0 {
        return sorted[0];
    }
    let k = k.min(sorted.len());
    (sorted[..k].iter().map(|&v| f64::from(v)).sum::<f64>() / k as f64) as f32
}

/// The `q`-quantile (`0 <= q <= 1`) of `values` by linear interpolation between order
/// statistics (numpy's default).
pub fn quantile(values: &[f32], q: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let t = pos - lo as f64;
    (f64::from(sorted[lo]) * (1.0 - t) + f64::from(sorted[hi]) * t) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_fraction_mean_and_its_max_fallback() {
        let v: Vec<f32> = (0..250).map(|i| i as f32).collect();
        // floor(0.01 * 250) = 2: the mean of 249 and 248.
        assert_eq!(top_fraction_mean(&v, 0.01), 248.5);
        // floor(0.01 * 50) = 0: the maximum.
        assert_eq!(top_fraction_mean(&v[..50], 0.01), 49.0);
        assert!(top_fraction_mean(&[], 0.01).is_nan());
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.99) - 3.97).abs() < 1e-6);
    }
}
