//! Pixel-level metrics over a whole category with bounded memory.
//!
//! [`PixelAccumulator`] receives one image (map + binary mask) at a time and keeps only an
//! order-preserving `u32` key per normal pixel and a `(key, region)` pair per anomalous pixel.
//! At the end the exact tie-group curve is rebuilt without sorting the normal pixels:
//!
//! 1. the (few) anomalous pixels are sorted, giving the distinct positive keys `u_0 < … < u_{D-1}`
//!    with their counts and overlap masses;
//! 2. a first-level table over the 65,536 high-16-bit bins records which distinct positive keys
//!    fall in each bin;
//! 3. one pass over the normal pixels drops each key into its slot — *equal to* `u_j` or
//!    *strictly between* `u_j` and `u_{j+1}`. Keys in a bin without positives need no second
//!    level (the bin lies inside one gap); keys in a mixed bin are refined on their low 16 bits:
//!    a 256-entry table on bits 8..16 (built for mixed bins only), then a binary search among
//!    the few positive keys sharing the top 24 bits.
//!
//! That yields every positive tie group with its tied negatives and the negatives-only runs
//! between them, which determine AUROC, AP, F1-max and exact AUPRO (see `curve.rs`). Memory is
//! ~4 bytes per normal pixel and ~8 per anomalous one plus O(D); the work is one sort of the
//! positives and one pass over the negatives.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::curve::{cflow_area, TieCurve, TieGroup, AUPRO_FPR_LIMIT};
use super::keys::{f32_key, key_f32};
use super::{MetricsError, Undefined};
use crate::maps::regions::label_regions;

/// Number of equally spaced thresholds of the cflow-style AUPRO (`max_step` in `cal_pro_score`).
pub const CFLOW_STEPS: usize = 200;

/// Pixel metrics of one category. Each value is in [0, 1] or says why it is undefined.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMetrics {
    /// Pixel AUROC over every pixel of the category.
    pub auroc: Result<f64, Undefined>,
    /// Pixel average precision.
    pub average_precision: Result<f64, Undefined>,
    /// Pixel F1-max over every threshold.
    pub f1_max: Result<f64, Undefined>,
    /// Exact AUPRO to FPR 0.3 (anomalib's sort-based algorithm).
    pub aupro: Result<f64, Undefined>,
    /// AnomalyCLIP / APRIL-GAN `cal_pro_score` (200 thresholds, min-max rescaled FPR).
    pub aupro_cflow: Result<f64, Undefined>,
    /// What the metrics were computed over.
    pub counts: PixelCounts,
}

/// What went into a [`PixelMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelCounts {
    /// Images (maps with their masks) added.
    pub images: u64,
    /// Pixels over all images.
    pub pixels: u64,
    /// Pixels inside a defect.
    pub anomalous_pixels: u64,
    /// Connected defect regions over all masks (what AUPRO averages over).
    pub regions: u64,
}

/// Streaming, exact pixel-metric accumulator for one category.
#[derive(Debug, Default)]
pub struct PixelAccumulator {
    /// Keys of the normal pixels, one vector per image (no reallocation of a giant buffer).
    negatives: Vec<Vec<u32>>,
    /// `(key, region id)` of the anomalous pixels, one vector per image.
    positives: Vec<Vec<(u32, u32)>>,
    region_sizes: Vec<u32>,
    min_key: u32,
    max_key: u32,
    counts: PixelCounts,
}

