//! Training-time image augmentations: the operations of the Bayes-PFL baseline's pipeline
//! (albumentations `Rotate`, `RandomRotate90`, `RandomBrightnessContrast`, `GaussNoise`, `Blur`,
//! `ColorJitter`, `GaussianBlur`, and APRIL-GAN's 2 x 2 mosaic), on 8-bit images.
//!
//! Every operation takes its parameters explicitly (the angle, the factors, a noise source), so it
//! is deterministic and testable; drawing the parameters is the training policy's job
//! (`ssvp_model::augment`). Geometric operations have a mask counterpart that moves the defect
//! pixels exactly as the image pixels move; photometric ones leave masks alone.
//!
//! The semantics follow albumentations 1.x on `uint8` (the baseline's library): the same
//! parameter meanings, border handling (OpenCV's `BORDER_REFLECT_101`), kernels and clipping, in
//! floating point with rounding. They are not bit-exact with OpenCV, whose warps use 5-bit
//! fixed-point coordinates; augmentations are random draws, so exactness buys nothing here.

use crate::decode::{GrayImage8, RgbImage8};
use crate::error::{Error, Result};
use crate::resize::{resize_u8, Filter};

/// OpenCV's `BORDER_REFLECT_101` (`gfedcb|abcdefgh|gfedcba`): the index of the pixel that a
/// position outside `0..n` reads.
fn reflect_101(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// How a warp reads between pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interp {
    /// Images (`cv2.INTER_LINEAR`).
    Bilinear,
    /// Masks (`cv2.INTER_NEAREST`): labels are never blended.
    Nearest,
}

/// Rotates an interleaved buffer by `degrees` (counter-clockwise as displayed, OpenCV's
/// `getRotationMatrix2D` convention) about the image centre, keeping the size; positions that
/// fall outside the source read its mirror image (`BORDER_REFLECT_101`, albumentations' default).
fn rotate_buffer(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    degrees: f64,
    interp: Interp,
) -> Vec<u8> {
    let (sin, cos) = degrees.to_radians().sin_cos();
    // Pixel centres are at integer coordinates, so the centre of the image is at (w-1)/2.
    let cx = (width as f64 - 1.0) / 2.0;
    let cy = (height as f64 - 1.0) / 2.0;
    let mut out = vec![0u8; src.len()];
    let at = |x: i64, y: i64, c: usize| -> f64 {
        src[(reflect_101(y, height) * width + reflect_101(x, width)) * channels + c] as f64
    };
    for y in 0..height {
        let dy = y as f64 - cy;
        for x in 0..width {
            let dx = x as f64 - cx;
            // The inverse map: which source position lands on (x, y).
            let sx = cos * dx - sin * dy + cx;
            let sy = sin * dx + cos * dy + cy;
            let o = (y * width + x) * channels;
            match interp {
                Interp::Nearest => {
                    let (ix, iy) = (sx.round() as i64, sy.round() as i64);
                    for c in 0..channels {
                        out[o + c] = at(ix, iy, c) as u8;
                    }
                }
                Interp::Bilinear => {
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (fx, fy) = (sx - x0, sy - y0);
                    let (x0, y0) = (x0 as i64, y0 as i64);
                    for c in 0..channels {
                        let top = at(x0, y0, c) * (1.0 - fx) + at(x0 + 1, y0, c) * fx;
                        let bottom = at(x0, y0 + 1, c) * (1.0 - fx) + at(x0 + 1, y0 + 1, c) * fx;
                        out[o + c] = to_u8(top * (1.0 - fy) + bottom * fy);
                    }
                }
            }
        }
    }
    out
}

/// Rounds and clips to 0..=255.
fn to_u8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// albumentations `Rotate`: the image rotated by `degrees` (bilinear, mirrored borders).
pub fn rotate(img: &RgbImage8, degrees: f64) -> RgbImage8 {
    RgbImage8 {
        width: img.width,
        height: img.height,
        data: rotate_buffer(
            &img.data,
            img.width,
            img.height,
            3,
            degrees,
            Interp::Bilinear,
        ),
    }
}

