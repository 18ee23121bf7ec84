//! The one error type of the detector, with a kind that says whose fault it is: a front maps
//! [`ErrorKind`] to an exit code (CLI) or an HTTP status (server) without reading messages.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ssvp_util::error::message_chain;

/// What went wrong, from the caller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is malformed: an undecodable or truncated image, an invalid option value
    /// (HTTP 400/422).
    InvalidInput,
    /// A format this build cannot read (HTTP 415).
    Unsupported,
    /// Over a configured limit, such as the pixel budget of an image header (HTTP 413/422).
    TooLarge,
    /// A named file or directory does not exist (HTTP 404).
    NotFound,
    /// Inputs that belong to another model: a calibration or checkpoint made with other
    /// backbones, head or settings (HTTP 409).
    Mismatch,
    /// Too few inputs for what was asked, e.g. normal images for a false-alarm rate.
    NotEnoughData,
    /// The model failed: a broken checkpoint or a bug (HTTP 500).
    Model,
    /// Reading or writing a file failed (HTTP 500).
    Io,
    /// Weights in a gated Hugging Face repository and no token that may read them (HTTP 500:
    /// the server's setup, not the request).
    Gated,
    /// Weights that are neither local nor in the Hugging Face cache, with the hub out of reach
    /// or `HF_HUB_OFFLINE` set (HTTP 500).
    Offline,
    /// A tensor could not be allocated (HTTP 503: another request may fit later).
    OutOfMemory,
}

impl ErrorKind {
    /// Whether the caller can fix it by changing the request (a 4xx rather than a 5xx).
    pub fn is_client_error(self) -> bool {
        !matches!(
            self,
            ErrorKind::Model
                | ErrorKind::Io
                | ErrorKind::Gated
                | ErrorKind::Offline
                | ErrorKind::OutOfMemory
        )
    }
}

/// An error of the detector: a kind and a complete, human-readable message.
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

    /// A failure of the model or of the code around it, with its whole cause chain.
    pub fn model(err: impl std::error::Error + 'static) -> Self {
        Self::new(ErrorKind::Model, message_chain(&err))
    }

    /// A failure of the model or of the code around it, described by `message`.
    pub fn model_msg(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Model, message)
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

    /// The message with `context` in front (`context: message`), same kind.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl From<ssvp_image::Error> for Error {
    fn from(err: ssvp_image::Error) -> Self {
        Self::new(image_kind(&err), err.to_string())
    }
}

/// The detector's kind of an image error.
fn image_kind(err: &ssvp_image::Error) -> ErrorKind {
    use ssvp_image::Error as E;
    match err {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ErrorKind::NotFound
        }
        E::Io { .. } => ErrorKind::Io,
        E::Unsupported { .. } => ErrorKind::Unsupported,
        E::TooLarge { .. } => ErrorKind::TooLarge,
        _ => ErrorKind::InvalidInput,
    }
}

impl From<ssvp_features::Error> for Error {
    fn from(err: ssvp_features::Error) -> Self {
        let message = message_chain(&err);
        Self::from_features_ref(&err, message)
    }
}

/// The detector's kind of a feature-extraction error kind.
fn kind_of_features(kind: ssvp_features::ErrorKind) -> ErrorKind {
    use ssvp_features::ErrorKind as K;
    match kind {
        K::Config | K::InvalidImage => ErrorKind::InvalidInput,
        K::NotFound => ErrorKind::NotFound,
        K::Mismatch => ErrorKind::Mismatch,
        K::Unsupported | K::Format => ErrorKind::Unsupported,
        K::Gated => ErrorKind::Gated,
        K::Offline => ErrorKind::Offline,
        K::OutOfMemory => ErrorKind::OutOfMemory,
        K::Io => ErrorKind::Io,
        _ => ErrorKind::Model,
    }
}

