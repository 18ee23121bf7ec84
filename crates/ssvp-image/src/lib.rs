//! Image input for ssvp: decoding (8/16-bit, gray or colour) and the preprocessing conventions
//! the backbones were trained with (resize modes, Pillow-compatible resampling, mean/std).
//!
//! Framework-free on purpose: it yields plain `f32` CHW buffers so that evaluation code can read
//! masks and images without pulling in the tensor framework.
