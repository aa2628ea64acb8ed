//! Bodies as they stream through: counted on the way, never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use super::exchange::{Direction, Exchange};
use super::socket::UploadBatching;
use super::wait::WaitClock;

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

/// A body whose sender sends nothing for this long is given up on. Only
/// time spent waiting on the sender counts: a registry slow to read an
/// upload (backpressure) never trips it, and a slow link that still moves
/// bytes never does either.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A body that counts its bytes into its exchange as they pass. It holds
/// no data itself: each frame goes on as soon as it is polled, which is
/// what gives end-to-end backpressure.
pub struct Metered<B> {
    inner: B,
    exchange: Arc<Exchange>,
    direction: Direction,
    /// How long the body has waited on its sender.
    idle: WaitClock,
    /// The body reached its end, or failed and said so already.
    finished: bool,
    /// An upload that batches its connection's reads while it streams.
    batching: Option<UploadBatching>,
}

impl<B: Body> Metered<B> {
    pub fn new(inner: B, exchange: Arc<Exchange>, direction: Direction) -> Self {
        Self {
            finished: inner.is_end_stream(),
            inner,
            exchange,
            direction,
            idle: WaitClock::new(BODY_IDLE_TIMEOUT),
            batching: None,
        }
    }

    pub fn batching(mut self, batching: Option<UploadBatching>) -> Self {
        self.batching = batching;
        self
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
        if polled.is_ready() {
            self.idle.stop();
            self.finished =
                matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream();
        }
        match polled {
            Poll::Pending if self.idle.run_out(cx) => {
                let side = match self.direction {
                    Direction::Up => "client",
                    Direction::Down => "registry",
                };
                let message = format!(
                    "{side} sent nothing for {}s; body abandoned",
                    BODY_IDLE_TIMEOUT.as_secs()
                );
                match self.direction {
                    Direction::Up => self
                        .exchange
                        .fail_by_client(StatusCode::REQUEST_TIMEOUT, message.clone()),
                    Direction::Down => self.exchange.fail(message.clone()),
                }
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange.passed(self.direction, data);
                    let bytes = data.len();
                    if let Some(batching) = &mut self.batching {
                        batching.passed(bytes);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                let reason = error_chain(&*error);
                match self.direction {
                    Direction::Up => self
                        .exchange
                        .fail_by_client(StatusCode::BAD_REQUEST, format!("client body: {reason}")),
                    Direction::Down => self.exchange.fail(format!("registry body: {reason}")),
                }
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

/// A response body dropped before its end was not read to the end: the
/// client went away or gave up on it, which the log and flow log must not
/// show as a clean exchange. (A request body dropped early is normal: the
/// registry may answer before reading it all.)
impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if self.direction == Direction::Down && !self.finished {
            self.exchange
                .fail("client stopped reading the response before its end".to_owned());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::exchange::ExchangeStart;
    use crate::registry::route::Route;
    use crate::stats::Stats;
    use http_body_util::BodyExt;
    use tokio::time::Instant;

    /// A sender that has `chunks` ready, then never sends again.
    struct Stalls {
        chunks: usize,
    }

    impl Body for Stalls {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.chunks == 0 {
                return Poll::Pending;
            }
            self.chunks -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"layer bytes")))))
        }
    }

    fn metered(chunks: usize) -> Metered<Stalls> {
        Metered::new(Stalls { chunks }, exchange(), Direction::Up)
    }

    fn exchange() -> Arc<Exchange> {
        let start = ExchangeStart {
            client: "127.0.0.1:1".parse().unwrap(),
            method: http::Method::PATCH,
            scheme: "https".into(),
            host: "registry.test:443".into(),
            path: "/v2/app/blobs/uploads/u".into(),
            query: None,
            version: http::Version::HTTP_11,
            tls_intercepted: true,
            route: Route::Other,
            action: "pass",
        };
        Exchange::begin(
            start,
            &http::HeaderMap::new(),
            Arc::new(Stats::default()),
            None,
        )
    }

    fn download(bytes: &'static [u8]) -> (Metered<Full<Bytes>>, Arc<Exchange>) {
        let exchange = exchange();
        let body = Full::new(Bytes::from_static(bytes));
        (
            Metered::new(body, exchange.clone(), Direction::Down),
            exchange,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_body_is_the_clients_fault() {
        let mut body = metered(0);
        assert!(body.frame().await.unwrap().is_err());
        let (status, reason) = body.exchange.client_fault().expect("client at fault");
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(reason.contains("client sent nothing"), "{reason}");
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_is_a_failure() {
        let (body, exchange) = download(b"manifest");
        drop(body);
        let failure = exchange.failure().expect("recorded");
        assert!(failure.contains("stopped reading"), "{failure}");
    }

    #[tokio::test]
    async fn a_response_read_to_its_end_or_empty_is_not() {
        let (body, exchange) = download(b"manifest");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "manifest");
        assert_eq!(exchange.failure(), None);
        let (empty, exchange) = download(b"");
        drop(empty);
        assert_eq!(exchange.failure(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_sender_is_given_up_after_the_idle_timeout() {
        let mut body = metered(1);
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("sent nothing"), "{error}");
        assert_eq!(started.elapsed(), BODY_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn time_not_spent_waiting_on_the_sender_does_not_count() {
        let mut body = metered(2);
        assert!(body.frame().await.unwrap().is_ok());
        // The receiver was slow (backpressure): nobody polled for longer
        // than the idle timeout, yet the sender had data ready.
        tokio::time::sleep(BODY_IDLE_TIMEOUT * 2).await;
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(started.elapsed(), BODY_IDLE_TIMEOUT);
    }
}
