//! Image input for ssvp: decoding (8/16-bit, gray or colour) and the preprocessing conventions
//! the backbones were trained with (resize modes, Pillow-compatible resampling, mean/std).
//!
//! It also draws what users look at: anomaly-map overlays ([`overlay`]) and their encoding to
//! PNG/JPEG/TIFF ([`encode`]).
//!
//! Framework-free on purpose: it yields plain `f32` CHW buffers so that evaluation code can read
//! masks and images without pulling in the tensor framework.

#![warn(missing_docs)]

pub mod augment;
pub mod decode;
pub mod encode;
mod error;
pub mod overlay;
pub mod preprocess;
pub mod resize;
pub mod samples;

pub use decode::{
    decode_gray8, decode_rgb8, decode_rgb8_checked, load_gray8, load_rgb8, load_rgb8_checked,
    DecodeOptions, Decoded, ExifOrientation, GrayImage8, RgbImage8, SourceInfo, DEFAULT_MAX_PIXELS,
};
pub use encode::{encode_jpeg_rgb8, encode_png_gray16, encode_png_rgb8, encode_tiff_gray32f};
pub use error::{Error, Result};
pub use overlay::{blend, color_bar, colorize, draw_outlines, jet, ColorScale};
pub use preprocess::{Chw, Geometry, Preprocess, Resample, ResizeMode};
pub use resize::{resize_f32_bilinear_antialias, resize_rgb8, resize_u8, Filter};
