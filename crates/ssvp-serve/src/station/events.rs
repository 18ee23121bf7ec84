//! Live events of the station, as Server-Sent Events on `GET /station/api/events`: `part` when
//! a part has been scored and stored, `state` when the threshold, the bank or the regions
//! changed. A slow reader misses events (it is told with a `lagged` event and reloads) rather
//! than holding memory.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

/// Events buffered for slow readers.
const BUFFER: usize = 256;

/// The station's event hub.
pub struct Events {
    sender: broadcast::Sender<(&'static str, String)>,
    /// True once the server drains: open streams end, so they do not hold the shutdown.
    closed: watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
            closed: watch::channel(false).0,
        }
    }
}

impl Events {
    fn send<T: Serialize>(&self, kind: &'static str, value: &T) {
        if let Ok(data) = serde_json::to_string(value) {
            // No reader is not an error.
            let _ = self.sender.send((kind, data));
        }
    }

    /// A part was scored and stored.
    pub fn part<T: Serialize>(&self, part: &T) {
        self.send("part", part);
    }

    /// The threshold, bank or regions changed.
    pub fn state<T: Serialize>(&self, what: &T) {
        self.send("state", what);
    }

    /// Ends every open stream (the server is draining).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    fn subscribe(
        &self,
    ) -> (
        broadcast::Receiver<(&'static str, String)>,
        watch::Receiver<bool>,
    ) {
        (self.sender.subscribe(), self.closed.subscribe())
    }

    /// A stream for one reader: `hello`, then every event until the server drains, with a
    /// comment every 15 s so proxies keep the connection.
    pub fn stream(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        use futures_util::StreamExt;
        let hello = stream::once(async { Ok(Event::default().event("hello").data("{}")) });
        Sse::new(hello.chain(events(self.subscribe())))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }
}

type Receivers = (
    broadcast::Receiver<(&'static str, String)>,
    watch::Receiver<bool>,
);

fn events(receivers: Receivers) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(receivers, |(mut rx, mut closed)| async move {
        if *closed.borrow() {
            return None;
        }
        let event = tokio::select! {
            got = rx.recv() => match got {
                Ok((kind, data)) => Event::default().event(kind).data(data),
                Err(broadcast::error::RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{n}}}")),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = closed.wait_for(|c| *c) => return None,
        };
        Some((Ok(event), (rx, closed)))
    })
}
