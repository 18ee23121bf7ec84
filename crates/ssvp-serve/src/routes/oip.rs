//! The Open Inference Protocol (KServe v2) REST routes. Images travel as one BYTES input
//! `image` of shape `[N]`, each element a base64-encoded file (MLServer's `base64` content
//! type); outputs follow anomalib's names. docs/serve.md gives the contract with examples.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::{Extension, Json};
use base64::Engine;
use serde_json::{json, Map, Value};
use ssvp_detect::output::encode::{map_bytes, region_mask, MapFormat};

use crate::api::{
    InferOutput, InferRequest, InferResponse, ModelMetadata, ModelReady, ServerMetadata,
    TensorMetadata,
};
use crate::batcher::Scored;
use crate::error::{ApiError, ErrorBody};
use crate::routes::health::readiness;
use crate::routes::RequestContext;
use crate::state::{AppState, LoadedModel};

/// The `platform` of the model metadata.
pub const PLATFORM: &str = "ssvp_rust";

/// Every output, in the order they are returned.
const OUTPUTS: [&str; 8] = [
    "pred_score",
    "raw_score",
    "pred_label",
    "anomaly_map",
    "pred_mask",
    "pred_boxes",
    "box_scores",
    "box_batch_index",
];

fn check_model(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.options.model_name {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "unknown model `{name}`; this server serves `{}`",
            state.options.model_name
        )))
    }
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "open inference protocol",
    responses((status = 200, description = "Server metadata", body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "ssvp".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: Vec::new(),
    })
}

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    }
}

/// Model metadata: the input and every output.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open inference protocol",
    params(("name" = String, Path, description = "The model name")),
    responses(
        (status = 200, description = "Model metadata", body = ModelMetadata),
        (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&state, &name)?;
    Ok(Json(ModelMetadata {
        name,
        platform: PLATFORM.into(),
        inputs: vec![tensor("image", "BYTES", &[-1])],
        outputs: vec![
            tensor("pred_score", "FP32", &[-1]),
            tensor("raw_score", "FP32", &[-1]),
            tensor("pred_label", "BOOL", &[-1]),
            tensor("anomaly_map", "FP32", &[-1, -1, -1]),
            tensor("pred_mask", "UINT8", &[-1, -1, -1]),
            tensor("pred_boxes", "FP32", &[-1, 4]),
            tensor("box_scores", "FP32", &[-1]),
            tensor("box_batch_index", "INT32", &[-1]),
        ],
    }))
}

/// Whether one model is ready.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open inference protocol",
    params(("name" = String, Path, description = "The model name")),
    responses(
        (status = 200, description = "Ready", body = ModelReady),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "Loading or draining", body = ErrorBody)))]
pub async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, ApiError> {
    check_model(&state, &name)?;
    readiness(&state)?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// What a request asked for, from its parameters.
struct Asked {
    threshold: Option<f64>,
    class_name: Option<String>,
    map_png: bool,
    outputs: Vec<&'static str>,
}

fn parse_parameters(request: &InferRequest, model: &LoadedModel) -> Result<Asked, ApiError> {
    let empty = Map::new();
    let params = request.parameters.as_ref().unwrap_or(&empty);
    let flag = |key: &str| -> Result<bool, ApiError> {
        match params.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::bad_request(format!(
                "the parameter `{key}` must be a bool, not {other}"
            ))),
        }
    };
    let threshold = match params.get("threshold") {
        None => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the parameter `threshold` must be a number, not {other}"
            )))
        }
    };
    let class_name = match params.get("class_name") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the parameter `class_name` must be a string, not {other}"
            )))
        }
    };
    let map_png = match params.get("map_format") {
        None => false,
        Some(Value::String(s)) if s == "raw" => false,
        Some(Value::String(s)) if s == "png" => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the parameter `map_format` must be \"raw\" or \"png\", not {other}"
            )))
        }
    };
    let has_threshold = threshold.is_some() || model.detector.image_threshold().is_some();
    let outputs = match &request.outputs {
        Some(list) => {
            let mut names = Vec::new();
            for o in list {
                let name = OUTPUTS.iter().find(|n| **n == o.name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown output `{}` (outputs: {})",
                        o.name,
                        OUTPUTS.join(", ")
                    ))
                })?;
                if !names.contains(name) {
                    names.push(*name);
                }
            }
            names
        }
        None => {
            let (map, mask) = (flag("return_anomaly_map")?, flag("return_mask")?);
            OUTPUTS
                .iter()
                .copied()
                .filter(|n| match *n {
                    "pred_label" => has_threshold,
                    "anomaly_map" => map,
                    "pred_mask" => mask,
                    _ => true,
                })
                .collect()
        }
    };
    if outputs.contains(&"pred_label") && !has_threshold {
        return Err(ApiError::bad_request(
            "`pred_label` needs a threshold: calibrate the model (ssvp calibrate, --calibration), \
             start the server with --threshold, or pass the parameter `threshold`",
        ));
    }
    if outputs.contains(&"pred_mask") && model.detector.pixel_threshold().is_none() {
        return Err(ApiError::bad_request(
            "`pred_mask` needs a pixel threshold: calibrate the model or start the server with \
             --pixel-threshold",
        ));
    }
    Ok(Asked {
        threshold,
        class_name,
        map_png,
        outputs,
    })
}

