//! A seeded mutation fuzzer over the request path: mutated PNG, JPEG, TIFF and BMP files as raw
//! bodies, mutated multipart forms, and mutated Open Inference Protocol bodies (mutated images
//! inside valid JSON, mutated JSON text, and mutated bodies of the binary tensor data
//! extension). Every input must end in a 2xx or a 4xx with a
//! JSON error, and the server must answer the next request. `SSVP_FUZZ_ITERS` (default 2000)
//! and `SSVP_FUZZ_SEED` set the run; a long run:
//!
//! ```text
//! SSVP_FUZZ_ITERS=100000 cargo test --release -p ssvp-serve --test it fuzz:: -- --nocapture
//! ```

use crate::common;

use std::time::Instant;

use axum::http::StatusCode;
use common::*;
use image::ImageFormat;
use serde_json::json;
use ssvp_serve::ServeOptions;
use ssvp_util::rng::SplitMix64;

/// Seeded draws (the workspace's SplitMix64).
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations: bit flips, byte overwrites with interesting values, deletions,
/// insertions, duplicated chunks, truncation, and header fields set to extremes.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
        }
        let at = rng.below(v.len());
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0u8, 0xff, 0x7f, 0x80, 1][rng.below(5)],
            2 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let bytes: Vec<u8> = (0..1 + rng.below(32)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.below(128)).min(v.len());
                let chunk = v[at..end].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            5 => v.truncate(at),
            _ => {
                // Width/height-like fields near the start set to huge values.
                let at = rng.below(v.len().min(64));
                for b in v.iter_mut().skip(at).take(4) {
                    *b = 0xff;
                }
            }
        }
    }
    v
}

#[tokio::test]
async fn mutated_requests_end_in_2xx_or_4xx() {
    let _gate = common::shared().await;
    let iterations: usize = std::env::var("SSVP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("SSVP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261130);
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        max_body_bytes: 4 << 20,
        decode: ssvp_detect::input::DecodeOptions {
            max_pixels: 4_000_000,
            ..Default::default()
        },
        ..ServeOptions::default()
    };
    let service = service(references_detector(dir.path(), common::options()), options);
    let img = part(9, true);
    let files = [
        (encode(&img, ImageFormat::Png), "image/png"),
        (encode(&img, ImageFormat::Jpeg), "image/jpeg"),
        (encode(&img, ImageFormat::Tiff), "image/tiff"),
        (encode(&img, ImageFormat::Bmp), "image/bmp"),
        (
            encode(
                &image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(40, 30, |x, y| {
                    image::Luma([(x * y * 50) as u16])
                }))
                .to_rgb8(),
                ImageFormat::Png,
            ),
            "image/png",
        ),
    ];
    let mut rng = Rng(SplitMix64::new(seed));
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let started = Instant::now();
    for i in 0..iterations {
        let (file, mime) = &files[rng.below(files.len())];
        let request = match rng.below(6) {
            0 | 1 => post("/v1/detect", mime, mutate(&mut rng, file)),
            2 => {
                let (ct, form) = multipart(&[
                    ("image", Some("part.png"), file),
                    ("map", None, b"true"),
                    ("threshold", None, b"0.2"),
                ]);
                post("/v1/detect", &ct, mutate(&mut rng, &form))
            }
            3 => {
                let bad = mutate(&mut rng, file);
                post(
                    "/v2/models/ssvp/infer",
                    "application/json",
                    infer_body(&[bad], json!({"return_anomaly_map": rng.below(2) == 0})),
                )
            }
            4 => {
                // The binary tensor data extension: JSON header, then length-prefixed files.
                let header = serde_json::to_vec(&json!({
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                "parameters": {"binary_data_size": file.len() + 4}}],
                    "parameters": {"binary_data_output": true}
                }))
                .unwrap();
                let length = header.len();
                let mut body = header;
                body.extend((file.len() as u32).to_le_bytes());
                body.extend(file);
                axum::http::Request::post("/v2/models/ssvp/infer")
                    .header("inference-header-content-length", length.to_string())
                    .body(axum::body::Body::from(mutate(&mut rng, &body)))
                    .unwrap()
            }
            _ => {
                let body = infer_body(
                    std::slice::from_ref(file),
                    json!({"threshold": 0.3, "map_format": "png", "return_anomaly_map": true}),
                );
                post(
                    "/v2/models/ssvp/infer",
                    "application/json",
                    mutate(&mut rng, &body),
                )
            }
        };
        let (status, _, body) = call(&service, request).await;
        *counts.entry(status.as_u16()).or_default() += 1;
        assert!(
            status.is_success() || status.is_client_error(),
            "input {i} (seed {seed}) answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            let v = json(&body);
            assert!(
                v["error"].as_str().is_some_and(|m| !m.is_empty()),
                "input {i}: {v}"
            );
        }
    }
    // The server still answers.
    let (status, _, _) = call(
        &service,
        post("/v1/detect", "image/png", files[0].0.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    println!(
        "fuzz: {iterations} inputs (seed {seed}) in {:.1} s, answers by status: {counts:?}",
        started.elapsed().as_secs_f64()
    );
}