/// The mask of [`rotate`]: the same map, nearest-neighbour so that labels stay labels.
pub fn rotate_mask(mask: &GrayImage8, degrees: f64) -> GrayImage8 {
    GrayImage8 {
        width: mask.width,
        height: mask.height,
        data: rotate_buffer(
            &mask.data,
            mask.width,
            mask.height,
            1,
            degrees,
            Interp::Nearest,
        ),
    }
}

/// `np.rot90(a, k)` on an interleaved buffer: `k` quarter turns counter-clockwise as displayed.
/// Returns the buffer and its new `(width, height)`.
fn rot90_buffer(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    k: u32,
) -> (Vec<u8>, usize, usize) {
    let k = k % 4;
    let (ow, oh) = if k % 2 == 1 {
        (height, width)
    } else {
        (width, height)
    };
    let mut out = vec![0u8; src.len()];
    for y in 0..oh {
        for x in 0..ow {
            // The source pixel that ends up at (x, y).
            let (sx, sy) = match k {
                0 => (x, y),
                1 => (width - 1 - y, x),
                2 => (width - 1 - x, height - 1 - y),
                _ => (y, height - 1 - x),
            };
            let (o, s) = ((y * ow + x) * channels, (sy * width + sx) * channels);
            out[o..o + channels].copy_from_slice(&src[s..s + channels]);
        }
    }
    (out, ow, oh)
}

/// albumentations `RandomRotate90` with factor `k`: `k` quarter turns counter-clockwise.
pub fn rot90(img: &RgbImage8, k: u32) -> RgbImage8 {
    let (data, width, height) = rot90_buffer(&img.data, img.width, img.height, 3, k);
    RgbImage8 {
        width,
        height,
        data,
    }
}

/// The mask of [`rot90`].
pub fn rot90_mask(mask: &GrayImage8, k: u32) -> GrayImage8 {
    let (data, width, height) = rot90_buffer(&mask.data, mask.width, mask.height, 1, k);
    GrayImage8 {
        width,
        height,
        data,
    }
}

/// Applies a 256-entry lookup table to every channel value.
fn map_values(img: &RgbImage8, f: impl Fn(f64) -> f64) -> RgbImage8 {
    let lut: Vec<u8> = (0..256).map(|v| to_u8(f(v as f64))).collect();
    RgbImage8 {
        width: img.width,
        height: img.height,
        data: img.data.iter().map(|&v| lut[v as usize]).collect(),
    }
}

/// albumentations `RandomBrightnessContrast` (`brightness_by_max=True`):
/// `v * alpha + beta * 255`, clipped. `alpha = 1 + contrast`, `beta = brightness`; the baseline
/// draws both offsets from `U(-0.2, 0.2)`.
pub fn brightness_contrast(img: &RgbImage8, alpha: f64, beta: f64) -> RgbImage8 {
    map_values(img, |v| v * alpha + beta * 255.0)
}

/// albumentations `GaussNoise` (`per_channel=True`, mean 0): adds `sigma * normal()` to every
/// channel of every pixel, clipped. The baseline draws the variance from `U(10, 50)`.
pub fn add_gaussian_noise(
    img: &RgbImage8,
    sigma: f64,
    mut normal: impl FnMut() -> f64,
) -> RgbImage8 {
    RgbImage8 {
        width: img.width,
        height: img.height,
        data: img
            .data
            .iter()
            .map(|&v| to_u8(v as f64 + sigma * normal()))
            .collect(),
    }
}

/// Separable filtering of every channel with mirrored borders: `kernel` horizontally, then
/// vertically, in floating point, rounded once at the end.
fn separable_filter(img: &RgbImage8, kernel: &[f64]) -> RgbImage8 {
    let (w, h) = (img.width, img.height);
    let r = (kernel.len() / 2) as i64;
    let mut horizontal = vec![0f64; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                horizontal[(y * w + x) * 3 + c] = kernel
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let sx = reflect_101(x as i64 + i as i64 - r, w);
                        k * img.data[(y * w + sx) * 3 + c] as f64
                    })
                    .sum();
            }
        }
    }
    let mut data = vec![0u8; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v: f64 = kernel
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let sy = reflect_101(y as i64 + i as i64 - r, h);
                        k * horizontal[(sy * w + x) * 3 + c]
                    })
                    .sum();
                data[(y * w + x) * 3 + c] = to_u8(v);
            }
        }
    }
    RgbImage8 {
        width: w,
        height: h,
        data,
    }
}

