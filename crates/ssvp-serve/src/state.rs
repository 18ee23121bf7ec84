//! What every handler shares: the options, the model once it is loaded, the batch queue, the
//! readiness flags and the metrics; and the two steps every inference route takes, decoding
//! uploads and scoring them through the queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_detect::output::encode::ColorScale;
use ssvp_detect::{Detector, ErrorKind, InputImage};
use ssvp_station::{Station, StationOptions};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::batcher::{BatchOptions, Batcher, DetectorSource, Job, Scored};
use crate::error::{status_of, ApiError};
use crate::metrics::{Metrics, ModelInfo};

/// Everything `ssvp serve` is configured with besides the model.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The Open Inference Protocol model name (`/v2/models/{name}`).
    pub model_name: String,
    /// Dynamic batching and the queue's bound.
    pub batching: BatchOptions,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most images in one Open Inference Protocol request (422 above).
    pub max_images_per_request: usize,
    /// The pixel budget (checked from the header, before decoding) and EXIF handling.
    pub decode: DecodeOptions,
    /// Uploads decoded at once (each on a blocking thread).
    pub decode_concurrency: usize,
    /// From the request's arrival to its answer: a request still queued or scoring then is
    /// answered 503.
    pub request_timeout: Duration,
    /// The bearer token every route but the health probes requires (`None`: no auth).
    pub api_key: Option<String>,
    /// Serve `/metrics` without the token.
    pub public_metrics: bool,
    /// After SIGTERM: how long to keep serving while readiness says 503 (so load balancers
    /// stop sending), before the listener closes.
    pub drain_delay: Duration,
    /// After the listener closes: how long in-flight requests get before the server exits.
    pub shutdown_timeout: Duration,
    /// The inspection station (`--station DIR`): the browser UI and its state.
    pub station: Option<StationSetup>,
}

/// Where the station keeps its state and what it watches.
#[derive(Clone, Debug)]
pub struct StationSetup {
    /// The station's directory (database, images, banks).
    pub dir: std::path::PathBuf,
    /// A folder whose new images are scored and recorded without a client (`--watch`).
    pub watch: Option<std::path::PathBuf>,
    /// Re-scoring and decoding.
    pub options: StationOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_name: "ssvp".into(),
            batching: BatchOptions::default(),
            max_body_bytes: 32 << 20,
            max_images_per_request: 16,
            decode: DecodeOptions::default(),
            decode_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            request_timeout: Duration::from_secs(60),
            api_key: None,
            public_metrics: false,
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            station: None,
        }
    }
}

impl ServeOptions {
    /// Checks every value, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.model_name.is_empty()
            || !self
                .model_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "the model name `{}` must be non-empty letters, digits, `-`, `_` or `.`",
                self.model_name
            ));
        }
        let b = &self.batching;
        if b.max_batch_size == 0 || b.max_queue_size == 0 {
            return Err("the maximum batch size and queue size must be positive".into());
        }
        if self.max_body_bytes == 0 || self.max_images_per_request == 0 {
            return Err("the body size and images-per-request limits must be positive".into());
        }
        if self.decode_concurrency == 0 {
            return Err("the decode concurrency must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return Err("the request timeout must be positive".into());
        }
        if self.api_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
            return Err("the API key is empty".into());
        }
        Ok(())
    }
}

/// What the middleware tells the handlers about their request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request id: the client's `x-request-id` when it is a sane token, else the server's.
    pub id: String,
    /// When the request arrived: request timeouts count from here.
    pub arrived: Instant,
}

/// The loaded model and its queue.
pub struct LoadedModel {
    /// The detector every request is scored by.
    pub source: Arc<DetectorSource>,
    /// The queue that gathers images into its batches.
    pub batcher: Batcher,
}

impl LoadedModel {
    /// The detector in force now.
    pub fn detector(&self) -> Arc<Detector> {
        self.source.current()
    }

    /// The station, when the server runs one.
    pub fn station(&self) -> Option<&Arc<Station>> {
        match &*self.source {
            DetectorSource::Station(s) => Some(s),
            DetectorSource::Fixed(_) => None,
        }
    }

    /// The value range the map PNGs are drawn on (the detector's map scale).
    pub fn map_scale(&self) -> ColorScale {
        self.detector().map_scale()
    }
}

/// The state behind every handler.
pub struct AppState {
    /// The server's options.
    pub options: ServeOptions,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    model: OnceLock<LoadedModel>,
    draining: AtomicBool,
    key_digest: Option<[u8; 32]>,
    decode_slots: Semaphore,
    /// Inference requests in flight, bodies included: bounds the memory of uploads.
    admission: Semaphore,
    next_id: AtomicU64,
    id_prefix: String,
    /// The station's live events (idle without a station).
    pub events: crate::station::events::Events,
}

