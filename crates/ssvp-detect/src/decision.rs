//! The decision rule, once: what every front (detect, calibrate's hold-out, the server's
//! per-request threshold) calls anomalous.

use crate::error::{Error, Result};

/// A part is anomalous when its score is above the threshold; a score equal to it passes
/// (a conformal threshold is an order statistic of good parts' scores, and that part passed).
pub fn is_anomalous(score: f64, threshold: f64) -> bool {
    score > threshold
}

/// A threshold must be a finite number.
pub fn check_threshold(threshold: f64) -> Result<()> {
    if threshold.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "the threshold must be a finite number, not {threshold}"
        )))
    }
}
