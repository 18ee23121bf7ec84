//! The crate's one error type, typed so that a front can tell a missing weights file, a gated
//! repository, an offline machine, a checkpoint of another format, a bad config and an
//! out-of-memory failure apart without reading messages ([`Error::kind`]).
//!
//! Messages follow the chain convention: each variant's `Display` says what was being done and
//! the underlying error (an `std::io::Error`, a candle, safetensors or JSON error) is its
//! `source()`. Printed as a chain (`{:#}` of an `anyhow::Error`, as the CLI does), the text is the
//! context, a colon and the cause.

use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A boxed error from a library below (JSON, safetensors, zip) kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong finding, reading and building a backbone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file, directory or hub file that was asked for does not exist.
    #[error("{message}")]
    NotFound {
        /// What was looked for, and where.
        message: String,
        /// The local path, when the thing looked for was one.
        path: Option<PathBuf>,
        /// The system's error, when a system call reported the absence.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Any other failure on a local path: permission denied, a parent that is a file, a read
    /// error. The source's `kind()` tells which.
    #[error("{message}")]
    Io {
        /// What was being done.
        message: String,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Hugging Face hub refused access (HTTP 401/403): the repository is gated or private
    /// and no token that may read it was given.
    #[error("{message}")]
    Gated {
        /// What was refused and how to get access.
        message: String,
        /// The hub repository id.
        repo: String,
        /// The HTTP status (401 or 403).
        status: u16,
    },
    /// `HF_HUB_OFFLINE` is set and the hub cache holds no copy of the repository.
    #[error("{message}")]
    Offline {
        /// What was missing, and the way out.
        message: String,
        /// The hub repository id.
        repo: String,
        /// The cache directory that was searched.
        cache: PathBuf,
    },
    /// The hub could not be reached or failed otherwise (network down, server error). The hub
    /// client's own error is part of the message.
    #[error("{message}")]
    Hub {
        /// What failed, with the hub client's error and the way out.
        message: String,
    },
    /// A file that is not a checkpoint of a supported format or version, or whose tensors do
    /// not make the model (unknown, missing or misshapen tensors, a foreign naming).
    #[error("{message}")]
    Format {
        /// What is wrong with it.
        message: String,
        /// The parser's error (JSON, safetensors), when one said so.
        #[source]
        source: Option<BoxError>,
    },
    /// candle failed while reading a checkpoint or building modules from its tensors. Usually a
    /// missing or misshapen tensor ([`ErrorKind::Format`]); an I/O failure or an allocation
    /// failure inside candle gives [`ErrorKind::Io`]/[`ErrorKind::NotFound`] or
    /// [`ErrorKind::OutOfMemory`].
    #[error("{message}")]
    Checkpoint {
        /// What was being read or built.
        message: String,
        /// candle's error, naming the tensor.
        #[source]
        source: candle_core::Error,
    },
    /// Hyper-parameters that cannot work: a bad `config.json`, an unknown preset or activation,
    /// widths that do not divide into heads.
    #[error("{message}")]
    Config {
        /// What is wrong.
        message: String,
        /// The parser's error (JSON), when one said so.
        #[source]
        source: Option<BoxError>,
    },
    /// A device that cannot be used: a build without CUDA, a GPU that cannot be opened.
    #[error("{message}")]
    Device {
        /// Which device and why (the driver's error is part of it).
        message: String,
    },
    /// An argument that makes no sense as given (an unknown device name, a directory with
    /// several candidate checkpoints).
    #[error("{message}")]
    InvalidInput {
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A tensor could not be allocated. candle reports this only on GPUs (CUDA's
    /// `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS `ALLOC_FAILED`); a failed CPU allocation aborts the
    /// process in Rust and never becomes an error.
    #[error(transparent)]
    OutOfMemory(candle_core::Error),
    /// Any other tensor operation failed.
    #[error(transparent)]
    Candle(candle_core::Error),
    /// Another error of this crate with what was being done around it (the file a config came
    /// from, say). Its kind is the inner error's.
    #[error("{message}")]
    Context {
        /// What was being done.
        message: String,
        /// The error it led to.
        #[source]
        source: Box<Error>,
    },
}

/// The class of an [`Error`], for fronts that map errors to exit codes or HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A weights file, directory or hub file does not exist.
    NotFound,
    /// Another I/O failure on a local path (permission denied, not a directory, a read error).
    Io,
    /// A gated or private hub repository and no token that may read it.
    Gated,
    /// `HF_HUB_OFFLINE` and nothing cached.
    Offline,
    /// The hub could not be reached or answered with an error other than 401/403/404.
    Network,
    /// A checkpoint of another or unsupported format or version, or with unknown, missing or
    /// misshapen tensors.
    Format,
    /// An invalid config (JSON, preset, activation, inconsistent sizes).
    Config,
    /// A device this build or machine cannot open.
    Device,
    /// An argument that makes no sense as given.
    InvalidInput,
    /// A tensor could not be allocated (GPU memory).
    OutOfMemory,
    /// Any other failure of the tensor code.
    Compute,
}

impl Error {
    /// Classifies the error; read from the variant and the typed sources, never the message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Io { source, .. } => io_kind(source),
            Self::Gated { .. } => ErrorKind::Gated,
            Self::Offline { .. } => ErrorKind::Offline,
            Self::Hub { .. } => ErrorKind::Network,
            Self::Format { .. } => ErrorKind::Format,
            Self::Checkpoint { source, .. } => candle_kind(source).unwrap_or(ErrorKind::Format),
            Self::Config { .. } => ErrorKind::Config,
            Self::Device { .. } => ErrorKind::Device,
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::OutOfMemory(_) => ErrorKind::OutOfMemory,
            Self::Candle(source) => candle_kind(source).unwrap_or(ErrorKind::Compute),
            Self::Context { source, .. } => source.kind(),
        }
    }

    /// An I/O failure on `path`: [`Error::NotFound`] when the system says it does not exist,
    /// else [`Error::Io`].
    pub fn io(
        message: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let (message, path) = (message.into(), path.into());
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound {
                message,
                path: Some(path),
                source: Some(source),
            }
        } else {
            Self::Io {
                message,
                path,
                source,
            }
        }
    }

    /// A [`Error::Format`] without a parser error.
    pub fn format(message: impl Into<String>) -> Self {
        Self::Format {
            message: message.into(),
            source: None,
        }
    }

    /// A [`Error::Config`] without a parser error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
            source: None,
        }
    }

    /// A candle failure while reading a checkpoint or building modules from it.
    pub fn checkpoint(message: impl Into<String>, source: candle_core::Error) -> Self {
        Self::Checkpoint {
            message: message.into(),
            source,
        }
    }

    /// Wraps `self` with what was being done.
    pub fn context(self, message: impl Into<String>) -> Self {
        Self::Context {
            message: message.into(),
            source: Box::new(self),
        }
    }
}

