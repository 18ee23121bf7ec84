//! Image-level metrics: sort-based, exact, tie groups like sklearn.

use super::curve::{TieCurve, TieGroup};
use super::keys::f64_key;
use super::{MetricsError, Undefined};

/// AUROC, AP and F1-max of one set of scores against binary labels (`true` = anomalous).
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryMetrics {
    /// Area under the ROC curve (sklearn's `roc_auc_score`).
    pub auroc: Result<f64, Undefined>,
    /// Average precision (sklearn's `average_precision_score`).
    pub average_precision: Result<f64, Undefined>,
    /// The best F1 over every threshold of the precision-recall curve.
    pub f1_max: Result<f64, Undefined>,
}

/// Builds the descending tie-group curve of `(score, label)` pairs by sorting integer keys.
pub(crate) fn sorted_curve(scores: &[f64], labels: &[bool]) -> Result<TieCurve, MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    let mut keyed = Vec::with_capacity(scores.len());
    for (index, (&s, &l)) in scores.iter().zip(labels).enumerate() {
        if !s.is_finite() {
            return Err(MetricsError::NonFinite {
                what: "score",
                index,
                value: s,
            });
        }
        keyed.push((f64_key(s), l));
    }
    keyed.sort_unstable_by_key(|k| std::cmp::Reverse(k.0));
    let mut curve = TieCurve::default();
    let mut i = 0;
    while i < keyed.len() {
        let key = keyed[i].0;
        let mut group = TieGroup::default();
        while i < keyed.len() && keyed[i].0 == key {
            if keyed[i].1 {
                group.positives += 1;
            } else {
                group.negatives += 1;
            }
            i += 1;
        }
        curve.positives += group.positives;
        curve.negatives += group.negatives;
        curve.groups.push(group);
    }
    Ok(curve)
}

/// Image AUROC, AP and F1-max, equal to sklearn's `roc_auc_score`, `average_precision_score`
/// and the maximum F1 over `precision_recall_curve` (to rounding), ties included.
///
/// Errors on NaN/infinite scores or a length mismatch; a single-class input gives
/// [`Undefined`] values rather than an error.
pub fn binary_metrics(scores: &[f64], labels: &[bool]) -> Result<BinaryMetrics, MetricsError> {
    let curve = sorted_curve(scores, labels)?;
    Ok(BinaryMetrics {
        auroc: curve.auroc(),
        average_precision: curve.average_precision(),
        f1_max: curve.f1_max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nan_and_merges_signed_zero() {
        let err = binary_metrics(&[0.1, f64::NAN], &[false, true]).unwrap_err();
        assert!(err.to_string().contains("score 1 is NaN"), "{err}");
        assert!(binary_metrics(&[f64::INFINITY], &[true]).is_err());
        // -0.0 and +0.0 tie: AUROC 1/2.
        let m = binary_metrics(&[-0.0, 0.0], &[false, true]).unwrap();
        assert_eq!(m.auroc, Ok(0.5));
    }
}
