use std::path::PathBuf;

/// Errors of image decoding and preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read (missing, unreadable, a failing disk).
    #[error("cannot read image file {path}: {source}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The failure of the read.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its data is damaged or truncated.
    #[error("cannot decode image {path}: {message}")]
    Decode {
        /// The image (a file, or the name given to bytes in memory).
        path: PathBuf,
        /// What the decoder found wrong.
        message: String,
    },
    /// A format or pixel layout this crate does not decode (e.g. not PNG/JPEG/BMP/TIFF, CMYK).
    #[error("unsupported image {path}: {message}")]
    Unsupported {
        /// The image (a file, or the name given to bytes in memory).
        path: PathBuf,
        /// Which format or layout it is.
        message: String,
    },
    /// A pixel buffer whose length does not match its size, or an empty image.
    #[error("invalid image buffer: {0}")]
    Buffer(String),
    /// Unusable sizes or drawing parameters: a target of 0 pixels, a heat map that does not match
    /// its image, a blend alpha or colour scale out of range.
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
        /// The image (a file, or the name given to bytes in memory).
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

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