#[cfg(feature = "head")]
impl From<ssvp_model::Error> for Error {
    fn from(err: ssvp_model::Error) -> Self {
        use ssvp_model::ErrorKind as K;
        let message = message_chain(&err);
        // A features error keeps its own kind, also under the model's context.
        if let Some(f) = err.features() {
            return Error::from_features_ref(f, message);
        }
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::Io => ErrorKind::Io,
            // A run directory of another format version.
            K::Unsupported => ErrorKind::Unsupported,
            K::InvalidInput => ErrorKind::InvalidInput,
            K::Mismatch => ErrorKind::Mismatch,
            _ => ErrorKind::Model,
        };
        Self::new(kind, message)
    }
}

impl From<ssvp_memory::Error> for Error {
    fn from(err: ssvp_memory::Error) -> Self {
        use ssvp_memory::ErrorKind as K;
        let kind = match err.kind() {
            K::InvalidInput => ErrorKind::InvalidInput,
            K::Mismatch => ErrorKind::Mismatch,
            K::NotEnoughData => ErrorKind::NotEnoughData,
            K::NotFound => ErrorKind::NotFound,
            K::Io => ErrorKind::Io,
            K::Compute => ErrorKind::Model,
        };
        Self::new(kind, err.to_string())
    }
}

impl Error {
    /// The kind of a feature error reached through another error, with that error's message.
    fn from_features_ref(err: &ssvp_features::Error, message: String) -> Self {
        let kind = match err {
            // The image's own kind: undecodable, unsupported or over the pixel budget.
            ssvp_features::Error::Image { source, .. } => image_kind(source),
            _ => kind_of_features(err.kind()),
        };
        Self::new(kind, message)
    }
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        // Through the features' classification: an allocation failure is told apart.
        Self::from(ssvp_features::Error::from(err))
    }
}

impl From<ssvp_eval::postprocess::PostprocessError> for Error {
    fn from(err: ssvp_eval::postprocess::PostprocessError) -> Self {
        Self::model(err)
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(all(test, feature = "head"))]
mod tests {
    use super::*;

    /// A tower error as the features carry it, wrapped once more by the model, as a load does.
    fn through_the_layers(e: ssvp_backbones::Error) -> Error {
        let features = ssvp_features::Error::backbone("loading DINOv3 from `x`", e);
        Error::from(ssvp_model::Error::from(features))
    }

    #[test]
    fn failures_of_loading_weights_reach_the_fronts_as_distinct_kinds() {
        use std::io;
        let missing = through_the_layers(ssvp_backbones::Error::NotFound {
            message: "no weights at /nowhere".into(),
            path: Some("/nowhere".into()),
            source: Some(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        });
        let gated = through_the_layers(ssvp_backbones::Error::Gated {
            message: "facebook/dinov3 is gated; set HF_TOKEN".into(),
            repo: "facebook/dinov3-vitl16-pretrain-lvd1689m".into(),
            status: 401,
        });
        let offline = through_the_layers(ssvp_backbones::Error::Offline {
            message: "not in the cache and HF_HUB_OFFLINE is set".into(),
            repo: "openai/clip-vit-large-patch14-336".into(),
            cache: "/empty".into(),
        });
        let format = through_the_layers(ssvp_backbones::Error::Format {
            message: "not a safetensors file".into(),
            source: None,
        });
        let kinds = [
            (missing.kind(), ErrorKind::NotFound),
            (gated.kind(), ErrorKind::Gated),
            (offline.kind(), ErrorKind::Offline),
            (format.kind(), ErrorKind::Unsupported),
        ];
        for (got, want) in kinds {
            assert_eq!(got, want);
        }
        // The message keeps what was done and why, once each.
        assert_eq!(
            gated.to_string(),
            "loading DINOv3 from `x`: facebook/dinov3 is gated; set HF_TOKEN"
        );
        // Only a missing file is the caller's to fix; the others are the server's setup.
        assert!(missing.kind().is_client_error());
        for e in [&gated, &offline] {
            assert!(!e.kind().is_client_error());
        }
    }

    #[test]
    fn a_failed_allocation_is_out_of_memory_and_not_the_callers_fault() {
        let e = through_the_layers(ssvp_backbones::Error::OutOfMemory(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        )));
        assert_eq!(e.kind(), ErrorKind::OutOfMemory);
        assert!(!e.kind().is_client_error());
    }
}