impl PixelAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self {
            min_key: u32::MAX,
            max_key: 0,
            ..Self::default()
        }
    }

    /// Adds one image: its anomaly map and binary GT mask, both row-major `width x height`.
    ///
    /// Regions are the 8-connected components of this mask. Errors on NaN/infinite scores
    /// (naming the pixel) and on buffer sizes that do not match.
    pub fn push(
        &mut self,
        map: &[f32],
        mask: &[bool],
        width: usize,
        height: usize,
    ) -> Result<(), MetricsError> {
        let len = width
            .checked_mul(height)
            .ok_or(MetricsError::TooLarge(usize::MAX))?;
        for buffer_len in [map.len(), mask.len()] {
            if buffer_len != len {
                return Err(MetricsError::BadBuffer {
                    len: buffer_len,
                    width,
                    height,
                });
            }
        }
        if let Some(index) = map.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite {
                what: "map pixel",
                index,
                value: map[index] as f64,
            });
        }
        let (labels, sizes) = label_regions(mask, width);
        let first_region = self.region_sizes.len();
        if first_region + sizes.len() >= u32::MAX as usize
            || self.counts.pixels + len as u64 >= u32::MAX as u64
        {
            return Err(MetricsError::TooLarge(self.counts.pixels as usize + len));
        }
        let anomalous = sizes.iter().map(|&s| s as usize).sum::<usize>();
        let mut negatives = Vec::with_capacity(len - anomalous);
        let mut positives = Vec::with_capacity(anomalous);
        for ((&score, &label), &anomalous) in map.iter().zip(&labels).zip(mask) {
            let key = f32_key(score);
            self.min_key = self.min_key.min(key);
            self.max_key = self.max_key.max(key);
            if anomalous {
                positives.push((key, first_region as u32 + label));
            } else {
                negatives.push(key);
            }
        }
        self.region_sizes.extend_from_slice(&sizes);
        self.counts.images += 1;
        self.counts.pixels += len as u64;
        self.counts.anomalous_pixels += anomalous as u64;
        self.counts.regions += sizes.len() as u64;
        self.negatives.push(negatives);
        self.positives.push(positives);
        Ok(())
    }

    /// What has been added so far.
    pub fn counts(&self) -> PixelCounts {
        self.counts
    }

    /// Bytes held for the pixels so far (the dominant part of the accumulator's memory).
    pub fn stored_bytes(&self) -> usize {
        self.negatives
            .iter()
            .map(|v| v.capacity() * 4)
            .sum::<usize>()
            + self
                .positives
                .iter()
                .map(|v| v.capacity() * 8)
                .sum::<usize>()
            + self.region_sizes.capacity() * 4
    }

    /// Exact metrics by the histogram path described in the module docs.
    pub fn finish(self) -> PixelMetrics {
        let Self {
            negatives,
            positives,
            region_sizes,
            min_key,
            max_key,
            counts,
        } = self;
        let thresholds = cflow_range_thresholds(min_key, max_key, counts.pixels);

        // 1. Distinct positive keys, ascending, with counts and overlap masses.
        let mut sorted = Vec::with_capacity(counts.anomalous_pixels as usize);
        for image in positives {
            sorted.extend(image);
        }
        sorted.par_sort_unstable_by_key(|p| p.0);
        let inverse_size: Vec<f64> = region_sizes.iter().map(|&s| 1.0 / s as f64).collect();
        let mut keys: Vec<u32> = Vec::new();
        let mut pos_counts: Vec<u64> = Vec::new();
        let mut overlaps: Vec<f64> = Vec::new();
        for &(key, region) in &sorted {
            if keys.last() != Some(&key) {
                keys.push(key);
                pos_counts.push(0);
                overlaps.push(0.0);
            }
            *pos_counts.last_mut().unwrap() += 1;
            *overlaps.last_mut().unwrap() += inverse_size[region as usize];
        }
        drop(sorted);
        let distinct = keys.len();

        // 2. First level: bin_start[b] = number of distinct positive keys whose high half < b.
        let mut bin_start = vec![0u32; 65_537];
        for &k in &keys {
            bin_start[(k >> 16) as usize + 1] += 1;
        }
        for b in 1..bin_start.len() {
            bin_start[b] += bin_start[b - 1];
        }
        // Second level, for mixed bins only: a 257-entry table over bits 8..16 of the key, so
        // that a negative is compared against the few positives sharing its top 24 bits.
        let levels = MidLevel::new(&keys, &bin_start);

        // 3. One pass over the negatives: slots "between" (gaps, D + 1) and "equal" (D), plus
        //    the cflow threshold histogram.
        let tally = NegativeTally::new(distinct, thresholds.as_ref().map_or(0, |t| t.len()));
        let chunk = negatives.len() / rayon::current_num_threads().max(1) + 1;
        let tally = negatives
            .par_iter()
            .with_min_len(chunk)
            .fold(
                || tally.clone(),
                |mut acc, image| {
                    for &key in image {
                        let bin = (key >> 16) as usize;
                        let lo = bin_start[bin] as usize;
                        if lo == bin_start[bin + 1] as usize {
                            acc.slots[2 * lo] += 1;
                        } else {
                            let (s, e) = levels.range(bin, key, lo);
                            if s == e {
                                acc.slots[2 * s] += 1;
                            } else {
                                let i = s + keys[s..e].partition_point(|&u| u < key);
                                if i < e && keys[i] == key {
                                    acc.slots[2 * i + 1] += 1;
                                } else {
                                    acc.slots[2 * i] += 1;
                                }
                            }
                        }
                        if let Ok(t) = &thresholds {
                            acc.above[t.bucket(key_f32(key))] += 1;
                        }
                    }
                    acc
                },
            )
            .reduce(|| tally.clone(), NegativeTally::merge);
        drop(negatives);

        // 4. Tie groups in descending order.
        let mut curve = TieCurve {
            groups: Vec::with_capacity(2 * distinct + 1),
            positives: counts.anomalous_pixels,
            negatives: counts.pixels - counts.anomalous_pixels,
            regions: counts.regions,
        };
        let gap = |n: u64| TieGroup {
            positives: 0,
            negatives: n,
            overlap: 0.0,
        };
        for j in (0..distinct).rev() {
            if tally.slots[2 * j + 2] > 0 {
                curve.groups.push(gap(tally.slots[2 * j + 2] as u64));
            }
            curve.groups.push(TieGroup {
                positives: pos_counts[j],
                negatives: tally.slots[2 * j + 1] as u64,
                overlap: overlaps[j],
            });
        }
        if tally.slots[0] > 0 {
            curve.groups.push(gap(tally.slots[0] as u64));
        }

        // 5. cflow: per-threshold FPR and PRO from the bucket histograms.
        let aupro_cflow = thresholds.map_or_else(Err, |t| {
            let mut overlap_above = vec![0.0f64; t.len() + 1];
            for (&k, &o) in keys.iter().zip(&overlaps) {
                overlap_above[t.bucket(key_f32(k))] += o;
            }
            cflow_from_buckets(&tally.above, &overlap_above, &curve)
        });

        PixelMetrics {
            auroc: curve.auroc(),
            average_precision: curve.average_precision(),
            f1_max: curve.f1_max(),
            aupro: curve.aupro(AUPRO_FPR_LIMIT),
            aupro_cflow,
            counts,
        }
    }

    /// The same metrics by a plain full sort of all pixels (16 bytes per pixel). A reference for
    /// tests of [`finish`](Self::finish); every distinct score is its own tie group here.
    pub fn finish_sorted(self) -> PixelMetrics {
        let thresholds = cflow_range_thresholds(self.min_key, self.max_key, self.counts.pixels);
        let mut all: Vec<(u32, bool, f64)> = Vec::with_capacity(self.counts.pixels as usize);
        for image in &self.negatives {
            all.extend(image.iter().map(|&k| (k, false, 0.0)));
        }
        for image in &self.positives {
            all.extend(
                image
                    .iter()
                    .map(|&(k, r)| (k, true, 1.0 / self.region_sizes[r as usize] as f64)),
            );
        }
        all.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
        let counts = self.counts;
        let mut curve = TieCurve {
            groups: Vec::new(),
            positives: counts.anomalous_pixels,
            negatives: counts.pixels - counts.anomalous_pixels,
            regions: counts.regions,
        };
        let mut i = 0;
        while i < all.len() {
            let mut group = TieGroup::default();
            let key = all[i].0;
            while i < all.len() && all[i].0 == key {
                if all[i].1 {
                    group.positives += 1;
                    group.overlap += all[i].2;
                } else {
                    group.negatives += 1;
                }
                i += 1;
            }
            curve.groups.push(group);
        }
        // cflow straight from the definition: what lies strictly above each threshold, read
        // off prefix sums of the descending order.
        let aupro_cflow = thresholds.map_or_else(Err, |t| {
            check_cflow_defined(&curve)?;
            let mut negatives_before = Vec::with_capacity(all.len() + 1);
            let mut overlap_before = Vec::with_capacity(all.len() + 1);
            let (mut fp, mut overlap) = (0u64, 0.0f64);
            for &(_, positive, w) in &all {
                negatives_before.push(fp);
                overlap_before.push(overlap);
                if positive {
                    overlap += w;
                } else {
                    fp += 1;
                }
            }
            negatives_before.push(fp);
            overlap_before.push(overlap);
            let (mut fpr, mut pro) = (Vec::new(), Vec::new());
            for &th in &t.values {
                let above = all.partition_point(|p| key_f32(p.0) as f64 > th);
                fpr.push(negatives_before[above] as f64 / curve.negatives as f64);
                pro.push(overlap_before[above] / curve.regions as f64);
            }
            cflow_area(&fpr, &pro)
        });
        PixelMetrics {
            auroc: curve.auroc(),
            average_precision: curve.average_precision(),
            f1_max: curve.f1_max(),
            aupro: curve.aupro(AUPRO_FPR_LIMIT),
            aupro_cflow,
            counts,
        }
    }
}

