//! Anomaly maps and GT masks as files: reading anyone's maps for `ssvp metrics`, and writing
//! ours (`ssvp eval --save-maps`, `ssvp detect`'s `maps/`).
//!
//! Maps: `.npy` (2-D float32 or float64, either byte order, C or Fortran order; leading
//! singleton axes are squeezed), `.tif`/`.tiff` (single-channel float32, 8 or 16-bit), `.png`
//! (8 or 16-bit grayscale, scaled to [0, 1]). float64 maps are rounded to float32, the
//! precision every metric here works in. Masks: any PNG (or other decodable image); a pixel is
//! anomalous when any colour channel is non-zero.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ssvp_image::ColorScale;

use crate::postprocess::{AnomalyMap, Grid, GtMask};

/// Why a map or mask file could not be read or a map not encoded.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// A `.npy` file that is malformed or not a 2-D float array.
    #[error("not a valid .npy file: {0}")]
    Npy(String),
    /// A PNG map or a mask that does not decode.
    #[error("cannot decode image: {0}")]
    Image(#[from] image::ImageError),
    /// A TIFF map that does not decode.
    #[error("cannot decode TIFF: {0}")]
    Tiff(#[from] tiff::TiffError),
    /// A file that decodes but is no usable map (extension, channels, sample format, size).
    #[error("unsupported map: {0}")]
    Unsupported(String),
}

/// Reads an anomaly map, choosing the decoder by file extension.
pub fn read_map(path: &Path) -> Result<AnomalyMap, MapError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "npy" => {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            parse_npy(&bytes)
        }
        "tif" | "tiff" => read_tiff_map(path),
        "png" => read_png_map(path),
        other => Err(MapError::Unsupported(format!(
            "extension {other:?} (expected npy, tif, tiff or png)"
        ))),
    }
}

/// Parses a `.npy` buffer holding a 2-D float array (see the module docs).
pub fn parse_npy(bytes: &[u8]) -> Result<AnomalyMap, MapError> {
    let bad = |m: &str| MapError::Npy(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, offset) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(MapError::Npy(format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(offset..offset + header_len)
        .ok_or_else(|| bad("header runs past the end of the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = header_value(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = match header_value(header, "fortran_order")? {
        "True" => true,
        "False" => false,
        v => return Err(MapError::Npy(format!("bad fortran_order {v:?}"))),
    };
    let shape_text = header_value(header, "shape")?;
    let dims: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| MapError::Npy(format!("bad shape {shape_text}")))?;
    let mut squeezed: Vec<usize> = dims.clone();
    while squeezed.len() > 2 && squeezed[0] == 1 {
        squeezed.remove(0);
    }
    if squeezed.len() != 2 {
        return Err(MapError::Unsupported(format!(
            "npy array of shape {dims:?}; a map must be 2-D (H, W)"
        )));
    }
    let (height, width) = (squeezed[0], squeezed[1]);
    let count = height * width;
    let data = &bytes[offset + header_len..];
    let (size, little) = match descr {
        "<f4" | "=f4" => (4, true),
        ">f4" => (4, false),
        "<f8" | "=f8" => (8, true),
        ">f8" => (8, false),
        other => {
            return Err(MapError::Unsupported(format!(
                "npy dtype {other:?} (expected float32 '<f4' or float64 '<f8')"
            )))
        }
    };
    if data.len() < count * size {
        return Err(MapError::Npy(format!(
            "{} data bytes for shape {dims:?} of {size}-byte floats",
            data.len()
        )));
    }
    let values: Vec<f32> = data[..count * size]
        .chunks_exact(size)
        .map(|c| match (size, little) {
            (4, true) => f32::from_le_bytes(c.try_into().unwrap()),
            (4, false) => f32::from_be_bytes(c.try_into().unwrap()),
            (_, true) => f64::from_le_bytes(c.try_into().unwrap()) as f32,
            (_, false) => f64::from_be_bytes(c.try_into().unwrap()) as f32,
        })
        .collect();
    let values = if fortran {
        // Column-major storage: element (y, x) sits at x * height + y.
        let mut rows = vec![0f32; count];
        for y in 0..height {
            for x in 0..width {
                rows[y * width + x] = values[x * height + y];
            }
        }
        rows
    } else {
        values
    };
    Grid::new(width, height, values).map_err(|e| MapError::Npy(e.to_string()))
}

/// The raw text of `'key': value` in a npy header dict (value up to the next top-level comma).
fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str, MapError> {
    let pattern_single = format!("'{key}':");
    let pattern_double = format!("\"{key}\":");
    let start = header
        .find(&pattern_single)
        .map(|i| i + pattern_single.len())
        .or_else(|| {
            header
                .find(&pattern_double)
                .map(|i| i + pattern_double.len())
        })
        .ok_or_else(|| MapError::Npy(format!("header has no {key:?}")))?;
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| MapError::Npy(format!("unterminated {key:?} in header")))?;
    Ok(rest[..end].trim())
}

fn read_tiff_map(path: &Path) -> Result<AnomalyMap, MapError> {
    use tiff::decoder::{Decoder, DecodingResult};
    let mut decoder = Decoder::new(BufReader::new(File::open(path)?))?;
    let (width, height) = decoder.dimensions()?;
    let color = decoder.colortype()?;
    if !matches!(color, tiff::ColorType::Gray(_)) {
        return Err(MapError::Unsupported(format!(
            "TIFF colour type {color:?}; a map must be single-channel"
        )));
    }
    let values: Vec<f32> = match decoder.read_image()? {
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        DecodingResult::U8(v) => v.into_iter().map(|x| x as f32 / 255.0).collect(),
        DecodingResult::U16(v) => v.into_iter().map(|x| x as f32 / 65535.0).collect(),
        _ => {
            return Err(MapError::Unsupported(
                "TIFF sample format (expected float32, float64, u8 or u16)".into(),
            ))
        }
    };
    Grid::new(width as usize, height as usize, values)
        .map_err(|e| MapError::Unsupported(e.to_string()))
}

fn read_png_map(path: &Path) -> Result<AnomalyMap, MapError> {
    let img = image::open(path)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let values: Vec<f32> = match img {
        image::DynamicImage::ImageLuma8(b) => {
            b.into_raw().into_iter().map(|v| v as f32 / 255.0).collect()
        }
        image::DynamicImage::ImageLuma16(b) => b
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 65535.0)
            .collect(),
        other => {
            return Err(MapError::Unsupported(format!(
                "PNG colour type {:?}; a map must be 8 or 16-bit grayscale",
                other.color()
            )))
        }
    };
    Grid::new(width, height, values).map_err(|e| MapError::Unsupported(e.to_string()))
}

