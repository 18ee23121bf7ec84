//! What the server tests share: tiny seeded detectors, synthetic part images in every format,
//! an in-process router call, a loopback server, and a minimal HTTP/1.1 client that reports a
//! reset connection as such (a library client would retry or hide it).
#![allow(dead_code)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use candle_core::Device;
use http_body_util::BodyExt;
use image::{ImageFormat, RgbImage};
use ssvp_detect::memory::{BankOptions, MemorySpec, ReferenceScoring};
use ssvp_detect::{Detector, DetectorOptions, LoadSpec};
use ssvp_model::{SsvpConfig, SsvpHead};
use ssvp_serve::{ServeOptions, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tower::ServiceExt;

/// The tests share one process. Those that measure the process itself (its resident memory,
/// its throughput, the timing of a drain) run alone: they hold [`alone`] while every other
/// async test holds [`shared`], so no other test's images or threads are counted in theirs.
static GATE: RwLock<()> = RwLock::const_new(());

/// Runs beside the other tests, but not beside a test that holds [`alone`].
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().await
}

/// Runs with no other gated test in the process.
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    GATE.write().await
}

/// Side of the test images.
pub const SIDE: u32 = 96;

/// A deterministic synthetic part: a shaded disc on a textured background; `defect` adds a
/// dark scratch whose place depends on `seed`.
pub fn part(seed: u64, defect: bool) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 16) as u8
    };
    let c = SIDE as f32 / 2.0;
    let (sx, sy) = (20 + (seed % 40) as u32, 20 + ((seed / 7) % 40) as u32);
    RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
        let base = if d < 36.0 {
            170
        } else {
            60 + ((x / 8 + y / 8) % 2) as u8 * 20
        };
        let v = base + noise();
        if defect && x >= sx && x < sx + 18 && y >= sy && y < sy + 4 {
            image::Rgb([10, 10, 10])
        } else {
            image::Rgb([v, v.saturating_sub(10), v / 2 + 40])
        }
    })
}

/// `img` encoded as `format`.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// `img` as PNG.
pub fn png(img: &RgbImage) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

/// Detector options for fast tests: a small map grid.
pub fn options() -> DetectorOptions {
    DetectorOptions {
        map_size: 64,
        ..DetectorOptions::default()
    }
}

/// Writes `n` good parts into `dir`.
pub fn write_references(dir: &Path, n: u64) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("good_{i}.png"));
            std::fs::write(&p, png(&part(100 + i, false))).unwrap();
            p
        })
        .collect()
}

/// A detector on the tiny backbones scoring against 4 good references in `dir`.
pub fn references_detector(dir: &Path, options: DetectorOptions) -> Detector {
    let paths = write_references(dir, 4);
    Detector::load(&LoadSpec {
        checkpoint: None,
        config: None,
        memory: Some(MemorySpec::References {
            paths,
            options: BankOptions::default(),
            scoring: ReferenceScoring::default(),
        }),
        backbones: ssvp_features::BackboneChoice::preset("tiny"),
        calibration: None,
        options,
        device: Device::Cpu,
    })
    .expect("the references detector loads")
}

/// A detector with an untrained tiny SSVP head (the head's path, not its accuracy, is tested).
pub fn head_detector(options: DetectorOptions) -> Detector {
    let cfg = SsvpConfig::tiny();
    let backbones = Arc::new(
        ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &Device::Cpu)
            .expect("tiny backbones"),
    );
    let head = SsvpHead::new(&cfg, &Device::Cpu).expect("head");
    Detector::new(head, backbones, options).expect("detector")
}

/// A ready service over `detector` (call inside a tokio runtime).
pub fn service(detector: Detector, options: ServeOptions) -> Service {
    let service = Service::new(options).expect("valid options");
    service.install(detector, 0.0).expect("installs");
    service
}

/// One request through the router, in process.
pub async fn call(service: &Service, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = service.router().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

/// A request with a body.
pub fn post(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

/// A GET request.
pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// The JSON of a body.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A multipart/form-data body of `(name, file name, bytes)` parts, and its content type.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "ssvp-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An Open Inference Protocol request body with `images` as base64 BYTES.
pub fn infer_body(images: &[Vec<u8>], parameters: serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    let data: Vec<String> = images
        .iter()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "id": "req-1",
        "parameters": parameters,
        "inputs": [{"name": "image", "shape": [images.len()], "datatype": "BYTES", "data": data}]
    }))
    .unwrap()
}

/// A server on a loopback port, stopped through `stop`.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<Result<(), ssvp_serve::Error>>,
    pub service: Service,
}

/// Starts `ssvp_serve::serve` on 127.0.0.1 with an ephemeral port.
pub async fn spawn(detector: Detector, options: ServeOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::new(options).expect("valid options");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(ssvp_serve::serve(
        listener,
        service.clone(),
        move || Ok::<_, std::convert::Infallible>(detector),
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..200 {
        if let Ok(r) = http(addr, "GET", "/readyz", &[], &[]).await {
            if r.status == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        addr,
        stop: Some(stop),
        done,
        service,
    }
}

/// An answer read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the answer is read to
/// the end. Any I/O error (refused, reset, closed before a full answer) is returned as such.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_answer(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("incomplete answer of {} bytes", raw.len()),
        )
    })
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let answer = Answer {
        status,
        headers,
        body,
    };
    match answer.header("content-length") {
        Some(n) if n.parse::<usize>().ok()? != answer.body.len() => None,
        _ => Some(answer),
    }
}

/// Resident memory of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
