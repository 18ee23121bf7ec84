//! Connected components with 8-connectivity (skimage `label` default, scipy `label` with a 3x3
//! structure): the GT regions that AUPRO weights equally, and the defect regions that a detector
//! reports from a map above its pixel threshold ([`regions_above`]).

use serde::{Deserialize, Serialize};

use crate::postprocess::AnomalyMap;

/// Labels the `true` pixels of a row-major `width`-wide mask with 8-connectivity.
///
/// Returns one label per pixel (`u32::MAX` for background, `0..count` for region pixels) and the
/// size of every region. Labels follow the first pixel of each region in raster order.
pub fn label_regions(mask: &[bool], width: usize) -> (Vec<u32>, Vec<u32>) {
    const BACKGROUND: u32 = u32::MAX;
    let height = mask.len().checked_div(width).unwrap_or(0);
    let mut labels = vec![BACKGROUND; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != BACKGROUND {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0u32;
        labels[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / width, p % width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let q = ny * width + nx;
                    if mask[q] && labels[q] == BACKGROUND {
                        labels[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// One defect region: a connected set of map pixels above the pixel threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Region {
    /// Bounding box `[x, y, width, height]` in map pixels (COCO's convention).
    pub bbox: [usize; 4],
    /// Number of pixels.
    pub area: usize,
    /// Highest map value in the region.
    pub peak: f32,
    /// Mean map value over the region.
    pub mean: f32,
    /// Centre of mass `[x, y]` of the region's pixels (unweighted), in pixel coordinates
    /// (pixel `(x, y)` covers `[x, x + 1) x [y, y + 1)`, so its centre is `x + 0.5`).
    pub centroid: [f64; 2],
}

/// The regions of a map and which pixels belong to them.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionMap {
    /// Regions sorted by peak, highest first (ties: raster order of their first pixel).
    pub regions: Vec<Region>,
    /// Per pixel: the index into `regions`, or `u32::MAX` outside every kept region.
    pub labels: Vec<u32>,
}

impl RegionMap {
    /// Whether a pixel belongs to a kept region (for drawing outlines).
    pub fn mask(&self) -> Vec<bool> {
        self.labels.iter().map(|&l| l != u32::MAX).collect()
    }
}

/// The connected regions (8-connectivity) of the pixels with `value > threshold`, keeping those
/// of at least `min_area` pixels. Strictly above, as the image decision is `score > threshold`:
/// a map that only touches the threshold has no region. NaN pixels are never above.
pub fn regions_above(map: &AnomalyMap, threshold: f32, min_area: usize) -> RegionMap {
    let above: Vec<bool> = map.data.iter().map(|&v| v > threshold).collect();
    let (labels, sizes) = label_regions(&above, map.width);
    struct Acc {
        x0: usize,
        y0: usize,
        x1: usize,
        y1: usize,
        peak: f32,
        sum: f64,
        sx: f64,
        sy: f64,
    }
    let mut acc: Vec<Acc> = sizes
        .iter()
        .map(|_| Acc {
            x0: usize::MAX,
            y0: usize::MAX,
            x1: 0,
            y1: 0,
            peak: f32::NEG_INFINITY,
            sum: 0.0,
            sx: 0.0,
            sy: 0.0,
        })
        .collect();
    for (i, &l) in labels.iter().enumerate() {
        if l == u32::MAX {
            continue;
        }
        let (y, x) = (i / map.width, i % map.width);
        let a = &mut acc[l as usize];
        let v = map.data[i];
        a.x0 = a.x0.min(x);
        a.y0 = a.y0.min(y);
        a.x1 = a.x1.max(x);
        a.y1 = a.y1.max(y);
        a.peak = a.peak.max(v);
        a.sum += v as f64;
        a.sx += x as f64 + 0.5;
        a.sy += y as f64 + 0.5;
    }
    let min_area = min_area.max(1);
    let mut kept: Vec<(u32, Region)> = acc
        .into_iter()
        .zip(&sizes)
        .enumerate()
        .filter(|(_, (_, &n))| n as usize >= min_area)
        .map(|(id, (a, &n))| {
            let n64 = n as f64;
            (
                id as u32,
                Region {
                    bbox: [a.x0, a.y0, a.x1 - a.x0 + 1, a.y1 - a.y0 + 1],
                    area: n as usize,
                    peak: a.peak,
                    mean: (a.sum / n64) as f32,
                    centroid: [a.sx / n64, a.sy / n64],
                },
            )
        })
        .collect();
    // Stable: equal peaks keep raster order.
    kept.sort_by(|a, b| b.1.peak.total_cmp(&a.1.peak));
    let mut remap = vec![u32::MAX; sizes.len()];
    for (new, (old, _)) in kept.iter().enumerate() {
        remap[*old as usize] = new as u32;
    }
    let labels = labels
        .into_iter()
        .map(|l| if l == u32::MAX { l } else { remap[l as usize] })
        .collect();
    RegionMap {
        regions: kept.into_iter().map(|(_, r)| r).collect(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_have_boxes_stats_and_peak_order() {
        // 6x4 map: a weak 2x2 blob top-left, a strong L-shape bottom-right, one lone pixel.
        #[rustfmt::skip]
        let v = [
            0.6, 0.7, 0.0, 0.0, 0.0, 0.0,
            0.6, 0.9, 0.0, 0.0, 0.0, 0.8,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.5,
            0.0, 0.0, 0.0, 0.5, 0.5, 0.95,
        ];
        let map = AnomalyMap::new(6, 4, v.to_vec()).unwrap();
        let r = regions_above(&map, 0.4, 1);
        assert_eq!(r.regions.len(), 2);
        let strong = &r.regions[0];
        assert_eq!(strong.bbox, [3, 1, 3, 3]);
        assert_eq!(strong.area, 5);
        assert_eq!(strong.peak, 0.95);
        assert!((strong.mean - (0.8 + 0.5 + 0.5 + 0.5 + 0.95) / 5.0).abs() < 1e-6);
        assert_eq!(
            strong.centroid,
            [(5.5 * 3.0 + 3.5 + 4.5) / 5.0, (1.5 + 2.5 + 3.5 * 3.0) / 5.0]
        );
        let weak = &r.regions[1];
        assert_eq!(weak.bbox, [0, 0, 2, 2]);
        assert_eq!(weak.centroid, [1.0, 1.0]);
        assert_eq!(r.labels[0], 1);
        assert_eq!(r.labels[23], 0);
        assert_eq!(r.labels[2], u32::MAX);
        // The area filter drops the 4-pixel blob; the threshold is strict.
        assert_eq!(regions_above(&map, 0.4, 5).regions.len(), 1);
        assert!(regions_above(&map, 0.95, 1).regions.is_empty());
        assert_eq!(
            regions_above(&map, 0.4, 5)
                .mask()
                .iter()
                .filter(|&&m| m)
                .count(),
            5
        );
    }

    #[test]
    fn diagonal_neighbours_join_and_gaps_split() {
        // Row-major 5x4: a diagonal staircase (one region), a separate blob, a lone pixel.
        #[rustfmt::skip]
        let m = [
            1, 0, 0, 0, 1,
            0, 1, 0, 0, 1,
            0, 0, 1, 0, 0,
            1, 0, 0, 0, 0,
        ];
        let mask: Vec<bool> = m.iter().map(|&v| v == 1).collect();
        let (labels, sizes) = label_regions(&mask, 5);
        assert_eq!(sizes, vec![3, 2, 1]);
        assert_eq!(labels[0], 0);
        assert_eq!(labels[12], 0);
        assert_eq!(labels[4], 1);
        assert_eq!(labels[9], 1);
        assert_eq!(labels[15], 2);
        assert_eq!(labels[1], u32::MAX);
    }
}
