//! Load on a loopback server: 64 concurrent clients, valid and malformed requests mixed. Every
//! answer must arrive, carry the request's own id and the score of the image that was sent;
//! no 5xx; resident memory bounded. The figures (p50/p99, images/s against the detector
//! scoring the same images directly) are printed; `SSVP_LOAD_REQUESTS` (per client, default
//! 4) makes a longer run:
//!
//! ```text
//! SSVP_LOAD_REQUESTS=50 cargo test --release -p ssvp-serve --test it load:: -- --nocapture
//! ```

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_serve::ServeOptions;

const CLIENTS: usize = 64;
const DISTINCT_IMAGES: u64 = 8;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_get_their_own_answers() {
    let _gate = common::alone().await;
    let per_client: usize = std::env::var("SSVP_LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let detector = references_detector(dir.path(), options());
    let images: Vec<Vec<u8>> = (0..DISTINCT_IMAGES)
        .map(|i| png(&part(i, i % 2 == 0)))
        .collect();
    // What each image scores alone, and the detector's own throughput on the same images in
    // batches of 4 (what `ssvp detect` runs), both in this process.
    let decoded: Vec<_> = images
        .iter()
        .map(|b| decode_image(b, "x", &DecodeOptions::default()).unwrap())
        .collect();
    let expected: Vec<f64> = decoded
        .iter()
        .map(|d| detector.detect(std::slice::from_ref(d)).unwrap()[0].score)
        .collect();
    let started = Instant::now();
    let mut direct_images = 0;
    while started.elapsed() < Duration::from_secs(1) {
        direct_images += detector.detect(&decoded).unwrap().len();
    }
    let direct_rate = direct_images as f64 / started.elapsed().as_secs_f64();

    let options = ServeOptions {
        drain_delay: Duration::from_millis(100),
        ..ServeOptions::default()
    };
    let server = spawn(detector, options).await;
    let addr = server.addr;
    // Warm up, then take the memory baseline.
    for img in &images {
        let r = http(
            addr,
            "POST",
            "/v1/detect",
            &[("content-type", "image/png")],
            img,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    let rss_before = rss_bytes();
    let images = Arc::new(images);
    let expected = Arc::new(expected);
    let began = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let images = images.clone();
        let expected = expected.clone();
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut scored = 0usize;
            let mut refused = 0usize;
            for r in 0..per_client {
                let which = (c * 7 + r * 3) % DISTINCT_IMAGES as usize;
                let id = format!("c{c}-r{r}");
                let kind = (c + r) % 6;
                let t = Instant::now();
                let (status, answer) = match kind {
                    // Valid: raw PNG on the native route.
                    0..=2 => {
                        let a = http(addr, "POST", "/v1/detect", &[("content-type", "image/png"), ("x-request-id", &id)], &images[which]).await;
                        (200, a)
                    }
                    // Valid: the Open Inference Protocol.
                    3 => {
                        let body = infer_body(&[images[which].clone()], json!({}));
                        let a = http(addr, "POST", "/v2/models/ssvp/infer", &[("content-type", "application/json"), ("x-request-id", &id)], &body).await;
                        (200, a)
                    }
                    // Malformed: a truncated PNG, a wrong media type.
                    4 => {
                        let img = &images[which];
                        let a = http(addr, "POST", "/v1/detect", &[("content-type", "image/png"), ("x-request-id", &id)], &img[..img.len() / 3]).await;
                        (422, a)
                    }
                    _ => {
                        let a = http(addr, "POST", "/v2/models/ssvp/infer", &[("content-type", "application/json"), ("x-request-id", &id)], b"{\"inputs\": [").await;
                        (400, a)
                    }
                };
                let answer = answer.unwrap_or_else(|e| panic!("{id}: lost answer: {e}"));
                assert_eq!(answer.status, status, "{id}: {}", String::from_utf8_lossy(&answer.body));
                assert_eq!(answer.header("x-request-id"), Some(id.as_str()), "{id}: the answer of another request");
                if status == 200 {
                    let v = json(&answer.body);
                    let score = match kind {
                        3 => {
                            assert_eq!(v["outputs"][1]["name"], "raw_score");
                            v["outputs"][1]["data"][0].as_f64().unwrap()
                        }
                        _ => {
                            assert_eq!(v["id"], json!(id));
                            v["score"].as_f64().unwrap()
                        }
                    };
                    // Batches differ from one run to the next; scores only in the last bits.
                    let want = expected[which];
                    assert!(
                        (score - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{id}: scored {score}, but image {which} scores {want}: another image's answer?"
                    );
                    latencies.push(t.elapsed().as_secs_f64());
                    scored += 1;
                } else {
                    refused += 1;
                }
            }
            (latencies, scored, refused)
        }));
    }
    let mut latencies = Vec::new();
    let (mut scored, mut refused) = (0, 0);
    for c in clients {
        let (l, s, r) = c.await.expect("a client failed");
        latencies.extend(l);
        scored += s;
        refused += r;
    }
    let seconds = began.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    latencies.sort_by(f64::total_cmp);
    let rate = scored as f64 / seconds;
    println!(
        "load: {CLIENTS} clients, {} requests ({scored} scored, {refused} refused as malformed) in {seconds:.2} s; \
         p50 {:.1} ms, p99 {:.1} ms; {rate:.1} images/s served vs {direct_rate:.1} images/s by the detector \
         directly ({:.2}x); RSS {:.0} -> {:.0} MiB",
        CLIENTS * per_client,
        percentile(&latencies, 0.5) * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        rate / direct_rate,
        rss_before as f64 / (1 << 20) as f64,
        rss_after as f64 / (1 << 20) as f64,
    );
    assert_eq!(scored + refused, CLIENTS * per_client);
    // Bounded memory: the queue holds at most 64 small images; growth beyond a few hundred
    // MiB would be a leak or an unbounded buffer.
    assert!(
        rss_after < rss_before + (256 << 20),
        "resident memory grew from {rss_before} to {rss_after} bytes"
    );
    let metrics = server.service.metrics_text();
    // (The readiness poll of `spawn` saw 503 while the model loaded; that is no answer to load.)
    let inference_5xx: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ssvp_http_requests_total") && !l.contains("ready"))
        .filter(|l| l.contains("status=\"5"))
        .collect();
    assert!(inference_5xx.is_empty(), "5xx answers: {inference_5xx:?}");
    let mut server = server;
    server.stop.take().unwrap().send(()).unwrap();
    server.done.await.unwrap().unwrap();
}
