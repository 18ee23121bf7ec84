//! Errors of feature extraction, typed so that a front tells a missing weights file, a bad
//! setting, an unreadable image and a broken tower apart without reading messages.

use std::path::PathBuf;

/// A boxed error from a layer below (the towers' loaders).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong turning images into backbone features.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot work: a size, dtype, block or tap outside what the towers have.
    #[error("{0}")]
    Config(String),
    /// The towers could not be loaded or built; the source says why (a missing file, a gated
    /// repository, a checkpoint of another format).
    #[error("{context}")]
    Backbone {
        /// What was being done, naming the weights.
        context: String,
        /// The towers' own error.
        #[source]
        source: BoxError,
    },
    /// An image file could not be read or decoded.
    #[error("{context}")]
    Image {
        /// Which image, and for which step.
        context: String,
        /// The decoder's error.
        #[source]
        source: ssvp_image::Error,
    },
    /// Reading or writing a file (weights, cache entries) failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The file.
        path: PathBuf,
        /// The system's error (kept, so a missing file is told from a permission error).
        #[source]
        source: std::io::Error,
    },
    /// Features or a cache that do not fit these backbones (grid, scales, widths, identity).
    #[error("{0}")]
    Mismatch(String),
    /// Features that lack what a reader asked for (a tower that was not run, too few taps): a
    /// bug of the caller, not of the input.
    #[error("{0}")]
    Missing(String),
    /// A request this source cannot serve (decoded images through a file-only source).
    #[error("{0}")]
    Unsupported(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Whose fault an [`Error`] is, for fronts that map errors to exit codes or HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad setting.
    Config,
    /// A named file does not exist.
    NotFound,
    /// An image that cannot be decoded or is over a limit.
    InvalidImage,
    /// Inputs made for other backbones.
    Mismatch,
    /// Something this source or build cannot do.
    Unsupported,
    /// Weights of another or unsupported format or version, or with missing tensors.
    Format,
    /// A gated Hugging Face repository and no token that may read it.
    Gated,
    /// The weights are neither local nor cached, and the hub is out of reach or
    /// `HF_HUB_OFFLINE` is set.
    Offline,
    /// A tensor could not be allocated.
    OutOfMemory,
    /// Any other I/O failure.
    Io,
    /// The towers or the tensor code failed.
    Compute,
}

impl Error {
    /// A tower loading or building error with what was being done.
    pub fn backbone(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backbone {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A failure to load a tower's weights named `spec`: when the hub could not be reached (or
    /// is off), the context says how to run without it: the `flag` that names a local copy,
    /// and `ssvp fetch` to prepare the cache once online.
    pub fn loading(
        tower: &str,
        spec: &str,
        flag: &str,
        preset: Option<&str>,
        source: ssvp_backbones::Error,
    ) -> Self {
        use ssvp_backbones::ErrorKind as K;
        let mut context = format!("loading {tower} from `{spec}`");
        if matches!(source.kind(), K::Offline | K::Network) {
            let fetch = match preset {
                Some(p) => format!("`ssvp fetch {p}`"),
                None => "`ssvp fetch PRESET`".into(),
            };
            context.push_str(&format!(
                " (without network: run {fetch} once online, or give a local copy with {flag} DIR)"
            ));
        }
        Self::backbone(context, source)
    }

    /// An I/O error on `path`.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    /// Whose fault it is (see [`ErrorKind`]); read from the typed sources, never the message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) => ErrorKind::Config,
            Self::Mismatch(_) => ErrorKind::Mismatch,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Missing(_) => ErrorKind::Compute,
            Self::Image { source, .. } => match source {
                ssvp_image::Error::Io { source, .. } => io_kind(source),
                _ => ErrorKind::InvalidImage,
            },
            Self::Io { source, .. } => io_kind(source),
            Self::Candle(e) => candle_kind(e),
            Self::Backbone { source, .. } => backbone_kind(source.as_ref()),
        }
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::OutOfMemory => ErrorKind::OutOfMemory,
        _ => ErrorKind::Io,
    }
}

fn candle_kind(e: &candle_core::Error) -> ErrorKind {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        if let Some(candle_core::Error::Cuda(_)) = c.downcast_ref::<candle_core::Error>() {
            // The CUDA driver's allocation failures arrive as text; no other kind is exposed.
            if c.to_string().contains("OUT_OF_MEMORY") {
                return ErrorKind::OutOfMemory;
            }
        }
        cause = c.source();
    }
    ErrorKind::Compute
}

/// The kind of an error from the towers: their own typed kind where they give one, else what
/// the chain of sources holds (an I/O error, a candle error).
fn backbone_kind(source: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<ssvp_backbones::Error>() {
            return match e.kind() {
                ssvp_backbones::ErrorKind::NotFound => ErrorKind::NotFound,
                ssvp_backbones::ErrorKind::Gated => ErrorKind::Gated,
                ssvp_backbones::ErrorKind::Offline => ErrorKind::Offline,
                ssvp_backbones::ErrorKind::OutOfMemory => ErrorKind::OutOfMemory,
                ssvp_backbones::ErrorKind::Network => ErrorKind::Offline,
                ssvp_backbones::ErrorKind::Config
                | ssvp_backbones::ErrorKind::Device
                | ssvp_backbones::ErrorKind::InvalidInput => ErrorKind::Config,
                ssvp_backbones::ErrorKind::Format => ErrorKind::Format,
                ssvp_backbones::ErrorKind::Io => ErrorKind::Io,
                _ => ErrorKind::Compute,
            };
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        if let Some(e) = c.downcast_ref::<candle_core::Error>() {
            return candle_kind(e);
        }
        cause = c.source();
    }
    ErrorKind::Compute
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns [`Error::Mismatch`] with a formatted message unless `cond` holds.
macro_rules! ensure_fits {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::Mismatch(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure_fits;