/// A 2-D little-endian float32 `.npy` (format 1.0) of `map`, the layout `numpy.load` and
/// [`parse_npy`] read.
pub fn npy_bytes(map: &AnomalyMap) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.height, map.width
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * map.data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in &map.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// The file formats a map can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFormat {
    /// 16-bit grayscale PNG of the map scaled by a [`ColorScale`] (see [`png16_levels`]): small
    /// and viewable, 1/65535 of the scale's range in resolution.
    Png16,
    /// float32 `.npy`: exact values.
    Npy,
    /// float32 single-channel TIFF: exact values, opened by image tools.
    Tiff,
}

impl MapFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            MapFormat::Png16 => "png",
            MapFormat::Npy => "npy",
            MapFormat::Tiff => "tiff",
        }
    }
}

impl std::str::FromStr for MapFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "png" | "png16" => Ok(MapFormat::Png16),
            "npy" => Ok(MapFormat::Npy),
            "tif" | "tiff" => Ok(MapFormat::Tiff),
            other => Err(format!(
                "unknown map format `{other}` (expected png, npy or tiff)"
            )),
        }
    }
}

/// The 16-bit levels of a map: `round(clamp((v - lo) / (hi - lo), 0, 1) * 65535)`, so a reader
/// recovers `v = lo + level / 65535 * (hi - lo)` inside the scale. With the default scale
/// `[0, 1]` of probability maps this is `v * 65535`, which [`read_map`] reads back as `v`.
pub fn png16_levels(map: &AnomalyMap, scale: ColorScale) -> Vec<u16> {
    let span = scale.hi - scale.lo;
    map.data
        .iter()
        .map(|&v| {
            let t = if span > 0.0 && v.is_finite() {
                ((v - scale.lo) / span).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (t * 65535.0).round() as u16
        })
        .collect()
}

/// Encodes `map` in `format` (`scale` is used by [`MapFormat::Png16`] only).
pub fn encode_map(
    map: &AnomalyMap,
    format: MapFormat,
    scale: ColorScale,
) -> Result<Vec<u8>, MapError> {
    let encoded = match format {
        MapFormat::Npy => return Ok(npy_bytes(map)),
        MapFormat::Png16 => {
            ssvp_image::encode_png_gray16(map.width, map.height, &png16_levels(map, scale))
        }
        MapFormat::Tiff => ssvp_image::encode_tiff_gray32f(map.width, map.height, &map.data),
    };
    encoded.map_err(|e| MapError::Unsupported(e.to_string()))
}

/// Reads a GT mask: anomalous where any colour channel is non-zero (alpha ignored).
pub fn read_mask(path: &Path) -> Result<GtMask, MapError> {
    let img = image::open(path)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data: Vec<bool> = match img {
        image::DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(|v| v != 0).collect(),
        image::DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().map(|v| v != 0).collect(),
        other => other
            .into_rgba16()
            .pixels()
            .map(|p| p.0[..3].iter().any(|&c| c != 0))
            .collect(),
    };
    Grid::new(width, height, data).map_err(|e| MapError::Unsupported(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn npy_dtypes_orders_and_errors() {
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f4: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let map = parse_npy(&npy("<f4", false, "(2, 3)", &f4)).unwrap();
        assert_eq!((map.width, map.height), (3, 2));
        assert_eq!(map.data, values);
        let f8: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect();
        let map = parse_npy(&npy("<f8", false, "(1, 2, 3)", &f8)).unwrap();
        assert_eq!(map.data, values);
        // Fortran order: the same bytes read column-major.
        let map = parse_npy(&npy("<f4", true, "(3, 2)", &f4)).unwrap();
        assert_eq!(map.data, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert!(parse_npy(&npy("<i4", false, "(2, 3)", &f4)).is_err());
        assert!(parse_npy(&npy("<f4", false, "(2, 3, 2)", &f4)).is_err());
        assert!(parse_npy(&npy("<f4", false, "(4, 3)", &f4)).is_err());
        assert!(parse_npy(b"not a npy").is_err());
    }

    #[test]
    fn float32_tiff_maps_are_read_exactly() {
        use tiff::encoder::{colortype::Gray32Float, TiffEncoder};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tiff");
        let values = [0.1f32, -2.5, 3.25, 1e-8, 0.0, 7.0];
        let file = std::fs::File::create(&path).unwrap();
        TiffEncoder::new(file)
            .unwrap()
            .write_image::<Gray32Float>(3, 2, &values)
            .unwrap();
        let map = read_map(&path).unwrap();
        assert_eq!((map.width, map.height), (3, 2));
        assert_eq!(map.data, values);
        assert!(read_map(&dir.path().join("m.bmp")).is_err());
    }
}
