//! Decoding PNG, JPEG, BMP and TIFF files (8 or 16 bits; gray, gray+alpha, RGB, RGBA) to 8-bit
//! RGB images and 8-bit single-channel masks.
//!
//! Conversions, and where they differ from Pillow's `Image.open(p).convert(...)`:
//! - gray is replicated to the three channels, alpha is dropped (not composited), as Pillow does;
//! - 16-bit samples become `round(v / 257)`, the exact rescaling of 0..65535 onto 0..255. Pillow
//!   reads 16-bit RGB(A) PNGs as 8-bit by keeping the high byte (`v >> 8`, at most 1 LSB away from
//!   ours) and opens 16-bit gray as mode `I;16`, whose `convert("RGB")`/`convert("L")` clips
//!   values above 255 to white — almost never what a 16-bit mask or image means, so we rescale;
//! - RGB to gray uses Pillow's `convert("L")` formula (ITU-R 601-2 luma in 16-bit fixed point),
//!   so RGB-saved masks match Pillow exactly;
//! - EXIF orientation is ignored, as `Image.open` ignores it.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageError};

use crate::error::{Error, Result};

/// An 8-bit RGB image, interleaved row-major (`HWC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// An 8-bit single-channel image (e.g. a ground-truth mask), row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage8 {
    /// Wraps an interleaved RGB buffer, checking its length.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        check_len(width, height, 3, data.len())?;
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

impl GrayImage8 {
    /// Wraps a single-channel buffer, checking its length.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        check_len(width, height, 1, data.len())?;
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

fn check_len(width: usize, height: usize, channels: usize, len: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::Buffer(format!("empty image {width}x{height}")));
    }
    if width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels))
        != Some(len)
    {
        return Err(Error::Buffer(format!(
            "buffer has {len} bytes, expected {width}x{height}x{channels}"
        )));
    }
    Ok(())
}

/// Reads and decodes an image file (format from its content, not its extension) to RGB8.
pub fn load_rgb8(path: impl AsRef<Path>) -> Result<RgbImage8> {
    let path = path.as_ref();
    to_rgb8(read(path)?, path)
}

/// Decodes an in-memory encoded image to RGB8.
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage8> {
    let path = Path::new("<memory>");
    to_rgb8(decode(bytes, path)?, path)
}

/// Reads an image file as one 8-bit channel: gray as is, colour through Pillow's luma formula,
/// alpha dropped. Meant for ground-truth masks.
pub fn load_gray8(path: impl AsRef<Path>) -> Result<GrayImage8> {
    let path = path.as_ref();
    to_gray8(read(path)?, path)
}

/// Decodes an in-memory encoded image to one 8-bit channel (see [`load_gray8`]).
pub fn decode_gray8(bytes: &[u8]) -> Result<GrayImage8> {
    let path = Path::new("<memory>");
    to_gray8(decode(bytes, path)?, path)
}

fn read(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path)
}

fn decode(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            message: "not a PNG, JPEG, BMP or TIFF file".into(),
        });
    }
    reader.decode().map_err(|e| image_error(e, path))
}

fn image_error(e: ImageError, path: &Path) -> Error {
    let path: PathBuf = path.to_path_buf();
    match e {
        ImageError::Unsupported(u) => Error::Unsupported {
            path,
            message: u.to_string(),
        },
        ImageError::IoError(source) => Error::Io { path, source },
        other => Error::Decode {
            path,
            message: other.to_string(),
        },
    }
}

/// `round(v / 257)` in integers: maps 0..=65535 exactly onto 0..=255.
#[inline]
fn u16_to_u8(v: u16) -> u8 {
    ((v as u32 * 2 + 257) / 514) as u8
}

#[inline]
fn f32_to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Pillow's `convert("L")`: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
#[inline]
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Samples of a decoded image as 8-bit values with their channel count (1 to 4).
fn samples_u8(img: DynamicImage, path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, data) = match img {
        DynamicImage::ImageLuma8(b) => (1, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (2, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
        DynamicImage::ImageLuma16(b) => (1, b.into_raw().into_iter().map(u16_to_u8).collect()),
        DynamicImage::ImageLumaA16(b) => (2, b.into_raw().into_iter().map(u16_to_u8).collect()),
        DynamicImage::ImageRgb16(b) => (3, b.into_raw().into_iter().map(u16_to_u8).collect()),
        DynamicImage::ImageRgba16(b) => (4, b.into_raw().into_iter().map(u16_to_u8).collect()),
        DynamicImage::ImageRgb32F(b) => (3, b.into_raw().into_iter().map(f32_to_u8).collect()),
        DynamicImage::ImageRgba32F(b) => (4, b.into_raw().into_iter().map(f32_to_u8).collect()),
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                message: format!("pixel layout {:?}", other.color()),
            })
        }
    };
    if w == 0 || h == 0 {
        return Err(Error::Decode {
            path: path.to_path_buf(),
            message: format!("image has no pixels ({w}x{h})"),
        });
    }
    Ok((w, h, channels, data))
}

fn to_rgb8(img: DynamicImage, path: &Path) -> Result<RgbImage8> {
    let (width, height, channels, src) = samples_u8(img, path)?;
    let data = match channels {
        3 => src,
        1 => src.iter().flat_map(|&v| [v, v, v]).collect(),
        2 => src
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        _ => src
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    };
    Ok(RgbImage8 {
        width,
        height,
        data,
    })
}

fn to_gray8(img: DynamicImage, path: &Path) -> Result<GrayImage8> {
    let (width, height, channels, src) = samples_u8(img, path)?;
    let data = match channels {
        1 => src,
        2 => src.chunks_exact(2).map(|p| p[0]).collect(),
        c => src
            .chunks_exact(c)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
    };
    Ok(GrayImage8 {
        width,
        height,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_rounding() {
        assert_eq!(u16_to_u8(0), 0);
        assert_eq!(u16_to_u8(65535), 255);
        assert_eq!(u16_to_u8(128), 0); // 0.498
        assert_eq!(u16_to_u8(129), 1); // 0.502
        for v in 0..=255u16 {
            assert_eq!(u16_to_u8(v * 257), v as u8);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = decode_rgb8(b"definitely not an image").unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        // A PNG signature followed by nothing valid.
        let err = decode_rgb8(b"\x89PNG\r\n\x1a\n\0\0\0\0garbage").unwrap_err();
        assert!(err.to_string().contains("<memory>"), "{err}");
    }
}