/// The encoded images of the request's one input.
fn image_elements(request: &InferRequest, max_images: usize) -> Result<Vec<Bytes>, ApiError> {
    let input = match request.inputs.as_slice() {
        [one] => one,
        [] => {
            return Err(ApiError::bad_request(
                "the request has no input; send `image`",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "the model takes one input, `image`; the request has {}",
                request.inputs.len()
            )))
        }
    };
    if input.name != "image" {
        return Err(ApiError::bad_request(format!(
            "unknown input `{}`; the model's input is `image`",
            input.name
        )));
    }
    if input.datatype != "BYTES" {
        return Err(ApiError::bad_request(format!(
            "the input `image` is BYTES (encoded image files), not {}",
            input.datatype
        )));
    }
    if let Some(params) = &input.parameters {
        if params.contains_key("binary_data_size") {
            return Err(ApiError::bad_request(
                "the binary tensor data extension is not supported; send base64 strings in JSON",
            ));
        }
        match params.get("content_type") {
            None => {}
            Some(Value::String(s)) if s == "base64" => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the input's content_type must be \"base64\", not {other}"
                )))
            }
        }
    }
    let n = match input.shape.as_slice() {
        [n] | [n, 1] => *n,
        other => {
            return Err(ApiError::bad_request(format!(
                "the input `image` has shape [N] (one element per image), not {other:?}"
            )))
        }
    };
    let Value::Array(data) = &input.data else {
        return Err(ApiError::bad_request(
            "the input's data must be an array of base64 strings",
        ));
    };
    // Nested data of shape [N, 1] is allowed; the protocol takes flat or nested row-major.
    let flat: Vec<&Value> = data
        .iter()
        .flat_map(|v| match v {
            Value::Array(inner) => inner.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
        .collect();
    if flat.len() as u64 != n {
        return Err(ApiError::bad_request(format!(
            "the input's shape says {n} images but its data holds {}",
            flat.len()
        )));
    }
    if flat.is_empty() {
        return Err(ApiError::bad_request("the request holds no image"));
    }
    if flat.len() > max_images {
        return Err(ApiError::unprocessable(format!(
            "the request holds {} images, over the limit of {max_images} (--max-images-per-request)",
            flat.len()
        )));
    }
    flat.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let Value::String(s) = v else {
                return Err(ApiError::bad_request(format!(
                    "image {i}: the element must be a base64 string"
                )));
            };
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("image {i}: not valid base64: {e}")))
        })
        .collect()
}

