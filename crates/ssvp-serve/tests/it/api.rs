//! Every route and every error code, in process (the router called directly), on the tiny
//! seeded backbones. The answers are checked against the detector called directly on the same
//! image: the server adds transport, never a different result.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use common::*;
use image::ImageFormat;
use serde_json::json;
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_detect::inputs::InputFile;
use ssvp_detect::job::{calibrate_files, CalibrateJob};
use ssvp_detect::memory::{MemorySpec, MutualConfig};
use ssvp_detect::output::encode::{map_bytes, MapFormat};
use ssvp_detect::{Detection, LoadSpec};
use ssvp_serve::{ServeOptions, Service};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// The detector's own answer for an encoded image.
fn direct(detector: &ssvp_detect::Detector, bytes: &[u8]) -> Detection {
    let image = decode_image(bytes, "direct", &DecodeOptions::default()).unwrap();
    detector.detect(&[image]).unwrap().remove(0)
}

fn error_of(status: StatusCode, body: &[u8], expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    let message = json(body)["error"]
        .as_str()
        .expect("an error message")
        .to_string();
    assert!(
        message.contains(needle),
        "`{message}` does not mention `{needle}`"
    );
}

#[tokio::test]
async fn v1_detect_answers_what_the_detector_says() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let detector = references_detector(dir.path(), options());
    let bad = png(&part(7, true));
    let expected = direct(&detector, &bad);
    let expected_map = map_bytes(&expected, MapFormat::Png16, detector.map_scale()).unwrap();
    let service = common::service(detector, ServeOptions::default());

    let (status, headers, body) = call(
        &service,
        Request::post("/v1/detect?map=true&overlay=true")
            .header("content-type", "image/png")
            .header("x-request-id", "cam1-part42")
            .body(Body::from(bad.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-request-id"], "cam1-part42");
    let answer: ssvp_serve::api::DetectResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer.id, "cam1-part42");
    assert_eq!(answer.model, "ssvp");
    let d = &answer.detection;
    assert_eq!(d.score, expected.score, "the same score, bit for bit");
    assert_eq!(d.map_stats, expected.map_stats);
    assert_eq!(d.regions, expected.regions);
    assert_eq!((d.width, d.height), (96, 96));
    assert_eq!(d.mode, "references");
    assert_eq!(unb64(answer.map_png.as_ref().unwrap()), expected_map);
    assert!(answer.map_scale.is_some());
    let overlay = image::load_from_memory(&unb64(answer.overlay_jpeg.as_ref().unwrap())).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (96, 96));
    assert_eq!(answer.batch_size, 1);

    // Without map and overlay they are absent from the JSON.
    let (status, _, body) = call(&service, post("/v1/detect", "image/png", bad.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert!(v.get("map_png").is_none() && v.get("overlay_jpeg").is_none());
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn v1_detect_takes_every_format_and_multipart() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let service = common::service(
        references_detector(dir.path(), options()),
        ServeOptions::default(),
    );
    let img = part(3, true);
    for (format, mime) in [
        (ImageFormat::Png, "image/png"),
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Tiff, "image/tiff"),
        (ImageFormat::Bmp, "image/bmp"),
    ] {
        let (status, _, body) =
            call(&service, post("/v1/detect", mime, encode(&img, format))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{mime}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // The form's fields, including a per-request threshold below every score.
    let bytes = png(&img);
    let (ct, form) = multipart(&[
        ("image", Some("part.png"), &bytes),
        ("threshold", None, b"0.0"),
        ("regions", None, b"false"),
    ]);
    let (status, _, body) = call(&service, post("/v1/detect", &ct, form)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    assert_eq!(v["threshold"], json!(0.0));
    assert_eq!(v["anomalous"], json!(true));
    assert_eq!(v["regions"], json!([]));
    // A threshold above every score flips the decision.
    let (status, _, body) = call(
        &service,
        post("/v1/detect?threshold=1e9", "image/png", bytes.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["anomalous"], json!(false));
}

#[tokio::test]
async fn v1_detect_refuses_bad_input_with_the_right_code() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        max_body_bytes: 64 * 1024,
        decode: DecodeOptions {
            max_pixels: 200 * 200,
            ..DecodeOptions::default()
        },
        ..ServeOptions::default()
    };
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let good = png(&part(1, false));

    let (s, _, b) = call(&service, post("/v1/detect", "text/plain", good.clone())).await;
    error_of(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain");
    let (s, _, b) = call(
        &service,
        Request::post("/v1/detect")
            .body(Body::from(good.clone()))
            .unwrap(),
    )
    .await;
    error_of(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "no Content-Type");
    // A GIF under an image/png label: the bytes decide, and GIF is not read.
    let (s, _, b) = call(
        &service,
        post(
            "/v1/detect",
            "image/png",
            b"GIF89a\x01\x00\x01\x00".to_vec(),
        ),
    )
    .await;
    error_of(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "not a PNG");
    // Truncated and empty PNGs.
    let (s, _, b) = call(
        &service,
        post("/v1/detect", "image/png", good[..good.len() / 2].to_vec()),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, _, b) = call(&service, post("/v1/detect", "image/png", Vec::new())).await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "empty");
    // Over the pixel budget, refused from the header.
    let big = png(&image::RgbImage::new(300, 300));
    let (s, _, b) = call(&service, post("/v1/detect", "image/png", big)).await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "pixels");
    // Over the body limit, raw and in a form.
    let huge = vec![0u8; 100 * 1024];
    let (s, _, b) = call(&service, post("/v1/detect", "image/png", huge.clone())).await;
    error_of(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "max-body-bytes");
    let (ct, form) = multipart(&[("image", Some("x.png"), &huge)]);
    let (s, _, b) = call(&service, post("/v1/detect", &ct, form)).await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    // Malformed options and forms.
    let (s, _, b) = call(
        &service,
        post("/v1/detect?threshold=abc", "image/png", good.clone()),
    )
    .await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "threshold");
    let (s, _, b) = call(
        &service,
        post("/v1/detect?colour=red", "image/png", good.clone()),
    )
    .await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "colour");
    let (ct, form) = multipart(&[("picture", Some("x.png"), &good)]);
    let (s, _, b) = call(&service, post("/v1/detect", &ct, form)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "picture");
    let (ct, form) = multipart(&[("map", None, b"maybe")]);
    let (s, _, b) = call(&service, post("/v1/detect", &ct, form)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "true or false");
    let (ct, form) = multipart(&[("class_name", None, b"screw")]);
    let (s, _, b) = call(&service, post("/v1/detect", &ct, form)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "no part named `image`");
    let (ct, form) = multipart(&[
        ("image", Some("a.png"), &good),
        ("image", Some("b.png"), &good),
    ]);
    let (s, _, b) = call(&service, post("/v1/detect", &ct, form)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "more than one");
    let (s, _, b) = call(
        &service,
        post("/v1/detect", "multipart/form-data", good.clone()),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    // An empty class name is a request the model refuses.
    let (s, _, b) = call(
        &service,
        post("/v1/detect?class_name=", "image/png", good.clone()),
    )
    .await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "class name");
    // Routes and methods.
    let (s, _, b) = call(&service, get("/v1/nothing")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "/v1/nothing");
    let (s, _, b) = call(&service, get("/v1/detect")).await;
    error_of(s, &b, StatusCode::METHOD_NOT_ALLOWED, "GET");
    // The refusals were counted by reason.
    let (_, _, b) = call(&service, get("/metrics")).await;
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("ssvp_images_refused_total{reason=\"unsupported\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ssvp_images_refused_total{reason=\"too_large\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ssvp_http_requests_total{route=\"/v1/detect\",status=\"413\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn not_ready_and_overload_answer_503_with_retry_after() {
    let _gate = common::shared().await;
    // Not loaded yet: live, not ready, inference refused.
    let loading = Service::new(ServeOptions::default()).unwrap();
    for path in ["/readyz", "/v2/health/ready", "/v2/models/ssvp/ready"] {
        let (s, _, b) = call(&loading, get(path)).await;
        error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "loading");
    }
    for path in ["/healthz", "/v2/health/live"] {
        let (s, _, b) = call(&loading, get(path)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(json(&b), json!({"live": true}));
    }
    let (s, h, b) = call(
        &loading,
        post("/v1/detect", "image/png", png(&part(1, false))),
    )
    .await;
    error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "loading");
    assert!(h.contains_key("retry-after"));

    // A queue of one on a current-thread runtime: the second image of a request finds it full
    // (the batcher cannot run between the two submissions).
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServeOptions::default();
    options.batching.max_queue_size = 1;
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let img = png(&part(2, false));
    let body = infer_body(&[img.clone(), img.clone()], json!({}));
    let (s, h, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "queue is full");
    assert_eq!(h["retry-after"], "1");
    // The server lives on: once the batcher has taken the abandoned image, one image fits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = infer_body(std::slice::from_ref(&img), json!({}));
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));

    // A request whose time runs out before its batch: 503, not a late answer.
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        request_timeout: Duration::from_nanos(1),
        ..ServeOptions::default()
    };
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let (s, h, b) = call(&service, post("/v1/detect", "image/png", img)).await;
    error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "timed out");
    assert!(h.contains_key("retry-after"));

    // Draining: readiness turns 503, inference still answers.
    service.begin_drain();
    let (s, _, b) = call(&service, get("/readyz")).await;
    error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
}

