//! Ground-truth masks, binarised like the reference loaders.
//!
//! AnomalyCLIP/AdaCLIP/APRIL-GAN do `Image.open(p).convert('L')` then `> 0`
//! (docs/formats.md §4.1). So a gray mask is foreground where its value is non-zero (this is also
//! what binarises the multi-class VisA index maps), and a colour mask where Pillow's `L`
//! conversion `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` is non-zero. Alpha is ignored, as
//! `convert('L')` ignores it.

use std::path::Path;

use image::DynamicImage;

use super::{DatasetError, Result};
use crate::postprocess::{resize_mask, GtMask};

/// A binary mask, row-major, one byte per pixel: 1 = anomalous, 0 = normal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` values, 0 or 1, rows top to bottom.
    pub pixels: Vec<u8>,
}

impl Mask {
    /// Number of anomalous pixels.
    pub fn count_foreground(&self) -> usize {
        self.pixels.iter().filter(|&&p| p != 0).count()
    }

    /// The mask as `bool`s.
    pub fn to_bools(&self) -> Vec<bool> {
        self.pixels.iter().map(|&p| p != 0).collect()
    }

    /// Binarise a decoded image (see the module notes for the rule).
    pub fn from_image(img: &DynamicImage) -> Mask {
        let (width, height) = (img.width(), img.height());
        let pixels: Vec<u8> = match img {
            DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| u8::from(v != 0)).collect(),
            DynamicImage::ImageLumaA8(b) => b.pixels().map(|p| u8::from(p.0[0] != 0)).collect(),
            DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|&v| u8::from(v != 0)).collect(),
            DynamicImage::ImageLumaA16(b) => b.pixels().map(|p| u8::from(p.0[0] != 0)).collect(),
            other => {
                let rgb = other.to_rgb8();
                rgb.pixels()
                    .map(|p| u8::from(pillow_luma(p.0[0], p.0[1], p.0[2]) != 0))
                    .collect()
            }
        };
        Mask {
            width,
            height,
            pixels,
        }
    }
}

/// Pillow's RGB -> L conversion (ITU-R 601-2 luma, fixed point, rounded).
fn pillow_luma(r: u8, g: u8, b: u8) -> u32 {
    (19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 0x8000) >> 16
}

/// Read a mask file and binarise it by non-zero.
pub fn load_mask(path: impl AsRef<Path>) -> Result<Mask> {
    let path = path.as_ref();
    let img = image::ImageReader::open(path)
        .map_err(|error| DatasetError::Io {
            path: path.to_path_buf(),
            error,
        })?
        .with_guessed_format()
        .map_err(|error| DatasetError::Io {
            path: path.to_path_buf(),
            error,
        })?
        .decode()
        .map_err(|e| DatasetError::Mask {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(Mask::from_image(&img))
}

/// A mask file as a binary grid at its own size (any non-zero pixel is a defect).
pub fn load_gt_mask(path: impl AsRef<Path>) -> Result<GtMask> {
    let path = path.as_ref();
    let m = load_mask(path)?;
    let mask_error = |message: String| DatasetError::Mask {
        path: path.to_path_buf(),
        message,
    };
    GtMask::new(m.width as usize, m.height as usize, m.to_bools())
        .map_err(|e| mask_error(e.to_string()))
}

/// The ground truth of a sample on the `size x size` evaluation grid by the field's protocol
/// (PIL bilinear resize of the 0/255 mask, then `> 0.5`); all normal without a mask file. This
/// is the one mask protocol of training targets and evaluation.
pub fn eval_mask(mask_path: Option<&Path>, size: usize) -> Result<GtMask> {
    let empty = |e: crate::postprocess::PostprocessError| DatasetError::Mask {
        path: mask_path.map(Path::to_path_buf).unwrap_or_default(),
        message: e.to_string(),
    };
    match mask_path {
        Some(path) => resize_mask(&load_gt_mask(path)?, size, size).map_err(empty),
        None => GtMask::new(size, size, vec![false; size * size]).map_err(empty),
    }
}
