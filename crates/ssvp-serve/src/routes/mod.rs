//! The router: every route, the body limit, and one middleware that gives each request its id,
//! checks the API key, counts it in the metrics and logs it in one line.

pub mod health;
pub mod oip;
pub mod ops;
pub mod v1;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::{AppState, Service};

pub use crate::state::RequestContext;

/// The header that carries request ids both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// The route pattern of a path, as the metrics and logs label it: never the raw path, whose
/// model names and typos would make unbounded label sets.
pub fn route_label(path: &str) -> &'static str {
    if path == "/" {
        return "/";
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["v1", "detect"] => "/v1/detect",
        ["v2"] => "/v2",
        ["v2", "health", "live"] => "/v2/health/live",
        ["v2", "health", "ready"] => "/v2/health/ready",
        ["v2", "models", _] => "/v2/models/{name}",
        ["v2", "models", _, "ready"] => "/v2/models/{name}/ready",
        ["v2", "models", _, "infer"] => "/v2/models/{name}/infer",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["openapi.json"] => "/openapi.json",
        other => crate::station::route_label(other).unwrap_or("unmatched"),
    }
}

/// Probes answer without the API key: kubelets and load balancers do not carry one.
fn exempt_from_auth(route: &str, state: &AppState) -> bool {
    matches!(
        route,
        "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready"
    ) || (route == "/metrics" && state.options.public_metrics)
        || (state.options.station.is_some() && crate::station::is_public_asset(route))
}

fn sane_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
    .then(|| s.to_string())
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn observe(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let route = route_label(request.uri().path());
    let method = request.method().clone();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| state.new_request_id());
    request.extensions_mut().insert(RequestContext {
        id: id.clone(),
        arrived,
    });
    state.metrics.in_flight.inc();
    // Decrements on every path out, a client hang-up (the future dropped) included.
    struct InFlight<'a>(&'a AppState);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.metrics.in_flight.dec();
        }
    }
    let _in_flight = InFlight(&state);
    let mut response = if exempt_from_auth(route, &state) || state.authorized(bearer(&request)) {
        next.run(request).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: send `Authorization: Bearer <key>`",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    let seconds = arrived.elapsed().as_secs_f64();
    state.metrics.observe_request(route, status, seconds);
    tracing::info!(
        request_id = %id,
        method = %method,
        route,
        status,
        latency_ms = seconds * 1e3,
        "request"
    );
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

impl Service {
    /// Every route, behind the body limit and the middleware.
    pub fn router(&self) -> Router {
        let state = self.state();
        let station = if state.options.station.is_some() {
            crate::station::router()
        } else {
            Router::new()
        };
        Router::new()
            .merge(station)
            .route("/v1/detect", post(v1::detect))
            .route("/v2", get(oip::server_metadata))
            .route("/v2/health/live", get(health::v2_live))
            .route("/v2/health/ready", get(health::v2_ready))
            .route("/v2/models/{name}", get(oip::model_metadata))
            .route("/v2/models/{name}/ready", get(oip::model_ready))
            .route("/v2/models/{name}/infer", post(oip::infer))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(ops::metrics))
            .route("/openapi.json", get(crate::openapi::openapi_json))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
            .layer(middleware::from_fn_with_state(state.clone(), observe))
            .with_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_patterns() {
        assert_eq!(
            route_label("/v2/models/ssvp/infer"),
            "/v2/models/{name}/infer"
        );
        assert_eq!(
            route_label("/v2/models/other/ready/"),
            "/v2/models/{name}/ready"
        );
        assert_eq!(route_label("/v2/models/x"), "/v2/models/{name}");
        assert_eq!(route_label("/v1/detect"), "/v1/detect");
        assert_eq!(route_label("/etc/passwd"), "unmatched");
        assert_eq!(route_label(""), "unmatched");
    }

    #[test]
    fn request_ids_are_short_tokens() {
        let ok = HeaderValue::from_static("cam-3_part.17:a");
        assert_eq!(sane_request_id(&ok).as_deref(), Some("cam-3_part.17:a"));
        assert!(sane_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(sane_request_id(&HeaderValue::from_static("")).is_none());
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        assert!(sane_request_id(&long).is_none());
    }
}
