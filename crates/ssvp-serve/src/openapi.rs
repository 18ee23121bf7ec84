//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types. docs/openapi.json is this document as committed; a test checks they match
//! (regenerate it with `ssvp serve --print-openapi > docs/openapi.json`).

use utoipa::OpenApi;

use crate::api::{
    DetectForm, DetectQuery, DetectResponse, InferInput, InferOutput, InferRequest, InferResponse,
    Live, ModelMetadata, ModelReady, Ready, RequestedOutput, ServerMetadata, TensorMetadata,
};
use crate::error::ErrorBody;
use crate::routes::{health, oip, ops, v1};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ssvp serve",
        description = "Zero-shot and few-shot industrial anomaly detection over HTTP: the native \
                       `/v1/detect` route and the Open Inference Protocol (KServe v2). \
                       See docs/serve.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        v1::detect,
        oip::server_metadata,
        health::v2_live,
        health::v2_ready,
        oip::model_metadata,
        oip::model_ready,
        oip::infer,
        health::healthz,
        health::readyz,
        ops::metrics,
        openapi_json
    ),
    components(schemas(
        DetectQuery,
        DetectForm,
        DetectResponse,
        ErrorBody,
        Live,
        Ready,
        ModelReady,
        ServerMetadata,
        TensorMetadata,
        ModelMetadata,
        InferRequest,
        InferInput,
        RequestedOutput,
        InferResponse,
        InferOutput
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the optional bearer token (`--api-key-file`), required by every route but the
/// health probes when the server has a key.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

// The operation id stays `openapi`, the one clients generated from the document already use.
/// This API's OpenAPI 3.1 description (also committed as docs/openapi.json).
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi", responses(
    (status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(document())
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON with a final newline, as committed.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
