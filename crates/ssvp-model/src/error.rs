//! Errors of the SSVP head.

/// Everything that can go wrong building, running or saving the head.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An invalid or unreadable configuration.
    #[error("{0}")]
    Config(String),
    /// Inputs whose shapes do not fit the configuration.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A checkpoint that does not hold exactly the head's trainable tensors.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("io: {0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, Error>;
