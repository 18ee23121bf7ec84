//! The server's life: bind, answer probes while the model loads, serve, and on SIGTERM drain
//! and stop the way Kubernetes expects (docs/serve.md, "Shutdown").

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ssvp_detect::Detector;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::state::{ServeOptions, Service};

/// How the log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global logger (stderr; the level from `RUST_LOG`, default `info`). Calling it
/// twice keeps the first.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Serves on `listener` until `shutdown` completes, then drains and stops:
/// 1. readiness turns 503 (requests are still answered) for `drain_delay`, so that load
///    balancers take the replica out before it stops listening;
/// 2. the listener closes; requests in flight finish, for at most `shutdown_timeout`;
/// 3. the batch queue closes once every queued image is answered, within the same deadline.
///
/// `load` runs on a blocking thread while probes are already answered (live, not ready). If it
/// fails (or panics), the server stops and returns [`Error::Load`] with the loader's error as
/// its source; a model the server cannot take is [`Error::Refused`]. Any error type that boxes
/// into `Box<dyn std::error::Error + Send + Sync>` will do, `anyhow::Error` included.
pub async fn serve<L, E, S>(
    listener: TcpListener,
    service: Service,
    load: L,
    shutdown: S,
) -> Result<(), Error>
where
    L: FnOnce() -> Result<Detector, E> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: Future<Output = ()> + Send + 'static,
{
    serve_until(listener, service, load, shutdown, std::future::pending()).await
}

/// [`serve`], and when `stop_now` completes (a second Ctrl-C or SIGTERM, during the drain), it
/// stops at once: no more drain delay, no wait for the requests in flight or the batch queue.
pub async fn serve_until<L, E, S, N>(
    listener: TcpListener,
    service: Service,
    load: L,
    shutdown: S,
    stop_now: N,
) -> Result<(), Error>
where
    L: FnOnce() -> Result<Detector, E> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: Future<Output = ()> + Send + 'static,
    N: Future<Output = ()> + Send + 'static,
{
    let (failed_tx, failed_rx) = oneshot::channel::<Error>();
    {
        let service = service.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let loaded = match tokio::task::spawn_blocking(move || load().map_err(Into::into)).await
            {
                Ok(r) => r.map_err(Error::Load),
                // The loader panicked.
                Err(e) => Err(Error::Load(Box::new(e))),
            };
            let installed = loaded.and_then(|detector| {
                let mode = detector.mode().to_string();
                service
                    .install(detector, started.elapsed().as_secs_f64())
                    .map_err(Error::Refused)?;
                // A station's watched folder is read once its detector is in force.
                let watch = service
                    .options()
                    .station
                    .as_ref()
                    .and_then(|s| s.watch.clone());
                if let Some(dir) = watch {
                    crate::station::watch::start(service.state(), dir).map_err(Error::Refused)?;
                }
                Ok(mode)
            });
            match installed {
                Ok(mode) => tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    mode,
                    "model loaded; ready"
                ),
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            }
        });
    }
    // Dropped with the server future when the load fails, so it needs no stop of its own.
    let draining = {
        let service = service.clone();
        async move {
            shutdown.await;
            tracing::info!(
                drain_delay_s = service.options().drain_delay.as_secs_f64(),
                "shutting down: readiness is 503; still serving during the drain delay"
            );
            service.begin_drain();
            tokio::time::sleep(service.options().drain_delay).await;
            tracing::info!("the listener closes; finishing the requests in flight");
        }
    };
    let (began_tx, began_rx) = oneshot::channel::<()>();
    let closed_at = Arc::new(OnceLock::new());
    let graceful = {
        let closed_at = closed_at.clone();
        async move {
            draining.await;
            let _ = closed_at.set(tokio::time::Instant::now());
            let _ = began_tx.send(());
        }
    };
    let app = service.router();
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let timeout = service.options().shutdown_timeout;
    let load_error = tokio::select! {
        served = server => {
            served.map_err(Error::Serve)?;
            None
        }
        Ok(err) = failed_rx => Some(err),
        () = stop_now => {
            tracing::warn!("second signal: stopping now, without finishing the requests in flight");
            return Ok(());
        }
        _ = async {
            // The hard deadline counts from the listener's close.
            if began_rx.await.is_ok() {
                tokio::time::sleep(timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(
                timeout_s = timeout.as_secs_f64(),
                "requests still in flight after the shutdown timeout; stopping anyway"
            );
            None
        }
    };
    // Every handler has answered by now; what is left in the queue is abandoned work. A batch
    // still on the model (tens of seconds at ViT-L sizes) must not hold the exit past the
    // deadline, which counts from the listener's close.
    let deadline = closed_at
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + timeout;
    if tokio::time::timeout_at(deadline, service.close())
        .await
        .is_err()
    {
        tracing::warn!("a batch was still running at exit");
    }
    match load_error {
        Some(err) => Err(err),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Listens for SIGTERM and Ctrl-C from now on: the first receiver resolves on the first
/// signal, the second on the next one (the "stop now" of [`serve_until`]). Call it inside the
/// runtime.
pub fn signals() -> (oneshot::Receiver<()>, oneshot::Receiver<()>) {
    let (first_tx, first_rx) = oneshot::channel();
    let (second_tx, second_rx) = oneshot::channel();
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        let (mut interrupt, mut terminate) = streams;
        for tx in [first_tx, second_tx] {
            #[cfg(unix)]
            tokio::select! {
                () = next_signal(&mut interrupt) => {}
                () = next_signal(&mut terminate) => {}
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            let _ = tx.send(());
        }
    });
    (first_rx, second_rx)
}

/// The next delivery of `signal`; never, when it could not be listened for.
#[cfg(unix)]
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves when `signal` fires; never when its sender is gone without firing.
async fn fired(signal: oneshot::Receiver<()>) {
    if signal.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `ssvp serve`: a runtime, the listener on `addr`, the model from `load`, until SIGTERM or
/// Ctrl-C (a second one stops the drain at once). Errors as in [`serve`], and
/// [`Error::Options`], [`Error::Runtime`] and [`Error::Listen`] before the server starts.
pub fn run<L, E>(
    addr: SocketAddr,
    options: ServeOptions,
    log: LogFormat,
    load: L,
) -> Result<(), Error>
where
    L: FnOnce() -> Result<Detector, E> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    init_logging(log);
    let service = Service::new(options).map_err(Error::Options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ssvp-serve")
        .build()
        .map_err(Error::Runtime)?;
    let result = runtime.block_on(async move {
        let listen = |source| Error::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen)?;
        tracing::info!(
            addr = %listener.local_addr().map_err(listen)?,
            model = %service.options().model_name,
            "listening; loading the model"
        );
        let (first, second) = signals();
        serve_until(listener, service, load, fired(first), fired(second)).await
    });
    // A batch still on the model (or a model still loading) must not hold the exit: dropping
    // the runtime would wait for its blocking threads.
    runtime.shutdown_background();
    result
}
