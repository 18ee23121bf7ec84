//! Dynamic batching, as Triton's dynamic batcher does it: requests put their decoded images in
//! one bounded queue; a batcher task takes the oldest, gathers more until the batch is full or
//! the oldest has waited `max_queue_delay`, and scores the batch in one backbone pass on a
//! blocking thread, never on the async runtime's. The queue is the backpressure: when it is
//! full a request is refused at once (503), so memory never climbs with the load.
//!
//! One batch runs at a time: the backbones already use every core, so two batches side by side
//! would only share them and double the memory.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ssvp_detect::{Detection, Detector, InputImage};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::metrics::Metrics;
use ssvp_station::Station;

/// How images are gathered into batches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOptions {
    /// Most images per backbone pass.
    pub max_batch_size: usize,
    /// How long the oldest image may wait for others to join its batch (0: take what is
    /// queued and go, Triton's default).
    pub max_queue_delay: Duration,
    /// Most images waiting; a request that finds the queue full gets 503 at once.
    pub max_queue_size: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch_size: 4,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 64,
        }
    }
}

/// A scored image, with the image itself back (for the overlay) and how long it waited.
pub struct Scored {
    /// What the detector said about the image.
    pub detection: Detection,
    /// The decoded image, handed back for the overlay.
    pub image: InputImage,
    /// Seconds the image waited in the queue before its batch started.
    pub queue_seconds: f64,
    /// Images in the batch it was scored in.
    pub batch_size: usize,
    /// The detector that scored it (a station may have put another in force since).
    pub detector: Arc<Detector>,
}

/// One image waiting to be scored.
pub struct Job {
    /// The decoded image.
    pub image: InputImage,
    /// The class name to score it as.
    pub class_name: String,
    /// After this instant the job is answered 503 instead of being scored.
    pub deadline: Instant,
    /// Where the answer goes (dropped unanswered when the request was abandoned).
    pub reply: oneshot::Sender<Result<Scored, ApiError>>,
    enqueued: Instant,
}

impl Job {
    /// A job and the receiver of its answer.
    pub fn new(
        image: InputImage,
        class_name: String,
        deadline: Instant,
    ) -> (Self, oneshot::Receiver<Result<Scored, ApiError>>) {
        let (reply, answer) = oneshot::channel();
        (
            Self {
                image,
                class_name,
                deadline,
                reply,
                enqueued: Instant::now(),
            },
            answer,
        )
    }
}

/// Where the detector of each batch comes from: the one loaded, or the one a station's
/// versions put in force (which an operator's action replaces at run time).
pub enum DetectorSource {
    /// The detector loaded at start.
    Fixed(Arc<Detector>),
    /// The station's detector in force.
    Station(Arc<Station>),
}

impl DetectorSource {
    /// The detector in force now.
    pub fn current(&self) -> Arc<Detector> {
        match self {
            DetectorSource::Fixed(d) => Arc::clone(d),
            DetectorSource::Station(s) => s.in_force().detector,
        }
    }
}

/// The queue's entrance and the batcher task behind it.
pub struct Batcher {
    intake: Mutex<Option<mpsc::Sender<Job>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the batcher task on the current runtime.
    pub fn start(
        detector: Arc<DetectorSource>,
        options: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(options.max_queue_size.max(1));
        let task = tokio::spawn(run(detector, options, rx, metrics.clone()));
        Self {
            intake: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            metrics,
        }
    }

