//! Images as they come from cameras and uploads, decoded once into what the detector scores.
//!
//! Decoding is checked ([`ssvp_image::decode_rgb8_checked`]): the pixel budget is enforced from
//! the header before any pixel memory is allocated, EXIF orientation is applied by default (a
//! phone or camera photo is scored the way it is displayed), alpha is dropped (as in
//! evaluation, which reads images like Pillow's `convert("RGB")`), and every failure is an
//! [`Error`] whose kind tells a bad file from a broken model.

use std::path::Path;
use std::time::Instant;

use ssvp_image::RgbImage8;
pub use ssvp_image::{DecodeOptions, ExifOrientation, SourceInfo, DEFAULT_MAX_PIXELS};

use crate::error::{Error, Result};

/// One decoded input image.
#[derive(Clone, Debug)]
pub struct InputImage {
    /// How the caller names it (a path as given, an upload's name).
    pub name: String,
    /// The pixels, EXIF orientation applied.
    pub image: RgbImage8,
    /// What the file was (format, stored size, colour type, orientation).
    pub info: Option<SourceInfo>,
    /// Time spent reading and decoding, in milliseconds.
    pub decode_ms: f64,
}

impl InputImage {
    /// Wraps pixels that are already decoded (tests, callers with their own decoder).
    pub fn from_rgb(name: impl Into<String>, image: RgbImage8) -> Self {
        Self {
            name: name.into(),
            image,
            info: None,
            decode_ms: 0.0,
        }
    }
}

/// Reads and decodes an image file.
pub fn read_image(path: &Path, opts: &DecodeOptions) -> Result<InputImage> {
    let started = Instant::now();
    let decoded = ssvp_image::load_rgb8_checked(path, opts).map_err(Error::from)?;
    Ok(InputImage {
        name: path.display().to_string(),
        image: decoded.image,
        info: Some(decoded.info),
        decode_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Decodes an encoded image held in memory (an upload); `name` appears in error messages.
pub fn decode_image(bytes: &[u8], name: &str, opts: &DecodeOptions) -> Result<InputImage> {
    let started = Instant::now();
    let decoded =
        ssvp_image::decode_rgb8_checked(bytes, Path::new(name), opts).map_err(Error::from)?;
    Ok(InputImage {
        name: name.to_string(),
        image: decoded.image,
        info: Some(decoded.info),
        decode_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}