/// Scores the request's images.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open inference protocol",
    params(("name" = String, Path, description = "The model name")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The outputs", body = InferResponse),
        (status = 400, description = "The request does not follow the protocol or the model's contract", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 408, description = "The upload outlasted --request-timeout", body = ErrorBody),
        (status = 409, description = "A class name the calibration was not made for", body = ErrorBody),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "An image in a format this server does not read", body = ErrorBody),
        (status = 422, description = "An image cannot be decoded, is over the pixel budget, or too many images", body = ErrorBody),
        (status = 503, description = "Loading, draining, too many requests in flight, queue full or timed out (see Retry-After)", body = ErrorBody),
        (status = 500, description = "The model failed", body = ErrorBody)))]
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Json<InferResponse>, ApiError> {
    check_model(&state, &name)?;
    let model = state.model()?;
    let _admitted = state.admit()?;
    let body = state.read_body(request, context.arrived).await?;
    let request: InferRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not an inference request: {e}")))?;
    drop(body);
    let asked = parse_parameters(&request, model)?;
    let files = image_elements(&request, state.options.max_images_per_request)?;
    let mut images = Vec::with_capacity(files.len());
    for (i, bytes) in files.into_iter().enumerate() {
        images.push(state.decode(bytes, format!("image {i}")).await?);
    }
    let detector = model.detector.clone();
    let class_name = asked
        .class_name
        .clone()
        .unwrap_or_else(|| detector.options().class_name.clone());
    let mut scored = state.score(images, &class_name, context.arrived).await?;
    if let Some(t) = asked.threshold {
        for s in &mut scored {
            detector.decide_at(&mut s.detection, t)?;
        }
    }
    let mut parameters = Map::new();
    if let Some(t) = scored.first().and_then(|s| s.detection.threshold) {
        parameters.insert("threshold".into(), json!(t));
    }
    parameters.insert("mode".into(), json!(detector.mode()));
    parameters.insert("class_name".into(), json!(class_name));
    parameters.insert("calibrated".into(), json!(detector.calibration().is_some()));
    let scale = model.map_scale;
    let outputs = tokio::task::spawn_blocking(move || {
        let min_area = detector.options().min_region_area;
        asked
            .outputs
            .iter()
            .map(|name| output(name, &scored, &asked, scale, min_area))
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|_| ApiError::internal("assembling the outputs failed"))??;
    Ok(Json(InferResponse {
        model_name: state.options.model_name.clone(),
        id: request.id,
        parameters,
        outputs,
    }))
}

/// The one size of all maps, for `[N, H, W]` outputs.
fn common_size(scored: &[Scored], what: &str) -> Result<(usize, usize), ApiError> {
    let first = &scored[0].detection;
    if scored
        .iter()
        .any(|s| s.detection.width != first.width || s.detection.height != first.height)
    {
        return Err(ApiError::bad_request(format!(
            "`{what}` as one [N, H, W] tensor needs images of one size; send them in separate \
             requests{}",
            if what == "anomaly_map" {
                " or ask for map_format \"png\""
            } else {
                ""
            }
        )));
    }
    Ok((first.height, first.width))
}

fn output(
    name: &str,
    scored: &[Scored],
    asked: &Asked,
    scale: ssvp_detect::output::encode::ColorScale,
    min_area: usize,
) -> Result<InferOutput, ApiError> {
    let n = scored.len() as u64;
    let detections = scored.iter().map(|s| &s.detection);
    let tensor = |shape: Vec<u64>, datatype: &str, data: Value| InferOutput {
        name: name.to_string(),
        shape,
        datatype: datatype.into(),
        data,
    };
    let boxes = || {
        detections
            .clone()
            .enumerate()
            .flat_map(|(i, d)| d.regions.iter().map(move |r| (i, r)))
    };
    Ok(match name {
        "pred_score" => tensor(
            vec![n],
            "FP32",
            json!(detections
                .map(|d| d.calibrated_score.unwrap_or(d.score) as f32)
                .collect::<Vec<_>>()),
        ),
        "raw_score" => tensor(
            vec![n],
            "FP32",
            json!(detections.map(|d| d.score as f32).collect::<Vec<_>>()),
        ),
        "pred_label" => tensor(
            vec![n],
            "BOOL",
            json!(detections
                .map(|d| d.anomalous.unwrap_or(false))
                .collect::<Vec<_>>()),
        ),
        "anomaly_map" if asked.map_png => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let pngs = detections
                .map(|d| map_bytes(d, MapFormat::Png16, scale).map(|b| b64.encode(b)))
                .collect::<Result<Vec<_>, _>>()?;
            tensor(vec![n], "BYTES", json!(pngs))
        }
        "anomaly_map" => {
            let (h, w) = common_size(scored, name)?;
            let data: Vec<f32> = detections
                .flat_map(|d| d.map.data.iter().copied())
                .collect();
            tensor(vec![n, h as u64, w as u64], "FP32", json!(data))
        }
        "pred_mask" => {
            let (h, w) = common_size(scored, name)?;
            let mut data = Vec::with_capacity(scored.len() * h * w);
            for d in detections {
                let mask = region_mask(d, min_area).unwrap_or_else(|| vec![false; h * w]);
                data.extend(mask.into_iter().map(u8::from));
            }
            tensor(vec![n, h as u64, w as u64], "UINT8", json!(data))
        }
        "pred_boxes" => {
            let data: Vec<f32> = boxes()
                .flat_map(|(_, r)| {
                    let [x, y, w, h] = r.bbox;
                    [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
                })
                .collect();
            tensor(vec![data.len() as u64 / 4, 4], "FP32", json!(data))
        }
        "box_scores" => {
            let data: Vec<f32> = boxes().map(|(_, r)| r.peak).collect();
            tensor(vec![data.len() as u64], "FP32", json!(data))
        }
        "box_batch_index" => {
            let data: Vec<i32> = boxes().map(|(i, _)| i as i32).collect();
            tensor(vec![data.len() as u64], "INT32", json!(data))
        }
        other => return Err(ApiError::internal(format!("no output `{other}`"))),
    })
}
