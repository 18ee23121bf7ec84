//! Every error answer of the server: an HTTP status and `{"error": "..."}`, the Open Inference
//! Protocol's error shape, on the native route too. Library errors arrive typed
//! ([`ssvp_detect::ErrorKind`]) and are mapped to a status here, in one place.
//!
//! [`Error`] is the other kind: why the server itself could not start or stopped.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use ssvp_detect::ErrorKind;

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person: names the limit, the option or the image at fault.
    pub error: String,
}

/// An error answer: status, message, and for 503 how many seconds to wait before retrying.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message of the body.
    pub message: String,
    /// `Retry-After` in seconds (503 answers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request does not follow the schema.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such model or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 415: a media type the route does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    /// 422: a well-formed request the server refuses (an image it cannot or will not score).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 503 with `Retry-After`: not ready, draining, queue full or timed out. The state is the
    /// server's, so another replica (or this one, later) can answer the same request.
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }

    /// 500: the model failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// The status of a detector error, by whose fault it is. An image that cannot be decoded or is
/// over the pixel budget is 422 (the request is well formed, its content is refused); a format
/// this build cannot read is 415; inputs that belong to another model (a class name the
/// calibration was not made for) are 409; the model failing is 500.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::TooLarge | ErrorKind::NotEnoughData => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Mismatch => StatusCode::CONFLICT,
        // The server's own setup (weights it cannot fetch), not the request.
        ErrorKind::Model | ErrorKind::Io | ErrorKind::Gated | ErrorKind::Offline => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // Another request may fit once this one's tensors are freed.
        ErrorKind::OutOfMemory => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<ssvp_detect::Error> for ApiError {
    fn from(err: ssvp_detect::Error) -> Self {
        Self::new(status_of(err.kind()), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Why [`serve`](crate::serve) or [`run`](crate::run) returned an error: the server could not
/// start, or stopped. Causes are kept as sources (`{:#}` of `anyhow` prints them, as does
/// `ssvp_util::error::message_chain`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`ServeOptions`](crate::ServeOptions) are inconsistent; the message names the value.
    #[error("{0}")]
    Options(String),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The address cannot be listened on (in use, not this machine's, a privileged port).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
    /// The model loader returned an error or panicked; the source is its error.
    #[error("the model could not be loaded")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The model was loaded but the server cannot take it (mutual scoring, which scores sets);
    /// the message says why.
    #[error("the model could not be loaded: {0}")]
    Refused(String),
}
