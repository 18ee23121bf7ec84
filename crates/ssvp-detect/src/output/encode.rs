//! A detection's pictures as bytes: the anomaly map, the overlay and the region mask. The files
//! of a batch run ([`super::files`]) and the server's answers are made here, so a map PNG from
//! `ssvp serve` is byte for byte the one `ssvp detect` writes.

use ssvp_eval::maps::io::encode_map;
use ssvp_eval::maps::regions::regions_above;
use ssvp_image::{blend, colorize, draw_outlines, RgbImage8};

pub use ssvp_eval::maps::io::MapFormat;
pub use ssvp_image::ColorScale;

use crate::detection::Detection;
use crate::error::{Error, Result};

/// The detection's map in `format` (16-bit PNG levels on `scale`, or exact float32 npy/TIFF).
pub fn map_bytes(detection: &Detection, format: MapFormat, scale: ColorScale) -> Result<Vec<u8>> {
    encode_map(&detection.map, format, scale)
        .map_err(|e| Error::model_msg(format!("encoding the map: {e}")))
}

/// The overlay: the image with the map blended in on the fixed colour scale, and the outlines
/// of the detection's regions (white, about 1/300 of the image's shorter side thick).
pub fn overlay(
    image: &RgbImage8,
    detection: &Detection,
    scale: ColorScale,
    alpha: f32,
    min_region_area: usize,
) -> Result<RgbImage8> {
    let map = &detection.map;
    let heat = colorize(&map.data, map.width, map.height, scale)?;
    let mut out = blend(image, &heat, alpha)?;
    if !detection.regions.is_empty() {
        if let Some(mask) = region_mask(detection, min_region_area) {
            let thickness = (image.width.min(image.height) / 300).max(1);
            draw_outlines(&mut out, &mask, [255, 255, 255], thickness)?;
        }
    }
    Ok(out)
}

/// [`overlay`] as a JPEG of `quality`.
pub fn overlay_jpeg(
    image: &RgbImage8,
    detection: &Detection,
    scale: ColorScale,
    alpha: f32,
    min_region_area: usize,
    quality: u8,
) -> Result<Vec<u8>> {
    let over = overlay(image, detection, scale, alpha, min_region_area)?;
    Ok(ssvp_image::encode_jpeg_rgb8(&over, quality)?)
}

/// Per map pixel (row-major), whether it lies in one of the detection's regions: the map above
/// the pixel threshold, without the regions smaller than `min_region_area`. `None` when no
/// pixel threshold is known (no regions were extracted).
pub fn region_mask(detection: &Detection, min_region_area: usize) -> Option<Vec<bool>> {
    detection
        .pixel_threshold
        .map(|t| regions_above(&detection.map, t, min_region_area).mask())
}
