//! Connected components of a binary GT mask with 8-connectivity (skimage `label` default,
//! scipy `label` with a 3x3 structure): the regions that AUPRO weights equally.

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

#[cfg(test)]
mod tests {
    use super::*;

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
