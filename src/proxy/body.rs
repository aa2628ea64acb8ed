//! Bodies as they stream through: counted on the way, never buffered, and
//! the exchange's log line written once both directions are done.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::stats::Stats;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body regproxy sends, either way.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn text(message: String) -> ProxyBody {
    Full::new(Bytes::from(message))
        .map_err(|never| match never {})
        .boxed()
}

/// One request and its response, as the log and the counters see it.
/// Shared by both bodies; the log line is written when the last of them
/// is dropped, so it carries the final byte counts and duration.
pub struct Exchange {
    pub client: SocketAddr,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub action: &'static str,
    pub carries_upload: bool,
    started: Instant,
    status: AtomicU16,
    up: AtomicU64,
    down: AtomicU64,
    error: Mutex<Option<String>>,
    stats: Arc<Stats>,
}

impl Exchange {
    pub fn new(
        client: SocketAddr,
        method: http::Method,
        host: String,
        path: String,
        action: &'static str,
        carries_upload: bool,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self {
            client,
            method,
            host,
            path,
            action,
            carries_upload,
            started: Instant::now(),
            status: AtomicU16::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            error: Mutex::new(None),
            stats,
        })
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn fail(&self, error: String) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(error);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let up = *self.up.get_mut();
        let down = *self.down.get_mut();
        if self.carries_upload {
            self.stats.upload_bytes.fetch_add(up, Ordering::Relaxed);
        }
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let error = self
            .error
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tracing::info!(
            target: "regproxy::exchange",
            client = %self.client,
            status = *self.status.get_mut(),
            up,
            down,
            ms = format_args!("{ms:.1}"),
            action = self.action,
            error = error.as_deref(),
            "{} {}{}",
            self.method,
            self.host,
            self.path,
        );
    }
}

/// Which way a body flows, for the byte counters.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Client to registry.
    Up,
    /// Registry to client.
    Down,
}

/// A body that counts its bytes into its exchange as they pass. It holds
/// no data itself: each frame goes on as soon as it is polled, which is
/// what gives end-to-end backpressure.
pub struct Metered<B> {
    inner: B,
    exchange: Arc<Exchange>,
    direction: Direction,
}

impl<B> Metered<B> {
    pub fn new(inner: B, exchange: Arc<Exchange>, direction: Direction) -> Self {
        Self {
            inner,
            exchange,
            direction,
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let counter = match self.direction {
                        Direction::Up => &self.exchange.up,
                        Direction::Down => &self.exchange.down,
                    };
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                let side = match self.direction {
                    Direction::Up => "client body",
                    Direction::Down => "registry body",
                };
                self.exchange
                    .fail(format!("{side}: {}", error_chain(&*error)));
                Poll::Ready(Some(Err(error)))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An error and its causes on one line, `outer: cause: root cause`,
/// skipping a cause whose text the outer message already contains.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