impl From<candle_core::Error> for Error {
    /// [`Error::OutOfMemory`] for an allocation failure, else [`Error::Candle`].
    fn from(err: candle_core::Error) -> Self {
        if candle_kind(&err) == Some(ErrorKind::OutOfMemory) {
            Self::OutOfMemory(err)
        } else {
            Self::Candle(err)
        }
    }
}

fn io_kind(err: &std::io::Error) -> ErrorKind {
    match err.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::OutOfMemory => ErrorKind::OutOfMemory,
        _ => ErrorKind::Io,
    }
}

/// What a candle error says about its class, when it says anything: an I/O error inside it, an
/// error of this crate wrapped in it, or a GPU allocation failure. `None` for plain tensor errors.
fn candle_kind(err: &candle_core::Error) -> Option<ErrorKind> {
    use candle_core::Error as E;
    match err {
        E::WithBacktrace { inner, .. } | E::WithPath { inner, .. } | E::Context { inner, .. } => {
            candle_kind(inner)
        }
        E::Io(io) => Some(io_kind(io)),
        E::WrappedContext { wrapped, .. } => dyn_kind(wrapped.as_ref()),
        // cudarc's errors reach candle boxed and are only reachable as text without the `cuda`
        // feature's types: CUDA_ERROR_OUT_OF_MEMORY (driver) and CUBLAS_STATUS_ALLOC_FAILED.
        E::Cuda(inner) => {
            let text = format!("{inner} {inner:?}");
            (text.contains("OUT_OF_MEMORY") || text.contains("ALLOC_FAILED"))
                .then_some(ErrorKind::OutOfMemory)
        }
        _ => None,
    }
}

fn dyn_kind(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<Error>() {
            return Some(e.kind());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io_kind(io));
        }
        if let Some(e) = c.downcast_ref::<candle_core::Error>() {
            return candle_kind(e);
        }
        cause = c.source();
    }
    None
}
