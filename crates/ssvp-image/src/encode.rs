//! Encoding overlays and maps for users: PNG (lossless, for overlays and 16-bit maps), JPEG
//! (small previews) and float32 TIFF (maps at full precision for downstream tools).

use std::io::Cursor;

use image::{ExtendedColorType, ImageEncoder};

use crate::decode::{check_len, RgbImage8};
use crate::error::{Error, Result};

fn encode_error(format: &str, e: impl std::fmt::Display) -> Error {
    Error::Encode(format!("{format}: {e}"))
}

/// Sizes as the encoders take them; images this crate decodes always fit, but buffers built by
/// callers might not.
fn dims_u32(width: usize, height: usize) -> Result<(u32, u32)> {
    match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(Error::Size(format!(
            "{width}x{height} is too large to encode"
        ))),
    }
}

/// Encodes an RGB8 image as PNG.
pub fn encode_png_rgb8(img: &RgbImage8) -> Result<Vec<u8>> {
    check_len(img.width, img.height, 3, img.data.len())?;
    let (w, h) = dims_u32(img.width, img.height)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&img.data, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| encode_error("PNG", e))?;
    Ok(out)
}

/// Encodes row-major 16-bit samples as a single-channel 16-bit PNG, the lossless way to hand an
/// anomaly map to image viewers and to tools that read `uint16` masks.
pub fn encode_png_gray16(width: usize, height: usize, data: &[u16]) -> Result<Vec<u8>> {
    check_len(width, height, 1, data.len())?;
    let (w, h) = dims_u32(width, height)?;
    // `image`'s encoders take 16-bit samples in native byte order and write PNG's big endian.
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&bytes, w, h, ExtendedColorType::L16)
        .map_err(|e| encode_error("PNG", e))?;
    Ok(out)
}

/// Encodes an RGB8 image as baseline JPEG at `quality` 1..=100 (lossy: for previews only, never
/// for maps that are read back).
pub fn encode_jpeg_rgb8(img: &RgbImage8, quality: u8) -> Result<Vec<u8>> {
    check_len(img.width, img.height, 3, img.data.len())?;
    if !(1..=100).contains(&quality) {
        return Err(Error::Encode(format!(
            "JPEG quality must be 1..=100, got {quality}"
        )));
    }
    let (w, h) = dims_u32(img.width, img.height)?;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(&img.data, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| encode_error("JPEG", e))?;
    Ok(out)
}

/// Encodes row-major `f32` values as a single-channel float32 TIFF (`SampleFormat` IEEEFP,
/// uncompressed), readable by `tifffile`, PIL (mode `F`) and the evaluation's map reader: raw
/// scores survive exactly, unlike any 8/16-bit quantisation.
pub fn encode_tiff_gray32f(width: usize, height: usize, data: &[f32]) -> Result<Vec<u8>> {
    check_len(width, height, 1, data.len())?;
    let (w, h) = dims_u32(width, height)?;
    let mut out = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut out)
        .and_then(|mut enc| enc.write_image::<tiff::encoder::colortype::Gray32Float>(w, h, data))
        .map_err(|e| encode_error("TIFF", e))?;
    Ok(out.into_inner())
}
