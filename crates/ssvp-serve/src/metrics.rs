//! Prometheus metrics in the OpenMetrics text format, on an explicit registry per server (no
//! global state: servers in parallel tests keep their own counts). Names follow Prometheus'
//! conventions: an `ssvp_` prefix, base units (seconds), `_total` counters (the client adds the
//! suffix), and only low-cardinality labels: a route pattern (never a URI), a status code, a
//! refusal reason.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: a tiny model answers in milliseconds, the paper's ViT-L towers
/// on a CPU in tens of seconds.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route's pattern (`/v2/models/{name}/infer`), never the raw path.
    pub route: String,
    /// The HTTP status code.
    pub status: String,
}

/// Labels of the request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route's pattern.
    pub route: String,
}

/// Labels of the refused-images counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `unsupported`, `too_large` or `invalid`.
    pub reason: String,
}

/// Labels of `ssvp_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    /// The server's version.
    pub version: String,
}

/// Labels of `ssvp_model_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfo {
    /// The model's name (`--model-name`).
    pub model: String,
    /// The scoring mode (`Detection::mode`).
    pub mode: String,
    /// The class name images are scored as by default.
    pub class_name: String,
    /// `true` when a calibration is loaded.
    pub calibrated: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    /// `ssvp_http_requests_total`: requests answered, by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// `ssvp_http_request_duration_seconds`: arrival to answer, by route.
    pub request_seconds: Family<Route, Histogram, fn() -> Histogram>,
    /// `ssvp_queue_wait_duration_seconds`: an image's wait in the batch queue.
    pub queue_wait_seconds: Histogram,
    /// `ssvp_inference_duration_seconds`: the time to score one batch.
    pub inference_seconds: Histogram,
    /// `ssvp_batch_size`: images per scored batch.
    pub batch_size: Histogram,
    /// `ssvp_http_requests_in_flight`: requests being handled.
    pub in_flight: Gauge,
    /// `ssvp_queue_depth`: images waiting in the batch queue.
    pub queue_depth: Gauge,
    /// `ssvp_images_decoded_total`: uploaded images decoded.
    pub images_decoded: Counter,
    /// `ssvp_images_refused_total`: uploaded images refused before scoring, by reason.
    pub images_refused: Family<Reason, Counter>,
    /// `ssvp_images_scored_total`: images scored.
    pub images_scored: Counter,
    /// `ssvp_images_anomalous_total`: images judged anomalous.
    pub images_anomalous: Counter,
    /// `ssvp_model_load_duration_seconds`: the time the model took to load.
    pub model_load_seconds: Gauge<f64, AtomicU64>,
    /// `ssvp_model_ready`: 1 once the model is loaded and the server is not draining.
    pub model_ready: Gauge,
    /// `ssvp_model_info`: the served model, as labels (value 1).
    pub model_info: Family<ModelInfo, Gauge>,
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ssvp");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern and status code",
            requests.clone(),
        );
        let request_seconds =
            Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from the request's arrival to its answer, by route pattern",
            request_seconds.clone(),
        );
        let queue_wait_seconds = latency_histogram();
        registry.register(
            "queue_wait_duration_seconds",
            "Time an image waited in the batch queue before its batch started",
            queue_wait_seconds.clone(),
        );
        let inference_seconds = latency_histogram();
        registry.register(
            "inference_duration_seconds",
            "Time to score one batch (backbones, scorers, post-processing)",
            inference_seconds.clone(),
        );
        let batch_size = Histogram::new(BATCH_BUCKETS);
        registry.register("batch_size", "Images per scored batch", batch_size.clone());
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Images waiting in the batch queue",
            queue_depth.clone(),
        );
        let images_decoded = Counter::default();
        registry.register(
            "images_decoded",
            "Uploaded images decoded",
            images_decoded.clone(),
        );
        let images_refused = Family::<Reason, Counter>::default();
        registry.register(
            "images_refused",
            "Uploaded images refused before scoring, by reason (unsupported, too_large, invalid)",
            images_refused.clone(),
        );
        let images_scored = Counter::default();
        registry.register("images_scored", "Images scored", images_scored.clone());
        let images_anomalous = Counter::default();
        registry.register(
            "images_anomalous",
            "Images judged anomalous",
            images_anomalous.clone(),
        );
        let model_load_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "model_load_duration_seconds",
            "Time it took to load the model at start",
            model_load_seconds.clone(),
        );
        let model_ready = Gauge::default();
        registry.register(
            "model_ready",
            "1 once the model is loaded and the server is not draining",
            model_ready.clone(),
        );
        let model_info = Family::<ModelInfo, Gauge>::default();
        registry.register(
            "model_info",
            "The served model: name, scoring mode, class name, whether calibrated (value 1)",
            model_info.clone(),
        );
        let build_info = Family::<BuildInfo, Gauge>::default();
        build_info
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "The ssvp build (value 1)", build_info);
        Self {
            registry,
            requests,
            request_seconds,
            queue_wait_seconds,
            inference_seconds,
            batch_size,
            in_flight,
            queue_depth,
            images_decoded,
            images_refused,
            images_scored,
            images_anomalous,
            model_load_seconds,
            model_ready,
            model_info,
        }
    }

    /// Counts an answered request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts an image refused before scoring.
    pub fn refuse_image(&self, reason: &str) {
        self.images_refused
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
