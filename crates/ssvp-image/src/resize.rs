//! Separable convolution resampling that reproduces Pillow's `Image.resize` bit for bit on 8-bit
//! data, and torch's `interpolate(mode="bilinear", antialias=True, align_corners=False)` on `f32`.
//!
//! Both libraries use the same scheme: for each output pixel, the filter is centred on the
//! corresponding input position, stretched by `max(1, in/out)` so that shrinking is antialiased,
//! and its taps are normalised to sum to one. The image is resampled horizontally first, then
//! vertically. Pillow additionally quantises the taps to 22-bit fixed point and rounds the
//! horizontal pass to an 8-bit intermediate image, which is why a float implementation is not
//! enough to match it exactly.
//!
//! Buffers are interleaved (`HWC`, row-major), `channels` values per pixel; each channel is
//! filtered independently (Pillow does not premultiply alpha for the modes used here).

use crate::decode::RgbImage8;
use crate::error::{Error, Result};

/// Interpolation filter of the 8-bit resampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Pillow `Image.BILINEAR` (triangle filter, support 1).
    PillowBilinear,
    /// Pillow `Image.BICUBIC` (cubic convolution with a = -0.5, support 2).
    PillowBicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::PillowBilinear => 1.0,
            Filter::PillowBicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::PillowBilinear => triangle(x),
            Filter::PillowBicubic => cubic(x),
        }
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys' cubic convolution kernel with a = -0.5 (Pillow's choice; torch uses -0.75).
fn cubic(x: f64) -> f64 {
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

/// Taps of a 1-D resampling: output sample `i` reads `count[i]` inputs from `start[i]`, weighted
/// by `weights[i * stride..]`.
struct Taps {
    start: Vec<usize>,
    count: Vec<usize>,
    stride: usize,
    weights: Vec<f64>,
}

/// Normalised filter taps, computed exactly as Pillow's `precompute_coeffs` and torch's
/// `_compute_indices_weights_aa` do (double precision, truncating casts).
fn compute_taps(
    in_size: usize,
    out_size: usize,
    support: f64,
    weight: impl Fn(f64) -> f64,
) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = support * filter_scale;
    let stride = support.ceil() as usize * 2 + 1;
    let inv_filter_scale = 1.0 / filter_scale;
    let mut taps = Taps {
        start: Vec::with_capacity(out_size),
        count: Vec::with_capacity(out_size),
        stride,
        weights: vec![0.0; out_size * stride],
    };
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // `as i64` truncates toward zero like the C casts; negative starts are then clamped.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = hi.saturating_sub(lo).min(stride);
        let row = &mut taps.weights[i * stride..i * stride + count];
        let mut total = 0.0;
        for (j, w) in row.iter_mut().enumerate() {
            *w = weight(((j + lo) as f64 - center + 0.5) * inv_filter_scale);
            total += *w;
        }
        if total != 0.0 {
            row.iter_mut().for_each(|w| *w /= total);
        }
        taps.start.push(lo);
        taps.count.push(count);
    }
    taps
}

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the data minus 2 for
/// the accumulation headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Taps quantised like Pillow's `normalize_coeffs_8bpc` (round half away from zero).
fn fixed_point(taps: &Taps) -> Vec<i32> {
    let one = (1u32 << PRECISION_BITS) as f64;
    taps.weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn check_buffer(
    len: usize,
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Result<()> {
    if width == 0 || height == 0 || channels == 0 {
        return Err(Error::Buffer(format!(
            "empty input: {width}x{height} with {channels} channels"
        )));
    }
    if out_width == 0 || out_height == 0 {
        return Err(Error::Size(format!(
            "output size must be positive, got {out_width}x{out_height}"
        )));
    }
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels))
        .ok_or_else(|| Error::Buffer("image dimensions overflow".into()))?;
    if len != expected {
        return Err(Error::Buffer(format!(
            "buffer has {len} values, expected {width}x{height}x{channels} = {expected}"
        )));
    }
    Ok(())
}

/// One horizontal 8-bit pass: `src` is `width` x `height`, the result `out_width` x `height`.
fn horizontal_pass_u8(
    src: &[u8],
    width: usize,
    channels: usize,
    out_width: usize,
    filter: Filter,
) -> Vec<u8> {
    let taps = compute_taps(width, out_width, filter.support(), |x| filter.weight(x));
    let k = fixed_point(&taps);
    let height = src.len() / (width * channels);
    let mut out = vec![0u8; out_width * height * channels];
    for (src_row, out_row) in src
        .chunks_exact(width * channels)
        .zip(out.chunks_exact_mut(out_width * channels))
    {
        for x in 0..out_width {
            let ks = &k[x * taps.stride..x * taps.stride + taps.count[x]];
            let first = taps.start[x];
            for c in 0..channels {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &w) in ks.iter().enumerate() {
                    acc += src_row[(first + j) * channels + c] as i32 * w;
                }
                out_row[x * channels + c] = clip8(acc);
            }
        }
    }
    out
}

