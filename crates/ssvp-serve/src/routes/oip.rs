//! The Open Inference Protocol (KServe v2) REST routes. Images travel as one BYTES input
//! `image` of shape `[N]`, each element an encoded file: base64 strings in the JSON (MLServer's
//! `base64` content type), or raw bytes after it (the binary tensor data extension, which
//! tritonclient uses by default). Outputs follow anomalib's names and come back as JSON or, on
//! request, binary. docs/serve.md gives the contract with examples.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
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

/// The header of the binary tensor data extension: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

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
        extensions: vec!["binary_tensor_data".into()],
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
    let has_threshold = threshold.is_some() || model.detector().image_threshold().is_some();
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
    if outputs.contains(&"pred_mask") && model.detector().pixel_threshold().is_none() {
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

/// The encoded images of the request's one input: base64 strings in its JSON `data`, or, with
/// the binary tensor data extension, `binary_data_size` bytes after the JSON, each element a
/// little-endian u32 length and that many bytes.
fn image_elements(
    request: &InferRequest,
    binary: &Bytes,
    max_images: usize,
) -> Result<Vec<Bytes>, ApiError> {
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
    let empty = Map::new();
    let params = input.parameters.as_ref().unwrap_or(&empty);
    let n = match input.shape.as_slice() {
        [n] | [n, 1] => *n,
        other => {
            return Err(ApiError::bad_request(format!(
                "the input `image` has shape [N] (one element per image), not {other:?}"
            )))
        }
    };
    if n == 0 {
        return Err(ApiError::bad_request("the request holds no image"));
    }
    if n > max_images as u64 {
        return Err(ApiError::unprocessable(format!(
            "the request holds {n} images, over the limit of {max_images} (--max-images-per-request)"
        )));
    }
    let elements = match params.get("binary_data_size") {
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`binary_data_size` must be a byte count, not {size}"
                ))
            })?;
            if input.data.is_some() {
                return Err(ApiError::bad_request(
                    "the input has both `data` and `binary_data_size`; send one",
                ));
            }
            if size != binary.len() as u64 {
                return Err(ApiError::bad_request(format!(
                    "`binary_data_size` says {size} bytes but {} follow the JSON header",
                    binary.len()
                )));
            }
            binary_elements(binary)?
        }
        None => {
            if !binary.is_empty() {
                return Err(ApiError::bad_request(
                    "bytes follow the JSON header but no input declares `binary_data_size`",
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
            base64_elements(input.data.as_ref())?
        }
    };
    if elements.len() as u64 != n {
        return Err(ApiError::bad_request(format!(
            "the input's shape says {n} images but its data holds {}",
            elements.len()
        )));
    }
    Ok(elements)
}

/// BYTES elements of the binary extension: a little-endian u32 length, then the bytes.
fn binary_elements(binary: &Bytes) -> Result<Vec<Bytes>, ApiError> {
    let mut elements = Vec::new();
    let mut at = 0usize;
    while at < binary.len() {
        let Some(len) = binary.get(at..at + 4) else {
            return Err(ApiError::bad_request(format!(
                "image {}: the binary data ends inside an element's 4-byte length",
                elements.len()
            )));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4;
        if len > binary.len() - at {
            return Err(ApiError::bad_request(format!(
                "image {}: the element claims {len} bytes but {} remain",
                elements.len(),
                binary.len() - at
            )));
        }
        elements.push(binary.slice(at..at + len));
        at += len;
    }
    Ok(elements)
}

/// BYTES elements as base64 strings in JSON, flat or nested one level (`[N, 1]`).
fn base64_elements(data: Option<&Value>) -> Result<Vec<Bytes>, ApiError> {
    let Some(Value::Array(data)) = data else {
        return Err(ApiError::bad_request(
            "the input's data must be an array of base64 strings",
        ));
    };
    let flat: Vec<&Value> = data
        .iter()
        .flat_map(|v| match v {
            Value::Array(inner) => inner.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
        .collect();
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
) -> Result<Response, ApiError> {
    check_model(&state, &name)?;
    let model = state.model()?;
    let _admitted = state.admit()?;
    let header_length = match request.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("`{HEADER_LENGTH}` must be a byte count"))
                })?,
        ),
    };
    let body = state.read_body(request, context.arrived).await?;
    // The binary tensor data extension: the JSON header, then the inputs' bytes.
    let (header, binary) = match header_length {
        None => (body, Bytes::new()),
        Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "`{HEADER_LENGTH}` says {n} bytes but the body has {}",
                body.len()
            )))
        }
    };
    let request: InferRequest = serde_json::from_slice(&header)
        .map_err(|e| ApiError::bad_request(format!("the body is not an inference request: {e}")))?;
    let asked = parse_parameters(&request, model)?;
    let files = image_elements(&request, &binary, state.options.max_images_per_request)?;
    drop((header, binary));
    // The station (when there is one) stores the bytes as they were sent.
    let raw: Vec<Bytes> = match model.station() {
        Some(_) => files.clone(),
        None => Vec::new(),
    };
    let mut images = Vec::with_capacity(files.len());
    for (i, bytes) in files.into_iter().enumerate() {
        // Named so that the decoder's messages read "cannot decode image 0 of the request".
        images.push(state.decode(bytes, format!("{i} of the request")).await?);
    }
    let detector = model.detector();
    let class_name = asked
        .class_name
        .clone()
        .unwrap_or_else(|| detector.options().class_name.clone());
    let scored = state
        .score(images, &class_name, asked.threshold, context.arrived)
        .await?;
    if let Some(station) = model.station() {
        for (i, (bytes, s)) in raw.into_iter().zip(&scored).enumerate() {
            let name = format!("v2-{}-{i}", context.id);
            crate::station::record(station, &state, bytes, name, "api", None, s).await?;
        }
    }
    let mut parameters = Map::new();
    if let Some(t) = scored.first().and_then(|s| s.detection.threshold) {
        parameters.insert("threshold".into(), json!(t));
    }
    parameters.insert("mode".into(), json!(detector.mode()));
    parameters.insert("class_name".into(), json!(class_name));
    parameters.insert("calibrated".into(), json!(detector.calibration().is_some()));
    let scale = model.map_scale();
    let binary_outputs: Vec<bool> = asked
        .outputs
        .iter()
        .map(|name| wants_binary(&request, name))
        .collect::<Result<_, _>>()?;
    let tensors = tokio::task::spawn_blocking(move || {
        let min_area = detector.options().min_region_area;
        asked
            .outputs
            .iter()
            .map(|name| output(name, &scored, &asked, scale, min_area))
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|_| ApiError::internal("assembling the outputs failed"))??;
    let mut outputs = Vec::with_capacity(tensors.len());
    let mut tail = Vec::new();
    for (tensor, binary) in tensors.into_iter().zip(&binary_outputs) {
        outputs.push(if *binary {
            let bytes = tensor.data.to_binary();
            let mut params = Map::new();
            params.insert("binary_data_size".into(), json!(bytes.len()));
            tail.extend(bytes);
            InferOutput {
                name: tensor.name,
                shape: tensor.shape,
                datatype: tensor.data.datatype().into(),
                parameters: Some(params),
                data: None,
            }
        } else {
            InferOutput {
                name: tensor.name,
                shape: tensor.shape,
                datatype: tensor.data.datatype().into(),
                parameters: None,
                data: Some(tensor.data.to_json()),
            }
        });
    }
    let response = InferResponse {
        model_name: state.options.model_name.clone(),
        id: request.id,
        parameters,
        outputs,
    };
    if !binary_outputs.contains(&true) {
        return Ok(Json(response).into_response());
    }
    let mut body = serde_json::to_vec(&response)
        .map_err(|e| ApiError::internal(format!("serialising the response: {e}")))?;
    let json_length = body.len();
    body.extend(tail);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                json_length.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Whether an output goes back as binary data: the output's own `binary_data` parameter, else
/// the request's `binary_data_output` (the extension's two switches; JSON by default).
fn wants_binary(request: &InferRequest, name: &str) -> Result<bool, ApiError> {
    let flag = |params: Option<&Map<String, Value>>, key: &str| -> Result<Option<bool>, ApiError> {
        match params.and_then(|p| p.get(key)) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::bad_request(format!(
                "the parameter `{key}` must be a bool, not {other}"
            ))),
        }
    };
    let own = request
        .outputs
        .iter()
        .flatten()
        .find(|o| o.name == name)
        .map(|o| flag(o.parameters.as_ref(), "binary_data"))
        .transpose()?
        .flatten();
    Ok(match own {
        Some(b) => b,
        None => flag(request.parameters.as_ref(), "binary_data_output")?.unwrap_or(false),
    })
}

