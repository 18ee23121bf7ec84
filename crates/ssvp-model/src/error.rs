//! Errors of the SSVP head, its training and its run directories, typed so that a front tells a
//! missing run directory, an unreadable file, a run of another format version and a corrupt
//! checkpoint apart without reading messages ([`Error::kind`]).

use std::path::{Path, PathBuf};

/// Everything that can go wrong building, training, running or saving the head.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Loading the backbones or extracting features failed.
    #[error(transparent)]
    Features(#[from] ssvp_features::Error),
    /// An invalid or unreadable configuration, or options that cannot work together.
    #[error("{0}")]
    Config(String),
    /// Inputs whose shapes do not fit the configuration.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A checkpoint or run file whose content is unusable: it does not parse, or does not hold
    /// exactly the head's (or the optimiser's) tensors.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A run directory written by another version of the run format.
    #[error("{}: run format version {found} (this build reads {supported})", path.display())]
    Version {
        /// The file that states the version (`state.json`).
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A file or directory that does not exist.
    #[error(transparent)]
    NotFound(IoError),
    /// Any other failure to read or write a file.
    #[error(transparent)]
    Io(IoError),
    /// A folder that cannot serve as the run directory asked for: not a run directory, or a
    /// non-empty one for a fresh run without `force`.
    #[error("{0}")]
    RunDir(String),
    /// A run resumed with a configuration, data, options or backbones other than its own.
    #[error("{0}")]
    Mismatch(String),
    /// Training data that cannot be trained on: no samples, an anomalous image without a mask.
    #[error("{0}")]
    Data(String),
    /// A dataset (or one of its masks) that cannot be read.
    #[error("{context}: {source}")]
    Dataset {
        /// What was being read.
        context: String,
        /// The dataset reader's error.
        #[source]
        source: ssvp_eval::datasets::DatasetError,
    },
    /// An image that cannot be read or transformed.
    #[error("{context}: {source}")]
    Image {
        /// Which image, and for which step.
        context: String,
        /// The image crate's error.
        #[source]
        source: ssvp_image::Error,
    },
    /// A mask that cannot be resized to the training grid.
    #[error(transparent)]
    Postprocess(#[from] ssvp_eval::postprocess::PostprocessError),
    /// The training loss stopped being a finite number.
    #[error("the training loss is {loss} at step {step}")]
    Diverged {
        /// The loss of the step.
        loss: f32,
        /// The 0-based step.
        step: usize,
    },
    /// A value that could not be serialised (a bug, not an input problem).
    #[error("{0}")]
    Serialize(String),
    /// Another error with what was being done; its kind is the inner error's.
    #[error("{context}: {source}")]
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

/// A failed file operation: the path and the system's error, kept so that a missing file is told
/// from a permission error.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or directory.
    pub path: PathBuf,
    /// The system's error.
    #[source]
    pub source: std::io::Error,
}

/// Whose fault an [`Error`] is, for fronts that map errors to exit codes or HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad setting, option, input file content or training data.
    InvalidInput,
    /// A named file or directory does not exist.
    NotFound,
    /// Any other I/O failure.
    Io,
    /// A run directory of another format version.
    Unsupported,
    /// A run resumed (or a head loaded) with what it was not trained with.
    Mismatch,
    /// Feature extraction failed: [`ssvp_features::Error::kind`] of the source says more.
    Features,
    /// The tensor code failed or training diverged.
    Compute,
}

impl Error {
    /// The error of a failed file operation on `path`: [`Error::NotFound`] when the file or a
    /// folder on its way does not exist, [`Error::Io`] otherwise.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let err = IoError {
            path: path.as_ref().to_path_buf(),
            source,
        };
        if err.source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound(err)
        } else {
            Self::Io(err)
        }
    }

    /// This error with `context` (what was being done) in front of its message.
    pub fn context(self, context: impl Into<String>) -> Self {
        Self::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The feature-extraction error this error is (or wraps in [`Error::Context`]), whose own
    /// `kind()` tells a missing weights file, a gated repository or an undecodable image apart.
    pub fn features(&self) -> Option<&ssvp_features::Error> {
        match self {
            Self::Features(f) => Some(f),
            Self::Context { source, .. } => source.features(),
            _ => None,
        }
    }

    /// Whose fault it is (see [`ErrorKind`]); read from the variants and typed sources, never
    /// from the message.
    pub fn kind(&self) -> ErrorKind {
        use ssvp_eval::datasets::DatasetError as D;
        match self {
            Self::Candle(_) | Self::Shape(_) | Self::Diverged { .. } | Self::Serialize(_) => {
                ErrorKind::Compute
            }
            Self::Features(_) => ErrorKind::Features,
            Self::Config(_)
            | Self::Checkpoint(_)
            | Self::RunDir(_)
            | Self::Data(_)
            | Self::Postprocess(_) => ErrorKind::InvalidInput,
            Self::Image { source, .. } => match source {
                ssvp_image::Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    ErrorKind::NotFound
                }
                ssvp_image::Error::Io { .. } => ErrorKind::Io,
                _ => ErrorKind::InvalidInput,
            },
            Self::Version { .. } => ErrorKind::Unsupported,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Io(_) => ErrorKind::Io,
            Self::Mismatch(_) => ErrorKind::Mismatch,
            Self::Context { source, .. } => source.kind(),
            Self::Dataset { source, .. } => match source {
                D::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                    ErrorKind::NotFound
                }
                D::Io { .. } => ErrorKind::Io,
                _ => ErrorKind::InvalidInput,
            },
        }
    }
}

/// The result of this crate's functions.
pub type Result<T> = std::result::Result<T, Error>;