#[tokio::test]
async fn open_inference_protocol_routes_and_outputs() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.pixel_threshold = Some(0.2);
    let detector = references_detector(dir.path(), opts);
    let images = [png(&part(11, true)), png(&part(12, false))];
    // Both images of the request go into one batch, as here.
    let decoded: Vec<_> = images
        .iter()
        .map(|b| decode_image(b, "direct", &DecodeOptions::default()).unwrap())
        .collect();
    let expected: Vec<Detection> = detector.detect(&decoded).unwrap();
    let alone = direct(&detector, &images[0]);
    let service = common::service(detector, ServeOptions::default());

    let (s, _, b) = call(&service, get("/v2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["name"], "ssvp");
    let (s, _, b) = call(&service, get("/v2/models/ssvp")).await;
    assert_eq!(s, StatusCode::OK);
    let meta = json(&b);
    assert_eq!(meta["platform"], "ssvp_rust");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "image", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(meta["outputs"].as_array().unwrap().len(), 8);
    let (s, _, b) = call(&service, get("/v2/models/ssvp/ready")).await;
    assert_eq!(
        (s, json(&b)),
        (StatusCode::OK, json!({"name": "ssvp", "ready": true}))
    );
    let (s, _, b) = call(&service, get("/v2/health/ready")).await;
    assert_eq!((s, json(&b)), (StatusCode::OK, json!({"ready": true})));
    for path in ["/v2/models/other", "/v2/models/other/ready"] {
        let (s, _, b) = call(&service, get(path)).await;
        error_of(s, &b, StatusCode::NOT_FOUND, "unknown model `other`");
    }

    let body = infer_body(
        &images,
        json!({"threshold": 0.1, "return_anomaly_map": true, "return_mask": true}),
    );
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r: ssvp_serve::api::InferResponse = serde_json::from_slice(&b).unwrap();
    assert_eq!(r.id.as_deref(), Some("req-1"));
    assert_eq!(r.model_name, "ssvp");
    assert_eq!(r.parameters["threshold"], json!(0.1));
    assert_eq!(r.parameters["mode"], json!("references"));
    let out = |name: &str| {
        r.outputs
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pred_score",
            "raw_score",
            "pred_label",
            "anomaly_map",
            "pred_mask",
            "pred_boxes",
            "box_scores",
            "box_batch_index"
        ]
    );
    let raw = out("raw_score");
    assert_eq!(
        (raw.shape.clone(), raw.datatype.as_str()),
        (vec![2], "FP32")
    );
    for (i, e) in expected.iter().enumerate() {
        assert_eq!(
            raw.data.as_ref().unwrap()[i].as_f64().unwrap() as f32,
            e.score as f32
        );
        assert_eq!(
            out("pred_label").data.as_ref().unwrap()[i],
            json!(e.score > 0.1)
        );
    }
    let map = out("anomaly_map");
    assert_eq!(map.shape, vec![2, 96, 96]);
    let values: Vec<f32> = map
        .data
        .as_ref()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let want: Vec<f32> = expected.iter().flat_map(|d| d.map.data.clone()).collect();
    assert!(values == want, "the raw maps, exactly");
    let mask = out("pred_mask");
    assert_eq!(
        (mask.shape.clone(), mask.datatype.as_str()),
        (vec![2, 96, 96], "UINT8")
    );
    let boxes = out("pred_boxes");
    let regions: usize = expected.iter().map(|d| d.regions.len()).sum();
    assert_eq!(boxes.shape, vec![regions as u64, 4]);
    assert_eq!(out("box_scores").shape, vec![regions as u64]);
    assert_eq!(out("box_batch_index").datatype, "INT32");
    let mask_ones = mask
        .data
        .as_ref()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| **v == json!(1))
        .count();
    let region_area: usize = expected
        .iter()
        .flat_map(|d| d.regions.iter().map(|r| r.area))
        .sum();
    assert_eq!(mask_ones, region_area, "the mask is the regions' pixels");
    if let Some((i, r)) = expected
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.regions.iter().map(move |r| (i, r)))
        .next()
    {
        let [x, y, w, h] = r.bbox;
        assert_eq!(
            boxes.data.as_ref().unwrap().as_array().unwrap()[..4],
            [
                json!(x as f32),
                json!(y as f32),
                json!((x + w) as f32),
                json!((y + h) as f32)
            ]
        );
        assert_eq!(out("box_batch_index").data.as_ref().unwrap()[0], json!(i));
    }

    // Maps as 16-bit PNGs, asked by name; no threshold: no pred_label by default.
    let body = serde_json::to_vec(&json!({
        "parameters": {"map_format": "png"},
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"content_type": "base64"}, "data": [b64(&images[0])]}],
        "outputs": [{"name": "anomaly_map"}, {"name": "raw_score"}]
    }))
    .unwrap();
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json(&b);
    assert!(r.get("id").is_none());
    assert_eq!(r["outputs"][0]["datatype"], "BYTES");
    let png_map = unb64(r["outputs"][0]["data"][0].as_str().unwrap());
    let scale = ssvp_detect::output::encode::ColorScale { lo: 0.0, hi: 0.5 };
    assert!(
        png_map == map_bytes(&alone, MapFormat::Png16, scale).unwrap(),
        "the PNG map of detect"
    );
    let body = infer_body(&images[..1], json!({}));
    let (_, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    let names: Vec<String> = json(&b)["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "pred_score",
            "raw_score",
            "pred_boxes",
            "box_scores",
            "box_batch_index"
        ]
    );
}