/// The elements of an output tensor.
enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    fn datatype(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "FP32",
            TensorData::I32(_) => "INT32",
            TensorData::U8(_) => "UINT8",
            TensorData::Bool(_) => "BOOL",
            TensorData::Bytes(_) => "BYTES",
        }
    }

    /// JSON elements; BYTES as base64 strings.
    fn to_json(&self) -> Value {
        match self {
            TensorData::F32(v) => json!(v),
            TensorData::I32(v) => json!(v),
            TensorData::U8(v) => json!(v),
            TensorData::Bool(v) => json!(v),
            TensorData::Bytes(v) => json!(v
                .iter()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .collect::<Vec<_>>()),
        }
    }

    /// The extension's binary layout: little-endian numbers, one byte per BOOL, and BYTES as a
    /// u32 length before each element.
    fn to_binary(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            TensorData::Bytes(v) => v
                .iter()
                .flat_map(|b| {
                    (b.len() as u32)
                        .to_le_bytes()
                        .into_iter()
                        .chain(b.iter().copied())
                })
                .collect(),
        }
    }
}

/// A named output tensor before it is encoded.
struct Tensor {
    name: String,
    shape: Vec<u64>,
    data: TensorData,
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
) -> Result<Tensor, ApiError> {
    let n = scored.len() as u64;
    let detections = scored.iter().map(|s| &s.detection);
    let tensor = |shape: Vec<u64>, data: TensorData| Tensor {
        name: name.to_string(),
        shape,
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
            TensorData::F32(
                detections
                    .map(|d| d.calibrated_score.unwrap_or(d.score) as f32)
                    .collect(),
            ),
        ),
        "raw_score" => tensor(
            vec![n],
            TensorData::F32(detections.map(|d| d.score as f32).collect()),
        ),
        "pred_label" => tensor(
            vec![n],
            TensorData::Bool(detections.map(|d| d.anomalous.unwrap_or(false)).collect()),
        ),
        "anomaly_map" if asked.map_png => {
            let pngs = detections
                .map(|d| map_bytes(d, MapFormat::Png16, scale))
                .collect::<Result<Vec<_>, _>>()?;
            tensor(vec![n], TensorData::Bytes(pngs))
        }
        "anomaly_map" => {
            let (h, w) = common_size(scored, name)?;
            let data: Vec<f32> = detections
                .flat_map(|d| d.map.data.iter().copied())
                .collect();
            tensor(vec![n, h as u64, w as u64], TensorData::F32(data))
        }
        "pred_mask" => {
            let (h, w) = common_size(scored, name)?;
            let mut data = Vec::with_capacity(scored.len() * h * w);
            for d in detections {
                let mask = region_mask(d, min_area).unwrap_or_else(|| vec![false; h * w]);
                data.extend(mask.into_iter().map(u8::from));
            }
            tensor(vec![n, h as u64, w as u64], TensorData::U8(data))
        }
        "pred_boxes" => {
            let data: Vec<f32> = boxes()
                .flat_map(|(_, r)| {
                    let [x, y, w, h] = r.bbox;
                    [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
                })
                .collect();
            tensor(vec![data.len() as u64 / 4, 4], TensorData::F32(data))
        }
        "box_scores" => {
            let data: Vec<f32> = boxes().map(|(_, r)| r.peak).collect();
            tensor(vec![data.len() as u64], TensorData::F32(data))
        }
        "box_batch_index" => {
            let data: Vec<i32> = boxes().map(|(i, _)| i as i32).collect();
            tensor(vec![data.len() as u64], TensorData::I32(data))
        }
        other => return Err(ApiError::internal(format!("no output `{other}`"))),
    })
}
