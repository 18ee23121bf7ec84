//! The request and response types of every route: the serde types the handlers read and write,
//! and the OpenAPI schemas generated from them (`/openapi.json`, docs/openapi.json).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ssvp_detect::Detection;
use utoipa::{IntoParams, ToSchema};

/// Options of `POST /v1/detect`, as query parameters (or form fields of a multipart upload,
/// which win over the query).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetectQuery {
    /// The class name of the prompts (default: the server's `--class-name`). A calibrated
    /// server only takes the class it was calibrated for (409 otherwise).
    pub class_name: Option<String>,
    /// Return the anomaly map as a base64 16-bit PNG (`map_png`) on the scale `map_scale`.
    pub map: Option<bool>,
    /// Return the overlay (the image with the map blended in, regions outlined) as a base64
    /// JPEG (`overlay_jpeg`).
    pub overlay: Option<bool>,
    /// Return the region list (default true).
    pub regions: Option<bool>,
    /// A raw-score threshold for this request's decision, instead of the calibrated one.
    pub threshold: Option<f64>,
}

/// A multipart upload to `POST /v1/detect`: the image in the part `image`, options as fields.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DetectForm {
    /// The encoded image (PNG, JPEG, TIFF or BMP).
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    class_name: Option<String>,
    map: Option<bool>,
    overlay: Option<bool>,
    regions: Option<bool>,
    threshold: Option<f64>,
}

/// The answer of `POST /v1/detect`: the `Detection` of `ssvp detect` (the same serde type, one
/// line of its `detections.jsonl`) with the request's id and the pictures asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DetectResponse {
    /// The request id (the `x-request-id` header sent, or one the server made).
    pub id: String,
    /// The model name.
    pub model: String,
    /// What the detector says about the image.
    #[serde(flatten)]
    pub detection: Detection,
    /// How long the image waited for its batch, in milliseconds.
    pub queue_ms: f64,
    /// How many images its batch held.
    pub batch_size: usize,
    /// The anomaly map (`map=true`): a base64 16-bit grey PNG at the image's size, level =
    /// round(clamp((v - lo) / (hi - lo), 0, 1) * 65535), as `ssvp detect` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_png: Option<String>,
    /// `[lo, hi]` of `map_png`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_scale: Option<[f32; 2]>,
    /// The overlay (`overlay=true`): a base64 JPEG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_jpeg: Option<String>,
}

/// `GET /healthz`, `GET /v2/health/live`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always true: the process answers.
    pub live: bool,
}

/// `GET /readyz`, `GET /v2/health/ready` when ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// True: the model is loaded and the server is not draining.
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready` when ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelReady {
    /// The model's name (`--model-name`).
    pub name: String,
    /// True: the model is loaded and the server is not draining.
    pub ready: bool,
}

/// `GET /v2`: server metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// The server's name: `ssvp`.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// Protocol extensions supported: `binary_tensor_data`.
    pub extensions: Vec<String>,
}

/// A tensor's name, type and shape (-1: any size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// The element type (`BYTES`, `FP32`, `BOOL`, `UINT8`, `INT32`).
    pub datatype: String,
    /// The shape; -1 for a dimension of any size.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`: model metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    /// The model's name (`--model-name`).
    pub name: String,
    /// The runtime: `ssvp_rust`.
    pub platform: String,
    /// The inputs the model takes: `image`.
    pub inputs: Vec<TensorMetadata>,
    /// The outputs it can return.
    pub outputs: Vec<TensorMetadata>,
}

/// `POST /v2/models/{name}/infer`: an Open Inference Protocol request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// `threshold` (number), `return_anomaly_map`, `return_mask` (bool), `map_format`
    /// (`raw` or `png`), `class_name` (string).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Exactly one input, `image`: BYTES of shape `[N]`, each element a base64-encoded
    /// PNG/JPEG/TIFF/BMP file.
    pub inputs: Vec<InferInput>,
    /// The outputs to return (default: `pred_score`, `raw_score`, `pred_label` when a threshold
    /// is known, the boxes, and the map and mask when their parameters ask for them).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor of an [`InferRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferInput {
    /// The input's name: `image`.
    pub name: String,
    /// The shape: `[N]`, one element per image.
    pub shape: Vec<u64>,
    /// The element type: `BYTES`.
    pub datatype: String,
    /// `content_type`: `base64` (the default) for JSON data; `binary_data_size`: the input's
    /// bytes follow the JSON (the binary tensor data extension).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major: base64 strings (absent when the input is binary).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub data: Option<Value>,
}

/// An output asked for by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// `binary_data` (bool): the output's bytes follow the JSON (the binary tensor data
    /// extension).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// The answer of `POST /v2/models/{name}/infer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    /// The model's name (`--model-name`).
    pub model_name: String,
    /// The request's id, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `threshold` (when known), `mode`, `class_name`, `calibrated`.
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// The output tensors, in the order asked for (or the default order).
    pub outputs: Vec<InferOutput>,
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferOutput {
    /// The output's name.
    pub name: String,
    /// The shape, e.g. `[N]` for the scores or `[N, H, W]` for the maps.
    pub shape: Vec<u64>,
    /// The element type.
    pub datatype: String,
    /// `binary_data_size` when the output's bytes follow the JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major and flat (absent when the output is binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}
