//! Threshold curves over tie groups, and the metrics read off them.
//!
//! Every exact metric here is a function of the sequence of *tie groups* taken in descending
//! score order: how many positives, how many negatives (and, for AUPRO, how much per-region
//! overlap mass) share each distinct score. Both the sort-based path and the streaming histogram
//! path reduce their input to such a sequence; the formulas below then follow sklearn and
//! anomalib term by term.

use super::Undefined;

/// One distinct score (or a run of negatives-only scores, see below).
///
/// Consecutive groups that contain only negatives may be merged: between two positive groups
/// recall and PRO stay constant, so the ROC and PRO curves are horizontal there, AP only takes
/// steps where recall changes, and F1 only decreases while false positives accumulate. The merge
/// changes none of the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TieGroup {
    pub positives: u64,
    pub negatives: u64,
    /// Sum over the positive pixels of the group of `1 / |region|` (AUPRO only).
    pub overlap: f64,
}

/// Tie groups in descending score order plus class totals.
#[derive(Clone, Debug, Default)]
pub(crate) struct TieCurve {
    pub groups: Vec<TieGroup>,
    pub positives: u64,
    pub negatives: u64,
    /// Number of GT regions (AUPRO only).
    pub regions: u64,
}

/// Neumaier-compensated sum: AP over tens of millions of groups must stay within 1e-9.
#[derive(Default)]
pub(crate) struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Integration limit of AUPRO on the FPR axis.
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

impl TieCurve {
    fn check_both_classes(&self) -> Result<(), Undefined> {
        match (self.positives, self.negatives) {
            (0, 0) => Err(Undefined::Empty),
            (0, _) => Err(Undefined::NoPositives),
            (_, 0) => Err(Undefined::NoNegatives),
            _ => Ok(()),
        }
    }

    /// `roc_auc_score`: trapezoids between consecutive ROC points, starting at (0, 0).
    ///
    /// Twice the area in units of `1/(P·N)` is an integer, so it is summed exactly.
    pub fn auroc(&self) -> Result<f64, Undefined> {
        self.check_both_classes()?;
        let (mut tp, mut twice_area) = (0u128, 0u128);
        for g in &self.groups {
            let next_tp = tp + g.positives as u128;
            twice_area += g.negatives as u128 * (tp + next_tp);
            tp = next_tp;
        }
        Ok(twice_area as f64 / (2.0 * self.positives as f64 * self.negatives as f64))
    }

    /// `average_precision_score`: sum over distinct thresholds of ΔRecall · Precision.
    pub fn average_precision(&self) -> Result<f64, Undefined> {
        self.check_both_classes()?;
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut sum = CompensatedSum::default();
        let total = self.positives as f64;
        for g in &self.groups {
            tp += g.positives;
            fp += g.negatives;
            if g.positives > 0 {
                sum.add(g.positives as f64 / total * (tp as f64 / (tp + fp) as f64));
            }
        }
        Ok(sum.value())
    }

    /// Maximum of F1 = 2PR/(P+R) over the `precision_recall_curve` points, i.e. of
    /// 2·TP / (TP + FP + P) over the thresholds.
    pub fn f1_max(&self) -> Result<f64, Undefined> {
        self.check_both_classes()?;
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut best = 0.0f64;
        for g in &self.groups {
            tp += g.positives;
            fp += g.negatives;
            if tp > 0 {
                let precision = tp as f64 / (tp + fp) as f64;
                let recall = tp as f64 / self.positives as f64;
                best = best.max(2.0 * precision * recall / (precision + recall));
            }
        }
        Ok(best)
    }

