//! The committed OpenAPI document (docs/openapi.json) is the one the server generates and
//! serves, and it describes every route the router has.

use crate::common;

use axum::http::StatusCode;
use common::*;
use ssvp_serve::{ServeOptions, Service};

fn committed() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    std::fs::read_to_string(path).expect("docs/openapi.json is committed")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    assert!(
        committed() == ssvp_serve::openapi::document_json(),
        "docs/openapi.json is stale: regenerate it with `ssvp serve --print-openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_server_serves_it_and_it_covers_every_route() {
    let _gate = common::shared().await;
    let service = Service::new(ServeOptions::default()).unwrap();
    let (status, _, body) = call(&service, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let served = json(&body);
    let file: serde_json::Value = serde_json::from_str(&committed()).unwrap();
    assert_eq!(served, file);
    let paths: Vec<&str> = file["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for route in [
        "/v1/detect",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(&route), "{route} is not documented");
        let concrete = route.replace("{name}", "ssvp");
        let method = file["paths"][route]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .to_uppercase();
        let request = axum::http::Request::builder()
            .method(method.as_str())
            .uri(&concrete)
            .body(axum::body::Body::empty())
            .unwrap();
        let (status, _, body) = call(&service, request).await;
        assert!(
            !(status == StatusCode::NOT_FOUND
                && String::from_utf8_lossy(&body).contains("no route")),
            "{method} {concrete} is documented but not routed"
        );
    }
    assert_eq!(
        paths.len(),
        11,
        "a documented path the test does not know: {paths:?}"
    );
    let detection = &file["components"]["schemas"]["DetectResponse"];
    assert!(
        detection.to_string().contains("Detection"),
        "the answer embeds the Detection schema"
    );
}
