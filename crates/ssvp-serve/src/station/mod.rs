//! The inspection station in the server (`ssvp serve --station DIR`): the browser UI at `/`,
//! its JSON API under `/station/api`, live events, and the watched folder. The state and its
//! rules are `ssvp_station`'s; this module only puts them on HTTP.
//!
//! Security: the page and its two assets load without the API key (they hold no data); every
//! API route needs it when one is set, sent by the UI as a header (never a cookie), so a
//! cross-site form cannot act. Mutating routes also refuse a request a browser marks as
//! cross-site. The page runs under a Content-Security-Policy that allows only its own script
//! and style files: no inline script, no other origin.

pub mod api;
pub mod events;
pub mod watch;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ssvp_station::{Arrival, Label, PartView, Station};

use crate::batcher::Scored;
use crate::error::ApiError;
use crate::state::AppState;

/// The UI's page, script and style, compiled into the binary.
const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The policy of the UI's page: its own files only; images also as `blob:` (fetched with the
/// key) and `data:`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'; object-src 'none'";

/// The routes the page loads before it knows the key.
pub fn is_public_asset(route: &str) -> bool {
    matches!(route, "/" | "/station/app.js" | "/station/app.css")
}

/// The route pattern of a station path (for metrics and logs), if it is one.
pub fn route_label(parts: &[&str]) -> Option<&'static str> {
    Some(match parts {
        ["station", "app.js"] => "/station/app.js",
        ["station", "app.css"] => "/station/app.css",
        ["station", "api", "state"] => "/station/api/state",
        ["station", "api", "parts"] => "/station/api/parts",
        ["station", "api", "parts", _] => "/station/api/parts/{id}",
        ["station", "api", "parts", _, "image"] => "/station/api/parts/{id}/image",
        ["station", "api", "parts", _, "map.png"] => "/station/api/parts/{id}/map.png",
        ["station", "api", "parts", _, "feedback"] => "/station/api/parts/{id}/feedback",
        ["station", "api", "scores"] => "/station/api/scores",
        ["station", "api", "threshold"] => "/station/api/threshold",
        ["station", "api", "regions"] => "/station/api/regions",
        ["station", "api", "undo"] => "/station/api/undo",
        ["station", "api", "changes", _] => "/station/api/changes/{version}",
        ["station", "api", "events"] => "/station/api/events",
        ["station", "api", "audit"] => "/station/api/audit",
        ["station", "api", "export.csv"] => "/station/api/export.csv",
        ["station", "api", "export.jsonl"] => "/station/api/export.jsonl",
        _ => return None,
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// Headers on every station response: the page's policy, no sniffing, no framing, no
/// referrer; API answers are never cached (they change with every action).
async fn security_headers(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/station/api/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Refuses a state-changing request a browser sent from another site: `Sec-Fetch-Site:
/// cross-site`, or an `Origin` whose host is not this server's.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = || {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a request from another site cannot change the station",
        ))
    };
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return refuse();
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin);
        if origin != "null" && !origin_host.eq_ignore_ascii_case(host) {
            return refuse();
        }
        if origin == "null" {
            return refuse();
        }
    }
    Ok(())
}

/// The station's routes (merged into the server's router when it runs a station).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/station/app.js", get(app_js))
        .route("/station/app.css", get(app_css))
        .route("/station/api/state", get(api::state))
        .route("/station/api/parts", get(api::parts).post(api::upload))
        .route("/station/api/parts/{id}", get(api::part))
        .route("/station/api/parts/{id}/image", get(api::image))
        .route("/station/api/parts/{id}/map.png", get(api::map_png))
        .route("/station/api/parts/{id}/feedback", post(api::feedback))
        .route("/station/api/scores", get(api::scores))
        .route("/station/api/threshold", post(api::threshold))
        .route("/station/api/regions", post(api::regions))
        .route("/station/api/undo", post(api::undo))
        .route("/station/api/changes/{version}", get(api::changes))
        .route("/station/api/events", get(api::events))
        .route("/station/api/audit", get(api::audit))
        .route("/station/api/export.csv", get(api::export_csv))
        .route("/station/api/export.jsonl", get(api::export_jsonl))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Stores a scored image in the station (on a blocking thread) and tells the live view.
pub async fn record(
    station: &Arc<Station>,
    state: &Arc<AppState>,
    bytes: Bytes,
    name: String,
    source: &'static str,
    label: Option<Label>,
    scored: &Scored,
) -> Result<PartView, ApiError> {
    let station = Arc::clone(station);
    let detection = scored.detection.clone();
    let detector = Arc::clone(&scored.detector);
    let part = tokio::task::spawn_blocking(move || {
        station.record(
            &Arrival {
                bytes: &bytes,
                name: &name,
                source,
                label,
            },
            detection,
            &detector,
        )
    })
    .await
    .map_err(|_| ApiError::internal("recording the part failed"))??;
    state.events.part(&part);
    Ok(part)
}
