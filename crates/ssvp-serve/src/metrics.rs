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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfo {
    pub model: String,
    pub mode: String,
    pub class_name: String,
    pub calibrated: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_seconds: Family<Route, Histogram, fn() -> Histogram>,
    pub queue_wait_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub batch_size: Histogram,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    pub images_decoded: Counter,
    pub images_refused: Family<Reason, Counter>,
    pub images_scored: Counter,
    pub images_anomalous: Counter,
    pub model_load_seconds: Gauge<f64, AtomicU64>,
    pub model_ready: Gauge,
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
