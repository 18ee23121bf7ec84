//! `POST /v1/detect`: one image as the raw body (`Content-Type: image/png|jpeg|tiff|bmp`) or as
//! the part `image` of a multipart form; the answer is the `Detection` of `ssvp detect`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header;
use axum::{Extension, Json};
use base64::Engine;
use ssvp_detect::output::encode::{map_bytes, overlay_jpeg, MapFormat};
use ssvp_detect::output::files::FileOptions;

use crate::api::{DetectForm, DetectQuery, DetectResponse};
use crate::error::{ApiError, ErrorBody};
use crate::routes::RequestContext;
use crate::state::AppState;

/// The media types of a raw image body.
pub const IMAGE_TYPES: [&str; 7] = [
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/tiff",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
];

/// Scores one image.
#[utoipa::path(post, path = "/v1/detect", tag = "detect",
    params(DetectQuery),
    request_body(
        description = "The image file as the raw body, or a multipart form with the part `image`",
        content(("image/png"), ("image/jpeg"), ("image/tiff"), ("image/bmp"),
                (DetectForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "The detection", body = DetectResponse),
        (status = 400, description = "A malformed option or form", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 408, description = "The upload outlasted --request-timeout", body = ErrorBody),
        (status = 409, description = "A class name the calibration was not made for", body = ErrorBody),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "Not an image type this server reads", body = ErrorBody),
        (status = 422, description = "The image cannot be decoded or is over the pixel budget", body = ErrorBody),
        (status = 503, description = "Loading, draining, too many requests in flight, queue full or timed out (see Retry-After)", body = ErrorBody),
        (status = 500, description = "The model failed", body = ErrorBody)))]
pub async fn detect(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    query: Result<Query<DetectQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<DetectResponse>, ApiError> {
    let Query(mut options) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // Refuse before reading the body when there is no model yet, or too many uploads.
    let model = state.model()?;
    let _admitted = state.admit()?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let (bytes, name) = if content_type == "multipart/form-data" {
        let deadline = context.arrived + state.options.request_timeout;
        tokio::time::timeout_at(deadline.into(), read_form(&state, request, &mut options))
            .await
            .map_err(|_| state.upload_timeout())??
    } else if IMAGE_TYPES.contains(&content_type.as_str()) {
        let bytes = state.read_body(request, context.arrived).await?;
        // Named so that the decoder's messages read "cannot decode image from the request
        // body".
        (bytes, "from the request body".to_string())
    } else {
        return Err(ApiError::unsupported_media_type(format!(
            "{}: send the image as the body with Content-Type image/png, image/jpeg, image/tiff \
             or image/bmp, or as the part `image` of a multipart/form-data upload",
            if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("Content-Type `{content_type}` is not taken")
            }
        )));
    };
    // The station (when there is one) stores the bytes as they were sent.
    let raw = bytes.clone();
    let part_name = if name == "from the request body" {
        format!("api-{}", context.id)
    } else {
        name.clone()
    };
    let image = state.decode(bytes, name).await?;
    let detector = model.detector();
    let class_name = options
        .class_name
        .clone()
        .unwrap_or_else(|| detector.options().class_name.clone());
    let scored = state
        .score(vec![image], &class_name, options.threshold, context.arrived)
        .await?
        .remove(0);
    if let Some(station) = model.station() {
        crate::station::record(station, &state, raw, part_name, "api", None, &scored).await?;
    }
    let scale = scored.detector.map_scale();
    let (want_map, want_overlay) = (
        options.map.unwrap_or(false),
        options.overlay.unwrap_or(false),
    );
    let (detection, map_png, overlay) = tokio::task::spawn_blocking(move || {
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let d = scored.detection;
        let map = want_map
            .then(|| map_bytes(&d, MapFormat::Png16, scale).map(b64))
            .transpose()?;
        let min_area = detector.options().min_region_area;
        // The blend weight and JPEG quality of `ssvp detect`'s overlays.
        let files = FileOptions::default();
        let overlay = want_overlay
            .then(|| {
                overlay_jpeg(
                    &scored.image.image,
                    &d,
                    scale,
                    files.overlay_alpha,
                    min_area,
                    files.jpeg_quality,
                )
                .map(b64)
            })
            .transpose()?;
        Ok::<_, ssvp_detect::Error>((d, map, overlay))
    })
    .await
    .map_err(|_| ApiError::internal("encoding the pictures failed"))??;
    let mut detection = detection;
    if options.regions == Some(false) {
        detection.regions.clear();
    }
    Ok(Json(DetectResponse {
        id: context.id,
        model: state.options.model_name.clone(),
        detection,
        queue_ms: scored.queue_seconds * 1e3,
        batch_size: scored.batch_size,
        map_scale: map_png.is_some().then_some([scale.lo, scale.hi]),
        map_png,
        overlay_jpeg: overlay,
    }))
}

/// The image and options of a multipart upload; the form's options replace the query's.
async fn read_form(
    state: &Arc<AppState>,
    request: Request,
    options: &mut DetectQuery,
) -> Result<(Bytes, String), ApiError> {
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut image = None;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| state.body_error(e.status(), e.body_text()))?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            if image.is_some() {
                return Err(ApiError::bad_request(
                    "the form has more than one `image` part; send one image per request",
                ));
            }
            // The file name only ever appears in messages, shortened and printable.
            let file: String = field
                .file_name()
                .unwrap_or("of the form part `image`")
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| state.body_error(e.status(), e.body_text()))?;
            image = Some((bytes, file));
            continue;
        }
        let text = field
            .text()
            .await
            .map_err(|e| state.body_error(e.status(), e.body_text()))?;
        let text = text.trim();
        let flag = |v: &str| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ApiError::bad_request(format!(
                "the form field `{name}` must be true or false, not `{v}`"
            ))),
        };
        match name.as_str() {
            "class_name" => options.class_name = Some(text.to_string()),
            "map" => options.map = Some(flag(text)?),
            "overlay" => options.overlay = Some(flag(text)?),
            "regions" => options.regions = Some(flag(text)?),
            "threshold" => {
                options.threshold = Some(text.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "the form field `threshold` is not a number: `{text}`"
                    ))
                })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field `{other}` (expected image, class_name, map, overlay, \
                     regions, threshold)"
                )))
            }
        }
    }
    image.ok_or_else(|| {
        ApiError::bad_request("the form has no part named `image` holding the image file")
    })
}
