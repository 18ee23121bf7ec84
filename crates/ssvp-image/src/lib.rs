//! Image input for ssvp: decoding (8/16-bit, gray or colour) and the preprocessing conventions
//! the backbones were trained with (resize modes, Pillow-compatible resampling, mean/std).
//!
//! Framework-free on purpose: it yields plain `f32` CHW buffers so that evaluation code can read
//! masks and images without pulling in the tensor framework.

pub mod augment;
pub mod decode;
mod error;
pub mod preprocess;
pub mod resize;

pub use decode::{decode_gray8, decode_rgb8, load_gray8, load_rgb8, GrayImage8, RgbImage8};
pub use error::{Error, Result};
pub use preprocess::{Chw, Geometry, Preprocess, Resample, ResizeMode};
pub use resize::{resize_f32_bilinear_antialias, resize_u8, Filter};
