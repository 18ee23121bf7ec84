//! Liveness and readiness: `/healthz` and `/readyz` for plain load balancers, `/v2/health/*`
//! for KServe. Live while the process can answer; ready once the model is loaded and until
//! SIGTERM starts the drain. "Not ready" is 503 with a JSON error (as KServe's own server
//! answers); the status code is what probes read.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::api::{Live, Ready};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Why the server is not ready, or `Ok`.
pub(crate) fn readiness(state: &AppState) -> Result<(), ApiError> {
    if state.is_draining() {
        Err(ApiError::unavailable("the server is shutting down", 1))
    } else if state.is_ready() {
        Ok(())
    } else {
        Err(ApiError::unavailable("the model is still loading", 5))
    }
}

/// Live: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = Live)))]
pub async fn healthz() -> Json<Live> {
    Json(Live { live: true })
}

/// Ready: the model is loaded and the server is not draining.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready for inference", body = Ready),
    (status = 503, description = "Loading or draining", body = ErrorBody)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    readiness(&state)?;
    Ok(Json(Ready { ready: true }))
}

/// Open Inference Protocol liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "open inference protocol",
    responses((status = 200, description = "The process answers", body = Live)))]
pub async fn v2_live() -> Json<Live> {
    Json(Live { live: true })
}

/// Open Inference Protocol readiness.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open inference protocol", responses(
    (status = 200, description = "Ready for inference", body = Ready),
    (status = 503, description = "Loading or draining", body = ErrorBody)))]
pub async fn v2_ready(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    readiness(&state)?;
    Ok(Json(Ready { ready: true }))
}