fn check_kernel_size(ksize: usize) -> Result<()> {
    if ksize == 0 || ksize.is_multiple_of(2) {
        return Err(Error::Size(format!(
            "blur kernel size must be odd and positive, got {ksize}"
        )));
    }
    Ok(())
}

/// albumentations `Blur` (`cv2.blur`): the mean over a `ksize x ksize` window (the baseline uses 3).
pub fn box_blur(img: &RgbImage8, ksize: usize) -> Result<RgbImage8> {
    check_kernel_size(ksize)?;
    Ok(separable_filter(img, &vec![1.0 / ksize as f64; ksize]))
}

/// The Gaussian kernel of `cv2.getGaussianKernel(ksize, sigma)`: with `sigma <= 0`, OpenCV's
/// fixed binomial kernels for sizes up to 7, and otherwise the sampled Gaussian of
/// `sigma = 0.3 * ((ksize - 1) / 2 - 1) + 0.8`.
pub fn gaussian_kernel(ksize: usize, sigma: f64) -> Result<Vec<f64>> {
    check_kernel_size(ksize)?;
    if sigma <= 0.0 {
        let binomial: Option<&[f64]> = match ksize {
            1 => Some(&[1.0]),
            3 => Some(&[0.25, 0.5, 0.25]),
            5 => Some(&[0.0625, 0.25, 0.375, 0.25, 0.0625]),
            7 => Some(&[
                0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
            ]),
            _ => None,
        };
        if let Some(k) = binomial {
            return Ok(k.to_vec());
        }
    }
    let sigma = if sigma > 0.0 {
        sigma
    } else {
        0.3 * ((ksize as f64 - 1.0) * 0.5 - 1.0) + 0.8
    };
    let centre = (ksize as f64 - 1.0) / 2.0;
    let raw: Vec<f64> = (0..ksize)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    Ok(raw.into_iter().map(|v| v / sum).collect())
}

/// albumentations `GaussianBlur` (`cv2.GaussianBlur`): the baseline draws an odd `ksize` in
/// 3..=7 and lets OpenCV derive sigma from it (`sigma = 0`).
pub fn gaussian_blur(img: &RgbImage8, ksize: usize, sigma: f64) -> Result<RgbImage8> {
    Ok(separable_filter(img, &gaussian_kernel(ksize, sigma)?))
}

/// One adjustment of [`color_jitter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterOp {
    /// Scale every value by [`ColorJitter::brightness`].
    Brightness,
    /// Blend with the image's mean luma by [`ColorJitter::contrast`].
    Contrast,
    /// Blend each pixel with its own luma by [`ColorJitter::saturation`].
    Saturation,
    /// Rotate the hue by [`ColorJitter::hue`] of a turn.
    Hue,
}

/// The factors of one albumentations `ColorJitter` draw, applied in `order`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// Multiplies every value (`U(0.8, 1.2)` in the baseline).
    pub brightness: f64,
    /// Blends with the mean luma of the image (`U(0.8, 1.2)`).
    pub contrast: f64,
    /// Blends each pixel with its own luma (`U(0.8, 1.2)`).
    pub saturation: f64,
    /// Shifts the hue by this fraction of a full turn (`U(-0.2, 0.2)`).
    pub hue: f64,
    /// A permutation of the four adjustments (torchvision draws one per call).
    pub order: [JitterOp; 4],
}

/// ITU-R 601 luma, OpenCV's `RGB2GRAY` weights.
fn luma(r: f64, g: f64, b: f64) -> f64 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Shifts the hue of one pixel by `turns` of the colour wheel (through HSV, as OpenCV does).
fn shift_hue(rgb: [f64; 3], turns: f64) -> [f64; 3] {
    let [r, g, b] = rgb;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if delta == 0.0 {
        return rgb; // grey has no hue
    }
    let hue = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    let h = (hue + 6.0 * turns).rem_euclid(6.0);
    let (s, v) = (delta / max, max);
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r1, g1, b1) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r1 + m, g1 + m, b1 + m]
}

