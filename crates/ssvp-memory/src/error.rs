//! The error of the training-free scorers, with a kind a front can map to an exit code or an
//! HTTP status without reading the message.

use std::path::Path;

/// What went wrong, from the caller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed input: empty feature sets, shapes that disagree, an invalid option value.
    InvalidInput,
    /// A bank made for other backbones or other feature taps.
    Mismatch,
    /// Too few images for what was asked (mutual scoring needs at least five).
    NotEnoughData,
    /// A bank file that does not exist.
    NotFound,
    /// A broken bank file or a tensor failure.
    Compute,
    /// Reading or writing a file failed.
    Io,
}

/// An error of ssvp-memory: a kind and a complete message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// An I/O failure on `path`.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        let kind = if err.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Self::new(kind, format!("{}: {err}", path.display()))
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        Self::new(ErrorKind::Compute, err.to_string())
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        let kind = if err.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Self::new(kind, err.to_string())
    }
}
