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
//!
//! [`load_rgb8`], [`decode_rgb8`], [`load_gray8`] and [`decode_gray8`] are the evaluation
//! loaders and keep exactly this behaviour. Images supplied by users (the CLI's inputs) go through [`load_rgb8_checked`] / [`decode_rgb8_checked`] instead, which
//! refuse decompression bombs before allocating, optionally apply the EXIF orientation (a phone
//! photo is then seen upright, as viewers show it) and report what the file was.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat};

use crate::error::{Error, Result};

/// An 8-bit RGB image, interleaved row-major (`HWC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes: R, G, B per pixel, rows top to bottom.
    pub data: Vec<u8>,
}

/// An 8-bit single-channel image (e.g. a ground-truth mask), row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` bytes, rows top to bottom.
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

pub(crate) fn check_len(width: usize, height: usize, channels: usize, len: usize) -> Result<()> {
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

/// How the evaluation reads images: as stored (EXIF ignored, like Pillow's `Image.open`, since
/// GT masks are in stored order) and without a pixel budget (a benchmark is trusted data).
const AS_STORED: DecodeOptions = DecodeOptions {
    max_pixels: u64::MAX,
    orientation: ExifOrientation::Ignore,
};

/// Reads and decodes an image file (format from its content, not its extension) to RGB8, as
/// stored. The one decoder of [`decode_rgb8_checked`], with no pixel budget and EXIF ignored.
pub fn load_rgb8(path: impl AsRef<Path>) -> Result<RgbImage8> {
    Ok(load_rgb8_checked(path, &AS_STORED)?.image)
}

/// Decodes an in-memory encoded image to RGB8, as stored (see [`load_rgb8`]).
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage8> {
    Ok(decode_rgb8_checked(bytes, Path::new("<memory>"), &AS_STORED)?.image)
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
                message: format!("pixel layout {}", color_name(other.color().into())),
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

/// Default pixel budget of the checked decoders: 100 Mpx (10000x10000). Larger than the frames
/// of common inspection cameras, small enough that the worst decoded layout (RGBA `f32`, 1.6 GB)
/// still fits in memory, while a few-kilobyte file claiming 60000x60000 is refused.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Bytes per pixel of the widest sample layout a decoder can produce (RGBA `f32`), used to turn
/// the pixel budget into an allocation limit for the decoder itself.
const MAX_BYTES_PER_PIXEL: u64 = 16;

/// What to do with an EXIF orientation tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExifOrientation {
    /// Rotate/flip the pixels so the image is upright, as photo viewers display it. The default
    /// for user images: anomaly maps are drawn over what the user sees.
    #[default]
    Apply,
    /// Keep the stored pixel order, as Pillow's `Image.open` and the evaluation loaders do.
    Ignore,
}

/// Options of [`decode_rgb8_checked`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Refuse images whose header claims more pixels than this, before any pixel memory is
    /// allocated (decompression bombs). Default [`DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
    /// EXIF orientation handling. Default [`ExifOrientation::Apply`].
    pub orientation: ExifOrientation,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            orientation: ExifOrientation::Apply,
        }
    }
}

/// What an input file was, for reports (a result should say what it was computed from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// `"png"`, `"jpeg"`, `"bmp"` or `"tiff"`, from the content, not the extension.
    pub format: &'static str,
    /// Stored size from the header, before any orientation is applied.
    pub width: usize,
    /// Stored height, see [`SourceInfo::width`].
    pub height: usize,
    /// Stored pixel layout, lower case: `"l8"`, `"la8"`, `"rgb8"`, `"rgba8"`, `"l16"`,
    /// `"rgb16"`, `"rgba16"`, `"rgb32f"`, `"cmyk8"`, `"l1"`, ...; `"p1"`..`"p8"` for palette PNGs
    /// (decoded expanded to RGB(A)). JPEGs with four components report `"cmyk8"` (Adobe YCCK
    /// files included), since that is what was converted to RGB.
    pub color: String,
    /// The EXIF orientation tag, 1..=8, 1 when absent or unreadable.
    pub exif_orientation: u8,
    /// Whether the pixels were rotated/flipped for it (false when the tag is 1 or ignored).
    pub orientation_applied: bool,
}

/// An image decoded by [`decode_rgb8_checked`], with a description of the source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The pixels, upright if the orientation was applied.
    pub image: RgbImage8,
    /// What the file was.
    pub info: SourceInfo,
}

/// Reads and decodes a user-supplied image to RGB8 with the safeguards of
/// [`decode_rgb8_checked`].
pub fn load_rgb8_checked(path: impl AsRef<Path>, opts: &DecodeOptions) -> Result<Decoded> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb8_checked(&bytes, path, opts)
}