/// albumentations `ColorJitter` on an 8-bit image; every adjustment rounds and clips, as the
/// `uint8` path of the library does.
pub fn color_jitter(img: &RgbImage8, jitter: &ColorJitter) -> RgbImage8 {
    let mut out = img.clone();
    for op in jitter.order {
        out = match op {
            JitterOp::Brightness => map_values(&out, |v| v * jitter.brightness),
            JitterOp::Contrast => {
                let n = (out.width * out.height) as f64;
                let mean = out
                    .data
                    .chunks_exact(3)
                    .map(|p| luma(p[0] as f64, p[1] as f64, p[2] as f64))
                    .sum::<f64>()
                    / n;
                let f = jitter.contrast;
                map_values(&out, |v| v * f + mean * (1.0 - f))
            }
            JitterOp::Saturation => {
                let f = jitter.saturation;
                let mut data = Vec::with_capacity(out.data.len());
                for p in out.data.chunks_exact(3) {
                    let grey = luma(p[0] as f64, p[1] as f64, p[2] as f64);
                    data.extend(p.iter().map(|&v| to_u8(v as f64 * f + grey * (1.0 - f))));
                }
                RgbImage8 { data, ..out }
            }
            JitterOp::Hue => {
                let mut data = Vec::with_capacity(out.data.len());
                for p in out.data.chunks_exact(3) {
                    let shifted = shift_hue([p[0] as f64, p[1] as f64, p[2] as f64], jitter.hue);
                    data.extend(shifted.map(to_u8));
                }
                RgbImage8 { data, ..out }
            }
        };
    }
    out
}

