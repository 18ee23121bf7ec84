use std::path::PathBuf;

/// Errors of image decoding and preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("unsupported image {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("invalid image buffer: {0}")]
    Buffer(String),
    #[error("invalid size: {0}")]
    Size(String),
    /// The header claims more pixels than the caller's budget; raised before decoding, so a
    /// decompression bomb costs nothing.
    #[error(
        "image {path} is {width}x{height} ({:.1} Mpx), over the pixel budget of {:.1} Mpx; \
         raise it with --max-pixels if this is intended",
        *width as f64 * *height as f64 / 1e6,
        *max_pixels as f64 / 1e6
    )]
    TooLarge {
        path: PathBuf,
        /// Stored width from the header.
        width: u64,
        /// Stored height from the header.
        height: u64,
        /// The budget it exceeded ([`crate::DecodeOptions::max_pixels`]).
        max_pixels: u64,
    },
    /// An encoder failed or was given unusable settings (e.g. JPEG quality 0); buffer/size
    /// mismatches are reported as [`Error::Buffer`] / [`Error::Size`] instead.
    #[error("cannot encode image: {0}")]
    Encode(String),
}

pub type Result<T> = std::result::Result<T, Error>;