/// Decodes a user-supplied PNG, JPEG, BMP or TIFF (format from the content) to RGB8; `name`
/// only labels errors.
///
/// Unlike [`decode_rgb8`], it refuses images over `opts.max_pixels` from their header alone
/// ([`Error::TooLarge`]), passes a matching allocation limit to the decoders that take one (PNG,
/// TIFF), and applies the EXIF orientation unless told not to. Pixel conversion is the same as
/// [`decode_rgb8`]'s: gray is replicated, alpha is dropped rather than composited (as Pillow's
/// `convert("RGB")` and the evaluation loaders do, so a transparent background shows its stored
/// colour), 16-bit samples become `round(v / 257)`, palettes are expanded, CMYK is converted by
/// the JPEG/TIFF decoder (for JPEG, `R = C·K/255` on the stored, Adobe-inverted samples).
///
/// Malformed input is an error, never a panic. One exception to "truncated is an error": the
/// JPEG decoder is lenient, and a JPEG cut short decodes with the missing part filled in (grey
/// for a baseline file), like libjpeg-based viewers show it.
pub fn decode_rgb8_checked(bytes: &[u8], name: &Path, opts: &DecodeOptions) -> Result<Decoded> {
    let path = || name.to_path_buf();
    if bytes.is_empty() {
        return Err(Error::Decode {
            path: path(),
            message: "empty file (0 bytes)".into(),
        });
    }
    let unsupported = || Error::Unsupported {
        path: path(),
        message: "not a PNG, JPEG, BMP or TIFF file".into(),
    };
    let format = image::guess_format(bytes).map_err(|_| unsupported())?;
    let (format_name, png_header) = match format {
        ImageFormat::Png => ("png", png_ihdr(bytes)),
        ImageFormat::Jpeg => ("jpeg", None),
        ImageFormat::Bmp => ("bmp", None),
        ImageFormat::Tiff => ("tiff", None),
        _ => return Err(unsupported()),
    };
    let too_large = |width: u32, height: u32| {
        (width as u64 * height as u64 > opts.max_pixels).then(|| Error::TooLarge {
            path: path(),
            width: width as u64,
            height: height as u64,
            max_pixels: opts.max_pixels,
        })
    };
    // The PNG decoder reads every chunk up to the first IDAT while it is being constructed, so
    // the header is checked by hand first: a bomb is refused even if it is only an IHDR.
    if let Some(ihdr) = &png_header {
        if let Some(e) = too_large(ihdr.width, ihdr.height) {
            return Err(e);
        }
    }

    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| checked_image_error(e, name))?;
    let (width, height) = decoder.dimensions();
    if let Some(e) = too_large(width, height) {
        return Err(e);
    }
    if width == 0 || height == 0 {
        return Err(Error::Decode {
            path: path(),
            message: format!("image has no pixels ({width}x{height})"),
        });
    }
    let color = match (&png_header, format) {
        (Some(ihdr), _) => ihdr.color(),
        (None, ImageFormat::Jpeg) if jpeg_components(bytes) == Some(4) => "cmyk8".into(),
        _ => color_name(decoder.original_color_type()),
    };
    // A damaged EXIF block should not make an otherwise readable image unusable: treat it as
    // absent.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| checked_image_error(e, name))?;
    let apply = opts.orientation == ExifOrientation::Apply
        && orientation != image::metadata::Orientation::NoTransforms;
    if apply {
        img.apply_orientation(orientation);
    }
    let image = to_rgb8(img, name)?;
    Ok(Decoded {
        image,
        info: SourceInfo {
            format: format_name,
            width: width as usize,
            height: height as usize,
            color,
            exif_orientation: orientation.to_exif(),
            orientation_applied: apply,
        },
    })
}

/// Like [`image_error`], but for data already in memory, where an I/O error from a decoder can
/// only mean the data ended early: that is a damaged file ([`Error::Decode`]), not a failing
/// disk, and the message says so.
fn checked_image_error(e: ImageError, path: &Path) -> Error {
    match e {
        ImageError::IoError(source) => Error::Decode {
            path: path.to_path_buf(),
            message: if source.kind() == std::io::ErrorKind::UnexpectedEof {
                "truncated file (unexpected end of data)".into()
            } else {
                source.to_string()
            },
        },
        other => image_error(other, path),
    }
}

/// `image`'s colour type names, lower-cased: `Rgb16` -> `"rgb16"`, `Cmyk8` -> `"cmyk8"`.
fn color_name(c: image::ExtendedColorType) -> String {
    format!("{c:?}").to_lowercase()
}

/// The fields of a PNG's IHDR chunk that matter before decoding.
struct PngHeader {
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
}

impl PngHeader {
    fn color(&self) -> String {
        let kind = match self.color_type {
            0 => "l",
            2 => "rgb",
            3 => "p",
            4 => "la",
            6 => "rgba",
            _ => "unknown",
        };
        format!("{kind}{}", self.bit_depth)
    }
}

/// Parses the IHDR chunk, which the PNG spec requires to come first, right after the signature.
fn png_ihdr(bytes: &[u8]) -> Option<PngHeader> {
    let chunk = bytes.get(8..8 + 8 + 13)?;
    if &chunk[4..8] != b"IHDR" {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes(chunk[i..i + 4].try_into().unwrap());
    Some(PngHeader {
        width: be32(8),
        height: be32(12),
        bit_depth: chunk[16],
        color_type: chunk[17],
    })
}

/// Number of components in a JPEG's frame header. `image` reports a CMYK JPEG as the RGB it
/// converts it to, so the SOF marker is read directly to say what the file really was.
fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    let mut i = 2; // after SOI
    loop {
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        // Markers may be preceded by any number of 0xFF fill bytes.
        while *bytes.get(i + 1)? == 0xFF {
            i += 1;
        }
        let marker = *bytes.get(i + 1)?;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]) as usize;
        match marker {
            // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC): length, precision, height,
            // width, then the component count.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return bytes.get(i + 9).copied()
            }
            0xDA | 0xD9 => return None,
            _ => i += 2 + len,
        }
    }
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
