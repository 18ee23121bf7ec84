//! Resampling the learned position table to another patch grid, as transformers 5.23 does it
//! (docs/formats.md §6.2).
//!
//! `Dinov2Embeddings.interpolate_pos_encoding` calls `F.interpolate(size=(rows, cols),
//! mode="bicubic", align_corners=False)` on the `G x G` table in f32: plain bicubic, the same
//! 1-D weights as CLIP's (`clip::vision::resample_matrix`, reused here).
//! `Dinov2WithRegistersEmbeddings` adds `antialias=True`, which switches torch to its
//! Pillow-style separable filter: a = -0.5 instead of -0.75, the support widened by the scale
//! when shrinking, and the weights renormalised at the borders instead of clamping indices.
//! Neither adds Meta's `+0.1` offset to the scale factor. Both are separable, so a table is
//! resampled as two small matmuls.

use candle_core::{DType, Result, Tensor};

use crate::clip::vision::{resample_matrix, PosInterp};

/// `[out, in]` row-major weights of torch's 1-D bicubic resampling with `align_corners=False`;
/// `antialias` selects torch's antialiased kernel.
pub(crate) fn bicubic_matrix(input: usize, output: usize, antialias: bool) -> Vec<f32> {
    if antialias {
        antialiased_bicubic_matrix(input, output)
    } else {
        resample_matrix(input, output, PosInterp::Bicubic)
    }
}

/// torch's `_upsample_bicubic2d_aa` weights (aten `UpSampleKernel.cpp`,
/// `_compute_index_ranges_weights` with the `aa_filter` cubic), one output row at a time.
fn antialiased_bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; input * output];
    let scale = input as f64 / output as f64;
    // Shrinking widens the filter by the scale (that is the antialiasing); growing keeps the
    // cubic's support of 2 input pixels on each side.
    let (support, invscale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    for o in 0..output {
        let center = scale * (o as f64 + 0.5);
        // torch truncates toward zero (`static_cast<int64_t>`), then clamps to the input.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let weights: Vec<f64> = (xmin..xmax)
            .map(|x| aa_cubic((x as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = weights.iter().sum();
        let row = &mut m[o * input..(o + 1) * input];
        for (x, w) in (xmin..xmax).zip(weights) {
            // Taps that fall outside the input are dropped and the rest renormalised.
            row[x] = if total != 0.0 {
                (w / total) as f32
            } else {
                0.0
            };
        }
    }
    m
}

/// Keys' cubic with a = -0.5, torch's `aa_filter` for bicubic (Pillow's choice).
fn aa_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Resamples the patch rows of a `[1 + G·G, D]` position table (CLS row first, patches
/// row-major) to a `rows x cols` grid, in f32, returning `[1 + rows·cols, D]` in the table's
/// dtype. The CLS row is kept as is.
pub(crate) fn resample_positions(
    table: &Tensor,
    grid: usize,
    rows: usize,
    cols: usize,
    antialias: bool,
) -> Result<Tensor> {
    let dtype = table.dtype();
    let width = table.dim(1)?;
    let table = table.to_dtype(DType::F32)?;
    let cls = table.narrow(0, 0, 1)?;
    let patches = table.narrow(0, 1, grid * grid)?;
    let dev = table.device();
    let wy = Tensor::from_vec(bicubic_matrix(grid, rows, antialias), (rows, grid), dev)?;
    let wx = Tensor::from_vec(bicubic_matrix(grid, cols, antialias), (cols, grid), dev)?;
    // Rows first ([rows, G·D]), then the columns of every output row.
    let by_rows = wy
        .matmul(&patches.reshape((grid, grid * width))?)?
        .reshape((rows, grid, width))?;
    let resampled = wx
        .unsqueeze(0)?
        .broadcast_as((rows, cols, grid))?
        .contiguous()?
        .matmul(&by_rows)?
        .reshape((rows * cols, width))?;
    Tensor::cat(&[&cls, &resampled], 0)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antialiased_rows_sum_to_one_and_identity_at_same_size() {
        for (i, o) in [(3, 5), (5, 3), (37, 46), (37, 20), (4, 4)] {
            let m = antialiased_bicubic_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6, "{i}->{o} row {r}: {s}");
            }
        }
        let id = antialiased_bicubic_matrix(5, 5);
        for r in 0..5 {
            for c in 0..5 {
                assert_eq!(id[r * 5 + c], if r == c { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn antialiased_weights_match_torch() {
        // torch 2.15: F.interpolate(eye(3).reshape(3, 1, 1, 3), size=(1, 5), mode="bicubic",
        // antialias=True).reshape(3, 5).T: output pixels 0 and 1 of 5.
        let m = antialiased_bicubic_matrix(3, 5);
        let want = [1.0755_f32, -0.0755, 0.0, 0.6493, 0.3955, -0.0448];
        for (got, want) in m[..6].iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{:?}", &m[..6]);
        }
    }
}
