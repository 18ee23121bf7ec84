//! `/metrics` (Prometheus). (`/openapi.json` is served by [`crate::openapi`], next to the
//! document it serves.)

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

/// The Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
}