    /// Exact AUPRO (anomalib's sort-based algorithm): the (FPR, PRO) curve through the end of
    /// every tie group, from (0, 0), cut at FPR = `limit` with PRO linearly interpolated there,
    /// trapezoid area divided by `limit`.
    pub fn aupro(&self, limit: f64) -> Result<f64, Undefined> {
        if self.negatives == 0 {
            return Err(Undefined::NoNegatives);
        }
        if self.regions == 0 {
            return Err(Undefined::NoRegions);
        }
        let (n, r) = (self.negatives as f64, self.regions as f64);
        let (mut fp, mut overlap) = (0u64, CompensatedSum::default());
        let (mut prev_fpr, mut prev_pro) = (0.0f64, 0.0f64);
        let mut area = CompensatedSum::default();
        for g in &self.groups {
            fp += g.negatives;
            overlap.add(g.overlap);
            let fpr = fp as f64 / n;
            let pro = overlap.value() / r;
            if fpr > limit {
                let pro_at_limit =
                    prev_pro + (pro - prev_pro) * ((limit - prev_fpr) / (fpr - prev_fpr));
                area.add((limit - prev_fpr) * (prev_pro + pro_at_limit) / 2.0);
                return Ok(area.value() / limit);
            }
            area.add((fpr - prev_fpr) * (prev_pro + pro) / 2.0);
            prev_fpr = fpr;
            prev_pro = pro;
        }
        // Only reachable when `limit >= 1`: the curve ends at FPR = 1.
        Ok(area.value() / prev_fpr)
    }
}

/// The cflow-style PRO curve of AnomalyCLIP / APRIL-GAN `cal_pro_score`, given per-threshold
/// counts: `fpr[k]` and `pro[k]` at the k-th of the equally spaced thresholds.
///
/// Keeps points with FPR < 0.3, min-max rescales their FPRs and integrates with
/// `sklearn.metrics.auc` (trapezoids; the FPRs are non-increasing in the threshold).
pub(crate) fn cflow_area(fpr: &[f64], pro: &[f64]) -> Result<f64, Undefined> {
    let kept: Vec<(f64, f64)> = fpr
        .iter()
        .zip(pro)
        .filter(|(f, _)| **f < AUPRO_FPR_LIMIT)
        .map(|(f, p)| (*f, *p))
        .collect();
    if kept.len() < 2 {
        return Err(Undefined::CflowTooFewPoints(kept.len()));
    }
    let lo = kept.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = kept.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if hi == lo {
        return Err(Undefined::CflowFlatFpr);
    }
    // numpy computes (fpr - min) / (max - min) elementwise, then np.trapezoid: Σ Δx·(y0+y1)/2.
    let x: Vec<f64> = kept.iter().map(|p| (p.0 - lo) / (hi - lo)).collect();
    let mut area = 0.0;
    for i in 1..kept.len() {
        area += (x[i] - x[i - 1]) * (kept[i].1 + kept[i - 1].1) / 2.0;
    }
    // sklearn's `auc` flips the sign for a decreasing x.
    Ok(-area)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(groups: &[(u64, u64)]) -> TieCurve {
        TieCurve {
            groups: groups
                .iter()
                .map(|&(p, n)| TieGroup {
                    positives: p,
                    negatives: n,
                    overlap: 0.0,
                })
                .collect(),
            positives: groups.iter().map(|g| g.0).sum(),
            negatives: groups.iter().map(|g| g.1).sum(),
            regions: 0,
        }
    }

    #[test]
    fn perfect_and_fully_tied_rankings() {
        let perfect = curve(&[(3, 0), (0, 2)]);
        assert_eq!(perfect.auroc().unwrap(), 1.0);
        assert_eq!(perfect.average_precision().unwrap(), 1.0);
        assert_eq!(perfect.f1_max().unwrap(), 1.0);
        // One tie group: AUROC 1/2, AP = precision = P/(P+N), F1 = 2P/(2P+N).
        let tied = curve(&[(3, 2)]);
        assert_eq!(tied.auroc().unwrap(), 0.5);
        assert_eq!(tied.average_precision().unwrap(), 0.6);
        assert!((tied.f1_max().unwrap() - 0.75).abs() < 1e-15);
        assert_eq!(curve(&[(0, 2)]).auroc(), Err(Undefined::NoPositives));
    }

    #[test]
    fn cflow_needs_two_points() {
        assert_eq!(
            cflow_area(&[0.9, 0.1], &[0.0, 1.0]),
            Err(Undefined::CflowTooFewPoints(1))
        );
        // Two kept points rescaled to x = 1, 0 with PRO 0.5 and 1: area 0.75.
        assert_eq!(cflow_area(&[0.2, 0.1], &[0.5, 1.0]).unwrap(), 0.75);
    }
}