/// Second-level tables of the mixed first-level bins.
struct MidLevel {
    /// `table_of[bin]`: index of the bin's table, `u32::MAX` when the bin has no positives.
    table_of: Vec<u32>,
    /// 257 entries per table: positives of the bin whose bits 8..16 are below `m`.
    tables: Vec<u32>,
}

impl MidLevel {
    fn new(keys: &[u32], bin_start: &[u32]) -> Self {
        let mut table_of = vec![u32::MAX; 65_536];
        let mut tables = Vec::new();
        for bin in 0..65_536 {
            let (lo, hi) = (bin_start[bin] as usize, bin_start[bin + 1] as usize);
            if lo == hi {
                continue;
            }
            table_of[bin] = (tables.len() / 257) as u32;
            let base = tables.len();
            tables.resize(base + 257, 0);
            for &k in &keys[lo..hi] {
                tables[base + ((k >> 8) & 0xFF) as usize + 1] += 1;
            }
            for m in 1..257 {
                tables[base + m] += tables[base + m - 1];
            }
        }
        Self { table_of, tables }
    }

    /// Range of distinct positive keys sharing the top 24 bits of `key` (bin start `lo`).
    #[inline]
    fn range(&self, bin: usize, key: u32, lo: usize) -> (usize, usize) {
        let base = self.table_of[bin] as usize * 257 + ((key >> 8) & 0xFF) as usize;
        (
            lo + self.tables[base] as usize,
            lo + self.tables[base + 1] as usize,
        )
    }
}

