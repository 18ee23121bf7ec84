//! `ssvp serve`: the detector of `ssvp detect` behind an HTTP server (library: `ssvp_serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ssvp_serve::{BatchOptions, LogFormat, ServeOptions, StationOptions, StationSetup};

use super::detector_args::{load_detector, DecisionArgs, ModelArgs};

const SERVE_HELP: &str = "\
Routes (docs/serve.md has the schemas and examples; GET /openapi.json the OpenAPI document):
  POST /v1/detect                 the image as the body (Content-Type image/png|jpeg|tiff|bmp)
                                  or the part `image` of a multipart form; query or form
                                  options class_name, map, overlay, regions, threshold. Answer:
                                  the Detection JSON of `ssvp detect`.
  POST /v2/models/NAME/infer      Open Inference Protocol (KServe v2): input `image`, BYTES [N],
                                  base64 files or the binary tensor data extension; outputs
                                  pred_score, raw_score, pred_label, anomaly_map, pred_mask,
                                  pred_boxes, box_scores, box_batch_index (JSON or binary)
  GET  /v2, /v2/models/NAME, /v2/models/NAME/ready, /v2/health/live, /v2/health/ready
  GET  /healthz, /readyz, /metrics (Prometheus), /openapi.json
  With --station DIR: the inspection station's UI at GET / and its API under /station/api
  (docs/station.md); /v1/detect parts are stored in the station too.

The model flags are checked first (the files they name exist and read: checkpoint, config,
bank, references, calibration); then the server listens and answers the probes while the model
loads (live, not ready).
Concurrent images are gathered into one backbone pass of up to --batch-size images; the oldest
waits at most --max-queue-delay-ms for others. At most --max-queue-size images wait; beyond
that, and while loading or draining, the answer is 503 with Retry-After.

Errors are JSON {\"error\": \"...\"}: 400 malformed request, 401 missing or wrong API key, 404
unknown model or route, 409 class name the calibration was not made for, 413 body over
--max-body-bytes, 415 not an image type taken, 422 undecodable image, over --max-pixels (checked
from the header before decoding) or over --max-images-per-request, 503 as above, 500 the model
failed.

API key: --api-key-file FILE or the environment variable SSVP_API_KEY (never on the command
line, where `ps` shows it); then every route but the health probes needs `Authorization: Bearer
KEY` (and /metrics too, unless --public-metrics).

SIGTERM or Ctrl-C: readiness turns 503 at once while requests are still served for
--drain-delay seconds; then the listener closes, requests in flight get --shutdown-timeout
seconds, and the process exits 0. A second SIGTERM or Ctrl-C stops at once. Logs: one line
per request on stderr (RUST_LOG sets the level).";

#[derive(clap::Args)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Good reference images (files or directories, repeatable) to score against, as in
    /// `ssvp detect --normal`.
    #[arg(long, value_name = "PATH")]
    pub normal: Vec<PathBuf>,
    #[command(flatten)]
    pub decision: DecisionArgs,
    /// Address to listen on (0.0.0.0 for every interface, as in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// The model's name in the Open Inference Protocol routes (/v2/models/NAME).
    #[arg(long, default_value = "ssvp")]
    pub model_name: String,
    /// How long the oldest queued image may wait for others to fill its batch, in
    /// milliseconds (0: score what is queued at once).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub max_queue_delay_ms: u64,
    /// Most images waiting to be scored; beyond it requests get 503 at once.
    #[arg(long, default_value_t = 64)]
    pub max_queue_size: usize,
    /// Seconds from a request's arrival to its answer; a request still waiting then gets 503.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub request_timeout: f64,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Most images in one Open Inference Protocol request (422 above).
    #[arg(long, default_value_t = 16)]
    pub max_images_per_request: usize,
    /// Uploads decoded at once (default: the number of cores).
    #[arg(long)]
    pub decode_concurrency: Option<usize>,
    /// File holding the API key that requests must send as `Authorization: Bearer KEY`.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Serve /metrics without the API key.
    #[arg(long)]
    pub public_metrics: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Seconds to keep serving after SIGTERM while readiness says 503.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub drain_delay: f64,
    /// Seconds the requests in flight get once the listener has closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    pub shutdown_timeout: f64,
    /// Print the OpenAPI document and exit (docs/openapi.json is this output).
    #[arg(long)]
    pub print_openapi: bool,
    /// Run the inspection station: the browser UI at / with its state (parts, results,
    /// feedback, threshold and bank versions, audit log) kept in DIR (docs/station.md).
    #[arg(long, value_name = "DIR")]
    pub station: Option<PathBuf>,
    /// Score and store every image file that appears in DIR (a camera's drop folder).
    #[arg(long, value_name = "DIR", requires = "station")]
    pub watch: Option<PathBuf>,
    /// After a part is marked good or the regions change: besides labelled and flagged parts,
    /// re-score this many of the newest parts.
    #[arg(long, value_name = "N", default_value_t = 200, requires = "station")]
    pub rescore_window: usize,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))
}