    /// Puts a job in the queue, or refuses it at once when the queue is full or closed.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let intake = self.intake.lock().map_err(|_| poisoned())?;
        let Some(tx) = intake.as_ref() else {
            return Err(ApiError::unavailable(
                "the server is shutting down; send the request to another replica",
                1,
            ));
        };
        match tx.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::unavailable(
                "the queue is full; retry later or send the request to another replica",
                1,
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::unavailable(
                "the server is shutting down; send the request to another replica",
                1,
            )),
        }
    }

    /// Closes the intake and waits until every queued job has been answered.
    pub async fn close(&self) {
        if let Ok(mut intake) = self.intake.lock() {
            intake.take();
        }
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn poisoned() -> ApiError {
    ApiError::internal("the batch queue's lock was poisoned")
}

async fn run(
    detector: Arc<DetectorSource>,
    options: BatchOptions,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
) {
    let max_batch = options.max_batch_size.max(1);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + options.max_queue_delay;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    batch.push(job);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if options.max_queue_delay.is_zero() {
                break;
            }
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(job)) => batch.push(job),
                _ => break,
            }
        }
        metrics.queue_depth.dec_by(batch.len() as i64);
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            if job.reply.is_closed() {
                // The client went away (or its request failed on another image): skip it.
                continue;
            }
            if now > job.deadline {
                let _ = job.reply.send(Err(ApiError::unavailable(
                    "the request timed out in the queue; retry later",
                    1,
                )));
                continue;
            }
            metrics
                .queue_wait_seconds
                .observe(now.duration_since(job.enqueued).as_secs_f64());
            live.push(job);
        }
        if live.is_empty() {
            continue;
        }
        metrics.batch_size.observe(live.len() as f64);
        // Each batch is scored by the detector in force when it starts.
        let detector = detector.current();
        let batch_metrics = metrics.clone();
        let jobs = live.len();
        let outcome =
            tokio::task::spawn_blocking(move || score_batch(&detector, live, &batch_metrics)).await;
        if let Err(e) = outcome {
            // score_batch catches panics of the model itself; this is the thread failing.
            tracing::error!(jobs, "a batch's thread failed: {e}");
        }
    }
}

/// Scores the jobs of one batch and answers each. Jobs of one class name are scored together;
/// when a batch fails, its images are scored one by one, so one image's failure is its own.
/// The batch's time is recorded before any answer goes out, so a client that reads the metrics
/// after its answer finds its batch counted.
fn score_batch(detector: &Arc<Detector>, jobs: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let size = jobs.len();
    let mut groups: Vec<(String, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(c, _)| *c == job.class_name) {
            Some((_, group)) => group.push(job),
            None => groups.push((job.class_name.clone(), vec![job])),
        }
    }
    let mut answers = Vec::with_capacity(size);
    for (class_name, group) in groups {
        let waits: Vec<f64> = group
            .iter()
            .map(|j| started.duration_since(j.enqueued).as_secs_f64())
            .collect();
        let (images, replies): (Vec<InputImage>, Vec<_>) =
            group.into_iter().map(|j| (j.image, j.reply)).unzip();
        let scored = |detection, image, queue_seconds| Scored {
            detection,
            image,
            queue_seconds,
            detector: Arc::clone(detector),
            batch_size: size,
        };
        match detect(detector, &images, &class_name) {
            Ok(detections) => {
                for (((detection, image), reply), wait) in
                    detections.into_iter().zip(images).zip(replies).zip(waits)
                {
                    answers.push((reply, Ok(scored(detection, image, wait))));
                }
            }
            Err(err) if images.len() == 1 => {
                answers.extend(replies.into_iter().map(|r| (r, Err(err.clone()))));
            }
            Err(_) => {
                for ((image, reply), wait) in images.into_iter().zip(replies).zip(waits) {
                    let answer = detect(detector, std::slice::from_ref(&image), &class_name)
                        .map(|mut d| scored(d.remove(0), image, wait));
                    answers.push((reply, answer));
                }
            }
        }
    }
    metrics
        .inference_seconds
        .observe(started.elapsed().as_secs_f64());
    for (reply, answer) in answers {
        let _ = reply.send(answer);
    }
}

/// [`Detector::detect_as`], with a panic of the model turned into a 500 so that the batcher
/// lives on.
fn detect(
    detector: &Detector,
    images: &[InputImage],
    class_name: &str,
) -> Result<Vec<Detection>, ApiError> {
    match catch_unwind(AssertUnwindSafe(|| detector.detect_as(images, class_name))) {
        Ok(Ok(detections)) if detections.len() == images.len() => Ok(detections),
        Ok(Ok(_)) => Err(ApiError::internal(
            "the model answered a different number of images than it was given",
        )),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => {
            tracing::error!(images = images.len(), class_name, "the model panicked");
            Err(ApiError::internal("the model failed on this batch"))
        }
    }
}