#[derive(Clone)]
struct NegativeTally {
    /// Interleaved so that the two candidate slots of a search share a cache line:
    /// `2j` = strictly between `u_{j-1}` and `u_j` (a gap), `2j + 1` = equal to `u_j`.
    /// `u32` halves the randomly accessed memory; `push` caps a category below 2^32 pixels.
    slots: Vec<u32>,
    /// `above[b]`: negatives in cflow bucket `b` (= number of thresholds strictly below them).
    above: Vec<u64>,
}

impl NegativeTally {
    fn new(distinct: usize, thresholds: usize) -> Self {
        Self {
            slots: vec![0; 2 * distinct + 1],
            above: vec![0; thresholds + 1],
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.slots
            .iter_mut()
            .zip(&other.slots)
            .for_each(|(x, y)| *x += y);
        self.above
            .iter_mut()
            .zip(&other.above)
            .for_each(|(x, y)| *x += y);
        self
    }
}

/// The cflow thresholds of a map range, with a fast bucket lookup.
struct CflowThresholds {
    values: Vec<f64>,
    start: f64,
    step: f64,
}

impl CflowThresholds {
    fn len(&self) -> usize {
        self.values.len()
    }

    /// Number of thresholds strictly below `score`, i.e. how many binarisations `score > t`
    /// call this pixel anomalous. Starts from the arithmetic guess, then corrects it exactly.
    #[inline]
    fn bucket(&self, score: f32) -> usize {
        let s = score as f64;
        let n = self.values.len();
        let guess = ((s - self.start) / self.step).floor() + 1.0;
        let mut i = if guess.is_finite() {
            guess.clamp(0.0, n as f64) as usize
        } else {
            0
        };
        while i > 0 && self.values[i - 1] >= s {
            i -= 1;
        }
        while i < n && self.values[i] < s {
            i += 1;
        }
        i
    }
}

/// The thresholds `np.arange(min, max, (max - min) / 200)` of `cal_pro_score` on a float32 map,
/// reproduced bit for bit: the step and the length are float32 computations, the values are
/// float64 (`start + i * (f64(f32(start + step)) - start)`), as numpy 2 produces them.
///
/// Returns an empty vector when `max <= min`.
pub fn cflow_thresholds(min: f32, max: f32) -> Vec<f64> {
    if max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) {
        return Vec::new();
    }
    let step = (max - min) / CFLOW_STEPS as f32;
    if step == 0.0 || !step.is_finite() {
        return Vec::new();
    }
    let len = (((max - min) / step) as f64).ceil() as usize;
    let start = min as f64;
    let second = (min + step) as f64;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

fn cflow_range_thresholds(
    min_key: u32,
    max_key: u32,
    pixels: u64,
) -> Result<CflowThresholds, Undefined> {
    if pixels == 0 {
        return Err(Undefined::Empty);
    }
    let values = cflow_thresholds(key_f32(min_key), key_f32(max_key));
    if values.len() < 2 {
        return Err(Undefined::CflowConstantMaps);
    }
    Ok(CflowThresholds {
        start: values[0],
        step: values[1] - values[0],
        values,
    })
}

fn check_cflow_defined(curve: &TieCurve) -> Result<(), Undefined> {
    if curve.negatives == 0 {
        return Err(Undefined::NoNegatives);
    }
    if curve.regions == 0 {
        return Err(Undefined::NoRegions);
    }
    Ok(())
}

/// Turns bucket histograms (bucket = number of thresholds below the value) into the cflow
/// curve: at threshold k, everything in buckets > k is predicted anomalous.
fn cflow_from_buckets(
    negatives: &[u64],
    overlap: &[f64],
    curve: &TieCurve,
) -> Result<f64, Undefined> {
    check_cflow_defined(curve)?;
    let thresholds = negatives.len() - 1;
    let (mut fpr, mut pro) = (vec![0.0; thresholds], vec![0.0; thresholds]);
    let (mut fp, mut mass) = (0u64, 0.0f64);
    for k in (0..thresholds).rev() {
        fp += negatives[k + 1];
        mass += overlap[k + 1];
        fpr[k] = fp as f64 / curve.negatives as f64;
        pro[k] = mass / curve.regions as f64;
    }
    cflow_area(&fpr, &pro)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_image_matches_sorted_path() {
        let map = [0.1f32, 0.5, 0.5, 0.9, 0.2, 0.5, 0.3, 0.7, 0.0];
        let mask = [false, true, false, true, false, false, false, true, false];
        let mut a = PixelAccumulator::new();
        a.push(&map, &mask, 3, 3).unwrap();
        let mut b = PixelAccumulator::new();
        b.push(&map, &mask, 3, 3).unwrap();
        assert_eq!(a.finish(), b.finish_sorted());
    }

    #[test]
    fn rejects_bad_input() {
        let mut a = PixelAccumulator::new();
        assert!(a.push(&[0.0, f32::NAN], &[false, true], 2, 1).is_err());
        assert!(a.push(&[0.0, 1.0], &[false], 2, 1).is_err());
    }

    #[test]
    fn single_class_is_undefined_not_zero() {
        let mut a = PixelAccumulator::new();
        a.push(&[0.1, 0.2, 0.3, 0.4], &[false; 4], 2, 2).unwrap();
        let m = a.finish();
        assert_eq!(m.auroc, Err(Undefined::NoPositives));
        assert_eq!(m.aupro, Err(Undefined::NoRegions));
        assert_eq!(m.aupro_cflow, Err(Undefined::NoRegions));
    }
}