fn api_key(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let key = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?,
        ),
        None => std::env::var("SSVP_API_KEY").ok(),
    };
    match key.map(|k| k.trim().to_string()) {
        Some(k) if k.is_empty() => anyhow::bail!("the API key is empty"),
        other => Ok(other),
    }
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    if args.print_openapi {
        print!("{}", ssvp_serve::openapi::document_json());
        return Ok(());
    }
    if args.model.memory.mutual {
        anyhow::bail!(
            "`ssvp serve` cannot score mutually: mutual scoring needs a set of images scored \
             together. Serve a trained head (--checkpoint) or good references (--normal, \
             --bank), or score sets with `ssvp detect --mutual`"
        );
    }
    // The station's folders are checked first, before the model flags and the port.
    if let Some(dir) = &args.watch {
        if !dir.is_dir() {
            anyhow::bail!("--watch {}: not a directory", dir.display());
        }
    }
    if let Some(dir) = args.station.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        anyhow::bail!(
            "--station {}: not a directory (the station keeps its state in a folder)",
            dir.display()
        );
    }
    args.model.memory.normal = std::mem::take(&mut args.normal);
    let mut detector_options = args.model.options();
    args.decision.apply(&mut detector_options)?;
    let spec = args
        .model
        .spec(detector_options, args.decision.calibration.clone())?;
    // The model flags are checked before the port opens; the model loads after, while the
    // probes answer.
    ssvp_detect::preflight::check(&spec)?;
    let options = ServeOptions {
        model_name: args.model_name.clone(),
        batching: BatchOptions {
            max_batch_size: args.model.source.batch_size,
            max_queue_delay: Duration::from_millis(args.max_queue_delay_ms),
            max_queue_size: args.max_queue_size,
        },
        max_body_bytes: args.max_body_bytes,
        max_images_per_request: args.max_images_per_request,
        decode: args.model.decode(),
        decode_concurrency: args
            .decode_concurrency
            .unwrap_or(ServeOptions::default().decode_concurrency),
        request_timeout: seconds(args.request_timeout, "--request-timeout")?,
        api_key: api_key(args.api_key_file.as_ref())?,
        public_metrics: args.public_metrics,
        drain_delay: seconds(args.drain_delay, "--drain-delay")?,
        shutdown_timeout: seconds(args.shutdown_timeout, "--shutdown-timeout")?,
        station: args.station.clone().map(|dir| StationSetup {
            dir,
            watch: args.watch.clone(),
            options: StationOptions {
                rescore_window: args.rescore_window,
                decode: args.model.decode(),
            },
        }),
    };
    let log = if args.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let addr = SocketAddr::new(args.host, args.port);
    Ok(ssvp_serve::run(addr, options, log, move || {
        load_detector(&spec)
    })?)
}
