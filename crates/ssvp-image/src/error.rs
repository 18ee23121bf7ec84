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
}

pub type Result<T> = std::result::Result<T, Error>;
