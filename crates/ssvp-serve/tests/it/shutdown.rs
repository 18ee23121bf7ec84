//! Graceful shutdown under load, as Kubernetes runs it: on the signal, readiness turns 503 at
//! once while requests are still answered through the drain delay (the load balancer takes
//! the replica out); then the listener closes and the requests in flight finish. No request
//! that reached the server gets a reset connection or a lost answer, and `serve` returns Ok.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use ssvp_serve::{ServeOptions, Service};
use ssvp_util::error::message_chain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_every_request_that_arrived() {
    let _gate = common::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_millis(800);
    let options = ServeOptions {
        drain_delay: drain,
        shutdown_timeout: Duration::from_secs(20),
        ..ServeOptions::default()
    };
    let mut server = spawn(references_detector(dir.path(), options_small()), options).await;
    let addr = server.addr;
    let image = Arc::new(png(&part(3, true)));
    // Large images keep a request busy for a while: sent late in the drain, it is still being
    // scored when the listener closes.
    let big = Arc::new(png(&image::RgbImage::from_fn(1500, 1500, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    })));
    let out_of_rotation = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (image, out, answered) = (image.clone(), out_of_rotation.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            // As behind a load balancer: new requests stop once readiness has said 503.
            while !out.load(Ordering::SeqCst) {
                let r = http(
                    addr,
                    "POST",
                    "/v1/detect",
                    &[("content-type", "image/png")],
                    &image,
                )
                .await
                .unwrap_or_else(|e| panic!("client {c}: {e}"));
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    // The probe sees 503 at once; inference is still answered during the drain.
    let mut saw_not_ready = false;
    for _ in 0..50 {
        let r = http(addr, "GET", "/readyz", &[], &[]).await.unwrap();
        if r.status == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_not_ready, "readiness did not turn 503");
    out_of_rotation.store(true, Ordering::SeqCst);
    let r = http(
        addr,
        "POST",
        "/v1/detect",
        &[("content-type", "image/png")],
        &image,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "requests are answered while draining");
    // A slow request, sent while draining and still being scored when the listener closes:
    // sent halfway through the drain, so that it is surely accepted; its four large images
    // keep it busy past the close (the printed timings show it).
    tokio::time::sleep((drain / 2).saturating_sub(signalled.elapsed())).await;
    let slow = {
        let big = big.clone();
        tokio::spawn(async move {
            let body = infer_body(
                &[big.to_vec(), big.to_vec(), big.to_vec(), big.to_vec()],
                json!({}),
            );
            let r = http(
                addr,
                "POST",
                "/v2/models/ssvp/infer",
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            (r, Instant::now())
        })
    };
    for c in clients {
        c.await.expect("a client lost an answer");
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), server.done)
        .await
        .expect("the server stopped in time")
        .expect("the server task")
        .map(|()| Instant::now());
    let (slow, slow_done) = slow.await.unwrap();
    let slow = slow.expect("the slow request was answered, not reset");
    assert_eq!(slow.status, 200, "{}", String::from_utf8_lossy(&slow.body));
    let stopped = stopped.expect("serve returned Ok");
    println!(
        "shutdown: {} requests answered under load; the slow request finished {:.0} ms after the \
         signal (listener closed at {:.0} ms); stopped at {:.0} ms",
        answered.load(Ordering::SeqCst),
        (slow_done - signalled).as_secs_f64() * 1e3,
        drain.as_secs_f64() * 1e3,
        (stopped - signalled).as_secs_f64() * 1e3,
    );
    // After the stop nothing listens.
    assert!(http(addr, "GET", "/healthz", &[], &[]).await.is_err());
}

/// A loader that fails stops the server with [`ssvp_serve::Error::Load`], its error kept as the
/// source; a panicking one too. The front's `anyhow` error goes in and comes back out whole.
#[tokio::test]
async fn a_failed_load_stops_the_server_with_its_cause() {
    let _gate = common::shared().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ssvp_serve::serve(
        listener,
        Service::new(ServeOptions::default()).unwrap(),
        || -> anyhow::Result<ssvp_detect::Detector> {
            Err(anyhow::anyhow!("no such file").context("reading the weights"))
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ssvp_serve::Error::Load(_)), "{err:?}");
    assert_eq!(
        message_chain(&err),
        "the model could not be loaded: reading the weights: no such file"
    );
    // As the CLI returns it: through `?` into an `anyhow::Error`, the causes intact.
    let through_cli = (|| -> anyhow::Result<()> { Err(err)? })().unwrap_err();
    assert_eq!(
        format!("{through_cli:#}"),
        "the model could not be loaded: reading the weights: no such file"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ssvp_serve::serve(
        listener,
        Service::new(ServeOptions::default()).unwrap(),
        || -> Result<ssvp_detect::Detector, std::io::Error> { panic!("the loader broke") },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ssvp_serve::Error::Load(_)), "{err:?}");
    assert!(message_chain(&err).contains("panicked"), "{err}");
}

fn options_small() -> ssvp_detect::DetectorOptions {
    options()
}