/// One vertical 8-bit pass: `src` has rows of `row_len` values; the result has `out_height` rows.
fn vertical_pass_u8(src: &[u8], row_len: usize, out_height: usize, filter: Filter) -> Vec<u8> {
    let height = src.len() / row_len;
    let taps = compute_taps(height, out_height, filter.support(), |x| filter.weight(x));
    let k = fixed_point(&taps);
    let mut out = vec![0u8; out_height * row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let ks = &k[y * taps.stride..y * taps.stride + taps.count[y]];
        let first = taps.start[y];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (j, &w) in ks.iter().enumerate() {
                acc += src[(first + j) * row_len + i] as i32 * w;
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Resizes an interleaved 8-bit image like Pillow's `Image.resize((out_width, out_height), filter)`
/// (box = whole image, no `reducing_gap`). Works for any channel count, e.g. 1 for `L` masks and
/// 3 for `RGB`.
///
/// Pass order matters because of the 8-bit intermediate. Pillow up to 12 always resampled
/// horizontally first; Pillow 13 runs the vertical pass first when the height shrinks by more
/// than twice as many pixels as the width does (`in_h - out_h > max(0, 2 * (in_w - out_w))`),
/// which we follow (found by disassembling Pillow 13.0.0's `ImagingResampleInner` and checked on
/// 580 random geometries). Older Pillow differs from this by a few LSB in those cases only.
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    check_buffer(src.len(), width, height, channels, out_width, out_height)?;
    // Pillow skips a pass whose size does not change (a second rounding would otherwise occur).
    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    let shrink_h = height as i64 - out_height as i64;
    let shrink_w = width as i64 - out_width as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    let out = match (need_horizontal, need_vertical) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal_pass_u8(src, width, channels, out_width, filter),
        (false, true) => vertical_pass_u8(src, width * channels, out_height, filter),
        (true, true) if vertical_first => {
            let tmp = vertical_pass_u8(src, width * channels, out_height, filter);
            horizontal_pass_u8(&tmp, width, channels, out_width, filter)
        }
        (true, true) => {
            let tmp = horizontal_pass_u8(src, width, channels, out_width, filter);
            vertical_pass_u8(&tmp, out_width * channels, out_height, filter)
        }
    };
    Ok(out)
}

/// Resizes an RGB8 image with Pillow's bilinear filter, e.g. for report thumbnails and for
/// bringing an input image to an anomaly map's size before overlaying; bilinear rather than
/// bicubic because it does not overshoot (no ringing halos around sharp defects).
pub fn resize_rgb8(img: &RgbImage8, width: usize, height: usize) -> Result<RgbImage8> {
    let data = resize_u8(
        &img.data,
        img.width,
        img.height,
        3,
        width,
        height,
        Filter::PillowBilinear,
    )?;
    RgbImage8::from_raw(width, height, data)
}

/// Resizes an interleaved `f32` image like
/// `torch.nn.functional.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False)`
/// (which is also torchvision's `Resize(antialias=True)` on float tensors): the triangle filter,
/// stretched when shrinking, in floating point without intermediate rounding.
pub fn resize_f32_bilinear_antialias(
    src: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<f32>> {
    check_buffer(src.len(), width, height, channels, out_width, out_height)?;
    let horizontal = if out_width != width {
        let taps = compute_taps(width, out_width, 1.0, triangle);
        let mut out = vec![0f32; out_width * height * channels];
        for (src_row, out_row) in src
            .chunks_exact(width * channels)
            .zip(out.chunks_exact_mut(out_width * channels))
        {
            for x in 0..out_width {
                let ks = &taps.weights[x * taps.stride..x * taps.stride + taps.count[x]];
                let first = taps.start[x];
                for c in 0..channels {
                    let acc: f64 = ks
                        .iter()
                        .enumerate()
                        .map(|(j, &w)| src_row[(first + j) * channels + c] as f64 * w)
                        .sum();
                    out_row[x * channels + c] = acc as f32;
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if out_height == height {
        return Ok(horizontal);
    }
    let row_len = out_width * channels;
    let taps = compute_taps(height, out_height, 1.0, triangle);
    let mut out = vec![0f32; out_height * row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let ks = &taps.weights[y * taps.stride..y * taps.stride + taps.count[y]];
        let first = taps.start[y];
        for (i, o) in out_row.iter_mut().enumerate() {
            let acc: f64 = ks
                .iter()
                .enumerate()
                .map(|(j, &w)| horizontal[(first + j) * row_len + i] as f64 * w)
                .sum();
            *o = acc as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (inp, out) in [(37, 11), (11, 37), (100, 99), (5, 5)] {
            let taps = compute_taps(inp, out, 2.0, cubic);
            let k = fixed_point(&taps);
            for i in 0..out {
                let s: i64 = k[i * taps.stride..i * taps.stride + taps.count[i]]
                    .iter()
                    .map(|&v| v as i64)
                    .sum();
                // Rounding each tap can move the sum by at most half a unit per tap.
                assert!((s - (1i64 << PRECISION_BITS)).abs() <= taps.stride as i64);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 7 * 3];
        for filter in [Filter::PillowBilinear, Filter::PillowBicubic] {
            let out = resize_u8(&src, 13, 7, 3, 29, 4, filter).unwrap();
            assert_eq!(out.len(), 29 * 4 * 3);
            assert!(out.iter().all(|&v| v == 77));
        }
        let srcf = vec![0.25f32; 13 * 7];
        let out = resize_f32_bilinear_antialias(&srcf, 13, 7, 1, 5, 20).unwrap();
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn rejects_bad_buffers() {
        assert!(resize_u8(&[0; 10], 3, 3, 1, 2, 2, Filter::PillowBicubic).is_err());
        assert!(resize_u8(&[0; 9], 3, 3, 1, 0, 2, Filter::PillowBicubic).is_err());
        assert!(resize_u8(&[], 0, 3, 1, 2, 2, Filter::PillowBicubic).is_err());
        assert!(resize_f32_bilinear_antialias(&[0.0; 9], 3, 3, 1, 2, 0).is_err());
    }
}