impl AppState {
    fn new(options: ServeOptions) -> Self {
        let key_digest = options
            .api_key
            .as_ref()
            .map(|k| Sha256::digest(k.trim().as_bytes()).into());
        let decode_slots = Semaphore::new(options.decode_concurrency.max(1));
        // Enough for a full queue plus the batch being scored; beyond that a request would
        // only wait for a queue slot while holding its body in memory.
        let admission =
            Semaphore::new(options.batching.max_queue_size + options.batching.max_batch_size);
        // Request ids unique across restarts without a random source: the start time in
        // microseconds, then a counter.
        let id_prefix = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
        );
        Self {
            options,
            metrics: Arc::new(Metrics::new()),
            model: OnceLock::new(),
            draining: AtomicBool::new(false),
            key_digest,
            decode_slots,
            admission,
            next_id: AtomicU64::new(0),
            id_prefix,
            events: Default::default(),
        }
    }

    /// The model, or 503 while it is loading.
    pub fn model(&self) -> Result<&LoadedModel, ApiError> {
        self.model
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", 5))
    }

    /// Loaded and not draining: what the readiness probes answer.
    pub fn is_ready(&self) -> bool {
        self.model.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    /// Whether SIGTERM (or the test's shutdown) has started draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A new request id.
    pub fn new_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    /// Whether `token` is the API key (always true without one). Compares SHA-256 digests in
    /// constant time, so neither the key's bytes nor its length leak through timing.
    pub fn authorized(&self, token: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match &self.key_digest {
            None => true,
            Some(expected) => {
                let given: [u8; 32] = Sha256::digest(token.unwrap_or("").as_bytes()).into();
                bool::from(given.ct_eq(expected)) && token.is_some()
            }
        }
    }

    /// Whether an API key is configured.
    pub fn requires_key(&self) -> bool {
        self.key_digest.is_some()
    }

    /// Admits an inference request, or refuses it at once (503) when as many are in flight as
    /// the queue and a batch can hold: uploads are buffered in memory, so their number is
    /// bounded too, not only the queue's.
    pub fn admit(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        self.admission.try_acquire().map_err(|_| {
            ApiError::unavailable(
                "too many requests in flight; retry later or send the request to another replica",
                1,
            )
        })
    }

    /// Reads a request's body: over `--max-body-bytes` is 413; an upload still arriving when
    /// the request timeout runs out is 408.
    pub async fn read_body(&self, request: Request, arrived: Instant) -> Result<Bytes, ApiError> {
        let deadline = arrived + self.options.request_timeout;
        match tokio::time::timeout_at(deadline.into(), Bytes::from_request(request, &())).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(self.body_error(e.status(), e.body_text())),
            Err(_) => Err(self.upload_timeout()),
        }
    }

    /// 408 for an upload that outlasted the request timeout.
    pub fn upload_timeout(&self) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the upload took longer than the request timeout of {} s",
                self.options.request_timeout.as_secs_f64()
            ),
        )
    }

    /// The error of a body that could not be read; 413 names the limit.
    pub fn body_error(&self, status: StatusCode, text: String) -> ApiError {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "the body is larger than the limit of {} bytes (--max-body-bytes)",
                    self.options.max_body_bytes
                ),
            )
        } else {
            ApiError::new(status, text)
        }
    }

    /// Decodes an upload on a blocking thread, under the decode concurrency limit, counting it
    /// as decoded or refused.
    pub async fn decode(&self, bytes: Bytes, name: String) -> Result<InputImage, ApiError> {
        let _slot = self
            .decode_slots
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down", 1))?;
        let options = self.options.decode;
        let decoded =
            tokio::task::spawn_blocking(move || decode_image(&bytes, &name, &options)).await;
        match decoded {
            Ok(Ok(image)) => {
                self.metrics.images_decoded.inc();
                Ok(image)
            }
            Ok(Err(err)) => {
                self.metrics.refuse_image(match err.kind() {
                    ErrorKind::Unsupported => "unsupported",
                    ErrorKind::TooLarge => "too_large",
                    _ => "invalid",
                });
                Err(ApiError::new(status_of(err.kind()), err.to_string()))
            }
            Err(_) => {
                self.metrics.refuse_image("invalid");
                Err(ApiError::internal("decoding the image failed"))
            }
        }
    }

    /// Scores images through the batch queue; all of them or an error. The deadline is the
    /// request's arrival plus the request timeout. With `threshold` (a request's own), the
    /// images are decided at it instead of the server's threshold, before they are counted:
    /// `ssvp_images_anomalous_total` counts the decisions the client gets.
    pub async fn score(
        &self,
        images: Vec<InputImage>,
        class_name: &str,
        threshold: Option<f64>,
        arrived: Instant,
    ) -> Result<Vec<Scored>, ApiError> {
        let model = self.model()?;
        let deadline = arrived + self.options.request_timeout;
        let mut answers = Vec::with_capacity(images.len());
        for image in images {
            let (job, answer) = Job::new(image, class_name.to_string(), deadline);
            // On refusal the answers already queued are dropped, and the batcher skips them.
            model.batcher.submit(job)?;
            answers.push(answer);
        }
        let all = async {
            let mut scored = Vec::with_capacity(answers.len());
            for answer in answers {
                match answer.await {
                    Ok(Ok(s)) => scored.push(s),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(ApiError::internal("the batcher dropped the image")),
                }
            }
            Ok(scored)
        };
        let scored = tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| {
                ApiError::unavailable(
                    format!(
                        "the request timed out after {} s; retry later",
                        self.options.request_timeout.as_secs_f64()
                    ),
                    1,
                )
            })??;
        let mut scored = scored;
        if let Some(t) = threshold {
            for s in &mut scored {
                s.detector.decide_at(&mut s.detection, t)?;
            }
        }
        self.metrics.images_scored.inc_by(scored.len() as u64);
        let anomalous = scored
            .iter()
            .filter(|s| s.detection.anomalous == Some(true))
            .count();
        self.metrics.images_anomalous.inc_by(anomalous as u64);
        Ok(scored)
    }
}

