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

/// An error of ssvp-memory: a kind, a complete message, and the error it came from (an I/O or a
/// tensor failure), kept so that a caller can walk the chain or test the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// This error with `source` as its cause (the message already says what it was).
    fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The same error (kind and cause kept) with `context` put before its message:
    /// `"{context}: {message}"`.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
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
        Self::new(kind, format!("{}: {err}", path.display())).caused_by(err)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        Self::new(ErrorKind::Compute, err.to_string()).caused_by(err)
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
        Self::new(kind, err.to_string()).caused_by(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_cause_and_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::io(Path::new("bank.safetensors"), io).context("reading the bank");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "reading the bank: bank.safetensors: no such file"
        );
        let cause = std::error::Error::source(&err).expect("the I/O error is kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