#[tokio::test]
async fn open_inference_protocol_errors() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        max_images_per_request: 2,
        ..ServeOptions::default()
    };
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let img = png(&part(1, false));
    let infer = |body: serde_json::Value| {
        post(
            "/v2/models/ssvp/infer",
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
    };
    let input = |name: &str, datatype: &str, shape: serde_json::Value, data: serde_json::Value| json!({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]});
    let cases = [
        (
            input("image", "BYTES", json!([1]), json!([b64(&img)])),
            StatusCode::OK,
            "",
        ),
        (
            input("pixels", "BYTES", json!([1]), json!([b64(&img)])),
            StatusCode::BAD_REQUEST,
            "unknown input `pixels`",
        ),
        (
            input("image", "FP32", json!([1]), json!([1.0])),
            StatusCode::BAD_REQUEST,
            "BYTES",
        ),
        (
            input("image", "BYTES", json!([2]), json!([b64(&img)])),
            StatusCode::BAD_REQUEST,
            "says 2 images",
        ),
        (
            input("image", "BYTES", json!([1, 2, 3]), json!([b64(&img)])),
            StatusCode::BAD_REQUEST,
            "shape",
        ),
        (
            input("image", "BYTES", json!([1]), json!(["***"])),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
        (
            input("image", "BYTES", json!([1]), json!([17])),
            StatusCode::BAD_REQUEST,
            "base64 string",
        ),
        (
            input("image", "BYTES", json!([1]), json!("x")),
            StatusCode::BAD_REQUEST,
            "array",
        ),
        (
            input("image", "BYTES", json!([0]), json!([])),
            StatusCode::BAD_REQUEST,
            "no image",
        ),
        (
            input(
                "image",
                "BYTES",
                json!([3]),
                json!([b64(&img), b64(&img), b64(&img)]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max-images-per-request",
        ),
        (
            input("image", "BYTES", json!([1]), json!([b64(b"not an image")])),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported image 0 of the request:",
        ),
        (
            input("image", "BYTES", json!([1]), json!([b64(&img[..40])])),
            StatusCode::UNPROCESSABLE_ENTITY,
            // Not "cannot decode image image 0".
            "cannot decode image 0 of the request:",
        ),
        (json!({"inputs": []}), StatusCode::BAD_REQUEST, "no input"),
        (
            json!({"inputs": "image"}),
            StatusCode::BAD_REQUEST,
            "not an inference request",
        ),
        (
            json!({"id": "a", "outputs": [{"name": "pred_label"}], "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "needs a threshold",
        ),
        (
            json!({"outputs": [{"name": "pred_mask"}], "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "pixel threshold",
        ),
        (
            json!({"outputs": [{"name": "heatmap"}], "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "unknown output `heatmap`",
        ),
        (
            json!({"parameters": {"threshold": "high"}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "`threshold` must be a number",
        ),
        (
            json!({"parameters": {"map_format": "jpeg"}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "map_format",
        ),
        (
            json!({"parameters": {"return_mask": 1}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "must be a bool",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "str"}, "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "content_type",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 10}, "data": [b64(&img)]}]}),
            StatusCode::BAD_REQUEST,
            "both `data` and `binary_data_size`",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, _, b) = call(&service, infer(body.clone())).await;
        if status == StatusCode::OK {
            assert_eq!(s, status, "{body}: {}", String::from_utf8_lossy(&b));
        } else {
            error_of(s, &b, status, needle);
        }
    }
    // Images of two sizes: raw maps cannot be one tensor.
    let small = png(&image::RgbImage::from_pixel(
        64,
        80,
        image::Rgb([90, 90, 90]),
    ));
    let body = infer_body(&[img.clone(), small], json!({"return_anomaly_map": true}));
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", body),
    )
    .await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "one size");
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", b"{".to_vec()),
    )
    .await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "not an inference request");
    let (s, _, b) = call(
        &service,
        post(
            "/v2/models/other/infer",
            "application/json",
            infer_body(&[img], json!({})),
        ),
    )
    .await;
    error_of(s, &b, StatusCode::NOT_FOUND, "unknown model");
}

#[tokio::test]
async fn api_key_guards_everything_but_the_probes() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        api_key: Some("s3cret-key".into()),
        ..ServeOptions::default()
    };
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let img = png(&part(1, false));
    let with = |key: Option<&str>, uri: &str| {
        let mut r = Request::post(uri).header("content-type", "image/png");
        if let Some(k) = key {
            r = r.header("authorization", k);
        }
        r.body(Body::from(img.clone())).unwrap()
    };
    for key in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-ke"),
        Some("Basic s3cret-key"),
        Some("s3cret-key"),
    ] {
        let (s, h, b) = call(&service, with(key, "/v1/detect")).await;
        error_of(s, &b, StatusCode::UNAUTHORIZED, "API key");
        assert_eq!(h["www-authenticate"], "Bearer");
    }
    let (s, _, _) = call(&service, with(Some("Bearer s3cret-key"), "/v1/detect")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&service, with(Some("bearer s3cret-key"), "/v1/detect")).await;
    assert_eq!(s, StatusCode::OK, "the scheme is case-insensitive");
    for path in ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(call(&service, get(path)).await.0, StatusCode::OK, "{path}");
    }
    for path in ["/metrics", "/v2", "/v2/models/ssvp", "/openapi.json"] {
        assert_eq!(
            call(&service, get(path)).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let public = service_with_public_metrics(&dir);
    assert_eq!(call(&public, get("/metrics")).await.0, StatusCode::OK);
}

fn service_with_public_metrics(dir: &tempfile::TempDir) -> Service {
    let options = ServeOptions {
        api_key: Some("k".into()),
        public_metrics: true,
        ..ServeOptions::default()
    };
    service(references_detector(dir.path(), common::options()), options)
}

#[tokio::test]
async fn metrics_count_requests_images_batches_and_the_model() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let service = common::service(
        references_detector(dir.path(), common::options()),
        ServeOptions::default(),
    );
    for i in 0..3 {
        let (s, _, _) = call(
            &service,
            post("/v1/detect", "image/png", png(&part(i, i == 0))),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    // The server has no threshold, so nothing above was judged anomalous; a request's own
    // threshold decides its image, and the metric counts that decision: 0 flags the part,
    // 1e6 does not.
    for (threshold, anomalous) in [("0", true), ("1e6", false)] {
        let (s, _, b) = call(
            &service,
            post(
                &format!("/v1/detect?threshold={threshold}"),
                "image/png",
                png(&part(7, false)),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let d: ssvp_serve::api::DetectResponse = serde_json::from_slice(&b).unwrap();
        assert_eq!(d.detection.anomalous, Some(anomalous));
    }
    call(
        &service,
        post(
            "/v1/detect",
            "image/png",
            b"\x89PNG\r\n\x1a\n broken".to_vec(),
        ),
    )
    .await;
    let (s, h, b) = call(&service, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(b).unwrap();
    for needle in [
        "ssvp_http_requests_total{route=\"/v1/detect\",status=\"200\"} 5",
        "ssvp_http_requests_total{route=\"/v1/detect\",status=\"422\"} 1",
        "ssvp_http_request_duration_seconds_count{route=\"/v1/detect\"} 6",
        "ssvp_queue_wait_duration_seconds_count 5",
        "ssvp_inference_duration_seconds_count 5",
        "ssvp_batch_size_count 5",
        "ssvp_images_decoded_total 5",
        "ssvp_images_refused_total{reason=\"invalid\"} 1",
        "ssvp_images_scored_total 5",
        "ssvp_images_anomalous_total 1",
        "ssvp_queue_depth 0",
        "ssvp_http_requests_in_flight 1",
        "ssvp_model_ready 1",
        "ssvp_model_load_duration_seconds",
        "ssvp_model_info{model=\"ssvp\",mode=\"references\",class_name=\"object\",calibrated=\"false\"} 1",
        "ssvp_build_info{version=",
        "# EOF",
    ] {
        assert!(text.contains(needle), "no `{needle}` in\n{text}");
    }
}

#[tokio::test]
async fn a_head_and_a_calibration_are_served_like_detect() {
    let _gate = common::shared().await;
    // The trained-head path.
    let detector = head_detector(options());
    let img = png(&part(5, true));
    let expected = direct(&detector, &img);
    let service = common::service(detector, ServeOptions::default());
    let (s, _, b) = call(
        &service,
        post("/v1/detect?class_name=object", "image/png", img.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let d: ssvp_serve::api::DetectResponse = serde_json::from_slice(&b).unwrap();
    assert_eq!(d.detection.mode, "head");
    assert_eq!(d.detection.score, expected.score);
    assert_eq!(d.detection.score_global, expected.score_global);

    // A calibrated references detector: calibrated scores, decisions, and the calibration's
    // class only.
    let dir = tempfile::tempdir().unwrap();
    let mut detector = references_detector(&dir.path().join("refs"), options());
    let normal = dir.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    let inputs: Vec<InputFile> = (0..10)
        .map(|i| {
            let p = normal.join(format!("n{i}.png"));
            std::fs::write(&p, png(&part(200 + i, false))).unwrap();
            InputFile {
                rel: p.file_name().unwrap().into(),
                path: p,
            }
        })
        .collect();
    let job = CalibrateJob {
        decode: DecodeOptions::default(),
        target_fpr: 0.2,
        holdout: 0.0,
        seed: 0,
    };
    let (calibration, skipped) = calibrate_files(&detector, &inputs, &job, &mut |_| {}).unwrap();
    assert!(skipped.is_empty());
    detector = detector.with_calibration(calibration).unwrap();
    let expected = direct(&detector, &img);
    let service = common::service(detector, ServeOptions::default());
    let (s, _, b) = call(&service, post("/v1/detect", "image/png", img.clone())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json(&b);
    assert_eq!(
        v["calibrated_score"],
        json!(expected.calibrated_score.unwrap())
    );
    assert_eq!(v["anomalous"], json!(expected.anomalous.unwrap()));
    let (s, _, b) = call(
        &service,
        post("/v1/detect?class_name=bottle", "image/png", img.clone()),
    )
    .await;
    error_of(s, &b, StatusCode::CONFLICT, "bottle");
    // OIP: pred_score is the calibrated score, pred_label the decision, both by default.
    let (s, _, b) = call(
        &service,
        post(
            "/v2/models/ssvp/infer",
            "application/json",
            infer_body(&[img], json!({})),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r = json(&b);
    assert_eq!(r["parameters"]["calibrated"], json!(true));
    assert_eq!(
        r["outputs"][0]["data"][0].as_f64().unwrap() as f32,
        expected.calibrated_score.unwrap() as f32
    );
    assert_eq!(
        r["outputs"][2]["data"][0],
        json!(expected.anomalous.unwrap())
    );
}

#[tokio::test]
async fn mutual_scoring_is_refused_at_install() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let detector = ssvp_detect::Detector::load(&LoadSpec {
        checkpoint: None,
        config: None,
        memory: Some(MemorySpec::Mutual(MutualConfig::default())),
        backbones: ssvp_features::BackboneChoice::preset("tiny"),
        calibration: None,
        options: options(),
        device: candle_core::Device::Cpu,
    })
    .unwrap();
    drop(dir);
    let service = Service::new(ServeOptions::default()).unwrap();
    let err = service.install(detector, 0.0).unwrap_err();
    assert!(err.contains("mutual"), "{err}");
    assert_eq!(
        call(&service, get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn options_are_checked() {
    let bad = [
        ServeOptions {
            model_name: "a/b".into(),
            ..ServeOptions::default()
        },
        ServeOptions {
            model_name: String::new(),
            ..ServeOptions::default()
        },
        ServeOptions {
            max_body_bytes: 0,
            ..ServeOptions::default()
        },
        ServeOptions {
            request_timeout: Duration::ZERO,
            ..ServeOptions::default()
        },
        ServeOptions {
            api_key: Some("  ".into()),
            ..ServeOptions::default()
        },
    ];
    for options in bad {
        assert!(Service::new(options).is_err());
    }
}

/// A body whose bytes never come (a stalled upload).
fn stalled() -> Body {
    Body::from_stream(futures_util::stream::pending::<
        Result<Vec<u8>, std::io::Error>,
    >())
}

#[tokio::test]
async fn stalled_uploads_time_out_and_are_bounded_in_number() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServeOptions {
        request_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    options.batching.max_queue_size = 1;
    options.batching.max_batch_size = 1;
    let service = common::service(references_detector(dir.path(), common::options()), options);
    // Two uploads in flight fill the admission (a full queue plus a batch)...
    let mut stalls = Vec::new();
    for _ in 0..2 {
        let service = service.clone();
        stalls.push(tokio::spawn(async move {
            call(&service, post("/v1/detect", "image/png", stalled())).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...so a third is refused at once, before its body is read.
    let (s, h, b) = call(
        &service,
        post("/v1/detect", "image/png", png(&part(1, false))),
    )
    .await;
    error_of(
        s,
        &b,
        StatusCode::SERVICE_UNAVAILABLE,
        "too many requests in flight",
    );
    assert!(h.contains_key("retry-after"));
    // The stalled uploads end in 408 at the request timeout, and free their places.
    for stall in stalls {
        let (s, _, b) = stall.await.unwrap();
        error_of(s, &b, StatusCode::REQUEST_TIMEOUT, "upload took longer");
    }
    let (s, _, _) = call(
        &service,
        post("/v1/detect", "image/png", png(&part(1, false))),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // A stalled multipart form and a stalled inference request time out the same way.
    let ct = "multipart/form-data; boundary=x";
    let (s, _, b) = call(&service, post("/v1/detect", ct, stalled())).await;
    error_of(s, &b, StatusCode::REQUEST_TIMEOUT, "upload took longer");
    let (s, _, b) = call(
        &service,
        post("/v2/models/ssvp/infer", "application/json", stalled()),
    )
    .await;
    error_of(s, &b, StatusCode::REQUEST_TIMEOUT, "upload took longer");
}

#[tokio::test]
async fn concurrent_images_are_gathered_into_one_batch() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let detector = references_detector(dir.path(), common::options());
    let images: Vec<Vec<u8>> = (0..4).map(|i| png(&part(30 + i, i == 0))).collect();
    // Scored together, as the server will batch them.
    let decoded: Vec<_> = images
        .iter()
        .map(|b| decode_image(b, "x", &DecodeOptions::default()).unwrap())
        .collect();
    let together = detector.detect(&decoded[..3]).unwrap();
    // The oldest image waits up to 2 s for others: three concurrent requests make one batch.
    let mut options = ServeOptions::default();
    options.batching.max_queue_delay = Duration::from_secs(2);
    let service = common::service(detector, options);
    let one = |i: usize| {
        let service = service.clone();
        let body = images[i].clone();
        async move { call(&service, post("/v1/detect", "image/png", body)).await }
    };
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(one(0), one(1), one(2));
    for ((s, _, body), expected) in [a, b, c].into_iter().zip(&together) {
        assert_eq!(s, StatusCode::OK);
        let v = json(&body);
        assert_eq!(v["batch_size"], json!(3), "{v}");
        assert_eq!(
            v["score"].as_f64().unwrap(),
            expected.score,
            "as scored together"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the batch waited for the delay"
    );
    // A full batch (4 = --batch-size) goes at once, without waiting for the delay (a minute
    // here, so that waiting could not pass for slowness).
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServeOptions::default();
    options.batching.max_queue_delay = Duration::from_secs(60);
    let service = common::service(references_detector(dir.path(), common::options()), options);
    let one = |i: usize| {
        let service = service.clone();
        let body = images[i].clone();
        async move { call(&service, post("/v1/detect", "image/png", body)).await }
    };
    let started = std::time::Instant::now();
    let (a, b, c, d) = tokio::join!(one(0), one(1), one(2), one(3));
    for (s, _, body) in [a, b, c, d] {
        assert_eq!(s, StatusCode::OK);
        assert_eq!(json(&body)["batch_size"], json!(4));
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a full batch does not wait"
    );
}

/// A request of the binary tensor data extension: the JSON header, then each image as a
/// little-endian u32 length and its bytes.
fn binary_request(
    header: serde_json::Value,
    images: &[Vec<u8>],
    size_override: Option<usize>,
) -> Request<Body> {
    let mut tail = Vec::new();
    for img in images {
        tail.extend((img.len() as u32).to_le_bytes());
        tail.extend(img);
    }
    let mut header = header;
    header["inputs"][0]["parameters"] =
        json!({"binary_data_size": size_override.unwrap_or(tail.len())});
    let json_bytes = serde_json::to_vec(&header).unwrap();
    let length = json_bytes.len();
    let mut body = json_bytes;
    body.extend(tail);
    Request::post("/v2/models/ssvp/infer")
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", length.to_string())
        .body(Body::from(body))
        .unwrap()
}

/// The JSON part and the binary part of an answer of the extension.
fn split_binary(headers: &axum::http::HeaderMap, body: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (json(&body[..n]), body[n..].to_vec())
}

#[tokio::test]
async fn the_binary_tensor_data_extension_in_and_out() {
    let _gate = common::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let service = common::service(
        references_detector(dir.path(), common::options()),
        ServeOptions::default(),
    );
    let (_, _, b) = call(&service, get("/v2")).await;
    assert_eq!(json(&b)["extensions"], json!(["binary_tensor_data"]));
    let images = [png(&part(41, true)), png(&part(42, false))];
    let header = json!({
        "id": "bin-1",
        "parameters": {"map_format": "png"},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2]}],
        "outputs": [
            {"name": "raw_score", "parameters": {"binary_data": true}},
            {"name": "anomaly_map", "parameters": {"binary_data": true}},
            {"name": "pred_score"}
        ]
    });
    // Binary in, binary out.
    let (s, h, b) = call(&service, binary_request(header.clone(), &images, None)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/octet-stream");
    let (r, tail) = split_binary(&h, &b);
    assert_eq!(r["id"], "bin-1");
    let outputs = r["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], json!(8));
    assert!(outputs[0].get("data").is_none());
    assert!(outputs[2]["data"].is_array(), "pred_score stays JSON");
    let scores: Vec<f32> = tail[..8]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut at = 8;
    let mut pngs = Vec::new();
    for _ in 0..2 {
        let len = u32::from_le_bytes(tail[at..at + 4].try_into().unwrap()) as usize;
        pngs.push(tail[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    assert_eq!(at, tail.len());
    assert_eq!(
        outputs[1]["parameters"]["binary_data_size"],
        json!(tail.len() - 8)
    );
    // The same request as base64 JSON gives the same numbers and PNGs.
    let mut plain = header.clone();
    plain["inputs"][0]["data"] = json!(images.iter().map(|i| b64(i)).collect::<Vec<_>>());
    plain["outputs"] = json!([{"name": "raw_score"}, {"name": "anomaly_map"}]);
    let (s, _, b) = call(
        &service,
        post(
            "/v2/models/ssvp/infer",
            "application/json",
            serde_json::to_vec(&plain).unwrap(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r = json(&b);
    for i in 0..2 {
        assert_eq!(
            r["outputs"][0]["data"][i].as_f64().unwrap() as f32,
            scores[i]
        );
        assert_eq!(unb64(r["outputs"][1]["data"][i].as_str().unwrap()), pngs[i]);
    }
    // The request-wide switch makes every output binary; an empty tensor has 0 bytes.
    let all = json!({
        "parameters": {"binary_data_output": true, "threshold": 0.5},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    });
    let (s, h, b) = call(&service, binary_request(all, &images[1..], None)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (r, tail) = split_binary(&h, &b);
    let sizes: usize = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(sizes, tail.len());
    assert_eq!(r["outputs"][2]["name"], "pred_label");
    assert_eq!(r["outputs"][2]["parameters"]["binary_data_size"], json!(1));

    // Malformed binary requests.
    let header = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]});
    let (s, _, b) = call(
        &service,
        binary_request(header.clone(), &images[..1], Some(5)),
    )
    .await;
    error_of(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "binary_data_size` says 5 bytes",
    );
    let mut lying = Vec::from(1_000_000u32.to_le_bytes());
    lying.extend(&images[0][..100]);
    let body_json = serde_json::to_vec(&json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": lying.len()}}]})).unwrap();
    let send = |length: &str, body: Vec<u8>| {
        Request::post("/v2/models/ssvp/infer")
            .header("inference-header-content-length", length)
            .body(Body::from(body))
            .unwrap()
    };
    let mut body = body_json.clone();
    body.extend(&lying);
    let (s, _, b) = call(&service, send(&body_json.len().to_string(), body.clone())).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "claims 1000000 bytes");
    let (s, _, b) = call(&service, send("99999999", body.clone())).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "says 99999999 bytes");
    let (s, _, b) = call(&service, send("ten", body.clone())).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "byte count");
    let (s, _, b) = call(&service, send(&(body_json.len() - 1).to_string(), body)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "not an inference request");
    let mut plain_with_tail = serde_json::to_vec(&json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(&images[0])]}]})).unwrap();
    let n = plain_with_tail.len();
    plain_with_tail.extend(b"extra");
    let (s, _, b) = call(&service, send(&n.to_string(), plain_with_tail)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "no input declares");
    let bad_switch = json!({"parameters": {"binary_data_output": "yes"}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]});
    let (s, _, b) = call(&service, binary_request(bad_switch, &images[..1], None)).await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "binary_data_output");
}