/// The server's state: build it, install the model when it is loaded, hand its router to
/// `axum::serve` (or to `tower::ServiceExt::oneshot` in tests).
#[derive(Clone)]
pub struct Service {
    pub(crate) state: Arc<AppState>,
}

impl Service {
    /// A server that is live but not ready until [`Service::install`].
    pub fn new(options: ServeOptions) -> Result<Self, String> {
        options.validate()?;
        Ok(Self {
            state: Arc::new(AppState::new(options)),
        })
    }

    /// Installs the loaded model and starts its batcher (on the current tokio runtime); the
    /// server is ready from here on. Mutual scoring is refused: it scores a set of images
    /// against each other, which a stream of single requests is not.
    pub fn install(&self, mut detector: Detector, load_seconds: f64) -> Result<(), String> {
        // A scorer of sets (mutual scoring) compares the images of one call with each other.
        if detector.set_size().is_some() {
            return Err(
                "`ssvp serve` cannot score mutually: mutual scoring needs a set of \
                        images scored together. Serve a trained head (--checkpoint) or good \
                        references (--normal, --bank), or score sets with `ssvp detect --mutual`"
                    .into(),
            );
        }
        let state = &self.state;
        // One gathered batch is one backbone pass.
        detector.set_batch_size(state.options.batching.max_batch_size);
        state.metrics.model_load_seconds.set(load_seconds);
        state
            .metrics
            .model_info
            .get_or_create(&ModelInfo {
                model: state.options.model_name.clone(),
                mode: detector.mode().to_string(),
                class_name: detector.options().class_name.clone(),
                calibrated: detector.calibration().is_some().to_string(),
            })
            .set(1);
        let source = Arc::new(match &state.options.station {
            Some(setup) => DetectorSource::Station(Arc::new(
                Station::open(&setup.dir, detector, setup.options.clone())
                    .map_err(|e| format!("opening the station in {}: {e}", setup.dir.display()))?,
            )),
            None => DetectorSource::Fixed(Arc::new(detector)),
        });
        let batcher = Batcher::start(
            source.clone(),
            state.options.batching.clone(),
            state.metrics.clone(),
        );
        state
            .model
            .set(LoadedModel { source, batcher })
            .map_err(|_| "a model is already installed".to_string())?;
        if !state.is_draining() {
            state.metrics.model_ready.set(1);
        }
        Ok(())
    }

    /// Readiness turns 503; requests are still served.
    pub fn begin_drain(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        self.state.metrics.model_ready.set(0);
        self.state.events.close();
    }

    /// Closes the batch queue and waits until every queued image has been answered.
    pub async fn close(&self) {
        if let Some(model) = self.state.model.get() {
            model.batcher.close().await;
        }
    }

    /// The state (for the routes).
    pub(crate) fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// The options it runs with.
    pub fn options(&self) -> &ServeOptions {
        &self.state.options
    }

    /// The metrics text, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render()
    }
}