/// APRIL-GAN's 2 x 2 mosaic (used by the baseline when training on MVTec-AD): the four images
/// pasted left to right, top to bottom, on a canvas twice the first one's size, their masks
/// likewise. A tile of another size is first resized to the first one's (Pillow bilinear for the
/// image; nearest for the mask, via the 0/255 PIL protocol threshold).
pub fn mosaic_2x2(tiles: [(&RgbImage8, &GrayImage8); 4]) -> Result<(RgbImage8, GrayImage8)> {
    let (w, h) = (tiles[0].0.width, tiles[0].0.height);
    let mut image = vec![0u8; 4 * w * h * 3];
    let mut mask = vec![0u8; 4 * w * h];
    for (i, (img, m)) in tiles.iter().enumerate() {
        if (m.width, m.height) != (img.width, img.height) {
            return Err(Error::Size(format!(
                "mosaic tile {i}: the image is {}x{} but its mask {}x{}",
                img.width, img.height, m.width, m.height
            )));
        }
        let pixels = if (img.width, img.height) == (w, h) {
            img.data.clone()
        } else {
            resize_u8(
                &img.data,
                img.width,
                img.height,
                3,
                w,
                h,
                Filter::PillowBilinear,
            )?
        };
        let labels = if (m.width, m.height) == (w, h) {
            m.data.clone()
        } else {
            let binary: Vec<u8> = m
                .data
                .iter()
                .map(|&v| if v > 0 { 255 } else { 0 })
                .collect();
            resize_u8(&binary, m.width, m.height, 1, w, h, Filter::PillowBilinear)?
                .into_iter()
                .map(|v| if v >= 128 { 255 } else { 0 })
                .collect()
        };
        let (ox, oy) = ((i % 2) * w, (i / 2) * h);
        for y in 0..h {
            let dst = ((oy + y) * 2 * w + ox) * 3;
            image[dst..dst + w * 3].copy_from_slice(&pixels[y * w * 3..(y + 1) * w * 3]);
            let dst = (oy + y) * 2 * w + ox;
            mask[dst..dst + w].copy_from_slice(&labels[y * w..(y + 1) * w]);
        }
    }
    Ok((
        RgbImage8::from_raw(2 * w, 2 * h, image)?,
        GrayImage8::from_raw(2 * w, 2 * h, mask)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> RgbImage8 {
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [
                    (x * 7 % 256) as u8,
                    (y * 11 % 256) as u8,
                    ((x + y) * 5 % 256) as u8,
                ]
            })
            .collect();
        RgbImage8::from_raw(w, h, data).unwrap()
    }

    #[test]
    fn reflect_101_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-3..8).map(|i| reflect_101(i, 5)).collect();
        assert_eq!(idx, vec![3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect_101(-4, 1), 0);
    }

    #[test]
    fn rot90_four_quarter_turns_is_the_identity_and_one_turn_matches_numpy() {
        let img = ramp(5, 3);
        let once = rot90(&img, 1);
        assert_eq!((once.width, once.height), (3, 5));
        // np.rot90(a)[i, j] == a[j, W-1-i]: the top-left output pixel is the top-right input.
        assert_eq!(&once.data[0..3], &img.data[(4) * 3..(4) * 3 + 3]);
        let mut back = img.clone();
        for _ in 0..4 {
            back = rot90(&back, 1);
        }
        assert_eq!(back, img);
        assert_eq!(rot90(&rot90(&img, 1), 3), img);
    }

    #[test]
    fn rotation_by_zero_and_by_a_multiple_of_90_is_exact() {
        let img = ramp(6, 6);
        assert_eq!(rotate(&img, 0.0), img);
        assert_eq!(rotate(&img, 90.0), rot90(&img, 1));
        let mask = GrayImage8::from_raw(6, 6, (0..36).map(|i| (i * 7) as u8).collect()).unwrap();
        assert_eq!(rotate_mask(&mask, -90.0), rot90_mask(&mask, 3));
    }

    #[test]
    fn a_rotated_mask_stays_binary_and_follows_the_image() {
        // A white square on black, and its mask; after any rotation the mask marks the pixels
        // that are (mostly) white.
        let (w, h) = (40, 30);
        let inside = |x: usize, y: usize| (12..20).contains(&x) && (5..13).contains(&y);
        let img = RgbImage8::from_raw(
            w,
            h,
            (0..w * h)
                .flat_map(|i| [if inside(i % w, i / w) { 255 } else { 0 }; 3])
                .collect(),
        )
        .unwrap();
        let mask = GrayImage8::from_raw(
            w,
            h,
            (0..w * h)
                .map(|i| if inside(i % w, i / w) { 255 } else { 0 })
                .collect(),
        )
        .unwrap();
        for deg in [-30.0, -7.5, 12.0, 29.0] {
            let (ri, rm) = (rotate(&img, deg), rotate_mask(&mask, deg));
            assert!(rm.data.iter().all(|&v| v == 0 || v == 255));
            let marked = rm.data.iter().filter(|&&v| v == 255).count();
            assert!((50..=78).contains(&marked), "{deg}: {marked} marked pixels");
            let agree = (0..w * h)
                .filter(|&i| (ri.data[i * 3] >= 128) == (rm.data[i] == 255))
                .count();
            assert!(
                agree >= w * h - 12,
                "{deg}: {} disagreements",
                w * h - agree
            );
        }
    }

    #[test]
    fn brightness_contrast_is_the_clipped_affine_map() {
        let img = RgbImage8::from_raw(2, 1, vec![0, 100, 200, 250, 10, 128]).unwrap();
        let out = brightness_contrast(&img, 1.2, -0.1);
        let expect: Vec<u8> = img
            .data
            .iter()
            .map(|&v| (v as f64 * 1.2 - 25.5).round().clamp(0.0, 255.0) as u8)
            .collect();
        assert_eq!(out.data, expect);
        assert_eq!(brightness_contrast(&img, 1.0, 0.0), img);
    }

    #[test]
    fn noise_adds_the_drawn_values_and_clips() {
        let img = RgbImage8::from_raw(1, 1, vec![0, 128, 250]).unwrap();
        let mut draws = [1.0, -2.0, 3.0].into_iter();
        let out = add_gaussian_noise(&img, 4.0, || draws.next().unwrap());
        assert_eq!(out.data, vec![4, 120, 255]);
    }

    #[test]
    fn blurs_keep_flat_images_and_mass_and_match_opencv_kernels() {
        let flat = RgbImage8::from_raw(7, 5, vec![93; 105]).unwrap();
        assert_eq!(box_blur(&flat, 3).unwrap(), flat);
        assert_eq!(gaussian_blur(&flat, 5, 0.0).unwrap(), flat);
        // cv2.getGaussianKernel(3, 0) == [0.25, 0.5, 0.25]; ksize 5 gives sigma 1.1.
        let k3 = gaussian_kernel(3, 0.0).unwrap();
        for (a, b) in k3.iter().zip([0.25, 0.5, 0.25]) {
            assert!((a - b).abs() < 1e-12);
        }
        let k5 = gaussian_kernel(5, 0.0).unwrap();
        assert_eq!(k5, vec![0.0625, 0.25, 0.375, 0.25, 0.0625]);
        // Beyond 7 taps the sampled Gaussian: ksize 9 has sigma 1.7.
        let k9 = gaussian_kernel(9, 0.0).unwrap();
        let g = |i: f64| (-(i * i) / (2.0 * 1.7 * 1.7)).exp();
        assert!((k9[4] / k9[0] - g(0.0) / g(4.0)).abs() < 1e-9);
        assert!((k9.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(box_blur(&flat, 4).is_err());
        // A single bright pixel spreads into the 3x3 box: 9 pixels of 255/9 each.
        let mut data = vec![0u8; 5 * 5 * 3];
        data[(2 * 5 + 2) * 3] = 255;
        let spot = RgbImage8::from_raw(5, 5, data).unwrap();
        let blurred = box_blur(&spot, 3).unwrap();
        let lit: Vec<u8> = blurred.data.iter().step_by(3).copied().collect();
        assert_eq!(lit.iter().filter(|&&v| v == 28).count(), 9);
        assert_eq!(lit.iter().filter(|&&v| v == 0).count(), 16);
    }

    #[test]
    fn color_jitter_identity_factors_keep_the_image_and_hue_turns_wrap() {
        let img = ramp(9, 4);
        let order = [
            JitterOp::Hue,
            JitterOp::Brightness,
            JitterOp::Saturation,
            JitterOp::Contrast,
        ];
        let id = ColorJitter {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
            order,
        };
        assert_eq!(color_jitter(&img, &id), img);
        // A third of a turn maps pure red to pure green; a full turn is the identity.
        let red = RgbImage8::from_raw(1, 1, vec![255, 0, 0]).unwrap();
        let third = ColorJitter {
            hue: 1.0 / 3.0,
            ..id
        };
        assert_eq!(color_jitter(&red, &third).data, vec![0, 255, 0]);
        let full = ColorJitter { hue: 1.0, ..id };
        let wrapped = color_jitter(&img, &full);
        for (a, b) in wrapped.data.iter().zip(&img.data) {
            assert!((*a as i32 - *b as i32).abs() <= 1);
        }
        // Saturation 0 leaves only luma.
        let grey = color_jitter(
            &red,
            &ColorJitter {
                saturation: 0.0,
                ..id
            },
        );
        assert_eq!(grey.data, vec![76, 76, 76]);
    }

    #[test]
    fn mosaic_places_tiles_and_masks_in_reading_order() {
        let tile = |v: u8, w: usize, h: usize| {
            (
                RgbImage8::from_raw(w, h, vec![v; w * h * 3]).unwrap(),
                GrayImage8::from_raw(w, h, vec![if v.is_multiple_of(2) { 255 } else { 0 }; w * h])
                    .unwrap(),
            )
        };
        let (a, b, c, d) = (
            tile(10, 4, 3),
            tile(21, 4, 3),
            tile(30, 8, 6),
            tile(41, 4, 3),
        );
        let (img, mask) =
            mosaic_2x2([(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)]).unwrap();
        assert_eq!((img.width, img.height), (8, 6));
        let px = |x: usize, y: usize| img.data[(y * 8 + x) * 3];
        assert_eq!([px(0, 0), px(7, 0), px(0, 5), px(7, 5)], [10, 21, 30, 41]);
        assert_eq!(
            [
                mask.data[0],
                mask.data[7],
                mask.data[5 * 8],
                mask.data[5 * 8 + 7]
            ],
            [255, 0, 255, 0]
        );
        let bad = GrayImage8::from_raw(2, 2, vec![0; 4]).unwrap();
        assert!(mosaic_2x2([(&a.0, &bad), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)]).is_err());
    }
}
